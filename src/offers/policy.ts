/**
 * The on-device offer policy: keep the eligible offers, score each by expected value for this
 * shopper, explore a little with Thompson sampling, and say why. Pure and deterministic: the same
 * catalog, products, events, affinity, options and seed give the same answer.
 */
import { ValidationError } from '../errors.js';
import { describeValue, knownKeys } from '../options.js';
import { Random } from '../model/random.js';
import type { CatalogItem, StoredEvent } from '../types.js';
import { scopeAffinities, type AffinitySource } from './affinity.js';
import { sampleBeta } from './beta-sampler.js';
import { whyIneligible, type EligibilityContext } from './eligibility.js';
import { isReturningShopper, offerHistory } from './offer-history.js';
import type { OfferLedger } from '../events/offer-ledger.js';
import { MAX_ID, MAX_QUANTITY } from '../events/schema.js';
import { cachedEconomics } from './offer-value.js';
import { indexProducts, inScope, type ProductIndex } from './product-index.js';
import { offerWhy, offerWhyText } from './reason.js';
import type { CartLine, Offer, OfferCatalog, OfferContext, OfferObjective, OffersOptions, ShownOffer } from './types.js';

/** What the policy needs besides the options. */
export interface OffersInput {
  /** A catalog that passed `verifyOfferCatalog`. */
  catalog: OfferCatalog;
  /** The shop's products: `indexProducts(items)` once (faster), or the items themselves. */
  products: ProductIndex | readonly CatalogItem[];
  /** This shopper's stored events, oldest first (impressions and redemptions included). */
  events: readonly StoredEvent[];
  /** Probability of purchase per item or per offer scope, e.g. from the on-device model. */
  affinity: AffinitySource;
  /**
   * What the device kept of offer events and purchases that retention removed (the store's
   * `OFFER_LEDGER_KEY` record): caps, cool-downs and the new/returning audience still count them.
   */
  ledger?: OfferLedger;
}

/** An eligible offer with its score, as the policy sees it (exported for evaluation and tests). */
export interface ScoredOffer {
  offer: Offer;
  /** Affinity from the caller, before local offer history. */
  affinity: number;
  /** Beta posterior on "buys in scope when shown": affinity as prior, local impressions/redemptions as data. */
  alpha: number;
  beta: number;
  /** Net value per use (margin − discount − cost), and the expected value of showing it. */
  net: number;
  discountCost: number;
  expectedValue: number;
}

/**
 * How many pseudo-impressions the caller's affinity is worth against this shopper's own offer
 * history. Large enough that two ignored impressions do not bury an offer the model is sure of,
 * small enough that a shopper who keeps ignoring an offer stops seeing it.
 */
export const DEFAULT_PRIOR_STRENGTH = 10;

/**
 * What the page says about the shopper's intent right now, as a chance of buying in an offer's
 * scope that the affinity is combined with (p ← 1 − (1 − p)(1 − q)): the product on screen
 * (`context.itemId`) is in the scope, or a cart line is. The affinity comes from history, which a
 * product opened a moment ago barely moves; without this a candle's page would show the same
 * offers as the home page. Conservative round figures (a product page converts far less often than
 * a cart), not fitted: offers-eval replays baskets without a page context.
 */
export const CONTEXT_AFFINITY = { onScreen: 0.2, inCart: 0.5 } as const;

function withContext(p: number, offer: Offer, context: OfferContext | undefined, products: ProductIndex): number {
  if (!context) return p;
  let miss = 1 - p;
  if (context.itemId !== undefined && inScope(offer.scope, context.itemId, products)) miss *= 1 - CONTEXT_AFFINITY.onScreen;
  if (context.cart?.some((l) => inScope(offer.scope, l.itemId, products))) miss *= 1 - CONTEXT_AFFINITY.inCart;
  return 1 - miss;
}
const DEFAULTS = { k: 2, seed: 1, exploration: 0.1 } as const;

/**
 * Score every eligible offer; offers that lose money even when used (net ≤ 0) are left out.
 * Sorted best first (expected value — or P(use) with `objective: 'reach'` — then offer id so ties
 * are stable).
 */
export function scoreOffers(input: OffersInput, options: OffersOptions = {}): ScoredOffer[] {
  const products = productIndex(input.products);
  const now = checkContext(options.context);
  const ctx = eligibilityContext(pastEvents(input.events, now), products, options.context?.cart, now, input.ledger);
  const strength = checkRange(options.priorStrength ?? DEFAULT_PRIOR_STRENGTH, 'options.priorStrength', 0, 1e6);
  const objective = checkObjective(options.objective);
  const out: ScoredOffer[] = [];
  // Each offer's economics is kept per offer and product index (offerEconomics); the affinity of
  // whole categories and of the whole catalog is computed once for this call (scopeAffinities).
  // (Made at first need: an affinity source is looked at only when some offer is worth scoring.)
  let affinity: ((offer: Offer) => number) | undefined;
  for (const offer of input.catalog.offers) {
    if (whyIneligible(offer, ctx) !== null) continue;
    const econ = cachedEconomics(offer, products);
    if (!(econ.net > 0)) continue;
    const p = withContext((affinity ??= scopeAffinities(input.affinity, products))(offer), offer, options.context, products);
    const s = ctx.history.get(offer.id);
    // Tries in visits, not page views: the affinity is a chance per next basket, and a shopper
    // who sees an offer on ten pages of one visit and uses it has not turned it down nine times.
    const shown = s?.showings ?? 0;
    const used = Math.min(s?.redemptions ?? 0, shown);
    // Small floor so a zero affinity still gives a proper Beta for Thompson sampling.
    const alpha = Math.max(strength * p, 1e-3) + used;
    const beta = Math.max(strength * (1 - p), 1e-3) + (shown - used);
    const mean = alpha / (alpha + beta);
    out.push({ offer, affinity: p, alpha, beta, net: econ.net, discountCost: econ.discountCost, expectedValue: mean * econ.net });
  }
  const key = objective === 'reach' ? (s: ScoredOffer) => s.alpha / (s.alpha + s.beta) : (s: ScoredOffer) => s.expectedValue;
  return out.sort((a, b) => key(b) - key(a) || (a.offer.id < b.offer.id ? -1 : a.offer.id > b.offer.id ? 1 : 0));
}

/**
 * Checks the options of `chooseOffers` (and so of `rec.offers()`), the context too, naming the first
 * one that is wrong: the engine calls it before it knows whether a catalog is installed, so that a
 * wrong call fails the same way with or without offers to choose from.
 */
export function checkOffersOptions(options: OffersOptions): { k: number; exploration: number; seed: number; reach: boolean } {
  const k = checkInt(options.k ?? DEFAULTS.k, 'options.k', 1, 20);
  const exploration = checkRange(options.exploration ?? DEFAULTS.exploration, 'options.exploration', 0, 1);
  // A whole 32-bit number: the generator keeps 32 bits, so 7.9 and 7, or 7 and 2³² + 7, were one seed.
  const seed = checkInt(options.seed ?? DEFAULTS.seed, 'options.seed', 0, 0xffff_ffff);
  const reach = checkObjective(options.objective) === 'reach';
  checkRange(options.priorStrength ?? DEFAULT_PRIOR_STRENGTH, 'options.priorStrength', 0, 1e6);
  checkContext(options.context);
  return { k, exploration, seed, reach };
}

function checkObjective(o: OfferObjective | undefined): OfferObjective {
  if (o === undefined) return 'value';
  if (o !== 'value' && o !== 'reach') throw new ValidationError('options.objective', `must be 'value' or 'reach', got ${describeValue(o)}`);
  return o;
}

/**
 * Choose up to `k` offers for this shopper.
 *
 * Each slot goes to the remaining offer with the highest expected value
 * (P(buy in scope) × (margin − discount)), or the highest P(buy in scope) with
 * `objective: 'reach'`, except that with probability `exploration` the slot is filled by Thompson
 * sampling instead: a purchase probability is drawn from each offer's Beta posterior and the best
 * draw × net value (the draw alone for `reach`) wins; when that differs from the greedy pick it is
 * marked `explore: true`. Fewer than `k` offers come back when fewer are eligible and worth it.
 *
 * @example
 * ```ts
 * const shown = chooseOffers(
 *   { catalog, products: indexProducts(items), events, affinity: (id) => model.probability(id) },
 *   { k: 2, context: { page: 'product', itemId: 'm1', now: Date.now() }, seed: 7 },
 * );
 * // [{ offerId: 'mugs10', title: '10% off mugs', discount: {…}, expectedValue: 1.9,
 * //    reason: 'Because you viewed Red Mug', why: { kind: 'event', itemId: 'm1', event: 'view' }, explore: false }, …]
 * ```
 */
export function chooseOffers(input: OffersInput, options: OffersOptions = {}): ShownOffer[] {
  const { k, exploration, seed, reach } = checkOffersOptions(options);

  const rng = new Random(seed);
  const products = productIndex(input.products);
  // What happened after `now` (a replay asks as of an earlier time) counts neither for the rules nor in a reason.
  const events = pastEvents(input.events, checkContext(options.context));
  const remaining = scoreOffers({ ...input, products, events }, options);
  const context = options.context ?? {};
  const shown: ShownOffer[] = [];
  while (shown.length < k && remaining.length > 0) {
    let pick = 0;
    let explore = false;
    if (rng.next() < exploration) {
      let best = -Infinity;
      remaining.forEach((s, i) => {
        const draw = sampleBeta(rng, s.alpha, s.beta) * (reach ? 1 : s.net);
        if (draw > best) [best, pick] = [draw, i];
      });
      explore = pick !== 0;
    }
    const [s] = remaining.splice(pick, 1);
    const why = offerWhy(s!.offer, events, products, context, explore);
    shown.push({
      offerId: s!.offer.id,
      title: s!.offer.title,
      discount: s!.offer.discount,
      expectedValue: round(s!.expectedValue),
      reason: offerWhyText(why, products),
      why,
      explore,
    });
  }
  return shown;
}

function productIndex(p: ProductIndex | readonly CatalogItem[]): ProductIndex {
  return Array.isArray(p) ? indexProducts(p) : (p as ProductIndex);
}

function eligibilityContext(events: readonly StoredEvent[], products: ProductIndex, cart: readonly CartLine[] | undefined, now: number, ledger?: OfferLedger): EligibilityContext {
  const past = ledgerAsOf(ledger, now);
  const ctx: EligibilityContext = { now, history: offerHistory(events, past), returning: isReturningShopper(events, past) };
  if (cart !== undefined) ctx.cartValue = cartValue(cart, products);
  return ctx;
}

/**
 * The ledger as a replay at `now` may use it: an offer whose removed events include one after `now`
 * (or a purchase after it) is left out whole, since its counts cannot be split at `now`. The ledger
 * holds the oldest events retention removed, so this only matters for a replay before them.
 */
function ledgerAsOf(ledger: OfferLedger | undefined, now: number): OfferLedger | undefined {
  if (!ledger) return undefined;
  const after = (t: number | undefined) => t !== undefined && t > now;
  const offers = ledger.offers.filter((o) => !after(o.lastImpressionAt) && !after(o.lastRedeemedAt));
  if (offers.length === ledger.offers.length && !after(ledger.lastPurchaseAt)) return ledger;
  return { offers, ...(ledger.lastPurchaseAt !== undefined && !after(ledger.lastPurchaseAt) ? { lastPurchaseAt: ledger.lastPurchaseAt } : {}) };
}

const PAGES: readonly string[] = ['home', 'product', 'category', 'cart', 'checkout', 'search', 'other'];

/**
 * Checks `options.context` and returns its "now" (default the clock). A `now` that is not a time
 * would turn every validity window and cool-down off (comparisons with NaN are all false), and a
 * cart line with a negative quantity or price would reach a minimum basket it does not reach.
 */
export function checkContext(context: OfferContext | undefined): number {
  if (context === undefined) return Date.now();
  if (typeof context !== 'object' || context === null) throw new ValidationError('options.context', 'must be an object');
  const now = context.now ?? Date.now();
  if (typeof now !== 'number' || !Number.isFinite(now)) throw new ValidationError('options.context.now', `must be a time in ms since the epoch, got ${describeValue(now)}`);
  if (context.page !== undefined && !PAGES.includes(context.page)) throw new ValidationError('options.context.page', `must be one of ${PAGES.join(', ')}, got ${describeValue(context.page)}`);
  if (context.itemId !== undefined && typeof context.itemId !== 'string') throw new ValidationError('options.context.itemId', 'must be an item id (a string)');
  if (context.cart !== undefined) {
    if (!Array.isArray(context.cart)) throw new ValidationError('options.context.cart', 'must be an array of { itemId, quantity?, price? }');
    // An index loop, not forEach: a hole in the array (`[, line]`) is a missing line, refused here.
    const cart = context.cart as unknown[];
    for (let i = 0; i < cart.length; i++) {
      const l = cart[i];
      const at = `options.context.cart[${i}]`;
      if (typeof l !== 'object' || l === null) throw new ValidationError(at, 'must be an object { itemId, quantity?, price? }');
      // (A misspelt key, `qty`, would count the line as one unit: refused, as every option is.)
      const line = knownKeys(l, at, ['itemId', 'quantity', 'price']);
      // The bounds an event's itemId and quantity have: a cart line is one.
      if (typeof line.itemId !== 'string' || line.itemId.length === 0 || line.itemId.length > MAX_ID) {
        throw new ValidationError(`${at}.itemId`, `must be an item id (a string of 1 to ${MAX_ID} characters), got ${describeValue(line.itemId)}`);
      }
      if (line.quantity !== undefined && !(typeof line.quantity === 'number' && Number.isInteger(line.quantity) && line.quantity >= 1 && line.quantity <= MAX_QUANTITY)) {
        throw new ValidationError(`${at}.quantity`, `must be a whole number from 1 to ${MAX_QUANTITY.toLocaleString('en-US')}, got ${describeValue(line.quantity)}`);
      }
      if (line.price !== undefined && !(typeof line.price === 'number' && Number.isFinite(line.price) && line.price >= 0)) {
        throw new ValidationError(`${at}.price`, `must be a number ≥ 0, got ${describeValue(line.price)}`);
      }
    }
  }
  return now;
}

/** The events up to `now`: a replay at an earlier time must not see what came after. */
function pastEvents(events: readonly StoredEvent[], now: number): readonly StoredEvent[] {
  return events.every((e) => e.t <= now) ? events : events.filter((e) => e.t <= now);
}

/** Sum of quantity × price over the cart; a line with no price uses the catalog price (or 0). */
export function cartValue(cart: readonly CartLine[], products: ProductIndex): number {
  return cart.reduce((sum, l) => sum + (l.quantity ?? 1) * (l.price ?? products.byId.get(l.itemId)?.price ?? 0), 0);
}

function checkInt(v: number, field: string, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max) throw new ValidationError(field, `must be an integer from ${min} to ${max}, got ${describeValue(v)}`);
  return v;
}
function checkRange(v: number, field: string, min: number, max: number): number {
  if (typeof v !== 'number' || !(v >= min && v <= max)) throw new ValidationError(field, `must be a number from ${min} to ${max}, got ${describeValue(v)}`);
  return v;
}
const round = (x: number): number => Math.round(x * 10000) / 10000;
