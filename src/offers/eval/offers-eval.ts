/**
 * `localrec offers-eval`: replays the Online Retail data basket by basket, in time order, and asks
 * three policies which offers they would show each customer just before each basket:
 *
 * - `personalized`: the on-device policy ({@link chooseOffers}) with an affinity built only from
 *   what was known before that basket: by default what the device computes
 *   ({@link predictAffinity} on the shop's latest published snapshot and the customer's earlier
 *   purchase events grouped into baskets as the device groups them), or the `history` blend;
 * - `one-size-fits-all`: the offers whose scope appeared in the most earlier baskets, for everyone;
 * - `random`: k eligible offers drawn at random.
 *
 * A hit is a basket containing an item in a shown offer's scope (and reaching its minimum basket).
 * The customer redeems one offer per order, the one worth most to them; its discount is what the
 * hit costs. All policies share the catalog, the eligibility rules and the caps. Pure (no I/O).
 */
import { Random } from '../../model/random.js';
import type { CatalogItem, StoredEvent } from '../../types.js';
import { whyIneligible, type EligibilityContext } from '../eligibility.js';
import { isReturningShopper, offerHistory } from '../offer-history.js';
import { chooseOffers } from '../policy.js';
import { indexProducts, type ProductIndex } from '../product-index.js';
import type { AffinitySnapshot, Offer, OfferCatalog, OfferObjective } from '../types.js';
import { predictAffinity } from '../affinity-model.js';
import { DEFAULT_BASKET_GAP_MS, offerScopeLookup, purchaseBaskets } from '../purchase-baskets.js';
import { LearnedAffinity, type AffinityFeature, type HistoryBasket } from './learned-affinity.js';
import type { Basket, RetailData } from './retail-data.js';

export type OfferGranularity = 'items' | 'groups' | 'categories';
/**
 * Where the personalized policy's affinity comes from: `learned` (what the device ships: the shop's
 * {@link LearnedAffinity}, an online logistic regression over the shopper's repeat/recency features
 * and global popularity and repeat rates, is published as a snapshot every `publishEveryDays`, and
 * each basket's affinity is `predictAffinity(latest snapshot, the customer's earlier purchases
 * grouped into baskets as the device groups them, now)`) or `history` (the earlier hand-tuned
 * blend: the shopper's decayed share shrunk toward a repeat rate or a category transition estimate).
 */
export type AffinityKind = 'learned' | 'history';
export const AFFINITY_KINDS: readonly AffinityKind[] = ['learned', 'history'];
export const POLICIES = ['personalized', 'one-size-fits-all', 'random'] as const;
export type PolicyName = (typeof POLICIES)[number];

export interface OffersEvalOptions {
  /** Offers shown before each basket. */
  k: number;
  seed: number;
  /**
   * `items`: one offer per popular product (stock code); `groups`: one per popular product group
   * (stock-code stem: all colours/sizes of a product); `categories`: one per derived category.
   */
  granularity: OfferGranularity;
  /** How many products or product groups get an offer (most-bought first), for `items` and `groups`. */
  groups: number;
  /** Percent off the in-scope spend. */
  percent: number;
  /** Exploration share passed to the personalized policy. */
  exploration: number;
  /** `priorStrength` passed to the personalized policy (the policy's default when absent). */
  priorStrength?: number;
  /** `objective` passed to the personalized policy (default `value`: expected value to the shop). */
  objective?: OfferObjective;
  /** Half-life, in days, of a past basket's weight in the customer's own affinity (`history`). */
  halfLifeDays: number;
  /** Affinity of the personalized policy. */
  affinity: AffinityKind;
  /**
   * Features of the `learned` affinity (default: `DEFAULT_AFFINITY_FEATURES`), for ablations. The
   * item → offer table features (`transition`, `coPurchase`) cannot be published to a device, so
   * the `learned` replay refuses them.
   */
  features?: readonly AffinityFeature[];
  /**
   * `learned`: the shop publishes a new snapshot of its learner when a basket falls in a later
   * period of this many days (periods counted from the epoch, UTC) than the last snapshot; 0 = a
   * fresh snapshot before every basket. Default 1 (daily).
   */
  publishEveryDays?: number;
  /**
   * `learned`: the published snapshot leaves out offers fewer than this many distinct customers
   * have bought so far (default `DEFAULT_MIN_CUSTOMERS`, 10, as `offers fit-affinity` publishes).
   */
  minCustomers?: number;
  /** `learned`: the device's basket grouping, in minutes (purchases this close are one basket). Default 30. */
  basketGapMinutes?: number;
  onProgress?: (done: number, total: number) => void;
  /** Use this catalog instead of building one from the data (tests hold it fixed while changing baskets). */
  offers?: RetailOffers;
  /** Called for every basket and policy with what was shown before it and whether it hit (for tests and traces). */
  onDecision?: (d: { index: number; customerId: string; policy: PolicyName; shown: string[]; redeemed?: string }) => void;
}

export const DEFAULT_EVAL_OPTIONS: OffersEvalOptions = {
  k: 2,
  seed: 1,
  granularity: 'items',
  groups: 200,
  percent: 10,
  exploration: 0.1,
  halfLifeDays: 90,
  affinity: 'learned',
  publishEveryDays: 1,
  basketGapMinutes: DEFAULT_BASKET_GAP_MS / 60_000,
};

export interface PolicyResult {
  policy: PolicyName;
  granularity: OfferGranularity;
  k: number;
  offers: number;
  baskets: number;
  hits: number;
  hitRate: number;
  /** Baskets of customers who had bought before (the personalized policy has their history). */
  repeatBaskets: number;
  repeatHitRate: number;
  discountSpent: number;
  discountPerHit: number;
  impressions: number;
  exploreShare: number;
  distinctOffersShown: number;
  /** The offers shown most often, with how often. */
  offersShown: Array<{ offerId: string; title: string; shown: number }>;
}

/** The offer catalog the replay uses, built from the data with the data's prices. */
export interface RetailOffers {
  catalog: OfferCatalog;
  /** Which offer (if any) an item belongs to; every item is in at most one offer's scope. */
  offerOfItem: ReadonlyMap<string, string>;
}

const MARGIN = 0.3;
const MIN_BASKET = 10;
const DAY_MS = 86_400_000;
// Categories that are not products (postage, fees) or that no rule recognised get no offer.
const NO_OFFER = new Set(['service', 'other']);

/**
 * One offer per product group or category, `percent`% off the in-scope spend. `typicalSpend` is
 * the mean in-scope spend of the baskets that contain the scope, so the policy values offers in
 * the data's prices.
 */
export function buildRetailOffers(data: RetailData, opts: Pick<OffersEvalOptions, 'granularity' | 'groups' | 'percent'>): RetailOffers {
  const items = new Map(data.items.map((i) => [i.id, i]));
  const keyOf = (id: string): string | undefined => {
    const item = items.get(id);
    if (!item || NO_OFFER.has(item.category ?? 'other')) return undefined;
    if (opts.granularity === 'categories') return `cat-${item.category}`;
    return opts.granularity === 'items' ? `itm-${id}` : `grp-${/^\d+/.exec(id)?.[0] ?? id}`;
  };
  const baskets = new Map<string, number>();
  const spend = new Map<string, number>();
  const members = new Map<string, Map<string, number>>();
  for (const b of data.baskets) {
    const inBasket = new Map<string, number>();
    for (const l of b.lines) {
      const key = keyOf(l.itemId);
      if (!key) continue;
      inBasket.set(key, (inBasket.get(key) ?? 0) + l.quantity * l.price);
      let m = members.get(key);
      if (!m) members.set(key, (m = new Map()));
      m.set(l.itemId, (m.get(l.itemId) ?? 0) + 1);
    }
    for (const [key, s] of inBasket) {
      baskets.set(key, (baskets.get(key) ?? 0) + 1);
      spend.set(key, (spend.get(key) ?? 0) + s);
    }
  }
  let keys = [...baskets.keys()].sort((a, b) => baskets.get(b)! - baskets.get(a)! || (a < b ? -1 : 1));
  if (opts.granularity !== 'categories') keys = keys.slice(0, opts.groups);
  const offerOfItem = new Map<string, string>();
  const offers: Offer[] = keys.map((key) => {
    const typicalSpend = round2(spend.get(key)! / baskets.get(key)!);
    const ids = [...members.get(key)!.keys()].sort();
    for (const id of ids) offerOfItem.set(id, key);
    const name =
      opts.granularity === 'categories'
        ? key.slice(4)
        : (items.get([...members.get(key)!].sort((a, b) => b[1] - a[1])[0]![0])?.title ?? key).toLowerCase() + (ids.length > 1 ? ' (all variants)' : '');
    return {
      id: key,
      title: `${opts.percent}% off ${name}`,
      // "10% off, up to £X": the ceiling is the discount on a typical order, so one wholesale-sized
      // basket cannot take a discount many times the offer's typical cost.
      discount: { kind: 'percent', percent: opts.percent, maxAmount: Math.max(0.01, round2((opts.percent / 100) * typicalSpend)) },
      scope: opts.granularity === 'categories' ? { kind: 'categories', categories: [key.slice(4)] } : { kind: 'items', itemIds: ids },
      minBasket: MIN_BASKET,
      limits: { maxRedemptions: 50, coolDownHours: 24 },
      hints: { margin: MARGIN, typicalSpend },
    };
  });
  return { catalog: { version: 1, issuedAt: data.baskets[0]?.t ?? 0, currency: 'GBP', offers }, offerOfItem };
}

interface CustomerState {
  purchases: StoredEvent[];
  baskets: Array<HistoryBasket & { categories: ReadonlySet<string> }>;
  /** Every offer scope the customer has bought from. */
  bought: Set<string>;
  /** Offer impressions/redemptions per policy: each policy's caps see only its own history. */
  offerEvents: Record<PolicyName, StoredEvent[]>;
}

/** What every customer's earlier baskets taught, updated only after a basket has been scored. */
class GlobalSignal {
  basketsSeen = 0;
  readonly popularity = new Map<string, number>();
  /** For consecutive baskets of one customer: category in the earlier → offers in the later. */
  readonly fromCategory = new Map<string, number>();
  readonly categoryToOffer = new Map<string, Map<string, number>>();

  /** For customers who had bought an offer's scope before: how often the next basket had it again. */
  readonly repeatTries = new Map<string, number>();
  readonly repeatHits = new Map<string, number>();

  learn(offers: ReadonlySet<string>, previous: { categories: ReadonlySet<string> } | undefined, boughtBefore: ReadonlySet<string>): void {
    this.basketsSeen++;
    for (const o of offers) this.popularity.set(o, (this.popularity.get(o) ?? 0) + 1);
    for (const o of boughtBefore) {
      this.repeatTries.set(o, (this.repeatTries.get(o) ?? 0) + 1);
      if (offers.has(o)) this.repeatHits.set(o, (this.repeatHits.get(o) ?? 0) + 1);
    }
    if (!previous) return;
    for (const c of previous.categories) {
      this.fromCategory.set(c, (this.fromCategory.get(c) ?? 0) + 1);
      let m = this.categoryToOffer.get(c);
      if (!m) this.categoryToOffer.set(c, (m = new Map()));
      for (const o of offers) m.set(o, (m.get(o) ?? 0) + 1);
    }
  }

  /** P(scope in the next basket | the customer bought it before), with a weak Beta(1, 3) prior. */
  repeatRate(offerId: string): number {
    return ((this.repeatHits.get(offerId) ?? 0) + 1) / ((this.repeatTries.get(offerId) ?? 0) + 4);
  }

  popularityOf(offerId: string): number {
    return this.basketsSeen === 0 ? 0 : (this.popularity.get(offerId) ?? 0) / this.basketsSeen;
  }

  /** P(offer in next basket | categories of the last basket), averaged over those categories. */
  transition(offerId: string, lastCategories: ReadonlySet<string>): number | undefined {
    let sum = 0;
    let n = 0;
    for (const c of lastCategories) {
      const from = this.fromCategory.get(c);
      if (!from) continue;
      sum += (this.categoryToOffer.get(c)?.get(offerId) ?? 0) / from;
      n++;
    }
    return n > 0 ? sum / n : undefined;
  }
}

/**
 * The personalized affinity before a basket: a time-decayed share of the customer's own earlier
 * baskets containing the offer's scope, shrunk toward a global estimate learned from other
 * customers' earlier baskets: the scope's repeat rate when the customer bought it before, else the
 * transition estimate from the categories of their last basket (global popularity for a first
 * basket). Uses nothing at or after `now`.
 */
function personalAffinity(state: CustomerState | undefined, global: GlobalSignal, now: number, halfLifeDays: number): (offer: Offer) => number {
  // How many baskets' worth the global estimate counts for against the customer's own history.
  const PRIOR_BASKETS = 0.5;
  if (!state || state.baskets.length === 0) return (offer) => global.popularityOf(offer.id);
  const own = new Map<string, number>();
  let weight = 0;
  for (const b of state.baskets) {
    const w = Math.pow(0.5, (now - b.t) / (halfLifeDays * DAY_MS));
    weight += w;
    for (const o of b.offers) own.set(o, (own.get(o) ?? 0) + w);
  }
  const last = state.baskets[state.baskets.length - 1]!.categories;
  return (offer) => {
    const prior = state.bought.has(offer.id) ? global.repeatRate(offer.id) : (global.transition(offer.id, last) ?? global.popularityOf(offer.id));
    return ((own.get(offer.id) ?? 0) + PRIOR_BASKETS * prior) / (weight + PRIOR_BASKETS);
  };
}

/**
 * Replay every basket in time order and score the three policies.
 *
 * @example
 * ```ts
 * const results = runOffersEval(await loadRetailData(path), { ...DEFAULT_EVAL_OPTIONS, k: 2 });
 * for (const r of results) console.log(JSON.stringify(r));
 * ```
 */
export function runOffersEval(data: RetailData, opts: OffersEvalOptions): PolicyResult[] {
  const { catalog, offerOfItem } = opts.offers ?? buildRetailOffers(data, opts);
  const products = indexProducts(data.items);
  const category = new Map<string, string>(data.items.map((i: CatalogItem) => [i.id, i.category ?? 'other']));
  const global = new GlobalSignal();
  const offerIds = catalog.offers.map((o) => o.id);
  const learned = opts.affinity === 'learned' ? new LearnedAffinity(offerIds, { ...(opts.features ? { features: opts.features } : {}), ...(opts.minCustomers !== undefined ? { minCustomers: opts.minCustomers } : {}) }) : undefined;
  // The device side of `learned`: the latest published snapshot and the device's own baskets.
  const publishMs = (opts.publishEveryDays ?? 1) * DAY_MS;
  if (!(publishMs >= 0)) throw new RangeError(`publishEveryDays must be ≥ 0, got ${opts.publishEveryDays}`);
  const gapMs = (opts.basketGapMinutes ?? DEFAULT_BASKET_GAP_MS / 60_000) * 60_000;
  if (!(gapMs >= 0)) throw new RangeError(`basketGapMinutes must be ≥ 0, got ${opts.basketGapMinutes}`);
  const offersOf = offerScopeLookup(catalog.offers, products);
  let snapshot: AffinitySnapshot | undefined;
  let publishedPeriod = -Infinity;
  const customers = new Map<string, CustomerState>();
  const rng = new Random(opts.seed);
  const tally = Object.fromEntries(
    POLICIES.map((p) => [p, { hits: 0, repeatBaskets: 0, repeatHits: 0, discount: 0, impressions: 0, explored: 0, shown: new Map<string, number>() }]),
  ) as Record<PolicyName, { hits: number; repeatBaskets: number; repeatHits: number; discount: number; impressions: number; explored: number; shown: Map<string, number> }>;

  // What a basket teaches (the customer's purchases and baskets, the global counts, the learner)
  // waits here until the replay reaches a later time: an invoice sharing a basket's timestamp (122
  // of them) is not yet past data for it, for any policy or signal.
  const pending: Array<{ t: number; commit: () => void }> = [];
  const commitBefore = (t: number): void => {
    let n = 0;
    while (n < pending.length && pending[n]!.t < t) pending[n++]!.commit();
    pending.splice(0, n);
  };

  data.baskets.forEach((basket, index) => {
    if (index % 2000 === 0) opts.onProgress?.(index, data.baskets.length);
    commitBefore(basket.t);
    let state = customers.get(basket.customerId);
    if (!state) customers.set(basket.customerId, (state = { purchases: [], baskets: [], bought: new Set(), offerEvents: { personalized: [], 'one-size-fits-all': [], random: [] } }));
    const now = basket.t - 1;
    const repeat = state.baskets.length > 0;
    // The shop's learner scores the basket from its own (invoice) history, to learn from it after.
    const prediction = learned?.predict(state.baskets, now);
    let affinity: (offer: Offer) => number;
    if (learned) {
      // Re-publish when this basket is in a later period: the snapshot holds only earlier baskets.
      const period = publishMs > 0 ? Math.floor(basket.t / publishMs) : index;
      if (period !== publishedPeriod || !snapshot) [snapshot, publishedPeriod] = [learned.snapshot(), period];
      const device = predictAffinity(snapshot, purchaseBaskets(state.purchases, offersOf, { gapMs, now }), now, offerIds);
      affinity = (offer) => device.get(offer.id) ?? 0;
    } else affinity = personalAffinity(state, global, now, opts.halfLifeDays);
    for (const policy of POLICIES) {
      // What the device would hold just before the basket: an earlier invoice with the same
      // timestamp (122 of them) is not yet known to any policy (chooseOffers drops it too).
      const events = [...state.purchases, ...state.offerEvents[policy]].filter((e) => e.t <= now);
      let shown: Array<{ offerId: string; explore: boolean }>;
      if (policy === 'personalized') {
        shown = chooseOffers(
          { catalog, products, events, affinity: { scope: affinity } },
          {
            k: opts.k,
            seed: (opts.seed * 1_000_003 + index) >>> 0,
            exploration: opts.exploration,
            context: { now },
            ...(opts.priorStrength !== undefined ? { priorStrength: opts.priorStrength } : {}),
            ...(opts.objective ? { objective: opts.objective } : {}),
          },
        );
      } else {
        const ctx: EligibilityContext = { now, history: offerHistory(events), returning: isReturningShopper(events) };
        const eligible = catalog.offers.filter((o) => whyIneligible(o, ctx) === null);
        const picked =
          policy === 'random'
            ? rng.shuffle(eligible).slice(0, opts.k)
            : eligible.sort((a, b) => (global.popularity.get(b.id) ?? 0) - (global.popularity.get(a.id) ?? 0) || (a.id < b.id ? -1 : 1)).slice(0, opts.k);
        shown = picked.map((o) => ({ offerId: o.id, explore: false }));
      }
      const t = tally[policy];
      const redeemed = redeem(basket, shown.map((s) => s.offerId), catalog, offerOfItem);
      for (const s of shown) {
        state.offerEvents[policy].push({ t: now, type: 'offer_impression', offerId: s.offerId });
        t.shown.set(s.offerId, (t.shown.get(s.offerId) ?? 0) + 1);
        if (s.explore) t.explored++;
      }
      t.impressions += shown.length;
      opts.onDecision?.({ index, customerId: basket.customerId, policy, shown: shown.map((s) => s.offerId), ...(redeemed ? { redeemed: redeemed.offerId } : {}) });
      if (repeat) t.repeatBaskets++;
      if (redeemed) {
        state.offerEvents[policy].push({ t: basket.t, type: 'offer_redeemed', offerId: redeemed.offerId });
        t.hits++;
        if (repeat) t.repeatHits++;
        t.discount += redeemed.discount;
      }
    }
    // Only after every policy has chosen, and once the replay has moved past its time, does this
    // basket become past data.
    const customer = state;
    pending.push({
      t: basket.t,
      commit: () => {
        const offers = new Set<string>();
        const categories = new Set<string>();
        const items = new Set<string>();
        for (const l of basket.lines) {
          items.add(l.itemId);
          const o = offerOfItem.get(l.itemId);
          if (o) offers.add(o);
          categories.add(category.get(l.itemId) ?? 'other');
          customer.purchases.push({ t: basket.t, type: 'purchase', itemId: l.itemId, quantity: l.quantity, price: l.price });
        }
        global.learn(offers, customer.baskets[customer.baskets.length - 1], customer.bought);
        if (prediction) learned!.learn(prediction, customer.baskets, { t: basket.t, offers, items }, basket.customerId);
        customer.baskets.push({ t: basket.t, offers, items, categories });
        for (const o of offers) customer.bought.add(o);
      },
    });
  });
  commitBefore(Infinity);
  opts.onProgress?.(data.baskets.length, data.baskets.length);

  const titles = new Map(catalog.offers.map((o) => [o.id, o.title]));
  return POLICIES.map((policy) => {
    const t = tally[policy];
    const n = data.baskets.length;
    return {
      policy,
      granularity: opts.granularity,
      k: opts.k,
      offers: catalog.offers.length,
      baskets: n,
      hits: t.hits,
      hitRate: round4(t.hits / Math.max(1, n)),
      repeatBaskets: t.repeatBaskets,
      repeatHitRate: round4(t.repeatHits / Math.max(1, t.repeatBaskets)),
      discountSpent: round2(t.discount),
      discountPerHit: round2(t.discount / Math.max(1, t.hits)),
      impressions: t.impressions,
      exploreShare: round4(t.explored / Math.max(1, t.impressions)),
      distinctOffersShown: t.shown.size,
      offersShown: [...t.shown]
        .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
        .slice(0, 5)
        .map(([offerId, shown]) => ({ offerId, title: titles.get(offerId) ?? offerId, shown })),
    };
  });
}

/** Upper bounds on any policy's hit rate with this catalog (see {@link offersBounds}). */
export interface OffersBounds {
  k: number;
  baskets: number;
  repeatBaskets: number;
  /** Share of baskets that contain some offer's scope and reach its minimum basket: a clairvoyant policy's hit rate. */
  anyOffer: number;
  /** Of returning customers' baskets, the share containing a scope the customer had bought before. */
  repeatOfBought: number;
  /**
   * Hit rate when each customer is shown, every time, the k offers that in hindsight cover most of
   * their own baskets (chosen greedily, knowing all their baskets): the best static personal list.
   */
  hindsightPersonal: number;
  /** The same, on returning customers' baskets. */
  hindsightPersonalRepeat: number;
}

/**
 * How far personalization could go on this data, ignoring caps: what a clairvoyant policy, a
 * policy that knows which earlier scopes come back, and the best per-customer fixed list chosen
 * in hindsight would hit. These use the future by design; they are bounds, not policies.
 */
export function offersBounds(data: RetailData, offers: RetailOffers, k: number): OffersBounds {
  const minOf = new Map(offers.catalog.offers.map((o) => [o.id, o.minBasket ?? 0]));
  const byCustomer = new Map<string, Array<Set<string>>>();
  let anyOffer = 0;
  let repeatBaskets = 0;
  let repeatOfBought = 0;
  const bought = new Map<string, Set<string>>();
  for (const basket of data.baskets) {
    const total = basket.lines.reduce((s, l) => s + l.quantity * l.price, 0);
    const hittable = new Set<string>();
    const inBasket = new Set<string>();
    for (const l of basket.lines) {
      const o = offers.offerOfItem.get(l.itemId);
      if (!o) continue;
      inBasket.add(o);
      if (total >= minOf.get(o)!) hittable.add(o);
    }
    if (hittable.size > 0) anyOffer++;
    const before = bought.get(basket.customerId);
    if (before) {
      repeatBaskets++;
      if ([...hittable].some((o) => before.has(o))) repeatOfBought++;
      for (const o of inBasket) before.add(o);
    } else bought.set(basket.customerId, new Set(inBasket));
    let list = byCustomer.get(basket.customerId);
    if (!list) byCustomer.set(basket.customerId, (list = []));
    list.push(hittable);
  }
  let hits = 0;
  let repeatHits = 0;
  for (const baskets of byCustomer.values()) {
    let left = baskets;
    const chosen = new Set<string>();
    for (let i = 0; i < k; i++) {
      const count = new Map<string, number>();
      for (const b of left) for (const o of b) count.set(o, (count.get(o) ?? 0) + 1);
      const best = [...count].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0];
      if (!best) break;
      chosen.add(best[0]);
      left = left.filter((b) => !b.has(best[0]));
    }
    baskets.forEach((b, i) => {
      if (![...b].some((o) => chosen.has(o))) return;
      hits++;
      if (i > 0) repeatHits++;
    });
  }
  const n = Math.max(1, data.baskets.length);
  return {
    k,
    baskets: data.baskets.length,
    repeatBaskets,
    anyOffer: round4(anyOffer / n),
    repeatOfBought: round4(repeatOfBought / Math.max(1, repeatBaskets)),
    hindsightPersonal: round4(hits / n),
    hindsightPersonalRepeat: round4(repeatHits / Math.max(1, repeatBaskets)),
  };
}

/** The shown offer the customer would use on this basket (largest discount), if any applies. */
function redeem(basket: Basket, shown: readonly string[], catalog: OfferCatalog, offerOfItem: ReadonlyMap<string, string>): { offerId: string; discount: number } | undefined {
  const total = basket.lines.reduce((s, l) => s + l.quantity * l.price, 0);
  let best: { offerId: string; discount: number } | undefined;
  for (const id of shown) {
    const offer = catalog.offers.find((o) => o.id === id)!;
    if (total < (offer.minBasket ?? 0)) continue;
    const spend = basket.lines.reduce((s, l) => (offerOfItem.get(l.itemId) === id ? s + l.quantity * l.price : s), 0);
    if (spend <= 0) continue;
    const d = offer.discount;
    const discount = d.kind === 'amount' ? Math.min(d.amount, spend) : Math.min((d.percent / 100) * spend, d.maxAmount ?? Infinity);
    if (!best || discount > best.discount) best = { offerId: id, discount };
  }
  return best;
}

const round2 = (x: number): number => Math.round(x * 100) / 100;
const round4 = (x: number): number => Math.round(x * 10000) / 10000;
