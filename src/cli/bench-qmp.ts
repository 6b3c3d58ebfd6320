/**
 * `dpa bench qmp`: can one dpa process poll many QEMU monitors at 20 Hz? Starts N real QEMUs (q35
 * under TCG with a qcow2 disk, or `-machine none`), runs one QmpCollector per monitor (each poll =
 * query-migrate + query-blockstats + query-named-block-nodes + query-block-jobs, pipelined) and
 * reports the achieved poll rate of the slowest monitor and the poll round-trip percentiles.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jsonOption } from './args';
import { defineCommand } from './command';
import { registerExitCleanup, run } from '../lab/exec';
import { trackChild } from '../lab/processes';
import { QmpClient } from '../qmp/client';
import { QmpCollector } from '../sources/qmp-collector';

const options = {
  monitors: { type: 'int', min: 1, max: 64, default: 8, description: 'QEMU processes (one monitor each) to poll at once' },
  hz: { type: 'number', min: 0.1, max: 20, default: 20, description: 'polls per second per monitor', unit: 'Hz' },
  seconds: { type: 'number', min: 1, max: 3600, default: 10, description: 'measurement length', unit: 's' },
  machine: { type: 'enum', choices: ['q35', 'none'], default: 'q35', description: 'q35: a TCG PC with a 64 MiB qcow2 disk (realistic replies); none: no guest' },
  ...jsonOption,
} as const;

export interface BenchQmpResult {
  monitors: number;
  hz: number;
  seconds: number;
  machine: string;
  /** Queries per poll (pipelined on one connection). */
  queriesPerPoll: number;
  /** Poll rate of the slowest monitor, polls/s. */
  achievedHz: number;
  /** Mean poll rate over monitors, polls/s. */
  achievedHzMean: number;
  /** Poll round trip (first query sent → last reply), ms, over all polls of all monitors. */
  rttP50Ms: number;
  rttP99Ms: number;
  rttMaxMs: number;
  /** Failed queries plus monitors that disconnected. */
  errors: number;
  /** Polls started late because the previous one overran its tick (by less than a period). */
  lateTicks: number;
  /** Ticks skipped because polling fell a whole period or more behind. */
  missedTicks: number;
  samples: number;
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1]!;
}

function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ path });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

interface BenchQemu {
  socketPath: string;
  kill(): Promise<void>;
}

async function startQemu(dir: string, i: number, machine: string): Promise<BenchQemu> {
  const socketPath = join(dir, `qmp-${i}.sock`);
  const args = ['-nodefaults', '-no-user-config', '-display', 'none', '-qmp', `unix:${socketPath},server=on,wait=off`];
  if (machine === 'none') args.unshift('-machine', 'none');
  else {
    const disk = join(dir, `disk-${i}.qcow2`);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M']);
    args.unshift('-machine', 'q35', '-accel', 'tcg', '-m', '64');
    args.push('-blockdev', `driver=file,filename=${disk},node-name=root-file`, '-blockdev', 'driver=qcow2,file=root-file,node-name=root', '-device', 'virtio-blk-pci,drive=root,id=vd0');
  }
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  trackChild(child, `bench-qmp-${i}`);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d.slice(0, 4096)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const kill = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`QEMU ${i} exited: ${stderr}`);
    // QEMU binds before it listens: wait for a connect to succeed, not just for the file.
    try {
      if (statSync(socketPath).isSocket() && (await canConnect(socketPath))) break;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) {
      await kill();
      throw new Error(`QEMU ${i} did not open ${socketPath} within 20 s: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  chmodSync(socketPath, 0o600);
  return { socketPath, kill };
}

/** Runs the benchmark; exported for tests. */
export async function benchQmp(o: { monitors: number; hz: number; seconds: number; machine: string }, signal?: AbortSignal): Promise<BenchQmpResult> {
  const dir = mkdtempSync(join(tmpdir(), 'dpa-bench-qmp-'));
  const unregister = registerExitCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const vms: BenchQemu[] = [];
  const collectors: QmpCollector[] = [];
  try {
    for (let i = 0; i < o.monitors; i++) vms.push(await startQemu(dir, i, o.machine));
    const clients = await Promise.all(vms.map((v) => QmpClient.connect(v.socketPath)));
    const intervalMs = Math.max(50, Math.round(1000 / o.hz));
    const rtts: number[] = [];
    const perMonitor = vms.map(() => ({ first: NaN, last: NaN, n: 0 }));
    let disconnects = 0;
    clients.forEach((client, i) => {
      const c = new QmpCollector({ client, intervalMs, ownsClient: true });
      c.onSample((s) => {
        rtts.push(s.pollMs);
        const m = perMonitor[i]!;
        if (m.n === 0) m.first = s.tMs;
        m.last = s.tMs;
        m.n++;
      });
      c.onEnd(() => disconnects++);
      collectors.push(c);
    });
    for (const c of collectors) c.start();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, o.seconds * 1000);
      signal?.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
    });
    await Promise.all(collectors.map((c) => c.close()));
    const rates = perMonitor.map((m) => (m.n > 1 ? ((m.n - 1) * 1000) / (m.last - m.first) : 0));
    rtts.sort((a, b) => a - b);
    const round = (x: number, d = 3): number => Number(x.toFixed(d));
    return {
      monitors: o.monitors,
      hz: o.hz,
      seconds: o.seconds,
      machine: o.machine,
      queriesPerPoll: 4,
      achievedHz: round(Math.min(...rates), 2),
      achievedHzMean: round(rates.reduce((a, b) => a + b, 0) / rates.length, 2),
      rttP50Ms: round(percentile(rtts, 50)),
      rttP99Ms: round(percentile(rtts, 99)),
      rttMaxMs: round(rtts[rtts.length - 1] ?? NaN),
      errors: collectors.reduce((a, c) => a + c.stats.queryErrors, 0) + disconnects,
      lateTicks: collectors.reduce((a, c) => a + c.stats.lateTicks, 0),
      missedTicks: collectors.reduce((a, c) => a + c.stats.missedTicks, 0),
      samples: rtts.length,
    };
  } finally {
    await Promise.all(collectors.map((c) => c.close()));
    await Promise.all(vms.map((v) => v.kill()));
    rmSync(dir, { recursive: true, force: true });
    unregister();
  }
}

export const command = defineCommand({
  words: ['bench', 'qmp'],
  summary: 'poll N real QEMU monitors at up to 20 Hz each: achieved rate and poll round-trip percentiles',
  usage: '[--monitors N] [--hz H] [--seconds S] [--machine q35|none] [--json]',
  options,
  async run(o, _positionals, io) {
    const r = await benchQmp(o, io.signal);
    if (o.json) {
      io.out(JSON.stringify(r) + '\n');
      return 0;
    }
    io.out(
      [
        `${r.monitors} monitors × ${r.hz} Hz for ${r.seconds} s (machine ${r.machine}, ${r.queriesPerPoll} queries per poll)`,
        `  achieved      ${r.achievedHz} Hz (slowest monitor), ${r.achievedHzMean} Hz mean`,
        `  poll RTT      p50 ${r.rttP50Ms} ms, p99 ${r.rttP99Ms} ms, max ${r.rttMaxMs} ms`,
        `  errors        ${r.errors}; late polls ${r.lateTicks}; missed ticks ${r.missedTicks}; samples ${r.samples}`,
      ].join('\n') + '\n',
    );
    return 0;
  },
});
