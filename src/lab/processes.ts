/**
 * Registry of the lab's child processes (QEMU): every one is SIGKILLed if this process ends while
 * it still runs — normal exit, process.exit(), an uncaught exception or unhandled rejection,
 * SIGINT/SIGTERM/SIGHUP (through exec.ts's exit-cleanup registry, which re-raises the signal), and
 * a failing test file, which ends its process like any other. A VM left running would hold
 * gigabytes and a CPU.
 *
 * SIGKILL of this process cannot be caught; QEMU then survives as an orphan. LabVm names its
 * private directory after the owner's pid and keeps QEMU's pid file there, so reapOrphanedVms()
 * (vm.ts) can find and kill such orphans later.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { registerExitCleanup } from './exec';

interface Tracked {
  child: ChildProcess;
  label: string;
  unregister: () => void;
}

const tracked = new Map<number, Tracked>();
let monitorInstalled = false;

function killNow(t: Tracked): void {
  if (t.child.exitCode === null && t.child.signalCode === null) {
    try {
      process.kill(t.child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Kills every tracked child now (SIGKILL), synchronously. */
export function killAllTracked(): void {
  for (const t of [...tracked.values()]) killNow(t);
}

/**
 * Tracks a freshly spawned child until it exits. Returns nothing: the entry goes away by itself
 * on the child's 'exit'.
 */
export function trackChild(child: ChildProcess, label: string): void {
  const pid = child.pid;
  if (pid === undefined) return; // spawn failed: nothing runs
  if (!monitorInstalled) {
    monitorInstalled = true;
    // Kill at the moment of the crash, before other 'exit' work; the 'exit' cleanup below would
    // also do it. A monitor does not change how the exception ends the process.
    process.on('uncaughtExceptionMonitor', killAllTracked);
  }
  const t: Tracked = { child, label, unregister: () => {} };
  t.unregister = registerExitCleanup(() => killNow(t));
  tracked.set(pid, t);
  child.once('exit', () => {
    t.unregister();
    tracked.delete(pid);
  });
}

/** Tracked children still running: pid and label. */
export function trackedChildren(): { pid: number; label: string }[] {
  return [...tracked.entries()].map(([pid, t]) => ({ pid, label: t.label }));
}

/**
 * True while `pid` names a live process. A zombie counts as gone: once SIGKILLed an orphan stays a
 * zombie until some ancestor reaps it, which a container's PID 1 may never do.
 */
export function processAlive(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // state is the field after the parenthesised comm (which may itself contain ') ').
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X' && state !== '';
}
