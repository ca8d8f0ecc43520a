/**
 * Top-k selection over a dense score vector in one pass, with a small sorted buffer: O(n + hits·k),
 * much cheaper than sorting all n items for every test user.
 */

/** The largest k the CLI takes (`--k`): beyond it a ranking cut-off means little, and memory grows with k per test user. */
export const MAX_K = 10_000;

/**
 * Indices of the k largest finite scores, best first; ties go to the lower index so results are
 * repeatable. Items scored -Infinity (already seen) are never returned.
 *
 * @example
 * ```ts
 * topK(new Float32Array([0.1, 0.9, -Infinity, 0.5]), 2); // Int32Array [1, 3]
 * ```
 */
export function topK(scores: Float32Array | Float64Array, k: number): Int32Array {
  const idx = new Int32Array(k);
  const val = new Float64Array(k).fill(-Infinity);
  let size = 0;
  for (let i = 0; i < scores.length; i++) {
    const s = scores[i];
    if (s === -Infinity || s !== s) continue;
    if (size === k && s <= val[k - 1]) continue;
    let p = size < k ? size++ : k - 1;
    // Strictly greater moves an entry down, so an earlier (lower) index wins a tie.
    while (p > 0 && val[p - 1] < s) {
      val[p] = val[p - 1];
      idx[p] = idx[p - 1];
      p--;
    }
    val[p] = s;
    idx[p] = i;
  }
  return idx.slice(0, size);
}
