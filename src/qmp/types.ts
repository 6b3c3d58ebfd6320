/**
 * Types of the QMP commands dpa uses, transcribed from QEMU 7.2's QAPI schema (qapi/*.json) and
 * checked against the schema a running 7.2 reports (`query-qmp-schema`, see
 * test/lab/qmp-commands.test.ts). Field names are QEMU's own (kebab- or snake_case as QEMU spells
 * them); units are given in the doc comments. Integers above 2^53 lose precision in JSON.parse;
 * none of the counters used here get near that.
 */

// ---------------------------------------------------------------------------------------------
// run state
// ---------------------------------------------------------------------------------------------

export type RunState =
  | 'debug' | 'inmigrate' | 'internal-error' | 'io-error' | 'paused' | 'postmigrate' | 'prelaunch'
  | 'finish-migrate' | 'restore-vm' | 'running' | 'save-vm' | 'shutdown' | 'suspended' | 'watchdog'
  | 'guest-panicked' | 'colo';

/** query-status */
export interface StatusInfo {
  running: boolean;
  singlestep: boolean;
  status: RunState;
}

/** query-kvm */
export interface KvmInfo {
  /** KVM acceleration is in use by this VM. */
  enabled: boolean;
  /** KVM support is compiled in. */
  present: boolean;
}

// ---------------------------------------------------------------------------------------------
// migration
// ---------------------------------------------------------------------------------------------

export type MigrationStatus =
  | 'none' | 'setup' | 'cancelling' | 'cancelled' | 'active' | 'postcopy-active' | 'postcopy-paused'
  | 'postcopy-recover' | 'completed' | 'failed' | 'colo' | 'pre-switchover' | 'device' | 'wait-unplug';

/** `ram` / `disk` of query-migrate. All byte counts are cumulative since the migration started. */
export interface MigrationStats {
  /** Bytes sent so far (all kinds). */
  transferred: number;
  /** Bytes still to send (dirty pages × page size), as of the last bitmap sync. */
  remaining: number;
  /** Guest RAM size, bytes. */
  total: number;
  /** Zero pages sent as a marker only (pages). */
  duplicate: number;
  /** Pages skipped (always 0 on 7.2). */
  skipped: number;
  /** Pages sent in full. */
  normal: number;
  /** Bytes of fully sent pages. */
  'normal-bytes': number;
  /**
   * Pages dirtied per second, recomputed at most once a second from the dirty bitmap sync; 0 during
   * the first pass; counts only newly set bits.
   */
  'dirty-pages-rate': number;
  /** Throughput of the last period, megabits per second. */
  mbps: number;
  /** Dirty bitmap syncs so far (= pre-copy iterations). */
  'dirty-sync-count': number;
  'postcopy-requests': number;
  /** Target page size, bytes. */
  'page-size': number;
  'multifd-bytes': number;
  /** Pages sent per second in the last period. */
  'pages-per-second': number;
  /** Bytes sent during pre-copy. */
  'precopy-bytes': number;
  /** Bytes sent while the VM was stopped for switchover. */
  'downtime-bytes': number;
  'postcopy-bytes': number;
  'dirty-sync-missed-zero-copy': number;
}

/** query-migrate. Every field is optional: a VM that never migrated answers `{}`. */
export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationStats;
  disk?: MigrationStats;
  'xbzrle-cache'?: Record<string, number>;
  /** ms since the migration started (while active) or total duration (when completed). */
  'total-time'?: number;
  /** Expected downtime of the switchover, ms (while active). */
  'expected-downtime'?: number;
  /** Actual downtime, ms (when completed). */
  downtime?: number;
  /** ms spent in the setup phase. */
  'setup-time'?: number;
  /** Current auto-converge vCPU throttle, percent (only while throttling). */
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  'blocked-reasons'?: string[];
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
  compression?: Record<string, number>;
  'socket-address'?: SocketAddress[];
}

export type MigrationCapability =
  | 'xbzrle' | 'rdma-pin-all' | 'auto-converge' | 'zero-blocks' | 'compress' | 'events' | 'postcopy-ram'
  | 'x-colo' | 'release-ram' | 'block' | 'return-path' | 'pause-before-switchover' | 'multifd'
  | 'dirty-bitmaps' | 'postcopy-blocktime' | 'late-block-activate' | 'x-ignore-shared' | 'validate-uuid'
  | 'background-snapshot' | 'zero-copy-send' | 'postcopy-preempt';

/**
 * migrate-set-parameters (QEMU's MigrateSetParameters; the fields dpa uses, plus a catch-all).
 * Ranges are QEMU 7.2's, checked by migrateSetParameters() before sending.
 */
export interface MigrateSetParameters {
  /** Bandwidth cap for pre-copy, bytes per second (0..2^53; QEMU default 128 MiB/s). */
  'max-bandwidth'?: number;
  /** Maximum tolerated switchover downtime, ms (0..2000000; QEMU default 300). */
  'downtime-limit'?: number;
  /** Auto-converge first throttle step, percent (1..99; default 20). */
  'cpu-throttle-initial'?: number;
  /** Auto-converge later throttle steps, percent (1..99; default 10). */
  'cpu-throttle-increment'?: number;
  /** Throttle when dirtied bytes exceed this percentage of transferred bytes in a period (1..100; default 50). */
  'throttle-trigger-threshold'?: number;
  /** Maximum auto-converge throttle, percent (1..99; default 99). */
  'max-cpu-throttle'?: number;
  'cpu-throttle-tailslow'?: boolean;
  /** Parallel migration streams (1..255). */
  'multifd-channels'?: number;
  /** XBZRLE cache, bytes. */
  'xbzrle-cache-size'?: number;
  /** Bandwidth cap for post-copy, bytes per second. */
  'max-postcopy-bandwidth'?: number;
  [other: string]: unknown;
}

/** query-migrate-parameters: the same parameters, as currently set. */
export type MigrationParameters = MigrateSetParameters;

/** calc-dirty-rate modes. dirty-bitmap crashes QEMU 7.2 under TCG (see calcDirtyRate()). */
export type DirtyRateMeasureMode = 'page-sampling' | 'dirty-ring' | 'dirty-bitmap';

/** query-dirty-rate */
export interface DirtyRateInfo {
  /** Dirty rate, MiB per second (present once status is 'measured'). */
  'dirty-rate'?: number;
  status: 'unstarted' | 'measuring' | 'measured';
  /** Start of the measurement, seconds on QEMU's monotonic clock. */
  'start-time': number;
  /** Measurement window, seconds. */
  'calc-time': number;
  /** Pages sampled per GiB (page-sampling mode). */
  'sample-pages': number;
  mode: DirtyRateMeasureMode;
  /** Per-vCPU rates, MiB/s (dirty-ring mode). */
  'vcpu-dirty-rate'?: { id: number; 'dirty-rate': number }[];
}

// ---------------------------------------------------------------------------------------------
// block
// ---------------------------------------------------------------------------------------------

/** Cumulative I/O counters of one BlockBackend (device) or node, since it was created. */
export interface BlockDeviceStats {
  /** Bytes read. */
  rd_bytes: number;
  /** Bytes written. */
  wr_bytes: number;
  /** Bytes discarded. */
  unmap_bytes: number;
  rd_operations: number;
  wr_operations: number;
  flush_operations: number;
  unmap_operations: number;
  /** Cumulative time, ns. */
  rd_total_time_ns: number;
  wr_total_time_ns: number;
  flush_total_time_ns: number;
  unmap_total_time_ns: number;
  /** Highest offset written, bytes. */
  wr_highest_offset: number;
  rd_merged: number;
  wr_merged: number;
  unmap_merged: number;
  /** ns since the last I/O (absent when there was none). */
  idle_time_ns?: number;
  failed_rd_operations: number;
  failed_wr_operations: number;
  failed_flush_operations: number;
  failed_unmap_operations: number;
  invalid_rd_operations: number;
  invalid_wr_operations: number;
  invalid_flush_operations: number;
  invalid_unmap_operations: number;
  account_invalid: boolean;
  account_failed: boolean;
  timed_stats: unknown[];
}

/** One entry of query-blockstats. Devices have `device` (may be '') and `qdev`; nodes have `node-name`. */
export interface BlockStats {
  device?: string;
  /** QOM path of the device, e.g. '/machine/peripheral/root/virtio-backend'. */
  qdev?: string;
  'node-name'?: string;
  stats: BlockDeviceStats;
  'driver-specific'?: Record<string, unknown>;
  parent?: BlockStats;
  backing?: BlockStats;
}

/** ImageInfo (part of query-named-block-nodes / query-block). */
export interface ImageInfo {
  filename: string;
  format: string;
  'dirty-flag'?: boolean;
  /** Bytes the image occupies on the host filesystem (allocated blocks). */
  'actual-size'?: number;
  /** Size the guest sees, bytes. */
  'virtual-size': number;
  'cluster-size'?: number;
  encrypted?: boolean;
  compressed?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  'backing-image'?: ImageInfo;
  'format-specific'?: Record<string, unknown>;
}

/** BlockDeviceInfo: one entry of query-named-block-nodes, or `inserted` of query-block. */
export interface BlockDeviceInfo {
  file: string;
  'node-name'?: string;
  ro: boolean;
  drv: string;
  backing_file?: string;
  backing_file_depth: number;
  encrypted: boolean;
  detect_zeroes: 'off' | 'on' | 'unmap';
  /** I/O limits: bytes per second / operations per second (0 = unlimited). */
  bps: number;
  bps_rd: number;
  bps_wr: number;
  iops: number;
  iops_rd: number;
  iops_wr: number;
  image: ImageInfo;
  cache: { writeback: boolean; direct: boolean; 'no-flush': boolean };
  write_threshold: number;
  group?: string;
  [other: string]: unknown;
}

/** One entry of query-block. */
export interface BlockInfo {
  /** Legacy drive name; '' for -blockdev devices. */
  device: string;
  /** QOM path of the device: the `id` block_set_io_throttle wants. */
  qdev?: string;
  type: string;
  removable: boolean;
  locked: boolean;
  inserted?: BlockDeviceInfo;
  tray_open?: boolean;
  'io-status'?: 'ok' | 'failed' | 'nospace';
}

export type BlockJobStatus =
  | 'undefined' | 'created' | 'running' | 'paused' | 'ready' | 'standby' | 'waiting' | 'pending'
  | 'aborting' | 'concluded' | 'null';

/** One entry of query-block-jobs. */
export interface BlockJobInfo {
  /** 'mirror', 'commit', 'stream', 'backup', ... */
  type: string;
  /** The job id (defaults to the device/node name). */
  device: string;
  /** Estimated total work, bytes (may grow while the job runs: new dirty data). */
  len: number;
  /** Work done, bytes. */
  offset: number;
  busy: boolean;
  paused: boolean;
  /** Rate limit, bytes per second (0 = none). */
  speed: number;
  'io-status': 'ok' | 'failed' | 'nospace';
  /** Mirror: source and target in sync, the job can be completed or cancelled. */
  ready: boolean;
  status: BlockJobStatus;
  'auto-finalize': boolean;
  'auto-dismiss': boolean;
  error?: string;
}

/** block_set_io_throttle. The six base limits are mandatory in QMP; 0 = unlimited. */
export interface BlockIoThrottle {
  /** QOM path of the device (query-block `qdev`). Preferred over `device`. */
  id?: string;
  /** Legacy drive name (deprecated by QEMU; '' for -blockdev devices). */
  device?: string;
  /** Total bytes per second. */
  bps: number;
  /** Read bytes per second. */
  bps_rd: number;
  /** Write bytes per second. */
  bps_wr: number;
  /** Total operations per second. */
  iops: number;
  iops_rd: number;
  iops_wr: number;
  bps_max?: number;
  bps_rd_max?: number;
  bps_wr_max?: number;
  iops_max?: number;
  iops_rd_max?: number;
  iops_wr_max?: number;
  bps_max_length?: number;
  bps_rd_max_length?: number;
  bps_wr_max_length?: number;
  iops_max_length?: number;
  iops_rd_max_length?: number;
  iops_wr_max_length?: number;
  iops_size?: number;
  group?: string;
}

/**
 * blockdev-add options (QEMU's BlockdevOptions: a union on `driver` with dozens of variants; only
 * the common part is typed here, the rest is passed through).
 */
export interface BlockdevOptions {
  driver: string;
  'node-name'?: string;
  discard?: 'ignore' | 'unmap';
  cache?: { direct?: boolean; 'no-flush'?: boolean };
  'read-only'?: boolean;
  'auto-read-only'?: boolean;
  'detect-zeroes'?: 'off' | 'on' | 'unmap';
  [driverSpecific: string]: unknown;
}

export type MirrorSyncMode = 'top' | 'full' | 'none' | 'incremental' | 'bitmap';
export type BlockdevOnError = 'report' | 'ignore' | 'enospc' | 'stop' | 'auto';

/** blockdev-mirror */
export interface BlockdevMirrorArgs {
  'job-id'?: string;
  /** Source node name. */
  device: string;
  /** Target node name (must already exist, e.g. an NBD client node). */
  target: string;
  replaces?: string;
  sync: MirrorSyncMode;
  /** Rate limit, bytes per second (0 = none). */
  speed?: number;
  /** Dirty-tracking granularity, bytes (power of two, 512 B..64 MiB). */
  granularity?: number;
  /** Buffer size, bytes. */
  'buf-size'?: number;
  'on-source-error'?: BlockdevOnError;
  'on-target-error'?: BlockdevOnError;
  'filter-node-name'?: string;
  /** 'write-blocking': guest writes are mirrored synchronously once the job is ready (LXD's choice). */
  'copy-mode'?: 'background' | 'write-blocking';
  'auto-finalize'?: boolean;
  'auto-dismiss'?: boolean;
}

/** block-commit */
export interface BlockCommitArgs {
  'job-id'?: string;
  device: string;
  'base-node'?: string;
  base?: string;
  'top-node'?: string;
  top?: string;
  'backing-file'?: string;
  /** Rate limit, bytes per second. */
  speed?: number;
  'on-error'?: BlockdevOnError;
  'filter-node-name'?: string;
  'auto-finalize'?: boolean;
  'auto-dismiss'?: boolean;
}

/** SocketAddress (flat union on `type`). */
export type SocketAddress =
  | { type: 'inet'; host: string; port: string; numeric?: boolean; to?: number; ipv4?: boolean; ipv6?: boolean }
  | { type: 'unix'; path: string; abstract?: boolean; tight?: boolean }
  | { type: 'vsock'; cid: string; port: string }
  | { type: 'fd'; str: string };

/**
 * SocketAddressLegacy: what nbd-server-start takes in 7.2 (a simple union: the address sits in
 * `data`, unlike the flat SocketAddress).
 */
export type SocketAddressLegacy =
  | { type: 'inet'; data: { host: string; port: string; numeric?: boolean; to?: number; ipv4?: boolean; ipv6?: boolean } }
  | { type: 'unix'; data: { path: string; abstract?: boolean; tight?: boolean } }
  | { type: 'vsock'; data: { cid: string; port: string } }
  | { type: 'fd'; data: { str: string } };

/** nbd-server-start */
export interface NbdServerStartArgs {
  addr: SocketAddressLegacy;
  'tls-creds'?: string;
  'tls-authz'?: string;
  'max-connections'?: number;
}

/** block-export-add, NBD variant (the only one dpa uses). */
export interface BlockExportAddNbdArgs {
  type: 'nbd';
  id: string;
  'node-name': string;
  writable?: boolean;
  writethrough?: boolean;
  /** Export name seen by NBD clients (default: the node name). */
  name?: string;
  description?: string;
  bitmaps?: string[];
  'allocation-depth'?: boolean;
  'fixed-iothread'?: boolean;
  iothread?: string;
}
