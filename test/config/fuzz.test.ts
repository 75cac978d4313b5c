/**
 * Fuzz parseConfigText with a few thousand mutations of a valid file (byte
 * flips, truncations, deletions, garbage, re-indentation, aliases, random
 * nested JSON values) from a seeded PRNG: each input either parses or
 * throws ConfigError naming the file, never anything else, and never takes
 * long. A parsed result must be a valid configuration that survives a
 * round trip through formatEffectiveConfig.
 *
 * Reproduce a failure: SYMBIO_FUZZ_SEED=<seed> (printed in the failure).
 * More cases: SYMBIO_FUZZ_CASES=50000.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { formatEffectiveConfig } from '../../src/cli/config-actions.js';
import { ConfigError, parseConfigText } from '../../src/config/load.js';
import { configSchema } from '../../src/config/schema.js';

const SEED = Number(process.env.SYMBIO_FUZZ_SEED ?? 0x5eed);
const CASES = Number(process.env.SYMBIO_FUZZ_CASES ?? 3000);
/** One parse may take this long at most (a blow-up shows as a failure; a true hang hits the test timeout). Generous: CI machines are slow and busy. */
const PER_CASE_MS = 5000;

const BASE = readFileSync(fileURLToPath(new URL('../fixtures/config/full.yaml', import.meta.url)), 'utf8');

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

type Rand = () => number;
const int = (r: Rand, n: number) => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)]!;

const SPECIAL = [':', '-', ' ', '\n', '\t', '[', ']', '{', '}', ',', '#', '&', '*', '!', '|', '>', "'", '"', '%', '@', '`', '?', '~', '\\', '\r', '\u0000', '\ufeff', '---', '...', '<<', '!!binary', '!!str', '!!int', '!!map', '\u00e9', '\ud83d\ude00'];
const KEYS = ['controller', 'socket', 'tcp', 'host', 'port', 'tokenFile', 'stateDir', 'whenBusy', 'queueLimit', 'quiesce', 'timeoutMs', 'stallMs', 'resumeTimeoutMs', 'hooks', 'plugins', 'use', 'options', 'failurePolicy', 'disableAfter', 'intervalMs', 'enabled', 'hosts', 'name', 'spare', 'address', 'checkpoint', 'dir', 'keep', 'log', 'level', '__proto__', 'constructor', 'toString', 'hasOwnProperty', ''];

function randomString(r: Rand): string {
  const n = int(r, 12);
  let s = '';
  for (let i = 0; i < n; i++) s += r() < 0.3 ? pick(r, SPECIAL) : String.fromCharCode(32 + int(r, 95));
  return s;
}

/** A random JSON value (JSON is YAML flow syntax), nested up to `depth`. */
function randomJson(r: Rand, depth = 3): unknown {
  const k = int(r, depth > 0 ? 10 : 7);
  switch (k) {
    case 0:
      return null;
    case 1:
      return r() < 0.5;
    case 2:
      return int(r, 200000) - 1000;
    case 3:
      return pick(r, [0, -0, 1.5, 1e300, -1e-300, 2 ** 53 + 1, 65535, 65536, 100, 99, 3600000, 3600001]);
    case 4:
      return randomString(r);
    case 5:
      return pick(r, ['abort', 'continue', 'queue', 'refuse', 'info', 'debug', './x.mjs', 'h1']);
    case 6:
      return pick(r, KEYS);
    case 7:
    case 8: {
      const o: Record<string, unknown> = {};
      const n = int(r, 5);
      for (let i = 0; i < n; i++) o[r() < 0.7 ? pick(r, KEYS) : randomString(r)] = randomJson(r, depth - 1);
      return o;
    }
    default:
      return Array.from({ length: int(r, 4) }, () => randomJson(r, depth - 1));
  }
}

function mutate(r: Rand, text: string): string {
  const pos = () => int(r, text.length + 1);
  const lines = () => text.split('\n');
  switch (int(r, 11)) {
    case 0: {
      // byte flip: a special character or any code unit
      const p = int(r, Math.max(1, text.length));
      const c = r() < 0.5 ? pick(r, SPECIAL) : String.fromCharCode(int(r, 256));
      return text.slice(0, p) + c + text.slice(p + 1);
    }
    case 1:
      return text.slice(0, pos()); // truncation
    case 2: {
      const a = pos();
      return text.slice(0, a) + text.slice(a + int(r, 40)); // deletion
    }
    case 3: {
      const a = pos();
      return text.slice(0, a) + randomString(r) + text.slice(a); // garbage
    }
    case 4: {
      const ls = lines();
      const i = int(r, ls.length);
      ls.splice(int(r, ls.length + 1), 0, ls[i] ?? ''); // duplicated line (duplicate keys)
      return ls.join('\n');
    }
    case 5: {
      const ls = lines();
      const i = int(r, ls.length);
      const l = ls[i] ?? '';
      ls[i] = r() < 0.5 ? ' '.repeat(1 + int(r, 4)) + l : r() < 0.5 ? l.replace(/^ {1,2}/, '') : `\t${l}`; // indentation
      return ls.join('\n');
    }
    case 6:
    case 7: {
      // a value replaced by random nested JSON
      const ls = lines();
      const candidates = ls.map((l, i) => (/:\s*\S/.test(l) ? i : -1)).filter((i) => i >= 0);
      if (!candidates.length) return text;
      const i = pick(r, candidates);
      ls[i] = ls[i]!.replace(/:\s*\S.*$/, `: ${JSON.stringify(randomJson(r))}`);
      return ls.join('\n');
    }
    case 8: {
      // a new key with a random value, at some line and indentation
      const ls = lines();
      ls.splice(int(r, ls.length + 1), 0, `${' '.repeat(2 * int(r, 3))}${pick(r, KEYS) || 'x'}: ${JSON.stringify(randomJson(r))}`);
      return ls.join('\n');
    }
    case 9: {
      const ls = lines();
      const a = int(r, ls.length);
      const b = int(r, ls.length);
      [ls[a], ls[b]] = [ls[b]!, ls[a]!];
      return ls.join('\n');
    }
    default: {
      // anchors and aliases, in order or not
      const anchor = `&a${int(r, 3)} `;
      const alias = ` *a${int(r, 3)}`;
      const p1 = pos();
      const once = text.slice(0, p1) + anchor + text.slice(p1);
      const p2 = int(r, once.length + 1);
      return once.slice(0, p2) + alias + once.slice(p2);
    }
  }
}

interface Outcome {
  readonly kind: 'parsed' | 'config-error';
}

/** Inputs in failure messages, cut short: the hostile ones are huge. */
const shown = (text: string) => (text.length > 2000 ? `${text.slice(0, 2000)}... (${text.length} characters)` : text);

function check(text: string, label: string): Outcome {
  const t0 = performance.now();
  let outcome: Outcome;
  try {
    const config = parseConfigText(text, 'fuzz.yaml');
    // what comes out is a configuration, and printing it gives the same one back
    configSchema.parse(config);
    const again = parseConfigText(formatEffectiveConfig(config), 'effective.yaml');
    if (JSON.stringify(again) !== JSON.stringify(config)) throw new Error(`${label}: effective configuration does not round-trip`);
    outcome = { kind: 'parsed' };
  } catch (err) {
    if (!(err instanceof ConfigError)) {
      throw new Error(`${label}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}\n--- input ---\n${shown(text)}`, { cause: err });
    }
    if (!err.message.startsWith('fuzz.yaml') || err.issues.length === 0) throw new Error(`${label}: ConfigError without file or issues: ${err.message}`);
    outcome = { kind: 'config-error' };
  }
  const ms = performance.now() - t0;
  if (ms > PER_CASE_MS) throw new Error(`${label}: took ${Math.round(ms)} ms\n--- input ---\n${shown(text)}`);
  return outcome;
}

t.test(`mutations of a valid file (seed ${SEED}, ${CASES} cases)`, { timeout: 120_000 }, async (t) => {
  t.equal(check(BASE, 'base').kind, 'parsed', 'the unmutated file is valid');
  const counts = { parsed: 0, 'config-error': 0 };
  for (let i = 0; i < CASES; i++) {
    // one PRNG per case, so a failing case is reproducible on its own
    const seed = (SEED + i * 0x9e3779b1) >>> 0;
    const r = prng(seed);
    let text = BASE;
    for (let m = 1 + int(r, 3); m > 0; m--) text = mutate(r, text);
    counts[check(text, `case ${i} (case seed ${seed})`).kind]++;
  }
  t.ok(counts.parsed > 0, `some mutations still parse (${counts.parsed})`);
  t.ok(counts['config-error'] > CASES / 4, `most mutations are rejected with ConfigError (${counts['config-error']})`);
});

t.test(`random documents (seed ${SEED})`, { timeout: 120_000 }, async (t) => {
  const r = prng(SEED ^ 0xabcdef);
  let parsed = 0;
  for (let i = 0; i < CASES / 3; i++) {
    const doc = randomJson(r, 4);
    const asJson = JSON.stringify(doc) ?? 'null';
    if (check(asJson, `document ${i}`).kind === 'parsed') parsed++;
    // and the same value in block style, through the yaml writer
    check(formatEffectiveConfig(doc as never), `block document ${i}`);
  }
  // check() throws on anything but a valid configuration or a ConfigError; both outcomes must occur
  t.ok(parsed > 0 && parsed < CASES / 3, `${parsed} of ${CASES / 3} random documents parsed, the rest ConfigErrors`);
});

t.test('hostile inputs', async (t) => {
  const bomb = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'];
  for (const k of ['b', 'c', 'd', 'e', 'f', 'g', 'h', 'i']) bomb.push(`${k}: &${k} [${Array(9).fill(`*${String.fromCharCode(k.charCodeAt(0) - 1)}`).join(', ')}]`);
  const cases: Record<string, string> = {
    'billion laughs': bomb.join('\n'),
    'deep nesting': `${'['.repeat(5000)}${']'.repeat(5000)}`,
    'deep block nesting': Array.from({ length: 500 }, (_, i) => `${' '.repeat(i)}k${i}:`).join('\n'),
    'long line': `quiesce: {timeoutMs: ${'9'.repeat(100000)}}`,
    'many keys': Array.from({ length: 3000 }, (_, i) => `k${i}: ${i}`).join('\n'),
    'NUL bytes': 'quiesce:\u0000\n  timeoutMs: 1\u0000\n',
    'lone surrogate': 'log:\n  level: "\ud800"\n',
    'BOM': '\ufeffquiesce: {timeoutMs: 5}\n',
    'CRLF': 'quiesce:\r\n  timeoutMs: 5\r\n',
    'self-referencing alias': 'a: &a [*a]\n',
    'self-referencing options': 'plugins:\n  - use: x\n    options: &o {self: *o}\n',
    'deep data where any value is allowed': `plugins:\n  - use: x\n    options: ${'['.repeat(300)}${']'.repeat(300)}\n`,
    'yaml 1.1 types': '%YAML 1.1\n---\nlog: {level: 2001-01-01}\nplugins:\n  - use: x\n    options: !!set {a, b}\n',
    'merge key': 'base: &b {timeoutMs: 5}\nquiesce:\n  <<: *b\n',
    'tags': 'quiesce: !!map {timeoutMs: !!int "5"}\nlog: !custom {level: info}\n',
    'directive': '%YAML 1.1\n---\nlog: {level: info}\n',
    'binary in options': 'plugins:\n  - use: x\n    options: {blob: !!binary aGVsbG8=}\n',
  };
  // what each one must give (check() throws on anything else, or when slow)
  const parses = new Set(['BOM', 'CRLF', 'tags', 'directive', 'binary in options']);
  for (const [name, text] of Object.entries(cases)) {
    t.equal(check(text, name).kind, parses.has(name) ? 'parsed' : 'config-error', name);
  }
});
