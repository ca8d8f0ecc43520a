/**
 * Shop side of the learned affinity: fit {@link LearnedAffinity} on the shop's orders, oldest
 * first (each order scored, then learned from, as in `offers-eval`), and return the snapshot a
 * device needs (`catalog.affinity`). Pure (no I/O); `localrec offers fit-affinity` reads the files.
 */
import type { AffinitySnapshot } from '../affinity-model.js';
import { offerScopeLookup } from '../purchase-baskets.js';
import { indexProducts } from '../product-index.js';
import type { OfferCatalog } from '../types.js';
import { validateOfferCatalog } from '../validate-catalog.js';
import { LearnedAffinity, type HistoryBasket, type LearnedAffinityOptions } from './learned-affinity.js';
import type { RetailData } from './retail-data.js';

export interface FitAffinityResult {
  /** The catalog with `affinity` set (validated). */
  catalog: OfferCatalog;
  /** Orders learned from, and how many touched at least one offer's scope. */
  baskets: number;
  basketsWithOffer: number;
  customers: number;
  /**
   * Offers no order touched: learned as never bought, while a device matching its own purchases may
   * see them bought. For a `categories` offer the usual cause is a category name: orders are matched
   * through the categories derived from the CSV's descriptions (`retailCategory`), which may not be
   * the shop's own names.
   */
  offersWithoutOrders: string[];
  /**
   * Offers some order touched but fewer than `minCustomers` distinct customers: the snapshot
   * publishes no statistics for them (the device scores them as never bought), for privacy.
   */
  offersBelowMinCustomers: string[];
}

/**
 * Learn the affinity from every order in `data` (already in time order, as `loadRetailData` gives
 * it) for the offers of `catalog`, and put the snapshot into a copy of the catalog. An order's
 * offers are those whose scope contains one of its items (same scope rules as the device). The
 * snapshot is what {@link LearnedAffinity.snapshot} publishes: rounded, and without the offers fewer
 * than `options.minCustomers` (default 10) distinct customers bought.
 *
 * @example
 * ```ts
 * const { catalog } = fitAffinity(await loadRetailData('orders.csv.gz'), offers);
 * await signOfferCatalog(catalog, privateJwk);
 * ```
 */
export function fitAffinity(data: RetailData, catalogInput: OfferCatalog, options: Omit<LearnedAffinityOptions, 'features'> = {}): FitAffinityResult {
  // Strict as `offers sign` is: a currency the platform does not know would be refused there, after the fit.
  const catalog = validateOfferCatalog(catalogInput, 'catalog', { strictCurrency: true });
  if (catalog.offers.length === 0) throw new RangeError('the catalog has no offers to fit an affinity for');
  const model = new LearnedAffinity(
    catalog.offers.map((o) => o.id),
    options,
  );
  const offersOf = offerScopeLookup(catalog.offers, indexProducts(data.items));
  const histories = new Map<string, HistoryBasket[]>();
  let withOffer = 0;
  const touched = new Set<string>();
  for (const b of data.baskets) {
    let history = histories.get(b.customerId);
    if (!history) histories.set(b.customerId, (history = []));
    const offers = new Set<string>();
    const items = new Set<string>();
    for (const l of b.lines) {
      items.add(l.itemId);
      for (const id of offersOf(l.itemId)) offers.add(id);
    }
    if (offers.size > 0) withOffer++;
    for (const id of offers) touched.add(id);
    const basket: HistoryBasket = { t: b.t, offers, items };
    model.learn(model.predict(history, b.t - 1), history, basket, b.customerId);
    history.push(basket);
  }
  const snapshot: AffinitySnapshot = model.snapshot();
  return {
    catalog: validateOfferCatalog({ ...catalog, affinity: snapshot }, 'catalog', { strictCurrency: true }),
    baskets: data.baskets.length,
    basketsWithOffer: withOffer,
    customers: histories.size,
    offersWithoutOrders: catalog.offers.filter((o) => !touched.has(o.id)).map((o) => o.id),
    offersBelowMinCustomers: catalog.offers.filter((o) => touched.has(o.id) && !Object.hasOwn(snapshot.offers, o.id)).map((o) => o.id),
  };
}
