import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as dpa from '../../src/index';

test('the library entry exposes every layer an embedding agent needs', () => {
  assert.equal(typeof dpa.qmp.QmpClient.connect, 'function');
  assert.equal(typeof dpa.governor.Governor.start, 'function');
  assert.equal(typeof dpa.migrate.LiveMigration, 'function');
  assert.equal(typeof dpa.KvmCalibrationSource.start, 'function');
  assert.equal(typeof dpa.openGuestMemory, 'function');
  assert.equal(typeof dpa.ProfileSession, 'function');
  // A guest that dirties nothing migrates in exactly one pass: all its RAM at the link rate.
  const p = dpa.precopy.predictPrecopy({
    ramBytes: 1 << 30,
    zeroPageFraction: 0,
    bandwidthBytesPerSec: 100e6,
    maxBandwidthBytesPerSec: Infinity,
    downtimeLimitMs: 300,
    dirty: dpa.dirtyCurve.uniformHotSetCurve(0, 1),
  });
  assert.equal(p.converges, true);
  assert.equal(p.iterations, 1);
  assert.ok(p.bytesSent >= 1 << 30 && p.bytesSent < 1.01 * (1 << 30), `bytesSent ${p.bytesSent}`);
});
