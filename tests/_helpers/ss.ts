/**
 * `ss` (iproute2), for tests that check the kernel's view of ferry's sockets.
 */

/** The TCP sockets `ss` lists with `flags` (add `-H`: no header) and `filter`, one line each. */
export async function ss(flags: string, ...filter: string[]): Promise<string[]> {
  const { stdout } = await new Deno.Command("ss", { args: [flags, ...filter] }).output();
  return new TextDecoder().decode(stdout).split("\n").filter((line) => line.trim() !== "");
}
