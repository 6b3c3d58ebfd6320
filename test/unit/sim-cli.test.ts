import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { CommandIO } from '../../src/cli/command';
import { runCli } from '../../src/cli/main';

const scenarios = join(__dirname, '..', '..', '..', 'scenarios');

function capture(): { io: CommandIO; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  return {
    io: { out: (t) => (out += t), err: (t) => (err += t), isTTY: false, signal: new AbortController().signal },
    out: () => out,
    err: () => err,
  };
}

test('dpa simulate --json reports every policy with the documented fields', async () => {
  const c = capture();
  assert.equal(await runCli(['simulate', join(scenarios, 'tiny-omega.json'), '--json'], c.io), 0, c.err());
  const doc = JSON.parse(c.out());
  assert.equal(doc.scenario.name, 'tiny-omega');
  assert.deepEqual(
    doc.results.map((r: { policy: string }) => r.policy),
    ['paper', 'fitted', 'static', 'unthrottled', 'mirror-only'],
  );
  for (const r of doc.results) {
    for (const key of ['overflowed', 'failedMigrations', 'maxOmegaUsedBytes', 'writeRetained', 'minThrottleBytesPerSec', 'jain', 'makespanSec', 'completionSec']) assert.ok(key in r, `${r.policy}.${key}`);
    assert.deepEqual(Object.keys(r.completionSec), ['db', 'web']);
    assert.ok(r.writeRetained >= 0 && r.writeRetained <= 1 && r.jain > 0 && r.jain <= 1);
  }
  const byName = Object.fromEntries(doc.results.map((r: { policy: string }) => [r.policy, r]));
  assert.equal(byName.unthrottled.overflowed, true);
  assert.equal(byName.fitted.overflowed, false);
});

test('dpa simulate --policy runs one policy; the text table has one row per policy', async () => {
  const c = capture();
  assert.equal(await runCli(['simulate', join(scenarios, 'calm.json'), '--policy', 'fitted', '--json'], c.io), 0);
  assert.deepEqual(
    JSON.parse(c.out()).results.map((r: { policy: string }) => r.policy),
    ['fitted'],
  );
  const t = capture();
  assert.equal(await runCli(['simulate', join(scenarios, 'calm.json')], t.io), 0);
  for (const p of ['paper', 'fitted', 'static', 'unthrottled', 'mirror-only']) assert.match(t.out(), new RegExp(`^${p} `, 'm'));
});

test('dpa simulate --plot writes one self-contained HTML page (inline SVG, nothing fetched)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'dpa-plot-'));
  try {
    const file = join(dir, 'out.html');
    const c = capture();
    assert.equal(await runCli(['simulate', join(scenarios, 'three-writers.json'), '--plot', file], c.io), 0, c.err());
    const html = readFileSync(file, 'utf8');
    assert.match(html, /^<!doctype html>/);
    assert.equal((html.match(/<section>/g) ?? []).length, 5);
    assert.ok((html.match(/<svg /g) ?? []).length >= 20);
    assert.doesNotMatch(html, /(src|href)\s*=\s*["']?(https?:)?\/\//i);
    assert.doesNotMatch(html, /<script[^>]+src=|<link[^>]+stylesheet|@import|url\(/i);
    for (const id of ['db', 'web', 'batch']) assert.match(html, new RegExp(`<title>${id} overlay</title>`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a bad scenario file exits 2 naming the JSON path; missing or extra files are usage errors', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'dpa-bad-'));
  try {
    const doc = JSON.parse(readFileSync(join(scenarios, 'link-drop.json'), 'utf8'));
    doc.link.points[1][0] = 0;
    writeFileSync(join(dir, 'bad.json'), JSON.stringify(doc));
    const c = capture();
    assert.equal(await runCli(['simulate', join(dir, 'bad.json')], c.io), 2);
    assert.match(c.err(), /link\.points\[1\]\[0\]: times must increase/);
    writeFileSync(join(dir, 'broken.json'), '{"version": 1,');
    const b = capture();
    assert.equal(await runCli(['simulate', join(dir, 'broken.json')], b.io), 2);
    assert.match(b.err(), /\$: not valid JSON/);
    const none = capture();
    assert.equal(await runCli(['simulate'], none.io), 2);
    assert.match(none.err(), /exactly one scenario file/);
    const wrongPolicy = capture();
    assert.equal(await runCli(['simulate', join(scenarios, 'calm.json'), '--policy', 'greedy'], wrongPolicy.io), 2);
    assert.match(wrongPolicy.err(), /--policy: must be one of paper, fitted, static, unthrottled, mirror-only/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('dpa simulate --random checks fitted against its targets on generated scenarios', async () => {
  const c = capture();
  assert.equal(await runCli(['simulate', '--random', '3', '--seed', '11', '--json'], c.io), 0, c.err());
  const doc = JSON.parse(c.out());
  assert.equal(doc.random.count, 3);
  assert.deepEqual(Object.keys(doc.violations), ['overflow', 'failed-where-others-did-not', 'below-paper', 'below-static']);
  assert.deepEqual(Object.keys(doc.perPolicy), ['paper', 'fitted', 'static', 'unthrottled', 'mirror-only']);
  const e = capture();
  assert.equal(await runCli(['simulate', '--random', '2', join(scenarios, 'calm.json')], e.io), 2);
});

test('dpa simulate --late-phase-weight changes only fitted: late-phase priority buys it Ω on the burst, and the value is checked', async () => {
  const run = async (...extra: string[]): Promise<Record<string, { writeRetained: number; failedMigrations: number }>> => {
    const c = capture();
    assert.equal(await runCli(['simulate', join(scenarios, 'burst.json'), '--json', ...extra], c.io), 0, c.err());
    return Object.fromEntries(JSON.parse(c.out()).results.map((r: { policy: string; writeRetained: number; failedMigrations: number }) => [r.policy, r]));
  };
  const [byDefault, equal, priority, equalWorld] = [await run(), await run('--late-phase-weight', '1'), await run('--late-phase-weight', '1000'), await run('--late-phase-weight', '1000', '--link-sharing', 'equal')];
  assert.deepEqual(byDefault, equal);
  assert.deepEqual(priority.paper, byDefault.paper);
  assert.equal(priority.fitted!.failedMigrations, 0);
  // docs/BENCHMARKS.md: 41.0 % with late-phase priority, 32.9 % with equal shares; paper 23.9 %.
  assert.ok(priority.fitted!.writeRetained - byDefault.fitted!.writeRetained > 0.05, `${priority.fitted!.writeRetained} vs ${byDefault.fitted!.writeRetained}`);
  assert.ok(byDefault.fitted!.writeRetained > byDefault.paper!.writeRetained);
  // On a link shared equally whatever fitted asks, asking for priority buys nothing.
  assert.ok(equalWorld.fitted!.writeRetained < byDefault.fitted!.writeRetained + 0.005, `${equalWorld.fitted!.writeRetained}`);
  // paper asks for equal shares anyway (U/N): the same run, to rounding.
  assert.equal(equalWorld.paper!.failedMigrations, byDefault.paper!.failedMigrations);
  assert.ok(Math.abs(equalWorld.paper!.writeRetained - byDefault.paper!.writeRetained) < 1e-9);
  const bad = capture();
  assert.equal(await runCli(['simulate', '--random', '2', '--late-phase-weight', '0'], bad.io), 2);
  assert.match(bad.err(), /--late-phase-weight: must be a number from 1 to 1000000/);
  const badSharing = capture();
  assert.equal(await runCli(['simulate', join(scenarios, 'calm.json'), '--link-sharing', 'fifo'], badSharing.io), 2);
  assert.match(badSharing.err(), /--link-sharing: must be one of policy, equal/);
});

test('dpa bench simulate --json reports wall time, ticks and ticks per second', async () => {
  const c = capture();
  assert.equal(await runCli(['bench', 'simulate', '--vms', '4', '--sim-seconds', '120', '--tick-ms', '100', '--json'], c.io), 0, c.err());
  const doc = JSON.parse(c.out());
  // Ticks with nothing in flight (before the first start) are skipped.
  assert.ok(doc.ticks > 1000 && doc.ticks <= 1200, `ticks ${doc.ticks}`);
  assert.ok(doc.wallSec > 0 && Math.abs(doc.ticksPerSec - doc.ticks / doc.wallSec) < 1e-6 * doc.ticksPerSec);
  assert.equal(doc.policy, 'fitted');
  assert.deepEqual(Object.keys(doc.perPolicy), ['fitted']);
  assert.equal(doc.perPolicy.fitted.wallSec, doc.wallSec);
  const all = capture();
  assert.equal(await runCli(['bench', 'simulate', '--vms', '3', '--sim-seconds', '60', '--policy', 'all', '--json'], all.io), 0, all.err());
  const every = JSON.parse(all.out());
  assert.equal(every.policy, 'all');
  assert.deepEqual(Object.keys(every.perPolicy), ['paper', 'fitted', 'static', 'unthrottled', 'mirror-only']);
  let wall = 0;
  for (const r of Object.values(every.perPolicy) as Array<{ wallSec: number; ticks: number }>) {
    assert.ok(r.wallSec > 0 && r.ticks > 0);
    wall += r.wallSec;
  }
  assert.ok(Math.abs(every.wallSec - wall) < 1e-9, 'the top-level wall time is the sum over the policies');
  const bad = capture();
  assert.equal(await runCli(['bench', 'simulate', '--vms', '0'], bad.io), 2);
  assert.match(bad.err(), /--vms: must be an integer from 1 to 4096/);
});
