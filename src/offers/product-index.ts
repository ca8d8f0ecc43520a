import type { CatalogItem } from '../types.js';
import type { OfferScope } from './types.js';

/** The shop's products, indexed for the offers policy: by id, and ids by category. */
export interface ProductIndex {
  readonly byId: ReadonlyMap<string, CatalogItem>;
  readonly byCategory: ReadonlyMap<string, readonly string[]>;
  readonly items: readonly CatalogItem[];
}

/**
 * Index the product catalog once; pass the index to `chooseOffers` on every call.
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
 * @example inScope({ kind: 'categories', categories: ['mug'] }, 'm1', products); // true
 */
export function inScope(scope: OfferScope, itemId: string, products: ProductIndex): boolean {
  switch (scope.kind) {
    case 'all':
      return true;
    case 'items':
      return scope.itemIds.includes(itemId);
    case 'categories': {
      const c = products.byId.get(itemId)?.category;
      return c !== undefined && scope.categories.includes(c);
    }
  }
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
