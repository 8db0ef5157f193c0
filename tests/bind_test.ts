/**
 * Which peers a BIND lets in (src/bind.ts `expectedPeers`), for addresses
 * that need no lookup beyond the resolver's reading of numbers: "any peer"
 * however the client spells it. And `BindListener.accept()`'s signal.
 */
import assert from "node:assert/strict";
import { BindListener, expectedPeers } from "../src/bind.ts";
import { addressOf } from "../src/protocol/address.ts";

const domain = (host: string) => ({ type: "domain" as const, host, port: 0 });

Deno.test("BIND lets any peer in for 0.0.0.0 or ::, as an address, a name or IPv4-mapped", async () => {
  for (
    const address of [
      addressOf("0.0.0.0", 0),
      addressOf("::", 0),
      addressOf("::ffff:0.0.0.0", 0),
      domain("0.0.0.0"), // SOCKS4a or SOCKS5 with ATYP 3, as clients leaving names to the proxy send it
      domain("::"),
      domain("0:0:0:0:0:0:0:0"),
      // Spellings only the resolver reads as 0.0.0.0: such a BIND waited for
      // a peer at 0.0.0.0, which none can come from, until its timeout.
      domain("0"),
      domain("0x0"),
    ]
  ) {
    assert.equal(
      await expectedPeers(address, "127.0.0.1"),
      null,
      `${address.type} ${address.host}`,
    );
  }
});

Deno.test("BIND lets in only the named peer for any other address, in the form accept() compares", async () => {
  const cases: [ReturnType<typeof addressOf>, string][] = [
    [addressOf("127.0.0.1", 0), "127.0.0.1"],
    [addressOf("::ffff:127.0.0.1", 0), "127.0.0.1"],
    [addressOf("::1", 0), "::1"],
    [domain("127.0.0.1"), "127.0.0.1"],
    [domain("::FFFF:127.0.0.1"), "127.0.0.1"],
    [domain("0.0.0.1"), "0.0.0.1"],
  ];
  for (const [address, peer] of cases) {
    assert.deepEqual(await expectedPeers(address, "127.0.0.1"), new Set([peer]), address.host);
  }
});

Deno.test("BindListener.accept() with a signal aborted already rejects with its reason, letting no peer in", async () => {
  // The client may be gone before the wait starts: its abort fired no event
  // then, and a peer arriving later would have been let in for no one.
  using listener = new BindListener("127.0.0.1");
  const controller = new AbortController();
  controller.abort(new Error("the client has gone"));
  const refused = assert.rejects(listener.accept(null, controller.signal), /the client has gone/);
  using _peer = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  await refused;
});
