/** Where dpa acts on a migration: the LXD-shaped orchestrator, its base copy and its lab harness. */
export * from './types';
export { LiveMigration, MigrationAbortedError, MigrationTimeoutError, TargetLostError, DEFAULT_MIGRATION_PORT, DEFAULT_NBD_PORT, type LiveMigrationOptions } from './migration';
export { MigrationLab, runLabMigration, verifyGuest, verificationPassed, type LabRunOptions, type LabRunReport, type LabTarget, type MigrationLabOptions } from './lab';
export { BlockJobError } from './qmp-ops';
export { copyBaseImage, spawnBaseReceiver, StallError, BASE_RECEIVER_PATH, type BaseCopyOptions, type BaseCopyResult, type BaseReceiver, type BaseReceiverOptions, type SpawnFn } from './base-copy';
