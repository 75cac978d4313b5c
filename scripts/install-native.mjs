#!/usr/bin/env node
// npm's "install" lifecycle script. Having one at all stops npm from running
// node-gyp on native/binding.gyp. It builds the addon and the shim with
// cmake-js when the toolchain is there; on a fresh machine (no cmake yet) it
// only says so, because `npm ci` must not fail before scripts/ensure.sh has
// had a chance to install the system packages. ensure.sh (and
// `npm run build:native`) build the native parts afterwards in any case, and
// report a real compile error loudly; here a failure is only a warning.
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const say = (msg) => process.stderr.write(`symbio: ${msg}\n`);

const onPath = (cmd) =>
  (process.env.PATH ?? '')
    .split(delimiter)
    .some((dir) => dir !== '' && existsSync(join(dir, cmd)));

if (process.env.SYMBIO_SKIP_NATIVE_INSTALL) {
  say('native build skipped (SYMBIO_SKIP_NATIVE_INSTALL is set); `npm run build` will do it');
  process.exit(0);
}
if (!existsSync(join(root, 'native', 'CMakeLists.txt'))) {
  say('native build skipped (no native/CMakeLists.txt); `npm run build` will do it');
  process.exit(0);
}
const missing = ['cmake', 'mpicc', 'make', 'g++'].filter((c) => !onPath(c));
if (missing.length > 0) {
  say(`native build skipped (not installed: ${missing.join(', ')}); ` +
      '`bash scripts/ensure.sh` installs them and builds it');
  process.exit(0);
}

const cmakeJs = join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
const r = spawnSync(process.execPath, [cmakeJs, 'compile', '-d', 'native', '-O', 'build'], {
  cwd: root,
  stdio: 'inherit',
});
if (r.status === 0) {
  // The same stamp scripts/ensure.sh writes after a native build, so that it
  // does not build again right after `npm ci`.
  writeFileSync(join(root, 'build', '.symbio-native.stamp'), '');
} else {
  say(`native build failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`}); ` +
      'run `npm run build:native` to see why');
}
process.exit(0);
