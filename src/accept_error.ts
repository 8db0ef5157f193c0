/**
 * Which accept() errors a listener can skip, for the server's accept loop and
 * BIND's listener alike.
 *
 * @module
 */

/**
 * Accept errors that belong to the one connection they came with, not to the
 * listener: the client reset or gave up while its connection waited in the
 * queue (Deno's accept() then fails on getpeername() with ENOTCONN), or an
 * error was pending on the new socket (accept(2) lists these). The next
 * connection in the queue may be fine, so the loop accepts again at once.
 * Backing off on them let one client that connects and resets in a loop keep
 * every other client waiting behind it for minutes.
 */
const ONE_CONNECTION_ERRORS: ReadonlySet<string> = new Set([
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
]);

/** Whether an accept error was the one connection's, so accepting again at once is right. */
export function isOneConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && ONE_CONNECTION_ERRORS.has(code);
}
