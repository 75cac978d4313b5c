/**
 * The report's pictures, as SVG strings (no script, no external resource):
 * the job's timeline (operations split into their phases, health events,
 * failures, decisions, checkpoints, host states, on one time axis) and one
 * chart per migration of the bytes left to send over time, per VM.
 */
import type { JobStory, StoryOperation } from './job-story.js';

/** Text for HTML and SVG: every character that could open markup is escaped. */
export function esc(v: unknown): string {
  return String(v).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** Colours of phases: quiet ones for preparation, strong ones for the paused window. */
export const PHASE_COLOURS: Readonly<Record<string, string>> = {
  'preparing-destination': '#9ecae1',
  quiescing: '#fdae6b',
  freezing: '#e6550d',
  detaching: '#a1d99b',
  migrating: '#31a354',
  attaching: '#74c476',
  'restoring-network': '#c7e9c0',
  'stopping-vms': '#bcbddc',
  saving: '#756bb1',
  'writing-manifest': '#9e9ac8',
  continuing: '#dadaeb',
  verifying: '#fdd0a2',
  'starting-vms': '#d94801',
  reconnecting: '#fd8d3c',
  resuming: '#6baed6',
  'rolling-back': '#de2d26',
};
const SEVERITY_COLOURS: Readonly<Record<string, string>> = { info: '#6baed6', warning: '#fd8d3c', critical: '#de2d26' };

const fmtS = (ms: number): string => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`);

/** Tick spacing for an axis of `span` units, about `n` ticks. */
function tickStep(span: number, n: number): number {
  const raw = span / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? raw;
}

export function timelineSvg(s: JobStory, width = 1200): string {
  const left = 110;
  const right = 20;
  const lanes = ['operations', 'health', 'failures', 'decisions', 'checkpoints', 'hosts'];
  const laneH = 34;
  const top = 24;
  const height = top + lanes.length * laneH + 30;
  const plotW = width - left - right;
  const { from, to } = s.span;
  const x = (t: number): number => left + ((t - from) / (to - from)) * plotW;
  const laneY = (name: string): number => top + lanes.indexOf(name) * laneH;
  const out: string[] = [];
  out.push(`<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="timeline of job ${esc(s.job)}">`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  for (const l of lanes) {
    const y = laneY(l);
    out.push(`<rect x="${left}" y="${y}" width="${plotW}" height="${laneH - 4}" fill="${lanes.indexOf(l) % 2 ? '#fafafa' : '#f2f2f2'}"/>`);
    out.push(`<text x="${left - 8}" y="${y + laneH / 2 + 2}" text-anchor="end" class="lane-label">${l}</text>`);
  }
  // time axis, seconds since the first event
  const spanS = (to - from) / 1000;
  const step = tickStep(spanS, 10);
  const axisY = top + lanes.length * laneH + 4;
  for (let v = 0; v <= spanS + 1e-9; v += step) {
    const xx = x(from + v * 1000);
    out.push(`<line x1="${xx}" y1="${top}" x2="${xx}" y2="${axisY}" stroke="#dddddd"/>`);
    out.push(`<text x="${xx}" y="${axisY + 14}" text-anchor="middle" class="tick">${Number(v.toFixed(3))} s</text>`);
  }
  // operations: one bar each, a segment per phase
  const opY = laneY('operations') + 4;
  for (const o of s.operations) {
    out.push(`<g class="op-bar" data-kind="${esc(o.kind)}" data-op="${esc(o.id)}" data-ok="${o.ok}">`);
    out.push(`<title>${esc(`${o.kind} ${o.ok ? 'ok' : `FAILED: ${o.error ?? ''}`} in ${fmtS(o.durationMs)}; paused ${fmtS(o.pausedMs)}; by ${o.requestedBy}: ${o.reason}`)}</title>`);
    if (o.phases.length === 0) out.push(`<rect x="${x(o.startedAt)}" y="${opY}" width="${Math.max(2, x(o.startedAt + o.durationMs) - x(o.startedAt))}" height="${laneH - 12}" fill="#999999"/>`);
    for (const p of o.phases) {
      const w = Math.max(1.5, x(p.startedAt + p.ms) - x(p.startedAt));
      out.push(`<rect class="phase-seg" data-phase="${esc(p.name)}" x="${x(p.startedAt).toFixed(1)}" y="${opY}" width="${w.toFixed(1)}" height="${laneH - 12}" fill="${PHASE_COLOURS[p.name] ?? '#bbbbbb'}"><title>${esc(`${o.kind} ${o.id}: ${p.name} ${fmtS(p.ms)}`)}</title></rect>`);
    }
    if (!o.ok) out.push(`<rect x="${x(o.startedAt)}" y="${opY - 2}" width="${Math.max(2, x(o.startedAt + o.durationMs) - x(o.startedAt))}" height="${laneH - 8}" fill="none" stroke="#de2d26" stroke-width="2" stroke-dasharray="4 2"/>`);
    out.push('</g>');
  }
  const marker = (cls: string, lane: string, at: number, colour: string, title: string, attrs = '', shape: 'circle' | 'diamond' | 'triangle' = 'circle'): void => {
    const cx = x(at);
    const cy = laneY(lane) + laneH / 2 - 2;
    const body =
      shape === 'circle'
        ? `<circle cx="${cx.toFixed(1)}" cy="${cy}" r="6" fill="${colour}" stroke="#333333" stroke-width="0.5"/>`
        : shape === 'diamond'
          ? `<path d="M ${cx.toFixed(1)} ${cy - 7} l 7 7 l -7 7 l -7 -7 z" fill="${colour}" stroke="#333333" stroke-width="0.5"/>`
          : `<path d="M ${cx.toFixed(1)} ${cy - 7} l 7 13 l -14 0 z" fill="${colour}" stroke="#333333" stroke-width="0.5"/>`;
    out.push(`<g class="${cls}"${attrs}>${body}<title>${esc(title)}</title></g>`);
  };
  for (const h of s.health) marker('health-marker', 'health', h.at, SEVERITY_COLOURS[h.severity] ?? '#999999', `${h.severity}: ${h.text}`, ` data-severity="${esc(h.severity)}"`);
  for (const f of s.failures) marker('failure-marker', 'failures', f.at, f.acted ? '#a50f15' : '#fcbba1', `${f.text}${f.acted ? '' : ' (part of a fault already dealt with)'}`, ` data-kind="${esc(f.kind)}"`, 'triangle');
  for (const d of s.decisions) marker('decision-marker', 'decisions', d.at, d.action === 'none' ? '#cccccc' : '#3182bd', `${d.by}: ${d.action}: ${d.text}`, ` data-action="${esc(d.action)}"`, 'diamond');
  for (const o of s.operations.filter((op) => op.kind === 'checkpoint' && op.ok)) marker('checkpoint-marker', 'checkpoints', o.startedAt + o.durationMs, '#756bb1', `checkpoint ${o.id}: ${fmtS(o.durationMs)}`);
  for (const h of s.hostStates) marker('host-state-marker', 'hosts', h.at, h.state === 'down' ? '#a50f15' : h.state === 'drained' ? '#636363' : '#fd8d3c', h.text, ` data-state="${esc(h.state)}"`, 'diamond');
  out.push('</svg>');
  return out.join('\n');
}

/** Bytes left to send over time, one line per VM, for a migration with progress samples; null without. */
export function migrationChartSvg(o: StoryOperation, width = 560, height = 240): string | null {
  if (o.progress.length < 2) return null;
  const left = 64;
  const bottom = 36;
  const top = 16;
  const right = 16;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const maxT = Math.max(...o.progress.map((p) => p.t), 1);
  const minT = Math.min(...o.progress.map((p) => p.t));
  const maxB = Math.max(...o.progress.map((p) => p.remaining), 1);
  const x = (t: number): number => left + ((t - minT) / Math.max(1, maxT - minT)) * plotW;
  const y = (b: number): number => top + plotH - (b / maxB) * plotH;
  const colours = ['#31a354', '#3182bd', '#e6550d', '#756bb1', '#636363'];
  const out: string[] = [];
  out.push(`<svg class="migration-chart" data-op="${esc(o.id)}" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="bytes remaining during migration ${esc(o.id)}">`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<line x1="${left}" y1="${top + plotH}" x2="${left + plotW}" y2="${top + plotH}" stroke="#333333"/><line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="#333333"/>`);
  const mib = maxB / 2 ** 20;
  const yStep = tickStep(mib, 4);
  for (let v = 0; v <= mib + 1e-9; v += yStep) out.push(`<text x="${left - 6}" y="${y(v * 2 ** 20) + 4}" text-anchor="end" class="tick">${Number(v.toFixed(2))}</text>`);
  const spanS = (maxT - minT) / 1000;
  const xStep = tickStep(Math.max(spanS, 0.001), 6);
  for (let v = 0; v <= spanS + 1e-9; v += xStep) out.push(`<text x="${x(minT + v * 1000)}" y="${top + plotH + 16}" text-anchor="middle" class="tick">${Number((minT / 1000 + v).toFixed(2))}</text>`);
  out.push(`<text x="${left + plotW / 2}" y="${height - 4}" text-anchor="middle" class="axis-label">s since the operation started</text>`);
  out.push(`<text x="14" y="${top + plotH / 2}" text-anchor="middle" class="axis-label" transform="rotate(-90 14 ${top + plotH / 2})">MiB remaining</text>`);
  const vms = [...new Set(o.progress.map((p) => p.vm))];
  vms.forEach((vm, i) => {
    const pts = o.progress.filter((p) => p.vm === vm).map((p) => `${x(p.t).toFixed(1)},${y(p.remaining).toFixed(1)}`);
    out.push(`<polyline class="progress-line" data-vm="${esc(vm)}" points="${pts.join(' ')}" fill="none" stroke="${colours[i % colours.length]}" stroke-width="2"/>`);
    out.push(`<text x="${left + plotW - 4}" y="${top + 12 + i * 14}" text-anchor="end" fill="${colours[i % colours.length]}" class="legend">${esc(vm)}</text>`);
  });
  for (const r of o.retargets) {
    const xx = x(r.atMs);
    out.push(`<line class="retarget-line" x1="${xx}" y1="${top}" x2="${xx}" y2="${top + plotH}" stroke="#de2d26" stroke-dasharray="4 3"><title>${esc(`retargeted ${r.from} -> ${r.to}`)}</title></line>`);
  }
  out.push('</svg>');
  return out.join('\n');
}
