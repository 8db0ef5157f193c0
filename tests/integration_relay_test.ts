/**
 * ferry's SOCKS handshakes and relay, driven byte by byte with a raw client
 * built on the protocol codecs, against raw TCP targets on loopback.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { startFerry } from "./_helpers/ferry.ts";
import { logsContain, sessionOf } from "./_helpers/session_log.ts";
import { ss } from "./_helpers/ss.ts";
import {
  BufferedConn,
  closedPort,
  concat,
  connectThrough,
  domain,
  ipv4,
  pseudoRandomBytes,
  sha256,
  socks4,
  socks4Handshake,
  socks5,
  socks5Connect,
  socks5Handshake,
  TcpTarget,
} from "./_helpers/socks_client.ts";

const LISTEN = ["socks", "--listen", "127.0.0.1:0"];
const FIVE_MB = 5 * 1024 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Waits (10 s at most) until ferry's end of the client's connection (from
 * `ferryPort` to `clientPort`) and its connection to `targetPort` both have
 * TCP keepalive: `ss -o` shows a socket's keepalive timer once it is on.
 */
async function keepAliveOnBoth(ferryPort: number, clientPort: number, targetPort: number) {
  const clientSide = `( sport = :${ferryPort} and dport = :${clientPort} )`;
  const targetSide = `( dport = :${targetPort} )`;
  const established = (filter: string) => ss("-tnoH", "state", "established", filter);
  const deadlineAt = Date.now() + 10_000;
  for (;;) {
    const timers = [...await established(clientSide), ...await established(targetSide)];
    if (timers.length === 2 && timers.every((line) => line.includes("timer:(keepalive"))) return;
    assert.ok(Date.now() < deadlineAt, `no keepalive on both sockets after 10 s: ${timers}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * A target that answers the first bytes it gets with `answer`, then resets
 * `resetAfterMs` later: a reset alone, not a FIN first (as a Deno target's
 * close() sends), through node:net's SO_LINGER 0.
 */
async function answerThenReset(answer: string | Uint8Array, resetAfterMs: number) {
  const server = net.createServer((socket) => {
    socket.once("data", () => {
      socket.write(answer);
      setTimeout(() => socket.resetAndDestroy(), resetAfterMs);
    });
    socket.on("error", () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    [Symbol.asyncDispose]: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

Deno.test("client half-close: 5 MB up, then the target's 5 MB reply after EOF arrives in full", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const request = pseudoRandomBytes(FIVE_MB, 1);
  const response = pseudoRandomBytes(FIVE_MB, 2);

  const { client, server } = await connectThrough(ferry, target);
  using _client = client;

  const targetSide = (async () => {
    const received = await server.readToEnd(30_000);
    await server.write(response);
    server.close();
    return received;
  })();
  await client.write(request);
  await client.closeWrite();
  const downloaded = await client.readToEnd(30_000);
  const received = await targetSide;

  assert.equal(received.length, request.length, "bytes the target received");
  assert.equal(await sha256(received), await sha256(request));
  assert.equal(downloaded.length, response.length, "bytes the client received after its EOF");
  assert.equal(await sha256(downloaded), await sha256(response));
  client.close();

  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.protocol, "socks5");
  assert.equal(session.target, `127.0.0.1:${target.port}`);
  assert.equal(session.up, FIVE_MB);
  assert.equal(session.down, FIVE_MB);
});

Deno.test("target half-close: after the target's 5 MB and EOF, the client keeps sending and the target receives it", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const download = pseudoRandomBytes(FIVE_MB, 3);
  const upload = pseudoRandomBytes(FIVE_MB, 4);

  const { client, server } = await connectThrough(ferry, target);
  using _client = client;

  const targetSide = (async () => {
    await server.write(download);
    await server.closeWrite();
    return await server.readToEnd(30_000);
  })();
  const downloaded = await client.readToEnd(30_000);
  assert.equal(downloaded.length, download.length);
  assert.equal(await sha256(downloaded), await sha256(download));
  // The client has seen EOF; its direction must still flow.
  await client.write(upload);
  await client.closeWrite();
  const uploaded = await targetSide;
  assert.equal(uploaded.length, upload.length, "bytes the target received after its own EOF");
  assert.equal(await sha256(uploaded), await sha256(upload));

  // Both directions ended: ferry closes both connections.
  assert.equal((await client.waitForEnd()).discarded, 0);
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.up, FIVE_MB);
  assert.equal(session.down, FIVE_MB);
});

Deno.test("a SOCKS5 handshake sent one byte per write still connects and relays", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target, { bytewise: true });
  using _client = client;
  await client.write(encoder.encode("ping"));
  assert.deepEqual(await server.readExactly(4), encoder.encode("ping"));
  await server.write(encoder.encode("pong"));
  assert.deepEqual(await client.readExactly(4), encoder.encode("pong"));
});

Deno.test("a SOCKS5 handshake with a domain name sent one byte per write connects", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target, {
    address: domain("127.0.0.1", target.port),
    bytewise: true,
  });
  using _client = client;
  await client.write(encoder.encode("x"));
  assert.deepEqual(await server.readExactly(1), encoder.encode("x"));
});

Deno.test("greeting, request and first data in one write: the early data reaches the target", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const early = encoder.encode("GET / HTTP/1.0\r\n\r\n");
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const upstream = target.accept();
  await client.write(concat([
    socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }),
    socks5.encodeRequest({
      command: socks5.Command.Connect,
      address: ipv4("127.0.0.1", target.port),
    }),
    early,
  ]));
  assert.equal(
    await client.readMessage(socks5.decodeMethodSelection, "method"),
    socks5.Method.NoAuth,
  );
  const reply = await client.readMessage(socks5.decodeReply, "reply");
  assert.equal(reply.reply, socks5.Reply.Succeeded);
  const server = await upstream;
  assert.deepEqual(await server.readExactly(early.length), early);
  await server.write(encoder.encode("ok"));
  assert.deepEqual(await client.readExactly(2), encoder.encode("ok"));
  client.close();
  server.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.up, early.length);
  assert.equal(session.down, 2);
});

Deno.test("SOCKS4 request and early data in one write: the data reaches the target", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const early = encoder.encode("hello after socks4");
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const upstream = target.accept();
  await client.write(concat([
    socks4.encodeRequest({
      command: socks4.Command.Connect,
      address: ipv4("127.0.0.1", target.port),
      userId: encoder.encode("someone"),
    }),
    early,
  ]));
  const reply = await client.readMessage(socks4.decodeReply, "SOCKS4 reply");
  assert.equal(reply.reply, socks4.Reply.Granted);
  const server = await upstream;
  assert.deepEqual(await server.readExactly(early.length), early);
});

Deno.test("RFC 1929 auth sent one byte per write succeeds; the user is logged, the password never", async () => {
  const password = "s3cret-Pa55";
  await using ferry = await startFerry([...LISTEN, "--user", `carol:${password}`]);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target, {
    username: "carol",
    password,
    bytewise: true,
  });
  using _client = client;
  await client.write(encoder.encode("abc"));
  assert.deepEqual(await server.readExactly(3), encoder.encode("abc"));
  client.close();
  server.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.user, "carol");
  assert.equal(session.outcome, "ok");
  await ferry.stop();
  assert.ok(!logsContain(ferry, password), "password in the logs");
});

Deno.test("users from --users-file authenticate; comment lines are ignored", async () => {
  const file = await Deno.makeTempFile({ prefix: "ferry-users-" });
  try {
    await Deno.writeTextFile(file, "# ferry users\ndave:file-pass-1\n\n# erin:commented-out\n");
    await using ferry = await startFerry([...LISTEN, "--users-file", file]);
    using target = TcpTarget.listen();
    const upstream = target.accept();
    const { client, reply } = await socks5Connect(ferry, ipv4("127.0.0.1", target.port), {
      username: "dave",
      password: "file-pass-1",
    });
    using _client = client;
    assert.equal(reply.reply, socks5.Reply.Succeeded);
    (await upstream).close();
    client.close();

    using rejected = await BufferedConn.connect(ferry.hostname, ferry.port);
    await assert.rejects(
      socks5Handshake(rejected, ipv4("127.0.0.1", target.port), {
        username: "erin",
        password: "commented-out",
      }),
      /authentication failed with status 1/,
    );
    rejected.close();
    await ferry.stop();
    assert.ok(!logsContain(ferry, "file-pass-1"));
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("a wrong password gets status 01 01 and the connection is closed", async () => {
  await using ferry = await startFerry([...LISTEN, "--user", "carol:right"]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks5.encodeGreeting({ methods: [socks5.Method.UserPass] }));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, 0x02));
  await client.write(socks5.encodeCredentials({
    username: encoder.encode("carol"),
    password: encoder.encode("wrong"),
  }));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x01, 0x01));
  const end = await client.waitForEnd();
  assert.equal(end.discarded, 0, "nothing after the failure status");
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "auth-failed");
});

Deno.test("a wrong password is logged auth-failed also when the client resets without reading the status", async () => {
  // One trying passwords need not read the answer; logged as a mere reset,
  // its attempts escaped anyone counting auth-failed lines.
  await using ferry = await startFerry([...LISTEN, "--user", "carol:right"]);
  const credentials = socks5.encodeCredentials({
    username: encoder.encode("carol"),
    password: encoder.encode("wrong"),
  });
  const localPort = await new Promise<number>((resolve, reject) => {
    const socket = net.connect(ferry.port, ferry.hostname, () => {
      socket.write(socks5.encodeGreeting({ methods: [socks5.Method.UserPass] }));
    });
    socket.once("data", () => { // the method selection, 05 02
      const port = socket.localPort!;
      // Written straight into the kernel (libuv tries that first), then the
      // reset right behind it: the status is never read.
      socket.write(credentials);
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
  assert.equal(session.outcome, "auth-failed");
  assert.equal(session.user, "carol");
});

Deno.test("a client that resets mid-handshake is logged reset, one that closes client-closed", async () => {
  await using ferry = await startFerry(LISTEN);
  const partialGreeting = Uint8Array.of(0x05, 0x02, 0x00); // two methods announced, one sent
  for (const ending of ["reset", "close"] as const) {
    const localPort = await new Promise<number>((resolve, reject) => {
      const socket = net.connect(ferry.port, ferry.hostname, () => {
        const port = socket.localPort!;
        socket.write(partialGreeting, () => {
          // Time for ferry to read the bytes, so the end is what it meets next.
          setTimeout(() => {
            if (ending === "reset") socket.resetAndDestroy();
            else socket.end();
            resolve(port);
          }, 100);
        });
      });
      socket.once("error", reject);
    });
    const session = await sessionOf(ferry, {
      transport: "tcp",
      hostname: "127.0.0.1",
      port: localPort,
    });
    assert.equal(session.outcome, ending === "reset" ? "reset" : "client-closed");
  }
});

Deno.test("a request the client never finishes is logged as far as it came: protocol, command, target, user", async () => {
  // An operator looking for who gave up (or went quiet) mid-request sees
  // what they had asked; a SOCKS4a request was logged plain socks4.
  await using ferry = await startFerry(LISTEN);
  const cases = [
    {
      sent: Uint8Array.of(0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, ...encoder.encode("bo")),
      logged: { protocol: "socks4a", command: "connect", target: null, user: null },
    },
    {
      sent: Uint8Array.of(0x04, 0x02, 0x00, 0x50, 127, 0, 0, 1, ...encoder.encode("bo")),
      logged: { protocol: "socks4", command: "bind", target: "127.0.0.1:80", user: null },
    },
    {
      sent: Uint8Array.of(0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, ...encoder.encode("bob\0exa")),
      logged: { protocol: "socks4a", command: "connect", target: null, user: "bob" },
    },
    {
      // After the greeting: a name cut short.
      sent: Uint8Array.of(0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x03, 0x05, ...encoder.encode("ex")),
      logged: { protocol: "socks5", command: "connect", target: null, user: null },
    },
  ];
  for (const { sent, logged } of cases) {
    const client = await BufferedConn.connect(ferry.hostname, ferry.port);
    await client.conn.write(sent);
    // SOCKS5's method reply read first, so the client's close is a FIN, not a reset.
    if (sent[0] === 0x05) assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, 0x00));
    await client.conn.closeWrite();
    const session = await sessionOf(ferry, client.localAddr);
    client.conn.close();
    const { protocol, command, target, user, outcome } = session;
    assert.deepEqual(
      { protocol, command, target, user, outcome },
      { ...logged, outcome: "client-closed" },
    );
  }
});

Deno.test("an empty SOCKS4 user-id is no user, and a request cut right after its command names the command", async () => {
  // user "" would read as a user who sent an empty name; only sent names are logged.
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const upstream = target.accept();
  const granted = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks4Handshake(granted, ipv4("127.0.0.1", target.port));
  assert.equal(reply.reply, socks4.Reply.Granted);
  (await upstream).close();
  assert.equal((await granted.readToEnd()).length, 0);
  granted.close();
  const grantedSession = await sessionOf(ferry, granted.localAddr);
  assert.deepEqual(
    { protocol: grantedSession.protocol, user: grantedSession.user },
    { protocol: "socks4", user: null },
  );
  const cases = [
    {
      // SOCKS4a, its user-id empty and ended, its name cut short.
      sent: Uint8Array.of(0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, 0, ...encoder.encode("exa")),
      logged: { protocol: "socks4a", command: "connect", target: null, user: null },
    },
    {
      // After the greeting, the request's version and command and no more.
      sent: Uint8Array.of(0x05, 0x01, 0x00, 0x05, 0x03),
      logged: { protocol: "socks5", command: "udp-associate", target: null, user: null },
    },
    {
      sent: Uint8Array.of(0x04, 0x02),
      logged: { protocol: "socks4", command: "bind", target: null, user: null },
    },
  ];
  for (const { sent, logged } of cases) {
    const client = await BufferedConn.connect(ferry.hostname, ferry.port);
    await client.conn.write(sent);
    // SOCKS5's method reply read first, so the client's close is a FIN, not a reset.
    if (sent[0] === 0x05) assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, 0x00));
    await client.conn.closeWrite();
    const session = await sessionOf(ferry, client.localAddr);
    client.conn.close();
    const { protocol, command, target, user, outcome } = session;
    assert.deepEqual(
      { protocol, command, target, user, outcome },
      { ...logged, outcome: "client-closed" },
    );
  }
});

Deno.test("a user name that is not UTF-8 never passes for a configured name spelled with escapes", async () => {
  // The log shows byte 0xff as \xff; a user configured as "carol\xff" (ASCII
  // backslash, x, f, f) is another user, and those bytes must not log in as them.
  await using ferry = await startFerry([...LISTEN, "--user", "carol\\xff:right"]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks5.encodeGreeting({ methods: [socks5.Method.UserPass] }));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, 0x02));
  const username = Uint8Array.of(...encoder.encode("carol"), 0xff);
  await client.write(socks5.encodeCredentials({ username, password: encoder.encode("right") }));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x01, 0x01), "auth must fail");
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "auth-failed");
  assert.equal(session.userNotUtf8, true);
  // The configured user itself still logs in.
  using target = TcpTarget.listen();
  const { client: carol, reply } = await socks5Connect(ferry, ipv4("127.0.0.1", target.port), {
    username: "carol\\xff",
    password: "right",
  });
  using _carol = carol;
  assert.equal(reply.reply, socks5.Reply.Succeeded);
});

Deno.test("a user name is compared byte for byte: a BOM before it, or invalid UTF-8 after it, is another name", async () => {
  await using ferry = await startFerry([...LISTEN, "--user", "carol:right"]);
  const carol = encoder.encode("carol");
  const names = [
    Uint8Array.of(0xef, 0xbb, 0xbf, ...carol), // the default decoder dropped the BOM: "carol"
    Uint8Array.of(...carol, 0xff), // invalid UTF-8, once "carol\ufffd"
  ];
  // Logged as what the bytes are: bytes that are not UTF-8 as a host name's
  // are, not as U+FFFD, which made different names log the same.
  const logged = ["\ufeffcarol", "carol\\xff"];
  for (const [index, username] of names.entries()) {
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    await client.write(socks5.encodeGreeting({ methods: [socks5.Method.UserPass] }));
    assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, 0x02));
    await client.write(socks5.encodeCredentials({ username, password: encoder.encode("right") }));
    assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x01, 0x01), "auth must fail");
    client.close(); // ferry waits for the client to close first
    const session = await sessionOf(ferry, client.localAddr);
    assert.equal(session.outcome, "auth-failed");
    assert.equal(session.user, logged[index]);
    // And says so: a name spelled "carol\xff" in ASCII logs the same text.
    assert.equal(session.userNotUtf8, index === 1 ? true : undefined);
  }
});

Deno.test("with users configured, a client offering only no-auth gets 05 FF", async () => {
  await using ferry = await startFerry([...LISTEN, "--user", "carol:pw"]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, 0xff));
  client.close(); // ferry would linger for the client to close first
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "no-acceptable-method");
});

Deno.test("ferry selects no-auth from a greeting offering several methods", async () => {
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks5.encodeGreeting({ methods: [0x80, socks5.Method.GssApi, 0x00] }));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, 0x00));
});

Deno.test("NMETHODS=0 gets 05 FF and the connection is closed", async () => {
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(Uint8Array.of(0x05, 0x00));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, 0xff));
  const end = await client.waitForEnd();
  assert.equal(end.discarded, 0);
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "no-acceptable-method");
});

for (const [command, name] of [[0x04, "unknown command 0x04"], [0xff, "command 0xff"]] as const) {
  Deno.test(`SOCKS5 ${name} gets reply 0x07 command not supported`, async () => {
    await using ferry = await startFerry(LISTEN);
    using target = TcpTarget.listen();
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    const reply = await socks5Handshake(client, ipv4("127.0.0.1", target.port), { command });
    assert.equal(reply.reply, socks5.Reply.CommandNotSupported);
    client.close(); // ferry would linger for the client to close first
    const session = await sessionOf(ferry, client.localAddr);
    assert.equal(session.outcome, "command-not-supported");
  });
}

Deno.test("SOCKS4 unknown command 0x03 gets reply 91 and is logged as SOCKS5's is", async () => {
  // It was logged protocol-error, with the same command refused by SOCKS5
  // logged command-not-supported, as the README's one row for both says.
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(Uint8Array.of(0x04, 0x03, 0x00, 0x50, 127, 0, 0, 1, 0x00));
  const reply = await client.readExactly(8);
  assert.equal(reply[1], 91);
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "command-not-supported");
  assert.equal(session.protocol, "socks4");
  assert.equal(session.command, "0x03");
});

Deno.test("SOCKS5 address type 0x02 gets reply 0x08 address type not supported", async () => {
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }));
  assert.equal(await client.readMessage(socks5.decodeMethodSelection, "method"), 0x00);
  // VER CMD RSV ATYP=0x02, then 4 address bytes and a port, as a confused client might send.
  await client.write(Uint8Array.of(0x05, 0x01, 0x00, 0x02, 127, 0, 0, 1, 0x00, 0x50));
  const head = await client.readExactly(2);
  assert.deepEqual(head, Uint8Array.of(0x05, socks5.Reply.AddressTypeNotSupported));
  client.close(); // ferry would linger for the client to close first
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "address-type-not-supported");
});

Deno.test("a target that answers and resets mid-upload: the client still gets the whole answer, then EOF", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  using _server = server;
  // The client sends a large body and reads nothing yet (as an HTTP client
  // does while uploading); the server reads the start, answers in full, and
  // closes with the rest unread, so its kernel resets the connection.
  const uploading = (async () => {
    const chunk = new Uint8Array(64 * 1024);
    const until = performance.now() + 2_000;
    try {
      while (performance.now() < until) await client.conn.write(chunk);
    } catch {
      // ferry may end the session before the client has finished
    }
  })();
  await server.readExactly(100);
  const answer = pseudoRandomBytes(200_000, 11);
  await server.write(answer);
  await new Promise((resolve) => setTimeout(resolve, 300));
  server.conn.close();
  await uploading;
  // Closing the client's socket with its upload unread would reset it, and the
  // client's kernel would drop the part of the answer it had not read yet.
  const received = await client.readToEnd();
  assert.equal(received.length, answer.length);
  assert.equal(await sha256(received), await sha256(answer));
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "reset");
  assert.equal(session.down, answer.length);
});

Deno.test("after a target's reset the client gets the rest of the answer, a FIN it can still send after, and a short wait for its close", async () => {
  // The idle timeout is long, so that only the linger after the target's
  // failure (2 s from the last byte moved) can end the session in time.
  await using ferry = await startFerry([...LISTEN, "--idle-timeout", "60s"]);
  // A target that answers the first bytes with more than the sockets hold
  // while the client reads nothing, and resets 300 ms later: so ferry is
  // still writing the answer when the target fails.
  const answer = pseudoRandomBytes(4 * 1048576, 12);
  await using target = await answerThenReset(answer, 300);
  const { client, reply } = await socks5Connect(ferry, ipv4("127.0.0.1", target.port));
  using _client = client;
  assert.equal(reply.reply, socks5.Reply.Succeeded);
  await client.write(encoder.encode("GET"));
  await new Promise((resolve) => setTimeout(resolve, 800));
  // What ferry had read reaches the client, each write moving the
  // linger's end on, and then a FIN: not the close at the linger's end.
  const received = await client.readToEnd(10_000);
  const finAt = performance.now();
  assert.ok(received.length > 0, "part of the answer came through");
  assert.equal(await sha256(received), await sha256(answer.subarray(0, received.length)));
  // A FIN is a half-close: ferry still reads (and drops) what the client
  // sends, until the linger ends about 2 s after the last byte it wrote.
  let sendingFor = 0;
  try {
    while (performance.now() - finAt < 4_000) {
      await client.conn.write(new Uint8Array(100));
      sendingFor = performance.now() - finAt;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } catch {
    // ferry has closed its end
  }
  assert.ok(sendingFor >= 1_000, `ferry closed ${Math.round(sendingFor)} ms after its FIN`);
  // The client neither sends nor closes now: ferry ends the session after
  // the linger, not after the 60 s idle timeout.
  const session = await sessionOf(ferry, client.localAddr, 15_000);
  assert.equal(session.outcome, "reset");
  assert.equal(session.down, received.length);
});

Deno.test("after a target's reset seen on an upload, the rest of the answer still reaching the client does not stretch the wait for its close to the idle timeout", async () => {
  // The target answers (more than the sockets hold), then resets while
  // ferry's write of the answer waits for the client to read; the client's
  // next bytes meet the reset. What ferry then still writes to the client
  // moves the 2 s wait on, not the 60 s idle timeout.
  await using ferry = await startFerry([...LISTEN, "--idle-timeout", "60s"]);
  const answer = pseudoRandomBytes(32 * 1048576, 13);
  await using target = await answerThenReset(answer, 300);
  const { client, reply } = await socks5Connect(ferry, ipv4("127.0.0.1", target.port));
  using _client = client;
  assert.equal(reply.reply, socks5.Reply.Succeeded);
  await client.write(encoder.encode("GET"));
  await new Promise((resolve) => setTimeout(resolve, 800)); // the target has reset
  await client.write(encoder.encode("more")); // ferry's write of it to the target fails
  const received = await client.readToEnd(10_000);
  assert.ok(received.length > 0, "part of the answer came through");
  assert.equal(await sha256(received), await sha256(answer.subarray(0, received.length)));
  // The client neither sends nor closes: ferry ends the session after the
  // 2 s wait, long before the 60 s idle timeout.
  const session = await sessionOf(ferry, client.localAddr, 10_000);
  assert.equal(session.outcome, "reset");
  assert.equal(session.down, received.length);
});

Deno.test("40 CONNECTs by name at once from one client all succeed (a browser opening a page)", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  // Each its own spelling of localhost, so no two share a lookup: 40 lookups
  // for one client IP, past its share of 8 at a time, must wait, not fail.
  const names = Array.from(
    { length: 40 },
    (_, i) => [..."localhost"].map((c, bit) => (i >> bit) & 1 ? c.toUpperCase() : c).join(""),
  );
  const clients: BufferedConn[] = [];
  try {
    for (let i = 0; i < names.length; i++) {
      const client = await BufferedConn.connect(ferry.hostname, ferry.port);
      clients.push(client);
      await client.write(socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }));
      assert.equal(await client.readMessage(socks5.decodeMethodSelection, "method"), 0);
    }
    // All requests in one burst, before any reply is read.
    await Promise.all(clients.map((client, i) =>
      client.write(socks5.encodeRequest({
        command: socks5.Command.Connect,
        address: domain(names[i]!, target.port),
      }))
    ));
    const replies = await Promise.all(
      clients.map((client) => client.readMessage(socks5.decodeReply, "reply")),
    );
    assert.deepEqual(replies.map((r) => r.reply), names.map(() => socks5.Reply.Succeeded));
  } finally {
    for (const client of clients) client.close();
  }
});

Deno.test("a domain name that is not UTF-8 gets 0x04, and the log line says why", async () => {
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }));
  assert.equal(await client.readMessage(socks5.decodeMethodSelection, "method"), 0x00);
  // "caf\xe9.test": Latin-1, not UTF-8. Replacing the byte with U+FFFD would look up another name.
  const name = concat([encoder.encode("caf"), Uint8Array.of(0xe9), encoder.encode(".test")]);
  // VER CMD=CONNECT RSV ATYP=DOMAIN LEN NAME PORT
  await client.write(concat([Uint8Array.of(5, 1, 0, 3, name.length), name, Uint8Array.of(0, 80)]));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, socks5.Reply.HostUnreachable));
  client.close(); // ferry would linger for the client to close first
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "protocol-error");
  assert.equal(session.error, 'host name is not valid UTF-8: "caf\\xe9.test"', "which name, too");
  assert.equal(session.target, "caf\\xe9.test:80", "and which target");
  assert.equal(session.command, "connect", "what was asked, though refused");
});

Deno.test("a refused request whose client never closes is still logged protocol-error once the wait for its close ends", async () => {
  // The refusal's wait for the client to close is cut at 2 s; that cut is
  // the aftermath of the refusal, not the session's outcome.
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }));
  assert.equal(await client.readMessage(socks5.decodeMethodSelection, "method"), 0x00);
  // A request whose version byte is 0x04: answered 0x01, then ferry waits.
  await client.write(Uint8Array.of(4, 1, 0, 1, 127, 0, 0, 1, 0, 80));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, socks5.Reply.GeneralFailure));
  // The client neither sends nor closes: ferry ends the session itself.
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "protocol-error");
  assert.equal(session.error, "request version 0x04, expected 0x05");
});

Deno.test("a SOCKS4a name that is not UTF-8 gets 91 and is logged as SOCKS4a", async () => {
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const name = concat([encoder.encode("caf"), Uint8Array.of(0xe9), encoder.encode(".test")]);
  // VN CD=CONNECT PORT 0.0.0.1 USERID "bob" NUL NAME NUL
  await client.write(
    concat([
      Uint8Array.of(4, 1, 0, 80, 0, 0, 0, 1),
      encoder.encode("bob\0"),
      name,
      Uint8Array.of(0),
    ]),
  );
  const reply = await client.readExactly(8);
  assert.equal(reply[1], 91);
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "protocol-error");
  assert.equal(session.protocol, "socks4a");
  assert.equal(session.command, "connect");
  assert.equal(session.error, 'host name is not valid UTF-8: "caf\\xe9.test"');
  assert.equal(session.target, "caf\\xe9.test:80");
  assert.equal(session.user, "bob", "who asked, though refused");
});

Deno.test("CONNECT to port 0 gets 0x01, and the log line names the system's reason", async () => {
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks5Handshake(client, ipv4("127.0.0.1", 0));
  assert.equal(reply.reply, socks5.Reply.GeneralFailure);
  client.close(); // ferry would linger for the client to close first
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "general-failure");
  assert.match(String(session.error), /^connect to 127\.0\.0\.1 failed: .*port.*0/i);
});

Deno.test("--allow-net narrowed to one host: CONNECT elsewhere gets 0x02, by address and by name (ASCII or not)", async () => {
  // 127.0.0.2 is loopback, but outside the permission; so is looking up a
  // name (Deno refuses it before any query leaves).
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  await using ferry = await startFerry(["socks", "--listen", `127.0.0.1:${port}`], {
    allowNet: "127.0.0.1",
  });
  using target = TcpTarget.listen();
  const cases = [
    { address: ipv4("127.0.0.2", target.port), error: /connect to 127\.0\.0\.2/ },
    {
      address: domain("localhost", target.port),
      error: /resolving "localhost" is not allowed by --allow-net/,
    },
    // Deno's permission check throws for a name that is not ASCII, and the
    // client got no reply at all.
    {
      address: domain("bücher.example", target.port),
      error: /resolving "bücher\.example" is not allowed by --allow-net/,
    },
  ];
  for (const { address, error } of cases) {
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    const reply = await socks5Handshake(client, address);
    assert.equal(reply.reply, socks5.Reply.NotAllowed, JSON.stringify(address));
    client.close();
    const session = await sessionOf(ferry, client.localAddr);
    assert.equal(session.outcome, "not-allowed");
    assert.match(String(session.error), error);
  }
  // And what the permission covers still works.
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  using _server = server;
  await client.write(Uint8Array.of(7));
  assert.deepEqual(await server.readExactly(1), Uint8Array.of(7));
});

Deno.test("CONNECT to a closed port gets reply 0x05 connection refused", async () => {
  await using ferry = await startFerry(LISTEN);
  const port = closedPort();
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks5Handshake(client, ipv4("127.0.0.1", port));
  assert.equal(reply.reply, socks5.Reply.ConnectionRefused);
  client.close(); // ferry would linger for the client to close first
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "connection-refused");
  assert.equal(session.target, `127.0.0.1:${port}`);
  // The outcome says what went wrong: no `error` field (see the README's Logs).
  assert.equal(session.error, undefined);
});

Deno.test("a refused CONNECT whose client never closes ends after the 2 s wait for its close, not at the connect timeout", async () => {
  // The dial failed at once, before ferry would have begun to read the
  // client meanwhile: that reading, still due, must not come in the wait
  // for the client's close and put the connect deadline back in force.
  await using ferry = await startFerry([...LISTEN, "--connect-timeout", "60s"]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks5Handshake(client, ipv4("127.0.0.1", closedPort()));
  assert.equal(reply.reply, socks5.Reply.ConnectionRefused);
  // The client neither sends nor closes: ferry ends the session itself.
  const session = await sessionOf(ferry, client.localAddr, 10_000);
  assert.equal(session.outcome, "connection-refused");
});

Deno.test("SOCKS4 CONNECT to a closed port gets reply 91", async () => {
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks4Handshake(client, ipv4("127.0.0.1", closedPort()));
  assert.equal(reply.reply, socks4.Reply.Rejected);
  client.close(); // ferry would linger for the client to close first
});

Deno.test("the bound address in the reply is the address the target sees as its peer", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const { client, server, reply } = await connectThrough(ferry, target);
  using _client = client;
  assert.equal(reply.address.type, "ipv4");
  assert.equal(reply.address.host, server.remoteAddr.hostname);
  assert.equal(reply.address.port, server.remoteAddr.port);
  assert.notEqual(reply.address.port, 0);
});

Deno.test("a CONNECT to an IPv4-mapped address is answered with the plain IPv4 address the target sees", async () => {
  // It replied ATYP 4 ::ffff:127.0.0.1, and SOCKS4a 0.0.0.0, for a
  // connection the target saw come from 127.0.0.1; BIND already unmapped.
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const mapped = { type: "ipv6", host: "::ffff:127.0.0.1", port: target.port } as const;
  const { client, server, reply } = await connectThrough(ferry, target, { address: mapped });
  using _client = client;
  assert.deepEqual(reply.address, {
    type: "ipv4",
    host: server.remoteAddr.hostname,
    port: server.remoteAddr.port,
  });
  const upstream = target.accept();
  using socks4Client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const socks4Reply = await socks4Handshake(socks4Client, domain("::ffff:127.0.0.1", target.port));
  using server4 = await upstream;
  assert.equal(socks4Reply.reply, socks4.Reply.Granted);
  assert.deepEqual(
    { ip: socks4Reply.ip, port: socks4Reply.port },
    { ip: server4.remoteAddr.hostname, port: server4.remoteAddr.port },
  );
});

Deno.test("an HTTP request sent to ferry (first byte 0x47) is closed and logged as unknown-protocol", async () => {
  await using ferry = await startFerry(LISTEN);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(encoder.encode("GET / HTTP/1.1\r\nHost: example\r\n\r\n"));
  const end = await client.waitForEnd();
  assert.equal(end.discarded, 0, "ferry answered an HTTP request");
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "unknown-protocol");
  assert.equal(session.protocol, null);
  assert.equal(session.target, null);
});

Deno.test("a handshake that stalls is closed after --handshake-timeout", async () => {
  await using ferry = await startFerry([...LISTEN, "--handshake-timeout", "300ms"]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(Uint8Array.of(0x05, 0x01)); // the method list never comes
  await client.waitForEnd(5_000);
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "handshake-timeout");
  assert.equal(session.target, null);
  // The message leaves out the target nobody asked for, rather than "→ null".
  assert.doesNotMatch(String(session.message), /→|null/);
});

Deno.test("after a quiet spell, the next client gets the whole --handshake-timeout", async () => {
  await using ferry = await startFerry([...LISTEN, "--handshake-timeout", "1s"]);
  using target = TcpTarget.listen();
  // One session, then none for longer than the timeout: the deadline sweep stops.
  {
    const upstream = target.accept();
    const { client, reply } = await socks5Connect(ferry, ipv4("127.0.0.1", target.port));
    assert.equal(reply.reply, socks5.Reply.Succeeded);
    (await upstream).close();
    client.close();
    assert.equal((await sessionOf(ferry, client.localAddr)).outcome, "ok");
  }
  await new Promise((resolve) => setTimeout(resolve, 1_500));

  // A slow client: its greeting comes in two parts, 500 ms apart.
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client.write(Uint8Array.of(0x05));
  await new Promise((resolve) => setTimeout(resolve, 500));
  await client.write(Uint8Array.of(0x01, 0x00));
  assert.deepEqual(await client.readExactly(2), Uint8Array.of(0x05, 0x00), "the method reply");
});

Deno.test("an established session with no traffic is closed on both sides after --idle-timeout", async () => {
  await using ferry = await startFerry([...LISTEN, "--idle-timeout", "300ms"]);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  // Traffic first, so the timeout is about idleness and not the first byte.
  await client.write(encoder.encode("hi"));
  assert.deepEqual(await server.readExactly(2), encoder.encode("hi"));
  await Promise.all([client.waitForEnd(5_000), server.waitForEnd(5_000)]);
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "idle-timeout");
  assert.equal(session.up, 2);
  // Not at the first keepalive check (1 s in), which a short timeout comes before.
  assert.ok(Number(session.ms) < 1000, `cut after ${session.ms} ms`);
});

Deno.test("--idle-timeout counts from the last byte also once keepalive has come on (after 1 s)", async () => {
  // Keepalive comes on 1 s into a relay, and the idle deadline is set anew
  // then: from the last byte moved, not from that moment, which would let
  // this session idle 1 s longer than it may.
  await using ferry = await startFerry([...LISTEN, "--idle-timeout", "1500ms"]);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  using _server = server;
  await client.write(encoder.encode("hi"));
  assert.deepEqual(await server.readExactly(2), encoder.encode("hi"));
  await client.waitForEnd(10_000);
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "idle-timeout");
  // ferry's own clock, from accept: 1.5 s and the sweep's lateness (two
  // ticks of 150 ms at most); counted from the keepalive, 2.5 s at least.
  assert.ok(Number(session.ms) < 2_200, `ended after ${session.ms} ms`);
});

Deno.test("--idle-timeout counts from the last byte of traffic that went on past the first second", async () => {
  // Past KEEPALIVE_AFTER_MS every byte sets the idle deadline itself.
  await using ferry = await startFerry([...LISTEN, "--idle-timeout", "1500ms"]);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  using _server = server;
  for (let i = 0; i < 4; i++) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, 500));
    await client.write(encoder.encode("hi"));
    assert.deepEqual(await server.readExactly(2), encoder.encode("hi"));
  }
  const lastByte = performance.now();
  await client.waitForEnd(10_000);
  const idle = performance.now() - lastByte;
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "idle-timeout");
  // 1.5 s and the sweep's lateness (two ticks of 150 ms at most), not 3 s.
  assert.ok(idle >= 1_400 && idle < 2_600, `cut ${idle} ms after the last byte`);
  // The line's own span: the 1.5 s of traffic and the idle time after it.
  assert.ok(Number(session.ms) >= 2_900, `logged ms=${session.ms}`);
  assert.equal(session.up, 8);
});

Deno.test("a download to a slow reader is not cut by --idle-timeout while its bytes still move", async () => {
  // Reading 64 KiB every 15 ms (about 4 MiB/s here), ferry's writes wake
  // every third of a second or so: the kernel lets a writer on again once a
  // third of its send buffer (up to 4 MiB) has drained. Each of ferry's
  // writes of a full 4 MiB read buffer takes three such wake-ups, about a
  // second, and the source, waiting for it, gives ferry no reads meanwhile.
  // An idle timeout in between: only counting the writes' progress keeps
  // this session alive.
  await using ferry = await startFerry([...LISTEN, "--idle-timeout", "600ms"]);
  using target = TcpTarget.listen();
  const body = pseudoRandomBytes(24 * 1024 * 1024, 5);
  const slowPart = 12 * 1024 * 1024;
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  const targetSide = (async () => {
    await server.write(body);
    server.close();
  })();
  targetSide.catch(() => {}); // if ferry cuts the session, the client's read says so first
  const chunks: Uint8Array[] = [];
  for (let got = 0; got < body.length;) {
    const chunk = await client.readExactly(Math.min(64 * 1024, body.length - got));
    chunks.push(chunk);
    got += chunk.length;
    // The rest at full speed, so that the client's close comes well before
    // the timeout once ferry has written its last bytes.
    if (got < slowPart) await new Promise((resolve) => setTimeout(resolve, 15));
  }
  await targetSide;
  assert.equal(await sha256(concat(chunks)), await sha256(body));
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "ok");
  assert.equal(session.down, body.length);
});

Deno.test("a relay that lasts gets TCP keepalive on both of ferry's sockets", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  using _server = server;
  await keepAliveOnBoth(ferry.port, client.localAddr.port, target.port);
});

Deno.test("after a target's reset, an upload the client sends later does not extend the wait for its close", async () => {
  // A short handshake timeout makes the deadline sweep tick every 100 ms, so
  // the wait's end can be told to within a few tenths of a second.
  await using ferry = await startFerry([
    ...LISTEN,
    "--idle-timeout",
    "60s",
    "--handshake-timeout",
    "1s",
  ]);
  await using target = await answerThenReset("answer", 100);
  const { client, reply } = await socks5Connect(ferry, ipv4("127.0.0.1", target.port));
  using _client = client;
  assert.equal(reply.reply, socks5.Reply.Succeeded);
  await client.write(encoder.encode("GET"));
  assert.equal(decoder.decode(await client.readToEnd(10_000)), "answer");
  const finAt = performance.now();
  // Well into the 2 s wait, more of the upload: read and dropped, and no
  // reason to wait longer for the client to close.
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  await client.conn.write(new Uint8Array(100));
  // The session's line is written when ferry has closed the client's socket.
  const session = await sessionOf(ferry, client.localAddr, 10_000);
  const endedAfter = performance.now() - finAt;
  assert.ok(endedAfter < 3_000, `ended ${Math.round(endedAfter)} ms after the FIN`);
  assert.equal(session.outcome, "reset");
});

Deno.test("a relay busy writing to a slow reader when keepalive is due gets it once the write is done", async () => {
  // Deno refuses setKeepAlive on a socket with a write pending; the first
  // try (1 s in) meets ferry's write to this client, which is not reading.
  // A short handshake timeout makes the deadline sweep tick every 100 ms,
  // so that first try comes before the client starts reading.
  await using ferry = await startFerry([...LISTEN, "--handshake-timeout", "1s"]);
  using target = TcpTarget.listen();
  const { client, server } = await connectThrough(ferry, target);
  using _client = client;
  using _server = server;
  const body = pseudoRandomBytes(32 * 1024 * 1024, 7);
  const sending = server.write(body);
  sending.catch(() => {}); // a failure shows as a short read below
  await new Promise((resolve) => setTimeout(resolve, 2_000)); // past the first try
  assert.equal(await sha256(await client.readExactly(body.length)), await sha256(body));
  await sending;
  await keepAliveOnBoth(ferry.port, client.localAddr.port, target.port);
});

Deno.test("SOCKS4 with a 1024-byte user id is granted and relays", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const upstream = target.accept();
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const userId = encoder.encode("u".repeat(1024));
  const reply = await socks4Handshake(client, ipv4("127.0.0.1", target.port), userId);
  assert.equal(reply.reply, socks4.Reply.Granted);
  const server = await upstream;
  await server.write(encoder.encode("welcome"));
  assert.deepEqual(await client.readExactly(7), encoder.encode("welcome"));
  client.close();
  server.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.protocol, "socks4");
  assert.equal(session.outcome, "ok");
});

Deno.test("SOCKS4a with a 1024-byte user id and a host name is granted", async () => {
  await using ferry = await startFerry(LISTEN);
  using target = TcpTarget.listen();
  const upstream = target.accept();
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const userId = encoder.encode("v".repeat(1024));
  const reply = await socks4Handshake(client, domain("127.0.0.1", target.port), userId);
  assert.equal(reply.reply, socks4.Reply.Granted);
  (await upstream).close();
  await client.waitForEnd(); // the target's close is relayed
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.protocol, "socks4a");
  assert.equal(session.target, `127.0.0.1:${target.port}`);
});

Deno.test("with --user configured, SOCKS4 and SOCKS4a requests get reply 91, are logged auth-required and the target is not contacted", async () => {
  await using ferry = await startFerry([...LISTEN, "--user", "carol:pw"]);
  using target = TcpTarget.listen();
  for (const address of [ipv4("127.0.0.1", target.port), domain("localhost", target.port)]) {
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    const reply = await socks4Handshake(client, address, encoder.encode("carol"));
    assert.equal(reply.reply, socks4.Reply.Rejected);
    client.close(); // ferry would linger for the client to close first
    const session = await sessionOf(ferry, client.localAddr);
    assert.equal(session.outcome, "auth-required");
  }
  // Malformed SOCKS4 requests too (command 0x03; a 4a name that is not
  // UTF-8): refused for want of a password whatever they asked. They were
  // logged command-not-supported and protocol-error.
  for (
    const request of [
      [0x04, 0x03, 0x00, 0x50, 127, 0, 0, 1, 0x00],
      [0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, 0x00, 0xff, 0xfe, 0x00],
    ]
  ) {
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    await client.write(Uint8Array.from(request));
    const reply = await client.readMessage(socks4.decodeReply, "SOCKS4 reply");
    assert.equal(reply.reply, socks4.Reply.Rejected);
    client.close();
    assert.equal((await sessionOf(ferry, client.localAddr)).outcome, "auth-required");
  }
  // A SOCKS5 session afterwards is the first connection the target accepts.
  const { client, server, reply } = await connectThrough(ferry, target, {
    username: "carol",
    password: "pw",
  });
  using _client = client;
  assert.equal(
    server.remoteAddr.port,
    reply.address.port,
    "an earlier SOCKS4 connection got through",
  );
});

Deno.test("with --no-socks4, SOCKS4 and SOCKS4a requests get reply 91 and are logged socks4-disabled", async () => {
  await using ferry = await startFerry([...LISTEN, "--no-socks4"]);
  using target = TcpTarget.listen();
  for (const address of [ipv4("127.0.0.1", target.port), domain("localhost", target.port)]) {
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    const reply = await socks4Handshake(client, address);
    assert.equal(reply.reply, socks4.Reply.Rejected);
    client.close(); // ferry would linger for the client to close first
    const session = await sessionOf(ferry, client.localAddr);
    assert.equal(session.outcome, "socks4-disabled");
  }
  // A malformed SOCKS4 request too (command 0x03): it was logged command-not-supported.
  {
    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    await client.write(Uint8Array.of(0x04, 0x03, 0x00, 0x50, 127, 0, 0, 1, 0x00));
    const reply = await client.readMessage(socks4.decodeReply, "SOCKS4 reply");
    assert.equal(reply.reply, socks4.Reply.Rejected);
    client.close();
    assert.equal((await sessionOf(ferry, client.localAddr)).outcome, "socks4-disabled");
  }
  // SOCKS5 still works.
  const { client, server, reply } = await connectThrough(ferry, target);
  using _client = client;
  assert.equal(server.remoteAddr.port, reply.address.port);
});
