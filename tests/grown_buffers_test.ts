/** Unit tests of the relays' grown buffers: the limit, and reuse of what is given back. */
import assert from "node:assert/strict";
import { GrownBuffers } from "../src/grown_buffers.ts";

Deno.test("GrownBuffers hands out new buffers up to its limit, then null", () => {
  const grown = new GrownBuffers(100);
  const a = grown.take(60)!;
  assert.equal(a.length, 60);
  assert.equal(grown.take(50), null, "60 + 50 is over 100");
  const b = grown.take(40)!;
  assert.equal(b.length, 40);
  assert.deepEqual([grown.inUse, grown.kept, grown.allocated], [100, 0, 100]);
});

Deno.test("GrownBuffers keeps what is given back and hands the same buffer out again", () => {
  const grown = new GrownBuffers(100);
  const a = grown.take(60)!;
  a.fill(7);
  grown.give(a);
  assert.deepEqual([grown.inUse, grown.kept], [0, 60]);
  const again = grown.take(60)!;
  assert.equal(again.buffer, a.buffer, "the kept buffer, not a new one");
  assert.deepEqual([grown.inUse, grown.kept, grown.allocated], [60, 0, 60]);
});

Deno.test("GrownBuffers ignores buffers that are not its own and ones given back twice", () => {
  const grown = new GrownBuffers(100);
  grown.give(new Uint8Array(30)); // a relay's first buffer
  const a = grown.take(50)!;
  grown.give(a);
  grown.give(a); // twice: must not be kept twice, or two relays would share it
  assert.deepEqual([grown.inUse, grown.kept], [0, 50]);
  const first = grown.take(50)!;
  const second = grown.take(50)!;
  assert.notEqual(first.buffer, second.buffer);
});

Deno.test("GrownBuffers lends the front of a larger kept buffer when a new one would not fit", () => {
  const grown = new GrownBuffers(100);
  const big = grown.take(80)!;
  grown.give(big);
  // 80 kept + 30 new would pass 100: the kept one is lent as a 30-byte view.
  const view = grown.take(30)!;
  assert.equal(view.length, 30);
  assert.equal(view.buffer, big.buffer);
  assert.deepEqual([grown.inUse, grown.kept, grown.allocated], [80, 0, 80]);
  grown.give(view); // the whole buffer comes back
  assert.deepEqual([grown.inUse, grown.kept], [0, 80]);
});

Deno.test("GrownBuffers lends the smallest of the larger kept buffers, not the largest", () => {
  const grown = new GrownBuffers(100);
  const [forty, fifty] = [grown.take(40)!, grown.take(50)!];
  grown.give(fifty);
  grown.give(forty);
  // 90 kept + 20 new would pass 100: of the two larger ones, the 40 is lent,
  // leaving the 50 for a take that needs it.
  const view = grown.take(20)!;
  assert.equal(view.buffer, forty.buffer);
  assert.equal(grown.take(45)!.buffer, fifty.buffer);
});

Deno.test("GrownBuffers drops smaller kept buffers to make room for a larger one", () => {
  const grown = new GrownBuffers(100);
  const small = [grown.take(30)!, grown.take(30)!, grown.take(30)!];
  for (const buffer of small) grown.give(buffer);
  const large = grown.take(70)!;
  assert.equal(large.length, 70);
  assert.ok(grown.inUse + grown.kept <= grown.limit, `${grown.inUse} + ${grown.kept}`);
  assert.deepEqual([grown.inUse, grown.kept], [70, 30], "two of the three dropped");
});

Deno.test("the reserve lends only small buffers: large ones stop short of it, small ones may use it", () => {
  const grown = new GrownBuffers(100, 20, 10);
  const large = [grown.take(40), grown.take(40)];
  assert.ok(large.every((buffer) => buffer !== null), "80 bytes, outside the reserve");
  assert.equal(grown.take(40), null, "a third would reach into the reserve");
  assert.equal(grown.take(11), null, "so would anything larger than a small buffer");
  const small = [grown.take(10), grown.take(10)];
  assert.ok(small.every((buffer) => buffer !== null), "small ones use the reserve");
  assert.equal(grown.take(10), null, "up to the limit, no further");
  assert.equal(grown.inUse, 100);
  grown.give(large[0]!);
  assert.equal(grown.take(40), null, "the small ones in use count: 60 + 40 is past 80");
  for (const buffer of small) grown.give(buffer!);
  assert.equal(grown.take(40)?.length, 40, "with them back, the large one may be taken again");
  assert.deepEqual([grown.inUse, grown.kept, grown.allocated], [80, 20, 100]);
});

Deno.test("GrownBuffers allocates a new buffer that fits exactly, keeping the larger kept one for a take that needs it", () => {
  const grown = new GrownBuffers(100);
  const sixty = grown.take(60)!;
  grown.give(sixty);
  // 60 kept + 40 new is the limit, not over it: a new one.
  const forty = grown.take(40)!;
  assert.notEqual(forty.buffer, sixty.buffer);
  assert.equal(grown.take(60)?.buffer, sixty.buffer, "the kept 60 for a take of 60");
  assert.deepEqual([grown.inUse, grown.kept, grown.allocated], [100, 0, 100]);
});

Deno.test("GrownBuffers lends a larger kept buffer also after the last one of a size was lent or dropped", () => {
  // The last kept 30 is lent: the next take that needs a larger one gets the 60.
  const lent = new GrownBuffers(100);
  const [thirty, sixty] = [lent.take(30)!, lent.take(60)!];
  lent.give(thirty);
  lent.give(sixty);
  assert.equal(lent.take(20)!.buffer, thirty.buffer);
  assert.equal(lent.take(25)?.buffer, sixty.buffer, "the kept 60, not a new buffer");
  assert.deepEqual([lent.inUse, lent.kept, lent.allocated], [90, 0, 90]);

  // The last kept 20 is dropped to make room for a 90: a take of 15 then gets the 90.
  const dropped = new GrownBuffers(100);
  dropped.give(dropped.take(20)!);
  const ninety = dropped.take(90)!;
  assert.deepEqual([dropped.inUse, dropped.kept], [90, 0], "the 20 dropped");
  dropped.give(ninety);
  assert.equal(dropped.take(15)?.buffer, ninety.buffer, "the kept 90, not a new buffer");
  assert.deepEqual([dropped.inUse, dropped.kept, dropped.allocated], [90, 0, 110]);
});
