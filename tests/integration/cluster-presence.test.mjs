// Presence across cluster nodes against the real binary: several switchboard
// processes on one redis-server (started here, on its own loopback port).
// Checked: a member entering on one node is in another node's presence.sync,
// REST list and change stream, with its updates (exactly the states the
// origin's readers got) and its leave; clientIds carry the node prefix;
// user-level events span nodes (one user.enter, no user.leave while another
// node still has a member); no ghosts: a SIGKILLed node's members leave after
// the node timeout and their users after the grace, a SIGTERMed node's at
// once; a node started later has the members in its first presence.sync; a
// cut pub/sub connection converges; malformed messages on the presence
// channel are counted and skipped; the metrics; clean shutdowns.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { freePort, redisCommand, startRedis } from './lib/redis.mjs';
import { sleep, startServer, waitFor, eventually } from './lib/server.mjs';

const rand = Math.random().toString(36).slice(2, 10);
const PREFIX = `sbP${rand}`;
const PCHAN = `${PREFIX}:presence`;
const GRACE_MS = 1000;
const NODE_TIMEOUT_MS = 5000; // src/cluster/presence.c

let redisPort;
let redis = null;
const redisCmd = (...args) => redisCommand(redisPort, ...args);
const pubsubClients = async () =>
  (await redisCmd('CLIENT', 'LIST', 'TYPE', 'pubsub')).split('\n').filter((l) => l.includes('addr=')).length;

// ---- nodes ----
const nodes = new Set();

async function startNode(name, extra = []) {
  const n = await startServer(['--workers', '2', '--cluster-redis', `127.0.0.1:${redisPort}`, '--cluster-prefix', PREFIX,
    '--presence-grace', `${GRACE_MS / 1000}s`, ...extra]);
  n.name = name;
  nodes.add(n);
  try {
    await waitFor(() => /msg="cluster ready"/.test(n.log()), { timeout: 15000, what: `${name}: msg="cluster ready"` });
  } catch (e) {
    throw new Error(`${e.message}\n--- ${name} log ---\n${n.log().slice(-3000)}`);
  }
  n.id = (await getJson(n, '/api/metrics')).cluster.node;
  return n;
}

function assertClean(n) {
  assert.doesNotMatch(n.log(), /AddressSanitizer|LeakSanitizer|runtime error:/, `${n.name}: no sanitizer report:\n${n.log().slice(-3000)}`);
}

async function stopNode(n) {
  nodes.delete(n);
  const r = await n.stop();
  assert.equal(r.code, 0, `${n.name} exits 0 on SIGTERM (got ${r.code ?? r.signal}):\n${n.log().slice(-3000)}`);
  assertClean(n);
}

let A, B;

before(async () => {
  redisPort = await freePort();
  redis = await startRedis(redisPort);
  [A, B] = await Promise.all([startNode('A'), startNode('B')]);
});

after(async () => {
  for (const n of nodes) await n.kill();
  nodes.clear();
  if (redis) {
    redis.child.kill('SIGKILL');
    await redis.exited;
  }
});

// ---- clients ----
async function getJson(node, p) {
  const res = await fetch(`${node.base}${p}`, { signal: AbortSignal.timeout(10000) });
  const text = await res.text();
  assert.equal(res.status, 200, `GET ${p} on ${node.name}: ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

const open = (node) => new Promise((resolve, reject) => {
  const ws = new WebSocket(`ws://127.0.0.1:${node.port}/v1/ws`);
  ws.inbox = [];
  ws.on('message', (d) => ws.inbox.push(JSON.parse(d.toString())));
  ws.once('open', () => resolve(ws));
  ws.once('error', reject);
});

let refs = 0;
async function call(ws, msg) {
  const ref = ++refs;
  ws.send(JSON.stringify({ ...msg, ref }));
  let reply;
  await waitFor(() => (reply = ws.inbox.find((m) => m.ref === ref)), { timeout: 5000, what: `the reply to ${JSON.stringify(msg)}` });
  return reply;
}

async function enter(ws, channel, userId, { info = {}, state = {} } = {}) {
  const r = await call(ws, { op: 'presence', channel, action: 'enter', userId, info, state });
  assert.equal(r.op, 'ok', `enter ${channel} as ${userId}: ${JSON.stringify(r)}`);
  assert.equal(typeof r.clientId, 'string', JSON.stringify(r));
  return r.clientId;
}

// A presence view built only from what a reader is sent: presence.sync
// replaces it, changes (single or batched) apply in order; impossible
// changes (enter of a present member, leave of an absent one) fail.
class View {
  constructor(channel) {
    this.channel = channel;
    this.members = new Map();
    this.users = new Set();
    this.userEvents = [];
    this.states = new Map(); // clientId -> [state of each update]
    this.syncs = [];
    this.events = [];
  }
  apply(m) {
    if (m.channel !== this.channel) return;
    if (m.op === 'presence.sync') {
      this.members = new Map(m.members.map((x) => [x.clientId, x]));
      this.users = new Set(m.users);
      this.syncs.push(m);
    } else if (m.op === 'presence') this.event(m);
    else if (m.op === 'presence.batch') for (const e of m.events) this.event(e);
  }
  event(e) {
    const id = e.member.clientId;
    this.events.push({ action: e.action, id, userId: e.member.userId, at: Date.now() });
    if (e.action === 'enter') {
      assert.ok(!this.members.has(id), `enter of a present member ${id}`);
      this.members.set(id, e.member);
    } else if (e.action === 'update') {
      assert.ok(this.members.has(id), `update of an absent member ${id}`);
      this.members.set(id, e.member);
      if (!this.states.has(id)) this.states.set(id, []);
      this.states.get(id).push(e.member.state);
    } else if (e.action === 'leave') {
      assert.ok(this.members.delete(id), `leave of an absent member ${id}`);
    } else if (e.action === 'user.enter') {
      assert.ok(!this.users.has(e.member.userId), `user.enter of a present user ${e.member.userId}`);
      this.users.add(e.member.userId);
      this.userEvents.push({ action: e.action, userId: e.member.userId, at: Date.now() });
    } else if (e.action === 'user.leave') {
      assert.ok(this.users.delete(e.member.userId), `user.leave of an absent user ${e.member.userId}`);
      this.userEvents.push({ action: e.action, userId: e.member.userId, at: Date.now() });
    }
  }
  sorted() { return [...this.members.values()].sort((a, b) => (a.clientId < b.clientId ? -1 : 1)); }
}

async function observe(node, channel) {
  const ws = await open(node);
  const view = new View(channel);
  ws.on('message', (d) => view.apply(JSON.parse(d.toString())));
  const ok = await call(ws, { op: 'subscribe', channel, presence: true });
  assert.equal(ok.op, 'ok', JSON.stringify(ok));
  await waitFor(() => view.syncs.length > 0, { what: `presence.sync of ${channel} on ${node.name}` });
  ws.view = view;
  return ws;
}

const restMembers = async (node, ch) =>
  (await getJson(node, `/v1/channels/${encodeURIComponent(ch)}/presence`)).members.sort((a, b) => (a.clientId < b.clientId ? -1 : 1));


async function metrics(node) {
  const text = await (await fetch(`${node.base}/metrics`, { signal: AbortSignal.timeout(10000) })).text();
  const get = (name, labels = '') => {
    const m = text.match(new RegExp(`^${name}${labels.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm'));
    assert.ok(m, `${node.name}: /metrics has ${name}${labels}:\n${text.split('\n').filter((l) => l.includes('cluster_presence')).join('\n')}`);
    return Number(m[1]);
  };
  return {
    nodes: get('switchboard_cluster_presence_nodes'),
    remote: get('switchboard_cluster_presence_remote_members'),
    received: get('switchboard_cluster_presence_messages_total', '{direction="received"}'),
    sent: get('switchboard_cluster_presence_messages_total', '{direction="sent"}'),
    bad: get('switchboard_cluster_presence_bad_total'),
    dropped: get('switchboard_cluster_presence_dropped_total'),
    text,
  };
}

const prefixOf = (node) => `${node.id.slice(0, 8)}-`;

// ---- the tests ----

test('a member on A is on B: sync, REST and changes; its updates and leave follow; clientIds carry the node', { timeout: 20000 }, async () => {
  const ch = 'doc-1';
  const rB = await observe(B, ch);
  const rA = await observe(A, ch);
  const wa = await open(A);
  const info = { name: 'Alice' };
  const cidA = await enter(wa, ch, 'alice', { info, state: { x: 0 } });
  assert.match(cidA, /^[0-9a-f]{8}-\d+$/, `the clientId carries the node prefix: ${cidA}`);
  assert.ok(cidA.startsWith(prefixOf(A)), `A's clientId ${cidA} starts with A's node id ${A.id}`);
  const want = { clientId: cidA, userId: 'alice', info, state: { x: 0 } };
  await eventually(() => assert.deepEqual(rB.view.members.get(cidA), want, 'B\'s reader got the enter'));
  assert.deepEqual(rB.view.events.slice(0, 2).map((e) => e.action), ['user.enter', 'enter'], 'user.enter, then enter');
  assert.deepEqual(await restMembers(B, ch), [want], 'GET /v1/channels/{ch}/presence on B lists it');
  assert.equal((await getJson(B, `/v1/channels/${ch}`)).presence, 1, 'channel info on B counts it');
  const late = await observe(B, ch);
  assert.deepEqual(late.view.syncs[0].members, [want], 'a new reader on B has it in its presence.sync');
  assert.deepEqual(late.view.syncs[0].users, ['alice'], 'and its user');

  // A burst of states: throttled on A; B's reader gets exactly the states A's reader got.
  for (let x = 1; x <= 12; x++) wa.send(JSON.stringify({ op: 'presence', channel: ch, action: 'update', state: { x } }));
  await eventually(() => assert.deepEqual(rB.view.members.get(cidA)?.state, { x: 12 }, 'the last state reaches B'));
  await eventually(() => assert.deepEqual(rA.view.members.get(cidA)?.state, { x: 12 }, 'the last state reaches A'));
  await sleep(100);
  assert.deepEqual(rB.view.states.get(cidA), rA.view.states.get(cidA), 'B\'s reader got the same states as A\'s, in order');
  assert.ok(rA.view.states.get(cidA).length < 12, `the throttle coalesced some (${rA.view.states.get(cidA).length} of 12)`);

  // A member of B's: a different prefix, seen on A.
  const wb = await open(B);
  const cidB = await enter(wb, ch, 'bob');
  assert.ok(cidB.startsWith(prefixOf(B)), `B's clientId ${cidB} starts with B's node id ${B.id}`);
  assert.notEqual(prefixOf(A), prefixOf(B), 'the nodes have different prefixes');
  await eventually(() => assert.ok(rA.view.members.has(cidB), 'A\'s reader got B\'s member'));
  await eventually(async () => assert.deepEqual(await restMembers(A, ch), await restMembers(B, ch), 'A and B list the same members'));

  // Leaves: the op on A; the connection close on B.
  const leaveOk = await call(wa, { op: 'presence', channel: ch, action: 'leave' });
  assert.equal(leaveOk.op, 'ok');
  await eventually(() => assert.ok(!rB.view.members.has(cidA), 'B\'s reader got the leave'));
  await eventually(() => assert.ok(!rB.view.users.has('alice'), 'and user.leave after the grace'), { timeout: GRACE_MS + 2000 });
  wb.close();
  await eventually(() => assert.ok(!rA.view.members.has(cidB), 'A\'s reader got the leave of B\'s closed member'));
  await eventually(async () => assert.deepEqual(await restMembers(A, ch), [], 'nobody left on A'));
  assert.deepEqual(await restMembers(B, ch), [], 'nobody left on B');
  for (const ws of [wa, rA, rB, late]) ws.close();
});

test('user-level events across nodes: one user.enter, no user.leave while another node has a member', { timeout: 20000 }, async () => {
  const ch = 'doc-2';
  const rA = await observe(A, ch);
  const rB = await observe(B, ch);
  const wa = await open(A);
  const wb = await open(B);
  await enter(wa, ch, 'carol');
  await enter(wb, ch, 'carol');
  for (const r of [rA, rB]) await eventually(() => assert.equal(r.view.members.size, 2, 'both members are seen'));
  for (const r of [rA, rB]) assert.deepEqual(r.view.userEvents.map((e) => e.action), ['user.enter'], 'one user.enter');
  wa.close();
  for (const r of [rA, rB]) await eventually(() => assert.equal(r.view.members.size, 1, 'the A member left'));
  await sleep(GRACE_MS + 400);
  for (const r of [rA, rB]) assert.deepEqual(r.view.userEvents.map((e) => e.action), ['user.enter'], 'no user.leave: B still has carol');
  wb.close();
  for (const r of [rA, rB]) {
    await eventually(() => assert.deepEqual(r.view.userEvents.map((e) => e.action), ['user.enter', 'user.leave'], 'user.leave after the last member'), { timeout: GRACE_MS + 2000 });
    assert.equal(r.view.members.size, 0);
  }
  rA.close(); rB.close();
});

test('metrics: the presence part of the cluster metrics', { timeout: 10000 }, async () => {
  const ch = 'doc-m';
  const wa = await open(A);
  await enter(wa, ch, 'mia');
  await eventually(async () => assert.equal((await metrics(B)).remote, 1, 'B counts A\'s member as remote'));
  for (const n of [A, B]) {
    const m = await metrics(n);
    assert.equal(m.nodes, 1, `${n.name} hears one other node`);
    assert.ok(m.received > 0 && m.sent > 0, `${n.name} sent and received presence messages: ${JSON.stringify(m)}`);
    assert.equal(m.bad, 0, `${n.name}: nothing malformed yet`);
    for (const c of ['messages', 'bad', 'dropped'])
      assert.match(m.text, new RegExp(`^# TYPE switchboard_cluster_presence_${c}_total counter$`, 'm'));
    const j = (await getJson(n, '/api/metrics')).cluster;
    assert.equal(j.presenceNodes, 1, `${n.name}: cluster.presenceNodes: ${JSON.stringify(j)}`);
    for (const k of ['presenceRemoteMembers', 'presenceMessagesReceived', 'presenceMessagesSent', 'presenceBad', 'presenceDropped'])
      assert.ok(Number.isInteger(j[k]) && j[k] >= 0, `${n.name}: cluster.${k} is a count: ${JSON.stringify(j)}`);
  }
  assert.equal((await metrics(A)).remote, 0, 'A has no remote member');
  wa.close();
  await eventually(async () => assert.equal((await metrics(B)).remote, 0, 'the member is gone on B'));
});

test('a node started later has the members in its first presence.sync', { timeout: 20000 }, async () => {
  const ch = 'doc-3';
  const wa = await open(A);
  const wb = await open(B);
  const cA = await enter(wa, ch, 'dan', { state: { at: 'A' } });
  const cB = await enter(wb, ch, 'eve', { state: { at: 'B' } });
  await eventually(async () => assert.equal((await restMembers(A, ch)).length, 2));
  const C = await startNode('C');
  // Right after "cluster ready": no waiting.
  const rC = await observe(C, ch);
  const ids = rC.view.syncs[0].members.map((m) => m.clientId).sort();
  assert.deepEqual(ids, [cA, cB].sort(), `C's first presence.sync has both members: ${JSON.stringify(rC.view.syncs[0])}`);
  assert.deepEqual(rC.view.syncs[0].users.sort(), ['dan', 'eve']);
  assert.deepEqual(await restMembers(C, ch), await restMembers(A, ch), 'C lists what A lists');
  // And C's own members reach the others.
  const wc = await open(C);
  const cC = await enter(wc, ch, 'fay');
  assert.ok(cC.startsWith(prefixOf(C)));
  for (const n of [A, B]) await eventually(async () => assert.ok((await restMembers(n, ch)).some((m) => m.clientId === cC), `${n.name} lists C's member`));
  wa.close(); wb.close(); wc.close(); rC.close();
  for (const n of [A, B, C]) await eventually(async () => assert.deepEqual(await restMembers(n, ch), [], `${n.name}: all left`));
  await stopNode(C);
  for (const n of [A, B]) await eventually(async () => assert.equal((await metrics(n)).nodes, 1, `${n.name}: C said bye`));
});

test('a SIGKILLed node: its members leave after the node timeout, their users after the grace', { timeout: 20000 }, async (t) => {
  const ch = 'doc-4';
  const K = await startNode('K');
  const rB = await observe(B, ch);
  const wk = await open(K);
  const ck = await enter(wk, ch, 'kim');
  const wb = await open(B);
  await enter(wb, ch, 'lou');
  await eventually(() => assert.ok(rB.view.members.has(ck), 'B sees K\'s member'));
  wk.on('error', () => {});
  nodes.delete(K);
  await K.kill();
  const killedAt = Date.now();
  await eventually(() => assert.ok(!rB.view.members.has(ck), 'K\'s member left on B'), { timeout: NODE_TIMEOUT_MS + 3000, interval: 50 });
  const leftAfter = Date.now() - killedAt;
  await eventually(() => assert.ok(!rB.view.users.has('kim'), 'kim\'s user.leave'), { timeout: GRACE_MS + 2000, interval: 50 });
  const userLeftAfter = Date.now() - killedAt;
  t.diagnostic(`leave ${leftAfter} ms and user.leave ${userLeftAfter} ms after SIGKILL`);
  assert.ok(leftAfter >= NODE_TIMEOUT_MS - 500, `not before the node timeout (${leftAfter} ms)`);
  assert.ok(rB.view.users.has('lou') && rB.view.members.size === 1, 'B\'s own member stays');
  assert.deepEqual(await restMembers(B, ch), [...rB.view.members.values()], 'no ghost in B\'s REST list');
  assert.deepEqual(await restMembers(A, ch), [...rB.view.members.values()], 'no ghost on A either');
  assert.equal((await metrics(B)).nodes, 1, 'B hears only A now');
  wb.close(); rB.close();
});

test('a SIGTERMed node: its members leave at once, not after the timeout', { timeout: 20000 }, async (t) => {
  const ch = 'doc-5';
  const T = await startNode('T');
  const rB = await observe(B, ch);
  const wt = await open(T);
  wt.on('error', () => {});
  const ct = await enter(wt, ch, 'tom');
  await eventually(() => assert.ok(rB.view.members.has(ct), 'B sees T\'s member'));
  const stopAt = Date.now();
  const stopped = stopNode(T);
  await eventually(() => assert.ok(!rB.view.members.has(ct), 'T\'s member left on B'), { timeout: 4000, interval: 20 });
  const took = Date.now() - stopAt;
  t.diagnostic(`leave ${took} ms after SIGTERM`);
  assert.ok(took < NODE_TIMEOUT_MS - 1000, `well before the node timeout (${took} ms)`);
  await stopped;
  await eventually(async () => assert.equal((await metrics(B)).nodes, 1, 'B dropped T (bye)'));
  rB.close();
});

test('a cut pub/sub connection (CLIENT KILL TYPE pubsub): changes made meanwhile converge', { timeout: 20000 }, async () => {
  const ch = 'doc-6';
  const rB = await observe(B, ch);
  const rA = await observe(A, ch);
  const wa1 = await open(A);
  const wa2 = await open(A);
  const wb1 = await open(B);
  const c1 = await enter(wa1, ch, 'u1');
  const c2 = await enter(wa2, ch, 'u2', { state: { v: 1 } });
  await enter(wb1, ch, 'u3');
  await eventually(() => assert.equal(rB.view.members.size, 3));
  const killed = await redisCmd('CLIENT', 'KILL', 'TYPE', 'pubsub');
  assert.ok(killed >= 2, `the nodes' subscriptions were cut (${killed})`);
  // Changes on both sides while the subscriptions come back.
  const wa3 = await open(A);
  const c3 = await enter(wa3, ch, 'u4');
  await call(wa1, { op: 'presence', channel: ch, action: 'leave' });
  await call(wa2, { op: 'presence', channel: ch, action: 'update', state: { v: 2 } });
  const wb2 = await open(B);
  await enter(wb2, ch, 'u5');
  wb1.close();
  await waitFor(async () => (await pubsubClients()) >= 2, { timeout: 10000, what: 'both nodes subscribed again' });
  await eventually(async () => {
    const a = await restMembers(A, ch);
    assert.deepEqual(await restMembers(B, ch), a, 'B lists what A lists');
    assert.equal(a.length, 3, `u2, u4, u5 remain: ${JSON.stringify(a)}`);
    assert.ok(!a.some((m) => m.clientId === c1), 'u1 left');
    assert.ok(a.some((m) => m.clientId === c3), 'u4 entered');
    assert.deepEqual(a.find((m) => m.clientId === c2)?.state, { v: 2 }, 'u2 has its new state');
    assert.deepEqual(rB.view.sorted(), a, 'B\'s reader\'s view equals the list');
    assert.deepEqual(rA.view.sorted(), a, 'A\'s reader\'s view equals the list');
  }, { timeout: 5000 });
  for (const ws of [wa1, wa2, wa3, wb2, rA, rB]) ws.close();
});

test('malformed messages on the presence channel are counted and skipped; the node keeps serving', { timeout: 15000 }, async () => {
  const ch = 'doc-7';
  const before = await metrics(B);
  const id = 'f00dfeedf00dfeed';
  const member = (cid, uid) => JSON.stringify({ clientId: cid, userId: uid, info: {}, state: {} });
  const f = (s) => `${Buffer.byteLength(s)}:${s}`;
  const good = (cid, uid) => `${id} enter ${f(ch)} ${f(cid)} ${f(uid)} ${f(member(cid, uid))}`;
  const bads = [
    Buffer.from('garbage'),
    Buffer.from(`${id.slice(0, 15)}x heartbeat`), // bad node id
    Buffer.from(`${id} wave`), // unknown kind
    Buffer.from(`${id} heartbeat extra`), // trailing bytes
    Buffer.from(`${id} enter ${f(ch)} ${f('x-1')} ${f('u')}`), // a field missing
    Buffer.from(`${id} enter 99:${ch} ${f('x-1')} ${f('u')} ${f(member('x-1', 'u'))}`), // a length past the end
    Buffer.from(`${id} enter 03:abc ${f('x-1')} ${f('u')} ${f(member('x-1', 'u'))}`), // a leading zero
    Buffer.from(`${id} enter ${f('bad channel!')} ${f('x-1')} ${f('u')} ${f(member('x-1', 'u'))}`), // invalid channel
    Buffer.from(`${id} enter ${f(ch)} ${f('x-1')} ${f('u')} ${f('[1,2]')}`), // member not an object
    Buffer.from(`${id} enter ${f(ch)} ${f('x-1')} ${f('u')} ${f('{"clientId":"x-1",')}`), // not JSON
    Buffer.from(`${id} enter ${f(ch)} ${f('x-1')} ${f('u')} ${f(member('x-2', 'u'))}`), // clientId disagrees
    Buffer.concat([Buffer.from(`${id} enter ${f(ch)} 3:x-1 2:u`), Buffer.from([0xff, 0xfe]), Buffer.from(` ${f(member('x-1', 'u'))}`)]), // not UTF-8
    Buffer.from(`${id} snapshot 5 ${f(ch)} ${f('x-1')} ${f('u')} ${f(member('x-1', 'u'))}`), // count past the entries
    Buffer.from(`${id} leave ${f(ch)}`), // leave without clientId
  ];
  for (const b of bads) await redisCmd('PUBLISH', PCHAN, b);
  await eventually(async () => assert.equal((await metrics(B)).bad - before.bad, bads.length, 'each malformed message counted once'));
  assert.deepEqual(await restMembers(B, ch), [], 'none of them entered anyone');
  // A well-formed message from a made-up node is taken.
  await redisCmd('PUBLISH', PCHAN, good('f00dfeed-1', 'ghost'));
  await eventually(async () => assert.equal((await restMembers(B, ch)).length, 1, 'the well-formed enter is applied'));
  assert.equal((await metrics(B)).bad - before.bad, bads.length, 'and not counted as bad');
  // Still serving: a member entering on A reaches B.
  const wa = await open(A);
  const cid = await enter(wa, ch, 'real');
  await eventually(async () => assert.ok((await restMembers(B, ch)).some((m) => m.clientId === cid), 'A\'s member reaches B'));
  assert.equal((await fetch(`${B.base}/healthz`)).status, 200);
  // Its bye drops it at once.
  await redisCmd('PUBLISH', PCHAN, `${id} bye`);
  await eventually(async () => assert.ok(!(await restMembers(B, ch)).some((m) => m.clientId === 'f00dfeed-1'), 'the made-up node said bye'));
  await eventually(async () => assert.equal((await metrics(B)).nodes, 1, 'B hears only A again'));
  wa.close();
});

test('every node shuts down cleanly (exit 0, no sanitizer report), holding remote members and users within their grace', { timeout: 20000 }, async () => {
  const ch = 'doc-end';
  const rA = await observe(A, ch);
  const rB = await observe(B, ch);
  const wa = await open(A);
  const [wb1, wb2] = [await open(B), await open(B)];
  for (const ws of [wa, wb1, wb2, rA, rB]) ws.on('error', () => {});
  await enter(wa, ch, 'ann');
  await enter(wb1, ch, 'stay');
  await enter(wb2, ch, 'going');
  for (const r of [rA, rB]) await eventually(() => assert.equal(r.view.members.size, 3));
  wb2.close();
  await eventually(() => assert.equal(rA.view.members.size, 2, 'A saw the leave'));
  assert.ok(rA.view.users.has('going'), 'its user is within its grace on A');
  // A stops holding a remote member (stay) and a remote user within its grace
  // (going); B then holds A's users within their grace (ann, by A's bye).
  await stopNode(A);
  await eventually(() => assert.equal(rB.view.members.size, 1, 'B dropped ann'));
  assert.ok(rB.view.users.has('ann'), 'ann is within its grace on B');
  await stopNode(B);
});
