/**
 * Unit tests of dialling and of mapping connect failures to SOCKS replies,
 * with real loopback errors where the machine can produce them and synthetic
 * ones where it cannot.
 */
import assert from "node:assert/strict";
import { Reply } from "../src/protocol/socks5.ts";
import { SessionAbort } from "../src/proxy_session.ts";
import {
  ATTEMPT_DELAY_MS,
  classifyConnectError,
  connectToFirstAnswer,
  dial,
  DialError,
  type DialFailure,
  interleaveFamilies,
  messageWithCause,
  mostTelling,
  outOfDescriptorsToDial,
  outOfLocalPorts,
  REPLY_FOR_FAILURE,
  resetAsAccepted,
  resolverWith,
} from "../src/upstream/dial.ts";
import { type Lookup, LookupsBusy } from "../src/upstream/lookups.ts";
import { noteShortage } from "../src/nofile.ts";
import { finThenResetServer, resettingServer } from "./_helpers/reset.ts";
import { deadline } from "./_helpers/socks_client.ts";

/** A loopback port nothing listens on (bound, read back, released). */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/** Runs `body` with a listening loopback socket; closes it and anything it accepted. */
async function withListener(
  body: (listener: Deno.TcpListener, accepted: Promise<Deno.TcpConn>) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const accepted = listener.accept();
  try {
    await body(listener, accepted);
  } finally {
    listener.close();
    await accepted.then((conn) => conn.close(), () => {});
  }
}

function withCode(code: unknown): Error {
  return Object.assign(new Error(`synthetic ${String(code)}`), { code });
}

/** Awaits a rejection and returns it as a DialError, failing otherwise. */
async function dialError(promise: Promise<Deno.TcpConn>): Promise<DialError> {
  try {
    const conn = await promise;
    conn.close();
  } catch (error) {
    assert.ok(error instanceof DialError, `expected DialError, got ${error}`);
    return error;
  }
  assert.fail("dial succeeded");
}

Deno.test("classifyConnectError() maps a real refused connect to connection-refused", async () => {
  const port = closedPort();
  let error: unknown;
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
  } catch (caught) {
    error = caught;
  }
  assert.ok(error, "connecting to a closed port succeeded");
  assert.equal(classifyConnectError(error), "connection-refused");
});

Deno.test("classifyConnectError() maps errno codes", () => {
  const table: [string, DialFailure][] = [
    ["ECONNREFUSED", "connection-refused"],
    ["EHOSTUNREACH", "host-unreachable"],
    ["EHOSTDOWN", "host-unreachable"],
    ["ENETUNREACH", "network-unreachable"],
    ["ENETDOWN", "network-unreachable"],
    ["ETIMEDOUT", "connect-timeout"],
    ["EACCES", "not-allowed"],
    ["EPERM", "not-allowed"],
  ];
  for (const [code, failure] of table) {
    assert.equal(classifyConnectError(withCode(code)), failure, code);
  }
});

Deno.test("classifyConnectError() maps Deno error classes", () => {
  assert.equal(
    classifyConnectError(new Deno.errors.ConnectionRefused("x")),
    "connection-refused",
  );
  assert.equal(
    classifyConnectError(new Deno.errors.NetworkUnreachable("x")),
    "network-unreachable",
  );
  assert.equal(classifyConnectError(new Deno.errors.TimedOut("x")), "connect-timeout");
  assert.equal(classifyConnectError(new Deno.errors.NotCapable("x")), "not-allowed");
  // The class wins over a code that says otherwise.
  const both = Object.assign(new Deno.errors.TimedOut("x"), { code: "EACCES" });
  assert.equal(classifyConnectError(both), "connect-timeout");
});

Deno.test("classifyConnectError() answers general-failure for anything unknown", () => {
  const unknown: unknown[] = [
    new Error("boom"),
    new Deno.errors.ConnectionReset("x"),
    withCode("EWHATEVER"),
    withCode(111),
    withCode(undefined),
    null,
    undefined,
    "ECONNREFUSED",
    42,
    {},
  ];
  for (const error of unknown) {
    assert.equal(classifyConnectError(error), "general-failure", String(error));
  }
});

Deno.test("classifyConnectError() ignores codes that are Object.prototype keys", () => {
  // Intent: anything not in the errno table is general-failure. A plain-object
  // table lookup finds inherited keys, and would return a function here.
  for (const code of ["constructor", "toString", "hasOwnProperty", "__proto__"]) {
    assert.equal(classifyConnectError(withCode(code)), "general-failure", code);
  }
});

Deno.test("REPLY_FOR_FAILURE gives each failure its SOCKS5 reply code", () => {
  assert.deepEqual(REPLY_FOR_FAILURE, {
    "connection-refused": Reply.ConnectionRefused,
    "network-unreachable": Reply.NetworkUnreachable,
    "host-unreachable": Reply.HostUnreachable,
    "name-not-resolved": Reply.HostUnreachable,
    "not-allowed": Reply.NotAllowed,
    "connect-timeout": Reply.HostUnreachable,
    "lookups-busy": Reply.GeneralFailure,
    "forwarding-loop": Reply.GeneralFailure,
    "aborted": Reply.GeneralFailure,
    "general-failure": Reply.GeneralFailure,
  });
  const error = new DialError("not-allowed", "m", { cause: "c" });
  assert.equal(error.name, "DialError");
  assert.equal(error.reply, 0x02);
  assert.equal(error.cause, "c");
});

Deno.test("dial() to a closed loopback port throws DialError connection-refused, reply 0x05", async () => {
  const port = closedPort();
  const error = await dialError(
    dial({ type: "ipv4", host: "127.0.0.1", port }, new AbortController().signal),
  );
  assert.equal(error.failure, "connection-refused");
  assert.equal(error.reply, 0x05);
  assert.ok(error.cause instanceof Deno.errors.ConnectionRefused, String(error.cause));
  assert.match(error.message, /127\.0\.0\.1/);
});

Deno.test("dial() of a name that is an address with a zone Deno does not know: name-not-resolved, 0x04", async () => {
  for (const host of ["::1%lo", "::1%nosuchif0"]) {
    const error = await dialError(
      dial({ type: "domain", host, port: closedPort() }, new AbortController().signal),
    );
    assert.equal(error.failure, "name-not-resolved", `${host}: ${error.message}`);
    assert.equal(error.reply, 0x04);
    assert.ok(error.message.includes(host), error.message);
  }
  // A zone it knows is dialled: loopback's index, here refused like any closed port.
  const refused = await dialError(
    dial({ type: "domain", host: "::1%1", port: closedPort() }, new AbortController().signal),
  );
  assert.equal(refused.failure, "connection-refused", refused.message);
});

Deno.test("dial() to a target that resets as it accepts says so: general-failure, 0x01", async () => {
  const server = await resettingServer();
  try {
    // The reset usually beats the connect's check on loopback; should it not, try again.
    let error: DialError | null = null;
    for (let i = 0; i < 10 && error === null; i++) {
      await dial({ type: "ipv4", host: "127.0.0.1", port: server.port }, AbortSignal.timeout(2000))
        .then((conn) => conn.close(), (caught) => error = caught);
    }
    assert.ok(error !== null, "no dial met the reset");
    const failed: DialError = error;
    assert.equal(failed.failure, "general-failure");
    assert.equal(failed.reply, 0x01);
    assert.ok(resetAsAccepted(failed));
    assert.equal(
      messageWithCause(failed).split(":")[0],
      "connect to 127.0.0.1 was reset as it was accepted",
    );
  } finally {
    await server.close();
  }
});

Deno.test("dial() to a target that half-closes and then resets as it accepts says so too (EPIPE)", async () => {
  // The connect fails with EPIPE (Deno's BrokenPipe) then: it was taken for
  // an upstream that is down, and a forwarder's pool said so.
  const server = await finThenResetServer();
  try {
    const errors: DialError[] = [];
    for (let round = 0; round < 10 && errors.length === 0; round++) {
      await Promise.all(
        Array.from(
          { length: 50 },
          () =>
            dial({ type: "ipv4", host: "127.0.0.1", port: server.port }, AbortSignal.timeout(2000))
              .then((conn) => conn.close(), (caught) => void errors.push(caught)),
        ),
      );
    }
    assert.ok(errors.length > 0, "no dial met the reset");
    assert.ok(
      errors.some((error) => error.cause instanceof Deno.errors.BrokenPipe),
      `no EPIPE among ${errors.map((error) => messageWithCause(error)).join("; ")}`,
    );
    for (const error of errors) {
      assert.equal(error.failure, "general-failure", messageWithCause(error));
      assert.ok(resetAsAccepted(error), messageWithCause(error));
      assert.match(
        messageWithCause(error),
        /^connect to 127\.0\.0\.1 was reset as it was accepted:/,
      );
    }
  } finally {
    await server.close();
  }
});

Deno.test("dial() connects to a listening loopback port", async () => {
  await withListener(async (listener, accepted) => {
    const conn = await dial(
      { type: "ipv4", host: "127.0.0.1", port: listener.addr.port },
      new AbortController().signal,
    );
    try {
      assert.equal(conn.remoteAddr.hostname, "127.0.0.1");
      assert.equal(conn.remoteAddr.port, listener.addr.port);
      const server = await accepted;
      assert.equal(server.remoteAddr.port, conn.localAddr.port);
      await conn.write(Uint8Array.of(42));
      const buffer = new Uint8Array(1);
      assert.equal(await server.read(buffer), 1);
      assert.equal(buffer[0], 42);
    } finally {
      conn.close();
    }
  });
});

Deno.test("dial() resolves the domain localhost and connects", async () => {
  await withListener(async (listener, accepted) => {
    const conn = await dial(
      { type: "domain", host: "localhost", port: listener.addr.port },
      new AbortController().signal,
    );
    try {
      assert.equal(conn.remoteAddr.port, listener.addr.port);
      const server = await accepted;
      assert.equal(server.remoteAddr.port, conn.localAddr.port);
    } finally {
      conn.close();
    }
  });
});

Deno.test("messageWithCause(): a shortage of descriptors says it is ferry's, in the system's words or node:dgram's", () => {
  const withCode = (message: string, code: string) => Object.assign(new Error(message), { code });
  const mark = "(ferry is out of descriptors)";
  assert.equal(
    messageWithCause(withCode("Too many open files (os error 24)", "EMFILE")),
    `Too many open files (os error 24) ${mark}`,
  );
  assert.equal(
    messageWithCause(withCode("bind EMFILE 127.0.0.1", "EMFILE")),
    `bind EMFILE 127.0.0.1 ${mark}`,
  );
  const wrapped = new DialError("general-failure", "connect to 127.0.0.1 failed", {
    cause: withCode("Too many open files in system (os error 23)", "ENFILE"),
  });
  assert.equal(
    messageWithCause(wrapped),
    `connect to 127.0.0.1 failed: Too many open files in system (os error 23) ${mark}`,
  );
  // Marked once, and only a shortage is.
  assert.equal(
    messageWithCause(withCode(`Too many open files ${mark}`, "EMFILE")),
    `Too many open files ${mark}`,
  );
  assert.equal(
    messageWithCause(withCode("Connection refused (os error 111)", "ECONNREFUSED")),
    "Connection refused (os error 111)",
  );
});

Deno.test("resolverWith(): a lookup that fails soon after a descriptor shortage is tried once more, and only once", async () => {
  // The shortage may have made this lookup fail too (the resolver could not
  // open /etc/hosts), and freed up before anyone saw it: once more, and
  // failing again so soon after a shortage, it is ferry's failure.
  const notFound = (host: string) =>
    Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: "ENOTFOUND" });
  const flaky = (failures: number) => {
    const calls: string[] = [];
    const lookup: Lookup = (host) => {
      calls.push(host);
      return failures-- > 0
        ? Promise.reject(notFound(host))
        : Promise.resolve([{ address: "127.0.0.1", family: 4 }]);
    };
    return { calls, resolve: resolverWith(lookup) };
  };
  noteShortage(); // lately, but before the lookups start
  await new Promise((resolve) => setTimeout(resolve, 5));
  const signal = new AbortController().signal;
  const once = flaky(1);
  assert.deepEqual(await once.resolve("flaky.test", "127.0.0.1", signal), ["127.0.0.1"]);
  assert.deepEqual(once.calls, ["flaky.test", "flaky.test"]);
  const twice = flaky(2);
  const blamed = await twice.resolve("gone.test", "127.0.0.1", signal).then(
    () => null,
    (error: unknown) => error,
  );
  assert.ok(blamed instanceof DialError, String(blamed));
  assert.equal(blamed.failure, "general-failure");
  assert.equal(
    messageWithCause(blamed),
    'cannot resolve "gone.test": Too many open files (ferry is out of descriptors)',
  );
  assert.deepEqual(twice.calls, ["gone.test", "gone.test"], "one retry, not more");
});

Deno.test("resolverWith(): a signal aborted already looks nothing up", async () => {
  let calls = 0;
  const resolve = resolverWith(() => {
    calls++;
    return Promise.resolve([{ address: "127.0.0.1", family: 4 }]);
  });
  const controller = new AbortController();
  controller.abort({ failure: "connect-timeout" });
  await assert.rejects(resolve("example.test", "127.0.0.1", controller.signal), (error) => {
    assert.ok(error instanceof DialError, `expected DialError, got ${error}`);
    assert.equal(error.failure, "connect-timeout");
    assert.match(error.message, /resolving example\.test timed out/);
    return true;
  });
  assert.equal(calls, 0, "a lookup started for a dial given up already");
});

Deno.test("resolverWith(): a lookup that answers with no address is a name not resolved", async () => {
  const resolve = resolverWith(() => Promise.resolve([]));
  await assert.rejects(
    resolve("empty.test", "127.0.0.1", new AbortController().signal),
    (error) =>
      error instanceof DialError && error.failure === "name-not-resolved" &&
      error.message === 'no addresses for "empty.test"',
  );
});

Deno.test("resolverWith(): a lookup refused for want of a slot is lookups-busy (0x01), not a name that does not exist", async () => {
  // The client has too many lookups in progress (see src/upstream/lookups.ts):
  // that says nothing of the name, and 0x04 would tell the client it is not there.
  const resolve = resolverWith(() => Promise.reject(new LookupsBusy("2 for 127.0.0.1")));
  await assert.rejects(
    resolve("busy.test", "127.0.0.1", new AbortController().signal),
    (error) =>
      error instanceof DialError && error.failure === "lookups-busy" && error.reply === 0x01,
  );
});

Deno.test("dial(): a lookup that fails while ferry meets EMFILE is ferry's failure, and twice soon after too", async () => {
  // Out of descriptors the resolver says the name does not exist; a probe
  // after the lookup found a descriptor freed in between, and blamed the name
  // (0x04) under a sustained shortage.
  const name = { type: "domain", host: "no-such-host.invalid", port: 80 } as const;
  const during = dial(name, new AbortController().signal);
  noteShortage(); // an accept or a connect met EMFILE while the lookup ran
  const short = await during.then(() => null, (error: unknown) => error);
  assert.ok(short instanceof DialError, String(short));
  assert.equal(short.failure, "general-failure", short.message);
  assert.ok(outOfDescriptorsToDial(short), "a dial waits for a descriptor on it");
  assert.equal(
    messageWithCause(short),
    'cannot resolve "no-such-host.invalid": Too many open files (ferry is out of descriptors)',
  );
  // Shortly after a shortage the lookup is tried once more, and failing
  // again it is still taken for ferry's failure, not the name's.
  await assert.rejects(
    dial(name, new AbortController().signal),
    (error: unknown) => error instanceof DialError && error.failure === "general-failure",
  );
});

Deno.test("interleaveFamilies() alternates families, starting with the resolver's first choice", () => {
  assert.deepEqual(interleaveFamilies([]), []);
  assert.deepEqual(interleaveFamilies(["192.0.2.1"]), ["192.0.2.1"]);
  assert.deepEqual(
    interleaveFamilies(["2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2"]),
    ["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"],
  );
  assert.deepEqual(
    interleaveFamilies(["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1"]),
    ["192.0.2.1", "2001:db8::1", "192.0.2.2", "192.0.2.3"],
  );
  // One family only: the resolver's order stands.
  assert.deepEqual(interleaveFamilies(["::1", "::2"]), ["::1", "::2"]);
});

Deno.test("connectToFirstAnswer() moves on at once from a refused address to the next", async () => {
  // 127.0.0.1, .3, .4 and .5 refuse on the port 127.0.0.2 listens on.
  using listener = Deno.listen({ hostname: "127.0.0.2", port: 0, transport: "tcp" });
  const { port } = listener.addr;
  const accepted = listener.accept();
  const refusing = ["127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
  const started = performance.now();
  const conn = await connectToFirstAnswer(
    "five.test",
    [...refusing, "127.0.0.2"],
    port,
    new AbortController().signal,
  );
  const elapsed = performance.now() - started;
  try {
    assert.equal(conn.remoteAddr.hostname, "127.0.0.2");
    assert.equal((await accepted).remoteAddr.port, conn.localAddr.port);
    // Not by the attempt delay's timer: each refusal itself started the
    // next. Four timers would take a second at least; a loaded machine
    // still does four refused connects on loopback well inside that.
    assert.ok(
      elapsed < refusing.length * ATTEMPT_DELAY_MS,
      `connected after ${elapsed} ms`,
    );
  } finally {
    conn.close();
    await accepted.then((c) => c.close(), () => {});
  }
});

Deno.test("connectToFirstAnswer() waits for an attempt still running when the last address fails", async () => {
  // 127.0.0.1 connects, but its check passes only after the attempt delay;
  // 127.0.0.2, tried meanwhile, refuses at once. With the first still
  // running, the dial must wait for it, not answer with the refusal: a slow
  // first address is why the next one was started, not a failure.
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const { port } = listener.addr; // 127.0.0.2 refuses on it
  const accepted = listener.accept();
  const secondTried = Promise.withResolvers<void>();
  const answers = {
    skip: (ip: string) => {
      if (ip === "127.0.0.2") secondTried.resolve();
      return null;
    },
    check: async (conn: Deno.TcpConn) => {
      if (conn.remoteAddr.hostname === "127.0.0.1") {
        // Until the second address has been tried, and (refused on loopback
        // within a millisecond) has failed: however slow the machine, the
        // check is still running when the last address fails.
        await secondTried.promise;
        await new Promise((resolve) => setTimeout(resolve, 150));
      }
      return null;
    },
  };
  try {
    const conn = await connectToFirstAnswer(
      "slow.test",
      ["127.0.0.1", "127.0.0.2"],
      port,
      new AbortController().signal,
      answers,
    );
    try {
      assert.equal(conn.remoteAddr.hostname, "127.0.0.1");
      assert.equal((await accepted).remoteAddr.port, conn.localAddr.port);
    } finally {
      conn.close();
    }
  } finally {
    // Accepted whether the dial waited for it or not: closed either way.
    await accepted.then((c) => c.close(), () => {});
  }
});

/** An AnswerCheck that takes connections to `self` for loops, and remembers them. */
function loopsTo(self: string) {
  const remembered = new Set<string>();
  const checked: string[] = [];
  const loop = () => new DialError("forwarding-loop", "it leads back to this listener");
  return {
    checked,
    skip: (ip: string) => remembered.has(ip) ? loop() : null,
    check: (conn: Deno.TcpConn) => {
      const ip = conn.remoteAddr.hostname;
      checked.push(ip);
      if (ip !== self) return Promise.resolve(null);
      remembered.add(ip);
      return Promise.resolve(loop());
    },
  };
}

Deno.test("connectToFirstAnswer() takes a connection that fails the check for a failed attempt, closes it, and tries the next address", async () => {
  // A name for two addresses, on one port: 127.0.0.1 plays the forwarder's
  // own listener, 127.0.0.2 the real upstream.
  using self = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const { port } = self.addr;
  using upstream = Deno.listen({ hostname: "127.0.0.2", port, transport: "tcp" });
  const looped = self.accept();
  const served = upstream.accept();
  const answers = loopsTo("127.0.0.1");
  const conn = await connectToFirstAnswer(
    "dual.test",
    ["127.0.0.1", "127.0.0.2"],
    port,
    new AbortController().signal,
    answers,
  );
  try {
    assert.equal(conn.remoteAddr.hostname, "127.0.0.2");
    assert.deepEqual(answers.checked, ["127.0.0.1", "127.0.0.2"]);
    assert.equal((await served).remoteAddr.port, conn.localAddr.port);
    const loopedConn = await looped;
    assert.equal(await loopedConn.read(new Uint8Array(1)), null, "the looped connection closed");
    loopedConn.close();
  } finally {
    conn.close();
    await served.then((c) => c.close(), () => {});
  }
});

Deno.test("connectToFirstAnswer() closes a connection that answers after another has won", async () => {
  // 127.0.0.1 connects first but its check takes 400 ms, past the attempt
  // delay; 127.0.0.2, tried then, passes at once and wins. The first then
  // passes too, too late: it must be closed, not left open for nothing.
  using slow = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const { port } = slow.addr;
  using fast = Deno.listen({ hostname: "127.0.0.2", port, transport: "tcp" });
  const slowAccepted = slow.accept();
  const fastAccepted = fast.accept();
  const slowCheck = Promise.withResolvers<void>();
  const answers = {
    skip: () => null,
    check: async (conn: Deno.TcpConn) => {
      if (conn.remoteAddr.hostname === "127.0.0.1") {
        await new Promise((resolve) => setTimeout(resolve, ATTEMPT_DELAY_MS + 150));
        slowCheck.resolve();
      }
      return null;
    },
  };
  const conn = await connectToFirstAnswer(
    "two.test",
    ["127.0.0.1", "127.0.0.2"],
    port,
    new AbortController().signal,
    answers,
  );
  const [late, served] = await Promise.all([slowAccepted, fastAccepted]);
  try {
    assert.equal(conn.remoteAddr.hostname, "127.0.0.2");
    await slowCheck.promise;
    const ended = await deadline(late.read(new Uint8Array(1)), 2_000, "the late one's close");
    assert.equal(ended, null, "the late connection was closed");
  } finally {
    conn.close();
    late.close();
    served.close();
  }
});

Deno.test("dial() with an AnswerCheck: a looping address fails with the check's error, closed, and is not dialled again", async () => {
  using self = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const address = { type: "ipv4", host: "127.0.0.1", port: self.addr.port } as const;
  const answers = loopsTo("127.0.0.1");
  const looped = self.accept();
  const isLoop = (error: unknown) =>
    error instanceof DialError && error.failure === "forwarding-loop";
  await assert.rejects(dial(address, new AbortController().signal, "", answers), isLoop);
  const loopedConn = await looped;
  assert.equal(await loopedConn.read(new Uint8Array(1)), null, "closed by dial()");
  loopedConn.close();
  // Known now: refused without a connection.
  await assert.rejects(dial(address, new AbortController().signal, "", answers), isLoop);
  assert.deepEqual(answers.checked, ["127.0.0.1"], "dialled once");
});

Deno.test("connectToFirstAnswer() rejects with the first failure when every address refuses, and logs each", async () => {
  const port = closedPort();
  const error = await dialError(
    connectToFirstAnswer(
      "two.test",
      ["127.0.0.1", "127.0.0.2"],
      port,
      new AbortController().signal,
    ),
  );
  assert.equal(error.failure, "connection-refused");
  assert.equal(error.message, "connect to 127.0.0.1 failed");
  assert.match(
    messageWithCause(error),
    /^connect to 127\.0\.0\.1 failed: [^;]+; connect to 127\.0\.0\.2 failed: .+$/,
  );
});

Deno.test("mostTelling() answers with what the target's side said before what this host said of itself", () => {
  const failed = (failure: DialFailure, ip: string, cause?: unknown) =>
    new DialError(failure, `connect to ${ip} failed`, cause === undefined ? {} : { cause });
  const noRoute = failed("network-unreachable", "2001:db8::1");
  const refused = failed("connection-refused", "192.0.2.1");
  const unreachable = failed("host-unreachable", "192.0.2.2");
  const forbidden = failed("not-allowed", "192.0.2.3");
  const odd = failed("general-failure", "192.0.2.4", new Error("Invalid argument"));
  const silent = failed("connect-timeout", "192.0.2.6");
  const loop = failed("forwarding-loop", "127.0.0.1");
  const noZone = failed("name-not-resolved", "fe80::1%nosuchif0");
  const cases: [DialError[], DialError][] = [
    // A closed port on a dual-stack name, from a host with no IPv6 route: either order.
    [[refused, noRoute], refused],
    [[noRoute, refused], refused],
    [[noRoute, unreachable], unreachable],
    [[noRoute, forbidden], forbidden],
    [[odd, noRoute], noRoute],
    // The target's silence, or a router's word, before a rule of this host's.
    [[forbidden, unreachable], unreachable],
    [[forbidden, silent], silent],
    // A refusal is the upstream's answer; an address that leads back to the
    // forwarder itself is known for sure, and says more than a router does.
    [[loop, refused], refused],
    [[unreachable, loop], loop],
    // A zone the name's address names and no link has, before a fault of ferry's.
    [[odd, noZone], noZone],
  ];
  for (const [failures, expected] of cases) {
    const chosen = mostTelling(failures);
    assert.ok(chosen instanceof DialError);
    const names = failures.map((f) => f.failure).join(", ");
    assert.equal(chosen.failure, expected.failure, names);
    assert.equal(chosen.reply, expected.reply, names);
    assert.equal(chosen.message, expected.message, names);
    // The others follow it in the log, in the order they failed.
    assert.deepEqual(chosen.alsoFailed, failures.filter((f) => f !== expected), names);
  }
  // Ferry's own shortage first of all: the session waits for a descriptor and dials again.
  const emfile = Object.assign(new Error("Too many open files"), { code: "EMFILE" });
  const short = failed("general-failure", "192.0.2.5", emfile);
  const chosen = mostTelling([refused, short]);
  assert.ok(outOfDescriptorsToDial(chosen), messageWithCause(chosen));
  // And so of local ports (EADDRNOTAVAIL): the target said nothing.
  const noPort = failed("general-failure", "192.0.2.7", new Deno.errors.AddrNotAvailable("x"));
  const portless = mostTelling([refused, noPort]);
  assert.ok(outOfLocalPorts(portless), messageWithCause(portless));
  // One failure is answered as it is, and so is a fault of ferry's own.
  assert.equal(mostTelling([noRoute]), noRoute);
  const bug = new TypeError("a bug");
  assert.equal(mostTelling([refused, bug]), bug);
});

Deno.test("dial() with a signal aborted for connect timeout throws connect-timeout", async () => {
  await withListener(async (listener) => {
    const controller = new AbortController();
    controller.abort(new SessionAbort("connect-timeout"));
    const error = await dialError(
      dial({ type: "ipv4", host: "127.0.0.1", port: listener.addr.port }, controller.signal),
    );
    assert.equal(error.failure, "connect-timeout");
    assert.equal(error.reply, Reply.HostUnreachable);
    // Worded as a pool's own timed-out probe is, without the abort's reason tacked on.
    assert.equal(messageWithCause(error), "connect to 127.0.0.1 timed out");
  });
});

Deno.test("dial() with a signal aborted for another reason throws aborted", async () => {
  await withListener(async (listener) => {
    const controller = new AbortController();
    controller.abort(new SessionAbort("shutdown"));
    const error = await dialError(
      dial({ type: "ipv4", host: "127.0.0.1", port: listener.addr.port }, controller.signal),
    );
    assert.equal(error.failure, "aborted");
    assert.equal(error.reply, Reply.GeneralFailure);

    const plain = new AbortController();
    plain.abort();
    const plainError = await dialError(
      dial({ type: "ipv4", host: "127.0.0.1", port: listener.addr.port }, plain.signal),
    );
    assert.equal(plainError.failure, "aborted");
  });
});

Deno.test("dial() of a domain with an aborted signal fails before connecting", async () => {
  const controller = new AbortController();
  controller.abort({ failure: "connect-timeout" });
  const error = await dialError(
    dial({ type: "domain", host: "localhost", port: closedPort() }, controller.signal),
  );
  assert.equal(error.failure, "connect-timeout");
  assert.match(error.message, /resolving localhost timed out/);
});

Deno.test("connectToFirstAnswer() with a signal aborted already connects to none of the addresses", async () => {
  // Its abort event has fired before the race starts: without a look at the
  // signal first, nothing would stop the attempts, and the session that gave
  // up would be handed a connection.
  await withListener(async (listener) => {
    const controller = new AbortController();
    controller.abort(new SessionAbort("connect-timeout"));
    const { port } = listener.addr;
    const error = await dialError(
      connectToFirstAnswer("both.test", ["127.0.0.1", "127.0.0.1"], port, controller.signal),
    );
    assert.equal(error.failure, "connect-timeout");
    assert.equal(error.reply, Reply.HostUnreachable);
  });
});

Deno.test("resetAsAccepted: a connect reset before Deno asked for the peer's address (ENOTCONN) is a reset as accepted too", () => {
  const failure = (cause: Error) => new DialError("general-failure", "connect failed", { cause });
  assert.ok(resetAsAccepted(failure(new Deno.errors.NotConnected("os error 107"))));
  assert.ok(resetAsAccepted(failure(new Deno.errors.ConnectionReset("os error 104"))));
  assert.ok(!resetAsAccepted(failure(new Deno.errors.ConnectionRefused("os error 111"))));
});
