/**
 * `ferry run --config FILE` as a user runs it: one file, several listeners of
 * both kinds, all served; a bad file exits 2 and names the path of the problem.
 */
import assert from "node:assert/strict";
import { ferryCommandArgs, type LogLine, startFerry } from "./_helpers/ferry.ts";
import { waitUntil } from "./_helpers/forward_support.ts";
import { startEchoServer } from "./_helpers/echo_server.ts";
import { readExactly, socks5Connect } from "./_helpers/socks5_once.ts";
import {
  BufferedConn,
  closedPort,
  ipv4,
  socks5,
  socks5Handshake,
} from "./_helpers/socks_client.ts";
import { ss } from "./_helpers/ss.ts";
import { associate, frame, nextDatagram, udpEcho } from "./_helpers/udp_support.ts";

/** The port a `listening` line says its listener got. */
function listenedPort(line: LogLine): number {
  return Number(String(line.listen).split(":").pop());
}

async function echoOnce(conn: Deno.Conn, text: string): Promise<string> {
  const bytes = new TextEncoder().encode(text);
  await conn.write(bytes);
  return new TextDecoder().decode(await readExactly(conn, bytes.length));
}

Deno.test("ferry run --config serves a socks and a forward listener from one file", async () => {
  const echo = startEchoServer();
  const path = await Deno.makeTempFile({ suffix: ".jsonc" });
  try {
    await Deno.writeTextFile(
      path,
      `{
        // two listeners, both on free ports
        "log": { "level": "debug", "format": "json" },
        "defaults": { "idleTimeout": "30s" },
        "listeners": [
          { "kind": "socks", "listen": "127.0.0.1:0", "shutdownGrace": "7s" },
          { "kind": "forward", "listen": "127.0.0.1:0", "to": ["127.0.0.1:${echo.addr.port}"], "pool": 1, "shutdownGrace": "3s" },
        ],
      }`,
    );
    await using ferry = await startFerry(["run", "--config", path]);
    const forwardLine = await ferry.waitFor((l) => l.event === "listening" && l.kind === "forward");
    const socksLine = ferry.lines.find((l) => l.event === "listening" && l.kind === "socks");
    assert.ok(socksLine, "socks listener started");
    const forwardPort = listenedPort(forwardLine);
    const socksPort = listenedPort(socksLine);

    const viaSocks = await socks5Connect(socksPort, echo.addr);
    try {
      assert.equal(await echoOnce(viaSocks, "through socks"), "through socks");
    } finally {
      viaSocks.close();
    }
    const viaForward = await Deno.connect({ hostname: "127.0.0.1", port: forwardPort });
    try {
      assert.equal(await echoOnce(viaForward, "through forward"), "through forward");
    } finally {
      viaForward.close();
    }
    await ferry.waitFor(() =>
      ferry.lines.filter((l) => l.event === "session" && l.outcome === "ok").length === 2
    );
    // Each session line names the listener it came in on.
    const sessions = ferry.lines.filter((l) => l.event === "session");
    assert.deepEqual(
      sessions.map((l) => `${l.protocol} ${l.listen}`).sort(),
      [`forward ${forwardLine.listen}`, `socks5 ${socksLine.listen}`],
    );
    assert.equal((await ferry.stop()).code, 0);
    // The drain lasts as long as the longest grace of the listeners.
    const shutdown = ferry.lines.find((l) => l.event === "shutdown");
    assert.equal(shutdown?.graceMs, 7_000, JSON.stringify(shutdown));
  } finally {
    await Deno.remove(path);
    await echo.close();
  }
});

Deno.test("ferry run --config with an invalid file exits 2 and names every bad path", async () => {
  const path = await Deno.makeTempFile({ suffix: ".jsonc" });
  try {
    await Deno.writeTextFile(
      path,
      `{ "listeners": [
          { "kind": "socks", "listen": "127.0.0.1:0", "idleTimeout": "soon" },
          { "kind": "forward", "listen": "127.0.0.1:0", "to": ["nope"] },
        ] }`,
    );
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ferryCommandArgs(["run", "--config", path, "--log-level", "bogus"]),
      stdin: "null",
      stdout: "null",
      signal: AbortSignal.timeout(30_000),
    }).output();
    const text = new TextDecoder().decode(stderr);
    assert.equal(code, 2, text);
    assert.match(text, /listeners\[0\]\.idleTimeout: .*"soon"/);
    assert.match(text, /listeners\[1\]\.to\[0\]: expected HOST:PORT.*"nope"/);
    // The flag's problem too, at once: it used to wait until the file was fixed.
    assert.match(text, /--log-level: .*"bogus"/);
  } finally {
    await Deno.remove(path);
  }
});

/** Runs `ferry ARGS` to its end (bounded by ferry's own exit, or `ms`); its status and stderr. */
async function runToEnd(args: string[], ms = 30_000): Promise<{ code: number; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ferryCommandArgs(args),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), ms);
  try {
    const { code, stderr } = await child.output();
    return { code, stderr: new TextDecoder().decode(stderr) };
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `ferry run` to its end on a configuration file of `listeners`, with JSON log lines. */
async function runListeners(listeners: unknown[]): Promise<{ code: number; stderr: string }> {
  const path = await Deno.makeTempFile({ suffix: ".jsonc" });
  try {
    await Deno.writeTextFile(path, JSON.stringify({ listeners }));
    return await runToEnd(["run", "--config", path, "--log-format", "json"]);
  } finally {
    await Deno.remove(path);
  }
}

Deno.test("a listener that cannot open stops ferry before any forwarder's pool has dialled", async () => {
  // The pool used to start with its listener, so an upstream (sshd, say) got
  // connections that ferry dropped a moment later when the next listener failed.
  using upstream = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { code, stderr } = await runListeners([
    { kind: "forward", listen: "127.0.0.1:0", to: [`127.0.0.1:${upstream.addr.port}`] },
    { kind: "socks", listen: `127.0.0.1:${taken.addr.port}` },
  ]);
  assert.equal(code, 1, stderr);
  assert.match(stderr, /"event":"listen-failed"/);
  // A dial that reached the upstream waits in its accept queue.
  const dialled = await Promise.race([
    upstream.accept().then((conn) => (conn.close(), true)),
    new Promise<false>((resolve) => setTimeout(() => resolve(false), 500)),
  ]);
  assert.equal(dialled, false, "the upstream was dialled");
});

Deno.test("a listener whose name resolves to another listener's address says that ferry itself holds it", async () => {
  // `localhost:P` beside `127.0.0.1:P` passes the file's collision check (a
  // name is not looked up there) and then fails at bind with only "Address
  // already in use", as if another program held the port.
  let localhostAt: string;
  {
    using probe = Deno.listen({ hostname: "localhost", port: 0 });
    localhostAt = probe.addr.hostname; // what Deno binds for the name here
  }
  using free = Deno.listen({ hostname: localhostAt, port: 0 });
  const port = free.addr.port;
  free.close();
  const literal = localhostAt.includes(":") ? `[${localhostAt}]:${port}` : `${localhostAt}:${port}`;
  const { code, stderr } = await runListeners([
    { kind: "socks", listen: literal },
    { kind: "socks", listen: `localhost:${port}` },
  ]);
  assert.equal(code, 1, stderr);
  const line = JSON.parse(stderr.trim().split("\n").at(-1)!);
  assert.equal(line.event, "listen-failed");
  assert.equal(line.listen, `localhost:${port}`);
  assert.match(
    String(line.error),
    new RegExp(`ferry's own listener on ${literal.replace(/[[\]]/g, "\\$&")}`),
  );
});

Deno.test("a listener whose address another program holds is not blamed on ferry's listener on another address", async () => {
  // 127.0.0.1:P and 127.0.0.2:P cannot take each other's port: the hint
  // that ferry itself may hold it would send the operator the wrong way.
  using other = Deno.listen({ hostname: "127.0.0.2", port: 0 });
  const port = other.addr.port;
  const { code, stderr } = await runListeners([
    { kind: "socks", listen: `127.0.0.1:${port}` },
    { kind: "socks", listen: `127.0.0.2:${port}` },
  ]);
  assert.equal(code, 1, stderr);
  const line = JSON.parse(stderr.trim().split("\n").at(-1)!);
  assert.equal(line.event, "listen-failed");
  assert.equal(line.listen, `127.0.0.2:${port}`);
  assert.match(String(line.error), /in use/i);
  assert.doesNotMatch(String(line.error), /ferry's own listener/);
});

Deno.test("ferry run takes --log-level and --log-format in any case, as socks and forward do", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const path = await Deno.makeTempFile({ suffix: ".jsonc" });
  try {
    await Deno.writeTextFile(
      path,
      JSON.stringify({ listeners: [{ kind: "socks", listen: `127.0.0.1:${taken.addr.port}` }] }),
    );
    // They used to be refused (exit 2) under run alone. Accepted, ferry gets
    // as far as its listener, which cannot open here (exit 1), and says so
    // as an error-level JSON line.
    const { code, stderr } = await runToEnd([
      "run",
      "--config",
      path,
      "--log-level",
      "WARNING",
      "--log-format",
      "JSON",
    ]);
    assert.equal(code, 1, stderr);
    const line = JSON.parse(stderr.trim().split("\n").at(-1)!);
    assert.equal(line.event, "listen-failed");
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("the log level lets through its own lines and those above: warn shows warnings alone, error none", async () => {
  // Under a low open-files limit ferry warns at start (nofile-low); it logs
  // nothing else above info unless something goes wrong. Its forwarder's
  // pooled connection shows that the start-up lines have been logged, with
  // nothing on stderr to wait for at level error.
  const cases: { fileLevel: string; flag: string[]; events: string[] }[] = [
    // --log-level overrides the file's level.
    { fileLevel: "debug", flag: ["--log-level", "warn"], events: ["nofile-low"] },
    { fileLevel: "error", flag: [], events: [] },
  ];
  for (const { fileLevel, flag, events } of cases) {
    using upstream = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const path = await Deno.makeTempFile({ suffix: ".jsonc" });
    try {
      await Deno.writeTextFile(
        path,
        JSON.stringify({
          log: { level: fileLevel, format: "json" },
          listeners: [{
            kind: "forward",
            listen: "127.0.0.1:0",
            to: [`127.0.0.1:${upstream.addr.port}`],
            pool: 1,
          }],
        }),
      );
      const child = new Deno.Command("prlimit", {
        args: [
          "--nofile=64",
          Deno.execPath(),
          ...ferryCommandArgs(["run", "--config", path, ...flag]),
        ],
        stdin: "null",
        stdout: "null",
        stderr: "piped",
        env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
      }).spawn();
      const giveUp = setTimeout(() => child.kill("SIGKILL"), 30_000);
      try {
        const stderr = new Response(child.stderr).text();
        const pooled = await Promise.race([upstream.accept(), child.status.then(() => null)]);
        if (pooled === null) assert.fail(`ferry exited before its pool dialled:\n${await stderr}`);
        try {
          child.kill("SIGTERM");
          const status = await child.status;
          const text = await stderr;
          assert.equal(status.code, 0, text);
          const logged = text.trim() === ""
            ? []
            : text.trim().split("\n").map((line) => JSON.parse(line).event);
          assert.deepEqual(logged, events, `${fileLevel} ${flag.join(" ")}:\n${text}`);
        } finally {
          pooled.close();
        }
      } finally {
        clearTimeout(giveUp);
      }
    } finally {
      await Deno.remove(path);
    }
  }
});

Deno.test("the open-files warning counts the sessions of every listener in the file", async () => {
  // Two listeners of 10 sessions need 2 × 20 + 64 = 104 descriptors; either alone fits in 100.
  const path = await Deno.makeTempFile({ suffix: ".jsonc" });
  try {
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        listeners: [
          { kind: "socks", listen: "127.0.0.1:0", maxConns: 10 },
          { kind: "socks", listen: "127.0.0.1:0", maxConns: 10 },
        ],
      }),
    );
    await using ferry = await startFerry(["run", "--config", path], {
      wrapper: ["prlimit", "--nofile=100"],
    });
    // Logged with the listening lines, so written by the time ferry has stopped.
    assert.equal((await ferry.stop()).code, 0);
    const warning = ferry.lines.find((l) => l.event === "nofile-low");
    assert.ok(warning, "no nofile-low line");
    assert.deepEqual([warning.limit, warning.needed, warning.maxConns], [100, 104, 20]);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("a SOCKS listener without users on an address other hosts may reach is warned about at start, once", async () => {
  const path = await Deno.makeTempFile({ suffix: ".jsonc" });
  try {
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        log: { format: "json" },
        listeners: [
          { kind: "socks", listen: "[::]:0" }, // open to anyone: warned about
          { kind: "socks", listen: "127.0.0.1:0" }, // only this host
          { kind: "socks", listen: "0.0.0.0:0", users: [{ name: "alice", password: "pw" }] },
          { kind: "forward", listen: "0.0.0.0:0", to: [`127.0.0.1:${closedPort()}`], pool: 0 },
        ],
      }),
    );
    await using ferry = await startFerry(["run", "--config", path]);
    await ferry.waitFor((line) => line.event === "listening" && line.kind === "forward");
    ferry.kill("SIGTERM");
    assert.equal((await ferry.status).code, 0);
    const listening = ferry.lines.filter((line) => line.event === "listening");
    assert.equal(listening.length, 4);
    const open = ferry.lines.filter((line) => line.event === "open-proxy");
    assert.deepEqual(open.map((line) => line.listen), [listening[0]!.listen]);
    assert.match(String(open[0]!.listen), /^\[::\]:\d+$/);
    assert.equal(open[0]!.level, "WARN");
  } finally {
    await Deno.remove(path);
  }
});

/** A config file for a SOCKS listener and a forwarder to `upstreamPort` with `pool`, both on free ports. */
async function socksAndForwardConfig(upstreamPort: number, pool: number): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".jsonc" });
  await Deno.writeTextFile(
    path,
    JSON.stringify({
      log: { format: "json" },
      listeners: [
        { kind: "socks", listen: "127.0.0.1:0" },
        { kind: "forward", listen: "127.0.0.1:0", to: [`127.0.0.1:${upstreamPort}`], pool },
      ],
    }),
  );
  return path;
}

Deno.test("a CONNECT that its target refuses takes nothing from a forwarder's pool: only ferry's own shortage does", async () => {
  // A pooled connection is given up for a client's dial that failed for want
  // of a descriptor; a target's refusal says nothing of ferry's descriptors.
  using upstream = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const pooled: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of upstream) pooled.push(conn);
  })();
  const path = await socksAndForwardConfig(upstream.addr.port, 2);
  try {
    await using ferry = await startFerry(["run", "--config", path]);
    const socksLine = await ferry.waitFor((l) => l.event === "listening" && l.kind === "socks");
    const socks = {
      hostname: "127.0.0.1",
      port: listenedPort(socksLine),
    };
    // Until both pooled connections are in, and ferry has taken them in.
    await waitUntil(() => pooled.length >= 2, "the pool's 2 connections");
    await new Promise((resolve) => setTimeout(resolve, 300));
    using client = await BufferedConn.connect(socks.hostname, socks.port);
    const reply = await socks5Handshake(client, ipv4("127.0.0.1", closedPort()));
    assert.equal(reply.reply, socks5.Reply.ConnectionRefused);
    // A pooled connection given up would have been closed before the reply.
    const closedByFerry = await ss(
      "-tnH",
      "state",
      "close-wait",
      "sport",
      "=",
      `:${upstream.addr.port}`,
    );
    assert.deepEqual(closedByFerry, []);
    assert.deepEqual(ferry.lines.filter((l) => l.event === "pool-no-descriptors"), []);
  } finally {
    upstream.close();
    await accepting.catch(() => {});
    for (const conn of pooled) conn.close();
    await Deno.remove(path);
  }
});

Deno.test("a forwarder's pool that took every descriptor gives them up to a SOCKS listener's CONNECT, BIND and UDP ASSOCIATE", async () => {
  // Descriptors are the process's: the pool of one listener left another no
  // descriptor to accept with, nor one to dial, listen or bind a UDP relay with.
  const echo = startEchoServer();
  await using udpTarget = await udpEcho();
  const path = await socksAndForwardConfig(echo.addr.port, 100);
  try {
    await using ferry = await startFerry(["run", "--config", path], {
      wrapper: ["prlimit", "--nofile=64"],
    });
    await ferry.waitFor((l) => l.event === "pool-no-descriptors");
    const socksLine = ferry.lines.find((l) => l.event === "listening" && l.kind === "socks")!;
    const socks = {
      hostname: "127.0.0.1",
      port: listenedPort(socksLine),
    };
    // Until the first dials, still connecting, have all joined the pool.
    await new Promise((resolve) => setTimeout(resolve, 500));
    for (let i = 0; i < 3; i++) {
      const viaSocks = await socks5Connect(socks.port, echo.addr);
      try {
        assert.equal(await echoOnce(viaSocks, `client ${i}`), `client ${i}`);
      } finally {
        viaSocks.close();
      }
    }

    using bindClient = await BufferedConn.connect(socks.hostname, socks.port);
    const first = await socks5Handshake(bindClient, ipv4("127.0.0.1", 0), {
      command: socks5.Command.Bind,
    });
    assert.equal(first.reply, socks5.Reply.Succeeded, "BIND's listener");
    using peer = new BufferedConn(
      await Deno.connect({ hostname: "127.0.0.1", port: first.address.port }),
    );
    const second = await bindClient.readMessage(socks5.decodeReply, "BIND's second reply");
    assert.equal(second.reply, socks5.Reply.Succeeded, "BIND's peer accepted");
    await peer.write(new TextEncoder().encode("from the peer"));
    assert.equal(new TextDecoder().decode(await bindClient.readAtLeast(13)), "from the peer");

    await using udp = await associate(socks);
    assert.equal(udp.reply.reply, socks5.Reply.Succeeded, "UDP ASSOCIATE's relay");
    const target = ipv4("127.0.0.1", udpTarget.port);
    udp.local.send(frame(target, "over udp"), udp.reply.address.port, "127.0.0.1");
    const answer = await nextDatagram(udp.local);
    assert.deepEqual(answer, frame(target, "over udp"), "the echo, through the relay");

    assert.deepEqual(ferry.lines.filter((l) => l.event === "accept-error"), []);
  } finally {
    await Deno.remove(path);
    await echo.close();
  }
});

Deno.test("UDP ASSOCIATE and BIND requests at the open-files limit wait for descriptors, as a CONNECT does, and get 0x00", async () => {
  // A relay socket or BIND listener that could not be opened for want of a
  // descriptor got 0x01 at once, where a CONNECT waits for sessions to end.
  // About 64 descriptors are free: 26 associations hold 52 of them, and 20
  // more requests need 40.
  await using ferry = await startFerry(
    ["socks", "--listen", "127.0.0.1:0", "--max-udp-per-ip", "100", "--bind-timeout", "1s"],
    { wrapper: ["prlimit", "--nofile=80"] },
  );
  const socks = { hostname: ferry.hostname, port: ferry.port };
  const holding = [];
  for (let i = 0; i < 26; i++) {
    const held = await associate(socks);
    holding.push(held);
    assert.equal(held.reply.reply, socks5.Reply.Succeeded, `association ${i} of those held`);
  }
  const requests = Array.from({ length: 20 }, async (_, i) => {
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    const command = i % 2 === 0 ? socks5.Command.UdpAssociate : socks5.Command.Bind;
    const reply = await socks5Handshake(client, ipv4("127.0.0.1", 0), { command });
    return reply.reply;
  });
  await new Promise((resolve) => setTimeout(resolve, 300));
  for (const held of holding) await held[Symbol.asyncDispose]();
  const replies = await Promise.allSettled(requests);
  const failed = replies.filter((r) => r.status === "rejected" || r.value !== 0);
  assert.equal(
    failed.length,
    0,
    `${failed.length} of 20 not answered 0x00: ${
      failed.map((r) => r.status === "rejected" ? String(r.reason) : `0x0${r.value}`).join(", ")
    }`,
  );
  await ferry.waitFor(() => ferry.lines.filter((l) => l.event === "session").length === 46);
  assert.deepEqual(
    ferry.lines.filter((l) => l.event === "session" && String(l.outcome).endsWith("bind-failed")),
    [],
  );
});

Deno.test("a burst of clients beyond the open-files limit waits for descriptors, and every one is served", async () => {
  // Accepted into the last descriptor, a client had none left to dial its
  // upstream with and was closed (general-failure), which freed a
  // descriptor for the next client to fail the same way: 63 of 100 failed,
  // where the listen queue would have held them until sessions ended.
  const echo = startEchoServer();
  const path = await socksAndForwardConfig(echo.addr.port, 0);
  try {
    // 100 clients need 200 descriptors, and about 70 are left.
    await using ferry = await startFerry(["run", "--config", path], {
      wrapper: ["prlimit", "--nofile=100"],
    });
    const forwardLine = await ferry.waitFor((l) => l.event === "listening" && l.kind === "forward");
    const forwardPort = listenedPort(forwardLine);
    const clients = Array.from({ length: 100 }, async (_, i) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: forwardPort });
      try {
        const echoed = await echoOnce(conn, `client ${i}`);
        await new Promise((resolve) => setTimeout(resolve, 500)); // holding its descriptors
        return echoed;
      } finally {
        conn.close();
      }
    });
    const echoed = await Promise.allSettled(clients);
    // Each its own echo: a relay that crossed two sessions would pass "client …".
    const failed = echoed.filter((r, i) => r.status === "rejected" || r.value !== `client ${i}`);
    assert.equal(
      failed.length,
      0,
      `${failed.length} of 100 failed: ${
        String(failed[0]?.status === "rejected" ? failed[0].reason : "")
      }`,
    );
    await ferry.waitFor(() =>
      ferry.lines.filter((l) => l.event === "session" && l.outcome === "ok").length === 100
    );
    assert.deepEqual(
      ferry.lines.filter((l) => l.event === "session" && l.outcome !== "ok"),
      [],
    );
  } finally {
    await Deno.remove(path);
    await echo.close();
  }
});
