/**
 * `npm run bench -- <name>... [--option...]`: runs one benchmark (or all)
 * and prints its JSON on stdout. Progress and logs go to stderr. Everything
 * from the first `-` argument on goes to the benchmarks as their options
 * (e.g. `npm run bench -- migration --quick`).
 */
import { benchShim } from './shim.js';
import { benchHost } from './host.js';
import { benchMigration } from './migration.js';
import { benchCoop } from './coop.js';
import { benchFt } from './ft.js';

const benches: Record<string, (options: string[]) => Promise<unknown>> = {
  shim: () => benchShim(),
  host: () => benchHost(),
  migration: (options) => benchMigration(options),
  coop: (options) => benchCoop(options),
  ft: (options) => benchFt(options),
};

const argv = process.argv.slice(2);
const firstOption = argv.findIndex((a) => a.startsWith('-'));
const names = firstOption < 0 ? argv : argv.slice(0, firstOption);
const options = firstOption < 0 ? [] : argv.slice(firstOption);
const unknown = names.filter((n) => !(n in benches));
if (unknown.length) {
  process.stderr.write(`bench: unknown benchmark ${unknown.join(', ')}; available: ${Object.keys(benches).join(', ')}\n`);
  process.exit(2);
}
for (const name of names.length ? names : Object.keys(benches)) {
  process.stderr.write(`bench: running ${name} ...\n`);
  process.stdout.write(JSON.stringify(await benches[name]!(options), null, 2) + '\n');
}
