/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates, whose /etc/resolv.conf names a
 * server on 127.0.0.1 that never answers (each lookup then takes the
 * resolver's timeout, longer than ferry's connect timeout of 3 s). One UDP
 * association sends a datagram to each of 16 names; then the same client
 * asks to CONNECT to `localhost`, which needs a lookup slot of its share.
 *
 * Prints one JSON object: `{ reply, ms }` for that CONNECT, or what failed.
 *
 * Run: deno run -A tests/_helpers/udp_lookup_share_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { python, SILENT_DNS } from "./python.ts";
import { domain, TcpTarget } from "./socks_client.ts";
import { associate, connectByName, frame, sendInOrder } from "./udp_support.ts";

let result: unknown;
try {
  await using _dns = await python(SILENT_DNS);
  await using ferry = await startFerry(
    ["socks", "--listen", "127.0.0.1:0", "--connect-timeout", "3s"],
  );
  using target = TcpTarget.listen();
  await using udp = await associate(ferry);
  const datagrams = Array.from({ length: 16 }, (_, i) => frame(domain(`n${i}.silent.test`, 9), ""));
  await sendInOrder(udp.local, datagrams, udp.reply.address.port);
  await new Promise((resolve) => setTimeout(resolve, 200)); // all lookups asked for
  result = await connectByName(ferry, target.port);
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
