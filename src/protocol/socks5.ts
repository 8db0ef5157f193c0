/**
 * SOCKS5 wire format (RFC 1928) and username/password sub-negotiation
 * (RFC 1929). Pure, incremental codecs: every decoder takes the bytes buffered
 * so far and answers `ok` (with the bytes consumed), `more`, or throws a
 * {@linkcode ProtocolError} carrying the reply code to send. No socket here.
 *
 * @module
 */
import { type Address, formatIPv4, formatIPv6, parseIPv6, writeIPv4 } from "./address.ts";
import { type Decoded, decodeHostName, hex, MORE, ok, ProtocolError, room } from "./decoded.ts";

/** Protocol version byte of every SOCKS5 message but the RFC 1929 ones. */
export const VERSION = 0x05;
/** Version byte of the RFC 1929 username/password sub-negotiation. */
export const AUTH_VERSION = 0x01;

/** Authentication methods (RFC 1928 §3). */
export const Method = {
  NoAuth: 0x00,
  GssApi: 0x01,
  UserPass: 0x02,
  NoAcceptable: 0xff,
} as const;

/** Request commands (RFC 1928 §4). */
export const Command = {
  Connect: 0x01,
  Bind: 0x02,
  UdpAssociate: 0x03,
} as const;

/** Address types (RFC 1928 §4). */
export const AddressType = {
  IPv4: 0x01,
  Domain: 0x03,
  IPv6: 0x04,
} as const;

/** Reply codes (RFC 1928 §6). */
export const Reply = {
  Succeeded: 0x00,
  GeneralFailure: 0x01,
  NotAllowed: 0x02,
  NetworkUnreachable: 0x03,
  HostUnreachable: 0x04,
  ConnectionRefused: 0x05,
  TtlExpired: 0x06,
  CommandNotSupported: 0x07,
  AddressTypeNotSupported: 0x08,
} as const;

const REPLY_NAMES: Readonly<Record<number, string>> = {
  0x00: "succeeded",
  0x01: "general-failure",
  0x02: "not-allowed",
  0x03: "network-unreachable",
  0x04: "host-unreachable",
  0x05: "connection-refused",
  0x06: "ttl-expired",
  0x07: "command-not-supported",
  0x08: "address-type-not-supported",
};

/** A reply code's name for logs: `connection-refused`, or `reply-0x2a`. */
export function replyName(code: number): string {
  return REPLY_NAMES[code] ?? `reply-${hex(code)}`;
}

/** Status bytes of the RFC 1929 reply. */
export const AuthStatus = { Success: 0x00, Failure: 0x01 } as const;

/** The client's greeting: the methods it offers. */
export interface Greeting {
  readonly methods: readonly number[];
}

/** RFC 1929 credentials, as raw bytes (the RFC does not fix an encoding). */
export interface Credentials {
  readonly username: Uint8Array;
  readonly password: Uint8Array;
}

/** A client request: a command and its destination. */
export interface Request {
  readonly command: number;
  readonly address: Address;
}

/** A server reply: a code and the bound address. */
export interface ReplyMessage {
  readonly reply: number;
  readonly address: Address;
}

/** Decodes `VER NMETHODS METHODS…`. NMETHODS=0 is valid (and unanswerable). */
export function decodeGreeting(bytes: Uint8Array): Decoded<Greeting> {
  if (bytes.length < 1) return MORE;
  if (bytes[0] !== VERSION) {
    throw new ProtocolError(
      "bad-version",
      null,
      `greeting version ${hex(bytes[0]!)}, expected 0x05`,
    );
  }
  if (bytes.length < 2) return MORE;
  const count = bytes[1]!;
  if (bytes.length < 2 + count) return MORE;
  const methods: number[] = [];
  for (let i = 2; i < 2 + count; i++) methods.push(bytes[i]!);
  return ok({ methods }, 2 + count);
}

/** Encodes a client greeting (used by clients and tests). */
export function encodeGreeting(greeting: Greeting): Uint8Array {
  return Uint8Array.of(VERSION, greeting.methods.length, ...greeting.methods);
}

/** Decodes the server's method selection `VER METHOD` (used by clients). */
export function decodeMethodSelection(bytes: Uint8Array): Decoded<number> {
  if (bytes.length < 1) return MORE;
  if (bytes[0] !== VERSION) {
    throw new ProtocolError("bad-version", null, `method selection version ${hex(bytes[0]!)}`);
  }
  if (bytes.length < 2) return MORE;
  return ok(bytes[1]!, 2);
}

/** Encodes the server's method selection. */
export function encodeMethodSelection(method: number): Uint8Array {
  return METHOD_SELECTIONS.get(method) ?? twoBytes(VERSION, method);
}

/**
 * The selections a server sends, made once: one goes out on every session.
 * Callers only write them to sockets, never change them.
 */
const METHOD_SELECTIONS: ReadonlyMap<number, Uint8Array> = new Map(
  [Method.NoAuth, Method.UserPass, Method.NoAcceptable].map((m) => [m, twoBytes(VERSION, m)]),
);

/** `new Uint8Array(2)` filled in: cheaper than `Uint8Array.of`, and sent on every session. */
function twoBytes(first: number, second: number): Uint8Array {
  const out = new Uint8Array(2);
  out[0] = first;
  out[1] = second;
  return out;
}

/** Decodes RFC 1929 `VER ULEN UNAME PLEN PASSWD`. */
export function decodeCredentials(bytes: Uint8Array): Decoded<Credentials> {
  if (bytes.length < 1) return MORE;
  if (bytes[0] !== AUTH_VERSION) {
    throw new ProtocolError(
      "bad-auth-version",
      AuthStatus.Failure,
      `auth version ${hex(bytes[0]!)}, expected 0x01`,
    );
  }
  if (bytes.length < 2) return MORE;
  const userLength = bytes[1]!;
  const passwordLengthAt = 2 + userLength;
  if (bytes.length < passwordLengthAt + 1) return MORE;
  const passwordLength = bytes[passwordLengthAt]!;
  const end = passwordLengthAt + 1 + passwordLength;
  if (bytes.length < end) return MORE;
  return ok({
    username: bytes.slice(2, passwordLengthAt),
    password: bytes.slice(passwordLengthAt + 1, end),
  }, end);
}

/** Encodes RFC 1929 credentials; each field must be at most 255 bytes. */
export function encodeCredentials(credentials: Credentials): Uint8Array {
  const { username, password } = credentials;
  if (username.length > 255 || password.length > 255) {
    throw new RangeError("RFC 1929 username and password are at most 255 bytes each");
  }
  const out = new Uint8Array(3 + username.length + password.length);
  out[0] = AUTH_VERSION;
  out[1] = username.length;
  out.set(username, 2);
  out[2 + username.length] = password.length;
  out.set(password, 3 + username.length);
  return out;
}

/** Encodes the RFC 1929 status reply. */
export function encodeAuthStatus(status: number): Uint8Array {
  return twoBytes(AUTH_VERSION, status);
}

/** Decodes the RFC 1929 status reply (used by clients). */
export function decodeAuthStatus(bytes: Uint8Array): Decoded<number> {
  if (bytes.length < 2) return MORE;
  return ok(bytes[1]!, 2);
}

const textEncoder = new TextEncoder();

/**
 * Decodes `ATYP ADDR PORT` starting at `offset`. Returns the address and the
 * offset just past it, or `null` when more bytes are needed.
 */
function decodeAddressAt(
  bytes: Uint8Array,
  offset: number,
): { address: Address; end: number } | null {
  if (bytes.length < offset + 1) return null;
  const type = bytes[offset]!;
  let hostStart = offset + 1;
  let hostLength: number;
  let kind: Address["type"];
  switch (type) {
    case AddressType.IPv4:
      hostLength = 4;
      kind = "ipv4";
      break;
    case AddressType.IPv6:
      hostLength = 16;
      kind = "ipv6";
      break;
    case AddressType.Domain:
      if (bytes.length < offset + 2) return null;
      hostLength = bytes[offset + 1]!;
      if (hostLength === 0) {
        throw new ProtocolError("empty-field", Reply.HostUnreachable, "empty domain name");
      }
      hostStart = offset + 2;
      kind = "domain";
      break;
    default:
      throw new ProtocolError(
        "bad-address-type",
        Reply.AddressTypeNotSupported,
        `address type ${hex(type)}, expected 0x01, 0x03 or 0x04`,
      );
  }
  const hostEnd = hostStart + hostLength;
  // The whole address before any of it is decoded: a refused name is logged with its port.
  const end = hostEnd + 2;
  if (bytes.length < end) return null;
  const port = (bytes[hostEnd]! << 8) | bytes[hostEnd + 1]!;
  const hostBytes = bytes.subarray(hostStart, hostEnd);
  const host = kind === "ipv4"
    ? formatIPv4(hostBytes)
    : kind === "ipv6"
    ? formatIPv6(hostBytes)
    : decodeHostName(hostBytes, Reply.HostUnreachable, port);
  return { address: { type: kind, host, port }, end };
}

function notAnAddress(address: Address): RangeError {
  return new RangeError(`not an ${address.type} address: ${JSON.stringify(address.host)}`);
}

/**
 * Encodes `prefixLength` bytes, for the caller to fill, followed by
 * `ATYP ADDR PORT`: one allocation for a whole message, or none when `into`
 * has room for it.
 */
function encodeAfterPrefix(prefixLength: number, address: Address, into?: Uint8Array): Uint8Array {
  let out: Uint8Array;
  let at = prefixLength;
  switch (address.type) {
    case "ipv4":
      // The common reply: the address goes straight into the message.
      out = room(into, prefixLength + 1 + 4 + 2);
      out[at++] = AddressType.IPv4;
      if (!writeIPv4(address.host, out, at)) throw notAnAddress(address);
      at += 4;
      break;
    case "ipv6": {
      const ip = parseIPv6(address.host);
      if (ip === null) throw notAnAddress(address);
      out = room(into, prefixLength + 1 + 16 + 2);
      out[at++] = AddressType.IPv6;
      out.set(ip, at);
      at += 16;
      break;
    }
    case "domain": {
      const name = textEncoder.encode(address.host);
      if (name.length < 1 || name.length > 255) {
        throw new RangeError(`domain name must be 1 to 255 bytes, got ${name.length}`);
      }
      out = room(into, prefixLength + 2 + name.length + 2);
      out[at++] = AddressType.Domain;
      out[at++] = name.length;
      out.set(name, at);
      at += name.length;
      break;
    }
  }
  out[at] = address.port >> 8;
  out[at + 1] = address.port & 0xff;
  return out;
}

/** Decodes `VER CMD RSV ATYP DST.ADDR DST.PORT`. RSV is ignored, as most servers do. */
export function decodeRequest(bytes: Uint8Array): Decoded<Request> {
  if (bytes.length < 1) return MORE;
  if (bytes[0] !== VERSION) {
    throw new ProtocolError(
      "bad-version",
      Reply.GeneralFailure,
      `request version ${hex(bytes[0]!)}, expected 0x05`,
    );
  }
  if (bytes.length < 3) return MORE;
  const decoded = decodeAddressAt(bytes, 3);
  if (decoded === null) return MORE;
  return ok({ command: bytes[1]!, address: decoded.address }, decoded.end);
}

/** Encodes a client request (used by clients and tests). */
export function encodeRequest(request: Request): Uint8Array {
  const out = encodeAfterPrefix(3, request.address);
  out[0] = VERSION;
  out[1] = request.command;
  return out;
}

/**
 * Encodes a reply `VER REP RSV ATYP BND.ADDR BND.PORT`: into the start of
 * `into` when that is given and large enough (the result is then a view of
 * it), else into a new array.
 */
export function encodeReply(message: ReplyMessage, into?: Uint8Array): Uint8Array {
  const out = encodeAfterPrefix(3, message.address, into);
  out[0] = VERSION;
  out[1] = message.reply;
  return out;
}

/** The bound address a failure reply carries: nothing was bound. */
export const UNBOUND: Address = { type: "ipv4", host: "0.0.0.0", port: 0 };

/** Decodes a server reply (used by clients and tests). */
export function decodeReply(bytes: Uint8Array): Decoded<ReplyMessage> {
  if (bytes.length < 1) return MORE;
  if (bytes[0] !== VERSION) {
    throw new ProtocolError("bad-version", null, `reply version ${hex(bytes[0]!)}, expected 0x05`);
  }
  if (bytes.length < 3) return MORE;
  const decoded = decodeAddressAt(bytes, 3);
  if (decoded === null) return MORE;
  return ok({ reply: bytes[1]!, address: decoded.address }, decoded.end);
}

/**
 * A UDP ASSOCIATE datagram (RFC 1928 §7): `RSV RSV FRAG ATYP DST.ADDR
 * DST.PORT DATA`. From the client, `address` is where to send `data`; to the
 * client, it is where `data` came from.
 */
export interface UdpDatagram {
  /** 0 for a whole datagram; anything else is a fragment, which ferry drops. */
  readonly fragment: number;
  readonly address: Address;
  readonly data: Uint8Array;
}

/** Encodes the header `RSV RSV FRAG ATYP ADDR PORT` that goes before a datagram's data. */
export function encodeUdpHeader(address: Address, fragment = 0): Uint8Array {
  const out = encodeAfterPrefix(3, address);
  out[2] = fragment;
  return out;
}

/**
 * Decodes one whole datagram. Unlike the stream decoders there is no `more`:
 * a datagram arrives whole or not at all, so a short one throws
 * {@linkcode ProtocolError} `truncated`. `data` is a view into `bytes`.
 */
export function decodeUdpDatagram(bytes: Uint8Array): UdpDatagram {
  if (bytes.length < 4) {
    throw new ProtocolError("truncated", null, `UDP datagram of ${bytes.length} bytes, no header`);
  }
  const decoded = decodeAddressAt(bytes, 3);
  if (decoded === null) {
    throw new ProtocolError(
      "truncated",
      null,
      `UDP datagram of ${bytes.length} bytes ends inside its address`,
    );
  }
  return { fragment: bytes[2]!, address: decoded.address, data: bytes.subarray(decoded.end) };
}
