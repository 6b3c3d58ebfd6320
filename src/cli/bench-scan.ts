/**
 * `dpa bench scan`: how fast the guest-memory collector reads and hashes guest RAM, per core,
 * against the two limits it is made of, all measured in the same run on the same target:
 *
 * - target: a QEMU it starts itself (paused, `-object memory-backend-memfd,id=ram0,size=M`). A
 *   paused guest has not touched its RAM, so the bench first reads it all once with
 *   process_vm_readv (untimed), which makes QEMU's memfd pages resident; every page is then
 *   present and read by the scans (zero content; copy and hash cost do not depend on content).
 * - copyGBps: plain process_vm_readv of the whole region in chunks of --chunk-kib into one
 *   buffer, no hashing, 3 passes (bytes per CPU-second; the copy runs in the syscall).
 * - hashGBps / hashScalarGBps: the page hash alone over one chunk-sized buffer, which stays in
 *   cache as the chunk just copied does during a scan (bytes per CPU-second).
 * - scanGBps: the real collector (exact mode, manual scans): bytes read and hashed per
 *   CPU-second of the scan thread (median of --scans scans); scanWallGBps uses wall time.
 *   serialGBps = 1 / (1/copy + 1/hash) is what copy-then-hash should give; scanVsSerial near 1
 *   means no overhead beyond the two (pagemap reads, compare, bitmap).
 * - cpuPercent: CPU of this whole process (all threads) while the collector is asked to scan the
 *   target every 100 ms (10 Hz) for --cpu-seconds, exact mode; cpuPercentSampled: same with
 *   mode 'sampled', f = 0.1. achievedHz tells whether 10 Hz was reached: a scan longer than
 *   the period makes the next ticks be skipped (late intervals), which caps the CPU cost.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { jsonOption, UsageError } from './args';
import { defineCommand } from './command';
import { native } from '../native';
import { findGuestRam, openGuestMemory, type GuestMemoryInterval, type GuestRamRegion } from '../sources/guest-memory';

const MiB = 1024 * 1024;

const options = {
  mib: { type: 'int', min: 16, max: 16384, default: 512, description: 'guest RAM of the QEMU target', unit: 'MiB' },
  chunkKib: { type: 'int', min: 64, max: 65536, default: 1024, description: 'bytes per process_vm_readv call', unit: 'KiB' },
  scans: { type: 'int', min: 3, max: 200, default: 10, description: 'timed scans (median reported)' },
  cpuSeconds: { type: 'number', min: 0, max: 60, default: 3, description: 'duration of each 10 Hz CPU measurement (0: skip)', unit: 's' },
  hash: { type: 'enum', choices: ['auto', 'avx2', 'scalar'], default: 'auto', description: 'page hash implementation for the scans' },
  qemu: { type: 'string', default: 'qemu-system-x86_64', description: 'QEMU binary for the target' },
  ...jsonOption,
} as const;

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const round = (x: number, digits = 2): number => Math.round(x * 10 ** digits) / 10 ** digits;
const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;
const cpuMs = (u: NodeJS.CpuUsage): number => (u.user + u.system) / 1000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function startQemu(binary: string, mib: number, signal: AbortSignal): Promise<{ child: ChildProcess; region: GuestRamRegion }> {
  const child = spawn(
    binary,
    ['-machine', 'pc,memory-backend=ram0', '-object', `memory-backend-memfd,id=ram0,size=${mib}M`, '-m', `${mib}M`,
      '-S', '-nodefaults', '-display', 'none', '-serial', 'none', '-monitor', 'none', '-accel', 'tcg'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const failed = new Promise<never>((_, reject) => {
    child.once('error', (e) => reject(new Error(`cannot start ${binary}: ${e.message}`)));
    child.once('exit', (code) => reject(new Error(`${binary} exited (${code}): ${stderr.trim()}`)));
  });
  failed.catch(() => {});
  const t0 = nowMs();
  for (;;) {
    if (signal.aborted) throw new Error('aborted');
    await Promise.race([sleep(50), failed]);
    try {
      return { child, region: findGuestRam(child.pid!, { ramName: 'ram0', ramBytes: mib * MiB }) };
    } catch (err) {
      if (nowMs() - t0 > 15_000) throw err;
    }
  }
}

/**
 * Copies the region once with process_vm_readv; returns [bytes, CPU ms, wall ms]. The CPU time is
 * the whole process's, but only this thread works meanwhile (the copy runs in the syscall).
 */
function copyPass(pid: number, region: GuestRamRegion, buf: Uint8Array): [number, number, number] {
  const c0 = process.cpuUsage();
  const w0 = nowMs();
  let bytes = 0;
  for (const seg of region.segments) {
    for (let off = 0; off < seg.bytes; off += buf.length) {
      const n = Math.min(buf.length, seg.bytes - off);
      bytes += native.guestmemReadInto(pid, seg.address + BigInt(off), n === buf.length ? buf : buf.subarray(0, n));
    }
  }
  return [bytes, cpuMs(process.cpuUsage(c0)), nowMs() - w0];
}

function hashRate(impl: 'avx2' | 'scalar', chunkBytes: number): number {
  const buf = new Uint8Array(chunkBytes);
  for (let i = 0; i < buf.length; i += 4) buf[i] = (i * 2654435761) >>> 24;
  const out = new BigUint64Array(chunkBytes / 4096);
  native.guestmemHashPages(buf, out, impl, 1n);
  let bytes = 0;
  const t0 = nowMs();
  const c0 = process.cpuUsage();
  while (nowMs() - t0 < 300) {
    for (let i = 0; i < 16; i++) native.guestmemHashPages(buf, out, impl, 1n);
    bytes += 16 * chunkBytes;
  }
  return bytes / (cpuMs(process.cpuUsage(c0)) * 1e6);
}

async function cpuAt10Hz(pid: number, region: GuestRamRegion, chunkBytes: number, seconds: number, sampled: boolean) {
  const src = openGuestMemory({ pid, segments: region.segments, intervalMs: 100, chunkBytes, ...(sampled ? { mode: 'sampled' as const, sampleFraction: 0.1 } : {}) });
  const intervals: GuestMemoryInterval[] = [];
  try {
    await src.ready;
    src.onInterval((iv) => intervals.push({ ...iv, bitmap: undefined }));
    const u0 = process.cpuUsage();
    const w0 = nowMs();
    await sleep(seconds * 1000);
    const wallMs = nowMs() - w0;
    const cpu = cpuMs(process.cpuUsage(u0));
    return {
      cpuPercent: (100 * cpu) / wallMs,
      scanThreadCpuPercent: (100 * intervals.reduce((s, i) => s + i.scanCpuUs, 0)) / 1000 / wallMs,
      intervals: intervals.length,
      achievedHz: intervals.length / (wallMs / 1000),
      medianScanCpuMs: intervals.length ? median(intervals.map((i) => i.scanCpuUs / 1000)) : 0,
      lateIntervals: intervals.filter((i) => i.late).length,
      medianScanMs: intervals.length ? median(intervals.map((i) => i.scanUs / 1000)) : 0,
    };
  } finally {
    await src.close();
  }
}

export const command = defineCommand({
  words: ['bench', 'scan'],
  summary: 'benchmark the guest-memory scanner (GB/s per core) against process_vm_readv and the hash alone',
  usage: '[--mib M] [--chunk-kib K] [--scans N] [--cpu-seconds S] [--json]',
  options,
  async run(o, _positionals, io) {
    if (o.chunkKib % 4) throw new UsageError(`--chunk-kib: must be a multiple of 4 (whole pages) from 64 to 65536 KiB (got ${o.chunkKib})`);
    if (o.hash === 'avx2' && !native.guestmemCpuHasAvx2()) throw new UsageError("--hash: 'avx2' requested but this CPU has no AVX2");
    const chunkBytes = o.chunkKib * 1024;
    const { child, region } = await startQemu(o.qemu, o.mib, io.signal);
    const pid = child.pid!;
    const exited = new Promise((r) => child.once('exit', r));
    try {
      // Copy: one untimed pass makes the paused guest's RAM resident, then timed passes.
      const buf = new Uint8Array(chunkBytes);
      copyPass(pid, region, buf);
      const copies: [number, number, number][] = [];
      for (let i = 0; i < 3; i++) copies.push(copyPass(pid, region, buf));
      const copyBytes = copies.reduce((s, c) => s + c[0], 0);
      const copyCpuMs = copies.reduce((s, c) => s + c[1], 0);
      const copyWallMs = copies.reduce((s, c) => s + c[2], 0);
      const copyGBps = copyBytes / (copyCpuMs * 1e6);
      const copyWallGBps = copyBytes / (copyWallMs * 1e6);

      const avx2 = native.guestmemCpuHasAvx2();
      const hashGBps = hashRate(avx2 && o.hash !== 'scalar' ? 'avx2' : 'scalar', chunkBytes);
      const hashScalarGBps = hashRate('scalar', chunkBytes);

      const src = openGuestMemory({ pid, segments: region.segments, manual: true, chunkBytes, hash: o.hash as 'auto' });
      const scans: GuestMemoryInterval[] = [];
      let hashImpl = '';
      try {
        hashImpl = src.hashImpl;
        await src.ready;
        for (let i = 0; i < o.scans; i++) {
          if (io.signal.aborted) return 130;
          scans.push(await src.scanOnce());
        }
      } finally {
        await src.close();
      }
      const scanGBps = median(scans.map((s) => s.bytesRead / (s.scanCpuUs * 1e3)));
      const scanWallGBps = median(scans.map((s) => s.bytesRead / (s.scanUs * 1e3)));
      const serialGBps = 1 / (1 / copyGBps + 1 / hashGBps);

      const cpu = o.cpuSeconds > 0 ? await cpuAt10Hz(pid, region, chunkBytes, o.cpuSeconds, false) : undefined;
      const cpuSampled = o.cpuSeconds > 0 ? await cpuAt10Hz(pid, region, chunkBytes, o.cpuSeconds, true) : undefined;

      const result = {
        targetMib: o.mib,
        chunkKib: o.chunkKib,
        hashImpl,
        pagesRead: scans[0]!.pagesRead,
        scanGBps: round(scanGBps),
        scanWallGBps: round(scanWallGBps),
        medianScanMs: round(median(scans.map((s) => s.scanUs / 1000)), 1),
        copyGBps: round(copyGBps),
        copyWallGBps: round(copyWallGBps),
        hashGBps: round(hashGBps),
        hashScalarGBps: round(hashScalarGBps),
        serialGBps: round(serialGBps),
        scanVsCopy: round(scanGBps / copyGBps, 3),
        scanVsSerial: round(scanGBps / serialGBps, 3),
        hashVsCopy: round(hashGBps / copyGBps, 3),
        meetsTarget2GBps: scanGBps >= 2,
        cpuPercentAt10Hz: cpu && round(cpu.cpuPercent, 1),
        scanThreadCpuPercentAt10Hz: cpu && round(cpu.scanThreadCpuPercent, 1),
        achievedHzAt10Hz: cpu && round(cpu.achievedHz, 1),
        lateIntervalsAt10Hz: cpu && `${cpu.lateIntervals}/${cpu.intervals}`,
        scanCpuMsAt10Hz: cpu && round(cpu.medianScanCpuMs, 1),
        cpuPercentSampledAt10Hz: cpuSampled && round(cpuSampled.cpuPercent, 1),
        achievedHzSampledAt10Hz: cpuSampled && round(cpuSampled.achievedHz, 1),
        scanCpuMsSampledAt10Hz: cpuSampled && round(cpuSampled.medianScanCpuMs, 1),
        hashStateBytesPerGiB: (8 * (1 << 30)) / 4096,
      };
      if (o.json) io.out(JSON.stringify(result) + '\n');
      else {
        io.out(
          [
            `guest-memory scan of a ${o.mib} MiB QEMU memfd, ${o.chunkKib} KiB chunks, hash ${hashImpl}`,
            `  scan          ${result.scanGBps} GB/s per core (wall ${result.scanWallGBps} GB/s, ${result.medianScanMs} ms per scan)`,
            `  copy only     ${result.copyGBps} GB/s   (process_vm_readv; scan/copy = ${result.scanVsCopy})`,
            `  hash only     ${result.hashGBps} GB/s   (scalar ${result.hashScalarGBps} GB/s; hash/copy = ${result.hashVsCopy})`,
            `  copy+hash     ${result.serialGBps} GB/s expected serially; scan/expected = ${result.scanVsSerial}`,
            `  target 2 GB/s per core: ${result.meetsTarget2GBps ? 'met' : 'NOT met'}`,
            cpu
              ? `  10 Hz asked, exact: ${result.cpuPercentAt10Hz}% CPU, ${result.achievedHzAt10Hz} Hz achieved (late ${result.lateIntervalsAt10Hz}, ${result.scanCpuMsAt10Hz} ms CPU per scan)\n` +
                `  10 Hz asked, sampled f=0.1: ${result.cpuPercentSampledAt10Hz}% CPU, ${result.achievedHzSampledAt10Hz} Hz achieved (${result.scanCpuMsSampledAt10Hz} ms CPU per scan)`
              : '  10 Hz CPU: skipped',
            `  hash state: ${result.hashStateBytesPerGiB / MiB} MiB per GiB of guest RAM`,
          ].join('\n') + '\n',
        );
      }
      return 0;
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  },
});
