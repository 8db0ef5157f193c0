/**
 * Reaching a target: resolve, connect with the session's signal (which the
 * deadline sweep aborts on connect timeout), and turn every failure into one
 * SOCKS reply code through one table keyed by error class and errno code,
 * never by message text.
 *
 * @module
 */
import { closeQuietly } from "../close_quietly.ts";
import { isOutOfDescriptors, noteShortage, shortageSince } from "../nofile.ts";
import { type Address, ipOfName, unmapIPv4 } from "../protocol/address.ts";
import { Reply } from "../protocol/socks5.ts";
import { type Lookup, lookupAll, LookupsBusy } from "./lookups.ts";

/** Stable names for the ways a dial fails. */
export type DialFailure =
  | "connection-refused"
  | "network-unreachable"
  | "host-unreachable"
  | "name-not-resolved"
  | "not-allowed"
  | "connect-timeout"
  | "lookups-busy"
  | "forwarding-loop"
  | "aborted"
  | "general-failure";

/**
 * The reply code for each failure. A connect timeout answers 0x04 (host
 * unreachable): the host did not answer in time, which is what clients show
 * their users; 0x06 (TTL expired) describes an IP-level event we never see.
 */
export const REPLY_FOR_FAILURE: Readonly<Record<DialFailure, number>> = {
  "connection-refused": Reply.ConnectionRefused,
  "network-unreachable": Reply.NetworkUnreachable,
  "host-unreachable": Reply.HostUnreachable,
  "name-not-resolved": Reply.HostUnreachable,
  "not-allowed": Reply.NotAllowed,
  "connect-timeout": Reply.HostUnreachable,
  "lookups-busy": Reply.GeneralFailure,
  "forwarding-loop": Reply.GeneralFailure,
  "aborted": Reply.GeneralFailure,
  "general-failure": Reply.GeneralFailure,
};

/** A failed dial: `failure` names it, `reply` is the SOCKS5 code, `cause` the original error. */
export class DialError extends Error {
  override readonly name = "DialError";
  readonly failure: DialFailure;
  readonly reply: number;
  /**
   * How the name's other addresses failed, when every one did (see
   * {@linkcode mostTelling}): this error is the one answered, and these are
   * logged after it.
   */
  readonly alsoFailed: readonly DialError[];

  constructor(
    failure: DialFailure,
    message: string,
    options?: ErrorOptions & { alsoFailed?: readonly DialError[] },
  ) {
    super(message, options);
    this.failure = failure;
    this.reply = REPLY_FOR_FAILURE[failure];
    this.alsoFailed = options?.alsoFailed ?? [];
  }
}

/** How a failure for want of descriptors is marked in the log (see messageWithCause). */
const SHORTAGE_MARK = "(ferry is out of descriptors)";

/**
 * An error's message, with its cause's: a DialError wraps the system's error.
 * A shortage of descriptors says it is ferry's, whatever words the system
 * chose ("Too many open files (os error 24)", node:dgram's "bind EMFILE"),
 * so an operator can find every such failure by one phrase and knows to
 * raise the open-files limit rather than look at the target.
 */
export function messageWithCause(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const cause = (error as { cause?: unknown } | null)?.cause;
  const text = cause instanceof Error ? `${message}: ${cause.message}` : message;
  const shortage = isOutOfDescriptors(error) || isOutOfDescriptors(cause);
  const marked = shortage && !text.includes(SHORTAGE_MARK) ? `${text} ${SHORTAGE_MARK}` : text;
  if (!(error instanceof DialError) || error.alsoFailed.length === 0) return marked;
  return [marked, ...error.alsoFailed.map(messageWithCause)].join("; ");
}

/** Errno codes that name a failure, for errors Deno does not give a class of their own. */
const FAILURE_FOR_ERRNO: Readonly<Record<string, DialFailure>> = {
  ECONNREFUSED: "connection-refused",
  ENETUNREACH: "network-unreachable",
  ENETDOWN: "network-unreachable",
  EHOSTUNREACH: "host-unreachable",
  EHOSTDOWN: "host-unreachable",
  ETIMEDOUT: "connect-timeout",
  EACCES: "not-allowed",
  EPERM: "not-allowed",
};

/** Maps a connect error to a failure name: by class first, then by errno code. */
export function classifyConnectError(error: unknown): DialFailure {
  if (error instanceof Deno.errors.ConnectionRefused) return "connection-refused";
  if (error instanceof Deno.errors.NetworkUnreachable) return "network-unreachable";
  if (error instanceof Deno.errors.TimedOut) return "connect-timeout";
  if (error instanceof Deno.errors.NotCapable) return "not-allowed";
  const code = (error as { code?: unknown } | null)?.code;
  const known = typeof code === "string" && Object.hasOwn(FAILURE_FOR_ERRNO, code);
  return known ? FAILURE_FOR_ERRNO[code]! : "general-failure";
}

/**
 * {@linkcode classifyConnectError}, but for a zoned address (`fe80::1%eth0`),
 * which a client can send as a name and the lookup answers unchanged:
 * `Deno.connect` looks the zone up itself, and when it knows no such zone
 * (an unknown interface, or a name on an address that is not link-local,
 * `::1%lo`), it throws an error with neither class nor code. That is the
 * name's failure, answered 0x04, not a general one.
 */
function failureConnectingTo(hostname: string, error: unknown): DialFailure {
  const failure = classifyConnectError(error);
  return failure === "general-failure" && hostname.includes("%") ? "name-not-resolved" : failure;
}

/** Why the session's signal was aborted, if it was: the sweep marks connect timeouts. */
export function abortFailure(signal: AbortSignal): DialFailure {
  const reason = signal.reason as { failure?: DialFailure } | undefined;
  return reason?.failure === "connect-timeout" ? "connect-timeout" : "aborted";
}

/** The error of a dial's step (`connect to HOST`, `resolving HOST`) ended by `signal`. */
function aborted(signal: AbortSignal, step: string): DialError {
  const failure = abortFailure(signal);
  return new DialError(failure, `${step} ${endedBy(failure)}`);
}

/** How an aborted dial ended, for its message. */
const endedBy = (failure: DialFailure) => failure === "connect-timeout" ? "timed out" : "aborted";

/**
 * How long after a shortage of descriptors a failed lookup is tried once
 * more, and, failing again, taken for ferry's failure rather than the name's
 * (see {@linkcode resolverWith}).
 */
const NEAR_SHORTAGE_MS = 5_000;

/** Resolves a name to its addresses for a client IP; see {@linkcode resolverWith}. */
export type NameResolver = (host: string, client: string, signal: AbortSignal) => Promise<string[]>;

/**
 * A resolver of names to their addresses, in the order the system prefers,
 * for a CONNECT's target or a BIND's peer, that asks `lookup`. Throws
 * {@linkcode DialError}: a lookup that failed because ferry was out of
 * descriptors is ferry's failure (`general-failure`), not the name's.
 */
export function resolverWith(lookup: Lookup): NameResolver {
  const resolve = async (
    host: string,
    client: string,
    signal: AbortSignal,
    again = true,
  ): Promise<string[]> => {
    // A session cut short already: a lookup nobody waits for would still
    // take one of the capped slots, and a thread of Deno's, until it ends.
    if (signal.aborted) throw aborted(signal, `resolving ${host}`);
    let results: { address: string }[];
    const started = performance.now();
    try {
      results = await raceAbort(lookup(host, client, signal), signal);
    } catch (error) {
      if (signal.aborted) throw aborted(signal, `resolving ${host}`);
      if (error instanceof LookupsBusy) throw new DialError("lookups-busy", error.message);
      if (shortOfDescriptorsSince(started)) throw shortOfDescriptorsToResolve(host);
      // Deno's answer when --allow-net does not cover the name (or the
      // system's, a sandbox's): a rule, as for an address outside it (0x02),
      // not a name that is missing.
      if ((error as { code?: unknown })?.code === "EPERM") {
        const message = `resolving ${JSON.stringify(host)} is not allowed by ${
          denoAllowsLookup(host) ? "the system" : "--allow-net"
        }`;
        throw new DialError("not-allowed", message, { cause: error });
      }
      // Short of descriptors lately: this lookup may have been too, and a
      // descriptor freed up before anyone saw it. Once more; failing again so
      // soon after a shortage, it is taken for ferry's failure. Blaming the
      // name instead told clients 0x04 for `localhost` in a crowd at
      // --nofile=32; the price is 0x01 for a name that truly does not exist,
      // looked up within 5 s of a shortage.
      if (shortageSince(started - NEAR_SHORTAGE_MS)) {
        if (again) return await resolve(host, client, signal, false);
        throw shortOfDescriptorsToResolve(host);
      }
      throw new DialError("name-not-resolved", `cannot resolve ${JSON.stringify(host)}`, {
        cause: error,
      });
    }
    if (results.length === 0) {
      throw new DialError("name-not-resolved", `no addresses for ${JSON.stringify(host)}`);
    }
    return results.map((r) => r.address);
  };
  return (host, client, signal) => resolve(host, client, signal);
}

/**
 * What `--allow-net` says of `host`, or `null` for a host Deno's permissions
 * cannot spell (a name that is not ASCII, a zoned link-local address): Deno
 * throws for those rather than answer.
 */
export function netPermission(host: string): Deno.PermissionState | null {
  try {
    return Deno.permissions.querySync({ name: "net", host }).state;
  } catch {
    return null;
  }
}

/**
 * Whether `--allow-net` lets ferry look `host` up. For a name Deno cannot
 * spell (`bücher.example`), whose query threw out of the lookup's error
 * handling and left the client with no reply at all, only an unnarrowed
 * `--allow-net` does.
 */
function denoAllowsLookup(host: string): boolean {
  const state = netPermission(host) ?? Deno.permissions.querySync({ name: "net" }).state;
  return state === "granted";
}

/**
 * A lookup that failed for want of a descriptor: ferry's own failure (0x01),
 * as for BIND and UDP at EMFILE, not the name's; messageWithCause() marks it
 * so, and a dial waits for a descriptor on it.
 */
function shortOfDescriptorsToResolve(host: string): DialError {
  const cause = Object.assign(new Error("Too many open files"), { code: "EMFILE" });
  return new DialError("general-failure", `cannot resolve ${JSON.stringify(host)}`, { cause });
}

/** The process's resolver: {@linkcode resolverWith} the process's capped lookups. */
export const resolveName: NameResolver = resolverWith(lookupAll);

/** Whether ferry may open /dev/null (see {@linkcode shortOfDescriptorsSince}); asked once. */
let devNullReadable: boolean | undefined;

/**
 * Whether ferry is out of descriptors (EMFILE, ENFILE), or was at some
 * point since `since` (a lookup's start). Out of descriptors, the system
 * resolver cannot open /etc/hosts or a socket to the name server, and
 * reports the name as not found (ENOTFOUND); asked after a lookup failed,
 * this tells that apart. Opening a file (/dev/null: ferry reads users and
 * configuration files) alone missed shortages that a session ending had
 * relieved in between, and blamed the name (0x04): 8 of a few hundred
 * lookups under a sustained shortage. Accepts and connects that met EMFILE
 * during the lookup tell of most of those; {@linkcode resolverWith} tries the
 * rest once more.
 */
function shortOfDescriptorsSince(since: number): boolean {
  if (shortageSince(since)) return true;
  // Asked first: with --allow-read narrowed to the users file and no
  // --no-prompt, opening it would stop the whole process at Deno's prompt.
  devNullReadable ??= Deno.permissions.querySync({ name: "read", path: "/dev/null" }).state ===
    "granted";
  if (!devNullReadable) return false;
  try {
    Deno.openSync("/dev/null").close();
    return false;
  } catch (error) {
    return isOutOfDescriptors(error);
  }
}

/** Rejects with the signal's reason as soon as it aborts; the work itself is not cancelled. */
export function raceAbort<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * What a forwarder knows of the addresses that are no answer from its
 * upstream: they lead back to its own listener. `skip(ip)` says why an
 * address already found so is not dialled (or `null`); `check(conn)` says
 * why a new connection is no answer (or `null`), and remembers its address
 * for `skip`. A dial closes such a connection and goes on to the name's next
 * address: a name for both loopbacks reaches the upstream on 127.0.0.1 from a
 * forwarder on [::1].
 */
export interface AnswerCheck {
  skip(ip: string): DialError | null;
  check(conn: Deno.TcpConn): Promise<DialError | null>;
}

/**
 * Connects to `address`; a name's addresses are raced, Happy Eyeballs style
 * (see `connectToFirstAnswer`). A name is looked up under `client`'s share
 * of the lookups in progress (see src/upstream/lookups.ts). Rejects with
 * {@linkcode DialError}. The connection has TCP_NODELAY set; keepalive is the
 * session's to turn on once the relay has lasted (see `KEEPALIVE_AFTER_MS`).
 * With `answers`, only a connection that passes it is an answer (see
 * {@linkcode AnswerCheck}).
 */
export function dial(
  address: Address,
  signal: AbortSignal,
  client = "",
  answers?: AnswerCheck,
): Promise<Deno.TcpConn> {
  if (address.type === "domain") {
    // A name that spells an IP address must not wait behind other clients' lookups.
    const ip = ipOfName(address.host);
    if (ip === null) return dialName(address.host, address.port, client, signal, answers);
    return connectChecked(ip, address.port, signal, answers);
  }
  return connectChecked(address.host, address.port, signal, answers);
}

/**
 * RFC 8305 §5's Connection Attempt Delay: how long one address may stay
 * silent before the next is tried alongside it.
 */
export const ATTEMPT_DELAY_MS = 250;

/** Resolves `host` and connects to the first of its addresses that answers. */
async function dialName(
  host: string,
  port: number,
  client: string,
  signal: AbortSignal,
  answers: AnswerCheck | undefined,
): Promise<Deno.TcpConn> {
  let addresses = interleaveFamilies(await resolveName(host, client, signal));
  if (answers) {
    const skipped = addresses.map((ip) => answers.skip(ip));
    const left = addresses.filter((_, i) => skipped[i] === null);
    if (left.length === 0) throw skipped[skipped.length - 1]!;
    addresses = left;
  }
  if (addresses.length === 1) return connectChecked(addresses[0]!, port, signal, answers);
  return connectToFirstAnswer(host, addresses, port, signal, answers);
}

/**
 * RFC 8305 §4: the addresses alternately of each family, starting with the
 * resolver's first choice, so that a family that is broken here (an IPv6
 * route into a black hole) costs one attempt delay, not every address.
 */
export function interleaveFamilies(addresses: readonly string[]): string[] {
  const firstIsV6 = addresses[0]?.includes(":") ?? false;
  const first = addresses.filter((a) => a.includes(":") === firstIsV6);
  const other = addresses.filter((a) => a.includes(":") !== firstIsV6);
  const out: string[] = [];
  for (let i = 0; i < Math.max(first.length, other.length); i++) {
    if (i < first.length) out.push(first[i]!);
    if (i < other.length) out.push(other[i]!);
  }
  return out;
}

/**
 * Happy Eyeballs (RFC 8305 §5): connects to `addresses` in order, starting
 * the next one when the last has failed or has not answered within
 * {@linkcode ATTEMPT_DELAY_MS}. The first connection wins; the attempts
 * still running are aborted, and one that connects anyway is closed. Tried
 * one after another instead, an address that drops the SYN would use up the
 * whole connect timeout and leave the others untried. A connection that
 * fails `answers` counts as a failed attempt (see {@linkcode AnswerCheck}).
 * Rejects with the most telling attempt's {@linkcode DialError} (see
 * {@linkcode mostTelling}), or the session's when `signal` aborts.
 */
export function connectToFirstAnswer(
  host: string,
  addresses: readonly string[],
  port: number,
  signal: AbortSignal,
  answers?: AnswerCheck,
): Promise<Deno.TcpConn> {
  if (signal.aborted) {
    return Promise.reject(aborted(signal, `connect to ${host}`));
  }
  return new Promise((resolve, reject) => {
    const running = new Set<AbortController>();
    let next = 0;
    const failures: unknown[] = []; // in the order the attempts failed
    let settled = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const settle = () => {
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      for (const attempt of running) attempt.abort();
    };
    const onAbort = () => {
      if (settled) return;
      settle();
      reject(aborted(signal, `connect to ${host}`));
    };
    const startNext = () => {
      clearTimeout(timer);
      if (settled) return;
      if (next === addresses.length) {
        if (running.size === 0) {
          settle();
          reject(mostTelling(failures));
        }
        return;
      }
      const attempt = new AbortController();
      running.add(attempt);
      connectChecked(addresses[next++]!, port, attempt.signal, answers).then((conn) => {
        running.delete(attempt);
        if (settled) return closeQuietly(conn);
        settle();
        resolve(conn);
      }, (error) => {
        running.delete(attempt);
        if (settled) return;
        failures.push(error);
        startNext(); // a failure starts the next address at once
      });
      if (next < addresses.length) timer = setTimeout(startNext, ATTEMPT_DELAY_MS);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    startNext();
  });
}

/**
 * The failures of a name's addresses, most telling first: what the target's
 * side said (its host refused: the port is closed; a router said it cannot
 * reach it; it stayed silent) before what this host said of itself (a rule
 * forbids the address; no route for its family, as every IPv6 address has
 * on a host with IPv4 only; anything else). Taking the last attempt's, a
 * client of a closed port on a dual-stack name got 0x03 from such a host
 * where the address alone got 0x05. Ferry's own shortage of descriptors or
 * local ports comes first of all: the session waits it out and dials again.
 */
const FAILURES_MOST_TELLING_FIRST: readonly DialFailure[] = [
  "connection-refused",
  "forwarding-loop",
  "host-unreachable",
  "connect-timeout",
  "not-allowed",
  "network-unreachable",
  "name-not-resolved",
  "general-failure",
  "lookups-busy",
  "aborted",
];

/**
 * Of the failures of every address of a name, the one to answer with (see
 * FAILURES_MOST_TELLING_FIRST; among equals, the first to fail), carrying
 * the others for the log. An error that is no DialError is a fault of
 * ferry's, answered as it is, so that it shows.
 */
export function mostTelling(failures: readonly unknown[]): unknown {
  const dialErrors = failures.filter((error) => error instanceof DialError);
  if (dialErrors.length < failures.length) return failures.find((e) => !(e instanceof DialError));
  const rank = (error: DialError) =>
    outOfDescriptorsToDial(error) || outOfLocalPorts(error)
      ? -1
      : FAILURES_MOST_TELLING_FIRST.indexOf(error.failure);
  let best = dialErrors[0]!;
  for (const error of dialErrors) if (rank(error) < rank(best)) best = error;
  if (dialErrors.length === 1) return best;
  return new DialError(best.failure, best.message, {
    cause: best.cause,
    alsoFailed: dialErrors.filter((error) => error !== best),
  });
}

/**
 * Connects to one IP address that `answers` (if given) does not skip, and
 * checks the connection with it; rejects with {@linkcode DialError}. Without
 * `answers` (every SOCKS dial) no promise is added to the connect's.
 */
function connectChecked(
  hostname: string,
  port: number,
  signal: AbortSignal,
  answers: AnswerCheck | undefined,
): Promise<Deno.TcpConn> {
  if (!answers) return connectToIp(hostname, port, signal);
  const skipped = answers.skip(hostname);
  if (skipped) return Promise.reject(skipped);
  return connectToIp(hostname, port, signal).then(async (conn) => {
    const failure = await answers.check(conn);
    if (failure === null) return conn;
    closeQuietly(conn);
    throw failure;
  });
}

/** Connects to one IP address; rejects with {@linkcode DialError}. */
async function connectToIp(
  hostname: string,
  port: number,
  signal: AbortSignal,
): Promise<Deno.TcpConn> {
  let conn: Deno.TcpConn | undefined;
  try {
    // An IPv4-mapped address (::ffff:127.0.0.1) over IPv4: on an IPv6 socket
    // it is reachable only where IPv6 sockets take IPv4 too (not with
    // net.ipv6.bindv6only=1, which failed it as network-unreachable).
    conn = await Deno.connect({ hostname: unmapIPv4(hostname), port, signal });
    if (connectedToItself(conn)) {
      // Nothing listens there: a connect to a closed port that the kernel
      // gave that very port as its source completes by TCP simultaneous
      // open, and the client got 0x00 and its own bytes back as the answer.
      throw new Deno.errors.ConnectionRefused("connected to itself: nothing listens there");
    }
    conn.setNoDelay(true);
    return conn;
  } catch (error) {
    if (conn) closeQuietly(conn);
    if (isOutOfDescriptors(error)) noteShortage();
    const failure = signal.aborted ? abortFailure(signal) : failureConnectingTo(hostname, error);
    const what = signal.aborted
      ? endedBy(failure)
      : isResetAsAccepted(error)
      ? "was reset as it was accepted"
      : error instanceof Deno.errors.AddrNotAvailable
      ? "found no local port free" // says nothing of the target (see outOfLocalPorts)
      : "failed";
    // Aborted, the error is only the abort's reason: "timed out" says it all.
    throw new DialError(
      failure,
      `connect to ${hostname} ${what}`,
      signal.aborted ? undefined : { cause: error },
    );
  }
}

/** Whether `conn`'s two ends are one address and port (see connectToIp). */
function connectedToItself(conn: Deno.TcpConn): boolean {
  const { localAddr, remoteAddr } = conn;
  return localAddr.port === remoteAddr.port && localAddr.hostname === remoteAddr.hostname;
}

/**
 * Whether `error` is a dial that reached the target, which then reset the
 * connection at once: the connect completes, but on loopback the reset can
 * arrive before it is checked, and the connect fails with ECONNRESET, with
 * EPIPE when a FIN came before the reset (a server that shuts down its side,
 * then closes with SO_LINGER 0), or with ENOTCONN when the reset came between
 * the check and Deno asking for the peer's address. Such a target accepts
 * connections (and may be at its connection limit).
 */
export function resetAsAccepted(error: unknown): boolean {
  return error instanceof DialError && isResetAsAccepted(error.cause);
}

function isResetAsAccepted(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.NotConnected;
}

/**
 * Whether a dial failed for want of a descriptor in ferry (EMFILE, ENFILE):
 * ferry's own shortage, which says nothing of the target.
 */
export function outOfDescriptorsToDial(error: unknown): boolean {
  return error instanceof DialError && isOutOfDescriptors(error.cause);
}

/**
 * Whether a connect failed for want of a local port (EADDRNOTAVAIL): every
 * ephemeral port is taken towards that address and port, by connections
 * open or in TIME_WAIT (ferry closing first to one upstream, 470 a second
 * for 60 s, takes all 28,232 of Linux's). Ferry's own shortage too, which
 * says nothing of the target, and ends as connections close.
 */
export function outOfLocalPorts(error: unknown): boolean {
  return error instanceof DialError && error.cause instanceof Deno.errors.AddrNotAvailable;
}
