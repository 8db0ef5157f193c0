/**
 * Unit tests of SlotList, the allocation-free set that the server's session
 * list and the deadline sweep use instead of a `Set` (see src/slot_list.ts for
 * why). The property test runs random operation sequences against a `Set` as
 * the model.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { SlotList, type Slotted } from "../src/slot_list.ts";

class Thing implements Slotted {
  slot = -1;
  constructor(readonly name: string) {}
}

Deno.test("SlotList: add, has, delete and size", () => {
  const list = new SlotList<Thing>();
  const [a, b, c] = [new Thing("a"), new Thing("b"), new Thing("c")];
  list.add(a);
  list.add(b);
  list.add(c);
  list.add(b); // adding again does nothing
  assert.equal(list.size, 3);
  assert.ok(list.delete(a)); // c moves into a's place
  assert.equal(a.slot, -1);
  assert.equal(c.slot, 0);
  assert.ok(!list.has(a));
  assert.ok(list.has(b) && list.has(c));
  assert.ok(!list.delete(a), "deleting an item not held returns false");
  assert.deepEqual(list.toArray().map((t) => t.name).sort(), ["b", "c"]);
  assert.equal(list.size, 2);
});

Deno.test("SlotList: an item held by one list cannot join another", () => {
  const first = new SlotList<Thing>();
  const second = new SlotList<Thing>();
  const other = new Thing("other");
  const shared = new Thing("shared");
  second.add(other); // so that shared's slot 0 points at a real entry of `second`
  first.add(shared);
  assert.ok(!second.has(shared));
  assert.throws(() => second.add(shared), /held by another list/);
  assert.ok(!second.delete(shared));
  assert.ok(first.has(shared) && second.has(other));
  assert.equal(second.size, 1);
});

Deno.test("SlotList: removeWhere removes exactly the matching items and returns them", () => {
  const list = new SlotList<Thing>();
  const things = Array.from({ length: 10 }, (_, i) => new Thing(String(i)));
  for (const t of things) list.add(t);
  const removed = list.removeWhere((t) => Number(t.name) % 3 === 0);
  assert.deepEqual(removed.map((t) => t.name).sort(), ["0", "3", "6", "9"]);
  assert.deepEqual(list.toArray().map((t) => t.name).sort(), ["1", "2", "4", "5", "7", "8"]);
  for (const t of removed) assert.equal(t.slot, -1);
});

Deno.test("SlotList: toArray is a copy, so deleting while going through it visits everything", () => {
  const list = new SlotList<Thing>();
  for (let i = 0; i < 5; i++) list.add(new Thing(String(i)));
  const seen: string[] = [];
  for (const t of list.toArray()) {
    seen.push(t.name);
    list.delete(t);
  }
  assert.equal(seen.length, 5);
  assert.equal(list.size, 0);
});

Deno.test("SlotList: behaves like a Set under random add/delete/removeWhere sequences", () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant("add" as const), index: fc.nat(15) }),
    fc.record({ kind: fc.constant("delete" as const), index: fc.nat(15) }),
    fc.record({
      kind: fc.constant("removeWhere" as const),
      modulus: fc.integer({ min: 2, max: 5 }),
    }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
      const things = Array.from({ length: 16 }, (_, i) => new Thing(String(i)));
      const list = new SlotList<Thing>();
      const model = new Set<Thing>();
      for (const o of ops) {
        if (o.kind === "add") {
          list.add(things[o.index]!);
          model.add(things[o.index]!);
        } else if (o.kind === "delete") {
          assert.equal(list.delete(things[o.index]!), model.delete(things[o.index]!));
        } else {
          const matches = (t: Thing) => Number(t.name) % o.modulus === 0;
          const expected = [...model].filter(matches);
          for (const t of expected) model.delete(t);
          assert.deepEqual(new Set(list.removeWhere(matches)), new Set(expected));
        }
        assert.equal(list.size, model.size);
        assert.deepEqual(new Set(list.toArray()), model);
        for (const t of things) {
          assert.equal(list.has(t), model.has(t));
          assert.equal(t.slot === -1, !model.has(t), `slot of ${t.name}`);
        }
      }
    }),
  );
});
