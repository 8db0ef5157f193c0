/**
 * One coarse timer for every handshake, connect and idle deadline in the
 * process. A timer per connection would mean thousands of timers re-armed on
 * every read; instead each session keeps a deadline number, bumps it on
 * activity (a field write), and one interval sweeps the set.
 *
 * @module
 */
import { SlotList, type Slotted } from "./slot_list.ts";

/**
 * Something with a deadline on the {@linkcode Deadlines} clock. Its `slot`
 * starts at -1 and belongs to the sweep's list.
 */
export interface Expirable extends Slotted {
  /** When to expire, in {@linkcode Deadlines.now} milliseconds. */
  deadline: number;
  /** Called once, from the sweep, when the deadline has passed. */
  expire(): void;
}

/**
 * The shared sweep. Ticks only while something is watched, and stops at the
 * first tick that finds nothing: not at the last `unwatch()`, because then
 * a client that finds ferry idle paid for a new interval and its clearing
 * on each session (about 120 µs of CPU in a V8 profile, cold). With
 * sessions one at a time, 25 ms apart, seven runs paired with the eager
 * stop: the median session 1.64 against 1.70 ms (shorter in six of the
 * seven), ferry's CPU about 45 µs a session less; for one more tick after
 * the last.
 */
export class Deadlines {
  /** Coarse monotonic time in ms, refreshed on each tick. Cheap to read. */
  now = performance.now();
  readonly #tickMs: number;
  readonly #watched = new SlotList<Expirable>();
  #timer: ReturnType<typeof setInterval> | undefined;

  /**
   * `tickMs` is the resolution. A deadline counted from {@linkcode now} may
   * be counted from a moment a tick ago, so the sweep waits one tick past it:
   * deadlines fire up to two ticks late, and never early (a client pausing
   * 0.93 s under `--idle-timeout 1s` was cut when they could fire a tick early).
   */
  constructor(tickMs: number) {
    this.#tickMs = tickMs;
  }

  /**
   * Watches `item` until it expires or is {@linkcode unwatch}ed. Its
   * deadline must already count from a fresh {@linkcode now}: while the
   * sweep is running, `now` is at most a tick old.
   */
  watch(item: Expirable): void {
    this.#startSweep();
    this.#watched.add(item);
  }

  /**
   * Sets `item`'s deadline `timeoutMs` from now and watches it. Use this, not
   * `watch()`, for a deadline counted from this moment. It reads the clock
   * afresh (and so refreshes {@linkcode now} for everyone): `now` may be
   * older than a tick when the event loop is late (a soak test under load
   * saw a 1 s handshake timeout fire at 945 ms), and stands still at its last
   * tick while nothing is watched.
   */
  watchFor(item: Expirable, timeoutMs: number): void {
    this.#startSweep();
    const now = performance.now();
    this.now = now;
    item.deadline = now + timeoutMs;
    this.#watched.add(item);
  }

  /** Stops watching `item`. The sweep stops at its next tick if this was the last. */
  unwatch(item: Expirable): void {
    this.#watched.delete(item);
  }

  /**
   * Stops the sweep now if nothing is watched, rather than at its next tick:
   * for a server whose sessions have all ended at shutdown, so that nothing
   * of it is left scheduled. A later `watch()` starts the sweep again.
   */
  stopIfIdle(): void {
    if (this.#watched.size === 0) this.#stop();
  }

  /** Number of watched items. */
  get size(): number {
    return this.#watched.size;
  }

  #sweep(): void {
    this.now = performance.now();
    const due = this.now - this.#tickMs;
    const expired = this.#watched.removeWhere((item) => item.deadline <= due);
    for (const item of expired) item.expire();
    this.stopIfIdle();
  }

  /** Starts the sweep, with a fresh clock, unless it is running already. */
  #startSweep(): void {
    if (this.#timer !== undefined) return;
    this.now = performance.now();
    const timer = setInterval(() => this.#sweep(), this.#tickMs);
    // The sweep alone must never keep the process alive.
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  #stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

/** A tick fine enough for the shortest timeout: a tenth of it, within 10 ms to 1 s. */
export function tickFor(...timeoutsMs: number[]): number {
  return Math.min(1000, Math.max(10, Math.floor(Math.min(...timeoutsMs) / 10)));
}
