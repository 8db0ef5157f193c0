/**
 * Zones of link-local addresses (src/link_local.ts), against this machine's
 * own interfaces. The namespace test in integration_netns_test.ts runs a
 * client over a link-local address end to end.
 */
import assert from "node:assert/strict";
import { zonedHost, zoneOf } from "../src/link_local.ts";
import { parseIPv6 } from "../src/protocol/address.ts";

Deno.test("zonedHost() leaves every address but a link-local one as it is", () => {
  for (const host of ["127.0.0.1", "::1", "2001:db8::7", "::ffff:127.0.0.1"]) {
    assert.equal(zonedHost(host), host);
  }
});

Deno.test("zoneOf() names the interface that has the address, and says why when none does", () => {
  const linkLocal = Deno.networkInterfaces().filter((i) =>
    i.family === "IPv6" && i.address.toLowerCase().startsWith("fe80:") && i.scopeid !== null
  );
  for (const found of linkLocal) {
    const address = found.address.split("%")[0]!;
    const sameAddress = linkLocal.filter((i) => i.address.split("%")[0] === address);
    if (sameAddress.length !== 1) continue; // on two links: no one zone
    assert.deepEqual(zoneOf(address), { zone: String(found.scopeid) });
    assert.equal(zonedHost(address), `${address}%${found.scopeid}`);
    // However a client's address is spelt: upper case, every zero written out.
    const bytes = parseIPv6(address)!;
    const spelt = Array.from(
      { length: 8 },
      (_, i) =>
        ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16).toUpperCase().padStart(4, "0"),
    ).join(":");
    assert.deepEqual(zoneOf(spelt), { zone: String(found.scopeid) }, spelt);
  }
  // An address no interface here has (fe80::/10, not made from a MAC).
  assert.deepEqual(zoneOf("fe80::dead:beef:1"), {
    problem: "no interface has the link-local address fe80::dead:beef:1",
  });
  assert.throws(() => zonedHost("fe80::dead:beef:1"), /no interface has the link-local address/);
});
