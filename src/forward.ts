/**
 * The port forwarder: accept → take a pooled upstream connection (or dial one)
 * → relay. Sessions go round-robin across the upstreams that are up; one that
 * fails is skipped with back-off and retried; when none is up the client is
 * closed at once, never left hanging.
 *
 * @module
 */
import type { ForwardConfig } from "./config.ts";
import { addressOf, formatAddress, isLoopbackIp, unmapIPv4 } from "./protocol/address.ts";
import {
  errorDetail,
  NO_EARLY_BYTES,
  ProxySession,
  type Relaying,
  type SessionContext,
} from "./proxy_session.ts";
import { type Server, startServer } from "./server.ts";
import { DialError, messageWithCause } from "./upstream/dial.ts";
import { Upstream } from "./upstream/pool.ts";

/** The forwarder's upstreams, handed out round-robin. */
export class UpstreamSet {
  readonly upstreams: readonly Upstream[];
  #next = 0;

  constructor(upstreams: readonly Upstream[]) {
    this.upstreams = upstreams;
  }

  /**
   * The upstreams to try for one client, in order, each group round-robin:
   * those that are up with a pooled connection ready, those up without one,
   * then those whose pooled connections end young (see `Standing` in
   * src/upstream/pool.ts). A pool with nothing ready has used it all or
   * cannot connect yet: an upstream that drops SYNs has an empty pool for a
   * whole connect timeout before its first dial fails, and the clients sent
   * there meanwhile waited all of it. The next turn goes to the one after
   * this client's first choice, so an upstream that is down does not hand
   * its turns to its neighbour on top of the neighbour's own. Upstreams in
   * `tried` are left out.
   */
  candidates(tried: ReadonlySet<Upstream> = NONE_TRIED): Upstream[] {
    const count = this.upstreams.length;
    // By rank: ready, cold, fallback.
    const groups: [Upstream[], Upstream[], Upstream[]] = [[], [], []];
    let first = -1;
    let firstRank = 3;
    for (let i = 0; i < count; i++) {
      const index = (this.#next + i) % count;
      const upstream = this.upstreams[index]!;
      if (tried.has(upstream)) continue;
      const standing = upstream.standing;
      if (standing === "skip") continue;
      const rank = standing === "fallback" ? 2 : upstream.idle > 0 ? 0 : 1;
      groups[rank].push(upstream);
      if (rank < firstRank) {
        firstRank = rank;
        first = index;
      }
    }
    if (first >= 0) this.#next = (first + 1) % count;
    return groups.flat();
  }

  /**
   * The upstream a client that has tried `tried` tries next, or `null`: the
   * first of {@linkcode candidates}, taking its turn then. Taken from one
   * list made for the client, the turns that failed went to the upstream
   * listed after the failing one, always the same: with `--pool 0` and one
   * of three upstreams resetting as it accepted, its neighbour served 1.7
   * times the other's clients.
   */
  next(tried: ReadonlySet<Upstream>): Upstream | null {
    return this.candidates(tried)[0] ?? null;
  }
}

const NONE_TRIED: ReadonlySet<Upstream> = new Set();

/**
 * How much a client may send while its upstream is dialled before ferry
 * stops reading it (the rest waits in the kernel): a bound on what a slow
 * upstream makes a session hold.
 */
const MAX_EARLY_BYTES = 8192;

/** One forwarded client connection. */
export class ForwardSession extends ProxySession {
  readonly #upstreams: UpstreamSet;
  #pooled = false;
  /** What the client sent while a slow dial went on (see CLIENT_WATCH_AFTER_MS); to the upstream first. */
  #early: Uint8Array = NO_EARLY_BYTES;

  constructor(client: Deno.TcpConn, context: SessionContext, upstreams: UpstreamSet) {
    super(client, context, "connect");
    this.#upstreams = upstreams;
    this.protocol = "forward";
  }

  protected async negotiate(): Promise<Relaying | null> {
    const failures: { upstream: string; error: DialError }[] = [];
    const tried = new Set<Upstream>();
    for (let upstream; (upstream = this.#upstreams.next(tried)) !== null;) {
      tried.add(upstream);
      this.requested = upstream.name;
      const pooled = upstream.take();
      if (pooled) {
        this.#pooled = true;
        this.adoptTarget(pooled);
        // A slow dial to an upstream before may have had the client read meanwhile.
        return this.relayingTo(pooled);
      }
      let target: Deno.TcpConn;
      try {
        const { hostname, port } = upstream.address;
        target = await upstream.dialForClient((answers) =>
          this.dialTarget(addressOf(hostname, port), answers)
        );
      } catch (error) {
        if (!(error instanceof DialError) || error.failure === "aborted") throw error;
        // dialForClient marked it down, unless the failure was ferry's or a reset.
        failures.push({ upstream: upstream.name, error });
        continue;
      }
      return this.relayingTo(target);
    }
    // Nothing to forward to: close at once rather than leave the client waiting.
    const last = failures.at(-1)?.error;
    if (last === undefined) {
      this.requested ??= this.#upstreams.upstreams.map((u) => u.name).join(",");
      this.setOutcome("no-upstream-up");
    } else if (failures.length === 1) {
      this.setOutcome(last.failure, errorDetail(last.failure, last));
    } else {
      // Each upstream tried, and how it failed: the line named only the last.
      this.requested = failures.map((f) => f.upstream).join(",");
      const each = failures.map((f) => `${f.upstream}: ${messageWithCause(f.error)}`);
      this.setOutcome(last.failure, each.join("; "));
    }
    return null;
  }

  protected takeEarlyBytes(): Uint8Array {
    const early = this.#early;
    this.#early = NO_EARLY_BYTES;
    return early;
  }

  protected keepEarlyBytes(bytes: Uint8Array): boolean {
    const early = new Uint8Array(this.#early.length + bytes.length);
    early.set(this.#early);
    early.set(bytes, this.#early.length);
    this.#early = early;
    return early.length < MAX_EARLY_BYTES;
  }

  protected override logFields(): Record<string, unknown> {
    return { pooled: this.#pooled };
  }
}

/**
 * Whether `conn`, just dialled, arrived at `listener` (an open listener's
 * address): a forwarding loop that the start-up check cannot see, because it
 * goes through a name that resolves to this host. A wildcard listener takes
 * its port on every address of the host; a connection to one of those comes
 * from that very address on Linux (a loopback one: from 127.0.0.1 or ::1).
 * `[::]` takes IPv4 connections too, `0.0.0.0` IPv4 only.
 */
export function reachesListener(listener: Deno.NetAddr, conn: Deno.TcpConn): boolean {
  const { remoteAddr, localAddr } = conn;
  if (remoteAddr.port !== listener.port) return false;
  const to = unmapIPv4(remoteAddr.hostname);
  const listenHost = unmapIPv4(listener.hostname);
  if (listenHost !== "0.0.0.0" && listenHost !== "::") return to === listenHost;
  if (listenHost === "0.0.0.0" && to.includes(":")) return false;
  return isLoopbackIp(to) || to === unmapIPv4(localAddr.hostname);
}

/** How long a dial that may have reached the listener waits to see it accepted there. */
const LOOP_CONFIRM_MS = 250;

/**
 * Whether `conn`, just dialled, is a connection the forwarder's own
 * listener accepted. {@linkcode reachesListener} says it may be; the
 * listener accepting that very connection (its client address is the
 * dial's local address) says it is: the accept is remembered, as the
 * session it became may be over already, or refused at a limit. Without that, a `[::]` listener that
 * takes IPv6 only (net.ipv6.bindv6only), or a local address that NAT sends
 * elsewhere, made a working upstream look like a loop.
 */
async function leadsBack(server: Server, conn: Deno.TcpConn): Promise<boolean> {
  if (!reachesListener(server.addr, conn)) return false;
  const ip = unmapIPv4(conn.localAddr.hostname);
  const { port } = conn.localAddr;
  for (const started = performance.now(); performance.now() - started < LOOP_CONFIRM_MS;) {
    if (server.acceptedFrom(ip, port)) return true;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return server.acceptedFrom(ip, port);
}

/** A running forwarder: its server and its upstreams. */
export interface Forwarder extends Server {
  readonly upstreams: UpstreamSet;
  /** Starts filling the upstreams' pools (once; until then clients dial on demand). */
  startPools(): void;
}

/** Starts the listener and the upstream pools. Throws if the address cannot be bound. */
export function startForwarder(config: ForwardConfig): Forwarder {
  const forwarder = openForwarder(config);
  forwarder.startPools();
  return forwarder;
}

/**
 * Starts the listener, but not the pools: a process opening several
 * listeners starts them once all are open. Throws if the address cannot be bound.
 */
export function openForwarder(config: ForwardConfig): Forwarder {
  const server = startServer(
    config,
    // Sessions start from the accept loop, after this function has returned.
    (conn, context) => new ForwardSession(conn, context, upstreams),
    [],
    true, // for leadsBack()
  );
  // Made once the listener is open, so that their lines can name it with its real port.
  const upstreams = new UpstreamSet(config.upstreams.map((address) =>
    new Upstream(address, {
      poolSize: config.poolSize,
      poolMaxIdleMs: config.poolMaxIdleMs,
      connectTimeoutMs: config.connectTimeoutMs,
      listen: formatAddress({ host: server.addr.hostname, port: server.addr.port }),
      leadsBack: (conn) => leadsBack(server, conn),
    })
  ));
  return {
    addr: server.addr,
    metrics: server.metrics,
    upstreams,
    startPools() {
      for (const upstream of upstreams.upstreams) upstream.start();
    },
    get activeSessions() {
      return server.activeSessions;
    },
    acceptedFrom: (ip, port) => server.acceptedFrom(ip, port),
    get finished() {
      return server.finished;
    },
    async shutdown(graceMs: number) {
      for (const upstream of upstreams.upstreams) upstream.close();
      await server.shutdown(graceMs);
    },
  };
}
