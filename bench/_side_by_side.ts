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
import { pinnedClient, runSessions, type SessionResult } from "./_measure.ts";

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

/**
 * Runs `rounds` rounds with both servers under load at once. Throws if a load
 * generator fails or reports errors.
 */
export async function sideBySide(
  a: SideBySideServer,
  b: SideBySideServer,
  options: SideBySideOptions,
): Promise<SideBySideRound[]> {
  const both = (seconds: number, bFirst: boolean) => {
    const [first, second] = bFirst ? [b, a] : [a, b];
    const runFirst = sessions(first, seconds, options);
    const runSecond = sessions(second, seconds, options);
    return Promise.all(bFirst ? [runSecond, runFirst] : [runFirst, runSecond]);
  };
  await both(options.warmupSeconds, false);
  const rounds: SideBySideRound[] = [];
  for (let round = 0; round < options.rounds; round++) {
    const [runA, runB] = await both(options.seconds, round % 2 === 1);
    rounds.push({
      sessionsA: runA.sessions,
      sessionsB: runB.sessions,
      cpuUsA: cpuUsPerSession(runA),
      cpuUsB: cpuUsPerSession(runB),
    });
  }
  return rounds;
}

/** The server's CPU per session over the run's measured window, in µs. */
function cpuUsPerSession(run: SessionResult): number {
  return run.cpu.proxyCpu / run.rate * 1e6;
}

/** One `loadgen sessions` run against `server`, its CPU sampled over the measured window. */
async function sessions(
  server: SideBySideServer,
  seconds: number,
  options: SideBySideOptions,
): Promise<SessionResult> {
  const client = pinnedClient({
    nofile: options.nofile,
    targetPid: undefined, // the load generators' CPU is not reported here
    proxyPid: server.pid,
    reapedChildren: false,
  });
  const run = await runSessions(
    client,
    options.loadgen,
    ["--proxy", `127.0.0.1:${server.port}`, "--target-port", String(options.targetPort)],
    { concurrency: options.concurrency, payload: options.payload, seconds, warmupSeconds: 0 },
  );
  if (typeof run === "string" || run.sessions === 0 || run.errors > 0) {
    const why = typeof run === "string" ? run : `${run.sessions} sessions, ${run.errors} errors`;
    throw new Error(`load against 127.0.0.1:${server.port} failed: ${why}`);
  }
  return run;
}
