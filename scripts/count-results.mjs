#!/usr/bin/env node
// Count the results of one `npm test -- --reporter=tap` run from its saved
// stdout, and print them as the line CI reads: `N passed, N failed`
// (`, N skipped` follows when there are any).
//
// Usage: node scripts/count-results.mjs LOG [EXIT_STATUS_OF_NPM_TEST]
//
// What is counted:
// - ctest: each native test is one result, read from ctest's summary line
//   ("NN% tests passed, F tests failed out of T") before the TAP stream.
// - tap: the top-level test points of each test file, i.e. every `t.test(...)`
//   and every bare assertion made at the top level of a file (the points one
//   level below the file in tap's TAP stream). Deeper subtests and assertions
//   roll up into their top-level point. A file that failed without a failing
//   top-level point (it crashed, timed out, or missed its plan) counts as one
//   more failure; files that the plan announced but never reported count as
//   failures too. SKIP and TODO points count as skipped.
// - If npm test exited non-zero but nothing above failed (setup, build or
//   runner failure), that counts as one failure, so the line never says
//   "0 failed" for a failed run.
// Exit status: 0 when nothing failed and something passed, 1 otherwise.
import { readFileSync } from 'node:fs';

const [logPath, statusArg] = process.argv.slice(2);
if (!logPath) {
  console.error('usage: count-results.mjs LOG [EXIT_STATUS]');
  process.exit(2);
}
const npmStatus = statusArg === undefined ? 0 : Number(statusArg);
let lines = [];
try {
  lines = readFileSync(logPath, 'utf8').split(/\r?\n/);
} catch {
  // no log: nothing ran
}

const tapStart = lines.findIndex((l) => /^TAP version \d+\s*$/.test(l));
const before = tapStart === -1 ? lines : lines.slice(0, tapStart);
const tapLines = tapStart === -1 ? [] : lines.slice(tapStart + 1);

// --- ctest ----------------------------------------------------------------------
const ctest = { passed: 0, failed: 0, ran: false };
for (const l of before) {
  const m = /^\s*\d+% tests passed, (\d+) tests? failed out of (\d+)\s*$/.exec(l);
  if (m) {
    ctest.failed = Number(m[1]);
    ctest.passed = Number(m[2]) - ctest.failed;
    ctest.ran = true;
  }
}

// --- tap --------------------------------------------------------------------------
const POINT = /^( *)(not )?ok\b(?: \d+)?(?: - ([^#]*))?(?:#\s*(\S+))?/;
const tap = { passed: 0, failed: 0, skipped: 0, files: 0, failedFiles: [] };
let plan = null;
let file = { passed: 0, failed: 0, skipped: 0 };
let inYaml = null; // indentation of the open YAML diagnostics block
for (const l of tapLines) {
  if (inYaml !== null) {
    if (l.startsWith(`${inYaml}...`) && l.trim() === '...') inYaml = null;
    continue;
  }
  const yaml = /^( *)---\s*$/.exec(l);
  if (yaml) {
    inYaml = yaml[1];
    continue;
  }
  if (/^Bail out!/.test(l)) {
    tap.failed += 1;
    tap.failedFiles.push('(bailed out)');
    continue;
  }
  const planMatch = /^1\.\.(\d+)/.exec(l);
  if (planMatch && plan === null) {
    plan = Number(planMatch[1]);
    continue;
  }
  const m = POINT.exec(l);
  if (!m) continue;
  const depth = m[1].length / 4;
  const ok = !m[2];
  const directive = (m[4] ?? '').toUpperCase();
  const skipped = directive === 'SKIP' || directive === 'TODO';
  if (depth === 1) {
    if (skipped) file.skipped += 1;
    else if (ok) file.passed += 1;
    else file.failed += 1;
  } else if (depth === 0) {
    // The point for a whole test file: its top-level points are complete.
    tap.files += 1;
    tap.passed += file.passed;
    tap.failed += file.failed;
    tap.skipped += file.skipped;
    if (!ok && !skipped) {
      tap.failedFiles.push((m[3] ?? '').trim() || `file ${tap.files}`);
      if (file.failed === 0) tap.failed += 1;
    } else if (skipped && file.passed + file.failed + file.skipped === 0) {
      tap.skipped += 1;
    }
    file = { passed: 0, failed: 0, skipped: 0 };
  }
}
if (plan !== null && tap.files < plan) {
  tap.failed += plan - tap.files;
  tap.failedFiles.push(`${plan - tap.files} file(s) never reported`);
}

// --- total ------------------------------------------------------------------------
let passed = ctest.passed + tap.passed;
let failed = ctest.failed + tap.failed;
const skipped = tap.skipped;
const notes = [];
if (npmStatus !== 0 && failed === 0) {
  failed = 1;
  notes.push(`npm test exited with status ${npmStatus} without a failing test (a setup, build or runner failure; see above)`);
}
if (npmStatus === 0 && tapStart === -1) {
  notes.push('no TAP stream found in the log (was tap run with --reporter=tap?)');
}

console.log(
  `ctest: ${ctest.ran ? `${ctest.passed} passed, ${ctest.failed} failed` : 'no summary (no native tests ran)'}; ` +
    `tap: ${tap.passed} passed, ${tap.failed} failed, ${tap.skipped} skipped in ${tap.files} file(s)` +
    (tap.failedFiles.length ? ` (failing: ${tap.failedFiles.join(', ')})` : ''),
);
for (const n of notes) console.log(`note: ${n}`);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
