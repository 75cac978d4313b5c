/**
 * `symbio report`: the page made from a job's journal, and that page in a
 * real browser (Debian's chromium, headless): the elements are in its DOM
 * and its screenshot shows a drawn timeline. The journal is written with
 * the real JobJournal, as the controller writes it, with the operations of
 * a job that checkpointed, migrated (with progress samples and a
 * retarget), failed and restarted; the full chain from a real run is in
 * test/vcluster/ft.test.ts.
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { JobJournal } from '../../src/controller/journal.js';
import { ReportError, writeJobReport } from '../../src/report/write-report.js';
import { run, symbioCli } from '../helpers/mpi.js';

const dir = mkdtempSync(join(tmpdir(), 'symbio-report-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const stateDir = join(dir, 'state');

const T0 = Date.UTC(2026, 10, 23, 12, 0, 0);

/** An operation record as the controller journals it: phases back to back from `at`. */
function op(id: string, kind: string, at: number, phases: [string, number, Record<string, unknown>?][], extra: Record<string, unknown> = {}) {
  let t0 = at;
  const timeline = phases.map(([name, ms, detail]) => {
    const p = { name, startedAt: t0, ms, ...(detail ? { detail } : {}) };
    t0 += ms;
    return p;
  });
  return { id, job: 'rj', kind, ok: true, startedAt: at, durationMs: t0 - at, phases: timeline.map((p) => ({ name: p.name, ms: p.ms })), requestedBy: 'periodic-checkpoint', reason: 'every 20 s', timeline, ...extra };
}

function writeJournal(job: string): { pausedMs: number } {
  const j = new JobJournal(stateDir, job);
  // JobJournal stamps events with the time they happen; these happen at chosen times, in its format
  const ev = (at: number, type: string, data: Record<string, unknown>) => appendFileSync(j.eventsFile, JSON.stringify({ at, type, job, ...data }) + '\n');
  ev(T0, 'job-started', { command: ['mpirun', '-np', '4', '/opt/symbio/build/mpi/halo2d', '8000'], np: 4 });
  const ckpt = op('op-c1', 'checkpoint', T0 + 20_000, [['quiescing', 200], ['freezing', 1], ['stopping-vms', 10], ['saving', 900], ['writing-manifest', 3], ['continuing', 150], ['resuming', 80]]);
  j.operation(ckpt);
  ev(T0 + 30_000, 'health', { monitor: 'vcluster-health', host: 'slot1', component: 'memory mc0', severity: 'critical', message: 'uncorrectable errors', leadTimeMs: 120_000 });
  ev(T0 + 30_100, 'decision', { by: 'migrate-on-health', action: 'migrate', job, vms: ['vm1'], reason: 'host slot1 failing <script>alert("x")</script> & co' });
  const progress = Array.from({ length: 20 }, (_, i) => ({ vm: 'vm1', t: 1000 + i * 100, remaining: (19 - i) * 20 * 2 ** 20, transferred: i * 20 * 2 ** 20 }));
  const mig = op('op-m1', 'migrate', T0 + 30_200, [
    ['preparing-destination', 300, { targets: { vm1: 'slot2' } }],
    ['quiescing', 150],
    ['freezing', 1],
    ['detaching', 400],
    ['migrating', 2000, { progress, retargeted: [{ vm: 'vm1', from: 'slot2', to: 'slot3', atMs: 1500 }], vms: [{ vm: 'vm1', to: 'slot3' }] }],
    ['attaching', 10],
    ['restoring-network', 600],
    ['resuming', 100],
  ], { requestedBy: 'migrate-on-health', reason: 'host slot1 failing' });
  j.operation(mig);
  ev(T0 + 31_700, 'retarget', { op: 'op-m1', from: 'slot2', to: 'slot3', reason: 'fan failure' });
  ev(T0 + 34_000, 'host-state', { host: 'slot1', state: 'drained', reason: 'no VMs left' });
  ev(T0 + 50_000, 'failure', { kind: 'qemu-gone', vm: 'vm0', host: 'slot0', message: "vm0's QEMU is gone" });
  ev(T0 + 51_000, 'failure', { kind: 'rank-dead', vm: 'vm1', message: 'rank 2 exited', sameFaultAs: 'qemu-gone', acted: false });
  ev(T0 + 50_050, 'host-state', { host: 'slot0', state: 'down', reason: 'qemu gone' });
  const failedCkpt = { ...op('op-c2', 'checkpoint', T0 + 49_500, [['quiescing', 300], ['rolling-back', 200]]), ok: false, error: 'node vm0 is gone' };
  j.operation(failedCkpt);
  const restart = op('op-r1', 'restart', T0 + 50_200, [['verifying', 400], ['starting-vms', 800], ['reconnecting', 500], ['resuming', 70]], { requestedBy: 'restart-on-failure', reason: 'qemu-gone' });
  j.operation(restart);
  ev(T0 + 90_000, 'job-finished', { exitCode: 0 });
  // quiescing..resuming of each: 200+1+10+900+3+150+80, 150+1+400+2000+10+600+100, 300+200 (no resuming: to the
  // end); a restart pauses nothing (the job was down already: that is its outage)
  return { pausedMs: 1344 + 3261 + 500 };
}

const count = (html: string, re: RegExp): number => (html.match(re) ?? []).length;

t.test('the page: every operation, marker and chart, escaped text, the numbers from the phases', async (t) => {
  const want = writeJournal('rj');
  const out = join(dir, 'rj.html');
  const r = writeJobReport({ stateDir, job: 'rj', out });
  t.equal(r.path, out);
  const html = readFileSync(out, 'utf8');
  t.equal(count(html, /<g class="op-bar"/g), 4, 'one bar per operation');
  t.equal(count(html, /class="op-bar" data-kind="checkpoint"[^>]*data-ok="false"/g), 1, 'the failed checkpoint is marked');
  t.equal(count(html, /class="phase-seg"/g), 7 + 8 + 2 + 4, 'one segment per phase');
  t.equal(count(html, /class="health-marker" data-severity="critical"/g), 1);
  t.equal(count(html, /class="failure-marker"/g), 2, 'both failure signals shown');
  t.equal(count(html, /class="decision-marker"/g), 1);
  t.equal(count(html, /class="checkpoint-marker"/g), 1, 'only the checkpoint that completed');
  t.equal(count(html, /class="host-state-marker"/g), 2);
  t.equal(count(html, /<svg class="migration-chart" data-op="op-m1"/g), 1, 'the migration has its progress chart');
  t.match(html, /class="retarget-line"/, 'with the retarget on it');
  t.notMatch(html, /<script/i, 'no script at all, and the reason with <script> is escaped');
  t.match(html, /failing &lt;script&gt;alert\(&quot;x&quot;\)&lt;\/script&gt; &amp; co/);
  t.notMatch(html, /(src|href)="(https?:)?\/\//, 'nothing fetched from elsewhere');
  t.equal(r.summary.pausedMs, want.pausedMs, 'paused time summed from the phases');
  t.equal(r.summary.downtimeMs, want.pausedMs + (T0 + 50_200 + 1770 - (T0 + 50_000)), 'downtime adds the outage from the failure to the restart');
  t.match(r.summary, { checkpoints: 1, migrations: 1, restarts: 1, failures: 1, healthEvents: 1, decisions: 1, exitCode: 0, durationMs: 90_000, operations: { checkpoint: { ok: 1, failed: 1 } } });
});

t.test('a journal with only a start, and no journal at all', async (t) => {
  new JobJournal(stateDir, 'young').event('job-started', { command: ['mpirun', 'x'], np: 2 });
  const r = writeJobReport({ stateDir, job: 'young' });
  t.equal(r.path, join(stateDir, 'jobs', 'young', 'report.html'), 'beside the journal by default');
  const html = readFileSync(r.path, 'utf8');
  t.match(html, /running \(no end in the journal yet\)/);
  t.match(html, /No migration with progress samples/);
  t.throws(() => writeJobReport({ stateDir, job: 'nosuch' }), ReportError);
  t.throws(() => writeJobReport({ stateDir, job: '../etc' }), ReportError, 'a job id never climbs out of the state dir');
  const cli = await run(process.execPath, [symbioCli, 'report', 'nosuch', '--state-dir', stateDir]);
  t.equal(cli.code, 2);
  t.match(cli.stderr, /no journal of job 'nosuch' in .*\(jobs with a journal: .*young/);
  const ok = await run(process.execPath, [symbioCli, 'report', 'young', '--state-dir', stateDir, '--json']);
  t.equal(ok.code, 0, ok.stderr);
  t.match(JSON.parse(ok.stdout), { path: r.path, summary: { exitCode: null } });
});

// ---------------------------------------------------------------- in a browser

function chromiumPath(): string | null {
  for (const c of ['chromium', 'chromium-browser']) {
    const r = spawnSync('sh', ['-c', `command -v ${c}`], { encoding: 'utf8' });
    if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  }
  return null;
}

/** chromium headless with a private profile and a time limit. */
function chromium(bin: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(bin, ['--headless=new', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', `--user-data-dir=${join(dir, 'chromium-profile')}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), 60_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Decode an 8-bit RGB/RGBA PNG into its pixels (what a screenshot is). */
function decodePng(buf: Buffer): { width: number; height: number; channels: number; pixels: Buffer } {
  if (buf.subarray(0, 8).toString('hex') !== '89504e470d0a1a0a') throw new Error('not a PNG');
  let off = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Buffer[] = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off);
    const type = buf.subarray(off + 4, off + 8).toString('latin1');
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      if (data[8] !== 8 || (data[9] !== 2 && data[9] !== 6) || data[12] !== 0) throw new Error(`unexpected PNG format (depth ${data[8]}, colour type ${data[9]}, interlace ${data[12]})`);
      channels = data[9] === 6 ? 4 : 3;
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    off += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const pixels = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? pixels[y * stride + x - channels]! : 0;
      const b = y > 0 ? pixels[(y - 1) * stride + x]! : 0;
      const c = x >= channels && y > 0 ? pixels[(y - 1) * stride + x - channels]! : 0;
      const p = a + b - c;
      const pr = Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - b) <= Math.abs(p - c) ? b : c;
      const v = line[x]!;
      pixels[y * stride + x] = (filter === 0 ? v : filter === 1 ? v + a : filter === 2 ? v + b : filter === 3 ? v + ((a + b) >> 1) : v + pr) & 0xff;
    }
  }
  return { width, height, channels, pixels };
}

let browser = chromiumPath();
if (!browser && process.getuid?.() === 0) {
  spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'chromium'], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, timeout: 600_000 });
  browser = chromiumPath();
}

t.test('the page in headless chromium: the DOM has the elements, the screenshot shows a drawn timeline', { skip: browser ? false : 'chromium is not installed and cannot be installed here (not root): apt-get install chromium' }, async (t) => {
  const bin = browser!;
  const html = join(dir, 'rj.html');
  const url = `file://${html}`;
  const dom = await chromium(bin, ['--dump-dom', url]);
  t.equal(dom.code, 0, `chromium rendered the page: ${dom.stderr.slice(-500)}`);
  t.equal(count(dom.stdout, /<svg id="timeline"/g), 1, 'the timeline is in the DOM');
  t.equal(count(dom.stdout, /<g class="op-bar"/g), 4, 'with its operation bars');
  t.equal(count(dom.stdout, /class="migration-chart"/g), 1, 'and the migration chart');
  t.ok(count(dom.stdout, /class="(health|failure|decision|checkpoint)-marker"/g) >= 5, 'and the markers');

  const png = join(dir, 'rj.png');
  const shot = await chromium(bin, ['--window-size=1300,1400', `--screenshot=${png}`, url]);
  t.equal(shot.code, 0, `screenshot taken: ${shot.stderr.slice(-500)}`);
  const img = decodePng(readFileSync(png));
  t.equal(img.width, 1300, 'the window size asked for');
  // the timeline sits below the header and summary cards: look at a band across it
  let inked = 0;
  const colours = new Set<number>();
  for (let y = 250; y < 700; y++) {
    for (let x = 100; x < 1250; x++) {
      const i = (y * img.width + x) * img.channels;
      const [r, g, b] = [img.pixels[i]!, img.pixels[i + 1]!, img.pixels[i + 2]!];
      if (r < 235 || g < 235 || b < 235) inked++;
      colours.add(((r >> 4) << 8) | ((g >> 4) << 4) | (b >> 4));
    }
  }
  t.ok(inked > 10_000, `the timeline area is drawn (${inked} non-background pixels)`);
  t.ok(colours.size >= 12, `in several colours (${colours.size} distinct)`);
});
