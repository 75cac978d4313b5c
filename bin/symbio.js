#!/usr/bin/env node
// `symbio`: the operator CLI (jobs, status, quiesce, resume, run).
import { runCli } from './run-cli.js';

await runCli('symbio');
