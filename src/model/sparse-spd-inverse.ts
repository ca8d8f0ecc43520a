/**
 * In-place inverse of a symmetric positive-definite matrix in Float64, row-major, by Cholesky.
 *
 * Plain JavaScript, no dependencies, so it runs the same in Node and in a browser worker. Every
 * inner loop walks a contiguous row (dot products and axpys on row prefixes), which is what makes
 * V8 fast here; the three phases (factor, invert the factor, multiply) cost about n³/6 multiply-adds
 * each, so n = 3,665 takes tens of seconds on one core.
 */
import { ModelError } from '../errors.js';

/**
 * Replaces the SPD matrix `a` (n × n, row-major; only the lower triangle is read) by its inverse
 * (both triangles written). Throws a ModelError if the matrix is not positive definite.
 *
 * @example
 * ```ts
 * const a = new Float64Array([4, 2, 2, 3]);
 * invertSpdInPlace(a, 2); // a ≈ [0.375, -0.25, -0.25, 0.5]
 * ```
 */
export function invertSpdInPlace(a: Float64Array, n: number, onProgress?: (fraction: number) => void): void {
  if (a.length !== n * n) throw new ModelError(`invertSpdInPlace: expected ${n * n} values, got ${a.length}`);
  choleskyLower(a, n, (f) => onProgress?.(f / 3));
  invertLowerRows(a, n, (f) => onProgress?.((1 + f) / 3));
  lowerTransposeTimesLower(a, n, (f) => onProgress?.((2 + f) / 3));
  // Mirror the lower triangle into the upper one so that callers can read whole rows.
  for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) a[j * n + i] = a[i * n + j];
}

/** Dot product of a[p..p+len) and a[q..q+len), unrolled by 4 with separate accumulators. */
function dot(a: Float64Array, p: number, q: number, len: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let k = 0;
  for (; k + 3 < len; k += 4) {
    s0 += a[p + k] * a[q + k];
    s1 += a[p + k + 1] * a[q + k + 1];
    s2 += a[p + k + 2] * a[q + k + 2];
    s3 += a[p + k + 3] * a[q + k + 3];
  }
  for (; k < len; k++) s0 += a[p + k] * a[q + k];
  return s0 + s1 + s2 + s3;
}

/** y[0..len) += alpha · a[p..p+len), unrolled by 4 (also the large neighbour build's). */
export function axpy(y: Float64Array, a: Float64Array, p: number, alpha: number, len: number): void {
  let k = 0;
  for (; k + 3 < len; k += 4) {
    y[k] += alpha * a[p + k];
    y[k + 1] += alpha * a[p + k + 1];
    y[k + 2] += alpha * a[p + k + 2];
    y[k + 3] += alpha * a[p + k + 3];
  }
  for (; k < len; k++) y[k] += alpha * a[p + k];
}

/** Cholesky–Crout by rows: afterwards the lower triangle of `a` holds L with A = L Lᵀ. */
function choleskyLower(a: Float64Array, n: number, onProgress: (f: number) => void): void {
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    for (let j = 0; j < i; j++) {
      const rj = j * n;
      a[ri + j] = (a[ri + j] - dot(a, ri, rj, j)) / a[rj + j];
    }
    const d = a[ri + i] - dot(a, ri, ri, i);
    // The Gram matrix plus λI is positive definite for any λ > 0 in exact arithmetic: a pivot that is
    // not means λ is too small for float64 (items with identical buyers), i.e. the L2 setting.
    if (!(d > 0)) throw new ModelError(`matrix is not positive definite (pivot ${i} = ${d}): the L2 penalty is too small for these counts; use a larger one (--l2 / ease-l2)`);
    a[ri + i] = Math.sqrt(d);
    if ((i & 255) === 0) onProgress(cube(i / n));
  }
}

/** Lower triangle L → W = L⁻¹ by rows: W[i,:] = (eᵢ − Σₖ₍ₖ₌₀..ᵢ₋₁₎ L[i,k]·W[k,:]) / L[i,i]. */
function invertLowerRows(a: Float64Array, n: number, onProgress: (f: number) => void): void {
  const row = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    row.fill(0, 0, i + 1);
    row[i] = 1;
    for (let k = 0; k < i; k++) {
      const lik = a[ri + k];
      if (lik !== 0) axpy(row, a, k * n, -lik, k + 1);
    }
    const inv = 1 / a[ri + i];
    for (let k = 0; k <= i; k++) a[ri + k] = row[k] * inv;
    if ((i & 255) === 0) onProgress(cube(i / n));
  }
}

/** Lower triangle W → lower triangle of Wᵀ W, row i from rows k ≥ i only, so it runs in place. */
function lowerTransposeTimesLower(a: Float64Array, n: number, onProgress: (f: number) => void): void {
  const row = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    row.fill(0, 0, i + 1);
    for (let k = i; k < n; k++) {
      const wki = a[k * n + i];
      if (wki !== 0) axpy(row, a, k * n, wki, i + 1);
    }
    const ri = i * n;
    for (let k = 0; k <= i; k++) a[ri + k] = row[k];
    // Row i costs (n − i)(i + 1): the work done through row i is 3x² − 2x³ of the whole, x = i/n.
    if ((i & 255) === 0) onProgress(smoothstep(i / n));
  }
}

const cube = (x: number): number => x * x * x;
const smoothstep = (x: number): number => x * x * (3 - 2 * x);
