/**
 * Unit tests of the batching log sink, with a fake `write` that records
 * what it is handed. Waits are on the fake's writes, never on a sleep.
 */
import assert from "node:assert/strict";
import {
  configure,
  getJsonLinesFormatter,
  getLogger,
  type LogRecord,
  reset,
} from "@logtape/logtape";
import { batchedSink, type BatchedSinkOptions } from "../src/log_sink.ts";

/** A record whose message is `text`. */
function record(text: string): LogRecord {
  return {
    category: ["test"],
    level: "info",
    message: [text],
    rawMessage: text,
    timestamp: 0,
    properties: {},
  };
}

const lineFormatter = (r: LogRecord) => `${r.message.join("")}\n`;
const decoder = new TextDecoder();

/** A `write` that keeps every chunk; `nextWrite()` resolves on the next call. */
class FakeStderr {
  /** The bytes of each call, as taken. */
  readonly chunks: Uint8Array[] = [];
  /** How many bytes one call takes at most (to exercise partial writes). */
  maxPerWrite = Infinity;
  /** When set, each write waits for it before returning. */
  gate: Promise<void> | null = null;
  #waiters: (() => void)[] = [];

  readonly write = async (bytes: Uint8Array): Promise<number> => {
    const taken = Math.min(bytes.length, this.maxPerWrite);
    this.chunks.push(bytes.slice(0, taken));
    for (const wake of this.#waiters.splice(0)) wake();
    if (this.gate) await this.gate;
    return taken;
  };

  nextWrite(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Everything written, decoded as a whole (a call may end inside a character). */
  get text(): string {
    const all = new Uint8Array(this.chunks.reduce((sum, chunk) => sum + chunk.length, 0));
    let offset = 0;
    for (const chunk of this.chunks) {
      all.set(chunk, offset);
      offset += chunk.length;
    }
    return decoder.decode(all);
  }
}

/**
 * A sink over a FakeStderr whose first write, of the records `first`, hangs
 * until `unstick()`: a reader that has stopped.
 */
async function sinkStuckOn(
  first: string[],
  options: Omit<BatchedSinkOptions, "formatter" | "write">,
) {
  const stderr = new FakeStderr();
  const { promise: unstuck, resolve: unstick } = Promise.withResolvers<void>();
  stderr.gate = unstuck;
  const sink = batchedSink({ formatter: lineFormatter, write: stderr.write, ...options });
  const firstWrite = stderr.nextWrite();
  for (const text of first) sink(record(text));
  await firstWrite;
  return { stderr, sink, unstick };
}

Deno.test("batchedSink writes records waiting less than the interval in one write, in order", async () => {
  const stderr = new FakeStderr();
  const sink = batchedSink({ formatter: lineFormatter, write: stderr.write, flushIntervalMs: 20 });
  const written = stderr.nextWrite();
  for (const text of ["one", "two", "three", "four", "five"]) sink(record(text));
  assert.equal(stderr.chunks.length, 0, "nothing is written on the logging call itself");
  // The sink's timer is unref'd (logging must not keep ferry alive); this one
  // keeps the test's event loop running until the write.
  const keepAlive = setTimeout(() => {}, 10_000);
  await written;
  clearTimeout(keepAlive);
  assert.equal(stderr.chunks.length, 1);
  assert.equal(stderr.text, "one\ntwo\nthree\nfour\nfive\n");
  await sink[Symbol.asyncDispose]();
});

Deno.test("batchedSink writes a line saying so for a record its formatter throws on, and goes on", async () => {
  const stderr = new FakeStderr();
  const throwsOnBad = (r: LogRecord) => {
    if (r.message.join("") === "bad") throw new TypeError("cannot serialize a BigInt");
    return lineFormatter(r);
  };
  const sink = batchedSink({ formatter: throwsOnBad, write: stderr.write, batchSize: 3 });
  const written = stderr.nextWrite();
  for (const text of ["one", "bad", "two"]) sink(record(text));
  await written;
  assert.equal(
    stderr.text,
    "one\na log record could not be formatted: cannot serialize a BigInt\ntwo\n",
  );
  sink(record("three"));
  await sink[Symbol.asyncDispose]();
  assert.ok(stderr.text.endsWith("two\nthree\n"), stderr.text);
});

Deno.test("batchedSink writes a full batch at once, without waiting for the interval", async () => {
  const stderr = new FakeStderr();
  const sink = batchedSink({
    formatter: lineFormatter,
    write: stderr.write,
    flushIntervalMs: 60_000, // a test that waited for this would time out
    batchSize: 3,
  });
  const written = stderr.nextWrite();
  sink(record("a"));
  sink(record("b"));
  sink(record("c"));
  await written;
  assert.equal(stderr.text, "a\nb\nc\n");
  sink(record("d")); // below the batch size: waits for the interval, or for dispose
  await sink[Symbol.asyncDispose]();
  assert.equal(stderr.text, "a\nb\nc\nd\n");
});

Deno.test("batchedSink disposes at once when nothing waits, also after a batch went out", async () => {
  const stderr = new FakeStderr();
  const idle = batchedSink({ formatter: lineFormatter, write: stderr.write });
  await idle[Symbol.asyncDispose](); // used to spin here: it must simply resolve
  const used = batchedSink({ formatter: lineFormatter, write: stderr.write, batchSize: 1 });
  const written = stderr.nextWrite();
  used(record("only"));
  await written;
  await used[Symbol.asyncDispose]();
  assert.equal(stderr.text, "only\n");
});

Deno.test("batchedSink writes records that arrive during a write once it is done", async () => {
  const stderr = new FakeStderr();
  const { promise: released, resolve: release } = Promise.withResolvers<void>();
  stderr.gate = released;
  const sink = batchedSink({
    formatter: lineFormatter,
    write: stderr.write,
    batchSize: 2,
    flushIntervalMs: 5,
  });
  const first = stderr.nextWrite();
  sink(record("a"));
  sink(record("b")); // a full batch: its write starts and waits at the gate
  await first;
  sink(record("c")); // arrives while that write is in progress
  const second = stderr.nextWrite();
  stderr.gate = null;
  release();
  const keepAlive = setTimeout(() => {}, 10_000); // the sink's timer is unref'd
  await second; // written after the first write, with no dispose needed
  clearTimeout(keepAlive);
  assert.equal(stderr.text, "a\nb\nc\n");
  await sink[Symbol.asyncDispose]();
});

Deno.test("batchedSink finishes partial writes, bytes intact", async () => {
  const stderr = new FakeStderr();
  stderr.maxPerWrite = 7;
  const sink = batchedSink({ formatter: lineFormatter, write: stderr.write });
  const lines = Array.from({ length: 50 }, (_, i) => `line ${i} ${"é".repeat(i % 5)}`);
  for (const line of lines) sink(record(line));
  await sink[Symbol.asyncDispose]();
  assert.equal(stderr.text, lines.map((line) => `${line}\n`).join(""));
  assert.ok(stderr.chunks.length > 50 && stderr.chunks.every((chunk) => chunk.length <= 7));
});

Deno.test("batchedSink bounds what waits behind a stuck write and reports what it dropped", async () => {
  const { stderr, sink, unstick } = await sinkStuckOn(["r0"], { batchSize: 1, maxPending: 4 });
  for (let i = 1; i <= 10; i++) sink(record(`r${i}`)); // 4 wait, 6 are dropped
  unstick();
  await sink[Symbol.asyncDispose]();
  assert.equal(
    stderr.text,
    "r0\nr1\nr2\nr3\nr4\n6 log records dropped: stderr did not keep up\n",
  );
});

Deno.test("batchedSink holds at most 10 batches' worth of records behind a stuck write by default: ferry's 10,000", async () => {
  // src/log.ts gives batches of 1,000 and no maxPending, and the README says
  // at most 10,000 records wait while stderr is not read: a larger default is
  // memory that a parent which stops reading ferry's stderr makes it hold.
  const first = Array.from({ length: 1000 }, (_, i) => `first ${i}`); // the batch stuck writing
  const { stderr, sink, unstick } = await sinkStuckOn(first, { batchSize: 1000 });
  for (let i = 0; i < 10_005; i++) sink(record(`r${i}`)); // 10,000 wait, 5 are dropped
  unstick();
  await sink[Symbol.asyncDispose]();
  const lines = stderr.text.trimEnd().split("\n");
  assert.equal(lines.length, 1000 + 10_000 + 1, "the stuck batch, those that waited, the report");
  assert.equal(lines[1000 + 9_999], "r9999", "the last that waited");
  assert.equal(lines.at(-1), "5 log records dropped: stderr did not keep up");
});

Deno.test("batchedSink never throws into the logging call when writing fails", async () => {
  let calls = 0;
  const sink = batchedSink({
    formatter: lineFormatter,
    write: () => {
      calls++;
      return Promise.reject(new Deno.errors.BrokenPipe("stderr closed"));
    },
    batchSize: 1,
  });
  sink(record("lost"));
  await sink[Symbol.asyncDispose]();
  sink(record("after the failure")); // ignored, and no throw
  assert.equal(calls, 1, "a broken stderr is not written to again");
});

for (
  const { what, refusals: tries, error, text } of [
    {
      what: "a write that would block (a full non-blocking pipe)",
      refusals: 3,
      error: () => new Deno.errors.WouldBlock("Resource temporarily unavailable"),
      text: "while the pipe was full",
    },
    {
      what: "a write interrupted by a signal (EINTR)",
      refusals: 2,
      error: () => new Deno.errors.Interrupted("Interrupted system call"),
      text: "through a signal",
    },
  ]
) {
  Deno.test(`batchedSink retries ${what}, losing nothing, and keeps writing`, async () => {
    const stderr = new FakeStderr();
    let refusals = tries;
    const write = (bytes: Uint8Array) => {
      if (refusals > 0) {
        refusals--;
        return Promise.reject(error());
      }
      return stderr.write(bytes);
    };
    const sink = batchedSink({ formatter: lineFormatter, write, batchSize: 1 });
    // The back-off's timer is unref'd; this one keeps the test's loop running.
    const keepAlive = setTimeout(() => {}, 10_000);
    const written = stderr.nextWrite();
    sink(record(text));
    await written;
    clearTimeout(keepAlive);
    sink(record("after"));
    await sink[Symbol.asyncDispose]();
    assert.equal(refusals, 0);
    // No record counted as dropped.
    assert.equal(stderr.text, `${text}\nafter\n`);
  });
}

Deno.test("batchedSink at dispose writes a record that came as a drain was ending", async () => {
  // A record logged a few microtasks after another, with dispose right after
  // it: at some hop it lands between the drain's last batch and its end.
  for (let hops = 0; hops < 8; hops++) {
    const stderr = new FakeStderr();
    const sink = batchedSink({ formatter: lineFormatter, write: stderr.write, batchSize: 1 });
    sink(record("A"));
    for (let i = 0; i < hops; i++) await Promise.resolve();
    sink(record("B"));
    await sink[Symbol.asyncDispose]();
    assert.equal(stderr.text, "A\nB\n", `B logged ${hops} microtasks after A`);
  }
});

Deno.test("batchedSink carries LogTape's JSON lines, properties flattened, written at dispose", async () => {
  const stderr = new FakeStderr();
  await configure({
    reset: true,
    sinks: {
      batched: batchedSink({
        formatter: getJsonLinesFormatter({ properties: "flatten", message: "rendered" }),
        write: stderr.write,
        flushIntervalMs: 60_000,
      }),
    },
    loggers: [
      { category: ["ferry"], lowestLevel: "info", sinks: ["batched"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["batched"] },
    ],
  });
  try {
    const log = getLogger(["ferry", "session"]);
    for (let id = 1; id <= 3; id++) log.info("session {id}: {outcome}", { id, outcome: "ok" });
  } finally {
    await reset(); // disposes the sink, which writes what waits
  }
  const lines = stderr.text.trimEnd().split("\n").map((line) => JSON.parse(line));
  assert.deepEqual(lines.map((line) => [line.id, line.outcome, line.message]), [
    [1, "ok", 'session 1: "ok"'],
    [2, "ok", 'session 2: "ok"'],
    [3, "ok", 'session 3: "ok"'],
  ]);
});

Deno.test("batchedSink keeps the records that matter past the cap: the stopped line is not dropped", async () => {
  // The newest records were dropped, so with a stalled reader the shutdown
  // and stopped lines (the totals) were lost, counted among the dropped.
  const { stderr, sink, unstick } = await sinkStuckOn(["r0", "r1"], {
    batchSize: 2,
    maxPending: 4,
    keep: (r) => r.message[0] === "stopped",
  });
  for (let i = 2; i <= 9; i++) sink(record(`r${i}`)); // 4 wait, 4 are dropped
  sink(record("stopped")); // kept past the cap
  unstick();
  await sink[Symbol.asyncDispose]();
  assert.equal(
    stderr.text,
    "r0\nr1\nr2\nr3\nr4\nr5\nstopped\n4 log records dropped: stderr did not keep up\n",
  );
});

Deno.test("batchedSink bounds the records that matter too: one batch past the cap", async () => {
  // Kept past the cap, but not without end: a stuck reader and a flood of
  // such records (a listener logging `stopped` for each of many) must not
  // grow memory for as long as it lasts.
  const { stderr, sink, unstick } = await sinkStuckOn(["r0", "r1"], {
    batchSize: 2,
    maxPending: 2,
    keep: () => true,
  });
  for (let i = 0; i < 10; i++) sink(record(`k${i}`)); // 2 + 2 wait, 6 are dropped
  unstick();
  await sink[Symbol.asyncDispose]();
  assert.equal(
    stderr.text,
    "r0\nr1\nk0\nk1\nk2\nk3\n6 log records dropped: stderr did not keep up\n",
  );
});

Deno.test("batchedSink blames a later drop on a slow reader once a failure's drop was reported", async () => {
  const stderr = new FakeStderr();
  let failing = true;
  const write = (bytes: Uint8Array) =>
    failing ? Promise.reject(new Error("No space left on device")) : stderr.write(bytes);
  const sink = batchedSink({
    formatter: lineFormatter,
    write,
    batchSize: 1,
    maxPending: 2,
    retryAfterMs: 1,
  });
  const keepAlive = setTimeout(() => {}, 10_000); // the retry's timer is unref'd
  try {
    const reported = stderr.nextWrite();
    sink(record("lost"));
    failing = false;
    await reported;
    // Now a reader that stalls: the next drop is its doing, not the disk's.
    const { promise: unstuck, resolve: unstick } = Promise.withResolvers<void>();
    stderr.gate = unstuck;
    const stuck = stderr.nextWrite();
    sink(record("s0"));
    await stuck;
    for (let i = 1; i <= 5; i++) sink(record(`s${i}`)); // 2 wait, 3 are dropped
    unstick();
    await sink[Symbol.asyncDispose]();
  } finally {
    clearTimeout(keepAlive);
  }
  assert.equal(
    stderr.text,
    "1 log records dropped: writing to stderr failed (No space left on device)\n" +
      "s0\ns1\ns2\n3 log records dropped: stderr did not keep up\n",
  );
});

Deno.test("batchedSink survives a write error that passes (a full disk): counts the lost batch and goes on", async () => {
  // Any error but a broken pipe used to end writing for good, silently, with
  // the last line cut short: a full /var until logrotate ran meant no more logs.
  const stderr = new FakeStderr();
  let calls = 0;
  const write = (bytes: Uint8Array) => {
    calls++;
    // Part of a line went out, then the disk was full.
    if (calls === 1) return stderr.write(bytes.subarray(0, 3));
    // Still full at the first retry, which wrote nothing: the line stays open.
    if (calls <= 3) return Promise.reject(new Error("No space left on device (os error 28)"));
    return stderr.write(bytes);
  };
  const sink = batchedSink({ formatter: lineFormatter, write, batchSize: 2, retryAfterMs: 1 });
  const keepAlive = setTimeout(() => {}, 10_000); // the retry's timer is unref'd
  sink(record("lost-1"));
  sink(record("lost-2"));
  sink(record("after"));
  while (calls < 4) await stderr.nextWrite();
  clearTimeout(keepAlive);
  sink(record("later"));
  await sink[Symbol.asyncDispose]();
  assert.equal(
    stderr.text,
    "los\n3 log records dropped: writing to stderr failed (No space left on device " +
      "(os error 28))\nlater\n",
    "the cut line is ended once a write goes through, every lost record is counted, " +
      "and writing goes on",
  );
});

Deno.test("batchedSink counts as dropped only the lines a failed write did not get out whole", async () => {
  // The whole batch was counted, the lines already on disk too: the report
  // said 5 lost of 5 when 3 had been written.
  const stderr = new FakeStderr();
  let calls = 0;
  const write = (bytes: Uint8Array) => {
    calls++;
    const text = decoder.decode(bytes);
    // Room for three lines and a part of the fourth, then the disk is full.
    if (calls === 1) return stderr.write(bytes.subarray(0, text.indexOf("line 4") + 3));
    if (calls === 2) return Promise.reject(new Error("No space left on device (os error 28)"));
    return stderr.write(bytes);
  };
  const sink = batchedSink({ formatter: lineFormatter, write, batchSize: 5, retryAfterMs: 1 });
  const keepAlive = setTimeout(() => {}, 10_000); // the retry's timer is unref'd
  for (let i = 1; i <= 5; i++) sink(record(`line ${i}`));
  while (calls < 2) await stderr.nextWrite();
  clearTimeout(keepAlive);
  sink(record("later"));
  await sink[Symbol.asyncDispose]();
  // The report goes with the retry, before or after "later" as the timers fall.
  assert.deepEqual(stderr.text.split("\n").sort(), [
    "",
    "2 log records dropped: writing to stderr failed (No space left on device (os error 28))",
    "later",
    "lin",
    "line 1",
    "line 2",
    "line 3",
  ]);
  assert.ok(stderr.text.startsWith("line 1\nline 2\nline 3\nlin\n"), stderr.text);
});

Deno.test("batchedSink stops writing for good once the reader is gone: EPIPE, a closed or unconnected descriptor", async () => {
  for (
    const gone of [
      new Deno.errors.BrokenPipe("Broken pipe (os error 32)"),
      new Deno.errors.BadResource("Bad resource ID"),
      new Deno.errors.NotConnected("Transport endpoint is not connected (os error 107)"),
    ]
  ) {
    let calls = 0;
    const { promise: called, resolve: wasCalled } = Promise.withResolvers<void>();
    const write = () => {
      calls++;
      wasCalled();
      return Promise.reject(gone);
    };
    const sink = batchedSink({ formatter: lineFormatter, write, batchSize: 1 });
    sink(record("lost"));
    await called;
    await new Promise((resolve) => setTimeout(resolve, 0)); // the failed write handled
    sink(record("after the reader left")); // before dispose: still no write
    await sink[Symbol.asyncDispose]();
    assert.equal(calls, 1, `${gone.name}: nothing is written after it`);
  }
});

Deno.test("batchedSink counts the lines lost across two failed writes, the cut line ended first", async () => {
  // The second batch starts with a newline that ends the line the first
  // failure cut short: that newline is no record of the batch that got out.
  const stderr = new FakeStderr();
  let calls = 0;
  const full = () => Promise.reject(new Error("No space left on device (os error 28)"));
  const write = (bytes: Uint8Array) => {
    calls++;
    if (calls === 1) return stderr.write(bytes.subarray(0, 2)); // "a1", then the disk is full
    if (calls === 2) {
      // Two more records while the failed write is handled: the next batch.
      sink(record("b1"));
      sink(record("b2"));
      return full();
    }
    if (calls === 3) return stderr.write(bytes.subarray(0, 5)); // "\nb1\nb", then full again
    if (calls === 4) return full();
    return stderr.write(bytes);
  };
  const sink = batchedSink({ formatter: lineFormatter, write, batchSize: 2, retryAfterMs: 1 });
  const keepAlive = setTimeout(() => {}, 10_000); // the retry's timer is unref'd
  sink(record("a1"));
  sink(record("a2"));
  while (calls < 5) await stderr.nextWrite();
  clearTimeout(keepAlive);
  await sink[Symbol.asyncDispose]();
  // Lost: a1 (cut), a2, and b2 (cut); b1 got out whole.
  assert.equal(
    stderr.text,
    "a1\nb1\nb\n3 log records dropped: writing to stderr failed (No space left on device " +
      "(os error 28))\n",
  );
});

Deno.test("batchedSink writes a record that came as a drain was ending, without waiting for dispose", async () => {
  // As the dispose test above, but the sink stays in use: the record must go
  // out on the timer armed once the drain is over, not wait for the next one.
  for (let hops = 0; hops < 8; hops++) {
    const stderr = new FakeStderr();
    const sink = batchedSink({
      formatter: lineFormatter,
      write: stderr.write,
      batchSize: 1,
      flushIntervalMs: 1,
    });
    sink(record("A"));
    for (let i = 0; i < hops; i++) await Promise.resolve();
    sink(record("B"));
    const keepAlive = setTimeout(() => {}, 10_000); // the sink's timer is unref'd
    while (stderr.text !== "A\nB\n") await stderr.nextWrite();
    clearTimeout(keepAlive);
    await sink[Symbol.asyncDispose]();
  }
});

Deno.test("batchedSink's own lines carry their event and what they count, for JSON logs", async () => {
  // The formatter here shows properties as LogTape's JSON lines do.
  const stderr = new FakeStderr();
  const shown = (r: LogRecord) => {
    if (r.properties.unformattable) throw new TypeError("cannot serialize a BigInt");
    return `${JSON.stringify({ message: r.message.join(""), ...r.properties })}\n`;
  };
  const { promise: unstuck, resolve: unstick } = Promise.withResolvers<void>();
  stderr.gate = unstuck;
  const sink = batchedSink({ formatter: shown, write: stderr.write, batchSize: 1, maxPending: 1 });
  const stuck = stderr.nextWrite();
  sink({ ...record("x"), properties: { event: "session", unformattable: true } });
  await stuck;
  sink(record("waits"));
  sink(record("dropped")); // over maxPending
  unstick();
  await sink[Symbol.asyncDispose]();
  const lines = stderr.text.trimEnd().split("\n").map((line) => JSON.parse(line));
  assert.deepEqual(lines, [
    {
      message: "a log record could not be formatted: cannot serialize a BigInt",
      event: "log-unformattable",
      of: "session",
    },
    { message: "waits" },
    {
      message: "1 log records dropped: stderr did not keep up",
      event: "log-dropped",
      dropped: 1,
    },
  ]);
});

Deno.test("batchedSink waits a second before writing again after a failed write", async () => {
  // Tried again at once, a full disk had the sink spin on failing writes.
  let calls = 0;
  const failedAt: number[] = [];
  const stderr = new FakeStderr();
  const write = (bytes: Uint8Array) => {
    calls++;
    if (calls > 1) return stderr.write(bytes);
    failedAt.push(performance.now());
    return Promise.reject(new Error("No space left on device (os error 28)"));
  };
  const sink = batchedSink({ formatter: lineFormatter, write, batchSize: 1 }); // the default wait
  const keepAlive = setTimeout(() => {}, 10_000); // the retry's timer is unref'd
  const retried = stderr.nextWrite();
  sink(record("lost"));
  await retried;
  const retriedAt = performance.now();
  clearTimeout(keepAlive);
  await sink[Symbol.asyncDispose]();
  assert.equal(calls, 2);
  assert.ok(retriedAt - failedAt[0]! >= 990, `tried again after ${retriedAt - failedAt[0]!} ms`);
  assert.equal(
    stderr.text,
    "1 log records dropped: writing to stderr failed (No space left on device (os error 28))\n",
  );
});

Deno.test("batchedSink writes nothing for a record its formatter throws on twice, not an empty line", async () => {
  // The line saying a record could not be formatted fails too: the record is
  // left out, and the lines around it stay as they were.
  const stderr = new FakeStderr();
  const throwsOnBad = (r: LogRecord) => {
    if (r.message.join("") !== "one" && r.message.join("") !== "two") {
      throw new TypeError("cannot serialize a BigInt");
    }
    return lineFormatter(r);
  };
  const sink = batchedSink({ formatter: throwsOnBad, write: stderr.write, batchSize: 3 });
  for (const text of ["one", "bad", "two"]) sink(record(text));
  await sink[Symbol.asyncDispose]();
  assert.equal(stderr.text, "one\ntwo\n");
});

Deno.test("batchedSink.isWriting() is true while a batch's write has not returned, and false after", async () => {
  // writeNow() (src/log.ts) asks this before a blocking write to stderr.
  const { sink, unstick } = await sinkStuckOn(["r0"], { batchSize: 1 });
  assert.equal(sink.isWriting(), true);
  unstick();
  await sink[Symbol.asyncDispose]();
  assert.equal(sink.isWriting(), false);
});
