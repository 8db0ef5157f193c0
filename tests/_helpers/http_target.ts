/**
 * A raw HTTP/1.1 server on loopback that serves one fixed body and records,
 * per connection, exactly how many bytes it received and sent, so tests can
 * compare them with the byte counts ferry logs for the session.
 */
import { concat } from "./socks_client.ts";

/** What one connection to the target exchanged. */
export interface Exchange {
  /** The peer's address, as the target saw it (ferry's outbound socket). */
  readonly peer: Deno.NetAddr;
  /** The request head, as text. */
  readonly head: string;
  /** Bytes received on the connection, until EOF. */
  readonly received: number;
  /** Bytes sent on the connection (head and body). */
  readonly sent: number;
}

const HEADER_END = new TextEncoder().encode("\r\n\r\n");

function indexOfHeaderEnd(bytes: Uint8Array): number {
  outer: for (let i = 0; i + HEADER_END.length <= bytes.length; i++) {
    for (let j = 0; j < HEADER_END.length; j++) {
      if (bytes[i + j] !== HEADER_END[j]) continue outer;
    }
    return i + HEADER_END.length;
  }
  return -1;
}

/** Binds `hostnames` (e.g. 127.0.0.1 and ::1) to one common free port. */
function listenAll(hostnames: readonly string[]): Deno.TcpListener[] {
  for (let attempt = 0; attempt < 20; attempt++) {
    const first = Deno.listen({ hostname: hostnames[0]!, port: 0 });
    const listeners = [first];
    try {
      for (const hostname of hostnames.slice(1)) {
        listeners.push(Deno.listen({ hostname, port: first.addr.port }));
      }
      return listeners;
    } catch (error) {
      for (const listener of listeners) listener.close();
      if (!(error instanceof Deno.errors.AddrInUse)) throw error;
    }
  }
  throw new Error(`could not bind ${hostnames.join(", ")} to one port`);
}

/** The HTTP target. Dispose it to stop listening and wait for its connections. */
export class HttpTarget implements AsyncDisposable {
  readonly port: number;
  readonly body: Uint8Array;
  readonly exchanges: Exchange[] = [];
  /**
   * Connections accepted, whether or not a request followed: `exchanges`
   * records only requests served, so a dial that sent nothing is seen here.
   */
  accepted = 0;
  readonly #listeners: Deno.TcpListener[];
  readonly #conns = new Set<Deno.Conn>();
  readonly #loops: Promise<void>[] = [];
  readonly #handlers = new Set<Promise<void>>();
  readonly #waiters: ((exchange: Exchange) => void)[] = [];

  private constructor(listeners: Deno.TcpListener[], body: Uint8Array) {
    this.#listeners = listeners;
    this.port = listeners[0]!.addr.port;
    this.body = body;
    for (const listener of listeners) this.#loops.push(this.#acceptLoop(listener));
  }

  /** Serves `body` on `hostnames` (all on one port). */
  static start(body: Uint8Array, hostnames: readonly string[] = ["127.0.0.1"]): HttpTarget {
    return new HttpTarget(listenAll(hostnames), body);
  }

  async #acceptLoop(listener: Deno.TcpListener): Promise<void> {
    try {
      for await (const conn of listener) {
        this.accepted++;
        this.#conns.add(conn);
        const handler = this.#handle(conn).finally(() => {
          this.#conns.delete(conn);
          this.#handlers.delete(handler);
        });
        this.#handlers.add(handler);
      }
    } catch {
      // listener closed
    }
  }

  async #handle(conn: Deno.Conn): Promise<void> {
    let received = 0;
    let sent = 0;
    const parts: Uint8Array[] = [];
    const chunk = new Uint8Array(64 * 1024);
    let head = "";
    try {
      while (true) {
        const n = await conn.read(chunk);
        if (n === null) return;
        received += n;
        parts.push(chunk.slice(0, n));
        const all = concat(parts);
        const end = indexOfHeaderEnd(all);
        if (end >= 0) {
          head = new TextDecoder().decode(all.subarray(0, end));
          break;
        }
      }
      const responseHead = new TextEncoder().encode(
        `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n` +
          `Content-Length: ${this.body.length}\r\nConnection: close\r\n\r\n`,
      );
      for (const bytes of [responseHead, this.body]) {
        let at = 0;
        while (at < bytes.length) at += await conn.write(bytes.subarray(at));
        sent += bytes.length;
      }
      await conn.closeWrite();
      while (true) {
        const n = await conn.read(chunk);
        if (n === null) break;
        received += n;
      }
      const exchange = { peer: conn.remoteAddr as Deno.NetAddr, head, received, sent };
      this.exchanges.push(exchange);
      for (const waiter of this.#waiters.splice(0)) waiter(exchange);
    } catch {
      // the client went away; the test notices through curl
    } finally {
      try {
        conn.close();
      } catch {
        // closed on dispose
      }
    }
  }

  /** Resolves with the next completed exchange (or the first one, if one already completed). */
  nextExchange(index = 0, ms = 10_000): Promise<Exchange> {
    const done = this.exchanges[index];
    if (done) return Promise.resolve(done);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no HTTP exchange in ${ms} ms`)), ms);
      this.#waiters.push((exchange) => {
        clearTimeout(timer);
        resolve(exchange);
      });
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const listener of this.#listeners) {
      try {
        listener.close();
      } catch {
        // already closed
      }
    }
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }
    await Promise.all([...this.#loops, ...this.#handlers]);
  }
}
