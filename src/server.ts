/**
 * The listener: an accept loop that never dies, connection limits, and a
 * drain on shutdown. Data flows one way from here: accepted connection →
 * a session (SOCKS or forward) → codec, dial, relay.
 *
 * @module
 */
import { UserTable } from "./auth.ts";
import type { ListenerSettings, SocksConfig } from "./config.ts";
import { Deadlines, tickFor } from "./deadlines.ts";
import { RateLimitedLog, serverLog, sessionLog } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { formatAddress, formatPeer, unmapIPv4 } from "./protocol/address.ts";
import { closeQuietly } from "./close_quietly.ts";
import { isOneConnectionError } from "./accept_error.ts";
import { acceptsPaused, roomAfter } from "./spare_descriptors.ts";
import { sleep } from "./sleep.ts";
import { SlotList, type Slotted } from "./slot_list.ts";
import type { SessionContext } from "./proxy_session.ts";
import { type SocksContext, SocksSession } from "./session.ts";

/** Back-off after a failed accept: from the first value, doubling, to the cap. */
const ACCEPT_BACKOFF_FIRST_MS = 5;
const ACCEPT_BACKOFF_MAX_MS = 250;

/**
 * Accepted connections, as an async iterator, until `signal` aborts or the
 * listener closes.
 *
 * Deno's own `for await (const conn of listener)` ends for good on the first
 * accept error, EMFILE included; this one keeps accepting. Out of
 * descriptors, it first has a forwarder's pool give one up (see
 * src/spare_descriptors.ts) and accepts again; while clients it accepted
 * wait for descriptors to dial with, it accepts none. After an error of
 * the listener (out of descriptors, buffers or memory, or one it does not
 * know) it backs off, so the server comes back by itself when descriptors
 * free up without spinning meanwhile; after a connection's own error it goes
 * straight on to the next (see {@linkcode isOneConnectionError}). A class with an
 * async `next()` rather than an async generator: a generator's `yield` costs
 * an extra await and its request queue on every connection.
 */
export class AcceptedConnections implements AsyncIterableIterator<Deno.TcpConn> {
  readonly #listener: Deno.TcpListener;
  readonly #signal: AbortSignal;
  readonly #onError: (error: unknown, backingOff: boolean) => void;
  #backoff = ACCEPT_BACKOFF_FIRST_MS;

  constructor(
    listener: Deno.TcpListener,
    signal: AbortSignal,
    onError: (error: unknown, backingOff: boolean) => void,
  ) {
    this.#listener = listener;
    this.#signal = signal;
    this.#onError = onError;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<Deno.TcpConn, undefined>> {
    while (!this.#signal.aborted) {
      // Clients already accepted wait for descriptors to dial with; new ones wait in the queue.
      if (acceptsPaused()) {
        await sleep(ACCEPT_BACKOFF_FIRST_MS, this.#signal);
        continue;
      }
      try {
        const conn = await this.#listener.accept();
        this.#backoff = ACCEPT_BACKOFF_FIRST_MS;
        return { done: false, value: conn };
      } catch (error) {
        if (this.#signal.aborted || error instanceof Deno.errors.BadResource) break;
        // A pooled connection closed for it: the pool says so, once per shortage.
        if (await roomAfter(error)) continue;
        const backingOff = !isOneConnectionError(error);
        this.#onError(error, backingOff);
        if (!backingOff) continue;
        await sleep(this.#backoff, this.#signal);
        this.#backoff = Math.min(this.#backoff * 2, ACCEPT_BACKOFF_MAX_MS);
      }
    }
    return { done: true, value: undefined };
  }
}

/** A session as the server sees it: something to run and, at shutdown, to cut short. */
export interface ServerSession {
  run(): Promise<void>;
  abort(failure: string): void;
  /** The local address of its connection to one of `peers`, or `null` (see ProxySession). */
  sourceFor(peers: ReadonlySet<string>): string | null;
  /** Whether its client connected from `ip` (IPv4-mapped ones unmapped). */
  isFrom(ip: string): boolean;
}

/**
 * A session in the server's list. A wrapper, because a session's own `slot`
 * belongs to the deadline sweep's list and an object sits in one list at a time.
 */
class RunningSession implements Slotted {
  slot = -1;
  readonly session: ServerSession;

  constructor(session: ServerSession) {
    this.session = session;
  }
}

/**
 * The addresses connections were accepted from lately: those of the last
 * one to two seconds. A forwarder asks whether a connection it just dialled
 * arrived at its own listener (src/forward.ts); the session that connection
 * became may already have ended, or never begun (refused at a limit).
 */
class RecentClients {
  #current = new Set<string>();
  #previous = new Set<string>();
  #since = performance.now();

  add(ip: string, port: number): void {
    const now = performance.now();
    if (now - this.#since > 1_000) {
      this.#previous = this.#current;
      this.#current = new Set();
      this.#since = now;
    }
    this.#current.add(`${ip} ${port}`);
  }

  has(ip: string, port: number): boolean {
    const key = `${ip} ${port}`;
    return this.#current.has(key) || this.#previous.has(key);
  }
}

/** A running server. */
export interface Server {
  /** The address actually bound (port 0 resolved). */
  readonly addr: Deno.NetAddr;
  readonly metrics: Metrics;
  /** Number of sessions in progress. */
  readonly activeSessions: number;
  /**
   * Whether the listener accepted a connection from `ip` (unmapped) and
   * `port` within the last second or two, whatever became of it; only a
   * server started with `rememberClients` knows (see {@linkcode RecentClients}).
   */
  acceptedFrom(ip: string, port: number): boolean;
  /** Resolves when the accept loop has ended and every session has finished. */
  readonly finished: Promise<void>;
  /**
   * Stops accepting at once, lets sessions run for up to `graceMs`, then
   * aborts the rest. Resolves when all have ended.
   */
  shutdown(graceMs: number): Promise<void>;
}

/** Starts a SOCKS server. Throws if the address cannot be bound. */
export function startSocksServer(config: SocksConfig): Server {
  const users = new UserTable(config.users);
  let socksContext: SocksContext | null = null; // made once, from the server's context
  return startServer(
    config,
    (conn, context) =>
      new SocksSession(
        conn,
        socksContext ??= {
          ...context,
          users,
          socks4: config.socks4,
          udpAdvertise: config.udpAdvertise,
          bindTimeoutMs: config.bindTimeoutMs,
          maxUdpPerIp: config.maxUdpPerIp,
          udpPerIp: new Map(),
        },
      ),
    [config.bindTimeoutMs], // a BIND's wait is one of the sweep's deadlines too
  );
}

/**
 * Listens and hands every accepted connection, within the limits, to a
 * session made by `createSession`. `otherTimeoutsMs`: timeouts the sessions
 * set beyond the common ones, which the deadline sweep's tick must suit too.
 * Throws if the address cannot be bound.
 */
export function startServer(
  config: ListenerSettings,
  createSession: (conn: Deno.TcpConn, context: SessionContext) => ServerSession,
  otherTimeoutsMs: readonly number[] = [],
  rememberClients = false,
): Server {
  const recentClients = rememberClients ? new RecentClients() : null;
  const listener = Deno.listen({
    hostname: config.listen.hostname,
    port: config.listen.port,
    transport: "tcp",
  });
  const metrics = new Metrics();
  const context: SessionContext = {
    listen: formatAddress({ host: listener.addr.hostname, port: listener.addr.port }),
    deadlines: new Deadlines(
      tickFor(
        config.handshakeTimeoutMs,
        config.connectTimeoutMs,
        config.idleTimeoutMs,
        ...otherTimeoutsMs,
      ),
    ),
    metrics,
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    connectTimeoutMs: config.connectTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    logSessions: sessionLog.isEnabledFor("info"),
    sourceFor(peers, clientIp) {
      // Only a BIND asks, so no index is kept on every CONNECT's path. The
      // asking client's own connection first: another client's may come from
      // another address (a route changed, IPv6 privacy addresses).
      let other: string | null = null;
      for (const { session } of sessions.toArray()) {
        const source = session.sourceFor(peers);
        if (source === null) continue;
        if (session.isFrom(clientIp)) return source;
        other ??= source;
      }
      return other;
    },
  };
  // Not a Set: see SlotList for what a Set's churn costs the GC.
  const sessions = new SlotList<RunningSession>();
  const perIp = new Map<string, number>();
  const stopAccepting = new AbortController();
  const acceptErrors = new RateLimitedLog();
  const lostBeforeAccept = new RateLimitedLog();
  // One each, so that a line of one limit never carries the other's count.
  const limitLogs = { "max-conns": new RateLimitedLog(), "max-conns-per-ip": new RateLimitedLog() };
  const internalErrors = new RateLimitedLog();
  /** Flushed at shutdown: what they held back goes before the stopped line's totals. */
  const rateLimitedLogs = [
    acceptErrors,
    lostBeforeAccept,
    internalErrors,
    ...Object.values(limitLogs),
  ];
  const allEnded: (() => void)[] = [];

  /**
   * A fault of ferry's own around one session (see {@linkcode admit}): that
   * client is let down, the others and the accept loop go on.
   */
  const onInternalError = (conn: Deno.TcpConn, error: unknown) => {
    metrics.internalErrors++;
    internalErrors.maybe((suppressed) =>
      serverLog.error("session of {client} failed inside ferry: {error}", {
        event: "internal-error",
        listen: context.listen,
        client: formatPeer(conn.remoteAddr),
        error: (error as Error)?.stack ?? String(error),
        suppressed,
      })
    );
  };

  const onAcceptError = (error: unknown, backingOff: boolean) => {
    metrics.acceptErrors++;
    const fields = (suppressed: number) => ({
      listen: context.listen,
      error: (error as Error)?.message ?? String(error),
      code: (error as { code?: string })?.code ?? null,
      suppressed,
    });
    // Separate limits, so that a flood of clients resetting cannot hide EMFILE.
    if (backingOff) {
      acceptErrors.maybe((suppressed) =>
        serverLog.warn("accept failed: {error}; backing off", {
          event: "accept-error",
          ...fields(suppressed),
        })
      );
    } else {
      lostBeforeAccept.maybe((suppressed) =>
        serverLog.info("a connection failed before it was accepted: {error}", {
          event: "accept-lost",
          ...fields(suppressed),
        })
      );
    }
  };

  const admit = (conn: Deno.TcpConn) => {
    metrics.accepted++;
    // Before the limits: a loop fills them, and must still be seen.
    recentClients?.add(unmapIPv4(conn.remoteAddr.hostname), conn.remoteAddr.port);
    const ip = conn.remoteAddr.hostname;
    const fromIp = perIp.get(ip) ?? 0;
    const limit = sessions.size >= config.maxConns
      ? "max-conns"
      : fromIp >= config.maxConnsPerIp
      ? "max-conns-per-ip"
      : null;
    if (limit) {
      if (limit === "max-conns") metrics.rejectedMaxConns++;
      else metrics.rejectedPerIp++;
      closeQuietly(conn);
      limitLogs[limit].maybe((suppressed) =>
        serverLog.warn("connection from {client} refused: {limit} reached", {
          event: "rejected",
          listen: context.listen,
          limit,
          client: formatPeer(conn.remoteAddr),
          suppressed,
        })
      );
      return;
    }
    // Guarded, because a throw here would end the accept loop, and with it
    // the process (an unhandled rejection): a session that cannot even be
    // made (say its buffer cannot be allocated) fails alone.
    let session: ServerSession;
    try {
      session = createSession(conn, context);
    } catch (error) {
      closeQuietly(conn);
      onInternalError(conn, error);
      return;
    }
    perIp.set(ip, fromIp + 1);
    const running = new RunningSession(session);
    sessions.add(running);
    const ended = () => {
      sessions.delete(running);
      const left = perIp.get(ip)! - 1;
      if (left === 0) perIp.delete(ip);
      else perIp.set(ip, left);
      if (sessions.size === 0) { for (const resolve of allEnded.splice(0)) resolve(); }
    };
    session.run().then(ended, (error) => {
      // run() is written never to reject; if it does, its sockets may be open still.
      try {
        session.abort("internal-error");
      } catch {
        // Nothing more to try: the session is broken.
      }
      onInternalError(conn, error);
      ended();
    });
  };

  const acceptLoop = (async () => {
    const accepted = new AcceptedConnections(listener, stopAccepting.signal, onAcceptError);
    for await (const conn of accepted) {
      admit(conn);
    }
  })();

  const waitForSessions = () =>
    sessions.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => {
      allEnded.push(resolve);
    });

  let finished: Promise<void> | null = null;
  const shutdown = (graceMs: number): Promise<void> => {
    finished ??= (async () => {
      stopAccepting.abort();
      closeQuietly(listener);
      await acceptLoop;
      for (const log of rateLimitedLogs) log.flush();
      const drained = waitForSessions();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const graceOver = new Promise<"grace-over">((resolve) => {
        timer = setTimeout(() => resolve("grace-over"), graceMs);
      });
      const first = await Promise.race([drained, graceOver]);
      clearTimeout(timer);
      if (first === "grace-over") {
        for (const { session } of sessions.toArray()) session.abort("shutdown");
        await drained;
      }
      context.deadlines.stopIfIdle();
    })();
    return finished;
  };

  return {
    addr: listener.addr,
    metrics,
    get activeSessions() {
      return sessions.size;
    },
    acceptedFrom(ip, port) {
      return recentClients?.has(ip, port) ?? false;
    },
    get finished() {
      return finished ?? acceptLoop.then(waitForSessions);
    },
    shutdown,
  };
}
