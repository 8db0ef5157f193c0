/**
 * Entry point: parse the command line, start the listeners, and map SIGINT,
 * SIGTERM and SIGHUP to one graceful shutdown (a second signal exits at once).
 *
 * @module
 */
import { parseCommandLine } from "./cli.ts";
import {
  buildForwardConfig,
  buildSocksConfig,
  Checker,
  ConfigError,
  type ForwardConfig,
  type LogSettings,
  type SocksConfig,
} from "./config.ts";
import type { RunConfig } from "./config_file.ts";
import { type Forwarder, openForwarder } from "./forward.ts";
import { serverLog, setupLogging, stopLogging, writeNow } from "./log.ts";
import {
  descriptorsNeeded,
  openFilesLimit,
  stopRunningPrograms,
  TOO_LOW_TO_CHECK,
} from "./nofile.ts";
import { formatAddress, ipOfName, isLoopbackIp, unmapIPv4 } from "./protocol/address.ts";
import { type Server, startSocksServer } from "./server.ts";

const encoder = new TextEncoder();
/** Why help or the version could not be written (a full disk), if it could not. */
let stdoutFailure: Error | null = null;
/**
 * Writes help, version or usage errors. A reader that has gone (`ferry
 * --help | head -1`) must not turn them into a crash with a stack trace and
 * the wrong exit status. Any other failure (`ferry --help > /dev/full`) is
 * kept for main to report: a script must not take an empty file for help.
 */
function writeTo(stream: typeof Deno.stdout | typeof Deno.stderr, text: string): void {
  const bytes = encoder.encode(text);
  try {
    for (let offset = 0; offset < bytes.length;) {
      offset += stream.writeSync(bytes.subarray(offset));
    }
  } catch (error) {
    // Nobody is reading: what `head` asks for, no failure.
    if (error instanceof Deno.errors.BrokenPipe) return;
    if (stream === Deno.stdout) stdoutFailure ??= error as Error;
  }
}
const writeOut = (text: string) => writeTo(Deno.stdout, text);
const writeErr = (text: string) => writeTo(Deno.stderr, text);

/**
 * Problems reported at most: a file that is not a configuration at all (a
 * log, a binary) has one a line, and 40,000 lines of them help nobody.
 */
const PROBLEMS_SHOWN = 100;

/** Settings and listeners of one run of the process. */
interface Plan extends LogSettings {
  readonly listeners: readonly (SocksConfig | ForwardConfig)[];
}

async function main(argv: string[]): Promise<number> {
  const invocation = parseCommandLine(argv, { writeOut, writeErr });
  if (invocation.command === "exit") {
    if (stdoutFailure === null) return invocation.code;
    writeErr(`ferry: cannot write to standard output: ${stdoutFailure.message}\n`);
    return 1;
  }

  // From here on a signal stops ferry, while it reads a users file or its
  // configuration (a large file, a FIFO) too, not by the default action's
  // silent death.
  const stop = listenForSignals();
  let plan: Plan;
  try {
    if (invocation.command === "socks") {
      const config = await buildSocksConfig(invocation.options);
      plan = { ...config, listeners: [config] };
    } else if (invocation.command === "forward") {
      const config = buildForwardConfig(invocation.options);
      plan = { ...config, listeners: [config] };
    } else {
      // The file's problems and the flags' together: every problem at once.
      const check = new Checker();
      let file: RunConfig | null = null;
      try {
        // Loaded here, not imported above: its parsers (zod, jsonc-parser)
        // cost `ferry socks` and `ferry forward`, which never read a file,
        // about 10 MB of resident memory and 40 ms of start-up.
        const { loadConfigFile } = await import("./config_file.ts");
        file = await loadConfigFile(invocation.configPath);
      } catch (error) {
        if (!(error instanceof ConfigError)) throw error;
        // Not push(...problems): a file of garbage has more than a call takes arguments.
        for (const problem of error.problems) check.problems.push(problem);
      }
      const logLevel = invocation.logLevel === undefined
        ? undefined
        : check.logLevel("--log-level", invocation.logLevel);
      const logFormat = invocation.logFormat === undefined
        ? undefined
        : check.logFormat("--log-format", invocation.logFormat);
      check.done();
      plan = {
        ...file!,
        logLevel: logLevel ?? file!.logLevel,
        logFormat: logFormat ?? file!.logFormat,
      };
    }
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    const shown = error.problems.slice(0, PROBLEMS_SHOWN);
    for (const problem of shown) writeErr(`ferry ${invocation.command}: ${problem}\n`);
    const more = error.problems.length - shown.length;
    if (more > 0) {
      writeErr(
        `ferry ${invocation.command}: and ${more} more problem${more === 1 ? "" : "s"} not shown\n`,
      );
    }
    writeErr(`(run ferry ${invocation.command} --help for usage)\n`);
    return 2;
  }
  await setupLogging({ level: plan.logLevel, format: plan.logFormat });
  try {
    return await serveUntil(plan, stop);
  } finally {
    await stopLogging();
  }
}

/** Opens a listener; a forwarder's pools wait for `startPools()` (see serveUntil). */
function open(config: SocksConfig | ForwardConfig): Server | Forwarder {
  return config.kind === "socks" ? startSocksServer(config) : openForwarder(config);
}

/**
 * The settings a listening line shows. Lists are joined with commas: LogTape's
 * logfmt writes an array or object as quoted JSON (`to="[\"a:1\",\"b:2\"]"`),
 * unreadable in the default text format, where `to=a:1,b:2` is not.
 */
function describe(config: SocksConfig | ForwardConfig): Record<string, unknown> {
  const common = {
    kind: config.kind,
    connectTimeoutMs: config.connectTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    shutdownGraceMs: config.shutdownGraceMs,
    maxConns: config.maxConns,
    maxConnsPerIp: config.maxConnsPerIp,
  };
  if (config.kind === "forward") {
    return {
      ...common,
      to: config.upstreams.map((u) => formatAddress({ host: u.hostname, port: u.port })).join(","),
      pool: config.poolSize,
      poolMaxIdleMs: config.poolMaxIdleMs,
    };
  }
  return {
    ...common,
    auth: config.users.size > 0 ? "username/password" : "none",
    users: config.users.size,
    // What clients get: with users, SOCKS4 is refused whatever the setting.
    socks4: config.socks4 && config.users.size === 0,
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    bindTimeoutMs: config.bindTimeoutMs,
    // A family with no address given names the interface the client came in on.
    udpAdvertise: [config.udpAdvertise.ipv4, config.udpAdvertise.ipv6]
      .filter((ip) => ip !== null).join(",") || "interface",
    maxUdpPerIp: config.maxUdpPerIp,
  };
}

/** The same signal again within this long is the first one delivered twice. */
const REPEAT_SIGNAL_MS = 250;
/** How long the lines logged before a second signal may take to reach stderr. */
const SECOND_SIGNAL_FLUSH_MS = 250;
/**
 * The exit status of a second signal, once one came: the status ferry exits
 * with, even should the sessions end (and `serve` return) while its last
 * lines are written.
 */
let statusOfSecondSignal: number | null = null;

/** Signals that stop ferry gracefully, with their numbers for the exit status of a second one. */
const SIGNAL_NUMBERS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;
const STOP_SIGNALS = Object.keys(SIGNAL_NUMBERS) as (keyof typeof SIGNAL_NUMBERS)[];
const SIGUSR1 = 10;
/** How long ferry waits on SIGUSR1 for its last line to reach a stderr nobody reads. */
const SIGUSR1_LINE_MS = 20;

/** The first stop signal, once ferry serves. */
interface StopRequest {
  readonly requested: Promise<Deno.Signal>;
  /** From now on the first signal drains; before, it exits at once (see listenForSignals). */
  serving(): void;
}

/**
 * Maps SIGINT, SIGTERM and SIGHUP to one graceful stop (a second signal exits
 * at once), and SIGUSR1 to an immediate exit. The listeners stay until
 * Deno.exit: without one, a signal takes the default action, and a Ctrl-C's
 * second copy (or the operator's second signal) during the last log lines
 * would kill ferry mid-flush.
 *
 * Until ferry serves, while it reads a users file or its configuration, the
 * first signal exits 0 at once: nothing to drain, and a read that never ends
 * (a FIFO nobody writes) must not keep it. Logging is not set up yet, so
 * the line says so in plain text, as usage errors do.
 */
function listenForSignals(): StopRequest {
  const { promise: requested, resolve: requestStop } = Promise.withResolvers<Deno.Signal>();
  let serving = false;
  let first: { signal: Deno.Signal; at: number } | null = null;
  const onSignal = (signal: keyof typeof SIGNAL_NUMBERS) => () => {
    if (!serving) {
      writeErr(`ferry: ${signal} before it was listening: exiting\n`);
      Deno.exit(0);
    }
    if (first === null) {
      first = { signal, at: performance.now() };
      requestStop(signal);
      return;
    }
    // One Ctrl-C can arrive twice: the terminal signals the whole process
    // group, and `deno task` (or another supervisor) passes it on as well.
    if (signal === first.signal && performance.now() - first.at < REPEAT_SIGNAL_MS) return;
    // A second signal: the operator does not want to wait. Lines logged
    // already (the shutdown line, sessions that have ended) still get a
    // moment to leave the log's batch; a third signal waits for nothing.
    const status = 128 + SIGNAL_NUMBERS[signal];
    if (statusOfSecondSignal !== null) Deno.exit(status);
    statusOfSecondSignal = status;
    stopLogging(SECOND_SIGNAL_FLUSH_MS).finally(() => Deno.exit(status));
  };
  // SIGHUP too: the terminal ferry runs in has closed (an ssh session ended),
  // and its default action would cut every session and lose the last lines.
  for (const signal of STOP_SIGNALS) Deno.addSignalListener(signal, onSignal(signal));
  // Deno 2.9.2 and later answer SIGUSR1 by opening an inspector on
  // 127.0.0.1:9229 with no password: anyone who can reach it, any local user
  // or a client through ferry itself, could then run code in ferry. Leaving
  // before it opens is the only answer Deno leaves us (a listener does not
  // stop it, and no flag turns it off); a graceful stop would leave it open
  // for the whole grace.
  Deno.addSignalListener("SIGUSR1", () => {
    const exit = () => Deno.exit(128 + SIGUSR1);
    // The line goes out in well under a millisecond, unless stderr is stuck.
    setTimeout(exit, SIGUSR1_LINE_MS);
    writeNow(
      "fatal",
      "SIGUSR1: exiting at once, before Deno opens its inspector (see README, Signals)",
      { event: "sigusr1-exit" },
    ).finally(exit);
  });
  return {
    requested,
    serving: () => serving = true,
  };
}

async function serveUntil(plan: Plan, stop: StopRequest): Promise<number> {
  // Before the listeners open: a signal while they do (or while prlimit
  // answers) is a clean shutdown.
  stop.serving();
  // Before the listeners open, so that no client is served while ferry may
  // still run a program, and before the pools fill: a pool larger than the
  // limit leaves takes every descriptor, and prlimit could not even start.
  const limit = await openFilesLimit();
  stopRunningPrograms();
  const running: { server: Server | Forwarder; config: SocksConfig | ForwardConfig }[] = [];
  for (const config of plan.listeners) {
    try {
      running.push({ server: open(config), config });
    } catch (error) {
      // A name (`localhost`) that resolved to the address of a listener
      // already open: the file's collision check does not look names up, and
      // "address in use" alone sounds like another program's doing. Only a
      // name can lead there: IP literals that collide were refused already.
      const name = ipOfName(config.listen.hostname) === null ? config.listen.hostname : null;
      const holder = error instanceof Deno.errors.AddrInUse
        ? running.find(({ server, config: open }) =>
          server.addr.port === config.listen.port &&
          (name !== null || ipOfName(open.listen.hostname) === null)
        )
        : undefined;
      const ownListener = holder
        ? ` (ferry's own listener on ${
          formatAddress({ host: holder.server.addr.hostname, port: holder.server.addr.port })
        } may hold it${name ? `: ${name} may resolve to its address` : ""})`
        : "";
      serverLog.error("cannot listen on {listen}: {error}", {
        event: "listen-failed",
        listen: formatAddress({ host: config.listen.hostname, port: config.listen.port }),
        error: `${(error as Error).message}${ownListener}`,
      });
      await Promise.all(running.map(({ server }) => server.shutdown(0)));
      return 1;
    }
  }
  // Only now that every listener is open: a later one that failed would
  // have left the upstreams with connections dialled for nothing.
  for (const { server } of running) if ("startPools" in server) server.startPools();
  for (const { server, config } of running) {
    const listen = formatAddress({ host: server.addr.hostname, port: server.addr.port });
    serverLog.info("listening on {listen}", { event: "listening", listen, ...describe(config) });
    if (
      config.kind === "socks" && config.users.size === 0 &&
      !isLoopbackIp(unmapIPv4(server.addr.hostname))
    ) {
      // Said once at start: an open SOCKS server is soon found and used by others.
      serverLog.warn(
        "{listen} serves SOCKS without authentication on an address other hosts may reach: " +
          "whoever reaches it can connect anywhere ferry can; add users (--user or --users-file; " +
          "users or usersFile in a config file) or listen on 127.0.0.1",
        { event: "open-proxy", listen },
      );
    }
  }
  const maxConns = plan.listeners.reduce((sum, c) => sum + c.maxConns, 0);
  const pooled = plan.listeners.reduce(
    (sum, c) => sum + (c.kind === "forward" ? c.upstreams.length * c.poolSize : 0),
    0,
  );
  const needed = descriptorsNeeded(maxConns, pooled);
  if (limit === TOO_LOW_TO_CHECK) {
    serverLog.warn(
      "open-files limit too low to even learn it (prlimit could not start: too many open " +
        "files); {maxConns} sessions at once need {needed}: raise it (ulimit -n)",
      { event: "nofile-low", limit: null, needed, maxConns, pooled },
    );
  } else if (limit !== null && limit < needed) {
    const sessions = "open-files limit {limit} is below the {needed} that {maxConns} sessions " +
      "at once (two descriptors each)";
    const lower = "raise it (ulimit -n) or lower the session limit (--max-conns, maxConns)";
    serverLog.warn(
      pooled === 0
        ? `${sessions} need; ${lower}`
        : `${sessions} and {pooled} pooled connections need; ${lower} or the pools`,
      { event: "nofile-low", limit, needed, maxConns, pooled },
    );
  }

  const signal = await stop.requested;
  const sessions = running.reduce((sum, { server }) => sum + server.activeSessions, 0);
  const graceMs = Math.max(...running.map(({ config }) => config.shutdownGraceMs));
  serverLog.info(
    "{signal}: stopped accepting; draining {sessions} sessions for up to {graceMs} ms",
    {
      event: "shutdown",
      signal,
      sessions,
      graceMs,
    },
  );
  await Promise.all(running.map(({ server, config }) => server.shutdown(config.shutdownGraceMs)));
  for (const { server } of running) {
    serverLog.info("stopped {listen}", {
      event: "stopped",
      listen: formatAddress({ host: server.addr.hostname, port: server.addr.port }),
      ...server.metrics.snapshot(),
    });
  }
  return 0;
}

if (import.meta.main) {
  const status = await main(Deno.args);
  Deno.exit(statusOfSecondSignal ?? status);
}
