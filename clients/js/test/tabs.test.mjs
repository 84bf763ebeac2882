// Unit tests of one-connection-per-browser leader election (no server, no
// browser): fake Web Locks and BroadcastChannel, fake connections.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createClient, TabLink } from '../dist/index.js';
import { FakeHub, FakeLocks, FakeServer, makeBroadcastChannel, sleep, waitFor } from './lib/fakes.mjs';

function browser() {
  const locks = new FakeLocks();
  const BroadcastChannel = makeBroadcastChannel();
  const server = new FakeServer();
  const hubs = [];
  const tab = (tag) => {
    const got = [];
    const client = createClient({
      url: 'http://app.test',
      share: {
        locks: locks.forTab(tag),
        BroadcastChannel,
        createHub: () => {
          const h = new FakeHub(server, tag);
          hubs.push(h);
          return h;
        },
      },
    });
    const sub = client.subscribe('room', (m) => got.push(m.data.n));
    return { tag, client, got, sub };
  };
  return { locks, server, hubs, tab };
}

const liveHubs = (b) => b.hubs.filter((h) => !h.stopped);

// What a closed tab leaves: nothing. Its channel and timers go with it.
function crash(link) {
  link.bc.close();
  link.running = false;
  if (link.pruneTimer) clearInterval(link.pruneTimer);
  for (const p of link.pending.values()) clearTimeout(p.timer);
}

test('tabs elect one leader; every tab gets every message over its one connection', async () => {
  const b = browser();
  const tabs = ['t1', 't2', 't3', 't4'].map(b.tab);
  await waitFor(() => tabs.every((t) => t.client.status.status === 'open'), { what: 'all tabs open' });
  assert.equal(b.hubs.length, 1, 'one connection');
  assert.equal(tabs.filter((t) => t.client.isLeader).length, 1, 'one leader');
  assert.equal(tabs[0].client.isLeader, true, 'the first tab leads');
  assert.deepEqual(tabs.map((t) => t.client.status.shared), [false, true, true, true]);
  for (let n = 0; n < 20; n++) b.server.publish({ key: `s${n}`, channel: 'room', data: { n } });
  await waitFor(() => tabs.every((t) => t.got.length === 20), { what: 'all messages' });
  for (const t of tabs) assert.deepEqual(t.got, [...Array(20).keys()]);
  for (const t of tabs) t.client.close();
});

test('a follower publishes through the leader; the result comes back to it', async () => {
  const b = browser();
  const [t1, t2] = ['a', 'b'].map(b.tab);
  await waitFor(() => t2.client.status.status === 'open');
  const r = await t2.client.publish('room', { n: 7 });
  assert.match(r.id, /^\d+$/);
  await waitFor(() => t1.got.length === 1 && t2.got.length === 1);
  assert.equal(b.server.publishCalls, 1);
  t1.client.close();
  t2.client.close();
});

test('the leader closes: the next tab takes over, resumes without loss or duplicates', async () => {
  const b = browser();
  const tabs = ['x1', 'x2', 'x3'].map(b.tab);
  await waitFor(() => tabs.every((t) => t.client.status.status === 'open'));
  let n = 0;
  const pub = () => b.server.publish({ key: `p${n}`, channel: 'room', data: { n: n++ } });
  for (let i = 0; i < 10; i++) pub();
  await waitFor(() => tabs.every((t) => t.got.length === 10));
  tabs[0].client.close(); // the leader goes away (says bye, releases the lock)
  for (let i = 0; i < 10; i++) pub(); // published while nobody holds a connection
  await waitFor(() => tabs[1].client.isLeader || tabs[2].client.isLeader, { what: 'a new leader' });
  await waitFor(() => tabs.slice(1).every((t) => t.got.length === 20), { what: 'messages after hand-over' });
  for (let i = 0; i < 5; i++) pub();
  await waitFor(() => tabs.slice(1).every((t) => t.got.length === 25));
  for (const t of tabs.slice(1)) assert.deepEqual(t.got, [...Array(25).keys()], 'each once, in order');
  assert.equal(liveHubs(b).length, 1, 'still one connection');
  for (const t of tabs) t.client.close();
});

test('publishes in flight when the leader dies are re-sent to the new leader and land once', async () => {
  const b = browser();
  const [t1, t2] = ['l', 'f'].map(b.tab);
  await waitFor(() => t2.client.status.status === 'open');
  // Make the leader's publish slow so the crash happens with requests open.
  const leaderHub = b.hubs[0];
  const slow = leaderHub.publish.bind(leaderHub);
  leaderHub.publish = (item) => slow(item).then((r) => sleep(50).then(() => r));
  const ps = [];
  for (let i = 0; i < 10; i++) ps.push(t2.client.publish('room', { n: i }));
  await sleep(20); // some reached the fake server, their replies are not back yet
  // Crash: the tab's locks go, its channel closes, no goodbye.
  leaderHub.stop();
  crash(t1.client['link']);
  b.locks.crash('l');
  const results = await Promise.all(ps);
  assert.equal(t2.client.isLeader, true);
  assert.equal(new Set(results.map((r) => r.id)).size, 10, 'ten distinct messages');
  const stored = b.server.history.get('room').map((m) => m.data.n);
  assert.deepEqual(stored, [...Array(10).keys()], 'each stored once, in order');
  assert.ok(b.server.publishCalls > 10, `some were sent twice and deduplicated (${b.server.publishCalls} calls)`);
  await waitFor(() => t2.got.length === 10);
  assert.deepEqual(t2.got, [...Array(10).keys()]);
  t2.client.close();
});

test('a tab that vanishes without a goodbye is pruned by the leader (its channels dropped)', async () => {
  const locks = new FakeLocks();
  const BC = makeBroadcastChannel();
  const server = new FakeServer();
  const hubs = [];
  const mk = (tag) =>
    new TabLink({
      name: 'p',
      tabId: tag,
      locks: locks.forTab(tag),
      BroadcastChannel: BC,
      createHub: () => {
        const h = new FakeHub(server, tag);
        hubs.push(h);
        return h;
      },
      cursorOf: () => undefined,
      pruneMs: 20,
    });
  const leader = mk('L');
  leader.start();
  await waitFor(() => leader.isLeader);
  const f = mk('F');
  f.start();
  f.want('only-f', {});
  f.presence('only-f', 'enter', { name: 'F' }, { x: 1 }).catch(() => undefined);
  await waitFor(() => hubs[0].wants.has('only-f'), { what: 'the follower channel' });
  await waitFor(() => hubs[0].presenceCalls.some((c) => c[1] === 'enter'));
  // The follower tab dies: its lock is released, nothing is said.
  crash(f);
  locks.crash('F');
  // Pruning waits until the tab has been silent a while (a new tab may not hold its lock yet).
  leader['tabs'].get('F').seen -= 10000;
  await waitFor(() => !hubs[0].wants.has('only-f'), { what: 'pruned channel' });
  assert.ok(hubs[0].presenceCalls.some((c) => c[0] === 'only-f' && c[1] === 'leave'), 'its presence left');
  leader.stop();
});

test('presence through one connection: enter with the first tab, leave with the last', async () => {
  const b = browser();
  const [t1, t2] = ['p1', 'p2'].map(b.tab);
  await waitFor(() => t2.client.status.status === 'open');
  const p1 = t1.client.presence('room', { info: { id: 'u', name: 'A' } });
  const p2 = t2.client.presence('room', { info: { id: 'u', name: 'A' } });
  await p1.enter({ cursor: null });
  await p2.enter({ cursor: { x: 1, y: 2 } });
  const hub = b.hubs[0];
  await waitFor(() => hub.presenceCalls.filter((c) => c[1] === 'enter').length === 2);
  await p1.leave();
  await sleep(20);
  assert.equal(hub.presenceCalls.filter((c) => c[1] === 'leave').length, 0, 'p2 is still in');
  await p2.leave();
  await waitFor(() => hub.presenceCalls.filter((c) => c[1] === 'leave').length === 1);
  p1.close();
  p2.close();
  t1.client.close();
  t2.client.close();
});
