/**
 * The addon's control segment through the facade (src/native.ts): creation,
 * validation, commands, catch-up tables, inspection of good and damaged
 * segments. Everything here runs in this process; rank-side behaviour is in
 * watch.test.ts (with a real second process).
 */
import {
  closeSync,
  existsSync,
  openSync,
  readFileSync,
  readSync,
  statSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import t from 'tap';
import { ControlSegment, abi, segmentNameFor, type ControlSegmentOptions } from '../../src/native.js';

let serial = 0;
/** A fresh shm name per segment, so tests never collide (also across runs). */
const freshName = (): string => `/symbio-test-${process.pid}-${++serial}`;
const devShm = (name: string): string => `/dev/shm${name}`;

function options(over: Partial<ControlSegmentOptions> = {}): ControlSegmentOptions {
  return { name: freshName(), slots: 4, worldSize: 8, resumeTimeoutMs: 5000, jobId: 'job-1', ...over };
}

/** Removes a file we placed in /dev/shm by hand, if it is still there. */
function rmShm(name: string): void {
  if (existsSync(devShm(name))) unlinkSync(devShm(name));
}

t.test('create, inspect and close', (t) => {
  const o = options({ jobId: 'jöb-42' });
  const seg = new ControlSegment(o);
  t.teardown(() => seg.close());
  t.equal(seg.name, o.name);
  t.equal(seg.closed, false);

  const st = statSync(devShm(o.name));
  t.equal(st.mode & 0o777, 0o600, 'mode is exactly 0600');
  t.equal(st.uid, process.getuid?.());

  const info = ControlSegment.inspect(o.name);
  const limits = abi();
  t.match(info, {
    name: o.name,
    abiVersion: limits.version,
    slotCount: 4,
    worldSize: 8,
    agentPid: process.pid,
    resumeTimeoutMs: 5000,
    jobId: 'jöb-42',
    epoch: 0,
    command: 'run',
  });
  t.equal(info.segmentBytes, st.size, 'header size matches the object');
  t.ok(Math.abs(info.createdNs / 1e6 - Date.now()) < 60_000, 'createdNs is CLOCK_REALTIME');
  t.same(seg.command(), { epoch: 0, command: 'run' });

  seg.close();
  t.equal(seg.closed, true);
  t.notOk(existsSync(devShm(o.name)), 'close() removed the name');
  t.doesNotThrow(() => seg.close(), 'close() is idempotent');
  t.throws(() => seg.hold(), { message: `cannot hold: control segment ${o.name} is closed` });
  t.throws(() => seg.snapshot(), /is closed/);
  t.throws(() => ControlSegment.inspect(o.name), { message: `control segment ${o.name} does not exist` });
  t.end();
});

t.test('mode is 0600 whatever the umask', (t) => {
  // 0277 would turn shm_open's 0600 into 0400: only the fchmod restores it.
  const old = process.umask(0o277);
  const o = options();
  let seg: ControlSegment;
  try {
    seg = new ControlSegment(o);
  } finally {
    process.umask(old);
  }
  t.equal(statSync(devShm(o.name)).mode & 0o777, 0o600);
  seg.close();
  t.end();
});

t.test('a long job id is truncated at a UTF-8 boundary', (t) => {
  const jobId = 'x'.repeat(62) + 'é' + 'tail'; // 'é' is 2 bytes and would straddle byte 63
  const seg = new ControlSegment(options({ jobId }));
  t.teardown(() => seg.close());
  t.equal(ControlSegment.inspect(seg.name).jobId, 'x'.repeat(62));
  t.end();
});

t.test('a duplicate name is refused with a clear message', (t) => {
  const o = options();
  const seg = new ControlSegment(o);
  t.teardown(() => seg.close());
  const file = devShm(o.name);
  t.throws(() => new ControlSegment(o), {
    message: `control segment ${o.name} already exists (another symbio on this job?); remove ${file} if it is stale`,
  });
  t.ok(existsSync(file), 'the failed create did not remove the existing segment');
  t.end();
});

t.test('bad arguments are refused with one-line messages', (t) => {
  const cases: Array<[string, unknown, RegExp | string]> = [
    ['no options', undefined, /needs \{ name, slots, worldSize, resumeTimeoutMs, jobId \}/],
    ['name not a string', { ...options(), name: 7 }, 'options.name must be a string'],
    ['name without /', { ...options(), name: 'symbio-x' }, /must start with '\/'/],
    ['name with a second /', { ...options(), name: '/a/b' }, /may not contain '\/'/],
    ['name too long', { ...options(), name: '/' + 'n'.repeat(256) }, /longer than 255 bytes/],
    ['name "."', { ...options(), name: '/.' }, /is not a file name/],
    ['slots 0', options({ slots: 0 }), 'options.slots must be an integer in 1..4096 (got 0)'],
    ['slots too many', options({ slots: 4097 }), 'options.slots must be an integer in 1..4096 (got 4097)'],
    ['slots fractional', options({ slots: 1.5 }), 'options.slots must be an integer in 1..4096 (got 1.5)'],
    ['slots NaN', options({ slots: NaN }), /options\.slots must be an integer in 1\.\.4096 \(got nan\)/i],
    ['slots a string', { ...options(), slots: '4' }, 'options.slots must be a number'],
    ['world 0', options({ worldSize: 0 }), 'options.worldSize must be an integer in 1..1048576 (got 0)'],
    ['world too big', options({ worldSize: 2 ** 20 + 1 }), /options\.worldSize must be an integer in 1\.\.1048576/],
    ['timeout 0', options({ resumeTimeoutMs: 0 }), /options\.resumeTimeoutMs must be an integer in 1\.\.4294967295/],
    ['timeout negative', options({ resumeTimeoutMs: -5 }), /options\.resumeTimeoutMs/],
    ['job id missing', { ...options(), jobId: undefined }, 'options.jobId must be a string'],
    ['job id with NUL', options({ jobId: 'a\0b' }), 'jobId may not contain NUL'],
  ];
  for (const [what, opts, message] of cases) {
    t.throws(() => new ControlSegment(opts as ControlSegmentOptions), { message }, what);
  }
  t.end();
});

t.test('hold / freeze / resume publish epochs that inspect() sees', (t) => {
  const seg = new ControlSegment(options());
  t.teardown(() => seg.close());
  t.throws(() => seg.freeze(), /ranks are running \(hold them first\)/, 'no freeze without hold');

  t.equal(seg.hold(), 1);
  t.same(seg.command(), { epoch: 1, command: 'hold' });
  t.match(ControlSegment.inspect(seg.name), { epoch: 1, command: 'hold' });

  t.equal(seg.freeze(), 1, 'freeze keeps the epoch');
  t.match(ControlSegment.inspect(seg.name), { epoch: 1, command: 'freeze' });

  t.equal(seg.resume(), 1, 'resume keeps the epoch');
  t.match(ControlSegment.inspect(seg.name), { epoch: 1, command: 'run' });

  t.equal(seg.hold(), 2, 'every hold starts a new epoch');
  t.equal(seg.hold(), 3);
  t.match(ControlSegment.inspect(seg.name), { epoch: 3, command: 'hold' });
  t.end();
});

t.test('the raw command word in shared memory is (epoch << 2) | cmd', (t) => {
  const seg = new ControlSegment(options());
  t.teardown(() => seg.close());
  const word = (): number => readFileSync(devShm(seg.name)).readUInt32LE(128); // header.cmd
  t.equal(word(), 0, 'created as WORD(0, RUN)');
  seg.hold();
  t.equal(word(), (1 << 2) | 1);
  seg.freeze();
  t.equal(word(), (1 << 2) | 2);
  seg.resume();
  t.equal(word(), 1 << 2);
  t.end();
});

t.test('close() releases held ranks before the segment goes away', (t) => {
  // Ranks keep their mapping after the name is unlinked; an fd opened before
  // close() sees the same object, so it shows what they see afterwards.
  const seg = new ControlSegment(options());
  seg.hold();
  const fd = openSync(devShm(seg.name), 'r');
  t.teardown(() => closeSync(fd));
  seg.close();
  t.notOk(existsSync(devShm(seg.name)));
  const word = Buffer.alloc(4);
  readSync(fd, word, 0, 4, 128); // header.cmd
  t.equal(word.readUInt32LE(0), 1 << 2, 'cmd is WORD(1, RUN) after close');
  t.end();
});

t.test('setCatchup validates its arguments and writes the table', (t) => {
  const seg = new ControlSegment(options({ slots: 2, worldSize: 4 }));
  t.teardown(() => seg.close());
  const epoch = seg.hold();
  const big = '18446744073709551615';
  seg.setCatchup(1, epoch, [
    { gid: big, target: 5 },
    { gid: '7', target: 0 },
  ]);

  // Slot 1's catch-up table: slot = header (512) + 1 * slot_bytes; inside
  // the slot, catchup_count / catchup_epoch follow the rank-written part.
  const info = ControlSegment.inspect(seg.name);
  const slotBytes = (info.segmentBytes - 512) / info.slotCount;
  const fixedRankPart = 104 + 64 * 16; // scalars + comms[SYMBIO_MAX_COMMS]
  const raw = readFileSync(devShm(seg.name));
  const at = 512 + slotBytes + fixedRankPart;
  t.equal(raw.readUInt32LE(at), 2, 'catchup_count');
  t.equal(raw.readUInt32LE(at + 4), epoch, 'catchup_epoch');
  t.equal(raw.readBigUInt64LE(at + 8).toString(), big, 'catchup[0].gid');
  t.equal(raw.readBigUInt64LE(at + 16), 5n, 'catchup[0].seq');
  t.equal(raw.readBigUInt64LE(at + 24), 7n, 'catchup[1].gid');

  seg.setCatchup(1, epoch, []);
  t.equal(readFileSync(devShm(seg.name)).readUInt32LE(at), 0, 'an empty table clears it');

  const bad: Array<[unknown[], RegExp | string]> = [
    [[2, epoch, []], 'setCatchup: slot must be an integer in 0..1 (got 2)'],
    [[-1, epoch, []], /slot must be an integer/],
    [[0, 2 ** 30, []], 'setCatchup: epoch must be an integer in 0..1073741823 (got 1073741824)'],
    [[0, epoch, 'x'], 'setCatchup: targets must be an array of { gid, target }'],
    [[0, epoch, [null]], 'setCatchup: targets[0] must be an object { gid, target }'],
    [[0, epoch, [{ gid: 7, target: 1 }]], 'setCatchup: targets[0].gid must be a decimal string (a u64)'],
    [[0, epoch, [{ gid: '-1', target: 1 }]], /targets\[0\]\.gid must be a decimal string of an integer/],
    [[0, epoch, [{ gid: '18446744073709551616', target: 1 }]], /targets\[0\]\.gid must be a decimal string/],
    [[0, epoch, [{ gid: '', target: 1 }]], /targets\[0\]\.gid/],
    [[0, epoch, [{ gid: '1', target: -1 }]], /targets\[0\]\.target must be an integer in 0\.\.9007199254740991/],
    [[0, epoch, [{ gid: '1', target: 0.5 }]], /targets\[0\]\.target/],
    [[0, epoch, [{ gid: '1', target: 1 }, { gid: '1', target: 2 }]], 'setCatchup: targets[1].gid 1 repeats targets[0].gid'],
    [[0, epoch, Array.from({ length: 65 }, (_, i) => ({ gid: String(i), target: 1 }))], /at most 64 targets/],
  ];
  for (const [args, message] of bad) {
    t.throws(() => (seg.setCatchup as (...a: unknown[]) => void)(...args), { message }, JSON.stringify(args).slice(0, 60));
  }
  t.end();
});

t.test('snapshot of a segment without ranks', (t) => {
  const seg = new ControlSegment(options());
  t.teardown(() => seg.close());
  seg.hold();
  const before = process.hrtime.bigint();
  const snap = seg.snapshot('node-a');
  const after = process.hrtime.bigint();
  t.match(snap, { node: 'node-a', epoch: 1, command: 'hold', consistent: true, ranks: [], problems: [] });
  // The addon reads CLOCK_MONOTONIC; process.hrtime is libuv's uv_hrtime,
  // which is CLOCK_MONOTONIC on Linux: the same clock, so no extra now().
  t.ok(BigInt(Math.round(snap.takenNs)) >= before - 1000n && BigInt(Math.round(snap.takenNs)) <= after + 1000n,
    'takenNs lies between two process.hrtime readings');
  t.end();
});

t.test('a segment truncated by another process: snapshot throws, close does not crash', (t) => {
  const seg = new ControlSegment(options());
  const size = statSync(devShm(seg.name)).size;
  truncateSync(devShm(seg.name), 100);
  t.throws(() => seg.snapshot(), {
    message: `control segment ${seg.name} was truncated by another process (100 of ${size} bytes left)`,
  });
  seg.hold(); // makes close() want to publish RUN: it must see the header page is gone
  t.doesNotThrow(() => seg.close());
  t.notOk(existsSync(devShm(seg.name)));
  t.end();
});

t.test('inspect() refuses damaged or foreign segments without crashing', (t) => {
  // A good image to damage: copy the bytes of a live segment.
  const seg = new ControlSegment(options());
  const good = readFileSync(devShm(seg.name));
  seg.close();

  const place = (bytes: Buffer): string => {
    const name = freshName();
    writeFileSync(devShm(name), bytes, { mode: 0o600 });
    t.teardown(() => rmShm(name));
    return name;
  };
  const damaged = (edit: (b: Buffer) => void): string => {
    const b = Buffer.from(good);
    edit(b);
    return place(b);
  };
  const expect = (name: string, problem: string, what: string): void => {
    t.throws(() => ControlSegment.inspect(name), { message: `control segment ${name} ${problem}` }, what);
  };

  t.match(ControlSegment.inspect(place(Buffer.from(good))), { slotCount: 4 }, 'an intact copy inspects fine');
  expect(place(Buffer.alloc(0)), 'is truncated: 0 bytes, smaller than its 512-byte header', 'empty');
  expect(place(Buffer.alloc(100, 0xff)), 'is truncated: 100 bytes, smaller than its 512-byte header', 'short');
  expect(place(Buffer.alloc(4096, 0xa5)), 'is not usable: bad magic (not a symbio control segment)', 'garbage');
  expect(damaged((b) => b.writeUInt32LE(99, 8)), 'is not usable: ABI version mismatch between shim and agent', 'abi');
  expect(damaged((b) => b.writeUInt32LE(256, 12)), 'is not usable: header size mismatch', 'header_bytes');
  expect(damaged((b) => b.writeUInt32LE(0, 24)), 'is not usable: slot count out of range', 'slot_count 0');
  expect(damaged((b) => b.writeUInt32LE(0xffffffff, 24)), 'is not usable: slot count out of range', 'slot_count huge');
  expect(damaged((b) => b.writeUInt32LE(0, 32)), 'is not usable: world size out of range', 'world_size');
  expect(damaged((b) => b.writeUInt32LE(65, 36)), 'is not usable: communicator table size mismatch', 'max_comms');
  expect(damaged((b) => b.writeUInt32LE(64, 28)), 'is not usable: slot size does not match world size', 'slot_bytes');
  expect(damaged((b) => b.writeBigUInt64LE(1n << 40n, 16)), 'is not usable: segment size does not match its slots', 'segment_bytes');
  expect(damaged((b) => b.writeUInt32LE(0, 44)), 'is not usable: resume timeout is zero', 'timeout');
  expect(damaged((b) => b.writeUInt32LE((5 << 2) | 3, 128)), 'is not usable: its command word holds no known command', 'cmd');
  expect(place(good.subarray(0, good.length - 64)), 'is not usable: segment truncated', 'one slot short');

  // A job id without a terminating NUL is bounded, not overrun.
  const noNul = damaged((b) => b.fill(0x41, 56, 120));
  t.equal(ControlSegment.inspect(noNul).jobId, 'A'.repeat(64));

  t.throws(() => ControlSegment.inspect('/'), /must start with '\/' and have at least one more character/);
  t.end();
});

t.test('segmentNameFor makes a valid name from any job id', (t) => {
  t.equal(segmentNameFor('job-1', 42), '/symbio-job-1-42');
  t.equal(segmentNameFor('a/b c', 7), '/symbio-a_b_c-7');
  const long = segmentNameFor('j'.repeat(1000), 1);
  t.ok(long.length <= 256);
  const seg = new ControlSegment(options({ name: segmentNameFor(`weird/id ${process.pid}`) }));
  t.teardown(() => seg.close());
  t.ok(existsSync(devShm(seg.name)));
  t.end();
});

t.test('abi() reports the header limits', (t) => {
  t.same(abi(), {
    version: 1,
    headerBytes: 512,
    maxSlots: 4096,
    maxWorld: 1048576,
    maxComms: 64,
    jobIdBytes: 64,
    maxEpoch: 2 ** 30 - 1,
  });
  t.end();
});
