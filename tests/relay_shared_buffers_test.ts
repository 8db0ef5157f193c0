/**
 * The process's shared grown buffers, which every relay() draws on unless
 * given its own: the limits the README states, seen through relays.
 *
 * In a module of their own (Deno runs each test module in its own isolate)
 * because the counts below need those buffers as this module leaves them:
 * relay_test's transfers would leave buffers of other sizes kept there, and
 * a kept buffer larger than one asked for is lent whole (see
 * GrownBuffers.take), which would take more of the budget than the test
 * counts. The relays are fakes that never touch the buffers' bytes, so the
 * hundreds of MiB asked for are address space, not memory.
 */
import assert from "node:assert/strict";
import { relay, type RelayEnd } from "../src/relay.ts";

const MiB = 1048576;
const KiB = 1024;

/** A relay started by {@linkcode stalledRelay}. */
interface StalledRelay {
  /** Whether it got the larger buffer it asked for. */
  readonly grew: boolean;
  /** Aborts it and waits for its end, which gives its buffers back. */
  end(): Promise<void>;
}

/**
 * Starts a relay on the shared buffers whose client fills its first read
 * buffer, of a quarter of `size`, and whose target then takes nothing: the
 * relay asks for a buffer of `size` to read on into while that write is in
 * flight, and keeps it, as a session whose peer stopped reading does.
 */
async function stalledRelay(size: number): Promise<StalledRelay> {
  const controller = new AbortController();
  const aborted = new Promise<never>((_, reject) =>
    controller.signal.addEventListener("abort", () => reject(controller.signal.reason), {
      once: true,
    })
  );
  aborted.catch(() => {}); // the relay sees it; nothing else need
  const reads: number[] = [];
  const client: RelayEnd = {
    read(buffer: Uint8Array): Promise<number | null> {
      reads.push(buffer.length);
      return reads.length === 1 ? Promise.resolve(buffer.length) : aborted;
    },
    write: () => aborted,
    closeWrite: () => Promise.resolve(),
  };
  const { promise: writing, resolve: startWriting } = Promise.withResolvers<void>();
  const target: RelayEnd = {
    read: () => aborted,
    write(): Promise<number> {
      startWriting();
      return aborted;
    },
    closeWrite: () => Promise.resolve(),
  };
  const relayed = relay(client, target, {
    controller,
    onActivity: () => {},
    initialBufferSize: Math.ceil(size / 4),
    maxBufferSize: size,
  });
  await writing;
  // The relay asks for the larger buffer in the same job as it starts the
  // write, and with it reads again at once; without it, it waits for the
  // write, which never ends.
  assert.equal(reads[0], Math.ceil(size / 4), "the first read");
  return {
    grew: reads[1] === size,
    async end() {
      controller.abort(new Error("the test is over"));
      await relayed;
    },
  };
}

/**
 * Starts stalled relays asking for `size` until one does not get it, or
 * until, beyond `stopPast` bytes, the limit is plainly wrong. Returns them,
 * the last one the one that did not grow (unless stopped).
 */
async function stalledRelaysUntilRefused(size: number, stopPast: number, held = 0) {
  const relays: StalledRelay[] = [];
  for (;;) {
    const stalled = await stalledRelay(size);
    relays.push(stalled);
    if (!stalled.grew) return { relays, held };
    held += size;
    if (held > stopPast) return { relays, held };
  }
}

Deno.test("relay() by default lets all relays together hold 256 MiB of grown buffers, as the README says", async () => {
  // A peer that stops reading keeps its session's buffers: the budget is what
  // bounds ferry's memory for them. Buffers of 4 MiB (the most a direction
  // grows to) first, then of 64 KiB, which may have the budget's last part.
  const large = await stalledRelaysUntilRefused(4 * MiB, 256 * MiB);
  const small = await stalledRelaysUntilRefused(64 * KiB, 256 * MiB, large.held);
  try {
    assert.equal(small.held / MiB, 256, "MiB of grown buffers held by all relays together");
  } finally {
    await Promise.all([...large.relays, ...small.relays].map((stalled) => stalled.end()));
  }
});

Deno.test("relay() by default keeps the budget's last 32 MiB for buffers of up to 64 KiB, as the README says", async () => {
  // Once stalled sessions hold the rest, a new bulk transfer still reads 64
  // KiB at a time rather than 1 KiB: a tenth of the speed without it.
  const large = await stalledRelaysUntilRefused(4 * MiB, 256 * MiB);
  const relays = [...large.relays];
  try {
    assert.equal(large.held / MiB, 256 - 32, "MiB held in buffers of 4 MiB");
    const justOver = await stalledRelay(64 * KiB + 1);
    relays.push(justOver);
    assert.equal(justOver.grew, false, "a buffer over 64 KiB is not lent from the reserve");
    const upTo = await stalledRelay(64 * KiB);
    relays.push(upTo);
    assert.equal(upTo.grew, true, "a buffer of 64 KiB is");
  } finally {
    await Promise.all(relays.map((stalled) => stalled.end()));
  }
});
