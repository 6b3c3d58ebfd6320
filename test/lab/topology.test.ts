/**
 * Lab network topology on the real kernel: namespaces, veth, tc tbf, real TCP across it.
 * Needs root and iproute2; the ping checks use `ping` or busybox's.
 */
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import fc from 'fast-check';
import type { CommandIO } from '../../src/cli/command';
import { runCli } from '../../src/cli/main';
import { run, runJson } from '../../src/lab/exec';
import {
  chooseSubnet,
  cidrsOverlap,
  createTopology,
  FAIR_QUEUE_BUCKETS,
  formatCidr,
  GUARD_ROUTE_METRIC,
  labNames,
  measureThroughput,
  parseCidr,
  parseLabName,
  rateFromSamples,
  reapStale,
  spawnInNs,
  startNsSink,
  type CounterSample,
  type Topology,
} from '../../src/lab/netns';
import { needs, rootMissing } from '../helpers/prereq';

const iprouteMissing = (): string | null => {
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    execFileSync('tc', ['-V'], { stdio: 'ignore' });
    return null;
  } catch (err) {
    return `ip/tc not runnable (${(err as NodeJS.ErrnoException).code}): install iproute2`;
  }
};

/** Prerequisites plus a time limit, so a wedged kernel call fails the test instead of hanging CI. */
function labPrereq(timeoutMs = 60_000): { skip?: string; timeout: number } {
  const root = needs('root', rootMissing());
  return { ...(root.skip ? root : needs('iproute2', iprouteMissing())), timeout: timeoutMs };
}

/** `ping` when installed, else busybox's (scripts/setup-host.sh installs busybox-static). */
function pingArgv(): string[] | null {
  for (const argv of [['ping'], ['busybox', 'ping']]) {
    try {
      execFileSync(argv[0]!, [...argv.slice(1), '-c1', '-W1', '127.0.0.1'], { stdio: 'ignore', timeout: 5_000 });
      return argv;
    } catch {
      // try the next one
    }
  }
  return null;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function netnsNames(): Promise<string[]> {
  return (await runJson<Array<{ name: string }>>('ip', ['-j', 'netns', 'list'])).map((e) => e.name);
}
async function linkNames(): Promise<string[]> {
  return (await runJson<Array<{ ifname: string }>>('ip', ['-j', 'link', 'show'])).map((e) => e.ifname);
}
async function guardRoutes(): Promise<string[]> {
  const routes = await runJson<Array<{ dst?: string; metric?: number }>>('ip', ['-j', '-4', 'route', 'show', 'type', 'unreachable']);
  return routes.filter((r) => r.metric === GUARD_ROUTE_METRIC).map((r) => r.dst!);
}

/** Gone or a zombie waiting for a reaper we do not control. */
function processGone(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.startsWith('Z');
  } catch {
    return true;
  }
}

async function assertNothingLeft(what: { nsName: string; hostIf: string; subnet: string }): Promise<void> {
  assert.ok(!(await netnsNames()).includes(what.nsName), `namespace ${what.nsName} left behind`);
  assert.ok(!(await linkNames()).includes(what.hostIf), `veth ${what.hostIf} left behind`);
  assert.ok(!(await guardRoutes()).includes(what.subnet), `guard route ${what.subnet} left behind`);
}

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

test('lab names fit IFNAMSIZ, parse back to owner and index, and never match another prefix', () => {
  fc.assert(
    fc.property(fc.stringMatching(/^[a-z]{1,3}$/), fc.integer({ min: 0, max: 4_194_304 }), fc.integer({ min: 0, max: 999 }), (prefix, pid, index) => {
      const n = labNames(prefix, pid, index);
      for (const name of [n.nsName, n.hostIf, n.nsIf]) assert.ok(name.length <= 15, name);
      assert.deepEqual(parseLabName(prefix, n.nsName), { ownerPid: pid, index, role: 'ns' });
      assert.deepEqual(parseLabName(prefix, n.hostIf), { ownerPid: pid, index, role: 'host' });
      assert.deepEqual(parseLabName(prefix, n.nsIf), { ownerPid: pid, index, role: 'peer' });
      const other = prefix === 'zz' ? 'zy' : 'zz';
      assert.equal(parseLabName(other, n.nsName), null);
    }),
  );
  assert.equal(parseLabName('dpa', 'dpa12-3x'), null);
  assert.equal(parseLabName('dpa', 'dpa012-3'), null, 'leading zero is not a pid we made');
  assert.throws(() => labNames('dpa', 1, 1000), /index: must be an integer from 0 to 999/);
});

test('chooseSubnet picks a /30 inside the pool that overlaps nothing occupied, or null when full', () => {
  const cidr = fc.tuple(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 8, max: 32 })).map(([ip, len]) => parseCidr(`${[ip >>> 24, (ip >>> 16) & 255, (ip >>> 8) & 255, ip & 255].join('.')}/${len}`));
  const pool = fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 22, max: 28 })).map(([b, len]) => parseCidr(`10.${b}.0.0/${len}`));
  fc.assert(
    fc.property(pool, fc.array(cidr, { maxLength: 30 }), fc.nat(), (p, occupied, start) => {
      const got = chooseSubnet(p, occupied, start);
      if (got === null) {
        // Full: every /30 of the pool must be hit by something.
        for (let b = p.base; b < p.base + 2 ** (32 - p.prefixLen); b += 4) {
          assert.ok(occupied.some((o) => cidrsOverlap(o, { base: b, prefixLen: 30 })), `free ${formatCidr({ base: b, prefixLen: 30 })} missed`);
        }
        return;
      }
      assert.equal(got.prefixLen, 30);
      assert.ok(cidrsOverlap(p, got) && got.base >= p.base, `${formatCidr(got)} outside ${formatCidr(p)}`);
      for (const o of occupied) assert.ok(!cidrsOverlap(o, got), `${formatCidr(got)} overlaps ${formatCidr(o)}`);
    }),
  );
  assert.equal(chooseSubnet(parseCidr('10.9.0.0/29'), [parseCidr('10.9.0.0/30'), parseCidr('10.9.0.6/32')], 0), null);
  assert.deepEqual(chooseSubnet(parseCidr('10.9.0.0/29'), [parseCidr('10.9.0.1/32')], 0), parseCidr('10.9.0.4/30'));
});

test('rateFromSamples measures from warm-up to the last growing sample', () => {
  // 0-100 ms: burst of 50 kB; then 1000 B/ms steady until 1000 ms; then idle.
  const samples: CounterSample[] = [];
  for (let t = 0; t <= 1500; t += 50) {
    const bytes = t < 50 ? 0 : t <= 100 ? 50_000 : t <= 1000 ? 50_000 + (t - 100) * 1000 : 950_000;
    samples.push({ tMs: t, bytes });
  }
  assert.equal(rateFromSamples(samples, 200), 1_000_000);
  assert.throws(() => rateFromSamples([{ tMs: 0, bytes: 0 }], 100), /no bytes/);
  assert.throws(() => rateFromSamples(samples, 2000), /less than the 2000 ms warm-up/);
});

test('bad options are refused with the option and its range before any command runs', async () => {
  await assert.rejects(createTopology({ linkMbit: 0 }), { name: 'RangeError', message: /linkMbit: must be a number from 1 to 10000 Mbit\/s \(got 0\)/ });
  await assert.rejects(createTopology({ linkMbit: NaN }), RangeError);
  await assert.rejects(createTopology({ linkMbit: 10, name: 'toolong' }), { name: 'TypeError', message: /name: must be 1 to 3 lowercase letters/ });
  await assert.rejects(createTopology({ linkMbit: 10, burstBytes: 100 }), /burstBytes: must be an integer from 1600 to 67108864 bytes/);
  await assert.rejects(createTopology({ linkMbit: 10, latencyMs: 0 }), /latencyMs: must be an integer from 1 to 10000 ms/);
  await assert.rejects(createTopology({ linkMbit: 10, pool: '10.0.0.0/31' }), /pool: prefix length must be from 8 to 30/);
  await assert.rejects(createTopology({ linkMbit: 10, pool: '10.0.0/16' }), /pool: must be an IPv4 CIDR/);
  await assert.rejects(createTopology({ linkMbit: 10, queue: 'sfq' as never }), { name: 'RangeError', message: /queue: must be 'fifo' or 'fair' \(got "sfq"\)/ });
  assert.throws(() => spawnInNs('ns; rm -rf /', 'true'), /namespace name: must match/);
  assert.throws(() => spawnInNs('-n', 'true'), TypeError);
  assert.throws(() => spawnInNs('dpa1-1', '--help'), /cmd: must be a non-empty string not starting with '-'/);
  await assert.rejects(run('ip', ['link', 'show', 'dev', 'no-such-dev-x']), (err: Error & { code?: string; stderr?: string; argv?: string[] }) => {
    // The message carries the command line and the tool's own words.
    assert.match(err.message, /^ip link show dev no-such-dev-x: exit status 1: .*does not exist/);
    assert.equal(err.code, 'ERR_EXIT_STATUS');
    return true;
  });
  await assert.rejects(run('/nonexistent/tool', []), { code: 'ENOENT', syscall: 'spawn /nonexistent/tool' });
  await assert.rejects(run('sleep', ['5'], { timeoutMs: 100 }), { code: 'ETIMEDOUT', message: /sleep 5: timed out after 100 ms/ });
});

// ---------------------------------------------------------------------------------------------
// Real topology
// ---------------------------------------------------------------------------------------------

/** Connects from the host side of the link, failing after 3 s instead of retrying SYNs for minutes. */
async function connectFromHost(topo: Topology, port: number): Promise<net.Socket> {
  const socket = net.connect({ host: topo.nsAddr, port, localAddress: topo.hostAddr });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no connection to ${topo.nsAddr}:${port} within 3 s`)), 3_000);
      socket.once('connect', () => (clearTimeout(timer), resolve()));
      socket.once('error', (e) => (clearTimeout(timer), reject(e)));
    });
  } catch (err) {
    socket.destroy();
    throw err;
  }
  return socket;
}

/** Keeps writing to `socket` until stop(); counts bytes accepted by the kernel. */
function startPump(socket: net.Socket): { stop(): void; error(): Error | null } {
  const buf = Buffer.alloc(64 * 1024, 0x5a);
  let stopped = false;
  let error: Error | null = null;
  socket.on('error', (e) => (error = e));
  const pump = (): void => {
    while (!stopped && !socket.destroyed) {
      if (!socket.write(buf)) {
        socket.once('drain', pump);
        return;
      }
    }
  };
  pump();
  return { stop: () => (stopped = true), error: () => error };
}

async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<number> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
  return Date.now() - t0;
}

test('lab topology: namespace + tbf-shaped veth, on the real kernel', labPrereq(), async (t) => {
  const topo = await createTopology({ linkMbit: 100 });
  const made = { nsName: topo.nsName, hostIf: topo.hostIf, subnet: topo.subnet };
  try {
    await t.test('names, addresses: a private /30 that no other host address or route overlaps', async () => {
      assert.match(topo.nsName, new RegExp(`^dpa${process.pid}-\\d+$`));
      assert.equal(topo.hostIf, `${topo.nsName}h`);
      assert.equal(topo.nsIf, `${topo.nsName}n`);
      const net30 = parseCidr(topo.subnet);
      assert.equal(net30.prefixLen, 30);
      assert.ok(cidrsOverlap(parseCidr('10.231.0.0/16'), net30));
      assert.equal(topo.hostAddr, formatCidr({ base: net30.base + 1, prefixLen: 32 }).replace('/32', ''));
      assert.equal(topo.nsAddr, formatCidr({ base: net30.base + 2, prefixLen: 32 }).replace('/32', ''));
      const addrs = await runJson<Array<{ ifname: string; addr_info: Array<{ local: string; prefixlen: number }> }>>('ip', ['-j', '-4', 'addr', 'show']);
      for (const a of addrs) {
        for (const i of a.addr_info) {
          const clash = cidrsOverlap(parseCidr(`${i.local}/${i.prefixlen}`), net30);
          assert.equal(clash, a.ifname === topo.hostIf, `${a.ifname} ${i.local}/${i.prefixlen} vs ${topo.subnet}`);
        }
      }
      const routes = await runJson<Array<{ dst?: string; dev?: string; type?: string; metric?: number }>>('ip', ['-j', '-4', 'route', 'show', 'table', 'all']);
      for (const r of routes) {
        if (!r.dst || r.dst === 'default' || !cidrsOverlap(parseCidr(r.dst), net30)) continue;
        const ours = r.dev === topo.hostIf || (r.type === 'unreachable' && r.metric === GUARD_ROUTE_METRIC && r.dst === topo.subnet);
        assert.ok(ours, `foreign route ${JSON.stringify(r)} overlaps ${topo.subnet}`);
      }
    });

    await t.test('both ends carry tbf at the configured rate; all links incl. lo are up', async () => {
      for (const args of [['-j', 'qdisc', 'show', 'dev', topo.hostIf], ['-n', topo.nsName, '-j', 'qdisc', 'show', 'dev', topo.nsIf]]) {
        const [q] = await runJson<Array<{ kind: string; root: boolean; options: { rate: number; burst: number; lat: number } }>>('tc', args);
        assert.equal(q?.kind, 'tbf', args.join(' '));
        assert.equal(q.options.rate, 100e6 / 8);
        assert.equal(q.options.lat, 50_000);
        // The kernel stores the bucket as time at its clock resolution: a few bytes of rounding.
        assert.ok(Math.abs(q.options.burst - topo.burstBytes) <= topo.burstBytes * 0.001, `${q.options.burst} vs ${topo.burstBytes}`);
      }
      const inside = await runJson<Array<{ ifname: string; operstate: string; flags: string[] }>>('ip', ['-n', topo.nsName, '-j', 'link', 'show']);
      assert.deepEqual(inside.map((l) => l.ifname).sort(), ['lo', topo.nsIf].sort());
      assert.ok(inside.every((l) => l.flags.includes('UP')), JSON.stringify(inside));
    });

    const ping = pingArgv();
    await t.test('ping crosses the link both ways', needs('ping', ping ? null : 'neither ping nor busybox is installed'), async () => {
      assert.ok(ping);
      await run(ping[0]!, [...ping.slice(1), '-c1', '-W1', topo.nsAddr]);
      await run('ip', ['netns', 'exec', topo.nsName, ...ping, '-c1', '-W1', topo.hostAddr]);
    });

    await t.test('spawnInNs runs the command inside the namespace', async () => {
      const child = spawnInNs(topo, 'readlink', ['/proc/self/ns/net'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      const code = await new Promise((r) => child.once('exit', r));
      assert.equal(code, 0);
      const hostNs = readlinkSync('/proc/self/ns/net');
      assert.match(out.trim(), /^net:\[\d+\]$/);
      assert.notEqual(out.trim(), hostNs);
    });

    const figures: string[] = [];
    const check = async (rate: number, direction: 'host-to-ns' | 'ns-to-host'): Promise<number> => {
      const r = await measureThroughput(topo, { direction, durationMs: 1500, warmupMs: 300 });
      const ratio = r.mbitPerSec / rate;
      figures.push(`${direction} tbf ${rate} Mbit/s: measured ${r.mbitPerSec.toFixed(1)} Mbit/s goodput (${(ratio * 100).toFixed(1)}%)`);
      t.diagnostic(figures[figures.length - 1]!);
      assert.ok(ratio > 0.85 && ratio < 1.15, `${direction} at ${rate} Mbit/s measured ${r.mbitPerSec.toFixed(1)} Mbit/s, outside ±15%`);
      return r.mbitPerSec;
    };

    await t.test('TCP throughput matches the tbf rate (±15%) both ways at 100 Mbit/s', async () => {
      await check(100, 'host-to-ns');
      await check(100, 'ns-to-host');
    });

    await t.test('setRate() reshapes the live link: 200 Mbit/s, then 50 Mbit/s', async () => {
      await topo.setRate(200);
      assert.equal(topo.linkMbit, 200);
      const fast = await check(200, 'host-to-ns');
      await check(200, 'ns-to-host');
      await topo.setRate(50);
      const slow = await check(50, 'host-to-ns');
      assert.ok(slow < fast * 0.35, `50 Mbit/s run (${slow}) not clearly slower than 200 Mbit/s run (${fast})`);
      await topo.setRate(100);
    });

    await t.test('lowering the rate mid-stream, with a full queue, keeps the stream and new connections flowing', async () => {
      // Regression: a bucket smaller than a queued 64 KiB GSO packet leaves it unsendable forever.
      await topo.setRate(400);
      const sink = await startNsSink(topo);
      const socket = await connectFromHost(topo, sink.port).catch(async (err) => {
        await sink.close();
        throw err;
      });
      const pump = startPump(socket);
      try {
        await waitFor(() => sink.bytes() > 8_000_000, 5_000, 'the stream to fill the queue');
        await topo.setRate(20);
        const before = sink.bytes();
        await sleep(800);
        const moved = sink.bytes() - before;
        // 20 Mbit/s for 0.8 s is 2 MB; a wedged queue moves nothing.
        assert.ok(moved > 1_000_000, `only ${moved} bytes in 0.8 s after lowering the rate`);
        const probe = net.connect({ host: sink.host, port: sink.port, localAddress: topo.hostAddr });
        const outcome = await new Promise<string>((r) => {
          const timer = setTimeout(() => r('no answer within 900 ms'), 900);
          probe.once('connect', () => (clearTimeout(timer), r('connected')));
          probe.once('error', (e: NodeJS.ErrnoException) => (clearTimeout(timer), r(`error ${e.code}`)));
        });
        probe.destroy();
        assert.equal(outcome, 'connected');
      } finally {
        pump.stop();
        socket.destroy();
        await sink.close();
        await topo.setRate(100);
      }
    });

    await t.test('cut() stalls an established stream and new connections; restore() resumes the same stream', async () => {
      const sink = await startNsSink(topo);
      const socket = await connectFromHost(topo, sink.port).catch(async (err) => {
        await sink.close();
        throw err;
      });
      const pump = startPump(socket);
      try {
        await waitFor(() => sink.bytes() > 1_000_000, 5_000, 'the stream to flow');
        await topo.cut();
        assert.equal(topo.isCut, true);
        await sleep(200); // lets the sink report what arrived before the cut
        const atCut = sink.bytes();
        // A new connection from the host gets no answer (packets vanish, as on a cut cable).
        const probe = net.connect({ host: sink.host, port: sink.port, localAddress: topo.hostAddr });
        const probeOutcome = await new Promise<string>((r) => {
          const timer = setTimeout(() => r('no answer'), 1_000);
          probe.once('connect', () => r('connected'));
          probe.once('error', (e: NodeJS.ErrnoException) => {
            clearTimeout(timer);
            r(`error ${e.code}`);
          });
        });
        probe.destroy();
        assert.notEqual(probeOutcome, 'connected');
        const stalled = sink.bytes() - atCut;
        assert.ok(stalled <= 64 * 1024, `${stalled} bytes crossed a cut link in 1 s`);
        assert.equal(pump.error(), null, 'the established stream must stall, not fail');

        await topo.restore();
        assert.equal(topo.isCut, false);
        const resumeMs = await waitFor(() => sink.bytes() > atCut + 1_000_000, 10_000, 'the stream to resume after restore()');
        t.diagnostic(`stream resumed ${resumeMs} ms after restore() (TCP retransmission backoff)`);
        assert.equal(pump.error(), null);
        const [q] = await runJson<Array<{ kind: string; options: { rate: number } }>>('tc', ['-j', 'qdisc', 'show', 'dev', topo.hostIf]);
        assert.equal(q?.kind, 'tbf', 'shaping survives cut/restore');
        assert.equal(q.options.rate, 100e6 / 8);
      } finally {
        pump.stop();
        socket.destroy();
        await sink.close();
      }
    });

    await t.test('with the host end down, lab traffic is refused locally, never routed off the machine', async () => {
      // Without the guard route the /30's connected route vanishes and the default route
      // (towards the real network) would carry the lab's packets.
      await run('ip', ['link', 'set', 'dev', topo.hostIf, 'down']);
      try {
        await assert.rejects(run('ip', ['route', 'get', topo.nsAddr]), /No route to host/);
      } finally {
        await run('ip', ['link', 'set', 'dev', topo.hostIf, 'up']);
      }
      const [route] = await runJson<Array<{ dev?: string }>>('ip', ['-j', 'route', 'get', topo.nsAddr]);
      assert.equal(route?.dev, topo.hostIf);
    });

    t.diagnostic(`throughput summary: ${figures.join('; ')}`);
  } finally {
    await topo.destroy();
  }

  await t.test('destroy() leaves no namespace, veth or route behind, and is idempotent', async () => {
    await assertNothingLeft(made);
    await topo.destroy();
    assert.equal(topo.destroyed, true);
    await assert.rejects(topo.setRate(10), /was destroyed/);
  });
});

test("queue 'fair': a stream joining a busy link gets its share at once; setRate rebuilds the tree", labPrereq(), async () => {
  const topo = await createTopology({ linkMbit: 80, queue: 'fair' });
  const sinks = [await startNsSink(topo), await startNsSink(topo)];
  try {
    assert.equal(topo.queue, 'fair');
    // `tc class` has no JSON output: one line per class.
    const classes = async (ns: string[], dev: string): Promise<string[]> => (await run('tc', [...ns, 'class', 'show', 'dev', dev])).stdout.split('\n').filter((l) => l.startsWith('class htb '));
    assert.equal((await classes([], topo.hostIf)).length, FAIR_QUEUE_BUCKETS + 2, 'root class + one per bucket + the default');
    assert.equal((await classes(['-n', topo.nsName], topo.nsIf)).length, FAIR_QUEUE_BUCKETS + 2);
    // One stream alone fills the link; a second joins after 2 s.
    const pump = (sink: (typeof sinks)[number], ms: number): Promise<void> =>
      new Promise((resolve, reject) => {
        const buf = Buffer.alloc(256 * 1024, 0x5a);
        const c = net.connect({ host: sink.host, port: sink.port, localAddress: topo.hostAddr });
        c.on('error', reject);
        c.once('connect', () => {
          const end = Date.now() + ms;
          const go = (): void => {
            while (Date.now() < end) if (!c.write(buf)) return void c.once('drain', go);
            c.destroy();
            resolve();
          };
          go();
        });
      });
    const first = pump(sinks[0]!, 5000);
    await sleep(2000);
    await pump(sinks[1]!, 2500);
    await first;
    await sleep(200);
    const rate = (samples: readonly CounterSample[], fromMs: number, toMs: number): number => {
      const at = (t: number): number => samples.filter((x) => x.tMs <= t).at(-1)?.bytes ?? 0;
      return ((at(toMs) - at(fromMs)) * 1000) / (toMs - fromMs);
    };
    const joined = sinks[1]!.samples.find((x) => x.bytes > 0)!.tMs;
    // From 0.3 s after the join (slow start) to 2 s: the newcomer has half the link, give or take.
    const a = rate(sinks[0]!.samples, joined + 300, joined + 2000);
    const b = rate(sinks[1]!.samples, joined + 300, joined + 2000);
    const link = (80e6 / 8) * 0.9;
    assert.ok(a + b > link * 0.85, `together ${((a + b) / 1e6).toFixed(2)} MB/s of ${(link / 1e6).toFixed(2)}`);
    assert.ok(b / (a + b) > 0.4 && b / (a + b) < 0.6, `newcomer's share ${(b / (a + b)).toFixed(2)} (${(b / 1e6).toFixed(2)} vs ${(a / 1e6).toFixed(2)} MB/s)`);

    await topo.setRate(40);
    for (const [ns, dev] of [[[], topo.hostIf], [['-n', topo.nsName], topo.nsIf]] as const) {
      const all = await classes([...ns], dev);
      assert.equal(all.length, FAIR_QUEUE_BUCKETS + 2);
      assert.match(all.find((l) => l.startsWith('class htb 1:1 root '))!, / rate 40Mbit ceil 40Mbit /);
    }
  } finally {
    for (const s of sinks) await s.close();
    await topo.destroy();
  }
});

test('concurrent topologies get distinct names and disjoint /30s', labPrereq(), async () => {
  const [a, b] = await Promise.all([createTopology({ linkMbit: 10 }), createTopology({ linkMbit: 20 })]);
  try {
    assert.notEqual(a.nsName, b.nsName);
    assert.ok(!cidrsOverlap(parseCidr(a.subnet), parseCidr(b.subnet)), `${a.subnet} vs ${b.subnet}`);
  } finally {
    await Promise.all([a.destroy(), b.destroy()]);
  }
  for (const x of [a, b]) await assertNothingLeft(x);
});

/** Runs a child process that builds a topology (plus a process inside it) and then ends by `mode`. */
async function childRun(mode: 'exit' | 'uncaught' | 'SIGTERM' | 'SIGINT' | 'SIGKILL'): Promise<{ made: { nsName: string; hostIf: string; subnet: string; sleeper: number }; code: number | null; signal: string | null; stderr: string }> {
  const modulePath = path.resolve(__dirname, '../../src/lab/netns.js');
  const script = `
    const n = require(process.argv[1]);
    const mode = process.argv[2];
    n.createTopology({ linkMbit: 10 }).then((t) => {
      const c = n.spawnInNs(t, 'sleep', ['30'], { stdio: 'ignore' });
      process.stdout.write(JSON.stringify({ nsName: t.nsName, hostIf: t.hostIf, subnet: t.subnet, sleeper: c.pid }) + '\\n');
      if (mode === 'exit') process.exit(3);
      if (mode === 'uncaught') setTimeout(() => { throw new Error('boom'); }, 10);
      setInterval(() => {}, 1000);
    });`;
  const child = spawn(process.execPath, ['-e', script, modulePath, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<[number | null, string | null]>((r) => child.once('exit', (code, signal) => r([code, signal])));
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve);
    void exited.then(() => reject(new Error(`child exited before building its topology: ${stderr}`)));
  });
  const made = JSON.parse(line) as { nsName: string; hostIf: string; subnet: string; sleeper: number };
  if (mode.startsWith('SIG')) child.kill(mode as NodeJS.Signals);
  const [code, signal] = await exited;
  return { made, code, signal, stderr };
}

test('a process ending by exit(), uncaught exception, SIGTERM or SIGINT leaves nothing behind', labPrereq(), async () => {
  for (const mode of ['exit', 'uncaught', 'SIGTERM', 'SIGINT'] as const) {
    const r = await childRun(mode);
    await assertNothingLeft(r.made);
    await waitFor(() => processGone(r.made.sleeper), 2_000, `${mode}: the process started in the namespace to die`);
    if (mode === 'exit') assert.equal(r.code, 3, 'exit status preserved');
    if (mode === 'uncaught') {
      assert.equal(r.code, 1);
      assert.match(r.stderr, /boom/);
    }
    // The handler re-raises, so the parent still sees death by that signal.
    if (mode === 'SIGTERM' || mode === 'SIGINT') assert.equal(r.signal, mode);
  }
});

test('reapStale() removes what a SIGKILLed run left behind, and nothing of live runs', labPrereq(), async () => {
  const live = await createTopology({ linkMbit: 10 });
  try {
    const r = await childRun('SIGKILL');
    assert.equal(r.signal, 'SIGKILL');
    assert.ok((await netnsNames()).includes(r.made.nsName), 'SIGKILL cannot be caught: the namespace must still be there');
    assert.ok((await linkNames()).includes(r.made.hostIf));
    assert.ok(!processGone(r.made.sleeper), 'its process in the namespace is still running');
    const report = await reapStale('dpa');
    assert.ok(report.namespaces.includes(r.made.nsName), JSON.stringify(report));
    assert.ok(report.links.includes(r.made.hostIf), JSON.stringify(report));
    await assertNothingLeft(r.made);
    await waitFor(() => processGone(r.made.sleeper), 2_000, 'the orphan in the reaped namespace to die');
    assert.ok((await netnsNames()).includes(live.nsName), 'a live topology must survive reaping');
    assert.ok((await guardRoutes()).includes(live.subnet));
  } finally {
    await live.destroy();
  }
});

function capture(): { io: CommandIO; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  return {
    io: { out: (t) => (out += t), err: (t) => (err += t), isTTY: false, signal: new AbortController().signal },
    out: () => out,
    err: () => err,
  };
}

test('dpa lab net up / show / rate / cut / restore / down', labPrereq(), async () => {
  // A prefix of its own, so `down` cannot touch a developer's persistent 'dpa' topologies.
  const cli = async (...argv: string[]): Promise<{ status: number; json: unknown; err: string }> => {
    const c = capture();
    const status = await runCli(['lab', 'net', ...argv, '--prefix', 'zqt'], c.io);
    return { status, json: argv.includes('--json') && status === 0 ? JSON.parse(c.out()) : null, err: c.err() };
  };
  type Info = { nsName: string; hostAddr: string; nsAddr: string; persistent: boolean; nsState: string; hostTbf: { linkMbit: number }; nsTbf: { linkMbit: number } };
  const up = await cli('up', '--link-mbit', '200', '--json');
  assert.equal(up.status, 0, up.err);
  const info = up.json as Info;
  try {
    assert.match(info.nsName, /^zqt0-\d+$/);
    assert.equal(info.persistent, true);
    assert.deepEqual([info.hostTbf.linkMbit, info.nsTbf.linkMbit], [200, 200]);

    const shown = (await cli('show', '--json')).json as Info[];
    assert.deepEqual(shown.map((s) => s.nsName), [info.nsName]);

    const rated = (await cli('rate', info.nsName, '--link-mbit', '40', '--json')).json as Info;
    assert.deepEqual([rated.hostTbf.linkMbit, rated.nsTbf.linkMbit], [40, 40]);
    const [q] = await runJson<Array<{ options: { rate: number } }>>('tc', ['-j', 'qdisc', 'show', 'dev', `${info.nsName}h`]);
    assert.equal(q?.options.rate, 40e6 / 8);

    const measured = (await cli('measure', '--duration-ms', '500', '--json')).json as { linkMbit: number; results: Array<{ direction: string; mbitPerSec: number }> };
    assert.equal(measured.linkMbit, 40);
    assert.deepEqual(measured.results.map((r) => r.direction), ['host-to-ns', 'ns-to-host']);
    for (const r of measured.results) assert.ok(r.mbitPerSec > 40 * 0.85 && r.mbitPerSec < 40 * 1.15, `${r.direction}: ${r.mbitPerSec} Mbit/s at 40`);

    assert.equal(((await cli('cut', '--json')).json as Info).nsState, 'DOWN');
    assert.equal(((await cli('restore', '--json')).json as Info).nsState, 'UP');

    const bad = await cli('rate');
    assert.equal(bad.status, 2);
    assert.match(bad.err, /--link-mbit is required/);
  } finally {
    const down = await cli('down', '--json');
    assert.equal(down.status, 0, down.err);
    assert.deepEqual((down.json as { removed: string[] }).removed, [info.nsName]);
  }
  assert.deepEqual((await cli('show', '--json')).json, []);
  await assertNothingLeft({ nsName: info.nsName, hostIf: `${info.nsName}h`, subnet: formatCidr({ base: (parseCidr(info.hostAddr).base & 0xfffffffc) >>> 0, prefixLen: 30 }) });
});
