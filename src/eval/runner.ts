/**
 * Runs one model over a split: fit, then for every test user score all items, mask the user's
 * training items, take the top k and accumulate the metrics. Full ranking, no sampled negatives.
 */
import type { EvalModel } from './eval-model.js';
import { MetricsAccumulator } from './metrics.js';
import { trainUserCount, type Split } from './split.js';
import { topK } from './top-k.js';

/** One JSON line of `localrec eval` output. */
export interface EvalResult {
  model: string;
  data: string;
  users: number;
  items: number;
  testUsers: number;
  k: number;
  hr: number;
  ndcg: number;
  recall: number;
  coverage: number;
  /** Fit plus scoring, wall-clock milliseconds. */
  ms: number;
  bytesPerItem: number;
  /** Model settings (hyper-parameters) that produced this line. */
  params?: Record<string, unknown>;
  /** The protocol settings that produced this line (`localrec eval` sets them): `--format`. */
  format?: string;
  /** `--protocol`: `loo` (leave-one-out on event data) or `given` (a train/test split). */
  protocol?: string;
  /** loo: events at the held-out item's time before it in file order, `keep` (the default) or `drop`; null under `given`. */
  sameTime?: string | null;
  /** `--seed` of the models that sample. */
  seed?: number;
  /** The time column read (null: the file order, or `--format lines`) and the weight column (null: every row weighs 1). */
  timeColumn?: string | null;
  weightColumn?: string | null;
  /** The `--filter` clauses as given (the retail preset's own filters come with `format`). */
  filters?: string[];
}

/**
 * @example
 * ```ts
 * const r = await evaluateModel(new PopularModel(), split, { k: 10, data: 'ratings.csv' });
 * r.hr; // HR@10 over the test users
 * ```
 */
export async function evaluateModel(
  model: EvalModel,
  split: Split,
  o: { k: number; data: string; onProgress?: (stage: string, fraction: number) => void },
): Promise<EvalResult> {
  const t0 = performance.now();
  const report = o.onProgress ?? (() => {});
  await model.fit(split, (f) => report(`${model.name} fit`, f));
  report(`${model.name} fit`, 1);
  const n = split.itemIds.length;
  const scores = new Float32Array(n);
  const acc = new MetricsAccumulator(n, o.k);
  const { ptr, items } = split.train;
  const tu = split.testUsers;
  for (let t = 0; t < tu.length; t++) {
    const u = tu[t];
    scores.fill(0);
    model.score(u, scores);
    for (let e = ptr[u]; e < ptr[u + 1]; e++) scores[items[e]] = -Infinity;
    const held = new Set(split.test.items.subarray(split.test.ptr[u], split.test.ptr[u + 1]));
    acc.add(topK(scores, o.k), held);
    if ((t & 127) === 0) report(`${model.name} score`, t / tu.length);
  }
  report(`${model.name} score`, 1);
  const m = acc.result();
  return {
    model: model.name,
    data: o.data,
    users: trainUserCount(split),
    items: n,
    testUsers: tu.length,
    k: o.k,
    hr: round(m.hr),
    ndcg: round(m.ndcg),
    recall: round(m.recall),
    coverage: round(m.coverage),
    ms: Math.round(performance.now() - t0),
    bytesPerItem: model.bytesPerItem,
  };
}

const round = (x: number): number => Math.round(x * 1e5) / 1e5;
