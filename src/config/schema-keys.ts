/**
 * Which keys a mapping at some path of a zod schema may have: for "unknown
 * key (known: ...)" messages and did-you-mean hints. Reads zod 4's public
 * `_zod.def` structure by duck typing, because plugins' schemas may come
 * from another copy of zod; anything unrecognised yields undefined (the
 * message then just says "unknown key").
 */

interface Def {
  readonly type?: string;
  readonly shape?: Record<string, unknown>;
  readonly element?: unknown;
  readonly innerType?: unknown;
  readonly in?: unknown;
  readonly options?: readonly unknown[];
  readonly getter?: () => unknown;
}

function defOf(schema: unknown): Def | undefined {
  if (schema === null || typeof schema !== 'object') return undefined;
  const internals = (schema as { _zod?: { def?: unknown } })._zod;
  const def = internals?.def;
  return def !== null && typeof def === 'object' ? (def as Def) : undefined;
}

/** Strip wrappers (optional, default, prefault, pipe, lazy, ...) down to the schemas that hold values. */
function cores(schema: unknown, depth = 0): unknown[] {
  const def = defOf(schema);
  if (!def || depth > 20) return [];
  if (def.innerType !== undefined) return cores(def.innerType, depth + 1);
  if (def.type === 'pipe') return cores(def.in, depth + 1);
  if (def.type === 'lazy' && typeof def.getter === 'function') return cores(def.getter(), depth + 1);
  if (def.type === 'union' && Array.isArray(def.options)) return def.options.flatMap((o) => cores(o, depth + 1));
  return [schema];
}

function step(schemas: unknown[], seg: PropertyKey): unknown[] {
  const out: unknown[] = [];
  for (const s of schemas) {
    const def = defOf(s);
    if (def?.type === 'object' && def.shape && typeof seg === 'string' && Object.prototype.hasOwnProperty.call(def.shape, seg)) {
      out.push(...cores(def.shape[seg]));
    } else if (def?.type === 'array' && typeof seg === 'number') {
      out.push(...cores(def.element));
    }
  }
  return out;
}

export function knownKeysAt(schema: unknown, path: readonly PropertyKey[]): string[] | undefined {
  let cur = cores(schema);
  for (const seg of path) cur = step(cur, seg);
  const keys = new Set<string>();
  for (const s of cur) {
    const def = defOf(s);
    if (def?.type === 'object' && def.shape) for (const k of Object.keys(def.shape)) keys.add(k);
  }
  return keys.size ? [...keys] : undefined;
}
