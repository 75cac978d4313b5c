#!/usr/bin/env node
// Count the results of one `npm test -- --reporter=tap` run from its saved
// stdout, and print them as the line CI reads, alone and last:
// `N passed, N failed` (skips and todos are listed above it).
//
// Usage: node scripts/count-results.mjs LOG [EXIT_STATUS_OF_NPM_TEST] [ALLOW_LIST]
//
// What is counted:
// - ctest: each native test is one result, read from ctest's summary line
//   ("NN% tests passed, F tests failed out of T") before the TAP stream. No
//   summary, or a summary of zero tests, is a failure: the native tests did
//   not run.
// - tap: the top-level test points of each test file, i.e. every `t.test(...)`
//   and every bare assertion made at the top level of a file (the points one
//   level below the file in tap's TAP stream). Deeper subtests and assertions
//   roll up into their top-level point. A file that failed without a failing
//   top-level point (it crashed, timed out, or missed its plan) counts as one
//   more failure; files that the plan announced but never reported count as
//   failures too.
// - Skips and todos are found at ANY depth (a `# SKIP` or `# TODO` deep in a
//   subtest does not roll up as a pass), and a file that registers no test at
//   all is a skip of its own. Each is printed with its file, its test and its
//   reason. Every one must match an entry of the allow-list
//   (test/allowed-skips.json: file, test, kind, and why it is allowed);
//   one that does not is a failure. An entry that matched nothing is printed
//   as stale, so the list stays short.
// - If npm test exited non-zero but nothing above failed (setup, build or
//   runner failure), that counts as one failure, so the line never says
//   "0 failed" for a failed run.
// Exit status: 0 when nothing failed and something passed, 1 otherwise.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const [logPath, statusArg, allowArg] = process.argv.slice(2);
if (!logPath) {
  console.error('usage: count-results.mjs LOG [EXIT_STATUS] [ALLOW_LIST]');
  process.exit(2);
}
const npmStatus = statusArg === undefined ? 0 : Number(statusArg);
const allowPath = allowArg ?? join(dirname(fileURLToPath(import.meta.url)), '..', 'test', 'allowed-skips.json');

let lines = [];
try {
  lines = readFileSync(logPath, 'utf8').split(/\r?\n/);
} catch {
  // no log: nothing ran
}

/** @type {{ file: string, test: string, kind: 'skip' | 'todo', reason: string }[]} */
let allowList = [];
const notes = [];
let allowBroken = false;
try {
  const parsed = JSON.parse(readFileSync(allowPath, 'utf8'));
  if (!Array.isArray(parsed.allowed)) throw new Error('no "allowed" array');
  for (const [i, e] of parsed.allowed.entries()) {
    if (typeof e.file !== 'string' || typeof e.test !== 'string' || e.test === '' || !['skip', 'todo'].includes(e.kind) || typeof e.reason !== 'string' || e.reason.trim() === '') {
      throw new Error(`entry ${i} needs file, test (not empty: it would allow the whole file), kind (skip|todo) and a reason`);
    }
  }
  allowList = parsed.allowed;
} catch (err) {
  if (err.code !== 'ENOENT') {
    allowBroken = true;
    notes.push(`the allow-list ${allowPath} is unusable: ${err.message}`);
  }
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
    ctest.ran = Number(m[2]) > 0;
  }
}

// --- tap --------------------------------------------------------------------------
const POINT = /^( *)(not )?ok\b(?: \d+)?(?: - ([^#]*))?(?:#\s*(\S+)\s*(.*))?$/;
const SUBTEST = /^( *)# Subtest: (.*)$/;
const tap = { passed: 0, failed: 0, files: 0, failedFiles: [] };
let plan = null;
let file = { passed: 0, failed: 0 };
/** Skips and todos of the file being read (its name comes with its last line). */
let fileSkips = [];
/** Every skip and todo of the run, with its file. */
const skips = [];
/** Names of the open subtests by depth (index 0: the file). */
const names = [];
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
  const sub = SUBTEST.exec(l);
  if (sub) {
    const depth = sub[1].length / 4;
    names.length = depth;
    names[depth] = sub[2].trim();
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
  const description = (m[3] ?? '').trim();
  const directive = (m[4] ?? '').toUpperCase();
  const kind = directive === 'SKIP' ? 'skip' : directive === 'TODO' ? 'todo' : null;
  if (kind && depth > 0) {
    // the path of the point below the file: enclosing subtests, then itself
    fileSkips.push({ kind, test: [...names.slice(1, depth), description].join(' > '), reason: (m[5] ?? '').trim() });
  }
  if (depth === 1) {
    // a skip or todo is listed (fileSkips), not counted as passed or failed
    if (!kind && ok) file.passed += 1;
    else if (!kind) file.failed += 1;
  } else if (depth === 0) {
    // The point for a whole test file: its top-level points are complete.
    tap.files += 1;
    tap.passed += file.passed;
    tap.failed += file.failed;
    const fileName = description || `file ${tap.files}`;
    if (!ok && !kind) {
      tap.failedFiles.push(fileName);
      if (file.failed === 0) tap.failed += 1;
    } else if (kind) {
      // tap skips a whole file that registered no test ("no tests found")
      fileSkips.push({ kind, test: '(the whole file)', reason: (m[5] ?? '').trim() });
    }
    for (const s of fileSkips) skips.push({ file: fileName, ...s });
    fileSkips = [];
    names.length = 0;
    file = { passed: 0, failed: 0 };
  }
}
if (plan !== null && tap.files < plan) {
  tap.failed += plan - tap.files;
  tap.failedFiles.push(`${plan - tap.files} file(s) never reported`);
}

// --- skips and todos against the allow-list ------------------------------------------
const used = new Set();
const unexplained = [];
for (const s of skips) {
  const i = allowList.findIndex((a) => a.kind === s.kind && a.file === s.file && s.test.includes(a.test));
  if (i === -1) unexplained.push(s);
  else used.add(i);
}

// --- total ------------------------------------------------------------------------
const passed = ctest.passed + tap.passed;
let failed = ctest.failed + tap.failed + unexplained.length;
if (!ctest.ran) {
  failed += 1;
  notes.push('ctest ran no native test (no "N% tests passed ... out of T" line with T > 0 before the TAP stream)');
}
if (allowBroken) failed += 1;
if (npmStatus !== 0 && failed === 0) {
  failed = 1;
  notes.push(`npm test exited with status ${npmStatus} without a failing test (a setup, build or runner failure; see above)`);
}
if (npmStatus === 0 && tapStart === -1) {
  notes.push('no TAP stream found in the log (was tap run with --reporter=tap?)');
}

console.log(
  `ctest: ${ctest.ran ? `${ctest.passed} passed, ${ctest.failed} failed` : 'no native tests ran'}; ` +
    `tap: ${tap.passed} passed, ${tap.failed} failed, ${skips.length} skipped or todo in ${tap.files} file(s)` +
    (tap.failedFiles.length ? ` (failing: ${tap.failedFiles.join(', ')})` : ''),
);
for (const s of skips) {
  const allowed = !unexplained.includes(s);
  console.log(`${s.kind}${allowed ? ' (allowed)' : ' (NOT ALLOWED: counted as a failure)'}: ${s.file}: ${s.test}${s.reason ? ` # ${s.reason}` : ''}`);
}
if (unexplained.length) {
  console.log(`note: ${unexplained.length} skip(s)/todo(s) not on ${allowPath}: make the test run, or add an entry with its reason`);
}
for (const [i, a] of allowList.entries()) {
  if (!used.has(i)) console.log(`note: allow-list entry not used (remove it?): ${a.kind} ${a.file}: ${a.test}`);
}
for (const n of notes) console.log(`note: ${n}`);
// The line CI reads, alone and last.
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
