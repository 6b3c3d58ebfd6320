/**
 * Drives test/helpers/dirtier.c: a process holding memfd "guest RAM" whose writes the test
 * chooses, so scanner output can be compared with the truth. Compiled once per test process with
 * `cc -O2` into a temporary directory (removed at exit).
 */
import { execFileSync, spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';

const SOURCE = join(__dirname, '..', '..', '..', 'test', 'helpers', 'dirtier.c');

let ccChecked: string | null | undefined;
/** null when `cc` can compile the dirtier. */
export function ccMissing(): string | null {
  if (ccChecked === undefined) {
    try {
      execFileSync('cc', ['--version'], { stdio: 'ignore', timeout: 10_000 });
      ccChecked = null;
    } catch (err) {
      ccChecked = `cc not runnable (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`;
    }
  }
  return ccChecked;
}

let binary: string | undefined;
function build(): string {
  if (binary) return binary;
  const dir = mkdtempSync(join(tmpdir(), 'dpa-dirtier-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'dirtier');
  execFileSync('cc', ['-O2', '-Wall', '-o', out, SOURCE], { stdio: ['ignore', 'ignore', 'inherit'] });
  binary = out;
  return out;
}

export class Dirtier {
  readonly pid: number;
  /** Address and size of each region, in the order of the specs. */
  readonly regions: { address: bigint; bytes: number }[];
  /** Resolves with the exit code (or signal) once the process has exited. */
  readonly exited: Promise<number | string>;
  private readonly lines: string[] = [];
  private waiter: ((line: string) => void) | undefined;

  private constructor(
    private readonly child: ChildProcessByStdio<Writable, Readable, null>,
    ready: string,
  ) {
    const parts = ready.split(' ');
    this.pid = Number(parts[1]);
    this.regions = [];
    for (let i = 2; i + 1 < parts.length; i += 2) this.regions.push({ address: BigInt(parts[i]!), bytes: Number(parts[i + 1]) });
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  }

  /** Starts `dirtier SPEC...` (SPEC = name:MiB[:sparse] or anon:MiB) and waits for "ready". */
  static async start(specs: string[]): Promise<Dirtier> {
    const child = spawn(build(), specs, { stdio: ['pipe', 'pipe', 'inherit'] });
    const rl = createInterface({ input: child.stdout });
    let self: Dirtier | undefined;
    const first = new Promise<string>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`dirtier exited early (${code})`)));
      rl.once('line', resolve);
    });
    const ready = await first;
    self = new Dirtier(child, ready);
    const d = self;
    rl.on('line', (line) => {
      if (d.waiter) {
        const w = d.waiter;
        d.waiter = undefined;
        w(line);
      } else d.lines.push(line);
    });
    return self;
  }

  /** Sends one command and waits for its answer; throws unless it is "ok". */
  async cmd(line: string): Promise<void> {
    const answer = new Promise<string>((resolve) => {
      const queued = this.lines.shift();
      if (queued !== undefined) resolve(queued);
      else this.waiter = resolve;
    });
    this.child.stdin.write(line + '\n');
    const got = await answer;
    if (got !== 'ok') throw new Error(`dirtier: '${line.slice(0, 40)}' answered '${got}'`);
  }

  /** Changes the content of the given pages of region 0 (batched into a few commands). */
  async dirty(pages: Iterable<number>): Promise<void> {
    const all = [...pages];
    for (let i = 0; i < all.length; i += 20000) await this.cmd(`dirty ${all.slice(i, i + 20000).join(' ')}`);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}

/** Pages whose bit is set, in ascending order (bit order of src/native.ts). */
export function bitsOf(bitmap: Uint8Array, pages: number): number[] {
  const out: number[] = [];
  for (let p = 0; p < pages; p++) if (bitmap[p >> 3]! & (1 << (p & 7))) out.push(p);
  return out;
}
