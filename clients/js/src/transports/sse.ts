/**
 * Server-Sent Events on /v1/sse, read with fetch (not EventSource) so the
 * client sees the `: hb` comments, sends its token in a header, and owns the
 * reconnect. One stream carries every channel (`envelope=1` gives each
 * message's channel); the channel set is part of the URL, so a subscription
 * change restarts the stream from the oldest cursor and the per-channel
 * cursors drop what was already seen. Publishes go over HTTP.
 */
import type { Member, Message, PresenceAction, PublishItem, PublishResult } from '../types.js';
import { SwitchboardError } from '../types.js';
import { compareIds, joinUrl, type Timer } from '../util.js';
import { SseParser, type SseEvent } from '../sse-parser.js';
import { authHeaders, channelPath, errorFromResponse, fetchWithTimeout, networkError, probe, SerialPublisher } from './http.js';
import type { Transport, TransportContext, TransportHandlers } from './transport.js';

export class SseTransport implements Transport {
  readonly name = 'sse' as const;
  readonly canPresence = false;
  private readonly channels = new Set<string>();
  private readonly publisher: SerialPublisher;
  private ac: AbortController | null = null;
  private gen = 0;
  private watchdog: Timer | null = null;
  private restartTimer: Timer | null = null;
  private lastRx = 0;
  private retryHint: number | undefined;
  private closed = false;
  private opened = false;

  constructor(
    private readonly ctx: TransportContext,
    private readonly h: TransportHandlers,
  ) {
    this.publisher = new SerialPublisher(ctx);
  }

  async open(channels: string[]): Promise<void> {
    for (const ch of channels) this.channels.add(ch);
    if (this.channels.size === 0) {
      // No stream to hold open: being able to reach the server is "open".
      await probe(this.ctx);
    } else {
      await this.pinLiveChannels();
      await this.startStream();
    }
    if (this.closed) throw new SwitchboardError('closed', 'Closed while opening.', false);
    this.opened = true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopStream();
    if (this.restartTimer) clearTimeout(this.restartTimer);
  }

  subscribe(channel: string): void {
    if (this.channels.has(channel)) return;
    this.channels.add(channel);
    this.scheduleRestart();
  }

  unsubscribe(channel: string): void {
    if (!this.channels.delete(channel)) return;
    this.scheduleRestart();
  }

  publish(item: PublishItem): Promise<PublishResult> {
    if (this.closed) return Promise.reject(new SwitchboardError('not_connected', 'Not connected.', true));
    return this.publisher.publish(item);
  }

  presence(_c: string, _a: PresenceAction, _i: unknown, _s: unknown, _u?: string): Promise<unknown> {
    return Promise.reject(new SwitchboardError('presence_unsupported', 'Presence needs the WebSocket transport.', false));
  }

  /** Several subscribe calls in a row cost one restart. */
  private scheduleRestart(): void {
    if (!this.opened || this.closed || this.restartTimer) return;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.closed) return;
      this.stopStream();
      if (this.channels.size === 0) return;
      this.pinLiveChannels()
        .then(() => (this.closed ? undefined : this.startStream()))
        .catch(() => this.fail('connection_lost'));
    }, 5);
  }

  private url(): string {
    const q: string[] = [];
    // One cursor for the stream: the oldest of the channels'. Each channel then
    // drops what it already saw. Live channels (no cursor) take what comes.
    let since: string | undefined;
    for (const ch of this.channels) {
      q.push(`channel=${encodeURIComponent(ch)}`);
      const s = this.ctx.since(ch);
      if (s !== undefined && (since === undefined || compareIds(s, since) < 0)) since = s;
    }
    q.push('envelope=1');
    if ([...this.channels].some((ch) => this.ctx.presenceWanted(ch))) q.push('presence=1');
    if (since !== undefined) q.push(`since=${encodeURIComponent(since)}`);
    return joinUrl(this.ctx.baseUrl, `/v1/sse?${q.join('&')}`);
  }

  /**
   * One stream has one resume point, the oldest channel cursor. A channel
   * subscribed live next to channels that resume would be replayed from there,
   * maybe hours back; so first its current last id becomes its cursor.
   */
  private async pinLiveChannels(): Promise<void> {
    const all = [...this.channels];
    const live = all.filter((ch) => this.ctx.since(ch) === undefined);
    if (live.length === 0 || live.length === all.length) return;
    await Promise.all(
      live.map(async (ch) => {
        const res = await fetchWithTimeout(
          this.ctx.fetch,
          joinUrl(this.ctx.baseUrl, `/v1/channels/${channelPath(ch)}`),
          { headers: authHeaders(this.ctx.token), cache: 'no-store' },
          this.ctx.requestTimeoutMs,
        );
        if (res.status !== 200) throw await errorFromResponse(res);
        const info = (await res.json()) as { last?: { id?: unknown } | null };
        const last = info.last && typeof info.last.id === 'string' ? info.last.id : '0';
        // Ids are one increasing sequence: whatever the channel gets from now on is
        // newer than both its last message and anything this client has seen, so
        // the larger of the two is exact and keeps the stream's resume point high.
        const top = this.ctx.latest();
        const id = top !== undefined && compareIds(top, last) > 0 ? top : last;
        if (this.ctx.since(ch) === undefined) this.h.cursor(ch, id);
      }),
    );
  }

  /** Opens a stream; resolves when its first bytes arrive (a proxy that buffers never gets there). */
  private startStream(): Promise<void> {
    const gen = ++this.gen;
    const ac = new AbortController();
    this.ac = ac;
    const channels = [...this.channels];
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (err?: SwitchboardError) => {
        if (settled) return;
        settled = true;
        clearTimeout(openTimer);
        if (err) reject(err);
        else resolve();
      };
      const openTimer = setTimeout(() => {
        ac.abort();
        settle(new SwitchboardError('connect_timeout', 'The event stream did not start in time.', true));
      }, this.ctx.requestTimeoutMs);
      const parser = new SseParser({
        onEvent: (ev) => this.onEvent(ev),
        onIdOnly: (id) => {
          // The stream's first block: its retry: is the general hint, not "come back later".
          this.retryHint = undefined;
          for (const ch of channels) if (this.ctx.since(ch) === undefined) this.h.cursor(ch, id);
        },
        onRetry: (ms) => {
          this.retryHint = ms;
        },
      });
      this.ctx
        .fetch(this.url(), {
          headers: authHeaders(this.ctx.token, { Accept: 'text/event-stream' }),
          cache: 'no-store',
          signal: ac.signal,
        })
        .then(async (res) => {
          if (res.status !== 200 || !res.body) {
            const err = res.status !== 200 ? await errorFromResponse(res) : null;
            settle(err ?? new SwitchboardError('unsupported', 'No streaming response body.', false));
            return;
          }
          const reader = res.body.getReader();
          const dec = new TextDecoder();
          this.lastRx = Date.now();
          this.retryHint = undefined;
          for (;;) {
            const { done, value } = await reader.read();
            if (gen !== this.gen) return;
            if (done) break;
            this.lastRx = Date.now();
            if (!settled) {
              settle();
              this.startWatchdog();
            }
            parser.feed(dec.decode(value, { stream: true }));
          }
          if (!settled) settle(new SwitchboardError('connect_failed', 'The event stream ended at once.', true));
          else this.fail('server_closed', this.retryHint);
        })
        .catch((err) => {
          if (gen !== this.gen) return;
          if (!settled) settle(networkError(err, false));
          else this.fail('connection_lost');
        });
    });
  }

  /** Fires exactly two heartbeat intervals after the last bytes received. */
  private startWatchdog(): void {
    if (this.watchdog) clearTimeout(this.watchdog);
    this.watchdog = null;
    const hb = this.ctx.sseHeartbeatMs;
    if (!(hb > 0)) return;
    const gen = this.gen;
    this.watchdog = setTimeout(
      () => {
        this.watchdog = null;
        if (gen !== this.gen || this.closed) return;
        if (Date.now() - this.lastRx >= 2 * hb) this.fail('heartbeat_timeout');
        else this.startWatchdog();
      },
      Math.max(0, this.lastRx + 2 * hb - Date.now()),
    );
  }

  private stopStream(): void {
    this.gen++;
    if (this.watchdog) clearTimeout(this.watchdog);
    this.watchdog = null;
    this.ac?.abort();
    this.ac = null;
  }

  private fail(reason: string, retryAfterMs?: number): void {
    if (this.closed) return;
    this.closed = true;
    this.stopStream();
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.h.close(reason, retryAfterMs);
  }

  private onEvent(ev: SseEvent): void {
    let j: Record<string, unknown>;
    try {
      j = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (!j || typeof j !== 'object') return;
    // Server blocks (reset, presence, error) have no id line; a message always has one,
    // so a message whose event is named "reset" is still a message.
    if (!ev.hasId) {
      if (ev.event === 'reset' && typeof j.channel === 'string') {
        this.h.reset(j.channel, String(j.reason ?? 'reset'));
      } else if (ev.event === 'presence' && typeof j.channel === 'string') {
        if (Array.isArray(j.members))
          this.h.presence({ channel: j.channel, action: 'sync', members: j.members as Omit<Member, 'lastSeen'>[] });
        else if (j.member && typeof j.member === 'object')
          this.h.presence({ channel: j.channel, action: j.action as 'enter', member: j.member as Omit<Member, 'lastSeen'> });
      } else if (ev.event === 'error') {
        this.fail(typeof j.code === 'string' ? j.code : 'server_error');
      }
      return;
    }
    if (typeof j.id !== 'string' || typeof j.channel !== 'string') return;
    this.h.message({
      id: j.id,
      channel: j.channel,
      event: typeof j.event === 'string' ? j.event : 'message',
      data: j.data,
      time: typeof j.time === 'number' ? j.time : Date.now(),
    } as Message);
  }
}
