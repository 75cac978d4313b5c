/**
 * Finding, reading and validating the configuration file.
 *
 * Search order: `--config PATH` (must exist), $SYMBIO_CONFIG (must exist),
 * ./symbio.yaml, $XDG_CONFIG_HOME/symbio/symbio.yaml (~/.config when XDG is
 * unset), /etc/symbio/symbio.yaml; none found: the embedded defaults. Every
 * problem is a ConfigError naming the file, the line:column and key path.
 */
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { ConfigError, expectedMessage, toConfigIssues, type LooseIssue } from './errors.js';
import { configSchema, type SymbioConfig } from './schema.js';
import { knownKeysAt } from './schema-keys.js';
import { parseYamlSource } from './yaml-source.js';

export { ConfigError, type ConfigIssue } from './errors.js';

export const CONFIG_FILE_NAME = 'symbio.yaml';

export interface ResolveConfigOptions {
  /** `--config PATH` (relative to cwd). */
  readonly explicit?: string;
  /** Environment to read SYMBIO_CONFIG and XDG_CONFIG_HOME from (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  readonly home?: string;
  /** Directory of the system-wide file (default /etc/symbio); tests point it elsewhere. */
  readonly systemDir?: string;
}

export interface ResolvedConfigPath {
  /** The file to read, or null for the embedded defaults. */
  readonly path: string | null;
  /** Every place looked at, in order, up to and including the one found. */
  readonly searched: string[];
}

function errnoText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOENT':
      return 'no such file';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'is a directory, not a file';
    case 'ENOTDIR':
      return 'a component of the path is not a directory';
    case 'ELOOP':
      return 'too many symbolic links';
    default:
      return `${(err as Error).message}`;
  }
}

/** True when something is at `path` (whatever it is: reading it reports what is wrong). */
function present(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

function mustExist(path: string, how: string): void {
  try {
    statSync(path);
  } catch (err) {
    throw new ConfigError(path, `cannot read the configuration file named by ${how}: ${errnoText(err)}`, { cause: err });
  }
}

export function resolveConfigPath(opts: ResolveConfigOptions = {}): ResolvedConfigPath {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  if (opts.explicit !== undefined) {
    const p = resolve(cwd, opts.explicit);
    mustExist(p, '--config');
    return { path: p, searched: [p] };
  }
  const fromEnv = env.SYMBIO_CONFIG;
  if (fromEnv) {
    const p = resolve(cwd, fromEnv);
    mustExist(p, '$SYMBIO_CONFIG');
    return { path: p, searched: [p] };
  }
  // XDG: a relative XDG_CONFIG_HOME is invalid and must be ignored
  const xdg = env.XDG_CONFIG_HOME && isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : join(opts.home ?? homedir(), '.config');
  const candidates = [join(cwd, CONFIG_FILE_NAME), join(xdg, 'symbio', CONFIG_FILE_NAME), join(opts.systemDir ?? '/etc/symbio', CONFIG_FILE_NAME)];
  const searched: string[] = [];
  for (const c of candidates) {
    searched.push(c);
    if (present(c)) return { path: c, searched };
  }
  return { path: null, searched };
}

/** A file's text, or a ConfigError saying why it cannot be read. */
export function readConfigFile(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, `cannot read the configuration file: ${errnoText(err)}`, { cause: err });
  }
}

/**
 * Drop keys whose value is null (`plugins:` with nothing under it, a key
 * whose value was commented out): an empty value means "the default". Not
 * inside plugins' options, which are the plugin's business.
 */
function dropNulls(v: unknown, path: readonly PropertyKey[] = []): unknown {
  const inOptions = path.length === 3 && path[0] === 'plugins' && path[2] === 'options';
  if (inOptions) return v;
  if (Array.isArray(v)) return v.map((item, i) => dropNulls(item, [...path, i]));
  if (v !== null && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(
      Object.entries(v)
        .filter(([, x]) => x !== null)
        .map(([k, x]) => [k, dropNulls(x, [...path, k])]),
    );
  }
  return v;
}

/** Validate YAML text; `sourceName` names the file in messages. Empty text means all defaults. */
export function parseConfigText(text: string, sourceName: string): SymbioConfig {
  const source = parseYamlSource(text, sourceName);
  const data = source.data === null ? {} : dropNulls(source.data);
  const parsed = configSchema.safeParse(data, { error: expectedMessage });
  if (parsed.success) return parsed.data;
  throw new ConfigError(
    sourceName,
    toConfigIssues(parsed.error.issues as readonly LooseIssue[], {
      data,
      locate: source.locate,
      knownKeys: (path) => knownKeysAt(configSchema, path),
    }),
    { cause: parsed.error },
  );
}

/** Relative paths in the file are relative to the file's directory, not to wherever symbio was started. */
function anchorPaths(config: SymbioConfig, dir: string): SymbioConfig {
  const abs = (p: string | undefined) => (p === undefined || isAbsolute(p) ? p : resolve(dir, p));
  const c = config.controller;
  const controller = {
    ...c,
    ...(c.socket === undefined ? {} : { socket: abs(c.socket) }),
    ...(c.tokenFile === undefined ? {} : { tokenFile: abs(c.tokenFile) }),
    ...(c.stateDir === undefined ? {} : { stateDir: abs(c.stateDir) }),
  };
  const checkpoint = { ...config.checkpoint, ...(config.checkpoint.dir === undefined ? {} : { dir: abs(config.checkpoint.dir) }) };
  return { ...config, controller, checkpoint };
}

export interface LoadedConfig {
  /** The file read, or null: embedded defaults. */
  readonly source: string | null;
  readonly searched: string[];
  readonly config: SymbioConfig;
}

/** Find, read and validate the configuration (see the search order above). */
export function loadConfig(opts: ResolveConfigOptions = {}): LoadedConfig {
  const { path, searched } = resolveConfigPath(opts);
  if (path === null) return { source: null, searched, config: configSchema.parse({}) };
  const config = parseConfigText(readConfigFile(path), path);
  return { source: path, searched, config: anchorPaths(config, dirname(path)) };
}

/** Directory that relative plugin paths and package names are resolved from. */
export function configDirOf(source: string | null, cwd = process.cwd()): string {
  return source === null ? cwd : dirname(source);
}

/**
 * The shared TCP token: the file must be a regular file, not readable or
 * writable by group or others (0600 or stricter), and not empty. Called by
 * whoever uses the token, not when the configuration is loaded (the
 * controller may run as a user the checker is not).
 */
export function readTokenFile(path: string): string {
  let mode: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new ConfigError(path, 'token file: not a regular file');
    mode = st.mode & 0o777;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(path, `cannot read the token file: ${errnoText(err)}`, { cause: err });
  }
  if ((mode & 0o077) !== 0) {
    throw new ConfigError(
      path,
      `token file is accessible by group or others (mode ${mode.toString(8).padStart(4, '0')}); it must be 0600 or stricter: chmod 600 ${path}`,
    );
  }
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, `cannot read the token file: ${errnoText(err)}`, { cause: err });
  }
  const token = text.trim();
  if (token === '') throw new ConfigError(path, 'token file is empty; put the shared token in it (one line)');
  return token;
}
