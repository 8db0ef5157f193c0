/**
 * Runs inside a network namespace that tests/integration_netns_test.ts creates
 * with `unshare -n` (no reachable resolver). Starts ferry with `--allow-read`
 * narrowed to one file, so that it may not open /dev/null, and asks for a
 * name that does not resolve; prints one JSON object,
 * `{ results: [{ name, reply, outcome, detail }] }`, as netns_probe.ts does.
 *
 * Run: deno run -A tests/_helpers/narrow_read_probe.ts
 */
import { runProbes } from "./netns_probe.ts";
import { domain } from "./socks_client.ts";

const readable = await Deno.makeTempFile({ suffix: ".users" });
try {
  const results = await runProbes(
    [{ name: "unresolvable-name", address: domain("no-such-host.invalid", 80) }],
    { allowRead: readable },
  );
  console.log(JSON.stringify({ results }));
} finally {
  await Deno.remove(readable);
}
