/**
 * Command definitions and help text. The command line only collects strings;
 * `src/config.ts` validates them, so every problem is reported at once.
 * Exit codes: 0 for help and version, 2 for any usage error (1 when help or the
 * version could not be written: see src/main.ts).
 *
 * @module
 */
import { Command, CommanderError, InvalidArgumentError } from "commander";
import denoJson from "../deno.json" with { type: "json" };
import {
  DEFAULTS,
  MAX_POOL,
  POOL_MAX_IDLE_MIN,
  type RawForwardOptions,
  type RawSocksOptions,
} from "./config.ts";

/** The version printed by `--version`, from deno.json. */
export const VERSION: string = denoJson.version;

/** What the command line asked for. */
export type Invocation =
  | { readonly command: "socks"; readonly options: RawSocksOptions }
  | { readonly command: "forward"; readonly options: RawForwardOptions }
  | {
    readonly command: "run";
    readonly configPath: string;
    /** Overrides of the file's "log" settings, unvalidated. */
    readonly logLevel?: string | undefined;
    readonly logFormat?: string | undefined;
  }
  | { readonly command: "exit"; readonly code: number };

/** Where commander writes; tests and main pass the real streams. */
export interface CliOutput {
  writeOut(text: string): void;
  writeErr(text: string): void;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

const LISTEN_GIVEN_TWICE =
  "--listen given twice; one command listens once (ferry run --config for several)";

/**
 * A parser for an option that refuses a second one, saying `why`: commander
 * lets the last win, and `--listen A --listen B` reads as two listeners,
 * `--config a --config b` as two files, neither of which one command makes.
 * One parser per command line parsed.
 */
function onlyOnce(why: string): (value: string) => string {
  let seen = false;
  return (value) => {
    if (seen) throw new InvalidArgumentError(why);
    seen = true;
    return value;
  };
}

/** Options every listener takes: timeouts, limits, logging. */
function addListenerOptions(command: Command, withHandshake: boolean): Command {
  if (withHandshake) {
    command.option(
      "--handshake-timeout <duration>",
      "close clients that have not finished the handshake",
      DEFAULTS.handshakeTimeout,
    );
  }
  return command
    .option(
      "--connect-timeout <duration>",
      "give up connecting to a target (socks) or an upstream (forward) after this long",
      DEFAULTS.connectTimeout,
    )
    .option(
      "--idle-timeout <duration>",
      "close sessions with no bytes either way for this long",
      DEFAULTS.idleTimeout,
    )
    .option(
      "--shutdown-grace <duration>",
      "on SIGINT, SIGTERM or SIGHUP, let sessions finish for this long",
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
    // Choices are checked by src/config.ts, so they are reported with every other problem.
    .option(
      "--log-level <level>",
      "debug, info, warn or error (any case; warning too)",
      DEFAULTS.logLevel,
    )
    .option(
      "--log-format <format>",
      "text (logfmt) or json (one object a line)",
      DEFAULTS.logFormat,
    )
    .addHelpText(
      "after",
      "\nDurations: 250ms, 1.5s, 10s, 5m, 1h, 1h30m; at least 1ms, and --connect-timeout\n" +
        "and --shutdown-grace at most 596h. Logs go to stderr, one line per session.",
    );
}

/**
 * An unknown option as an error shows it: its name, but never a value joined
 * to it, which may be a password, as curl's `-uNAME:PASSWORD` or
 * `--usr=NAME:PASSWORD` typed by mistake: `-u…`, `--usr=…`.
 */
function shownOption(arg: string): string {
  if (arg.startsWith("--")) {
    const equals = arg.indexOf("=");
    return equals < 0 ? arg : `${arg.slice(0, equals + 1)}…`;
  }
  return arg.length > 2 ? `${arg.slice(0, 2)}…` : arg;
}

/** Builds the program; `onCommand` receives the chosen command. */
export function buildProgram(
  streams: CliOutput,
  onCommand: (invocation: Invocation) => void = () => {},
): Command {
  /**
   * Output whose errors start `ferry socks:` (`prefix`), as a bad value's do
   * (src/main.ts), where commander starts them `error:`.
   */
  const output = (prefix: string) => ({
    ...streams,
    // Help has no colours. commander's own guess would read a dozen
    // environment variables (TERM, CI, NODE_DISABLE_COLORS…) when stdout is a
    // terminal, each a permission ferry does not have: `ferry --help` crashed.
    getOutHasColors: () => false,
    getErrHasColors: () => false,
    // commander repeats what it did not expect: a mistyped option whole
    // (`--usr=alice:s3cret`) and stray arguments (`--user alice s3cret`
    // gives "got 1: s3cret"), so either could print a password. The option's
    // name, or the count, is what the user needs.
    outputError: (text: string, write: (text: string) => void) =>
      write(
        text
          .replace(/^error: /, `${prefix}: `)
          // To the value's last quote: it may hold quotes, and newlines, of its own.
          .replace(/unknown option '([\s\S]*)'/, (_, arg) => `unknown option '${shownOption(arg)}'`)
          .replace(
            /(too many arguments[^\n]*? got \d+): [\s\S]*\.\n/,
            "$1 (not shown: one may be a password; is a value missing its flag, or split by a space?).\n",
          )
          // A flag given twice: its second value is fine, only twice is wrong.
          .replace(/option '[^']*' argument '[\s\S]*' is invalid\. (--[a-z-]+ given twice)/, "$1"),
      ),
  });
  const program = new Command("ferry")
    .description("A SOCKS5/SOCKS4 proxy and TCP forwarder that carries every byte.")
    .version(VERSION, "-V, --version", "print the version and exit")
    .helpOption("-h, --help", "show help and exit")
    .showHelpAfterError("(run with --help for usage)")
    .configureOutput(output("ferry"))
    .exitOverride();
  /** A command whose errors end as a bad value's do (src/main.ts), not "run with --help". */
  const subcommand = (name: string) =>
    program.command(name).showHelpAfterError(`(run ferry ${name} --help for usage)`);
  /**
   * What every command ends with: its own --version, last in its help beside
   * --help (`ferry socks --version` worked, unlisted), and its output.
   */
  const finish = (command: Command) =>
    command.version(VERSION, "-V, --version", "print the version and exit")
      .configureOutput(output(`ferry ${command.name()}`))
      .exitOverride();
  const socks = subcommand("socks")
    .description("Run a SOCKS5 server that also speaks SOCKS4 and SOCKS4a on the same port.")
    .option(
      "--listen <host:port>",
      "address to listen on ([::1]:1080 for IPv6)",
      onlyOnce(LISTEN_GIVEN_TWICE),
      DEFAULTS.listen,
    )
    .option(
      "--user <name:password>",
      "allow this user (repeatable); enables RFC 1929 auth and refuses SOCKS4/4a",
      collect,
    )
    .option(
      "--users-file <path>",
      "file of name:password lines (a line starting with # is a comment); repeatable",
      collect,
    )
    .option("--no-socks4", "refuse SOCKS4 and SOCKS4a requests (reply 91)")
    .option(
      "--udp-advertise <ip>",
      "address to put in UDP ASSOCIATE replies (behind NAT; one per address family); " +
        "default: the interface's",
      collect,
    )
    .option(
      "--bind-timeout <duration>",
      "how long a BIND waits for its peer to connect (default: --connect-timeout)",
    )
    .option(
      "--max-udp-per-ip <n>",
      "most UDP associations at once from one client IP",
      DEFAULTS.maxUdpPerIp,
    );
  finish(addListenerOptions(socks, true))
    .action(() => onCommand({ command: "socks", options: socks.opts<RawSocksOptions>() }));
  const forward = subcommand("forward")
    .description(
      "Forward TCP connections to upstreams, round-robin, from a warm pool of connections.",
    )
    // Checked with the other values, so that every problem is told at once.
    .option(
      "--listen <host:port>",
      "address to listen on (required)",
      onlyOnce(LISTEN_GIVEN_TWICE),
    )
    .option(
      "--to <host:port>",
      "upstream to forward to (required, repeatable; round-robin)",
      collect,
    )
    .option(
      "--pool <n>",
      `connections kept dialled per upstream, 0 to ${MAX_POOL}; 0 dials on demand`,
      DEFAULTS.pool,
    )
    .option(
      "--pool-max-idle <duration>",
      `replace pooled connections idle this long (at least ${POOL_MAX_IDLE_MIN.ms / 1000}s)`,
      DEFAULTS.poolMaxIdle,
    );
  finish(addListenerOptions(forward, false))
    .action(() => onCommand({ command: "forward", options: forward.opts<RawForwardOptions>() }));
  const run = subcommand("run")
    .description("Run every listener declared in a JSON (JSONC) configuration file.")
    .requiredOption(
      "--config <file>",
      "the configuration file (required; see ferry.example.jsonc)",
      onlyOnce("--config given twice; one file declares every listener (run ferry once per file)"),
    )
    .option("--log-level <level>", "override the file's log level (debug, info, warn or error)")
    .option("--log-format <format>", "override the file's log format (text or json)");
  finish(run)
    .action((options: { config: string; logLevel?: string; logFormat?: string }) => {
      onCommand({
        command: "run",
        configPath: options.config,
        logLevel: options.logLevel,
        logFormat: options.logFormat,
      });
    });
  return program;
}

/**
 * The first of `command`'s options after it in `args` that takes a value but
 * is followed by another of its options instead, with that option's name;
 * else `null`. Only the name is kept: a value may be a password.
 */
function flagMissingItsValue(
  command: Command,
  args: readonly string[],
): { command: string; flags: string; next: string } | null {
  const optionNamed = (token: string) =>
    command.options.find((o) => o.long === token || o.short === token);
  for (let i = args.indexOf(command.name()) + 1; i < args.length - 1; i++) {
    const option = optionNamed(args[i]!);
    if (!option?.required) continue;
    const next = args[i + 1]!.split("=")[0]!;
    if (next.startsWith("-") && optionNamed(next)) {
      return { command: command.name(), flags: option.flags, next };
    }
    i++; // the value
  }
  return null;
}

/** Parses `argv` (without the runtime and script). Never exits the process itself. */
export function parseCommandLine(argv: string[], output: CliOutput): Invocation {
  let invocation: Invocation | null = null;
  const program = buildProgram(output, (chosen) => invocation = chosen);
  // `deno task start -- socks …` passes the `--` through; it separates the
  // task's arguments, not ferry's, so it is dropped here.
  let args = argv[0] === "--" ? argv.slice(1) : argv;
  const isCommand = (name: string) => program.commands.some((c) => c.name() === name);
  const isHelpFlag = (arg: string) => arg === "--help" || arg === "-h";
  // commander answers `help TYPO`, `help --typo`, `help socks extra` and
  // `TYPO --help` with the general help and a clean exit, so a script would
  // not notice the typo; `ferry TYPO` is an error, and so are these. And its
  // `help help` wrote the help to stderr. So `help [COMMAND]` is taken as
  // `[COMMAND] --help`, and anything else after `help` is an error.
  if (args[0] === "help") {
    const [topic, ...extra] = args.slice(1);
    const problem = extra.length > 0
      ? `too many arguments for 'help': expected a command at most`
      : topic === undefined || topic === "help" || isHelpFlag(topic) || isCommand(topic)
      ? null
      : topic.startsWith("-")
      ? `unknown option '${shownOption(topic)}'`
      : `unknown command '${topic}'`;
    if (problem) {
      output.writeErr(`ferry: ${problem}\n(run with --help for usage)\n`);
      return { command: "exit", code: 2 };
    }
    args = topic !== undefined && isCommand(topic) ? [topic, "--help"] : ["--help"];
  } else if (args[0] !== undefined && !args[0].startsWith("-") && !isCommand(args[0])) {
    // Without its --help, commander says the command is unknown (and what was meant).
    args = args.filter((arg) => !isHelpFlag(arg));
  }
  // `ferry --log-format json socks`: commander calls the option unknown,
  // though the command takes it. Only its name is shown: a value may be a password.
  const command = program.commands.find((c) => args.includes(c.name()));
  // After a command, --help shows its help whatever else the line holds, as
  // git's does: also where commander would take it for a flag's value
  // (`socks --listen --help` said --listen got "--help"). No value ferry
  // takes can be "-h" or "--help" but a file so named, which ./-h reaches.
  if (command && args.slice(args.indexOf(command.name()) + 1).some(isHelpFlag)) {
    args = [command.name(), "--help"];
  }
  const option = args[0]?.split("=")[0];
  const takes = (c: Command) => c.options.some((o) => o.long === option || o.short === option);
  // --version is ferry's as well as each command's: before a command it is ferry's.
  if (command && takes(command) && !takes(program)) {
    output.writeErr(
      `ferry: option '${option}' before the command; options go after it: ` +
        `ferry ${command.name()} ${option} …\n(run with --help for usage)\n`,
    );
    return { command: "exit", code: 2 };
  }
  // `ferry forward --listen --to HOST:PORT`: commander takes `--to` for the
  // listen address and then calls HOST:PORT a stray argument, naming neither
  // flag. A flag that wants a value and is followed by another of the
  // command's flags is missing its value; say which. (A value that looks like
  // a flag can still be given as --flag=VALUE.)
  const missing = command && flagMissingItsValue(command, args);
  if (missing) {
    output.writeErr(
      `ferry ${missing.command}: option '${missing.flags}' argument missing: ` +
        `'${missing.next}' follows it\n` +
        `(run ferry ${missing.command} --help for usage)\n`,
    );
    return { command: "exit", code: 2 };
  }
  try {
    program.parse(args, { from: "user" });
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    const clean = error.code === "commander.helpDisplayed" || error.code === "commander.version" ||
      (error.code === "commander.help" && args.length > 0);
    return { command: "exit", code: clean ? 0 : 2 };
  }
  return invocation ?? { command: "exit", code: 2 };
}
