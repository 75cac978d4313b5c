/**
 * Which job checkpoints count and which are pruned: only directories with a
 * job manifest are checkpoints (newest first); after a new one, the newest
 * `keep` stay, leftovers of failed ones go, the new one is never removed.
 * (Writing and restoring real checkpoints: test/vcluster/coop.test.ts.)
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JOB_MANIFEST, listCheckpoints, pruneCheckpoints } from '../../src/controller/vm-operations.js';

const root = mkdtempSync(join(tmpdir(), 'symbio-retention-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));

function make(name: string, ageS: number, complete = true): string {
  const dir = join(root, name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'vm0.vmstate'), 'x');
  if (complete) {
    writeFileSync(join(dir, JOB_MANIFEST), '{}');
    const when = Date.now() / 1000 - ageS;
    utimesSync(join(dir, JOB_MANIFEST), when, when);
  }
  return dir;
}

t.test('listing: complete checkpoints only, newest first', async (t) => {
  t.same(listCheckpoints(join(root, 'none')), [], 'no directory: no checkpoints');
  make('ckpt-a', 300);
  make('ckpt-b', 200);
  make('ckpt-partial', 100, false);
  make('ckpt-c', 50);
  mkdirSync(join(root, 'other'));
  t.same(
    listCheckpoints(root).map((p) => p.split('/').at(-2)),
    ['ckpt-c', 'ckpt-b', 'ckpt-a'],
    'partial and foreign directories are not checkpoints',
  );
});

t.test('pruning keeps the newest, never the current one, and removes partial leftovers', async (t) => {
  const current = make('ckpt-d', 10);
  const removed = pruneCheckpoints(root, 2, current);
  t.same(removed.sort(), ['ckpt-a', 'ckpt-b', 'ckpt-partial'], 'older and partial ones removed');
  t.same(readdirSync(root).sort(), ['ckpt-c', 'ckpt-d', 'other'], 'the newest two and what is not ours stay');
  t.same(pruneCheckpoints(root, 1, join(root, 'ckpt-c')), [], 'the current one stays beside the newest, even when older');
  t.same(pruneCheckpoints(root, 1, join(root, 'ckpt-d')), ['ckpt-c'], 'keep 1: only the newest');
});
