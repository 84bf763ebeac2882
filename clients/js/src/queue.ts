/**
 * The publish outbox: every publish waits here until the server acknowledged
 * it, so publishes made offline are flushed in order on reconnect, and one
 * whose fate is unknown (the connection broke before the reply) is sent again
 * with the same idempotency key and takes effect once.
 *
 * Bounded; optionally persisted to localStorage (or any Storage-like object) so
 * a reload does not lose what was queued. Persistence is read-modify-write per
 * change, so tabs sharing a storage key merge rather than overwrite each other;
 * an item two tabs both adopt after a reload is still published once, because
 * both send the same key.
 */
import type { PublishItem } from './types.js';

/** The subset of the Web Storage API the queue uses. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface QueueOptions {
  /** Most items held; default 1000. */
  maxSize?: number;
  /** What a full queue does with a new item: refuse it (default) or drop the oldest. */
  overflow?: 'reject' | 'drop-oldest';
  /** Where to persist, e.g. `localStorage`; null or absent keeps the queue in memory only. */
  storage?: StorageLike | null;
  /** Storage key; default `switchboard:outbox`. */
  storageKey?: string;
  /** Told about storage failures (quota, private mode); the memory queue keeps working. */
  onStorageError?: (err: unknown) => void;
}

/** Thrown when a publish does not fit in a full queue with `overflow: 'reject'`. */
export class QueueFullError extends Error {
  readonly code = 'queue_full';
  constructor(max: number) {
    super(`The offline publish queue is full (${max} items).`);
    this.name = 'QueueFullError';
  }
}

function validItem(x: unknown): x is PublishItem {
  const o = x as PublishItem;
  return (
    !!o && typeof o === 'object' && typeof o.key === 'string' && typeof o.channel === 'string' && 'data' in o
  );
}

/** An ordered, bounded, de-duplicated (by key) list of pending publishes. */
export class OfflineQueue {
  private list: PublishItem[] = [];
  private readonly keys = new Set<string>();
  readonly maxSize: number;
  private readonly overflow: 'reject' | 'drop-oldest';
  private readonly storage: StorageLike | null;
  private readonly storageKey: string;
  private readonly onStorageError: (err: unknown) => void;

  constructor(o: QueueOptions = {}) {
    this.maxSize = o.maxSize ?? 1000;
    if (!(this.maxSize >= 1)) throw new RangeError('queue: maxSize must be at least 1');
    this.overflow = o.overflow ?? 'reject';
    this.storage = o.storage ?? null;
    this.storageKey = o.storageKey ?? 'switchboard:outbox';
    this.onStorageError = o.onStorageError ?? (() => {});
    this.load();
  }

  /** Items in publish order (oldest first). Do not mutate. */
  items(): readonly PublishItem[] {
    return this.list;
  }

  get size(): number {
    return this.list.length;
  }

  /** The oldest item, if any. */
  peek(): PublishItem | undefined {
    return this.list[0];
  }

  has(key: string): boolean {
    return this.keys.has(key);
  }

  /**
   * Appends an item. Returns false (and changes nothing) when an item with the
   * same key is already queued. Throws QueueFullError when full and refusing;
   * with `drop-oldest` returns the dropped item through `dropped`.
   */
  add(item: PublishItem, dropped?: (old: PublishItem) => void): boolean {
    if (this.keys.has(item.key)) return false;
    if (this.list.length >= this.maxSize) {
      if (this.overflow === 'reject') throw new QueueFullError(this.maxSize);
      const old = this.list.shift()!;
      this.keys.delete(old.key);
      this.persistRemove(old.key);
      dropped?.(old);
    }
    this.list.push(item);
    this.keys.add(item.key);
    this.persistAdd(item);
    return true;
  }

  /** Removes the item with this key (acknowledged or refused for good). */
  remove(key: string): PublishItem | undefined {
    if (!this.keys.has(key)) return undefined;
    const i = this.list.findIndex((x) => x.key === key);
    const [it] = this.list.splice(i, 1);
    this.keys.delete(key);
    this.persistRemove(key);
    return it;
  }

  /** Empties the queue (and its persisted copy). */
  clear(): void {
    this.list = [];
    this.keys.clear();
    if (this.storage) this.write([]);
  }

  /** Adopts persisted items that are not in memory yet (e.g. after a reload), in their order. */
  load(): PublishItem[] {
    const adopted: PublishItem[] = [];
    for (const it of this.read()) {
      if (this.keys.has(it.key) || this.list.length >= this.maxSize) continue;
      this.list.push(it);
      this.keys.add(it.key);
      adopted.push(it);
    }
    return adopted;
  }

  private read(): PublishItem[] {
    if (!this.storage) return [];
    try {
      const raw = this.storage.getItem(this.storageKey);
      if (!raw) return [];
      const arr = JSON.parse(raw);
      return Array.isArray(arr) ? arr.filter(validItem) : [];
    } catch (err) {
      this.onStorageError(err);
      return [];
    }
  }

  private write(arr: PublishItem[]): void {
    if (!this.storage) return;
    try {
      if (arr.length) this.storage.setItem(this.storageKey, JSON.stringify(arr));
      else this.storage.removeItem(this.storageKey);
    } catch (err) {
      this.onStorageError(err);
    }
  }

  private persistAdd(item: PublishItem): void {
    if (!this.storage) return;
    const arr = this.read();
    if (arr.some((x) => x.key === item.key)) return;
    arr.push(item);
    this.write(arr);
  }

  private persistRemove(key: string): void {
    if (!this.storage) return;
    const arr = this.read();
    const next = arr.filter((x) => x.key !== key);
    if (next.length !== arr.length) this.write(next);
  }
}
