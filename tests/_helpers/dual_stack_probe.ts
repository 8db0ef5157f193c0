/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates: only `lo` up, so no IPv6 address
 * but ::1 has a route, and an /etc/hosts that names `dual.test` both
 * 127.0.0.1 and 2001:db8:9::1, and `v6only.test` only the latter. Sends
 * SOCKS5 CONNECTs to a closed port by those names and prints one JSON object:
 * `{ results: [{ name, reply, outcome, detail }] }`, as netns_probe.ts does.
 *
 * Run: deno run -A tests/_helpers/dual_stack_probe.ts
 */
import { startFerry } from "./ferry.ts";
import type { ProbeResult } from "./netns_probe.ts";
import { sessionOf } from "./session_log.ts";
import { BufferedConn, domain, socks5Handshake } from "./socks_client.ts";

/** Nothing listens in the namespace: every port of 127.0.0.1 is closed. */
const CLOSED_PORT = 9;

const results: ProbeResult[] = [];
{
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  for (const name of ["dual.test", "v6only.test"]) {
    using conn = await BufferedConn.connect(ferry.hostname, ferry.port);
    const reply = await socks5Handshake(conn, domain(name, CLOSED_PORT));
    conn.close();
    const session = await sessionOf(ferry, conn.localAddr);
    results.push({ name, reply: reply.reply, outcome: session.outcome, detail: session.error });
  }
}
console.log(JSON.stringify({ results }));
