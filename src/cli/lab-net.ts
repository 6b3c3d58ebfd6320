/**
 * `dpa lab net <action>`: builds, inspects, reshapes and removes lab network topologies by hand
 * (namespace + shaped veth, see src/lab/netns.ts). Topologies made with `up` outlive the command
 * (owner pid 0 in their names) until `down`.
 */
import { jsonOption, UsageError } from './args';
import { defineCommand } from './command';
import {
  createTopology,
  DEFAULT_PREFIX,
  LINK_MBIT_MAX,
  LINK_MBIT_MIN,
  listTopologies,
  measureThroughput,
  openTopology,
  reapStale,
  removeTopology,
  type TopologyInfo,
} from '../lab/netns';

const ACTIONS = ['up', 'down', 'show', 'rate', 'cut', 'restore', 'measure'] as const;
type Action = (typeof ACTIONS)[number];
const DEFAULT_UP_MBIT = 100;

function describe(t: TopologyInfo): string {
  const shape = (x: TopologyInfo['hostTbf']): string => (x ? `${+x.linkMbit.toFixed(3)} Mbit/s (burst ${x.burstBytes} B, latency ${x.latencyMs} ms)` : 'unshaped');
  const owner = t.persistent ? 'persistent' : `pid ${t.ownerPid}${t.ownerAlive ? '' : ' (dead: stale)'}`;
  return [
    `${t.nsName}  owner ${owner}`,
    `  host ${t.hostIf} ${t.hostAddr ?? '-'} [${t.hostState ?? 'missing'}]  →  ${shape(t.hostTbf)}`,
    `  ns   ${t.nsIf} ${t.nsAddr ?? '-'} [${t.nsState ?? 'missing'}]  →  ${shape(t.nsTbf)}`,
  ].join('\n');
}

export const command = defineCommand({
  words: ['lab', 'net'],
  summary: 'create, inspect, reshape, cut or remove a lab network namespace joined by a tbf-shaped veth (root)',
  usage: `{${ACTIONS.join('|')}} [NAMESPACE...] [--link-mbit N] [--burst-bytes B] [--latency-ms L] [--duration-ms D] [--json]`,
  options: {
    linkMbit: { type: 'number', min: LINK_MBIT_MIN, max: LINK_MBIT_MAX, description: `tbf rate of both directions; up: default ${DEFAULT_UP_MBIT}; rate: required`, unit: 'Mbit/s' },
    burstBytes: { type: 'int', min: 1600, max: 64 * 1024 * 1024, description: 'tbf bucket (up only; default: 4 ms of rate, at least 64 KiB)', unit: 'bytes' },
    latencyMs: { type: 'int', min: 1, max: 10_000, default: 50, description: 'tbf maximum queueing delay (up only)', unit: 'ms' },
    durationMs: { type: 'int', min: 200, max: 60_000, default: 1500, description: 'measure: window per direction, after a 300 ms warm-up', unit: 'ms' },
    prefix: { type: 'string', default: DEFAULT_PREFIX, description: 'name prefix of lab namespaces (1-3 letters)' },
    ...jsonOption,
  },
  async run(options, positionals, io) {
    const [actionWord, ...names] = positionals;
    if (!actionWord || !(ACTIONS as readonly string[]).includes(actionWord)) {
      throw new UsageError(`action: must be one of ${ACTIONS.join(', ')} (got ${actionWord === undefined ? 'nothing' : `'${actionWord}'`})`);
    }
    const action = actionWord as Action;
    const prefix = options.prefix;
    const print = (json: unknown, text: string): void => io.out(options.json ? JSON.stringify(json) + '\n' : text + '\n');
    const infoOf = async (ns: string): Promise<TopologyInfo> => {
      const info = (await listTopologies(prefix)).find((t) => t.nsName === ns);
      if (!info) throw new Error(`no lab topology ${ns}`);
      return info;
    };
    /** The one topology an action applies to: named, or the only persistent one. */
    const target = async (): Promise<string> => {
      if (names.length > 1) throw new UsageError(`${action}: takes at most one NAMESPACE`);
      if (names[0]) return names[0];
      const persistent = (await listTopologies(prefix)).filter((t) => t.persistent);
      if (persistent.length === 1) return persistent[0]!.nsName;
      throw new UsageError(`${action}: name the topology (${persistent.length ? persistent.map((t) => t.nsName).join(', ') : 'none made with `up` exists'})`);
    };

    switch (action) {
      case 'up': {
        if (names.length) throw new UsageError('up: takes no NAMESPACE (names are generated)');
        const topo = await createTopology({
          name: prefix,
          linkMbit: options.linkMbit ?? DEFAULT_UP_MBIT,
          latencyMs: options.latencyMs,
          ...(options.burstBytes !== undefined ? { burstBytes: options.burstBytes } : {}),
          persistent: true,
        });
        const info = await infoOf(topo.nsName);
        print(info, `${describe(info)}\nrun inside it: ip netns exec ${topo.nsName} <command>; remove: dpa lab net down ${topo.nsName}`);
        return 0;
      }
      case 'show': {
        const all = await listTopologies(prefix);
        const shown = names.length ? all.filter((t) => names.includes(t.nsName)) : all;
        const missing = names.filter((n) => !all.some((t) => t.nsName === n));
        if (missing.length) throw new Error(`no lab topology ${missing.join(', ')}`);
        print(shown, shown.length ? shown.map(describe).join('\n') : `no lab topologies with prefix '${prefix}'`);
        return 0;
      }
      case 'rate': {
        if (options.linkMbit === undefined) throw new UsageError(`rate: --link-mbit is required: a number from ${LINK_MBIT_MIN} to ${LINK_MBIT_MAX} Mbit/s`);
        const topo = await openTopology(await target(), prefix);
        await topo.setRate(options.linkMbit);
        const info = await infoOf(topo.nsName);
        print(info, describe(info));
        return 0;
      }
      case 'cut':
      case 'restore': {
        const topo = await openTopology(await target(), prefix);
        await (action === 'cut' ? topo.cut() : topo.restore());
        const info = await infoOf(topo.nsName);
        print(info, describe(info));
        return 0;
      }
      case 'measure': {
        const topo = await openTopology(await target(), prefix);
        const results = [];
        for (const direction of ['host-to-ns', 'ns-to-host'] as const) {
          const r = await measureThroughput(topo, { direction, durationMs: options.durationMs });
          results.push({ ...r, ratio: r.mbitPerSec / topo.linkMbit });
        }
        print(
          { nsName: topo.nsName, linkMbit: topo.linkMbit, results },
          results
            .map((r) => `${r.direction}: ${r.mbitPerSec.toFixed(1)} Mbit/s TCP goodput over ${options.durationMs} ms, tbf ${+topo.linkMbit.toFixed(3)} Mbit/s (${(r.ratio * 100).toFixed(1)}%)`)
            .join('\n'),
        );
        return 0;
      }
      case 'down': {
        // Without names: every persistent topology plus crashed runs' leftovers; topologies of
        // live processes are only removed when named.
        const all = await listTopologies(prefix);
        const victims = names.length ? names : all.filter((t) => t.persistent).map((t) => t.nsName);
        const unknown = names.filter((n) => !all.some((t) => t.nsName === n));
        if (unknown.length) throw new Error(`no lab topology ${unknown.join(', ')}`);
        for (const ns of victims) await removeTopology(ns, prefix);
        const reaped = await reapStale(prefix);
        const removed = [...victims, ...reaped.namespaces];
        print({ removed, reaped }, removed.length ? `removed ${removed.join(', ')}` : 'nothing to remove');
        return 0;
      }
    }
  },
});
