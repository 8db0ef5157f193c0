/**
 * Runs inside a network namespace that tests/integration_netns_test.ts creates
 * with `unshare -n`, where a dummy interface `ll0` has the link-local address
 * fe80::1 and nothing else exists. A client reaches ferry (on `[::]`) over
 * fe80::1%ll0, the way a LAN client reaches a `.local` name, and tries BIND
 * and UDP ASSOCIATE: Deno reports the address it came in on without its zone,
 * and a socket cannot be bound to a link-local address without one. Also how
 * an IPv4 client of that dual-stack listener is logged.
 *
 * Prints one JSON object: `{ bind: {...}, udp: {...} }`.
 *
 * Run: deno run -A tests/_helpers/linklocal_probe.ts
 */
import dgram from "node:dgram";
import { once } from "node:events";
import { startFerry } from "./ferry.ts";
import { sessionOf } from "./session_log.ts";
import { BufferedConn, deadline, ipv6, socks5, socks5Handshake } from "./socks_client.ts";

const LINK_LOCAL = "fe80::1";
const ZONED = `${LINK_LOCAL}%ll0`;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

await using ferry = await startFerry(["socks", "--listen", "[::]:0", "--bind-timeout", "5s"]);

/** BIND: first reply, a peer connecting to the advertised port, its bytes through. */
async function bind() {
  using client = await BufferedConn.connect(ZONED, ferry.port);
  const first = await socks5Handshake(client, ipv6("::", 0), { command: socks5.Command.Bind });
  const result: Record<string, unknown> = { first: first.reply, firstHost: first.address.host };
  if (first.reply !== socks5.Reply.Succeeded) {
    client.close();
    return { ...result, session: await sessionOf(ferry, client.localAddr) };
  }
  using peer = await BufferedConn.connect(ZONED, first.address.port);
  const second = await client.readMessage(socks5.decodeReply, "second BIND reply");
  await peer.write(encoder.encode("from the peer"));
  const carried = decoder.decode(await client.readExactly(13));
  return { ...result, second: second.reply, carried };
}

/** UDP ASSOCIATE: the reply, and one datagram to an echo server on ::1 and back. */
async function udp() {
  const echo = dgram.createSocket("udp6");
  echo.on("message", (message, from) => echo.send(message, from.port, from.address));
  echo.bind(0, "::1");
  await once(echo, "listening");
  const local = dgram.createSocket("udp6");
  local.bind(0, ZONED);
  await once(local, "listening");
  try {
    using control = await BufferedConn.connect(ZONED, ferry.port);
    const reply = await socks5Handshake(control, ipv6("::", local.address().port), {
      command: socks5.Command.UdpAssociate,
    });
    const result: Record<string, unknown> = { reply: reply.reply, host: reply.address.host };
    if (reply.reply !== socks5.Reply.Succeeded) {
      control.close();
      return { ...result, session: await sessionOf(ferry, control.localAddr) };
    }
    const answer = once(local, "message");
    const header = socks5.encodeUdpHeader(ipv6("::1", echo.address().port));
    const datagram = new Uint8Array([...header, ...encoder.encode("ping")]);
    local.send(datagram, reply.address.port, `${reply.address.host}%ll0`);
    const [message] = await deadline(answer, 5_000, "the echoed datagram") as [Uint8Array];
    return { ...result, echoed: decoder.decode(socks5.decodeUdpDatagram(message).data) };
  } finally {
    local.close();
    echo.close();
  }
}

/** An IPv4 client of the `[::]` listener: how its session line names it. */
async function ipv4Client() {
  using client = await BufferedConn.connect("127.0.0.1", ferry.port);
  client.close();
  // sessionOf accepts the plain form only: 127.0.0.1:PORT.
  const session = await sessionOf(ferry, client.localAddr, 5_000);
  return { client: session.client === `127.0.0.1:${client.localAddr.port}` };
}

const outcome = async (probe: () => Promise<unknown>) => {
  try {
    return await probe();
  } catch (error) {
    return { error: String(error) };
  }
};
console.log(JSON.stringify({
  bind: await outcome(bind),
  udp: await outcome(udp),
  ipv4Client: await outcome(ipv4Client),
}));
