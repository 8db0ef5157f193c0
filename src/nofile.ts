/**
 * The open-files limit. Each session holds two descriptors; a limit below
 * what `--max-conns` needs means EMFILE under load, which the accept loop
 * survives but clients feel.
 *
 * Deno will not let a program read /proc/self/limits without --allow-all, so
 * the limit is asked of util-linux's `prlimit` (the only program ferry's
 * permissions let it run), once, at start; then ferry gives up running
 * programs (see {@linkcode stopRunningPrograms}). Where prlimit is missing
 * the check is skipped.
 *
 * @module
 */

/**
 * Descriptors ferry needs with `maxConns` sessions at once and `pooled`
 * connections kept dialled by forwarders: two a session, one a pooled
 * connection, plus slack.
 */
export function descriptorsNeeded(maxConns: number, pooled = 0): number {
  return maxConns * 2 + pooled + 64;
}

/** Parses `prlimit --output SOFT --noheadings` output: a number or `unlimited`. */
export function parseSoftLimit(text: string): number | null {
  const value = text.trim();
  if (value === "unlimited") return Infinity;
  return /^\d+$/.test(value) ? Number(value) : null;
}

/** Whether `error` is EMFILE or ENFILE: no descriptor left, for this process or the system. */
export function isOutOfDescriptors(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "EMFILE" || code === "ENFILE";
}

/** `performance.now()` when an accept or a connect last met EMFILE or ENFILE. */
let lastShortageAt = -Infinity;

/** Records that an accept or a connect just failed for want of a descriptor. */
export function noteShortage(): void {
  lastShortageAt = performance.now();
}

/** Whether a shortage was recorded at `performance.now()` time `since` or later. */
export function shortageSince(since: number): boolean {
  return lastShortageAt >= since;
}

/**
 * Returned by {@linkcode openFilesLimit} when `prlimit` could not start for
 * want of descriptors: the limit is too low even to be learned.
 */
export const TOO_LOW_TO_CHECK = "too-low-to-check";

/**
 * The soft open-files limit of this process, `null` where it cannot be
 * learned (no prlimit), or {@linkcode TOO_LOW_TO_CHECK}.
 */
export async function openFilesLimit(): Promise<number | null | typeof TOO_LOW_TO_CHECK> {
  try {
    const { success, stdout } = await new Deno.Command("prlimit", {
      args: ["--pid", String(Deno.pid), "--nofile", "--output", "SOFT", "--noheadings"],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
      // Deno refuses to run a program with LD_* variables in its environment
      // (LD_LIBRARY_PATH is common) unless given --allow-all, and prlimit
      // needs none of ours. The program is still found on ferry's PATH.
      clearEnv: true,
    }).output();
    return success ? parseSoftLimit(new TextDecoder().decode(stdout)) : null;
  } catch (error) {
    // At a limit of 24 or so, starting prlimit needs more than are left.
    if (isOutOfDescriptors(error)) return TOO_LOW_TO_CHECK;
    return null; // no prlimit, or not allowed to run it
  }
}

/**
 * Gives up the permission to run programs, for the rest of the process.
 * prlimit starts any program it is given (`prlimit --nofile=64 sh -c …`), so
 * `--allow-run=prlimit` is as wide as `--allow-run`, and ferry needs no
 * program once it knows the limit. All of `run` is revoked: revoking only
 * prlimit would leave a wider grant (`--allow-run`, `--allow-all`) as it was.
 */
export function stopRunningPrograms(): void {
  Deno.permissions.revokeSync({ name: "run" });
}
