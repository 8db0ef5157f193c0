/**
 * The port-forwarder benchmark: `ferry forward` with and without its warm
 * pool, side by side with HAProxy (TCP mode) and socat, and with no forwarder
 * at all, on this machine, in one run:
 *
 *     deno run --allow-all bench/forward_bench.ts
 *
 * 1. Time to first byte over a slow link. The upstream runs in a network
 *    namespace this bench creates, joined to the host by two TUN devices and
 *    bench/delay_link.c, which copies packets between them after a fixed
 *    one-way delay (10 ms: a 20 ms round trip; there is no `tc netem` here).
 *    Sequential sessions through ferry on 127.0.0.1 measure connect() to the
 *    first byte of the response, `--pool 4` against `--pool 0` (with direct
 *    and haproxy rows for reference).
 * 2. Forwarding sessions per second (50 at a time, 64-byte echo) and
 *    one-stream download MiB/s on loopback, for direct, ferry --pool 4,
 *    ferry --pool 0, haproxy and socat. Each forwarder runs pinned to core 1
 *    (`taskset -c 1`); load generator, targets and this driver run on core 0.
 *
 * Load generators and targets are small C programs compiled here with
 * `cc -O2` into bench/out/: bench/loadgen.c (the SOCKS bench's, for its
 * `sessions` mode), bench/forward_client.c (an echo target that may run inside
 * the namespace and turns into a source when asked, TTFB, RTT and download
 * clients) and bench/delay_link.c.
 *
 * Network rule: traffic goes only to 127.0.0.1 and to the namespace this
 * bench creates (10.200.x.0/30, private, on two TUN devices it owns). Every
 * process is bounded in time (`timeout`, alarms); only PIDs this bench started
 * are signalled; the namespace and devices are removed at the end, also on
 * failure or Ctrl-C.
 *
 * Prints Markdown and writes it into BENCHMARKS.md between
 * `<!-- forward-bench:start -->` and `<!-- forward-bench:end -->`.
 *
 * Environment (all optional):
 *   FORWARD_BENCH_QUICK=1           short run for trying the harness (does not
 *                                   write the file unless FORWARD_BENCH_WRITE=1);
 *                                   BENCH_QUICK=1 does the same, so that
 *                                   `BENCH_QUICK=1 make bench` is quick throughout
 *   FORWARD_BENCH_PARTS=ttfb,load   which parts to run (default both)
 *   FORWARD_BENCH_ROWS=a,b          part 2 rows: direct, ferry-pool4,
 *                                   ferry-pool0, haproxy, socat
 *   FORWARD_BENCH_ROUNDS=n          part 2 rounds (default 3)
 *   FORWARD_BENCH_SESSION_SECONDS=s measured seconds per session run (4)
 *   FORWARD_BENCH_DOWNLOAD_SECONDS=s measured seconds per download run (3)
 *   FORWARD_BENCH_TTFB_SESSIONS=n   sessions per TTFB row (default 200)
 *   FORWARD_BENCH_TTFB_PAUSE_MS=ms  pause between TTFB sessions (default 25)
 *   FORWARD_BENCH_DELAY_MS=ms       one-way delay of the link (default 10)
 *   FORWARD_BENCH_QUIET_WAIT=s      how long, in all, to wait for an idle machine (60)
 *   FORWARD_BENCH_REPEATS=n         how many disturbed runs, in all, to measure
 *                                   again (default 6); both keep a busy machine
 *                                   from stretching the run much past 5 minutes
 *   FORWARD_BENCH_LOADGEN_C=path    loadgen.c to build (default
 *                                   bench/loadgen.c)
 *   FORWARD_BENCH_WRITE=0|1         write BENCHMARKS.md or not
 *
 * @module
 */
import {
  CLK_TCK,
  compileC,
  dpkgVersion,
  endChild,
  env,
  fdLimit,
  ferryRunFlags,
  firstLine,
  fmt,
  GEN_CORE,
  killChild,
  Lines,
  machineLines,
  medianRun,
  num,
  OUT,
  pct,
  publishSection,
  ratio,
  readPorts,
  readStat,
  readTail,
  ROOT,
  run as runCommand,
  sleep,
  spread,
  startWrapped,
  stopServer as stopTargets,
  stopWrapped,
  table,
  which,
} from "./_common.ts";
import {
  busyWarning,
  type Client,
  type CpuWindow,
  type DownloadResult,
  foreignCpu,
  medianMibs,
  medianRate,
  OTHER_CPU_LIMIT,
  pinnedClient,
  runDownload,
  runSessions,
  sample,
  type SampleOptions,
  type SessionResult,
  undisturbed as undisturbedBy,
  waitForQuiet as waitForQuietBy,
  warmUpFailure,
} from "./_measure.ts";

const LOADGEN = `${OUT}/forward_loadgen`;
const CLIENT = `${OUT}/forward_client`;
const DELAY_LINK = `${OUT}/delay_link`;
const START = "<!-- forward-bench:start -->";
const END = "<!-- forward-bench:end -->";

const QUICK = env("FORWARD_BENCH_QUICK") === "1" || env("BENCH_QUICK") === "1";
const PARTS = (env("FORWARD_BENCH_PARTS") ?? "ttfb,load").split(",").map((s) => s.trim());
const ROUNDS = Math.round(num("FORWARD_BENCH_ROUNDS", QUICK ? 1 : 3));
const SESSION_SECONDS = num("FORWARD_BENCH_SESSION_SECONDS", QUICK ? 1.5 : 4);
const DOWNLOAD_SECONDS = num("FORWARD_BENCH_DOWNLOAD_SECONDS", QUICK ? 1.5 : 3);
const TTFB_SESSIONS = Math.round(num("FORWARD_BENCH_TTFB_SESSIONS", QUICK ? 40 : 200));
const TTFB_PAUSE_MS = num("FORWARD_BENCH_TTFB_PAUSE_MS", 25);
const TTFB_ROUNDS = 4; // rows alternate in this many slices, so drift hits all alike
const DELAY_MS = num("FORWARD_BENCH_DELAY_MS", 10);
const RTT_MS = 2 * DELAY_MS;
const CONCURRENCY = 50;
const WARMUP_SECONDS = 0.5;
const PAYLOAD = 64;
const POOL = 4;
const WRITE_DOC = env("FORWARD_BENCH_WRITE") === undefined
  ? !QUICK
  : env("FORWARD_BENCH_WRITE") === "1";
/** Forwarders and targets run under `timeout` / alarms with this budget. */
const BUDGET_SECONDS = 900;
/** Other processes' CPU time is their own, without reaped children (see SampleOptions). */
const SAMPLING: SampleOptions = { reapedChildren: false };

// ---------------------------------------------------------------------------
// Small helpers

const log = (text: string) => console.error(`forward-bench: ${text}`);

/**
 * Set on SIGINT/SIGTERM. From then on nothing new is started (spawn and run
 * throw), so the main flow unwinds through its `finally` blocks, which stop
 * what was started, one step at a time.
 */
let stopping = false;

class Interrupted extends Error {
  constructor() {
    super("interrupted");
  }
}

/** Short-lived clients (load generators, probes): killed at once on interrupt. */
const liveClients = new Set<Deno.ChildProcess>();

/** Spawns a child, unless the bench is stopping. */
function spawn(
  program: string,
  options: Deno.CommandOptions,
  kind: "client" | "service",
): Deno.ChildProcess {
  if (stopping) throw new Interrupted();
  const child = new Deno.Command(program, options).spawn();
  if (kind === "client") {
    liveClients.add(child);
    const forget = () => liveClients.delete(child);
    child.status.then(forget, forget);
  }
  return child;
}

/** {@linkcode runCommand}, refused once the bench is stopping (teardown commands excepted). */
function run(
  cmd: string[],
  options: { allowFail?: boolean; env?: Record<string, string>; teardown?: boolean } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  if (stopping && !options.teardown) return Promise.reject(new Interrupted());
  return runCommand(cmd, options);
}

/** Nearest-rank percentile (p in 0..1). */
function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const rank = Math.max(1, Math.ceil(p * sorted.length));
  return sorted[Math.min(sorted.length, rank) - 1]!;
}

async function freePort(): Promise<number> {
  // Port 0 can fail for a moment when other programs have used up the range.
  for (let tries = 0;; tries++) {
    try {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = (listener.addr as Deno.NetAddr).port;
      listener.close();
      return port;
    } catch (error) {
      if (tries >= 50) throw error;
      await sleep(200);
    }
  }
}

// ---------------------------------------------------------------------------
// Waiting for quiet

/** What is left of the run's budget for waiting for quiet, in ms. */
let quietBudgetMs = num("FORWARD_BENCH_QUIET_WAIT", QUICK ? 5 : 60) * 1000;
/** What is left of the run's budget of repeated (disturbed) measurements. */
let repeatsLeft = Math.round(num("FORWARD_BENCH_REPEATS", 6));

/** Takes one repeat from the run's budget; false when none is left. */
function takeRepeat(): boolean {
  if (repeatsLeft <= 0) return false;
  repeatsLeft--;
  return true;
}

/**
 * Waits until both cores are nearly idle, drawing on the run's budget
 * (FORWARD_BENCH_QUIET_WAIT s in all). Returns null when quiet, or what it
 * saw when the budget ran out.
 */
async function waitForQuiet(): Promise<string | null> {
  const started = Date.now();
  const what = await waitForQuietBy({
    ...SAMPLING,
    timeoutMs: Math.max(0, quietBudgetMs),
    log,
    check: () => {
      if (stopping) throw new Interrupted();
    },
  });
  quietBudgetMs -= Date.now() - started;
  return what;
}

// ---------------------------------------------------------------------------
// Setup: packages, compiler, fd limit

async function ensurePackages(): Promise<void> {
  const missing = new Set<string>();
  if (!(await which("haproxy"))) missing.add("haproxy");
  if (!(await which("socat"))) missing.add("socat");
  if (!(await which("cc")) && !(await which("gcc"))) missing.add("gcc");
  for (const tool of ["taskset", "prlimit"]) if (!(await which(tool))) missing.add("util-linux");
  if (!(await which("ip"))) missing.add("iproute2");
  if (missing.size === 0) return;
  log(`installing ${[...missing].join(" ")} with apt-get`);
  const aptEnv = { ...Deno.env.toObject(), DEBIAN_FRONTEND: "noninteractive" };
  await run(["apt-get", "update", "-q"], { allowFail: true, env: aptEnv });
  const result = await run(["apt-get", "install", "-y", "-q", ...missing], {
    allowFail: true,
    env: aptEnv,
  });
  if (result.code !== 0) {
    log(`apt-get install ${[...missing].join(" ")} failed:\n${result.stderr.trim()}`);
  }
}

async function loadgenSource(): Promise<string | null> {
  const candidates = [
    env("FORWARD_BENCH_LOADGEN_C"),
    `${ROOT}/bench/loadgen.c`,
  ];
  for (const path of candidates) {
    if (!path) continue;
    try {
      if ((await Deno.stat(path)).isFile) return path;
    } catch {
      // not there
    }
  }
  return null;
}

async function compile(): Promise<{ loadgen: string | null }> {
  await compileC(`${ROOT}/bench/forward_client.c`, CLIENT);
  await compileC(`${ROOT}/bench/delay_link.c`, DELAY_LINK);
  const src = await loadgenSource();
  if (src) await compileC(src, LOADGEN);
  return { loadgen: src };
}

// ---------------------------------------------------------------------------
// Target servers (forward_client serve, on core 0; on the host or in the namespace)

interface Targets {
  child: Deno.ChildProcess;
  stdin: WritableStreamDefaultWriter<Uint8Array>;
  echo: number; // closes after echoing PAYLOAD bytes; a source if the first byte is "G"
  echoOpen: number; // closes on EOF only
}

async function startTargets(nofile: number, bind: string, netns?: string): Promise<Targets> {
  const inner = [
    "prlimit",
    `--nofile=${nofile}:${nofile}`,
    "taskset",
    "-c",
    GEN_CORE,
    CLIENT,
    "serve",
    "--bind",
    bind,
    "--echo-close-after",
    String(PAYLOAD),
    "--max-seconds",
    String(BUDGET_SECONDS),
  ];
  // `ip netns exec` execs its command, so the child's PID is the server's.
  const cmd = netns ? ["ip", "netns", "exec", netns, ...inner] : inner;
  const child = spawn(cmd[0]!, {
    args: cmd.slice(1),
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }, "service");
  const stdin = child.stdin.getWriter();
  const lines = new Lines(child.stdout);
  const ports = await readPorts(lines, 15_000);
  if (ports === null) {
    await stopTargets({ child, stdin });
    throw new Error(`forward_client serve on ${bind} did not start`);
  }
  const echo = ports["echo"], echoOpen = ports["echo-open"];
  if (!echo || !echoOpen) throw new Error("forward_client serve did not print its ports");
  return { child, stdin, echo, echoOpen };
}

// ---------------------------------------------------------------------------
// Forwarders (each under `timeout`, pinned to core 1)

type RowId = "direct" | "ferry-pool4" | "ferry-pool0" | "haproxy" | "socat";

interface Forwarder {
  id: RowId;
  label: string;
  port: number;
  child?: Deno.ChildProcess;
  wrapperPid?: number; // the `timeout` process
  pid?: number; // the forwarder itself
  errFile?: string;
  failed?: string;
}

const LABELS: Record<RowId, string> = {
  "direct": "direct (no forwarder)",
  "ferry-pool4": `ferry forward --pool ${POOL}`,
  "ferry-pool0": "ferry forward --pool 0",
  "haproxy": "haproxy (mode tcp, nbthread 1)",
  "socat": "socat (fork)",
};

async function startForwarder(
  f: Forwarder,
  to: string,
  tmp: string,
  nofile: number,
  tag: string,
): Promise<void> {
  f.port = await freePort();
  f.errFile = `${tmp}/${f.id}${tag}.stderr`;
  delete f.failed;
  let cmd: string[];
  let expect: string;
  if (f.id === "haproxy") {
    const conf = `${tmp}/haproxy${tag}.cfg`;
    await Deno.writeTextFile(
      conf,
      [
        "global",
        "  nbthread 1",
        // Each connection needs two descriptors; haproxy refuses to start
        // if maxconn needs more than the hard limit allows.
        `  maxconn ${Math.min(20000, Math.floor((nofile - 200) / 2))}`,
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 60s",
        "  timeout server 60s",
        "frontend fwd",
        `  bind 127.0.0.1:${f.port}`,
        "  default_backend upstream",
        "backend upstream",
        `  server s1 ${to}`,
        "",
      ].join("\n"),
    );
    cmd = [(await which("haproxy")) ?? "haproxy", "-db", "-f", conf]; // -db: foreground
    expect = "haproxy";
  } else if (f.id === "socat") {
    // bind=: loopback only; backlog=: socat's default listen backlog is 5,
    // which would make 50 simultaneous connects wait for SYN retransmits.
    cmd = [
      (await which("socat")) ?? "socat",
      `TCP-LISTEN:${f.port},bind=127.0.0.1,fork,reuseaddr,backlog=1024`,
      `TCP:${to}`,
    ];
    expect = "socat";
  } else {
    cmd = [
      Deno.execPath(),
      "run",
      ...ferryRunFlags(),
      "src/main.ts",
      "forward",
      "--listen",
      `127.0.0.1:${f.port}`,
      "--to",
      to,
      "--pool",
      f.id === "ferry-pool4" ? String(POOL) : "0",
      "--pool-max-idle",
      "30s",
      "--log-level",
      "warn",
      "--log-format",
      "json",
      "--max-conns",
      "20000",
      "--max-conns-per-ip",
      "20000",
    ];
    expect = "deno";
  }
  const failed = await startWrapped(f, {
    cmd,
    expect,
    port: f.port,
    errFile: f.errFile,
    budgetSeconds: BUDGET_SECONDS,
    nofile,
    cwd: ROOT,
    spawn: (program, options) => spawn(program, options, "service"),
  });
  if (failed) f.failed = failed;
}

/**
 * What a forwarder wrote to stderr besides ferry's start-up line, for the
 * report. ferry's "nofile-low" start-up warning is left out and counted
 * apart: it is about this machine's hard limit, not about forwarding.
 */
async function stderrNotes(f: Forwarder): Promise<string[]> {
  if (!f.errFile) return [];
  const text = await Deno.readTextFile(f.errFile).catch(() => "");
  const lines = text.split("\n").filter((l) => l.trim() !== "" && !l.includes('"listening"'));
  const low = lines.filter((l) => l.includes('"event":"nofile-low"'));
  if (low.length) nofileLow.add(low[0]!.match(/"limit":(\d+)/)?.[1] ?? "?");
  return lines.filter((l) => !l.includes('"event":"nofile-low"'));
}

/** Open-files limits ferry warned about at start. */
const nofileLow = new Set<string>();

// ---------------------------------------------------------------------------
// Part 1: the delay link and time to first byte

interface Link {
  ns: string;
  devA: string;
  devB: string;
  hostAddr: string;
  nsAddr: string;
  child?: Deno.ChildProcess;
  stdin?: WritableStreamDefaultWriter<Uint8Array>;
  lines?: Lines;
  nsAdded: boolean;
  stats?: Record<string, number>;
}

/** A 10.200.x.0/30 that nothing on the host uses yet. */
async function freeSubnet(): Promise<number> {
  const addrs = (await run(["ip", "-4", "-o", "addr", "show"])).stdout;
  const routes = (await run(["ip", "-4", "route", "show", "table", "all"])).stdout;
  for (let x = 0; x < 256; x++) {
    const re = new RegExp(`\\b10\\.200\\.${x}\\.`);
    if (!re.test(addrs) && !re.test(routes)) return x;
  }
  throw new Error("no free 10.200.x.0/30 subnet");
}

/** Creates the namespace, the two TUN devices and the delay program. Throws on failure. */
async function startLink(link: Link): Promise<void> {
  if (stopping) throw new Interrupted();
  link.nsAdded = true; // before it exists: stopLink may then try to delete a missing one, never leak one
  await run(["ip", "netns", "add", link.ns]);
  link.child = spawn("taskset", {
    args: [
      "-c",
      GEN_CORE,
      DELAY_LINK,
      "--dev-a",
      link.devA,
      "--dev-b",
      link.devB,
      "--delay-ms",
      String(DELAY_MS),
      "--max-seconds",
      String(BUDGET_SECONDS),
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }, "service");
  link.stdin = link.child.stdin.getWriter();
  link.lines = new Lines(link.child.stdout);
  const stderr = new Response(link.child.stderr).text();
  const ready = await link.lines.next(10_000);
  if (ready !== "ready") {
    await link.child.status;
    throw new Error(`delay_link did not start: ${(await stderr).trim() || "no output"}`);
  }
  const inNs = (args: string[]) => run(["ip", "netns", "exec", link.ns, "ip", ...args]);
  await run(["ip", "link", "set", link.devB, "netns", link.ns]);
  await run(["ip", "addr", "add", link.hostAddr, "peer", link.nsAddr, "dev", link.devA]);
  await run(["ip", "link", "set", link.devA, "up"]);
  await inNs(["link", "set", "lo", "up"]);
  await inNs(["addr", "add", link.nsAddr, "peer", link.hostAddr, "dev", link.devB]);
  await inNs(["link", "set", link.devB, "up"]);
}

/** Stops the delay program (its devices go with it) and deletes the namespace. */
async function stopLink(link: Link): Promise<void> {
  if (link.child) {
    await link.stdin?.close().catch(() => undefined); // EOF: prints its stats and exits
    const last = await link.lines?.next(3000);
    if (last?.startsWith("{")) {
      try {
        link.stats = JSON.parse(last);
      } catch {
        // leave it out
      }
    }
    await endChild(link.child);
    delete link.child;
  }
  // The devices vanish with the program's file descriptors; make sure.
  for (const dev of [link.devA, link.devB]) {
    const shown = await run(["ip", "link", "show", "dev", dev], {
      allowFail: true,
      teardown: true,
    });
    if (shown.code === 0) {
      await run(["ip", "link", "del", "dev", dev], { allowFail: true, teardown: true });
    }
  }
  if (link.nsAdded) {
    const del = await run(["ip", "netns", "del", link.ns], { allowFail: true, teardown: true });
    if (del.code !== 0) log(`could not delete namespace ${link.ns}: ${del.stderr.trim()}`);
    link.nsAdded = false;
  }
}

/** Runs a forward_client mode on core 0 and returns its last JSON line. */
async function clientJson(
  args: string[],
  timeoutMs: number,
): Promise<Record<string, unknown> | string> {
  const child = spawn("taskset", {
    args: ["-c", GEN_CORE, CLIENT, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }, "client");
  const stderr = new Response(child.stderr).text();
  const lines = new Lines(child.stdout);
  let json: Record<string, unknown> | null = null;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = await lines.next(Math.max(1, deadline - Date.now()));
    if (line === null) break;
    if (line.startsWith("{")) json = JSON.parse(line);
  }
  if (json === null) killChild(child);
  await child.status;
  return json ?? `${args[0]} failed: ${(await stderr).trim() || "no result"}`;
}

interface Stats {
  n: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

function statsOf(values: number[]): Stats {
  return {
    n: values.length,
    min: values.length ? Math.min(...values) : NaN,
    p50: percentile(values, 0.5),
    p90: percentile(values, 0.9),
    p99: percentile(values, 0.99),
    max: values.length ? Math.max(...values) : NaN,
    mean: values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN,
  };
}

interface TtfbRow {
  id: "direct" | "ferry-pool4" | "ferry-pool0" | "haproxy";
  label: string;
  samples: number[]; // connect() start to first response byte, ms
  errors: number;
  repeats: number; // slices measured again because other processes disturbed them
  disturbed: number; // most CPU other processes used in a kept slice (0 if none above 10%)
  failed?: string;
  notes: string[];
}

interface TtfbResult {
  error?: string;
  notQuiet?: string;
  link?: Link;
  rtt?: { connect: Stats; ping: Stats; errors: number };
  rows: TtfbRow[];
}

async function measureTtfb(nofile: number, tmp: string): Promise<TtfbResult> {
  const result: TtfbResult = { rows: [] };
  const x = await freeSubnet();
  const tag = String(Deno.pid % 100000);
  const link: Link = {
    ns: `ferry-fwdbench-${Deno.pid}`,
    devA: `fwdA${tag}`,
    devB: `fwdB${tag}`,
    hostAddr: `10.200.${x}.1`,
    nsAddr: `10.200.${x}.2`,
    nsAdded: false,
  };
  result.link = link;
  cleanups.push(() => stopLink(link));
  let upstream: Targets | undefined;
  const forwarders: Forwarder[] = [];
  try {
    try {
      await startLink(link);
    } catch (error) {
      result.error = `could not build the delay link (TUN devices + network namespace): ${
        (error as Error).message
      }`;
      return result;
    }
    log(
      `delay link up: host ${link.hostAddr} (${link.devA}) <-> ${link.nsAddr} (${link.devB} in ` +
        `netns ${link.ns}), ${DELAY_MS} ms each way`,
    );
    upstream = await startTargets(nofile, link.nsAddr, link.ns);
    const up = upstream;
    cleanups.push(() => stopTargets(up));

    // The link's round trip: TCP connect() time, and one-byte ping-pongs.
    const rtt = await clientJson(
      ["rtt", "--host", link.nsAddr, "--port", String(upstream.echoOpen), "--count", "30"],
      30_000,
    );
    if (typeof rtt === "string") {
      result.error = `the delay link does not carry traffic: ${rtt}`;
      return result;
    }
    result.rtt = {
      connect: rtt.connect_ms as Stats,
      ping: rtt.ping_ms as Stats,
      errors: Number(rtt.errors ?? 0),
    };
    log(
      `round trip: TCP connect p50 ${fmt(result.rtt.connect.p50, 2)} ms, ping-pong p50 ${
        fmt(result.rtt.ping.p50, 2)
      } ms (configured ${RTT_MS} ms)`,
    );
    const to = `${link.nsAddr}:${upstream.echo}`;

    // haproxy, which dials on demand, shows what another forwarder adds.
    const ids = ["direct", "ferry-pool4", "ferry-pool0", "haproxy"] as const;
    const rows: TtfbRow[] = ids.map((id) => ({
      id,
      label: LABELS[id],
      samples: [],
      errors: 0,
      repeats: 0,
      disturbed: 0,
      notes: [],
    }));
    result.rows = rows;
    const portOf = new Map<string, { host: string; port: number }>();
    portOf.set("direct", { host: link.nsAddr, port: upstream.echo });
    for (const row of rows) {
      if (row.id === "direct") continue;
      const f: Forwarder = { id: row.id, label: row.label, port: 0 };
      forwarders.push(f);
      cleanups.push(() => stopWrapped(f));
      await startForwarder(f, to, tmp, nofile, "-ttfb");
      if (f.failed) {
        row.failed = f.failed;
        log(`${row.label} failed: ${f.failed}`);
        continue;
      }
      portOf.set(row.id, { host: "127.0.0.1", port: f.port });
      // Warm-up (JIT, and the pool's first fill), not counted.
      const warm = await clientJson(
        ["ttfb", "--port", String(f.port), "--count", "30", "--pause-ms", "10"],
        60_000,
      );
      if (typeof warm === "string" || Number(warm.sessions) === 0) {
        row.failed = `warm-up failed: ${
          typeof warm === "string" ? warm : "no session"
        }; ${await readTail(
          f.errFile!,
        )}`;
        log(`${row.label}: ${row.failed}`);
      }
    }
    await sleep(500);

    // The rows take turns, in slices, so that any drift hits all of them. A
    // slice during which other processes used more than 10% of a core is
    // measured again once the machine is quiet (at most twice per slice).
    const perSlice = Math.max(1, Math.round(TTFB_SESSIONS / TTFB_ROUNDS));
    for (let slice = 0; slice < TTFB_ROUNDS; slice++) {
      for (const row of rows) {
        const target = portOf.get(row.id);
        if (row.failed || !target) continue;
        for (let tries = 0;;) {
          const before = await sample(undefined, undefined, SAMPLING);
          const r = await clientJson(
            [
              "ttfb",
              "--host",
              target.host,
              "--port",
              String(target.port),
              "--count",
              String(perSlice),
              "--pause-ms",
              String(TTFB_PAUSE_MS),
              "--payload",
              String(PAYLOAD),
            ],
            perSlice * (TTFB_PAUSE_MS + 3000) + 30_000,
          );
          if (typeof r === "string") {
            row.failed = r;
            log(`${row.label}: ${r}`);
            break;
          }
          const other = foreignCpu(before, await sample(undefined, undefined, SAMPLING));
          if (other > OTHER_CPU_LIMIT && tries < 2 && takeRepeat()) {
            tries++;
            row.repeats++;
            log(`${row.label}, slice ${slice + 1}: other processes used ${pct(other)}; again`);
            await waitForQuiet();
            continue;
          }
          if (other > OTHER_CPU_LIMIT) row.disturbed = Math.max(row.disturbed, other);
          const got = r.first_byte_samples_ms as number[];
          const connects = r.connect_samples_ms as number[];
          const slow = got.map((ms, i) => [i, ms] as const).filter(([, ms]) => ms > 5 * RTT_MS);
          if (slow.length) {
            log(
              `${row.label}, slice ${slice + 1}: ${slow.length} slow session(s): ${
                slow.map(([i, ms]) => `#${i} ${fmt(ms, 1)} ms (connect ${fmt(connects[i]!, 1)})`)
                  .join(", ")
              }`,
            );
          }
          row.samples.push(...got);
          row.errors += Number(r.errors ?? 0) + Number(r.short_reads ?? 0);
          break;
        }
      }
    }
    for (const row of rows) {
      const s = statsOf(row.samples);
      log(
        `TTFB ${row.label}: p50 ${fmt(s.p50, 2)} ms, p99 ${fmt(s.p99, 2)} ms ` +
          `(${s.n} sessions, ${row.errors} errors)`,
      );
    }
    for (const f of forwarders) {
      const row = rows.find((r) => r.id === f.id)!;
      row.notes = await stderrNotes(f);
    }
  } finally {
    for (const f of forwarders) await stopWrapped(f).catch(() => undefined);
    if (upstream) await stopTargets(upstream).catch(() => undefined);
    await stopLink(link).catch((e) => log(`tearing down the link: ${e}`));
  }
  return result;
}

// ---------------------------------------------------------------------------
// Part 2: sessions per second and one-stream download on loopback

interface LoadRow extends Forwarder {
  sessions: SessionResult[];
  downloads: DownloadResult[];
  notes: string[];
  repeats: number; // runs measured again because other processes disturbed them
}

/**
 * Runs a measurement; when other processes used more than 10% of a core
 * during its window, waits for the machine to be quiet and runs it again (at
 * most twice, within the run's budget of repeats). The last result counts.
 */
function undisturbed<T extends { cpu: CpuWindow }>(
  row: LoadRow,
  what: string,
  measure: () => Promise<T | string>,
): Promise<T | string> {
  return undisturbedBy(measure, async (otherCpu) => {
    if (!takeRepeat()) return false;
    row.repeats++;
    log(`${row.label} ${what}: other processes used ${pct(otherCpu)}; again`);
    await waitForQuiet();
    return true;
  });
}

/** Runs clients on core 0, sampling the target and the row's forwarder. */
const client = (targets: Targets, row: LoadRow, nofile: number): Client =>
  pinnedClient({
    ...SAMPLING,
    nofile,
    targetPid: targets.child.pid,
    proxyPid: row.pid,
    spawn: (program, options) => spawn(program, options, "client"),
  });

/** Where the client connects: the forwarder, or (direct) the target itself. */
const portFor = (row: LoadRow, targets: Targets) => row.id === "direct" ? targets.echo : row.port;

function measureSessions(
  targets: Targets,
  row: LoadRow,
  seconds: number,
  nofile: number,
): Promise<SessionResult | string> {
  // loadgen's `sessions` with --proxy none: connect to 127.0.0.1:P, send 64
  // bytes, read the 64-byte echo, close; P is the forwarder (or the target).
  return runSessions(
    client(targets, row, nofile),
    LOADGEN,
    ["--proxy", "none", "--target-port", String(portFor(row, targets))],
    { concurrency: CONCURRENCY, payload: PAYLOAD, seconds, warmupSeconds: WARMUP_SECONDS },
  );
}

function measureDownload(
  targets: Targets,
  row: LoadRow,
  seconds: number,
  nofile: number,
): Promise<DownloadResult | string> {
  return runDownload(
    client(targets, row, nofile),
    CLIENT,
    ["--port", String(portFor(row, targets))],
    { seconds, warmupSeconds: WARMUP_SECONDS },
  );
}

async function measureLoad(
  nofile: number,
  tmp: string,
  haveLoadgen: boolean,
): Promise<{ rows: LoadRow[]; notQuiet: string | null }> {
  const wanted = (env("FORWARD_BENCH_ROWS") ?? "direct,ferry-pool4,ferry-pool0,haproxy,socat")
    .split(",").map((s) => s.trim());
  const rows: LoadRow[] = (["direct", "ferry-pool4", "ferry-pool0", "haproxy", "socat"] as const)
    .filter((id) => wanted.includes(id))
    .map((id) => ({
      id,
      label: LABELS[id],
      port: 0,
      sessions: [],
      downloads: [],
      notes: [],
      repeats: 0,
    }));
  let targets: Targets | undefined;
  let notQuiet: string | null = null;
  try {
    targets = await startTargets(nofile, "127.0.0.1");
    const t = targets;
    cleanups.push(() => stopTargets(t));
    log(`loopback target: echo/source on 127.0.0.1:${t.echo}`);
    for (const row of rows) {
      if (row.id === "direct") continue;
      cleanups.push(() => stopWrapped(row));
      log(`starting ${row.label}`);
      await startForwarder(row, `127.0.0.1:${t.echo}`, tmp, nofile, "-load");
      if (row.failed) {
        log(`${row.label} failed: ${row.failed}`);
        continue;
      }
      // Warm-up (JIT, buffers); also a smoke test.
      const warm = haveLoadgen
        ? await measureSessions(t, row, QUICK ? 1 : 2, nofile)
        : { sessions: 1, errors: 0, rate: NaN };
      if (typeof warm === "string" || warm.sessions === 0) {
        row.failed = await warmUpFailure(warm, row.errFile!);
        log(`${row.label} failed: ${row.failed}`);
        continue;
      }
      const warmDl = await measureDownload(t, row, 1, nofile);
      if (typeof warmDl === "string") log(`${row.label}: warm-up ${warmDl}`);
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
        const s = haveLoadgen
          ? await undisturbed(
            row,
            "sessions",
            () => measureSessions(t, row, SESSION_SECONDS, nofile),
          )
          : "not measured: bench/loadgen.c not found";
        if (typeof s === "string") {
          if (haveLoadgen) {
            row.failed = s;
            log(`${row.label}: ${s}`);
            continue;
          }
        } else {
          row.sessions.push(s);
        }
        const d = await undisturbed(
          row,
          "download",
          () => measureDownload(t, row, DOWNLOAD_SECONDS, nofile),
        );
        if (typeof d === "string") {
          row.failed = d;
          log(`${row.label}: ${d}`);
          continue;
        }
        row.downloads.push(d);
        log(
          typeof s === "string"
            ? `round ${round} ${row.label}: ${fmt(d.mibPerS)} MiB/s`
            : `round ${round} ${row.label}: ${fmt(s.rate)} sessions/s (${s.errors} errors, ` +
              `gen ${pct(s.cpu.genCpu)}, fwd ${pct(s.cpu.proxyCpu)}), ${fmt(d.mibPerS)} MiB/s`,
        );
        if (row.pid !== undefined && (await readStat(row.pid)) === null) {
          row.failed = `the forwarder exited: ${await readTail(row.errFile ?? "")}`;
        }
      }
    }
  } finally {
    for (const row of rows) {
      row.notes = await stderrNotes(row);
      await stopWrapped(row).catch(() => undefined);
    }
    if (targets) await stopTargets(targets).catch(() => undefined);
  }
  return { rows, notQuiet };
}

// ---------------------------------------------------------------------------
// Report

const oneLine = (text: string, max = 400) => text.replace(/\s+/g, " ").trim().slice(0, max);

function ttfbReport(t: TtfbResult | null): string[] {
  const out: string[] = ["### 1. Time to first byte over a 20 ms round trip", ""];
  if (!t) return [...out, "Not run (FORWARD_BENCH_PARTS).", ""];
  if (t.error && t.rows.length === 0) {
    return [...out, `**Not measured:** ${oneLine(t.error, 800)}`, ""];
  }
  if (t.notQuiet) {
    out.push(
      `**Warning: the machine was not idle when this part started** (${t.notQuiet}); ` +
        "scheduling delays may show up in the tail.",
      "",
    );
  }
  const link = t.link;
  const st = link?.stats;
  if (t.rtt) {
    out.push(
      `Link check: configured one-way delay ${DELAY_MS} ms (round trip ${RTT_MS} ms). ` +
        `Measured from the host to the namespace: TCP connect() p50 ${
          fmt(t.rtt.connect.p50, 2)
        } ms (min ${fmt(t.rtt.connect.min, 2)}, p99 ${fmt(t.rtt.connect.p99, 2)}), ` +
        `one-byte ping-pong on an open connection p50 ${fmt(t.rtt.ping.p50, 2)} ms (min ${
          fmt(t.rtt.ping.min, 2)
        }, p99 ${fmt(t.rtt.ping.p99, 2)})` +
        (t.rtt.errors ? `, ${t.rtt.errors} errors` : "") + ".",
    );
  }
  if (st) {
    out.push(
      `delay_link carried ${fmt(st.a_to_b_packets ?? NaN)} packets towards the namespace and ${
        fmt(st.b_to_a_packets ?? NaN)
      } back; it wrote them on average ${fmt(st.mean_late_us ?? NaN, 0)} µs after their due ` +
        `time (at most ${fmt((st.max_late_us ?? NaN) / 1000, 2)} ms late; ${
          fmt(st.late_over_1ms ?? NaN)
        } more than 1 ms late); ${
          fmt((st.dropped_queue_full ?? 0) + (st.dropped_too_big ?? 0))
        } dropped${
          st.realtime === 1 ? "" : "; it could not get real-time priority, so lateness is higher"
        }.`,
    );
  }
  out.push("");
  const again = t.rows.reduce((a, r) => a + r.repeats, 0);
  const disturbed = Math.max(0, ...t.rows.map((r) => r.disturbed));
  if (again) {
    out.push(
      `${again} slice${again === 1 ? " was" : "s were"} measured again because other processes ` +
        "used more than 10% of a core during it (the repeat counts).",
    );
  }
  if (disturbed > 0) {
    out.push(
      `**Warning:** other processes still used up to ${
        pct(disturbed)
      } of a core during a kept slice.`,
    );
  }
  if (again || disturbed > 0) out.push("");
  const rtt = t.rtt?.ping.p50 ?? RTT_MS;
  const directP50 = statsOf(t.rows.find((r) => r.id === "direct")?.samples ?? []).p50;
  out.push(
    ...table(
      [
        "",
        "sessions",
        "errors",
        "first byte p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "p50 in round trips",
        "p50 − direct p50 ms",
      ],
      t.rows.map((r) => {
        const s = statsOf(r.samples);
        const vsDirect = s.p50 - directP50;
        return [
          r.failed ? `${r.label} (failed)` : r.label,
          fmt(s.n),
          fmt(r.errors),
          fmt(s.p50, 2),
          fmt(s.p90, 2),
          fmt(s.p99, 2),
          fmt(s.max, 2),
          Number.isFinite(s.p50) ? (s.p50 / rtt).toFixed(2) : "—",
          r.id === "direct" ? "—" : `${vsDirect >= 0 ? "+" : ""}${fmt(vsDirect, 2)}`,
        ];
      }),
    ),
    "",
  );
  const get = (id: string) => t.rows.find((r) => r.id === id);
  const p4 = statsOf(get("ferry-pool4")?.samples ?? []);
  const p0 = statsOf(get("ferry-pool0")?.samples ?? []);
  const mark = (saved: number) =>
    Number.isFinite(saved) ? (saved >= RTT_MS ? "**pass**" : "**miss**") : "not measured";
  const savedP50 = p0.p50 - p4.p50, savedP99 = p0.p99 - p4.p99;
  out.push(
    ...table(["target", "measured", "result"], [
      [
        `--pool ${POOL} saves ≥ 1 round trip (${RTT_MS} ms) at p50`,
        Number.isFinite(savedP50)
          ? `${fmt(savedP50, 2)} ms (${(savedP50 / rtt).toFixed(2)} round trips)`
          : "—",
        mark(savedP50),
      ],
      [
        `--pool ${POOL} saves ≥ 1 round trip (${RTT_MS} ms) at p99`,
        Number.isFinite(savedP99)
          ? `${fmt(savedP99, 2)} ms (${(savedP99 / rtt).toFixed(2)} round trips)`
          : "—",
        mark(savedP99),
      ],
    ]),
    "",
  );
  if (t.error) out.push(`Problem: ${oneLine(t.error, 600)}`, "");
  return out;
}

function loadReport(rows: LoadRow[] | null, notQuiet: string | null): string[] {
  const out: string[] = [
    "### 2. Forwarding sessions per second and one-stream download (loopback, no delay)",
    "",
  ];
  if (!rows) return [...out, "Not run (FORWARD_BENCH_PARTS).", ""];
  out.push(...busyWarning(rows, notQuiet));
  const repeats = rows.reduce((a, r) => a + r.repeats, 0);
  if (repeats) {
    out.push(
      `${repeats} run${repeats === 1 ? " was" : "s were"} measured again because other processes ` +
        "used more than 10% of a core during it (the repeat counts).",
      "",
    );
  }
  const direct = rows.find((r) => r.id === "direct");
  const label = (r: LoadRow) => (r.failed ? `${r.label} (failed)` : r.label);
  out.push(
    ...table(
      ["", "sessions/s", "× direct", "p50 ms", "p99 ms", "errors", "download MiB/s", "× direct"],
      rows.map((r) => {
        const m = medianRun(r.sessions, (s) => s.rate);
        return [
          label(r),
          fmt(medianRate(r)),
          r.id === "direct" ? "1.00×" : ratio(medianRate(r) / medianRate(direct)),
          m ? fmt(m.p50Ms, 2) : "—",
          m ? fmt(m.p99Ms, 2) : "—",
          fmt(r.sessions.reduce((a, s) => a + s.errors, 0)),
          fmt(medianMibs(r)),
          r.id === "direct" ? "1.00×" : ratio(medianMibs(r) / medianMibs(direct)),
        ];
      }),
    ),
    "",
  );
  const cpuHeader = [
    "load gen + target CPU (core 0)",
    "core 0 busy",
    "forwarder CPU (core 1)",
    "core 1 busy",
    "other processes CPU",
  ];
  const cpuCells = (r: LoadRow, c: CpuWindow | undefined) =>
    c
      ? [
        pct(c.genCpu),
        pct(c.core0Busy),
        r.id === "direct" ? "n/a" : pct(c.proxyCpu),
        pct(c.core1Busy),
        pct(c.otherCpu),
      ]
      : ["—", "—", "—", "—", "—"];
  out.push("Sessions, CPU during the median run:", "");
  out.push(
    ...table(
      ["", "sessions/s (median)", "min – max", ...cpuHeader],
      rows.map((r) => {
        return [
          label(r),
          fmt(medianRate(r)),
          spread(r.sessions.map((s) => s.rate)),
          ...cpuCells(r, medianRun(r.sessions, (s) => s.rate)?.cpu),
        ];
      }),
    ),
    "",
  );
  out.push("Download, CPU during the median run:", "");
  out.push(
    ...table(
      ["", "MiB/s (median)", "min – max", ...cpuHeader],
      rows.map((r) => {
        const early = r.downloads.some((d) => d.endedEarly);
        return [
          label(r) + (early ? " (stream ended early)" : ""),
          fmt(medianMibs(r)),
          spread(r.downloads.map((d) => d.mibPerS)),
          ...cpuCells(r, medianRun(r.downloads, (d) => d.mibPerS)?.cpu),
        ];
      }),
    ),
    "",
  );
  return out;
}

function problemsReport(ttfb: TtfbResult | null, load: LoadRow[] | null): string[] {
  const lines: string[] = [];
  for (const r of ttfb?.rows ?? []) {
    if (r.failed) lines.push(`- TTFB, ${r.label}: ${oneLine(r.failed, 500)}`);
    if (r.notes.length) {
      lines.push(
        `- TTFB, ${r.label} wrote ${r.notes.length} line(s) to stderr, e.g. \`${
          oneLine(r.notes[0]!, 300)
        }\``,
      );
    }
  }
  for (const r of load ?? []) {
    if (r.failed) lines.push(`- ${r.label}: ${oneLine(r.failed, 500)}`);
    if (r.notes.length) {
      lines.push(
        `- ${r.label} wrote ${r.notes.length} line(s) to stderr, e.g. \`${
          oneLine(r.notes[0]!, 300)
        }\``,
      );
    }
  }
  if (nofileLow.size) {
    lines.push(
      `- ferry warned at start that the open-files limit (${[...nofileLow].join(", ")}, this ` +
        "machine's hard limit) is below what `--max-conns 20000` would need; no run here " +
        "comes near it (at most about 100 connections are open at once).",
    );
  }
  return lines.length ? ["### Notes and problems seen", "", ...lines, ""] : [];
}

async function machineInfo(loadgenSrc: string | null): Promise<string[]> {
  return [
    ...(await machineLines()),
    `- haproxy: Debian haproxy ${await dpkgVersion(
      "haproxy",
    )}; socat: Debian socat ${await dpkgVersion(
      "socat",
    )}`,
    `- Clients and targets: bench/forward_client.c, bench/delay_link.c${
      loadgenSrc ? ` and ${loadgenSrc.startsWith(ROOT) ? "bench/loadgen.c" : loadgenSrc}` : ""
    }, built with ${await firstLine(["cc", "--version"])}`,
  ];
}

function report(
  info: string[],
  ttfb: TtfbResult | null,
  load: { rows: LoadRow[]; notQuiet: string | null } | null,
  seconds: number,
): string {
  const out: string[] = [...info, ""];
  out.push(
    `Settings: TTFB ${TTFB_SESSIONS} sequential sessions per row (in ${TTFB_ROUNDS} alternating ` +
      `slices), ${TTFB_PAUSE_MS} ms apart, ${PAYLOAD}-byte request; load ${ROUNDS} round${
        ROUNDS === 1 ? "" : "s"
      } per row of a ${SESSION_SECONDS} s session run (${CONCURRENCY} at a time, ${PAYLOAD}-byte ` +
      `echo) and a ${DOWNLOAD_SECONDS} s download, each after a ${WARMUP_SECONDS} s warm-up ` +
      `(medians shown). Total run time ${Math.round(seconds)} s.`,
    "",
  );
  out.push(...ttfbReport(ttfb));
  out.push(...loadReport(load?.rows ?? null, load?.notQuiet ?? null));
  out.push(...problemsReport(ttfb, load?.rows ?? null));
  return out.join("\n").trimEnd();
}

const METHOD = `## Port forwarder

\`deno run --allow-all bench/forward_bench.ts\` (as root: it creates a network namespace and two TUN
devices) fills in the results below in one run of three to five minutes. It installs \`haproxy\` and
\`socat\` with apt-get if they are missing and builds its C helpers with \`cc -O2\` into
\`bench/out/\`: \`bench/delay_link.c\`, \`bench/forward_client.c\` (targets, TTFB, RTT and download
clients) and \`bench/loadgen.c\` (the SOCKS bench's load generator, for its plain-TCP \`sessions\`
mode).

### Method

**1. Time to first byte over a slow link.** This machine has no \`tc netem\`, so the bench builds its
own slow link. \`bench/delay_link.c\` opens \`/dev/net/tun\` twice (\`TUNSETIFF\`,
\`IFF_TUN | IFF_NO_PI\`); the bench moves the second device into a network namespace it creates and
gives the two ends point-to-point addresses (\`10.200.x.1\` on the host, \`10.200.x.2\` in the
namespace, each the other's peer). Every IP packet the host routes to the namespace is read from the
first device, held for 10 ms and written to the second, where the namespace's kernel receives it;
the same the other way. One FIFO per direction with one constant delay keeps packets in order and
makes the round trip 20 ms. The program runs with real-time priority, so other work on its core
does not make packets late. Before using the link the bench measures it (TCP connect() time and
one-byte ping-pongs from the host into the namespace) and reports that, and how late packets were
written against their due time.

The upstream, an echo server that never speaks first, runs inside the namespace. \`ferry forward\`
runs on the host (core 1), listening on 127.0.0.1, \`--to\` the namespace address. A client on
127.0.0.1 runs sequential sessions: connect, send a 64-byte request as soon as connect() returns,
read the echo, close, wait 25 ms (time for the pool to refill: one dial is one round trip). Each
figure is the time from just before connect() to the first byte of the response. Without a pool,
ferry dials the upstream after accepting the client (one round trip) before the request can cross
(another); with a pool the request crosses a connection dialled earlier, so the pool should save one
round trip. *direct* is the client talking to the upstream itself (connect and request: two round
trips); *haproxy* dials on demand like \`--pool 0\` and shows what another forwarder adds on the same
path. The rows take turns in four slices, after an uncounted warm-up of 30 sessions each. Pass means
the saving is at least 20 ms (the configured round trip) at p50 and at p99.

**2. Sessions per second and one-stream download** on loopback, without the delay link. One target
(\`bench/forward_client.c serve\`) on 127.0.0.1; each forwarder forwards to it:
\`ferry forward --pool 4\`, \`ferry forward --pool 0\`, HAProxy (\`mode tcp\`, \`nbthread 1\`, one
frontend on 127.0.0.1, one backend server; \`maxconn\` lowered to fit the open-files limit) and
socat (\`socat TCP-LISTEN:…,bind=127.0.0.1,fork,reuseaddr,backlog=1024 TCP:127.0.0.1:…\`; the
\`backlog\` because socat's default of 5 would turn 50 simultaneous connects into SYN retransmits). *direct* is the
client talking to the target without a forwarder. Each forwarder runs pinned to core 1
(\`taskset -c 1\`); the load generator, the target and this driver run on core 0.

- *Sessions/s*: \`loadgen sessions --proxy none\` keeps 50 sessions going, each: connect, send 64
  bytes, read the 64-byte echo, close (the target closes after echoing, then the client, so
  TIME_WAIT stays on the listening side). p50 and p99 are connect() to the echo's last byte.
- *Download*: one connection; the client sends \`G\`, the target streams to it; MiB/s read by the
  client. The target never speaks first, so ferry's pool can hold connections to it. For *direct*
  both ends share core 0, so it is what one core can push through loopback TCP by itself.
- *Load gen + target CPU*: CPU time of the load generator and the target per second of wall time;
  well under 100% means the load side was not the bottleneck. *Forwarder CPU*: the same for the
  forwarder's process tree (socat's reaped children included).
- *Other processes*: CPU used by processes this bench did not start. A run or TTFB slice in which
  that exceeded 10% of a core is measured again once the machine is quiet (at most twice each, six
  times and 60 s of waiting per bench run), and a warning says when a disturbed run had to be kept.

Traffic goes only to 127.0.0.1 and into the bench's own namespace; every process is bounded in time
and stopped by its PID; the namespace and both devices are removed at the end, also on failure or
Ctrl-C.

### Results
`;

/** Prints the report and writes it into BENCHMARKS.md (see FORWARD_BENCH_WRITE). */
function publish(section: string): Promise<void> {
  return publishSection(section, {
    start: START,
    end: END,
    newFile: `${METHOD}\n${START}\n${END}\n`,
    heading: "",
    write: WRITE_DOC,
    log,
  });
}

// ---------------------------------------------------------------------------
// Main

/** Teardown steps registered as resources are made; run on Ctrl-C / SIGTERM. */
const cleanups: (() => Promise<unknown>)[] = [];

async function main(): Promise<number> {
  const started = performance.now();
  const clk = (await run(["getconf", "CLK_TCK"], { allowFail: true })).stdout.trim();
  if (clk !== "" && Number(clk) !== CLK_TCK) throw new Error(`CLK_TCK is ${clk}, not ${CLK_TCK}`);
  if (navigator.hardwareConcurrency < 2) {
    throw new Error("needs 2 cores (one for the forwarder, one for the load)");
  }
  await ensurePackages();
  const { loadgen } = await compile();
  const nofile = await fdLimit();
  await run(["taskset", "-a", "-p", "-c", GEN_CORE, String(Deno.pid)], { allowFail: true });
  log(`open-files limit for all processes: ${nofile}`);

  const tmp = await Deno.makeTempDir({ prefix: "ferry-forward-bench-" });
  const onSignal = () => {
    if (stopping) return;
    stopping = true;
    log("interrupted: stopping what this bench started");
    // The running client ends at once; the main flow then unwinds through its
    // `finally` blocks, which stop the forwarders, targets and link in order.
    for (const child of liveClients) killChild(child);
    // Should the main flow hang, tear down from here after 30 s.
    const fallback = setTimeout(async () => {
      for (const step of [...cleanups].reverse()) await step().catch(() => undefined);
      await Deno.remove(tmp, { recursive: true }).catch(() => undefined);
      Deno.exit(130);
    }, 30_000);
    Deno.unrefTimer(fallback);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  let ttfb: TtfbResult | null = null;
  let ttfbNotQuiet: string | null = null;
  let load: { rows: LoadRow[]; notQuiet: string | null } | null = null;
  try {
    if (PARTS.includes("ttfb")) {
      if (Deno.uid() !== 0) {
        ttfb = { rows: [], error: "needs root (network namespace and TUN devices)" };
      } else {
        ttfbNotQuiet = await waitForQuiet();
        ttfb = await measureTtfb(nofile, tmp).catch((error) => {
          if (stopping) throw error;
          return { rows: [], error: `TTFB part failed: ${(error as Error).message}` };
        });
      }
      if (ttfb.error) log(ttfb.error);
      if (ttfbNotQuiet) ttfb.notQuiet = ttfbNotQuiet;
    }
    if (PARTS.includes("load")) {
      if (!loadgen) {
        log("bench/loadgen.c not found: sessions/s cannot be measured");
      }
      load = await measureLoad(nofile, tmp, loadgen !== null);
    }
  } catch (error) {
    if (!(error instanceof Interrupted) && !stopping) throw error;
  } finally {
    for (const step of [...cleanups].reverse()) await step().catch(() => undefined);
    await Deno.remove(tmp, { recursive: true }).catch(() => undefined);
  }
  if (stopping) {
    log("stopped");
    return 130;
  }
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);

  const section = report(
    await machineInfo(loadgen),
    ttfb,
    load,
    (performance.now() - started) / 1000,
  );
  await publish(section);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
