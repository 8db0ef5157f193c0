/**
 * Graceful shutdown: on SIGTERM/SIGINT ferry stops accepting at once, lets
 * running sessions finish within --shutdown-grace, cuts the rest, exits 0; a
 * second signal exits immediately.
 */
import assert from "node:assert/strict";
import { ferryCommandArgs, type FerryProcess, startFerry } from "./_helpers/ferry.ts";
import { sessionOf } from "./_helpers/session_log.ts";
import { TextLineStream } from "./_helpers/text_line_stream.ts";
import {
  concat,
  connectThrough,
  deadline,
  pseudoRandomBytes,
  sha256,
  TcpTarget,
} from "./_helpers/socks_client.ts";

/**
 * Polls (bounded) until connecting to ferry's port is refused, i.e. its
 * listener is closed. There is no event to wait on from outside the process.
 */
async function waitUntilRefused(ferry: FerryProcess, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (true) {
    try {
      const conn = await Deno.connect({ hostname: ferry.hostname, port: ferry.port });
      conn.close();
    } catch (error) {
      if (error instanceof Deno.errors.ConnectionRefused) return;
      throw error;
    }
    if (Date.now() > end) {
      throw new Error(`ferry still accepts connections ${ms} ms after the signal`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * ferry with `--shutdown-grace grace` and one session through it to a target
 * of the test's, all closed when disposed.
 */
async function oneSession(grace: string) {
  const ferry = await startFerry(["socks", "--listen", "127.0.0.1:0", "--shutdown-grace", grace]);
  const target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  return {
    ferry,
    client,
    server,
    async [Symbol.asyncDispose]() {
      client.close();
      server.close();
      target.close();
      await ferry[Symbol.asyncDispose]();
    },
  };
}

/** Awaits ferry's exit within `ms`; SIGKILLs it (and fails) otherwise. */
function exitWithin(ferry: FerryProcess, ms: number, what: string): Promise<Deno.CommandStatus> {
  return deadline(ferry.status, ms, what, () => ferry.kill("SIGKILL"));
}

Deno.test("SIGTERM mid-download: new connections are refused, the download completes intact, exit 0", async () => {
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--shutdown-grace",
    "10s",
  ]);
  using target = TcpTarget.listen();
  const body = pseudoRandomBytes(6 * 1024 * 1024, 7);
  const firstPart = 1024 * 1024;

  const { client, server } = await connectThrough(ferry, target);
  using _client = client;

  // The download is under way: the client has the first megabyte.
  await server.write(body.subarray(0, firstPart));
  const head = await client.readExactly(firstPart);

  const signalled = Date.now();
  ferry.kill("SIGTERM");
  await waitUntilRefused(ferry);

  // The rest of the download still flows.
  const sending = (async () => {
    await server.write(body.subarray(firstPart));
    await server.closeWrite();
    await server.waitForEnd();
  })();
  const rest = await client.readToEnd(30_000);
  client.close();
  await sending;
  assert.equal(head.length + rest.length, body.length, "downloaded bytes");
  assert.equal(
    await sha256(concat([head, rest])),
    await sha256(body),
    "download checksum",
  );

  const status = await exitWithin(ferry, 9_000, "ferry to exit once its last session ended");
  assert.equal(status.code, 0);
  assert.ok(Date.now() - signalled < 9_000, "ferry waited out the grace period");
  const session = await sessionOf(ferry, client.localAddr, 1_000);
  assert.equal(session.outcome, "ok");
  assert.equal(session.down, body.length);
});

Deno.test("SIGTERM with --shutdown-grace 300ms cuts a session that never ends and exits 0", async () => {
  await using running = await oneSession("300ms");
  const { ferry, client, server } = running;

  ferry.kill("SIGTERM");
  const [status] = await Promise.all([
    exitWithin(ferry, 5_000, "ferry to exit after the grace period"),
    client.waitForEnd(5_000),
    server.waitForEnd(5_000),
  ]);
  assert.equal(status.code, 0);
  const session = await sessionOf(ferry, client.localAddr, 1_000);
  assert.equal(session.outcome, "shutdown");
});

Deno.test("SIGINT with no sessions exits 0 promptly", async () => {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  ferry.kill("SIGINT");
  const status = await exitWithin(ferry, 5_000, "ferry to exit after SIGINT");
  assert.equal(status.code, 0);
});

Deno.test("SIGHUP (the terminal closed) drains like SIGTERM: the session finishes, its line and the totals are written, exit 0", async () => {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  ferry.kill("SIGHUP");
  await waitUntilRefused(ferry);
  // Still relaying: SIGHUP's default action used to kill ferry here (exit 129).
  await server.write(Uint8Array.of(7));
  assert.deepEqual(await client.readExactly(1), Uint8Array.of(7));
  client.close();
  await server.waitForEnd(5_000);
  server.close();
  const status = await exitWithin(ferry, 5_000, "ferry to exit once the session ended");
  assert.equal(status.code, 0);
  const session = await sessionOf(ferry, client.localAddr, 1_000);
  assert.equal(session.outcome, "ok");
  const stopped = ferry.lines.find((line) => line.event === "stopped");
  assert.equal(stopped?.listen, ferry.listen);
  assert.equal(ferry.lines.find((line) => line.event === "shutdown")?.signal, "SIGHUP");
});

Deno.test("a second SIGTERM during the grace period exits immediately", async () => {
  await using running = await oneSession("60s");
  const { ferry, client, server } = running;

  ferry.kill("SIGTERM");
  await waitUntilRefused(ferry);
  // Still relaying: the first signal did not end the open session.
  await server.write(Uint8Array.of(42));
  assert.deepEqual(await client.readExactly(1), Uint8Array.of(42));
  // Past the window in which the same signal counts as the first one again.
  await new Promise((resolve) => setTimeout(resolve, 300));
  ferry.kill("SIGTERM");
  await Promise.all([
    exitWithin(ferry, 5_000, "ferry to exit on the second signal"),
    client.waitForEnd(5_000),
    server.waitForEnd(5_000),
  ]);
});

Deno.test("Ctrl-C under deno task (one SIGINT that arrives twice) drains; a later SIGINT exits at once", async () => {
  // `deno task start`, as the README runs it from source, in a process group
  // of its own: Ctrl-C at a terminal signals the whole group, and the task
  // runner passes the SIGINT on to ferry as well.
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "task",
      "--quiet",
      "start",
      "socks",
      "--listen",
      "127.0.0.1:0",
      "--log-format",
      "json",
      "--shutdown-grace",
      "60s",
    ],
    cwd: new URL("..", import.meta.url).pathname,
    detached: true,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
  }).spawn();
  const events: string[] = [];
  const lines = child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(new TextLineStream());
  const seen = new Map<string, () => void>();
  const waitForEvent = (event: string) =>
    events.includes(event)
      ? Promise.resolve()
      : new Promise<void>((resolve) => seen.set(event, resolve));
  let port = 0;
  const reading = (async () => {
    for await (const raw of lines) {
      if (!raw.startsWith("{")) continue; // the task runner's own words, if any
      const line = JSON.parse(raw);
      if (line.event === "listening") port = Number(String(line.listen).split(":")[1]);
      events.push(line.event);
      seen.get(line.event)?.();
    }
  })();
  const exited = child.status.then((status) => {
    throw new Error(`ferry exited (status ${status.code}) after the events ${events.join(", ")}`);
  });
  exited.catch(() => {});
  const signalGroup = () => Deno.kill(-child.pid, "SIGINT");
  try {
    await deadline(Promise.race([waitForEvent("listening"), exited]), 20_000, "ferry to listen");
    using target = TcpTarget.listen();
    const { client, server } = await connectThrough({ hostname: "127.0.0.1", port }, target);
    using _client = client;

    signalGroup();
    await deadline(Promise.race([waitForEvent("shutdown"), exited]), 5_000, "the shutdown line");
    // Draining, not gone: the session still relays.
    await new Promise((resolve) => setTimeout(resolve, 500));
    await server.write(Uint8Array.of(42));
    assert.deepEqual(await client.readExactly(1), Uint8Array.of(42));
    signalGroup();
    const status = await deadline(child.status, 5_000, "ferry to exit on a later Ctrl-C");
    assert.equal(status.success, false, "the second Ctrl-C is not a clean drain");
  } finally {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // the group has exited
    }
    await child.status;
    await reading;
  }
});

Deno.test("a SIGINT repeated as ferry writes its last lines is still the first one", async () => {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  // No sessions: ferry is past its drain within milliseconds, which is when
  // a Ctrl-C's second copy (from deno task) arrives. Copies every 2 ms for
  // 150 ms (inside the 250 ms in which they count as the first) cover every
  // step from the drain to the exit.
  ferry.kill("SIGINT");
  for (let i = 0; i < 75; i++) {
    await new Promise((resolve) => setTimeout(resolve, 2));
    ferry.kill("SIGINT");
  }
  const status = await exitWithin(ferry, 5_000, "ferry to exit after SIGINT");
  assert.deepEqual([status.signal, status.code], [null, 0]);
  assert.ok(ferry.lines.some((line) => line.event === "stopped"), "the last line was written");
});

/**
 * ferry whose stderr is read up to its listening line and then never again,
 * as by a hung log shipper, and filled: session lines (about 250 bytes each)
 * for several times a pipe's 64 KiB, so that its log's writes stick.
 */
async function ferryWithStuckStderr(...args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ferryCommandArgs(["socks", "--listen", "127.0.0.1:0", "--log-format", "json", ...args]),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
  }).spawn();
  // Straight from the pipe, so that no stream reads ahead.
  const reader = child.stderr.getReader();
  const stuck = {
    child,
    hostname: "127.0.0.1",
    port: 0,
    /** Its status, within 15 s; SIGKILLed (and failed) otherwise. */
    exit: () =>
      deadline(child.status, 15_000, "ferry to exit with its stderr stuck", () => {
        child.kill("SIGKILL");
      }),
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
      await reader.cancel();
    },
  };
  try {
    let text = "";
    const decoder = new TextDecoder();
    let port: number | undefined;
    while (port === undefined) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`ferry ended before listening:\n${text}`);
      text += decoder.decode(value, { stream: true });
      port = Number(text.match(/"event":"listening".*?"listen":"127\.0\.0\.1:(\d+)"/)?.[1]) ||
        undefined;
    }
    stuck.port = port;
    for (let i = 0; i < 2000; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
    }
    // Let the batches go out and stick in the full pipe.
    await new Promise((resolve) => setTimeout(resolve, 300));
  } catch (error) {
    await stuck[Symbol.asyncDispose]();
    throw error;
  }
  return stuck;
}

// SIGUSR1's line was written with a blocking write, which held ferry (and
// every session) until someone read the pipe, and the inspector could open.
for (const [signal, code] of [["SIGTERM", 0], ["SIGUSR1", 138]] as const) {
  Deno.test(`${signal} exits ${code} even when nobody reads ferry's stderr any more`, async () => {
    await using ferry = await ferryWithStuckStderr();
    ferry.child.kill(signal);
    assert.equal((await ferry.exit()).code, code);
  });
}

Deno.test("a third signal exits at once, without the second one's wait for the log", async () => {
  // The second signal gives the lines logged before it up to 250 ms to leave;
  // with stderr stuck they never do. An operator who signals again has
  // stopped waiting: ferry exits then, with the third signal's status.
  await using ferry = await ferryWithStuckStderr("--shutdown-grace", "60s");
  // A session to drain, so that the first signal does not end ferry.
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  using _server = server;
  ferry.child.kill("SIGINT");
  // Past the window in which a second SIGINT is the first delivered twice.
  await new Promise((resolve) => setTimeout(resolve, 300));
  ferry.child.kill("SIGTERM");
  // Well within the second signal's 250 ms, and apart enough that the
  // kernel cannot hand both over together (lowest number first: SIGINT).
  await new Promise((resolve) => setTimeout(resolve, 100));
  ferry.child.kill("SIGINT");
  assert.equal((await ferry.exit()).code, 128 + 2, "the third signal's status, not SIGTERM's 143");
});

Deno.test("the second signal's status stands when the last session ends while its log waits", async () => {
  // The second signal gives the log 250 ms, stuck here. The drain ending
  // meanwhile stopped the log a second time, which LogTape refuses while the
  // first runs: the error, uncaught, hung ferry writing its report to the
  // stuck stderr. Nor may the drain's own status (0) replace the signal's.
  await using ferry = await ferryWithStuckStderr("--shutdown-grace", "60s");
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  ferry.child.kill("SIGINT");
  await new Promise((resolve) => setTimeout(resolve, 300));
  ferry.child.kill("SIGTERM");
  await new Promise((resolve) => setTimeout(resolve, 50));
  client.close();
  server.close();
  assert.equal((await ferry.exit()).code, 128 + 15);
});

Deno.test("SIGUSR1 ends ferry at once (status 138) with a fatal line, before Deno's inspector opens", async () => {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  // Past the 500 ms after start from which Deno answers SIGUSR1 by opening an
  // inspector on 127.0.0.1:9229 (Deno 2.9.2 and later).
  await new Promise((resolve) => setTimeout(resolve, 800));
  ferry.kill("SIGUSR1");
  const status = await exitWithin(ferry, 5_000, "ferry to exit on SIGUSR1");
  assert.equal(status.code, 138);
  const line = await ferry.waitFor((l) => l.event === "sigusr1-exit", 1_000);
  assert.equal(line.level, "FATAL");
  assert.ok(
    !ferry.lines.some((l) => JSON.stringify(l).includes("Debugger listening")),
    "Deno's inspector never announced itself",
  );
  await Promise.all([client.waitForEnd(5_000), server.waitForEnd(5_000)]);
});

Deno.test("a second signal right after the first exits at once, with the lines logged before it", async () => {
  await using running = await oneSession("60s");
  const { ferry } = running;
  // Ctrl-C, then `kill` 20 ms later: the shutdown line was still in the log's
  // batch (written every 50 ms), and the exit threw it away.
  ferry.kill("SIGINT");
  await new Promise((resolve) => setTimeout(resolve, 20));
  ferry.kill("SIGTERM");
  const status = await exitWithin(ferry, 5_000, "ferry to exit on the second signal");
  assert.equal(status.code, 143);
  const shutdown = ferry.lines.find((line) => line.event === "shutdown");
  assert.ok(shutdown, "the shutdown line, logged before the second signal, reached stderr");
  assert.equal(shutdown.sessions, 1);
  assert.ok(!ferry.lines.some((line) => line.event === "stopped"), "no totals: the exit cut them");
});

Deno.test("SIGTERM while ferry still reads its users file exits 0 at once, with a line that says so", async () => {
  // A FIFO nobody writes: ferry's read would wait for ever. Opening it to
  // write waits for ferry to open it to read, so the signal surely comes
  // while ferry reads its settings.
  const dir = await Deno.makeTempDir();
  const fifo = `${dir}/users`;
  try {
    const made = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(made.success, "mkfifo");
    const child = new Deno.Command(Deno.execPath(), {
      args: ferryCommandArgs(["socks", "--listen", "127.0.0.1:0", "--users-file", fifo]),
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    }).spawn();
    const stderr = new Response(child.stderr).text();
    try {
      using _writer = await deadline(
        Deno.open(fifo, { write: true }),
        20_000,
        "ferry to open its users file",
      );
      child.kill("SIGTERM");
      const status = await deadline(child.status, 10_000, "ferry to exit");
      assert.equal(status.code, 0, `exit status (signal: ${status.signal})`);
      assert.equal(await stderr, "ferry: SIGTERM before it was listening: exiting\n");
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // exited
      }
      await child.status;
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
