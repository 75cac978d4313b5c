/**
 * The operator's view of a running job: `symbio jobs`, `status`, `quiesce`
 * and `resume` through the job's control socket, and that socket's
 * behaviour on malformed input (errors, never a crash).
 */
import t from 'tap';
import { connect } from 'node:net';
import { statSync } from 'node:fs';
import { runtimeDir, type JobDescription } from '../../src/agent/runtime-dir.js';
import { jobRequest, mpiCommon, plainMpirun, prog, run, start, statusRanks, symbioCli, symbioMpirun, waitForJob } from '../helpers/mpi.js';
import { existsSync } from 'node:fs';

const jobId = `cli-${process.pid}`;

/** Send raw bytes, collect what comes back until the first line is in, the server closes, or 10 s pass. */
function rawExchange(socket: string, payload: string | Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(socket);
    let out = '';
    const finish = (): void => {
      s.destroy();
      resolve(out);
    };
    const timer = setTimeout(finish, 10_000); // only reached when no reply comes: then the test fails
    s.setEncoding('utf8');
    s.on('connect', () => s.write(payload));
    s.on('data', (d: string) => {
      out += d;
      if (out.includes('\n')) {
        clearTimeout(timer);
        finish(); // the tests look at the first line only
      }
    });
    s.on('error', () => {
      clearTimeout(timer);
      finish();
    });
  });
}

t.test('operator commands on a running job', async (t) => {
  const plain = await plainMpirun(4, 'halo2d');
  const { done } = start(process.execPath, [symbioMpirun, '--job-id', jobId, ...mpiCommon, '-np', '4', prog('halo2d')]);
  const desc = await waitForJob(jobId, 0); // ranks are checked below, through the CLI
  t.equal(statSync(desc.socket).mode & 0o777, 0o600, 'control socket is 0600');
  t.equal(statSync(runtimeDir()).mode & 0o077, 0, 'runtime directory is private');

  const jobs = await run(process.execPath, [symbioCli, 'jobs', '--json']);
  t.equal(jobs.code, 0);
  t.ok((JSON.parse(jobs.stdout) as JobDescription[]).some((j) => j.jobId === jobId), 'symbio jobs lists it');

  // ranks attach a moment after the job starts
  let ranks: { state: string }[] = [];
  for (let i = 0; i < 300 && ranks.length < 4; i++) {
    const s = await run(process.execPath, [symbioCli, 'status', '--job', jobId, '--json']);
    ranks = statusRanks(JSON.parse(s.stdout));
    if (ranks.length < 4) await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(ranks.length, 4, 'status shows 4 ranks');

  const q = await run(process.execPath, [symbioCli, 'quiesce', '--job', jobId, '--json']);
  t.equal(q.code, 0, `quiesce succeeded ${q.stderr}`);
  const qr = JSON.parse(q.stdout) as { kind: string; ok: boolean; phases: { name: string }[]; result: { frozen: boolean; summary: { held: number } } };
  t.equal(qr.result.frozen, true, 'frozen');
  t.equal(qr.result.summary.held, 4, 'all 4 ranks');
  t.same(qr.phases.map((p) => p.name), ['quiescing', 'freezing'], 'the operation timeline has its phases');

  const again = await run(process.execPath, [symbioCli, 'quiesce', '--job', jobId]);
  t.equal(again.code, 3, 'a second quiesce is refused (exit 3)');
  t.match(again.stderr, /already frozen/, 'with the reason');

  const ckpt = await run(process.execPath, [symbioCli, 'checkpoint', '--job', jobId]);
  t.equal(ckpt.code, 3, 'checkpoint of a job without VMs is refused');
  t.match(ckpt.stderr, /runs in no VM/, 'and says why');

  const st = await run(process.execPath, [symbioCli, 'status', '--job', jobId]);
  t.match(st.stdout, /\(frozen\)/, 'human status shows the freeze');
  t.equal(st.stdout.split('\n').filter((l) => / frozen /.test(l)).length, 4, 'four frozen ranks');

  // on a terminal, a long operation shows its phases as it goes (script(1) gives the command a pty)
  const tty = await run('script', ['-qec', `${process.execPath} ${symbioCli} resume --job ${jobId}`, '/dev/null']);
  t.equal(tty.code, 0, `resume on a terminal: ${tty.stdout}`);
  t.match(tty.stdout, /resume: resuming \(\d+\.\d s\)/, 'the progress line showed the phase');
  t.match(tty.stdout, /resumed in [\d.]+ ms \(frozen interval verified\)/, 'then the result');
  const again2 = await run(process.execPath, [symbioCli, 'quiesce', '--job', jobId, '--json']);
  t.equal(again2.code, 0, 'frozen again for the checks below');
  const r = await run(process.execPath, [symbioCli, 'resume', '--job', jobId, '--json']);
  t.equal(r.code, 0, 'resume succeeded');
  const rr = JSON.parse(r.stdout) as { result: { frozenCheck: { ok: boolean } } };
  t.same(rr.result.frozenCheck, { ok: true }, 'no rank made MPI progress while frozen');

  const ev = await run(process.execPath, [symbioCli, 'events', '--job', jobId, '--json']);
  t.equal(ev.code, 0, 'events');
  const evs = JSON.parse(ev.stdout) as { type: string; kind?: string; phase?: string }[];
  t.ok(evs.some((e) => e.type === 'job-started'), 'journal: job started');
  t.same(
    evs.filter((e) => e.type === 'operation-phase' && e.kind === 'freeze').map((e) => e.phase),
    ['quiescing', 'freezing', 'done', 'quiescing', 'freezing', 'done'],
    'journal: every phase of both freezes, in order',
  );
  t.ok(evs.some((e) => e.type === 'operation' && e.kind === 'resume'), 'journal: the resume');

  // malformed input on the socket: an error reply each time, server survives.
  // The job is held meanwhile, so that it cannot finish (and take its socket
  // with it) before the last line, however loaded the machine is.
  const hold = await run(process.execPath, [symbioCli, 'quiesce', '--job', jobId]);
  t.equal(hold.code, 0, `held for the malformed-input checks ${hold.stderr}`);
  const bad: Array<string | Buffer> = [
    'not json\n',
    '{"op":"explode"}\n',
    '{"op":"operate","kind":"freeze","timeoutMs":-5}\n',
    '{"op":"operate","kind":"teleport"}\n',
    '{"op":"status","extra":1}\n',
    '[1,2,3]\n',
    Buffer.from([0xff, 0xfe, 0x00, 0x0a]),
    'x'.repeat(70_000),
  ];
  for (const b of bad) {
    const out = await rawExchange(desc.socket, b);
    const first = out.split('\n')[0] ?? '';
    t.match(first, /"ok":false/, `error reply for ${JSON.stringify(b.toString().slice(0, 30))}`);
  }
  const alive = await jobRequest(desc.socket, { op: 'status' }, 5_000);
  t.ok(alive.ok, 'the control socket still answers');
  const release = await run(process.execPath, [symbioCli, 'resume', '--job', jobId]);
  t.equal(release.code, 0, `released ${release.stderr}`);

  const res = await done;
  t.equal(res.code, 0, 'job exit code passed through');
  t.equal(res.stdout, plain.stdout, 'job output unchanged');
  t.notOk(existsSync(desc.socket), 'socket removed at exit');
  t.notOk(existsSync(`/dev/shm${desc.segment}`), 'segment removed at exit');
});

t.test('no job: clear errors', async (t) => {
  const r = await run(process.execPath, [symbioCli, 'quiesce', '--job', 'no-such-job']);
  t.equal(r.code, 2);
  t.match(r.stderr, /no running job 'no-such-job'/);
  const u = await run(process.execPath, [symbioCli, 'quiesce', '--timeout', 'soon', '--job', 'x']);
  t.equal(u.code, 2);
  t.match(u.stderr, /--timeout needs a positive integer/);
});
