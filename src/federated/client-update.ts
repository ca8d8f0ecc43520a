/**
 * Builds the one thing a device uploads: its item-side model delta, clipped, noised and quantized.
 *
 * Pure (no I/O), so the browser worker, the simulation and the tests run the same code. The update
 * is dense: it has a value for every factor and every bias of the part of the table the server
 * trains (by default the whole table; see {@link TrainedPart}), and noise of std σ·C is added to
 * every one of them, so rows the shopper never touched are indistinguishable from rows they did
 * touch (see docs/protocol.md, "Leakage").
 */
import { ValidationError } from '../errors.js';
import type { ItemTable } from '../model/item-table.js';
import { addGaussianNoise, clipL2, cryptoUniform, type UniformSource } from './dp.js';
import {
  chooseBits,
  DEFAULT_BLOCK_SIZE,
  encodeUpdate,
  HASH_BYTES,
  levelsFor,
  NONCE_BYTES,
  scaleCount,
  UPDATE_BUDGET_BYTES,
  type QuantizedUpdate,
} from './wire.js';

export interface ClientUpdateOptions {
  /** SHA-256 of the canonical encoding of `base` (the `X-Localrec-Model-Hash` the server sent). */
  baseHash: Uint8Array;
  /** L2 clip bound C (server config `clip`). */
  clip: number;
  /** Noise multiplier σ: every coordinate gets N(0, (σ·C)²) (server config `noiseMultiplier`). */
  noiseMultiplier: number;
  /** Bits per coordinate, 2..8 (server config `bits`); default: the widest that fits 64 KiB. */
  bits?: number;
  /** Coordinates per quantization scale (server config `blockSize`). Default 256. */
  blockSize?: number;
  /** Uniform source for noise and stochastic rounding; default `crypto.getRandomValues`. */
  uniform?: UniformSource;
  /** The part of the table the update covers (server config `trainRows`, `trainBiases`); default all of it. */
  part?: TrainedPart;
  /** Nonce; default 16 bytes from `crypto.getRandomValues`. */
  nonce?: Uint8Array;
  /**
   * The update itself, when it is not `local − base` (the subspace aggregator's update,
   * src/federated/subspace.ts): the part's factors, row-major, then, when the part trains them,
   * one value per row for the biases. `local` is then ignored; a bias section the part does not
   * train is added here (noise only), as for `local − base`.
   */
  delta?: Float64Array;
}

export interface ClientUpdate {
  /** The request body for `POST /v1/updates`. */
  bytes: Uint8Array;
  /** L2 norm of the raw delta before clipping (stays on the device; useful for tuning C). */
  preClipNorm: number;
  /** Factor the delta was scaled by (1 when it was already within C). */
  clipScale: number;
  bits: number;
}

function checkSameShape(base: ItemTable, local: ItemTable): void {
  if (base.dim !== local.dim) throw new ValidationError('local.dim', `is ${local.dim}, base has ${base.dim}`);
  if (base.itemIds.length !== local.itemIds.length) {
    throw new ValidationError('local.itemIds', `has ${local.itemIds.length} items, base has ${base.itemIds.length}`);
  }
  for (let i = 0; i < base.itemIds.length; i++) {
    if (base.itemIds[i] !== local.itemIds[i]) throw new ValidationError(`local.itemIds[${i}]`, `is '${local.itemIds[i]}', base has '${base.itemIds[i]}'`);
  }
  const n = base.itemIds.length;
  if (base.factors.length !== n * base.dim || local.factors.length !== n * base.dim) throw new ValidationError('factors', `must hold ${n} × ${base.dim} values`);
  if (base.bias.length !== n || local.bias.length !== n) throw new ValidationError('bias', `must hold ${n} values`);
}

/**
 * The part of the item table that federated training updates (server config `trainRows` and
 * `trainBiases`): the factors of the first `rows` rows and, when `biases`, their biases. The rest of
 * the table stays as the shop published it.
 */
export interface TrainedPart {
  rows: number;
  biases: boolean;
}

/** The whole table: every row, factors and biases. */
export function wholeTable(table: Pick<ItemTable, 'itemIds'>): TrainedPart {
  return { rows: table.itemIds.length, biases: true };
}

/**
 * Checks a trained part against a table of `itemCount` rows.
 *
 * @example
 * ```ts
 * checkTrainedPart({ rows: 2000, biases: false }, 3665); // ok
 * ```
 */
export function checkTrainedPart(part: TrainedPart, itemCount: number, field = 'trainRows'): TrainedPart {
  if (!Number.isInteger(part.rows) || part.rows < 1 || part.rows > itemCount) {
    throw new ValidationError(field, `must be an integer from 1 to the table's ${itemCount} rows, got ${part.rows}`);
  }
  if (typeof part.biases !== 'boolean') throw new ValidationError('trainBiases', `must be true or false, got ${String(part.biases)}`);
  return part;
}

/** Values a secure-aggregation update carries: the trained factors, then the trained biases. */
export function trainedLength(part: TrainedPart, dim: number): number {
  return part.rows * dim + (part.biases ? part.rows : 0);
}

/**
 * The item-side delta `local − base` over the trained part: the factors of its rows, row-major,
 * then (with `biasSection`, by default when the part trains biases) one value per row for the
 * biases, zero when the part leaves them alone. A plain update always has the bias section (its
 * wire format does), a masked one only when biases are trained.
 *
 * @example
 * ```ts
 * itemDelta(base, trained).length === base.itemIds.length * (base.dim + 1); // true
 * itemDelta(base, trained, { rows: 10, biases: false }).length === 10 * base.dim; // true
 * ```
 */
export function itemDelta(base: ItemTable, local: ItemTable, part: TrainedPart = wholeTable(base), biasSection = part.biases): Float64Array {
  checkSameShape(base, local);
  checkTrainedPart(part, base.itemIds.length);
  const nf = part.rows * base.dim;
  const out = new Float64Array(nf + (biasSection ? part.rows : 0));
  for (let i = 0; i < nf; i++) out[i] = local.factors[i]! - base.factors[i]!;
  if (biasSection && part.biases) for (let i = 0; i < part.rows; i++) out[nf + i] = local.bias[i]! - base.bias[i]!;
  return out;
}

/**
 * The inverse of {@link itemDelta} on the server: a combined delta over the trained part, laid out
 * over the whole table (`itemCount·(dim+1)`: all factors, then all biases), zero where the part
 * does not reach. A bias section the part does not train (a plain update always carries one) is
 * dropped.
 *
 * @example
 * ```ts
 * expandDelta(mean, { rows: 2000, biases: false }, 3665, 16).length === 3665 * 17; // true
 * ```
 */
export function expandDelta(values: Float64Array, part: TrainedPart, itemCount: number, dim: number): Float64Array {
  const nf = part.rows * dim;
  if (values.length !== nf && values.length !== nf + part.rows) {
    throw new ValidationError('delta', `has ${values.length} values; ${part.rows} rows × ${dim} need ${nf} or ${nf + part.rows}`);
  }
  if (part.rows === itemCount && part.biases && values.length === nf + part.rows) return values;
  const out = new Float64Array(itemCount * (dim + 1));
  out.set(values.subarray(0, nf));
  if (part.biases) {
    if (values.length !== nf + part.rows) throw new ValidationError('delta', `has no bias section, and the trained part includes the biases`);
    out.set(values.subarray(nf), itemCount * dim);
  }
  return out;
}

/**
 * The DP release of a device's training: `local − base` over the trained part, clipped to L2 ≤ C,
 * plus N(0, std²) on every coordinate (a bias section the part does not train gets noise only).
 * `std` is σ·C for a plain update and σ·C/√t for a device's share of a secure-aggregation cohort's
 * noise (t = minSurvivors, K without dropout recovery: any t surviving shares sum to (σC)²). A given `delta` (same layout) replaces `local − base`.
 *
 * @example
 * ```ts
 * const { values } = noisedDelta(base, trained, 1, 1); // clip 1, noise std 1
 * ```
 */
export function noisedDelta(
  base: ItemTable,
  local: ItemTable,
  clip: number,
  std: number,
  uniform: UniformSource,
  part: TrainedPart = wholeTable(base),
  biasSection = part.biases,
  delta?: Float64Array,
): { values: Float64Array; norm: number; scale: number } {
  let values: Float64Array;
  if (delta) {
    // Laid out as itemDelta lays out local − base: the part's values, then the bias section (when
    // there is one) zero where the part does not train the biases.
    const nf = part.rows * base.dim;
    const own = nf + (part.biases ? part.rows : 0);
    if (delta.length !== own) throw new ValidationError('delta', `has ${delta.length} values; the trained part needs ${own}`);
    values = new Float64Array(nf + (biasSection ? part.rows : 0));
    values.set(delta.subarray(0, Math.min(own, values.length)));
  } else values = itemDelta(base, local, part, biasSection);
  const { norm, scale } = clipL2(values, clip);
  addGaussianNoise(values, std, uniform);
  return { values, norm, scale };
}

/**
 * Unbiased stochastic rounding to `bits` per coordinate with one float32 scale (the block's largest
 * magnitude) per block: E[decoded] = value exactly, and the added error per coordinate is at most
 * one step (variance ≤ step²/4, step = scale / L). Nothing is clamped, so nothing is biased.
 *
 * @example
 * ```ts
 * const { scales, codes } = quantizeStochastic(values, n, dim, 3, 256, cryptoUniform());
 * ```
 */
export function quantizeStochastic(
  values: Float64Array | Float32Array,
  itemCount: number,
  dim: number,
  bits: number,
  blockSize: number,
  uniform: UniformSource,
): { scales: Float32Array; codes: Uint8Array } {
  const L = levelsFor(bits);
  const nf = itemCount * dim;
  const scales = new Float32Array(scaleCount(itemCount, dim, blockSize));
  const codes = new Uint8Array(values.length);
  let block = 0;
  // Factors and biases are blocked separately, so one block never mixes their magnitudes.
  for (const [start, end] of [
    [0, nf],
    [nf, values.length],
  ] as const) {
    for (let b0 = start; b0 < end; b0 += blockSize, block++) {
      const b1 = Math.min(end, b0 + blockSize);
      let max = 0;
      for (let i = b0; i < b1; i++) max = Math.max(max, Math.abs(values[i]!));
      let s = Math.fround(max);
      if (s < max) s = Math.fround(max * (1 + 2 ** -23)); // round the scale up so |value| ≤ scale
      scales[block] = s;
      for (let i = b0; i < b1; i++) {
        let q = 0;
        if (s > 0) {
          const y = (values[i]! / s) * L;
          const f = Math.floor(y);
          q = f + (uniform() < y - f ? 1 : 0);
          q = Math.max(-L, Math.min(L, q));
        }
        codes[i] = q + L;
      }
    }
  }
  return { scales, codes };
}

/**
 * The whole client side of a round: delta → clip to L2 ≤ C → N(0, (σC)²) on every coordinate →
 * stochastic quantization → wire bytes. Returns the body to POST and local-only diagnostics.
 *
 * @example
 * ```ts
 * const res = await fetch(`${server}/v1/model`);
 * const base = decodeModel(new Uint8Array(await res.arrayBuffer())).table;
 * const baseHash = fromHex(res.headers.get('x-localrec-model-hash')!);
 * const trained = trainLocally(base);                       // the lead's worker code
 * const { bytes } = buildClientUpdate(base, trained, { baseHash, clip: 1, noiseMultiplier: 1, bits: 3 });
 * await fetch(`${server}/v1/updates`, { method: 'POST', body: bytes });
 * ```
 */
export function buildClientUpdate(base: ItemTable, local: ItemTable, opts: ClientUpdateOptions): ClientUpdate {
  const part = opts.part ?? wholeTable(base);
  // The update covers the part's rows: its header says so, and it always has their bias section.
  const n = part.rows;
  const dim = base.dim;
  if (opts.baseHash?.length !== HASH_BYTES) throw new ValidationError('baseHash', `must be ${HASH_BYTES} bytes`);
  if (!Number.isFinite(opts.noiseMultiplier) || opts.noiseMultiplier < 0) {
    throw new ValidationError('noiseMultiplier', `must be a finite number ≥ 0, got ${opts.noiseMultiplier}`);
  }
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  const bits = opts.bits ?? chooseBits(n, dim, UPDATE_BUDGET_BYTES, blockSize);
  if (!Number.isInteger(bits) || bits < 2 || bits > 8) {
    throw new ValidationError('bits', `must be an integer 2..8, got ${bits} (a ${n} × ${dim} table may not fit the upload budget)`);
  }
  const uniform = opts.uniform ?? cryptoUniform();
  const { values: delta, norm, scale } = noisedDelta(base, local, opts.clip, opts.noiseMultiplier * opts.clip, uniform, part, true, opts.delta);
  const { scales, codes } = quantizeStochastic(delta, n, dim, bits, blockSize, uniform);
  let nonce = opts.nonce;
  if (!nonce) {
    nonce = new Uint8Array(NONCE_BYTES);
    globalThis.crypto.getRandomValues(nonce);
  }
  const q: QuantizedUpdate = {
    header: {
      bits,
      dim,
      itemCount: n,
      baseVersion: base.version,
      blockSize,
      clip: opts.clip,
      noiseMultiplier: opts.noiseMultiplier,
      baseHash: opts.baseHash,
      nonce,
      ...(part.biases ? {} : { frozenBiases: true }),
    },
    scales,
    codes,
  };
  return { bytes: encodeUpdate(q), preClipNorm: norm, clipScale: scale, bits };
}
