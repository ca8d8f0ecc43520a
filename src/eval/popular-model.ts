/**
 * Most-popular baseline: every user gets the items with the most training users.
 */
import type { EvalModel } from './eval-model.js';
import type { Split } from './split.js';

/**
 * @example
 * ```ts
 * const m = new PopularModel(); m.fit(split, () => {}); m.score(0, out);
 * ```
 */
export class PopularModel implements EvalModel {
  readonly name = 'popular';
  readonly bytesPerItem = 4;
  private counts = new Float32Array(0);
  fit(split: Split): void {
    this.counts = new Float32Array(split.itemIds.length);
    for (const i of split.train.items) this.counts[i]++;
  }
  score(_user: number, out: Float32Array): void {
    out.set(this.counts);
  }
}
