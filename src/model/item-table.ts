import { ModelError } from '../errors.js';
import { Random } from './random.js';

/**
 * The global, federated side of the model: one embedding row and one bias per catalog item.
 * This is exactly what the aggregation server stores and publishes per version; the user side
 * (a vector built from the shopper's own events) never leaves the device.
 */
export interface ItemTable {
  /** Global model version this table is based on (0 = initial, never synced). */
  version: number;
  itemIds: string[];
  dim: number;
  /** `itemIds.length × dim`, row-major. */
  factors: Float32Array;
  /** `itemIds.length`. */
  bias: Float32Array;
}

/** Upper bound on the embedding size: 64 float32 factors + a bias keep an item under ~260 bytes. */
export const MAX_DIM = 64;

/**
 * A fresh table: small random factors, and biases from the catalog's popularity hints
 * (log-scaled), so that cold start ranks popular items first: ln(1 + count) / max ln(1 + count), in
 * [0, 1], or with `popularityScale` a, a·ln(1 + count). Training moves the biases; a table whose
 * biases stay fixed (federated `trainBiases: false`) wants them on the scale a trained softmax
 * gives them (on online-retail the central model's biases follow 0.52·ln(1 + count) − 1.5, R² 0.93;
 * a = 1 is the maximum-likelihood bias of a popularity-only softmax).
 *
 * @example
 * ```ts
 * const t = createItemTable(['a', 'b'], 8, { seed: 1, popularity: [10, 1] });
 * t.bias[0] > t.bias[1]; // true
 * ```
 */
export function createItemTable(
  itemIds: string[],
  dim: number,
  opts: { seed?: number; popularity?: ArrayLike<number>; scale?: number; popularityScale?: number } = {},
): ItemTable {
  if (!Number.isInteger(dim) || dim < 1 || dim > MAX_DIM) {
    throw new ModelError(`dim must be an integer from 1 to ${MAX_DIM}, got ${dim}`);
  }
  const n = itemIds.length;
  const rng = new Random(opts.seed ?? 1);
  const scale = opts.scale ?? 0.1;
  const factors = new Float32Array(n * dim);
  for (let i = 0; i < factors.length; i++) factors[i] = rng.normal() * scale;
  const bias = new Float32Array(n);
  const a = opts.popularityScale;
  if (a !== undefined && !(Number.isFinite(a) && a > 0)) throw new ModelError(`popularityScale must be a finite number > 0, got ${a}`);
  if (opts.popularity && a !== undefined) {
    for (let i = 0; i < n; i++) bias[i] = a * Math.log1p(Math.max(0, opts.popularity[i] ?? 0));
  } else if (opts.popularity) {
    let max = 0;
    for (let i = 0; i < n; i++) max = Math.max(max, Math.log1p(Math.max(0, opts.popularity[i] ?? 0)));
    for (let i = 0; i < n; i++) {
      bias[i] = max > 0 ? Math.log1p(Math.max(0, opts.popularity[i] ?? 0)) / max : 0;
    }
  }
  return { version: 0, itemIds: itemIds.slice(), dim, factors, bias };
}

/** Checks shapes and finiteness; throws a ModelError that says what is wrong. */
export function checkItemTable(t: ItemTable): void {
  const n = t.itemIds.length;
  if (!Number.isInteger(t.dim) || t.dim < 1 || t.dim > MAX_DIM) throw new ModelError(`item table: bad dim ${t.dim}`);
  if (t.factors.length !== n * t.dim) {
    throw new ModelError(`item table: factors has ${t.factors.length} values, expected ${n} × ${t.dim}`);
  }
  if (t.bias.length !== n) throw new ModelError(`item table: bias has ${t.bias.length} values, expected ${n}`);
  for (let i = 0; i < t.factors.length; i++) {
    if (!Number.isFinite(t.factors[i])) throw new ModelError(`item table: factor ${i} is not finite`);
  }
  for (let i = 0; i < n; i++) if (!Number.isFinite(t.bias[i])) throw new ModelError(`item table: bias ${i} is not finite`);
}

/** Map from item id to row index. */
export function indexItems(itemIds: readonly string[]): Map<string, number> {
  const m = new Map<string, number>();
  itemIds.forEach((id, i) => m.set(id, i));
  return m;
}

export function cloneItemTable(t: ItemTable): ItemTable {
  return { version: t.version, itemIds: t.itemIds.slice(), dim: t.dim, factors: t.factors.slice(), bias: t.bias.slice() };
}

/**
 * Whether a string holds a lone UTF-16 surrogate, which UTF-8 cannot carry: the wire formats would
 * write it as U+FFFD, i.e. another id than the catalog's (or a duplicate of one).
 */
export function hasLoneSurrogate(s: string): boolean {
  // A loop, not a regex: the lookbehind a regex needs here is a syntax error in Safari before 16.4,
  // which then refused to load the whole worker bundle (String.prototype.isWellFormed is 16.4+ too).
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c > 0xdbff) return true; // a low surrogate with no high one before it
    const next = s.charCodeAt(i + 1); // NaN past the end
    if (!(next >= 0xdc00 && next <= 0xdfff)) return true;
    i++;
  }
  return false;
}
