/**
 * What every proxied connection has in common, whatever opened it (a SOCKS
 * handshake or a port forward): one AbortController, deadlines on the shared
 * sweep, the relay phase, refusal with a bounded wait for the client's FIN,
 * closing both sockets, and the one log line at the end.
 *
 * One AbortController per session: the deadline sweep aborts it on handshake
 * or idle timeout, shutdown aborts it, the relay aborts it on the first error,
 * a client's reset read during a slow dial aborts it (CLIENT_WATCH_AFTER_MS),
 * and aborting closes both sockets, which ends every pending read. A connect
 * timeout aborts only the dial, so the client still gets its failure reply.
 *
 * @module
 */
import { closeQuietly } from "./close_quietly.ts";
import type { Deadlines, Expirable } from "./deadlines.ts";
import { logSession } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { isOutOfDescriptors } from "./nofile.ts";
import { type Address, formatPeer, ipKey, unmapIPv4 } from "./protocol/address.ts";
import { ProtocolError } from "./protocol/decoded.ts";
import { FIRST_BUFFER_SIZE, relay, type RelayEnd, writeAll } from "./relay.ts";
import {
  DescriptorWait,
  freeSpareDescriptor,
  targetHeld,
  targetReleased,
} from "./spare_descriptors.ts";
import {
  abortFailure,
  type AnswerCheck,
  dial,
  DialError,
  messageWithCause,
  outOfDescriptorsToDial,
} from "./upstream/dial.ts";
import { WaitingClient } from "./waiting_client.ts";

/** Outcomes whose name does not say what went wrong (see errorDetail). */
const OUTCOMES_WITH_DETAIL = new Set([
  "protocol-error",
  "general-failure",
  "name-not-resolved",
  // Deno's permission (--allow-net narrowed), or the system's (EACCES, EPERM).
  "not-allowed",
]);

/**
 * The `error` field of a session line whose outcome name does not say what
 * went wrong: which byte of the handshake was wrong, which system error a
 * connect failed with (port 0, a blackhole route), what the resolver said
 * (a name that does not exist, a server that failed), how each address of a
 * name failed when none connected, or an unexpected error.
 */
export function errorDetail(outcome: string, error: unknown): string | undefined {
  // A name whose every address failed: the outcome is one of them (see
  // mostTelling), and the line says how each failed.
  const severalFailed = error instanceof DialError && error.alsoFailed.length > 0;
  if (OUTCOMES_WITH_DETAIL.has(outcome) || severalFailed) return messageWithCause(error);
  if (outcome !== "error") return undefined;
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/** What a session shares with every other session of its listener. */
export interface SessionContext {
  /** The listener's address as logged (`127.0.0.1:1080`), so lines of several listeners can be told apart. */
  readonly listen: string;
  readonly deadlines: Deadlines;
  readonly metrics: Metrics;
  readonly handshakeTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /**
   * Whether session lines are logged: read once when the server starts
   * (logging is configured before that and never changed), so that a session
   * asks neither LogTape nor the clock for a line nobody will see.
   */
  readonly logSessions: boolean;
  /**
   * The local address of a connection that a session of this listener holds
   * to one of `peers` (one of `clientIp`'s sessions first), or `null`. A
   * BIND listens there: the peer (an FTP server the client reached with
   * CONNECT) can route to it, and sees the address its control connection
   * comes from.
   */
  readonly sourceFor: (peers: ReadonlySet<string>, clientIp: string) => string | null;
}

/** The phases a deadline can cut short, and the outcome each timeout is logged as. */
const TIMEOUT_OUTCOME = {
  handshake: "handshake-timeout",
  connect: "connect-timeout",
  relay: "idle-timeout",
  linger: "linger-done", // only after a refusal, whose outcome is already recorded
} as const;
/** A phase of a session's life. */
export type Phase = keyof typeof TIMEOUT_OUTCOME;

/** Why a session was aborted from outside the relay: a deadline or shutdown. */
export class SessionAbort extends Error {
  override readonly name = "SessionAbort";
  /** The outcome to log; `connect-timeout` doubles as a {@linkcode DialError} failure name. */
  readonly failure: string;

  constructor(failure: string) {
    super(failure);
    this.failure = failure;
  }
}

/** The client closed (or reset) before the handshake finished. */
export class ClientGone extends Error {
  override readonly name = "ClientGone";
}

/**
 * A session's AbortController: aborting it (the sweep, shutdown, the relay's
 * first error) also runs `onAbort`, which closes the sockets and so ends every
 * pending read. A subclass, not an "abort" event listener: adding a listener
 * costs about ten times as much as the controller, on every session.
 */
class SessionController extends AbortController {
  readonly #onAbort: () => void;

  constructor(onAbort: () => void) {
    super();
    this.#onAbort = onAbort;
  }

  override abort(reason?: unknown): void {
    if (this.signal.aborted) return;
    super.abort(reason);
    this.#onAbort();
  }
}

/**
 * What negotiation hands on to the relay: the connected target, and the bytes
 * the client sent ahead of the reply, which go to the target first.
 */
export interface Relaying {
  readonly target: RelayEnd;
  readonly early: Uint8Array;
  /** The client as the relay reads it, when not the connection itself (see WaitingClient). */
  readonly client?: RelayEnd | undefined;
}

/**
 * What a session relays to, or otherwise closes when it ends: a TCP
 * connection, or (UDP ASSOCIATE) something with no keepalive to set.
 */
export interface RelayTarget {
  close(): void;
  setKeepAlive?(keepAlive: boolean): void;
}

/** Early bytes of a session whose client cannot have sent any. */
export const NO_EARLY_BYTES: Uint8Array = new Uint8Array(0);

/**
 * How long a relay runs before its sockets get TCP keepalive. Keepalive only
 * matters to a connection idle for a long time (Linux sends the first probe
 * after two hours), and setting it on both sockets at once was two of the
 * thirty-odd system calls of a short session (strace), for nothing.
 */
export const KEEPALIVE_AFTER_MS = 1000;

/**
 * Sets TCP keepalive on `conn`; false when Deno refuses, as it does while a
 * write is pending on the socket ("Unable to get resources": a download to
 * a slow reader, at the moment the relay has lasted KEEPALIVE_AFTER_MS) or
 * once it has failed.
 */
function keepAliveOn(conn: Pick<RelayTarget, "setKeepAlive">): boolean {
  try {
    conn.setKeepAlive?.(true);
    return true;
  } catch {
    return false;
  }
}

/**
 * How long a dial may take before the session reads its client meanwhile
 * (see WaitingClient). A client that resets, having given up on a target
 * slow to answer, then ends the dial at once, instead of holding two
 * descriptors until the connect timeout and leaving the target a connection
 * nobody uses. Not from the start: nearly every dial ends sooner, and a read
 * handed over to the relay costs every session.
 */
export const CLIENT_WATCH_AFTER_MS = 250;

/** The session line's message, as a template (LogTape's `rawMessage`; see logSession). */
const WITH_TARGET = "session {id} {client} → {target}: {outcome}";
const NO_TARGET = "session {id} {client}: {outcome}";

/** Failure replies are followed by a wait for the client's FIN, at most this long. */
const LINGER_MS = 2000;

let lastSessionId = 0;

/**
 * One client connection. Subclasses implement {@linkcode negotiate}: whatever
 * happens between accept and relay. Create it, then await `run()`; it never
 * rejects.
 */
export abstract class ProxySession implements Expirable {
  readonly id = ++lastSessionId;
  /** Set when `run()` starts watching the session. */
  deadline = Infinity;
  /** Where the deadline sweep keeps this session (see {@linkcode Expirable}). */
  slot = -1;
  readonly controller: AbortController = new SessionController(() => {
    this.#closeSockets();
    this.#dialAbort?.abort(this.controller.signal.reason);
  });
  protected readonly client: Deno.TcpConn;
  protected readonly context: SessionContext;
  /**
   * The session's one buffer allocation. Allocating a typed array with a
   * buffer of its own cost about a microsecond here, a view of an existing
   * buffer under a tenth of that, and a SOCKS session used to make four.
   */
  readonly #buffer = new ArrayBuffer(2 * FIRST_BUFFER_SIZE);
  /**
   * The relay's first read buffers, client → target then target → client:
   * two halves of the one allocation. Until the relay starts, a subclass may
   * use them for its handshake (see `SocksSession`); whatever it keeps there
   * must have been sent before the relay starts.
   */
  protected readonly firstBuffers: readonly [Uint8Array<ArrayBuffer>, Uint8Array<ArrayBuffer>] = [
    new Uint8Array(this.#buffer, 0, FIRST_BUFFER_SIZE),
    new Uint8Array(this.#buffer, FIRST_BUFFER_SIZE, FIRST_BUFFER_SIZE),
  ];
  /** When the session started, for its log line's `ms`; 0 when there is no line. */
  readonly #started: number;
  #phase: Phase;
  #target: RelayTarget | null = null;
  /**
   * In the relay until keepalive is on: the deadline is then the time to
   * turn it on, and activity only moves `#activeAt`, from which the idle
   * deadline is worked out once keepalive is on.
   */
  #keepAliveDue = false;
  #clientKeptAlive = false;
  #targetKeptAlive = false;
  #activeAt = 0;
  #socketsClosed = false;
  /** Aborts the dial in progress on connect timeout; the session goes on to reply. */
  #dialAbort: AbortController | null = null;
  /**
   * In a dial until the client is read meanwhile: the deadline is then the
   * time to start reading it (CLIENT_WATCH_AFTER_MS), and the connect
   * deadline waits in `#connectDeadline`.
   */
  #watchDue = false;
  #connectDeadline = 0;
  /** The client, read while a slow dial goes on; `null` when not (see CLIENT_WATCH_AFTER_MS). */
  #watching: WaitingClient | null = null;
  /** Shutdown's abort of a session that was connecting: it replies, then ends without lingering. */
  #cutShort: SessionAbort | null = null;
  /** The target's error, once the relay is ending gently towards the client after it. */
  #targetError: Error | null = null;
  // Fields of the session's log line.
  protected protocol: string | null = null;
  protected user: string | null = null;
  protected requested: string | null = null;
  #outcome = "ok";
  /**
   * What went wrong, for outcomes whose name does not say it: `error`, a
   * protocol error, a general failure (the system's error). Logged as `error`.
   */
  #errorDetail: string | undefined;
  /** Set once a refusal has recorded the outcome; later errors are its aftermath. */
  #refused = false;
  #up = 0;
  #down = 0;

  constructor(client: Deno.TcpConn, context: SessionContext, firstPhase: Phase) {
    this.client = client;
    this.context = context;
    this.#started = context.logSessions ? performance.now() : 0;
    this.#phase = firstPhase;
  }

  /**
   * Everything between accept and relay. Resolves with what to relay to, or
   * `null` when the session is over without a relay (refused, or a UDP
   * association that has ended). Returning rather than relaying from inside
   * leaves no negotiation frames alive for the whole of the relay.
   */
  protected abstract negotiate(): Promise<Relaying | null>;

  /**
   * Keeps bytes the client sent while its dial went on, after any it sent
   * ahead of that: they go to the target first. Says whether there is room
   * for more; if not, the rest stays in the kernel until the relay reads it.
   */
  protected abstract keepEarlyBytes(bytes: Uint8Array): boolean;

  /** Takes the bytes kept for the target (see {@linkcode keepEarlyBytes}); they go to it first. */
  protected abstract takeEarlyBytes(): Uint8Array;

  /**
   * What negotiation hands the relay for `target`: the client as the relay
   * should read it (`client`, by default {@linkcode releaseClient}'s), and
   * the early bytes, taken after the reading has stopped, as it may add to
   * them until then.
   */
  protected relayingTo(target: RelayEnd, client = this.releaseClient()): Relaying {
    return { target, early: this.takeEarlyBytes(), client };
  }

  /** Extra fields for the session's log line. */
  protected logFields(): Record<string, unknown> {
    return {};
  }

  /**
   * The local address of this session's TCP connection to one of `peers`
   * (IP addresses as {@linkcode expectedPeers} gives them), or `null`: where
   * ferry already reaches that host from (see `SessionContext.sourceFor`).
   */
  sourceFor(peers: ReadonlySet<string>): string | null {
    const target = this.#target;
    if (target === null || !("remoteAddr" in target) || this.#socketsClosed) return null;
    const { remoteAddr, localAddr } = target as Deno.TcpConn;
    if (!peers.has(ipKey(remoteAddr.hostname))) return null;
    return unmapIPv4(localAddr.hostname);
  }

  /**
   * The client's IP, an IPv4 client of a `[::]` listener as IPv4: the key of
   * its share of lookups (the process's, whichever listener it used) and of
   * UDP associations (its listener's).
   */
  protected get clientIp(): string {
    return unmapIPv4(this.client.remoteAddr.hostname);
  }

  /** Whether the client connected from `ip` (see {@linkcode clientIp}). */
  isFrom(ip: string): boolean {
    return this.clientIp === ip;
  }

  /** The client's address as `ip:port` (see {@linkcode formatPeer}). */
  get clientAddress(): string {
    return formatPeer(this.client.remoteAddr);
  }

  /** Called by the deadline sweep. */
  expire(): void {
    if (this.#watchDue) {
      // Not a timeout: the dial has taken long enough to want the client read meanwhile.
      this.#watchDue = false;
      this.#watchClient();
      this.deadline = this.#connectDeadline;
      this.context.deadlines.watch(this);
      return;
    }
    const idleAt = this.#activeAt + this.context.idleTimeoutMs;
    if (this.#keepAliveDue && this.context.deadlines.now < idleAt) {
      // Not a timeout: the relay has lasted long enough to want keepalive.
      // A socket busy with a write of ours refuses it: tried again a
      // second later (or at the idle deadline, if that is sooner).
      this.#keepAliveDue = !this.#turnOnKeepAlive();
      this.deadline = this.#keepAliveDue
        ? Math.min(idleAt, this.context.deadlines.now + KEEPALIVE_AFTER_MS)
        : idleAt;
      this.context.deadlines.watch(this);
      return;
    }
    const reason = new SessionAbort(TIMEOUT_OUTCOME[this.#phase]);
    if (this.#phase === "connect" && this.#dialAbort) this.#dialAbort.abort(reason);
    else this.#end(reason);
  }

  /**
   * Cuts the session short (shutdown). Mid-connect only the wait is aborted,
   * as a connect timeout does, so the client still gets a failure reply
   * (0x01, SOCKS4 91) rather than a bare close; the session then ends at once.
   */
  abort(failure: string): void {
    const reason = new SessionAbort(failure);
    if (this.#phase === "connect" && this.#dialAbort && !this.controller.signal.aborted) {
      this.#cutShort = reason;
      this.#dialAbort.abort(reason);
    } else {
      this.#end(reason);
    }
  }

  /**
   * Aborts the session for `reason` (a timeout, shutdown); but while it waits
   * for the client to close after the target failed, for the target's error:
   * that, not the end of the wait, is what its line reports.
   */
  #end(reason: SessionAbort): void {
    const lingering = this.#targetError !== null && this.#phase === "linger";
    this.controller.abort(lingering ? this.#targetError : reason);
  }

  /** Runs the session to its end. Never rejects. */
  async run(): Promise<void> {
    const { deadlines, handshakeTimeoutMs, connectTimeoutMs } = this.context;
    const firstTimeout = this.#phase === "handshake" ? handshakeTimeoutMs : connectTimeoutMs;
    deadlines.watchFor(this, firstTimeout);
    try {
      this.client.setNoDelay(true); // keepalive waits for a relay that lasts (KEEPALIVE_AFTER_MS)
      const relaying = await this.negotiate();
      if (relaying) await this.#relay(relaying);
    } catch (error) {
      if (!this.#refused) {
        this.#outcome = this.outcomeOf(error);
        const reason = this.controller.signal.aborted ? this.controller.signal.reason : error;
        this.#errorDetail = errorDetail(this.#outcome, reason);
      }
    } finally {
      deadlines.unwatch(this);
      this.#closeSockets();
      this.#logEnd();
    }
  }

  /** Records an outcome without ending the session (e.g. `unknown-protocol`). */
  protected setOutcome(outcome: string, detail?: string): void {
    this.#outcome = outcome;
    this.#errorDetail = detail;
  }

  /** Enters `phase`, with its deadline `timeoutMs` from now. */
  protected enter(phase: Phase, timeoutMs: number): void {
    this.#phase = phase;
    this.#dialAbort = null;
    this.#keepAliveDue = false;
    this.#watchDue = false;
    // Again, if a sweep already expired the last phase (and, the last one
    // watched, stopped the clock).
    this.context.deadlines.watchFor(this, timeoutMs);
  }

  /** Registers a target socket so aborting and ending the session close it. */
  protected adoptTarget(target: RelayTarget): void {
    const first = this.#target === null;
    this.#target = target;
    if (this.#socketsClosed) closeQuietly(target);
    else if (first) targetHeld(); // released in #closeSockets; see DescriptorWait.next()
  }

  /**
   * Dials `address` under the connect deadline; the connection is adopted
   * (closed with the session). Throws {@linkcode DialError}. With `answers`,
   * only a connection that passes it is taken (see {@linkcode AnswerCheck}).
   */
  protected dialTarget(address: Address, answers?: AnswerCheck): Promise<Deno.TcpConn> {
    return this.waitInConnectPhase(
      this.context.connectTimeoutMs,
      (signal) => {
        const dialOnce = () => dial(address, signal, this.clientIp, answers);
        return dialOnce().catch((error) =>
          whenDescriptorFree(error, outOfDescriptorsToDial, dialOnce, signal)
        );
      },
      true,
    ).then((target) => {
      if (this.#watchDue) {
        // Dialled in time: no reading the client, whatever comes before the relay.
        this.#watchDue = false;
        this.deadline = this.#connectDeadline;
      }
      this.adoptTarget(target);
      if (this.controller.signal.aborted) throw this.controller.signal.reason;
      return target;
    });
  }

  /**
   * Opens a socket of the session's own, a BIND listener or a UDP relay
   * socket, under the connect deadline. Short of a descriptor it waits for
   * one as a dial does (see {@linkcode whenDescriptorFree}); at the deadline
   * it throws the shortage, and at shutdown the session's reason. It failed
   * at once, so a burst of UDP ASSOCIATE requests at the open-files limit
   * got 0x01 where a burst of CONNECTs was served.
   */
  protected openInConnectPhase<T>(open: () => Promise<T>): Promise<T> {
    return this.waitInConnectPhase(this.context.connectTimeoutMs, (signal) => {
      const openOnce = () => signal.aborted ? Promise.reject(signal.reason) : open();
      return open().catch((error) =>
        whenDescriptorFree(error, isOutOfDescriptors, openOnce, signal)
      );
    });
  }

  /**
   * Runs `work` in the connect phase, with a deadline `timeoutMs` from now.
   * The deadline aborts only `work`'s signal, with a {@linkcode SessionAbort}
   * `connect-timeout`, so the session can still send its failure reply;
   * shutdown aborts the session as usual. With `watchClient`, a wait that
   * lasts reads the client meanwhile (see CLIENT_WATCH_AFTER_MS) until
   * {@linkcode releaseClient}; a wait that reads it itself (a BIND's for its
   * peer) must not ask for that.
   */
  protected waitInConnectPhase<T>(
    timeoutMs: number,
    work: (signal: AbortSignal) => Promise<T>,
    watchClient = false,
  ): Promise<T> {
    if (this.controller.signal.aborted) return Promise.reject(this.controller.signal.reason);
    // Shutdown came between two waits (a BIND's lookup and its accept).
    if (this.#cutShort) return Promise.reject(this.#cutShort);
    this.enter("connect", timeoutMs);
    if (watchClient && this.#watching === null && timeoutMs > CLIENT_WATCH_AFTER_MS) {
      this.#watchDue = true;
      this.#connectDeadline = this.deadline;
      this.deadline = this.context.deadlines.now + CLIENT_WATCH_AFTER_MS; // now: fresh from enter()
    }
    // Aborted by the deadline alone, or with the session by SessionController:
    // one controller instead of an AbortSignal.any() per session. The next
    // phase drops it (enter()).
    this.#dialAbort = new AbortController();
    return work(this.#dialAbort.signal);
  }

  /**
   * Whether shutdown cut the session short during a wait that has ended
   * since: one whose work took no signal (a UDP relay socket's bind) ran on.
   */
  protected get cutShort(): boolean {
    return this.#cutShort !== null;
  }

  /**
   * Starts reading the client during a dial: a reset aborts the session (and
   * so the dial), a FIN stops the reading (a client may half-close and wait
   * for the answer), and bytes go to {@linkcode keepEarlyBytes}.
   */
  #watchClient(): void {
    const watching = new WaitingClient(this.client, (bytes) => this.keepEarlyBytes(bytes));
    this.#watching = watching;
    // Rejects only before release(): the relay sees later resets itself.
    watching.gone.catch((error) => this.controller.abort(error));
  }

  /**
   * Stops reading the client during dials; returns the client as the relay
   * should read it (the read in flight first), or `undefined` when it was
   * never read meanwhile. Before taking the early bytes: the reading may add
   * to them until then.
   */
  protected releaseClient(): RelayEnd | undefined {
    const watching = this.#watching;
    if (watching === null) return undefined;
    this.#watching = null;
    return watching.release();
  }

  /** Counts bytes carried outside the TCP relay (UDP payloads); `up` is client → target. */
  protected countBytes(up: number, down: number): void {
    this.#up += up;
    this.#down += down;
  }

  /**
   * Dials `address`; on failure sends `failureReply(error)`, refuses, and
   * resolves with `null`.
   */
  protected connectTo(
    address: Address,
    failureReply: (error: DialError) => Uint8Array,
  ): Promise<Deno.TcpConn | null> {
    return this.dialTarget(address).catch((error) => {
      if (!(error instanceof DialError)) throw error;
      return this.refuseDial(error, failureReply);
    });
  }

  /**
   * Refuses for a failed dial or name lookup: `failureReply(error)`, with the
   * failure as the outcome. An abort is rethrown, unless shutdown cut the
   * wait short: the client still gets its reply then (see `abort()`).
   */
  protected refuseDial(
    error: DialError,
    failureReply: (error: DialError) => Uint8Array,
  ): Promise<null> {
    if (error.failure === "aborted" && (!this.#cutShort || this.controller.signal.aborted)) {
      return Promise.reject(error);
    }
    return this.refuse(failureReply(error), error.failure, errorDetail(error.failure, error));
  }

  /** Relays until both directions end; the early bytes from the client go to the target first. */
  async #relay({ target, early, client }: Relaying): Promise<void> {
    // Shutdown came after the wait it aborted had ended: while a forwarder
    // confirmed that its dial was no loop, say, or a reply was written.
    if (this.#cutShort) this.controller.abort(this.#cutShort);
    if (this.controller.signal.aborted) throw this.controller.signal.reason;
    const { deadlines, idleTimeoutMs } = this.context;
    this.enter("relay", Math.min(idleTimeoutMs, KEEPALIVE_AFTER_MS));
    this.#keepAliveDue = true;
    this.#activeAt = deadlines.now;
    const totals = await relay(client ?? this.client, target, {
      early,
      controller: this.controller,
      onActivity: () => {
        if (this.#keepAliveDue) this.#activeAt = deadlines.now;
        else this.deadline = deadlines.now + (this.#targetError ? LINGER_MS : idleTimeoutMs);
      },
      // The client gets what the target sent and a FIN, and its upload is
      // dropped until it closes; bytes still reaching it extend the wait.
      onTargetFailure: (error) => {
        this.#targetError = error instanceof Error ? error : new Error(String(error));
        this.enter("linger", LINGER_MS);
      },
      onEnd: () => this.#closeSockets(),
      initialBuffers: this.firstBuffers,
    });
    this.#up += totals.up;
    this.#down += totals.down;
    if (this.controller.signal.aborted) throw this.controller.signal.reason;
    if (this.#targetError) throw this.#targetError;
  }

  /**
   * Refuses: records the outcome, sends the failure `reply`, then waits
   * (bounded) for the client to close first, so the reply is never destroyed
   * by a reset from closing with unread input, and the TIME_WAIT stays on the
   * client's side. The outcome comes first: a client that resets without
   * reading the reply (one trying passwords) is still logged as refused.
   */
  protected async refuse(reply: Uint8Array, outcome: string, detail?: string): Promise<null> {
    this.#refused = true;
    this.releaseClient(); // the refusal reads the client itself
    if (this.#cutShort) {
      this.#outcome = this.#cutShort.failure; // the reply, and no lingering at shutdown
      await writeAll(this.client, reply).catch(() => {});
      return null;
    }
    this.#outcome = outcome;
    this.#errorDetail = detail;
    this.enter("linger", LINGER_MS); // bounds the reply's write too
    try {
      await writeAll(this.client, reply);
      const scratch = new Uint8Array(512);
      while ((await this.client.read(scratch)) !== null) { /* discard */ }
    } catch {
      // reset, or closed by the linger deadline: either way we are done
    }
    return null; // nothing to relay: negotiate() can end with `return this.refuse(…)`
  }

  /** The outcome an error stands for; an abort's reason wins over the error it caused. */
  protected outcomeOf(error: unknown): string {
    const reason = this.controller.signal.aborted
      ? this.controller.signal.reason
      : this.#cutShort ?? error;
    if (reason instanceof SessionAbort) return reason.failure;
    if (reason instanceof DialError) return reason.failure;
    if (reason instanceof ClientGone) return "client-closed";
    if (reason instanceof ProtocolError) return "protocol-error";
    if (
      reason instanceof Deno.errors.ConnectionReset || reason instanceof Deno.errors.BrokenPipe ||
      reason instanceof Deno.errors.ConnectionAborted || reason instanceof Deno.errors.NotConnected
    ) return "reset";
    return "error";
  }

  /** Turns keepalive on where it is not yet; false while a socket refused it (see keepAliveOn()). */
  #turnOnKeepAlive(): boolean {
    if (this.#socketsClosed) return true;
    this.#clientKeptAlive ||= keepAliveOn(this.client);
    this.#targetKeptAlive ||= this.#target === null || keepAliveOn(this.#target);
    return this.#clientKeptAlive && this.#targetKeptAlive;
  }

  #closeSockets(): void {
    // Once: closing a closed Deno resource throws, and an exception per
    // session (abort listener, relay end, then the final cleanup) is not free.
    if (this.#socketsClosed) return;
    this.#socketsClosed = true;
    // Still read (the dial ended without a relay): a read failing now is no reset.
    this.releaseClient();
    closeQuietly(this.client);
    if (this.#target) {
      closeQuietly(this.#target);
      targetReleased();
    }
  }

  #logEnd(): void {
    this.context.metrics.sessionEnded(this.#outcome, this.#up, this.#down);
    if (!this.context.logSessions) return;
    const { id, clientAddress: client, requested: target } = this;
    const outcome = this.#outcome;
    const properties = {
      event: "session",
      id,
      listen: this.context.listen,
      client,
      user: this.user,
      protocol: this.protocol,
      target,
      outcome,
      up: this.#up,
      down: this.#down,
      ms: Math.round(performance.now() - this.#started),
      ...this.logFields(),
      ...(this.#errorDetail === undefined ? {} : { error: this.#errorDetail }),
    };
    // Without a target (no request got that far) the message says nothing of one, not "→ null".
    if (target === null) {
      logSession(["session ", id, " ", client, ": ", outcome, ""], NO_TARGET, properties);
    } else {
      logSession(
        ["session ", id, " ", client, " → ", target, ": ", outcome, ""],
        WITH_TARGET,
        properties,
      );
    }
  }
}

/**
 * After a client's dial (or a socket's opening) failed with `error`: if for
 * want of a descriptor (`short`), tries again once a forwarder's pool has
 * given one up, or, with none to give, once one may have freed up (see
 * src/spare_descriptors.ts), until `signal` aborts. ferry's own shortage
 * says nothing of the target, so at the connect deadline the error is still
 * the shortage (0x01), not a timeout. Aborted otherwise (shutdown), `retry`
 * must fail at once with something else than a shortage.
 */
async function whenDescriptorFree<T>(
  error: unknown,
  short: (error: unknown) => boolean,
  retry: () => Promise<T>,
  signal: AbortSignal,
): Promise<T> {
  if (!short(error)) throw error;
  using wait = new DescriptorWait();
  for (;;) {
    if (!await freeSpareDescriptor() && !await wait.next(signal)) throw error; // no stall
    if (signal.aborted && abortFailure(signal) === "connect-timeout") throw error;
    try {
      return await retry(); // aborted otherwise: fails at once, as such
    } catch (again) {
      if (!short(again)) throw again;
      error = again;
    }
  }
}
