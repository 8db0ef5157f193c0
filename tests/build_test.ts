/**
 * `make build` end to end: compile the binary with the task's own flags, then
 * run it as a user would. Compiling needs Deno's runtime (denort), which
 * `deno compile` downloads from dl.deno.land unless DENORT_BIN names a copy;
 * where neither is available the tests are skipped and say so. That download
 * is the one thing here that may leave the machine: it is the build tool's,
 * as `make build` makes it; the proxy tests themselves stay on loopback.
 */
import assert from "node:assert/strict";
import { ferryCommandArgs } from "./_helpers/ferry.ts";
import { relayThroughSocks5 } from "./_helpers/socks5_once.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const BINARY = `${ROOT}dist/ferry`;
/** Bounds on the child processes: compiling (with its download), and asking for help. */
const BUILD_MS = 300_000;
const HELP_MS = 20_000;

/** Built, or why not; `downloadOutput` is make's output when the runtime's download failed. */
type Build = { built: true } | { built: false; why: string; downloadOutput?: string };

/** Runs `make build` as a user would, with this test's Deno in place of the one on PATH. */
async function build(): Promise<Build> {
  const { success, signal, stdout, stderr } = await new Deno.Command("make", {
    args: ["--no-print-directory", "build", `DENO=${Deno.execPath()}`],
    cwd: ROOT,
    stdin: "null",
    env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
    signal: AbortSignal.timeout(BUILD_MS),
  }).output();
  const output = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  if (success) return { built: true };
  if (signal !== null) {
    // Killed at the bound: a download that neither finishes nor fails.
    return {
      built: false,
      why: `make build did not finish within ${BUILD_MS / 1000} s (killed by ${signal}); ` +
        `its output so far:\n${output.slice(-2000)}`,
    };
  }
  const runtimeUnavailable = /denort|dl\.deno\.land/.test(output) &&
    /error sending request|dns error|failed to lookup|Connect/i.test(output);
  if (runtimeUnavailable && !Deno.env.get("DENORT_BIN")) {
    return {
      built: false,
      why: "deno compile could not download its runtime (denort) from dl.deno.land; " +
        "set DENORT_BIN to a denort 2.9.6 binary to run the build tests",
      downloadOutput: output,
    };
  }
  throw new Error(`make build failed:\n${output}`);
}

const result = await build();
if (!result.built) console.log(`SKIPPED build tests: ${result.why}`);

Deno.test({
  name: "make build: dist/ferry --help exits 0 and lists the socks options",
  ignore: !result.built,
  async fn() {
    const { code, stdout } = await new Deno.Command(BINARY, {
      args: ["socks", "--help"],
      stdin: "null",
      signal: AbortSignal.timeout(HELP_MS),
    }).output();
    assert.equal(code, 0);
    assert.match(new TextDecoder().decode(stdout), /--listen <host:port>/);
  },
});

Deno.test({
  name: "make build: dist/ferry proxies one request",
  ignore: !result.built,
  async fn() {
    const echoed = await relayThroughSocks5([BINARY], new TextEncoder().encode("ping through"));
    assert.equal(new TextDecoder().decode(echoed), "ping through");
  },
});

Deno.test({
  name: "make build without Deno's runtime tells the user to set DENORT_BIN",
  // Only where the download failed: elsewhere the tests above build.
  ignore: result.built || result.downloadOutput === undefined,
  fn() {
    assert.ok(!result.built && result.downloadOutput !== undefined);
    // Deno's own error names only the URL it could not reach.
    assert.match(result.downloadOutput, /DENORT_BIN=\/path\/to\/denort make build/);
  },
});

Deno.test("deno task start's command (from source) proxies one request", async () => {
  // The same check as the binary's, so the check itself is known to work
  // even where the binary cannot be built.
  const command = [Deno.execPath(), ...ferryCommandArgs([])];
  const echoed = await relayThroughSocks5(command, new TextEncoder().encode("ping from source"));
  assert.equal(new TextDecoder().decode(echoed), "ping from source");
});
