// POST /v1/ai/chat against the real binary and the local test upstream
// (fixtures/upstream.mjs): the three output formats read by real clients
// (fetch, an SSE reader, the `ai` package's own readers), every stream as
// channel ai:{id} with resume by cursor before and after compaction, the
// resume endpoint, stop, disconnect policies, upstream faults, limits, auth,
// the demo generator, and 500 streams at once.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { AbstractChat, DefaultChatTransport, readUIMessageStream, UI_MESSAGE_STREAM_HEADERS } from 'ai';
import WebSocket from 'ws';
import { expectedText, startUpstream } from './fixtures/upstream.mjs';
import { publish, sleep, sseConnect, startServer } from './lib/server.mjs';

const KEY_ENV = { SB_TEST_AI_KEY: 'sk-test-switchboard' };
// Short upstream deadlines so the timeout and stall faults end quickly.
const TIMEOUTS = { SWITCHBOARD_AI_FIRST_TOKEN_TIMEOUT: '1s', SWITCHBOARD_AI_IDLE_TIMEOUT: '1s' };
const STORY = expectedText('story');
const CODE = expectedText('code');

let up, srv, srvA, srvF;
before(async () => {
  up = await startUpstream({ port: 0, delay: [2, 6] });
  const common = ['--ai-key-env', 'SB_TEST_AI_KEY', '--ai-model', 'story', '--ai-max-streams', '1000',
    '--ai-max-streams-per-user', '1000'];
  srv = await startServer(['--ai-upstream', `${up.url}/v1`, ...common], { env: KEY_ENV });
  srvA = await startServer(['--ai-upstream', up.url, '--ai-dialect', 'anthropic', ...common], { env: KEY_ENV });
  // Faults: short deadlines, so slow and stalled upstreams end in a second.
  srvF = await startServer(['--ai-upstream', `${up.url}/v1`, ...common], { env: { ...KEY_ENV, ...TIMEOUTS } });
});
after(async () => {
  for (const s of [srv, srvA, srvF]) if (s) assert.equal((await s.stop()).code, 0, `clean exit:\n${s.log().slice(-2000)}`);
  await up?.close();
});

// ---- helpers ----

function chat(base, body, { headers = {}, signal } = {}) {
  return fetch(`${base}/v1/ai/chat`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    signal,
  });
}

const ask = (text, extra = {}) => ({ messages: [{ role: 'user', content: text }], ...extra });

// The seed's reader: fetch + getReader + TextDecoder, concatenating chunks.
async function readText(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let out = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    out += decoder.decode(value, { stream: true });
  }
  return out + decoder.decode();
}

function parseSSE(text) {
  const events = [];
  for (const block of text.split('\n\n')) {
    if (!block.trim()) continue;
    const ev = { event: 'message', data: [], id: null };
    for (const line of block.split('\n')) {
      if (line.startsWith('data: ')) ev.data.push(line.slice(6));
      else if (line.startsWith('event: ')) ev.event = line.slice(7);
      else if (line.startsWith('id: ')) ev.id = line.slice(4);
    }
    if (ev.data.length) events.push({ ...ev, data: ev.data.join('\n') });
  }
  return events;
}

async function history(base, channel, since) {
  const q = since === undefined ? '' : `?since=${since}&limit=1000`;
  const res = await fetch(`${base}/v1/channels/${encodeURIComponent(channel)}/messages${q}`);
  assert.equal(res.status, 200);
  return res.json();
}

// All of a channel's kept messages from `since` on, page by page.
async function historyAll(base, channel, since) {
  let out = [];
  let cur = since;
  for (;;) {
    const page = await history(base, channel, cur);
    out = out.concat(page.messages);
    if (!page.messages.length || page.messages.at(-1).event !== 'delta') return out;
    cur = page.next;
  }
}

const deltasText = (msgs) => msgs.filter((m) => m.event === 'delta').map((m) => m.data.text).join('');

// Reads channel ai:{id} over SSE from `since` (or Last-Event-ID) until its
// final event; records every delta with its id.
function followSSE(port, id, { since, lastEventId, stopAfter } = {}) {
  const q = since !== undefined ? `&since=${since}` : '';
  const headers = lastEventId ? { 'Last-Event-ID': lastEventId } : {};
  const got = { deltas: [], final: null, lastId: null };
  return new Promise((resolve, reject) => {
    const s = sseConnect(port, `/v1/sse?channel=ai:${id}${q}`, {
      headers,
      onEvent: (e, st) => {
        got.lastId = e.id;
        if (e.event === 'delta') got.deltas.push({ id: e.id, text: JSON.parse(e.data).text });
        else if (e.event === 'done' || e.event === 'error') got.final = { event: e.event, id: e.id, data: JSON.parse(e.data) };
        if (got.final || (stopAfter && got.deltas.length >= stopAfter)) {
          st.close();
          resolve(got);
        }
      },
    });
    s.ready.catch(reject);
    setTimeout(() => { s.close(); reject(new Error(`SSE follow of ${id} timed out (${got.deltas.length} deltas)`)); }, 30000).unref();
  });
}

const textOf = (m) => (m?.parts ?? []).filter((p) => p.type === 'text').map((p) => p.text).join('');

// The chat object that useChat wraps, with plain state.
class State {
  status = 'ready';
  error = undefined;
  messages = [];
  pushMessage = (m) => { this.messages = this.messages.concat(m); };
  popMessage = () => { this.messages = this.messages.slice(0, -1); };
  replaceMessage = (i, m) => { this.messages = [...this.messages.slice(0, i), structuredClone(m), ...this.messages.slice(i + 1)]; };
  snapshot = (x) => structuredClone(x);
}
class Chat extends AbstractChat {
  constructor(options) { super({ ...options, state: new State() }); }
}

function jwt(secret, payload) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(payload)}`;
  return `${head}.${crypto.createHmac('sha256', secret).update(head).digest('base64url')}`;
}

// ---- formats ----

describe('formats', () => {
  test('text (the default for plain messages): the seed fetch reader gets the whole answer', async () => {
    const res = await chat(srv.base, ask('Tell me a story'));
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/plain/);
    assert.match(res.headers.get('x-stream-id'), /^[0-9a-f]{24}$/);
    assert.equal(res.headers.get('x-accel-buffering'), 'no');
    assert.equal(await readText(res), STORY);
  });

  test('sse: data {"text"} per chunk, then [DONE]', async () => {
    const res = await chat(srv.base, ask('code please', { model: 'code', format: 'sse' }));
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    assert.equal(res.headers.get('cache-control'), 'no-cache, no-transform');
    const events = parseSSE(await res.text());
    assert.equal(events.at(-1).data, '[DONE]', 'the stream ends with [DONE]');
    const text = events.slice(0, -1).map((e) => JSON.parse(e.data).text).join('');
    assert.equal(text, CODE);
  });

  test('the Anthropic dialect relays the same answers', async () => {
    const [a, b] = await Promise.all([
      chat(srvA.base, ask('story')).then(readText),
      chat(srvA.base, ask('code', { model: 'code', format: 'sse' })).then((r) => r.text()),
    ]);
    assert.equal(a, STORY);
    const ev = parseSSE(b);
    assert.equal(ev.at(-1).data, '[DONE]');
    assert.equal(ev.slice(0, -1).map((e) => JSON.parse(e.data).text).join(''), CODE);
  });

  test('ai-sdk (the default for useChat requests): the ai package rebuilds the answer', async () => {
    // The transport as useChat uses it, and readUIMessageStream over its chunks.
    const transport = new DefaultChatTransport({ api: `${srv.base}/v1/ai/chat` });
    const chunks = await transport.sendMessages({
      chatId: 'node-chat-1',
      messages: [{ id: 'u1', role: 'user', parts: [{ type: 'text', text: 'Tell me a story.' }] }],
      trigger: 'submit-message', messageId: undefined, abortSignal: undefined,
    });
    let message;
    for await (const m of readUIMessageStream({ stream: chunks, terminateOnError: true })) message = m;
    assert.equal(textOf(message), STORY);

    // The chat object behind useChat, end to end.
    let finished = 0;
    const c = new Chat({
      id: 'node-chat-2',
      transport: new DefaultChatTransport({ api: `${srv.base}/v1/ai/chat`, body: { model: 'code' } }),
      onFinish: () => finished++,
    });
    await c.sendMessage({ text: 'Show me some code.' });
    assert.equal(c.status, 'ready', c.error?.message);
    assert.equal(finished, 1);
    assert.equal(textOf(c.messages.at(-1)), CODE);

    // Our headers are the SDK's.
    const res = await chat(srv.base, { id: 'hdr', messages: [{ id: 'u', role: 'user', parts: [{ type: 'text', text: 'x' }] }] });
    for (const [k, v] of Object.entries(UI_MESSAGE_STREAM_HEADERS)) {
      if (k === 'content-type') assert.ok(res.headers.get(k).startsWith(v), `${k}: ${res.headers.get(k)}`);
      else if (k === 'cache-control') assert.match(res.headers.get(k), /no-cache/);
      else assert.equal(res.headers.get(k), v, k);
    }
    await res.text();
  });
});

// ---- the channel, resume and compaction ----

describe('channel ai:{id}', () => {
  test('a second reader follows the stream live: the same text, then done', async () => {
    const res = await chat(srv.base, ask('story', { format: 'sse' }));
    const id = res.headers.get('x-stream-id');
    const follow = followSSE(srv.port, id, { since: 0 });
    const own = parseSSE(await res.text());
    const got = await follow;
    assert.equal(got.deltas.map((d) => d.text).join(''), STORY);
    assert.equal(got.final.event, 'done');
    assert.deepEqual(got.final.data, { reason: 'complete', finishReason: 'stop' });
    assert.equal(own.length - 1, got.deltas.length, 'one channel delta per relayed chunk');
  });

  test('reload mid-answer: reconnecting with Last-Event-ID ends with exactly the answer', async () => {
    const res = await chat(srv.base, ask('story'));
    const id = res.headers.get('x-stream-id');
    const body = readText(res);
    const first = await followSSE(srv.port, id, { since: 0, stopAfter: 60 });
    assert.equal(first.final, null, 'the answer was still running at the reload');
    await sleep(200); // tokens keep coming while the page reloads
    const second = await followSSE(srv.port, id, { lastEventId: first.lastId });
    assert.equal(first.deltas.map((d) => d.text).join('') + second.deltas.map((d) => d.text).join(''), STORY);
    assert.equal(second.final.event, 'done');
    assert.equal(await body, STORY);
  });

  test('WebSocket readers resume the stream too', async () => {
    const res = await chat(srv.base, ask('code', { model: 'code' }));
    const id = res.headers.get('x-stream-id');
    const read = (since, stopAfter) => new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/v1/ws`);
      const got = { texts: [], last: null, final: null };
      ws.on('open', () => ws.send(JSON.stringify({ op: 'subscribe', channel: `ai:${id}`, since, ref: 1 })));
      ws.on('message', (raw) => {
        const m = JSON.parse(raw.toString());
        if (m.op !== 'message') return;
        got.last = m.id;
        if (m.event === 'delta') got.texts.push(m.data.text);
        else got.final = m.event;
        if (got.final || (stopAfter && got.texts.length >= stopAfter)) {
          ws.close();
          resolve(got);
        }
      });
      ws.on('error', reject);
    });
    const a = await read('0', 40);
    const b = await read(a.last);
    assert.equal(a.texts.join('') + b.texts.join(''), CODE);
    assert.equal(b.final, 'done');
    await readText(res);
  });

  test('after the end, history is compacted and every cursor resumes exactly', async () => {
    const res = await chat(srv.base, ask('story'));
    const id = res.headers.get('x-stream-id');
    const live = await followSSE(srv.port, id, { since: 0 });
    assert.equal(await readText(res), STORY);
    const deltas = live.deltas;
    assert.ok(deltas.length > 200, `many small deltas (${deltas.length})`);
    const info = await (await fetch(`${srv.base}/v1/channels/ai:${id}`)).json();
    assert.ok(info.history <= 3, `compacted to a few stored messages (${info.history} kept)`);

    const all = await historyAll(srv.base, `ai:${id}`, 0);
    assert.equal(deltasText(all), STORY, 'since=0 rebuilds the whole answer');
    assert.equal(all.at(-1).event, 'done');
    // Cursors taken from the live stream, inside the compacted run.
    let prefix = '';
    const cursors = new Map();
    deltas.forEach((d, i) => { prefix += d.text; cursors.set(i, { id: d.id, prefix }); });
    for (const i of [0, 1, 7, 63, 64, 65, 150, deltas.length - 2, deltas.length - 1]) {
      const { id: cur, prefix: seen } = cursors.get(i);
      const msgs = await historyAll(srv.base, `ai:${id}`, cur);
      assert.equal(seen + deltasText(msgs), STORY, `history after delta ${i}`);
      assert.equal(msgs.at(-1).event, 'done');
      const ids = msgs.map((m) => BigInt(m.id));
      assert.ok(ids.every((x, k) => k === 0 || x > ids[k - 1]) && ids[0] > BigInt(cur), 'ids increase past the cursor');
      const sse = await followSSE(srv.port, id, { lastEventId: cur });
      assert.equal(seen + sse.deltas.map((d) => d.text).join(''), STORY, `SSE after delta ${i}`);
    }
    const none = await history(srv.base, `ai:${id}`, live.final.id);
    assert.deepEqual(none.messages, [], 'nothing after the final event');
  });

  test('replay of a long answer goes in bounded chunks', async () => {
    // The echo model streams the question back: ~40 KB in about 200 tokens.
    const word = 'ábcdefghij'.repeat(20);
    const question = Array.from({ length: 200 }, (_, i) => `${i}${word}`).join(' ');
    const res = await chat(srv.base, ask(question, { model: 'echo' }));
    const id = res.headers.get('x-stream-id');
    const text = await readText(res);
    assert.equal(text, question);
    const all = await historyAll(srv.base, `ai:${id}`, 0);
    const chunks = all.filter((m) => m.event === 'delta');
    assert.ok(chunks.length >= 5, `several chunks (${chunks.length})`);
    for (const m of chunks) assert.ok(Buffer.byteLength(m.data.text) <= 8192 + 300, 'each chunk is bounded');
    assert.equal(deltasText(all), question);
  });

  test('one cursor over an AI channel and another channel stays exact across compaction', async () => {
    const news = `news-${Date.now()}`;
    const res = await chat(srv.base, ask('story'));
    const id = res.headers.get('x-stream-id');
    const live = followSSE(srv.port, id, { since: 0 });
    await sleep(1500);
    const pub = await publish(srv.base, news, { event: 'n', data: { x: 1 } });
    assert.equal(await readText(res), STORY);
    await live;
    // Replay both channels from the start, then resume from the news id.
    const readBoth = (path, headers = {}) => new Promise((resolve) => {
      const evs = [];
      const s = sseConnect(srv.port, path, {
        headers,
        onEvent: (e) => {
          evs.push(e);
          if (e.event === 'done') { s.close(); resolve(evs); }
        },
      });
    });
    const both = await readBoth(`/v1/sse?channel=ai:${id}&channel=${news}&since=0`);
    const ids = both.map((e) => BigInt(e.id));
    assert.ok(ids.every((x, k) => k === 0 || x > ids[k - 1]), 'one increasing cursor');
    const at = both.findIndex((e) => e.event === 'n');
    assert.equal(both[at].id, pub.body.id);
    const before = both.slice(0, at).filter((e) => e.event === 'delta').map((e) => JSON.parse(e.data).text).join('');
    assert.ok(before.length > 0 && before.length < STORY.length, 'the news fell inside the answer');
    const rest = await readBoth(`/v1/sse?channel=ai:${id}&channel=${news}`, { 'Last-Event-ID': pub.body.id });
    assert.equal(before + rest.filter((e) => e.event === 'delta').map((e) => JSON.parse(e.data).text).join(''), STORY);
  });
});

describe('resume endpoint', () => {
  test('GET /v1/ai/chats/{chatId}/stream replays then follows; useChat resume works', async () => {
    const chatId = `resume-${Date.now()}`;
    const res = await chat(srv.base, { id: chatId, messages: [{ id: 'u', role: 'user', parts: [{ type: 'text', text: 'story' }] }] });
    assert.equal(res.status, 200);
    const own = readUIMessageStream({
      stream: new DefaultChatTransport({}).processResponseStream(res.body),
    });
    await sleep(800);
    // A reload mid-answer: useChat({ resume: true }) asks for the chat's stream.
    const c = new Chat({ id: chatId, transport: new DefaultChatTransport({ api: `${srv.base}/v1/ai/chat` }) });
    await c.resumeStream();
    assert.equal(c.status, 'ready', c.error?.message);
    assert.equal(textOf(c.messages.at(-1)), STORY, 'the resumed chat has the whole answer');
    let m;
    for await (const x of own) m = x;
    assert.equal(textOf(m), STORY);
    // Just after the end (within retention) it still replays, from the documented path.
    const again = await fetch(`${srv.base}/v1/ai/chats/${chatId}/stream`);
    assert.equal(again.status, 200);
    assert.equal(again.headers.get('x-vercel-ai-ui-message-stream'), 'v1');
    let m2;
    for await (const x of readUIMessageStream({ stream: new DefaultChatTransport({}).processResponseStream(again.body) })) m2 = x;
    assert.equal(textOf(m2), STORY);
    const text = await fetch(`${srv.base}/v1/ai/chats/${chatId}/stream?format=text`);
    assert.equal(await readText(text), STORY);
  });

  test('no stream for the chat: 204', async () => {
    const res = await fetch(`${srv.base}/v1/ai/chats/never-seen/stream`);
    assert.equal(res.status, 204);
    const c = new Chat({ id: 'never-seen-2', transport: new DefaultChatTransport({ api: `${srv.base}/v1/ai/chat` }) });
    await c.resumeStream();
    assert.equal(c.messages.length, 0);
  });
});

// ---- stop and disconnect ----

describe('stop', () => {
  test('DELETE /v1/ai/streams/{id} stops the answer: done with reason stopped', async () => {
    const res = await chat(srv.base, ask('story', { format: 'sse' }));
    const id = res.headers.get('x-stream-id');
    await followSSE(srv.port, id, { since: 0, stopAfter: 20 });
    const del = await fetch(`${srv.base}/v1/ai/streams/${id}`, { method: 'DELETE' });
    assert.equal(del.status, 200);
    assert.deepEqual(await del.json(), { id, stopped: true });
    const events = parseSSE(await res.text());
    assert.equal(events.at(-1).data, '[DONE]', 'the client stream ends cleanly');
    const text = events.slice(0, -1).map((e) => JSON.parse(e.data).text).join('');
    assert.ok(text.length > 0 && text.length < STORY.length && STORY.startsWith(text), 'a prefix of the answer');
    const all = await historyAll(srv.base, `ai:${id}`, 0);
    assert.deepEqual(all.at(-1).data, { reason: 'stopped', by: 'request' });
    assert.equal(deltasText(all), text, 'the channel holds what the client got');
    const again = await fetch(`${srv.base}/v1/ai/streams/${id}`, { method: 'DELETE' });
    assert.deepEqual(await again.json(), { id, stopped: false });
    const unknown = await fetch(`${srv.base}/v1/ai/streams/${'0'.repeat(24)}`, { method: 'DELETE' });
    assert.equal(unknown.status, 404);
    assert.equal((await unknown.json()).error.code, 'stream_not_found');
  });

  test('--ai-on-disconnect continue (default): the answer completes without its client', async () => {
    const ac = new AbortController();
    const res = await chat(srv.base, ask('story'), { signal: ac.signal });
    const id = res.headers.get('x-stream-id');
    await followSSE(srv.port, id, { since: 0, stopAfter: 10 });
    ac.abort();
    const got = await followSSE(srv.port, id, { since: 0 });
    assert.equal(got.final.event, 'done');
    assert.equal(got.final.data.reason, 'complete');
    assert.equal(got.deltas.map((d) => d.text).join(''), STORY);
  });

  test('--ai-on-disconnect cancel: the answer stops when its client leaves', async () => {
    const s = await startServer(['--ai-upstream', `${up.url}/v1`, '--ai-key-env', 'SB_TEST_AI_KEY', '--ai-model', 'story',
      '--ai-on-disconnect', 'cancel'], { env: KEY_ENV });
    try {
      const ac = new AbortController();
      const res = await chat(s.base, ask('story'), { signal: ac.signal });
      const id = res.headers.get('x-stream-id');
      await followSSE(s.port, id, { since: 0, stopAfter: 10 });
      ac.abort();
      const got = await followSSE(s.port, id, { since: 0 });
      assert.deepEqual(got.final.data, { reason: 'stopped', by: 'disconnect' });
      assert.ok(got.deltas.length < 300);
    } finally {
      assert.equal((await s.stop()).code, 0);
    }
  });
});

// ---- upstream faults ----

describe('upstream faults', () => {
  const faults = [
    ['slow', 0, 'upstream_timeout', /no answer/],
    ['slowbody', 200, 'upstream_timeout', /no answer/],
    ['reset', 200, 'upstream_reset', /before/],
    ['truncate', 200, 'upstream_reset', /ended before/],
    ['stall', 200, 'upstream_stalled', /mid-answer/],
    ['garbage', 200, 'upstream_malformed', /not JSON/],
    ['midstream', 200, 'upstream_error', /The server had an error/],
    ['429', 429, 'upstream_error', /Rate limit reached/],
    ['500', 500, 'upstream_error', /The server had an error/],
    ['529', 529, 'upstream_error', /overloaded/],
    ['html502', 502, 'upstream_error', /The upstream answered HTTP 502/],
    ['empty', 200, 'upstream_reset', /DONE/],
  ];

  test('every fault ends the stream with an error event carrying status and message', { timeout: 60000 }, async () => {
    await Promise.all(faults.map(async ([fault, status, code, message]) => {
      const res = await chat(srvF.base, ask('story', { model: `story@${fault}`, format: 'sse' }));
      assert.equal(res.status, 200, fault);
      const id = res.headers.get('x-stream-id');
      const events = parseSSE(await res.text());
      const last = events.at(-1);
      assert.equal(last.event, 'error', `${fault}: ends in an error event`);
      assert.equal(JSON.parse(last.data).error.code, code, fault);
      assert.ok(!events.some((e) => e.data === '[DONE]'), `${fault}: no [DONE]`);
      const all = await historyAll(srvF.base, `ai:${id}`, 0);
      const err = all.at(-1);
      assert.equal(err.event, 'error', fault);
      assert.equal(err.data.status, status, `${fault}: upstream status`);
      assert.equal(err.data.code, code, fault);
      assert.match(err.data.message, message, fault);
    }));
  });

  test('faults in the ai-sdk and text formats', async () => {
    const res = await chat(srvA.base, { id: 'f1', messages: [{ id: 'u', role: 'user', parts: [{ type: 'text', text: 'x' }] }], model: 'story@529' });
    const events = parseSSE(await res.text());
    assert.deepEqual(JSON.parse(events.at(-2).data), { type: 'error', errorText: 'Overloaded' });
    assert.equal(events.at(-1).data, '[DONE]');
    // The chat object reports it as the chat's error.
    const c = new Chat({ id: 'f2', transport: new DefaultChatTransport({ api: `${srvA.base}/v1/ai/chat`, body: { model: 'story@midstream' } }) });
    await c.sendMessage({ text: 'x' });
    assert.equal(c.status, 'error');
    assert.equal(c.error.message, 'Overloaded');
    // A bare-text reader cannot see an in-band error: the body breaks instead.
    const t = await chat(srv.base, ask('story', { model: 'story@reset' }));
    await assert.rejects(readText(t), 'the text body ends abnormally');
  });

  test('an unreachable upstream is an error too', async () => {
    const dead = await startUpstream({ port: 0 });
    const port = dead.port;
    await dead.close();
    const s = await startServer(['--ai-upstream', `http://127.0.0.1:${port}`, '--ai-key-env', 'SB_TEST_AI_KEY', '--ai-model', 'story'], { env: KEY_ENV });
    try {
      const res = await chat(s.base, ask('hi', { format: 'sse' }));
      const id = res.headers.get('x-stream-id');
      const last = parseSSE(await res.text()).at(-1);
      assert.equal(JSON.parse(last.data).error.code, 'upstream_unreachable');
      const err = (await historyAll(s.base, `ai:${id}`, 0)).at(-1);
      assert.equal(err.data.status, 0);
    } finally {
      assert.equal((await s.stop()).code, 0);
    }
  });
});

// ---- configuration, limits, auth, requests ----

describe('configuration', () => {
  test('no upstream: 503 no_upstream; --ai-demo: the named demo generator', async () => {
    const none = await startServer([]);
    const demo = await startServer(['--ai-demo']);
    const both = await startServer(['--ai-demo', '--ai-upstream', `${up.url}/v1`, '--ai-key-env', 'SB_TEST_AI_KEY', '--ai-model', 'code'], { env: KEY_ENV });
    try {
      const r = await chat(none.base, ask('hi'));
      assert.equal(r.status, 503);
      assert.equal((await r.json()).error.code, 'no_upstream');
      const t0 = Date.now();
      const d = await chat(demo.base, ask('What is this?'));
      const text = await readText(d);
      const ms = Date.now() - t0;
      assert.match(text, /built-in demo generator \(--ai-demo\)/);
      assert.match(text, /What is this\?/);
      assert.ok(ms >= 300 && ms <= 5000, `paced like a model (${ms} ms)`);
      assert.equal(await readText(await chat(both.base, ask('hi'))), CODE, 'an upstream wins over the demo');
    } finally {
      for (const s of [none, demo, both]) assert.equal((await s.stop()).code, 0);
    }
  });

  test('concurrency limits per user and in total answer 429', async () => {
    const secret = 'ai-limits-secret';
    const s = await startServer(['--ai-demo', '--ai-max-streams', '3', '--ai-max-streams-per-user', '2', '--jwt-secret', secret]);
    try {
      const tok = (sub) => ({ authorization: `Bearer ${jwt(secret, { sub, exp: Math.floor(Date.now() / 1000) + 600 })}` });
      const a1 = await chat(s.base, ask('one'), { headers: tok('alice') });
      const a2 = await chat(s.base, ask('two'), { headers: tok('alice') });
      const a3 = await chat(s.base, ask('three'), { headers: tok('alice') });
      assert.deepEqual([a1.status, a2.status, a3.status], [200, 200, 429]);
      const e3 = await a3.json();
      assert.equal(e3.error.code, 'rate_limited');
      assert.match(e3.error.message, /user/);
      const b1 = await chat(s.base, ask('four'), { headers: tok('bob') });
      const b2 = await chat(s.base, ask('five'), { headers: tok('bob') });
      assert.deepEqual([b1.status, b2.status], [200, 429]);
      assert.match((await b2.json()).error.message, /server/);
      await Promise.all([a1, a2, b1].map(readText));
      const again = await chat(s.base, ask('six'), { headers: tok('alice') });
      assert.equal(again.status, 200, 'slots come back when streams end');
      await readText(again);
    } finally {
      assert.equal((await s.stop()).code, 0);
    }
  });

  test('with --jwt-secret a token is required; only its owner stops or resumes a stream', async () => {
    const secret = 'ai-auth-secret';
    const s = await startServer(['--ai-demo', '--jwt-secret', secret]);
    try {
      const exp = Math.floor(Date.now() / 1000) + 600;
      const none = await chat(s.base, ask('hi'));
      assert.equal(none.status, 401);
      const bad = await chat(s.base, ask('hi'), { headers: { authorization: 'Bearer nope' } });
      assert.equal(bad.status, 401);
      const alice = jwt(secret, { sub: 'alice', exp });
      const ok = await fetch(`${s.base}/v1/ai/chat?token=${alice}`, {
        method: 'POST', body: JSON.stringify({ id: 'alice-chat', messages: [{ role: 'user', content: 'hi' }], format: 'text' }),
      });
      assert.equal(ok.status, 200);
      const id = ok.headers.get('x-stream-id');
      const bobH = { authorization: `Bearer ${jwt(secret, { sub: 'bob', exp })}` };
      assert.equal((await fetch(`${s.base}/v1/ai/streams/${id}`, { method: 'DELETE', headers: bobH })).status, 403);
      assert.equal((await fetch(`${s.base}/v1/ai/chats/alice-chat/stream`, { headers: bobH })).status, 204);
      assert.equal((await fetch(`${s.base}/v1/ai/chats/alice-chat/stream`)).status, 401);
      const mine = await fetch(`${s.base}/v1/ai/chats/alice-chat/stream?token=${alice}&format=text`);
      assert.equal(mine.status, 200);
      const [t1, t2] = await Promise.all([readText(ok), readText(mine)]);
      assert.equal(t1, t2);
    } finally {
      assert.equal((await s.stop()).code, 0);
    }
  });

  test('malformed requests are refused with 400s', async () => {
    const cases = [
      ['not json', 'invalid_json'],
      [JSON.stringify([1]), 'invalid_body'],
      [JSON.stringify({}), 'invalid_body'],
      [JSON.stringify({ messages: [] }), 'invalid_body'],
      [JSON.stringify({ messages: [{ role: 'user', content: 'x' }], format: 'xml' }), 'invalid_body'],
      [JSON.stringify({ messages: [{ role: 'user', content: 'x' }], id: 'bad id!' }), 'invalid_body'],
      [JSON.stringify({ messages: [{ role: 'user', content: 'x' }], model: 42 }), 'invalid_body'],
      [JSON.stringify({ messages: [{ role: 'tool', content: 'x' }] }), 'invalid_body'],
    ];
    for (const [body, code] of cases) {
      const res = await fetch(`${srv.base}/v1/ai/chat`, { method: 'POST', body });
      assert.equal(res.status, 400, body);
      assert.equal((await res.json()).error.code, code, body);
    }
  });
});

// ---- scale ----

test('500 concurrent streams each equal their upstream transcript', { timeout: 120000 }, async () => {
  // Every tenth stream replays a recorded transcript (about 400 events); the
  // others ask the echo model for a text of their own, so a token relayed to
  // the wrong stream, lost or doubled shows up. Both dialects, two servers.
  const n = 500;
  const t0 = Date.now();
  const results = await Promise.all(Array.from({ length: n }, async (_, i) => {
    const s = i % 4 < 2 ? srv : srvA;
    let model, want, question;
    if (i % 10 === 0) {
      model = i % 20 ? 'code' : 'story';
      want = model === 'code' ? CODE : STORY;
      question = `stream ${i}`;
    } else {
      model = 'echo';
      question = Array.from({ length: 30 }, (_, k) => `s${i}w${k}${k % 7 ? '' : 'é'}`).join(' ');
      want = question;
    }
    const res = await chat(s.base, ask(question, { model }));
    assert.equal(res.status, 200, `stream ${i}`);
    let text;
    try {
      text = await readText(res);
    } catch (e) {
      const last = (await historyAll(s.base, `ai:${res.headers.get('x-stream-id')}`, 0)).at(-1);
      throw new Error(`stream ${i} broke: ${JSON.stringify(last)}`);
    }
    return { i, text, want };
  }));
  const wrong = results.filter((r) => r.text !== r.want);
  assert.equal(wrong.length, 0, `streams that differ: ${wrong.map((r) => r.i).join(',')}`);
  console.log(`500 streams in ${Date.now() - t0} ms`);
});
