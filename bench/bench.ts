/**
 * `make bench`: ferry side by side with Dante and microsocks, and with no
 * proxy at all, on this machine, in one run.
 *
 * - Each proxy runs pinned to core 1 (`taskset -c 1`); the load generator, the
 *   target servers and this driver run on core 0.
 * - The load generator and the targets are one small C program
 *   (bench/loadgen.c), compiled here with `cc -O2` into bench/out/.
 * - Three measurements per row: full SOCKS5 sessions per second (50 at a
 *   time), one-stream download MiB/s, and RSS per idle session (5,000 held).
 * - Then ferry and the bare relay under load at the same time, for the price
 *   of ferry's features to within about ±1% (bench/_side_by_side.ts).
 * - Everything talks to 127.0.0.1 only and is bounded in time: the proxies run
 *   under `timeout`, the C program has an alarm, and this driver ends the
 *   processes it started by their PIDs.
 *
 * Prints the results as Markdown and writes them into BENCHMARKS.md between
 * `<!-- bench:start -->` and `<!-- bench:end -->`.
 *
 * Environment (all optional):
 *   BENCH_QUICK=1            short run for trying the harness (does not write
 *                            BENCHMARKS.md unless BENCH_WRITE=1)
 *   BENCH_ROWS=a,b           only these rows (direct, ferry, ferry-log, bare,
 *                            dante, microsocks; bare is bench/bare_relay.ts,
 *                            the smallest Deno relay, for reference)
 *   BENCH_ROUNDS=n           rounds of session + download runs (default 3)
 *   BENCH_SESSION_SECONDS=s  measured seconds per session run (default 5)
 *   BENCH_DOWNLOAD_SECONDS=s measured seconds per download run (default 4)
 *   BENCH_IDLE_SESSIONS=n    idle sessions held per proxy (default 5000)
 *   BENCH_CONCURRENCY=n      sessions at a time (default 50)
 *   BENCH_WRITE=0|1          write BENCHMARKS.md or not
 *   BENCH_FERRY_ENTRY=path   ferry's entry point (default src/main.ts)
 *   BENCH_FERRY_FLAGS="…"    deno run flags for ferry (default: those of
 *                            deno.json's start task)
 *   BENCH_QUIET_WAIT=s       how long to wait at the start for other
 *                            processes to leave the cores idle (default 180)
 *
 * @module
 */
import {
  aptInstall,
  CLK_TCK,
  compileC,
  danteCommand,
  dpkgVersion,
  endChild,
  env,
  exitOnSignal,
  fdLimit,
  ferryRunFlags,
  firstLine,
  fmt,
  freePort,
  GEN_CORE,
  Lines,
  machineLines,
  median,
  medianRun,
  num,
  OUT,
  pct,
  processTree,
  type ProxyCommand,
  publishSection,
  ratio,
  readPorts,
  readStat,
  readTail,
  ROOT,
  run,
  sleep,
  spread,
  startWrapped,
  stopServer,
  stopWrapped,
  table,
  which,
} from "./_common.ts";
import {
  busyWarning,
  type Client,
  type CpuWindow,
  type DownloadResult,
  medianMibs,
  medianRate,
  medianSessionRate,
  pinnedClient,
  runDownload,
  runSessions,
  type SampleOptions,
  type SessionResult,
  undisturbed as undisturbedBy,
  waitForQuiet as waitForQuietBy,
  warmUpFailure,
} from "./_measure.ts";
import { sideBySide, type SideBySideRound } from "./_side_by_side.ts";

const LOADGEN = `${OUT}/loadgen`;
const START = "<!-- bench:start -->";
const END = "<!-- bench:end -->";

const QUICK = env("BENCH_QUICK") === "1";
const ROUNDS = Math.round(num("BENCH_ROUNDS", QUICK ? 1 : 3));
const SESSION_SECONDS = num("BENCH_SESSION_SECONDS", QUICK ? 2 : 5);
const DOWNLOAD_SECONDS = num("BENCH_DOWNLOAD_SECONDS", QUICK ? 2 : 4);
const IDLE_SESSIONS = Math.round(num("BENCH_IDLE_SESSIONS", QUICK ? 1000 : 5000));
const CONCURRENCY = Math.round(num("BENCH_CONCURRENCY", 50));
const WARMUP_SECONDS = 0.5;
const PAYLOAD = 64;
/** Rounds and seconds of each close order's ferry-against-the-bare-relay run (see sideBySide). */
const SIDE_BY_SIDE_ROUNDS = QUICK ? 2 : 6;
const SIDE_BY_SIDE_SECONDS = QUICK ? 2 : 4;
/** Half the rows' load against each of the two, so that core 1 carries the usual total. */
const SIDE_BY_SIDE_CONCURRENCY = Math.max(1, Math.round(CONCURRENCY / 2));
/** One session at a time, this long apart: a proxy left idle between clients. */
const PACED_PAUSE_MS = 25;
const WRITE_DOC = env("BENCH_WRITE") === undefined ? !QUICK : env("BENCH_WRITE") === "1";
/** Proxies run under `timeout` with this budget, so none outlives the bench. */
const PROXY_BUDGET_SECONDS = 1200;
/** Other processes' CPU time counts their reaped children too (see SampleOptions). */
const SAMPLING: SampleOptions = { reapedChildren: true };

// ---------------------------------------------------------------------------
// Small helpers

const log = (text: string) => console.error(`bench: ${text}`);

// ---------------------------------------------------------------------------
// /proc: processes, CPU time, memory

async function statusKiB(pid: number, file: string, key: string): Promise<number> {
  try {
    const text = await Deno.readTextFile(`/proc/${pid}/${file}`);
    const m = text.match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

interface Memory {
  rssKiB: number; // sum of VmRSS over the process tree
  pssKiB: number; // sum of Pss (shared pages split between sharers)
  processes: number;
}

async function treeMemory(root: number): Promise<Memory> {
  const tree = await processTree(root);
  let rssKiB = 0, pssKiB = 0;
  for (const p of tree) {
    rssKiB += await statusKiB(p.pid, "status", "VmRSS");
    pssKiB += await statusKiB(p.pid, "smaps_rollup", "Pss");
  }
  return { rssKiB, pssKiB, processes: tree.length };
}

// ---------------------------------------------------------------------------
// The rows

type RowId = "direct" | "ferry" | "ferry-log" | "bare" | "dante" | "microsocks";

interface Row {
  id: RowId;
  label: string;
  port: number; // 0 for direct
  child?: Deno.ChildProcess;
  wrapperPid?: number; // the `timeout` process
  pid?: number; // the proxy itself
  errFile?: string;
  failed?: string;
  /** Session runs with the target closing first. */
  sessions: SessionResult[];
  /** Session runs with the client closing first (the issue's order); none for Dante. */
  clientFirst: SessionResult[];
  downloads: DownloadResult[];
  idle?: IdleResult;
  /** Why the client-first runs stopped, if they did (the row's other figures stand). */
  clientFirstFailed?: string;
  /** One session at a time, PACED_PAUSE_MS apart. */
  paced?: SessionResult;
  pacedFailed?: string;
}

/** ferry and the bare relay under load at once, in one close order (see bench/_side_by_side.ts). */
interface SideBySideRun {
  order: CloseOrder;
  /** A is ferry, B the bare relay. */
  rounds: SideBySideRound[];
  failed?: string;
}

interface IdleResult {
  requested: number;
  ok: number;
  errors: number;
  unfinished: number;
  establishSeconds: number;
  before: Memory;
  after: Memory;
  droppedWhileIdle: number;
  error?: string;
}

// ---------------------------------------------------------------------------
// Setup: packages, compiler, fd limit, pinning

async function ensurePackages(): Promise<void> {
  const missing: string[] = [];
  if (!(await which("danted"))) missing.push("dante-server");
  if (!(await which("microsocks"))) missing.push("microsocks");
  if (!(await which("cc")) && !(await which("gcc"))) missing.push("gcc");
  for (const tool of ["taskset", "prlimit"]) {
    if (!(await which(tool))) missing.push("util-linux");
  }
  await aptInstall(missing, log);
}

// ---------------------------------------------------------------------------
// Target servers (one loadgen process on core 0)

interface Targets {
  child: Deno.ChildProcess;
  stdin: WritableStreamDefaultWriter<Uint8Array>;
  lines: Lines;
  echo: number; // closes right after the echo: the target closes first
  echoOpen: number; // closes at EOF: the client closes first
  source: number;
  hold: number;
}

async function startTargets(nofile: number): Promise<Targets> {
  const args = [
    `--nofile=${nofile}:${nofile}`,
    "taskset",
    "-c",
    GEN_CORE,
    LOADGEN,
    "serve",
    "--max-seconds",
    String(PROXY_BUDGET_SECONDS),
  ];
  args.push("--echo-close-after", String(PAYLOAD)); // the "echo" server's, not "echo-open"'s
  const child = new Deno.Command("prlimit", {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = new Lines(child.stdout);
  const ports = await readPorts(lines, 10_000);
  if (ports === null) throw new Error("loadgen serve did not start");
  const { echo, source, hold } = ports;
  const echoOpen = ports["echo-open"];
  if (!echo || !echoOpen || !source || !hold) {
    throw new Error("loadgen serve did not print its ports");
  }
  return { child, stdin: child.stdin.getWriter(), lines, echo, echoOpen, source, hold };
}

// ---------------------------------------------------------------------------
// Proxies

async function startProxy(row: Row, tmp: string, nofile: number, tag = ""): Promise<void> {
  row.port = freePort();
  row.errFile = `${tmp}/${row.id}${tag}.stderr`;
  let command: ProxyCommand;
  if (row.id === "microsocks") {
    const microsocks = (await which("microsocks")) ?? "microsocks";
    command = { cmd: [microsocks, "-i", "127.0.0.1", "-p", String(row.port)], cwd: ROOT };
  } else if (row.id === "dante") {
    command = await danteCommand(tmp, row.port, [
      "socks pass {",
      "  from: 127.0.0.0/8 to: 127.0.0.0/8",
      "}",
    ]);
  } else {
    const deno = Deno.execPath();
    // The reference relay runs with ferry's flags too, so only the code differs.
    const entry = row.id === "bare"
      ? "bench/bare_relay.ts"
      : env("BENCH_FERRY_ENTRY") ?? "src/main.ts";
    const cmd = [
      deno,
      "run",
      ...ferryRunFlags(),
      entry,
      "socks",
      "--listen",
      `127.0.0.1:${row.port}`,
      "--max-conns",
      "20000",
      "--max-conns-per-ip",
      "20000",
      ...(row.id === "ferry-log"
        ? ["--log-level", "info", "--log-format", "json"]
        : ["--log-level", "warn"]),
    ];
    command = { cmd, cwd: ROOT };
  }
  const failed = await startWrapped(row, {
    ...command,
    expect: row.id === "dante" ? "danted" : row.id === "microsocks" ? "microsocks" : "deno",
    port: row.port,
    errFile: row.errFile,
    budgetSeconds: PROXY_BUDGET_SECONDS,
    nofile,
  });
  if (failed) row.failed = failed;
}

/** ferry (logging on): how many per-session log lines it wrote so far. */
async function sessionLogLines(row: Row): Promise<number> {
  if (row.id !== "ferry-log" || !row.errFile) return 0;
  const text = await Deno.readTextFile(row.errFile).catch(() => "");
  return text.split("\n").filter((l) => l.includes('"event":"session"')).length;
}

/** What ferry said besides its per-session lines, for the person running this. */
async function reportStderr(row: Row): Promise<void> {
  if (!row.errFile || !row.id.startsWith("ferry")) return;
  const text = await Deno.readTextFile(row.errFile).catch(() => "");
  const other = text.split("\n").filter((l) =>
    l.trim() !== "" && !l.includes('"event":"session"') && !l.includes('"event":"listening"')
  );
  if (other.length === 0) return;
  log(`${row.label} stderr (${other.length} lines besides session and start-up lines):`);
  for (const l of other.slice(0, 8)) log(`  ${l.slice(0, 400)}`);
}

// ---------------------------------------------------------------------------
// Measurements (one loadgen client process on core 0 per run)

/**
 * Other people's processes on this machine skew every number here. Waits (up
 * to BENCH_QUIET_WAIT seconds, default 180) until the cores are nearly idle.
 */
function waitForQuiet(
  seconds = num("BENCH_QUIET_WAIT", QUICK ? 5 : 180),
): Promise<string | null> {
  return waitForQuietBy({ ...SAMPLING, timeoutMs: seconds * 1000, log });
}

/** Runs loadgen clients on core 0, sampling the targets and the row's proxy. */
const client = (targets: Targets, row: Row, nofile: number): Client =>
  pinnedClient({ ...SAMPLING, nofile, targetPid: targets.child.pid, proxyPid: row.pid });

const proxyArg = (row: Row) => (row.id === "direct" ? "none" : `127.0.0.1:${row.port}`);

/** Which side closes first in a session run (see BENCHMARKS.md, "Full sessions per second"). */
type CloseOrder = "target-first" | "client-first";

function measureSessions(
  targets: Targets,
  row: Row,
  seconds: number,
  nofile: number,
  { order = "target-first", paced = false }: { order?: CloseOrder; paced?: boolean } = {},
): Promise<SessionResult | string> {
  const echo = order === "target-first" ? targets.echo : targets.echoOpen;
  return runSessions(
    client(targets, row, nofile),
    LOADGEN,
    ["--proxy", proxyArg(row), "--target-port", String(echo)],
    {
      concurrency: paced ? 1 : CONCURRENCY,
      pauseMs: paced ? PACED_PAUSE_MS : 0,
      payload: PAYLOAD,
      seconds,
      // Paced, a longer warm-up: it must also get past the full-speed runs' after-effects.
      warmupSeconds: paced ? 1 : WARMUP_SECONDS,
    },
  );
}

function measureDownload(
  targets: Targets,
  row: Row,
  seconds: number,
  nofile: number,
): Promise<DownloadResult | string> {
  return runDownload(
    client(targets, row, nofile),
    LOADGEN,
    ["--proxy", proxyArg(row), "--target-port", String(targets.source)],
    { seconds, warmupSeconds: WARMUP_SECONDS },
  );
}

async function measureIdle(
  targets: Targets,
  row: Row,
  nofile: number,
  count: number,
): Promise<IdleResult | string> {
  if (!row.pid) return "no proxy process";
  let before = await treeMemory(row.pid);
  for (let i = 0; i < 3; i++) { // let the proxy settle; keep the last reading
    await sleep(500);
    before = await treeMemory(row.pid);
  }
  const child = new Deno.Command("prlimit", {
    args: [
      `--nofile=${nofile}:${nofile}`,
      "taskset",
      "-c",
      GEN_CORE,
      LOADGEN,
      "idle",
      "--proxy",
      proxyArg(row),
      "--target-port",
      String(targets.hold),
      "--count",
      String(count),
      "--conc",
      "100",
      "--max-seconds",
      "120",
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderrText = new Response(child.stderr).text();
  const lines = new Lines(child.stdout);
  const stdin = child.stdin.getWriter();
  let established: Record<string, number> | null = null;
  let closed: Record<string, number> | null = null;
  let after: Memory | null = null;
  try {
    const line = await lines.next(75_000);
    if (line?.startsWith("{")) established = JSON.parse(line);
    if (established) {
      // Let the proxy finish allocating, then read its memory a few times.
      await sleep(2000);
      for (let i = 0; i < 3; i++) {
        after = await treeMemory(row.pid);
        await sleep(500);
      }
    }
    // Tell the client the drop is coming (it stops counting drops and says
    // "R"), then have the hold server close its ends; the proxy then closes
    // the client's, which the client waits for.
    await stdin.write(new TextEncoder().encode("release\n"));
    const ack = await lines.next(10_000);
    if (ack !== "R") log(`idle client did not confirm the release: ${ack}`);
    await targets.stdin.write(new TextEncoder().encode("drop\n"));
    const dropped = await targets.lines.next(10_000);
    if (!dropped?.startsWith("dropped")) log(`hold server did not confirm the drop: ${dropped}`);
    const last = await lines.next(15_000);
    if (last?.startsWith("{")) closed = JSON.parse(last);
  } finally {
    await stdin.close().catch(() => undefined);
    await endChild(child, 5000);
  }
  const stderr = await stderrText;
  if (!established || !after) return `idle run failed: ${stderr.trim() || "no result"}`;
  return {
    requested: count,
    ok: established.ok ?? 0,
    errors: established.errors ?? 0,
    unfinished: established.unfinished ?? 0,
    establishSeconds: established.elapsed ?? 0,
    before,
    after,
    droppedWhileIdle: closed?.dropped_while_idle ?? NaN,
  };
}

let repeatedRuns = 0;

/** At most this many runs are repeated in one bench, to keep it bounded. */
const MAX_REPEATS = 6;

/**
 * Runs a measurement; if other processes used more than 10% of a core during
 * it, waits for quiet (up to 60 s) and runs it again, at most twice (and at
 * most MAX_REPEATS times per bench). The last result counts either way, and
 * the report shows its "other processes" CPU.
 */
function undisturbed<T extends { cpu: CpuWindow }>(
  what: string,
  measure: () => Promise<T | string>,
): Promise<T | string> {
  return undisturbedBy(measure, async (otherCpu) => {
    if (repeatedRuns >= MAX_REPEATS) return false;
    repeatedRuns++;
    log(`${what}: other processes used ${pct(otherCpu)} of a core; running it again`);
    await waitForQuiet(60);
    return true;
  });
}

// ---------------------------------------------------------------------------
// Machine info

async function machineInfo(): Promise<string[]> {
  return [
    ...(await machineLines()),
    `- Dante: ${await firstLine(["danted", "-v"])} (Debian dante-server ${await dpkgVersion(
      "dante-server",
    )})`,
    `- microsocks: Debian microsocks ${await dpkgVersion("microsocks")}`,
    `- Load generator: bench/loadgen.c built with ${await firstLine(["cc", "--version"])}`,
  ];
}

// ---------------------------------------------------------------------------
// Report

function report(
  rows: Row[],
  info: string[],
  seconds: number,
  ferryLogLines: number,
  notQuiet: string | null,
  sideBySideRuns: SideBySideRun[],
): string {
  const get = (id: RowId) => rows.find((r) => r.id === id);
  const kibPerSession = (r?: Row) =>
    r?.idle && r.idle.ok > 0 ? (r.idle.after.rssKiB - r.idle.before.rssKiB) / r.idle.ok : NaN;
  const pssPerSession = (r?: Row) =>
    r?.idle && r.idle.ok > 0 ? (r.idle.after.pssKiB - r.idle.before.pssKiB) / r.idle.ok : NaN;
  const direct = get("direct");
  const label = (r: Row) => (r.failed ? `${r.label} (failed)` : r.label);
  const targetFirst = (r: Row) => r.sessions;
  const clientFirst = (r: Row) => r.clientFirst;
  /** CPU seconds per second over sessions per second, in µs a session. */
  const perSession = (cpu: number, rate: number) => fmt(cpu / rate * 1e6);
  /** A table of one close order's session runs. */
  const sessionsTable = (runsOf: (r: Row) => SessionResult[]) =>
    table(
      [
        "",
        "sessions/s (median)",
        "min – max",
        "p50 ms",
        "p99 ms",
        "errors",
        "load gen CPU (core 0)",
        "core 0 busy",
        "proxy CPU (core 1)",
        "proxy CPU µs per session (in the kernel)",
        "core 1 busy",
        "other processes CPU",
      ],
      // Dante has no client-first runs (see main()).
      rows.filter((r) => runsOf === targetFirst || r.id !== "dante")
        .map((r) => {
          const runs = runsOf(r);
          const m = medianRun(runs, (s) => s.rate);
          return [
            label(r),
            fmt(medianSessionRate(runs)),
            spread(runs.map((s) => s.rate)),
            m ? fmt(m.p50Ms, 2) : "—",
            m ? fmt(m.p99Ms, 2) : "—",
            fmt(runs.reduce((a, s) => a + s.errors, 0)),
            m ? pct(m.cpu.genCpu) : "—",
            m ? pct(m.cpu.core0Busy) : "—",
            r.id === "direct" ? "n/a" : m ? pct(m.cpu.proxyCpu) : "—",
            r.id === "direct" || !m
              ? "n/a"
              : `${perSession(m.cpu.proxyCpu, m.rate)} (${
                perSession(m.cpu.proxySystemCpu, m.rate)
              })`,
            m ? pct(m.cpu.core1Busy) : "—",
            m ? pct(m.cpu.otherCpu) : "—",
          ];
        }),
    );

  const out: string[] = [];
  out.push(...info, "");
  out.push(...busyWarning(rows, notQuiet));
  out.push(
    `Settings: ${ROUNDS} round${
      ROUNDS === 1 ? "" : "s"
    } per row of a ${SESSION_SECONDS} s session run and a ${DOWNLOAD_SECONDS} s download run ` +
      `(each after a ${WARMUP_SECONDS} s warm-up; medians shown), ${CONCURRENCY} sessions at a time, ` +
      `${PAYLOAD}-byte echo, the target closing after the echo and then the client, and then ` +
      `(every row but Dante, after the idle sessions) the client closing first; one session at ` +
      `a time ${PACED_PAUSE_MS} ms apart for ${SESSION_SECONDS} s; ${
        IDLE_SESSIONS.toLocaleString("en-US")
      } idle sessions per proxy. Total run time ${Math.round(seconds)} s.`,
    "",
  );

  out.push("### Summary", "");
  out.push(
    ...table(
      [
        "",
        "sessions/s",
        "× direct",
        "sessions/s, client closes first",
        "× direct",
        "download MiB/s",
        "× direct",
        "KiB per idle session (RSS)",
      ],
      rows.map((r) => [
        label(r),
        fmt(medianRate(r)),
        r.id === "direct" ? "1.00×" : ratio(medianRate(r) / medianRate(direct)),
        r.id === "dante" ? "n/a" : fmt(medianSessionRate(r.clientFirst)),
        r.id === "direct"
          ? "1.00×"
          : r.id === "dante"
          ? "n/a"
          : ratio(medianSessionRate(r.clientFirst) / medianSessionRate(direct?.clientFirst)),
        fmt(medianMibs(r)),
        r.id === "direct" ? "1.00×" : ratio(medianMibs(r) / medianMibs(direct)),
        r.id === "direct" ? "n/a" : fmt(kibPerSession(r), 1),
      ]),
    ),
    "",
  );

  out.push("### Full sessions per second, the target closing first", "");
  out.push(...sessionsTable(targetFirst), "");
  out.push("### Full sessions per second, the client closing first", "");
  out.push(...sessionsTable(clientFirst), "");
  if (sideBySideRuns.length > 0) {
    out.push("### ferry against the bare relay, both at once", "");
    out.push(
      ...table(
        [
          "close order",
          "ferry ÷ bare relay, sessions, round by round",
          "median",
          "ferry CPU µs per session (median)",
          "bare relay CPU µs per session (median)",
        ],
        sideBySideRuns.map(({ order, rounds, failed }) => [
          order === "client-first" ? "the client first" : "the target first",
          failed ?? rounds.map((r) => (r.sessionsA / r.sessionsB).toFixed(3)).join(", "),
          failed ? "—" : median(rounds.map((r) => r.sessionsA / r.sessionsB)).toFixed(3),
          failed ? "—" : fmt(median(rounds.map((r) => r.cpuUsA)), 1),
          failed ? "—" : fmt(median(rounds.map((r) => r.cpuUsB)), 1),
        ]),
      ),
      "",
      `Both on core 1 at the same time, each with ${SIDE_BY_SIDE_CONCURRENCY} sessions at a time from its own load generator on core 0, ${SIDE_BY_SIDE_ROUNDS} rounds ` +
        `of ${SIDE_BY_SIDE_SECONDS} s, the two load generators swapping which starts first each ` +
        "round. Both meet the same moment of the machine, so the ratio repeats within about ±1%, " +
        "where the rows above vary by 5–10% from run to run. One minus the ratio is the price " +
        "of ferry's features in sessions against the smallest relay Deno can run.",
      "",
    );
  }
  out.push(`### One session at a time, ${PACED_PAUSE_MS} ms apart`, "");
  out.push(
    ...table(
      [
        "",
        "sessions",
        "errors",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p50 − direct p50 ms",
        "proxy CPU µs per session",
        "other processes CPU",
      ],
      rows.map((r) => {
        const p = r.paced;
        if (!p) return [label(r), "—", "—", "—", "—", "—", "—", "—", "—"];
        const directP50 = direct?.paced?.p50Ms ?? NaN;
        return [
          label(r),
          fmt(p.sessions),
          fmt(p.errors),
          fmt(p.p50Ms, 2),
          fmt(p.p90Ms, 2),
          fmt(p.p99Ms, 2),
          r.id === "direct" ? "—" : `+${fmt(p.p50Ms - directP50, 2)}`,
          r.id === "direct" ? "n/a" : perSession(p.cpu.proxyCpu, p.rate),
          pct(p.cpu.otherCpu),
        ];
      }),
    ),
    "",
  );

  out.push("### One-stream download", "");
  out.push(
    ...table(
      [
        "",
        "MiB/s (median)",
        "min – max",
        "load gen CPU (core 0)",
        "core 0 busy",
        "MiB/s at core 0 full",
        "proxy CPU (core 1)",
        "core 1 busy",
        "other processes CPU",
      ],
      rows.map((r) => {
        const m = medianRun(r.downloads, (d) => d.mibPerS);
        return [
          label(r),
          fmt(medianMibs(r)),
          spread(r.downloads.map((d) => d.mibPerS)),
          m ? pct(m.cpu.genCpu) : "—",
          m ? pct(m.cpu.core0Busy) : "—",
          m ? fmt(core0Limit(m)) : "—",
          r.id === "direct" ? "n/a" : m ? pct(m.cpu.proxyCpu) : "—",
          m ? pct(m.cpu.core1Busy) : "—",
          m ? pct(m.cpu.otherCpu) : "—",
        ];
      }),
    ),
    "",
  );

  out.push("### Idle sessions", "");
  out.push(
    ...table(
      [
        "",
        "sessions held",
        "set-up s",
        "processes",
        "RSS before MiB",
        "RSS after MiB",
        "KiB/session (RSS)",
        "KiB/session (PSS)",
        "dropped while idle",
      ],
      rows.filter((r) => r.id !== "direct").map((r) => {
        const i = r.idle;
        if (!i) return [label(r), "—", "—", "—", "—", "—", "—", "—", "—"];
        return [
          label(r),
          `${fmt(i.ok)} of ${fmt(i.requested)}${i.errors ? ` (${fmt(i.errors)} failed)` : ""}`,
          fmt(i.establishSeconds, 1),
          `${i.before.processes} → ${i.after.processes}`,
          fmt(i.before.rssKiB / 1024, 1),
          fmt(i.after.rssKiB / 1024, 1),
          fmt(kibPerSession(r), 1),
          fmt(pssPerSession(r), 1),
          fmt(i.droppedWhileIdle),
        ];
      }),
    ),
    "",
  );

  const failures = rows.flatMap((r) => [
    ...(r.failed ? [[r.label, r.failed]] : []),
    ...(r.clientFirstFailed ? [[`${r.label}, the client closing first`, r.clientFirstFailed]] : []),
    ...(r.pacedFailed ? [[`${r.label}, one session at a time`, r.pacedFailed]] : []),
  ]);
  if (failures.length) {
    out.push("### Failures", "");
    for (const [what, why] of failures) {
      out.push(`- ${what}: ${why!.replace(/\s+/g, " ").slice(0, 500)}`);
    }
    out.push("");
  }
  if (repeatedRuns > 0) {
    out.push(
      `${repeatedRuns} run${repeatedRuns === 1 ? " was" : "s were"} repeated because other ` +
        "processes used more than 10% of a core during it (the repeat counts).",
      "",
    );
  }
  if (ferryLogLines > 0) {
    out.push(
      `ferry (logging on) wrote ${fmt(ferryLogLines)} JSON log lines to a file during the run.`,
      "",
    );
  }

  out.push("### Targets", "");
  const ferry = get("ferry");
  const mark = (
    ok: boolean | null,
  ) => (ok === null ? "not measured" : ok ? "**pass**" : "**miss**");
  const dl = medianMibs(ferry) / medianMibs(direct);
  const sr = medianRate(ferry) / medianRate(get("microsocks"));
  const srClientFirst = medianSessionRate(ferry?.clientFirst) /
    medianSessionRate(get("microsocks")?.clientFirst);
  const kib = kibPerSession(ferry);
  const known = (x: number) => Number.isFinite(x);
  // Three decimals: at two, a ratio of 0.998 would read "1.00×" beside "miss".
  const exact = (x: number) => `${x.toFixed(3)}×`;
  out.push(
    ...table(["target", "measured (ferry, logging off)", "result"], [
      ["download ≥ 0.7× direct", known(dl) ? exact(dl) : "—", mark(known(dl) ? dl >= 0.7 : null)],
      [
        "sessions/s ≥ 1.0× microsocks, the client closing first (the issue's order)",
        known(srClientFirst) ? exact(srClientFirst) : "—",
        mark(known(srClientFirst) ? srClientFirst >= 1.0 : null),
      ],
      [
        "sessions/s ≥ 1.0× microsocks, the target closing first",
        known(sr) ? exact(sr) : "—",
        mark(known(sr) ? sr >= 1.0 : null),
      ],
      [
        "≤ 24 KiB per idle session (aim 16)",
        known(kib) ? `${fmt(kib, 1)} KiB` : "—",
        mark(known(kib) ? kib <= 24 : null) + (known(kib) && kib <= 16 ? " (aim met)" : ""),
      ],
    ]),
  );
  // Rows take turns within a round, so a ratio of two rows in the same round
  // is the one least moved by the machine's drift; shown beside the verdict,
  // which stays on the medians.
  const byRound = (ours: number[], theirs: number[]) =>
    ours.length > 0 && ours.length === theirs.length
      ? ours.map((x, i) => ratio(x / theirs[i]!)).join(", ")
      : null;
  const ferryOverMicrosocks = (runsOf: (r: Row) => SessionResult[]) => {
    const microsocks = get("microsocks");
    return byRound(
      ferry ? runsOf(ferry).map((s) => s.rate) : [],
      microsocks ? runsOf(microsocks).map((s) => s.rate) : [],
    );
  };
  const sessionRounds = ferryOverMicrosocks(targetFirst);
  const clientFirstRounds = ferryOverMicrosocks(clientFirst);
  const downloadRounds = byRound(
    ferry?.downloads.map((d) => d.mibPerS) ?? [],
    direct?.downloads.map((d) => d.mibPerS) ?? [],
  );
  const ferryDownload = ferry && medianRun(ferry.downloads, (d) => d.mibPerS);
  const directDownload = medianMibs(direct);
  if (ferryDownload && known(directDownload)) {
    const limit = core0Limit(ferryDownload);
    out.push(
      "",
      `Download limit set by core 0: in ferry's median download run core 0 (client and source) ` +
        `was ${pct(ferryDownload.cpu.core0Busy)} busy; at its cost per byte in that run, a full ` +
        `core 0 would have carried ${fmt(limit)} MiB/s, ${ratio(limit / directDownload)} direct.`,
    );
  }
  if (clientFirstRounds || sessionRounds || downloadRounds) {
    out.push(
      "",
      "Round by round (each ratio within one round): " +
        [
          clientFirstRounds &&
          `sessions/s ferry ÷ microsocks, the client closing first ${clientFirstRounds}`,
          sessionRounds && `the target closing first ${sessionRounds}`,
          downloadRounds && `download ferry ÷ direct ${downloadRounds}`,
        ].filter(Boolean).join("; ") + ".",
    );
  }
  return out.join("\n");
}

/**
 * The download rate at which core 0 would be fully busy, at the cost per byte
 * it had in this run. Through a proxy on core 1 the client and the source do
 * the same system calls as without one, but each byte costs core 0 more (see
 * BENCHMARKS.md, "What the direct download figure means"). At that cost per
 * byte, this, not the direct figure, is the most the run could have carried.
 */
function core0Limit(run: { mibPerS: number; cpu: CpuWindow }): number {
  return run.cpu.core0Busy > 0 ? run.mibPerS / run.cpu.core0Busy : NaN;
}

/** Prints the report and writes it into BENCHMARKS.md (see BENCH_WRITE). */
function publish(section: string): Promise<void> {
  return publishSection(section, {
    start: START,
    end: END,
    newFile: `# Benchmarks\n\nRun \`make bench\` to fill in this file.\n\n${START}\n${END}\n`,
    heading: "## Results\n\n",
    write: WRITE_DOC,
    log,
  });
}

// ---------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const started = performance.now();
  const clk = (await run(["getconf", "CLK_TCK"], { allowFail: true })).stdout.trim();
  if (clk !== "" && Number(clk) !== CLK_TCK) throw new Error(`CLK_TCK is ${clk}, not ${CLK_TCK}`);
  const cpus = navigator.hardwareConcurrency;
  if (cpus < 2) throw new Error(`needs 2 cores (one for the proxy, one for the load), has ${cpus}`);

  await ensurePackages();
  await compileC(`${ROOT}/bench/loadgen.c`, LOADGEN);
  const nofile = await fdLimit();
  // This driver runs on the load generator's core, out of the proxies' way.
  await run(["taskset", "-a", "-p", "-c", GEN_CORE, String(Deno.pid)], { allowFail: true });
  log(`open-files limit for all processes: ${nofile}`);

  const wanted = (env("BENCH_ROWS") ?? "direct,ferry,ferry-log,bare,dante,microsocks").split(",")
    .map((s) => s.trim());
  const newRow = (id: RowId, label: string): Row => ({
    id,
    label,
    port: 0,
    sessions: [],
    clientFirst: [],
    downloads: [],
  });
  const all: Row[] = [
    newRow("direct", "direct"),
    newRow("ferry", "ferry"),
    newRow("ferry-log", "ferry (logging on)"),
    newRow("bare", "bare Deno relay (reference)"),
    newRow("dante", "dante"),
    newRow("microsocks", "microsocks"),
  ];
  const rows = all.filter((r) => wanted.includes(r.id));
  const tmp = await Deno.makeTempDir({ prefix: "ferry-bench-" });
  await Deno.chmod(tmp, 0o755);
  let targets: Targets | undefined;

  const cleanup = async () => {
    for (const r of rows) await stopWrapped(r).catch(() => undefined);
    if (targets) await stopServer(targets);
    targets = undefined;
  };
  const removeSignalListeners = exitOnSignal(cleanup, log);

  let ferryLogLines = 0;
  const sideBySideRuns: SideBySideRun[] = [];
  let notQuiet: string | null = null;
  try {
    targets = await startTargets(nofile);
    log(
      `targets: echo ${targets.echo}, echo-open ${targets.echoOpen}, source ${targets.source}, ` +
        `hold ${targets.hold}`,
    );

    for (const row of rows) {
      if (row.id === "direct") continue;
      log(`starting ${row.label}`);
      await startProxy(row, tmp, nofile);
      if (row.failed) {
        log(`${row.label} failed: ${row.failed}`);
        continue;
      }
      // Warm-up (JIT, buffers, dante's process pool); also a smoke test.
      const warm = await measureSessions(targets, row, QUICK ? 1 : 2, nofile);
      if (typeof warm === "string" || warm.sessions === 0) {
        row.failed = await warmUpFailure(warm, row.errFile!);
        log(`${row.label} failed: ${row.failed}`);
        continue;
      }
      await measureDownload(targets, row, 1, nofile);
      log(
        `${row.label} on 127.0.0.1:${row.port}, pid ${row.pid}, warm-up ${
          fmt(warm.rate)
        } sessions/s`,
      );
    }

    notQuiet = await waitForQuiet();
    for (let round = 1; round <= ROUNDS; round++) {
      for (const row of rows) {
        if (row.failed) continue;
        const s = await undisturbed(
          `round ${round} ${row.label} sessions`,
          () => measureSessions(targets!, row, SESSION_SECONDS, nofile),
        );
        if (typeof s === "string") {
          row.failed = s;
          log(`${row.label}: ${s}`);
          continue;
        }
        row.sessions.push(s);
        const d = await undisturbed(
          `round ${round} ${row.label} download`,
          () => measureDownload(targets!, row, DOWNLOAD_SECONDS, nofile),
        );
        if (typeof d === "string") {
          row.failed = d;
          log(`${row.label}: ${d}`);
          continue;
        }
        row.downloads.push(d);
        log(
          `round ${round} ${row.label}: ${fmt(s.rate)} sessions/s (${s.errors} errors, ` +
            `gen ${pct(s.cpu.genCpu)}, proxy ${pct(s.cpu.proxyCpu)}), ${fmt(d.mibPerS)} MiB/s`,
        );
        if (row.pid !== undefined && (await readStat(row.pid)) === null) {
          row.failed = `the proxy exited: ${await readTail(row.errFile ?? "")}`;
        }
      }
    }

    // One session at a time: what a client that finds the proxy idle waits,
    // where the runs above keep it busy. On the warm proxies of those runs.
    for (const row of rows) {
      if (row.failed) continue;
      const what = `${row.label}, one session at a time`;
      const p = await undisturbed(
        what,
        () => measureSessions(targets!, row, SESSION_SECONDS, nofile, { paced: true }),
      );
      if (typeof p === "string") {
        row.pacedFailed = p;
        log(`${what}: ${p}`);
        continue;
      }
      row.paced = p;
      log(
        `${what}: p50 ${fmt(p.p50Ms, 2)} ms, p99 ${fmt(p.p99Ms, 2)} ms ` +
          `(${p.sessions} sessions, ${p.errors} errors)`,
      );
    }

    for (const row of rows) {
      if (row.id === "direct" || row.failed) continue;
      // A fresh proxy for the memory figure, so that buffers and garbage left
      // by the throughput runs neither inflate nor (once collected) deflate
      // it. A first, unmeasured round of idle sessions warms it up.
      ferryLogLines += await sessionLogLines(row);
      await reportStderr(row);
      await stopWrapped(row);
      await startProxy(row, tmp, nofile, "-idle");
      if (row.failed) {
        log(`${row.label} failed on restart: ${row.failed}`);
        continue;
      }
      const warm = await measureIdle(targets, row, nofile, Math.min(500, IDLE_SESSIONS));
      if (typeof warm === "string") log(`${row.label} idle warm-up: ${warm}`);
      await sleep(1000);
      const idle = await measureIdle(targets, row, nofile, IDLE_SESSIONS);
      if (typeof idle === "string") {
        row.failed = idle;
        log(`${row.label}: ${idle}`);
        continue;
      }
      row.idle = idle;
      log(
        `idle ${row.label}: ${idle.ok}/${idle.requested} held, ` +
          `${fmt((idle.after.rssKiB - idle.before.rssKiB) / Math.max(1, idle.ok), 1)} KiB/session`,
      );
    }

    // The client closing first, the order the issue gives a session: last,
    // because each such session leaves sockets in TIME_WAIT on ephemeral
    // ports for a minute (the client's, and the proxy's towards the target),
    // and Dante, which binds before it connects, fails while they last (see
    // BENCHMARKS.md). The proxies are the fresh ones of the idle runs, so
    // each is warmed up again first.
    const clientFirstRows = rows.filter((r) => r.id !== "dante" && !r.failed);
    for (const row of clientFirstRows) {
      if (row.id === "direct") continue;
      const warm = await measureSessions(targets, row, QUICK ? 1 : 2, nofile, {
        order: "client-first",
      });
      if (typeof warm === "string" || warm.sessions === 0) {
        row.clientFirstFailed = await warmUpFailure(warm, row.errFile!);
        log(`${row.label}, the client closing first: ${row.clientFirstFailed}`);
      }
    }
    for (let round = 1; round <= ROUNDS; round++) {
      for (const row of clientFirstRows) {
        if (row.clientFirstFailed) continue;
        const what = `round ${round} ${row.label}, the client closing first`;
        const s = await undisturbed(
          what,
          () => measureSessions(targets!, row, SESSION_SECONDS, nofile, { order: "client-first" }),
        );
        if (typeof s === "string") {
          row.clientFirstFailed = s;
          log(`${what}: ${s}`);
          continue;
        }
        row.clientFirst.push(s);
        log(
          `${what}: ${fmt(s.rate)} sessions/s (${s.errors} errors, ` +
            `gen ${pct(s.cpu.genCpu)}, proxy ${pct(s.cpu.proxyCpu)})`,
        );
      }
    }

    // ferry and the bare relay at once: the price of ferry's features to
    // within about ±1%, where the rows above vary by 5–10% from run to run.
    const ferry = rows.find((r) => r.id === "ferry" && !r.failed && r.pid !== undefined);
    const bare = rows.find((r) => r.id === "bare" && !r.failed && r.pid !== undefined);
    if (ferry && bare) {
      for (const order of ["client-first", "target-first"] as const) {
        const run: SideBySideRun = { order, rounds: [] };
        sideBySideRuns.push(run);
        try {
          run.rounds = await sideBySide({ port: ferry.port, pid: ferry.pid! }, {
            port: bare.port,
            pid: bare.pid!,
          }, {
            loadgen: LOADGEN,
            targetPort: order === "client-first" ? targets.echoOpen : targets.echo,
            rounds: SIDE_BY_SIDE_ROUNDS,
            seconds: SIDE_BY_SIDE_SECONDS,
            warmupSeconds: QUICK ? 1 : 2,
            concurrency: SIDE_BY_SIDE_CONCURRENCY,
            payload: PAYLOAD,
            nofile,
          });
          log(
            `ferry ÷ bare relay at once, ${order}: ` +
              run.rounds.map((r) => (r.sessionsA / r.sessionsB).toFixed(3)).join(", "),
          );
        } catch (error) {
          // One table cell: no line breaks, no column separators.
          run.failed = (error instanceof Error ? error.message : String(error))
            .replace(/\s+/g, " ").replaceAll("|", "\\|");
          log(`ferry ÷ bare relay at once, ${order}: ${run.failed}`);
        }
      }
    }
  } finally {
    for (const row of rows) {
      ferryLogLines += await sessionLogLines(row);
      await reportStderr(row);
    }
    await cleanup();
    removeSignalListeners();
    await Deno.remove(tmp, { recursive: true }).catch(() => undefined);
  }

  const info = await machineInfo();
  const section = report(
    rows,
    info,
    (performance.now() - started) / 1000,
    ferryLogLines,
    notQuiet,
    sideBySideRuns,
  );
  await publish(section);
  // A failed row is reported in the table, not by the exit code.
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
