/**
 * The WebSocket JSON protocol on /v1/ws (PROTOCOL.md). One socket carries
 * subscriptions, publishes (acknowledged by `ref`), presence and `ping`/`pong`
 * heartbeats; a socket silent for two heartbeat intervals is declared dead,
 * because a black-holed TCP connection never reports an error by itself.
 */
import type { Member, Message, PresenceAction, PublishItem, PublishResult } from '../types.js';
import { SwitchboardError, isRetryableCode } from '../types.js';
import { joinUrl, toWsUrl, type Timer } from '../util.js';
import type { Transport, TransportContext, TransportHandlers, WebSocketLike } from './transport.js';

interface Pending {
  resolve(v: Record<string, unknown>): void;
  reject(e: SwitchboardError): void;
}

const OPEN = 1;

/** Why a WebSocket closed, in the status vocabulary. */
function closeReason(code: number | undefined): string {
  switch (code) {
    case 1000:
      return 'server_closed';
    case 1001:
      return 'server_going_away';
    case 1008:
      return 'policy_violation';
    case 1009:
      return 'message_too_big';
    case 1011:
      return 'server_error';
    case 1013:
      return 'try_again_later';
    default:
      return 'connection_lost';
  }
}

export class WsTransport implements Transport {
  readonly name = 'ws' as const;
  readonly canPresence = true;
  private ws: WebSocketLike | null = null;
  private ref = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly subs = new Set<string>();
  private hbTimer: Timer | null = null;
  private wdTimer: Timer | null = null;
  private lastRx = 0;
  private opened = false;
  private closed = false;

  constructor(
    private readonly ctx: TransportContext,
    private readonly h: TransportHandlers,
  ) {}

  open(channels: string[]): Promise<void> {
    const Ctor = this.ctx.WebSocket;
    if (!Ctor) return Promise.reject(new SwitchboardError('unsupported', 'No WebSocket implementation.', false));
    const q: string[] = [];
    if (this.ctx.token) q.push(`token=${encodeURIComponent(this.ctx.token)}`);
    if (!this.ctx.echo) q.push('echo=0');
    const url = toWsUrl(joinUrl(this.ctx.baseUrl, '/v1/ws')) + (q.length ? `?${q.join('&')}` : '');
    return new Promise<void>((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new Ctor(url);
      } catch (err) {
        reject(new SwitchboardError('connect_failed', `WebSocket: ${(err as Error).message}`, true));
        return;
      }
      this.ws = ws;
      const timer = setTimeout(() => {
        this.kill();
        reject(new SwitchboardError('connect_timeout', 'WebSocket did not open in time.', true));
      }, this.ctx.requestTimeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        if (this.closed) return;
        this.opened = true;
        this.lastRx = Date.now();
        this.startHeartbeat();
        for (const ch of channels) this.subscribe(ch);
        resolve();
      };
      ws.onerror = () => {
        /* onclose follows with the code */
      };
      ws.onclose = (ev) => {
        clearTimeout(timer);
        const wasOpen = this.opened;
        this.teardown(closeReason(ev?.code));
        if (!wasOpen) {
          const code = ev?.code === 1008 ? 'unauthorized' : 'connect_failed';
          reject(new SwitchboardError(code, `WebSocket closed before it opened (${ev?.code ?? '?'}).`, true));
        } else if (!this.closed) {
          this.closed = true;
          this.h.close(closeReason(ev?.code));
        }
      };
      ws.onmessage = (ev) => {
        this.lastRx = Date.now();
        if (typeof ev.data === 'string') this.onText(ev.data);
      };
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.kill();
    this.teardown('closed');
  }

  subscribe(channel: string): void {
    this.subs.add(channel);
    if (!this.opened || this.closed) return;
    const msg: Record<string, unknown> = { op: 'subscribe', channel };
    const since = this.ctx.since(channel);
    if (since !== undefined) msg.since = since;
    if (this.ctx.presenceWanted(channel)) msg.presence = true;
    this.request(msg).then(
      (r) => {
        if (typeof r.last === 'string') this.h.cursor(channel, r.last);
      },
      (err: SwitchboardError) => {
        if (err.code !== 'connection_lost' && err.code !== 'not_connected') {
          this.subs.delete(channel);
          this.h.subscribeError(channel, err);
        }
      },
    );
  }

  unsubscribe(channel: string): void {
    if (!this.subs.delete(channel)) return;
    if (this.opened && !this.closed) this.request({ op: 'unsubscribe', channel }).catch(() => undefined);
  }

  async publish(item: PublishItem): Promise<PublishResult> {
    const msg: Record<string, unknown> = { op: 'publish', channel: item.channel, data: item.data ?? null, key: item.key };
    if (item.event) msg.event = item.event;
    const r = await this.request(msg);
    if (typeof r.id !== 'string') throw new SwitchboardError('bad_reply', 'Publish reply without an id.', true);
    return { id: r.id, channel: item.channel };
  }

  presence(channel: string, action: PresenceAction, info: unknown, state: unknown, userId?: string): Promise<unknown> {
    const msg: Record<string, unknown> = { op: 'presence', channel, action };
    if (userId !== undefined && action === 'enter') msg.userId = userId;
    if (info !== undefined) msg.info = info;
    if (state !== undefined) msg.state = state;
    return this.request(msg);
  }

  private request(msg: Record<string, unknown>): Promise<Record<string, unknown>> {
    const ws = this.ws;
    if (!ws || !this.opened || this.closed || ws.readyState !== OPEN)
      return Promise.reject(new SwitchboardError('not_connected', 'Not connected.', true));
    const ref = ++this.ref;
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      try {
        ws.send(JSON.stringify({ ...msg, ref }));
      } catch (err) {
        this.pending.delete(ref);
        reject(new SwitchboardError('connection_lost', `send failed: ${(err as Error).message}`, true));
      }
    });
  }

  private onText(text: string): void {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (!m || typeof m !== 'object') return;
    switch (m.op) {
      case 'message':
        if (typeof m.channel === 'string' && typeof m.id === 'string')
          this.h.message({
            id: m.id,
            channel: m.channel,
            event: typeof m.event === 'string' ? m.event : 'message',
            data: m.data,
            time: typeof m.time === 'number' ? m.time : Date.now(),
          } as Message);
        return;
      case 'ok':
      case 'error':
      case 'pong': {
        const p = typeof m.ref === 'number' ? this.pending.get(m.ref) : undefined;
        if (!p) return;
        this.pending.delete(m.ref as number);
        if (m.op === 'error') {
          const code = typeof m.code === 'string' ? m.code : 'error';
          p.reject(new SwitchboardError(code, String(m.message ?? code), isRetryableCode(code)));
        } else {
          p.resolve(m);
        }
        return;
      }
      case 'reset':
        if (typeof m.channel === 'string') this.h.reset(m.channel, String(m.reason ?? 'reset'));
        return;
      case 'presence':
        if (typeof m.channel === 'string' && m.member && typeof m.member === 'object')
          this.h.presence({
            channel: m.channel,
            action: m.action as 'enter',
            member: m.member as Omit<Member, 'lastSeen'>,
          });
        return;
      case 'presence.batch':
        // Several changes of one channel in one frame, in order.
        if (typeof m.channel === 'string' && Array.isArray(m.events))
          for (const e of m.events as { action?: unknown; member?: unknown }[])
            if (e && e.member && typeof e.member === 'object')
              this.h.presence({
                channel: m.channel,
                action: e.action as 'enter',
                member: e.member as Omit<Member, 'lastSeen'>,
              });
        return;
      case 'presence.sync':
        if (typeof m.channel === 'string' && Array.isArray(m.members))
          this.h.presence({ channel: m.channel, action: 'sync', members: m.members as Omit<Member, 'lastSeen'>[] });
        return;
      default:
        return;
    }
  }

  private startHeartbeat(): void {
    const hb = this.ctx.heartbeatMs;
    if (!(hb > 0)) return;
    this.hbTimer = setInterval(() => {
      this.request({ op: 'ping' }).catch(() => undefined);
    }, hb);
    this.armWatchdog();
  }

  /** Fires exactly two heartbeat intervals after the last frame received, not a check tick later. */
  private armWatchdog(): void {
    const hb = this.ctx.heartbeatMs;
    this.wdTimer = setTimeout(
      () => {
        this.wdTimer = null;
        if (this.closed || !this.opened) return;
        if (Date.now() - this.lastRx < 2 * hb) {
          this.armWatchdog();
          return;
        }
        this.kill();
        this.teardown('heartbeat_timeout');
        this.closed = true;
        this.h.close('heartbeat_timeout');
      },
      Math.max(0, this.lastRx + 2 * hb - Date.now()),
    );
  }

  /** Drops the socket at once: a dead peer would never finish a closing handshake. */
  private kill(): void {
    const ws = this.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = null;
    ws.onclose = null;
    // Closing a socket that is still connecting reports an error; nobody is listening any more.
    ws.onerror = () => undefined;
    try {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close(4000, 'client closing');
    } catch {
      /* already closed */
    }
  }

  private teardown(reason: string): void {
    if (this.hbTimer) clearInterval(this.hbTimer);
    if (this.wdTimer) clearTimeout(this.wdTimer);
    this.hbTimer = this.wdTimer = null;
    const err = new SwitchboardError('connection_lost', `Connection lost (${reason}).`, true);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.opened = false;
  }
}
