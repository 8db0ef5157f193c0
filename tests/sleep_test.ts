/** The abortable sleep of the accept loop and of a dial's wait for a descriptor. */
import assert from "node:assert/strict";
import { sleep } from "../src/sleep.ts";

/** Whether `work` settles within `ms`. */
async function settlesWithin(work: Promise<void>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms));
  const settled = await Promise.race([work.then(() => true as const), late]);
  clearTimeout(timer);
  return settled;
}

Deno.test("sleep() ends when its signal aborts, and at once for a signal aborted already", async () => {
  const abort = new AbortController();
  const sleeping = sleep(60_000, abort.signal);
  abort.abort();
  assert.equal(await settlesWithin(sleeping, 5_000), true, "cut short by the abort");
  // The abort event has come and gone: waiting for it slept the whole time.
  assert.equal(await settlesWithin(sleep(60_000, abort.signal), 5_000), true, "already aborted");
  assert.equal(await settlesWithin(sleep(1, new AbortController().signal), 5_000), true);
});
