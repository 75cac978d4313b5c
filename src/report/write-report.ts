/**
 * `symbio report <job>`: the job's journal rendered as one HTML file,
 * written atomically (a reader never sees half a page).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { jobDir, journaledJobs } from '../controller/journal.js';
import { writeFileAtomic } from '../util/files.js';
import { loadJobStory, summarize, type StorySummary } from './job-story.js';
import { reportHtml } from './html.js';

export class ReportError extends Error {
  override name = 'ReportError';
}

export function writeJobReport(o: { stateDir: string; job: string; out?: string }): { path: string; summary: StorySummary } {
  let dir: string;
  try {
    dir = jobDir(o.stateDir, o.job);
  } catch (err) {
    throw new ReportError((err as Error).message);
  }
  if (!existsSync(join(dir, 'events.jsonl'))) {
    const known = journaledJobs(o.stateDir).slice(0, 10).map((j) => j.job);
    throw new ReportError(`no journal of job '${o.job}' in ${o.stateDir} (jobs with a journal: ${known.join(', ') || 'none'})`);
  }
  const story = loadJobStory(o.stateDir, o.job);
  const summary = summarize(story);
  const path = o.out ?? join(dir, 'report.html');
  writeFileAtomic(path, reportHtml(story, summary));
  return { path, summary };
}
