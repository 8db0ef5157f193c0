/**
 * ProxySession in process, over a real loopback connection: what its log
 * line says when a session fails in a way no outcome name covers.
 */
import assert from "node:assert/strict";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import { Deadlines } from "../src/deadlines.ts";
import { Metrics } from "../src/metrics.ts";
import { ProxySession, type Relaying } from "../src/proxy_session.ts";

/** A session whose negotiation fails with an error ferry has no name for. */
class FailingSession extends ProxySession {
  protected negotiate(): Promise<Relaying | null> {
    this.protocol = "test";
    return Promise.reject(new TypeError("something nobody planned for"));
  }
}

Deno.test("an unexpected failure is logged as outcome error, with what the error said", async () => {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { memory: (record) => records.push(record) },
    loggers: [
      { category: ["ferry", "session"], lowestLevel: "info", sinks: ["memory"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["memory"] },
    ],
  });
  // Its timer stops by itself once the session is no longer watched.
  const deadlines = new Deadlines(100);
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  try {
    const session = new FailingSession(await listener.accept(), {
      listen: "127.0.0.1:1080",
      deadlines,
      metrics: new Metrics(),
      handshakeTimeoutMs: 5000,
      connectTimeoutMs: 5000,
      idleTimeoutMs: 5000,
      logSessions: true,
      sourceFor: () => null,
    }, "handshake");
    await session.run();
    // The session closed its end: the client reads EOF.
    assert.equal(await client.read(new Uint8Array(1)), null);
  } finally {
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
