/** The HTTP requests shared by the SSE and long-poll transports and the AI client. */
import type { PublishItem, PublishResult } from '../types.js';
import { SwitchboardError, isRetryableCode } from '../types.js';
import { joinUrl } from '../util.js';
import type { TransportContext } from './transport.js';

/** Percent-encodes a channel name for a path segment. */
export function channelPath(channel: string): string {
  return encodeURIComponent(channel);
}

/** Headers with the bearer token when there is one. */
export function authHeaders(token: string | null, extra: Record<string, string> = {}): Record<string, string> {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** Reads an error reply into a SwitchboardError. */
export async function errorFromResponse(res: Response): Promise<SwitchboardError> {
  let code = `http_${res.status}`;
  let message = `HTTP ${res.status}`;
  try {
    const j = await res.json();
    if (j && j.error && typeof j.error.code === 'string') {
      code = j.error.code;
      message = typeof j.error.message === 'string' ? j.error.message : message;
    }
  } catch {
    /* not JSON: keep the status */
  }
  return new SwitchboardError(code, message, isRetryableCode(code, res.status), res.status);
}

/** A network failure or timeout: the request may or may not have reached the server. */
export function networkError(err: unknown, timedOut: boolean): SwitchboardError {
  if (err instanceof SwitchboardError) return err;
  return new SwitchboardError(
    timedOut ? 'timeout' : 'network_error',
    timedOut ? 'The request timed out.' : `Network error: ${(err as Error)?.message ?? err}`,
    true,
  );
}

/** fetch with a timeout; the timeout and network failures reject with a retryable SwitchboardError. */
export async function fetchWithTimeout(
  f: typeof fetch,
  url: string,
  init: RequestInit,
  timeoutMs: number,
  outer?: AbortSignal,
): Promise<Response> {
  const ac = new AbortController();
  let timedOut = false;
  const t = setTimeout(() => {
    timedOut = true;
    ac.abort();
  }, timeoutMs);
  const onOuter = () => ac.abort();
  outer?.addEventListener('abort', onOuter);
  try {
    return await f(url, { ...init, signal: ac.signal });
  } catch (err) {
    if (outer?.aborted) throw new SwitchboardError('aborted', 'The request was cancelled.', false);
    throw networkError(err, timedOut);
  } finally {
    clearTimeout(t);
    outer?.removeEventListener('abort', onOuter);
  }
}

/** POST /v1/channels/{ch}/messages with the item's Idempotency-Key. */
export async function httpPublish(ctx: TransportContext, item: PublishItem): Promise<PublishResult> {
  const body: Record<string, unknown> = { data: item.data === undefined ? null : item.data };
  if (item.event) body.event = item.event;
  const res = await fetchWithTimeout(
    ctx.fetch,
    joinUrl(ctx.baseUrl, `/v1/channels/${channelPath(item.channel)}/messages`),
    {
      method: 'POST',
      headers: authHeaders(ctx.token, { 'Content-Type': 'application/json', 'Idempotency-Key': item.key }),
      body: JSON.stringify(body),
      cache: 'no-store',
    },
    ctx.requestTimeoutMs,
  );
  if (res.status !== 201 && res.status !== 200) throw await errorFromResponse(res);
  let j: { id?: unknown; channel?: unknown };
  try {
    j = await res.json();
  } catch (err) {
    throw networkError(err, false);
  }
  if (typeof j.id !== 'string') throw new SwitchboardError('bad_reply', 'Publish reply without an id.', true);
  return { id: j.id, channel: typeof j.channel === 'string' ? j.channel : item.channel };
}

/**
 * Runs publishes one at a time in arrival order: two POSTs in flight on two
 * connections could land in either order.
 */
export class SerialPublisher {
  private tail: Promise<unknown> = Promise.resolve();
  constructor(private readonly ctx: TransportContext) {}
  publish(item: PublishItem): Promise<PublishResult> {
    const p = this.tail.then(() => httpPublish(this.ctx, item));
    this.tail = p.catch(() => undefined);
    return p;
  }
}

/** GET /healthz: is the server reachable over plain HTTP? */
export async function probe(ctx: TransportContext, signal?: AbortSignal): Promise<void> {
  const res = await fetchWithTimeout(
    ctx.fetch,
    joinUrl(ctx.baseUrl, '/healthz'),
    { cache: 'no-store' },
    ctx.requestTimeoutMs,
    signal,
  );
  if (!res.ok) throw await errorFromResponse(res);
  await res.text().catch(() => undefined);
}
