/**
 * One connection per browser, not per tab. HTTP/1.1 allows six connections per
 * origin, so the seventh tab of an SSE app would hang; here the tabs of one
 * origin elect a leader with a Web Lock, the leader runs the only hub
 * (connection), and the others talk to it over a BroadcastChannel.
 *
 * - Election: every tab asks for the same exclusive lock; the browser grants it
 *   to one and queues the rest. When the leader tab closes (or crashes) the lock
 *   is released and the next tab in the queue becomes leader: hand-over needs
 *   no timeout.
 * - Liveness: each tab also holds a lock of its own; the leader checks with
 *   `locks.query()` which tabs still hold theirs and forgets the rest.
 * - Requests (subscribe, publish, presence) go to the leader by broadcast and
 *   are answered by tab id and request id. A new leader announces itself; every
 *   request still open with the old one is failed as retryable, so the client's
 *   outbox sends it again with the same idempotency key: exactly once.
 * - Messages are broadcast by the leader; each tab keeps its own per-channel
 *   cursors, so what a new leader replays after a hand-over is dropped.
 */
import { Emitter } from './emitter.js';
import type { HubEvents } from './hub.js';
import type { Link } from './link.js';
import { StatusStore, type StatusInfo } from './status.js';
import type { PresenceAction, PublishItem, PublishResult } from './types.js';
import { SwitchboardError } from './types.js';
import { randomId, type Timer } from './util.js';

/** The Web Locks surface used (navigator.locks). */
export interface LockManagerLike {
  request(name: string, options: { signal?: AbortSignal }, cb: (lock: unknown) => Promise<unknown>): Promise<unknown>;
  query?(): Promise<{ held?: { name?: string }[] }>;
}

/** The BroadcastChannel surface used. */
export interface BroadcastChannelLike {
  postMessage(data: unknown): void;
  close(): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
}
export type BroadcastChannelCtor = new (name: string) => BroadcastChannelLike;

export interface TabLinkConfig {
  /** Tabs with the same name share a connection (default: derived from the server URL). */
  name: string;
  locks: LockManagerLike;
  BroadcastChannel: BroadcastChannelCtor;
  /** Makes the hub when this tab becomes the leader. */
  createHub: () => Link;
  /** This tab's resume point for a channel (the client's cursor), for hand-over. */
  cursorOf: (channel: string) => string | undefined;
  /** How often the leader checks which tabs are gone, ms (default 2000). */
  pruneMs?: number;
  /** A request the leader never answers fails (retryable) after this, ms (default 30000). */
  requestTimeoutMs?: number;
  tabId?: string;
}

type WantOpts = { since?: string; presence?: boolean };

interface TabState {
  /** When the leader last heard from this tab (a just-started tab may not hold its lock yet). */
  seen: number;
  wants: Map<string, WantOpts>;
  presence: Map<string, { info: unknown; state: unknown; userId?: string }>;
}

interface PendingReq {
  resolve(v: unknown): void;
  reject(e: unknown): void;
  leader: string | null;
  timer: Timer;
}

/** Wire messages on the BroadcastChannel. */
type Wire =
  | { t: 'hello'; from: string; wants: [string, WantOpts][]; presence: [string, unknown, unknown, string | undefined][] }
  | { t: 'want'; from: string; ch: string; opts: WantOpts }
  | { t: 'unwant'; from: string; ch: string }
  | { t: 'pub'; from: string; rid: string; item: PublishItem }
  | { t: 'pres'; from: string; rid: string; ch: string; action: PresenceAction; info: unknown; state: unknown; userId?: string }
  | { t: 'reconnect'; from: string; reason: string }
  | { t: 'bye'; from: string }
  | { t: 'leader'; id: string; to?: string; status: StatusInfo }
  | { t: 'status'; id: string; status: StatusInfo }
  | { t: 'ev'; id: string; name: keyof HubEvents; value: unknown }
  | { t: 'res'; to: string; rid: string; ok: boolean; value?: unknown; err?: { code: string; message: string; retryable: boolean; status?: number } };

function toWireError(e: unknown): { code: string; message: string; retryable: boolean; status?: number } {
  const se = e as SwitchboardError;
  return {
    code: se?.code ?? 'error',
    message: se?.message ?? String(e),
    retryable: se?.retryable ?? true,
    status: se?.status,
  };
}

export class TabLink implements Link {
  readonly status = new StatusStore();
  readonly events = new Emitter<HubEvents>();
  readonly tabId: string;
  private readonly cfg: TabLinkConfig;
  private bc: BroadcastChannelLike | null = null;
  private hub: Link | null = null;
  private leaderId: string | null = null;
  private readonly myWants = new Map<string, WantOpts>();
  private readonly myPresence = new Map<string, { info: unknown; state: unknown; userId?: string }>();
  private readonly pending = new Map<string, PendingReq>();
  private readonly tabs = new Map<string, TabState>();
  private stopAc: AbortController | null = null;
  private releaseLeader: (() => void) | null = null;
  private releaseTab: (() => void) | null = null;
  private pruneTimer: Timer | null = null;
  private offHub: (() => void)[] = [];
  private running = false;

  constructor(cfg: TabLinkConfig) {
    this.cfg = cfg;
    this.tabId = cfg.tabId ?? randomId().slice(0, 16);
  }

  /** Whether this tab holds the connection. */
  get isLeader(): boolean {
    return this.hub !== null;
  }

  /** The leader's tab id, once known. */
  get leader(): string | null {
    return this.leaderId;
  }

  private lockName(kind: string): string {
    return `switchboard:${this.cfg.name}:${kind}`;
  }

  start(): void {
    if (this.running) {
      this.hub?.start(); // after a give-up: the leader starts over
      return;
    }
    this.running = true;
    this.status.dispatch({ type: 'start' });
    const ac = new AbortController();
    this.stopAc = ac;
    this.bc = new this.cfg.BroadcastChannel(`switchboard:${this.cfg.name}`);
    this.bc.onmessage = (ev) => this.onWire(ev.data as Wire);
    const hold = (set: (r: () => void) => void) => () => new Promise<void>((r) => set(r));
    this.cfg.locks
      .request(this.lockName(`tab:${this.tabId}`), { signal: ac.signal }, hold((r) => (this.releaseTab = r)))
      .catch(() => undefined);
    this.cfg.locks
      .request(this.lockName('leader'), { signal: ac.signal }, () => {
        if (!this.running) return Promise.resolve();
        this.becomeLeader();
        return new Promise<void>((r) => (this.releaseLeader = r));
      })
      .catch(() => undefined);
    // Tell a leader that may already exist what this tab wants.
    this.sendHello();
  }

  stop(): void {
    if (!this.running) return;
    this.running = false;
    this.post({ t: 'bye', from: this.tabId });
    this.stopAc?.abort();
    if (this.hub) {
      for (const off of this.offHub.splice(0)) off();
      this.hub.stop();
      this.hub = null;
    }
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    this.pruneTimer = null;
    this.failPending(new SwitchboardError('closed', 'The client was closed.', false));
    this.releaseLeader?.();
    this.releaseTab?.();
    this.releaseLeader = this.releaseTab = null;
    this.bc?.close();
    this.bc = null;
    this.tabs.clear();
    this.status.dispatch({ type: 'stop' });
  }

  want(channel: string, opts: WantOpts): void {
    this.myWants.set(channel, opts);
    if (this.hub) this.leaderWant(this.tabId, channel, { ...opts, since: this.cfg.cursorOf(channel) ?? opts.since });
    else this.post({ t: 'want', from: this.tabId, ch: channel, opts: { ...opts, since: this.cfg.cursorOf(channel) ?? opts.since } });
  }

  unwant(channel: string): void {
    this.myWants.delete(channel);
    this.myPresence.delete(channel);
    if (this.hub) this.leaderUnwant(this.tabId, channel);
    else this.post({ t: 'unwant', from: this.tabId, ch: channel });
  }

  publish(item: PublishItem): Promise<PublishResult> {
    if (this.hub) return this.hub.publish(item);
    return this.request((rid) => ({ t: 'pub', from: this.tabId, rid, item })) as Promise<PublishResult>;
  }

  presence(channel: string, action: PresenceAction, info: unknown, state: unknown, userId?: string): Promise<unknown> {
    if (action === 'leave') this.myPresence.delete(channel);
    else {
      const prev = this.myPresence.get(channel);
      this.myPresence.set(channel, { info: info ?? prev?.info, state: state ?? prev?.state, userId: userId ?? prev?.userId });
    }
    if (this.hub) return this.leaderPresence(this.tabId, channel, action, info, state, userId);
    return this.request((rid) => ({ t: 'pres', from: this.tabId, rid, ch: channel, action, info, state, userId }));
  }

  reconnectNow(reason: string): void {
    if (this.hub) this.hub.reconnectNow(reason);
    else this.post({ t: 'reconnect', from: this.tabId, reason });
  }

  // ---- follower side ----

  private post(w: Wire): void {
    try {
      this.bc?.postMessage(w);
    } catch {
      /* closed */
    }
  }

  private sendHello(): void {
    const wants: [string, WantOpts][] = [...this.myWants].map(([ch, o]) => [
      ch,
      { ...o, since: this.cfg.cursorOf(ch) ?? o.since },
    ]);
    const presence: [string, unknown, unknown, string | undefined][] = [...this.myPresence].map(([ch, p]) => [
      ch,
      p.info,
      p.state,
      p.userId,
    ]);
    this.post({ t: 'hello', from: this.tabId, wants, presence });
  }

  private request(make: (rid: string) => Wire): Promise<unknown> {
    if (!this.running) return Promise.reject(new SwitchboardError('not_connected', 'Not started.', true));
    const rid = randomId().slice(0, 12);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        reject(new SwitchboardError('timeout', 'The leader tab did not answer.', true));
      }, this.cfg.requestTimeoutMs ?? 30000);
      this.pending.set(rid, { resolve, reject, leader: this.leaderId, timer });
      this.post(make(rid));
    });
  }

  private failPending(err: SwitchboardError, onlyNotFrom?: string): void {
    for (const [rid, p] of this.pending) {
      if (onlyNotFrom !== undefined && p.leader === onlyNotFrom) continue;
      clearTimeout(p.timer);
      this.pending.delete(rid);
      p.reject(err);
    }
  }

  private onWire(w: Wire): void {
    if (!w || typeof w !== 'object' || !this.running) return;
    if (this.hub) {
      this.onWireAsLeader(w);
      return;
    }
    switch (w.t) {
      case 'leader':
        if (w.to !== undefined && w.to !== this.tabId) return;
        if (w.id !== this.leaderId) {
          this.leaderId = w.id;
          // Anything sent before this leader was known may not have reached it.
          this.failPending(new SwitchboardError('leader_changed', 'The leader tab changed.', true), w.id);
          if (w.to === undefined) this.sendHello();
        }
        this.status.dispatch({ type: 'mirror', info: { ...w.status, shared: true } });
        return;
      case 'status':
        if (w.id === this.leaderId) this.status.dispatch({ type: 'mirror', info: { ...w.status, shared: true } });
        return;
      case 'ev': {
        if (w.id !== this.leaderId) return;
        const v = w.value as { channel?: string };
        if (w.name !== 'open' && v && typeof v.channel === 'string' && !this.myWants.has(v.channel)) return;
        if (w.name === 'subscribeError') {
          const e = v as { channel: string; error: ReturnType<typeof toWireError> };
          this.events.emit('subscribeError', {
            channel: e.channel,
            error: new SwitchboardError(e.error.code, e.error.message, e.error.retryable, e.error.status),
          });
          return;
        }
        this.events.emit(w.name, w.value as never);
        return;
      }
      case 'res': {
        if (w.to !== this.tabId) return;
        const p = this.pending.get(w.rid);
        if (!p) return;
        clearTimeout(p.timer);
        this.pending.delete(w.rid);
        if (w.ok) p.resolve(w.value);
        else p.reject(new SwitchboardError(w.err!.code, w.err!.message, w.err!.retryable, w.err!.status));
        return;
      }
      default:
        return; // requests meant for the leader
    }
  }

  // ---- leader side ----

  private becomeLeader(): void {
    if (!this.running || this.hub) return;
    this.failPending(new SwitchboardError('leader_changed', 'This tab became the leader.', true));
    this.leaderId = this.tabId;
    const hub = this.cfg.createHub();
    this.hub = hub;
    this.tabs.clear();
    this.tabs.set(this.tabId, { seen: Date.now(), wants: new Map(), presence: new Map() });
    for (const [ch, o] of this.myWants) this.leaderWant(this.tabId, ch, { ...o, since: this.cfg.cursorOf(ch) ?? o.since });
    for (const [ch, p] of this.myPresence)
      this.leaderPresence(this.tabId, ch, 'enter', p.info, p.state, p.userId).catch(() => undefined);
    const names: (keyof HubEvents)[] = ['message', 'reset', 'presence', 'cursor', 'subscribeError', 'open', 'entered'];
    for (const name of names)
      this.offHub.push(
        hub.events.on(name, (value) => {
          this.events.emit(name, value as never);
          const v =
            name === 'subscribeError'
              ? { channel: (value as HubEvents['subscribeError']).channel, error: toWireError((value as HubEvents['subscribeError']).error) }
              : value;
          this.post({ t: 'ev', id: this.tabId, name, value: v });
        }),
      );
    this.offHub.push(
      hub.status.subscribe((s) => {
        this.status.dispatch({ type: 'mirror', info: { ...s, shared: false } });
        this.post({ t: 'status', id: this.tabId, status: s });
      }),
    );
    hub.start();
    this.post({ t: 'leader', id: this.tabId, status: hub.status.get() });
    this.pruneTimer = setInterval(() => void this.prune(), this.cfg.pruneMs ?? 2000);
  }

  private onWireAsLeader(w: Wire): void {
    const hub = this.hub!;
    if ('from' in w) {
      const st = this.tabs.get(w.from);
      if (st) st.seen = Date.now();
    }
    switch (w.t) {
      case 'hello': {
        const old = this.tabs.get(w.from);
        const st: TabState = { seen: Date.now(), wants: new Map(w.wants), presence: new Map() };
        this.tabs.set(w.from, st);
        for (const [ch, o] of w.wants) hub.want(ch, o);
        if (old) for (const ch of old.wants.keys()) if (!st.wants.has(ch)) this.dropChannelIfUnused(ch);
        for (const [ch, info, state, userId] of w.presence)
          this.leaderPresence(w.from, ch, 'enter', info, state, userId).catch(() => undefined);
        this.post({ t: 'leader', id: this.tabId, to: w.from, status: hub.status.get() });
        return;
      }
      case 'want':
        this.leaderWant(w.from, w.ch, w.opts);
        return;
      case 'unwant':
        this.leaderUnwant(w.from, w.ch);
        return;
      case 'pub':
        hub.publish(w.item).then(
          (value) => this.post({ t: 'res', to: w.from, rid: w.rid, ok: true, value }),
          (e) => this.post({ t: 'res', to: w.from, rid: w.rid, ok: false, err: toWireError(e) }),
        );
        return;
      case 'pres':
        this.leaderPresence(w.from, w.ch, w.action, w.info, w.state, w.userId).then(
          (value) => this.post({ t: 'res', to: w.from, rid: w.rid, ok: true, value }),
          (e) => this.post({ t: 'res', to: w.from, rid: w.rid, ok: false, err: toWireError(e) }),
        );
        return;
      case 'reconnect':
        hub.reconnectNow(w.reason);
        return;
      case 'bye':
        this.removeTab(w.from);
        return;
      case 'leader':
        // Two leaders cannot hold one lock; a stale announcement is ignored.
        return;
      default:
        return;
    }
  }

  private tab(id: string): TabState {
    let st = this.tabs.get(id);
    if (!st) this.tabs.set(id, (st = { seen: Date.now(), wants: new Map(), presence: new Map() }));
    return st;
  }

  private leaderWant(from: string, ch: string, opts: WantOpts): void {
    this.tab(from).wants.set(ch, opts);
    this.hub!.want(ch, opts);
  }

  private leaderUnwant(from: string, ch: string): void {
    const st = this.tabs.get(from);
    if (!st) return;
    st.wants.delete(ch);
    if (st.presence.delete(ch)) this.presenceAfterLeave(ch);
    this.dropChannelIfUnused(ch);
  }

  private dropChannelIfUnused(ch: string): void {
    for (const st of this.tabs.values()) if (st.wants.has(ch)) return;
    this.hub?.unwant(ch);
  }

  /**
   * Presence through one connection: the tabs are one member. It enters with the
   * first tab, takes the latest state any tab sets, and leaves with the last tab.
   */
  private leaderPresence(
    from: string,
    ch: string,
    action: PresenceAction,
    info: unknown,
    state: unknown,
    userId?: string,
  ): Promise<unknown> {
    const st = this.tab(from);
    if (action === 'leave') {
      st.presence.delete(ch);
      return this.presenceAfterLeave(ch);
    }
    const prev = st.presence.get(ch);
    st.presence.set(ch, { info: info ?? prev?.info, state: state ?? prev?.state, userId: userId ?? prev?.userId });
    return this.hub!.presence(ch, action, info, state, userId);
  }

  private presenceAfterLeave(ch: string): Promise<unknown> {
    for (const st of this.tabs.values()) if (st.presence.has(ch)) return Promise.resolve({});
    return this.hub ? this.hub.presence(ch, 'leave', undefined, undefined) : Promise.resolve({});
  }

  private removeTab(id: string): void {
    const st = this.tabs.get(id);
    if (!st || id === this.tabId) return;
    this.tabs.delete(id);
    for (const ch of st.presence.keys()) this.presenceAfterLeave(ch).catch(() => undefined);
    for (const ch of st.wants.keys()) this.dropChannelIfUnused(ch);
  }

  /** Forgets tabs whose own lock is no longer held (closed without a goodbye). */
  private async prune(): Promise<void> {
    if (!this.hub || !this.cfg.locks.query) return;
    let held: Set<string>;
    try {
      const q = await this.cfg.locks.query();
      held = new Set((q.held ?? []).map((l) => l.name ?? ''));
    } catch {
      return;
    }
    const now = Date.now();
    for (const [id, st] of [...this.tabs])
      if (id !== this.tabId && now - st.seen > 5000 && !held.has(this.lockName(`tab:${id}`))) this.removeTab(id);
  }
}
