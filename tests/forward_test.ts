/**
 * The port forwarder in process: `startForwarder` on loopback port 0 against
 * scriptable loopback upstreams, with ferry's log records captured in memory.
 * Deno's op and resource sanitizers (on in `deno task test`) check that
 * shutdown leaves nothing open or running.
 */
import assert from "node:assert/strict";
import { buildForwardConfig, type RawForwardOptions } from "../src/config.ts";
import { type Forwarder, reachesListener, startForwarder, UpstreamSet } from "../src/forward.ts";
import type { Standing, Upstream } from "../src/upstream/pool.ts";
import {
  type AcceptedConn,
  captureLogs,
  ForwardUpstream,
  taggedEcho,
  unusedPort,
  waitUntil,
} from "./_helpers/forward_support.ts";
import { fullQueueListeners } from "./_helpers/full_queue.ts";
import {
  BufferedConn,
  concat,
  deadline,
  pseudoRandomBytes,
  sha256,
} from "./_helpers/socks_client.ts";

const FIVE_MB = 5 * 1024 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const logs = await captureLogs();

/** Starts a forwarder on 127.0.0.1:0 to `to`; dispose shuts it down. */
function forwarder(
  to: string[],
  options: Partial<RawForwardOptions> = {},
): Forwarder & AsyncDisposable {
  logs.records.length = 0; // client ports may repeat across tests
  const fwd = startForwarder(buildForwardConfig({
    listen: "127.0.0.1:0",
    to,
    pool: "2",
    connectTimeout: "2s",
    idleTimeout: "30s",
    shutdownGrace: "1s",
    ...options,
  }));
  return Object.assign(fwd, { [Symbol.asyncDispose]: () => fwd.shutdown(1000) });
}

function upstreamOf(fwd: Forwarder, index = 0): Upstream {
  return fwd.upstreams.upstreams[index]!;
}

function connect(fwd: Forwarder): Promise<BufferedConn> {
  return BufferedConn.connect("127.0.0.1", fwd.addr.port);
}

/** The session record of the client whose local address is `addr`, once logged. */
async function sessionOf(addr: Deno.NetAddr): Promise<Record<string, unknown>> {
  const client = `127.0.0.1:${addr.port}`;
  const find = () => logs.events("session").find((s) => s.client === client);
  await waitUntil(() => find() !== undefined, `the session line of ${client}`);
  return find()!;
}

/** Sends `text` and reads the tag line and echo; returns the tag. */
async function askTag(client: BufferedConn, text = "hello"): Promise<string> {
  await client.write(encoder.encode(text));
  const reply = decoder.decode(await client.readAtLeast(text.length + 2));
  const newline = reply.indexOf("\n");
  assert.equal(reply.slice(newline + 1), text, "the echo");
  return reply.slice(0, newline);
}

Deno.test("forward: a client gets a pooled connection, with no new connect at client time", async () => {
  let used: AcceptedConn | null = null;
  await using server = new ForwardUpstream(
    taggedEcho("up", (accepted) => used ??= accepted),
  );
  await using fwd = forwarder([server.name], { pool: "2" });
  const upstream = upstreamOf(fwd);
  await waitUntil(() => upstream.idle === 2, "the pool to fill");
  assert.equal(server.accepted, 2);

  const clientAt = performance.now();
  using client = await connect(fwd);
  assert.equal(await askTag(client), "up");
  const carrier = used as AcceptedConn | null;
  assert.ok(carrier, "the upstream saw the client's bytes");
  assert.ok(carrier.index < 2, `carried by connection #${carrier.index}, not one of the pool`);
  assert.ok(carrier.acceptedAt < clientAt, "the connection was dialled before the client came");
  client.close();

  const session = await sessionOf(client.localAddr);
  assert.equal(session.protocol, "forward");
  assert.equal(session.pooled, true);
  assert.equal(session.outcome, "ok");
  assert.equal(session.target, server.name);
  assert.equal(session.up, 5);
  assert.equal(session.down, 8);

  await waitUntil(() => upstream.idle === 2, "the pool to refill after use");
  assert.equal(upstream.stats.taken, 1);
  assert.equal(upstream.stats.dialled, 3);
  await waitUntil(() => carrier.closed, "the used upstream connection to be closed");
});

Deno.test("forward: a dead pooled connection is never handed out; after an upstream restart the client reaches the new instance", async () => {
  const first = new ForwardUpstream(taggedEcho("v1"), unusedPort());
  const port = first.port;
  let second: ForwardUpstream | null = null;
  try {
    await using fwd = forwarder([first.name], { pool: "3" });
    const upstream = upstreamOf(fwd);
    await waitUntil(() => upstream.idle === 3, "the pool to fill");
    // Past the settle time (1 s): connections that die younger mean an upstream
    // that cuts them at once, and the pool would stop handing them out.
    await new Promise((resolve) => setTimeout(resolve, 1100));

    await first.stop(); // the restart: listener and every accepted socket closed
    second = new ForwardUpstream(taggedEcho("v2"), port);
    await waitUntil(
      () => upstream.stats.dropped === 3 && upstream.idle === 3,
      "the pool to drop its dead connections and refill",
    );

    using client = await connect(fwd);
    assert.equal(await askTag(client, "after restart"), "v2");
    client.close();
    const session = await sessionOf(client.localAddr);
    assert.equal(session.outcome, "ok");
    assert.equal(session.pooled, true);
  } finally {
    await first.stop();
    await second?.stop();
  }
});

Deno.test("forward: a server-speaks-first banner reaches the client first, intact and in order, then the conversation goes on", async () => {
  const banner = concat([encoder.encode("SSH-2.0-test\r\n"), pseudoRandomBytes(2500, 11)]);
  let bannersSent = 0;
  await using server = new ForwardUpstream(async (accepted) => {
    await accepted.conn.write(banner.subarray(0, 14));
    await accepted.conn.write(banner.subarray(14));
    bannersSent++;
    const buffer = new Uint8Array(4096);
    for (;;) {
      const n = await accepted.conn.conn.read(buffer);
      if (n === null) return;
      await accepted.conn.write(buffer.subarray(0, n));
    }
  });
  await using fwd = forwarder([server.name], { pool: "2" });
  const upstream = upstreamOf(fwd);
  await waitUntil(
    () => upstream.idle === 2 && bannersSent === 2,
    "the pool to fill and be greeted",
  );

  using client = await connect(fwd);
  const greeting = await client.readExactly(banner.length);
  assert.equal(decoder.decode(greeting.subarray(0, 14)), "SSH-2.0-test\r\n");
  assert.deepEqual(greeting, banner);
  await client.write(encoder.encode("SSH-2.0-client\r\n"));
  assert.equal(decoder.decode(await client.readExactly(16)), "SSH-2.0-client\r\n");
  await client.closeWrite();
  assert.equal((await client.readToEnd()).length, 0, "nothing after the echo");
  client.close();

  const session = await sessionOf(client.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.pooled, true);
  assert.equal(session.up, 16);
  assert.equal(session.down, banner.length + 16);
});

Deno.test("forward: 5 MB up then half-close; the upstream's 5 MB reply after EOF arrives in full", async () => {
  const upload = pseudoRandomBytes(FIVE_MB, 21);
  const download = pseudoRandomBytes(FIVE_MB, 22);
  const received: Uint8Array[] = [];
  await using server = new ForwardUpstream(async ({ conn }) => {
    const got = await conn.readToEnd(30_000);
    if (got.length === 0) return; // a pooled connection nobody used
    received.push(got);
    await conn.write(download);
  });
  await using fwd = forwarder([server.name], { pool: "2" });
  await waitUntil(() => upstreamOf(fwd).idle === 2, "the pool to fill");

  using client = await connect(fwd);
  const reading = client.readToEnd(30_000);
  await client.write(upload);
  await client.closeWrite();
  const got = await reading;
  client.close();

  assert.equal(received.length, 1);
  assert.equal(received[0]!.length, FIVE_MB, "bytes the upstream received");
  assert.equal(await sha256(received[0]!), await sha256(upload));
  assert.equal(got.length, FIVE_MB, "bytes the client received after its EOF");
  assert.equal(await sha256(got), await sha256(download));
  const session = await sessionOf(client.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.pooled, true);
  assert.equal(session.up, FIVE_MB);
  assert.equal(session.down, FIVE_MB);
});

Deno.test("forward: the upstream's 5 MB then half-close; the client's 5 MB after that EOF arrives in full", async () => {
  const download = pseudoRandomBytes(FIVE_MB, 31);
  const upload = pseudoRandomBytes(FIVE_MB, 32);
  const uploaded = Promise.withResolvers<Uint8Array>();
  await using server = new ForwardUpstream(async ({ conn }) => {
    const request = await conn.readExactly(3, 30_000).catch(() => null);
    if (request === null) return; // a pooled connection nobody used
    assert.equal(decoder.decode(request), "GO\n");
    await conn.write(download);
    await conn.closeWrite();
    uploaded.resolve(await conn.readToEnd(30_000));
  });
  await using fwd = forwarder([server.name], { pool: "2" });
  await waitUntil(() => upstreamOf(fwd).idle === 2, "the pool to fill");

  using client = await connect(fwd);
  await client.write(encoder.encode("GO\n"));
  const got = await client.readToEnd(30_000);
  assert.equal(got.length, FIVE_MB, "bytes the client received before the upstream's EOF");
  assert.equal(await sha256(got), await sha256(download));
  await client.write(upload);
  await client.closeWrite();
  const session = await sessionOf(client.localAddr);
  client.close();

  const received = await deadline(uploaded.promise, 10_000, "the upstream to read to EOF");
  assert.equal(server.errors.length, 0, String(server.errors[0]));
  assert.equal(received.length, FIVE_MB, "bytes the upstream received after its own EOF");
  assert.equal(await sha256(received), await sha256(upload));
  assert.equal(session.outcome, "ok");
  assert.equal(session.up, FIVE_MB + 3);
  assert.equal(session.down, FIVE_MB);
});

Deno.test("forward: with --pool 0 each client is dialled on demand, and the upstream may speak first", async () => {
  const greeting = pseudoRandomBytes(256 * 1024, 41); // more than a pooled connection may hold
  await using server = new ForwardUpstream(async ({ conn }) => {
    await conn.write(greeting);
    await conn.closeWrite();
    await conn.readToEnd(30_000);
  });
  await using fwd = forwarder([server.name], { pool: "0" });

  using client = await connect(fwd);
  const got = await client.readToEnd(30_000);
  assert.equal(await sha256(got), await sha256(greeting));
  await client.closeWrite();
  client.close();
  const session = await sessionOf(client.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.pooled, false);
  assert.equal(server.accepted, 1, "one connection, dialled for the client");
});

/** A stand-in for an Upstream in the given standing, with `idle` pooled connections ready. */
const fake = (name: string, standing: Standing, idle = 1) =>
  ({ name, standing, idle }) as unknown as Upstream;

Deno.test("UpstreamSet: with one upstream down, the others share its turns evenly", () => {
  const set = new UpstreamSet([fake("A", "up"), fake("B", "skip"), fake("C", "up")]);
  const firstChoices = Array.from({ length: 6 }, () => set.candidates().map((u) => u.name));
  assert.deepEqual(firstChoices, [
    ["A", "C"],
    ["C", "A"],
    ["A", "C"],
    ["C", "A"],
    ["A", "C"],
    ["C", "A"],
  ]);
  const none = new UpstreamSet([fake("A", "skip"), fake("B", "skip")]);
  assert.deepEqual(none.candidates(), []);
});

Deno.test("UpstreamSet: a client's try after a failed one takes the next turn, not the failing upstream's neighbour", () => {
  const failing = fake("C", "up", 0);
  const set = new UpstreamSet([fake("A", "up", 0), fake("B", "up", 0), failing]);
  const served: Record<string, number> = { A: 0, B: 0 };
  for (let client = 0; client < 30; client++) {
    const tried = new Set<Upstream>();
    for (let upstream; (upstream = set.next(tried)) !== null;) {
      tried.add(upstream);
      if (upstream === failing) continue; // its dial failed
      served[upstream.name]!++;
      break;
    }
  }
  assert.deepEqual(served, { A: 15, B: 15 });
});

Deno.test("UpstreamSet: an upstream with a pooled connection ready comes before one without", () => {
  // B's pool is empty (its first dials still hang on an upstream that drops
  // SYNs): clients go to A while A has connections ready, then to B.
  const set = new UpstreamSet([fake("A", "up", 2), fake("B", "up", 0)]);
  const orders = Array.from({ length: 3 }, () => set.candidates().map((u) => u.name));
  assert.deepEqual(orders, [["A", "B"], ["A", "B"], ["A", "B"]]);
  const even = new UpstreamSet([fake("A", "up", 0), fake("B", "up", 0)]);
  const turns = Array.from({ length: 4 }, () => even.candidates()[0]!.name);
  assert.deepEqual(turns, ["A", "B", "A", "B"], "round-robin when no pool has one (--pool 0)");
});

Deno.test("UpstreamSet: an upstream whose pooled connections end young comes after those up, in turn", () => {
  const set = new UpstreamSet([fake("A", "fallback"), fake("B", "up"), fake("C", "fallback")]);
  const orders = Array.from({ length: 3 }, () => set.candidates().map((u) => u.name));
  // The turn follows the first choice, B, each time.
  assert.deepEqual(orders, [["B", "A", "C"], ["B", "C", "A"], ["B", "C", "A"]]);
  const alone = new UpstreamSet([fake("A", "fallback")]);
  assert.deepEqual(alone.candidates().map((u) => u.name), ["A"], "dialled when nothing is up");
});

Deno.test("forward: round-robin across two upstreams sends 4 clients 2 and 2", async () => {
  await using a = new ForwardUpstream(taggedEcho("A"));
  await using b = new ForwardUpstream(taggedEcho("B"));
  await using fwd = forwarder([a.name, b.name], { pool: "2" });
  await waitUntil(
    () => upstreamOf(fwd, 0).idle === 2 && upstreamOf(fwd, 1).idle === 2,
    "both pools to fill",
  );
  const tags: string[] = [];
  for (let i = 0; i < 4; i++) {
    using client = await connect(fwd);
    tags.push(await askTag(client, `client ${i}`));
    client.close();
    const session = await sessionOf(client.localAddr);
    assert.equal(session.target, tags[i] === "A" ? a.name : b.name);
  }
  assert.equal(tags.filter((t) => t === "A").length, 2, tags.join(","));
  assert.equal(tags.filter((t) => t === "B").length, 2, tags.join(","));
  assert.notEqual(tags[0], tags[1], "alternating");
});

Deno.test("forward: failover with pooling: one upstream refusing, every client goes to the other and succeeds", async () => {
  const dead = `127.0.0.1:${unusedPort()}`;
  await using live = new ForwardUpstream(taggedEcho("live"));
  await using fwd = forwarder([dead, live.name], { pool: "2" });
  await waitUntil(
    () => upstreamOf(fwd, 1).idle === 2 && upstreamOf(fwd, 0).stats.failures > 0,
    "the live pool to fill and the dead upstream to fail",
  );
  for (let i = 0; i < 4; i++) {
    using client = await connect(fwd);
    assert.equal(await askTag(client, `client ${i}`), "live");
    client.close();
    const session = await sessionOf(client.localAddr);
    assert.equal(session.outcome, "ok");
    assert.equal(session.target, live.name);
  }
  assert.equal(upstreamOf(fwd, 0).idle, 0);
  const down = logs.events("upstream-down").filter((e) => e.upstream === dead);
  assert.equal(down.length, 1, "one upstream-down line for the dead upstream");
});

Deno.test("forward: an upstream's lines name the listener by the port it got, not the 0 it was given", async () => {
  // Several listeners may share an upstream: its lines say which one's pool they are about.
  const dead = `127.0.0.1:${unusedPort()}`;
  await using fwd = forwarder([dead], { pool: "1" });
  const downOf = () => logs.events("upstream-down").find((e) => e.upstream === dead);
  await waitUntil(() => downOf() !== undefined, "the upstream-down line");
  assert.equal(downOf()!.listen, `127.0.0.1:${fwd.addr.port}`);
});

Deno.test("forward: a pool's dial gives up after --connect-timeout, whatever --handshake-timeout is", async () => {
  // The upstream drops SYNs (its accept queue is full): each dial hangs
  // until its timeout, which is --connect-timeout's, not the handshake's.
  await using silent = await fullQueueListeners(["127.0.0.1"]);
  const upstream = `127.0.0.1:${silent.port}`;
  await using _fwd = forwarder([upstream], {
    pool: "1",
    connectTimeout: "300ms",
    handshakeTimeout: "500h",
  });
  const downOf = () => logs.events("upstream-down").find((e) => e.upstream === upstream);
  await waitUntil(() => downOf() !== undefined, "the pool's dial to time out");
  assert.match(String(downOf()!.error), /timed out/);
});

Deno.test("forward: failover on demand (--pool 0): a refused dial moves on to the next upstream", async () => {
  const dead = `127.0.0.1:${unusedPort()}`;
  await using live = new ForwardUpstream(taggedEcho("live"));
  await using fwd = forwarder([dead, live.name], { pool: "0" });
  for (let i = 0; i < 4; i++) {
    using client = await connect(fwd);
    assert.equal(await askTag(client, `client ${i}`), "live");
    client.close();
    const session = await sessionOf(client.localAddr);
    assert.equal(session.outcome, "ok");
    assert.equal(session.target, live.name);
    assert.equal(session.pooled, false);
  }
  assert.ok(upstreamOf(fwd, 0).stats.failures >= 1, "the dead upstream was tried");
  assert.equal(live.accepted, 4);
});

Deno.test("forward: a client for whom every upstream failed gets a line naming each, and how it failed", async () => {
  const dead = [`127.0.0.1:${unusedPort()}`, `127.0.0.1:${unusedPort()}`];
  await using fwd = forwarder(dead, { pool: "0" });
  using client = await connect(fwd);
  assert.equal((await client.waitForEnd(5_000)).discarded, 0);
  const session = await sessionOf(client.localAddr);
  assert.equal(session.outcome, "connection-refused");
  // Tried in turn from the first; the line named only the last, without why.
  assert.equal(session.target, dead.join(","));
  const refused = (upstream: string) =>
    `${upstream}: connect to 127.0.0.1 failed: Connection refused`;
  assert.match(String(session.error), new RegExp(`^${refused(dead[0]!)}.*; ${refused(dead[1]!)}`));
});

Deno.test("forward: an upstream that talks first at length (too much to pool) still serves every client, dialled on demand", async () => {
  const banner = pseudoRandomBytes(200 * 1024, 7);
  await using talker = new ForwardUpstream(async ({ conn }) => {
    await conn.write(banner);
    await conn.waitForEnd();
  });
  await using fwd = forwarder([talker.name], { pool: "2" });
  // Each pooled connection is dropped once it holds more than 64 KiB unasked,
  // within the settle time: the pool backs off, but the upstream is reachable.
  await waitUntil(() => upstreamOf(fwd).stats.dropped > 0, "the pool to drop one");
  assert.equal(logs.events("pool-unsettled").length, 1);
  for (let i = 0; i < 3; i++) {
    using client = await connect(fwd);
    assert.equal(await sha256(await client.readExactly(banner.length)), await sha256(banner));
    client.close();
    const session = await sessionOf(client.localAddr);
    assert.equal(session.outcome, "ok");
    assert.equal(session.down, banner.length);
  }
  assert.equal(logs.events("upstream-down").length, 0);
});

Deno.test("forward: with no upstream up (--pool 0) the client is closed at once and the session says connection-refused", async () => {
  await using fwd = forwarder([`127.0.0.1:${unusedPort()}`], { pool: "0" });
  using client = await connect(fwd);
  const end = await client.waitForEnd(1000);
  assert.equal(end.discarded, 0);
  client.close();
  const session = await sessionOf(client.localAddr);
  assert.equal(session.outcome, "connection-refused");
  assert.equal(session.pooled, false);
  assert.equal(fwd.metrics.sessionsFailed, 1);
});

Deno.test("forward: with no upstream up (pooled) every client is closed at once, never left hanging", async () => {
  const dead = [`127.0.0.1:${unusedPort()}`, `127.0.0.1:${unusedPort()}`];
  await using fwd = forwarder(dead, { pool: "2" });
  await waitUntil(
    () => upstreamOf(fwd, 0).stats.failures > 0 && upstreamOf(fwd, 1).stats.failures > 0,
    "both pools to fail",
  );
  for (let i = 0; i < 3; i++) {
    using client = await connect(fwd);
    await client.write(encoder.encode("anyone?"));
    // At once: not after the connect timeout (2 s here) or a wait for the
    // pool; the bound only tells the two apart, with room for a loaded machine.
    const end = await client.waitForEnd(1500);
    assert.equal(end.discarded, 0);
    client.close();
    const session = await sessionOf(client.localAddr);
    assert.ok(
      session.outcome === "no-upstream-up" || session.outcome === "connection-refused",
      `outcome ${session.outcome}`,
    );
  }
  assert.equal(fwd.metrics.sessionsOk, 0);
  assert.equal(fwd.metrics.sessionsFailed, 3);
});

Deno.test("forward: shutdown closes every pooled connection; the upstream sees them all closed", async () => {
  await using server = new ForwardUpstream(taggedEcho("up"));
  const fwd = forwarder([server.name], { pool: "3" });
  try {
    await waitUntil(() => upstreamOf(fwd).idle === 3, "the pool to fill");
    using client = await connect(fwd);
    assert.equal(await askTag(client), "up");
    client.close();
    await sessionOf(client.localAddr);
  } finally {
    await fwd.shutdown(1000);
  }
  assert.equal(upstreamOf(fwd).idle, 0);
  await waitUntil(() => server.open === 0, "the upstream to see every connection closed");
  assert.equal(fwd.activeSessions, 0);
});

Deno.test("reachesListener: a dialled connection that arrived at the forwarder's own listener", () => {
  const addr = (hostname: string, port: number): Deno.NetAddr => ({
    transport: "tcp",
    hostname,
    port,
  });
  /** A connection from `local` to `remote`, as a dial would return it. */
  const conn = (local: string, remote: string, port = 8080) =>
    ({ localAddr: addr(local, 40000), remoteAddr: addr(remote, port) }) as Deno.TcpConn;
  const cases: [listener: Deno.NetAddr, dialled: Deno.TcpConn, loops: boolean][] = [
    [addr("127.0.0.1", 8080), conn("127.0.0.1", "127.0.0.1"), true],
    [addr("127.0.0.1", 8080), conn("127.0.0.1", "127.0.0.1", 8081), false],
    [addr("127.0.0.1", 8080), conn("127.0.0.1", "127.0.0.2"), false],
    [addr("::1", 8080), conn("::1", "::1"), true],
    [addr("10.0.0.5", 8080), conn("10.0.0.5", "10.0.0.5"), true],
    // Wildcards: a loopback address, or the host's own (the source is then the destination).
    [addr("0.0.0.0", 8080), conn("127.0.0.1", "127.0.0.9"), true],
    [addr("0.0.0.0", 8080), conn("10.0.0.5", "10.0.0.5"), true],
    [addr("0.0.0.0", 8080), conn("10.0.0.5", "10.0.0.6"), false],
    [addr("0.0.0.0", 8080), conn("::1", "::1"), false],
    [addr("::", 8080), conn("::1", "::1"), true],
    [addr("::", 8080), conn("127.0.0.1", "127.0.0.1"), true],
    [addr("::", 8080), conn("::ffff:10.0.0.5", "::ffff:10.0.0.5"), true],
    [addr("::", 8080), conn("2001:db8::1", "2001:db8::2"), false],
  ];
  for (const [listener, dialled, loops] of cases) {
    const { localAddr, remoteAddr } = dialled;
    assert.equal(
      reachesListener(listener, dialled),
      loops,
      `${localAddr.hostname} → ${remoteAddr.hostname}:${remoteAddr.port} on ${listener.hostname}:${listener.port}`,
    );
  }
});
