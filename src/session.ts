/**
 * A SOCKS client connection: buffer → decode → decide → dial → reply →
 * relay. The first byte picks SOCKS5 or SOCKS4/4a; the shared life of a
 * session (deadlines, relay, refusal, log line) is {@linkcode ProxySession}'s.
 *
 * @module
 */
import type { UserTable } from "./auth.ts";
import { closeQuietly } from "./close_quietly.ts";
import type { UdpAdvertise } from "./config.ts";
import { BindListener, expectedPeers } from "./bind.ts";
import { type Address, addressOf, formatAddress, unmapIPv4 } from "./protocol/address.ts";
import {
  type Decoded,
  hex,
  printableBytes,
  ProtocolError,
  type ReadSoFar,
} from "./protocol/decoded.ts";
import * as socks4 from "./protocol/socks4.ts";
import * as socks5 from "./protocol/socks5.ts";
import {
  ClientGone,
  ProxySession,
  type Relaying,
  SessionAbort,
  type SessionContext,
} from "./proxy_session.ts";
import { writeAll } from "./relay.ts";
import { makingRoom } from "./spare_descriptors.ts";
import { UdpAssociation } from "./udp_associate.ts";
import { DialError, messageWithCause } from "./upstream/dial.ts";
import { WaitingClient } from "./waiting_client.ts";

/** What SOCKS sessions share beyond {@linkcode SessionContext}. */
export interface SocksContext extends SessionContext {
  readonly users: UserTable;
  readonly socks4: boolean;
  /** BND.ADDR for UDP ASSOCIATE replies, overriding the interface address; `null`: none. */
  readonly udpAdvertise: UdpAdvertise;
  readonly bindTimeoutMs: number;
  readonly maxUdpPerIp: number;
  /** Live UDP associations by client IP, shared by the listener's sessions. */
  readonly udpPerIp: Map<string, number>;
}

/** The replies of a BIND, in the protocol that asked for it. */
interface BindReplies {
  /** A success reply carrying `addr`: the listener's first, the peer's second. */
  bound(addr: Deno.NetAddr): Uint8Array;
  /** A failure reply; SOCKS5 sends `code`, SOCKS4 its one rejection. */
  failure(code: number): Uint8Array;
}

/** A handshake larger than this is not SOCKS; the codecs cap every field well below it. */
const MAX_HANDSHAKE_BYTES = 8192;

/**
 * User names as configured text: a byte order mark is kept and invalid UTF-8
 * is an error, so that no other byte string passes for a user's name (the
 * default decoder drops a leading BOM and turns bad bytes into U+FFFD).
 */
const exactName = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** No early data, and the handshake buffer once the handshake is over; never written to. */
const NO_BYTES = new Uint8Array(0);

/** One SOCKS client connection. */
export class SocksSession extends ProxySession {
  readonly #socks: SocksContext;
  // Handshake bytes read but not yet decoded; whatever is left after the
  // request is the client's early data and goes to the target first. The
  // relay's first client → target buffer until a long handshake outgrows it
  // (success replies go into the other one, see ProxySession.firstBuffers).
  #pending = this.firstBuffers[0];
  #pendingLength = 0;
  #association: UdpAssociation | null = null;
  #bindListener: BindListener | null = null;
  #bindPeer: string | null = null;
  /** The request's command, for the log line: a UDP association reads like a CONNECT otherwise. */
  #command: string | null = null;
  /** Whether the user name or user-id was not UTF-8 (see #showUser). */
  #userNotUtf8 = false;

  constructor(client: Deno.TcpConn, context: SocksContext) {
    super(client, context, "handshake");
    this.#socks = context;
  }

  protected async negotiate(): Promise<Relaying | null> {
    await this.#fill();
    const first = this.#pending[0];
    if (first === socks5.VERSION) return this.#socks5();
    if (first === socks4.VERSION) return this.#socks4();
    this.setOutcome("unknown-protocol");
    return null;
  }

  async #socks5(): Promise<Relaying | null> {
    this.protocol = "socks5";
    const { users } = this.#socks;
    const greeting = await this.#decode(socks5.decodeGreeting, null);
    const wanted = users.required ? socks5.Method.UserPass : socks5.Method.NoAuth;
    const method = greeting.methods.includes(wanted) ? wanted : socks5.Method.NoAcceptable;
    const selection = socks5.encodeMethodSelection(method);
    if (method === socks5.Method.NoAcceptable) {
      return await this.refuse(selection, "no-acceptable-method");
    }
    await writeAll(this.client, selection);

    if (method === socks5.Method.UserPass) {
      const credentials = await this.#decode(socks5.decodeCredentials, socks5.encodeAuthStatus);
      // Not UTF-8, it cannot be a configured name; none is empty, so "" never matches.
      const name = this.#showUser(credentials.username) ?? "";
      if (!users.verify(name, credentials.password)) {
        return await this.refuse(
          socks5.encodeAuthStatus(socks5.AuthStatus.Failure),
          "auth-failed",
        );
      }
      await writeAll(this.client, socks5.encodeAuthStatus(socks5.AuthStatus.Success));
    }

    const replyWith = (code: number) =>
      socks5.encodeReply({ reply: code, address: socks5.UNBOUND });
    const request = await this.#decodeRequest(socks5.decodeRequest, replyWith, SOCKS5_COMMANDS);
    this.requested = formatAddress(request.address);
    if (request.command === socks5.Command.Bind) {
      return await this.#bind(request.address, {
        bound: (addr) =>
          socks5.encodeReply({
            reply: socks5.Reply.Succeeded,
            address: addressOf(unmapIPv4(addr.hostname), addr.port),
          }),
        failure: (code) => replyWith(code),
      });
    }
    if (request.command === socks5.Command.UdpAssociate) {
      return await this.#udpAssociate(request.address, replyWith);
    }
    if (request.command !== socks5.Command.Connect) {
      return await this.refuse(
        replyWith(socks5.Reply.CommandNotSupported),
        "command-not-supported",
      );
    }
    const target = await this.connectTo(request.address, (failure) => replyWith(failure.reply));
    if (!target) return null;
    const bound = target.localAddr;
    await writeAll(
      this.client,
      socks5.encodeReply(
        // An IPv4-mapped target (::ffff:127.0.0.1) is reached over IPv4: named as BIND names it.
        {
          reply: socks5.Reply.Succeeded,
          address: addressOf(unmapIPv4(bound.hostname), bound.port),
        },
        this.firstBuffers[1],
      ),
    );
    return this.relayingTo(target);
  }

  async #socks4(): Promise<Relaying | null> {
    this.protocol = "socks4";
    const replyWith = (code: number) => socks4.encodeReply({ reply: code, port: 0, ip: "0.0.0.0" });
    const request = await this.#decodeRequest(socks4.decodeRequest, replyWith, SOCKS4_COMMANDS);
    if (request.address.type === "domain") this.protocol = "socks4a";
    if (request.userId.length > 0) this.#showUser(request.userId);
    this.requested = formatAddress(request.address);
    const refusal = this.#socks4Refusal();
    if (refusal) {
      return await this.refuse(replyWith(socks4.Reply.Rejected), refusal);
    }
    if (request.command === socks4.Command.Bind) {
      return await this.#bind(request.address, {
        bound: (addr) => {
          const host = unmapIPv4(addr.hostname);
          // SOCKS4 carries IPv4 only; 0.0.0.0 tells the client "the proxy's own address".
          const ip = host.includes(":") ? "0.0.0.0" : host;
          return socks4.encodeReply({ reply: socks4.Reply.Granted, port: addr.port, ip });
        },
        failure: () => replyWith(socks4.Reply.Rejected),
      });
    }
    const target = await this.connectTo(request.address, () => replyWith(socks4.Reply.Rejected));
    if (!target) return null;
    const bound = target.localAddr;
    const host = unmapIPv4(bound.hostname); // a name may resolve to ::ffff:…, reached over IPv4
    const ip = host.includes(":") ? "0.0.0.0" : host;
    await writeAll(
      this.client,
      socks4.encodeReply(
        { reply: socks4.Reply.Granted, port: bound.port, ip },
        this.firstBuffers[1],
      ),
    );
    return this.relayingTo(target);
  }

  /**
   * BIND: listen (see #bindAddress), reply with that address, wait (bounded
   * by the bind timeout) for the peer the request named, reply with the
   * peer's address, then relay as CONNECT does.
   */
  async #bind(address: Address, replies: BindReplies): Promise<Relaying | null> {
    let peers: ReadonlySet<string> | null;
    try {
      // The lookup races the signal itself, and ends in a DialError either
      // way. One that lasts has the client read meanwhile, as a dial does.
      peers = await this.waitInConnectPhase(
        this.#socks.connectTimeoutMs,
        (signal) => expectedPeers(address, this.clientIp, signal),
        true,
      );
    } catch (error) {
      // As a CONNECT's lookup fails, with the same replies (see connectTo).
      if (!(error instanceof DialError) || this.controller.signal.aborted) throw error;
      return await this.refuseDial(error, (dialError) => replies.failure(dialError.reply));
    }
    const listenOn = this.#bindAddress(peers);
    if (peers && ![...peers].some((peer) => peer.includes(":") === listenOn.includes(":"))) {
      // An IPv4 peer cannot connect to a listener on an IPv6 address, nor the
      // reverse: say so now rather than after the whole bind timeout.
      return await this.refuse(replies.failure(socks5.Reply.HostUnreachable), "host-unreachable");
    }
    try {
      this.#bindListener = await this.openInConnectPhase(() =>
        makingRoom(() => new BindListener(listenOn))
      );
    } catch (error) {
      return await this.refuse(
        replies.failure(socks5.Reply.GeneralFailure),
        "bind-failed",
        messageWithCause(error),
      );
    }
    using listener = this.#bindListener;
    await writeAll(this.client, replies.bound(listener.addr));
    // Read while waiting, so that a reset ends the wait (see WaitingClient);
    // after a read in flight since the lookup, if it lasted.
    const waiting = new WaitingClient(
      this.releaseClient() ?? this.client,
      (bytes) => this.keepEarlyBytes(bytes),
    );
    let peer: Deno.TcpConn;
    let accepting: Promise<Deno.TcpConn> | undefined;
    try {
      peer = await this.waitInConnectPhase(this.#socks.bindTimeoutMs, (signal) => {
        accepting = listener.accept(peers, signal);
        return Promise.race([accepting, waiting.gone]);
      });
    } catch (error) {
      // A peer accepted just as the client reset is nobody's: close it.
      void accepting?.then(closeQuietly, () => {});
      waiting.release(); // no more reads: the refusal reads the client itself
      // The client's own error (a reset): logged as such, with no reply to send.
      if (this.controller.signal.aborted || waiting.failed) throw error;
      // No peer in time: the host did not come (0x04). Accepting it failed
      // (EMFILE): ferry's own failure (0x01), as the README's table says.
      return await (error instanceof SessionAbort && error.failure === "connect-timeout"
        ? this.refuse(replies.failure(socks5.Reply.HostUnreachable), "bind-timeout")
        : this.refuse(
          replies.failure(socks5.Reply.GeneralFailure),
          "bind-failed",
          messageWithCause(error),
        ));
    }
    listener.close(); // one peer per BIND: nobody else may connect from here on
    this.adoptTarget(peer);
    peer.setNoDelay(true); // keepalive: as for any relay, once it has lasted
    this.#bindPeer = formatAddress({ host: peer.remoteAddr.hostname, port: peer.remoteAddr.port });
    await writeAll(this.client, replies.bound(peer.remoteAddr));
    return this.relayingTo(peer, waiting.release());
  }

  /**
   * Where a BIND listens: where ferry already reaches the peer from (the
   * address of the FTP control connection the client made with CONNECT, say)
   * when a session of this listener holds such a connection; else the address
   * the client came in on. On a host between two networks the client's side
   * may be one the peer cannot route to, and FTP servers refuse a PORT that
   * names another address than the control connection's. A SOCKS4 reply has
   * room for an IPv4 address only.
   */
  #bindAddress(peers: ReadonlySet<string> | null): string {
    const source = peers &&
      this.context.sourceFor(peers, this.clientIp);
    if (source && !(this.protocol !== "socks5" && source.includes(":"))) return source;
    return unmapIPv4(this.client.localAddr.hostname);
  }

  /**
   * UDP ASSOCIATE: a relay socket on the interface the client came in on,
   * alive while the control connection is, and evicted by the idle timeout,
   * which datagrams (and bytes on the control connection) reset as bytes on
   * a TCP relay do.
   */
  async #udpAssociate(
    declared: Address,
    replyWith: (code: number) => Uint8Array,
  ): Promise<null> {
    const { udpPerIp, maxUdpPerIp, udpAdvertise, idleTimeoutMs, deadlines } = this.#socks;
    // A control connection is meant to last: keepalive now, not after KEEPALIVE_AFTER_MS.
    this.client.setKeepAlive(true);
    const clientIp = this.clientIp;
    const live = udpPerIp.get(clientIp) ?? 0;
    if (live >= maxUdpPerIp) {
      return await this.refuse(replyWith(socks5.Reply.GeneralFailure), "max-udp-per-ip");
    }
    udpPerIp.set(clientIp, live + 1);
    const stillActive = () => {
      this.deadline = deadlines.now + idleTimeoutMs;
    };
    try {
      try {
        this.#association = await this.openInConnectPhase(() =>
          UdpAssociation.open({
            bindHost: unmapIPv4(this.client.localAddr.hostname),
            clientIp,
            // DST.ADDR is often 0.0.0.0 or a placeholder name; the sender must be
            // the control connection's host anyway, so only the port is taken.
            clientPort: declared.port,
            onActivity: stillActive,
          })
        );
      } catch (error) {
        return await this.refuse(
          replyWith(socks5.Reply.GeneralFailure),
          "udp-bind-failed",
          messageWithCause(error),
        );
      }
      this.adoptTarget(this.#association);
      // Shutdown came while the socket was bound, which no signal stops: a
      // failure reply, as for a dial it cut short, not an association granted
      // after the drain began (held until the client went or --idle-timeout).
      if (this.cutShort) {
        return await this.refuse(replyWith(socks5.Reply.GeneralFailure), "shutdown");
      }
      const bound = this.#association.address;
      // Relaying from the reply on: datagrams may follow it at once, and a
      // handshake deadline still running would cut an association in use.
      this.enter("relay", idleTimeoutMs);
      await writeAll(
        this.client,
        socks5.encodeReply({
          reply: socks5.Reply.Succeeded,
          address: addressOf(
            (bound.host.includes(":") ? udpAdvertise.ipv6 : udpAdvertise.ipv4) ?? bound.host,
            bound.port,
          ),
        }),
      );
      this.takeEarlyBytes(); // nothing is meant to follow the request on a control connection
      // The association lives exactly as long as its control connection (RFC 1928 §7).
      // Bytes on it mean nothing, but a client may send them to keep an
      // association alive between datagrams, so they count as activity.
      const scratch = new Uint8Array(64);
      try {
        while ((await this.client.read(scratch)) !== null) stillActive();
      } catch (error) {
        if (!this.controller.signal.aborted) throw error;
      }
      if (this.controller.signal.aborted) throw this.controller.signal.reason;
      return null; // the association was the relay, and it is over
    } finally {
      if (this.#association) {
        this.#association.close();
        this.countBytes(this.#association.counters.up, this.#association.counters.down);
      }
      const left = (udpPerIp.get(clientIp) ?? 1) - 1;
      if (left <= 0) udpPerIp.delete(clientIp);
      else udpPerIp.set(clientIp, left);
    }
  }

  /**
   * Decodes the request, and notes its command for the log line, also when
   * the decoder refuses it (a name that is not UTF-8, an unknown SOCKS4
   * command) or the client never finishes it: then from the bytes it had,
   * with SOCKS4a told by its address, and the user-id and target as far as
   * they had come.
   */
  async #decodeRequest<T extends { readonly command: number }>(
    decode: (bytes: Uint8Array) => Decoded<T>,
    replyWith: (code: number) => Uint8Array,
    commands: CommandNames,
  ): Promise<T> {
    try {
      const request = await this.#decode(decode, replyWith);
      this.#command = commandName(request.command, commands);
      return request;
    } catch (error) {
      const bytes = this.#pending.subarray(0, this.#pendingLength);
      if (bytes.length >= 2) {
        this.#command = commandName(bytes[1]!, commands);
        const isSocks4 = commands === SOCKS4_COMMANDS;
        if (isSocks4 && socks4.asksForName(bytes)) this.protocol = "socks4a";
        // Refused: as far as the decoder read. Cut short (closed, reset, timed
        // out): a SOCKS4 request's user-id and target as far as they came; a
        // SOCKS5 request's command alone.
        let readSoFar: ReadSoFar = {};
        if (error instanceof ProtocolError) readSoFar = error.readSoFar;
        else if (isSocks4) readSoFar = socks4.requestReadSoFar(bytes);
        const { userId, target } = readSoFar;
        if (userId !== undefined && userId.length > 0) this.#showUser(userId);
        if (target !== undefined) this.requested = target;
      }
      throw error;
    }
  }

  /**
   * Sets the log line's user from a user name or user-id, and returns its
   * text, or `null` when it is not UTF-8. Then the line shows its bytes as a
   * host name's are shown (see `printableBytes`), and says `userNotUtf8`, so
   * that such a name reads neither as U+FFFD (which made different names log
   * the same) nor as the name spelled with those escapes.
   */
  #showUser(bytes: Uint8Array): string | null {
    try {
      const text = exactName.decode(bytes);
      this.user = text;
      return text;
    } catch {
      this.user = printableBytes(bytes);
      this.#userNotUtf8 = true;
      return null;
    }
  }

  protected override logFields(): Record<string, unknown> {
    const fields: Record<string, unknown> = { command: this.#command };
    if (this.#userNotUtf8) fields.userNotUtf8 = true;
    if (this.#association) {
      const { udpIn, udpOut, dropped } = this.#association.counters;
      Object.assign(fields, { udpIn, udpOut, dropped });
      if (dropped > 0) fields.firstDrop = this.#association.firstDrop;
    }
    if (this.#bindListener) fields.bindRefused = this.#bindListener.refused;
    if (this.#bindPeer) fields.peer = this.#bindPeer;
    return fields;
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
          await this.refuse(errorReply(error.reply), this.outcomeOf(error), error.message);
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
      this.#growPending(this.#pending.length + 1);
    }
    let n: number | null;
    try {
      const free = this.#pendingLength === 0
        ? this.#pending // the common case, and a view the less
        : this.#pending.subarray(this.#pendingLength);
      n = await this.client.read(free);
    } catch (error) {
      // Aborted: the abort's reason says why. Else the client's own error, so
      // that a reset is logged `reset`, as it is in the relay.
      throw this.controller.signal.aborted ? this.controller.signal.reason : error;
    }
    if (n === null) throw new ClientGone("client closed during the handshake");
    this.#pendingLength += n;
  }

  /**
   * Keeps bytes the client sent while its BIND waited or its dial went on,
   * after those of the request (see WaitingClient); says whether there is
   * room for more.
   */
  protected keepEarlyBytes(bytes: Uint8Array): boolean {
    const length = this.#pendingLength + bytes.length;
    if (length > this.#pending.length) this.#growPending(length);
    this.#pending.set(bytes, this.#pendingLength);
    this.#pendingLength = length;
    // Up to the limit itself: a reset right after 8 KiB is still seen.
    return length <= MAX_HANDSHAKE_BYTES;
  }

  /** Replaces the handshake buffer with one of at least `length` bytes, twice as large at least. */
  #growPending(length: number): void {
    const grown = new Uint8Array(Math.max(length, this.#pending.length * 2));
    grown.set(this.#pending.subarray(0, this.#pendingLength));
    this.#pending = grown;
  }

  /** Takes the bytes the client sent after its request: they go to the target first. */
  protected takeEarlyBytes(): Uint8Array {
    const early = this.#pendingLength === 0
      ? NO_BYTES
      : this.#pending.subarray(0, this.#pendingLength);
    this.#pending = NO_BYTES; // the handshake buffer is not needed any more
    this.#pendingLength = 0;
    return early;
  }

  /** Why this listener refuses every SOCKS4 request, well-formed or not, if it does. */
  #socks4Refusal(): "socks4-disabled" | "auth-required" | null {
    if (!this.#socks.socks4) return "socks4-disabled";
    // SOCKS4 has no way to carry a password.
    return this.#socks.users.required ? "auth-required" : null;
  }

  protected override outcomeOf(error: unknown): string {
    const reason = this.controller.signal.aborted ? this.controller.signal.reason : error;
    if (reason instanceof ProtocolError) {
      // Refused whatever it asked: the operator's reason, not the request's flaw, is the outcome.
      const socks4Refusal = this.protocol?.startsWith("socks4") ? this.#socks4Refusal() : null;
      if (socks4Refusal) return socks4Refusal;
      if (this.protocol === "socks5" && reason.reply === socks5.Reply.AddressTypeNotSupported) {
        return "address-type-not-supported";
      }
      // SOCKS4's decoder refuses an unknown command itself; for SOCKS5 the session does.
      if (reason.code === "bad-command") return "command-not-supported";
    }
    return super.outcomeOf(error);
  }
}

/** A protocol's request commands by code, as log lines name them. */
type CommandNames = Readonly<Record<number, string>>;

const SOCKS4_COMMANDS: CommandNames = {
  [socks4.Command.Connect]: "connect",
  [socks4.Command.Bind]: "bind",
};

const SOCKS5_COMMANDS: CommandNames = {
  [socks5.Command.Connect]: "connect",
  [socks5.Command.Bind]: "bind",
  [socks5.Command.UdpAssociate]: "udp-associate",
};

/** The name of command `code`, or the code itself (`0x09`) for one the protocol does not have. */
function commandName(code: number, names: CommandNames): string {
  return names[code] ?? hex(code);
}
