/**
 * Pure parts of `dpa lab predict-check`: option checks, the CLI's list parsing and the zero-page
 * count of a guest-memory scan (run over plain bytes with known zero pages).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { parseNumberList } from '../../src/cli/lab-predict-check';
import { readFileSync } from 'node:fs';
import { zeroPageShare } from '../../src/lab/guest-ram';
import { checkPredictCheckOptions, measureVcpuBusy, parseTaskStat, tcpSendBufferMaxBytes } from '../../src/migrate/predict-check';

const PAGE = 4096;

function reader(bytes: Uint8Array): { read(gpa: number, buf: Uint8Array): void } {
  return { read: (gpa, buf) => buf.set(bytes.subarray(gpa, gpa + buf.length)) };
}

test('zeroPageShare counts exactly the all-zero pages, whatever byte of a page is set', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 600 }), fc.array(fc.tuple(fc.nat(), fc.nat({ max: PAGE - 1 }), fc.integer({ min: 1, max: 255 })), { maxLength: 80 }), (pages, writes) => {
      const ram = new Uint8Array(pages * PAGE);
      const dirty = new Set<number>();
      for (const [p, off, v] of writes) {
        const page = p % pages;
        ram[page * PAGE + off] = v;
        dirty.add(page);
      }
      assert.equal(zeroPageShare(reader(ram), ram.length), (pages - dirty.size) / pages);
    }),
    { numRuns: 60 },
  );
});

test('zeroPageShare reads a RAM size that is not a multiple of the 1 MiB chunk', () => {
  const pages = 256 + 3; // 1 MiB + 3 pages (the TCG pad makes RAM sizes like this)
  const ram = new Uint8Array(pages * PAGE);
  ram[(pages - 1) * PAGE + PAGE - 1] = 1; // the very last byte
  ram[0] = 1;
  assert.equal(zeroPageShare(reader(ram), ram.length), (pages - 2) / pages);
});

test('checkPredictCheckOptions names the bad option and its range', () => {
  assert.throws(() => checkPredictCheckOptions({ dirtyPagesPerSec: [] }), /dirtyPagesPerSec: must be a list of 1 to 12/);
  assert.throws(() => checkPredictCheckOptions({ dirtyPagesPerSec: [500, -1] }), /dirtyPagesPerSec\[1\]: must be a number from 0 to 100000/);
  assert.throws(() => checkPredictCheckOptions({ linkMbit: [5] }), /linkMbit\[0\]: must be a number from 10 to 10000/);
  assert.throws(() => checkPredictCheckOptions({ guestMib: 64 }), /guestMib: must be an integer from 96 to 512/);
  assert.throws(() => checkPredictCheckOptions({ memMib: 65 }), /memMib: must be an integer from 1 to 64/);
  assert.throws(() => checkPredictCheckOptions(null as never), TypeError);
  assert.throws(() => checkPredictCheckOptions({ mirrorFixedMs: -1 }), /mirrorFixedMs: must be a number from 0 to 10000/);
  assert.throws(() => checkPredictCheckOptions({ switchoverFixedMs: 20_000 }), /switchoverFixedMs: must be a number from 0 to 10000/);
  assert.throws(() => checkPredictCheckOptions({ traceIntervalMs: 5 }), /traceIntervalMs: must be an integer from 20 to 1000/);
  assert.throws(() => checkPredictCheckOptions({ traceIntervalMs: 40.5 }), /traceIntervalMs: must be an integer from 20 to 1000/);
  assert.doesNotThrow(() => checkPredictCheckOptions({ traceIntervalMs: 0 }));
  assert.doesNotThrow(() => checkPredictCheckOptions({ dirtyPagesPerSec: [0, 12000], linkMbit: [100, 200], diskMib: 16, traceIntervalMs: 40 }));
});

test('parseNumberList parses a comma list and rejects bad items by option name', () => {
  assert.deepEqual(parseNumberList('rates', '500, 4000,12000', 0, 100_000, 12), [500, 4000, 12000]);
  assert.throws(() => parseNumberList('rates', '500,,4000', 0, 100_000, 12), /--rates: must be a comma-separated list/);
  assert.throws(() => parseNumberList('links', '100,abc', 10, 10_000, 6), /--links: each value must be a number from 10 to 10000 \(got "abc"\)/);
  assert.throws(() => parseNumberList('links', '1,2,3,4,5,6,7', 1, 10, 6), /1 to 6 numbers/);
});

test('parseTaskStat: thread name with spaces and parentheses, utime + stime in ticks', () => {
  // Fields after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
  const line = '4242 (CPU 0/TCG) (x)) S 1 4242 4242 0 -1 4194624 10 0 0 0 1234 56 0 0 20 0 3 0 100 0 0';
  assert.deepEqual(parseTaskStat(line), { comm: 'CPU 0/TCG) (x)', cpuTicks: 1290 });
  assert.throws(() => parseTaskStat('4242 no comm here'), /no \(comm\) field/);
  assert.throws(() => parseTaskStat('1 (a) S 1 2'), /utime\/stime/);
  // A real one: this process's main thread has used CPU to get here.
  const self = parseTaskStat(readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8'));
  assert.ok(self.cpuTicks > 0 && self.comm.length > 0);
});

test('measureVcpuBusy: a process without vCPU threads is an error, not a zero', async () => {
  await assert.rejects(measureVcpuBusy(process.pid, 10), /no vCPU thread/);
});

test('tcpSendBufferMaxBytes: the third field of net.ipv4.tcp_wmem, Linux default when unusable', () => {
  assert.equal(tcpSendBufferMaxBytes('4096\t16384\t4194304\n'), 4194304);
  assert.equal(tcpSendBufferMaxBytes('4096 87380 6291456'), 6291456);
  assert.equal(tcpSendBufferMaxBytes('4096 16384'), 4 * 1024 * 1024);
  assert.equal(tcpSendBufferMaxBytes('a b c'), 4 * 1024 * 1024);
  // This host's own value, as the kernel reports it.
  const host = Number(readFileSync('/proc/sys/net/ipv4/tcp_wmem', 'utf8').trim().split(/\s+/)[2]);
  assert.equal(tcpSendBufferMaxBytes(), host);
});
