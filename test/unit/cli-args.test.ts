import assert from 'node:assert/strict';
import { test } from 'node:test';
import { helpText, parseArgs, UsageError } from '../../src/cli/args';

const specs = {
  guestMib: { type: 'int', min: 64, max: 16384, required: true, description: 'guest RAM', unit: 'MiB' },
  pattern: { type: 'enum', choices: ['uniform', 'sequential', 'zipf'], default: 'uniform', description: 'pattern' },
  zipfS: { type: 'number', min: 0.1, max: 4, default: 1.1, description: 'zipf exponent' },
  json: { type: 'boolean', description: 'json' },
} as const;

test('parses kebab-case flags into typed camelCase values with defaults', () => {
  const { options } = parseArgs(['--guest-mib', '256', '--zipf-s=1.5', '--json'], specs);
  assert.deepEqual(options, { guestMib: 256, pattern: 'uniform', zipfS: 1.5, json: true });
});

test('out-of-range, non-integer and unknown values name the option and the range', () => {
  assert.throws(() => parseArgs(['--guest-mib', '0'], specs), /--guest-mib: must be an integer from 64 to 16384 MiB \(got '0'\)/);
  assert.throws(() => parseArgs(['--guest-mib', '100.5'], specs), UsageError);
  assert.throws(() => parseArgs(['--guest-mib', '128', '--pattern', 'random'], specs), /--pattern: must be one of uniform, sequential, zipf/);
  assert.throws(() => parseArgs(['--guest-mib', '128', '--bogus', '1'], specs), /unknown option --bogus/);
  assert.throws(() => parseArgs([], specs), /--guest-mib is required/);
  assert.throws(() => parseArgs(['--guest-mib'], specs), /needs a value/);
  assert.throws(() => parseArgs(['--guest-mib', '128', '--json=1'], specs), /takes no value/);
});

test('--help skips required checks and help text lists ranges and defaults', () => {
  assert.equal(parseArgs(['--help'], specs).help, true);
  const text = helpText('dpa x', 'does x', specs);
  assert.match(text, /--guest-mib <value>\s+guest RAM \(an integer from 64 to 16384, MiB; required\)/);
  assert.match(text, /--pattern uniform\|sequential\|zipf/);
});
