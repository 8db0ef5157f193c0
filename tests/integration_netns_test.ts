/**
 * SOCKS5 reply codes that need a network the test controls. Unreachable
 * networks and names are probed inside a fresh network namespace
 * (`unshare -n`), so no packet and no DNS query leaves the machine. The
 * connect timeout uses a loopback listener whose accept queue is full, so the
 * kernel drops further SYNs.
 */
import assert from "node:assert/strict";
import { wildcardIsIpv6Only } from "../src/config.ts";
import { startFerry } from "./_helpers/ferry.ts";
import { fullQueueListeners } from "./_helpers/full_queue.ts";
import { ForwardUpstream, taggedEcho, unusedPort } from "./_helpers/forward_support.ts";
import type { ProbeResult } from "./_helpers/netns_probe.ts";
import { openDescriptors } from "./_helpers/proc.ts";
import { sessionOf } from "./_helpers/session_log.ts";
import { stillKnocking } from "./_helpers/ss.ts";
import {
  BufferedConn,
  deadline,
  domain,
  ipv4,
  socks4,
  socks5,
  socks5Handshake,
  TcpTarget,
} from "./_helpers/socks_client.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const PROBE = new URL("./_helpers/netns_probe.ts", import.meta.url).pathname;
const MAIN = new URL("../src/main.ts", import.meta.url).pathname;

/**
 * Whether `unshare ARGS` runs here; if not, says which test is ignored and
 * why, so a skipped test is never silent.
 */
async function canUnshare(args: string[], ignored: string): Promise<boolean> {
  let ran = false;
  try {
    const out = await new Deno.Command("unshare", { args, stdout: "null", stderr: "null" })
      .output();
    ran = out.success;
  } catch {
    ran = false;
  }
  if (!ran) console.log(`integration_netns_test: ignoring ${ignored}`);
  return ran;
}

const netnsAvailable = await canUnshare(
  ["-n", "ip", "link", "set", "lo", "up"],
  "the network-namespace test: `unshare -n` is not permitted here (it needs root or " +
    "unprivileged user namespaces, and iproute2)",
);

/**
 * Runs a command to completion, killing it after `ms`. It runs in a process
 * group of its own, and the whole group is killed, then and when it ends: a
 * probe's own children (ferry, a silent DNS server) would otherwise outlive
 * a probe killed at the bound, and keep its network namespace alive.
 */
async function run(
  command: string,
  args: string[],
  ms: number,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(command, {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
    detached: true,
  }).spawn();
  const killGroup = () => {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // the group has exited
    }
  };
  const timer = setTimeout(killGroup, ms);
  try {
    const out = await child.output();
    const decoder = new TextDecoder();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } finally {
    clearTimeout(timer);
    killGroup();
  }
}

/**
 * Runs `probe` (a Deno script printing one JSON line last) in a new network
 * namespace with `lo` up, after the shell commands `setup`; returns that line.
 */
async function probeInNamespace(
  setup: string,
  probe: string,
  namespaces = ["-n"],
): Promise<unknown> {
  // The namespace has no network: fetch ferry's dependencies out here first.
  const cached = await run(Deno.execPath(), ["cache", MAIN, probe], 120_000);
  assert.equal(cached.code, 0, `deno cache failed:\n${cached.stderr}`);
  const result = await run("unshare", [
    ...namespaces,
    "bash",
    "-c",
    `set -e; ip link set lo up; ${setup}; exec "$0" run -A "$1"`,
    Deno.execPath(),
    probe,
  ], 60_000);
  assert.equal(result.code, 0, `probe failed:\n${result.stdout}\n${result.stderr}`);
  return JSON.parse(result.stdout.trim().split("\n").at(-1) ?? "");
}

Deno.test({
  name:
    "in a namespace with no route, an unreachable route and no resolver, CONNECT gets 0x03, 0x04 and 0x04",
  ignore: !netnsAvailable,
  async fn() {
    const { results } = await probeInNamespace(
      "ip route add unreachable 198.51.100.0/24",
      PROBE,
    ) as { results: ProbeResult[] };
    const byName = Object.fromEntries(results.map((r) => [r.name, r]));
    const show = JSON.stringify(results);

    assert.equal(byName["no-route"]?.reply, socks5.Reply.NetworkUnreachable, show);
    assert.equal(byName["no-route"]?.outcome, "network-unreachable", show);
    assert.equal(byName["unreachable-route"]?.reply, socks5.Reply.HostUnreachable, show);
    assert.equal(byName["unreachable-route"]?.outcome, "host-unreachable", show);
    assert.equal(byName["unresolvable-name"]?.reply, socks5.Reply.HostUnreachable, show);
    assert.equal(byName["unresolvable-name"]?.outcome, "name-not-resolved", show);
    // What the resolver said, so a missing name and a failing resolver can be told apart.
    assert.match(String(byName["unresolvable-name"]?.detail), /^cannot resolve ".+": ./, show);
    // A BIND's peer by name likewise.
    assert.equal(byName["bind-unresolvable-name"]?.reply, socks5.Reply.HostUnreachable, show);
    assert.equal(byName["bind-unresolvable-name"]?.outcome, "name-not-resolved", show);
    assert.match(
      String(byName["bind-unresolvable-name"]?.detail),
      /^cannot resolve "no-such-host.invalid": ./,
      show,
    );
  },
});

const NARROW_READ_PROBE = new URL("./_helpers/narrow_read_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "--allow-read without /dev/null: a name that does not exist still gets 0x04, not ferry's 0x01",
  ignore: !netnsAvailable,
  async fn() {
    // After a failed lookup ferry opens /dev/null to tell a shortage of its
    // own descriptors (0x01) from a missing name (0x04). Where it may not
    // read it, the README says that check is skipped: no shortage is assumed.
    const { results } = await probeInNamespace("true", NARROW_READ_PROBE) as {
      results: ProbeResult[];
    };
    const show = JSON.stringify(results);
    assert.equal(results[0]?.reply, socks5.Reply.HostUnreachable, show);
    assert.equal(results[0]?.outcome, "name-not-resolved", show);
    assert.match(String(results[0]?.detail), /^cannot resolve "no-such-host\.invalid": ./, show);
  },
});

const LINK_LOCAL_PROBE = new URL("./_helpers/linklocal_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "a client that came in over a link-local IPv6 address gets working BIND and UDP ASSOCIATE; an IPv4 client of [::] is logged as IPv4",
  ignore: !netnsAvailable,
  async fn() {
    // Deno reports fe80::1 without its zone (%ll0), and that cannot be bound:
    // both used to fail with 0x01 while CONNECT worked.
    const probed = await probeInNamespace(
      "ip link add ll0 type veth peer name ll1; ip link set ll1 up; ip link set ll0 up; " +
        "ip addr add fe80::1/64 dev ll0 nodad",
      LINK_LOCAL_PROBE,
    );
    assert.deepEqual(probed, {
      bind: { first: 0, firstHost: "fe80::1", second: 0, carried: "from the peer" },
      udp: { reply: 0, host: "fe80::1", echoed: "ping" },
      // Logged as 127.0.0.1:PORT, as on a 0.0.0.0 listener, not [::ffff:127.0.0.1]:PORT.
      ipv4Client: { client: true },
    });
  },
});

const ZONE_PROBE = new URL("./_helpers/zone_probe.ts", import.meta.url).pathname;

Deno.test({
  name: "a link-local address set on two links has no one zone: ferry says so rather than pick one",
  ignore: !netnsAvailable,
  async fn() {
    // A client's BIND or UDP socket bound to the wrong link would serve
    // another host; with one address on two links, which is the client's
    // cannot be told from the address.
    const probed = await probeInNamespace(
      // veth pairs: this kernel has no dummy links.
      "ip link add d0 type veth peer name p0; ip link add d1 type veth peer name p1; " +
        "for l in d0 p0 d1 p1; do ip link set $l up; done; " +
        "ip addr add fe80::1/64 dev d0 nodad; ip addr add fe80::1/64 dev d1 nodad; " +
        "ip addr add fe80::2/64 dev d1 nodad",
      ZONE_PROBE,
    ) as { twice: unknown; once: unknown; d1: number | null };
    assert.notEqual(probed.d1, null, JSON.stringify(probed));
    assert.deepEqual(probed, {
      twice: {
        problem:
          "the link-local address fe80::1 is on 2 interfaces; which one the client is on cannot be told",
      },
      once: { zone: String(probed.d1) },
      d1: probed.d1,
    });
  },
});

const BIND_ROUTE_PROBE = new URL("./_helpers/bind_route_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "a BIND listens where ferry reaches the peer from (the control connection's address), not where the client came in",
  ignore: !netnsAvailable,
  async fn() {
    // ferry on 127.0.0.1 (an ssh -L tunnel's end) between a client and an
    // FTP server at 10.77.0.2: a BIND listening on 127.0.0.1 could never be
    // reached by the server, and a PORT naming it would be refused anyway.
    const probed = await probeInNamespace("true", BIND_ROUTE_PROBE);
    assert.deepEqual(probed, { firstHost: "10.77.0.1", second: 0, carried: "from the peer" });
  },
});

Deno.test("CONNECT to a listener that never answers the SYN gets 0x04 after --connect-timeout", async () => {
  await using blackHole = await fullQueueListeners(["127.0.0.1"]);
  const { port } = blackHole;

  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--connect-timeout",
    "500ms",
  ]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks5Handshake(client, ipv4("127.0.0.1", port)).catch((error) => {
    const log = ferry.lines.map((line) => JSON.stringify(line)).join("\n");
    throw new Error(`${error}; ferry's log:\n${log}`);
  });
  assert.equal(reply.reply, socks5.Reply.HostUnreachable);
  client.close();
  const session = await sessionOf(ferry, client.localAddr);
  assert.equal(session.outcome, "connect-timeout");
  assert.equal(session.target, `127.0.0.1:${port}`);
});

Deno.test("SIGTERM while a CONNECT is still connecting: after the grace the client gets 0x01, not a bare close", async () => {
  await using blackHole = await fullQueueListeners(["127.0.0.1"]);
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--connect-timeout",
    "60s",
    "--shutdown-grace",
    "300ms",
  ]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  const replying = socks5Handshake(client, ipv4("127.0.0.1", blackHole.port));
  await new Promise((resolve) => setTimeout(resolve, 300)); // the CONNECT is in, the dial hangs
  const started = performance.now();
  ferry.kill("SIGTERM");
  const reply = await replying;
  assert.equal(reply.reply, socks5.Reply.GeneralFailure);
  const status = await deadline(ferry.status, 10_000, "ferry to exit", () => ferry.kill("SIGKILL"));
  assert.equal(status.code, 0);
  // No lingering for the client to close first: shutdown does not wait 2 s more.
  assert.ok(performance.now() - started < 2_000, "ferry lingered after its shutdown reply");
  const session = await sessionOf(ferry, client.localAddr, 1_000);
  assert.equal(session.outcome, "shutdown");
});

Deno.test("SIGTERM while a forwarder still dials its upstream: the session ends as cut by the shutdown", async () => {
  // The dial's abort was taken for the upstream's failure: the session was
  // logged "aborted", as if the upstream had done something.
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
    "--shutdown-grace",
    "300ms",
  ]);
  using client = await BufferedConn.connect(ferry.hostname, ferry.port);
  await new Promise((resolve) => setTimeout(resolve, 300)); // the dial hangs
  ferry.kill("SIGTERM");
  await client.waitForEnd(5_000);
  const status = await deadline(ferry.status, 10_000, "ferry to exit", () => ferry.kill("SIGKILL"));
  assert.equal(status.code, 0);
  const session = await sessionOf(ferry, client.localAddr, 1_000);
  assert.equal(session.outcome, "shutdown");
});

const mountNsAvailable = await canUnshare(
  ["-m", "true"],
  "the Happy Eyeballs test: `unshare -m` is not permitted here (it needs root), and the " +
    "test gives ferry its own /etc/hosts that way",
);

/** Runs a command in a mount namespace whose /etc/hosts is `hostsFile`. */
function withHostsFile(hostsFile: string): string[] {
  return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', hostsFile];
}

Deno.test({
  name:
    "a name whose first address drops SYNs is reached at its next one (Happy Eyeballs); when all do, 0x04 after --connect-timeout",
  ignore: !mountNsAvailable,
  async fn() {
    const hostsFile = await Deno.makeTempFile({ suffix: ".hosts" });
    try {
      await Deno.writeTextFile(
        hostsFile,
        "127.0.0.1 two.test\n127.0.0.2 two.test\n127.0.0.1 dark.test\n127.0.0.2 dark.test\n",
      );
      // The order getaddrinfo gives them (it sorts, RFC 6724), as ferry will see it.
      const [unshare, ...unshareArgs] = withHostsFile(hostsFile);
      const lookup = await run(unshare!, [
        ...unshareArgs,
        Deno.execPath(),
        "eval",
        'const { lookup } = await import("node:dns/promises");' +
        'const found = await lookup("two.test", { all: true, verbatim: true });' +
        "console.log(JSON.stringify(found.map((a) => a.address)));",
      ], 30_000);
      assert.equal(lookup.code, 0, `lookup failed:\n${lookup.stderr}`);
      const [first, second] = JSON.parse(lookup.stdout) as string[];
      assert.ok(first && second, `two.test resolved to ${lookup.stdout}`);

      // The first address drops SYNs; the second listens on the same port.
      await using blackHole = await fullQueueListeners([first]);
      using target = new TcpTarget(
        Deno.listen({ hostname: second, port: blackHole.port, transport: "tcp" }),
      );
      await using darkness = await fullQueueListeners([first, second]);
      await using ferry = await startFerry(
        ["socks", "--listen", "127.0.0.1:0", "--connect-timeout", "3s"],
        { wrapper: withHostsFile(hostsFile) },
      );

      const upstream = target.accept();
      {
        using client = await BufferedConn.connect(ferry.hostname, ferry.port);
        const reply = await socks5Handshake(client, domain("two.test", target.port));
        assert.equal(reply.reply, socks5.Reply.Succeeded, "connected through the second address");
        const server = await upstream;
        await client.write(new TextEncoder().encode("ping"));
        assert.equal(new TextDecoder().decode(await server.readExactly(4)), "ping");
        server.close();
        client.close();
        const session = await sessionOf(ferry, client.localAddr);
        assert.equal(session.outcome, "ok");
        assert.equal(session.target, `two.test:${target.port}`);
        // The losing attempt was aborted, not left knocking (SYN-SENT) at
        // the first address until the kernel gives up, minutes later.
        assert.deepEqual(
          await stillKnocking(first, blackHole.port),
          [],
          "a connect still running to the first address",
        );
      }
      {
        using client = await BufferedConn.connect(ferry.hostname, ferry.port);
        const reply = await socks5Handshake(client, domain("dark.test", darkness.port));
        assert.equal(reply.reply, socks5.Reply.HostUnreachable);
        client.close();
        const session = await sessionOf(ferry, client.localAddr);
        assert.equal(session.outcome, "connect-timeout");
      }
    } finally {
      await Deno.remove(hostsFile);
    }
  },
});

Deno.test({
  name:
    "a forwarder whose upstream name resolves to its own listener marks it down as a loop, not a descriptor storm",
  ignore: !mountNsAvailable,
  async fn() {
    const hostsFile = await Deno.makeTempFile({ suffix: ".hosts" });
    try {
      // A name the start-up check cannot look up, for this very listener.
      await Deno.writeTextFile(hostsFile, "127.0.0.1 self.test\n");
      const port = unusedPort();
      await using ferry = await startFerry(
        ["forward", "--listen", `127.0.0.1:${port}`, "--to", `self.test:${port}`, "--pool", "4"],
        { wrapper: withHostsFile(hostsFile) },
      );
      const down = await ferry.waitFor((line) => line.event === "upstream-down", 5_000);
      assert.match(String(down.error), /leads back to this forwarder's own listener .*loop/);

      // A client is closed at once, and the pool's probes stay few.
      using client = await BufferedConn.connect(ferry.hostname, ferry.port);
      assert.equal((await client.readToEnd()).length, 0, "closed, not forwarded");
      const session = await sessionOf(ferry, client.localAddr);
      assert.ok(
        ["no-upstream-up", "forwarding-loop"].includes(String(session.outcome)),
        `outcome ${session.outcome}`,
      );
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      const descriptors = await openDescriptors(ferry.pid);
      assert.ok(descriptors < 40, `${descriptors} descriptors open after 1.5 s`);
      // It stays down: the pool's retries are loops too (a retry whose looped
      // session had already ended was once taken for a working upstream).
      await new Promise((resolve) => setTimeout(resolve, 2_500));
      const lines = ferry.lines.filter((l) =>
        l.event === "upstream-up" || l.event === "upstream-down"
      );
      assert.deepEqual(lines.map((l) => l.event), ["upstream-down"]);
      assert.ok(!ferry.lines.some((l) => l.outcome === "ok"), "a looped session logged ok");

      // With its per-IP limit full, the looped connection is refused at accept: still a loop.
      const fullPort = unusedPort();
      await using full = await startFerry(
        [
          "forward",
          "--listen",
          `127.0.0.1:${fullPort}`,
          "--to",
          `self.test:${fullPort}`,
          "--pool",
          "0",
          "--max-conns-per-ip",
          "1",
        ],
        { wrapper: withHostsFile(hostsFile) },
      );
      using second = await BufferedConn.connect(full.hostname, full.port);
      assert.equal((await second.readToEnd()).length, 0);
      const loop = await full.waitFor((line) => line.event === "upstream-down", 5_000);
      assert.match(String(loop.error), /forwarding loop/);
    } finally {
      await Deno.remove(hostsFile);
    }
  },
});

Deno.test({
  name:
    "a forwarder on [::] whose upstream name resolves to 127.0.0.1 on its own port marks it down as a loop",
  // Where [::] takes IPv6 only, 127.0.0.1 on its port is another listener.
  ignore: !mountNsAvailable || wildcardIsIpv6Only(),
  async fn() {
    // The looped connection arrives at [::] from ::ffff:127.0.0.1, and the
    // check asks for 127.0.0.1: accepts must be remembered unmapped.
    const hostsFile = await Deno.makeTempFile({ suffix: ".hosts" });
    try {
      await Deno.writeTextFile(hostsFile, "127.0.0.1 self.test\n");
      const port = unusedPort();
      await using ferry = await startFerry(
        ["forward", "--listen", `[::]:${port}`, "--to", `self.test:${port}`, "--pool", "1"],
        { wrapper: withHostsFile(hostsFile) },
      );
      const down = await ferry.waitFor((line) => line.event === "upstream-down", 5_000);
      assert.match(String(down.error), /leads back to this forwarder's own listener .*loop/);
      assert.ok(
        !ferry.lines.some((l) => l.event === "upstream-up"),
        "a loop taken for an upstream",
      );
    } finally {
      await Deno.remove(hostsFile);
    }
  },
});

Deno.test({
  name:
    "a forwarder on [::1] whose upstream name is both ::1 (itself) and 127.0.0.1 (the upstream) forwards there, pooled or not",
  ignore: !mountNsAvailable,
  async fn() {
    const hostsFile = await Deno.makeTempFile({ suffix: ".hosts" });
    await using upstream = new ForwardUpstream(taggedEcho("upstream"));
    try {
      // ::1 first: the forwarder's own address is the one Happy Eyeballs tries first.
      await Deno.writeTextFile(hostsFile, "::1 dual.test\n127.0.0.1 dual.test\n");
      for (const pool of ["0", "2"]) {
        await using ferry = await startFerry(
          ["forward", "--listen", `[::1]:${upstream.port}`, "--to", `dual.test:${upstream.port}`]
            .concat(["--pool", pool]),
          { wrapper: withHostsFile(hostsFile) },
        );
        for (let i = 0; i < 3; i++) {
          using client = await BufferedConn.connect(ferry.hostname, ferry.port);
          await client.write(new TextEncoder().encode("ping"));
          const answer = new TextDecoder().decode(await client.readExactly(13));
          assert.equal(answer, "upstream\nping", `--pool ${pool}, client ${i}`);
          client.close();
          const session = await sessionOf(ferry, client.localAddr);
          assert.equal(session.outcome, "ok", `--pool ${pool}, client ${i}`);
        }
        assert.ok(
          !ferry.lines.some((line) => line.event === "upstream-down"),
          `--pool ${pool}: marked down though 127.0.0.1 serves`,
        );
      }
      assert.deepEqual(upstream.errors, []);
    } finally {
      await Deno.remove(hostsFile);
    }
  },
});

/**
 * Runs `probe` in a new network and mount namespace whose `/etc/FILE` holds
 * `contents`.
 */
async function probeWithEtc(
  file: "resolv.conf" | "hosts",
  contents: string,
  probe: string,
): Promise<unknown> {
  const path = await Deno.makeTempFile({ suffix: `.${file}` });
  try {
    await Deno.writeTextFile(path, contents);
    return await probeInNamespace(`mount --bind ${path} /etc/${file}`, probe, ["-n", "-m"]);
  } finally {
    await Deno.remove(path);
  }
}

/**
 * Runs `probe` in a new network and mount namespace whose /etc/resolv.conf
 * says `resolvConf` (a name server on 127.0.0.1 that the probe runs).
 */
function probeWithResolver(resolvConf: string, probe: string): Promise<unknown> {
  return probeWithEtc("resolv.conf", resolvConf, probe);
}

const UDP_FAILED_NAME_PROBE = new URL("./_helpers/udp_failed_name_probe.ts", import.meta.url)
  .pathname;

Deno.test({
  name:
    "a UDP datagram to a name that failed to resolve is dropped and counted, without a lookup for 5 s, then looked up again",
  ignore: !mountNsAvailable || !netnsAvailable,
  async fn() {
    // A client sending on to a dead name does not have each datagram looked
    // up (and its lookup slots taken), but a name that comes to exist is
    // found again within seconds; every datagram lost is counted.
    const probed = await probeWithResolver(
      "nameserver 127.0.0.1\n",
      UDP_FAILED_NAME_PROBE,
    ) as {
      queries?: number[];
      echoed?: string;
      udpIn?: number;
      dropped?: number;
      firstDrop?: string;
    };
    const show = JSON.stringify(probed);
    const [first, second, third] = probed.queries ?? [];
    assert.ok(first! > 0, show);
    assert.equal(second, first, `the second datagram was looked up: ${show}`);
    assert.ok(third! > second!, `the third, past 5 s, was not: ${show}`);
    assert.equal(probed.echoed, "echo", show);
    assert.deepEqual([probed.udpIn, probed.dropped], [1, 3], show);
    assert.match(String(probed.firstDrop), /gone\.test/, show);
  },
});

const BIND_MAPPED_PROBE = new URL("./_helpers/bind_mapped_probe.ts", import.meta.url).pathname;

Deno.test({
  name: "a BIND whose peer is a name for an IPv4-mapped address lets that IPv4 peer in",
  ignore: !mountNsAvailable || !netnsAvailable,
  async fn() {
    // The peer connects from 127.0.0.1; its name resolves to
    // ::ffff:127.0.0.1. Taken as spelled, an IPv6 peer, it could never reach
    // the IPv4 listener, and the BIND was refused at once with 0x04.
    const probed = await probeWithEtc(
      "hosts",
      "::ffff:127.0.0.1 mapped.test\n",
      BIND_MAPPED_PROBE,
    );
    assert.deepEqual(probed, {
      first: socks5.Reply.Succeeded,
      second: socks5.Reply.Succeeded,
      peer: "127.0.0.1",
      carried: "from the peer",
    });
  },
});

const BIND_DUAL_PROBE = new URL("./_helpers/bind_dual_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "a BIND whose peer is a name of both families listens where its IPv4 address reaches, and SOCKS4a never on IPv6",
  ignore: !mountNsAvailable || !netnsAvailable,
  async fn() {
    // One IPv4 address of the peer's is enough for an IPv4 listener: the
    // SOCKS5 BIND is granted. A SOCKS4a BIND is not put on the ::1 source
    // of another session's connection to the peer: its reply could only
    // name 0.0.0.0 there.
    const probed = await probeWithEtc(
      "hosts",
      "127.0.0.1 dual.test\n::1 dual.test\n",
      BIND_DUAL_PROBE,
    );
    assert.deepEqual(probed, {
      socks5: {
        first: socks5.Reply.Succeeded,
        host: "127.0.0.1",
        second: socks5.Reply.Succeeded,
      },
      socks4a: { reply: socks4.Reply.Granted, ip: "127.0.0.1" },
    });
  },
});

const DUAL_STACK_PROBE = new URL("./_helpers/dual_stack_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "a closed port on a name with an IPv4 and an IPv6 address gets 0x05 on a host without IPv6 routes, not the IPv6 attempt's 0x03, and the line says how each failed",
  ignore: !mountNsAvailable || !netnsAvailable,
  async fn() {
    // The IPv4 attempt is refused, the IPv6 one finds no route; the client
    // got the last to fail, "network unreachable", for a host that answered.
    const { results } = await probeWithEtc(
      "hosts",
      "127.0.0.1 dual.test\n2001:db8:9::1 dual.test\n2001:db8:9::1 v6only.test\n",
      DUAL_STACK_PROBE,
    ) as { results: ProbeResult[] };
    const byName = Object.fromEntries(results.map((r) => [r.name, r]));
    const show = JSON.stringify(results);
    assert.equal(byName["dual.test"]?.reply, socks5.Reply.ConnectionRefused, show);
    assert.equal(byName["dual.test"]?.outcome, "connection-refused", show);
    const detail = String(byName["dual.test"]?.detail);
    assert.match(detail, /^connect to 127\.0\.0\.1 failed: [^;]+; /, show);
    assert.match(detail, /; connect to 2001:db8:9::1 failed: /, show);
    // With no other address, the IPv6 one's own failure is the answer.
    assert.equal(byName["v6only.test"]?.reply, socks5.Reply.NetworkUnreachable, show);
    assert.equal(byName["v6only.test"]?.detail, undefined, show);
  },
});

const DARK_DNS_PROBE = new URL("./_helpers/dark_dns_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "lookups hanging on a silent name server (a client's or a pool's) leave ferry's log writing, a name that spells an IP address needs no lookup, and a client's reset ends its wait",
  ignore: !mountNsAvailable || !netnsAvailable,
  async fn() {
    // Deno has 32 threads for blocking work, and a lookup holds one until the
    // resolver gives up; so does every write to stderr. With 32 lookups
    // allowed, four clients' names froze the log (and lost it at SIGTERM).
    const probed = await probeWithResolver(
      "nameserver 127.0.0.1\noptions timeout:20 attempts:1\n",
      DARK_DNS_PROBE,
    ) as {
      literal?: { reply: number; ms: number };
      bind?: { reply: number; ms: number };
      lineMs?: number;
      poolListeningMs?: number;
      bindLookupTimeout?: { reply: number; ms: number; outcome: string };
      bindLookupShutdown?: { reply: number | string; outcome: string | null; exit: number };
      lookupReset?: Record<"connect" | "bind", { outcome: string; command: string; ms: number }>;
    };
    const show = JSON.stringify(probed);
    assert.equal(probed.literal?.reply, socks5.Reply.Succeeded, show);
    assert.ok(probed.literal!.ms < 2_000, `"127.0.0.1" by name waited for a lookup: ${show}`);
    assert.equal(probed.bind?.reply, socks5.Reply.Succeeded, show);
    assert.ok(probed.bind!.ms < 2_000, `a BIND's peer "127.0.0.1" waited: ${show}`);
    assert.ok(probed.lineMs! < 2_000, `the session line was held up: ${show}`);
    // Its process starts in about a second; a pool taking every thread held it for 20 s.
    assert.ok(probed.poolListeningMs! < 8_000, `the pool's lookups held up the log: ${show}`);
    // A BIND's peer by a name whose lookup outlasts the connect timeout (1 s).
    assert.equal(probed.bindLookupTimeout?.reply, socks5.Reply.HostUnreachable, show);
    assert.equal(probed.bindLookupTimeout?.outcome, "connect-timeout", show);
    assert.ok(probed.bindLookupTimeout!.ms >= 900 && probed.bindLookupTimeout!.ms < 5_000, show);
    // And one cut by shutdown while its lookup waits: 0x01, as a CONNECT mid-dial.
    assert.deepEqual(
      probed.bindLookupShutdown,
      { reply: socks5.Reply.GeneralFailure, outcome: "shutdown", exit: 0 },
      show,
    );
    // A client that resets while its name is looked up ends the session then,
    // not when the lookup or the 30 s connect timeout does.
    for (const command of ["connect", "bind"] as const) {
      const ended = probed.lookupReset?.[command];
      assert.equal(ended?.outcome, "reset", show);
      assert.equal(ended?.command, command, show);
      assert.ok(ended!.ms < 5_000, `the ${command}'s reset was noticed late: ${show}`);
    }
  },
});

const UDP_NAME_PROBE = new URL("./_helpers/udp_name_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "a UDP association looks a name up once for its datagrams, not once each (a failed name too), sends to other hosts meanwhile, takes its IPv4 address, holds at most 256 or 256 KiB behind lookups, and counts those still waiting at its end as dropped",
  ignore: !mountNsAvailable || !netnsAvailable,
  async fn() {
    // One lookup per datagram held each behind the one before's: to a name
    // answered in 50 ms, 100 datagrams a second came back 5 s late.
    // A lookup of a name the server never answers takes the resolver's 5 s.
    const probed = await probeWithResolver(
      "nameserver 127.0.0.1\noptions timeout:5 attempts:1\n",
      UDP_NAME_PROBE,
    ) as {
      echoed?: number;
      queries?: number;
      deadQueries?: number;
      slowEchoed?: string[];
      sentMs?: number;
      kernelDrops?: number;
      udpIn?: number;
      dropped?: number;
      late?: { udpIn: number; dropped: number };
      moreMs?: number;
      big?: {
        udpIn: number;
        dropped: number;
        firstDrop: string;
        kernelDrops: number;
      };
      dualVia?: string;
      orderEchoed?: string[];
      orderQueries?: number;
    };
    const show = JSON.stringify(probed);
    assert.equal(probed.echoed, 23, show);
    // 300 sent while a lookup ran, and the 3 to dead.test still waiting for
    // theirs (5 s): the first 253 waited for it and went out in order, the
    // rest were dropped rather than held without bound. (What the echo
    // server got may lack some: its socket buffer holds about 256 small
    // datagrams; ferry's counters are exact.)
    assert.equal(probed.udpIn, 23 + 253, show);
    // Of the 47 past the 253, ferry dropped those it read (the 3 to
    // dead.test are dropped too); any more the kernel dropped, its buffer
    // full while ferry was busy, never reached ferry's counters.
    const droppedPast253 = probed.dropped! - 3;
    assert.ok(droppedPast253 > 0, `none of the 47 past the 253 dropped: ${show}`);
    assert.equal(droppedPast253 + probed.kernelDrops!, 47, show);
    const order = probed.slowEchoed!.map((text) => Number(text.slice(1)));
    assert.ok(order.every((n, i) => n < 253 && (i === 0 || n > order[i - 1]!)), show);
    // An association that ends while datagrams wait counts them as dropped.
    assert.deepEqual(probed.late, { udpIn: 0, dropped: 10 }, show);
    // Datagrams to echo.test went on while dead.test's lookup hung (sent
    // over 300 ms): one queue for all held them for its 5 s.
    assert.ok(probed.moreMs! < 2_000, `echo.test waited for dead.test: ${show}`);
    // 40 of 8 KiB behind a lookup: 32 fill 256 KiB, the rest are dropped
    // (of those ferry read: the kernel may have dropped some first).
    const big = probed.big!;
    const bigRead = 40 - big.kernelDrops;
    assert.equal(big.udpIn, Math.min(32, bigRead), show);
    assert.equal(big.dropped, bigRead - big.udpIn, show);
    if (big.dropped > 0) assert.match(big.firstDrop, /256 KiB already waiting/, show);
    // A datagram cannot try the next address: a name's IPv4 address goes first.
    assert.equal(probed.dualVia, "ipv4", show);
    // A name is one name in any case: its datagrams wait in one queue, in
    // order, behind one lookup (two queries). Queued by spelling, the two
    // answered sooner overtook the first.
    assert.deepEqual(probed.orderEchoed, ["o0", "o1", "o2"], show);
    assert.equal(probed.orderQueries, 2, show);
    // A failed lookup is kept a while too: each of a dead name's datagrams
    // held every later one for the resolver's whole timeout.
    assert.ok(probed.deadQueries! <= 2, `a lookup per datagram to a dead name: ${show}`);
    // getaddrinfo asks for A and AAAA: one lookup is two queries.
    assert.ok(probed.queries! <= 4, `a lookup per datagram: ${show}`);
  },
});

const UDP_ALIAS_PROBE = new URL("./_helpers/udp_alias_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "a client that reaches ferry at a loopback alias keeps its UDP association: another's datagram into it is dropped",
  ignore: !netnsAvailable,
  async fn() {
    // The guard against ferry relaying into itself knew only datagrams from
    // the relay socket's own address; to 127.0.0.2 they come from 127.0.0.1,
    // so the other client's datagram was relayed, and its port taken for the
    // victim's: the victim's answers went to the other client.
    const probed = await probeInNamespace("true", UDP_ALIAS_PROBE) as {
      echoed?: string[];
      victimGot?: string;
      victimDropped?: number;
    };
    const show = JSON.stringify(probed);
    assert.deepEqual(probed.echoed, ["marker", "mine"], show);
    assert.equal(probed.victimGot, "mine", show);
    assert.equal(probed.victimDropped, 1, show);
  },
});

const UDP_LOOKUPS_PROBE = new URL("./_helpers/udp_lookups_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "a UDP association's lookups still waiting for a slot when it ends leave the queue: the client's next CONNECT gets its lookup",
  ignore: !mountNsAvailable || !netnsAvailable,
  async fn() {
    // They waited on and ran for associations long gone, 8 at a time, each
    // for the resolver's whole timeout: the CONNECT behind them timed out.
    const probed = await probeWithResolver(
      "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
      UDP_LOOKUPS_PROBE,
    ) as { reply?: number; ms?: number };
    assert.equal(probed.reply, socks5.Reply.Succeeded, JSON.stringify(probed));
  },
});

const UDP_LOOKUP_SHARE_PROBE = new URL("./_helpers/udp_lookup_share_probe.ts", import.meta.url)
  .pathname;

Deno.test({
  name:
    "one UDP association sending to many names whose server never answers leaves its client lookup slots for a CONNECT",
  ignore: !mountNsAvailable || !netnsAvailable,
  async fn() {
    // With a lookup per name at once, 16 names took all 8 of the client's
    // slots and queued 8 more ahead of the CONNECT, which timed out (3 s).
    const probed = await probeWithResolver(
      "nameserver 127.0.0.1\noptions timeout:5 attempts:1\n",
      UDP_LOOKUP_SHARE_PROBE,
    ) as { reply?: number; ms?: number };
    assert.equal(probed.reply, socks5.Reply.Succeeded, JSON.stringify(probed));
  },
});

const PORT_SHORTAGE_PROBE = new URL("./_helpers/port_shortage_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "out of local ports to a target (EADDRNOTAVAIL), a forwarder fails that client and does not mark its upstream down, a CONNECT gets 0x01, and the log says why",
  ignore: !netnsAvailable,
  async fn() {
    // Ferry's own shortage was taken for the upstream's failure: marked
    // down, so the next clients were refused though a port had come free.
    const probed = await probeInNamespace(
      "sysctl -qw net.ipv4.ip_local_port_range='40000 40003'",
      PORT_SHORTAGE_PROBE,
    ) as
      & Record<"pool0" | "pool2", {
        refused: { outcome: string; error: string };
        next: string;
        lines: string[];
      }>
      & { socks: { reply: number; outcome: string; error: string } };
    const show = JSON.stringify(probed);
    for (const pool of ["pool0", "pool2"] as const) {
      const { refused, next, lines } = probed[pool] ?? {};
      assert.equal(refused?.outcome, "general-failure", show);
      assert.match(refused.error, /found no local port free/, show);
      assert.equal(next, "upstream\nping", show);
      assert.ok(!lines!.includes("upstream-down"), `${pool}: marked down: ${show}`);
    }
    // The pool's refill met the shortage too, and said so once.
    assert.deepEqual(probed.pool2.lines, ["pool-no-local-ports"], show);
    // A SOCKS CONNECT gets 0x01, and its line says why.
    assert.equal(probed.socks?.reply, socks5.Reply.GeneralFailure, show);
    assert.equal(probed.socks.outcome, "general-failure", show);
    assert.match(probed.socks.error, /found no local port free/, show);
  },
});

const SELF_CONNECT_PROBE = new URL("./_helpers/self_connect_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "a CONNECT to a closed port that the kernel gives that port as its source (connected to itself) gets 0x05",
  ignore: !netnsAvailable,
  async fn() {
    // It got 0x00, and the client's own first bytes came back as the answer.
    const probed = await probeInNamespace(
      "sysctl -qw net.ipv4.ip_local_port_range='40000 40000'",
      SELF_CONNECT_PROBE,
    ) as { reply?: number; after?: string; outcome?: string; error?: string; leftOpen?: number };
    const show = JSON.stringify(probed);
    assert.equal(probed.reply, socks5.Reply.ConnectionRefused, show);
    assert.equal(probed.after, "", show);
    assert.equal(probed.outcome, "connection-refused", show);
    // Refused, the connection to itself is closed, not left holding the port.
    assert.equal(probed.leftOpen, 0, show);
  },
});

const V6ONLY_PROBE = new URL("./_helpers/v6only_probe.ts", import.meta.url).pathname;

Deno.test({
  name:
    "where [::] takes IPv6 only, a forwarder on it forwards to an IPv4 server on its port (no false loop), 0.0.0.0 may listen beside it, a shortage does not hide it, and IPv4-mapped targets are reached over IPv4",
  ignore: !mountNsAvailable || !netnsAvailable,
  async fn() {
    // The loop check took [::] for dual-stack and refused this working upstream.
    const hostsFile = await Deno.makeTempFile({ suffix: ".hosts" });
    const serverFile = await Deno.makeTempFile({ suffix: ".py" });
    try {
      await Deno.writeTextFile(hostsFile, "127.0.0.1 v4.test\n::ffff:127.0.0.1 mapped.test\n");
      await Deno.writeTextFile(
        serverFile,
        "import socket\ns = socket.create_server(('127.0.0.1', 9000))\n" +
          "while True:\n    c, _ = s.accept()\n    c.sendall(b'V4')\n    c.close()\n",
      );
      const probed = await probeInNamespace(
        `sysctl -qw net.ipv6.bindv6only=1; mount --bind ${hostsFile} /etc/hosts; ` +
          `(timeout 30 python3 ${serverFile} >/dev/null 2>&1 &); sleep 0.3`,
        V6ONLY_PROBE,
        ["-n", "-m"],
      );
      // The start-up checks took [::] for dual-stack: a forwarder to
      // 127.0.0.1 on its port was refused as a loop, and 0.0.0.0 beside it
      // as a collision, so IPv4 clients could not be served on that port.
      // And a process that first asked while out of descriptors kept the
      // dual-stack answer it fell back to, for good.
      assert.deepEqual(probed, {
        shortage: { during: false, after: true },
        got: "V4",
        loopLines: 0,
        literal: "V4",
        families: { v6: true, v4: true },
        // An IPv4-mapped target is the IPv4 address, dialled over IPv4; a
        // datagram's answer still comes from the address the client named.
        mapped: {
          forwarded: "V4",
          connected: "V4",
          datagram: "m from ipv6 ::ffff:127.0.0.1",
          byName: "n from ipv4 127.0.0.1",
        },
      });
    } finally {
      await Deno.remove(hostsFile);
      await Deno.remove(serverFile);
    }
  },
});
