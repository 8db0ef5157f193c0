/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates, whose /etc/resolv.conf names a
 * server on 127.0.0.1 that never answers. Clients on four addresses ask
 * ferry for 32 names at once, the most its caps let run; each lookup then
 * holds a thread of Deno's blocking pool until the resolver gives up. Then:
 * a name that spells an IP address, and whether ferry's log still gets
 * its lines (stderr writes take a thread of that pool too). Last, how soon
 * a forwarder whose pool of 40 dials such a name logs `listening`; and what
 * a BIND whose peer is such a name gets at a 1 s connect timeout, and when
 * SIGTERM's grace runs out while it waits. Then a client that resets while
 * its CONNECT's name, or its BIND peer's, is being looked up.
 *
 * Prints one JSON object: `{ literal: { reply, ms }, bind, lineMs,
 * poolListeningMs, bindLookupTimeout: { reply, ms, outcome },
 * bindLookupShutdown: { reply, outcome, exit }, lookupReset: { connect:
 * { outcome, command, ms }, bind } }`, or what failed.
 *
 * Run: deno run -A tests/_helpers/dark_dns_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { python, SILENT_DNS } from "./python.ts";
import { clientThatResets, exchange } from "./reset.ts";
import { sessionOf } from "./session_log.ts";
import { BufferedConn, domain, ipv4, socks5, socks5Handshake, TcpTarget } from "./socks_client.ts";

/** Python: 8 CONNECTs by name from each of 127.0.0.2–5, held until stdin closes. */
const ASKERS = `
import socket, sys
port, held = int(sys.argv[1]), []
for client in range(2, 6):
    for i in range(8):
        s = socket.socket()
        s.bind((f"127.0.0.{client}", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"\\x05\\x01\\x00")
        assert s.recv(2) == b"\\x05\\x00"
        name = f"n{client}-{i}.dark.test".encode()
        s.sendall(b"\\x05\\x01\\x00\\x03" + bytes([len(name)]) + name + b"\\x00\\x50")
        held.append(s)
print("asked", flush=True)
sys.stdin.read()
`;

let result: unknown;
try {
  await using _dns = await python(SILENT_DNS);
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--connect-timeout",
    "30s",
  ]);
  using target = new TcpTarget(Deno.listen({ hostname: "127.0.0.1", port: 0 }));
  await using _askers = await python(ASKERS, String(ferry.port));
  await new Promise((resolve) => setTimeout(resolve, 500)); // the lookups are under way

  const started = performance.now();
  using byName = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks5Handshake(byName, domain("127.0.0.1", target.port));
  const literal = { reply: reply.reply, ms: Math.round(performance.now() - started) };
  // A BIND's peer spelled that way too.
  const bindStarted = performance.now();
  using binder = await BufferedConn.connect(ferry.hostname, ferry.port);
  const bound = await socks5Handshake(binder, domain("127.0.0.1", 0), {
    command: socks5.Command.Bind,
  });
  const bind = { reply: bound.reply, ms: Math.round(performance.now() - bindStarted) };

  // A session that ends at once (its target refuses), so that its line is due now.
  const refusing = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  refusing.close();
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await socks5Handshake(client, ipv4("127.0.0.1", refusing.addr.port));
  client.close();
  const closed = performance.now();
  await sessionOf(ferry, client.localAddr, 5_000);
  const lineMs = Math.round(performance.now() - closed);

  // A forwarder whose pool dials a name: its dials share one lookup.
  const starting = performance.now();
  await using _forwarder = await startFerry(
    ["forward", "--listen", "127.0.0.1:0", "--to", "pool.dark.test:80", "--pool", "40"],
    { startTimeoutMs: 15_000 },
  );
  const poolListeningMs = Math.round(performance.now() - starting);

  // A BIND's peer by a name that never resolves: 0x04 at the connect timeout.
  await using quick = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--connect-timeout",
    "1s",
  ]);
  const lateStarted = performance.now();
  using late = await BufferedConn.connect(quick.hostname, quick.port);
  const lateReply = await socks5Handshake(late, domain("late.dark.test", 0), {
    command: socks5.Command.Bind,
  });
  const lateMs = Math.round(performance.now() - lateStarted);
  late.close();
  const lateLine = await sessionOf(quick, late.localAddr, 5_000);
  const bindLookupTimeout = { reply: lateReply.reply, ms: lateMs, outcome: lateLine.outcome };

  // Such a BIND cut by shutdown: 0x01, as a CONNECT mid-dial gets.
  const stopping = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--connect-timeout",
    "30s",
    "--shutdown-grace",
    "200ms",
  ]);
  using cut = await BufferedConn.connect(stopping.hostname, stopping.port);
  const cutReply = (async () => {
    try {
      return (await socks5Handshake(cut, domain("cut.dark.test", 0), {
        command: socks5.Command.Bind,
      })).reply;
    } catch (error) {
      return String(error);
    }
  })();
  await new Promise((resolve) => setTimeout(resolve, 300)); // the lookup is under way
  const stopped = await stopping.stop();
  const cutLine = await sessionOf(stopping, cut.localAddr, 1_000).catch(() => null);
  const bindLookupShutdown = {
    reply: await cutReply,
    outcome: cutLine?.outcome ?? null,
    exit: stopped.code,
  };

  // Clients that reset while their names are looked up: ferry reads a
  // client whose wait lasts, so the line comes soon, not at the 30 s timeout.
  await using watching = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--connect-timeout",
    "30s",
    "--handshake-timeout",
    "1s", // the deadline sweep then runs every 100 ms
  ]);
  const resetMidLookup = async (command: number, name: string) => {
    const started = performance.now();
    const clientAddr = await clientThatResets(watching.port, async (socket) => {
      await exchange(socket, socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }), 2);
      socket.write(socks5.encodeRequest({ command, address: domain(name, 80) }));
      await new Promise((resolve) => setTimeout(resolve, 700)); // the lookup is under way
    });
    const line = await sessionOf(
      watching,
      clientAddr,
      10_000,
    );
    return {
      outcome: line.outcome,
      command: line.command,
      ms: Math.round(performance.now() - started),
    };
  };
  const lookupReset = {
    connect: await resetMidLookup(socks5.Command.Connect, "gone.dark.test"),
    bind: await resetMidLookup(socks5.Command.Bind, "gone-peer.dark.test"),
  };
  result = {
    literal,
    bind,
    lineMs,
    poolListeningMs,
    bindLookupTimeout,
    bindLookupShutdown,
    lookupReset,
  };
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
