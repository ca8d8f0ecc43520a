// Levers for #4's MovieLens gap that cost no ε, measured and not kept (docs/FEDERATED.md, "Stop 29"):
// how the budget is split over the rounds, how the server combines and weights what it receives,
// and how a device weights its own history in its step.
//
// The shipped recipe: 100 rows × 8, T = 3 releases at σ = 1.0397 (ε = 8, δ = 1e-5), secure
// aggregation over all 610 devices, frozen biases 0.5·ln(1 + count), `--denoise directions`. As in
// bench/subspace-extension.ts, this is the protocol's arithmetic without the protocol (no
// quantization, no masks; the sum's noise N(0, σ²) per value as secure aggregation over all 610
// devices gives it), seeded noise (run r uses seed first-seed + r − 1 in every setting), all 610 test users,
// leave-one-out, scored as `localrec eval` scores a table.
//
//   node --import tsx bench/subspace-variants.ts [--runs 30] [--first-seed 1] [--only <text in the setting's name>]
//
// One JSON line per setting: its σ per release, ε of that schedule (exact Gaussian composition),
// HR@10 / NDCG@10 mean over the runs and the HR@10 standard deviation. ~1 s per run on 2 cores.
import { parseArgs } from 'node:util';
import { RdpAccountant, noiseForSyncs } from '../src/federated/dp.js';
import { alignTo, evaluateTable } from '../src/federated/simulate.js';
import { biasDirection, orthonormalColumns, shrinkDirections, subspaceTable, symmetricEigen } from '../src/federated/subspace.js';
import type { ItemTable } from '../src/model/item-table.js';
import { Random } from '../src/model/random.js';
import { loadMovieLens, subspaceStart, weighting } from './movielens-recipe.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '30' }, 'first-seed': { type: 'string', default: '1' }, only: { type: 'string' } } });
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 2) throw new Error(`--runs must be a whole number ≥ 2, got ${values.runs}`);
const firstSeed = Number(values['first-seed']);
if (!Number.isInteger(firstSeed) || firstSeed < 1) throw new Error(`--first-seed must be a whole number ≥ 1, got ${values['first-seed']}`);

const DIM = 8;
const TOP = 100;
const SCALE = 32;
const split = await loadMovieLens();
const { init, histories } = subspaceStart(split, DIM);
const part = { rows: TOP, biases: false };
const p = biasDirection(init, TOP);
const raters = new Float64Array(TOP);
for (const h of histories) for (const r of h) if (r < TOP) raters[r]++;

/**
 * How a device weights its history in its step: `recency` h and `every` n: a film's weight halves
 * (× h) every n films back from the newest; `inversePopularity` α: × raters^−α; `window` w: the
 * step is Σ over consecutive chunks of w films of a(aᵀQ) (co-occurrence within a chunk only), then
 * normalized as a whole.
 */
type DeviceWeights = { recency?: number; every?: number; inversePopularity?: number; window?: number };

/** Σ over devices of their step (norm 1 each) on the published factors `Q` (TOP × DIM). */
function step(Q: ArrayLike<number>, w: DeviceWeights): Float64Array {
  const colNorm = new Float64Array(DIM);
  for (let r = 0; r < TOP; r++) for (let k = 0; k < DIM; k++) colNorm[k] += Q[r * DIM + k]! ** 2;
  for (let k = 0; k < DIM; k++) colNorm[k] = colNorm[k]! > 0 ? 1 / Math.sqrt(colNorm[k]!) : 0;
  const sum = new Float64Array(TOP * DIM);
  for (const h of histories) {
    const U = new Float64Array(TOP * DIM);
    const chunk = w.window ?? h.length;
    for (let s = 0; s < h.length; s += chunk) {
      const a = new Map<number, number>();
      for (let i = s; i < Math.min(h.length, s + chunk); i++) {
        const r = h[i]!;
        if (r >= TOP) continue;
        let x = 1;
        if (w.recency !== undefined) x *= w.recency ** ((h.length - 1 - i) / (w.every ?? 1));
        if (w.inversePopularity !== undefined) x *= raters[r]! ** -w.inversePopularity;
        a.set(r, (a.get(r) ?? 0) + x);
      }
      const pk = new Float64Array(DIM);
      for (const [r, x] of a) for (let k = 0; k < DIM; k++) pk[k] += x * Q[r * DIM + k]! * colNorm[k]!;
      for (const [r, x] of a) for (let k = 0; k < DIM; k++) U[r * DIM + k] += x * pk[k]!;
    }
    let nn = 0;
    for (const x of U) nn += x * x;
    if (!(nn > 0)) continue;
    const inv = 1 / Math.sqrt(nn);
    for (let i = 0; i < U.length; i++) sum[i] += U[i]! * inv;
  }
  return sum;
}

function withFactors(F: ArrayLike<number>): ItemTable {
  const factors = new Float32Array(init.itemIds.length * DIM);
  for (let i = 0; i < TOP * DIM; i++) factors[i] = F[i]!;
  return { version: init.version, itemIds: init.itemIds, dim: DIM, factors, bias: init.bias };
}

/**
 * Rayleigh–Ritz over the last two releases: the basis spanned by both sums (16 columns), the
 * co-occurrence they estimate (Y_t ≈ A·Q_{t−1}) projected on it, its top 8 eigenvectors, scaled by
 * the last release's direction weights.
 */
function ritz(Ys: Float64Array[], Qs: Float64Array[], last: ItemTable & { directionWeights?: Float64Array }): ItemTable {
  const K = 2 * DIM;
  const cat = new Float64Array(TOP * K);
  Ys.slice(-2).forEach((Y, j) => {
    for (let r = 0; r < TOP; r++) for (let k = 0; k < DIM; k++) cat[r * K + j * DIM + k] = Y[r * DIM + k]!;
  });
  const B = orthonormalColumns(cat, TOP, K, p);
  const A = new Float64Array(TOP * TOP);
  Ys.slice(-2).forEach((Y, j) => {
    const Q = orthonormalColumns(Qs.slice(-2)[j]!, TOP, DIM);
    for (let a = 0; a < TOP; a++) {
      for (let b = 0; b < TOP; b++) {
        let x = 0;
        for (let k = 0; k < DIM; k++) x += Y[a * DIM + k]! * Q[b * DIM + k]!;
        A[a * TOP + b] += x / 2;
      }
    }
  });
  const H = new Float64Array(K * K);
  for (let i = 0; i < K; i++) {
    for (let j = 0; j < K; j++) {
      let x = 0;
      for (let a = 0; a < TOP; a++) for (let b = 0; b < TOP; b++) x += B[a * K + i]! * A[a * TOP + b]! * B[b * K + j]!;
      H[i * K + j] = x;
    }
  }
  for (let i = 0; i < K; i++) for (let j = 0; j < i; j++) H[i * K + j] = H[j * K + i] = (H[i * K + j]! + H[j * K + i]!) / 2;
  const { vectors } = symmetricEigen(H, K);
  const F = new Float64Array(TOP * DIM);
  for (let r = 0; r < TOP; r++) {
    for (let k = 0; k < DIM; k++) {
      let x = 0;
      for (let i = 0; i < K; i++) x += B[r * K + i]! * vectors[i * K + k]!;
      F[r * DIM + k] = SCALE * x * (last.directionWeights?.[k] ?? 1);
    }
  }
  return withFactors(F);
}

/** Each published direction × (its singular value above the noise, over their mean)^β. */
function eigenWeighted(table: ItemTable, Y: Float64Array, sigma: number, beta: number): ItemTable {
  const { directions } = shrinkDirections(Y, TOP, DIM, sigma * sigma, p);
  const edge = sigma * sigma * (Math.sqrt(TOP) + Math.sqrt(DIM)) ** 2;
  const sv = Array.from({ length: DIM }, (_, k) => {
    let l = 0;
    for (let r = 0; r < TOP; r++) l += directions[r * DIM + k]! ** 2;
    return Math.sqrt(Math.max(l - edge, 0));
  });
  const mean = sv.reduce((a, b) => a + b, 0) / DIM;
  const F = Float64Array.from(table.factors.subarray(0, TOP * DIM), (x, i) => x * (sv[i % DIM]! / mean) ** beta);
  return withFactors(F);
}

type Setting = { name: string; sigmas: number[]; device?: DeviceWeights; combine?: 'ritz'; beta?: number };

function train(seed: number, s: Setting): ItemTable {
  const rng = new Random(seed);
  let table: ItemTable & { directionWeights?: Float64Array } = subspaceTable(init, init.factors.subarray(0, TOP * DIM), part, SCALE);
  const Ys: Float64Array[] = [];
  const Qs: Float64Array[] = [];
  s.sigmas.forEach((sigma, t) => {
    const Q = Float64Array.from(table.factors.subarray(0, TOP * DIM));
    const Y = step(Q, s.device ?? {});
    for (let i = 0; i < Y.length; i++) Y[i] += sigma * rng.normal();
    Ys.push(Y);
    Qs.push(Q);
    table = subspaceTable(init, Y, part, SCALE, t + 2, sigma > 0 ? sigma * sigma : undefined);
  });
  if (s.combine === 'ritz') return ritz(Ys, Qs, table);
  if (s.beta !== undefined) return eigenWeighted(table, Ys.at(-1)!, s.sigmas.at(-1)!, s.beta);
  return table;
}

const MU2 = 3 / noiseForSyncs(3, 8, 1e-5, 8) ** 2;
const equal = (T: number) => Array<number>(T).fill(noiseForSyncs(T, 8));
/** σ per release with release t getting share s_t of 1/σ² (the budget's μ²), so ε = 8. */
const shares = (s: number[]) => s.map((x) => Math.sqrt(s.reduce((a, b) => a + b, 0) / (x * MU2)));
const shipped = equal(3);
const noiseless = [0, 0, 0];
const settings: Setting[] = [
  { name: 'shipped: T = 3, equal σ', sigmas: shipped },
  { name: 'T = 2, equal σ', sigmas: equal(2) },
  { name: 'T = 4, equal σ', sigmas: equal(4) },
  { name: 'T = 5, equal σ', sigmas: equal(5) },
  { name: 'T = 6, equal σ', sigmas: equal(6) },
  { name: 'T = 3, budget 1:1:2', sigmas: shares([1, 1, 2]) },
  { name: 'T = 3, budget 1:2:3', sigmas: shares([1, 2, 3]) },
  { name: 'T = 3, budget 2:1:1', sigmas: shares([2, 1, 1]) },
  { name: 'T = 4, budget 1:1:1:3', sigmas: shares([1, 1, 1, 3]) },
  { name: 'Rayleigh–Ritz over the last two releases', sigmas: shipped, combine: 'ritz' },
  { name: 'directions × singular value^0.5', sigmas: shipped, beta: 0.5 },
  { name: 'directions × singular value^1', sigmas: shipped, beta: 1 },
  { name: 'directions × singular value^−0.5', sigmas: shipped, beta: -0.5 },
];
const devices: Array<[string, DeviceWeights]> = [
  ['recency: half every 10 films', { recency: 0.5, every: 10 }],
  ['recency: half every 5 films', { recency: 0.5, every: 5 }],
  ['recency: half every 20 films', { recency: 0.5, every: 20 }],
  ['recency: quarter every 10 films', { recency: 0.25, every: 10 }],
  ['inverse popularity^0.25', { inversePopularity: 0.25 }],
  ['inverse popularity^0.5', { inversePopularity: 0.5 }],
  ['chunks of 10 films', { window: 10 }],
  ['chunks of 25 films', { window: 25 }],
  ['chunks of 50 films', { window: 50 }],
];
settings.push({ name: 'shipped, no noise', sigmas: noiseless });
for (const [name, device] of devices) {
  settings.push({ name: `device ${name}, no noise`, sigmas: noiseless, device });
  settings.push({ name: `device ${name}`, sigmas: shipped, device });
}

for (const s of settings) {
  if (values.only && !s.name.includes(values.only)) continue;
  const noisy = s.sigmas.some((x) => x > 0);
  const n = noisy ? runs : 1;
  const hrs: number[] = [];
  let ndcg = 0;
  for (let seed = firstSeed; seed < firstSeed + n; seed++) {
    const r = await evaluateTable(alignTo(train(seed, s), split.itemIds), split, { weighting });
    hrs.push(r.hr);
    ndcg += r.ndcg / n;
  }
  const hr = hrs.reduce((a, b) => a + b, 0) / n;
  const sd = n > 1 ? Math.sqrt(hrs.reduce((a, b) => a + (b - hr) ** 2, 0) / (n - 1)) : 0;
  let epsilon: number | null = null;
  if (noisy) {
    const acc = new RdpAccountant();
    for (const sigma of s.sigmas) acc.record(sigma);
    epsilon = Number(acc.epsilon(1e-5).toFixed(3));
  }
  console.log(JSON.stringify({ setting: s.name, sigmas: s.sigmas.map((x) => Number(x.toFixed(4))), epsilon, runs: n, hr: Number(hr.toFixed(4)), ndcg: Number(ndcg.toFixed(4)), hrSd: Number(sd.toFixed(4)) }));
}
