/**
 * Running host tools (ip, tc, mount, mkfs) for the lab, and undoing what the lab set up when the
 * process ends.
 *
 * Every command is an argument array handed to execFile (never a shell string), has a timeout,
 * and fails with an {@link ExecError} whose message carries the full command line and the tool's
 * stderr, because "exit status 2" alone is useless when `tc` rejects a parameter.
 */
import { execFile, execFileSync } from 'node:child_process';

/** Default time limit of one command, ms. ip/tc/mount finish in milliseconds; mkfs in < 1 s. */
export const DEFAULT_TIMEOUT_MS = 20_000;

const MAX_OUTPUT_BYTES = 16 * 1024 * 1024;

export interface RunOptions {
  /** Kill the command (SIGKILL) after this many ms; 1..600000, default {@link DEFAULT_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Extra environment variables (merged over process.env). */
  env?: NodeJS.ProcessEnv;
  /** Written to the command's stdin, which is then closed (run() only). */
  input?: string;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/**
 * A command that could not be started, exited non-zero, was killed, or timed out.
 * `code` is the errno name when it could not be started (ENOENT, EACCES), 'ETIMEDOUT' on timeout,
 * 'ERR_EXIT_STATUS' for a non-zero exit and 'ERR_KILLED' for a signal.
 */
export class ExecError extends Error {
  override name = 'ExecError';
  /** The command and its arguments, as run. */
  readonly argv: readonly string[];
  readonly code: string;
  /** Exit status, or null when it did not exit normally. */
  readonly exitStatus: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
  readonly stdout: string;
  /** Set when the command could not be started (from the failed spawn). */
  readonly errno?: number;
  readonly syscall?: string;

  constructor(
    argv: readonly string[],
    fields: {
      code: string;
      exitStatus: number | null;
      signal: NodeJS.Signals | null;
      stdout: string;
      stderr: string;
      errno?: number;
      syscall?: string;
      detail: string;
    },
  ) {
    const stderr = fields.stderr.trim();
    super(`${formatArgv(argv)}: ${fields.detail}${stderr ? `: ${stderr}` : ''}`);
    this.argv = argv;
    this.code = fields.code;
    this.exitStatus = fields.exitStatus;
    this.signal = fields.signal;
    this.stdout = fields.stdout;
    this.stderr = fields.stderr;
    if (fields.errno !== undefined) this.errno = fields.errno;
    if (fields.syscall !== undefined) this.syscall = fields.syscall;
  }
}

/** Quotes arguments that need it, for messages only (nothing is ever run through a shell). */
export function formatArgv(argv: readonly string[]): string {
  return argv.map((a) => (/^[A-Za-z0-9_./:=@%+,-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

function checkTimeout(timeoutMs: number): number {
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 600_000) {
    throw new RangeError(`timeoutMs: must be an integer from 1 to 600000 ms (got ${timeoutMs})`);
  }
  return timeoutMs;
}

function checkArgv(cmd: string, args: readonly string[]): void {
  if (typeof cmd !== 'string' || cmd === '') throw new TypeError('cmd: must be a non-empty string');
  for (const a of args) {
    if (typeof a !== 'string') throw new TypeError(`args: every argument must be a string (got ${typeof a})`);
    // A NUL would silently truncate the argument at the exec boundary.
    if (a.includes('\0')) throw new TypeError(`args: argument contains a NUL byte: ${JSON.stringify(a)}`);
  }
}

interface ChildFailure {
  code?: string | number | null;
  errno?: number;
  syscall?: string;
  killed?: boolean;
  signal?: NodeJS.Signals | null;
  message: string;
}

function toExecError(argv: readonly string[], err: ChildFailure, stdout: string, stderr: string, timeoutMs: number, timedOut: boolean): ExecError {
  if (timedOut) {
    return new ExecError(argv, { code: 'ETIMEDOUT', exitStatus: null, signal: err.signal ?? null, stdout, stderr, detail: `timed out after ${timeoutMs} ms` });
  }
  if (typeof err.code === 'string' && err.syscall) {
    // Spawn failed: keep the errno fields so callers can tell ENOENT (tool missing) apart.
    return new ExecError(argv, {
      code: err.code, exitStatus: null, signal: null, stdout, stderr,
      ...(err.errno !== undefined ? { errno: err.errno } : {}), syscall: err.syscall,
      detail: `could not start (${err.code})`,
    });
  }
  if (typeof err.code === 'number') {
    return new ExecError(argv, { code: 'ERR_EXIT_STATUS', exitStatus: err.code, signal: null, stdout, stderr, detail: `exit status ${err.code}` });
  }
  const signal = err.signal ?? null;
  return new ExecError(argv, { code: 'ERR_KILLED', exitStatus: null, signal, stdout, stderr, detail: signal ? `killed by ${signal}` : err.message });
}

/** Runs `cmd args...` and resolves with its output; rejects with {@link ExecError}. */
export function run(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  checkArgv(cmd, args);
  const timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  const argv = [cmd, ...args];
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = execFile(
      cmd,
      [...args],
      {
        timeout: timeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: MAX_OUTPUT_BYTES,
        encoding: 'utf8',
        windowsHide: true,
        ...(options.env ? { env: { ...process.env, ...options.env } } : {}),
      },
      (err, stdout, stderr) => {
        if (!err) return resolve({ stdout, stderr });
        const failure = err as unknown as ChildFailure;
        const timedOut = failure.killed === true && Date.now() - started >= timeoutMs - 5;
        reject(toExecError(argv, failure, stdout ?? '', stderr ?? '', timeoutMs, timedOut));
      },
    );
    if (options.input !== undefined) {
      child.stdin?.on('error', () => undefined); // a command that exits early: its status says why
      child.stdin?.end(options.input);
    }
  });
}

/**
 * Synchronous {@link run}, for process-exit cleanup only (an 'exit' handler cannot await).
 * Elsewhere it would block the event loop.
 */
export function runSync(cmd: string, args: readonly string[], options: RunOptions = {}): RunResult {
  checkArgv(cmd, args);
  const timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  const started = Date.now();
  try {
    const stdout = execFileSync(cmd, [...args], {
      timeout: timeoutMs,
      killSignal: 'SIGKILL',
      maxBuffer: MAX_OUTPUT_BYTES,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(options.env ? { env: { ...process.env, ...options.env } } : {}),
    });
    return { stdout, stderr: '' };
  } catch (e) {
    const err = e as ChildFailure & { status?: number | null; stdout?: string; stderr?: string };
    const failure: ChildFailure = { ...err, message: err.message };
    if (typeof err.status === 'number') failure.code = err.status;
    const timedOut = (err.code === 'ETIMEDOUT' || err.signal === 'SIGKILL') && Date.now() - started >= timeoutMs - 5;
    throw toExecError([cmd, ...args], failure, err.stdout ?? '', err.stderr ?? '', timeoutMs, timedOut);
  }
}

/** Runs a command whose stdout is JSON (`ip -j`, `tc -j`) and parses it. Empty output is `[]`. */
export async function runJson<T>(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<T> {
  const { stdout } = await run(cmd, args, options);
  const text = stdout.trim();
  if (text === '') return [] as unknown as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new Error(`${formatArgv([cmd, ...args])}: output is not JSON: ${text.slice(0, 200)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Process-exit cleanup registry.
//
// Lab objects live outside the process (namespaces, veths, routes, mounts): if the process dies
// without undoing them they stay until reboot. Each one registers a synchronous undo here.
// - 'exit' runs them: normal end, process.exit(), and an uncaught exception (Node emits 'exit'
//   after printing it). An 'uncaughtException' listener is deliberately NOT installed: adding one
//   would stop the process from dying.
// - SIGINT/SIGTERM/SIGHUP: when nobody else listens, the default action would kill the process
//   without 'exit', so the undos run here and the signal is re-raised (the exit status stays
//   128+signal). When the application listens too (dpa's CLI aborts gracefully on the first
//   signal), shutdown is its business and 'exit' still runs the undos afterwards.
// - SIGKILL cannot be caught: reapStale*() removes what such a process left behind.
// ---------------------------------------------------------------------------------------------

const exitCleanups = new Set<() => void>();
const HANDLED_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let installed = false;

function runExitCleanups(): void {
  const all = [...exitCleanups].reverse();
  exitCleanups.clear();
  for (const fn of all) {
    try {
      fn();
    } catch (err) {
      // Exit cleanup has nowhere to report to but stderr; one failure must not stop the others.
      process.stderr.write(`dpa lab: cleanup at exit failed: ${(err as Error).message}\n`);
    }
  }
}

function onSignal(signal: NodeJS.Signals): void {
  if (process.listenerCount(signal) > 1) return;
  runExitCleanups();
  for (const s of HANDLED_SIGNALS) process.removeListener(s, onSignal);
  process.kill(process.pid, signal);
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', runExitCleanups);
  for (const s of HANDLED_SIGNALS) process.on(s, onSignal);
}

/**
 * Registers a synchronous undo to run when the process exits or is killed by SIGINT, SIGTERM or
 * SIGHUP. Returns a function that unregisters it (call it once the object was undone normally).
 * Undos run newest first.
 */
export function registerExitCleanup(fn: () => void): () => void {
  install();
  exitCleanups.add(fn);
  return () => {
    exitCleanups.delete(fn);
  };
}

/** True when a process with this pid exists (any owner). */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
