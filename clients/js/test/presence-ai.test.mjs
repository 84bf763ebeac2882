// Issue 5 against the real server: the presence API (enter/update/leave with
// the client-side throttle, sync after reconnect, no ghosts) and
// client.ai.chat resuming an AI stream through its channel after a drop.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Proxy, Server, WebSocket, sdk, sleep, waitFor } from './lib/harness.mjs';

let srv, createClient;
before(async () => {
  ({ createClient } = await sdk());
  srv = await new Server(['--ai-demo', '--presence-grace', '500ms', '--presence-timeout', '2s']).start();
});
after(async () => {
  await srv?.stop();
});

const base = { WebSocket, heartbeatMs: 500, requestTimeoutMs: 2000, reconnect: { baseMs: 200 } };
const names = (p) => p.others().map((m) => m.info.name).sort();

test('presence: enter, throttled updates (latest state last), leave; self excluded', async () => {
  const a = createClient({ url: srv.base, ...base });
  const b = createClient({ url: srv.base, ...base });
  const pa = a.presence('pres-1', { info: { id: 'alice', name: 'Alice' }, userId: 'alice' });
  const pb = b.presence('pres-1', { info: { id: 'bob', name: 'Bob' }, userId: 'bob' });
  const states = [];
  pb.on('change', () => {
    const al = pb.others().find((m) => m.info.name === 'Alice');
    if (al?.state?.cursor && al.state.cursor.x !== states.at(-1)) states.push(al.state.cursor.x);
  });
  const users = [];
  pb.on('user.enter', (m) => users.push(`+${m.userId}`));
  pb.on('user.leave', (m) => users.push(`-${m.userId}`));
  // Bob first: Alice then enters a room Bob already watches, so he sees her
  // user.enter as an event rather than finding her in his first sync.
  await pb.enter({ cursor: null });
  await waitFor(() => pb.members().length === 1, { what: 'bob synced, seeing himself' });
  await pa.enter({ cursor: null });
  await waitFor(() => names(pb).join() === 'Alice' && names(pa).join() === 'Bob', { what: 'both see each other' });
  const sends = [];
  const t0 = Date.now();
  for (let x = 0; x < 50; x++) {
    pa.update({ cursor: { x, y: 0 } });
    sends.push(Date.now() - t0);
    await sleep(5);
  }
  await waitFor(() => states.at(-1) === 49, { what: 'the latest cursor' });
  assert.ok(states.length < 20, `throttled: ${states.length} updates seen for 50 moves`);
  for (let i = 1; i < states.length; i++) assert.ok(states[i] > states[i - 1], 'in order');
  await pa.leave();
  await waitFor(() => names(pb).length === 0, { what: 'alice left' });
  await waitFor(() => users.includes('-alice'), { what: 'user.leave after the grace period' });
  assert.ok(users.includes('+alice'));
  pa.close();
  pb.close();
  a.close();
  b.close();
});

test('presence: a dropped member reconnects, re-enters with its latest state; no ghost is left', async () => {
  const proxy = await new Proxy(srv.port).listen();
  const a = createClient({ url: proxy.base, ...base });
  const b = createClient({ url: srv.base, ...base });
  const pa = a.presence('pres-2', { info: { name: 'Alice' } });
  const pb = b.presence('pres-2', { info: { name: 'Bob' } });
  await pa.enter({ cursor: { x: 1, y: 1 } });
  await pb.enter({});
  await waitFor(() => names(pb).join() === 'Alice');
  const firstId = pb.others()[0].clientId;
  pa.update({ cursor: { x: 2, y: 2 } });
  await sleep(100);
  proxy.cut();
  await waitFor(() => a.status.status === 'open' && pb.others().length === 1 && pb.others()[0].clientId !== firstId, {
    timeout: 10000,
    what: 'alice back as a new member',
  });
  await sleep(300);
  assert.deepEqual(names(pb), ['Alice'], 'one Alice, no ghost');
  assert.deepEqual(pb.others()[0].state, { cursor: { x: 2, y: 2 } }, 're-entered with the latest state');
  assert.deepEqual(names(pa), ['Bob'], 'the reconnected member got a fresh sync');
  pa.close();
  pb.close();
  a.close();
  b.close();
  await proxy.close();
});

test('presence: a black-holed member is removed by the server, not left as a ghost', { timeout: 30000 }, async () => {
  const proxy = await new Proxy(srv.port).listen();
  const a = createClient({ url: proxy.base, ...base, heartbeatMs: 60000 });
  const b = createClient({ url: srv.base, ...base });
  const pa = a.presence('pres-3', { info: { name: 'Ghost' } });
  const pb = b.presence('pres-3', { info: { name: 'Bob' } });
  await pa.enter({});
  await pb.enter({});
  await waitFor(() => names(pb).join() === 'Ghost');
  proxy.blackhole();
  const t0 = Date.now();
  await waitFor(() => names(pb).length === 0, { timeout: 15000, what: 'ghost removed' });
  assert.ok(Date.now() - t0 < 6000, `removed after ${Date.now() - t0} ms (timeout 2 s)`);
  pa.close();
  pb.close();
  a.close();
  b.close();
  await proxy.close();
});

test('ai.chat streams text chunks; after a cut mid-stream it resumes from ai:{id} with nothing lost or doubled', { timeout: 60000 }, async (t) => {
  const c = createClient({ url: srv.base, ...base });
  const prompt = [{ role: 'user', content: 'Tell me about streaming, please.' }];
  const whole = c.ai.chat(prompt);
  let full = '';
  for await (const chunk of whole) full += chunk;
  assert.ok(full.length > 100, 'an answer came');
  assert.equal(whole.resumed, false);
  const sid = await whole.streamId;
  const hist = await srv.history(`ai:${sid}`);
  assert.equal(hist.messages.map((m) => (m.event === 'delta' ? m.data.text : '')).join(''), full, 'the channel holds the same text');

  const proxy = await new Proxy(srv.port).listen();
  let bytes = 0;
  let cut = false;
  const seen = new WeakMap();
  proxy.onServerData = (d, pair) => {
    // Cut inside the body of the chat reply, once its headers (and X-Stream-Id) went through.
    const st = seen.get(pair) ?? { head: '', chat: false };
    seen.set(pair, st);
    if (!st.head.includes('\r\n\r\n')) {
      st.head += d.toString('latin1');
      st.chat = /x-stream-id/i.test(st.head);
      return true;
    }
    if (!st.chat || cut) return true;
    bytes += d.length;
    if (bytes > 100) {
      cut = true;
      pair.kill();
      return false;
    }
    return true;
  };
  const d = createClient({ url: proxy.base, ...base });
  const s = d.ai.chat(prompt);
  let got = '';
  const chunks = [];
  for await (const chunk of s) {
    got += chunk;
    chunks.push(chunk);
  }
  assert.ok(cut, 'the response was cut');
  assert.equal(s.resumed, true, 'it resumed from the channel');
  const sid2 = await s.streamId;
  const h2 = await srv.history(`ai:${sid2}`);
  const expected = h2.messages.map((m) => (m.event === 'delta' ? m.data.text : '')).join('');
  assert.equal(got, expected, 'every token once');
  assert.equal(got, full, 'the same answer as the uncut stream');
  t.diagnostic(`${chunks.length} chunks, ${got.length} chars, resumed after ${bytes} body bytes`);
  c.close();
  d.close();
  await proxy.close();
});

test('ai.chat: cancel stops the generation; the stream ends', async () => {
  const c = createClient({ url: srv.base, ...base });
  const s = c.ai.chat([{ role: 'user', content: 'A long one, please.' }]);
  let got = '';
  let err = null;
  try {
    for await (const chunk of s) {
      got += chunk;
      if (got.length > 20) await s.cancel();
    }
  } catch (e) {
    err = e;
  }
  assert.ok(!err || err.code === 'aborted', `ended by the cancel (${err?.code})`);
  const sid = await s.streamId;
  await waitFor(async () => (await srv.history(`ai:${sid}`)).messages.some((m) => m.event === 'done'), { what: 'done event' });
  const last = (await srv.history(`ai:${sid}`)).messages.at(-1);
  assert.equal(last.data.reason, 'stopped');
  c.close();
});
