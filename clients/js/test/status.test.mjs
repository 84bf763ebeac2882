// Unit tests of the status state machine (no server).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { INITIAL_STATUS, reduceStatus, StatusStore } from '../dist/index.js';

function run(events, from = INITIAL_STATUS) {
  return events.reduce((s, e) => reduceStatus(s, e), from);
}

test('starts closed (not started), start -> connecting -> open', () => {
  assert.equal(INITIAL_STATUS.status, 'closed');
  assert.equal(INITIAL_STATUS.reason, 'not_started');
  let s = run([{ type: 'start' }]);
  assert.equal(s.status, 'connecting');
  s = reduceStatus(s, { type: 'attempt', attempt: 0, transport: 'ws' });
  assert.deepEqual([s.status, s.transport, s.nextRetryAt], ['connecting', 'ws', null]);
  s = reduceStatus(s, { type: 'open', transport: 'ws' });
  assert.deepEqual([s.status, s.reason, s.attempt, s.transport], ['open', null, 0, 'ws']);
});

test('a drop says why; a scheduled retry says when and which attempt', () => {
  let s = run([{ type: 'start' }, { type: 'open', transport: 'sse' }, { type: 'drop', reason: 'heartbeat_timeout' }]);
  assert.deepEqual([s.status, s.reason], ['connecting', 'heartbeat_timeout']);
  s = reduceStatus(s, { type: 'retry', reason: 'heartbeat_timeout', at: 12345, attempt: 1 });
  assert.deepEqual([s.status, s.reason, s.nextRetryAt, s.attempt], ['connecting', 'heartbeat_timeout', 12345, 1]);
  s = reduceStatus(s, { type: 'attempt', attempt: 1, transport: 'ws' });
  assert.equal(s.nextRetryAt, null, 'no retry pending while attempting');
  assert.equal(s.reason, 'heartbeat_timeout', 'the reason stays until open');
  s = reduceStatus(s, { type: 'open', transport: 'ws' });
  assert.deepEqual([s.status, s.reason, s.attempt], ['open', null, 0]);
});

test('offline closes, online reconnects; transport noise while offline is ignored', () => {
  let s = run([{ type: 'start' }, { type: 'open', transport: 'ws' }, { type: 'offline' }]);
  assert.deepEqual([s.status, s.reason], ['closed', 'offline']);
  for (const e of [{ type: 'drop', reason: 'x' }, { type: 'open', transport: 'ws' }, { type: 'retry', reason: 'x', at: 1, attempt: 1 }])
    assert.equal(reduceStatus(s, e), s);
  s = reduceStatus(s, { type: 'online' });
  assert.deepEqual([s.status, s.reason], ['connecting', 'online']);
  assert.equal(reduceStatus(s, { type: 'online' }), s, 'online while not offline changes nothing');
});

test('giving up and stopping are terminal until start', () => {
  let s = run([{ type: 'start' }, { type: 'give-up', reason: 'retries_exhausted' }]);
  assert.deepEqual([s.status, s.reason], ['closed', 'retries_exhausted']);
  for (const e of [{ type: 'open', transport: 'ws' }, { type: 'offline' }, { type: 'online' }])
    assert.equal(reduceStatus(s, e), s, JSON.stringify(e));
  s = reduceStatus(s, { type: 'start' });
  assert.equal(s.status, 'connecting');
  s = run([{ type: 'open', transport: 'ws' }, { type: 'stop' }], s);
  assert.deepEqual([s.status, s.reason], ['closed', 'closed_by_client']);
  assert.equal(reduceStatus(s, { type: 'drop', reason: 'x' }), s);
});

test('a follower mirrors its leader status as is', () => {
  const leader = run([{ type: 'start' }, { type: 'open', transport: 'sse' }]);
  const s = reduceStatus(INITIAL_STATUS, { type: 'mirror', info: { ...leader, shared: true } });
  assert.deepEqual(s, { ...leader, shared: true });
});

test('StatusStore notifies on real changes only, with a new object each time', () => {
  const st = new StatusStore();
  const seen = [];
  const off = st.subscribe((s) => seen.push(s));
  assert.equal(st.dispatch({ type: 'start' }), true);
  assert.equal(st.dispatch({ type: 'start' }), false, 'same state: no event');
  st.dispatch({ type: 'open', transport: 'ws' });
  off();
  st.dispatch({ type: 'drop', reason: 'x' });
  assert.deepEqual(seen.map((s) => s.status), ['connecting', 'open']);
  assert.notEqual(seen[0], seen[1]);
  assert.equal(st.get().status, 'connecting');
});
