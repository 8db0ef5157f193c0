/**
 * Runs inside a network namespace that tests/integration_netns_test.ts creates
 * with `unshare -n` (only `lo` up, `198.51.100.0/24` an unreachable route, no
 * default route, no reachable resolver). Starts ferry there, sends SOCKS5
 * CONNECTs whose failures need such a network, and prints one JSON object:
 * `{ results: [{ name, reply, outcome, error? }] }`. Nothing can leave the namespace.
 *
 * Run: deno run -A tests/_helpers/netns_probe.ts
 */
import type { Address } from "../../src/protocol/address.ts";
import { startFerry, type StartFerryOptions } from "./ferry.ts";
import { sessionOf } from "./session_log.ts";
import { BufferedConn, domain, ipv4, socks5, socks5Handshake } from "./socks_client.ts";

/** One probe's result. */
export interface ProbeResult {
  name: string;
  reply: number | null;
  outcome: unknown;
  error?: string;
  /** The session line's `error` field. */
  detail?: unknown;
}

const PROBES: Probe[] = [
  { name: "no-route", address: ipv4("192.0.2.1", 80) },
  { name: "unreachable-route", address: ipv4("198.51.100.1", 80) },
  { name: "unresolvable-name", address: domain("no-such-host.invalid", 80) },
  {
    name: "bind-unresolvable-name",
    address: domain("no-such-host.invalid", 0),
    command: socks5.Command.Bind,
  },
];

/** One probe: a SOCKS5 request, CONNECT unless `command` says otherwise. */
export interface Probe {
  name: string;
  address: Address;
  command?: number;
}

/** Starts ferry, sends each probe's request on a connection of its own, and gathers the results. */
export async function runProbes(
  probes: readonly Probe[],
  options: StartFerryOptions = {},
): Promise<ProbeResult[]> {
  const results: ProbeResult[] = [];
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"], options);
  for (const { name, address, command } of probes) {
    let conn: BufferedConn | undefined;
    try {
      conn = await BufferedConn.connect(ferry.hostname, ferry.port);
      const reply = await socks5Handshake(conn, address, command ? { command } : {});
      conn.close();
      const session = await sessionOf(ferry, conn.localAddr);
      results.push({ name, reply: reply.reply, outcome: session.outcome, detail: session.error });
    } catch (error) {
      results.push({ name, reply: null, outcome: null, error: String(error) });
    } finally {
      conn?.close();
    }
  }
  return results;
}

if (import.meta.main) console.log(JSON.stringify({ results: await runProbes(PROBES) }));
