/**
 * Name lookups with a cap on how many may be in progress: per client IP, and
 * in the whole process.
 *
 * A lookup cannot be cancelled. One abandoned at a connect timeout still
 * holds a thread of Deno's resolver pool until the system resolver gives up,
 * which takes seconds to tens of seconds for a name whose server never
 * answers. A client asking for such names (20 a second for 5 s) made every
 * other client's lookups queue behind them for 25 s, `localhost` included.
 * Past a cap a lookup now fails at once, and one client IP cannot take more
 * than its share.
 *
 * @module
 */
import { lookup } from "node:dns/promises";

/** One address of a name, as node:dns gives it. */
export interface LookupAddress {
  readonly address: string;
  readonly family: number;
}

/** Lookups in progress at most, in the whole process. */
export const MAX_LOOKUPS = 32;
/** Lookups in progress at most for one client IP. */
export const MAX_LOOKUPS_PER_CLIENT = 8;

/** A lookup refused because too many are in progress. */
export class LookupsBusy extends Error {
  override readonly name = "LookupsBusy";
}

/** Resolves `host` to all its addresses, in the order the system prefers. */
export type Resolver = (host: string) => Promise<LookupAddress[]>;

/** A lookup function that keeps to the caps; `resolver` does the work. */
export function limitedResolver(
  resolver: Resolver,
  max = MAX_LOOKUPS,
  maxPerClient = MAX_LOOKUPS_PER_CLIENT,
): (host: string, client: string) => Promise<LookupAddress[]> {
  let total = 0;
  const perClient = new Map<string, number>();
  return (host, client) => {
    const mine = perClient.get(client) ?? 0;
    if (total >= max || mine >= maxPerClient) {
      const held = total >= max ? `${total} in all` : `${mine} for ${client}`;
      return Promise.reject(new LookupsBusy(`too many name lookups in progress (${held})`));
    }
    total++;
    perClient.set(client, mine + 1);
    // Counted until the lookup itself ends, not when its caller gives up.
    return resolver(host).finally(() => {
      total--;
      const left = perClient.get(client)! - 1;
      if (left === 0) perClient.delete(client);
      else perClient.set(client, left);
    });
  };
}

/** The process's lookups: node:dns `lookup`, all addresses, unsorted. */
export const lookupAll: (host: string, client: string) => Promise<LookupAddress[]> =
  limitedResolver((host) => lookup(host, { all: true, verbatim: true }));
