// Unit tests of the reconnect schedule (no server): exponential growth, the cap,
// jitter bounds and spread, the retry limit and the reset.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff, backoffDelay, nominalDelay, resolveBackoff } from '../dist/index.js';

const opts = resolveBackoff();

test('defaults: 1 s base, 30 s cap, 25 % jitter, no retry limit, 5 s to count as stable', () => {
  assert.equal(opts.baseMs, 1000);
  assert.equal(opts.capMs, 30000);
  assert.equal(opts.jitter, 0.25);
  assert.equal(opts.maxRetries, Infinity);
  assert.equal(opts.stableMs, 5000);
});

test('nominal schedule doubles from the base up to the cap', () => {
  const got = [...Array(9).keys()].map((n) => nominalDelay(n, opts));
  assert.deepEqual(got, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
  assert.equal(nominalDelay(5000, opts), 30000, 'no overflow for huge attempt counts');
});

test('every jittered delay is within +/-25 % of nominal, never below the base nor above the cap', () => {
  for (let n = 0; n < 12; n++) {
    const d = nominalDelay(n, opts);
    const lo = Math.max(opts.baseMs, d * 0.75);
    const hi = Math.min(opts.capMs, d * 1.25);
    for (let i = 0; i <= 1000; i++) {
      const r = i / 1000 - (i === 1000 ? 1e-9 : 0);
      const x = backoffDelay(n, opts, r);
      assert.ok(x >= lo && x <= hi, `attempt ${n} r=${r}: ${x} not in [${lo}, ${hi}]`);
    }
  }
  // The first retry is never faster than the base: [1000, 1250].
  assert.equal(backoffDelay(0, opts, 0), 1250);
  assert.equal(backoffDelay(0, opts, 0.5), 1000);
  assert.equal(backoffDelay(0, opts, 0.9999999), 1250);
  // Middle attempts use the full +/-25 %.
  assert.equal(backoffDelay(2, opts, 0), 3000);
  assert.equal(backoffDelay(2, opts, 0.9999999), 5000);
});

test('jitter spreads draws evenly (no pile-up on the floor or the cap)', () => {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (const n of [0, 2, 6]) {
    const o = resolveBackoff({ random: rnd });
    const d = nominalDelay(n, o);
    const lo = Math.max(o.baseMs, d * 0.75);
    const hi = Math.min(o.capMs, d * 1.25);
    const buckets = new Array(10).fill(0);
    const N = 20000;
    let sum = 0;
    for (let i = 0; i < N; i++) {
      const x = backoffDelay(n, o);
      sum += x;
      buckets[Math.min(9, Math.floor(((x - lo) / (hi - lo)) * 10))]++;
    }
    for (const b of buckets) assert.ok(b > N / 10 * 0.85 && b < N / 10 * 1.15, `attempt ${n}: uneven buckets ${buckets}`);
    const mean = sum / N;
    assert.ok(Math.abs(mean - (lo + hi) / 2) < (hi - lo) * 0.02, `attempt ${n}: mean ${mean}`);
  }
});

test('Backoff counts attempts, stops at the retry limit and resets', () => {
  const b = new Backoff({ maxRetries: 3, random: () => 0.5 });
  assert.deepEqual([b.next(), b.next(), b.next()], [1000, 2000, 4000]);
  assert.equal(b.attempt, 3);
  assert.equal(b.exhausted, true);
  assert.equal(b.next(), null, 'gives up after maxRetries');
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.next(), 1000, 'back to the base after a reset');
});

test('custom base and cap; bad options are refused', () => {
  const o = resolveBackoff({ baseMs: 100, capMs: 450, jitter: 0.5 });
  for (let n = 0; n < 8; n++)
    for (const r of [0, 0.3, 0.7, 0.999]) {
      const x = backoffDelay(n, o, r);
      assert.ok(x >= 100 && x <= 450, `${x}`);
    }
  assert.throws(() => resolveBackoff({ baseMs: 0 }), RangeError);
  assert.throws(() => resolveBackoff({ baseMs: 10, capMs: 5 }), RangeError);
  assert.throws(() => resolveBackoff({ jitter: 2 }), RangeError);
});
