/**
 * Support for the port forwarder's tests: a scriptable loopback upstream that
 * counts and tracks every connection it accepts, a bounded poll, and a LogTape
 * sink that keeps ferry's log records in memory for in-process tests.
 */
import { configure, type LogRecord } from "@logtape/logtape";
import { BufferedConn } from "./socks_client.ts";

/** Polls `condition` every 10 ms until it holds; throws after `ms`. */
export async function waitUntil(
  condition: () => boolean | Promise<boolean>,
  what: string,
  ms = 10_000,
): Promise<void> {
  const end = performance.now() + ms;
  while (!await condition()) {
    if (performance.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** One connection accepted by a {@linkcode ForwardUpstream}. */
export interface AcceptedConn {
  /** 0 for the first connection the upstream accepted, and so on. */
  readonly index: number;
  /** `performance.now()` at accept. */
  readonly acceptedAt: number;
  readonly conn: BufferedConn;
  /** Whether the handler has ended and the socket is closed. */
  closed: boolean;
}

/** What an upstream does with each accepted connection; the socket is closed after it. */
export type UpstreamHandler = (accepted: AcceptedConn) => Promise<void>;

/**
 * A loopback TCP server for the forwarder to forward to. Each accepted
 * connection runs `handler`, then is closed. `stop()` closes the listener and
 * every open connection (an upstream restart), and waits for the handlers.
 */
export class ForwardUpstream implements AsyncDisposable {
  readonly listener: Deno.TcpListener;
  readonly connections: AcceptedConn[] = [];
  /** Errors the handlers threw, other than the connection being closed under them. */
  readonly errors: unknown[] = [];
  readonly #handlers = new Set<Promise<void>>();
  readonly #loop: Promise<void>;
  #stopped = false;

  constructor(handler: UpstreamHandler, port = 0) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port, transport: "tcp" });
    this.listener = listener;
    this.#loop = (async () => {
      for (;;) {
        let conn: Deno.TcpConn;
        try {
          conn = await listener.accept();
        } catch {
          return; // listener closed
        }
        conn.setNoDelay(true);
        const accepted: AcceptedConn = {
          index: this.connections.length,
          acceptedAt: performance.now(),
          conn: new BufferedConn(conn),
          closed: false,
        };
        this.connections.push(accepted);
        const running = handler(accepted)
          .catch((error) => {
            if (!this.#stopped && !isConnectionEnd(error)) this.errors.push(error);
          })
          .finally(() => {
            accepted.conn.close();
            accepted.closed = true;
            this.#handlers.delete(running);
          });
        this.#handlers.add(running);
      }
    })();
  }

  get port(): number {
    return this.listener.addr.port;
  }

  /** `127.0.0.1:PORT`, as ferry names the upstream. */
  get name(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Connections accepted so far. */
  get accepted(): number {
    return this.connections.length;
  }

  /** Connections accepted and not yet closed. */
  get open(): number {
    return this.connections.filter((c) => !c.closed).length;
  }

  /** Closes the listener and every accepted connection, and waits for the handlers. */
  async stop(): Promise<void> {
    if (!this.#stopped) {
      this.#stopped = true;
      try {
        this.listener.close();
      } catch {
        // already closed
      }
    }
    for (const c of this.connections) c.conn.close();
    await this.#loop;
    await Promise.all([...this.#handlers]);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/** Errors that only mean the connection ended under a handler. */
export function isConnectionEnd(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.ConnectionAborted ||
    (error instanceof Error && /connection closed|timed out/.test(error.message));
}

const encoder = new TextEncoder();

/**
 * A handler that answers the first bytes it receives with `tag` and a newline
 * (calling `onFirstData` just before), then echoes everything until EOF. Idle
 * connections (pooled, never used) just wait for EOF.
 */
export function taggedEcho(
  tag: string,
  onFirstData: (accepted: AcceptedConn) => void = () => {},
): UpstreamHandler {
  return async (accepted) => {
    const { conn } = accepted;
    const buffer = new Uint8Array(64 * 1024);
    let first = true;
    for (;;) {
      const n = await conn.conn.read(buffer);
      if (n === null) break;
      if (first) {
        first = false;
        onFirstData(accepted);
        await conn.write(encoder.encode(`${tag}\n`));
      }
      await conn.write(buffer.subarray(0, n));
    }
  };
}

/** Log records kept in memory, as emitted by ferry's loggers. */
export interface CapturedLogs {
  readonly records: LogRecord[];
  /** Flattened properties of every record whose `event` is `event`. */
  events(event: string): Record<string, unknown>[];
}

/** Routes every `ferry` log record into memory (replacing any LogTape configuration). */
export async function captureLogs(): Promise<CapturedLogs> {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { memory: (record: LogRecord) => records.push(record) },
    loggers: [
      { category: ["ferry"], lowestLevel: "debug", sinks: ["memory"] },
      { category: ["logtape", "meta"], lowestLevel: "error", sinks: [] },
    ],
  });
  return {
    records,
    events: (event) => records.map((r) => r.properties).filter((p) => p.event === event),
  };
}

/** One TCP socket as `ss -tanpH` lists it. */
export interface SocketInfo {
  readonly state: string;
  readonly local: string;
  readonly peer: string;
  readonly process: string;
}

/** Every TCP socket `ss -tanpH` attributes to process `pid`. */
export async function tcpSocketsOf(pid: number): Promise<SocketInfo[]> {
  const { stdout, success } = await new Deno.Command("ss", {
    args: ["-tanpH"],
    stdout: "piped",
    stderr: "null",
  }).output();
  if (!success) throw new Error("ss -tanpH failed");
  return new TextDecoder().decode(stdout).split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields.length >= 6 && fields.slice(5).join(" ").includes(`pid=${pid},`))
    .map((fields) => ({
      state: fields[0]!,
      local: fields[3]!,
      peer: fields[4]!,
      process: fields.slice(5).join(" "),
    }));
}

/**
 * A loopback port nothing listens on, chosen below the kernel's ephemeral
 * range: a port from `listen(0)` can be taken, once closed, as the source port
 * of anyone's outgoing connection (or a new `listen(0)`), which breaks tests
 * that need it refused now and free to listen on later.
 */
export function unusedPort(): number {
  let low = 32768;
  try {
    const range = Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range");
    low = Number(range.trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: keep the usual bound
  }
  const min = 10_000;
  for (let attempt = 0; attempt < 200 && low - min > 1000; attempt++) {
    const port = min + Math.floor(Math.random() * (low - min));
    try {
      Deno.listen({ hostname: "127.0.0.1", port, transport: "tcp" }).close();
      return port;
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse)) throw error;
    }
  }
  throw new Error(`no free port found in ${min}–${low - 1}`);
}
