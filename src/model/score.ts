import * as tf from './tf.js';
import { ClosedError, ModelError } from '../errors.js';
import type { ItemTable } from './item-table.js';
import type { ProfileItem } from './profile.js';

/**
 * The user side of the model, computed on the device and never uploaded: the confidence-weighted
 * mean of the embeddings of the shopper's items. All zeros for a shopper with no history, which
 * leaves the item biases (popularity) to rank.
 */
export function userVector(table: ItemTable, profile: readonly ProfileItem[]): Float32Array {
  const d = table.dim;
  const n = table.itemIds.length;
  const z = new Float32Array(d);
  let wsum = 0;
  for (const p of profile) {
    if (!(Number.isInteger(p.row) && p.row >= 0 && p.row < n)) throw new ModelError(`profile row ${p.row} is outside the table (whole numbers 0..${n - 1})`);
    if (p.weight <= 0) continue;
    wsum += p.weight;
    for (let k = 0; k < d; k++) z[k] += p.weight * table.factors[p.row * d + k]!;
  }
  if (wsum > 0) for (let k = 0; k < d; k++) z[k] /= wsum;
  return z;
}

export interface Scored {
  row: number;
  score: number;
}

/** The rows a top-K query may return: a mask kept per `key` (a category), or one made for one call. */
export interface Allowed {
  key?: string;
  rows: () => Iterable<number>;
  /**
   * Whether `row` is one of `rows()`: checked again on each row read back (O(k)), so that a backend
   * that reads back garbage (a lost WebGL context reads zeros, and the mask with them) never
   * answers with a row outside the allowed ones.
   */
  has?: (row: number) => boolean;
}

/** A 0/1 mask over `n` rows, on the backend. */
function maskOf(n: number, rows: () => Iterable<number>): tf.Tensor1D {
  const a = new Float32Array(n);
  for (const r of rows()) a[r] = 1;
  return tf.tensor1d(a);
}

/** Category masks a {@link Scorer} keeps on the backend at most (the least recently used go first). */
export const MAX_MASKS = 32;

/**
 * Holds the item table on the active tfjs backend and answers top-K queries. Rebuild it after
 * training: the tensors are a snapshot. The table must not be changed in place while the scorer is
 * in use (similar() reads its query row from the table's factors; the engine trains a copy and
 * builds a new scorer for it).
 */
export class Scorer {
  private Vn: tf.Tensor2D | undefined;
  private masks = new Map<string, tf.Tensor1D>();
  readonly n: number;
  readonly dim: number;

  constructor(private readonly table: ItemTable, private readonly temperature = 1) {
    this.n = table.itemIds.length;
    this.dim = table.dim;
    // [V | b]: with z' = [z / temperature, 1], one matMul gives every score, bias included.
    const aug = new Float32Array(this.n * (this.dim + 1));
    for (let i = 0; i < this.n; i++) {
      aug.set(table.factors.subarray(i * this.dim, (i + 1) * this.dim), i * (this.dim + 1));
      aug[i * (this.dim + 1) + this.dim] = table.bias[i]!;
    }
    this.Vb = tf.tensor2d(aug, [this.n, this.dim + 1]);
  }

  private readonly Vb: tf.Tensor2D;

  private zAug(z: Float32Array): tf.Tensor2D {
    if (z.length !== this.dim) throw new ModelError(`user vector has ${z.length} values, expected ${this.dim}`);
    const a = new Float32Array(this.dim + 1);
    for (let k = 0; k < this.dim; k++) a[k] = z[k]! / this.temperature;
    a[this.dim] = 1;
    return tf.tensor2d(a, [this.dim + 1, 1]);
  }

  /**
   * Top `k` rows by `b + V·z / temperature`, skipping `exclude`, optionally only the rows `allowed`
   * lists: a 0/1 mask kept per `key` for the next call, or, without a key, made for this call only
   * (a page's one-off list of candidates must not push the categories' masks out).
   */
  async topK(z: Float32Array, k: number, exclude: ReadonlySet<number>, allowed?: Allowed): Promise<Scored[]> {
    return (await this.rank(z, k, exclude, allowed, false)).top;
  }

  /**
   * {@link topK}, plus the lowest and highest score over all rows (to scale these scores into a
   * range without reading every score back).
   */
  async topKRange(z: Float32Array, k: number, exclude: ReadonlySet<number>, allowed?: Allowed): Promise<{ top: Scored[]; lo: number; hi: number }> {
    const { top, range } = await this.rank(z, k, exclude, allowed, true);
    return { top, lo: range![0]!, hi: range![1]! };
  }

  /** The one scoring pass behind topK and topKRange; the range (min, max over all rows, unmasked) only when asked. */
  private async rank(
    z: Float32Array,
    k: number,
    exclude: ReadonlySet<number>,
    allowed: Allowed | undefined,
    withRange: boolean,
  ): Promise<{ top: Scored[]; range?: Float32Array }> {
    const want = Math.min(this.n, k + exclude.size);
    const { mask, values, indices, range } = this.masked(allowed, (m) => {
      const raw = tf.reshape(tf.matMul(this.Vb, this.zAug(z)), [this.n]);
      return { ...tf.topk(m ? tf.where(tf.cast(m, 'bool'), raw, tf.fill([this.n], -1e30)) : raw, want), range: withRange ? tf.stack([tf.min(raw), tf.max(raw)]) : undefined };
    });
    try {
      const [r, top] = await Promise.all([range?.data(), this.collect(values, indices, k, exclude, mask !== undefined, allowed?.has)]);
      return { top, range: r as Float32Array | undefined };
    } finally {
      // Also when a read fails (a lost GPU context).
      range?.dispose();
    }
  }

  /** `b + V·z / temperature` for every row, read back (for offers' scope affinities). */
  async scoreAll(z: Float32Array): Promise<Float32Array> {
    this.assertLive();
    const s = tf.tidy(() => tf.reshape(tf.matMul(this.Vb, this.zAug(z)), [this.n]));
    try {
      return (await s.data()) as Float32Array;
    } finally {
      s.dispose();
    }
  }

  /**
   * Rows most similar to `row` by cosine similarity of their embeddings (the row itself excluded),
   * skipping `exclude`, optionally only the rows `allowed` lists (as in {@link topK}).
   */
  async similar(row: number, k: number, exclude: ReadonlySet<number> = new Set(), allowed?: Allowed): Promise<Scored[]> {
    if (!(row >= 0 && row < this.n)) throw new ModelError(`row ${row} is outside the table`);
    this.assertLive();
    if (!this.Vn) {
      // Built on first use from the scoring table's factor columns: no second copy of V on the backend.
      this.Vn = tf.tidy(() => {
        const V = tf.slice(this.Vb, [0, 0], [this.n, this.dim]);
        return tf.div(V, tf.add(tf.norm(V, 'euclidean', 1, true), 1e-8)) as tf.Tensor2D;
      });
    }
    const skip = new Set(exclude).add(row);
    const want = Math.min(this.n, k + skip.size);
    const Vn = this.Vn;
    // The query row is built here, not sliced out of Vn: on the wasm backend a slice of one row
    // read the whole table (26–63 ms at 100,000 items, against 6 ms for the matMul).
    const q = this.unitRow(row);
    const { mask, values, indices } = this.masked(allowed, (m) => {
      const raw = tf.reshape(tf.matMul(Vn, tf.tensor2d(q, [this.dim, 1])), [this.n]);
      return tf.topk(m ? tf.where(tf.cast(m, 'bool'), raw, tf.fill([this.n], -1e30)) : raw, want);
    });
    return this.collect(values, indices, k, skip, mask !== undefined, allowed?.has);
  }

  /**
   * Row `row` of Vn (`v / (‖v‖ + 1e-8)`), computed from the host table the scorer was built from,
   * rounded to float32 at each step as the backend computes Vn (squares, their sum, its root, the
   * root + 1e-8, each quotient): the same values on the cpu backend, within float32 rounding on
   * the others (whose kernels may sum in another order).
   */
  private unitRow(row: number): Float32Array {
    const d = this.dim;
    const f = this.table.factors;
    const o = row * d;
    let ss = 0;
    for (let k = 0; k < d; k++) {
      const x = f[o + k]!;
      ss += Math.fround(x * x);
    }
    const den = Math.fround(Math.fround(Math.sqrt(Math.fround(ss))) + Math.fround(1e-8));
    const q = new Float32Array(d);
    for (let k = 0; k < d; k++) q[k] = f[o + k]! / den;
    return q;
  }

  private async collect(values: tf.Tensor, indices: tf.Tensor, k: number, exclude: ReadonlySet<number>, masked: boolean, has?: (row: number) => boolean): Promise<Scored[]> {
    let v: tf.TypedArray;
    let i: tf.TypedArray;
    try {
      [v, i] = await Promise.all([values.data(), indices.data()]);
    } finally {
      tf.dispose([values, indices]);
    }
    const out: Scored[] = [];
    for (let j = 0; j < i.length && out.length < k; j++) {
      const row = i[j]!;
      if (exclude.has(row)) continue;
      if (masked && v[j]! <= -1e29) break;
      // A second guard behind the mask: a row outside the allowed ones is never an answer.
      if (masked && has && !has(row)) continue;
      out.push({ row, score: v[j]! });
    }
    return out;
  }

  /**
   * Runs the scoring pass `pass` (inside tf.tidy) with the 0/1 mask of `allowed`, if any: the one
   * kept for its key, or one made for this pass and disposed after it.
   */
  private masked<T extends { [key: string]: tf.TensorContainer }>(allowed: Allowed | undefined, pass: (mask: tf.Tensor1D | undefined) => T): T & { mask: tf.Tensor1D | undefined } {
    // Before any mask is made: one made on a disposed scorer would be kept by nobody.
    this.assertLive();
    const once = allowed !== undefined && allowed.key === undefined;
    const mask = allowed ? (allowed.key !== undefined ? this.mask(allowed.key, allowed.rows) : maskOf(this.n, allowed.rows)) : undefined;
    try {
      return { ...tf.tidy(() => pass(mask)), mask };
    } finally {
      if (once) mask!.dispose();
    }
  }

  /**
   * The 0/1 row mask for `key`, kept for the next call with the same key: at most
   * {@link MAX_MASKS}, the least recently used disposed first (each holds a value per item on the
   * backend, and a page may ask for many categories). A mask is used only inside the synchronous
   * scoring pass that asked for it, so one evicted later is no longer in use.
   */
  private mask(key: string, rows: () => Iterable<number>): tf.Tensor1D {
    let m = this.masks.get(key);
    if (m) {
      this.masks.delete(key);
    } else {
      m = maskOf(this.n, rows);
      for (const [old, t] of this.masks) {
        if (this.masks.size < MAX_MASKS) break;
        t.dispose();
        this.masks.delete(old);
      }
    }
    this.masks.set(key, m);
    return m;
  }

  dispose(): void {
    this.disposed = true;
    tf.dispose([this.Vb, ...(this.Vn ? [this.Vn] : []), ...this.masks.values()]);
    this.masks.clear();
  }

  private disposed = false;

  /** Refuses to score with a disposed scorer (the engine closed or erased meanwhile) before allocating anything. */
  private assertLive(): void {
    if (this.disposed) throw new ClosedError('the recommender was closed while this call waited');
  }

  /** The table this scorer was built from. */
  get source(): ItemTable {
    return this.table;
  }
}

/**
 * The first `n` of `items` in a stable sort by `value`, highest first, among those `accept` keeps:
 * `items.filter(accept).sort((a, b) => b.value - a.value).slice(0, n)` for finite values, in one
 * pass (a reason cites two past items of a history of thousands, for each of k results).
 */
export function topByValue<T extends { value: number }>(items: Iterable<T>, n: number, accept: (x: T) => boolean = () => true): T[] {
  const best: T[] = [];
  if (n <= 0) return best;
  for (const x of items) {
    if (!accept(x)) continue;
    if (best.length === n && !(x.value > best[n - 1]!.value)) continue;
    // After every kept one of equal value: the earlier wins a tie, as in a stable sort.
    let p = best.length < n ? best.length : n - 1;
    while (p > 0 && best[p - 1]!.value < x.value) p--;
    best.splice(p, 0, x);
    if (best.length > n) best.pop();
  }
  return best;
}

/** Each history item's contribution to `row`'s score (weight × dot product), each as it comes: {@link contributions} unsorted. */
export function* contributionsOf(table: ItemTable, profile: readonly ProfileItem[], row: number): Generator<{ item: ProfileItem; value: number }> {
  const d = table.dim;
  for (const p of profile) {
    if (p.weight <= 0 || p.row === row) continue;
    let dot = 0;
    for (let k = 0; k < d; k++) dot += table.factors[p.row * d + k]! * table.factors[row * d + k]!;
    yield { item: p, value: p.weight * dot };
  }
}

/** Per-history-item contributions to one recommended row's score, strongest first. */
export function contributions(table: ItemTable, profile: readonly ProfileItem[], row: number): Array<{ item: ProfileItem; value: number }> {
  return [...contributionsOf(table, profile, row)].sort((a, b) => b.value - a.value);
}
