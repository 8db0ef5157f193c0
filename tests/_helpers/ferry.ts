/**
 * Starts ferry as a child process, the way a user runs it, and reads its JSON
 * log lines from stderr. The listen port is read back from the start-up line
 * (`event: "listening"`), so tests can listen on port 0.
 */
import { TextLineStream } from "./text_line_stream.ts";

const MAIN = new URL("../../src/main.ts", import.meta.url).pathname;

/** One JSON log line, with LogTape's fields and ferry's flattened properties. */
export type LogLine = Record<string, unknown> & { event?: string };

/** Options for {@linkcode startFerry}. */
export interface StartFerryOptions {
  /** Runs ferry under another program, such as `["prlimit", "--nofile=64"]`. */
  wrapper?: string[];
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** How long to wait for the start-up line. Default 20 s. */
  startTimeoutMs?: number;
  /** Hosts for `--allow-net=…` in place of the whole network, as an operator may narrow it. */
  allowNet?: string;
  /** Paths for `--allow-read=…` in place of every file, as an operator may narrow it. */
  allowRead?: string;
}

/** A running ferry process. */
export interface FerryProcess extends AsyncDisposable {
  readonly child: Deno.ChildProcess;
  readonly pid: number;
  /** The address ferry reports it listens on, e.g. `127.0.0.1:43125`. */
  readonly listen: string;
  readonly hostname: string;
  readonly port: number;
  /** Every log line read so far (start-up line included). */
  readonly lines: LogLine[];
  /** Resolves with the first log line (already seen or future) that matches. */
  waitFor(match: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Sends a signal to ferry's PID. */
  kill(signal?: Deno.Signal): void;
  /** Resolves when ferry exits, with its status; stderr is fully read by then. */
  readonly status: Promise<Deno.CommandStatus>;
  /** SIGTERM, then wait for exit (SIGKILL after `timeoutMs`). */
  stop(timeoutMs?: number): Promise<Deno.CommandStatus>;
}

/**
 * The `deno run` flags of deno.json's `start` task: the permissions and V8
 * flags ferry ships with, so that the tests run it as users do.
 */
export const START_TASK_FLAGS: readonly string[] = (() => {
  const config = JSON.parse(Deno.readTextFileSync(new URL("../../deno.json", import.meta.url)));
  const words = String(config.tasks.start).split(/\s+/);
  return words.slice(words.indexOf("run") + 1).filter((word) => word.startsWith("--"));
})();

/**
 * Argument list that runs ferry from source with the permissions it ships
 * with, or with network access narrowed to `allowNet`, reading to `allowRead`.
 */
export function ferryCommandArgs(args: string[], allowNet?: string, allowRead?: string): string[] {
  const narrowed = new Map([["--allow-net", allowNet], ["--allow-read", allowRead]]);
  for (const [flag, to] of narrowed) {
    // Else a test of a narrowed permission would run with the whole one, testing nothing.
    if (to !== undefined && !START_TASK_FLAGS.includes(flag)) {
      throw new Error(`the start task has no ${flag} to narrow: ${START_TASK_FLAGS.join(" ")}`);
    }
  }
  const flags = START_TASK_FLAGS.map((flag) => {
    const to = narrowed.get(flag);
    return to === undefined ? flag : `${flag}=${to}`;
  });
  return ["run", ...flags, MAIN, ...args];
}

/**
 * Starts `ferry <args> --log-format json --log-level debug` and waits for its
 * start-up line. Pass `--listen 127.0.0.1:0` (or `[::1]:0`) in `args`.
 */
export async function startFerry(
  args: string[],
  options: StartFerryOptions = {},
): Promise<FerryProcess> {
  const full = ferryCommandArgs(
    [...args, "--log-format", "json"],
    options.allowNet,
    options.allowRead,
  );
  if (!args.includes("--log-level")) full.push("--log-level", "debug");
  const [command, ...rest] = [...(options.wrapper ?? []), Deno.execPath(), ...full];
  const child = new Deno.Command(command!, {
    args: rest,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...options.env },
  }).spawn();
  const lines: LogLine[] = [];
  const rawLines: string[] = [];
  const waiters = new Set<{ match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }>();
  const stdoutDone = child.stdout.pipeTo(new WritableStream());
  const stderrDone = (async () => {
    const stream = child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TextLineStream(),
    );
    for await (const raw of stream) {
      rawLines.push(raw);
      let line: LogLine;
      try {
        line = JSON.parse(raw);
      } catch {
        line = { event: "raw", text: raw };
      }
      lines.push(line);
      for (const waiter of waiters) {
        if (waiter.match(line)) {
          waiters.delete(waiter);
          waiter.resolve(line);
        }
      }
    }
  })();
  const status = (async () => {
    const s = await child.status;
    await Promise.all([stdoutDone, stderrDone]);
    return s;
  })();

  const waitFor = (match: (line: LogLine) => boolean, timeoutMs = 10_000) => {
    const seen = lines.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise<LogLine>((resolve, reject) => {
      const waiter = {
        match,
        resolve: (l: LogLine) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(waiter);
        reject(
          new Error(
            `ferry log line not seen in ${timeoutMs} ms; stderr so far:\n${rawLines.join("\n")}`,
          ),
        );
      }, timeoutMs);
      waiters.add(waiter);
      status.then(() => {
        if (!waiters.has(waiter)) return;
        waiters.delete(waiter);
        clearTimeout(timer);
        reject(new Error(`ferry exited before the log line; stderr:\n${rawLines.join("\n")}`));
      });
    });
  };

  const kill = (signal: Deno.Signal = "SIGTERM") => {
    try {
      child.kill(signal);
    } catch {
      // already exited
    }
  };
  const stop = async (timeoutMs = 10_000) => {
    kill("SIGTERM");
    const timer = setTimeout(() => kill("SIGKILL"), timeoutMs);
    try {
      return await status;
    } finally {
      clearTimeout(timer);
    }
  };

  let started: LogLine;
  try {
    started = await waitFor((l) => l.event === "listening", options.startTimeoutMs ?? 20_000);
  } catch (error) {
    kill("SIGKILL");
    await status;
    throw error;
  }
  const listen = String(started.listen);
  const colon = listen.lastIndexOf(":");
  const hostname = listen.slice(0, colon).replace(/^\[|\]$/g, "");
  const port = Number(listen.slice(colon + 1));
  return {
    child,
    pid: child.pid,
    listen,
    hostname,
    port,
    lines,
    waitFor,
    kill,
    status,
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}
