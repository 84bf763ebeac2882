import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react';
import type {
  ChatMessage,
  ChatOptions,
  Member,
  Message,
  PublishOptions,
  PublishResult,
  StatusInfo,
  SubscribeOptions,
} from '@switchboard/client';
import { useSwitchboard } from './context.js';

/** The seed's connection states. */
export type ConnectionState = 'connecting' | 'open' | 'closed';

const NO_CLIENT: StatusInfo = Object.freeze({
  status: 'connecting',
  reason: 'no_client',
  nextRetryAt: null,
  attempt: 0,
  transport: null,
  shared: false,
}) as StatusInfo;

const noop = () => () => undefined;

/**
 * The connection status: `status` ('connecting' | 'open' | 'closed'), `reason`,
 * `nextRetryAt` (ms since the epoch), `attempt`, `transport`, `shared`.
 */
export function useConnectionStatus(): StatusInfo {
  const client = useSwitchboard();
  const subscribe = useCallback((fn: () => void) => (client ? client.onStatus(fn) : noop()), [client]);
  const get = useCallback(() => (client ? client.status : NO_CLIENT), [client]);
  return useSyncExternalStore(subscribe, get, () => NO_CLIENT);
}

export interface UseChannelOptions extends Omit<SubscribeOptions, 'onReset' | 'onError'> {
  /** Called when the server cannot resume the channel (history gap): refetch your state. */
  onReset?: (reason: string) => void;
}

/**
 * Subscribes to a channel for the component's lifetime. `onMessage` may change
 * on every render without resubscribing. Returns `publish` (queued offline,
 * exactly once) and the connection `status`.
 */
export function useChannel<T = unknown>(
  channel: string | null | undefined,
  onMessage?: (m: Message<T>) => void,
  opts: UseChannelOptions = {},
): { publish: (data: T, o?: PublishOptions) => Promise<PublishResult>; status: ConnectionState } {
  const client = useSwitchboard();
  const status = useConnectionStatus().status;
  const handler = useRef(onMessage);
  handler.current = onMessage;
  const onReset = useRef(opts.onReset);
  onReset.current = opts.onReset;
  const { since, presence } = opts;
  useEffect(() => {
    if (!client || !channel) return;
    const sub = client.subscribe(channel, (m) => handler.current?.(m as Message<T>), {
      since,
      presence,
      onReset: (r) => onReset.current?.(r),
    });
    return () => sub.unsubscribe();
  }, [client, channel, since, presence]);
  const publish = useCallback(
    (data: T, o?: PublishOptions) => {
      if (!client || !channel) return Promise.reject(new Error('switchboard: no client or channel'));
      return client.publish(channel, data, o);
    },
    [client, channel],
  );
  return { publish, status };
}

/** The seed's `ServerEvent`, plus the message id and channel. */
export interface ServerEvent<T = unknown> {
  type: string;
  payload: T;
  timestamp: number;
  id: string;
  channel: string;
}

export interface UseEventStreamOptions {
  /** Only these event names (default: all). */
  events?: string[];
  /** Keep the last N events (default 100, as the seed's `slice(-99)`). */
  limit?: number;
  /** Where to start: a message id, 'start' or 'live' (default). */
  since?: string;
  /** Clear the list when the server says the history is gone (default false: keep it and append). */
  clearOnReset?: boolean;
}

/**
 * Seed pattern #1's `useServerEvents`, on Switchboard: `{ events, status }`,
 * with the same event shape, over any transport, each event once and in order
 * across reconnects.
 */
export function useEventStream<T = unknown>(
  channels: string | string[],
  opts: UseEventStreamOptions = {},
): { events: ServerEvent<T>[]; status: ConnectionState } {
  const client = useSwitchboard();
  const status = useConnectionStatus().status;
  const [events, setEvents] = useState<ServerEvent<T>[]>([]);
  const list = Array.isArray(channels) ? channels : [channels];
  const key = list.join('\n');
  const filter = opts.events?.join('\n') ?? '';
  const limit = opts.limit ?? 100;
  const { since, clearOnReset } = opts;
  useEffect(() => {
    if (!client) return;
    const names = filter ? new Set(filter.split('\n')) : null;
    const subs = key.split('\n').filter(Boolean).map((ch) =>
      client.subscribe(
        ch,
        (m) => {
          if (names && !names.has(m.event)) return;
          const ev: ServerEvent<T> = { type: m.event, payload: m.data as T, timestamp: m.time, id: m.id, channel: m.channel };
          setEvents((prev) => (prev.length >= limit ? [...prev.slice(prev.length - limit + 1), ev] : [...prev, ev]));
        },
        { since, onReset: () => clearOnReset && setEvents([]) },
      ),
    );
    return () => subs.forEach((s) => s.unsubscribe());
  }, [client, key, filter, limit, since, clearOnReset]);
  return { events, status };
}

/** The seed's cursor. */
export interface Cursor {
  x: number;
  y: number;
}

/** The seed's `PresenceUser`. */
export interface PresenceUser {
  id: string;
  name: string;
  color: string;
  cursor: Cursor | null;
  lastSeen: number;
}

export interface UsePresenceOptions {
  /** Minimum interval between cursor sends, ms (default 60, the seed's). */
  throttleMs?: number;
  /** Drop members not heard of for this long, ms (default 0: the server's leave decides). */
  staleMs?: number;
}

/**
 * Seed pattern #5's `usePresence`: `{ others, updateCursor, status }`. Enters
 * the room on mount with the user's id, name and color, sends the cursor at most
 * every 60 ms (the latest position always goes out), leaves on unmount.
 */
export function usePresence(
  roomId: string,
  user: { id: string; name: string; color: string },
  opts: UsePresenceOptions = {},
): { others: PresenceUser[]; updateCursor: (c: Cursor | null) => void; status: ConnectionState; members: Member[] } {
  const client = useSwitchboard();
  const status = useConnectionStatus().status;
  const [members, setMembers] = useState<Member[]>([]);
  const [others, setOthers] = useState<PresenceUser[]>([]);
  const presenceRef = useRef<ReturnType<NonNullable<typeof client>['presence']> | null>(null);
  const { id, name, color } = user;
  const { throttleMs, staleMs } = opts;
  useEffect(() => {
    if (!client) return;
    const p = client.presence<{ id: string; name: string; color: string }, { cursor: Cursor | null }>(roomId, {
      info: { id, name, color },
      userId: id,
      throttleMs,
      staleMs,
    });
    presenceRef.current = p as never;
    const show = (all: Member<{ id: string; name: string; color: string }, { cursor: Cursor | null }>[]) => {
      setMembers(all as Member[]);
      setOthers(
        p.others().map((m) => ({
          id: String(m.info?.id ?? m.userId ?? m.clientId),
          name: String(m.info?.name ?? ''),
          color: String(m.info?.color ?? ''),
          cursor: m.state?.cursor ?? null,
          lastSeen: m.lastSeen,
        })),
      );
    };
    const off = p.on('change', show);
    p.enter({ cursor: null }).catch(() => undefined);
    return () => {
      off();
      p.close();
      presenceRef.current = null;
    };
  }, [client, roomId, id, name, color, throttleMs, staleMs]);
  const updateCursor = useCallback((cursor: Cursor | null) => {
    presenceRef.current?.update({ cursor } as never);
  }, []);
  return { others, updateCursor, status, members };
}

export interface UseAIStreamResult {
  /** The text so far (seed pattern #2's `response`). */
  response: string;
  isStreaming: boolean;
  error: Error | null;
  /** The server's stream id, once known (resume it elsewhere through `ai:{id}`). */
  streamId: string | null;
  /** Whether the stream had to resume from its channel after a drop. */
  resumed: boolean;
  /** Sends a user message (or a whole message list) and streams the answer. */
  send: (input: string | ChatMessage[], opts?: ChatOptions) => Promise<void>;
  /** Stops the generation. */
  stop: () => void;
}

/**
 * Seed pattern #2 on Switchboard: streams an AI answer token by token into
 * `response`, and keeps going through a dropped connection (it resumes from the
 * stream's channel) with no token lost or doubled.
 */
export function useAIStream(): UseAIStreamResult {
  const client = useSwitchboard();
  const [response, setResponse] = useState('');
  const [isStreaming, setIsStreaming] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const [streamId, setStreamId] = useState<string | null>(null);
  const [resumed, setResumed] = useState(false);
  const current = useRef<{ cancel(): Promise<void> } | null>(null);
  useEffect(() => () => void current.current?.cancel(), []);
  const send = useCallback(
    async (input: string | ChatMessage[], opts?: ChatOptions) => {
      if (!client) throw new Error('switchboard: no client');
      const messages = typeof input === 'string' ? [{ role: 'user', content: input }] : input;
      void current.current?.cancel();
      setResponse('');
      setError(null);
      setStreamId(null);
      setResumed(false);
      setIsStreaming(true);
      const stream = client.ai.chat(messages, opts);
      current.current = stream;
      stream.streamId.then(setStreamId, () => undefined);
      try {
        for await (const chunk of stream) {
          if (current.current !== stream) return;
          setResponse((prev) => prev + chunk);
          if (stream.resumed) setResumed(true);
        }
      } catch (err) {
        if (current.current === stream) setError(err as Error);
      } finally {
        if (current.current === stream) {
          setIsStreaming(false);
          current.current = null;
        }
      }
    },
    [client],
  );
  const stop = useCallback(() => {
    const s = current.current;
    current.current = null;
    setIsStreaming(false);
    void s?.cancel();
  }, []);
  return { response, isStreaming, error, streamId, resumed, send, stop };
}
