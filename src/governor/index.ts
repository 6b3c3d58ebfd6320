/**
 * Where dpa acts: the real-time governor. ./core.ts is the pure decision step (telemetry →
 * world → policy → planned actions), ./governor.ts the loop that reads QEMU and applies them,
 * ./state-file.ts the crash-safety record and reconcile(), ./decision-log.ts the decision record,
 * ./observed.ts a migration known only through QMP, ./synthetic.ts the benchmark's fleet.
 */
export * from './types';
export * from './throttle';
export { WriteDemand, type DemandOptions } from './demand';
export { GovernorCore, type CoreOptions, type TickResult, type VmSetup, type VmTelemetry } from './core';
export { DecisionLog, type DecisionLogOptions, type DecisionRecord } from './decision-log';
export { parseState, readStateFile, reconcile, StateFile, writeFileAtomic, type GovernorState, type ReconcileOptions, type ReconcileReport, type StateEntry } from './state-file';
export { Governor, type GovernorOptions, type GovernorStats, type StopReport } from './governor';
export { ObservedMigration, type ObservedMigrationOptions } from './observed';
