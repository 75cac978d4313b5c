#!/usr/bin/env node
// `symbio-mpirun`: drop-in for mpirun that runs an MPI job under symbio.
import { runCli } from './run-cli.js';

await runCli('symbio-mpirun');
