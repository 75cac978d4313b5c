/**
 * The Debian mirror to debootstrap from: the one this host's apt already
 * uses for the suite (it is known to be reachable, and may be a local proxy
 * or snapshot), else deb.debian.org.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export const DEFAULT_MIRROR = 'http://deb.debian.org/debian';

interface Source {
  readonly uri: string;
  readonly suites: readonly string[];
}

/** deb822 stanzas (`*.sources`): Types / URIs / Suites. */
export function parseDeb822Sources(text: string): Source[] {
  const out: Source[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of stanza.split('\n')) {
      if (line.startsWith('#')) continue;
      const m = /^([A-Za-z-]+):\s*(.*)$/.exec(line);
      if (m) fields.set(m[1]!.toLowerCase(), m[2]!.trim());
    }
    if (fields.get('enabled') === 'no') continue;
    if (!(fields.get('types') ?? '').split(/\s+/).includes('deb')) continue;
    const suites = (fields.get('suites') ?? '').split(/\s+/).filter(Boolean);
    for (const uri of (fields.get('uris') ?? '').split(/\s+/).filter(Boolean)) out.push({ uri, suites });
  }
  return out;
}

/** One-line style (`sources.list`): `deb [options] URI suite components...`. */
export function parseOneLineSources(text: string): Source[] {
  const out: Source[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').replace(/\[[^\]]*\]/, ' ').trim();
    const [type, uri, suite] = line.split(/\s+/);
    if (type === 'deb' && uri && suite) out.push({ uri, suites: [suite] });
  }
  return out;
}

function hostSources(): Source[] {
  const sources: Source[] = [];
  const read = (p: string) => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return '';
    }
  };
  let listed: string[] = [];
  try {
    listed = readdirSync('/etc/apt/sources.list.d').sort();
  } catch {
    // no sources.list.d
  }
  for (const name of listed) {
    const p = join('/etc/apt/sources.list.d', name);
    if (name.endsWith('.sources')) sources.push(...parseDeb822Sources(read(p)));
    else if (name.endsWith('.list')) sources.push(...parseOneLineSources(read(p)));
  }
  sources.push(...parseOneLineSources(read('/etc/apt/sources.list')));
  return sources;
}

/** The host's mirror for `suite` (http, https or file), else DEFAULT_MIRROR. */
export function hostDebianMirror(suite: string, sources: readonly Source[] = hostSources()): string {
  const usable = sources.filter((s) => /^(https?|file):/.test(s.uri) && s.suites.includes(suite));
  return (usable[0]?.uri ?? DEFAULT_MIRROR).replace(/\/+$/, '');
}
