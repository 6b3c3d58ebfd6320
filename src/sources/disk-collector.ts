/**
 * The disk source of one VM: how big the migration overlay is and how fast the guest writes.
 *
 * During an LXD-style migration with non-shared storage, guest writes land in a qcow2 overlay
 * (node `lxd_root_snapshot`, Incus `<node>_snap`) that grows for the whole migration; the overlay's
 * host footprint is `image.actual-size` of that node (query-named-block-nodes, flat) and the
 * guest's write volume is `wr_bytes` of the disk device (query-blockstats). This collector polls
 * just those two queries through a QmpCollector and reduces them to one DiskSample per poll.
 */
import type { QmpClient } from '../qmp/client';
import type { QmpSample } from '../qmp/telemetry';
import { QmpCollector } from './qmp-collector';

export interface DiskCollectorOptions {
  client: QmpClient;
  /** A label for the VM in samples (default: the socket path). */
  vm?: string;
  /** Poll period, ms (50..60000; default 1000). */
  intervalMs?: number;
  /**
   * Node whose image.actual-size is the overlay size, e.g. 'lxd_root_snapshot'. It may appear
   * later (the overlay is created when a migration starts): until then `overlay` is null.
   */
  overlayNodeName?: string;
  /**
   * Devices whose writes count as guest writes: matched against blockstats `qdev`, `device` or
   * `node-name`. Default: every device that has a `qdev` (i.e. is attached to the guest).
   */
  devices?: string[];
  ownsClient?: boolean;
}

export interface DiskSample {
  vm: string;
  seq: number;
  /** Monotonic time, ms. */
  tMs: number;
  dtMs: number | null;
  overlay: {
    nodeName: string;
    /** Host bytes allocated by the overlay image. */
    actualSizeBytes: number | null;
    /** Growth of actualSizeBytes, bytes/s (null on the first sample or when unknown). */
    growthBytesPerSec: number | null;
  } | null;
  /** Sum of wr_bytes over the selected devices, bytes. */
  guestWrittenBytes: number;
  /** Guest write rate over the selected devices, bytes/s (null when any device has no rate yet). */
  guestWriteBytesPerSec: number | null;
  /** Per device: id (qdev/device/node-name), bytes written, rate. */
  devices: { id: string; wrBytes: number; wrBytesPerSec: number | null }[];
}

/** Reduces one QMP sample to the disk view (pure; exported for tests). */
export function toDiskSample(s: QmpSample, vm: string, overlayNodeName: string | undefined, deviceIds: readonly string[] | undefined): DiskSample {
  const selected = (s.devices ?? []).filter((d) =>
    deviceIds ? deviceIds.some((id) => id === d.qdev || id === d.device || id === d.nodeName) : d.qdev !== null,
  );
  const node = overlayNodeName ? s.nodes?.find((n) => n.nodeName === overlayNodeName) : undefined;
  const rates = selected.map((d) => d.wrBytesPerSec);
  return {
    vm,
    seq: s.seq,
    tMs: s.tMs,
    dtMs: s.dtMs,
    overlay: node ? { nodeName: node.nodeName, actualSizeBytes: node.actualSizeBytes, growthBytesPerSec: node.actualSizeGrowthBytesPerSec } : null,
    guestWrittenBytes: selected.reduce((a, d) => a + d.wrBytes, 0),
    guestWriteBytesPerSec: rates.length && rates.every((r) => r !== null) ? rates.reduce<number>((a, r) => a + r!, 0) : null,
    devices: selected.map((d) => ({ id: d.id, wrBytes: d.wrBytes, wrBytesPerSec: d.wrBytesPerSec })),
  };
}

export class DiskCollector {
  readonly vm: string;
  private readonly collector: QmpCollector;

  constructor(private readonly opts: DiskCollectorOptions) {
    if (opts.overlayNodeName !== undefined && (typeof opts.overlayNodeName !== 'string' || opts.overlayNodeName === '')) {
      throw new TypeError('overlayNodeName: must be a non-empty string');
    }
    if (opts.devices !== undefined && (!Array.isArray(opts.devices) || opts.devices.some((d) => typeof d !== 'string' || d === ''))) {
      throw new TypeError('devices: must be an array of non-empty strings');
    }
    this.vm = opts.vm ?? opts.client.socketPath;
    this.collector = new QmpCollector({
      client: opts.client,
      intervalMs: opts.intervalMs ?? 1000,
      queries: { migrate: false, jobs: false, blockstats: true, nodes: opts.overlayNodeName !== undefined },
      ownsClient: opts.ownsClient,
    });
  }

  start(): this {
    this.collector.start();
    return this;
  }

  onSample(listener: (sample: DiskSample) => void): void {
    this.collector.onSample((s) => listener(toDiskSample(s, this.vm, this.opts.overlayNodeName, this.opts.devices)));
  }

  /** Called once when the monitor connection is lost. */
  onEnd(listener: (reason: { code: string; message: string }) => void): void {
    this.collector.onEnd(listener);
  }

  close(): Promise<void> {
    return this.collector.close();
  }
}
