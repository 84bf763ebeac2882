// The built-in console page at GET / in headless Chromium against the real
// binary: served with its headers and a working hash CSP (no console errors),
// the polling dashboard, SSE subscribe + HTTP publish in the channels
// playground, two consoles seeing each other's cursor through a raw room, the
// WebSocket panel, and the AI panel's message when no upstream is set. A
// screenshot lands in build/console-shots/ (not in git) for a human look.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { publish, rawRequest, startServer } from '../integration/lib/server.mjs';
import { launch } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const shots = path.resolve(here, '../../build/console-shots');

let srv, browser;
const contexts = new Set();
before(async () => {
  srv = await startServer();
  browser = await launch();
});
after(async () => {
  // A failed test leaves its pages open; close them so they do not haunt the
  // next test (a stray console stays in the cursor room).
  for (const ctx of contexts) await ctx.close().catch(() => {});
  await browser?.close();
  assert.equal((await srv.stop()).code, 0);
});

// A console page with every console error and uncaught exception recorded
// (a CSP violation, e.g. a stale script hash, shows up here too).
async function openConsole({ hash = '', scheme = 'light', width = 1440, height = 1000 } = {}) {
  const ctx = await browser.newContext({ viewport: { width, height }, colorScheme: scheme });
  contexts.add(ctx);
  ctx.on('close', () => contexts.delete(ctx));
  const page = await ctx.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  const res = await page.goto(`${srv.base}/${hash}`);
  return { ctx, page, errors, res };
}

test('GET / serves the page with strict headers; other paths stay 404, longer routes still win', async () => {
  const res = await fetch(`${srv.base}/`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
  assert.equal(res.headers.get('cache-control'), 'no-cache');
  const csp = res.headers.get('content-security-policy');
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'sha256-[A-Za-z0-9+/]{43}='/, 'the inline script is allowed by its hash only');
  assert.match(csp, /style-src 'sha256-[A-Za-z0-9+/]{43}='/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.match(csp, /connect-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  const html = await res.text();
  assert.match(html, /^<!doctype html>/);
  assert.doesNotMatch(html, /https?:\/\/(?!www\.w3\.org\/2000\/svg)/, 'no external asset');

  const head = await fetch(`${srv.base}/`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get('content-length'), String(Buffer.byteLength(html)));
  assert.equal((await head.text()).length, 0, 'HEAD has no body');

  const query = await fetch(`${srv.base}/?from=docs`);
  assert.equal(query.status, 200, 'a query string does not change the path');

  for (const p of ['/nope', '/index.html', '/v1', '/v1/unknown/deeper/']) {
    const r = await fetch(`${srv.base}${p}`);
    assert.equal(r.status, 404, `${p} is not the console`);
    assert.equal((await r.json()).error.code, 'not_found');
  }
  assert.equal((await fetch(`${srv.base}/healthz`)).status, 200, 'exact routes win over /');
  assert.equal((await fetch(`${srv.base}/api/metrics`)).headers.get('content-type'), 'application/json');
  const info = await fetch(`${srv.base}/v1/channels/console-route`);
  assert.equal((await info.json()).channel, 'console-route', 'prefix routes win over /');
  // Pipelined on one connection: the page, then an API call, both answered.
  const raw = await rawRequest(srv.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(raw.match(/HTTP\/1\.1 200 OK/g).length, 2);
  assert.match(raw, /\r\n\r\nok$/);
});

// "/" is an exact route: it must not swallow the 405 of a POST-only path
// or turn a POST to an unknown path into a 405.
test('GET on a POST-only route is still a 405 with the console registered', async () => {
  assert.equal((await fetch(`${srv.base}/v1/ai/chat`)).status, 405);
  assert.equal((await fetch(`${srv.base}/nope`, { method: 'POST', body: 'x' })).status, 404);
});

test('the page loads without console errors and the dashboard shows live numbers', async () => {
  const { ctx, page, errors } = await openConsole();
  // Reachable: green, or amber while the 404s of the first test weigh on the
  // error rate.
  await page.waitForSelector('#health-dot.ok, #health-dot.warn', { state: 'attached' });
  assert.match(await page.textContent('#health-text'), /^(Healthy|Serving, [0-9.]+% errors) · up \d+s$/);
  const value = (key) => page.$eval(`#cards [data-key="${key}"] .value`, (e) => e.textContent);
  await page.waitForFunction(() => document.querySelector('#cards [data-key="uptimeSeconds"] .value').textContent !== '—');
  const before = Number((await value('published')).replace(/\D/g, ''));
  await publish(srv.base, 'console-dash', { data: 1 });
  await publish(srv.base, 'console-dash', { data: 2 });
  // The next poll (every 2 s) shows both.
  await page.waitForFunction((b) => Number(document.querySelector('#cards [data-key="published"] .value').textContent.replace(/\D/g, '')) >= b + 2, before, { timeout: 6000 });
  for (const k of ['activeUsers', 'requestsPerSecond', 'p99Latency', 'connections', 'channels', 'wsConnections']) {
    assert.match(await value(k), /^[0-9.,]+( ms)?[kMB]?$/, `${k} is a number`);
  }
  assert.match(await value('errorRate'), /^[0-9.,]+%$/);
  assert.match(await value('rssBytes'), /^[0-9.,]+ (KiB|MiB|GiB)$/);
  // Each console keeps a room connection for the cursors: the server counts it.
  assert.ok(Number(await value('wsConnections')) >= 1);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('channels playground: subscribe over SSE, publish JSON and text, history, long-poll', async () => {
  const { ctx, page, errors } = await openConsole();
  await page.fill('#ch-name', 'console-play');
  await page.click('#ch-sub');
  await page.waitForSelector('#ch-state.open');

  // JSON with an event name and an Idempotency-Key.
  await page.fill('#pub-event', 'notification');
  await page.fill('#pub-body', '{"text":"<b>not bold</b>","n":1}');
  await page.check('#pub-idem');
  await page.click('#pub-send');
  await page.waitForSelector('#pub-result.ok');
  const firstResult = await page.textContent('#pub-result');
  const id = firstResult.match(/published id (\S+)/)[1];
  const row = page.locator(`#ch-log li[data-event="notification"][data-id="${id}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /"text": "<b>not bold<\/b>"/, 'data is shown as text, not markup');
  assert.equal(await page.locator('#ch-log b:text("not bold")').count(), 0, 'no element was made from the data');

  // The same key again: same id, nothing new published.
  await page.click('#pub-send');
  await page.waitForFunction((t) => document.getElementById('pub-result').textContent !== '' && document.getElementById('pub-result').textContent.includes('published id'), firstResult);
  const hist = await (await fetch(`${srv.base}/v1/channels/console-play/messages`)).json();
  assert.equal(hist.messages.length, 1, 'the repeat with the same Idempotency-Key published nothing');

  // Text body, plus a message published from outside the page.
  await page.uncheck('#pub-idem');
  await page.fill('#pub-event', '');
  await page.click('.seg label:has(input[name=pub-fmt][value=text])');
  await page.fill('#pub-body', 'plain words');
  await page.click('#pub-send');
  await page.locator('#ch-log li[data-event="message"] pre:text-is("plain words")').waitFor();
  await publish(srv.base, 'console-play', { event: 'job', data: { done: true } });
  await page.locator('#ch-log li[data-event="job"]').waitFor();

  // History after the first id: the two later messages, oldest first.
  await page.fill('#hist-since', id);
  await page.click('#hist-read');
  await page.waitForFunction(() => /2 message\(s\)/.test(document.getElementById('hist-result').textContent));
  const texts = await page.$$eval('#hist-log li pre', (l) => l.map((x) => x.textContent));
  assert.deepEqual(texts, ['plain words', '{\n  "done": true\n}']);

  // Long-poll with no since: waits for the next message, then answers.
  await page.fill('#hist-since', '');
  await page.click('#hist-wait');
  await page.waitForFunction(() => /waiting up to 10 s/.test(document.getElementById('hist-result').textContent));
  await publish(srv.base, 'console-play', { data: 'woke the poller' });
  await page.waitForFunction(() => /1 message\(s\) after/.test(document.getElementById('hist-result').textContent));
  assert.equal(await page.textContent('#hist-log li pre'), 'woke the poller');

  await page.click('#ch-info');
  await page.waitForFunction(() => /1 subscriber/.test(document.getElementById('hist-result').textContent));

  // The copy-paste panel speaks about this channel at this origin.
  const snips = await page.$$eval('#snip-list pre', (l) => l.map((x) => x.textContent).join('\n'));
  assert.ok(snips.includes(`${srv.base}/v1/sse?channel=console-play`));
  assert.ok(snips.includes(`curl -X POST '${srv.base}/v1/channels/console-play/messages'`));

  await page.click('#ch-sub');
  await page.waitForFunction(() => document.getElementById('ch-state').textContent === 'not subscribed');
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('two consoles see each other\'s cursor, and a closed one leaves', async () => {
  const a = await openConsole({ hash: '#cursors' });
  const b = await openConsole({ hash: '#cursors', scheme: 'dark' });
  for (const p of [a.page, b.page]) await p.waitForSelector('#cur-state.open');
  const nameA = await a.page.inputValue('#cur-name');
  const nameB = await b.page.inputValue('#cur-name');

  const box = await a.page.locator('#cur-board').boundingBox();
  await a.page.mouse.move(box.x + box.width * 0.25, box.y + box.height * 0.5);
  await a.page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.25, { steps: 5 });
  const peerA = b.page.locator('#cur-peers li:not(.me)', { hasText: nameA });
  await peerA.waitFor();
  // The board is 800 x 360 logical pixels: the last position is (400, 90).
  await b.page.waitForFunction((n) => [...document.querySelectorAll('#cur-peers li:not(.me)')].some((li) => li.textContent.includes(n) && /400, 90$/.test(li.textContent)), nameA);
  // A newcomer is told about members at once, even before they move.
  await a.page.locator('#cur-peers li:not(.me)', { hasText: nameB }).waitFor();

  // The JSON protocol's presence op, when this server has it: both consoles
  // are members of presence:console, and each knows which one it is.
  const pres = await b.page.textContent('#pres-state');
  if (pres !== 'not available') {
    await b.page.waitForFunction((names) => {
      const t = [...document.querySelectorAll('#pres-members li')].map((li) => li.textContent);
      return names.every((n) => t.some((x) => x.includes(n)));
    }, [nameA, nameB]);
    assert.match(await b.page.textContent('#pres-members li.me'), new RegExp(nameB));
  } else {
    assert.match(await b.page.textContent('#pres-note'), /does not have the JSON presence op/);
  }

  mkdirSync(shots, { recursive: true });
  await b.page.mouse.move(10, 10);
  await b.page.screenshot({ path: path.join(shots, 'cursors-dark.png') });

  await a.ctx.close();
  // The server's {"type":"leave"} removes the cursor at once (no 12 s sweep).
  await b.page.waitForFunction((n) => ![...document.querySelectorAll('#cur-peers li')].some((li) => li.textContent.includes(n)), nameA, { timeout: 3000 });
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  await b.ctx.close();
});

test('WebSocket panel: JSON protocol frames both ways, and a raw room', async () => {
  const { ctx, page, errors } = await openConsole({ hash: '#ws' });
  await page.click('#ws-connect');
  await page.waitForSelector('#ws-state.open');
  await page.fill('#ws-channel', 'console-ws');
  await page.click('#ws-ops [data-op=subscribe]');
  await page.locator('#ws-log li[data-dir=in] pre', { hasText: '"op":"ok"' }).first().waitFor();
  await page.fill('#ws-data', '{"hello":"socket"}');
  await page.click('#ws-ops [data-op=publish]');
  await page.locator('#ws-log li[data-dir=in] pre', { hasText: '"op":"message"' }).waitFor();
  const msg = JSON.parse(await page.locator('#ws-log li[data-dir=in] pre', { hasText: '"op":"message"' }).textContent());
  assert.deepEqual(msg.data, { hello: 'socket' });
  assert.ok(await page.locator('#ws-log li[data-dir=out] pre', { hasText: '"op":"publish"' }).count() >= 1, 'sent frames are shown too');

  // Raw room: a frame from another member arrives verbatim.
  await page.click('.seg label:has(input[name=ws-mode][value=room])');
  await page.fill('#ws-room', 'console-raw');
  await page.click('#ws-connect');
  await page.waitForSelector('#ws-state.open');
  const other = await ctx.newPage();
  await other.goto(`${srv.base}/healthz`);
  await other.evaluate((url) => new Promise((resolve) => {
    const s = new WebSocket(url);
    s.onopen = () => { s.send('raw <i>frame</i>'); setTimeout(resolve, 100); };
  }), `ws://127.0.0.1:${srv.port}/?room=console-raw`);
  await page.locator('#ws-log li[data-dir=in] pre:text-is("raw <i>frame</i>")').waitFor();
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('AI panel says how to enable streaming when the server has no upstream', async () => {
  const { ctx, page, errors } = await openConsole({ hash: '#ai' });
  await page.click('#ai-send');
  await page.waitForSelector('#ai-result.err');
  assert.match(await page.textContent('#ai-result'), /--ai-demo.*--ai-upstream/);
  // Chromium logs the refused request itself; nothing else may fail.
  assert.deepEqual(errors.filter((e) => !/Failed to load resource.*(503|404|405)/.test(e)), []);
  await ctx.close();
});

test('AI panel with --ai-demo: tokens stream, the channel resumes them all, Stop ends a generation', { timeout: 90000 }, async (t) => {
  const ai = await startServer(['--ai-demo']);
  try {
    const probe = await fetch(`${ai.base}/v1/ai/chat`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    if (probe.status === 404 || probe.status === 405) {
      t.skip('this build does not serve POST /v1/ai/chat');
      return;
    }
    const ctx = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
    contexts.add(ctx);
    const page = await ctx.newPage();
    const errors = [];
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    await page.goto(`${ai.base}/#ai`);

    await page.fill('#ai-prompt', 'Say <script>alert(1)</script> please');
    await page.click('#ai-send');
    await page.waitForFunction(() => document.getElementById('ai-state').textContent === 'done', null, { timeout: 30000 });
    const id = await page.inputValue('#ai-id');
    assert.match(id, /^[A-Za-z0-9_-]+$/, 'the X-Stream-Id is shown');
    const out = await page.textContent('#ai-out');
    assert.ok(out.length > 20, 'tokens were rendered');
    assert.ok(Number((await page.textContent('#ai-count')).split(' ')[0]) > 1, 'in several chunks, as they arrived');
    assert.equal(await page.locator('#ai-out script').count(), 0, 'tokens are text, never markup');

    // Resume in this tab: the channel ai:{id} from the start gives the same text.
    await page.click('#ai-resume');
    await page.waitForFunction(() => /done/.test(document.getElementById('ai-rcount').textContent));
    assert.equal(await page.textContent('#ai-rout'), out, 'nothing lost or doubled');

    // Stop: DELETE /v1/ai/streams/{id} while tokens are arriving.
    await page.fill('#ai-prompt', 'A second question, to be stopped');
    await page.click('#ai-send');
    await page.waitForFunction((first) => document.getElementById('ai-id').value !== first && document.getElementById('ai-count').textContent !== '', id);
    await page.click('#ai-stop');
    await page.waitForSelector('#ai-result.ok');
    assert.match(await page.textContent('#ai-result'), /DELETE \/v1\/ai\/streams\//);
    await page.waitForFunction(() => !document.getElementById('ai-send').disabled, null, { timeout: 10000 });
    assert.equal(await page.textContent('#ai-state'), 'stopped');
    await page.click('#ai-resume');
    await page.waitForFunction(() => /done \(stopped\)/.test(document.getElementById('ai-rcount').textContent));
    assert.deepEqual(errors, []);
    await ctx.close();
  } finally {
    assert.equal((await ai.stop()).code, 0);
  }
});

test('screenshot of the whole console (light)', async () => {
  const { ctx, page, errors } = await openConsole();
  await page.fill('#ch-name', 'demo');
  await page.click('#ch-sub');
  await page.waitForSelector('#ch-state.open');
  await publish(srv.base, 'demo', { event: 'notification', data: { title: 'Deploy finished', env: 'production' } });
  await publish(srv.base, 'demo', { data: 'plain text message' });
  await page.waitForFunction(() => document.querySelectorAll('#ch-log li[data-event]').length >= 2);
  await page.waitForTimeout(4500); // a few dashboard polls for the sparklines
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, 'console-light.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await ctx.close();
});
