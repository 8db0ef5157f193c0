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
  // accept(2) on Linux: "pass already-pending network errors on the new
  // socket as an error code from accept()", and the errors it lists for that.
  const oneConnection = [
    "ENOTCONN",
    "ECONNABORTED",
    "ECONNRESET",
    "ETIMEDOUT",
    "EPROTO",
    "ENOPROTOOPT",
    "EOPNOTSUPP",
    "ENETDOWN",
    "ENETUNREACH",
    "EHOSTDOWN",
    "EHOSTUNREACH",
    "ENONET",
  ];
  for (const code of oneConnection) {
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
