/**
 * `dpa migrate`: one LXD-shaped live migration with non-shared storage (src/migrate/).
 *
 * - Monitors mode: `--source-qmp SOCK --target-qmp SOCK --omega-dir DIR --target-addr HOST
 *   --target-disk PATH [--target-netns NS]` migrates any QEMU whose root node is raw, to a QEMU
 *   started with `-S -incoming defer` whose disk image this host can write (the base receiver
 *   runs here, or in NS). The monitors must be free: a QEMU monitor serves one client at a time.
 * - Lab mode: `--lab` builds namespace, shaped link, Ω tmpfs, source and target QEMUs, runs one
 *   migration under a guest write workload, has the guest verify its memory and disk where it
 *   ended up, and tears everything down (root, QEMU).
 *
 * Output: progress bars redrawn on a terminal; `--json` prints JSON lines (`phase`, `progress`,
 * then one `result`); otherwise plain lines at each phase and a summary. Exit status 0 when the
 * migration completed (lab: and the guest's verification passed), 1 otherwise.
 */
import { spawn as nodeSpawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { jsonOption, UsageError } from './args';
import { defineCommand, type CommandIO } from './command';
import { QmpClient } from '../qmp/client';
import { checkNsName, spawnInNs } from '../lab/netns';
import { spawnBaseReceiver, type BaseReceiver, type SpawnFn } from '../migrate/base-copy';
import { LiveMigration, DEFAULT_MIGRATION_PORT, DEFAULT_NBD_PORT, type LiveMigrationOptions } from '../migrate/migration';
import { runLabMigration, type LabRunReport } from '../migrate/lab';
import type { MigrationProgress, MigrationResult } from '../migrate/types';

const MiB = 1024 * 1024;

const MONITOR_ONLY = ['sourceQmp', 'targetQmp', 'omegaDir', 'targetAddr', 'targetDisk', 'targetNetns', 'receiverPort', 'nbdPort', 'migrationPort', 'skipBaseCopy', 'nodeName', 'keepSource'] as const;
const LAB_ONLY = ['guestMib', 'diskMib', 'linkMbit', 'omegaMib', 'diskWriteRate', 'memWriteRate', 'memMib'] as const;

const options = {
  lab: { type: 'boolean', description: 'lab mode: build the whole topology, migrate a guest under a write workload, verify, tear down (root)' },
  // monitors mode
  sourceQmp: { type: 'string', description: "monitors mode: the source QEMU's QMP socket" },
  targetQmp: { type: 'string', description: "monitors mode: the target QEMU's QMP socket (QEMU started with -S -incoming defer)" },
  omegaDir: { type: 'string', description: 'monitors mode: Ω, the directory the overlay qcow2 is created in (absolute)' },
  targetAddr: { type: 'string', description: "monitors mode: the target host's address; NBD, migration and the base receiver listen there" },
  targetDisk: { type: 'string', description: "monitors mode: the target's root image as this host sees it (the base receiver writes it)" },
  targetNetns: { type: 'string', description: 'monitors mode: run the base receiver in this network namespace' },
  receiverPort: { type: 'int', min: 0, max: 65535, description: 'monitors mode: base receiver port (default 0: any free port)' },
  nbdPort: { type: 'int', min: 1, max: 65535, description: `monitors mode: target NBD port (default ${DEFAULT_NBD_PORT})` },
  migrationPort: { type: 'int', min: 1, max: 65535, description: `monitors mode: target migration port (default ${DEFAULT_MIGRATION_PORT})` },
  skipBaseCopy: { type: 'boolean', description: "monitors mode: the target's disk already holds the base image" },
  nodeName: { type: 'string', description: "monitors mode: the root block node of both QEMUs (default lxd_root)" },
  keepSource: { type: 'boolean', description: 'monitors mode: leave the source QEMU in postmigrate instead of quitting it' },
  // lab mode
  guestMib: { type: 'int', min: 96, max: 4096, description: 'lab: guest RAM (default 128)', unit: 'MiB' },
  diskMib: { type: 'int', min: 8, max: 65536, description: 'lab: root disk size (default 64)', unit: 'MiB' },
  linkMbit: { type: 'number', min: 1, max: 10_000, description: 'lab: tbf rate of the link, both directions (default 200)', unit: 'Mbit/s' },
  omegaMib: { type: 'int', min: 1, max: 65536, description: 'lab: Ω tmpfs capacity (default 64)', unit: 'MiB' },
  diskWriteRate: { type: 'number', min: 0, max: 100_000, description: 'lab: guest 4 KiB block writes per second, 0 = none (default 200)', unit: 'blocks/s' },
  memWriteRate: { type: 'number', min: 0, max: 1_000_000, description: 'lab: guest page writes per second, 0 = none (default 2000)', unit: 'pages/s' },
  memMib: { type: 'int', min: 1, max: 1024, description: 'lab: guest memory workload buffer (default 16)', unit: 'MiB' },
  // both
  maxBandwidthMib: { type: 'number', min: 0.001, max: 1_000_000, description: "RAM phase bandwidth cap, migrate-set-parameters max-bandwidth (default: QEMU's, 128 MiB/s)", unit: 'MiB/s' },
  downtimeLimitMs: { type: 'int', min: 1, max: 2_000_000, description: "switchover downtime limit (default: QEMU's, 300 ms)", unit: 'ms' },
  mirrorMibPerSec: { type: 'number', min: 0, max: 1_000_000, default: 0, description: 'mirror rate limit, 0 = unlimited', unit: 'MiB/s' },
  skipZeroes: { type: 'boolean', description: 'send all-zero chunks of the base image as holes' },
  stallTimeoutMs: { type: 'int', min: 100, max: 3_600_000, default: 15_000, description: 'fail (and roll back) when a phase makes no progress this long', unit: 'ms' },
  timeoutS: { type: 'int', min: 0, max: 86_400, default: 0, description: 'fail (and roll back) when the migration is not done by then, 0 = no limit', unit: 's' },
  progressIntervalMs: { type: 'int', min: 20, max: 10_000, default: 250, description: 'period of progress events and QEMU polling', unit: 'ms' },
  ...jsonOption,
} as const;

type Opts = { [K in keyof typeof options]: (typeof options)[K] extends { type: 'boolean' } ? boolean : (typeof options)[K] extends { type: 'string' } ? string : number };

function kebab(name: string): string {
  return '--' + name.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

function fmtMib(bytes: number): string {
  return (bytes / MiB).toFixed(1);
}

function bar(done: number, total: number, width = 24): string {
  const frac = total > 0 ? Math.min(1, Math.max(0, done / total)) : 0;
  const n = Math.round(frac * width);
  return `[${'#'.repeat(n)}${'-'.repeat(width - n)}] ${(frac * 100).toFixed(0).padStart(3)}%`;
}

/** The progress view, one string per line (no trailing newline). */
export function renderProgress(p: MigrationProgress): string[] {
  const lines = [`migration ${p.id}  phase ${p.phase.padEnd(11)} ${(p.tMs / 1000).toFixed(1)} s`];
  const baseRate = p.baseBytesPerSec > 0 ? `  ${((p.baseBytesPerSec * 8) / 1e6).toFixed(0)} Mbit/s` : '';
  lines.push(`  base    ${bar(p.baseBytesCopied, p.baseBytesTotal)}  ${fmtMib(p.baseBytesCopied)}/${fmtMib(p.baseBytesTotal)} MiB${baseRate}`);
  const m = p.mirror;
  lines.push(m ? `  mirror  ${bar(m.offset, m.len)}  ${fmtMib(m.offset)}/${fmtMib(m.len)} MiB${m.ready ? '  ready' : ''}` : '  mirror  -');
  const r = p.ram;
  if (r) {
    const sent = r.total > 0 ? r.total - r.remaining : 0;
    const extra = [
      `${r.mbps.toFixed(0)} Mbit/s`,
      `pass ${r['dirty-sync-count']}`,
      `dirty ${r['dirty-pages-rate']} pages/s`,
      ...(p.migration?.cpuThrottlePercent !== undefined ? [`throttle ${p.migration.cpuThrottlePercent}%`] : []),
      ...(p.migration?.downtimeMs !== undefined ? [`downtime ${p.migration.downtimeMs} ms`] : []),
    ].join(', ');
    lines.push(`  ram     ${bar(sent, r.total)}  ${fmtMib(r.transferred)} MiB sent, ${fmtMib(r.remaining)} MiB left, ${extra}`);
  } else lines.push('  ram     -');
  lines.push(`  overlay ${p.overlayBytes !== undefined ? `${fmtMib(p.overlayBytes)} MiB in Ω` : '-'}`);
  return lines;
}

function summary(r: MigrationResult): string {
  const phases = Object.entries(r.phaseMs)
    .map(([k, v]) => `${k} ${((v ?? 0) / 1000).toFixed(2)} s`)
    .join(', ');
  const lines = [`migration ${r.id}: ${r.phase} in ${(r.totalMs / 1000).toFixed(2)} s (${phases})`];
  lines.push(`  base ${fmtMib(r.baseBytesCopied)}/${fmtMib(r.baseBytesTotal)} MiB, mirror ${fmtMib(r.mirrorBytes)} MiB, overlay peak ${fmtMib(r.overlayPeakBytes)} MiB${r.ram ? `, RAM ${fmtMib(r.ram.transferred)} MiB in ${r.ram['dirty-sync-count']} passes` : ''}${r.downtimeMs !== undefined ? `, downtime ${r.downtimeMs} ms (QEMU)` : ''}${r.blackoutMs !== undefined ? `, guest paused ${r.blackoutMs.toFixed(0)} ms (source STOP to target RESUME)` : ''}`);
  if (r.failure) lines.push(`  failed in ${r.failure.phase}: ${r.failure.message}`);
  if (r.rollback) {
    const rb = r.rollback;
    lines.push(
      `  rollback ${rb.errors.length ? 'INCOMPLETE' : 'done'} in ${rb.durationMs.toFixed(0)} ms: migration ${rb.migrationCancelled ? 'cancelled' : 'not running'}, mirror ${rb.mirrorCancelled ? 'cancelled' : 'not running'}${rb.nbdYanked ? ' (NBD yanked)' : ''}, overlay ${rb.committed ? `committed (${fmtMib(rb.committedBytes)} MiB)` : 'not committed'} and ${rb.overlayRemoved ? 'removed' : 'NOT removed'}, source ${rb.sourceStatus}${rb.resumed ? ' (resumed)' : ''}`,
    );
    for (const e of rb.errors) lines.push(`    error: ${e}`);
  }
  return lines.join('\n');
}

/** Prints progress as the mode asks: JSON lines, terminal redraw, or plain phase lines. */
function progressPrinter(io: CommandIO, json: boolean): { onProgress(p: MigrationProgress): void; onPhase(p: MigrationProgress): void; finish(): void } {
  let drawn = 0;
  let last: MigrationProgress | undefined;
  const live = io.isTTY && !json;
  return {
    onProgress(p) {
      last = p;
      if (json) io.out(JSON.stringify({ type: 'progress', ...p }) + '\n');
      else if (live) {
        const lines = renderProgress(p);
        // Up to the first line of the previous frame, then overwrite every line.
        io.out((drawn ? `\x1b[${drawn}A` : '') + lines.map((l) => `\x1b[2K${l}\n`).join(''));
        drawn = lines.length;
      }
    },
    onPhase(p) {
      if (json) io.out(JSON.stringify({ type: 'phase', ...p }) + '\n');
      else if (!live) io.out(`${(p.tMs / 1000).toFixed(2).padStart(7)} s  ${p.phase}\n`);
    },
    finish() {
      if (live && last) this.onProgress(last);
    },
  };
}

function checkModes(o: Opts, given: (k: keyof Opts) => boolean): void {
  if (o.lab) {
    const wrong = MONITOR_ONLY.filter((k) => given(k));
    if (wrong.length) throw new UsageError(`${wrong.map(kebab).join(', ')}: not valid with --lab (the lab builds its own QEMUs)`);
    return;
  }
  const wrong = LAB_ONLY.filter((k) => given(k));
  if (wrong.length) throw new UsageError(`${wrong.map(kebab).join(', ')}: only valid with --lab`);
  for (const k of ['sourceQmp', 'targetQmp', 'omegaDir', 'targetAddr'] as const) {
    if (!given(k)) throw new UsageError(`${kebab(k)} is required without --lab (or use --lab)`);
  }
  if (!o.skipBaseCopy && !given('targetDisk')) throw new UsageError('--target-disk is required unless --skip-base-copy: the base receiver writes it');
  if (o.skipBaseCopy && (given('targetDisk') || given('targetNetns') || given('receiverPort'))) {
    throw new UsageError('--target-disk, --target-netns, --receiver-port: not valid with --skip-base-copy');
  }
  if (!isAbsolute(o.omegaDir)) throw new UsageError(`--omega-dir: must be an absolute directory path (got '${o.omegaDir}')`);
  let isDir = false;
  try {
    isDir = statSync(o.omegaDir).isDirectory();
  } catch {
    // reported below
  }
  if (!isDir) throw new UsageError(`--omega-dir: ${o.omegaDir} is not an existing directory`);
  if (!/^[A-Za-z0-9.:_-]{1,253}$/.test(o.targetAddr)) throw new UsageError(`--target-addr: must be a host name or IP address (got '${o.targetAddr}')`);
  if (given('targetNetns')) {
    try {
      checkNsName(o.targetNetns);
    } catch (err) {
      throw new UsageError(`--target-netns: ${(err as Error).message}`);
    }
  }
  if (given('nodeName') && !/^[A-Za-z][A-Za-z0-9_.-]{0,30}$/.test(o.nodeName)) throw new UsageError(`--node-name: must be a QEMU node name (got '${o.nodeName}')`);
  const nbd = o.nbdPort ?? DEFAULT_NBD_PORT;
  const mig = o.migrationPort ?? DEFAULT_MIGRATION_PORT;
  if (nbd === mig) throw new UsageError(`--nbd-port and --migration-port: must differ (both ${nbd})`);
}

function knobs(o: Opts): Partial<LiveMigrationOptions> {
  const k: Partial<LiveMigrationOptions> = {
    stallTimeoutMs: o.stallTimeoutMs,
    timeoutMs: o.timeoutS * 1000,
    progressIntervalMs: o.progressIntervalMs,
    mirrorBytesPerSec: Math.round(o.mirrorMibPerSec * MiB),
    skipZeroes: o.skipZeroes,
  };
  if (o.maxBandwidthMib !== undefined) k.maxBandwidthBytesPerSec = Math.max(1, Math.round(o.maxBandwidthMib * MiB));
  if (o.downtimeLimitMs !== undefined) k.downtimeLimitMs = o.downtimeLimitMs;
  return k;
}

async function runMonitors(o: Opts, io: CommandIO): Promise<number> {
  const json = o.json;
  const printer = progressPrinter(io, json);
  const source = await QmpClient.connect(o.sourceQmp, { timeoutMs: 5000 });
  let target: QmpClient | undefined;
  let receiver: BaseReceiver | undefined;
  try {
    target = await QmpClient.connect(o.targetQmp, { timeoutMs: 5000 });
    if (!o.skipBaseCopy) {
      const spawn: SpawnFn = o.targetNetns ? (cmd, args, opts) => spawnInNs(o.targetNetns, cmd, args, opts) : (cmd, args, opts) => nodeSpawn(cmd, [...args], opts);
      receiver = await spawnBaseReceiver({ host: o.targetAddr, port: o.receiverPort ?? 0, imagePath: o.targetDisk, spawn, idleTimeoutMs: Math.max(30_000, o.stallTimeoutMs) });
    }
    const m = new LiveMigration({
      source,
      target,
      omegaDir: o.omegaDir,
      targetHost: o.targetAddr,
      baseCopy: receiver ? { host: receiver.host, port: receiver.port } : 'skip',
      ...(o.nbdPort !== undefined ? { nbdPort: o.nbdPort } : {}),
      ...(o.migrationPort !== undefined ? { migrationPort: o.migrationPort } : {}),
      ...(o.nodeName !== undefined ? { nodeName: o.nodeName } : {}),
      quitSource: !o.keepSource,
      ...knobs(o),
    });
    m.on('progress', (p) => printer.onProgress(p));
    m.on('phase', (p) => printer.onPhase(p));
    const onAbort = (): void => void m.abort('interrupted');
    io.signal.addEventListener('abort', onAbort, { once: true });
    const result = await m.run().finally(() => io.signal.removeEventListener('abort', onAbort));
    printer.finish();
    io.out(json ? JSON.stringify({ type: 'result', ...result }) + '\n' : summary(result) + '\n');
    return result.phase === 'completed' ? 0 : 1;
  } finally {
    await receiver?.kill();
    await target?.close();
    await source.close();
  }
}

async function runLab(o: Opts, io: CommandIO): Promise<number> {
  const printer = progressPrinter(io, o.json);
  if (!o.json && !io.isTTY) io.out('building the lab (namespace, link, Ω, source VM boot)...\n');
  const report: LabRunReport = await runLabMigration({
    guestMib: o.guestMib ?? 128,
    diskMib: o.diskMib ?? 64,
    linkMbit: o.linkMbit ?? 200,
    omegaMib: o.omegaMib ?? 64,
    memMib: o.memMib ?? 16,
    memWritePagesPerSec: o.memWriteRate ?? 2000,
    diskWriteBlocksPerSec: o.diskWriteRate ?? 200,
    migration: knobs(o),
    onProgress: (p) => printer.onProgress(p),
    onMigration: (m) => {
      m.on('phase', (p) => printer.onPhase(p));
      io.signal.addEventListener('abort', () => void m.abort('interrupted'), { once: true });
    },
  });
  printer.finish();
  const ok = report.result.phase === 'completed' ? report.verified && report.omegaLeftovers.length === 0 : false;
  if (o.json) {
    io.out(JSON.stringify({ type: 'result', ...report.result, lab: { verifiedOn: report.verifiedOn, verified: report.verified, verification: report.verification, omegaLeftovers: report.omegaLeftovers, workload: report.workload, timings: report.timings } }) + '\n');
  } else {
    const v = report.verification;
    io.out(
      [
        summary(report.result),
        `  guest verification on the ${report.verifiedOn}: ${report.verified ? 'passed' : 'FAILED'} (memory ${v.mem ? `${v.mem.pages - v.mem.badPages}/${v.mem.pages} pages good, ${v.mem.totalWrites} writes` : '-'}; disk ${v.disk ? `${v.disk.checkedBlocks - v.disk.badBlocks}/${v.disk.checkedBlocks} blocks good, ${v.disk.totalWrites} writes` : '-'})`,
        `  Ω after the run: ${report.omegaLeftovers.length ? report.omegaLeftovers.join(', ') : 'empty'}`,
        `  lab build ${(report.timings.labMs / 1000).toFixed(1)} s, migration ${(report.timings.migrationMs / 1000).toFixed(1)} s, verification ${(report.timings.verifyMs / 1000).toFixed(1)} s`,
      ].join('\n') + '\n',
    );
  }
  return ok ? 0 : 1;
}

export const command = defineCommand({
  words: ['migrate'],
  summary: 'live-migrate a QEMU VM with non-shared storage the way LXD does (overlay in Ω, base copy, NBD mirror, RAM); roll back on failure',
  usage: '(--lab [--guest-mib N --disk-mib D --link-mbit L --omega-mib M --disk-write-rate B ...] | --source-qmp SOCK --target-qmp SOCK --omega-dir DIR --target-addr HOST --target-disk PATH [--target-netns NS]) [--max-bandwidth-mib X] [--json]',
  options,
  async run(parsed, _positionals, io) {
    const o = parsed as unknown as Opts;
    if (_positionals.length) throw new UsageError(`unexpected argument '${_positionals[0]}'`);
    const given = (k: keyof Opts): boolean => (parsed as Record<string, unknown>)[k] !== undefined && (parsed as Record<string, unknown>)[k] !== false;
    checkModes(o, given);
    return o.lab ? runLab(o, io) : runMonitors(o, io);
  },
});
