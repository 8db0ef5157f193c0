/** Counting a dial's waits for a descriptor: for the tests of when it gives up. */
import type { DescriptorWait } from "../../src/spare_descriptors.ts";

/** How many times `wait` waits before it gives up (at most 100). */
export async function waitsUntilGivenUp(wait: DescriptorWait): Promise<number> {
  const signal = new AbortController().signal;
  let waits = 0;
  while (waits < 100 && await wait.next(signal)) waits++;
  return waits;
}
