import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CommandIO } from '../../src/cli/command';
import { commandKeys, loadCommand, runCli } from '../../src/cli/main';

function capture(): { io: CommandIO; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  const io: CommandIO = {
    out: (t) => (out += t),
    err: (t) => (err += t),
    isTTY: false,
    signal: new AbortController().signal,
  };
  return { io, out: () => out, err: () => err };
}

test('every subcommand answers --help with its usage and every declared option', async () => {
  const keys = commandKeys();
  assert.ok(keys.length > 0);
  for (const key of keys) {
    const c = capture();
    const status = await runCli([...key.split(' '), '--help'], c.io);
    assert.equal(status, 0, `dpa ${key} --help exited ${status}: ${c.err()}`);
    assert.match(c.out(), new RegExp(`^usage: dpa ${key} `), key);
    for (const option of Object.keys(loadCommand(key).options)) {
      const flag = '--' + option.replace(/[A-Z]/g, (ch) => '-' + ch.toLowerCase());
      assert.ok(c.out().includes(flag), `dpa ${key} --help does not mention ${flag}`);
    }
  }
});

test('unknown commands and unknown options exit 2 with a message', async () => {
  const a = capture();
  assert.equal(await runCli(['frobnicate'], a.io), 2);
  assert.match(a.err(), /unknown command 'frobnicate'/);
  const key = commandKeys()[0]!;
  const b = capture();
  assert.equal(await runCli([...key.split(' '), '--no-such-option'], b.io), 2);
  assert.match(b.err(), /unknown option --no-such-option/);
});
