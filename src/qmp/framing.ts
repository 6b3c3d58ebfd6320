/**
 * Splits the monitor's byte stream into lines (QMP sends one JSON document per line) with a cap
 * on line length, so a monitor that never sends '\n' cannot make the client buffer without bound.
 */

/** Default cap on one QMP line: 16 MiB. QEMU 7.2's largest common reply, query-qmp-schema, is ~200 KiB. */
export const DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024;

/** Smallest accepted cap: a QMP greeting alone is ~150 bytes. */
export const MIN_MAX_LINE_BYTES = 256;

const NEWLINE = 0x0a;

/** Thrown by push() when a line exceeds the cap; `excerpt` is the start of that line. */
export class LineTooLongError extends Error {
  override name = 'LineTooLongError';
  constructor(
    readonly maxLineBytes: number,
    readonly excerpt: string,
  ) {
    super(`line longer than ${maxLineBytes} bytes`);
  }
}

/**
 * Accumulates chunks and yields complete lines (without the '\n'; a trailing '\r' is left in, JSON
 * treats it as whitespace). Bytes are decoded as UTF-8 only once a line is complete, so a
 * multi-byte character split across chunks decodes correctly.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private pendingBytes = 0;

  constructor(readonly maxLineBytes: number = DEFAULT_MAX_LINE_BYTES) {
    if (!Number.isInteger(maxLineBytes) || maxLineBytes < MIN_MAX_LINE_BYTES || maxLineBytes > 2 ** 30) {
      throw new RangeError(`maxLineBytes: must be an integer from ${MIN_MAX_LINE_BYTES} to ${2 ** 30} (got ${maxLineBytes})`);
    }
  }

  /** Bytes held for the current, incomplete line. */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }

  /** Feeds one chunk; returns the lines it completes. Throws LineTooLongError when the cap is passed. */
  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(NEWLINE, start);
      if (nl < 0) break;
      const tailBytes = nl - start;
      if (this.pendingBytes + tailBytes > this.maxLineBytes) this.overflow(chunk.subarray(start, nl));
      let line: Buffer;
      if (this.parts.length === 0) line = chunk.subarray(start, nl);
      else {
        this.parts.push(chunk.subarray(start, nl));
        line = Buffer.concat(this.parts, this.pendingBytes + tailBytes);
        this.parts = [];
        this.pendingBytes = 0;
      }
      lines.push(line.toString('utf8'));
      start = nl + 1;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      if (this.pendingBytes + rest.length > this.maxLineBytes) this.overflow(rest);
      // Copy: the socket may reuse the chunk's memory after this callback.
      this.parts.push(Buffer.from(rest));
      this.pendingBytes += rest.length;
    }
    return lines;
  }

  private overflow(tail: Buffer): never {
    const head: Buffer[] = [];
    let headBytes = 0;
    for (const part of [...this.parts, tail]) {
      if (headBytes >= 200) break;
      head.push(part);
      headBytes += part.length;
    }
    const excerpt = Buffer.concat(head).subarray(0, 200).toString('utf8');
    this.parts = [];
    this.pendingBytes = 0;
    throw new LineTooLongError(this.maxLineBytes, excerpt);
  }
}
