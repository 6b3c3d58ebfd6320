import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadScenario, parseScenario, RateTrack, ScenarioError } from '../../src/sim/scenario';

const root = join(__dirname, '..', '..', '..');
const good = (): Record<string, unknown> => ({
  version: 1,
  name: 't',
  omegaBytes: 1e9,
  maxSimSeconds: 100,
  link: { bytesPerSec: 1e8 },
  vms: [
    { id: 'a', startSec: 0, diskBytes: 1e9, ramBytes: 2 ** 30, diskWrites: { bytesPerSec: 1e6 }, ramDirty: { pagesPerSec: 100, hotPages: 1000 } },
    { id: 'b', startSec: 5, diskBytes: 1e9, ramBytes: 2 ** 30, diskWrites: { points: [[0, 1e6], [10, 2e6]] }, ramDirty: { pagesPerSec: 100, hotPages: 1000 } },
  ],
});

function rejects(mutate: (doc: any) => void, path: string, problem: RegExp): void {
  const doc = good();
  mutate(doc);
  assert.throws(
    () => parseScenario(doc),
    (err: unknown) => {
      assert.ok(err instanceof ScenarioError && err instanceof RangeError);
      assert.equal(err.path, path);
      assert.match(err.message, problem);
      assert.ok(err.message.startsWith(`${path}: `));
      return true;
    },
  );
}

test('defaults: γ_SLA 10 kB/s, 100 ms ticks, static bins of Ω / number of VMs', () => {
  const s = parseScenario(good());
  assert.equal(s.slaBytesPerSec, 10_000);
  assert.equal(s.tickMs, 100);
  assert.equal(s.staticBinBytes, 5e8);
  assert.deepEqual(s.vms[1]!.diskWrites, { points: [[0, 1e6], [10, 2e6]] });
});

test('bad files are rejected with the JSON path of the problem', () => {
  rejects((d) => delete d.omegaBytes, 'omegaBytes', /missing/);
  rejects((d) => (d.version = 2), 'version', /unknown version 2/);
  rejects((d) => (d.vms[1].diskBytes = -5), 'vms[1].diskBytes', /must be > 0/);
  rejects((d) => (d.vms[1].diskWrites.points = [[0, 1], [10, 2], [10, 3], [5, 1]]), 'vms[1].diskWrites.points[2][0]', /times must increase/);
  rejects((d) => (d.vms[1].diskWrites.points = [[3, 1]]), 'vms[1].diskWrites.points[0][0]', /first point must be at time 0/);
  rejects((d) => (d.vms[0].ramDirty.hotPages = 2 ** 30), 'vms[0].ramDirty.hotPages', /≤ 262144/);
  rejects((d) => (d.vms[0].colour = 'red'), 'vms[0].colour', /unknown key/);
  rejects((d) => (d.omega = 1), 'omega', /unknown key/);
  rejects((d) => (d.vms[1].id = 'a'), 'vms[1].id', /duplicate id 'a'/);
  rejects((d) => (d.link = { bytesPerSec: 0 }), 'link.bytesPerSec', /must be > 0/);
  rejects((d) => (d.link = { bytesPerSec: 1, points: [[0, 1]] }), 'link', /either bytesPerSec or points/);
  rejects((d) => (d.tickMs = 2.5), 'tickMs', /integer/);
  rejects((d) => (d.maxSimSeconds = 1e9), 'maxSimSeconds', /ticks/);
  rejects((d) => (d.vms = []), 'vms', /non-empty/);
  rejects((d) => (d.vms[0].diskWrites = { points: [[0, 1, 2]] }), 'vms[0].diskWrites.points[0]', /pair/);
  rejects((d) => (d.name = ''), 'name', /non-empty string/);
  assert.throws(() => parseScenario([]), /\$: a scenario must be a JSON object/);
});

test('every shipped scenario validates', () => {
  const dir = join(root, 'scenarios');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  assert.ok(files.length >= 5);
  for (const f of files) {
    const s = loadScenario(join(dir, f));
    assert.equal(s.name, JSON.parse(readFileSync(join(dir, f), 'utf8')).name);
  }
});

test('RateTrack is piecewise constant, right-continuous, and works for any query order', () => {
  const r = new RateTrack({ points: [[0, 5], [10, 7], [20, 1]] });
  const probe = [0, 9.99, 10, 15, 20, 1000, 3, 10, 25, -1];
  assert.deepEqual(probe.map((t) => r.at(t)), [5, 5, 7, 7, 1, 1, 5, 7, 1, 5]);
  assert.equal(new RateTrack({ bytesPerSec: 3 }).at(1e9), 3);
});

test('docs/scenario.schema.json lists exactly the keys the validator accepts', () => {
  const schema = JSON.parse(readFileSync(join(root, 'docs', 'scenario.schema.json'), 'utf8'));
  assert.deepEqual(Object.keys(schema.properties).sort(), ['description', 'link', 'maxSimSeconds', 'name', 'omegaBytes', 'slaBytesPerSec', 'staticBinBytes', 'tickMs', 'version', 'vms'].sort());
  assert.deepEqual(Object.keys(schema.properties.vms.items.properties).sort(), ['diskBytes', 'diskWrites', 'id', 'ramBytes', 'ramDirty', 'startSec'].sort());
  // Every key the schema names is accepted, and one it does not name is refused.
  const doc = good();
  for (const key of Object.keys(schema.properties)) if (!(key in doc)) (doc as any)[key] = key === 'description' ? 'x' : key === 'staticBinBytes' ? 1 : key === 'slaBytesPerSec' ? 1 : key === 'tickMs' ? 100 : (doc as any)[key];
  assert.doesNotThrow(() => parseScenario(doc));
  assert.deepEqual(schema.required.sort(), ['link', 'maxSimSeconds', 'name', 'omegaBytes', 'version', 'vms'].sort());
});
