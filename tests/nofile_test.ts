/** Unit tests of the open-files limit check. */
import assert from "node:assert/strict";
import { descriptorsNeeded, openFilesLimit, parseSoftLimit } from "../src/nofile.ts";

Deno.test("descriptorsNeeded() is two a session plus slack", () => {
  assert.equal(descriptorsNeeded(0), 64);
  assert.equal(descriptorsNeeded(1), 66);
  assert.equal(descriptorsNeeded(10_000), 20_064);
});

Deno.test("parseSoftLimit() parses prlimit's SOFT column", () => {
  assert.equal(parseSoftLimit("  40\n"), 40);
  assert.equal(parseSoftLimit("1048576"), 1_048_576);
  assert.equal(parseSoftLimit("unlimited"), Infinity);
  assert.equal(parseSoftLimit("unlimited\n"), Infinity);
});

Deno.test("parseSoftLimit() returns null for anything else", () => {
  for (const text of ["", "\n", "garbage", "-1", "4.5", "40 50", "1024\n2048\n", "Unlimited"]) {
    assert.equal(parseSoftLimit(text), null, JSON.stringify(text));
  }
});

Deno.test("openFilesLimit() reads this process's soft limit through prlimit", async () => {
  // prlimit (util-linux) is installed on the machines these tests run on.
  const limit = await openFilesLimit();
  assert.equal(typeof limit, "number", `got ${limit}: is prlimit installed?`);
  assert.ok(limit! > 0, `got ${limit}`);
  assert.ok(Number.isInteger(limit) || limit === Infinity, `got ${limit}`);
  // It is this process's limit: the same soft value the kernel reports for it.
  // (Deno lets a program read /proc/self/limits only with --allow-all.)
  let limits: string;
  try {
    limits = await Deno.readTextFile("/proc/self/limits");
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) return;
    throw error;
  }
  const soft = /^Max open files\s+(\S+)/m.exec(limits)?.[1];
  assert.ok(soft, limits);
  assert.equal(limit, parseSoftLimit(soft));
});
