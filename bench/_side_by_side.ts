/**
 * Two SOCKS5 servers measured at the same time, for what one costs per session
 * against the other to within about ±1%.
 *
 * Measured one after the other, two runs on our VMs differ by 5–10%, which
 * hides the cost of any one feature. Here both servers share the proxy core,
 * and each gets its own load generator on the load core, with half the bench's
 * sessions at a time. Both then meet the same moment of the machine, and the
 * ratio of their session counts repeats within about ±1%. The client spawned
 * first gets a small edge, so the two swap places every round.
 *
 * Only for two Deno programs, which share a core alike. A server with a thread
 * per connection (microsocks) gets a larger share of the core when more of its
 * threads are runnable, so its count would say nothing.
 *
 * @module
 */
import { GEN_CORE, readStat } from "./_common.ts";

/** A running server: where it listens, and its PID, for its CPU time. */
export interface SideBySideServer {
  readonly port: number;
  readonly pid: number;
}

/** One round: sessions completed by each server, and its CPU µs per session. */
export interface SideBySideRound {
  readonly sessionsA: number;
  readonly sessionsB: number;
  readonly cpuUsA: number;
  readonly cpuUsB: number;
}

/** How to run {@linkcode sideBySide}. */
export interface SideBySideOptions {
  /** bench/out/loadgen. */
  readonly loadgen: string;
  /** The echo server the sessions ask for: "echo" (the target closes first) or "echo-open". */
  readonly targetPort: number;
  readonly rounds: number;
  readonly seconds: number;
  /** Before the rounds, both at once: the JIT, and the buffers' first growth. */
  readonly warmupSeconds: number;
  /** Sessions at a time against each server. */
  readonly concurrency: number;
  readonly payload: number;
  readonly nofile: number;
}

/** A tick of /proc/PID/stat is 10 ms: 10,000 µs. */
const US_PER_TICK = 10_000;

/**
 * Runs `rounds` rounds with both servers under load at once. Throws if a load
 * generator fails or reports errors, or a server exits.
 */
export async function sideBySide(
  a: SideBySideServer,
  b: SideBySideServer,
  options: SideBySideOptions,
): Promise<SideBySideRound[]> {
  const both = (seconds: number, bFirst: boolean) => {
    const [first, second] = bFirst ? [b, a] : [a, b];
    const runFirst = sessions(first.port, seconds, options);
    const runSecond = sessions(second.port, seconds, options);
    return Promise.all(bFirst ? [runSecond, runFirst] : [runFirst, runSecond]);
  };
  await both(options.warmupSeconds, false);
  const rounds: SideBySideRound[] = [];
  for (let round = 0; round < options.rounds; round++) {
    const ticksA = await ticks(a);
    const ticksB = await ticks(b);
    const [sessionsA, sessionsB] = await both(options.seconds, round % 2 === 1);
    rounds.push({
      sessionsA,
      sessionsB,
      cpuUsA: ((await ticks(a)) - ticksA) * US_PER_TICK / sessionsA,
      cpuUsB: ((await ticks(b)) - ticksB) * US_PER_TICK / sessionsB,
    });
  }
  return rounds;
}

/** A server's CPU ticks so far. */
async function ticks(server: SideBySideServer): Promise<number> {
  const stat = await readStat(server.pid);
  if (stat === null) throw new Error(`the server on 127.0.0.1:${server.port} exited`);
  return stat.ticks;
}

/** One loadgen `sessions` run against `port`: the number of sessions it completed. */
async function sessions(port: number, seconds: number, options: SideBySideOptions) {
  const output = await new Deno.Command("taskset", {
    args: [
      ...["-c", GEN_CORE, "prlimit", `--nofile=${options.nofile}:${options.nofile}`],
      options.loadgen,
      "sessions",
      ...["--proxy", `127.0.0.1:${port}`, "--target-port", String(options.targetPort)],
      ...["--conc", String(options.concurrency), "--seconds", String(seconds)],
      ...["--warmup", "0", "--payload", String(options.payload)],
    ],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(output.stdout);
  const last = text.trim().split("\n").filter((line) => line.startsWith("{")).pop();
  const result = last === undefined ? null : JSON.parse(last);
  if (typeof result?.sessions !== "number" || result.sessions === 0 || result.errors > 0) {
    const why = last ?? new TextDecoder().decode(output.stderr).trim();
    throw new Error(`load against 127.0.0.1:${port} failed: ${why}`);
  }
  return result.sessions as number;
}
