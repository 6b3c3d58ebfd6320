/**
 * The lab guest's data layout, checked from the host side (guest/PROTOCOL.md, "Data layout").
 * The host reads the workload's pages straight out of guest RAM (or its blocks out of the disk
 * image) and checks them with these functions: that is what proves the host's GPA → host-address
 * mapping is right, independently of the guest's own verification.
 */

const MASK64 = (1n << 64n) - 1n;
const FILL_STEP = 0x9e3779b97f4a7c15n;

/** "DPA1MEM1": word 0 of every workload memory page. */
export const MEM_MAGIC = 0x314d454d31415044n;
/** "DPA1DSK1": word 0 of every 4 KiB slice the disk workload writes. */
export const DISK_MAGIC = 0x314b534431415044n;

const UNIT_BYTES = 4096;
const WORDS = UNIT_BYTES / 8;

/** splitmix64's finalizer, mod 2^64: the same function as mix64() in guest/workload.c. */
export function mix64(z: bigint): bigint {
  z = (z + 0x9e3779b97f4a7c15n) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

/** One page's (or block slice's) term of the workload's digest. */
export function digestTerm(id: bigint, generation: bigint): bigint {
  return mix64((id * 0xd6e8feb86659fd93n + generation) & MASK64);
}

// (k * FILL_STEP) mod 2^64 for every word index, as 32-bit halves, so checking a page needs no
// BigInt arithmetic per word.
const STEP_LO = new Uint32Array(WORDS);
const STEP_HI = new Uint32Array(WORDS);
for (let k = 0; k < WORDS; k++) {
  const v = (BigInt(k) * FILL_STEP) & MASK64;
  STEP_LO[k] = Number(v & 0xffffffffn);
  STEP_HI[k] = Number(v >> 32n);
}

/** What a 4 KiB unit's header says, and whether the rest of the unit agrees with it. */
export interface UnitCheck {
  /** The whole unit is exactly what the guest writes for (magic, id, generation, tag). */
  ok: boolean;
  /** Word 0 equals the expected magic. */
  magicOk: boolean;
  id: bigint;
  generation: bigint;
  tag: bigint;
}

/**
 * Checks one 4 KiB unit (a memory page, or a 4 KiB slice of a disk block) at `offset` of `buf`
 * against the layout: header (magic, id, generation, tag), 507 fill words derived from the header,
 * XOR checksum in the last word. Callers compare `id`/`tag` with what they expect.
 */
export function checkUnit(buf: Uint8Array, offset: number, magic: bigint): UnitCheck {
  if (offset < 0 || offset + UNIT_BYTES > buf.length) throw new RangeError(`offset: unit at ${offset} does not fit in ${buf.length} bytes`);
  const view = new DataView(buf.buffer, buf.byteOffset + offset, UNIT_BYTES);
  const word = (k: number): bigint => view.getBigUint64(k * 8, true);
  const id = word(1);
  const generation = word(2);
  const tag = word(3);
  const magicOk = word(0) === magic;
  if (!magicOk) return { ok: false, magicOk, id, generation, tag };
  const fill = mix64(((id * FILL_STEP) & MASK64) ^ generation ^ tag);
  const fillLo = Number(fill & 0xffffffffn) >>> 0;
  const fillHi = Number(fill >> 32n) >>> 0;
  const sum = magic ^ id ^ generation ^ tag;
  let sumLo = Number(sum & 0xffffffffn) >>> 0;
  let sumHi = Number(sum >> 32n) >>> 0;
  let ok = true;
  for (let k = 4; k < WORDS - 1; k++) {
    const lo = view.getUint32(k * 8, true);
    const hi = view.getUint32(k * 8 + 4, true);
    if (lo !== (fillLo ^ STEP_LO[k]!) >>> 0 || hi !== (fillHi ^ STEP_HI[k]!) >>> 0) {
      ok = false;
      break;
    }
    sumLo = (sumLo ^ lo) >>> 0;
    sumHi = (sumHi ^ hi) >>> 0;
  }
  if (ok) ok = view.getUint32((WORDS - 1) * 8, true) === sumLo && view.getUint32((WORDS - 1) * 8 + 4, true) === sumHi;
  return { ok, magicOk, id, generation, tag };
}

/**
 * Writes one unit exactly as the guest does (fill_unit() in guest/workload.c): for host-side
 * fault injection and tests of checkUnit.
 */
export function fillUnit(buf: Uint8Array, offset: number, magic: bigint, id: bigint, generation: bigint, tag: bigint): void {
  if (offset < 0 || offset + UNIT_BYTES > buf.length) throw new RangeError(`offset: unit at ${offset} does not fit in ${buf.length} bytes`);
  const view = new DataView(buf.buffer, buf.byteOffset + offset, UNIT_BYTES);
  const fill = mix64(((id * FILL_STEP) & MASK64) ^ generation ^ tag);
  let sum = magic ^ id ^ generation ^ tag;
  view.setBigUint64(0, magic, true);
  view.setBigUint64(8, id, true);
  view.setBigUint64(16, generation, true);
  view.setBigUint64(24, tag, true);
  for (let k = 4; k < WORDS - 1; k++) {
    const w = fill ^ ((BigInt(k) * FILL_STEP) & MASK64);
    view.setBigUint64(k * 8, w, true);
    sum ^= w;
  }
  view.setBigUint64((WORDS - 1) * 8, sum, true);
}

/** Parses a hex u64 as the guest prints it (tags, digests). */
export function parseHex64(hex: string): bigint {
  if (!/^[0-9a-f]{16}$/.test(hex)) throw new TypeError(`expected 16 lowercase hex digits (got ${JSON.stringify(hex)})`);
  return BigInt('0x' + hex);
}
