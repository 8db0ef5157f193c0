/**
 * One UDP ASSOCIATE relay (RFC 1928 §7). A client-facing socket, bound on the
 * interface the control connection arrived on, takes datagrams from the
 * client only; each is unwrapped and sent from an outbound socket (one per
 * address family, made on first use) to its destination. Answers from peers
 * the client has sent to come back wrapped in a header naming their real
 * source. Everything else is dropped and counted, never thrown: a bad
 * datagram must not end the association.
 *
 * The association knows nothing of the TCP control connection; the session
 * closes it when that connection ends or the idle deadline passes.
 *
 * @module
 */
import dgram from "node:dgram";
import { once } from "node:events";
import { lookup } from "node:dns/promises";
import { type Address, addressOf } from "./protocol/address.ts";
import { ProtocolError } from "./protocol/decoded.ts";
import { decodeUdpDatagram, encodeUdpHeader } from "./protocol/socks5.ts";

/** Options for {@linkcode UdpAssociation.open}. */
export interface UdpAssociationOptions {
  /** The IP the client-facing socket binds to: the control connection's local address. */
  readonly bindHost: string;
  /** Datagrams are taken from this IP only: the control connection's peer. */
  readonly clientIp: string;
  /** The client's declared source port; 0 means "learn it from the first datagram". */
  readonly clientPort: number;
  /** Called for every datagram relayed either way: the idle clock's heartbeat. */
  readonly onActivity: () => void;
}

/** What an association carried, for the session's log line. */
export interface UdpCounters {
  /** Datagrams from the client relayed to a peer. */
  udpIn: number;
  /** Datagrams from peers relayed to the client. */
  udpOut: number;
  /** Datagrams dropped: wrong sender, bad header, fragment, unresolvable name, send error. */
  dropped: number;
  /** Payload bytes client → peers. */
  up: number;
  /** Payload bytes peers → client. */
  down: number;
}

/**
 * A peer answers only if the client sent to it; the set is bounded so a
 * client spraying addresses cannot grow it without end. The peer sent to
 * least recently is forgotten first, so that one the client is talking to
 * right now (a DNS server among a DHT client's many peers) keeps answering.
 */
const MAX_PEERS = 1024;

/** One association's sockets and counters. */
export class UdpAssociation {
  readonly counters: UdpCounters = { udpIn: 0, udpOut: 0, dropped: 0, up: 0, down: 0 };
  readonly #options: UdpAssociationOptions;
  readonly #clientSocket: dgram.Socket;
  #clientPort: number;
  readonly #outbound = new Map<"udp4" | "udp6", dgram.Socket>();
  readonly #peers = new Set<string>();
  #closed = false;

  private constructor(options: UdpAssociationOptions, clientSocket: dgram.Socket) {
    this.#options = options;
    this.#clientSocket = clientSocket;
    this.#clientPort = options.clientPort;
    clientSocket.on("message", (message, from) => this.#fromClient(message, from));
    clientSocket.on("error", () => this.counters.dropped++);
  }

  /** Binds the client-facing socket on an ephemeral port. Rejects if it cannot be bound. */
  static async open(options: UdpAssociationOptions): Promise<UdpAssociation> {
    const socket = dgram.createSocket(familyOf(options.bindHost));
    socket.bind(0, options.bindHost);
    try {
      await once(socket, "listening"); // rejects on an "error" event first
    } catch (error) {
      closeSocket(socket);
      throw error;
    }
    return new UdpAssociation(options, socket);
  }

  /** The client-facing socket's address. */
  get address(): { host: string; port: number } {
    const { address, port } = this.#clientSocket.address();
    return { host: address, port };
  }

  /** Closes every socket. Idempotent; datagrams in flight are dropped. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeSocket(this.#clientSocket);
    for (const socket of this.#outbound.values()) closeSocket(socket);
    this.#outbound.clear();
  }

  #fromClient(message: Uint8Array, from: dgram.RemoteInfo): void {
    if (this.#closed) return;
    // Only the control connection's host may use the relay, and only from the
    // port it declared: anyone else could otherwise send through it.
    if (from.address !== this.#options.clientIp) return void this.counters.dropped++;
    if (this.#clientPort === 0) this.#clientPort = from.port;
    else if (from.port !== this.#clientPort) return void this.counters.dropped++;
    let datagram;
    try {
      datagram = decodeUdpDatagram(message);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      return void this.counters.dropped++;
    }
    // Reassembly is optional in RFC 1928 §7 and no client we know fragments.
    if (datagram.fragment !== 0) return void this.counters.dropped++;
    const { address, data } = datagram;
    // Port 0 cannot be sent to (node:dgram throws on it); a client asking for it is wrong.
    if (address.port === 0) return void this.counters.dropped++;
    if (address.type !== "domain") return this.#sendOut(address.host, address.port, data);
    this.#resolve(address).then(
      (ip) => this.#sendOut(ip, address.port, data),
      () => this.counters.dropped++,
    );
  }

  async #resolve(address: Address): Promise<string> {
    const results = await lookup(address.host, { all: true, verbatim: true });
    // A datagram cannot fall back to the next address the way a connect can,
    // so IPv4 is preferred: it is what a name's UDP service most often listens on.
    const chosen = results.find((r) => r.family === 4) ?? results[0];
    if (!chosen) throw new Error(`no addresses for ${address.host}`);
    return chosen.address;
  }

  #sendOut(ip: string, port: number, data: Uint8Array): void {
    if (this.#closed) return;
    let socket: dgram.Socket;
    try {
      socket = this.#outboundFor(familyOf(ip));
    } catch {
      return void this.counters.dropped++;
    }
    const key = peerKey(ip, port);
    // A Set iterates in insertion order: re-adding moves the key to the end.
    if (!this.#peers.delete(key) && this.#peers.size >= MAX_PEERS) {
      this.#peers.delete(this.#peers.values().next().value!);
    }
    this.#peers.add(key);
    this.#send(socket, data, port, ip, () => {
      this.counters.udpIn++;
      this.counters.up += data.length;
      this.#options.onActivity();
    });
  }

  #outboundFor(type: "udp4" | "udp6"): dgram.Socket {
    const existing = this.#outbound.get(type);
    if (existing) return existing;
    // Unbound: the kernel picks the source address for each destination,
    // which the client-facing socket (bound to one interface) could not.
    const socket = dgram.createSocket(type);
    socket.on("message", (message, from) => this.#fromPeer(message, from));
    socket.on("error", () => this.counters.dropped++);
    this.#outbound.set(type, socket);
    return socket;
  }

  #fromPeer(message: Uint8Array, from: dgram.RemoteInfo): void {
    if (this.#closed) return;
    if (!this.#peers.has(peerKey(from.address, from.port)) || this.#clientPort === 0) {
      return void this.counters.dropped++;
    }
    const header = encodeUdpHeader(addressOf(from.address, from.port));
    const out = new Uint8Array(header.length + message.length);
    out.set(header);
    out.set(message, header.length);
    this.#send(this.#clientSocket, out, this.#clientPort, this.#options.clientIp, () => {
      this.counters.udpOut++;
      this.counters.down += message.length;
      this.#options.onActivity();
    });
  }

  /**
   * Sends `data`; calls `onSent` once the kernel took it, or counts it as
   * dropped if the send fails, now or later. A datagram is counted as relayed
   * only in the send's callback: many sends fail only there (EACCES for a
   * broadcast address, EMSGSIZE for an answer too big to wrap), and the log
   * must not count one datagram both relayed and dropped. node:dgram throws at
   * once on what it rejects outright (a bad port or address): here that would
   * escape into an event handler or a promise callback, and an unhandled
   * rejection ends the process with every session in it.
   */
  #send(socket: dgram.Socket, data: Uint8Array, port: number, ip: string, onSent: () => void) {
    try {
      socket.send(data, port, ip, (error) => {
        if (error) this.counters.dropped++;
        else onSent();
      });
    } catch {
      this.counters.dropped++;
    }
  }
}

function familyOf(ip: string): "udp4" | "udp6" {
  return ip.includes(":") ? "udp6" : "udp4";
}

function peerKey(ip: string, port: number): string {
  return `${ip.toLowerCase()}|${port}`;
}

function closeSocket(socket: dgram.Socket): void {
  try {
    socket.close();
  } catch {
    // never bound, or already closed
  }
}
