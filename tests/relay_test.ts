/**
 * Unit tests of the byte relay over real loopback sockets. Each test builds
 * two connected pairs — the client's pair and the target's — and relays
 * between the proxy-side ends, as a session does:
 *
 *   clientApp ⇄ clientEnd ═relay═ targetEnd ⇄ targetApp
 */
import assert from "node:assert/strict";
import { GrownBuffers } from "../src/grown_buffers.ts";
import {
  relay,
  type RelayEnd,
  type RelayOptions,
  type RelayTotals,
  writeAll,
} from "../src/relay.ts";
import { waitUntil } from "./_helpers/forward_support.ts";
import { deadline } from "./_helpers/socks_client.ts";

const WAIT_MS = 20_000;

/** Two connected ends of one loopback TCP connection: [connecting end, accepted end]. */
async function socketPair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const [connected, accepted] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  return [connected, accepted];
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/** Both pairs, plus a controller whose abort closes the relay's ends (as Session does). */
async function setup() {
  const [clientApp, clientEnd] = await socketPair();
  const [targetEnd, targetApp] = await socketPair();
  const controller = new AbortController();
  controller.signal.addEventListener("abort", () => {
    closeQuietly(clientEnd);
    closeQuietly(targetEnd);
  }, { once: true });
  let activity = 0;
  const fixture = {
    clientApp,
    clientEnd,
    targetEnd,
    targetApp,
    controller,
    get activity() {
      return activity;
    },
    run(options: Partial<RelayOptions> = {}): Promise<RelayTotals> {
      return relay(clientEnd, targetEnd, {
        controller,
        onActivity: () => activity++,
        ...options,
      });
    },
    [Symbol.dispose]() {
      for (const conn of [clientApp, clientEnd, targetEnd, targetApp]) closeQuietly(conn);
    },
  };
  return fixture;
}

/** Awaits `promise`, failing (not hanging) after `ms`; `onTimeout` should unblock it. */
const within = <T>(promise: Promise<T>, what: string, onTimeout?: () => void, ms = WAIT_MS) =>
  deadline(promise, ms, what, onTimeout);

/** Random bytes (crypto.getRandomValues takes at most 64 KiB a call). */
function randomBytes(length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let at = 0; at < length; at += 65536) {
    crypto.getRandomValues(out.subarray(at, Math.min(length, at + 65536)));
  }
  return out;
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Reads until EOF; returns everything read. */
async function readToEnd(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let total = 0;
  const chunk = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(chunk);
    if (n === null) break;
    parts.push(chunk.slice(0, n));
    total += n;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Sends `bytes` then half-closes. */
async function sendAndFinish(conn: Deno.TcpConn, bytes: Uint8Array): Promise<void> {
  await writeAll(conn, bytes);
  await conn.closeWrite();
}

/** Reads until EOF or a reset; says which. */
async function readEnding(conn: Deno.Conn): Promise<"eof" | "reset"> {
  const chunk = new Uint8Array(64 * 1024);
  try {
    while ((await conn.read(chunk)) !== null) { /* discard */ }
    return "eof";
  } catch (error) {
    if (
      error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BrokenPipe ||
      error instanceof Deno.errors.ConnectionAborted
    ) return "reset";
    throw error;
  }
}

Deno.test("relay() carries multi-megabyte payloads both ways at once, intact", async () => {
  using f = await setup();
  const up = randomBytes(4 * 1024 * 1024 + 17);
  const down = randomBytes(3 * 1024 * 1024 + 5);
  const relayed = f.run();
  const [receivedUp, receivedDown] = await within(
    Promise.all([
      readToEnd(f.targetApp),
      readToEnd(f.clientApp),
      sendAndFinish(f.clientApp, up),
      sendAndFinish(f.targetApp, down),
    ]),
    "the transfer",
    () => f[Symbol.dispose](),
  );
  const totals = await within(relayed, "relay to end", () => f.controller.abort());
  assert.equal(receivedUp.length, up.length);
  assert.equal(receivedDown.length, down.length);
  assert.equal(await sha256(receivedUp), await sha256(up));
  assert.equal(await sha256(receivedDown), await sha256(down));
  assert.deepEqual(totals, { up: up.length, down: down.length });
  assert.equal(f.controller.signal.aborted, false, "a clean end must not abort");
});

Deno.test("relay() keeps the other direction open after the client half-closes", async () => {
  using f = await setup();
  const request = randomBytes(100_000);
  const response = randomBytes(1024 * 1024);
  let relayEnded = false;
  const relayed = f.run().finally(() => relayEnded = true);

  await within(sendAndFinish(f.clientApp, request), "client send", () => f[Symbol.dispose]());
  const got = await within(readToEnd(f.targetApp), "target EOF", () => f[Symbol.dispose]());
  assert.equal(await sha256(got), await sha256(request));
  assert.equal(relayEnded, false, "relay ended while the target could still answer");

  const [received] = await within(
    Promise.all([readToEnd(f.clientApp), sendAndFinish(f.targetApp, response)]),
    "response after the half-close",
    () => f[Symbol.dispose](),
  );
  assert.equal(received.length, response.length);
  assert.equal(await sha256(received), await sha256(response));
  const totals = await within(relayed, "relay to end", () => f.controller.abort());
  assert.deepEqual(totals, { up: request.length, down: response.length });
  assert.equal(f.controller.signal.aborted, false);
});

Deno.test("relay() keeps the other direction open after the target half-closes", async () => {
  using f = await setup();
  const greeting = randomBytes(70_000);
  const upload = randomBytes(1024 * 1024);
  let relayEnded = false;
  const relayed = f.run().finally(() => relayEnded = true);

  await within(sendAndFinish(f.targetApp, greeting), "target send", () => f[Symbol.dispose]());
  const got = await within(readToEnd(f.clientApp), "client EOF", () => f[Symbol.dispose]());
  assert.equal(await sha256(got), await sha256(greeting));
  assert.equal(relayEnded, false, "relay ended while the client could still send");

  const [received] = await within(
    Promise.all([readToEnd(f.targetApp), sendAndFinish(f.clientApp, upload)]),
    "upload after the half-close",
    () => f[Symbol.dispose](),
  );
  assert.equal(received.length, upload.length);
  assert.equal(await sha256(received), await sha256(upload));
  const totals = await within(relayed, "relay to end", () => f.controller.abort());
  assert.deepEqual(totals, { up: upload.length, down: greeting.length });
  assert.equal(f.controller.signal.aborted, false);
});

Deno.test("relay() ends with an aborted controller when the owner aborts mid-stream", async () => {
  using f = await setup();
  const relayed = f.run();
  // Some traffic first, so the relay is in its loops.
  await writeAll(f.clientApp, new TextEncoder().encode("ping"));
  const buffer = new Uint8Array(16);
  const n = await within(f.targetApp.read(buffer), "first bytes", () => f[Symbol.dispose]());
  assert.equal(n, 4);

  const reason = new Error("shutdown");
  f.controller.abort(reason); // closes both relay ends, like Session
  const totals = await within(relayed, "relay to end after abort", () => f[Symbol.dispose]());
  assert.equal(f.controller.signal.aborted, true);
  assert.equal(f.controller.signal.reason, reason, "the relay must not replace the reason");
  assert.deepEqual(totals, { up: 4, down: 0 });
  // Both applications see their connection end.
  const [clientEnding, targetEnding] = await within(
    Promise.all([readEnding(f.clientApp), readEnding(f.targetApp)]),
    "applications to see the end",
    () => f[Symbol.dispose](),
  );
  assert.ok(["eof", "reset"].includes(clientEnding));
  assert.ok(["eof", "reset"].includes(targetEnding));
});

Deno.test("relay() aborts the controller when one of its sockets is closed under it", async () => {
  using f = await setup();
  const relayed = f.run();
  await writeAll(f.targetApp, Uint8Array.of(1, 2, 3));
  const buffer = new Uint8Array(8);
  assert.equal(
    await within(f.clientApp.read(buffer), "first bytes", () => f[Symbol.dispose]()),
    3,
  );
  f.clientEnd.close(); // abruptly, behind the relay's back
  await within(relayed, "relay to end", () => f[Symbol.dispose]());
  assert.equal(f.controller.signal.aborted, true);
  assert.ok(f.controller.signal.reason instanceof Error, String(f.controller.signal.reason));
});

Deno.test("relay() aborts the controller when the target resets", async () => {
  using f = await setup();
  const relayed = f.run();
  // The target goes away entirely; its FIN reaches the client as EOF first.
  f.targetApp.close();
  assert.equal(
    await within(readEnding(f.clientApp), "client EOF", () => f[Symbol.dispose]()),
    "eof",
  );
  assert.equal(f.controller.signal.aborted, false, "a FIN alone is a clean half-close");
  // The client keeps sending; the closed target answers with RST, and a
  // later write to it fails. Bounded: the relay must notice well before this.
  const chunk = new Uint8Array(16 * 1024);
  for (let i = 0; i < 4096 && !f.controller.signal.aborted; i++) {
    try {
      await writeAll(f.clientApp, chunk);
    } catch {
      break; // the owner closed clientEnd after the abort
    }
  }
  await within(relayed, "relay to end", () => f[Symbol.dispose]());
  assert.equal(f.controller.signal.aborted, true, "writing to a reset target must abort");
  const reason = f.controller.signal.reason;
  assert.ok(
    reason instanceof Deno.errors.BrokenPipe || reason instanceof Deno.errors.ConnectionReset,
    `abort reason: ${reason}`,
  );
});

Deno.test("relay() with onTargetFailure: a target that resets mid-upload leaves the client its answer, then a FIN", async () => {
  using f = await setup();
  const failures: unknown[] = [];
  const relayed = f.run({ onTargetFailure: (error) => failures.push(error) });
  // The client uploads and reads nothing yet. The target reads a little,
  // answers in full, then closes with the upload unread, which makes its
  // kernel reset the connection (as an HTTP server refusing a large body does).
  const uploading = (async () => {
    const chunk = new Uint8Array(64 * 1024);
    let sent = 0;
    try {
      while (sent < 64 * 1024 * 1024) sent += await f.clientApp.write(chunk);
    } catch {
      // refused once the relay has stopped
    }
    return sent;
  })();
  const answer = randomBytes(64 * 1024); // fits the sockets' buffers while the client reads nothing
  await f.targetApp.read(new Uint8Array(100));
  await writeAll(f.targetApp, answer);
  await new Promise((resolve) => setTimeout(resolve, 300));
  f.targetApp.close(); // unread upload: RST
  // The relay drops the upload now (no back-pressure) while the answer waits.
  await new Promise((resolve) => setTimeout(resolve, 300));
  const received = await within(readToEnd(f.clientApp), "client EOF", () => f[Symbol.dispose]());
  assert.equal(
    await sha256(received),
    await sha256(answer),
    "the whole answer, then EOF (no reset)",
  );
  assert.equal(f.controller.signal.aborted, false, "ended gently, not aborted");
  assert.equal(failures.length, 1);
  f.clientApp.close(); // the client closes: the relay is done
  const totals = await within(relayed, "relay to end", () => f.controller.abort());
  await uploading;
  assert.equal(totals.down, answer.length);
});

Deno.test("relay() with onTargetFailure: the owner's abort still ends a client that never closes", async () => {
  using f = await setup();
  let failed = false;
  const relayed = f.run({ onTargetFailure: () => failed = true });
  await writeAll(f.clientApp, new Uint8Array(100));
  await f.targetApp.read(new Uint8Array(100));
  f.targetApp.close();
  // The target read all it was sent, so its close is a FIN, passed on to the client.
  assert.equal(
    await within(readEnding(f.clientApp), "client EOF", () => f[Symbol.dispose]()),
    "eof",
  );
  // The client sends on; writing that to the closed target fails.
  for (let i = 0; i < 100 && !failed; i++) {
    await writeAll(f.clientApp, new Uint8Array(1000));
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.ok(failed, "onTargetFailure called");
  assert.equal(f.controller.signal.aborted, false);
  // The client neither sends more nor closes: the relay waits, the owner ends it.
  f.controller.abort(new Error("linger over"));
  await within(relayed, "relay to end after abort", () => f[Symbol.dispose]());
});

Deno.test("relay() calls onActivity for every read that carried bytes", async () => {
  using f = await setup();
  const payload = randomBytes(200_000);
  const maxBufferSize = 8192;
  const relayed = f.run({ initialBufferSize: 1024, maxBufferSize });
  assert.equal(f.activity, 0);
  await within(
    Promise.all([readToEnd(f.targetApp), sendAndFinish(f.clientApp, payload)]),
    "the transfer",
    () => f[Symbol.dispose](),
  );
  await f.targetApp.closeWrite();
  await within(readToEnd(f.clientApp), "client EOF", () => f[Symbol.dispose]());
  const totals = await within(relayed, "relay to end", () => f.controller.abort());
  assert.deepEqual(totals, { up: payload.length, down: 0 });
  // No read carries more than the largest buffer, and EOF reads are not activity.
  assert.ok(f.activity >= Math.ceil(payload.length / maxBufferSize), `activity ${f.activity}`);
  assert.ok(f.activity <= payload.length, `activity ${f.activity}`);
});

/** A fake client that only uploads, its reads answered by `read`: the target sends it nothing. */
function uploadingClient(read: RelayEnd["read"]): RelayEnd {
  return {
    read,
    write: () => Promise.reject(new Error("the target sends nothing")),
    closeWrite: () => Promise.resolve(),
  };
}

/** A fake target that takes whole every write to it; it sends what `read` gives, by default nothing. */
function takingTarget(read: RelayEnd["read"] = () => Promise.resolve(null)): RelayEnd {
  return {
    read,
    write: (bytes: Uint8Array) => Promise.resolve(bytes.length),
    closeWrite: () => Promise.resolve(),
  };
}

Deno.test("relay() counts every write that moved bytes as activity: a slow reader is not idle", async () => {
  // The client sends 10 bytes (less than the 16-byte buffer: written before
  // the next read), 16 (a full buffer: its write is left in flight while the
  // next read fills a 64-byte buffer) and 40. The target end takes at most 3
  // bytes a write, like a socket whose reader is slow.
  const chunks = [10, 16, 40].map((length, seed) =>
    Uint8Array.from({ length }, (_, i) => (seed * 64 + i) & 0xff)
  );
  let activity = 0;
  const activityAtWrite: number[] = [];
  const written: number[] = [];
  const client = uploadingClient((buffer: Uint8Array): Promise<number | null> => {
    const chunk = chunks.shift();
    if (!chunk) return Promise.resolve(null);
    assert.ok(chunk.length <= buffer.length, `read of ${chunk.length} into ${buffer.length}`);
    buffer.set(chunk);
    return Promise.resolve(chunk.length);
  });
  const target: RelayEnd = {
    read: () => Promise.resolve(null),
    write(bytes: Uint8Array): Promise<number> {
      activityAtWrite.push(activity);
      const n = Math.min(3, bytes.length);
      written.push(...bytes.subarray(0, n));
      return Promise.resolve(n);
    },
    closeWrite: () => Promise.resolve(),
  };
  const expected = [10, 16, 40].flatMap((length, seed) =>
    Array.from({ length }, (_, i) => (seed * 64 + i) & 0xff)
  );
  const controller = new AbortController();
  const totals = await relay(client, target, {
    controller,
    onActivity: () => activity++,
    initialBufferSize: 16,
  });
  assert.equal(controller.signal.aborted, false);
  assert.deepEqual(totals, { up: 66, down: 0 });
  assert.deepEqual(written, expected);
  // Before every write call, something new happened: a read or the last
  // write's progress. The idle deadline moves on with each.
  assert.ok(activityAtWrite.length >= 22, `${activityAtWrite.length} writes`);
  for (let i = 1; i < activityAtWrite.length; i++) {
    assert.ok(activityAtWrite[i]! > activityAtWrite[i - 1]!, `no activity before write ${i}`);
  }
});

Deno.test("relay() with onTargetFailure: a client FIN the gone target cannot take still leaves the client the whole answer", async () => {
  // The client half-closes at once; passing its FIN on fails, as shutdown()
  // does on a target that has reset (ENOTCONN). Meanwhile the answer the
  // target sent before is still being written to the client, slowly: the
  // relay must not end (and close both sockets) until that write is done.
  const controller = new AbortController();
  const toClient = Promise.withResolvers<number>();
  const written: number[] = [];
  const client: RelayEnd = {
    read: () => Promise.resolve(null),
    write: (bytes: Uint8Array) => {
      written.push(bytes.length);
      return toClient.promise;
    },
    closeWrite: () => Promise.resolve(),
  };
  let targetReads = 0;
  const target: RelayEnd = {
    read: (buffer: Uint8Array) => {
      if (targetReads++ > 0) return Promise.resolve(null);
      buffer.fill(9, 0, 10);
      return Promise.resolve(10);
    },
    write: () => Promise.reject(new Error("no upload expected")),
    closeWrite: () => Promise.reject(new Deno.errors.NotConnected("shutdown: not connected")),
  };
  let ends = 0;
  let failures = 0;
  const relayed = relay(client, target, {
    controller,
    onActivity: () => {},
    onTargetFailure: () => failures++,
    onEnd: () => ends++,
  });
  await waitUntil(() => written.length > 0 && failures > 0, "the write and the target's failure");
  assert.equal(ends, 0, "ended (closing both sockets) while the answer was still being written");
  toClient.resolve(10);
  assert.deepEqual(await relayed, { up: 0, down: 10 });
  assert.equal(ends, 1);
  assert.equal(controller.signal.aborted, false);
});

/** A promise maker for a fake's pending read or write: each rejects with the abort's reason. */
function untilAbortedBy(signal: AbortSignal): () => Promise<never> {
  return () =>
    new Promise<never>((_, reject) =>
      signal.addEventListener("abort", () => reject(signal.reason))
    );
}

/**
 * Waits up to 5 s for the relay to abort by itself; then aborts it, so that
 * the test ends either way, and waits for it to end. Returns whether it had.
 */
async function abortedByItself(
  controller: AbortController,
  relayed: Promise<unknown>,
): Promise<boolean> {
  await waitUntil(() => controller.signal.aborted, "the abort", 5000).catch(() => {});
  const aborted = controller.signal.aborted;
  controller.abort(new Error("the test gave up"));
  await relayed;
  return aborted;
}

/**
 * A fake client that fills its first read buffer with `fill` and sends no
 * more: its next read, and any write to it, wait for the abort.
 */
function oneFullBufferThenWait(untilAborted: () => Promise<never>, fill: number): RelayEnd {
  let reads = 0;
  return {
    read(buffer: Uint8Array): Promise<number | null> {
      if (reads++ > 0) return untilAborted();
      buffer.fill(fill);
      return Promise.resolve(buffer.length);
    },
    write: untilAborted,
    closeWrite: () => Promise.resolve(),
  };
}

Deno.test("relay() counts only bytes written: an aborted write's unsent rest is not carried", async () => {
  // The client sends one full 16-byte buffer (its write is left in flight)
  // and then nothing; the target takes 5 bytes and then stalls, like a reader
  // that stopped. Aborting (idle timeout) must leave the count at 5, what the
  // far end can ever receive, not the 16 read.
  const controller = new AbortController();
  const untilAborted = untilAbortedBy(controller.signal);
  const client = oneFullBufferThenWait(untilAborted, 7);
  let writes = 0;
  const target: RelayEnd = {
    read: untilAborted,
    write: (bytes: Uint8Array) =>
      writes++ === 0 ? Promise.resolve(Math.min(5, bytes.length)) : untilAborted(),
    closeWrite: () => Promise.resolve(),
  };
  const relayed = relay(client, target, {
    controller,
    onActivity: () => {},
    initialBufferSize: 16,
  });
  await waitUntil(() => writes >= 2, "two writes");
  controller.abort(new Error("idle"));
  assert.deepEqual(await relayed, { up: 5, down: 0 });
});

Deno.test("relay() grows its buffers only within the budget, and gives the budget back at the end", async () => {
  // The client sends full buffers without end; the target takes everything.
  // Without a budget the reads grow 16 → 64 → 256 → 1,024 bytes (max 1 KiB here).
  const grown = new GrownBuffers(64 + 256);
  const sizes: number[] = [];
  let reads = 0;
  const client = uploadingClient((buffer: Uint8Array): Promise<number | null> => {
    sizes.push(buffer.length);
    if (++reads > 12) return Promise.resolve(null);
    return Promise.resolve(buffer.length);
  });
  let written = 0;
  const target: RelayEnd = {
    read: () => Promise.resolve(null),
    write(bytes: Uint8Array): Promise<number> {
      written += bytes.length;
      assert.ok(grown.inUse <= grown.limit, `budget ${grown.inUse} over ${grown.limit}`);
      return Promise.resolve(bytes.length);
    },
    closeWrite: () => Promise.resolve(),
  };
  const controller = new AbortController();
  const totals = await relay(client, target, {
    controller,
    onActivity: () => {},
    initialBufferSize: 16,
    maxBufferSize: 1024,
    grown,
  });
  assert.equal(controller.signal.aborted, false);
  assert.ok(Math.max(...sizes) <= 256, `grew to ${Math.max(...sizes)} with the budget spent`);
  assert.ok(sizes.includes(256), `sizes ${sizes}`);
  assert.equal(totals.up, written, "every byte read was written");
  assert.equal(grown.inUse, 0, "given back when the relay ended");
  assert.ok(grown.inUse + grown.kept <= grown.limit, `kept ${grown.kept}`);
});

Deno.test("relay() reuses grown buffers across waves of stalled readers, and they carry bytes intact", async () => {
  // Each wave: the target streams, the client reads nothing, so the relay's
  // buffers grow and a write stays in flight; then the session is aborted
  // (a reset, an idle timeout). Dropped, such buffers piled up as garbage
  // beyond the budget; kept, every wave reuses the last one's.
  // Three sessions would grow to 1.5 MiB (two 256 KiB buffers a direction): the budget runs out.
  const grown = new GrownBuffers(1048576);
  const options = { grown, initialBufferSize: 1024, maxBufferSize: 256 * 1024 };
  const chunk = randomBytes(1048576);
  for (let wave = 0; wave < 4; wave++) {
    const sessions = await Promise.all(Array.from({ length: 3 }, () => setup()));
    const runs = sessions.map((f) => f.run(options));
    const streams = sessions.map(async (f) => {
      try {
        for (;;) await writeAll(f.targetApp, chunk);
      } catch {
        // the relay's end went away
      }
    });
    // Until the budget is spent: the relays have grown as far as they may.
    const until = performance.now() + WAIT_MS;
    while (grown.inUse + 256 * 1024 <= grown.limit && performance.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    for (const f of sessions) f.controller.abort(new Error("stalled"));
    await within(Promise.all(runs), "aborted relays", () => {});
    for (const f of sessions) f[Symbol.dispose]();
    await within(Promise.all(streams), "target streams", () => {});
    // Writes in flight settle once their sockets are closed.
    while (grown.inUse > 0 && performance.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.equal(grown.inUse, 0, `wave ${wave}: every buffer given back`);
    assert.ok(grown.allocated <= grown.limit, `wave ${wave}: ${grown.allocated} bytes allocated`);
  }
  // The kept buffers still hold the last waves' bytes: a transfer through
  // them must carry its own, byte for byte.
  const kept = grown.kept;
  using f = await setup();
  const payload = randomBytes(3 * 1048576);
  const relayed = f.run(options);
  const [, received] = await Promise.all([
    sendAndFinish(f.targetApp, payload),
    readToEnd(f.clientApp),
    f.clientApp.closeWrite(),
  ]);
  await within(relayed, "relay", () => f.controller.abort());
  assert.equal(await sha256(received), await sha256(payload));
  assert.ok(grown.kept > 0 && grown.allocated <= grown.limit, `kept ${kept} → ${grown.kept}`);
});

Deno.test("relay() does not call onActivity when nothing but EOF arrives", async () => {
  using f = await setup();
  const relayed = f.run();
  await f.clientApp.closeWrite();
  await f.targetApp.closeWrite();
  const totals = await within(relayed, "relay to end", () => f.controller.abort());
  assert.deepEqual(totals, { up: 0, down: 0 });
  assert.equal(f.activity, 0);
  assert.equal(f.controller.signal.aborted, false);
  assert.equal(await within(readEnding(f.clientApp), "client EOF", () => {}), "eof");
  assert.equal(await within(readEnding(f.targetApp), "target EOF", () => {}), "eof");
});

Deno.test("relay() buffer growth does not corrupt data", async (t) => {
  const cases: [initial: number, max: number, length: number][] = [
    [1, 7, 50_000], // 1 → 4 → 7: odd sizes, never a power of two at the end
    [3, 1000, 300_000],
    [16, 1024 * 1024, 3 * 1024 * 1024 + 1],
    [2048, 256 * 1024, 2 * 1024 * 1024 - 1], // the defaults
  ];
  for (const [initialBufferSize, maxBufferSize, length] of cases) {
    await t.step(
      `initial ${initialBufferSize}, max ${maxBufferSize}, ${length} bytes`,
      async () => {
        using f = await setup();
        const up = randomBytes(length);
        const down = randomBytes(Math.floor(length / 3));
        const relayed = f.run({ initialBufferSize, maxBufferSize });
        const [receivedUp, receivedDown] = await within(
          Promise.all([
            readToEnd(f.targetApp),
            readToEnd(f.clientApp),
            sendAndFinish(f.clientApp, up),
            sendAndFinish(f.targetApp, down),
          ]),
          "the transfer",
          () => f[Symbol.dispose](),
        );
        const totals = await within(relayed, "relay to end", () => f.controller.abort());
        assert.deepEqual(receivedUp, up);
        assert.deepEqual(receivedDown, down);
        assert.deepEqual(totals, { up: up.length, down: down.length });
        assert.equal(f.controller.signal.aborted, false);
      },
    );
  }
});

Deno.test("writeAll() keeps writing until every byte is taken", async () => {
  const written: number[] = [];
  const calls: number[] = [];
  // A connection that accepts at most 3 bytes a call.
  const conn = {
    write(bytes: Uint8Array): Promise<number> {
      const n = Math.min(3, bytes.length);
      calls.push(bytes.length);
      written.push(...bytes.subarray(0, n));
      return Promise.resolve(n);
    },
  } as unknown as Deno.Conn;
  const bytes = Uint8Array.from({ length: 10 }, (_, i) => i + 1);
  let progress = 0;
  await writeAll(conn, bytes, () => progress++);
  assert.deepEqual(written, [...bytes]);
  assert.deepEqual(calls, [10, 7, 4, 1]);
  assert.equal(progress, calls.length, "onProgress after every write");

  calls.length = 0;
  await writeAll(conn, new Uint8Array(0));
  assert.deepEqual(calls, [], "nothing to write: no write call");
});

Deno.test("relay() reads into the first buffers it is given, one per direction", async () => {
  using f = await setup();
  const shared = new ArrayBuffer(64);
  const up = new Uint8Array(shared, 0, 32);
  const down = new Uint8Array(shared, 32, 32);
  const relayed = f.run({ initialBuffers: [up, down] });
  const request = new TextEncoder().encode("ping");
  const response = new TextEncoder().encode("pong!");
  await sendAndFinish(f.clientApp, request);
  assert.deepEqual(await readToEnd(f.targetApp), request);
  await sendAndFinish(f.targetApp, response);
  assert.deepEqual(await readToEnd(f.clientApp), response);
  const totals = await within(relayed, "relay", () => f.controller.abort());
  assert.deepEqual(totals, { up: request.length, down: response.length });
  // Each direction read its bytes into its own half of the caller's buffer.
  assert.deepEqual(up.subarray(0, request.length), request);
  assert.deepEqual(down.subarray(0, response.length), response);
});

/**
 * A fake peer whose reads wait for the test to answer them, one at a time,
 * as a peer sending at its own pace: `send(n)` answers the pending read with
 * `n` bytes, `close()` with EOF, `reset()` with a reset. Its writes are taken
 * whole and recorded, its FINs counted.
 */
function pacedPeer() {
  let pending: {
    buffer: Uint8Array;
    resolve: (n: number | null) => void;
    reject: (error: unknown) => void;
  } | null = null;
  const take = () => {
    assert.ok(pending, "the relay is not reading from this peer");
    const read = pending;
    pending = null;
    return read;
  };
  const peer = {
    fins: 0,
    received: [] as number[],
    /** Whether the relay is waiting on a read from this peer. */
    get reading(): boolean {
      return pending !== null;
    },
    end: {
      read: (buffer: Uint8Array) =>
        new Promise<number | null>((resolve, reject) => pending = { buffer, resolve, reject }),
      write(bytes: Uint8Array): Promise<number> {
        peer.received.push(...bytes);
        return Promise.resolve(bytes.length);
      },
      closeWrite(): Promise<void> {
        peer.fins++;
        return Promise.resolve();
      },
    } satisfies RelayEnd,
    send(n: number): void {
      const read = take();
      read.buffer.fill(1, 0, n);
      read.resolve(n);
    },
    close: () => take().resolve(null),
    reset: () => take().reject(new Deno.errors.ConnectionReset("connection reset by peer")),
  };
  return peer;
}

/** A fake target that sends `answer` bytes of 9, then resets; writing to it fails as to a reset socket. */
function resettingTarget(answer: number): RelayEnd {
  let reads = 0;
  return {
    read(buffer: Uint8Array): Promise<number | null> {
      if (reads++ > 0) return Promise.reject(new Deno.errors.ConnectionReset("reset by peer"));
      buffer.fill(9, 0, answer);
      return Promise.resolve(answer);
    },
    write: () => Promise.reject(new Deno.errors.BrokenPipe("broken pipe")),
    closeWrite: () => Promise.reject(new Deno.errors.NotConnected("not connected")),
  };
}

Deno.test("relay() with onTargetFailure: after a target's reset the client gets the answer and a FIN, its upload is dropped until it closes, and only then the relay ends", async () => {
  const client = pacedPeer();
  const controller = new AbortController();
  let [failures, ends, activity] = [0, 0, 0];
  const relayed = relay(client.end, resettingTarget(10), {
    controller,
    onActivity: () => activity++,
    onTargetFailure: () => failures++,
    onEnd: () => ends++,
  });
  // Down: the answer, then the reset, passed on as a FIN. Not the end: the
  // client may still be sending.
  await waitUntil(() => client.fins + ends > 0 || controller.signal.aborted, "the client's FIN");
  assert.equal(controller.signal.aborted, false, "the target's reset aborted the relay");
  assert.deepEqual({ fins: client.fins, ends, failures }, { fins: 1, ends: 0, failures: 1 });
  assert.deepEqual(client.received, new Array(10).fill(9));
  // Up: what the client sends now fails to reach the gone target and is
  // dropped from then on, read after read: closing its socket with the upload
  // unread would send the client a reset, which discards the answer.
  for (let i = 0; i < 4; i++) {
    await waitUntil(() => client.reading || ends > 0, `read ${i} of the client's upload`);
    assert.equal(ends, 0, `ended after ${i} reads with the client's upload unread`);
    client.send(100);
  }
  await waitUntil(() => client.reading || ends > 0, "the read for the client's close");
  assert.equal(ends, 0, "ended before the client closed");
  client.close();
  assert.deepEqual(await within(relayed, "relay to end", () => controller.abort()), {
    up: 0,
    down: 10,
  });
  assert.deepEqual({ fins: client.fins, ends, failures }, { fins: 1, ends: 1, failures: 1 });
  // Only the answer's read: a dropped upload must not hold the session open.
  assert.equal(activity, 1);
  assert.equal(controller.signal.aborted, false);
});

Deno.test("relay() with onTargetFailure: a client that resets while its upload is dropped aborts the relay", async () => {
  const client = pacedPeer();
  const controller = new AbortController();
  let ends = 0;
  const relayed = relay(client.end, resettingTarget(10), {
    controller,
    onActivity: () => {},
    onTargetFailure: () => {},
    onEnd: () => ends++,
  });
  await waitUntil(() => client.reading && client.fins > 0, "the client's FIN");
  client.send(100); // fails to reach the target: dropped from now on
  await waitUntil(() => client.reading, "the next read of the client's upload");
  client.reset();
  await within(relayed, "relay to end", () => controller.abort());
  assert.ok(controller.signal.aborted, "the client's reset must abort (the owner closes both)");
  assert.ok(controller.signal.reason instanceof Deno.errors.ConnectionReset);
  assert.equal(ends, 0);
});

Deno.test("relay() with onTargetFailure: a target's reset while a full buffer is still being written to the client sends the FIN after it", async () => {
  // The target fills the 16-byte buffer (a bulk read: its write to the
  // client is left in flight), then resets.
  const toClient = Promise.withResolvers<number>();
  const written: number[] = [];
  let fins = 0;
  const client: RelayEnd = {
    read: () => Promise.resolve(null),
    write(bytes: Uint8Array): Promise<number> {
      written.push(...bytes);
      return toClient.promise;
    },
    closeWrite(): Promise<void> {
      fins++;
      return Promise.resolve();
    },
  };
  const target = resettingTarget(16);
  target.closeWrite = () => Promise.resolve(); // the client's FIN reached it before the reset
  const controller = new AbortController();
  let failures = 0;
  const relayed = relay(client, target, {
    controller,
    onActivity: () => {},
    onTargetFailure: () => failures++,
    initialBufferSize: 16,
  });
  await waitUntil(() => failures > 0 && written.length > 0, "the write and the target's reset");
  assert.equal(fins, 0, "FIN sent while the answer was still being written");
  toClient.resolve(16);
  assert.deepEqual(await within(relayed, "relay to end", () => controller.abort()), {
    up: 0,
    down: 16,
  });
  assert.equal(fins, 1);
  assert.deepEqual(written, new Array(16).fill(9));
  assert.equal(controller.signal.aborted, false);
});

Deno.test("relay() passes on a FIN only after the last full buffer's write is done", async () => {
  // The client's 16 bytes fill the buffer (their write is left in flight),
  // then it half-closes at once; the target takes its time over the write.
  let reads = 0;
  const client = uploadingClient((buffer: Uint8Array): Promise<number | null> => {
    if (reads++ > 0) return Promise.resolve(null);
    buffer.fill(5);
    return Promise.resolve(buffer.length);
  });
  const toTarget = Promise.withResolvers<number>();
  let fins = 0;
  const target: RelayEnd = {
    read: () => Promise.resolve(null),
    write: () => toTarget.promise,
    closeWrite(): Promise<void> {
      fins++;
      return Promise.resolve();
    },
  };
  const controller = new AbortController();
  const relayed = relay(client, target, {
    controller,
    onActivity: () => {},
    initialBufferSize: 16,
  });
  await waitUntil(() => reads >= 2, "the client's EOF");
  assert.equal(fins, 0, "the FIN went ahead of bytes still being written");
  toTarget.resolve(16);
  assert.deepEqual(await within(relayed, "relay to end", () => controller.abort()), {
    up: 16,
    down: 0,
  });
  assert.equal(fins, 1);
  assert.equal(controller.signal.aborted, false);
});

Deno.test("relay() with onTargetFailure: a full buffer's write failing on a gone target ends gently, not with an abort", async () => {
  // Every read fills the 16-byte buffer: each write is left in flight while
  // the next read runs. The target is gone; it had sent nothing.
  let reads = 0;
  const client = uploadingClient((buffer: Uint8Array): Promise<number | null> => {
    if (reads++ >= 3) return Promise.resolve(null);
    buffer.fill(5);
    return Promise.resolve(buffer.length);
  });
  const target: RelayEnd = {
    read: () => Promise.resolve(null),
    write: () => Promise.reject(new Deno.errors.BrokenPipe("broken pipe")),
    closeWrite: () => Promise.reject(new Deno.errors.NotConnected("not connected")),
  };
  const controller = new AbortController();
  let failures = 0;
  const totals = await within(
    relay(client, target, {
      controller,
      onActivity: () => {},
      onTargetFailure: () => failures++,
      initialBufferSize: 16,
    }),
    "relay to end",
    () => controller.abort(),
  );
  assert.equal(controller.signal.aborted, false, `aborted: ${controller.signal.reason}`);
  assert.equal(failures, 1);
  assert.equal(reads, 4, "the client's upload read to its end");
  assert.deepEqual(totals, { up: 0, down: 0 });
});

Deno.test("relay() aborts when a full buffer's write fails, even while the next read is waiting", async () => {
  // The client sends one full buffer and then nothing: only the failed write
  // can end the relay.
  const controller = new AbortController();
  const untilAborted = untilAbortedBy(controller.signal);
  const client = oneFullBufferThenWait(untilAborted, 5);
  const target: RelayEnd = {
    read: untilAborted,
    write: () => Promise.reject(new Deno.errors.ConnectionReset("reset by peer")),
    closeWrite: () => Promise.resolve(),
  };
  const relayed = relay(client, target, {
    controller,
    onActivity: () => {},
    initialBufferSize: 16,
  });
  assert.ok(
    await abortedByItself(controller, relayed),
    "the failed write left the relay waiting on the client",
  );
  assert.ok(controller.signal.reason instanceof Deno.errors.ConnectionReset);
});

Deno.test("relay() with onTargetFailure: early bytes a gone target cannot take still leave the client the target's answer and a FIN", async () => {
  const client = pacedPeer();
  const controller = new AbortController();
  let failures = 0;
  const relayed = relay(client.end, resettingTarget(10), {
    controller,
    onActivity: () => {},
    onTargetFailure: () => failures++,
    early: Uint8Array.of(1, 2, 3),
  });
  // The early bytes' write fails: the client's upload is dropped from now on.
  await waitUntil(
    () => (client.reading && client.fins > 0) || controller.signal.aborted,
    "the answer and the FIN",
  );
  assert.equal(controller.signal.aborted, false, `aborted: ${controller.signal.reason}`);
  assert.equal(failures, 1);
  assert.deepEqual(client.received, new Array(10).fill(9));
  client.close();
  assert.deepEqual(await within(relayed, "relay to end", () => controller.abort()), {
    up: 0,
    down: 10,
  });
  assert.equal(controller.signal.aborted, false);
});

Deno.test("relay() with onTargetFailure: the owner's abort is not reported as the target's failure", async () => {
  using f = await setup();
  const failures: unknown[] = [];
  const relayed = f.run({ onTargetFailure: (error) => failures.push(error) });
  await writeAll(f.clientApp, new TextEncoder().encode("ping"));
  const n = await within(
    f.targetApp.read(new Uint8Array(16)),
    "first bytes",
    () => f[Symbol.dispose](),
  );
  assert.equal(n, 4);
  // An idle timeout, say: the owner aborts and closes both of the relay's
  // sockets, which ends the pending read from the target with an error.
  f.controller.abort(new Error("idle"));
  await within(relayed, "relay to end after abort", () => f[Symbol.dispose]());
  assert.deepEqual(failures, []);
});

Deno.test("relay() carries a single early byte to the target ahead of the client's data", async () => {
  using f = await setup();
  const relayed = f.run({ early: Uint8Array.of(0x47) });
  await sendAndFinish(f.clientApp, new TextEncoder().encode("ET /"));
  const received = await within(readToEnd(f.targetApp), "target EOF", () => f[Symbol.dispose]());
  assert.equal(new TextDecoder().decode(received), "GET /");
  await f.targetApp.closeWrite();
  const totals = await within(relayed, "relay to end", () => f.controller.abort());
  assert.deepEqual(totals, { up: 5, down: 0 });
});

Deno.test("relay() with the buffer budget spent writes each full read before the next: a download to a slow reader arrives intact", async () => {
  // With nothing to grow into, a direction has one buffer: reading into it
  // again while its write waits on the slow reader would corrupt the stream.
  using f = await setup();
  // Larger than the sockets' buffers can hold: the relay's writes wait.
  const payload = randomBytes(16 * 1048576);
  const grown = new GrownBuffers(0);
  const relayed = f.run({ grown, initialBufferSize: 16384 });
  await f.clientApp.closeWrite();
  const reading = (async () => {
    const parts: Uint8Array[] = [];
    const chunk = new Uint8Array(4096);
    for (let n; (n = await f.clientApp.read(chunk)) !== null;) {
      parts.push(chunk.slice(0, n));
      // A slow reader: the relay's writes to it wait.
      if (parts.length % 16 === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    }
    return parts;
  })();
  const [parts] = await within(
    Promise.all([reading, sendAndFinish(f.targetApp, payload)]),
    "the download",
    () => f[Symbol.dispose](),
  );
  const received = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    received.set(part, at);
    at += part.length;
  }
  const totals = await within(relayed, "relay to end", () => f.controller.abort());
  assert.equal(received.length, payload.length);
  assert.equal(await sha256(received), await sha256(payload));
  assert.deepEqual(totals, { up: 0, down: payload.length });
  assert.equal(grown.allocated, 0);
});

Deno.test("relay() by default reads 1 KiB at first and grows ×4 up to 4 MiB while reads fill the buffer, as the README says", async () => {
  // Every read fills its buffer. The relay never touches the bytes here, so
  // its 4 MiB buffers are address space, not memory.
  const sizes: number[] = [];
  const client = uploadingClient((buffer: Uint8Array): Promise<number | null> => {
    sizes.push(buffer.length);
    return Promise.resolve(sizes.length > 10 ? null : buffer.length);
  });
  const target = takingTarget();
  const controller = new AbortController();
  await relay(client, target, { controller, onActivity: () => {} });
  const KiB = 1024;
  assert.deepEqual(
    sizes,
    [1, 4, 16, 64, 256, 1024, 4096, 4096, 4096, 4096, 4096].map((k) => k * KiB),
  );
});

Deno.test("relay() gives back only the buffers it holds: one it outgrew, since lent to another relay, stays that relay's", async () => {
  // The client fills 16, 64 and 256 bytes: the relay grows to 64, 256 and
  // 1,024, and gives the 64 back once it has the 1,024 (its write done).
  const grown = new GrownBuffers(4096);
  const client = pacedPeer();
  const controller = new AbortController();
  const target = takingTarget();
  const relayed = relay(client.end, target, {
    controller,
    onActivity: () => {},
    initialBufferSize: 16,
    maxBufferSize: 1024,
    grown,
  });
  for (const size of [16, 64, 256]) {
    await waitUntil(() => client.reading, `the read of ${size} bytes`);
    client.send(size);
  }
  await waitUntil(() => client.reading, "the next read");
  assert.equal(grown.kept, 64, "the outgrown 64 is back");
  // Another relay takes it, and this one ends.
  const other = grown.take(64)!;
  client.close();
  await within(relayed, "relay to end", () => controller.abort());
  assert.equal(grown.inUse, 64, "the other relay's buffer was given back under it");
  const next = grown.take(64)!;
  assert.notEqual(next.buffer, other.buffer, "two relays would read into one buffer");
});

Deno.test("relay() keeps a grown buffer whose write is still in flight until that write settles, also after an abort", async () => {
  // The client fills 16 bytes, then 64 (a grown buffer) whose write to the
  // target hangs; then the owner aborts. The write may still read from that
  // buffer: no other relay may have it yet.
  const grown = new GrownBuffers(4096);
  const controller = new AbortController();
  const untilAborted = untilAbortedBy(controller.signal);
  let reads = 0;
  const client: RelayEnd = {
    read(buffer: Uint8Array): Promise<number | null> {
      if (reads++ >= 2) return untilAborted();
      return Promise.resolve(buffer.length);
    },
    write: untilAborted,
    closeWrite: () => Promise.resolve(),
  };
  const hanging = Promise.withResolvers<number>();
  let writes = 0;
  const target: RelayEnd = {
    read: untilAborted,
    write: (bytes: Uint8Array) => writes++ === 0 ? Promise.resolve(bytes.length) : hanging.promise,
    closeWrite: () => Promise.resolve(),
  };
  const relayed = relay(client, target, {
    controller,
    onActivity: () => {},
    initialBufferSize: 16,
    maxBufferSize: 1024,
    grown,
  });
  await waitUntil(() => reads >= 3, "the third read");
  controller.abort(new Error("idle"));
  await within(relayed, "relay to end after abort", () => hanging.resolve(0));
  assert.equal(grown.inUse, 64, "the buffer of the write in flight was given back");
  hanging.reject(new Deno.errors.Interrupted("closed"));
  await waitUntil(() => grown.inUse === 0, "the buffer back once its write settled", 5000)
    .catch(() => {});
  assert.deepEqual([grown.inUse, grown.kept], [0, 64 + 256]);
});

Deno.test("relay() with onTargetFailure: the client's own errors are no target failure and abort the relay", async (t) => {
  await t.step("a reset read from the client", async () => {
    const client = pacedPeer();
    const controller = new AbortController();
    const untilAborted = untilAbortedBy(controller.signal);
    let failures = 0;
    const relayed = relay(client.end, takingTarget(untilAborted), {
      controller,
      onActivity: () => {},
      onTargetFailure: () => failures++,
    });
    await waitUntil(() => client.reading, "the read from the client");
    client.reset();
    assert.ok(
      await abortedByItself(controller, relayed),
      "the client's reset left the relay waiting",
    );
    assert.ok(controller.signal.reason instanceof Deno.errors.ConnectionReset);
    assert.equal(failures, 0);
  });
  await t.step("a full buffer's write to the client failing", async () => {
    const controller = new AbortController();
    const untilAborted = untilAbortedBy(controller.signal);
    let targetReads = 0;
    let failures = 0;
    const client: RelayEnd = {
      read: untilAborted,
      write: () => Promise.reject(new Deno.errors.ConnectionReset("reset by peer")),
      closeWrite: () => Promise.resolve(),
    };
    // A full buffer (its write left in flight), then nothing.
    const target = takingTarget((buffer: Uint8Array) =>
      targetReads++ > 0 ? untilAborted() : Promise.resolve(buffer.length)
    );
    const relayed = relay(client, target, {
      controller,
      onActivity: () => {},
      onTargetFailure: () => failures++,
      initialBufferSize: 16,
    });
    assert.ok(
      await abortedByItself(controller, relayed),
      "the failed write to the client left the relay waiting",
    );
    assert.ok(controller.signal.reason instanceof Deno.errors.ConnectionReset);
    assert.equal(failures, 0);
  });
});

Deno.test("relay() with onTargetFailure: what the target still sends after a write to it failed reaches the client, as activity, ahead of the FIN", async () => {
  // The owner's wait for the client to close is extended by bytes still
  // reaching the client (see ProxySession), so they must be reported.
  const [client, target] = [pacedPeer(), pacedPeer()];
  target.end.write = () => Promise.reject(new Deno.errors.BrokenPipe("broken pipe"));
  const controller = new AbortController();
  let [failures, activity] = [0, 0];
  const relayed = relay(client.end, target.end, {
    controller,
    onActivity: () => activity++,
    onTargetFailure: () => failures++,
  });
  await waitUntil(() => client.reading, "the read from the client");
  client.send(5); // its write to the target fails
  await waitUntil(() => failures > 0 && client.reading, "the target's failure");
  client.close(); // the client is done sending, not reading
  const before = activity;
  await waitUntil(() => target.reading, "the read from the target");
  target.send(10);
  await waitUntil(() => client.received.length === 10, "the target's bytes at the client");
  assert.equal(activity, before + 1, "the target's bytes were not activity");
  assert.equal(
    client.fins,
    0,
    "a FIN to the client ahead of the target's end would cut its answer",
  );
  target.close();
  assert.deepEqual(await within(relayed, "relay to end", () => controller.abort()), {
    up: 0,
    down: 10,
  });
  assert.equal(client.fins, 1);
  assert.equal(controller.signal.aborted, false);
});

Deno.test("relay() holds at most two buffers of the largest size in a long bulk transfer", async () => {
  // Every read fills its buffer: 16 → 64 → 256 → 1,024 bytes, and then the
  // two 1,024-byte buffers take turns (one read into, one written from).
  const grown = new GrownBuffers(1048576);
  let reads = 0;
  const client = uploadingClient((buffer: Uint8Array) =>
    Promise.resolve(reads++ < 50 ? buffer.length : null)
  );
  const target = takingTarget();
  const controller = new AbortController();
  await relay(client, target, {
    controller,
    onActivity: () => {},
    initialBufferSize: 16,
    maxBufferSize: 1024,
    grown,
  });
  assert.equal(grown.allocated, 64 + 256 + 2 * 1024, "bytes of buffers allocated");
  assert.deepEqual([grown.inUse, grown.kept], [0, grown.allocated]);
});
