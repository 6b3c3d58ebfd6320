/**
 * The QMP error hierarchy. Everything the client rejects with is a QmpError subclass, so a caller
 * can tell "QEMU refused this command" (QmpCommandError, the connection is still good) from "the
 * connection is gone" (QmpDisconnectedError, every pending call fails with it) from "the peer is
 * not speaking QMP" (QmpGreetingError, QmpNegotiationError, QmpParseError).
 * Modelled on QEMU's python/qemu/qmp (GreetingError, NegotiationError, ExecuteError, ...).
 */

export class QmpError extends Error {
  override name = 'QmpError';
}

/** The monitor's first message was not a QMP greeting (`{"QMP": {"version": ..., "capabilities": [...]}}`). */
export class QmpGreetingError extends QmpError {
  override name = 'QmpGreetingError';
}

/** `qmp_capabilities` failed: the monitor answered with an error or with something other than `{"return": {}}`. */
export class QmpNegotiationError extends QmpError {
  override name = 'QmpNegotiationError';
  /** QEMU's error class when the monitor answered with an error, e.g. 'CommandNotFound'. */
  readonly errorClass: string | undefined;
  readonly desc: string | undefined;
  constructor(message: string, errorClass?: string, desc?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/**
 * QEMU executed the command and answered `{"error": {"class", "desc"}}`. The connection stays up.
 * QEMU 7.2 uses the classes GenericError, CommandNotFound, DeviceNotActive, DeviceNotFound,
 * KVMMissingCap.
 */
export class QmpCommandError extends QmpError {
  override name = 'QmpCommandError';
  readonly command: string;
  /** QEMU's `error.class`, e.g. 'GenericError' or 'CommandNotFound'. */
  readonly errorClass: string;
  /** QEMU's human-readable `error.desc`. */
  readonly desc: string;
  constructor(command: string, errorClass: string, desc: string) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** A line from the monitor was not valid JSON, or was JSON of a shape QMP never sends. Fatal to the connection. */
export class QmpParseError extends QmpError {
  override name = 'QmpParseError';
  /** The start of the offending line (at most 200 characters), for diagnosis. */
  readonly excerpt: string;
  constructor(message: string, excerpt: string, options?: { cause?: unknown }) {
    super(message, options);
    this.excerpt = excerpt;
  }
}

/** The monitor sent a line longer than the client's `maxLineBytes` cap. Fatal to the connection. */
export class QmpLineTooLongError extends QmpParseError {
  override name = 'QmpLineTooLongError';
  readonly maxLineBytes: number;
  constructor(maxLineBytes: number, excerpt: string) {
    super(`QMP line longer than maxLineBytes=${maxLineBytes} bytes: connection dropped`, excerpt);
    this.maxLineBytes = maxLineBytes;
  }
}

/** Why a connection ended. */
export type QmpDisconnectReason =
  /** close() was called. */
  | 'closed'
  /** The monitor closed the connection (QEMU exited or was killed); `cause` is the ECONNRESET/EPIPE if any. */
  | 'eof'
  /** Any other socket error; `cause` has code/errno/syscall. */
  | 'socket-error'
  /** The client dropped the connection because the monitor broke the protocol; `cause` says how. */
  | 'protocol-error';

/**
 * The connection is gone. Every call pending at that moment, and every later call on the same
 * client, rejects with this. `cause` carries the underlying error (socket error or QmpParseError).
 */
export class QmpDisconnectedError extends QmpError {
  override name = 'QmpDisconnectedError';
  readonly reason: QmpDisconnectReason;
  constructor(message: string, reason: QmpDisconnectReason, options?: { cause?: unknown }) {
    super(message, options);
    this.reason = reason;
  }
}

/** A call (or the connect/greeting/negotiation phase) did not complete within its timeout. */
export class QmpTimeoutError extends QmpError {
  override name = 'QmpTimeoutError';
  /** The command that timed out, or 'connect' / 'greeting' / 'qmp_capabilities'. */
  readonly command: string;
  readonly timeoutMs: number;
  constructor(command: string, timeoutMs: number) {
    super(`QMP ${command}: no answer within ${timeoutMs} ms`);
    this.command = command;
    this.timeoutMs = timeoutMs;
  }
}

/** The socket could not be connected (ENOENT, ECONNREFUSED, EACCES, ...). Carries code, errno, syscall. */
export class QmpConnectError extends QmpError {
  override name = 'QmpConnectError';
  readonly code: string | undefined;
  readonly errno: number | undefined;
  readonly syscall: string | undefined;
  readonly socketPath: string;
  constructor(socketPath: string, cause: NodeJS.ErrnoException) {
    super(`cannot connect to QMP socket ${socketPath}: ${cause.code ?? cause.message}`, { cause });
    this.socketPath = socketPath;
    this.code = cause.code;
    this.errno = cause.errno;
    this.syscall = cause.syscall;
  }
}

/**
 * The client refused to send a command because it would harm QEMU (e.g. calc-dirty-rate
 * dirty-bitmap under TCG, which crashes QEMU 7.2). Nothing was sent.
 */
export class QmpUnsafeCommandError extends QmpError {
  override name = 'QmpUnsafeCommandError';
  readonly command: string;
  constructor(command: string, message: string) {
    super(`QMP ${command}: ${message}`);
    this.command = command;
  }
}
