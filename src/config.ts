/**
 * The one typed configuration object, and the validation that builds it from
 * the raw strings of the command line. Every problem is collected and reported
 * at once, each naming the flag, the bad value and what was expected.
 *
 * @module
 */

import { isAbsolute } from "node:path";
import {
  addressOf,
  formatIPv6,
  ipKey,
  isLoopbackIp,
  parseIPv4,
  parseIPv6,
  unmapIPv4,
} from "./protocol/address.ts";
import { isOutOfDescriptors } from "./nofile.ts";

/** Log levels the command line accepts. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
/** A log level. */
export type LogLevel = typeof LOG_LEVELS[number];

/**
 * The level a `--log-level` value names, or null. Case does not matter, and
 * `warning` (LogTape's name for the level, which text lines show) means `warn`,
 * so the spellings operators bring from other tools (`WARN`, `warning`) work.
 */
export function logLevelOf(text: string): LogLevel | null {
  const word = text.trim().toLowerCase();
  const level = word === "warning" ? "warn" : word;
  return (LOG_LEVELS as readonly string[]).includes(level) ? level as LogLevel : null;
}
/** Log formats the command line accepts. */
export const LOG_FORMATS = ["text", "json"] as const;
/** A log format: logfmt-style text, or one JSON object a line. */
export type LogFormat = typeof LOG_FORMATS[number];

/** A log format in any case (`JSON`), as log levels are taken; `null` if it is none. */
export function logFormatOf(text: string): LogFormat | null {
  const word = text.trim().toLowerCase();
  return (LOG_FORMATS as readonly string[]).includes(word) ? word as LogFormat : null;
}

/**
 * Most connections `--pool` keeps dialled per upstream. Each holds a
 * descriptor and one of the upstream's connection slots, and a pool is
 * filled in one go: 200,000 took every descriptor before ferry could even
 * say it was listening.
 */
export const MAX_POOL = 1024;

/**
 * Shortest `--pool-max-idle`. Pooled connections older than it are replaced,
 * so below the time a dial and the sweep take they are retired as fast as
 * the pool dials them: 1ms redialled about 19 times a second per pooled
 * connection, and not one reached a client.
 */
export const POOL_MAX_IDLE_MIN: Minimum = {
  ms: 1000,
  problem:
    "expected at least 1s: younger pooled connections would be replaced as fast as they are dialled",
};

/** An address to listen on. `hostname` has no brackets. */
export interface ListenAddress {
  readonly hostname: string;
  readonly port: number;
}

/** What every listener has: where, timeouts and limits. Durations in milliseconds. */
export interface ListenerSettings {
  readonly listen: ListenAddress;
  readonly handshakeTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly shutdownGraceMs: number;
  readonly maxConns: number;
  readonly maxConnsPerIp: number;
}

/** How the process logs. */
export interface LogSettings {
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
}

/** Everything the SOCKS server needs, validated. */
export interface SocksConfig extends ListenerSettings, LogSettings {
  readonly kind: "socks";
  /** User name → password, as UTF-8 bytes. Empty: no authentication. */
  readonly users: ReadonlyMap<string, Uint8Array>;
  readonly socks4: boolean;
  /** BND.ADDR of UDP ASSOCIATE replies instead of the interface address (NAT), per family. */
  readonly udpAdvertise: UdpAdvertise;
  /** How long a BIND waits for its peer to connect. */
  readonly bindTimeoutMs: number;
  /** Most UDP associations at once from one client IP. */
  readonly maxUdpPerIp: number;
}

/** Everything the port forwarder needs, validated. */
export interface ForwardConfig extends ListenerSettings, LogSettings {
  readonly kind: "forward";
  /** Upstreams, used round-robin while they are up. */
  readonly upstreams: readonly ListenAddress[];
  /** Connections kept dialled per upstream; 0 dials on demand only. */
  readonly poolSize: number;
  /** Pooled connections older than this are replaced. */
  readonly poolMaxIdleMs: number;
}

/** What every listener command takes (timeouts, limits, logging), as typed, before validation. */
export interface RawListenerOptions {
  listen?: string | undefined;
  handshakeTimeout?: string | undefined;
  connectTimeout?: string | undefined;
  idleTimeout?: string | undefined;
  shutdownGrace?: string | undefined;
  maxConns?: string | undefined;
  maxConnsPerIp?: string | undefined;
  logLevel?: string | undefined;
  logFormat?: string | undefined;
}

/** The SOCKS command line's options as typed, before validation. */
export interface RawSocksOptions extends RawListenerOptions {
  user?: string[] | undefined;
  /** Every `--users-file`: their users together, as with `--user`. */
  usersFile?: string[] | undefined;
  socks4?: boolean | undefined;
  udpAdvertise?: string[] | undefined;
  bindTimeout?: string | undefined;
  maxUdpPerIp?: string | undefined;
}

/** The forwarder's command line options as typed, before validation. */
export interface RawForwardOptions extends RawListenerOptions {
  to?: string[] | undefined;
  pool?: string | undefined;
  poolMaxIdle?: string | undefined;
}

/** Defaults, as the user would type them (shown in `--help`). */
export const DEFAULTS = {
  listen: "127.0.0.1:1080",
  handshakeTimeout: "10s",
  connectTimeout: "10s",
  idleTimeout: "5m",
  shutdownGrace: "10s",
  maxConns: "10000",
  logLevel: "info",
  logFormat: "text",
  pool: "4",
  poolMaxIdle: "30s",
  maxUdpPerIp: "16",
} as const;

/** Thrown by {@linkcode buildSocksConfig} with every problem found. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  readonly code = "invalid-config";
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(problems.join("\n"));
    this.problems = problems;
  }
}

const DURATION_UNITS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/** Parses `250ms`, `10s`, `1.5m`, `1h`, `1h30m` into milliseconds, or `null`. */
export function parseDuration(text: string): number | null {
  const ms = exactDuration(text);
  return ms === null ? null : Math.round(ms);
}

/** One number with its unit; `ms` before `m`, so that `1ms` is a millisecond. */
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
/** A duration: one or more parts, as Go's (gost's) `1h30m` or `2m30.5s`. */
const DURATION = new RegExp(`^(?:${DURATION_PART.source})+$`);

/**
 * Milliseconds in duration `text`, unrounded; `null` if it is no duration;
 * `Infinity` if it is one too large to count (a number of 300 digits).
 */
function exactDuration(text: string): number | null {
  const trimmed = text.trim();
  if (!DURATION.test(trimmed)) return null;
  let ms = 0;
  for (const [, number, unit] of trimmed.matchAll(DURATION_PART)) {
    ms += Number(number) * DURATION_UNITS[unit!]!;
  }
  return ms;
}

/**
 * The longest a timer can wait: 2^31 - 1 ms, about 24.8 days. Timers take a
 * 32-bit delay, and a longer one fires at once: a shutdown grace of 600h
 * would cut every session immediately, and a connect timeout of 600h would
 * fail every dial of the forwarder's pool (`AbortSignal.timeout`). The other
 * durations go to the deadline sweep, which compares numbers and has no such
 * limit.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The longest timer duration taken: 596h, the whole hours below
 * {@linkcode MAX_TIMER_MS}, so that the limit is the one the message says
 * (596.4h passed, and "at most 596h" was not true).
 */
const MAX_TIMER_DURATION_MS = 596 * 3_600_000;

/**
 * A duration option's value in milliseconds, or what is wrong with it,
 * phrased to follow `got "TEXT"`. `timer`: the value is a timer's delay,
 * at most 596h (see {@linkcode MAX_TIMER_MS}).
 */
export function checkDuration(
  text: string,
  timer = false,
  atLeast?: Minimum,
): number | { problem: string } {
  const exact = exactDuration(text);
  if (exact === null) {
    return {
      problem: "expected a positive number with a unit, like 250ms, 1.5s, 10s, 5m, 1h or 1h30m",
    };
  }
  // Before rounding: 0.5ms is less than the 1ms the message asks for.
  if (exact < 1) return { problem: "expected at least 1ms" };
  const ms = Math.round(exact);
  if (timer && ms > MAX_TIMER_DURATION_MS) {
    return { problem: "expected at most 596h (about 24 days)" };
  }
  // Not only Infinity: 10^30 hours was taken, and the start-up line said
  // idleTimeoutMs=3.6000000000000003e+36.
  if (!Number.isSafeInteger(ms)) {
    return {
      problem: "expected a duration small enough to count in milliseconds " +
        "(a timeout of 100000h never fires in practice)",
    };
  }
  if (atLeast && ms < atLeast.ms) return { problem: atLeast.problem };
  return ms;
}

/** A shortest duration some setting takes, and what to say of a shorter one. */
export interface Minimum {
  readonly ms: number;
  readonly problem: string;
}

/**
 * The addresses UDP ASSOCIATE replies name instead of the relay socket's own
 * (ferry behind NAT), one per address family: the relay socket has the
 * family of the client's control connection, and a client told an address
 * of the other family could not reach it.
 */
export interface UdpAdvertise {
  readonly ipv4: string | null;
  readonly ipv6: string | null;
}

/** No advertised addresses: replies name the interface the client came in on. */
export const NO_UDP_ADVERTISE: UdpAdvertise = { ipv4: null, ipv6: null };

/** Whether an IP literal names one host: not 0.0.0.0, ::, 255.255.255.255 or multicast. */
function isUnicast(ip: string): boolean {
  const v4 = parseIPv4(ip);
  if (v4 !== null) {
    return ip !== "0.0.0.0" && ip !== "255.255.255.255" && (v4[0]! & 0xf0) !== 0xe0;
  }
  const v6 = parseIPv6(ip);
  return v6 !== null && v6[0] !== 0xff && v6.some((byte) => byte !== 0);
}

/**
 * `--udp-advertise` values: IP literals (IPv6 with or without brackets), not
 * the wildcard (nobody can send to 0.0.0.0), at most one per family. Problems
 * name the value's index, phrased to follow `got "TEXT"`; `quote` writes the
 * addresses they show, as the caller's other messages write values.
 */
export function checkUdpAdvertise(
  texts: readonly string[],
  quote: (address: string) => string = (address) => address,
): UdpAdvertise | { problems: { index: number; problem: string }[] } {
  const found: { ipv4: string | null; ipv6: string | null } = { ipv4: null, ipv6: null };
  const problems: { index: number; problem: string }[] = [];
  texts.forEach((text, index) => {
    const trimmed = text.trim();
    const bare = /^\[.*\]$/.test(trimmed) ? trimmed.slice(1, -1) : trimmed;
    const address = addressOf(bare, 0);
    if (address.type === "domain" || (address.type === "ipv4" && bare !== trimmed)) {
      const problem = `expected an IPv4 or IPv6 address, like ${quote("203.0.113.7")} or ` +
        quote("2001:db8::7");
      return void problems.push({ index, problem });
    }
    // ::ffff:203.0.113.7 is an IPv4 address, for IPv4 clients; and ::ffff:0.0.0.0 is 0.0.0.0.
    const host = unmapIPv4(address.host);
    if (!isUnicast(host)) {
      const problem = "expected the address clients reach ferry at, not a wildcard, broadcast " +
        "or multicast address";
      return void problems.push({ index, problem });
    }
    const family = host.includes(":") ? "ipv6" : "ipv4";
    const earlier = found[family];
    if (earlier !== null) {
      const problem = `expected one ${family === "ipv4" ? "IPv4" : "IPv6"} address at most ` +
        `(one per address family), and ${quote(earlier)} came first`;
      return void problems.push({ index, problem });
    }
    found[family] = host;
  });
  return problems.length > 0 ? { problems } : found;
}

/** A host in one spelling: IPv6 canonical and IPv4-mapped unmapped, names in lower case. */
function hostKey(host: string): string {
  const v6 = parseIPv6(host);
  return v6 === null ? host.toLowerCase() : unmapIPv4(formatIPv6(v6));
}

/**
 * Whether a `[::]` listener takes IPv6 connections only on this host: Linux's
 * `net.ipv6.bindv6only` (0, dual-stack, by default; 1 on some hosts and
 * containers). Deno cannot clear IPV6_V6ONLY on a socket, so the sysctl
 * decides, and it refuses to read /proc/sys without --allow-all: so ask the
 * kernel instead. Where `0.0.0.0` can take the port of a `[::]` listener,
 * `[::]` takes IPv6 only. Without IPv6, it does not matter: false.
 *
 * The answer is kept, but not one taken while ferry was out of descriptors:
 * the first UDP datagram that asks may come in a shortage, and a `false`
 * kept then would stand for the life of the process.
 */
export function wildcardIsIpv6Only(): boolean {
  if (v6OnlyHere !== null) return v6OnlyHere;
  let v6: Deno.TcpListener | null = null;
  try {
    v6 = Deno.listen({ hostname: "::", port: 0 });
    Deno.listen({ hostname: "0.0.0.0", port: v6.addr.port }).close();
    v6OnlyHere = true;
  } catch (error) {
    if (isOutOfDescriptors(error)) return false; // the default's answer, for now: asked again
    v6OnlyHere = false; // the port is taken: dual-stack (or no IPv6 at all)
  } finally {
    v6?.close();
  }
  return v6OnlyHere;
}
let v6OnlyHere: boolean | null = null;

/**
 * How two listen addresses collide, or `null`: the same address (in any
 * spelling), or a wildcard that takes the other's connections too. On Linux
 * `[::]` listens on IPv4 as well (unless `v6Only`, see
 * {@linkcode wildcardIsIpv6Only}), and `0.0.0.0` on every IPv4 address.
 * Port 0, "any free port", never collides.
 */
export function listensCollide(
  a: ListenAddress,
  b: ListenAddress,
  v6Only = false,
): string | null {
  if (a.port === 0 || a.port !== b.port) return null;
  const [keyA, keyB] = [hostKey(a.hostname), hostKey(b.hostname)];
  if (keyA === keyB) return "the same address";
  for (const [wild, other] of [[keyA, keyB], [keyB, keyA]] as const) {
    if (wild === "::") {
      if (!v6Only) return "[::] takes every address, IPv4 ones too";
      // A name may resolve to either family: only IPv6 literals are sure to collide.
      if (parseIPv6(other) !== null) {
        return "[::] takes every IPv6 address (net.ipv6.bindv6only is 1: IPv6 only)";
      }
    }
    // A name may resolve to IPv6 (localhost to ::1): only IPv4 literals are sure to collide.
    if (wild === "0.0.0.0" && parseIPv4(other) !== null) return "0.0.0.0 takes every IPv4 address";
  }
  return null;
}

/**
 * The hosts a connection to `key` surely lands on when it is local: `0.0.0.0`
 * and `::` connect to the loopback address, and `localhost` may be either.
 */
function localTargets(key: string): readonly string[] {
  if (key === "0.0.0.0") return ["127.0.0.1"];
  if (key === "::") return ["::1"];
  if (key === "localhost") return ["127.0.0.1", "::1"];
  return [key];
}

/**
 * Whether a connection dialled to `to` may arrive at a listener on `listen`
 * of this host: the same address, the loopback address that a wildcard or
 * `localhost` dials, or any local address of `listen`'s wildcard (`[::]`
 * takes both families, or IPv6 only when `v6Only`; `0.0.0.0` IPv4 only). A
 * forwarder whose upstream reaches its own listener forwards to itself:
 * every pooled connection becomes a session taking another, until no
 * descriptor is left. Names other than `localhost` are not looked up, so
 * loops through them are not caught.
 */
export function reaches(to: ListenAddress, listen: ListenAddress, v6Only = false): boolean {
  if (listen.port === 0 || listen.port !== to.port) return false;
  const [toKey, listenKey] = [hostKey(to.hostname), hostKey(listen.hostname)];
  if (toKey === listenKey) return true;
  const landsOn = localTargets(toKey);
  if (listenKey === "::") {
    return landsOn.some((host) => isLoopbackIp(host) && (!v6Only || host.includes(":")));
  }
  if (listenKey === "0.0.0.0") {
    return landsOn.some((host) => parseIPv4(host) !== null && isLoopbackIp(host));
  }
  return localTargets(listenKey).some((host) => landsOn.includes(host));
}

/**
 * Parses `HOST:PORT` or `[IPV6]:PORT`, or returns `null`; port 0 means "any
 * free port". {@linkcode checkHostPort} without the reason.
 */
export function parseHostPort(text: string): ListenAddress | null {
  const checked = checkHostPort(text, 0);
  return "problem" in checked ? null : checked;
}

/**
 * A `HOST:PORT` option's value, or what is wrong with it, phrased to follow
 * `got "TEXT"`. `minPort` is 0 where port 0 means "any free port" (a listen
 * address) and 1 where a port must be dialled. A host that is written as an
 * IP address must be a valid one (`999.1.1.1` is a mistake, not a name).
 */
export function checkHostPort(text: string, minPort: 0 | 1): ListenAddress | { problem: string } {
  const match = /^(?:\[([^\]]*)\]|([^\s:[\]]+)):(\d+)$/.exec(text.trim());
  if (!match) {
    // `:1080` (gost) or `1080` (ssh -D, microsocks -p): which host is meant differs between them.
    const portAlone = /^:?(\d{1,5})$/.exec(text.trim())?.[1];
    const example = portAlone === undefined
      ? ""
      : minPort === 0
      ? ` (127.0.0.1:${portAlone} for this machine only, 0.0.0.0:${portAlone} for every interface)`
      : ` (such as 127.0.0.1:${portAlone})`;
    return { problem: `expected HOST:PORT or [IPV6]:PORT${example}` };
  }
  const port = Number(match[3]);
  if (port < minPort || port > 65535) {
    return { problem: `expected a port from ${minPort} to 65535` };
  }
  const bracketed = match[1];
  if (bracketed !== undefined) {
    if (bracketed.includes("%") && parseIPv6(bracketed.slice(0, bracketed.indexOf("%")))) {
      return {
        problem: "expected an IPv6 address without a zone (%IFACE) in [ ]: zones are not " +
          (minPort === 0
            ? "supported; [::] listens on every interface"
            : "supported, so a link-local (fe80::) upstream cannot be given; use another of its addresses"),
      };
    }
    if (parseIPv6(bracketed) === null) return { problem: `expected an IPv6 address in [ ]` };
    return { hostname: bracketed, port };
  }
  const host = match[2]!;
  if (/^[\d.]+$/.test(host) && parseIPv4(host) === null) {
    return { problem: "expected an IPv4 address of four numbers 0 to 255, or a host name" };
  }
  const nameProblem = hostNameProblem(host);
  return nameProblem === null ? { hostname: host, port } : { problem: nameProblem };
}

/**
 * What makes `host` no name DNS can carry, or `null`: an empty label (`a..b`,
 * `.a`), a label over 63 characters, or more than 253 in all (RFC 1035
 * §2.3.4). Such a name never resolves, so it is a mistake to report at
 * start, not an upstream to mark down forever. One trailing dot (a fully
 * qualified name) is allowed.
 */
function hostNameProblem(host: string): string | null {
  const name = host.endsWith(".") ? host.slice(0, -1) : host;
  if (name.length > 253) return "expected a host name of at most 253 characters";
  for (const label of name.split(".")) {
    if (label.length === 0) {
      return "expected a host name without an empty label (a leading dot, or two dots in a row)";
    }
    if (label.length > 63) {
      return "expected a host name whose labels (the parts between dots) are at most 63 characters";
    }
  }
  return null;
}

const encoder = new TextEncoder();

/**
 * The most a users or configuration file may hold: far more than either
 * needs, and a bound for a wrong path (`/dev/zero` took 2 GB in 5 s).
 */
export const MAX_TEXT_FILE_BYTES = 16 * 1048576;

/**
 * The bytes of file `path`; throws when it holds more than `limit`. Read a
 * chunk at a time, so that a file of a few lines costs a few lines.
 */
async function readAtMost(path: string, limit: number): Promise<Uint8Array> {
  using file = await Deno.open(path);
  const chunks: Uint8Array[] = [];
  let length = 0;
  for (;;) {
    const chunk = new Uint8Array(65536);
    const n = await file.read(chunk);
    if (n === null) break;
    chunks.push(chunk.subarray(0, n));
    length += n;
    if (length > limit) {
      throw new Error(`larger than ${limit / 1048576} MiB; is it the right file?`);
    }
  }
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

/** A text file's content, and which of its lines (from 1) are not UTF-8. */
export interface TextFile {
  /** Decoded with U+FFFD in place of bytes that are not UTF-8. */
  readonly text: string;
  readonly notUtf8: ReadonlySet<number>;
}

/**
 * Reads a text file that should be UTF-8, and says which lines are not.
 * Deno's `readTextFile` puts U+FFFD in place of bad bytes without a word: a
 * Latin-1 password in a users file was then taken, and never matched what a
 * client sends. Callers refuse such lines, unless they are comments.
 */
export async function readTextFile(path: string): Promise<TextFile> {
  const bytes = await readAtMost(path, MAX_TEXT_FILE_BYTES);
  const lenient = new TextDecoder("utf-8");
  const strict = new TextDecoder("utf-8", { fatal: true });
  // A NUL is UTF-8, but no text file holds one: UTF-16 without its byte
  // order mark has one beside every ASCII character, and would otherwise
  // be taken for UTF-8 and fail in every token instead of once.
  if (!bytes.includes(0)) {
    try {
      return { text: strict.decode(bytes), notUtf8: new Set() };
    } catch {
      // Some line is not UTF-8: found below.
    }
  }
  const notUtf8 = new Set<number>();
  for (let start = 0, line = 1; start <= bytes.length; line++) {
    const end = bytes.indexOf(0x0a, start);
    const stop = end < 0 ? bytes.length : end;
    const lineBytes = bytes.subarray(start, stop);
    try {
      strict.decode(lineBytes);
      if (lineBytes.includes(0)) notUtf8.add(line);
    } catch {
      notUtf8.add(line);
    }
    start = stop + 1;
  }
  return { text: lenient.decode(bytes), notUtf8 };
}

/**
 * ` (from DIR)` for a relative path, so a user can see where it was looked
 * for: `deno task` runs in the project's directory, not the caller's.
 */
export function fromWhere(path: string): string {
  if (isAbsolute(path)) return "";
  try {
    return ` (from ${Deno.cwd()})`;
  } catch {
    return "";
  }
}

/** Parses `name:password` (the password may contain `:`); returns a problem text on failure. */
export function parseUser(text: string): { name: string; password: Uint8Array } | string {
  const colon = text.indexOf(":");
  // Not repeated in the message: a line without a colon may be a password alone.
  if (colon < 0) {
    return `expected NAME:PASSWORD, got a value with no ":" (not shown: it may be secret)`;
  }
  const name = text.slice(0, colon);
  const password = encoder.encode(text.slice(colon + 1));
  const nameBytes = encoder.encode(name).length;
  if (nameBytes < 1 || nameBytes > 255) {
    // At most the name's start: a wrong file's line can be megabytes long.
    const shown = name.length > 64 ? `${JSON.stringify(name.slice(0, 64))}…` : JSON.stringify(name);
    return `user name must be 1 to 255 bytes (RFC 1929), got ${nameBytes} in ${shown}`;
  }
  if (password.length < 1 || password.length > 255) {
    return `password of user ${
      JSON.stringify(name)
    } must be 1 to 255 bytes (RFC 1929), got ${password.length}`;
  }
  return { name, password };
}

const SAVE_AS_UTF8 = "save the file as UTF-8 (a password is compared as its UTF-8 bytes)";

/**
 * Whether `text`, read as UTF-8, was written as UTF-16: ASCII characters
 * then have a NUL beside each. (Not told by its byte order mark: that reads
 * as two bad bytes, as Latin-1 "ÄÖ" does.)
 */
export function looksLikeUtf16(text: string): boolean {
  let nuls = 0;
  for (let at = text.indexOf("\0"); at >= 0; at = text.indexOf("\0", at + 1)) nuls++;
  return nuls > 0 && nuls >= text.length / 4;
}

/**
 * A user line of a users file, parsed, or what is wrong with it; `where` is
 * `PATH:LINE`, or `PATH` for the whole file.
 */
export type UsersFileLine =
  | { readonly where: string; readonly name: string; readonly password: Uint8Array }
  | { readonly where: string; readonly problem: string };

/**
 * The user lines of a users file, in order: blank lines and `#` comments
 * (whatever their bytes) are skipped, and a line that is not UTF-8 is a
 * problem, since a password is compared as its UTF-8 bytes.
 */
export function usersFileLines(content: TextFile, path: string): UsersFileLine[] {
  if (looksLikeUtf16(content.text)) {
    // One problem for the file: read as UTF-8, every line of it is wrong, and
    // its line ends (a NUL after each) make a line more than the editor shows.
    const problem = `looks like UTF-16 text; ${SAVE_AS_UTF8}`;
    return [{ where: path, problem }];
  }
  const lines: UsersFileLine[] = [];
  content.text.split(/\r?\n/).forEach((line, index) => {
    // Spaces and tabs only, as the README says: String.trim() also took
    // no-break spaces, U+FEFF and the like from the ends of passwords.
    const trimmed = line.replace(/^[ \t]+|[ \t]+$/g, "");
    if (trimmed === "" || trimmed.startsWith("#")) return;
    const where = `${path}:${index + 1}`;
    if (trimmed.includes("\0")) {
      // Valid UTF-8, so not called "not UTF-8"; no name or password holds one.
      const problem = "a NUL byte; a users file holds lines of NAME:PASSWORD text";
      return void lines.push({ where, problem });
    }
    if (content.notUtf8.has(index + 1)) {
      return void lines.push({ where, problem: `not UTF-8 text; ${SAVE_AS_UTF8}` });
    }
    if (trimmed.startsWith("\uFEFF")) {
      // The BOM of a file joined on with `cat`: it was part of the user's
      // name, and only "\uFEFFbob" could log in, not bob.
      const problem = "starts with a byte order mark (U+FEFF), as where two files were joined; " +
        "delete it";
      return void lines.push({ where, problem });
    }
    if (trimmed.includes("\r")) {
      // Line ends of CR alone (classic Mac): read by LF, the file is one line.
      const problem =
        "a carriage return (CR) inside the line; save the file with LF or CRLF line ends";
      return void lines.push({ where, problem });
    }
    // `alice : secret` is alice's secret, as people write it; a password that
    // starts with a space can still be given with --user.
    const user = parseUser(trimmed.replace(/[ \t]*:[ \t]*/, ":"));
    lines.push(typeof user === "string" ? { where, problem: user } : { where, ...user });
  });
  return lines;
}

/**
 * Problems one users file may raise before the rest of it goes unchecked: a
 * wrong file (a log) gave half a million lines, and a 16 MiB file of one
 * user repeated four million "already defined" lines and 3.6 GB of memory.
 */
export const MAX_USERS_FILE_PROBLEMS = 20;

/**
 * Takes a users file's lines: `add` for each user (it may report the name as
 * defined twice), `report` for each problem. After the file has raised
 * {@linkcode MAX_USERS_FILE_PROBLEMS} (counted by `problems`, which both add
 * to), one more says the rest was not checked.
 */
export function takeUsersFileLines(
  lines: readonly UsersFileLine[],
  path: string,
  problems: { readonly length: number },
  report: (text: string) => void,
  add: (user: { where: string; name: string; password: Uint8Array }) => void,
): void {
  const before = problems.length;
  for (const [index, line] of lines.entries()) {
    if (problems.length - before >= MAX_USERS_FILE_PROBLEMS) {
      return report(
        `${path}: ${MAX_USERS_FILE_PROBLEMS} problems; its other ${lines.length - index} ` +
          `entries were not checked (is it the right file?)`,
      );
    }
    if ("problem" in line) report(`${line.where}: ${line.problem}`);
    else add(line);
  }
}

/**
 * Collects problems while validating; each check returns a usable placeholder
 * on failure so validation goes on and every problem is reported at once.
 */
export class Checker {
  readonly problems: string[] = [];

  /** A positive duration such as `250ms`. */
  duration(flag: string, text: string, timer = false, atLeast?: Minimum): number {
    const checked = checkDuration(text, timer, atLeast);
    if (typeof checked === "number") return checked;
    this.problems.push(`${flag}: got ${JSON.stringify(text)}; ${checked.problem}`);
    return 0;
  }

  /** A whole number of at least `min`. */
  count(flag: string, text: string, min = 1, max = Number.MAX_SAFE_INTEGER): number {
    const value = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
    if (Number.isSafeInteger(value) && value >= min && value <= max) return value;
    // The largest number there is only for a number too large (20 digits, say).
    const expected = max === Number.MAX_SAFE_INTEGER && !(value > max)
      ? `a whole number ≥ ${min}`
      : `a whole number from ${min} to ${max}`;
    this.problems.push(`${flag}: got ${JSON.stringify(text)}; expected ${expected}`);
    return 0;
  }

  /** One of a fixed set of words. */
  oneOf<T extends string>(flag: string, text: string, allowed: readonly T[]): T {
    if ((allowed as readonly string[]).includes(text)) return text as T;
    this.problems.push(`${flag}: ${JSON.stringify(text)} is not one of ${allowed.join(", ")}`);
    return allowed[0]!;
  }

  /** A log level; see {@linkcode logLevelOf} for the spellings taken. */
  logLevel(flag: string, text: string): LogLevel {
    return this.oneOf(flag, logLevelOf(text) ?? text, LOG_LEVELS);
  }

  /** A log format, in any case. */
  logFormat(flag: string, text: string): LogFormat {
    return this.oneOf(flag, logFormatOf(text) ?? text, LOG_FORMATS);
  }

  /** Addresses to advertise; see {@linkcode checkUdpAdvertise}. */
  udpAdvertise(flag: string, texts: readonly string[]): UdpAdvertise {
    const checked = checkUdpAdvertise(texts);
    if (!("problems" in checked)) return checked;
    for (const { index, problem } of checked.problems) {
      this.problems.push(`${flag}: got ${JSON.stringify(texts[index])}; ${problem}`);
    }
    return NO_UDP_ADVERTISE;
  }

  /** `HOST:PORT` or `[IPV6]:PORT`; see {@linkcode checkHostPort} for `minPort`. */
  hostPort(flag: string, text: string, minPort: 0 | 1): ListenAddress {
    const checked = checkHostPort(text, minPort);
    if (!("problem" in checked)) return checked;
    this.problems.push(`${flag}: got ${JSON.stringify(text)}; ${checked.problem}`);
    return { hostname: "", port: 0 };
  }

  /** Throws {@linkcode ConfigError} if anything was wrong. */
  done(): void {
    if (this.problems.length > 0) throw new ConfigError(this.problems);
  }
}

/** Validates what every listener shares, and the log settings. */
export function checkCommon(
  raw: RawListenerOptions,
  check: Checker,
): ListenerSettings & LogSettings {
  const maxConns = check.count("--max-conns", raw.maxConns ?? DEFAULTS.maxConns);
  return {
    listen: check.hostPort("--listen", raw.listen ?? DEFAULTS.listen, 0),
    handshakeTimeoutMs: check.duration(
      "--handshake-timeout",
      raw.handshakeTimeout ?? DEFAULTS.handshakeTimeout,
    ),
    connectTimeoutMs: check.duration(
      "--connect-timeout",
      raw.connectTimeout ?? DEFAULTS.connectTimeout,
      true,
    ),
    idleTimeoutMs: check.duration("--idle-timeout", raw.idleTimeout ?? DEFAULTS.idleTimeout),
    shutdownGraceMs: check.duration(
      "--shutdown-grace",
      raw.shutdownGrace ?? DEFAULTS.shutdownGrace,
      true,
    ),
    maxConns,
    maxConnsPerIp: raw.maxConnsPerIp === undefined
      ? maxConns
      : check.count("--max-conns-per-ip", raw.maxConnsPerIp),
    logLevel: check.logLevel("--log-level", raw.logLevel ?? DEFAULTS.logLevel),
    logFormat: check.logFormat("--log-format", raw.logFormat ?? DEFAULTS.logFormat),
  };
}

/**
 * Validates raw options into a {@linkcode SocksConfig}. Reads `--users-file`.
 * Throws {@linkcode ConfigError} listing every problem.
 */
export async function buildSocksConfig(raw: RawSocksOptions): Promise<SocksConfig> {
  const check = new Checker();
  const common = checkCommon(raw, check);
  const users = new Map<string, Uint8Array>();
  const defined = new Map<string, string>();
  const addUser = (user: { name: string; password: Uint8Array }, where: string) => {
    const earlier = defined.get(user.name);
    if (earlier) {
      check.problems.push(
        `${where}: user ${JSON.stringify(user.name)} is already defined at ${earlier}`,
      );
      return;
    }
    defined.set(user.name, where);
    users.set(user.name, user.password);
  };
  for (const text of raw.user ?? []) {
    if (text.includes("\uFFFD")) {
      // Deno puts U+FFFD in place of argument bytes that are not UTF-8: the
      // name or password would then match no client's bytes, or another's.
      // A U+FFFD typed as such cannot be told from those; a file keeps it.
      check.problems.push(
        "--user: not UTF-8 text, or a U+FFFD (�), which stands for such bytes on the " +
          "command line (value not shown: it may be secret); give names and passwords in " +
          "UTF-8, or in a --users-file, where a U+FFFD is kept",
      );
      continue;
    }
    const user = parseUser(text);
    if (typeof user === "string") check.problems.push(`--user: ${user}`);
    else addUser(user, "--user");
  }
  const filesRead = new Map<string, string>(); // by real path: the path as first given
  for (const path of raw.usersFile ?? []) {
    // Read twice, a file's every user was "already defined" at its own line.
    const real = await Deno.realPath(path).catch(() => path); // unreadable: said below
    const first = filesRead.get(real);
    if (first !== undefined) {
      const as = first === path ? "" : ` (as ${JSON.stringify(first)})`;
      check.problems.push(
        `--users-file: ${JSON.stringify(path)} was given before${as}; expected each file once`,
      );
      continue;
    }
    filesRead.set(real, path);
    let content: TextFile | null = null;
    try {
      content = await readTextFile(path);
    } catch (error) {
      check.problems.push(
        `--users-file: cannot read ${JSON.stringify(path)}${fromWhere(path)}: ${
          (error as Error).message
        }`,
      );
    }
    if (content !== null) {
      const lines = usersFileLines(content, path);
      takeUsersFileLines(
        lines,
        path,
        check.problems,
        (text) => check.problems.push(text),
        (user) => addUser(user, user.where),
      );
      if (lines.length === 0) {
        check.problems.push(
          `--users-file: ${JSON.stringify(path)} defines no users; ` +
            `expected lines of NAME:PASSWORD`,
        );
      }
    }
  }

  const udpAdvertise = check.udpAdvertise("--udp-advertise", raw.udpAdvertise ?? []);
  const bindTimeoutMs = raw.bindTimeout === undefined
    ? common.connectTimeoutMs
    : check.duration("--bind-timeout", raw.bindTimeout);
  const maxUdpPerIp = check.count("--max-udp-per-ip", raw.maxUdpPerIp ?? DEFAULTS.maxUdpPerIp);
  check.done();
  return {
    kind: "socks",
    ...common,
    users,
    socks4: raw.socks4 ?? true,
    udpAdvertise,
    bindTimeoutMs,
    maxUdpPerIp,
  };
}

/** Why an upstream may not be listed twice. */
export const EACH_UPSTREAM_ONCE =
  "expected each upstream once (twice, it got two pools and two of every upstream-down line)";

/**
 * The index of an earlier upstream in `upstreams` with the same host and port
 * as the one at `index`, or -1: names in any case, IP addresses however
 * spelled (`[0::1]` is `[::1]`, `::ffff:127.0.0.1` is `127.0.0.1`).
 * Unparsed ones (empty host) never match.
 */
export function earlierSameUpstream(upstreams: readonly ListenAddress[], index: number): number {
  const { hostname, port } = upstreams[index]!;
  if (hostname === "") return -1;
  const host = sameHostKey(hostname);
  return upstreams.findIndex((other, i) =>
    i < index && other.port === port && sameHostKey(other.hostname) === host
  );
}

/** A host as upstreams compare: an IP address in one spelling, a name in lower case. */
function sameHostKey(hostname: string): string {
  return ipKey(addressOf(hostname, 0).host);
}

/**
 * Validates raw options into a {@linkcode ForwardConfig}; throws
 * {@linkcode ConfigError}. `v6Only`: see {@linkcode wildcardIsIpv6Only}.
 */
export function buildForwardConfig(
  raw: RawForwardOptions,
  v6Only = wildcardIsIpv6Only(),
): ForwardConfig {
  const check = new Checker();
  if (raw.listen === undefined) {
    check.problems.push("--listen: required; expected HOST:PORT ([::1]:PORT for IPv6)");
  }
  const common = checkCommon(raw, check);
  const targets = raw.to ?? [];
  if (targets.length === 0) check.problems.push("--to: required; expected HOST:PORT (repeatable)");
  const upstreams = targets.map((text) => check.hostPort("--to", text, 1));
  upstreams.forEach((_, index) => {
    const earlier = earlierSameUpstream(upstreams, index);
    if (earlier >= 0) {
      check.problems.push(
        `--to: got ${JSON.stringify(targets[index])}, the same upstream as ` +
          `${JSON.stringify(targets[earlier])}; ${EACH_UPSTREAM_ONCE}`,
      );
    }
  });
  upstreams.forEach((upstream, index) => {
    if (raw.listen !== undefined && reaches(upstream, common.listen, v6Only)) {
      check.problems.push(
        `--to: got ${JSON.stringify(targets[index])}; expected an address other than ` +
          `--listen (ferry would forward to itself)`,
      );
    }
  });
  const poolSize = check.count("--pool", raw.pool ?? DEFAULTS.pool, 0, MAX_POOL);
  const poolMaxIdleMs = check.duration(
    "--pool-max-idle",
    raw.poolMaxIdle ?? DEFAULTS.poolMaxIdle,
    false,
    POOL_MAX_IDLE_MIN,
  );
  check.done();
  return { kind: "forward", ...common, upstreams, poolSize, poolMaxIdleMs };
}
