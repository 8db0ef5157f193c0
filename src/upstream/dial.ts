/**
 * Reaching a target: resolve, connect with the session's signal (which the
 * deadline sweep aborts on connect timeout), and turn every failure into one
 * SOCKS reply code through one table keyed by error class and errno code,
 * never by message text.
 *
 * @module
 */
import { lookup } from "node:dns/promises";
import { closeQuietly } from "../close_quietly.ts";
import type { Address } from "../protocol/address.ts";
import { Reply } from "../protocol/socks5.ts";

/** Stable names for the ways a dial fails. */
export type DialFailure =
  | "connection-refused"
  | "network-unreachable"
  | "host-unreachable"
  | "name-not-resolved"
  | "not-allowed"
  | "connect-timeout"
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
  "aborted": Reply.GeneralFailure,
  "general-failure": Reply.GeneralFailure,
};

/** A failed dial: `failure` names it, `reply` is the SOCKS5 code, `cause` the original error. */
export class DialError extends Error {
  override readonly name = "DialError";
  readonly failure: DialFailure;
  readonly reply: number;

  constructor(failure: DialFailure, message: string, options?: ErrorOptions) {
    super(message, options);
    this.failure = failure;
    this.reply = REPLY_FOR_FAILURE[failure];
  }
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

/** Why the session's signal was aborted, if it was: the sweep marks connect timeouts. */
function abortFailure(signal: AbortSignal): DialFailure {
  const reason = signal.reason as { failure?: DialFailure } | undefined;
  return reason?.failure === "connect-timeout" ? "connect-timeout" : "aborted";
}

/** Resolves a name to its addresses, in the order the system prefers. */
async function resolve(host: string, signal: AbortSignal): Promise<string[]> {
  let results: { address: string }[];
  try {
    results = await raceAbort(lookup(host, { all: true, verbatim: true }), signal);
  } catch (error) {
    if (signal.aborted) throw new DialError(abortFailure(signal), `resolving ${host} aborted`);
    throw new DialError("name-not-resolved", `cannot resolve ${JSON.stringify(host)}`, {
      cause: error,
    });
  }
  if (results.length === 0) {
    throw new DialError("name-not-resolved", `no addresses for ${JSON.stringify(host)}`);
  }
  return results.map((r) => r.address);
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
 * Connects to `address`, trying each resolved address in turn. Rejects with
 * {@linkcode DialError}. The connection has TCP_NODELAY set; keepalive is the
 * session's to turn on once the relay has lasted (see `KEEPALIVE_AFTER_MS`).
 */
export function dial(address: Address, signal: AbortSignal): Promise<Deno.TcpConn> {
  return address.type === "domain"
    ? dialName(address.host, address.port, signal)
    : connectToIp(address.host, address.port, signal);
}

/** Resolves `host`, then connects to each address in turn until one answers. */
async function dialName(host: string, port: number, signal: AbortSignal): Promise<Deno.TcpConn> {
  let last: DialError | undefined;
  for (const hostname of await resolve(host, signal)) {
    try {
      return await connectToIp(hostname, port, signal);
    } catch (error) {
      if (signal.aborted) throw error;
      last = error as DialError;
    }
  }
  throw last!;
}

/** Connects to one IP address; rejects with {@linkcode DialError}. */
async function connectToIp(
  hostname: string,
  port: number,
  signal: AbortSignal,
): Promise<Deno.TcpConn> {
  let conn: Deno.TcpConn | undefined;
  try {
    conn = await Deno.connect({ hostname, port, signal });
    conn.setNoDelay(true);
    return conn;
  } catch (error) {
    if (conn) closeQuietly(conn);
    const failure = signal.aborted ? abortFailure(signal) : classifyConnectError(error);
    const what = signal.aborted ? "aborted" : "failed";
    throw new DialError(failure, `connect to ${hostname} ${what}`, { cause: error });
  }
}
