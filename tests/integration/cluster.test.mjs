// Clustering over Redis against the real binary: several switchboard processes
// pointed at one redis-server (started here, on its own loopback port) form
// one cluster. Checked: cluster mode refuses --data-dir; every publish (HTTP,
// the WebSocket publish op, ?room= frames) gets one cluster-wide id and every
// node keeps the same history in the same order; the 201 comes after the
// message is applied on the publishing node; cursors from one node resume on
// another with no gap and no duplicate; Idempotency-Key holds across nodes;
// rooms span nodes; the metrics; --cluster-prefix isolates clusters and
// --cluster-log-size bounds the stream; a node started later catches up; a
// cut pub/sub connection loses nothing; with Redis down publishes are
// 503 cluster_unavailable while reads are served, and they succeed again once
// Redis is back.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { freePort, redisCommand, startRedis } from './lib/redis.mjs';
import { binaryPath, sleep, sseConnect, startServer, waitFor, eventually } from './lib/server.mjs';

// ---- redis-server, our own ------------------------------------------------------

const rand = Math.random().toString(36).slice(2, 10);
const PREFIX = `sbA${rand}`; // the main cluster
const PREFIX_D = `sbD${rand}`; // a second, separate cluster on the same Redis

let redisPort;
let redis = null; // { child, exited, log }

async function killRedis() {
  if (!redis) return;
  const r = redis;
  redis = null;
  if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
  await r.exited;
}

const redisCmd = (...args) => redisCommand(redisPort, ...args);
const redisKeys = () => redisCmd('KEYS', '*');
const pubsubClients = async () => (await redisCmd('CLIENT', 'LIST', 'TYPE', 'pubsub')).split('\n').filter((l) => l.includes('addr=')).length;

// ---- nodes --------------------------------------------------------------------------

const nodes = new Set();

function clusterArgs(prefix = PREFIX, extra = []) {
  return ['--workers', '2', '--cluster-redis', `127.0.0.1:${redisPort}`, '--cluster-prefix', prefix, ...extra];
}

async function startNode(name, { prefix = PREFIX, extra = [] } = {}) {
  const n = await startServer(clusterArgs(prefix, extra));
  n.name = name;
  nodes.add(n);
  try {
    await waitFor(() => /msg="cluster ready"/.test(n.log()), { timeout: 15000, what: `${name}: msg="cluster ready"` });
  } catch (e) {
    throw new Error(`${e.message}\n--- ${name} log ---\n${n.log().slice(-3000)}`);
  }
  return n;
}

const logTail = (n, chars = 2500) => `\n--- ${n.name} log (tail) ---\n${n.log().slice(-chars)}`;

async function stopNode(n) {
  nodes.delete(n);
  const r = await n.stop();
  const log = n.log();
  assert.equal(r.code, 0, `${n.name} exits 0 on SIGTERM (got ${r.code ?? r.signal}):\n${log.slice(-3000)}`);
  assert.doesNotMatch(log, /AddressSanitizer|LeakSanitizer|runtime error:/, `${n.name}: no sanitizer report:\n${log.slice(-3000)}`);
}

let A, B;

before(async () => {
  redisPort = await freePort();
  redis = await startRedis(redisPort);
  [A, B] = await Promise.all([startNode('A'), startNode('B', { extra: ['--data-dir', 'none'] })]);
});

after(async () => {
  for (const n of nodes) await n.kill();
  nodes.clear();
  await killRedis();
});

// ---- HTTP and WebSocket helpers ---------------------------------------------------

async function pub(node, channel, data, { key, event, timeout = 10000 } = {}) {
  const headers = { 'content-type': 'application/json' };
  if (key) headers['idempotency-key'] = key;
  let res;
  try {
    res = await fetch(`${node.base}/v1/channels/${encodeURIComponent(channel)}/messages`, {
      method: 'POST', headers, body: JSON.stringify(event ? { event, data } : { data }), signal: AbortSignal.timeout(timeout),
    });
  } catch (e) {
    throw new Error(`POST ${channel} on ${node.name}: no reply (${e.name}: ${e.message})`);
  }
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  return { status: res.status, body };
}

async function pubOk(node, channel, data, opts) {
  const r = await pub(node, channel, data, opts);
  assert.equal(r.status, 201, `POST ${channel} on ${node.name} ${JSON.stringify(data)}: ${JSON.stringify(r.body)}`);
  assert.equal(typeof r.body.id, 'string', 'the id is a string');
  return r.body.id;
}

async function getJson(node, p) {
  const res = await fetch(`${node.base}${p}`, { signal: AbortSignal.timeout(10000) });
  const text = await res.text();
  assert.equal(res.status, 200, `GET ${p} on ${node.name}: ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

// The whole kept history of a channel on one node, page by page.
async function history(node, channel) {
  const out = [];
  let since = '0';
  for (;;) {
    const r = await getJson(node, `/v1/channels/${encodeURIComponent(channel)}/messages?since=${since}&limit=1000`);
    assert.equal(r.reset, false, `history of ${channel} on ${node.name} does not reset`);
    out.push(...r.messages);
    if (r.messages.length < 1000) return out;
    since = r.next;
  }
}
const historyIds = async (node, channel) => (await history(node, channel)).map((m) => m.id);

// Compares two id lists and says what is missing, extra, doubled or out of order.
function assertIds(actual, expected, label) {
  if (actual.length === expected.length && actual.every((x, i) => x === expected[i])) return;
  const a = new Set(actual);
  const e = new Set(expected);
  const missing = expected.filter((x) => !a.has(x));
  const extra = actual.filter((x) => !e.has(x));
  const dups = [...new Set(actual.filter((x, i) => actual.indexOf(x) !== i))];
  const at = actual.findIndex((x, i) => x !== expected[i]);
  const show = (l) => `[${l.slice(0, 8).join(',')}${l.length > 8 ? `,... ${l.length} in all` : ''}]`;
  throw new assert.AssertionError({
    message: `${label}: got ${actual.length} ids, expected ${expected.length}; missing ${show(missing)}; ` +
      `unexpected ${show(extra)}; duplicated ${show(dups)}; first difference at index ${at}: ` +
      `got ${actual[at]} expected ${expected[at]}`,
    actual, expected, operator: 'deepStrictEqual',
  });
}

function assertIncreasing(ids, label) {
  for (let i = 1; i < ids.length; i++)
    assert.ok(BigInt(ids[i]) > BigInt(ids[i - 1]), `${label}: ids increase, but ${ids[i]} (index ${i}) follows ${ids[i - 1]}`);
}

const byId = (x, y) => (BigInt(x) < BigInt(y) ? -1 : BigInt(x) > BigInt(y) ? 1 : 0);


function openWs(node, p = '/v1/ws') {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${node.port}${p}`);
    ws.inbox = [];
    ws.raw = [];
    ws.nextRef = 1;
    ws.on('message', (d, binary) => {
      ws.raw.push({ binary, data: Buffer.from(d) });
      if (!binary) { try { ws.inbox.push(JSON.parse(d.toString())); } catch { /* raw room text */ } }
    });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

async function wsRequest(ws, op, what) {
  const ref = ws.nextRef++;
  ws.send(JSON.stringify({ ...op, ref }));
  let reply;
  await waitFor(() => (reply = ws.inbox.find((f) => f.ref === ref)), { timeout: 10000, what: `the reply to ${what}` });
  return reply;
}

async function wsPub(ws, channel, data, what) {
  const r = await wsRequest(ws, { op: 'publish', channel, event: 'ws', data }, what);
  assert.equal(r.op, 'ok', `${what}: ${JSON.stringify(r)}`);
  assert.equal(typeof r.id, 'string', `${what} answers an id: ${JSON.stringify(r)}`);
  return r.id;
}

const sseIds = (s) => s.events.filter((e) => e.event !== 'reset').map((e) => e.id);

async function sse(node, q, headers = {}) {
  const s = await sseConnect(node.port, `/v1/sse?${q}`, { headers }).ready;
  assert.equal(s.status, 200, `SSE ${q} on ${node.port}: ${s.head}`);
  return s;
}

// Prometheus text and /api/metrics, the cluster part.
const CLUSTER_COUNTERS = ['published', 'applied', 'catchups', 'gaps'];
async function clusterMetrics(node) {
  const res = await fetch(`${node.base}/metrics`, { signal: AbortSignal.timeout(10000) });
  const text = await res.text();
  const get = (name) => {
    const m = text.match(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm'));
    assert.ok(m, `${node.name}: /metrics has ${name}:\n${text.split('\n').filter((l) => l.includes('cluster')).join('\n')}`);
    return Number(m[1]);
  };
  const prom = { connected: get('switchboard_cluster_connected') };
  for (const c of CLUSTER_COUNTERS) {
    prom[c] = get(`switchboard_cluster_${c}_total`);
    assert.match(text, new RegExp(`^# TYPE switchboard_cluster_${c}_total counter$`, 'm'), `${node.name}: ${c} is typed a counter`);
  }
  const json = (await getJson(node, '/api/metrics')).cluster;
  assert.ok(json && typeof json === 'object', `${node.name}: /api/metrics has a cluster object`);
  assert.equal(typeof json.connected, 'boolean', `${node.name}: cluster.connected is a boolean: ${JSON.stringify(json)}`);
  for (const c of CLUSTER_COUNTERS)
    assert.ok(Number.isInteger(json[c]) && json[c] >= 0, `${node.name}: cluster.${c} is a count: ${JSON.stringify(json)}`);
  return { prom, json };
}

// Every id handed out in this run, to check that later ones are above it.
let maxId = 0n;
const seen = (...ids) => { for (const id of ids) if (BigInt(id) > maxId) maxId = BigInt(id); };

// ---- the tests ------------------------------------------------------------------------

test('--cluster-redis with --data-dir is refused at start', { timeout: 20000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-cluster-dd-'));
  try {
    const child = spawn(binaryPath(), ['serve', '--listen', '127.0.0.1:0', ...clusterArgs(`${PREFIX}x`), '--data-dir', dir], {
      env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let log = '';
    child.stdout.on('data', (d) => { log += d; });
    child.stderr.on('data', (d) => { log += d; });
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    const r = await Promise.race([exited, sleep(10000).then(() => null)]);
    if (!r) { child.kill('SIGKILL'); await exited; }
    assert.ok(r, `the process exits by itself (still running after 10 s):\n${log}`);
    assert.ok(r.code !== 0 && r.code !== null, `it exits non-zero (got ${r.code ?? r.signal}):\n${log}`);
    assert.doesNotMatch(log, /msg="listening"/, 'it never listens');
    assert.doesNotMatch(log, /AddressSanitizer|LeakSanitizer/, log);
    // Not the option parser's "unknown option": the flag is known, the combination refused.
    const line = log.split('\n').find((l) => /cluster/i.test(l) && !/unknown option/.test(l) &&
      (/level=error/.test(l) || /^switchboard: /.test(l)));
    assert.ok(line, `an error line mentions cluster:\n${log}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('HTTP and WS publishes on two nodes: one cluster-wide id order, the same history and stream on both, read-your-write on the publisher', { timeout: 30000 }, async () => {
  const ch = 'order';
  const sA = await sse(A, `channel=${ch}&since=0`);
  const sB = await sse(B, `channel=${ch}&since=0`);
  const acked = new Map(); // "src:n" -> id

  // Read-your-write: right after the 201 the publishing node's history has it.
  const checkOwn = async (node, id, label) => {
    const ids = await historyIds(node, ch);
    assert.ok(ids.includes(id), `${label}: ${id} is in ${node.name}'s history right after the acknowledgement (has ${ids.length}, last ${ids.at(-1)})`);
  };

  // Sequential, alternating nodes: every id is above the one before, whichever node gave it.
  let prev = null;
  for (let i = 0; i < 20; i++) {
    const node = i % 2 ? B : A;
    const id = await pubOk(node, ch, { src: `seq-${node.name}`, n: i });
    if (prev) assert.ok(BigInt(id) > BigInt(prev), `publish ${i} on ${node.name} got ${id}, not above ${prev} from the other node`);
    prev = id;
    acked.set(`seq-${node.name}:${i}`, id);
    const ids = await historyIds(node, ch);
    assert.equal(ids.at(-1), id, `publish ${i}: the last message in ${node.name}'s history right after its 201`);
  }

  // Concurrent: HTTP on A and B, the WS publish op on A and B, 15 each.
  const wsA = await openWs(A);
  const wsB = await openWs(B);
  const publisher = async (src, node, send) => {
    let last = null;
    for (let n = 0; n < 15; n++) {
      const id = await send({ src, n });
      if (last) assert.ok(BigInt(id) > BigInt(last), `${src}: ${id} after its own ${last}`);
      last = id;
      acked.set(`${src}:${n}`, id);
      await checkOwn(node, id, `${src} #${n}`);
    }
  };
  await Promise.all([
    publisher('http-A', A, (d) => pubOk(A, ch, d)),
    publisher('http-B', B, (d) => pubOk(B, ch, d)),
    publisher('ws-A', A, (d) => wsPub(wsA, ch, d, `WS publish ${d.src} #${d.n}`)),
    publisher('ws-B', B, (d) => wsPub(wsB, ch, d, `WS publish ${d.src} #${d.n}`)),
  ]);
  wsA.close(); wsB.close();

  const expected = [...acked.values()].sort(byId);
  assert.equal(new Set(expected).size, 80, 'all 80 publishes got distinct ids');
  seen(...expected);
  for (const node of [A, B])
    await eventually(async () => assertIds(await historyIds(node, ch), expected, `history on ${node.name}`));
  await eventually(() => { assertIds(sseIds(sA), expected, 'SSE stream on A'); assertIds(sseIds(sB), expected, 'SSE stream on B'); });
  await sleep(200); // nothing more arrives: no duplicates
  assertIds(sseIds(sA), expected, 'SSE stream on A, 200 ms later');
  assertIds(sseIds(sB), expected, 'SSE stream on B, 200 ms later');

  // The messages themselves are the same everywhere, each under its acknowledged id.
  const hA = await history(A, ch);
  const hB = await history(B, ch);
  for (const [i, m] of hA.entries()) {
    assert.equal(acked.get(`${m.data.src}:${m.data.n}`), m.id, `${m.data.src} #${m.data.n} is stored under its acknowledged id`);
    assert.deepEqual({ id: hB[i].id, channel: hB[i].channel, event: hB[i].event, data: hB[i].data },
      { id: m.id, channel: ch, event: m.data.src.startsWith('ws-') ? 'ws' : 'message', data: m.data }, `message ${i} is the same on B`);
  }
  for (const [i, e] of sB.events.entries()) assert.deepEqual(JSON.parse(e.data), hA[i].data, `SSE event ${i} on B carries the data`);
  sA.close(); sB.close();
});

test('cursors from one node resume on the other: Last-Event-ID, since, WS since, history since', { timeout: 30000 }, async () => {
  const ch = 'resume';
  const published = [];
  const pubN = async (n, nodes) => { for (let i = 0; i < n; i++) published.push(await pubOk(nodes[published.length % nodes.length], ch, { k: published.length })); };
  await pubN(10, [A, B]);
  const first = await sse(A, `channel=${ch}&since=0`);
  await eventually(() => assertIds(sseIds(first), published, 'backlog on A'));
  const cursor = first.lastId;
  const mid = first.events[4].id;
  assert.equal(cursor, published[9]);
  first.close();

  await pubN(10, [B, A]); // while the reader is away
  const sB = await sse(B, `channel=${ch}`, { 'Last-Event-ID': cursor });
  const sB2 = await sse(B, `channel=${ch}&since=${mid}`);
  const ws = await openWs(B);
  const ok = await wsRequest(ws, { op: 'subscribe', channel: ch, since: mid }, 'WS subscribe on B');
  assert.equal(ok.op, 'ok', JSON.stringify(ok));
  await pubN(5, [A, B]); // live after the resume
  seen(...published);
  const wsIds = () => ws.inbox.filter((f) => f.op === 'message' && f.channel === ch).map((f) => f.id);
  await eventually(() => {
    assertIds(sseIds(sB), published.slice(10), 'B, Last-Event-ID from A');
    assertIds(sseIds(sB2), published.slice(5), 'B, since= from A');
    assertIds(wsIds(), published.slice(5), 'B, WS subscribe since from A');
  });
  const h = await getJson(B, `/v1/channels/${ch}/messages?since=${cursor}`);
  assert.equal(h.reset, false, 'history since a cursor from A: no reset on B');
  assertIds(h.messages.map((m) => m.id), published.slice(10), 'B history since a cursor from A');
  await sleep(150);
  assert.ok(![...sB.events, ...sB2.events].some((e) => e.event === 'reset'), 'no SSE reset');
  assert.ok(!ws.inbox.some((f) => f.op === 'reset'), 'no WS reset');
  assertIds(sseIds(sB), published.slice(10), 'B, Last-Event-ID from A, 150 ms later');
  assertIds(wsIds(), published.slice(5), 'B, WS, 150 ms later');

  // And the other way: B's cursor on A.
  const back = sB.lastId;
  sB.close(); sB2.close(); ws.close();
  const more = [];
  for (let i = 0; i < 3; i++) more.push(await pubOk(B, ch, { k: `more-${i}` }));
  seen(...more);
  const sA = await sse(A, `channel=${ch}`, { 'Last-Event-ID': back });
  await eventually(() => assertIds(sseIds(sA), more, 'A, Last-Event-ID from B'));
  await sleep(100);
  assertIds(sseIds(sA), more, 'A, Last-Event-ID from B, 100 ms later');
  sA.close();
});

test('Idempotency-Key is cluster-wide: the same key on A then B is one message with one id', { timeout: 20000 }, async () => {
  const ch = 'idem';
  const k1 = `k1-${rand}`;
  const k2 = `k2-${rand}`;
  const r1 = await pub(A, ch, { v: 1 }, { key: k1 });
  assert.equal(r1.status, 201, JSON.stringify(r1.body));
  const r1b = await pub(B, ch, { v: 1 }, { key: k1 });
  assert.equal(r1b.status, 201, `the repeat on B: ${JSON.stringify(r1b.body)}`);
  assert.equal(r1b.body.id, r1.body.id, 'the repeat on B returns the id given on A');
  const r1a = await pub(A, ch, { v: 1 }, { key: k1 });
  assert.equal(r1a.body.id, r1.body.id, 'and so does a third try, on A again');

  const r2 = await pub(B, ch, { v: 2 }, { key: k2 });
  assert.equal(r2.status, 201);
  const r2a = await pub(A, ch, { v: 2 }, { key: k2 });
  assert.equal(r2a.status, 201);
  assert.equal(r2a.body.id, r2.body.id, 'a key first used on B, repeated on A');
  const r3 = await pub(B, ch, { v: 3 }, { key: `k3-${rand}` });
  assert.equal(r3.status, 201, JSON.stringify(r3.body));
  assert.ok(r3.body.id !== r1.body.id && r3.body.id !== r2.body.id,
    `another key is another message: k3 got ${r3.body.id} (k1 ${r1.body.id}, k2 ${r2.body.id})`);
  assert.notEqual(r2.body.id, r1.body.id, `k2 (${r2.body.id}) is not k1's message`);
  const want = [r1.body.id, r2.body.id, r3.body.id];
  seen(...want);
  assertIncreasing(want, 'idem');
  for (const node of [A, B]) await eventually(async () => assertIds(await historyIds(node, ch), want, `idem history on ${node.name}`));
  await sleep(150);
  for (const node of [A, B]) {
    const h = await history(node, ch);
    assertIds(h.map((m) => m.id), want, `idem history on ${node.name}, 150 ms later`);
    assert.deepEqual(h.map((m) => m.data), [{ v: 1 }, { v: 2 }, { v: 3 }]);
  }
});

test('publishes that wait for Redis go in batches: 600 WS publishes while Redis is paused, repeats inside the burst, one id each, in order on both nodes', { timeout: 30000 }, async () => {
  const ch = 'burst';
  const N = 600;
  const sB = await sse(B, `channel=${ch}&since=0`);
  const before = (await getJson(A, '/api/metrics')).cluster;
  const ws = await openWs(A);
  // Every tenth publish repeats the key of the one before it: the repeat is
  // in the same burst, very likely in the same script call.
  const ops = [];
  for (let i = 0; i < N; i++) {
    const key = `burst-${rand}-${i % 10 === 9 ? i - 1 : i}`;
    ops.push({ op: 'publish', channel: ch, data: { i }, key, ref: ws.nextRef++ });
  }
  // Redis paused: at most CALLS_OUT (2) script calls go out, the rest of the
  // burst waits for their answers and then goes BATCH_MAX (256) a call.
  const frames = ops.map((o) => JSON.stringify(o));
  process.kill(redis.child.pid, 'SIGSTOP');
  try {
    ws._socket.cork();
    for (const f of frames) ws.send(f);
    ws._socket.uncork();
    await sleep(500); // the loop has parsed and queued them all
  } finally {
    process.kill(redis.child.pid, 'SIGCONT');
  }
  const replies = new Map();
  await waitFor(() => {
    for (const f of ws.inbox) if (f.ref) replies.set(f.ref, f);
    return replies.size === N;
  }, { timeout: 20000, what: `${N} publish replies (have ${replies.size})` });
  const ids = ops.map((o) => {
    const r = replies.get(o.ref);
    assert.equal(r.op, 'ok', `publish ${o.data.i}: ${JSON.stringify(r)}`);
    return r.id;
  });
  for (let i = 9; i < N; i += 10) assert.equal(ids[i], ids[i - 1], `publish ${i} repeats the key of ${i - 1}: the same id`);
  const distinct = ids.filter((_, i) => i % 10 !== 9);
  assert.equal(new Set(distinct).size, N - N / 10, 'every other publish got an id of its own');
  assertIncreasing(distinct, 'burst ids in send order');
  seen(...distinct);
  const after = (await getJson(A, '/api/metrics')).cluster;
  const calls = after.publishCalls - before.publishCalls;
  const published = after.published - before.published;
  assert.equal(published, distinct.length, `A counts ${distinct.length} new messages published (repeats are not)`);
  assert.ok(calls >= 3 && calls <= 2 + Math.ceil(N / 256) + 1, `${N} publishes held behind 2 unanswered calls took ${calls} script calls`);
  console.log(`# ${N} publishes in ${calls} script calls`);
  for (const node of [A, B]) {
    const h = await history(node, ch);
    assertIds(h.map((m) => m.id), distinct, `burst history on ${node.name}`);
    assert.deepEqual(h.map((m) => m.data.i), ops.filter((_, i) => i % 10 !== 9).map((o) => o.data.i), `burst data in order on ${node.name}`);
  }
  await eventually(() => assertIds(sseIds(sB), distinct, 'burst over SSE on B'));
  ws.close();
  sB.close();
});

test('an append Redis refuses fails that publish alone: 503, the next one is numbered and reaches the other node', { timeout: 30000 }, async () => {
  // Put an entry far ahead in the log stream: XADD of the next ids fails
  // ("equal or smaller than the target stream top item") until INCR passes it.
  const ch = 'refused';
  const id0 = await pubOk(A, ch, { n: 0 });
  const logKey = `${PREFIX}:log`;
  assert.equal(await redisCmd('TYPE', logKey), 'stream', `${logKey} is the log stream (keys: ${JSON.stringify(await redisKeys())})`);
  const top = BigInt(id0) + 3n;
  await redisCmd('XADD', logKey, `${top}-0`, 'm', 'not a record');
  const ws = await openWs(A);
  const ops = [1, 2, 3, 4].map((n) => ({ op: 'publish', channel: ch, data: { n }, ref: ws.nextRef++ }));
  ws._socket.cork();
  for (const o of ops) ws.send(JSON.stringify(o));
  ws._socket.uncork();
  await waitFor(() => ops.every((o) => ws.inbox.some((f) => f.ref === o.ref)), { timeout: 10000, what: 'four replies' });
  const rs = ops.map((o) => ws.inbox.find((f) => f.ref === o.ref));
  // Ids id0+1..id0+3 are refused by the stream; the fourth gets id0+4.
  const ok = rs.filter((r) => r.op === 'ok');
  const failed = rs.filter((r) => r.op !== 'ok');
  assert.deepEqual(rs.map((r) => r.op), ['error', 'error', 'error', 'ok'], `replies: ${JSON.stringify(rs)}`);
  for (const r of failed) assert.equal(r.code, 'cluster_unavailable', `a refused append answers cluster_unavailable: ${JSON.stringify(r)}`);
  assert.equal(ok[0].id, String(top + 1n), 'the first append past the stream top is numbered');
  seen(ok[0].id);
  for (const node of [A, B])
    await eventually(async () => assertIds(await historyIds(node, ch), [id0, ok[0].id], `history of ${ch} on ${node.name}`));
  ws.close();
});

test('a Redis that stops answering: the publish waiting on it answers 503 within seconds, and publishing works again when Redis does', { timeout: 30000 }, async () => {
  const ch = 'stall';
  const id0 = await pubOk(A, ch, { n: 0 });
  const t0 = Date.now();
  process.kill(redis.child.pid, 'SIGSTOP');
  let r;
  try {
    r = await pub(A, ch, { n: 1 }, { key: `stall-${rand}`, timeout: 15000 });
  } finally {
    process.kill(redis.child.pid, 'SIGCONT');
  }
  const waited = Date.now() - t0;
  assert.equal(r.status, 503, `a publish Redis never answers: ${JSON.stringify(r.body)}`);
  assert.equal(r.body.error.code, 'cluster_unavailable');
  assert.ok(waited >= 4500 && waited < 9000, `answered after the 5 s deadline, not before and not much later: ${waited} ms`);
  assert.match(A.log(), /Redis did not answer a publish in time/, 'the node says why');
  // Back: the retry with the same key gets one id, whether or not the first try was numbered.
  let id1;
  await eventually(async () => {
    const again = await pub(A, ch, { n: 1 }, { key: `stall-${rand}` });
    assert.equal(again.status, 201, JSON.stringify(again.body));
    id1 = again.body.id;
  }, { timeout: 10000 });
  seen(id1);
  for (const node of [A, B])
    await eventually(async () => assertIds(await historyIds(node, ch), [id0, id1], `history of ${ch} on ${node.name}`), { timeout: 10000 });
});

const ROOM = `xroom-${rand}`;
test('rooms span nodes: a frame from a member on A reaches the members on B (and A), never the sender or other rooms', { timeout: 20000 }, async () => {
  const room = ROOM;
  const a = await openWs(A, `/?room=${room}`);
  const b = await openWs(B, `/?room=${room}`);
  const c = await openWs(A, `/doc?room=${room}`);
  const other = await openWs(B, `/?room=other-${rand}`);
  const text1 = JSON.stringify({ type: 'presence', user: { id: 'u1', name: 'Ann', cursor: { x: 1, y: 2 } } });
  const text2 = 'plain text, not JSON';
  const bin = Buffer.from([0, 1, 2, 250, 251, 255]);
  const text3 = JSON.stringify({ type: 'cursor', x: 10, y: 20 });
  a.send(text1);
  a.send(text2);
  a.send(bin);
  a.send(text3);
  const frames = (ws) => ws.raw.map((f) => (f.binary ? `bin:${f.data.toString('hex')}` : f.data.toString()));
  const want = [text1, text2, `bin:${bin.toString('hex')}`, text3];
  await eventually(() => {
    assert.deepEqual(frames(b), want, 'the member on B got the frames from A verbatim, in order');
    assert.deepEqual(frames(c), want, 'the other member on A too');
  });
  b.send('from-b');
  await eventually(() => {
    assert.deepEqual(frames(a), ['from-b'], 'A got the frame sent on B, and none of its own');
    assert.deepEqual(frames(c), [...want, 'from-b']);
  });
  await sleep(150);
  assert.deepEqual(frames(a), ['from-b'], 'the sender never gets its own frames');
  assert.deepEqual(frames(b), want, 'B never gets its own frame back');
  assert.deepEqual(frames(other), [], 'another room gets nothing');

  // Room frames are cluster messages: the same ids on both nodes.
  const hA = await history(A, `room:${room}`);
  assert.equal(hA.length, 5, `room history on A holds the 5 frames: ${JSON.stringify(hA)}`);
  await eventually(async () => assertIds(await historyIds(B, `room:${room}`), hA.map((m) => m.id), 'room history on B'));
  assertIncreasing(hA.map((m) => m.id), 'room history');
  // (A text frame comes back as its text or as its JSON value; either way the same bytes.)
  const asText = (d) => (typeof d === 'string' ? d : JSON.stringify(d));
  assert.deepEqual(hA.map((m) => asText(m.data)), [text1, text2, bin.toString('base64'), text3, 'from-b'], 'room history holds the frames');
  assert.deepEqual((await history(B, `room:${room}`)).map((m) => m.data), hA.map((m) => m.data), 'the same room history on B');
  seen(...hA.map((m) => m.id));
  // a sent the seeds' presence frame, so its close publishes a leave message
  // into the room: let it land before the metrics are counted.
  a.close();
  await eventually(async () => assert.equal((await history(A, `room:${room}`)).length, 6, 'the leave message of a is in the room history'));
  seen(...(await historyIds(A, `room:${room}`)));
  for (const ws of [b, c, other]) ws.close();
});

test('metrics: switchboard_cluster_* in /metrics and the cluster object in /api/metrics', { timeout: 20000 }, async () => {
  const ch = 'metrics';
  // Room members closed by the previous test publish their `leave` message
  // as they go, through the cluster too: wait until nothing is in flight.
  let before, still = 0;
  for (let t = Date.now(); Date.now() - t < 5000 && still < 3; await sleep(100)) {
    const m = { A: await clusterMetrics(A), B: await clusterMetrics(B) };
    still = before && m.A.prom.published === before.A.prom.published && m.B.prom.applied === before.B.prom.applied ? still + 1 : 0;
    before = m;
  }
  for (const [n, m] of Object.entries(before)) {
    assert.equal(m.prom.connected, 1, `${n}: switchboard_cluster_connected 1`);
    assert.equal(m.json.connected, true, `${n}: cluster.connected true`);
    assert.ok(m.prom.applied > 0 && m.json.applied > 0, `${n}: messages were applied already: ${JSON.stringify(m)}`);
  }
  assert.ok(before.A.prom.published > 0 && before.B.prom.published > 0, 'both nodes published already');
  const K = 5;
  const ids = [];
  for (let i = 0; i < K; i++) ids.push(await pubOk(A, ch, { i }));
  seen(...ids);
  await eventually(async () => assertIds(await historyIds(B, ch), ids, 'metrics channel on B'));
  await sleep(100);
  const now = { A: await clusterMetrics(A), B: await clusterMetrics(B) };
  const d = (n, c) => now[n].prom[c] - before[n].prom[c];
  assert.equal(d('A', 'published'), K, `A published ${K} (Prometheus: ${before.A.prom.published} -> ${now.A.prom.published})`);
  assert.equal(d('B', 'published'), 0, 'B published nothing');
  assert.equal(d('A', 'applied'), K, `A applied its own ${K} (${before.A.prom.applied} -> ${now.A.prom.applied})`);
  assert.equal(d('B', 'applied'), K, `B applied A's ${K} (${before.B.prom.applied} -> ${now.B.prom.applied})`);
  for (const n of ['A', 'B']) {
    for (const c of CLUSTER_COUNTERS)
      assert.equal(now[n].json[c], now[n].prom[c], `${n}: /api/metrics cluster.${c} equals the Prometheus counter`);
    assert.ok(now[n].prom.catchups >= 1, `${n}: at least the start-up catch-up is counted (${now[n].prom.catchups})`);
  }
});

test('--cluster-prefix separates clusters on one Redis; --cluster-log-size bounds the stream', { timeout: 30000 }, async () => {
  const D = await startNode('D', { prefix: PREFIX_D, extra: ['--cluster-log-size', '100'] });
  const ch = 'order'; // the same name as the main cluster's channel
  const ids = [];
  for (let i = 0; i < 300; i += 4)
    ids.push(...await Promise.all([0, 1, 2, 3].map((j) => pubOk(D, ch, { d: i + j }))));
  ids.sort(byId);
  assertIds(await historyIds(D, ch), ids, 'history on D (its own cluster)');
  await sleep(100);
  const onA = await history(A, ch);
  assert.equal(onA.length, 80, 'the main cluster does not see D\'s messages');
  assert.ok(!onA.some((m) => m.data.d !== undefined), 'no message of D on A');
  const dInMain = await historyIds(D, 'resume');
  assert.deepEqual(dInMain, [], 'D does not see the main cluster\'s channels');

  const keys = await redisKeys();
  const shown = JSON.stringify(keys);
  const stray = keys.filter((k) => !k.startsWith(PREFIX) && !k.startsWith(PREFIX_D));
  assert.deepEqual(stray, [], `every Redis key starts with a --cluster-prefix (keys: ${shown})`);
  const keysD = keys.filter((k) => k.startsWith(PREFIX_D));
  assert.ok(keysD.length > 0 && keys.some((k) => k.startsWith(PREFIX)), `both prefixes have keys: ${shown}`);
  const streamsD = [];
  for (const k of keysD) if (await redisCmd('TYPE', k) === 'stream') streamsD.push(k);
  assert.ok(streamsD.length >= 1, `D's cluster has a Redis stream (keys: ${JSON.stringify(keysD)})`);
  for (const k of streamsD) {
    const len = await redisCmd('XLEN', k);
    // MAXLEN ~ trims whole stream nodes (100 entries by default), so allow up to one more node.
    assert.ok(len >= 100 && len <= 200, `stream ${k} holds about --cluster-log-size 100 entries after 300 publishes: ${len}`);
  }
  await stopNode(D);
});

let C;
test('a node started later has the earlier history, then takes part like the others', { timeout: 30000 }, async () => {
  const ch = 'late';
  const early = [];
  for (let i = 0; i < 20; i++) early.push(await pubOk(i % 2 ? B : A, ch, { i }));
  seen(...early);
  const chans = ['order', 'resume', 'idem', 'metrics', `room:${ROOM}`, ch];
  const want = {};
  for (const c of chans) want[c] = await history(A, c);
  C = await startNode('C', { extra: ['--cluster-log-size', '50000'] });
  // Caught up once "cluster ready" is logged: no waiting here.
  for (const c of chans) {
    const h = await history(C, c);
    assertIds(h.map((m) => m.id), want[c].map((m) => m.id), `history of ${c} on C right after "cluster ready"`);
    assert.deepEqual(h.map((m) => [m.event, m.data]), want[c].map((m) => [m.event, m.data]), `messages of ${c} on C`);
  }
  // A cursor from A resumes on C.
  const s = await sse(C, `channel=${ch}`, { 'Last-Event-ID': early[9] });
  const later = [await pubOk(C, ch, { i: 'from-C' }), await pubOk(A, ch, { i: 'from-A' })];
  seen(...later);
  assert.ok(BigInt(later[0]) > BigInt(early.at(-1)), `C's first id ${later[0]} is above the cluster's ${early.at(-1)}`);
  await eventually(() => assertIds(sseIds(s), [...early.slice(10), ...later], 'C, Last-Event-ID from A'));
  for (const node of [A, B, C])
    await eventually(async () => assertIds(await historyIds(node, ch), [...early, ...later], `late history on ${node.name}`));
  s.close();
});

test('a cut pub/sub connection (CLIENT KILL TYPE pubsub): the nodes reconnect, catch up, and lose or double nothing', { timeout: 30000 }, async (t) => {
  const ch = 'cut';
  const sB = await sse(B, `channel=${ch}&since=0`);
  const sC = await sse(C, `channel=${ch}&since=0`);
  const catchupsBefore = (await clusterMetrics(B)).prom.catchups;
  const subs = await pubsubClients();
  assert.ok(subs >= 3, `3 nodes hold pub/sub connections (${subs})`);
  const published = [];
  let retries = 0;
  let killed = null;
  for (let i = 0; i < 40; i++) {
    if (i === 15) killed = await redisCmd('CLIENT', 'KILL', 'TYPE', 'pubsub');
    // A key per message: a retry after a failed answer cannot store it twice.
    let r;
    for (let attempt = 0; ; attempt++) {
      r = await pub(A, ch, { i }, { key: `cut-${rand}-${i}` });
      if (r.status === 201 || attempt >= 20) break;
      retries++;
      t.diagnostic(`publish ${i} on A answered ${r.status} ${JSON.stringify(r.body)}; retrying`);
      await sleep(250);
    }
    assert.equal(r.status, 201, `publish ${i} on A: ${JSON.stringify(r.body)}`);
    const j = published.indexOf(r.body.id);
    assert.equal(j, -1, `publish ${i} (key cut-${rand}-${i}) got id ${r.body.id}, already given to publish ${j} (another key)`);
    published.push(r.body.id);
    await sleep(5);
  }
  assert.ok(killed >= 3, `CLIENT KILL TYPE pubsub closed the nodes' pub/sub connections (${killed})`);
  seen(...published);
  assertIncreasing(published, 'cut publishes');
  await eventually(() => {
    assertIds(sseIds(sB), published, 'SSE on B across the cut');
    assertIds(sseIds(sC), published, 'SSE on C across the cut');
  }, { timeout: 10000 });
  for (const node of [A, B, C]) await eventually(async () => assertIds(await historyIds(node, ch), published, `cut history on ${node.name}`));
  await waitFor(async () => (await pubsubClients()) >= 3, { timeout: 10000, what: 'the 3 nodes subscribed again' });

  // Live again from every node.
  const tail = [await pubOk(B, ch, { i: 'B' }), await pubOk(C, ch, { i: 'C' })];
  seen(...tail);
  for (const node of [A, B, C]) await eventually(async () => assertIds(await historyIds(node, ch), [...published, ...tail], `cut history on ${node.name} after`));
  await eventually(() => assertIds(sseIds(sB), [...published, ...tail], 'SSE on B after the cut'));
  await sleep(150);
  assertIds(sseIds(sB), [...published, ...tail], 'SSE on B, 150 ms later');
  assertIds(sseIds(sC), [...published, ...tail], 'SSE on C, 150 ms later');
  const catchupsAfter = (await clusterMetrics(B)).prom.catchups;
  assert.ok(catchupsAfter > catchupsBefore, `B counted the catch-up after the cut (${catchupsBefore} -> ${catchupsAfter})`);
  t.diagnostic(`${retries} publish retries during the cut`);
  sB.close(); sC.close();
});

test('Redis down: publishes 503 cluster_unavailable, reads served from memory; Redis back: publishes succeed again', { timeout: 40000 }, async (t) => {
  const ch = 'down';
  const before = [];
  for (let i = 0; i < 6; i++) before.push(await pubOk([A, B, C][i % 3], ch, { i }));
  seen(...before);
  for (const node of [A, B, C]) await eventually(async () => assertIds(await historyIds(node, ch), before, `down history on ${node.name}`));
  const live = await sse(B, `channel=${ch}&since=0`); // stays connected through the outage
  await eventually(() => assertIds(sseIds(live), before, 'SSE on B before the outage'));
  const highest = maxId;

  await killRedis();
  const downAt = Date.now();
  for (const node of [A, B, C]) {
    await eventually(async () => {
      const m = await clusterMetrics(node);
      assert.equal(m.prom.connected, 0, `${node.name}: switchboard_cluster_connected 0 with Redis down`);
      assert.equal(m.json.connected, false, `${node.name}: cluster.connected false with Redis down`);
    }, { timeout: 10000 });
  }

  // Publishes are refused, on every node and on both transports.
  for (const node of [A, B, C]) {
    const r = await pub(node, ch, { refused: node.name }, { timeout: 8000 });
    assert.equal(r.status, 503, `POST on ${node.name} with Redis down: ${r.status} ${JSON.stringify(r.body)}`);
    assert.equal(r.body?.error?.code, 'cluster_unavailable', `the error code: ${JSON.stringify(r.body)}`);
    assert.equal(typeof r.body.error.message, 'string');
  }
  const ws = await openWs(C);
  const wr = await wsRequest(ws, { op: 'publish', channel: ch, data: { refused: 'ws' } }, 'WS publish with Redis down');
  assert.equal(wr.op, 'error', JSON.stringify(wr));
  assert.equal(wr.code, 'cluster_unavailable', JSON.stringify(wr));

  // Reads are served from memory: history, channel info, a new SSE stream, health.
  for (const node of [A, B, C]) {
    assertIds(await historyIds(node, ch), before, `history on ${node.name} with Redis down`);
    const info = await getJson(node, `/v1/channels/${ch}`);
    assert.equal(info.last?.id, before.at(-1), `channel info on ${node.name} with Redis down`);
    assert.equal((await fetch(`${node.base}/healthz`)).status, 200, `${node.name} healthz`);
  }
  const fresh = await sse(C, `channel=${ch}&since=${before[1]}`);
  await eventually(() => assertIds(sseIds(fresh), before.slice(2), 'a new SSE stream on C with Redis down'));
  fresh.close();

  // Down for 1.5 s at least (the nodes' reconnect attempts meet a closed
  // port), then back on the same port (empty: --save ''): publishes succeed again.
  await sleep(Math.max(0, downAt + 1500 - Date.now()));
  redis = await startRedis(redisPort);
  const t0 = Date.now();
  let back = null;
  let last = null;
  while (!back && Date.now() - t0 < 10000) {
    last = await pub(A, ch, { i: 'back-A' }, { key: `back-A-${rand}`, timeout: 8000 });
    if (last.status === 201) back = last.body.id;
    else await sleep(200);
  }
  assert.ok(back, `a publish on A succeeds within 10 s of Redis coming back (last: ${last?.status} ${JSON.stringify(last?.body)})${logTail(A)}`);
  const took = Date.now() - t0;
  let backB = null;
  await eventually(async () => {
    const r = await pub(B, ch, { i: 'back-B' }, { key: `back-B-${rand}`, timeout: 8000 });
    assert.equal(r.status, 201, `publish on B after Redis came back: ${r.status} ${JSON.stringify(r.body)}${logTail(B)}`);
    backB = r.body.id;
  }, { timeout: 10000, interval: 200 });
  const backC = await eventually(async () => {
    const r = await pub(C, ch, { i: 'back-C' }, { key: `back-C-${rand}`, timeout: 8000 });
    assert.equal(r.status, 201, `publish on C after Redis came back: ${r.status} ${JSON.stringify(r.body)}${logTail(C)}`);
    return r.body.id;
  }, { timeout: 10000, interval: 200 });
  const newIds = [back, backB, backC];
  assertIncreasing([highest.toString(), ...newIds], 'ids after Redis came back are above every earlier id');
  const want = [...before, ...newIds];
  for (const node of [A, B, C]) await eventually(async () => assertIds(await historyIds(node, ch), want, `down history on ${node.name} after Redis came back`), { timeout: 10000 });
  await eventually(() => assertIds(sseIds(live), want, 'the SSE stream on B kept through the outage'), { timeout: 10000 });
  for (const node of [A, B, C]) {
    const m = await clusterMetrics(node);
    assert.equal(m.prom.connected, 1, `${node.name}: switchboard_cluster_connected 1 again`);
    assert.equal(m.json.connected, true, `${node.name}: cluster.connected true again`);
  }
  // Rooms across nodes work again too.
  const ra = await openWs(A, `/?room=back-${rand}`);
  const rb = await openWs(C, `/?room=back-${rand}`);
  ra.send('after-outage');
  await eventually(() => assert.deepEqual(rb.raw.map((f) => f.data.toString()), ['after-outage'], 'a room frame from A reaches C after the outage'));
  ra.close(); rb.close(); ws.close();
  live.close();
  seen(...newIds);
  t.diagnostic(`publishes succeeded again ${took} ms after Redis restarted`);
});

test('every node shuts down cleanly (exit 0, no sanitizer report)', { timeout: 40000 }, async () => {
  for (const n of [A, B, C]) if (n && nodes.has(n)) await stopNode(n);
});
