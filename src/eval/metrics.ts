/**
 * Ranking metrics for one user's top-k list against their held-out items, and their average.
 */

export interface UserMetrics {
  hr: number;
  ndcg: number;
  recall: number;
}

/**
 * HR@k (any held-out item in the list), NDCG@k (binary gains, ideal DCG over min(|held|, k)
 * positions) and Recall@k (hits / |held|) for one user. `list` is the top-k list, which may be
 * shorter than k when fewer items could be ranked; `k` defaults to its length.
 *
 * @example
 * ```ts
 * rankMetrics(Int32Array.of(5, 7, 9), new Set([7])); // { hr: 1, ndcg: 1 / Math.log2(3), recall: 1 }
 * ```
 */
export function rankMetrics(list: ArrayLike<number>, held: ReadonlySet<number>, k: number = list.length): UserMetrics {
  if (held.size === 0) return { hr: 0, ndcg: 0, recall: 0 };
  let hits = 0;
  let dcg = 0;
  for (let p = 0; p < list.length; p++) {
    if (held.has(list[p])) {
      hits++;
      dcg += 1 / Math.log2(p + 2);
    }
  }
  let idcg = 0;
  // The ideal list puts every held-out item first, up to the cutoff k; a list shorter than k (fewer
  // rankable items) is not a smaller ideal, or NDCG would be inflated.
  for (let p = 0; p < Math.min(held.size, k); p++) idcg += 1 / Math.log2(p + 2);
  // (k = 0, an empty list without an explicit cutoff: nothing was ranked, NDCG 0 rather than 0/0.)
  return { hr: hits > 0 ? 1 : 0, ndcg: idcg > 0 ? dcg / idcg : 0, recall: hits / held.size };
}

/** Running means of per-user metrics plus catalog coverage (distinct items recommended / catalog size). */
export class MetricsAccumulator {
  private n = 0;
  private sum: UserMetrics = { hr: 0, ndcg: 0, recall: 0 };
  private readonly shown: Uint8Array;
  private distinct = 0;
  /** `k`: the cutoff, for NDCG's ideal list (a user's list may be shorter when few items are rankable). */
  constructor(
    readonly catalogSize: number,
    readonly k?: number,
  ) {
    this.shown = new Uint8Array(catalogSize);
  }
  add(list: ArrayLike<number>, held: ReadonlySet<number>): void {
    const m = rankMetrics(list, held, this.k ?? list.length);
    this.n++;
    this.sum.hr += m.hr;
    this.sum.ndcg += m.ndcg;
    this.sum.recall += m.recall;
    for (let p = 0; p < list.length; p++) {
      if (this.shown[list[p]] === 0) {
        this.shown[list[p]] = 1;
        this.distinct++;
      }
    }
  }
  get users(): number {
    return this.n;
  }
  result(): UserMetrics & { coverage: number } {
    const d = Math.max(this.n, 1);
    return {
      hr: this.sum.hr / d,
      ndcg: this.sum.ndcg / d,
      recall: this.sum.recall / d,
      coverage: this.catalogSize > 0 ? this.distinct / this.catalogSize : 0,
    };
  }
}
