/**
 * Descriptors ferry can do without: the connections forwarders keep pooled.
 *
 * A pool refills whenever it is short, so a `--pool` larger than the
 * open-files limit leaves (the limit is per process, and every listener
 * shares it) took every descriptor, and then no listener could accept a
 * client, nor a SOCKS session dial, bind or open a UDP relay, until a pooled
 * connection happened to end. A warm connection is worth less than a
 * client: when one of those fails for want of a descriptor, one pooled
 * connection is closed and it is tried again, and that pool stops refilling
 * for a while (it says `pool-no-descriptors`). So the pools shrink to what
 * the clients leave them, without a share of the limit set aside by guess.
 *
 * Linux's accept() fails with EMFILE with no descriptor free even when no
 * client waits, so after each client an accept loop frees one more: one
 * stays free for the next client, or for this one's dial.
 *
 * The registry is this module's own: descriptors belong to the process, not
 * to one listener, and a forwarder's pool may have to make room for a SOCKS
 * listener's client in the same `ferry run`.
 *
 * @module
 */
import { isOutOfDescriptors } from "./nofile.ts";

/** A pool that can close one of its idle connections on request. */
export interface DescriptorDonor {
  /** Connections it holds idle now. */
  readonly idle: number;
  /**
   * Closes one idle connection; resolves once its descriptor is free, or
   * `null` if it had none.
   */
  giveUpConnection(): Promise<void> | null;
}

const donors = new Set<DescriptorDonor>();

/** Lets `donor` be asked for a descriptor, until {@linkcode withdrawDonor}. */
export function addDonor(donor: DescriptorDonor): void {
  donors.add(donor);
}

export function withdrawDonor(donor: DescriptorDonor): void {
  donors.delete(donor);
}

/**
 * Closes one idle pooled connection, from the pool that holds the most, so
 * that its descriptor can be used for a client. Resolves with whether one
 * was closed (if not, there is nothing to give, and the caller's shortage
 * stands) once its descriptor is free: Deno closes a socket only when the
 * read pending on it has ended, and an accept tried again before that, at
 * once, met EMFILE again and had the whole pool closed, one by one.
 */
export async function freeSpareDescriptor(): Promise<boolean> {
  let fullest: DescriptorDonor | null = null;
  for (const donor of donors) {
    if (donor.idle > (fullest?.idle ?? 0)) fullest = donor;
  }
  const released = fullest?.giveUpConnection();
  if (!released) return false;
  await released;
  return true;
}

/**
 * Runs `open` (a socket's creation), and again each time it fails for want
 * of a descriptor (`isShortage`) and a pool gives one up; else rethrows.
 */
export async function makingRoom<T>(
  open: () => T | Promise<T>,
  isShortage: (error: unknown) => boolean = isOutOfDescriptors,
): Promise<T> {
  try {
    return await open();
  } catch (error) {
    return await againMakingRoom(error, open, isShortage);
  }
}

/**
 * After `open` failed with `error`: {@linkcode makingRoom}'s retries. Apart,
 * so that a hot path can add them with a `catch` and no await of its own.
 */
export async function againMakingRoom<T>(
  error: unknown,
  open: () => T | Promise<T>,
  isShortage: (error: unknown) => boolean = isOutOfDescriptors,
): Promise<T> {
  while (isShortage(error) && await freeSpareDescriptor()) {
    try {
      return await open();
    } catch (again) {
      error = again;
    }
  }
  throw error;
}
