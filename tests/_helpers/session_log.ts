/** Finds ferry's per-session log lines. */
import type { FerryProcess, LogLine } from "./ferry.ts";

/** The forms ferry may log a client address in: `ip:port`, or `[ipv6]:port`. */
export function addressForms(addr: Deno.NetAddr): string[] {
  const plain = `${addr.hostname}:${addr.port}`;
  return addr.hostname.includes(":") ? [`[${addr.hostname}]:${addr.port}`, plain] : [plain];
}

/**
 * Waits for the `event: "session"` line of the session whose client end is
 * `clientAddr` (the test's local address of its connection to ferry).
 */
export function sessionOf(
  ferry: FerryProcess,
  clientAddr: Deno.NetAddr,
  ms = 10_000,
): Promise<LogLine> {
  const forms = addressForms(clientAddr);
  return ferry.waitFor(
    (line) => line.event === "session" && forms.includes(String(line.client)),
    ms,
  );
}

/** Every session line logged so far. */
export function sessionLines(ferry: FerryProcess): LogLine[] {
  return ferry.lines.filter((line) => line.event === "session");
}

/** Whether any log line so far contains `secret` anywhere. */
export function logsContain(ferry: FerryProcess, secret: string): boolean {
  return ferry.lines.some((line) => JSON.stringify(line).includes(secret));
}
