/**
 * Affinity: how likely this shopper is to buy something in an offer's scope soon. It comes from the
 * caller (the on-device model, or an evaluation's own estimate), in one of three shapes.
 */
import { scopeItemIds, type ProductIndex } from './product-index.js';
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
  if (isScopeSource(source)) return clamp01(source.scope(offer));
  const get: (id: string) => number =
    typeof source === 'function'
      ? source
      : source instanceof Map
        ? (id) => source.get(id) ?? 0
        : (id) => (source as Readonly<Record<string, number>>)[id] ?? 0;
  let miss = 1;
  for (const id of scopeItemIds(offer.scope, products)) miss *= 1 - clamp01(get(id));
  return 1 - miss;
}

function isScopeSource(s: AffinitySource): s is { readonly scope: (offer: Offer) => number } {
  return typeof s === 'object' && !(s instanceof Map) && typeof (s as { scope?: unknown }).scope === 'function';
}

function clamp01(x: number): number {
  return Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0;
}
