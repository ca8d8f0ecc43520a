// Two device-side levers for #4's MovieLens gap that cost no privacy budget, both measured on the
// shipped federated recipe (docs/FEDERATED.md, "Stop 26"); neither is kept.
//
// The recipe trains factors for the 100 most-rated films only; the other 9,624 keep a zero factor
// (scored by their popularity bias alone) and dilute a user's vector z, the weighted mean of the
// history's factors. Per noise draw this prints HR@10 / NDCG@10 (all 610 test users, leave-one-out,
// scored as `localrec eval` scores a table) for:
//
//   shipped:          the table as published: bias + V·z;
//   genres-a{α}[-year]: every untrained film gets α × the similarity-weighted mean of the trained
//                     films' factors, similarity = (cosine of the public genre lists of movies.csv,
//                     plus a release-decade indicator with -year)⁴ — used for z and for scoring;
//   genres-z-a{α}[-year]: the same factors used only to form z; untrained films still scored by bias;
//   z-trained-c{c}:   z averaged over the history's trained films only (not diluted by the rest),
//                     times c; z-shipped-c{c}: the shipped z times c (how much z's scale matters).
//
//   node --import tsx bench/side-info-movielens.ts [--runs 3]
//
// ~40 s per run on 2 cores (one federated training each). Not part of `npm test`.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parse } from 'csv-parse/sync';
import { weightedHistory } from '../src/eval/history-weighting.js';
import { rankMetrics } from '../src/eval/metrics.js';
import { topK } from '../src/eval/top-k.js';
import type { ItemTable } from '../src/model/item-table.js';
import { loadMovieLens, trainFederated, weighting } from './movielens-recipe.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' } } });
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a whole number ≥ 1, got ${values.runs}`);

const split = await loadMovieLens();
const n = split.itemIds.length;

// Public catalog metadata: genres and the release year in the title.
const rows = parse(readFileSync('../shared/data/ml-latest-small/movies.csv'), { columns: true }) as { movieId: string; title: string; genres: string }[];
const meta = new Map(rows.map((r) => [r.movieId, { genres: r.genres.split('|'), year: Number(/\((\d{4})\)\s*$/.exec(r.title.trim())?.[1]) }]));
const genreList = [...new Set(rows.flatMap((r) => r.genres.split('|')))];
function features(id: string, withYear: boolean): Float64Array {
  const f = new Float64Array(genreList.length + 6);
  const m = meta.get(id);
  if (!m) return f;
  for (const g of m.genres) f[genreList.indexOf(g)] = 1 / Math.sqrt(m.genres.length);
  if (withYear && Number.isFinite(m.year)) f[genreList.length + Math.min(5, Math.max(0, Math.floor((m.year - 1960) / 10)))] = 1;
  return f;
}
function cosine(a: Float64Array, b: Float64Array): number {
  let dot = 0, na = 0, nb = 0;
  for (let q = 0; q < a.length; q++) { dot += a[q]! * b[q]!; na += a[q]! ** 2; nb += b[q]! ** 2; }
  return dot > 0 ? dot / Math.sqrt(na * nb) : 0;
}
const trainedRows = (t: ItemTable) => Array.from({ length: n }, (_, j) => j).filter((j) => t.factors.subarray(j * t.dim, (j + 1) * t.dim).some((x) => x !== 0));

/** The table with every untrained film given α × its genre neighbours' mean factor. */
function extrapolated(t: ItemTable, alpha: number, withYear: boolean): ItemTable {
  const d = t.dim;
  const trained = trainedRows(t);
  const isTrained = new Set(trained);
  const tf = trained.map((j) => features(t.itemIds[j]!, withYear));
  const factors = Float32Array.from(t.factors);
  for (let i = 0; i < n; i++) {
    if (isTrained.has(i)) continue;
    const fi = features(t.itemIds[i]!, withYear);
    const acc = new Float64Array(d);
    let ws = 0;
    trained.forEach((j, a) => {
      const w = cosine(fi, tf[a]!) ** 4;
      ws += w;
      for (let k = 0; k < d; k++) acc[k] += w * t.factors[j * d + k]!;
    });
    if (ws > 0) for (let k = 0; k < d; k++) factors[i * d + k] = (alpha * acc[k]!) / ws;
  }
  return { ...t, factors };
}

/** HR@10 / NDCG@10: `zTable` forms z, `table` scores; `onlyTrained` averages z over trained films. */
function evaluate(table: ItemTable, o: { zTable?: ItemTable; scoreUntrainedByBias?: boolean; onlyTrained?: boolean; c?: number } = {}): string {
  const zt = o.zTable ?? table;
  const d = table.dim;
  const trained = new Set(trainedRows(table));
  const { ptr, items } = split.train;
  const scores = new Float32Array(n);
  let hr = 0, ndcg = 0;
  for (const u of split.testUsers) {
    const h = weightedHistory(split.train, u, weighting);
    const z = new Float64Array(d);
    let ws = 0;
    h.items.forEach((row, e) => {
      const w = h.weights[e]!;
      if (!(w > 0) || (o.onlyTrained && !trained.has(row))) return;
      ws += w;
      for (let k = 0; k < d; k++) z[k] += w * zt.factors[row * d + k]!;
    });
    const scale = (o.c ?? 1) / (ws || 1);
    const st = o.scoreUntrainedByBias ? table : zt;
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += st.factors[j * d + k]! * z[k]!;
      scores[j] = table.bias[j]! + s * scale;
    }
    for (let e = ptr[u]!; e < ptr[u + 1]!; e++) scores[items[e]!] = -Infinity;
    const m = rankMetrics(topK(scores, 10), new Set(split.test.items.subarray(split.test.ptr[u]!, split.test.ptr[u + 1]!)), 10);
    hr += m.hr;
    ndcg += m.ndcg;
  }
  const users = split.testUsers.length;
  return `${(hr / users).toFixed(4)} / ${(ndcg / users).toFixed(4)}`;
}

for (let run = 1; run <= runs; run++) {
  const { table, epsilon } = await trainFederated(split);
  const line: Record<string, unknown> = { run, epsilon, shipped: evaluate(table) };
  for (const [alpha, year] of [[0.5, false], [1, false], [1, true]] as const) {
    const ext = extrapolated(table, alpha, year);
    const tag = `a${alpha}${year ? '-year' : ''}`;
    line[`genres-${tag}`] = evaluate(ext);
    line[`genres-z-${tag}`] = evaluate(table, { zTable: ext, scoreUntrainedByBias: true });
  }
  for (const c of [0.5, 1]) line[`z-trained-c${c}`] = evaluate(table, { onlyTrained: true, c });
  for (const c of [0.5, 1.5]) line[`z-shipped-c${c}`] = evaluate(table, { c });
  console.log(JSON.stringify(line));
}
