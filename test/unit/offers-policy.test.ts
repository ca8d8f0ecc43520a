import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isValidationError } from '../../src/errors.js';
import { Random } from '../../src/model/random.js';
import { scopeAffinity } from '../../src/offers/affinity.js';
import { sampleBeta } from '../../src/offers/beta-sampler.js';
import { offerEconomics } from '../../src/offers/offer-value.js';
import { cartValue, chooseOffers, scoreOffers, type OffersInput } from '../../src/offers/policy.js';
import { indexProducts } from '../../src/offers/product-index.js';
import type { Offer, OfferCatalog } from '../../src/offers/types.js';
import type { StoredEvent } from '../../src/types.js';

const HOUR = 3_600_000;
const NOW = 10_000 * HOUR;
const products = indexProducts([
  { id: 'm1', title: 'Red Mug', category: 'mug', price: 8 },
  { id: 'm2', title: 'Blue Mug', category: 'mug', price: 9 },
  { id: 'b1', title: 'Jute Bag', category: 'bag', price: 5 },
  { id: 'c1', title: 'Vanilla Candle', category: 'candle', price: 12 },
  { id: 'k1', title: 'Birthday Card', category: 'card', price: 3 },
]);
const offer = (id: string, scope: Offer['scope'], extra: Partial<Offer> = {}): Offer => ({
  id,
  title: `10% off ${id}`,
  discount: { kind: 'percent', percent: 10 },
  scope,
  hints: { margin: 0.4, typicalSpend: 20 },
  ...extra,
});
const catalog: OfferCatalog = {
  version: 1,
  issuedAt: 0,
  currency: 'GBP',
  offers: [
    offer('mugs', { kind: 'categories', categories: ['mug'] }),
    offer('bags', { kind: 'categories', categories: ['bag'] }),
    offer('candle', { kind: 'items', itemIds: ['c1'] }),
    offer('cards', { kind: 'categories', categories: ['card'] }),
  ],
};
const affinity = { m1: 0.3, m2: 0.1, b1: 0.2, c1: 0.05, k1: 0.01 };
const input = (events: StoredEvent[] = [], over: Partial<OffersInput> = {}): OffersInput => ({ catalog, products, events, affinity, ...over });
const ctx = { now: NOW };

describe('offer policy', () => {
  test('ranks by expected value = P(buy in scope) × (margin − discount) and explains the number', () => {
    const shown = chooseOffers(input(), { k: 4, exploration: 0, context: ctx });
    assert.deepEqual(shown.map((s) => s.offerId), ['mugs', 'bags', 'candle', 'cards']);
    // mugs: P = 1 − 0.7 × 0.9 = 0.37; net per use = 0.4 × 20 − 0.1 × 20 = 6.
    assert.ok(Math.abs(shown[0]!.expectedValue - 0.37 * 6) < 1e-4);
    assert.ok(shown.every((s) => s.explore === false));
    assert.deepEqual(Object.keys(shown[0]!).sort(), ['discount', 'expectedValue', 'explore', 'offerId', 'reason', 'title', 'why']);
  });

  test('the product on screen and the cart lift their scopes: a candle page shows the candle offer first', () => {
    const home = chooseOffers(input(), { k: 4, exploration: 0, context: ctx });
    assert.deepEqual(home.map((s) => s.offerId), ['mugs', 'bags', 'candle', 'cards']);
    // On the candle's page: P(candle) = 1 − 0.95 × (1 − 0.2) = 0.24, above bags' 0.2 and below mugs' 0.37.
    const page = chooseOffers(input(), { k: 4, exploration: 0, context: { ...ctx, page: 'product', itemId: 'c1' } });
    assert.deepEqual(page.map((s) => s.offerId), ['mugs', 'candle', 'bags', 'cards']);
    const candle = scoreOffers(input(), { context: { ...ctx, itemId: 'c1' } }).find((s) => s.offer.id === 'candle')!;
    assert.ok(Math.abs(candle.affinity - (1 - 0.95 * 0.8)) < 1e-12);
    assert.equal(page.find((s) => s.offerId === 'candle')!.reason, 'For the Vanilla Candle you are looking at');
    // A card in the cart: P(cards) = 1 − 0.99 × 0.5 = 0.505, first.
    const cart = chooseOffers(input(), { k: 4, exploration: 0, context: { ...ctx, cart: [{ itemId: 'k1' }] } });
    assert.equal(cart[0]!.offerId, 'cards');
    // Both, on an offer whose scope holds both: combined as independent chances.
    const both = scoreOffers(input(), { context: { ...ctx, itemId: 'm2', cart: [{ itemId: 'm1' }] } }).find((s) => s.offer.id === 'mugs')!;
    assert.ok(Math.abs(both.affinity - (1 - 0.63 * 0.8 * 0.5)) < 1e-12);
    // A product outside every scope changes nothing.
    assert.deepEqual(scoreOffers(input(), { context: { ...ctx, itemId: 'nope' } }).map((s) => s.affinity), scoreOffers(input(), { context: ctx }).map((s) => s.affinity));
  });

  test('a context that is not one is refused by field: a bad now, cart line or page must not switch rules off', () => {
    const bad: Array<[unknown, string]> = [
      [{ now: Number.NaN }, 'options.context.now'],
      [{ now: 'x' }, 'options.context.now'],
      [{ now: NOW, page: 'nope' }, 'options.context.page'],
      [{ now: NOW, cart: 'x' }, 'options.context.cart'],
      [{ now: NOW, cart: [null] }, 'options.context.cart[0]'],
      // eslint-disable-next-line no-sparse-arrays
      [{ now: NOW, cart: [, { itemId: 'm1' }] }, 'options.context.cart[0]'],
      [{ now: NOW, cart: [{ itemId: 'm1', quantity: -2, price: -10 }] }, 'options.context.cart[0].quantity'],
      [{ now: NOW, cart: [{ itemId: 'm1', quantity: 1, price: -10 }] }, 'options.context.cart[0].price'],
      [{ now: NOW, cart: [{ itemId: 'm1', quantity: 1.5 }] }, 'options.context.cart[0].quantity'],
      [{ now: NOW, cart: [{ itemId: 'm1', quantity: 0 }] }, 'options.context.cart[0].quantity'],
      // The bounds of an event's itemId and quantity (stop 40).
      [{ now: NOW, cart: [{ itemId: 'm1', quantity: 1e12 }] }, 'options.context.cart[0].quantity'],
      [{ now: NOW, cart: [{ itemId: '' }] }, 'options.context.cart[0].itemId'],
      [{ now: NOW, cart: [{ itemId: 'x'.repeat(257) }] }, 'options.context.cart[0].itemId'],
    ];
    for (const [context, field] of bad) {
      assert.throws(() => chooseOffers(input(), { k: 2, context: context as never }), (e: unknown) => isValidationError(e) && e.field === field, field);
    }
    assert.doesNotThrow(() => chooseOffers(input(), { k: 2, context: { now: NOW, cart: [{ itemId: 'x'.repeat(256), quantity: 1_000_000, price: 0 }] } }), 'at the bounds');
    assert.doesNotThrow(() => chooseOffers(input(), { k: 2, context: { now: NOW, cart: [{ itemId: 'm1', quantity: 1, price: 0 }] } }), 'a free line');
  });

  test('events after `now` (a replay at an earlier time) count neither for the rules nor in the reason', () => {
    const once = { ...catalog, offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }, { limits: { maxImpressions: 1 } }), offer('welcome', { kind: 'all' }, { audience: 'new' })] };
    const later: StoredEvent[] = [
      { type: 'purchase', itemId: 'b1', t: NOW + HOUR },
      { type: 'offer_impression', offerId: 'mugs', t: NOW + 2 * HOUR },
      { type: 'view', itemId: 'm1', t: NOW + 3 * HOUR },
    ];
    const shown = chooseOffers(input(later, { catalog: once }), { k: 2, exploration: 0, context: ctx });
    assert.deepEqual(shown.map((s) => s.offerId).sort(), ['mugs', 'welcome'], 'not yet shown, not yet a returning shopper');
    assert.ok(!shown.some((s) => /Red Mug/.test(s.reason)), 'a view that has not happened yet is no reason');
  });

  test('the offer ledger (what retention removed) counts only as of `now`: an entry or a purchase after it is left out', () => {
    const once = { ...catalog, offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }, { limits: { maxRedemptions: 1 } }), offer('welcome', { kind: 'all' }, { audience: 'new' })] };
    const ledger = { offers: [{ offerId: 'mugs', impressions: 1, redemptions: 1, lastImpressionAt: NOW - 2 * HOUR, lastRedeemedAt: NOW - HOUR }], lastPurchaseAt: NOW - HOUR };
    const at = (now: number) => chooseOffers(input([], { catalog: once, ledger }), { k: 2, exploration: 0, context: { now } }).map((s) => s.offerId).sort();
    assert.deepEqual(at(NOW), [], 'redeemed out; a returning shopper');
    assert.deepEqual(at(NOW - 3 * HOUR), ['mugs', 'welcome'], 'before the ledger\'s events: neither redeemed nor returning');
  });

  test('an offer that loses money even when used (discount ≥ margin) is never shown', () => {
    const lossy = { ...catalog, offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }, { discount: { kind: 'percent', percent: 50 } })] };
    assert.deepEqual(chooseOffers(input([], { catalog: lossy }), { k: 2, exploration: 1, context: ctx }), []);
  });

  test('offerEconomics: percent with a ceiling, fixed amount, and handling cost', () => {
    const capped = offer('x', { kind: 'all' }, { discount: { kind: 'percent', percent: 20, maxAmount: 3 }, hints: { margin: 0.5, typicalSpend: 40, cost: 1 } });
    assert.deepEqual(offerEconomics(capped, products), { typicalSpend: 40, value: 20, discountCost: 4, net: 16 });
    const fixed = offer('y', { kind: 'categories', categories: ['mug'] }, { discount: { kind: 'amount', amount: 1 }, hints: {} });
    // No hints: margin 0.3 on the mean catalog price of the scope, (8 + 9) / 2.
    assert.deepEqual(offerEconomics(fixed, products), { typicalSpend: 8.5, value: 0.3 * 8.5, discountCost: 1, net: 0.3 * 8.5 - 1 });
    // "£5 off orders over £50": such an order is worth at least £50, all in scope (it was priced as
    // one average product, net < 0, and so never shown).
    const orderWide = offer('z', { kind: 'all' }, { discount: { kind: 'amount', amount: 5 }, minBasket: 50, hints: {} });
    assert.deepEqual(offerEconomics(orderWide, products), { typicalSpend: 50, value: 0.3 * 50, discountCost: 5, net: 0.3 * 50 - 5 });
    // A narrower scope's in-scope spend is not bounded by the basket's minimum: its mean price stays.
    const mugsOver50 = offer('w', { kind: 'categories', categories: ['mug'] }, { discount: { kind: 'amount', amount: 1 }, minBasket: 50, hints: {} });
    assert.equal(offerEconomics(mugsOver50, products).typicalSpend, 8.5);
    // An item or category scope with no priced product in the catalog: the offer's minimum basket.
    const unpriced = offer('u', { kind: 'items', itemIds: ['gone'] }, { discount: { kind: 'amount', amount: 1 }, minBasket: 25, hints: {} });
    assert.deepEqual(offerEconomics(unpriced, products), { typicalSpend: 25, value: 0.3 * 25, discountCost: 1, net: 0.3 * 25 - 1 });
    // A fixed amount off is at most the in-scope value it comes off (£30 off a £20 spend costs £20).
    const whole = offer('v', { kind: 'items', itemIds: ['c1'] }, { discount: { kind: 'amount', amount: 30 }, hints: { margin: 0.4, typicalSpend: 20 } });
    assert.deepEqual(offerEconomics(whole, products), { typicalSpend: 20, value: 8, discountCost: 20, net: -12 });
  });

  test('affinity: per-item function, map and record agree; scope form is used as is', () => {
    const mugs = catalog.offers[0]!;
    const expected = 1 - 0.7 * 0.9;
    assert.ok(Math.abs(scopeAffinity(mugs, affinity, products) - expected) < 1e-12);
    assert.ok(Math.abs(scopeAffinity(mugs, new Map(Object.entries(affinity)), products) - expected) < 1e-12);
    assert.ok(Math.abs(scopeAffinity(mugs, (id) => affinity[id as keyof typeof affinity] ?? 0, products) - expected) < 1e-12);
    assert.equal(scopeAffinity(mugs, { scope: (o) => (o.id === 'mugs' ? 0.8 : 0) }, products), 0.8);
    assert.equal(scopeAffinity(mugs, { m1: 7, m2: Number.NaN }, products), 1, 'values are clamped to [0, 1]');
    // Ids a Map or record does not hold count as 0.
    assert.ok(Math.abs(scopeAffinity(mugs, new Map([['m1', 0.3]]), products) - 0.3) < 1e-12);
    assert.ok(Math.abs(scopeAffinity(mugs, { m1: 0.3 }, products) - 0.3) < 1e-12);
    // The scope form is clamped too: a NaN would have given a NaN posterior and a meaningless order.
    assert.equal(scopeAffinity(mugs, { scope: () => 1.5 }, products), 1);
    assert.equal(scopeAffinity(mugs, { scope: () => -0.5 }, products), 0);
    assert.equal(scopeAffinity(mugs, { scope: () => Number.NaN }, products), 0);
    const scored = scoreOffers(input([], { affinity: { scope: (o) => (o.id === 'mugs' ? Number.NaN : o.id === 'bags' ? 0.5 : 0.25) } }), { context: ctx });
    assert.deepEqual(scored.map((s) => [s.offer.id, s.affinity]), [['bags', 0.5], ['candle', 0.25], ['cards', 0.25], ['mugs', 0]]);
  });

  test('ignored impressions lower an offer until another wins (local learning)', () => {
    // Thirty visits an hour apart, each showing the offer, none using it.
    const ignored: StoredEvent[] = Array.from({ length: 30 }, (_, i) => ({ t: i * HOUR, type: 'offer_impression', offerId: 'mugs' }));
    assert.equal(chooseOffers(input(), { k: 1, exploration: 0, context: ctx })[0]!.offerId, 'mugs');
    assert.equal(chooseOffers(input(ignored), { k: 1, exploration: 0, context: ctx })[0]!.offerId, 'bags');
    const [before] = scoreOffers(input(), { context: ctx });
    const redeemed = scoreOffers(input([...ignored.slice(0, 5), ...ignored.slice(0, 5).map((e) => ({ ...e, type: 'offer_redeemed' as const }))]), { context: ctx });
    assert.ok(redeemed.find((s) => s.offer.id === 'mugs')!.expectedValue > before!.expectedValue, 'redemptions raise it');
  });

  test('impressions count once per visit: an offer seen on many pages of a visit and used ranks above an identical one never shown', () => {
    const twins: OfferCatalog = {
      ...catalog,
      offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }), offer('mugs2', { kind: 'categories', categories: ['mug'] })],
    };
    const t0 = NOW - 5 * HOUR;
    // One visit: the offer on 20 pages a minute apart, then used.
    const visit: StoredEvent[] = [
      ...Array.from({ length: 20 }, (_, i): StoredEvent => ({ t: t0 + i * 60_000, type: 'offer_impression', offerId: 'mugs' })),
      { t: t0 + 21 * 60_000, type: 'offer_redeemed', offerId: 'mugs' },
    ];
    const scored = scoreOffers(input(visit, { catalog: twins }), { context: ctx });
    const ev = (id: string) => scored.find((s) => s.offer.id === id)!.expectedValue;
    assert.ok(ev('mugs') > ev('mugs2'), `used ${ev('mugs')} vs never shown ${ev('mugs2')}`);
    // The same 20 impressions over 20 visits, never used, do sink it.
    const ignored = Array.from({ length: 20 }, (_, i): StoredEvent => ({ t: t0 - i * HOUR, type: 'offer_impression', offerId: 'mugs' }));
    const sunk = scoreOffers(input(ignored, { catalog: twins }), { context: ctx });
    assert.ok(sunk.find((s) => s.offer.id === 'mugs')!.expectedValue < sunk.find((s) => s.offer.id === 'mugs2')!.expectedValue);
  });

  test('caps: a redeemed-out offer and one cooling down are not shown; it returns after the cool-down', () => {
    const capped: OfferCatalog = {
      ...catalog,
      offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }, { limits: { maxRedemptions: 1 } }), offer('bags', { kind: 'categories', categories: ['bag'] }, { limits: { coolDownHours: 48 } })],
    };
    const events: StoredEvent[] = [
      { t: NOW - 2 * HOUR, type: 'offer_redeemed', offerId: 'mugs' },
      { t: NOW - 47 * HOUR, type: 'offer_redeemed', offerId: 'bags' },
    ];
    assert.deepEqual(chooseOffers(input(events, { catalog: capped }), { k: 2, exploration: 0, context: ctx }), []);
    const later = chooseOffers(input(events, { catalog: capped }), { k: 2, exploration: 0, context: { now: NOW + HOUR } });
    assert.deepEqual(later.map((s) => s.offerId), ['bags']);
  });

  test('minimum basket: a known cart below it hides the offer, the catalog price fills missing line prices', () => {
    const min: OfferCatalog = { ...catalog, offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }, { minBasket: 20 })] };
    assert.deepEqual(chooseOffers(input([], { catalog: min }), { k: 1, context: { now: NOW, cart: [{ itemId: 'm1', quantity: 2 }] } }), []);
    assert.equal(chooseOffers(input([], { catalog: min }), { k: 1, context: { now: NOW, cart: [{ itemId: 'm1', quantity: 3 }] } }).length, 1);
    // An empty cart is a known cart worth 0 (docs/OFFERS.md: leave `cart` out to advertise the offer).
    assert.deepEqual(chooseOffers(input([], { catalog: min }), { k: 1, context: { now: NOW, cart: [] } }), []);
    assert.equal(chooseOffers(input([], { catalog: min }), { k: 1, context: { now: NOW } }).length, 1);
  });

  test('the same seed gives the same answer; other seeds differ somewhere', () => {
    const events: StoredEvent[] = [{ t: 1, type: 'view', itemId: 'm1' }];
    const opts = { k: 2, exploration: 0.5, context: ctx };
    const a = chooseOffers(input(events), { ...opts, seed: 42 });
    assert.deepEqual(chooseOffers(input(events), { ...opts, seed: 42 }), a);
    const answers = new Set(Array.from({ length: 50 }, (_, s) => JSON.stringify(chooseOffers(input(events), { ...opts, seed: s }))));
    assert.ok(answers.size > 1);
  });

  test('exploration share stays within bounds over many seeded draws', () => {
    // Uncertain posteriors (weak prior) so Thompson draws often disagree with the greedy pick.
    const draws = 2000;
    const share = (exploration: number): number => {
      let explored = 0;
      for (let seed = 0; seed < draws; seed++) {
        for (const s of chooseOffers(input(), { k: 2, seed, exploration, priorStrength: 2, context: ctx })) if (s.explore) explored++;
      }
      return explored / (2 * draws);
    };
    assert.equal(share(0), 0);
    const s = share(0.2);
    // Never more than the exploration share (plus sampling noise: 3σ ≈ 0.027), and clearly some.
    assert.ok(s <= 0.2 + 0.027, `explore share ${s}`);
    assert.ok(s >= 0.05, `explore share ${s}`);
    assert.ok(share(1) > s, 'more exploration, more explore slots');
  });

  test('exploring is marked and explained without a made-up event', () => {
    const explored = Array.from({ length: 200 }, (_, seed) => chooseOffers(input(), { k: 1, seed, exploration: 1, priorStrength: 2, context: ctx })[0]!).filter((s) => s.explore);
    assert.ok(explored.length > 0);
    for (const s of explored) {
      assert.equal(s.reason, 'Something new to try');
      assert.deepEqual(s.why, { kind: 'explore' });
    }
  });

  test('option errors name the option and the allowed values', () => {
    const err = (opts: object, field: string, allowed: RegExp) =>
      assert.throws(() => chooseOffers(input(), opts), (e: unknown) => isValidationError(e) && e.field === field && allowed.test(e.message));
    err({ k: 0 }, 'options.k', /integer from 1 to 20, got 0/);
    err({ k: 2.5 }, 'options.k', /integer from 1 to 20/);
    err({ exploration: 1.5 }, 'options.exploration', /from 0 to 1, got 1.5/);
    err({ seed: Number.NaN }, 'options.seed', /integer from 0 to 4294967295, got NaN/);
    // The generator keeps 32 whole bits: 7.9 or 2³² + 7 would have been the seed 7 in disguise.
    err({ seed: 7.9 }, 'options.seed', /integer from 0 to 4294967295, got 7.9/);
    err({ seed: 2 ** 32 + 7 }, 'options.seed', /integer from 0 to 4294967295/);
    err({ seed: -1 }, 'options.seed', /integer from 0 to 4294967295, got -1/);
    err({ objective: 'clicks' }, 'options.objective', /'value' or 'reach', got "clicks"$/);
    // A string that looks like a number is shown as the string it is (it read "got 2").
    err({ k: '2' }, 'options.k', /integer from 1 to 20, got "2"$/);
    err({ exploration: '0.1' }, 'options.exploration', /from 0 to 1, got "0.1"$/);
    err({ priorStrength: -1 }, 'options.priorStrength', /from 0 to 1000000, got -1/);
    // scoreOffers (exported on its own) checks it too: a NaN gave NaN posteriors and a meaningless order.
    assert.throws(() => scoreOffers(input(), { priorStrength: Number.NaN }), (e: unknown) => isValidationError(e) && e.field === 'options.priorStrength');
    assert.throws(() => scoreOffers(input(), { priorStrength: 2e6 }), (e: unknown) => isValidationError(e) && e.field === 'options.priorStrength' && /from 0 to 1000000, got 2000000/.test(e.message));
  });

  test("objective 'reach' ranks by P(use) alone; the default 'value' weighs in the value per use", () => {
    // cards: P = 0.5, net = 0.4 × 4 − 0.4 = 1.2 → EV 0.6; candle: P = 0.3, net = 0.4 × 40 − 4 = 12 → EV 3.6.
    const two: OfferCatalog = {
      ...catalog,
      offers: [
        offer('cards', { kind: 'categories', categories: ['card'] }, { hints: { margin: 0.4, typicalSpend: 4 } }),
        offer('candle', { kind: 'items', itemIds: ['c1'] }, { hints: { margin: 0.4, typicalSpend: 40 } }),
      ],
    };
    const aff = { k1: 0.5, c1: 0.3 };
    const pick = (objective?: 'value' | 'reach') =>
      chooseOffers(input([], { catalog: two, affinity: aff }), { k: 2, exploration: 0, context: ctx, ...(objective ? { objective } : {}) }).map((s) => s.offerId);
    assert.deepEqual(pick(), ['candle', 'cards']);
    assert.deepEqual(pick('value'), ['candle', 'cards']);
    assert.deepEqual(pick('reach'), ['cards', 'candle']);
    // The reported expected value is the same number whichever objective ranked it.
    const ev = (objective: 'value' | 'reach') => chooseOffers(input([], { catalog: two, affinity: aff }), { k: 2, exploration: 0, context: ctx, objective }).find((s) => s.offerId === 'cards')!.expectedValue;
    assert.ok(Math.abs(ev('reach') - 0.5 * 1.2) < 1e-4);
    assert.equal(ev('reach'), ev('value'));
    // Offers that lose money are still never shown under 'reach'.
    const lossy = { ...two, offers: [offer('cards', { kind: 'categories', categories: ['card'] }, { discount: { kind: 'percent', percent: 50 } })] };
    assert.deepEqual(chooseOffers(input([], { catalog: lossy, affinity: aff }), { k: 2, exploration: 1, context: ctx, objective: 'reach' }), []);
  });

  test('without k or seed: two offers, and the answer seed 1 gives', () => {
    // Four identical offers: with exploration 1 the order is the Thompson draws', so the seed shows.
    const quads: OfferCatalog = { ...catalog, offers: ['a', 'b', 'c', 'd'].map((id) => offer(id, { kind: 'categories', categories: ['mug'] })) };
    const order = (seed?: number) => chooseOffers(input([], { catalog: quads }), { k: 4, exploration: 1, priorStrength: 1, context: ctx, ...(seed === undefined ? {} : { seed }) }).map((s) => s.offerId);
    assert.deepEqual(order(), order(1));
    for (const seed of [0, 2, 3]) assert.notDeepEqual(order(seed), order(1), `seed ${seed} gives another order here`);
    assert.equal(chooseOffers(input([], { catalog: quads }), { context: ctx }).length, 2, 'k defaults to 2');
  });

  test('offers of equal value are ranked by offer id, whatever their order in the catalog', () => {
    const twins: OfferCatalog = { ...catalog, offers: [offer('mugs-b', { kind: 'categories', categories: ['mug'] }), offer('mugs-a', { kind: 'categories', categories: ['mug'] })] };
    assert.deepEqual(scoreOffers(input([], { catalog: twins }), { context: ctx }).map((s) => s.offer.id), ['mugs-a', 'mugs-b']);
    assert.deepEqual(chooseOffers(input([], { catalog: twins }), { k: 2, exploration: 0, context: ctx }).map((s) => s.offerId), ['mugs-a', 'mugs-b']);
  });

  test('an exploration slot is marked explore only when it differs from the greedy pick', () => {
    // One eligible offer: every slot explores (exploration 1), and every draw picks the greedy offer.
    const one: OfferCatalog = { ...catalog, offers: [catalog.offers[0]!] };
    const events: StoredEvent[] = [{ t: 1, type: 'view', itemId: 'm1' }];
    for (let seed = 0; seed < 10; seed++) {
      const [s] = chooseOffers(input(events, { catalog: one }), { k: 1, seed, exploration: 1, priorStrength: 2, context: ctx });
      assert.equal(s!.explore, false, `seed ${seed}`);
      assert.deepEqual(s!.why, { kind: 'event', itemId: 'm1', event: 'view' });
    }
    // Nor is the last slot, when one offer is left for it.
    const last = chooseOffers(input([], { catalog: { ...catalog, offers: catalog.offers.slice(0, 2) } }), { k: 2, seed: 3, exploration: 1, priorStrength: 1, context: ctx });
    assert.equal(last.length, 2);
    assert.equal(last[1]!.explore, false);
  });

  test("with objective 'reach' an exploration slot draws P(use) alone, not P(use) × net value", () => {
    // cards: P ≈ 0.9, net 1.2; candle: P ≈ 0.1, net 120. A prior this strong makes each draw ≈ P.
    const two: OfferCatalog = {
      ...catalog,
      offers: [
        offer('cards', { kind: 'categories', categories: ['card'] }, { hints: { margin: 0.4, typicalSpend: 4 } }),
        offer('candle', { kind: 'items', itemIds: ['c1'] }, { hints: { margin: 0.4, typicalSpend: 400 } }),
      ],
    };
    const first = (objective: 'value' | 'reach', seed: number) =>
      chooseOffers(input([], { catalog: two, affinity: { k1: 0.9, c1: 0.1 } }), { k: 1, seed, exploration: 1, priorStrength: 1e6, objective, context: ctx })[0]!;
    for (let seed = 0; seed < 10; seed++) {
      assert.deepEqual([first('reach', seed).offerId, first('reach', seed).explore], ['cards', false], `reach, seed ${seed}`);
      assert.deepEqual([first('value', seed).offerId, first('value', seed).explore], ['candle', false], `value, seed ${seed}`);
    }
  });

  test('the posterior is Beta(s·p + redemptions, s·(1 − p) + showings − redemptions)', () => {
    // Three visits a day apart showing the mugs offer, one of them used.
    const events: StoredEvent[] = [
      ...[3, 2, 1].map((d): StoredEvent => ({ t: NOW - d * 24 * HOUR, type: 'offer_impression', offerId: 'mugs' })),
      { t: NOW - 24 * HOUR + 60_000, type: 'offer_redeemed', offerId: 'mugs' },
    ];
    const mugs = scoreOffers(input(events), { context: ctx }).find((s) => s.offer.id === 'mugs')!;
    // p = 1 − 0.7 × 0.9 = 0.37, s = 10 (DEFAULT_PRIOR_STRENGTH).
    assert.ok(Math.abs(mugs.alpha - (3.7 + 1)) < 1e-9, `alpha ${mugs.alpha}`);
    assert.ok(Math.abs(mugs.beta - (6.3 + 2)) < 1e-9, `beta ${mugs.beta}`);
    assert.ok(Math.abs(mugs.expectedValue - (4.7 / 13) * 6) < 1e-9);
  });

  test('a cart lifts every offer one of its lines is in scope of, not only those all its lines are', () => {
    const cards = scoreOffers(input(), { context: { ...ctx, cart: [{ itemId: 'm1' }, { itemId: 'k1' }] } }).find((s) => s.offer.id === 'cards')!;
    assert.ok(Math.abs(cards.affinity - (1 - 0.99 * 0.5)) < 1e-12);
  });

  test('cartValue: quantity × price per line, one unit without a quantity, the catalog price without a price', () => {
    // m1 (catalog price 8) once; b1 (5) twice; an unknown item without a price is 0; c1 at the line's price.
    assert.equal(cartValue([{ itemId: 'm1' }, { itemId: 'b1', quantity: 2 }, { itemId: 'zz' }, { itemId: 'c1', price: 1 }], products), 19);
    const min: OfferCatalog = { ...catalog, offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }, { minBasket: 20 })] };
    assert.equal(chooseOffers(input([], { catalog: min }), { k: 1, context: { now: NOW, cart: [{ itemId: 'm1', price: 20 }] } }).length, 1, 'a line without a quantity is one unit');
  });

  test('a replay leaves out a ledger entry whose folded redemption came after its `now`', () => {
    const once = { ...catalog, offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }, { limits: { maxRedemptions: 1 } })] };
    const ledger = { offers: [{ offerId: 'mugs', impressions: 0, redemptions: 1, lastRedeemedAt: NOW + HOUR }] };
    const at = (now: number) => chooseOffers(input([], { catalog: once, ledger }), { k: 1, exploration: 0, context: { now } }).map((s) => s.offerId);
    assert.deepEqual(at(NOW), ['mugs'], 'not yet redeemed at NOW');
    assert.deepEqual(at(NOW + 2 * HOUR), [], 'redeemed out after it');
  });

  test('the cool-down runs from the latest redemption, whether the ledger or a stored event holds it', () => {
    const resting = { ...catalog, offers: [offer('mugs', { kind: 'categories', categories: ['mug'] }, { limits: { coolDownHours: 48 } })] };
    const ledger = { offers: [{ offerId: 'mugs', impressions: 0, redemptions: 1, lastRedeemedAt: NOW - HOUR }] };
    // An older redemption still stored (a device clock set back since, say) does not end the cool-down early.
    const events: StoredEvent[] = [{ t: NOW - 100 * HOUR, type: 'offer_redeemed', offerId: 'mugs' }];
    assert.deepEqual(chooseOffers(input(events, { catalog: resting, ledger }), { k: 1, exploration: 0, context: ctx }), []);
    assert.equal(chooseOffers(input(events, { catalog: resting, ledger }), { k: 1, exploration: 0, context: { now: NOW + 48 * HOUR } }).length, 1);
  });

  test('Beta draws average a / (a + b)', () => {
    const rng = new Random(3);
    for (const [a, b] of [[2, 8], [0.5, 0.5], [30, 10]] as const) {
      let sum = 0;
      for (let i = 0; i < 4000; i++) sum += sampleBeta(rng, a, b);
      assert.ok(Math.abs(sum / 4000 - a / (a + b)) < 0.02, `Beta(${a}, ${b}) mean ${sum / 4000}`);
    }
  });
});
