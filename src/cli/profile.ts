/**
 * `dpa profile --qmp SOCKET [--pid PID]`: a live view of one QEMU VM — migration state, disk
 * writes and overlay sizes, block jobs, QEMU's calc-dirty-rate estimate (page-sampling) and, with
 * --pid, the guest-memory scanner's content-change counts (src/sources/guest-memory.ts, native).
 * On a terminal the view redraws in place; otherwise it prints one line per sample; with --json
 * one JSON document per line, each with a `type`: qmp, dirty-rate, guest-memory, end.
 */
import { jsonOption } from './args';
import { defineCommand, type CommandIO } from './command';
import { QmpClient } from '../qmp/client';
import { type DirtyRateSample, QmpCollector, type QmpSample } from '../sources/qmp-collector';
import type { GuestMemoryInterval, GuestMemorySource } from '../sources/guest-memory';

const MiB = 1024 * 1024;
const PAGE_BYTES = 4096;

const options = {
  qmp: { type: 'string', required: true, description: "path of a QMP monitor socket of the VM (its own monitor: QEMU serves one client at a time, LXD's qemu.monitor is taken)" },
  pid: { type: 'int', min: 1, max: 4194304, description: 'QEMU process id: also scan guest RAM for changed pages (needs ptrace rights, the native addon)' },
  intervalMs: { type: 'int', min: 50, max: 60_000, default: 500, description: 'poll period (50 ms = 20 Hz)', unit: 'ms' },
  seconds: { type: 'number', min: 0, max: 86_400, default: 0, description: 'stop after this long (0 = until interrupted)', unit: 's' },
  dirtyRateSeconds: { type: 'int', min: 0, max: 60, default: 2, description: 'calc-dirty-rate page-sampling window, repeated back to back (0 = off)', unit: 's' },
  ...jsonOption,
} as const;

function rate(bytesPerSec: number | null | undefined): string {
  return bytesPerSec === null || bytesPerSec === undefined ? '—' : `${(bytesPerSec / MiB).toFixed(2)} MiB/s`;
}

function mib(bytes: number | null | undefined): string {
  return bytes === null || bytes === undefined ? '—' : `${(bytes / MiB).toFixed(1)} MiB`;
}

interface ViewState {
  socketPath: string;
  qmp?: QmpSample;
  dirtyRate?: DirtyRateSample;
  guest?: Omit<GuestMemoryInterval, 'bitmap'>;
  guestNote?: string;
}

/** The text view of the latest state. */
export function renderView(v: ViewState): string[] {
  const lines = [`dpa profile  ${v.socketPath}`];
  const s = v.qmp;
  if (!s) return [...lines, '  waiting for the first sample…'];
  lines.push(`  sample #${s.seq}  poll ${s.pollMs.toFixed(1)} ms${s.errors.length ? `  errors: ${s.errors.map((e) => `${e.command}: ${e.message}`).join('; ')}` : ''}`);
  const m = s.migration;
  if (m && m.status !== 'none') {
    lines.push(
      `  migration ${m.status}: ${mib(m.ramTransferredBytes)} sent, ${mib(m.ramRemainingBytes)} remaining of ${mib(m.ramTotalBytes)}; ` +
        `rate ${rate(m.ramTransferBytesPerSec)}; dirty ${rate(m.dirtyBytesPerSec)} (${m.dirtyPagesPerSec} pages/s); ` +
        `passes ${m.dirtySyncCount}; expected downtime ${m.expectedDowntimeMs ?? '—'} ms; throttle ${m.cpuThrottlePercent}%`,
    );
  } else if (m) lines.push('  migration: none');
  for (const d of s.devices ?? []) {
    lines.push(`  disk ${d.qdev ?? d.id}: write ${rate(d.wrBytesPerSec)} (${mib(d.wrBytes)} total), read ${rate(d.rdBytesPerSec)}`);
  }
  for (const n of s.nodes ?? []) {
    if (n.driver === 'file' || n.driver === 'host_device') continue;
    lines.push(`  node ${n.nodeName} (${n.driver}${n.readOnly ? ', ro' : ''}): ${mib(n.actualSizeBytes)} on host, growing ${rate(n.actualSizeGrowthBytesPerSec)}`);
  }
  for (const j of s.jobs ?? []) {
    lines.push(`  job ${j.id} (${j.type}, ${j.status}${j.ready ? ', ready' : ''}): ${mib(j.offsetBytes)}/${mib(j.lenBytes)}, ${rate(j.progressBytesPerSec)}`);
  }
  const dr = v.dirtyRate;
  lines.push(dr ? `  calc-dirty-rate (page-sampling, ${dr.calcTimeS} s, ${dr.samplePagesPerGiB} pages/GiB): ${dr.dirtyRateMiBPerSec} MiB/s` : '  calc-dirty-rate: —');
  const g = v.guest;
  if (g) {
    const seconds = (g.tEndMs - g.tStartMs) / 1000;
    lines.push(
      `  guest memory (content changes): ${g.dirtyPages} of ${g.pagesTotal} pages in ${(seconds * 1000).toFixed(0)} ms = ` +
        `${rate(seconds > 0 ? (g.dirtyPages * PAGE_BYTES) / seconds : null)}; scan ${(g.scanUs / 1000).toFixed(1)} ms`,
    );
  } else if (v.guestNote) lines.push(`  guest memory: ${v.guestNote}`);
  return lines;
}

/** Opens the guest-memory scanner; loaded lazily so `profile --qmp` alone never needs the addon. */
function openGuestMemoryLazily(pid: number, intervalMs: number): GuestMemorySource {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const gm = require('../sources/guest-memory') as typeof import('../sources/guest-memory');
  return gm.openGuestMemory({ pid, intervalMs: Math.min(10_000, Math.max(10, intervalMs)) });
}

export const command = defineCommand({
  words: ['profile'],
  summary: 'live view of a QEMU VM over QMP: migration, disk writes, overlay growth, block jobs, dirty rate (+ guest RAM scan with --pid)',
  usage: '--qmp SOCKET [--pid PID] [--interval-ms I] [--seconds T] [--dirty-rate-seconds S] [--json]',
  options,
  async run(o, _positionals, io: CommandIO) {
    const client = await QmpClient.connect(o.qmp, { timeoutMs: 5000 });
    const collector = new QmpCollector({ client, intervalMs: o.intervalMs, ownsClient: true });
    const view: ViewState = { socketPath: o.qmp };
    const live = io.isTTY && !o.json;
    let endReason: { code: string; message: string } | undefined;
    let guest: GuestMemorySource | undefined;
    const stop = new AbortController();
    const finish = (): void => stop.abort();
    io.signal.addEventListener('abort', finish, { once: true });

    const emitJson = (doc: Record<string, unknown>): void => io.out(JSON.stringify(doc) + '\n');
    const draw = (): void => {
      if (live) io.out('\x1b[H\x1b[2J' + renderView(view).join('\n') + '\n');
    };

    collector.onSample((s) => {
      view.qmp = s;
      if (o.json) emitJson({ type: 'qmp', ...s });
      else if (live) draw();
      else {
        const m = s.migration;
        const wr = (s.devices ?? []).reduce((a, d) => a + (d.wrBytesPerSec ?? 0), 0);
        io.out(`#${s.seq} poll ${s.pollMs.toFixed(1)} ms  migration ${m?.status ?? '?'}${m && m.status !== 'none' ? ` ${rate(m.ramTransferBytesPerSec)} dirty ${rate(m.dirtyBytesPerSec)}` : ''}  disk write ${rate(wr)}\n`);
      }
    });
    collector.onDirtyRate((d) => {
      view.dirtyRate = d;
      if (o.json) emitJson({ type: 'dirty-rate', ...d });
      else if (!live) io.out(`calc-dirty-rate: ${d.dirtyRateMiBPerSec} MiB/s over ${d.calcTimeS} s\n`);
    });
    collector.onEnd((r) => {
      endReason = r;
      if (o.json) emitJson({ type: 'end', source: 'qmp', ...r });
      finish();
    });
    collector.start();

    if (o.pid !== undefined) {
      // Integration point with the native guest-memory scanner (src/sources/guest-memory.ts).
      try {
        guest = openGuestMemoryLazily(o.pid, o.intervalMs);
        guest.onInterval((i) => {
          const { bitmap: _bitmap, ...rest } = i;
          view.guest = rest;
          if (o.json) emitJson({ type: 'guest-memory', ...rest });
          else if (!live) io.out(`guest memory: ${i.dirtyPages}/${i.pagesTotal} pages changed in ${(i.tEndMs - i.tStartMs).toFixed(0)} ms\n`);
        });
        guest.onEnd((r) => {
          view.guestNote = `ended: ${r.code} ${r.message}`;
          if (o.json) emitJson({ type: 'end', source: 'guest-memory', code: r.code, message: r.message });
        });
      } catch (err) {
        // The QMP view is still useful without the scan: report why and go on.
        view.guestNote = `unavailable: ${(err as Error).message}`;
        if (o.json) emitJson({ type: 'end', source: 'guest-memory', code: (err as { code?: string }).code ?? 'ERROR', message: (err as Error).message });
        else io.err(`dpa profile: guest-memory scan unavailable: ${(err as Error).message}\n`);
      }
    }

    const dirtyLoop = (async () => {
      while (o.dirtyRateSeconds > 0 && !stop.signal.aborted) {
        try {
          await collector.measureDirtyRate({ calcTimeS: o.dirtyRateSeconds, signal: stop.signal });
        } catch (err) {
          if (stop.signal.aborted || collector.hasEnded) break;
          if (o.json) emitJson({ type: 'error', source: 'calc-dirty-rate', message: (err as Error).message });
          else io.err(`dpa profile: calc-dirty-rate: ${(err as Error).message}\n`);
          await new Promise((r) => setTimeout(r, o.dirtyRateSeconds * 1000));
        }
      }
    })();

    let timer: NodeJS.Timeout | undefined;
    if (o.seconds > 0) timer = setTimeout(finish, o.seconds * 1000);
    await new Promise<void>((resolve) => {
      if (stop.signal.aborted) resolve();
      else stop.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    if (timer) clearTimeout(timer);
    io.signal.removeEventListener('abort', finish);
    await guest?.close();
    await collector.close();
    await dirtyLoop;
    if (endReason) {
      if (!o.json) io.err(`dpa profile: ${endReason.message}\n`);
      return 1;
    }
    return 0;
  },
});
