/**
 * Runs inside a network namespace that tests/integration_netns_test.ts
 * creates with net.ipv4.ip_local_port_range set to four ports, 40000-40003:
 * four connections to one address and port take them all, and a fifth
 * connect fails with EADDRNOTAVAIL, as when thousands of connections to one
 * upstream wait in TIME_WAIT.
 *
 * The forwarder (`--pool 0`, then `--pool 2`, each to an upstream of its
 * own) holds one port there for each client it serves: one client with
 * `--pool 0`, two with `--pool 2` (its two pooled connections). The probe
 * takes the other ports itself. The next client cannot be forwarded (and a
 * pool's refill fails). Then the first client leaves, and one more client
 * comes at once. (Clients reach the forwarder from ports of their own: four
 * towards its address and port.)
 *
 * Prints one JSON object, or what failed: for each pool size, `{ refused,
 * next, lines }`: `refused` the session line (outcome and error) of the
 * client that could not be forwarded, `next` what the client after the
 * first left got back, and `lines` the events of the upstream's state that
 * ferry logged (upstream-down, pool-no-local-ports). And `socks`: the reply,
 * outcome and error of a SOCKS5 CONNECT to a target whose ports are all
 * taken.
 *
 * Run: deno run -A tests/_helpers/port_shortage_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { ForwardUpstream, type UpstreamHandler } from "./forward_support.ts";
import { sessionOf } from "./session_log.ts";
import { BufferedConn, ipv4, socks5Handshake } from "./socks_client.ts";

/** Local ports in the namespace's range (see above). */
const PORTS = 4;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Answers a client's first bytes with "upstream\n" and them, then closes:
 * first, so that the connection's TIME_WAIT is the upstream's, and its
 * port at ferry's end is free once ferry has closed too. (A TIME_WAIT at
 * ferry's end holds the port for a second even on loopback.)
 */
const answerThenClose: UpstreamHandler = async ({ conn }) => {
  const buffer = new Uint8Array(64);
  const n = await conn.conn.read(buffer);
  if (n === null) return; // pooled, never used
  await conn.write(encoder.encode("upstream\n"));
  await conn.write(buffer.subarray(0, n));
};

/** Sends "ping" through the forwarder and returns what comes back, "" for a close. */
async function forwarded(client: BufferedConn): Promise<string> {
  await client.write(encoder.encode("ping"));
  return decoder.decode(await client.readExactly(13).catch(() => new Uint8Array()));
}

async function probe(pool: number, listenPort: number, upstreamPort: number) {
  await using upstream = new ForwardUpstream(answerThenClose, upstreamPort);
  await using ferry = await startFerry(
    ["forward", "--listen", `127.0.0.1:${listenPort}`, "--to", upstream.name]
      .concat(["--pool", String(pool)]),
  );
  const served = Math.max(1, pool);
  for (const started = performance.now(); upstream.accepted < pool;) {
    if (performance.now() - started > 5_000) throw new Error("the pool did not fill");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const taken: Deno.TcpConn[] = [];
  const held: BufferedConn[] = [];
  try {
    while (taken.length < PORTS - served) {
      taken.push(await Deno.connect({ hostname: "127.0.0.1", port: upstreamPort }));
    }
    for (let i = 0; i < served; i++) {
      const client = await BufferedConn.connect("127.0.0.1", listenPort);
      held.push(client);
      const got = await forwarded(client);
      if (got !== "upstream\nping") throw new Error(`client ${i} got ${JSON.stringify(got)}`);
    }
    // A pool's refill has met the shortage by now.
    await new Promise((resolve) => setTimeout(resolve, 200));
    using refused = await BufferedConn.connect("127.0.0.1", listenPort);
    await forwarded(refused);
    const refusedLine = await sessionOf(ferry, refused.localAddr);

    const first = held.shift()!;
    first.close();
    // Its port is free once ferry has closed its end (see answerThenClose),
    // before the session's line.
    await sessionOf(ferry, first.localAddr);
    using next = await BufferedConn.connect("127.0.0.1", listenPort);
    return {
      refused: { outcome: refusedLine.outcome, error: refusedLine.error },
      next: await forwarded(next),
      lines: ferry.lines
        .filter((line) => line.event === "upstream-down" || line.event === "pool-no-local-ports")
        .map((line) => line.event),
    };
  } finally {
    for (const conn of taken) conn.close();
    for (const client of held) client.close();
  }
}

/** A SOCKS5 CONNECT through ferry to a target whose ports the probe has all taken: the reply and the line. */
async function socksConnect(listenPort: number, targetPort: number) {
  using _target = Deno.listen({ hostname: "127.0.0.1", port: targetPort });
  await using ferry = await startFerry(["socks", "--listen", `127.0.0.1:${listenPort}`]);
  const taken: Deno.TcpConn[] = [];
  try {
    while (taken.length < PORTS) {
      taken.push(await Deno.connect({ hostname: "127.0.0.1", port: targetPort }));
    }
    using client = await BufferedConn.connect("127.0.0.1", listenPort);
    const { reply } = await socks5Handshake(client, ipv4("127.0.0.1", targetPort));
    const line = await sessionOf(ferry, client.localAddr);
    return { reply, outcome: line.outcome, error: line.error };
  } finally {
    for (const conn of taken) conn.close();
  }
}

let result: unknown;
try {
  result = {
    pool0: await probe(0, 9100, 9000),
    pool2: await probe(2, 9101, 9001),
    socks: await socksConnect(9102, 9002),
  };
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
