/**
 * The connection manager: owns one transport at a time, picks it (WebSocket,
 * then SSE, then long-poll, or as forced), reconnects with backoff, watches the
 * network and the token's expiry, and resubscribes every channel from its
 * cursor. It is what a single tab (or a Node process) runs, and what the leader
 * tab runs on behalf of all tabs.
 */
import { Backoff, type BackoffOptions } from './backoff.js';
import { CursorTracker } from './cursors.js';
import { Emitter } from './emitter.js';
import { StatusStore, type StatusInfo } from './status.js';
import { LongPollTransport } from './transports/longpoll.js';
import { SseTransport } from './transports/sse.js';
import type { Transport, TransportContext, TransportHandlers, WebSocketCtor } from './transports/transport.js';
import { WsTransport } from './transports/ws.js';
import type {
  Message,
  PresenceAction,
  PresenceEvent,
  PublishItem,
  PublishResult,
  TransportName,
} from './types.js';
import { SwitchboardError } from './types.js';
import { tokenExpiry, type Timer } from './util.js';

/** Everything the hub needs; the client fills in the defaults. */
export interface HubConfig {
  url: string;
  /** The transports to try, in order. */
  transports: TransportName[];
  /** Whether `transports` was forced by the app (no stickiness then). */
  forced: boolean;
  WebSocket: WebSocketCtor | null;
  fetch: typeof fetch;
  getToken: ((reason: TokenReason) => string | null | undefined | Promise<string | null | undefined>) | null;
  tokenRefreshMarginMs: number;
  backoff: BackoffOptions;
  heartbeatMs: number;
  sseHeartbeatMs: number;
  longPollWaitS: number;
  requestTimeoutMs: number;
  echo: boolean;
  /** After falling back, try the preferred transport again on reconnects this much later. */
  upgradeAfterMs: number;
  /** React to the browser's online/offline events. */
  watchNetwork: boolean;
  /** Transport factories, replaceable in tests. */
  factories?: Partial<Record<TransportName, (ctx: TransportContext, h: TransportHandlers) => Transport>>;
}

/** Why `getToken` is being called. */
export type TokenReason = 'connect' | 'reconnect' | 'expiring' | 'rejected';

/** What a hub reports. */
export interface HubEvents {
  message: Message;
  reset: { channel: string; reason: string };
  presence: PresenceEvent;
  cursor: { channel: string; id: string };
  subscribeError: { channel: string; error: SwitchboardError };
  /** A connection opened (the outbox flushes on this). */
  open: TransportName;
  /** This connection entered a channel's presence as member `clientId` (again after each reconnect). */
  entered: { channel: string; clientId: string };
}

/** What a hub keeps per wanted channel. */
interface Want {
  since?: string;
  presence: boolean;
}

const defaultFactories: Record<TransportName, (ctx: TransportContext, h: TransportHandlers) => Transport> = {
  ws: (c, h) => new WsTransport(c, h),
  sse: (c, h) => new SseTransport(c, h),
  longpoll: (c, h) => new LongPollTransport(c, h),
};

/** Whether fetch can stream a response body here (SSE over fetch needs it). */
function canStream(): boolean {
  return typeof ReadableStream !== 'undefined' && typeof TextDecoder !== 'undefined';
}

export class Hub {
  readonly status = new StatusStore();
  readonly events = new Emitter<HubEvents>();
  private readonly wants = new Map<string, Want>();
  private readonly cursors = new CursorTracker();
  /** Channels this hub entered presence on, with what to re-send after a reconnect. */
  private readonly entered = new Map<string, { info: unknown; state: unknown; userId?: string }>();
  private readonly backoff: Backoff;
  private transport: Transport | null = null;
  /** The transport being opened: its backlog counts before open() resolves. */
  private opening: Transport | null = null;
  private openingClosed: string | null = null;
  private token: string | null = null;
  private gen = 0;
  private running = false;
  private retryTimer: Timer | null = null;
  private stableTimer: Timer | null = null;
  private tokenTimer: Timer | null = null;
  private lastGood: TransportName | null = null;
  private lastGoodAt = 0;
  private openedAt = 0;
  private connects = 0;
  /** Why the next getToken call happens, when it is not a plain (re)connect. */
  private tokenReason: TokenReason | null = null;
  private readonly offNetwork: (() => void)[] = [];

  constructor(private readonly cfg: HubConfig) {
    this.backoff = new Backoff(cfg.backoff);
  }

  /** The current status snapshot. */
  get info(): StatusInfo {
    return this.status.get();
  }

  /** Starts connecting; after the client gave up (retry limit), starts over. Otherwise idempotent. */
  start(): void {
    if (this.running) {
      const s = this.status.get();
      if (s.status === 'closed' && s.reason !== 'offline' && !this.transport) {
        this.status.dispatch({ type: 'start' });
        this.backoff.reset();
        void this.attempt();
      }
      return;
    }
    this.running = true;
    this.watchNetwork();
    this.status.dispatch({ type: 'start' });
    if (this.isOffline()) {
      this.status.dispatch({ type: 'offline' });
      return;
    }
    this.backoff.reset();
    void this.attempt();
  }

  /** Closes the connection and stops reconnecting. */
  stop(): void {
    this.running = false;
    this.gen++;
    this.clearTimers();
    for (const off of this.offNetwork.splice(0)) off();
    this.dropTransport();
    this.status.dispatch({ type: 'stop' });
  }

  /** Asks for a channel; `since` is used when the hub has no cursor of its own yet. */
  want(channel: string, opts: { since?: string; presence?: boolean } = {}): void {
    const w = this.wants.get(channel);
    if (w) {
      const presence = w.presence || !!opts.presence;
      if (presence !== w.presence) {
        w.presence = presence;
        if (this.transport) {
          this.transport.unsubscribe(channel);
          this.transport.subscribe(channel);
        }
      }
      return;
    }
    this.wants.set(channel, { since: opts.since, presence: !!opts.presence });
    if (opts.since !== undefined && this.cursors.get(channel) === undefined) this.cursors.advance(channel, opts.since);
    this.transport?.subscribe(channel);
  }

  /** Drops a channel. */
  unwant(channel: string): void {
    if (!this.wants.delete(channel)) return;
    this.cursors.delete(channel);
    this.entered.delete(channel);
    this.transport?.unsubscribe(channel);
  }

  /** Channels wanted now. */
  channels(): string[] {
    return [...this.wants.keys()];
  }

  /** The hub's cursor of a channel. */
  cursor(channel: string): string | undefined {
    return this.cursors.get(channel);
  }

  /** Publishes over the current transport; rejects (retryable) when there is none. */
  publish(item: PublishItem): Promise<PublishResult> {
    const t = this.transport;
    if (!t) return Promise.reject(new SwitchboardError('not_connected', 'Not connected.', true));
    return t.publish(item).catch((err: SwitchboardError) => {
      if (err.status === 401 && t === this.transport) this.reconnectNow('token_rejected');
      throw err;
    });
  }

  /** Presence op; remembered so a reconnect enters again with the latest state. */
  presence(channel: string, action: PresenceAction, info: unknown, state: unknown, userId?: string): Promise<unknown> {
    if (action === 'leave') this.entered.delete(channel);
    else {
      const prev = this.entered.get(channel);
      this.entered.set(channel, {
        info: info !== undefined ? info : prev?.info,
        state: state !== undefined ? state : prev?.state,
        userId: userId ?? prev?.userId,
      });
    }
    const t = this.transport;
    // Not connected: the op is remembered above and applied when the connection opens.
    if (!t) return Promise.resolve({ queued: true });
    if (!t.canPresence)
      return Promise.reject(new SwitchboardError('presence_unsupported', 'Presence needs the WebSocket transport.', false));
    return t.presence(channel, action, info, state, userId).then((r) => {
      this.noteEntered(channel, r);
      return r;
    });
  }

  private noteEntered(channel: string, r: unknown): void {
    const id = (r as { clientId?: unknown } | undefined)?.clientId;
    if (typeof id === 'string' && this.entered.has(channel)) this.events.emit('entered', { channel, clientId: id });
  }

  /** Closes the current connection and connects again at once (token refresh, forced switch). */
  reconnectNow(reason: string): void {
    if (!this.running) return;
    if (reason === 'token_expiring') this.tokenReason = 'expiring';
    else if (reason === 'token_rejected') this.tokenReason = 'rejected';
    this.gen++;
    this.clearTimers();
    this.dropTransport();
    this.status.dispatch({ type: 'drop', reason });
    void this.attempt();
  }

  // ---- connecting ----

  private ctx(token: string | null): TransportContext {
    return {
      baseUrl: this.cfg.url.replace(/\/+$/, ''),
      token,
      fetch: this.cfg.fetch,
      WebSocket: this.cfg.WebSocket,
      heartbeatMs: this.cfg.heartbeatMs,
      sseHeartbeatMs: this.cfg.sseHeartbeatMs,
      longPollWaitS: this.cfg.longPollWaitS,
      requestTimeoutMs: this.cfg.requestTimeoutMs,
      echo: this.cfg.echo,
      since: (ch) => this.cursors.get(ch) ?? this.wants.get(ch)?.since,
      latest: () => this.cursors.latest(),
      presenceWanted: (ch) => this.wants.get(ch)?.presence ?? false,
    };
  }

  private order(): TransportName[] {
    const list = this.cfg.transports.filter((n) => {
      if (n === 'ws') return !!this.cfg.WebSocket;
      if (n === 'sse') return canStream();
      return true;
    });
    if (this.cfg.forced || !this.lastGood) return list;
    const i = list.indexOf(this.lastGood);
    // Stay on the transport that worked for a while instead of failing through the better ones each time.
    if (i > 0 && Date.now() - this.lastGoodAt < this.cfg.upgradeAfterMs) return list.slice(i);
    return list;
  }

  private async getToken(): Promise<string | null> {
    if (!this.cfg.getToken) return null;
    const reason: TokenReason = this.tokenReason ?? (this.connects === 0 ? 'connect' : 'reconnect');
    this.tokenReason = null;
    const t = await this.cfg.getToken(reason);
    return t ?? null;
  }

  private async attempt(): Promise<void> {
    if (!this.running) return;
    const gen = ++this.gen;
    const attemptNo = this.backoff.attempt;
    this.status.dispatch({ type: 'attempt', attempt: attemptNo, transport: null });
    try {
      this.token = await this.getToken();
    } catch (err) {
      if (gen !== this.gen) return;
      this.scheduleRetry('token_error');
      return;
    }
    if (gen !== this.gen) return;
    const order = this.order();
    if (order.length === 0) {
      this.status.dispatch({ type: 'give-up', reason: 'no_transport' });
      return;
    }
    let reason = 'connect_failed';
    for (const name of order) {
      this.status.dispatch({ type: 'attempt', attempt: attemptNo, transport: name });
      const handlers = this.handlers(() => t);
      const factory = this.cfg.factories?.[name] ?? defaultFactories[name];
      const t: Transport = factory(this.ctx(this.token), handlers);
      const opened = [...this.wants.keys()];
      this.opening = t;
      this.openingClosed = null;
      try {
        await t.open(opened);
        if (this.openingClosed) throw new SwitchboardError(this.openingClosed, 'Closed while opening.', true);
      } catch (err) {
        if (this.opening === t) this.opening = null;
        t.close();
        if (gen !== this.gen) return;
        const e = err as SwitchboardError;
        reason = e.code ?? 'connect_failed';
        // Auth failures are the same on every transport: get a fresh token and back off.
        if (e.status === 401 || e.status === 403 || e.code === 'unauthorized') {
          this.tokenReason = 'rejected';
          break;
        }
        continue;
      }
      if (this.opening === t) this.opening = null;
      if (gen !== this.gen) {
        t.close();
        return;
      }
      this.onOpen(t, opened);
      return;
    }
    this.scheduleRetry(reason);
  }

  private onOpen(t: Transport, opened: string[]): void {
    this.transport = t;
    this.connects++;
    this.openedAt = Date.now();
    if (this.lastGood !== t.name || this.cfg.transports[0] === t.name) this.lastGoodAt = Date.now();
    this.lastGood = t.name;
    // Subscriptions that changed while the connection was opening.
    for (const ch of this.wants.keys()) if (!opened.includes(ch)) t.subscribe(ch);
    for (const ch of opened) if (!this.wants.has(ch)) t.unsubscribe(ch);
    if (t.canPresence)
      for (const [ch, p] of this.entered)
        t.presence(ch, 'enter', p.info, p.state, p.userId).then((r) => this.noteEntered(ch, r), () => undefined);
    this.status.dispatch({ type: 'open', transport: t.name });
    const stable = this.backoff.options.stableMs;
    this.stableTimer = setTimeout(() => this.backoff.reset(), stable);
    this.scheduleTokenRefresh();
    this.events.emit('open', t.name);
  }

  private handlers(self: () => Transport): TransportHandlers {
    const live = () => this.transport === self() || this.opening === self();
    return {
      message: (m) => {
        if (!live() || !this.wants.has(m.channel)) return;
        if (!this.cursors.accept(m.channel, m.id)) return;
        this.events.emit('message', m);
      },
      reset: (channel, reason) => {
        if (live() && this.wants.has(channel)) this.events.emit('reset', { channel, reason });
      },
      presence: (e) => {
        if (live() && this.wants.has(e.channel)) this.events.emit('presence', e);
      },
      cursor: (channel, id) => {
        if (!live() || !this.wants.has(channel)) return;
        if (this.cursors.advance(channel, id)) this.events.emit('cursor', { channel, id });
      },
      subscribeError: (channel, error) => {
        if (live()) this.events.emit('subscribeError', { channel, error });
      },
      close: (reason, retryAfterMs) => {
        if (this.opening === self()) {
          this.openingClosed = reason;
          return;
        }
        if (!live()) return;
        this.transport = null;
        this.clearTimers();
        this.status.dispatch({ type: 'drop', reason });
        const upFor = Date.now() - this.openedAt;
        if (retryAfterMs !== undefined && upFor >= 1000) {
          // The server ended a healthy stream on purpose and said when to come back.
          this.backoff.reset();
          this.wait(reason, retryAfterMs);
        } else {
          this.scheduleRetry(reason);
        }
      },
    };
  }

  private scheduleRetry(reason: string): void {
    if (!this.running) return;
    const delay = this.backoff.next();
    if (delay === null) {
      this.status.dispatch({ type: 'give-up', reason: 'retries_exhausted' });
      return;
    }
    this.wait(reason, delay);
  }

  private wait(reason: string, delay: number): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.status.dispatch({ type: 'retry', reason, at: Date.now() + delay, attempt: this.backoff.attempt });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.attempt();
    }, delay);
  }

  private scheduleTokenRefresh(): void {
    if (!this.cfg.getToken) return;
    const exp = tokenExpiry(this.token);
    if (exp === null) return;
    const lifetime = exp - Date.now();
    const margin = Math.min(this.cfg.tokenRefreshMarginMs, Math.max(0, lifetime / 2));
    const delay = Math.max(1000, lifetime - margin);
    this.tokenTimer = setTimeout(() => {
      this.tokenTimer = null;
      this.reconnectNow('token_expiring');
    }, delay);
  }

  private clearTimers(): void {
    for (const t of [this.retryTimer, this.stableTimer, this.tokenTimer]) if (t) clearTimeout(t);
    this.retryTimer = this.stableTimer = this.tokenTimer = null;
  }

  private dropTransport(): void {
    const t = this.transport;
    const o = this.opening;
    this.transport = this.opening = null;
    t?.close();
    o?.close();
  }

  // ---- network ----

  private isOffline(): boolean {
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    return this.cfg.watchNetwork && !!nav && nav.onLine === false;
  }

  private watchNetwork(): void {
    const g = globalThis as unknown as {
      addEventListener?: (n: string, f: () => void) => void;
      removeEventListener?: (n: string, f: () => void) => void;
    };
    if (!this.cfg.watchNetwork || typeof g.addEventListener !== 'function') return;
    const offline = () => {
      if (!this.running) return;
      this.gen++;
      this.clearTimers();
      this.dropTransport();
      this.status.dispatch({ type: 'offline' });
    };
    const online = () => {
      if (!this.running) return;
      this.backoff.reset();
      // Back online is a reason to try again, also after the retry limit was reached.
      if (this.status.get().status === 'closed' && this.status.get().reason !== 'offline')
        this.status.dispatch({ type: 'start' });
      this.status.dispatch({ type: 'online' });
      if (!this.transport) void this.attempt();
    };
    g.addEventListener('offline', offline);
    g.addEventListener('online', online);
    this.offNetwork.push(
      () => g.removeEventListener?.('offline', offline),
      () => g.removeEventListener?.('online', online),
    );
  }
}
