/**
 * Making room for a client out of descriptors: retries of a socket's
 * creation each time a pool gives a descriptor up, with scripted pools, and
 * the pause of accepts while dials wait.
 */
import assert from "node:assert/strict";
import {
  acceptsPaused,
  addDonor,
  type DescriptorDonor,
  DescriptorWait,
  freeSpareDescriptor,
  makingRoom,
  targetHeld,
  targetReleased,
  withdrawDonor,
} from "../src/spare_descriptors.ts";
import { shortageSince } from "../src/nofile.ts";
import { waitsUntilGivenUp } from "./_helpers/descriptor_wait.ts";

/** A pool of `idle` connections, each given up on request, and counted. */
function scriptedPool(idle: number): DescriptorDonor & { idle: number; given: number } {
  return {
    idle,
    given: 0,
    giveUpConnection() {
      if (this.idle === 0) return null;
      this.idle--;
      this.given++;
      return Promise.resolve();
    },
  };
}

const emfile = () =>
  Object.assign(new Error("Too many open files (os error 24)"), { code: "EMFILE" });

Deno.test("makingRoom() tries again after each descriptor given up, and takes them from the fullest pool", async () => {
  // Both orders of adding: the fullest, not the first or the last added.
  for (const largeFirst of [false, true]) {
    const small = scriptedPool(1);
    const large = scriptedPool(3);
    for (const pool of largeFirst ? [large, small] : [small, large]) addDonor(pool);
    try {
      let attempts = 0;
      const opened = await makingRoom(() => {
        if (++attempts <= 2) throw emfile();
        return "socket";
      });
      assert.equal(opened, "socket");
      assert.equal(attempts, 3);
      assert.deepEqual([small.given, large.given], [0, 2], `large added first: ${largeFirst}`);
    } finally {
      withdrawDonor(small);
      withdrawDonor(large);
    }
  }
});

Deno.test("makingRoom() rethrows once the pools have nothing left, and never for another error", async () => {
  const pool = scriptedPool(2);
  addDonor(pool);
  try {
    let attempts = 0;
    await assert.rejects(
      makingRoom(() => {
        attempts++;
        throw emfile();
      }),
      /Too many open files/,
    );
    assert.equal(attempts, 3, "the first try and one after each of the 2 given up");
    assert.equal(pool.idle, 0);

    pool.idle = 2;
    pool.given = 0;
    await assert.rejects(
      makingRoom(() => Promise.reject(new Deno.errors.ConnectionRefused("refused"))),
      Deno.errors.ConnectionRefused,
    );
    assert.equal(pool.given, 0, "a refusal is no shortage of ferry's");
  } finally {
    withdrawDonor(pool);
  }
  assert.equal(await freeSpareDescriptor(), false, "no pool asked once withdrawn");
});

Deno.test("while a dial waits for a descriptor, accepts are paused, its retries included; an abort ends a wait", async () => {
  assert.equal(acceptsPaused(), false);
  const abort = new AbortController();
  {
    using wait = new DescriptorWait();
    assert.equal(acceptsPaused(), true, "a client accepted now would have no descriptor either");
    await wait.next(abort.signal); // 5 ms
    assert.equal(acceptsPaused(), true, "between two waits, while the dial is tried again");
    const waiting = wait.next(abort.signal); // 10 ms, but cut short
    abort.abort();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const ended = await Promise.race([
      waiting.then(() => "ended"),
      new Promise((resolve) => timer = setTimeout(() => resolve("still waiting"), 5_000)),
    ]);
    clearTimeout(timer);
    assert.equal(ended, "ended");
  }
  assert.equal(acceptsPaused(), false, "counted down once the dial is done");
});

Deno.test("a dial short of a descriptor gives up after five waits once no session holds a target, and waits on while one does", async () => {
  // A session that took a target and gave it back: none holds one now, and
  // no descriptor will free up.
  targetHeld();
  targetReleased();
  {
    using wait = new DescriptorWait();
    assert.equal(await waitsUntilGivenUp(wait), 5, "5, 10, 20, 40 and 80 ms, then no more");
  }
  // While one does, it may end: the dial waits until no target has moved for a second.
  targetHeld();
  try {
    using wait = new DescriptorWait();
    const started = performance.now();
    const waits = await waitsUntilGivenUp(wait);
    assert.ok(waits > 5 && waits < 100, `${waits} waits`);
    // (Timed from just after the wait began: a hair under the second.)
    assert.ok(performance.now() - started >= 990, "given up only at the standstill");
  } finally {
    targetReleased();
  }
});

Deno.test("makingRoom() records a shortage of descriptors even when no pool has one to give", async () => {
  // A lookup failing meanwhile is then not blamed on the name (src/upstream/dial.ts).
  const before = performance.now();
  await assert.rejects(makingRoom(() => Promise.reject(emfile())), /Too many open files/);
  assert.equal(shortageSince(before), true);
});

Deno.test("a dial that waited with no target held counts its idle waits afresh once a session held one", async () => {
  // Keep targets moving (so no standstill) while none is held for 3 waits.
  targetHeld();
  targetReleased();
  using wait = new DescriptorWait();
  const signal = new AbortController().signal;
  for (let i = 0; i < 3; i++) assert.equal(await wait.next(signal), true, `idle wait ${i + 1}`);
  targetHeld();
  try {
    assert.equal(await wait.next(signal), true, "a wait while a session holds a target");
  } finally {
    targetReleased();
  }
  // Five more idle waits, as for a dial that had just begun to wait.
  assert.equal(await waitsUntilGivenUp(wait), 5);
});

Deno.test("a dial waits on past a second while sessions keep taking targets, and gives up a second after the last", async () => {
  // A target taken is movement too: sessions are starting, and will end.
  const signal = new AbortController().signal;
  let held = 0;
  let lastMove = 0;
  try {
    using wait = new DescriptorWait();
    // 5 + 10 + 20 + 40 + 80 + 11 × 100 ms: well past a second since the dial began.
    for (let i = 0; i < 16; i++) {
      targetHeld();
      lastMove = performance.now();
      held++;
      assert.equal(await wait.next(signal), true, `wait ${i + 1}`);
    }
    // Then no target moves: the second counts from the last that did.
    assert.ok(await waitsUntilGivenUp(wait) > 0);
    assert.ok(performance.now() - lastMove >= 990, "given up only at the standstill");
  } finally {
    for (; held > 0; held--) targetReleased();
  }
});

Deno.test("disposing a DescriptorWait twice counts it down once", () => {
  // Disposing is idempotent: a second call must not count down another dial.
  const other = new DescriptorWait();
  try {
    const wait = new DescriptorWait();
    wait[Symbol.dispose]();
    wait[Symbol.dispose]();
    assert.equal(acceptsPaused(), true, "the other dial still waits");
  } finally {
    other[Symbol.dispose]();
  }
  assert.equal(acceptsPaused(), false);
});

Deno.test("makingRoom() tries again only once the descriptor given up is free", async () => {
  // Deno closes a pooled socket only when the read pending on it has ended:
  // tried at once, the retry met EMFILE again and cost the pool another.
  const { promise: closed, resolve: close } = Promise.withResolvers<void>();
  const pool = {
    idle: 1,
    giveUpConnection() {
      this.idle--;
      return closed;
    },
  };
  addDonor(pool);
  try {
    let attempts = 0;
    const opened = makingRoom(() => {
      if (++attempts === 1) throw emfile();
      return "socket";
    });
    await new Promise((resolve) => setTimeout(resolve, 0)); // everything but the close settled
    assert.equal(attempts, 1, "not tried again while the descriptor is still held");
    close();
    assert.equal(await opened, "socket");
    assert.equal(attempts, 2);
  } finally {
    withdrawDonor(pool);
  }
});
