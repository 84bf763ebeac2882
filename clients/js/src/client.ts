/**
 * The public client. It keeps what belongs to this tab (listeners, per-channel
 * cursors, the publish outbox) and talks to a Link: its own hub, or the leader
 * tab's when connections are shared.
 */
import { AiClient } from './ai.js';
import { Backoff, type BackoffOptions } from './backoff.js';
import { CursorTracker } from './cursors.js';
import { Emitter } from './emitter.js';
import { Hub, type HubConfig, type TokenReason } from './hub.js';
import type { Link } from './link.js';
import { Presence, type PresenceOptions } from './presence.js';
import { OfflineQueue, type StorageLike } from './queue.js';
import type { StatusInfo } from './status.js';
import { TabLink, type BroadcastChannelCtor, type LockManagerLike } from './tabs.js';
import type { WebSocketCtor } from './transports/transport.js';
import type { Message, PresenceEvent, PublishItem, PublishResult, TransportName } from './types.js';
import { SwitchboardError } from './types.js';
import { deferred, randomId, type Deferred, type Timer } from './util.js';

const CHANNEL_RE = /^[A-Za-z0-9_\-.:@]{1,128}$/;

/** Options of `createClient`. Only `url` is required. */
export interface ClientOptions {
  /** The server's base URL, e.g. `https://rt.example.com` (or `''`/`'/'` for the page's origin). */
  url: string;
  /**
   * Force a transport or an order of transports. Default: WebSocket, then SSE
   * with HTTP publish, then long-poll, chosen automatically.
   */
  transports?: TransportName | TransportName[];
  /** A WebSocket implementation where there is no global one (Node 20: `import WebSocket from 'ws'`). */
  WebSocket?: WebSocketCtor;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
  /**
   * Returns the token (a JWT). Called before every connect and reconnect, and
   * before the current token expires, so an expired token never loops on 401.
   */
  getToken?: (reason: TokenReason) => string | null | undefined | Promise<string | null | undefined>;
  /** Refresh this long before the token's `exp`, ms (default 30000). */
  tokenRefreshMarginMs?: number;
  /** Reconnect schedule: 1 s base, 30 s cap, +/-25 % jitter, reset after 5 s up, no retry limit. */
  reconnect?: BackoffOptions;
  /** WebSocket ping interval; two silent intervals mean a dead connection, ms (default 5000). */
  heartbeatMs?: number;
  /** The server's SSE heartbeat (`--heartbeat`); two silent intervals mean a dead stream, ms (default 15000). */
  sseHeartbeatMs?: number;
  /** Seconds each long-poll waits on the server (default 25, max 60). */
  longPollWaitS?: number;
  /** Connect and request timeout, ms (default 10000). */
  requestTimeoutMs?: number;
  /** Deliver this client's own publishes back to it (default true; WebSocket only). */
  echo?: boolean;
  /** After a fallback, try better transports again on reconnects after this long, ms (default 60000). */
  upgradeAfterMs?: number;
  /** React to the browser's online/offline events (default true). */
  watchNetwork?: boolean;
  /** The publish outbox. */
  queue?: {
    /** Most queued publishes (default 1000). */
    maxSize?: number;
    /** Full queue: refuse new publishes (default) or drop the oldest. */
    overflow?: 'reject' | 'drop-oldest';
    /** Keep the queue across reloads: `true` for localStorage, or any Storage-like object. */
    persist?: boolean | StorageLike;
    /** Storage key (default `switchboard:outbox:<url>`). */
    storageKey?: string;
  };
  /**
   * Share one connection among the tabs of this origin (default true where Web
   * Locks and BroadcastChannel exist, i.e. in browsers). An object sets the
   * group name or supplies the APIs (tests).
   */
  share?:
    | boolean
    | {
        name?: string;
        locks?: LockManagerLike;
        BroadcastChannel?: BroadcastChannelCtor;
        /** The connection the leader tab runs (default: a Hub with these options); for tests and custom links. */
        createHub?: () => Link;
      };
  /** Connect at once (default true); otherwise call `connect()`. */
  autoConnect?: boolean;
  /** Minimum interval between presence state sends per channel, ms (default 60). */
  presenceThrottleMs?: number;
}

/** How a subscription starts: after what it already saw, from the start of kept history, or live. */
export interface SubscribeOptions {
  /** A message id to resume after, `'start'` (all kept history) or `'live'` (default). */
  since?: string;
  /** Also receive presence events of the channel. */
  presence?: boolean;
  /** The server could not resume: history between the cursor and now is gone; refetch. */
  onReset?: (reason: string) => void;
  /** The server refused the subscription (forbidden, invalid). */
  onError?: (err: SwitchboardError) => void;
}

export interface Subscription {
  readonly channel: string;
  unsubscribe(): void;
}

export interface PublishOptions {
  /** Event name (default `"message"`). */
  event?: string;
  /** Idempotency key; default a random one. Reuse it to retry a publish of your own. */
  key?: string;
}

/** Client-level events. */
export interface ClientEvents {
  message: Message;
  reset: { channel: string; reason: string };
  status: StatusInfo;
  /** A queued publish was acknowledged (also publishes adopted from storage, which have no promise). */
  published: { item: PublishItem; result: PublishResult };
  /** A publish the server refused for good, or a subscription error. */
  error: { error: SwitchboardError; channel?: string; item?: PublishItem };
}

interface ChannelEntry {
  listeners: Set<(m: Message) => void>;
  resets: Set<(reason: string) => void>;
  errors: Set<(e: SwitchboardError) => void>;
  presence: Set<(e: PresenceEvent) => void>;
  selves: Set<(clientId: string) => void>;
  presenceCount: number;
}

/** Whether Web Locks and BroadcastChannel are there (a browser window or worker). */
function tabApis(): { locks: LockManagerLike; BroadcastChannel: BroadcastChannelCtor } | null {
  const g = globalThis as unknown as {
    navigator?: { locks?: LockManagerLike };
    BroadcastChannel?: BroadcastChannelCtor;
  };
  if (g.navigator?.locks && typeof g.BroadcastChannel === 'function')
    return { locks: g.navigator.locks, BroadcastChannel: g.BroadcastChannel };
  return null;
}

function resolveUrl(url: string): string {
  const loc = (globalThis as { location?: { origin?: string } }).location;
  if ((url === '' || url.startsWith('/')) && loc?.origin) return loc.origin + url.replace(/\/+$/, '');
  return url.replace(/\/+$/, '');
}

export class SwitchboardClient {
  readonly url: string;
  readonly ai: AiClient;
  /** The outbox (read-only use: `size`, `items()`). */
  readonly queue: OfflineQueue;
  private readonly opts: ClientOptions;
  private readonly link: Link;
  private readonly cursors = new CursorTracker();
  private readonly channels = new Map<string, ChannelEntry>();
  private readonly emitter = new Emitter<ClientEvents>();
  private readonly waiting = new Map<string, Deferred<PublishResult>[]>();
  private readonly outboxBackoff = new Backoff({ baseMs: 500, capMs: 10000 });
  private pumping = false;
  private pumpTimer: Timer | null = null;
  private closed = false;
  private readonly offs: (() => void)[] = [];

  constructor(options: ClientOptions) {
    if (!options || typeof options.url !== 'string') throw new TypeError('createClient: url is required');
    this.opts = options;
    this.url = resolveUrl(options.url);
    const q = options.queue ?? {};
    const storage =
      q.persist === true
        ? ((globalThis as { localStorage?: StorageLike }).localStorage ?? null)
        : q.persist && typeof q.persist === 'object'
          ? q.persist
          : null;
    this.queue = new OfflineQueue({
      maxSize: q.maxSize,
      overflow: q.overflow,
      storage,
      storageKey: q.storageKey ?? `switchboard:outbox:${this.url}`,
    });
    this.link = this.makeLink();
    this.ai = new AiClient({
      url: this.url,
      fetch: () => this.fetchImpl(),
      token: async () => (options.getToken ? ((await options.getToken('connect')) ?? null) : null),
      requestTimeoutMs: options.requestTimeoutMs ?? 10000,
    });
    const ev = this.link.events;
    this.offs.push(
      ev.on('message', (m) => this.onMessage(m)),
      ev.on('cursor', ({ channel, id }) => {
        if (this.channels.has(channel)) this.cursors.advance(channel, id);
      }),
      ev.on('reset', (r) => this.onReset(r.channel, r.reason)),
      ev.on('presence', (p) => {
        const e = this.channels.get(p.channel);
        if (e) for (const fn of [...e.presence]) fn(p);
      }),
      ev.on('subscribeError', ({ channel, error }) => {
        const e = this.channels.get(channel);
        if (e) for (const fn of [...e.errors]) fn(error);
        this.emitter.emit('error', { error, channel });
      }),
      ev.on('entered', ({ channel, clientId }) => {
        const e = this.channels.get(channel);
        if (e) for (const fn of [...e.selves]) fn(clientId);
      }),
      ev.on('open', () => this.pump()),
      this.link.status.subscribe((s) => {
        this.emitter.emit('status', s);
        if (s.status === 'open') this.pump();
      }),
    );
    if (options.autoConnect !== false) this.connect();
  }

  private fetchImpl(): typeof fetch {
    const f = this.opts.fetch ?? (globalThis as { fetch?: typeof fetch }).fetch;
    if (!f) throw new Error('switchboard: no fetch implementation');
    return f.bind(globalThis);
  }

  private hubConfig(): HubConfig {
    const o = this.opts;
    const forced = o.transports !== undefined;
    const transports: TransportName[] = forced
      ? Array.isArray(o.transports)
        ? o.transports
        : [o.transports as TransportName]
      : ['ws', 'sse', 'longpoll'];
    const WS =
      o.WebSocket ?? ((globalThis as { WebSocket?: WebSocketCtor }).WebSocket as WebSocketCtor | undefined) ?? null;
    return {
      url: this.url,
      transports,
      forced,
      WebSocket: WS,
      fetch: this.fetchImpl(),
      getToken: o.getToken ?? null,
      tokenRefreshMarginMs: o.tokenRefreshMarginMs ?? 30000,
      backoff: o.reconnect ?? {},
      heartbeatMs: o.heartbeatMs ?? 5000,
      sseHeartbeatMs: o.sseHeartbeatMs ?? 15000,
      longPollWaitS: Math.min(60, o.longPollWaitS ?? 25),
      requestTimeoutMs: o.requestTimeoutMs ?? 10000,
      echo: o.echo ?? true,
      upgradeAfterMs: o.upgradeAfterMs ?? 60000,
      watchNetwork: o.watchNetwork ?? true,
    };
  }

  private makeLink(): Link {
    const share = this.opts.share;
    const apis =
      share === false
        ? null
        : typeof share === 'object' && share.locks && share.BroadcastChannel
          ? { locks: share.locks, BroadcastChannel: share.BroadcastChannel }
          : share === undefined || share === true || typeof share === 'object'
            ? tabApis()
            : null;
    if (!apis) return new Hub(this.hubConfig());
    const name = (typeof share === 'object' && share.name) || this.url;
    return new TabLink({
      name,
      locks: apis.locks,
      BroadcastChannel: apis.BroadcastChannel,
      createHub: (typeof share === 'object' && share.createHub) || (() => new Hub(this.hubConfig())),
      cursorOf: (ch) => this.cursors.get(ch),
    });
  }

  // ---- lifecycle and status ----

  /** Starts connecting (done by the constructor unless `autoConnect: false`); after the retry limit, starts over. */
  connect(): void {
    if (this.closed) throw new Error('switchboard: the client is closed');
    this.link.start();
  }

  /** Closes the connection for good. Queued publishes stay queued (and persisted, if enabled). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.pumpTimer) clearTimeout(this.pumpTimer);
    this.link.stop();
    for (const off of this.offs.splice(0)) off();
    const err = new SwitchboardError('closed', 'The client was closed.', false);
    for (const [, ds] of this.waiting) for (const d of ds) d.reject(err);
    this.waiting.clear();
  }

  /** The current status snapshot. */
  get status(): StatusInfo {
    return this.link.status.get();
  }

  /** Listens to status changes; returns the function that stops listening. */
  onStatus(fn: (s: StatusInfo) => void): () => void {
    return this.link.status.subscribe(fn);
  }

  /** Listens to client events; returns the function that stops listening. */
  on<K extends keyof ClientEvents>(name: K, fn: (v: ClientEvents[K]) => void): () => void {
    return this.emitter.on(name, fn);
  }

  /** Whether this tab holds the shared connection (always true when not sharing). */
  get isLeader(): boolean {
    return this.link instanceof TabLink ? this.link.isLeader : true;
  }

  /** The last message id seen on a channel. */
  cursor(channel: string): string | undefined {
    return this.cursors.get(channel);
  }

  /** Drops the connection and reconnects at once (e.g. after the app changed the token). */
  reconnect(): void {
    this.link.reconnectNow('reconnect_requested');
  }

  // ---- channels ----

  private entry(channel: string): ChannelEntry {
    let e = this.channels.get(channel);
    if (!e)
      this.channels.set(
        channel,
        (e = {
          listeners: new Set(),
          resets: new Set(),
          errors: new Set(),
          presence: new Set(),
          selves: new Set(),
          presenceCount: 0,
        }),
      );
    return e;
  }

  /**
   * Receives a channel's messages, each once and in order, across reconnects,
   * transport changes and leader hand-overs.
   */
  subscribe(channel: string, onMessage: (m: Message) => void, opts: SubscribeOptions = {}): Subscription {
    if (!CHANNEL_RE.test(channel)) throw new SwitchboardError('invalid_channel', `Invalid channel name: ${channel}`, false);
    const fresh = !this.channels.has(channel);
    const e = this.entry(channel);
    e.listeners.add(onMessage);
    if (opts.onReset) e.resets.add(opts.onReset);
    if (opts.onError) e.errors.add(opts.onError);
    if (opts.presence) e.presenceCount++;
    const since = opts.since === 'start' ? '0' : opts.since === 'live' ? undefined : opts.since;
    if (fresh) {
      if (since !== undefined) this.cursors.advance(channel, since);
      this.link.want(channel, { since, presence: !!opts.presence });
    } else if (opts.presence && e.presenceCount === 1) {
      this.link.want(channel, { since: this.cursors.get(channel), presence: true });
    }
    let done = false;
    return {
      channel,
      unsubscribe: () => {
        if (done) return;
        done = true;
        e.listeners.delete(onMessage);
        if (opts.onReset) e.resets.delete(opts.onReset);
        if (opts.onError) e.errors.delete(opts.onError);
        if (opts.presence) e.presenceCount--;
        this.release(channel);
      },
    };
  }

  /** Used by Presence: presence events of a channel (the channel must be subscribed). */
  onPresence(channel: string, fn: (e: PresenceEvent) => void, onSelf?: (clientId: string) => void): () => void {
    const e = this.entry(channel);
    e.presence.add(fn);
    if (onSelf) e.selves.add(onSelf);
    return () => {
      e.presence.delete(fn);
      if (onSelf) e.selves.delete(onSelf);
      this.release(channel);
    };
  }

  private release(channel: string): void {
    const e = this.channels.get(channel);
    if (!e || e.listeners.size || e.presence.size) return;
    this.channels.delete(channel);
    this.cursors.delete(channel);
    this.link.unwant(channel);
  }

  private onMessage(m: Message): void {
    const e = this.channels.get(m.channel);
    if (!e || !this.cursors.accept(m.channel, m.id)) return;
    for (const fn of [...e.listeners]) {
      try {
        fn(m);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
    this.emitter.emit('message', m);
  }

  private onReset(channel: string, reason: string): void {
    const e = this.channels.get(channel);
    if (!e) return;
    for (const fn of [...e.resets]) fn(reason);
    this.emitter.emit('reset', { channel, reason });
  }

  // ---- publishing ----

  /**
   * Publishes through the outbox: sent at once when connected, else queued and
   * flushed in order on reconnect. Resolves with the message id once the server
   * acknowledged it; a retry after an ambiguous failure reuses the key and lands once.
   */
  publish(channel: string, data: unknown, opts: PublishOptions = {}): Promise<PublishResult> {
    if (this.closed) return Promise.reject(new SwitchboardError('closed', 'The client was closed.', false));
    if (!CHANNEL_RE.test(channel))
      return Promise.reject(new SwitchboardError('invalid_channel', `Invalid channel name: ${channel}`, false));
    const item: PublishItem = { key: opts.key ?? randomId(), channel, data, createdAt: Date.now() };
    if (opts.event !== undefined) item.event = opts.event;
    const d = deferred<PublishResult>();
    try {
      this.queue.add(item, (old) => this.settle(old.key, new SwitchboardError('queue_overflow', 'Dropped from a full queue.', false)));
    } catch (err) {
      return Promise.reject(err);
    }
    const list = this.waiting.get(item.key);
    if (list) list.push(d);
    else this.waiting.set(item.key, [d]);
    this.pump();
    return d.promise;
  }

  private settle(key: string, err: SwitchboardError | null, result?: PublishResult): void {
    const ds = this.waiting.get(key);
    this.waiting.delete(key);
    if (!ds) return;
    for (const d of ds) err ? d.reject(err) : d.resolve(result!);
  }

  /** Sends queued publishes one at a time, oldest first, while the connection is open. */
  private pump(): void {
    if (this.pumping || this.closed || this.pumpTimer) return;
    if (this.link.status.get().status !== 'open' || this.queue.size === 0) return;
    this.pumping = true;
    void this.drain().finally(() => {
      this.pumping = false;
      // A publish made while the last item was being acknowledged found the pump busy.
      if (this.queue.size && !this.pumpTimer) this.pump();
    });
  }

  private async drain(): Promise<void> {
    for (;;) {
      if (this.closed || this.link.status.get().status !== 'open') return;
      const item = this.queue.peek();
      if (!item) return;
      try {
        const result = await this.link.publish(item);
        this.outboxBackoff.reset();
        this.queue.remove(item.key);
        this.settle(item.key, null, result);
        this.emitter.emit('published', { item, result });
      } catch (e) {
        const err =
          e instanceof SwitchboardError ? e : new SwitchboardError('error', String((e as Error)?.message ?? e), true);
        if (!err.retryable) {
          this.queue.remove(item.key);
          this.settle(item.key, err);
          this.emitter.emit('error', { error: err, item, channel: item.channel });
          continue;
        }
        if (['not_connected', 'connection_lost', 'leader_changed'].includes(err.code)) {
          // The next open (or the new leader) flushes again; give the status a moment to follow.
          this.retryLater(50);
          return;
        }
        this.retryLater(this.outboxBackoff.next() ?? 10000);
        return;
      }
    }
  }

  private retryLater(ms: number): void {
    if (this.pumpTimer || this.closed) return;
    this.pumpTimer = setTimeout(() => {
      this.pumpTimer = null;
      this.pump();
    }, ms);
  }

  // ---- presence ----

  /** Presence on a channel: enter/update/leave and the member list (WebSocket transport). */
  presence<I extends Record<string, unknown>, S extends Record<string, unknown>>(
    channel: string,
    opts: PresenceOptions<I> = {},
  ): Presence<I, S> {
    return new Presence<I, S>(
      {
        subscribe: (ch, o) => this.subscribe(ch, () => undefined, o),
        onPresence: (ch, fn, onSelf) => this.onPresence(ch, fn, onSelf),
        send: (ch, action, info, state, userId) => this.link.presence(ch, action, info, state, userId),
        status: () => this.link.status.get(),
        onStatus: (fn) => this.link.status.subscribe(fn),
      },
      channel,
      { throttleMs: this.opts.presenceThrottleMs, ...opts },
    );
  }
}

/** Creates a client. */
export function createClient(options: ClientOptions): SwitchboardClient {
  return new SwitchboardClient(options);
}
