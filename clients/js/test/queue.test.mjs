// Unit tests of the offline publish queue (no server): order, bounds, key
// de-duplication and localStorage-style persistence.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OfflineQueue, QueueFullError } from '../dist/index.js';

class MemStorage {
  constructor() { this.map = new Map(); this.writes = 0; }
  getItem(k) { return this.map.has(k) ? this.map.get(k) : null; }
  setItem(k, v) { this.writes++; this.map.set(k, String(v)); }
  removeItem(k) { this.map.delete(k); }
}

const item = (n, extra = {}) => ({ key: `k${n}`, channel: 'c', data: { n }, createdAt: n, ...extra });

test('keeps publish order and removes by key', () => {
  const q = new OfflineQueue();
  for (let n = 0; n < 5; n++) assert.equal(q.add(item(n)), true);
  assert.deepEqual(q.items().map((x) => x.data.n), [0, 1, 2, 3, 4]);
  assert.equal(q.peek().key, 'k0');
  assert.equal(q.remove('k2').data.n, 2);
  assert.equal(q.remove('k2'), undefined);
  assert.deepEqual(q.items().map((x) => x.data.n), [0, 1, 3, 4]);
  assert.equal(q.size, 4);
});

test('an item whose key is already queued is not queued twice', () => {
  const q = new OfflineQueue();
  assert.equal(q.add(item(1)), true);
  assert.equal(q.add({ ...item(1), data: 'other' }), false);
  assert.equal(q.size, 1);
  assert.equal(q.items()[0].data.n, 1, 'the first one stays');
  q.remove('k1');
  assert.equal(q.add(item(1)), true, 'after removal the key may be used again');
});

test('bounded: refuses when full, or drops the oldest when asked to', () => {
  const q = new OfflineQueue({ maxSize: 3 });
  for (let n = 0; n < 3; n++) q.add(item(n));
  assert.throws(() => q.add(item(3)), (e) => e instanceof QueueFullError && e.code === 'queue_full');
  assert.equal(q.size, 3);
  const d = new OfflineQueue({ maxSize: 3, overflow: 'drop-oldest' });
  const dropped = [];
  for (let n = 0; n < 5; n++) d.add(item(n), (old) => dropped.push(old.data.n));
  assert.deepEqual(d.items().map((x) => x.data.n), [2, 3, 4]);
  assert.deepEqual(dropped, [0, 1]);
  assert.throws(() => new OfflineQueue({ maxSize: 0 }), RangeError);
});

test('persists to storage and survives a reload in order', () => {
  const storage = new MemStorage();
  const q = new OfflineQueue({ storage, storageKey: 'ob' });
  for (let n = 0; n < 100; n++) q.add(item(n));
  q.remove('k0');
  const saved = JSON.parse(storage.getItem('ob'));
  assert.equal(saved.length, 99);
  const again = new OfflineQueue({ storage, storageKey: 'ob' });
  assert.deepEqual(again.items().map((x) => x.data.n), [...Array(99).keys()].map((n) => n + 1));
  for (const it of [...again.items()]) again.remove(it.key);
  assert.equal(storage.getItem('ob'), null, 'an empty queue leaves nothing behind');
});

test('two queues on one storage key merge instead of overwriting each other', () => {
  const storage = new MemStorage();
  const a = new OfflineQueue({ storage, storageKey: 'ob' });
  const b = new OfflineQueue({ storage, storageKey: 'ob' });
  a.add(item(1));
  b.add(item(2));
  a.add(item(3));
  assert.deepEqual(JSON.parse(storage.getItem('ob')).map((x) => x.key), ['k1', 'k2', 'k3']);
  b.remove('k2');
  assert.deepEqual(JSON.parse(storage.getItem('ob')).map((x) => x.key), ['k1', 'k3']);
  // A queue adopting items another one persisted keeps their keys: a second send is deduplicated by the server.
  const c = new OfflineQueue({ storage, storageKey: 'ob' });
  assert.deepEqual(c.items().map((x) => x.key), ['k1', 'k3']);
  assert.deepEqual(c.load(), [], 'loading again adopts nothing new');
});

test('garbage in storage is ignored; storage failures do not break the memory queue', () => {
  const storage = new MemStorage();
  storage.setItem('ob', '{not json');
  const errors = [];
  const q = new OfflineQueue({ storage, storageKey: 'ob', onStorageError: (e) => errors.push(e) });
  assert.equal(q.size, 0);
  storage.setItem('ob', JSON.stringify([item(1), { bogus: true }, 42, item(2)]));
  assert.deepEqual(new OfflineQueue({ storage, storageKey: 'ob' }).items().map((x) => x.key), ['k1', 'k2']);
  const broken = {
    getItem() { throw new Error('denied'); },
    setItem() { throw new Error('quota'); },
    removeItem() { throw new Error('denied'); },
  };
  const errs = [];
  const m = new OfflineQueue({ storage: broken, onStorageError: (e) => errs.push(e.message) });
  m.add(item(1));
  m.add(item(2));
  m.remove('k1');
  assert.deepEqual(m.items().map((x) => x.key), ['k2']);
  assert.ok(errs.length >= 3, 'failures are reported');
  assert.ok(errors.length >= 1);
});
