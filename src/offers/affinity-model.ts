/**
 * The learned offer affinity, device side: P(the shopper's next basket contains something in an
 * offer's scope) from a logistic regression whose weights and per-offer global statistics the shop
 * publishes in the signed catalog (`catalog.affinity`, an {@link AffinitySnapshot}), and whose
 * shopper features come from the shopper's own purchase baskets on the device.
 *
 * The feature code here ({@link affinityFeatureRows}) is the only copy: the shop side
 * (`src/offers/eval/learned-affinity.ts`, which learns the weights online and writes snapshots)
 * calls it too, so a device given a snapshot computes exactly the rows, and so the probabilities,
 * that the published snapshot gives; the snapshot itself is rounded and leaves out rarely bought
 * offers for privacy (`LearnedAffinity.snapshot`), so these are close to, not equal to, the
 * learner's own at that moment. Pure: no Node, no DOM.
 */

const DAY_MS = 86_400_000;

/** The feature set, in weight order; a model or snapshot uses a subset, in this order. */
export const AFFINITY_FEATURES = [
  /** logit of the share of all earlier baskets containing the scope. */
  'popularity',
  /** logit of the same share with a 14-day half-life (what is selling now: seasons, trends). */
  'recentPopularity',
  /** 1 when the shopper has bought before. */
  'returning',
  /** Share of the shopper's baskets containing the scope, 30-day and 180-day half-lives. */
  'ownShare30',
  'ownShare180',
  /** log(1 + baskets of this shopper containing the scope). */
  'timesBought',
  /** The scope was in the shopper's last basket (and: that basket was less than a day ago). */
  'inLastBasket',
  'inLastBasketSameDay',
  /** log(1 + days since the shopper last bought the scope), and the same over their mean gap between baskets. */
  'daysSinceBought',
  'gapRatio',
  /** 1 when the shopper bought the scope before. */
  'boughtBefore',
  /** logit of P(scope again in the next basket | bought before), over all shoppers so far. */
  'repeatRate',
  /** recentPopularity for scopes bought before (a repeat that is also in season). */
  'boughtAndRecent',
  /** logit of the mean P(scope in next basket | item in previous basket) over the last basket's items. */
  'transition',
  /** logit of the mean P(scope in basket | item in basket) over every item the shopper bought. */
  'coPurchase',
  /** log(1 + shopper's baskets so far), and log(1 + days since their last basket). */
  'basketsSoFar',
  'daysSinceLastBasket',
  /** The shopper's last basket was less than a day ago. */
  'sameDay',
] as const;
/** One input of the shop's learned offer affinity (`localrec offers fit-affinity --features`; docs/OFFERS.md). */
export type AffinityFeature = (typeof AFFINITY_FEATURES)[number];

/**
 * Features that need item → offer tables (`transition`, `coPurchase`). They are not part of a
 * published snapshot: the tables would be items × offers per device, and on Online Retail they
 * moved the hit rate by less than 0.002.
 */
export const TABLE_FEATURES: readonly AffinityFeature[] = ['transition', 'coPurchase'];

/** The features a device can compute from a snapshot: all but {@link TABLE_FEATURES}. */
export const SNAPSHOT_FEATURES: readonly AffinityFeature[] = AFFINITY_FEATURES.filter((f) => !TABLE_FEATURES.includes(f));

/** What the shop publishes per offer: statistics over every shopper's baskets up to the snapshot. */
export interface AffinityOfferStats {
  /** Share of all baskets so far containing the scope, [0, 1]. */
  popularity: number;
  /** The same share with a 14-day half-life, [0, 1]. */
  recentPopularity: number;
  /** P(scope in the next basket | the shopper bought it before), smoothed with a Beta(1, 3) prior, [0, 1]. */
  repeatRate: number;
}

/**
 * The shop's learned affinity model as published in the signed catalog (`catalog.affinity`).
 * An offer of the catalog missing from `offers` counts as never bought by anyone (popularity 0,
 * recent popularity 0, repeat rate 1/4, the prior): the shop leaves out offers nobody, or fewer
 * than its `minCustomers` threshold of customers, bought. Published shares are rounded to 2
 * significant digits and weights to 3.
 */
export interface AffinitySnapshot {
  /** Feature names, a subset of {@link SNAPSHOT_FEATURES}; `weights[j + 1]` belongs to `features[j]`. */
  features: AffinityFeature[];
  /** [intercept, one per feature]. */
  weights: number[];
  /** Per-offer global statistics, keyed by offer id. */
  offers: Record<string, AffinityOfferStats>;
}

/** Statistics for an offer nobody has bought yet (what the shop's learner holds before any basket). */
export const EMPTY_OFFER_STATS: Readonly<AffinityOfferStats> = { popularity: 0, recentPopularity: 0, repeatRate: 1 / 4 };

/** One earlier basket of a shopper, as the affinity sees it. */
export interface HistoryBasket {
  t: number;
  /** Offer ids whose scope the basket contains. */
  offers: ReadonlySet<string>;
  /** Item ids in the basket (only the item → offer table features use them). */
  items?: ReadonlySet<string>;
}

/** Global per-offer statistics, in offer order, as {@link affinityFeatureRows} reads them. */
export interface AffinityGlobals {
  readonly offerIds: readonly string[];
  /** offer id → position in `offerIds`. */
  readonly index: ReadonlyMap<string, number>;
  readonly popularity: ArrayLike<number>;
  readonly recentPopularity: ArrayLike<number>;
  readonly repeatRate: ArrayLike<number>;
  /** Mean P(offer | item) rows for `transition` / `coPurchase`; absent = feature 0. Shop side only. */
  readonly transition?: ArrayLike<number>;
  readonly coPurchase?: ArrayLike<number>;
}

/**
 * The feature rows for every offer: row o is [1, one value per feature] for offer o, from the
 * shopper's earlier baskets (oldest first) as of `now`. The one implementation of the features,
 * used by the shop's learner and by the device.
 */
export function affinityFeatureRows(features: readonly AffinityFeature[], g: AffinityGlobals, history: readonly HistoryBasket[], now: number): Float64Array[] {
  const n = g.offerIds.length;
  const f = features;
  const nb = history.length;
  const last = history[nb - 1];
  const a30 = new Float64Array(n);
  const a180 = new Float64Array(n);
  const count = new Float64Array(n);
  const lastT = new Float64Array(n);
  let w30 = 0;
  let w180 = 0;
  for (const b of history) {
    const d30 = Math.pow(0.5, (now - b.t) / (30 * DAY_MS));
    const d180 = Math.pow(0.5, (now - b.t) / (180 * DAY_MS));
    w30 += d30;
    w180 += d180;
    for (const id of b.offers) {
      const o = g.index.get(id);
      if (o === undefined) continue;
      a30[o]! += d30;
      a180[o]! += d180;
      count[o]!++;
      lastT[o] = b.t;
    }
  }
  const gapDays = last ? (now - last.t) / DAY_MS : 0;
  const meanGap = nb > 1 ? (last!.t - history[0]!.t) / DAY_MS / (nb - 1) : 0;

  const x: Float64Array[] = [];
  for (let o = 0; o < n; o++) {
    const bought = count[o]! > 0;
    const recentPop = logit(g.recentPopularity[o]!);
    const row = new Float64Array(f.length + 1);
    row[0] = 1;
    for (let j = 0; j < f.length; j++) {
      let v = 0;
      switch (f[j]!) {
        case 'popularity': v = logit(g.popularity[o]!); break;
        case 'recentPopularity': v = recentPop; break;
        case 'returning': v = nb > 0 ? 1 : 0; break;
        case 'ownShare30': v = w30 > 0 ? a30[o]! / w30 : 0; break;
        case 'ownShare180': v = w180 > 0 ? a180[o]! / w180 : 0; break;
        case 'timesBought': v = Math.log1p(count[o]!); break;
        case 'inLastBasket': v = last && last.offers.has(g.offerIds[o]!) ? 1 : 0; break;
        case 'inLastBasketSameDay': v = last && gapDays < 1 && last.offers.has(g.offerIds[o]!) ? 1 : 0; break;
        case 'daysSinceBought': v = bought ? Math.log1p((now - lastT[o]!) / DAY_MS) : 0; break;
        case 'gapRatio': v = bought && meanGap > 0 ? Math.min(5, (now - lastT[o]!) / DAY_MS / meanGap) : 0; break;
        case 'boughtBefore': v = bought ? 1 : 0; break;
        case 'repeatRate': v = bought ? logit(g.repeatRate[o]!) : 0; break;
        case 'boughtAndRecent': v = bought ? recentPop : 0; break;
        case 'transition': v = g.transition ? logit(g.transition[o]!) : 0; break;
        case 'coPurchase': v = g.coPurchase ? logit(g.coPurchase[o]!) : 0; break;
        case 'basketsSoFar': v = Math.log1p(nb); break;
        case 'daysSinceLastBasket': v = nb > 0 ? Math.log1p(gapDays) : 0; break;
        case 'sameDay': v = nb > 0 && gapDays < 1 ? 1 : 0; break;
      }
      row[j + 1] = v;
    }
    x.push(row);
  }
  return x;
}

/** σ(w · x) for every row. */
export function affinityProbabilities(weights: ArrayLike<number>, rows: readonly Float64Array[]): Float64Array {
  const p = new Float64Array(rows.length);
  for (let o = 0; o < rows.length; o++) {
    const row = rows[o]!;
    let z = 0;
    for (let i = 0; i < row.length; i++) z += weights[i]! * row[i]!;
    p[o] = sigmoid(z);
  }
  return p;
}

/**
 * P(the next basket contains the scope) for each offer, on the device, from a published snapshot
 * and the shopper's own earlier baskets (oldest first; `purchaseBaskets` makes them from stored
 * purchase events). `offerIds` defaults to the snapshot's offers; pass the catalog's offer ids so
 * offers the snapshot does not list get a probability too (as never bought by anyone).
 *
 * @example
 * ```ts
 * const p = predictAffinity(catalog.affinity, purchaseBaskets(events, catalog, products), Date.now());
 * p.get('mugs10'); // 0.42
 * ```
 */
export function predictAffinity(
  snapshot: AffinitySnapshot,
  history: readonly HistoryBasket[],
  now: number,
  offerIds: readonly string[] = Object.keys(snapshot.offers),
): Map<string, number> {
  const globals = snapshotGlobals(snapshot, offerIds);
  const p = affinityProbabilities(snapshot.weights, affinityFeatureRows(snapshot.features, globals, history, now));
  return new Map(offerIds.map((id, o) => [id, p[o]!]));
}

/** The snapshot's per-offer statistics laid out in `offerIds` order (missing offers: {@link EMPTY_OFFER_STATS}). */
export function snapshotGlobals(snapshot: AffinitySnapshot, offerIds: readonly string[]): AffinityGlobals {
  const n = offerIds.length;
  const popularity = new Float64Array(n);
  const recentPopularity = new Float64Array(n);
  const repeatRate = new Float64Array(n);
  offerIds.forEach((id, o) => {
    const s = Object.hasOwn(snapshot.offers, id) ? snapshot.offers[id]! : EMPTY_OFFER_STATS;
    popularity[o] = s.popularity;
    recentPopularity[o] = s.recentPopularity;
    repeatRate[o] = s.repeatRate;
  });
  return { offerIds, index: new Map(offerIds.map((id, o) => [id, o])), popularity, recentPopularity, repeatRate };
}

export function logit(p: number): number {
  const q = Math.min(1 - 1e-4, Math.max(1e-4, p));
  return Math.log(q / (1 - q));
}
function sigmoid(z: number): number {
  return 1 / (1 + Math.exp(-z));
}
