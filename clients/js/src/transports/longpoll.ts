/**
 * Long-polling, the last resort when neither WebSocket nor a streaming response
 * gets through: one `GET /v1/channels/{ch}/messages?since=&wait=` loop per
 * channel, each resuming from the `next` cursor of the previous reply.
 * Publishes go over HTTP. A poll that outlives its wait plus the request
 * timeout is a dead connection.
 */
import type { Message, PresenceAction, PublishItem, PublishResult } from '../types.js';
import { SwitchboardError } from '../types.js';
import { joinUrl } from '../util.js';
import { authHeaders, channelPath, errorFromResponse, fetchWithTimeout, probe, SerialPublisher } from './http.js';
import type { Transport, TransportContext, TransportHandlers } from './transport.js';

interface Loop {
  ac: AbortController;
  stopped: boolean;
}

interface HistoryReply {
  messages: Message[];
  next: string;
  reset: boolean;
}

export class LongPollTransport implements Transport {
  readonly name = 'longpoll' as const;
  readonly canPresence = false;
  private readonly loops = new Map<string, Loop>();
  private readonly publisher: SerialPublisher;
  private readonly lifetime = new AbortController();
  private closed = false;
  private opened = false;
  private firstOk: (() => void) | null = null;
  private firstErr: ((e: SwitchboardError) => void) | null = null;

  constructor(
    private readonly ctx: TransportContext,
    private readonly h: TransportHandlers,
  ) {
    this.publisher = new SerialPublisher(ctx);
  }

  async open(channels: string[]): Promise<void> {
    if (channels.length === 0) {
      await probe(this.ctx, this.lifetime.signal);
    } else {
      await new Promise<void>((resolve, reject) => {
        this.firstOk = resolve;
        this.firstErr = reject;
        for (const ch of channels) this.startLoop(ch);
      });
    }
    if (this.closed) throw new SwitchboardError('closed', 'Closed while opening.', false);
    this.opened = true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.lifetime.abort();
    for (const l of this.loops.values()) {
      l.stopped = true;
      l.ac.abort();
    }
    this.loops.clear();
  }

  subscribe(channel: string): void {
    if (this.loops.has(channel) || this.closed) return;
    if (this.opened) this.startLoop(channel);
  }

  unsubscribe(channel: string): void {
    const l = this.loops.get(channel);
    if (!l) return;
    l.stopped = true;
    l.ac.abort();
    this.loops.delete(channel);
  }

  publish(item: PublishItem): Promise<PublishResult> {
    if (this.closed) return Promise.reject(new SwitchboardError('not_connected', 'Not connected.', true));
    return this.publisher.publish(item);
  }

  presence(_c: string, _a: PresenceAction, _i: unknown, _s: unknown, _u?: string): Promise<unknown> {
    return Promise.reject(new SwitchboardError('presence_unsupported', 'Presence needs the WebSocket transport.', false));
  }

  private startLoop(channel: string): void {
    const loop: Loop = { ac: new AbortController(), stopped: false };
    this.loops.set(channel, loop);
    this.run(channel, loop).catch((err: SwitchboardError) => {
      if (loop.stopped || this.closed) return;
      this.loops.delete(channel);
      if (!err.retryable && err.status !== undefined && err.status < 500) {
        // The server refused this channel (bad name, forbidden): the others go on.
        this.h.subscribeError(channel, err);
        if (!this.opened) this.firstErr?.(err);
        return;
      }
      if (!this.opened) {
        this.firstErr?.(err);
        this.close();
        return;
      }
      this.close();
      this.h.close(err.code === 'timeout' ? 'heartbeat_timeout' : 'connection_lost');
    });
  }

  private get<T>(path: string, timeoutMs: number, loop: Loop): Promise<T> {
    return fetchWithTimeout(
      this.ctx.fetch,
      joinUrl(this.ctx.baseUrl, path),
      { headers: authHeaders(this.ctx.token), cache: 'no-store' },
      timeoutMs,
      loop.ac.signal,
    ).then(async (res) => {
      if (res.status !== 200) throw await errorFromResponse(res);
      return (await res.json()) as T;
    });
  }

  private async run(channel: string, loop: Loop): Promise<void> {
    const ch = channelPath(channel);
    let since: string;
    const known = this.ctx.since(channel);
    if (known !== undefined) {
      since = known;
    } else {
      // Live: start after the channel's current last message.
      const info = await this.get<{ last: Message | null }>(`/v1/channels/${ch}`, this.ctx.requestTimeoutMs, loop);
      since = info.last && typeof info.last.id === 'string' ? info.last.id : '0';
      if (loop.stopped) return;
      this.h.cursor(channel, since);
    }
    const wait = this.ctx.longPollWaitS;
    for (let first = true; !loop.stopped; first = false) {
      const r: HistoryReply = await this.get<HistoryReply>(
        `/v1/channels/${ch}/messages?since=${encodeURIComponent(since)}&limit=1000&wait=${first ? 0 : wait}`,
        (first ? 0 : wait * 1000) + this.ctx.requestTimeoutMs,
        loop,
      );
      if (loop.stopped) return;
      if (first && this.firstOk) {
        const ok = this.firstOk;
        this.firstOk = null;
        ok();
      }
      if (r.reset) this.h.reset(channel, 'history_gap');
      for (const m of r.messages ?? []) {
        if (loop.stopped) return;
        this.h.message({ ...m, event: m.event ?? 'message' });
      }
      if (typeof r.next === 'string' && r.next) since = r.next;
      if (r.messages?.length) this.h.cursor(channel, since);
    }
  }
}
