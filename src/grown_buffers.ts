/**
 * The relays' grown read buffers: bytes under one limit, and those given
 * back kept for the next bulk transfer.
 *
 * Kept, not dropped, because a dropped buffer is memory until the garbage
 * collector runs, and that can be long: buffers live outside V8's heap, and
 * with the V8 flags ferry runs with (see the README's Permissions section)
 * external memory may grow fourfold before a full collection. Waves of
 * clients that stalled fast downloads and then reset took ferry to 0.6–1 GB
 * with a 256 MiB limit on the buffers in use; kept and reused, 340 MB.
 *
 * One case still drops buffers: a bulk transfer that wants a buffer larger
 * than any kept one when the limit leaves no room for a new one. The kept
 * ones smaller than it go, to make room, and wait for the collector: after
 * 200 medium streams (buffers up to 1 MiB) 40 bulk downloads took ferry to
 * 518 MB at the peak, once; the store then holds large buffers, which serve
 * smaller requests too (see `take`). Never dropping would instead cap every
 * later bulk transfer at the largest size kept.
 *
 * @module
 */

/** Grown buffers, in use and kept, within a limit of bytes. */
export class GrownBuffers {
  readonly limit: number;
  /**
   * The last bytes under the limit, lent only in buffers of at most
   * `smallSize`: once sessions whose peers stopped reading have taken the
   * rest in large buffers, a new bulk transfer can still grow past its first
   * small buffer. Without it, 100 such sessions held a new download to 1 KiB
   * reads, a tenth of its speed.
   */
  readonly reserve: number;
  /** The largest buffer lent from the reserve. */
  readonly smallSize: number;
  /** Bytes of the buffers relays hold now. */
  inUse = 0;
  /** Bytes of the buffers kept for reuse. */
  kept = 0;
  /** Bytes allocated so far; what exceeds `inUse + kept` was dropped to the garbage collector. */
  allocated = 0;
  /** Kept buffers by size in bytes. */
  readonly #keptBySize = new Map<number, ArrayBuffer[]>();
  /** The buffers handed out and not given back: a relay's first buffers are not among them. */
  readonly #lent = new WeakSet<ArrayBuffer>();

  constructor(limit: number, reserve = 0, smallSize = 0) {
    this.limit = limit;
    this.reserve = reserve;
    this.smallSize = smallSize;
  }

  /**
   * A buffer of `size` bytes, or `null` when the limit does not allow one.
   * A kept buffer of that size first; else a new one if there is room; else
   * the front of a larger kept one; else a new one after dropping kept ones
   * to make room.
   */
  take(size: number): Uint8Array<ArrayBuffer> | null {
    // Bytes a buffer of this size may bring `inUse` up to: the reserve is for small ones.
    const room = size <= this.smallSize ? this.limit : this.limit - this.reserve;
    if (this.inUse + size > room) return null;
    const same = this.#keptBySize.get(size)?.pop();
    if (same !== undefined) return this.#handOut(same, size);
    if (this.inUse + this.kept + size > this.limit) {
      const larger = [...this.#keptBySize.keys()].filter((s) => s > size).sort((a, b) => a - b);
      const buffer = larger.length > 0 ? this.#keptBySize.get(larger[0]!)!.pop()! : undefined;
      if (buffer !== undefined) return this.#handOut(buffer, size);
      this.#dropUntilRoomFor(size);
    }
    const buffer = new ArrayBuffer(size);
    this.#lent.add(buffer);
    this.allocated += size;
    this.inUse += size;
    return new Uint8Array(buffer);
  }

  /**
   * Takes back a buffer from {@linkcode take}, to keep; any other buffer, or
   * one given back already, is ignored. No read or write may be using it any
   * more: the next relay to take it will.
   */
  give(view: Uint8Array<ArrayBuffer>): void {
    const buffer = view.buffer;
    if (!this.#lent.delete(buffer)) return;
    this.inUse -= buffer.byteLength;
    this.kept += buffer.byteLength;
    const list = this.#keptBySize.get(buffer.byteLength);
    if (list) list.push(buffer);
    else this.#keptBySize.set(buffer.byteLength, [buffer]);
  }

  #handOut(buffer: ArrayBuffer, size: number): Uint8Array<ArrayBuffer> {
    this.#lent.add(buffer);
    this.kept -= buffer.byteLength;
    this.inUse += buffer.byteLength;
    if (this.#keptBySize.get(buffer.byteLength)?.length === 0) {
      this.#keptBySize.delete(buffer.byteLength);
    }
    return new Uint8Array(buffer, 0, size);
  }

  /** Drops kept buffers (all smaller than `size` by now) until a new one of `size` fits. */
  #dropUntilRoomFor(size: number): void {
    for (const [bytes, list] of this.#keptBySize) {
      while (list.length > 0 && this.inUse + this.kept + size > this.limit) {
        list.pop();
        this.kept -= bytes;
      }
      if (list.length === 0) this.#keptBySize.delete(bytes);
    }
  }
}
