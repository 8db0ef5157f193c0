/**
 * A set of objects kept in one array, where each object remembers its own
 * index: add and delete are O(1) (delete moves the last object into the hole),
 * and nothing is allocated per object.
 *
 * Why not a `Set`: V8 replaces a Set's hash table as entries come and go, and
 * the discarded table keeps its old entries and a link to its successor. Once
 * one discarded table has been promoted to the old generation, every scavenge
 * treats those links as roots: each later table, and every object it ever
 * held, survives and is promoted in turn, until the next full GC. With a
 * session added and deleted per connection, ended sessions were promoted by
 * the thousand: under the session benchmark, 840 KB promoted per scavenge
 * with a 16 MiB young generation, 0 with this list.
 *
 * @module
 */

/** Something a {@linkcode SlotList} can hold: the list keeps its index in `slot`. */
export interface Slotted {
  /** The index in the list that holds it; -1 in none. Only the list writes it. */
  slot: number;
}

/** The set; an object can be in one list at a time. */
export class SlotList<T extends Slotted> {
  readonly #items: T[] = [];

  /** Number of objects held. */
  get size(): number {
    return this.#items.length;
  }

  /** Adds `item`; adding an item already held does nothing. */
  add(item: T): void {
    if (this.has(item)) return;
    if (item.slot !== -1) throw new Error("SlotList: the item is held by another list");
    item.slot = this.#items.length;
    this.#items.push(item);
  }

  /** Whether `item` is held. */
  has(item: T): boolean {
    return item.slot !== -1 && this.#items[item.slot] === item;
  }

  /** Removes `item`; returns whether it was held. */
  delete(item: T): boolean {
    if (!this.has(item)) return false;
    const last = this.#items.pop()!;
    if (last !== item) {
      this.#items[item.slot] = last;
      last.slot = item.slot;
    }
    item.slot = -1;
    return true;
  }

  /** Removes and returns the items for which `test` is true. */
  removeWhere(test: (item: T) => boolean): T[] {
    const removed: T[] = [];
    // Backwards: the item moved into a hole comes from the end, already tested.
    for (let i = this.#items.length - 1; i >= 0; i--) {
      const item = this.#items[i]!;
      if (!test(item)) continue;
      this.delete(item);
      removed.push(item);
    }
    return removed;
  }

  /** The items held now, as a copy: callers may add and delete while they go through it. */
  toArray(): T[] {
    return this.#items.slice();
  }
}
