/**
 * What one use of an offer is worth to the shop, before affinity: the margin on a typical in-scope
 * order, the discount it costs, and the net. The policy multiplies these by the probability that
 * the shopper buys in scope.
 */
import type { ProductIndex } from './product-index.js';
import { scopeItemIds } from './product-index.js';
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
 * @example
 * ```ts
 * offerEconomics({ …, discount: { kind: 'percent', percent: 10 }, hints: { margin: 0.4, typicalSpend: 20 } }, products);
 * // { typicalSpend: 20, value: 8, discountCost: 2, net: 6 }
 * ```
 */
export function offerEconomics(offer: Offer, products: ProductIndex): OfferEconomics {
  // An order-wide offer ("£5 off orders over £50") is used only on an order worth at least its
  // minimum basket, which is all in scope: one average product would price it below what it needs.
  const mean = meanPrice(offer, products);
  const typicalSpend =
    offer.hints?.typicalSpend ??
    (offer.scope.kind === 'all' ? Math.max(mean ?? 0, offer.minBasket ?? 0) : (mean ?? offer.minBasket ?? 0));
  const value = (offer.hints?.margin ?? DEFAULT_MARGIN) * typicalSpend;
  const d = offer.discount;
  const discount = d.kind === 'amount' ? Math.min(d.amount, typicalSpend) : Math.min((d.percent / 100) * typicalSpend, d.maxAmount ?? Infinity);
  const discountCost = discount + (offer.hints?.cost ?? 0);
  return { typicalSpend, value, discountCost, net: value - discountCost };
}

function meanPrice(offer: Offer, products: ProductIndex): number | undefined {
  let sum = 0;
  let n = 0;
  for (const id of scopeItemIds(offer.scope, products)) {
    const price = products.byId.get(id)?.price;
    if (price !== undefined && price > 0) {
      sum += price;
      n++;
    }
  }
  return n > 0 ? sum / n : undefined;
}
