/**
 * localrec's shipped factor model in the evaluation: item embeddings + bias trained with sampled
 * softmax (src/model/train.ts) on each user's training history, users scored on the device as
 * `bias + V·z / temperature` with z the weighted mean of their items' embeddings
 * (src/model/score.ts). TensorFlow.js is imported only when the model is fitted.
 */
import { ModelError } from '../errors.js';
import type { ItemTable } from '../model/item-table.js';
import type { TrainConfig } from '../model/train.js';
import type { EvalModel } from './eval-model.js';
import { weightedHistory, type HistoryWeighting } from './history-weighting.js';
import { trainSequences, type Split } from './split.js';

/**
 * The shipped model's training settings, plus what the eval harness adds around them.
 * `initialAccumulator` left out is training's default.
 */
export interface LocalrecEvalOptions extends Omit<TrainConfig, 'initialAccumulator'>, Partial<Pick<TrainConfig, 'initialAccumulator'>> {
  dim: number;
  backend: 'cpu' | 'wasm';
  weighting: HistoryWeighting;
}

/**
 * @example
 * ```ts
 * const m = new LocalrecModel({ dim: 32, epochs: 4, ..., backend: 'wasm', seed: 1, weighting });
 * await m.fit(split, () => {});
 * ```
 */
export class LocalrecModel implements EvalModel {
  readonly name = 'factors';
  private table: ItemTable | undefined;
  private split: Split | undefined;
  private userVector: ((t: ItemTable, p: Array<{ row: number; weight: number; action: 'purchase'; lastT: number }>) => Float32Array) | undefined;
  constructor(private readonly o: LocalrecEvalOptions) {}

  /** The table `fit` trained (undefined before). */
  get trainedTable(): ItemTable | undefined {
    return this.table;
  }

  get bytesPerItem(): number {
    return (this.o.dim + 1) * 4;
  }

  async fit(split: Split, onProgress: (f: number) => void): Promise<void> {
    this.split = split;
    const tf = await import('../model/tf.js');
    if (this.o.backend === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
    // tfjs answers false, and keeps the backend it had, when this one fails to start (wasm without
    // its binaries): the figures would then be the other backend's, printed under this one's name.
    if (!(await tf.setBackend(this.o.backend))) throw new ModelError(`backend '${this.o.backend}' could not be started (tfjs kept '${tf.getBackend()}')`);
    await tf.ready();
    const { createItemTable } = await import('../model/item-table.js');
    const { trainItemTable } = await import('../model/train.js');
    const score = await import('../model/score.js');
    this.userVector = score.userVector;
    const n = split.itemIds.length;
    const popularity = new Float32Array(n);
    for (const i of split.train.items) popularity[i]++;
    const table = createItemTable(split.itemIds, this.o.dim, { seed: this.o.seed, popularity });
    await trainItemTable(
      table,
      trainSequences(split),
      {
        epochs: this.o.epochs,
        batchSize: this.o.batchSize,
        negatives: this.o.negatives,
        learningRate: this.o.learningRate,
        l2: this.o.l2,
        maxContext: this.o.maxContext,
        temperature: this.o.temperature,
        seed: this.o.seed,
        ...(this.o.initialAccumulator !== undefined ? { initialAccumulator: this.o.initialAccumulator } : {}),
      },
      (p) => onProgress(p.total ? p.done / p.total : 0),
    );
    this.table = table;
  }

  score(user: number, out: Float32Array): void {
    const t = this.table!;
    const h = weightedHistory(this.split!.train, user, this.o.weighting);
    const profile = Array.from(h.items, (row, e) => ({ row, weight: h.weights[e], action: 'purchase' as const, lastT: 0 }));
    const z = this.userVector!(t, profile);
    const d = t.dim;
    const inv = 1 / this.o.temperature;
    // Same formula as Scorer.topK, in plain JS: one tensor round trip per user would dominate here.
    for (let j = 0; j < t.itemIds.length; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += t.factors[j * d + k] * z[k];
      out[j] = t.bias[j] + s * inv;
    }
  }
}
