/**
 * Runs inside a network namespace that tests/integration_netns_test.ts
 * creates, with fe80::1 set on two links (d0 and d1, veth) and fe80::2 on d1
 * only. Prints one JSON object: what `zoneOf()` makes of each address, and
 * d1's interface index.
 *
 * Run: deno run -A tests/_helpers/zone_probe.ts
 */
import { zoneOf } from "../../src/link_local.ts";

const d1 = Deno.networkInterfaces().find((i) => i.name === "d1" && i.family === "IPv6");
console.log(JSON.stringify({
  twice: zoneOf("fe80::1"),
  once: zoneOf("fe80::2"),
  d1: d1?.scopeid ?? null,
}));
