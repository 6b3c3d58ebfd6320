import type { OptionSpecs, ParsedOptions } from './args';

/** Output sinks, so commands can be run in-process by tests. */
export interface CommandIO {
  out(text: string): void;
  err(text: string): void;
  /** True when stdout is a terminal (live views redraw; otherwise they print lines). */
  isTTY: boolean;
  /** Aborted on SIGINT/SIGTERM: long-running commands stop cleanly and restore what they changed. */
  signal: AbortSignal;
}

/** One subcommand. `words` is its path, e.g. ['bench', 'bitmap']. */
export interface Command<S extends OptionSpecs = OptionSpecs> {
  words: readonly string[];
  summary: string;
  /** Usage line after `dpa <words>`, e.g. '--guest-mib N [--json]'. */
  usage: string;
  options: S;
  /** Returns the process exit status. */
  run(options: ParsedOptions<S>, positionals: string[], io: CommandIO): Promise<number>;
}

export function defineCommand<S extends OptionSpecs>(command: Command<S>): Command<S> {
  return command;
}
