/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates, whose /etc/resolv.conf names a
 * server on 127.0.0.1 that never answers (each lookup then takes the
 * resolver's timeout). 40 UDP associations each send a datagram to a name of
 * their own, and all end at once: 8 lookups run (one client's share), 32
 * wait. Then the same client asks to CONNECT to `localhost`, which needs a
 * lookup slot too.
 *
 * Prints one JSON object: `{ reply, ms }` for that CONNECT, or what failed.
 *
 * Run: deno run -A tests/_helpers/udp_lookups_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { python, SILENT_DNS } from "./python.ts";
import { domain, TcpTarget } from "./socks_client.ts";
import { associate, connectByName, frame } from "./udp_support.ts";

let result: unknown;
try {
  await using _dns = await python(SILENT_DNS);
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--max-udp-per-ip",
    "64",
    "--connect-timeout",
    "3s",
  ]);
  using target = TcpTarget.listen();
  const associations = await Promise.all(
    Array.from({ length: 40 }, () => associate(ferry)),
  );
  for (const [i, udp] of associations.entries()) {
    const datagram = frame(domain(`n${i}.silent.test`, 9), "x");
    udp.local.send(datagram, udp.reply.address.port, udp.reply.address.host);
  }
  await new Promise((resolve) => setTimeout(resolve, 200)); // all lookups asked for
  for (const udp of associations) await udp[Symbol.asyncDispose]();
  await new Promise((resolve) => setTimeout(resolve, 200)); // all associations over
  result = await connectByName(ferry, target.port);
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
