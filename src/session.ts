/**
 * A SOCKS client connection: buffer → decode → decide → dial → reply →
 * relay. The first byte picks SOCKS5 or SOCKS4/4a; the shared life of a
 * session (deadlines, relay, refusal, log line) is {@linkcode ProxySession}'s.
 *
 * @module
 */
import type { UserTable } from "./auth.ts";
import { addressOf, formatAddress } from "./protocol/address.ts";
import { type Decoded, ProtocolError } from "./protocol/decoded.ts";
import * as socks4 from "./protocol/socks4.ts";
import * as socks5 from "./protocol/socks5.ts";
import { ClientGone, ProxySession, type SessionContext } from "./proxy_session.ts";
import { writeAll } from "./relay.ts";

/** What SOCKS sessions share beyond {@linkcode SessionContext}. */
export interface SocksContext extends SessionContext {
  readonly users: UserTable;
  readonly socks4: boolean;
}

/** A handshake larger than this is not SOCKS; the codecs cap every field well below it. */
const MAX_HANDSHAKE_BYTES = 8192;

const decoder = new TextDecoder();

/** One SOCKS client connection. */
export class SocksSession extends ProxySession {
  readonly #socks: SocksContext;
  // Handshake bytes read but not yet decoded; whatever is left after the
  // request is the client's early data and goes to the target first.
  #pending = new Uint8Array(512);
  #pendingLength = 0;

  constructor(client: Deno.TcpConn, context: SocksContext) {
    super(client, context, "handshake");
    this.#socks = context;
  }

  protected async negotiate(): Promise<void> {
    const first = await this.#peekFirstByte();
    if (first === socks5.VERSION) await this.#socks5();
    else if (first === socks4.VERSION) await this.#socks4();
    else this.setOutcome("unknown-protocol");
  }

  async #socks5(): Promise<void> {
    this.protocol = "socks5";
    const { users } = this.#socks;
    const greeting = await this.#decode(socks5.decodeGreeting, null);
    const wanted = users.required ? socks5.Method.UserPass : socks5.Method.NoAuth;
    const method = greeting.methods.includes(wanted) ? wanted : socks5.Method.NoAcceptable;
    await writeAll(this.client, socks5.encodeMethodSelection(method));
    if (method === socks5.Method.NoAcceptable) return await this.refuse("no-acceptable-method");

    if (method === socks5.Method.UserPass) {
      const credentials = await this.#decode(socks5.decodeCredentials, socks5.encodeAuthStatus);
      this.user = decoder.decode(credentials.username);
      if (!users.verify(this.user, credentials.password)) {
        await writeAll(this.client, socks5.encodeAuthStatus(socks5.AuthStatus.Failure));
        return await this.refuse("auth-failed");
      }
      await writeAll(this.client, socks5.encodeAuthStatus(socks5.AuthStatus.Success));
    }

    const replyWith = (code: number) =>
      socks5.encodeReply({ reply: code, address: socks5.UNBOUND });
    const request = await this.#decode(socks5.decodeRequest, replyWith);
    this.requested = formatAddress(request.address);
    if (request.command !== socks5.Command.Connect) {
      await writeAll(this.client, replyWith(socks5.Reply.CommandNotSupported));
      return await this.refuse("command-not-supported");
    }
    const target = await this.connectTo(request.address, (failure) => replyWith(failure.reply));
    if (!target) return;
    const bound = target.localAddr;
    await writeAll(
      this.client,
      socks5.encodeReply({
        reply: socks5.Reply.Succeeded,
        address: addressOf(bound.hostname, bound.port),
      }),
    );
    await this.relayTo(target, this.#takeEarlyData());
  }

  async #socks4(): Promise<void> {
    this.protocol = "socks4";
    const { users } = this.#socks;
    const replyWith = (code: number) => socks4.encodeReply({ reply: code, port: 0, ip: "0.0.0.0" });
    const request = await this.#decode(socks4.decodeRequest, replyWith);
    if (request.address.type === "domain") this.protocol = "socks4a";
    if (request.userId.length > 0) this.user = decoder.decode(request.userId);
    this.requested = formatAddress(request.address);
    const refusal = !this.#socks.socks4 ? "socks4-disabled" : users.required
      ? "auth-required" // SOCKS4 has no way to carry a password.
      : request.command !== socks4.Command.Connect
      ? "command-not-supported"
      : null;
    if (refusal) {
      await writeAll(this.client, replyWith(socks4.Reply.Rejected));
      return await this.refuse(refusal);
    }
    const target = await this.connectTo(request.address, () => replyWith(socks4.Reply.Rejected));
    if (!target) return;
    const bound = target.localAddr;
    const ip = bound.hostname.includes(":") ? "0.0.0.0" : bound.hostname;
    await writeAll(
      this.client,
      socks4.encodeReply({ reply: socks4.Reply.Granted, port: bound.port, ip }),
    );
    await this.relayTo(target, this.#takeEarlyData());
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
          await writeAll(this.client, errorReply(error.reply));
          await this.refuse(this.outcomeOf(error));
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
      n = await this.client.read(this.#pending.subarray(this.#pendingLength));
    } catch (error) {
      if (this.controller.signal.aborted) throw this.controller.signal.reason;
      throw new ClientGone("client reset during the handshake", { cause: error });
    }
    if (n === null) throw new ClientGone("client closed during the handshake");
    this.#pendingLength += n;
  }

  /** Takes the bytes the client sent after its request: they go to the target first. */
  #takeEarlyData(): Uint8Array {
    const early = this.#pending.subarray(0, this.#pendingLength);
    this.#pending = new Uint8Array(0); // the handshake buffer is not needed any more
    this.#pendingLength = 0;
    return early;
  }

  protected override outcomeOf(error: unknown): string {
    const reason = this.controller.signal.aborted ? this.controller.signal.reason : error;
    if (
      reason instanceof ProtocolError && this.protocol === "socks5" &&
      reason.reply === socks5.Reply.AddressTypeNotSupported
    ) return "address-type-not-supported";
    return super.outcomeOf(error);
  }
}
