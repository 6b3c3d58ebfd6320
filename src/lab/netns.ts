/**
 * Lab network: a network namespace joined to the host by a veth pair whose two ends are shaped
 * with `tc tbf` (netem does not work on our hosts; tbf does). Migration tests run the target QEMU
 * inside the namespace, so NBD and migration streams cross a link of known, changeable speed
 * that can also be cut.
 *
 * ```
 *   host netns                                  lab netns <nsName>
 *   hostIf  hostAddr/30  ── veth ──  nsAddr/30  nsIf      (+ lo)
 *   tbf root (host → ns)                        tbf root (ns → host)
 * ```
 *
 * Names are `<prefix><owner pid>-<index>` for the namespace and the same plus `h` / `n` for the
 * host / namespace interface, e.g. `dpa4711-0`, `dpa4711-0h`, `dpa4711-0n` (at most 15
 * characters, the kernel's IFNAMSIZ-1). The owner pid in the name is what lets reapStale() tell a
 * crashed run's leftovers from a live run's topology. Owner pid 0 marks a persistent topology
 * made by `dpa lab net up`, which only `dpa lab net down` removes.
 *
 * Everything is done with ip(8)/tc(8) through execFile argument arrays; every name is checked
 * against a strict pattern before it reaches a command line.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createInterface } from 'node:readline';
import * as net from 'node:net';
import { ExecError, pidAlive, registerExitCleanup, run, runJson, runSync } from './exec';

// ------------------------------------------------------------------------------------------
// Names
// ------------------------------------------------------------------------------------------

/** Default name prefix. */
export const DEFAULT_PREFIX = 'dpa';
/** Topologies per owner before the index wraps (3 decimal digits keep names within 15 chars). */
const MAX_INDEX = 999;
const PREFIX_RE = /^[a-z]{1,3}$/;
/** Any namespace name we pass to ip(8): no leading '-', no '/', nothing a shell would care about. */
const NS_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** Any interface name: IFNAMSIZ-1 = 15 characters. */
const IF_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

export interface LabNames {
  nsName: string;
  hostIf: string;
  nsIf: string;
}

function checkPrefix(prefix: string): string {
  if (typeof prefix !== 'string' || !PREFIX_RE.test(prefix)) {
    throw new TypeError(`name: must be 1 to 3 lowercase letters a-z (got ${JSON.stringify(prefix)})`);
  }
  return prefix;
}

/** Throws a TypeError unless `name` is a safe network namespace name. */
export function checkNsName(name: string): string {
  if (typeof name !== 'string' || !NS_NAME_RE.test(name)) {
    throw new TypeError(`namespace name: must match ${NS_NAME_RE} (got ${JSON.stringify(name)})`);
  }
  return name;
}

function checkIfName(name: string): string {
  if (typeof name !== 'string' || !IF_NAME_RE.test(name)) {
    throw new TypeError(`interface name: must match ${IF_NAME_RE} (got ${JSON.stringify(name)})`);
  }
  return name;
}

/** The names of topology `index` (0..999) owned by `ownerPid` (0 = persistent). */
export function labNames(prefix: string, ownerPid: number, index: number): LabNames {
  checkPrefix(prefix);
  if (!Number.isInteger(ownerPid) || ownerPid < 0 || ownerPid > 9_999_999) {
    throw new RangeError(`ownerPid: must be an integer from 0 to 9999999 (got ${ownerPid})`);
  }
  if (!Number.isInteger(index) || index < 0 || index > MAX_INDEX) {
    throw new RangeError(`index: must be an integer from 0 to ${MAX_INDEX} (got ${index})`);
  }
  const nsName = `${prefix}${ownerPid}-${index}`;
  return { nsName, hostIf: `${nsName}h`, nsIf: `${nsName}n` };
}

export interface ParsedLabName {
  ownerPid: number;
  index: number;
  /** 'ns' for a namespace name, 'host'/'peer' for the host/namespace end of the veth. */
  role: 'ns' | 'host' | 'peer';
}

/** Parses a name made by {@link labNames} with this prefix; null for anything else. */
export function parseLabName(prefix: string, name: string): ParsedLabName | null {
  checkPrefix(prefix);
  const m = new RegExp(`^${prefix}(0|[1-9][0-9]{0,6})-(0|[1-9][0-9]{0,2})([hn]?)$`).exec(name);
  if (!m) return null;
  const role = m[3] === 'h' ? 'host' : m[3] === 'n' ? 'peer' : 'ns';
  return { ownerPid: Number(m[1]), index: Number(m[2]), role };
}

// ------------------------------------------------------------------------------------------
// IPv4 subnets
// ------------------------------------------------------------------------------------------

/** Default pool the /30s are carved from. Off the ranges Docker, LXD and home routers favour. */
export const DEFAULT_POOL = '10.231.0.0/16';

export interface Cidr {
  /** Network address as an unsigned 32-bit integer. */
  base: number;
  prefixLen: number;
}

export function ipToInt(ip: string): number {
  const parts = ip.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255)) {
    throw new TypeError(`not an IPv4 address: ${JSON.stringify(ip)}`);
  }
  return parts.reduce((acc, p) => acc * 256 + Number(p), 0);
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function maskOf(prefixLen: number): number {
  return prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
}

/** Parses 'a.b.c.d/len' (or a bare address = /32) and normalises it to its network address. */
export function parseCidr(text: string): Cidr {
  const [ip, len, extra] = text.split('/');
  const prefixLen = len === undefined ? 32 : Number(len);
  if (extra !== undefined || !Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > 32 || (len !== undefined && !/^\d+$/.test(len))) {
    throw new TypeError(`not an IPv4 CIDR: ${JSON.stringify(text)}`);
  }
  return { base: (ipToInt(ip!) & maskOf(prefixLen)) >>> 0, prefixLen };
}

export function formatCidr(c: Cidr): string {
  return `${intToIp(c.base)}/${c.prefixLen}`;
}

/** True when the two prefixes share at least one address. */
export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  const m = maskOf(Math.min(a.prefixLen, b.prefixLen));
  return ((a.base & m) >>> 0) === ((b.base & m) >>> 0);
}

/**
 * The first /30 of `pool`, scanning from slot `startSlot` (wrapping), that overlaps none of
 * `occupied`; null when the pool is full. Starting at a per-process slot spreads concurrent
 * processes over the pool so they rarely race for the same /30.
 */
export function chooseSubnet(pool: Cidr, occupied: readonly Cidr[], startSlot: number): Cidr | null {
  if (pool.prefixLen > 30) return null;
  const slots = 2 ** (30 - pool.prefixLen);
  const first = ((startSlot % slots) + slots) % slots;
  for (let i = 0; i < slots; i++) {
    const cand: Cidr = { base: (pool.base + ((first + i) % slots) * 4) >>> 0, prefixLen: 30 };
    if (!occupied.some((o) => cidrsOverlap(o, cand))) return cand;
  }
  return null;
}

// ------------------------------------------------------------------------------------------
// Shaping parameters
// ------------------------------------------------------------------------------------------

/** Link rate range, Mbit/s (1 Mbit = 10^6 bit, as tc counts). */
export const LINK_MBIT_MIN = 1;
export const LINK_MBIT_MAX = 10_000;
const BURST_MIN = 1_600;
const BURST_MAX = 64 * 1024 * 1024;
const LATENCY_MIN_MS = 1;
const LATENCY_MAX_MS = 10_000;
/** Default tbf queue depth, ms: deep enough that TCP keeps a sub-ms-RTT veth busy. */
export const DEFAULT_LATENCY_MS = 50;

function checkMbit(option: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < LINK_MBIT_MIN || v > LINK_MBIT_MAX) {
    throw new RangeError(`${option}: must be a number from ${LINK_MBIT_MIN} to ${LINK_MBIT_MAX} Mbit/s (got ${String(v)})`);
  }
  return v;
}

/**
 * Smallest default burst, bytes. It must exceed the largest packet the stack hands the qdisc (a
 * 64 KiB GSO packet plus headers) at every rate: tbf checks a packet against the bucket only when
 * it is enqueued, so if setRate() shrank the bucket below a packet already queued under the old
 * one, that packet could never be sent and the link would wedge for good (seen on Linux 6.18:
 * 200 → 50 Mbit/s with a 100000 → 65536 B bucket left 3 packets stuck behind every new SYN).
 */
export const MIN_DEFAULT_BURST_BYTES = 96 * 1024;

/**
 * The tbf burst used when none is given: 4 ms worth of tokens, at least
 * {@link MIN_DEFAULT_BURST_BYTES}. (At 1 Mbit/s that floor lets 0.8 s of traffic pass at line
 * rate after an idle period: measure low rates over several seconds.)
 */
export function defaultBurstBytes(linkMbit: number): number {
  return Math.max(MIN_DEFAULT_BURST_BYTES, Math.ceil((linkMbit * 1e6) / 8 * 0.004));
}

function tbfArgs(dev: string, linkMbit: number, burstBytes: number, latencyMs: number): string[] {
  const bitsPerSec = Math.round(linkMbit * 1e6);
  return ['qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${bitsPerSec}bit`, 'burst', `${burstBytes}b`, 'latency', `${latencyMs}ms`];
}

/** Flow buckets of the fair queue: TCP flows are spread by their destination port's low 6 bits. */
export const FAIR_QUEUE_BUCKETS = 64;

/**
 * `tc -batch` lines for a per-flow fair link (queue 'fair'): an HTB root shaped to the link rate
 * with one leaf class per bucket (and a default class for non-TCP traffic), each leaf a byte FIFO
 * holding `latencyMs` of the link's rate, its guaranteed rate 1/(buckets + 1) of the link and its
 * ceiling the whole link, so backlogged buckets share the link equally (HTB's round robin) and
 * an idle bucket's share goes to the others. A u32 hash on the TCP destination port (at offset 20,
 * an option-less IPv4 header) picks the bucket: the lab's listeners use consecutive ports, so
 * their streams land in different buckets. The kernel here has no fair-queueing qdisc (no
 * fq_codel, sfq or drr), only tbf, htb and u32.
 */
export function fairQueueBatch(dev: string, linkMbit: number, burstBytes: number, latencyMs: number): string {
  const bitsPerSec = Math.round(linkMbit * 1e6);
  const buckets = FAIR_QUEUE_BUCKETS;
  const perClassBits = Math.max(8, Math.floor(bitsPerSec / (buckets + 1)));
  const limitBytes = Math.max(3 * 1514, Math.round(((bitsPerSec / 8) * latencyMs) / 1000));
  const cid = (i: number): string => (0x100 + i).toString(16);
  const lines = [
    `qdisc replace dev ${dev} root handle 1: htb default ${cid(buckets)}`,
    `class add dev ${dev} parent 1: classid 1:1 htb rate ${bitsPerSec}bit ceil ${bitsPerSec}bit burst ${burstBytes}b cburst ${burstBytes}b`,
  ];
  for (let i = 0; i <= buckets; i++) {
    lines.push(`class add dev ${dev} parent 1:1 classid 1:${cid(i)} htb rate ${perClassBits}bit ceil ${bitsPerSec}bit burst ${burstBytes}b cburst ${burstBytes}b quantum 1514`);
    lines.push(`qdisc add dev ${dev} parent 1:${cid(i)} bfifo limit ${limitBytes}`);
  }
  lines.push(`filter add dev ${dev} parent 1: prio 1 handle 2: protocol ip u32 divisor ${buckets}`);
  lines.push(`filter add dev ${dev} parent 1: prio 1 protocol ip u32 ht 800:: match ip protocol 6 0xff hashkey mask 0x${(buckets - 1).toString(16).padStart(8, '0')} at 20 link 2:`);
  for (let i = 0; i < buckets; i++) lines.push(`filter add dev ${dev} parent 1: prio 1 protocol ip u32 ht 2:${i.toString(16)}: match u32 0 0 flowid 1:${cid(i)}`);
  return lines.join('\n') + '\n';
}

/** Shapes one end of the link: a tbf (FIFO) or the fair queue; `rebuild` first removes an existing fair queue. */
async function shape(nsName: string | null, dev: string, linkMbit: number, burstBytes: number, latencyMs: number, queue: LinkQueue, rebuild: boolean): Promise<void> {
  const ns = nsName ? ['-n', nsName] : [];
  if (queue === 'fifo') {
    await run('tc', [...ns, ...tbfArgs(dev, linkMbit, burstBytes, latencyMs)], { timeoutMs: CMD_TIMEOUT_MS });
    return;
  }
  // HTB classes cannot be re-added over themselves: a new rate means a new tree.
  if (rebuild) await run('tc', [...ns, 'qdisc', 'del', 'dev', dev, 'root'], { timeoutMs: CMD_TIMEOUT_MS });
  await run('tc', [...ns, '-batch', '-'], { timeoutMs: CMD_TIMEOUT_MS, input: fairQueueBatch(dev, linkMbit, burstBytes, latencyMs) });
}

/** How the link queues: one FIFO (tbf), or per-flow fair (HTB buckets; see fairQueueBatch). */
export type LinkQueue = 'fifo' | 'fair';

// ------------------------------------------------------------------------------------------
// The topology
// ------------------------------------------------------------------------------------------

export interface TopologyOptions {
  /** Name prefix, 1-3 lowercase letters; default 'dpa'. */
  name?: string;
  /** tbf rate of both directions, Mbit/s (10^6 bit/s), 1..10000. */
  linkMbit: number;
  /**
   * tbf bucket size, bytes, 1600..67108864; default {@link defaultBurstBytes} (follows setRate).
   * A given value stays fixed across setRate(); below ~66 KiB tbf has to split GSO packets.
   */
  burstBytes?: number;
  /** tbf maximum queueing delay, ms, 1..10000; default 50. */
  latencyMs?: number;
  /** IPv4 pool the /30 is taken from, prefix length 8..30; default '10.231.0.0/16'. */
  pool?: string;
  /**
   * 'fifo' (default): one tbf per direction, every stream in one queue, as a plain router port.
   * 'fair': per-flow fair queueing at the same rate (fairQueueBatch), streams share it equally.
   */
  queue?: LinkQueue;
  /**
   * Outlive this process (owner pid 0 in the names): not destroyed at exit, not reaped.
   * For `dpa lab net up`. Default false.
   */
  persistent?: boolean;
}

/** The lab network between the host and one namespace. */
export interface Topology {
  readonly nsName: string;
  /** Host end of the veth. */
  readonly hostIf: string;
  /** Namespace end of the veth. */
  readonly nsIf: string;
  /** Host-side address (dotted quad) in the /30. */
  readonly hostAddr: string;
  /** Namespace-side address (dotted quad) in the /30. */
  readonly nsAddr: string;
  /** The /30, e.g. '10.231.7.4/30'. */
  readonly subnet: string;
  /** Pid the names carry (0 = persistent). */
  readonly ownerPid: number;
  /** Current tbf rate of both directions, Mbit/s. */
  readonly linkMbit: number;
  /** Current tbf burst, bytes. */
  readonly burstBytes: number;
  /** tbf maximum queueing delay, ms. */
  readonly latencyMs: number;
  /** How the link queues (TopologyOptions.queue). */
  readonly queue: LinkQueue;
  /** True between cut() and restore(). */
  readonly isCut: boolean;
  readonly destroyed: boolean;
  /** Changes the rate of both directions live (1..10000 Mbit/s); connections survive. */
  setRate(linkMbit: number): Promise<void>;
  /**
   * Cuts the link: the namespace end goes down. The host end loses carrier and silently drops
   * what it sends (no ICMP, as with a pulled cable), so established TCP streams stall and new
   * connections from the host time out; inside the namespace sends fail with ENETUNREACH.
   */
  cut(): Promise<void>;
  /** Undoes cut(); resolves once both ends are operationally up. Shaping is kept. */
  restore(): Promise<void>;
  /** Kills processes started with spawnInNs() in it, removes veth, route and namespace. Idempotent. */
  destroy(): Promise<void>;
}

/** Metric of the per-topology `unreachable` route (see createTopology). */
export const GUARD_ROUTE_METRIC = 9731;
const CMD_TIMEOUT_MS = 10_000;

let nextIndex = 0;
const liveTopologies = new Set<LabTopology>();

interface IpAddrEntry {
  ifindex: number;
  ifname: string;
  operstate?: string;
  addr_info?: Array<{ family?: string; local?: string; prefixlen?: number }>;
}
interface IpRouteEntry {
  type?: string;
  dst?: string;
  dev?: string;
  metric?: number;
  protocol?: string;
}
interface TcQdisc {
  kind: string;
  root?: boolean;
  options?: { rate?: number; burst?: number; lat?: number };
}

function isGone(err: unknown): boolean {
  const text = err instanceof ExecError ? err.stderr : '';
  return /Cannot find device|No such file or directory|No such process|does not exist|Cannot open network namespace/i.test(text);
}

/** Deletion commands for a topology, in order; each one is allowed to find its object gone. */
function teardownCommands(n: LabNames, subnet: string | null): Array<[string, string[]]> {
  const cmds: Array<[string, string[]]> = [
    // Deleting one end deletes the pair; do it explicitly because `ip netns del` frees the
    // namespace (and with it the peer) asynchronously, or never while a process is still in it.
    ['ip', ['link', 'del', 'dev', n.hostIf]],
  ];
  if (subnet) cmds.push(['ip', ['route', 'del', 'unreachable', subnet, 'metric', String(GUARD_ROUTE_METRIC)]]);
  cmds.push(['ip', ['netns', 'del', n.nsName]]);
  return cmds;
}

async function waitOperUp(nsName: string | null, dev: string, timeoutMs: number): Promise<void> {
  const args = [...(nsName ? ['-n', nsName] : []), '-j', 'link', 'show', 'dev', dev];
  const deadline = Date.now() + timeoutMs;
  let state = '?';
  for (;;) {
    const [link] = await runJson<IpAddrEntry[]>('ip', args, { timeoutMs: CMD_TIMEOUT_MS });
    state = link?.operstate ?? '?';
    if (state === 'UP') return;
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`${dev}${nsName ? ` (netns ${nsName})` : ''}: still ${state} ${timeoutMs} ms after link up`);
}

class LabTopology implements Topology {
  readonly nsName: string;
  readonly hostIf: string;
  readonly nsIf: string;
  hostAddr = '';
  nsAddr = '';
  subnet = '';
  readonly ownerPid: number;
  linkMbit: number;
  burstBytes: number;
  latencyMs: number;
  queue: LinkQueue = 'fifo';
  isCut = false;
  destroyed = false;
  private readonly burstAuto: boolean;
  private unregisterExit: (() => void) | null = null;
  private destroying: Promise<void> | null = null;

  constructor(names: LabNames, ownerPid: number, linkMbit: number, burstBytes: number | undefined, latencyMs: number) {
    this.nsName = names.nsName;
    this.hostIf = names.hostIf;
    this.nsIf = names.nsIf;
    this.ownerPid = ownerPid;
    this.linkMbit = linkMbit;
    this.burstAuto = burstBytes === undefined;
    this.burstBytes = burstBytes ?? defaultBurstBytes(linkMbit);
    this.latencyMs = latencyMs;
  }

  /** Ties the topology's life to this process. */
  registerForExit(): void {
    liveTopologies.add(this);
    this.unregisterExit = registerExitCleanup(() => this.destroySync());
  }

  async setRate(linkMbit: number): Promise<void> {
    checkMbit('linkMbit', linkMbit);
    this.assertAlive('setRate');
    const burst = this.burstAuto ? defaultBurstBytes(linkMbit) : this.burstBytes;
    await shape(null, this.hostIf, linkMbit, burst, this.latencyMs, this.queue, true);
    await shape(this.nsName, this.nsIf, linkMbit, burst, this.latencyMs, this.queue, true);
    this.linkMbit = linkMbit;
    this.burstBytes = burst;
  }

  async cut(): Promise<void> {
    this.assertAlive('cut');
    await run('ip', ['-n', this.nsName, 'link', 'set', 'dev', this.nsIf, 'down'], { timeoutMs: CMD_TIMEOUT_MS });
    this.isCut = true;
  }

  async restore(): Promise<void> {
    this.assertAlive('restore');
    await run('ip', ['-n', this.nsName, 'link', 'set', 'dev', this.nsIf, 'up'], { timeoutMs: CMD_TIMEOUT_MS });
    await waitOperUp(this.nsName, this.nsIf, 5_000);
    await waitOperUp(null, this.hostIf, 5_000);
    this.isCut = false;
  }

  destroy(): Promise<void> {
    if (!this.destroying) this.destroying = this.destroyAsync();
    return this.destroying;
  }

  private async destroyAsync(): Promise<void> {
    await killNsChildren(this.nsName);
    const errors: string[] = [];
    for (const [cmd, args] of teardownCommands(this, this.subnet || null)) {
      try {
        await run(cmd, args, { timeoutMs: CMD_TIMEOUT_MS });
      } catch (err) {
        if (!isGone(err)) errors.push((err as Error).message);
      }
    }
    this.finish();
    if (errors.length) throw new Error(`destroying lab topology ${this.nsName}: ${errors.join('; ')}`);
  }

  /** Synchronous teardown for process exit. */
  destroySync(): void {
    if (this.destroyed) return;
    for (const [child, ns] of nsChildren) if (ns === this.nsName) child.kill('SIGKILL');
    for (const [cmd, args] of teardownCommands(this, this.subnet || null)) {
      try {
        runSync(cmd, args, { timeoutMs: CMD_TIMEOUT_MS });
      } catch (err) {
        if (!isGone(err)) process.stderr.write(`dpa lab: ${(err as Error).message}\n`);
      }
    }
    this.finish();
  }

  private finish(): void {
    this.destroyed = true;
    liveTopologies.delete(this);
    this.unregisterExit?.();
    this.unregisterExit = null;
  }

  private assertAlive(what: string): void {
    if (this.destroyed || this.destroying) throw new Error(`${what}: lab topology ${this.nsName} was destroyed`);
  }

  toJSON(): Record<string, unknown> {
    const { nsName, hostIf, nsIf, hostAddr, nsAddr, subnet, ownerPid, linkMbit, burstBytes, latencyMs, queue, isCut } = this;
    return { nsName, hostIf, nsIf, hostAddr, nsAddr, subnet, ownerPid, linkMbit, burstBytes, latencyMs, queue, isCut };
  }
}

/** Every /30-or-wider prefix the host already uses: addresses and routes in all tables. */
async function occupiedPrefixes(): Promise<Cidr[]> {
  const [addrs, routes] = await Promise.all([
    runJson<IpAddrEntry[]>('ip', ['-j', '-4', 'addr', 'show'], { timeoutMs: CMD_TIMEOUT_MS }),
    runJson<IpRouteEntry[]>('ip', ['-j', '-4', 'route', 'show', 'table', 'all'], { timeoutMs: CMD_TIMEOUT_MS }),
  ]);
  const out: Cidr[] = [];
  for (const a of addrs) {
    for (const i of a.addr_info ?? []) {
      if (i.local && i.prefixlen !== undefined) out.push(parseCidr(`${i.local}/${i.prefixlen}`));
    }
  }
  for (const r of routes) {
    if (!r.dst || r.dst === 'default') continue;
    try {
      out.push(parseCidr(r.dst));
    } catch {
      // Not IPv4 (e.g. a multicast keyword): irrelevant to an IPv4 /30.
    }
  }
  return out;
}

/**
 * After adding our host address: does another interface hold an overlapping address? Two
 * processes picking the same free /30 at once both see the clash; the one whose interface was
 * created later (higher ifindex) gives way, so exactly one keeps it.
 */
async function mustYield(hostIf: string, subnet: Cidr): Promise<boolean> {
  const addrs = await runJson<IpAddrEntry[]>('ip', ['-j', '-4', 'addr', 'show'], { timeoutMs: CMD_TIMEOUT_MS });
  const ours = addrs.find((a) => a.ifname === hostIf);
  if (!ours) throw new Error(`${hostIf} vanished while configuring it`);
  for (const a of addrs) {
    if (a.ifname === hostIf) continue;
    for (const i of a.addr_info ?? []) {
      if (i.local && i.prefixlen !== undefined && cidrsOverlap(parseCidr(`${i.local}/${i.prefixlen}`), subnet) && a.ifindex < ours.ifindex) return true;
    }
  }
  return false;
}

function checkOptions(opts: TopologyOptions): { prefix: string; linkMbit: number; burstBytes: number | undefined; latencyMs: number; pool: Cidr; persistent: boolean; queue: LinkQueue } {
  if (typeof opts !== 'object' || opts === null) throw new TypeError('createTopology: options must be an object');
  const prefix = checkPrefix(opts.name ?? DEFAULT_PREFIX);
  const linkMbit = checkMbit('linkMbit', opts.linkMbit);
  const burstBytes = opts.burstBytes;
  if (burstBytes !== undefined && (!Number.isInteger(burstBytes) || burstBytes < BURST_MIN || burstBytes > BURST_MAX)) {
    throw new RangeError(`burstBytes: must be an integer from ${BURST_MIN} to ${BURST_MAX} bytes (got ${burstBytes})`);
  }
  const latencyMs = opts.latencyMs ?? DEFAULT_LATENCY_MS;
  if (!Number.isInteger(latencyMs) || latencyMs < LATENCY_MIN_MS || latencyMs > LATENCY_MAX_MS) {
    throw new RangeError(`latencyMs: must be an integer from ${LATENCY_MIN_MS} to ${LATENCY_MAX_MS} ms (got ${latencyMs})`);
  }
  let pool: Cidr;
  try {
    pool = parseCidr(opts.pool ?? DEFAULT_POOL);
  } catch {
    throw new TypeError(`pool: must be an IPv4 CIDR like '10.231.0.0/16' (got ${JSON.stringify(opts.pool)})`);
  }
  if (pool.prefixLen < 8 || pool.prefixLen > 30) throw new RangeError(`pool: prefix length must be from 8 to 30 (got /${pool.prefixLen})`);
  const queue = opts.queue ?? 'fifo';
  if (queue !== 'fifo' && queue !== 'fair') throw new RangeError(`queue: must be 'fifo' or 'fair' (got ${JSON.stringify(opts.queue)})`);
  if (queue === 'fair' && opts.persistent === true) throw new RangeError("queue: 'fair' is for topologies owned by this process (persistent ones are tbf only)");
  return { prefix, linkMbit, burstBytes, latencyMs, pool, persistent: opts.persistent === true, queue };
}

/**
 * Builds a namespace, a veth pair with a private /30 and tbf shaping on both ends, all links up.
 * First removes leftovers of crashed runs with the same prefix (see reapStale).
 *
 * Besides the connected route, the host gets `unreachable <subnet> metric 9731`: if the host end
 * is ever down, traffic for the lab /30 is refused locally instead of following the default route
 * off the machine.
 *
 * Unless `persistent`, the topology is destroyed when this process exits, even by SIGINT/SIGTERM
 * or an uncaught exception.
 */
export async function createTopology(options: TopologyOptions): Promise<Topology> {
  const o = checkOptions(options);
  await reapStale(o.prefix).catch(() => undefined);
  const ownerPid = o.persistent ? 0 : process.pid;

  // Claim a name: `ip netns add` is atomic, so EEXIST means someone holds this index.
  let topo: LabTopology | null = null;
  const existing = new Set((await runJson<Array<{ name: string }>>('ip', ['-j', 'netns', 'list'], { timeoutMs: CMD_TIMEOUT_MS })).map((e) => e.name));
  for (let tries = 0; tries <= MAX_INDEX && !topo; tries++) {
    const index = (o.persistent ? tries : nextIndex++) % (MAX_INDEX + 1);
    const names = labNames(o.prefix, ownerPid, index);
    if (existing.has(names.nsName)) continue;
    try {
      await run('ip', ['netns', 'add', names.nsName], { timeoutMs: CMD_TIMEOUT_MS });
    } catch (err) {
      if (err instanceof ExecError && /File exists/.test(err.stderr)) continue;
      throw err;
    }
    topo = new LabTopology(names, ownerPid, o.linkMbit, o.burstBytes, o.latencyMs);
  }
  if (!topo) throw new Error(`createTopology: all ${MAX_INDEX + 1} names ${o.prefix}${ownerPid}-* are taken`);
  if (!o.persistent) topo.registerForExit();

  try {
    const ns = topo.nsName;
    await run('ip', ['link', 'add', 'dev', topo.hostIf, 'type', 'veth', 'peer', 'name', topo.nsIf, 'netns', ns], { timeoutMs: CMD_TIMEOUT_MS });

    const slotSeed = ((ownerPid || process.pid) * 2654435761 + Number(ns.split('-')[1]) * 40503) >>> 0;
    let chosen: Cidr | null = null;
    const refused: Cidr[] = [];
    for (let attempt = 0; attempt < 64 && !chosen; attempt++) {
      const cand = chooseSubnet(o.pool, [...(await occupiedPrefixes()), ...refused], slotSeed + attempt);
      if (!cand) throw new Error(`createTopology: no free /30 left in pool ${formatCidr(o.pool)}`);
      const hostAddr = intToIp(cand.base + 1);
      await run('ip', ['addr', 'add', `${hostAddr}/30`, 'dev', topo.hostIf], { timeoutMs: CMD_TIMEOUT_MS });
      if (await mustYield(topo.hostIf, cand)) {
        await run('ip', ['addr', 'del', `${hostAddr}/30`, 'dev', topo.hostIf], { timeoutMs: CMD_TIMEOUT_MS });
        refused.push(cand);
        continue;
      }
      chosen = cand;
    }
    if (!chosen) throw new Error('createTopology: could not claim a /30 after 64 attempts (address race)');
    topo.subnet = formatCidr(chosen);
    topo.hostAddr = intToIp(chosen.base + 1);
    topo.nsAddr = intToIp(chosen.base + 2);
    await run('ip', ['route', 'replace', 'unreachable', topo.subnet, 'metric', String(GUARD_ROUTE_METRIC)], { timeoutMs: CMD_TIMEOUT_MS });
    await run('ip', ['-n', ns, 'addr', 'add', `${topo.nsAddr}/30`, 'dev', topo.nsIf], { timeoutMs: CMD_TIMEOUT_MS });
    topo.queue = o.queue;
    await shape(null, topo.hostIf, topo.linkMbit, topo.burstBytes, topo.latencyMs, o.queue, false);
    await shape(ns, topo.nsIf, topo.linkMbit, topo.burstBytes, topo.latencyMs, o.queue, false);
    await run('ip', ['-n', ns, 'link', 'set', 'dev', 'lo', 'up'], { timeoutMs: CMD_TIMEOUT_MS });
    await run('ip', ['-n', ns, 'link', 'set', 'dev', topo.nsIf, 'up'], { timeoutMs: CMD_TIMEOUT_MS });
    await run('ip', ['link', 'set', 'dev', topo.hostIf, 'up'], { timeoutMs: CMD_TIMEOUT_MS });
    await waitOperUp(null, topo.hostIf, 5_000);
    await waitOperUp(ns, topo.nsIf, 5_000);
    return topo;
  } catch (err) {
    await topo.destroy().catch(() => undefined);
    throw err;
  }
}

/** Topologies created by this process and not destroyed yet. */
export function liveTopologyCount(): number {
  return liveTopologies.size;
}

/** Destroys every topology this process created (tests' after() hook). */
export async function destroyAllTopologies(): Promise<void> {
  await Promise.all([...liveTopologies].map((t) => t.destroy()));
}

// ------------------------------------------------------------------------------------------
// Inspection and reaping
// ------------------------------------------------------------------------------------------

/** tbf settings as the kernel reports them. */
export interface TbfInfo {
  linkMbit: number;
  burstBytes: number;
  latencyMs: number;
}

/** A lab topology as found on the system (any owner). */
export interface TopologyInfo {
  nsName: string;
  hostIf: string;
  nsIf: string;
  ownerPid: number;
  persistent: boolean;
  /** False when the owner died without cleaning up (a reapStale() candidate). */
  ownerAlive: boolean;
  hostAddr: string | null;
  nsAddr: string | null;
  /** Operational state of each end ('UP', 'DOWN', 'LOWERLAYERDOWN'), null when missing. */
  hostState: string | null;
  nsState: string | null;
  /** Host → namespace shaping. */
  hostTbf: TbfInfo | null;
  /** Namespace → host shaping. */
  nsTbf: TbfInfo | null;
}

function tbfFrom(qdiscs: TcQdisc[]): TbfInfo | null {
  const q = qdiscs.find((d) => d.kind === 'tbf' && d.root);
  if (!q?.options || q.options.rate === undefined) return null;
  return {
    linkMbit: (q.options.rate * 8) / 1e6,
    burstBytes: q.options.burst ?? 0,
    latencyMs: (q.options.lat ?? 0) / 1000,
  };
}

function firstV4(entries: IpAddrEntry[], ifname: string): string | null {
  const e = entries.find((a) => a.ifname === ifname);
  return e?.addr_info?.find((i) => i.family === 'inet' || (i.local && i.local.includes('.')))?.local ?? null;
}

async function ignoreGone<T>(p: Promise<T>, fallback: T): Promise<T> {
  try {
    return await p;
  } catch (err) {
    if (isGone(err)) return fallback;
    throw err;
  }
}

/** Lists the lab topologies with this prefix that exist on the host, with their live state. */
export async function listTopologies(prefix: string = DEFAULT_PREFIX): Promise<TopologyInfo[]> {
  checkPrefix(prefix);
  const [nsList, hostAddrs] = await Promise.all([
    runJson<Array<{ name: string }>>('ip', ['-j', 'netns', 'list'], { timeoutMs: CMD_TIMEOUT_MS }),
    runJson<IpAddrEntry[]>('ip', ['-j', 'addr', 'show'], { timeoutMs: CMD_TIMEOUT_MS }),
  ]);
  const out: TopologyInfo[] = [];
  for (const { name } of nsList) {
    const parsed = parseLabName(prefix, name);
    if (!parsed || parsed.role !== 'ns') continue;
    const n = labNames(prefix, parsed.ownerPid, parsed.index);
    const hostLink = hostAddrs.find((a) => a.ifname === n.hostIf);
    const [nsAddrs, hostQ, nsQ] = await Promise.all([
      ignoreGone(runJson<IpAddrEntry[]>('ip', ['-n', name, '-j', 'addr', 'show', 'dev', n.nsIf], { timeoutMs: CMD_TIMEOUT_MS }), []),
      hostLink ? ignoreGone(runJson<TcQdisc[]>('tc', ['-j', 'qdisc', 'show', 'dev', n.hostIf], { timeoutMs: CMD_TIMEOUT_MS }), []) : Promise.resolve([]),
      ignoreGone(runJson<TcQdisc[]>('tc', ['-n', name, '-j', 'qdisc', 'show', 'dev', n.nsIf], { timeoutMs: CMD_TIMEOUT_MS }), []),
    ]);
    out.push({
      ...n,
      ownerPid: parsed.ownerPid,
      persistent: parsed.ownerPid === 0,
      ownerAlive: parsed.ownerPid === 0 || pidAlive(parsed.ownerPid),
      hostAddr: firstV4(hostAddrs, n.hostIf),
      nsAddr: firstV4(nsAddrs, n.nsIf),
      hostState: hostLink?.operstate ?? null,
      nsState: nsAddrs[0]?.operstate ?? null,
      hostTbf: tbfFrom(hostQ),
      nsTbf: tbfFrom(nsQ),
    });
  }
  return out;
}

/**
 * A handle on an existing lab topology (made by another process or `dpa lab net up`), for
 * setRate/cut/restore/destroy. Not tied to this process's exit.
 */
export async function openTopology(nsName: string, prefix: string = DEFAULT_PREFIX): Promise<Topology> {
  checkNsName(nsName);
  const parsed = parseLabName(prefix, nsName);
  if (!parsed || parsed.role !== 'ns') throw new TypeError(`${JSON.stringify(nsName)} is not a lab namespace name with prefix '${prefix}'`);
  const info = (await listTopologies(prefix)).find((t) => t.nsName === nsName);
  if (!info) throw new Error(`no lab topology ${nsName}`);
  if (!info.hostAddr || !info.nsAddr || !info.hostTbf) throw new Error(`lab topology ${nsName} is incomplete (half-built or half-removed): remove it with destroy()`);
  // The kernel reports the burst rounded to its time base; one within 1% of the default for the
  // rate was a default, and must keep following the rate on setRate() rather than drift.
  const { linkMbit, burstBytes, latencyMs } = info.hostTbf;
  const burstWasDefault = Math.abs(burstBytes - defaultBurstBytes(linkMbit)) <= defaultBurstBytes(linkMbit) * 0.01;
  const topo = new LabTopology(info, info.ownerPid, linkMbit, burstWasDefault ? undefined : burstBytes, Math.round(latencyMs));
  topo.hostAddr = info.hostAddr;
  topo.nsAddr = info.nsAddr;
  topo.subnet = formatCidr({ base: ipToInt(info.hostAddr) & maskOf(30), prefixLen: 30 });
  topo.isCut = info.nsState === 'DOWN';
  return topo;
}

/** Removes one lab topology by namespace name, whoever owns it, idempotently. */
export async function removeTopology(nsName: string, prefix: string = DEFAULT_PREFIX): Promise<void> {
  checkNsName(nsName);
  const parsed = parseLabName(prefix, nsName);
  if (!parsed || parsed.role !== 'ns') throw new TypeError(`${JSON.stringify(nsName)} is not a lab namespace name with prefix '${prefix}'`);
  const n = labNames(prefix, parsed.ownerPid, parsed.index);
  const addrs = await ignoreGone(runJson<IpAddrEntry[]>('ip', ['-j', '-4', 'addr', 'show', 'dev', n.hostIf], { timeoutMs: CMD_TIMEOUT_MS }), []);
  const hostAddr = firstV4(addrs, n.hostIf);
  const subnet = hostAddr ? formatCidr({ base: ipToInt(hostAddr) & maskOf(30), prefixLen: 30 }) : null;
  await killNsProcesses(n.nsName);
  for (const [cmd, args] of teardownCommands(n, subnet)) {
    try {
      await run(cmd, args, { timeoutMs: CMD_TIMEOUT_MS });
    } catch (err) {
      if (!isGone(err)) throw err;
    }
  }
}

async function killNsProcesses(nsName: string): Promise<void> {
  let pids: number[] = [];
  try {
    const { stdout } = await run('ip', ['netns', 'pids', nsName], { timeoutMs: CMD_TIMEOUT_MS });
    pids = stdout.split(/\s+/).filter((s) => /^\d+$/.test(s)).map(Number);
  } catch (err) {
    if (!isGone(err)) throw err;
  }
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

export interface ReapReport {
  namespaces: string[];
  links: string[];
  routes: string[];
}

/**
 * Removes what crashed runs left behind: namespaces and host veths named with this prefix whose
 * owner pid is dead (persistent ones, owner 0, are kept), the processes still inside such
 * namespaces, and guard routes whose /30 no interface holds any more. Live runs are never
 * touched. (A dead owner's pid reused by an unrelated process hides its leftovers until that
 * process exits: the safe direction.)
 */
export async function reapStale(prefix: string = DEFAULT_PREFIX): Promise<ReapReport> {
  checkPrefix(prefix);
  const report: ReapReport = { namespaces: [], links: [], routes: [] };
  const stale = (name: string, role: ParsedLabName['role']): boolean => {
    const p = parseLabName(prefix, name);
    return p !== null && p.role === role && p.ownerPid !== 0 && p.ownerPid !== process.pid && !pidAlive(p.ownerPid);
  };

  const links = await runJson<IpAddrEntry[]>('ip', ['-j', 'link', 'show', 'type', 'veth'], { timeoutMs: CMD_TIMEOUT_MS });
  for (const l of links) {
    if (!stale(l.ifname, 'host')) continue;
    try {
      await run('ip', ['link', 'del', 'dev', checkIfName(l.ifname)], { timeoutMs: CMD_TIMEOUT_MS });
      report.links.push(l.ifname);
    } catch (err) {
      if (!isGone(err)) throw err;
    }
  }

  const nsList = await runJson<Array<{ name: string }>>('ip', ['-j', 'netns', 'list'], { timeoutMs: CMD_TIMEOUT_MS });
  for (const { name } of nsList) {
    if (!stale(name, 'ns')) continue;
    await killNsProcesses(checkNsName(name));
    try {
      await run('ip', ['netns', 'del', name], { timeoutMs: CMD_TIMEOUT_MS });
      report.namespaces.push(name);
    } catch (err) {
      if (!isGone(err)) throw err;
    }
  }

  const [routes, addrs] = await Promise.all([
    runJson<IpRouteEntry[]>('ip', ['-j', '-4', 'route', 'show', 'type', 'unreachable'], { timeoutMs: CMD_TIMEOUT_MS }),
    runJson<IpAddrEntry[]>('ip', ['-j', '-4', 'addr', 'show'], { timeoutMs: CMD_TIMEOUT_MS }),
  ]);
  const held: Cidr[] = [];
  for (const a of addrs) for (const i of a.addr_info ?? []) if (i.local && i.prefixlen !== undefined) held.push(parseCidr(`${i.local}/${i.prefixlen}`));
  for (const r of routes) {
    if (r.metric !== GUARD_ROUTE_METRIC || !r.dst || !/^\d+\.\d+\.\d+\.\d+\/30$/.test(r.dst)) continue;
    const dst = parseCidr(r.dst);
    if (held.some((h) => cidrsOverlap(h, dst))) continue;
    try {
      await run('ip', ['route', 'del', 'unreachable', r.dst, 'metric', String(GUARD_ROUTE_METRIC)], { timeoutMs: CMD_TIMEOUT_MS });
      report.routes.push(r.dst);
    } catch (err) {
      if (!isGone(err)) throw err;
    }
  }
  return report;
}

// ------------------------------------------------------------------------------------------
// Processes inside the namespace
// ------------------------------------------------------------------------------------------

/** Children started by spawnInNs and still running → their namespace. */
const nsChildren = new Map<ChildProcess, string>();
let unregisterChildrenCleanup: (() => void) | null = null;

async function killNsChildren(nsName: string, graceMs = 500): Promise<void> {
  const mine = [...nsChildren].filter(([, ns]) => ns === nsName).map(([c]) => c);
  await Promise.all(
    mine.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
          child.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
          child.kill('SIGTERM');
        }),
    ),
  );
}

/**
 * Starts `cmd args...` inside the namespace via `ip netns exec` (no shell; `ip` execs the
 * command, so the child's pid is the command's). The child is killed when its topology is
 * destroyed or this process exits.
 */
export function spawnInNs(ns: string | Pick<Topology, 'nsName'>, cmd: string, args: readonly string[] = [], options: SpawnOptions = {}): ChildProcess {
  const nsName = checkNsName(typeof ns === 'string' ? ns : ns.nsName);
  if (typeof cmd !== 'string' || cmd === '' || cmd.startsWith('-')) throw new TypeError(`cmd: must be a non-empty string not starting with '-' (got ${JSON.stringify(cmd)})`);
  for (const a of args) if (typeof a !== 'string') throw new TypeError('args: every argument must be a string');
  const child = spawn('ip', ['netns', 'exec', nsName, cmd, ...args], { ...options, shell: false });
  nsChildren.set(child, nsName);
  if (!unregisterChildrenCleanup) {
    unregisterChildrenCleanup = registerExitCleanup(() => {
      for (const c of nsChildren.keys()) c.kill('SIGKILL');
      nsChildren.clear();
      unregisterChildrenCleanup = null;
    });
  }
  const forget = (): void => {
    nsChildren.delete(child);
  };
  child.once('exit', forget);
  child.once('error', forget);
  return child;
}

// ------------------------------------------------------------------------------------------
// Throughput probe
// ------------------------------------------------------------------------------------------

/** One byte-counter reading: receiver's monotonic clock (ms) and bytes received so far. */
export interface CounterSample {
  tMs: number;
  bytes: number;
}

/**
 * Receive rate, bytes/s, from a receiver's counter readings: from `warmupMs` after the first
 * byte (skips the tbf burst and TCP slow start) to the last reading that still grew (skips the
 * idle tail after the sender stopped). Throws when fewer than two readings span that window.
 */
export function rateFromSamples(samples: readonly CounterSample[], warmupMs: number): number {
  const firstByte = samples.findIndex((s) => s.bytes > 0);
  if (firstByte < 0) throw new Error('rateFromSamples: no bytes were received');
  let last = samples.length - 1;
  while (last > 0 && samples[last]!.bytes === samples[last - 1]!.bytes) last--;
  const t0 = samples[firstByte]!.tMs + warmupMs;
  const start = samples.findIndex((s) => s.tMs >= t0);
  if (start < 0 || last <= start) throw new Error(`rateFromSamples: the transfer lasted less than the ${warmupMs} ms warm-up plus one sample`);
  const a = samples[start]!;
  const b = samples[last]!;
  return ((b.bytes - a.bytes) * 1000) / (b.tMs - a.tMs);
}

/** Runs in the namespace: a TCP sink printing `{"port"}` and then `{"tMs","bytes"}` every 50 ms. */
const SINK_JS = `
const net = require('net');
let bytes = 0;
const t0 = process.hrtime.bigint();
const srv = net.createServer((s) => { s.on('data', (b) => { bytes += b.length; }); s.on('error', () => {}); });
srv.listen(0, process.argv[1], () => {
  process.stdout.write(JSON.stringify({ port: srv.address().port }) + '\\n');
  setInterval(() => process.stdout.write(JSON.stringify({ tMs: Number(process.hrtime.bigint() - t0) / 1e6, bytes }) + '\\n'), 50);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

/** Runs in the namespace: connects to argv[1]:argv[2] and sends as fast as allowed for argv[3] ms. */
const SOURCE_JS = `
const net = require('net');
const buf = Buffer.alloc(256 * 1024, 0x5a);
const s = net.connect({ host: process.argv[1], port: Number(process.argv[2]) }, () => {
  const end = Date.now() + Number(process.argv[3]);
  const pump = () => {
    while (Date.now() < end) if (!s.write(buf)) return void s.once('drain', pump);
    s.end(() => process.exit(0));
  };
  pump();
});
s.on('error', (e) => { process.stderr.write(e.message + '\\n'); process.exit(1); });
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

/** A byte-counting TCP server running inside the namespace. */
export interface NsSink {
  /** Address and port to connect to (nsAddr:port). */
  host: string;
  port: number;
  /** Counter readings so far (sink's clock). */
  readonly samples: readonly CounterSample[];
  /** Bytes received so far (latest reading, ≤ 50 ms old). */
  bytes(): number;
  close(): Promise<void>;
}

/** Starts a TCP sink in the namespace listening on nsAddr (for throughput and cut tests). */
export async function startNsSink(topo: Topology, timeoutMs = 10_000): Promise<NsSink> {
  const child = spawnInNs(topo, process.execPath, ['-e', SINK_JS, topo.nsAddr], { stdio: ['pipe', 'pipe', 'pipe'] });
  const samples: CounterSample[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines = createInterface({ input: child.stdout! });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sink in ${topo.nsName} did not start within ${timeoutMs} ms: ${stderr}`)), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`sink in ${topo.nsName} exited (${code}): ${stderr}`));
    });
    lines.on('line', (line) => {
      let msg: { port?: number; tMs?: number; bytes?: number };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        return; // not ours (e.g. a warning printed by node): ignore rather than crash the caller
      }
      if (msg.port !== undefined) {
        clearTimeout(timer);
        resolve(msg.port);
      } else if (msg.tMs !== undefined && msg.bytes !== undefined) samples.push({ tMs: msg.tMs, bytes: msg.bytes });
    });
  });
  return {
    host: topo.nsAddr,
    port,
    samples,
    bytes: () => samples[samples.length - 1]?.bytes ?? 0,
    close: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.stdin!.end();
        setTimeout(() => child.kill('SIGKILL'), 1_000).unref();
      }),
  };
}

export interface ThroughputOptions {
  /** 'host-to-ns' exercises the host end's tbf, 'ns-to-host' the namespace end's. */
  direction?: 'host-to-ns' | 'ns-to-host';
  /** Measured window, ms, 200..60000; default 1500. */
  durationMs?: number;
  /** Discarded start of the transfer, ms, 0..10000; default 300. */
  warmupMs?: number;
}

export interface ThroughputResult {
  direction: 'host-to-ns' | 'ns-to-host';
  /** TCP payload received per second in the measured window. */
  bytesPerSec: number;
  /** The same in Mbit/s (10^6 bit), comparable with linkMbit (which also counts headers). */
  mbitPerSec: number;
  /** Bytes received over the whole transfer. */
  totalBytes: number;
}

/**
 * Measures TCP goodput across the link with one stream: sender as fast as TCP allows, receiver
 * counting bytes on its own clock. Expect about 95% of linkMbit: tbf meters whole Ethernet frames
 * (14 + 20 + 32 header bytes per 1448 payload bytes).
 */
export async function measureThroughput(topo: Topology, options: ThroughputOptions = {}): Promise<ThroughputResult> {
  const direction = options.direction ?? 'host-to-ns';
  if (direction !== 'host-to-ns' && direction !== 'ns-to-host') throw new TypeError(`direction: must be 'host-to-ns' or 'ns-to-host' (got ${JSON.stringify(direction)})`);
  const durationMs = options.durationMs ?? 1500;
  const warmupMs = options.warmupMs ?? 300;
  if (!Number.isInteger(durationMs) || durationMs < 200 || durationMs > 60_000) throw new RangeError(`durationMs: must be an integer from 200 to 60000 ms (got ${durationMs})`);
  if (!Number.isInteger(warmupMs) || warmupMs < 0 || warmupMs > 10_000) throw new RangeError(`warmupMs: must be an integer from 0 to 10000 ms (got ${warmupMs})`);
  const sendMs = warmupMs + durationMs + 100;

  let samples: CounterSample[];
  if (direction === 'host-to-ns') {
    const sink = await startNsSink(topo);
    try {
      await pumpFromHost(sink.host, sink.port, topo.hostAddr, sendMs);
      samples = [...sink.samples];
    } finally {
      await sink.close();
    }
  } else {
    samples = await receiveOnHost(topo, sendMs);
  }
  const bytesPerSec = rateFromSamples(samples, warmupMs);
  return { direction, bytesPerSec, mbitPerSec: (bytesPerSec * 8) / 1e6, totalBytes: samples[samples.length - 1]?.bytes ?? 0 };
}

/**
 * Sends from the host as fast as TCP allows for sendMs, then closes. Gives up (rejects) when the
 * connection cannot be made or stays blocked 5 s past sendMs, e.g. across a cut link.
 */
function pumpFromHost(host: string, port: number, localAddress: string, sendMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const buf = Buffer.alloc(256 * 1024, 0x5a);
    const started = Date.now();
    let connectedMs = -1;
    const s = net.connect({ host, port, localAddress });
    const watchdog = setTimeout(() => {
      const state = connectedMs < 0 ? 'never connected' : `connected after ${connectedMs} ms, ${s.bytesWritten - s.writableLength} bytes sent`;
      s.destroy();
      reject(new Error(`sending to ${host}:${port}: not done ${sendMs + 5_000} ms after start (${state}; link cut?)`));
    }, sendMs + 5_000);
    s.once('connect', () => {
      connectedMs = Date.now() - started;
      const end = Date.now() + sendMs;
      const pump = (): void => {
        while (Date.now() < end) {
          if (!s.write(buf)) {
            s.once('drain', pump);
            return;
          }
        }
        clearTimeout(watchdog);
        s.destroy();
        resolve();
      };
      pump();
    });
    s.on('error', (err) => {
      clearTimeout(watchdog);
      reject(err);
    });
  });
}

/** Runs a sender in the namespace towards a counting server on hostAddr; returns the readings. */
async function receiveOnHost(topo: Topology, sendMs: number): Promise<CounterSample[]> {
  const samples: CounterSample[] = [];
  let bytes = 0;
  const t0 = process.hrtime.bigint();
  const sampleNow = (): void => {
    samples.push({ tMs: Number(process.hrtime.bigint() - t0) / 1e6, bytes });
  };
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const server = net.createServer((s) => {
    s.on('data', (b: Buffer) => (bytes += b.length));
    s.on('error', () => undefined);
    s.on('close', done);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, topo.hostAddr, resolve);
  });
  const timer = setInterval(sampleNow, 50);
  try {
    const port = (server.address() as net.AddressInfo).port;
    const child = spawnInNs(topo, process.execPath, ['-e', SOURCE_JS, topo.hostAddr, String(port), String(sendMs)], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const within = <T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> => {
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([p, new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)))]).finally(() => clearTimeout(timer));
    };
    // The sender exits once its data is handed to its kernel; the host then still receives
    // what was queued in the namespace's tbf (≤ latencyMs) before the FIN.
    const code = await within(exited, sendMs + 15_000);
    if (code === 'timeout') {
      child.kill('SIGKILL');
      throw new Error(`ns-to-host sender in ${topo.nsName} did not finish: ${stderr}`);
    }
    if (code !== 0) throw new Error(`ns-to-host sender in ${topo.nsName} exited ${code}: ${stderr}`);
    if ((await within(finished, 5_000)) === 'timeout') throw new Error(`ns-to-host stream from ${topo.nsName} never closed`);
    sampleNow();
    return samples;
  } finally {
    clearInterval(timer);
    server.close();
  }
}
