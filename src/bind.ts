/**
 * The listening half of a BIND request (RFC 1928 §4, SOCKS4 BIND): a TCP
 * listener on an ephemeral port of the interface the client came in on, and
 * an accept that lets in only the peer the client named. The session sends
 * the two replies and relays; this file only owns the listener, and always
 * closes it.
 *
 * @module
 */
import { lookup } from "node:dns/promises";
import { closeQuietly } from "./close_quietly.ts";
import { type Address, unmapIPv4 } from "./protocol/address.ts";
import type { RelayEnd } from "./relay.ts";

/**
 * Which peers may connect: the request's DST.ADDR, resolved when it is a
 * name. An unspecified address (0.0.0.0 or ::) means the client does not know
 * the peer's address in advance, so any peer is let in.
 */
export async function expectedPeers(address: Address): Promise<ReadonlySet<string> | null> {
  // In the form accept() compares: an IPv4-mapped IPv6 address as its IPv4
  // address, as a dual-stack socket would see the peer either way.
  if (address.type === "domain") {
    const results = await lookup(address.host, { all: true, verbatim: true });
    return new Set(results.map((r) => unmapIPv4(r.address).toLowerCase()));
  }
  if (address.host === "0.0.0.0" || address.host === "::") return null;
  return new Set([unmapIPv4(address.host).toLowerCase()]);
}

/** A BIND listener. Dispose (or `close()`) it whatever happens. */
export class BindListener implements Disposable {
  readonly #listener: Deno.TcpListener;
  /** Connections closed because they came from another address. */
  refused = 0;
  #closed = false;

  constructor(hostname: string) {
    this.#listener = Deno.listen({ hostname, port: 0, transport: "tcp" });
  }

  /** The address to send in the first reply. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /**
   * Accepts until a connection from one of `peers` (any, when `null`)
   * arrives; connections from other addresses are closed at once. Aborting
   * `signal` closes the listener and rejects with its reason.
   */
  async accept(peers: ReadonlySet<string> | null, signal: AbortSignal): Promise<Deno.TcpConn> {
    signal.throwIfAborted();
    const onAbort = () => this.close();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        let conn: Deno.TcpConn;
        try {
          conn = await this.#listener.accept();
        } catch (error) {
          signal.throwIfAborted();
          throw error;
        }
        const from = unmapIPv4(conn.remoteAddr.hostname).toLowerCase();
        if (peers === null || peers.has(from)) return conn;
        this.refused++;
        conn.close();
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }

  /** Closes the listener (idempotent). An accepted connection is the caller's. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#listener);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Bytes a client may send while its BIND waits, kept for the peer; past this, no more are read. */
const MAX_WAITING_BYTES = 65536;

/**
 * Reads the control connection while a BIND waits for its peer, so that a
 * client that leaves (EOF or reset) ends the wait at once (`onGone`) rather
 * than leaving the listener open until --bind-timeout for a peer nobody
 * would read. Bytes the client sends meanwhile are kept for the peer.
 *
 * A Deno read cannot be cancelled short of closing the socket, so when the
 * peer arrives the read still pending is handed over: {@linkcode handOver}
 * gives the relay a client end whose first read is that one.
 */
export class ControlWatch {
  readonly #conn: Deno.TcpConn;
  readonly #onGone: () => void;
  /** Reads go here; at most this much is handed to the relay's first read. */
  readonly #buffer: Uint8Array;
  readonly #early: Uint8Array[] = [];
  #earlyLength = 0;
  #pending: Promise<number | null> | null = null;
  #watching = true;

  /** `bufferSize` must not exceed the relay's first client → target buffer. */
  constructor(conn: Deno.TcpConn, bufferSize: number, onGone: () => void) {
    this.#conn = conn;
    this.#buffer = new Uint8Array(bufferSize);
    this.#onGone = onGone;
    this.#read();
  }

  #read(): void {
    const pending = this.#conn.read(this.#buffer);
    this.#pending = pending;
    pending.then((n) => {
      if (!this.#watching || this.#pending !== pending) return; // handed over, or stopped
      if (n === null) return this.#gone();
      this.#early.push(this.#buffer.slice(0, n));
      this.#earlyLength += n;
      if (this.#earlyLength < MAX_WAITING_BYTES) this.#read();
      else this.#pending = null; // the rest waits in the socket for the relay
    }, () => {
      if (this.#watching && this.#pending === pending) this.#gone();
    });
  }

  #gone(): void {
    this.#watching = false;
    this.#pending = null;
    this.#onGone();
  }

  /** Stops watching (the BIND failed); a read still pending is left to finish unseen. */
  stop(): void {
    this.#watching = false;
  }

  /** What the client sent while it waited, in order; it goes to the peer first. */
  get early(): Uint8Array[] {
    return this.#early;
  }

  /**
   * Stops watching and returns the client end for the relay: its first read
   * is the one still pending, if any; every later one is the connection's own.
   */
  handOver(): RelayEnd {
    this.#watching = false;
    const conn = this.#conn;
    let pending = this.#pending;
    this.#pending = null;
    const buffer = this.#buffer;
    return {
      read(into: Uint8Array): Promise<number | null> {
        if (pending === null) return conn.read(into);
        const first = pending;
        pending = null;
        return first.then((n) => {
          if (n !== null) into.set(buffer.subarray(0, n));
          return n;
        });
      },
      write: (bytes: Uint8Array) => conn.write(bytes),
      closeWrite: () => conn.closeWrite(),
    };
  }
}
