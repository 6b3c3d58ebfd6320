/**
 * Library entry point, for embedding dpa in a migration agent. Each area is a namespace, so names
 * that mean different things in different layers (a policy's MigrationPhase vs the migration
 * driver's) never collide:
 *
 *   import { qmp, governor, migrate } from 'dirty-page-analyzer';
 *   const client = await qmp.QmpClient.connect('/run/vm.qmp');
 */
export * as bitmap from './bitmap';
export * as governor from './governor';
export * as migrate from './migrate';
export * as policy from './policy';
export * as qmp from './qmp';
export * as precopy from './model/precopy';
export * as bandwidth from './model/bandwidth';
export * as dirtyCurve from './model/dirty-curve';
export * as need from './model/need';
export * as simulator from './sim/run';
export * as scenario from './sim/scenario';
export { KvmCalibrationSource, runCalibration } from './sources/kvm-calibration';
export { openGuestMemory, findGuestRam } from './sources/guest-memory';
export type { DirtySource, Interval } from './sources/types';
export { ProfileSession } from './profile/session';
