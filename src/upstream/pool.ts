/**
 * Upstreams of the port forwarder, each with a warm pool of connections
 * dialled ahead of time, so a client's first byte does not wait for a TCP
 * handshake.
 *
 * Each pooled connection serves exactly one client and is closed after it: a
 * connection that carried one client's stream must never carry another's.
 * While it waits in the pool, a read is kept pending on it. That read notices
 * FIN and RST (the connection is dropped, never handed out) and collects what
 * a server-speaks-first upstream sends (an SSH banner, an SMTP greeting), which
 * the client then receives first, in order.
 *
 * @module
 */
import { ByteQueue } from "../byte_queue.ts";
import { closeQuietly } from "../close_quietly.ts";
import type { ListenAddress } from "../config.ts";
import { serverLog } from "../log.ts";
import { addressOf, formatAddress, ipKey } from "../protocol/address.ts";
import type { RelayEnd } from "../relay.ts";
import {
  acceptsPaused,
  addDonor,
  type DescriptorDonor,
  withdrawDonor,
} from "../spare_descriptors.ts";
import {
  type AnswerCheck,
  dial,
  DialError,
  messageWithCause,
  outOfDescriptorsToDial,
  outOfLocalPorts,
  resetAsAccepted,
} from "./dial.ts";

/** Most bytes an upstream may send unasked while pooled; more means it is not waiting for us. */
export const POOLED_BYTES_LIMIT = 64 * 1024;

/** Why a pooled connection was dropped before any client got it. */
export type DropReason = "eof" | "reset" | "overflow" | "max-idle";

/** A connection dialled ahead of time and watched while it waits. */
export class PooledConnection implements RelayEnd {
  readonly conn: Deno.TcpConn;
  /** `performance.now()` when it entered the pool. */
  readonly pooledAt = performance.now();
  /** Bytes the upstream sent while pooled, not yet handed to the session. */
  #received = new ByteQueue();
  /** All bytes the upstream sent while pooled, handed on or not. */
  #receivedBytes = 0;
  #taken = false;
  #ended: { eof: true } | { error: unknown } | null = null;
  /** The watch loop; settles when the connection dies or, once taken, when its read lands. */
  #watching: Promise<void> | null;

  constructor(conn: Deno.TcpConn, onDrop: (reason: DropReason) => void) {
    this.conn = conn;
    this.#watching = this.#watch(onDrop);
  }

  async #watch(onDrop: (reason: DropReason) => void): Promise<void> {
    const scratch = new Uint8Array(1024);
    for (;;) {
      let n: number | null;
      try {
        n = await this.conn.read(scratch);
      } catch (error) {
        this.#ended = { error };
        if (!this.#taken) onDrop("reset");
        return;
      }
      if (n === null) {
        this.#ended = { eof: true };
        if (!this.#taken) onDrop("eof");
        return;
      }
      this.#received.push(scratch.subarray(0, n));
      this.#receivedBytes += n;
      if (this.#taken) return;
      if (this.#receivedBytes > POOLED_BYTES_LIMIT) {
        this.#ended = { error: new Error("upstream sent too much while pooled") };
        onDrop("overflow");
        return;
      }
    }
  }

  /**
   * Settles once the read pending while pooled has ended: after close(), the
   * moment Deno has closed the socket and its descriptor is free.
   */
  get released(): Promise<void> {
    return this.#watching ?? Promise.resolve();
  }

  /** Bytes received while pooled (for logs). */
  get receivedWhilePooled(): number {
    return this.#receivedBytes;
  }

  /** Marks the connection as handed to a session; reads now belong to it. */
  take(): void {
    this.#taken = true;
  }

  /** Bytes received while pooled first, then whatever the pending read brings, then the socket. */
  async read(buffer: Uint8Array): Promise<number | null> {
    if (this.#received.length === 0 && this.#watching) {
      await this.#watching; // the read pending since the pool is this session's first read
      this.#watching = null;
    }
    if (this.#received.length > 0) return this.#received.shift(buffer);
    if (this.#ended) {
      if ("eof" in this.#ended) return null;
      throw this.#ended.error;
    }
    return await this.conn.read(buffer);
  }

  write(bytes: Uint8Array): Promise<number> {
    return this.conn.write(bytes);
  }

  closeWrite(): Promise<void> {
    return this.conn.closeWrite();
  }

  close(): void {
    closeQuietly(this.conn);
  }
}

/** Options for {@linkcode Upstream}. */
export interface UpstreamOptions {
  /** Connections to keep dialled; 0 dials on demand only. */
  readonly poolSize: number;
  /** Pooled connections older than this are replaced. */
  readonly poolMaxIdleMs: number;
  readonly connectTimeoutMs: number;
  /** The forwarder's listen address, as its lines name it (several may share an upstream). */
  readonly listen: string;
  /**
   * Whether a connection just dialled arrived at the forwarder's own listener
   * (see `reachesListener` in src/forward.ts). Each such connection would
   * become a session dialling another, so it is closed, and its address is
   * not dialled again: a name's other addresses are tried, and with none left
   * the upstream is down (retried with back-off, as after a failed dial).
   */
  readonly leadsBack?: (conn: Deno.TcpConn) => Promise<boolean>;
}

/** Why a pooled dial was aborted: dial() reports it as a connect timeout. */
const CONNECT_TIMEOUT = { failure: "connect-timeout" } as const;
/** A pooled dial ended by close(): nothing is said of it (see #dialOne). */
const CLOSED = { failure: "aborted" } as const;

const BACKOFF_FIRST_MS = 100;
/**
 * Longest back-off while dials fail: a probe that is refused costs nothing,
 * and a longer wait kept clients refused after the upstream was back (5.7 s
 * after a 7 s outage with 10 s).
 */
const DOWN_BACKOFF_MAX_MS = 2_000;
/**
 * Longest back-off while pooled connections end young: each refill the
 * upstream accepts and drops shows in its logs (sshd, MariaDB), and one at
 * its connection limit refuses every refill while its pool is good.
 */
const UNSETTLED_BACKOFF_MAX_MS = 10_000;
/**
 * A pooled connection that ends sooner than this after connecting (FIN, reset,
 * or more bytes than it may send unasked) leaves the pool unsettled: refilling
 * backs off, so an upstream that accepts and closes at once (a stopped service
 * behind a port proxy) is not redialled in a hot loop.
 */
const SETTLE_MS = 1000;
/**
 * After pooled connections ended young, how long none must have for the
 * pool to say `pool-settled` and start its back-off over: longer than a
 * cycle of an upstream at its connection limit, which refuses a refill at
 * least every back-off step (10 s at most) plus a second to settle. A full
 * pool is no proof: such an upstream's pool fills whenever its clients are
 * few, and said pool-settled and pool-unsettled every two seconds.
 */
const QUIET_MS = 30_000;
/**
 * A pooled connection that ends sooner than this after connecting was
 * refused (an upstream at its connection limit accepts and closes at once),
 * not cut after idling.
 */
const REFUSED_WITHIN_MS = 100;

/**
 * How a client may use an upstream now. `up`: take a pooled connection or
 * dial. `fallback`: its pooled connections end young (an upstream that closes
 * idle connections within a second, or talks first at length), so it comes
 * after the upstreams that are up, and is dialled on demand. `skip`: dials to
 * it fail, and another client's dial is already finding out whether it is back,
 * or its pool's is.
 */
export type Standing = "up" | "fallback" | "skip";

/** One upstream: its pool, and whether it is up (with back-off while it is not). */
export class Upstream implements DescriptorDonor {
  readonly address: ListenAddress;
  readonly name: string;
  readonly #options: UpstreamOptions;
  readonly #idle: PooledConnection[] = [];
  #dialing = 0;
  /**
   * What ends the pool's dials in progress: close() aborts them, rather than
   * leave a dial to an upstream that drops SYNs holding a descriptor and a
   * timer (which keeps the process alive) until its connect timeout.
   */
  readonly #dialAborts = new Set<AbortController>();
  /** Clients' dials in progress (sessions dialling on demand). */
  #clientDials = 0;
  /** Dials fail: clients skip it until it is due for a retry. */
  #down = false;
  /** Whether the pool's last dial failed for want of a descriptor in ferry. */
  #starved = false;
  /** Whether that was said, since the pool was last full: once per shortage. */
  #starvationSaid = false;
  /** Pooled connections end right after connecting: refilling backs off. */
  #unsettled = false;
  /**
   * From the first pooled connection that ended young (`pool-unsettled`)
   * until none has for QUIET_MS (`pool-settled`, #recovered). While it is
   * not #unsettled, the pool ramps up (since #rampStart): at most 1, then 2,
   * 3 … connections (one more every REFUSED_WITHIN_MS) may be young at once,
   * dialling or pooled less than that long; those clients took do not count,
   * so a busy forwarder refills as fast as clients take. An upstream at its
   * connection limit settles each time a client frees a slot; it then
   * refuses a refill or two, not the pool's whole deficit (doubling the
   * window instead let it refuse four at a time). Paced no more once the
   * window covers the pool.
   */
  #recovering = false;
  #rampStart = 0;
  #backoffMs = BACKOFF_FIRST_MS;
  /** While down or unsettled: no dial before this `performance.now()`. */
  #retryAt = 0;
  /** Whether the last pooled connection to end young had idled a while first, rather than being refused at once. */
  #cutAfterIdling = false;
  /** When it last went from fine to down or unsettled: only connections dialled since can show it is fine again. */
  #troubleSince = 0;
  /** When a pooled connection last ended young (see #markUnsettled). */
  #lastYoungDrop = 0;
  /** Connections dialled since then that clients took: probes that served instead of idling. */
  #takenSinceYoungDrop = 0;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** While ramping up: the next look at the window, which a client's take may bring forward. */
  #rampTimer: ReturnType<typeof setTimeout> | undefined;
  #recycleTimer: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  /** Counters, for logs and tests. */
  readonly stats = { dialled: 0, taken: 0, dropped: 0, recycled: 0, failures: 0, givenUp: 0 };

  constructor(address: ListenAddress, options: UpstreamOptions) {
    this.address = address;
    this.name = formatAddress({ host: address.hostname, port: address.port });
    this.#options = options;
  }

  /** Starts filling the pool, and the sweep that replaces connections idle too long. */
  start(): void {
    if (this.#options.poolSize === 0 || this.#recycleTimer !== undefined) return;
    const sweepMs = Math.max(50, Math.min(1000, this.#options.poolMaxIdleMs / 4));
    this.#recycleTimer = setInterval(() => this.#recycle(), sweepMs);
    Deno.unrefTimer(this.#recycleTimer);
    addDonor(this);
    this.#fill();
  }

  /** The pool's own dials in progress (not clients' on-demand ones). */
  get dialsInProgress(): number {
    return this.#dialing;
  }

  /** Connections waiting in the pool. */
  get idle(): number {
    return this.#idle.length;
  }

  /** How a client may use this upstream now (see {@linkcode Standing}). */
  get standing(): Standing {
    // Down with connections waiting: the pool's probe got through, and the
    // upstream accepts connections again. Unsettled (an upstream restart also
    // cuts young connections), clients come after the upstreams that are up.
    if (!this.#down || this.#idle.length > 0) return this.#unsettled ? "fallback" : "up";
    // Down, a client may find out whether it is back only without a pool
    // (the pool probes by itself) and one at a time: against an upstream
    // that drops SYNs each probe costs its client the whole connect timeout.
    const due = performance.now() >= this.#retryAt;
    return this.#options.poolSize === 0 && due && this.#clientDials === 0 ? "up" : "skip";
  }

  /**
   * Takes a pooled connection (oldest first), or `null` if none is ready.
   * Unsettled by an upstream that cuts connections after they idled a while
   * (one that closes idle connections within a second), only a connection
   * that has lasted is handed out: it may cut younger ones. One that refused
   * connections at once (at its connection limit) has nothing against those
   * it holds, and clients dialling on demand would be refused too.
   */
  take(): PooledConnection | null {
    const now = performance.now();
    // The sweep runs every quarter of --pool-max-idle at most: a connection
    // may have passed the limit since, and the upstream may be cutting it now.
    this.#retireExpired(now);
    const oldest = this.#idle[0];
    const withheld = oldest !== undefined && this.#unsettled && this.#cutAfterIdling &&
      now - oldest.pooledAt < this.#settleMs;
    const pooled = oldest === undefined || withheld ? null : this.#idle.shift()!;
    if (pooled) {
      pooled.take();
      this.stats.taken++;
      // Serving a client shows the upstream is up, but only with a connection
      // dialled since the trouble began: one from before an outage proves
      // nothing of new ones (sshd's listener can die while its connections live).
      if (pooled.pooledAt >= this.#troubleSince) this.markUp();
      if (pooled.pooledAt >= this.#lastYoungDrop) this.#takenSinceYoungDrop++;
    }
    this.#fill();
    return pooled;
  }

  /**
   * Wraps a client's dial to this upstream, so that while it is down only one
   * client at a time tries it. Records the outcome: up, or down (a
   * {@linkcode DialError} other than the session's own abort).
   */
  async dialForClient(
    dial: (answers: AnswerCheck) => Promise<Deno.TcpConn>,
  ): Promise<Deno.TcpConn> {
    this.#clientDials++;
    try {
      const conn = await dial(this.#answers);
      this.markUp();
      return conn;
    } catch (error) {
      // Reset as it was accepted: it is not down (see #dialOne); nor is it
      // when ferry had no descriptor or local port left to dial it with.
      const failed = error instanceof DialError && error.failure !== "aborted";
      if (failed && !resetAsAccepted(error) && !ferrysShortage(error)) this.markDown(error);
      throw error;
    } finally {
      this.#clientDials--;
    }
  }

  /** Addresses of this upstream's name that led back to the forwarder's own listener. */
  readonly #selfAddresses = new Set<string>();

  /**
   * What dials to this upstream take for an answer (see {@linkcode AnswerCheck}):
   * not a connection that arrived at the forwarder's own listener, nor, from
   * then on, its address, which will lead there as long as the listener is open.
   */
  readonly #answers: AnswerCheck = {
    skip: (ip) => this.#selfAddresses.has(ipKey(ip)) ? this.#loopError() : null,
    check: async (conn) => {
      if (!this.#options.leadsBack || !await this.#options.leadsBack(conn)) return null;
      this.#selfAddresses.add(ipKey(conn.remoteAddr.hostname));
      return this.#loopError();
    },
  };

  #loopError(): DialError {
    return new DialError(
      "forwarding-loop",
      `it leads back to this forwarder's own listener ${this.#options.listen} (a forwarding loop)`,
    );
  }

  /** Records that a connection (on demand or pooled) reached the upstream. */
  markUp(): void {
    // Reaching it says nothing about how long pooled connections last.
    if (!this.#recovering) this.#backoffMs = BACKOFF_FIRST_MS;
    if (!this.#down) return;
    this.#down = false;
    // As loud as the upstream-down it ends: a log kept at --log-level warn says the outage ended.
    serverLog.warn("upstream {upstream} is up again", {
      event: "upstream-up",
      listen: this.#options.listen,
      upstream: this.name,
    });
  }

  /** Records a failed dial: the upstream is skipped until its back-off ends. */
  markDown(error: unknown): void {
    if (this.#closed) return; // shutting down: a client's dial cut short says nothing new
    this.#backOff(DOWN_BACKOFF_MAX_MS);
    if (this.#down) return;
    this.#down = true;
    serverLog.warn("upstream {upstream} is down: {error}; retrying with back-off", {
      event: "upstream-down",
      listen: this.#options.listen,
      upstream: this.name,
      error: messageWithCause(error),
    });
  }

  /**
   * The pool could not dial for want of a descriptor (EMFILE, ENFILE) or a
   * local port (EADDRNOTAVAIL): ferry's shortage, not the upstream's, so it
   * is not marked down (clients would be refused); the refill backs off and
   * tries again.
   */
  #starve(error: unknown): void {
    this.#backOff(DOWN_BACKOFF_MAX_MS);
    this.#starved = true;
    if (this.#starvationSaid) return;
    this.#starvationSaid = true;
    serverLog.warn(
      "cannot refill the pool of upstream {upstream}: {error}; retrying with back-off",
      {
        event: outOfLocalPorts(error) ? "pool-no-local-ports" : "pool-no-descriptors",
        listen: this.#options.listen,
        upstream: this.name,
        error: messageWithCause(error),
      },
    );
  }

  /** Counts a failure (dial or pooled connection), and the next retry waits longer. */
  #backOff(maxMs: number): void {
    const now = performance.now();
    this.stats.failures++;
    if (!this.#backingOff) this.#troubleSince = now;
    // Failures within one back-off window (a pool's dials failing together)
    // count once, so the wait grows per retry, not per failed connection.
    if (now >= this.#retryAt) {
      // Clamped first: the wait may have grown under the other, longer cap.
      const wait = Math.min(this.#backoffMs, maxMs);
      this.#retryAt = now + wait;
      this.#backoffMs = Math.min(wait * 2, maxMs);
    } else if (this.#retryAt > now + maxMs) {
      // Waiting out the longer, unsettled cap when the upstream went down:
      // once it was back, clients were refused for up to 10 s, not 2.
      this.#retryAt = now + maxMs;
      if (this.#retryTimer !== undefined) {
        clearTimeout(this.#retryTimer);
        this.#retryTimer = undefined;
        this.#fill(); // at the new time
      }
    }
  }

  /** A pooled connection ended right after connecting: refill with back-off. */
  #markUnsettled(reason: DropReason, ageMs: number): void {
    this.#backOff(UNSETTLED_BACKOFF_MAX_MS);
    if (this.#unsettled) return;
    this.#unsettled = true;
    if (this.#recovering) return; // said already, and not recovered since
    this.#recovering = true;
    // Said as seen: an upstream that restarts cuts its young connections too,
    // so this is not necessarily an upstream that cuts every connection.
    serverLog.warn(
      "upstream {upstream} ended a pooled connection {ageMs} ms after accepting it ({reason}); " +
        "refilling with back-off, clients dial it on demand after the upstreams that are up",
      {
        event: "pool-unsettled",
        listen: this.#options.listen,
        upstream: this.name,
        reason,
        ageMs: Math.round(ageMs),
      },
    );
  }

  /**
   * A pooled connection has lasted, or clients took the probes: the pool
   * works again, and ramps up (see #recovering). The back-off stays, and
   * `pool-settled` waits, until nothing has ended young for QUIET_MS: an
   * upstream at its connection limit settles each time a client frees a
   * slot, and unsettles at the next refill.
   */
  #markSettled(): void {
    this.markUp();
    if (!this.#unsettled) return;
    this.#unsettled = false;
    this.#rampStart = performance.now();
  }

  /** Once the pool is full and nothing backs off: after a failed dial, the back-off starts over. */
  #noteFull(): void {
    if (this.#backingOff || this.#recovering || this.#idle.length < this.#options.poolSize) return;
    this.#starvationSaid = false; // full: a shortage later is a new one
    this.#backoffMs = BACKOFF_FIRST_MS;
  }

  /** Nothing has ended young for QUIET_MS: said once, and the back-off starts over. */
  #recovered(): void {
    this.#backoffMs = BACKOFF_FIRST_MS;
    this.#recovering = false;
    // As loud as the pool-unsettled it ends (see markUp()).
    serverLog.warn("upstream {upstream}: pooled connections last again", {
      event: "pool-settled",
      listen: this.#options.listen,
      upstream: this.name,
    });
  }

  /** Stops refilling, gives up the pool's dials under way, and closes every pooled connection. */
  close(): void {
    this.#closed = true;
    for (const dial of this.#dialAborts) dial.abort(CLOSED);
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#rampTimer);
    clearInterval(this.#recycleTimer);
    withdrawDonor(this);
    for (const pooled of this.#idle.splice(0)) retire(pooled);
  }

  /**
   * Closes the oldest pooled connection, so that ferry, out of descriptors,
   * can accept a client or dial for one (see src/spare_descriptors.ts), and
   * holds refilling back as if a dial had met EMFILE: redialled at once, it
   * would take the descriptor back before the client got it.
   */
  giveUpConnection(): Promise<void> | null {
    const oldest = this.#idle.shift();
    if (oldest === undefined) return null;
    retire(oldest);
    this.stats.givenUp++;
    this.#starve(new Error("out of descriptors, and a client needed one of the pool's"));
    return oldest.released;
  }

  #fill(): void {
    if (this.#closed || this.#retryTimer !== undefined) return;
    // Unsettled, a probe that connected proves nothing until it has lasted:
    // an upstream that accepts and then closes (at its connection limit, or
    // a stopped service behind a TCP proxy) got the whole pool again on each
    // back-off step. The sweep settles the probe, or its drop backs off.
    const since = this.#troubleSince;
    if (this.#unsettled && this.#idle.some((pooled) => pooled.pooledAt >= since)) return;
    const backingOff = this.#backingOff;
    // One probe at a time while backing off: against an upstream that drops
    // SYNs, each sweep and take started another, up to --pool at once.
    if (backingOff && this.#dialing > 0) return;
    while (this.#idle.length + this.#dialing < this.#options.poolSize) {
      // Read once: a negative delay makes Node warn.
      const wait = backingOff ? this.#retryAt - performance.now() : this.#rampWait();
      if (wait > 0) {
        if (backingOff) {
          this.#retryTimer = this.#fillAfter(wait, () => this.#retryTimer = undefined);
        } else {
          clearTimeout(this.#rampTimer); // a take brought this look forward
          this.#rampTimer = this.#fillAfter(wait);
        }
        return;
      }
      this.#dialing++;
      this.#dialOne().finally(() => this.#dialing--).then(() => this.#fill());
      // While backing off, one probe at a time; the rest wait for it to succeed.
      if (backingOff) return;
    }
  }

  /** Runs #fill after `ms`, `fired` first, on a timer that does not keep ferry alive. */
  #fillAfter(ms: number, fired?: () => void): ReturnType<typeof setTimeout> {
    const timer = setTimeout(() => {
      fired?.();
      this.#fill();
    }, ms);
    Deno.unrefTimer(timer);
    return timer;
  }

  /**
   * While ramping up (recovering, not backing off), how long until one more
   * connection may be dialled; else 0.
   */
  #rampWait(): number {
    if (!this.#recovering) return 0;
    const now = performance.now();
    const steps = Math.floor((now - this.#rampStart) / REFUSED_WITHIN_MS);
    const window = 1 + steps;
    if (window >= this.#options.poolSize) return 0; // paced no more
    let young = this.#dialing;
    for (const pooled of this.#idle) if (now - pooled.pooledAt < REFUSED_WITHIN_MS) young++;
    if (young < window) return 0;
    return this.#rampStart + (steps + 1) * REFUSED_WITHIN_MS - now; // the window grows
  }

  async #dialOne(): Promise<void> {
    let conn: Deno.TcpConn;
    const ending = new AbortController(); // the connect timeout, or close()
    const timer = setTimeout(() => ending.abort(CONNECT_TIMEOUT), this.#options.connectTimeoutMs);
    this.#dialAborts.add(ending);
    try {
      // Through dial(), not Deno.connect: a name is then looked up under the
      // caps, once for all the pool's dials at a time. Deno.connect looks it
      // up on a thread of Deno's blocking pool each; --pool 40 with a name
      // server that did not answer took all 32, and ferry's log (stderr
      // writes need one) said nothing, not even `listening`, until the
      // resolver gave up.
      const { hostname, port } = this.address;
      // The pool's lookups count as one client's (see src/upstream/lookups.ts).
      conn = await dial(
        addressOf(hostname, port),
        ending.signal,
        `pool ${this.name}`,
        this.#answers,
      );
    } catch (error) {
      if (this.#closed) return; // shutting down: nothing to say of a dial cut short
      // An upstream that resets what it accepts, at once, is one that closes
      // it at once (at its connection limit, say): unsettled, not down.
      if (resetAsAccepted(error)) this.#droppedYoung("reset", 0);
      else if (ferrysShortage(error)) this.#starve(error);
      else this.markDown(error);
      return;
    } finally {
      clearTimeout(timer);
      this.#dialAborts.delete(ending);
    }
    this.stats.dialled++;
    this.#starved = false;
    if (this.#closed) {
      conn.close();
      return;
    }
    conn.setKeepAlive(true); // dial() set TCP_NODELAY
    // Connected: the upstream is up, as a client's dial that connects says
    // (dialForClient), whether or not this connection lasts. Waiting for one
    // to last (SETTLE_MS) or serve a client left an upstream that answers
    // and closes (a daytime or status service) down for good after an
    // outage, every client refused, its probes all ending before a client
    // came. Whether connections last is the pool's settling, not this.
    this.markUp();
    const pooled: PooledConnection = new PooledConnection(conn, (reason) => {
      const at = this.#idle.indexOf(pooled);
      if (at >= 0) this.#idle.splice(at, 1);
      pooled.close();
      this.stats.dropped++;
      const age = performance.now() - pooled.pooledAt;
      if (age < this.#settleMs) this.#droppedYoung(reason, age);
      this.#fill();
    });
    this.#idle.push(pooled);
    this.#noteFull();
  }

  /** A pooled connection ended `ageMs` after connecting, too soon to have settled. */
  #droppedYoung(reason: DropReason, ageMs: number): void {
    this.#lastYoungDrop = performance.now();
    this.#takenSinceYoungDrop = 0;
    this.#cutAfterIdling = ageMs >= REFUSED_WITHIN_MS;
    this.#markUnsettled(reason, ageMs);
  }

  /** Whether refilling waits for `#retryAt`: dials fail, or pooled connections end young. */
  get #backingOff(): boolean {
    // Starved too: a refill that met EMFILE and dialled again at once spun
    // at 100% CPU, and not even the log got a descriptor's turn.
    return this.#down || this.#unsettled || this.#starved;
  }

  /** How long a new connection must live to count as a working upstream. */
  get #settleMs(): number {
    return Math.min(SETTLE_MS, this.#options.poolMaxIdleMs / 2);
  }

  #recycle(): void {
    const now = performance.now();
    // Only a connection dialled since the trouble began shows it is over:
    // ones from before (at an upstream's connection limit, or alive after
    // its listener died) would declare it fine again and again.
    const since = this.#troubleSince;
    const settled = (p: PooledConnection) =>
      p.pooledAt >= since && now - p.pooledAt >= this.#settleMs;
    // Clients may take every probe before it idles that long (one probe at a
    // time, see #fill): then probes taken, and none ended young for as long,
    // show it too.
    const served = this.#unsettled && this.#takenSinceYoungDrop > 0 &&
      now - this.#lastYoungDrop >= this.#settleMs;
    if (this.#backingOff && (served || this.#idle.some(settled))) this.#markSettled();
    this.#noteFull();
    if (this.#recovering && !this.#backingOff && now - this.#lastYoungDrop >= QUIET_MS) {
      this.#recovered();
    }
    this.#retireExpired(now);
    this.#fill();
  }

  /** Closes the pooled connections older than --pool-max-idle (the pool is oldest first). */
  #retireExpired(now: number): void {
    const oldest = now - this.#options.poolMaxIdleMs;
    let released: Promise<void>[] | null = null; // on a client's take: no array unless needed
    while (this.#idle.length > 0 && this.#idle[0]!.pooledAt <= oldest) {
      const expired = this.#idle.shift()!;
      retire(expired);
      this.stats.recycled++;
      (released ??= []).push(expired.released);
    }
    // Starved, the refill waits out its back-off (2 s at most), but the
    // descriptors being freed are the pool's own to replace these with: at
    // the open-files limit each recycle left the pool empty that long.
    // Once they are free (see PooledConnection.released), and not while a
    // client's dial waits for a descriptor: it comes first.
    if (released && this.#starved) {
      void Promise.all(released).then(() => this.#refillStarved());
    }
  }

  /** Refills a starved pool now, not at the end of its back-off (see #retireExpired). */
  #refillStarved(): void {
    if (this.#closed || !this.#starved || acceptsPaused()) return;
    this.#retryAt = performance.now();
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#fill();
  }
}

/** Whether a dial failed for want of a descriptor or a local port: ferry's, not the upstream's. */
function ferrysShortage(error: unknown): boolean {
  return outOfDescriptorsToDial(error) || outOfLocalPorts(error);
}

/** Closes a connection already out of the pool, so its watch read ending is not a drop. */
function retire(pooled: PooledConnection): void {
  pooled.take();
  pooled.close();
}
