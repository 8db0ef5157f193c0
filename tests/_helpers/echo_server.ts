/** A loopback TCP server that echoes each connection's bytes until EOF, then closes it. */
export interface EchoServer {
  readonly addr: Deno.NetAddr;
  /** Stops accepting and waits for every connection to end. */
  close(): Promise<void>;
}

/** Starts an {@linkcode EchoServer} on `hostname` (127.0.0.1 unless given), port 0. */
export function startEchoServer(hostname = "127.0.0.1"): EchoServer {
  const listener = Deno.listen({ hostname, port: 0 });
  const served = new Set<Promise<void>>();
  const echo = async (conn: Deno.TcpConn) => {
    const buf = new Uint8Array(16 * 1024);
    try {
      for (let n; (n = await conn.read(buf)) !== null;) await conn.write(buf.subarray(0, n));
    } catch {
      // reset by the peer
    } finally {
      conn.close();
    }
  };
  const loop = (async () => {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch {
        return; // closed
      }
      const done = echo(conn);
      served.add(done);
      done.finally(() => served.delete(done));
    }
  })();
  return {
    addr: listener.addr,
    async close() {
      listener.close();
      await loop;
      await Promise.all(served);
    },
  };
}
