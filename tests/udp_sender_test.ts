/**
 * OrderedSender, the UDP relay's per-socket sender, against a socket that
 * records its sends and answers them when the test says so.
 */
import assert from "node:assert/strict";
import type dgram from "node:dgram";
import { OrderedSender } from "../src/udp_associate.ts";

/** A stand-in socket: every send waits until the test calls back. */
function recordingSocket() {
  const sent: {
    payload: string;
    data: Uint8Array;
    callback: (error: Error | null) => void;
  }[] = [];
  const socket = {
    send(data: Uint8Array, _port: number, _ip: string, callback: (error: Error | null) => void) {
      sent.push({ payload: new TextDecoder().decode(data), data, callback });
    },
  } as unknown as dgram.Socket;
  return { socket, sent };
}

const bytes = (text: string) => new TextEncoder().encode(text);

Deno.test("OrderedSender: the first datagram goes alone; the rest follow its callback, in order", () => {
  const { socket, sent } = recordingSocket();
  const sender = new OrderedSender(socket);
  const results: string[] = [];
  for (const text of ["a", "b", "c"]) {
    sender.send(bytes(text), 9, "127.0.0.1", (error) => results.push(`${text}:${error ?? "ok"}`));
  }
  assert.deepEqual(sent.map((s) => s.payload), ["a"], "b and c wait for a's callback");
  sent[0]!.callback(null);
  assert.deepEqual(sent.map((s) => s.payload), ["a", "b", "c"]);
  assert.deepEqual(results, ["a:ok"]);
});

Deno.test("OrderedSender: 64 sends in flight at most; a burst beyond waits its turn, in order", () => {
  // Thousands of sends at once on one socket can hang in Deno; beyond 64 in
  // flight a datagram used to be dropped, so a burst of 65 lost one.
  const { socket, sent } = recordingSocket();
  const sender = new OrderedSender(socket);
  sender.send(bytes("warm-up"), 9, "127.0.0.1", () => {});
  sent[0]!.callback(null);
  const errors: unknown[] = [];
  for (let i = 0; i < 2000; i++) {
    sender.send(bytes(`${i}`), 9, "127.0.0.1", (error) => error && errors.push(error));
  }
  assert.equal(sent.length, 1 + 64, "64 in flight");
  assert.equal(errors.length, 2000 - 64 - 256, "256 queued, the rest dropped, each reported");
  // Each completed send lets the next queued one go, in order.
  for (const s of sent.slice(1, 11)) s.callback(null);
  assert.equal(sent.length, 1 + 64 + 10);
  assert.deepEqual(sent.slice(65).map((s) => s.payload), [
    "64",
    "65",
    "66",
    "67",
    "68",
    "69",
    "70",
    "71",
    "72",
    "73",
  ]);
  // A send made now queues behind them rather than overtaking.
  sender.send(bytes("after"), 9, "127.0.0.1", () => {});
  assert.notEqual(sent.at(-1)!.payload, "after");
});

Deno.test("OrderedSender: the queue is bounded in bytes too, and holds copies, not views", () => {
  const { socket, sent } = recordingSocket();
  const sender = new OrderedSender(socket);
  sender.send(bytes("warm-up"), 9, "127.0.0.1", () => {});
  sent[0]!.callback(null);
  for (let i = 0; i < 64; i++) sender.send(bytes(`${i}`), 9, "127.0.0.1", () => {});
  // Like a received datagram: 60,000 bytes viewed in a 64 KiB buffer.
  const receiveBuffer = new Uint8Array(65536);
  const big = receiveBuffer.subarray(0, 60_000);
  let dropped = 0;
  for (let i = 0; i < 20; i++) sender.send(big, 9, "127.0.0.1", (error) => error && dropped++);
  assert.equal(dropped, 20 - Math.floor(256 * 1024 / 60_000), "256 KiB of datagrams queued");
  sent[1]!.callback(null);
  const queued = sent.at(-1)!;
  assert.equal(queued.payload.length, 60_000);
  assert.equal(queued.data.buffer.byteLength, 60_000, "a copy, not a view of the 64 KiB buffer");
});

Deno.test("OrderedSender: the queue takes exactly 256 KiB, and what has gone out frees its room", () => {
  const { socket, sent } = recordingSocket();
  const sender = new OrderedSender(socket);
  sender.send(bytes("warm-up"), 9, "127.0.0.1", () => {});
  sent[0]!.callback(null);
  const errors: unknown[] = [];
  const burst = () => {
    for (let i = 0; i < 64; i++) sender.send(bytes(`${i}`), 9, "127.0.0.1", () => {});
    for (let i = 0; i < 5; i++) {
      sender.send(
        new Uint8Array(64 * 1024),
        9,
        "127.0.0.1",
        (error) => error && errors.push(error),
      );
    }
  };
  // 64 in flight, then four of 64 KiB fill the queue to its very bound: a fifth is too many.
  burst();
  assert.equal(errors.length, 1, "256 KiB queued at most, and at least");
  // Every send completes, those queued too: the queue is empty again.
  for (let i = 1; i < sent.length; i++) sent[i]!.callback(null);
  assert.equal(sent.length, 1 + 64 + 4);
  // Had their bytes stayed counted, none of these would find room.
  burst();
  assert.equal(errors.length, 2, "the same four queue again");
});
