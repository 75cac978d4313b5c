#!/usr/bin/env node
// `symbio`: the operator CLI (quiesce, resume, ...).
// Thin on purpose: everything lives in the compiled TypeScript
// (src/cli/main.ts -> dist/src/cli/main.js).
import { existsSync } from 'node:fs';

const cli = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(cli)) {
  console.error('symbio is not built: run npm run build');
  process.exit(2);
}
const { main } = await import(cli.href);
process.exitCode = await main(process.argv.slice(2), 'symbio');
