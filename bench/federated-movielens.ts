// #4's MovieLens comparison with its run-to-run spread (docs/FEDERATED.md, "Stop 22"): the shipped
// federated recipe against the same model trained centrally, each averaged over many runs, with a
// bootstrap interval for federated ÷ central.
//
// Federated: the recipe of "Where it stands" (100 rows × 8, T = 3, σ = 1.0397 for ε = 8, secure
// aggregation over all 610 devices, frozen biases 0.5·ln(1 + count), `--denoise directions`), one
// fresh noise draw per run (`crypto.getRandomValues`). Central: `localrec eval`'s `factors` model,
// dim 8, `--epochs` epochs (4, the reference of every earlier stop), seeds 1..R. Both are scored as
// `localrec eval` scores them (`TableModel`), on all 610 test users, leave-one-out. `--rounds T`:
// the federated recipe with T releases at the σ that spends ε = 8 in them (stop 29: T = 4).
//
// Prints one JSON line per run (HR@10 / NDCG@10), then a summary: each side's mean, the standard
// deviation of its runs, and federated ÷ central of the means with a 95 % percentile bootstrap
// interval that resamples both the runs (each side) and the test users (paired: the same users
// for both sides), 2,000 resamples.
//
//   node --import tsx bench/federated-movielens.ts [--central-runs 10] [--federated-runs 10] [--epochs 4] [--same-time keep|drop] [--rounds 3]
//   npm run bench:movielens -- --central-runs 20 --federated-runs 20
//
// ~25 s per central run and ~40 s per federated run on 2 cores. Not part of `npm test`.
import { parseArgs } from 'node:util';
import { rankMetrics } from '../src/eval/metrics.js';
import { topK } from '../src/eval/top-k.js';
import { TableModel } from '../src/federated/simulate.js';
import type { ItemTable } from '../src/model/item-table.js';
import { noiseForSyncs } from '../src/federated/dp.js';
import { loadMovieLens, trainCentral, trainFederated, weighting } from './movielens-recipe.js';

const { values } = parseArgs({
  options: {
    'central-runs': { type: 'string', default: '10' },
    'federated-runs': { type: 'string', default: '10' },
    epochs: { type: 'string', default: '4' },
    'same-time': { type: 'string', default: 'keep' },
    rounds: { type: 'string', default: '3' },
  },
});
function whole(flag: string, min: number): number {
  const v = Number(values[flag as keyof typeof values]);
  if (!Number.isInteger(v) || v < min) throw new Error(`--${flag} must be a whole number ≥ ${min}, got ${values[flag as keyof typeof values]}`);
  return v;
}
const centralRuns = whole('central-runs', 0);
const federatedRuns = whole('federated-runs', 0);
const epochs = whole('epochs', 1);
const rounds = whole('rounds', 1);
const noiseMultiplier = noiseForSyncs(rounds, 8);

const sameTime = values['same-time'];
if (sameTime !== 'keep' && sameTime !== 'drop') throw new Error(`--same-time must be keep or drop, got ${sameTime}`);
const split = await loadMovieLens(sameTime);
const n = split.itemIds.length;
const users = split.testUsers;

/** Per test user HR@10 and NDCG@10 of a table, scored as `localrec eval` scores it. */
function perUser(table: ItemTable): { hr: Float64Array; ndcg: Float64Array } {
  const model = new TableModel(table, weighting);
  model.fit(split);
  const hr = new Float64Array(users.length);
  const ndcg = new Float64Array(users.length);
  const scores = new Float32Array(n);
  const { ptr, items } = split.train;
  users.forEach((u, t) => {
    scores.fill(0);
    model.score(u, scores);
    for (let e = ptr[u]!; e < ptr[u + 1]!; e++) scores[items[e]!] = -Infinity;
    const m = rankMetrics(topK(scores, 10), new Set(split.test.items.subarray(split.test.ptr[u]!, split.test.ptr[u + 1]!)), 10);
    hr[t] = m.hr;
    ndcg[t] = m.ndcg;
  });
  return { hr, ndcg };
}
const mean = (xs: ArrayLike<number>) => {
  let sum = 0;
  for (let i = 0; i < xs.length; i++) sum += xs[i]!;
  return sum / xs.length;
};
const round = (x: number) => Math.round(x * 1e4) / 1e4;

type Run = { hr: Float64Array; ndcg: Float64Array };
const central: Run[] = [];
for (let seed = 1; seed <= centralRuns; seed++) {
  const r = perUser(await trainCentral(split, seed, epochs));
  central.push(r);
  console.log(JSON.stringify({ model: 'central', dim: 8, epochs, seed, hr: round(mean(r.hr)), ndcg: round(mean(r.ndcg)) }));
}
const federated: Run[] = [];
for (let run = 1; run <= federatedRuns; run++) {
  const sim = await trainFederated(split, rounds);
  const r = perUser(sim.table);
  federated.push(r);
  console.log(JSON.stringify({ model: 'federated', run, epsilon: sim.epsilon, noiseMultiplier, hr: round(mean(r.hr)), ndcg: round(mean(r.ndcg)) }));
}

// Deterministic resampling (mulberry32), so the interval is the same for the same runs.
let state = 0x2545f491;
const rand = () => {
  state = (state + 0x6d2b79f5) | 0;
  let t = Math.imul(state ^ (state >>> 15), 1 | state);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const pick = (k: number) => Math.floor(rand() * k);
function summary(metric: 'hr' | 'ndcg') {
  const runMeans = (rs: Run[]) => rs.map((r) => mean(r[metric]));
  const c = runMeans(central);
  const f = runMeans(federated);
  const sd = (xs: number[]) => Math.sqrt(xs.reduce((a, x) => a + (x - mean(xs)) ** 2, 0) / Math.max(xs.length - 1, 1));
  const ratios: number[] = [];
  for (let b = 0; b < 2000; b++) {
    const cr = Array.from(central, () => central[pick(central.length)]![metric]);
    const fr = Array.from(federated, () => federated[pick(federated.length)]![metric]);
    let cs = 0;
    let fs = 0;
    for (let i = 0; i < users.length; i++) {
      const t = pick(users.length);
      for (const r of cr) cs += r[t]!;
      for (const r of fr) fs += r[t]!;
    }
    ratios.push(fs / fr.length / (cs / cr.length));
  }
  ratios.sort((a, b) => a - b);
  return {
    central: { mean: round(mean(c)), sd: round(sd(c)), min: round(Math.min(...c)), max: round(Math.max(...c)) },
    federated: { mean: round(mean(f)), sd: round(sd(f)), min: round(Math.min(...f)), max: round(Math.max(...f)) },
    ratio: Math.round((mean(f) / mean(c)) * 1000) / 1000,
    ratio95: [Math.round(ratios[49]! * 1000) / 1000, Math.round(ratios[1949]! * 1000) / 1000],
  };
}
// (One side alone, e.g. `--federated-runs 0` to compare central settings: its lines are the result.)
if (centralRuns > 0 && federatedRuns > 0) console.log(JSON.stringify({ summary: true, testUsers: users.length, sameTime, centralRuns, federatedRuns, epochs, rounds, epsilon: 8, noiseMultiplier, hr: summary('hr'), ndcg: summary('ndcg') }));
