/**
 * Runs inside a network namespace that tests/integration_netns_test.ts creates
 * with `unshare -n`: no resolver can be reached, so a lookup fails at once. A
 * UDP association sends a datagram to `no-such-host.invalid`, a second there
 * a second later (when ferry remembers that the name failed), then one to an
 * echo server.
 *
 * Prints one JSON object, or what failed: `{ echoed, udpIn, dropped,
 * firstDrop }`: what came back from the echo server, and the session line's
 * counters and first drop.
 *
 * Run: deno run -A tests/_helpers/udp_failed_name_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { sessionOf } from "./session_log.ts";
import { domain, ipv4, socks5 } from "./socks_client.ts";
import { associate, frame, nextDatagram, udpEcho } from "./udp_support.ts";

let result: unknown;
try {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  const relay = udp.reply.address;
  const toMissing = frame(domain("no-such-host.invalid", 9), "x");
  udp.local.send(toMissing, relay.port, relay.host);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  udp.local.send(toMissing, relay.port, relay.host);
  const answer = nextDatagram(udp.local);
  udp.local.send(frame(ipv4("127.0.0.1", echo.port), "echo"), relay.port, relay.host);
  const echoed = new TextDecoder().decode(socks5.decodeUdpDatagram(await answer).data);
  udp.control.close();
  const line = await sessionOf(ferry, udp.control.localAddr);
  result = { echoed, udpIn: line.udpIn, dropped: line.dropped, firstDrop: line.firstDrop };
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
