/**
 * A client read while its BIND waits for the peer. Without a read pending,
 * a client that resets is not noticed: its listener would stay open, and a
 * peer connecting meanwhile would be accepted for nobody. So the client is
 * read all along: its bytes are kept for the peer, a FIN stops the reading
 * (the relay reads EOF again, and passes it on), and a reset ends the wait.
 *
 * Deno cannot take back a read once started, so when the peer comes the read
 * in flight is handed over: the relay gets the client as a {@linkcode RelayEnd}
 * whose first read is that one.
 *
 * @module
 */
import type { RelayEnd } from "./relay.ts";

/** What a wait reads at a time; kept small, as a BIND's client is mostly idle. */
const SCRATCH_SIZE = 512;

/** Reads a client until {@linkcode release}; see the module's notes. */
export class WaitingClient {
  readonly #conn: RelayEnd;
  readonly #keep: (bytes: Uint8Array) => boolean;
  readonly #scratch = new Uint8Array(SCRATCH_SIZE);
  #inFlight: Promise<number | null> | null = null;
  #released = false;
  #failed = false;
  /** The error a read failed with during the wait, until the relay has read it too. */
  #error: unknown = null;
  #fail!: (error: unknown) => void;
  /** Rejects with the client's error (a reset) while watched; never resolves. */
  readonly gone: Promise<never>;

  /**
   * Starts reading `conn`. `keep` gets every read's bytes, in order, and says
   * whether to go on reading: `false` leaves the rest in the kernel, and a
   * reset then goes unnoticed until the relay reads.
   */
  constructor(conn: RelayEnd, keep: (bytes: Uint8Array) => boolean) {
    this.#conn = conn;
    this.#keep = keep;
    this.gone = new Promise<never>((_, reject) => this.#fail = reject);
    this.gone.catch(() => {}); // a reset after the wait is the relay's to see
    this.#readNext();
  }

  /** Whether `gone` has rejected: the wait ended because of the client. */
  get failed(): boolean {
    return this.#failed;
  }

  /**
   * Stops reading and returns the client as the relay should read it: the
   * read in flight, if any, first, or the error a read failed with (a reset
   * just as the peer came, its error read once). After a wait that ended
   * without a peer the result may be ignored: the read in flight then goes
   * first anyway.
   */
  release(): RelayEnd {
    this.#released = true;
    const conn = this.#conn;
    let pending = this.#inFlight;
    let error = this.#error;
    this.#error = null;
    if (pending === null && !this.#failed) return conn;
    const scratch = this.#scratch;
    let left: Uint8Array | null = null; // what a short relay buffer had no room for
    const take = (buffer: Uint8Array, bytes: Uint8Array): number => {
      const n = Math.min(buffer.length, bytes.length);
      buffer.set(bytes.subarray(0, n));
      left = n < bytes.length ? bytes.slice(n) : null;
      return n;
    };
    return {
      read(buffer: Uint8Array): Promise<number | null> {
        if (error !== null) {
          const failure = error;
          error = null;
          return Promise.reject(failure);
        }
        if (left !== null) return Promise.resolve(take(buffer, left));
        if (pending === null) return conn.read(buffer);
        const first = pending;
        pending = null;
        return first.then((n) => n === null ? null : take(buffer, scratch.subarray(0, n)));
      },
      write: (bytes) => conn.write(bytes),
      closeWrite: () => conn.closeWrite(),
    };
  }

  #readNext(): void {
    const read = this.#conn.read(this.#scratch);
    this.#inFlight = read;
    read.then((n) => {
      if (this.#released) return; // the relay's now
      this.#inFlight = null;
      // EOF: not a close (a client may half-close and wait for the answer).
      if (n !== null && this.#keep(this.#scratch.subarray(0, n))) this.#readNext();
    }, (error) => {
      if (this.#released) return;
      this.#inFlight = null;
      this.#failed = true;
      this.#error = error;
      this.#fail(error);
    });
  }
}
