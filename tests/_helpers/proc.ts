/**
 * What /proc says of a child process (ferry). Read through `ls` and `cat`:
 * Deno asks for --allow-all to read /proc/PID, more than the tests have.
 */

async function output(command: string, args: string[]): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command(command, { args }).output();
  const decoder = new TextDecoder();
  if (code !== 0) throw new Error(`${command} ${args.join(" ")}: ${decoder.decode(stderr)}`);
  return decoder.decode(stdout);
}

/** How many descriptors process `pid` has open. */
export async function openDescriptors(pid: number): Promise<number> {
  return (await output("ls", [`/proc/${pid}/fd`])).trim().split("\n").length;
}

/** CPU seconds (user and system) process `pid` has used. */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await output("cat", [`/proc/${pid}/stat`]);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]); // utime and stime
  return ticks / 100; // USER_HZ, 100 on Linux
}
