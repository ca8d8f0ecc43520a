/**
 * A learned affinity for the offers replay: P(the shopper's next basket contains something in an
 * offer's scope), from a logistic regression over features of the shopper's own earlier baskets
 * (repeat purchases, recency) and of what every shopper's earlier baskets taught (popularity, recent
 * popularity, repeat rates; optionally item → offer transitions between consecutive baskets and
 * item → offer co-purchase within a basket). The weights and the global counts are learned online: a basket is
 * scored first and only then learned from, so a prediction never sees its own basket or any later
 * one. This stands in for what the on-device model would have from the global model (the counts and
 * weights) plus the shopper's own events. Pure (no I/O).
 */

import {
  AFFINITY_FEATURES,
  affinityFeatureRows,
  affinityProbabilities,
  TABLE_FEATURES,
  type AffinityFeature,
  type AffinitySnapshot,
  type HistoryBasket,
} from '../affinity-model.js';

const DAY_MS = 86_400_000;

// The features and their code live in ../affinity-model.ts (shared with the device); re-exported here.
export { AFFINITY_FEATURES, type AffinityFeature, type HistoryBasket };

/**
 * The default features: all but the item → offer tables (`transition`, `coPurchase`). On Online
 * Retail those two moved the hit rate by less than 0.002 (0.373 with, 0.374 without) while costing
 * an items × offers table each, which the global model would have to ship to every device.
 */
export const DEFAULT_AFFINITY_FEATURES: readonly AffinityFeature[] = AFFINITY_FEATURES.filter((f) => !TABLE_FEATURES.includes(f));

export interface LearnedAffinityOptions {
  /** Features to use (default: {@link DEFAULT_AFFINITY_FEATURES}). */
  features?: readonly AffinityFeature[];
  /** Adagrad step size. */
  learningRate?: number;
  /** Half-life of `recentPopularity`, in days. */
  recentHalfLifeDays?: number;
  /** Items seen fewer times than this before do not count in `transition` / `coPurchase`. */
  minItemCount?: number;
  /**
   * Privacy threshold of {@link LearnedAffinity.snapshot}: an offer whose scope fewer than this many
   * distinct customers have bought publishes no statistics (default {@link DEFAULT_MIN_CUSTOMERS}).
   * The learner itself always uses the exact counts.
   */
  minCustomers?: number;
}

/** Default {@link LearnedAffinityOptions.minCustomers}: an offer bought by fewer customers is not published. */
export const DEFAULT_MIN_CUSTOMERS = 10;
/** Significant digits of a published share (`popularity`, `recentPopularity`, `repeatRate`). */
export const SHARE_DIGITS = 2;
/** Significant digits of a published weight. */
export const WEIGHT_DIGITS = 3;

/** `x` rounded to `digits` significant digits (0 stays 0); the result is the shortest JSON number on that grid. */
export function roundSignificant(x: number, digits: number): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  return Number(x.toPrecision(digits));
}

/** What `predict` returns: a probability per offer (same order as the offer ids) and the features behind it. */
export interface AffinityPrediction {
  readonly p: Float64Array;
  /** Row o holds the features of offer o (the first entry is the constant 1). */
  readonly x: readonly Float64Array[];
}

/**
 * Online logistic regression over {@link AFFINITY_FEATURES} (by default
 * {@link DEFAULT_AFFINITY_FEATURES}), trained with Adagrad, one step per offer per basket.
 *
 * @example
 * ```ts
 * const model = new LearnedAffinity(catalog.offers.map((o) => o.id));
 * for (const basket of basketsInTimeOrder) {
 *   const history = shopperBaskets(basket.customerId);        // strictly earlier baskets
 *   const pred = model.predict(history, basket.t - 1);        // before the basket …
 *   show(pred.p);
 *   model.learn(pred, history, toHistoryBasket(basket), basket.customerId); // … then learn from it
 * }
 * ```
 */
export class LearnedAffinity {
  readonly offerIds: readonly string[];
  readonly features: readonly AffinityFeature[];
  /** Weights: [intercept, ...one per feature]. */
  readonly weights: Float64Array;
  private readonly sumSq: Float64Array;
  private readonly index: ReadonlyMap<string, number>;
  private readonly use: ReadonlySet<AffinityFeature>;
  private readonly rate: number;
  private readonly recentHalfLife: number;
  private readonly minItemCount: number;
  private readonly minCustomers: number;

  private basketsSeen = 0;
  private readonly popularity: Float64Array;
  /** Decayed counts as of `recentT`. */
  private readonly recent: Float64Array;
  private recentTotal = 0;
  private recentT = 0;
  private readonly repeatTries: Float64Array;
  private readonly repeatHits: Float64Array;
  /** Distinct customers (or, for baskets learned without one, baskets) whose basket held the offer's scope. */
  private readonly buyers: Array<Set<string>>;
  /** item → (offer → count): item in a shopper's basket, offer in their next basket. */
  private readonly transitions = new Map<string, { from: number; to: Float64Array }>();
  /** item → (offer → count): item and offer in the same basket. */
  private readonly coPurchases = new Map<string, { from: number; to: Float64Array }>();

  constructor(offerIds: readonly string[], options: LearnedAffinityOptions = {}) {
    this.offerIds = [...offerIds];
    this.index = new Map(this.offerIds.map((id, i) => [id, i]));
    const wanted = options.features ?? DEFAULT_AFFINITY_FEATURES;
    this.features = AFFINITY_FEATURES.filter((f) => wanted.includes(f));
    this.use = new Set(this.features);
    this.rate = options.learningRate ?? 0.2;
    this.recentHalfLife = (options.recentHalfLifeDays ?? 14) * DAY_MS;
    this.minItemCount = options.minItemCount ?? 5;
    this.minCustomers = options.minCustomers ?? DEFAULT_MIN_CUSTOMERS;
    if (!(Number.isInteger(this.minCustomers) && this.minCustomers >= 0)) throw new RangeError(`minCustomers must be an integer ≥ 0, got ${options.minCustomers}`);
    const n = this.offerIds.length;
    this.popularity = new Float64Array(n);
    this.recent = new Float64Array(n);
    this.repeatTries = new Float64Array(n);
    this.repeatHits = new Float64Array(n);
    this.buyers = Array.from({ length: n }, () => new Set<string>());
    this.weights = new Float64Array(this.features.length + 1);
    this.sumSq = new Float64Array(this.features.length + 1).fill(1e-6);
    // Start from "as likely as it is popular" so the first baskets are not a coin toss.
    const pop = this.features.indexOf('popularity');
    if (pop >= 0) this.weights[pop + 1] = 1;
  }

  /** P(scope in the next basket) for every offer, from the shopper's earlier baskets (oldest first). */
  predict(history: readonly HistoryBasket[], now: number): AffinityPrediction {
    const g = this.globals();
    const last = history[history.length - 1];
    let itemsEver: Set<string> | undefined;
    if (this.use.has('coPurchase')) {
      itemsEver = new Set<string>();
      for (const b of history) for (const i of b.items ?? []) itemsEver.add(i);
    }
    const transition = this.use.has('transition') && last ? this.meanRow(this.transitions, last.items ?? []) : undefined;
    const coPurchase = itemsEver && history.length > 0 ? this.meanRow(this.coPurchases, itemsEver) : undefined;
    const x = affinityFeatureRows(this.features, { ...g, ...(transition ? { transition } : {}), ...(coPurchase ? { coPurchase } : {}) }, history, now);
    return { p: affinityProbabilities(this.weights, x), x };
  }

  /**
   * What the shop publishes for the device (`catalog.affinity`): the weights and the per-offer
   * global statistics, as plain JSON. This goes to every shopper, so it is not the learner's exact
   * state: an offer whose scope fewer than `minCustomers` distinct customers bought is left out
   * (the device scores it as never bought by anyone), every share is rounded to {@link SHARE_DIGITS}
   * significant digits and every weight to {@link WEIGHT_DIGITS}, so exact counts cannot be rebuilt
   * and one more order rarely changes a published value. A device given the snapshot reproduces
   * the prediction from the snapshot (`predictAffinity`), not {@link predict} exactly. Throws when
   * the model uses the item → offer table features, which a snapshot does not carry.
   */
  snapshot(options: { minCustomers?: number } = {}): AffinitySnapshot {
    const tables = this.features.filter((f) => TABLE_FEATURES.includes(f));
    if (tables.length > 0) throw new Error(`a published affinity snapshot cannot carry the item → offer table features (${tables.join(', ')}); fit without them`);
    const minCustomers = options.minCustomers ?? this.minCustomers;
    if (!(Number.isInteger(minCustomers) && minCustomers >= 0)) throw new RangeError(`minCustomers must be an integer ≥ 0, got ${options.minCustomers}`);
    const g = this.globals();
    const offers: AffinitySnapshot['offers'] = {};
    this.offerIds.forEach((id, o) => {
      // Too few buyers: publish nothing, exactly as for an offer nobody bought (EMPTY_OFFER_STATS).
      if (this.buyers[o]!.size < Math.max(1, minCustomers)) return;
      Object.defineProperty(offers, id, {
        value: {
          popularity: roundSignificant(g.popularity[o]!, SHARE_DIGITS),
          recentPopularity: roundSignificant(g.recentPopularity[o]!, SHARE_DIGITS),
          repeatRate: roundSignificant(g.repeatRate[o]!, SHARE_DIGITS),
        },
        enumerable: true,
        writable: true,
        configurable: true,
      });
    });
    return { features: [...this.features], weights: [...this.weights].map((w) => roundSignificant(w, WEIGHT_DIGITS)), offers };
  }

  /** How many distinct customers (baskets, where learned without a customer id) bought each offer's scope, in offer order. */
  customerCounts(): number[] {
    return this.buyers.map((s) => s.size);
  }

  /** The global per-offer statistics as shares, in offer order (what a snapshot publishes). */
  private globals(): { offerIds: readonly string[]; index: ReadonlyMap<string, number>; popularity: Float64Array; recentPopularity: Float64Array; repeatRate: Float64Array } {
    const n = this.offerIds.length;
    const popularity = new Float64Array(n);
    const recentPopularity = new Float64Array(n);
    const repeatRate = new Float64Array(n);
    const recentScale = this.recentTotal > 0 ? 1 / this.recentTotal : 0; // decay cancels in the ratio
    for (let o = 0; o < n; o++) {
      popularity[o] = this.basketsSeen > 0 ? this.popularity[o]! / this.basketsSeen : 0;
      recentPopularity[o] = this.recent[o]! * recentScale;
      repeatRate[o] = (this.repeatHits[o]! + 1) / (this.repeatTries[o]! + 4);
    }
    return { offerIds: this.offerIds, index: this.index, popularity, recentPopularity, repeatRate };
  }

  /**
   * Learn from a basket that has now happened: one gradient step per offer on the features `pred`
   * was made from (in scope or not), then the global counts. `history` is the shopper's baskets
   * before this one, as passed to `predict`. `customerId` (whose basket it is) counts the distinct
   * customers per offer for the snapshot's `minCustomers` threshold; without it the basket counts
   * as a customer of its own (so the threshold counts baskets, which is weaker).
   */
  learn(pred: AffinityPrediction, history: readonly HistoryBasket[], basket: HistoryBasket, customerId?: string): void {
    const n = this.offerIds.length;
    const inBasket = new Uint8Array(n);
    for (const id of basket.offers) {
      const o = this.index.get(id);
      if (o !== undefined) inBasket[o] = 1;
    }
    const w = this.weights;
    for (let o = 0; o < n; o++) {
      const err = pred.p[o]! - inBasket[o]!;
      const row = pred.x[o]!;
      for (let j = 0; j < w.length; j++) {
        const g = err * row[j]!;
        if (g === 0) continue;
        this.sumSq[j]! += g * g;
        w[j]! -= (this.rate * g) / Math.sqrt(this.sumSq[j]!);
      }
    }

    this.basketsSeen++;
    const decay = this.basketsSeen > 1 ? Math.pow(0.5, (basket.t - this.recentT) / this.recentHalfLife) : 0;
    for (let o = 0; o < n; o++) {
      this.recent[o]! *= decay;
      this.popularity[o]! += inBasket[o]!;
      this.recent[o]! += inBasket[o]!;
      if (inBasket[o]) this.buyers[o]!.add(customerId !== undefined ? `c:${customerId}` : `b:${this.basketsSeen}`);
    }
    this.recentTotal = this.recentTotal * decay + 1;
    this.recentT = basket.t;

    const bought = new Set<number>();
    for (const b of history) for (const id of b.offers) {
      const o = this.index.get(id);
      if (o !== undefined) bought.add(o);
    }
    for (const o of bought) {
      this.repeatTries[o]!++;
      this.repeatHits[o]! += inBasket[o]!;
    }
    const last = history[history.length - 1];
    if (last) for (const item of last.items ?? []) this.count(this.transitions, item, inBasket);
    for (const item of basket.items ?? []) this.count(this.coPurchases, item, inBasket);
  }

  private count(table: Map<string, { from: number; to: Float64Array }>, item: string, inBasket: Uint8Array): void {
    let row = table.get(item);
    if (!row) table.set(item, (row = { from: 0, to: new Float64Array(inBasket.length) }));
    row.from++;
    for (let o = 0; o < inBasket.length; o++) row.to[o]! += inBasket[o]!;
  }

  /** Mean over `items` (those seen at least `minItemCount` times) of P(offer | item); undefined when none qualifies. */
  private meanRow(table: ReadonlyMap<string, { from: number; to: Float64Array }>, items: Iterable<string>): Float64Array | undefined {
    const out = new Float64Array(this.offerIds.length);
    let used = 0;
    for (const item of items) {
      const row = table.get(item);
      if (!row || row.from < this.minItemCount) continue;
      used++;
      const inv = 1 / (row.from + 1);
      for (let o = 0; o < out.length; o++) out[o]! += row.to[o]! * inv;
    }
    if (used === 0) return undefined;
    for (let o = 0; o < out.length; o++) out[o]! /= used;
    return out;
  }
}
