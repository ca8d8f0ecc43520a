import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { buildClientUpdate, itemDelta, quantizeStochastic } from '../../src/federated/client-update.js';
import { l2Norm } from '../../src/federated/dp.js';
import { decodeUpdate, dequantizeUpdate } from '../../src/federated/wire.js';
import { cloneItemTable, createItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';
import { ValidationError } from '../../src/errors.js';

const ids = Array.from({ length: 200 }, (_, i) => `item-${i}`);
const hash = new Uint8Array(32).fill(7);
const seeded = (seed: number) => {
  const r = new Random(seed);
  return () => r.next();
};

/** A local table that differs from the base only in rows 3, 50 and 120 (the "touched" items). */
function touched(scale: number) {
  const base = createItemTable(ids, 8, { seed: 1 });
  const local = cloneItemTable(base);
  for (const r of [3, 50, 120]) {
    for (let k = 0; k < 8; k++) local.factors[r * 8 + k]! += scale * (k % 2 ? 1 : -1);
    local.bias[r]! += scale;
  }
  return { base, local };
}

test('without noise the decoded update is the clipped delta, up to one quantization step', () => {
  const { base, local } = touched(0.5);
  const raw = itemDelta(base, local);
  const { bytes, preClipNorm, clipScale } = buildClientUpdate(base, local, { baseHash: hash, clip: 1, noiseMultiplier: 0, bits: 8, uniform: seeded(1) });
  assert.ok(Math.abs(preClipNorm - l2Norm(raw)) < 1e-9);
  assert.ok(preClipNorm > 1 && Math.abs(clipScale - 1 / preClipNorm) < 1e-12);
  const u = decodeUpdate(bytes);
  assert.equal(u.header.baseVersion, 0);
  assert.equal(u.header.itemCount, 200);
  const d = dequantizeUpdate(u);
  for (let i = 0; i < d.length; i++) {
    const step = 0.3 / 127; // every block's scale is ≤ the largest clipped coordinate < 0.3
    assert.ok(Math.abs(d[i]! - raw[i]! * clipScale) <= step + 1e-7, `coordinate ${i}`);
  }
  assert.ok(l2Norm(d) <= 1.01);
});

test('stochastic rounding is unbiased: the mean of many quantizations converges to the value', () => {
  const values = new Float64Array([0.3, -0.71, 0.05, 1, -1, 0.999, 0, 0.5]);
  const sum = new Float64Array(values.length);
  const runs = 4000;
  const u = seeded(9);
  for (let r = 0; r < runs; r++) {
    const { scales, codes } = quantizeStochastic(values, 1, 7, 2, 64, u); // 2 bits: codes −1, 0, 1 only
    const d = dequantizeUpdate({
      header: { bits: 2, dim: 7, itemCount: 1, baseVersion: 0, blockSize: 64, clip: 1, noiseMultiplier: 0, baseHash: hash, nonce: new Uint8Array(16) },
      scales,
      codes,
    });
    for (let i = 0; i < values.length; i++) sum[i]! += d[i]!;
  }
  // Per-coordinate error std ≤ scale/2 = 0.5; the mean of 4000 has std ≤ 0.0079; allow 5 std.
  for (let i = 0; i < values.length; i++) assert.ok(Math.abs(sum[i]! / runs - values[i]!) < 0.04, `coordinate ${i}: ${sum[i]! / runs}`);
});

test('dense: untouched rows carry noise of the same scale as touched ones', () => {
  const { base, local } = touched(0.01);
  const sigma = 1;
  const clip = 0.5;
  const { bytes } = buildClientUpdate(base, local, { baseHash: hash, clip, noiseMultiplier: sigma, bits: 3, uniform: seeded(5) });
  const d = dequantizeUpdate(decodeUpdate(bytes));
  const touchedRows = new Set([3, 50, 120]);
  let s = 0;
  let n = 0;
  for (let r = 0; r < 200; r++) {
    if (touchedRows.has(r)) continue;
    for (let k = 0; k < 8; k++, n++) s += d[r * 8 + k]! ** 2;
  }
  const std = Math.sqrt(s / n);
  // Noise std σ·C = 0.5; 3-bit stochastic rounding adds at most ~12% std. 1,576 samples: ±6% is > 3 SE.
  assert.ok(std > 0.5 * 0.94 && std < 0.5 * 1.2, `std of untouched coordinates ${std}`);
  const nonzero = d.filter((x) => x !== 0).length / d.length;
  assert.ok(nonzero > 0.5, `only ${nonzero} of the coordinates are non-zero`);
});

test('shape mismatches and bad options are ValidationErrors naming the field', () => {
  const base = createItemTable(ids, 8);
  assert.throws(() => buildClientUpdate(base, createItemTable(ids, 4), { baseHash: hash, clip: 1, noiseMultiplier: 1 }), (e: unknown) => e instanceof ValidationError && e.field === 'local.dim');
  assert.throws(() => buildClientUpdate(base, createItemTable(ids.slice(1), 8), { baseHash: hash, clip: 1, noiseMultiplier: 1 }), /local.itemIds/);
  assert.throws(() => buildClientUpdate(base, base, { baseHash: new Uint8Array(3), clip: 1, noiseMultiplier: 1 }), /baseHash/);
  assert.throws(() => buildClientUpdate(base, base, { baseHash: hash, clip: 0, noiseMultiplier: 1 }), /clip/);
  assert.throws(() => buildClientUpdate(base, base, { baseHash: hash, clip: 1, noiseMultiplier: -1 }), /noiseMultiplier/);
  assert.throws(() => buildClientUpdate(base, base, { baseHash: hash, clip: 1, noiseMultiplier: 1, bits: 1 }), /bits/);
});
