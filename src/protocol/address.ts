/**
 * Target addresses as the SOCKS protocols carry them, and the IPv4/IPv6 text
 * forms they are logged and dialled in. Pure: no Deno APIs.
 *
 * @module
 */

/** Where a client wants to go: an IP literal or a name still to resolve. */
export type Address =
  | { readonly type: "ipv4"; readonly host: string; readonly port: number }
  | { readonly type: "ipv6"; readonly host: string; readonly port: number }
  | { readonly type: "domain"; readonly host: string; readonly port: number };

/** Formats 4 bytes as dotted-quad text. */
export function formatIPv4(bytes: Uint8Array): string {
  return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
}

/**
 * Formats 16 bytes as RFC 5952 text: lower case, longest zero run as `::`,
 * and an IPv4-mapped address with its IPv4 part dotted (§5), as Deno and
 * Node report a dual-stack socket's IPv4 peers, so the two forms compare.
 */
export function formatIPv6(bytes: Uint8Array): string {
  if (isIPv4Mapped(bytes)) return `::ffff:${formatIPv4(bytes.subarray(12))}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  let bestStart = -1;
  let bestLength = 1; // RFC 5952 §4.2.2: a single zero group is not shortened
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hexGroups = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hexGroups.join(":");
  const head = hexGroups.slice(0, bestStart).join(":");
  const tail = hexGroups.slice(bestStart + bestLength).join(":");
  return `${head}::${tail}`;
}

/** `::ffff:0:0/96`: ten zero bytes, two 0xff, then the IPv4 address. */
function isIPv4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/**
 * Parses dotted-quad text into 4 bytes, or returns `null` if it is not one:
 * four decimal parts of 1 to 3 digits, each at most 255, no leading zeros.
 * Scans character codes rather than splitting: every SOCKS reply encodes an
 * address, so this is on each session's path.
 */
export function parseIPv4(text: string): Uint8Array | null {
  const bytes = new Uint8Array(4);
  return writeIPv4(text, bytes, 0) ? bytes : null;
}

/**
 * {@linkcode parseIPv4} into `out` at `offset`, for encoders that put the
 * address straight into their message. Returns whether `text` was a dotted
 * quad; `out` may be partly written when it was not.
 */
export function writeIPv4(text: string, out: Uint8Array, offset: number): boolean {
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = 0; i <= text.length; i++) {
    const code = i < text.length ? text.charCodeAt(i) : DOT;
    if (code === DOT) {
      if (digits === 0 || part === 4) return false;
      out[offset + part++] = value;
      value = 0;
      digits = 0;
    } else if (code >= DIGIT_0 && code <= DIGIT_9) {
      if (digits > 0 && value === 0) return false; // a leading zero
      value = value * 10 + (code - DIGIT_0);
      if (++digits > 3 || value > 255) return false;
    } else {
      return false;
    }
  }
  return part === 4;
}

const DOT = 0x2e;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;

/**
 * Parses IPv6 text (with `::` and an optional trailing dotted quad, as in
 * `::ffff:127.0.0.1`) into 16 bytes, or returns `null` if it is not one.
 * Zone ids (`%eth0`) are not addresses SOCKS can carry and are rejected.
 */
export function parseIPv6(text: string): Uint8Array | null {
  let body = text;
  const tailBytes: number[] = [];
  const lastColon = body.lastIndexOf(":");
  if (lastColon >= 0 && body.includes(".", lastColon)) {
    const v4 = parseIPv4(body.slice(lastColon + 1));
    if (v4 === null) return null;
    tailBytes.push(...v4);
    body = body.slice(0, lastColon + 1) + "0:0"; // placeholder groups, replaced below
  }
  const halves = body.split("::");
  if (halves.length > 2) return null;
  const parseGroups = (s: string): number[] | null => {
    if (s === "") return [];
    const out: number[] = [];
    for (const g of s.split(":")) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = parseGroups(halves[0]!);
  const tail = halves.length === 2 ? parseGroups(halves[1]!) : [];
  if (head === null || tail === null) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const groups = [...head, ...new Array<number>(missing).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  if (tailBytes.length === 4) bytes.set(tailBytes, 12);
  return bytes;
}

/** Where addressOf() checks for a dotted quad; the bytes themselves are not kept. */
const IPV4_SCRATCH = new Uint8Array(4);

/** Classifies a host string as it would be dialled: IP literal or name. */
export function addressOf(host: string, port: number): Address {
  const unbracketed = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  // A dotted quad parseIPv4 accepts is already canonical: no need to format it.
  if (writeIPv4(unbracketed, IPV4_SCRATCH, 0)) return { type: "ipv4", host: unbracketed, port };
  const v6 = parseIPv6(unbracketed);
  if (v6 !== null) return { type: "ipv6", host: formatIPv6(v6), port };
  return { type: "domain", host, port };
}

/**
 * The IP address a host name spells (`"127.0.0.1"`, `"::1"`), or `null`: such
 * a name needs no lookup. `"[::1]"` is no IP address here, and no name either.
 */
export function ipOfName(name: string): string | null {
  if (name.startsWith("[")) return null;
  const address = addressOf(name, 0);
  return address.type === "domain" ? null : address.host;
}

/** `host:port`, with IPv6 hosts in brackets, as logs and URLs expect. */
export function formatAddress(address: { host: string; port: number }): string {
  return address.host.includes(":")
    ? `[${address.host}]:${address.port}`
    : `${address.host}:${address.port}`;
}

/**
 * `127.0.0.1` for an IPv4-mapped IPv6 address such as `::ffff:127.0.0.1` (how a
 * dual-stack listener reports an IPv4 client); any other host unchanged.
 */
export function unmapIPv4(host: string): string {
  if (!host.startsWith("::")) return host; // nearly every host: no regular expression
  const match = /^::ffff:(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/i.exec(host);
  return match && parseIPv4(match[1]!) !== null ? match[1]! : host;
}

/**
 * An IP address as sets of addresses compare it: IPv4-mapped ones unmapped,
 * hex digits in lower case (a resolver's or a socket's spelling either way).
 */
export function ipKey(ip: string): string {
  return unmapIPv4(ip).toLowerCase();
}

/** Whether `host` (an IP address, IPv4-mapped ones unmapped) is a loopback address: 127.0.0.0/8 or ::1. */
export function isLoopbackIp(host: string): boolean {
  return host === "::1" || (host.startsWith("127.") && parseIPv4(host) !== null);
}

/**
 * A connection's peer as log lines name it, `ip:port`: an IPv4 client of a
 * dual-stack `[::]` listener as `127.0.0.1:…`, not `[::ffff:127.0.0.1]:…`,
 * so its lines read the same whichever listener it came in on.
 */
export function formatPeer(addr: { hostname: string; port: number }): string {
  return formatAddress({ host: unmapIPv4(addr.hostname), port: addr.port });
}

/**
 * Whether `host` is an IPv6 link-local address (fe80::/10). Deno reports such
 * an address without its zone (`%eth0`), and one without a zone can be
 * neither bound nor sent to reliably: see {@linkcode zonedHost}.
 */
export function isLinkLocalIPv6(host: string): boolean {
  const bytes = parseIPv6(host);
  return bytes !== null && bytes[0] === 0xfe && (bytes[1]! & 0xc0) === 0x80;
}
