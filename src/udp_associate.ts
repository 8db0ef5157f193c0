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
import { netPermission } from "./upstream/dial.ts";
import { lookupAll } from "./upstream/lookups.ts";
import {
  type Address,
  addressOf,
  formatAddress,
  formatPeer,
  ipOfName,
  isLoopbackIp,
  unmapIPv4,
} from "./protocol/address.ts";
import { zonedHost } from "./link_local.ts";
import { wildcardIsIpv6Only } from "./config.ts";
import { makingRoom } from "./spare_descriptors.ts";
import { ProtocolError } from "./protocol/decoded.ts";
import { decodeUdpDatagram, encodeUdpHeader } from "./protocol/socks5.ts";
import { messageWithCause } from "./upstream/dial.ts";

/** Options for {@linkcode UdpAssociation.open}. */
export interface UdpAssociationOptions {
  /** The IP the client-facing socket listens on: the control connection's local address. */
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
/**
 * How long an association sends to a name's address without looking it up
 * again. A lookup per datagram held every datagram behind the one before's
 * lookup: to a name answered in 50 ms, 100 datagrams a second came back 5 s
 * late, and the resolver got two queries a datagram.
 */
const NAME_KEPT_MS = 60_000;
/**
 * How long a name whose lookup failed is not looked up again: each lookup
 * of a name whose server never answers held every later datagram of the
 * association for the resolver's timeout (3 s each, growing without end).
 */
const NAME_FAILED_KEPT_MS = 5_000;
/** Names kept at most per association; the oldest goes first. */
const MAX_NAMES = 256;
/**
 * Lookups in progress at most for one association; more names wait their
 * turn. Two, so that one name whose server never answers does not hold the
 * others; not more, as they come out of the client's share of lookups
 * (src/upstream/lookups.ts): one association sending to 16 such names held
 * all 8, and its client's CONNECT by name waited 3.8 s behind them.
 */
const MAX_LOOKUPS = 2;

/**
 * Datagrams that may wait behind name lookups or an outbound socket's bind,
 * in all of an association's queues, by count and by payload bytes; more
 * are dropped. A lookup can take the resolver's whole timeout, and a client
 * may keep sending meanwhile: by count alone, 256 datagrams of 64 KiB held
 * 16 MiB an association. By bytes as much as the sockets' queues behind the
 * window (see MAX_QUEUED), for the same reason: a socket buffer's worth.
 */
const MAX_WAITING = 256;
const MAX_WAITING_BYTES = 256 * 1024;

/**
 * Sends in flight at once on one socket (see `OrderedSender`). Thousands
 * issued at once on one node:dgram socket can hang in Deno 2.9.6: with the
 * socket buffer full, some sockets' sends never complete (16 sockets × 3,000
 * sends of 1,212 bytes: 7 sockets got no callback at all, even seconds
 * later), which starved whole associations under a flood. Within a window of
 * 64, every send completed.
 */
const MAX_IN_FLIGHT = 64;

/**
 * Datagrams that may queue behind the window on one socket, by count and by
 * payload bytes; beyond either, a datagram is dropped, as a full socket
 * buffer would drop it. As much as the kernel's default receive buffer
 * (208 KiB, about 95 datagrams of 1,200 bytes) lets arrive in a burst, which
 * Deno's node:dgram gives no way to raise (it ignores recvBufferSize);
 * short, because under a flood every queued datagram is
 * latency: with 1,024, one association flooded at 20,000 datagrams/s got its
 * answers 160-220 ms late (p50) instead of 35-55 ms with 256 or with none,
 * and fewer of them (6,500-7,700 a second against 8,900-10,400).
 */
const MAX_QUEUED = 256;
const MAX_QUEUED_BYTES = 256 * 1024;

/**
 * The local ports of every association's outbound sockets, in this process,
 * by family. A datagram from one of them, arriving at a client-facing socket
 * of its family from a local address, is ferry relaying into itself: another
 * client sending through its own association to this one's relay port. When
 * this association's client is on ferry's host, such a datagram would pass
 * the client address check, be relayed, and (DST.PORT 0) take the client's
 * port. By family: an IPv6 client may hold the port number of an IPv4
 * outbound socket, and was dropped as ferry. (But an IPv6 outbound socket
 * sends IPv4 too, to an IPv4-mapped address: see `#mayBeFerry`.)
 */
const outboundPorts = { udp4: new Set<number>(), udp6: new Set<number>() };

/** A datagram from the client, decoded, on its way out. */
interface Outgoing {
  readonly address: Address;
  readonly data: Uint8Array;
}

/** A send waiting for room in the window. */
interface QueuedSend {
  readonly data: Uint8Array;
  readonly port: number;
  readonly ip: string;
  readonly done: (error: unknown) => void;
}

/**
 * Sends on one node:dgram socket, in order, at most {@linkcode MAX_IN_FLIGHT}
 * at a time; the rest queue (up to {@linkcode MAX_QUEUED}) and go as sends
 * complete.
 *
 * The first send goes alone: Deno completes sends that wait together on a
 * socket it has not yet seen writable in reverse (a burst of 20 datagrams on
 * a new association reached its peer as 19, 18, … 0); once one has
 * completed, sends complete in the order made (200 at once, 3 runs: no
 * inversion). Waiting for each send's callback before the next kept the
 * order too, but paced sends to one per event-loop turn: at 50,000
 * datagrams/s offered ferry relayed 286.
 */
export class OrderedSender {
  readonly socket: dgram.Socket;
  readonly #queue: QueuedSend[] = [];
  #queuedBytes = 0;
  /** Whether a send has completed: until then the window is one. */
  #warm = false;
  /** Sends made whose callback has not come yet. */
  #inFlight = 0;

  constructor(socket: dgram.Socket) {
    this.socket = socket;
  }

  /** Sends `data` after those before it; `done` gets the send's error, if any. */
  send(data: Uint8Array, port: number, ip: string, done: (error: unknown) => void): void {
    if (this.#queue.length === 0 && this.#inFlight < this.#window) {
      return this.#sendNow(data, port, ip, done);
    }
    if (
      this.#queue.length >= MAX_QUEUED || this.#queuedBytes + data.length > MAX_QUEUED_BYTES
    ) {
      return done(new Error("too many datagrams queued"));
    }
    // A received datagram is a view of Deno's 64 KiB receive buffer, which a
    // queued view would keep alive: a copy of the datagram waits instead.
    const own = data.byteLength === data.buffer.byteLength ? data : data.slice();
    this.#queue.push({ data: own, port, ip, done });
    this.#queuedBytes += data.length;
  }

  /** Forgets the datagrams not sent yet; returns how many. */
  clear(): number {
    const count = this.#queue.length;
    this.#queue.length = 0;
    this.#queuedBytes = 0;
    return count;
  }

  get #window(): number {
    return this.#warm ? MAX_IN_FLIGHT : 1;
  }

  #sendNow(data: Uint8Array, port: number, ip: string, done: (error: unknown) => void): void {
    this.#inFlight++;
    try {
      this.socket.send(data, port, ip, (error) => {
        this.#inFlight--;
        this.#warm = true;
        done(error);
        this.#pump();
      });
    } catch (error) {
      // node:dgram throws at once on what it rejects outright (a bad port
      // or address). Thrown here it would escape into an event handler or a
      // promise callback, and an unhandled rejection ends the process.
      this.#inFlight--;
      done(error);
    }
  }

  /** Sends queued datagrams while the window has room. */
  #pump(): void {
    while (this.#queue.length > 0 && this.#inFlight < this.#window) {
      const { data, port, ip, done } = this.#queue.shift()!;
      this.#queuedBytes -= data.length;
      this.#sendNow(data, port, ip, done);
    }
  }
}

/** One association's sockets and counters. */
export class UdpAssociation {
  readonly counters: UdpCounters = { udpIn: 0, udpOut: 0, dropped: 0, up: 0, down: 0 };
  /**
   * Why the first datagram dropped was dropped, for the log line: a count
   * alone left an operator guessing, such as at a narrowed --allow-net that
   * lets datagrams out but not their answers back to the client.
   */
  #firstDrop: string | null = null;
  readonly #options: UdpAssociationOptions;
  readonly #client: OrderedSender;
  #clientPort: number;
  /** Where answers go: the client's IP, with the zone (`%2`) of a link-local one. */
  readonly #clientSendIp: string;
  /** Outbound sockets by family, once bound (see `#outboundReady`). */
  readonly #outbound = new Map<"udp4" | "udp6", OrderedSender>();
  readonly #binding = new Map<"udp4" | "udp6", Promise<OrderedSender>>();
  /**
   * Peers the client has sent to (see `peerKey`), each with its address as
   * the client named it, which answers name as their source: an IPv4-mapped
   * one is sent to over IPv4 (see `#ipFor`), and the client expects its
   * answers from the address it sent to.
   */
  readonly #peers = new Map<string, string>();
  /**
   * Datagrams waiting for a lookup or a bind, and any sent after them to the
   * same host, by that host as the client named it (see `waitingKey`): each
   * queue goes out in the order the client sent it. One queue for all held
   * every datagram behind one name whose server never answered, for the
   * resolver's whole timeout and again every NAME_FAILED_KEPT_MS: datagrams
   * to another host came back 5 s late behind such a name's lookup.
   */
  readonly #waiting = new Map<string, Outgoing[]>();
  /** Datagrams in all of `#waiting`'s queues, and their payload bytes. */
  #waitingCount = 0;
  #waitingBytes = 0;
  /** Lookups in progress (see MAX_LOOKUPS), and those waiting for one to end. */
  #lookups = 0;
  readonly #lookupTurns: (() => void)[] = [];
  /** Names this association's datagrams went to, and their addresses (see NAME_KEPT_MS). */
  readonly #names = new Map<string, { ip: string | null; at: number }>();
  #closed = false;
  /**
   * Aborted by close(): a lookup still waiting for a slot leaves the queue
   * rather than run for an association that has gone, holding its client's
   * lookup slots (and everyone's) for the resolver's whole timeout.
   */
  #lookupsAbort: AbortController | null = null;

  private constructor(options: UdpAssociationOptions, clientSocket: dgram.Socket, zone: string) {
    this.#options = options;
    // A link-local client is on the relay socket's link: answers go out of it.
    this.#clientSendIp = options.clientIp + zone;
    this.#client = new OrderedSender(clientSocket);
    this.#clientPort = options.clientPort;
    clientSocket.on("message", (message, from) => this.#fromClient(message, from));
    clientSocket.on("error", (error) => this.#drop("the client-facing socket failed", error));
  }

  /** Why the first dropped datagram was dropped (see `#firstDrop`); `null` while none was. */
  get firstDrop(): string | null {
    return this.#firstDrop;
  }

  /** Counts `count` datagrams dropped; the first drop's `reason` (and `error`) is kept. */
  #drop(reason: string, error?: unknown, count = 1): void {
    if (count === 0) return;
    this.counters.dropped += count;
    if (this.#firstDrop !== null) return;
    this.#firstDrop = error === undefined ? reason : `${reason}: ${messageWithCause(error)}`;
  }

  /**
   * Binds the client-facing socket on an ephemeral port. Rejects if it
   * cannot be bound (out of descriptors: once no pool has one to give up).
   */
  static async open(options: UdpAssociationOptions): Promise<UdpAssociation> {
    // On the interface the client came in on, for a link-local address too:
    // bound without its zone, a socket would not know which link to answer on.
    const bindTo = zonedHost(options.bindHost);
    const socket = await makingRoom(() => boundSocket(familyOf(options.bindHost), bindTo));
    return new UdpAssociation(options, socket, bindTo.slice(options.bindHost.length));
  }

  /** The client-facing socket's address, as the reply names it (`bindHost`, without a zone). */
  get address(): { host: string; port: number } {
    return { host: this.#options.bindHost, port: this.#client.socket.address().port };
  }

  /** Closes every socket. Idempotent; datagrams still waiting are dropped and counted. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#lookupsAbort?.abort(new Error("the association has ended"));
    for (const turn of this.#lookupTurns.splice(0)) turn(); // to find the association closed
    const unsent = "still to be sent when the association ended";
    this.#drop(unsent, undefined, this.#waitingCount + this.#client.clear());
    this.#waiting.clear();
    this.#waitingCount = this.#waitingBytes = 0;
    closeSocket(this.#client.socket);
    for (const [type, sender] of this.#outbound) {
      this.#drop(unsent, undefined, sender.clear());
      outboundPorts[type].delete(sender.socket.address().port);
      closeSocket(sender.socket);
    }
    this.#outbound.clear();
  }

  #fromClient(message: Uint8Array, from: dgram.RemoteInfo): void {
    if (this.#closed) return;
    // Only the control connection's host may use the relay, and only from the
    // port it declared: anyone else could otherwise send through it.
    if (from.address !== this.#options.clientIp) {
      return this.#drop(`from ${from.address}, not the client's address`);
    }
    if (this.#clientPort !== 0 && from.port !== this.#clientPort) {
      return this.#drop(`from port ${from.port}, not the client's ${this.#clientPort}`);
    }
    if (this.#mayBeFerry(from)) {
      return this.#drop("from ferry itself"); // relaying into itself (see outboundPorts)
    }
    let datagram;
    try {
      datagram = decodeUdpDatagram(message);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      return this.#drop("not a SOCKS5 UDP datagram", error);
    }
    // Reassembly is optional in RFC 1928 §7 and no client we know fragments.
    if (datagram.fragment !== 0) return this.#drop("a fragment, which ferry does not reassemble");
    const { address, data } = datagram;
    // Port 0 cannot be sent to (node:dgram throws on it); a client asking for it is wrong.
    if (address.port === 0) return this.#drop("for port 0");
    // Learnt from the first datagram that is one: not from stray bytes.
    if (this.#clientPort === 0) this.#clientPort = from.port;
    const host = waitingKey(address);
    const ip = this.#ipFor(address, host);
    if (ip === false) return this.#drop(`${address.host} failed to resolve just now`);
    const queue = this.#waiting.get(host);
    if (!queue && ip !== null) {
      const sender = this.#outbound.get(familyOf(ip));
      if (sender) return this.#sendOut(sender, ip, address, data);
    }
    if (this.#waitingCount >= MAX_WAITING) {
      return this.#drop(`${MAX_WAITING} already waiting for a lookup or a bind`);
    }
    if (this.#waitingBytes + data.length > MAX_WAITING_BYTES) {
      return this.#drop(`${MAX_WAITING_BYTES / 1024} KiB already waiting for a lookup or a bind`);
    }
    this.#waitingCount++;
    this.#waitingBytes += data.length;
    const waiting = { address, data: data.slice() }; // not a view of the receive buffer
    if (queue) return void queue.push(waiting);
    const started = [waiting];
    this.#waiting.set(host, started);
    this.#sendWaiting(host, started);
  }

  /**
   * Sends one host's waiting datagrams one at a time, each after its lookup
   * and its outbound socket's bind, so none overtakes another: a burst at the
   * start of an association, or behind a name, reaches the peer in the order
   * sent. Each host's queue goes on its own (see `#waiting`).
   */
  async #sendWaiting(host: string, queue: Outgoing[]): Promise<void> {
    while (queue.length > 0 && !this.#closed) {
      const { address, data } = queue[0]!;
      try {
        const known = this.#ipFor(address, host);
        if (known === false) throw new Error(`${address.host} failed to resolve just now`);
        const ip = known ?? await this.#resolve(address.host, host);
        const sender = await this.#outboundReady(familyOf(ip));
        if (this.#closed) return; // close() counted what was waiting
        this.#sendOut(sender, ip, address, data);
      } catch (error) {
        if (this.#closed) return;
        // An unresolvable name, or no socket for its family.
        this.#drop(`for ${formatAddress(address)}`, error);
      }
      queue.shift();
      this.#waitingCount--;
      this.#waitingBytes -= data.length;
    }
    if (!this.#closed) this.#waiting.delete(host);
  }

  /**
   * The IP a datagram to `address` (waiting as `host`, see `waitingKey`)
   * goes to, as far as known (see `#knownIp`). An IPv4-mapped one
   * (::ffff:127.0.0.1) goes over IPv4, as a CONNECT does (see `connectToIp`
   * in src/upstream/dial.ts): from an IPv6 socket it was dropped where those
   * take IPv6 only.
   */
  #ipFor(address: Address, host: string): string | false | null {
    return address.type === "domain" ? this.#knownIp(host) : unmapIPv4(address.host);
  }

  /**
   * What this association knows of `name` (in lower case, as DNS compares
   * names): the address it spells or was resolved to (while fresh), `false`
   * while its lookup's failure is fresh, or `null`: look it up.
   */
  #knownIp(name: string): string | false | null {
    const known = this.#names.get(name);
    if (known) {
      const age = performance.now() - known.at;
      if (known.ip === null ? age < NAME_FAILED_KEPT_MS : age < NAME_KEPT_MS) {
        return known.ip ?? false;
      }
    }
    const spelt = ipOfName(name);
    return spelt === null ? null : unmapIPv4(spelt);
  }

  /** Looks `name` up, and keeps what it found as `key` (the name in lower case). */
  async #resolve(name: string, key: string): Promise<string> {
    let chosen: string | undefined;
    if (this.#lookups < MAX_LOOKUPS) this.#lookups++;
    else await new Promise<void>((resolve) => this.#lookupTurns.push(resolve)); // handed on
    try {
      if (this.#closed) throw new Error("the association has ended");
      this.#lookupsAbort ??= new AbortController();
      const results = await lookupAll(name, this.#options.clientIp, this.#lookupsAbort.signal);
      // A datagram cannot fall back to the next address the way a connect can,
      // so IPv4 is preferred: it is what a name's UDP service most often listens on.
      const result = results.find((r) => r.family === 4) ?? results[0];
      // An IPv4-mapped answer (::ffff:127.0.0.1) goes over IPv4 (see #ipFor).
      chosen = result && unmapIPv4(result.address);
    } finally {
      const next = this.#lookupTurns.shift();
      if (next) next(); // its turn: the count stays
      else this.#lookups--;
      this.#remember(key, chosen ?? null);
    }
    if (chosen === undefined) throw new Error(`no addresses for ${name}`);
    return chosen;
  }

  /** Keeps a lookup's result, or its failure (`null`); oldest out first past MAX_NAMES. */
  #remember(key: string, ip: string | null): void {
    if (!this.#names.delete(key) && this.#names.size >= MAX_NAMES) {
      this.#names.delete(this.#names.keys().next().value!); // a Map iterates in insertion order
    }
    this.#names.set(key, { ip, at: performance.now() });
  }

  /**
   * Whether a datagram from `from` may come from one of ferry's own outbound
   * sockets of this socket's family: they are bound to the wildcard address,
   * and a datagram they send to this socket leaves from the address the
   * kernel picks for it: this socket's own, or, for a loopback alias
   * (127.0.0.2), 127.0.0.1.
   */
  #mayBeFerry(from: dgram.RemoteInfo): boolean {
    const family = familyOf(this.#options.bindHost);
    const ours = outboundPorts[family].has(from.port) ||
      // An IPv6 outbound socket sends to an IPv4-mapped address (::ffff:127.0.0.1)
      // as IPv4, from its own port number; on a dual-stack host that port is
      // taken for IPv4 too, so no IPv4 client can hold it.
      (family === "udp4" && outboundPorts.udp6.has(from.port) && !wildcardIsIpv6Only());
    if (!ours) return false;
    return from.address === this.#options.bindHost || isLoopbackIp(from.address);
  }

  /** Sends `data` to `ip`, where `address` (the client's) leads. */
  #sendOut(sender: OrderedSender, ip: string, address: Address, data: Uint8Array): void {
    const { port } = address;
    const key = peerKey(ip, port);
    // A Map iterates in insertion order: re-adding moves the key to the end.
    if (!this.#peers.delete(key) && this.#peers.size >= MAX_PEERS) {
      this.#peers.delete(this.#peers.keys().next().value!);
    }
    this.#peers.set(key, address.type === "domain" ? ip : address.host);
    const length = data.length; // not `data`: a view of the 64 KiB receive buffer
    this.#send(sender, data, port, ip, () => {
      this.counters.udpIn++;
      this.counters.up += length;
      this.#options.onActivity();
    });
  }

  /**
   * The outbound socket for `type`, bound on first use: to the wildcard
   * address, so the kernel still picks the source address for each
   * destination, which the client-facing socket (bound to one interface)
   * could not. Bound before the first send, which needs its port (see
   * `outboundPorts`).
   */
  #outboundReady(type: "udp4" | "udp6"): Promise<OrderedSender> {
    const existing = this.#outbound.get(type);
    if (existing) return Promise.resolve(existing);
    let binding = this.#binding.get(type);
    if (!binding) {
      binding = this.#bindOutbound(type).finally(() => this.#binding.delete(type));
      this.#binding.set(type, binding);
    }
    return binding;
  }

  async #bindOutbound(type: "udp4" | "udp6"): Promise<OrderedSender> {
    const socket = await makingRoom(() => boundSocket(type, type === "udp4" ? "0.0.0.0" : "::"));
    if (this.#closed) {
      closeSocket(socket);
      throw new Error("association closed");
    }
    socket.on("message", (message, from) => this.#fromPeer(message, from));
    socket.on("error", (error) => this.#drop(`the outbound ${type} socket failed`, error));
    outboundPorts[type].add(socket.address().port);
    const sender = new OrderedSender(socket);
    this.#outbound.set(type, sender);
    return sender;
  }

  #fromPeer(message: Uint8Array, from: dgram.RemoteInfo): void {
    if (this.#closed) return;
    const named = this.#peers.get(peerKey(from.address, from.port));
    if (named === undefined || this.#clientPort === 0) {
      const peer = formatPeer({ hostname: from.address, port: from.port });
      return this.#drop(`from ${peer}, which the client has not sent to`);
    }
    const header = encodeUdpHeader(addressOf(named, from.port));
    const out = new Uint8Array(header.length + message.length);
    out.set(header);
    out.set(message, header.length);
    const length = message.length; // not `message`: a view of the 64 KiB receive buffer
    this.#send(this.#client, out, this.#clientPort, this.#clientSendIp, () => {
      this.counters.udpOut++;
      this.counters.down += length;
      this.#options.onActivity();
    });
  }

  /**
   * Sends `data`; calls `onSent` once the kernel took it, or counts it as
   * dropped if the send fails. A datagram is counted as relayed only in the
   * send's callback: many sends fail only there (EACCES for a broadcast
   * address, EMSGSIZE for an answer too big to wrap), and the log must not
   * count one datagram both relayed and dropped.
   */
  #send(sender: OrderedSender, data: Uint8Array, port: number, ip: string, onSent: () => void) {
    sender.send(data, port, ip, (error) => {
      if (!error) return onSent();
      const to = formatAddress({ host: ip, port });
      // Asked of Deno only for the first drop: the one that is told.
      this.#drop(`sending to ${to}`, this.#firstDrop === null ? refusedByDeno(to) ?? error : error);
    });
  }
}

/**
 * A refusal by `--allow-net` to send to `to` (`ip:port`), or `null`. Deno's
 * node:dgram reports one only as "send UNKNOWN": an answer to a client whose
 * address a narrowed list leaves out (Deno checks the client's UDP port too)
 * would be dropped with no word of why.
 */
function refusedByDeno(to: string): Deno.errors.NotCapable | null {
  const state = netPermission(to);
  // null: a host Deno's permissions cannot spell (a zoned link-local one): no more to say.
  if (state === null || state === "granted") return null;
  return new Deno.errors.NotCapable("no --allow-net permission");
}

/**
 * The queue a datagram waits in (see `#waiting`): its host, a name in lower
 * case, as DNS compares names. (A peer that the client names in two ways,
 * by name and by address, or by two names, has two queues: a datagram by
 * address may overtake one waiting for the name's lookup.)
 */
function waitingKey(address: Address): string {
  return address.type === "domain" ? address.host.toLowerCase() : address.host;
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

/** A UDP socket bound to an ephemeral port of `host`; rejects if it cannot be. */
async function boundSocket(type: "udp4" | "udp6", host: string): Promise<dgram.Socket> {
  // Deno checks `--allow-net` for a node:dgram bind only after bind() has
  // returned, and throws its refusal from there, not as an "error" event:
  // uncaught, one client's association would end the whole process. So ask
  // first (an operator may have narrowed --allow-net to a few hosts).
  const permission = `${host.includes(":") ? `[${host}]` : host}:0`;
  if (Deno.permissions.querySync({ name: "net", host: permission }).state !== "granted") {
    throw new Deno.errors.NotCapable(`no --allow-net permission to bind UDP on ${permission}`);
  }
  const socket = dgram.createSocket(type);
  socket.bind(0, host);
  try {
    await once(socket, "listening"); // rejects on an "error" event first
  } catch (error) {
    closeSocket(socket);
    throw error;
  }
  return socket;
}
