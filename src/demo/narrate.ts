/**
 * The demo's running commentary: what happened to the job, one line per
 * event that matters to a person (checkpoints, health events, decisions,
 * migrations, failures, restarts), read from the job's journal as it grows.
 */
import { readEvents, type JournalEvent } from '../controller/journal.js';
import { pausedMsOf } from '../report/job-story.js';

const s = (ms: unknown): string => `${(Number(ms) / 1000).toFixed(1)} s`;

/** One line for an event, or null for events a person need not see. */
export function describeEvent(e: JournalEvent): string | null {
  switch (e.type) {
    case 'operation': {
      const phases = (e.phases as { name: string; ms: number }[] | undefined) ?? [];
      const paused = pausedMsOf(phases);
      const what = `${String(e.kind)} ${e.ok ? 'done' : 'FAILED'} in ${s(e.durationMs)}`;
      if (!e.ok) return `${what}: ${String(e.error)} (rolled back; the job runs on)`;
      return paused > 0 ? `${what} (the job was paused ${s(paused)})` : what;
    }
    case 'health':
      return `health: ${String(e.host)} ${String(e.severity)}: ${String(e.component)}: ${String(e.message)}${e.leadTimeMs !== undefined ? ` (failure predicted in ${s(e.leadTimeMs)})` : ''}`;
    case 'decision':
      return e.action === 'none' ? null : `decision by ${String(e.by)}: ${String(e.action)} (${String(e.reason)})`;
    case 'failure':
      return e.acted === false ? null : `FAILURE detected: ${String(e.kind)}: ${String(e.message)}`;
    case 'host-state':
      return `host ${String(e.host)} is now ${String(e.state)}`;
    case 'retarget':
      return `migration retargeted from ${String(e.from)} to ${String(e.to)}`;
    case 'job-finished':
      return `job finished with exit code ${String(e.exitCode)}`;
    default:
      return null;
  }
}

/** Follow a job's journal, calling `say` for each event worth a line; returns a stop function. */
export function narrate(stateDir: string, job: string, say: (line: string, e: JournalEvent) => void, everyMs = 300): () => void {
  let seen = 0;
  const look = (): void => {
    let events: JournalEvent[];
    try {
      events = readEvents(stateDir, job);
    } catch {
      return; // not there yet
    }
    for (const e of events.slice(seen)) {
      const line = describeEvent(e);
      if (line) say(line, e);
    }
    seen = events.length;
  };
  const timer = setInterval(look, everyMs);
  return () => {
    clearInterval(timer);
    look();
  };
}
