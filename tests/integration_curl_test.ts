/**
 * curl, a real SOCKS client, downloads a multi-megabyte body through ferry
 * with every SOCKS flavour it speaks; the body must arrive intact and ferry's
 * session log line must match what actually crossed the wire.
 */
import assert from "node:assert/strict";
import { startFerry } from "./_helpers/ferry.ts";
import { HttpTarget } from "./_helpers/http_target.ts";
import { logsContain, sessionLines, sessionOf } from "./_helpers/session_log.ts";
import { pseudoRandomBytes, sha256 } from "./_helpers/socks_client.ts";

const BODY = pseudoRandomBytes(3 * 1024 * 1024 + 17, 0x5eed);
const BODY_SHA256 = await sha256(BODY);

interface CurlResult {
  code: number;
  body: Uint8Array;
  stderr: string;
}

/** Runs curl with no proxy settings from the environment, bounded by --max-time. */
async function curl(args: string[]): Promise<CurlResult> {
  const output = await new Deno.Command("curl", {
    args: ["--silent", "--show-error", "--globoff", "--max-time", "30", ...args],
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: output.code,
    body: output.stdout,
    stderr: new TextDecoder().decode(output.stderr),
  };
}

async function assertBodyIntact(result: CurlResult): Promise<void> {
  assert.equal(result.code, 0, `curl failed: ${result.stderr}`);
  assert.equal(result.body.length, BODY.length, "body length");
  assert.equal(await sha256(result.body), BODY_SHA256, "body checksum");
}

/** The one session line, once the target saw its connection end. */
async function onlySession(ferry: Awaited<ReturnType<typeof startFerry>>) {
  const line = await ferry.waitFor((l) => l.event === "session");
  // A connection opened and closed at once: ferry logs its line after any
  // other of the first session's, so a second line, were there one, is in
  // by the time this one is.
  const marker = await Deno.connect({ hostname: ferry.hostname, port: ferry.port });
  const markerAddr = marker.localAddr;
  marker.close();
  const markerLine = await sessionOf(ferry, markerAddr);
  const others = sessionLines(ferry).filter((l) => l !== markerLine);
  assert.equal(others.length, 1, "exactly one session logged");
  return line;
}

Deno.test("curl --socks5 downloads the body intact and ferry logs the session's byte counts", async () => {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  await using target = HttpTarget.start(BODY);
  const result = await curl([
    "--socks5",
    `127.0.0.1:${ferry.port}`,
    `http://127.0.0.1:${target.port}/blob`,
  ]);
  await assertBodyIntact(result);
  const exchange = await target.nextExchange();
  const session = await onlySession(ferry);
  assert.equal(session.outcome, "ok");
  assert.equal(session.protocol, "socks5");
  assert.equal(session.target, `127.0.0.1:${target.port}`);
  assert.equal(session.user, null);
  assert.equal(session.up, exchange.received, "up = bytes the target received");
  assert.equal(session.down, exchange.sent, "down = bytes the target sent");
  assert.ok(exchange.sent > BODY.length);
  assert.match(String(session.client), /^127\.0\.0\.1:\d+$/);
  assert.equal(typeof session.id === "string" || typeof session.id === "number", true);
  assert.equal(typeof session.ms, "number");
  for (const field of ["@timestamp", "level", "message", "logger"]) {
    assert.ok(field in session, `LogTape field ${field} in ${JSON.stringify(session)}`);
  }
  // The totals at exit count the same bytes, each way under its own name.
  assert.equal((await ferry.stop()).code, 0);
  const stopped = await ferry.waitFor((line) => line.event === "stopped", 5_000);
  assert.deepEqual([stopped.bytesUp, stopped.bytesDown], [session.up, session.down]);
});

Deno.test("curl --socks5-hostname sends the name localhost and ferry resolves it", async () => {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  // Both loopback families on one port, whichever `localhost` resolves to first.
  await using target = HttpTarget.start(BODY, ["127.0.0.1", "::1"]);
  const result = await curl([
    "--socks5-hostname",
    `127.0.0.1:${ferry.port}`,
    `http://localhost:${target.port}/blob`,
  ]);
  await assertBodyIntact(result);
  const exchange = await target.nextExchange();
  assert.match(exchange.head, /^GET \/blob HTTP\/1\.1\r\n/);
  const session = await onlySession(ferry);
  assert.equal(session.outcome, "ok");
  assert.equal(session.protocol, "socks5");
  assert.equal(session.target, `localhost:${target.port}`);
  assert.equal(session.up, exchange.received);
  assert.equal(session.down, exchange.sent);
});

Deno.test("curl --socks4 downloads the body intact", async () => {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  await using target = HttpTarget.start(BODY);
  const result = await curl([
    "--socks4",
    `127.0.0.1:${ferry.port}`,
    `http://127.0.0.1:${target.port}/blob`,
  ]);
  await assertBodyIntact(result);
  const exchange = await target.nextExchange();
  const session = await onlySession(ferry);
  assert.equal(session.outcome, "ok");
  assert.equal(session.protocol, "socks4");
  assert.equal(session.target, `127.0.0.1:${target.port}`);
  assert.equal(session.up, exchange.received);
  assert.equal(session.down, exchange.sent);
});

Deno.test("curl --socks4a sends the name localhost and downloads the body intact", async () => {
  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  await using target = HttpTarget.start(BODY, ["127.0.0.1", "::1"]);
  const result = await curl([
    "--socks4a",
    `127.0.0.1:${ferry.port}`,
    `http://localhost:${target.port}/blob`,
  ]);
  await assertBodyIntact(result);
  const exchange = await target.nextExchange();
  const session = await onlySession(ferry);
  assert.equal(session.outcome, "ok");
  assert.equal(session.protocol, "socks4a");
  assert.equal(session.target, `localhost:${target.port}`);
  assert.equal(session.up, exchange.received);
  assert.equal(session.down, exchange.sent);
});

Deno.test("curl --proxy-user with the right password downloads the body and ferry logs the user but never the password", async () => {
  const password = "pw-Zq8x!k3";
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--user",
    `alice:${password}`,
    "--user",
    "bob:other-secret",
  ]);
  await using target = HttpTarget.start(BODY);
  const result = await curl([
    "--socks5-hostname",
    `127.0.0.1:${ferry.port}`,
    "--proxy-user",
    `alice:${password}`,
    `http://127.0.0.1:${target.port}/blob`,
  ]);
  await assertBodyIntact(result);
  const exchange = await target.nextExchange();
  const session = await onlySession(ferry);
  assert.equal(session.outcome, "ok");
  assert.equal(session.command, "connect");
  assert.equal(session.user, "alice");
  assert.equal(session.up, exchange.received);
  assert.equal(session.down, exchange.sent);
  const status = await ferry.stop();
  assert.equal(status.code, 0);
  assert.ok(!logsContain(ferry, password), "alice's password appears in the logs");
  assert.ok(!logsContain(ferry, "other-secret"), "bob's password appears in the logs");
  // The listening line says what clients get: with users, no SOCKS4.
  const listening = ferry.lines.find((l) => l.event === "listening")!;
  assert.deepEqual([listening.auth, listening.socks4], ["username/password", false]);
});

Deno.test("curl --proxy-user with a wrong password fails with exit 97 and ferry logs auth-failed", async () => {
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--user",
    "alice:right-password",
  ]);
  await using target = HttpTarget.start(BODY);
  const result = await curl([
    "--socks5",
    `127.0.0.1:${ferry.port}`,
    "--proxy-user",
    "alice:wrong-password",
    `http://127.0.0.1:${target.port}/blob`,
  ]);
  assert.equal(result.code, 97, `curl exit code; stderr: ${result.stderr}`);
  assert.equal(result.body.length, 0);
  const session = await ferry.waitFor((l) => l.event === "session");
  assert.equal(session.outcome, "auth-failed");
  // Not exchanges: curl sends no request after a refusal, so a dial made
  // before the password was checked would leave none there either.
  assert.equal(target.accepted, 0, "the target was never dialled");
  await ferry.stop();
  assert.ok(!logsContain(ferry, "wrong-password"), "the attempted password appears in the logs");
  assert.ok(!logsContain(ferry, "right-password"), "the configured password appears in the logs");
});

Deno.test("curl through ferry listening on [::1] reaches a target on ::1", async () => {
  await using ferry = await startFerry(["socks", "--listen", "[::1]:0"]);
  assert.equal(ferry.hostname, "::1");
  assert.match(ferry.listen, /^\[::1\]:\d+$/);
  await using target = HttpTarget.start(BODY, ["::1"]);
  const result = await curl([
    "--proxy",
    `socks5://[::1]:${ferry.port}`,
    `http://[::1]:${target.port}/blob`,
  ]);
  await assertBodyIntact(result);
  const exchange = await target.nextExchange();
  assert.equal(exchange.peer.hostname, "::1");
  const session = await onlySession(ferry);
  assert.equal(session.outcome, "ok");
  assert.ok(
    [`[::1]:${target.port}`, `::1:${target.port}`].includes(String(session.target)),
    `target ${session.target}`,
  );
  assert.match(String(session.client), /^\[?::1\]?:\d+$/);
  assert.equal(session.up, exchange.received);
  assert.equal(session.down, exchange.sent);
});
