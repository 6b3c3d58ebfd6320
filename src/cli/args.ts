/**
 * Command-line option parsing and validation shared by every subcommand. Each command declares
 * its options once; parsing, range checks, defaults and `--help` text all come from that.
 * A bad value throws UsageError naming the option and the allowed range, before any work starts.
 */

export type OptionSpec =
  | { type: 'int'; min: number; max: number; default?: number; required?: boolean; description: string; unit?: string }
  | { type: 'number'; min: number; max: number; default?: number; required?: boolean; description: string; unit?: string }
  | { type: 'string'; default?: string; required?: boolean; description: string }
  | { type: 'enum'; choices: readonly string[]; default?: string; required?: boolean; description: string }
  | { type: 'boolean'; description: string };

export type OptionSpecs = Record<string, OptionSpec>;

type ValueOf<S extends OptionSpec> = S extends { type: 'int' | 'number' }
  ? number
  : S extends { type: 'boolean' }
    ? boolean
    : string;

export type ParsedOptions<S extends OptionSpecs> = { [K in keyof S]: ValueOf<S[K]> };

export interface Parsed<S extends OptionSpecs> {
  options: ParsedOptions<S>;
  positionals: string[];
  help: boolean;
}

/** A command-line error: printed without a stack trace, exit status 2. */
export class UsageError extends RangeError {
  override name = 'UsageError';
}

/** Options every reporting command accepts. */
export const jsonOption = { json: { type: 'boolean', description: 'print machine-readable JSON instead of text' } } as const;

function describeRange(spec: OptionSpec): string {
  switch (spec.type) {
    case 'int':
      return `an integer from ${spec.min} to ${spec.max}`;
    case 'number':
      return `a number from ${spec.min} to ${spec.max}`;
    case 'enum':
      return `one of ${spec.choices.join(', ')}`;
    case 'string':
      return 'a non-empty string';
    case 'boolean':
      return 'a flag (no value)';
  }
}

function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

function convert(flag: string, spec: OptionSpec, raw: string): number | string {
  switch (spec.type) {
    case 'int':
    case 'number': {
      const n = raw.trim() === '' ? NaN : Number(raw);
      const ok = Number.isFinite(n) && (spec.type === 'number' || Number.isInteger(n)) && n >= spec.min && n <= spec.max;
      if (!ok) throw new UsageError(`--${flag}: must be ${describeRange(spec)}${spec.unit ? ' ' + spec.unit : ''} (got '${raw}')`);
      return n;
    }
    case 'enum':
      if (!spec.choices.includes(raw)) throw new UsageError(`--${flag}: must be ${describeRange(spec)} (got '${raw}')`);
      return raw;
    case 'string':
      if (raw === '') throw new UsageError(`--${flag}: must be ${describeRange(spec)}`);
      return raw;
    case 'boolean':
      throw new UsageError(`--${flag}: takes no value`);
  }
}

/** Parses argv (without the command words) against the specs. camelCase keys map to --kebab-case flags. */
export function parseArgs<S extends OptionSpecs>(argv: readonly string[], specs: S): Parsed<S> {
  const byFlag = new Map<string, [string, OptionSpec]>();
  for (const [key, spec] of Object.entries(specs)) byFlag.set(kebab(key), [key, spec]);
  const out: Record<string, unknown> = {};
  const positionals: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') {
      help = true;
      continue;
    }
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const flag = arg.slice(2, eq < 0 ? undefined : eq);
    const entry = byFlag.get(flag);
    if (!entry) throw new UsageError(`unknown option --${flag} (see --help)`);
    const [key, spec] = entry;
    if (spec.type === 'boolean') {
      if (eq >= 0) throw new UsageError(`--${flag}: takes no value`);
      out[key] = true;
      continue;
    }
    let raw: string | undefined;
    if (eq >= 0) raw = arg.slice(eq + 1);
    else {
      raw = argv[i + 1];
      if (raw === undefined || (raw.startsWith('--') && raw.length > 2)) {
        throw new UsageError(`--${flag}: needs a value, ${describeRange(spec)}`);
      }
      i++;
    }
    out[key] = convert(flag, spec, raw);
  }
  if (!help) {
    for (const [key, spec] of Object.entries(specs)) {
      if (out[key] !== undefined) continue;
      if (spec.type === 'boolean') out[key] = false;
      else if (spec.default !== undefined) out[key] = spec.default;
      else if (spec.required) throw new UsageError(`--${kebab(key)} is required: ${describeRange(spec)}`);
    }
  }
  return { options: out as ParsedOptions<S>, positionals, help };
}

/** The `--help` text for a command. */
export function helpText(usage: string, summary: string, specs: OptionSpecs): string {
  const lines = [`usage: ${usage}`, '', summary, ''];
  const entries = Object.entries(specs);
  if (entries.length) lines.push('options:');
  for (const [key, spec] of entries) {
    const flag = `--${kebab(key)}`;
    const value = spec.type === 'boolean' ? '' : spec.type === 'enum' ? ` ${spec.choices.join('|')}` : ' <value>';
    let detail = spec.description;
    if (spec.type !== 'boolean') {
      detail += ` (${describeRange(spec)}${'unit' in spec && spec.unit ? ', ' + spec.unit : ''}`;
      detail += 'default' in spec && spec.default !== undefined ? `; default ${spec.default})` : spec.required ? '; required)' : ')';
    }
    lines.push(`  ${(flag + value).padEnd(34)} ${detail}`);
  }
  lines.push(`  ${'--help'.padEnd(34)} show this help`);
  return lines.join('\n');
}
