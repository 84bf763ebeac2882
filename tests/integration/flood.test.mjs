// Floods: one client publishing as fast as it can and one opening connections
// as fast as it can, while 200 well-behaved subscribers measure delivery
// latency; then the process's open-file limit, reached and recovered from.
//
// Measuring on this machine: 2 cores shared by the server, the attacker and
// this process (which runs the 200 subscribers). Three things keep the
// comparison about the server rather than about CPU contention on the test box:
// - The attacker runs in its own process at the lowest priority (nice 19): on
//   a real deployment the attacker's CPU is somewhere else. It still sends as
//   fast as it can whenever a core is free (thousands of connections a second
//   here), and the server still has to accept, read and refuse all of it.
// - Quiet and attack phases alternate (quiet, attack, quiet, attack, ...), so a
//   slow moment of the machine hits both kinds, and the comparison is between
//   the medians of the per-phase p99s, not two single numbers.
// - Latency below 5 ms is at the resolution of two event loops and a shared
//   scheduler; a p99 that rises from 2 to 5 ms is noise, not harm. The bound
//   is 2x the quiet median, or the quiet median plus 5 ms, whichever is larger.
// The flags are what a production deployment would set: --publish-rate,
// --max-conns-per-ip, --conn-rate-per-ip, --accept-rate, --header-timeout, a
// JWT secret and a server API key. Without the two rate flags the connection
// flood still stays under the bound here, but only just (attack medians of
// 1.4-2.0x the quiet one on this machine under ASan, about 8,000 accepts a
// second): pacing accepts at 2,000 a second took it to 1.05x.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { binaryPath, sleep, startServer, waitFor } from './lib/server.mjs';

const SECRET = 'flood-suite-secret-52a9';
const API_KEY = 'flood-suite-server-key';
const PER_IP = 64;
const CONN_RATE = 50;     // new connections a second per address
const ACCEPT_RATE = 2000; // accepts a second, server-wide
const SUBSCRIBERS = 200;
const PHASES = 8;      // of each kind, interleaved
const PHASE_MS = 1000;
const SETTLE_MS = 250;
const PROBE_EVERY_MS = 100;

const b64u = (x) => Buffer.from(JSON.stringify(x)).toString('base64url');
function jwt(claims) {
  const h = b64u({ alg: 'HS256', typ: 'JWT' });
  const p = b64u(claims);
  return `${h}.${p}.${crypto.createHmac('sha256', SECRET).update(`${h}.${p}`).digest('base64url')}`;
}
const exp = Math.floor(Date.now() / 1000) + 3600;
const READER = jwt({ sub: 'reader', exp, channels: ['feed'] });
// The attacker is a signed-in user allowed to publish on its own channels.
const ATTACKER = jwt({ sub: 'attacker', exp, channels: ['spam:*'], publish: ['spam:*'] });

// ---- the attacker: a separate process, driven over IPC ----
// {start: [...]} starts some of: 'http' (publishes pipelined as fast as the
// socket takes them on one keep-alive connection), 'ws' (publish ops back to
// back on one WebSocket), 'conn' (twice --max-conns-per-ip loops that each
// open a connection, keep it until the server closes it, and open the next);
// 'stop' closes everything; 'report' answers the counts since the last report.
const ATTACKER_CODE = `
import net from 'node:net';
// With -e there is no script path in argv.
const port = Number(process.argv[1]), token = process.argv[2];
const from = '127.0.4.1';
let running = false;
const sockets = new Set();
const stats = { requests: 0, r201: 0, r429: 0, httpConns: 0, wsSent: 0, wsLimited: 0, conns: 0, conns429: 0, conns408: 0 };
function track(s) { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => {}); return s; }
function httpFlood() {
  const s = track(net.connect({ port, host: '127.0.0.1', localAddress: from }));
  stats.httpConns++;
  const body = '{"data":"spam"}';
  const req = 'POST /v1/channels/spam:1/messages HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer ' + token +
    '\\r\\nContent-Type: application/json\\r\\nContent-Length: ' + body.length + '\\r\\n\\r\\n' + body;
  const batch = req.repeat(32);
  let tail = '';
  s.setEncoding('latin1');
  s.on('data', (d) => {
    const text = tail + d;
    for (const m of text.matchAll(/HTTP\\/1\\.1 (\\d{3}) /g)) { stats.requests++; if (m[1] === '201') stats.r201++; else if (m[1] === '429') stats.r429++; }
    tail = text.slice(-20);
  });
  const pump = () => { while (running && !s.destroyed && s.write(batch)); };
  s.on('drain', pump);
  s.on('connect', pump);
  s.on('close', () => { if (running) setTimeout(httpFlood, 10); });
}
function wsFlood() {
  const s = track(net.connect({ port, host: '127.0.0.1', localAddress: from }));
  s.on('connect', () => s.write('GET /v1/ws?token=' + token + ' HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n'));
  const payload = Buffer.from('{"op":"publish","channel":"spam:2","data":"spam"}');
  const one = Buffer.alloc(6 + payload.length);
  one[0] = 0x81; one[1] = 0x80 | payload.length; // masked text frame, zero mask
  payload.copy(one, 6);
  const batch = Buffer.concat(Array(64).fill(one));
  let up = false;
  s.on('data', (d) => {
    if (!up) { up = true; pump(); }
    const n = d.toString('latin1').split('rate_limited').length - 1;
    stats.wsLimited += n;
  });
  const pump = () => { while (running && up && !s.destroyed && s.write(batch)) stats.wsSent += 64; };
  s.on('drain', pump);
  s.on('close', () => { if (running) setTimeout(wsFlood, 10); });
}
function connLoop() {
  if (!running) return;
  const s = track(net.connect({ port, host: '127.0.0.1', localAddress: from }));
  stats.conns++;
  let data = '';
  s.on('data', (d) => { data += d; });
  s.on('close', () => {
    if (data.startsWith('HTTP/1.1 429')) stats.conns429++;
    else if (data.startsWith('HTTP/1.1 408')) stats.conns408++;
    setImmediate(connLoop);
  });
}
process.on('message', (m) => {
  if (m.start && !running) {
    running = true;
    if (m.start.includes('http')) httpFlood();
    if (m.start.includes('ws')) wsFlood();
    if (m.start.includes('conn')) for (let i = 0; i < 2 * ${PER_IP}; i++) connLoop();
  } else if (m === 'stop') {
    running = false;
    for (const s of sockets) s.destroy();
  } else if (m === 'report') {
    process.send({ ...stats });
    for (const k of Object.keys(stats)) stats[k] = 0;
  } else if (m === 'exit') {
    process.exit(0);
  }
});
process.send('ready');
`;

function startAttacker(port) {
  const cmd = [process.execPath, '--input-type=module', '-e', ATTACKER_CODE, String(port), ATTACKER];
  const child = spawn(process.env.ATTACKER_SCHED === 'nice' ? 'nice' : 'chrt', process.env.ATTACKER_SCHED === 'nice' ? ['-n', '19', ...cmd] : ['--idle', '0', ...cmd], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ready = new Promise((r) => child.once('message', r));
  const ask = (cmd) => new Promise((r) => { child.once('message', r); child.send(cmd); });
  return { child, ready, send: (m) => child.send(m), report: () => ask('report') };
}

// ---- the well-behaved subscribers, spread over 10 addresses like real users ----
function sseSubscriber(port, i, onData) {
  const s = net.connect({ port, host: '127.0.0.1', localAddress: `127.0.3.${1 + (i % 10)}` });
  const st = { sock: s, closed: false, status: 0 };
  let buf = '';
  s.setEncoding('utf8');
  st.ready = new Promise((resolve, reject) => {
    s.on('connect', () => s.write(`GET /v1/sse?channel=feed&token=${READER} HTTP/1.1\r\nHost: x\r\n\r\n`));
    s.on('data', (d) => {
      buf += d;
      if (!st.status) {
        const k = buf.indexOf('\r\n\r\n');
        if (k < 0) return;
        st.status = Number(buf.slice(9, 12));
        buf = buf.slice(k + 4);
        resolve(st);
      }
      let k;
      while ((k = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, k);
        buf = buf.slice(k + 2);
        const line = block.split('\n').find((l) => l.startsWith('data: '));
        if (line) onData(line.slice(6));
      }
    });
    s.on('error', reject);
    s.on('close', () => { st.closed = true; });
  });
  return st;
}

function wsSubscriber(port, i, onData) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws?token=${READER}`, { localAddress: `127.0.3.${1 + (i % 10)}` });
  const st = { ws, get closed() { return ws.readyState !== WebSocket.OPEN; } };
  ws.on('message', (d) => {
    const m = JSON.parse(d.toString());
    if (m.op === 'message') onData(m.data);
  });
  st.ready = new Promise((resolve, reject) => {
    ws.once('open', () => ws.send(JSON.stringify({ op: 'subscribe', channel: 'feed', ref: 1 })));
    ws.on('message', function okOnce(d) {
      if (JSON.parse(d.toString()).op === 'ok') { ws.off('message', okOnce); resolve(st); }
    });
    ws.once('error', reject);
  });
  return st;
}

// One request on a fresh connection; true when it was served.
async function servedOnce(port) {
  const h = await hold(port);
  h.s.destroy();
  return h.status === 200;
}

const p99 = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))]; };
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

describe('flood', () => {
  let srv, attacker;
  const subs = [];
  // received[i]: the probe numbers subscriber i got, in order.
  const received = Array.from({ length: SUBSCRIBERS }, () => []);
  let samples = null; // latencies (ms) of the phase being measured
  const onData = (i) => (text) => {
    const m = JSON.parse(text);
    if (typeof m?.n !== 'number') return;
    received[i].push(m.n);
    samples?.push(performance.now() - m.t);
  };

  before(async () => {
    srv = await startServer(['--workers', '2', '--jwt-secret', SECRET, '--api-key', API_KEY,
      '--publish-rate', '20', '--max-conns-per-ip', String(PER_IP), '--header-timeout', '2s',
      '--max-subscriptions', '100', '--accept-rate', String(ACCEPT_RATE),
      '--conn-rate-per-ip', String(CONN_RATE)]);
    attacker = startAttacker(srv.port);
    await attacker.ready;
    for (let i = 0; i < SUBSCRIBERS; i += 20) {
      const batch = Array.from({ length: 20 }, (_, k) => ((i + k) % 2 ? wsSubscriber : sseSubscriber)(srv.port, i + k, onData(i + k)).ready);
      subs.push(...(await Promise.all(batch)));
    }
    assert.ok(subs.every((x) => !x.closed && (x.status === undefined || x.status === 200)));
  });
  after(async () => {
    for (const x of subs) (x.ws ? x.ws.terminate() : x.sock.destroy());
    attacker?.send('exit');
    const r = await srv.stop();
    assert.equal(r.code, 0, `server exits 0 on SIGTERM:\n${srv.log().slice(-2000)}`);
  });

  // Alternates quiet and attack phases while a well-behaved publisher (the
  // application's backend, with the server key, on a keep-alive connection)
  // stamps a message every PROBE_EVERY_MS; returns the p99 of each phase and
  // what the attacker reported, after checking that every subscriber is still
  // connected and got every probe message, in order.
  async function measure(vectors) {
    for (const r of received) r.length = 0;
    let n = 0;
    let probing = true;
    const probe = (async () => {
      while (probing) {
        const r = await fetch(`${srv.base}/v1/channels/feed/messages`, {
          method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
          body: JSON.stringify({ data: JSON.stringify({ n: n++, t: performance.now() }) }),
        });
        assert.equal(r.status, 201);
        await r.text();
        await sleep(PROBE_EVERY_MS);
      }
    })();
    const quiet = [], attack = [], reports = [];
    let probeError = null;
    try {
      await sleep(300); // warm-up, not measured
      for (let p = 0; p < PHASES; p++) {
        for (const kind of ['quiet', 'attack']) {
          if (kind === 'attack') attacker.send({ start: vectors });
          await sleep(SETTLE_MS);
          samples = [];
          await sleep(PHASE_MS);
          const got = samples;
          samples = null;
          if (kind === 'attack') {
            attacker.send('stop');
            reports.push(await attacker.report());
          }
          // At least three probes reached all 200 in every phase.
          assert.ok(got.length >= SUBSCRIBERS * 3, `the ${kind} phase measured ${got.length} deliveries`);
          (kind === 'quiet' ? quiet : attack).push(p99(got));
        }
      }
    } finally {
      attacker.send('stop');
      probing = false;
      probeError = await probe.then(() => null, (e) => e);
    }
    if (probeError) throw probeError;
    await waitFor(() => received.every((r) => r.length === n), { timeout: 10000, what: 'every subscriber to catch up' });
    assert.ok(subs.every((x) => !x.closed), 'no subscriber was disconnected');
    for (const r of received) assert.deepEqual(r, Array.from({ length: n }, (_, k) => k), 'every probe, in order');
    const qm = median(quiet), am = median(attack), bound = Math.max(2 * qm, qm + 5);
    const total = reports.reduce((a, r) => { for (const k in r) a[k] = (a[k] ?? 0) + r[k]; return a; }, {});
    console.log(`# ${vectors.join('+')}: p99 ms quiet ${quiet.map((x) => x.toFixed(1)).join(' ')} | attack ${attack.map((x) => x.toFixed(1)).join(' ')}` +
      ` | medians ${qm.toFixed(1)} / ${am.toFixed(1)}, bound ${bound.toFixed(1)} | attacker: ${JSON.stringify(total)}`);
    return { qm, am, bound, reports, total };
  }

  test('a publish flood and a connection flood leave 200 subscribers\' p99 under 2x and drop none', async () => {
    const before0 = await (await fetch(`${srv.base}/api/metrics`)).json();
    const m = await measure(['http', 'conn']);
    // The attack happened, and was refused at the limits: the publisher is
    // held to --publish-rate (its connection is not even read while it is
    // over), the connection flood meets --max-conns-per-ip. How much the
    // attacker manages depends on the CPU it gets, so only totals are checked.
    // The bucket is per connection: each new one (the flooder reconnects when
    // a refusal closes its socket) starts with a full second's burst.
    for (const r of m.reports) {
      assert.ok(r.r201 <= 20 * (PHASE_MS + SETTLE_MS) / 1000 + 20 * Math.max(1, r.httpConns) + 5,
        `publishes held to the rate: ${JSON.stringify(r)}`);
    }
    assert.ok(m.total.r429 > 0, `the publish flood was refused: ${JSON.stringify(m.total)}`);
    assert.ok(m.total.conns > 200, `the connection flood opened connections: ${JSON.stringify(m.total)}`);
    const after0 = await (await fetch(`${srv.base}/api/metrics`)).json();
    assert.ok(after0.limitRefusals.publishRate > before0.limitRefusals.publishRate, 'publish refusals are counted');
    assert.ok(m.total.conns429 === 0 || after0.limitRefusals.connsPerIp + after0.limitRefusals.connRate >
      before0.limitRefusals.connsPerIp + before0.limitRefusals.connRate, 'address refusals are counted');
    // The flooder cycles connections far faster than CONN_RATE, and faster
    // than the server accepts: both limits were met.
    assert.ok(after0.limitRefusals.connRate > before0.limitRefusals.connRate, 'connection-rate refusals are counted');
    assert.ok(after0.acceptPauses > before0.acceptPauses, `accepts were paced: ${after0.acceptPauses}`);
    assert.ok(m.am < m.bound, `p99 under attack ${m.am.toFixed(1)} ms vs quiet ${m.qm.toFixed(1)} ms`);
  });

  // A WebSocket client over its rate gets one rate_limited error, then the
  // server reads nothing more from it until its bucket refills (as over HTTP).
  test('a WebSocket publish flood leaves 200 subscribers\' p99 under 2x and drops none', async () => {
      const m = await measure(['ws']);
      for (const r of m.reports) assert.ok(r.wsSent > 0, JSON.stringify(r));
      assert.ok(m.am < m.bound, `p99 under attack ${m.am.toFixed(1)} ms vs quiet ${m.qm.toFixed(1)} ms`);
    });
});

// ---- the open-file limit ----
// Starts the server under `prlimit --nofile=N:N` (the hard limit too, so the
// server cannot raise it) and returns what startServer returns, plus its pid.
async function startLimited(nofile, args) {
  const child = spawn('prlimit', [`--nofile=${nofile}:${nofile}`, binaryPath(), 'serve', '--listen', '127.0.0.1:0', ...args], {
    env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    child.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/msg="listening" addr=[^ ]*:(\d+)/);
      if (m) resolve(Number(m[1]));
    });
    exited.then((e) => reject(new Error(`server exited early (${e.code ?? e.signal}):\n${log}`)));
  });
  return {
    port, base: `http://127.0.0.1:${port}`, pid: child.pid, log: () => log,
    async stop() { child.kill('SIGTERM'); const t = setTimeout(() => child.kill('SIGKILL'), 15000); const r = await exited; clearTimeout(t); return r; },
  };
}

// CPU seconds the process has used (user + system), from /proc.
function cpuSeconds(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'latin1');
  const parts = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(parts[11]) + Number(parts[12])) / 100;
}

// Opens a connection and asks for /healthz on it, keeping it open; resolves
// with the socket and the status line it got (or '' if closed without one).
function hold(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let data = '';
    const done = () => resolve({ s, status: Number(data.slice(9, 12)) || 0, data });
    s.setEncoding('latin1');
    s.on('error', () => {});
    s.on('connect', () => s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'));
    s.on('data', (d) => { data += d; if (data.includes('\r\n\r\n') && data.length >= data.indexOf('\r\n\r\n') + 4 + Number((data.match(/Content-Length: (\d+)/) ?? [0, 0])[1])) done(); });
    s.on('close', done);
  });
}

describe('open-file limit', () => {
  test('at the cap derived from the open-file limit: 503 overloaded, logged, counted, no spinning; then served again', async () => {
    const srv = await startLimited(256, ['--workers', '2']);
    try {
      const cap = Number(srv.log().match(/max_connections=(\d+)/)[1]);
      assert.ok(cap > 50 && cap < 256, `the cap (${cap}) leaves a reserve under the 256 descriptors`);
      const held = [];
      for (let i = 0; i < cap; i += 40) held.push(...(await Promise.all(Array.from({ length: Math.min(40, cap - i) }, () => hold(srv.port)))));
      assert.ok(held.every((h) => h.status === 200), 'every connection up to the cap is served');
      const over = await Promise.all(Array.from({ length: 20 }, () => hold(srv.port)));
      for (const o of over) {
        assert.equal(o.status, 503, o.data);
        assert.match(o.data, /"code":"overloaded"/);
        assert.match(o.data, /Retry-After: \d+/);
      }
      // At the cap and idle: the server does not spin.
      const cpu0 = cpuSeconds(srv.pid);
      await sleep(1000);
      assert.ok(cpuSeconds(srv.pid) - cpu0 < 0.3, 'no busy loop at the cap');
      assert.match(srv.log(), /msg="connection refused: at the connection cap" open=\d+ max=\d+/);
      for (const h of held.splice(0, 10)) h.s.destroy();
      await sleep(300);
      const m = await (await fetch(`${srv.base}/metrics`)).text();
      assert.ok(Number(m.match(/^switchboard_connections_refused_total (\d+)$/m)[1]) >= 20, 'the refusals are counted');
      // Recovery: with the connections gone, new ones are served again.
      for (const h of held) h.s.destroy();
      await waitFor(() => servedOnce(srv.port), { what: 'service after the cap' });
      const again = await Promise.all(Array.from({ length: 40 }, () => hold(srv.port)));
      assert.ok(again.every((h) => h.status === 200));
      for (const h of again) h.s.destroy();
    } finally {
      assert.equal((await srv.stop()).code, 0, srv.log().slice(-2000));
    }
  });

  // With two loops, libuv's EMFILE trick (close a reserve descriptor, accept
  // and drop the pending connection, reopen the reserve) races: another loop
  // can take the freed descriptor and the accept callback then spins. So the
  // server lowers a --max-connections above its descriptor budget to fit it.
  test('a --max-connections above the open-file limit is lowered to fit: shed without spinning, then served again', async () => {
    const srv = await startLimited(128, ['--workers', '2', '--max-connections', '100000']);
    try {
      const all = await Promise.all(Array.from({ length: 160 }, () => hold(srv.port)));
      const served = all.filter((h) => h.status === 200).length;
      assert.ok(served > 20 && served < 160, `some served (${served}), the rest refused`);
      assert.match(srv.log(), /--max-connections is above the open-file limit; lowered to fit it/);
      assert.ok(all.filter((h) => h.status === 503).length > 0, 'the rest got 503 overloaded');
      const cpu0 = cpuSeconds(srv.pid);
      await sleep(1000);
      assert.ok(cpuSeconds(srv.pid) - cpu0 < 0.3, 'no busy loop at the limit');
      for (const h of all) h.s.destroy();
      await waitFor(() => servedOnce(srv.port), { what: 'service after the limit' });
      const r = await fetch(`${srv.base}/healthz`);
      assert.equal(r.status, 200);
      const cpu1 = cpuSeconds(srv.pid);
      await sleep(1000);
      assert.ok(cpuSeconds(srv.pid) - cpu1 < 0.3, 'no busy loop after recovering either');
    } finally {
      assert.equal((await srv.stop()).code, 0, srv.log().slice(-2000));
    }
  });
});
