/**
 * The connection status observable: the seed's three states plus why, when the
 * next retry happens and over which transport. The transitions are a pure
 * reducer so they are testable on their own.
 */
import type { Status, TransportName } from './types.js';

/** A snapshot of the connection's status. */
export interface StatusInfo {
  status: Status;
  /** Why the last change happened (e.g. `heartbeat_timeout`, `offline`), null when open. */
  reason: string | null;
  /** When the next connection attempt starts (ms since the epoch), if one is scheduled. */
  nextRetryAt: number | null;
  /** Failed attempts in a row. */
  attempt: number;
  /** The transport in use or being tried. */
  transport: TransportName | null;
  /** True in a tab that shares another tab's connection. */
  shared: boolean;
}

/** Inputs to the state machine. */
export type StatusEvent =
  | { type: 'start' }
  | { type: 'attempt'; attempt: number; transport: TransportName | null }
  | { type: 'open'; transport: TransportName }
  | { type: 'drop'; reason: string }
  | { type: 'retry'; reason: string; at: number; attempt: number }
  | { type: 'offline' }
  | { type: 'online' }
  | { type: 'give-up'; reason: string }
  | { type: 'stop' }
  /** Copy another status as is (a follower tab shows its leader's). */
  | { type: 'mirror'; info: StatusInfo };

/** The status before `connect()`. */
export const INITIAL_STATUS: StatusInfo = Object.freeze({
  status: 'closed',
  reason: 'not_started',
  nextRetryAt: null,
  attempt: 0,
  transport: null,
  shared: false,
}) as StatusInfo;

/**
 * The transition function. Terminal states (`stop`, `give-up`) only leave on
 * `start`; `offline` only leaves on `online` or `start`.
 */
export function reduceStatus(s: StatusInfo, e: StatusEvent): StatusInfo {
  const terminal = s.status === 'closed' && s.reason !== 'offline';
  switch (e.type) {
    case 'start':
      return { ...s, status: 'connecting', reason: null, nextRetryAt: null, attempt: 0 };
    case 'mirror':
      return { ...e.info };
    case 'stop':
      return { ...s, status: 'closed', reason: 'closed_by_client', nextRetryAt: null };
    case 'offline':
      if (terminal) return s;
      return { ...s, status: 'closed', reason: 'offline', nextRetryAt: null };
    case 'online':
      if (s.status === 'closed' && s.reason === 'offline')
        return { ...s, status: 'connecting', reason: 'online', nextRetryAt: null, attempt: 0 };
      return s;
    default:
      break;
  }
  if (s.status === 'closed') return s; // stopped, gave up or offline: ignore transport noise
  switch (e.type) {
    case 'attempt':
      return { ...s, status: 'connecting', nextRetryAt: null, attempt: e.attempt, transport: e.transport };
    case 'open':
      return { ...s, status: 'open', reason: null, nextRetryAt: null, attempt: 0, transport: e.transport };
    case 'drop':
      return { ...s, status: 'connecting', reason: e.reason, nextRetryAt: null };
    case 'retry':
      return { ...s, status: 'connecting', reason: e.reason, nextRetryAt: e.at, attempt: e.attempt };
    case 'give-up':
      return { ...s, status: 'closed', reason: e.reason, nextRetryAt: null };
  }
  return s;
}

function same(a: StatusInfo, b: StatusInfo): boolean {
  return (
    a.status === b.status &&
    a.reason === b.reason &&
    a.nextRetryAt === b.nextRetryAt &&
    a.attempt === b.attempt &&
    a.transport === b.transport &&
    a.shared === b.shared
  );
}

/** Holds the current status and tells listeners about real changes only. */
export class StatusStore {
  private cur: StatusInfo = INITIAL_STATUS;
  private readonly fns = new Set<(s: StatusInfo) => void>();

  /** The current snapshot (a new object after every change, so React can compare by identity). */
  get(): StatusInfo {
    return this.cur;
  }

  /** Applies an event; returns whether the status changed. */
  dispatch(e: StatusEvent): boolean {
    const next = reduceStatus(this.cur, e);
    if (same(next, this.cur)) return false;
    this.cur = next;
    for (const fn of [...this.fns]) fn(next);
    return true;
  }

  /** Listens to changes; returns the function that stops listening. */
  subscribe(fn: (s: StatusInfo) => void): () => void {
    this.fns.add(fn);
    return () => {
      this.fns.delete(fn);
    };
  }
}
