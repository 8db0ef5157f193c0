/** Resetting connections, which Deno's own API cannot do (it has no SO_LINGER). */
import net from "node:net";

/** Connects to 127.0.0.1:`port` and resets the connection at once (SO_LINGER 0, then close). */
export function connectAndReset(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => socket.resetAndDestroy());
    socket.once("close", () => resolve());
    socket.once("error", reject);
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
