/**
 * Runs inside a network namespace that tests/integration_netns_test.ts
 * creates with net.ipv4.ip_local_port_range set to one port, 40000, where
 * nothing listens: a connect to 127.0.0.1:40000 gets that very port as its
 * source, and completes by TCP simultaneous open, connected to itself. A
 * client asks ferry to CONNECT there, with its first data in the same write.
 *
 * Prints one JSON object, or what failed: `{ reply, after, outcome, error,
 * leftOpen }`: the reply, what came back after it, the session line's
 * outcome and error, and how many connections to itself are still open
 * once the session has ended (ferry's, had it not closed it).
 *
 * Run: deno run -A tests/_helpers/self_connect_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { sessionOf } from "./session_log.ts";
import { ss } from "./ss.ts";
import { BufferedConn, concat, ipv4, socks5 } from "./socks_client.ts";

let result: unknown;
try {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:9100"]);
  using client = await BufferedConn.connect("127.0.0.1", 9100);
  await client.write(concat([
    socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }),
    socks5.encodeRequest({
      command: socks5.Command.Connect,
      address: ipv4("127.0.0.1", 40000),
    }),
    new TextEncoder().encode("hello"),
  ]));
  await client.readMessage(socks5.decodeMethodSelection, "method selection");
  const { reply } = await client.readMessage(socks5.decodeReply, "SOCKS5 reply");
  const after = await client.readToEnd(5_000).then(
    (bytes) => new TextDecoder().decode(bytes),
    (error) => `not closed: ${error}`,
  );
  client.close();
  const line = await sessionOf(ferry, client.localAddr);
  const self = "127.0.0.1:40000";
  const leftOpen = (await ss("-tanH", "state", "established", "src", self, "dst", self)).length;
  result = { reply, after, outcome: line.outcome, error: line.error, leftOpen };
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
