/**
 * WaitingClient (src/waiting_client.ts) over a scripted connection: what it
 * keeps, when it stops reading, how a reset surfaces, and how the read in
 * flight reaches the relay.
 */
import assert from "node:assert/strict";
import type { RelayEnd } from "../src/relay.ts";
import { WaitingClient } from "../src/waiting_client.ts";

/** A connection whose reads are answered by the test, one at a time, in order. */
class ScriptedConn implements RelayEnd {
  readonly reads: { buffer: Uint8Array; answer: (bytes: Uint8Array | null | Error) => void }[] = [];

  read(buffer: Uint8Array): Promise<number | null> {
    return new Promise((resolve, reject) => {
      this.reads.push({
        buffer,
        answer: (bytes) => {
          if (bytes instanceof Error) return reject(bytes);
          if (bytes === null) return resolve(null);
          buffer.set(bytes);
          resolve(bytes.length);
        },
      });
    });
  }
  write(bytes: Uint8Array): Promise<number> {
    return Promise.resolve(bytes.length);
  }
  closeWrite(): Promise<void> {
    return Promise.resolve();
  }
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

Deno.test("WaitingClient keeps every read's bytes in order, and stops when told there is no room", async () => {
  const conn = new ScriptedConn();
  const kept: number[][] = [];
  new WaitingClient(conn, (bytes) => kept.push([...bytes]) < 2);
  conn.reads[0]!.answer(Uint8Array.of(1, 2));
  await tick();
  conn.reads[1]!.answer(Uint8Array.of(3));
  await tick();
  assert.deepEqual(kept, [[1, 2], [3]]);
  assert.equal(conn.reads.length, 2, "no third read once keep() said no");
});

Deno.test("WaitingClient: a reset rejects gone and marks the wait failed; EOF does neither", async () => {
  const reset = new ScriptedConn();
  const failing = new WaitingClient(reset, () => true);
  reset.reads[0]!.answer(new Deno.errors.ConnectionReset("reset"));
  await assert.rejects(failing.gone, Deno.errors.ConnectionReset);
  assert.equal(failing.failed, true);
  // Failed just as the peer came: the relay's first read gets the reset, then the connection.
  const relayEnd = failing.release();
  await assert.rejects(relayEnd.read(new Uint8Array(4)), Deno.errors.ConnectionReset);
  const after = relayEnd.read(new Uint8Array(4));
  reset.reads[1]!.answer(null);
  assert.equal(await after, null);

  const closed = new ScriptedConn();
  const waiting = new WaitingClient(closed, () => true);
  closed.reads[0]!.answer(null);
  await tick();
  assert.equal(waiting.failed, false);
  assert.equal(closed.reads.length, 1, "no read after EOF");
  // Nothing in flight: the relay reads the connection itself (and sees EOF again).
  assert.equal(waiting.release(), closed);
});

Deno.test("WaitingClient hands the read in flight to the relay, whose short buffer gets the rest next", async () => {
  const conn = new ScriptedConn();
  const kept: number[] = [];
  const waiting = new WaitingClient(conn, (bytes) => (kept.push(...bytes), true));
  const client = waiting.release();
  const first = new Uint8Array(3);
  const firstRead = client.read(first);
  conn.reads[0]!.answer(Uint8Array.of(1, 2, 3, 4, 5));
  assert.equal(await firstRead, 3);
  assert.deepEqual([...first], [1, 2, 3]);
  const second = new Uint8Array(8);
  assert.equal(await client.read(second), 2);
  assert.deepEqual([...second.subarray(0, 2)], [4, 5]);
  assert.deepEqual(kept, [], "the relay's bytes, not kept for early data");
  // Then the connection itself.
  const third = client.read(new Uint8Array(8));
  assert.equal(conn.reads.length, 2);
  conn.reads[1]!.answer(null);
  assert.equal(await third, null);
  // A reset after the hand-over is the relay's, not the wait's.
  const later = new ScriptedConn();
  const handed = new WaitingClient(later, () => true);
  const relayRead = handed.release().read(new Uint8Array(4));
  later.reads[0]!.answer(new Deno.errors.ConnectionReset("reset"));
  await assert.rejects(relayRead, Deno.errors.ConnectionReset);
  assert.equal(handed.failed, false);
});

Deno.test("WaitingClient: EOF on the read handed to the relay reaches the relay as EOF", async () => {
  // A client that half-closes just as the peer comes: the relay must see
  // null (end of stream), not a zero-byte read it would take for data.
  const conn = new ScriptedConn();
  const waiting = new WaitingClient(conn, () => true);
  const relayRead = waiting.release().read(new Uint8Array(8));
  conn.reads[0]!.answer(null);
  assert.equal(await relayRead, null);
});

Deno.test("WaitingClient: the relay's writes and half-close reach the client", async () => {
  // With a read in flight the relay gets a wrapper: it must still pass the
  // peer's bytes and its EOF on to the client.
  const conn = new ScriptedConn();
  const written: number[][] = [];
  let closedWrite = 0;
  conn.write = (bytes) => (written.push([...bytes]), Promise.resolve(bytes.length));
  conn.closeWrite = () => (closedWrite++, Promise.resolve());
  const client = new WaitingClient(conn, () => true).release();
  assert.notEqual(client, conn, "a read is in flight, so the relay gets a wrapper");
  assert.equal(await client.write(Uint8Array.of(7, 8)), 2);
  await client.closeWrite();
  assert.deepEqual(written, [[7, 8]]);
  assert.equal(closedWrite, 1);
  conn.reads[0]!.answer(null); // end the read in flight
  assert.equal(await client.read(new Uint8Array(4)), null);
});

Deno.test("WaitingClient: a reset while nobody awaits gone is no unhandled rejection", async () => {
  // gone is only raced while the BIND waits; a reset at any other time must
  // not end the process with an unhandled rejection.
  const conn = new ScriptedConn();
  const waiting = new WaitingClient(conn, () => true);
  conn.reads[0]!.answer(new Deno.errors.ConnectionReset("reset"));
  await tick();
  assert.equal(waiting.failed, true);
});
