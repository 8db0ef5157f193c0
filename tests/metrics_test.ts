/** The process-wide counters of src/metrics.ts, as the `stopped` line reports them. */
import assert from "node:assert/strict";
import { Metrics } from "../src/metrics.ts";

Deno.test("Metrics.sessionEnded() counts sessions by outcome and bytes each way", () => {
  const metrics = new Metrics();
  metrics.sessionEnded("ok", 10, 200);
  metrics.sessionEnded("connection-refused", 3, 0);
  metrics.sessionEnded("ok", 5, 7);
  assert.equal(metrics.sessionsOk, 2);
  assert.equal(metrics.sessionsFailed, 1);
  assert.deepEqual(
    [...metrics.outcomes],
    [["ok", 2], ["connection-refused", 1]],
  );
  // Up and down differ here: a swap of the two would show.
  assert.equal(metrics.bytesUp, 18);
  assert.equal(metrics.bytesDown, 207);
});

Deno.test("Metrics.snapshot() reports every counter under its own name", () => {
  const metrics = new Metrics();
  metrics.accepted = 1;
  metrics.rejectedMaxConns = 2;
  metrics.rejectedPerIp = 3;
  metrics.acceptErrors = 4;
  metrics.internalErrors = 5;
  metrics.sessionEnded("ok", 6, 7);
  metrics.sessionEnded("auth-failed", 0, 0);
  assert.deepEqual(metrics.snapshot(), {
    accepted: 1,
    rejectedMaxConns: 2,
    rejectedPerIp: 3,
    acceptErrors: 4,
    internalErrors: 5,
    sessionsOk: 1,
    sessionsFailed: 1,
    bytesUp: 6,
    bytesDown: 7,
  });
});
