/**
 * `ss` (iproute2), for tests that check the kernel's view of ferry's sockets.
 */

/**
 * The TCP sockets `ss` lists with `flags` (add `-H`: no header) and `filter`,
 * one line each. Throws when `ss` fails, so that an empty list always means
 * "no such socket", never "ss could not tell".
 */
export async function ss(flags: string, ...filter: string[]): Promise<string[]> {
  const { success, stdout, stderr } = await new Deno.Command("ss", {
    args: [flags, ...filter],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  if (!success) {
    throw new Error(`ss ${[flags, ...filter].join(" ")} failed: ${decoder.decode(stderr)}`);
  }
  return decoder.decode(stdout).split("\n").filter((line) => line.trim() !== "");
}

/**
 * The sockets still knocking (SYN-SENT) at `host:port`, polled for up to 2 s
 * until there are none: a connect ferry aborted is gone within that, where
 * one left running knocks until the kernel gives up, minutes later.
 */
export async function stillKnocking(host: string, port: number): Promise<string[]> {
  let knocking: string[] = [];
  for (const until = Date.now() + 2_000; Date.now() < until;) {
    knocking = await ss("-tanH", "state", "syn-sent", "dst", `${host}:${port}`);
    if (knocking.length === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return knocking;
}
