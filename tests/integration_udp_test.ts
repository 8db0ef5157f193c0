/**
 * UDP ASSOCIATE with real clients: PySocks (python3-socks) and the npm
 * `socks` package, plus a raw client built on the codecs for malformed
 * datagrams, the per-IP limit and idle eviction. Echo servers on loopback.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { once } from "node:events";
import { Buffer } from "node:buffer";
import net, { type Socket } from "node:net";
import { SocksClient } from "socks";
import { type FerryProcess, type LogLine, startFerry } from "./_helpers/ferry.ts";
import { connectSocksClient } from "./_helpers/npm_socks.ts";
import { sessionOf } from "./_helpers/session_log.ts";
import { ss } from "./_helpers/ss.ts";
import { TextLineStream } from "./_helpers/text_line_stream.ts";
import { wildcardIsIpv6Only } from "../src/config.ts";
import type { Address } from "../src/protocol/address.ts";
import {
  associate,
  closeUdp,
  frame,
  nextDatagram,
  receivedAtLeast,
  sendInOrder,
  udpEcho,
  udpSocket,
} from "./_helpers/udp_support.ts";
import {
  BufferedConn,
  concat,
  deadline,
  domain,
  ipv4,
  ipv6,
  socks5,
  socks5Handshake,
} from "./_helpers/socks_client.ts";

/** What the npm client's "established" event carries (its typings do not export the type). */
interface SocksEstablished {
  readonly socket: Socket;
  readonly remoteHost?: { host: string; port: number };
}

const LISTEN = ["socks", "--listen", "127.0.0.1:0"];
const PYSOCKS_HELPER = new URL("./_helpers/pysocks_udp.py", import.meta.url).pathname;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** PySocks comes from Debian's python3-socks, so the system interpreter runs it. */
function systemPython(): string {
  try {
    Deno.statSync("/usr/bin/python3");
    return "/usr/bin/python3";
  } catch {
    return "python3";
  }
}

/** Whether some socket holds UDP `host:port`: binding it fails with EADDRINUSE. */
async function udpPortTaken(host: string, port: number): Promise<boolean> {
  const socket = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  const bound = once(socket, "listening").then(() => false, (error) => {
    if ((error as { code?: string }).code === "EADDRINUSE") return true;
    throw error;
  });
  socket.bind(port, host);
  const taken = await bound;
  if (!taken) await closeUdp(socket);
  return taken;
}

Deno.test("PySocks: UDP through ferry by IPv4 address and by name, third parties dropped, relay closed with its TCP connection", async () => {
  await using ferry = await startFerry(LISTEN);
  const child = new Deno.Command(systemPython(), {
    args: [PYSOCKS_HELPER, ferry.hostname, String(ferry.port)],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream(),
  ).getReader();
  const stdin = child.stdin.getWriter();
  const next = async (): Promise<Record<string, unknown>> => {
    const { value, done } = await deadline(lines.read(), 15_000, "PySocks output", () => {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
    });
    if (done) {
      const errors = await stderr.read();
      throw new Error(`PySocks helper ended early: ${errors.value ?? ""}`);
    }
    return JSON.parse(value);
  };
  try {
    const relayed = await next();
    assert.equal(relayed.step, "relayed");
    const echoPort = relayed.echoPort as number;
    assert.deepEqual(relayed.replies, [
      { data: "via 127.0.0.1", source: ["127.0.0.1", echoPort] },
      { data: "via localhost", source: ["127.0.0.1", echoPort] },
    ]);
    assert.equal(relayed.after, "after");
    assert.deepEqual(relayed.echoed, ["via 127.0.0.1", "via localhost", "after"]);
    assert.equal((relayed.relay as [string, number])[0], "127.0.0.1");

    assert.equal((await next()).step, "closed");
    const [host, port] = relayed.control as [string, number];
    const session = await sessionOf(ferry, { transport: "tcp", hostname: host, port });
    assert.equal(session.outcome, "ok");
    assert.equal(session.udpIn, 3);
    assert.equal(session.udpOut, 3);
    assert.equal(session.dropped, 2);
    assert.equal(session.up, "via 127.0.0.1".length + "via localhost".length + "after".length);

    await stdin.write(encoder.encode("probe\n"));
    const probed = await next();
    assert.equal(probed.step, "probed");
    // "timeout" would mean the relay socket is still open, dropping the probe
    // as a datagram from a third party; a closed port draws ICMP unreachable.
    assert.equal(probed.outcome, "refused");
    assert.deepEqual(probed.echoed, ["via 127.0.0.1", "via localhost", "after"]);
  } finally {
    await stdin.close().catch(() => {});
    await lines.cancel();
    await stderr.cancel();
    const status = await child.status;
    if (!status.success) console.error(`PySocks helper exited with ${status.code}`);
  }
});

Deno.test("npm socks: UDP ASSOCIATE relays to an echo server and back with the real source", async () => {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  const local = await udpSocket();
  try {
    // createConnection() is for CONNECT only; BIND and ASSOCIATE use the event API.
    const client = new SocksClient({
      proxy: { host: ferry.hostname, port: ferry.port, type: 5 },
      command: "associate",
      destination: { host: "127.0.0.1", port: local.address().port },
      timeout: 5000,
    });
    const established = new Promise<SocksEstablished>((resolve, reject) => {
      client.once("established", resolve);
      client.once("error", reject);
    });
    using _started = connectSocksClient(client);
    const { socket: control, remoteHost } = await deadline(established, 5000, "established");
    try {
      assert.equal(remoteHost?.host, "127.0.0.1");
      const answer = nextDatagram(local);
      local.send(
        SocksClient.createUDPFrame({
          remoteHost: { host: "127.0.0.1", port: echo.port },
          data: Buffer.from("ping"),
        }),
        remoteHost!.port,
        remoteHost!.host,
      );
      const parsed = SocksClient.parseUDPFrame(Buffer.from(await answer));
      assert.equal(parsed.frameNumber, 0);
      assert.deepEqual(parsed.remoteHost, { host: "127.0.0.1", port: echo.port });
      assert.equal(parsed.data.toString(), "ping");
    } finally {
      const closed = once(control, "close");
      control.destroy();
      await closed;
    }
    const session = await ferry.waitFor((l) => l.event === "session");
    assert.equal(session.outcome, "ok");
    assert.equal(session.udpIn, 1);
    assert.equal(session.udpOut, 1);
  } finally {
    await closeUdp(local);
  }
});

Deno.test("malformed datagrams are dropped and counted, and the association keeps working", async () => {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  assert.equal(udp.reply.reply, socks5.Reply.Succeeded);
  assert.equal(udp.reply.address.host, "127.0.0.1");
  const relayPort = udp.reply.address.port;
  const good = frame(ipv4("127.0.0.1", echo.port), "good");
  const fragment = good.slice();
  fragment[2] = 0x01;
  const unknownType = good.slice();
  unknownType[3] = 0x02;
  const bad = [
    Uint8Array.of(0x00), // shorter than any header
    good.subarray(0, 6), // ends inside the IPv4 address
    Uint8Array.of(0, 0, 0, 0x03, 9, 0x61), // a name cut short
    Uint8Array.of(0, 0, 0, 0x04, 0, 0, 0), // an IPv6 address cut short
    fragment,
    unknownType,
    // Port 0 cannot be sent to. By name it once crashed ferry: the send threw
    // inside a promise callback, and the unhandled rejection ended the process.
    frame(ipv4("127.0.0.1", 0), "to port 0"),
    frame(domain("localhost", 0), "to port 0 by name"),
  ];
  for (const datagram of bad) udp.local.send(datagram, relayPort, "127.0.0.1");
  const answer = nextDatagram(udp.local);
  udp.local.send(good, relayPort, "127.0.0.1");
  const decoded = socks5.decodeUdpDatagram(await answer);
  assert.deepEqual(decoded.address, ipv4("127.0.0.1", echo.port));
  assert.equal(decoder.decode(decoded.data), "good");
  assert.deepEqual(echo.received, ["good"]);
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.dropped, bad.length);
  assert.equal(session.udpIn, 1);
  // The line says why the first was dropped.
  assert.equal(session.firstDrop, "not a SOCKS5 UDP datagram: UDP datagram of 1 bytes, no header");
});

Deno.test("a datagram for port 0 is dropped, and the line says so", async () => {
  // No peer can be sent to there; node:dgram throws on it.
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  const relayPort = udp.reply.address.port;
  udp.local.send(frame(ipv4("127.0.0.1", 0), "to port 0"), relayPort, "127.0.0.1");
  const answer = nextDatagram(udp.local);
  udp.local.send(frame(ipv4("127.0.0.1", echo.port), "good"), relayPort, "127.0.0.1");
  assert.equal(decoder.decode(socks5.decodeUdpDatagram(await answer).data), "good");
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.deepEqual([session.udpIn, session.dropped, session.firstDrop], [1, 1, "for port 0"]);
});

Deno.test("--allow-net narrowed to IPv4: a datagram for IPv6 is dropped and counted, and ferry goes on", async () => {
  // Deno refuses the IPv6 outbound socket's bind (on [::]) only after bind()
  // returns, and that refusal, uncaught, once ended the process. The IPv4
  // outbound socket binds 0.0.0.0.
  await using ferry = await startFerry(LISTEN, { allowNet: "127.0.0.1,0.0.0.0" });
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  assert.equal(udp.reply.reply, socks5.Reply.Succeeded);
  const relayPort = udp.reply.address.port;
  udp.local.send(frame(ipv6("::1", echo.port), "not allowed"), relayPort, "127.0.0.1");
  await new Promise((resolve) => setTimeout(resolve, 300));
  const answer = nextDatagram(udp.local);
  udp.local.send(frame(ipv4("127.0.0.1", echo.port), "allowed"), relayPort, "127.0.0.1");
  assert.equal(decoder.decode(socks5.decodeUdpDatagram(await answer).data), "allowed");
  assert.deepEqual(echo.received, ["allowed"]);
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.deepEqual([session.outcome, session.udpIn, session.dropped], ["ok", 1, 1]);
  assert.equal(
    session.firstDrop,
    `for [::1]:${echo.port}: no --allow-net permission to bind UDP on [::]:0`,
  );
});

Deno.test("--allow-net without the client's address: answers are dropped, and the line says why", async () => {
  // Deno checks where each datagram goes, the client's UDP port too: with the
  // list narrowed to ferry's own port and the peer's, the datagram goes out
  // and its answer is refused on the way back to the client.
  await using echo = await udpEcho();
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  await using ferry = await startFerry(["socks", "--listen", `127.0.0.1:${port}`], {
    allowNet: `127.0.0.1:${port},127.0.0.1:0,0.0.0.0:0,127.0.0.1:${echo.port}`,
  });
  await using udp = await associate(ferry);
  assert.equal(udp.reply.reply, socks5.Reply.Succeeded);
  udp.local.send(frame(ipv4("127.0.0.1", echo.port), "out"), udp.reply.address.port, "127.0.0.1");
  await receivedAtLeast(echo.received, 1);
  await new Promise((resolve) => setTimeout(resolve, 200)); // the answer, refused
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.deepEqual([session.outcome, session.udpIn, session.udpOut, session.dropped], [
    "ok",
    1,
    0,
    1,
  ]);
  const client = `127.0.0.1:${udp.local.address().port}`;
  assert.equal(session.firstDrop, `sending to ${client}: no --allow-net permission`);
});

Deno.test("--allow-net narrowed to ferry's own port: UDP ASSOCIATE gets 0x01 naming the permission, and ferry goes on", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  await using ferry = await startFerry(["socks", "--listen", `127.0.0.1:${port}`], {
    allowNet: `127.0.0.1:${port}`,
  });
  for (let i = 0; i < 2; i++) {
    await using udp = await associate(ferry);
    assert.equal(udp.reply.reply, socks5.Reply.GeneralFailure);
    udp.control.close();
    const session = await sessionOf(ferry, udp.control.localAddr);
    assert.equal(session.outcome, "udp-bind-failed");
    assert.match(String(session.error), /--allow-net.*127\.0\.0\.1:0/);
  }
});

Deno.test("a destination given as an IPv4-mapped IPv6 address is relayed and its answers come back", async () => {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  assert.equal(udp.reply.reply, socks5.Reply.Succeeded);
  const answer = nextDatagram(udp.local);
  const mapped = ipv6("::ffff:127.0.0.1", echo.port);
  udp.local.send(frame(mapped, "mapped"), udp.reply.address.port, "127.0.0.1");
  // The answer is from the address the client named, in the form it named it.
  const decoded = socks5.decodeUdpDatagram(await answer);
  assert.deepEqual(decoded.address, mapped);
  assert.equal(decoder.decode(decoded.data), "mapped");
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.equal(session.udpOut, 1);
  assert.equal(session.dropped, 0);
  assert.equal(session.firstDrop, undefined, "a first drop named where none was");
});

/**
 * Sends a datagram for `echo` to `udp`'s relay from `stranger`, then one from
 * the client, checks that only the client's reached `echo`, and returns the
 * session's line, once the client has closed, with the one drop it counted.
 */
async function strangerThenClient(
  ferry: FerryProcess,
  echo: Awaited<ReturnType<typeof udpEcho>>,
  udp: Awaited<ReturnType<typeof associate>>,
  stranger: dgram.Socket,
): Promise<LogLine> {
  const relayPort = udp.reply.address.port;
  await new Promise((resolve) =>
    stranger.send(frame(ipv4("127.0.0.1", echo.port), "stranger"), relayPort, "127.0.0.1", resolve)
  );
  const answer = nextDatagram(udp.local);
  udp.local.send(frame(ipv4("127.0.0.1", echo.port), "mine"), relayPort, "127.0.0.1");
  await answer;
  assert.deepEqual(echo.received, ["mine"]);
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.equal(session.dropped, 1);
  return session;
}

Deno.test("a datagram from another port than the declared one is dropped", async () => {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  const other = await udpSocket();
  try {
    const session = await strangerThenClient(ferry, echo, udp, other);
    const [otherPort, clientPort] = [other.address().port, udp.local.address().port];
    assert.equal(session.firstDrop, `from port ${otherPort}, not the client's ${clientPort}`);
  } finally {
    await closeUdp(other);
  }
});

Deno.test("a datagram to the outbound socket from anyone the client has not sent to is dropped", async () => {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  const relayPort = udp.reply.address.port;
  // Same host as the peer, another port: the peer table keys on both.
  const stranger = await udpSocket();
  const strangerAt = `127.0.0.1:${stranger.address().port}`;
  try {
    const echoed = nextDatagram(udp.local);
    udp.local.send(frame(ipv4("127.0.0.1", echo.port), "hi"), relayPort, "127.0.0.1");
    await echoed;
    const outboundPort = echo.senderPorts[0]!;
    await new Promise((resolve) =>
      stranger.send(encoder.encode("stranger"), outboundPort, "127.0.0.1", resolve)
    );
    // Then the peer, on the same socket: had the stranger's been relayed, it
    // would reach the client first.
    const next = nextDatagram(udp.local);
    echo.socket.send(encoder.encode("peer"), outboundPort, "127.0.0.1");
    const datagram = socks5.decodeUdpDatagram(await next);
    assert.equal(decoder.decode(datagram.data), "peer");
    assert.deepEqual(datagram.address, ipv4("127.0.0.1", echo.port));
  } finally {
    await closeUdp(stranger);
  }
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.deepEqual([session.udpIn, session.udpOut, session.dropped], [1, 2, 1]);
  assert.equal(session.firstDrop, `from ${strangerAt}, which the client has not sent to`);
});

Deno.test("DST 0.0.0.0:0 learns the client's port from its first datagram", async () => {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry, 0);
  const answer = nextDatagram(udp.local);
  udp.local.send(frame(ipv4("127.0.0.1", echo.port), "hi"), udp.reply.address.port, "127.0.0.1");
  assert.equal(decoder.decode(socks5.decodeUdpDatagram(await answer).data), "hi");
});

Deno.test("DST 0.0.0.0:0: a stray that is no SOCKS5 datagram does not take the client's port", async () => {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry, 0);
  const stray = await udpSocket();
  try {
    // From the client's host, another port, first: dropped as malformed,
    // and the port to take is still the first real datagram's.
    await new Promise((resolve) =>
      stray.send(Uint8Array.of(1, 2, 3), udp.reply.address.port, "127.0.0.1", resolve)
    );
    const answer = nextDatagram(udp.local);
    udp.local.send(frame(ipv4("127.0.0.1", echo.port), "hi"), udp.reply.address.port, "127.0.0.1");
    assert.equal(decoder.decode(socks5.decodeUdpDatagram(await answer).data), "hi");
  } finally {
    await closeUdp(stray);
  }
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.deepEqual([session.udpIn, session.udpOut, session.dropped], [1, 1, 1]);
});

Deno.test("a datagram from another address than the client's, on the client's own port, is dropped", async () => {
  // The port check alone would let it in: only the control connection's
  // host may use the relay.
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  const intruder = await udpSocket("127.0.0.2", udp.local.address().port);
  try {
    const session = await strangerThenClient(ferry, echo, udp, intruder);
    assert.equal(session.firstDrop, "from 127.0.0.2, not the client's address");
  } finally {
    await closeUdp(intruder);
  }
});

Deno.test("a burst at the start of an association reaches the peer in the order sent", async () => {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  const sent = Array.from({ length: 20 }, (_, i) => `${i}`);
  // The client sends them one by one, but they reach ferry's fresh outbound
  // socket together, and Deno's node:dgram sent them on in reverse: 19, 18, … 0.
  const datagrams = sent.map((text) => frame(ipv4("127.0.0.1", echo.port), text));
  await sendInOrder(udp.local, datagrams, udp.reply.address.port);
  await receivedAtLeast(echo.received, sent.length);
  assert.deepEqual(echo.received, sent);
});

Deno.test("a burst of 150 on an association in use reaches the peer whole and in order", async () => {
  // Beyond 64 sends in flight on one socket ferry dropped the rest, so a
  // burst of 65 small datagrams lost one; now they queue.
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  const relay = udp.reply.address.port;
  await sendInOrder(udp.local, [frame(ipv4("127.0.0.1", echo.port), "warm-up")], relay);
  await receivedAtLeast(echo.received, 1);
  const sent = Array.from({ length: 150 }, (_, i) => `${i}`);
  const callbacks = sent.map((text) =>
    new Promise<void>((resolve, reject) =>
      udp.local.send(
        frame(ipv4("127.0.0.1", echo.port), text),
        relay,
        "127.0.0.1",
        (error) => error ? reject(error) : resolve(),
      )
    )
  );
  await Promise.all(callbacks);
  await receivedAtLeast(echo.received, 1 + sent.length);
  assert.deepEqual(echo.received.slice(1), sent);
});

Deno.test("datagrams to a name reach the peer in the order sent, each after its lookup", async () => {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using udp = await associate(ferry);
  const sent = Array.from({ length: 40 }, (_, i) => `${i}`);
  // The echoes, back through ferry: the association ends only once they are
  // all in, else the last may still wait in ferry and count as dropped.
  const answers: string[] = [];
  udp.local.on("message", (message) => answers.push(decoder.decode(message)));
  // A lookup each, which used to finish in any order.
  const datagrams = sent.map((text) => frame(domain("localhost", echo.port), text));
  await sendInOrder(udp.local, datagrams, udp.reply.address.port);
  await receivedAtLeast(echo.received, sent.length);
  assert.deepEqual(echo.received, sent);
  await receivedAtLeast(answers, sent.length);
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.equal(session.udpIn, sent.length);
  assert.equal(session.dropped, 0);
});

// And by the victim's relay address spelt IPv4-mapped: then the datagram
// left through ferry's IPv6 outbound socket, which on a dual-stack host
// sends IPv4 from its port, and the check knew only IPv4 outbound ports.
for (
  const [spelling, relayAddress] of [
    ["", (port: number) => ipv4("127.0.0.1", port)],
    [" (its relay address spelt IPv4-mapped)", (port: number) => ipv6("::ffff:127.0.0.1", port)],
  ] as const
) {
  Deno.test({
    name: `one association cannot send through another's relay, even when both clients are on ` +
      `ferry's host${spelling}`,
    // Where [::] takes IPv6 only, no IPv6 socket can send to an IPv4-mapped address.
    ignore: spelling !== "" && wildcardIsIpv6Only(),
    fn: () => relayIntoAnother(relayAddress),
  });
}

async function relayIntoAnother(relayAddress: (port: number) => Address): Promise<void> {
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using victim = await associate(ferry, 0); // its port is learnt from its first datagram
  await using attacker = await associate(ferry);
  // The attacker's relay sends to the victim's relay port from ferry's own
  // outbound socket: the victim's address (127.0.0.1), so it passed the
  // client check, was relayed, and its port taken for the victim's.
  const inner = frame(ipv4("127.0.0.1", echo.port), "INJECTED");
  const outer = frame(relayAddress(victim.reply.address.port), inner);
  // Then a marker to the echo server: ferry keeps the order, so once the
  // marker is there the injection has been sent, and on loopback it already
  // waits at the victim's relay socket, ahead of the victim's own datagram.
  const marker = frame(ipv4("127.0.0.1", echo.port), "marker");
  await sendInOrder(attacker.local, [outer, marker], attacker.reply.address.port);
  await receivedAtLeast(echo.received, 1);
  attacker.control.close();
  const attackerSession = await sessionOf(ferry, attacker.control.localAddr);
  assert.equal(attackerSession.udpIn, 2, "the injection went out");
  const answer = nextDatagram(victim.local);
  victim.local.send(
    frame(ipv4("127.0.0.1", echo.port), "mine"),
    victim.reply.address.port,
    "127.0.0.1",
  );
  assert.equal(decoder.decode(socks5.decodeUdpDatagram(await answer).data), "mine");
  assert.deepEqual(echo.received, ["marker", "mine"]);
  victim.control.close();
  const victimSession = await sessionOf(ferry, victim.control.localAddr);
  assert.equal(victimSession.dropped, 1);
  assert.equal(victimSession.udpIn, 1);
}

Deno.test("an IPv6 client whose port number is that of an IPv4 outbound socket of ferry's is not taken for ferry", async () => {
  // Ferry's outbound ports were kept without their family: the IPv6 client
  // on [::1]:P, P being an IPv4 association's outbound port, was dropped as
  // ferry relaying into itself, every datagram.
  await using ferry = await startFerry(["socks", "--listen", "[::]:0"]);
  await using echo4 = await udpEcho("127.0.0.1");
  await using echo6 = await udpEcho("::1");
  await using first = await associate(ferry, undefined, "127.0.0.1");
  await sendInOrder(
    first.local,
    [frame(ipv4("127.0.0.1", echo4.port), "v4")],
    first.reply.address.port,
  );
  await receivedAtLeast(echo4.received, 1);
  const outboundPort = echo4.senderPorts[0]!; // ferry's IPv4 outbound socket
  const local = await udpSocket("::1", outboundPort);
  try {
    using control = await BufferedConn.connect("::1", ferry.port);
    const reply = await socks5Handshake(control, ipv6("::1", outboundPort), {
      command: socks5.Command.UdpAssociate,
    });
    const answer = nextDatagram(local);
    local.send(frame(ipv6("::1", echo6.port), "v6"), reply.address.port, reply.address.host);
    assert.equal(decoder.decode(socks5.decodeUdpDatagram(await answer).data), "v6");
  } finally {
    await closeUdp(local);
  }
});

Deno.test("an association that ends frees its outbound socket's port: a client may hold it, and is not taken for ferry", async () => {
  // Ferry knows its outbound sockets' ports to drop what it relays into
  // itself (see outboundPorts in src/udp_associate.ts): a port still known
  // after its socket closed would drop every datagram of a later client that
  // the kernel gave that port, and a socket left open would hold the port.
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  {
    await using first = await associate(ferry);
    await sendInOrder(
      first.local,
      [frame(ipv4("127.0.0.1", echo.port), "first")],
      first.reply.address.port,
    );
    await receivedAtLeast(echo.received, 1);
    first.control.close();
    await sessionOf(ferry, first.control.localAddr);
  }
  const outboundPort = echo.senderPorts[0]!;
  // Bound on 0.0.0.0, the outbound socket would still hold the port here.
  const local = await udpSocket("127.0.0.1", outboundPort);
  try {
    using control = await BufferedConn.connect(ferry.hostname, ferry.port);
    const reply = await socks5Handshake(control, ipv4("127.0.0.1", outboundPort), {
      command: socks5.Command.UdpAssociate,
    });
    assert.equal(reply.reply, socks5.Reply.Succeeded);
    const answer = nextDatagram(local);
    local.send(frame(ipv4("127.0.0.1", echo.port), "second"), reply.address.port, "127.0.0.1");
    const decoded = socks5.decodeUdpDatagram(await answer);
    assert.equal(decoder.decode(decoded.data), "second");
    control.close();
    const session = await sessionOf(ferry, control.localAddr);
    assert.equal(session.dropped, 0, String(session.firstDrop));
  } finally {
    await closeUdp(local);
  }
});

Deno.test("datagrams to several hosts at an association's start all leave from its one outbound socket", async () => {
  // Each host's datagrams wait in a queue of their own for the outbound
  // socket's bind: a bind for each queue would leave sockets that close()
  // never sees, holding their ports after the association ended.
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  // One IPv4 peer, spelt in ways that are each a host of their own.
  const hosts: Address[] = [
    ipv4("127.0.0.1", echo.port),
    ipv6("::ffff:127.0.0.1", echo.port),
    domain("::ffff:7f00:1", echo.port),
    domain("0:0:0:0:0:ffff:7f00:1", echo.port),
    domain("0::ffff:127.0.0.1", echo.port),
    domain("0:0::ffff:7f00:1", echo.port),
    domain("::ffff:7f00:0001", echo.port),
    domain("0:0:0::ffff:127.0.0.1", echo.port),
  ];
  // A few associations: whether the datagrams arrive before the bind is
  // done is up to the scheduler, and each new association binds anew.
  for (let round = 0; round < 3; round++) {
    await using udp = await associate(ferry);
    // The client's socket warmed up first (Deno holds sends on a fresh one),
    // then the datagrams sent at once, to reach ferry before the bind is done.
    echo.received.length = echo.senderPorts.length = 0;
    // The echoes too, the warm-up's straight back: the association ends once
    // they are all in, else the last may still wait in ferry, counted dropped.
    const answers: string[] = [];
    udp.local.on("message", (message) => answers.push(decoder.decode(message)));
    await sendInOrder(udp.local, [encoder.encode("warm-up")], echo.port);
    await receivedAtLeast(echo.received, 1);
    await Promise.all(
      hosts.map((address, i) =>
        new Promise<void>((resolve, reject) =>
          udp.local.send(
            frame(address, `${i}`),
            udp.reply.address.port,
            "127.0.0.1",
            (error) => error ? reject(error) : resolve(),
          )
        )
      ),
    );
    await receivedAtLeast(echo.received, 1 + hosts.length);
    const ports = echo.senderPorts.slice(1);
    assert.equal(new Set(ports).size, 1, `sent from ports ${ports}`);
    await receivedAtLeast(answers, 1 + hosts.length);
    udp.control.close();
    const session = await sessionOf(ferry, udp.control.localAddr);
    assert.deepEqual(
      [session.udpIn, session.dropped],
      [hosts.length, 0],
      String(session.firstDrop),
    );
  }
});

Deno.test("what waited for a lookup or a bind frees its room once sent: the 256 KiB bound is on what waits at once", async () => {
  // Had what went out stayed counted, an association would drop every
  // datagram to a new host once 256 KiB had ever waited. Three bursts of
  // 90 KB, 270 KB in all, each waiting for its own reason (and small enough
  // for the relay socket's receive buffer, about 208 KiB).
  await using ferry = await startFerry(LISTEN);
  await using echo = await udpEcho();
  await using echo6 = await udpEcho("::1");
  await using udp = await associate(ferry);
  const relayPort = udp.reply.address.port;
  const bursts: [Address, string[]][] = [
    [ipv4("127.0.0.1", echo.port), echo.received], // the IPv4 outbound socket's bind
    [domain("localhost", echo.port), echo.received], // the name's lookup
    [ipv6("::1", echo6.port), echo6.received], // the IPv6 outbound socket's bind
  ];
  let sent = 0;
  for (const [i, [address, received]] of bursts.entries()) {
    const burst = ["a", "b"].map((tag) => frame(address, `${i}${tag}`.padEnd(45_000, ".")));
    await sendInOrder(udp.local, burst, relayPort);
    sent += burst.length;
    await receivedAtLeast(received, i < 2 ? sent : 2);
  }
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.deepEqual([session.udpIn, session.dropped], [6, 0], String(session.firstDrop));
});

Deno.test("IPv6: a client on ::1 gets a relay on ::1 and reaches an IPv6 echo server", async () => {
  await using ferry = await startFerry(["socks", "--listen", "[::1]:0"]);
  await using echo = await udpEcho("::1");
  const local = await udpSocket("::1");
  using control = await BufferedConn.connect("::1", ferry.port);
  try {
    const reply = await socks5Handshake(control, ipv4("0.0.0.0", local.address().port), {
      command: socks5.Command.UdpAssociate,
    });
    assert.equal(reply.reply, socks5.Reply.Succeeded);
    assert.deepEqual(reply.address.host, "::1");
    const answer = nextDatagram(local);
    local.send(
      frame({ type: "ipv6", host: "::1", port: echo.port }, "six"),
      reply.address.port,
      "::1",
    );
    const decoded = socks5.decodeUdpDatagram(await answer);
    assert.deepEqual(decoded.address, { type: "ipv6", host: "::1", port: echo.port });
    assert.equal(decoder.decode(decoded.data), "six");
  } finally {
    await closeUdp(local);
  }
});

Deno.test("--udp-advertise replaces the bound address in the reply", async () => {
  await using ferry = await startFerry([...LISTEN, "--udp-advertise", "203.0.113.7"]);
  await using udp = await associate(ferry);
  assert.equal(udp.reply.reply, socks5.Reply.Succeeded);
  assert.equal(udp.reply.address.host, "203.0.113.7");
  assert.notEqual(udp.reply.address.port, 0);
});

Deno.test("--udp-advertise: a client gets the address of its own family, or else the interface's", async () => {
  // A client told an address of the other family could never reach its relay.
  const both = ["--udp-advertise", "203.0.113.7", "--udp-advertise", "2001:db8::7"];
  const cases: [string, string[], string][] = [
    ["127.0.0.1:0", both, "203.0.113.7"],
    ["[::1]:0", both, "2001:db8::7"],
    ["[::1]:0", ["--udp-advertise", "203.0.113.7"], "::1"],
    ["127.0.0.1:0", ["--udp-advertise", "2001:db8::7"], "127.0.0.1"],
  ];
  for (const [listen, advertise, expected] of cases) {
    await using ferry = await startFerry(["socks", "--listen", listen, ...advertise]);
    await using udp = await associate(ferry);
    assert.equal(udp.reply.reply, socks5.Reply.Succeeded, listen);
    assert.equal(udp.reply.address.host, expected, `${listen} ${advertise.join(" ")}`);
  }
});

Deno.test("--max-udp-per-ip: one association too many gets reply 0x01", async () => {
  await using ferry = await startFerry([...LISTEN, "--max-udp-per-ip", "1"]);
  await using first = await associate(ferry);
  assert.equal(first.reply.reply, socks5.Reply.Succeeded);
  await using second = await associate(ferry);
  assert.equal(second.reply.reply, socks5.Reply.GeneralFailure);
  second.control.close();
  const session = await sessionOf(ferry, second.control.localAddr);
  assert.equal(session.outcome, "max-udp-per-ip");
  assert.equal(session.command, "udp-associate", "told apart from a CONNECT");
  // The limit counts live associations: once the first has ended, its place is free.
  first.control.close();
  await sessionOf(ferry, first.control.localAddr);
  await using third = await associate(ferry);
  assert.equal(third.reply.reply, socks5.Reply.Succeeded, "a place freed by an ended association");
});

Deno.test("--max-udp-per-ip 2: each association that ends frees its place, down to none", async () => {
  // With a limit of 1 the count only ever goes from 1 to none; here it must
  // also go from 2 to 1.
  await using ferry = await startFerry([...LISTEN, "--max-udp-per-ip", "2"]);
  const open = [await associate(ferry), await associate(ferry)];
  for (const udp of open) assert.equal(udp.reply.reply, socks5.Reply.Succeeded);
  {
    await using over = await associate(ferry);
    assert.equal(over.reply.reply, socks5.Reply.GeneralFailure, "a third at once");
  }
  await open[0]![Symbol.asyncDispose]();
  await sessionOf(ferry, open[0]!.control.localAddr);
  await using again = await associate(ferry);
  assert.equal(again.reply.reply, socks5.Reply.Succeeded, "the place the first freed");
  {
    await using over = await associate(ferry);
    assert.equal(over.reply.reply, socks5.Reply.GeneralFailure, "and no more");
  }
  await open[1]![Symbol.asyncDispose]();
});

Deno.test("an idle association is evicted: the control connection is closed and so is the relay", async () => {
  await using ferry = await startFerry([...LISTEN, "--idle-timeout", "300ms"]);
  await using udp = await associate(ferry);
  assert.equal(udp.reply.reply, socks5.Reply.Succeeded);
  const { host, port } = udp.reply.address;
  assert.equal(await udpPortTaken(host, port), true, "the relay socket is open while associated");
  const end = await udp.control.waitForEnd();
  assert.equal(end.ending, "eof");
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.equal(session.outcome, "idle-timeout");
  // The log line is written once the session has closed everything it held.
  assert.equal(await udpPortTaken(host, port), false, "the relay socket was closed");
});

Deno.test("an association's control connection has TCP keepalive from the reply on", async () => {
  // It is meant to last, idle between datagrams: a peer that vanished must
  // not hold the association until --idle-timeout (5 minutes by default).
  await using ferry = await startFerry(LISTEN);
  await using udp = await associate(ferry);
  assert.equal(udp.reply.reply, socks5.Reply.Succeeded);
  const ferrySide = `( sport = :${ferry.port} and dport = :${udp.control.localAddr.port} )`;
  // `ss -o` shows the keepalive timer once no other one (the reply's
  // retransmission timer, until it is acknowledged) runs.
  const deadlineAt = Date.now() + 10_000;
  for (;;) {
    const lines = await ss("-tnoH", "state", "established", ferrySide);
    assert.equal(lines.length, 1, lines.join("\n"));
    if (lines[0]!.includes("timer:(keepalive")) break;
    assert.ok(Date.now() < deadlineAt, `no keepalive on ferry's end after 10 s: ${lines[0]}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
});

Deno.test("a control connection reset during its association is logged reset", async () => {
  await using ferry = await startFerry(LISTEN);
  const local = await udpSocket();
  try {
    const request = concat([
      socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }),
      socks5.encodeRequest({
        command: socks5.Command.UdpAssociate,
        address: ipv4("0.0.0.0", local.address().port),
      }),
    ]);
    // Node's socket, for its reset: Deno's cannot send one.
    const localPort = await new Promise<number>((resolve, reject) => {
      const socket = net.connect(ferry.port, ferry.hostname, () => socket.write(request));
      let got = 0;
      socket.on("data", (bytes: Uint8Array) => {
        got += bytes.length;
        // The method selection (2 bytes), then the reply of 10: associated.
        if (got < 12) return;
        const port = socket.localPort!;
        socket.resetAndDestroy();
        resolve(port);
      });
      socket.once("error", reject);
    });
    const session = await sessionOf(ferry, {
      transport: "tcp",
      hostname: "127.0.0.1",
      port: localPort,
    });
    assert.equal(session.command, "udp-associate");
    assert.equal(session.outcome, "reset");
  } finally {
    await closeUdp(local);
  }
});

Deno.test("bytes on the control connection keep an association alive, as datagrams do", async () => {
  await using ferry = await startFerry([...LISTEN, "--idle-timeout", "1s"]);
  await using udp = await associate(ferry);
  assert.equal(udp.reply.reply, socks5.Reply.Succeeded);
  let ended = false;
  const end = udp.control.waitForEnd().finally(() => ended = true);
  // Three idle timeouts' worth of a byte every 100 ms, and no datagram.
  for (let i = 0; i < 30; i++) {
    await udp.control.write(Uint8Array.of(0));
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(ended, false, "the control connection was closed while bytes kept arriving");
  assert.equal(await udpPortTaken("127.0.0.1", udp.reply.address.port), true);
  // Once the bytes stop, the idle timeout applies again.
  assert.equal((await end).ending, "eof");
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.equal(session.outcome, "idle-timeout");
});

Deno.test("datagrams alone keep an association alive, whichever way they go", async () => {
  await using ferry = await startFerry([...LISTEN, "--idle-timeout", "1s"]);
  // A peer that takes every datagram and answers none.
  const sink = await udpSocket();
  // A peer that answers one datagram with a stream of 30, one every 100 ms.
  const streamer = await udpSocket();
  const streamed = Promise.withResolvers<void>();
  streamer.once("message", async (_message, from) => {
    for (let i = 0; i < 30; i++) {
      streamer.send(encoder.encode(`s${i}`), from.port, from.address);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    streamed.resolve();
  });
  try {
    // Client to peer: three idle timeouts' worth of a datagram every 100 ms,
    // and nothing on the control connection or back.
    {
      await using udp = await associate(ferry);
      let ended = false;
      // Cut short by the test's own close at the end: nothing to learn then.
      udp.control.waitForEnd().then(() => ended = true, () => {});
      for (let i = 0; i < 30; i++) {
        const datagram = frame(ipv4("127.0.0.1", sink.address().port), "up");
        udp.local.send(datagram, udp.reply.address.port, "127.0.0.1");
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.equal(ended, false, "closed while the client kept sending datagrams");
    }
    // Peer to client: one datagram out, then only answers for three timeouts.
    {
      await using udp = await associate(ferry);
      let ended = false;
      const end = udp.control.waitForEnd().finally(() => ended = true);
      let received = 0;
      udp.local.on("message", () => received++);
      udp.local.send(
        frame(ipv4("127.0.0.1", streamer.address().port), "go"),
        udp.reply.address.port,
        "127.0.0.1",
      );
      await deadline(streamed.promise, 10_000, "the stream's end");
      assert.equal(ended, false, "closed while answers kept coming");
      // Once they stop, the idle timeout applies again.
      assert.equal((await end).ending, "eof");
      assert.equal(received, 30, "every answer reached the client");
    }
  } finally {
    await closeUdp(sink);
    await closeUdp(streamer);
  }
});

Deno.test("a datagram whose send fails is counted dropped, not relayed, either way", async () => {
  await using ferry = await startFerry(LISTEN);
  await using udp = await associate(ferry);
  const relayPort = udp.reply.address.port;
  // A peer whose first answer is too big to wrap in a header (EMSGSIZE at
  // ferry's send), then a small one.
  const peer = await udpSocket();
  try {
    peer.on("message", (_message, from) => {
      peer.send(new Uint8Array(65507), from.port, from.address);
      peer.send(encoder.encode("small"), from.port, from.address);
    });
    // Broadcast without SO_BROADCAST: the kernel refuses it (EACCES). The
    // loopback network's own broadcast address, not 255.255.255.255: were
    // ferry ever to allow broadcasts, this one would still stay on `lo`.
    udp.local.send(frame(ipv4("127.255.255.255", 9), "abc"), relayPort, "127.0.0.1");
    const answer = nextDatagram(udp.local);
    udp.local.send(frame(ipv4("127.0.0.1", peer.address().port), "x"), relayPort, "127.0.0.1");
    assert.equal(decoder.decode(socks5.decodeUdpDatagram(await answer).data), "small");
  } finally {
    await closeUdp(peer);
  }
  udp.control.close();
  const session = await sessionOf(ferry, udp.control.localAddr);
  assert.deepEqual(
    [session.udpIn, session.up, session.udpOut, session.down, session.dropped],
    [1, 1, 1, 5, 2],
  );
  // The first drop, the broadcast: Deno's node:dgram reports EACCES as "send UNKNOWN".
  assert.match(String(session.firstDrop), /^sending to 127\.255\.255\.255:9: send UNKNOWN/);
});

Deno.test("the peer table forgets the peer sent to least recently, not the first one met, and none for a peer it holds", async () => {
  await using ferry = await startFerry(LISTEN);
  await using udp = await associate(ferry);
  const relayPort = udp.reply.address.port;
  const send = (address: socks5.ReplyMessage["address"], text: string) =>
    udp.local.send(frame(address, text), relayPort, "127.0.0.1");
  // Peers that only record what reaches them; nothing answers on its own.
  const talker = await udpSocket();
  const newcomer = await udpSocket();
  // One socket on every loopback address: 1,023 more peers, 127.0.1.0 and
  // up on one port, fill the table (1,024), and it counts what arrives.
  const sink = await udpSocket("0.0.0.0");
  let sunk = 0;
  sink.on("message", () => sunk++);
  try {
    const talkerAddress = ipv4("127.0.0.1", talker.address().port);
    const first = deadline(once(talker, "message"), 5000, "the first datagram");
    send(talkerAddress, "first");
    // Where ferry's outbound socket sends from: the talker answers there.
    const { port, address } = (await first)[1] as dgram.RemoteInfo;
    // In bursts that ferry has relayed before the next: none is lost in a
    // socket buffer, so the table is full for sure.
    for (let i = 0; i < 1023; i++) {
      send(ipv4(`127.0.${1 + (i >> 8)}.${i & 255}`, sink.address().port), "filler");
      if (i % 32 === 31 || i === 1022) {
        const until = Date.now() + 5_000;
        while (sunk < i + 1) {
          assert.ok(Date.now() < until, `${sunk} of ${i + 1} fillers arrived`);
          await new Promise((resolve) => setTimeout(resolve, 2));
        }
      }
    }
    // Full, the talker the least recent: a filler sent to again is in the
    // table already, so no peer is forgotten for it, the talker least of all.
    send(ipv4("127.0.1.0", sink.address().port), "filler again");
    for (const until = Date.now() + 5_000; sunk < 1024;) {
      assert.ok(Date.now() < until, "the filler sent to again did not arrive");
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    const early = nextDatagram(udp.local);
    talker.send(encoder.encode("still known"), port, address);
    assert.equal(decoder.decode(socks5.decodeUdpDatagram(await early).data), "still known");
    const again = deadline(once(talker, "message"), 5000, "the second datagram");
    send(talkerAddress, "again");
    await again;
    // A 1,025th peer: the table forgets one, and it must not be the talker.
    const arrived = nextDatagram(newcomer);
    send(ipv4("127.0.0.1", newcomer.address().port), "new");
    await arrived;
    const answer = nextDatagram(udp.local);
    talker.send(encoder.encode("answer"), port, address);
    assert.equal(decoder.decode(socks5.decodeUdpDatagram(await answer).data), "answer");
  } finally {
    for (const socket of [talker, newcomer, sink]) await closeUdp(socket);
  }
});
