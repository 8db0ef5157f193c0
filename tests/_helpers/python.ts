/**
 * Python for the network-namespace probes: small servers and clients (a
 * name server on port 53, clients bound to chosen source addresses), run
 * with the system's python3.
 */

/** Python: a DNS server on 127.0.0.1:53 that reads every query and answers none. */
export const SILENT_DNS = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    s.recvfrom(4096)
`;

/** Starts a python3 script and waits for its first line. */
export async function python(script: string, ...args: string[]) {
  const child = new Deno.Command("python3", {
    args: ["-c", script, ...args],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const first = await child.stdout.getReader().read();
  if (first.done) throw new Error("python exited before its first line");
  return {
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
      await child.status;
    },
  };
}
