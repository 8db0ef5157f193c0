/**
 * Compares two versions of ferry (or any Deno SOCKS5 server taking ferry's
 * `socks --listen` flags) at the same time; see bench/_side_by_side.ts for
 * why at the same time, and BENCHMARKS.md ("Running it") for how to use it.
 * Run an entry against itself first: a smaller difference than that one
 * means nothing.
 *
 * Usage:
 *   deno run --allow-all bench/side_by_side.ts A.ts B.ts [--rounds 6]
 *       [--seconds 4] [--order client-first|target-first] [--logging [--log-format json|text]]
 * A.ts and B.ts are started as `deno run <the start task's flags> X.ts socks
 * --listen 127.0.0.1:PORT …` on core 1: src/main.ts of two worktrees (`git
 * worktree add /tmp/before HEAD~1`), or bench/bare_relay.ts. With
 * `--logging` both log every session (`--log-level info --log-format json`,
 * or `text`, the default format users get) to a file each, as make bench's
 * "ferry (logging on)" row does (in JSON); otherwise
 * `--log-level warn`, which logs no session. Everything runs
 * on 127.0.0.1, each load run stops by itself, and what this starts is
 * stopped by its PID at the end.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  canConnect,
  compileC,
  endChild,
  exitOnSignal,
  fdLimit,
  ferryRunFlags,
  fmt,
  freePort,
  GEN_CORE,
  Lines,
  median,
  OUT,
  PROXY_CORE,
  readPorts,
  ROOT,
  sleep,
  type StdinServer,
  stopServer,
} from "./_common.ts";
import { sideBySide } from "./_side_by_side.ts";

const LOADGEN = `${OUT}/loadgen`;
const PAYLOAD = 64;
/** Sessions at a time against each server: half of make bench's 50. */
const CONCURRENCY = 25;

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    rounds: { type: "string", default: "6" },
    seconds: { type: "string", default: "4" },
    order: { type: "string", default: "client-first" },
    logging: { type: "boolean", default: false },
    "log-format": { type: "string", default: "json" },
  },
});
const rounds = Number(values.rounds);
const seconds = Number(values.seconds);
const order = values.order;
if (
  positionals.length !== 2 || !Number.isInteger(rounds) || rounds < 1 || !(seconds > 0) ||
  (order !== "client-first" && order !== "target-first") ||
  (values["log-format"] !== "json" && values["log-format"] !== "text")
) {
  console.error(
    "usage: side_by_side.ts A.ts B.ts [--rounds N ≥ 1] [--seconds S > 0] " +
      "[--order client-first|target-first] [--logging [--log-format json|text]]",
  );
  Deno.exit(2);
}
const entries = positionals as [string, string];
const logging = values.logging;
const logFormat = values["log-format"];
/** Where the servers' stderr goes with --logging: a file each, removed at the end. */
const logDir = logging ? await Deno.makeTempDir({ prefix: "side_by_side_logs_" }) : null;

interface Server {
  entry: string;
  port: number;
  child: Deno.ChildProcess;
}

async function startServer(entry: string, nofile: number, logFile: string | null): Promise<Server> {
  const port = freePort();
  // sh (with a log file), prlimit and taskset exec into deno: the child's PID is the server's.
  const child = new Deno.Command(logFile === null ? "prlimit" : "sh", {
    args: [
      ...(logFile === null
        ? []
        : ["-c", 'exec 2>"$1"; shift; exec "$@"', "sh", logFile, "prlimit"]),
      `--nofile=${nofile}:${nofile}`,
      "taskset",
      "-c",
      PROXY_CORE,
      Deno.execPath(),
      "run",
      ...ferryRunFlags(),
      entry,
      "socks",
      ...["--listen", `127.0.0.1:${port}`],
      ...(logFile === null
        ? ["--log-level", "warn"]
        : ["--log-level", "info", "--log-format", logFormat]),
      ...["--max-conns", "5000", "--max-conns-per-ip", "5000"],
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  let exited = null as Deno.CommandStatus | null; // set by the callback below
  child.status.then((status) => exited = status);
  for (let waited = 0; !(await canConnect(port)); waited += 100) {
    if (exited !== null) throw new Error(`${entry} exited with status ${exited.code}`);
    if (waited > 15_000) {
      child.kill("SIGKILL");
      throw new Error(`${entry} did not listen on 127.0.0.1:${port} within 15 s`);
    }
    await sleep(100);
  }
  return { entry, port, child };
}

let targets: StdinServer | null = null;
const servers: Server[] = [];
const cleanup = async () => {
  await Promise.all(servers.map((s) => {
    s.child.kill("SIGTERM");
    return endChild(s.child);
  }));
  if (targets) await stopServer(targets);
  if (logDir) await Deno.remove(logDir, { recursive: true }).catch(() => {});
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
  const nofile = await fdLimit();
  for (const [i, entry] of entries.entries()) {
    servers.push(await startServer(entry, nofile, logDir && `${logDir}/${"AB"[i]}.log`));
  }
  const [a, b] = servers as [Server, Server];
  console.log(
    `A: ${a.entry}\nB: ${b.entry}\n${order}, ${CONCURRENCY} sessions at a time each` +
      (logging ? `, each session logged (${logFormat}, to a file)` : ""),
  );
  const results = await sideBySide({ port: a.port, pid: a.child.pid }, {
    port: b.port,
    pid: b.child.pid,
  }, {
    loadgen: LOADGEN,
    // "echo" closes once it has echoed the payload; "echo-open" waits for the client's FIN.
    targetPort: order === "client-first" ? ports["echo-open"]! : ports["echo"]!,
    rounds,
    seconds,
    warmupSeconds: 2,
    concurrency: CONCURRENCY,
    payload: PAYLOAD,
    nofile,
  });
  results.forEach((r, i) =>
    console.log(
      `round ${i + 1}: A ${fmt(r.sessionsA)} sessions (${fmt(r.cpuUsA, 1)} µs CPU each), ` +
        `B ${fmt(r.sessionsB)} (${fmt(r.cpuUsB, 1)} µs); A/B ${
          (r.sessionsA / r.sessionsB).toFixed(3)
        }`,
    )
  );
  console.log(`median A/B ${median(results.map((r) => r.sessionsA / r.sessionsB)).toFixed(3)}`);
} catch (error) {
  console.error(`side_by_side: ${error instanceof Error ? error.message : error}`);
  Deno.exitCode = 1;
} finally {
  await cleanup();
  removeSignalListeners();
}
