/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates, whose /etc/resolv.conf names a
 * server on 127.0.0.1 that this probe runs: it answers `echo.test` with
 * 127.0.0.1 (and no IPv6 address), 50 ms late, and counts the queries. A
 * UDP association sends 20 datagrams to `echo.test`, an echo server.
 *
 * Then 3 datagrams to `dead.test`, which it never answers, between 3 more
 * to `echo.test`: those must not wait for dead.test's lookup.
 *
 * Then 300 datagrams at once to `slow.test`, answered (127.0.0.1) 200 ms
 * late: they wait in ferry behind its lookup, at most 256 of them.
 *
 * Then a second association sends 10 datagrams to `slow.late.test` and ends
 * before its lookup does; a third sends 40 of 8 KiB to `slow.big.test`; a
 * fourth sends 3 to one name spelt in three cases, `SLOW.order.test` first:
 * a lookup of each spelling would answer the first last.
 *
 * Prints one JSON object, or what failed: `{ echoed, queries, deadQueries,
 * slowEchoed, sentMs, kernelDrops, udpIn, dropped, late, moreMs, big,
 * dualVia, orderEchoed, orderQueries }`: `moreMs` how long the 3 datagrams to `echo.test` between those
 * to `dead.test` took to come back (sent over 300 ms), `slowEchoed` the
 * slow.test payloads that reached the echo server, in order (a burst of 256
 * may overflow its socket buffer), `kernelDrops` those the kernel dropped
 * before ferry's relay socket could take them, `udpIn` and `dropped` from the
 * session's log line, `late` the same of the second association's, `big`
 * the third's, with its kernel drops.
 *
 * Run: deno run -A tests/_helpers/udp_name_probe.ts
 */
import dgram from "node:dgram";
import { once } from "node:events";
import { startFerry } from "./ferry.ts";
import { sessionOf } from "./session_log.ts";
import { BufferedConn, deadline, domain, ipv4, socks5, socks5Handshake } from "./socks_client.ts";
import { associate, frame, kernelDrops, sendInOrder } from "./udp_support.ts";

const COUNT = 20;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Python: a name server for echo.test (A 127.0.0.1, no AAAA), answering
 * after 50 ms (slow.test, in any case: 200 ms; the first two queries for
 * order.test: 500 ms),
 * never dead.test, and for dual.test 127.0.0.1 and ::1 both, each answer on
 * a timer of its own; it writes the number of queries it got to argv[1],
 * slow.test's, order.test's and dual.test's apart.
 */
const NAME_SERVER = `
import socket, struct, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
queries = dead = orders = 0
while True:
    query, client = s.recvfrom(4096)
    if query[12:17] == b"\\x04dead":
        dead += 1
        open(sys.argv[1] + ".dead", "w").write(str(dead))
        continue  # never answered
    slow = query[12:17].lower() == b"\\x04slow"
    dual = query[12:17] == b"\\x04dual"
    if b"\\x05order" in query:
        orders += 1
        open(sys.argv[1] + ".order", "w").write(str(orders))
    elif not slow and not dual:
        queries += 1
        open(sys.argv[1], "w").write(str(queries))
    qid, qend = query[:2], 12
    while query[qend] != 0:
        qend += 1 + query[qend]
    question = query[12:qend + 5]
    qtype = struct.unpack(">H", query[qend + 1:qend + 3])[0]
    answers = b""
    if qtype == 1:
        answers = b"\\xc0\\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1])
    elif qtype == 28 and dual:
        answers = b"\\xc0\\x0c" + struct.pack(">HHIH", 28, 1, 60, 16) + bytes(15) + b"\\x01"
    header = qid + struct.pack(">HHHHH", 0x8180, 1, 1 if answers else 0, 0, 0)
    # The first lookup of order.test (its A and AAAA queries) is answered last.
    delay = 0.5 if b"\\x05order" in query and orders <= 2 else 0.2 if slow else 0.05
    threading.Timer(delay, s.sendto, (header + question + answers, client)).start()
`;

let result: unknown;
const countFile = await Deno.makeTempFile();
const nameServer = new Deno.Command("python3", {
  args: ["-c", NAME_SERVER, countFile],
  stdout: "piped",
}).spawn();
const echo = dgram.createSocket("udp4");
const local = dgram.createSocket("udp4");
try {
  await nameServer.stdout.getReader().read(); // "ready"
  echo.on("message", (message, from) => echo.send(message, from.port, from.address));
  echo.bind(0, "127.0.0.1");
  await once(echo, "listening");
  local.bind(0, "127.0.0.1");
  await once(local, "listening");

  await using ferry = await startFerry(["socks", "--listen", "127.0.0.1:0"]);
  using control = await BufferedConn.connect(ferry.hostname, ferry.port);
  const reply = await socks5Handshake(control, ipv4("127.0.0.1", local.address().port), {
    command: socks5.Command.UdpAssociate,
  });
  const echoed = new Set<string>();
  const allBack = new Promise<void>((resolve) =>
    local.on("message", (message: Uint8Array) => {
      echoed.add(decoder.decode(socks5.decodeUdpDatagram(message).data));
      if (echoed.size === COUNT) resolve();
    })
  );
  const header = socks5.encodeUdpHeader(domain("echo.test", echo.address().port));
  for (let i = 0; i < COUNT; i++) {
    local.send(
      new Uint8Array([...header, ...encoder.encode(`d${i}`)]),
      reply.address.port,
      reply.address.host,
    );
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  await deadline(allBack, 10_000, `${COUNT} echoes (got ${echoed.size})`);
  const queries = Number(await Deno.readTextFile(countFile));

  // A name whose server never answers, between datagrams to echo.test.
  const deadHeader = socks5.encodeUdpHeader(domain("dead.test", echo.address().port));
  const moreBack = new Promise<void>((resolve) =>
    local.on("message", () => echoed.size === COUNT + 3 && resolve())
  );
  const deadStarted = performance.now();
  for (let i = 0; i < 3; i++) {
    local.send(deadHeader, reply.address.port, reply.address.host);
    const more = new Uint8Array([...header, ...encoder.encode(`e${i}`)]);
    local.send(more, reply.address.port, reply.address.host);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await deadline(moreBack, 15_000, `3 more echoes (got ${echoed.size - COUNT})`);
  const moreMs = Math.round(performance.now() - deadStarted);
  const deadQueries = Number(await Deno.readTextFile(`${countFile}.dead`));
  const echoedSize = echoed.size;

  // More datagrams than may wait behind one lookup, all sent while it runs.
  const slowEchoed: string[] = [];
  echo.on("message", (message: Uint8Array) => {
    const text = decoder.decode(message);
    if (text.startsWith("s")) slowEchoed.push(text);
  });
  const slowTo = domain("slow.test", echo.address().port);
  const slowStarted = performance.now();
  // Ten at a time, a millisecond apart: sent at once, all 300 could outrun a
  // busy ferry's socket buffer (about 256 small datagrams), and the kernel
  // dropped 41 that ferry never saw. Still all within the lookup's 200 ms.
  const slow = Array.from({ length: 300 }, (_, i) => frame(slowTo, `s${i}`));
  for (let first = 0; first < slow.length; first += 10) {
    await sendInOrder(local, slow.slice(first, first + 10), reply.address.port, reply.address.host);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  const sentMs = Math.round(performance.now() - slowStarted);
  // Until none has come for 500 ms, 10 s at most.
  for (let seen = -1; seen !== slowEchoed.length && performance.now() - slowStarted < 10_000;) {
    seen = slowEchoed.length;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  const slowKernelDrops = await kernelDrops(reply.address.port);
  control.close();
  const session = await sessionOf(ferry, control.localAddr);

  // An association that ends while its datagrams wait for a lookup.
  await using lateUdp = await associate(ferry);
  const lateDatagram = frame(domain("slow.late.test", echo.address().port), "");
  await sendInOrder(lateUdp.local, Array(10).fill(lateDatagram), lateUdp.reply.address.port);
  // Until ferry has them all (it counts none till then): those it had not
  // yet taken would be lost with the socket, counted nowhere.
  await new Promise((resolve) => setTimeout(resolve, 50));
  lateUdp.control.close();
  const late = await sessionOf(ferry, lateUdp.control.localAddr);

  // Datagrams bigger than 256 fit in 256 KiB: 40 of 8 KiB behind a lookup.
  await using bigUdp = await associate(ferry);
  let bigEchoed = 0;
  bigUdp.local.on("message", () => bigEchoed++);
  const big = frame(domain("slow.big.test", echo.address().port), "b".repeat(8192));
  for (let sent = 0; sent < 40; sent += 10) {
    await sendInOrder(bigUdp.local, Array(10).fill(big), bigUdp.reply.address.port);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  // Until some have come back and no more for 500 ms, 10 s at most. (Not
  // all come back: 256 KiB at once overflow the echo server's socket buffer.)
  for (let seen = -1, started = performance.now(); seen !== bigEchoed || seen === 0;) {
    if (performance.now() - started > 10_000) break;
    seen = bigEchoed;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  const bigKernelDrops = await kernelDrops(bigUdp.reply.address.port);
  bigUdp.control.close();
  const bigSession = await sessionOf(ferry, bigUdp.control.localAddr);

  // One peer by one name in three spellings: the first's lookup takes
  // longest, the others must not overtake it, nor be looked up again.
  const orderEchoed: string[] = [];
  echo.on("message", (message: Uint8Array) => {
    const text = decoder.decode(message);
    if (text.startsWith("o")) orderEchoed.push(text);
  });
  await using orderUdp = await associate(ferry);
  const spellings = ["SLOW.order.test", "slow.order.test", "Slow.Order.Test"];
  const ordered = spellings.map((name, i) => frame(domain(name, echo.address().port), `o${i}`));
  await sendInOrder(orderUdp.local, ordered, orderUdp.reply.address.port);
  for (const started = performance.now(); orderEchoed.length < 3;) {
    if (performance.now() - started > 5_000) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const orderQueries = Number(await Deno.readTextFile(`${countFile}.order`));

  // A name with an IPv4 and an IPv6 address, and a server on each, one port.
  const echo6 = dgram.createSocket("udp6");
  let dualVia = "none";
  try {
    echo6.bind(echo.address().port, "::1");
    await once(echo6, "listening");
    const arrived = new Promise<void>((resolve) => {
      echo.on("message", (message: Uint8Array) => {
        if (decoder.decode(message) !== "dual") return;
        dualVia = "ipv4";
        resolve();
      });
      echo6.on("message", () => {
        dualVia = "ipv6";
        resolve();
      });
    });
    await using dualUdp = await associate(ferry);
    const dualDatagram = frame(domain("dual.test", echo.address().port), "dual");
    await sendInOrder(dualUdp.local, [dualDatagram], dualUdp.reply.address.port);
    await deadline(arrived, 5_000, "the datagram to dual.test");
  } finally {
    echo6.close();
  }
  result = {
    echoed: echoedSize,
    queries,
    deadQueries,
    slowEchoed,
    sentMs,
    kernelDrops: slowKernelDrops,
    udpIn: session.udpIn,
    dropped: session.dropped,
    late: { udpIn: late.udpIn, dropped: late.dropped },
    moreMs,
    big: {
      udpIn: bigSession.udpIn,
      dropped: bigSession.dropped,
      firstDrop: bigSession.firstDrop,
      kernelDrops: bigKernelDrops,
    },
    dualVia,
    orderEchoed,
    orderQueries,
  };
} catch (error) {
  result = { error: String(error) };
} finally {
  local.close();
  echo.close();
  nameServer.kill("SIGKILL");
  await nameServer.status;
  await Deno.remove(countFile);
  await Deno.remove(`${countFile}.dead`).catch(() => {});
  await Deno.remove(`${countFile}.order`).catch(() => {});
}
console.log(JSON.stringify(result));
