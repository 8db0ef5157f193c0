/**
 * `ferry forward` as a user runs it: a child process on loopback port 0,
 * its JSON log lines on stderr, scriptable upstreams, and `ss` to check that
 * it holds exactly the sockets it should and none once it has exited.
 */
import assert from "node:assert/strict";
import { type FerryProcess, type LogLine, startFerry } from "./_helpers/ferry.ts";
import {
  ForwardUpstream,
  type SocketInfo,
  taggedEcho,
  tcpSocketsOf,
  unusedPort,
  waitUntil,
} from "./_helpers/forward_support.ts";
import { cpuSeconds } from "./_helpers/proc.ts";
import { ss } from "./_helpers/ss.ts";
import { sessionLines } from "./_helpers/session_log.ts";
import { BufferedConn } from "./_helpers/socks_client.ts";
import { resettingServer } from "./_helpers/reset.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function forwardArgs(to: string[], ...extra: string[]): string[] {
  return ["forward", "--listen", "127.0.0.1:0", ...to.flatMap((t) => ["--to", t]), ...extra];
}

/**
 * The session line of the client at `addr`, among lines logged from index
 * `from` on: a client port may repeat one an earlier client of the test used.
 */
async function sessionSince(
  ferry: FerryProcess,
  from: number,
  addr: Deno.NetAddr,
): Promise<LogLine> {
  const client = `127.0.0.1:${addr.port}`;
  const find = () =>
    ferry.lines.slice(from).find((l) => l.event === "session" && l.client === client);
  await waitUntil(() => find() !== undefined, `the session line of ${client}`);
  return find()!;
}

/** Sends `text` through ferry and returns the upstream's tag line. */
async function askTag(
  ferry: FerryProcess,
  text: string,
): Promise<{ tag: string; session: Promise<LogLine> }> {
  const from = ferry.lines.length;
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(encoder.encode(text));
  const reply = decoder.decode(await client.readAtLeast(text.length + 2));
  const newline = reply.indexOf("\n");
  assert.equal(reply.slice(newline + 1), text, "the echo");
  await client.closeWrite();
  await client.readToEnd();
  const session = sessionSince(ferry, from, client.localAddr);
  session.catch(() => {}); // awaited by the caller; no unhandled rejection if it fails first
  return { tag: reply.slice(0, newline), session };
}

/**
 * Stops ferry and expects a clean exit. (Whether shutdown closes the pool is
 * tested in process, in forward_test.ts: once the process is gone the kernel
 * has closed its sockets anyway, and ss can no longer name their owner.)
 */
async function stopCleanly(ferry: FerryProcess): Promise<void> {
  const status = await ferry.stop();
  assert.equal(status.code, 0, "exit code after SIGTERM");
  assert.ok(ferry.lines.some((l) => l.event === "stopped"), "the stopped line");
}

Deno.test("ferry forward: the pool fills, a client is served from it, old connections are recycled, and no socket leaks", async () => {
  await using server = new ForwardUpstream(taggedEcho("up"));
  const ferry = await startFerry(
    forwardArgs([server.name], "--pool", "2", "--pool-max-idle", "1s"),
  );
  try {
    await waitUntil(() => server.accepted === 2, "the pool of 2 to be dialled");
    const { tag, session: logged } = await askTag(ferry, "hello");
    assert.equal(tag, "up");
    assert.ok(
      server.connections.slice(0, 2).some((c) => c.closed),
      "the client was carried by one of the 2 pooled connections",
    );
    const session = await logged;
    assert.equal(session.protocol, "forward");
    assert.equal(session.target, server.name);
    assert.equal(session.outcome, "ok");
    assert.equal(session.pooled, true);
    assert.equal(session.up, 5);
    assert.equal(session.down, 8);

    // 2 pooled + 1 refill after the take, then the idle ones are recycled at 1 s.
    await waitUntil(() => server.accepted >= 5, "idle connections to be recycled and redialled");
    await waitUntil(
      () => server.connections.slice(0, 3).every((c) => c.closed),
      "the idle pooled connections to be closed by the recycling",
    );

    // Exactly the listener and a full pool: no CLOSE-WAIT, nothing half-closed, no extra.
    const upstreamEnd = `127.0.0.1:${server.port}`;
    let sockets: SocketInfo[] = [];
    await waitUntil(async () => {
      sockets = await tcpSocketsOf(ferry.pid);
      return sockets.length === 3 &&
        sockets.filter((s) => s.state === "LISTEN").length === 1 &&
        sockets.filter((s) => s.state === "ESTAB" && s.peer === upstreamEnd).length === 2;
    }, "ferry to hold exactly its listener and 2 pooled connections").catch((error) => {
      throw new Error(`${error.message}; ss shows ${JSON.stringify(sockets)}`);
    });
    assert.equal(server.open, 2, "the upstream sees only the 2 pooled connections open");
  } finally {
    await stopCleanly(ferry);
  }
  await waitUntil(() => server.open === 0, "the upstream to see every connection closed");
});

Deno.test("ferry forward: while the upstream is down it logs upstream-down once and closes clients at once; on recovery it logs upstream-up once and refills", async () => {
  const port = unusedPort();
  const name = `127.0.0.1:${port}`;
  const ferry = await startFerry(forwardArgs([name], "--pool", "2"));
  let server: ForwardUpstream | null = null;
  try {
    await ferry.waitFor((l) => l.event === "upstream-down");

    // Clients during the outage: each is closed at once, none is left hanging.
    const windowEnd = performance.now() + 1500;
    let clients = 0;
    while (performance.now() < windowEnd) {
      const from = ferry.lines.length;
      using client = await BufferedConn.connect(ferry.hostname, ferry.port);
      // At once: not after the connect timeout (10 s); the bound only tells
      // the two apart, with room for a loaded machine.
      const end = await client.waitForEnd(3000);
      assert.equal(end.discarded, 0);
      clients++;
      if (clients === 1) {
        const session = await sessionSince(ferry, from, client.localAddr);
        assert.ok(
          session.outcome === "no-upstream-up" || session.outcome === "connection-refused",
          `outcome ${session.outcome}`,
        );
        // A refused dial names the upstream it tried; when none was due for a retry, none was.
        if (session.outcome === "connection-refused") assert.equal(session.target, name);
        assert.equal(session.pooled, false);
      }
    }
    assert.ok(clients >= 2);
    await waitUntil(() => sessionLines(ferry).length === clients, "a session line per client");
    assert.ok(sessionLines(ferry).every((s) => s.outcome !== "ok"));
    const downLines = () => ferry.lines.filter((l) => l.event === "upstream-down");
    assert.equal(downLines().length, 1, "one upstream-down line over the whole outage");
    assert.equal(downLines()[0]!.upstream, name);

    server = new ForwardUpstream(taggedEcho("back"), port);
    await ferry.waitFor((l) => l.event === "upstream-up", 15_000);
    await waitUntil(() => server!.accepted >= 2, "the pool to refill", 15_000);
    const { tag, session: logged } = await askTag(ferry, "ping");
    assert.equal(tag, "back");
    const session = await logged;
    assert.equal(session.outcome, "ok");
    assert.equal(session.pooled, true);
    const upLines = ferry.lines.filter((l) => l.event === "upstream-up");
    assert.equal(upLines.length, 1);
    assert.equal(downLines().length, 1);
    // As loud as the line it ends, so that --log-level warn shows the outage's end too.
    assert.equal(upLines[0]!.level, downLines()[0]!.level);
    await stopCleanly(ferry);
    await waitUntil(() => server!.open === 0, "the upstream to see every connection closed");
  } finally {
    await ferry.stop();
    await server?.stop();
  }
});

Deno.test("ferry forward --pool 0: the clients of an upstream that resets as it accepts are shared evenly by the others", async () => {
  await using a = new ForwardUpstream(taggedEcho("A"));
  await using b = new ForwardUpstream(taggedEcho("B"));
  const resetting = await resettingServer();
  try {
    const c = `127.0.0.1:${resetting.port}`;
    await using ferry = await startFerry(forwardArgs([a.name, b.name, c], "--pool", "0"));
    const served: Record<string, number> = { A: 0, B: 0, none: 0 };
    for (let i = 0; i < 60; i++) {
      // A dial to C fails when the reset comes before the connect is checked
      // (the client moves on), or the client is reset once connected.
      const tag = await askTag(ferry, `client ${i}`).then(({ tag }) => tag, () => "none");
      served[tag]!++;
      // Paced: back to back, the reset mostly came after the connect completed.
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    // The turns of C's failed dials all went to A, listed after it: A
    // served 1.7 times B's clients.
    assert.ok(Math.abs(served.A! - served.B!) <= 1, JSON.stringify(served));
    assert.ok(served.A! + served.B! >= 40, JSON.stringify(served));
  } finally {
    await resetting.close();
  }
});

Deno.test("ferry forward: round-robin over two upstreams sends 4 clients 2 and 2", async () => {
  await using a = new ForwardUpstream(taggedEcho("A"));
  await using b = new ForwardUpstream(taggedEcho("B"));
  const ferry = await startFerry(forwardArgs([a.name, b.name], "--pool", "1"));
  try {
    await waitUntil(() => a.accepted === 1 && b.accepted === 1, "both pools to fill");
    const tags: string[] = [];
    for (let i = 0; i < 4; i++) {
      const { tag, session: logged } = await askTag(ferry, `client ${i}`);
      tags.push(tag);
      const session = await logged;
      assert.equal(session.outcome, "ok");
      assert.equal(session.pooled, true);
      assert.equal(session.target, tag === "A" ? a.name : b.name);
    }
    assert.equal(tags.filter((t) => t === "A").length, 2, tags.join(","));
    assert.equal(tags.filter((t) => t === "B").length, 2, tags.join(","));
  } finally {
    await stopCleanly(ferry);
  }
  await waitUntil(
    () => a.open === 0 && b.open === 0,
    "the upstreams to see every connection closed",
  );
});

Deno.test("ferry forward: a pool that runs ferry out of descriptors backs off and says so; the upstream is not down", async () => {
  // The pool's dials met EMFILE, ferry's own shortage, and marked the
  // upstream down: clients were refused with no-upstream-up.
  await using server = new ForwardUpstream(taggedEcho("up"));
  const ferry = await startFerry(forwardArgs([server.name], "--pool", "100"), {
    wrapper: ["prlimit", "--nofile=48"],
  });
  try {
    // Learned before the pool took every descriptor: prlimit could not start after.
    const low = await ferry.waitFor((l) => l.event === "nofile-low");
    assert.equal(low.limit, 48, String(low.message));
    const starved = await ferry.waitFor((l) => l.event === "pool-no-descriptors");
    assert.equal(starved.upstream, server.name);
    assert.match(String(starved.error), /Too many open files/);
    // Through a few of its back-off retries (100 ms, doubling). Redialling at
    // once instead spun at 100% CPU: a second of it is far more than the
    // tenth of a second ferry may take here.
    const cpuBefore = await cpuSeconds(ferry.pid);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const cpu = await cpuSeconds(ferry.pid) - cpuBefore;
    assert.ok(cpu < 0.5, `${cpu.toFixed(2)} s of CPU in 1 s of backing off`);
    assert.ok(server.accepted > 0 && server.accepted < 48, `${server.accepted} pooled`);
    assert.deepEqual(ferry.lines.filter((l) => l.event === "upstream-down"), []);
    assert.equal(ferry.lines.filter((l) => l.event === "pool-no-descriptors").length, 1);
  } finally {
    const status = await ferry.stop();
    assert.equal(status.code, 0);
  }
});

Deno.test("ferry forward: a pool that took every descriptor gives one up for each client, who is served at once", async () => {
  // The pool refilled into every descriptor the limit left, and then the
  // listener could accept no client (EMFILE, backing off) until a pooled
  // connection happened to end: a forwarder that served nobody.
  await using server = new ForwardUpstream(taggedEcho("up"));
  const ferry = await startFerry(forwardArgs([server.name], "--pool", "100"), {
    wrapper: ["prlimit", "--nofile=48"],
  });
  try {
    await ferry.waitFor((l) => l.event === "pool-no-descriptors");
    // The first dials still connecting hold descriptors but nothing to give up yet.
    // Settled: no new connection for 200 ms.
    const giveUp = performance.now() + 20_000;
    for (let pooled = -1; server.accepted !== pooled;) {
      assert.ok(performance.now() < giveUp, "the pool was still dialling after 20 s");
      pooled = server.accepted;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    for (let i = 0; i < 5; i++) {
      const { tag, session: logged } = await askTag(ferry, `client ${i}`);
      assert.equal(tag, "up");
      const session = await logged;
      assert.equal(session.outcome, "ok");
      // Pooled, not dialled on demand: a pool that answered before the
      // descriptor was really free gave up every connection for the first client.
      assert.equal(session.pooled, true, `client ${i}: ${JSON.stringify(ferry.lines.slice(-4))}`);
    }
    assert.deepEqual(ferry.lines.filter((l) => l.event === "accept-error"), []);
    assert.deepEqual(ferry.lines.filter((l) => l.event === "upstream-down"), []);
  } finally {
    const status = await ferry.stop();
    assert.equal(status.code, 0);
  }
});

Deno.test("ferry forward: at the open-files limit, a pool replaces the connections it retires at once", async () => {
  // Starved, the refill waited out its back-off (2 s) even after the pool
  // had retired its own connections past --pool-max-idle: the pool was empty
  // about half the time, and clients dialled on demand.
  await using server = new ForwardUpstream(taggedEcho("up"));
  const ferry = await startFerry(
    forwardArgs([server.name], "--pool", "100", "--pool-max-idle", "1s"),
    { wrapper: ["prlimit", "--nofile=48"] },
  );
  try {
    await ferry.waitFor((l) => l.event === "pool-no-descriptors");
    await waitUntil(() => server.open > 0, "the pool to fill");
    const samples: number[] = [];
    for (let i = 0; i < 50; i++) { // 5 s: five rounds of retiring
      await new Promise((resolve) => setTimeout(resolve, 100));
      samples.push(server.open);
    }
    const empty = samples.filter((open) => open === 0).length;
    assert.ok(empty <= 3, `empty in ${empty} of 50 samples: ${samples.join(" ")}`);
    assert.ok(server.accepted > 2 * Math.max(...samples), "connections were retired and replaced");
  } finally {
    const status = await ferry.stop();
    assert.equal(status.code, 0);
  }
});

Deno.test("a pooled connection has TCP keepalive from the start, before any client takes it", async () => {
  // A pool may sit idle for as long as --pool-max-idle allows; a NAT or
  // firewall between ferry and its upstream forgets a silent connection.
  await using server = new ForwardUpstream(taggedEcho("up"));
  await using ferry = await startFerry(forwardArgs([server.name], "--pool", "1"));
  await waitUntil(() => server.accepted === 1, "the pool's one connection");
  // -o shows each socket's timers: keepalive's once it is on.
  await waitUntil(async () => {
    const lines = await ss("-tnoH", "state", "established", `( dport = :${server.port} )`);
    return lines.length === 1 && lines[0]!.includes("timer:(keepalive");
  }, "keepalive on ferry's pooled socket (ss -o: timer:(keepalive…))");
  assert.equal(sessionLines(ferry).length, 0, "no client came");
});
