/**
 * Reconnect delays: exponential backoff with jitter (seed pattern #6).
 *
 * The nominal delay of attempt n is min(cap, base * 2^n); the actual delay is
 * drawn uniformly within +/-jitter of it. A draw below `base` or above `cap` is
 * mirrored back inside, so no client ever retries faster than the base (which
 * would hammer a restarting server) or waits longer than the cap, and the draws
 * stay spread out instead of piling up on the bounds.
 */
export interface BackoffOptions {
  /** First delay and the floor of every delay, ms. Default 1000. */
  baseMs?: number;
  /** Ceiling of every delay, ms. Default 30000. */
  capMs?: number;
  /** Relative spread, 0..1. Default 0.25 (+/-25 %). */
  jitter?: number;
  /** Failed attempts in a row after which the client gives up. Default Infinity. */
  maxRetries?: number;
  /** A connection that stays up this long resets the schedule, ms. Default 5000. */
  stableMs?: number;
  /** Source of randomness in [0, 1), for tests. Default Math.random. */
  random?: () => number;
}

/** The options with every default filled in. */
export type ResolvedBackoff = Required<BackoffOptions>;

/** Fills in the defaults and checks the numbers. */
export function resolveBackoff(o: BackoffOptions = {}): ResolvedBackoff {
  const r: ResolvedBackoff = {
    baseMs: o.baseMs ?? 1000,
    capMs: o.capMs ?? 30000,
    jitter: o.jitter ?? 0.25,
    maxRetries: o.maxRetries ?? Infinity,
    stableMs: o.stableMs ?? 5000,
    random: o.random ?? Math.random,
  };
  if (!(r.baseMs > 0) || !(r.capMs >= r.baseMs)) throw new RangeError('backoff: need 0 < baseMs <= capMs');
  if (!(r.jitter >= 0 && r.jitter <= 1)) throw new RangeError('backoff: jitter must be within 0..1');
  return r;
}

/** The nominal (un-jittered) delay of attempt n (0-based), ms. */
export function nominalDelay(attempt: number, o: ResolvedBackoff): number {
  return Math.min(o.capMs, o.baseMs * Math.pow(2, Math.min(attempt, 52)));
}

/** The jittered delay of attempt n for a random draw r in [0, 1), ms. */
export function backoffDelay(attempt: number, o: ResolvedBackoff, r: number = o.random()): number {
  const d = nominalDelay(attempt, o);
  let x = d * (1 + o.jitter * (2 * r - 1));
  if (x < o.baseMs) x = 2 * o.baseMs - x;
  if (x > o.capMs) x = 2 * o.capMs - x;
  return Math.round(Math.min(o.capMs, Math.max(o.baseMs, x)));
}

/** Counts failed attempts and hands out the next delay. */
export class Backoff {
  readonly options: ResolvedBackoff;
  private n = 0;

  constructor(options: BackoffOptions = {}) {
    this.options = resolveBackoff(options);
  }

  /** Failed attempts since the last reset. */
  get attempt(): number {
    return this.n;
  }

  /** Whether another retry is allowed. */
  get exhausted(): boolean {
    return this.n >= this.options.maxRetries;
  }

  /** The delay before the next retry (and counts it), or null when the retry limit is reached. */
  next(): number | null {
    if (this.exhausted) return null;
    return backoffDelay(this.n++, this.options);
  }

  /** Back to the first delay: after a connection stayed up, or on a network change. */
  reset(): void {
    this.n = 0;
  }
}
