/**
 * Where a lab VM's guest RAM lives in the QEMU process, and how guest-physical addresses map into it.
 *
 * LabVm backs RAM with `-object memory-backend-memfd,id=ram0,share=on` and
 * `-machine q35,memory-backend=ram0`. QEMU 7.2 names the memfd after the backend's type, not its
 * id, so in /proc/PID/maps the RAM is one shared mapping (rw-s) of exactly the RAM size named
 *
 *     /memfd:memory-backend-memfd (deleted)
 *
 * (checked on QEMU 7.2.22): the memfd's name is `memory-backend-memfd` (GuestRamInfo.ramName, as
 * the guest-memory scanner's `ramName` option takes it) and the maps path adds `/memfd:` and
 * ` (deleted)`. The scanner finds it by that name and size; the file offset within the memfd
 * is the RAM offset below.
 *
 * q35 layout (hw/i386/pc_q35.c, 7.2): RAM below 4 GiB ends at `lowmem` = 2 GiB when the RAM
 * size is ≥ 0xb0000000 (2.75 GiB), else 2.75 GiB; whatever does not fit below goes to 4 GiB and
 * up. So for guests smaller than 2.75 GiB the RAM offset of a GPA is the GPA itself.
 */
import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';

/** The name QEMU 7.2 gives the memfd of every memory-backend-memfd, whatever the backend's id. */
export const MEMFD_RAM_NAME = 'memory-backend-memfd';

/** How a memfd named `name` appears in the path column of /proc/PID/maps. */
export function memfdMapsPath(name: string): string {
  return `/memfd:${name} (deleted)`;
}

const GIB = 1024 * 1024 * 1024;
const FOUR_GIB = 4 * GIB;

/** What the guest-memory scanner needs to find a VM's RAM. */
export interface GuestRamInfo {
  /** QEMU's pid. */
  pid: number;
  /** The RAM memfd's name ('memory-backend-memfd'); /proc/PID/maps shows memfdMapsPath(ramName). */
  ramName: string;
  /** RAM size, bytes (the mapping's size). */
  ramBytes: number;
  /** RAM at GPA 0 .. lowRamBytes (RAM offset = GPA), bytes. */
  lowRamBytes: number;
  /** RAM at GPA 4 GiB .. 4 GiB + highRamBytes (RAM offset = lowRamBytes + GPA - 4 GiB), bytes. */
  highRamBytes: number;
}

/** Splits `ramBytes` of a q35 guest into the parts below and above 4 GiB (QEMU 7.2's rule). */
export function q35RamLayout(ramBytes: number): { lowRamBytes: number; highRamBytes: number } {
  if (!Number.isSafeInteger(ramBytes) || ramBytes <= 0) throw new RangeError(`ramBytes: must be a positive integer (got ${ramBytes})`);
  const lowmem = ramBytes >= 0xb0000000 ? 0x80000000 : 0xb0000000;
  const lowRamBytes = Math.min(ramBytes, lowmem);
  return { lowRamBytes, highRamBytes: ramBytes - lowRamBytes };
}

/**
 * Where the RAM of a q35 QEMU with memory-backend-memfd RAM is: for any such QEMU, not only
 * LabVm's (LabVm.guestRam() calls this). `ramBytes` is the backend's size.
 */
export function guestRamInfo(pid: number, ramBytes: number): GuestRamInfo {
  if (!Number.isInteger(pid) || pid <= 0) throw new RangeError(`pid: must be a positive integer (got ${pid})`);
  return { pid, ramName: MEMFD_RAM_NAME, ramBytes, ...q35RamLayout(ramBytes) };
}

/** RAM offset (into the memfd) of a guest-physical address; RangeError for a GPA that is not RAM. */
export function gpaToRamOffset(gpa: number, layout: { lowRamBytes: number; highRamBytes: number }): number {
  if (!Number.isSafeInteger(gpa) || gpa < 0) throw new RangeError(`gpa: must be a non-negative integer (got ${gpa})`);
  if (gpa < layout.lowRamBytes) return gpa;
  if (gpa >= FOUR_GIB && gpa < FOUR_GIB + layout.highRamBytes) return layout.lowRamBytes + (gpa - FOUR_GIB);
  throw new RangeError(`gpa: 0x${gpa.toString(16)} is not guest RAM (RAM is below 0x${layout.lowRamBytes.toString(16)}` +
    (layout.highRamBytes ? ` and at 4 GiB..+0x${layout.highRamBytes.toString(16)})` : ')'));
}

/** One piece of the RAM mapping: host virtual [start, end) holds RAM offsets [ramOffset, ramOffset + end - start). */
export interface RamSegment {
  start: bigint;
  end: bigint;
  ramOffset: number;
}

/**
 * Finds the RAM mapping in /proc/PID/maps: the shared mappings of the memfd `ramName` whose pieces
 * (QEMU maps it once, but a VMA may be split) cover offsets 0..ramBytes of one memfd inode.
 */
export function findRamSegments(info: Pick<GuestRamInfo, 'pid' | 'ramName' | 'ramBytes'>): RamSegment[] {
  const maps = readFileSync(`/proc/${info.pid}/maps`, 'utf8');
  const path = memfdMapsPath(info.ramName);
  const byInode = new Map<string, RamSegment[]>();
  for (const line of maps.split('\n')) {
    // start-end perms offset dev inode   pathname (the name itself contains spaces)
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ (\d+)\s+(.*)$/.exec(line);
    if (!m || m[6] !== path || m[3]![3] !== 's') continue;
    const seg: RamSegment = { start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]), ramOffset: Number.parseInt(m[4]!, 16) };
    const list = byInode.get(m[5]!) ?? [];
    list.push(seg);
    byInode.set(m[5]!, list);
  }
  for (const segs of byInode.values()) {
    segs.sort((a, b) => a.ramOffset - b.ramOffset);
    let next = 0;
    for (const s of segs) if (s.ramOffset === next) next += Number(s.end - s.start);
    if (next === info.ramBytes) return segs;
  }
  throw new Error(`no ${info.ramBytes}-byte shared mapping ${JSON.stringify(path)} in /proc/${info.pid}/maps`);
}

/**
 * Reads (and, for fault injection in tests, writes) guest-physical memory of a running VM through
 * /proc/PID/mem. Needs ptrace rights over QEMU (root, or the same user with ptrace_scope 0). This
 * is the slow, simple path used by tests to check the GPA mapping; the scanner uses
 * process_vm_readv natively.
 */
export class GuestPhysMemory {
  private fd: number;
  private readonly segments: RamSegment[];
  private readonly layout: { lowRamBytes: number; highRamBytes: number };

  constructor(info: GuestRamInfo, opts: { writable?: boolean } = {}) {
    this.segments = findRamSegments(info);
    this.layout = info;
    this.fd = openSync(`/proc/${info.pid}/mem`, opts.writable ? 'r+' : 'r');
  }

  /** Host virtual address of a GPA (RangeError when the GPA is not RAM). */
  hostAddress(gpa: number): bigint {
    const off = gpaToRamOffset(gpa, this.layout);
    for (const s of this.segments) {
      const len = Number(s.end - s.start);
      if (off >= s.ramOffset && off < s.ramOffset + len) return s.start + BigInt(off - s.ramOffset);
    }
    throw new RangeError(`gpa: 0x${gpa.toString(16)} is outside the RAM mapping`);
  }

  /** Reads `buf.length` bytes at `gpa` (must not cross a RAM region boundary). */
  read(gpa: number, buf: Uint8Array): void {
    this.checkSpan(gpa, buf.length);
    const n = readSync(this.fd, buf, 0, buf.length, this.hostAddress(gpa));
    if (n !== buf.length) throw new Error(`short read of guest memory at 0x${gpa.toString(16)}: ${n} of ${buf.length} bytes`);
  }

  /** Writes `data` at `gpa`: for fault injection only (a running guest sees it at once). */
  write(gpa: number, data: Uint8Array): void {
    this.checkSpan(gpa, data.length);
    // User-space addresses are < 2^47, so the number is exact.
    const n = writeSync(this.fd, data, 0, data.length, Number(this.hostAddress(gpa)));
    if (n !== data.length) throw new Error(`short write of guest memory at 0x${gpa.toString(16)}`);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  private checkSpan(gpa: number, length: number): void {
    if (this.fd < 0) throw new Error('GuestPhysMemory is closed');
    const a = gpaToRamOffset(gpa, this.layout);
    const b = gpaToRamOffset(gpa + Math.max(length, 1) - 1, this.layout);
    if (b - a !== Math.max(length, 1) - 1) throw new RangeError(`gpa: 0x${gpa.toString(16)}+${length} crosses a RAM region boundary`);
  }
}

const ZERO_SCAN_CHUNK_BYTES = 1024 * 1024;

/** Share of `ramBytes` of guest RAM (from GPA 0, one low-RAM region) that is all zero bytes. */
export function zeroPageShare(mem: Pick<GuestPhysMemory, 'read'>, ramBytes: number): number {
  const chunk = new Uint8Array(ZERO_SCAN_CHUNK_BYTES);
  const words = new Uint32Array(chunk.buffer);
  const wordsPerPage = 4096 / 4;
  let zero = 0;
  let pages = 0;
  for (let gpa = 0; gpa < ramBytes; gpa += ZERO_SCAN_CHUNK_BYTES) {
    const len = Math.min(ZERO_SCAN_CHUNK_BYTES, ramBytes - gpa);
    const view = len === ZERO_SCAN_CHUNK_BYTES ? chunk : chunk.subarray(0, len);
    mem.read(gpa, view);
    const n = len / 4096;
    for (let p = 0; p < n; p++) {
      let w = p * wordsPerPage;
      const end = w + wordsPerPage;
      while (w < end && words[w] === 0) w++;
      if (w === end) zero++;
    }
    pages += n;
  }
  return pages ? zero / pages : 0;
}

/** zeroPageShare of a running guest's whole RAM, read from its QEMU process (opened and closed here). */
export function scanZeroPageShare(info: GuestRamInfo): number {
  const mem = new GuestPhysMemory(info);
  try {
    return zeroPageShare(mem, info.ramBytes);
  } finally {
    mem.close();
  }
}
