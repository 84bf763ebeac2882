// Durable history (issue 7) against the real binary with --data-dir: kill -9
// in the middle of 100,000 publishes loses nothing that was acknowledged
// (fsync always and batch), a garbled and torn tail is cut and logged, an SSE
// subscriber resumes across a restart with no gap and no duplicate,
// retention deletes old segments and keeps the directory under
// --retain-bytes, and a full disk (RLIMIT_FSIZE on the running server, and a
// tiny tmpfs where mounting is allowed) turns publishes into 507 / error ops
// while readers keep being served.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import WebSocket from 'ws';
import { rawRequest, sleep, sseConnect, startServer, waitFor } from './lib/server.mjs';

const dirs = [];
function tmpDir(tag) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `sb-durable-${tag}-`));
  dirs.push(d);
  return d;
}
after(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });

// One keep-alive HTTP/1.1 connection with one request in flight: a raw socket
// is several times cheaper than fetch, which matters when the test has to
// push 100,000 publishes through a sanitized server on two cores.
class Conn {
  constructor(port) {
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.setNoDelay(true);
    this.buf = Buffer.alloc(0);
    this.pending = null;
    this.sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.parse(); });
    this.sock.on('error', () => {});
    this.sock.on('close', () => {
      this.closed = true;
      const p = this.pending;
      this.pending = null;
      p?.reject(new Error('connection closed'));
    });
  }

  parse() {
    if (!this.pending) return;
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = this.buf.subarray(0, end).toString('latin1');
    const m = head.match(/\r\ncontent-length: *(\d+)/i);
    const len = m ? Number(m[1]) : 0;
    if (this.buf.length < end + 4 + len) return;
    const body = this.buf.subarray(end + 4, end + 4 + len).toString('utf8');
    this.buf = this.buf.subarray(end + 4 + len);
    const p = this.pending;
    this.pending = null;
    p.resolve({ status: Number(head.slice(9, 12)), body: body ? JSON.parse(body) : null });
  }

  request(method, urlPath, body = '', headers = {}) {
    if (this.closed) return Promise.reject(new Error('connection closed'));
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      const b = Buffer.from(body);
      const h = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
      this.sock.write(`${method} ${urlPath} HTTP/1.1\r\nHost: x\r\n${h}Content-Length: ${b.length}\r\n\r\n`);
      if (b.length) this.sock.write(b);
    });
  }

  publish(channel, data, key) {
    const headers = { 'Content-Type': 'application/json' };
    if (key) headers['Idempotency-Key'] = key;
    return this.request('POST', `/v1/channels/${channel}/messages`, JSON.stringify({ data }), headers);
  }

  close() { this.sock.destroy(); }
}

// The whole kept history of a channel, page by page.
async function readAll(base, channel) {
  const out = [];
  let since = '0';
  for (;;) {
    const r = await (await fetch(`${base}/v1/channels/${channel}/messages?since=${since}&limit=1000`)).json();
    assert.equal(r.reset, false, `history of ${channel} does not reset`);
    out.push(...r.messages);
    if (r.messages.length < 1000) return out;
    since = r.next;
  }
}

function durableArgs(dir, mode, extra = []) {
  return ['--data-dir', dir, '--fsync', mode, '--workers', '2', ...extra];
}

// ---- kill -9 in the middle of 100,000 publishes ----------------------------------

const TOTAL = 100000;
const CLIENTS = 64;
const CHANNELS = 4;

async function crashRun(mode) {
  const dir = tmpDir(`crash-${mode}`);
  const args = durableArgs(dir, mode, ['--history-size', String(TOTAL)]);
  const per = (i) => Math.floor(TOTAL / CLIENTS) + (i < TOTAL % CLIENTS ? 1 : 0);
  const killAt = Math.floor(TOTAL * (0.2 + 0.6 * Math.random()));
  const acked = new Map(); // key -> id, from 201 replies
  const next = new Array(CLIENTS).fill(0); // the first message each client has no 201 for
  let total = 0;

  // Each client publishes its messages in order, one request in flight, with
  // an idempotency key per message so that a retry after the crash cannot
  // store a message twice.
  async function client(srv, i, onAck) {
    const conn = new Conn(srv.port);
    try {
      while (next[i] < per(i)) {
        const n = next[i];
        const key = `c${i}-${n}`;
        const r = await conn.publish(`crash-${i % CHANNELS}`, { c: i, n }, key);
        assert.equal(r.status, 201, `publish ${key}: ${JSON.stringify(r.body)}`);
        const prev = acked.get(key);
        if (prev !== undefined) assert.equal(r.body.id, prev, `${key} keeps its id`);
        acked.set(key, r.body.id);
        next[i] = n + 1;
        onAck?.();
      }
    } finally {
      conn.close();
    }
  }

  let srv = await startServer(args);
  let killed = false;
  const kill = () => {
    total++;
    if (!killed && total >= killAt) {
      killed = true;
      srv.kill();
    }
  };
  const phase1 = await Promise.allSettled(Array.from({ length: CLIENTS }, (_, i) => client(srv, i, kill)));
  // The kill closes every connection; anything else (a non-201 reply, an id
  // that changed) is a failure.
  for (const r of phase1)
    if (r.status === 'rejected' && r.reason?.message !== 'connection closed') throw r.reason;
  const exit = await srv.exited;
  assert.equal(exit.signal, 'SIGKILL', `the server was killed (at ${killAt} acks):\n${srv.log().slice(-2000)}`);
  const ackedBefore = new Map(acked);

  // Restart on the same directory: everything acknowledged must be there
  // before anyone publishes again.
  srv = await startServer(args);
  try {
    assert.match(srv.log(), /msg="history: recovered"/);
    for (let ch = 0; ch < CHANNELS; ch++) {
      const ids = new Set((await readAll(srv.base, `crash-${ch}`)).map((m) => m.id));
      for (const [key, id] of ackedBefore) {
        const c = Number(key.slice(1, key.indexOf('-')));
        if (c % CHANNELS === ch) assert.ok(ids.has(id), `acknowledged ${key} (id ${id}) survived kill -9`);
      }
    }

    // Finish the run: retries of unacknowledged messages keep the id they
    // got if they were stored before the crash.
    const results = await Promise.allSettled(Array.from({ length: CLIENTS }, (_, i) => client(srv, i)));
    for (const r of results) if (r.status === 'rejected') throw r.reason;
    assert.equal(acked.size, TOTAL);

    // Every message is in history once, with the id it was acknowledged
    // with, channel by channel in strictly increasing id order, and each
    // client's messages in the order it sent them.
    let seen = 0;
    for (let ch = 0; ch < CHANNELS; ch++) {
      const msgs = await readAll(srv.base, `crash-${ch}`);
      const lastN = new Map();
      let prev = -1n;
      for (const m of msgs) {
        const id = BigInt(m.id);
        assert.ok(id > prev, `ids increase in crash-${ch}: ${m.id} after ${prev}`);
        prev = id;
        const key = `c${m.data.c}-${m.data.n}`;
        assert.equal(m.id, acked.get(key), `${key} is stored with its acknowledged id`);
        assert.ok((lastN.get(m.data.c) ?? -1) < m.data.n, `${key} appears once and in order`);
        lastN.set(m.data.c, m.data.n);
        seen++;
      }
    }
    assert.equal(seen, TOTAL, 'no message is missing or doubled');
    return { killAt, ackedBeforeKill: ackedBefore.size };
  } finally {
    await srv.kill();
  }
}

describe('crash: kill -9 while 64 clients publish 100,000 messages', () => {
  for (const mode of ['always', 'batch']) {
    test(`--fsync ${mode}: every acknowledged message survives, with its id, in order, once`, async (t) => {
      const r = await crashRun(mode);
      t.diagnostic(`killed after ${r.ackedBeforeKill} acknowledgements (target ${r.killAt})`);
    });
  }
});

// ---- a garbled and torn tail --------------------------------------------------------

// Parses a segment file: its 32-byte header, then records of
// "SBR1" | u32 body length | u32 CRC | body (u64 seq first).
function readSegment(file) {
  const b = fs.readFileSync(file);
  assert.equal(b.subarray(0, 8).toString('latin1'), 'SBSEGLOG');
  const recs = [];
  let off = 32;
  while (off + 12 <= b.length && b.subarray(off, off + 4).toString('latin1') === 'SBR1') {
    const len = b.readUInt32LE(off + 4);
    if (off + 12 + len > b.length) break;
    recs.push({ off, size: 12 + len, seq: b.readBigUInt64LE(off + 12).toString() });
    off += 12 + len;
  }
  return recs;
}

function segments(dir) {
  return fs.readdirSync(dir).filter((f) => /^\d{20}\.log$/.test(f)).sort();
}

describe('corruption', () => {
  test('a garbled record and a torn tail are cut and logged; intact records are served', async () => {
    const dir = tmpDir('corrupt');
    const args = durableArgs(dir, 'batch');
    let srv = await startServer(args);
    const conn = new Conn(srv.port);
    const ids = [];
    for (let i = 0; i < 200; i++) ids.push((await conn.publish('cor', { i })).body.id);
    conn.close();
    await srv.kill();

    const segs = segments(dir);
    const file = path.join(dir, segs.at(-1));
    const recs = readSegment(file);
    assert.equal(recs.length, 200);
    assert.deepEqual(recs.map((r) => r.seq), ids, 'the segment holds the acknowledged ids in order');
    // Garble the data of the 190th record, then tear the last one in half.
    const bad = recs[189];
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, Buffer.from('garbage!'), 0, 8, bad.off + bad.size - 10);
    fs.ftruncateSync(fd, recs[199].off + 7);
    fs.closeSync(fd);
    const lenBefore = fs.statSync(file).size;

    srv = await startServer(args);
    try {
      const cut = srv.log().match(/msg="storage: cut a torn or corrupt tail" file=(\S+) offset=(\d+) bytes=(\d+) reason=(\S+)/);
      assert.ok(cut, `the cut is logged:\n${srv.log()}`);
      assert.equal(cut[1], file);
      assert.equal(Number(cut[2]), bad.off, 'cut at the first bad record');
      assert.equal(Number(cut[3]), lenBefore - bad.off, 'the logged byte count is what was cut');
      assert.equal(fs.statSync(file).size, bad.off, 'the file ends at the last intact record');
      const msgs = await readAll(srv.base, 'cor');
      assert.deepEqual(msgs.map((m) => m.id), ids.slice(0, 189), 'every intact record is served, nothing else');
      assert.deepEqual(msgs.map((m) => m.data.i), [...Array(189).keys()]);
      // The log continues cleanly after the cut, across another restart.
      const c2 = new Conn(srv.port);
      const r = await c2.publish('cor', { i: 'after' });
      c2.close();
      assert.equal(r.status, 201);
      assert.ok(BigInt(r.body.id) > BigInt(ids.at(-1)));
      await srv.kill();
      srv = await startServer(args);
      assert.doesNotMatch(srv.log(), /cut a torn/);
      const again = await readAll(srv.base, 'cor');
      assert.deepEqual(again.map((m) => m.id), [...ids.slice(0, 189), r.body.id]);
    } finally {
      await srv.kill();
    }
  });
});

// ---- an SSE subscriber across a restart -------------------------------------------

describe('resume across a restart', () => {
  test('SSE with Last-Event-ID: no gap, no duplicate, no reset', async () => {
    const dir = tmpDir('resume');
    const args = durableArgs(dir, 'batch');
    let srv = await startServer(args);
    let conn = new Conn(srv.port);
    const published = [];
    const pub = async (n) => {
      for (let i = 0; i < n; i++) {
        const r = await conn.publish('resume', { k: published.length });
        assert.equal(r.status, 201);
        published.push(r.body.id);
      }
    };
    let s = sseConnect(srv.port, '/v1/sse?channel=resume');
    await s.ready;
    await pub(20);
    await waitFor(() => s.events.length >= 20, { what: '20 live events' });
    assert.deepEqual(s.events.map((e) => e.id), published);
    const cursor = s.lastId;
    const midCursor = s.events[9].id;
    s.close();
    conn.close();
    await srv.kill();

    srv = await startServer(args);
    try {
      conn = new Conn(srv.port);
      await pub(20); // while the subscriber is away
      s = sseConnect(srv.port, '/v1/sse?channel=resume', { headers: { 'Last-Event-ID': cursor } });
      const mid = sseConnect(srv.port, '/v1/sse?channel=resume', { headers: { 'Last-Event-ID': midCursor } });
      await s.ready;
      await mid.ready;
      await pub(5); // live after the resume
      await waitFor(() => s.events.length >= 25 && mid.events.length >= 35, { what: 'resumed events' });
      await sleep(200);
      assert.deepEqual(s.events.map((e) => e.id), published.slice(20), 'exactly the messages after the cursor');
      assert.deepEqual(mid.events.map((e) => e.id), published.slice(10), 'a cursor from the middle resumes too');
      assert.ok(!s.events.some((e) => e.event === 'reset') && !mid.events.some((e) => e.event === 'reset'));
      assert.deepEqual(s.events.map((e) => JSON.parse(e.data).k), [...Array(25).keys()].map((k) => k + 20));
      assert.ok(BigInt(published[20]) > BigInt(published[19]), 'ids keep increasing across the restart');
      s.close();
      mid.close();
      conn.close();
    } finally {
      await srv.kill();
    }
  });

  test('idempotency keys survive a restart; history and the last message too', async () => {
    const dir = tmpDir('idem');
    const args = durableArgs(dir, 'always');
    let srv = await startServer(args);
    let conn = new Conn(srv.port);
    const first = await conn.publish('idem', { v: 1 }, 'order-42');
    assert.equal(first.status, 201);
    conn.close();
    await srv.kill();
    srv = await startServer(args);
    try {
      conn = new Conn(srv.port);
      const again = await conn.publish('idem', { v: 1 }, 'order-42');
      assert.equal(again.status, 201);
      assert.equal(again.body.id, first.body.id, 'the repeat gets the first id');
      const msgs = await readAll(srv.base, 'idem');
      assert.equal(msgs.length, 1, 'and publishes nothing');
      const info = await (await fetch(`${srv.base}/v1/channels/idem`)).json();
      assert.equal(info.last.id, first.body.id);
      assert.deepEqual(info.last.data, { v: 1 });
      conn.close();
    } finally {
      await srv.kill();
    }
  });
});

// ---- pipelining ----------------------------------------------------------------

// A pending durable acknowledgement no longer stops the connection's reading;
// only input that arrives meanwhile does, and it is parsed once the answer is
// out. Both ways in: everything in one write (buffered behind the first
// publish), and one request per write, 1 ms apart (most arrive while an
// earlier one waits for its fdatasync).
describe('pipelined publishes behind a pending acknowledgement', () => {
  const N = 20;
  const req = (i) => {
    const b = JSON.stringify({ data: i });
    return `POST /v1/channels/pipe/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\n\r\n${b}`;
  };
  const tail = 'GET /v1/channels/pipe/messages?limit=100 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';

  function check(raw, round) {
    const statuses = [...raw.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
    assert.deepEqual(statuses, [...Array(N).fill(201), 200], raw.slice(0, 400));
    const bodies = raw.split('HTTP/1.1 ').slice(1).map((r) => JSON.parse(r.slice(r.indexOf('\r\n\r\n') + 4)));
    const ids = bodies.slice(0, N).map((b) => b.id);
    const hist = bodies[N].messages.filter((m) => m.data >= round * 100 && m.data < round * 100 + N);
    assert.deepEqual(hist.map((m) => m.data), [...Array(N).keys()].map((i) => round * 100 + i),
      'every publish stored once, in send order');
    assert.deepEqual(hist.map((m) => m.id), ids, 'each answered with its stored id, in order');
  }

  test('--fsync always: one write, and one request per write', async () => {
    const srv = await startServer(durableArgs(tmpDir('pipe'), 'always'));
    try {
      const all = [...Array(N).keys()].map((i) => req(i)).join('') + tail;
      check(await rawRequest(srv.port, all, { ms: 10000 }), 0);
      const parts = [...[...Array(N).keys()].map((i) => req(100 + i)), tail];
      check(await rawRequest(srv.port, '', { ms: 10000, chunks: parts, gapMs: 1 }), 1);
    } finally {
      await srv.kill();
    }
  });
});

// A client that sends its publish and half-closes at once (shutdown of its
// sending side, as `printf ... | nc` does) still gets the 201 once the record
// is durable, then a clean end of the connection: the FIN arrives while the
// acknowledgement is pending, since reading no longer pauses for it.
describe('half-close before the durable acknowledgement', () => {
  test('--fsync always: the 201 arrives, the message is stored once', async () => {
    const srv = await startServer(durableArgs(tmpDir('halfclose'), 'always'));
    try {
      for (let i = 0; i < 5; i++) {
        const body = JSON.stringify({ data: `half-${i}` });
        const raw = await new Promise((resolve, reject) => {
          const s = net.connect(srv.port, '127.0.0.1');
          let got = '';
          s.on('data', (d) => { got += d; });
          s.on('end', () => resolve(got));
          s.on('error', reject);
          s.setTimeout(5000, () => { s.destroy(); resolve(got); });
          s.end(`POST /v1/channels/half/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
        });
        assert.match(raw, /^HTTP\/1\.1 201 /, `round ${i}: ${raw.slice(0, 200)}`);
        const id = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)).id;
        const hist = await (await fetch(`http://127.0.0.1:${srv.port}/v1/channels/half/messages?limit=100`)).json();
        assert.deepEqual(hist.messages.filter((m) => m.data === `half-${i}`).map((m) => m.id), [id]);
      }
    } finally {
      await srv.kill();
    }
  });
});

// ---- retention ------------------------------------------------------------------

// Bytes of the segment files, which is what --retain-bytes caps; the
// directory also holds two 20-byte meta files and an empty LOCK.
function dirBytes(dir) {
  return segments(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
}

describe('retention', () => {
  test('old segments go away and the directory stays under --retain-bytes', async () => {
    const dir = tmpDir('retain');
    const cap = 64 * 1024;
    const args = durableArgs(dir, 'off', ['--retain-bytes', '64KiB']);
    let srv = await startServer(args);
    const conns = Array.from({ length: 4 }, () => new Conn(srv.port));
    const pad = 'x'.repeat(1000);
    const ids = [];
    let firstSegment = null;
    let maxBytes = 0;
    for (let round = 0; round < 100; round++) {
      const rs = await Promise.all(conns.map((c, i) => c.publish('ret', { round, i, pad })));
      for (const r of rs) { assert.equal(r.status, 201); ids.push(r.body.id); }
      firstSegment ??= segments(dir)[0];
      // An acknowledgement can come before its batch's retention pass, so
      // the total may exceed the cap by at most that batch (4 messages).
      maxBytes = Math.max(maxBytes, dirBytes(dir));
      assert.ok(dirBytes(dir) <= cap + 4 * 1100, `round ${round}: ${dirBytes(dir)} bytes`);
    }
    await waitFor(() => dirBytes(dir) <= cap, { what: 'the directory under the cap' });
    assert.ok(!fs.existsSync(path.join(dir, firstSegment)), 'the first segment was deleted');
    assert.ok(segments(dir).length >= 2);
    assert.match(srv.log(), /msg="storage: retention deleted a segment"/);
    const other = fs.readdirSync(dir).filter((f) => !segments(dir).includes(f));
    assert.deepEqual(other.sort(), ['LOCK', 'origin.meta', 'reserve.meta']);
    for (const c of conns) c.close();
    await srv.kill();
    ids.sort((x, y) => (BigInt(x) < BigInt(y) ? -1 : 1)); // concurrent publishes: by id

    // After a restart, history starts at the oldest kept record; a cursor
    // from before it gets an explicit reset rather than a silent gap.
    srv = await startServer(args);
    try {
      const h = await (await fetch(`${srv.base}/v1/channels/ret/messages?since=0&limit=1000`)).json();
      const kept = h.messages.map((m) => m.id);
      assert.ok(kept.length > 10 && kept.length < ids.length);
      assert.deepEqual(kept, ids.slice(ids.length - kept.length), 'the newest messages are kept, in order');
      const old = await (await fetch(`${srv.base}/v1/channels/ret/messages?since=${ids[0]}`)).json();
      assert.equal(old.reset, true, 'a cursor older than retention resets');
      const ok = await (await fetch(`${srv.base}/v1/channels/ret/messages?since=${kept[0]}`)).json();
      assert.equal(ok.reset, false);
      assert.equal(ok.messages.length, kept.length - 1);
      assert.ok(dirBytes(dir) <= cap);
    } finally {
      await srv.kill();
    }
  });
});

// ---- a full disk ----------------------------------------------------------------

function wsClient(port) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`);
  const frames = [];
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ ws, frames }));
    ws.once('error', reject);
  });
}

// Publishes 1 KB messages until the disk refuses; then checks 507 and the WS
// error op, that readers keep being served, and returns the acknowledged ids.
async function fillUntilRefused(srv, channel, prior = []) {
  const conn = new Conn(srv.port);
  const acked = [];
  const pad = 'y'.repeat(1000);
  let refused = null;
  for (let i = 0; i < 2000 && !refused; i++) {
    const r = await conn.publish(channel, { i, pad });
    if (r.status === 201) acked.push(r.body.id);
    else refused = r;
  }
  assert.ok(refused, 'the disk filled up');
  assert.equal(refused.status, 507);
  assert.equal(refused.body.error.code, 'storage_failed');
  const again = await conn.publish(channel, { i: 'again', pad });
  assert.equal(again.status, 507, 'later publishes are refused too');

  const { ws, frames } = await wsClient(srv.port);
  ws.send(JSON.stringify({ op: 'publish', channel, data: { ws: true, pad }, ref: 7 }));
  await waitFor(() => frames.some((f) => f.ref === 7), { what: 'the WS reply' });
  const reply = frames.find((f) => f.ref === 7);
  assert.equal(reply.op, 'error');
  assert.equal(reply.code, 'storage_failed');
  ws.close();

  // Readers are served all along: history, channel info, a new SSE stream.
  const h = await readAll(srv.base, channel);
  assert.deepEqual(h.map((m) => m.id), [...prior, ...acked], 'history holds exactly the acknowledged messages');
  const info = await (await fetch(`${srv.base}/v1/channels/${channel}`)).json();
  assert.equal(info.last.id, acked.at(-1));
  assert.equal((await fetch(`${srv.base}/healthz`)).status, 200);
  const s = sseConnect(srv.port, `/v1/sse?channel=${channel}&since=0`);
  await s.ready;
  await waitFor(() => s.events.length >= prior.length + acked.length, { what: 'the SSE backlog' });
  assert.deepEqual(s.events.map((e) => e.id), [...prior, ...acked]);
  s.close();
  conn.close();
  return acked;
}

async function publishOk(srv, channel, data) {
  const c = new Conn(srv.port);
  const r = await c.publish(channel, data);
  c.close();
  return r;
}

describe('full disk', () => {
  test('RLIMIT_FSIZE (prlimit on the running server): 507, readers served, log consistent', async () => {
    const dir = tmpDir('fsize');
    const args = durableArgs(dir, 'always');
    let srv = await startServer(args);
    try {
      const first = await publishOk(srv, 'disk', { i: 'first' });
      assert.equal(first.status, 201);
      const seg = path.join(dir, segments(dir)[0]);
      // Let the log grow by about 20 KB more past its last record, then
      // EFBIG. The file is longer than that already (preallocated zeros), and
      // a write past the limit fails wherever the file ends.
      const last = readSegment(seg).at(-1);
      const limit = last.off + last.size + 20000;
      execFileSync('prlimit', ['--pid', String(srv.child.pid), `--fsize=${limit}:unlimited`]);
      const acked = await fillUntilRefused(srv, 'disk', [first.body.id]);
      assert.ok(acked.length >= 10, `some publishes fit before the limit (${acked.length})`);
      assert.ok(fs.statSync(seg).size <= limit, 'no partial record was left behind');
      const recs = readSegment(seg);
      assert.equal(recs.at(-1).off + recs.at(-1).size, fs.statSync(seg).size, 'the file ends at a record');
      assert.match(srv.log(), /msg="storage: write failed".*err=EFBIG/);

      // Space again: publishes succeed again, and only what was acknowledged
      // is in the log after a crash.
      execFileSync('prlimit', ['--pid', String(srv.child.pid), '--fsize=unlimited']);
      const later = await publishOk(srv, 'disk', { i: 'later' });
      assert.equal(later.status, 201);
      await srv.kill();
      srv = await startServer(args);
      const h = await readAll(srv.base, 'disk');
      assert.deepEqual(h.map((m) => m.id), [first.body.id, ...acked, later.body.id]);
    } finally {
      await srv.kill();
    }
  });

  test('ENOSPC on a 192 KiB tmpfs: 507, readers served, log consistent', async (t) => {
    const mnt = tmpDir('tmpfs');
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=192k', 'tmpfs', mnt], { stdio: 'ignore' });
    } catch {
      t.skip('mounting a tmpfs needs CAP_SYS_ADMIN; the RLIMIT_FSIZE test covers the failure path');
      return;
    }
    let srv;
    try {
      const dir = path.join(mnt, 'data');
      const args = durableArgs(dir, 'batch');
      srv = await startServer(args);
      const acked = await fillUntilRefused(srv, 'full');
      assert.ok(acked.length >= 50, `some publishes fit (${acked.length})`);
      assert.match(srv.log(), /msg="storage: write failed".*err=ENOSPC/);
      await srv.kill();
      srv = await startServer(args);
      const h = await readAll(srv.base, 'full');
      assert.deepEqual(h.map((m) => m.id), acked, 'after a restart: exactly the acknowledged messages');
    } finally {
      await srv?.kill();
      try { execFileSync('umount', [mnt]); } catch { /* left for the OS */ }
    }
  });
});
