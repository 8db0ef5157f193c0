/**
 * Raw UDP ASSOCIATE clients and UDP echo servers on loopback, built on the
 * codecs: for tests/integration_udp_test.ts and the network-namespace probes.
 */
import dgram from "node:dgram";
import { once } from "node:events";
import type { Buffer } from "node:buffer";
import { BufferedConn, deadline, domain, ipv4, socks5, socks5Handshake } from "./socks_client.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A UDP socket on loopback (node:dgram: Deno.listenDatagram needs --unstable-net). */
export async function udpSocket(host = "127.0.0.1", port = 0): Promise<dgram.Socket> {
  const socket = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  socket.bind(port, host);
  await once(socket, "listening");
  return socket;
}

/** Closes `socket` and waits until it is closed. */
export async function closeUdp(socket: dgram.Socket): Promise<void> {
  const closed = once(socket, "close");
  socket.close();
  await closed;
}

/**
 * An echo server: every datagram goes back to its sender; `received` keeps
 * the payloads, `senderPorts` the ports they came from.
 */
export async function udpEcho(host = "127.0.0.1") {
  const socket = await udpSocket(host);
  const received: string[] = [];
  const senderPorts: number[] = [];
  socket.on("message", (message, from) => {
    received.push(decoder.decode(message));
    senderPorts.push(from.port);
    socket.send(message, from.port, from.address);
  });
  return {
    socket,
    received,
    senderPorts,
    port: socket.address().port,
    [Symbol.asyncDispose]: () => closeUdp(socket),
  };
}

/** The next datagram `socket` receives, within `ms`. */
export function nextDatagram(socket: dgram.Socket, ms = 5000): Promise<Uint8Array> {
  return deadline(
    once(socket, "message").then(([message]) => new Uint8Array(message as Buffer)),
    ms,
    "a datagram",
  );
}

/** A SOCKS5 UDP datagram: the header for `address`, then `data` (text, or a whole datagram to nest). */
export function frame(
  address: socks5.ReplyMessage["address"],
  data: string | Uint8Array,
): Uint8Array {
  const header = socks5.encodeUdpHeader(address);
  const payload = typeof data === "string" ? encoder.encode(data) : data;
  const out = new Uint8Array(header.length + payload.length);
  out.set(header);
  out.set(payload, header.length);
  return out;
}

/**
 * A raw UDP ASSOCIATE: the control connection, the client's UDP socket, and
 * the relay's port. The control connection goes to `via` (ferry's own
 * address if not given).
 */
export async function associate(
  ferry: { hostname: string; port: number },
  declaredPort?: number,
  via = ferry.hostname,
) {
  const local = await udpSocket();
  const control = await BufferedConn.connect(via, ferry.port);
  const reply = await socks5Handshake(
    control,
    ipv4("0.0.0.0", declaredPort ?? local.address().port),
    { command: socks5.Command.UdpAssociate },
  );
  return {
    local,
    control,
    reply,
    async [Symbol.asyncDispose]() {
      control.close();
      await closeUdp(local);
    },
  };
}

/**
 * Datagrams the kernel dropped, its receive buffer full, on this network
 * namespace's UDP sockets bound to local `port` (/proc/net/udp's and udp6's
 * last column): a burst a busy process did not read in time never reaches
 * its counters.
 */
export async function kernelDrops(port: number): Promise<number> {
  let drops = 0;
  for (const table of ["/proc/net/udp", "/proc/net/udp6"]) {
    const lines = (await Deno.readTextFile(table)).trim().split("\n").slice(1);
    for (const line of lines) {
      const fields = line.trim().split(/\s+/);
      if (parseInt(fields[1]!.split(":")[1]!, 16) === port) drops += Number(fields.at(-1));
    }
  }
  return drops;
}

/**
 * Sends each datagram once the last has gone: Deno's node:dgram may send a
 * burst in reverse (see OrderedSender in src/udp_associate.ts), and these
 * tests check the order ferry keeps.
 */
export async function sendInOrder(
  socket: dgram.Socket,
  datagrams: Uint8Array[],
  port: number,
  host = "127.0.0.1",
): Promise<void> {
  for (const datagram of datagrams) {
    await new Promise<void>((resolve, reject) =>
      socket.send(datagram, port, host, (error) => error ? reject(error) : resolve())
    );
  }
}

/** Waits until `received` holds `count` payloads (5 s at most). */
export async function receivedAtLeast(received: string[], count: number): Promise<void> {
  for (const started = performance.now(); received.length < count;) {
    if (performance.now() - started > 5000) {
      throw new Error(`${received.length} of ${count} datagrams arrived`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * A CONNECT through `ferry` to `localhost` (which needs a lookup slot of the
 * client's share) on `port`: its reply, and how long that took. The last
 * step of the probes of UDP lookups holding those slots.
 */
export async function connectByName(
  ferry: { hostname: string; port: number },
  port: number,
): Promise<{ reply: number; ms: number }> {
  const started = performance.now();
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks5Handshake(client, domain("localhost", port));
  return { reply: reply.reply, ms: Math.round(performance.now() - started) };
}
