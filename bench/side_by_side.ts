/**
 * Two SOCKS5 servers measured at the same time: what one change to ferry
 * costs per session, to within about ±1%.
 *
 * `make bench` runs each proxy on its own, one after the other. On our VMs two
 * such runs differ by 5–10%, which hides the cost of any one feature. Here both
 * servers share core 1, and each gets its own load generator on core 0, with
 * half the bench's sessions at a time (25 each). Both then meet the same moment
 * of the machine, and the ratio of their session counts repeats within about
 * ±1% (BENCHMARKS.md, "Running it").
 * Run an entry against itself first: the small advantage of the first server
 * started is the floor under any difference.
 *
 * Only for two Deno programs, which share core 1 alike. A server with a thread
 * per connection (microsocks) gets a larger share of the core when it has more
 * runnable threads, so its count would say nothing.
 *
 * Usage:
 *   deno run --allow-all bench/side_by_side.ts A.ts B.ts [--rounds 5]
 *       [--seconds 4] [--order client-first|target-first]
 * A.ts and B.ts are started as `deno run <the start task's flags> X.ts socks
 * --listen 127.0.0.1:PORT …`: src/main.ts of two worktrees (`git worktree add
 * /tmp/before HEAD~1`), or bench/bare_relay.ts. Everything runs on 127.0.0.1,
 * is stopped by its PID at the end, and each round is bounded in time.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  canConnect,
  compileC,
  endChild,
  exitOnSignal,
  ferryRunFlags,
  fmt,
  freePort,
  GEN_CORE,
  Lines,
  median,
  OUT,
  PROXY_CORE,
  readPorts,
  readStat,
  ROOT,
  sleep,
  type StdinServer,
  stopServer,
} from "./_common.ts";

const LOADGEN = `${OUT}/loadgen`;
const NOFILE = 20000;
const PAYLOAD = 64;
const CONCURRENCY_EACH = 25;
const WARMUP_SECONDS = 2;

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    rounds: { type: "string", default: "5" },
    seconds: { type: "string", default: "4" },
    order: { type: "string", default: "client-first" },
  },
});
const rounds = Number(values.rounds);
const seconds = Number(values.seconds);
const order = values.order;
if (
  positionals.length !== 2 || !Number.isInteger(rounds) || rounds < 1 || !(seconds > 0) ||
  (order !== "client-first" && order !== "target-first")
) {
  console.error(
    "usage: side_by_side.ts A.ts B.ts [--rounds N ≥ 1] [--seconds S > 0] " +
      "[--order client-first|target-first]",
  );
  Deno.exit(2);
}
const entries = positionals as [string, string];

interface Server {
  entry: string;
  port: number;
  child: Deno.ChildProcess;
}

/** One loadgen `sessions` run against `port`: the number of sessions it completed. */
async function sessions(port: number, targetPort: number, runSeconds: number): Promise<number> {
  const output = await new Deno.Command("taskset", {
    args: [
      "-c",
      GEN_CORE,
      "prlimit",
      `--nofile=${NOFILE}:${NOFILE}`,
      LOADGEN,
      "sessions",
      ...["--proxy", `127.0.0.1:${port}`, "--target-port", String(targetPort)],
      ...["--conc", String(CONCURRENCY_EACH), "--seconds", String(runSeconds)],
      ...["--warmup", "0", "--payload", String(PAYLOAD)],
    ],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(output.stdout);
  const last = text.trim().split("\n").filter((line) => line.startsWith("{")).pop();
  const result = last === undefined ? null : JSON.parse(last);
  if (typeof result?.sessions !== "number" || result.errors > 0) {
    throw new Error(
      `load against 127.0.0.1:${port} failed: ${last ?? new TextDecoder().decode(output.stderr)}`,
    );
  }
  return result.sessions;
}

async function startServer(entry: string): Promise<Server> {
  const port = freePort();
  const child = new Deno.Command("prlimit", {
    args: [
      `--nofile=${NOFILE}:${NOFILE}`,
      "taskset",
      "-c",
      PROXY_CORE,
      Deno.execPath(),
      "run",
      ...ferryRunFlags(),
      entry,
      "socks",
      ...["--listen", `127.0.0.1:${port}`, "--log-level", "warn"],
      ...["--max-conns", "5000", "--max-conns-per-ip", "5000"],
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  for (let waited = 0; !(await canConnect(port)); waited += 100) {
    if (waited > 15_000) throw new Error(`${entry} did not listen on 127.0.0.1:${port}`);
    await sleep(100);
  }
  return { entry, port, child };
}

/** CPU ticks of a server so far; prlimit and taskset exec into it, so its PID is the child's. */
async function ticks(server: Server): Promise<number> {
  const stat = await readStat(server.child.pid);
  if (stat === null) throw new Error(`${server.entry} exited`);
  return stat.ticks;
}

let targets: StdinServer | null = null;
const servers: Server[] = [];
const cleanup = async () => {
  await Promise.all(servers.map((s) => {
    s.child.kill("SIGTERM");
    return endChild(s.child);
  }));
  if (targets) await stopServer(targets);
};
const removeSignalListeners = exitOnSignal(cleanup, console.error);

try {
  await compileC(`${ROOT}/bench/loadgen.c`, LOADGEN);
  const serve = new Deno.Command("taskset", {
    args: [
      ...["-c", GEN_CORE, LOADGEN, "serve", "--max-seconds", String(60 + rounds * (seconds + 5))],
      ...["--echo-close-after", String(PAYLOAD)],
    ],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  targets = { child: serve, stdin: serve.stdin.getWriter() };
  const ports = await readPorts(new Lines(serve.stdout), 10_000);
  if (!ports) throw new Error("the target servers did not start");
  // "echo" closes once it has echoed the payload; "echo-open" waits for the client's FIN.
  const targetPort = order === "client-first" ? ports["echo-open"]! : ports["echo"]!;
  for (const entry of entries) servers.push(await startServer(entry));
  const [a, b] = servers as [Server, Server];
  const both = (runSeconds: number) =>
    Promise.all([
      sessions(a.port, targetPort, runSeconds),
      sessions(b.port, targetPort, runSeconds),
    ]);
  await both(WARMUP_SECONDS); // the JIT, and the buffers' first growth
  const ratios: number[] = [];
  console.log(
    `A: ${a.entry}\nB: ${b.entry}\n${order}, ${CONCURRENCY_EACH} sessions at a time each`,
  );
  for (let round = 1; round <= rounds; round++) {
    const before = [await ticks(a), await ticks(b)];
    const [countA, countB] = await both(seconds);
    const cpuA = ((await ticks(a)) - before[0]!) * 10_000 / countA; // µs: a tick is 10 ms
    const cpuB = ((await ticks(b)) - before[1]!) * 10_000 / countB;
    ratios.push(countA / countB);
    console.log(
      `round ${round}: A ${fmt(countA)} sessions (${fmt(cpuA, 1)} µs CPU each), ` +
        `B ${fmt(countB)} (${fmt(cpuB, 1)} µs); A/B ${(countA / countB).toFixed(3)}`,
    );
  }
  console.log(`median A/B ${median(ratios).toFixed(3)}`);
} finally {
  await cleanup();
  removeSignalListeners();
}
