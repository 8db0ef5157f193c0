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
import { runProbes } from "./netns_probe.ts";
import { domain } from "./socks_client.ts";

/** Nothing listens in the namespace: every port of 127.0.0.1 is closed. */
const CLOSED_PORT = 9;

const names = ["dual.test", "v6only.test"];
const results = await runProbes(
  names.map((name) => ({ name, address: domain(name, CLOSED_PORT) })),
);
console.log(JSON.stringify({ results }));
