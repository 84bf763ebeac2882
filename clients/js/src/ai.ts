/**
 * AI token streams (seed pattern #2), resumable: `client.ai.chat(messages)` is
 * an async iterator of text chunks. It reads `POST /v1/ai/chat` (format
 * `text`) as the tokens arrive; if that response breaks off, it continues from
 * the stream's channel `ai:{streamId}` (events `delta`, then `done` or
 * `error`), skipping exactly the text already yielded, so no token is lost or
 * doubled.
 */
import { Backoff } from './backoff.js';
import { authHeaders, errorFromResponse, fetchWithTimeout, networkError } from './transports/http.js';
import type { Message } from './types.js';
import { SwitchboardError } from './types.js';
import { joinUrl } from './util.js';

/** A chat message as the endpoint takes it. */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'developer' | string;
  content: string;
}

export interface ChatOptions {
  model?: string;
  /** Chat id (lets `GET /v1/ai/chats/{id}/stream` find the active stream). */
  id?: string;
  signal?: AbortSignal;
  /** Resume through the channel after a drop (default true). */
  resume?: boolean;
  /** Give up resuming after the server has been unreachable this long, ms (default 60000). */
  resumeTimeoutMs?: number;
}

/** The iterator `chat` returns, with the stream's id and text so far. */
export interface ChatStream extends AsyncIterable<string> {
  /** Resolves with the server's stream id (X-Stream-Id) once the reply started. */
  readonly streamId: Promise<string>;
  /** All text yielded so far. */
  readonly text: string;
  /** Whether text had to be recovered from the stream's channel after a drop. */
  readonly resumed: boolean;
  /** Stops the generation on the server and ends the iterator. */
  cancel(): Promise<void>;
}

export interface AiHost {
  url: string;
  fetch(): typeof fetch;
  token(): Promise<string | null>;
  requestTimeoutMs: number;
}

/** The text of a `delta` event, whatever shape the server gives it. */
export function deltaText(data: unknown): string {
  if (typeof data === 'string') return data;
  if (data && typeof data === 'object') {
    const d = data as { text?: unknown; delta?: unknown; content?: unknown };
    for (const v of [d.text, d.delta, d.content]) if (typeof v === 'string') return v;
  }
  return '';
}

export class AiClient {
  constructor(private readonly host: AiHost) {}

  /** Starts a chat completion and returns its text chunks as they arrive. */
  chat(messages: ChatMessage[], opts: ChatOptions = {}): ChatStream {
    const host = this.host;
    const ac = new AbortController();
    if (opts.signal) {
      if (opts.signal.aborted) ac.abort();
      else opts.signal.addEventListener('abort', () => ac.abort(), { once: true });
    }
    let resolveId!: (id: string) => void;
    let rejectId!: (e: unknown) => void;
    const streamId = new Promise<string>((res, rej) => {
      resolveId = res;
      rejectId = rej;
    });
    streamId.catch(() => undefined);
    let id: string | null = null;
    let text = '';
    let resumed = false;

    async function* run(): AsyncGenerator<string> {
      const f = host.fetch();
      const token = await host.token();
      const body: Record<string, unknown> = { messages, format: 'text' };
      if (opts.model) body.model = opts.model;
      if (opts.id) body.id = opts.id;
      let res: Response;
      try {
        res = await fetchWithTimeout(
          f,
          joinUrl(host.url, '/v1/ai/chat'),
          {
            method: 'POST',
            headers: authHeaders(token, { 'Content-Type': 'application/json', Accept: 'text/plain' }),
            body: JSON.stringify(body),
          },
          host.requestTimeoutMs * 6,
          ac.signal,
        );
      } catch (err) {
        rejectId(err);
        throw err;
      }
      if (!res.ok || !res.body) {
        const err = res.ok ? new SwitchboardError('no_body', 'No response body.', false) : await errorFromResponse(res);
        rejectId(err);
        throw err;
      }
      id = res.headers.get('X-Stream-Id');
      if (id) resolveId(id);
      else rejectId(new SwitchboardError('no_stream_id', 'The reply has no X-Stream-Id.', false));
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          const chunk = dec.decode(value, { stream: true });
          if (chunk) {
            text += chunk;
            yield chunk;
          }
        }
        const tail = dec.decode();
        if (tail) {
          text += tail;
          yield tail;
        }
        if (!id || opts.resume === false) return;
        // A body read until the connection closes ends "cleanly" when cut: the
        // channel says whether the answer is complete (a done event) or not.
        yield* resume(id, text.length, true);
        return;
      } catch (err) {
        if (ac.signal.aborted) throw new SwitchboardError('aborted', 'The chat was cancelled.', false);
        if (!id || opts.resume === false) throw networkError(err, false);
      }
      yield* resume(id, text.length, false);
    }

    /**
     * Replays the stream's channel from the start, yielding only what comes after
     * `skip` characters, until its done event. `verify`: the response ended
     * normally; an empty channel then means there is nothing to check.
     */
    async function* resume(sid: string, skip: number, verify: boolean): AsyncGenerator<string> {
      const f = host.fetch();
      const channel = encodeURIComponent(`ai:${sid}`);
      const backoff = new Backoff({ baseMs: 250, capMs: 5000 });
      const limit = opts.resumeTimeoutMs ?? 60000;
      let since = '0';
      let pos = 0;
      let failingSince = 0;
      for (;;) {
        if (ac.signal.aborted) throw new SwitchboardError('aborted', 'The chat was cancelled.', false);
        let r: { messages: Message[]; next: string; reset: boolean };
        try {
          const token = await host.token();
          const res = await fetchWithTimeout(
            f,
            joinUrl(host.url, `/v1/channels/${channel}/messages?since=${since}&limit=1000&wait=${verify && since === '0' ? 0 : 25}`),
            { headers: authHeaders(token), cache: 'no-store' },
            25000 + host.requestTimeoutMs,
            ac.signal,
          );
          if (res.status !== 200) throw await errorFromResponse(res);
          r = await res.json();
          failingSince = 0;
          backoff.reset();
        } catch (err) {
          const e = err as SwitchboardError;
          if (e.code === 'aborted' || (e.retryable === false && e.status !== undefined && e.status < 500)) throw err;
          const now = Date.now();
          if (!failingSince) failingSince = now;
          if (now - failingSince > limit) throw err;
          await new Promise((r2) => setTimeout(r2, backoff.next() ?? 5000));
          continue;
        }
        if (r.reset && since !== '0')
          throw new SwitchboardError('stream_lost', 'The stream history is gone; it cannot be resumed.', false);
        if (verify && since === '0' && !(r.messages ?? []).length) return;
        for (const m of r.messages ?? []) {
          if (m.event === 'delta') {
            const t = deltaText(m.data);
            const from = Math.max(0, skip - pos);
            pos += t.length;
            if (from < t.length) {
              const piece = t.slice(from);
              text += piece;
              resumed = true;
              yield piece;
            }
          } else if (m.event === 'done') {
            return;
          } else if (m.event === 'error') {
            const d = (m.data ?? {}) as { code?: string; message?: string };
            throw new SwitchboardError(d.code ?? 'upstream_error', d.message ?? 'The generation failed.', false);
          }
        }
        if (typeof r.next === 'string' && r.next) since = r.next;
      }
    }

    const gen = run();
    const stream: ChatStream = {
      [Symbol.asyncIterator]: () => gen,
      streamId,
      get text() {
        return text;
      },
      get resumed() {
        return resumed;
      },
      async cancel() {
        const sid = id;
        ac.abort();
        if (sid) {
          const token = await host.token().catch(() => null);
          await host
            .fetch()(joinUrl(host.url, `/v1/ai/streams/${encodeURIComponent(sid)}`), {
              method: 'DELETE',
              headers: authHeaders(token),
            })
            .catch(() => undefined);
        }
      },
    };
    return stream;
  }
}
