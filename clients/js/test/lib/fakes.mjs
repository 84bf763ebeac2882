// In-process stand-ins for the browser's Web Locks and BroadcastChannel, and a
// fake connection (hub) over a fake server, for leader-election unit tests.
import { Emitter, StatusStore, SwitchboardError, compareIds } from '../../dist/index.js';

/** Web Locks with exclusive locks, a FIFO queue per name, abort signals and query(). */
export class FakeLocks {
  constructor() {
    this.held = new Map();
    this.queues = new Map();
  }
  /** A view whose locks are tagged, so crash(tag) can release them as a dying tab would. */
  forTab(tag) {
    return {
      request: (name, opts, cb) => this.request(name, opts, cb, tag),
      query: () => this.query(),
    };
  }
  request(name, opts, cb, tag = null) {
    return new Promise((resolve, reject) => {
      const e = { cb, resolve, reject, tag };
      if (opts?.signal?.aborted) return reject(new Error('AbortError'));
      opts?.signal?.addEventListener('abort', () => {
        const q = this.queues.get(name) ?? [];
        const i = q.indexOf(e);
        if (i >= 0) {
          q.splice(i, 1);
          reject(new Error('AbortError'));
        }
      });
      if (!this.queues.has(name)) this.queues.set(name, []);
      this.queues.get(name).push(e);
      this.pump(name);
    });
  }
  pump(name) {
    if (this.held.has(name)) return;
    const q = this.queues.get(name);
    if (!q?.length) return;
    const e = q.shift();
    this.held.set(name, e);
    const release = (ok, v) => {
      if (this.held.get(name) !== e) return;
      this.held.delete(name);
      ok ? e.resolve(v) : e.reject(v);
      this.pump(name);
    };
    e.release = release;
    Promise.resolve()
      .then(() => e.cb({ name }))
      .then((v) => release(true, v), (err) => release(false, err));
  }
  async query() {
    return { held: [...this.held.keys()].map((name) => ({ name })) };
  }
  /** Releases every lock of a tab and drops its queued requests, as the browser does for a closed tab. */
  crash(tag) {
    for (const [name, q] of this.queues) this.queues.set(name, q.filter((e) => e.tag !== tag));
    for (const [, e] of [...this.held]) if (e.tag === tag) e.release(true, undefined);
  }
}

/** A BroadcastChannel class whose instances talk to each other in this process (never to themselves). */
export function makeBroadcastChannel() {
  const byName = new Map();
  return class FakeBroadcastChannel {
    constructor(name) {
      this.name = name;
      this.onmessage = null;
      this.closed = false;
      if (!byName.has(name)) byName.set(name, new Set());
      byName.get(name).add(this);
    }
    postMessage(data) {
      if (this.closed) throw new Error('InvalidStateError: closed');
      const copy = structuredClone(data);
      for (const o of byName.get(this.name))
        if (o !== this) setTimeout(() => { if (!o.closed) o.onmessage?.({ data: copy }); }, 0);
    }
    close() {
      this.closed = true;
      byName.get(this.name).delete(this);
    }
  };
}

/** A server with channels, history and idempotency keys. */
export class FakeServer {
  constructor() {
    this.seq = 1763927342123000000n;
    this.history = new Map();
    this.keys = new Map();
    this.hubs = new Set();
    this.publishCalls = 0;
  }
  publish(item) {
    this.publishCalls++;
    if (this.keys.has(item.key)) return this.keys.get(item.key);
    const m = { id: String(++this.seq), channel: item.channel, event: item.event ?? 'message', data: item.data, time: Date.now() };
    if (!this.history.has(m.channel)) this.history.set(m.channel, []);
    this.history.get(m.channel).push(m);
    const r = { id: m.id, channel: m.channel };
    this.keys.set(item.key, r);
    for (const h of this.hubs) h.deliver(m);
    return r;
  }
  after(channel, since) {
    return (this.history.get(channel) ?? []).filter((m) => since === undefined || compareIds(m.id, since) > 0);
  }
}

/** A hub (connection) to the FakeServer, implementing the Link interface. */
export class FakeHub {
  constructor(server, name) {
    this.server = server;
    this.name = name;
    this.status = new StatusStore();
    this.events = new Emitter();
    this.wants = new Map();
    this.cursors = new Map();
    this.presenceCalls = [];
    this.open = false;
  }
  start() {
    this.status.dispatch({ type: 'start' });
    setTimeout(() => {
      if (this.stopped) return;
      this.open = true;
      this.server.hubs.add(this);
      this.status.dispatch({ type: 'open', transport: 'sse' });
      for (const [ch, o] of this.wants) this.replay(ch, o.since);
      this.events.emit('open', 'sse');
    }, 5);
  }
  stop() {
    this.stopped = true;
    this.open = false;
    this.server.hubs.delete(this);
    this.status.dispatch({ type: 'stop' });
  }
  want(ch, opts) {
    if (this.wants.has(ch)) return;
    this.wants.set(ch, opts);
    if (this.open) this.replay(ch, opts.since);
  }
  unwant(ch) {
    this.wants.delete(ch);
    this.cursors.delete(ch);
  }
  replay(ch, since) {
    const from = this.cursors.get(ch) ?? since;
    for (const m of this.server.after(ch, from)) this.deliver(m);
  }
  deliver(m) {
    if (!this.open || !this.wants.has(m.channel)) return;
    const c = this.cursors.get(m.channel);
    if (c !== undefined && compareIds(m.id, c) <= 0) return;
    this.cursors.set(m.channel, m.id);
    this.events.emit('message', m);
  }
  publish(item) {
    if (!this.open) return Promise.reject(new SwitchboardError('not_connected', 'Not connected.', true));
    return new Promise((resolve) => setTimeout(() => resolve(this.server.publish(item)), 2));
  }
  presence(ch, action, info, state) {
    this.presenceCalls.push([ch, action, info, state]);
    return Promise.resolve({});
  }
  reconnectNow() {}
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(pred, { timeout = 5000, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  while (Date.now() < end) {
    if (await pred()) return;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}
