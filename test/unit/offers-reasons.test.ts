import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chooseOffers } from '../../src/offers/policy.js';
import { indexProducts } from '../../src/offers/product-index.js';
import { offerReason, offerWhy } from '../../src/offers/reason.js';
import type { Offer, OfferCatalog } from '../../src/offers/types.js';
import type { StoredEvent } from '../../src/types.js';

const products = indexProducts([
  { id: 'm1', title: 'Red Mug', category: 'mug', price: 8 },
  { id: 'm2', title: 'Blue Mug', category: 'mug', price: 9 },
  { id: 'b1', title: 'Jute Bag', category: 'bag', price: 5 },
]);
const mugs: Offer = { id: 'mugs', title: '10% off mugs', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'categories', categories: ['mug'] } };
const redMug: Offer = { ...mugs, id: 'red', scope: { kind: 'items', itemIds: ['m1'] } };

describe('offer reasons reference real past events', () => {
  test('the most recent in-scope event, with its verb and the product title', () => {
    const events: StoredEvent[] = [
      { t: 1, type: 'purchase', itemId: 'm2' },
      { t: 2, type: 'view', itemId: 'b1' },
      { t: 3, type: 'view', itemId: 'm1' },
    ];
    assert.equal(offerReason(mugs, events, products, {}, false), 'Because you viewed Red Mug');
    assert.equal(offerReason(mugs, events.slice(0, 2), products, {}, false), 'Because you bought Blue Mug');
    assert.equal(offerReason(mugs, [{ t: 1, type: 'add_to_cart', itemId: 'm2' }], products, {}, false), 'Because you added Blue Mug');
    // A shop's raw title, runs of spaces and all, is quoted with them made one (stop 34).
    const raw = indexProducts([{ id: 'h1', title: ' RED  HARMONICA   IN BOX ', category: 'mug', price: 1 }]);
    assert.equal(offerReason(mugs, [{ t: 1, type: 'view', itemId: 'h1' }], raw, {}, false), 'Because you viewed RED HARMONICA IN BOX');
  });

  test('events that speak against an item are not cited: a low rating, an add taken back', () => {
    // A 1-star rating counts against the item in the model: no "Because you rated Red Mug".
    assert.equal(offerReason(redMug, [{ t: 1, type: 'rating', itemId: 'm1', value: 1 }], products, {}, false), 'One of the shop’s current offers');
    assert.equal(offerReason(redMug, [{ t: 1, type: 'rating', itemId: 'm1', value: 5 }], products, {}, false), 'Because you rated Red Mug');
    // Nor as a same-category reason.
    assert.equal(offerReason(redMug, [{ t: 1, type: 'rating', itemId: 'm2', value: 1 }], products, {}, false), 'One of the shop’s current offers');
    // An add to cart removed later is no reason; the view before it still is; an add after the removal is.
    const removed: StoredEvent[] = [
      { t: 1, type: 'view', itemId: 'm1' },
      { t: 2, type: 'add_to_cart', itemId: 'm1' },
      { t: 3, type: 'remove_from_cart', itemId: 'm1' },
    ];
    assert.equal(offerReason(redMug, removed, products, {}, false), 'Because you viewed Red Mug');
    assert.equal(offerReason(redMug, removed.slice(1), products, {}, false), 'One of the shop’s current offers');
    assert.equal(offerReason(redMug, [...removed, { t: 4, type: 'add_to_cart', itemId: 'm1' }], products, {}, false), 'Because you added Red Mug');
  });

  test('carts are followed by quantity: a removal takes back as many units as it says, all without one', () => {
    const add = (t: number, quantity?: number): StoredEvent => ({ t, type: 'add_to_cart', itemId: 'm1', ...(quantity ? { quantity } : {}) });
    const remove = (t: number, quantity?: number): StoredEvent => ({ t, type: 'remove_from_cart', itemId: 'm1', ...(quantity ? { quantity } : {}) });
    const none = 'One of the shop’s current offers';
    const added = 'Because you added Red Mug';
    // Two adds of one, one removal of two: the cart is empty.
    assert.equal(offerReason(redMug, [add(1), add(2), remove(3, 2)], products, {}, false), none);
    // A removal without a quantity removes the line, whatever was added.
    assert.equal(offerReason(redMug, [add(1), add(2, 3), remove(3)], products, {}, false), none);
    // One unit of three taken back: two are still in the cart.
    assert.equal(offerReason(redMug, [add(1, 3), remove(2, 1)], products, {}, false), added);
    // Two adds, one removal of one: the first add is still in the cart.
    assert.equal(offerReason(redMug, [add(1), add(2), remove(3, 1)], products, {}, false), added);
    // What was bought stays bought: a later removal concerns only a later add.
    const bought: StoredEvent = { t: 3, type: 'purchase', itemId: 'm1' };
    assert.equal(offerReason(redMug, [add(1), add(2), bought, remove(4)], products, {}, false), 'Because you bought Red Mug');
    assert.equal(offerReason(redMug, [add(1), bought, add(4), remove(5)], products, {}, false), 'Because you bought Red Mug');
    assert.equal(offerReason(redMug, [add(1), bought, add(4), add(5), remove(6, 1)], products, {}, false), added);
  });

  test('every reason that names a product names one the shopper really touched', () => {
    const catalog: OfferCatalog = { version: 1, issuedAt: 0, currency: 'GBP', offers: [mugs, { ...mugs, id: 'bags', scope: { kind: 'categories', categories: ['bag'] } }] };
    const events: StoredEvent[] = [
      { t: 1, type: 'view', itemId: 'b1' },
      { t: 2, type: 'purchase', itemId: 'm2' },
    ];
    // Products given as the plain item list (the policy indexes them itself).
    const shown = chooseOffers({ catalog, products: products.items, events, affinity: { m1: 0.5, b1: 0.4 } }, { k: 2, context: { now: 10 } });
    assert.deepEqual(shown.map((s) => s.reason), ['Because you bought Blue Mug', 'Because you viewed Jute Bag']);
    // What each reason rests on, for a page that words it in its own language.
    assert.deepEqual(shown.map((s) => s.why), [
      { kind: 'event', itemId: 'm2', event: 'purchase' },
      { kind: 'event', itemId: 'b1', event: 'view' },
    ]);
  });

  test('a product the catalog no longer lists is not cited, though the offer’s scope still names it (stop 32)', () => {
    const withDropped: Offer = { ...mugs, id: 'two', scope: { kind: 'items', itemIds: ['m1', 'gone-84029E'] } };
    const events: StoredEvent[] = [
      { t: 1, type: 'view', itemId: 'm1' },
      { t: 2, type: 'purchase', itemId: 'gone-84029E' },
    ];
    assert.deepEqual(offerWhy(withDropped, events, products, {}, false), { kind: 'event', itemId: 'm1', event: 'view' });
    assert.equal(offerReason(withDropped, events.slice(1), products, {}, false), 'One of the shop’s current offers');
    // Nor as the product on screen or in the cart.
    assert.deepEqual(offerWhy(withDropped, [], products, { itemId: 'gone-84029E', cart: [{ itemId: 'gone-84029E' }] }, false), { kind: 'shop' });
  });

  test('each reason has the structured facts it is worded from, and the text follows them', () => {
    const cases: Array<[ReturnType<typeof offerWhy>, string, Parameters<typeof offerWhy>]> = [
      [{ kind: 'event', itemId: 'm1', event: 'rating' }, 'Because you rated Red Mug', [redMug, [{ t: 1, type: 'rating', itemId: 'm1', value: 5 }], products, {}, false]],
      [{ kind: 'event', itemId: 'm1', event: 'search' }, 'Because you searched for and opened Red Mug', [redMug, [{ t: 1, type: 'search', query: 'mug', itemId: 'm1' }], products, {}, false]],
      [{ kind: 'on-screen', itemId: 'm1' }, 'For the Red Mug you are looking at', [redMug, [], products, { itemId: 'm1' }, false]],
      [{ kind: 'in-cart', itemId: 'm1' }, 'For the Red Mug in your cart', [redMug, [], products, { cart: [{ itemId: 'm1' }] }, false]],
      [{ kind: 'same-category', itemId: 'm2', event: 'add_to_cart' }, 'Like the Blue Mug you added', [redMug, [{ t: 1, type: 'add_to_cart', itemId: 'm2' }], products, {}, false]],
      [{ kind: 'shop' }, 'One of the shop’s current offers', [redMug, [{ t: 1, type: 'view', itemId: 'b1' }], products, {}, false]],
      [{ kind: 'explore' }, 'Something new to try', [redMug, [], products, {}, true]],
    ];
    for (const [why, text, args] of cases) {
      assert.deepEqual(offerWhy(...args), why, text);
      assert.equal(offerReason(...args), text);
    }
    // An add taken back is not cited in the structured form either.
    const takenBack: StoredEvent[] = [
      { t: 1, type: 'add_to_cart', itemId: 'm1' },
      { t: 2, type: 'remove_from_cart', itemId: 'm1' },
    ];
    assert.deepEqual(offerWhy(redMug, takenBack, products, {}, false), { kind: 'shop' });
  });

  test('an offer on everything cites no product, not the last one viewed nor the one on screen (demo review, stop 33)', () => {
    const everything: Offer = { ...mugs, id: 'all', title: '£2 off orders over £20', scope: { kind: 'all' } };
    const events: StoredEvent[] = [{ t: 1, type: 'view', itemId: 'b1' }];
    assert.deepEqual(offerWhy(everything, events, products, { itemId: 'm1', cart: [{ itemId: 'm2' }] }, false), { kind: 'shop' });
    assert.equal(offerReason(everything, events, products, { itemId: 'm1' }, false), 'One of the shop’s current offers');
    assert.deepEqual(offerWhy(everything, events, products, {}, true), { kind: 'explore' });
  });

  test('an item never touched is not claimed: falls back to the page, the cart, or the same category', () => {
    assert.equal(offerReason(redMug, [], products, { itemId: 'm1' }, false), 'For the Red Mug you are looking at');
    assert.equal(offerReason(redMug, [], products, { cart: [{ itemId: 'm1' }] }, false), 'For the Red Mug in your cart');
    // The first cart line in scope and listed in the catalog, after those that are not.
    assert.deepEqual(offerWhy(mugs, [], products, { cart: [{ itemId: 'b1' }, { itemId: 'gone' }, { itemId: 'm2' }, { itemId: 'm1' }] }, false), { kind: 'in-cart', itemId: 'm2' });
    assert.equal(offerReason(redMug, [{ t: 1, type: 'purchase', itemId: 'm2' }], products, {}, false), 'Like the Blue Mug you bought');
  });

  test('with no related event the reason is a plain statement, not an invented history', () => {
    const events: StoredEvent[] = [{ t: 1, type: 'view', itemId: 'b1' }];
    assert.equal(offerReason(mugs, events, products, {}, false), 'One of the shop’s current offers');
    assert.equal(offerReason(mugs, events, products, {}, true), 'Something new to try');
  });
});
