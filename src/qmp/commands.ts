/**
 * Typed helpers for the QMP commands dpa's collectors, lab and governor use (QEMU 7.2 schema; see
 * types.ts). Each helper validates its arguments in TypeScript and throws RangeError/TypeError
 * naming the field before anything is sent, then returns QEMU's typed answer. They take any
 * QmpExecutor (QmpClient or ReconnectingQmpClient).
 */
import type { QmpExecuteOptions, QmpExecutor } from './client';
import { QmpUnsafeCommandError } from './errors';
import type {
  BlockCommitArgs,
  BlockdevMirrorArgs,
  BlockdevOptions,
  BlockDeviceInfo,
  BlockExportAddNbdArgs,
  BlockInfo,
  BlockIoThrottle,
  BlockJobInfo,
  BlockStats,
  DirtyRateInfo,
  DirtyRateMeasureMode,
  KvmInfo,
  MigrateSetParameters,
  MigrationCapability,
  MigrationInfo,
  MigrationParameters,
  MigrationStatus,
  NbdServerStartArgs,
  StatusInfo,
} from './types';

export * from './types';

type Opts = QmpExecuteOptions | undefined;
type Args = Record<string, unknown>;

function nonEmptyString(field: string, v: unknown): void {
  if (typeof v !== 'string' || v === '') throw new TypeError(`${field}: must be a non-empty string`);
}

function intInRange(field: string, v: unknown, min: number, max: number): void {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${field}: must be an integer from ${min} to ${max} (got ${String(v)})`);
  }
}

function optionalInt(field: string, v: unknown, min: number, max: number): void {
  if (v !== undefined) intInRange(field, v, min, max);
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

// ---------------------------------------------------------------------------------------------
// run state
// ---------------------------------------------------------------------------------------------

export function queryStatus(q: QmpExecutor, opts?: Opts): Promise<StatusInfo> {
  return q.execute<StatusInfo>('query-status', undefined, opts);
}

/** Whether this VM runs on KVM (`enabled`) — calcDirtyRate's dirty-bitmap guard relies on it. */
export function queryKvm(q: QmpExecutor, opts?: Opts): Promise<KvmInfo> {
  return q.execute<KvmInfo>('query-kvm', undefined, opts);
}

/** Resumes vCPUs (emits RESUME). */
export function cont(q: QmpExecutor, opts?: Opts): Promise<void> {
  return q.execute<void>('cont', undefined, opts).then(() => undefined);
}

/** Pauses vCPUs (emits STOP). */
export function stop(q: QmpExecutor, opts?: Opts): Promise<void> {
  return q.execute<void>('stop', undefined, opts).then(() => undefined);
}

/** Makes QEMU exit (emits SHUTDOWN; the connection then closes). */
export function quit(q: QmpExecutor, opts?: Opts): Promise<void> {
  return q.execute<void>('quit', undefined, opts).then(() => undefined);
}

// HMP's calc_dirty_rate -b is the dirty-bitmap mode under another name.
const HMP_DIRTY_BITMAP = /^\s*calc_dirty_rate\b.*\s-b\b/;

/**
 * Runs an HMP command line and returns its text output. Refuses `calc_dirty_rate -b` (dirty-bitmap
 * mode) for the same reason as calcDirtyRate() unless `vmOnKvm` is stated.
 */
export function humanMonitorCommand(
  q: QmpExecutor,
  commandLine: string,
  opts: QmpExecuteOptions & { cpuIndex?: number; vmOnKvm?: boolean } = {},
): Promise<string> {
  nonEmptyString('commandLine', commandLine);
  optionalInt('cpuIndex', opts.cpuIndex, 0, 4095);
  if (HMP_DIRTY_BITMAP.test(commandLine) && opts.vmOnKvm !== true) {
    throw new RangeError(`commandLine: 'calc_dirty_rate -b' (dirty-bitmap mode) crashes QEMU 7.2 under TCG; pass vmOnKvm: true only for a KVM VM`);
  }
  const args: Args = { 'command-line': commandLine };
  if (opts.cpuIndex !== undefined) args['cpu-index'] = opts.cpuIndex;
  return q.execute<string>('human-monitor-command', args, opts);
}

// ---------------------------------------------------------------------------------------------
// migration
// ---------------------------------------------------------------------------------------------

export function queryMigrate(q: QmpExecutor, opts?: Opts): Promise<MigrationInfo> {
  return q.execute<MigrationInfo>('query-migrate', undefined, opts);
}

/** Sets migration capabilities, e.g. `{ 'auto-converge': true, 'pause-before-switchover': true }`. */
export function migrateSetCapabilities(
  q: QmpExecutor,
  capabilities: Partial<Record<MigrationCapability, boolean>>,
  opts?: Opts,
): Promise<void> {
  const list = Object.entries(capabilities).map(([capability, state]) => {
    if (typeof state !== 'boolean') throw new TypeError(`capabilities.${capability}: must be true or false`);
    return { capability, state };
  });
  if (list.length === 0) throw new RangeError('capabilities: must name at least one capability');
  return q.execute<void>('migrate-set-capabilities', { capabilities: list }, opts).then(() => undefined);
}

/** QEMU 7.2's limits (migration.c migrate_params_check), checked before sending. */
const PARAMETER_RANGES: Record<string, [number, number]> = {
  'max-bandwidth': [0, MAX_SAFE],
  'max-postcopy-bandwidth': [0, MAX_SAFE],
  'downtime-limit': [0, 2_000_000],
  'cpu-throttle-initial': [1, 99],
  'cpu-throttle-increment': [1, 99],
  'throttle-trigger-threshold': [1, 100],
  'max-cpu-throttle': [1, 99],
  'multifd-channels': [1, 255],
  'compress-level': [0, 9],
  'compress-threads': [1, 255],
  'decompress-threads': [1, 255],
};

/** Sets migration parameters (bandwidth in bytes/s, downtime in ms, throttles in percent). */
export function migrateSetParameters(q: QmpExecutor, params: MigrateSetParameters, opts?: Opts): Promise<void> {
  const keys = Object.keys(params).filter((k) => params[k] !== undefined);
  if (keys.length === 0) throw new RangeError('params: must set at least one parameter');
  for (const k of keys) {
    const range = PARAMETER_RANGES[k];
    if (range) intInRange(k, params[k], range[0], range[1]);
  }
  return q.execute<void>('migrate-set-parameters', params as Args, opts).then(() => undefined);
}

export function queryMigrateParameters(q: QmpExecutor, opts?: Opts): Promise<MigrationParameters> {
  return q.execute<MigrationParameters>('query-migrate-parameters', undefined, opts);
}

/** Starts an outgoing migration to `uri` ('unix:/path', 'tcp:host:port', 'fd:name', 'exec:...'). Returns at once. */
export function migrate(q: QmpExecutor, args: { uri: string; detach?: boolean; resume?: boolean }, opts?: Opts): Promise<void> {
  nonEmptyString('uri', args.uri);
  return q.execute<void>('migrate', args as Args, opts).then(() => undefined);
}

/** Starts listening for an incoming migration (QEMU started with `-incoming defer`). */
export function migrateIncoming(q: QmpExecutor, args: { uri: string }, opts?: Opts): Promise<void> {
  nonEmptyString('uri', args.uri);
  return q.execute<void>('migrate-incoming', args as Args, opts).then(() => undefined);
}

/** Continues a migration paused in `state` (with pause-before-switchover: 'pre-switchover'). */
export function migrateContinue(q: QmpExecutor, state: MigrationStatus, opts?: Opts): Promise<void> {
  nonEmptyString('state', state);
  return q.execute<void>('migrate-continue', { state }, opts).then(() => undefined);
}

/** Cancels the outgoing migration. Never use on an LXD-driven migration (LXD then waits forever). */
export function migrateCancel(q: QmpExecutor, opts?: Opts): Promise<void> {
  return q.execute<void>('migrate_cancel', undefined, opts).then(() => undefined);
}

/** QEMU 7.2's sample-pages limits (migration/dirtyrate.h). */
export const MIN_SAMPLE_PAGES_PER_GIB = 128;
export const MAX_SAMPLE_PAGES_PER_GIB = 16384;

export interface CalcDirtyRateOptions extends QmpExecuteOptions {
  /** Measurement window, whole seconds (1..60: QEMU 7.2 has no millisecond unit). */
  calcTimeS: number;
  /** Pages sampled per GiB in page-sampling mode (128..16384; QEMU default 512). */
  samplePagesPerGiB?: number;
  /** Default 'page-sampling'. 'dirty-bitmap' needs `vmOnKvm: true` (see below). */
  mode?: DirtyRateMeasureMode;
  /**
   * The caller's statement that the VM runs on KVM. Required for 'dirty-bitmap': QEMU 7.2 under
   * TCG crashes (SIGSEGV) on it, so the helper refuses unless this is true AND query-kvm reports
   * `enabled`.
   */
  vmOnKvm?: boolean;
}

/**
 * Starts a dirty-rate measurement (returns at once; poll queryDirtyRate() after calcTimeS).
 * Throws RangeError for bad options or dirty-bitmap without `vmOnKvm`; rejects with
 * QmpUnsafeCommandError if `vmOnKvm` is stated but QEMU reports KVM disabled.
 */
export async function calcDirtyRate(q: QmpExecutor, o: CalcDirtyRateOptions): Promise<void> {
  intInRange('calcTimeS', o.calcTimeS, 1, 60);
  optionalInt('samplePagesPerGiB', o.samplePagesPerGiB, MIN_SAMPLE_PAGES_PER_GIB, MAX_SAMPLE_PAGES_PER_GIB);
  const mode = o.mode ?? 'page-sampling';
  if (mode !== 'page-sampling' && mode !== 'dirty-ring' && mode !== 'dirty-bitmap') {
    throw new RangeError(`mode: must be one of page-sampling, dirty-ring, dirty-bitmap (got ${String(mode)})`);
  }
  if (o.samplePagesPerGiB !== undefined && mode !== 'page-sampling') {
    throw new RangeError(`samplePagesPerGiB: only valid with mode 'page-sampling' (got mode '${mode}')`);
  }
  if (mode === 'dirty-bitmap') {
    if (o.vmOnKvm !== true) {
      throw new RangeError(`mode 'dirty-bitmap' crashes QEMU 7.2 under TCG: pass vmOnKvm: true only for a VM running on KVM`);
    }
    const kvm = await queryKvm(q, { timeoutMs: o.timeoutMs, signal: o.signal });
    if (!kvm.enabled) {
      throw new QmpUnsafeCommandError('calc-dirty-rate', `mode 'dirty-bitmap' refused: caller stated vmOnKvm but query-kvm reports enabled=false (TCG); QEMU 7.2 would crash`);
    }
  }
  const args: Args = { 'calc-time': o.calcTimeS };
  if (o.samplePagesPerGiB !== undefined) args['sample-pages'] = o.samplePagesPerGiB;
  if (o.mode !== undefined) args.mode = mode;
  await q.execute<void>('calc-dirty-rate', args, { timeoutMs: o.timeoutMs, signal: o.signal });
}

export function queryDirtyRate(q: QmpExecutor, opts?: Opts): Promise<DirtyRateInfo> {
  return q.execute<DirtyRateInfo>('query-dirty-rate', undefined, opts);
}

// ---------------------------------------------------------------------------------------------
// block
// ---------------------------------------------------------------------------------------------

/** I/O counters per device; with `queryNodes`, per named node instead. */
export function queryBlockstats(q: QmpExecutor, args: { queryNodes?: boolean } = {}, opts?: Opts): Promise<BlockStats[]> {
  return q.execute<BlockStats[]>('query-blockstats', args.queryNodes === undefined ? undefined : { 'query-nodes': args.queryNodes }, opts);
}

/** Every named node, flat (no backing-chain nesting): the source of `image.actual-size`. */
export function queryNamedBlockNodes(q: QmpExecutor, opts?: Opts): Promise<BlockDeviceInfo[]> {
  return q.execute<BlockDeviceInfo[]>('query-named-block-nodes', { flat: true }, opts);
}

export function queryBlock(q: QmpExecutor, opts?: Opts): Promise<BlockInfo[]> {
  return q.execute<BlockInfo[]>('query-block', undefined, opts);
}

export function queryBlockJobs(q: QmpExecutor, opts?: Opts): Promise<BlockJobInfo[]> {
  return q.execute<BlockJobInfo[]>('query-block-jobs', undefined, opts);
}

const THROTTLE_BASE = ['bps', 'bps_rd', 'bps_wr', 'iops', 'iops_rd', 'iops_wr'] as const;

/**
 * Sets a device's I/O limits (guest I/O only; block-job I/O is not throttled). All six base
 * limits are required (0 = unlimited; all zeros = throttling off). Target the device by `id`, the
 * QOM path query-block reports in `qdev`.
 */
export function blockSetIoThrottle(q: QmpExecutor, args: BlockIoThrottle, opts?: Opts): Promise<void> {
  if ((args.id === undefined) === (args.device === undefined)) {
    throw new TypeError('block_set_io_throttle: give exactly one of id (QOM path from query-block qdev) or device');
  }
  if (args.id !== undefined) nonEmptyString('id', args.id);
  for (const f of THROTTLE_BASE) intInRange(f, args[f], 0, MAX_SAFE);
  for (const [k, v] of Object.entries(args)) {
    if (k !== 'id' && k !== 'device' && k !== 'group' && v !== undefined) intInRange(k, v, 0, MAX_SAFE);
  }
  return q.execute<void>('block_set_io_throttle', args as unknown as Args, opts).then(() => undefined);
}

/** Adds a block node (e.g. a qcow2 overlay over a file node, or a raw-over-NBD client node). */
export function blockdevAdd(q: QmpExecutor, options: BlockdevOptions, opts?: Opts): Promise<void> {
  nonEmptyString('driver', options.driver);
  if (options['node-name'] !== undefined) nonEmptyString('node-name', options['node-name']);
  return q.execute<void>('blockdev-add', options as Args, opts).then(() => undefined);
}

/** Removes a block node added by blockdevAdd(). */
export function blockdevDel(q: QmpExecutor, nodeName: string, opts?: Opts): Promise<void> {
  nonEmptyString('nodeName', nodeName);
  return q.execute<void>('blockdev-del', { 'node-name': nodeName }, opts).then(() => undefined);
}

/** Makes `overlay` (an existing node with no backing) the active layer over `node`: guest writes go to the overlay. */
export function blockdevSnapshot(q: QmpExecutor, args: { node: string; overlay: string }, opts?: Opts): Promise<void> {
  nonEmptyString('node', args.node);
  nonEmptyString('overlay', args.overlay);
  return q.execute<void>('blockdev-snapshot', { node: args.node, overlay: args.overlay }, opts).then(() => undefined);
}

/** Starts a mirror job from `device` to `target` (emits BLOCK_JOB_READY when in sync). */
export function blockdevMirror(q: QmpExecutor, args: BlockdevMirrorArgs, opts?: Opts): Promise<void> {
  nonEmptyString('device', args.device);
  nonEmptyString('target', args.target);
  if (!['top', 'full', 'none', 'incremental', 'bitmap'].includes(args.sync)) {
    throw new RangeError(`sync: must be one of top, full, none, incremental, bitmap (got ${String(args.sync)})`);
  }
  optionalInt('speed', args.speed, 0, MAX_SAFE);
  if (args.granularity !== undefined) {
    intInRange('granularity', args.granularity, 512, 64 * 1024 * 1024);
    if ((args.granularity & (args.granularity - 1)) !== 0) throw new RangeError(`granularity: must be a power of two (got ${args.granularity})`);
  }
  return q.execute<void>('blockdev-mirror', args as unknown as Args, opts).then(() => undefined);
}

/**
 * Cancels a block job. For a ready mirror this ends it with the target consistent (event
 * BLOCK_JOB_COMPLETED); before ready, or with force, BLOCK_JOB_CANCELLED.
 */
export function blockJobCancel(q: QmpExecutor, args: { device: string; force?: boolean }, opts?: Opts): Promise<void> {
  nonEmptyString('device', args.device);
  return q.execute<void>('block-job-cancel', args as Args, opts).then(() => undefined);
}

/** Commits an overlay into its backing chain (a block job). */
export function blockCommit(q: QmpExecutor, args: BlockCommitArgs, opts?: Opts): Promise<void> {
  nonEmptyString('device', args.device);
  optionalInt('speed', args.speed, 0, MAX_SAFE);
  return q.execute<void>('block-commit', args as unknown as Args, opts).then(() => undefined);
}

/** Starts QEMU's built-in NBD server (7.2 takes the legacy address form: `{type, data}`). */
export function nbdServerStart(q: QmpExecutor, args: NbdServerStartArgs, opts?: Opts): Promise<void> {
  if (typeof args.addr !== 'object' || args.addr === null || typeof args.addr.data !== 'object') {
    throw new TypeError("addr: must be a SocketAddressLegacy, e.g. { type: 'unix', data: { path } }");
  }
  optionalInt('max-connections', args['max-connections'], 0, 65535);
  return q.execute<void>('nbd-server-start', args as unknown as Args, opts).then(() => undefined);
}

/** Exports a node over the running NBD server. */
export function blockExportAdd(q: QmpExecutor, args: BlockExportAddNbdArgs, opts?: Opts): Promise<void> {
  if (args.type !== 'nbd') throw new RangeError(`type: only 'nbd' is supported (got ${String(args.type)})`);
  nonEmptyString('id', args.id);
  nonEmptyString('node-name', args['node-name']);
  return q.execute<void>('block-export-add', args as unknown as Args, opts).then(() => undefined);
}
