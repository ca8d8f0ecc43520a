// The noise variance the server hands its denoisers (`--denoise rows|directions`): DP noise, plus
// the rounding every value went through, times the robust estimator's variance factor. Taken too
// small, pure-noise directions pass the Marchenko–Pastur edge and are published as factors.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildClientUpdate, quantizeStochastic } from '../../src/federated/client-update.js';
import { decodeModel, fromHex, type QuantizedUpdate } from '../../src/federated/wire.js';
import { createItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';
import { robustVarianceFactor, roundingVariance, trimCount } from '../../src/server/aggregate.js';
import { createServer } from '../../src/server/index.js';
import { simulate } from '../../src/federated/simulate.js';
import { BASE, clusteredSplit } from './simulate-helpers.js';

test('robustVarianceFactor: 1 for the mean, π/2 for the median, and a trimmed mean as its variance over many draws', () => {
  assert.equal(robustVarianceFactor('mean', 100, 0), 1);
  assert.equal(robustVarianceFactor('trimmed-mean', 100, 0), 1);
  assert.equal(robustVarianceFactor('median', 100, 49), Math.PI / 2);
  // Monotone from 1 towards π/2 as more is trimmed.
  let last = 1;
  for (const trim of [5, 10, 20, 30, 40, 49]) {
    const f = robustVarianceFactor('trimmed-mean', 100, trim);
    assert.ok(f > last && f < Math.PI / 2 + 1e-6, `trim ${trim}: ${f}`);
    last = f;
  }
  // Against the variance of the estimate itself, over 6,000 seeded draws of m = 101 normals.
  const rng = new Random(7);
  const m = 101;
  for (const [robust, fraction] of [
    ['trimmed-mean', 0.1],
    ['trimmed-mean', 0.3],
    ['median', 0],
  ] as const) {
    const trim = trimCount(robust, m, fraction);
    const draws = 6000;
    let ss = 0;
    for (let d = 0; d < draws; d++) {
      const x = Float64Array.from({ length: m }, () => rng.normal()).sort();
      let s = 0;
      for (let i = trim; i < m - trim; i++) s += x[i]!;
      const est = robust === 'median' ? x[(m - 1) / 2]! : s / (m - 2 * trim);
      ss += est * est;
    }
    const measured = (ss / draws) * m; // ÷ the mean's variance 1/m
    const f = robustVarianceFactor(robust, m, trim);
    assert.ok(Math.abs(measured / f - 1) < 0.07, `${robust} trim ${trim}: measured ${measured.toFixed(3)}, factor ${f.toFixed(3)}`);
  }
});

test('roundingVariance is the variance stochastic rounding adds to an update, on average over its values', () => {
  const rng = new Random(3);
  const items = 60;
  const dim = 8;
  const n = items * (dim + 1);
  for (const bits of [2, 3, 8]) {
    let err = 0;
    let predicted = 0;
    const trials = 40;
    for (let t = 0; t < trials; t++) {
      const v = Float64Array.from({ length: n }, () => rng.normal());
      const q = quantizeStochastic(v, items, dim, bits, 64, () => 1 - rng.next());
      const u: QuantizedUpdate = { header: { itemCount: items, dim, bits, blockSize: 64 } as QuantizedUpdate['header'], scales: q.scales, codes: q.codes };
      const L = 2 ** (bits - 1) - 1;
      for (let i = 0; i < items * dim; i++) {
        const block = Math.floor(i / 64);
        err += ((q.scales[block]! * (q.codes[i]! - L)) / L - v[i]!) ** 2 / (items * dim * trials);
      }
      predicted += roundingVariance(u) / trials;
    }
    const said = `${bits} bits: measured ${err.toExponential(3)}, predicted ${predicted.toExponential(3)}`;
    // s²/6 takes the values' positions between grid points as uniform. At 2 bits (grid −s, 0, s)
    // Gaussian values crowd near 0, where rounding adds less: there it errs high, on the side
    // that keeps fewer noise directions.
    if (bits === 2) assert.ok(predicted >= err && predicted < 1.15 * err, said);
    else assert.ok(Math.abs(err / predicted - 1) < 0.06, said);
  }
});

test('3-bit plain updates of pure noise: --denoise directions publishes (almost) no direction, the rounding counted with the DP noise', async () => {
  const ids = Array.from({ length: 500 }, (_, i) => `i${i}`);
  const dim = 8;
  const rows = 400;
  const K = 40;
  const initialTable = createItemTable(ids, dim, { seed: 3, popularity: ids.map((_, i) => 500 - i), popularityScale: 0.5 });
  const logs: string[] = [];
  const { app, storage } = await createServer({
    dataDir: null, initialTable, aggregator: 'subspace', subspaceScale: 6, trainBiases: false, trainRows: rows, minClients: K,
    noiseMultiplier: 1, clip: 1, bits: 3, rateLimit: false, denoise: 'directions', log: (l) => logs.push(l),
  });
  try {
    const rng = new Random(11);
    const part = { rows, biases: false };
    const versions = 8;
    for (let v = 0; v < versions; v++) {
      const res = await app.request('/v1/model');
      const base = decodeModel(new Uint8Array(await res.arrayBuffer())).table;
      const config = (await (await app.request('/v1/config')).json()) as { bits: number; blockSize: number };
      assert.equal(config.bits, 3);
      for (let k = 0; k < K; k++) {
        // No signal at all: every value of the round is DP noise, then rounded to 3 bits.
        const body: Uint8Array = buildClientUpdate(base, base, {
          baseHash: fromHex(res.headers.get('X-Localrec-Model-Hash')!), clip: 1, noiseMultiplier: 1, bits: config.bits, blockSize: config.blockSize,
          part, delta: new Float64Array(rows * dim), uniform: () => 1 - rng.next(),
        }).bytes;
        assert.equal((await app.request('/v1/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer> })).status, 202);
      }
    }
    const lines = logs.filter((l) => l.includes('direction weights'));
    assert.equal(lines.length, versions, logs.join('\n'));
    const above = lines.map((l) => Number(/\((\d+) of 8 above the noise\)/.exec(l)![1]));
    // With the rounding left out (the noise taken as the DP noise alone, ~1/1.16 of what it is) one
    // to three noise directions passed the edge in every one of these 8 versions (16 in all);
    // counted, the top one passes about one round in ten (none here).
    assert.ok(above.reduce((a, b) => a + b, 0) <= 2, `directions above the noise per version: ${above.join(', ')}\n${lines.join('\n')}`);
  } finally {
    await storage.close();
  }
});

test('secure aggregation at 6 bits, noise far above the signal: the members\' fixed-point rounding is counted, (almost) no direction passes', async () => {
  // σ = 50 against updates of norm 1: every round is noise, whose rounding at 6 bits is about half
  // the DP noise's variance again (the server warns at 0.81× its γ²/4 bound). The noise comes from
  // crypto.getRandomValues (the simulation runs the real client), so the bound is loose: with the
  // rounding counted the top noise direction passes the edge about one version in ten (expected
  // total 0.6 over 6; more than 4 has a chance of about 4 in 10,000); left out, 1–3 passed in five
  // of six versions (10 in all).
  const logs: string[] = [];
  await simulate(clusteredSplit(), {
    ...BASE, rounds: 6, clientsPerRound: 40, minClients: 40, noiseMultiplier: 50, budget: Infinity, aggregator: 'subspace', trainRows: 40,
    trainBiases: false, biasScale: 0.5, subspaceScale: 6, denoise: 'directions', secureAggregation: { bits: 6 }, log: (l) => logs.push(l),
  });
  const above = logs.filter((l) => l.includes('direction weights')).map((l) => Number(/\((\d+) of 8 above the noise\)/.exec(l)![1]));
  assert.equal(above.length, 6, logs.join('\n'));
  assert.ok(above.reduce((a, b) => a + b, 0) <= 4, `directions above the noise per version: ${above.join(', ')}`);
});
