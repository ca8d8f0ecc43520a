/**
 * What one use of an offer is worth to the shop, before affinity: the margin on a typical in-scope
 * order, the discount it costs, and the net. The policy multiplies these by the probability that
 * the shopper buys in scope.
 */
import type { ProductIndex } from './product-index.js';
import type { Offer } from './types.js';

/** Default gross margin when the offer has no `hints.margin`. */
export const DEFAULT_MARGIN = 0.3;

/** Per-purchase economics of an offer, in the catalog's currency. */
export interface OfferEconomics {
  /** Typical in-scope spend of an order that uses the offer. */
  typicalSpend: number;
  /** Margin on that spend: the value of the purchase to the shop. */
  value: number;
  /** What the discount costs on that spend, plus any fixed cost per redemption. */
  discountCost: number;
  /** `value − discountCost`; an offer with net ≤ 0 loses money even when it works and is not shown. */
  net: number;
}

/**
 * Computed once per offer object and product index, then kept (in a `WeakMap`, so dropped with
 * them): a verified catalog and an index are treated as immutable, so an offer edited in place
 * after a first call would keep its old economics. Returns a fresh object each call.
 *
 * @example
 * ```ts
 * offerEconomics({ …, discount: { kind: 'percent', percent: 10 }, hints: { margin: 0.4, typicalSpend: 20 } }, products);
 * // { typicalSpend: 20, value: 8, discountCost: 2, net: 6 }
 * ```
 */
export function offerEconomics(offer: Offer, products: ProductIndex): OfferEconomics {
  return { ...cachedEconomics(offer, products) };
}

/** Per product index: each offer's economics, and the price sums of whole categories and of the catalog. */
interface PricePrep {
  readonly economics: WeakMap<Offer, Readonly<OfferEconomics>>;
  readonly categories: Map<string, PriceSum>;
  all?: PriceSum;
}
/** Sum and count of the positive catalog prices of some ids, summed in their order. */
interface PriceSum {
  sum: number;
  n: number;
}
const pricePreps = new WeakMap<ProductIndex, PricePrep>();

/** {@link offerEconomics} without the copy: the cached object itself, not to be changed. */
export function cachedEconomics(offer: Offer, products: ProductIndex): Readonly<OfferEconomics> {
  let prep = pricePreps.get(products);
  if (!prep) pricePreps.set(products, (prep = { economics: new WeakMap(), categories: new Map() }));
  let e = prep.economics.get(offer);
  if (!e) prep.economics.set(offer, (e = computeEconomics(offer, products, prep)));
  return e;
}

function computeEconomics(offer: Offer, products: ProductIndex, prep: PricePrep): OfferEconomics {
  // An order-wide offer ("£5 off orders over £50") is used only on an order worth at least its
  // minimum basket, which is all in scope: one average product would price it below what it needs.
  // (The mean price is needed only without a `hints.typicalSpend`.)
  const typicalSpend =
    offer.hints?.typicalSpend ??
    (offer.scope.kind === 'all' ? Math.max(meanPrice(offer, products, prep) ?? 0, offer.minBasket ?? 0) : (meanPrice(offer, products, prep) ?? offer.minBasket ?? 0));
  const value = (offer.hints?.margin ?? DEFAULT_MARGIN) * typicalSpend;
  const d = offer.discount;
  const discount = d.kind === 'amount' ? Math.min(d.amount, typicalSpend) : Math.min((d.percent / 100) * typicalSpend, d.maxAmount ?? Infinity);
  const discountCost = discount + (offer.hints?.cost ?? 0);
  return { typicalSpend, value, discountCost, net: value - discountCost };
}

/**
 * Mean positive catalog price over the scope's ids (for `items`, each listed id, repeats counted;
 * for `categories`, the categories' ids in turn; for `all`, every item), summed in that order. The
 * sums of one whole category and of the whole catalog are kept per index, so that many offers on
 * the same category, or on everything, cost one pass; a scope of several categories is summed
 * through in order (a sum of per-category sums could differ in the last bits).
 */
function meanPrice(offer: Offer, products: ProductIndex, prep: PricePrep): number | undefined {
  const scope = offer.scope;
  let acc: PriceSum;
  switch (scope.kind) {
    case 'items':
      acc = addPrices({ sum: 0, n: 0 }, scope.itemIds, products);
      break;
    case 'all':
      acc = prep.all ??= addPrices({ sum: 0, n: 0 }, products.items.map((i) => i.id), products);
      break;
    case 'categories':
      if (scope.categories.length === 1) {
        const c = scope.categories[0]!;
        let s = prep.categories.get(c);
        if (!s) prep.categories.set(c, (s = addPrices({ sum: 0, n: 0 }, products.byCategory.get(c) ?? [], products)));
        acc = s;
      } else {
        acc = { sum: 0, n: 0 };
        for (const c of scope.categories) addPrices(acc, products.byCategory.get(c) ?? [], products);
      }
      break;
  }
  return acc.n > 0 ? acc.sum / acc.n : undefined;
}

function addPrices(acc: PriceSum, ids: readonly string[], products: ProductIndex): PriceSum {
  for (const id of ids) {
    const price = products.byId.get(id)?.price;
    if (price !== undefined && price > 0) {
      acc.sum += price;
      acc.n++;
    }
  }
  return acc;
}
