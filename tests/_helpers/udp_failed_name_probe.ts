/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates, whose /etc/resolv.conf names a
 * server on 127.0.0.1 that this probe runs: it answers every query at once
 * that the name does not exist, and counts the queries. A UDP association
 * sends a datagram to `gone.test`; half a second later, its lookup failed,
 * a second (ferry remembers the failure for 5 s); 7 s after the first, a
 * third; then one to an echo server.
 *
 * Prints one JSON object, or what failed: `{ queries, echoed, udpIn,
 * dropped, firstDrop }`: `queries` the server's count half a second after
 * each of the three datagrams, `echoed` what came back from the echo server,
 * and the session line's counters and first drop.
 *
 * Run: deno run -A tests/_helpers/udp_failed_name_probe.ts
 */
import { python } from "./python.ts";
import { startFerry } from "./ferry.ts";
import { sessionOf } from "./session_log.ts";
import { domain, ipv4, socks5 } from "./socks_client.ts";
import { associate, frame, nextDatagram, udpEcho } from "./udp_support.ts";

/** Python: a name server that answers every query NXDOMAIN, writing their count to argv[1]. */
const NO_SUCH_NAME = `
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
queries = 0
while True:
    query, client = s.recvfrom(4096)
    queries += 1
    open(sys.argv[1], "w").write(str(queries))
    qend = 12
    while query[qend] != 0:
        qend += 1 + query[qend]
    header = query[:2] + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0)
    s.sendto(header + query[12:qend + 5], client)
`;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let result: unknown;
const countFile = await Deno.makeTempFile();
try {
  await using _dns = await python(NO_SUCH_NAME, countFile);
  const queries = async () => Number(await Deno.readTextFile(countFile) || "0");
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  const relay = udp.reply.address;
  const toGone = frame(domain("gone.test", 9), "x");
  const counts: number[] = [];
  const started = performance.now();
  for (const at of [0, 500, 7000]) {
    await sleep(started + at - performance.now());
    udp.local.send(toGone, relay.port, relay.host);
    await sleep(500);
    counts.push(await queries());
  }
  const answer = nextDatagram(udp.local);
  udp.local.send(frame(ipv4("127.0.0.1", echo.port), "echo"), relay.port, relay.host);
  const echoed = new TextDecoder().decode(socks5.decodeUdpDatagram(await answer).data);
  udp.control.close();
  const line = await sessionOf(ferry, udp.control.localAddr);
  result = {
    queries: counts,
    echoed,
    udpIn: line.udpIn,
    dropped: line.dropped,
    firstDrop: line.firstDrop,
  };
} catch (error) {
  result = { error: String(error) };
} finally {
  await Deno.remove(countFile);
}
console.log(JSON.stringify(result));
