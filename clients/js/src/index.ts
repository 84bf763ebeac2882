/**
 * @switchboard/client: the Switchboard SDK for browsers and Node 20+.
 *
 *   import { createClient } from '@switchboard/client';
 *   const client = createClient({ url: 'https://rt.example.com' });
 *   client.subscribe('news', (m) => console.log(m.data));
 *   await client.publish('news', { title: 'hello' });
 */
export { createClient, SwitchboardClient } from './client.js';
export type { ClientOptions, ClientEvents, PublishOptions, SubscribeOptions, Subscription } from './client.js';
export { Presence } from './presence.js';
export type { PresenceOptions, PresenceEvents } from './presence.js';
export { AiClient, deltaText } from './ai.js';
export type { ChatMessage, ChatOptions, ChatStream } from './ai.js';
export { Backoff, backoffDelay, nominalDelay, resolveBackoff } from './backoff.js';
export type { BackoffOptions, ResolvedBackoff } from './backoff.js';
export { OfflineQueue, QueueFullError } from './queue.js';
export type { QueueOptions, StorageLike } from './queue.js';
export { StatusStore, reduceStatus, INITIAL_STATUS } from './status.js';
export type { StatusInfo, StatusEvent } from './status.js';
export { CursorTracker } from './cursors.js';
export { Emitter } from './emitter.js';
export type { Link } from './link.js';
export { SseParser } from './sse-parser.js';
export type { SseEvent } from './sse-parser.js';
export { Hub } from './hub.js';
export type { HubConfig, HubEvents, TokenReason } from './hub.js';
export { TabLink } from './tabs.js';
export type { TabLinkConfig, LockManagerLike, BroadcastChannelLike, BroadcastChannelCtor } from './tabs.js';
export type { WebSocketCtor, WebSocketLike, Transport, TransportContext } from './transports/transport.js';
export { SwitchboardError, isRetryableCode } from './types.js';
export type { Message, Member, PresenceEvent, PresenceAction, PublishItem, PublishResult, Status, TransportName } from './types.js';
export { compareIds, tokenExpiry } from './util.js';
