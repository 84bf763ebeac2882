// Presence in headless Chromium: two pages in one room see each other's
// cursors move over the browser's own WebSocket, see the other leave when its
// page closes, and a page reload (a new connection for the same user) does not
// produce user.leave/user.enter.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { sleep, startServer, waitFor } from '../integration/lib/server.mjs';
import { launch } from './lib.mjs';

const GRACE_MS = 1500;
let srv, browser;
before(async () => {
  srv = await startServer(['--presence-grace', `${GRACE_MS / 1000}s`]);
  browser = await launch();
});
after(async () => {
  await browser?.close();
  assert.equal((await srv.stop()).code, 0);
});

// Runs in the page on every load (reloads included): joins the room, shows
// the other members' cursors, and sends the pointer position as state.
function client({ room, user, name }) {
  const view = { members: {}, users: [], log: [] };
  window.__presence = view;
  const ws = new WebSocket(`ws://${location.host}/v1/ws`);
  const apply = (e) => {
    view.log.push({ action: e.action, userId: e.member.userId, clientId: e.member.clientId });
    if (e.action === 'enter' || e.action === 'update') view.members[e.member.clientId] = e.member;
    if (e.action === 'leave') delete view.members[e.member.clientId];
    if (e.action === 'user.enter') view.users.push(e.member.userId);
    if (e.action === 'user.leave') view.users = view.users.filter((u) => u !== e.member.userId);
  };
  ws.onopen = () => {
    ws.send(JSON.stringify({ op: 'subscribe', channel: room, presence: true, ref: 1 }));
    ws.send(JSON.stringify({ op: 'presence', channel: room, action: 'enter', userId: user, info: { name }, state: { cursor: null }, ref: 2 }));
  };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.op === 'ok' && m.ref === 2) view.me = m.clientId;
    if (m.op === 'presence.sync') {
      view.members = Object.fromEntries(m.members.map((x) => [x.clientId, x]));
      view.users = m.users;
    }
    if (m.op === 'presence') apply(m);
    if (m.op === 'presence.batch') m.events.forEach(apply);
  };
  document.addEventListener('pointermove', (e) => {
    if (ws.readyState === 1) ws.send(JSON.stringify({ op: 'presence', channel: room, action: 'update', state: { cursor: { x: e.clientX, y: e.clientY } } }));
  });
}

async function join(user, name) {
  const page = await browser.newPage();
  await page.addInitScript(client, { room: 'doc-42', user, name });
  await page.goto(`${srv.base}/healthz`);
  await page.waitForFunction(() => window.__presence?.me);
  return page;
}

// The other members as this page sees them: userId -> cursor.
const others = (page) => page.evaluate(() => {
  const v = window.__presence;
  return Object.fromEntries(Object.values(v.members).filter((m) => m.clientId !== v.me).map((m) => [m.userId, m.state.cursor]));
});

test('two pages see each other move, a reload does not flap the user, a closed page leaves', async () => {
  const alice = await join('alice', 'Alice');
  const bob = await join('bob', 'Bob');
  await waitFor(async () => 'bob' in await others(alice) && 'alice' in await others(bob), { what: 'both present' });

  await alice.mouse.move(100, 120);
  await alice.mouse.move(240, 180, { steps: 8 });
  await waitFor(async () => JSON.stringify((await others(bob)).alice) === JSON.stringify({ x: 240, y: 180 }),
    { what: 'alice\'s cursor at its last position on bob\'s page' });
  await bob.mouse.move(33, 44);
  await waitFor(async () => JSON.stringify((await others(alice)).bob) === JSON.stringify({ x: 33, y: 44 }),
    { what: 'bob\'s cursor on alice\'s page' });

  // Reload bob: his connection closes and a new one enters as the same user.
  const before = (await alice.evaluate(() => window.__presence.log)).length;
  await bob.reload();
  await bob.waitForFunction(() => window.__presence?.me);
  await sleep(GRACE_MS + 700);
  const after = (await alice.evaluate(() => window.__presence.log)).slice(before).filter((e) => e.userId === 'bob');
  // (The two connections may sit on different loops, so either may come first.)
  assert.deepEqual(after.map((e) => e.action).sort(), ['enter', 'leave'], 'the reload is a member leave and enter ...');
  assert.notEqual(after[0].clientId, after[1].clientId, '... of two connections');
  assert.ok(await alice.evaluate(() => window.__presence.users.includes('bob')), '... and bob never left as a user');
  assert.ok('bob' in await others(alice));
  await bob.mouse.move(300, 310);
  await waitFor(async () => JSON.stringify((await others(alice)).bob) === JSON.stringify({ x: 300, y: 310 }),
    { what: 'the reloaded page moves its cursor' });

  // Close alice's page: bob sees her member leave at once, the user after the grace period.
  await alice.close();
  await waitFor(async () => !('alice' in await others(bob)), { timeout: 1000, what: 'alice gone from bob\'s page' });
  await waitFor(() => bob.evaluate(() => !window.__presence.users.includes('alice')), { timeout: GRACE_MS + 1500, what: 'user.leave of alice' });
  await bob.close();
  await waitFor(async () => (await (await fetch(`${srv.base}/v1/channels/doc-42/presence`)).json()).members.length === 0,
    { what: 'room empty' });
});
