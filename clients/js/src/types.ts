/** Shapes shared by the client's modules and its public API (PROTOCOL.md). */

/** One message of a channel, as every transport delivers it. */
export interface Message<T = unknown> {
  /** Opaque cursor: a decimal string that may exceed 2^53. Never convert it to a number. */
  id: string;
  channel: string;
  /** `"message"` unless the publisher named it. */
  event: string;
  data: T;
  /** Server receive time, ms since the epoch. */
  time: number;
}

/** The three transports, in the order the automatic choice tries them. */
export type TransportName = 'ws' | 'sse' | 'longpoll';

/** The seed's three connection states (`ConnectionBadge` takes exactly these). */
export type Status = 'connecting' | 'open' | 'closed';

/** A presence member (PROTOCOL.md "Presence"). */
export interface Member<I = Record<string, unknown>, S = Record<string, unknown>> {
  clientId: string;
  userId?: string | null;
  info: I;
  state: S;
  /** Local receive time of the last event about this member (ms since the epoch). */
  lastSeen: number;
}

/** A presence change as the transports report it. */
export type PresenceEvent =
  | { channel: string; action: 'sync'; members: Omit<Member, 'lastSeen'>[] }
  | {
      channel: string;
      action: 'enter' | 'update' | 'leave' | 'user.enter' | 'user.leave';
      member: Omit<Member, 'lastSeen'>;
    };

/** One queued publish. The key makes a retry after an ambiguous failure land once. */
export interface PublishItem {
  key: string;
  channel: string;
  event?: string;
  data: unknown;
  /** Local enqueue time, ms since the epoch. */
  createdAt: number;
}

/** What a publish resolves to: the message id the server gave it. */
export interface PublishResult {
  id: string;
  channel: string;
}

/** Presence actions a client sends. */
export type PresenceAction = 'enter' | 'update' | 'leave';

/**
 * An error the server or the network reported. `retryable` says whether the same
 * request (with the same idempotency key) may be sent again.
 */
export class SwitchboardError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  readonly status?: number;
  constructor(code: string, message: string, retryable: boolean, status?: number) {
    super(message);
    this.name = 'SwitchboardError';
    this.code = code;
    this.retryable = retryable;
    this.status = status;
  }
}

/** Server error codes after which the same request may succeed later. */
const RETRYABLE_CODES = new Set([
  'rate_limited',
  'storage_failed',
  'internal_error',
  'internal',
  'overloaded',
  'shutting_down',
  'unavailable',
  'too_many_requests',
]);

/** Whether a server error code is worth a retry with the same idempotency key. */
export function isRetryableCode(code: string, status?: number): boolean {
  if (RETRYABLE_CODES.has(code)) return true;
  if (status !== undefined && (status === 408 || status === 429 || status >= 500)) return true;
  return false;
}
