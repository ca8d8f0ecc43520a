/**
 * `denoise: 'rows'`: per-item James–Stein shrinkage of a round's delta for the known DP noise.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { shrinkRows } from '../../src/server/aggregate.js';
import { Random } from '../../src/model/random.js';

test('shrinkRows removes most of the energy of rows that hold only noise and keeps rows with a strong signal', () => {
  const n = 400;
  const dim = 16;
  const sd = 0.1;
  const r = new Random(2);
  const delta = new Float64Array(n * (dim + 1));
  const signal = new Float64Array(n * (dim + 1));
  // The first 40 items carry a signal 5× the noise on every coordinate; the rest only noise.
  for (let item = 0; item < 40; item++) {
    for (let k = 0; k < dim; k++) signal[item * dim + k] = 5 * sd * (k % 2 ? 1 : -1);
    signal[n * dim + item] = 5 * sd;
  }
  for (let i = 0; i < delta.length; i++) delta[i] = signal[i]! + sd * r.normal();
  const before = errorOf(delta, signal);
  const kept = shrinkRows(delta, n, dim, sd * sd);
  const after = errorOf(delta, signal);
  // A noise-only row survives (shrunk) when its χ² draw exceeds its mean: about half of them.
  assert.ok(kept >= 40 && kept < 260, `kept ${kept} rows`);
  let noiseEnergy = 0;
  for (let item = 40; item < n; item++) noiseEnergy += delta[n * dim + item]! ** 2 + delta.subarray(item * dim, item * dim + dim).reduce((s, x) => s + x * x, 0);
  assert.ok(noiseEnergy < 0.2 * 360 * (dim + 1) * sd * sd, `noise rows keep ${noiseEnergy} of ${360 * (dim + 1) * sd * sd}`);
  assert.ok(after < before / 3, `squared error ${after} after vs ${before} before`);
  // Signal rows keep most of their signal: projection of what is left on the signal, over its energy.
  let dot = 0;
  let energy = 0;
  for (let i = 0; i < delta.length; i++) {
    dot += delta[i]! * signal[i]!;
    energy += signal[i]! * signal[i]!;
  }
  assert.ok(dot / energy > 0.85, `signal kept at ${dot / energy}`);
  // No noise: nothing changes.
  const copy = Float64Array.from(signal);
  assert.equal(shrinkRows(copy, n, dim, 0), n);
  assert.deepEqual(copy, signal);
});

function errorOf(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2;
  return s;
}
