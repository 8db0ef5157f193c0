/**
 * Runs inside a network namespace that tests/integration_netns_test.ts creates
 * with `unshare -n`. It makes a second namespace, the "FTP server" host
 * (10.77.0.2), joined to this one (10.77.0.1) by a veth pair; that host has
 * no route to anything else. ferry listens on 127.0.0.1 here, as behind an
 * `ssh -L` tunnel. A client CONNECTs to the server (its control connection),
 * then BINDs for a connection from it: the server can reach 10.77.0.1, not
 * the 127.0.0.1 the client came in on.
 *
 * Prints one JSON object: `{ firstHost, second, carried }`, or what failed.
 *
 * Run: deno run -A tests/_helpers/bind_route_probe.ts
 */
import { startFerry } from "./ferry.ts";
import { BufferedConn, ipv4, socks5, socks5Handshake } from "./socks_client.ts";

const SERVER = "10.77.0.2";
const decoder = new TextDecoder();

/** Runs a command to completion; throws with its output when it fails. */
async function sh(command: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).output();
  const text = decoder.decode(out.stdout) + decoder.decode(out.stderr);
  if (!out.success) throw new Error(`${command} ${args.join(" ")}: ${text}`);
  return text;
}

// The server's namespace lives as long as this holder process, which the
// probe ends by its PID; the namespace goes with it.
const holder = new Deno.Command("unshare", { args: ["-n", "sleep", "60"] }).spawn();
const inServer = (command: string, ...args: string[]) =>
  ["nsenter", "-t", String(holder.pid), "-n", command, ...args] as const;
/** Python in the server's namespace: connect to ferry's BIND listener and send a line. */
const PEER = `
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(b"from the peer")
`;
/** Python in the server's namespace: the control port, held until stdin closes. */
const CONTROL = `
import socket, sys
listener = socket.create_server(("${SERVER}", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
sys.stdin.read()
`;

let result: unknown;
try {
  for (let i = 0;; i++) {
    // unshare needs a moment before the PID is in its new namespace.
    const own = await Deno.readLink("/proc/self/ns/net");
    if (await Deno.readLink(`/proc/${holder.pid}/ns/net`) !== own) break;
    if (i > 100) throw new Error("the server's namespace did not appear");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await sh(
    "ip",
    "link",
    "add",
    "vm",
    "type",
    "veth",
    "peer",
    "name",
    "vp",
    "netns",
    `${holder.pid}`,
  );
  await sh("ip", "addr", "add", "10.77.0.1/24", "dev", "vm");
  await sh("ip", "link", "set", "vm", "up");
  await sh(...inServer("ip", "link", "set", "lo", "up"));
  await sh(...inServer("ip", "addr", "add", `${SERVER}/24`, "dev", "vp"));
  await sh(...inServer("ip", "link", "set", "vp", "up"));

  const [nsenter, ...controlArgs] = inServer("python3", "-c", CONTROL);
  const control = new Deno.Command(nsenter, { args: controlArgs, stdin: "piped", stdout: "piped" })
    .spawn();
  const controlWriter = control.stdin.getWriter();
  try {
    const firstLine = await control.stdout.getReader().read();
    const controlPort = Number(decoder.decode(firstLine.value).trim());

    // A short grace: the control connection's server stays up until after
    // ferry is stopped, and its session would hold the stop for 10 s.
    await using ferry = await startFerry([
      "socks",
      "--listen",
      "127.0.0.1:0",
      "--bind-timeout",
      "5s",
      "--shutdown-grace",
      "1s",
    ]);
    using controlClient = await BufferedConn.connect(ferry.hostname, ferry.port);
    const connected = await socks5Handshake(controlClient, ipv4(SERVER, controlPort));
    if (connected.reply !== socks5.Reply.Succeeded) throw new Error(`CONNECT: ${connected.reply}`);

    using client = await BufferedConn.connect(ferry.hostname, ferry.port);
    const first = await socks5Handshake(client, ipv4(SERVER, 0), { command: socks5.Command.Bind });
    const firstHost = first.address.host;
    try {
      await sh(...inServer("python3", "-c", PEER, firstHost, String(first.address.port)));
    } catch (error) {
      result = { firstHost, peer: String(error).split("\n").at(-2) };
    }
    if (result === undefined) {
      const second = await client.readMessage(socks5.decodeReply, "second BIND reply");
      result = {
        firstHost,
        second: second.reply,
        carried: decoder.decode(await client.readToEnd()),
      };
    }
  } finally {
    await controlWriter.close();
    await control.status;
  }
} catch (error) {
  result = { error: String(error) };
} finally {
  holder.kill("SIGKILL");
  await holder.status;
}
console.log(JSON.stringify(result));
