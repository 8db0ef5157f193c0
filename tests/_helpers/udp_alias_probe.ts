/**
 * Runs inside a network namespace that tests/integration_netns_test.ts
 * creates, where 127.0.0.2 is as safe to use as 127.0.0.1. ferry listens on
 * 0.0.0.0. The victim reaches it at 127.0.0.2, so its relay socket is on
 * 127.0.0.2 while its datagrams come from 127.0.0.1; its port is learnt from
 * its first datagram. Another client, through its own association, sends a
 * datagram to the victim's relay port: it leaves ferry's outbound socket
 * from 127.0.0.1, the victim's address.
 *
 * Prints one JSON object: `{ echoed, victimGot, victimDropped }`, or what
 * failed.
 *
 * Run: deno run -A tests/_helpers/udp_alias_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { sessionOf } from "./session_log.ts";
import { ipv4, socks5 } from "./socks_client.ts";
import {
  associate,
  frame,
  nextDatagram,
  receivedAtLeast,
  sendInOrder,
  udpEcho,
} from "./udp_support.ts";

let result: unknown;
try {
  await using ferry = await startFerry(["socks", "--listen", "0.0.0.0:0"]);
  await using echo = await udpEcho();
  await using victim = await associate(ferry, 0, "127.0.0.2");
  await using attacker = await associate(ferry, undefined, "127.0.0.1");
  const victimRelay = victim.reply.address;
  const inner = frame(ipv4("127.0.0.1", echo.port), "INJECTED");
  const outer = frame(ipv4(victimRelay.host, victimRelay.port), inner);
  // Once the marker reaches the echo server the injection has gone too
  // (ferry keeps the order), and waits at the victim's relay socket.
  const marker = frame(ipv4("127.0.0.1", echo.port), "marker");
  await sendInOrder(attacker.local, [outer, marker], attacker.reply.address.port);
  await receivedAtLeast(echo.received, 1);
  const answer = nextDatagram(victim.local);
  victim.local.send(
    frame(ipv4("127.0.0.1", echo.port), "mine"),
    victimRelay.port,
    victimRelay.host,
  );
  const victimGot = new TextDecoder().decode(socks5.decodeUdpDatagram(await answer).data);
  victim.control.close();
  const victimLine = await sessionOf(ferry, victim.control.localAddr);
  result = { echoed: echo.received, victimGot, victimDropped: victimLine.dropped };
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
