import type { CatalogItem } from '../types.js';
import type { OfferScope } from './types.js';

/** The shop's products, indexed for the offers policy: by id, and ids by category. */
export interface ProductIndex {
  readonly byId: ReadonlyMap<string, CatalogItem>;
  readonly byCategory: ReadonlyMap<string, readonly string[]>;
  readonly items: readonly CatalogItem[];
}

/**
 * Index the product catalog once; pass the index to `chooseOffers` on every call. What the offers
 * modules derive from an index (economics, category positions, scope categories) is kept per index
 * object in `WeakMap`s, so the index, like a verified catalog, is treated as immutable: index a
 * changed product catalog anew rather than editing the maps.
 *
 * @example
 * ```ts
 * const products = indexProducts([{ id: 'm1', title: 'Red Mug', category: 'mug', price: 4 }]);
 * products.byCategory.get('mug'); // ['m1']
 * ```
 */
export function indexProducts(items: readonly CatalogItem[]): ProductIndex {
  const byId = new Map<string, CatalogItem>();
  const byCategory = new Map<string, string[]>();
  for (const item of items) {
    byId.set(item.id, item);
    if (item.category === undefined) continue;
    let ids = byCategory.get(item.category);
    if (!ids) byCategory.set(item.category, (ids = []));
    ids.push(item.id);
  }
  return { byId, byCategory, items };
}

/**
 * Whether an item falls in an offer's scope. An item missing from the product catalog can still be
 * in an `items` scope (it names the id), but never in a `categories` scope (its category is unknown).
 *
 * A long `itemIds` or `categories` list is looked up through a `Set` built once per list and kept
 * (weakly) for later calls: offer scopes, like the rest of a verified catalog, are treated as
 * immutable, so a list edited in place after a first call would be answered from the old one.
 *
 * @example inScope({ kind: 'categories', categories: ['mug'] }, 'm1', products); // true
 */
export function inScope(scope: OfferScope, itemId: string, products: ProductIndex): boolean {
  switch (scope.kind) {
    case 'all':
      return true;
    case 'items':
      return listHas(scope.itemIds, itemId);
    case 'categories': {
      const c = products.byId.get(itemId)?.category;
      return c !== undefined && listHas(scope.categories, c);
    }
  }
}

/** Lists up to this long are searched (`includes`); longer ones get a cached `Set`. */
const SHORT_LIST = 8;
const listSets = new WeakMap<readonly string[], ReadonlySet<string>>();

/** `list.includes(x)`, through a cached `Set` for a long list (same answer: both compare by SameValueZero). */
export function listHas(list: readonly string[], x: string): boolean {
  if (list.length <= SHORT_LIST) return list.includes(x);
  let set = listSets.get(list);
  if (!set) listSets.set(list, (set = new Set(list)));
  return set.has(x);
}

/** The catalog ids an offer's scope covers (for `items`, the listed ids, known to the catalog or not). */
export function scopeItemIds(scope: OfferScope, products: ProductIndex): readonly string[] {
  switch (scope.kind) {
    case 'all':
      return products.items.map((i) => i.id);
    case 'items':
      return scope.itemIds;
    case 'categories':
      return scope.categories.flatMap((c) => products.byCategory.get(c) ?? []);
  }
}
