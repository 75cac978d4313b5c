/**
 * The catalogue of the plugins that ship with symbio (plugins/monitors,
 * plugins/policies): what `symbio plugins builtin` shows, so a user can find
 * them and their options without reading the source. Each entry is read from
 * the plugin itself (name, kind, version, description) and its options from
 * its zod schema (type, default, description), so the catalogue cannot drift
 * from the code. Modules there that are not plugins (shared helpers) are
 * skipped.
 */
import { readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { z } from 'zod';
import type { PluginKind } from './plugin-api.js';
import { pluginShape } from './plugin-loader.js';

export interface BuiltinOption {
  readonly name: string;
  /** JSON Schema's type (or the allowed values, for an enum). */
  readonly type: string;
  readonly required: boolean;
  readonly default?: unknown;
  readonly description?: string;
}

export interface BuiltinPlugin {
  /** What to write under `use:` in symbio.yaml. */
  readonly use: string;
  readonly name: string;
  readonly kind: PluginKind;
  readonly version: string;
  readonly description: string;
  readonly options: readonly BuiltinOption[];
}

const GROUPS = ['monitors', 'policies'] as const;

/** plugins/ next to this module's tree: dist/plugins when compiled, the sources under a TS loader. */
function pluginsDir(): string {
  return fileURLToPath(new URL('../../plugins/', import.meta.url));
}

/** One option's type in a word: string, number, integer, boolean, array, object, or its values. */
function typeOf(p: Record<string, unknown>): string {
  if (Array.isArray(p.enum)) return p.enum.map((v) => JSON.stringify(v)).join('|');
  if (typeof p.type === 'string') return p.type;
  if (Array.isArray(p.anyOf)) return p.anyOf.map((x) => typeOf(x as Record<string, unknown>)).join('|');
  return 'any';
}

function optionsOf(schema: z.ZodType): BuiltinOption[] {
  // 'input': defaults make an option optional to the user; transforms cannot be drawn, and need not be
  const js = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as { properties?: Record<string, Record<string, unknown>>; required?: string[] };
  const required = new Set(js.required ?? []);
  return Object.entries(js.properties ?? {}).map(([name, p]) => ({
    name,
    type: typeOf(p),
    required: required.has(name),
    ...('default' in p ? { default: p.default } : {}),
    ...(typeof p.description === 'string' ? { description: p.description } : {}),
  }));
}

/** Every built-in plugin, monitors then policies, by name. */
export async function listBuiltinPlugins(): Promise<BuiltinPlugin[]> {
  const out: BuiltinPlugin[] = [];
  for (const group of GROUPS) {
    const dir = join(pluginsDir(), group);
    const files = readdirSync(dir).filter((f) => /\.(js|ts)$/.test(f) && !f.endsWith('.d.ts')).sort();
    for (const file of files) {
      const mod = (await import(pathToFileURL(join(dir, file)).href)) as { default?: unknown };
      if (mod.default === undefined) continue; // a helper module, not a plugin
      // a shipped plugin that does not check out is a bug to show, not to hide from the list
      const shape = pluginShape.safeParse(mod.default);
      if (!shape.success) throw new Error(`built-in plugin ${group}/${file} is not a valid plugin: ${shape.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
      const p = shape.data;
      out.push({
        use: `symbio/plugins/${group}/${file.replace(/\.(js|ts)$/, '')}`,
        name: p.name,
        kind: p.kind,
        version: p.version,
        description: p.description ?? '',
        options: optionsOf(p.configSchema),
      });
    }
  }
  return out;
}

/** The catalogue as text: one block per plugin, its options indented under it. */
export function formatBuiltinPlugins(plugins: readonly BuiltinPlugin[]): string {
  return plugins
    .map((p) => {
      const head = `${p.name} (${p.kind}) — ${p.description}\n  use: ${p.use}`;
      const opts = p.options.map((o) => {
        const dflt = o.default !== undefined ? ` = ${JSON.stringify(o.default)}` : o.required ? ' (required)' : '';
        return `    ${o.name}: ${o.type}${dflt}${o.description ? `  ${o.description}` : ''}`;
      });
      return [head, ...(opts.length ? ['  options:', ...opts] : ['  no options'])].join('\n');
    })
    .join('\n\n');
}
