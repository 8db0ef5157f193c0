/**
 * Unit tests of configuration parsing and validation: durations, addresses,
 * users, and buildSocksConfig's collect-every-problem contract, including
 * --users-file read from real temporary files.
 */
import assert from "node:assert/strict";
import {
  buildForwardConfig,
  buildSocksConfig,
  checkHostPort,
  checkUdpAdvertise,
  ConfigError,
  logFormatOf,
  logLevelOf,
  MAX_POOL,
  MAX_TEXT_FILE_BYTES,
  parseDuration,
  parseHostPort,
  parseUser,
  type RawSocksOptions,
} from "../src/config.ts";

const encoder = new TextEncoder();

/** Runs buildSocksConfig expecting a ConfigError; returns its problems. */
async function problemsOf(raw: RawSocksOptions): Promise<readonly string[]> {
  try {
    await buildSocksConfig(raw);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
    assert.equal(error.code, "invalid-config");
    assert.equal(error.message, error.problems.join("\n"));
    return error.problems;
  }
  assert.fail(`buildSocksConfig(${JSON.stringify(raw)}) did not throw`);
}

/** Writes `content` to a fresh temp file, runs `body` with its path, removes it. */
async function withTempFile<T>(content: string, body: (path: string) => Promise<T>): Promise<T> {
  const path = await Deno.makeTempFile({ prefix: "ferry-users-", suffix: ".txt" });
  try {
    await Deno.writeTextFile(path, content);
    return await body(path);
  } finally {
    await Deno.remove(path);
  }
}

Deno.test("parseDuration() converts each unit to milliseconds", () => {
  const table: [string, number][] = [
    ["250ms", 250],
    ["10s", 10_000],
    ["1.5m", 90_000],
    ["1h", 3_600_000],
    ["0.5s", 500],
    ["  2s ", 2000],
    ["0s", 0],
    // In parts, as Go's time.ParseDuration (gost) takes them.
    ["1h30m", 5_400_000],
    ["2m30.5s", 150_500],
    ["1s500ms", 1500],
    ["1m1ms", 60_001],
    ["5s1h", 3_605_000],
  ];
  for (const [text, ms] of table) assert.equal(parseDuration(text), ms, text);
});

Deno.test("parseDuration() rounds a fraction of a millisecond to the nearest one", () => {
  // Half a millisecond and more rounds up, as --handshake-timeout 2.5ms is taken.
  const table: [string, number][] = [["1.5ms", 2], ["2.5ms", 3], ["0.0015s", 2], ["1.4ms", 1]];
  for (const [text, ms] of table) assert.equal(parseDuration(text), ms, text);
});

Deno.test("parseDuration() rejects text that is not a number with a unit", () => {
  for (
    const text of [
      "",
      "5",
      "5x",
      "-1s",
      "ms",
      "1.s",
      ".5s",
      "1 s",
      "1S",
      "1d",
      "1e3ms",
      "1h30",
      "1h 30m",
      "1h+30m",
      "h30m",
    ]
  ) {
    assert.equal(parseDuration(text), null, JSON.stringify(text));
  }
});

Deno.test("parseHostPort() parses HOST:PORT and [IPV6]:PORT", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:1080"), { hostname: "127.0.0.1", port: 1080 });
  assert.deepEqual(parseHostPort("[::1]:1080"), { hostname: "::1", port: 1080 });
  assert.deepEqual(parseHostPort("localhost:0"), { hostname: "localhost", port: 0 });
  assert.deepEqual(parseHostPort("0.0.0.0:65535"), { hostname: "0.0.0.0", port: 65535 });
  assert.deepEqual(parseHostPort("[::ffff:127.0.0.1]:80"), {
    hostname: "::ffff:127.0.0.1",
    port: 80,
  });
});

Deno.test("checkHostPort() says what is wrong: the form, the port's range, or the IP", () => {
  assert.deepEqual(checkHostPort("localhost:0", 0), { hostname: "localhost", port: 0 });
  assert.deepEqual(checkHostPort("[::1]:1080", 1), { hostname: "::1", port: 1080 });
  assert.deepEqual(checkHostPort("10.0.0.5:80", 1), { hostname: "10.0.0.5", port: 80 });
  const cases: [string, 0 | 1, string][] = [
    ["nope", 0, "expected HOST:PORT or [IPV6]:PORT"],
    // A port alone, as gost and ssh -D take it: which host is meant is for the user to say.
    [
      ":1080",
      0,
      "expected HOST:PORT or [IPV6]:PORT (127.0.0.1:1080 for this machine only, 0.0.0.0:1080 " +
      "for every interface)",
    ],
    [
      "1080",
      0,
      "expected HOST:PORT or [IPV6]:PORT (127.0.0.1:1080 for this machine only, 0.0.0.0:1080 " +
      "for every interface)",
    ],
    ["8080", 1, "expected HOST:PORT or [IPV6]:PORT (such as 127.0.0.1:8080)"],
    ["127.0.0.1:65536", 0, "expected a port from 0 to 65535"],
    ["127.0.0.1:0", 1, "expected a port from 1 to 65535"], // an upstream cannot be port 0
    ["999.1.1.1:1080", 0, "expected an IPv4 address of four numbers 0 to 255, or a host name"],
    ["1.2.3:1080", 0, "expected an IPv4 address of four numbers 0 to 255, or a host name"],
    ["[nope]:1080", 0, "expected an IPv6 address in [ ]"],
    [
      "[fe80::1%eth0]:1080",
      0,
      "expected an IPv6 address without a zone (%IFACE) in [ ]: zones are not supported; " +
      "[::] listens on every interface",
    ],
    [
      "[fe80::1%eth0]:22",
      1,
      "expected an IPv6 address without a zone (%IFACE) in [ ]: zones are not supported, so a " +
      "link-local (fe80::) upstream cannot be given; use another of its addresses",
    ],
  ];
  for (const [text, minPort, problem] of cases) {
    assert.deepEqual(checkHostPort(text, minPort), { problem }, text);
  }
});

Deno.test("checkHostPort() refuses anything after the port's digits", () => {
  // A typo after the port must not be dropped: 1080x is no port 1080.
  for (const text of ["127.0.0.1:1080x", "[::1]:1080 x", "localhost:80:90", "127.0.0.1:1080/"]) {
    for (const minPort of [0, 1] as const) {
      assert.deepEqual(
        checkHostPort(text, minPort),
        { problem: "expected HOST:PORT or [IPV6]:PORT" },
        text,
      );
    }
    assert.equal(parseHostPort(text), null, text);
  }
});

Deno.test("checkHostPort() refuses a host name DNS cannot carry, and allows one trailing dot", () => {
  const label63 = "a".repeat(63);
  const name253 = [label63, label63, label63, "a".repeat(61)].join(".");
  assert.equal(name253.length, 253);
  for (
    const ok of [`${label63}.example:80`, `${name253}:80`, `${name253}.:80`, "example.com.:80"]
  ) {
    assert.ok(!("problem" in checkHostPort(ok, 1)), ok);
  }
  const emptyLabel =
    "expected a host name without an empty label (a leading dot, or two dots in a row)";
  const cases: [string, string][] = [
    ["a..b:80", emptyLabel],
    [".example.com:80", emptyLabel],
    ["example.com..:80", emptyLabel],
    [
      `${"a".repeat(64)}.example:80`,
      "expected a host name whose labels (the parts between dots) are at most 63 characters",
    ],
    [`${name253}a:80`, "expected a host name of at most 253 characters"],
  ];
  for (const [text, problem] of cases) {
    assert.deepEqual(checkHostPort(text, 1), { problem }, text);
  }
});

Deno.test("--listen and --to report a bad address naming the flag, the value and the problem", async () => {
  assert.deepEqual(await problemsOf({ listen: "999.1.1.1:1080" }), [
    `--listen: got "999.1.1.1:1080"; expected an IPv4 address of four numbers 0 to 255, ` +
    `or a host name`,
  ]);
  assert.throws(
    () => buildForwardConfig({ listen: "127.0.0.1:0", to: ["10.0.0.5:0"] }),
    (error: unknown) =>
      error instanceof ConfigError &&
      error.problems.join("\n") === `--to: got "10.0.0.5:0"; expected a port from 1 to 65535`,
  );
});

Deno.test("--pool is at most MAX_POOL, and --to may not be --listen itself", () => {
  assert.throws(
    () => buildForwardConfig({ listen: "127.0.0.1:0", to: ["127.0.0.1:22"], pool: "200000" }),
    (error: unknown) =>
      error instanceof ConfigError &&
      error.problems.join("\n") ===
        `--pool: got "200000"; expected a whole number from 0 to ${MAX_POOL}`,
  );
  assert.equal(
    buildForwardConfig({ listen: "127.0.0.1:0", to: ["127.0.0.1:22"], pool: String(MAX_POOL) })
      .poolSize,
    MAX_POOL,
  );
  for (
    const [listen, to] of [
      ["127.0.0.1:41186", "127.0.0.1:41186"],
      ["[::1]:41186", "[0:0::1]:41186"],
      ["0.0.0.0:41186", "127.0.0.2:41186"],
      ["[::]:41186", "localhost:41186"],
      ["127.0.0.1:41186", "localhost:41186"],
      ["0.0.0.0:41186", "0.0.0.0:41186"],
    ]
  ) {
    assert.throws(
      () => buildForwardConfig({ listen, to: ["127.0.0.1:22", to!] }),
      (error: unknown) =>
        error instanceof ConfigError &&
        error.problems.join("\n") === `--to: got ${JSON.stringify(to)}; expected an address ` +
            `other than --listen (ferry would forward to itself)`,
      `${listen} → ${to}`,
    );
  }
  assert.equal(buildForwardConfig({ listen: "127.0.0.1:0", to: ["127.0.0.1:1"] }).kind, "forward");
  // 0.0.0.0 is IPv4 only: an IPv6-only service on the same port is another listener.
  assert.equal(buildForwardConfig({ listen: "0.0.0.0:2222", to: ["[::1]:2222"] }).kind, "forward");
  // Another host on the same port is not this listener, whatever it listens on.
  assert.equal(
    buildForwardConfig({ listen: "0.0.0.0:2222", to: ["192.0.2.10:2222"] }).kind,
    "forward",
  );
  assert.equal(
    buildForwardConfig({ listen: "[::]:2222", to: ["[2001:db8::1]:2222"] }).kind,
    "forward",
  );
});

Deno.test("--to that leads back to --listen is refused however the host is spelled or dialled", () => {
  const loop = (to: string) =>
    `--to: got ${JSON.stringify(to)}; expected an address other than --listen ` +
    `(ferry would forward to itself)`;
  for (
    const [listen, to] of [
      // Host names in any case: LOCALHOST is localhost.
      ["localhost:41186", "LOCALHOST:41186"],
      ["Example.test:41186", "example.TEST:41186"],
      // A connection to [::] lands on ::1, and localhost may be ::1.
      ["[::1]:41186", "[::]:41186"],
      ["[::1]:41186", "localhost:41186"],
    ]
  ) {
    assert.throws(
      () => buildForwardConfig({ listen, to: ["127.0.0.1:22", to!] }),
      (error: unknown) => error instanceof ConfigError && error.problems.join("\n") === loop(to!),
      `${listen} → ${to}`,
    );
  }
  // A connection to [::] lands on ::1, never on 127.0.0.1: another listener.
  assert.equal(
    buildForwardConfig({ listen: "127.0.0.1:41186", to: ["[::]:41186"] }).kind,
    "forward",
  );
});

Deno.test("a forwarder without --listen is told --listen is required, and nothing about a loop", () => {
  // The default listen address is not this forwarder's: a --to equal to it is no loop.
  assert.throws(
    () => buildForwardConfig({ to: ["127.0.0.1:1080"] }),
    (error: unknown) =>
      error instanceof ConfigError &&
      error.problems.join("\n") ===
        "--listen: required; expected HOST:PORT ([::1]:PORT for IPv6)",
  );
});

Deno.test("parseHostPort() rejects malformed addresses", () => {
  for (
    const text of [
      "",
      "nope",
      "1.2.3.4",
      ":80",
      "host:99999",
      "host:65536",
      "host:",
      "[::1]",
      "::1:80",
      "[::1]:",
      "host:port",
      "host:123456",
      "two words:80",
    ]
  ) {
    assert.equal(parseHostPort(text), null, JSON.stringify(text));
  }
});

Deno.test("parseUser() splits at the first colon and keeps the rest as the password", () => {
  const user = parseUser("alice:pa:ss:word");
  assert.ok(typeof user !== "string", String(user));
  assert.equal(user.name, "alice");
  assert.deepEqual(user.password, encoder.encode("pa:ss:word"));

  const unicode = parseUser("José:pässwörd");
  assert.ok(typeof unicode !== "string", String(unicode));
  assert.equal(unicode.name, "José");
  assert.deepEqual(unicode.password, encoder.encode("pässwörd"));
});

Deno.test("parseUser() reports a missing colon, empty fields and over-long fields", () => {
  const noColon = parseUser("alice");
  assert.equal(typeof noColon, "string");
  assert.match(noColon as string, /NAME:PASSWORD/);
  assert.ok(!(noColon as string).includes("alice"), "the value may be a password: not shown");

  const emptyName = parseUser(":secret");
  assert.equal(typeof emptyName, "string");
  assert.match(emptyName as string, /user name must be 1 to 255 bytes.*got 0/);

  const emptyPassword = parseUser("alice:");
  assert.equal(typeof emptyPassword, "string");
  assert.match(emptyPassword as string, /password of user "alice" must be 1 to 255 bytes.*got 0/);

  const longName = parseUser(`${"n".repeat(256)}:pw`);
  assert.equal(typeof longName, "string");
  assert.match(longName as string, /got 256/);

  // 255 bytes is the RFC 1929 maximum and is accepted, for name and password.
  const maxName = parseUser(`${"n".repeat(255)}:${"p".repeat(255)}`);
  assert.ok(typeof maxName !== "string", String(maxName));
  assert.equal(maxName.password.length, 255);

  // The limit is in bytes, not characters: 128 two-byte characters are 256 bytes.
  const longUtf8 = parseUser(`${"é".repeat(128)}:pw`);
  assert.equal(typeof longUtf8, "string");
  assert.match(longUtf8 as string, /got 256/);

  const longPassword = parseUser(`alice:${"p".repeat(256)}`);
  assert.equal(typeof longPassword, "string");
  assert.match(longPassword as string, /got 256/);
});

Deno.test("buildSocksConfig() fills in the documented defaults", async () => {
  const config = await buildSocksConfig({});
  assert.deepEqual(config.listen, { hostname: "127.0.0.1", port: 1080 });
  assert.equal(config.users.size, 0);
  assert.equal(config.socks4, true);
  assert.equal(config.handshakeTimeoutMs, 10_000);
  assert.equal(config.connectTimeoutMs, 10_000);
  assert.equal(config.idleTimeoutMs, 300_000);
  assert.equal(config.shutdownGraceMs, 10_000);
  assert.equal(config.maxConns, 10_000);
  assert.equal(config.maxConnsPerIp, 10_000);
  assert.equal(config.logLevel, "info");
  assert.equal(config.logFormat, "text");
});

Deno.test("buildSocksConfig() takes every option as given", async () => {
  const config = await buildSocksConfig({
    listen: "[::1]:0",
    user: ["alice:a", "bob:b:c"],
    socks4: false,
    handshakeTimeout: "250ms",
    connectTimeout: "2s",
    idleTimeout: "1.5m",
    shutdownGrace: "1h",
    maxConns: "7",
    maxConnsPerIp: "3",
    logLevel: "debug",
    logFormat: "json",
  });
  assert.deepEqual(config.listen, { hostname: "::1", port: 0 });
  assert.deepEqual([...config.users.keys()], ["alice", "bob"]);
  assert.deepEqual(config.users.get("bob"), encoder.encode("b:c"));
  assert.equal(config.socks4, false);
  assert.equal(config.handshakeTimeoutMs, 250);
  assert.equal(config.connectTimeoutMs, 2000);
  assert.equal(config.idleTimeoutMs, 90_000);
  assert.equal(config.shutdownGraceMs, 3_600_000);
  assert.equal(config.maxConns, 7);
  assert.equal(config.maxConnsPerIp, 3);
  assert.equal(config.logLevel, "debug");
  assert.equal(config.logFormat, "json");
});

Deno.test("--log-level takes any case, and warning for warn (the name text lines show)", async () => {
  for (
    const [given, level] of [["WARN", "warn"], ["warning", "warn"], ["Debug", "debug"], [
      "ERROR",
      "error",
    ]]
  ) {
    const config = await buildSocksConfig({ logLevel: given });
    assert.equal(config.logLevel, level, given);
  }
  const problems = await problemsOf({ logLevel: "warnings" });
  assert.deepEqual(problems, ['--log-level: "warnings" is not one of debug, info, warn, error']);
});

Deno.test("--log-level and --log-format take a value with spaces around it", async () => {
  const config = await buildSocksConfig({ logLevel: " warning ", logFormat: "\tJSON " });
  assert.equal(config.logLevel, "warn");
  assert.equal(config.logFormat, "json");
  assert.equal(logLevelOf("  Debug\n"), "debug");
  assert.equal(logFormatOf(" text "), "text");
});

Deno.test("buildSocksConfig() defaults --max-conns-per-ip to --max-conns", async () => {
  const config = await buildSocksConfig({ maxConns: "5" });
  assert.equal(config.maxConnsPerIp, 5);
});

Deno.test("buildSocksConfig() reports every bad flag at once, naming flag and value", async () => {
  const bad: [flag: string, key: keyof RawSocksOptions, value: string][] = [
    ["--listen", "listen", "nope"],
    ["--handshake-timeout", "handshakeTimeout", "5"],
    ["--connect-timeout", "connectTimeout", "0s"],
    ["--idle-timeout", "idleTimeout", "-1s"],
    ["--shutdown-grace", "shutdownGrace", "soon"],
    ["--max-conns", "maxConns", "0"],
    ["--max-conns-per-ip", "maxConnsPerIp", "1.5"],
    ["--log-level", "logLevel", "loud"],
    ["--log-format", "logFormat", "xml"],
  ];
  const raw: Record<string, unknown> = { user: ["no-colon"] };
  for (const [, key, value] of bad) raw[key] = value;
  const problems = await problemsOf(raw as RawSocksOptions);
  assert.equal(problems.length, bad.length + 1, problems.join("\n"));
  for (const [flag, , value] of bad) {
    const problem = problems.find((p) => p.startsWith(`${flag}: `));
    assert.ok(problem, `no problem reported for ${flag}:\n${problems.join("\n")}`);
    assert.ok(problem.includes(JSON.stringify(value)), problem);
  }
  const userProblem = problems.find((p) => p.startsWith("--user: "));
  assert.ok(userProblem, problems.join("\n"));
  assert.match(userProblem, /expected NAME:PASSWORD/);
  assert.ok(!userProblem.includes("no-colon"), `the value may be a password: ${userProblem}`);
});

Deno.test("durations are taken from 1ms, --shutdown-grace and --connect-timeout to 596h, and says which bound a value missed", async () => {
  const ok = await buildSocksConfig({ shutdownGrace: "596h", idleTimeout: "1ms" });
  assert.equal(ok.shutdownGraceMs, 596 * 3_600_000);
  // Below the timer's real limit (about 596.5h), but above what the message says.
  assert.deepEqual(await problemsOf({ shutdownGrace: "596.4h" }), [
    `--shutdown-grace: got "596.4h"; expected at most 596h (about 24 days)`,
  ]);
  assert.equal(ok.idleTimeoutMs, 1);
  // The deadline sweep has no timer's limit: a month of idle time is fine.
  const long = await buildSocksConfig({ idleTimeout: "720h", handshakeTimeout: "1000h" });
  assert.equal(long.idleTimeoutMs, 720 * 3_600_000);
  // Past 2^31 - 1 ms a timer fires at once: 600h of grace would be none.
  assert.deepEqual(await problemsOf({ shutdownGrace: "600h" }), [
    `--shutdown-grace: got "600h"; expected at most 596h (about 24 days)`,
  ]);
  // The forwarder's pool dials under AbortSignal.timeout(connect timeout).
  assert.deepEqual(await problemsOf({ connectTimeout: "600h" }), [
    `--connect-timeout: got "600h"; expected at most 596h (about 24 days)`,
  ]);
  assert.throws(
    () =>
      buildForwardConfig({ listen: "127.0.0.1:0", to: ["127.0.0.1:1"], connectTimeout: "600h" }),
    (error: unknown) =>
      error instanceof ConfigError &&
      error.problems.includes(
        `--connect-timeout: got "600h"; expected at most 596h (about 24 days)`,
      ),
  );
  assert.deepEqual(await problemsOf({ idleTimeout: "0.4ms" }), [
    `--idle-timeout: got "0.4ms"; expected at least 1ms`,
  ]);
  // Rounded to 1 ms, 0.5ms was taken, though less than the least asked for.
  assert.deepEqual(await problemsOf({ idleTimeout: "0.5ms" }), [
    `--idle-timeout: got "0.5ms"; expected at least 1ms`,
  ]);
  assert.equal((await buildSocksConfig({ idleTimeout: "1.4ms" })).idleTimeoutMs, 1);
  // A number of 320 digits is a duration, but not one that can be counted.
  const huge = `1${"0".repeat(320)}ms`;
  assert.deepEqual(await problemsOf({ idleTimeout: huge }), [
    `--idle-timeout: got "${huge}"; expected a duration small enough to count in milliseconds ` +
    `(a timeout of 100000h never fires in practice)`,
  ]);
  assert.deepEqual(await problemsOf({ shutdownGrace: huge }), [
    `--shutdown-grace: got "${huge}"; expected at most 596h (about 24 days)`,
  ]);
  // Finite, but past whole milliseconds: the start-up line showed
  // idleTimeoutMs=3.6000000000000003e+36 for 10^30 hours.
  assert.equal((await buildSocksConfig({ idleTimeout: "1000000000h" })).idleTimeoutMs, 3.6e15);
  assert.deepEqual(await problemsOf({ idleTimeout: "10000000000h" }), [
    `--idle-timeout: got "10000000000h"; expected a duration small enough to count in ` +
    `milliseconds (a timeout of 100000h never fires in practice)`,
  ]);
  assert.deepEqual(await problemsOf({ connectTimeout: "soon" }), [
    `--connect-timeout: got "soon"; expected a positive number with a unit, like 250ms, 1.5s, ` +
    `10s, 5m, 1h or 1h30m`,
  ]);
});

Deno.test("buildSocksConfig() rejects counts that are not whole numbers ≥ 1", async () => {
  for (const value of ["0", "-1", "1e3", "abc", "", "99999999999999999999"]) {
    const problems = await problemsOf({ maxConns: value });
    assert.equal(problems.length, 1, `${JSON.stringify(value)}: ${problems.join("\n")}`);
    assert.ok(problems[0]!.startsWith("--max-conns: "), problems[0]);
  }
  // Too large, a number is told the largest one taken, not that it is below the least.
  assert.deepEqual(await problemsOf({ maxConns: "99999999999999999999" }), [
    `--max-conns: got "99999999999999999999"; expected a whole number from 1 to 9007199254740991`,
  ]);
  assert.deepEqual(await problemsOf({ maxConns: "0" }), [
    `--max-conns: got "0"; expected a whole number ≥ 1`,
  ]);
});

Deno.test("buildSocksConfig() reports a duplicate --user", async () => {
  const problems = await problemsOf({ user: ["alice:one", "alice:two"] });
  assert.equal(problems.length, 1, problems.join("\n"));
  assert.match(problems[0]!, /^--user: user "alice" is already defined at --user$/);
});

Deno.test("buildSocksConfig() reads --users-file, skipping comments and blank lines", async () => {
  const content = [
    "# ferry users",
    "",
    "alice:secret",
    "   ",
    "  # indented comment",
    "  bob:pa:ss  ",
    "carol:pässwörd\r",
    "",
  ].join("\n");
  await withTempFile(content, async (path) => {
    const config = await buildSocksConfig({ usersFile: [path], user: ["dave:d"] });
    assert.deepEqual([...config.users.keys()].sort(), ["alice", "bob", "carol", "dave"]);
    assert.deepEqual(config.users.get("alice"), encoder.encode("secret"));
    assert.deepEqual(config.users.get("bob"), encoder.encode("pa:ss"));
    assert.deepEqual(config.users.get("carol"), encoder.encode("pässwörd"));
  });
});

Deno.test("buildSocksConfig() takes the users of every --users-file, and spaces around the colon", async () => {
  // A second --users-file used to replace the first without a word, and
  // `name : password` made the user "name " with the password " password".
  await withTempFile("alice : secret\n\tbob:\tpw word\n", async (first) => {
    await withTempFile("carol:c\nalice:again\n", async (second) => {
      const config = await buildSocksConfig({ usersFile: [first] });
      assert.deepEqual([...config.users.keys()].sort(), ["alice", "bob"]);
      assert.deepEqual(config.users.get("alice"), encoder.encode("secret"));
      assert.deepEqual(config.users.get("bob"), encoder.encode("pw word"));
      assert.deepEqual(await problemsOf({ usersFile: [first, second] }), [
        `${second}:2: user "alice" is already defined at ${first}:1`,
      ]);
    });
  });
});

Deno.test("buildSocksConfig() says a --users-file was given twice, by any path to it", async () => {
  // Read twice, its every user was "already defined" at its own line.
  await withTempFile("alice:secret\nbob:pw\n", async (path) => {
    const dir = path.slice(0, path.lastIndexOf("/"));
    const name = path.slice(dir.length + 1);
    const other = `${dir}/./${name}`;
    assert.deepEqual(await problemsOf({ usersFile: [path, path] }), [
      `--users-file: ${JSON.stringify(path)} was given before; expected each file once`,
    ]);
    assert.deepEqual(await problemsOf({ usersFile: [path, other] }), [
      `--users-file: ${JSON.stringify(other)} was given before (as ${JSON.stringify(path)}); ` +
      `expected each file once`,
    ]);
  });
});

Deno.test("buildSocksConfig() trims only spaces and tabs in a users file: other white space is the password's", async () => {
  // String.trim() took these off silently: a password ending in a no-break
  // space worked only without it.
  await withTempFile("alice:secret\u00a0\n\u2003bob:pw\ncarol:\ufeffc \t\n", async (path) => {
    const config = await buildSocksConfig({ usersFile: [path] });
    assert.deepEqual([...config.users.keys()].sort(), ["alice", "carol", "\u2003bob"]);
    assert.deepEqual(config.users.get("alice"), encoder.encode("secret\u00a0"));
    assert.deepEqual(config.users.get("carol"), encoder.encode("\ufeffc"));
  });
});

Deno.test("buildSocksConfig() refuses a --user that was not UTF-8, without showing it", async () => {
  // Deno hands such an argument over with U+FFFD for the bad bytes.
  const problems = await problemsOf({ user: ["al\ufffdice:s3cret"] });
  assert.equal(problems.length, 1, problems.join("\n"));
  assert.match(problems[0]!, /^--user: not UTF-8 text/);
  assert.ok(!problems[0]!.includes("s3cret") && !problems[0]!.includes("ice"), problems[0]);
  // A U+FFFD typed as such is refused alike, as it cannot be told apart, and
  // the message says so, rather than calling valid UTF-8 text "not UTF-8".
  assert.match(problems[0]!, /or a U\+FFFD .*in a --users-file, where a U\+FFFD is kept/);
});

Deno.test("buildSocksConfig() shows only the start of a user name too long to be one", async () => {
  const problems = await problemsOf({ user: [`${"n".repeat(100_000)}:pw`] });
  assert.equal(problems.length, 1);
  assert.ok(problems[0]!.length < 200, `${problems[0]!.length} characters`);
  assert.match(
    problems[0]!,
    /^--user: user name must be 1 to 255 bytes \(RFC 1929\), got 100000 in "n{64}"…$/,
  );
});

Deno.test("buildSocksConfig() reports at most 20 problems of one users file, then that the rest went unchecked", async () => {
  // A log file given by mistake made one problem a line: half a million.
  const logLines = Array.from({ length: 500 }, (_, i) => `GET /${i} HTTP/1.1 200`).join("\n");
  const repeated = Array.from({ length: 500 }, () => "u:p").join("\n");
  for (const content of [logLines, repeated]) {
    await withTempFile(content, async (path) => {
      const problems = await problemsOf({ usersFile: [path], maxConns: "zero" });
      assert.equal(problems.length, 22, problems.slice(18).join("\n")); // 20, the note, --max-conns
      const lineProblems = problems.filter((p) =>
        p.startsWith(`${path}:`) && !p.includes("not checked")
      );
      assert.equal(lineProblems.length, 20);
      const note = problems.find((p) => p.includes("were not checked"));
      assert.ok(note?.startsWith(`${path}: 20 problems; its other `), note);
      assert.ok(problems.some((p) => p.startsWith("--max-conns")), "other options still checked");
    });
  }
});

Deno.test("the note after 20 problems of a users file counts exactly the entries left unchecked", async () => {
  // 30 entries without a colon: the 21st and the 9 after it were not checked.
  const content = Array.from({ length: 30 }, (_, i) => `entry${i}`).join("\n");
  await withTempFile(content, async (path) => {
    const problems = await problemsOf({ usersFile: [path] });
    assert.equal(problems.length, 21);
    assert.equal(
      problems[20],
      `${path}: 20 problems; its other 10 entries were not checked (is it the right file?)`,
    );
  });
});

Deno.test("buildSocksConfig() refuses a users file larger than 16 MiB instead of reading it all", async () => {
  // /dev/zero as the users file took 2 GB of memory in 5 s and went on.
  const problems = await problemsOf({ usersFile: ["/dev/zero"] });
  assert.deepEqual(problems, [
    '--users-file: cannot read "/dev/zero": larger than 16 MiB; is it the right file?',
  ]);
});

Deno.test("buildSocksConfig() reads a users file of exactly 16 MiB; one byte more is refused", async () => {
  const line = "alice:secret\n";
  const padding = "#".repeat(MAX_TEXT_FILE_BYTES - line.length - 1) + "\n";
  await withTempFile(line + padding, async (path) => {
    const config = await buildSocksConfig({ usersFile: [path] });
    assert.equal(config.users.size, 1);
  });
  await withTempFile(line + "#" + padding, async (path) => {
    assert.deepEqual(await problemsOf({ usersFile: [path] }), [
      `--users-file: cannot read ${
        JSON.stringify(path)
      }: larger than 16 MiB; is it the right file?`,
    ]);
  });
});

Deno.test("buildSocksConfig() reports a bad users-file line as path:lineNumber", async () => {
  await withTempFile("# header\nalice:secret\n\nnocolon\nbob:\n", async (path) => {
    const problems = await problemsOf({ usersFile: [path] });
    assert.equal(problems.length, 2, problems.join("\n"));
    assert.ok(problems[0]!.startsWith(`${path}:4: `), problems[0]);
    assert.match(problems[0]!, /expected NAME:PASSWORD, got a value with no ":"/);
    assert.ok(
      !problems[0]!.includes("nocolon"),
      `a line that may be a password is shown: ${problems[0]}`,
    );
    assert.ok(problems[1]!.startsWith(`${path}:5: `), problems[1]);
    assert.match(problems[1]!, /password of user "bob"/);
  });
});

Deno.test("buildSocksConfig() refuses a users file with carriage returns alone as line ends", async () => {
  // Classic Mac line ends: read by LF, the whole file was one user "alice"
  // with the password "x\rbob:y", and nothing said so.
  await withTempFile("alice:x\rbob:y\r", async (path) => {
    const problems = await problemsOf({ usersFile: [path] });
    assert.equal(problems.length, 1, problems.join("\n"));
    assert.equal(
      problems[0],
      `${path}:1: a carriage return (CR) inside the line; save the file with LF or CRLF line ends`,
    );
  });
});

Deno.test("buildSocksConfig() refuses a users file line that starts with a byte order mark", async () => {
  // `cat a b` of two files saved with BOMs: the second one's BOM made its
  // first user "\uFEFFbob", and bob could not log in. The file's own BOM is
  // no part of any line.
  await withTempFile("\uFEFFalice:a\n\uFEFFbob:b\ncarol:c\n", async (path) => {
    const problems = await problemsOf({ usersFile: [path] });
    assert.deepEqual(problems, [
      `${path}:2: starts with a byte order mark (U+FEFF), as where two files were joined; ` +
      "delete it",
    ]);
  });
});

Deno.test("buildSocksConfig() reports users defined twice, in the file or on the command line", async () => {
  await withTempFile("alice:one\nbob:b\nalice:two\ncarol:c\n", async (path) => {
    const problems = await problemsOf({ usersFile: [path], user: ["carol:x"] });
    assert.equal(problems.length, 2, problems.join("\n"));
    assert.equal(problems[0], `${path}:3: user "alice" is already defined at ${path}:1`);
    assert.equal(problems[1], `${path}:4: user "carol" is already defined at --user`);
  });
});

Deno.test("buildSocksConfig() reports a users file that cannot be read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ferry-config-" });
  try {
    const missing = `${dir}/no-such-file`;
    const problems = await problemsOf({ usersFile: [missing], maxConns: "zero" });
    assert.equal(problems.length, 2, problems.join("\n"));
    const problem = problems.find((p) => p.startsWith("--users-file: "));
    assert.ok(problem, problems.join("\n"));
    assert.ok(problem.includes(`cannot read ${JSON.stringify(missing)}`), problem);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("buildSocksConfig() refuses a users file that is not UTF-8, naming the line", async () => {
  // Read with U+FFFD in place of the bad byte, Latin-1 "bob:p\xe4ss" was
  // taken, and the password as written then never matched.
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/users`;
    await Deno.writeFile(path, new Uint8Array([...encoder.encode("alice:a\nbob:p"), 0xe4, 0x73]));
    assert.deepEqual(await problemsOf({ usersFile: [path] }), [
      `${path}:2: not UTF-8 text; save the file as UTF-8 (a password is compared as its UTF-8 ` +
      `bytes)`,
    ]);
    // In a comment, any bytes will do: such files used to work.
    await Deno.writeFile(
      path,
      new Uint8Array([...encoder.encode("# caf"), 0xe9, 0x0a, ...encoder.encode("alice:a\n")]),
    );
    assert.equal((await buildSocksConfig({ usersFile: [path] })).users.size, 1);
    await Deno.writeTextFile(path, "alice:a\nbob:päss\n");
    const config = await buildSocksConfig({ usersFile: [path] });
    assert.deepEqual(config.users.get("bob"), encoder.encode("päss"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("buildSocksConfig() reports a users file saved as UTF-16 once, and a NUL byte as such", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/users`;
    // Two users in UTF-16 little-endian, with its byte order mark and without.
    const text = "alice:secret\nbob:pw\n";
    for (const bom of [[0xff, 0xfe], []]) {
      const bytes = new Uint8Array(bom.length + text.length * 2);
      bytes.set(bom);
      for (let i = 0; i < text.length; i++) bytes[bom.length + 2 * i] = text.charCodeAt(i);
      await Deno.writeFile(path, bytes);
      assert.deepEqual(await problemsOf({ usersFile: [path] }), [
        `${path}: looks like UTF-16 text; save the file as UTF-8 (a password is compared as ` +
        `its UTF-8 bytes)`,
      ], `BOM: ${bom.length > 0}`);
    }
    // One NUL in a UTF-8 file: the line is named, and not called "not UTF-8".
    await Deno.writeFile(path, encoder.encode("alice:a\nbob:p\0w\n"));
    assert.deepEqual(await problemsOf({ usersFile: [path] }), [
      `${path}:2: a NUL byte; a users file holds lines of NAME:PASSWORD text`,
    ]);
    // Latin-1 that starts as a UTF-16 byte order mark would read: still "not UTF-8".
    await Deno.writeFile(path, new Uint8Array([0xc4, 0xd6, ...encoder.encode(":pw\n")]));
    assert.deepEqual(await problemsOf({ usersFile: [path] }), [
      `${path}:1: not UTF-8 text; save the file as UTF-8 (a password is compared as its UTF-8 ` +
      `bytes)`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("buildSocksConfig() reports a users file that defines no users", async () => {
  for (const content of ["", "# only a comment\n\n   \n"]) {
    await withTempFile(content, async (path) => {
      const problems = await problemsOf({ usersFile: [path] });
      assert.equal(problems.length, 1, problems.join("\n"));
      assert.equal(
        problems[0],
        `--users-file: ${JSON.stringify(path)} defines no users; expected lines of NAME:PASSWORD`,
      );
    });
  }
});

Deno.test("buildSocksConfig() does not add 'defines no users' when the file's lines were bad", async () => {
  await withTempFile("nocolon\n", async (path) => {
    const problems = await problemsOf({ usersFile: [path] });
    assert.equal(problems.length, 1, problems.join("\n"));
    assert.ok(problems[0]!.startsWith(`${path}:1: `), problems[0]);
  });
});

Deno.test("buildSocksConfig() reads --udp-advertise, --bind-timeout and --max-udp-per-ip", async () => {
  const config = await buildSocksConfig({
    udpAdvertise: ["2001:DB8::7"],
    bindTimeout: "30s",
    maxUdpPerIp: "2",
  });
  assert.deepEqual(config.udpAdvertise, { ipv4: null, ipv6: "2001:db8::7" });
  assert.equal(config.bindTimeoutMs, 30_000);
  assert.equal(config.maxUdpPerIp, 2);
  const both = await buildSocksConfig({ udpAdvertise: ["[2001:db8::7]", " 203.0.113.7 "] });
  assert.deepEqual(both.udpAdvertise, { ipv4: "203.0.113.7", ipv6: "2001:db8::7" });
  const mapped = await buildSocksConfig({ udpAdvertise: ["::ffff:203.0.113.7"] });
  assert.deepEqual(
    mapped.udpAdvertise,
    { ipv4: "203.0.113.7", ipv6: null },
    "IPv4, for IPv4 clients",
  );
  const defaults = await buildSocksConfig({ connectTimeout: "3s" });
  assert.deepEqual(defaults.udpAdvertise, { ipv4: null, ipv6: null });
  assert.equal(defaults.bindTimeoutMs, 3_000, "--bind-timeout defaults to --connect-timeout");
  assert.equal(defaults.maxUdpPerIp, 16);
});

Deno.test("buildSocksConfig() reports a --udp-advertise that is not an IP and a zero --max-udp-per-ip", async () => {
  await assert.rejects(
    buildSocksConfig({ udpAdvertise: ["nat.example"], maxUdpPerIp: "0" }),
    (error: unknown) =>
      error instanceof ConfigError && error.problems.length === 2 &&
      error.problems[0]!.startsWith('--udp-advertise: got "nat.example"; expected an IPv4') &&
      error.problems[1]!.startsWith('--max-udp-per-ip: got "0"'),
  );
});

Deno.test("checkUdpAdvertise() refuses what a client could not send to, and two of one family", () => {
  const problemsOf = (texts: string[]) => {
    const checked = checkUdpAdvertise(texts);
    return "problems" in checked ? checked.problems : [];
  };
  const nowhereAtAll = ["0.0.0.0", "::", "[::]", "255.255.255.255", "224.0.0.1", "ff02::1"];
  // The same IPv4 addresses written IPv4-mapped, which a client is told as IPv4.
  const mapped = [
    "::ffff:0.0.0.0",
    "[::ffff:255.255.255.255]",
    "::FFFF:224.0.0.1",
    "0:0:0:0:0:ffff:0:0",
  ];
  for (const nowhere of [...nowhereAtAll, ...mapped]) {
    const problems = problemsOf([nowhere]);
    assert.equal(problems.length, 1, nowhere);
    assert.match(problems[0]!.problem, /expected the address clients reach ferry at/, nowhere);
  }
  for (const notAnIp of ["nat.example", "[203.0.113.7]", "", "2001:db8::7%eth0"]) {
    assert.match(problemsOf([notAnIp])[0]?.problem ?? "", /expected an IPv4 or IPv6 address/);
  }
  assert.deepEqual(problemsOf(["203.0.113.7", "2001:db8::7", "198.51.100.1"]), [{
    index: 2,
    problem: "expected one IPv4 address at most (one per address family), and 203.0.113.7 " +
      "came first",
  }]);
});
