/**
 * Byte-level fixtures for the SOCKS4 and SOCKS4a codecs. Every decodable
 * fixture is also fed one byte short at every offset (must answer `more`) and
 * followed by pipelined bytes (must consume exactly the fixture). Every
 * malformed fixture must throw from the first prefix that holds the offending
 * byte and answer `more` before it.
 */
import assert from "node:assert/strict";
import {
  ascii,
  concat,
  filled,
  fixtureChecks,
  type OkFixture,
  protocolError,
} from "./_helpers/codec_fixtures.ts";
import { hex, MORE, ProtocolError, type ReadSoFar } from "../src/protocol/decoded.ts";
import {
  Command,
  decodeReply,
  decodeRequest,
  encodeReply,
  encodeRequest,
  MAX_HOST_NAME,
  MAX_USER_ID,
  Reply,
  type ReplyMessage,
  type Request,
  requestReadSoFar,
} from "../src/protocol/socks4.ts";

// ---------------------------------------------------------------------------
// Helpers

/** Bytes a client may pipeline right after its request (NULs included). */
const TRAILING = concat(Uint8Array.of(0x00, 0x04, 0x01), ascii("GET / HTTP/1.1\r\n\r\n"));
const { assertDecodesIncrementally, assertRejectsFrom } = fixtureChecks(TRAILING);

// ---------------------------------------------------------------------------
// decodeRequest: SOCKS4

const requestFixtures: OkFixture<Request>[] = [
  {
    name: "a CONNECT",
    // VN  CD=CONNECT  DSTPORT 80  DSTIP 93.184.216.34  USERID "alice"  NUL
    bytes: Uint8Array.of(0x04, 0x01, 0x00, 0x50, 93, 184, 216, 34, ...ascii("alice"), 0x00),
    value: {
      command: Command.Connect,
      address: { type: "ipv4", host: "93.184.216.34", port: 80 },
      userId: ascii("alice"),
    },
  },
  {
    name: "a BIND",
    // VN  CD=BIND  DSTPORT 8080  DSTIP 10.1.2.3  USERID "bob"  NUL
    bytes: Uint8Array.of(0x04, 0x02, 0x1f, 0x90, 10, 1, 2, 3, ...ascii("bob"), 0x00),
    value: {
      command: Command.Bind,
      address: { type: "ipv4", host: "10.1.2.3", port: 8080 },
      userId: ascii("bob"),
    },
  },
  {
    name: "an empty user id",
    // VN  CD=CONNECT  DSTPORT 65535  DSTIP 127.0.0.1  NUL
    bytes: Uint8Array.of(0x04, 0x01, 0xff, 0xff, 127, 0, 0, 1, 0x00),
    value: {
      command: Command.Connect,
      address: { type: "ipv4", host: "127.0.0.1", port: 65535 },
      userId: new Uint8Array(0),
    },
  },
  {
    name: "DSTIP 0.0.0.0 as plain SOCKS4 (not the SOCKS4a marker)",
    // VN  CD=CONNECT  DSTPORT 1  DSTIP 0.0.0.0  NUL
    bytes: Uint8Array.of(0x04, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0x00),
    value: {
      command: Command.Connect,
      address: { type: "ipv4", host: "0.0.0.0", port: 1 },
      userId: new Uint8Array(0),
    },
  },
  {
    name: "DSTIP 0.0.1.1 as plain SOCKS4 (not the SOCKS4a marker)",
    // VN  CD=CONNECT  DSTPORT 1  DSTIP 0.0.1.1  NUL
    bytes: Uint8Array.of(0x04, 0x01, 0x00, 0x01, 0, 0, 1, 1, 0x00),
    value: {
      command: Command.Connect,
      address: { type: "ipv4", host: "0.0.1.1", port: 1 },
      userId: new Uint8Array(0),
    },
  },
  {
    name: "a 1 KiB user id",
    // VN  CD=CONNECT  DSTPORT 443  DSTIP 1.2.3.4  USERID "u"*1024  NUL
    bytes: Uint8Array.of(0x04, 0x01, 0x01, 0xbb, 1, 2, 3, 4, ...filled(1024, 0x75), 0x00),
    value: {
      command: Command.Connect,
      address: { type: "ipv4", host: "1.2.3.4", port: 443 },
      userId: filled(1024, 0x75),
    },
  },
  {
    name: "a 4096-byte user id",
    // VN  CD=CONNECT  DSTPORT 443  DSTIP 1.2.3.4  USERID "u"*4096  NUL
    // 4096, not MAX_USER_ID: the README promises this many bytes.
    bytes: Uint8Array.of(0x04, 0x01, 0x01, 0xbb, 1, 2, 3, 4, ...filled(4096, 0x75), 0x00),
    value: {
      command: Command.Connect,
      address: { type: "ipv4", host: "1.2.3.4", port: 443 },
      userId: filled(4096, 0x75),
    },
  },
];

for (const fixture of requestFixtures) {
  Deno.test(`decodeRequest() decodes SOCKS4 with ${fixture.name} at every split`, () => {
    assertDecodesIncrementally(decodeRequest, fixture.bytes, fixture.value);
  });
}

// ---------------------------------------------------------------------------
// decodeRequest: SOCKS4a

const socks4aFixtures: OkFixture<Request>[] = [
  {
    name: "a host name",
    // VN  CD=CONNECT  DSTPORT 80  DSTIP 0.0.0.1  USERID "u"  NUL  HOST "example.com"  NUL
    bytes: Uint8Array.of(
      0x04,
      0x01,
      0x00,
      0x50,
      0,
      0,
      0,
      1,
      ...ascii("u"),
      0x00,
      ...ascii("example.com"),
      0x00,
    ),
    value: {
      command: Command.Connect,
      address: { type: "domain", host: "example.com", port: 80 },
      userId: ascii("u"),
    },
  },
  {
    name: "an empty user id and marker 0.0.0.255",
    // VN  CD=BIND  DSTPORT 21  DSTIP 0.0.0.255  NUL  HOST "ftp.example"  NUL
    bytes: Uint8Array.of(0x04, 0x02, 0x00, 0x15, 0, 0, 0, 255, 0x00, ...ascii("ftp.example"), 0x00),
    value: {
      command: Command.Bind,
      address: { type: "domain", host: "ftp.example", port: 21 },
      userId: new Uint8Array(0),
    },
  },
  {
    name: "a 255-byte host name",
    // VN  CD=CONNECT  DSTPORT 80  DSTIP 0.0.0.1  NUL  HOST "h"*255  NUL
    bytes: Uint8Array.of(0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, 0x00, ...filled(255, 0x68), 0x00),
    value: {
      command: Command.Connect,
      address: { type: "domain", host: "h".repeat(MAX_HOST_NAME), port: 80 },
      userId: new Uint8Array(0),
    },
  },
  {
    name: "an IP literal as host name (still a name to resolve)",
    // VN  CD=CONNECT  DSTPORT 80  DSTIP 0.0.0.1  NUL  HOST "10.0.0.1"  NUL
    bytes: Uint8Array.of(0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, 0x00, ...ascii("10.0.0.1"), 0x00),
    value: {
      command: Command.Connect,
      address: { type: "domain", host: "10.0.0.1", port: 80 },
      userId: new Uint8Array(0),
    },
  },
];

for (const fixture of socks4aFixtures) {
  Deno.test(`decodeRequest() decodes SOCKS4a with ${fixture.name} at every split`, () => {
    assertDecodesIncrementally(decodeRequest, fixture.bytes, fixture.value);
  });
}

Deno.test("decodeRequest() copies the user id out of the input buffer", () => {
  const input = Uint8Array.of(0x04, 0x01, 0x00, 0x50, 1, 2, 3, 4, ...ascii("id"), 0x00);
  const decoded = decodeRequest(input);
  input.fill(0xee);
  assert.equal(decoded.kind, "ok");
  assert.deepEqual(decoded.kind === "ok" && decoded.value.userId, ascii("id"));
});

// ---------------------------------------------------------------------------
// decodeRequest: malformed

Deno.test("decodeRequest() rejects a 4097-byte user id without NUL with reply 91", () => {
  // VN  CD=CONNECT  DSTPORT  DSTIP  USERID "u"*4097 (no NUL)
  const bytes = Uint8Array.of(0x04, 0x01, 0x00, 0x50, 1, 2, 3, 4, ...filled(4097, 0x75));
  assert.deepEqual(decodeRequest(bytes.subarray(0, 8 + 4096)), MORE);
  assertRejectsFrom(decodeRequest, {
    bytes,
    throwsFrom: 8 + 4097,
    code: "field-too-long",
    reply: Reply.Rejected,
  });
});

Deno.test("decodeRequest() rejects a 4097-byte user id even when its NUL follows", () => {
  // VN  CD=CONNECT  DSTPORT  DSTIP  USERID "u"*4097  NUL
  const bytes = Uint8Array.of(
    0x04,
    0x01,
    0x00,
    0x50,
    1,
    2,
    3,
    4,
    ...filled(MAX_USER_ID + 1, 0x75),
    0x00,
  );
  assert.throws(() => decodeRequest(bytes), protocolError("field-too-long", Reply.Rejected));
});

Deno.test("a user-id too long still says which target was asked for, when it came first", () => {
  // The log line names the target as far as ferry read it: SOCKS4's DSTIP
  // and DSTPORT come before the user-id; a SOCKS4a name after it.
  const refusal = (ip: number[]) =>
    readSoFarOf(
      Uint8Array.of(0x04, 0x01, 0x00, 0x50, ...ip, ...filled(MAX_USER_ID + 1, 0x75)),
    );
  assert.deepEqual(refusal([1, 2, 3, 4]), { target: "1.2.3.4:80" });
  assert.deepEqual(refusal([0, 0, 0, 1]), {});
});

Deno.test("requestReadSoFar() says the target and user-id of a cut request once each has come whole", () => {
  // What the log line shows of a client that closed (or went quiet) mid-request.
  const socks4 = Uint8Array.of(0x04, 0x01, 0x00, 0x50, 1, 2, 3, 4, ...ascii("bob"), 0x00);
  const socks4a = concat(
    Uint8Array.of(0x04, 0x01, 0x01, 0xbb, 0, 0, 0, 1, ...ascii("bob"), 0x00),
    ascii("example.com"),
  );
  for (let length = 0; length <= socks4.length; length++) {
    const cut = socks4.subarray(0, length);
    const expected: ReadSoFar = length < 8
      ? {}
      : length < socks4.length
      ? { target: "1.2.3.4:80" }
      : { userId: ascii("bob"), target: "1.2.3.4:80" };
    assert.deepEqual(requestReadSoFar(cut), expected, `the first ${length} bytes`);
  }
  // SOCKS4a: its 0.0.0.1 is no target, and a name is not shown half-read.
  for (let length = 0; length <= socks4a.length; length++) {
    const cut = socks4a.subarray(0, length);
    const expected: ReadSoFar = length < 12 ? {} : { userId: ascii("bob") };
    assert.deepEqual(requestReadSoFar(cut), expected, `the first ${length} bytes of 4a`);
  }
});

Deno.test("requestReadSoFar() leaves out a user-id longer than decodeRequest() accepts", () => {
  const request = (idLength: number) =>
    Uint8Array.of(0x04, 0x01, 0x00, 0x50, 1, 2, 3, 4, ...filled(idLength, 0x75), 0x00);
  assert.deepEqual(requestReadSoFar(request(MAX_USER_ID)).userId, filled(MAX_USER_ID, 0x75));
  assert.deepEqual(requestReadSoFar(request(MAX_USER_ID + 1)), { target: "1.2.3.4:80" });
});

Deno.test("requestReadSoFar() says an empty user-id was sent once its NUL has come", () => {
  // SOCKS4a, cut inside its name: the user-id (empty) is all there is to show.
  const cut = concat(Uint8Array.of(0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, 0x00), ascii("exa"));
  assert.deepEqual(requestReadSoFar(cut), { userId: new Uint8Array(0) });
});

Deno.test("decodeRequest() answers more for a 4096-byte user id still without NUL", () => {
  // VN  CD=CONNECT  DSTPORT  DSTIP  USERID "u"*4096 (NUL not yet arrived)
  const bytes = Uint8Array.of(0x04, 0x01, 0x00, 0x50, 1, 2, 3, 4, ...filled(MAX_USER_ID, 0x75));
  assert.deepEqual(decodeRequest(bytes), MORE);
});

Deno.test("decodeRequest() rejects an empty SOCKS4a host name with reply 91", () => {
  assertRejectsFrom(decodeRequest, {
    // VN  CD=CONNECT  DSTPORT  DSTIP 0.0.0.1  USERID "u"  NUL  HOST ""  NUL
    bytes: Uint8Array.of(0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, ...ascii("u"), 0x00, 0x00),
    throwsFrom: 11,
    code: "empty-field",
    reply: Reply.Rejected,
  });
});

Deno.test("decodeRequest() rejects a SOCKS4a host name that is not UTF-8 with reply 91", () => {
  assertRejectsFrom(decodeRequest, {
    // VN  CD=CONNECT  DSTPORT  DSTIP 0.0.0.1  NUL  HOST "caf\xe9.test"  NUL
    bytes: Uint8Array.of(
      0x04,
      0x01,
      0x00,
      0x50,
      0,
      0,
      0,
      1,
      0x00,
      0x63,
      0x61,
      0x66,
      0xe9,
      ...ascii(".test"),
      0x00,
    ),
    throwsFrom: 19,
    code: "bad-host-name",
    reply: Reply.Rejected,
  });
});

Deno.test("decodeRequest() rejects a 256-byte SOCKS4a host name with reply 91", () => {
  assertRejectsFrom(decodeRequest, {
    // VN  CD=CONNECT  DSTPORT  DSTIP 0.0.0.1  NUL  HOST "h"*256  NUL
    bytes: Uint8Array.of(
      0x04,
      0x01,
      0x00,
      0x50,
      0,
      0,
      0,
      1,
      0x00,
      ...filled(MAX_HOST_NAME + 1, 0x68),
      0x00,
    ),
    throwsFrom: 9 + MAX_HOST_NAME + 1,
    code: "field-too-long",
    reply: Reply.Rejected,
  });
});

Deno.test("decodeRequest() refusing a SOCKS4a host name says who asked, and for which target when it can", () => {
  const refusal = (host: ArrayLike<number>) => {
    // VN  CD=CONNECT  DSTPORT 80  DSTIP 0.0.0.1  USERID "bob"  NUL  HOST  NUL
    const bytes = Uint8Array.of(
      0x04,
      0x01,
      0x00,
      0x50,
      0,
      0,
      0,
      1,
      ...ascii("bob"),
      0,
      ...Array.from(host),
      0,
    );
    return readSoFarOf(bytes);
  };
  assert.deepEqual(refusal([0x63, 0x61, 0x66, 0xe9]), {
    userId: ascii("bob"),
    target: "caf\\xe9:80",
  });
  assert.deepEqual(refusal(filled(MAX_HOST_NAME + 1, 0x68)), { userId: ascii("bob") });
  assert.deepEqual(refusal([]), { userId: ascii("bob") });
});

for (const command of [0x00, 0x03, 0xff]) {
  Deno.test(`decodeRequest() rejects command ${hex(command)} with reply 91`, () => {
    assertRejectsFrom(decodeRequest, {
      // VN  CD=bad  DSTPORT  DSTIP  NUL
      bytes: Uint8Array.of(0x04, command, 0x00, 0x50, 1, 2, 3, 4, 0x00),
      throwsFrom: 2,
      code: "bad-command",
      reply: Reply.Rejected,
    });
  });
}

for (const version of [0x05, 0x00, 0x47 /* "G" of an HTTP request */]) {
  Deno.test(`decodeRequest() rejects version ${hex(version)} with no reply`, () => {
    assertRejectsFrom(decodeRequest, {
      // VN=bad  CD  DSTPORT  DSTIP  NUL
      bytes: Uint8Array.of(version, 0x01, 0x00, 0x50, 1, 2, 3, 4, 0x00),
      throwsFrom: 1,
      code: "bad-version",
      reply: null,
    });
  });
}

// ---------------------------------------------------------------------------
// encodeRequest

Deno.test("encodeRequest() writes VN CD DSTPORT DSTIP USERID NUL", () => {
  assert.deepEqual(
    encodeRequest({
      command: Command.Connect,
      address: { type: "ipv4", host: "93.184.216.34", port: 80 },
      userId: ascii("alice"),
    }),
    Uint8Array.of(0x04, 0x01, 0x00, 0x50, 93, 184, 216, 34, ...ascii("alice"), 0x00),
  );
  assert.deepEqual(
    encodeRequest({
      command: Command.Bind,
      address: { type: "ipv4", host: "10.0.0.1", port: 0x1234 },
      userId: new Uint8Array(0),
    }),
    Uint8Array.of(0x04, 0x02, 0x12, 0x34, 10, 0, 0, 1, 0x00),
  );
});

Deno.test("encodeRequest() sends a domain the SOCKS4a way with DSTIP 0.0.0.1", () => {
  assert.deepEqual(
    encodeRequest({
      command: Command.Connect,
      address: { type: "domain", host: "example.com", port: 443 },
      userId: ascii("u"),
    }),
    // VN  CD  DSTPORT 443  DSTIP 0.0.0.1  USERID "u"  NUL  HOST  NUL
    Uint8Array.of(
      0x04,
      0x01,
      0x01,
      0xbb,
      0,
      0,
      0,
      1,
      ...ascii("u"),
      0x00,
      ...ascii("example.com"),
      0x00,
    ),
  );
});

Deno.test("encodeRequest() refuses IPv6 and malformed IPv4 addresses", () => {
  assert.throws(
    () =>
      encodeRequest({
        command: Command.Connect,
        address: { type: "ipv6", host: "::1", port: 80 },
        userId: new Uint8Array(0),
      }),
    RangeError,
  );
  assert.throws(
    () =>
      encodeRequest({
        command: Command.Connect,
        address: { type: "ipv4", host: "1.2.3", port: 80 },
        userId: new Uint8Array(0),
      }),
    RangeError,
  );
});

// ---------------------------------------------------------------------------
// encodeReply / decodeReply

Deno.test("encodeReply() writes VN=0 CD DSTPORT DSTIP", () => {
  assert.deepEqual(
    encodeReply({ reply: Reply.Granted, port: 1080, ip: "192.168.0.1" }),
    Uint8Array.of(0x00, 90, 0x04, 0x38, 192, 168, 0, 1),
  );
  assert.deepEqual(
    encodeReply({ reply: Reply.Rejected, port: 0, ip: "0.0.0.0" }),
    Uint8Array.of(0x00, 91, 0x00, 0x00, 0, 0, 0, 0),
  );
});

Deno.test("Reply codes are SOCKS4's: 90 granted, 91 rejected, 92 no identd, 93 ident mismatch", () => {
  assert.deepEqual(
    [Reply.Granted, Reply.Rejected, Reply.NoIdentd, Reply.IdentMismatch],
    [90, 91, 92, 93],
  );
});

Deno.test("encodeReply() writes 0.0.0.0 for an IP that is not IPv4", () => {
  assert.deepEqual(
    encodeReply({ reply: Reply.Granted, port: 80, ip: "::1" }),
    Uint8Array.of(0x00, 90, 0x00, 0x50, 0, 0, 0, 0),
  );
});

Deno.test("encodeReply(message, into) writes the same 8 bytes into the caller's buffer", () => {
  for (
    const message of [
      { reply: Reply.Granted, port: 1080, ip: "192.168.0.1" },
      { reply: Reply.Granted, port: 80, ip: "::1" }, // DSTIP 0.0.0.0 over stale bytes
    ]
  ) {
    const into = new Uint8Array(16).fill(0xaa);
    const encoded = encodeReply(message, into);
    assert.deepEqual(encoded, encodeReply(message));
    assert.equal(encoded.buffer, into.buffer, "not written into the given buffer");
    assert.equal(into[8], 0xaa, "wrote past the reply");
  }
  const small = new Uint8Array(7);
  const encoded = encodeReply({ reply: Reply.Rejected, port: 0, ip: "0.0.0.0" }, small);
  assert.notEqual(encoded.buffer, small.buffer);
  assert.equal(encoded.length, 8);
});

const replyFixtures: OkFixture<ReplyMessage>[] = [
  {
    name: "granted",
    // VN=0  CD=90  DSTPORT 1080  DSTIP 192.168.0.1
    bytes: Uint8Array.of(0x00, 90, 0x04, 0x38, 192, 168, 0, 1),
    value: { reply: Reply.Granted, port: 1080, ip: "192.168.0.1" },
  },
  {
    name: "rejected",
    // VN=0  CD=91  DSTPORT 0  DSTIP 0.0.0.0
    bytes: Uint8Array.of(0x00, 91, 0x00, 0x00, 0, 0, 0, 0),
    value: { reply: Reply.Rejected, port: 0, ip: "0.0.0.0" },
  },
  {
    name: "ident mismatch",
    // VN=0  CD=93  DSTPORT 65535  DSTIP 255.255.255.255
    bytes: Uint8Array.of(0x00, 93, 0xff, 0xff, 255, 255, 255, 255),
    value: { reply: Reply.IdentMismatch, port: 65535, ip: "255.255.255.255" },
  },
];

for (const fixture of replyFixtures) {
  Deno.test(`decodeReply() decodes ${fixture.name} at every split`, () => {
    assertDecodesIncrementally(decodeReply, fixture.bytes, fixture.value);
    assert.deepEqual(encodeReply(fixture.value), fixture.bytes);
  });
}

Deno.test("decodeReply() rejects VN=4 with no reply", () => {
  assertRejectsFrom(decodeReply, {
    // VN=4 (request version, not reply version)  CD  DSTPORT  DSTIP
    bytes: Uint8Array.of(0x04, 90, 0x00, 0x50, 1, 2, 3, 4),
    throwsFrom: 1,
    code: "bad-version",
    reply: null,
  });
});

/** What decodeRequest() had read of `bytes` when it refused them; fails if it did not. */
function readSoFarOf(bytes: Uint8Array): ReadSoFar {
  try {
    decodeRequest(bytes);
  } catch (error) {
    assert.ok(error instanceof ProtocolError);
    return error.readSoFar;
  }
  assert.fail("not refused");
}
