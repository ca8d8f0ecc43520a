/**
 * The shopper's baskets on the device, for the learned offer affinity: stored `purchase` events
 * grouped by time, each mapped to the offers whose scope it touches. Pure: no Node, no DOM.
 *
 * The shop learns from orders (in Online Retail, invoice lines sharing a timestamp). A device has
 * no order id on its purchase events, so purchases {@link DEFAULT_BASKET_GAP_MS} (30 minutes) or
 * less after the previous purchase belong to the same basket: one checkout tracks its
 * lines within seconds, and two orders half an hour apart are, for "what will they buy next", one
 * shopping trip. A basket's time is its latest purchase.
 */
import type { StoredEvent } from '../types.js';
import type { HistoryBasket } from './affinity-model.js';
import { inScope, type ProductIndex } from './product-index.js';
import type { Offer } from './types.js';

/** Purchases this close to the previous purchase, or closer, are the same basket: 30 minutes. */
export const DEFAULT_BASKET_GAP_MS = 30 * 60_000;

/** item id → ids of the offers whose scope contains it; built once per catalog and product index. */
export type OfferScopeLookup = (itemId: string) => readonly string[];

/**
 * A memoized item → offers lookup with the policy's scope rules ({@link inScope}): an `items`
 * scope names ids (known to the product catalog or not), a `categories` scope needs the item's
 * category from the product catalog, `all` takes every item.
 */
export function offerScopeLookup(offers: readonly Offer[], products: ProductIndex): OfferScopeLookup {
  const cache = new Map<string, readonly string[]>();
  return (itemId) => {
    let ids = cache.get(itemId);
    if (!ids) cache.set(itemId, (ids = offers.filter((o) => inScope(o.scope, itemId, products)).map((o) => o.id)));
    return ids;
  };
}

export interface PurchaseBasketsOptions {
  /** A purchase more than this after the previous one starts a new basket (ms, ≥ 0). Default 30 minutes. */
  gapMs?: number;
  /** Only purchases at or before this time count (ms since the epoch). Default: all. */
  now?: number;
}

/**
 * Group the shopper's `purchase` events into baskets (oldest first) and map each to the offers it
 * touches. Other event kinds are ignored; the events need not be sorted.
 *
 * @example
 * ```ts
 * const lookup = offerScopeLookup(catalog.offers, indexProducts(items));
 * const baskets = purchaseBaskets(events, lookup, { now: Date.now() });
 * // [{ t: 1717200000000, offers: Set { 'mugs10' }, items: Set { 'm1', 'b7' } }, …]
 * ```
 */
export function purchaseBaskets(events: readonly StoredEvent[], offersOf: OfferScopeLookup, options: PurchaseBasketsOptions = {}): HistoryBasket[] {
  const gap = options.gapMs ?? DEFAULT_BASKET_GAP_MS;
  const now = options.now ?? Infinity;
  const purchases = events.filter((e) => e.type === 'purchase' && e.itemId !== undefined && e.t <= now);
  if (!purchases.every((e, i) => i === 0 || purchases[i - 1]!.t <= e.t)) purchases.sort((a, b) => a.t - b.t);
  const out: HistoryBasket[] = [];
  let current: { t: number; offers: Set<string>; items: Set<string> } | undefined;
  for (const e of purchases) {
    if (!current || e.t - current.t > gap) out.push((current = { t: e.t, offers: new Set(), items: new Set() }));
    current.t = e.t;
    current.items.add(e.itemId!);
    for (const id of offersOf(e.itemId!)) current.offers.add(id);
  }
  return out;
}

