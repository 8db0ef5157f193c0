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

/** A Markdown table: first column left-aligned, the others right-aligned. */
export function table(header: string[], rows: string[][]): string[] {
  return [
    `| ${header.join(" | ")} |`,
    `| ${header.map((_, i) => (i === 0 ? "---" : "---:")).join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ];
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
