/**
 * The report page: one self-contained HTML file (inline CSS and SVG, no
 * script, nothing fetched), readable offline and printable. Every string
 * from the journal goes through `esc`.
 */
import type { JobStory, StorySummary } from './job-story.js';
import { esc, migrationChartSvg, PHASE_COLOURS, timelineSvg } from './svg.js';

const when = (t: number | null): string => (t === null ? '—' : new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC'));
const secs = (ms: number | null): string => (ms === null ? '—' : ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`);
const rel = (s: JobStory, t: number): string => `+${((t - s.span.from) / 1000).toFixed(1)} s`;

const CSS = `
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 24px auto; max-width: 1260px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
code { font: 12px ui-monospace, monospace; background: #f4f4f4; padding: 1px 4px; border-radius: 3px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; min-width: 120px; }
.card b { display: block; font-size: 20px; } .card span { color: #666; font-size: 12px; }
.ok { color: #238b45; } .bad { color: #cb181d; font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: 13px; } th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f7f7f7; } .lane-label, .tick, .axis-label, .legend { font: 11px system-ui, sans-serif; fill: #444; }
.legend-row { display: flex; flex-wrap: wrap; gap: 10px; font-size: 12px; margin: 6px 0; } .swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -2px; margin-right: 3px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; } figure { margin: 0; } figcaption { font-size: 12px; color: #555; }
svg { max-width: 100%; height: auto; }
`;

function card(value: string, label: string, cls = ''): string {
  return `<div class="card"><b class="${cls}">${esc(value)}</b><span>${esc(label)}</span></div>`;
}

export function reportHtml(s: JobStory, sum: StorySummary, generatedAt = Date.now()): string {
  const state = s.endedAt === null ? 'running (no end in the journal yet)' : s.exitCode === 0 ? 'finished' : `failed (exit code ${s.exitCode})`;
  const opsRows = s.operations
    .map(
      (o) => `<tr class="op-row" data-kind="${esc(o.kind)}"><td>${esc(rel(s, o.startedAt))}</td><td>${esc(o.kind)}</td><td>${o.ok ? '<span class="ok">ok</span>' : `<span class="bad">failed</span>: ${esc(o.error ?? '')}`}</td><td>${esc(secs(o.durationMs))}</td><td>${esc(secs(o.pausedMs))}${o.outageMs !== null ? ` (outage ${esc(secs(o.outageMs))})` : ''}</td><td>${o.phases.map((p) => `${esc(p.name)} ${esc(secs(p.ms))}`).join(', ')}</td><td>${esc(o.requestedBy)}: ${esc(o.reason)}</td></tr>`,
    )
    .join('\n');
  const list = <R extends { at: number; text: string }>(rows: readonly R[], cls: string, lead: (r: R) => string): string =>
    rows.length === 0 ? '<p>None.</p>' : `<table><tbody>${rows.map((r) => `<tr class="${cls}"><td>${esc(rel(s, r.at))}</td><td>${lead(r)}</td><td>${esc(r.text)}</td></tr>`).join('\n')}</tbody></table>`;
  const charts = s.operations
    .filter((o) => o.kind === 'migrate')
    .map((o) => {
      const svg = migrationChartSvg(o);
      return svg ? `<figure>${svg}<figcaption>${esc(`migration ${o.id} at ${rel(s, o.startedAt)}: ${o.ok ? 'ok' : 'failed'}, paused ${secs(o.pausedMs)}${o.retargets.length ? `; retargeted ${o.retargets.map((r) => `${r.from} -> ${r.to}`).join(', ')}` : ''}`)}</figcaption></figure>` : '';
    })
    .join('\n');
  const usedPhases = [...new Set(s.operations.flatMap((o) => o.phases.map((p) => p.name)))];
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>symbio report: job ${esc(s.job)}</title><style>${CSS}</style></head>
<body>
<h1>Job <code>${esc(s.job)}</code></h1>
<p>${esc(s.command.join(' ') || '(command not journaled)')}${s.np ? ` &middot; ${s.np} ranks` : ''}<br>
started ${esc(when(s.startedAt))} &middot; ended ${esc(when(s.endedAt))} &middot; <span class="${s.exitCode === 0 ? 'ok' : s.endedAt === null ? '' : 'bad'}" id="job-state">${esc(state)}</span></p>
<div class="cards" id="summary">
${card(secs(sum.durationMs), 'run time')}
${card(secs(sum.pausedMs), 'paused by symbio in all')}
${card(secs(sum.downtimeMs), 'downtime (paused + outages)')}
${card(String(sum.checkpoints), 'checkpoints')}
${card(String(sum.migrations), 'migrations')}
${card(String(sum.restarts), 'restarts')}
${card(String(sum.failures), 'failures detected', sum.failures ? 'bad' : '')}
${card(String(sum.healthEvents), 'health events')}
${card(String(sum.decisions), 'policy decisions')}
</div>
<h2>Timeline</h2>
<div class="legend-row">${usedPhases.map((p) => `<span><i class="swatch" style="background:${PHASE_COLOURS[p] ?? '#bbbbbb'}"></i>${esc(p)}</span>`).join('')}</div>
${timelineSvg(s)}
<h2>Migrations: bytes remaining</h2>
${charts ? `<div class="charts">${charts}</div>` : '<p>No migration with progress samples.</p>'}
<h2>Operations</h2>
${s.operations.length ? `<table id="operations"><thead><tr><th>at</th><th>kind</th><th>result</th><th>took</th><th>paused</th><th>phases</th><th>asked by, why</th></tr></thead><tbody>${opsRows}</tbody></table>` : '<p>None.</p>'}
<h2>Decisions</h2>
${list(s.decisions, 'decision-row', (d) => `${esc(d.by)}: <b>${esc(d.action)}</b>`)}
<h2>Failures</h2>
${list(s.failures, 'failure-row', (f) => `${esc(f.kind)}${f.acted ? '' : ' (same fault)'}`)}
<h2>Health events</h2>
${list(s.health, 'health-row', (h) => esc(h.severity))}
<h2>Hosts</h2>
${list(s.hostStates, 'host-row', (h) => esc(h.state))}
<p style="color:#888;font-size:12px">Generated by symbio ${esc(when(generatedAt))} from the job's journal.</p>
</body></html>
`;
}
