/**
 * Graceful shutdown: on SIGTERM/SIGINT ferry stops accepting at once, lets
 * running sessions finish within --shutdown-grace, cuts the rest, exits 0; a
 * second signal exits immediately.
 */
import assert from "node:assert/strict";
import { type FerryProcess, startFerry } from "./_helpers/ferry.ts";
import { sessionOf } from "./_helpers/session_log.ts";
import {
  concat,
  deadline,
  ipv4,
  pseudoRandomBytes,
  sha256,
  socks5,
  socks5Connect,
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

  const upstream = target.accept();
  const { client, reply } = await socks5Connect(ferry, ipv4("127.0.0.1", target.port));
  using _client = client;
  assert.equal(reply.reply, socks5.Reply.Succeeded);
  const server = await upstream;

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
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--shutdown-grace",
    "300ms",
  ]);
  using target = TcpTarget.listen();
  const upstream = target.accept();
  const { client, reply } = await socks5Connect(ferry, ipv4("127.0.0.1", target.port));
  using _client = client;
  assert.equal(reply.reply, socks5.Reply.Succeeded);
  const server = await upstream;

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

Deno.test("a second SIGTERM during the grace period exits immediately", async () => {
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--shutdown-grace",
    "60s",
  ]);
  using target = TcpTarget.listen();
  const upstream = target.accept();
  const { client, reply } = await socks5Connect(ferry, ipv4("127.0.0.1", target.port));
  using _client = client;
  assert.equal(reply.reply, socks5.Reply.Succeeded);
  const server = await upstream;

  ferry.kill("SIGTERM");
  await waitUntilRefused(ferry);
  // Still relaying: the first signal did not end the open session.
  await server.write(Uint8Array.of(42));
  assert.deepEqual(await client.readExactly(1), Uint8Array.of(42));
  ferry.kill("SIGTERM");
  await Promise.all([
    exitWithin(ferry, 5_000, "ferry to exit on the second signal"),
    client.waitForEnd(5_000),
    server.waitForEnd(5_000),
  ]);
});
