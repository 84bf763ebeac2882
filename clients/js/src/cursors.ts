/**
 * Where each channel stopped. A message is accepted once: an id at or below the
 * channel's cursor is a duplicate (a replay after resume, or the same message
 * through a new leader tab) and is dropped.
 */
import { compareIds } from './util.js';

export class CursorTracker {
  private readonly map = new Map<string, string>();
  private top: string | undefined;

  /** The last accepted id of a channel. */
  get(channel: string): string | undefined {
    return this.map.get(channel);
  }

  /** The newest id seen on any channel (ids are one process-wide sequence). */
  latest(): string | undefined {
    return this.top;
  }

  /**
   * Moves a channel's cursor forward to `id` (never back); returns whether it moved.
   * Used for subscribe replies and SSE id-only blocks, which say "you are here".
   */
  advance(channel: string, id: string): boolean {
    const cur = this.map.get(channel);
    if (cur !== undefined && compareIds(id, cur) <= 0) return false;
    this.map.set(channel, id);
    if (this.top === undefined || compareIds(id, this.top) > 0) this.top = id;
    return true;
  }

  /** Accepts a message id for a channel: true if new (and records it), false if a duplicate. */
  accept(channel: string, id: string): boolean {
    return this.advance(channel, id);
  }

  /** Forgets a channel (unsubscribed, or the app asked to start over). */
  delete(channel: string): void {
    this.map.delete(channel);
  }

  /** The oldest cursor among these channels (undefined if none has one). */
  min(channels: Iterable<string>): string | undefined {
    let m: string | undefined;
    for (const ch of channels) {
      const c = this.map.get(ch);
      if (c !== undefined && (m === undefined || compareIds(c, m) < 0)) m = c;
    }
    return m;
  }

  /** All cursors, for hand-over to another tab. */
  entries(): [string, string][] {
    return [...this.map.entries()];
  }
}
