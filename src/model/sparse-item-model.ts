/**
 * A sparse item-to-item model: for every item a fixed number of (neighbour, weight) pairs. It is
 * the item side that ships to the browser and is federated; the user side is only the shopper's
 * own history, weighted on the device (see {@link scoreSparse}).
 *
 * Two orientations, because pruning a learned item-item matrix by row or by column keeps different
 * weights: `out` lists, for source item i, the items j it votes for (score by scatter); `in` lists,
 * for target item j, the items i that vote for it (score by gather).
 */
import { ModelError } from '../errors.js';

export interface SparseItemModel {
  nItems: number;
  /** Neighbours per item (slots); unused slots have index -1 and weight 0. */
  width: number;
  orientation: 'out' | 'in';
  /** nItems × width, row-major. */
  index: Int32Array;
  weight: Float32Array;
}

/**
 * Bytes per item when shipped: a 16-bit neighbour index (32-bit from 65,536 items on, i.e. past
 * 65,535) and a 32-bit weight per slot.
 */
export function sparseBytesPerItem(m: SparseItemModel): number {
  // As the file: 2-byte indices up to 65,535 items (0xFFFF marks an unused slot).
  return m.width * ((m.nItems <= 0xffff ? 2 : 4) + 4);
}

/** A history entry the user side feeds to scoring: item index and its weight (confidence × recency). */
export interface WeightedHistory {
  items: ArrayLike<number>;
  weights: ArrayLike<number>;
}

/**
 * Adds the model's scores for a weighted history to `out` (length nItems): out[j] += Σᵢ h[i]·W[i,j].
 * `scratch` (length nItems, all zero) is needed for the `in` orientation and is left all zero.
 *
 * @example
 * ```ts
 * const out = new Float32Array(m.nItems);
 * scoreSparse(m, { items: [3, 7], weights: [1, 0.5] }, out, new Float32Array(m.nItems));
 * ```
 */
export function scoreSparse(m: SparseItemModel, h: WeightedHistory, out: Float32Array, scratch?: Float32Array): void {
  const { width, index, weight } = m;
  if (m.orientation === 'out') {
    for (let e = 0; e < h.items.length; e++) {
      const w = h.weights[e];
      const base = h.items[e] * width;
      for (let s = 0; s < width; s++) {
        const j = index[base + s];
        if (j < 0) break;
        out[j] += w * weight[base + s];
      }
    }
    return;
  }
  if (!scratch || scratch.length !== m.nItems) throw new ModelError('scoreSparse: the in orientation needs a zeroed scratch of nItems');
  for (let e = 0; e < h.items.length; e++) scratch[h.items[e]] += h.weights[e];
  for (let j = 0; j < m.nItems; j++) {
    const base = j * width;
    let s = 0;
    for (let k = 0; k < width; k++) {
      const i = index[base + k];
      if (i < 0) break;
      s += weight[base + k] * scratch[i];
    }
    out[j] += s;
  }
  for (let e = 0; e < h.items.length; e++) scratch[h.items[e]] = 0;
}

/**
 * Keeps the `width` largest-magnitude entries of a dense row (skipping `self`), largest first.
 * Used by every trainer that produces a dense row and ships a sparse one.
 *
 * @example
 * ```ts
 * const idx = new Int32Array(2), w = new Float32Array(2);
 * pruneRow(Float64Array.of(0, -3, 1, 2), 0, 2, idx, w, 0); // idx [1, 3], w [-3, 2]
 * ```
 */
export function pruneRow(
  row: ArrayLike<number>,
  self: number,
  width: number,
  index: Int32Array,
  weight: Float32Array,
  offset: number,
  positiveOnly = false,
): void {
  let size = 0;
  const mag = new Float64Array(width);
  for (let j = 0; j < row.length; j++) {
    const v = row[j];
    if (j === self || v === 0 || !Number.isFinite(v) || (positiveOnly && v < 0)) continue;
    const a = Math.abs(v);
    if (size === width && a <= mag[width - 1]) continue;
    let p = size < width ? size++ : width - 1;
    while (p > 0 && mag[p - 1] < a) {
      mag[p] = mag[p - 1];
      index[offset + p] = index[offset + p - 1];
      weight[offset + p] = weight[offset + p - 1];
      p--;
    }
    mag[p] = a;
    index[offset + p] = j;
    weight[offset + p] = v;
  }
  for (let s = size; s < width; s++) {
    index[offset + s] = -1;
    weight[offset + s] = 0;
  }
}

/** An empty model of the given shape (all slots unused). */
export function emptySparseModel(nItems: number, width: number, orientation: 'out' | 'in'): SparseItemModel {
  if (!Number.isInteger(width) || width < 1) throw new ModelError(`width must be a positive integer, got ${width}`);
  return { nItems, width, orientation, index: new Int32Array(nItems * width).fill(-1), weight: new Float32Array(nItems * width) };
}
