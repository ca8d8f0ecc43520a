import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Random } from '../../src/model/random.js';
import { AFFINITY_FEATURES, DEFAULT_AFFINITY_FEATURES, DEFAULT_MIN_CUSTOMERS, LearnedAffinity, SHARE_DIGITS, WEIGHT_DIGITS, type HistoryBasket } from '../../src/offers/eval/learned-affinity.js';

const DAY = 86_400_000;
const OFFERS = ['mug', 'bag', 'candle', 'card'];
const b = (day: number, offers: string[], items: string[] = offers): HistoryBasket => ({ t: day * DAY, offers: new Set(offers), items: new Set(items) });

/** Replays shoppers' baskets in time order through the model: predict, then learn. */
function replay(model: LearnedAffinity, baskets: Array<{ shopper: string; basket: HistoryBasket }>, withIds = true): Map<string, HistoryBasket[]> {
  const histories = new Map<string, HistoryBasket[]>();
  for (const { shopper, basket } of baskets) {
    const history = histories.get(shopper) ?? [];
    const pred = model.predict(history, basket.t - 1);
    model.learn(pred, history, basket, withIds ? shopper : undefined);
    histories.set(shopper, [...history, basket]);
  }
  return histories;
}
const p = (model: LearnedAffinity, history: HistoryBasket[], now: number, offer: string): number => model.predict(history, now).p[OFFERS.indexOf(offer)]!;

describe('LearnedAffinity', () => {
  test('before any data it predicts popularity (zero history → the smallest probability), all in (0, 1)', () => {
    const model = new LearnedAffinity(OFFERS);
    const pred = model.predict([], 0);
    assert.equal(pred.p.length, OFFERS.length);
    assert.equal(pred.x.length, OFFERS.length);
    assert.equal(pred.x[0]!.length, DEFAULT_AFFINITY_FEATURES.length + 1);
    assert.deepEqual(model.features, DEFAULT_AFFINITY_FEATURES);
    assert.ok(!model.features.includes('transition') && !model.features.includes('coPurchase'));
    assert.equal(new LearnedAffinity(OFFERS, { features: AFFINITY_FEATURES }).weights.length, AFFINITY_FEATURES.length + 1);
    for (const v of pred.p) assert.ok(v > 0 && v < 0.01, `p = ${v}`);
  });

  test('learns that shoppers repeat what they bought: a mug buyer gets a higher P(mug) than a bag buyer, and vice versa', () => {
    const rng = new Random(4);
    const model = new LearnedAffinity(OFFERS);
    const stream: Array<{ shopper: string; basket: HistoryBasket }> = [];
    // Half the shoppers are mug people, half bag people; each basket has their product 80% of the time.
    for (let day = 0; day < 120; day++) {
      for (let s = 0; s < 10; s++) {
        const own = s % 2 === 0 ? 'mug' : 'bag';
        const offers = rng.next() < 0.8 ? [own] : [];
        if (rng.next() < 0.3) offers.push('card');
        stream.push({ shopper: `s${s}`, basket: b(day, offers) });
      }
    }
    replay(model, stream);
    const mugPerson = [b(200, ['mug']), b(201, ['mug', 'card'])];
    const bagPerson = [b(200, ['bag']), b(201, ['bag'])];
    const now = 202 * DAY;
    assert.ok(p(model, mugPerson, now, 'mug') > 2 * p(model, bagPerson, now, 'mug'));
    assert.ok(p(model, bagPerson, now, 'bag') > 2 * p(model, mugPerson, now, 'bag'));
    // Calibrated on this stream: a shopper's own product comes back 80% of the time.
    assert.ok(Math.abs(p(model, mugPerson, now, 'mug') - 0.8) < 0.15, `P(mug) = ${p(model, mugPerson, now, 'mug')}`);
    // Nobody ever bought candles: a candle offer stays unlikely for everyone.
    assert.ok(p(model, mugPerson, now, 'candle') < 0.05);
  });

  test('item → offer transitions: an item in the last basket raises the offer other shoppers bought next', () => {
    const model = new LearnedAffinity(OFFERS, { features: ['popularity', 'transition'], minItemCount: 1 });
    const stream: Array<{ shopper: string; basket: HistoryBasket }> = [];
    // Whoever buys teapot X (no offer of its own) buys a candle in their next basket; buyers of Y buy a card.
    for (let s = 0; s < 40; s++) {
      const first = s % 2 === 0 ? 'teapot-x' : 'teapot-y';
      stream.push({ shopper: `s${s}`, basket: b(s, [], [first]) });
      stream.push({ shopper: `s${s}`, basket: b(s + 1, [first === 'teapot-x' ? 'candle' : 'card']) });
    }
    replay(model, stream);
    const boughtX = [b(100, [], ['teapot-x'])];
    const boughtY = [b(100, [], ['teapot-y'])];
    assert.ok(p(model, boughtX, 101 * DAY, 'candle') > p(model, boughtY, 101 * DAY, 'candle') + 0.2);
    assert.ok(p(model, boughtY, 101 * DAY, 'card') > p(model, boughtX, 101 * DAY, 'card') + 0.2);
  });

  test('a feature subset has one weight per feature plus the intercept; unknown names are not features', () => {
    const model = new LearnedAffinity(OFFERS, { features: ['timesBought', 'popularity'] });
    assert.deepEqual(model.features, ['popularity', 'timesBought']); // always in AFFINITY_FEATURES order
    assert.equal(model.weights.length, 3);
    const pred = model.predict([b(1, ['mug']), b(2, ['mug'])], 3 * DAY);
    assert.deepEqual([...pred.x[OFFERS.indexOf('mug')]!].slice(0, 1), [1]);
    assert.ok(Math.abs(pred.x[OFFERS.indexOf('mug')]![2]! - Math.log(3)) < 1e-12); // log(1 + 2 baskets)
    assert.equal(pred.x[OFFERS.indexOf('bag')]![2], 0);
  });

  test('predict does not change the model; only learn does, and only with the basket it is given', () => {
    const model = new LearnedAffinity(OFFERS);
    replay(model, [{ shopper: 'a', basket: b(1, ['mug']) }, { shopper: 'b', basket: b(2, ['bag']) }]);
    const history = [b(1, ['mug'])];
    const first = model.predict(history, 5 * DAY).p;
    const again = model.predict(history, 5 * DAY).p;
    assert.deepEqual([...again], [...first]);
    const weights = [...model.weights];
    model.learn(model.predict(history, 5 * DAY), history, b(5, ['mug']));
    assert.notDeepEqual([...model.weights], weights);
    assert.ok(model.predict(history, 6 * DAY).p[0]! > first[0]!, 'a repeat purchase raises P(mug) for a mug buyer');
  });

  describe('the published snapshot (privacy)', () => {
    const SHOP = ['mug', 'bag', 'candle', 'card', 'lamp', 'vase', 'tray', 'clock'];
    /** 60 shoppers over 200 days; the lamp is bought by shopper s0 alone, often. */
    function shopStream(seed: number): Array<{ shopper: string; basket: HistoryBasket }> {
      const rng = new Random(seed);
      const out: Array<{ shopper: string; basket: HistoryBasket }> = [];
      for (let day = 0; day < 200; day++) {
        for (let s = 0; s < 60; s++) {
          if (rng.next() < 0.7) continue;
          const offers = SHOP.filter((o, i) => o !== 'lamp' && rng.next() < 0.08 + 0.05 * i);
          if (s === 0 && rng.next() < 0.5) offers.push('lamp');
          out.push({ shopper: `s${s}`, basket: { t: day * DAY + s * 60_000, offers: new Set(offers) } });
        }
      }
      return out;
    }
    const onGrid = (v: number, digits: number) => v === 0 || v === Number(v.toPrecision(digits));

    test('an offer bought by fewer than minCustomers distinct customers (default 10) publishes no statistics', () => {
      assert.equal(DEFAULT_MIN_CUSTOMERS, 10);
      const model = new LearnedAffinity(SHOP);
      replay(model, shopStream(1));
      assert.equal(model.customerCounts()[SHOP.indexOf('lamp')], 1);
      const s = model.snapshot();
      assert.ok(!Object.hasOwn(s.offers, 'lamp'), 'one customer: left out, though bought in many baskets');
      assert.ok(Object.hasOwn(s.offers, 'mug') && s.offers.mug!.popularity > 0);
      // The learner itself still knows the lamp.
      assert.ok(model.predict([], 201 * DAY).p[SHOP.indexOf('lamp')]! > 0);
      // A higher threshold (learner or snapshot option) leaves out more; without customer ids the learner counts baskets.
      assert.equal(Object.keys(model.snapshot({ minCustomers: 61 }).offers).length, 0);
      const byBasket = new LearnedAffinity(SHOP);
      replay(byBasket, shopStream(1), false);
      assert.ok(Object.hasOwn(byBasket.snapshot().offers, 'lamp'), 'baskets counted: the lamp has many');
      assert.throws(() => new LearnedAffinity(SHOP, { minCustomers: -1 }), RangeError);
    });

    test(`published shares are on a ${SHARE_DIGITS}-significant-digit grid and weights on a ${WEIGHT_DIGITS}-digit one; the learner keeps exact figures`, () => {
      const model = new LearnedAffinity(SHOP);
      replay(model, shopStream(2));
      const s = model.snapshot();
      assert.ok(Object.keys(s.offers).length >= 6);
      for (const [id, st] of Object.entries(s.offers)) {
        for (const v of [st.popularity, st.recentPopularity, st.repeatRate]) assert.ok(onGrid(v, SHARE_DIGITS), `${id}: ${v}`);
      }
      for (const w of s.weights) assert.ok(onGrid(w, WEIGHT_DIGITS), `weight ${w}`);
      assert.ok(s.weights.some((w, j) => w !== model.weights[j]), 'the weights themselves are not rounded');
    });

    test('one more order changes the rounded popularity of few offers (unrounded, it would change every one)', () => {
      const stream = shopStream(3);
      const a = new LearnedAffinity(SHOP);
      const b2 = new LearnedAffinity(SHOP);
      replay(a, stream);
      const extra = { shopper: 's7', basket: { t: 201 * DAY, offers: new Set(['mug', 'card']) } };
      replay(b2, [...stream, extra]);
      const [sa, sb] = [a.snapshot(), b2.snapshot()];
      const changed = Object.keys(sa.offers).filter((id) => sa.offers[id]!.popularity !== sb.offers[id]!.popularity);
      assert.ok(Object.keys(sa.offers).length >= 6);
      assert.ok(changed.length <= 2, `changed: ${changed.join(', ')}`);
      // Offers not in the extra order keep their published popularity.
      for (const id of Object.keys(sa.offers)) if (!extra.basket.offers.has(id)) assert.equal(sb.offers[id]!.popularity, sa.offers[id]!.popularity, id);
    });
  });
});
