/** What the client talks to: a hub in this tab, or the leader tab's hub through a TabLink. */
import type { Emitter } from './emitter.js';
import type { HubEvents } from './hub.js';
import type { StatusStore } from './status.js';
import type { PresenceAction, PublishItem, PublishResult } from './types.js';

export interface Link {
  readonly status: StatusStore;
  readonly events: Emitter<HubEvents>;
  start(): void;
  stop(): void;
  want(channel: string, opts: { since?: string; presence?: boolean }): void;
  unwant(channel: string): void;
  publish(item: PublishItem): Promise<PublishResult>;
  presence(channel: string, action: PresenceAction, info: unknown, state: unknown, userId?: string): Promise<unknown>;
  reconnectNow(reason: string): void;
}
