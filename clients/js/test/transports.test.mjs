// Issue 5: transport choice and fallback, reset surfaced, tokens refreshed
// before they expire, and the browser's online/offline events, against the
// real server.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';
import { Proxy, Server, WebSocket, freePort, sdk, sleep, waitFor } from './lib/harness.mjs';

let srv, createClient;
before(async () => {
  ({ createClient } = await sdk());
  srv = await new Server(['--heartbeat', '1s', '--history-size', '5']).start();
});
after(async () => {
  await srv?.stop();
});

const base = { WebSocket, heartbeatMs: 1000, sseHeartbeatMs: 1000, longPollWaitS: 2, requestTimeoutMs: 1500 };

async function roundTrip(c, channel, n = 5) {
  const got = [];
  const sub = c.subscribe(channel, (m) => got.push(m.data.n));
  await waitFor(() => c.status.status === 'open');
  await sleep(300);
  for (let i = 0; i < n; i++) await c.publish(channel, { n: i });
  await waitFor(() => got.length >= n, { what: `${channel} round trip` });
  sub.unsubscribe();
  return got;
}

test('WebSocket blocked: falls back to SSE with HTTP publish; SSE blocked too: long-poll', async () => {
  const proxy = await new Proxy(srv.port).listen();
  let upgrades = 0;
  let sse = 0;
  let blockSse = false;
  proxy.filter = (head) => {
    if (/^GET [^\r]*\r\n(?:[^\r]*\r\n)*upgrade: websocket/im.test(head)) {
      upgrades++;
      return false;
    }
    if (head.startsWith('GET /v1/sse')) {
      sse++;
      return !blockSse;
    }
    return true;
  };
  const a = createClient({ url: proxy.base, ...base });
  assert.deepEqual(await roundTrip(a, 'fb-1'), [0, 1, 2, 3, 4]);
  assert.equal(a.status.transport, 'sse');
  assert.ok(upgrades >= 1, 'WebSocket was tried first');
  a.close();
  blockSse = true;
  const b = createClient({ url: proxy.base, ...base });
  assert.deepEqual(await roundTrip(b, 'fb-2'), [0, 1, 2, 3, 4]);
  assert.equal(b.status.transport, 'longpoll');
  assert.ok(sse >= 2, 'SSE was tried before long-poll');
  b.close();
  await proxy.close();
});

test('a forced transport is the only one tried', async () => {
  const proxy = await new Proxy(srv.port).listen();
  let upgrades = 0;
  proxy.filter = (head) => {
    if (/upgrade: websocket/i.test(head)) upgrades++;
    return true;
  };
  for (const tr of ['sse', 'longpoll']) {
    const c = createClient({ url: proxy.base, ...base, transports: tr });
    assert.deepEqual(await roundTrip(c, `forced-${tr}`), [0, 1, 2, 3, 4]);
    assert.equal(c.status.transport, tr);
    c.close();
  }
  assert.equal(upgrades, 0);
  const w = createClient({ url: proxy.base, ...base, transports: ['ws'] });
  await roundTrip(w, 'forced-ws');
  assert.equal(w.status.transport, 'ws');
  w.close();
  await proxy.close();
});

test('after a fallback, a later reconnect goes back to WebSocket once it works again', async () => {
  const proxy = await new Proxy(srv.port).listen();
  let block = true;
  proxy.filter = (head) => !(block && /upgrade: websocket/i.test(head));
  const c = createClient({ url: proxy.base, ...base, upgradeAfterMs: 300, reconnect: { baseMs: 200 } });
  c.subscribe('up-keep', () => {}); // a stream to cut
  await roundTrip(c, 'up-1');
  assert.equal(c.status.transport, 'sse');
  block = false;
  await sleep(400);
  proxy.cut();
  await waitFor(() => c.status.status === 'open' && c.status.transport === 'ws', { what: 'back on ws' });
  assert.deepEqual(await roundTrip(c, 'up-2'), [0, 1, 2, 3, 4]);
  c.close();
  await proxy.close();
});

for (const tr of ['ws', 'sse', 'longpoll']) {
  test(`${tr}: resuming from a cursor older than the kept history surfaces a reset, then the kept messages`, async () => {
    const channel = `gap-${tr}`;
    const ids = [];
    for (let n = 0; n < 20; n++) ids.push((await srv.publish(channel, { n })).id);
    const c = createClient({ url: srv.base, ...base, transports: tr });
    const got = [];
    const resets = [];
    const clientResets = [];
    c.on('reset', (r) => clientResets.push(r));
    c.subscribe(channel, (m) => got.push(m.data.n), { since: ids[0], onReset: (r) => resets.push(r) });
    await waitFor(() => got.length >= 5, { what: 'kept history' });
    await sleep(200);
    assert.deepEqual(resets, ['history_gap']);
    assert.deepEqual(clientResets, [{ channel, reason: 'history_gap' }]);
    assert.deepEqual(got, [15, 16, 17, 18, 19], 'the 5 kept messages, once');
    // A cursor inside the kept history resumes with no reset.
    const d = createClient({ url: srv.base, ...base, transports: tr });
    const got2 = [];
    const resets2 = [];
    d.subscribe(channel, (m) => got2.push(m.data.n), { since: ids[16], onReset: (r) => resets2.push(r) });
    await waitFor(() => got2.length >= 3);
    await sleep(200);
    assert.deepEqual(got2, [17, 18, 19]);
    assert.deepEqual(resets2, []);
    c.close();
    d.close();
  });
}

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
function jwt(secret, claims) {
  const h = b64({ alg: 'HS256', typ: 'JWT' });
  const p = b64(claims);
  const sig = crypto.createHmac('sha256', secret).update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${sig}`;
}

for (const tr of ['ws', 'sse']) {
  test(`${tr}: getToken before every connect and before expiry; no 401 loop, no loss across refreshes`, { timeout: 60000 }, async (t) => {
    const secret = 'sdk-test-secret';
    const auth = await new Server(['--jwt-secret', secret, '--heartbeat', '1s']).start();
    try {
      const calls = [];
      const minted = [];
      const getToken = (reason) => {
        const exp = Math.floor(Date.now() / 1000) + 4;
        calls.push({ reason, at: Date.now() });
        minted.push(exp * 1000);
        return jwt(secret, { sub: 'u1', exp, channels: ['tok-*'], publish: ['tok-*'] });
      };
      const c = createClient({ url: auth.base, ...base, transports: tr, getToken, tokenRefreshMarginMs: 1500 });
      const got = [];
      const drops = [];
      c.onStatus((s) => s.status !== 'open' && s.reason && drops.push(s.reason));
      c.subscribe(`tok-${tr}`, (m) => got.push(m.data.n));
      await waitFor(() => c.status.status === 'open');
      await sleep(200);
      let n = 0;
      const end = Date.now() + 9000;
      while (Date.now() < end) {
        await c.publish(`tok-${tr}`, { n: n++ });
        await sleep(50);
      }
      await waitFor(() => got.length >= n, { timeout: 10000, what: 'all messages' });
      t.diagnostic(`getToken calls: ${calls.map((x) => x.reason).join(', ')}; drops: ${drops.join(', ')}`);
      assert.equal(calls[0].reason, 'connect');
      assert.ok(calls.filter((x) => x.reason === 'expiring').length >= 2, 'refreshed before expiry, repeatedly');
      for (let i = 1; i < calls.length; i++)
        assert.ok(calls[i].at < minted[i - 1], `refresh ${i} came before the previous token expired`);
      assert.ok(!drops.includes('unauthorized') && !drops.includes('http_401'), 'never refused');
      assert.deepEqual(got, [...Array(n).keys()], 'every message once, in order, across token refreshes');
      c.close();
    } finally {
      await auth.stop();
    }
  });
}

test('an expired token at connect: the next attempt asks getToken again and gets in', async () => {
  const secret = 'sdk-test-secret-2';
  const auth = await new Server(['--jwt-secret', secret]).start();
  try {
    const reasons = [];
    let first = true;
    const getToken = (reason) => {
      reasons.push(reason);
      const exp = Math.floor(Date.now() / 1000) + (first ? -60 : 60);
      first = false;
      return jwt(secret, { sub: 'u2', exp, channels: ['*'], publish: ['*'] });
    };
    const c = createClient({ url: auth.base, ...base, getToken, reconnect: { baseMs: 200 } });
    const got = await roundTrip(c, 'expired-first', 3);
    assert.deepEqual(got, [0, 1, 2]);
    assert.equal(reasons[0], 'connect');
    assert.ok(reasons.length >= 2 && reasons.includes('rejected'), `asked again after the refusal (${reasons})`);
    c.close();
  } finally {
    await auth.stop();
  }
});

test('offline event: closes at once and queues; online event: reconnects without waiting and flushes', async () => {
  const target = new EventTarget();
  const saved = {
    add: globalThis.addEventListener,
    remove: globalThis.removeEventListener,
    nav: Object.getOwnPropertyDescriptor(globalThis, 'navigator'),
  };
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  Object.defineProperty(globalThis, 'navigator', { value: { onLine: true }, configurable: true, writable: true });
  try {
    const c = createClient({ url: srv.base, ...base, transports: 'ws' });
    const w = createClient({ url: srv.base, ...base, transports: 'ws' });
    const got = [];
    w.subscribe('net', (m) => got.push(m.data.n));
    await waitFor(() => c.status.status === 'open' && w.status.status === 'open');
    await sleep(200);
    target.dispatchEvent(new Event('offline'));
    assert.deepEqual([c.status.status, c.status.reason], ['closed', 'offline']);
    const ps = [0, 1, 2].map((n) => c.publish('net', { n }));
    await sleep(300);
    assert.equal(got.length, 0, 'nothing sent while offline');
    const t0 = Date.now();
    target.dispatchEvent(new Event('online'));
    await waitFor(() => c.status.status === 'open');
    assert.ok(Date.now() - t0 < 500, 'no backoff wait after coming online');
    await Promise.all(ps);
    await waitFor(() => got.length === 3);
    assert.deepEqual(got, [0, 1, 2]);
    c.close();
    w.close();
  } finally {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
    if (saved.nav) Object.defineProperty(globalThis, 'navigator', saved.nav);
    else delete globalThis.navigator;
  }
});

test('the retry limit: gives up and says so; connect() starts over', async () => {
  const later = new Server([]);
  later.port = await freePort();
  const dead = `http://127.0.0.1:${later.port}`;
  const c = createClient({ url: dead, ...base, transports: 'ws', reconnect: { baseMs: 100, capMs: 200, maxRetries: 3 } });
  const seen = [];
  c.onStatus((s) => seen.push(`${s.status}:${s.reason ?? ''}`));
  await waitFor(() => c.status.status === 'closed', { timeout: 10000, what: 'give up' });
  assert.equal(c.status.reason, 'retries_exhausted');
  assert.ok(seen.some((s) => s.startsWith('connecting:')), 'it tried');
  const retries = seen.filter((s) => s.startsWith('connecting:connect')).length;
  assert.ok(retries >= 3);
  await later.start();
  c.connect();
  await waitFor(() => c.status.status === 'open', { what: 'open after starting over' });
  c.close();
  await later.stop();
});

test('sse: adding channels restarts the stream without losing or repeating messages, and a live channel gets no old ones', { timeout: 30000 }, async () => {
  const c = createClient({ url: srv.base, ...base, transports: 'sse' });
  const a = [];
  c.subscribe('sse-a', (m) => a.push(m.data.n));
  await waitFor(() => c.status.status === 'open');
  await sleep(200);
  let n = 0;
  for (; n < 5; n++) await srv.publish('sse-a', { n });
  await waitFor(() => a.length === 5);
  // Newer than the stream's cursor (the last message of sse-a), older than the subscription.
  for (let k = 0; k < 5; k++) await srv.publish('sse-old', { n: -1 - k });
  const old = [];
  c.subscribe('sse-old', (m) => old.push(m.data.n));
  await sleep(300);
  let stop = false;
  const pump = (async () => {
    while (!stop) {
      await srv.publish('sse-a', { n: n++ });
      await sleep(15);
    }
  })();
  await waitFor(() => a.length >= 15);
  const others = [];
  for (const ch of ['sse-b', 'sse-c', 'sse-d']) {
    c.subscribe(ch, (m) => others.push(m.data));
    await sleep(60);
  }
  await sleep(300);
  await srv.publish('sse-old', { n: 100 });
  await srv.publish('sse-d', 'd1');
  stop = true;
  await pump;
  await waitFor(() => a.length >= n && old.length >= 1 && others.length >= 1, { what: 'all' });
  await sleep(200);
  assert.deepEqual(a, [...Array(n).keys()], 'the first channel lost and repeated nothing across the restarts');
  assert.deepEqual(old, [100], 'a live subscription got no old messages');
  assert.deepEqual(others, ['d1']);
  c.close();
});
