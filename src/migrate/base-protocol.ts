/**
 * Wire format of the base-image copy (phase 'base'): the stand-in for LXD's rsync / raw block
 * stream over its `fs` websocket. One TCP connection, sender (source host) → receiver (target
 * host, base-receiver.ts):
 *
 * ```
 * hello   "DPABASE1" | u64 totalBytes | u32 maxFrameBytes | u32 flags (0)          (24 bytes)
 * frame   u8 type | u64 offset | u32 length | payload (DATA: length bytes; END: 32)  (13 + n)
 *         type 1 DATA  bytes of the image at [offset, offset+length)
 *              2 ZERO  [offset, offset+length) is all zeroes (no payload: sparse)
 *              3 END   offset = totalBytes, payload = SHA-256 of the whole image
 * ```
 * Integers are big-endian. Frames cover the image in order, without gaps or overlap.
 *
 * Receiver → sender: JSON lines. `{"ack": bytes}` after each frame is on disk (the sender's
 * progress is what arrived, not what left its socket buffer), then exactly one of
 * `{"done": {"bytes", "sha256"}}` (after fdatasync, the digest matched) or `{"error": message}`.
 */

export const HELLO_MAGIC = Buffer.from('DPABASE1', 'latin1');
export const HELLO_BYTES = 24;
export const FRAME_HEADER_BYTES = 13;
export const SHA256_BYTES = 32;

export const FRAME_DATA = 1;
export const FRAME_ZERO = 2;
export const FRAME_END = 3;

/** Largest frame payload either side accepts, bytes (16 MiB). */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;
/** Largest image, bytes (2^53 - 1: offsets must stay exact in a JS number). */
export const MAX_IMAGE_BYTES = Number.MAX_SAFE_INTEGER;

export function encodeHello(totalBytes: number, maxFrameBytes: number): Buffer {
  const b = Buffer.alloc(HELLO_BYTES);
  HELLO_MAGIC.copy(b, 0);
  b.writeBigUInt64BE(BigInt(totalBytes), 8);
  b.writeUInt32BE(maxFrameBytes, 16);
  b.writeUInt32BE(0, 20);
  return b;
}

export function decodeHello(b: Buffer): { totalBytes: number; maxFrameBytes: number } {
  if (b.length < HELLO_BYTES || !b.subarray(0, 8).equals(HELLO_MAGIC)) throw new Error('base copy: bad hello (not a dpa base-copy stream)');
  const total = b.readBigUInt64BE(8);
  if (total > BigInt(MAX_IMAGE_BYTES)) throw new Error(`base copy: image of ${total} bytes is too large`);
  const maxFrameBytes = b.readUInt32BE(16);
  if (maxFrameBytes < 1 || maxFrameBytes > MAX_FRAME_BYTES) throw new Error(`base copy: frame size ${maxFrameBytes} outside 1..${MAX_FRAME_BYTES}`);
  return { totalBytes: Number(total), maxFrameBytes };
}

export function encodeFrameHeader(type: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(FRAME_HEADER_BYTES);
  b.writeUInt8(type, 0);
  b.writeBigUInt64BE(BigInt(offset), 1);
  b.writeUInt32BE(length, 9);
  return b;
}

export function decodeFrameHeader(b: Buffer): { type: number; offset: number; length: number } {
  return { type: b.readUInt8(0), offset: Number(b.readBigUInt64BE(1)), length: b.readUInt32BE(9) };
}
