/**
 * The migration lab: everything one LXD-shaped migration needs on one machine, built for real.
 *
 * ```
 *  host netns                                   lab netns (tbf-shaped veth, linkMbit both ways)
 *  source LabVm (TCG, memfd RAM, raw root)  ──►  target IncomingVm (-incoming defer, raw root)
 *  Ω tmpfs (overlay qcow2)                      base receiver (node) → target's raw image
 * ```
 * MigrationLab.create() builds topology, Ω and a booted source; prepareTarget() starts a fresh
 * target QEMU and base receiver in the namespace (one per attempt: a failed attempt quits its
 * target); migration() returns a LiveMigration wired to both. runLabMigration() is the whole
 * `dpa migrate --lab` run: workloads, one migration, verification by the guest itself, teardown.
 */
import { readdir } from 'node:fs/promises';
import type { GuestChannel } from '../lab/guest-channel';
import { buildGuestImage, type GuestImage } from '../lab/guest-image';
import type { DiskSummary, MemSummary, VerifyResult } from '../lab/guest-protocol';
import { createTopology, spawnInNs, type Topology } from '../lab/netns';
import { createOmega, type Omega } from '../lab/omega';
import { IncomingVm } from '../lab/target';
import { RAM_PAD_KIB_FOR_TCG_MIGRATION } from '../lab/qemu-args';
import { LabVm } from '../lab/vm';
import { spawnBaseReceiver, type BaseReceiver } from './base-copy';
import { LiveMigration, type LiveMigrationOptions } from './migration';
import type { MigrationProgress, MigrationResult } from './types';

export interface MigrationLabOptions {
  /** Guest RAM, MiB (96..4096; default 128). */
  guestMib?: number;
  /** Root disk, MiB (1..65536; default 64). */
  diskMib?: number;
  /** Link rate of both directions, Mbit/s (1..10000; default 200). */
  linkMbit?: number;
  /** Ω capacity, MiB (1..65536; default 64). */
  omegaMib?: number;
  /** Guest image (default: buildGuestImage(), cached). */
  guest?: GuestImage;
  /** Boot limit, ms (default 60000). */
  bootTimeoutMs?: number;
}

export const LAB_LIMITS = {
  guestMib: [96, 4096],
  diskMib: [1, 65536],
  linkMbit: [1, 10_000],
  omegaMib: [1, 65536],
} as const;

function checkNum(name: string, v: unknown, min: number, max: number, integer = true): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min || v > max) {
    throw new RangeError(`${name}: must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max} (got ${String(v)})`);
  }
}

export function checkLabOptions(o: MigrationLabOptions): void {
  checkNum('guestMib', o.guestMib, ...LAB_LIMITS.guestMib);
  checkNum('diskMib', o.diskMib, ...LAB_LIMITS.diskMib);
  checkNum('linkMbit', o.linkMbit, LAB_LIMITS.linkMbit[0], LAB_LIMITS.linkMbit[1], false);
  checkNum('omegaMib', o.omegaMib, ...LAB_LIMITS.omegaMib);
  checkNum('bootTimeoutMs', o.bootTimeoutMs, 1, 600_000);
}

/** A target QEMU and its base receiver, ready for one migration attempt. */
export interface LabTarget {
  vm: IncomingVm;
  receiver: BaseReceiver;
  /** Stops both (idempotent). */
  stop(): Promise<void>;
}

export class MigrationLab {
  private readonly targets = new Set<LabTarget>();

  private constructor(
    readonly guest: GuestImage,
    readonly topology: Topology,
    readonly omega: Omega,
    readonly source: LabVm,
    readonly guestMib: number,
    readonly diskMib: number,
  ) {}

  /** Builds topology and Ω, boots the source to its workload's ready line. Needs root and QEMU. */
  static async create(o: MigrationLabOptions = {}): Promise<MigrationLab> {
    checkLabOptions(o);
    const guestMib = o.guestMib ?? 128;
    const diskMib = o.diskMib ?? 64;
    const guest = o.guest ?? (await buildGuestImage());
    const topology = await createTopology({ linkMbit: o.linkMbit ?? 200 });
    let omega: Omega | undefined;
    let source: LabVm | undefined;
    try {
      omega = await createOmega({ sizeBytes: (o.omegaMib ?? 64) * 1024 * 1024 });
      // Both QEMUs get RAM that is not a multiple of 256 KiB: QEMU 7.2 under TCG otherwise loses
      // guest writes during migration (qemu-args.ts, RAM_PAD_KIB_FOR_TCG_MIGRATION).
      source = await LabVm.start({ guest, guestMib, ramPadKib: RAM_PAD_KIB_FOR_TCG_MIGRATION, disk: { sizeMib: diskMib, format: 'raw' } });
      await source.ready(o.bootTimeoutMs ?? 60_000);
      return new MigrationLab(guest, topology, omega, source, guestMib, diskMib);
    } catch (err) {
      await source?.stop().catch(() => undefined);
      await omega?.destroy().catch(() => undefined);
      await topology.destroy().catch(() => undefined);
      throw err;
    }
  }

  /** Starts a target QEMU (-incoming defer) and a base receiver for its disk, both in the namespace. */
  async prepareTarget(): Promise<LabTarget> {
    const vm = await IncomingVm.start({
      guest: this.guest,
      guestMib: this.guestMib,
      ramPadKib: this.source.ramPadKib,
      disk: { sizeMib: this.diskMib },
      topology: this.topology,
    });
    let receiver: BaseReceiver;
    try {
      receiver = await spawnBaseReceiver({
        host: this.topology.nsAddr,
        imagePath: vm.diskPath!,
        spawn: (cmd, args, opts) => spawnInNs(this.topology, cmd, args, opts),
      });
    } catch (err) {
      await vm.stop().catch(() => undefined);
      throw err;
    }
    let stopping: Promise<void> | undefined;
    const t: LabTarget = {
      vm,
      receiver,
      stop: () =>
        (stopping ??= (async () => {
          await receiver.kill();
          await vm.stop();
          this.targets.delete(t);
        })()),
    };
    this.targets.add(t);
    return t;
  }

  /** A LiveMigration from the source to `t`, across the lab link, with its overlay in Ω. */
  migration(t: LabTarget, extra: Partial<Omit<LiveMigrationOptions, 'source' | 'target'>> = {}): LiveMigration {
    return new LiveMigration({
      source: this.source.qmp,
      target: t.vm.qmp,
      omegaDir: this.omega.path,
      targetHost: this.topology.nsAddr,
      baseCopy: { host: t.receiver.host, port: t.receiver.port },
      ...extra,
    });
  }

  /** Stops every target, the source, Ω and the topology (idempotent, best effort, all of them). */
  async destroy(): Promise<void> {
    const errors: string[] = [];
    const attempt = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        errors.push(`${what}: ${(err as Error).message}`);
      }
    };
    for (const t of [...this.targets]) await attempt('target', () => t.stop());
    await attempt('source', () => this.source.stop());
    await attempt('omega', () => this.omega.destroy());
    await attempt('topology', () => this.topology.destroy());
    if (errors.length) throw new Error(`tearing down the migration lab: ${errors.join('; ')}`);
  }
}

/** Asks a guest (through its channel) to verify its memory buffer and disk region. */
export function verifyGuest(channel: GuestChannel, target: 'mem' | 'disk' | 'all' = 'all', timeoutMs = 120_000): Promise<VerifyResult> {
  return channel.request<VerifyResult>('verify', { target }, { timeoutMs });
}

/** True when a guest verification found nothing wrong (and checked something). */
export function verificationPassed(v: VerifyResult): boolean {
  const memOk = !v.mem || (v.mem.badPages === 0 && v.mem.digest === v.mem.contentDigest);
  const diskOk = !v.disk || (v.disk.badBlocks === 0 && v.disk.error === null);
  return memOk && diskOk && (v.mem !== undefined || v.disk !== undefined);
}

export interface LabRunOptions extends MigrationLabOptions {
  /** Guest memory workload buffer, MiB (1..1024; default 16). */
  memMib?: number;
  /** Guest page writes per second (0..1e6; default 2000; 0 = no memory workload). */
  memWritePagesPerSec?: number;
  /** Guest disk block (4 KiB) writes per second (0..100000; default 200; 0 = no disk workload). */
  diskWriteBlocksPerSec?: number;
  /** Disk region the workload writes, MiB from offset 0 (1..diskMib; default min(16, diskMib)). */
  diskRegionMib?: number;
  /** LiveMigration knobs. */
  migration?: Partial<Omit<LiveMigrationOptions, 'source' | 'target' | 'omegaDir' | 'targetHost' | 'baseCopy'>>;
  onProgress?(p: MigrationProgress): void;
  /** Called once the migration exists (e.g. to wire abort() to a signal). */
  onMigration?(m: LiveMigration): void;
}

export interface LabRunReport {
  result: MigrationResult;
  /** Where the guest ran when verified. */
  verifiedOn: 'target' | 'source';
  verification: VerifyResult;
  verified: boolean;
  /** Files left in Ω after the run (should be none). */
  omegaLeftovers: string[];
  workload: { mem?: MemSummary; disk?: DiskSummary };
  /** ms: building the lab (boot included), the migration, the verification. */
  timings: { labMs: number; migrationMs: number; verifyMs: number };
}

/** `dpa migrate --lab`: build, run one migration under a write workload, verify, tear down. */
export async function runLabMigration(o: LabRunOptions = {}): Promise<LabRunReport> {
  checkLabOptions(o);
  checkNum('memMib', o.memMib, 1, 1024);
  checkNum('memWritePagesPerSec', o.memWritePagesPerSec, 0, 1e6, false);
  checkNum('diskWriteBlocksPerSec', o.diskWriteBlocksPerSec, 0, 100_000, false);
  checkNum('diskRegionMib', o.diskRegionMib, 1, o.diskMib ?? 64);
  const t0 = performance.now();
  const lab = await MigrationLab.create(o);
  try {
    const target = await lab.prepareTarget();
    const workload: LabRunReport['workload'] = {};
    const memRate = o.memWritePagesPerSec ?? 2000;
    const diskRate = o.diskWriteBlocksPerSec ?? 200;
    if (memRate > 0) workload.mem = await lab.source.memStart({ mib: o.memMib ?? 16, pattern: 'uniform', ratePagesPerSec: memRate, seed: 1 });
    if (diskRate > 0) {
      const regionMib = o.diskRegionMib ?? Math.min(16, lab.diskMib);
      workload.disk = await lab.source.diskStart({ regionBlocks: (regionMib * 1024 * 1024) / 4096, blocksPerSec: diskRate, pattern: 'uniform', seed: 1 });
    }
    const labMs = performance.now() - t0;
    const m = lab.migration(target, o.migration ?? {});
    if (o.onProgress) m.on('progress', o.onProgress);
    o.onMigration?.(m);
    const result = await m.run();
    const migrationMs = performance.now() - t0 - labMs;
    const onTarget = result.phase === 'completed';
    const channel = onTarget ? target.vm.channel : lab.source.channel;
    // Stop writing, then let the guest check every page and block it ever wrote.
    const quiesced = await channel.request<{ mem: MemSummary; disk: DiskSummary }>('quiesce', {}, { timeoutMs: 60_000 });
    workload.mem = quiesced.mem;
    workload.disk = quiesced.disk;
    const v0 = performance.now();
    const verification = await verifyGuest(channel, 'all');
    const verifyMs = performance.now() - v0;
    const omegaLeftovers = await readdir(lab.omega.path);
    return {
      result,
      verifiedOn: onTarget ? 'target' : 'source',
      verification,
      verified: verificationPassed(verification),
      omegaLeftovers,
      workload,
      timings: { labMs, migrationMs, verifyMs },
    };
  } finally {
    await lab.destroy();
  }
}
