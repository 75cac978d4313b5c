/**
 * YAML text -> plain data, keeping the document so that a key path can be
 * mapped back to a line:column for messages. Every failure (syntax,
 * duplicate keys, several documents, alias bombs) becomes a ConfigError.
 */
import { isAlias, isMap, isNode, isScalar, isSeq, LineCounter, parseDocument, type Document, type Pair, type YAMLMap } from 'yaml';
import { ConfigError, formatPath, type ConfigIssue, type Position } from './errors.js';

export interface YamlSource {
  /** The document as plain JS data; null for an empty document. */
  readonly data: unknown;
  /** Where `path` is: the key itself ('key') or its value ('value'); the nearest enclosing node when the path is absent. */
  locate(path: readonly PropertyKey[], what: 'key' | 'value'): Position | undefined;
}

/** Aliases expanded at most this many times: a few lines of YAML must not expand into gigabytes. */
const MAX_ALIAS_COUNT = 100;
/** Deeper data is refused, so that everything that walks it later (null dropping, validation) stays far from the stack limit. */
export const MAX_DEPTH = 100;

/**
 * A node that contains an alias to itself (`a: &a [*a]`) becomes a cyclic
 * object, and very deep nesting a stack overflow in whatever walks it next:
 * both are refused here, in one walk that visits each object once.
 */
function structureProblem(data: unknown): { path: PropertyKey[]; message: string } | undefined {
  const ancestors = new Set<object>();
  const done = new Set<object>();
  const walk = (v: unknown, path: PropertyKey[]): { path: PropertyKey[]; message: string } | undefined => {
    if (v === null || typeof v !== 'object' || ArrayBuffer.isView(v)) return undefined;
    if (ancestors.has(v)) return { path, message: 'invalid YAML: recursive alias (this node contains an alias to itself)' };
    if (done.has(v)) return undefined;
    if (path.length >= MAX_DEPTH) return { path, message: `nested more than ${MAX_DEPTH} levels deep` };
    ancestors.add(v);
    const entries: [PropertyKey, unknown][] = Array.isArray(v) ? [...v.entries()] : Object.entries(v);
    for (const [k, x] of entries) {
      const p = walk(x, [...path, k]);
      if (p) return p;
    }
    ancestors.delete(v);
    done.add(v);
    return undefined;
  };
  return walk(data, []);
}

function start(node: unknown): number | undefined {
  return isNode(node) && node.range ? node.range[0] : undefined;
}

function keyText(pair: Pair): string | undefined {
  const k = pair.key;
  if (isScalar(k)) return String(k.value);
  return typeof k === 'string' || typeof k === 'number' ? String(k) : undefined;
}

/**
 * Duplicate keys, found in one walk with a set per mapping. (yaml's own
 * `uniqueKeys` check compares every pair with every other: quadratic, and a
 * file of a few thousand keys would take seconds.) Keys are compared as
 * strings, as they end up in the parsed object.
 */
function duplicateKeys(doc: Document.Parsed): { path: PropertyKey[]; at: number | undefined; first: number | undefined }[] {
  const found: { path: PropertyKey[]; at: number | undefined; first: number | undefined }[] = [];
  const walk = (node: unknown, path: PropertyKey[], depth: number): void => {
    if (depth > 1000) return;
    if (isMap(node)) {
      const seen = new Map<string, number | undefined>();
      for (const pair of node.items) {
        const k = keyText(pair);
        if (k !== undefined) {
          if (seen.has(k)) found.push({ path: [...path, k], at: start(pair.key), first: seen.get(k) });
          else seen.set(k, start(pair.key));
        }
        walk(pair.value, k === undefined ? path : [...path, k], depth + 1);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => walk(item, [...path, i], depth + 1));
    }
  };
  walk(doc.contents, [], 0);
  return found;
}

export function parseYamlSource(text: string, file: string): YamlSource {
  const lineCounter = new LineCounter();
  let doc: Document.Parsed;
  try {
    doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: false });
  } catch (err) {
    // parseDocument reports problems in doc.errors; a throw would be a yaml bug, still a config problem for the user
    throw new ConfigError(file, `invalid YAML: ${(err as Error).message}`, { cause: err });
  }
  const pos = (offset: number | undefined): Position | undefined => {
    if (offset === undefined) return undefined;
    const p = lineCounter.linePos(offset);
    return { line: Math.max(1, p.line), col: Math.max(1, p.col) };
  };

  const issues: ConfigIssue[] = doc.errors.map((e) => {
    const message = e.message.split('\n')[0] ?? e.message;
    const p = pos(e.pos[0]);
    if (e.code === 'MULTIPLE_DOCS') return { path: '', ...p, message: 'a configuration file holds one YAML document (found another --- here)' };
    return { path: '', ...p, message: `invalid YAML: ${message}` };
  });
  if (issues.length === 0) {
    for (const d of duplicateKeys(doc)) {
      const first = pos(d.first);
      issues.push({ path: formatPath(d.path), ...pos(d.at), message: `duplicate key${first ? ` (first set at line ${first.line})` : ''}` });
    }
  }
  if (issues.length) throw new ConfigError(file, issues);

  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (err) {
    // e.g. "Excessive alias count indicates a resource exhaustion attack"
    throw new ConfigError(file, `invalid YAML: ${(err as Error).message}`, { cause: err });
  }

  // key -> pair, per mapping, built when first needed (the last pair with a key is the one toJS kept)
  const index = new WeakMap<YAMLMap, Map<string, Pair>>();
  const pairOf = (map: YAMLMap, key: string): Pair | undefined => {
    let m = index.get(map);
    if (!m) {
      m = new Map();
      for (const p of map.items) {
        const k = keyText(p);
        if (k !== undefined) m.set(k, p);
      }
      index.set(map, m);
    }
    return m.get(key);
  };

  const locate = (path: readonly PropertyKey[], what: 'key' | 'value'): Position | undefined => {
    let node: unknown = doc.contents;
    let best = start(node);
    for (let i = 0; i < path.length; i++) {
      if (isAlias(node)) node = node.resolve(doc);
      const seg = path[i]!;
      if (isMap(node)) {
        const pair = pairOf(node, String(seg));
        if (!pair) break;
        const keyStart = start(pair.key);
        if (i === path.length - 1 && what === 'key') return pos(keyStart ?? best);
        node = pair.value;
        best = start(node) ?? keyStart ?? best;
      } else if (isSeq(node) && typeof seg === 'number') {
        node = node.items[seg];
        if (node === undefined) break;
        best = start(node) ?? best;
      } else {
        break;
      }
    }
    return pos(best);
  };

  const problem = structureProblem(data);
  if (problem) throw new ConfigError(file, [{ path: formatPath(problem.path), ...locate(problem.path, 'value'), message: problem.message }]);
  return { data, locate };
}
