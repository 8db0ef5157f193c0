/**
 * The cap on name lookups in progress, with a resolver the test controls:
 * lookups that never end (a name server that never answers) must not take
 * every slot, and a client's share is freed only when its lookups end.
 */
import assert from "node:assert/strict";
import { limitedResolver, type LookupAddress, LookupsBusy } from "../src/upstream/lookups.ts";

/** A resolver whose lookups end only when the test says so. */
function heldResolver() {
  const pending: PromiseWithResolvers<LookupAddress[]>[] = [];
  const resolver = (_host: string) => {
    const lookup = Promise.withResolvers<LookupAddress[]>();
    pending.push(lookup);
    return lookup.promise;
  };
  return { resolver, pending };
}

Deno.test("limitedResolver: one client gets its share, others go on until the total is reached", async () => {
  const { resolver, pending } = heldResolver();
  const lookup = limitedResolver(resolver, 5, 2);
  const held = [lookup("a.invalid", "10.0.0.1"), lookup("b.invalid", "10.0.0.1")];
  await assert.rejects(lookup("c.invalid", "10.0.0.1"), LookupsBusy, "over the client's share");
  held.push(lookup("d.invalid", "10.0.0.2"), lookup("e.invalid", "10.0.0.2"));
  held.push(lookup("localhost", "10.0.0.3"));
  await assert.rejects(
    lookup("localhost", "10.0.0.4"),
    /too many name lookups in progress \(5 in all\)/,
  );
  assert.equal(pending.length, 5, "refused lookups never reach the resolver");
  // A lookup that ends, even in failure, gives its slot back.
  pending[0]!.reject(new Error("ENOTFOUND"));
  await assert.rejects(held[0]!);
  pending[4]!.resolve([{ address: "127.0.0.1", family: 4 }]);
  assert.deepEqual(await held[4], [{ address: "127.0.0.1", family: 4 }]);
  const again = lookup("f.invalid", "10.0.0.1");
  assert.equal(pending.length, 6);
  pending[5]!.resolve([]);
  assert.deepEqual(await again, []);
  for (const p of pending.slice(1, 4)) p.resolve([]);
  await Promise.all(held.slice(1, 4));
});
