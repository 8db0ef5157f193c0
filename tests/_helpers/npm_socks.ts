/**
 * The npm `socks` client, as the BIND and UDP ASSOCIATE tests use it.
 *
 * @module
 */
import type { SocksClient } from "socks";

/**
 * Starts `client`. Its `connect()` arms a timer for its `timeout` option and
 * never clears it, even once established (socks 2.8.11,
 * build/client/socksclient.js); the timer is unref'd, so it keeps nothing
 * alive, but Deno's op sanitizer would count it against the test it ends in.
 * Disposing the result clears it.
 */
export function connectSocksClient(client: SocksClient): Disposable {
  const realSetTimeout = globalThis.setTimeout;
  const timers: ReturnType<typeof setTimeout>[] = [];
  globalThis.setTimeout = ((...args: Parameters<typeof realSetTimeout>) => {
    const timer = realSetTimeout(...args);
    timers.push(timer);
    return timer;
  }) as typeof realSetTimeout;
  try {
    client.connect();
  } finally {
    globalThis.setTimeout = realSetTimeout;
  }
  return {
    [Symbol.dispose]() {
      for (const timer of timers) clearTimeout(timer);
    },
  };
}
