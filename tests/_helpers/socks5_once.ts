/**
 * Starts a ferry command (source or binary) on 127.0.0.1:0, relays one
 * payload through it to a loopback echo server with SOCKS5, and stops it.
 * Every wait is bounded (see socks_client.ts's `deadline`), so a ferry that
 * stops answering fails a test instead of hanging it.
 */
import { addressOf } from "../../src/protocol/address.ts";
import {
  decodeMethodSelection,
  decodeReply,
  encodeGreeting,
  encodeRequest,
} from "../../src/protocol/socks5.ts";
import { deadline, DEFAULT_DEADLINE_MS } from "./socks_client.ts";
import { TextLineStream } from "./text_line_stream.ts";

/** How long ferry may take to say it is listening, and to exit after SIGTERM. */
const START_MS = 30_000;
const EXIT_MS = 10_000;

/**
 * Reads exactly `n` bytes; throws at EOF, or after `ms`, closing `conn`
 * then (which ends the read).
 */
export function readExactly(
  conn: Deno.Conn,
  n: number,
  ms = DEFAULT_DEADLINE_MS,
): Promise<Uint8Array> {
  const reading = (async () => {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const r = await conn.read(out.subarray(got));
      if (r === null) throw new Error(`EOF after ${got} of ${n} bytes`);
      got += r;
    }
    return out;
  })();
  return deadline(reading, ms, `${n} bytes`, () => closeOnce(conn));
}

function closeOnce(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // closed already
  }
}

/** Opens a SOCKS5 (no auth) CONNECT to `target` through the proxy on 127.0.0.1:`proxyPort`. */
export async function socks5Connect(
  proxyPort: number,
  target: { hostname: string; port: number },
): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({
    hostname: "127.0.0.1",
    port: proxyPort,
    signal: AbortSignal.timeout(DEFAULT_DEADLINE_MS),
  });
  try {
    await conn.write(encodeGreeting({ methods: [0] }));
    const method = decodeMethodSelection(await readExactly(conn, 2));
    if (method.kind !== "ok" || method.value !== 0) throw new Error("no-auth not selected");
    await conn.write(
      encodeRequest({ command: 1, address: addressOf(target.hostname, target.port) }),
    );
    const head = await readExactly(conn, 5);
    const rest = head[3] === 4 ? 16 + 2 - 1 : head[3] === 1 ? 4 + 2 - 1 : head[4]! + 2;
    const reply = decodeReply(new Uint8Array([...head, ...await readExactly(conn, rest)]));
    if (reply.kind !== "ok") throw new Error("short reply");
    if (reply.value.reply !== 0) throw new Error(`CONNECT failed with reply ${reply.value.reply}`);
    return conn;
  } catch (error) {
    closeOnce(conn);
    throw error;
  }
}

/** Runs `command socks --listen 127.0.0.1:0 --log-format json`, echoes `payload` through it. */
export async function relayThroughSocks5(
  command: string[],
  payload: Uint8Array,
): Promise<Uint8Array> {
  const echo = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const echoing = (async () => {
    // Counted from now: ferry has START_MS to start listening first.
    const conn = await deadline(
      echo.accept(),
      START_MS + DEFAULT_DEADLINE_MS,
      "ferry's connection",
      () => echo.close(),
    );
    const got = await readExactly(conn, payload.length);
    await conn.write(got);
    conn.close();
  })();
  echoing.catch(() => {}); // awaited below; a failure before then is not "unhandled"
  const [program, ...args] = command;
  const child = new Deno.Command(program!, {
    args: [...args, "socks", "--listen", "127.0.0.1:0", "--log-format", "json"],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // Keep reading stderr to its end, so ferry never writes into a closed pipe.
  const { promise: listening, resolve: foundPort } = Promise.withResolvers<number>();
  const drained = (async () => {
    const lines = child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TextLineStream(),
    );
    for await (const line of lines) {
      const record = JSON.parse(line);
      if (record.event === "listening") foundPort(Number(String(record.listen).split(":").pop()));
    }
    foundPort(0);
  })();
  try {
    const port = await deadline(listening, START_MS, "ferry's listening line");
    if (port === 0) throw new Error("ferry exited before listening");
    const conn = await socks5Connect(port, echo.addr as Deno.NetAddr);
    try {
      await conn.write(payload);
      const echoed = await readExactly(conn, payload.length);
      await echoing;
      return echoed;
    } finally {
      closeOnce(conn);
    }
  } finally {
    try {
      echo.close();
    } catch {
      // closed by its deadline
    }
    await echoing.catch(() => {});
    const kill = (signal: Deno.Signal) => {
      try {
        child.kill(signal);
      } catch {
        // already exited
      }
    };
    kill("SIGTERM");
    const timer = setTimeout(() => kill("SIGKILL"), EXIT_MS);
    await child.status;
    clearTimeout(timer);
    await drained;
  }
}
