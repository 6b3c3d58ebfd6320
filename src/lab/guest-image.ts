/**
 * The lab guest's kernel and initramfs, built (or found in the cache) by scripts/build-guest.sh.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

/** A built guest: absolute paths plus the build manifest. */
export interface GuestImage {
  dir: string;
  kernelPath: string;
  initrdPath: string;
  manifest: {
    inputsHash: string;
    kernelPackage: string;
    kernelPackageVersion: string;
    kernelRelease: string;
    /** Modules the initramfs loads, in order (the cloud kernel builds virtio as modules). */
    modules: string[];
    /** Seconds the (uncached) build took. */
    buildSeconds: number;
  };
}

/** The repository root (this file is dist/src/lab/guest-image.js or src/lab/guest-image.ts). */
function repoRoot(): string {
  const up = __dirname.includes(`${join('dist', 'src')}`) ? ['..', '..', '..'] : ['..', '..'];
  return resolve(__dirname, ...up);
}

let cached: Promise<GuestImage> | undefined;

/**
 * Runs scripts/build-guest.sh (a no-op but for hashing when the cache is current; a cold build
 * downloads the kernel package with apt and takes a few seconds) and loads its manifest. The
 * result is memoised per process. `env.DPA_CACHE_DIR` moves the cache.
 */
export function buildGuestImage(opts: { timeoutMs?: number } = {}): Promise<GuestImage> {
  cached ??= build(opts.timeoutMs ?? 300_000).catch((err: unknown) => {
    cached = undefined;
    throw err;
  });
  return cached;
}

/** Loads a guest built earlier from its directory (as printed by scripts/build-guest.sh). */
export async function loadGuestImage(dir: string): Promise<GuestImage> {
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as GuestImage['manifest'] & { kernel: string; initramfs: string };
  return { dir, kernelPath: join(dir, manifest.kernel), initrdPath: join(dir, manifest.initramfs), manifest };
}

function build(timeoutMs: number): Promise<GuestImage> {
  const script = join(repoRoot(), 'scripts', 'build-guest.sh');
  return new Promise((resolvePromise, reject) => {
    execFile(script, [], { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8', maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${script} failed: ${err.message}\n${stderr.trim().split('\n').slice(-15).join('\n')}`, { cause: err }));
        return;
      }
      const dir = stdout.trim().split('\n').pop() ?? '';
      loadGuestImage(dir)
        .then(resolvePromise)
        .catch((e: unknown) => reject(new Error(`${script} printed ${JSON.stringify(dir)}, which holds no readable manifest.json`, { cause: e })));
    });
  });
}
