/**
 * Closing a Deno resource that may already be closed: `close()` throws then,
 * and every caller here means "make sure it is closed".
 *
 * @module
 */

/** Closes a connection or listener that may already be closed. */
export function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch {
    // already closed
  }
}
