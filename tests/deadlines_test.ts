/**
 * Unit tests of the shared deadline sweep. Every wait is on an item's
 * `expire()` promise, never on a sleep.
 *
 * The op sanitizer (on in `deno task test`) fails a test that leaves the
 * sweep running, but cannot tell whether it stopped at the tick it should
 * have: the tests that check when it stops spy on the global
 * setInterval/clearInterval.
 */
import assert from "node:assert/strict";
import { Deadlines, type Expirable, tickFor } from "../src/deadlines.ts";
import { waitUntil } from "./_helpers/forward_support.ts";
import { deadline } from "./_helpers/socks_client.ts";

const TICK_MS = 10;

/** An item that counts its expiries; `expired` resolves on the next one. */
class Item implements Expirable {
  deadline: number;
  slot = -1;
  count = 0;
  #next = Promise.withResolvers<void>();

  constructor(deadline: number) {
    this.deadline = deadline;
  }

  /** Resolves on the next expiry after this is read. */
  get expired(): Promise<void> {
    return this.#next.promise;
  }

  expire(): void {
    this.count++;
    const current = this.#next;
    this.#next = Promise.withResolvers<void>();
    current.resolve();
  }
}

/**
 * Runs `body` while recording intervals created and cleared through the
 * globals (`running`, which it may read); returns the period of each one
 * created, and the ids still running when it ends (and clears them).
 */
async function watchIntervals(
  body: (running: ReadonlySet<unknown>) => Promise<void>,
): Promise<{ periods: unknown[]; left: unknown[] }> {
  type IntervalId = ReturnType<typeof setInterval>;
  const realSet = globalThis.setInterval;
  const realClear = globalThis.clearInterval;
  const running = new Set<IntervalId>();
  const periods: unknown[] = [];
  globalThis.setInterval = ((...args: Parameters<typeof realSet>) => {
    const id = realSet(...args);
    periods.push(args[1]);
    running.add(id);
    return id;
  }) as typeof realSet;
  globalThis.clearInterval = ((id?: IntervalId) => {
    if (id !== undefined) running.delete(id);
    realClear(id);
  }) as typeof realClear;
  try {
    await body(running);
  } finally {
    globalThis.setInterval = realSet;
    globalThis.clearInterval = realClear;
  }
  const left = [...running];
  for (const id of left) realClear(id);
  return { periods, left };
}

Deno.test("Deadlines expires an item whose deadline has passed on the next tick, once", async () => {
  const deadlines = new Deadlines(TICK_MS);
  const item = new Item(0); // long past
  deadlines.watch(item);
  assert.equal(deadlines.size, 1);
  assert.equal(item.count, 0, "expire() must come from the sweep, not from watch()");

  await deadline(item.expired, 5000, "expiry");
  assert.equal(item.count, 1);
  assert.equal(deadlines.size, 0, "an expired item is no longer watched");

  // Several more sweeps pass while a second item waits; the first is not expired again.
  const later = new Item(performance.now() + 3 * TICK_MS);
  deadlines.watch(later);
  await deadline(later.expired, 5000, "second expiry");
  assert.equal(later.count, 1);
  assert.equal(item.count, 1);
  assert.equal(deadlines.size, 0);
});

Deno.test("Deadlines does not expire an item before its deadline", async () => {
  const deadlines = new Deadlines(TICK_MS);
  const start = performance.now();
  const item = new Item(start + 50);
  deadlines.watch(item);
  await deadline(item.expired, 5000, "expiry");
  assert.ok(performance.now() >= start + 50, "expired before its deadline");
  assert.ok(deadlines.now >= item.deadline, "the sweep's clock had passed the deadline");
});

Deno.test("Deadlines never expires early a deadline counted from a clock a tick old", async () => {
  const tick = 50;
  const deadlines = new Deadlines(tick);
  const keeper = new Item(Infinity); // keeps the sweep, and so its coarse clock, running
  deadlines.watch(keeper);
  try {
    // As between two sweeps: `now` is almost a tick behind, and a session's
    // activity counts its idle deadline from it.
    const start = performance.now();
    deadlines.now = start - (tick - 1);
    const item = new Item(deadlines.now + 60);
    deadlines.watch(item);
    await deadline(item.expired, 5000, "expiry");
    const waited = performance.now() - start;
    assert.ok(waited >= 60, `a 60 ms timeout expired after ${waited.toFixed(1)} ms`);
  } finally {
    deadlines.unwatch(keeper);
    deadlines.stopIfIdle();
  }
});

Deno.test("Deadlines.watchFor() counts from this moment even when the sweep is late (a busy event loop)", async () => {
  const tick = 20;
  const deadlines = new Deadlines(tick);
  const keeper = new Item(Infinity); // keeps the sweep running
  deadlines.watch(keeper);
  try {
    // As after the event loop was held up for 300 ms: the clock is 15 ticks old.
    const start = performance.now();
    deadlines.now = start - 300;
    const item = new Item(Infinity);
    deadlines.watchFor(item, 100);
    // And the clock is fresh for everyone who reads it next (activity bumps).
    assert.ok(deadlines.now >= start, "watchFor() left the shared clock stale");
    await deadline(item.expired, 5000, "expiry");
    const waited = performance.now() - start;
    assert.ok(waited >= 100, `a 100 ms timeout expired after ${waited.toFixed(1)} ms`);
  } finally {
    deadlines.unwatch(keeper);
    deadlines.stopIfIdle();
  }
});

Deno.test("Deadlines.watchFor() after a quiet spell counts from that moment, not the last tick", async () => {
  const deadlines = new Deadlines(TICK_MS);
  const first = new Item(0);
  deadlines.watch(first);
  await deadline(first.expired, 5000, "first expiry");
  assert.equal(deadlines.size, 0, "nothing watched: the sweep has stopped, and its clock with it");
  await new Promise((resolve) => setTimeout(resolve, 300));

  const start = performance.now();
  const item = new Item(Infinity);
  deadlines.watchFor(item, 200);
  assert.ok(item.deadline >= start + 200, `deadline ${item.deadline - start} ms from now`);
  await deadline(item.expired, 5000, "expiry");
  assert.ok(performance.now() >= start + 200, "expired before its timeout");
});

Deno.test("Deadlines.watch() after a quiet spell starts the sweep with a fresh clock", async () => {
  const deadlines = new Deadlines(TICK_MS);
  const first = new Item(0);
  deadlines.watch(first);
  await deadline(first.expired, 5000, "first expiry");
  await new Promise((resolve) => setTimeout(resolve, 100)); // the sweep stopped, its clock too
  const start = performance.now();
  const item = new Item(Infinity);
  deadlines.watch(item); // its caller counts a deadline from deadlines.now next
  try {
    assert.ok(deadlines.now >= start, `the clock is ${(start - deadlines.now).toFixed(0)} ms old`);
  } finally {
    deadlines.unwatch(item);
    deadlines.stopIfIdle();
  }
});

Deno.test("Deadlines never expires an unwatched item", async () => {
  const deadlines = new Deadlines(TICK_MS);
  const unwatched = new Item(0);
  const marker = new Item(0);
  deadlines.watch(unwatched);
  deadlines.watch(marker);
  deadlines.unwatch(unwatched);
  assert.equal(deadlines.size, 1);
  await deadline(marker.expired, 5000, "marker expiry");
  assert.equal(marker.count, 1);
  assert.equal(unwatched.count, 0);
});

Deno.test("Deadlines: bumping the deadline postpones expiry", async () => {
  const deadlines = new Deadlines(TICK_MS);
  const item = new Item(0);
  deadlines.watch(item);
  // A field write before the first sweep: the item's activity heartbeat.
  item.deadline = performance.now() + 60_000;
  const marker = new Item(0);
  deadlines.watch(marker);
  await deadline(marker.expired, 5000, "marker expiry");
  // The sweep that expired the marker looked at the item too and left it.
  assert.equal(item.count, 0);
  assert.equal(deadlines.size, 1);

  item.deadline = 0;
  await deadline(item.expired, 5000, "expiry after the deadline moved back");
  assert.equal(item.count, 1);
  assert.equal(deadlines.size, 0);
});

/** Waits until `running` is empty: a few ticks, 5 s at most (the caller's assertion says if not). */
const untilStopped = (running: ReadonlySet<unknown>) =>
  waitUntil(() => running.size === 0, "the sweep's interval to stop", 5000).catch(() => {});

Deno.test("Deadlines stops its interval at the first tick after the last item is unwatched, not at once", async () => {
  let size = -1;
  let runningAfterUnwatch = -1;
  const { left } = await watchIntervals(async (running) => {
    const deadlines = new Deadlines(TICK_MS);
    const a = new Item(performance.now() + 60_000);
    const b = new Item(performance.now() + 60_000);
    deadlines.watch(a);
    deadlines.watch(b);
    deadlines.unwatch(a);
    deadlines.unwatch(b);
    size = deadlines.size;
    // Kept for the next session, which would otherwise start one afresh.
    runningAfterUnwatch = running.size;
    await untilStopped(running);
  });
  assert.equal(size, 0);
  assert.equal(runningAfterUnwatch, 1, "the interval stopped at the last unwatch()");
  assert.deepEqual(left, [], "the sweep's interval is still running");
});

Deno.test("Deadlines keeps its interval for an item watched again before the next tick", async () => {
  const { periods, left } = await watchIntervals(async (running) => {
    const deadlines = new Deadlines(TICK_MS);
    // One session after another, with nothing watched in between.
    const first = new Item(performance.now() + 60_000);
    deadlines.watch(first);
    deadlines.unwatch(first);
    const second = new Item(0);
    deadlines.watchFor(second, 0);
    await deadline(second.expired, 5000, "the second item's expiry");
    await untilStopped(running);
  });
  assert.equal(periods.length, 1, "a second interval was started");
  assert.deepEqual(left, []);
});

Deno.test("Deadlines stops its interval when the last item expires", async () => {
  let count = 0;
  const { left } = await watchIntervals(async () => {
    const deadlines = new Deadlines(TICK_MS);
    const item = new Item(0);
    deadlines.watch(item);
    await deadline(item.expired, 5000, "expiry");
    count = item.count;
  });
  assert.equal(count, 1);
  assert.deepEqual(left, [], "the sweep's interval is still running");
});

Deno.test("Deadlines.stopIfIdle() stops the sweep at once when nothing is watched, never while something is", async () => {
  let runningWhileWatched = 0;
  let runningAfterStop = -1;
  const { left } = await watchIntervals(async (running) => {
    const deadlines = new Deadlines(TICK_MS);
    const item = new Item(performance.now() + 3 * TICK_MS);
    deadlines.watch(item);
    deadlines.stopIfIdle();
    runningWhileWatched = running.size;
    // Still swept: the item expires on time.
    await deadline(item.expired, 5000, "the watched item's expiry");
    // At shutdown, with nothing watched: gone now, not a tick later.
    const next = new Item(performance.now() + 60_000);
    deadlines.watch(next);
    deadlines.unwatch(next);
    deadlines.stopIfIdle();
    runningAfterStop = running.size;
  });
  assert.equal(runningWhileWatched, 1, "the sweep stopped with an item watched");
  assert.equal(runningAfterStop, 0, "the sweep still ran with nothing watched");
  assert.deepEqual(left, []);
});

Deno.test("Deadlines keeps one interval however many items are watched", async () => {
  const { periods, left } = await watchIntervals(async (running) => {
    const deadlines = new Deadlines(TICK_MS);
    const items = Array.from({ length: 100 }, () => new Item(performance.now() + 60_000));
    for (const item of items) deadlines.watch(item);
    for (const item of items) deadlines.unwatch(item);
    await untilStopped(running);
  });
  assert.equal(periods.length, 1);
  assert.deepEqual(left, []);
});

Deno.test("Deadlines restarts its interval when watched again after stopping", async () => {
  const deadlines = new Deadlines(TICK_MS);
  const first = new Item(performance.now() + 60_000);
  deadlines.watch(first);
  deadlines.unwatch(first);
  assert.equal(deadlines.size, 0);
  // Unwatching an item that is not watched is harmless.
  deadlines.unwatch(first);
  assert.equal(deadlines.size, 0);

  // A fresh watch after the stop must start a new interval, or this never expires.
  const before = deadlines.now;
  const second = new Item(0);
  deadlines.watch(second);
  await deadline(second.expired, 5000, "expiry after a restart");
  assert.equal(second.count, 1);
  assert.ok(deadlines.now >= before, "now is refreshed by the sweep");
  assert.equal(first.count, 0);
});

Deno.test("Deadlines expires items sharing a tick together, and an item may watch again", async () => {
  const deadlines = new Deadlines(TICK_MS);
  const items = [new Item(0), new Item(0), new Item(0)];
  for (const item of items) deadlines.watch(item);
  await deadline(Promise.all(items.map((i) => i.expired)), 5000, "all expiries");
  assert.deepEqual(items.map((i) => i.count), [1, 1, 1]);

  const again = items[0]!;
  const secondExpiry = again.expired;
  deadlines.watch(again);
  await deadline(secondExpiry, 5000, "second expiry of a re-watched item");
  assert.equal(again.count, 2);
  assert.equal(deadlines.size, 0);
});

Deno.test("tickFor() is a tenth of the shortest timeout, within 10 ms to 1 s", () => {
  assert.equal(tickFor(10_000, 10_000, 300_000), 1000);
  assert.equal(tickFor(250), 25);
  assert.equal(tickFor(300_000, 2000), 200);
  assert.equal(tickFor(105), 10);
  assert.equal(tickFor(50), 10);
  assert.equal(tickFor(1), 10);
  assert.equal(tickFor(3_600_000), 1000);
  assert.equal(tickFor(9999), 999);
});

Deno.test("Deadlines: the sweep alone does not keep the process alive", async () => {
  // A process whose last work is done must exit, though a session's
  // deadline a minute off is still watched (a CLI check, a test, shutdown).
  const module = new URL("../src/deadlines.ts", import.meta.url).href;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const { Deadlines } = await import(${JSON.stringify(module)});` +
      "new Deadlines(10).watch({ deadline: performance.now() + 60_000, slot: -1, expire() {} });",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { DENO_NO_UPDATE_CHECK: "1" },
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  const { code, signal, stderr } = await child.output();
  clearTimeout(killer);
  assert.deepEqual([code, signal], [0, null], new TextDecoder().decode(stderr));
});

Deno.test("Deadlines sweeps once a tick, the resolution it was given", async () => {
  // A longer period would let deadlines fire later than the two ticks the
  // class promises.
  const { periods } = await watchIntervals(async () => {
    const deadlines = new Deadlines(TICK_MS);
    const item = new Item(0);
    deadlines.watch(item);
    await deadline(item.expired, 5000, "expiry");
  });
  assert.deepEqual(periods, [TICK_MS]);
});

Deno.test("Deadlines expires an item at the first sweep more than a tick past its deadline, not a tick later", async () => {
  // A deadline half a tick in the past when watched: the first sweep comes a
  // tick later, by then it is a tick and a half past, which is due. Waiting a
  // second tick past a deadline would make it fire three ticks late.
  const tick = 100;
  const deadlines = new Deadlines(tick);
  const marker = new Item(0); // expires at the first sweep, whatever happens
  const item = new Item(performance.now() - tick / 2);
  deadlines.watch(marker);
  deadlines.watch(item);
  try {
    await deadline(marker.expired, 5000, "the first sweep");
    assert.equal(item.count, 1, "not expired at the first sweep past its deadline and a tick");
  } finally {
    deadlines.unwatch(item);
    deadlines.stopIfIdle();
  }
});
