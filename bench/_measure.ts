/**
 * The load measurements that bench.ts and forward_bench.ts share: /proc
 * sampled when a client marks the start (`M`) and end (`E`) of its measured
 * window, `loadgen sessions` and one-stream download runs, waiting for a
 * quiet machine, and measuring a disturbed run again. udp_bench.ts uses
 * {@linkcode readMarked}.
 *
 * @module
 */
import {
  allStats,
  CLK_TCK,
  type CoreTimes,
  coreTimes,
  GEN_CORE,
  killChild,
  Lines,
  median,
  pct,
  PROXY_CORE,
  readTail,
  sleep,
  treeOf,
} from "./_common.ts";

/** Runs during which other processes used more than this share of a core are measured again. */
export const OTHER_CPU_LIMIT = 0.1;

// ---------------------------------------------------------------------------
// /proc samples and CPU windows

/** How {@linkcode sample} counts the CPU time of processes the bench did not start. */
export interface SampleOptions {
  /**
   * Add each process's reaped children (cutime + cstime), so that short-lived
   * processes that come and go within a window are not missed. That time can
   * predate the window, so {@linkcode foreignCpu} then caps the sum at what
   * /proc/stat says the cores were busy with.
   */
  reapedChildren: boolean;
}

/** One look at /proc. */
export interface Sample {
  t: number;
  cores: Map<string, CoreTimes>;
  /** The target server process. */
  targetTicks: number;
  /** The proxy's process tree, reaped children included. */
  proxyTicks: number;
  /** The part of the proxy's tree's own time spent in the kernel. */
  proxySystemTicks: number;
  /** Processes this bench did not start: pid -> CPU ticks and start time. */
  foreign: Map<number, { ticks: number; start: number }>;
  /** Whether `foreign` counts reaped children ({@linkcode SampleOptions}). */
  reapedChildren: boolean;
}

/** CPU use between two samples. */
export interface CpuWindow {
  genCpu: number; // load generator + targets: CPU seconds per wall second
  core0Busy: number; // fraction of core 0 busy (any process, incl. kernel)
  core1Busy: number;
  proxyCpu: number; // proxy process tree: CPU seconds per wall second
  proxySystemCpu: number; // the part of proxyCpu spent in the kernel
  otherCpu: number; // every process this bench did not start, together
}

/** Samples /proc: the cores, the target server `targetPid`, the proxy tree `proxyPid`, and every other process. */
export async function sample(
  targetPid: number | undefined,
  proxyPid: number | undefined,
  options: SampleOptions,
): Promise<Sample> {
  const [cores, stats] = await Promise.all([coreTimes(), allStats()]);
  const ours = new Set(treeOf(stats, Deno.pid).map((p) => p.pid));
  const foreign = new Map<number, { ticks: number; start: number }>();
  // Kernel threads (children of kthreadd, pid 2) are left out: ksoftirqd and
  // kworkers do this bench's own network work; /proc/stat's busy covers them.
  for (const p of stats) {
    if (!ours.has(p.pid) && p.pid !== 2 && p.ppid !== 2) {
      const ticks = options.reapedChildren ? p.ticks + p.childTicks : p.ticks;
      foreign.set(p.pid, { ticks, start: p.start });
    }
  }
  const proxyTree = proxyPid ? treeOf(stats, proxyPid) : [];
  const target = targetPid ? stats.find((p) => p.pid === targetPid) : undefined;
  return {
    t: performance.now(),
    cores,
    targetTicks: target?.ticks ?? 0,
    proxyTicks: proxyTree.reduce((sum, p) => sum + p.ticks + p.childTicks, 0),
    proxySystemTicks: proxyTree.reduce((sum, p) => sum + p.systemTicks, 0),
    foreign,
    reapedChildren: options.reapedChildren,
  };
}

/** The fraction of `core` that was busy between two samples (NaN when unknown). */
export function coreBusy(a: Sample, b: Sample, core: string): number {
  const x = a.cores.get(core), y = b.cores.get(core);
  if (!x || !y || y.total === x.total) return NaN;
  return (y.busy - x.busy) / (y.total - x.total);
}

/**
 * CPU seconds per wall second used by processes this bench did not start; a
 * process that appeared between the samples counts with all its time.
 */
export function foreignCpu(a: Sample, b: Sample): number {
  let ticks = 0;
  for (const [pid, q] of b.foreign) {
    const p = a.foreign.get(pid);
    ticks += p && p.start === q.start ? q.ticks - p.ticks : q.ticks;
  }
  const other = ticks / CLK_TCK / ((b.t - a.t) / 1000);
  if (!b.reapedChildren) return other;
  let busyCores = 0;
  for (const core of b.cores.keys()) {
    const busy = coreBusy(a, b, core);
    if (Number.isFinite(busy)) busyCores += busy;
  }
  return Math.min(other, busyCores);
}

/** The CPU window between two samples; `clientCpu` is what the client reported using. */
export function cpuWindow(a: Sample, b: Sample, clientCpu: number): CpuWindow {
  const wall = (b.t - a.t) / 1000;
  return {
    genCpu: (clientCpu + (b.targetTicks - a.targetTicks) / CLK_TCK) / wall,
    core0Busy: coreBusy(a, b, GEN_CORE),
    core1Busy: coreBusy(a, b, PROXY_CORE),
    proxyCpu: (b.proxyTicks - a.proxyTicks) / CLK_TCK / wall,
    proxySystemCpu: (b.proxySystemTicks - a.proxySystemTicks) / CLK_TCK / wall,
    otherCpu: foreignCpu(a, b),
  };
}

// ---------------------------------------------------------------------------
// Waiting for quiet, and measuring disturbed runs again

/** How {@linkcode waitForQuiet} waits. */
export interface QuietOptions extends SampleOptions {
  /** How long to wait at most, in milliseconds. */
  timeoutMs: number;
  log: (text: string) => void;
  /** Called before each look; throws to stop waiting. */
  check?: () => void;
}

/**
 * Other people's processes on this machine skew every number here. Waits
 * until both cores are under 10% busy and other processes use under 10% of a
 * core, looking 2 s at a time. Returns null when quiet, or what it saw when
 * the time ran out.
 */
export async function waitForQuiet(options: QuietOptions): Promise<string | null> {
  const { log } = options;
  const limit = Date.now() + options.timeoutMs;
  let said = false;
  for (;;) {
    options.check?.();
    const a = await sample(undefined, undefined, options);
    await sleep(2000);
    const b = await sample(undefined, undefined, options);
    const busy = [coreBusy(a, b, GEN_CORE), coreBusy(a, b, PROXY_CORE)];
    const other = foreignCpu(a, b);
    const what = `core 0 ${pct(busy[0]!)} busy, core 1 ${pct(busy[1]!)} busy, ` +
      `other processes ${pct(other)} of a core`;
    if (Math.max(busy[0]!, busy[1]!) < 0.1 && other < 0.1) {
      if (said) log(`quiet now (${what})`);
      return null;
    }
    if (Date.now() > limit) {
      log(`the machine is not quiet (${what}); measuring anyway`);
      return what;
    }
    if (!said) log(`waiting for the machine to be quiet (${what})`);
    said = true;
  }
}

/**
 * Runs a measurement; when other processes used more than OTHER_CPU_LIMIT of
 * a core during its window, calls `again` with that share and, if it says so
 * (it keeps the bench's budget of repeats, logs and waits for quiet), runs it
 * again, at most twice. The last result counts.
 */
export async function undisturbed<T extends { cpu: CpuWindow }>(
  measure: () => Promise<T | string>,
  again: (otherCpu: number) => Promise<boolean>,
): Promise<T | string> {
  for (let repeats = 0;; repeats++) {
    const result = await measure();
    if (typeof result === "string" || result.cpu.otherCpu <= OTHER_CPU_LIMIT || repeats >= 2) {
      return result;
    }
    if (!(await again(result.cpu.otherCpu))) return result;
  }
}

// ---------------------------------------------------------------------------
// Clients that mark their measured window

/** What a client that marks its window printed, with the samples taken at its marks. */
export interface MarkedRun<S> {
  /** Its JSON result line. */
  json: Record<string, unknown> | null;
  /** Taken when it printed `M` (measuring from now on). */
  start: S | null;
  /** Taken when it printed `E` (end of the window). */
  end: S | null;
  stderr: string;
}

/**
 * Reads a client's stdout until its JSON result line, calling `sample` at its
 * `M` and `E` marks; kills it when no result came within `timeoutMs`, and
 * resolves once it has exited.
 */
export async function readMarked<S>(
  child: Deno.ChildProcess,
  timeoutMs: number,
  sample: () => Promise<S>,
): Promise<MarkedRun<S>> {
  const stderrText = new Response(child.stderr).text();
  const lines = new Lines(child.stdout);
  let start: S | null = null, end: S | null = null;
  let json: Record<string, unknown> | null = null;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = await lines.next(Math.max(1, deadline - Date.now()));
    if (line === null) break;
    if (line === "M") start = await sample();
    else if (line === "E") end = await sample();
    else if (line.startsWith("{")) {
      json = JSON.parse(line);
      break;
    }
  }
  if (json === null) killChild(child);
  await child.status;
  return { json, start, end, stderr: await stderrText };
}

/** A client's JSON result and the CPU window between its marks. */
export interface ClientRun {
  json: Record<string, unknown> | null;
  cpu: CpuWindow | null;
  stderr: string;
}

/** Runs a client (`program` and its arguments) that may take `timeoutMs`. */
export type Client = (program: string, args: string[], timeoutMs: number) => Promise<ClientRun>;

/** How {@linkcode pinnedClient} runs clients and what it samples. */
export interface PinnedClientOptions extends SampleOptions {
  /** The clients' open-files limit. */
  nofile: number;
  /** The target server's process. */
  targetPid: number | undefined;
  /** The proxy under test (undefined for direct). */
  proxyPid: number | undefined;
  /** Starts a client (default: `new Deno.Command(program, options).spawn()`). */
  spawn?: (program: string, options: Deno.CommandOptions) => Deno.ChildProcess;
}

/** A {@linkcode Client} that runs on GEN_CORE under `prlimit`, sampling /proc at its marks. */
export function pinnedClient(options: PinnedClientOptions): Client {
  const spawn = options.spawn ??
    ((program: string, o: Deno.CommandOptions) => new Deno.Command(program, o).spawn());
  return async (program, args, timeoutMs) => {
    const { nofile } = options;
    const child = spawn("prlimit", {
      args: [`--nofile=${nofile}:${nofile}`, "taskset", "-c", GEN_CORE, program, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    });
    const r = await readMarked(
      child,
      timeoutMs,
      () => sample(options.targetPid, options.proxyPid, options),
    );
    const clientCpu = typeof r.json?.cpu === "number" ? r.json.cpu : 0;
    const cpu = r.start && r.end ? cpuWindow(r.start, r.end, clientCpu) : null;
    return { json: r.json, cpu, stderr: r.stderr };
  };
}

// ---------------------------------------------------------------------------
// Session and download runs

/** One `loadgen sessions` run. */
export interface SessionResult {
  rate: number;
  sessions: number;
  errors: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  cpu: CpuWindow;
}

/** One download run. */
export interface DownloadResult {
  mibPerS: number;
  bytes: number;
  endedEarly: boolean;
  cpu: CpuWindow;
}

/** The length of a measured run. */
export interface RunOptions {
  /** Measured seconds. */
  seconds: number;
  /** Unmeasured seconds before them. */
  warmupSeconds: number;
}

/** A session run's load. */
export interface SessionRunOptions extends RunOptions {
  /** Sessions at a time. */
  concurrency: number;
  /** Bytes each session sends and reads back. */
  payload: number;
  /** How long each of the `concurrency` slots waits after a session before its next. */
  pauseMs?: number;
}

/** Runs `program mode args… --seconds S --warmup W`, allowing it 30 s beyond that. */
function timedRun(client: Client, program: string, mode: string, args: string[], o: RunOptions) {
  return client(
    program,
    [mode, ...args, "--seconds", String(o.seconds), "--warmup", String(o.warmupSeconds)],
    (o.seconds + o.warmupSeconds + 30) * 1000,
  );
}

/**
 * Runs `loadgen sessions` (bench/loadgen.c): sessions that connect (through
 * `target`'s `--proxy`, or none), send `payload` bytes and read the echo.
 */
export async function runSessions(
  client: Client,
  loadgen: string,
  target: string[],
  options: SessionRunOptions,
): Promise<SessionResult | string> {
  const r = await timedRun(client, loadgen, "sessions", [
    ...target,
    "--conc",
    String(options.concurrency),
    "--payload",
    String(options.payload),
    ...(options.pauseMs ? ["--pause-ms", String(options.pauseMs)] : []),
  ], options);
  if (!r.json || !r.cpu) return `session run failed: ${r.stderr.trim() || "no result"}`;
  const j = r.json as Record<string, number>;
  return {
    rate: j.rate ?? 0,
    sessions: j.sessions ?? 0,
    errors: j.errors ?? 0,
    p50Ms: (j.p50_us ?? 0) / 1000,
    p90Ms: (j.p90_us ?? 0) / 1000,
    p99Ms: (j.p99_us ?? 0) / 1000,
    cpu: r.cpu,
  };
}

/** Runs `program download`, with `target` saying where to connect: one stream, read as fast as it comes. */
export async function runDownload(
  client: Client,
  program: string,
  target: string[],
  options: RunOptions,
): Promise<DownloadResult | string> {
  const r = await timedRun(client, program, "download", target, options);
  if (!r.json || !r.cpu) {
    const why = typeof r.json?.error === "string" ? r.json.error : r.stderr.trim();
    return `download failed: ${why || "no result"}`;
  }
  const j = r.json as Record<string, number | boolean>;
  return {
    mibPerS: Number(j.mib_s ?? 0),
    bytes: Number(j.bytes ?? 0),
    endedEarly: j.stream_ended_early === true,
    cpu: r.cpu,
  };
}

/**
 * Why a warm-up session run that failed or completed no session failed, with
 * the end of the proxy's stderr from `errFile`.
 */
export async function warmUpFailure(
  warm: { errors: number } | string,
  errFile: string,
): Promise<string> {
  return `no session completed in the warm-up: ${
    typeof warm === "string" ? warm : `${warm.errors} errors`
  }; ${await readTail(errFile)}`;
}

// ---------------------------------------------------------------------------
// Report

/** A row of session and download runs. */
export interface LoadResults {
  sessions: SessionResult[];
  downloads: DownloadResult[];
}

/** The median sessions/s of a row's runs (NaN when none). */
export const medianRate = (r?: LoadResults) => medianSessionRate(r?.sessions);

/** The median sessions/s of some session runs (NaN when none). */
export const medianSessionRate = (runs?: SessionResult[]) => median(runs?.map((s) => s.rate) ?? []);

/** The median download MiB/s of a row's runs (NaN when none). */
export const medianMibs = (r?: LoadResults) => median(r?.downloads.map((d) => d.mibPerS) ?? []);

/**
 * The warning printed above the tables when the machine was busy before the
 * runs (`notQuiet`) or other processes used more than OTHER_CPU_LIMIT during a
 * measured window; none when it was quiet.
 */
export function busyWarning(rows: LoadResults[], notQuiet: string | null): string[] {
  const windows = rows.flatMap((r) => [...r.sessions, ...r.downloads].map((x) => x.cpu.otherCpu));
  const worst = Math.max(0, ...windows.filter(Number.isFinite));
  if (!notQuiet && worst <= OTHER_CPU_LIMIT) return [];
  return [
    `**Warning: other processes were using the CPU during this run** (${
      notQuiet ? `before it: ${notQuiet}; ` : ""
    }up to ${pct(worst)} of a core during a measured window), so these figures are low ` +
    "and noisy. Run again on a quiet machine.",
    "",
  ];
}
