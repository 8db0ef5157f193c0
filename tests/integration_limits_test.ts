/**
 * Faults and endings, with ferry as a child process: descriptor exhaustion
 * (run under prlimit), and every way a session can end, checked with `ss` for
 * sockets left in CLOSE_WAIT and for which side closed first.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { type FerryProcess, startFerry } from "./_helpers/ferry.ts";
import { startEchoServer } from "./_helpers/echo_server.ts";
import { readExactly, socks5Connect } from "./_helpers/socks5_once.ts";
import { ss } from "./_helpers/ss.ts";
import { connectAndReset } from "./_helpers/reset.ts";
import {
  BufferedConn,
  closedPort,
  ipv4,
  socks5,
  socks5Handshake,
} from "./_helpers/socks_client.ts";
import { sessionOf } from "./_helpers/session_log.ts";

/**
 * Idle clients that never finish a handshake, connected until ferry is out
 * of descriptors (an accept met EMFILE): each costs ferry one. Closing
 * them gives the descriptors back.
 */
class DescriptorHog implements Disposable {
  readonly #held: Deno.TcpConn[] = [];

  static async fill(ferry: { port: number; waitFor: FerryProcess["waitFor"] }) {
    const hog = new DescriptorHog();
    try {
      for (let i = 0; i < 60; i++) {
        hog.#held.push(await Deno.connect({ hostname: "127.0.0.1", port: ferry.port }));
      }
      await ferry.waitFor((l) => l.event === "accept-error" && l.code === "EMFILE");
    } catch (error) {
      hog.close();
      throw error;
    }
    return hog;
  }

  close(): void {
    for (const conn of this.#held.splice(0)) conn.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A SOCKS5 client whose greeting ferry has answered (no auth): it can ask for a target later. */
async function greetedClient(ferry: { hostname: string; port: number }): Promise<BufferedConn> {
  const client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }));
  assert.equal(
    await client.readMessage(socks5.decodeMethodSelection, "method"),
    socks5.Method.NoAuth,
  );
  return client;
}

Deno.test("ferry under prlimit --nofile keeps accepting after EMFILE once descriptors free up", async () => {
  const echo = startEchoServer();
  await using ferry = await startFerry(
    ["socks", "--listen", "127.0.0.1:0", "--handshake-timeout", "60s"],
    { wrapper: ["prlimit", "--nofile=48"] },
  );
  await ferry.waitFor((l) => l.event === "nofile-low");
  const started = performance.now();
  {
    using _hog = await DescriptorHog.fill(ferry);
    const exhausted = ferry.lines.find((l) => l.event === "accept-error")!;
    assert.equal(exhausted.code, "EMFILE");
    assert.equal(exhausted.listen, `127.0.0.1:${ferry.port}`, "names its listener");
  }
  // Descriptors are free again: a new client must be served end to end.
  const conn = await socks5Connect(ferry.port, echo.addr);
  try {
    await conn.write(new TextEncoder().encode("after EMFILE"));
    assert.equal(new TextDecoder().decode(await readExactly(conn, 12)), "after EMFILE");
  } finally {
    conn.close();
  }
  const seconds = (performance.now() - started) / 1000;
  const errorLines = ferry.lines.filter((l) => l.event === "accept-error").length;
  assert.ok(
    errorLines <= Math.ceil(seconds) + 1,
    `${errorLines} accept-error lines in ${seconds}s`,
  );
  const status = await ferry.stop();
  assert.equal(status.code, 0);
  await echo.close();
});

for (
  const [command, code, port] of [["connect", socks5.Command.Connect, 9], [
    "bind",
    socks5.Command.Bind,
    0,
  ]] as const
) {
  Deno.test(`a ${command.toUpperCase()} whose name cannot be looked up for want of descriptors gets 0x01 and says so, not 'no such name'`, async () => {
    // Out of descriptors, the system resolver cannot open /etc/hosts or a
    // socket, and says the name does not exist (ENOTFOUND): the client got
    // 0x04 and the log pointed at DNS instead of the open-files limit (a
    // BIND's peer was still blamed so after CONNECT's target no longer was).
    // The dial waits for a descriptor until the connect timeout, which is
    // then not blamed either.
    await using ferry = await startFerry(
      ["socks", "--listen", "127.0.0.1:0", "--handshake-timeout", "60s", "--connect-timeout", "1s"],
      { wrapper: ["prlimit", "--nofile=48"] },
    );
    await ferry.waitFor((l) => l.event === "nofile-low");
    using asking = await greetedClient(ferry);
    {
      using _hog = await DescriptorHog.fill(ferry);
      await asking.write(socks5.encodeRequest({
        command: code,
        address: { type: "domain", host: "localhost", port },
      }));
      const reply = await asking.readMessage(socks5.decodeReply, "reply");
      assert.equal(reply.reply, socks5.Reply.GeneralFailure);
    }
    const session = await sessionOf(ferry, asking.localAddr);
    assert.equal(session.outcome, "general-failure");
    assert.equal(session.command, command);
    assert.match(
      String(session.error),
      /^cannot resolve "localhost": Too many open files \(ferry is out of descriptors\)$/,
    );
  });
}

for (const endedFirst of [false, true]) {
  Deno.test(`a CONNECT out of descriptors waits for one and is served once one frees up${endedFirst ? " (after an earlier session has ended)" : ""}`, async () => {
    // It failed at once with 0x01; each failure freed the client's descriptor
    // for the next client accepted, who failed the same way.
    const echo = startEchoServer();
    await using ferry = await startFerry(
      ["socks", "--listen", "127.0.0.1:0", "--handshake-timeout", "60s"],
      { wrapper: ["prlimit", "--nofile=48"] },
    );
    await ferry.waitFor((l) => l.event === "nofile-low");
    if (endedFirst) {
      // A relay that ends, both ways closed. A session gives its target back
      // once, however it ends: counted back twice, the count said no session
      // held a target while one did, and the dial gave up at once with 0x01.
      const ended = await socks5Connect(ferry.port, echo.addr);
      await ended.closeWrite();
      assert.equal(await ended.read(new Uint8Array(1)), null);
      ended.close();
      assert.equal((await sessionOf(ferry, ended.localAddr)).outcome, "ok");
    }
    // A session with a target, which will give descriptors back when it ends:
    // without one, nothing would, and the dial fails at once instead.
    const relaying = await socks5Connect(ferry.port, echo.addr);
    using asking = await greetedClient(ferry);
    let replied: Promise<socks5.ReplyMessage>;
    {
      using _hog = await DescriptorHog.fill(ferry);
      await asking.write(socks5.encodeRequest({
        command: socks5.Command.Connect,
        address: { type: "ipv4", host: "127.0.0.1", port: echo.addr.port },
      }));
      replied = asking.readMessage(socks5.decodeReply, "reply");
      // Waiting: no reply while every descriptor is taken.
      const early = await Promise.race([
        replied.then((r) => `reply ${r.reply}`),
        new Promise((resolve) => setTimeout(() => resolve("waiting"), 500)),
      ]);
      assert.equal(early, "waiting");
    }
    // The hog's descriptors free up: the dial gets one, not a later client.
    const reply = await replied;
    assert.equal(reply.reply, socks5.Reply.Succeeded);
    await asking.write(new TextEncoder().encode("waited"));
    assert.equal(new TextDecoder().decode(await asking.readAtLeast(6)), "waited");
    asking.close();
    const session = await sessionOf(ferry, asking.localAddr);
    assert.equal(session.outcome, "ok");
    relaying.close();
    await echo.close();
  });
}

Deno.test("a CONNECT still waiting for a descriptor at its connect timeout gets 0x01 for the shortage, not a timeout's 0x04", async () => {
  // Ferry's own shortage says nothing of the target: the connect timeout
  // ends the wait, but the client is told 0x01 and the line blames the
  // open-files limit. The timeout is shorter than the second after which a
  // wait that sees no session end gives up by itself.
  const echo = startEchoServer();
  await using ferry = await startFerry(
    [
      "socks",
      "--listen",
      "127.0.0.1:0",
      "--handshake-timeout",
      "60s",
      "--connect-timeout",
      "500ms",
    ],
    { wrapper: ["prlimit", "--nofile=48"] },
  );
  await ferry.waitFor((l) => l.event === "nofile-low");
  // A session with a target, so that the dial waits for a descriptor.
  const relaying = await socks5Connect(ferry.port, echo.addr);
  try {
    using asking = await greetedClient(ferry);
    {
      using _hog = await DescriptorHog.fill(ferry);
      await asking.write(socks5.encodeRequest({
        command: socks5.Command.Connect,
        address: { type: "ipv4", host: "127.0.0.1", port: echo.addr.port },
      }));
      const reply = await asking.readMessage(socks5.decodeReply, "reply");
      assert.equal(reply.reply, socks5.Reply.GeneralFailure);
    }
    const session = await sessionOf(ferry, asking.localAddr);
    assert.equal(session.outcome, "general-failure");
    assert.match(
      String(session.error),
      /^connect to 127\.0\.0\.1 failed: Too many open files .*\(ferry is out of descriptors\)$/,
    );
  } finally {
    relaying.close();
    await echo.close();
  }
});

for (const idleSession of [false, true]) {
  Deno.test(`a SOCKS burst that takes every descriptor in handshakes is answered soon, not stalled until the connect timeout${idleSession ? " (beside an idle session)" : ""}`, async () => {
    // Accepted before any of them dialled, the clients held every descriptor
    // and each dial waited for one that nothing would free: no listener
    // accepted and no client was answered for the whole --connect-timeout.
    // A dial short of a descriptor now gives up after 155 ms with no session
    // holding a target, or a second with none taking or giving one back: an
    // idle session holds its target but frees nothing.
    const echo = startEchoServer();
    await using ferry = await startFerry(
      ["socks", "--listen", "127.0.0.1:0", "--connect-timeout", "60s"],
      { wrapper: ["prlimit", "--nofile=45"] },
    );
    await ferry.waitFor((l) => l.event === "nofile-low");
    const idle = idleSession ? await socks5Connect(ferry.port, echo.addr) : null;
    const clients = Array.from({ length: 25 }, async () => {
      using client = await BufferedConn.connect(ferry.hostname, ferry.port);
      // Within the helper's 10 s deadline, far below the connect timeout.
      const reply = await socks5Handshake(client, ipv4("127.0.0.1", echo.addr.port));
      if (reply.reply !== socks5.Reply.Succeeded) return reply.reply;
      await client.write(new TextEncoder().encode("burst"));
      assert.equal(new TextDecoder().decode(await client.readAtLeast(5)), "burst");
      return reply.reply;
    });
    const replies = await Promise.all(clients);
    idle?.close();
    const ok = replies.filter((r) => r === socks5.Reply.Succeeded).length;
    const refused = replies.filter((r) => r === socks5.Reply.GeneralFailure).length;
    assert.equal(ok + refused, 25, `replies: ${replies.join(",")}`);
    assert.ok(ok > 0, `replies: ${replies.join(",")}`);
    await echo.close();
  });
}

Deno.test("the open-files warning comes also when LD_LIBRARY_PATH is set", async () => {
  // Deno will not run a program with LD_* variables in its environment without
  // --allow-all, so ferry's prlimit check was skipped, silently.
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"], {
    wrapper: ["prlimit", "--nofile=64"],
    env: { LD_LIBRARY_PATH: "/usr/lib" },
  });
  const warning = await ferry.waitFor((l) => l.event === "nofile-low", 10_000);
  assert.equal(warning.limit, 64);
});

Deno.test("a connection over --max-conns-per-ip is closed and its line names the listener", async () => {
  // With several listeners in one file, a rejected line did not say whose limit it was.
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--max-conns-per-ip",
    "1",
  ]);
  using _first = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  using second = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  const rejected = await ferry.waitFor((l) => l.event === "rejected");
  assert.equal(rejected.limit, "max-conns-per-ip");
  assert.equal(rejected.listen, `127.0.0.1:${ferry.port}`);
  assert.equal(rejected.client, `127.0.0.1:${second.localAddr.port}`);
});

Deno.test("rejected lines account for every refusal, each limit on its own lines", async () => {
  // The count held back was written only on the next line of either limit,
  // which might never come: of 30 refusals the log showed one, and a
  // max-conns line could carry per-IP refusals.
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--max-conns",
    "3",
    "--max-conns-per-ip",
    "2",
    "--handshake-timeout",
    "60s",
  ]);
  const held: net.Socket[] = [];
  const connectFrom = (localAddress: string) =>
    new Promise<void>((resolve, reject) => {
      const conn = net.connect({ host: "127.0.0.1", port: ferry.port, localAddress }, resolve);
      conn.on("error", () => {}); // refused ones are closed by ferry
      conn.once("error", reject);
      held.push(conn);
    });
  try {
    // 127.0.0.1: 2 sessions, then 4 refused per IP. 127.0.0.2: 1 session
    // (3 in all), then 3 refused at max-conns.
    for (let i = 0; i < 6; i++) await connectFrom("127.0.0.1");
    for (let i = 0; i < 4; i++) await connectFrom("127.0.0.2");
    const refusals = () => {
      const counts: Record<string, number> = {};
      for (const line of ferry.lines.filter((l) => l.event === "rejected")) {
        const limit = String(line.limit);
        counts[limit] = (counts[limit] ?? 0) + 1 + Number(line.suppressed);
      }
      return counts;
    };
    const expected = { "max-conns-per-ip": 4, "max-conns": 3 };
    // Held back at most a second; then logged without another refusal to carry it.
    await ferry.waitFor(
      () => refusals()["max-conns"] === 3 && refusals()["max-conns-per-ip"] === 4,
      5_000,
    )
      .catch(() => {});
    assert.deepEqual(refusals(), expected);
  } finally {
    for (const conn of held) conn.destroy();
  }
});

Deno.test("the open-files warning counts a forwarder's pooled connections too", async () => {
  // 10 sessions need 84 descriptors, under the limit of 256; the pool's 200
  // more do not fit, and the warning used to count sessions alone.
  await using ferry = await startFerry(
    [
      "forward",
      "--listen",
      "127.0.0.1:0",
      "--to",
      `127.0.0.1:${closedPort()}`,
      "--pool",
      "200",
      "--max-conns",
      "10",
    ],
    { wrapper: ["prlimit", "--nofile=256"] },
  );
  const warning = await ferry.waitFor((l) => l.event === "nofile-low", 10_000);
  assert.deepEqual([warning.limit, warning.needed, warning.pooled], [256, 284, 200]);
  assert.match(
    String(warning.message),
    /that 10 sessions at once \(two descriptors each\) and 200 pooled connections need; .* or the pools$/,
  );
});

Deno.test("the open-files warning comes one descriptor below what --max-conns needs, not at it", async () => {
  // 10 sessions need 2 × 10 + 64 = 84 descriptors.
  for (const [limit, warned] of [[84, false], [83, true]] as const) {
    await using ferry = await startFerry(
      ["socks", "--listen", "127.0.0.1:0", "--max-conns", "10"],
      {
        wrapper: ["prlimit", `--nofile=${limit}`],
      },
    );
    // Logged with the listening line, so written by the time ferry has stopped.
    assert.equal((await ferry.stop()).code, 0);
    const warnings = ferry.lines.filter((l) => l.event === "nofile-low");
    assert.equal(
      warnings.length,
      warned ? 1 : 0,
      `at --nofile=${limit}: ${JSON.stringify(warnings)}`,
    );
    if (warned) {
      assert.equal(
        warnings[0]!.message,
        "open-files limit 83 is below the 84 that 10 sessions at once (two descriptors each) " +
          "need; raise it (ulimit -n) or lower the session limit (--max-conns, maxConns)",
      );
    }
  }
});

Deno.test("at the lowest open-files limit ferry can listen under, it still warns: too low to even check", async () => {
  // Starting prlimit to learn the limit needs a few descriptors more than
  // listening does; the check failed, and ferry said nothing at all. How
  // many descriptors Deno holds as it starts varies from run to run (its
  // caches' databases, opened by then or not), so one sweep up the limits
  // can step over those few: up to three sweeps.
  for (let sweep = 1; sweep <= 3; sweep++) {
    for (let limit = 16; limit <= 64; limit++) {
      let ferry;
      try {
        ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"], {
          wrapper: ["prlimit", `--nofile=${limit}`],
        });
      } catch {
        continue; // cannot listen (listen-failed) at this limit
      }
      await using _ferry = ferry;
      const warning = await ferry.waitFor((l) => l.event === "nofile-low", 10_000);
      if (warning.limit === null) {
        assert.match(String(warning.message), /too low to even learn/);
        return;
      }
      // Learned at the first limit it listened under: this sweep stepped over.
      assert.equal(warning.limit, limit, JSON.stringify(warning));
      break;
    }
  }
  assert.fail("in three sweeps, ferry never listened under a limit too low to learn it");
});

Deno.test("connections reset while they wait to be accepted do not hold up the next client", async () => {
  const echo = startEchoServer();
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  // With ferry stopped, every connection waits in the listen queue and is
  // reset there; accept() then fails on each with ENOTCONN. Backing off after
  // each (as after EMFILE, up to 250 ms) kept the next client waiting ~75 s.
  const resets = 300;
  ferry.kill("SIGSTOP");
  try {
    for (let i = 0; i < resets; i++) await connectAndReset(ferry.port);
  } finally {
    ferry.kill("SIGCONT");
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stuck = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error("no reply to the next client within 10 s")), 10_000);
  });
  try {
    const conn = await Promise.race([socks5Connect(ferry.port, echo.addr), stuck]);
    try {
      await conn.write(new TextEncoder().encode("next"));
      assert.equal(new TextDecoder().decode(await readExactly(conn, 4)), "next");
    } finally {
      conn.close();
    }
  } finally {
    clearTimeout(timer);
  }
  const lost = await ferry.waitFor((l) => l.event === "accept-lost");
  assert.equal(lost.listen, `127.0.0.1:${ferry.port}`, "names its listener");
  assert.equal(lost.code, "ENOTCONN");
  assert.equal(ferry.lines.filter((l) => l.event === "accept-error").length, 0, "no back-off");
  assert.equal((await ferry.stop()).code, 0);
  const stopped = ferry.lines.find((l) => l.event === "stopped");
  assert.equal(stopped?.acceptErrors, resets);
  await echo.close();
});

/** How a target behaves, chosen by the first byte the client sends through ferry. */
type Ending =
  | "client-closes-first"
  | "target-closes-first"
  | "client-resets"
  | "target-resets"
  | "client-half-closes"
  | "target-half-closes";
const ENDINGS: Ending[] = [
  "client-closes-first",
  "target-closes-first",
  "client-resets",
  "target-resets",
  "client-half-closes",
  "target-half-closes",
];
const BIG = 256 * 1024;

async function readToEnd(conn: Deno.Conn): Promise<number> {
  const buf = new Uint8Array(64 * 1024);
  let total = 0;
  for (let n; (n = await conn.read(buf)) !== null;) total += n;
  return total;
}

async function targetSide(conn: Deno.TcpConn): Promise<void> {
  try {
    const ending = ENDINGS[(await readExactly(conn, 1))[0]!]!;
    switch (ending) {
      case "client-closes-first":
      case "client-resets":
        if (ending === "client-resets") await conn.write(new Uint8Array(BIG)).catch(() => {});
        await readToEnd(conn);
        break;
      case "target-closes-first":
        await conn.write(new TextEncoder().encode("bye"));
        break;
      case "target-resets":
        // Closing with unread input makes the kernel send RST instead of FIN.
        await readExactly(conn, 1000);
        break;
      case "client-half-closes":
        await readToEnd(conn);
        await conn.write(new Uint8Array(BIG));
        break;
      case "target-half-closes":
        await conn.write(new Uint8Array(BIG));
        await conn.closeWrite();
        await readToEnd(conn);
        break;
    }
  } catch {
    // resets are part of the script
  } finally {
    conn.close();
  }
}

async function clientSide(conn: Deno.TcpConn, ending: Ending): Promise<void> {
  try {
    await conn.write(Uint8Array.of(ENDINGS.indexOf(ending)));
    switch (ending) {
      case "client-closes-first":
        await conn.write(new TextEncoder().encode("hello"));
        break;
      case "target-closes-first":
        assert.equal(await readToEnd(conn), 3);
        break;
      case "client-resets":
        await readExactly(conn, 1); // data is waiting unread: close() now sends RST
        break;
      case "target-resets":
        await conn.write(new Uint8Array(64 * 1024)).catch(() => {});
        await readToEnd(conn).catch(() => 0);
        break;
      case "client-half-closes":
        await conn.write(new TextEncoder().encode("request"));
        await conn.closeWrite();
        assert.equal(await readToEnd(conn), BIG);
        break;
      case "target-half-closes":
        assert.equal(await readToEnd(conn), BIG);
        await conn.write(new TextEncoder().encode("still talking"));
        break;
    }
  } finally {
    conn.close();
  }
}

Deno.test("after every kind of ending ferry holds no socket in CLOSE_WAIT and lets clients close first", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const targets: Promise<void>[] = [];
  const accepting = (async () => {
    for (let i = 0; i < ENDINGS.length; i++) targets.push(targetSide(await listener.accept()));
  })();
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  const clientPorts = new Map<Ending, number>();
  await Promise.all(ENDINGS.map(async (ending) => {
    const conn = await socks5Connect(ferry.port, listener.addr);
    clientPorts.set(ending, conn.localAddr.port);
    await clientSide(conn, ending);
  }));
  await accepting;
  await Promise.all(targets);
  listener.close();
  const sessionLines = () => ferry.lines.filter((l) => l.event === "session");
  await ferry.waitFor(() => sessionLines().length === ENDINGS.length);
  assert.equal(sessionLines().length, ENDINGS.length);

  // ss must see ferry's sockets at all (it names the owning pid only where it
  // may read /proc), or the empty list below would prove nothing.
  const listening = (await ss("-tlnpH", "sport", "=", `:${ferry.port}`)).filter((l) =>
    l.includes(`pid=${ferry.pid},`)
  );
  assert.equal(listening.length, 1, "ss lists ferry's listening socket with its pid");

  // Sessions have all ended: none of ferry's sockets may wait for a close.
  const closeWait = (await ss("-tanpH", "state", "close-wait")).filter((l) =>
    l.includes(`pid=${ferry.pid},`)
  );
  assert.deepEqual(closeWait, []);

  // Whoever closes first keeps TIME_WAIT. Where the client closed first,
  // that must be the client, not ferry's end at the listen port.
  const timeWait = await ss("-tanpH", "state", "time-wait");
  for (const ending of ["client-closes-first", "client-half-closes"] as const) {
    const clientPort = clientPorts.get(ending)!;
    const clientClosedFirst = timeWait.some((l) =>
      l.includes(`127.0.0.1:${clientPort} `) && l.includes(`127.0.0.1:${ferry.port}`)
    );
    assert.equal(clientClosedFirst, true, `${ending}: the client's TIME_WAIT is listed`);
    const ferryClosedFirst = timeWait.some((l) =>
      l.includes(`127.0.0.1:${ferry.port} `) && l.includes(`127.0.0.1:${clientPort}`)
    );
    assert.equal(ferryClosedFirst, false, `${ending}: ferry closed first`);
  }
  assert.equal((await ferry.stop()).code, 0);
});

Deno.test("after a refusal ferry waits for the client to close first, so the TIME_WAIT is the client's", async () => {
  // A failure reply is the end of the session, but ferry does not close on
  // the client: closing first would leave TIME_WAIT on ferry's side, and a
  // reset (unread bytes) could destroy the reply. The client closes.
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks5Handshake(client, ipv4("127.0.0.1", closedPort()));
  assert.equal(reply.reply, socks5.Reply.ConnectionRefused);
  const clientPort = client.localAddr.port;
  // Ferry holds its end open for the client to close (waitForEnd closes it at 300 ms).
  await assert.rejects(client.waitForEnd(300), /timed out/, "ferry closed first");
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "connection-refused");
  const timeWait = await ss("-tanH", "state", "time-wait");
  assert.ok(
    timeWait.some((l) =>
      l.includes(`127.0.0.1:${clientPort} `) && l.includes(`127.0.0.1:${ferry.port}`)
    ),
    `the client's TIME_WAIT is listed:\n${timeWait.join("\n")}`,
  );
  assert.ok(
    !timeWait.some((l) =>
      l.includes(`127.0.0.1:${ferry.port} `) && l.includes(`127.0.0.1:${clientPort}`)
    ),
    "ferry closed first",
  );
});
