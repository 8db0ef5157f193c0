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
