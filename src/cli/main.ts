/**
 * `dpa` entry point: finds the subcommand, parses and validates its options, runs it.
 * Each subcommand lives in its own file in this folder and is loaded only when used, so a
 * command that needs the native addon does not stop `dpa --help` or `dpa simulate` from working.
 */
import { helpText, parseArgs, UsageError } from './args';
import type { Command, CommandIO } from './command';

/** Command words → module in this folder exporting `command`. */
const COMMANDS: Record<string, string> = {
  start: 'start',
  calibrate: 'calibrate',
  'bench harvest': 'bench-harvest',
  'bench bitmap': 'bench-bitmap',
  'bench qmp': 'bench-qmp',
  'bench scan': 'bench-scan',
  profile: 'profile',
  'lab net': 'lab-net',
  'lab accuracy': 'lab-accuracy',
  predict: 'predict',
  simulate: 'simulate',
  'bench simulate': 'bench-simulate',
  'bench governor': 'bench-governor',
  govern: 'govern',
  migrate: 'migrate',
  'lab migrate-concurrent': 'lab-migrate-concurrent',
  'lab predict-check': 'lab-predict-check',
  'lab sim-check': 'lab-sim-check',
};

/** Every command's words, e.g. 'bench bitmap' (for help and tests). */
export function commandKeys(): string[] {
  return Object.keys(COMMANDS);
}

/** Loads a command module by its words. */
export function loadCommand(key: string): Command {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require(`./${COMMANDS[key]}`) as { command: Command }).command;
}

function overview(): string {
  const lines = ['usage: dpa <command> [options]   (dpa <command> --help for its options)', '', 'commands:'];
  for (const key of Object.keys(COMMANDS)) {
    let summary = '';
    try {
      summary = loadCommand(key).summary;
    } catch (err) {
      summary = `(unavailable: ${(err as Error).message.split('\n')[0]})`;
    }
    lines.push(`  ${key.padEnd(24)} ${summary}`);
  }
  return lines.join('\n');
}

/** Runs one command line; returns the exit status. Usable in-process by tests. */
export async function runCli(argv: readonly string[], io: CommandIO): Promise<number> {
  let key: string | undefined;
  let rest: readonly string[] = argv;
  for (const n of [3, 2, 1]) {
    const candidate = argv.slice(0, n).join(' ');
    if (argv.length >= n && COMMANDS[candidate]) {
      key = candidate;
      rest = argv.slice(n);
      break;
    }
  }
  if (!key) {
    if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
      io.out(overview() + '\n');
      return argv.length === 0 ? 2 : 0;
    }
    io.err(`dpa: unknown command '${argv.join(' ')}'\n\n${overview()}\n`);
    return 2;
  }
  const command = loadCommand(key);
  try {
    const { options, positionals, help } = parseArgs(rest, command.options);
    if (help) {
      io.out(helpText(`dpa ${key} ${command.usage}`, command.summary, command.options) + '\n');
      return 0;
    }
    return await command.run(options, positionals, io);
  } catch (err) {
    if (err instanceof UsageError || err instanceof RangeError || err instanceof TypeError) {
      io.err(`dpa ${key}: ${(err as Error).message}\n`);
      return 2;
    }
    throw err;
  }
}

export async function main(): Promise<void> {
  const controller = new AbortController();
  let signals = 0;
  const onSignal = (): void => {
    // First signal: stop cleanly (commands restore what they changed). Second: leave now.
    if (++signals > 1) process.exit(130);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const io: CommandIO = {
    out: (t) => process.stdout.write(t),
    err: (t) => process.stderr.write(t),
    isTTY: Boolean(process.stdout.isTTY),
    signal: controller.signal,
  };
  try {
    process.exitCode = await runCli(process.argv.slice(2), io);
  } catch (err) {
    const e = err as Error & { code?: string; syscall?: string };
    process.stderr.write(`dpa: ${e.message}\n`);
    if (process.env.DPA_DEBUG) process.stderr.write(`${e.stack}\n`);
    process.exitCode = 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
