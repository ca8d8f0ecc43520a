/**
 * Stateless checks on an uploaded update: decodes it and checks shape, configuration and norm.
 * Checks that need server state (base version, staleness, replay, rate) live in the round
 * coordinator and the app. Every rejection has a fixed `reason` and an HTTP status.
 */
import type { TrainedPart } from '../federated/client-update.js';
import { decodeUpdate, dequantizeUpdate, levelsFor, WireFormatError, type QuantizedUpdate } from '../federated/wire.js';

/** Every reason an update can be refused with, and its HTTP status. */
export const REJECT_STATUS = {
  malformed: 400,
  oversized: 413,
  'wrong-shape': 422,
  'non-finite': 422,
  'config-mismatch': 422,
  'over-norm': 422,
  'unknown-base': 409,
  stale: 409,
  replayed: 409,
  'unknown-cohort': 409,
  'not-member': 403,
  'wrong-mode': 409,
  'rate-limited': 429,
  /** Secure aggregation with cohorts in memory: the server holds as many members as it may (a join; `Retry-After`). */
  'cohorts-full': 503,
} as const;

export type RejectReason = keyof typeof REJECT_STATUS;

export interface Rejection {
  ok: false;
  reason: RejectReason;
  status: (typeof REJECT_STATUS)[RejectReason];
  error: string;
}

export function reject(reason: RejectReason, error: string): Rejection {
  return { ok: false, reason, status: REJECT_STATUS[reason], error };
}

/** What the server expects of every update (mirrors `GET /v1/config`). */
export interface UpdatePolicy {
  itemCount: number;
  dim: number;
  /** The part of the table updates cover (default the whole table): their header counts its rows. */
  trained?: TrainedPart;
  bits: number;
  blockSize: number;
  clip: number;
  noiseMultiplier: number;
  /** Relative slack on the clip bound (float32 rounding, client arithmetic). Default 0.01. */
  normTolerance: number;
  /** How many standard deviations of the noise's norm fluctuation to allow. Default 6. */
  normSlack: number;
}

export interface CheckedUpdate {
  ok: true;
  update: QuantizedUpdate;
  /** Dequantized values, `rows·(dim+1)` (rows: the trained part's): factors then biases. */
  delta: Float32Array;
  /** L2 norm of `delta`. */
  norm: number;
  /** The largest norm this update could have had while honest (see {@link normBound}). */
  bound: number;
}

/**
 * The largest noise an honest device adds to one coordinate, in units of its std σC. The SDK draws
 * it by Box–Muller on 53-bit uniforms, which cannot go beyond √(−2·ln 2^−53) ≈ 8.572; a true
 * Gaussian exceeds 8.6 with probability 8·10⁻¹⁸ per coordinate.
 */
export const MAX_NOISE_SDS = 8.6;

/** How far the client's float32 rounding-up of a block's largest magnitude can raise its scale (relative). */
const F32_SCALE_ROUNDING = 2 ** -22;

/**
 * Checks that the block scales are ones an honest quantizer could have written, before the norm
 * bound trusts them. {@link normBound} allows each coordinate a rounding error of its block's step
 * (scale / L), so a scale larger than the block's values would widen the bound for free: an
 * all-zero block declaring a huge scale let a client send biases of +1000 under C = 1. Refused here:
 *
 * - a block with scale > 0 whose largest |q| is below L − 1: the client's quantizer
 *   (`quantizeStochastic`, src/federated/client-update.ts) sets the scale to the block's largest
 *   magnitude, which always rounds to L − 1 or L;
 * - scales beyond the clipped delta plus noise: an honest block's scale is at most its largest
 *   |x_i| plus {@link MAX_NOISE_SDS}·σC, and the largest |x_i| of all blocks together have an L2
 *   norm of at most ‖x‖ ≤ C. So the excesses max(0, scale − 8.6σC) must have norm ≤ C(1 + tolerance).
 *
 * Returns the rejection, or null when the scales are plausible.
 */
export function checkScales(u: QuantizedUpdate, p: Pick<UpdatePolicy, 'clip' | 'noiseMultiplier' | 'normTolerance'>): Rejection | null {
  const { itemCount: n, dim, blockSize, bits } = u.header;
  const L = levelsFor(bits);
  const nf = n * dim;
  const noiseCap = MAX_NOISE_SDS * p.noiseMultiplier * p.clip;
  let excess2 = 0;
  let worst = -1;
  let block = 0;
  for (const [start, end, part] of [
    [0, nf, 'factors'],
    [nf, nf + n, 'biases'],
  ] as const) {
    for (let b0 = start; b0 < end; b0 += blockSize, block++) {
      const s = u.scales[block]!;
      if (s === 0) continue;
      let maxQ = 0;
      for (let i = b0, b1 = Math.min(end, b0 + blockSize); i < b1; i++) maxQ = Math.max(maxQ, Math.abs(u.codes[i]! - L));
      if (maxQ < L - 1) {
        return reject('over-norm', `block ${block} (${part}) declares scale ${s} but its largest |code − L| is ${maxQ}; a block's scale is its largest magnitude, which quantizes to ${L - 1} or ${L}`);
      }
      const e = Math.max(0, s / (1 + F32_SCALE_ROUNDING) - noiseCap);
      excess2 += e * e;
      if (worst < 0 || s > u.scales[worst]!) worst = block;
    }
  }
  const c = p.clip * (1 + p.normTolerance);
  if (excess2 > c * c) {
    return reject(
      'over-norm',
      `the block scales (largest ${u.scales[worst]} in block ${worst}) exceed what an update clipped to ${p.clip} with noise ${p.noiseMultiplier} can hold: ` +
        `their excess over ${MAX_NOISE_SDS}·σC has norm ${Math.sqrt(excess2).toPrecision(6)} > ${c.toPrecision(6)}`,
    );
  }
  return null;
}

/**
 * The largest L2 norm an honest update is expected to have. The server only sees
 * `x + z + e`: the clipped delta x (‖x‖ ≤ C), noise z ~ N(0, (σC)²) per coordinate added on the
 * device, and stochastic-rounding error e (mean 0, variance ≤ step²/4, step = scale/L, known from
 * the block scales). With v_i = (σC)² + step_i²/4:
 *
 *   E‖x+z+e‖² ≤ C'² + Σ v_i,  sd(‖z+e‖²) ≈ √(2 Σ v_i²),  sd(2x·(z+e)) ≤ 2C'√max v_i
 *
 * and the bound is `√(C'² + Σv + k·√(2Σv²) + 2k·C'·√max v)` with C' = C(1 + tolerance), k =
 * `normSlack`. With σ = 0 this is (almost) exactly the clip bound. With noise, a dishonest client can
 * hide a signal of squared norm up to about k·√(2Σv²) inside the noise's fluctuation: for 132,000
 * coordinates and σ = 1 that is ‖x‖ ≈ 60·C. The check stops gross scaling attacks, not subtle ones.
 * The steps come from the declared block scales: {@link checkScales} must pass first, or a client
 * could widen the bound by declaring scales its values do not have.
 *
 * @example
 * ```ts
 * normBound(update, policy); // ≈ σ·C·√(n·(dim+1)) for large tables
 * ```
 */
export function normBound(u: QuantizedUpdate, p: Pick<UpdatePolicy, 'clip' | 'noiseMultiplier' | 'normTolerance' | 'normSlack'>): number {
  const { itemCount: n, dim, blockSize, bits } = u.header;
  const L = levelsFor(bits);
  const noiseVar = (p.noiseMultiplier * p.clip) ** 2;
  const nf = n * dim;
  let sumV = 0;
  let sumV2 = 0;
  let maxV = 0;
  let block = 0;
  for (const len of [nf, n]) {
    for (let start = 0; start < len; start += blockSize, block++) {
      const count = Math.min(blockSize, len - start);
      const step = u.scales[block]! / L;
      const v = noiseVar + (step * step) / 4;
      sumV += count * v;
      sumV2 += count * v * v;
      maxV = Math.max(maxV, v);
    }
  }
  const c = p.clip * (1 + p.normTolerance);
  const k = p.normSlack;
  return Math.sqrt(c * c + sumV + k * Math.sqrt(2 * sumV2) + 2 * k * c * Math.sqrt(maxV));
}

/**
 * Decodes and checks an update body against the policy.
 *
 * @example
 * ```ts
 * const r = checkUpdate(body, policy);
 * if (!r.ok) return c.json({ error: r.error, reason: r.reason }, r.status);
 * ```
 */
export function checkUpdate(body: Uint8Array, p: UpdatePolicy): CheckedUpdate | Rejection {
  let update: QuantizedUpdate;
  try {
    update = decodeUpdate(body);
  } catch (e) {
    if (e instanceof WireFormatError) return reject(e.reason === 'non-finite' ? 'non-finite' : 'malformed', e.message);
    throw e;
  }
  const h = update.header;
  const rows = p.trained?.rows ?? p.itemCount;
  if (h.itemCount !== rows || h.dim !== p.dim) {
    const what = rows === p.itemCount ? `the model is ${p.itemCount} × ${p.dim}` : `the server trains the first ${rows} of the model's ${p.itemCount} rows × ${p.dim}`;
    return reject('wrong-shape', `update is ${h.itemCount} items × ${h.dim}, ${what}`);
  }
  const mismatch: string[] = [];
  if (h.bits !== p.bits) mismatch.push(`bits ${h.bits} ≠ ${p.bits}`);
  if (h.blockSize !== p.blockSize) mismatch.push(`blockSize ${h.blockSize} ≠ ${p.blockSize}`);
  if (h.clip !== Math.fround(p.clip)) mismatch.push(`clip ${h.clip} ≠ ${p.clip}`);
  // Exact: less noise weakens the sender's guarantee, more noise would widen the norm allowance.
  if (h.noiseMultiplier !== Math.fround(p.noiseMultiplier)) mismatch.push(`noiseMultiplier ${h.noiseMultiplier} ≠ ${p.noiseMultiplier}`);
  const frozen = p.trained ? !p.trained.biases : false;
  if (!!h.frozenBiases !== frozen) mismatch.push(`biases ${h.frozenBiases ? 'frozen' : 'trained'} ≠ ${frozen ? 'frozen' : 'trained'} (trainBiases ${!frozen})`);
  if (mismatch.length) return reject('config-mismatch', `update does not follow the server config: ${mismatch.join(', ')}`);
  const scales = checkScales(update, p);
  if (scales) return scales;
  const delta = dequantizeUpdate(update);
  let s = 0;
  for (let i = 0; i < delta.length; i++) s += delta[i]! * delta[i]!;
  const norm = Math.sqrt(s);
  if (!Number.isFinite(norm)) return reject('non-finite', 'update norm is not finite');
  const bound = normBound(update, p);
  if (norm > bound) {
    return reject('over-norm', `update L2 norm ${norm.toPrecision(6)} exceeds the allowed ${bound.toPrecision(6)} (clip ${p.clip}, noise ${p.noiseMultiplier})`);
  }
  return { ok: true, update, delta, norm, bound };
}
