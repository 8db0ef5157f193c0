/**
 * Unit tests of ByteQueue, which holds what a pooled upstream sends before a
 * client takes the connection. The property test runs random pushes and
 * shifts against a plain array of bytes as the model.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ByteQueue } from "../src/byte_queue.ts";

Deno.test("ByteQueue: bytes pushed one at a time cost a byte each, not an object each", () => {
  const queue = new ByteQueue();
  const one = new Uint8Array(1);
  // Doubled each time it is full: a buffer sized to fit each push would copy
  // every byte queued so far on every push.
  const doublings = [1024, 2048, 4096, 8192, 16384, 32768, 65536];
  for (let i = 0; i < 65536; i++) {
    one[0] = i & 0xff;
    queue.push(one);
    if (!doublings.includes(queue.capacity)) {
      assert.fail(`capacity ${queue.capacity} after ${i + 1} one-byte pushes`);
    }
  }
  assert.equal(queue.length, 65536);
  assert.equal(queue.capacity, 65536, "one buffer, doubled from 1 KiB");
  const out = new Uint8Array(70000);
  assert.equal(queue.shift(out), 65536);
  for (let i = 0; i < 65536; i++) assert.equal(out[i], i & 0xff, `byte ${i}`);
  assert.equal(queue.capacity, 0, "an emptied queue lets go of its buffer");
});

Deno.test("ByteQueue: a push after partial shifts reuses the room at the front before growing", () => {
  const queue = new ByteQueue();
  queue.push(new Uint8Array(1000).fill(1));
  assert.equal(queue.shift(new Uint8Array(900)), 900);
  queue.push(new Uint8Array(500).fill(2)); // 100 + 500 fit in the 1 KiB buffer once moved forward
  assert.equal(queue.capacity, 1024);
  const out = new Uint8Array(600);
  assert.equal(queue.shift(out), 600);
  assert.deepEqual(out, Uint8Array.from([...Array(100).fill(1), ...Array(500).fill(2)]));
  assert.equal(queue.shift(new Uint8Array(10)), 0, "an empty queue gives nothing");
});

Deno.test("ByteQueue: moving the queued bytes to the front keeps every one of them", () => {
  // Distinct bytes, so that a byte lost or repeated at either end of the move
  // shows; the property test below rarely makes a move of a long queue.
  const queue = new ByteQueue();
  const first = Uint8Array.from({ length: 1000 }, (_, i) => i % 251);
  const second = Uint8Array.from({ length: 500 }, (_, i) => 255 - (i % 199));
  queue.push(first);
  assert.equal(queue.shift(new Uint8Array(900)), 900);
  queue.push(second); // moves first[900..1000] to the front, then appends
  assert.equal(queue.capacity, 1024, "moved, not grown");
  const out = new Uint8Array(600);
  assert.equal(queue.shift(out), 600);
  assert.deepEqual(out, Uint8Array.from([...first.subarray(900), ...second]));
});

Deno.test("ByteQueue: a chunk larger than twice the buffer is taken whole", () => {
  // A pooled upstream may send a greeting of many KiB in one read, before or
  // after smaller ones.
  const queue = new ByteQueue();
  const big = Uint8Array.from({ length: 5000 }, (_, i) => i % 253);
  queue.push(big);
  assert.equal(queue.length, 5000);
  queue.push(Uint8Array.of(1, 2, 3));
  const bigger = Uint8Array.from({ length: 20_000 }, (_, i) => i % 241);
  queue.push(bigger); // more than twice the buffer that holds the first two
  const out = new Uint8Array(30_000);
  assert.equal(queue.shift(out), 25_003);
  assert.deepEqual(out.subarray(0, 25_003), Uint8Array.from([...big, 1, 2, 3, ...bigger]));
});

Deno.test("ByteQueue: a push that exactly fills the buffer once moved forward does not grow it", () => {
  const queue = new ByteQueue();
  queue.push(new Uint8Array(1024).fill(1));
  assert.equal(queue.shift(new Uint8Array(24)), 24);
  queue.push(new Uint8Array(24).fill(2)); // 1000 + 24 bytes: the 1 KiB buffer, full
  assert.equal(queue.capacity, 1024);
  const out = new Uint8Array(1024);
  assert.equal(queue.shift(out), 1024);
  assert.deepEqual(out, Uint8Array.from([...Array(1000).fill(1), ...Array(24).fill(2)]));
});

Deno.test("ByteQueue: random pushes and shifts give the bytes back in order (model: an array)", () => {
  const step = fc.oneof(
    fc.record({ push: fc.uint8Array({ maxLength: 3000 }) }),
    fc.record({ shift: fc.nat({ max: 4000 }) }),
  );
  fc.assert(fc.property(fc.array(step, { maxLength: 60 }), (steps) => {
    const queue = new ByteQueue();
    const model: number[] = [];
    let peak = 0; // most bytes queued at once so far
    for (const s of steps) {
      if ("push" in s) {
        queue.push(s.push);
        model.push(...s.push);
        peak = Math.max(peak, model.length);
      } else {
        const out = new Uint8Array(s.shift);
        const n = queue.shift(out);
        assert.equal(n, Math.min(s.shift, model.length));
        assert.deepEqual([...out.subarray(0, n)], model.splice(0, n));
      }
      assert.equal(queue.length, model.length);
      assert.ok(
        queue.capacity <= Math.max(1024, 2 * peak),
        `capacity ${queue.capacity}, peak ${peak}`,
      );
    }
  }));
});
