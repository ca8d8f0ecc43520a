/**
 * The offers policy keeps what it derives from a catalog and a product index (each offer's
 * economics, the item → offers index, `Set`s of long scope lists) and computes whole-category and
 * whole-catalog affinities once per call. These tests check that this changes no result, bit for
 * bit, against a plain computation (the code as it was before the caching, copied here), and that
 * nothing one catalog or index computed is served for another.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CITED_VERB, citableEvents } from '../../src/model/profile.js';
import { Random } from '../../src/model/random.js';
import { predictAffinity } from '../../src/offers/affinity-model.js';
import { scopeAffinity, type AffinitySource } from '../../src/offers/affinity.js';
import { DEFAULT_MARGIN, offerEconomics, type OfferEconomics } from '../../src/offers/offer-value.js';
import { chooseOffers, scoreOffers, type OffersInput } from '../../src/offers/policy.js';
import { indexProducts, inScope, scopeItemIds, type ProductIndex } from '../../src/offers/product-index.js';
import { offerScopeLookup, purchaseBaskets, type OfferScopeLookup } from '../../src/offers/purchase-baskets.js';
import { offerWhy } from '../../src/offers/reason.js';
import type { AffinitySnapshot, Offer, OfferCatalog, OfferContext, OfferScope, OfferWhy } from '../../src/offers/types.js';
import type { CatalogItem, CitedEventType, EventType, StoredEvent } from '../../src/types.js';

const HOUR = 3_600_000;
const NOW = 20_000 * HOUR;

// ---- The plain computation: the pre-cache code, one offer at a time, every list searched. ----

function refInScope(scope: OfferScope, itemId: string, products: ProductIndex): boolean {
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

function refScopeIds(scope: OfferScope, products: ProductIndex): readonly string[] {
  switch (scope.kind) {
    case 'all':
      return products.items.map((i) => i.id);
    case 'items':
      return scope.itemIds;
    case 'categories':
      return scope.categories.flatMap((c) => products.byCategory.get(c) ?? []);
  }
}

function refEconomics(offer: Offer, products: ProductIndex): OfferEconomics {
  let sum = 0;
  let n = 0;
  for (const id of refScopeIds(offer.scope, products)) {
    const price = products.byId.get(id)?.price;
    if (price !== undefined && price > 0) {
      sum += price;
      n++;
    }
  }
  const mean = n > 0 ? sum / n : undefined;
  const typicalSpend =
    offer.hints?.typicalSpend ??
    (offer.scope.kind === 'all' ? Math.max(mean ?? 0, offer.minBasket ?? 0) : (mean ?? offer.minBasket ?? 0));
  const value = (offer.hints?.margin ?? DEFAULT_MARGIN) * typicalSpend;
  const d = offer.discount;
  const discount = d.kind === 'amount' ? Math.min(d.amount, typicalSpend) : Math.min((d.percent / 100) * typicalSpend, d.maxAmount ?? Infinity);
  const discountCost = discount + (offer.hints?.cost ?? 0);
  return { typicalSpend, value, discountCost, net: value - discountCost };
}

const clamp01 = (x: number): number => (Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0);

function refAffinity(offer: Offer, source: AffinitySource, products: ProductIndex): number {
  if (typeof source === 'object' && !(source instanceof Map) && typeof (source as { scope?: unknown }).scope === 'function') {
    return clamp01((source as { scope: (o: Offer) => number }).scope(offer));
  }
  const get: (id: string) => number =
    typeof source === 'function'
      ? (source as (id: string) => number)
      : source instanceof Map
        ? (id) => source.get(id) ?? 0
        : (id) => (source as Readonly<Record<string, number>>)[id] ?? 0;
  let miss = 1;
  for (const id of refScopeIds(offer.scope, products)) miss *= 1 - clamp01(get(id));
  return 1 - miss;
}

function refLookup(offers: readonly Offer[], products: ProductIndex): OfferScopeLookup {
  return (itemId) => offers.filter((o) => refInScope(o.scope, itemId, products)).map((o) => o.id);
}

function refWhy(offer: Offer, events: readonly StoredEvent[], products: ProductIndex, context: OfferContext, explore: boolean): OfferWhy {
  if (offer.scope.kind === 'all') return { kind: explore ? 'explore' : 'shop' };
  const cited = citableEvents(events);
  const citedType = (i: number): CitedEventType | undefined => {
    const type = events[i]!.type;
    return cited[i] && Object.hasOwn(CITED_VERB, type) ? (type as CitedEventType) : undefined;
  };
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i]!;
    const event = citedType(i);
    if (event && e.itemId !== undefined && products.byId.has(e.itemId) && refInScope(offer.scope, e.itemId, products)) return { kind: 'event', itemId: e.itemId, event };
  }
  if (context.itemId !== undefined && products.byId.has(context.itemId) && refInScope(offer.scope, context.itemId, products)) return { kind: 'on-screen', itemId: context.itemId };
  const inCart = context.cart?.find((l) => products.byId.has(l.itemId) && refInScope(offer.scope, l.itemId, products));
  if (inCart) return { kind: 'in-cart', itemId: inCart.itemId };
  if (offer.scope.kind === 'items') {
    const cats = new Set(refScopeIds(offer.scope, products).map((id) => products.byId.get(id)?.category).filter((c) => c !== undefined));
    for (let i = events.length - 1; i >= 0 && cats.size > 0; i--) {
      const e = events[i]!;
      const event = citedType(i);
      const c = e.itemId !== undefined ? products.byId.get(e.itemId)?.category : undefined;
      if (event && c !== undefined && cats.has(c)) return { kind: 'same-category', itemId: e.itemId!, event };
    }
  }
  return { kind: explore ? 'explore' : 'shop' };
}

// ---- A seeded random shop. ----

interface World {
  items: CatalogItem[];
  catalog: OfferCatalog;
  events: StoredEvent[];
  /** Catalog ids, plus ids the catalog does not know. */
  probeIds: string[];
  categories: string[];
}

function world(seed: number): World {
  const rng = new Random(seed);
  const nCat = 3 + rng.int(8);
  const categories = Array.from({ length: nCat }, (_, c) => `cat-${c}`);
  const nItems = 150 + rng.int(250);
  const items: CatalogItem[] = [];
  for (let i = 0; i < nItems; i++) {
    const u = rng.next();
    const item: CatalogItem = { id: `sku-${i}`, title: `Item ${i}` };
    // Most items have a category and a price; some neither; a few a zero price.
    if (u < 0.9) item.category = categories[rng.int(nCat)]!;
    if (rng.next() < 0.85) item.price = rng.next() < 0.05 ? 0 : Math.round(rng.next() * 5000) / 100 + 0.5;
    items.push(item);
  }
  const ids = items.map((i) => i.id);
  const unknown = Array.from({ length: 6 }, (_, j) => `gone-${j}`);
  const pick = (n: number): string[] => {
    const out = new Set<string>();
    while (out.size < n) out.add(rng.next() < 0.05 ? unknown[rng.int(unknown.length)]! : ids[rng.int(ids.length)]!);
    return [...out];
  };
  const offers: Offer[] = [];
  const nOffers = 20 + rng.int(40);
  for (let o = 0; o < nOffers; o++) {
    const u = rng.next();
    let scope: OfferScope;
    if (u < 0.12) scope = { kind: 'all' };
    else if (u < 0.5) {
      // One category, or several (in any order); a category no item has, sometimes.
      const n = rng.next() < 0.6 ? 1 : 2 + rng.int(3);
      const cats = new Set<string>();
      while (cats.size < Math.min(n, nCat)) cats.add(categories[rng.int(nCat)]!);
      if (rng.next() < 0.1) cats.add('no-such-category');
      scope = { kind: 'categories', categories: [...cats] };
    } else scope = { kind: 'items', itemIds: pick(rng.next() < 0.5 ? 1 + rng.int(8) : 9 + rng.int(60)) };
    const offer: Offer = {
      id: `offer-${o}`,
      title: `Offer ${o}`,
      discount: rng.next() < 0.7 ? { kind: 'percent', percent: 5 + rng.int(30), ...(rng.next() < 0.3 ? { maxAmount: 1 + rng.int(10) } : {}) } : { kind: 'amount', amount: 0.5 + rng.int(8) },
      scope,
    };
    if (rng.next() < 0.3) offer.minBasket = rng.int(80);
    if (rng.next() < 0.7) {
      offer.hints = {};
      if (rng.next() < 0.8) offer.hints.margin = 0.2 + rng.next() * 0.5;
      if (rng.next() < 0.2) offer.hints.typicalSpend = 5 + rng.int(60);
      if (rng.next() < 0.2) offer.hints.cost = rng.next();
    }
    if (rng.next() < 0.15) offer.limits = { maxImpressions: 1 + rng.int(4) };
    if (rng.next() < 0.1) offer.audience = rng.next() < 0.5 ? 'new' : 'returning';
    offers.push(offer);
  }
  const types: EventType[] = ['view', 'view', 'view', 'purchase', 'purchase', 'add_to_cart', 'remove_from_cart', 'search', 'rating'];
  const events: StoredEvent[] = [];
  const nEvents = 40 + rng.int(200);
  for (let i = 0; i < nEvents; i++) {
    const t = NOW - (nEvents - i) * 20 * 60_000;
    if (rng.next() < 0.08) {
      const offerId = offers[rng.int(offers.length)]!.id;
      events.push({ t, type: rng.next() < 0.8 ? 'offer_impression' : 'offer_redeemed', offerId });
      continue;
    }
    const type = types[rng.int(types.length)]!;
    const e: StoredEvent = { t, type, itemId: rng.next() < 0.03 ? unknown[rng.int(unknown.length)]! : ids[rng.int(ids.length)]! };
    if (type === 'rating') e.value = 1 + rng.int(5);
    if (type === 'purchase') e.quantity = 1 + rng.int(3);
    events.push(e);
  }
  return { items, catalog: { version: 1, issuedAt: 0, currency: 'GBP', offers }, events, probeIds: [...ids, ...unknown], categories };
}

/** The same shop as new objects: nothing derived from the first can be found for it. */
function fresh(w: World): { catalog: OfferCatalog; products: ProductIndex } {
  return { catalog: structuredClone(w.catalog), products: indexProducts(structuredClone(w.items)) };
}

function affinitySources(w: World, seed: number): Array<[string, AffinitySource]> {
  const rng = new Random(seed ^ 0x5eed);
  const p = new Map<string, number>();
  for (const id of w.probeIds) {
    const u = rng.next();
    // Mostly small; some 0, some out of range or not a number (clamped to [0, 1], NaN to 0).
    p.set(id, u < 0.1 ? 0 : u < 0.12 ? 1.5 : u < 0.13 ? -0.2 : u < 0.14 ? Number.NaN : rng.next() * 0.2);
  }
  const record = Object.fromEntries(p);
  return [
    ['function', (id: string) => p.get(id) ?? 0],
    ['Map', p],
    ['record', record],
    ['scope', { scope: (offer: Offer) => (offer.id.length % 7) / 10 + 0.01 }],
  ];
}

const contexts = (w: World): Array<OfferContext | undefined> => [
  undefined,
  { now: NOW },
  { now: NOW, page: 'product', itemId: w.probeIds[3]! },
  { now: NOW, page: 'cart', cart: [{ itemId: w.probeIds[10]!, quantity: 2 }, { itemId: 'gone-1', price: 4 }, { itemId: w.probeIds[40]! }] },
  { now: NOW - 30 * HOUR },
];

const SEEDS = [1, 2, 3, 4, 5, 6];

describe('offers caching: the same results as a plain computation', () => {
  test('economics, scope affinity, item → offers, inScope and reasons match the plain code bit for bit (randomized catalogs)', () => {
    for (const seed of SEEDS) {
      const w = world(seed);
      const products = indexProducts(w.items);
      const offers = w.catalog.offers;
      for (let pass = 0; pass < 2; pass++) {
        // Twice: the second call reads what the first kept.
        for (const offer of offers) assert.deepStrictEqual(offerEconomics(offer, products), refEconomics(offer, products), `seed ${seed} ${offer.id}`);
        for (const [kind, source] of affinitySources(w, seed)) {
          for (const offer of offers) assert.equal(scopeAffinity(offer, source, products), refAffinity(offer, source, products), `seed ${seed} ${kind} ${offer.id}`);
        }
        const lookup = offerScopeLookup(offers, products);
        const ref = refLookup(offers, products);
        for (const id of w.probeIds) assert.deepStrictEqual(lookup(id), ref(id), `seed ${seed} lookup ${id}`);
        for (const offer of offers) {
          for (const id of w.probeIds) assert.equal(inScope(offer.scope, id, products), refInScope(offer.scope, id, products));
          assert.deepStrictEqual(scopeItemIds(offer.scope, products), refScopeIds(offer.scope, products));
          for (const context of contexts(w)) {
            for (const explore of [false, true]) assert.deepStrictEqual(offerWhy(offer, w.events, products, context ?? {}, explore), refWhy(offer, w.events, products, context ?? {}, explore));
          }
        }
      }
    }
  });

  test('scoreOffers and chooseOffers: repeated calls on one catalog and index equal calls on fresh copies and the plain numbers (function, Map, record, scope affinity; with and without a snapshot)', () => {
    for (const seed of SEEDS) {
      const w = world(seed);
      const products = indexProducts(w.items);
      const copy = fresh(w);
      for (const [kind, affinity] of affinitySources(w, seed)) {
        for (const context of contexts(w)) {
          const options = context ? { context } : {};
          const input: OffersInput = { catalog: w.catalog, products, events: w.events, affinity };
          const first = scoreOffers(input, options);
          assert.deepStrictEqual(scoreOffers(input, options), first, `seed ${seed} ${kind}: warm`);
          assert.deepStrictEqual(scoreOffers({ ...input, ...copy }, options), first, `seed ${seed} ${kind}: fresh copies`);
          for (const s of first) {
            assert.equal(s.net, refEconomics(s.offer, products).net);
            // With a context (and nothing on screen or in the cart), the policy's p = 1 − (1 − affinity).
            const p = refAffinity(s.offer, affinity, products);
            if (!context?.itemId && !context?.cart) assert.equal(s.affinity, context ? 1 - (1 - p) : p, `seed ${seed} ${kind} ${s.offer.id}`);
          }
          for (const [k, exploration, s] of [[2, 0.1, 1], [5, 0.5, 7], [20, 1, 42]] as const) {
            const opts = { ...options, k, exploration, seed: s };
            const shown = chooseOffers(input, opts);
            assert.deepStrictEqual(chooseOffers(input, opts), shown);
            assert.deepStrictEqual(chooseOffers({ ...input, ...copy }, opts), shown);
            // Given the items, not an index: indexed afresh in the call.
            assert.deepStrictEqual(chooseOffers({ ...input, products: w.items }, opts), shown);
          }
        }
      }
      // The engine's snapshot path: baskets from purchases through the item → offers lookup.
      const snapshot: AffinitySnapshot = {
        features: ['popularity', 'recentPopularity', 'returning', 'ownShare30', 'timesBought', 'inLastBasket'],
        weights: [-2, 1, 1, 0.1, 1, 0.5, 0.5],
        offers: Object.fromEntries(w.catalog.offers.slice(0, 10).map((o, i) => [o.id, { popularity: 0.01 * (i + 1), recentPopularity: 0.02, repeatRate: 0.3 }])),
      };
      const ids = w.catalog.offers.map((o) => o.id);
      const byLookup = (catalog: OfferCatalog, p: ProductIndex) => purchaseBaskets(w.events, offerScopeLookup(catalog.offers, p), { now: NOW });
      const baskets = byLookup(w.catalog, products);
      assert.deepStrictEqual(baskets, purchaseBaskets(w.events, refLookup(w.catalog.offers, products), { now: NOW }));
      assert.deepStrictEqual(byLookup(w.catalog, products), baskets);
      assert.deepStrictEqual(byLookup(copy.catalog, copy.products), baskets);
      const p = predictAffinity(snapshot, baskets, NOW, ids);
      const affinity = { scope: (offer: Offer) => p.get(offer.id) ?? 0 };
      const opts = { k: 3, seed: 9, exploration: 0.3, context: { now: NOW } };
      const shown = chooseOffers({ catalog: w.catalog, products, events: w.events, affinity }, opts);
      assert.ok(shown.length > 0);
      assert.deepStrictEqual(chooseOffers({ catalog: w.catalog, products, events: w.events, affinity }, opts), shown);
      assert.deepStrictEqual(chooseOffers({ ...copy, events: w.events, affinity }, opts), shown);
    }
  });
});

describe('offers caching: nothing kept for one catalog or index is served for another', () => {
  const items: CatalogItem[] = [
    { id: 'm1', title: 'Red Mug', category: 'mug', price: 8 },
    { id: 'm2', title: 'Blue Mug', category: 'mug', price: 10 },
    { id: 'b1', title: 'Jute Bag', category: 'bag', price: 5 },
    { id: 'c1', title: 'Candle', category: 'candle', price: 12 },
  ];
  const mk = (id: string, scope: OfferScope, margin: number): Offer => ({ id, title: id, discount: { kind: 'percent', percent: 10 }, scope, hints: { margin } });
  // Same offer ids, different scopes and margins.
  const a: OfferCatalog = { version: 1, issuedAt: 0, currency: 'GBP', offers: [mk('x', { kind: 'categories', categories: ['mug'] }, 0.4), mk('y', { kind: 'items', itemIds: ['b1'] }, 0.3), mk('z', { kind: 'all' }, 0.3)] };
  const b: OfferCatalog = { version: 2, issuedAt: 1, currency: 'GBP', offers: [mk('x', { kind: 'items', itemIds: ['c1'] }, 0.5), mk('y', { kind: 'categories', categories: ['mug', 'bag'] }, 0.3), mk('z', { kind: 'items', itemIds: ['m1'] }, 0.2)] };
  const affinity = { m1: 0.3, m2: 0.1, b1: 0.2, c1: 0.6 };
  const events: StoredEvent[] = [
    { t: NOW - 3 * HOUR, type: 'purchase', itemId: 'c1' },
    { t: NOW - 2 * HOUR, type: 'view', itemId: 'm2' },
  ];

  test('a second catalog with the same offer ids gets its own economics, affinities, lookup, scores and reasons', () => {
    const products = indexProducts(items);
    const run = (catalog: OfferCatalog) => ({
      economics: catalog.offers.map((o) => offerEconomics(o, products)),
      scored: scoreOffers({ catalog, products, events, affinity }, { context: { now: NOW } }).map((s) => [s.offer.id, s.affinity, s.expectedValue]),
      shown: chooseOffers({ catalog, products, events, affinity }, { k: 3, exploration: 0, context: { now: NOW } }),
      lookup: items.map((i) => offerScopeLookup(catalog.offers, products)(i.id)),
    });
    const ra = run(a);
    const rb = run(b);
    assert.notDeepStrictEqual(ra, rb);
    // Each equals what the plain code gives, after the other catalog was used with the same index.
    const check = (catalog: OfferCatalog, r: typeof ra) => {
      assert.deepStrictEqual(r.economics, catalog.offers.map((o) => refEconomics(o, products)));
      assert.deepStrictEqual(r.lookup, items.map((i) => refLookup(catalog.offers, products)(i.id)));
      for (const [id, p] of r.scored as Array<[string, number, number]>) assert.equal(p, refAffinity(catalog.offers.find((o) => o.id === id)!, affinity, products));
      assert.deepStrictEqual(
        r.shown.map((s) => s.why),
        r.shown.map((s) => refWhy(catalog.offers.find((o) => o.id === s.offerId)!, events, products, { now: NOW }, false)),
      );
    };
    check(a, ra);
    check(b, rb);
    assert.deepStrictEqual(run(a), ra, 'back to the first catalog');
    assert.deepStrictEqual(run(b), rb);
    // Concretely: offer x is on mugs in a (mean price 9, margin 0.4) and on the candle in b (12, 0.5).
    assert.equal(ra.economics[0]!.typicalSpend, 9);
    assert.equal(rb.economics[0]!.typicalSpend, 12);
    assert.deepStrictEqual(ra.lookup[0], ['x', 'z']);
    assert.deepStrictEqual(rb.lookup[0], ['y', 'z']);
  });

  test('a second product index (other prices and categories) gets its own economics and lookups for the same catalog', () => {
    const p1 = indexProducts(items);
    const p2 = indexProducts(items.map((i) => ({ ...i, price: (i.price ?? 0) * 2, category: i.id === 'm2' ? 'bag' : i.category })));
    const e1 = a.offers.map((o) => offerEconomics(o, p1));
    const e2 = a.offers.map((o) => offerEconomics(o, p2));
    assert.deepStrictEqual(e1, a.offers.map((o) => refEconomics(o, p1)));
    assert.deepStrictEqual(e2, a.offers.map((o) => refEconomics(o, p2)));
    assert.equal(e1[0]!.typicalSpend, 9);
    assert.equal(e2[0]!.typicalSpend, 16, 'mugs in p2: only m1, at 16');
    assert.deepStrictEqual(offerScopeLookup(a.offers, p1)('m2'), ['x', 'z']);
    assert.deepStrictEqual(offerScopeLookup(a.offers, p2)('m2'), ['z']);
    assert.equal(scopeAffinity(a.offers[0]!, affinity, p1), refAffinity(a.offers[0]!, affinity, p1));
    assert.equal(scopeAffinity(a.offers[0]!, affinity, p2), 1 - (1 - 0.3), 'mugs in p2: only m1');
  });

  test('the economics returned are a copy: changing one does not change the next answer', () => {
    const products = indexProducts(items);
    const e = offerEconomics(a.offers[0]!, products);
    e.net = -1;
    assert.deepStrictEqual(offerEconomics(a.offers[0]!, products), refEconomics(a.offers[0]!, products));
  });
});
