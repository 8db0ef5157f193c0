/**
 * OrderedSender, the UDP relay's per-socket sender, against a socket that
 * records its sends and answers them when the test says so.
 */
import assert from "node:assert/strict";
import type dgram from "node:dgram";
import { OrderedSender } from "../src/udp_associate.ts";

/** A stand-in socket: every send waits until the test calls back. */
function recordingSocket() {
  const sent: { payload: string; callback: (error: Error | null) => void }[] = [];
  const socket = {
    send(data: Uint8Array, _port: number, _ip: string, callback: (error: Error | null) => void) {
      sent.push({ payload: new TextDecoder().decode(data), callback });
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

Deno.test("OrderedSender: sends in flight are capped; beyond the cap a datagram is dropped at once", () => {
  const { socket, sent } = recordingSocket();
  const sender = new OrderedSender(socket);
  sender.send(bytes("warm-up"), 9, "127.0.0.1", () => {});
  sent[0]!.callback(null);
  // Overload: no send completes while datagrams keep coming.
  const errors: unknown[] = [];
  for (let i = 0; i < 100; i++) {
    sender.send(bytes(`${i}`), 9, "127.0.0.1", (error) => error && errors.push(error));
  }
  assert.equal(sent.length, 1 + 64, "64 in flight at most");
  assert.equal(errors.length, 36, "the rest dropped, each reported");
  // As sends complete, room comes back.
  for (const s of sent.slice(1, 11)) s.callback(null);
  sender.send(bytes("after"), 9, "127.0.0.1", () => {});
  assert.equal(sent.at(-1)!.payload, "after");
});
