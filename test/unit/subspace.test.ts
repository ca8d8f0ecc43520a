/**
 * Federated subspace iteration (`aggregator: 'subspace'`): the device's update is a normalized
 * outer product of norm exactly C, the server publishes orthonormal factors orthogonal to the
 * biases, and the whole loop (real client, real server, secure aggregation) learns.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PopularModel } from '../../src/eval/popular-model.js';
import { evaluateModel } from '../../src/eval/runner.js';
import { RdpAccountant } from '../../src/federated/dp.js';
import { simulate } from '../../src/federated/simulate.js';
import { biasDirection, MIN_DIRECTION_WEIGHT, orthonormalColumns, shrinkDirections, subspaceTable, subspaceUpdate, symmetricEigen } from '../../src/federated/subspace.js';
import { syncOnce } from '../../src/federated/sync.js';
import { buildClientUpdate } from '../../src/federated/client-update.js';
import { createItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';
import { createServer } from '../../src/server/index.js';
import { BASE, clusteredSplit } from './simulate-helpers.js';

/** Column j·k dot products of a rows × dim row-major block. */
function gram(Q: ArrayLike<number>, rows: number, dim: number, scale = 1): number[][] {
  return Array.from({ length: dim }, (_, j) =>
    Array.from({ length: dim }, (_, k) => {
      let s = 0;
      for (let i = 0; i < rows; i++) s += Q[i * dim + j]! * Q[i * dim + k]!;
      return s / (scale * scale);
    }),
  );
}

function assertIdentity(G: number[][], tol: number, what: string): void {
  G.forEach((row, j) => row.forEach((v, k) => assert.ok(Math.abs(v - (j === k ? 1 : 0)) < tol, `${what}: entry (${j}, ${k}) is ${v}`)));
}

function randomBlock(rows: number, dim: number, seed: number): Float64Array {
  const r = new Random(seed);
  return Float64Array.from({ length: rows * dim }, () => r.normal());
}

const norm = (v: ArrayLike<number>): number => Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));

describe('subspace: orthonormalColumns', () => {
  it('returns orthonormal columns orthogonal to p that span Y when Y is already orthogonal to p', () => {
    const rows = 30;
    const dim = 5;
    const p = biasDirection({ bias: Float32Array.from({ length: rows }, (_, i) => Math.log1p(rows - i)) }, rows);
    assert.ok(Math.abs(norm(p) - 1) < 1e-12, 'p is a unit vector');
    const Q = orthonormalColumns(randomBlock(rows, dim, 1), rows, dim, p);
    assertIdentity(gram(Q, rows, dim), 1e-12, 'QᵀQ');
    for (let j = 0; j < dim; j++) {
      let dot = 0;
      for (let i = 0; i < rows; i++) dot += Q[i * dim + j]! * p[i]!;
      assert.ok(Math.abs(dot) < 1e-12, `column ${j} · p = ${dot}`);
    }
    // Q Qᵀ Y = Y for Y inside the span: take Y = Q·M for a random M.
    const M = randomBlock(dim, dim, 2);
    const Y = new Float64Array(rows * dim);
    for (let i = 0; i < rows; i++) for (let j = 0; j < dim; j++) for (let k = 0; k < dim; k++) Y[i * dim + j] += Q[i * dim + k]! * M[k * dim + j]!;
    const Q2 = orthonormalColumns(Y, rows, dim, p);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < dim; j++) {
        let back = 0;
        for (let k = 0; k < dim; k++) for (let l = 0; l < rows; l++) back += Q2[i * dim + k]! * Q2[l * dim + k]! * Y[l * dim + j]!;
        assert.ok(Math.abs(back - Y[i * dim + j]!) < 1e-9, `Y[${i}, ${j}] is not in the span`);
      }
    }
  });

  it('still returns dim orthonormal columns when Y is rank-deficient (a zero and a repeated column)', () => {
    const rows = 12;
    const dim = 3;
    const Y = new Float64Array(rows * dim);
    for (let i = 0; i < rows; i++) {
      Y[i * dim] = i + 1;
      Y[i * dim + 1] = 2 * (i + 1); // parallel to column 0
      Y[i * dim + 2] = 0; // nothing
    }
    const Q = orthonormalColumns(Y, rows, dim);
    assertIdentity(gram(Q, rows, dim), 1e-12, 'QᵀQ');
  });

  it('names the problem on a wrong shape or too many columns', () => {
    assert.throws(() => orthonormalColumns(new Float64Array(10), 4, 3), /has 10 values; 4 rows × 3 need 12/);
    assert.throws(() => orthonormalColumns(new Float64Array(16), 4, 4, new Float64Array([1, 0, 0, 0])), /4 orthonormal columns do not fit in 4 rows \(one direction is the biases\)/);
  });
});

describe('subspace: the device update', () => {
  const ids = Array.from({ length: 10 }, (_, i) => `i${i}`);
  const table = createItemTable(ids, 3, { seed: 4 });
  const part = { rows: 6, biases: false };

  it('is C · a(aᵀQ) / ‖a(aᵀQ)‖ over the trained rows (Q: F with unit columns there), of norm exactly C', () => {
    const history = [
      { row: 1, weight: 1 },
      { row: 4, weight: 2 },
      { row: 1, weight: 0.5 }, // same item again: weights add up
      { row: 8, weight: 3 }, // outside the trained rows: ignored
      { row: 2, weight: 0 }, // no weight: ignored
    ];
    const u = subspaceUpdate(table, part, history, 2.5)!;
    assert.equal(u.length, part.rows * 3);
    assert.ok(Math.abs(norm(u) - 2.5) < 1e-12, `‖u‖ = ${norm(u)}`);
    const a = new Map([
      [1, 1.5],
      [4, 2],
    ]);
    const col = [0, 1, 2].map((k) => Math.hypot(...Array.from({ length: part.rows }, (_, r) => table.factors[r * 3 + k]!)));
    const p = [0, 1, 2].map((k) => (1.5 * table.factors[1 * 3 + k]! + 2 * table.factors[4 * 3 + k]!) / col[k]!);
    const scale = 2.5 / (Math.hypot(1.5, 2) * Math.hypot(...p));
    for (let r = 0; r < part.rows; r++) {
      for (let k = 0; k < 3; k++) {
        const want = (a.get(r) ?? 0) * p[k]! * scale;
        assert.ok(Math.abs(u[r * 3 + k]! - want) < 1e-12, `u[${r}, ${k}] = ${u[r * 3 + k]}, want ${want}`);
      }
    }
  });

  it("does not depend on the scale of each published column (denoise: 'directions' weights are for scoring only)", () => {
    const history = [
      { row: 0, weight: 1 },
      { row: 3, weight: 4 },
      { row: 5, weight: 2 },
    ];
    const w = [1, 0.2, 0.01];
    const weighted = { ...table, factors: table.factors.map((x, i) => x * w[i % 3]!) };
    const u1 = subspaceUpdate(table, part, history, 1)!;
    const u2 = subspaceUpdate(weighted, part, history, 1)!;
    u1.forEach((v, i) => assert.ok(Math.abs(v - u2[i]!) < 1e-6, `coordinate ${i}: ${v} vs ${u2[i]}`));
  });

  it('does not depend on the scale of the published factors or of the weights', () => {
    const history = [
      { row: 0, weight: 1 },
      { row: 3, weight: 4 },
    ];
    const bigger = { ...table, factors: table.factors.map((x) => 7 * x) };
    const u1 = subspaceUpdate(table, part, history, 1)!;
    const u2 = subspaceUpdate(bigger, part, history.map((h) => ({ ...h, weight: h.weight * 3 })), 1)!;
    u1.forEach((v, i) => assert.ok(Math.abs(v - u2[i]!) < 1e-6, `coordinate ${i}: ${v} vs ${u2[i]}`));
  });

  it('is null when the history has no weight on the trained rows', () => {
    assert.equal(subspaceUpdate(table, part, [{ row: 7, weight: 1 }], 1), null);
    assert.equal(subspaceUpdate(table, part, [{ row: 2, weight: -1 }], 1), null);
    assert.equal(subspaceUpdate(table, part, [], 1), null);
  });
});

describe('subspace: the published table', () => {
  const ids = Array.from({ length: 20 }, (_, i) => `i${i}`);
  const base = createItemTable(ids, 4, { seed: 2, popularity: ids.map((_, i) => 20 - i), popularityScale: 0.5 });
  const part = { rows: 12, biases: false };

  it('has scale · orthonormal factors on the trained rows, orthogonal to their biases, zeros elsewhere, biases kept', () => {
    const t = subspaceTable(base, randomBlock(12, 4, 9), part, 8);
    assertIdentity(gram(t.factors.subarray(0, 48), 12, 4, 8), 1e-5, 'QᵀQ of factors / 8');
    const p = biasDirection(base, 12);
    for (let j = 0; j < 4; j++) {
      let dot = 0;
      for (let i = 0; i < 12; i++) dot += t.factors[i * 4 + j]! * p[i]!;
      assert.ok(Math.abs(dot) < 1e-4, `column ${j} · bias direction = ${dot}`);
    }
    assert.ok(t.factors.subarray(48).every((x) => x === 0), 'untrained rows have no factors');
    assert.deepEqual(Array.from(t.bias), Array.from(base.bias));
  });

  it('refuses trained biases and a scale that is not a positive number', () => {
    assert.throws(() => subspaceTable(base, randomBlock(12, 4, 9), { rows: 12, biases: true }, 8), /trainBiases: must be false with the subspace aggregator/);
    assert.throws(() => subspaceTable(base, randomBlock(12, 4, 9), part, 0), /subspaceScale: must be a number in \(0, 10000\], got 0/);
    assert.throws(() => subspaceTable(base, randomBlock(12, 4, 9), part, 2e4), /subspaceScale: must be a number in \(0, 10000\], got 20000/);
  });
});

describe("subspace: denoise 'directions'", () => {
  it('symmetricEigen: A·v = λ·v, orthonormal vectors, values descending', () => {
    const two = symmetricEigen([2, 1, 1, 2], 2);
    assert.deepEqual(Array.from(two.values, (x) => +x.toFixed(12)), [3, 1]);
    assert.ok(Math.abs(Math.abs(two.vectors[0]!) - Math.SQRT1_2) < 1e-12 && Math.abs(two.vectors[0]! - two.vectors[2]!) < 1e-12, 'first vector ∝ (1, 1)');
    const n = 9;
    const B = randomBlock(n, n, 5);
    const A = Float64Array.from({ length: n * n }, (_, i) => B[i]! + B[(i % n) * n + Math.floor(i / n)]!);
    const { values, vectors } = symmetricEigen(A, n);
    for (let k = 0; k < n; k++) {
      if (k > 0) assert.ok(values[k]! <= values[k - 1]!, 'descending');
      for (let i = 0; i < n; i++) {
        let av = 0;
        for (let j = 0; j < n; j++) av += A[i * n + j]! * vectors[j * n + k]!;
        assert.ok(Math.abs(av - values[k]! * vectors[i * n + k]!) < 1e-9, `(A v${k})[${i}]`);
      }
    }
    assertIdentity(gram(vectors, n, n), 1e-10, 'VᵀV');
  });

  it('shrinkDirections: pure noise keeps only the floor; a strong direction keeps most of its weight and its direction', () => {
    const rows = 400;
    const dim = 4;
    const noise = randomBlock(rows, dim, 11); // variance 1 per value
    const flat = shrinkDirections(noise, rows, dim, 1);
    assert.ok(flat.weights.every((w) => w < 0.3), `weights of pure noise: ${Array.from(flat.weights)}`);
    assert.ok(flat.weights.filter((w) => w === MIN_DIRECTION_WEIGHT).length >= 3, `most at the floor: ${Array.from(flat.weights)}`);
    // Plus a rank-one signal u·vᵀ of norm 200 (the noise's whole norm is about 40).
    const u = randomBlock(rows, 1, 12);
    const nu = norm(u);
    const v = [0.5, -0.5, 0.5, 0.5];
    const Y = Float64Array.from(noise, (x, i) => x + (200 * u[Math.floor(i / dim)]! * v[i % dim]!) / nu);
    const { directions, weights } = shrinkDirections(Y, rows, dim, 1);
    assert.ok(weights[0]! > 0.9, `the signal's weight ${weights[0]}`);
    assert.ok(Array.from(weights).slice(1).every((w) => w < 0.3), `the rest: ${Array.from(weights)}`);
    let dot = 0;
    let dd = 0;
    for (let i = 0; i < rows; i++) {
      dot += (directions[i * dim]! * u[i]!) / nu;
      dd += directions[i * dim]! ** 2;
    }
    assert.ok(Math.abs(dot) / Math.sqrt(dd) > 0.99, `first direction · u = ${Math.abs(dot) / Math.sqrt(dd)}`);
  });

  it('subspaceTable with the noise variance: columns orthogonal, of norm scale·w, w the weights it returns', () => {
    const ids = Array.from({ length: 50 }, (_, i) => `i${i}`);
    const base = createItemTable(ids, 3, { seed: 2, popularity: ids.map((_, i) => 50 - i), popularityScale: 0.5 });
    const part = { rows: 40, biases: false };
    const u = randomBlock(40, 1, 3);
    const Y = Float64Array.from(randomBlock(40, 3, 4), (x, i) => 0.05 * x + (i % 3 === 0 ? u[Math.floor(i / 3)]! : 0));
    const t = subspaceTable(base, Y, part, 8, 1, 0.05 ** 2);
    const w = t.directionWeights!;
    assert.equal(w.length, 3);
    assert.ok(w[0]! > 0.9 && w[1]! < 0.5 && w[2]! < 0.5, `weights ${Array.from(w)}`);
    const G = gram(t.factors.subarray(0, 120), 40, 3, 8);
    G.forEach((row, j) => row.forEach((g, k) => assert.ok(Math.abs(g - (j === k ? w[j]! ** 2 : 0)) < 1e-5, `FᵀF/64 (${j}, ${k}) = ${g}`)));
    assert.equal(subspaceTable(base, Y, part, 8).directionWeights, undefined, 'without a noise variance: no weights');
  });

  it('a server with huge noise publishes factors at or near the floor weight: it ranks (almost) by its biases; the next devices still step on every direction', async () => {
    const ids = Array.from({ length: 30 }, (_, i) => `i${i}`);
    const initialTable = createItemTable(ids, 4, { seed: 3, popularity: ids.map((_, i) => 30 - i), popularityScale: 0.5 });
    await assert.rejects(createServer({ dataDir: null, initialTable, denoise: 'directions' }), /options\.denoise: 'directions' needs the subspace aggregator, got 'fedavg'/);
    const logs: string[] = [];
    const { app, storage } = await createServer({ dataDir: null, initialTable, aggregator: 'subspace', subspaceScale: 6, trainBiases: false, trainRows: 20, minClients: 2, noiseMultiplier: 200, rateLimit: false, denoise: 'directions', log: (l) => logs.push(l) });
    try {
      const { decodeModel, fromHex } = await import('../../src/federated/wire.js');
      const res = await app.request('/v1/model');
      const v0 = decodeModel(new Uint8Array(await res.arrayBuffer())).table;
      const config = (await (await app.request('/v1/config')).json()) as { bits: number; blockSize: number };
      const part = { rows: 20, biases: false };
      // Two devices' updates as syncOnce builds them, with the noise drawn from a seeded source so that
      // the test is exact. At σ = 200 the round is pure noise. Its top eigenvalue lands near the
      // Marchenko–Pastur edge the server uses, above it about one draw in six (Tracy–Widom); at 19
      // rows (20 less the bias direction) × 4 its 99th percentile is about (√19 + 2)² + 2.02·(√19 + 2)·
      // (1/√19 + 1/2)^(1/3) = 52.0 against an edge of (√20 + 2)² = 41.9 (in units of ν²), a weight
      // of √(1 − 41.9/52.0) = 0.44: a noise direction that gets past the edge stays under 0.45.
      for (const [seed, rows] of [
        [1, [0, 1, 2]],
        [2, [3, 1, 5]],
      ] as const) {
        const rng = new Random(seed);
        const body = buildClientUpdate(v0, v0, {
          baseHash: fromHex(res.headers.get('X-Localrec-Model-Hash')!),
          clip: 1,
          noiseMultiplier: 200,
          bits: config.bits,
          blockSize: config.blockSize,
          part,
          delta: subspaceUpdate(v0, part, rows.map((row) => ({ row, weight: 1 })), 1)!,
          uniform: () => 1 - rng.next(),
        }).bytes;
        assert.equal((await app.request('/v1/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer> })).status, 202);
      }
      const v1 = decodeModel(new Uint8Array(await (await app.request('/v1/model')).arrayBuffer())).table;
      assert.equal(v1.version, 1);
      const G = gram(v1.factors.subarray(0, 80), 20, 4, 6);
      const w = G.map((row, j) => Math.sqrt(row[j]!));
      G.forEach((row, j) => row.forEach((g, k) => j !== k && assert.ok(Math.abs(g) < 1e-7, `FᵀF/36 (${j}, ${k}) = ${g}: columns orthogonal`)));
      assert.ok(w.every((x) => x >= MIN_DIRECTION_WEIGHT - 1e-6 && x < 0.45), `weights ${w}`);
      assert.ok(w.filter((x) => Math.abs(x - MIN_DIRECTION_WEIGHT) < 1e-6).length >= 3, `at least three of four at the floor: ${w}`);
      const line = logs.find((l) => l.includes('direction weights'));
      assert.match(line ?? logs.join('\n'), /direction weights (0\.\d\d )?0\.01 0\.01 0\.01( 0\.01)? \([01] of 4 above the noise\)/);
      // A device's next step is as long as ever (norm C): the directions are still there to step on.
      const next = subspaceUpdate(v1, part, [{ row: 0, weight: 1 }, { row: 4, weight: 1 }], 1)!;
      assert.ok(Math.abs(norm(next) - 1) < 1e-9, `‖step‖ = ${norm(next)}`);
    } finally {
      await storage.close();
    }
  });
});

describe('subspace: server and simulation', () => {
  it('the server checks its options, starts from an orthonormal version 0 and tells devices the aggregator', async () => {
    const ids = Array.from({ length: 30 }, (_, i) => `i${i}`);
    const initialTable = createItemTable(ids, 4, { seed: 3, popularity: ids.map((_, i) => 30 - i), popularityScale: 0.5 });
    await assert.rejects(createServer({ dataDir: null, initialTable, aggregator: 'subspace' }), /options\.trainBiases: must be false with the subspace aggregator/);
    await assert.rejects(createServer({ dataDir: null, initialTable, subspaceScale: 4 }), /options\.subspaceScale: applies to the subspace aggregator only/);
    await assert.rejects(createServer({ dataDir: null, initialTable, aggregator: 'subspace', trainBiases: false, trainRows: 4 }), /options\.trainRows: must exceed dim \(4\)/);
    await assert.rejects(createServer({ dataDir: null, initialTable, aggregator: 'bogus' as 'fedavg' }), /options\.aggregator: must be 'fedavg', 'fedadam', 'subspace', got 'bogus'/);
    await assert.rejects(createServer({ dataDir: null, initialTable, aggregator: 'subspace', trainBiases: false, trainRows: 20, serverLearningRate: 2 }), /options\.serverLearningRate: applies to the fedavg aggregator only \(aggregator is 'subspace'/);
    await assert.rejects(createServer({ dataDir: null, initialTable, aggregator: 'fedadam', serverLearningRate: 2 }), /options\.serverLearningRate: applies to the fedavg aggregator only \(aggregator is 'fedadam'/);
    const { app, storage } = await createServer({ dataDir: null, initialTable, aggregator: 'subspace', subspaceScale: 6, trainBiases: false, trainRows: 20, minClients: 2, rateLimit: false });
    try {
      const config = (await (await app.request('/v1/config')).json()) as { aggregator: string; subspaceScale: number };
      assert.equal(config.aggregator, 'subspace');
      assert.equal(config.subspaceScale, 6);
      const { decodeModel } = await import('../../src/federated/wire.js');
      const v0 = decodeModel(new Uint8Array(await (await app.request('/v1/model')).arrayBuffer())).table;
      assertIdentity(gram(v0.factors.subarray(0, 80), 20, 4, 6), 1e-5, 'version 0');
      assert.ok(v0.factors.subarray(80).every((x) => x === 0));
      // Two devices sync: a new version, again orthonormal, and each spent one release.
      const fetchApp = (url: string, init?: { method?: string; body?: Uint8Array; headers?: Record<string, string> }) => Promise.resolve(app.fetch(new Request(url, init as RequestInit)));
      for (const [s, items] of [
        [1, ['i0', 'i1', 'i2']],
        [2, ['i3', 'i1', 'i25']],
      ] as const) {
        const acc = new RdpAccountant();
        const r = await syncOnce({ serverUrl: 'http://127.0.0.1', fetch: fetchApp, accountant: acc, history: [{ itemIds: [...items], weights: items.map(() => 1) }], attempts: 1, train: { seed: s } });
        assert.equal(r.sent, true);
        assert.equal(acc.releases, 1);
      }
      const v1 = decodeModel(new Uint8Array(await (await app.request('/v1/model')).arrayBuffer())).table;
      assert.equal(v1.version, 1);
      assertIdentity(gram(v1.factors.subarray(0, 80), 20, 4, 6), 1e-5, 'version 1');
      assert.deepEqual(Array.from(v1.bias), Array.from(v0.bias), 'biases stay');
    } finally {
      await storage.close();
    }
  });

  it('learns the clusters with σ = 0, and with secure aggregation and noise it keeps the budget', async () => {
    const split = clusteredSplit();
    const o = { ...BASE, aggregator: 'subspace' as const, trainBiases: false, biasScale: 0.5, subspaceScale: 4 };
    const r = await simulate(split, { ...o, rounds: 4, clientsPerRound: 40, noiseMultiplier: 0, budget: Infinity });
    const pop = await evaluateModel(new PopularModel(), split, { k: 10, data: 'synthetic' });
    assert.equal(r.final.aggregator, 'subspace');
    assert.equal(r.final.subspaceScale, 4);
    assert.ok(r.final.hr > pop.hr + 0.2, `HR ${r.final.hr} vs popular ${pop.hr}`);
    assert.ok(r.final.hr > r.final.initialHr + 0.2, `HR ${r.final.hr} vs initial ${r.final.initialHr}`);
    const noisy = await simulate(split, { ...o, rounds: 2, clientsPerRound: 20, noiseMultiplier: 1, budget: 8, secureAggregation: true });
    assert.equal(noisy.final.updatesSent, 40);
    assert.equal(noisy.final.version, 4, 'one version per cohort of 10');
    // Two releases at σ = 1: μ = √2, exact ε at δ = 1e-5.
    const acc = new RdpAccountant();
    acc.record(1);
    acc.record(1);
    assert.ok(Math.abs(noisy.final.epsilonMax! - acc.epsilon(1e-5)) < 1e-4, `ε ${noisy.final.epsilonMax} vs ${acc.epsilon(1e-5)}`);
  });
});
