/**
 * Runs inside a network and mount namespace that
 * tests/integration_netns_test.ts creates, whose /etc/hosts names
 * `dual.test` both 127.0.0.1 and ::1. ferry listens on 127.0.0.1.
 *
 * - A SOCKS5 BIND for `dual.test`: its IPv4 address can reach the IPv4
 *   listener, so the BIND is granted and the peer from 127.0.0.1 let in.
 * - A SOCKS4a BIND for `dual.test` while another session holds a connection
 *   to [::1] (an FTP control connection, say): SOCKS4 replies carry IPv4
 *   only, so the listener is not put on that connection's ::1, but on the
 *   address the client came in on, which the reply names.
 *
 * Prints one JSON object, or what failed: `{ socks5, socks4a }`, each with
 * the replies' codes and addresses.
 *
 * Run: deno run -A tests/_helpers/bind_dual_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { sessionOf } from "./session_log.ts";
import {
  BufferedConn,
  domain,
  ipv6,
  socks4,
  socks5,
  socks5Connect,
  socks5Handshake,
  TcpTarget,
} from "./socks_client.ts";

let result: unknown;
try {
  await using ferry = await startFerry([
    "socks",
    "--listen",
    "127.0.0.1:0",
    "--bind-timeout",
    "3s",
  ]);

  const client5 = await BufferedConn.connect(ferry.hostname, ferry.port);
  const first = await socks5Handshake(client5, domain("dual.test", 0), {
    command: socks5.Command.Bind,
  });
  let second: socks5.ReplyMessage | null = null;
  if (first.reply === socks5.Reply.Succeeded) {
    using _peer = await Deno.connect({ hostname: "127.0.0.1", port: first.address.port });
    second = await client5.readMessage(socks5.decodeReply, "second reply");
  }
  // Over before the next BIND: its connection to the peer is one to dual.test too.
  client5.close();
  await sessionOf(ferry, client5.localAddr);

  using control = TcpTarget.listen("::1");
  const accepted = control.accept();
  const { client: held } = await socks5Connect(ferry, ipv6("::1", control.port));
  using _held = held;
  await accepted;
  using client4 = await BufferedConn.connect(ferry.hostname, ferry.port);
  await client4.write(socks4.encodeRequest({
    command: socks4.Command.Bind,
    address: domain("dual.test", 0),
    userId: new Uint8Array(0),
  }));
  const bound4 = await client4.readMessage(socks4.decodeReply, "SOCKS4 reply");

  result = {
    socks5: { first: first.reply, host: first.address.host, second: second?.reply ?? null },
    socks4a: { reply: bound4.reply, ip: bound4.ip },
  };
} catch (error) {
  result = { error: String(error) };
}
console.log(JSON.stringify(result));
