/**
 * Item-kNN baseline with cosine similarity on the binary user × item matrix:
 * sim(i, j) = |users(i) ∩ users(j)| / (√|users(i)|·√|users(j)| + shrink), each item keeping its
 * `neighbors` most similar items; a user's score for j sums sim(i, j) over their history, each
 * history item weighted by `weighting` (plain by default).
 */
import { pruneRow, scoreSparse, emptySparseModel, type SparseItemModel } from '../model/sparse-item-model.js';
import type { EvalModel } from './eval-model.js';
import { weightedHistory, NO_WEIGHTING, type HistoryWeighting } from './history-weighting.js';
import { usersByItem, type Split } from './split.js';

export interface ItemKnnOptions {
  /** Neighbours kept per item. */
  neighbors: number;
  shrink: number;
  /** How the user's history is weighted when scoring (default: plain, every item 1). */
  weighting?: HistoryWeighting;
}

/**
 * @example
 * ```ts
 * const knn = new ItemKnnModel({ neighbors: 100, shrink: 0 });
 * knn.fit(split, () => {});
 * ```
 */
export class ItemKnnModel implements EvalModel {
  readonly name = 'itemknn';
  private model: SparseItemModel | undefined;
  private split: Split | undefined;
  constructor(private readonly o: ItemKnnOptions) {}

  get bytesPerItem(): number {
    return this.o.neighbors * 8;
  }

  fit(split: Split, onProgress: (f: number) => void): void {
    this.split = split;
    const n = split.itemIds.length;
    const width = Math.max(1, Math.min(this.o.neighbors, n - 1));
    const byItem = usersByItem(split);
    const norm = new Float64Array(n);
    for (let i = 0; i < n; i++) norm[i] = Math.sqrt(byItem.ptr[i + 1] - byItem.ptr[i]);
    const model = emptySparseModel(n, width, 'out');
    const co = new Float64Array(n);
    const { ptr, items } = split.train;
    for (let i = 0; i < n; i++) {
      if (norm[i] === 0) continue;
      co.fill(0);
      for (let a = byItem.ptr[i]; a < byItem.ptr[i + 1]; a++) {
        const u = byItem.users[a];
        for (let e = ptr[u]; e < ptr[u + 1]; e++) co[items[e]] += 1;
      }
      for (let j = 0; j < n; j++) if (co[j] !== 0) co[j] /= norm[i] * norm[j] + this.o.shrink;
      pruneRow(co, i, width, model.index, model.weight, i * width, true);
      if ((i & 255) === 0) onProgress(i / n);
    }
    this.model = model;
  }

  score(user: number, out: Float32Array): void {
    scoreSparse(this.model!, weightedHistory(this.split!.train, user, this.o.weighting ?? NO_WEIGHTING), out);
  }
}
