/**
 * ferry under a crowd of clients that misbehave at once (see
 * tests/_helpers/crowd.ts): every protocol it speaks, handshakes split
 * anywhere, a byte flipped, handshakes cut short, data pipelined behind the
 * handshake, then a half-close, idling, an abrupt close or a reset, to a
 * target that echoes and to one that refuses. Whatever they do, ferry must
 * stay up, answer every well-formed client exactly as the protocol says,
 * carry a bystander's upload and download intact, log every connection
 * exactly once, and, once the crowd is gone, hold no socket and no
 * descriptor more than before; short of descriptors and through SIGTERM too.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  bystander,
  checkClient,
  checkClientShortOfDescriptors,
  checkForwardClient,
  crowdWorld,
  forwardClient,
  holdsOnlyItsPool,
  linesByClient,
  linesOf,
  runClient,
  runCrowdClient,
  scenario,
  sleep,
  udpClient,
  USER,
  type World,
} from "./_helpers/crowd.ts";
import { type LogLine, startFerry } from "./_helpers/ferry.ts";
import { startEchoServer } from "./_helpers/echo_server.ts";
import { waitUntil } from "./_helpers/forward_support.ts";
import { openDescriptors } from "./_helpers/proc.ts";
import { closedPort, deadline, pseudoRandomBytes, socks5Connect } from "./_helpers/socks_client.ts";

/** Crowds per test; more to hunt for bugs (`CHAOS_RUNS=200`), a few for every test run. */
const RUNS = Number(Deno.env.get("CHAOS_RUNS") ?? 6);

/**
 * Runs crowds against `world` as a property (and, where it has a forward
 * listener, a crowd of that listener's clients at the same time): every
 * client has one line and passes `check`, the bystander's 1 MiB comes back
 * whole (during the crowd, or after it when the crowd may starve it), and
 * once a crowd has gone ferry holds no more descriptors than at the start
 * and no socket but its listeners and its pool. Every crowd has a UDP
 * client among them. Where the world has a `--max-conns`, a client refused
 * there gets nothing and has no session line, only its count on a
 * `rejected` line, and the session lines must never show more open at once.
 * Resolves with the number of clients refused and of datagrams that came
 * back.
 */
async function crowds(
  world: World,
  options: {
    minClients: number;
    check: typeof checkClient;
    bystander: "during" | "after";
    /** Clients arrive over up to this many milliseconds; all at once without it. */
    arrivalsOverMs?: number;
  },
): Promise<{ refused: number; datagramsBack: number }> {
  const { ferry, forward } = world;
  const shortOfDescriptors = options.check === checkClientShortOfDescriptors;
  const { maxConns } = world;
  const refusals = maxConns !== null;
  // A bystander in the crowd could be refused too.
  assert.ok(!refusals || options.bystander === "after");
  const upstream = `127.0.0.1:${world.echoPort.ipv4}`;
  const settled = () => holdsOnlyItsPool(ferry.pid, forward?.pool ?? 0, upstream);
  await waitUntil(settled, "ferry to hold its listeners and pool, no more");
  const baselineDescriptors = await openDescriptors(ferry.pid);
  let refusedInAll = 0;
  let datagramsBack = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(scenario, fc.integer({ min: 0, max: options.arrivalsOverMs ?? 0 })), {
        minLength: options.minClients,
        maxLength: 24,
      }),
      udpClient,
      // With a forward listener, its own crowd at the same time.
      forward ? fc.array(forwardClient, { maxLength: 12 }) : fc.constant([]),
      async (arrivals, udp, forwarded) => {
        arrivals = [...arrivals, [udp, 0]];
        const crowd = arrivals.map(([s]) => s);
        const from = ferry.lines.length;
        const payloads = crowd.map((s, i) => pseudoRandomBytes(s.payload, i + 1));
        const forwardPayloads = forwarded.map((c, i) => pseudoRandomBytes(c.payload, i + 7));
        const [seen, seenForwarded, during] = await Promise.all([
          Promise.all(crowd.map(async (s, i) => {
            const arrivalMs = arrivals[i]![1];
            if (arrivalMs > 0) await sleep(arrivalMs);
            return runCrowdClient(world, s, payloads[i]!);
          })),
          Promise.all(
            forwarded.map((c, i) => runClient(forward!, c, new Uint8Array(0), forwardPayloads[i]!)),
          ),
          options.bystander === "during" ? bystander(world) : null,
        ]);
        // Refusals are counted on rate-limited `rejected` lines, which name
        // only the first of each second's refused clients.
        const refused = () =>
          ferry.lines.slice(from).filter((line) => line.event === "rejected")
            .reduce((n, line) => n + 1 + Number(line.suppressed), 0);
        // Each client's connection: its address, and the listener it came to.
        type Connection = { local: Deno.NetAddr; listener: typeof world.socks };
        const unlogged = (connections: Connection[]) => {
          const byClient = linesByClient(ferry, from);
          return connections.filter(({ local, listener }) =>
            linesOf(byClient, local, listener).length === 0
          ).length;
        };
        const accountedFor = (connections: Connection[]) =>
          waitUntil(
            () => unlogged(connections) === (refusals ? refused() : 0),
            "a session line for every client, or a count of its refusal",
          );
        const backToBaseline = () =>
          waitUntil(
            async () => (await openDescriptors(ferry.pid)) <= baselineDescriptors,
            `ferry back to its ${baselineDescriptors} descriptors`,
            5_000,
          );
        const clients: Connection[] = [
          ...seen.map(({ local }) => ({ local, listener: world.socks })),
          ...seenForwarded.map(({ local }) => ({ local, listener: forward! })),
        ];
        let bystanderAddr = during;
        // Where the crowd's lines end when the bystander comes after it: it
        // may come from the port of a crowd client whose connection has
        // spent a second in TIME_WAIT, and its line would pass for a second
        // line of that client's.
        let crowdLinesEnd: number | undefined;
        if (bystanderAddr === null) {
          // Once the crowd's sessions have ended and given their descriptors back.
          await accountedFor(clients);
          await backToBaseline();
          crowdLinesEnd = ferry.lines.length;
          bystanderAddr = await bystander(world);
        }
        const everyone = [...clients, { local: bystanderAddr, listener: world.socks }];
        await accountedFor(everyone);
        // Late duplicates would come within a few milliseconds.
        await sleep(100);
        const byClient = linesByClient(ferry, from, crowdLinesEnd);
        // After the crowd's: the bystander's line alone (a late duplicate of
        // a crowd client's would show here).
        const afterCrowd = crowdLinesEnd === undefined
          ? new Map<string, LogLine[]>()
          : linesByClient(ferry, crowdLinesEnd);
        const bystanderLines = crowdLinesEnd === undefined
          ? linesOf(byClient, bystanderAddr, world.socks)
          : [...afterCrowd.values()].flat();
        assert.equal(bystanderLines.length, 1, `one line for ${JSON.stringify(bystanderLines)}`);
        if (crowdLinesEnd !== undefined) {
          assert.deepEqual(
            linesOf(afterCrowd, bystanderAddr, world.socks),
            bystanderLines,
            "the line after the crowd's is the bystander's",
          );
        }
        const lineOf = (local: Deno.NetAddr, listener = world.socks) => {
          const lines = linesOf(byClient, local, listener);
          assert.equal(lines.length, 1, `one line for ${JSON.stringify(lines)}`);
          return lines[0]!;
        };
        for (const [i, s] of crowd.entries()) {
          if (refusals && linesOf(byClient, seen[i]!.local, world.socks).length === 0) {
            // Refused at the limit: closed at once, before a byte of answer.
            assert.equal(
              seen[i]!.response.length,
              0,
              `refused, yet answered: ${JSON.stringify(s)}`,
            );
            continue;
          }
          options.check(s, world, seen[i]!, lineOf(seen[i]!.local), payloads[i]!);
        }
        for (const [i, c] of forwarded.entries()) {
          const line = lineOf(seenForwarded[i]!.local, forward!);
          checkForwardClient(
            c,
            seenForwarded[i]!,
            line,
            forwardPayloads[i]!,
            upstream,
            shortOfDescriptors,
          );
        }
        assert.equal(bystanderLines[0]!.outcome, "ok");
        for (const { datagrams } of seen) datagramsBack += datagrams?.received.length ?? 0;
        const refusedHere = refusals ? refused() : 0;
        refusedInAll += refusedHere;
        if (maxConns !== null) {
          const most = mostSurelyOpenAtOnce([...byClient.values(), ...afterCrowd.values()].flat());
          assert.ok(most <= maxConns, "no more than --max-conns at once");
        }
        assert.equal(
          [...byClient.values(), ...afterCrowd.values()].reduce((n, lines) => n + lines.length, 0),
          everyone.length - refusedHere,
          "no line for a connection nobody made",
        );
        const faults = ferry.lines.slice(from).filter((line) => line.event === "internal-error");
        assert.deepEqual(faults, [], "no fault inside ferry");
        // The crowd has gone: nothing of it may stay open in ferry.
        await backToBaseline();
        await waitUntil(settled, "ferry to hold its listeners and pool again, no more");
      },
    ),
    { numRuns: RUNS, endOnFailure: true },
  );
  const exited = await Promise.race([ferry.status.then(() => true), sleep(0).then(() => false)]);
  assert.equal(exited, false, "ferry is still running");
  return { refused: refusedInAll, datagramsBack };
}

/**
 * The most sessions that `lines` show open at one moment, counting only
 * those surely open then: 5 ms from either end of a line's span (its
 * timestamp less its `ms`) are left out for the rounding. A session's span
 * lies within the time ferry counts it against its limits.
 */
function mostSurelyOpenAtOnce(lines: LogLine[]): number {
  const spans = lines.map((line) => {
    const end = Date.parse(String(line["@timestamp"]));
    assert.ok(Number.isFinite(end) && Number.isFinite(line.ms), JSON.stringify(line));
    return { start: end - Number(line.ms) + 5, end: end - 5 };
  });
  return Math.max(
    0,
    ...spans.map(({ start: t }) => spans.filter((s) => s.start <= t && t <= s.end).length),
  );
}

/** Crowds against a `ferry socks` with nothing short; their datagrams must have come back. */
async function plainCrowds(usersRequired: boolean): Promise<void> {
  await using world = await crowdWorld({ usersRequired, idleTimeout: "3s" });
  const { datagramsBack } = await crowds(world, {
    minClients: 1,
    check: checkClient,
    bystander: "during",
  });
  assert.ok(datagramsBack > 0, "datagrams came back through the crowds' associations");
}

Deno.test("a crowd of misbehaving clients: ferry answers each as it should and leaks nothing", async () => {
  await plainCrowds(false);
});

Deno.test("a crowd of misbehaving clients against a ferry that requires a user", async () => {
  await plainCrowds(true);
});

Deno.test("a crowd over --max-conns: a client over the limit is closed unanswered, the others answered in full", async () => {
  // Four sessions at a time, for up to 24 clients arriving over 300 ms: some
  // are refused, others take the places of sessions that ended.
  await using world = await crowdWorld({ usersRequired: false, idleTimeout: "3s", maxConns: 4 });
  const { refused } = await crowds(world, {
    minClients: 8,
    check: checkClient,
    bystander: "after",
    arrivalsOverMs: 300,
  });
  assert.ok(refused > 0, "the crowds went over the limit");
  const { ferry } = world;
  assert.equal((await ferry.stop()).code, 0);
  const stopped = ferry.lines.find((line) => line.event === "stopped");
  const sessions = ferry.lines.filter((line) => line.event === "session").length;
  assert.equal(stopped?.rejectedMaxConns, refused);
  // The per-IP limit, --max-conns too by default, is checked second: never hit.
  assert.equal(stopped?.rejectedPerIp, 0);
  assert.equal(stopped?.accepted, sessions + refused);
});

/**
 * Crowds against a ferry under `prlimit --nofile=<limit>`: each client gets
 * its answer or, where its request needed a descriptor, ferry's own failure;
 * the crowds must have run ferry out of descriptors (an EMFILE accept error).
 */
async function crowdsShortOfDescriptors(limit: number, forwardPool?: number): Promise<void> {
  await using world = await crowdWorld({
    usersRequired: false,
    idleTimeout: "3s",
    wrapper: ["prlimit", `--nofile=${limit}`],
    ...(forwardPool === undefined ? {} : { forwardPool }),
  });
  await world.ferry.waitFor((line) => line.event === "nofile-low"); // the prlimit child is done
  await crowds(world, {
    minClients: 12,
    check: checkClientShortOfDescriptors,
    bystander: "after",
  });
  assert.ok(
    world.ferry.lines.some((line) => line.event === "accept-error" && line.code === "EMFILE"),
    "the crowds ran ferry out of descriptors",
  );
}

Deno.test("a crowd against a ferry short of descriptors: each client gets its answer or 0x01, and ferry recovers", async () => {
  // About 25 descriptors are ferry's own: room for a few sessions at a time.
  await crowdsShortOfDescriptors(32);
});

Deno.test("one ferry run with a SOCKS and a forward listener, short of descriptors: both crowds answered, the pool refilled", async () => {
  // The listeners share the process's descriptors: at EMFILE the pool gives
  // one up for a SOCKS client's dial, and refills once the crowd has gone.
  await crowdsShortOfDescriptors(40, 4);
});

Deno.test("a crowd through the forwarder: every echo whole, one line each, the pool refilled, nothing leaked", async () => {
  const echo = startEchoServer();
  const refusedPort = closedPort(); // an upstream that is down: skipped, never a client's failure
  const listenPort = closedPort(); // free, for ferry to listen on
  const ports = [listenPort, echo.addr.port, refusedPort];
  const ferry = await startFerry([
    "forward",
    "--listen",
    `127.0.0.1:${listenPort}`,
    "--to",
    `127.0.0.1:${echo.addr.port}`,
    "--to",
    `127.0.0.1:${refusedPort}`,
    "--pool",
    "4",
    "--idle-timeout",
    "3s",
    "--log-level",
    "info",
  ], { allowNet: ports.map((port) => `127.0.0.1:${port}`).join(",") });
  try {
    const upstream = `127.0.0.1:${echo.addr.port}`;
    const poolFull = () => holdsOnlyItsPool(ferry.pid, 4, upstream);
    await waitUntil(poolFull, "a full pool of 4 to the echo upstream");
    const baselineDescriptors = await openDescriptors(ferry.pid);
    await fc.assert(
      fc.asyncProperty(fc.array(forwardClient, { minLength: 1, maxLength: 24 }), async (crowd) => {
        const from = ferry.lines.length;
        const payloads = crowd.map((c, i) => pseudoRandomBytes(c.payload, i + 7));
        const seen = await Promise.all(
          crowd.map((c, i) => runClient(ferry, c, new Uint8Array(0), payloads[i]!)),
        );
        await waitUntil(
          () =>
            seen.every(({ local }) => linesOf(linesByClient(ferry, from), local, ferry).length > 0),
          "a session line for every client",
        );
        await sleep(100); // late duplicates would come within a few milliseconds
        const byClient = linesByClient(ferry, from);
        for (const [i, c] of crowd.entries()) {
          const lines = linesOf(byClient, seen[i]!.local, ferry);
          assert.equal(lines.length, 1, `one line for ${JSON.stringify(lines)}`);
          checkForwardClient(c, seen[i]!, lines[0]!, payloads[i]!, upstream);
        }
        assert.equal(
          [...byClient.values()].reduce((n, lines) => n + lines.length, 0),
          crowd.length,
          "no line for a connection nobody made",
        );
        // The crowd has gone: ferry holds its pool again, and nothing else.
        await waitUntil(poolFull, "the pool refilled to 4, and no other socket");
        await waitUntil(
          async () => (await openDescriptors(ferry.pid)) === baselineDescriptors,
          `ferry back to its ${baselineDescriptors} descriptors`,
          5_000,
        );
      }),
      { numRuns: RUNS, endOnFailure: true },
    );
  } finally {
    await ferry.stop();
    await echo.close();
  }
});

Deno.test("SIGTERM in the middle of a crowd: every session ends on its own terms or at the grace's end, ferry exits 0", async () => {
  const graceMs = 3000;
  await fc.assert(
    fc.asyncProperty(
      // Each client arrives at its own time, some after ferry has stopped listening.
      fc.array(fc.tuple(scenario, fc.integer({ min: 0, max: 400 })), {
        minLength: 1,
        maxLength: 24,
      }),
      fc.integer({ min: 0, max: 300 }),
      fc.boolean(),
      async (arrivals, signalAfterMs, usersRequired) => {
        const crowd = arrivals.map(([s]) => s);
        // Idle clients outlast the grace: shutdown, not the idle timeout, ends them.
        await using world = await crowdWorld({
          usersRequired,
          idleTimeout: "10s",
          shutdownGrace: `${graceMs}ms`,
        });
        const { ferry } = world;
        // One relay sure to be going at the signal, and idle until the grace ends.
        const { client: lingerer } = await socks5Connect(
          world.socks,
          { type: "ipv4", host: "127.0.0.1", port: world.echoPort.ipv4 },
          usersRequired ? { username: USER.name, password: USER.password } : {},
        );
        using _lingerer = lingerer;
        const lingered = pseudoRandomBytes(5000, 0x11);
        await lingerer.write(lingered);
        assert.deepEqual(await lingerer.readExactly(lingered.length), lingered);
        const payloads = crowd.map((s, i) => pseudoRandomBytes(s.payload, i + 1));
        const clients = Promise.all(crowd.map(async (s, i) => {
          await sleep(arrivals[i]![1]);
          try {
            return await runCrowdClient(world, s, payloads[i]!);
          } catch (error) {
            // Too late: ferry no longer listens.
            if (error instanceof Deno.errors.ConnectionRefused) return null;
            throw error;
          }
        }));
        await sleep(signalAfterMs);
        ferry.kill("SIGTERM");
        const signalled = performance.now();
        const status = await deadline(ferry.status, graceMs + 5000, "ferry to exit");
        assert.equal(status.code, 0);
        // The grace was given in full, and no longer: the lingerer ended at its end.
        const stoppedMs = performance.now() - signalled;
        assert.ok(stoppedMs >= graceMs - 100, `exited ${stoppedMs} ms after the signal`);
        assert.deepEqual(await lingerer.waitForEnd(), { ending: "eof", discarded: 0 });
        const lingererLine = linesOf(linesByClient(ferry, 0), lingerer.localAddr, world.socks);
        assert.equal(lingererLine.length, 1);
        assert.equal(lingererLine[0]!.outcome, "shutdown");
        assert.equal(lingererLine[0]!.up, lingered.length);
        assert.equal(lingererLine[0]!.down, lingered.length);
        const seen = await clients;
        const sessions = ferry.lines.filter((line) => line.event === "session");
        const stopped = ferry.lines.findIndex((line) => line.event === "stopped");
        assert.ok(stopped >= 0, "the stopped line");
        assert.ok(ferry.lines.lastIndexOf(sessions.at(-1)!) < stopped, "every session ended first");
        const byClient = linesByClient(ferry, 0);
        let mine = 0;
        for (const [i, s] of crowd.entries()) {
          if (seen[i] === null) continue;
          const lines = linesOf(byClient, seen[i]!.local, world.socks);
          // No line: a connection still in the listen queue when ferry stopped listening.
          assert.ok(lines.length <= 1, `at most one line for ${JSON.stringify(lines)}`);
          if (lines.length === 0) continue;
          mine++;
          checkClient(s, world, seen[i]!, lines[0]!, payloads[i]!, "shutdown");
        }
        assert.equal(sessions.length, mine + 1, "no line for a connection nobody made");
        // The totals at exit are those of the lines.
        const totals = ferry.lines[stopped]!;
        assert.equal(totals.accepted, sessions.length);
        assert.equal(Number(totals.sessionsOk) + Number(totals.sessionsFailed), sessions.length);
        const sum = (field: string) => sessions.reduce((n, line) => n + Number(line[field]), 0);
        assert.equal(totals.bytesUp, sum("up"));
        assert.equal(totals.bytesDown, sum("down"));
      },
    ),
    { numRuns: RUNS, endOnFailure: true },
  );
});
