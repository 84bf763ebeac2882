/** The contract between the connection manager (hub) and the three transports. */
import type { Message, PresenceAction, PresenceEvent, PublishItem, PublishResult, TransportName } from '../types.js';
import type { SwitchboardError } from '../types.js';

/** The WebSocket surface the client uses: the browser's, Node 22's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  /** The `ws` package's immediate close (no closing handshake), used for dead connections. */
  terminate?(): void;
}

/** A WebSocket constructor (`globalThis.WebSocket`, or `WebSocket` from the `ws` package). */
export type WebSocketCtor = new (url: string) => WebSocketLike;

/** What a transport reads from the hub. */
export interface TransportContext {
  /** The server's http(s) base URL, without a trailing slash. */
  baseUrl: string;
  /** The token for this connection (null in development mode). */
  token: string | null;
  fetch: typeof fetch;
  WebSocket: WebSocketCtor | null;
  /** WebSocket: a `ping` op this often; silence for twice this long is a dead connection. */
  heartbeatMs: number;
  /** SSE: the server's `: hb` interval; silence for twice this long is a dead connection. */
  sseHeartbeatMs: number;
  /** Long-poll: seconds each poll waits on the server. */
  longPollWaitS: number;
  /** Connect and request timeout, ms. */
  requestTimeoutMs: number;
  /** Whether the client's own publishes come back to it (WebSocket `echo=0` when false). */
  echo: boolean;
  /** Where to resume a channel: its cursor, the `since` the app asked for, or undefined (live). */
  since(channel: string): string | undefined;
  /** The newest id the hub has seen on any channel. */
  latest(): string | undefined;
  /** Whether the app wants presence events of this channel. */
  presenceWanted(channel: string): boolean;
}

/** What a transport reports to the hub. */
export interface TransportHandlers {
  message(m: Message): void;
  reset(channel: string, reason: string): void;
  presence(e: PresenceEvent): void;
  /** A position without a message: "this channel is live from here". */
  cursor(channel: string, id: string): void;
  subscribeError(channel: string, err: SwitchboardError): void;
  /**
   * The open connection ended. `retryAfterMs` is the server's hint when it ended
   * the stream on purpose (shutdown, stream lifetime).
   */
  close(reason: string, retryAfterMs?: number): void;
}

export interface Transport {
  readonly name: TransportName;
  /** Whether presence ops can be sent (only the WebSocket protocol has them). */
  readonly canPresence: boolean;
  /** Connects and subscribes; resolves once open, rejects with a SwitchboardError. */
  open(channels: string[]): Promise<void>;
  /** Closes without reporting `close` to the handlers. Idempotent. */
  close(): void;
  subscribe(channel: string): void;
  unsubscribe(channel: string): void;
  /** Publishes one item; rejects with a SwitchboardError whose `retryable` says what to do. */
  publish(item: PublishItem): Promise<PublishResult>;
  /** A presence op; `userId` names the user in development mode (with auth the token's `sub` does). */
  presence(channel: string, action: PresenceAction, info: unknown, state: unknown, userId?: string): Promise<unknown>;
}

/** Builds a transport for a hub. */
export type TransportFactory = (ctx: TransportContext, h: TransportHandlers) => Transport;
