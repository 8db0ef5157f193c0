/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates with net.ipv6.bindv6only=1, where
 * `[::]:9000` takes IPv6 only and another server (an IPv4 one, "V4") has
 * 127.0.0.1:9000; /etc/hosts names it v4.test. A forwarder on `[::]:9000`
 * to v4.test:9000 forwards to that server, not to itself; so does one to
 * 127.0.0.1:9000, which the start-up check must not refuse as a loop. And a
 * configuration file may put `[::]:9100` and `0.0.0.0:9100` side by side.
 * And `wildcardIsIpv6Only()`, asked first while out of descriptors, still
 * learns the truth once they are free. And the IPv4 server is reached by
 * its IPv4-mapped address (see `mappedTargets`).
 *
 * Prints one JSON object: `{ shortage, got, loopLines, literal, families,
 * mapped }`, or what failed.
 *
 * Run: deno run -A tests/_helpers/v6only_probe.ts
 */
import { wildcardIsIpv6Only } from "../../src/config.ts";
import { startFerry } from "./ferry.ts";
import { BufferedConn, domain, ipv6, socks5, socks5Handshake } from "./socks_client.ts";
import { closeUdp, frame, nextDatagram, udpEcho, udpSocket } from "./udp_support.ts";

/**
 * What `wildcardIsIpv6Only()` answers in this process with every descriptor
 * taken, then once they are free again. It kept its first answer, `false`,
 * for good: an answer taken in a shortage.
 */
async function askedInAShortage(): Promise<{ during: boolean; after: boolean }> {
  const setSoftLimit = (limit: string) =>
    new Deno.Command("prlimit", { args: ["--pid", String(Deno.pid), `--nofile=${limit}:`] })
      .output();
  const soft = new TextDecoder().decode(
    (await new Deno.Command("prlimit", {
      args: ["--pid", String(Deno.pid), "--nofile", "--output", "SOFT", "--noheadings"],
    }).output()).stdout,
  ).trim();
  await setSoftLimit("256");
  const held: Deno.FsFile[] = [];
  try {
    for (let i = 0; i < 256; i++) held.push(Deno.openSync("/dev/null"));
    throw new Error("256 files opened under a limit of 256");
  } catch (error) {
    if ((error as { code?: string }).code !== "EMFILE") throw error;
  }
  const during = wildcardIsIpv6Only();
  for (const file of held) file.close();
  await setSoftLimit(soft);
  return { during, after: wildcardIsIpv6Only() };
}

/** What a forwarder on [::]:9000 to `to` relays from the IPv4 server, or why it did not start. */
async function forwardedBy(to: string): Promise<string> {
  try {
    await using _ferry = await startFerry(["forward", "--listen", "[::]:9000", "--to", to]);
    using client = await BufferedConn.connect("::1", 9000);
    return new TextDecoder().decode(await client.readToEnd());
  } catch (error) {
    return String(error);
  }
}

/** Whether a SOCKS5 greeting to `host`:9100 is answered. */
async function answers(host: string): Promise<boolean> {
  using client = await BufferedConn.connect(host, 9100);
  await client.write(socks5.encodeGreeting({ methods: [socks5.Method.NoAuth] }));
  return (await client.readMessage(socks5.decodeMethodSelection, "method")) === 0x00;
}

/**
 * The IPv4 server by its IPv4-mapped address, ::ffff:127.0.0.1: through a
 * forwarder on [::]:9300, a SOCKS5 CONNECT from a client on ::1, and a UDP
 * datagram (to an echo server on 127.0.0.1) with the answer's source as
 * its header names it. They went out on IPv6 sockets, which here take
 * IPv6 only: network-unreachable, and the datagram dropped. And a datagram
 * to a name whose address is IPv4-mapped.
 */
async function mappedTargets() {
  const mappedName = "[::ffff:127.0.0.1]:9000";
  let forwarded: string;
  {
    await using _ferry = await startFerry(["forward", "--listen", "[::]:9300", "--to", mappedName]);
    using client = await BufferedConn.connect("::1", 9300);
    forwarded = new TextDecoder().decode(await client.readToEnd());
  }
  await using _ferry = await startFerry(["socks", "--listen", "[::1]:9200"]);
  using client = await BufferedConn.connect("::1", 9200);
  const connect = await socks5Handshake(client, ipv6("::ffff:127.0.0.1", 9000));
  const connected = connect.reply === socks5.Reply.Succeeded
    ? new TextDecoder().decode(await client.readToEnd())
    : `reply ${connect.reply}`;

  await using echo = await udpEcho("127.0.0.1");
  const local = await udpSocket("::1");
  try {
    using control = await BufferedConn.connect("::1", 9200);
    const relay = await socks5Handshake(control, ipv6("::", local.address().port), {
      command: socks5.Command.UdpAssociate,
    });
    const echoed = async (to: socks5.ReplyMessage["address"], text: string) => {
      const answer = nextDatagram(local, 3_000);
      local.send(frame(to, text), relay.address.port, "::1");
      const { address, data } = socks5.decodeUdpDatagram(await answer);
      return `${new TextDecoder().decode(data)} from ${address.type} ${address.host}`;
    };
    return {
      forwarded,
      connected,
      datagram: await echoed(ipv6("::ffff:127.0.0.1", echo.port), "m").catch(String),
      // A name whose only address is IPv4-mapped (mapped.test, in /etc/hosts).
      byName: await echoed(domain("mapped.test", echo.port), "n").catch(String),
    };
  } catch (error) {
    return { forwarded, connected, datagram: String(error) };
  } finally {
    await closeUdp(local);
  }
}

let result: unknown;
try {
  const shortage = await askedInAShortage(); // first: nothing else here has asked yet
  let got: string, loopLines: number;
  {
    await using ferry = await startFerry(
      ["forward", "--listen", "[::]:9000", "--to", "v4.test:9000", "--pool", "2"],
    );
    await new Promise((resolve) => setTimeout(resolve, 500)); // the pool has dialled
    using client = await BufferedConn.connect("::1", 9000);
    got = new TextDecoder().decode(await client.readToEnd());
    loopLines = ferry.lines.filter((l) => String(l.error ?? "").includes("loop")).length;
  }
  const literal = await forwardedBy("127.0.0.1:9000");
  const config = await Deno.makeTempFile({ suffix: ".jsonc" });
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      listeners: [
        { kind: "socks", listen: "[::]:9100" },
        { kind: "socks", listen: "0.0.0.0:9100" },
      ],
    }),
  );
  let families: unknown;
  try {
    await using both = await startFerry(["run", "--config", config]);
    await both.waitFor((line) => line.event === "listening" && line.listen === "0.0.0.0:9100");
    families = { v6: await answers("::1"), v4: await answers("127.0.0.1") };
  } catch (error) {
    families = String(error);
  } finally {
    await Deno.remove(config);
  }
  result = { shortage, got, loopLines, literal, families, mapped: await mappedTargets() };
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
