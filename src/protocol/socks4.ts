/**
 * SOCKS4 and SOCKS4a wire format. Pure, incremental codecs like
 * {@link ./socks5.ts}: `ok` with bytes consumed, `more`, or a
 * {@linkcode ProtocolError} carrying reply 91.
 *
 * SOCKS4a: a destination IP of `0.0.0.x` with x ≠ 0 means "the host name
 * follows the user id, NUL-terminated; resolve it for me".
 *
 * @module
 */
import { type Address, formatAddress, formatIPv4, parseIPv4 } from "./address.ts";
import {
  type Decoded,
  decodeHostName,
  hex,
  MORE,
  ok,
  ProtocolError,
  type ReadSoFar,
  room,
} from "./decoded.ts";

/** Version byte of a SOCKS4 request. */
export const VERSION = 0x04;
/** Version byte of a SOCKS4 reply (it is 0, not 4). */
export const REPLY_VERSION = 0x00;

/** Request commands. */
export const Command = { Connect: 0x01, Bind: 0x02 } as const;

/** Reply codes. */
export const Reply = {
  Granted: 90,
  Rejected: 91,
  NoIdentd: 92,
  IdentMismatch: 93,
} as const;

/** Longest user id accepted. Clients send user names here; 1 KiB must fit. */
export const MAX_USER_ID = 4096;
/** Longest SOCKS4a host name accepted (DNS names are at most 253 bytes). */
export const MAX_HOST_NAME = 255;

/** A SOCKS4 or SOCKS4a request. */
export interface Request {
  readonly command: number;
  readonly address: Address;
  readonly userId: Uint8Array;
}

/** A SOCKS4 reply. */
export interface ReplyMessage {
  readonly reply: number;
  readonly port: number;
  readonly ip: string;
}

const textEncoder = new TextEncoder();

/**
 * Finds the NUL ending a field that starts at `start`, or `-1` if it has not
 * arrived yet. Throws when the field is already longer than `max`.
 */
function findNul(bytes: Uint8Array, start: number, max: number, field: string): number {
  const limit = Math.min(bytes.length, start + max + 1);
  for (let i = start; i < limit; i++) if (bytes[i] === 0) return i;
  if (bytes.length > start + max) {
    throw new ProtocolError(
      "field-too-long",
      Reply.Rejected,
      `${field} longer than ${max} bytes`,
    );
  }
  return -1;
}

/**
 * Whether a request (its first 8 bytes at least) is SOCKS4a: DSTIP 0.0.0.x
 * with x ≠ 0 means a host name follows the user-id.
 */
export function asksForName(request: Uint8Array): boolean {
  return request.length >= 8 && request[4] === 0 && request[5] === 0 && request[6] === 0 &&
    request[7] !== 0;
}

/** A SOCKS4 (not 4a) request's target, from its first 8 bytes. */
function statedTarget(request: Uint8Array): string {
  const port = (request[2]! << 8) | request[3]!;
  return formatAddress({ host: formatIPv4(request.subarray(4, 8)), port });
}

/**
 * What the start of a request that never ended (the client closed or went
 * quiet) says, for the log line: a SOCKS4 target once its 8 bytes are in, the
 * user-id once its NUL is (and no longer than decodeRequest() takes). Never
 * a SOCKS4a name: whole, it would have ended the request.
 */
export function requestReadSoFar(bytes: Uint8Array): ReadSoFar {
  if (bytes.length < 8) return {};
  const nul = bytes.indexOf(0, 8);
  const userId = nul >= 0 && nul - 8 <= MAX_USER_ID ? { userId: bytes.slice(8, nul) } : {};
  return asksForName(bytes) ? userId : { ...userId, target: statedTarget(bytes) };
}

/** Decodes `VN CD DSTPORT DSTIP USERID NUL [HOST NUL]`. */
export function decodeRequest(bytes: Uint8Array): Decoded<Request> {
  if (bytes.length < 1) return MORE;
  if (bytes[0] !== VERSION) {
    throw new ProtocolError(
      "bad-version",
      null,
      `request version ${hex(bytes[0]!)}, expected 0x04`,
    );
  }
  if (bytes.length < 2) return MORE;
  const command = bytes[1]!;
  if (command !== Command.Connect && command !== Command.Bind) {
    throw new ProtocolError(
      "bad-command",
      Reply.Rejected,
      `command ${hex(command)}, expected 0x01 or 0x02`,
    );
  }
  if (bytes.length < 8) return MORE;
  const port = (bytes[2]! << 8) | bytes[3]!;
  const ip = bytes.subarray(4, 8);
  let userIdEnd: number;
  try {
    userIdEnd = findNul(bytes, 8, MAX_USER_ID, "user id");
  } catch (error) {
    // Too long a user-id: a SOCKS4 request's target came before it.
    if (!(error instanceof ProtocolError) || asksForName(bytes)) throw error;
    throw error.alsoRead({ target: statedTarget(bytes) });
  }
  if (userIdEnd < 0) return MORE;
  const userId = bytes.slice(8, userIdEnd);
  if (!asksForName(bytes)) {
    return ok(
      { command, userId, address: { type: "ipv4", host: formatIPv4(ip), port } },
      userIdEnd + 1,
    );
  }
  try {
    const hostStart = userIdEnd + 1;
    const hostEnd = findNul(bytes, hostStart, MAX_HOST_NAME, "SOCKS4a host name");
    if (hostEnd < 0) return MORE;
    if (hostEnd === hostStart) {
      throw new ProtocolError("empty-field", Reply.Rejected, "empty SOCKS4a host name");
    }
    const host = decodeHostName(bytes.subarray(hostStart, hostEnd), Reply.Rejected, port);
    return ok({ command, userId, address: { type: "domain", host, port } }, hostEnd + 1);
  } catch (error) {
    // A refused name: the line still says who asked.
    throw error instanceof ProtocolError ? error.alsoRead({ userId }) : error;
  }
}

/**
 * Encodes a request (used by clients and tests). A domain address is sent the
 * SOCKS4a way, with the marker IP 0.0.0.1.
 */
export function encodeRequest(request: Request): Uint8Array {
  const { address } = request;
  if (address.type === "ipv6") throw new RangeError("SOCKS4 cannot carry IPv6 addresses");
  const ip = address.type === "ipv4" ? parseIPv4(address.host) : Uint8Array.of(0, 0, 0, 1);
  if (ip === null) throw new RangeError(`not an IPv4 address: ${JSON.stringify(address.host)}`);
  const host = address.type === "domain" ? textEncoder.encode(address.host) : null;
  const out = new Uint8Array(8 + request.userId.length + 1 + (host ? host.length + 1 : 0));
  out.set([VERSION, request.command, address.port >> 8, address.port & 0xff, ...ip]);
  out.set(request.userId, 8);
  if (host) out.set(host, 9 + request.userId.length);
  return out;
}

/**
 * Encodes the 8-byte reply `VN=0 CD DSTPORT DSTIP`: into the start of `into`
 * when that is given and large enough (the result is then a view of it), else
 * into a new array.
 */
export function encodeReply(message: ReplyMessage, into?: Uint8Array): Uint8Array {
  const out = room(into, 8); // DSTIP stays 0.0.0.0 unless message.ip is a dotted quad
  out[0] = REPLY_VERSION;
  out[1] = message.reply;
  out[2] = message.port >> 8;
  out[3] = message.port & 0xff;
  const ip = parseIPv4(message.ip);
  if (ip) out.set(ip, 4);
  return out;
}

/** Decodes the 8-byte reply (used by clients and tests). */
export function decodeReply(bytes: Uint8Array): Decoded<ReplyMessage> {
  if (bytes.length < 1) return MORE;
  if (bytes[0] !== REPLY_VERSION) {
    throw new ProtocolError("bad-version", null, `reply version ${hex(bytes[0]!)}, expected 0x00`);
  }
  if (bytes.length < 8) return MORE;
  return ok({
    reply: bytes[1]!,
    port: (bytes[2]! << 8) | bytes[3]!,
    ip: formatIPv4(bytes.subarray(4, 8)),
  }, 8);
}
