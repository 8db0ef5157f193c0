/**
 * Targets that are slow to answer a connect, on loopback: a python3 listener
 * with backlog 0 and one client already queued, so the kernel drops further
 * SYNs and a connect to it hangs (the connecting side retries its SYN after
 * 1 s, 3 s, 7 s…).
 */
import assert from "node:assert/strict";
import { deadline } from "./socks_client.ts";

/**
 * Full-queue listeners, one on each IPv4 address given as an argument, all on
 * one port. It prints the port, then waits until its stdin closes.
 */
const FULL_QUEUE_LISTENERS = `
import socket, sys
port, kept = 0, []
for host in sys.argv[1:]:
    listener = socket.socket()
    listener.bind((host, port))
    listener.listen(0)
    port = listener.getsockname()[1]
    kept += [listener, socket.create_connection((host, port))]
print(port, flush=True)
sys.stdin.read()
`;

/**
 * A full-queue listener on 127.0.0.1 that opens when a line comes on its
 * stdin: it takes the queued client off, so the next SYN retry gets in, and
 * serves that one connection: reads it to EOF, sends everything back, closes.
 * It gives up on its own after 30 s.
 */
const OPENING_LISTENER = `
import socket, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(0)
port = listener.getsockname()[1]
queued = socket.create_connection(("127.0.0.1", port))
print(port, flush=True)
if not sys.stdin.readline():
    sys.exit()
listener.accept()[0].close()
queued.close()
listener.settimeout(30)
conn, _ = listener.accept()
conn.settimeout(30)
received = b""
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    received += chunk
conn.sendall(received)
conn.close()
`;

/** A running python listener: its port, a line to its stdin, and a stop. */
interface PythonListener extends AsyncDisposable {
  readonly port: number;
  tell(line: string): Promise<void>;
}

/** Starts `script` with `args` and reads the port it prints first. */
async function startPythonListener(script: string, args: string[]): Promise<PythonListener> {
  const python = new Deno.Command("python3", {
    args: ["-c", script, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const stdin = python.stdin.getWriter();
  const stdout = python.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const stop = async () => {
    await stdin.close().catch(() => {});
    await stdout.cancel();
    await python.status;
  };
  try {
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await deadline(stdout.read(), 10_000, "the python listener's port");
      if (done) throw new Error("python listener exited before printing its port");
      text += value;
    }
    const port = Number(text.trim());
    assert.ok(port > 0, `python printed ${JSON.stringify(text)}`);
    return {
      port,
      tell: (line) => stdin.write(new TextEncoder().encode(`${line}\n`)),
      [Symbol.asyncDispose]: stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Starts {@linkcode FULL_QUEUE_LISTENERS} on `hosts`: their port, and a stop. */
export async function fullQueueListeners(
  hosts: string[],
): Promise<{ readonly port: number } & AsyncDisposable> {
  return await startPythonListener(FULL_QUEUE_LISTENERS, hosts);
}

/**
 * Starts {@linkcode OPENING_LISTENER}: its port, `open()` to let the next
 * SYN in, and a stop.
 */
export async function openingListener(): Promise<
  { readonly port: number; open(): Promise<void> } & AsyncDisposable
> {
  const listener = await startPythonListener(OPENING_LISTENER, []);
  return {
    port: listener.port,
    open: () => listener.tell("open"),
    [Symbol.asyncDispose]: () => listener[Symbol.asyncDispose](),
  };
}
