/**
 * Which accept() errors the accept loops skip at once (src/accept_error.ts),
 * and which make them back off.
 */
import assert from "node:assert/strict";
import { isOneConnectionError } from "../src/accept_error.ts";

const withCode = (code: string) => Object.assign(new Error(code), { code });

Deno.test("accept errors of the one connection they came with are skipped at once", () => {
  // A client that reset or gave up in the queue (Deno's accept() then fails
  // on getpeername() with ENOTCONN), or an error pending on its socket
  // (accept(2)): backing off on these let one such client in a loop keep
  // every other waiting.
  for (const code of ["ENOTCONN", "ECONNABORTED", "ECONNRESET", "EPROTO", "ENETUNREACH"]) {
    assert.equal(isOneConnectionError(withCode(code)), true, code);
  }
});

Deno.test("accept errors of the listener or the process are not skipped: the loop backs off", () => {
  for (const code of ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "EBADF", "EINVAL"]) {
    assert.equal(isOneConnectionError(withCode(code)), false, code);
  }
  assert.equal(isOneConnectionError(new Error("no code")), false);
  assert.equal(isOneConnectionError(null), false);
});
