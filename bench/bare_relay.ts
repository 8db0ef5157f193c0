/**
 * The benchmark's reference row: the smallest SOCKS5 relay Deno can run, so
 * the price of ferry's features (limits, deadlines, timeouts, socket options,
 * codecs, logging) shows as the distance between its row and this one.
 *
 * No-auth CONNECT to an IPv4 address only, read/write loops with 2 KiB
 * starting buffers growing ×4 to 64 KiB, no timeouts, no limits, no socket
 * options, no logging. Not for use: it trusts every byte it is sent.
 *
 * Usage (as bench.ts starts it): deno run --allow-net bench/bare_relay.ts
 * socks --listen 127.0.0.1:PORT [ignored ferry flags…]
 *
 * @module
 */

const listenAt = Deno.args[Deno.args.indexOf("--listen") + 1] ?? "127.0.0.1:1080";
const port = Number(listenAt.slice(listenAt.lastIndexOf(":") + 1));
const listener = Deno.listen({ hostname: "127.0.0.1", port });

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/** Reads into `buffer` until it holds at least `need` bytes; returns how many it holds. */
async function readAtLeast(conn: Deno.Conn, buffer: Uint8Array, have: number, need: number) {
  while (have < need) {
    const n = await conn.read(buffer.subarray(have));
    if (n === null) throw new Error("closed during the handshake");
    have += n;
  }
  return have;
}

/** One direction: copy until EOF, then pass the FIN on; an error closes both. */
async function pipe(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  let buffer = new Uint8Array(2048);
  try {
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) break;
      for (let offset = 0; offset < n;) offset += await to.write(buffer.subarray(offset, n));
      if (n === buffer.length && buffer.length < 65536) buffer = new Uint8Array(buffer.length * 4);
    }
    await to.closeWrite();
  } catch {
    closeQuietly(from);
    closeQuietly(to);
  }
}

async function serve(client: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(512);
  try {
    let have = await readAtLeast(client, buffer, 0, 2);
    const requestAt = 2 + buffer[1]!;
    have = await readAtLeast(client, buffer, have, requestAt);
    await client.write(Uint8Array.of(5, 0));
    have = await readAtLeast(client, buffer, have, requestAt + 10); // IPv4 CONNECT only
    const ip = buffer.subarray(requestAt + 4, requestAt + 8).join(".");
    const targetPort = (buffer[requestAt + 8]! << 8) | buffer[requestAt + 9]!;
    const target = await Deno.connect({ hostname: ip, port: targetPort });
    await client.write(Uint8Array.of(5, 0, 0, 1, 0, 0, 0, 0, 0, 0));
    if (have > requestAt + 10) await target.write(buffer.subarray(requestAt + 10, have));
    await Promise.all([pipe(client, target), pipe(target, client)]);
    closeQuietly(target);
  } catch {
    // a failed handshake or connect: just close
  }
  closeQuietly(client);
}

for (;;) serve(await listener.accept());
