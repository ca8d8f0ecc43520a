import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { addGaussianNoise, clipL2, cryptoUniform, gaussianNoise, l2Norm } from '../../src/federated/dp.js';

test('clipL2 scales to exactly C when over, leaves vectors within C alone', () => {
  const v = new Float32Array([3, 4]);
  assert.deepEqual(clipL2(v, 1), { norm: 5, scale: 0.2 });
  assert.ok(Math.abs(l2Norm(v) - 1) < 1e-7);
  const big = new Float64Array(10_000).map((_, i) => Math.sin(i) * 10);
  clipL2(big, 2.5);
  assert.ok(Math.abs(l2Norm(big) - 2.5) < 1e-12);
  const small = new Float64Array([0.1, -0.2]);
  const r = clipL2(small, 1);
  assert.equal(r.scale, 1);
  assert.ok(Math.abs(r.norm - Math.sqrt(0.05)) < 1e-15);
  assert.deepEqual([...small], [0.1, -0.2]);
  assert.throws(() => clipL2(new Float32Array([NaN]), 1), /non-finite/);
  assert.throws(() => clipL2(new Float32Array([1]), 0), /clip/);
});

test('crypto Gaussian noise: mean, std and kurtosis of 200,000 draws', () => {
  // Fixed sample size N = 200,000, std 2. Standard errors: mean 2/√N = 0.0045, std ≈ 2/√(2N) =
  // 0.0032, kurtosis √(24/N) = 0.011. Bounds are 6+ standard errors: a correct sampler fails with
  // probability < 1e-8, a wrong scale (even 2% off) or a non-Gaussian shape fails.
  const N = 200_000;
  const z = gaussianNoise(new Float64Array(N), 2);
  let m = 0;
  for (const x of z) m += x;
  m /= N;
  let m2 = 0;
  let m4 = 0;
  for (const x of z) {
    const d = (x - m) ** 2;
    m2 += d;
    m4 += d * d;
  }
  m2 /= N;
  m4 /= N;
  assert.ok(Math.abs(m) < 0.03, `mean ${m}`);
  assert.ok(Math.abs(Math.sqrt(m2) - 2) < 0.02, `std ${Math.sqrt(m2)}`);
  assert.ok(Math.abs(m4 / (m2 * m2) - 3) < 0.1, `kurtosis ${m4 / (m2 * m2)}`);
  // Tail mass beyond 3σ is 0.27%: ±0.05% is > 4 standard errors (0.0116%).
  const tail = z.filter((x) => Math.abs(x) > 6).length / N;
  assert.ok(Math.abs(tail - 0.0027) < 0.0005, `tail ${tail}`);
});

test('uniforms are in [0, 1) and noise is added on every coordinate', () => {
  const u = cryptoUniform();
  for (let i = 0; i < 50_000; i++) {
    const x = u();
    assert.ok(x >= 0 && x < 1);
  }
  const v = addGaussianNoise(new Float32Array(1000), 0.1);
  assert.equal(v.filter((x) => x === 0).length, 0);
  assert.deepEqual([...gaussianNoise(new Float64Array(3), 0)], [0, 0, 0]);
  assert.throws(() => gaussianNoise(new Float64Array(1), -1), /std/);
});

test('l2Norm of a finite vector whose squares overflow is finite (scaled), and clipL2 clips it; a non-finite coordinate is refused as such', () => {
  const v = Float64Array.of(3e300, 4e300);
  assert.ok(Math.abs(l2Norm(v) / 5e300 - 1) < 1e-12);
  const { norm, scale } = clipL2(v, 1);
  assert.ok(Math.abs(norm / 5e300 - 1) < 1e-12);
  assert.ok(scale > 0 && Math.abs(l2Norm(v) - 1) < 1e-12, 'clipped to 1');
  assert.throws(() => clipL2(Float64Array.of(1, NaN), 1), /non-finite coordinate/);
  assert.throws(() => clipL2(Float64Array.of(1.7e308, 1.7e308, 1.7e308, 1.7e308, 1.7e308), 1), /beyond the largest double/);
  assert.ok(Number.isNaN(l2Norm([1, NaN, 1e300 * 1e10])));
});
