/**
 * Differential-privacy primitives for federated updates: L2 clipping, Gaussian noise from the
 * platform CSPRNG, and a Rényi-DP accountant for the (optionally Poisson-subsampled) Gaussian
 * mechanism. Pure and platform-neutral (browser worker and Node).
 *
 * Accounting follows Mironov 2017 ("Rényi Differential Privacy") and Mironov, Talwar & Zhang 2019
 * (subsampled Gaussian, integer orders), as implemented by TF Privacy `compute_rdp` and Opacus
 * `privacy_analysis`; RDP → (ε, δ) uses the conversion of Balle et al. 2020 (the one TF Privacy's
 * `RdpAccountant` and Opacus ≥ 1.0 use), or optionally the classic `ε = rdp − log δ / (α − 1)`.
 *
 * When every release was the plain (not subsampled) Gaussian mechanism, their composition is
 * exactly one Gaussian mechanism with μ = √(Σ 1/σᵢ²) (μ-GDP, Dong, Roth & Su 2019), whose (ε, δ)
 * curve is known in closed form (Balle & Wang 2018): the accountant then reports the smaller of
 * that exact ε and the RDP bound (RDP → (ε, δ) loses a little: σ = 1.562 for six releases at ε = 8
 * under RDP, 1.47 exactly).
 */
import { PrivacyBudgetError, ValidationError } from '../errors.js';

/** Default δ for (ε, δ) figures. */
export const DEFAULT_DELTA = 1e-5;
/** The per-device ε budget when none is configured (`options.federated.budget`, `syncOnce`'s `budget`). */
export const DEFAULT_BUDGET = 8;

/**
 * Orders α at which RDP is tracked: Opacus' default grid (1.1 … 10.9 step 0.1, then 12 … 63)
 * extended with 128 and 256 for small-ε regimes.
 */
export const DEFAULT_ORDERS: readonly number[] = Object.freeze([
  ...Array.from({ length: 99 }, (_, i) => 1 + (i + 1) / 10),
  ...Array.from({ length: 52 }, (_, i) => 12 + i),
  128,
  256,
]);

// ---------------------------------------------------------------------------------------------
// Randomness

/** A source of uniform doubles in [0, 1). */
export type UniformSource = () => number;

/**
 * Uniform doubles from `crypto.getRandomValues`, 53 bits each (two 32-bit draws), buffered so that a
 * dense table of noise costs a few calls (getRandomValues fills at most 65,536 bytes per call).
 *
 * @example
 * ```ts
 * const u = cryptoUniform();
 * u(); // 0.7134…
 * ```
 */
export function cryptoUniform(): UniformSource {
  const c = globalThis.crypto;
  if (!c?.getRandomValues) throw new ValidationError('crypto.getRandomValues', 'is unavailable on this platform');
  const buf = new Uint32Array(16384);
  let i = buf.length;
  return () => {
    if (i + 2 > buf.length) {
      c.getRandomValues(buf);
      i = 0;
    }
    const hi = buf[i++]! >>> 5; // 27 bits
    const lo = buf[i++]! >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992; // (hi·2^26 + lo) / 2^53
  };
}

/**
 * Fills `out` with independent N(0, std²) draws by Box–Muller on uniform draws. Each pair of
 * uniforms gives two normals; `1 − u` keeps the logarithm's argument in (0, 1].
 *
 * @example
 * ```ts
 * const z = gaussianNoise(new Float64Array(1000), 0.5); // std ≈ 0.5
 * ```
 */
export function gaussianNoise<T extends Float32Array | Float64Array>(out: T, std: number, uniform: UniformSource = cryptoUniform()): T {
  if (!Number.isFinite(std) || std < 0) throw new ValidationError('std', `must be a finite number ≥ 0, got ${std}`);
  if (std === 0) return out.fill(0) as T;
  for (let i = 0; i < out.length; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - uniform())) * std;
    const t = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(t);
    if (i + 1 < out.length) out[i + 1] = r * Math.sin(t);
  }
  return out;
}

/**
 * Adds N(0, std²) independently to every coordinate, in place.
 *
 * @example
 * ```ts
 * addGaussianNoise(delta, noiseMultiplier * clip);
 * ```
 */
export function addGaussianNoise<T extends Float32Array | Float64Array>(v: T, std: number, uniform: UniformSource = cryptoUniform()): T {
  const z = gaussianNoise(new Float64Array(v.length), std, uniform);
  for (let i = 0; i < v.length; i++) v[i] = v[i]! + z[i]!;
  return v;
}

// ---------------------------------------------------------------------------------------------
// Clipping

/**
 * L2 norm, accumulated in double precision; scaled by the largest |coordinate| when the squares
 * would overflow, so a finite vector has a finite norm (Infinity only past Number.MAX_VALUE, NaN
 * for a non-finite coordinate). @example `l2Norm(new Float32Array([3, 4])) // 5`
 */
export function l2Norm(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  if (Number.isFinite(s)) return Math.sqrt(s);
  let m = 0;
  for (let i = 0; i < v.length; i++) {
    const a = Math.abs(v[i]!);
    if (!Number.isFinite(a)) return a === Infinity ? Infinity : NaN;
    if (a > m) m = a;
  }
  let t = 0;
  for (let i = 0; i < v.length; i++) t += (v[i]! / m) ** 2;
  return m * Math.sqrt(t);
}

/**
 * Scales `v` in place so that its L2 norm is at most `clip` (no change when it already is).
 * Returns the norm before clipping and the factor applied.
 *
 * @example
 * ```ts
 * const v = new Float32Array([3, 4]);
 * clipL2(v, 1); // { norm: 5, scale: 0.2 }; v is now [0.6, 0.8]
 * ```
 */
export function clipL2(v: Float32Array | Float64Array, clip: number): { norm: number; scale: number } {
  if (!Number.isFinite(clip) || clip <= 0) throw new ValidationError('clip', `must be a finite number > 0, got ${clip}`);
  const norm = l2Norm(v);
  if (!Number.isFinite(norm)) {
    throw new ValidationError('update', v.every((x) => Number.isFinite(x)) ? 'has a norm beyond the largest double (the local model diverged); refusing to clip' : 'has a non-finite coordinate; refusing to clip');
  }
  const scale = norm > clip ? clip / norm : 1;
  if (scale !== 1) for (let i = 0; i < v.length; i++) v[i] = v[i]! * scale;
  return { norm, scale };
}

// ---------------------------------------------------------------------------------------------
// Rényi DP

function logAdd(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const m = Math.max(a, b);
  return m + Math.log1p(Math.exp(-Math.abs(a - b)));
}

function logGamma(x: number): number {
  // Lanczos (g = 7, n = 9): ~15 significant digits for x > 0, plenty for binomial coefficients.
  const c = [
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905,
    -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - logGamma(1 - x);
  x -= 1;
  let a = c[0]!;
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i]! / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

/**
 * RDP of one release of the Gaussian mechanism with noise multiplier σ (noise std / L2
 * sensitivity), at order α, optionally with Poisson subsampling rate q:
 *
 * - q = 1: α / (2σ²) exactly;
 * - q < 1: log A_α / (α − 1) with A_α = Σ_k C(α,k) (1−q)^(α−k) q^k exp((k² − k) / (2σ²)),
 *   valid for integer α (Mironov, Talwar & Zhang 2019). Non-integer α return +∞ (unused), which
 *   is conservative.
 *
 * @example
 * ```ts
 * rdpGaussian(1, 2);          // 1
 * rdpGaussian(1.12, 10, 256 / 60000) > 0; // true
 * ```
 */
export function rdpGaussian(noiseMultiplier: number, order: number, samplingRate = 1): number {
  if (!(noiseMultiplier > 0) || !Number.isFinite(noiseMultiplier)) return Infinity;
  if (!(order > 1)) throw new ValidationError('order', `must be > 1, got ${order}`);
  if (!(samplingRate > 0 && samplingRate <= 1)) throw new ValidationError('samplingRate', `must be in (0, 1], got ${samplingRate}`);
  const s2 = noiseMultiplier * noiseMultiplier;
  if (samplingRate === 1) return order / (2 * s2);
  if (!Number.isInteger(order)) return Infinity;
  const lq = Math.log(samplingRate);
  const l1q = Math.log1p(-samplingRate);
  let logA = -Infinity;
  for (let k = 0; k <= order; k++) {
    const logBinom = logGamma(order + 1) - logGamma(k + 1) - logGamma(order - k + 1);
    logA = logAdd(logA, logBinom + k * lq + (order - k) * l1q + (k * k - k) / (2 * s2));
  }
  return logA / (order - 1);
}

/** How RDP converts to (ε, δ): `improved` (Balle et al. 2020, default) or `classic` (Mironov 2017). */
export type Conversion = 'improved' | 'classic';

/**
 * log erfc(z) for z ≥ 0 to about 1e-15 relative: below 1, erfc = 1 − erf with erf from its series
 * of positive terms, erf(z) = (2/√π)·e^(−z²)·Σ 2ⁿz^(2n+1)/(1·3·…·(2n+1)) (1 − erf loses little
 * there: erfc(1) = 0.157); from 1 up, the continued fraction erfc(z) = (e^(−z²)/√π)·1/(z + (1/2)/(z + 1/(z + (3/2)/(z + …)))),
 * evaluated by the modified Lentz method and kept in log space so that tail values do not underflow.
 */
function logErfc(z: number): number {
  if (z === Infinity) return -Infinity;
  if (z < 1) {
    let term = z;
    let sum = z;
    for (let n = 1; n < 200; n++) {
      term *= (2 * z * z) / (2 * n + 1);
      sum += term;
      if (term < 1e-17 * sum) break;
    }
    return Math.log1p(-(2 / Math.sqrt(Math.PI)) * Math.exp(-z * z) * sum);
  }
  // K = 1/(z + a₁/(z + a₂/(z + …))), aₖ = k/2.
  const tiny = 1e-300;
  let f = z;
  let C = z;
  let D = 0;
  for (let k = 1; k < 5000; k++) {
    const a = k / 2;
    D = z + a * D;
    D = D === 0 ? tiny : D;
    C = z + a / C;
    C = C === 0 ? tiny : C;
    D = 1 / D;
    const delta = C * D;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return -z * z - 0.5 * Math.log(Math.PI) - Math.log(f);
}

/**
 * log Φ(x), Φ the standard normal CDF, to about 1e-15 relative from the far lower tail (x = −38 and
 * below) up ({@link logErfc}; checked against 40-digit values in test/unit/dp-accountant.test.ts):
 * the ε figures built on it must not come out below the true ones by more than rounding.
 */
export function logNormalCdf(x: number): number {
  const z = x / Math.SQRT2;
  if (z <= 0) return logErfc(-z) - Math.LN2;
  return Math.log1p(-0.5 * Math.exp(logErfc(z)));
}

/**
 * δ(ε) of the Gaussian mechanism whose noise std is 1/μ times the L2 sensitivity (μ-GDP; Balle &
 * Wang 2018, Theorem 8): Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2). Exact, not a bound.
 *
 * @example
 * ```ts
 * gaussianDelta(1, 1); // ≈ 0.1269 (1-GDP at ε = 1)
 * ```
 */
export function gaussianDelta(epsilon: number, mu: number): number {
  if (!(mu > 0)) return 0;
  if (!(epsilon >= 0)) throw new ValidationError('epsilon', `must be ≥ 0, got ${epsilon}`);
  const a = logNormalCdf(-epsilon / mu + mu / 2);
  const b = epsilon + logNormalCdf(-epsilon / mu - mu / 2);
  return Math.max(0, Math.exp(a) - Math.exp(b));
}

/**
 * The smallest ε at which the Gaussian mechanism with parameter μ (std = sensitivity / μ) is
 * (ε, δ)-DP: δ(ε) is decreasing in ε, solved by bisection to 1e-9. 0 when μ = 0 (no release).
 *
 * @example
 * ```ts
 * gaussianEpsilon(Math.sqrt(6) / 1.47, 1e-5); // ≈ 8.0: six releases at σ = 1.47
 * ```
 */
export function gaussianEpsilon(mu: number, delta = DEFAULT_DELTA): number {
  if (!(delta > 0 && delta < 1)) throw new ValidationError('delta', `must be in (0, 1), got ${delta}`);
  // NaN: nothing is known about the releases, so nothing is promised.
  if (Number.isNaN(mu)) return Infinity;
  if (!(mu > 0)) return 0;
  if (!Number.isFinite(mu)) return Infinity;
  if (gaussianDelta(0, mu) <= delta) return 0;
  let hi = 1;
  while (gaussianDelta(hi, mu) > delta) {
    hi *= 2;
    if (hi > 1e6) return Infinity;
  }
  let lo = 0;
  while (hi - lo > 1e-9 * Math.max(1, hi)) {
    const mid = (lo + hi) / 2;
    if (gaussianDelta(mid, mu) > delta) lo = mid;
    else hi = mid;
  }
  return hi;
}

/**
 * Smallest ε over the orders such that the composed mechanism is (ε, δ)-DP.
 *
 * @example
 * ```ts
 * const orders = DEFAULT_ORDERS;
 * rdpToEpsilon(orders, orders.map((a) => a / 2), 1e-5).epsilon; // ≈ 4.7285 (σ = 1, one release)
 * ```
 */
export function rdpToEpsilon(
  orders: readonly number[],
  rdp: readonly number[],
  delta = DEFAULT_DELTA,
  conversion: Conversion = 'improved',
): { epsilon: number; order: number } {
  if (!(delta > 0 && delta < 1)) throw new ValidationError('delta', `must be in (0, 1), got ${delta}`);
  if (orders.length !== rdp.length) throw new ValidationError('rdp', `has ${rdp.length} values for ${orders.length} orders`);
  let best = Infinity;
  let bestOrder = NaN;
  for (let i = 0; i < orders.length; i++) {
    const a = orders[i]!;
    const r = rdp[i]!;
    if (!Number.isFinite(r)) continue;
    const eps =
      conversion === 'classic'
        ? r - Math.log(delta) / (a - 1)
        : r + Math.log1p(-1 / a) - (Math.log(delta) + Math.log(a)) / (a - 1);
    if (eps < best) {
      best = eps;
      bestOrder = a;
    }
  }
  return { epsilon: Math.max(0, best), order: bestOrder };
}

/** How {@link RdpAccountant.epsilon} turns the releases into ε. */
export type EpsilonMethod = 'tightest' | Conversion;

/**
 * Serializable accountant state (plain data: store it in IndexedDB next to the model, or as JSON:
 * {@link RdpAccountant.toJSON} writes nothing JSON cannot hold).
 */
export interface AccountantState {
  /** The orders α (each a finite number > 1). */
  orders: number[];
  /**
   * RDP spent at each order: a number ≥ 0, or `null` for +∞. JSON has no Infinity (it writes one as
   * `null`), and a subsampled release has infinite RDP at the non-integer orders, so `toJSON` writes
   * +∞ as `null` and the constructor reads `null` back as +∞ (a state JSON wrote before this was
   * explicit also had `null` only where +∞ was). Anything else that is not a number ≥ 0 is refused.
   */
  rdp: Array<number | null>;
  /** Releases recorded (an integer ≥ 0; 0 only with every RDP value 0). */
  releases: number;
  /**
   * Σ 1/σᵢ² over the releases when all of them were plain Gaussian (no subsampling), so that their
   * composition is exactly μ-GDP with μ² this sum; null once any release was subsampled. Absent in
   * states saved before it existed: then null unless there were no releases.
   */
  gaussianMu2?: number | null;
  /** σ of the most recent release (null before the first; absent in states saved before it existed). */
  lastNoiseMultiplier?: number | null;
}

/** Reads a stored state, refusing one that is not what {@link RdpAccountant.toJSON} writes. */
function readState(state: AccountantState): { orders: number[]; rdp: number[]; releases: number; mu2: number | null; last: number | null } {
  const bad = (why: string) => new ValidationError('accountant.state', why);
  if (typeof state !== 'object' || state === null) throw bad(`must be an object, got ${String(state)}`);
  const { orders, rdp, releases } = state;
  if (!Array.isArray(orders) || !Array.isArray(rdp) || rdp.length !== orders.length) throw bad('orders and rdp must have equal length with rdp ≥ 0');
  orders.forEach((a, i) => {
    if (!(typeof a === 'number' && Number.isFinite(a) && a > 1)) throw bad(`orders[${i}] must be a finite number > 1, got ${JSON.stringify(a) ?? String(a)}`);
  });
  // null is +∞ (what JSON makes of it); anything else must be a number ≥ 0: a null read as 0, or
  // as anything smaller than +∞, would under-report ε from then on.
  const values = rdp.map((r, i) => {
    if (r === null) return Infinity;
    if (typeof r !== 'number' || !(r >= 0)) throw bad(`rdp[${i}] must be a number ≥ 0, or null for +∞, got ${JSON.stringify(r) ?? String(r)}`);
    return r;
  });
  if (!Number.isInteger(releases) || releases < 0) throw bad(`releases must be an integer ≥ 0, got ${JSON.stringify(releases) ?? String(releases)}`);
  const mu2 = state.gaussianMu2;
  if (mu2 !== undefined && mu2 !== null && !(typeof mu2 === 'number' && mu2 >= 0)) throw bad(`gaussianMu2 must be ≥ 0 or null, got ${mu2}`);
  const last = state.lastNoiseMultiplier ?? null;
  // The σ a release may be recorded with (see RdpAccountant.record): finite, ≥ 0.
  if (last !== null && !(typeof last === 'number' && last >= 0 && Number.isFinite(last))) throw bad(`lastNoiseMultiplier must be a finite number ≥ 0 or null, got ${last}`);
  // No release, nothing spent: a state that says otherwise would make epsilon() read 0.
  if (releases === 0 && (values.some((r) => r !== 0) || (mu2 ?? 0) !== 0)) {
    throw bad('says 0 releases but holds the RDP (or μ²) of some: refused rather than read as nothing spent');
  }
  return { orders: orders.slice(), rdp: values, releases, mu2: mu2 === undefined ? (releases === 0 ? 0 : null) : mu2, last };
}

/**
 * Per-device Rényi-DP accountant. Every sync is one release of the Gaussian mechanism (the device
 * knows it took part, so no subsampling amplification applies to its own view unless the server
 * samples clients secretly); RDP adds up over releases. While every release is plain Gaussian,
 * ε is the exact one of their composition (μ-GDP, see {@link gaussianEpsilon}) when that is
 * smaller than the RDP bound, which it always is.
 *
 * The figures are for add/remove neighbours (the shopper's data vs. none: L2 sensitivity C). To
 * state the replace-one guarantee (history A vs. history B: sensitivity 2C), record σ/2.
 *
 * @example
 * ```ts
 * const acc = new RdpAccountant();
 * acc.assertCanSpend(1.0, 8);   // throws PrivacyBudgetError when one more release would exceed ε = 8
 * acc.record(1.0);              // one release with σ = 1
 * acc.epsilon();                // ≈ 4.38 at δ = 1e-5 (exact; the RDP bound is 4.73)
 * acc.epsilon(1e-5, 'improved'); // ≈ 4.73: the RDP bound alone
 * ```
 */
export class RdpAccountant {
  readonly orders: readonly number[];
  private rdp: number[];
  private count: number;
  private mu2: number | null;
  private last: number | null;

  constructor(state?: AccountantState) {
    if (state === undefined) {
      this.orders = DEFAULT_ORDERS.slice();
      this.rdp = this.orders.map(() => 0);
      this.count = 0;
      this.mu2 = 0;
      this.last = null;
      return;
    }
    const s = readState(state);
    this.orders = s.orders;
    this.rdp = s.rdp;
    this.count = s.releases;
    this.mu2 = s.mu2;
    this.last = s.last;
  }

  /** RDP the given releases would add, per order. */
  private cost(noiseMultiplier: number, samplingRate: number, steps: number): number[] {
    if (!Number.isInteger(steps) || steps < 0) throw new ValidationError('steps', `must be an integer ≥ 0, got ${steps}`);
    // A NaN would make ε read 0 for good (μ² NaN); a negative σ is no noise multiplier at all; an
    // infinite one would read as ε = 0 (μ² + 1/∞²). σ = 0 (no noise: ε becomes +∞ for good) is
    // kept for noise-free simulations (`budget: Infinity`); the constructor takes the same range.
    if (typeof noiseMultiplier !== 'number' || !(noiseMultiplier >= 0) || !Number.isFinite(noiseMultiplier)) {
      throw new ValidationError('noiseMultiplier', `must be a number ≥ 0 (finite), got ${noiseMultiplier}`);
    }
    return this.orders.map((a) => steps * rdpGaussian(noiseMultiplier, a, samplingRate));
  }

  /** μ² after `steps` more releases (null when any release is subsampled). */
  private mu2After(noiseMultiplier: number, samplingRate: number, steps: number): number | null {
    if (this.mu2 === null || (samplingRate !== 1 && steps > 0)) return null;
    return this.mu2 + (steps === 0 ? 0 : steps / (noiseMultiplier * noiseMultiplier));
  }

  private tightest(rdp: readonly number[], mu2: number | null, delta: number, method: EpsilonMethod): number {
    if (method !== 'tightest') return rdpToEpsilon(this.orders, rdp, delta, method).epsilon;
    const bound = rdpToEpsilon(this.orders, rdp, delta).epsilon;
    return mu2 === null ? bound : Math.min(bound, gaussianEpsilon(Math.sqrt(mu2), delta));
  }

  /** Records `steps` releases with noise multiplier σ and sampling rate q (default 1). */
  record(noiseMultiplier: number, samplingRate = 1, steps = 1): void {
    const c = this.cost(noiseMultiplier, samplingRate, steps);
    this.mu2 = this.mu2After(noiseMultiplier, samplingRate, steps);
    this.rdp = this.rdp.map((r, i) => r + c[i]!);
    this.count += steps;
    if (steps > 0) this.last = noiseMultiplier;
  }

  /**
   * ε spent so far at δ: `tightest` (default) is the exact composition while every release was
   * plain Gaussian, else the RDP bound; `improved` or `classic` give the RDP bound with that
   * conversion.
   */
  epsilon(delta = DEFAULT_DELTA, method: EpsilonMethod = 'tightest'): number {
    if (this.count === 0) return 0;
    return this.tightest(this.rdp, this.mu2, delta, method);
  }

  /** ε after `steps` more releases, without recording them. */
  epsilonAfter(noiseMultiplier: number, samplingRate = 1, steps = 1, delta = DEFAULT_DELTA): number {
    const c = this.cost(noiseMultiplier, samplingRate, steps);
    return this.tightest(
      this.rdp.map((r, i) => r + c[i]!),
      this.mu2After(noiseMultiplier, samplingRate, steps),
      delta,
      'tightest',
    );
  }

  /** Whether one more release keeps ε within `budget`. */
  canSpend(noiseMultiplier: number, budget: number, delta = DEFAULT_DELTA, samplingRate = 1): boolean {
    return this.epsilonAfter(noiseMultiplier, samplingRate, 1, delta) <= budget;
  }

  /** Throws {@link PrivacyBudgetError} if one more release would push ε past `budget`. */
  assertCanSpend(noiseMultiplier: number, budget: number, delta = DEFAULT_DELTA, samplingRate = 1): void {
    if (!this.canSpend(noiseMultiplier, budget, delta, samplingRate)) {
      const next = this.epsilonAfter(noiseMultiplier, samplingRate, 1, delta);
      throw new PrivacyBudgetError(
        `privacy budget exhausted: one more sync with noise multiplier ${noiseMultiplier} would bring ε to ${next.toFixed(3)} (δ = ${delta}), above the budget ε = ${budget}; ε spent so far ${this.epsilon(delta).toFixed(3)}`,
      );
    }
  }

  get releases(): number {
    return this.count;
  }

  /** σ of the most recent release, or null before the first. */
  get lastNoiseMultiplier(): number | null {
    return this.last;
  }

  /**
   * How many more syncs fit within `budget` if they use the σ of the last one (the server's σ, as
   * far as this device knows it); null before the first release.
   */
  syncsLeft(budget: number, delta = DEFAULT_DELTA): number | null {
    return this.last === null ? null : syncsWithinBudget(this.last, budget, delta, this);
  }

  /**
   * The state as plain, JSON-safe data: +∞ (RDP at an order a subsampled release cannot bound, or
   * after a release at σ = 0) is written as `null`, which the constructor reads back as +∞; an
   * infinite μ² (a release at σ = 0) as `null` too (the RDP bound, +∞ as well, is then used).
   */
  toJSON(): AccountantState {
    return {
      orders: this.orders.slice(),
      rdp: this.rdp.map((r) => (r === Infinity ? null : r)),
      releases: this.count,
      gaussianMu2: this.mu2 !== null && Number.isFinite(this.mu2) ? this.mu2 : null,
      lastNoiseMultiplier: this.last,
    };
  }
}

/** Syncs beyond which {@link syncsWithinBudget} stops counting. */
export const MAX_COUNTED_SYNCS = 1_000_000;

/**
 * How many syncs (plain Gaussian releases at noise multiplier σ) a device can make before its
 * {@link RdpAccountant} refuses the next one for `budget`: the largest T with ε(T more releases) ≤
 * budget at δ, exactly as `sync()` decides it. From a fresh device, or from `from`'s releases so
 * far. Capped at {@link MAX_COUNTED_SYNCS}.
 *
 * @example
 * ```ts
 * syncsWithinBudget(1, 8);      // 2: one sync at σ = 1 is ε ≈ 4.38, two 6.57, three 8.39
 * syncsWithinBudget(1.2005, 8); // 4
 * ```
 */
export function syncsWithinBudget(noiseMultiplier: number, budget: number, delta = DEFAULT_DELTA, from: RdpAccountant = new RdpAccountant()): number {
  if (!(noiseMultiplier >= 0) || !Number.isFinite(noiseMultiplier)) throw new ValidationError('noiseMultiplier', `must be a finite number ≥ 0, got ${noiseMultiplier}`);
  if (!(budget > 0)) throw new ValidationError('budget', `must be a number > 0, got ${budget}`);
  if (!(delta > 0 && delta < 1)) throw new ValidationError('delta', `must be in (0, 1), got ${delta}`);
  if (noiseMultiplier === 0) return budget === Infinity ? MAX_COUNTED_SYNCS : 0;
  const fits = (t: number) => (t === 0 ? from.epsilon(delta) <= budget : from.epsilonAfter(noiseMultiplier, 1, t, delta) <= budget);
  if (!fits(0)) return 0;
  // ε grows with T: find the last T that fits by doubling, then bisection.
  let hi = 1;
  while (fits(hi)) {
    if (hi >= MAX_COUNTED_SYNCS) return MAX_COUNTED_SYNCS;
    hi = Math.min(2 * hi, MAX_COUNTED_SYNCS);
  }
  let lo = hi === 1 ? 0 : hi / 2; // fits(lo), !fits(hi)
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid;
  }
  return lo;
}

/**
 * The smallest noise multiplier σ, rounded up to `decimals` (default 4), at which a fresh device
 * can make `syncs` syncs within `budget` (ε at δ): what `localrec serve --noise` should be for
 * devices that take part in `syncs` rounds. Rounding up matters: at σ = 1.0396 three syncs spend
 * ε = 8.0003, so a device with budget 8 refuses the third; 1.0397 lets all three through.
 *
 * @example
 * ```ts
 * noiseForSyncs(4, 8); // 1.2005 (δ = 1e-5)
 * noiseForSyncs(1, 8); // 0.6003
 * ```
 */
export function noiseForSyncs(syncs: number, budget: number, delta = DEFAULT_DELTA, decimals = 4): number {
  if (!Number.isInteger(syncs) || syncs < 1 || syncs > MAX_COUNTED_SYNCS) throw new ValidationError('syncs', `must be an integer from 1 to ${MAX_COUNTED_SYNCS}, got ${syncs}`);
  if (!(budget > 0) || !Number.isFinite(budget)) throw new ValidationError('budget', `must be a finite number > 0, got ${budget}`);
  if (!(delta > 0 && delta < 1)) throw new ValidationError('delta', `must be in (0, 1), got ${delta}`);
  if (!Number.isInteger(decimals) || decimals < 0 || decimals > 8) throw new ValidationError('decimals', `must be an integer from 0 to 8, got ${decimals}`);
  const fits = (sigma: number) => new RdpAccountant().epsilonAfter(sigma, 1, syncs, delta) <= budget;
  // ε falls as σ grows: bracket, bisect, then round up on the grid and step until it fits.
  let hi = 1;
  while (!fits(hi)) {
    hi *= 2;
    if (hi > 1e6) throw new ValidationError('budget', `ε = ${budget} cannot be met by ${syncs} syncs at any σ ≤ 10⁶ (δ = ${delta})`);
  }
  let lo = 0;
  while (hi - lo > 1e-12 * hi) {
    const mid = (lo + hi) / 2;
    if (fits(mid)) hi = mid;
    else lo = mid;
  }
  const unit = 10 ** decimals;
  let sigma = Math.ceil(hi * unit - 1e-9) / unit;
  while (!fits(sigma)) sigma = Math.round(sigma * unit + 1) / unit;
  // The grid point below must not fit, else it is the answer (guards the rounding of hi).
  while (sigma > 1 / unit && fits(Math.round(sigma * unit - 1) / unit)) sigma = Math.round(sigma * unit - 1) / unit;
  return sigma;
}
