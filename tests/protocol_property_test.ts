/**
 * Property tests for the SOCKS4/5 codecs: decode ∘ encode is the identity,
 * decoders answer `more` for every strict prefix of a message, and no byte
 * sequence makes a decoder do anything but answer ok/more or throw
 * ProtocolError.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { formatIPv4, formatIPv6 } from "../src/protocol/address.ts";
import { type Decoded, MORE, ProtocolError } from "../src/protocol/decoded.ts";
import * as socks4 from "../src/protocol/socks4.ts";
import * as socks5 from "../src/protocol/socks5.ts";
import { concat, type Decoder } from "./_helpers/codec_fixtures.ts";

// ---------------------------------------------------------------------------
// Arbitraries

/** `fc.record` with ordinary objects, as decoders build (fast-check 4 defaults to null prototypes). */
function record<T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }): fc.Arbitrary<T> {
  return fc.record(model, { noNullPrototype: true });
}

const byte = fc.integer({ min: 0, max: 255 });
const port = fc.integer({ min: 0, max: 65535 });
/** Bytes biased towards 0, so IPv6 zero runs and NULs come up often. */
const zeroishByte = fc.oneof(fc.constant(0), byte);

const ipv4Host = fc.uint8Array({ minLength: 4, maxLength: 4 }).map(formatIPv4);
const ipv6Host = fc.array(zeroishByte, { minLength: 16, maxLength: 16 })
  .map((bytes) => formatIPv6(Uint8Array.from(bytes)));
/** ASCII host names of 1 to 255 bytes without NUL. */
const domainName = fc.string({
  unit: fc.integer({ min: 1, max: 127 }).map((code) => String.fromCharCode(code)),
  minLength: 1,
  maxLength: 255,
  size: "max",
});

const socks5Address = fc.oneof(
  record({ type: fc.constant("ipv4" as const), host: ipv4Host, port }),
  record({ type: fc.constant("ipv6" as const), host: ipv6Host, port }),
  record({ type: fc.constant("domain" as const), host: domainName, port }),
);

const greeting: fc.Arbitrary<socks5.Greeting> = record({
  methods: fc.array(byte, { maxLength: 255, size: "max" }),
});
const credentials: fc.Arbitrary<socks5.Credentials> = record({
  username: fc.uint8Array({ maxLength: 255, size: "max" }),
  password: fc.uint8Array({ maxLength: 255, size: "max" }),
});
const socks5Request: fc.Arbitrary<socks5.Request> = record({
  command: byte,
  address: socks5Address,
});
const socks5Reply: fc.Arbitrary<socks5.ReplyMessage> = record({
  reply: byte,
  address: socks5Address,
});

/** IPv4 destinations that are not the SOCKS4a marker 0.0.0.x, x ≠ 0. */
const socks4Ip = fc.uint8Array({ minLength: 4, maxLength: 4 })
  .filter((ip) => !(ip[0] === 0 && ip[1] === 0 && ip[2] === 0 && ip[3] !== 0))
  .map(formatIPv4);
const userId = fc.array(fc.integer({ min: 1, max: 255 }), { maxLength: 600, size: "medium" })
  .map((bytes) => Uint8Array.from(bytes));
const socks4Command = fc.constantFrom(socks4.Command.Connect, socks4.Command.Bind);

const socks4Request: fc.Arbitrary<socks4.Request> = record({
  command: socks4Command,
  address: record({ type: fc.constant("ipv4" as const), host: socks4Ip, port }),
  userId,
});
const socks4aRequest: fc.Arbitrary<socks4.Request> = record({
  command: socks4Command,
  address: record({ type: fc.constant("domain" as const), host: domainName, port }),
  userId,
});
const socks4Reply: fc.Arbitrary<socks4.ReplyMessage> = record({
  reply: byte,
  port,
  ip: ipv4Host,
});

/** A codec under test: how to make values, encode them and decode them. */
interface Codec<T> {
  readonly name: string;
  readonly values: fc.Arbitrary<T>;
  readonly encode: (value: T) => Uint8Array;
  readonly decode: Decoder<T>;
}

function codec<T>(
  name: string,
  values: fc.Arbitrary<T>,
  encode: (value: T) => Uint8Array,
  decode: Decoder<T>,
): Codec<T> {
  return { name, values, encode, decode };
}

const codecs = [
  codec("socks5 greeting", greeting, socks5.encodeGreeting, socks5.decodeGreeting),
  codec("socks5 credentials", credentials, socks5.encodeCredentials, socks5.decodeCredentials),
  codec("socks5 request", socks5Request, socks5.encodeRequest, socks5.decodeRequest),
  codec("socks5 reply", socks5Reply, socks5.encodeReply, socks5.decodeReply),
  codec(
    "socks5 method selection",
    byte,
    socks5.encodeMethodSelection,
    socks5.decodeMethodSelection,
  ),
  codec("socks5 auth status", byte, socks5.encodeAuthStatus, socks5.decodeAuthStatus),
  codec("socks4 request", socks4Request, socks4.encodeRequest, socks4.decodeRequest),
  codec("socks4a request", socks4aRequest, socks4.encodeRequest, socks4.decodeRequest),
  codec("socks4 reply", socks4Reply, socks4.encodeReply, socks4.decodeReply),
] as const;

/** Every decoder, with the version bytes that get past its first check. */
const decoders: readonly { name: string; decode: Decoder<unknown>; versions: number[] }[] = [
  { name: "socks5.decodeGreeting", decode: socks5.decodeGreeting, versions: [0x05] },
  { name: "socks5.decodeCredentials", decode: socks5.decodeCredentials, versions: [0x01] },
  { name: "socks5.decodeRequest", decode: socks5.decodeRequest, versions: [0x05] },
  { name: "socks5.decodeReply", decode: socks5.decodeReply, versions: [0x05] },
  {
    name: "socks5.decodeMethodSelection",
    decode: socks5.decodeMethodSelection,
    versions: [0x05],
  },
  { name: "socks5.decodeAuthStatus", decode: socks5.decodeAuthStatus, versions: [0x01] },
  { name: "socks4.decodeRequest", decode: socks4.decodeRequest, versions: [0x04] },
  { name: "socks4.decodeReply", decode: socks4.decodeReply, versions: [0x00] },
];

/**
 * Checks the decoder contract on arbitrary input: ok/more or ProtocolError;
 * an ok consumes 1..input.length bytes and depends only on those bytes, every
 * strict prefix of which answers `more`.
 */
function assertContract(decode: Decoder<unknown>, input: Uint8Array): void {
  let result: Decoded<unknown>;
  try {
    result = decode(input);
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    assert.ok(
      error.reply === null || (Number.isInteger(error.reply) && error.reply >= 0 &&
        error.reply <= 255),
      `reply ${error.reply}`,
    );
    return;
  }
  if (result.kind === "more") {
    assert.deepEqual(result, MORE);
    return;
  }
  assert.equal(result.kind, "ok");
  assert.deepEqual(Object.keys(result).sort(), ["consumed", "kind", "value"]);
  assert.ok(Number.isInteger(result.consumed), "consumed is an integer");
  assert.ok(result.consumed >= 1 && result.consumed <= input.length, `consumed ${result.consumed}`);
  const message = input.subarray(0, result.consumed);
  assert.deepEqual(decode(message), result, "ok depends only on the consumed bytes");
  for (let end = 0; end < result.consumed; end++) {
    assert.deepEqual(decode(message.subarray(0, end)), MORE, `prefix of ${end} bytes`);
  }
}

// ---------------------------------------------------------------------------
// Round trips

for (const { name, values, encode, decode } of codecs) {
  Deno.test(`${name}: decode(encode(x)) is x and consumes every byte`, () => {
    fc.assert(
      fc.property(values as fc.Arbitrary<unknown>, (value) => {
        const encoded = (encode as (v: unknown) => Uint8Array)(value);
        assert.deepEqual(decode(encoded), { kind: "ok", value, consumed: encoded.length });
      }),
      { numRuns: 200 },
    );
  });

  Deno.test(`${name}: a strict prefix is more, the whole is ok, trailing bytes are left`, () => {
    fc.assert(
      fc.property(
        values as fc.Arbitrary<unknown>,
        fc.nat(),
        fc.uint8Array({ maxLength: 32 }),
        (value, splitSeed, trailing) => {
          const encoded = (encode as (v: unknown) => Uint8Array)(value);
          const split = splitSeed % encoded.length;
          assert.deepEqual(decode(encoded.subarray(0, split)), MORE, `split at ${split}`);
          const whole = concat(encoded.subarray(0, split), encoded.subarray(split));
          assert.deepEqual(decode(whole), { kind: "ok", value, consumed: encoded.length });
          assert.deepEqual(decode(concat(encoded, trailing)), {
            kind: "ok",
            value,
            consumed: encoded.length,
          });
        },
      ),
      { numRuns: 200 },
    );
  });

  Deno.test(`${name}: a valid encoding with one byte changed keeps the decoder contract`, () => {
    fc.assert(
      fc.property(
        values as fc.Arbitrary<unknown>,
        fc.nat(),
        byte,
        fc.nat(),
        (value, atSeed, replacement, cutSeed) => {
          const encoded = (encode as (v: unknown) => Uint8Array)(value).slice();
          encoded[atSeed % encoded.length] = replacement;
          assertContract(decode as Decoder<unknown>, encoded);
          assertContract(
            decode as Decoder<unknown>,
            encoded.subarray(0, cutSeed % (encoded.length + 1)),
          );
        },
      ),
      { numRuns: 200 },
    );
  });
}

// ---------------------------------------------------------------------------
// Arbitrary bytes

for (const { name, decode, versions } of decoders) {
  Deno.test(`${name}() answers ok/more or throws ProtocolError for random bytes`, () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300, size: "medium" }), (input) => {
        assertContract(decode, input);
      }),
      { numRuns: 300 },
    );
  });

  Deno.test(
    `${name}() answers ok/more or throws ProtocolError for random bytes after a valid version`,
    () => {
      fc.assert(
        fc.property(
          fc.constantFrom(...versions),
          fc.array(zeroishByte, { maxLength: 300, size: "medium" }),
          (version, rest) => {
            assertContract(decode, Uint8Array.of(version, ...rest));
          },
        ),
        { numRuns: 300 },
      );
    },
  );
}

Deno.test("socks5.decodeRequest() keeps the contract for random requests with each ATYP", () => {
  fc.assert(
    fc.property(
      byte,
      byte,
      fc.constantFrom(0x01, 0x03, 0x04, 0x00, 0x02, 0x05, 0xff),
      fc.array(zeroishByte, { maxLength: 300, size: "medium" }),
      (command, reserved, addressType, rest) => {
        assertContract(
          socks5.decodeRequest,
          Uint8Array.of(socks5.VERSION, command, reserved, addressType, ...rest),
        );
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("socks4.decodeRequest() keeps the contract for random SOCKS4a-marked requests", () => {
  fc.assert(
    fc.property(
      fc.oneof(socks4Command, byte),
      fc.uint8Array({ minLength: 2, maxLength: 2 }),
      byte,
      fc.array(fc.oneof(fc.constant(0), fc.constant(0x61), byte), {
        maxLength: 600,
        size: "medium",
      }),
      (command, portBytes, marker, rest) => {
        assertContract(
          socks4.decodeRequest,
          Uint8Array.of(socks4.VERSION, command, ...portBytes, 0, 0, 0, marker, ...rest),
        );
      },
    ),
    { numRuns: 500 },
  );
});
