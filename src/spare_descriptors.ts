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
 * A client's dial (or its BIND listener, or its UDP relay socket) with no
 * pooled connection left to give up waits for a descriptor instead of
 * failing (see {@linkcode DescriptorWait}) while a session may give one
 * back, and while one waits no listener accepts: a client accepted into the
 * last descriptor had none to dial with, failed, and freed its descriptor
 * for the next, which failed the same way, so that a burst at the limit was
 * mostly refused where the listen queue would have held it.
 *
 * The registry is this module's own: descriptors belong to the process, not
 * to one listener, and a forwarder's pool may have to make room for a SOCKS
 * listener's client in the same `ferry run`.
 *
 * @module
 */
import { isOutOfDescriptors, noteShortage } from "./nofile.ts";
import { sleep } from "./sleep.ts";

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
 * After `error` from opening a socket (an accept, a listen, a bind): if it
 * was for want of a descriptor, records the shortage (a lookup failing
 * meanwhile is not the name's fault: see src/upstream/dial.ts) and has a
 * pool give one up. Resolves with whether one was freed, so that the
 * caller tries again.
 */
export function roomAfter(error: unknown): Promise<boolean> {
  if (!isOutOfDescriptors(error)) return Promise.resolve(false);
  noteShortage();
  return freeSpareDescriptor();
}

/**
 * Runs `open` (a socket's creation), and again each time it fails for want
 * of a descriptor and a pool gives one up; else rethrows.
 */
export async function makingRoom<T>(open: () => T | Promise<T>): Promise<T> {
  for (;;) {
    try {
      return await open();
    } catch (error) {
      if (!await roomAfter(error)) throw error;
    }
  }
}

/**
 * Sessions holding a target (a dialled or pooled connection, a BIND peer,
 * a UDP relay): each gives descriptors back when it ends.
 */
let sessionsWithTargets = 0;
/** Targets taken and given back so far: descriptors moving (a count: no clock on every session). */
let targetMoves = 0;

/** A session took its target; {@linkcode targetReleased} when it closes it. */
export function targetHeld(): void {
  sessionsWithTargets++;
  targetMoves++;
}

export function targetReleased(): void {
  sessionsWithTargets--;
  targetMoves++;
}

/** Client dials waiting for a descriptor (see {@linkcode DescriptorWait}). */
let dialsWaiting = 0;

/** How long a dial short of a descriptor first waits for one; the wait doubles up to the cap. */
const WAIT_FIRST_MS = 5;
const WAIT_MAX_MS = 100;
/** Waits in a row with no session holding a target before a dial gives up (see DescriptorWait.next). */
const IDLE_ROUNDS_MAX = 5;
/** How long no session may take or give back a target before a waiting dial gives up. */
const STANDSTILL_MS = 1_000;

/**
 * A client's dial short of a descriptor, from its first failure until it
 * is disposed (dialled, or given up). While any lives, {@linkcode
 * acceptsPaused} says so: a descriptor that frees up then goes to a client
 * already accepted, not to a new one who could not dial either. Counted for
 * the whole time, its retries included: a listener that accepted between
 * two waits took the descriptor the retry was about to get.
 */
export class DescriptorWait implements Disposable {
  #waitMs = WAIT_FIRST_MS;
  /** Waits in a row with no session holding a target. */
  #idleRounds = 0;
  /** {@linkcode targetMoves} when last seen to change, and when (at first: the dial's first shortage). */
  #movesSeen = targetMoves;
  #movedAt = performance.now();
  #disposed = false;

  constructor() {
    dialsWaiting++;
  }

  /**
   * Waits for a descriptor to free up (a session to end): 5 ms, doubling to
   * 100 ms, or until `signal` aborts. Resolves `false` at once when nothing
   * would free one: no session has held a target (a dialled or pooled
   * connection, a BIND peer, a UDP relay, each given back when the session
   * ends) for the last five waits (155 ms; the first dials of a burst take
   * a moment to connect). Then every descriptor is held by clients still in
   * their handshakes or waiting too (a SOCKS burst is accepted before any of
   * it dials), and waiting stalled every listener until the connect
   * timeout; the dial fails instead, and its client's descriptor goes to
   * the next. Sessions that hold targets but do not end (an idle SSH
   * session, a UDP association) free nothing either: so also when no
   * session has taken or given back a target for a second (since this dial
   * began to wait, at the earliest). A burst whose sessions last half a
   * second is still served whole.
   */
  async next(signal: AbortSignal): Promise<boolean> {
    if (sessionsWithTargets > 0) this.#idleRounds = 0;
    else if (++this.#idleRounds > IDLE_ROUNDS_MAX) return false;
    const now = performance.now();
    if (targetMoves !== this.#movesSeen) {
      this.#movesSeen = targetMoves;
      this.#movedAt = now;
    } else if (now - this.#movedAt > STANDSTILL_MS) return false;
    const ms = this.#waitMs;
    this.#waitMs = Math.min(ms * 2, WAIT_MAX_MS);
    await sleep(ms, signal);
    return true;
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    dialsWaiting--;
  }
}

/** Whether listeners should leave new clients in their queues: dials wait for descriptors. */
export function acceptsPaused(): boolean {
  return dialsWaiting > 0;
}
