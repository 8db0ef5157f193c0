/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates, whose /etc/hosts names
 * `mapped.test` ::ffff:127.0.0.1 only: an IPv4 address, spelled as IPv6. A
 * client asks ferry for a SOCKS5 BIND whose peer is `mapped.test`, and a peer
 * connects from 127.0.0.1.
 *
 * Prints one JSON object, or what failed: `{ first, second, peer, carried }`:
 * both replies' codes, the peer's address in the second, and what the
 * peer's first bytes reached the client as.
 *
 * Run: deno run -A tests/_helpers/bind_mapped_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { BufferedConn, domain, socks5, socks5Handshake } from "./socks_client.ts";

let result: unknown;
try {
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--bind-timeout",
    "3s",
  ]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const first = await socks5Handshake(client, domain("mapped.test", 0), {
    command: socks5.Command.Bind,
  });
  if (first.reply !== socks5.Reply.Succeeded) throw new Error(`first reply ${first.reply}`);
  using peer = await Deno.connect({ hostname: "127.0.0.1", port: first.address.port });
  await peer.write(new TextEncoder().encode("from the peer"));
  const second = await client.readMessage(socks5.decodeReply, "second reply");
  const carried = second.reply === socks5.Reply.Succeeded
    ? new TextDecoder().decode(await client.readExactly(13))
    : null;
  result = { first: first.reply, second: second.reply, peer: second.address.host, carried };
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
