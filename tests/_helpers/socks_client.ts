/**
 * A small raw SOCKS client and TCP target for black-box tests of ferry, built
 * on ferry's own pure codecs. Everything here is bounded in time: reads that
 * wait on the network take a deadline and close the connection when it passes,
 * so a hung server fails a test instead of hanging it.
 */
import assert from "node:assert/strict";
import type { Address } from "../../src/protocol/address.ts";
import type { Decoded } from "../../src/protocol/decoded.ts";
import * as socks4 from "../../src/protocol/socks4.ts";
import * as socks5 from "../../src/protocol/socks5.ts";

export { socks4, socks5 };

/** Default bound for one wait on the network. */
export const DEFAULT_DEADLINE_MS = 10_000;

/**
 * Awaits `promise`, or rejects after `ms` (and runs `onTimeout`, which should
 * make the promise settle, e.g. by closing the connection it reads from).
 */
export async function deadline<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
  onTimeout?: () => void,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
    // If the timeout won, let the original promise settle without an unhandled rejection.
    promise.catch(() => {});
  }
}

/**
 * Awaits `promise`, or `ms` at most, whichever comes first; never rejects.
 * Unlike a race with a bare sleep, its timer ends with it ({@linkcode
 * deadline}'s): the op sanitizer counts a timer still pending against the test.
 */
export function atMost(promise: Promise<unknown>, ms: number): Promise<void> {
  return deadline(promise, ms, "").then(() => {}, () => {});
}

/** Concatenates byte arrays. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Deterministic pseudo-random bytes (xorshift32), so payloads are not trivially compressible. */
export function pseudoRandomBytes(length: number, seed = 0x9e3779b9): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed | 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
    if (i + 1 < length) out[i + 1] = (x >>> 8) & 0xff;
    if (i + 2 < length) out[i + 2] = (x >>> 16) & 0xff;
    if (i + 3 < length) out[i + 3] = (x >>> 24) & 0xff;
  }
  return out;
}

/** Hex SHA-256 of `bytes`. */
export async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Writes every byte of `bytes`. */
export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) at += await conn.write(bytes.subarray(at));
}

/** How a connection ended when read to its end. */
export type Ending = "eof" | "reset";

/**
 * A TCP connection with a read buffer, so tests can read whole protocol
 * messages, exact byte counts, or everything up to EOF. Closing is idempotent.
 */
export class BufferedConn implements Disposable {
  readonly conn: Deno.TcpConn;
  #buffer: Uint8Array = new Uint8Array(0);
  #closed = false;

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  /** Connects to `hostname:port`. */
  static async connect(hostname: string, port: number): Promise<BufferedConn> {
    const conn = await Deno.connect({ hostname, port });
    conn.setNoDelay(true);
    return new BufferedConn(conn);
  }

  get localAddr(): Deno.NetAddr {
    return this.conn.localAddr;
  }

  get remoteAddr(): Deno.NetAddr {
    return this.conn.remoteAddr;
  }

  /** Bytes already read from the socket but not yet consumed. */
  get buffered(): number {
    return this.#buffer.length;
  }

  /** Reads once more from the socket into the buffer; `false` at EOF. */
  async #fill(): Promise<boolean> {
    const chunk = new Uint8Array(256 * 1024);
    const n = await this.conn.read(chunk);
    if (n === null) return false;
    this.#buffer = this.#buffer.length === 0
      ? chunk.subarray(0, n)
      : concat([this.#buffer, chunk.subarray(0, n)]);
    return true;
  }

  #bounded<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
    return deadline(promise, ms, what, () => this.close());
  }

  /** Reads one message with an incremental decoder (`ok`/`more`/throw). */
  readMessage<T>(
    decode: (bytes: Uint8Array) => Decoded<T>,
    what: string,
    ms = DEFAULT_DEADLINE_MS,
  ): Promise<T> {
    return this.#bounded(
      (async () => {
        while (true) {
          const decoded = decode(this.#buffer);
          if (decoded.kind === "ok") {
            this.#buffer = this.#buffer.subarray(decoded.consumed);
            return decoded.value;
          }
          if (!await this.#fill()) {
            throw new Error(
              `connection closed before ${what} (had ${this.#buffer.length} bytes: ${
                Array.from(this.#buffer.subarray(0, 32), (b) => b.toString(16).padStart(2, "0"))
                  .join(" ")
              })`,
            );
          }
        }
      })(),
      ms,
      what,
    );
  }

  /** Reads exactly `n` bytes. */
  readExactly(n: number, ms = DEFAULT_DEADLINE_MS): Promise<Uint8Array> {
    return this.#bounded(
      (async () => {
        while (this.#buffer.length < n) {
          if (!await this.#fill()) {
            throw new Error(`connection closed after ${this.#buffer.length} of ${n} bytes`);
          }
        }
        const out = this.#buffer.slice(0, n);
        this.#buffer = this.#buffer.subarray(n);
        return out;
      })(),
      ms,
      `${n} bytes`,
    );
  }

  /** Reads at least `n` bytes (more may arrive in the same read) and returns them all. */
  readAtLeast(n: number, ms = DEFAULT_DEADLINE_MS): Promise<Uint8Array> {
    return this.#bounded(
      (async () => {
        while (this.#buffer.length < n) {
          if (!await this.#fill()) {
            throw new Error(`connection closed after ${this.#buffer.length} of ${n} bytes`);
          }
        }
        const out = this.#buffer;
        this.#buffer = new Uint8Array(0);
        return out;
      })(),
      ms,
      `at least ${n} bytes`,
    );
  }

  /** Reads everything up to EOF. A reset is an error. */
  readToEnd(ms = DEFAULT_DEADLINE_MS): Promise<Uint8Array> {
    return this.#bounded(
      (async () => {
        const parts = [this.#buffer];
        this.#buffer = new Uint8Array(0);
        const chunk = new Uint8Array(256 * 1024);
        while (true) {
          const n = await this.conn.read(chunk);
          if (n === null) return concat(parts);
          parts.push(chunk.slice(0, n));
        }
      })(),
      ms,
      "EOF",
    );
  }

  /**
   * Waits until the peer ends the connection, discarding any bytes that still
   * arrive; resolves with how it ended and how many bytes were discarded.
   */
  waitForEnd(ms = DEFAULT_DEADLINE_MS): Promise<{ ending: Ending; discarded: number }> {
    return this.#bounded(
      (async () => {
        let discarded = this.#buffer.length;
        this.#buffer = new Uint8Array(0);
        const chunk = new Uint8Array(64 * 1024);
        try {
          while (true) {
            const n = await this.conn.read(chunk);
            if (n === null) return { ending: "eof" as const, discarded };
            discarded += n;
          }
        } catch (error) {
          if (
            error instanceof Deno.errors.ConnectionReset ||
            error instanceof Deno.errors.BrokenPipe ||
            error instanceof Deno.errors.ConnectionAborted
          ) {
            return { ending: "reset" as const, discarded };
          }
          throw error;
        }
      })(),
      ms,
      "the connection to end",
    );
  }

  /** Writes all of `bytes` (closing the connection if the peer stops reading for `ms`). */
  write(bytes: Uint8Array, ms = 30_000): Promise<void> {
    return this.#bounded(writeAll(this.conn, bytes), ms, `writing ${bytes.length} bytes`);
  }

  /** Writes `bytes` one byte per write call (Nagle is off, so one segment each). */
  writeBytewise(bytes: Uint8Array, ms = DEFAULT_DEADLINE_MS): Promise<void> {
    return this.#bounded(
      (async () => {
        for (let i = 0; i < bytes.length; i++) {
          await writeAll(this.conn, bytes.subarray(i, i + 1));
        }
      })(),
      ms,
      `writing ${bytes.length} bytes one at a time`,
    );
  }

  /** Shuts down the sending side (TCP FIN). */
  closeWrite(): Promise<void> {
    return this.conn.closeWrite();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // already closed
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Options of {@linkcode socks5Handshake}. */
export interface Socks5HandshakeOptions {
  /** Methods to offer; default: no-auth, plus user/pass when credentials are given. */
  methods?: number[];
  /** RFC 1929 credentials. */
  username?: string;
  password?: string;
  /** Request command; default CONNECT. */
  command?: number;
  /** Send every byte in its own write. */
  bytewise?: boolean;
}

const encoder = new TextEncoder();

/**
 * Runs a SOCKS5 handshake to `address` and returns the server's reply. Throws
 * when the server selects no method or rejects the credentials.
 */
export async function socks5Handshake(
  client: BufferedConn,
  address: Address,
  options: Socks5HandshakeOptions = {},
): Promise<socks5.ReplyMessage> {
  const hasCredentials = options.username !== undefined;
  const methods = options.methods ??
    (hasCredentials ? [socks5.Method.UserPass] : [socks5.Method.NoAuth]);
  const send = (bytes: Uint8Array) =>
    options.bytewise ? client.writeBytewise(bytes) : client.write(bytes);
  await send(socks5.encodeGreeting({ methods }));
  const method = await client.readMessage(socks5.decodeMethodSelection, "method selection");
  if (method === socks5.Method.NoAcceptable || !methods.includes(method)) {
    throw new Error(`server selected method 0x${method.toString(16)}; offered ${methods}`);
  }
  if (method === socks5.Method.UserPass) {
    await send(socks5.encodeCredentials({
      username: encoder.encode(options.username ?? ""),
      password: encoder.encode(options.password ?? ""),
    }));
    const status = await client.readMessage(socks5.decodeAuthStatus, "auth status");
    if (status !== socks5.AuthStatus.Success) {
      throw new Error(`authentication failed with status ${status}`);
    }
  }
  await send(socks5.encodeRequest({ command: options.command ?? socks5.Command.Connect, address }));
  return await client.readMessage(socks5.decodeReply, "SOCKS5 reply");
}

/** Connects to a SOCKS server and runs a SOCKS5 CONNECT; returns the conn and the reply. */
export async function socks5Connect(
  proxy: { hostname: string; port: number },
  address: Address,
  options: Socks5HandshakeOptions = {},
): Promise<{ client: BufferedConn; reply: socks5.ReplyMessage }> {
  const client = await BufferedConn.connect(proxy.hostname, proxy.port);
  try {
    const reply = await socks5Handshake(client, address, options);
    return { client, reply };
  } catch (error) {
    client.close();
    throw error;
  }
}

/**
 * A relayed connection, the way most relay tests start one: a SOCKS5 CONNECT
 * through `proxy` to `target` (127.0.0.1 by default) that must succeed, and
 * the connection the target accepted for it.
 */
export async function connectThrough(
  proxy: { hostname: string; port: number },
  target: TcpTarget,
  options: Socks5HandshakeOptions & { address?: Address } = {},
): Promise<{ client: BufferedConn; server: BufferedConn; reply: socks5.ReplyMessage }> {
  const upstream = target.accept();
  const address = options.address ?? ipv4("127.0.0.1", target.port);
  const { client, reply } = await socks5Connect(proxy, address, options);
  try {
    assert.equal(reply.reply, socks5.Reply.Succeeded);
    return { client, server: await upstream, reply };
  } catch (error) {
    client.close();
    throw error;
  }
}

/** Runs a SOCKS4/4a request (a domain address is sent the 4a way) and returns the reply. */
export async function socks4Handshake(
  client: BufferedConn,
  address: Address,
  userId: Uint8Array = new Uint8Array(0),
): Promise<socks4.ReplyMessage> {
  await client.write(socks4.encodeRequest({ command: socks4.Command.Connect, address, userId }));
  return await client.readMessage(socks4.decodeReply, "SOCKS4 reply");
}

/** IPv4 address helper. */
export function ipv4(host: string, port: number): Address {
  return { type: "ipv4", host, port };
}

/** IPv6 address helper. */
export function ipv6(host: string, port: number): Address {
  return { type: "ipv6", host, port };
}

/** Domain-name address helper. */
export function domain(host: string, port: number): Address {
  return { type: "domain", host, port };
}

/**
 * A raw TCP server on loopback that hands accepted connections to the test.
 * Every accepted connection is closed on dispose.
 */
export class TcpTarget implements Disposable {
  readonly listener: Deno.TcpListener;
  readonly #accepted: BufferedConn[] = [];

  constructor(listener: Deno.TcpListener) {
    this.listener = listener;
  }

  static listen(hostname = "127.0.0.1"): TcpTarget {
    return new TcpTarget(Deno.listen({ hostname, port: 0, transport: "tcp" }));
  }

  get port(): number {
    return this.listener.addr.port;
  }

  get hostname(): string {
    return this.listener.addr.hostname;
  }

  /**
   * Accepts the next connection. The returned promise may be left unawaited
   * (when the test fails before it), without an unhandled rejection.
   */
  accept(ms = DEFAULT_DEADLINE_MS): Promise<BufferedConn> {
    const accepted = deadline(
      this.listener.accept(),
      ms,
      "a connection to the target",
      () => this.close(),
    ).then((conn) => {
      conn.setNoDelay(true);
      const buffered = new BufferedConn(conn);
      this.#accepted.push(buffered);
      return buffered;
    });
    accepted.catch(() => {});
    return accepted;
  }

  #closed = false;
  close(): void {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.listener.close();
      } catch {
        // already closed
      }
    }
    for (const conn of this.#accepted) conn.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A TCP port on loopback that nothing listens on (bound, then closed). */
export function closedPort(hostname = "127.0.0.1"): number {
  const listener = Deno.listen({ hostname, port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}
