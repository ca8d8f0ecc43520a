/**
 * EASE in the evaluation: `ease` keeps the dense item × item weights (the server-side reference,
 * n² floats, not shippable) and `sparse-ease` keeps `width` neighbours per item (what would ship).
 * Both score the user's history with the same on-device weighting.
 */
import { solveEaseRows, trainSparseEase } from '../model/sparse-ease.js';
import { scoreSparse, sparseBytesPerItem, type SparseItemModel } from '../model/sparse-item-model.js';
import type { EvalModel } from './eval-model.js';
import { weightedHistory, type HistoryWeighting } from './history-weighting.js';
import type { Split } from './split.js';

export interface EaseOptions {
  l2: number;
  weighting: HistoryWeighting;
  solver?: 'auto' | 'primal' | 'dual';
}

/**
 * Dense EASE, the reference a server would run.
 *
 * @example
 * ```ts
 * const ease = new DenseEaseModel({ l2: 100, weighting: NO_WEIGHTING });
 * ```
 */
export class DenseEaseModel implements EvalModel {
  readonly name: string = 'ease';
  private b = new Float32Array(0);
  private n = 0;
  private split: Split | undefined;
  constructor(private readonly o: EaseOptions) {}
  get bytesPerItem(): number {
    return this.n * 4;
  }
  fit(split: Split, onProgress: (f: number) => void): void {
    this.split = split;
    const n = (this.n = split.itemIds.length);
    this.b = new Float32Array(n * n);
    solveEaseRows(
      { ptr: split.train.ptr, items: split.train.items, nItems: n },
      this.o.l2,
      (i, p, diag) => {
        const r = i * n;
        for (let j = 0; j < n; j++) this.b[r + j] = j === i || !(diag[j] > 0) ? 0 : -p[j] / diag[j];
      },
      { solver: this.o.solver ?? 'auto', onProgress },
    );
  }
  score(user: number, out: Float32Array): void {
    const { items, weights } = weightedHistory(this.split!.train, user, this.o.weighting);
    const n = this.n;
    for (let e = 0; e < items.length; e++) {
      const r = items[e] * n;
      const w = weights[e];
      for (let j = 0; j < n; j++) out[j] += w * this.b[r + j];
    }
  }
}

export interface SparseEaseEvalOptions extends EaseOptions {
  width: number;
  prune: 'row' | 'col';
  positiveOnly: boolean;
}

/**
 * EASE pruned to `width` neighbours per item: the compact item-to-item candidate.
 *
 * @example
 * ```ts
 * const m = new SparseEaseModel({ l2: 100, width: 32, prune: 'row', positiveOnly: false, weighting });
 * ```
 */
export class SparseEaseModel implements EvalModel {
  readonly name: string = 'sparse-ease';
  private model: SparseItemModel | undefined;
  private split: Split | undefined;
  private scratch = new Float32Array(0);
  constructor(private readonly o: SparseEaseEvalOptions) {}
  get bytesPerItem(): number {
    return this.model ? sparseBytesPerItem(this.model) : this.o.width * 8;
  }
  fit(split: Split, onProgress: (f: number) => void): void {
    this.split = split;
    this.model = trainSparseEase(
      { ptr: split.train.ptr, items: split.train.items, nItems: split.itemIds.length },
      { l2: this.o.l2, width: this.o.width, prune: this.o.prune, positiveOnly: this.o.positiveOnly, solver: this.o.solver ?? 'auto', onProgress },
    );
    this.scratch = new Float32Array(split.itemIds.length);
  }
  score(user: number, out: Float32Array): void {
    scoreSparse(this.model!, weightedHistory(this.split!.train, user, this.o.weighting), out, this.scratch);
  }
}
