/**
 * What of symbio goes into the guest, under /opt/symbio: the files a guest
 * needs to run `symbio`, `symbio-mpirun` and the shim, and nothing of the
 * development setup (no TypeScript sources, no tap, no typescript).
 *
 *   package.json, bin/, dist/, scripts/
 *   build/Release/*.node, *.so (the addon and libsymbio-shim.so; not the ASan build)
 *   build/mpi/*   (test MPI programs: built here against Debian's Open MPI, the guest's too)
 *   node_modules/ restricted to the production dependencies, found by walking
 *                 package.json dependencies the way Node resolves them (faster
 *                 than `npm ls --omit=dev`, which alone takes ~1 s).
 */
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';

export interface PayloadFile {
  /** relative to the package root, '/'-separated */
  readonly rel: string;
  readonly abs: string;
  readonly kind: 'file' | 'symlink';
  readonly mode: number;
  /** for symlinks */
  readonly target?: string;
}

export class PayloadError extends Error {}

interface PackageJson {
  name?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

const readPackageJson = (dir: string): PackageJson => JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as PackageJson;

/** Where Node would find package `name` when required from `fromDir` (up to `root`). */
function resolvePackageDir(name: string, fromDir: string, root: string): string | null {
  for (let dir = fromDir; ; dir = dirname(dir)) {
    if (!dir.endsWith(`${sep}node_modules`)) {
      const candidate = join(dir, 'node_modules', name);
      if (existsSync(join(candidate, 'package.json'))) return candidate;
    }
    if (dir === root || dir === dirname(dir)) return null;
  }
}

/**
 * The directories (absolute) of every package the production dependencies
 * of the package at `root` need, transitively. Missing optional (and
 * optional peer) dependencies are fine; a missing required one is an error.
 */
export function productionPackageDirs(root: string): string[] {
  const found = new Set<string>();
  const visit = (pkgDir: string, isRoot: boolean): void => {
    const pj = readPackageJson(pkgDir);
    const required = Object.keys(pj.dependencies ?? {});
    const optional = Object.keys(pj.optionalDependencies ?? {});
    const peers = Object.keys(pj.peerDependencies ?? {});
    const wants: [string, boolean][] = [
      ...required.map((n): [string, boolean] => [n, !optional.includes(n)]),
      ...optional.map((n): [string, boolean] => [n, false]),
      // the root's peers are the user's business; a dependency's peers were installed for it
      ...(isRoot ? [] : peers.map((n): [string, boolean] => [n, !pj.peerDependenciesMeta?.[n]?.optional])),
    ];
    for (const [name, mustExist] of wants) {
      const dir = resolvePackageDir(name, pkgDir, root);
      if (!dir) {
        if (mustExist) throw new PayloadError(`${pj.name ?? pkgDir} needs ${name}, which is not installed under ${root}/node_modules: run npm ci`);
        continue;
      }
      if (found.has(dir)) continue;
      found.add(dir);
      visit(dir, false);
    }
  };
  visit(root, true);
  return [...found].sort();
}

/** Every file and symlink under `dir`; `skip(relFromDir, isDir)` prunes. */
function walk(dir: string, skip: (name: string, rel: string, isDir: boolean) => boolean, out: string[] = [], base = dir): string[] {
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    const abs = join(dir, ent.name);
    const rel = relative(base, abs);
    if (skip(ent.name, rel, ent.isDirectory())) continue;
    if (ent.isDirectory()) walk(abs, skip, out, base);
    else if (ent.isFile() || ent.isSymbolicLink()) out.push(abs);
  }
  return out;
}

const describe = (root: string, abs: string): PayloadFile => {
  const st = lstatSync(abs);
  const rel = relative(root, abs).split(sep).join('/');
  if (st.isSymbolicLink()) return { rel, abs, kind: 'symlink', mode: 0o777, target: readlinkSync(abs) };
  return { rel, abs, kind: 'file', mode: st.mode & 0o7777 };
};

/**
 * The files of symbio's payload, sorted by path. Throws if the package was
 * not built (no dist/, no addon or shim).
 */
export function symbioPayload(root: string): PayloadFile[] {
  const need = [
    ['dist', 'the compiled TypeScript'],
    [join('build', 'Release', 'symbio.node'), 'the native addon'],
    [join('build', 'Release', 'libsymbio-shim.so'), 'the PMPI shim'],
  ] as const;
  for (const [p, what] of need) {
    if (!existsSync(join(root, p))) throw new PayloadError(`${join(root, p)} (${what}) is missing: run npm run build first`);
  }
  const files: string[] = [join(root, 'package.json')];
  const noDotfiles = (name: string) => name.startsWith('.');
  for (const d of ['bin', 'dist', 'scripts']) if (existsSync(join(root, d))) walk(join(root, d), noDotfiles, files);
  for (const name of readdirSync(join(root, 'build', 'Release'))) {
    // the ASan build of the shim needs libasan, which the guest does not have
    if ((name.endsWith('.node') || name.endsWith('.so')) && !name.includes('-asan')) files.push(join(root, 'build', 'Release', name));
  }
  if (existsSync(join(root, 'build', 'mpi'))) walk(join(root, 'build', 'mpi'), noDotfiles, files);
  for (const pkg of productionPackageDirs(root)) {
    // nested node_modules are reached through the dependency walk, if needed at all
    walk(pkg, (name, rel, isDir) => isDir && (name === 'node_modules' || rel === '.bin'), files);
  }
  return files.map((abs) => describe(root, abs)).sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
}
