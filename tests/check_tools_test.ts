/**
 * `tests/check_tools.sh`, the check `make test` runs first: it must name every
 * missing tool with its Debian package, and nothing that is there.
 */
import assert from "node:assert/strict";

const SCRIPT = new URL("./check_tools.sh", import.meta.url).pathname;
const STUBBED = ["curl", "ss", "ip", "prlimit", "unshare"];

/** Runs the check with PATH holding only `dir`. */
async function checkWithPath(dir: string): Promise<{ code: number; stderr: string }> {
  const { code, stderr } = await new Deno.Command("/bin/sh", {
    args: [SCRIPT],
    clearEnv: true,
    env: { PATH: dir },
    stdout: "null",
    stderr: "piped",
    signal: AbortSignal.timeout(20_000),
  }).output();
  return { code, stderr: new TextDecoder().decode(stderr) };
}

/** The names after "lacks:" on the check's first line. */
function lacking(stderr: string): string[] {
  const line = stderr.split("\n")[0] ?? "";
  return line.includes("lacks:") ? line.slice(line.indexOf("lacks:") + 6).trim().split(" ") : [];
}

Deno.test("check_tools.sh names each missing tool and its package once, and exits 1", async () => {
  const empty = await Deno.makeTempDir();
  try {
    const { code, stderr } = await checkWithPath(empty);
    assert.equal(code, 1, stderr);
    for (const tool of STUBBED) assert.ok(lacking(stderr).includes(tool), stderr);
    const install = stderr.split("\n").find((l) => l.includes("apt-get install"));
    assert.ok(install, stderr);
    const packages = install.slice(install.indexOf("--no-install-recommends") + 23).trim().split(
      " ",
    );
    for (const pkg of ["curl", "iproute2", "util-linux"]) assert.ok(packages.includes(pkg), stderr);
    assert.equal(new Set(packages).size, packages.length, `a package named twice: ${install}`);
    assert.match(stderr, /\.ci\/run/);
  } finally {
    await Deno.remove(empty, { recursive: true });
  }
});

Deno.test("check_tools.sh does not name tools that are on PATH", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const tool of STUBBED) {
      await Deno.writeTextFile(`${dir}/${tool}`, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    }
    const { code, stderr } = await checkWithPath(dir);
    for (const tool of STUBBED) assert.ok(!lacking(stderr).includes(tool), stderr);
    // Only PySocks is left to decide the outcome, and the UDP tests need it too.
    assert.equal(code, 0, stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
