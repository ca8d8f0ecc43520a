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
 * needs it. (`createServer` checks the same on its options.)
 */
export function checkSubspaceFlags(aggregator: string, freezeBiases: boolean, subspaceScale: number | undefined): void {
  if (aggregator === 'subspace' && !freezeBiases) throw new ValidationError('--aggregator', 'subspace needs --freeze-biases (it federates the factors only; the biases stay as the shop set them)');
  if (subspaceScale !== undefined && aggregator !== 'subspace') throw new ValidationError('--subspace-scale', `needs --aggregator subspace (got ${aggregator})`);
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
 * The table the server publishes in subspace mode: the trained rows' factors set to
 * `scale · orthonormalColumns(Y, deflated against the biases)`, every other row's factors zero (they
 * are not part of the subspace; the biases rank them), biases unchanged. `Y` is the trained rows'
 * factor block (rows × dim): a round's combined update, or the initial table's factors for version 0.
 */
export function subspaceTable(base: ItemTable, Y: ArrayLike<number>, part: TrainedPart, scale: number, seed = 1): ItemTable {
  if (part.biases) throw new ValidationError('trainBiases', 'must be false with the subspace aggregator (the biases stay as the shop set them)');
  if (!(Number.isFinite(scale) && scale > 0)) throw new ValidationError('subspaceScale', `must be a finite number > 0, got ${scale}`);
  const d = base.dim;
  const Q = orthonormalColumns(Y, part.rows, d, biasDirection(base, part.rows), seed);
  const factors = new Float32Array(base.itemIds.length * d);
  for (let i = 0; i < part.rows * d; i++) factors[i] = scale * Q[i]!;
  return { version: base.version, itemIds: base.itemIds, dim: d, factors, bias: base.bias };
}

/**
 * A device's subspace update before noise: `C · a (aᵀF) / ‖a (aᵀF)‖` over the trained rows
 * (row-major, rows × dim; F the published factors), where `a` holds the history's weights on the
 * trained rows. Its L2 norm is exactly `clip`, or it is null when the history has no weight on the
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
  // p = aᵀF; ‖a ⊗ p‖ = ‖a‖·‖p‖, so the scale below makes the update's norm exactly C.
  const p = new Float64Array(d);
  let aa = 0;
  for (const [row, w] of a) {
    aa += w * w;
    for (let k = 0; k < d; k++) p[k] += w * table.factors[row * d + k]!;
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
