/**
 * Helpers shared by the bench drivers (bench.ts, udp_bench.ts, forward_bench.ts).
 *
 * @module
 */

/** The repository root (the folder above bench/). */
export const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** Where the benches put compiled helpers and temporary files. */
export const OUT = `${ROOT}/bench/out`;

/** BENCHMARKS.md, which the benches write their sections into. */
export const DOC = `${ROOT}/BENCHMARKS.md`;

/** The core that the load generators, the targets and the bench drivers run on. */
export const GEN_CORE = "0";

/** The core that the proxy (or forwarder) under test runs on. */
export const PROXY_CORE = "1";

/** An environment variable, or undefined. */
export const env = (name: string): string | undefined => Deno.env.get(name);

/** A positive number from environment variable `name`, or `fallback` when unset or empty. */
export const num = (name: string, fallback: number): number => {
  const value = env(name);
  if (value === undefined || value === "") return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number`);
  return n;
};

/** Resolves after `ms` milliseconds. */
export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The `deno run` flags of deno.json's `start` task (permissions, V8 flags), so the bench measures ferry as users run it; BENCH_FERRY_FLAGS replaces them. */
export function ferryRunFlags(): string[] {
  const override = env("BENCH_FERRY_FLAGS");
  if (override !== undefined) return override.split(/\s+/).filter((f) => f !== "");
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`));
  const words = String(config.tasks.start).split(/\s+/);
  return words.slice(words.indexOf("run") + 1).filter((w) => w.startsWith("--"));
}

/** Runs a command to completion and returns its exit code and output; throws on failure unless `allowFail`. */
export async function run(
  cmd: string[],
  options: { allowFail?: boolean; env?: Record<string, string> } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const [program, ...args] = cmd;
  if (program === undefined) throw new Error("empty command");
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(program, {
      args,
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
      ...(options.env ? { env: options.env } : {}),
    }).output();
  } catch (error) {
    if (options.allowFail) return { code: 127, stdout: "", stderr: String(error) };
    throw error;
  }
  const result = {
    code: output.code,
    stdout: new TextDecoder().decode(output.stdout),
    stderr: new TextDecoder().decode(output.stderr),
  };
  if (result.code !== 0 && !options.allowFail) {
    throw new Error(`${cmd.join(" ")} exited ${result.code}: ${result.stderr.trim()}`);
  }
  return result;
}

/** The full path of `program`: the usual system directories first, then the shell's PATH. */
export async function which(program: string): Promise<string | null> {
  for (
    const dir of ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
  ) {
    try {
      const info = await Deno.stat(`${dir}/${program}`);
      if (info.isFile) return `${dir}/${program}`;
    } catch {
      // not here
    }
  }
  const found = await run(["sh", "-c", `command -v ${program}`], { allowFail: true });
  return found.code === 0 && found.stdout.trim() !== "" ? found.stdout.trim() : null;
}

/** Compiles the C program `source` with `cc -O2 -Wall` into `output` (under bench/out/). */
export async function compileC(source: string, output: string): Promise<void> {
  await Deno.mkdir(OUT, { recursive: true });
  const cc = (await which("cc")) ?? (await which("gcc")) ?? "cc";
  await run([cc, "-O2", "-Wall", "-o", output, source]);
}

/**
 * Installs the Debian packages `missing` with apt-get; when that fails,
 * updates the package lists and tries once more. Throws if it still fails.
 */
export async function aptInstall(missing: string[], log: (text: string) => void): Promise<void> {
  if (missing.length === 0) return;
  log(`installing ${missing.join(" ")} with apt-get`);
  const aptEnv = { ...Deno.env.toObject(), DEBIAN_FRONTEND: "noninteractive" };
  const install = ["apt-get", "install", "-y", "-q", ...new Set(missing)];
  let result = await run(install, { allowFail: true, env: aptEnv });
  if (result.code !== 0) {
    await run(["apt-get", "update", "-q"], { allowFail: true, env: aptEnv });
    result = await run(install, { allowFail: true, env: aptEnv });
  }
  if (result.code !== 0) {
    throw new Error(`apt-get install ${missing.join(" ")} failed:\n${result.stderr}`);
  }
}

/** The open-files limit to give every process: as high as the hard limit allows. */
export async function fdLimit(): Promise<number> {
  const want = 65536;
  const probe = await run(["prlimit", `--nofile=${want}:${want}`, "true"], { allowFail: true });
  if (probe.code === 0) return want;
  const limits = await Deno.readTextFile("/proc/self/limits");
  const m = limits.match(/^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m);
  const hard = m?.[2] === "unlimited" ? want : Number(m?.[2] ?? 1024);
  return Math.min(want, hard);
}

/** The median of `values` (NaN when empty). */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Whether a TCP connection to 127.0.0.1:`port` succeeds. */
export async function canConnect(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/** Reads a child's stdout line by line. */
export class Lines {
  #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";
  #done = false;
  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  }
  /** The next line, or null at EOF or after `timeoutMs`. */
  async next(timeoutMs: number): Promise<string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const nl = this.#buffer.indexOf("\n");
      if (nl >= 0) {
        const line = this.#buffer.slice(0, nl);
        this.#buffer = this.#buffer.slice(nl + 1);
        return line;
      }
      if (this.#done) return null;
      const left = deadline - Date.now();
      if (left <= 0) return null;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), left);
      });
      this.#pending ??= this.#reader.read();
      const got = await Promise.race([this.#pending, timeout]);
      clearTimeout(timer);
      if (got === "timeout") return null;
      this.#pending = undefined;
      if (got.done) this.#done = true;
      else this.#buffer += got.value;
    }
  }
  #pending: Promise<ReadableStreamReadResult<string>> | undefined;
}

/**
 * Reads the `NAME PORT` lines a target server prints before `ready`; null
 * when `ready` does not come (no line for `timeoutMs`, or EOF).
 */
export async function readPorts(
  lines: Lines,
  timeoutMs: number,
): Promise<Record<string, number> | null> {
  const ports: Record<string, number> = {};
  for (;;) {
    const line = await lines.next(timeoutMs);
    if (line === null) return null;
    if (line === "ready") return ports;
    const [name, port] = line.split(" ");
    if (name && port) ports[name] = Number(port);
  }
}

/** Sends SIGKILL to a child, unless it is already gone. */
export function killChild(child: Deno.ChildProcess): void {
  try {
    child.kill("SIGKILL");
  } catch {
    // already gone
  }
}

/** Gives a child `graceMs` to exit, then kills it; resolves once it is gone. */
export async function endChild(child: Deno.ChildProcess, graceMs = 3000): Promise<void> {
  const done = await Promise.race([child.status.then(() => true), sleep(graceMs)]);
  if (!done) killChild(child);
  await child.status.catch(() => undefined);
}

/** A server that exits at EOF on its stdin (the C targets and echo servers). */
export interface StdinServer {
  child: Deno.ChildProcess;
  stdin: WritableStreamDefaultWriter<Uint8Array>;
}

/** Stops a {@linkcode StdinServer}: closes its stdin, then {@linkcode endChild}. */
export async function stopServer(server: StdinServer): Promise<void> {
  await server.stdin.close().catch(() => undefined);
  await endChild(server.child);
}

/**
 * On SIGINT or SIGTERM: logs, runs `cleanup` (which stops what the bench
 * started) and exits with 130. Returns a function that removes the listeners.
 */
export function exitOnSignal(
  cleanup: () => Promise<void>,
  log: (text: string) => void,
): () => void {
  const onSignal = () => {
    log("interrupted: stopping the processes this bench started");
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  return () => {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  };
}

/** The last `chars` characters of a file, trimmed ("" when it cannot be read). */
export async function readTail(file: string, chars = 600): Promise<string> {
  try {
    const text = await Deno.readTextFile(file);
    return text.slice(-chars).trim();
  } catch {
    return "";
  }
}

/** The fields of /proc/PID/stat that the benches use. */
export interface ProcStat {
  pid: number;
  ppid: number;
  comm: string;
  ticks: number; // utime + stime
  childTicks: number; // cutime + cstime (reaped children)
  systemTicks: number; // stime + cstime: the part spent in the kernel
  start: number;
}

/** /proc/`pid`/stat, or null when the process is gone. */
export async function readStat(pid: number): Promise<ProcStat | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(`/proc/${pid}/stat`);
  } catch {
    return null;
  }
  const close = text.lastIndexOf(")");
  const comm = text.slice(text.indexOf("(") + 1, close);
  const f = text.slice(close + 2).split(" "); // f[0] is field 3 (state)
  const n = (i: number) => Number(f[i - 3]);
  return {
    pid,
    ppid: n(4),
    comm,
    ticks: n(14) + n(15),
    childTicks: n(16) + n(17),
    systemTicks: n(15) + n(17),
    start: n(22),
  };
}

/** /proc/PID/stat of every process. */
export async function allStats(): Promise<ProcStat[]> {
  const stats: ProcStat[] = [];
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const stat = await readStat(Number(entry.name));
    if (stat) stats.push(stat);
  }
  return stats;
}

/** The process and all its descendants. */
export async function processTree(root: number): Promise<ProcStat[]> {
  return treeOf(await allStats(), root);
}

/** The process `root` and its descendants among `stats`. */
export function treeOf<T extends { pid: number; ppid: number }>(stats: T[], root: number): T[] {
  const children = new Map<number, T[]>();
  for (const s of stats) {
    const list = children.get(s.ppid) ?? [];
    list.push(s);
    children.set(s.ppid, list);
  }
  const rootStat = stats.find((s) => s.pid === root);
  if (!rootStat) return [];
  const tree: T[] = [];
  const todo = [rootStat];
  while (todo.length) {
    const s = todo.pop()!;
    tree.push(s);
    todo.push(...(children.get(s.pid) ?? []));
  }
  return tree;
}

/** Whether the process is still the same one (same PID and start time). */
export async function processAlive(p: ProcStat): Promise<boolean> {
  const now = await readStat(p.pid);
  return now !== null && now.start === p.start;
}

/** Clock ticks per second in /proc (checked against `getconf CLK_TCK` at start). */
export const CLK_TCK = 100;

/** Busy and total clock ticks of one CPU core. */
export interface CoreTimes {
  busy: number;
  total: number;
}

/** Busy and total ticks of each CPU core, from /proc/stat, by core number. */
export async function coreTimes(): Promise<Map<string, CoreTimes>> {
  const text = await Deno.readTextFile("/proc/stat");
  const cores = new Map<string, CoreTimes>();
  for (const line of text.split("\n")) {
    const m = line.match(/^cpu(\d+)\s+(.*)$/);
    if (!m) continue;
    const v = m[2]!.trim().split(/\s+/).map(Number);
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] =
      v;
    const busy = user + nice + system + irq + softirq + steal;
    cores.set(m[1]!, { busy, total: busy + idle + iowait });
  }
  return cores;
}

/** A number with thousands separators and `digits` decimals ("—" when not finite). */
export const fmt = (n: number, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })
    : "—";

/** A fraction as a whole percentage ("—" when not finite). */
export const pct = (x: number) => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : "—");

/** A ratio with two decimals and a × sign ("—" when not finite). */
export const ratio = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : "—");

/** A "min – max" cell for `values` ("—" when there are none). */
export const spread = (values: number[]) =>
  values.length ? `${fmt(Math.min(...values))} – ${fmt(Math.max(...values))}` : "—";

/** A Markdown table: first column left-aligned, the others right-aligned. */
export function table(header: string[], rows: string[][]): string[] {
  return [
    `| ${header.join(" | ")} |`,
    `| ${header.map((_, i) => (i === 0 ? "---" : "---:")).join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ];
}

/** The first line a command prints (its stderr when its stdout is empty), trimmed. */
export async function firstLine(cmd: string[]): Promise<string> {
  const r = await run(cmd, { allowFail: true });
  return (r.stdout || r.stderr).trim().split("\n")[0]?.trim() ?? "";
}

/** The installed version of Debian package `pkg` ("" when it is not installed). */
export const dpkgVersion = (pkg: string) =>
  firstLine(["dpkg-query", "-W", "-f", "${Version}", pkg]);

/** The report's first lines: the date, the machine, and ferry's commit and Deno version. */
export async function machineLines(): Promise<string[]> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const model = cpuinfo.match(/^model name\s*:\s*(.*)$/m)?.[1] ?? "unknown";
  const memKiB = Number(
    (await Deno.readTextFile("/proc/meminfo")).match(/^MemTotal:\s+(\d+)/m)?.[1] ?? 0,
  );
  const osRelease = await Deno.readTextFile("/etc/os-release").catch(() => "");
  const os = osRelease.match(/^PRETTY_NAME="?([^"\n]*)"?/m)?.[1] ?? "unknown";
  const commit = await firstLine(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]);
  const dirty = (await run(["git", "-C", ROOT, "status", "--porcelain", "--", "src"], {
    allowFail: true,
  })).stdout.trim() !== "";
  return [
    `- Date: ${new Date().toISOString().replace(/\.\d+Z$/, "Z")}`,
    `- Machine: ${await firstLine(["nproc", "--all"])} cores (${model}), ${
      (memKiB / 1048576).toFixed(1)
    } GiB RAM, ${os}, kernel ${await firstLine(["uname", "-r"])}`,
    `- ferry: commit ${commit}${dirty ? " plus uncommitted changes in src/" : ""}, ` +
    `Deno ${Deno.version.deno} (V8 ${Deno.version.v8})`,
  ];
}

/** Where {@linkcode publishSection} puts a bench's section in BENCHMARKS.md. */
export interface SectionOptions {
  /** The marker line before the section. */
  start: string;
  /** The marker line after it. */
  end: string;
  /** The file's text when there is no BENCHMARKS.md yet. */
  newFile: string;
  /** What goes before the section when the file has no markers yet and the section is appended. */
  heading: string;
  /** Whether to write BENCHMARKS.md at all. */
  write: boolean;
  log: (text: string) => void;
}

/**
 * Prints a bench's report `section` (Markdown) and, if `write`, puts it into
 * BENCHMARKS.md between its markers (or appends it), then formats the file as
 * `deno fmt` wants it (tables get padded), so that `deno fmt --check` stays
 * green after a bench run.
 */
export async function publishSection(section: string, options: SectionOptions): Promise<void> {
  console.log(section);
  if (!options.write) return;
  const { start, end } = options;
  let doc = await Deno.readTextFile(DOC).catch(() => options.newFile);
  const a = doc.indexOf(start), b = doc.indexOf(end);
  const body = `${start}\n\n${section}\n\n${end}`;
  if (a >= 0 && b > a) doc = doc.slice(0, a) + body + doc.slice(b + end.length);
  else doc = `${doc.trimEnd()}\n\n${options.heading}${body}\n`;
  await Deno.writeTextFile(DOC, doc);
  await run([Deno.execPath(), "fmt", "--quiet", DOC], { allowFail: true });
  options.log(`wrote ${DOC}`);
}

/** The run whose rate is the median; its CPU figures go with it. */
export function medianRun<T>(runs: T[], key: (t: T) => number): T | undefined {
  const sorted = [...runs].sort((a, b) => key(a) - key(b));
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

/** A process started under `timeout` (the wrapper), as the benchmarks start proxies. */
export interface WrappedProcess {
  child?: Deno.ChildProcess;
  /** The `timeout` process. */
  wrapperPid?: number;
  /** The proxy itself, once found. */
  pid?: number;
}

/**
 * Stops a wrapped process and everything under it, by PID: SIGTERM to the
 * proxy (the wrapper's child; `timeout` would forward it too), up to 4 s to
 * exit, then SIGKILL to whatever is left, and the wrapper last.
 */
export async function stopWrapped(p: WrappedProcess): Promise<void> {
  if (!p.child || p.wrapperPid === undefined) return;
  const wrapper = p.wrapperPid;
  const inner = (await processTree(wrapper)).filter((q) => q.pid !== wrapper);
  const signal = (pid: number, sig: Deno.Signal) => {
    try {
      Deno.kill(pid, sig);
    } catch {
      // already gone
    }
  };
  const main = inner.find((q) => q.ppid === wrapper);
  signal(main ? main.pid : wrapper, "SIGTERM");
  const deadline = Date.now() + 4000;
  while (Date.now() < deadline) {
    let alive = false;
    for (const q of inner) if (await processAlive(q)) alive = true;
    if (!alive) break;
    await sleep(100);
  }
  for (const q of inner) if (await processAlive(q)) signal(q.pid, "SIGKILL");
  const wrapperGone = await Promise.race([p.child.status.then(() => true), sleep(6000)]);
  if (!wrapperGone) signal(wrapper, "SIGKILL");
  await p.child.status.catch(() => undefined);
  delete p.child;
  delete p.pid;
  delete p.wrapperPid;
}

/** How to run a proxy: its command line, working directory and environment. */
export interface ProxyCommand {
  cmd: string[];
  cwd: string;
  /** Its environment (default: this process's). */
  env?: Record<string, string>;
}

/**
 * Dante (`danted`) on 127.0.0.1:`port`, without authentication, with
 * `rules` (its `socks pass` blocks): writes its configuration into
 * `tmp`/dante, where it also runs, and returns how to start it.
 */
export async function danteCommand(
  tmp: string,
  port: number,
  rules: string[],
): Promise<ProxyCommand> {
  const dir = `${tmp}/dante`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.chmod(dir, 0o777);
  const conf = `${dir}/danted.conf`;
  await Deno.writeTextFile(
    conf,
    [
      `logoutput: ${dir}/danted.log`,
      `internal: 127.0.0.1 port = ${port}`,
      "external: 127.0.0.1",
      "clientmethod: none",
      "socksmethod: none",
      "user.privileged: root",
      "user.unprivileged: nobody",
      "client pass {",
      "  from: 127.0.0.0/8 to: 0.0.0.0/0",
      "}",
      ...rules,
      "",
    ].join("\n"),
  );
  return {
    // Foreground (no -D), one "main server" (-N 1); it forks its own
    // negotiate, request and io children, all of which inherit its core.
    cmd: [(await which("danted")) ?? "danted", "-f", conf, "-N", "1"],
    cwd: dir,
    env: { ...Deno.env.toObject(), TMPDIR: dir },
  };
}

/** How {@linkcode startWrapped} starts a proxy. */
export interface StartWrappedOptions extends ProxyCommand {
  /** What the proxy's process name (comm) starts with, to tell it from its wrappers. */
  expect: string;
  /** The port it listens on, on 127.0.0.1. */
  port: number;
  /** The file for its stderr; its stdout goes to this name plus `.stdout`. */
  errFile: string;
  /** `timeout` kills it after this many seconds. */
  budgetSeconds: number;
  /** Its open-files limit (default: the one it inherits). */
  nofile?: number | undefined;
  /** Starts the wrapper (default: `new Deno.Command(program, options).spawn()`). */
  spawn?: (program: string, options: Deno.CommandOptions) => Deno.ChildProcess;
}

/**
 * Starts a proxy as `timeout … prlimit … taskset -c PROXY_CORE cmd`, its
 * output in files, and waits until it accepts connections (up to 120 s for
 * Deno, which compiles first, 20 s for the others). Returns undefined once it
 * does; otherwise stops it and returns why it failed.
 */
export async function startWrapped(
  p: WrappedProcess,
  options: StartWrappedOptions,
): Promise<string | undefined> {
  const { cmd, expect, port, errFile, nofile } = options;
  delete p.pid;
  const wrapped = [
    "timeout",
    "-k",
    "5",
    String(options.budgetSeconds),
    ...(nofile === undefined ? [] : ["prlimit", `--nofile=${nofile}:${nofile}`]),
    "taskset",
    "-c",
    PROXY_CORE,
    ...cmd,
  ];
  const spawn = options.spawn ??
    ((program: string, o: Deno.CommandOptions) => new Deno.Command(program, o).spawn());
  // sh sends the proxy's stdout and stderr to files, then execs `timeout`.
  const child = spawn("sh", {
    args: ["-c", 'exec >"$1.stdout" 2>"$1"; shift; exec "$@"', "sh", errFile, ...wrapped],
    cwd: options.cwd,
    ...(options.env ? { env: options.env } : {}),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  });
  p.child = child;
  p.wrapperPid = child.pid;
  let exited = false;
  child.status.then(() => (exited = true));

  const deadline = Date.now() + (expect === "deno" ? 120_000 : 20_000);
  while (Date.now() < deadline && !exited) {
    if (p.pid === undefined) {
      // comm holds at most 15 characters.
      const proxy = (await allStats()).find((s) =>
        s.ppid === child.pid && s.comm.startsWith(expect.slice(0, 15))
      );
      if (proxy) p.pid = proxy.pid;
    }
    if (p.pid !== undefined && (await canConnect(port))) return undefined;
    await sleep(100);
  }
  await stopWrapped(p);
  const tail = await readTail(errFile);
  return exited
    ? `exited at start: ${tail || "(no output)"}`
    : `did not accept connections on 127.0.0.1:${port} in time: ${tail || "(no output)"}`;
}
