/**
 * `dpa govern SOCKET...`: runs the governor over the VMs behind the given QMP monitors (each VM's
 * own monitor: QEMU serves one client at a time, so not LXD's qemu.monitor) while something else
 * migrates them, e.g. LXD. Each VM's migration is observed through QMP (src/governor/observed.ts);
 * the base-disk copy, invisible to QMP, is described by --base-mib and --base-mib-per-sec.
 *
 * On start it reconciles the state file (restoring what a crashed governor left applied, except
 * on the VMs given here, whose entries it takes over so their throttles stay in force); on
 * SIGINT/SIGTERM, at --seconds, or when every migration has ended, it restores everything it
 * changed and exits. --json prints JSON lines: `start`, `tick` (on every action and every
 * --report-ms), `released`, `warning`, `end`.
 */
import { mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Governor } from '../governor/governor';
import { ObservedMigration } from '../governor/observed';
import type { DecisionRecord } from '../governor/decision-log';
import { QmpClient } from '../qmp/client';
import { jsonOption, UsageError } from './args';
import { defineCommand } from './command';

const MiB = 1024 * 1024;

/** Default state file: under $XDG_RUNTIME_DIR (a private per-user tmpfs), else ~/.local/state. */
export function defaultStateFile(): string {
  const base = process.env.XDG_RUNTIME_DIR || join(homedir(), '.local', 'state');
  return join(base, 'dpa', 'governor-state.json');
}

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

export const command = defineCommand({
  words: ['govern'],
  summary: 'govern the migrations of the VMs behind these QMP monitors: write throttles and link sharing, restored on exit',
  usage: '--omega-mib N [--policy fitted|paper] [options] SOCKET...',
  options: {
    omegaMib: { type: 'int', min: 1, max: 16 * 1024 * 1024, required: true, description: 'Ω, the shared overlay buffer', unit: 'MiB' },
    policy: { type: 'enum', choices: ['fitted', 'paper', 'static', 'unthrottled'], default: 'fitted', description: 'policy deciding Π and γ' },
    intervalMs: { type: 'int', min: 20, max: 1000, default: 100, description: 'control period', unit: 'ms' },
    slaBytesPerSec: { type: 'number', min: 1, max: 1e12, default: 10_000, description: 'γ_SLA, the lowest write throttle', unit: 'bytes/s' },
    overlayNode: { type: 'string', default: 'lxd_root_snapshot', description: 'block node of the migration overlay' },
    device: { type: 'string', description: 'QOM path of the disk device (default: the one whose active node is the overlay, or the only one)' },
    baseMib: { type: 'number', min: 0, max: 1 << 30, default: 0, description: 'base disk still to copy when governing starts (invisible to QMP)', unit: 'MiB' },
    baseMibPerSec: { type: 'number', min: 0.001, max: 1e7, default: 100, description: 'assumed speed of that copy', unit: 'MiB/s' },
    linkMbit: { type: 'number', min: 0.001, max: 1e7, default: 1000, description: 'link speed assumed until measured', unit: 'Mbit/s' },
    noBandwidth: { type: 'boolean', description: 'leave max-bandwidth alone (only throttle writes)' },
    overlayGrowth: { type: 'boolean', description: 'plan with the overlay growth each guest causes, not every byte it writes (rewrites cost Ω nothing)' },
    stateFile: { type: 'string', description: `crash-safety state file (default ${defaultStateFile()})` },
    decisionLog: { type: 'string', description: 'append every decision with its inputs to this JSON lines file (0600)' },
    seconds: { type: 'number', min: 0, max: 30 * 86_400, default: 0, description: 'stop after this long (0 = until interrupted or all migrations ended)', unit: 's' },
    reportMs: { type: 'int', min: 100, max: 3_600_000, default: 1000, description: 'status line period', unit: 'ms' },
    ...jsonOption,
  },
  async run(options, positionals, io) {
    if (positionals.length === 0) throw new UsageError('give at least one QMP monitor socket path');
    if (positionals.length > 256) throw new UsageError(`at most 256 monitors (got ${positionals.length})`);
    const stateFile = resolve(options.stateFile ?? defaultStateFile());
    mkdirSync(dirname(stateFile), { recursive: true, mode: 0o700 });
    const print = (obj: Record<string, unknown>, text: string): void => {
      if (options.json) io.out(JSON.stringify(obj) + '\n');
      else io.out(text + '\n');
    };

    const governor = await Governor.start({
      policy: options.policy,
      omegaBytes: options.omegaMib * MiB,
      intervalMs: options.intervalMs,
      slaBytesPerSec: options.slaBytesPerSec,
      linkHintBytesPerSec: (options.linkMbit * 1e6) / 8,
      manageBandwidth: !options.noBandwidth,
      overlayGrowth: options.overlayGrowth === true,
      stateFile,
      // A restart governing the same VMs takes over their entries instead of lifting their throttles.
      adopt: positionals.map((p) => resolve(p)),
      ...(options.decisionLog !== undefined ? { decisionLog: resolve(options.decisionLog) } : {}),
    });
    const clients: QmpClient[] = [];
    let done: () => void = () => {};
    const finished = new Promise<void>((r) => (done = r));
    const onAbort = (): void => done();
    io.signal.addEventListener('abort', onAbort, { once: true });
    const timer = options.seconds > 0 ? setTimeout(done, options.seconds * 1000) : undefined;
    try {
      const r = governor.reconcileReport;
      print(
        { type: 'start', stateFile, policy: options.policy, intervalMs: options.intervalMs, reconcile: r },
        `dpa govern: policy ${options.policy}, Ω ${options.omegaMib} MiB, ${options.intervalMs} ms; state file ${stateFile}` +
          (r && r.entries > 0 ? `\n  reconciled a previous run: restored ${r.restored.length}, taken over ${r.adopted?.length ?? 0}, gone ${r.gone.length}, modified ${r.modified.length}, failed ${r.failed.length}` : ''),
      );
      governor.on('warning', (w) => print({ type: 'warning', ...w }, `  warning${w.id ? ` ${w.id}` : ''} (${w.stage}): ${w.message}`));
      governor.on('released', (e) => {
        print({ type: 'released', ...e }, `  ${e.id} released: ${e.reason}${e.restored ? '' : ' (NOT restored: kept in the state file)'}`);
        if (governor.governed().length === 0) done();
      });
      let lastReport = -Infinity;
      governor.on('tick', (rec: DecisionRecord) => {
        const now = performance.now();
        if (rec.actions.length === 0 && now - lastReport < options.reportMs) return;
        lastReport = now;
        const vms = rec.inputs.map((v) => ({ id: v.id, phase: v.phase, overlayBytes: v.overlayBytes, writeBytesPerSec: Math.round(v.writeBytesPerSec), demandBytesPerSec: Math.round(v.demandBytesPerSec), writeLimitBytesPerSec: v.writeLimitBytesPerSec }));
        print(
          { type: 'tick', seq: rec.seq, tickUs: rec.tickUs, linkBytesPerSec: rec.world.linkBytesPerSec, vms, actions: rec.actions, reason: rec.decision.reason },
          `  #${rec.seq} U ${mib(rec.world.linkBytesPerSec)}/s, tick ${rec.tickUs.toFixed(0)} µs: ` +
            vms.map((v) => `${v.id} ${v.phase} overlay ${mib(v.overlayBytes)} writes ${mib(v.writeBytesPerSec)}/s limit ${v.writeLimitBytesPerSec ? mib(v.writeLimitBytesPerSec) + '/s' : 'none'}`).join('; ') +
            (rec.actions.length ? ` — ${rec.actions.length} action(s)` : ''),
        );
      });
      for (const [i, path] of positionals.entries()) {
        const qmp = await QmpClient.connect(resolve(path), { timeoutMs: 5000 });
        clients.push(qmp);
        const m = await ObservedMigration.create({
          id: positionals.length === 1 ? 'vm' : `vm${i}`,
          qmp,
          monitorPath: resolve(path),
          overlayNode: options.overlayNode,
          ...(options.device !== undefined ? { deviceQomPath: options.device } : {}),
          baseBytesLeft: options.baseMib * MiB,
          baseBytesPerSec: options.baseMibPerSec * MiB,
        });
        await governor.attach(m);
      }
      if (!io.signal.aborted) await finished;
    } finally {
      io.signal.removeEventListener('abort', onAbort);
      if (timer) clearTimeout(timer);
      const report = await governor.stop();
      const stats = governor.stats;
      print(
        { type: 'end', stop: report, stats },
        `dpa govern: stopped; restored ${report.restored.length}${report.failed.length ? `, NOT restored ${report.failed.map((f) => `${f.id} (${f.error})`).join(', ')}` : ''}; ` +
          `${stats.ticks} ticks, tick p50 ${stats.tickUsP50.toFixed(0)} µs p99 ${stats.tickUsP99.toFixed(0)} µs, ${stats.actionsSent} actions`,
      );
      await Promise.all(clients.map((c) => c.close()));
    }
    return 0;
  },
});
