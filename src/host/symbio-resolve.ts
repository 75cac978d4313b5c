/**
 * Lets a plugin outside this package `import ... from 'symbio'` (and
 * 'symbio/...') and get the symbio that is loading it. Node resolves a bare
 * specifier from the importing file's own node_modules only, so a plugin in
 * an operator's directory, or symbio installed globally, would otherwise not
 * find it. The hook only steps in when normal resolution fails: a plugin
 * that ships its own symbio dependency keeps it.
 */
import { register } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { packageRoot } from '../util/package-root.js';

let registered = false;

export function makeSymbioResolvable(): void {
  if (registered) return;
  registered = true;
  // Resolving as if imported from our own package.json uses package
  // self-reference, so the package's "exports" map decides what is public.
  const self = JSON.stringify(pathToFileURL(join(packageRoot(), 'package.json')).href);
  const hook = `export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (err) {
    if (specifier === 'symbio' || specifier.startsWith('symbio/')) return next(specifier, { ...context, parentURL: ${self} });
    throw err;
  }
}`;
  register(`data:text/javascript,${encodeURIComponent(hook)}`);
}
