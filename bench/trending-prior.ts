// A public "trending" prior on MovieLens (docs/FEDERATED.md, "Stop 21" and "Stop 22"): what the
// shop's own recent counts add to the federated recipe and to the same model trained centrally,
// with the prior's shape chosen on a validation split, per model, before the test users are read.
//
// Each user is scored as of their last training event t: `bias + V·z` (the `localrec eval` scoring)
// plus w·ln(1 + c), c the other users' training events of the item in the W days up to t (what a
// shop publishes as its recent bestsellers; nothing of the user's own). The same term is added to
// the centrally trained model (dim 8, 4 epochs) and to the federated recipe of "Where it stands"
// (100 rows × 8, T = 3, σ = 1.0397 for ε = 8, secure aggregation over all 610 devices,
// `--denoise directions`).
//
// Protocol: the validation split holds out each user's last training item (the test item is never
// read): both models are trained on what is left, and each model's (W, w) — "none" included — is
// the one with the highest mean validation HR@10 (then NDCG@10) over its runs. Then both are
// trained on the full training split and read on the test items at the chosen (W, w). Central
// runs use seeds 1..R, federated runs one fresh noise draw each.
//
// Prints one JSON line per (split, model, run) with HR@10 / NDCG@10 at every grid point, then a
// summary line: each model's choice, its test means, and federated ÷ central.
//
//   node --import tsx bench/trending-prior.ts [--runs 5] [--grid trending|scale]
//
// `--grid scale` ("Stop 26") runs the same protocol over the factors' weight instead of a prior:
// `bias + c·V·z` for c ∈ {0.25, 0.5, 0.75, 1 ("none"), 1.5, 2}, how much personalization counts
// against popularity, chosen per model on validation.
//
// ~40 s per federated run and ~30 s per central run on 2 cores (4 runs per R). Not part of `npm test`.
import { parseArgs } from 'node:util';
import type { EvalModel } from '../src/eval/eval-model.js';
import { evaluateModel } from '../src/eval/runner.js';
import type { Split } from '../src/eval/split.js';
import { TableModel } from '../src/federated/simulate.js';
import type { ItemTable } from '../src/model/item-table.js';
import { loadMovieLens, noiseMultiplier, trainCentral, trainFederated, validationSplit, weighting } from './movielens-recipe.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' }, grid: { type: 'string', default: 'trending' } } });
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a whole number ≥ 1, got ${values.runs}`);
if (values.grid !== 'trending' && values.grid !== 'scale') throw new Error(`--grid must be trending or scale, got ${values.grid}`);

/** One setting: the prior's window and weight, and the factors' weight c. */
type Setting = { days: number; weight: number; scale: number };
const DAYS = [3, 7, 14, 30];
const WEIGHTS = [0.25, 0.5, 1, 1.5];
const GRID: Setting[] =
  values.grid === 'scale'
    ? [1, 0.25, 0.5, 0.75, 1.5, 2].map((scale) => ({ days: 0, weight: 0, scale }))
    : [{ days: 0, weight: 0, scale: 1 }, ...DAYS.flatMap((days) => WEIGHTS.map((weight) => ({ days, weight, scale: 1 })))];
const key = ({ days, weight, scale }: Setting) => (weight === 0 ? (scale === 1 ? 'none' : `c${scale}`) : `${days}d_w${weight}`);

const testSplit = await loadMovieLens();
const valSplit = validationSplit(testSplit);
const n = testSplit.itemIds.length;

/** ln(1 + other users' training events of each item in the `days` up to each user's last training event), per user. */
function trendingFor(split: Split): (u: number, days: number) => Float32Array {
  const te = split.trainEvents;
  const events: Array<{ t: number; item: number; user: number }> = [];
  for (let u = 0; u + 1 < te.ptr.length; u++) for (let e = te.ptr[u]!; e < te.ptr[u + 1]!; e++) events.push({ t: te.time[e]!, item: te.items[e]!, user: u });
  events.sort((a, b) => a.t - b.t);
  const firstAtOrAfter = (t: number): number => {
    let lo = 0;
    let hi = events.length;
    while (lo < hi) {
      const m = (lo + hi) >> 1;
      if (events[m]!.t < t) lo = m + 1;
      else hi = m;
    }
    return lo;
  };
  const cache = new Map<string, Float32Array>();
  return (u, days) => {
    const k = `${u}:${days}`;
    const hit = cache.get(k);
    if (hit) return hit;
    const t = te.time[te.ptr[u + 1]! - 1]!;
    const c = new Float32Array(n);
    for (let e = firstAtOrAfter(t - days * 86_400); e < firstAtOrAfter(t + 1); e++) if (events[e]!.user !== u) c[events[e]!.item]!++;
    for (let i = 0; i < n; i++) c[i] = Math.log1p(c[i]!);
    cache.set(k, c);
    return c;
  };
}
const trending = new Map<Split, (u: number, days: number) => Float32Array>([
  [testSplit, trendingFor(testSplit)],
  [valSplit, trendingFor(valSplit)],
]);

/** The table's `localrec eval` scoring (`TableModel`, the factors weighted c) plus w·ln(1 + the W-day count) per item. */
class TrendingModel implements EvalModel {
  readonly name = 'trending';
  readonly bytesPerItem = 0;
  private readonly inner: TableModel;
  private trend: (u: number, days: number) => Float32Array = () => new Float32Array(n);
  private readonly days: number;
  private readonly weight: number;
  constructor(table: ItemTable, s: Setting) {
    this.days = s.days;
    this.weight = s.weight;
    // TableModel divides the factors' term by its temperature.
    this.inner = new TableModel(table, weighting, 1 / s.scale);
  }
  fit(s: Split): void {
    this.inner.fit(s);
    this.trend = trending.get(s)!;
  }
  score(u: number, out: Float32Array): void {
    this.inner.score(u, out);
    if (this.weight === 0) return;
    const tr = this.trend(u, this.days);
    for (let j = 0; j < n; j++) out[j]! += this.weight * tr[j]!;
  }
}

type Metrics = { hr: number; ndcg: number };
const round = (x: number) => Math.round(x * 1e4) / 1e4;
/** Every grid point for one trained table on one split; prints the line and returns the figures. */
async function line(splitName: string, split: Split, model: string, run: number, table: ItemTable): Promise<Map<string, Metrics>> {
  const got = new Map<string, Metrics>();
  for (const setting of GRID) {
    const r = await evaluateModel(new TrendingModel(table, setting), split, { k: 10, data: 'ml-latest-small' });
    got.set(key(setting), { hr: r.hr, ndcg: r.ndcg });
  }
  console.log(JSON.stringify({ split: splitName, model, run, ...Object.fromEntries([...got].map(([k, m]) => [k, { hr: round(m.hr), ndcg: round(m.ndcg) }])) }));
  return got;
}

const MODELS = { central: (s: Split, run: number) => trainCentral(s, run), federated: async (s: Split) => (await trainFederated(s)).table };
const mean = (xs: Array<Map<string, Metrics>>, k: string): Metrics => ({
  hr: xs.reduce((a, m) => a + m.get(k)!.hr, 0) / xs.length,
  ndcg: xs.reduce((a, m) => a + m.get(k)!.ndcg, 0) / xs.length,
});
const summary: Record<string, { choice: string; validation: Metrics; test: Metrics; testNone: Metrics }> = {};
for (const [name, train] of Object.entries(MODELS)) {
  const val: Array<Map<string, Metrics>> = [];
  for (let run = 1; run <= runs; run++) val.push(await line('validation', valSplit, name, run, await train(valSplit, run)));
  let choice = 'none';
  for (const setting of GRID) {
    const k = key(setting);
    const a = mean(val, k);
    const b = mean(val, choice);
    if (a.hr > b.hr || (a.hr === b.hr && a.ndcg > b.ndcg)) choice = k;
  }
  const test: Array<Map<string, Metrics>> = [];
  for (let run = 1; run <= runs; run++) test.push(await line('test', testSplit, name, run, await train(testSplit, run)));
  const r = (m: Metrics) => ({ hr: round(m.hr), ndcg: round(m.ndcg) });
  summary[name] = { choice, validation: r(mean(val, choice)), test: r(mean(test, choice)), testNone: r(mean(test, 'none')) };
}
const f = summary.federated!;
const c = summary.central!;
console.log(JSON.stringify({
  summary,
  ratio: { hr: round(f.test.hr / c.test.hr), ndcg: round(f.test.ndcg / c.test.ndcg) },
  ratioToCentralWithoutPrior: { hr: round(f.test.hr / c.testNone.hr), ndcg: round(f.test.ndcg / c.testNone.ndcg) },
  epsilon: 8, noiseMultiplier, runs,
}));
