/** Where dpa talks to QEMU: the QMP client, its errors, the typed commands and the schema check. */
export * from './client';
export * from './commands';
export * from './reconnecting';
export { QmpSchema, type SchemaInfo } from './schema';
export { DEFAULT_MAX_LINE_BYTES } from './framing';
export * from './telemetry';
