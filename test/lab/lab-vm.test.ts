/**
 * The QEMU lab end to end, on real QEMU (TCG): boot the dpa guest, drive its memory and disk
 * workloads, check what they report against what the host sees (guest RAM read through the GPAs
 * the guest reports, the disk image, QMP block stats), and check that no QEMU outlives its owner.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildGuestImage, type GuestImage } from '../../src/lab/guest-image';
import { checkUnit, digestTerm, DISK_MAGIC, MEM_MAGIC, parseHex64 } from '../../src/lab/guest-pattern';
import { decodePageSet, expandGpaRuns, type GuestIntervalEvent } from '../../src/lab/guest-protocol';
import { findRamSegments, GuestPhysMemory } from '../../src/lab/guest-ram';
import { processAlive } from '../../src/lab/processes';
import { LabVm, reapOrphanedVms } from '../../src/lab/vm';
import { needs, qemuMissing } from '../helpers/prereq';

const BOOT_LIMIT_MS = 30_000;
const BUFFER_MIB = 16;
const BUFFER_PAGES = (BUFFER_MIB * 1024 * 1024) / 4096;
const DISK_MIB = 32;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Live (non-zombie) children of this process whose command is QEMU. */
function qemuChildren(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const fields = stat.slice(close + 2).split(' ');
      if (Number(fields[1]) === process.pid && stat.includes('(qemu-system') && processAlive(Number(name))) pids.push(Number(name));
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

function popcount(bits: Uint8Array): number {
  let n = 0;
  for (const b of bits) for (let v = b; v; v &= v - 1) n++;
  return n;
}

function bitSet(bits: Uint8Array, i: number): boolean {
  return ((bits[i >> 3]! >> (i & 7)) & 1) === 1;
}

function blockStats(stats: Array<{ qdev?: string; stats: Record<string, number> }>): Record<string, number> {
  const s = stats.find((d) => d.qdev?.includes('/root/'));
  assert.ok(s, `no block device with qdev .../root/... in ${JSON.stringify(stats.map((d) => d.qdev))}`);
  return s.stats;
}

describe('lab VM on QEMU (TCG)', needs('qemu', qemuMissing()), () => {
  let guest: GuestImage;
  let vm: LabVm;
  const intervals: GuestIntervalEvent[] = [];
  /** Union of every reported pageSet: pages the workload wrote at least once. */
  const everWritten = new Uint8Array(BUFFER_PAGES / 8);

  before(async () => {
    guest = await buildGuestImage();
    vm = await LabVm.start({ guest, guestMib: 256, disk: { sizeMib: DISK_MIB } });
    vm.channel.on('interval', (ev) => {
      intervals.push(ev);
      if (ev.mem?.pageSet) decodePageSet(ev.mem.pageSet).forEach((b, i) => (everWritten[i]! |= b));
    });
  });

  after(async () => {
    await vm?.stop();
  });

  test('boots to the workload ready line within the limit, sockets private', async () => {
    const ready = await vm.ready(BOOT_LIMIT_MS);
    process.stderr.write(`lab: boot to ready ${vm.bootMs!.toFixed(0)} ms (guest uptime ${ready.uptimeMs} ms), kernel ${guest.manifest.kernelRelease}\n`);
    assert.ok(vm.bootMs! < BOOT_LIMIT_MS);
    assert.equal(ready.diskBytes, DISK_MIB * 1024 * 1024);
    assert.equal(ready.cpus, 1);
    assert.ok(ready.memTotalBytes > 150 * 2 ** 20 && ready.memTotalBytes <= 256 * 2 ** 20, `memTotalBytes ${ready.memTotalBytes}`);
    assert.equal(statSync(vm.dir).mode & 0o777, 0o700);
    assert.equal(statSync(vm.qmpSocketPath).mode & 0o777, 0o600);
    assert.equal(statSync(vm.channelSocketPath).mode & 0o777, 0o600);
    // RAM is where guest-ram.ts says: one shared 256 MiB mapping of the memfd QEMU names by type.
    const ram = vm.guestRam();
    assert.equal(ram.ramName, 'memory-backend-memfd');
    const segs = findRamSegments(ram);
    assert.equal(segs.length, 1);
    assert.equal(Number(segs[0]!.end - segs[0]!.start), 256 * 2 ** 20);
    assert.match(readFileSync(`/proc/${vm.pid}/maps`, 'utf8'), /^[0-9a-f]+-[0-9a-f]+ rw-s 00000000 \S+ \d+ +\/memfd:memory-backend-memfd \(deleted\)$/m);
    const status = await vm.qmp.execute<{ running: boolean; status: string }>('query-status');
    assert.equal(status.status, 'running');
  });

  test('memory workload: counts follow rate and pattern, self-verification passes', async () => {
    await vm.reports({ intervalMs: 250, pageSets: true });
    const firstSeq = intervals.length;

    // Sequential over 4096 pages at 1000 pages/s for 2 s: no page repeats, so every interval's
    // distinct pages equal its writes, and its page set is one contiguous range.
    const t0 = Date.now();
    const started = await vm.memStart({ mib: BUFFER_MIB, hotPages: 4096, pattern: 'sequential', ratePagesPerSec: 1000, seed: 7 });
    assert.equal(started.pages, BUFFER_PAGES);
    assert.equal(started.running, true);
    await sleep(2000);
    const seq = await vm.memStop();
    const seqRate = seq.totalWrites / ((Date.now() - t0) / 1000);
    // Never above the target; below it only as far as a loaded host starves TCG's vCPU.
    assert.ok(seqRate > 600 && seqRate <= 1050, `sequential rate ${seqRate.toFixed(0)} pages/s, asked 1000`);
    await waitFor('the report after mem-stop', () => intervals.some((e, i) => i >= firstSeq && e.mem?.running === false), 5000);
    const seqReports = intervals.slice(firstSeq);
    assert.equal(seqReports.reduce((n, e) => n + (e.mem?.writes ?? 0), 0), seq.totalWrites, 'interval writes add up to the total');
    for (const e of seqReports) {
      const set = decodePageSet(e.mem!.pageSet!);
      assert.equal(e.mem!.distinctPages, e.mem!.writes);
      assert.equal(popcount(set), e.mem!.distinctPages);
    }

    // Uniform over a 1024-page hot set at 2000 pages/s: pages only inside the hot set, and the
    // distinct count close to the expectation for uniform draws, 1024 (1 - e^(-w/1024)).
    const uniFirst = intervals.length;
    await vm.memStart({ mib: BUFFER_MIB, hotPages: 1024, pattern: 'uniform', ratePagesPerSec: 2000, seed: 11 });
    await sleep(1500);
    const uni = await vm.memStop();
    assert.equal(uni.pages, BUFFER_PAGES, 'same size keeps the buffer');
    assert.equal(uni.tag, started.tag, 'same size keeps the run tag');
    await waitFor('the report after mem-stop', () => intervals.some((e, i) => i >= uniFirst && e.mem?.running === false), 5000);
    for (const e of intervals.slice(uniFirst)) {
      const set = decodePageSet(e.mem!.pageSet!);
      for (let i = 1024; i < BUFFER_PAGES; i++) assert.ok(!bitSet(set, i), `uniform wrote page ${i} outside its hot set`);
      if (e.mem!.writes >= 200) {
        const expected = 1024 * (1 - Math.exp(-e.mem!.writes / 1024));
        assert.ok(Math.abs(e.mem!.distinctPages - expected) < 0.1 * expected + 10, `uniform distinct ${e.mem!.distinctPages} for ${e.mem!.writes} writes, expected ~${expected.toFixed(0)}`);
      }
    }

    // Zipf(1.2) over 4096 pages: far fewer distinct pages than uniform draws would give, and
    // rank 0 (page 0) in every busy interval.
    const zipfFirst = intervals.length;
    await vm.memStart({ mib: BUFFER_MIB, hotPages: 4096, pattern: 'zipf', zipfS: 1.2, ratePagesPerSec: 2000, seed: 13 });
    await sleep(1500);
    await vm.memStop();
    await waitFor('the report after mem-stop', () => intervals.some((e, i) => i >= zipfFirst && e.mem?.running === false), 5000);
    let busy = 0;
    for (const e of intervals.slice(zipfFirst)) {
      if (e.mem!.writes < 200) continue;
      busy++;
      const uniformExpected = 4096 * (1 - Math.exp(-e.mem!.writes / 4096));
      assert.ok(e.mem!.distinctPages < 0.6 * uniformExpected, `zipf distinct ${e.mem!.distinctPages} vs uniform ~${uniformExpected.toFixed(0)}`);
      assert.ok(bitSet(decodePageSet(e.mem!.pageSet!), 0), 'the hottest page is written in every busy interval');
    }
    assert.ok(busy >= 3, `only ${busy} busy zipf intervals`);

    const v = await vm.verify('mem');
    assert.equal(v.mem!.pages, BUFFER_PAGES);
    assert.equal(v.mem!.badPages, 0, `bad pages ${JSON.stringify(v.mem!.firstBad)}`);
    assert.equal(v.mem!.contentDigest, v.mem!.digest);
    assert.equal(v.disk, undefined);
  });

  test('the host reads the buffer at the reported GPAs and sees the workload pattern; host writes are caught', async () => {
    const q = await vm.quiesce();
    const report = await vm.reportGpa();
    assert.equal(report.pages, BUFFER_PAGES);
    assert.equal(report.unmappedPages, 0);
    assert.equal(report.tag, q.mem.tag);
    const gpas = expandGpaRuns(report);
    const ram = vm.guestRam();
    assert.equal(ram.lowRamBytes, 256 * 2 ** 20);
    assert.equal(new Set(gpas).size, BUFFER_PAGES, 'every buffer page has its own frame');
    const tag = parseHex64(report.tag);
    const phys = new GuestPhysMemory(ram, { writable: true });
    try {
      const page = new Uint8Array(4096);
      let digest = 0n;
      let written = 0;
      for (let i = 0; i < BUFFER_PAGES; i++) {
        const gpa = gpas[i]!;
        assert.ok(Number.isInteger(gpa) && gpa % 4096 === 0 && gpa < ram.lowRamBytes, `gpa of page ${i}: ${gpa}`);
        phys.read(gpa, page);
        const c = checkUnit(page, 0, MEM_MAGIC);
        assert.ok(c.ok, `page ${i} at gpa 0x${gpa.toString(16)} does not hold the workload's pattern`);
        assert.equal(c.id, BigInt(i));
        assert.equal(c.tag, tag);
        // The pattern: a page the reports said was written has a generation > 0, every other
        // page still holds the initial fill.
        assert.equal(c.generation > 0n, bitSet(everWritten, i), `page ${i}: generation ${c.generation}, reported written ${bitSet(everWritten, i)}`);
        if (c.generation > 0n) written++;
        digest ^= digestTerm(c.id, c.generation);
      }
      assert.equal(digest, parseHex64(q.mem.digest), 'digest of guest RAM as the host reads it = the guest workload digest');
      assert.ok(written > 2000 && written < BUFFER_PAGES, `${written} pages written`);

      // Flip one fill word of buffer page 7 from the host: the guest's check must name that page.
      const word = new Uint8Array(8);
      phys.read(gpas[7]! + 800, word);
      const flipped = word.map((b) => b ^ 0xff);
      phys.write(gpas[7]! + 800, flipped);
      const bad = await vm.verify('mem');
      assert.equal(bad.mem!.badPages, 1);
      assert.deepEqual(bad.mem!.firstBad, [7]);
      assert.equal(bad.mem!.contentDigest, bad.mem!.digest, 'headers intact: only the content check fails');
      phys.write(gpas[7]! + 800, word);
      assert.equal((await vm.verify('mem')).mem!.badPages, 0);
    } finally {
      phys.close();
    }
  });

  test('disk workload: every write reaches QEMU, the image holds the blocks, corruption is caught', async () => {
    const before0 = blockStats(await vm.qmp.execute('query-blockstats'));
    const t0 = Date.now();
    await vm.diskStart({ blocksPerSec: 200, regionBlocks: 512, pattern: 'sequential', mode: 'direct', seed: 3 });
    await sleep(1500);
    const d = await vm.diskStop();
    const rate = d.totalWrites / ((Date.now() - t0) / 1000);
    assert.ok(rate > 120 && rate <= 210, `disk rate ${rate.toFixed(0)} blocks/s, asked 200`);
    assert.equal(d.lastError, null);
    const after1 = blockStats(await vm.qmp.execute('query-blockstats'));
    // O_DIRECT 4 KiB writes, one at a time, nothing else writing: QEMU counts exactly ours.
    assert.equal(after1.wr_operations! - before0.wr_operations!, d.totalWrites);
    assert.equal(after1.wr_bytes! - before0.wr_bytes!, d.totalWrites * 4096);

    const v = await vm.verify('disk');
    assert.equal(v.disk!.error, null);
    assert.equal(v.disk!.checkedBlocks, d.totalWrites, 'sequential, first pass: one block per write');
    assert.equal(v.disk!.badBlocks, 0);

    // The image file, read by the host, holds each written block with its offset and generation 1.
    const fd = openSync(vm.diskPath!, 'r+');
    try {
      const block = new Uint8Array(4096);
      for (let b = 0; b < d.totalWrites; b++) {
        readSync(fd, block, 0, 4096, b * 4096);
        const c = checkUnit(block, 0, DISK_MAGIC);
        assert.ok(c.ok && c.id === BigInt(b * 4096) && c.generation === 1n, `block ${b}: ${JSON.stringify({ ok: c.ok, id: String(c.id), gen: String(c.generation) })}`);
      }
      readSync(fd, block, 0, 4096, d.totalWrites * 4096);
      assert.ok(block.every((x) => x === 0), 'the first unwritten block is still zero');

      // Corrupt block 3 behind the guest's back: its O_DIRECT read-back must catch it.
      readSync(fd, block, 0, 4096, 3 * 4096);
      const saved = block.slice();
      block[2000] ^= 0x01;
      writeSync(fd, block, 0, 4096, 3 * 4096);
      const bad = await vm.verify('disk');
      assert.equal(bad.disk!.badBlocks, 1);
      assert.deepEqual(bad.disk!.firstBad, [3]);
      writeSync(fd, saved, 0, 4096, 3 * 4096);
    } finally {
      closeSync(fd);
    }

    // Buffered + fdatasync mode, uniform over the same region (generations carry on).
    await vm.diskStart({ blocksPerSec: 200, regionBlocks: 512, pattern: 'uniform', mode: 'fsync', seed: 5 });
    await sleep(1000);
    const f = await vm.diskStop();
    assert.ok(f.totalWrites > d.totalWrites + 60, `fsync run wrote ${f.totalWrites - d.totalWrites} blocks`);
    assert.ok(f.totalSyncs > 20, `${f.totalSyncs} syncs`);
    const after2 = blockStats(await vm.qmp.execute('query-blockstats'));
    assert.ok(after2.flush_operations! - after1.flush_operations! >= f.totalSyncs, 'each fdatasync reached QEMU as a flush');
    const v2 = await vm.verify('disk');
    assert.equal(v2.disk!.badBlocks, 0);
    assert.ok(v2.disk!.checkedBlocks > d.totalWrites, 'uniform writes covered blocks beyond the sequential prefix');

    // Four lanes (queue depth 4), sequential: lane l writes blocks l, l+4, l+8, … at a quarter of
    // the rate each (~100 of its 128 blocks in 1 s), so each of the first 16 blocks is written
    // exactly once more, by its own lane, whatever it held before.
    const firstGenerations = (): bigint[] => {
      const out: bigint[] = [];
      const fd3 = openSync(vm.diskPath!, 'r');
      try {
        const block = new Uint8Array(4096);
        for (let b = 0; b < 16; b++) {
          readSync(fd3, block, 0, 4096, b * 4096);
          const c = checkUnit(block, 0, DISK_MAGIC);
          assert.ok(c.ok && c.id === BigInt(b * 4096), `block ${b} holds its own offset`);
          out.push(c.generation);
        }
      } finally {
        closeSync(fd3);
      }
      return out;
    };
    const gens0 = firstGenerations();
    await vm.diskStart({ blocksPerSec: 400, regionBlocks: 512, pattern: 'sequential', mode: 'direct', seed: 9, queueDepth: 4 });
    await sleep(1000);
    const q = await vm.diskStop();
    assert.equal(q.queueDepth, 4);
    assert.equal(q.lastError, null);
    const laneWrites = q.totalWrites - f.totalWrites;
    assert.ok(laneWrites > 200 && laneWrites <= 480, `4 lanes wrote ${laneWrites} blocks in 1 s, asked 400/s`);
    const after3 = blockStats(await vm.qmp.execute('query-blockstats'));
    assert.equal(after3.wr_operations! - after2.wr_operations!, laneWrites, 'every lane write reached QEMU once');
    const v3 = await vm.verify('disk');
    assert.equal(v3.disk!.badBlocks, 0);
    const gens1 = firstGenerations();
    assert.deepEqual(gens1.map((g, b) => g - gens0[b]!), new Array<bigint>(16).fill(1n), 'blocks 0..15: one more generation each');
  });

  test('bad workload parameters are refused before anything is sent', async () => {
    await assert.rejects(vm.memStart({ mib: 0 }), /mib: must be an integer from 1 to 65536/);
    await assert.rejects(vm.memStart({ pattern: 'random' as never }), /pattern: must be one of uniform, sequential, zipf/);
    await assert.rejects(vm.diskStart({ blockBytes: 6000 }), /blockBytes: must be a multiple of 4096/);
    // The guest checks what only it knows: the disk size.
    await assert.rejects(vm.diskStart({ regionBlocks: 1_000_000 }), /regionBlocks must be in \[1, 8192\]/);
    assert.equal((await vm.ping()).uptimeMs > 0, true);
  });

  test('stop quits QEMU through QMP and leaves no process or directory behind', async () => {
    const pid = vm.pid;
    const dir = vm.dir;
    assert.deepEqual(qemuChildren(), [pid]);
    const exit = await vm.stop();
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.equal(processAlive(pid), false);
    assert.deepEqual(qemuChildren(), []);
    assert.throws(() => statSync(dir), /ENOENT/);
  });
});

test('workloads start from the kernel command line; a qcow2 disk is the LXD-named node', needs('qemu', qemuMissing()), async (t) => {
  const guest = await buildGuestImage();
  const vm = await LabVm.start({
    guest,
    guestMib: 128,
    disk: { sizeMib: 16, format: 'qcow2' },
    kernelArgs: ['dpa.reports=intervalMs:200', 'dpa.mem=mib:4,pattern:sequential,ratePagesPerSec:500', 'dpa.disk=blocksPerSec:100,regionBlocks:64'],
  });
  t.after(() => vm.stop());
  const nodes = await vm.qmp.execute<Array<{ 'node-name': string; drv: string; image: { 'actual-size'?: number } }>>('query-named-block-nodes', { flat: true });
  const root = nodes.find((n) => n['node-name'] === 'lxd_root');
  assert.equal(root?.drv, 'qcow2');
  const sizeBefore = root.image['actual-size']!;
  const block = await vm.qmp.execute<Array<{ qdev: string; inserted?: { 'node-name': string } }>>('query-block');
  assert.ok(block.some((b) => b.qdev === '/machine/peripheral/root/virtio-backend' && b.inserted?.['node-name'] === 'lxd_root'), JSON.stringify(block));

  await vm.ready(BOOT_LIMIT_MS);
  const seen: GuestIntervalEvent[] = [];
  vm.channel.on('interval', (e) => seen.push(e));
  await waitFor('interval reports with memory and disk writes', () => seen.filter((e) => (e.mem?.writes ?? 0) > 0 && (e.disk?.writes ?? 0) > 0).length >= 3, 15_000);
  const st = await vm.status();
  assert.equal(st.mem.pattern, 'sequential');
  assert.equal(st.mem.pages, 1024);
  assert.equal(st.mem.running, true);
  assert.equal(st.disk.regionBlocks, 64);
  assert.equal(st.disk.mode, 'direct');
  const busy = seen.filter((e) => e.seq > 0 && e.mem!.running);
  // The pacer makes up for at most 50 ms of lost vCPU time (25 pages at 500/s) plus one tick.
  assert.ok(busy.every((e) => e.mem!.writes <= 500 * (e.intervalMs / 1000) + 30), `never faster than asked: ${JSON.stringify(busy.map((e) => [e.mem!.writes, e.intervalMs]))}`);
  await vm.quiesce();
  const after = (await vm.qmp.execute<typeof nodes>('query-named-block-nodes', { flat: true })).find((n) => n['node-name'] === 'lxd_root')!;
  assert.ok(after.image['actual-size']! > sizeBefore, `qcow2 grew: ${sizeBefore} -> ${after.image['actual-size']}`);
  assert.equal((await vm.verify()).disk!.badBlocks, 0);
});

test('QEMU refusing its command line: start() rejects with QEMU\'s message, no process or directory left', needs('qemu', qemuMissing()), async () => {
  const parentDir = mkdtempSync(join(tmpdir(), 'dpa-lab-test-'));
  try {
    const guest = await buildGuestImage();
    await assert.rejects(LabVm.start({ guest, guestMib: 96, disk: null, parentDir, extraArgs: ['-no-such-option'] }), /QEMU exited while starting \(status 1\): .*-no-such-option: invalid option/);
    assert.deepEqual(readdirSync(parentDir), []);
    assert.deepEqual(qemuChildren(), []);
  } finally {
    rmSync(parentDir, { recursive: true, force: true });
  }
});

describe('no QEMU outlives the process that started it', needs('qemu', qemuMissing()), () => {
  let guest: GuestImage;
  let parentDir: string;
  before(async () => {
    guest = await buildGuestImage();
    parentDir = mkdtempSync(join(tmpdir(), 'dpa-lab-test-'));
  });
  after(() => rmSync(parentDir, { recursive: true, force: true }));

  const childScript = join(__dirname, 'fixtures', 'lab-crash-child.js');

  async function runChild(mode: string, signal?: NodeJS.Signals): Promise<{ qemuPid: number; code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
    const child = spawn(process.execPath, [childScript], {
      env: { ...process.env, DPA_LAB_CHILD_MODE: mode, DPA_LAB_GUEST_DIR: guest.dir, DPA_LAB_PARENT_DIR: parentDir },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) => child.once('exit', (c, s) => r([c, s])));
    await Promise.race([waitFor('the child to print its QEMU pid', () => stdout.includes('\n'), 20_000), exited]);
    const qemuPid = (JSON.parse(stdout.split('\n')[0]!) as { pid: number }).pid;
    assert.ok(processAlive(qemuPid), 'QEMU runs while its owner lives');
    if (signal) child.kill(signal);
    else child.stdin.write('go\n');
    const [code, sig] = await exited;
    return { qemuPid, code, signal: sig, stderr };
  }

  for (const [mode, signal, expect] of [
    ['throw', undefined, { code: 1, signal: null }],
    ['reject', undefined, { code: 1, signal: null }],
    ['exit', undefined, { code: 0, signal: null }],
    ['wait', 'SIGTERM', { code: null, signal: 'SIGTERM' }],
  ] as const) {
    test(`owner ends by ${signal ?? mode}: its QEMU is killed`, async () => {
      const r = await runChild(mode, signal);
      assert.deepEqual({ code: r.code, signal: r.signal }, expect, r.stderr);
      await waitFor(`QEMU ${r.qemuPid} to be gone`, () => !processAlive(r.qemuPid), 3000);
    });
  }

  test('owner SIGKILLed: reapOrphanedVms() kills the orphan and removes its directory', async () => {
    const r = await runChild('wait', 'SIGKILL');
    assert.equal(r.signal, 'SIGKILL');
    assert.ok(processAlive(r.qemuPid), 'SIGKILL cannot be caught: the QEMU is orphaned');
    const killed = await reapOrphanedVms(parentDir);
    assert.ok(killed.includes(r.qemuPid), `reaped ${JSON.stringify(killed)}`);
    await waitFor(`QEMU ${r.qemuPid} to be gone`, () => !processAlive(r.qemuPid), 3000);
    assert.deepEqual(readdirSync(parentDir), [], 'every dead owner’s directory is removed');
  });
});
