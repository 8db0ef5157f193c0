/** Resetting connections, which Deno's own API cannot do (it has no SO_LINGER). */
import net from "node:net";

/**
 * Connects to 127.0.0.1:`port` and resets the connection at once (SO_LINGER
 * 0, then close). Fails after `ms` if the connect never completes.
 */
export function connectAndReset(port: number, ms = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => socket.resetAndDestroy());
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connect to 127.0.0.1:${port} took longer than ${ms} ms`));
    }, ms);
    socket.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** A server on 127.0.0.1 that resets every connection as soon as it accepts it. */
export async function resettingServer(): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((socket) => socket.resetAndDestroy());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/**
 * A server on 127.0.0.1 that half-closes every connection as it accepts it
 * and then resets it: a dialler whose connect is checked after both arrived
 * (50 dials at once, say) fails with EPIPE, not ECONNRESET, as its socket
 * was in CLOSE_WAIT. A Python process, because the reset must come from
 * outside the dialler's event loop, and Deno cannot set SO_LINGER. It
 * stops by itself after `seconds`.
 */
export async function finThenResetServer(
  seconds = 30,
): Promise<{ port: number; close(): Promise<void> }> {
  const script = `
import socket, struct, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(listener.getsockname()[1], flush=True)
listener.settimeout(${seconds})
try:
    while True:
        conn, _ = listener.accept()
        conn.shutdown(socket.SHUT_WR)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
except socket.timeout:
    pass
`;
  const child = new Deno.Command("python3", {
    args: ["-c", script],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the Python server ended before it printed its port");
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return {
    port: Number(text.trim()),
    close: async () => {
      try {
        child.kill("SIGKILL");
      } catch {
        // ended already
      }
      await child.stdout.cancel().catch(() => {});
      await child.status;
    },
  };
}

/**
 * Connects to 127.0.0.1:`port` with node:net (which can reset), runs `steps`,
 * then resets; the client's address, as `sessionOf()` takes it.
 */
export function clientThatResets(
  port: number,
  steps: (socket: net.Socket) => Promise<void>,
): Promise<Deno.NetAddr> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => {
      steps(socket).then(() => {
        const clientAddr = { transport: "tcp", hostname: "127.0.0.1", port: socket.localPort! };
        socket.resetAndDestroy();
        resolve(clientAddr as Deno.NetAddr);
      }, reject);
    });
    socket.once("error", reject);
  });
}

/** Writes `bytes` and waits for `n` bytes back. */
export function exchange(socket: net.Socket, bytes: Uint8Array, n: number): Promise<void> {
  return new Promise((resolve) => {
    let got = 0;
    const onData = (chunk: Uint8Array) => {
      got += chunk.length;
      if (got < n) return;
      socket.off("data", onData);
      resolve();
    };
    socket.on("data", onData);
    socket.write(bytes);
  });
}
