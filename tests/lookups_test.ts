/**
 * Name lookups under their caps, with a resolver the test controls: lookups
 * that never end (a name server that never answers) must not take every slot
 * or hold up other clients; a burst of requests (a browser opening a page)
 * waits its turn instead of failing; requests for one name share one lookup.
 */
import assert from "node:assert/strict";
import { limitedResolver, type LookupAddress, LookupsBusy } from "../src/upstream/lookups.ts";

/** A resolver whose lookups end only when the test says so. */
function heldResolver() {
  const pending: { host: string; lookup: PromiseWithResolvers<LookupAddress[]> }[] = [];
  const resolver = (host: string) => {
    const lookup = Promise.withResolvers<LookupAddress[]>();
    pending.push({ host, lookup });
    return lookup.promise;
  };
  const hosts = () => pending.map((p) => p.host);
  return { resolver, pending, hosts };
}

const LOCALHOST: LookupAddress[] = [{ address: "127.0.0.1", family: 4 }];

/** Lets settled lookups run their bookkeeping (finally, then the queue). */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

Deno.test("lookups: requests for a name being looked up share that lookup and take no slot", async () => {
  const { resolver, pending } = heldResolver();
  const lookup = limitedResolver(resolver, { max: 2, maxPerClient: 2 });
  const first = lookup("localhost", "10.0.0.1");
  const same = [lookup("localhost", "10.0.0.1"), lookup("localhost", "10.0.0.2")];
  assert.equal(pending.length, 1, "one lookup for three requests");
  const other = lookup("example.test", "10.0.0.1");
  assert.equal(pending.length, 2, "the shared requests took no slot of 10.0.0.1's two");
  pending[0]!.lookup.resolve(LOCALHOST);
  assert.deepEqual(await Promise.all([first, ...same]), [LOCALHOST, LOCALHOST, LOCALHOST]);
  // Once it has ended, the next request for the name looks it up afresh.
  const later = lookup("localhost", "10.0.0.3");
  assert.equal(pending.length, 3);
  pending[1]!.lookup.resolve([]);
  pending[2]!.lookup.resolve([]);
  assert.deepEqual(await Promise.all([other, later]), [[], []]);
});

Deno.test("lookups: past a client's share a request waits for a slot, then proceeds", async () => {
  const { resolver, pending, hosts } = heldResolver();
  const lookup = limitedResolver(resolver, { max: 5, maxPerClient: 2 });
  const burst = ["a.test", "b.test", "c.test", "d.test"].map((h) => lookup(h, "10.0.0.1"));
  assert.deepEqual(hosts(), ["a.test", "b.test"], "two in progress, two waiting");
  pending[0]!.lookup.reject(new Error("ENOTFOUND")); // an end in failure frees the slot too
  await assert.rejects(burst[0]!, /ENOTFOUND/);
  await settle();
  assert.deepEqual(hosts(), ["a.test", "b.test", "c.test"], "the first waiter in order");
  for (const p of pending.slice(1)) p.lookup.resolve(LOCALHOST);
  await settle();
  assert.deepEqual(hosts(), ["a.test", "b.test", "c.test", "d.test"]);
  pending[3]!.lookup.resolve([]);
  assert.deepEqual(await Promise.all(burst.slice(1)), [LOCALHOST, LOCALHOST, []]);
});

Deno.test("lookups: a client whose lookups never end does not hold up another client", async () => {
  const { resolver, pending, hosts } = heldResolver();
  const lookup = limitedResolver(resolver, { max: 5, maxPerClient: 2 });
  const controller = new AbortController();
  const hostile = Array.from(
    { length: 10 },
    (_, i) => lookup(`never-${i}.test`, "10.0.0.66", controller.signal).catch((error) => error),
  );
  assert.equal(pending.length, 2, "the hostile client has its share and no more");
  const other = lookup("localhost", "10.0.0.1");
  assert.deepEqual(hosts().slice(2), ["localhost"], "another client's lookup starts at once");
  pending[2]!.lookup.resolve(LOCALHOST);
  assert.deepEqual(await other, LOCALHOST);
  // The waiting ones give up at their connect timeout (their signal).
  controller.abort(new Error("connect-timeout"));
  const outcomes = await Promise.all(hostile.slice(2));
  assert.ok(outcomes.every((o) => o instanceof Error && o.message === "connect-timeout"));
  // Aborted waiters left the queue: a freed slot does not start their lookups.
  pending[0]!.lookup.resolve([]);
  await settle();
  assert.equal(pending.length, 3);
  pending[1]!.lookup.resolve([]);
  await Promise.all(hostile);
});

Deno.test("lookups: the process-wide cap holds, and turns go round the waiting clients", async () => {
  const { resolver, pending, hosts } = heldResolver();
  const lookup = limitedResolver(resolver, { max: 3, maxPerClient: 3 });
  const a = ["a1", "a2", "a3", "a4", "a5", "a6"].map((h) => lookup(h, "10.0.0.1"));
  const b = lookup("b1", "10.0.0.2");
  assert.deepEqual(hosts(), ["a1", "a2", "a3"], "three in all");
  // Slots free one at a time: client B, waiting behind three of A's, gets the second at the latest.
  pending[0]!.lookup.resolve([]);
  await settle();
  pending[1]!.lookup.resolve([]);
  await settle();
  assert.ok(hosts().includes("b1"), `order: ${hosts().join(" ")}`);
  assert.deepEqual(hosts().slice(0, 4), ["a1", "a2", "a3", "a4"]);
  while (pending.some((p) => p.host !== "done")) {
    for (const p of pending) {
      if (p.host !== "done") {
        p.lookup.resolve([]);
        p.host = "done";
      }
    }
    await settle();
  }
  await Promise.all([...a, b]);
});

Deno.test("lookups: a slot freed goes to the next client that may use it, past one still at its share", async () => {
  const { resolver, pending, hosts } = heldResolver();
  const lookup = limitedResolver(resolver, { max: 3, maxPerClient: 2 });
  // A hostile client at its share, with more waiting, ahead of B in the turn order.
  const hostile = ["never-1", "never-2", "never-3"].map((h) => lookup(h, "10.0.0.66"));
  const c = lookup("c1", "10.0.0.3");
  const b = lookup("b1", "10.0.0.2"); // waits: three in all
  assert.deepEqual(hosts(), ["never-1", "never-2", "c1"]);
  pending[2]!.lookup.resolve([]);
  await settle();
  // The hostile client's turn comes first, but it has no room: B's lookup starts.
  assert.deepEqual(hosts(), ["never-1", "never-2", "c1", "b1"]);
  pending[3]!.lookup.resolve(LOCALHOST);
  assert.deepEqual(await b, LOCALHOST);
  for (const p of pending.slice(0, 2)) p.lookup.resolve([]);
  await settle();
  pending[4]!.lookup.resolve([]);
  await Promise.all([...hostile, c]);
});

Deno.test("lookups: beyond the waiting cap a request fails at once with LookupsBusy", async () => {
  const { resolver, pending } = heldResolver();
  const lookup = limitedResolver(resolver, { max: 4, maxPerClient: 1, maxWaitingPerClient: 2 });
  const held = [
    lookup("a.test", "10.0.0.1"),
    lookup("b.test", "10.0.0.1"),
    lookup("c.test", "10.0.0.1"),
  ];
  await assert.rejects(
    lookup("d.test", "10.0.0.1"),
    (error) => error instanceof LookupsBusy && /2 for 10\.0\.0\.1/.test(error.message),
  );
  // Each lookup that ends lets the next waiter in; bounded, so that one that
  // never does fails the test instead of spinning here for good.
  for (let ended = 0; pending.length < 3; ended++) {
    assert.ok(ended < 3, `a waiting request never got its slot (${pending.length} started)`);
    pending.at(-1)!.lookup.resolve([]);
    await settle();
  }
  pending.at(-1)!.lookup.resolve([]);
  assert.deepEqual(await Promise.all(held), [[], [], []]);
});

Deno.test("lookups: a resolver that throws at once still gives its slot back", async () => {
  let calls = 0;
  const lookup = limitedResolver((host) => {
    calls++;
    if (host === "bad") throw new TypeError("bad host");
    return Promise.resolve(LOCALHOST);
  }, { max: 1, maxPerClient: 1 });
  await assert.rejects(lookup("bad", "10.0.0.1"), TypeError);
  assert.deepEqual(await lookup("localhost", "10.0.0.1"), LOCALHOST);
  assert.equal(calls, 2);
});

Deno.test("lookups: by default at most 8 run for one client IP and 24 in all, as the README says", async () => {
  const { resolver, pending } = heldResolver();
  const lookup = limitedResolver(resolver);
  const requests = [];
  for (let i = 0; i < 9; i++) requests.push(lookup(`a${i}.test`, "10.0.0.1"));
  assert.equal(pending.length, 8, "a client's share");
  for (const client of ["10.0.0.2", "10.0.0.3"]) {
    for (let i = 0; i < 8; i++) requests.push(lookup(`${client}-${i}.test`, client));
  }
  assert.equal(pending.length, 24, "three clients' shares");
  requests.push(lookup("late.test", "10.0.0.4"));
  assert.equal(pending.length, 24, "the process's cap");
  for (let i = 0; i < 26 && i < pending.length; i++) {
    pending[i]!.lookup.resolve([]);
    await settle();
  }
  assert.equal(pending.length, 26, "the two waiting ran once there was room");
  await Promise.all(requests);
});

Deno.test("lookups: by default 256 requests may wait for one client IP, as the README says, and no more", async () => {
  const { resolver, pending } = heldResolver();
  const lookup = limitedResolver(resolver);
  const requests = Array.from({ length: 8 + 256 }, (_, i) => lookup(`a${i}.test`, "10.0.0.1"));
  assert.equal(pending.length, 8, "a client's share");
  await assert.rejects(lookup("one-too-many.test", "10.0.0.1"), LookupsBusy);
  // Every one waiting runs in turn as lookups end.
  for (let ended = 0; ended < pending.length;) {
    for (; ended < pending.length; ended++) pending[ended]!.lookup.resolve([]);
    await settle();
  }
  assert.equal(pending.length, 8 + 256);
  await Promise.all(requests);
});

Deno.test("lookups: a waiting request shares a lookup of its name that another client started meanwhile", async () => {
  const { resolver, pending, hosts } = heldResolver();
  const lookup = limitedResolver(resolver, { max: 5, maxPerClient: 1 });
  const busy = lookup("a.test", "10.0.0.1"); // 10.0.0.1's one slot
  const waiting = lookup("x.test", "10.0.0.1");
  const started = lookup("x.test", "10.0.0.2"); // x.test under way, in 10.0.0.2's slot
  const other = lookup("c.test", "10.0.0.3");
  // Any lookup's end lets waiters go: this one's name is under way, so it
  // shares that lookup, needing no slot of its client's.
  pending[2]!.lookup.resolve([]);
  await other;
  await settle();
  pending[1]!.lookup.resolve(LOCALHOST);
  assert.deepEqual(await Promise.all([waiting, started]), [LOCALHOST, LOCALHOST]);
  assert.deepEqual(hosts(), ["a.test", "x.test", "c.test"], "x.test looked up once");
  pending[0]!.lookup.resolve([]);
  await busy;
});

Deno.test("lookups: a request given up before it would wait fails at once and never runs", async () => {
  const { resolver, pending, hosts } = heldResolver();
  const lookup = limitedResolver(resolver, { max: 5, maxPerClient: 1 });
  const busy = lookup("a.test", "10.0.0.1");
  const controller = new AbortController();
  controller.abort(new Error("the client has gone"));
  await assert.rejects(lookup("b.test", "10.0.0.1", controller.signal), /the client has gone/);
  pending[0]!.lookup.resolve([]);
  await busy;
  await settle();
  assert.deepEqual(hosts(), ["a.test"], "b.test was looked up for nobody");
});
