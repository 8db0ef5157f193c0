/** Unit tests of the open-files limit check. */
import assert from "node:assert/strict";
import {
  descriptorsNeeded,
  isOutOfDescriptors,
  openFilesLimit,
  parseSoftLimit,
} from "../src/nofile.ts";

Deno.test("descriptorsNeeded() is two a session plus slack", () => {
  assert.equal(descriptorsNeeded(0), 64);
  assert.equal(descriptorsNeeded(1), 66);
  assert.equal(descriptorsNeeded(10_000), 20_064);
  assert.equal(descriptorsNeeded(10, 200), 284, "plus one a pooled connection");
});

Deno.test("isOutOfDescriptors(): the process's limit (EMFILE) and the system's (ENFILE) both count", () => {
  const failure = (code: string) => Object.assign(new Error(`accept: ${code}`), { code });
  assert.equal(isOutOfDescriptors(failure("EMFILE")), true);
  assert.equal(isOutOfDescriptors(failure("ENFILE")), true, "the system's file table full");
  for (const code of ["ECONNRESET", "ECONNABORTED", "ENOBUFS", "EAGAIN"]) {
    assert.equal(isOutOfDescriptors(failure(code)), false, code);
  }
  assert.equal(isOutOfDescriptors(new Error("no code")), false);
  assert.equal(isOutOfDescriptors(null), false);
  assert.equal(isOutOfDescriptors("EMFILE"), false, "a bare string is not an error with a code");
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
  assert.ok(typeof limit === "number", `got ${limit}: is prlimit installed?`);
  assert.ok(limit > 0, `got ${limit}`);
  assert.ok(Number.isInteger(limit) || limit === Infinity, `got ${limit}`);
});

Deno.test("openFilesLimit() agrees with the kernel on a process started under a limit of its own", async () => {
  // A child started under soft 777, hard 4096 (Deno raises its own soft
  // limit towards the hard one at start-up, so the soft value it ends up
  // with is for the kernel to say): what prlimit reports for the child's pid
  // must be what the child's /proc/self/limits says, and not this process's
  // limit. `deno eval` runs with every permission, so the child can read it.
  const module = new URL("../src/nofile.ts", import.meta.url).href;
  const { success, stdout, stderr } = await new Deno.Command("prlimit", {
    args: [
      "--nofile=777:4096",
      "--",
      Deno.execPath(),
      "eval",
      `const { openFilesLimit, parseSoftLimit } = await import(${JSON.stringify(module)});` +
      'const soft = /^Max open files\\s+(\\S+)/m.exec(Deno.readTextFileSync("/proc/self/limits"))[1];' +
      "console.log(JSON.stringify([await openFilesLimit(), parseSoftLimit(soft)]));",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  assert.ok(success, decoder.decode(stderr));
  const [reported, kernel] = JSON.parse(decoder.decode(stdout)) as [number, number];
  assert.equal(reported, kernel);
  assert.ok(reported === 777 || reported === 4096, `got ${reported}`);
});

Deno.test("stopRunningPrograms(): after it, neither prlimit nor any other program runs, even under --allow-all", async () => {
  // In a child: revoking is for the rest of a process, and `deno eval` has
  // every permission, the widest grant there is to give up.
  const module = new URL("../src/nofile.ts", import.meta.url).href;
  const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const { openFilesLimit, stopRunningPrograms } = await import(${JSON.stringify(module)});` +
      "const before = await openFilesLimit();" +
      "stopRunningPrograms();" +
      "const after = await openFilesLimit();" +
      'let other = "ran";' +
      'try { new Deno.Command("true").outputSync(); } catch (error) { other = error.name; }' +
      "console.log(JSON.stringify([typeof before, after, other]));",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  assert.ok(success, decoder.decode(stderr));
  assert.deepEqual(JSON.parse(decoder.decode(stdout)), ["number", null, "NotCapable"]);
});
