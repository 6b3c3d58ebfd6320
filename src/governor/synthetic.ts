/**
 * A synthetic fleet of migrations for `dpa bench governor`: the simulator's migration model
 * (src/sim/migration.ts: base copy, write-blocking mirror, QEMU 7.2 pre-copy with auto-converge)
 * stepped in the governor's interval, turned into the telemetry the governor reads from QEMU —
 * cumulative wr_bytes with per-tick noise, the overlay's size, base/mirror/RAM byte counters —
 * and reacting to the throttles the governor's core puts in force. Finished migrations are
 * replaced by new ones, so the fleet size stays constant and the policy sees arrivals and
 * departures. Deterministic for a seed.
 */
import { PAGE_BYTES } from '../policy/types';
import { SimMigration } from '../sim/migration';
import type { ScenarioVm } from '../sim/scenario';
import type { GovernorCore, VmSetup, VmTelemetry } from './core';
import { effectiveWriteLimit, UNLIMITED } from './throttle';
import type { GovernedPhase, GovernedProgress } from './types';
import { mulberry32 as prng } from '../util/random';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** Mean guest write request, bytes (64 KiB: a typical filesystem writeback chunk). */
const REQUEST_BYTES = 64 * 1024;

interface Slot {
  sim: SimMigration;
  gen: number;
  wrBytes: number;
  wrOps: number;
  baseCopied: number;
  mirrorOffset: number;
  ramTransferred: number;
}

export interface FleetOptions {
  /** Migrations in flight (1..4096). */
  vms: number;
  /** The link, bytes/s (default 1.25e9 = 10 Gbit/s). */
  linkBytesPerSec?: number;
  intervalMs: number;
  seed?: number;
}

export class SyntheticFleet {
  private readonly rand: () => number;
  private readonly slots: Slot[] = [];
  private readonly link: number;
  private readonly dtSec: number;
  private tSec = 0;
  /** Migrations that completed (and were replaced). */
  completed = 0;

  constructor(o: FleetOptions) {
    if (!Number.isInteger(o.vms) || o.vms < 1 || o.vms > 4096) throw new RangeError(`vms: must be an integer from 1 to 4096 (got ${String(o.vms)})`);
    this.rand = prng(o.seed ?? 1);
    this.link = o.linkBytesPerSec ?? 1.25e9;
    this.dtSec = o.intervalMs / 1000;
    for (let i = 0; i < o.vms; i++) this.slots.push(this.newSlot(i, 0, true));
  }

  /** Monotonic time of the last step, ms. */
  get nowMs(): number {
    return this.tSec * 1000;
  }

  private newSlot(i: number, gen: number, staggered: boolean): Slot {
    const r = this.rand;
    const diskBytes = Math.round((2 + 14 * r()) * GiB);
    const base = (2 + 28 * r()) * MiB;
    const points: Array<[number, number]> = [];
    for (let k = 0; k < 24; k++) points.push([k * 20, base * (0.4 + 1.2 * r())]);
    const vm: ScenarioVm = {
      id: `vm${i}.${gen}`,
      startSec: this.tSec,
      diskBytes,
      ramBytes: Math.round((1 + 3 * r()) * GiB),
      diskWrites: { points },
      ramDirty: { pagesPerSec: Math.round(2000 + 30000 * r()), hotPages: Math.round(20000 + 200000 * r()) },
    };
    const sim = new SimMigration(vm, false);
    sim.start(this.tSec);
    const slot: Slot = { sim, gen, wrBytes: Math.round(r() * GiB), wrOps: 0, baseCopied: 0, mirrorOffset: 0, ramTransferred: 0 };
    if (staggered) {
      // The fleet starts mid-flight: each one somewhere in its base copy, with an overlay already.
      const done = r() * 0.9;
      sim.baseBytesLeft = diskBytes * (1 - done);
      slot.baseCopied = diskBytes * done;
      sim.overlayBytes = Math.round(r() * 256 * MiB);
    }
    return slot;
  }

  /** What the core needs to attach every migration now in flight. */
  setups(): VmSetup[] {
    return this.slots.map((s) => this.setupOf(s));
  }

  private setupOf(s: Slot): VmSetup {
    return { id: s.sim.id, ramBytes: s.sim.vm.ramBytes, originalLimits: UNLIMITED, originalMaxBandwidthBytesPerSec: 128 * MiB, downtimeLimitMs: 300 };
  }

  /**
   * Advances one interval under the limits `core` has in force and returns the readings. A
   * migration that finished reports 'completed' once; `replace()` then starts its successor.
   */
  step(core: GovernorCore): Map<string, VmTelemetry> {
    const dt = this.dtSec;
    const now = this.tSec;
    const active = this.slots.filter((s) => s.sim.inFlight).length || 1;
    const share = this.link / active;
    const out = new Map<string, VmTelemetry>();
    for (const s of this.slots) {
      const m = s.sim;
      if (m.inFlight) {
        m.demandAt(now);
        const limit = effectiveWriteLimit(core.inForce(m.id)?.limits ?? UNLIMITED);
        const phase = m.phase;
        const baseLeft = m.baseBytesLeft;
        const w = m.transfer(now, dt, share, Number.isFinite(limit) ? limit : null);
        m.overlayBytes += w * dt;
        // Per-tick counter noise: block-layer accounting lands in bursts.
        const written = Math.max(0, w * dt * (0.6 + 0.8 * this.rand()));
        s.wrBytes += written;
        s.wrOps += written / REQUEST_BYTES;
        if (phase === 'base') s.baseCopied += baseLeft - m.baseBytesLeft;
        else if (phase === 'mirror') s.mirrorOffset += share * dt;
        else if (phase === 'ram') s.ramTransferred += Math.max(0, share - w) * dt;
      }
      out.set(m.id, { tMs: (now + dt) * 1000, wrBytes: Math.round(s.wrBytes), wrOps: Math.round(s.wrOps), overlayBytes: Math.round(m.overlayBytes), progress: this.progressOf(s) });
    }
    this.tSec = now + dt;
    return out;
  }

  private progressOf(s: Slot): GovernedProgress {
    const m = s.sim;
    const phase: GovernedPhase = m.phase === 'done' ? 'completed' : m.phase === 'waiting' ? 'setup' : m.phase;
    const p: GovernedProgress = { phase, baseBytesTotal: m.vm.diskBytes, baseBytesCopied: Math.round(s.baseCopied) };
    if (phase !== 'base') p.mirror = { offset: Math.round(s.mirrorOffset), len: Math.round(s.mirrorOffset + m.mirrorBytesLeft) };
    if (phase === 'ram' || phase === 'switchover') {
      p.ram = { transferred: Math.round(s.ramTransferred), remaining: m.ramPendingPages * PAGE_BYTES, total: m.vm.ramBytes, 'dirty-pages-rate': m.vm.ramDirty.pagesPerSec, 'page-size': PAGE_BYTES };
      p.migration = { cpuThrottlePercent: m.cpuThrottlePct };
    }
    return p;
  }

  /** Replaces the finished migration `id` with a new one; returns its setup. */
  replace(id: string): VmSetup {
    const i = this.slots.findIndex((s) => s.sim.id === id);
    if (i < 0) throw new RangeError(`id: no migration '${id}' in the fleet`);
    const slot = this.newSlot(i, this.slots[i]!.gen + 1, false);
    this.slots[i] = slot;
    this.completed++;
    return this.setupOf(slot);
  }
}
