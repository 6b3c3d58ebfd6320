/**
 * `dpa start` (what `npm start` runs): the main job on the embedded default. It profiles the
 * KVM calibration VM — a guest whose page writes are known exactly — and shows a live view: dirty
 * pages/s, the dirty curve, heat, the hottest regions, harvest cost and what a migration would
 * cost. Where /dev/kvm is unusable it says so and falls back to what still works: a QEMU (TCG)
 * lab guest profiled by the guest-memory scanner, or, without QEMU either, the simulator on the
 * shipped scenario.
 */
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { jsonOption } from './args';
import { defineCommand, type CommandIO } from './command';
import type { DirtySource } from '../sources/types';
import { ProfileSession } from '../profile/session';
import { renderLine, renderView } from '../profile/render';

const options = {
  guestMib: { type: 'int', min: 96, max: 16384, default: 1024, description: 'calibration guest RAM (lab guest: at most 512)', unit: 'MiB' },
  vcpus: { type: 'int', min: 1, max: 8, default: 1, description: 'calibration guest vCPUs' },
  pattern: { type: 'enum', choices: ['uniform', 'sequential', 'zipf'], default: 'zipf', description: 'write pattern over the hot set' },
  rate: { type: 'number', min: 1, max: 1e7, default: 20000, description: 'page writes per second asked of the guest', unit: 'pages/s' },
  hotPages: { type: 'int', min: 1, max: 4194304, default: 65536, description: 'hot set size', unit: 'pages' },
  intervalMs: { type: 'int', min: 10, max: 1000, default: 100, description: 'harvest interval', unit: 'ms' },
  mode: { type: 'enum', choices: ['bitmap', 'ring'], default: 'bitmap', description: 'KVM harvest mode' },
  seconds: { type: 'number', min: 0, max: 86400, default: 0, description: 'run length (0 = until interrupted)', unit: 's' },
  refreshMs: { type: 'int', min: 100, max: 10000, default: 1000, description: 'how often the view is redrawn', unit: 'ms' },
  bandwidthMbit: { type: 'number', min: 1, max: 400000, default: 1000, description: 'link speed for the migration-cost line', unit: 'Mbit/s' },
  downtimeMs: { type: 'int', min: 1, max: 100000, default: 300, description: 'downtime limit for the migration-cost line', unit: 'ms' },
  source: { type: 'enum', choices: ['auto', 'kvm', 'qemu', 'simulate'], default: 'auto', description: 'what to profile (auto: KVM, else a QEMU lab guest, else the simulator)' },
  ...jsonOption,
} as const;

type Opts = { [K in keyof typeof options]: (typeof options)[K] extends { type: 'boolean' } ? boolean : (typeof options)[K] extends { type: 'enum' } ? string : number };

function kvmProblem(): string | null {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? '/dev/kvm does not exist (no KVM on this host)' : `/dev/kvm is not usable (${code})`;
  }
}

function qemuProblem(): string | null {
  const dirs = (process.env.PATH ?? '').split(':');
  for (const d of dirs) {
    try {
      accessSync(join(d, 'qemu-system-x86_64'), constants.X_OK);
      return null;
    } catch {
      /* keep looking */
    }
  }
  return 'qemu-system-x86_64 is not installed (scripts/setup-host.sh installs it)';
}

interface Running {
  source: DirtySource;
  title: string;
  pages: number;
  intervalMs: number;
  /** Resolves when the source ends on its own. */
  ended: Promise<string>;
  stop(): Promise<void>;
}

async function startKvm(o: Opts): Promise<Running> {
  const { KvmCalibrationSource } = await import('../sources/kvm-calibration');
  const seconds = o.seconds > 0 ? o.seconds : undefined;
  const source = KvmCalibrationSource.start({
    guestMib: o.guestMib,
    vcpus: o.vcpus,
    mode: o.mode as 'bitmap' | 'ring',
    pattern: o.pattern as 'uniform' | 'sequential' | 'zipf',
    ratePagesPerSec: o.rate,
    hotPages: Math.min(o.hotPages, o.guestMib * 256),
    intervalMs: o.intervalMs,
    ...(seconds ? { seconds } : {}),
  });
  const ended = new Promise<string>((resolve) => source.onEnd((r) => resolve(`${r.code}: ${r.message}`)));
  return {
    source,
    title:
      `dpa — KVM calibration VM (${o.mode} harvest): ${o.guestMib} MiB, ${o.vcpus} vCPU, ${o.pattern} writes over ` +
      `${Math.min(o.hotPages, o.guestMib * 256)} hot pages at ${o.rate} pages/s, ${o.intervalMs} ms intervals`,
    pages: source.pagesTotal,
    intervalMs: o.intervalMs,
    ended,
    stop: () => source.close(),
  };
}

async function startQemu(o: Opts, io: CommandIO): Promise<Running> {
  const { LabVm } = await import('../lab/vm');
  const { openGuestMemory } = await import('../sources/guest-memory');
  const guestMib = Math.min(o.guestMib, 512);
  io.err(`dpa: booting a QEMU (TCG) lab guest of ${guestMib} MiB; the first run builds the guest image (about a minute)\n`);
  const vm = await LabVm.start({ guestMib, disk: null, name: 'dpa-start' });
  try {
    await vm.ready();
    const bufferMib = Math.max(1, Math.min(64, Math.floor(guestMib / 4)));
    const hotPages = Math.min(o.hotPages, bufferMib * 256);
    await vm.memStart({ mib: bufferMib, hotPages, pattern: o.pattern as 'uniform' | 'sequential' | 'zipf', ratePagesPerSec: o.rate });
    const ram = vm.guestRam();
    const source = openGuestMemory({ pid: ram.pid, ramName: ram.ramName, ramBytes: ram.ramBytes, intervalMs: Math.max(o.intervalMs, 100) });
    await source.ready;
    const ended = new Promise<string>((resolve) => source.onEnd((r) => resolve(`${r.code}: ${r.message}`)));
    return {
      source,
      title:
        `dpa — QEMU lab guest (TCG) profiled by the guest-memory scanner: ${guestMib} MiB, workload ${o.pattern} over ` +
        `${hotPages} pages at ${o.rate} pages/s (content changes, ${Math.max(o.intervalMs, 100)} ms scans)`,
      pages: source.pagesTotal,
      intervalMs: Math.max(o.intervalMs, 100),
      ended,
      stop: async () => {
        await source.close();
        await vm.stop();
      },
    };
  } catch (err) {
    await vm.stop();
    throw err;
  }
}

async function runSimulation(io: CommandIO, json: boolean): Promise<number> {
  const { loadCommand } = await import('./main');
  const scenario = join(__dirname, '..', '..', '..', 'scenarios', 'three-writers.json');
  io.err(`dpa: simulating the shipped scenario ${scenario} under every policy\n`);
  const simulate = loadCommand('simulate');
  return simulate.run({ json, policy: undefined } as never, [scenario], io);
}

export const command = defineCommand({
  words: ['start'],
  summary: 'the main job: live dirty-page profile of the calibration VM (falls back to a QEMU guest, then the simulator)',
  usage: '[--guest-mib N] [--pattern P] [--rate PAGES_PER_SEC] [--interval-ms I] [--seconds T] [--source auto|kvm|qemu|simulate] [--json]',
  options,
  async run(opts, _positionals, io) {
    const o = opts as unknown as Opts;
    let choice = o.source;
    if (choice === 'auto') {
      const kvm = kvmProblem();
      if (kvm === null) choice = 'kvm';
      else {
        const qemu = qemuProblem();
        io.err(
          `dpa: ${kvm}: the calibration VM (exact KVM dirty logs) cannot run here.\n` +
            `     Still available: dpa profile --qmp/--pid on QEMU guests, dpa lab (QEMU/TCG), dpa simulate, dpa predict, dpa bench bitmap.\n`,
        );
        if (qemu === null) {
          io.err('     Falling back to a QEMU lab guest profiled by the guest-memory scanner.\n');
          choice = 'qemu';
        } else {
          io.err(`     ${qemu}; falling back to the simulator.\n`);
          choice = 'simulate';
        }
      }
    }
    if (choice === 'simulate') return runSimulation(io, o.json);

    const running = choice === 'kvm' ? await startKvm(o) : await startQemu(o, io);
    const session = new ProfileSession({
      pages: running.pages,
      intervalMs: running.intervalMs,
      bandwidthBytesPerSec: (o.bandwidthMbit * 1e6) / 8,
      downtimeLimitMs: o.downtimeMs,
    });
    session.attach(running.source);
    const draw = (): void => {
      const snap = session.snapshot();
      if (o.json) io.out(JSON.stringify(snap) + '\n');
      else if (io.isTTY) io.out('\x1b[H\x1b[2J' + renderView(running.title, snap).join('\n') + '\n\n(Ctrl-C to stop)\n');
      else io.out(renderLine(snap) + '\n');
    };
    const timer = setInterval(draw, o.refreshMs);
    let endReason: string;
    try {
      endReason = await new Promise<string>((resolve) => {
        running.ended.then(resolve);
        // The calibration VM stops itself after --seconds; other sources are stopped here.
        if (o.seconds > 0 && choice !== 'kvm') setTimeout(() => resolve(`COMPLETE: ran ${o.seconds} s`), o.seconds * 1000).unref();
        io.signal.addEventListener('abort', () => resolve('interrupted'), { once: true });
        if (io.signal.aborted) resolve('interrupted');
      });
    } finally {
      clearInterval(timer);
      await running.stop();
    }
    const final = session.snapshot();
    session.close();
    if (o.json) io.out(JSON.stringify({ final: true, endReason, ...final }) + '\n');
    else io.out(renderView(running.title, final).join('\n') + `\n\nended: ${endReason}\n`);
    if (final.truth && final.truth.mismatchedIntervals > 0) return 1;
    return endReason === 'interrupted' || endReason.startsWith('COMPLETE') ? 0 : 1;
  },
});
