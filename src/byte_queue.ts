/**
 * A first-in, first-out queue of bytes held in one buffer that doubles as it
 * fills. A peer that sends one byte per read then costs a byte each, not a
 * typed array each (about 150 bytes of V8 objects apiece, so 64 KiB dripped a
 * byte at a time would hold some 10 MB).
 *
 * @module
 */

const EMPTY = new Uint8Array(0);
const FIRST_CAPACITY = 1024;

/** Bytes received before their reader asked for them. */
export class ByteQueue {
  #bytes = EMPTY;
  #start = 0;
  #end = 0;

  /** Bytes queued. */
  get length(): number {
    return this.#end - this.#start;
  }

  /** Bytes of memory the queue holds now, queued or not. */
  get capacity(): number {
    return this.#bytes.length;
  }

  /** Appends a copy of `chunk`. */
  push(chunk: Uint8Array): void {
    if (this.#end + chunk.length > this.#bytes.length) {
      const queued = this.#bytes.subarray(this.#start, this.#end);
      const needed = queued.length + chunk.length;
      if (needed > this.#bytes.length) {
        const grown = new Uint8Array(Math.max(needed, 2 * this.#bytes.length, FIRST_CAPACITY));
        grown.set(queued);
        this.#bytes = grown;
      } else {
        this.#bytes.copyWithin(0, this.#start, this.#end);
      }
      this.#start = 0;
      this.#end = queued.length;
    }
    this.#bytes.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /**
   * Moves the oldest bytes, as many as fit, into `buffer`; returns how many.
   * Once the queue is empty it lets go of its memory.
   */
  shift(buffer: Uint8Array): number {
    const n = Math.min(this.length, buffer.length);
    buffer.set(this.#bytes.subarray(this.#start, this.#start + n));
    this.#start += n;
    if (this.#start === this.#end) {
      this.#bytes = EMPTY;
      this.#start = this.#end = 0;
    }
    return n;
  }
}
