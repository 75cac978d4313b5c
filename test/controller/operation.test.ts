/**
 * Operations as state machines: every kind's table is walkable from queued
 * to done, every phase can fail to a terminal state, illegal moves throw,
 * and the timeline records each phase with its duration.
 */
import t from 'tap';
import { Operation, OPERATION_KINDS, TRANSITIONS, TransitionError, type PhaseOf } from '../../src/controller/operation.js';
import type { OperationKind } from '../../src/host/plugin-api.js';

const TERMINAL = new Set(['done', 'failed', 'cancelled']);

/** The forward path: always the first allowed phase that is not rolling back or cancelled. */
function happyPath(kind: OperationKind): string[] {
  const table = TRANSITIONS[kind] as Record<string, readonly string[]>;
  const path = ['queued'];
  for (let cur = 'queued'; !TERMINAL.has(cur); ) {
    const next = table[cur]!.find((p) => p !== 'rolling-back' && p !== 'cancelled' && p !== 'failed');
    if (!next) throw new Error(`${kind}: no way forward from ${cur}`);
    path.push(next);
    cur = next;
  }
  return path;
}

t.test('every kind: the table reaches done, and every phase can end', async (t) => {
  for (const kind of OPERATION_KINDS) {
    const table = TRANSITIONS[kind] as Record<string, readonly string[]>;
    const path = happyPath(kind);
    t.equal(path.at(-1), 'done', `${kind}: ${path.join(' -> ')}`);
    for (const [phase, next] of Object.entries(table)) {
      // from every phase there is a way to a terminal state without going forward
      const out = next.filter((p) => TERMINAL.has(p) || p === 'rolling-back');
      t.ok(out.length > 0 || phase === 'rolling-back', `${kind}.${phase} can fail or be cancelled`);
      for (const p of next) t.ok(TERMINAL.has(p) || p in table, `${kind}.${phase} -> ${p} is a known phase`);
    }
    const rb = table['rolling-back'];
    if (rb) t.same(rb, ['failed'], `${kind}: rolling back ends failed`);
  }
});

t.test('walking an operation: timeline, record, illegal moves', async (t) => {
  const op = new Operation({ job: 'j', kind: 'checkpoint', requestedBy: 'test', reason: 'because' });
  t.equal(op.phase, 'queued');
  t.equal(op.durationMs, 0);
  const seen: string[] = [];
  op.onTransition((o) => seen.push(String(o.phase)));
  t.throws(() => op.to('saving'), TransitionError, 'cannot skip ahead');
  t.throws(() => op.to('saving'), /no transition queued -> saving \(allowed: quiescing, cancelled\)/);
  for (const p of happyPath('checkpoint').slice(1) as PhaseOf<'checkpoint'>[]) {
    op.to(p, { step: p });
    await new Promise((r) => setTimeout(r, 2));
  }
  t.same(seen, happyPath('checkpoint').slice(1));
  t.ok(op.finished);
  const rec = op.record();
  t.equal(rec.ok, true);
  t.same(rec.phases.map((p) => p.name), happyPath('checkpoint').slice(1, -1), 'one timeline entry per phase');
  t.ok(rec.phases.every((p) => p.ms >= 1), 'each phase has its duration');
  t.ok(rec.durationMs >= rec.phases.reduce((a, p) => a + p.ms, 0) - 5, 'duration covers the phases');
  t.same(rec.timeline[0]!.detail, { step: 'freezing' }, 'details go to the phase being closed');
  t.throws(() => op.to('quiescing'), /no transition done -> quiescing \(allowed: none\)/, 'nothing after done');
});

t.test('abort: through rolling-back where the table has it, else failed or cancelled', async (t) => {
  const a = new Operation({ job: 'j', kind: 'migrate', requestedBy: 'test', reason: 'r' });
  a.to('preparing-destination');
  a.to('quiescing');
  a.abort(new Error('destination died'));
  t.equal(a.phase, 'failed');
  t.same(a.record().phases.map((p) => p.name), ['preparing-destination', 'quiescing', 'rolling-back']);
  t.equal(a.record().error, 'destination died');
  t.equal(a.record().failedIn, 'quiescing');

  const b = new Operation({ job: 'j', kind: 'resume', requestedBy: 'test', reason: 'r' });
  b.to('resuming');
  b.abort('gone');
  t.equal(b.phase, 'failed', 'resume has no rollback: it fails');

  const c = new Operation({ job: 'j', kind: 'restart', requestedBy: 'test', reason: 'r' });
  c.abort(new Error('never started'));
  t.equal(c.phase, 'cancelled', 'a queued operation is cancelled');
  t.equal(c.record().ok, false);
});
