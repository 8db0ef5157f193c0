/** IPv4/IPv6 text forms and address classification in src/protocol/address.ts. */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  addressOf,
  formatAddress,
  formatIPv4,
  formatIPv6,
  formatPeer,
  ipKey,
  ipOfName,
  isLinkLocalIPv6,
  isLoopbackIp,
  parseIPv4,
  parseIPv6,
  unmapIPv4,
} from "../src/protocol/address.ts";

/** 16 bytes from eight 16-bit groups. */
function groups(...values: number[]): Uint8Array {
  assert.equal(values.length, 8);
  const bytes = new Uint8Array(16);
  values.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

// ---------------------------------------------------------------------------
// IPv4

Deno.test("parseIPv4() parses dotted quads", () => {
  assert.deepEqual(parseIPv4("127.0.0.1"), Uint8Array.of(127, 0, 0, 1));
  assert.deepEqual(parseIPv4("0.0.0.0"), Uint8Array.of(0, 0, 0, 0));
  assert.deepEqual(parseIPv4("255.255.255.255"), Uint8Array.of(255, 255, 255, 255));
  assert.deepEqual(parseIPv4("10.20.30.40"), Uint8Array.of(10, 20, 30, 40));
});

Deno.test("parseIPv4() returns null for anything but a canonical dotted quad", () => {
  const bad = [
    "",
    "1.2.3",
    "1.2.3.4.5",
    "1.2.3.4.",
    ".1.2.3",
    "256.0.0.1",
    "1.2.3.999",
    "01.2.3.4", // leading zeros are octal to some parsers: refuse
    "1.2.3.04",
    "1..3.4",
    "-1.2.3.4",
    "+1.2.3.4",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1.2.3.0x4",
    "a.b.c.d",
    "1e2.0.0.1",
    "::1",
    "localhost",
    "1.2.3.4:80",
  ];
  for (const text of bad) assert.equal(parseIPv4(text), null, JSON.stringify(text));
});

Deno.test("parseIPv4() agrees with the dotted-quad grammar on random digit-and-dot strings", () => {
  // The grammar written out plainly, to check the character scanner against.
  const reference = (text: string): number[] | null => {
    const parts = text.split(".");
    if (parts.length !== 4) return null;
    if (!parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255)) return null;
    return parts.map(Number);
  };
  const text = fc.string({
    unit: fc.constantFrom("0", "1", "2", "5", "9", ".", "x"),
    maxLength: 18,
  });
  fc.assert(
    fc.property(text, (t) => {
      const parsed = parseIPv4(t);
      assert.deepEqual(parsed === null ? null : [...parsed], reference(t), JSON.stringify(t));
    }),
    { numRuns: 5000 },
  );
  fc.assert(fc.property(fc.uint8Array({ minLength: 4, maxLength: 4 }), (bytes) => {
    assert.deepEqual(parseIPv4(formatIPv4(bytes)), bytes);
  }));
});

Deno.test("formatIPv4() writes dotted quads", () => {
  assert.equal(formatIPv4(Uint8Array.of(192, 168, 0, 1)), "192.168.0.1");
  assert.equal(formatIPv4(Uint8Array.of(0, 0, 0, 0)), "0.0.0.0");
  assert.equal(formatIPv4(Uint8Array.of(255, 255, 255, 255)), "255.255.255.255");
});

Deno.test("formatIPv4() reads only the first 4 bytes of a subarray", () => {
  const buffer = Uint8Array.of(9, 9, 1, 2, 3, 4, 9);
  assert.equal(formatIPv4(buffer.subarray(2, 6)), "1.2.3.4");
});

// ---------------------------------------------------------------------------
// IPv6

Deno.test("parseIPv6() parses full, compressed and mixed forms", () => {
  const cases: [string, Uint8Array][] = [
    ["::", new Uint8Array(16)],
    ["::1", groups(0, 0, 0, 0, 0, 0, 0, 1)],
    ["1::", groups(1, 0, 0, 0, 0, 0, 0, 0)],
    ["2001:db8::1", groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)],
    ["2001:DB8::ABCD", groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xabcd)],
    ["2001:0db8:0000:0000:0000:0000:0000:0001", groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)],
    ["1:2:3:4:5:6:7:8", groups(1, 2, 3, 4, 5, 6, 7, 8)],
    ["1:2:3:4:5:6:7::", groups(1, 2, 3, 4, 5, 6, 7, 0)],
    ["::2:3:4:5:6:7:8", groups(0, 2, 3, 4, 5, 6, 7, 8)],
    ["fe80::1:2", groups(0xfe80, 0, 0, 0, 0, 0, 1, 2)],
    ["::ffff:127.0.0.1", groups(0, 0, 0, 0, 0, 0xffff, 0x7f00, 0x0001)],
    ["::1.2.3.4", groups(0, 0, 0, 0, 0, 0, 0x0102, 0x0304)],
    ["1:2:3:4:5:6:1.2.3.4", groups(1, 2, 3, 4, 5, 6, 0x0102, 0x0304)],
    ["64:ff9b::192.0.2.33", groups(0x64, 0xff9b, 0, 0, 0, 0, 0xc000, 0x0221)],
  ];
  for (const [text, bytes] of cases) assert.deepEqual(parseIPv6(text), bytes, text);
});

Deno.test("parseIPv6() returns null for malformed text", () => {
  const bad = [
    "",
    ":",
    ":::",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "1::2::3",
    // Two "::" after eight groups.
    "1:2:3:4:5:6:7:8::1::2",
    ":1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:",
    "12345::",
    "g::1",
    "::1 ",
    "[::1]",
    "fe80::1%eth0",
    "::ffff:1.2.3",
    "::ffff:256.0.0.1",
    "::1.2.3.4:5",
    "1:2:3:4:5:6:7:1.2.3.4",
    "1.2.3.4",
    "1.2.3.4::",
    "example.com",
  ];
  for (const text of bad) assert.equal(parseIPv6(text), null, JSON.stringify(text));
});

Deno.test("formatIPv6() compresses the longest zero run (RFC 5952)", () => {
  const cases: [Uint8Array, string][] = [
    [new Uint8Array(16), "::"],
    [groups(0, 0, 0, 0, 0, 0, 0, 1), "::1"],
    [groups(1, 0, 0, 0, 0, 0, 0, 0), "1::"],
    [groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), "2001:db8::1"],
    [groups(0xfe80, 0, 0, 0, 0, 0, 1, 2), "fe80::1:2"],
    [groups(1, 2, 3, 4, 5, 6, 7, 8), "1:2:3:4:5:6:7:8"],
    // §4.1: leading zeros in a group are dropped; §4.3: lower case.
    [
      groups(0x2001, 0x0db8, 0x00ab, 0x000c, 0xabcd, 0xef00, 0x0001, 0xffff),
      "2001:db8:ab:c:abcd:ef00:1:ffff",
    ],
    // §4.2.2: a single zero group is not shortened to "::".
    [groups(0x2001, 0xdb8, 0, 1, 1, 1, 1, 1), "2001:db8:0:1:1:1:1:1"],
    // §4.2.3: the longest run is shortened…
    [groups(1, 0, 0, 2, 0, 0, 0, 3), "1:0:0:2::3"],
    // …and of equal runs, the first.
    [groups(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1), "2001:db8::1:0:0:1"],
    [groups(0, 0, 1, 1, 1, 1, 0, 0), "::1:1:1:1:0:0"],
    // Zero runs at the end and a run of seven.
    [groups(1, 2, 3, 4, 5, 6, 0, 0), "1:2:3:4:5:6::"],
    [groups(0, 0, 0, 0, 0, 0, 0, 0xffff), "::ffff"],
    // §5: an IPv4-mapped address ends in its dotted quad…
    [groups(0, 0, 0, 0, 0, 0xffff, 0x7f00, 1), "::ffff:127.0.0.1"],
    [groups(0, 0, 0, 0, 0, 0xffff, 0, 0), "::ffff:0.0.0.0"],
    // …and only that prefix does.
    [groups(0, 0, 0, 0, 0, 0xfffe, 0x7f00, 1), "::fffe:7f00:1"],
    [groups(0, 0, 0, 0, 1, 0xffff, 0x7f00, 1), "::1:ffff:7f00:1"],
    [groups(0, 0, 0, 0, 0, 0, 0x7f00, 1), "::7f00:1"],
    [groups(0, 0, 0, 0, 0, 0x00ff, 0x7f00, 1), "::ff:7f00:1"],
  ];
  for (const [bytes, text] of cases) assert.equal(formatIPv6(bytes), text);
});

Deno.test("formatIPv6() and parseIPv6() round-trip every case", () => {
  for (
    const text of [
      "::",
      "::1",
      "1::",
      "2001:db8::1",
      "1:0:0:2::3",
      "2001:db8:0:1:1:1:1:1",
      "ff02::fb",
    ]
  ) {
    const bytes = parseIPv6(text);
    assert.ok(bytes !== null, text);
    assert.equal(formatIPv6(bytes), text);
  }
  assert.equal(formatIPv6(parseIPv6("::ffff:127.0.0.1")!), "::ffff:127.0.0.1");
  assert.equal(formatIPv6(parseIPv6("::ffff:7f00:1")!), "::ffff:127.0.0.1");
  assert.equal(formatIPv6(parseIPv6("2001:0DB8:0:0:0:0:0:0001")!), "2001:db8::1");
});

// ---------------------------------------------------------------------------
// addressOf, formatAddress

Deno.test("addressOf() classifies IPv4 literals", () => {
  assert.deepEqual(addressOf("127.0.0.1", 80), { type: "ipv4", host: "127.0.0.1", port: 80 });
});

Deno.test("addressOf() classifies IPv6 literals, bracketed or not, in RFC 5952 form", () => {
  assert.deepEqual(addressOf("::1", 443), { type: "ipv6", host: "::1", port: 443 });
  assert.deepEqual(addressOf("[::1]", 443), { type: "ipv6", host: "::1", port: 443 });
  assert.deepEqual(addressOf("2001:DB8:0:0:0:0:0:1", 1), {
    type: "ipv6",
    host: "2001:db8::1",
    port: 1,
  });
  assert.deepEqual(addressOf("::ffff:a00:1", 2), {
    type: "ipv6",
    host: "::ffff:10.0.0.1",
    port: 2,
  });
});

Deno.test("addressOf() treats everything else as a domain name, unchanged", () => {
  assert.deepEqual(addressOf("example.com", 80), { type: "domain", host: "example.com", port: 80 });
  assert.deepEqual(addressOf("localhost", 0), { type: "domain", host: "localhost", port: 0 });
  // Not canonical dotted quads: a resolver decides what they mean.
  assert.deepEqual(addressOf("01.2.3.4", 80), { type: "domain", host: "01.2.3.4", port: 80 });
  assert.deepEqual(addressOf("fe80::1%eth0", 80), {
    type: "domain",
    host: "fe80::1%eth0",
    port: 80,
  });
  // Brackets come off IP literals only: a bracketed name is kept as it was given.
  assert.deepEqual(addressOf("[example.com]", 80), {
    type: "domain",
    host: "[example.com]",
    port: 80,
  });
});

Deno.test("formatAddress() brackets IPv6 hosts only", () => {
  assert.equal(formatAddress({ host: "127.0.0.1", port: 1080 }), "127.0.0.1:1080");
  assert.equal(formatAddress({ host: "example.com", port: 80 }), "example.com:80");
  assert.equal(formatAddress({ host: "::1", port: 443 }), "[::1]:443");
  assert.equal(formatAddress({ host: "2001:db8::1", port: 0 }), "[2001:db8::1]:0");
  // RFC 5952 forms without "::" are IPv6 all the same.
  assert.equal(
    formatAddress({ host: "2001:db8:0:1:1:1:1:1", port: 7 }),
    "[2001:db8:0:1:1:1:1:1]:7",
  );
  assert.equal(formatAddress(addressOf("[::1]", 8080)), "[::1]:8080");
});

Deno.test("formatPeer() names an IPv4 client of a dual-stack listener by its IPv4 address", () => {
  // Log lines must read the same whichever listener the client came in on.
  assert.equal(formatPeer({ hostname: "::ffff:127.0.0.1", port: 5000 }), "127.0.0.1:5000");
  assert.equal(formatPeer({ hostname: "127.0.0.1", port: 5000 }), "127.0.0.1:5000");
  assert.equal(formatPeer({ hostname: "::1", port: 5000 }), "[::1]:5000");
});

Deno.test("ipOfName: a name that spells an IP address is that address; anything else needs a lookup", () => {
  assert.equal(ipOfName("127.0.0.1"), "127.0.0.1");
  assert.equal(ipOfName("::1"), "::1");
  assert.equal(ipOfName("0:0:0:0:0:0:0:1"), "::1", "in its canonical form");
  for (const name of ["localhost", "[::1]", "127.1", "127.0.0.256", "::1%lo", "example.com"]) {
    assert.equal(ipOfName(name), null, name);
  }
});

Deno.test("isLoopbackIp: 127.0.0.0/8 and ::1", () => {
  for (const ip of ["127.0.0.1", "127.255.0.9", "::1"]) assert.ok(isLoopbackIp(ip), ip);
  for (const ip of ["128.0.0.1", "10.0.0.1", "::2", "127.foo", "localhost", "::ffff:127.0.0.1"]) {
    assert.ok(!isLoopbackIp(ip), ip);
  }
});

Deno.test("isLinkLocalIPv6() is fe80::/10 exactly", () => {
  for (const host of ["fe80::1", "FE80::1", "febf:ffff::1", "fe80::1:2:3:4"]) {
    assert.equal(isLinkLocalIPv6(host), true, host);
  }
  // fec0::/10 (site-local, deprecated) and the rest of fe00::/8 are not.
  // Nor is an address whose second byte alone looks the part (2080::, ff80::).
  for (
    const host of [
      "fec0::1",
      "feff::1",
      "fe00::1",
      "fe7f::1",
      "2080::1",
      "ff80::1",
      "::1",
      "127.0.0.1",
      "x",
    ]
  ) {
    assert.equal(isLinkLocalIPv6(host), false, host);
  }
});

Deno.test("unmapIPv4() and ipKey() take an IPv4-mapped address in either case", () => {
  assert.equal(unmapIPv4("::ffff:127.0.0.1"), "127.0.0.1");
  assert.equal(unmapIPv4("::FFFF:127.0.0.1"), "127.0.0.1");
  assert.equal(ipKey("::FFFF:10.0.0.1"), ipKey("10.0.0.1"));
  assert.equal(ipKey("FE80::A"), "fe80::a");
  assert.equal(unmapIPv4("::ffff:999.0.0.1"), "::ffff:999.0.0.1", "not an IPv4 address");
  assert.equal(unmapIPv4("::1"), "::1");
});
