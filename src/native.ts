/**
 * The only module that loads the native addon (`build/Release/dpa_native.node`, through
 * `bindings`) and declares its types. Everything else imports from here.
 *
 * Conventions of the addon:
 * - Callers allocate and own every buffer (Uint8Array / Uint32Array / Float64Array); native code
 *   borrows them for the duration of a call and never keeps a pointer past it, except where a
 *   doc comment says so (buffer pools handed to long-running handles).
 * - Bitmaps are one bit per 4 KiB page, little-endian bit order inside 64-bit words: page p is
 *   bit (p % 64) of word (p / 64). Byte lengths need not be multiples of 8: tails are handled.
 * - Failing syscalls throw an Error with `code` ("EIO"), `errno` (negative) and `syscall`.
 * - Arguments are validated in TypeScript (RangeError naming the option) before reaching here.
 */
/* eslint-disable @typescript-eslint/no-var-requires */

/** An Error raised by a failing syscall in native code. */
export interface SysError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

// ---------------------------------------------------------------------------------------------
// bitmap kernels (native/bitmap)
// ---------------------------------------------------------------------------------------------
export interface NativeBitmap {
  /** Placeholder replaced by the bitmap kernels' declarations. */
  readonly __bitmap?: never;
}

// ---------------------------------------------------------------------------------------------
// KVM calibration VM (native/kvm)
// ---------------------------------------------------------------------------------------------
export interface NativeKvm {
  readonly __kvm?: never;
}

// ---------------------------------------------------------------------------------------------
// guest-memory scanner (native/guestmem)
// ---------------------------------------------------------------------------------------------
export interface NativeGuestmem {
  readonly __guestmem?: never;
}

export type NativeAddon = NativeBitmap & NativeKvm & NativeGuestmem;

function load(): NativeAddon {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const bindings = require('bindings') as (name: string) => unknown;
    return bindings('dpa_native') as NativeAddon;
  } catch (err) {
    const e = new Error(
      `dpa: the native addon is not built or failed to load (${(err as Error).message}). ` +
        'Run `npm install` (or `npm run build:native`) in the project directory.',
    );
    (e as Error & { cause?: unknown }).cause = err;
    throw e;
  }
}

/** The loaded addon. Loading is synchronous and happens once, on first import. */
export const native: NativeAddon = load();
