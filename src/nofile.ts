/**
 * The open-files limit, read from /proc (Linux). Each session holds two
 * descriptors; a limit below what `--max-conns` needs means EMFILE under load,
 * which the accept loop survives but clients feel.
 *
 * @module
 */

/** Descriptors a server with `maxConns` sessions needs: two a session, plus slack. */
export function descriptorsNeeded(maxConns: number): number {
  return maxConns * 2 + 64;
}

/** Parses the soft "Max open files" limit out of /proc/self/limits text, or `null`. */
export function parseOpenFilesLimit(limitsText: string): number | null {
  const match = /^Max open files\s+(\d+|unlimited)\s/m.exec(limitsText);
  if (!match) return null;
  return match[1] === "unlimited" ? Infinity : Number(match[1]);
}

/** The soft open-files limit of this process, or `null` where it cannot be read. */
export async function openFilesLimit(): Promise<number | null> {
  try {
    return parseOpenFilesLimit(await Deno.readTextFile("/proc/self/limits"));
  } catch {
    return null;
  }
}
