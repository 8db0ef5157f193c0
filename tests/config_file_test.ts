/**
 * Unit tests of the configuration file: the shipped example, defaults and
 * overrides, equivalence with the command line's configs, JSONC syntax, and
 * the collect-every-problem contract with PATH-named messages.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  buildForwardConfig,
  buildSocksConfig,
  ConfigError,
  type ForwardConfig,
  type SocksConfig,
} from "../src/config.ts";
import { formatPath, loadConfigFile, parseRunConfig, type RunConfig } from "../src/config_file.ts";

const encoder = new TextEncoder();
const EXAMPLE = fileURLToPath(new URL("../ferry.example.jsonc", import.meta.url));

/** Expects `promise` to reject with a ConfigError; returns its problems. */
async function problemsOf(promise: Promise<unknown>): Promise<readonly string[]> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
    assert.equal(error.message, error.problems.join("\n"));
    assert.ok(error.problems.length > 0);
    return error.problems;
  }
  assert.fail("expected a ConfigError, but the configuration was accepted");
}

/** Problems of a configuration given as a value (serialised as JSON). */
function problemsOfValue(value: unknown): Promise<readonly string[]> {
  return problemsOf(parseRunConfig(JSON.stringify(value, null, 2), "test.jsonc"));
}

/** Runs `body` in a fresh temp dir, removed afterwards. */
async function withTempDir<T>(body: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "ferry-config-" });
  try {
    return await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const socks = (listener: SocksConfig | ForwardConfig | undefined): SocksConfig => {
  assert.equal(listener?.kind, "socks");
  return listener as SocksConfig;
};
const forward = (listener: SocksConfig | ForwardConfig | undefined): ForwardConfig => {
  assert.equal(listener?.kind, "forward");
  return listener as ForwardConfig;
};

/** One valid socks and one valid forward listener, for tests to spoil. */
function validFile(): { listeners: Record<string, unknown>[]; [key: string]: unknown } {
  return {
    listeners: [
      { kind: "socks", listen: "127.0.0.1:1080" },
      { kind: "forward", listen: "127.0.0.1:2222", to: ["127.0.0.1:22"] },
    ],
  };
}

Deno.test("the example file loads into one socks and one forward listener", async () => {
  const config: RunConfig = await loadConfigFile(EXAMPLE);
  assert.equal(config.logLevel, "info");
  assert.equal(config.logFormat, "text");
  assert.equal(config.listeners.length, 2);
  assert.deepEqual(socks(config.listeners[0]), {
    kind: "socks",
    listen: { hostname: "127.0.0.1", port: 1080 },
    handshakeTimeoutMs: 5_000,
    connectTimeoutMs: 10_000,
    idleTimeoutMs: 300_000,
    shutdownGraceMs: 10_000,
    maxConns: 10_000,
    maxConnsPerIp: 100,
    logLevel: "info",
    logFormat: "text",
    users: new Map([["alice", encoder.encode("change-me")]]),
    socks4: true,
    udpAdvertise: { ipv4: null, ipv6: null },
    bindTimeoutMs: 10_000,
    maxUdpPerIp: 16,
  });
  assert.deepEqual(forward(config.listeners[1]), {
    kind: "forward",
    listen: { hostname: "127.0.0.1", port: 2222 },
    handshakeTimeoutMs: 10_000,
    connectTimeoutMs: 10_000,
    idleTimeoutMs: 300_000,
    shutdownGraceMs: 10_000,
    maxConns: 500,
    maxConnsPerIp: 100,
    logLevel: "info",
    logFormat: "text",
    upstreams: [{ hostname: "127.0.0.1", port: 22 }],
    poolSize: 4,
    poolMaxIdleMs: 30_000,
  });
});

Deno.test("a minimal file gives exactly the configs the command line gives", async () => {
  const config = await parseRunConfig(JSON.stringify(validFile()), "test.jsonc");
  assert.equal(config.listeners.length, 2);
  assert.deepEqual(config.listeners[0], await buildSocksConfig({ listen: "127.0.0.1:1080" }));
  assert.deepEqual(
    config.listeners[1],
    buildForwardConfig({ listen: "127.0.0.1:2222", to: ["127.0.0.1:22"] }),
  );
});

Deno.test("a full file gives exactly the configs the equivalent command line gives", async () => {
  const text = JSON.stringify({
    log: { level: "debug", format: "json" },
    listeners: [
      {
        kind: "socks",
        listen: "[::1]:1081",
        users: [{ name: "bob", password: "pa:ss wörd" }],
        socks4: false,
        handshakeTimeout: "250ms",
        connectTimeout: "3s",
        idleTimeout: "1.5m",
        shutdownGrace: "1h",
        maxConns: 7,
        maxConnsPerIp: 2,
      },
      {
        kind: "forward",
        listen: "127.0.0.1:0",
        to: ["127.0.0.1:22", "[::1]:23"],
        pool: 0,
        poolMaxIdle: "2s",
        connectTimeout: "4s",
        maxConns: 9,
      },
    ],
  });
  const config = await parseRunConfig(text, "test.jsonc");
  assert.equal(config.logLevel, "debug");
  assert.equal(config.logFormat, "json");
  assert.deepEqual(
    config.listeners[0],
    await buildSocksConfig({
      listen: "[::1]:1081",
      user: ["bob:pa:ss wörd"],
      socks4: false,
      handshakeTimeout: "250ms",
      connectTimeout: "3s",
      idleTimeout: "1.5m",
      shutdownGrace: "1h",
      maxConns: "7",
      maxConnsPerIp: "2",
      logLevel: "debug",
      logFormat: "json",
    }),
  );
  assert.deepEqual(
    config.listeners[1],
    buildForwardConfig({
      listen: "127.0.0.1:0",
      to: ["127.0.0.1:22", "[::1]:23"],
      pool: "0",
      poolMaxIdle: "2s",
      connectTimeout: "4s",
      maxConns: "9",
      logLevel: "debug",
      logFormat: "json",
    }),
  );
});

Deno.test("defaults apply to every listener and per-listener settings win", async () => {
  const config = await parseRunConfig(
    JSON.stringify({
      defaults: {
        handshakeTimeout: "1s",
        connectTimeout: "2s",
        idleTimeout: "3s",
        shutdownGrace: "4s",
        maxConns: 50,
      },
      listeners: [
        { kind: "socks", listen: "127.0.0.1:1080", idleTimeout: "30s", maxConnsPerIp: 5 },
        { kind: "forward", listen: "127.0.0.1:2222", to: ["127.0.0.1:22"], maxConns: 20 },
      ],
    }),
    "test.jsonc",
  );
  const first = socks(config.listeners[0]);
  assert.equal(first.handshakeTimeoutMs, 1_000);
  assert.equal(first.connectTimeoutMs, 2_000);
  assert.equal(first.idleTimeoutMs, 30_000);
  assert.equal(first.shutdownGraceMs, 4_000);
  assert.equal(first.maxConns, 50);
  assert.equal(first.maxConnsPerIp, 5);
  const second = forward(config.listeners[1]);
  assert.equal(second.handshakeTimeoutMs, 1_000);
  assert.equal(second.idleTimeoutMs, 3_000);
  assert.equal(second.maxConns, 20);
  // Without maxConnsPerIp anywhere, the per-IP limit is the listener's own maxConns.
  assert.equal(second.maxConnsPerIp, 20);
});

Deno.test("defaults.maxConnsPerIp applies when a listener does not set its own", async () => {
  const config = await parseRunConfig(
    JSON.stringify({
      defaults: { maxConnsPerIp: 3 },
      listeners: [
        { kind: "socks", listen: "127.0.0.1:1080" },
        { kind: "socks", listen: "127.0.0.1:1081", maxConnsPerIp: 8 },
      ],
    }),
    "test.jsonc",
  );
  assert.equal(config.listeners[0]?.maxConnsPerIp, 3);
  assert.equal(config.listeners[0]?.maxConns, 10_000);
  assert.equal(config.listeners[1]?.maxConnsPerIp, 8);
});

Deno.test("a listener's own setting wins over defaults for every setting defaults holds", async () => {
  // Each setting is looked up on its own: one given in both places must take the listener's.
  const own = {
    connectTimeout: "20s",
    idleTimeout: "30s",
    shutdownGrace: "40s",
    maxConns: 500,
    maxConnsPerIp: 50,
  };
  const config = await parseRunConfig(
    JSON.stringify({
      defaults: {
        handshakeTimeout: "1s",
        connectTimeout: "2s",
        idleTimeout: "3s",
        shutdownGrace: "4s",
        maxConns: 5,
        maxConnsPerIp: 6,
      },
      listeners: [
        { kind: "socks", listen: "127.0.0.1:1080", handshakeTimeout: "10s", ...own },
        { kind: "forward", listen: "127.0.0.1:2222", to: ["127.0.0.1:22"], ...own },
      ],
    }),
    "test.jsonc",
  );
  for (const listener of config.listeners) {
    const { connectTimeoutMs, idleTimeoutMs, shutdownGraceMs, maxConns, maxConnsPerIp } = listener;
    assert.deepEqual(
      { connectTimeoutMs, idleTimeoutMs, shutdownGraceMs, maxConns, maxConnsPerIp },
      {
        connectTimeoutMs: 20_000,
        idleTimeoutMs: 30_000,
        shutdownGraceMs: 40_000,
        maxConns: 500,
        maxConnsPerIp: 50,
      },
      listener.kind,
    );
  }
  assert.equal(socks(config.listeners[0]).handshakeTimeoutMs, 10_000);
  // A BIND waits as long as the listener's own connectTimeout, not the default's.
  assert.equal(socks(config.listeners[0]).bindTimeoutMs, 20_000);
});

Deno.test("a file without log settings logs at info in text, and log.format takes any case", async () => {
  // main.ts starts logging with the file's own level and format, not the listeners'.
  const plain = await parseRunConfig(JSON.stringify(validFile()), "test.jsonc");
  assert.deepEqual([plain.logLevel, plain.logFormat], ["info", "text"]);
  const upper = await parseRunConfig(
    JSON.stringify({ ...validFile(), log: { format: "JSON" } }),
    "test.jsonc",
  );
  assert.deepEqual([upper.logLevel, upper.logFormat], ["info", "json"]);
  assert.equal(upper.listeners[0]?.logFormat, "json");
});

Deno.test("comments and trailing commas are accepted", async () => {
  const text = `
    // a line comment
    {
      /* a block
         comment */
      "log": { "level": "WARNING", }, // trailing comma in an object; any case, warning for warn
      "listeners": [
        { "kind": "forward", "listen": "127.0.0.1:2222", "to": ["127.0.0.1:22",], },
      ], // trailing comma in an array
    }
  `;
  const config = await parseRunConfig(text, "test.jsonc");
  assert.equal(config.logLevel, "warn");
  assert.deepEqual(forward(config.listeners[0]).upstreams, [{ hostname: "127.0.0.1", port: 22 }]);
});

Deno.test("an unquoted password is not shown in the syntax error", async () => {
  const text = `{ "users": [{ "name": "alice", "password": Sup3rSecret }], "listeners": [] }`;
  const problems = await problemsOf(parseRunConfig(text, "test.jsonc"));
  assert.ok(problems.length > 0);
  for (const problem of problems) assert.doesNotMatch(problem, /Sup3rSecret/);
  assert.match(problems[0]!, /^test\.jsonc:1:\d+: .*not shown/);
});

Deno.test("a password is not shown however the syntax around it is wrong", async () => {
  // Each of these used to print the password, or its second word.
  const user = (rest: string) =>
    `{ "listeners": [{ "kind": "socks", "listen": "127.0.0.1:0",
    "users": [{ "name": "alice", ${rest} }] }] }`;
  for (
    const rest of [
      `"password" "hunter2-S3cret"`, // no colon
      `"password": hunter2 S3cret`, // unquoted, with a space
      `"password": 'hunter2 S3cret'`, // single quotes
      `"password": "hunter2" S3cret"`, // a quote inside
      `"password": hunter2}S3cret`,
      `"password":\n  'hunter2}S3cret'`, // on the next line, holding a brace
    ]
  ) {
    const problems = await problemsOf(parseRunConfig(user(rest), "test.jsonc"));
    for (const problem of problems) assert.doesNotMatch(problem, /S3cret|hunter2/, rest);
  }
  // Away from a password, the token is still shown.
  const problems = await problemsOf(
    parseRunConfig(`{ "listeners": [], "log": { "level": soon } }`, "test.jsonc"),
  );
  assert.match(problems[0]!, /got "soon"/);
  // So it is once the users array has closed and a line has ended since the password.
  const after = await problemsOf(parseRunConfig(
    `{ "listeners": [{ "kind": "socks", "users": [{ "name": "alice", "password": "x" }],
    "listen": soon }] }`,
    "test.jsonc",
  ));
  assert.match(after[0]!, /got "soon"/);
});

Deno.test("a password is not shown where no users array guards it", async () => {
  // Misspelt "user": only the password key guards what follows it, up to a
  // "}" and a line end, and a password may hold a "}".
  const misspelt = `{ "listeners": [{ "kind": "socks", "listen": "127.0.0.1:0",
    "user": [{ "name": "alice", "password": hunter2}S3cret }] }] }`;
  // A user commented out with its comment left open: the token is the rest
  // of the file, before any key that guards it.
  const comment = `{ "listeners": [] /* { "name": "alice", "password": "S3cret" }`;
  for (const text of [misspelt, comment]) {
    const problems = await problemsOf(parseRunConfig(text, "test.jsonc"));
    for (const problem of problems) assert.doesNotMatch(problem, /S3cret|hunter2/, text);
  }
});

Deno.test("a password is not shown when the file around it is not the shape expected", async () => {
  const users = [{ name: "alice", password: "S3cret-hunter2" }];
  const listener = { kind: "socks", listen: "127.0.0.1:0", users };
  for (
    const [what, text] of [
      // Each printed the first 57 characters of the listener, password and all.
      ["listeners without [ ]", JSON.stringify({ listeners: listener })],
      ["the listeners alone", JSON.stringify([listener])],
      ["a listener in [ ] too many", JSON.stringify({ listeners: [[listener]] })],
      // The syntax checks only knew the keys in double quotes.
      [
        "JSON5",
        `{ listeners: [{ kind: 'socks', users: [{ name: 'alice', password: 'S3cret' }] }] }`,
      ],
      // The comment's token is the rest of the file.
      ["an unterminated comment", `{ "listeners": [ /* ${JSON.stringify(listener)} ] }`],
    ]
  ) {
    const problems = await problemsOf(parseRunConfig(text!, "test.jsonc"));
    for (const problem of problems) assert.doesNotMatch(problem, /S3cret/, what);
  }
  assert.deepEqual(await problemsOfValue({ listeners: listener }), [
    "listeners: expected an array of listeners, got an object",
  ]);
  // A password written as a number, unquoted PIN-style, is one still.
  const pin = { kind: "socks", listen: "127.0.0.1:0", users: [{ name: "bob", password: 735190 }] };
  assert.deepEqual(await problemsOfValue({ listeners: [pin] }), [
    "listeners[0].users[0].password: expected a password, got a number (not shown: it may be secret)",
  ]);
});

Deno.test("a file of garbage is checked in a moment, each problem in its place", async () => {
  // Each problem's line was worked out from the start of the text, and each
  // syntax error looked back through it for a password: a 300 KB file of
  // 150,000 errors took 41 s, then crashed; 1.2 MB of bad lines ran for minutes.
  const count = 150_000;
  const text = `{"listeners":[${"\n @".repeat(count)}\n]}`;
  const started = performance.now();
  const problems = await problemsOf(parseRunConfig(text, "test.jsonc"));
  const ms = performance.now() - started;
  assert.equal(problems.length, count);
  for (const line of [2, 3, 1000, count + 1]) {
    assert.equal(problems[line - 2], `test.jsonc:${line}:2: unexpected symbol, got "@"`);
  }
  // Not a timed assertion of speed: a bound on going quadratic again (minutes).
  assert.ok(ms < 60_000, `${Math.round(ms)} ms`);
});

Deno.test("a file nested too deeply is a problem, not a crash", async () => {
  // 3,000 levels overflowed the stack: an uncaught RangeError, exit 1.
  const depth = 50_000;
  const text = `{ "listeners": [], "x": ${"[".repeat(depth)}${"]".repeat(depth)} }`;
  assert.deepEqual(await problemsOf(parseRunConfig(text, "test.jsonc")), [
    "test.jsonc: arrays or objects nested too deeply to read",
  ]);
});

Deno.test("a byte order mark at the start of the file is ignored", async () => {
  const config = await parseRunConfig("\uFEFF" + JSON.stringify(validFile()), "test.jsonc");
  assert.equal(config.listeners.length, 2);
});

Deno.test("a number too big for a double is shown as Infinity, not null", async () => {
  const text = JSON.stringify(validFile()).replace(`"to":`, `"pool": 1e400, "to":`);
  assert.deepEqual(await problemsOf(parseRunConfig(text, "test.jsonc")), [
    "listeners[1].pool: expected a whole number from 0 to 1024, got Infinity",
  ]);
});

Deno.test("a bad address in to[0] is named by its path and quoted", async () => {
  const file = validFile();
  file.listeners[1]!.to = ["nope", "10.0.0.5:0"];
  file.listeners[0]!.listen = "300.1.1.1:1080";
  assert.deepEqual(await problemsOfValue(file), [
    `listeners[0].listen: expected an IPv4 address of four numbers 0 to 255, or a host name, ` +
    `got "300.1.1.1:1080"`,
    `listeners[1].to[0]: expected HOST:PORT or [IPV6]:PORT, got "nope"`,
    // Port 0 means "any free port" to listen on; an upstream cannot have it.
    `listeners[1].to[1]: expected a port from 1 to 65535, got "10.0.0.5:0"`,
  ]);
});

Deno.test("a value is shown whole up to 60 characters, and longer ones cut to 57 and ...", async () => {
  const file = validFile();
  // 58 characters and their quotes are 60; one more is cut.
  file.listeners[1]!.to = ["a".repeat(58), "b".repeat(59)];
  assert.deepEqual(await problemsOfValue(file), [
    `listeners[1].to[0]: expected HOST:PORT or [IPV6]:PORT, got "${"a".repeat(58)}"`,
    `listeners[1].to[1]: expected HOST:PORT or [IPV6]:PORT, got "${"b".repeat(56)}...`,
  ]);
});

Deno.test("an empty or missing to is an error", async () => {
  const file = validFile();
  file.listeners[1]!.to = [];
  assert.deepEqual(await problemsOfValue(file), [
    "listeners[1].to: expected at least one upstream HOST:PORT or [IPV6]:PORT, got []",
  ]);
  delete file.listeners[1]!.to;
  const problems = await problemsOfValue(file);
  assert.equal(problems.length, 1);
  assert.match(problems[0]!, /^listeners\[1\]\.to: required; /);
});

Deno.test("an unknown or missing kind is an error naming the choices", async () => {
  const file = validFile();
  file.listeners[0]!.kind = "http";
  assert.deepEqual(await problemsOfValue(file), [
    `listeners[0].kind: expected "socks" or "forward", got "http"`,
  ]);
  delete file.listeners[0]!.kind;
  assert.deepEqual(await problemsOfValue(file), [
    `listeners[0].kind: required; expected "socks" or "forward"`,
  ]);
});

Deno.test("unknown keys are errors, one problem each, at every level", async () => {
  const file = validFile();
  file.listeners[1]!.bogus = 1;
  file.listeners[1]!.users = []; // a socks key on a forward listener
  // Only named: a forwarder has no users, so the file is not read for it either.
  file.listeners[1]!.usersFile = "/nonexistent/ferry-users";
  file.listeners[1]!.handshakeTimeout = "5s"; // a forwarder has no handshake
  file.log = { level: "info", colour: true };
  file.extra = {};
  const problems = await problemsOfValue(file);
  assert.deepEqual([...problems].sort(), [
    "extra: unknown key",
    "listeners[1].bogus: unknown key",
    "listeners[1].handshakeTimeout: unknown key",
    "listeners[1].users: unknown key",
    "listeners[1].usersFile: unknown key",
    "log.colour: unknown key",
  ]);
});

Deno.test("a --pool-max-idle under 1s is refused, on the command line and in a file", async () => {
  // Pooled connections were retired as fast as they were dialled: a redial loop.
  assert.throws(
    () =>
      buildForwardConfig({ listen: "127.0.0.1:2222", to: ["127.0.0.1:22"], poolMaxIdle: "1ms" }),
    (error: ConfigError) => {
      assert.deepEqual(error.problems, [
        `--pool-max-idle: got "1ms"; expected at least 1s: younger pooled connections would be ` +
        `replaced as fast as they are dialled`,
      ]);
      return true;
    },
  );
  const config = buildForwardConfig({
    listen: "127.0.0.1:2222",
    to: ["127.0.0.1:22"],
    poolMaxIdle: "1s",
  });
  assert.equal(config.poolMaxIdleMs, 1000);
  const file = validFile();
  file.listeners[1]!.poolMaxIdle = "999ms";
  assert.deepEqual(await problemsOfValue(file), [
    "listeners[1].poolMaxIdle: expected at least 1s: younger pooled connections would be " +
    'replaced as fast as they are dialled, got "999ms"',
  ]);
});

Deno.test("an upstream listed twice is refused, on the command line and in a file", async () => {
  // It got two pools, and two of every upstream-down line.
  assert.throws(
    () =>
      buildForwardConfig({
        listen: "127.0.0.1:2222",
        to: [
          "127.0.0.1:22",
          "[::1]:22",
          "Host.example:22",
          "host.example:22",
          "[0:0::1]:22", // [::1] spelled otherwise
          "[::ffff:127.0.0.1]:22",
          "[::2]:22",
        ],
      }),
    (error: ConfigError) => {
      const twice = "expected each upstream once " +
        "(twice, it got two pools and two of every upstream-down line)";
      assert.deepEqual(error.problems, [
        `--to: got "host.example:22", the same upstream as "Host.example:22"; ${twice}`,
        `--to: got "[0:0::1]:22", the same upstream as "[::1]:22"; ${twice}`,
        `--to: got "[::ffff:127.0.0.1]:22", the same upstream as "127.0.0.1:22"; ${twice}`,
      ]);
      return true;
    },
  );
  const file = validFile();
  const forward = file.listeners[1]! as { to: string[] };
  forward.to = ["127.0.0.1:22", "127.0.0.1:23", "127.0.0.1:22"];
  assert.deepEqual(await problemsOfValue(file), [
    "listeners[1].to[2]: the same upstream as to[0]; expected each upstream once " +
    "(twice, it got two pools and two of every upstream-down line)",
  ]);
  // Bad ones are no duplicates, even written as addresses' objects.
  const asObject = { hostname: "a.example", port: 1 };
  (forward as { to: unknown[] }).to = [asObject, asObject];
  const problems = await problemsOfValue(file);
  assert.equal(problems.length, 2, problems.join("\n"));
  assert.ok(problems.every((p) => p.includes("expected HOST:PORT")), problems.join("\n"));
  // Beside a bad upstream too: it was told only once that one was fixed.
  forward.to = ["nope", "LOCALHOST:5", "localhost:5"];
  assert.deepEqual(await problemsOfValue(file), [
    `listeners[1].to[0]: expected HOST:PORT or [IPV6]:PORT, got "nope"`,
    "listeners[1].to[2]: the same upstream as to[1]; expected each upstream once " +
    "(twice, it got two pools and two of every upstream-down line)",
  ]);
});

Deno.test("a bad or zero duration is an error quoting the value", async () => {
  const file = validFile();
  file.defaults = { idleTimeout: "5 minutes", connectTimeout: "600h" };
  file.listeners[1]!.poolMaxIdle = "0s";
  file.listeners[0]!.connectTimeout = 10;
  file.listeners[0]!.shutdownGrace = "600h"; // past what a timer can wait
  const problems = await problemsOfValue(file);
  assert.equal(problems.length, 5);
  assert.equal(
    problems.find((p) => p.startsWith("listeners[0].shutdownGrace: ")),
    `listeners[0].shutdownGrace: expected at most 596h (about 24 days), got "600h"`,
  );
  assert.equal(
    problems.find((p) => p.startsWith("defaults.connectTimeout: ")),
    `defaults.connectTimeout: expected at most 596h (about 24 days), got "600h"`,
  );
  assert.match(problems.find((p) => p.startsWith("defaults.idleTimeout: "))!, /got "5 minutes"$/);
  assert.match(problems.find((p) => p.startsWith("listeners[1].poolMaxIdle: "))!, /got "0s"$/);
  assert.match(
    problems.find((p) => p.startsWith("listeners[0].connectTimeout: "))!,
    /expected a positive duration .*got 10$/,
  );
});

Deno.test("negative, zero, fractional, quoted and too large counts are errors", async () => {
  const file = validFile();
  file.defaults = { maxConns: 0 };
  file.listeners[0]!.maxConnsPerIp = 1.5;
  file.listeners[0]!.maxUdpPerIp = 0; // as --max-udp-per-ip 0 is refused
  file.listeners[1]!.pool = -1;
  file.listeners[1]!.maxConns = "100";
  file.listeners[1]!.maxConnsPerIp = 1e20; // too large: told the largest taken
  const problems = await problemsOfValue(file);
  assert.deepEqual([...problems].sort(), [
    "defaults.maxConns: expected a whole number ≥ 1, got 0",
    "listeners[0].maxConnsPerIp: expected a whole number ≥ 1, got 1.5",
    "listeners[0].maxUdpPerIp: expected a whole number ≥ 1, got 0",
    `listeners[1].maxConns: expected a whole number ≥ 1, got "100"`,
    "listeners[1].maxConnsPerIp: expected a whole number from 1 to 9007199254740991, " +
    "got 100000000000000000000",
    "listeners[1].pool: expected a whole number from 0 to 1024, got -1",
  ]);
});

Deno.test("pool is taken from 0 to 1024 in a file, as --pool is", async () => {
  const file = validFile();
  file.listeners[1]!.pool = 1024;
  const config = await parseRunConfig(JSON.stringify(file), "test.jsonc");
  assert.equal(forward(config.listeners[1]).poolSize, 1024);
  file.listeners[1]!.pool = 1025;
  assert.deepEqual(await problemsOfValue(file), [
    "listeners[1].pool: expected a whole number from 0 to 1024, got 1025",
  ]);
});

Deno.test("a count written too large for a number (1e400, Infinity) is told the largest taken", async () => {
  const text = JSON.stringify(validFile(), null, 2).replace(
    "{",
    '{ "defaults": { "maxConns": 1e400 },',
  );
  assert.deepEqual(await problemsOf(parseRunConfig(text, "test.jsonc")), [
    "defaults.maxConns: expected a whole number from 1 to 9007199254740991, got Infinity",
  ]);
});

Deno.test("a duration too large to count says so", async () => {
  const file = validFile();
  file.listeners[0]!.idleTimeout = `1${"0".repeat(320)}ms`; // Infinity, as a number
  const problems = await problemsOfValue(file);
  assert.equal(problems.length, 1, problems.join("\n"));
  assert.match(
    problems[0]!,
    /^listeners\[0\]\.idleTimeout: expected a duration small enough to count in milliseconds \(a timeout of 100000h never fires in practice\), got "10+/,
  );
});

Deno.test("two listeners on one address are an error; port 0 is exempt", async () => {
  const file = validFile();
  file.listeners.push({ kind: "socks", listen: "127.0.0.1:1080" });
  assert.deepEqual(await problemsOfValue(file), [
    `listeners[2].listen: "127.0.0.1:1080" is already used by listeners[0]`,
  ]);
  // One IPv6 address, two spellings.
  file.listeners[2]!.listen = "[0:0::1]:1080";
  file.listeners[1]!.listen = "[::1]:1080";
  assert.deepEqual(await problemsOfValue(file), [
    `listeners[2].listen: "[0:0::1]:1080" is already used by listeners[1]`,
  ]);
  file.listeners[0]!.listen = "127.0.0.1:0";
  file.listeners[2]!.listen = "127.0.0.1:0";
  const config = await parseRunConfig(JSON.stringify(file), "test.jsonc");
  assert.equal(config.listeners.length, 3);
});

Deno.test("a wildcard listener collides with the addresses it takes; other addresses do not", async () => {
  // Such a file used to pass, then fail at start with "Address already in
  // use", as if another program held the port.
  const listenersAt = (...listens: string[]) => ({
    listeners: listens.map((listen) => ({ kind: "socks", listen })),
  });
  assert.deepEqual(await problemsOfValue(listenersAt("[::]:1080", "0.0.0.0:1080")), [
    `listeners[1].listen: "0.0.0.0:1080" collides with listeners[0] ("[::]:1080"): ` +
    `[::] takes every address, IPv4 ones too`,
  ]);
  assert.deepEqual(await problemsOfValue(listenersAt("127.0.0.1:1080", "0.0.0.0:1080")), [
    `listeners[1].listen: "0.0.0.0:1080" collides with listeners[0] ("127.0.0.1:1080"): ` +
    `0.0.0.0 takes every IPv4 address`,
  ]);
  assert.deepEqual(
    await problemsOfValue(listenersAt("127.0.0.1:1080", "[::ffff:127.0.0.1]:1080")),
    [
      `listeners[1].listen: "[::ffff:127.0.0.1]:1080" is already used by listeners[0]`,
    ],
  );
  for (
    const apart of [
      ["0.0.0.0:1080", "[::1]:1080"],
      ["127.0.0.1:1080", "127.0.0.2:1080"],
      ["[::]:0", "0.0.0.0:0"],
      ["0.0.0.0:1080", "localhost:1080"], // localhost may be ::1
    ]
  ) {
    const config = await parseRunConfig(JSON.stringify(listenersAt(...apart)), "test.jsonc");
    assert.equal(config.listeners.length, 2, apart.join(" "));
  }
});

Deno.test("where [::] takes IPv6 only, 0.0.0.0 may listen beside it, and only IPv6 reaches it", async () => {
  const v6Only = (value: unknown) =>
    problemsOf(parseRunConfig(JSON.stringify(value), "test.jsonc", undefined, true));
  assert.deepEqual(
    await v6Only({
      listeners: [
        { kind: "socks", listen: "[::]:1080" },
        { kind: "socks", listen: "0.0.0.0:1080" },
        { kind: "socks", listen: "[::1]:1080" },
        { kind: "forward", listen: "[::]:2000", to: ["127.0.0.1:2000"] },
        { kind: "forward", listen: "[::]:3000", to: ["[::1]:3000"] },
      ],
    }),
    [
      `listeners[2].listen: "[::1]:1080" collides with listeners[0] ("[::]:1080"): ` +
      `[::] takes every IPv6 address (net.ipv6.bindv6only is 1: IPv6 only)`,
      `listeners[4].to[0]: expected an address that does not lead back to this listener ` +
      `(ferry would forward to itself), got "[::1]:3000"`,
    ],
  );
});

Deno.test("a forwarding loop is reported with the file's other problems, not only once they are fixed", async () => {
  // A schema problem anywhere (an unknown key) skipped the loop check: the
  // loop came up only on the next start.
  const problems = await problemsOfValue({
    listeners: [
      { kind: "socks", listen: "127.0.0.1:1080", colour: "red" },
      { kind: "forward", listen: "127.0.0.1:2222", to: ["localhost:2222", 22] },
    ],
  });
  assert.equal(problems.length, 3, problems.join("\n"));
  assert.ok(problems.some((p) => p.startsWith("listeners[0].colour: ")), problems.join("\n"));
  assert.ok(problems.some((p) => p.startsWith("listeners[1].to[1]: ")), problems.join("\n"));
  assert.ok(
    problems.some((p) =>
      p.startsWith("listeners[1].to[0]: expected an address that does not lead")
    ),
    problems.join("\n"),
  );
});

Deno.test("a forwarder whose upstream leads back to it is an error, directly or through another", async () => {
  // It used to dial itself: every pooled connection a session taking another,
  // every descriptor gone with no client at all.
  const forwarder = (listen: string, to: string[]) => ({ kind: "forward", listen, to });
  const file = (...listeners: unknown[]) => ({ listeners });
  assert.deepEqual(
    await problemsOfValue(file(forwarder("127.0.0.1:2222", ["[::1]:22", "127.0.0.1:2222"]))),
    [
      `listeners[0].to[1]: expected an address that does not lead back to this listener ` +
      `(ferry would forward to itself), got "127.0.0.1:2222"`,
    ],
  );
  for (
    const [listen, to] of [["0.0.0.0:2222", "localhost:2222"], ["127.0.0.1:2222", "localhost:2222"]]
  ) {
    assert.equal(
      (await problemsOfValue(file(forwarder(listen!, [to!])))).length,
      1,
      `${listen} ${to}`,
    );
  }
  // Two forwarders pointing at each other.
  assert.deepEqual(
    await problemsOfValue(
      file(
        forwarder("127.0.0.1:2001", ["127.0.0.1:2002"]),
        forwarder("127.0.0.1:2002", ["127.0.0.1:2001"]),
      ),
    ),
    [
      `listeners[0].to[0]: expected an address that does not lead back to this listener through ` +
      `listeners[1] (ferry would forward to itself), got "127.0.0.1:2002"`,
      `listeners[1].to[0]: expected an address that does not lead back to this listener through ` +
      `listeners[0] (ferry would forward to itself), got "127.0.0.1:2001"`,
    ],
  );
  // One upstream reaching two forwarders that each lead back is one problem, not one a way back.
  const both = await problemsOfValue(
    file(
      forwarder("127.0.0.1:2000", ["localhost:3000"]),
      forwarder("127.0.0.1:3000", ["127.0.0.1:2000"]),
      forwarder("[::1]:3000", ["127.0.0.1:2000"]),
    ),
  );
  assert.equal(both.filter((p) => p.startsWith("listeners[0].to[0]: ")).length, 1, both.join("\n"));
  // Fine: another port, a chain that ends, and IPv4 only to an IPv6-only service.
  for (
    const listeners of [
      [forwarder("127.0.0.1:2222", ["127.0.0.1:22"])],
      [
        forwarder("127.0.0.1:2001", ["127.0.0.1:2002"]),
        forwarder("127.0.0.1:2002", ["127.0.0.1:22"]),
      ],
      [forwarder("0.0.0.0:2222", ["[::1]:2222"])],
    ]
  ) {
    const config = await parseRunConfig(JSON.stringify(file(...listeners)), "test.jsonc");
    assert.equal(config.listeners.length, listeners.length);
  }
});

Deno.test("missing, empty or mistyped listeners are errors", async () => {
  assert.deepEqual(await problemsOfValue({ log: { level: "info" } }), [
    "listeners: required; expected an array of listeners",
  ]);
  assert.deepEqual(await problemsOfValue({ listeners: [] }), [
    "listeners: expected at least one listener, got []",
  ]);
  assert.deepEqual(await problemsOfValue({ listeners: [5] }), [
    `listeners[0]: expected a listener object with "kind": "socks" or "forward", got 5`,
  ]);
  assert.deepEqual(await problemsOfValue([]), [
    `test.jsonc: expected an object with "listeners", got []`,
  ]);
});

Deno.test("bad users entries are errors naming the entry", async () => {
  const file = validFile();
  file.listeners[0]!.users = [
    { name: "", password: "x" },
    "carol:secret",
    { name: "dave" },
    { name: "erin", password: "p".repeat(256) },
    { name: "alice", password: "a" },
    { name: "alice", password: "b" },
    // The limits are in UTF-8 bytes: 128 two-byte characters are 256.
    { name: "é".repeat(128), password: "x" },
    { name: "frank", password: "é".repeat(128) },
    // Half a UTF-16 pair, as JSON's "\ud800" spells it: it became U+FFFD.
    { name: "grace", password: "secret\ud800" },
    { name: "\udc00heidi", password: "x" },
    // Told the surrogate alone, not also a length counted with its U+FFFD.
    { name: "\ud800" + "h".repeat(255), password: "x" },
  ];
  const problems = await problemsOfValue(file);
  assert.deepEqual(problems, [
    `listeners[0].users[0].name: user name must be 1 to 255 bytes (RFC 1929), got 0 in ""`,
    `listeners[0].users[1]: expected a user like {"name": "alice", "password": "secret"}, ` +
    `got a string (not shown: it may be secret)`,
    "listeners[0].users[2].password: required; expected a password",
    "listeners[0].users[3].password: password must be 1 to 255 bytes (RFC 1929), got 256",
    `listeners[0].users[5]: user "alice" is already defined at listeners[0].users[4]`,
    `listeners[0].users[6].name: user name must be 1 to 255 bytes (RFC 1929), got 256 in "${
      "é".repeat(56)
    }...`,
    "listeners[0].users[7].password: password must be 1 to 255 bytes (RFC 1929), got 256",
    "listeners[0].users[8].password: has a lone surrogate (a \\uD800-\\uDFFF escape without " +
    "its pair); expected Unicode text",
    "listeners[0].users[9].name: has a lone surrogate (a \\uD800-\\uDFFF escape without its " +
    "pair); expected Unicode text",
    "listeners[0].users[10].name: has a lone surrogate (a \\uD800-\\uDFFF escape without its " +
    "pair); expected Unicode text",
  ]);
});

Deno.test("usersFile is read relative to the config file and merged with users", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/users`, "# team\nbob:hunter2\n\ncarol:a:b\n");
    const path = `${dir}/ferry.jsonc`;
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        listeners: [{
          kind: "socks",
          listen: "127.0.0.1:1080",
          users: [{ name: "alice", password: "secret" }],
          usersFile: "users",
        }],
      }),
    );
    const config = await loadConfigFile(path);
    assert.deepEqual(
      socks(config.listeners[0]).users,
      new Map([
        ["alice", encoder.encode("secret")],
        ["bob", encoder.encode("hunter2")],
        ["carol", encoder.encode("a:b")],
      ]),
    );
  });
});

Deno.test("an unreadable or bad usersFile is an error", async () => {
  await withTempDir(async (dir) => {
    const file = validFile();
    file.listeners[0]!.usersFile = `${dir}/missing`;
    const problems = await problemsOf(parseRunConfig(JSON.stringify(file), `${dir}/f.jsonc`));
    assert.equal(problems.length, 1);
    assert.ok(
      problems[0]!.startsWith(`listeners[0].usersFile: cannot read "${dir}/missing": `),
      problems[0],
    );

    await Deno.writeTextFile(`${dir}/users`, "alice:x\nnocolon\nalice:y\n");
    file.listeners[0]!.usersFile = "users";
    file.listeners[0]!.users = [{ name: "alice", password: "z" }];
    assert.deepEqual(await problemsOf(parseRunConfig(JSON.stringify(file), `${dir}/f.jsonc`)), [
      `${dir}/users:1: user "alice" is already defined at listeners[0].users[0]`,
      `${dir}/users:2: expected NAME:PASSWORD, got a value with no ":" (not shown: it may be secret)`,
      `${dir}/users:3: user "alice" is already defined at listeners[0].users[0]`,
    ]);

    await Deno.writeTextFile(`${dir}/users`, "# nobody\n");
    delete file.listeners[0]!.users;
    assert.deepEqual(await problemsOf(parseRunConfig(JSON.stringify(file), `${dir}/f.jsonc`)), [
      `listeners[0].usersFile: "${dir}/users" defines no users; expected lines of NAME:PASSWORD`,
    ]);

    // No users in the array either: it meant a proxy open to everyone.
    delete file.listeners[0]!.usersFile;
    file.listeners[0]!.users = [];
    assert.deepEqual(await problemsOf(parseRunConfig(JSON.stringify(file), `${dir}/f.jsonc`)), [
      "listeners[0].users: expected at least one user; leave users out for a proxy without " +
      "authentication",
    ]);
  });
});

Deno.test("an empty usersFile is refused, not taken for no users file", async () => {
  // Skipped as if absent, it left the listener without authentication, open to everyone.
  const file = validFile();
  file.listeners[0]!.usersFile = "";
  assert.deepEqual(await problemsOfValue(file), [
    `listeners[0].usersFile: expected a file path, got ""`,
  ]);
});

Deno.test("a bad users file that two listeners share is reported once, not once a listener", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/users`, "alice:x\nnocolon\n");
    const listeners = [1080, 1081].map((port) => ({
      kind: "socks",
      listen: `127.0.0.1:${port}`,
      usersFile: "users",
    }));
    assert.deepEqual(
      await problemsOf(parseRunConfig(JSON.stringify({ listeners }), `${dir}/f.jsonc`)),
      [
        `${dir}/users:2: expected NAME:PASSWORD, got a value with no ":" ` +
        `(not shown: it may be secret)`,
      ],
    );
  });
});

Deno.test("a JSON syntax error is reported as FILE:LINE:COL", async () => {
  const text = `{\n  "listeners": [\n    { "kind": "socks" "listen": "127.0.0.1:1080" }\n  ]\n}\n`;
  assert.deepEqual(await problemsOf(parseRunConfig(text, "ferry.jsonc")), [
    `ferry.jsonc:3:23: expected ",", got "\\"listen\\""`,
  ]);
  assert.deepEqual(await problemsOf(parseRunConfig("", "empty.jsonc")), [
    "empty.jsonc:1:1: expected a value, got the end of the file",
  ]);
  assert.deepEqual(await problemsOf(parseRunConfig(`{\n  "a": 1,,\n}`, "x.jsonc")), [
    `x.jsonc:2:10: expected a property name in double quotes, got ","`,
  ]);
});

Deno.test("a JSON syntax error inside a string gives its place, not its text: it may be a password", async () => {
  const text = `{"listeners": [{"kind": "socks", "listen": "127.0.0.1:1",\n` +
    `  "users": [{"name": "alice", "password": "s3cr\\qet"}]}]}`;
  const problems = await problemsOf(parseRunConfig(text, "ferry.jsonc"));
  assert.deepEqual(problems, [
    "ferry.jsonc:2:43: invalid escape character, got a string (not shown: it may be secret)",
  ]);
  // Unterminated, a string's token runs to the end of the file, whatever that holds.
  const open = `{"listeners": [{"kind": "socks", "listen": "127.0.0.1:1}]}`;
  assert.deepEqual(await problemsOf(parseRunConfig(open, "ferry.jsonc")), [
    "ferry.jsonc:1:44: unterminated string, got a string (not shown: it may be secret)",
    `ferry.jsonc:1:59: expected "}", got the end of the file`,
  ]);
});

Deno.test("a key given twice in one object is an error", async () => {
  const text =
    `{\n  "listeners": [],\n  "listeners": [{ "kind": "socks", "listen": "127.0.0.1:1" }]\n}`;
  assert.deepEqual(await problemsOf(parseRunConfig(text, "dup.jsonc")), [
    `dup.jsonc:3:3: duplicate key "listeners"; it is first at 2:3`,
  ]);
  // Inside a listener too, where the last listen address would win silently.
  const nested =
    `{ "listeners": [\n  { "kind": "socks", "listen": "127.0.0.1:1", "listen": "127.0.0.1:2" }\n] }`;
  assert.deepEqual(await problemsOf(parseRunConfig(nested, "dup.jsonc")), [
    `dup.jsonc:2:47: duplicate key "listen"; it is first at 2:22`,
  ]);
});

Deno.test("several problems in one file are all reported, in file order", async () => {
  const text = `{
    "log": { "level": "loud" },
    "defaults": { "idleTimeout": "forever" },
    "listeners": [
      { "kind": "socks", "listen": "127.0.0.1:1080", "maxConns": -5, "bogus": 1 },
      { "kind": "forward", "listen": "127.0.0.1:1080", "to": ["nope"] },
      { "kind": "ftp" },
    ],
  }`;
  assert.deepEqual(await problemsOf(parseRunConfig(text, "many.jsonc")), [
    `log.level: expected "debug", "info", "warn" or "error", got "loud"`,
    `defaults.idleTimeout: expected a positive duration with a unit, like "250ms", "10s", ` +
    `"5m", "1h" or "1h30m", got "forever"`,
    "listeners[0].maxConns: expected a whole number ≥ 1, got -5",
    "listeners[0].bogus: unknown key",
    `listeners[1].listen: "127.0.0.1:1080" is already used by listeners[0]`,
    `listeners[1].to[0]: expected HOST:PORT or [IPV6]:PORT, got "nope"`,
    `listeners[2].kind: expected "socks" or "forward", got "ftp"`,
  ]);
});

Deno.test("an empty --config is named as such, not as a file that cannot be read", async () => {
  assert.deepEqual(await problemsOf(loadConfigFile("")), [
    '--config: expected a file path, got ""',
  ]);
  assert.deepEqual(await problemsOf(loadConfigFile("  ")), [
    '--config: expected a file path, got "  "',
  ]);
});

Deno.test("a missing configuration file is a ConfigError naming it", async () => {
  await withTempDir(async (dir) => {
    const problems = await problemsOf(loadConfigFile(`${dir}/absent.jsonc`));
    assert.equal(problems.length, 1);
    assert.ok(problems[0]!.startsWith(`${dir}/absent.jsonc: cannot read`), problems[0]);
  });
  // A relative path names the directory it was looked for in.
  const relative = `absent-${crypto.randomUUID()}.jsonc`;
  const problems = await problemsOf(loadConfigFile(relative));
  assert.ok(
    problems[0]!.startsWith(
      `${relative}: cannot read the configuration file (from ${Deno.cwd()}): `,
    ),
    problems[0],
  );
});

Deno.test("a configuration file saved as UTF-16 is one problem, not a screenful", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/utf16.jsonc`;
    const text = JSON.stringify(validFile());
    // With its byte order mark, and without: ASCII in UTF-16 is valid UTF-8 with NULs.
    for (const bom of [[0xff, 0xfe], []]) {
      const bytes = new Uint8Array(bom.length + text.length * 2);
      bytes.set(bom);
      for (let i = 0; i < text.length; i++) bytes[bom.length + 2 * i] = text.charCodeAt(i);
      await Deno.writeFile(path, bytes);
      assert.deepEqual(await problemsOf(loadConfigFile(path)), [
        `${path}:1: not UTF-8 text; save the file as UTF-8`,
      ], `BOM: ${bom.length > 0}`);
    }
  });
});

Deno.test("a large configuration file saved as UTF-16 is one problem too", async () => {
  // Math.min(...lines) of 150,000 lines overflowed the stack, reported as
  // "nested too deeply".
  await withTempDir(async (dir) => {
    const path = `${dir}/utf16.jsonc`;
    const text = `{"listeners": []${"\n".repeat(150_000)}}`;
    const bytes = new Uint8Array(2 + text.length * 2);
    bytes.set([0xff, 0xfe]);
    for (let i = 0; i < text.length; i++) bytes[2 + 2 * i] = text.charCodeAt(i);
    await Deno.writeFile(path, bytes);
    assert.deepEqual(await problemsOf(loadConfigFile(path)), [
      `${path}:1: not UTF-8 text; save the file as UTF-8`,
    ]);
  });
});

Deno.test("a NUL byte in a UTF-8 configuration file is reported where it is, not as 'not UTF-8'", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/nul.jsonc`;
    const text = JSON.stringify(validFile()).replace('"127.0.0.1', '"127.0.0.1\u0000');
    await Deno.writeTextFile(path, text);
    const problems = await problemsOf(loadConfigFile(path));
    assert.equal(problems.length, 1, problems.join("\n"));
    assert.match(problems[0]!, /^[^:]+:1:\d+: invalid character in string/);
  });
});

Deno.test("bytes that are not UTF-8 are refused in a value, and let be in a comment", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/latin1.jsonc`;
    const latin1 = (text: string) =>
      new Uint8Array([...text].map((c) => c === "é" ? 0xe9 : c.charCodeAt(0)));
    const listener = `{ "kind": "socks", "listen": "127.0.0.1:0", "users": ` +
      `[{ "name": "alice", "password": "PASSWORD" }] }`;
    // A comment in Latin-1 used to be fine, and is again.
    await Deno.writeFile(
      path,
      latin1(`// café\n{ "listeners": [${listener.replace("PASSWORD", "plain")}] }`),
    );
    assert.equal((await loadConfigFile(path)).listeners.length, 1);
    // A syntax error elsewhere is still named, not blamed on the comment.
    await Deno.writeFile(
      path,
      latin1(`// café\n{ "listeners": [\n${listener.replace("PASSWORD", "plain")}\n] "log": {} }`),
    );
    const problems = await problemsOf(loadConfigFile(path));
    assert.equal(problems.length, 1, problems.join("\n"));
    assert.match(problems[0]!, /:4:\d+: expected ","/);
    // Nor when the comment shares the line with the error.
    await Deno.writeFile(
      path,
      latin1(`{ "listeners": [\n${listener.replace("PASSWORD", "plain")}] "log": {} } // café\n`),
    );
    const sameLine = await problemsOf(loadConfigFile(path));
    assert.equal(sameLine.length, 1, sameLine.join("\n"));
    assert.match(sameLine[0]!, /:2:\d+: expected ","/);
    // A real U+FFFD (in UTF-8) in a password is a character like any other.
    await Deno.writeFile(
      path,
      new Uint8Array([
        ...latin1("// café\n"),
        ...new TextEncoder().encode(
          `{ "listeners": [${listener.replace("PASSWORD", "a\uFFFDb")}] }`,
        ),
      ]),
    );
    assert.equal((await loadConfigFile(path)).listeners.length, 1);
    // In a password it would change it.
    await Deno.writeFile(
      path,
      latin1(`{ "listeners": [\n${listener.replace("PASSWORD", "café")}] }`),
    );
    assert.deepEqual(await problemsOf(loadConfigFile(path)), [
      `${path}:2: not UTF-8 text; save the file as UTF-8`,
    ]);
  });
});

Deno.test("formatPath writes indices in brackets and odd keys quoted", () => {
  assert.equal(formatPath(["listeners", 1, "to", 0]), "listeners[1].to[0]");
  assert.equal(formatPath(["defaults", "idleTimeout"]), "defaults.idleTimeout");
  assert.equal(formatPath(["listeners", 0, "a b"]), `listeners[0]["a b"]`);
  assert.equal(formatPath([]), "");
});

Deno.test("udpAdvertise, bindTimeout and maxUdpPerIp are read, and a bad udpAdvertise is reported", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/ferry.jsonc`;
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        listeners: [{
          kind: "socks",
          listen: "127.0.0.1:1080",
          udpAdvertise: "203.0.113.7",
          bindTimeout: "2m",
          maxUdpPerIp: 4,
        }],
      }),
    );
    const config = socks((await loadConfigFile(path)).listeners[0]);
    assert.deepEqual(config.udpAdvertise, { ipv4: "203.0.113.7", ipv6: null });
    assert.equal(config.bindTimeoutMs, 120_000);
    assert.equal(config.maxUdpPerIp, 4);
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        listeners: [{ kind: "socks", listen: "127.0.0.1:1080", udpAdvertise: "nat.example" }],
      }),
    );
    // One address is the value itself, not its [0]; examples are quoted, as JSON writes them.
    await assert.rejects(
      loadConfigFile(path),
      /listeners\[0\]\.udpAdvertise: expected an IPv4 or IPv6 address, like "203\.0\.113\.7" or "2001:db8::7", got "nat\.example"/,
    );
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        listeners: [{
          kind: "socks",
          listen: "127.0.0.1:1080",
          udpAdvertise: ["2001:db8::7", "203.0.113.7"],
        }],
      }),
    );
    assert.deepEqual(socks((await loadConfigFile(path)).listeners[0]).udpAdvertise, {
      ipv4: "203.0.113.7",
      ipv6: "2001:db8::7",
    });
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        listeners: [{ kind: "socks", listen: "127.0.0.1:1080", udpAdvertise: ["::1", "0.0.0.0"] }],
      }),
    );
    await assert.rejects(
      loadConfigFile(path),
      /listeners\[0\]\.udpAdvertise\[1\]: expected the address clients reach ferry at.*got "0\.0\.0\.0"/,
    );
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        listeners: [{
          kind: "socks",
          listen: "127.0.0.1:1080",
          udpAdvertise: ["203.0.113.7", "198.51.100.1"],
        }],
      }),
    );
    await assert.rejects(
      loadConfigFile(path),
      /listeners\[0\]\.udpAdvertise\[1\]: expected one IPv4 address at most \(one per address family\), and "203\.0\.113\.7" came first, got "198\.51\.100\.1"/,
    );
    // An empty array is refused in the same words, not the schema library's.
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        listeners: [{ kind: "socks", listen: "127.0.0.1:1080", udpAdvertise: [] }],
      }),
    );
    await assert.rejects(
      loadConfigFile(path),
      /listeners\[0\]\.udpAdvertise: expected an IPv4 or IPv6 address.*, got \[\]/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
