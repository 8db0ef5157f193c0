/**
 * One client connection, start to end: buffer → decode → decide → dial →
 * reply → relay → one log line. Every way out of a session goes through
 * `run()`'s single exit, which closes both sockets and writes the line.
 *
 * One AbortController per session: the deadline sweep aborts it on handshake,
 * connect or idle timeout, shutdown aborts it, the relay aborts it on the
 * first error, and aborting closes both sockets, which ends every pending read.
 *
 * @module
 */
import type { UserTable } from "./auth.ts";
import type { SocksConfig } from "./config.ts";
import type { Deadlines, Expirable } from "./deadlines.ts";
import { sessionLog } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { type Address, addressOf, formatAddress } from "./protocol/address.ts";
import { type Decoded, ProtocolError } from "./protocol/decoded.ts";
import * as socks4 from "./protocol/socks4.ts";
import * as socks5 from "./protocol/socks5.ts";
import { relay, writeAll } from "./relay.ts";
import { dial, DialError } from "./upstream/dial.ts";

/** What a session shares with every other: settings, users, the sweep, counters. */
export interface SessionContext {
  readonly config: SocksConfig;
  readonly users: UserTable;
  readonly deadlines: Deadlines;
  readonly metrics: Metrics;
}

/** The phases a deadline can cut short, and the outcome each timeout is logged as. */
const TIMEOUT_OUTCOME = {
  handshake: "handshake-timeout",
  connect: "connect-timeout",
  relay: "idle-timeout",
  linger: "linger-done", // only after a refusal, whose outcome is already recorded
} as const;
type Phase = keyof typeof TIMEOUT_OUTCOME;

/** Why a session was aborted from outside the relay: a deadline or shutdown. */
export class SessionAbort extends Error {
  override readonly name = "SessionAbort";
  /** The outcome to log; `connect-timeout` doubles as a {@linkcode DialError} failure name. */
  readonly failure: string;

  constructor(failure: string) {
    super(failure);
    this.failure = failure;
  }
}

/** The client closed (or reset) before the handshake finished. */
class ClientGone extends Error {
  override readonly name = "ClientGone";
}

/** Failure replies are followed by a wait for the client's FIN, at most this long. */
const LINGER_MS = 2000;
/** A handshake larger than this is not SOCKS; the codecs cap every field well below it. */
const MAX_HANDSHAKE_BYTES = 8192;

const decoder = new TextDecoder();
let lastSessionId = 0;

/** One client connection. Create it, then await `run()`; it never rejects. */
export class Session implements Expirable {
  readonly id = ++lastSessionId;
  deadline: number;
  readonly controller = new AbortController();
  readonly #client: Deno.TcpConn;
  readonly #context: SessionContext;
  readonly #started = performance.now();
  #phase: Phase = "handshake";
  #target: Deno.TcpConn | null = null;
  /** Aborts the dial in progress on connect timeout; the session goes on to reply. */
  #dialAbort: AbortController | null = null;
  // Handshake bytes read but not yet decoded; whatever is left after the
  // request is the client's early data and goes to the target first.
  #pending = new Uint8Array(512);
  #pendingLength = 0;
  // Fields of the session's log line.
  #protocol: "socks5" | "socks4" | "socks4a" | null = null;
  #user: string | null = null;
  #requested: string | null = null;
  #outcome = "ok";
  /** Set once a refusal has recorded the outcome; later errors are its aftermath. */
  #refused = false;
  #up = 0;
  #down = 0;

  constructor(client: Deno.TcpConn, context: SessionContext) {
    this.#client = client;
    this.#context = context;
    this.deadline = context.deadlines.now + context.config.handshakeTimeoutMs;
    this.controller.signal.addEventListener("abort", () => this.#closeSockets(), { once: true });
  }

  /** The client's address as `ip:port`. */
  get client(): string {
    const { hostname, port } = this.#client.remoteAddr;
    return formatAddress({ host: hostname, port });
  }

  /** Called by the deadline sweep. */
  expire(): void {
    const reason = new SessionAbort(TIMEOUT_OUTCOME[this.#phase]);
    // A connect timeout ends only the dial: the client still gets its reply.
    if (this.#phase === "connect" && this.#dialAbort) this.#dialAbort.abort(reason);
    else this.controller.abort(reason);
  }

  /** Cuts the session short (shutdown). */
  abort(failure: string): void {
    this.controller.abort(new SessionAbort(failure));
  }

  /** Runs the session to its end. Never rejects. */
  async run(): Promise<void> {
    const { deadlines } = this.#context;
    deadlines.watch(this);
    try {
      this.#client.setNoDelay(true);
      this.#client.setKeepAlive(true);
      const first = await this.#peekFirstByte();
      if (first === socks5.VERSION) await this.#socks5();
      else if (first === socks4.VERSION) await this.#socks4();
      else this.#outcome = "unknown-protocol";
    } catch (error) {
      if (!this.#refused) this.#outcome = this.#outcomeOf(error);
    } finally {
      deadlines.unwatch(this);
      this.#closeSockets();
      this.#logEnd();
    }
  }

  async #socks5(): Promise<void> {
    this.#protocol = "socks5";
    const { users } = this.#context;
    const greeting = await this.#decode(socks5.decodeGreeting, null);
    const wanted = users.required ? socks5.Method.UserPass : socks5.Method.NoAuth;
    const method = greeting.methods.includes(wanted) ? wanted : socks5.Method.NoAcceptable;
    await writeAll(this.#client, socks5.encodeMethodSelection(method));
    if (method === socks5.Method.NoAcceptable) return await this.#refuse("no-acceptable-method");

    if (method === socks5.Method.UserPass) {
      const credentials = await this.#decode(socks5.decodeCredentials, socks5.encodeAuthStatus);
      this.#user = decoder.decode(credentials.username);
      if (!users.verify(this.#user, credentials.password)) {
        await writeAll(this.#client, socks5.encodeAuthStatus(socks5.AuthStatus.Failure));
        return await this.#refuse("auth-failed");
      }
      await writeAll(this.#client, socks5.encodeAuthStatus(socks5.AuthStatus.Success));
    }

    const replyWith = (code: number) =>
      socks5.encodeReply({ reply: code, address: socks5.UNBOUND });
    const request = await this.#decode(socks5.decodeRequest, replyWith);
    this.#requested = formatAddress(request.address);
    if (request.command !== socks5.Command.Connect) {
      await writeAll(this.#client, replyWith(socks5.Reply.CommandNotSupported));
      return await this.#refuse("command-not-supported");
    }
    const target = await this.#connect(request.address, (failure) => replyWith(failure.reply));
    if (!target) return;
    const bound = target.localAddr;
    await writeAll(
      this.#client,
      socks5.encodeReply({
        reply: socks5.Reply.Succeeded,
        address: addressOf(bound.hostname, bound.port),
      }),
    );
    await this.#relay(target);
  }

  async #socks4(): Promise<void> {
    this.#protocol = "socks4";
    const { config, users } = this.#context;
    const replyWith = (code: number) => socks4.encodeReply({ reply: code, port: 0, ip: "0.0.0.0" });
    const request = await this.#decode(socks4.decodeRequest, replyWith);
    if (request.address.type === "domain") this.#protocol = "socks4a";
    if (request.userId.length > 0) this.#user = decoder.decode(request.userId);
    this.#requested = formatAddress(request.address);
    const refusal = !config.socks4 ? "socks4-disabled" : users.required
      ? "auth-required" // SOCKS4 has no way to carry a password.
      : request.command !== socks4.Command.Connect
      ? "command-not-supported"
      : null;
    if (refusal) {
      await writeAll(this.#client, replyWith(socks4.Reply.Rejected));
      return await this.#refuse(refusal);
    }
    const target = await this.#connect(request.address, () => replyWith(socks4.Reply.Rejected));
    if (!target) return;
    const bound = target.localAddr;
    const ip = bound.hostname.includes(":") ? "0.0.0.0" : bound.hostname;
    await writeAll(
      this.#client,
      socks4.encodeReply({ reply: socks4.Reply.Granted, port: bound.port, ip }),
    );
    await this.#relay(target);
  }

  /** Dials, or sends the failure reply and returns `null`. */
  async #connect(
    address: Address,
    failureReply: (error: DialError) => Uint8Array,
  ): Promise<Deno.TcpConn | null> {
    this.#enter("connect", this.#context.config.connectTimeoutMs);
    this.#dialAbort = new AbortController();
    try {
      const signal = AbortSignal.any([this.controller.signal, this.#dialAbort.signal]);
      this.#target = await dial(address, signal);
    } catch (error) {
      if (!(error instanceof DialError) || error.failure === "aborted") throw error;
      await writeAll(this.#client, failureReply(error));
      await this.#refuse(error.failure);
      return null;
    }
    this.#dialAbort = null;
    if (this.controller.signal.aborted) throw this.controller.signal.reason;
    return this.#target;
  }

  async #relay(target: Deno.TcpConn): Promise<void> {
    const { deadlines, config } = this.#context;
    this.#enter("relay", config.idleTimeoutMs);
    const early = this.#pending.subarray(0, this.#pendingLength);
    if (early.length > 0) {
      await writeAll(target, early);
      this.#up += early.length;
    }
    this.#pending = new Uint8Array(0); // the handshake buffer is not needed any more
    this.#pendingLength = 0;
    const idleMs = config.idleTimeoutMs;
    const totals = await relay(this.#client, target, {
      controller: this.controller,
      onActivity: () => {
        this.deadline = deadlines.now + idleMs;
      },
    });
    this.#up += totals.up;
    this.#down += totals.down;
    if (this.controller.signal.aborted) throw this.controller.signal.reason;
  }

  /**
   * After a failure reply: records the outcome, then waits (bounded) for the
   * client to close first, so the reply is never destroyed by a reset from
   * closing with unread input, and the TIME_WAIT stays on the client's side.
   */
  async #refuse(outcome: string): Promise<void> {
    this.#outcome = outcome;
    this.#refused = true;
    this.#enter("linger", LINGER_MS);
    const scratch = new Uint8Array(512);
    try {
      while ((await this.#client.read(scratch)) !== null) { /* discard */ }
    } catch {
      // reset, or closed by the linger deadline: either way we are done
    }
  }

  #enter(phase: Phase, timeoutMs: number): void {
    this.#phase = phase;
    this.deadline = this.#context.deadlines.now + timeoutMs;
    this.#context.deadlines.watch(this); // again, if a sweep already expired the last phase
  }

  async #peekFirstByte(): Promise<number> {
    await this.#fill();
    return this.#pending[0]!;
  }

  /**
   * Decodes one message from the handshake buffer, reading more as needed.
   * A {@linkcode ProtocolError} is answered with `errorReply(code)` when the
   * protocol has a way to say it, then rethrown.
   */
  async #decode<T>(
    decode: (bytes: Uint8Array) => Decoded<T>,
    errorReply: ((code: number) => Uint8Array) | null,
  ): Promise<T> {
    for (;;) {
      let result: Decoded<T>;
      try {
        result = decode(this.#pending.subarray(0, this.#pendingLength));
      } catch (error) {
        if (error instanceof ProtocolError && error.reply !== null && errorReply) {
          await writeAll(this.#client, errorReply(error.reply));
          await this.#refuse(this.#outcomeOf(error));
        }
        throw error;
      }
      if (result.kind === "ok") {
        this.#pending.copyWithin(0, result.consumed, this.#pendingLength);
        this.#pendingLength -= result.consumed;
        return result.value;
      }
      await this.#fill();
    }
  }

  /** Reads more handshake bytes, growing the buffer when it is full. */
  async #fill(): Promise<void> {
    if (this.#pendingLength === this.#pending.length) {
      if (this.#pending.length >= MAX_HANDSHAKE_BYTES) {
        throw new ProtocolError("field-too-long", null, "handshake larger than 8 KiB");
      }
      const grown = new Uint8Array(this.#pending.length * 2);
      grown.set(this.#pending);
      this.#pending = grown;
    }
    let n: number | null;
    try {
      n = await this.#client.read(this.#pending.subarray(this.#pendingLength));
    } catch (error) {
      if (this.controller.signal.aborted) throw this.controller.signal.reason;
      throw new ClientGone("client reset during the handshake", { cause: error });
    }
    if (n === null) throw new ClientGone("client closed during the handshake");
    this.#pendingLength += n;
  }

  #outcomeOf(error: unknown): string {
    // An abort's reason says why, whatever error the closed socket then raised.
    const reason = this.controller.signal.aborted ? this.controller.signal.reason : error;
    if (reason instanceof SessionAbort) return reason.failure;
    if (reason instanceof DialError) return reason.failure;
    if (reason instanceof ClientGone) return "client-closed";
    if (reason instanceof ProtocolError) {
      return reason.reply === socks5.Reply.AddressTypeNotSupported && this.#protocol === "socks5"
        ? "address-type-not-supported"
        : "protocol-error";
    }
    if (
      reason instanceof Deno.errors.ConnectionReset || reason instanceof Deno.errors.BrokenPipe ||
      reason instanceof Deno.errors.ConnectionAborted || reason instanceof Deno.errors.NotConnected
    ) return "reset";
    return "error";
  }

  #closeSockets(): void {
    closeQuietly(this.#client);
    if (this.#target) closeQuietly(this.#target);
  }

  #logEnd(): void {
    this.#context.metrics.sessionEnded(this.#outcome, this.#up, this.#down);
    if (!sessionLog.isEnabledFor("info")) return;
    sessionLog.info("session {id} {client} → {target}: {outcome}", {
      event: "session",
      id: this.id,
      client: this.client,
      user: this.#user,
      protocol: this.#protocol,
      target: this.#requested,
      outcome: this.#outcome,
      up: this.#up,
      down: this.#down,
      ms: Math.round(performance.now() - this.#started),
    });
  }
}

/** Closes a connection or listener that may already be closed. */
export function closeQuietly(conn: { close(): void }): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}
