/**
 * Name lookups: one per name at a time, and a cap on how many may be in
 * progress, per client IP and in the whole process, with a queue behind it.
 *
 * A lookup cannot be cancelled. One abandoned at a connect timeout still
 * holds a thread of Deno's resolver pool until the system resolver gives up,
 * which takes seconds to tens of seconds for a name whose server never
 * answers. A client asking for such names (20 a second for 5 s) made every
 * other client's lookups queue behind them for 25 s, `localhost` included.
 * So one client IP may not have more than its share in progress.
 *
 * Past the cap a request waits its turn (until its caller's signal aborts,
 * at the connect timeout) rather than failing: a browser opening a page
 * sends dozens of CONNECTs by name at once, each resolved in milliseconds,
 * and failing those beyond the cap broke one fetch in five. Requests for a
 * name already being looked up share that lookup and take no slot. Turns go
 * round the waiting client IPs, so one client's queue does not hold up
 * another's.
 *
 * @module
 */
import { lookup } from "node:dns/promises";

/** One address of a name, as node:dns gives it. */
export interface LookupAddress {
  readonly address: string;
  readonly family: number;
}

/**
 * Lookups in progress at most, in the whole process. Each holds one of the
 * 32 threads Deno's runtime has for blocking work until the resolver answers
 * or gives up, and every write to stderr needs one of those threads too: 32
 * lookups of names whose server never answers froze ferry's log for the
 * resolver's whole timeout, and lost its last lines at SIGTERM.
 */
export const MAX_LOOKUPS = 24;
/** Lookups in progress at most for one client IP. */
export const MAX_LOOKUPS_PER_CLIENT = 8;
/** Requests at most waiting for a slot, per client IP; more fail at once. */
export const MAX_WAITING_PER_CLIENT = 256;

/** A lookup refused because too many are waiting already. */
export class LookupsBusy extends Error {
  override readonly name = "LookupsBusy";
}

/** Resolves `host` to all its addresses, in the order the system prefers. */
export type Resolver = (host: string) => Promise<LookupAddress[]>;

/**
 * Looks `host` up for `client` (an IP address). While it waits for a slot,
 * aborting `signal` takes it out of the queue and rejects with the reason; a
 * lookup in progress cannot be stopped, so callers race it with their signal.
 */
export type Lookup = (
  host: string,
  client: string,
  signal?: AbortSignal,
) => Promise<LookupAddress[]>;

/** Caps for {@linkcode limitedResolver}. */
export interface LookupCaps {
  readonly max?: number;
  readonly maxPerClient?: number;
  readonly maxWaitingPerClient?: number;
}

/** A request waiting for a slot. */
interface Waiter {
  readonly host: string;
  /** Hands the waiter its lookup (its own or a shared one). */
  readonly proceed: (lookup: Promise<LookupAddress[]>) => void;
}

/** A lookup function that keeps to the caps; `resolver` does the work. */
export function limitedResolver(resolver: Resolver, caps: LookupCaps = {}): Lookup {
  const max = caps.max ?? MAX_LOOKUPS;
  const maxPerClient = caps.maxPerClient ?? MAX_LOOKUPS_PER_CLIENT;
  const maxWaitingPerClient = caps.maxWaitingPerClient ?? MAX_WAITING_PER_CLIENT;
  let total = 0;
  const running = new Map<string, number>();
  const inFlight = new Map<string, Promise<LookupAddress[]>>();
  /** Per client IP, in arrival order; the map's order is whose turn comes next. */
  const waiting = new Map<string, Waiter[]>();

  const hasRoom = (client: string) => total < max && (running.get(client) ?? 0) < maxPerClient;

  function start(host: string, client: string): Promise<LookupAddress[]> {
    total++;
    running.set(client, (running.get(client) ?? 0) + 1);
    let work: Promise<LookupAddress[]>;
    try {
      work = resolver(host);
    } catch (error) {
      work = Promise.reject(error); // still through finally(), which frees the slot
    }
    // Counted until the lookup itself ends, not when its callers give up.
    const lookup = work.finally(() => {
      inFlight.delete(host);
      total--;
      const left = running.get(client)! - 1;
      if (left === 0) running.delete(client);
      else running.set(client, left);
      admitWaiting();
    });
    inFlight.set(host, lookup);
    return lookup;
  }

  /** Lets waiters go, a client IP at a time, while there is room or a lookup to share. */
  function admitWaiting(): void {
    for (const [client, queue] of waiting) {
      const next = queue[0]!;
      const shared = inFlight.get(next.host);
      if (!shared && !hasRoom(client)) continue;
      queue.shift();
      // To the back of the turn order (a Map iterates what is re-added again, later).
      waiting.delete(client);
      if (queue.length > 0) waiting.set(client, queue);
      next.proceed(shared ?? start(next.host, client));
    }
  }

  return (host, client, signal) => {
    const shared = inFlight.get(host);
    if (shared) return shared;
    if (hasRoom(client)) return start(host, client);
    if (signal?.aborted) return Promise.reject(signal.reason);
    const queue = waiting.get(client) ?? [];
    if (queue.length >= maxWaitingPerClient) {
      return Promise.reject(
        new LookupsBusy(`too many name lookups waiting (${queue.length} for ${client})`),
      );
    }
    return new Promise<LookupAddress[]>((resolve, reject) => {
      const onAbort = () => {
        const at = queue.indexOf(waiter);
        if (at >= 0) queue.splice(at, 1);
        if (queue.length === 0 && waiting.get(client) === queue) waiting.delete(client);
        reject(signal!.reason);
      };
      const waiter: Waiter = {
        host,
        proceed: (lookup) => {
          signal?.removeEventListener("abort", onAbort);
          lookup.then(resolve, reject);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      queue.push(waiter);
      waiting.set(client, queue);
    });
  };
}

/** The process's lookups: node:dns `lookup`, all addresses, unsorted. */
export const lookupAll: Lookup = limitedResolver((host) =>
  lookup(host, { all: true, verbatim: true })
);
