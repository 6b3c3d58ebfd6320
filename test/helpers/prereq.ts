/**
 * Prerequisites of tests that need real parts (KVM, QEMU, root for namespaces, Chromium).
 * Outside CI a missing prerequisite skips the test loudly, with the reason. With
 * DPA_REQUIRE_ALL=1 (set by .ci/run) it registers a failing test instead, so CI never passes
 * by skipping.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { test } from 'node:test';

const reported = new Set<string>();

/** Returns `{}` when `missingReason` is null, else `{ skip: reason }` (or a failure under DPA_REQUIRE_ALL=1). */
export function needs(name: string, missingReason: string | null): { skip?: string } {
  if (missingReason === null) return {};
  const reason = `${name} unavailable: ${missingReason}`;
  if (!reported.has(name)) {
    reported.add(name);
    if (process.env.DPA_REQUIRE_ALL === '1') {
      test(`prerequisite ${name}`, () => {
        throw new Error(`${reason} (DPA_REQUIRE_ALL=1: missing prerequisites fail; run scripts/setup-host.sh)`);
      });
    } else {
      process.stderr.write(`\n*** SKIPPING tests that need ${reason}\n`);
    }
  }
  return { skip: reason };
}

function memo(fn: () => string | null): () => string | null {
  let value: string | null | undefined;
  return () => (value === undefined ? (value = fn()) : value);
}

/** null when /dev/kvm can be opened read-write by this process. */
export const kvmMissing = memo(() => {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return null;
  } catch (err) {
    return `/dev/kvm is not usable (${(err as NodeJS.ErrnoException).code})`;
  }
});

function commandMissing(cmd: string, args: string[] = ['--version']): string | null {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 10_000 });
    return null;
  } catch (err) {
    return `${cmd} not runnable (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`;
  }
}

export const qemuMissing = memo(() => commandMissing('qemu-system-x86_64'));
export const rootMissing = memo(() => (process.getuid?.() === 0 ? null : 'needs root (network namespaces, tc)'));
export const chromiumMissing = memo(() => commandMissing('chromium'));
