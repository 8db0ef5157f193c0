/**
 * Entry point: parse the command line, start the server, and map SIGINT and
 * SIGTERM to one graceful shutdown (a second signal exits at once).
 *
 * @module
 */
import { parseCommandLine } from "./cli.ts";
import { buildSocksConfig, ConfigError, type SocksConfig } from "./config.ts";
import { serverLog, setupLogging, stopLogging } from "./log.ts";
import { descriptorsNeeded, openFilesLimit } from "./nofile.ts";
import { formatAddress } from "./protocol/address.ts";
import { startSocksServer } from "./server.ts";

const encoder = new TextEncoder();
const writeOut = (text: string) => void Deno.stdout.writeSync(encoder.encode(text));
const writeErr = (text: string) => void Deno.stderr.writeSync(encoder.encode(text));

async function main(argv: string[]): Promise<number> {
  const invocation = parseCommandLine(argv, { writeOut, writeErr });
  if (invocation.command === "exit") return invocation.code;

  let config: SocksConfig;
  try {
    config = await buildSocksConfig(invocation.options);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    for (const problem of error.problems) writeErr(`ferry socks: ${problem}\n`);
    writeErr("(run ferry socks --help for usage)\n");
    return 2;
  }
  await setupLogging({ level: config.logLevel, format: config.logFormat });
  try {
    return await serve(config);
  } finally {
    await stopLogging();
  }
}

async function serve(config: SocksConfig): Promise<number> {
  let server;
  try {
    server = startSocksServer(config);
  } catch (error) {
    serverLog.error("cannot listen on {listen}: {error}", {
      event: "listen-failed",
      listen: formatAddress({ host: config.listen.hostname, port: config.listen.port }),
      error: (error as Error).message,
    });
    return 1;
  }
  serverLog.info("listening on {listen}", {
    event: "listening",
    listen: formatAddress({ host: server.addr.hostname, port: server.addr.port }),
    auth: config.users.size > 0 ? "username/password" : "none",
    users: config.users.size,
    socks4: config.socks4,
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    connectTimeoutMs: config.connectTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    shutdownGraceMs: config.shutdownGraceMs,
    maxConns: config.maxConns,
    maxConnsPerIp: config.maxConnsPerIp,
  });
  const limit = await openFilesLimit();
  const needed = descriptorsNeeded(config.maxConns);
  if (limit !== null && limit < needed) {
    serverLog.warn(
      "open-files limit {limit} is below the {needed} that --max-conns {maxConns} needs; " +
        "raise it (ulimit -n) or lower --max-conns",
      { event: "nofile-low", limit, needed, maxConns: config.maxConns },
    );
  }

  const { promise: stopRequested, resolve: requestStop } = Promise.withResolvers<Deno.Signal>();
  let signalled = false;
  const onSignal = (signal: Deno.Signal) => () => {
    if (signalled) {
      // Second signal: the operator does not want to wait.
      Deno.exit(signal === "SIGINT" ? 130 : 143);
    }
    signalled = true;
    requestStop(signal);
  };
  const handlers = [["SIGINT", onSignal("SIGINT")], ["SIGTERM", onSignal("SIGTERM")]] as const;
  for (const [signal, handler] of handlers) Deno.addSignalListener(signal, handler);

  const signal = await stopRequested;
  serverLog.info(
    "{signal}: stopped accepting; draining {sessions} sessions for up to {graceMs} ms",
    {
      event: "shutdown",
      signal,
      sessions: server.activeSessions,
      graceMs: config.shutdownGraceMs,
    },
  );
  await server.shutdown(config.shutdownGraceMs);
  serverLog.info("stopped", { event: "stopped", ...server.metrics.snapshot() });
  for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
