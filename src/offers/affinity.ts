/**
 * Affinity: how likely this shopper is to buy something in an offer's scope soon. It comes from the
 * caller (the on-device model, or an evaluation's own estimate), in one of three shapes.
 */
import type { indexProducts, ProductIndex } from './product-index.js';
import type { Offer } from './types.js';

/**
 * Where affinity comes from:
 * - a function or map from item id to the probability of buying that item (missing ids count as 0);
 *   the probability for a scope is then 1 − Π(1 − pᵢ) over the scope's items, treating items as
 *   independent;
 * - or `{ scope(offer) }`, which gives the probability for a whole offer scope directly.
 * Values are clamped to [0, 1].
 */
export type AffinitySource =
  | ((itemId: string) => number)
  | Readonly<Record<string, number>>
  | ReadonlyMap<string, number>
  | { readonly scope: (offer: Offer) => number };

/**
 * Probability that the shopper buys something in the offer's scope.
 *
 * @example
 * ```ts
 * const p = scopeAffinity(mugOffer, { m1: 0.2, m2: 0.5 }, products); // 1 − 0.8 × 0.5 = 0.6
 * ```
 */
export function scopeAffinity(offer: Offer, source: AffinitySource, products: ProductIndex): number {
  return scopeAffinities(source, products)(offer);
}

/**
 * {@link scopeAffinity} for many offers with one source and product index (one `scoreOffers`
 * call): the same numbers, bit for bit, but Π(1 − pᵢ) over a whole category and over the whole
 * catalog is computed once, at first need, and shared by the offers on that category or on
 * everything, and an item's probability is read once per category it is looked up in. A
 * per-item source is called fewer times than by `scopeAffinity` per offer: it must be a pure
 * function of the item id for the duration of the call (the policy's contract already).
 *
 * Exactness: the product is taken in the same order as before — a scope's items in turn (for
 * several categories, each category's items in turn, starting from 1, not a product of
 * per-category products, which could differ in the last bits).
 */
export function scopeAffinities(source: AffinitySource, products: ProductIndex): (offer: Offer) => number {
  if (isScopeSource(source)) return (offer) => clamp01(source.scope(offer));
  const get: (id: string) => number =
    typeof source === 'function'
      ? source
      : source instanceof Map
        ? (id) => source.get(id) ?? 0
        : (id) => (source as Readonly<Record<string, number>>)[id] ?? 0;
  const items = products.items;
  /** 1 − pᵢ per position in `products.items`, NaN until read (a read value never is NaN). */
  let factors: Float64Array | undefined;
  const factorAt = (i: number): number => {
    const f = (factors ??= new Float64Array(items.length).fill(Number.NaN));
    const x = f[i]!;
    return x === x ? x : (f[i] = 1 - clamp01(get(items[i]!.id)));
  };
  /** Per category list, Π(1 − pᵢ) over its items in order; and over the whole catalog. */
  const categoryMiss = new Map<string, number>();
  let allMiss: number | undefined;
  return (offer) => {
    const scope = offer.scope;
    let miss = 1;
    switch (scope.kind) {
      case 'items':
        for (const id of scope.itemIds) miss *= 1 - clamp01(get(id));
        break;
      case 'all':
        if (allMiss === undefined) {
          allMiss = 1;
          for (let i = 0; i < items.length; i++) allMiss *= factorAt(i);
        }
        miss = allMiss;
        break;
      case 'categories': {
        // Keyed by the category list, so offers on the same categories share it.
        const key = JSON.stringify(scope.categories);
        let m = categoryMiss.get(key);
        if (m === undefined) {
          m = 1;
          const positions = categoryPositions(products);
          for (const c of scope.categories) {
            const at = positions.get(c);
            if (at) for (let j = 0; j < at.length; j++) m *= factorAt(at[j]!);
            else for (const id of products.byCategory.get(c) ?? []) m *= 1 - clamp01(get(id));
          }
          categoryMiss.set(key, m);
        }
        miss = m;
        break;
      }
    }
    return 1 - miss;
  };
}

const positionsByIndex = new WeakMap<ProductIndex, ReadonlyMap<string, Int32Array>>();

/**
 * Per category, the positions in `products.items` of the ids `products.byCategory` lists, so that
 * a category's items and the whole catalog share one read of each item's probability. Kept per
 * index (immutable). A category whose list is not its items in catalog order (an index not made
 * by {@link indexProducts}) is left out and read by id.
 */
function categoryPositions(products: ProductIndex): ReadonlyMap<string, Int32Array> {
  let out = positionsByIndex.get(products);
  if (out) return out;
  const items = products.items;
  const lists = new Map<string, number[]>();
  for (let i = 0; i < items.length; i++) {
    const c = items[i]!.category;
    if (c === undefined) continue;
    let list = lists.get(c);
    if (!list) lists.set(c, (list = []));
    list.push(i);
  }
  const map = new Map<string, Int32Array>();
  for (const [c, ids] of products.byCategory) {
    const at = lists.get(c);
    if (at && at.length === ids.length && at.every((i, j) => items[i]!.id === ids[j])) map.set(c, Int32Array.from(at));
  }
  positionsByIndex.set(products, (out = map));
  return out;
}

function isScopeSource(s: AffinitySource): s is { readonly scope: (offer: Offer) => number } {
  return typeof s === 'object' && !(s instanceof Map) && typeof (s as { scope?: unknown }).scope === 'function';
}

function clamp01(x: number): number {
  return Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0;
}
