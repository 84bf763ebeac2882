// Chromium's own WebSocket against the real binary: the JSON protocol, room
// broadcast between two pages, and the seeds' useWebSocket/usePresence hooks
// (their code as published) in React pages.
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { publish, startServer } from '../integration/lib/server.mjs';
import { bundle, launch, reactPage } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
let srv, browser, app;
before(async () => {
  // usePresence hardcodes ws://localhost:3001, so this server listens there.
  srv = await startServer([], { port: 3001 });
  browser = await launch();
  app = await bundle(path.join(here, 'seed/app.tsx'));
});
after(async () => {
  await browser?.close();
  assert.equal((await srv.stop()).code, 0);
});

test('Chromium WebSocket: subscribe and publish over the JSON protocol', async () => {
  const page = await browser.newPage();
  await page.goto(`${srv.base}/healthz`);
  const got = page.evaluate(() => new Promise((resolve) => {
    const ws = new WebSocket(`ws://${location.host}/v1/ws`);
    const seen = [];
    ws.onopen = () => ws.send(JSON.stringify({ op: 'subscribe', channel: 'browser-chat', ref: 1 }));
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      seen.push(m.op);
      if (m.op === 'ok' && m.ref === 1) ws.send(JSON.stringify({ op: 'publish', channel: 'browser-chat', data: { hi: 'from chromium' }, ref: 2 }));
      if (m.op === 'message') resolve({ seen, data: m.data });
    };
  }));
  const r = await got;
  assert.deepEqual(r.data, { hi: 'from chromium' });
  const h = await (await fetch(`${srv.base}/v1/channels/browser-chat/messages`)).json();
  assert.deepEqual(h.messages[0].data, { hi: 'from chromium' });
  await page.close();
});

test('room broadcast between two pages with the seed useWebSocket hook', async () => {
  const url = `ws://127.0.0.1:${srv.port}/?room=seedchat`;
  const a = await reactPage(browser, app, { page: 'chat', url });
  const b = await reactPage(browser, app, { page: 'chat', url });
  for (const p of [a, b]) await p.waitForSelector('#status:text("open")');
  await a.evaluate(() => window.sb.send('hello from a'));
  await b.waitForSelector('#msgs li:text("hello from a")');
  await b.evaluate(() => window.sb.send('hi back'));
  await a.waitForSelector('#msgs li:text("hi back")');
  assert.deepEqual(await a.$$eval('#msgs li', (l) => l.map((x) => x.textContent)), ['hi back'], 'no echo to the sender');
  await a.close(); await b.close();
});

test('the seed usePresence hook: cursors move between pages and a closed page leaves', async () => {
  const a = await reactPage(browser, app, { page: 'cursors', room: 'doc1', me: 'alice' });
  const b = await reactPage(browser, app, { page: 'cursors', room: 'doc1', me: 'bob' });
  for (const p of [a, b]) await p.waitForSelector('#others[data-status="open"]', { state: 'attached' });
  await a.evaluate(() => window.sb.updateCursor({ x: 10, y: 20 }));
  await b.waitForSelector('.cursor:text("alice:10,20")');
  await new Promise((r) => setTimeout(r, 80));
  await a.evaluate(() => window.sb.updateCursor({ x: 30, y: 40 }));
  await b.waitForSelector('.cursor:text("alice:30,40")');
  await a.close();
  // Our server sends the {"type":"leave"} the seed client handles, so the
  // cursor goes at once instead of after the hook's 10 s stale sweep.
  await b.waitForFunction(() => document.querySelectorAll('.cursor').length === 0, null, { timeout: 3000 });
  await b.close();
});
