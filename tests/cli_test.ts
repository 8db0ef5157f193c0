/**
 * ferry's command line, as a user runs it: help and version on stdout with
 * exit 0; unknown flags and bad values named on stderr with exit 2.
 */
import assert from "node:assert/strict";
import { ferryCommandArgs } from "./_helpers/ferry.ts";

const DENO_JSON = new URL("../deno.json", import.meta.url);
const VERSION = (JSON.parse(await Deno.readTextFile(DENO_JSON)) as { version: string }).version;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Bound on every child process here: help, version and refusals take a second or two. */
const CHILD_MS = 20_000;

/** Starts ferry with `args`, stdout and stderr piped. */
function spawnFerry(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ferryCommandArgs(args),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    // A backstop: ferry() below says what timed out, at CHILD_MS.
    signal: AbortSignal.timeout(CHILD_MS + 5_000),
  }).spawn();
}

/** Runs ferry with `args`; killed (and failing) if it is still running after CHILD_MS. */
async function ferry(...args: string[]): Promise<Run> {
  const child = spawnFerry(args);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
  }, CHILD_MS);
  try {
    const out = await child.output();
    assert.ok(!timedOut, `ferry ${args.join(" ")} did not exit within ${CHILD_MS / 1000} s`);
    const decoder = new TextDecoder();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

const SOCKS_OPTIONS = [
  "--listen",
  "--user",
  "--users-file",
  "--no-socks4",
  "--handshake-timeout",
  "--connect-timeout",
  "--idle-timeout",
  "--shutdown-grace",
  "--max-conns",
  "--max-conns-per-ip",
  "--log-level",
  "--log-format",
];

Deno.test("ferry --help exits 0 and lists the socks command on stdout", async () => {
  const run = await ferry("--help");
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /socks/);
  assert.match(run.stdout, /--version/);
});

Deno.test("ferry socks --help exits 0 and mentions every option on stdout", async () => {
  const run = await ferry("socks", "--help");
  assert.equal(run.code, 0, run.stderr);
  for (const option of SOCKS_OPTIONS) {
    assert.ok(run.stdout.includes(option), `--help does not mention ${option}:\n${run.stdout}`);
  }
});

/** Each option of a command's help with its description, white space collapsed. */
function helpOptions(help: string): Map<string, string> {
  const options = new Map<string, string>();
  let current: string | null = null;
  for (const line of help.split("\n")) {
    const option = /^ {2}(--[a-z0-9-]+)(?: <[^>]+>)?\s+(.*)$/.exec(line);
    if (option) {
      current = option[1]!;
      options.set(current, option[2]!);
    } else if (current !== null && /^\s{4,}\S/.test(line)) {
      options.set(current, `${options.get(current)} ${line.trim()}`);
    } else current = null;
  }
  return options;
}

Deno.test("ferry socks --help and forward --help give each option's default, as the README's table has it", async () => {
  // The defaults are config.ts's, but --help is where an operator reads them.
  const defaults = {
    socks: {
      "--listen": "127.0.0.1:1080",
      "--max-udp-per-ip": "16",
      "--handshake-timeout": "10s",
      "--connect-timeout": "10s",
      "--idle-timeout": "5m",
      "--shutdown-grace": "10s",
      "--max-conns": "10000",
      "--log-level": "info",
      "--log-format": "text",
    },
    forward: {
      "--pool": "4",
      "--pool-max-idle": "30s",
      "--connect-timeout": "10s",
      "--idle-timeout": "5m",
      "--shutdown-grace": "10s",
      "--max-conns": "10000",
      "--log-level": "info",
      "--log-format": "text",
    },
  };
  for (const [command, expected] of Object.entries(defaults)) {
    const run = await ferry(command, "--help");
    assert.equal(run.code, 0, run.stderr);
    const options = helpOptions(run.stdout);
    for (const [option, value] of Object.entries(expected)) {
      const description = options.get(option);
      assert.ok(description, `${command} --help does not list ${option}:\n${run.stdout}`);
      assert.ok(
        description.endsWith(`(default: "${value}")`),
        `${command} ${option}: ${description}`,
      );
    }
  }
});

Deno.test("ferry forward --help gives the bounds a value is checked against", async () => {
  // Found only by trying: --pool 2000 and --pool-max-idle 500ms were refused
  // with bounds the help did not give.
  const run = await ferry("forward", "--help");
  assert.equal(run.code, 0, run.stderr);
  const text = run.stdout.replace(/\s+/g, " ");
  assert.match(text, /--pool <n> connections kept dialled per upstream, 0 to 1024;/);
  assert.match(
    text,
    /--pool-max-idle <duration> replace pooled connections idle this long \(at least 1s\)/,
  );
  assert.match(text, /at least 1ms, and --connect-timeout and --shutdown-grace at most 596h/);
  for (
    const [flag, value, bound] of [
      ["--pool", "1025", "from 0 to 1024"],
      ["--pool-max-idle", "999ms", "at least 1s"],
      ["--connect-timeout", "597h", "at most 596h"],
    ]
  ) {
    const refused = await ferry(
      "forward",
      "--listen",
      "127.0.0.1:0",
      "--to",
      "127.0.0.1:9",
      flag!,
      value!,
    );
    assert.equal(refused.code, 2, refused.stderr);
    assert.ok(refused.stderr.includes(bound!), `${flag} ${value}: ${refused.stderr}`);
  }
});

Deno.test("ferry --version and -V print the version from deno.json and exit 0", async () => {
  assert.match(VERSION, /^\d+\.\d+\.\d+/);
  for (const flag of ["--version", "-V"]) {
    const run = await ferry(flag);
    assert.equal(run.code, 0, `${flag}: ${run.stderr}`);
    assert.equal(run.stdout, `${VERSION}\n`, flag);
  }
});

Deno.test("every command's --help lists --version, which prints the version after the command too", async () => {
  // `ferry socks --version` worked, but no help but the top one said so.
  for (const command of ["socks", "forward", "run"]) {
    const help = await ferry(command, "--help");
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /-V, --version +print the version and exit/, `${command} --help`);
    const version = await ferry(command, "--version");
    assert.equal(version.code, 0, version.stderr);
    assert.equal(version.stdout.trim(), VERSION, `${command} --version`);
    // Before the command it is ferry's own, as it was before each command had one.
    const before = await ferry("-V", command);
    assert.equal(before.code, 0, before.stderr);
    assert.equal(before.stdout.trim(), VERSION, `-V ${command}`);
  }
});

Deno.test("--help and --version into a pipe nobody reads exit 0 without a stack trace", async () => {
  for (const args of [["socks", "--help"], ["--version"]]) {
    const child = spawnFerry(args);
    // `ferry --help | true`: the reader is gone before ferry writes (Deno
    // takes far longer to start), so the write fails with EPIPE.
    await child.stdout.cancel();
    const [status, stderr] = await Promise.all([
      child.status,
      new Response(child.stderr).text(),
    ]);
    assert.equal(stderr, "", `ferry ${args.join(" ")}`);
    assert.equal(status.code, 0, `ferry ${args.join(" ")}`);
  }
});

Deno.test("--help in a terminal exits 0 with the permissions ferry ships with", async () => {
  // Where stdout is a terminal, commander guessed colours from a dozen
  // environment variables (TERM, CI, NODE_DISABLE_COLORS…), none of which
  // ferry may read: `ferry --help` crashed with a stack trace. `script` runs
  // it on a pseudo-terminal, with no NO_COLOR to hide the guess.
  const quote = (word: string) => `'${word.replaceAll("'", "'\\''")}'`;
  const inherited = ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME"].flatMap((name) => {
    const value = Deno.env.get(name);
    return value === undefined ? [] : [[name, value]];
  });
  for (const args of [["--help"], ["socks", "--help"], ["help", "forward"]]) {
    const command = [Deno.execPath(), ...ferryCommandArgs(args)].map(quote).join(" ");
    const { code, stdout } = await new Deno.Command("script", {
      args: ["-qec", command, "/dev/null"],
      stdin: "null",
      clearEnv: true,
      env: { ...Object.fromEntries(inherited), TERM: "xterm-256color", DENO_NO_UPDATE_CHECK: "1" },
      signal: AbortSignal.timeout(CHILD_MS),
    }).output();
    const output = new TextDecoder().decode(stdout);
    assert.equal(code, 0, `ferry ${args.join(" ")}: ${output}`);
    assert.match(output, /Usage: ferry/);
  }
});

Deno.test("--help and --version that cannot be written (a full disk) exit 1 and say why", async () => {
  // They exited 0, so `ferry --version > version.txt` on a full disk left an
  // empty file that a script took for the version.
  for (const args of [["socks", "--help"], ["--version"]]) {
    const { code, stderr } = await new Deno.Command("sh", {
      args: ["-c", 'exec "$@" > /dev/full', "sh", Deno.execPath(), ...ferryCommandArgs(args)],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
      signal: AbortSignal.timeout(CHILD_MS),
    }).output();
    const text = new TextDecoder().decode(stderr);
    assert.equal(code, 1, `ferry ${args.join(" ")}: ${text}`);
    assert.match(text, /^ferry: cannot write to standard output: No space left on device/);
  }
});

Deno.test("ferry without a command shows its usage on stderr and exits 2", async () => {
  // A usage error, not a request for help: a script that forgot the command must fail.
  const run = await ferry();
  assert.equal(run.code, 2, `stdout: ${run.stdout}\nstderr: ${run.stderr}`);
  assert.match(run.stderr, /Usage: ferry/);
  assert.match(run.stderr, /socks \[options\]/);
});

Deno.test("an unknown flag exits 2 and is named on stderr", async () => {
  const run = await ferry("socks", "--listen", "127.0.0.1:0", "--frobnicate");
  assert.equal(run.code, 2, `stdout: ${run.stdout}\nstderr: ${run.stderr}`);
  // Begun as a bad value's message is ("ferry socks: --listen: got …"), not commander's "error:".
  assert.match(run.stderr, /^ferry socks: unknown option '--frobnicate'\n/);
  // Where to look, as for a bad value: the command's own help.
  assert.match(run.stderr, /\(run ferry socks --help for usage\)/);
});

Deno.test("ferry forward refuses --handshake-timeout: a forwarder has no handshake", async () => {
  // As a configuration file refuses handshakeTimeout on a forward listener.
  const run = await ferry(
    "forward",
    "--listen",
    "127.0.0.1:0",
    "--to",
    "127.0.0.1:9",
    "--handshake-timeout",
    "5s",
  );
  assert.equal(run.code, 2, run.stderr);
  assert.match(run.stderr, /^ferry forward: unknown option '--handshake-timeout'\n/);
});

Deno.test("an option before the command exits 2 and says where it goes, without its value", async () => {
  const run = await ferry("--user=alice:s3cret", "socks", "--listen", "127.0.0.1:0");
  assert.equal(run.code, 2, `stdout: ${run.stdout}\nstderr: ${run.stderr}`);
  assert.match(
    run.stderr,
    /^ferry: option '--user' before the command; options go after it: ferry socks --user/,
  );
  assert.ok(!run.stderr.includes("s3cret"), run.stderr);
});

Deno.test("an unknown command exits 2 and is named on stderr", async () => {
  const run = await ferry("sockz");
  assert.equal(run.code, 2, `stdout: ${run.stdout}\nstderr: ${run.stderr}`);
  assert.match(run.stderr, /^ferry: unknown command 'sockz'\n/);
});

Deno.test("help for an unknown command exits 2 and names it; help for a known one exits 0", async () => {
  // `ferry help sokcs` printed the general help and exited 0, so a script never saw the typo.
  const typo = await ferry("help", "sokcs");
  assert.equal(typo.code, 2, `stdout: ${typo.stdout}\nstderr: ${typo.stderr}`);
  assert.match(typo.stderr, /unknown command 'sokcs'/);
  const known = await ferry("help", "socks");
  assert.equal(known.code, 0, known.stderr);
  assert.match(known.stdout, /--listen/);
  for (const topic of ["help", "--help", "-h"]) {
    const run = await ferry("help", topic);
    assert.equal(run.code, 0, `help ${topic}: ${run.stderr}`);
    // On stdout, as every other help: `ferry help help` wrote it to stderr.
    assert.match(run.stdout, /Commands:/, `help ${topic}: ${run.stderr}`);
    assert.equal(run.stderr, "", `help ${topic}`);
  }
});

Deno.test("--help after a command shows its help whatever else the line holds", async () => {
  for (
    const args of [
      ["socks", "--bogus", "--help"],
      ["socks", "--listen", "nope", "-h"],
      ["socks", "--help", "--max-conns", "-1"],
      // Straight after the command, before a flag that lacks its value.
      ["socks", "--help", "--listen"],
      // Where commander took it for the flag's value: `--listen: got "--help"`, exit 2.
      ["socks", "--listen", "--help"],
      ["forward", "--listen", "127.0.0.1:0", "--to", "-h"],
      ["run", "--config", "--help"],
    ]
  ) {
    const run = await ferry(...args);
    assert.equal(run.code, 0, `ferry ${args.join(" ")}: ${run.stderr}`);
    assert.match(run.stdout, new RegExp(`^Usage: ferry ${args[0]} `), `ferry ${args.join(" ")}`);
    assert.equal(run.stderr, "", `ferry ${args.join(" ")}`);
  }
});

Deno.test("a typo next to a request for help still exits 2 and names it", async () => {
  // Each printed the general help and exited 0, so a script never saw the typo.
  const cases: [string[], RegExp][] = [
    [["sokcs", "--help"], /unknown command 'sokcs'/],
    [["sokcs", "-h"], /unknown command 'sokcs'/],
    [["help", "--bogus"], /unknown option '--bogus'/],
    [["help", "socks", "extra"], /too many arguments for 'help'/],
  ];
  for (const [args, expected] of cases) {
    const run = await ferry(...args);
    assert.equal(run.code, 2, `ferry ${args.join(" ")}: ${run.stdout}${run.stderr}`);
    assert.match(run.stderr, expected, `ferry ${args.join(" ")}`);
    assert.equal(run.stdout, "", `ferry ${args.join(" ")}`);
  }
});

const BAD_VALUES: { args: string[]; value: string; expected: RegExp }[] = [
  { args: ["--listen", "nope"], value: "nope", expected: /HOST:PORT/i },
  { args: ["--listen", "127.0.0.1:70000"], value: "127.0.0.1:70000", expected: /HOST:PORT|port/i },
  { args: ["--max-conns", "-1"], value: "-1", expected: /number|integer|count/i },
  {
    args: ["--idle-timeout", "5x"],
    value: "5x",
    expected: /duration|250ms|10s|5m/i,
  },
  { args: ["--log-level", "loud"], value: "loud", expected: /debug.*info.*warn.*error/is },
  { args: ["--log-format", "xml"], value: "xml", expected: /text.*json/is },
  {
    args: ["--users-file", "/nonexistent/ferry-users"],
    value: "/nonexistent/ferry-users",
    expected: /not found|no such file|cannot|could not|does not exist|unreadable|read/i,
  },
];

Deno.test("--user without a colon exits 2 naming the flag, but not the value: it may be a password", async () => {
  const run = await ferry("socks", "--user", "s3cret-only");
  assert.equal(run.code, 2, `stdout: ${run.stdout}\nstderr: ${run.stderr}`);
  assert.ok(run.stderr.includes("--user"), run.stderr);
  assert.match(run.stderr, /NAME:PASSWORD/);
  assert.ok(!run.stderr.includes("s3cret"), `stderr shows the value:\n${run.stderr}`);
});

Deno.test("a mistyped short option with a value joined to it (curl's -uNAME:PASSWORD) is named without it", async () => {
  for (const args of [["socks", "-ualice:s3cret"], ["-ps3cret"], ["help", "-ps3cret"]]) {
    const run = await ferry(...args);
    assert.equal(run.code, 2, `stdout: ${run.stdout}\nstderr: ${run.stderr}`);
    assert.match(run.stderr, /unknown option '-[up]…'/);
    assert.ok(!run.stderr.includes("s3cret"), `stderr shows the value:\n${run.stderr}`);
  }
  // A short option alone has nothing joined to it to hide.
  const alone = await ferry("socks", "-x");
  assert.equal(alone.code, 2, alone.stderr);
  assert.match(alone.stderr, /^ferry socks: unknown option '-x'\n/);
});

Deno.test("a mistyped option given with =VALUE is named without its value", async () => {
  for (const value of ["alice:s3cret", "alice:s3'cr'et"]) {
    const run = await ferry("socks", `--usr=${value}`);
    assert.equal(run.code, 2, `stdout: ${run.stdout}\nstderr: ${run.stderr}`);
    assert.match(run.stderr, /unknown option '--usr=…'\n/);
    assert.ok(!/s3|cr|et'/.test(run.stderr), `stderr shows the value:\n${run.stderr}`);
  }
});

for (const { args, value, expected } of BAD_VALUES) {
  const flag = args[0]!;
  Deno.test(`${flag} ${value} exits 2 naming the flag, the value and what was expected`, async () => {
    const run = await ferry("socks", ...args);
    assert.equal(run.code, 2, `stdout: ${run.stdout}\nstderr: ${run.stderr}`);
    assert.ok(run.stderr.includes(flag), `stderr does not name ${flag}:\n${run.stderr}`);
    assert.ok(run.stderr.includes(value), `stderr does not name ${value}:\n${run.stderr}`);
    assert.match(run.stderr, expected);
  });
}

Deno.test("several bad values are all reported at once", async () => {
  const run = await ferry(
    "socks",
    "--listen",
    "nope",
    "--log-level",
    "loud",
    "--idle-timeout",
    "5x",
    "--max-conns",
    "many",
  );
  assert.equal(run.code, 2, run.stderr);
  for (const text of ["--listen", "nope", "--log-level", "loud", "--idle-timeout", "5x", "many"]) {
    assert.ok(run.stderr.includes(text), `stderr does not mention ${text}:\n${run.stderr}`);
  }
});

Deno.test("ferry forward without --listen and --to names both, in ferry's own words", async () => {
  // --listen was commander's required option: it alone was reported, as
  // "error: required option '--listen <host:port>' not specified".
  const run = await ferry("forward", "--pool", "many");
  assert.equal(run.code, 2, run.stderr);
  for (const text of ["ferry forward: --listen: required", "--to: required", '"many"']) {
    assert.ok(run.stderr.includes(text), `stderr does not mention ${text}:\n${run.stderr}`);
  }
});

Deno.test("--listen given twice exits 2: one command listens once", async () => {
  // The last one used to win silently, where two listeners were meant.
  for (const command of ["socks", "forward"]) {
    const run = await ferry(
      command,
      "--listen",
      "127.0.0.1:0",
      "--listen",
      "127.0.0.1:1",
      "--to",
      "127.0.0.1:9",
    );
    assert.equal(run.code, 2, run.stderr);
    assert.match(run.stderr, /--listen given twice.*ferry run --config/, run.stderr);
    // Not "argument '127.0.0.1:1' is invalid": that value is fine.
    assert.ok(!run.stderr.includes("is invalid"), run.stderr);
  }
});

Deno.test("a configuration file with 200,000 problems shows the first 100 and counts the rest, exit 2", async () => {
  // Every problem was passed to one push() as an argument: past about 130,000
  // that overflowed the stack (an uncaught RangeError, exit 1), and below it
  // the screen filled with as many lines.
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/garbage.jsonc`;
    const listeners = Array.from({ length: 200_000 }, () => ({ kind: 1 }));
    await Deno.writeTextFile(path, JSON.stringify({ listeners }));
    const run = await ferry("run", "--config", path);
    assert.equal(run.code, 2, run.stderr.slice(0, 500));
    const lines = run.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 102, lines.slice(-3).join("\n"));
    assert.match(lines[0]!, /^ferry run: listeners\[0\]\.kind: /);
    assert.equal(lines[100], "ferry run: and 199900 more problems not shown");
    assert.equal(lines[101], "(run ferry run --help for usage)");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a configuration file with 101 problems shows 100 and says one more problem, singular", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/garbage.jsonc`;
    const listeners = Array.from({ length: 101 }, () => ({ kind: 1 }));
    await Deno.writeTextFile(path, JSON.stringify({ listeners }));
    const run = await ferry("run", "--config", path);
    assert.equal(run.code, 2, run.stderr);
    const lines = run.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 102, lines.slice(-3).join("\n"));
    assert.equal(lines[100], "ferry run: and 1 more problem not shown");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--config given twice exits 2: the last file used to win silently", async () => {
  const run = await ferry("run", "--config", "a.jsonc", "--config", "b.jsonc");
  assert.equal(run.code, 2, run.stderr);
  assert.match(run.stderr, /--config given twice; one file declares every listener/, run.stderr);
});

Deno.test("a users file with a malformed line exits 2 naming the file and the line", async () => {
  const file = await Deno.makeTempFile({ prefix: "ferry-users-" });
  try {
    await Deno.writeTextFile(file, "# users\nalice:pw\nmalformed-line\n");
    const run = await ferry("socks", "--users-file", file);
    assert.equal(run.code, 2, run.stderr);
    assert.ok(run.stderr.includes(file), `stderr does not name the file:\n${run.stderr}`);
    assert.match(run.stderr, /:3\b|line 3\b/, "the line number");
    assert.ok(!run.stderr.includes("alice:pw"), "a password from the file was printed");
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("a flag followed by another flag instead of its value exits 2 naming both, and no value", async () => {
  const forward = await ferry("forward", "--listen", "--to", "127.0.0.1:9");
  assert.equal(forward.code, 2, forward.stderr);
  assert.match(
    forward.stderr,
    /^ferry forward: option '--listen <host:port>' argument missing: '--to' follows it\n/,
  );
  assert.match(forward.stderr, /\(run ferry forward --help for usage\)/);
  // The value that follows may be a password: it is not shown.
  const socks = await ferry("socks", "--user", "--listen", "alice:Sup3rSecret");
  assert.equal(socks.code, 2, socks.stderr);
  assert.match(socks.stderr, /option '--user <name:password>' argument missing: '--listen'/);
  assert.ok(!socks.stderr.includes("Sup3rSecret"), `password printed:\n${socks.stderr}`);
  // Also as the last two words of the line: --pool is not an upstream.
  const last = await ferry("forward", "--listen", "127.0.0.1:0", "--to", "--pool");
  assert.equal(last.code, 2, last.stderr);
  assert.match(last.stderr, /^ferry forward: option '--to <host:port>' argument missing: '--pool'/);
  // A value that merely starts with a dash is still a value, checked as such.
  const negative = await ferry("socks", "--listen", "127.0.0.1:0", "--idle-timeout", "-1s");
  assert.equal(negative.code, 2, negative.stderr);
  assert.match(negative.stderr, /--idle-timeout: got "-1s"/);
});

Deno.test("stray arguments are counted, not shown: `--user alice s3cret` must not print the password", async () => {
  const run = await ferry("socks", "--user", "alice", "Sup3rSecret");
  assert.equal(run.code, 2, run.stderr);
  assert.match(run.stderr, /too many arguments/);
  assert.ok(!run.stderr.includes("Sup3rSecret"), `password printed:\n${run.stderr}`);
  // A value with a newline in a mistyped option is not shown either.
  const typo = await ferry("socks", "--usr=alice:Sup3r\nSecret");
  assert.equal(typo.code, 2, typo.stderr);
  assert.match(typo.stderr, /--usr=/);
  assert.ok(!/Sup3r|Secret/.test(typo.stderr), `password printed:\n${typo.stderr}`);
});

Deno.test("a password given with --user is not echoed when another value is bad", async () => {
  const run = await ferry("socks", "--user", "alice:Sup3rSecret", "--listen", "nope");
  assert.equal(run.code, 2, run.stderr);
  assert.ok(!run.stderr.includes("Sup3rSecret"), `password printed:\n${run.stderr}`);
  assert.ok(!run.stdout.includes("Sup3rSecret"));
});

/**
 * Runs `command` in a process group of its own until ferry says it listens,
 * then ends the group with SIGTERM; returns everything it wrote.
 */
async function outputUntilListening(command: string, args: string[]): Promise<Run> {
  const child = new Deno.Command(command, {
    args,
    cwd: new URL("..", import.meta.url).pathname,
    detached: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: {
      NO_COLOR: "1",
      DENO_NO_UPDATE_CHECK: "1",
      // make's `deno` is this one, not one it would install.
      PATH: `${Deno.execPath().replace(/\/[^/]*$/, "")}:${Deno.env.get("PATH") ?? ""}`,
    },
  }).spawn();
  const texts = { stdout: "", stderr: "" };
  const collect = async (name: keyof typeof texts, stream: ReadableStream<Uint8Array>) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) texts[name] += text;
  };
  const collecting = Promise.all([
    collect("stdout", child.stdout),
    collect("stderr", child.stderr),
  ]);
  const signalGroup = (signal: Deno.Signal) => {
    try {
      Deno.kill(-child.pid, signal);
    } catch {
      // the group has exited
    }
  };
  const giveUp = setTimeout(() => signalGroup("SIGKILL"), 60_000);
  try {
    let exited = false;
    child.status.then(() => exited = true);
    while (!texts.stderr.includes("event=listening") && !exited) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    signalGroup("SIGTERM");
    const status = await child.status;
    await collecting;
    return { code: status.code, ...texts };
  } finally {
    clearTimeout(giveUp);
    signalGroup("SIGKILL");
  }
}

Deno.test("make run and the README's deno task command do not print a --user password", async () => {
  const password = "Pw-" + crypto.randomUUID();
  const listenAndUser = ["--listen", "127.0.0.1:0", "--user", `alice:${password}`];
  const runs = {
    "make run": await outputUntilListening("make", [
      "--no-print-directory",
      "run",
      `ARGS=${listenAndUser.join(" ")}`,
    ]),
    "deno task --quiet start": await outputUntilListening(Deno.execPath(), [
      "task",
      "--quiet",
      "start",
      "--",
      "socks",
      ...listenAndUser,
    ]),
  };
  for (const [what, run] of Object.entries(runs)) {
    assert.match(run.stderr, /event=listening/, `${what} did not start:\n${run.stderr}`);
    for (const text of [run.stdout, run.stderr]) {
      assert.ok(!text.includes(password), `${what} printed the password:\n${text}`);
    }
  }
});

Deno.test("the listening line in text shows its lists as name=a,b, not as quoted JSON", async () => {
  const listeningLine = async (args: string[]) => {
    const run = await outputUntilListening(Deno.execPath(), ferryCommandArgs(args));
    const line = run.stderr.split("\n").find((l) => l.includes("event=listening"));
    assert.ok(line, `ferry ${args.join(" ")} did not start:\n${run.stderr}`);
    assert.ok(!line.includes('\\"'), `a value written as quoted JSON: ${line}`);
    return line;
  };
  const listen = ["--listen", "127.0.0.1:0"];
  const forward = await listeningLine(
    ["forward", ...listen, "--to", "127.0.0.1:9", "--to", "[::1]:9", "--pool", "0"],
  );
  assert.match(forward, / to=127\.0\.0\.1:9,\[::1\]:9 /);
  const advertised = await listeningLine(
    ["socks", ...listen, "--udp-advertise", "2001:db8::7", "--udp-advertise", "192.0.2.7"],
  );
  assert.match(advertised, / udpAdvertise=192\.0\.2\.7,2001:db8::7 /);
  // Without --udp-advertise, a reply names the interface the client came in on.
  assert.match(await listeningLine(["socks", ...listen]), / udpAdvertise=interface /);
});

Deno.test("the listening line says what clients get: with users, authentication and no SOCKS4", async () => {
  // SOCKS4 carries no password, so users refuse it whatever --no-socks4 says.
  const listen = ["--listen", "127.0.0.1:0"];
  const lines = {
    open: await outputUntilListening(Deno.execPath(), ferryCommandArgs(["socks", ...listen])),
    users: await outputUntilListening(
      Deno.execPath(),
      ferryCommandArgs(["socks", ...listen, "--user", "alice:pw"]),
    ),
  };
  const [open, users] = [lines.open, lines.users].map((run) =>
    run.stderr.split("\n").find((l) => l.includes("event=listening")) ?? run.stderr
  );
  assert.match(open!, / auth=none users=0 socks4=true /);
  assert.match(users!, / auth=username\/password users=1 socks4=false /);
});
