/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates with net.ipv6.bindv6only=1, where
 * `[::]:9000` takes IPv6 only and another server (an IPv4 one, "V4") has
 * 127.0.0.1:9000; /etc/hosts names it v4.test. A forwarder on `[::]:9000`
 * to v4.test:9000 forwards to that server, not to itself.
 *
 * Prints one JSON object: `{ got, loopLines }`, or what failed.
 *
 * Run: deno run -A tests/_helpers/v6only_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { BufferedConn } from "./socks_client.ts";

let result: unknown;
try {
  await using ferry = await startFerry(
    ["forward", "--listen", "[::]:9000", "--to", "v4.test:9000", "--pool", "2"],
  );
  await new Promise((resolve) => setTimeout(resolve, 500)); // the pool has dialled
  using client = await BufferedConn.connect("::1", 9000);
  const got = new TextDecoder().decode(await client.readToEnd());
  const loopLines = ferry.lines.filter((l) => String(l.error ?? "").includes("loop")).length;
  result = { got, loopLines };
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
