/**
 * The neighbour table of a catalog too large for one exact EASE solve (docs/NEIGHBORS.md, "Large
 * catalogs"): EASE solved exactly over the `headSize` most-bought items (the head, D), and every
 * pair with an item outside it (the tail) fitted to what that solution leaves unexplained, from
 * sparse co-purchase counts.
 *
 * EASE's column j is the ridge regression of item j on the other items (B[i, j]: how much having i
 * adds to j's score). One block sweep approximates it: the head's coefficients are solved exactly
 * among the head, then each tail item's coefficient is fitted, on its own, to the residual the
 * head leaves. With P_D = (X_Dᵀ X_D + λI)⁻¹ (the head's exact solve), c_ij the customers who have
 * both items, n_i those who have i, g_t = (c_dt) over head items d, and β_t = P_D g_t (the head's
 * ridge regression of tail item t):
 *
 *   head d → head e   B[d, e] = −P_D[d, e] / P_D[e, e]            (exact EASE over the head)
 *   head d → tail t   B[d, t] = β_t[d]                             (t regressed on the head)
 *   tail t → head d   B[t, d] = β_t[d] / (P_D[d, d] · (n_t + λ))   (= X_tᵀ r_d / (n_t + λ))
 *   tail t → tail u   B[t, u] = (c_tu − g_uᵀ β_t) / (n_t + λ)      (= X_tᵀ r_u / (n_t + λ))
 *
 * where r_j is item j's residual after the head's prediction; g_uᵀ β_t is the head's prediction of
 * t summed over u's customers. It is exact for two items, and close where tail items are rarely
 * bought together (λ, 100 by default, outweighs their co-counts) and the tail barely changes the
 * head's own coefficients. Without the residuals, with EASE's first-order weight c_ij / (n_i + λ)
 * for every pair outside the head, the table ranked far worse (docs/NEIGHBORS.md).
 *
 * Cost: the head solve holds headSize² Float64s and takes ~headSize³/2 multiply-adds; each tail item
 * costs its customers' item lists (Σ over customers of distinct items², over all items), headSize ×
 * its co-purchased head items for β, and the head items of its supported tail neighbours'
 * customers; the table holds nItems × width slots. Nothing is nItems × nItems.
 */
import { ValidationError } from '../errors.js';
import { axpy, invertSpdInPlace } from './sparse-spd-inverse.js';
import type { UserItemLists } from './sparse-ease.js';

export interface LargeBuildInput {
  /** Each customer's distinct items. */
  lists: UserItemLists;
  /** Customers of item i, ascending: users[cnt[i] … cnt[i + 1]). */
  cnt: Int32Array;
  users: Int32Array;
  /** Items solved exactly by EASE: the most-bought ones (ties: the lower index). */
  headSize: number;
  l2: number;
  width: number;
  minSupport: number;
  positiveOnly: boolean;
  onProgress?: (fraction: number, stage: string) => void;
}

export interface LargeBuildResult {
  /** nItems × width, row-major, largest |weight| first (ties: the lower item); -1 / 0 in unused slots. */
  index: Int32Array;
  weight: Float32Array;
  /** Items in the exact EASE solve. */
  denseItems: number;
  /** The share of (customer, item) pairs whose item is in the exact solve. */
  denseShare: number;
  /**
   * As BuildNeighborReport.droppedForSupport, except that tail–tail pairs are weighed only when
   * supported, so an unsupported one is never counted.
   */
  droppedForSupport: number;
}

/** Fixed-size rows of the largest |weight| entries (ties: the lower item), kept sorted. */
class TopRows {
  readonly index: Int32Array;
  readonly weight: Float64Array;
  readonly size: Int32Array;
  constructor(
    rows: number,
    readonly width: number,
    private readonly positiveOnly: boolean,
  ) {
    this.index = new Int32Array(rows * width).fill(-1);
    this.weight = new Float64Array(rows * width);
    this.size = new Int32Array(rows);
  }

  offer(r: number, j: number, v: number): void {
    if (v === 0 || !Number.isFinite(v) || (this.positiveOnly && v < 0)) return;
    const { width, index, weight } = this;
    const base = r * width;
    const a = Math.abs(v);
    let size = this.size[r]!;
    if (size === width) {
      const lastA = Math.abs(weight[base + width - 1]!);
      if (a < lastA || (a === lastA && j > index[base + width - 1]!)) return;
    } else this.size[r] = ++size;
    let p = size - 1;
    while (p > 0) {
      const qa = Math.abs(weight[base + p - 1]!);
      if (qa > a || (qa === a && index[base + p - 1]! < j)) break;
      index[base + p] = index[base + p - 1]!;
      weight[base + p] = weight[base + p - 1]!;
      p--;
    }
    index[base + p] = j;
    weight[base + p] = v;
  }

  clear(r: number): void {
    this.size[r] = 0;
    this.index.fill(-1, r * this.width, (r + 1) * this.width);
    this.weight.fill(0, r * this.width, (r + 1) * this.width);
  }
}

/** The most multiply-adds a dense-head build takes on (estimated before it starts), and what that is in time. */
export const MAX_BUILD_WORK = 5e12;

/**
 * Multiply-adds the build will take, roughly: the head solve (M³/2), visiting every customer's
 * items once per item they hold (Σ distinct items²), and each tail item's β (M × its co-purchased
 * head items, at most M; bounded here by the head items its customers hold) and its M offers.
 */
function estimateWork(o: LargeBuildInput, pop: Int32Array, hpos: Int32Array, hptr: Int32Array, M: number): { total: number; head: number; largestCustomer: number } {
  const { ptr } = o.lists;
  let visits = 0;
  let largestCustomer = 0;
  for (let u = 0; u + 1 < ptr.length; u++) {
    const b = ptr[u + 1]! - ptr[u]!;
    visits += b * b;
    if (b > largestCustomer) largestCustomer = b;
  }
  let beta = 0;
  for (let i = 0; i < pop.length; i++) {
    if (pop[i] === 0 || hpos[i]! >= 0) continue;
    let h = 0;
    for (let a = o.cnt[i]!; a < o.cnt[i + 1]! && h < M; a++) h += hptr[o.users[a]! + 1]! - hptr[o.users[a]!]!;
    beta += M * (Math.min(h, M) + 2);
  }
  const head = M ** 3 / 2;
  return { total: head + visits + beta, head, largestCustomer };
}

/**
 * @example
 * ```ts
 * const r = buildLargeNeighborRows({ lists, cnt, users, headSize: 4096, l2: 100, width: 32, minSupport: 3, positiveOnly: true });
 * ```
 */
export function buildLargeNeighborRows(o: LargeBuildInput): LargeBuildResult {
  const { lists, cnt, users, l2, width, minSupport, positiveOnly } = o;
  const progress = o.onProgress ?? (() => {});
  const n = lists.nItems;
  const m = lists.ptr.length - 1;
  const { ptr, items } = lists;
  const pop = new Int32Array(n);
  for (let i = 0; i < n; i++) pop[i] = cnt[i + 1]! - cnt[i]!;
  // The head: the most-bought items, ties to the lower index.
  const active: number[] = [];
  for (let i = 0; i < n; i++) if (pop[i]! > 0) active.push(i);
  active.sort((a, b) => pop[b]! - pop[a]! || a - b);
  const head = Int32Array.from(active.slice(0, Math.max(0, Math.min(o.headSize, active.length))));
  const M = head.length;
  const hpos = new Int32Array(n).fill(-1);
  for (let k = 0; k < M; k++) hpos[head[k]!] = k;

  // Each customer's head items, as head positions (X_D).
  const hptr = new Int32Array(m + 1);
  for (let u = 0; u < m; u++) {
    let h = 0;
    for (let e = ptr[u]!; e < ptr[u + 1]!; e++) if (hpos[items[e]!]! >= 0) h++;
    hptr[u + 1] = hptr[u]! + h;
  }
  const hitems = new Int32Array(hptr[m]!);
  for (let u = 0, f = 0; u < m; u++) for (let e = ptr[u]!; e < ptr[u + 1]!; e++) if (hpos[items[e]!]! >= 0) hitems[f++] = hpos[items[e]!]!;

  // What the build will cost, before any of it: refused when it is beyond reason (a customer
  // account holding most of the catalog makes every tail item's β cost headSize²).
  const work = estimateWork(o, pop, hpos, hptr, M);
  if (work.total > MAX_BUILD_WORK) {
    throw new ValidationError(
      'neighbors.denseMax',
      `this log needs about ${work.total.toExponential(1)} multiply-adds with ${M.toLocaleString('en-US')} items in the exact solve (${work.head.toExponential(1)} for that solve, ${(work.total - work.head).toExponential(1)} for the other ${(active.length - M).toLocaleString('en-US')} items; the largest customer holds ${work.largestCustomer.toLocaleString('en-US')} distinct items); at most ${MAX_BUILD_WORK.toExponential(0)} (hours on one core) are taken on: lower --dense-max (denseMax), or leave accounts that are not one customer out of the log`,
    );
  }
  // Exact EASE over the head: P_D = (G_DD + λI)⁻¹, the lower triangle filled, then inverted in place.
  const denseLabel = `solving EASE over the ${M.toLocaleString('en-US')} most-bought items`;
  const p = new Float64Array(M * M);
  for (let u = 0; u < m; u++) {
    for (let a = hptr[u]!; a < hptr[u + 1]!; a++) {
      const row = hitems[a]! * M;
      const ka = hitems[a]!;
      for (let b = hptr[u]!; b < hptr[u + 1]!; b++) if (hitems[b]! <= ka) p[row + hitems[b]!]++;
    }
  }
  for (let k = 0; k < M; k++) p[k * M + k] += l2;
  if (M > 0) invertSpdInPlace(p, M, (f) => progress(f, denseLabel));
  progress(1, denseLabel);
  const pd = new Float64Array(M);
  for (let k = 0; k < M; k++) pd[k] = p[k * M + k]!;

  const sparseLabel = `neighbours of ${active.length.toLocaleString('en-US')} items, ${(active.length - M).toLocaleString('en-US')} of them outside EASE`;
  const floored = new TopRows(n, width, positiveOnly);
  // What a row would keep without the floor, for droppedForSupport: one tail row at a time, and
  // every head row (its tail candidates arrive while the tail is visited).
  const unfloored = new TopRows(1, width, positiveOnly);
  const headUnfloored = new TopRows(M, width, positiveOnly);
  /** Customers who have both i and j, for the j in touched[0 … nt) (all zero again after each row). */
  const together = new Int32Array(n);
  const touched = new Int32Array(n);
  /** β = P_D g_i for the tail row i, dense over the head. */
  const beta = new Float64Array(M);
  /** The head's prediction of tail row i for customer u, where predictedFor[u] is the row's step. */
  const prediction = new Float64Array(m);
  const predictedFor = new Int32Array(m).fill(-1);
  let dropped = 0;
  // Tail rows first (they hand the head rows their tail candidates), then head rows.
  const order = [...active.slice(M), ...active.slice(0, M)];
  for (let step = 0; step < order.length; step++) {
    const i = order[step]!;
    let nt = 0;
    for (let a = cnt[i]!; a < cnt[i + 1]!; a++) {
      const u = users[a]!;
      for (let e = ptr[u]!; e < ptr[u + 1]!; e++) {
        const j = items[e]!;
        if (together[j]++ === 0) touched[nt++] = j;
      }
    }
    const hi = hpos[i]!;
    if (hi >= 0) {
      // Head row: EASE over the head, B[i, e] = −P_ie / P_ee, and the tail candidates handed over.
      const row = hi * M;
      for (let k = 0; k < M; k++) {
        if (k === hi) continue;
        const v = -p[row + k]! / pd[k]!;
        const j = head[k]!;
        headUnfloored.offer(hi, j, v);
        if (together[j]! >= minSupport) floored.offer(i, j, v);
      }
      const base = hi * width;
      for (let s = 0; s < headUnfloored.size[hi]!; s++) if (together[headUnfloored.index[base + s]!]! < minSupport) dropped++;
    } else {
      // Tail row. β = P_D g_i, g_i = i's co-purchase counts with the head items.
      beta.fill(0);
      for (let t = 0; t < nt; t++) {
        const k = hpos[touched[t]!]!;
        if (k >= 0) axpy(beta, p, k * M, together[touched[t]!]!, M);
      }
      const scale = 1 / (pop[i]! + l2);
      unfloored.clear(0);
      for (let k = 0; k < M; k++) {
        const b = beta[k]!;
        if (b === 0) continue;
        const j = head[k]!;
        const supported = together[j]! >= minSupport;
        headUnfloored.offer(k, i, b);
        if (supported) floored.offer(j, i, b);
        const v = (b / pd[k]!) * scale;
        unfloored.offer(0, j, v);
        if (supported) floored.offer(i, j, v);
      }
      for (let s = 0; s < unfloored.size[0]!; s++) if (together[unfloored.index[s]!]! < minSupport) dropped++;
      for (let t = 0; t < nt; t++) {
        const j = touched[t]!;
        if (j === i || hpos[j]! >= 0 || together[j]! < minSupport) continue;
        let predicted = 0;
        for (let a = cnt[j]!; a < cnt[j + 1]!; a++) {
          const u = users[a]!;
          if (predictedFor[u] !== step) {
            let y = 0;
            for (let e = hptr[u]!; e < hptr[u + 1]!; e++) y += beta[hitems[e]!]!;
            prediction[u] = y;
            predictedFor[u] = step;
          }
          predicted += prediction[u]!;
        }
        floored.offer(i, j, (together[j]! - predicted) * scale);
      }
    }
    for (let t = 0; t < nt; t++) together[touched[t]!] = 0;
    if ((step & 1023) === 0) progress(step / order.length, sparseLabel);
  }
  progress(1, sparseLabel);
  let inHead = 0;
  for (let k = 0; k < M; k++) inHead += pop[head[k]!]!;
  const denseShare = lists.items.length > 0 ? inHead / lists.items.length : 1;
  return { index: floored.index, weight: Float32Array.from(floored.weight), denseItems: M, denseShare, droppedForSupport: dropped };
}
