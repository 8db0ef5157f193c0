/**
 * The UDP ASSOCIATE datagram header (RFC 1928 §7): byte fixtures for each
 * address type, every malformed shape, and a fast-check round trip.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { formatIPv4, formatIPv6 } from "../src/protocol/address.ts";
import { ProtocolError } from "../src/protocol/decoded.ts";
import { decodeUdpDatagram, encodeUdpHeader, type UdpDatagram } from "../src/protocol/socks5.ts";

const DATA = Uint8Array.of(0xde, 0xad);

const FIXTURES: { name: string; bytes: Uint8Array; value: UdpDatagram }[] = [
  {
    name: "IPv4",
    // RSV RSV FRAG ATYP=1 127.0.0.1 :53 DATA
    bytes: Uint8Array.of(0, 0, 0, 0x01, 127, 0, 0, 1, 0x00, 0x35, 0xde, 0xad),
    value: { fragment: 0, address: { type: "ipv4", host: "127.0.0.1", port: 53 }, data: DATA },
  },
  {
    name: "IPv6",
    // RSV RSV FRAG ATYP=4 ::1 :443 DATA
    bytes: Uint8Array.of(0, 0, 0, 0x04, ...new Array(15).fill(0), 1, 0x01, 0xbb, 0xde, 0xad),
    value: { fragment: 0, address: { type: "ipv6", host: "::1", port: 443 }, data: DATA },
  },
  {
    name: "domain",
    // RSV RSV FRAG ATYP=3 LEN=9 "localhost" :7 DATA
    bytes: Uint8Array.of(
      0,
      0,
      0,
      0x03,
      9,
      ...new TextEncoder().encode("localhost"),
      0,
      7,
      0xde,
      0xad,
    ),
    value: { fragment: 0, address: { type: "domain", host: "localhost", port: 7 }, data: DATA },
  },
];

for (const { name, bytes, value } of FIXTURES) {
  Deno.test(`decodeUdpDatagram() decodes a ${name} datagram`, () => {
    assert.deepEqual(decodeUdpDatagram(bytes), value);
  });

  Deno.test(`encodeUdpHeader() encodes a ${name} header`, () => {
    assert.deepEqual(encodeUdpHeader(value.address), bytes.subarray(0, bytes.length - DATA.length));
  });

  Deno.test(`decodeUdpDatagram() throws truncated for every cut of a ${name} header`, () => {
    for (let cut = 0; cut < bytes.length - DATA.length; cut++) {
      assert.throws(
        () => decodeUdpDatagram(bytes.subarray(0, cut)),
        (error) => error instanceof ProtocolError && error.code === "truncated",
        `cut at ${cut}`,
      );
    }
  });
}

Deno.test("decodeUdpDatagram() accepts an empty payload", () => {
  const decoded = decodeUdpDatagram(Uint8Array.of(0, 0, 0, 0x01, 10, 0, 0, 1, 0, 80));
  assert.equal(decoded.data.length, 0);
});

Deno.test("decodeUdpDatagram() reports FRAG so the relay can drop fragments", () => {
  const decoded = decodeUdpDatagram(Uint8Array.of(0, 0, 0x81, 0x01, 10, 0, 0, 1, 0, 80, 0x41));
  assert.equal(decoded.fragment, 0x81);
});

Deno.test("encodeUdpHeader() writes FRAG", () => {
  const header = encodeUdpHeader({ type: "ipv4", host: "10.0.0.1", port: 80 }, 3);
  assert.deepEqual(header, Uint8Array.of(0, 0, 3, 0x01, 10, 0, 0, 1, 0, 80));
});

for (const atyp of [0x00, 0x02, 0x05, 0xff]) {
  Deno.test(`decodeUdpDatagram() rejects ATYP 0x${atyp.toString(16).padStart(2, "0")}`, () => {
    assert.throws(
      () => decodeUdpDatagram(Uint8Array.of(0, 0, 0, atyp, 10, 0, 0, 1, 0, 80)),
      (error) => error instanceof ProtocolError && error.code === "bad-address-type",
    );
  });
}

Deno.test("decodeUdpDatagram() rejects an empty domain name", () => {
  assert.throws(
    () => decodeUdpDatagram(Uint8Array.of(0, 0, 0, 0x03, 0, 0, 80)),
    (error) => error instanceof ProtocolError && error.code === "empty-field",
  );
});

const port = fc.integer({ min: 0, max: 65535 });
const address = fc.oneof(
  fc.record({
    type: fc.constant("ipv4" as const),
    host: fc.uint8Array({ minLength: 4, maxLength: 4 }).map(formatIPv4),
    port,
  }, { noNullPrototype: true }),
  fc.record({
    type: fc.constant("ipv6" as const),
    host: fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 255 })), {
      minLength: 16,
      maxLength: 16,
    }).map((bytes) => formatIPv6(Uint8Array.from(bytes))),
    port,
  }, { noNullPrototype: true }),
  fc.record({
    type: fc.constant("domain" as const),
    host: fc.string({
      unit: fc.integer({ min: 1, max: 127 }).map((code) => String.fromCharCode(code)),
      minLength: 1,
      maxLength: 255,
    }),
    port,
  }, { noNullPrototype: true }),
);

Deno.test("encodeUdpHeader() then decodeUdpDatagram() gives back the address, FRAG and data", () => {
  fc.assert(
    fc.property(
      address,
      fc.integer({ min: 0, max: 255 }),
      fc.uint8Array({ maxLength: 512 }),
      (addr, fragment, data) => {
        const header = encodeUdpHeader(addr, fragment);
        const datagram = new Uint8Array(header.length + data.length);
        datagram.set(header);
        datagram.set(data, header.length);
        assert.deepEqual(decodeUdpDatagram(datagram), { fragment, address: addr, data });
      },
    ),
  );
});

Deno.test("decodeUdpDatagram() answers every byte string with a datagram or a ProtocolError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      try {
        decodeUdpDatagram(bytes);
      } catch (error) {
        assert.ok(error instanceof ProtocolError, String(error));
      }
    }),
  );
});
