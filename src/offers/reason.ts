/**
 * Reasons a shopper can read, built only from things that really happened on this device (their
 * events, the cart, the page) — never an invented claim about other shoppers.
 */
import { CITED_VERB, citableEvents, citedEventType } from '../model/profile.js';
import type { CitedEventType, StoredEvent } from '../types.js';
import { inScope, type ProductIndex } from './product-index.js';
import type { Offer, OfferContext, OfferWhy } from './types.js';

/**
 * What this offer's reason rests on, first match wins:
 * 1. the shopper's most recent cited event on an item in the offer's scope that the product catalog lists (`event`);
 * 2. the product on screen, then a cart line, in scope and listed (`on-screen`, `in-cart`);
 * 3. the most recent cited event on an item of the same category as an item scope (`same-category`);
 * 4. otherwise `explore` (an exploration slot) or `shop`, and always so for an offer on everything
 *    (scope `all`: no one product is why it is shown).
 *
 * Only events a reason may cite count ({@link citableEvents}: not an add to cart taken back, not a low rating).
 */
export function offerWhy(offer: Offer, events: readonly StoredEvent[], products: ProductIndex, context: OfferContext, explore: boolean): OfferWhy {
  // An offer on everything is not about any one product: citing the last item viewed ("£2 off
  // orders over £20 — Because you viewed Jumbo Bag") would claim it was aimed at that item.
  if (offer.scope.kind === 'all') return { kind: explore ? 'explore' : 'shop' };
  const cited = citableEvents(events);
  const citedType = (i: number): CitedEventType | undefined => (cited[i] ? citedEventType(events[i]!) : undefined);
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i]!;
    const event = citedType(i);
    // Only a product the catalog still lists: a scope may name one the shop has since dropped
    // (re-signed without editing it), and "Because you viewed mug-84029E" would cite its bare id.
    if (event && e.itemId !== undefined && products.byId.has(e.itemId) && inScope(offer.scope, e.itemId, products)) return { kind: 'event', itemId: e.itemId, event };
  }
  if (context.itemId !== undefined && products.byId.has(context.itemId) && inScope(offer.scope, context.itemId, products)) return { kind: 'on-screen', itemId: context.itemId };
  const inCart = context.cart?.find((l) => products.byId.has(l.itemId) && inScope(offer.scope, l.itemId, products));
  if (inCart) return { kind: 'in-cart', itemId: inCart.itemId };
  if (offer.scope.kind === 'items') {
    const cats = categoriesOf(offer.scope.itemIds, products);
    for (let i = events.length - 1; i >= 0 && cats.size > 0; i--) {
      const e = events[i]!;
      const event = citedType(i);
      const c = e.itemId !== undefined ? products.byId.get(e.itemId)?.category : undefined;
      if (event && c !== undefined && cats.has(c)) return { kind: 'same-category', itemId: e.itemId!, event };
    }
  }
  return { kind: explore ? 'explore' : 'shop' };
}

/** Per product index and `items` scope list: the catalog categories of its items (kept; catalogs are immutable). */
const scopeCategories = new WeakMap<ProductIndex, WeakMap<readonly string[], ReadonlySet<string>>>();

function categoriesOf(itemIds: readonly string[], products: ProductIndex): ReadonlySet<string> {
  let byList = scopeCategories.get(products);
  if (!byList) scopeCategories.set(products, (byList = new WeakMap()));
  let cats = byList.get(itemIds);
  if (!cats) {
    const set = new Set<string>();
    for (const id of itemIds) {
      const c = products.byId.get(id)?.category;
      if (c !== undefined) set.add(c);
    }
    byList.set(itemIds, (cats = set));
  }
  return cats;
}

/** The English sentence for an offer's {@link OfferWhy}, naming items by their catalog titles. */
export function offerWhyText(why: OfferWhy, products: ProductIndex): string {
  // Runs of spaces made one, as the recommender's reasons quote titles (`RED  HARMONICA IN BOX`).
  const title = (id: string): string => products.byId.get(id)?.title?.replace(/\s+/g, ' ').trim() || id;
  switch (why.kind) {
    case 'event':
      return `Because you ${CITED_VERB[why.event]} ${title(why.itemId)}`;
    case 'on-screen':
      return `For the ${title(why.itemId)} you are looking at`;
    case 'in-cart':
      return `For the ${title(why.itemId)} in your cart`;
    case 'same-category':
      return `Like the ${title(why.itemId)} you ${CITED_VERB[why.event]}`;
    case 'explore':
      return 'Something new to try';
    case 'shop':
      return 'One of the shop’s current offers';
  }
}

/**
 * Why this offer, in one sentence ({@link offerWhy}, worded by {@link offerWhyText}):
 * "Because you viewed Red Mug", "For the Red Mug you are looking at" / "… in your cart",
 * "Like the Blue Mug you bought", "Something new to try" (exploration) or "One of the shop’s current offers".
 *
 * @example
 * ```ts
 * offerReason(mugOffer, [{ t: 1, type: 'view', itemId: 'm1' }], products, {}, false);
 * // 'Because you viewed Red Mug'
 * ```
 */
export function offerReason(offer: Offer, events: readonly StoredEvent[], products: ProductIndex, context: OfferContext, explore: boolean): string {
  return offerWhyText(offerWhy(offer, events, products, context, explore), products);
}
