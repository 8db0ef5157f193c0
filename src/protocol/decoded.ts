/**
 * The outcome of feeding bytes to an incremental decoder: a whole message and
 * how many bytes it used, or a request for more bytes. Malformed input throws
 * {@linkcode ProtocolError} instead, so every byte sequence has exactly one of
 * three answers. Also the small helpers the SOCKS4 and SOCKS5 codecs share.
 *
 * @module
 */

/** A decoded message and the number of bytes of the input it consumed. */
export interface Ok<T> {
  readonly kind: "ok";
  readonly value: T;
  readonly consumed: number;
}

/** The input is a valid prefix of a message; call again with more bytes. */
export interface More {
  readonly kind: "more";
}

/** What an incremental decoder returns for input that is not malformed. */
export type Decoded<T> = Ok<T> | More;

/** The shared `more` answer; it carries no state, so one object serves all. */
export const MORE: More = Object.freeze({ kind: "more" });

/** Builds an `ok` answer. */
export function ok<T>(value: T, consumed: number): Ok<T> {
  return { kind: "ok", value, consumed };
}

/** Stable identifiers for every way a client's bytes can be malformed. */
export type ProtocolErrorCode =
  | "bad-version"
  | "bad-auth-version"
  | "bad-reserved"
  | "bad-address-type"
  | "bad-command"
  | "empty-field"
  | "bad-host-name"
  | "field-too-long"
  | "truncated";

/**
 * What a decoder had read of a request before it found it malformed, for the
 * log line: which user-id, which target (a name as {@linkcode printableBytes}
 * shows it).
 */
export interface ReadSoFar {
  readonly userId?: Uint8Array;
  readonly target?: string;
}

/**
 * Malformed protocol input. `reply` is the reply code the server should send
 * before closing, or `null` when the protocol has no way to say it (a greeting
 * with the wrong version, for instance).
 */
export class ProtocolError extends Error {
  override readonly name = "ProtocolError";
  readonly code: ProtocolErrorCode;
  readonly reply: number | null;
  readonly readSoFar: ReadSoFar;

  constructor(
    code: ProtocolErrorCode,
    reply: number | null,
    message: string,
    readSoFar: ReadSoFar = {},
  ) {
    super(message);
    this.code = code;
    this.reply = reply;
    this.readSoFar = readSoFar;
  }

  /** The same error, also saying that `more` had been read. */
  alsoRead(more: ReadSoFar): ProtocolError {
    return new ProtocolError(this.code, this.reply, this.message, { ...this.readSoFar, ...more });
  }
}

const exactUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * A host name's bytes as text, exactly. Bytes that are not UTF-8 are refused
 * with `reply`, not replaced with U+FFFD: two different names must never turn
 * into one before the lookup (or one log line). The refusal's target is the
 * name as {@linkcode printableBytes} shows it, with `port`.
 */
export function decodeHostName(bytes: Uint8Array, reply: number, port: number): string {
  try {
    return exactUtf8.decode(bytes);
  } catch {
    const shown = printableBytes(bytes);
    throw new ProtocolError("bad-host-name", reply, `host name is not valid UTF-8: "${shown}"`, {
      target: `${shown}:${port}`,
    });
  }
}

/**
 * `bytes` for a message: printable ASCII as it is, every other byte (and
 * `"` and `\`) as `\xNN`, so that the log line shows which name was sent
 * without turning two different ones into the same text.
 */
export function printableBytes(bytes: Uint8Array): string {
  let out = "";
  for (const byte of bytes) {
    const plain = byte >= 0x20 && byte < 0x7f && byte !== 0x22 && byte !== 0x5c;
    out += plain ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, "0")}`;
  }
  return out;
}

/** Formats a byte for error messages: `0x2a`. */
export function hex(byte: number): string {
  return `0x${byte.toString(16).padStart(2, "0")}`;
}

/**
 * `length` zero bytes for an encoder to fill: the start of `into` when that has
 * room (the result is then a view of it), else a new array.
 */
export function room(into: Uint8Array | undefined, length: number): Uint8Array {
  return into !== undefined && into.length >= length
    ? into.subarray(0, length).fill(0)
    : new Uint8Array(length);
}
