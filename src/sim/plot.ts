/**
 * A self-contained HTML page of simulation traces: inline SVG only, no script, no external
 * resource, so it opens anywhere (and in a mail attachment). One section per policy with four
 * charts over time: overlay per VM (stacked) with each bin's Π, γ per VM (log scale), U(t), and
 * Ω use against Ω.
 */
import type { Scenario } from './scenario';
import type { SimResult, SimTrace } from './run';

const W = 900;
const H = 220;
const PAD = { l: 70, r: 20, t: 24, b: 28 };
const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

function esc(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function fmtBytes(b: number): string {
  if (b >= 2 ** 30) return `${(b / 2 ** 30).toFixed(b >= 10 * 2 ** 30 ? 0 : 1)} GiB`;
  if (b >= 2 ** 20) return `${(b / 2 ** 20).toFixed(b >= 10 * 2 ** 20 ? 0 : 1)} MiB`;
  if (b >= 1024) return `${(b / 1024).toFixed(0)} KiB`;
  return `${b.toFixed(0)} B`;
}

interface Axis {
  x: (t: number) => number;
  y: (v: number) => number;
}

function frame(title: string, tMax: number, yMax: number, yLabel: (v: number) => string, log: { min: number } | null): { svg: string[]; axis: Axis } {
  const iw = W - PAD.l - PAD.r;
  const ih = H - PAD.t - PAD.b;
  const x = (t: number): number => PAD.l + (tMax > 0 ? (t / tMax) * iw : 0);
  const y = log
    ? (v: number): number => {
        const lv = Math.log10(Math.max(v, log.min));
        const lo = Math.log10(log.min);
        const hi = Math.log10(Math.max(yMax, log.min * 10));
        return PAD.t + ih - ((lv - lo) / (hi - lo)) * ih;
      }
    : (v: number): number => PAD.t + ih - (yMax > 0 ? (v / yMax) * ih : 0);
  const svg = [`<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(title)}">`];
  svg.push(`<text x="${PAD.l}" y="15" class="t">${esc(title)}</text>`);
  svg.push(`<rect x="${PAD.l}" y="${PAD.t}" width="${iw}" height="${ih}" class="f"/>`);
  const ticks = log
    ? (() => {
        const out: number[] = [];
        for (let v = log.min; v <= Math.max(yMax, log.min * 10) * 1.0001; v *= 10) out.push(v);
        return out;
      })()
    : [0, 0.25, 0.5, 0.75, 1].map((f) => f * yMax);
  for (const v of ticks) {
    const yy = y(v);
    svg.push(`<line x1="${PAD.l}" x2="${W - PAD.r}" y1="${yy.toFixed(1)}" y2="${yy.toFixed(1)}" class="g"/><text x="${PAD.l - 4}" y="${(yy + 4).toFixed(1)}" class="yl">${esc(yLabel(v))}</text>`);
  }
  for (let k = 0; k <= 5; k++) {
    const t = (tMax * k) / 5;
    svg.push(`<text x="${x(t).toFixed(1)}" y="${H - 8}" class="xl">${t.toFixed(0)} s</text>`);
  }
  return { svg, axis: { x, y } };
}

function path(points: Array<[number, number]>, axis: Axis): string {
  return points.map(([t, v], k) => `${k === 0 ? 'M' : 'L'}${axis.x(t).toFixed(1)},${axis.y(v).toFixed(1)}`).join('');
}

/** Splits a series with nulls into runs of defined points. */
function runs(t: readonly number[], v: ReadonlyArray<number | null>): Array<Array<[number, number]>> {
  const out: Array<Array<[number, number]>> = [];
  let cur: Array<[number, number]> = [];
  for (let k = 0; k < t.length; k++) {
    const value = v[k];
    if (value === null || value === undefined) {
      if (cur.length) out.push(cur);
      cur = [];
    } else cur.push([t[k]!, value]);
  }
  if (cur.length) out.push(cur);
  return out;
}

function legend(ids: readonly string[]): string {
  return ids.map((id, i) => `<span class="k" style="background:${COLORS[i % COLORS.length]}"></span>${esc(id)}`).join(' ');
}

function section(trace: SimTrace, result: SimResult, scenario: Scenario): string {
  const t = trace.tSec;
  const tMax = t.length ? t[t.length - 1]! : 0;
  const ids = trace.vms.map((v) => v.id);
  const parts: string[] = [];
  parts.push(`<h2>${esc(trace.policy)}</h2>`);
  parts.push(
    `<p>failed migrations: <b>${result.failedMigrations}</b>${result.overflowed ? ' (overflowed)' : ''} · write retained: <b>${(result.writeRetained * 100).toFixed(1)} %</b> · ` +
      `Jain: ${result.jain.toFixed(3)} · max Ω used: ${fmtBytes(result.maxOmegaUsedBytes)} · min γ: ${result.minThrottleBytesPerSec === null ? 'none' : fmtBytes(result.minThrottleBytesPerSec) + '/s'} · ` +
      `makespan: ${result.makespanSec === null ? 'unfinished' : result.makespanSec.toFixed(0) + ' s'}</p>`,
  );
  parts.push(`<p class="lg">${legend(ids)}</p>`);

  // 1. Stacked overlays + Π per VM.
  {
    let yMax = scenario.omegaBytes;
    for (const v of trace.vms) for (const p of v.partitionBytes) if (p !== null && p > yMax) yMax = p;
    const { svg, axis } = frame('overlay per VM (stacked areas) and Π per VM (dashed)', tMax, yMax, fmtBytes, null);
    const base = new Array<number>(t.length).fill(0);
    trace.vms.forEach((v, i) => {
      const top = base.map((b, k) => b + (v.overlayBytes[k] ?? 0));
      const up = t.map((tt, k) => [tt, top[k]!] as [number, number]);
      const down = t.map((tt, k) => [tt, base[k]!] as [number, number]).reverse();
      if (v.overlayBytes.some((x) => x !== null && x > 0)) {
        svg.push(`<path d="${path(up, axis)}${path(down, axis).replace(/^M/, 'L')}Z" fill="${COLORS[i % COLORS.length]}" fill-opacity="0.55" stroke="none"><title>${esc(v.id)} overlay</title></path>`);
      }
      for (let k = 0; k < t.length; k++) base[k] = top[k]!;
      for (const r of runs(t, v.partitionBytes)) {
        svg.push(`<path d="${path(r, axis)}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-dasharray="5 3"><title>${esc(v.id)} Π</title></path>`);
      }
    });
    svg.push(`<line x1="${PAD.l}" x2="${W - PAD.r}" y1="${axis.y(scenario.omegaBytes).toFixed(1)}" y2="${axis.y(scenario.omegaBytes).toFixed(1)}" class="o"><title>Ω</title></line>`);
    svg.push('</svg>');
    parts.push(svg.join(''));
  }
  // 2. γ per VM, log scale; a gap means not throttled.
  {
    let yMax = scenario.slaBytesPerSec * 10;
    for (const v of trace.vms) for (const g of v.throttleBytesPerSec) if (g !== null && g > yMax) yMax = g;
    const { svg, axis } = frame('γ per VM (log scale; no line = not throttled)', tMax, yMax, (v) => fmtBytes(v) + '/s', { min: Math.min(scenario.slaBytesPerSec, 10_000) });
    trace.vms.forEach((v, i) => {
      for (const r of runs(t, v.throttleBytesPerSec)) svg.push(`<path d="${path(r, axis)}" fill="none" stroke="${COLORS[i % COLORS.length]}"><title>${esc(v.id)} γ</title></path>`);
    });
    svg.push('</svg>');
    parts.push(svg.join(''));
  }
  // 3. U(t) and 4. Ω use.
  {
    const yMax = Math.max(1, ...trace.linkBytesPerSec);
    const { svg, axis } = frame('U(t): link speed', tMax, yMax, (v) => fmtBytes(v) + '/s', null);
    svg.push(`<path d="${path(t.map((tt, k) => [tt, trace.linkBytesPerSec[k]!]), axis)}" fill="none" stroke="#333"/>`);
    svg.push('</svg>');
    parts.push(svg.join(''));
  }
  {
    const { svg, axis } = frame('Ω use (solid) against Ω (red)', tMax, scenario.omegaBytes * 1.05, fmtBytes, null);
    svg.push(`<path d="${path(t.map((tt, k) => [tt, trace.omegaUsedBytes[k]!]), axis)}" fill="none" stroke="#333"/>`);
    svg.push(`<line x1="${PAD.l}" x2="${W - PAD.r}" y1="${axis.y(scenario.omegaBytes).toFixed(1)}" y2="${axis.y(scenario.omegaBytes).toFixed(1)}" class="o"/>`);
    svg.push('</svg>');
    parts.push(svg.join(''));
  }
  return `<section>${parts.join('\n')}</section>`;
}

/** The whole page for one scenario and its runs. */
export function renderPlotHtml(scenario: Scenario, runs: ReadonlyArray<{ result: SimResult; trace: SimTrace }>): string {
  const style = `body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:17px;margin-top:32px}
svg{display:block;margin:6px 0}.t{font-size:13px;font-weight:600}.f{fill:#fafafa;stroke:#ccc}.g{stroke:#e4e4e4}
.yl{font-size:11px;text-anchor:end;fill:#555}.xl{font-size:11px;text-anchor:middle;fill:#555}.o{stroke:#d00;stroke-width:1.5}
.k{display:inline-block;width:12px;height:12px;margin:0 4px 0 10px;vertical-align:middle}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}`;
  const rows = runs
    .map(
      ({ result: r }) =>
        `<tr><td>${esc(r.policy)}</td><td>${r.failedMigrations}</td><td>${r.overflowed ? 'yes' : 'no'}</td><td>${fmtBytes(r.maxOmegaUsedBytes)}</td><td>${(r.writeRetained * 100).toFixed(1)} %</td>` +
        `<td>${r.minThrottleBytesPerSec === null ? '-' : fmtBytes(r.minThrottleBytesPerSec) + '/s'}</td><td>${r.jain.toFixed(3)}</td><td>${r.makespanSec === null ? '-' : r.makespanSec.toFixed(0) + ' s'}</td></tr>`,
    )
    .join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dpa simulate: ${esc(scenario.name)}</title><style>${style}</style></head>
<body><h1>dpa simulate: ${esc(scenario.name)}</h1>
<p>${esc(scenario.description ?? '')}</p>
<p>Ω = ${fmtBytes(scenario.omegaBytes)} · γ_SLA = ${fmtBytes(scenario.slaBytesPerSec)}/s · ${scenario.vms.length} VM(s) · tick ${scenario.tickMs} ms</p>
<table><tr><th>policy</th><th>failed</th><th>overflowed</th><th>max Ω used</th><th>write retained</th><th>min γ</th><th>Jain</th><th>makespan</th></tr>${rows}</table>
${runs.map((r) => section(r.trace, r.result, scenario)).join('\n')}
</body></html>
`;
}
