/**
 * Checks command arguments against the schema a running QEMU reports (`query-qmp-schema`), without
 * executing the command. Used to prove that the typed helpers in commands.ts send what this QEMU
 * accepts (names, required members, JSON types, enum values, union variants), including commands
 * that cannot be run safely in a test (migrate, blockdev-mirror to a remote target, quit).
 *
 * Introspection masks type names (numbers) but keeps command, member and enum names, which is
 * all a check of arguments needs.
 */
import type { QmpExecutor } from './client';

/** One entry of query-qmp-schema (SchemaInfo), the fields read here. */
export interface SchemaInfo {
  name: string;
  'meta-type': 'builtin' | 'enum' | 'array' | 'object' | 'alternate' | 'command' | 'event';
  'json-type'?: 'string' | 'number' | 'int' | 'boolean' | 'null' | 'object' | 'array' | 'value';
  'arg-type'?: string;
  'ret-type'?: string;
  'element-type'?: string;
  members?: { name?: string; type?: string; default?: unknown }[];
  values?: string[];
  tag?: string;
  variants?: { case: string; type: string }[];
}

export class QmpSchema {
  private readonly byName = new Map<string, SchemaInfo>();

  constructor(entries: readonly SchemaInfo[]) {
    for (const e of entries) this.byName.set(e.name, e);
  }

  /** Fetches the schema from a monitor (~200 KiB on QEMU 7.2). */
  static async fetch(q: QmpExecutor): Promise<QmpSchema> {
    return new QmpSchema(await q.execute<SchemaInfo[]>('query-qmp-schema'));
  }

  hasCommand(command: string): boolean {
    return this.byName.get(command)?.['meta-type'] === 'command';
  }

  /** Member names of a command's arguments (including union variant members), for diagnostics. */
  argumentNames(command: string): string[] {
    const cmd = this.byName.get(command);
    if (!cmd || cmd['meta-type'] !== 'command') return [];
    const t = this.byName.get(cmd['arg-type']!);
    return (t?.members ?? []).map((m) => m.name!).filter(Boolean);
  }

  /**
   * Returns the problems with sending `args` to `command` (empty when QEMU would accept their
   * shape), e.g. ["calc-dirty-rate: 'calc-time' is required"].
   */
  checkArguments(command: string, args: Record<string, unknown> | undefined): string[] {
    const cmd = this.byName.get(command);
    if (!cmd || cmd['meta-type'] !== 'command') return [`${command}: no such command in this QEMU's schema`];
    const problems: string[] = [];
    this.check(cmd['arg-type']!, args ?? {}, command, problems);
    return problems;
  }

  private check(typeName: string, value: unknown, path: string, problems: string[]): void {
    const t = this.byName.get(typeName);
    if (!t) {
      problems.push(`${path}: schema type ${typeName} missing`);
      return;
    }
    switch (t['meta-type']) {
      case 'builtin':
        this.checkBuiltin(t['json-type']!, value, path, problems);
        return;
      case 'enum': {
        const values = t.values ?? (t.members ?? []).map((m) => m.name!);
        if (typeof value !== 'string' || !values.includes(value)) {
          problems.push(`${path}: ${JSON.stringify(value)} is not one of ${values.join(', ')}`);
        }
        return;
      }
      case 'array':
        if (!Array.isArray(value)) problems.push(`${path}: must be an array`);
        else value.forEach((v, i) => this.check(t['element-type']!, v, `${path}[${i}]`, problems));
        return;
      case 'alternate': {
        for (const m of t.members ?? []) {
          const sub: string[] = [];
          this.check(m.type!, value, path, sub);
          if (sub.length === 0) return;
        }
        problems.push(`${path}: ${JSON.stringify(value)} matches no alternative`);
        return;
      }
      case 'object':
        this.checkObject(t, value, path, problems);
        return;
      default:
        problems.push(`${path}: unexpected schema meta-type ${t['meta-type']}`);
    }
  }

  private checkObject(t: SchemaInfo, value: unknown, path: string, problems: string[]): void {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      problems.push(`${path}: must be an object`);
      return;
    }
    const obj = value as Record<string, unknown>;
    const members = [...(t.members ?? [])];
    if (t.tag !== undefined && t.variants) {
      const tagValue = obj[t.tag];
      const variant = t.variants.find((v) => v.case === tagValue);
      if (variant) members.push(...(this.byName.get(variant.type)?.members ?? []));
    }
    const known = new Set(members.map((m) => m.name));
    for (const key of Object.keys(obj)) {
      if (obj[key] === undefined) continue;
      if (!known.has(key)) problems.push(`${path}: '${key}' is unexpected`);
    }
    for (const m of members) {
      const v = obj[m.name!];
      if (v === undefined) {
        if (!('default' in m)) problems.push(`${path}: '${m.name}' is required`);
        continue;
      }
      this.check(m.type!, v, `${path}.${m.name}`, problems);
    }
  }

  private checkBuiltin(jsonType: string, value: unknown, path: string, problems: string[]): void {
    const ok =
      jsonType === 'value' ||
      (jsonType === 'string' && typeof value === 'string') ||
      (jsonType === 'int' && typeof value === 'number' && Number.isInteger(value)) ||
      (jsonType === 'number' && typeof value === 'number' && Number.isFinite(value)) ||
      (jsonType === 'boolean' && typeof value === 'boolean') ||
      (jsonType === 'null' && value === null);
    if (!ok) problems.push(`${path}: ${JSON.stringify(value)} is not of JSON type ${jsonType}`);
  }
}
