/**
 * iALS baseline (Hu, Koren & Volinsky 2008, "Collaborative Filtering for Implicit Feedback
 * Datasets"): user and item factors X, Y minimising
 *
 *   Σ_{u,i} c_ui (p_ui − x_uᵀy_i)² + reg · (Σ‖x_u‖² + Σ‖y_i‖²),
 *
 * with p_ui = 1 for a training pair and 0 otherwise, and confidence c_ui = 1 + alpha · r_ui for a
 * training pair (1 otherwise). r_ui is the user's history weight (1 with plain history; recency
 * and confidence weighting as in {@link weightedHistory}). Alternating exact least squares in
 * Float64: each user's x_u = (YᵀY + Yᵀ(C_u − I)Y + reg·I)⁻¹ Yᵀ C_u p(u) by Cholesky, YᵀY shared by
 * all users, so a row costs O(dim² · n_u + dim³); items likewise with X. Fitted on the split's
 * training histories only (never the held-out items); a user is scored by their fitted factor.
 */
import { ValidationError } from '../errors.js';
import { Random } from '../model/random.js';
import type { EvalModel } from './eval-model.js';
import { checkWeighting, NO_WEIGHTING, weightedHistory, type HistoryWeighting } from './history-weighting.js';
import type { Split } from './split.js';

export interface IalsOptions {
  /** Number of factors. */
  dim: number;
  /** L2 penalty on every user and item factor (> 0). */
  reg: number;
  /** Confidence of a training pair: 1 + alpha · r_ui. */
  alpha: number;
  /** Alternations (one user solve and one item solve each). */
  iters: number;
  /** Seed of the item factors' initialisation. */
  seed: number;
  /** How r_ui is taken from the user's history (default: plain, r_ui = 1). */
  weighting?: HistoryWeighting;
}

/** The largest `dim` accepted (a dim² matrix per solve). */
export const MAX_IALS_DIM = 1024;

/** Checks iALS options, naming the option on error. */
export function checkIalsOptions(o: IalsOptions): IalsOptions {
  if (!(Number.isInteger(o.dim) && o.dim >= 1 && o.dim <= MAX_IALS_DIM)) {
    throw new ValidationError('options.dim', `must be an integer in [1, ${MAX_IALS_DIM}], got ${o.dim}`);
  }
  if (!(Number.isFinite(o.reg) && o.reg > 0)) throw new ValidationError('options.reg', `must be a finite number > 0, got ${o.reg}`);
  if (!(Number.isFinite(o.alpha) && o.alpha >= 0)) throw new ValidationError('options.alpha', `must be a finite number ≥ 0, got ${o.alpha}`);
  if (!(Number.isInteger(o.iters) && o.iters >= 1)) throw new ValidationError('options.iters', `must be an integer ≥ 1, got ${o.iters}`);
  if (!Number.isInteger(o.seed)) throw new ValidationError('options.seed', `must be an integer, got ${o.seed}`);
  if (o.weighting) checkWeighting(o.weighting, 'options');
  return o;
}

/**
 * @example
 * ```ts
 * const m = new IalsModel({ dim: 64, reg: 1, alpha: 10, iters: 15, seed: 1 });
 * m.fit(split, () => {});
 * m.losses; // the objective after each alternation, non-increasing
 * ```
 */
export class IalsModel implements EvalModel {
  readonly name = 'ials';
  private x = new Float64Array(0);
  private y = new Float64Array(0);
  private readonly lossHistory: number[] = [];
  constructor(private readonly o: IalsOptions) {
    checkIalsOptions(o);
  }

  /** The item factors ship: dim float32 per item. */
  get bytesPerItem(): number {
    return this.o.dim * 4;
  }

  /** The objective (weighted squared error + reg · squared norms) after each alternation of the last fit. */
  get losses(): readonly number[] {
    return this.lossHistory;
  }

  fit(split: Split, onProgress: (f: number) => void): void {
    const d = this.o.dim;
    const m = split.userIds.length;
    const n = split.itemIds.length;
    const { ptr, items } = split.train;
    const w = this.o.weighting ?? NO_WEIGHTING;
    // alpha · r_ui per training pair, user-major (the split's order) and item-major (its transpose).
    const aU = new Float64Array(items.length);
    for (let u = 0; u < m; u++) {
      if (ptr[u + 1] === ptr[u]) continue;
      const h = weightedHistory(split.train, u, w);
      for (let e = 0; e < h.weights.length; e++) aU[ptr[u] + e] = this.o.alpha * h.weights[e];
    }
    const iPtr = new Int32Array(n + 1);
    for (let e = 0; e < items.length; e++) iPtr[items[e] + 1]++;
    for (let i = 0; i < n; i++) iPtr[i + 1] += iPtr[i];
    const fill = iPtr.slice(0, n);
    const iUsers = new Int32Array(items.length);
    const aI = new Float64Array(items.length);
    for (let u = 0; u < m; u++) {
      for (let e = ptr[u]; e < ptr[u + 1]; e++) {
        const at = fill[items[e]]++;
        iUsers[at] = u;
        aI[at] = aU[e];
      }
    }

    const rng = new Random(this.o.seed);
    const sd = 0.1 / Math.sqrt(d);
    this.x = new Float64Array(m * d);
    this.y = Float64Array.from({ length: n * d }, () => sd * rng.normal());
    this.lossHistory.length = 0;
    const solver = new RowSolver(d, this.o.reg);
    const iters = this.o.iters;
    for (let it = 0; it < iters; it++) {
      solver.solveSide(ptr, items, aU, this.y, n, this.x, m, (f) => onProgress((it + 0.5 * f) / iters));
      solver.solveSide(iPtr, iUsers, aI, this.x, m, this.y, n, (f) => onProgress((it + 0.5 + 0.5 * f) / iters));
      this.lossHistory.push(this.loss(ptr, items, aU, m, n));
    }
    onProgress(1);
  }

  score(user: number, out: Float32Array): void {
    const d = this.o.dim;
    const x = this.x.subarray(user * d, user * d + d);
    const y = this.y;
    for (let j = 0, r = 0; j < out.length; j++, r += d) {
      let s = 0;
      for (let k = 0; k < d; k++) s += x[k] * y[r + k];
      out[j] = s;
    }
  }

  /**
   * Σ_all (x_uᵀy_i)² is trace(XᵀX · YᵀY); the training pairs then add c(1 − s)² − s² each.
   */
  private loss(ptr: Int32Array, items: Int32Array, a: Float64Array, m: number, n: number): number {
    const d = this.o.dim;
    const gx = gram(this.x, m, d);
    const gy = gram(this.y, n, d);
    let total = 0;
    for (let k = 0; k < d * d; k++) total += gx[k] * gy[k];
    for (let u = 0; u < m; u++) {
      const xo = u * d;
      for (let e = ptr[u]; e < ptr[u + 1]; e++) {
        const yo = items[e] * d;
        let s = 0;
        for (let k = 0; k < d; k++) s += this.x[xo + k] * this.y[yo + k];
        total += (1 + a[e]) * (1 - s) * (1 - s) - s * s;
      }
    }
    let norms = 0;
    for (let k = 0; k < m * d; k++) norms += this.x[k] * this.x[k];
    for (let k = 0; k < n * d; k++) norms += this.y[k] * this.y[k];
    return total + this.o.reg * norms;
  }
}

/** FᵀF for F with `rows` rows of `d`, full d × d, row-major. */
function gram(f: Float64Array, rows: number, d: number): Float64Array {
  const g = new Float64Array(d * d);
  for (let r = 0; r < rows; r++) {
    const o = r * d;
    for (let p = 0; p < d; p++) {
      const fp = f[o + p];
      if (fp === 0) continue;
      const gp = p * d;
      for (let q = 0; q <= p; q++) g[gp + q] += fp * f[o + q];
    }
  }
  for (let p = 0; p < d; p++) for (let q = 0; q < p; q++) g[q * d + p] = g[p * d + q];
  return g;
}

/** One side of an alternation: every row's exact least-squares solve against the other side's factors. */
class RowSolver {
  private readonly a: Float64Array;
  private readonly b: Float64Array;
  constructor(
    private readonly d: number,
    private readonly reg: number,
  ) {
    this.a = new Float64Array(d * d);
    this.b = new Float64Array(d);
  }

  /**
   * For every row r of `out`: out_r = (FᵀF + Σ_e a_e f_e f_eᵀ + reg·I)⁻¹ Σ_e (1 + a_e) f_e, over
   * its entries e (CSR `ptr`/`idx` into the `nOther` rows of `other`, weights `alphaR`).
   */
  solveSide(
    ptr: Int32Array,
    idx: Int32Array,
    alphaR: Float64Array,
    other: Float64Array,
    nOther: number,
    out: Float64Array,
    rows: number,
    onProgress: (f: number) => void,
  ): void {
    const d = this.d;
    const { a, b } = this;
    const g = gram(other, nOther, d);
    for (let r = 0; r < rows; r++) {
      const o = r * d;
      if (ptr[r + 1] === ptr[r]) {
        // No entries: b = 0, so the solution is 0.
        out.fill(0, o, o + d);
        continue;
      }
      // Lower triangle only: A = G + reg·I + Σ a_e f fᵀ, b = Σ (1 + a_e) f.
      for (let p = 0; p < d; p++) {
        const gp = p * d;
        for (let q = 0; q <= p; q++) a[gp + q] = g[gp + q];
        a[gp + p] += this.reg;
      }
      b.fill(0);
      for (let e = ptr[r]; e < ptr[r + 1]; e++) {
        const fo = idx[e] * d;
        const ae = alphaR[e];
        const ce = 1 + ae;
        for (let p = 0; p < d; p++) {
          const fp = other[fo + p];
          b[p] += ce * fp;
          if (ae === 0 || fp === 0) continue;
          const afp = ae * fp;
          const gp = p * d;
          for (let q = 0; q <= p; q++) a[gp + q] += afp * other[fo + q];
        }
      }
      choleskySolveInPlace(a, b, d);
      for (let p = 0; p < d; p++) out[o + p] = b[p];
      if ((r & 255) === 0) onProgress(r / rows);
    }
    onProgress(1);
  }
}

/**
 * Solves A x = b for symmetric positive-definite A given by its lower triangle (row-major, d × d):
 * A is overwritten by its Cholesky factor L, b by x.
 */
function choleskySolveInPlace(a: Float64Array, b: Float64Array, d: number): void {
  for (let i = 0; i < d; i++) {
    const ri = i * d;
    for (let j = 0; j <= i; j++) {
      const rj = j * d;
      let s = a[ri + j];
      for (let k = 0; k < j; k++) s -= a[ri + k] * a[rj + k];
      if (j === i) {
        // reg > 0 keeps A positive definite; a tiny floor guards against round-off only.
        a[ri + i] = Math.sqrt(Math.max(s, 1e-300));
      } else {
        a[ri + j] = s / a[rj + j];
      }
    }
  }
  // L z = b, then Lᵀ x = z.
  for (let i = 0; i < d; i++) {
    const ri = i * d;
    let s = b[i];
    for (let k = 0; k < i; k++) s -= a[ri + k] * b[k];
    b[i] = s / a[ri + i];
  }
  for (let i = d - 1; i >= 0; i--) {
    let s = b[i];
    for (let k = i + 1; k < d; k++) s -= a[k * d + i] * b[k];
    b[i] = s / a[i * d + i];
  }
}
