/**
 * Command definitions and help text. The command line only collects strings;
 * {@linkcode buildSocksConfig} validates them, so every problem is reported
 * at once. Exit codes: 0 for help and version, 2 for any usage error.
 *
 * @module
 */
import { Command, CommanderError } from "commander";
import denoJson from "../deno.json" with { type: "json" };
import { DEFAULTS, type RawSocksOptions } from "./config.ts";

/** The version printed by `--version`, from deno.json. */
export const VERSION: string = denoJson.version;

/** What the command line asked for. */
export type Invocation =
  | { readonly command: "socks"; readonly options: RawSocksOptions }
  | { readonly command: "exit"; readonly code: number };

/** Where commander writes; tests and main pass the real streams. */
export interface CliOutput {
  writeOut(text: string): void;
  writeErr(text: string): void;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

/** Builds the program. */
export function buildProgram(output: CliOutput): Command {
  const program = new Command("ferry")
    .description("A SOCKS5/SOCKS4 proxy that carries every byte.")
    .version(VERSION, "-V, --version", "print the version and exit")
    .helpOption("-h, --help", "show help and exit")
    .showHelpAfterError("(run with --help for usage)")
    .configureOutput(output)
    .exitOverride();
  program.command("socks")
    .description("Run a SOCKS5 server that also speaks SOCKS4 and SOCKS4a on the same port.")
    .option("--listen <host:port>", "address to listen on ([::1]:1080 for IPv6)", DEFAULTS.listen)
    .option(
      "--user <name:password>",
      "allow this user (repeatable); enables RFC 1929 auth",
      collect,
    )
    .option("--users-file <path>", "file of name:password lines (# starts a comment)")
    .option("--no-socks4", "refuse SOCKS4 and SOCKS4a requests (reply 91)")
    .option(
      "--handshake-timeout <duration>",
      "close clients that have not finished the handshake",
      DEFAULTS.handshakeTimeout,
    )
    .option(
      "--connect-timeout <duration>",
      "give up connecting to a target after this long",
      DEFAULTS.connectTimeout,
    )
    .option(
      "--idle-timeout <duration>",
      "close sessions with no bytes either way for this long",
      DEFAULTS.idleTimeout,
    )
    .option(
      "--shutdown-grace <duration>",
      "on SIGINT/SIGTERM, let sessions finish for this long",
      DEFAULTS.shutdownGrace,
    )
    .option(
      "--max-conns <n>",
      "most sessions at once; more are closed at accept",
      DEFAULTS.maxConns,
    )
    .option(
      "--max-conns-per-ip <n>",
      "most sessions at once from one client IP (default: --max-conns)",
    )
    // Choices are checked by buildSocksConfig, so they are reported with every other problem.
    .option("--log-level <level>", "debug, info, warn or error", DEFAULTS.logLevel)
    .option(
      "--log-format <format>",
      "text (logfmt) or json (one object a line)",
      DEFAULTS.logFormat,
    )
    .addHelpText(
      "after",
      "\nDurations: 250ms, 10s, 5m, 1h. Logs go to stderr, one line per session.",
    )
    .configureOutput(output)
    .exitOverride()
    .action(() => {});
  return program;
}

/** Parses `argv` (without the runtime and script). Never exits the process itself. */
export function parseCommandLine(argv: string[], output: CliOutput): Invocation {
  const program = buildProgram(output);
  // `deno task start -- socks …` passes the `--` through; it separates the
  // task's arguments, not ferry's, so it is dropped here.
  const args = argv[0] === "--" ? argv.slice(1) : argv;
  try {
    program.parse(args, { from: "user" });
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    const clean = error.code === "commander.helpDisplayed" || error.code === "commander.version" ||
      (error.code === "commander.help" && args.length > 0);
    return { command: "exit", code: clean ? 0 : 2 };
  }
  const socks = program.commands.find((c) => c.name() === "socks")!;
  return { command: "socks", options: socks.opts<RawSocksOptions>() };
}
