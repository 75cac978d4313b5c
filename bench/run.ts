/**
 * `npm run bench -- <name>`: runs one benchmark (or all) and prints its JSON
 * on stdout. Progress and logs go to stderr.
 */
import { benchShim } from './shim.js';
import { benchHost } from './host.js';

const benches: Record<string, () => Promise<unknown>> = {
  shim: () => benchShim(),
  host: () => benchHost(),
};

const names = process.argv.slice(2);
const unknown = names.filter((n) => !(n in benches));
if (unknown.length) {
  process.stderr.write(`bench: unknown benchmark ${unknown.join(', ')}; available: ${Object.keys(benches).join(', ')}\n`);
  process.exit(2);
}
for (const name of names.length ? names : Object.keys(benches)) {
  process.stderr.write(`bench: running ${name} ...\n`);
  process.stdout.write(JSON.stringify(await benches[name]!(), null, 2) + '\n');
}
