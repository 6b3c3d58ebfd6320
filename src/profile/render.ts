/** Text rendering of a ProfileSnapshot: a full-screen view for terminals and one line for logs. */
import type { ProfileSnapshot } from './session';

const SPARK = '▁▂▃▄▅▆▇█';

function num(n: number, digits = 0): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function pages(n: number): string {
  if (n >= 1e6) return `${num(n / 1e6, 2)}M`;
  if (n >= 1e4) return `${num(n / 1e3, 1)}k`;
  return num(n);
}

function bytes(n: number): string {
  if (n >= 2 ** 30) return `${num(n / 2 ** 30, 2)} GiB`;
  if (n >= 2 ** 20) return `${num(n / 2 ** 20, 1)} MiB`;
  return `${num(n / 1024, 0)} KiB`;
}

function seconds(s: number): string {
  return s >= 1 ? `${num(s, s >= 10 ? 0 : 1)}s` : `${num(s * 1000)}ms`;
}

function bar(fraction: number, width: number): string {
  const filled = Math.round(Math.max(0, Math.min(1, fraction)) * width);
  return '█'.repeat(filled) + '·'.repeat(width - filled);
}

/** Full view, a list of lines (the caller clears the screen). */
export function renderView(title: string, s: ProfileSnapshot): string[] {
  const lines = [title, ''];
  lines.push(
    `dirty rate    ${num(s.dirtyPagesPerSec)} pages/s  (${bytes(s.dirtyBytesPerSec)}/s)   ` +
      `working set (last ${s.heatIntervals} intervals) ${pages(s.workingSetPages)} pages = ${bytes(s.workingSetPages * 4096)}`,
  );
  if (s.truth) {
    const ok = s.truth.mismatchedIntervals === 0;
    lines.push(
      `exactness     ${ok ? 'EXACT' : 'MISMATCH'}: ${num(s.truth.intervalsChecked - s.truth.mismatchedIntervals)}/${num(s.truth.intervalsChecked)} intervals match the guest's truth` +
        (ok ? '' : ` (${num(s.truth.mismatchedPages)} pages differ)`),
    );
  }
  if (s.curve.length) {
    const max = Math.max(...s.curve.map((c) => c.pages), 1);
    const spark = s.curve.map((c) => SPARK[Math.min(SPARK.length - 1, Math.floor((c.pages / max) * (SPARK.length - 1)))]).join('');
    lines.push(`dirty curve   ${spark}  D(τ) distinct pages over a window τ:`);
    lines.push('              ' + s.curve.map((c) => `${seconds(c.windowSec)}:${pages(c.pages)}`).join('  '));
  }
  const totalHeat = s.heatHistogram.reduce((a, b) => a + b, 0) || 1;
  const hot = s.heatHistogram.slice(1);
  if (hot.some((h) => h > 0)) {
    const groups = [
      ['1', 1, 1],
      [`2-${Math.max(2, Math.floor(s.heatIntervals / 2))}`, 2, Math.max(2, Math.floor(s.heatIntervals / 2))],
      [`>${Math.max(2, Math.floor(s.heatIntervals / 2))}`, Math.floor(s.heatIntervals / 2) + 1, s.heatIntervals],
    ] as const;
    const parts = groups.map(([label, lo, hi]) => {
      let n = 0;
      for (let h = lo; h <= hi && h < s.heatHistogram.length; h++) n += s.heatHistogram[h]!;
      return `${label}: ${pages(n)}`;
    });
    lines.push(`heat          pages by intervals dirty (of last ${s.heatIntervals}) — ${parts.join('   ')}   (${num((1 - s.heatHistogram[0]! / totalHeat) * 100, 2)}% of RAM)`);
  }
  if (s.hottestRegions.length) {
    lines.push(`hottest ${s.hottestRegions[0]!.regionMib} MiB regions (dirty pages over the last second; bars relative to the hottest):`);
    const hottest = s.hottestRegions[0]!.dirtyPages;
    for (const r of s.hottestRegions) {
      lines.push(`  @${num(r.startMib).padStart(8)} MiB  ${bar(r.dirtyPages / hottest, 30)}  ${pages(r.dirtyPages)}`);
    }
  }
  lines.push(`harvest       ${num(s.harvestUsMean, 1)} µs per interval (${num(s.harvestUsPerGiB, 1)} µs/GiB), ${num(s.intervals)} intervals` + (s.lostIntervals ? `, ${s.lostIntervals} lost` : ''));
  if (s.migration) {
    const p = s.migration.prediction;
    const link = `${num((s.migration.bandwidthBytesPerSec * 8) / 1e9, 2)} Gbit/s, downtime limit ${s.migration.downtimeLimitMs} ms`;
    lines.push(
      p.converges
        ? `migration     at ${link}: converges in ${p.iterations} passes, ${seconds(p.totalSec)}, ${bytes(p.bytesSent)} sent, ~${num(p.downtimeMs)} ms downtime` +
            (p.finalThrottlePct ? `, auto-converge throttle ${p.finalThrottlePct}%` : '')
        : `migration     at ${link}: does NOT converge (${p.reason})` +
            (p.toConverge?.bandwidthBytesPerSec ? `; needs ${num((p.toConverge.bandwidthBytesPerSec * 8) / 1e9, 2)} Gbit/s` : ''),
    );
  }
  return lines;
}

/** One line per report, for pipes and logs. */
export function renderLine(s: ProfileSnapshot): string {
  const curve = s.curve.length ? s.curve[s.curve.length - 1]! : undefined;
  return (
    `${s.source} intervals=${s.intervals} dirtyPagesPerSec=${Math.round(s.dirtyPagesPerSec)} workingSetPages=${s.workingSetPages}` +
    (curve ? ` D(${seconds(curve.windowSec)})=${curve.pages}` : '') +
    ` harvestUs=${s.harvestUsMean.toFixed(1)}` +
    (s.truth ? ` mismatchedIntervals=${s.truth.mismatchedIntervals}/${s.truth.intervalsChecked}` : '') +
    (s.migration ? ` migration=${s.migration.prediction.converges ? `${s.migration.prediction.totalSec.toFixed(1)}s` : 'no-convergence'}` : '')
  );
}
