// Unit tests of cursor tracking and the SSE parser (no server).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compareIds, CursorTracker, SseParser, tokenExpiry } from '../dist/index.js';

test('ids compare as 64-bit decimal strings, never as doubles', () => {
  // These two are equal as doubles.
  assert.equal(Number('1763927342123000001'), Number('1763927342123000002'));
  assert.equal(compareIds('1763927342123000001', '1763927342123000002'), -1);
  assert.equal(compareIds('1763927342123000002', '1763927342123000001'), 1);
  assert.equal(compareIds('18446744073709551615', '18446744073709551614'), 1);
  assert.equal(compareIds('999', '1000'), -1, 'shorter is smaller');
  assert.equal(compareIds('42', '42'), 0);
  assert.equal(compareIds('0', '1'), -1);
  assert.equal(compareIds('007', '7'), 0, 'leading zeros do not matter');
});

test('cursor tracking accepts each id once per channel, in order', () => {
  const c = new CursorTracker();
  assert.equal(c.accept('a', '1763927342123000001'), true);
  assert.equal(c.accept('a', '1763927342123000001'), false, 'duplicate');
  assert.equal(c.accept('a', '1763927342123000000'), false, 'older');
  assert.equal(c.accept('a', '1763927342123000005'), true);
  assert.equal(c.accept('b', '1763927342123000002'), true, 'channels are independent');
  assert.equal(c.get('a'), '1763927342123000005');
  assert.equal(c.latest(), '1763927342123000005');
  assert.equal(c.min(['a', 'b', 'zzz']), '1763927342123000002');
  assert.equal(c.min(['zzz']), undefined);
  assert.equal(c.advance('b', '1763927342123000001'), false, 'never moves back');
  assert.equal(c.advance('b', '1763927342123000009'), true);
  c.delete('a');
  assert.equal(c.get('a'), undefined);
  assert.deepEqual(c.entries(), [['b', '1763927342123000009']]);
});

const STREAM =
  '\uFEFFretry: 1000\nid: 100\n: switchboard 0.1\n\n' +
  'id: 101\nevent: notification\ndata: {"a":1}\n\n' +
  ': hb\n\n' +
  'id: 102\r\ndata: line one\r\ndata: line two\r\n\r\n' +
  'event: reset\rdata: {"channel":"x","reason":"history_gap"}\r\r' +
  'data:no space\n\n' +
  'id: 103\ndata\n\n';

function parseAll(chunks) {
  const out = { events: [], comments: [], retry: [], idOnly: [] };
  const p = new SseParser({
    onEvent: (e) => out.events.push(e),
    onComment: (c) => out.comments.push(c),
    onRetry: (r) => out.retry.push(r),
    onIdOnly: (id) => out.idOnly.push(id),
  });
  for (const c of chunks) p.feed(c);
  return out;
}

test('SSE parser: fields, comments, id-only blocks, CR/LF/CRLF, BOM', () => {
  const r = parseAll([STREAM]);
  assert.deepEqual(r.retry, [1000]);
  assert.deepEqual(r.comments, ['switchboard 0.1', 'hb']);
  assert.deepEqual(r.idOnly, ['100']);
  assert.deepEqual(r.events, [
    { id: '101', hasId: true, event: 'notification', data: '{"a":1}' },
    { id: '102', hasId: true, event: 'message', data: 'line one\nline two' },
    { id: '102', hasId: false, event: 'reset', data: '{"channel":"x","reason":"history_gap"}' },
    { id: '102', hasId: false, event: 'message', data: 'no space' },
    { id: '103', hasId: true, event: 'message', data: '' },
  ]);
});

test('SSE parser: the same result for every split of the stream into two and three chunks', () => {
  const whole = JSON.stringify(parseAll([STREAM]));
  for (let i = 0; i <= STREAM.length; i++) {
    assert.equal(JSON.stringify(parseAll([STREAM.slice(0, i), STREAM.slice(i)])), whole, `split at ${i}`);
    for (let j = i; j <= STREAM.length; j += 7)
      assert.equal(JSON.stringify(parseAll([STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)])), whole);
  }
  // Byte by byte.
  assert.equal(JSON.stringify(parseAll([...STREAM])), whole);
});

test('tokenExpiry reads a JWT exp claim and ignores anything else', () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  assert.equal(tokenExpiry(`${b64({ alg: 'HS256' })}.${b64({ sub: 'u', exp: 1800000000 })}.sig`), 1800000000000);
  assert.equal(tokenExpiry(`${b64({ alg: 'HS256' })}.${b64({ sub: 'u' })}.sig`), null);
  assert.equal(tokenExpiry('not-a-jwt'), null);
  assert.equal(tokenExpiry('a.!!!.c'), null);
  assert.equal(tokenExpiry(null), null);
});
