/**
 * Reasons a shopper can read, built only from things that really happened on this device (their
 * events, the cart, the page) — never an invented claim about other shoppers.
 */
import { citableEvents } from '../model/profile.js';
import type { StoredEvent } from '../types.js';
import { inScope, scopeItemIds, type ProductIndex } from './product-index.js';
import type { Offer, OfferContext } from './types.js';

const VERBS: Partial<Record<StoredEvent['type'], string>> = {
  purchase: 'bought',
  add_to_cart: 'added',
  view: 'viewed',
  rating: 'rated',
  search: 'searched for',
};

/**
 * Why this offer, in one sentence:
 * 1. the shopper's most recent event on an item in the offer's scope: "Because you viewed Red Mug";
 * 2. the product on screen or in the cart: "For the Red Mug you are looking at" / "… in your cart";
 * 3. the most recent event on an item of the same category as the scope: "Like the Blue Mug you bought";
 * 4. otherwise a plain statement: "Something new to try" (exploration) or "One of the shop’s current offers".
 *
 * @example
 * ```ts
 * offerReason(mugOffer, [{ t: 1, type: 'view', itemId: 'm1' }], products, {}, false);
 * // 'Because you viewed Red Mug'
 * ```
 */
export function offerReason(offer: Offer, events: readonly StoredEvent[], products: ProductIndex, context: OfferContext, explore: boolean): string {
  const title = (id: string): string => products.byId.get(id)?.title ?? id;
  const cited = citableEvents(events);
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i]!;
    const verb = VERBS[e.type];
    if (verb && cited[i] && e.itemId !== undefined && inScope(offer.scope, e.itemId, products)) return `Because you ${verb} ${title(e.itemId)}`;
  }
  if (context.itemId !== undefined && inScope(offer.scope, context.itemId, products)) return `For the ${title(context.itemId)} you are looking at`;
  const inCart = context.cart?.find((l) => inScope(offer.scope, l.itemId, products));
  if (inCart) return `For the ${title(inCart.itemId)} in your cart`;
  if (offer.scope.kind === 'items') {
    const cats = new Set(scopeItemIds(offer.scope, products).map((id) => products.byId.get(id)?.category).filter((c) => c !== undefined));
    for (let i = events.length - 1; i >= 0 && cats.size > 0; i--) {
      const e = events[i]!;
      const verb = VERBS[e.type];
      const c = e.itemId !== undefined ? products.byId.get(e.itemId)?.category : undefined;
      if (verb && cited[i] && c !== undefined && cats.has(c)) return `Like the ${title(e.itemId!)} you ${verb === 'searched for' ? 'searched for' : verb}`;
    }
  }
  return explore ? 'Something new to try' : 'One of the shop’s current offers';
}
