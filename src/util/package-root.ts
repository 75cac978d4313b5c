/** The symbio package's root directory, found from this module's location
 * (works from src/ under tap and from dist/src/ after the build). */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | null = null;

export function packageRoot(): string {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if ((JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'symbio') return (cached = dir);
      } catch {
        // keep looking
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the symbio package root (package.json named "symbio")');
    dir = up;
  }
}

/** Path of a native build product (build/Release/<name>). */
export function nativeArtifact(name: string): string {
  return join(packageRoot(), 'build', 'Release', name);
}
