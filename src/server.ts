/**
 * The listener: an accept loop that never dies, connection limits, and a
 * drain on shutdown. Data flows one way from here: accepted connection →
 * {@linkcode Session} → codec, dial, relay.
 *
 * @module
 */
import { UserTable } from "./auth.ts";
import type { SocksConfig } from "./config.ts";
import { Deadlines, tickFor } from "./deadlines.ts";
import { RateLimitedLog, serverLog } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { formatAddress } from "./protocol/address.ts";
import { closeQuietly, Session } from "./session.ts";

/** Back-off after a failed accept: from the first value, doubling, to the cap. */
const ACCEPT_BACKOFF_FIRST_MS = 5;
const ACCEPT_BACKOFF_MAX_MS = 250;

/**
 * Yields accepted connections until `signal` aborts or the listener closes.
 *
 * Deno's own `for await (const conn of listener)` ends for good on the first
 * accept error, EMFILE included; this loop backs off and keeps accepting, so
 * the server comes back by itself when descriptors free up.
 */
export async function* acceptConnections(
  listener: Deno.TcpListener,
  signal: AbortSignal,
  onError: (error: unknown) => void,
): AsyncGenerator<Deno.TcpConn> {
  let backoff = ACCEPT_BACKOFF_FIRST_MS;
  while (!signal.aborted) {
    let conn: Deno.TcpConn;
    try {
      conn = await listener.accept();
    } catch (error) {
      if (signal.aborted || error instanceof Deno.errors.BadResource) return;
      onError(error);
      await sleep(backoff, signal);
      backoff = Math.min(backoff * 2, ACCEPT_BACKOFF_MAX_MS);
      continue;
    }
    backoff = ACCEPT_BACKOFF_FIRST_MS;
    yield conn;
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** A running SOCKS server. */
export interface SocksServer {
  /** The address actually bound (port 0 resolved). */
  readonly addr: Deno.NetAddr;
  readonly metrics: Metrics;
  /** Number of sessions in progress. */
  readonly activeSessions: number;
  /** Resolves when the accept loop has ended and every session has finished. */
  readonly finished: Promise<void>;
  /**
   * Stops accepting at once, lets sessions run for up to `graceMs`, then
   * aborts the rest. Resolves when all have ended.
   */
  shutdown(graceMs: number): Promise<void>;
}

/** Starts listening and serving. Throws if the address cannot be bound. */
export function startSocksServer(config: SocksConfig): SocksServer {
  const listener = Deno.listen({
    hostname: config.listen.hostname,
    port: config.listen.port,
    transport: "tcp",
  });
  const metrics = new Metrics();
  const context = {
    config,
    users: new UserTable(config.users),
    deadlines: new Deadlines(
      tickFor(config.handshakeTimeoutMs, config.connectTimeoutMs, config.idleTimeoutMs),
    ),
    metrics,
  };
  const sessions = new Set<Session>();
  const perIp = new Map<string, number>();
  const stopAccepting = new AbortController();
  const acceptErrors = new RateLimitedLog();
  const limitLog = new RateLimitedLog();
  const allEnded: (() => void)[] = [];

  const onAcceptError = (error: unknown) => {
    metrics.acceptErrors++;
    acceptErrors.maybe((suppressed) =>
      serverLog.warn("accept failed: {error}; backing off", {
        event: "accept-error",
        error: (error as Error)?.message ?? String(error),
        code: (error as { code?: string })?.code ?? null,
        suppressed,
      })
    );
  };

  const admit = (conn: Deno.TcpConn) => {
    metrics.accepted++;
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
      limitLog.maybe((suppressed) =>
        serverLog.warn("connection from {client} refused: {limit} reached", {
          event: "rejected",
          limit,
          client: formatAddress({ host: ip, port: conn.remoteAddr.port }),
          suppressed,
        })
      );
      return;
    }
    perIp.set(ip, fromIp + 1);
    const session = new Session(conn, context);
    sessions.add(session);
    session.run().finally(() => {
      sessions.delete(session);
      const left = perIp.get(ip)! - 1;
      if (left === 0) perIp.delete(ip);
      else perIp.set(ip, left);
      if (sessions.size === 0) { for (const resolve of allEnded.splice(0)) resolve(); }
    });
  };

  const acceptLoop = (async () => {
    for await (const conn of acceptConnections(listener, stopAccepting.signal, onAcceptError)) {
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
      const drained = waitForSessions();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const graceOver = new Promise<"grace-over">((resolve) => {
        timer = setTimeout(() => resolve("grace-over"), graceMs);
      });
      const first = await Promise.race([drained, graceOver]);
      clearTimeout(timer);
      if (first === "grace-over") {
        for (const session of sessions) session.abort("shutdown");
        await drained;
      }
    })();
    return finished;
  };

  return {
    addr: listener.addr,
    metrics,
    get activeSessions() {
      return sessions.size;
    },
    get finished() {
      return finished ?? acceptLoop.then(waitForSessions);
    },
    shutdown,
  };
}
