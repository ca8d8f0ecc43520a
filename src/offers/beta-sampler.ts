/**
 * Gamma and Beta draws on the seeded {@link Random}, for Thompson sampling. Marsaglia–Tsang for
 * Gamma (shape ≥ 1; shape < 1 through the boosting identity), Beta as a ratio of Gammas.
 */
import type { Random } from '../model/random.js';

/**
 * A Gamma(shape, 1) draw.
 *
 * @example sampleGamma(new Random(1), 2); // ≈ 2 on average
 */
export function sampleGamma(rng: Random, shape: number): number {
  if (!(shape > 0)) throw new RangeError(`gamma shape must be > 0, got ${shape}`);
  if (shape < 1) {
    // Gamma(a) = Gamma(a + 1) · U^(1/a): keeps the fast a ≥ 1 method for small shapes.
    let u = 0;
    while (u === 0) u = rng.next();
    return sampleGamma(rng, shape + 1) * Math.pow(u, 1 / shape);
  }
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = rng.normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = rng.next();
    if (u < 1 - 0.0331 * x * x * x * x) return d * v;
    if (u > 0 && Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
  }
}

/**
 * A Beta(a, b) draw in (0, 1).
 *
 * @example sampleBeta(new Random(1), 3, 7); // ≈ 0.3 on average
 */
export function sampleBeta(rng: Random, a: number, b: number): number {
  const x = sampleGamma(rng, a);
  const y = sampleGamma(rng, b);
  return x + y === 0 ? a / (a + b) : x / (x + y);
}
