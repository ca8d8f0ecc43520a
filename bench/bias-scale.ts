// Why `--freeze-biases` wants `--bias-scale`: trains the central factors model (dim 16, 4 epochs,
// wasm; `localrec eval`'s `factors`), fits its learned biases against ln(1 + training count), then
// scores the same factors with the biases replaced by what a server with frozen biases would serve:
// the default ln(1 + count) / max, or a·ln(1 + count). Lines with `tail: random` put the factors past the
// 1,000 most popular items back to their initial values, as `--train-rows 1000` leaves them.
// Run: node --import tsx bench/bias-scale.ts [retail|ml]   (2–4 minutes on 2 cores; prints JSON lines)
import { loadCsv } from '../src/eval/csv-loader.js';
import { csvMappingFromFlags, PRESETS } from '../src/eval/presets.js';
import { looSplit } from '../src/eval/loo-split.js';
import { cloneItemTable, createItemTable, type ItemTable } from '../src/model/item-table.js';
import { catalogOf, centralModel, evaluateTable, trainPopularity } from '../src/federated/simulate.js';

const which = process.argv[2] ?? 'retail';
if (which !== 'retail' && which !== 'ml') throw new Error(`data set must be retail or ml, got '${which}'`);
const split = looSplit(
  which === 'ml'
    ? await loadCsv('../shared/data/ml-latest-small/ratings.csv', csvMappingFromFlags('csv', { user: 'userId', item: 'movieId', time: 'timestamp', filter: [] }))
    : await loadCsv('../shared/data/online-retail/online-retail.csv.gz', PRESETS.retail),
);
const weighting = { recencyDecay: 0.5, confidence: 'none' } as const;
const dim = 16;
const model = await centralModel({ dim, epochs: 4, temperature: 1, backend: 'wasm', seed: 1, weighting });
await model.fit(split, () => {});
const central = model.trainedTable!;

// Least squares: learned bias ≈ slope·ln(1 + count) + intercept.
const pop = trainPopularity(split);
const x = Array.from(pop, (c) => Math.log1p(c));
const y = Array.from(central.bias);
const n = x.length;
const mx = x.reduce((a, b) => a + b, 0) / n;
const my = y.reduce((a, b) => a + b, 0) / n;
let sxy = 0;
let sxx = 0;
let syy = 0;
for (let i = 0; i < n; i++) {
  sxy += (x[i]! - mx) * (y[i]! - my);
  sxx += (x[i]! - mx) ** 2;
  syy += (y[i]! - my) ** 2;
}
const slope = sxy / sxx;
console.log(JSON.stringify({ data: which, fit: 'learned bias ~ ln(1 + count)', slope: +slope.toFixed(3), intercept: +(my - slope * mx).toFixed(3), r2: +((sxy * sxy) / (sxx * syy)).toFixed(3) }));

const score = async (t: ItemTable) => evaluateTable(t, split, { weighting });
const init = createItemTable(split.itemIds, dim, { seed: 1, popularity: pop });
const top = new Set(catalogOf(split).items.slice(0, 1000).map((it) => split.itemIds.indexOf(it.id)));
for (const a of ['learned', null, 0.25, 0.5, 1] as const) {
  for (const tail of ['learned', 'random'] as const) {
    const t = cloneItemTable(central);
    for (let i = 0; i < n; i++) {
      if (a !== 'learned') t.bias[i] = a === null ? init.bias[i]! : a * x[i]!;
      if (tail === 'random' && !top.has(i)) t.factors.set(init.factors.subarray(i * dim, i * dim + dim), i * dim);
    }
    const m = await score(t);
    console.log(JSON.stringify({ biases: a === 'learned' ? 'learned' : a === null ? 'ln(1 + count) / max' : `${a}·ln(1 + count)`, tail, hr: m.hr, ndcg: m.ndcg }));
  }
}
