/**
 * Byte-level fixtures for the SOCKS5 (RFC 1928) and username/password
 * (RFC 1929) codecs. Every decodable fixture is also fed one byte short at
 * every offset (must answer `more`) and followed by pipelined bytes (must
 * consume exactly the fixture). Every malformed fixture must throw from the
 * first prefix that holds the offending byte and answer `more` before it.
 */
import assert from "node:assert/strict";
import {
  ascii,
  concat,
  type ErrorFixture,
  filled,
  fixtureChecks,
  type OkFixture,
} from "./_helpers/codec_fixtures.ts";
import { hex, printableBytes, ProtocolError } from "../src/protocol/decoded.ts";
import {
  AddressType,
  AuthStatus,
  Command,
  type Credentials,
  decodeAuthStatus,
  decodeCredentials,
  decodeGreeting,
  decodeMethodSelection,
  decodeReply,
  decodeRequest,
  encodeAuthStatus,
  encodeCredentials,
  encodeGreeting,
  encodeMethodSelection,
  encodeReply,
  encodeRequest,
  type Greeting,
  Method,
  Reply,
  type ReplyMessage,
  replyName,
  type Request,
  UNBOUND,
} from "../src/protocol/socks5.ts";

// ---------------------------------------------------------------------------
// Helpers

/** Bytes a client may pipeline right after a handshake message. */
const TRAILING = concat(Uint8Array.of(0x05, 0x00, 0xff), ascii("GET / HTTP/1.1\r\n\r\n"));
const { assertDecodesIncrementally, assertRejectsFrom } = fixtureChecks(TRAILING);

// ---------------------------------------------------------------------------
// decodeGreeting

const greetingFixtures: OkFixture<Greeting>[] = [
  {
    name: "one method",
    // VER  NMETHODS  METHODS: no auth
    bytes: Uint8Array.of(0x05, 0x01, 0x00),
    value: { methods: [Method.NoAuth] },
  },
  {
    name: "two methods",
    // VER  NMETHODS  METHODS: no auth, username/password
    bytes: Uint8Array.of(0x05, 0x02, 0x00, 0x02),
    value: { methods: [Method.NoAuth, Method.UserPass] },
  },
  {
    name: "three methods",
    // VER  NMETHODS  METHODS: no auth, GSSAPI, username/password
    bytes: Uint8Array.of(0x05, 0x03, 0x00, 0x01, 0x02),
    value: { methods: [Method.NoAuth, Method.GssApi, Method.UserPass] },
  },
  {
    name: "NMETHODS=0",
    // VER  NMETHODS
    bytes: Uint8Array.of(0x05, 0x00),
    value: { methods: [] },
  },
  {
    name: "255 methods",
    // VER  NMETHODS=255  METHODS: 0x00..0xfe
    bytes: Uint8Array.of(0x05, 0xff, ...Array.from({ length: 255 }, (_, i) => i)),
    value: { methods: Array.from({ length: 255 }, (_, i) => i) },
  },
];

for (const fixture of greetingFixtures) {
  Deno.test(`decodeGreeting() decodes ${fixture.name} at every split`, () => {
    assertDecodesIncrementally(decodeGreeting, fixture.bytes, fixture.value);
  });
}

const greetingErrors: ErrorFixture[] = [
  {
    name: "SOCKS4 version byte",
    // VER=4  NMETHODS  METHODS
    bytes: Uint8Array.of(0x04, 0x01, 0x00),
    throwsFrom: 1,
    code: "bad-version",
    reply: null,
  },
  {
    name: "version 0x00",
    bytes: Uint8Array.of(0x00, 0x01, 0x00),
    throwsFrom: 1,
    code: "bad-version",
    reply: null,
  },
  {
    name: "an HTTP request",
    bytes: ascii("GET / HTTP/1.1\r\n"),
    throwsFrom: 1,
    code: "bad-version",
    reply: null,
  },
];

for (const fixture of greetingErrors) {
  Deno.test(`decodeGreeting() rejects ${fixture.name} with bad-version and no reply`, () => {
    assertRejectsFrom(decodeGreeting, fixture);
  });
}

// ---------------------------------------------------------------------------
// decodeCredentials

const credentialFixtures: OkFixture<Credentials>[] = [
  {
    name: "a username and password",
    // VER  ULEN  UNAME "alice"  PLEN  PASSWD "secret"
    bytes: Uint8Array.of(0x01, 0x05, ...ascii("alice"), 0x06, ...ascii("secret")),
    value: { username: ascii("alice"), password: ascii("secret") },
  },
  {
    name: "an empty username and password",
    // VER  ULEN=0  PLEN=0
    bytes: Uint8Array.of(0x01, 0x00, 0x00),
    value: { username: new Uint8Array(0), password: new Uint8Array(0) },
  },
  {
    name: "an empty username",
    // VER  ULEN=0  PLEN  PASSWD "pw"
    bytes: Uint8Array.of(0x01, 0x00, 0x02, ...ascii("pw")),
    value: { username: new Uint8Array(0), password: ascii("pw") },
  },
  {
    name: "an empty password",
    // VER  ULEN  UNAME "bob"  PLEN=0
    bytes: Uint8Array.of(0x01, 0x03, ...ascii("bob"), 0x00),
    value: { username: ascii("bob"), password: new Uint8Array(0) },
  },
  {
    name: "255-byte fields",
    // VER  ULEN=255  UNAME "u"*255  PLEN=255  PASSWD "p"*255
    bytes: Uint8Array.of(0x01, 0xff, ...filled(255, 0x75), 0xff, ...filled(255, 0x70)),
    value: { username: filled(255, 0x75), password: filled(255, 0x70) },
  },
  {
    name: "non-UTF-8 bytes and NULs",
    // VER  ULEN  UNAME ff 00 fe  PLEN  PASSWD 00 80
    bytes: Uint8Array.of(0x01, 0x03, 0xff, 0x00, 0xfe, 0x02, 0x00, 0x80),
    value: { username: Uint8Array.of(0xff, 0x00, 0xfe), password: Uint8Array.of(0x00, 0x80) },
  },
];

for (const fixture of credentialFixtures) {
  Deno.test(`decodeCredentials() decodes ${fixture.name} at every split`, () => {
    assertDecodesIncrementally(decodeCredentials, fixture.bytes, fixture.value);
  });
}

Deno.test("decodeCredentials() copies the fields out of the input buffer", () => {
  const input = Uint8Array.of(0x01, 0x02, ...ascii("ab"), 0x02, ...ascii("cd"));
  const decoded = decodeCredentials(input);
  input.fill(0);
  assert.deepEqual(decoded, {
    kind: "ok",
    value: { username: ascii("ab"), password: ascii("cd") },
    consumed: 7,
  });
});

const credentialErrors: ErrorFixture[] = [
  {
    name: "SOCKS5 version byte",
    // VER=5  ULEN  UNAME  PLEN  PASSWD
    bytes: Uint8Array.of(0x05, 0x01, 0x61, 0x01, 0x62),
    throwsFrom: 1,
    code: "bad-auth-version",
    reply: AuthStatus.Failure,
  },
  {
    name: "version 0x00",
    bytes: Uint8Array.of(0x00, 0x00, 0x00),
    throwsFrom: 1,
    code: "bad-auth-version",
    reply: AuthStatus.Failure,
  },
];

for (const fixture of credentialErrors) {
  Deno.test(`decodeCredentials() rejects ${fixture.name} with reply 0x01`, () => {
    assertRejectsFrom(decodeCredentials, fixture);
  });
}

// ---------------------------------------------------------------------------
// decodeRequest

const requestFixtures: OkFixture<Request>[] = [
  {
    name: "CONNECT to IPv4",
    // VER  CMD=CONNECT  RSV  ATYP=IPv4  DST.ADDR 127.0.0.1  DST.PORT 8080
    bytes: Uint8Array.of(0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, 0x1f, 0x90),
    value: { command: Command.Connect, address: { type: "ipv4", host: "127.0.0.1", port: 8080 } },
  },
  {
    name: "CONNECT to IPv6",
    // VER  CMD=CONNECT  RSV  ATYP=IPv6  DST.ADDR 2001:db8::1  DST.PORT 443
    bytes: Uint8Array.of(
      0x05,
      0x01,
      0x00,
      0x04,
      ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
      0x01,
      0xbb,
    ),
    value: { command: Command.Connect, address: { type: "ipv6", host: "2001:db8::1", port: 443 } },
  },
  {
    name: "CONNECT to IPv6 ::",
    // VER  CMD=CONNECT  RSV  ATYP=IPv6  DST.ADDR ::  DST.PORT 1
    bytes: Uint8Array.of(0x05, 0x01, 0x00, 0x04, ...new Uint8Array(16), 0x00, 0x01),
    value: { command: Command.Connect, address: { type: "ipv6", host: "::", port: 1 } },
  },
  {
    name: "CONNECT to a domain name",
    // VER  CMD=CONNECT  RSV  ATYP=DOMAIN  LEN=11  "example.com"  DST.PORT 80
    bytes: Uint8Array.of(0x05, 0x01, 0x00, 0x03, 0x0b, ...ascii("example.com"), 0x00, 0x50),
    value: {
      command: Command.Connect,
      address: { type: "domain", host: "example.com", port: 80 },
    },
  },
  {
    // A BOM is part of the name: stripped, two different names would become one.
    name: "CONNECT to a domain name that starts with U+FEFF, kept",
    // VER  CMD=CONNECT  RSV  ATYP=DOMAIN  LEN=14  EF BB BF "example.com"  DST.PORT 80
    bytes: Uint8Array.of(
      0x05,
      0x01,
      0x00,
      0x03,
      0x0e,
      0xef,
      0xbb,
      0xbf,
      ...ascii("example.com"),
      0x00,
      0x50,
    ),
    value: {
      command: Command.Connect,
      address: { type: "domain", host: "\ufeffexample.com", port: 80 },
    },
  },
  {
    name: "CONNECT to a 255-byte domain name and port 65535",
    // VER  CMD=CONNECT  RSV  ATYP=DOMAIN  LEN=255  "a"*255  DST.PORT 65535
    bytes: Uint8Array.of(0x05, 0x01, 0x00, 0x03, 0xff, ...filled(255, 0x61), 0xff, 0xff),
    value: {
      command: Command.Connect,
      address: { type: "domain", host: "a".repeat(255), port: 65535 },
    },
  },
  {
    name: "BIND (the session rejects it, the codec does not)",
    // VER  CMD=BIND  RSV  ATYP=IPv4  DST.ADDR 10.0.0.2  DST.PORT 0
    bytes: Uint8Array.of(0x05, 0x02, 0x00, 0x01, 10, 0, 0, 2, 0x00, 0x00),
    value: { command: Command.Bind, address: { type: "ipv4", host: "10.0.0.2", port: 0 } },
  },
  {
    name: "UDP ASSOCIATE (the session rejects it, the codec does not)",
    // VER  CMD=UDP ASSOCIATE  RSV  ATYP=IPv4  DST.ADDR 0.0.0.0  DST.PORT 0
    bytes: Uint8Array.of(0x05, 0x03, 0x00, 0x01, 0, 0, 0, 0, 0x00, 0x00),
    value: {
      command: Command.UdpAssociate,
      address: { type: "ipv4", host: "0.0.0.0", port: 0 },
    },
  },
  {
    name: "an unknown command value",
    // VER  CMD=0x7f  RSV  ATYP=IPv4  DST.ADDR 1.2.3.4  DST.PORT 258
    bytes: Uint8Array.of(0x05, 0x7f, 0x00, 0x01, 1, 2, 3, 4, 0x01, 0x02),
    value: { command: 0x7f, address: { type: "ipv4", host: "1.2.3.4", port: 258 } },
  },
  {
    name: "a non-zero RSV byte (ignored)",
    // VER  CMD=CONNECT  RSV=0xff  ATYP=IPv4  DST.ADDR 8.8.8.8  DST.PORT 53
    bytes: Uint8Array.of(0x05, 0x01, 0xff, 0x01, 8, 8, 8, 8, 0x00, 0x35),
    value: { command: Command.Connect, address: { type: "ipv4", host: "8.8.8.8", port: 53 } },
  },
];

for (const fixture of requestFixtures) {
  Deno.test(`decodeRequest() decodes ${fixture.name} at every split`, () => {
    assertDecodesIncrementally(decodeRequest, fixture.bytes, fixture.value);
  });
}

const requestErrors: ErrorFixture[] = [
  {
    name: "ATYP 0x02",
    // VER  CMD  RSV  ATYP=0x02  …
    bytes: Uint8Array.of(0x05, 0x01, 0x00, 0x02, 1, 2, 3, 4, 0x00, 0x50),
    throwsFrom: 4,
    code: "bad-address-type",
    reply: Reply.AddressTypeNotSupported,
  },
  {
    name: "ATYP 0x05",
    bytes: Uint8Array.of(0x05, 0x01, 0x00, 0x05, 1, 2, 3, 4, 0x00, 0x50),
    throwsFrom: 4,
    code: "bad-address-type",
    reply: Reply.AddressTypeNotSupported,
  },
  {
    name: "ATYP 0x00",
    bytes: Uint8Array.of(0x05, 0x01, 0x00, 0x00, 0x00, 0x50),
    throwsFrom: 4,
    code: "bad-address-type",
    reply: Reply.AddressTypeNotSupported,
  },
  {
    name: "an empty domain name",
    // VER  CMD  RSV  ATYP=DOMAIN  LEN=0  DST.PORT
    bytes: Uint8Array.of(0x05, 0x01, 0x00, 0x03, 0x00, 0x00, 0x50),
    throwsFrom: 5,
    code: "empty-field",
    reply: Reply.HostUnreachable,
  },
  {
    name: "a domain name that is not UTF-8 (never replaced with U+FFFD and looked up)",
    // VER  CMD  RSV  ATYP=DOMAIN  LEN=9  "caf\xe9.test"  DST.PORT
    bytes: Uint8Array.of(
      0x05,
      0x01,
      0x00,
      0x03,
      9,
      0x63,
      0x61,
      0x66,
      0xe9,
      ...ascii(".test"),
      0x1b,
      0x58,
    ),
    throwsFrom: 16, // with its port, for the log line
    code: "bad-host-name",
    reply: Reply.HostUnreachable,
  },
  {
    name: "SOCKS4 version byte",
    // VER=4  CMD  RSV  ATYP  DST.ADDR  DST.PORT
    bytes: Uint8Array.of(0x04, 0x01, 0x00, 0x01, 1, 2, 3, 4, 0x00, 0x50),
    throwsFrom: 1,
    code: "bad-version",
    reply: Reply.GeneralFailure,
  },
];

for (const fixture of requestErrors) {
  Deno.test(`decodeRequest() rejects ${fixture.name} with reply ${hex(fixture.reply!)}`, () => {
    assertRejectsFrom(decodeRequest, fixture);
  });
}

// ---------------------------------------------------------------------------
// decodeReply, decodeMethodSelection, decodeAuthStatus (client side)

const replyFixtures: OkFixture<ReplyMessage>[] = [
  {
    name: "success bound to 0.0.0.0:0",
    // VER  REP=succeeded  RSV  ATYP=IPv4  BND.ADDR 0.0.0.0  BND.PORT 0
    bytes: Uint8Array.of(0x05, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0x00, 0x00),
    value: { reply: Reply.Succeeded, address: UNBOUND },
  },
  {
    name: "success bound to an IPv6 address",
    // VER  REP=succeeded  RSV  ATYP=IPv6  BND.ADDR fe80::1:2  BND.PORT 40000
    bytes: Uint8Array.of(
      0x05,
      0x00,
      0x00,
      0x04,
      ...[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0x02],
      0x9c,
      0x40,
    ),
    value: { reply: Reply.Succeeded, address: { type: "ipv6", host: "fe80::1:2", port: 40000 } },
  },
  {
    name: "connection refused",
    // VER  REP=connection refused  RSV  ATYP=IPv4  BND.ADDR 0.0.0.0  BND.PORT 0
    bytes: Uint8Array.of(0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0x00, 0x00),
    value: { reply: Reply.ConnectionRefused, address: UNBOUND },
  },
  {
    name: "a domain-name bound address",
    // VER  REP=succeeded  RSV  ATYP=DOMAIN  LEN=5  "proxy"  BND.PORT 1080
    bytes: Uint8Array.of(0x05, 0x00, 0x00, 0x03, 0x05, ...ascii("proxy"), 0x04, 0x38),
    value: { reply: Reply.Succeeded, address: { type: "domain", host: "proxy", port: 1080 } },
  },
];

for (const fixture of replyFixtures) {
  Deno.test(`decodeReply() decodes ${fixture.name} at every split`, () => {
    assertDecodesIncrementally(decodeReply, fixture.bytes, fixture.value);
  });
}

Deno.test("decodeReply() rejects a bad version with no reply", () => {
  assertRejectsFrom(decodeReply, {
    name: "SOCKS4 reply version",
    // VN=0 (a SOCKS4 reply)  CD=90  DSTPORT  DSTIP
    bytes: Uint8Array.of(0x00, 90, 0x00, 0x50, 1, 2, 3, 4),
    throwsFrom: 1,
    code: "bad-version",
    reply: null,
  });
});

Deno.test("decodeReply() rejects ATYP 0x02 with reply 0x08", () => {
  assertRejectsFrom(decodeReply, {
    name: "ATYP 0x02",
    bytes: Uint8Array.of(0x05, 0x00, 0x00, 0x02, 0, 0, 0, 0, 0x00, 0x00),
    throwsFrom: 4,
    code: "bad-address-type",
    reply: Reply.AddressTypeNotSupported,
  });
});

const methodSelectionFixtures: OkFixture<number>[] = [
  // VER  METHOD
  { name: "no auth", bytes: Uint8Array.of(0x05, 0x00), value: Method.NoAuth },
  { name: "username/password", bytes: Uint8Array.of(0x05, 0x02), value: Method.UserPass },
  { name: "no acceptable methods", bytes: Uint8Array.of(0x05, 0xff), value: Method.NoAcceptable },
];

for (const fixture of methodSelectionFixtures) {
  Deno.test(`decodeMethodSelection() decodes ${fixture.name} at every split`, () => {
    assertDecodesIncrementally(decodeMethodSelection, fixture.bytes, fixture.value);
  });
}

Deno.test("decodeMethodSelection() rejects a bad version with no reply", () => {
  assertRejectsFrom(decodeMethodSelection, {
    name: "SOCKS4 version byte",
    // VER=4  METHOD
    bytes: Uint8Array.of(0x04, 0x00),
    throwsFrom: 1,
    code: "bad-version",
    reply: null,
  });
});

const authStatusFixtures: OkFixture<number>[] = [
  // VER  STATUS
  { name: "success", bytes: Uint8Array.of(0x01, 0x00), value: AuthStatus.Success },
  { name: "failure", bytes: Uint8Array.of(0x01, 0x01), value: AuthStatus.Failure },
  { name: "a non-zero failure status", bytes: Uint8Array.of(0x01, 0xff), value: 0xff },
  // Lenient on purpose: some servers answer RFC 1929 with VER=0x05.
  { name: "status after VER=0x05", bytes: Uint8Array.of(0x05, 0x00), value: AuthStatus.Success },
];

for (const fixture of authStatusFixtures) {
  Deno.test(`decodeAuthStatus() decodes ${fixture.name} at every split`, () => {
    assertDecodesIncrementally(decodeAuthStatus, fixture.bytes, fixture.value);
  });
}

// ---------------------------------------------------------------------------
// Encoders

Deno.test("encodeGreeting() writes VER NMETHODS METHODS", () => {
  assert.deepEqual(
    encodeGreeting({ methods: [Method.NoAuth, Method.UserPass] }),
    Uint8Array.of(0x05, 0x02, 0x00, 0x02),
  );
  assert.deepEqual(encodeGreeting({ methods: [] }), Uint8Array.of(0x05, 0x00));
});

Deno.test("encodeMethodSelection() writes VER METHOD", () => {
  assert.deepEqual(encodeMethodSelection(Method.UserPass), Uint8Array.of(0x05, 0x02));
  assert.deepEqual(encodeMethodSelection(Method.NoAcceptable), Uint8Array.of(0x05, 0xff));
});

Deno.test("encodeCredentials() writes VER ULEN UNAME PLEN PASSWD", () => {
  assert.deepEqual(
    encodeCredentials({ username: ascii("alice"), password: ascii("secret") }),
    Uint8Array.of(0x01, 0x05, ...ascii("alice"), 0x06, ...ascii("secret")),
  );
  assert.deepEqual(
    encodeCredentials({ username: new Uint8Array(0), password: new Uint8Array(0) }),
    Uint8Array.of(0x01, 0x00, 0x00),
  );
  assert.deepEqual(
    encodeCredentials({ username: filled(255, 0x75), password: filled(255, 0x70) }),
    Uint8Array.of(0x01, 0xff, ...filled(255, 0x75), 0xff, ...filled(255, 0x70)),
  );
});

Deno.test("encodeCredentials() refuses fields over 255 bytes", () => {
  assert.throws(
    () => encodeCredentials({ username: filled(256, 0x75), password: new Uint8Array(0) }),
    RangeError,
  );
  assert.throws(
    () => encodeCredentials({ username: new Uint8Array(0), password: filled(256, 0x70) }),
    RangeError,
  );
});

Deno.test("encodeAuthStatus() writes VER=0x01 STATUS", () => {
  assert.deepEqual(encodeAuthStatus(AuthStatus.Success), Uint8Array.of(0x01, 0x00));
  assert.deepEqual(encodeAuthStatus(AuthStatus.Failure), Uint8Array.of(0x01, 0x01));
});

Deno.test("encodeRequest() writes IPv4, IPv6 and domain requests", () => {
  assert.deepEqual(
    encodeRequest({
      command: Command.Connect,
      address: { type: "ipv4", host: "127.0.0.1", port: 8080 },
    }),
    // VER  CMD  RSV  ATYP=IPv4  DST.ADDR  DST.PORT
    Uint8Array.of(0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, 0x1f, 0x90),
  );
  assert.deepEqual(
    encodeRequest({ command: Command.Bind, address: { type: "ipv6", host: "::1", port: 443 } }),
    // VER  CMD=BIND  RSV  ATYP=IPv6  DST.ADDR ::1  DST.PORT
    Uint8Array.of(0x05, 0x02, 0x00, 0x04, ...new Uint8Array(15), 0x01, 0x01, 0xbb),
  );
  assert.deepEqual(
    encodeRequest({
      command: Command.Connect,
      address: { type: "domain", host: "example.com", port: 80 },
    }),
    // VER  CMD  RSV  ATYP=DOMAIN  LEN  NAME  DST.PORT
    Uint8Array.of(0x05, 0x01, 0x00, 0x03, 0x0b, ...ascii("example.com"), 0x00, 0x50),
  );
});

Deno.test("encodeRequest() writes a domain name's length in UTF-8 bytes", () => {
  assert.deepEqual(
    encodeRequest({ command: Command.Connect, address: { type: "domain", host: "é", port: 1 } }),
    Uint8Array.of(0x05, 0x01, 0x00, 0x03, 0x02, 0xc3, 0xa9, 0x00, 0x01),
  );
});

Deno.test("encodeRequest() refuses addresses the wire cannot carry", () => {
  const cases: Request["address"][] = [
    { type: "domain", host: "", port: 80 },
    { type: "domain", host: "a".repeat(256), port: 80 },
    { type: "ipv4", host: "256.0.0.1", port: 80 },
    { type: "ipv4", host: "example.com", port: 80 },
    { type: "ipv6", host: "1.2.3.4", port: 80 },
  ];
  for (const address of cases) {
    assert.throws(() => encodeRequest({ command: Command.Connect, address }), RangeError);
  }
});

Deno.test("encodeReply() writes VER REP RSV ATYP BND.ADDR BND.PORT", () => {
  assert.deepEqual(
    encodeReply({ reply: Reply.Succeeded, address: UNBOUND }),
    Uint8Array.of(0x05, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0x00, 0x00),
  );
  assert.deepEqual(
    encodeReply({
      reply: Reply.Succeeded,
      address: { type: "ipv4", host: "192.168.1.20", port: 50000 },
    }),
    Uint8Array.of(0x05, 0x00, 0x00, 0x01, 192, 168, 1, 20, 0xc3, 0x50),
  );
  assert.deepEqual(
    encodeReply({
      reply: Reply.Succeeded,
      address: { type: "ipv6", host: "2001:db8::ff", port: 1080 },
    }),
    Uint8Array.of(
      0x05,
      0x00,
      0x00,
      AddressType.IPv6,
      ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff],
      0x04,
      0x38,
    ),
  );
  assert.deepEqual(
    encodeReply({ reply: Reply.HostUnreachable, address: UNBOUND }),
    Uint8Array.of(0x05, 0x04, 0x00, 0x01, 0, 0, 0, 0, 0x00, 0x00),
  );
  assert.deepEqual(
    encodeReply({
      reply: Reply.AddressTypeNotSupported,
      address: { type: "domain", host: "x", port: 7 },
    }),
    Uint8Array.of(0x05, 0x08, 0x00, AddressType.Domain, 0x01, 0x78, 0x00, 0x07),
  );
});

Deno.test("encodeReply(message, into) writes the same bytes into the caller's buffer", () => {
  const messages = [
    { reply: Reply.Succeeded, address: { type: "ipv4", host: "10.1.2.3", port: 4321 } },
    { reply: Reply.Succeeded, address: { type: "ipv6", host: "::1", port: 80 } },
    { reply: Reply.GeneralFailure, address: { type: "domain", host: "example.org", port: 1 } },
  ] as const;
  for (const message of messages) {
    const into = new Uint8Array(64).fill(0xaa); // stale bytes must not show through
    const encoded = encodeReply(message, into);
    assert.deepEqual(encoded, encodeReply(message));
    assert.equal(encoded.buffer, into.buffer, "not written into the given buffer");
    assert.equal(encoded.byteOffset, into.byteOffset);
    assert.equal(into[encoded.length], 0xaa, "wrote past the message");
  }
  // Exactly the size of an IPv4 reply (10 bytes): still written into it.
  const exact = new Uint8Array(10).fill(0xaa);
  const ipv4Reply = encodeReply(messages[0], exact);
  assert.equal(ipv4Reply.buffer, exact.buffer, "an exact fit is room enough");
  assert.deepEqual(ipv4Reply, encodeReply(messages[0]));
  // Too small for an IPv6 reply (22 bytes): a new array, the buffer untouched.
  const small = new Uint8Array(12).fill(0xaa);
  const reply = {
    reply: Reply.Succeeded,
    address: { type: "ipv6", host: "::1", port: 80 },
  } as const;
  const encoded = encodeReply(reply, small);
  assert.notEqual(encoded.buffer, small.buffer);
  assert.deepEqual(encoded, encodeReply(reply));
  assert.deepEqual(small, new Uint8Array(12).fill(0xaa));
});

// ---------------------------------------------------------------------------
// replyName

Deno.test("replyName() names every RFC 1928 reply code", () => {
  assert.deepEqual(
    Object.values(Reply).map(replyName),
    [
      "succeeded",
      "general-failure",
      "not-allowed",
      "network-unreachable",
      "host-unreachable",
      "connection-refused",
      "ttl-expired",
      "command-not-supported",
      "address-type-not-supported",
    ],
  );
});

Deno.test("replyName() falls back to reply-0xNN for unknown codes", () => {
  assert.equal(replyName(0x09), "reply-0x09");
  assert.equal(replyName(0x2a), "reply-0x2a");
  assert.equal(replyName(0xff), "reply-0xff");
});

Deno.test("printableBytes() keeps printable ASCII and writes every other byte, quote and backslash as \\xNN", () => {
  assert.equal(printableBytes(new TextEncoder().encode("example.com")), "example.com");
  // The ends of printable ASCII: space and tilde.
  assert.equal(printableBytes(new TextEncoder().encode("a b~")), "a b~");
  assert.equal(
    printableBytes(Uint8Array.of(0x63, 0xe9, 0x22, 0x5c, 0x0a, 0x7f)),
    "c\\xe9\\x22\\x5c\\x0a\\x7f",
  );
  // Two different names stay two texts (U+FFFD would have made both "c\ufffd").
  assert.notEqual(
    printableBytes(Uint8Array.of(0x63, 0xe9)),
    printableBytes(Uint8Array.of(0x63, 0xe8)),
  );
});

Deno.test("decodeRequest() refusing a name that is not UTF-8 says which target it was, odd bytes as \\xNN", () => {
  // VER  CMD  RSV  ATYP=DOMAIN  LEN=5  "caf\xe9\\"  DST.PORT 7000
  const bytes = Uint8Array.of(0x05, 0x01, 0x00, 0x03, 5, 0x63, 0x61, 0x66, 0xe9, 0x5c, 0x1b, 0x58);
  assert.throws(() => decodeRequest(bytes), (error: unknown) => {
    assert.ok(error instanceof ProtocolError);
    assert.deepEqual(error.readSoFar, { target: "caf\\xe9\\x5c:7000" });
    return true;
  });
});
