/** Small helpers with no dependencies, usable in browsers and Node 20+. */

/**
 * Orders two message ids. Ids are decimal strings of a 64-bit sequence, larger
 * than a double holds exactly, so they are compared as digit strings (length,
 * then digits) and never converted to numbers.
 */
export function compareIds(a: string, b: string): number {
  const x = stripZeros(a);
  const y = stripZeros(b);
  if (x.length !== y.length) return x.length < y.length ? -1 : 1;
  return x < y ? -1 : x > y ? 1 : 0;
}

function stripZeros(s: string): string {
  let i = 0;
  while (i < s.length - 1 && s.charCodeAt(i) === 48) i++;
  return i ? s.slice(i) : s;
}

/** A random 128-bit id in hex; crypto.getRandomValues works in insecure contexts too. */
export function randomId(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

/**
 * The `exp` claim of a JWT in ms since the epoch, or null when the token is not
 * a JWT or has none. The signature is not checked: this only schedules a refresh.
 */
export function tokenExpiry(token: string | null | undefined): number | null {
  if (!token) return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.exp === 'number' ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** Turns an http(s) base URL into the ws(s) one. */
export function toWsUrl(base: string): string {
  return base.replace(/^http(s?):\/\//i, (_m, s) => `ws${s}://`);
}

/** Joins a base URL and a path without doubling the slash. */
export function joinUrl(base: string, path: string): string {
  return base.replace(/\/+$/, '') + path;
}

/** A timer handle type that works for both DOM and Node typings. */
export type Timer = ReturnType<typeof setTimeout>;

/** Promise with its resolve/reject exposed. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}

/** Creates a Deferred. */
export function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
