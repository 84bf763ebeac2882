/**
 * Presence on one channel (seed pattern #5): who is here and their state
 * (cursor, typing). State sends are throttled client-side: at most one per
 * `throttleMs`, and the latest state always goes out last. Members are
 * replaced wholesale by the server's sync after every (re)subscribe, and the
 * list is emptied when the connection has been down too long to trust it, so
 * no ghost cursor stays on screen.
 */
import { Emitter } from './emitter.js';
import type { StatusInfo } from './status.js';
import type { Member, PresenceAction, PresenceEvent } from './types.js';
import type { Timer } from './util.js';

export interface PresenceOptions<I = Record<string, unknown>> {
  /** This member's fixed info (name, color). With a JWT the server uses the token's `info` instead. */
  info?: I;
  /**
   * The user this member is (development mode; with a JWT the token's `sub` is).
   * Two tabs or a reload of one user then make one `user.enter`, not a flap.
   */
  userId?: string;
  /** Minimum interval between state sends, ms (default 60). */
  throttleMs?: number;
  /**
   * Drop a member not heard of for this long, ms (default 0: only the server's
   * leave and sync remove members; the server already times out silent ones).
   */
  staleMs?: number;
  /** Empty the member list after the connection has been down this long, ms (default 10000). */
  offlineClearMs?: number;
  /** Enter at once (default false). */
  enter?: boolean;
}

/** What Presence needs from the client. */
export interface PresenceHost {
  subscribe(channel: string, o: { presence: boolean }): { unsubscribe(): void };
  onPresence(channel: string, fn: (e: PresenceEvent) => void, onSelf?: (clientId: string) => void): () => void;
  send(channel: string, action: PresenceAction, info: unknown, state: unknown, userId?: string): Promise<unknown>;
  status(): StatusInfo;
  onStatus(fn: (s: StatusInfo) => void): () => void;
}

export interface PresenceEvents<I, S> {
  change: Member<I, S>[];
  'user.enter': Member<I, S>;
  'user.leave': Member<I, S>;
}

export class Presence<I = Record<string, unknown>, S = Record<string, unknown>> {
  readonly channel: string;
  private readonly host: PresenceHost;
  private readonly opts: Required<Omit<PresenceOptions<I>, 'info' | 'enter' | 'userId'>> & { info?: I; userId?: string };
  private readonly map = new Map<string, Member<I, S>>();
  private readonly emitter = new Emitter<PresenceEvents<I, S>>();
  private readonly sub: { unsubscribe(): void };
  private readonly offs: (() => void)[] = [];
  private state: S | undefined;
  private entered = false;
  private lastSent = 0;
  private trailing: Timer | null = null;
  private staleTimer: Timer | null = null;
  private downTimer: Timer | null = null;
  private closed = false;
  /** This connection's member id, when the server said it. */
  selfId: string | null = null;

  constructor(host: PresenceHost, channel: string, opts: PresenceOptions<I> = {}) {
    this.host = host;
    this.channel = channel;
    this.opts = {
      info: opts.info,
      userId: opts.userId,
      throttleMs: opts.throttleMs ?? 60,
      staleMs: opts.staleMs ?? 0,
      offlineClearMs: opts.offlineClearMs ?? 10000,
    };
    this.sub = host.subscribe(channel, { presence: true });
    this.offs.push(
      host.onPresence(
        channel,
        (e) => this.onEvent(e),
        (id) => {
          // The member id changes with every connection (and is shared by the tabs of one browser).
          this.selfId = id;
          this.changed();
        },
      ),
    );
    this.offs.push(host.onStatus((s) => this.onStatus(s)));
    if (this.opts.staleMs > 0)
      this.staleTimer = setInterval(() => this.sweep(), Math.max(250, Math.min(5000, this.opts.staleMs / 2)));
    if (opts.enter) void this.enter().catch(() => undefined);
  }

  /** Every member, this connection included. */
  members(): Member<I, S>[] {
    return [...this.map.values()];
  }

  /** Every member except this connection (and, without a server-given id, except members with our info). */
  others(): Member<I, S>[] {
    return this.members().filter((m) => !this.isSelf(m));
  }

  private isSelf(m: Member<I, S>): boolean {
    if (this.selfId) return m.clientId === this.selfId;
    const mine = this.opts.info as unknown as { id?: unknown } | undefined;
    const theirs = m.info as unknown as { id?: unknown } | undefined;
    return !!mine && mine.id !== undefined && theirs?.id === mine.id;
  }

  /** Listens to member list changes and user enter/leave. */
  on<K extends keyof PresenceEvents<I, S>>(name: K, fn: (v: PresenceEvents<I, S>[K]) => void): () => void {
    return this.emitter.on(name, fn);
  }

  /** Enters the channel with an optional initial state. */
  async enter(state?: S): Promise<void> {
    if (state !== undefined) this.state = state;
    this.entered = true;
    this.lastSent = Date.now();
    const r = (await this.host.send(this.channel, 'enter', this.opts.info, this.state ?? {}, this.opts.userId)) as
      | { clientId?: unknown; member?: { clientId?: unknown } }
      | undefined;
    const id = r?.clientId ?? r?.member?.clientId;
    if (typeof id === 'string') this.selfId = id;
  }

  /**
   * Sets the state (e.g. `{cursor:{x,y}}`). Throttled: sent at once if the last
   * send is older than `throttleMs`, else once that time is up, with the latest
   * state. Enters first if needed.
   */
  update(state: S): void {
    this.state = state;
    if (this.closed) return;
    const wait = this.opts.throttleMs - (Date.now() - this.lastSent);
    if (wait <= 0) {
      this.flush();
      return;
    }
    if (!this.trailing) {
      this.trailing = setTimeout(() => {
        this.trailing = null;
        this.flush();
      }, wait);
    }
  }

  private flush(): void {
    if (this.closed) return;
    this.lastSent = Date.now();
    const action: PresenceAction = this.entered ? 'update' : 'enter';
    this.entered = true;
    this.host
      .send(this.channel, action, action === 'enter' ? this.opts.info : undefined, this.state ?? {}, this.opts.userId)
      .then((r) => {
        const id = (r as { clientId?: unknown } | undefined)?.clientId;
        if (typeof id === 'string') this.selfId = id;
      })
      .catch(() => undefined);
  }

  /** Leaves the channel (the subscription stays until `close`). */
  async leave(): Promise<void> {
    if (this.trailing) clearTimeout(this.trailing);
    this.trailing = null;
    if (!this.entered) return;
    this.entered = false;
    await this.host.send(this.channel, 'leave', undefined, undefined);
  }

  /** Leaves and stops listening. */
  close(): void {
    if (this.closed) return;
    if (this.entered) void this.leave().catch(() => undefined);
    this.closed = true;
    for (const off of this.offs.splice(0)) off();
    for (const t of [this.staleTimer, this.downTimer]) if (t) clearTimeout(t);
    if (this.staleTimer) clearInterval(this.staleTimer);
    this.sub.unsubscribe();
    this.emitter.clear();
  }

  private changed(): void {
    this.emitter.emit('change', this.members());
  }

  private onEvent(e: PresenceEvent): void {
    const now = Date.now();
    if (e.action === 'sync') {
      this.map.clear();
      for (const m of e.members) if (m && typeof m.clientId === 'string') this.map.set(m.clientId, this.norm(m, now));
      this.changed();
      return;
    }
    const m = e.member;
    if (!m || typeof m.clientId !== 'string') return;
    switch (e.action) {
      case 'enter':
      case 'update': {
        const prev = this.map.get(m.clientId);
        const next = this.norm(m, now);
        if (prev && e.action === 'update' && m.info === undefined) next.info = prev.info;
        this.map.set(m.clientId, next);
        this.changed();
        return;
      }
      case 'leave':
        if (this.map.delete(m.clientId)) this.changed();
        return;
      case 'user.enter':
        this.emitter.emit('user.enter', this.norm(m, now));
        return;
      case 'user.leave':
        this.emitter.emit('user.leave', this.norm(m, now));
        return;
    }
  }

  private norm(m: Omit<Member, 'lastSeen'>, now: number): Member<I, S> {
    return {
      clientId: m.clientId,
      userId: m.userId ?? null,
      info: (m.info ?? {}) as I,
      state: (m.state ?? {}) as S,
      lastSeen: now,
    };
  }

  private onStatus(s: StatusInfo): void {
    if (s.status === 'open') {
      if (this.downTimer) clearTimeout(this.downTimer);
      this.downTimer = null;
      return;
    }
    if (this.downTimer || this.map.size === 0) return;
    this.downTimer = setTimeout(() => {
      this.downTimer = null;
      if (this.host.status().status !== 'open' && this.map.size) {
        this.map.clear();
        this.changed();
      }
    }, this.opts.offlineClearMs);
  }

  private sweep(): void {
    const cut = Date.now() - this.opts.staleMs;
    let any = false;
    for (const [id, m] of this.map)
      if (m.lastSeen < cut && !this.isSelf(m)) {
        this.map.delete(id);
        any = true;
      }
    if (any) this.changed();
  }
}
