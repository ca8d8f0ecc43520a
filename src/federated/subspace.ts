/**
 * Federated subspace iteration (`aggregator: 'subspace'`): instead of training locally and sending
 * a delta, each device sends one noisy step of a power iteration on the item co-occurrence of all
 * shoppers, and the server orthonormalizes the sum.
 *
 * The published factors of the trained rows are `scale · Q`, Q (rows × dim) with orthonormal
 * columns, all orthogonal to the bias direction (the frozen popularity biases already rank by
 * popularity, so the factors spend their dimensions on what popularity does not explain). A
 * device with history weights `a` over the trained rows, normalized to ‖a‖ = 1, sends
 *
 *     U = C · a (aᵀQ) / ‖aᵀQ‖        (an outer product: rows × dim, ‖U‖ = C exactly)
 *
 * plus its DP noise. The sum over devices is Σ w·a aᵀQ, the shoppers' item co-occurrence times Q
 * with each shopper's term weighted (w = C/‖aᵀQ‖) so that it has norm C; orthonormalizing it is
 * one step of subspace iteration, so after a few rounds Q spans the leading eigenvectors of that
 * weighted co-occurrence (what PureSVD's item factors span, up to the weights). Scores on the
 * device are then `b + scale² · Q Qᵀ ã` (ã the history's weights over their sum), the usual
 * `b + V·z` with z the weighted mean of the history's factors: nothing changes on the scoring side.
 *
 * Why it is the better use of a privacy budget than local SGD: every device's update has norm
 * exactly C (no clipping bias, no wasted norm) and the whole budget goes to the one statistic the
 * model is made of. Measured figures: docs/FEDERATED.md.
 */
import { ValidationError } from '../errors.js';
import type { ItemTable } from '../model/item-table.js';
import { Random } from '../model/random.js';
import type { TrainedPart } from './client-update.js';

/** Default `subspaceScale`: the factors' scale, which sets personalization against popularity. */
export const DEFAULT_SUBSPACE_SCALE = 32;

/**
 * The command-line rules of the subspace aggregator, shared by `localrec serve` and `localrec
 * simulate` so that the error names the flag: it needs `--freeze-biases`, and `--subspace-scale`
 * and `--denoise directions` need it. (`createServer` checks the same on its options.)
 */
export function checkSubspaceFlags(aggregator: string, freezeBiases: boolean, subspaceScale: number | undefined, denoise?: string): void {
  if (aggregator === 'subspace' && !freezeBiases) throw new ValidationError('--aggregator', 'subspace needs --freeze-biases (it federates the factors only; the biases stay as the shop set them)');
  if (subspaceScale !== undefined && aggregator !== 'subspace') throw new ValidationError('--subspace-scale', `needs --aggregator subspace (got ${aggregator})`);
  if (denoise === 'directions' && aggregator !== 'subspace') throw new ValidationError('--denoise', `directions needs --aggregator subspace (got ${aggregator})`);
}

/**
 * The unit vector along the trained rows' biases: the direction the factors are kept orthogonal
 * to. Zero (no deflation) when the biases are all zero.
 */
export function biasDirection(table: Pick<ItemTable, 'bias'>, rows: number): Float64Array {
  const p = new Float64Array(rows);
  let ss = 0;
  for (let r = 0; r < rows; r++) {
    p[r] = table.bias[r]!;
    ss += p[r]! * p[r]!;
  }
  if (ss > 0) {
    const inv = 1 / Math.sqrt(ss);
    for (let r = 0; r < rows; r++) p[r]! *= inv;
  }
  return p;
}

/**
 * Orthonormal columns spanning `Y` (rows × dim, row-major) with each column first made orthogonal
 * to the unit vector `p` (when given): modified Gram–Schmidt, twice for accuracy. A column that
 * vanishes (Y rank-deficient) is replaced by a seeded random direction orthogonal to the others,
 * so the result always has `dim` orthonormal columns. Works in place on a copy; returns it.
 *
 * @example
 * ```ts
 * const Q = orthonormalColumns(Float64Array.from([3, 0, 4, 0, 0, 1]), 3, 2);
 * // columns (0.6, 0.8, 0) and (0, 0, 1)
 * ```
 */
export function orthonormalColumns(Y: ArrayLike<number>, rows: number, dim: number, p?: Float64Array, seed = 1): Float64Array {
  if (Y.length !== rows * dim) throw new ValidationError('subspace', `has ${Y.length} values; ${rows} rows × ${dim} need ${rows * dim}`);
  if (dim > rows - (p ? 1 : 0)) throw new ValidationError('subspace', `${dim} orthonormal columns do not fit in ${rows} rows${p ? ' (one direction is the biases)' : ''}`);
  const Q = Float64Array.from(Y);
  const project = (j: number, v: ArrayLike<number>, stride: number, col: number) => {
    let dot = 0;
    for (let i = 0; i < rows; i++) dot += Q[i * dim + j]! * v[i * stride + col]!;
    for (let i = 0; i < rows; i++) Q[i * dim + j]! -= dot * v[i * stride + col]!;
  };
  let rng: Random | undefined;
  for (let j = 0; j < dim; j++) {
    let scaleBefore = 0;
    for (let i = 0; i < rows; i++) scaleBefore += Q[i * dim + j]! ** 2;
    for (let attempt = 0; ; attempt++) {
      for (let pass = 0; pass < 2; pass++) {
        if (p) project(j, p, 1, 0);
        for (let k = 0; k < j; k++) project(j, Q, dim, k);
      }
      let nn = 0;
      for (let i = 0; i < rows; i++) nn += Q[i * dim + j]! ** 2;
      // Relative to what the column had: below 1e-20 of it, what is left is rounding.
      if (nn > 1e-20 * Math.max(scaleBefore, 1e-300) && nn > 0) {
        const inv = 1 / Math.sqrt(nn);
        for (let i = 0; i < rows; i++) Q[i * dim + j]! *= inv;
        break;
      }
      if (attempt > 8) throw new ValidationError('subspace', `cannot find ${dim} orthonormal columns in ${rows} rows`);
      rng ??= new Random(seed);
      scaleBefore = 0;
      for (let i = 0; i < rows; i++) {
        Q[i * dim + j] = rng.normal();
        scaleBefore += Q[i * dim + j]! ** 2;
      }
    }
  }
  return Q;
}

/**
 * Eigen-decomposition of a symmetric n × n matrix (row-major) by cyclic Jacobi rotations: the
 * eigenvalues in descending order and the eigenvectors as the columns of `vectors` (row-major).
 * For the small Gram matrices of {@link shrinkDirections} (n = dim ≤ 256).
 */
export function symmetricEigen(A: ArrayLike<number>, n: number): { values: Float64Array; vectors: Float64Array } {
  const a = Float64Array.from(A);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    let diag = 0;
    for (let i = 0; i < n; i++) {
      diag += a[i * n + i]! ** 2;
      for (let j = i + 1; j < n; j++) off += a[i * n + j]! ** 2;
    }
    if (off <= 1e-30 * Math.max(diag, 1e-300)) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q]!;
        if (apq === 0) continue;
        const theta = (a[q * n + q]! - a[p * n + p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const sn = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p]!;
          const akq = a[k * n + q]!;
          a[k * n + p] = c * akp - sn * akq;
          a[k * n + q] = sn * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k]!;
          const aqk = a[q * n + k]!;
          a[p * n + k] = c * apk - sn * aqk;
          a[q * n + k] = sn * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p]!;
          const vkq = v[k * n + q]!;
          v[k * n + p] = c * vkp - sn * vkq;
          v[k * n + q] = sn * vkp + c * vkq;
        }
      }
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((x, y) => a[y * n + y]! - a[x * n + x]!);
  const values = Float64Array.from(order, (i) => a[i * n + i]!);
  const vectors = new Float64Array(n * n);
  for (let r = 0; r < n; r++) order.forEach((i, col) => (vectors[r * n + col] = v[r * n + i]!));
  return { values, vectors };
}

/**
 * The smallest weight {@link shrinkDirections} gives a direction. Not zero: a device's step is
 * computed on the published factors' directions (see {@link subspaceUpdate}), so a direction must
 * stay visible to be iterated on; at 0.01 its share of a score is 10⁻⁴ of a full-weight one.
 */
export const MIN_DIRECTION_WEIGHT = 0.01;

/**
 * Shrinks each direction of a noisy subspace step for the noise it is known to carry
 * (`denoise: 'directions'`; post-processing, no privacy cost). `Y` (rows × dim) is the round's mean
 * update, deflated against `p`; each of its values carries independent noise of variance
 * `noiseVar`. Y's principal directions (eigenvectors of YᵀY, λ₁ ≥ … ≥ λ_dim) are kept, and
 * direction k is weighted by wₖ = √(max(0, λₖ − edge) / λₖ), where edge = noiseVar·(√rows + √dim)²
 * is the largest λ pure noise of that variance would reach (the Marchenko–Pastur edge), and at least
 * {@link MIN_DIRECTION_WEIGHT}. A direction the noise could explain alone gets that floor, or a
 * small weight when a pure-noise eigenvalue lands just past the edge (about one round in six for
 * the top one, by Tracy–Widom; its weight then stays under about 0.45 at 20 rows × 4, less with
 * more rows), so at a small ε the factors fade and the frozen biases (popularity) rank almost on
 * their own instead of ranking by noise. Returns the directions (rows × dim, not yet orthonormalized, strongest first)
 * and their weights.
 */
export function shrinkDirections(Y: ArrayLike<number>, rows: number, dim: number, noiseVar: number, p?: Float64Array): { directions: Float64Array; weights: Float64Array } {
  const M = Float64Array.from(Y);
  if (p) {
    for (let k = 0; k < dim; k++) {
      let dot = 0;
      for (let i = 0; i < rows; i++) dot += M[i * dim + k]! * p[i]!;
      for (let i = 0; i < rows; i++) M[i * dim + k]! -= dot * p[i]!;
    }
  }
  const G = new Float64Array(dim * dim);
  for (let i = 0; i < rows; i++) {
    for (let a = 0; a < dim; a++) {
      const ma = M[i * dim + a]!;
      if (ma === 0) continue;
      for (let b = a; b < dim; b++) G[a * dim + b] += ma * M[i * dim + b]!;
    }
  }
  for (let a = 0; a < dim; a++) for (let b = 0; b < a; b++) G[a * dim + b] = G[b * dim + a]!;
  const { values, vectors } = symmetricEigen(G, dim);
  const directions = new Float64Array(rows * dim);
  for (let i = 0; i < rows; i++) {
    for (let k = 0; k < dim; k++) {
      let x = 0;
      for (let a = 0; a < dim; a++) x += M[i * dim + a]! * vectors[a * dim + k]!;
      directions[i * dim + k] = x;
    }
  }
  const edge = noiseVar * (Math.sqrt(rows) + Math.sqrt(dim)) ** 2;
  const weights = Float64Array.from(values, (l) => Math.max(MIN_DIRECTION_WEIGHT, l > edge ? Math.sqrt((l - edge) / l) : 0));
  return { directions, weights };
}

/**
 * The table the server publishes in subspace mode: the trained rows' factors set to
 * `scale · orthonormalColumns(Y, deflated against the biases)`, every other row's factors zero (they
 * are not part of the subspace; the biases rank them), biases unchanged. `Y` is the trained rows'
 * factor block (rows × dim): a round's combined update, or the initial table's factors for version 0.
 * With `noiseVar` (the variance of the noise in each value of Y; `denoise: 'directions'`) the
 * columns are Y's principal directions, each scaled by its {@link shrinkDirections} weight
 * (returned as `directionWeights`).
 */
export function subspaceTable(base: ItemTable, Y: ArrayLike<number>, part: TrainedPart, scale: number, seed = 1, noiseVar?: number): ItemTable & { directionWeights?: Float64Array } {
  if (part.biases) throw new ValidationError('trainBiases', 'must be false with the subspace aggregator (the biases stay as the shop set them)');
  // Factors are at most the scale in magnitude; devices refuse a model beyond MAX_MODEL_MAGNITUDE.
  if (!(Number.isFinite(scale) && scale > 0 && scale <= 1e4)) throw new ValidationError('subspaceScale', `must be a number in (0, 10000], got ${scale}`);
  const d = base.dim;
  const p = biasDirection(base, part.rows);
  let Q: Float64Array;
  let w: Float64Array | undefined;
  if (noiseVar !== undefined && noiseVar > 0) {
    const shrunk = shrinkDirections(Y, part.rows, d, noiseVar, p);
    Q = orthonormalColumns(shrunk.directions, part.rows, d, p, seed);
    w = shrunk.weights;
  } else {
    Q = orthonormalColumns(Y, part.rows, d, p, seed);
  }
  const factors = new Float32Array(base.itemIds.length * d);
  for (let i = 0; i < part.rows * d; i++) factors[i] = scale * Q[i]! * (w ? w[i % d]! : 1);
  return { version: base.version, itemIds: base.itemIds, dim: d, factors, bias: base.bias, ...(w ? { directionWeights: w } : {}) };
}

/**
 * A device's subspace update before noise: `C · a (aᵀQ) / ‖a (aᵀQ)‖` over the trained rows
 * (row-major, rows × dim; Q the published factors F with each column scaled to unit norm), where
 * `a` holds the history's weights on the trained rows. Its L2 norm is exactly `clip`, or it is null when the history has no weight on the
 * trained rows or lies entirely outside the factors' span (nothing to send).
 *
 * @example
 * ```ts
 * const u = subspaceUpdate(global, part, [{ row: 3, weight: 1 }, { row: 9, weight: 2 }], 1);
 * // Float64Array(part.rows × dim), ‖u‖ = 1
 * ```
 */
export function subspaceUpdate(table: ItemTable, part: TrainedPart, history: ReadonlyArray<{ row: number; weight: number }>, clip: number): Float64Array | null {
  const d = table.dim;
  const a = new Map<number, number>();
  for (const { row, weight } of history) {
    if (!(row >= 0 && row < part.rows) || !(weight > 0) || !Number.isFinite(weight)) continue;
    a.set(row, (a.get(row) ?? 0) + weight);
  }
  if (a.size === 0) return null;
  // The step is taken on F's directions, each column scaled to unit norm over the trained rows:
  // with `denoise: 'directions'` the server publishes F = scale·Q·diag(w), and the weights are for
  // scoring only; the iteration itself stays the plain one on Q. (Without it every column has norm
  // `scale`, and this changes nothing: the step is normalized anyway.)
  const colNorm = new Float64Array(d);
  for (let r = 0; r < part.rows; r++) for (let k = 0; k < d; k++) colNorm[k] += table.factors[r * d + k]! ** 2;
  for (let k = 0; k < d; k++) colNorm[k] = colNorm[k]! > 0 ? 1 / Math.sqrt(colNorm[k]!) : 0;
  // p = aᵀQ; ‖a ⊗ p‖ = ‖a‖·‖p‖, so the scale below makes the update's norm exactly C.
  const p = new Float64Array(d);
  let aa = 0;
  for (const [row, w] of a) {
    aa += w * w;
    for (let k = 0; k < d; k++) p[k] += w * table.factors[row * d + k]! * colNorm[k]!;
  }
  let pp = 0;
  for (let k = 0; k < d; k++) pp += p[k]! * p[k]!;
  const norm = Math.sqrt(aa * pp);
  if (!(norm > 0) || !Number.isFinite(norm)) return null;
  const s = clip / norm;
  const out = new Float64Array(part.rows * d);
  for (const [row, w] of a) for (let k = 0; k < d; k++) out[row * d + k] = s * w * p[k]!;
  return out;
}
