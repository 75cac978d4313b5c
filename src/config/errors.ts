/**
 * ConfigError and the translation of validation issues into messages that
 * name the file, the line:column, the key path, what was expected and what
 * was found:
 *
 *   symbio.yaml:7:16: quiesce.timeoutMs: expected a positive integer (ms), got "fast"
 *
 * Validation issues may come from symbio's own schema or from a plugin's
 * configSchema (possibly another zod copy or version), so issues are read
 * through a loose shape rather than zod's own types.
 */
import { Buffer } from 'node:buffer';

export interface Position {
  readonly line: number;
  readonly col: number;
}

/** One problem in a configuration file. */
export interface ConfigIssue {
  /** Key path as written in messages, e.g. `plugins[1].options.threshold`; '' for the file as a whole. */
  readonly path: string;
  /** 1-based, when the key could be located in the file. */
  readonly line?: number;
  readonly col?: number;
  /** What is wrong, e.g. `expected a positive integer (ms), got "fast"`. */
  readonly message: string;
}

/** At most this many issues go into one error message; the rest are counted. */
const MAX_LISTED = 20;

export function formatIssue(file: string | null, issue: ConfigIssue): string {
  const where = issue.line === undefined ? '' : `:${issue.line}:${issue.col ?? 1}`;
  const path = issue.path === '' ? '' : `${issue.path}: `;
  return `${file ?? '(configuration)'}${where}: ${path}${issue.message}`;
}

/**
 * Anything wrong with the configuration: the file cannot be read, is not
 * YAML, or does not match the schema (or a plugin's options schema). The
 * message has one line per issue, earliest in the file first.
 */
export class ConfigError extends Error {
  override name = 'ConfigError';
  readonly file: string | null;
  readonly issues: readonly ConfigIssue[];

  constructor(file: string | null, issues: readonly ConfigIssue[] | string, options?: { cause?: unknown }) {
    const list: readonly ConfigIssue[] = typeof issues === 'string' ? [{ path: '', message: issues }] : sortIssues(issues);
    const lines = list.slice(0, MAX_LISTED).map((i) => formatIssue(file, i));
    if (list.length > MAX_LISTED) lines.push(`... and ${list.length - MAX_LISTED} more`);
    super(lines.join('\n'), options);
    this.file = file;
    this.issues = list;
  }
}

function sortIssues(issues: readonly ConfigIssue[]): ConfigIssue[] {
  const rank = (i: ConfigIssue) => (i.line === undefined ? Number.MAX_SAFE_INTEGER : i.line * 1e6 + (i.col ?? 0));
  return [...issues].sort((a, b) => rank(a) - rank(b));
}

// ---------------------------------------------------------------------------
// Paths and values as they read in messages

const IDENT = /^[A-Za-z_$][\w$-]*$/;

/** Longer paths (only pathological nesting) are cut, so that one message stays one line. */
const MAX_PATH_SHOWN = 12;

/** ['plugins', 1, 'options', 'x'] -> `plugins[1].options.x`; odd keys are quoted. */
export function formatPath(path: readonly PropertyKey[]): string {
  if (path.length > MAX_PATH_SHOWN) return `${formatPath(path.slice(0, MAX_PATH_SHOWN))}... (${path.length} levels deep)`;
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (typeof seg === 'string' && IDENT.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out;
}

const MAX_SHOWN = 40;

/** What was found, for "got ...": short, and never the whole of a big value. */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (typeof v === 'string') {
    const s = JSON.stringify(v);
    return s.length > MAX_SHOWN ? `${s.slice(0, MAX_SHOWN - 4)}..."` : s;
  }
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (typeof v === 'function') return 'a function';
  if (typeof v === 'symbol') return 'a symbol';
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return 'binary data';
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? 'an invalid date' : `a date (${v.toISOString()})`;
  if (v instanceof Map) return 'a map';
  if (v instanceof Set) return 'a set';
  if (Array.isArray(v)) return v.length === 0 ? 'an empty list' : `a list (${v.length} item${v.length === 1 ? '' : 's'})`;
  return Object.keys(v).length === 0 ? 'an empty mapping' : 'a mapping';
}

/** The value at `path` inside `data`, or undefined when the path does not exist. */
export function valueAt(data: unknown, path: readonly PropertyKey[]): unknown {
  let cur = data;
  for (const seg of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    if (!Object.prototype.hasOwnProperty.call(cur, seg)) return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[seg];
  }
  return cur;
}

/** Optimal string alignment distance (edit distance where a swap of two neighbours costs 1). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => {
    const row = new Array<number>(b.length + 1).fill(0);
    row[0] = i;
    return row;
  });
  for (let j = 0; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

/** The known key closest to `key`, when it is close enough to be a likely typo. */
export function didYouMean(key: string, known: readonly string[]): string | undefined {
  const limit = Math.max(1, Math.min(3, Math.floor(key.length / 3)));
  let best: { k: string; d: number } | undefined;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d <= limit && (best === undefined || d < best.d)) best = { k, d };
  }
  return best?.k;
}

// ---------------------------------------------------------------------------
// Validation issues -> ConfigIssue

/** The parts of a zod issue (any zod version) that messages use. */
export interface LooseIssue {
  readonly code?: string;
  readonly path?: readonly PropertyKey[];
  readonly message?: string;
  readonly keys?: readonly string[];
}

export interface IssueContext {
  /** The data that was validated (to show what was found). */
  readonly data: unknown;
  /** Prepended to every issue's path (e.g. ['plugins', 2, 'options']). */
  readonly prefix?: readonly PropertyKey[];
  /** Where a key (or its value) is in the file; paths are full (prefix included). */
  readonly locate?: (path: readonly PropertyKey[], what: 'key' | 'value') => Position | undefined;
  /** Keys a mapping at this path (relative to the data) may have, when known. */
  readonly knownKeys?: (path: readonly PropertyKey[]) => readonly string[] | undefined;
}

/**
 * Messages that start with "expected" get ", got <what was found>"; others
 * (refinements' whole sentences, e.g. duplicate host names) stand as written.
 */
export function toConfigIssues(issues: readonly LooseIssue[], ctx: IssueContext): ConfigIssue[] {
  const prefix = ctx.prefix ?? [];
  const out: ConfigIssue[] = [];
  for (const issue of issues) {
    const rel = Array.isArray(issue.path) ? (issue.path as readonly PropertyKey[]) : [];
    const full = [...prefix, ...rel];
    if (issue.code === 'unrecognized_keys' && Array.isArray(issue.keys)) {
      const known = ctx.knownKeys?.(rel);
      for (const key of issue.keys as readonly string[]) {
        const hint = known ? didYouMean(key, known) : undefined;
        const knownText = known && known.length ? ` (known: ${known.join(', ')})` : '';
        out.push(at(ctx, [...full, key], 'key', `unknown key${knownText}${hint ? `; did you mean "${hint}"?` : ''}`));
      }
      continue;
    }
    const message = typeof issue.message === 'string' && issue.message !== '' ? issue.message : 'invalid value';
    const found = valueAt(ctx.data, rel);
    const text = /^expected\b/i.test(message) ? `${message}, got ${describeValue(found)}` : message;
    out.push(at(ctx, full, 'value', text));
  }
  return out;
}

function at(ctx: IssueContext, path: readonly PropertyKey[], what: 'key' | 'value', message: string): ConfigIssue {
  const pos = ctx.locate?.(path, what);
  const label = path.length === 0 ? '(top level)' : formatPath(path);
  return pos ? { path: label, line: pos.line, col: pos.col, message } : { path: label, message };
}

// ---------------------------------------------------------------------------
// Fallback messages for issues whose schema did not set one

interface RawIssue {
  readonly code?: string;
  readonly expected?: string;
  readonly origin?: string;
  readonly minimum?: number | bigint;
  readonly maximum?: number | bigint;
  readonly inclusive?: boolean;
  readonly values?: readonly unknown[];
  readonly format?: string;
  readonly divisor?: number | bigint;
}

const TYPE_NAMES: Record<string, string> = {
  object: 'a mapping',
  array: 'a list',
  int: 'an integer',
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  null: 'null',
  undefined: 'nothing',
  bigint: 'an integer',
  date: 'a date',
};

/**
 * Per-parse zod error map (`schema.safeParse(x, { error: expectedMessage })`):
 * turns zod's default wording into "expected ..." so the found value can be
 * appended. A schema's own messages take precedence over this.
 */
export function expectedMessage(raw: unknown): string | undefined {
  const iss = (raw ?? {}) as RawIssue;
  const n = (v: number | bigint | undefined) => String(v);
  switch (iss.code) {
    case 'invalid_type':
      return `expected ${TYPE_NAMES[iss.expected ?? ''] ?? iss.expected ?? 'another type'}`;
    case 'too_small': {
      const cmp = iss.inclusive === false ? 'more than' : 'at least';
      if (iss.origin === 'string') return Number(iss.minimum) === 1 ? 'expected a non-empty string' : `expected ${cmp} ${n(iss.minimum)} characters`;
      if (iss.origin === 'array' || iss.origin === 'set') return `expected ${cmp} ${n(iss.minimum)} items`;
      return `expected a number ${iss.inclusive === false ? '>' : '>='} ${n(iss.minimum)}`;
    }
    case 'too_big': {
      const cmp = iss.inclusive === false ? 'fewer than' : 'at most';
      if (iss.origin === 'string') return `expected ${cmp} ${n(iss.maximum)} characters`;
      if (iss.origin === 'array' || iss.origin === 'set') return `expected ${cmp} ${n(iss.maximum)} items`;
      return `expected a number ${iss.inclusive === false ? '<' : '<='} ${n(iss.maximum)}`;
    }
    case 'invalid_value': {
      const vals = (iss.values ?? []).map((v) => (typeof v === 'string' ? `'${v}'` : String(v)));
      return vals.length === 1 ? `expected ${vals[0]}` : `expected one of ${vals.join(', ')}`;
    }
    case 'invalid_format':
      return `expected a valid ${iss.format ?? 'value'}`;
    case 'not_multiple_of':
      return `expected a multiple of ${n(iss.divisor)}`;
    case 'invalid_union':
      return 'expected one of the allowed forms';
    case 'invalid_key':
      return 'expected valid keys';
    case 'invalid_element':
      return 'expected valid elements';
    default:
      return undefined;
  }
}
