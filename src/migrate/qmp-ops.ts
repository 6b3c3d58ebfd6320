/**
 * QMP steps the migration needs beyond src/qmp/commands.ts: block-job completion and speed,
 * yank, NBD server stop, and waiting for a block job to reach a state. Waiting combines the job
 * events with polling query-block-jobs, so an event that fired before we listened cannot be missed
 * and a job that vanished without an event (auto-dismissed) is still noticed.
 */
import type { QmpClient, QmpEvent, QmpExecuteOptions, QmpExecutor } from '../qmp/client';
import { QmpCommandError } from '../qmp/errors';
import { queryBlockJobs, type BlockJobInfo } from '../qmp/commands';

type Opts = QmpExecuteOptions | undefined;

export function blockJobComplete(q: QmpExecutor, device: string, opts?: Opts): Promise<void> {
  return q.execute<void>('block-job-complete', { device }, opts).then(() => undefined);
}

/** Sets a block job's rate limit, bytes per second (0 = unlimited). */
export function blockJobSetSpeed(q: QmpExecutor, device: string, speedBytesPerSec: number, opts?: Opts): Promise<void> {
  if (!Number.isInteger(speedBytesPerSec) || speedBytesPerSec < 0 || speedBytesPerSec > Number.MAX_SAFE_INTEGER) {
    throw new RangeError(`speedBytesPerSec: must be an integer from 0 to ${Number.MAX_SAFE_INTEGER} (got ${speedBytesPerSec})`);
  }
  return q.execute<void>('block-job-set-speed', { device, speed: speedBytesPerSec }, opts).then(() => undefined);
}

export type YankInstance = { type: 'block-node'; 'node-name': string } | { type: 'migration' } | { type: 'chardev'; id: string };

/**
 * Forcibly shuts down the network connections of `instances` (QEMU 6.0+): requests hung on a dead
 * link fail at once instead of after TCP's retransmission timeout (~15 min). Instances that do not
 * exist (any more) are skipped: returns the ones yanked.
 */
export async function yank(q: QmpExecutor, instances: YankInstance[], opts?: Opts): Promise<YankInstance[]> {
  const present = await q.execute<YankInstance[]>('query-yank', undefined, opts);
  // QEMU lists fields in its own order: compare with sorted keys.
  const key = (i: YankInstance): string => JSON.stringify(Object.entries(i).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  const have = new Set(present.map(key));
  const chosen = instances.filter((i) => have.has(key(i)));
  if (chosen.length) await q.execute<void>('yank', { instances: chosen }, opts);
  return chosen;
}

export function nbdServerStop(q: QmpExecutor, opts?: Opts): Promise<void> {
  return q.execute<void>('nbd-server-stop', undefined, opts).then(() => undefined);
}

/** True for QEMU's answers meaning "no such job / node / server" (already gone: fine when undoing). */
export function isNotFound(err: unknown): boolean {
  return (
    err instanceof QmpCommandError &&
    (err.errorClass === 'DeviceNotActive' || err.errorClass === 'DeviceNotFound' || /not found|No block job|not running|does not exist|Cannot find|No such/i.test(err.desc))
  );
}

/** How a block job ended (BLOCK_JOB_COMPLETED / BLOCK_JOB_CANCELLED, or vanished). */
export interface JobEnd {
  event: 'BLOCK_JOB_COMPLETED' | 'BLOCK_JOB_CANCELLED' | 'vanished';
  /** QEMU's error message when the job failed. */
  error?: string;
  /** Bytes the job processed (the event's offset) when known. */
  offset?: number;
  len?: number;
}

export interface WaitJobOptions {
  /** 'ready': resolve at BLOCK_JOB_READY (or ready in query-block-jobs); 'end': resolve when the job is gone. */
  until: 'ready' | 'end';
  /** Polling period, ms (default 250). */
  pollMs?: number;
  /** Called with each polled job state. */
  onPoll?(job: BlockJobInfo): void;
  /** Fail when offset stays the same for this long while not ready, ms (0 = never; default 0). */
  stallTimeoutMs?: number;
  /** Overall limit, ms (0 = none; default 0). */
  timeoutMs?: number;
  /** The job is known to exist already, so not finding it means it ended (default false). */
  existing?: boolean;
  signal?: AbortSignal;
}

/** A job not listed this long after waitJob() started never existed (its command failed), ms. */
const NOT_SEEN_LIMIT_MS = 10_000;

export class BlockJobError extends Error {
  override name = 'BlockJobError';
  constructor(
    readonly jobId: string,
    message: string,
    readonly end?: JobEnd,
  ) {
    super(message);
  }
}

/**
 * Waits for job `jobId` to become ready, or to end. With until 'ready', a job that ends first is
 * a BlockJobError. With until 'end', resolves with how it ended (the caller decides whether an
 * `error` matters). Rejects with StallError-like BlockJobError on stall/timeout, or the signal's reason.
 */
export function waitJob(q: QmpClient, jobId: string, o: WaitJobOptions): Promise<JobEnd | 'ready'> {
  const pollMs = o.pollMs ?? 250;
  return new Promise((resolve, reject) => {
    let settled = false;
    let seen = o.existing === true;
    let lastOffset = -1;
    let lastAdvance = performance.now();
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const finish = (err: Error | null, value?: JobEnd | 'ready'): void => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      q.off('event', onEvent);
      q.off('disconnect', onDisconnect);
      o.signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(value!);
    };
    const ended = (end: JobEnd): void => {
      if (o.until === 'end') return finish(null, end);
      finish(new BlockJobError(jobId, `block job ${jobId} ended before it was ready${end.error ? `: ${end.error}` : ` (${end.event})`}`, end));
    };
    const onEvent = (e: QmpEvent): void => {
      if (e.data?.device !== jobId) return;
      if (e.event === 'BLOCK_JOB_READY' && o.until === 'ready') finish(null, 'ready');
      else if (e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_CANCELLED') {
        const end: JobEnd = { event: e.event };
        if (typeof e.data.error === 'string') end.error = e.data.error;
        if (typeof e.data.offset === 'number') end.offset = e.data.offset;
        if (typeof e.data.len === 'number') end.len = e.data.len;
        ended(end);
      }
    };
    const onDisconnect = (err: Error): void => finish(err);
    const onAbort = (): void => finish(o.signal!.reason instanceof Error ? o.signal!.reason : new Error(String(o.signal!.reason)));
    q.on('event', onEvent);
    q.on('disconnect', onDisconnect);
    o.signal?.addEventListener('abort', onAbort, { once: true });
    if (o.signal?.aborted) return onAbort();
    const poll = async (): Promise<void> => {
      if (settled) return;
      try {
        const jobs = await queryBlockJobs(q, { timeoutMs: 10_000 });
        if (settled) return;
        const job = jobs.find((j) => j.device === jobId);
        if (!job) {
          // Listening starts before the command that creates the job is sent: absent at first
          // means "not created yet", absent after being seen means it ended (an auto-dismissed
          // job without an event we saw).
          if (seen || performance.now() - started > NOT_SEEN_LIMIT_MS) {
            await new Promise((r) => setTimeout(r, 20));
            if (!settled) ended({ event: 'vanished' });
            return;
          }
          timer = setTimeout(() => void poll(), Math.min(pollMs, 50));
          return;
        }
        seen = true;
        o.onPoll?.(job);
        if (o.until === 'ready' && job.ready) return finish(null, 'ready');
        if (job.status === 'concluded' || job.status === 'aborting') {
          ended({ event: 'vanished', ...(job.error ? { error: job.error } : {}), offset: job.offset, len: job.len });
          return;
        }
        const now = performance.now();
        if (job.offset !== lastOffset) {
          lastOffset = job.offset;
          lastAdvance = now;
        } else if (o.stallTimeoutMs && !job.ready && job.offset < job.len && now - lastAdvance > o.stallTimeoutMs) {
          return finish(new BlockJobError(jobId, `block job ${jobId}: no progress for ${o.stallTimeoutMs} ms (at ${job.offset} of ${job.len} bytes)`));
        }
        if (o.timeoutMs && now - started > o.timeoutMs) {
          return finish(new BlockJobError(jobId, `block job ${jobId}: not ${o.until === 'ready' ? 'ready' : 'finished'} within ${o.timeoutMs} ms`));
        }
      } catch (err) {
        return finish(err as Error);
      }
      timer = setTimeout(() => void poll(), pollMs);
    };
    void poll();
  });
}

/**
 * Sends the command that creates (or ends) job `jobId` and waits as `o` says. Listening starts
 * before the command is sent, so an event QEMU emits right away is not missed; if the command
 * fails the wait is dropped and the command's error is thrown.
 */
export async function commandAndWait(q: QmpClient, jobId: string, command: () => Promise<void>, o: WaitJobOptions): Promise<JobEnd | 'ready'> {
  const local = new AbortController();
  const signals = o.signal ? AbortSignal.any([o.signal, local.signal]) : local.signal;
  const waiting = waitJob(q, jobId, { ...o, signal: signals });
  waiting.catch(() => undefined);
  try {
    await command();
  } catch (err) {
    local.abort(err);
    throw err;
  }
  return waiting;
}
