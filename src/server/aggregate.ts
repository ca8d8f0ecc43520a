/**
 * Server-side optimizers that turn a round's client deltas into the next global table:
 * FedAvg (McMahan et al. 2017) and FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization"),
 * fed by the plain mean of the deltas or by a robust coordinate-wise estimate of it (trimmed mean,
 * median; Yin et al. 2018, "Byzantine-Robust Distributed Learning").
 * Pure functions over flat `n·(dim+1)` vectors (factors row-major, then biases).
 */
import type { TrainedPart } from '../federated/client-update.js';
import { logNormalCdf } from '../federated/dp.js';
import { levelsFor, scaleCount, UPDATE_HEADER_BYTES, type QuantizedUpdate, type UpdateHeader } from '../federated/wire.js';
import type { ItemTable } from '../model/item-table.js';

/**
 * `fedavg` and `fedadam` step from the mean of the devices' locally trained deltas; `subspace`
 * orthonormalizes the mean of their subspace-iteration updates (src/federated/subspace.ts).
 */
export type AggregatorName = 'fedavg' | 'fedadam' | 'subspace';

export const AGGREGATOR_NAMES: readonly AggregatorName[] = ['fedavg', 'fedadam', 'subspace'];

export function isAggregatorName(x: unknown): x is AggregatorName {
  return (AGGREGATOR_NAMES as readonly unknown[]).includes(x);
}

/**
 * How a round's deltas are combined per coordinate before the optimizer step: `mean` (plain
 * FedAvg/FedAdam), `trimmed-mean` (drop the ⌊β·M⌋ smallest and largest values of each coordinate,
 * average the rest) or `median`.
 */
export type RobustName = 'mean' | 'trimmed-mean' | 'median';

export const ROBUST_NAMES: readonly RobustName[] = ['mean', 'trimmed-mean', 'median'];

/** Default trim fraction β of `trimmed-mean`: 10 % from each end of every coordinate. */
export const DEFAULT_TRIM_FRACTION = 0.1;

export interface FedAdamOptions {
  /** Server learning rate η. Default 0.01. */
  lr: number;
  beta1: number;
  beta2: number;
  /** Adaptivity τ (added to √v). Default 1e-3. */
  tau: number;
}

export const DEFAULT_FEDADAM: FedAdamOptions = { lr: 0.01, beta1: 0.9, beta2: 0.99, tau: 1e-3 };

/**
 * Coordinate-wise mean of equally long deltas, in double precision.
 *
 * @example
 * ```ts
 * meanDelta([new Float32Array([1, 2]), new Float32Array([3, 4])]); // Float64Array [2, 3]
 * ```
 */
export function meanDelta(deltas: readonly Float32Array[]): Float64Array {
  const len = deltas[0]?.length ?? 0;
  const out = new Float64Array(len);
  for (const d of deltas) for (let i = 0; i < len; i++) out[i] = out[i]! + d[i]!;
  for (let i = 0; i < len; i++) out[i] = out[i]! / deltas.length;
  return out;
}

/**
 * Adds update `u`'s dequantized values into `acc` (`acc[i] += value i`): each value exactly as
 * `dequantizeUpdate` gives it (a float32), added in double precision as {@link meanDelta} adds it,
 * so that adding a round's updates one at a time, in its order, then dividing by their count gives
 * {@link meanDelta} of their `dequantizeUpdate`s bit for bit, without a float32 copy of each.
 *
 * @example
 * ```ts
 * const acc = new Float64Array(len);
 * for (const body of bodies) addDequantized(acc, decodeUpdate(body)); // then acc[i] / bodies.length
 * ```
 */
export function addDequantized(acc: Float64Array, u: QuantizedUpdate): void {
  const { itemCount: n, dim, blockSize, bits } = u.header;
  const len = n * (dim + 1);
  if (acc.length !== len) throw new RangeError(`an update of ${len} values cannot be added to a sum of ${acc.length}`);
  const L = levelsFor(bits);
  const nf = n * dim;
  const factorBlocks = Math.ceil(nf / blockSize);
  const { scales, codes } = u;
  // Block by block (factors, then biases, blocked separately), with the same expression per value
  // as dequantizeUpdate, rounded to float32 as its Float32Array stores it.
  for (let b0 = 0, block = 0; b0 < nf; b0 += blockSize, block++) {
    const s = scales[block]!;
    const end = Math.min(nf, b0 + blockSize);
    for (let i = b0; i < end; i++) acc[i] = acc[i]! + Math.fround((s * (codes[i]! - L)) / L);
  }
  for (let b0 = nf, block = factorBlocks; b0 < len; b0 += blockSize, block++) {
    const s = scales[block]!;
    const end = Math.min(len, b0 + blockSize);
    for (let i = b0; i < end; i++) acc[i] = acc[i]! + Math.fround((s * (codes[i]! - L)) / L);
  }
}

/**
 * Reads values of an update straight from its body (wire format: header, float32 scales, codes of
 * `bits` bits packed least significant bit first), as `dequantizeUpdate(decodeUpdate(body))`
 * would give them, without decoding the rest: what a trimmed mean or median holds of each update
 * of a round is its body as stored ({@link UpdateValues.fill}), not a float32 copy of the table.
 * The body must be one that {@link decodeUpdate} took (it checks nothing).
 */
export class UpdateValues {
  private readonly dv: DataView;
  private readonly L: number;
  private readonly nf: number;
  private readonly factorBlocks: number;
  private readonly codesAt: number;
  private readonly mask: number;

  constructor(
    private readonly body: Uint8Array,
    private readonly header: UpdateHeader,
  ) {
    const { itemCount: n, dim, blockSize, bits } = header;
    this.dv = new DataView(body.buffer, body.byteOffset, body.byteLength);
    this.L = levelsFor(bits);
    this.nf = n * dim;
    this.factorBlocks = Math.ceil(this.nf / blockSize);
    this.codesAt = UPDATE_HEADER_BYTES + 4 * scaleCount(n, dim, blockSize);
    this.mask = (1 << bits) - 1;
  }

  /** Values `start … start + count − 1` into `out` from `offset` (float32, as dequantizeUpdate stores them). */
  fill(start: number, count: number, out: Float32Array, offset: number): void {
    const { body, dv, L, nf, factorBlocks, codesAt, mask } = this;
    const { blockSize, bits } = this.header;
    let block = -1;
    let s = 0;
    for (let i = start; i < start + count; i++) {
      const b = i < nf ? Math.floor(i / blockSize) : factorBlocks + Math.floor((i - nf) / blockSize);
      if (b !== block) {
        block = b;
        s = dv.getFloat32(UPDATE_HEADER_BYTES + 4 * b, true);
      }
      // A code of ≤ 8 bits spans at most two bytes.
      const bit = i * bits;
      const at = codesAt + Math.floor(bit / 8);
      const c = ((body[at]! | ((body[at + 1] ?? 0) << 8)) >>> (bit % 8)) & mask;
      out[offset + i - start] = (s * (c - L)) / L;
    }
  }
}

/**
 * How many values `combineDeltas` drops from EACH end of a coordinate for M deltas: ⌊β·M⌋ for
 * `trimmed-mean`, ⌊(M − 1)/2⌋ for `median` (which keeps the middle one or two), 0 for `mean`.
 * As long as at most this many of the M deltas are dishonest, every value kept lies between two
 * honest values, so dishonest clients cannot move any coordinate beyond the honest range.
 *
 * @example
 * ```ts
 * trimCount('trimmed-mean', 100, 0.1); // 10
 * trimCount('median', 100); // 49 (keeps the 50th and 51st)
 * ```
 */
export function trimCount(robust: RobustName, m: number, trimFraction = DEFAULT_TRIM_FRACTION): number {
  if (robust === 'median') return Math.max(0, Math.floor((m - 1) / 2));
  if (robust === 'trimmed-mean') return Math.min(Math.floor(trimFraction * m + 1e-9), Math.max(0, Math.floor((m - 1) / 2)));
  return 0;
}

/**
 * How much more variance the round's robust estimate carries than the plain mean of the same M
 * values would, for independent Gaussian noise (the DP noise the denoisers remove): 1 for `mean`
 * (`trim` 0), π/2 for the median, and for a trimmed mean dropping `trim` of M per end (β = trim/M)
 * the asymptotic [(1 − 2β) − 2cφ(c) + 2βc²] / (1 − 2β)², c = Φ⁻¹(1 − β) (Huber, Robust Statistics,
 * §3.3), which runs from 1 at β = 0 to π/2 as β → ½.
 *
 * @example
 * ```ts
 * robustVarianceFactor('trimmed-mean', 100, 10); // ≈ 1.06
 * robustVarianceFactor('median', 100, 49); // π/2 ≈ 1.571
 * ```
 */
export function robustVarianceFactor(robust: RobustName, m: number, trim: number): number {
  if (robust === 'median') return Math.PI / 2;
  if (robust === 'mean' || !(trim > 0) || !(m > 0)) return 1;
  const beta = Math.min(trim / m, 0.5 - 1e-9);
  // c with Φ(−c) = β, by bisection on the log-CDF (accurate in the far tail too).
  const target = Math.log(beta);
  let lo = 0;
  let hi = 40;
  for (let i = 0; i < 200 && hi - lo > 1e-12; i++) {
    const mid = (lo + hi) / 2;
    if (logNormalCdf(-mid) > target) lo = mid;
    else hi = mid;
  }
  const c = (lo + hi) / 2;
  const phi = Math.exp(-0.5 * c * c) / Math.sqrt(2 * Math.PI);
  const kept = 1 - 2 * beta;
  return (kept - 2 * c * phi + 2 * beta * c * c) / (kept * kept);
}

/**
 * The variance stochastic rounding adds to a value of `u`'s factor section, averaged over it:
 * a value rounded to a grid of step s = scale/L at fractional position p gets variance p(1 − p)s²,
 * s²/6 on average over p. Post-processing like the DP noise, and next to it in the combined delta,
 * so the denoisers count it too (at 3 bits it is a sixth of the DP noise's variance or more).
 *
 * @example
 * ```ts
 * const rounding = updates.reduce((a, u) => a + roundingVariance(u), 0) / updates.length ** 2; // in their mean
 * ```
 */
export function roundingVariance(u: QuantizedUpdate): number {
  const { itemCount, dim, blockSize, bits } = u.header;
  const nf = itemCount * dim;
  if (nf === 0) return 0;
  const L = levelsFor(bits);
  let sum = 0;
  for (let b = 0; b * blockSize < nf; b++) {
    const count = Math.min(blockSize, nf - b * blockSize);
    const step = u.scales[b]! / L;
    sum += (count * step * step) / 6;
  }
  return sum / nf;
}

/**
 * Rearranges `a[lo..hi]` so that `a[k]` holds the value a sort would put there, everything before it
 * is ≤ and everything after it ≥ (Hoare's quickselect, median-of-three pivot; ties split evenly).
 */
function select(a: Float64Array, lo: number, hi: number, k: number): void {
  while (hi > lo) {
    const mid = (lo + hi) >>> 1;
    let x: number;
    if (a[mid]! < a[lo]!) ((x = a[mid]!), (a[mid] = a[lo]!), (a[lo] = x));
    if (a[hi]! < a[lo]!) ((x = a[hi]!), (a[hi] = a[lo]!), (a[lo] = x));
    if (a[hi]! < a[mid]!) ((x = a[hi]!), (a[hi] = a[mid]!), (a[mid] = x));
    const pivot = a[mid]!;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! < pivot) i++;
      while (a[j]! > pivot) j--;
      if (i <= j) {
        x = a[i]!;
        a[i] = a[j]!;
        a[j] = x;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return;
  }
}

/**
 * Coordinates per block of {@link trimmedMeanBlock}: the block's values of all M deltas are
 * gathered into one buffer (contiguous reads), then each coordinate's column into a scratch array.
 */
export const TRIM_BLOCK = 256;

/**
 * Writes `count` (≤ {@link TRIM_BLOCK}) values of delta `k`, from coordinate `start` on, into
 * `out` at `offset`: the source of the values {@link trimmedMeanBlock} combines.
 */
export type FillValues = (k: number, start: number, count: number, out: Float32Array, offset: number) => void;

/** Buffers for {@link trimmedMeanBlock} over M deltas, reused from block to block. */
export function trimScratch(m: number): { buf: Float32Array; col: Float64Array } {
  return { buf: new Float32Array(m * TRIM_BLOCK), col: new Float64Array(m) };
}

/**
 * One block of {@link trimmedMeanDelta}: coordinates `start … start + count − 1` (count ≤
 * {@link TRIM_BLOCK}) of the trimmed mean of `m` deltas whose values `fill` supplies, into `out`.
 * The round coordinator runs it block by block over values it decodes from the stored updates as
 * it goes (never M dequantized copies of the table), yielding to the event loop in between.
 */
export function trimmedMeanBlock(m: number, trim: number, start: number, count: number, fill: FillValues, scratch: { buf: Float32Array; col: Float64Array }, out: Float64Array): void {
  const { buf, col } = scratch;
  const keep = m - 2 * trim;
  for (let k = 0; k < m; k++) fill(k, start, count, buf, k * TRIM_BLOCK);
  for (let j = 0; j < count; j++) {
    for (let k = 0; k < m; k++) col[k] = buf[k * TRIM_BLOCK + j]!;
    // col[0..trim) become the trim smallest, then col(m−1−trim..m) the trim largest of the rest.
    select(col, 0, m - 1, trim);
    select(col, trim, m - 1, m - 1 - trim);
    let s = 0;
    for (let k = trim; k < m - trim; k++) s += col[k]!;
    out[start + j] = s / keep;
  }
}

/** Throws unless `trim` values can be dropped from each end of `m`. */
export function checkTrim(m: number, trim: number): void {
  if (!Number.isInteger(trim) || trim < 0 || m - 2 * trim < 1) throw new RangeError(`cannot trim ${trim} from each end of ${m} values`);
}

/**
 * Coordinate-wise trimmed mean: for every coordinate, drops the `trim` smallest and the `trim`
 * largest of the M values and averages the rest (double precision). `trim = 0` is the mean;
 * `trim = ⌊(M − 1)/2⌋` is the median. Two quickselects per coordinate, O(M) expected.
 *
 * @example
 * ```ts
 * trimmedMeanDelta([new Float32Array([1]), new Float32Array([2]), new Float32Array([100])], 1); // Float64Array [2]
 * ```
 */
export function trimmedMeanDelta(deltas: readonly Float32Array[], trim: number): Float64Array {
  const m = deltas.length;
  const len = deltas[0]?.length ?? 0;
  checkTrim(m, trim);
  if (trim === 0) return meanDelta(deltas);
  const out = new Float64Array(len);
  const scratch = trimScratch(m);
  const fill: FillValues = (k, start, count, buf, offset) => buf.set(deltas[k]!.subarray(start, start + count), offset);
  for (let start = 0; start < len; start += TRIM_BLOCK) trimmedMeanBlock(m, trim, start, Math.min(TRIM_BLOCK, len - start), fill, scratch, out);
  return out;
}

/**
 * The round's combined delta: mean, trimmed mean or median of the deltas, per coordinate.
 *
 * @example
 * ```ts
 * const step = combineDeltas(deltas, 'trimmed-mean', 0.1); // then applyFedAvg(current, step)
 * ```
 */
export function combineDeltas(deltas: readonly Float32Array[], robust: RobustName, trimFraction = DEFAULT_TRIM_FRACTION): Float64Array {
  return robust === 'mean' ? meanDelta(deltas) : trimmedMeanDelta(deltas, trimCount(robust, deltas.length, trimFraction));
}

/** Values a combine step handles between two looks at the event loop ({@link RoundCombiner.result}). */
const VALUES_PER_PAUSE = 1 << 21;

/**
 * A round's combined delta from its updates taken one at a time, in the round's order, equal bit
 * for bit to {@link combineDeltas} of their `dequantizeUpdate`s (the same float32 values, added
 * in the same order in double precision; the same quickselects over the same columns), without
 * holding M dequantized copies of the table:
 * - `mean` adds each update into one float64 sum as it comes ({@link addDequantized}) and keeps
 *   nothing of it: memory is the sum (8 bytes per coordinate) whatever the round's size;
 * - `trimmed-mean` and `median` need every value of a coordinate at once: they keep each update's
 *   body as stored (`bits`/8 bytes per coordinate: 1.7 MB for 100k items × 32 at 4 bits, where a
 *   float32 copy is 13 MB) and read the values from the bodies a block of coordinates at a time.
 *
 * @example
 * ```ts
 * const c = new RoundCombiner('mean', 0.1);
 * for (const body of bodies) c.add(body, decodeUpdate(body));
 * const { combined } = await c.result(); // = combineDeltas(bodies.map((b) => dequantizeUpdate(decodeUpdate(b))), 'mean')
 * ```
 */
export class RoundCombiner {
  private sum: Float64Array | null = null;
  private readonly kept: UpdateValues[] = [];
  private n = 0;
  private length = -1;

  constructor(
    readonly robust: RobustName,
    readonly trimFraction = DEFAULT_TRIM_FRACTION,
  ) {}

  /** Updates added so far. */
  get count(): number {
    return this.n;
  }

  /** Adds the next update: its body as stored and its decoding (`decodeUpdate(body)`). */
  add(body: Uint8Array, u: QuantizedUpdate): void {
    const len = u.header.itemCount * (u.header.dim + 1);
    if (this.length >= 0 && len !== this.length) throw new RangeError(`an update of ${len} values cannot be combined with updates of ${this.length}`);
    this.length = len;
    this.n++;
    if (this.robust === 'mean') {
      this.sum ??= new Float64Array(len);
      addDequantized(this.sum, u);
    } else this.kept.push(new UpdateValues(body, u.header));
  }

  /**
   * The combined delta, and how many values were dropped from each end of every coordinate
   * ({@link trimCount}). `pause` is awaited every couple of million values (the round coordinator
   * lets the event loop serve requests then).
   */
  async result(pause: () => Promise<void> = async () => {}): Promise<{ combined: Float64Array; trim: number }> {
    const m = this.n;
    const trim = trimCount(this.robust, m, this.trimFraction);
    checkTrim(m, trim);
    if (this.robust === 'mean') {
      const out = this.sum!;
      for (let i = 0; i < out.length; i++) out[i] = out[i]! / m;
      return { combined: out, trim };
    }
    const len = this.length;
    const kept = this.kept;
    const out = new Float64Array(len);
    const every = Math.max(1, Math.floor(VALUES_PER_PAUSE / (m * TRIM_BLOCK)));
    if (trim === 0) {
      // The mean (trimmedMeanDelta's for trim 0): per coordinate the values added in the round's order.
      const buf = new Float32Array(TRIM_BLOCK);
      for (let start = 0, b = 1; start < len; start += TRIM_BLOCK, b++) {
        const count = Math.min(TRIM_BLOCK, len - start);
        for (let k = 0; k < m; k++) {
          kept[k]!.fill(start, count, buf, 0);
          for (let j = 0; j < count; j++) out[start + j] = out[start + j]! + buf[j]!;
        }
        if (b % every === 0) await pause();
      }
      for (let i = 0; i < len; i++) out[i] = out[i]! / m;
    } else {
      const scratch = trimScratch(m);
      const fill: FillValues = (k, start, count, buf, offset) => kept[k]!.fill(start, count, buf, offset);
      for (let start = 0, b = 1; start < len; start += TRIM_BLOCK, b++) {
        trimmedMeanBlock(m, trim, start, Math.min(TRIM_BLOCK, len - start), fill, scratch, out);
        if (b % every === 0) await pause();
      }
    }
    return { combined: out, trim };
  }
}

function withStep(t: ItemTable, step: (i: number) => number): ItemTable {
  const nf = t.factors.length;
  const factors = new Float32Array(nf);
  const bias = new Float32Array(t.bias.length);
  for (let i = 0; i < nf; i++) factors[i] = t.factors[i]! + step(i);
  for (let i = 0; i < bias.length; i++) bias[i] = t.bias[i]! + step(nf + i);
  return { version: t.version + 1, itemIds: t.itemIds, dim: t.dim, factors, bias };
}

/**
 * FedAvg: next = current + lr · mean. With lr = 1 the new table is the base plus the mean delta.
 *
 * @example
 * ```ts
 * const next = applyFedAvg(current, meanDelta(deltas)); // next.version === current.version + 1
 * ```
 */
export function applyFedAvg(t: ItemTable, mean: Float64Array, lr = 1): ItemTable {
  return withStep(t, (i) => lr * mean[i]!);
}

/**
 * FedAdam: m ← β1·m + (1−β1)·Δ, v ← β2·v + (1−β2)·Δ², next = current + η·m / (√v + τ).
 * `state` holds m then v (2·len float32), null at the first round.
 *
 * @example
 * ```ts
 * const { table, state } = applyFedAdam(current, mean, previousState);
 * ```
 */
export function applyFedAdam(
  t: ItemTable,
  mean: Float64Array,
  state: Float32Array | null,
  o: FedAdamOptions = DEFAULT_FEDADAM,
  trained: TrainedPart = { rows: t.itemIds.length, biases: true },
): { table: ItemTable; state: Float32Array } {
  const len = mean.length;
  const s = state && state.length === 2 * len ? state.slice() : new Float32Array(2 * len).fill(0, 0, len).fill(o.tau * o.tau, len);
  // Outside the trained part (a restart narrowed it: fewer trainRows, or frozen biases) the moments
  // a wider part left would go on stepping what is now frozen: they start again from m₀ = 0,
  // v₀ = τ², and the mean there is zero (updates carry only the trained part), so nothing moves.
  const nf = t.factors.length;
  const frozen = (i: number) => (i < nf ? i >= trained.rows * t.dim : !trained.biases || i - nf >= trained.rows);
  for (let i = 0; i < len; i++) {
    if (frozen(i)) {
      s[i] = 0;
      s[len + i] = o.tau * o.tau;
      continue;
    }
    s[i] = o.beta1 * s[i]! + (1 - o.beta1) * mean[i]!;
    s[len + i] = o.beta2 * s[len + i]! + (1 - o.beta2) * mean[i]! * mean[i]!;
  }
  const table = withStep(t, (i) => (o.lr * s[i]!) / (Math.sqrt(s[len + i]!) + o.tau));
  return { table, state: s };
}

/**
 * Per-item positive-part James–Stein shrinkage of a round's combined delta (Stein 1961; James &
 * Stein 1961): for every trained item, its d factors and its bias (p = d + 1 values; p = d when the
 * biases are not trained) are scaled by max(0, 1 − p·v / ‖row‖²), v the known noise variance per
 * coordinate of the delta. Rows outside the trained part are left as they are (zero). Rows
 * that carry nothing but noise (‖row‖² ≈ (d + 1)·v) go to about zero; rows whose signal dwarfs the
 * noise are kept. It reads only the already-noised aggregate, so it is post-processing: it costs
 * no privacy. Returns how many rows were left non-zero.
 *
 * @example
 * ```ts
 * const kept = shrinkRows(mean, table.itemIds.length, table.dim, (sigma * clip / K) ** 2);
 * ```
 */
export function shrinkRows(
  delta: Float64Array,
  itemCount: number,
  dim: number,
  noiseVariance: number,
  trained: TrainedPart = { rows: itemCount, biases: true },
): number {
  if (!(noiseVariance > 0)) return trained.rows;
  const nf = itemCount * dim;
  const p = dim + (trained.biases ? 1 : 0);
  let kept = 0;
  for (let r = 0; r < trained.rows; r++) {
    let ss = delta[nf + r]! * delta[nf + r]!;
    for (let k = 0; k < dim; k++) ss += delta[r * dim + k]! ** 2;
    const f = ss > 0 ? Math.max(0, 1 - (p * noiseVariance) / ss) : 0;
    if (f > 0) kept++;
    for (let k = 0; k < dim; k++) delta[r * dim + k] = delta[r * dim + k]! * f;
    delta[nf + r] = delta[nf + r]! * f;
  }
  return kept;
}
