/**
 * The listening half of a BIND request (RFC 1928 §4, SOCKS4 BIND): a TCP
 * listener on an ephemeral port of the interface the client came in on, and
 * an accept that lets in only the peer the client named. The session sends
 * the two replies and relays; this file only owns the listener, and always
 * closes it.
 *
 * @module
 */
import { resolveName } from "./upstream/dial.ts";
import { isOneConnectionError } from "./accept_error.ts";
import { closeQuietly } from "./close_quietly.ts";
import { type Address, ipKey, ipOfName } from "./protocol/address.ts";
import { zonedHost } from "./link_local.ts";
import { roomAfter } from "./spare_descriptors.ts";

/**
 * Which peers may connect: the request's DST.ADDR, resolved when it is a
 * name. An unspecified address (0.0.0.0 or ::) means the client does not know
 * the peer's address in advance, so any peer is let in, however it is
 * spelled: as a name (a SOCKS4a client leaving names to the proxy sends every
 * address so) or IPv4-mapped (`::ffff:0.0.0.0`).
 */
export async function expectedPeers(
  address: Address,
  client: string,
  signal: AbortSignal = new AbortController().signal,
): Promise<ReadonlySet<string> | null> {
  const ip = address.type === "domain" ? ipOfName(address.host) : address.host;
  // In the form accept() compares: an IPv4-mapped IPv6 address as its IPv4
  // address, as a dual-stack socket would see the peer either way.
  if (ip !== null) return anyIfUnspecified([ipKey(ip)]);
  // As a CONNECT resolves its target: the same caps, and the same blame
  // when ferry's shortage of descriptors made the lookup fail. The resolver
  // reads numbers in forms ipOfName does not ("0", "0x0"), and no peer can
  // come from an unspecified address, so waiting for one would be waiting
  // for nothing until the bind timeout.
  return anyIfUnspecified((await resolveName(address.host, client, signal)).map(ipKey));
}

/** The peers, or `null` (any peer) when one of them is the unspecified address. */
function anyIfUnspecified(peers: readonly string[]): ReadonlySet<string> | null {
  return peers.some((peer) => peer === "0.0.0.0" || peer === "::") ? null : new Set(peers);
}

/** A BIND listener. Dispose (or `close()`) it whatever happens. */
export class BindListener implements Disposable {
  readonly #listener: Deno.TcpListener;
  /** The address to send in the first reply. */
  readonly addr: Deno.NetAddr;
  /** Connections closed because they came from another address. */
  refused = 0;
  #closed = false;

  /**
   * Listens on an ephemeral port of `hostname`, the address the client came
   * in on (on its interface, for a link-local one: see src/link_local.ts).
   */
  constructor(hostname: string) {
    this.#listener = Deno.listen({ hostname: zonedHost(hostname), port: 0, transport: "tcp" });
    this.addr = { ...this.#listener.addr, hostname };
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
          // A connection reset while it waited (by anyone: the peer has not
          // been checked yet) must not cost the client its BIND.
          if (isOneConnectionError(error)) continue;
          // Out of descriptors: a forwarder's pool gives one up.
          if (await roomAfter(error)) continue;
          throw error;
        }
        const from = ipKey(conn.remoteAddr.hostname);
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
