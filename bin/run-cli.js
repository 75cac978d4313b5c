// Shared by the two executables: load the compiled CLI (dist/) and run it.
// Thin on purpose: everything lives in src/cli/main.ts.
import { existsSync } from 'node:fs';

export async function runCli(invokedAs) {
  const cli = new URL('../dist/src/cli/main.js', import.meta.url);
  if (!existsSync(cli)) {
    console.error('symbio is not built: run npm run build');
    process.exit(2);
  }
  const { main } = await import(cli.href);
  process.exitCode = await main(process.argv.slice(2), invokedAs);
}
