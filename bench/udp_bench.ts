/**
 * UDP ASSOCIATE relay benchmark: ferry side by side with Dante and with no
 * proxy at all, on this machine, in one run
 * (`deno run --allow-all bench/udp_bench.ts`).
 *
 * - Each proxy runs pinned to core 1 (`taskset -c 1`); the load generator, the
 *   UDP echo server and this driver run on core 0.
 * - The load generator and the echo server are one small C program
 *   (bench/udp_loadgen.c), compiled here with `cc -O2` into bench/out/.
 * - Per row and offered rate: one TCP control connection, UDP ASSOCIATE, then
 *   64-byte payloads (in the SOCKS UDP header) at a fixed rate to the relay,
 *   which sends them to the echo server and the replies back. Counts replies,
 *   loss and round-trip times.
 * - Everything talks to 127.0.0.1 only and is bounded in time: proxies run
 *   under `timeout`, the C program has an alarm, and this driver ends the
 *   processes it started by their PIDs.
 *
 * Prints the results as Markdown and writes them into BENCHMARKS.md between
 * `<!-- udp-bench:start -->` and `<!-- udp-bench:end -->`.
 *
 * Environment (all optional):
 *   BENCH_QUICK=1            short run for trying the harness, as for
 *                            bench/bench.ts: one rate, 1.5 s runs, and
 *                            BENCHMARKS.md left alone unless UDP_BENCH_WRITE=1
 *   UDP_BENCH_RATES=a,b      offered datagrams/s (default 10000,20000,50000)
 *   UDP_BENCH_SECONDS=s      measured seconds per run (default 4)
 *   UDP_BENCH_ROWS=a,b       only these rows (direct, ferry, dante)
 *   UDP_BENCH_WRITE=0|1      write BENCHMARKS.md or not (default 1, quick 0)
 *   BENCH_FERRY_FLAGS="…"    deno run flags for ferry (default: those of
 *                            deno.json's start task)
 *
 * @module
 */
import {
  allStats,
  aptInstall,
  CLK_TCK,
  compileC,
  type CoreTimes,
  coreTimes,
  danteCommand,
  env,
  exitOnSignal,
  ferryRunFlags,
  fmt,
  freePort,
  GEN_CORE,
  Lines,
  OUT,
  PROXY_CORE,
  type ProxyCommand,
  publishSection,
  readPorts,
  readTail,
  ROOT,
  run,
  sleep,
  startWrapped,
  stopServer,
  stopWrapped,
  table,
  treeOf,
  which,
} from "./_common.ts";
import { OTHER_CPU_LIMIT, readMarked } from "./_measure.ts";

const LOADGEN = `${OUT}/udp_loadgen`;
const START = "<!-- udp-bench:start -->";
const END = "<!-- udp-bench:end -->";

const QUICK = env("BENCH_QUICK") === "1";
const RATES = (env("UDP_BENCH_RATES") ?? (QUICK ? "20000" : "10000,20000,50000")).split(",")
  .map(Number).filter((n) => Number.isFinite(n) && n > 0);
const SECONDS = Number(env("UDP_BENCH_SECONDS") ?? (QUICK ? "1.5" : "4"));
const WARMUP_SECONDS = 0.5;
const PAYLOAD = 64;
const WRITE_DOC = env("UDP_BENCH_WRITE") === undefined ? !QUICK : env("UDP_BENCH_WRITE") !== "0";
const PROXY_BUDGET_SECONDS = 300;

// ---------------------------------------------------------------------------
// Small helpers (the shared ones are in bench/_common.ts)

const log = (text: string) => console.error(`udp-bench: ${text}`);

// ---------------------------------------------------------------------------
// /proc: processes and CPU time

async function coreBusyTicks(core: string): Promise<CoreTimes> {
  return (await coreTimes()).get(core) ?? { busy: 0, total: 0 };
}

/** The kernel's UDP counters (all sockets): receive-buffer overflows and the like. */
async function udpSnmp(): Promise<Record<string, number>> {
  const text = await Deno.readTextFile("/proc/net/snmp").catch(() => "");
  const rows = text.split("\n").filter((l) => l.startsWith("Udp:"));
  const names = rows[0]?.split(/\s+/).slice(1) ?? [];
  const values = rows[1]?.split(/\s+/).slice(1).map(Number) ?? [];
  return Object.fromEntries(names.map((n, i) => [n, values[i] ?? 0]));
}

interface Sample {
  t: number;
  /** Processes this bench did not start (kernel threads left out): CPU ticks and start. */
  foreign: Map<number, { ticks: number; start: number }>;
  snmp: Record<string, number>;
  proxyTicks: number;
  core1: CoreTimes;
}

async function sample(pid: number | undefined): Promise<Sample> {
  const stats = await allStats();
  const proxyTicks = pid === undefined
    ? 0
    : treeOf(stats, pid).reduce((sum, p) => sum + p.ticks + p.childTicks, 0);
  const ours = new Set(treeOf(stats, Deno.pid).map((p) => p.pid));
  const foreign = new Map<number, { ticks: number; start: number }>();
  for (const p of stats) {
    if (!ours.has(p.pid) && p.pid !== 2 && p.ppid !== 2) {
      foreign.set(p.pid, { ticks: p.ticks + p.childTicks, start: p.start });
    }
  }
  return {
    t: performance.now(),
    foreign,
    snmp: await udpSnmp(),
    proxyTicks,
    core1: await coreBusyTicks(PROXY_CORE),
  };
}

/** CPU seconds per wall second used by processes this bench did not start. */
function foreignCpu(a: Sample, b: Sample): number {
  let ticks = 0;
  for (const [pid, q] of b.foreign) {
    const p = a.foreign.get(pid);
    ticks += p && p.start === q.start ? q.ticks - p.ticks : 0;
  }
  return ticks / CLK_TCK / ((b.t - a.t) / 1000);
}

/**
 * Other processes skew every number here: waits up to `seconds` for both
 * cores to be under 10% busy. Returns null if they were, else what it saw.
 */
async function waitForQuiet(seconds = 30): Promise<string | null> {
  const limit = Date.now() + seconds * 1000;
  for (;;) {
    const a = [await coreBusyTicks(GEN_CORE), await coreBusyTicks(PROXY_CORE)];
    await sleep(1000);
    const b = [await coreBusyTicks(GEN_CORE), await coreBusyTicks(PROXY_CORE)];
    const busy = a.map((x, i) => (b[i]!.busy - x.busy) / Math.max(1, b[i]!.total - x.total));
    if (busy.every((x) => x < 0.1)) return null;
    const what = `core 0 ${pct(busy[0]!)} busy, core 1 ${pct(busy[1]!)} busy`;
    if (Date.now() > limit) {
      log(`the machine is not quiet (${what}); measuring anyway`);
      return what;
    }
    log(`waiting for the machine to be quiet (${what})`);
  }
}

// ---------------------------------------------------------------------------
// Rows and proxies

type RowId = "direct" | "ferry" | "dante";

interface Result {
  rate: number; // offered
  sent: number;
  received: number;
  loss: number;
  replies: number; // per second
  p50Ms: number;
  p99Ms: number;
  bad: number;
  sendErrors: number;
  /** UDP datagrams the kernel dropped for a full receive buffer (any socket), start to end. */
  rcvbufDrops: number;
  proxyCpu: number;
  core1Busy: number;
  /** CPU (cores) used by processes this bench did not start, during the window. */
  otherCpu: number;
  error?: string;
}

interface Row {
  id: RowId;
  label: string;
  port: number;
  child?: Deno.ChildProcess;
  wrapperPid?: number;
  pid?: number;
  errFile?: string;
  failed?: string;
  results: Result[];
}

async function ensurePackages(): Promise<void> {
  const missing: string[] = [];
  if (!(await which("danted"))) missing.push("dante-server");
  if (!(await which("cc")) && !(await which("gcc"))) missing.push("gcc");
  if (!(await which("taskset"))) missing.push("util-linux");
  await aptInstall(missing, log);
}

async function startProxy(row: Row, tmp: string, nofile: number | undefined): Promise<void> {
  row.port = freePort();
  row.errFile = `${tmp}/${row.id}.stderr`;
  let command: ProxyCommand;
  if (row.id === "dante") {
    command = await danteCommand(tmp, row.port, [
      "socks pass {",
      "  from: 127.0.0.0/8 to: 0.0.0.0/0",
      "  command: udpassociate",
      "}",
      "socks pass {",
      "  from: 0.0.0.0/0 to: 127.0.0.0/8",
      "  command: udpreply",
      "}",
    ]);
  } else {
    const cmd = [
      Deno.execPath(),
      "run",
      ...ferryRunFlags(),
      "src/main.ts",
      "socks",
      "--listen",
      `127.0.0.1:${row.port}`,
      "--log-level",
      "warn",
    ];
    command = { cmd, cwd: ROOT };
  }
  const failed = await startWrapped(row, {
    ...command,
    expect: row.id === "dante" ? "danted" : "deno",
    port: row.port,
    errFile: row.errFile,
    budgetSeconds: PROXY_BUDGET_SECONDS,
    nofile,
  });
  if (failed) row.failed = failed;
}

// ---------------------------------------------------------------------------
// Echo server and client runs

interface Echo {
  child: Deno.ChildProcess;
  stdin: WritableStreamDefaultWriter<Uint8Array>;
  port: number;
}

async function startEcho(): Promise<Echo> {
  const child = new Deno.Command("taskset", {
    args: ["-c", GEN_CORE, LOADGEN, "echo", "--max-seconds", String(PROXY_BUDGET_SECONDS)],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const ports = await readPorts(new Lines(child.stdout), 10_000);
  if (ports === null) throw new Error("udp_loadgen echo did not start");
  const port = ports.echo;
  if (!port) throw new Error("udp_loadgen echo did not print its port");
  return { child, stdin: child.stdin.getWriter(), port };
}

async function measure(row: Row, echo: Echo, rate: number, seconds: number): Promise<Result> {
  const child = new Deno.Command("taskset", {
    args: [
      "-c",
      GEN_CORE,
      LOADGEN,
      "client",
      "--proxy",
      row.id === "direct" ? "none" : `127.0.0.1:${row.port}`,
      "--echo-port",
      String(echo.port),
      "--rate",
      String(rate),
      "--seconds",
      String(seconds),
      "--warmup",
      String(WARMUP_SECONDS),
      "--payload",
      String(PAYLOAD),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const marked = await readMarked(
    child,
    (seconds + WARMUP_SECONDS + 20) * 1000,
    () => sample(row.pid),
  );
  const { start: a, end: b } = marked;
  const json = marked.json as Record<string, number | string> | null;
  const c = await sample(undefined);
  const stderr = marked.stderr.trim();
  const nan = NaN;
  const failed = (error: string): Result => ({
    rate,
    sent: 0,
    received: 0,
    loss: nan,
    replies: nan,
    p50Ms: nan,
    p99Ms: nan,
    bad: 0,
    sendErrors: 0,
    rcvbufDrops: nan,
    proxyCpu: nan,
    core1Busy: nan,
    otherCpu: nan,
    error,
  });
  if (!json) return failed(stderr || "no result");
  if (typeof json.error === "string") return failed(json.error);
  const j = json as Record<string, number>;
  const wall = a && b ? (b.t - a.t) / 1000 : nan;
  return {
    rate,
    sent: j.sent ?? 0,
    received: j.received ?? 0,
    loss: j.loss ?? nan,
    replies: j.rate ?? nan,
    p50Ms: (j.p50_us ?? nan) / 1000,
    p99Ms: (j.p99_us ?? nan) / 1000,
    bad: (j.bad ?? 0) + (j.dup ?? 0),
    sendErrors: j.send_errors ?? 0,
    rcvbufDrops: a && c ? (c.snmp.RcvbufErrors ?? 0) - (a.snmp.RcvbufErrors ?? 0) : nan,
    proxyCpu: a && b && row.pid !== undefined
      ? (b.proxyTicks - a.proxyTicks) / CLK_TCK / wall
      : nan,
    core1Busy: a && b
      ? (b.core1.busy - a.core1.busy) / Math.max(1, b.core1.total - a.core1.total)
      : nan,
    otherCpu: a && b ? foreignCpu(a, b) : nan,
  };
}

// ---------------------------------------------------------------------------
// Report

const pct = (x: number, digits = 0) => (Number.isFinite(x) ? `${(x * 100).toFixed(digits)}%` : "—");

function report(
  rows: Row[],
  seconds: number,
  info: string[],
  notQuiet: string | null,
  repeated: number,
): string {
  const out: string[] = [...info, ""];
  if (notQuiet) {
    out.push(
      `**Warning: the machine was busy before this run** (${notQuiet}); figures are low and noisy.`,
      "",
    );
  }
  out.push(
    `Settings: ${PAYLOAD}-byte payloads at a fixed offered rate, ${SECONDS} s measured per run ` +
      `after a ${WARMUP_SECONDS} s warm-up, replies awaited 0.5 s after the window; one ` +
      `association per run. Total run time ${Math.round(seconds)} s.`,
    "",
  );
  const header = [
    "",
    "offered/s",
    "sent",
    "replies",
    "loss",
    "replies/s",
    "p50 RTT ms",
    "p99 RTT ms",
    "kernel rcvbuf drops",
    "proxy CPU (core 1)",
    "core 1 busy",
    "other processes CPU",
  ];
  out.push(
    ...table(
      header,
      rows.flatMap((r) =>
        r.failed && r.results.length === 0
          ? [[`${r.label} (failed)`, ...header.slice(1).map(() => "—")]]
          : r.results.map((x) => [
            x.error ? `${r.label} (failed)` : r.label,
            fmt(x.rate),
            fmt(x.sent),
            fmt(x.received),
            pct(x.loss, 2),
            fmt(x.replies),
            fmt(x.p50Ms, 2),
            fmt(x.p99Ms, 2),
            fmt(x.rcvbufDrops),
            r.id === "direct" ? "n/a" : pct(x.proxyCpu),
            pct(x.core1Busy),
            pct(x.otherCpu),
          ])
      ),
    ),
  );
  const notes: string[] = [];
  for (const r of rows) {
    if (r.failed) notes.push(`- ${r.label}: ${r.failed.replace(/\s+/g, " ").slice(0, 400)}`);
    for (const x of r.results) {
      if (x.error) notes.push(`- ${r.label} at ${fmt(x.rate)}/s: ${x.error.slice(0, 300)}`);
      if (x.sendErrors > 0) {
        notes.push(`- ${r.label} at ${fmt(x.rate)}/s: ${fmt(x.sendErrors)} sends failed`);
      }
      if (x.bad > 0) {
        notes.push(
          `- ${r.label} at ${fmt(x.rate)}/s: ${fmt(x.bad)} malformed or duplicate replies`,
        );
      }
    }
  }
  const worst = Math.max(
    0,
    ...rows.flatMap((r) => r.results.map((x) => x.otherCpu)).filter(Number.isFinite),
  );
  if (worst > OTHER_CPU_LIMIT) {
    notes.push(
      `- **Other processes used up to ${pct(worst)} of a core during a measured window**, so ` +
        "some figures are low and noisy. Run again on a quiet machine.",
    );
  }
  if (repeated > 0) {
    notes.push(`- ${repeated} run(s) were repeated because other processes used the CPU.`);
  }
  if (notes.length) out.push("", "Notes:", "", ...notes);
  return out.join("\n");
}

async function machineInfo(): Promise<string[]> {
  const first = async (cmd: string[]) =>
    (await run(cmd, { allowFail: true })).stdout.split("\n")[0]?.trim() ?? "";
  const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => ""))
    .match(/^model name\s*:\s*(.*)$/m)?.[1] ?? "unknown CPU";
  return [
    `Measured ${new Date().toISOString().slice(0, 10)} on ${cpu}, ` +
    `${navigator.hardwareConcurrency} cores; ${await first(["uname", "-sr"])}; ` +
    `deno ${Deno.version.deno}; ${
      (await first(["danted", "-v"])).split(/\s{2,}/)[0]?.replace(/\.$/, "") || "danted"
    }.`,
  ];
}

const METHOD = [
  "## UDP relay",
  "",
  "`deno run --allow-all bench/udp_bench.ts` measures UDP ASSOCIATE relaying for ferry, Dante",
  "(`danted`) and no proxy (`direct`). The proxy runs on core 1; a C load generator",
  "(bench/udp_loadgen.c) on core 0 opens one association and sends 64-byte payloads, each in a",
  "SOCKS UDP header, at a fixed offered rate to the relay, which forwards them to a UDP echo",
  "server (also on core 0) and relays the echoes back. Loss counts datagrams with no reply.",
].join("\n");

/** Prints the report and writes it into BENCHMARKS.md (see UDP_BENCH_WRITE). */
function publish(section: string): Promise<void> {
  return publishSection(section, {
    start: START,
    end: END,
    newFile: "# Benchmarks\n",
    heading: `${METHOD}\n\n`,
    write: WRITE_DOC,
    log,
  });
}

// ---------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const started = performance.now();
  if (navigator.hardwareConcurrency < 2) throw new Error("needs 2 cores");
  await ensurePackages();
  await compileC(`${ROOT}/bench/udp_loadgen.c`, LOADGEN);
  // As bench/bench.ts does: a high open-files limit, so ferry does not warn
  // (but where 65536 is refused, the limit ferry inherits).
  const nofile = (await run(["prlimit", "--nofile=65536:65536", "true"], { allowFail: true }))
      .code === 0
    ? 65536
    : undefined;
  await run(["taskset", "-a", "-p", "-c", GEN_CORE, String(Deno.pid)], { allowFail: true });

  const wanted = (env("UDP_BENCH_ROWS") ?? "direct,ferry,dante").split(",").map((s) => s.trim());
  const rows: Row[] = ([
    { id: "direct", label: "direct", port: 0, results: [] },
    { id: "ferry", label: "ferry", port: 0, results: [] },
    { id: "dante", label: "dante", port: 0, results: [] },
  ] as Row[]).filter((r) => wanted.includes(r.id));
  const tmp = await Deno.makeTempDir({ prefix: "ferry-udp-bench-" });
  await Deno.chmod(tmp, 0o755);
  let echo: Echo | undefined;
  const cleanup = async () => {
    for (const r of rows) await stopWrapped(r).catch(() => undefined);
    if (echo) await stopServer(echo);
    echo = undefined;
  };
  const removeSignalListeners = exitOnSignal(cleanup, log);

  let notQuiet: string | null = null;
  let repeated = 0;
  try {
    notQuiet = await waitForQuiet(QUICK ? 5 : 30);
    echo = await startEcho();
    log(`echo server on 127.0.0.1:${echo.port}`);
    for (const row of rows) {
      if (row.id !== "direct") {
        log(`starting ${row.label}`);
        await startProxy(row, tmp, nofile);
        if (row.failed) {
          log(`${row.label} failed: ${row.failed}`);
          continue;
        }
        // Warm-up and smoke test: one short run at the lowest rate.
        const warm = await measure(row, echo, RATES[0] ?? 20000, 1);
        if (warm.error || warm.received === 0) {
          row.failed = `warm-up: ${warm.error ?? "no replies"}; ${await readTail(row.errFile!)}`;
          log(`${row.label} failed: ${row.failed}`);
          await stopWrapped(row);
          continue;
        }
      }
      for (const rate of RATES) {
        let r = await measure(row, echo, rate, SECONDS);
        // Other people's processes skew the figures: wait and repeat, twice at most.
        for (let retry = 0; retry < 2 && r.otherCpu > OTHER_CPU_LIMIT; retry++) {
          log(
            `${row.label} @ ${fmt(rate)}/s disturbed (other processes ${pct(r.otherCpu)}); again`,
          );
          repeated++;
          await waitForQuiet(QUICK ? 5 : 15);
          r = await measure(row, echo, rate, SECONDS);
        }
        row.results.push(r);
        log(
          `${row.label} @ ${fmt(rate)}/s: ${
            r.error ??
              `${fmt(r.replies)} replies/s, loss ${pct(r.loss, 2)}, p50 ${
                fmt(r.p50Ms, 2)
              } ms, proxy CPU ${pct(r.proxyCpu)}`
          }`,
        );
      }
      if (row.errFile) {
        const text = (await readTail(row.errFile, 2000)).split("\n")
          .filter((l) => l.trim() !== "" && !l.includes('"listening"'));
        if (row.id === "ferry" && text.length) log(`ferry stderr: ${text.slice(0, 5).join(" | ")}`);
      }
      await stopWrapped(row);
    }
  } finally {
    await cleanup();
    removeSignalListeners();
    await Deno.remove(tmp, { recursive: true }).catch(() => undefined);
  }

  const section = report(
    rows,
    (performance.now() - started) / 1000,
    await machineInfo(),
    notQuiet,
    repeated,
  );
  await publish(section);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
