/**
 * ProxySession in process, over real loopback connections: what its log
 * line says when a session fails in a way no outcome name covers, how
 * shutdown ends a session between its dial and its relay, what the client
 * gets when its early bytes meet a target that has gone, and where a
 * forwarded client's bytes go when a slow dial fails over to a pooled
 * connection.
 */
import assert from "node:assert/strict";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import { Deadlines } from "../src/deadlines.ts";
import { ForwardSession, UpstreamSet } from "../src/forward.ts";
import { Metrics } from "../src/metrics.ts";
import {
  NO_EARLY_BYTES,
  ProxySession,
  type Relaying,
  type SessionContext,
} from "../src/proxy_session.ts";
import type { AnswerCheck } from "../src/upstream/dial.ts";
import type { Upstream } from "../src/upstream/pool.ts";
import { fullQueueListeners } from "./_helpers/full_queue.ts";

/** Sends session lines to the returned array, until LogTape's `reset()`. */
async function captureSessionLines(): Promise<LogRecord[]> {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { memory: (record) => records.push(record) },
    loggers: [
      { category: ["ferry", "session"], lowestLevel: "info", sinks: ["memory"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["memory"] },
    ],
  });
  return records;
}

/** A listener's context with 5 s timeouts, whose sessions log their lines. */
function contextWith(deadlines: Deadlines): SessionContext {
  return {
    listen: "127.0.0.1:1080",
    deadlines,
    metrics: new Metrics(),
    handshakeTimeoutMs: 5000,
    connectTimeoutMs: 5000,
    idleTimeoutMs: 5000,
    logSessions: true,
    sourceFor: () => null,
  };
}

/** A session whose negotiation fails with an error ferry has no name for. */
class FailingSession extends ProxySession {
  protected negotiate(): Promise<Relaying | null> {
    this.protocol = "test";
    return Promise.reject(new TypeError("something nobody planned for"));
  }

  protected keepEarlyBytes(): boolean {
    throw new Error("this session never dials");
  }

  protected takeEarlyBytes(): Uint8Array {
    throw new Error("this session never relays");
  }
}

Deno.test("an unexpected failure is logged as outcome error, with what the error said, and the session leaves the deadline sweep", async () => {
  const records = await captureSessionLines();
  const deadlines = new Deadlines(100);
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  try {
    const session = new FailingSession(
      await listener.accept(),
      contextWith(deadlines),
      "handshake",
    );
    const running = session.run();
    assert.equal(deadlines.size, 1, "watched while it runs");
    await running;
    // Else every ended session stayed in the sweep (and in memory) until its
    // timeout ran out, minutes later for a relay with the default idle timeout.
    assert.equal(deadlines.size, 0);
    // The session closed its end: the client reads EOF.
    assert.equal(await client.read(new Uint8Array(1)), null);
  } finally {
    deadlines.stopIfIdle(); // at once, not a tick after the test
    await reset();
  }
  assert.equal(records.length, 1);
  const { outcome, error, protocol } = records[0]!.properties;
  assert.deepEqual([outcome, error, protocol], [
    "error",
    "TypeError: something nobody planned for",
    "test",
  ]);
});

/**
 * A session whose dial has succeeded but which waits once more before it
 * relays (with `early` bytes, if given), as a forwarder waits up to 250 ms to
 * learn whether its dial came back to its own listener; or while the test
 * has the target answer and reset.
 */
class WaitsAfterDialSession extends ProxySession {
  readonly dialled = Promise.withResolvers<Deno.TcpConn>();
  readonly goOn = Promise.withResolvers<void>();
  readonly #targetPort: number;
  readonly #early: Uint8Array;

  constructor(
    client: Deno.TcpConn,
    context: SessionContext,
    targetPort: number,
    early = NO_EARLY_BYTES,
  ) {
    super(client, context, "connect");
    this.#targetPort = targetPort;
    this.#early = early;
  }

  protected async negotiate(): Promise<Relaying | null> {
    this.protocol = "test";
    const target = await this.dialTarget({
      type: "ipv4",
      host: "127.0.0.1",
      port: this.#targetPort,
    });
    this.dialled.resolve(target);
    await this.goOn.promise;
    return { target, early: this.#early };
  }

  protected keepEarlyBytes(): boolean {
    throw new Error("the dial was meant to be quick: the client is not read meanwhile");
  }

  protected takeEarlyBytes(): Uint8Array {
    return this.#early;
  }
}

Deno.test("shutdown after the dial but before the relay ends the session, not just the finished dial", async () => {
  const records = await captureSessionLines();
  const deadlines = new Deadlines(100);
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using targets = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  try {
    const session = new WaitsAfterDialSession(
      await listener.accept(),
      contextWith(deadlines),
      targets.addr.port,
    );
    const running = session.run();
    using target = await targets.accept();
    await session.dialled.promise;
    session.abort("shutdown"); // what the server does to every session at the end of the grace
    session.goOn.resolve();
    await client.write(new TextEncoder().encode("after shutdown"));
    // Nothing is relayed: both ends read EOF.
    assert.equal(await target.read(new Uint8Array(64)), null);
    assert.equal(await client.read(new Uint8Array(1)), null);
    await running;
  } finally {
    deadlines.stopIfIdle(); // at once, not a tick after the test
    await reset();
  }
  assert.equal(records.length, 1);
  assert.equal(records[0]!.properties.outcome, "shutdown");
});

// Early bytes were written before the relay began, and that write's failure
// aborted the session: the client got neither the banner nor a FIN. And
// shutdown during the wait that follows a target's failure was logged
// `shutdown`, where that wait running out is logged as the target's error.
for (const ending of ["the client closes", "shutdown comes first"] as const) {
  Deno.test(`early bytes that meet a target already reset still leave the client what the target sent; ${ending}`, async () => {
    const records = await captureSessionLines();
    const deadlines = new Deadlines(100);
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    using targets = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    const encoder = new TextEncoder();
    const banner = encoder.encode("220 banner, then gone\r\n");
    try {
      const session = new WaitsAfterDialSession(
        await listener.accept(),
        contextWith(deadlines),
        targets.addr.port,
        encoder.encode("sent with the request"),
      );
      const running = session.run();
      const target = await targets.accept();
      const ferrySide = await session.dialled.promise;
      // The target answers, then closes with input unread: its kernel resets.
      await ferrySide.write(new Uint8Array([1]));
      await target.write(banner);
      target.close();
      await new Promise((resolve) => setTimeout(resolve, 200)); // the reset reaches ferry's socket
      session.goOn.resolve();
      const received: number[] = [];
      const chunk = new Uint8Array(256);
      for (let n; (n = await client.read(chunk)) !== null;) received.push(...chunk.subarray(0, n));
      assert.equal(new TextDecoder().decode(new Uint8Array(received)), "220 banner, then gone\r\n");
      if (ending === "shutdown comes first") session.abort("shutdown");
      else client.close(); // ends the session's wait for the client
      await running;
    } finally {
      deadlines.stopIfIdle();
      await reset();
    }
    assert.equal(records.length, 1);
    assert.equal(records[0]!.properties.down, banner.length);
    assert.equal(records[0]!.properties.outcome, "reset");
  });
}

/** Reads exactly `n` bytes from `conn`, or fails at EOF. */
async function readExactly(conn: Deno.Conn, n: number): Promise<string> {
  const bytes = new Uint8Array(n);
  for (let got = 0; got < n;) {
    const read = await conn.read(bytes.subarray(got));
    if (read === null) throw new Error(`EOF after ${got} of ${n} bytes`);
    got += read;
  }
  return new TextDecoder().decode(bytes);
}

Deno.test("a forwarded client's bytes sent during a slow dial that failed go to the pooled connection taken next", async () => {
  // The first upstream drops SYNs: its dial lasts until the connect timeout,
  // and the client is read meanwhile. The second has a pooled connection.
  await using blackHole = await fullQueueListeners(["127.0.0.1"]);
  const records = await captureSessionLines();
  const deadlines = new Deadlines(100);
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using targets = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const pooled = await Deno.connect({ hostname: "127.0.0.1", port: targets.addr.port });
  using target = await targets.accept();
  let handedOut = false;
  const slow = {
    name: "slow",
    standing: "up",
    idle: 0,
    address: { hostname: "127.0.0.1", port: blackHole.port },
    take: () => null,
    dialForClient: (dial: (answers?: AnswerCheck) => Promise<Deno.TcpConn>) => dial(),
  };
  const ready = {
    name: "ready",
    standing: "up",
    idle: 0, // so that the slow one, first in turn, is tried first
    take: () => handedOut ? null : (handedOut = true, pooled),
  };
  const encoder = new TextEncoder();
  try {
    const session = new ForwardSession(
      await listener.accept(),
      { ...contextWith(deadlines), connectTimeoutMs: 1000 },
      new UpstreamSet([slow, ready] as unknown as Upstream[]),
    );
    const running = session.run();
    await new Promise((resolve) => setTimeout(resolve, 600)); // the reading has started
    await client.write(encoder.encode("meanwhile;"));
    assert.equal(await readExactly(target, 10), "meanwhile;");
    await client.write(encoder.encode("after"));
    assert.equal(await readExactly(target, 5), "after");
    await client.closeWrite();
    assert.equal(await target.read(new Uint8Array(1)), null);
    target.close();
    assert.equal(await client.read(new Uint8Array(1)), null);
    await running;
  } finally {
    deadlines.stopIfIdle(); // at once, not a tick after the test
    await reset();
  }
  assert.equal(records.length, 1);
  const { outcome, up, pooled: wasPooled, target: upstream } = records[0]!.properties;
  assert.deepEqual([outcome, up, wasPooled, upstream], ["ok", 15, true, "ready"]);
});
