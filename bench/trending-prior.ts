// A public "trending" prior on MovieLens (docs/FEDERATED.md, "Stop 21"): what the shop's own recent
// counts add to the federated recipe and to the same model trained centrally.
//
// Each user is scored as of their last training event t: `bias + V·z` (the `localrec eval` scoring)
// plus w·ln(1 + c), c the other users' training events of the item in the W days up to t (what a
// shop publishes as its recent bestsellers; nothing of the user's own). The same term is added to
// the centrally trained model (dim 8, 4 epochs, seed 1) and to the federated recipe of "Where it
// stands" (100 rows × 8, T = 3, σ = 1.0397 for ε = 8, secure aggregation over all 610 devices,
// `--denoise directions`), one fresh noise draw per run. Prints one JSON line per (model, run) with
// HR@10 / NDCG@10 without the term and with each (W, w) of the grid.
//
//   node --import tsx bench/trending-prior.ts [--runs 5]
//
// ~40 s per federated run and ~30 s for the central model on 2 cores. Not part of `npm test`.
import { parseArgs } from 'node:util';
import { loadCsv } from '../src/eval/csv-loader.js';
import type { EvalModel } from '../src/eval/eval-model.js';
import { looSplit } from '../src/eval/loo-split.js';
import { evaluateModel } from '../src/eval/runner.js';
import type { Split } from '../src/eval/split.js';
import { noiseForSyncs } from '../src/federated/dp.js';
import { alignTo, centralModel, simulate, TableModel } from '../src/federated/simulate.js';
import type { ItemTable } from '../src/model/item-table.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' } } });
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a whole number ≥ 1, got ${values.runs}`);

const GRID: Array<[days: number, weight: number]> = [
  [7, 0.5],
  [7, 1],
  [30, 1],
];
const split = looSplit(await loadCsv('../shared/data/ml-latest-small/ratings.csv', { user: 'userId', item: 'movieId', time: 'timestamp' }));
const weighting = { recencyDecay: 0.5, confidence: 'none' as const };
const n = split.itemIds.length;

// Every training event in time order, for the counts in a window.
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
/** ln(1 + other users' events of each item in the `days` up to user u's last training event). */
function trending(u: number, days: number): Float32Array {
  const t = te.time[te.ptr[u + 1]! - 1]!;
  const c = new Float32Array(n);
  for (let k = firstAtOrAfter(t - days * 86_400); k < firstAtOrAfter(t + 1); k++) if (events[k]!.user !== u) c[events[k]!.item]!++;
  for (let i = 0; i < n; i++) c[i] = Math.log1p(c[i]!);
  return c;
}
const trendCache = new Map<string, Float32Array>();

/** The table's `localrec eval` scoring (`TableModel`) plus w·ln(1 + the W-day count) per item. */
class TrendingModel implements EvalModel {
  readonly name = 'trending';
  readonly bytesPerItem = 0;
  private readonly inner: TableModel;
  constructor(table: ItemTable, private readonly days: number, private readonly weight: number) {
    this.inner = new TableModel(table, weighting);
  }
  fit(s: Split): void {
    this.inner.fit(s);
  }
  score(u: number, out: Float32Array): void {
    this.inner.score(u, out);
    if (this.weight === 0) return;
    const key = `${u}:${this.days}`;
    const tr = trendCache.get(key) ?? trending(u, this.days);
    trendCache.set(key, tr);
    for (let j = 0; j < n; j++) out[j]! += this.weight * tr[j]!;
  }
}

async function evaluate(table: ItemTable, days: number, weight: number): Promise<{ hr: number; ndcg: number }> {
  const r = await evaluateModel(new TrendingModel(table, days, weight), split, { k: 10, data: 'ml-latest-small' });
  const round = (x: number) => Math.round(x * 1e4) / 1e4;
  return { hr: round(r.hr), ndcg: round(r.ndcg) };
}

async function line(model: string, run: number, table: ItemTable): Promise<void> {
  const out: Record<string, unknown> = { model, run, plain: await evaluate(table, 0, 0) };
  for (const [days, weight] of GRID) out[`trend${days}d_w${weight}`] = await evaluate(table, days, weight);
  console.log(JSON.stringify(out));
}

const central = await centralModel({ dim: 8, seed: 1, epochs: 4, weighting, temperature: 1, backend: 'wasm' });
await central.fit(split, () => {});
await line('central', 0, central.trainedTable!);
const noiseMultiplier = noiseForSyncs(3, 8);
for (let run = 1; run <= runs; run++) {
  const sim = await simulate(split, {
    rounds: 3, clientsPerRound: 610, minClients: 610, clip: 1, noiseMultiplier, budget: 8, dim: 8, seed: 1, aggregator: 'subspace', subspaceScale: 32,
    secureAggregation: true, evalEvery: 3, trainRows: 100, trainBiases: false, biasScale: 0.5, denoise: 'directions', weighting, data: 'ml-latest-small',
  });
  await line(`federated (ε ${sim.final.epsilonMax}, σ ${noiseMultiplier})`, run, alignTo(sim.table, split.itemIds));
}
