/**
 * The item-to-item side of the model as it runs on the device: a {@link NeighborTable} (for every
 * item, a few dozen items it points to with a weight, built by `localrec neighbors` from the
 * shop's order log and published like any static asset) scored against the shopper's own
 * weighted history, which never leaves the device.
 *
 * `score(j) = Σᵢ h(i)·W[i, j]` over the shopper's profile items i. Items the history does not
 * reach (score ≤ 0) are ranked after it by a fallback order: on the device, the federated factor
 * model; in `localrec eval`, popularity. Both callers go through {@link rankScores}, so the
 * evaluation measures the code that ships.
 */
import { ModelError, ValidationError } from '../errors.js';
import type { SparseItemModel } from './sparse-item-model.js';

/** The published neighbour table, in its own item order ('out' orientation: row i lists the items i votes for). */
export interface NeighborTable {
  itemIds: string[];
  /** Slots per item; unused slots have index -1 and weight 0 and come last. */
  width: number;
  /** itemIds.length × width, row-major, indices into itemIds. */
  index: Int32Array;
  weight: Float32Array;
}

/** Widest table accepted (a 64-slot row is 384 bytes on the wire). */
export const MAX_NEIGHBOR_WIDTH = 256;

/**
 * Checks shapes, index ranges, finiteness and that used slots come first; throws a
 * ValidationError under `field` that says what is wrong.
 */
export function checkNeighborTable(t: NeighborTable, field = 'neighbors'): void {
  const n = t.itemIds.length;
  if (!Number.isInteger(t.width) || t.width < 1 || t.width > MAX_NEIGHBOR_WIDTH) {
    throw new ValidationError(`${field}.width`, `must be an integer from 1 to ${MAX_NEIGHBOR_WIDTH}, got ${t.width}`);
  }
  if (t.index.length !== n * t.width) throw new ValidationError(`${field}.index`, `has ${t.index.length} slots, expected ${n} × ${t.width}`);
  if (t.weight.length !== n * t.width) throw new ValidationError(`${field}.weight`, `has ${t.weight.length} slots, expected ${n} × ${t.width}`);
  const seen = new Set<string>();
  t.itemIds.forEach((id, i) => {
    if (typeof id !== 'string' || id.length === 0) throw new ValidationError(`${field}.itemIds[${i}]`, 'must be a non-empty string');
    if (seen.has(id)) throw new ValidationError(`${field}.itemIds[${i}]`, `duplicate id '${id}'`);
    seen.add(id);
  });
  const seenIn = new Int32Array(n).fill(-1);
  for (let i = 0; i < n; i++) {
    let open = true;
    for (let s = 0; s < t.width; s++) {
      const k = i * t.width + s;
      const j = t.index[k]!;
      const w = t.weight[k]!;
      if (j === -1) {
        if (w !== 0) throw new ValidationError(`${field}.weight`, `item ${i} slot ${s} is unused but has weight ${w}`);
        open = false;
        continue;
      }
      if (!open) throw new ValidationError(`${field}.index`, `item ${i} slot ${s} follows an unused slot`);
      if (!(j >= 0 && j < n) || j === i) throw new ValidationError(`${field}.index`, `item ${i} slot ${s} points to ${j}, outside 0..${n - 1} or to itself`);
      // Twice in one row, it would be listed twice by similar() and counted twice in scores.
      if (seenIn[j] === i) throw new ValidationError(`${field}.index`, `item ${i} lists neighbour ${j} twice`);
      seenIn[j] = i;
      if (!Number.isFinite(w)) throw new ValidationError(`${field}.weight`, `item ${i} slot ${s} is not finite`);
    }
  }
}

/**
 * Re-indexes a published table into the page catalog's rows (`rows`: item id → row, `nRows`
 * rows). Items and neighbours the catalog lacks are dropped; catalog items the table lacks get
 * no neighbours.
 *
 * @example
 * ```ts
 * const m = alignNeighbors(table, new Map([['a', 0], ['b', 1]]), 2);
 * ```
 */
export function alignNeighbors(t: NeighborTable, rows: ReadonlyMap<string, number>, nRows: number): SparseItemModel {
  const map = t.itemIds.map((id) => rows.get(id) ?? -1);
  // The width is the longest row the catalog keeps, not the file's: a small file of wide rows
  // aligned to a large catalog must not cost catalog × file width (a 3 KB file could ask for 200 MB).
  let width = 0;
  for (let i = 0; i < t.itemIds.length; i++) {
    if (map[i]! < 0) continue;
    let kept = 0;
    for (let s = 0; s < t.width; s++) {
      const j = t.index[i * t.width + s]!;
      if (j < 0) break;
      if (map[j]! >= 0) kept++;
    }
    width = Math.max(width, kept);
  }
  const index = new Int32Array(nRows * width).fill(-1);
  const weight = new Float32Array(nRows * width);
  for (let i = 0; i < t.itemIds.length; i++) {
    const r = map[i]!;
    if (r < 0) continue;
    let out = 0;
    for (let s = 0; s < t.width; s++) {
      const j = t.index[i * t.width + s]!;
      if (j < 0) break;
      const c = map[j]!;
      if (c < 0) continue;
      index[r * width + out] = c;
      weight[r * width + out] = t.weight[i * t.width + s]!;
      out++;
    }
  }
  return { nItems: nRows, width, orientation: 'out', index, weight };
}

/** One weighted history entry: a row of the model and its weight (the profile's confidence × recency). */
export interface WeightedRow {
  row: number;
  weight: number;
}

/**
 * Writes the ranking score of every row into `out` (length m.nItems): rows the history reaches
 * with a positive neighbour score get `1 + score / (the largest such score)`, in (1, 2]; every other
 * row gets its fallback score mapped into [0, 1) (same order), so history always ranks first and
 * the fallback breaks the rest. (Scaled by the largest, the neighbour scores keep their order in
 * float32 whatever their scale: a history whose recency weights are all tiny, a shopper back after
 * years, would otherwise round every `1 + score` to 1 and tie.)
 *
 * @example
 * ```ts
 * const out = new Float32Array(m.nItems);
 * rankScores(m, [{ row: 3, weight: 1 }], popularity, out);
 * ```
 */
export function rankScores(m: SparseItemModel, history: readonly WeightedRow[], fallback: ArrayLike<number>, out: Float32Array): void {
  const n = m.nItems;
  if (out.length !== n || fallback.length !== n) throw new ModelError(`rankScores: expected ${n} rows, got out ${out.length} and fallback ${fallback.length}`);
  let lo = Infinity;
  let hi = -Infinity;
  for (let j = 0; j < n; j++) {
    const f = fallback[j]!;
    if (f < lo) lo = f;
    if (f > hi) hi = f;
  }
  const span = hi > lo ? hi - lo : 1;
  for (let j = 0; j < n; j++) out[j] = (0.999 * (fallback[j]! - lo)) / span;
  const { rows, values, count, largest } = reach(m, history);
  for (let t = 0; t < count; t++) out[rows[t]!] = 1 + values[t]! / largest;
}

/** The largest value of `scores` (reachedRows' map; each > 0), 1 when it is empty. */
export function largestValue(scores: ReadonlyMap<number, number>): number {
  let top = 0;
  for (const v of scores.values()) if (v > top) top = v;
  return top > 0 ? top : 1;
}

/**
 * The rows the history reaches with a positive neighbour score, and their scores: the sparse form
 * of Σᵢ h(i)·W[i, j] (summed in double precision), kept only where positive, in the order the
 * history first reaches them.
 */
export function reachedRows(m: SparseItemModel, history: readonly WeightedRow[]): Map<number, number> {
  const { rows, values, count } = reach(m, history);
  const acc = new Map<number, number>();
  for (let t = 0; t < count; t++) acc.set(rows[t]!, values[t]!);
  return acc;
}

/** One row and its ranking score. */
export interface RankedRow {
  row: number;
  score: number;
}

/**
 * The top `k` rows the history reaches through the table, scored as {@link rankScores} writes them
 * (`1 + score / the largest score`, the largest taken over every reached row, `keep` or not,
 * rounded to float32: two scores that differ below float32's precision tie), best first, ties by
 * row; only the rows `keep` accepts. Exactly what sorting every reached row by (score desc, row
 * asc) and keeping the first `k` gives, in O(R log k) for R rows reached: a heavy shopper's history
 * reaches tens of thousands of rows to keep ten. `keep` is asked only about rows that could still
 * make the cut (a pure filter: not once per row). A NaN score (only from infinite sums) is skipped,
 * as {@link topRows} skips one.
 *
 * @example
 * ```ts
 * topReachedRows(m, [{ row: 0, weight: 1 }], 10, (r) => !seen.has(r)); // [{ row: 1, score: 2 }, …]
 * ```
 */
export function topReachedRows(m: SparseItemModel, history: readonly WeightedRow[], k: number, keep?: (row: number) => boolean): RankedRow[] {
  if (!(k > 0)) return [];
  // Reached first (the scratch is free again before `keep`, the caller's code, runs).
  const { rows, values, count, largest } = reach(m, history);
  const cap = Math.min(count, Math.floor(Math.min(k, 2 ** 31 - 1)));
  if (cap < 1) return [];
  // A binary heap of the best `cap` rows so far, its worst (lowest score, then highest row) at 0.
  const hs = new Float64Array(cap);
  const hr = new Int32Array(cap);
  let size = 0;
  for (let t = 0; t < count; t++) {
    const row = rows[t]!;
    const score = Math.fround(1 + values[t]! / largest);
    if (Number.isNaN(score)) continue;
    if (size === cap) {
      // Not better than the worst kept: the common case, decided before `keep` is asked.
      if (score < hs[0]! || (score === hs[0]! && row > hr[0]!)) continue;
      if (keep && !keep(row)) continue;
      siftDown(hs, hr, size, 0, score, row);
    } else {
      if (keep && !keep(row)) continue;
      // Sift up from the end.
      let p = size++;
      while (p > 0) {
        const q = (p - 1) >> 1;
        if (!(score < hs[q]! || (score === hs[q]! && row > hr[q]!))) break;
        hs[p] = hs[q]!;
        hr[p] = hr[q]!;
        p = q;
      }
      hs[p] = score;
      hr[p] = row;
    }
  }
  const out: RankedRow[] = new Array(size);
  // Pop the worst to the back: best first.
  for (let end = size; end > 0; end--) {
    out[end - 1] = { row: hr[0]!, score: hs[0]! };
    if (end > 1) siftDown(hs, hr, end - 1, 0, hs[end - 1]!, hr[end - 1]!);
  }
  return out;
}

/** Puts (score, row) at heap slot `p` of a heap of `size` (worst at 0) and sifts it down to its place. */
function siftDown(hs: Float64Array, hr: Int32Array, size: number, p: number, score: number, row: number): void {
  for (;;) {
    let c = 2 * p + 1;
    if (c >= size) break;
    // The worse child: lower score, or the same score and a higher row.
    if (c + 1 < size && (hs[c + 1]! < hs[c]! || (hs[c + 1]! === hs[c]! && hr[c + 1]! > hr[c]!))) c++;
    if (!(hs[c]! < score || (hs[c]! === score && hr[c]! > row))) break;
    hs[p] = hs[c]!;
    hr[p] = hr[c]!;
    p = c;
  }
  hs[p] = score;
  hr[p] = row;
}

/** Per model: a dense accumulator and marks, all zero between calls (see {@link reach}). */
interface Scratch {
  acc: Float64Array;
  mark: Uint8Array;
  touched: Int32Array;
}

const scratches = new WeakMap<SparseItemModel, Scratch>();

/**
 * Σᵢ h(i)·W[i, j] over the history, in double precision, for the rows it reaches, accumulated in
 * a dense array kept per model (reused: no Map entry per hit) and read back in the order the
 * history first reaches each row; only positive sums are kept. `largest` is their largest, 1 when
 * there is none (as {@link largestValue}). History rows outside the model reach nothing.
 */
function reach(m: SparseItemModel, history: readonly WeightedRow[]): { rows: Int32Array; values: Float64Array; count: number; largest: number } {
  const { nItems: n, width, index, weight } = m;
  let s = scratches.get(m);
  if (!s || s.acc.length !== n) {
    s = { acc: new Float64Array(n), mark: new Uint8Array(n), touched: new Int32Array(n) };
    scratches.set(m, s);
  }
  const { acc, mark, touched } = s;
  let t = 0;
  try {
    for (const h of history) {
      const hw = h.weight;
      if (!(hw > 0)) continue;
      const r = h.row;
      if (!(Number.isInteger(r) && r >= 0 && r < n)) continue;
      const base = r * width;
      for (let k = 0; k < width; k++) {
        const j = index[base + k]!;
        if (j < 0) break;
        if (mark[j] === 0) {
          mark[j] = 1;
          touched[t++] = j;
        }
        acc[j] += hw * weight[base + k]!;
      }
    }
    const rows = new Int32Array(t);
    const values = new Float64Array(t);
    let count = 0;
    let top = 0;
    for (let i = 0; i < t; i++) {
      const j = touched[i]!;
      const v = acc[j]!;
      if (!(v > 0)) continue;
      rows[count] = j;
      values[count++] = v;
      if (v > top) top = v;
    }
    return { rows, values, count, largest: top > 0 ? top : 1 };
  } finally {
    // All zero again for the next call, also when this one failed part-way.
    for (let i = 0; i < t; i++) {
      const j = touched[i]!;
      acc[j] = 0;
      mark[j] = 0;
    }
  }
}

/**
 * Top `k` rows of `scores`, skipping `exclude` and rows `allowed` rejects, best first (ties by row).
 * A NaN score is skipped: it compares false with everything, so it would take a slot and break the order.
 *
 * @example
 * ```ts
 * topRows(Float32Array.of(0.1, 3, 2), 2, new Set([1])); // [{ row: 2, score: 2 }, { row: 0, score: 0.1 }]
 * ```
 */
export function topRows(scores: ArrayLike<number>, k: number, exclude: ReadonlySet<number>, allowed?: (row: number) => boolean): Array<{ row: number; score: number }> {
  const top: Array<{ row: number; score: number }> = [];
  if (!(k > 0)) return top;
  for (let j = 0; j < scores.length; j++) {
    const v = scores[j]!;
    if (Number.isNaN(v) || exclude.has(j) || (allowed && !allowed(j))) continue;
    if (top.length === k && v <= top[k - 1]!.score) continue;
    let p = top.length < k ? top.length : k - 1;
    if (top.length < k) top.push({ row: j, score: v });
    while (p > 0 && top[p - 1]!.score < v) {
      top[p] = top[p - 1]!;
      p--;
    }
    top[p] = { row: j, score: v };
  }
  return top;
}

/** Each history item's positive contribution to `row` through the table, as it comes: {@link neighborContributions} unsorted. */
export function* neighborContributionsOf<T extends WeightedRow>(m: SparseItemModel, history: readonly T[], row: number): Generator<{ item: T; value: number }> {
  for (const h of history) {
    if (!(h.weight > 0)) continue;
    const base = h.row * m.width;
    for (let k = 0; k < m.width; k++) {
      const j = m.index[base + k]!;
      if (j < 0) break;
      if (j === row) {
        const v = h.weight * m.weight[base + k]!;
        if (v > 0) yield { item: h, value: v };
        break;
      }
    }
  }
}

/** What each history entry added to `row`'s neighbour score, strongest first (positive only). */
export function neighborContributions<T extends WeightedRow>(m: SparseItemModel, history: readonly T[], row: number): Array<{ item: T; value: number }> {
  return [...neighborContributionsOf(m, history, row)].sort((a, b) => b.value - a.value);
}

/** The items `row` points to with a positive weight, strongest first. */
export function neighborsOf(m: SparseItemModel, row: number): Array<{ row: number; score: number }> {
  if (!(row >= 0 && row < m.nItems)) throw new ModelError(`row ${row} is outside the neighbour table`);
  const out: Array<{ row: number; score: number }> = [];
  for (let k = 0; k < m.width; k++) {
    const j = m.index[row * m.width + k]!;
    if (j < 0) break;
    const w = m.weight[row * m.width + k]!;
    if (w > 0) out.push({ row: j, score: w });
  }
  return out.sort((a, b) => b.score - a.score || a.row - b.row);
}
