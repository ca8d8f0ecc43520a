/**
 * What the evaluation runner needs from a model: fit on the training histories, then score every
 * item for one user. Masking seen items and ranking are the runner's job, so models stay simple.
 */
import type { Split } from './split.js';

export interface EvalModel {
  /** Name in the JSON output, e.g. `popular`, `itemknn`, `sparse-ease`. */
  readonly name: string;
  /** Size of the item side as shipped, in bytes per item (0 when nothing ships, e.g. a baseline on the server). */
  readonly bytesPerItem: number;
  fit(split: Split, onProgress: (fraction: number) => void): void | Promise<void>;
  /** Writes a score for every item into `out` (length = number of items; the runner zeroes it first). */
  score(user: number, out: Float32Array): void;
}
