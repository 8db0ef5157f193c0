/**
 * BIND with a real client (the npm `socks` package) over SOCKS5 and SOCKS4,
 * and with a raw client for the refusals: a peer from the wrong address and
 * nobody connecting before the bind timeout.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { once } from "node:events";
import net, { type Socket } from "node:net";
import { SocksClient } from "socks";
import { wildcardIsIpv6Only } from "../src/config.ts";
import type { Address } from "../src/protocol/address.ts";
import { startFerry } from "./_helpers/ferry.ts";
import { connectSocksClient } from "./_helpers/npm_socks.ts";
import { connectAndReset } from "./_helpers/reset.ts";
import { waitUntil } from "./_helpers/forward_support.ts";
import { openDescriptors } from "./_helpers/proc.ts";
import { sessionOf } from "./_helpers/session_log.ts";
import {
  BufferedConn,
  closedPort,
  deadline,
  ipv4,
  ipv6,
  pseudoRandomBytes,
  sha256,
  socks4,
  socks5,
  socks5Handshake,
} from "./_helpers/socks_client.ts";

const LISTEN = ["socks", "--listen", "127.0.0.1:0"];
const decoder = new TextDecoder();
const encoder = new TextEncoder();

interface HostPort {
  host: string;
  port: number;
}

/** Connects to ferry and asks a SOCKS5 BIND for `peer`, up to its first reply, a success. */
async function socks5Bind(ferry: { hostname: string; port: number }, peer: Address) {
  const client = await BufferedConn.connect(ferry.hostname, ferry.port);
  try {
    const first = await socks5Handshake(client, peer, { command: socks5.Command.Bind });
    assert.equal(first.reply, socks5.Reply.Succeeded);
    return { client, first };
  } catch (error) {
    client.close();
    throw error;
  }
}

for (const type of [5, 4] as const) {
  Deno.test(`npm socks: SOCKS${type} BIND gives two replies, then relays with the peer`, async () => {
    await using ferry = await startFerry(LISTEN);
    const client = new SocksClient({
      proxy: { host: ferry.hostname, port: ferry.port, type },
      command: "bind",
      destination: { host: "127.0.0.1", port: 0 },
      timeout: 5000,
    });
    const bound = new Promise<HostPort>((resolve, reject) => {
      client.once("bound", (info: { remoteHost?: HostPort }) => resolve(info.remoteHost!));
      client.once("error", reject);
    });
    const established = new Promise<{ socket: Socket; remoteHost?: HostPort }>(
      (resolve, reject) => {
        client.once("established", resolve);
        client.once("error", reject);
      },
    );
    using _started = connectSocksClient(client);
    const listening = await deadline(bound, 5000, "the first reply");
    // SOCKS4 may answer 0.0.0.0, meaning "the proxy's address".
    const host = listening.host === "0.0.0.0" ? ferry.hostname : listening.host;
    assert.equal(host, "127.0.0.1");
    using peer = new BufferedConn(await Deno.connect({ hostname: host, port: listening.port }));
    const { socket, remoteHost } = await deadline(established, 5000, "the second reply");
    try {
      assert.deepEqual(remoteHost, { host: "127.0.0.1", port: peer.localAddr.port });
      const fromPeer = once(socket, "data");
      await peer.write(encoder.encode("hello from the peer"));
      assert.equal(String((await deadline(fromPeer, 5000, "peer data"))[0]), "hello from the peer");
      socket.write(Buffer.from("hello from the client"));
      assert.equal(decoder.decode(await peer.readExactly(21)), "hello from the client");
    } finally {
      const closed = once(socket, "close");
      socket.destroy();
      await closed;
    }
    await peer.waitForEnd();
    peer.close(); // the peer's direction stays open until it closes too
    const session = await ferry.waitFor((l) => l.event === "session");
    assert.equal(session.outcome, "ok");
    assert.equal(session.protocol, type === 5 ? "socks5" : "socks4");
    assert.equal(session.peer, `127.0.0.1:${peer.localAddr.port}`);
    assert.equal(session.up, 21);
    assert.equal(session.down, 19);
  });
}

Deno.test("a --bind-timeout shorter than the other timeouts fires on time", async () => {
  // The deadline sweep ticked for the handshake, connect and idle timeouts
  // only (1 s here), so a 200 ms bind timeout fired after about 2 s.
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "200ms"]);
  const { client } = await socks5Bind(ferry, ipv4("127.0.0.2", 0));
  using _client = client;
  const started = performance.now();
  const second = await client.readMessage(socks5.decodeReply, "second reply");
  const waited = performance.now() - started;
  assert.equal(second.reply, socks5.Reply.HostUnreachable);
  assert.ok(waited >= 150 && waited < 900, `the 200 ms bind timeout fired after ${waited} ms`);
});

Deno.test("SOCKS5 BIND closes a connection from another address, then times out with reply 0x04", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "500ms"]);
  const { client, first } = await socks5Bind(ferry, ipv4("127.0.0.2", 0));
  using _client = client;
  assert.equal(first.address.host, "127.0.0.1");
  using stranger = new BufferedConn(
    await Deno.connect({ hostname: "127.0.0.1", port: first.address.port }),
  );
  const ending = await stranger.waitForEnd();
  assert.equal(ending.discarded, 0);
  const second = await client.readMessage(socks5.decodeReply, "second reply");
  assert.equal(second.reply, socks5.Reply.HostUnreachable);
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "bind-timeout");
  assert.equal(session.command, "bind");
  assert.equal(session.bindRefused, 1);
  // The listener is closed: its port refuses connections now.
  await assert.rejects(
    Deno.connect({ hostname: "127.0.0.1", port: first.address.port }),
    Deno.errors.ConnectionRefused,
  );
});

Deno.test("SOCKS5 BIND over IPv6 for an IPv4 peer, which could never connect, gets 0x04 at once", async () => {
  // A short grace: the second BIND below still waits for its peer when
  // ferry is stopped, and would hold the stop for 10 s.
  await using ferry = await startFerry(
    ["socks", "--listen", "[::1]:0", "--bind-timeout", "30s", "--shutdown-grace", "1s"],
  );
  using client = await BufferedConn.connect("::1", ferry.port);
  const started = performance.now();
  const first = await socks5Handshake(client, ipv4("127.0.0.1", 0), {
    command: socks5.Command.Bind,
  });
  assert.equal(first.reply, socks5.Reply.HostUnreachable);
  assert.ok(performance.now() - started < 10_000, "answered long before the 30 s bind timeout");
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "host-unreachable");
  // A peer of the listener's own family is still let in.
  using other = await BufferedConn.connect("::1", ferry.port);
  const bound = await socks5Handshake(other, ipv6("::1", 0), { command: socks5.Command.Bind });
  assert.equal(bound.reply, socks5.Reply.Succeeded);
  assert.equal(bound.address.host, "::1");
});

Deno.test({
  name:
    "an IPv4 client of a [::] listener gets a BIND on its IPv4 address, and its IPv4 peer is let in",
  // Where [::] takes IPv6 only, no IPv4 client reaches it.
  ignore: wildcardIsIpv6Only(),
  fn: async () => {
    // The client came in on ::ffff:127.0.0.1: a listener there, of the IPv6
    // family, was refused as one its IPv4 peer could never connect to.
    await using ferry = await startFerry(["socks", "--listen", "[::]:0"]);
    using client = await BufferedConn.connect("127.0.0.1", ferry.port);
    const first = await socks5Handshake(client, ipv4("127.0.0.1", 0), {
      command: socks5.Command.Bind,
    });
    assert.equal(first.reply, socks5.Reply.Succeeded);
    assert.deepEqual(first.address, { type: "ipv4", host: "127.0.0.1", port: first.address.port });
    using peer = await Deno.connect({ hostname: "127.0.0.1", port: first.address.port });
    const second = await client.readMessage(socks5.decodeReply, "second reply");
    assert.equal(second.reply, socks5.Reply.Succeeded);
    assert.deepEqual(second.address, {
      type: "ipv4",
      host: "127.0.0.1",
      port: peer.localAddr.port,
    });
    await peer.write(encoder.encode("hello"));
    assert.equal(decoder.decode(await client.readExactly(5)), "hello");
  },
});

Deno.test("SOCKS5 BIND whose peer cannot be accepted (EMFILE) gets a second reply 0x01", async () => {
  const limit = 64;
  await using ferry = await startFerry(
    [...LISTEN, "--handshake-timeout", "60s", "--bind-timeout", "30s"],
    { wrapper: ["prlimit", `--nofile=${limit}`] },
  );
  await ferry.waitFor((l) => l.event === "nofile-low"); // the prlimit child is done
  const { client, first } = await socks5Bind(ferry, ipv4("0.0.0.0", 0));
  using _client = client;
  // Idle clients take ferry's last descriptors, until its accept loop fails
  // (EMFILE); a few more wait in the backlog, so that a descriptor freed
  // inside ferry is taken by the accept loop's next try, not by the BIND.
  const fillers: Deno.TcpConn[] = [];
  try {
    const exhausted = ferry.waitFor((l) => l.event === "accept-error");
    while (!ferry.lines.some((l) => l.event === "accept-error")) {
      assert.ok(fillers.length < 4 * limit, `no EMFILE after ${fillers.length} idle clients`);
      fillers.push(await Deno.connect({ hostname: "127.0.0.1", port: ferry.port }));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.equal((await exhausted).code, "EMFILE");
    for (let i = 0; i < 5; i++) {
      fillers.push(await Deno.connect({ hostname: "127.0.0.1", port: ferry.port }));
    }
    await new Promise((resolve) => setTimeout(resolve, 600)); // > the accept loop's longest back-off
    using _peer = await Deno.connect({ hostname: "127.0.0.1", port: first.address.port });
    const second = await client.readMessage(socks5.decodeReply, "second reply");
    assert.equal(second.reply, socks5.Reply.GeneralFailure);
  } finally {
    for (const conn of fillers) conn.close();
  }
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "bind-failed");
  assert.match(
    String(session.error),
    /Too many open files.*\(ferry is out of descriptors\)$/,
    "the system error, as README says, marked as ferry's own",
  );
});

Deno.test("SOCKS5 BIND naming its peer as an IPv4-mapped IPv6 address lets that peer in", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "5s"]);
  const { client, first } = await socks5Bind(ferry, ipv6("::ffff:127.0.0.1", 0));
  using _client = client;
  using peer = new BufferedConn(
    await Deno.connect({ hostname: "127.0.0.1", port: first.address.port }),
  );
  const second = await client.readMessage(socks5.decodeReply, "second reply");
  assert.equal(second.reply, socks5.Reply.Succeeded);
  assert.deepEqual(second.address, ipv4("127.0.0.1", peer.localAddr.port));
  await peer.write(encoder.encode("from the peer"));
  assert.equal(decoder.decode(await client.readExactly(13)), "from the peer");
  peer.close();
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.bindRefused, 0);
});

Deno.test("a client that half-closes while its BIND waits still gets the peer's answer", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "10s"]);
  const { client, first } = await socks5Bind(ferry, ipv4("127.0.0.1", 0));
  using _client = client;
  // The request, then FIN, before anyone has connected: a FIN is not a close.
  await client.write(encoder.encode("request"));
  await client.closeWrite();
  await new Promise((resolve) => setTimeout(resolve, 200));
  using peer = new BufferedConn(
    await Deno.connect({ hostname: "127.0.0.1", port: first.address.port }),
  );
  const second = await client.readMessage(socks5.decodeReply, "second reply");
  assert.equal(second.reply, socks5.Reply.Succeeded);
  assert.equal(decoder.decode(await peer.readToEnd()), "request", "the request, then EOF");
  await peer.write(encoder.encode("answer"));
  peer.close();
  assert.equal(decoder.decode(await client.readToEnd()), "answer");
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.up, 7);
  assert.equal(session.down, 6);
});

Deno.test("SOCKS4a BIND for the name 0.0.0.0, as a client leaving names to the proxy sends it, lets any peer in", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "5s"]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks4.encodeRequest({
    command: socks4.Command.Bind,
    address: { type: "domain", host: "0.0.0.0", port: 0 },
    userId: new Uint8Array(0),
  }));
  const first = await client.readMessage(socks4.decodeReply, "first reply");
  assert.equal(first.reply, socks4.Reply.Granted);
  using peer = new BufferedConn(await Deno.connect({ hostname: "127.0.0.1", port: first.port }));
  const second = await client.readMessage(socks4.decodeReply, "second reply");
  assert.equal(second.reply, socks4.Reply.Granted);
  assert.equal(second.port, peer.localAddr.port);
  await peer.write(encoder.encode("hello"));
  assert.equal(decoder.decode(await client.readExactly(5)), "hello");
  peer.close();
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.protocol, "socks4a");
  assert.equal(session.outcome, "ok");
});

/** A BIND through node:net, whose sockets can reset: its port, and the client's own. */
async function bindThroughNode(
  ferry: { hostname: string; port: number },
  early = new Uint8Array(0),
): Promise<{ client: Socket; listening: number }> {
  const client = net.connect(ferry.port, ferry.hostname);
  await once(client, "connect");
  // Greeting and BIND request for 127.0.0.1, pipelined.
  client.write(Uint8Array.of(5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 0));
  let replies = Buffer.alloc(0);
  while (replies.length < 12) {
    const [data] = await deadline(
      once(client, "data"),
      10_000,
      "the BIND reply",
      () => client.destroy(),
    );
    replies = Buffer.concat([replies, data]);
  }
  assert.equal(replies[3], socks5.Reply.Succeeded);
  if (early.length > 0) await new Promise((resolve) => client.write(early, resolve));
  return { client, listening: replies.readUInt16BE(10) };
}

Deno.test("a client that resets while its BIND waits ends it at once: listener closed, outcome reset", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "30s"]);
  const { client, listening } = await bindThroughNode(ferry);
  const clientAddr = { transport: "tcp" as const, hostname: "127.0.0.1", port: client.localPort! };
  const started = performance.now();
  client.resetAndDestroy();
  const session = await sessionOf(ferry, clientAddr);
  assert.equal(session.outcome, "reset");
  assert.ok(performance.now() - started < 5_000, "long before the 30 s bind timeout");
  await assert.rejects(
    Deno.connect({ hostname: "127.0.0.1", port: listening }),
    Deno.errors.ConnectionRefused,
    "no peer is accepted for a client that has gone",
  );
});

Deno.test("a peer that connects just as its BIND's client resets is closed, not leaked", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "30s"]);
  const before = await openDescriptors(ferry.pid);
  const peers: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < 20; i++) {
      const { client, listening } = await bindThroughNode(ferry);
      client.resetAndDestroy();
      // Right behind the reset: ferry's accept may already hold the peer
      // when it sees the reset; that connection was left open for good.
      await Deno.connect({ hostname: "127.0.0.1", port: listening }).then(
        (peer) => peers.push(peer),
        () => {}, // the listener was closed first: nothing to leak
      );
    }
    await waitUntil(
      () => ferry.lines.filter((l) => l.event === "session").length === 20,
      "20 session lines",
    );
    assert.ok(ferry.lines.filter((l) => l.event === "session").every((l) => l.outcome === "reset"));
  } finally {
    for (const peer of peers) peer.close();
  }
  await waitUntil(
    async () => await openDescriptors(ferry.pid) <= before,
    `ferry's descriptors back to ${before} (${peers.length} peers connected)`,
  );
});

Deno.test("a reset right after 8 KiB sent while the BIND waits still ends it at once", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "30s"]);
  const { client, listening } = await bindThroughNode(ferry, new Uint8Array(8192).fill(7));
  const clientAddr = { transport: "tcp" as const, hostname: "127.0.0.1", port: client.localPort! };
  await new Promise((resolve) => setTimeout(resolve, 100)); // the bytes read and kept
  client.resetAndDestroy();
  const session = await sessionOf(ferry, clientAddr, 5_000);
  assert.equal(session.outcome, "reset");
  await assert.rejects(
    Deno.connect({ hostname: "127.0.0.1", port: listening }),
    Deno.errors.ConnectionRefused,
  );
});

Deno.test("bytes a client sends while its BIND waits reach the peer, in order, then its own", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "10s"]);
  const { client, first } = await socks5Bind(ferry, ipv4("127.0.0.1", 0));
  using _client = client;
  // More than one of the wait's reads, sent in pieces while nobody has connected.
  const sent = new Uint8Array(3000).map((_, i) => i % 251);
  for (let at = 0; at < sent.length; at += 700) {
    await client.write(sent.subarray(at, at + 700));
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  using peer = new BufferedConn(
    await Deno.connect({ hostname: "127.0.0.1", port: first.address.port }),
  );
  const second = await client.readMessage(socks5.decodeReply, "second reply");
  assert.equal(second.reply, socks5.Reply.Succeeded);
  await client.write(encoder.encode("after"));
  await client.closeWrite();
  const received = await peer.readToEnd();
  assert.deepEqual(received, new Uint8Array([...sent, ...encoder.encode("after")]));
  peer.close();
  assert.equal((await client.readToEnd()).length, 0);
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.up, sent.length + 5);
});

Deno.test("while its BIND waits, ferry keeps at most 8 KiB of a client's bytes; the rest waits in the kernel, and all reach the peer", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "20s"]);
  const { client, first } = await socks5Bind(ferry, ipv4("127.0.0.1", 0));
  using _client = client;
  // A client that sends without end: were ferry to keep reading, it would
  // hold all of it. Sockets' buffers take a few MiB on loopback, no more.
  const total = 32 * 1048576;
  const body = pseudoRandomBytes(total, 9);
  let accepted = 0;
  const sending = (async () => {
    while (accepted < total) {
      accepted += await client.conn.write(body.subarray(accepted, accepted + 65536));
    }
  })();
  sending.catch(() => {}); // awaited below
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  assert.ok(accepted < total / 2, `${accepted} of ${total} bytes taken while the BIND waited`);
  // Then the peer comes, and every byte reaches it, in order.
  using peer = new BufferedConn(
    await Deno.connect({ hostname: "127.0.0.1", port: first.address.port }),
  );
  const received = peer.readExactly(total, 30_000);
  const second = await client.readMessage(socks5.decodeReply, "second reply");
  assert.equal(second.reply, socks5.Reply.Succeeded);
  await sending;
  assert.equal(await sha256(await received), await sha256(body));
});

Deno.test("--allow-net narrowed: a BIND whose peer is a name outside it gets 0x02, as a CONNECT does", async () => {
  // Deno refuses the lookup before any query leaves; it was logged as a
  // name that does not exist (0x04).
  await using ferry = await startFerry(["socks", "--listen", `127.0.0.1:${closedPort()}`], {
    allowNet: "127.0.0.1",
  });
  // A name that is not ASCII got no reply at all: Deno's permission check throws for it.
  for (const host of ["localhost", "bücher.example"]) {
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    const reply = await socks5Handshake(client, { type: "domain", host, port: 0 }, {
      command: socks5.Command.Bind,
    });
    assert.equal(reply.reply, socks5.Reply.NotAllowed, host);
    client.close();
    const session = await sessionOf(ferry, client.localAddr);
    assert.equal(session.outcome, "not-allowed");
    assert.equal(session.command, "bind");
    const error = String(session.error);
    assert.ok(error.startsWith(`resolving "${host}" is not allowed by --allow-net`), error);
  }
});

Deno.test("SOCKS4 BIND that nobody connects to gets a second reply 91", async () => {
  await using ferry = await startFerry([...LISTEN, "--bind-timeout", "300ms"]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks4.encodeRequest({
    command: socks4.Command.Bind,
    address: ipv4("127.0.0.1", 0),
    userId: new Uint8Array(0),
  }));
  const first = await client.readMessage(socks4.decodeReply, "first reply");
  assert.equal(first.reply, socks4.Reply.Granted);
  assert.equal(first.ip, "127.0.0.1");
  const second = await client.readMessage(socks4.decodeReply, "second reply");
  assert.equal(second.reply, socks4.Reply.Rejected);
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "bind-timeout");
  await assert.rejects(
    Deno.connect({ hostname: "127.0.0.1", port: first.port }),
    Deno.errors.ConnectionRefused,
  );
});

Deno.test("SOCKS5 BIND goes on waiting after a connection reset before ferry accepted it", async () => {
  await using ferry = await startFerry(LISTEN);
  const { client, first } = await socks5Bind(ferry, ipv4("127.0.0.1", 0));
  using _client = client;
  // Stopped, ferry cannot accept the connection before it is reset; its
  // accept() then fails with ENOTCONN, which used to end the BIND with 0x01.
  ferry.kill("SIGSTOP");
  try {
    await connectAndReset(first.address.port);
  } finally {
    ferry.kill("SIGCONT");
  }
  using peer = new BufferedConn(
    await Deno.connect({ hostname: "127.0.0.1", port: first.address.port }),
  );
  const second = await client.readMessage(socks5.decodeReply, "second reply");
  assert.equal(second.reply, socks5.Reply.Succeeded);
  assert.equal(second.address.port, peer.localAddr.port);
  await peer.write(encoder.encode("late but right"));
  assert.equal(decoder.decode(await client.readExactly(14)), "late but right");
});
