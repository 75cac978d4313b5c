#!/usr/bin/env node
// npm's "postinstall" lifecycle script: make `npx symbio` and
// `npx symbio-mpirun` (and plain `symbio` inside npm scripts) work from a
// checkout of this repository. npm links the bins of dependencies into
// node_modules/.bin but never the root package's own. npm 11's `npx` does
// find the root package's bins, but only if the files are executable, which
// a checkout without file modes (zip download, some CI caches) loses. So:
// chmod the bin files and link them into node_modules/.bin ourselves. npm
// leaves such links alone on later installs; `npm ci` recreates them.
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const binDir = join(root, 'node_modules', '.bin');

// Installed as a dependency of another project: npm links our bins itself.
if (dirname(root).endsWith('node_modules') || dirname(dirname(root)).endsWith('node_modules')) {
  process.exit(0);
}

mkdirSync(binDir, { recursive: true });
for (const [name, file] of Object.entries(pkg.bin ?? {})) {
  const target = join(root, file);
  if (!existsSync(target)) continue;
  chmodSync(target, 0o755);
  const link = join(binDir, name);
  try {
    lstatSync(link);
    rmSync(link, { force: true });
  } catch {
    // no link yet
  }
  symlinkSync(relative(binDir, target), link);
}
