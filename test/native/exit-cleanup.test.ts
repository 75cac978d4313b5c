/**
 * A stopped agent must leave nothing in /dev/shm: src/native.ts closes every
 * open segment on SIGTERM / SIGINT (then re-raises the signal with its default
 * action), on process.exit() and at the natural end of the process. Each case
 * runs a child node process (with this run's TypeScript loader) that holds a
 * watched, held segment.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import t, { type Test } from 'tap';

const nativeUrl = new URL('../../src/native.ts', import.meta.url).href;
let serial = 0;

interface Child {
  readonly name: string;
  readonly output: () => string;
  readonly kill: (signal: NodeJS.Signals) => void;
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Runs `body` (ESM) in a child after it created segment `name` (in scope as
 * `seg`), started watching and held the ranks (`before` runs before all
 * that); resolves once the child printed "ready".
 */
function runChild(t: Test, body: string, before = '', execArgv = process.execArgv): Promise<Child> {
  const name = `/symbio-xtest-${process.pid}-${++serial}`;
  const script = `
    import { ControlSegment } from ${JSON.stringify(nativeUrl)};
    ${before}
    const seg = new ControlSegment({ name: ${JSON.stringify(name)}, slots: 2, worldSize: 2, resumeTimeoutMs: 1000, jobId: 'exit-test' });
    seg.watch(() => {});
    seg.hold();
    ${body}
  `;
  const child = spawn(process.execPath, [...execArgv, '--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return new Promise((resolve, reject) => {
    const onData = (): void => {
      if (out.includes('ready\n')) {
        child.stdout!.off('data', onData);
        resolve({ name, output: () => out, kill: (s) => child.kill(s), exit });
      }
    };
    child.stdout!.on('data', onData);
    void exit.then((e) => reject(new Error(`child exited (${JSON.stringify(e)}) before ready: ${out}`)));
  });
}

const ready = `process.stdout.write('ready\\n');`;
const stayAlive = `setInterval(() => {}, 1 << 30);`;

// tap's process-info hook loads signal-exit into the child, whose own
// listeners must not keep ours from re-raising; without it, ours are alone.
const loaderOnly = process.execArgv.filter((a) => !a.includes('@tapjs/processinfo'));
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  for (const [variant, execArgv] of [
    ['alone', loaderOnly],
    ['with signal-exit loaded', process.execArgv],
  ] as const) {
    t.test(`${signal} (${variant}): segment removed, then the signal's default action`, async (t) => {
      const child = await runChild(t, `${ready} ${stayAlive}`, '', execArgv);
      t.ok(existsSync(`/dev/shm${child.name}`), 'segment exists while the child runs');
      child.kill(signal);
      t.same(await child.exit, { code: null, signal }, `child was terminated by ${signal}`);
      t.notOk(existsSync(`/dev/shm${child.name}`), 'no /dev/shm entry left');
    });
  }
}

t.test('SIGTERM with another listener: segment removed, that listener decides', async (t) => {
  const child = await runChild(
    t,
    `process.on('SIGTERM', () => { setTimeout(() => process.exit(7), 20); }); ${ready} ${stayAlive}`,
  );
  child.kill('SIGTERM');
  t.same(await child.exit, { code: 7, signal: null }, "the application's own handler ran and chose the exit code");
  t.notOk(existsSync(`/dev/shm${child.name}`));
});

t.test('process.exit(): segment removed', async (t) => {
  const child = await runChild(t, `${ready} setTimeout(() => process.exit(3), 20);`);
  t.same(await child.exit, { code: 3, signal: null });
  t.notOk(existsSync(`/dev/shm${child.name}`));
});

t.test('uncaught exception: segment removed', async (t) => {
  const child = await runChild(t, `${ready} setTimeout(() => { throw new Error('boom'); }, 20);`);
  t.same(await child.exit, { code: 1, signal: null });
  t.match(child.output(), /boom/);
  t.notOk(existsSync(`/dev/shm${child.name}`));
});

t.test('natural end after close(): signal handlers are gone again', async (t) => {
  const count = `[process.listenerCount('SIGTERM'), process.listenerCount('SIGINT')].join(' ')`;
  const child = await runChild(
    t,
    `const during = ${count}; seg.close(); console.log('listeners', before, '|', during, '|', ${count}); ${ready}`,
    `const before = ${count};`,
  );
  t.same(await child.exit, { code: 0, signal: null });
  const m = /listeners (\d+ \d+) \| (\d+ \d+) \| (\d+ \d+)/.exec(child.output());
  t.ok(m, child.output());
  const [, before, during, after] = m!;
  t.not(during, before, 'SIGTERM/SIGINT listeners added while a segment is open');
  t.equal(after, before, 'and removed when the last one closed');
  t.notOk(existsSync(`/dev/shm${child.name}`));
});
