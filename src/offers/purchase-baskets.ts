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
import type { inScope, ProductIndex } from './product-index.js';
import type { Offer } from './types.js';

/** Purchases this close to the previous purchase, or closer, are the same basket: 30 minutes. */
export const DEFAULT_BASKET_GAP_MS = 30 * 60_000;

/** item id → ids of the offers whose scope contains it; built once per catalog and product index. */
export type OfferScopeLookup = (itemId: string) => readonly string[];

/**
 * A memoized item → offers lookup with the policy's scope rules ({@link inScope}): an `items`
 * scope names ids (known to the product catalog or not), a `categories` scope needs the item's
 * category from the product catalog, `all` takes every item. Offer ids come in `offers` order.
 *
 * It reads an inverted index (item id → offers, category → offers, the `all` offers) built once
 * per `offers` array and kept (in a `WeakMap`) for later calls with the same array, as the engine
 * makes on every `offers()`: a verified catalog is treated as immutable, so an array or scope
 * edited in place after a first call would be answered from the old index. The arrays it returns
 * may be shared between items (of one category): read them, do not change them.
 */
export function offerScopeLookup(offers: readonly Offer[], products: ProductIndex): OfferScopeLookup {
  const index = scopeIndex(offers);
  const ids = (positions: Positions): readonly string[] => positions.map((o) => offers[o]!.id);
  const cache = new Map<string, readonly string[]>();
  /** Per category (undefined: none known), the offers of an item that no `items` scope names. */
  const unnamed = new Map<string | undefined, readonly string[]>();
  return (itemId) => {
    let out = cache.get(itemId);
    if (!out) {
      const c = products.byId.get(itemId)?.category;
      const named = index.byItem.get(itemId);
      if (named) out = ids(merge(merge(named, categoryOffers(index, c)), index.all));
      else {
        out = unnamed.get(c);
        if (!out) unnamed.set(c, (out = ids(merge(categoryOffers(index, c), index.all))));
      }
      cache.set(itemId, out);
    }
    return out;
  };
}

function categoryOffers(index: ScopeIndex, category: string | undefined): Positions {
  return category === undefined ? NONE : (index.byCategory.get(category) ?? NONE);
}

/** Positions in the offers array, ascending, each once. */
type Positions = readonly number[];
const NONE: Positions = [];

interface ScopeIndex {
  readonly byItem: ReadonlyMap<string, Positions>;
  readonly byCategory: ReadonlyMap<string, Positions>;
  readonly all: Positions;
}
const scopeIndexes = new WeakMap<readonly Offer[], ScopeIndex>();

function scopeIndex(offers: readonly Offer[]): ScopeIndex {
  let index = scopeIndexes.get(offers);
  if (index) return index;
  const byItem = new Map<string, number[]>();
  const byCategory = new Map<string, number[]>();
  const all: number[] = [];
  // Offers in order, so each list is ascending; a name listed twice in one scope adds it once.
  const add = (m: Map<string, number[]>, key: string, o: number): void => {
    const list = m.get(key);
    if (!list) m.set(key, [o]);
    else if (list[list.length - 1] !== o) list.push(o);
  };
  offers.forEach((offer, o) => {
    const scope = offer.scope;
    if (scope.kind === 'all') all.push(o);
    else if (scope.kind === 'items') for (const id of scope.itemIds) add(byItem, id, o);
    else if (scope.kind === 'categories') for (const c of scope.categories) add(byCategory, c, o);
  });
  scopeIndexes.set(offers, (index = { byItem, byCategory, all }));
  return index;
}

/** The union of two ascending position lists (disjoint: an offer has one scope), ascending. */
function merge(a: Positions, b: Positions): Positions {
  if (b.length === 0) return a;
  if (a.length === 0) return b;
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) out.push(a[i]! < b[j]! ? a[i++]! : b[j++]!);
  while (i < a.length) out.push(a[i++]!);
  while (j < b.length) out.push(b[j++]!);
  return out;
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

