/**
 * A client's connection while ferry still dials its target, when the target
 * is slow to answer (a loopback listener whose accept queue is full drops
 * SYNs): once a dial has taken a while, ferry reads the client meanwhile, so
 * a client that gives up and resets ends the dial at once, and bytes it sends
 * meanwhile still reach the target, in order, after the reply.
 */
import assert from "node:assert/strict";
import { startFerry } from "./_helpers/ferry.ts";
import { fullQueueListeners, openingListener } from "./_helpers/full_queue.ts";
import { clientThatResets, exchange } from "./_helpers/reset.ts";
import { sessionOf } from "./_helpers/session_log.ts";
import { ss, stillKnocking } from "./_helpers/ss.ts";
import { BufferedConn, concat, ipv4, socks5, socks5Handshake } from "./_helpers/socks_client.ts";

const encoder = new TextEncoder();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Longer than ferry's wait before it reads a client whose dial goes on
 * (250 ms, then the next tick of its deadline sweep, 100 ms with a 1 s
 * handshake timeout), so the client is being read by then.
 */
const WATCHED_AFTER_MS = 700;

Deno.test("a client that resets while its CONNECT is still dialling ends the dial: logged reset, nothing left knocking at the target", async () => {
  await using blackHole = await fullQueueListeners(["127.0.0.1"]);
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--connect-timeout",
    "60s",
    "--handshake-timeout",
    "1s",
  ]);
  const request = socks5.encodeRequest({
    command: socks5.Command.Connect,
    address: ipv4("127.0.0.1", blackHole.port),
  });
  const clientAddr = await clientThatResets(ferry.port, async (socket) => {
    await exchange(socket, socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }), 2);
    socket.write(request);
    await sleep(WATCHED_AFTER_MS);
  });
  // Without the reading, the line would come at the 60 s connect timeout.
  const session = await sessionOf(ferry, clientAddr, 5_000);
  assert.equal(session.outcome, "reset");
  assert.equal(session.target, `127.0.0.1:${blackHole.port}`);
  assert.equal(session.command, "connect");
  assert.deepEqual(
    await stillKnocking("127.0.0.1", blackHole.port),
    [],
    "ferry's dial is still running",
  );
});

Deno.test("a forwarder's client that resets while the upstream is still dialled ends the dial", async () => {
  await using blackHole = await fullQueueListeners(["127.0.0.1"]);
  await using ferry = await startFerry([
    "forward",
    "--listen",
    "127.0.0.1:0",
    "--to",
    `127.0.0.1:${blackHole.port}`,
    "--pool",
    "0",
    "--connect-timeout",
    "60s",
  ]);
  const clientAddr = await clientThatResets(ferry.port, async (socket) => {
    socket.write(encoder.encode("GET / HTTP/1.0\r\n\r\n")); // kept for the upstream meanwhile
    // The sweep ticks once a second here: the reading starts within 2.25 s.
    await sleep(300);
  });
  const session = await sessionOf(ferry, clientAddr, 8_000);
  assert.equal(session.outcome, "reset");
  assert.deepEqual(
    await stillKnocking("127.0.0.1", blackHole.port),
    [],
    "ferry's dial is still running",
  );
});

for (const after of ["more bytes after the reply", "a FIN before the reply"] as const) {
  Deno.test(`bytes sent while a CONNECT is still dialling reach the target in order, with ${after}`, async () => {
    await using slow = await openingListener();
    await using ferry = await startFerry([
      "socks",
      "--listen",
      "127.0.0.1:0",
      "--handshake-timeout",
      "1s",
    ]);
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    const meanwhile = encoder.encode("sent while ferry was still dialling;");
    const later = encoder.encode("sent after the reply.");
    const replying = socks5Handshake(client, ipv4("127.0.0.1", slow.port));
    await sleep(WATCHED_AFTER_MS);
    await client.write(meanwhile);
    if (after === "a FIN before the reply") await client.closeWrite();
    await slow.open(); // the dial's next SYN gets in (ferry retries it 1 s after the first)
    const reply = await replying;
    assert.equal(reply.reply, socks5.Reply.Succeeded);
    const sent = after === "a FIN before the reply" ? meanwhile : concat([meanwhile, later]);
    if (after === "more bytes after the reply") {
      await client.write(later);
      await client.closeWrite();
    }
    // The target sends back everything it got, once it has the client's FIN.
    const echoed = await client.readToEnd();
    assert.equal(new TextDecoder().decode(echoed), new TextDecoder().decode(sent));
    client.close();
    const session = await sessionOf(ferry, client.localAddr);
    assert.equal(session.outcome, "ok");
    assert.deepEqual([session.up, session.down], [sent.length, sent.length]);
  });
}

/**
 * How many of the bytes a client sent ferry has read, once they have
 * settled: what it sent, less what the kernel holds on either side (the
 * client's send queue and ferry's receive queue, from `ss`).
 */
async function readByFerry(client: Deno.TcpConn, sent: number): Promise<number> {
  const port = client.localAddr.port;
  const queue = async (filter: string, column: number) => {
    const lines = await ss("-tnH", "state", "established", filter, `127.0.0.1:${port}`);
    assert.equal(lines.length, 1, `ss ${filter} :${port}: ${lines.join("\n")}`);
    return Number(lines[0]!.trim().split(/\s+/)[column]);
  };
  const clientSendQueue = await queue("src", 1);
  const ferryReceiveQueue = await queue("dst", 0);
  return sent - clientSendQueue - ferryReceiveQueue;
}

/** Writes 64 KiB at a time until a write has taken nothing for 300 ms; returns the bytes taken. */
async function sendUntilStalled(conn: Deno.TcpConn): Promise<number> {
  const chunk = new Uint8Array(65536).fill(0x61);
  let sent = 0;
  for (;;) {
    const write = conn.write(chunk);
    const taken = await Promise.race([write, sleep(300).then(() => null)]);
    if (taken === null) {
      // Nothing fits: the write waits for room that ferry must not make, and
      // fails when the test closes the connection.
      write.catch(() => {});
      return sent;
    }
    sent += taken;
  }
}

for (const mode of ["socks", "forward"] as const) {
  Deno.test(`a ${mode} client that sends while its dial goes on is read up to 8 KiB, the rest left in the kernel`, async () => {
    // Else a client could make ferry hold whatever it sends to a slow target.
    await using blackHole = await fullQueueListeners(["127.0.0.1"]);
    // A short grace: the dial still goes on when ferry is stopped, and would
    // hold the stop for 10 s.
    const common = [
      "--listen",
      "127.0.0.1:0",
      "--connect-timeout",
      "60s",
      "--shutdown-grace",
      "1s",
    ];
    await using ferry = await startFerry(
      mode === "socks"
        ? ["socks", ...common, "--handshake-timeout", "1s"]
        : ["forward", ...common, "--to", `127.0.0.1:${blackHole.port}`, "--pool", "0"],
    );
    using conn = await Deno.connect({ hostname: ferry.hostname, port: ferry.port });
    if (mode === "socks") {
      // The request, but not the wait for its reply, which comes only at the dial's end.
      const client = new BufferedConn(conn);
      await client.write(socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }));
      await client.readExactly(2);
      await client.write(
        socks5.encodeRequest({
          command: socks5.Command.Connect,
          address: ipv4("127.0.0.1", blackHole.port),
        }),
      );
    }
    const sent = await sendUntilStalled(conn);
    // The reading starts within 700 ms (SOCKS) or 2.25 s (the forwarder's
    // sweep ticks once a second), and then takes what it may at once.
    await sleep(mode === "socks" ? WATCHED_AFTER_MS : 2_500);
    const read = await readByFerry(conn, sent);
    // 8 KiB kept, and the read of at most 512 bytes that passed the limit.
    assert.ok(read > 0 && read <= 8192 + 512, `ferry read ${read} of ${sent} bytes`);
  });
}
