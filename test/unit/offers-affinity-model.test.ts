import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Random } from '../../src/model/random.js';
import { affinityFeatureRows, affinityProbabilities, EMPTY_OFFER_STATS, predictAffinity, snapshotGlobals, SNAPSHOT_FEATURES, type AffinitySnapshot, type HistoryBasket } from '../../src/offers/affinity-model.js';
import { LearnedAffinity } from '../../src/offers/eval/learned-affinity.js';
import { indexProducts } from '../../src/offers/product-index.js';
import { DEFAULT_BASKET_GAP_MS, offerScopeLookup, purchaseBaskets } from '../../src/offers/purchase-baskets.js';
import type { Offer } from '../../src/offers/types.js';
import type { StoredEvent } from '../../src/types.js';

const DAY = 86_400_000;
const MIN = 60_000;
const OFFERS = ['mug', 'bag', 'candle', 'card', 'lamp'];
const b = (t: number, offers: string[]): HistoryBasket => ({ t, offers: new Set(offers), items: new Set(offers.map((o) => `${o}-item`)) });

/** A stream of shoppers with their own repeat products plus popular cards; lamps are never bought. */
function stream(seed: number, days: number): Array<{ shopper: string; basket: HistoryBasket }> {
  const rng = new Random(seed);
  const out: Array<{ shopper: string; basket: HistoryBasket }> = [];
  for (let day = 0; day < days; day++) {
    for (let s = 0; s < 12; s++) {
      if (rng.next() < 0.4) continue;
      const own = ['mug', 'bag', 'candle'][s % 3]!;
      const offers = rng.next() < 0.7 ? [own] : [];
      if (rng.next() < 0.4) offers.push('card');
      out.push({ shopper: `s${s}`, basket: b(day * DAY + s * 3_600_000 + Math.floor(rng.next() * 1000), offers) });
    }
  }
  return out;
}

/** Predict-then-learn over the stream; calls `check` before some baskets with the model and that shopper's history. */
function replay(model: LearnedAffinity, baskets: ReturnType<typeof stream>, check?: (history: HistoryBasket[], now: number) => void): void {
  const histories = new Map<string, HistoryBasket[]>();
  baskets.forEach(({ shopper, basket }, i) => {
    const history = histories.get(shopper) ?? [];
    if (check && i % 37 === 0) check(history, basket.t - 1);
    model.learn(model.predict(history, basket.t - 1), history, basket, shopper);
    histories.set(shopper, [...history, basket]);
  });
}
/** The stream has 12 shoppers, 4 per own product: a threshold of 3 customers publishes every bought offer. */
const FEW = { minCustomers: 3 };

describe('learned affinity: device side (snapshot + predictAffinity)', () => {
  test('predictAffinity on a JSON round-tripped snapshot reproduces the prediction from that (rounded) snapshot, bit for bit, close to the learner\'s own', () => {
    const model = new LearnedAffinity(OFFERS, FEW);
    let checks = 0;
    let worst = 0;
    replay(model, stream(3, 60), (history, now) => {
      const shop = model.predict(history, now);
      const published = model.snapshot();
      const snapshot = JSON.parse(JSON.stringify(published)) as AffinitySnapshot;
      assert.deepEqual(snapshot, published, 'JSON keeps every published number');
      const device = predictAffinity(snapshot, history, now);
      assert.deepEqual([...device.keys()], Object.keys(snapshot.offers));
      // The device computes exactly what the published snapshot says: one implementation of the rows.
      const all = predictAffinity(snapshot, history, now, OFFERS);
      const rows = affinityFeatureRows(snapshot.features, snapshotGlobals(snapshot, OFFERS), history, now);
      const fromSnapshot = affinityProbabilities(snapshot.weights, rows);
      OFFERS.forEach((id, o) => {
        assert.equal(all.get(id), fromSnapshot[o], `offer ${id} at ${now}`);
        if (device.has(id)) assert.equal(device.get(id), all.get(id));
        // Not the learner's own numbers (the snapshot is rounded, rare offers left out), but close.
        if (Object.hasOwn(snapshot.offers, id)) worst = Math.max(worst, Math.abs(all.get(id)! - shop.p[o]!));
      });
      checks++;
    });
    assert.ok(checks > 10, `${checks} states compared`);
    assert.ok(worst < 0.03, `largest difference from the learner ${worst}`);
    // …and the model did learn something, so the comparison is not between two untrained models.
    const final = model.snapshot();
    assert.ok(final.weights.filter((w, j) => j > 1 && w !== 0).length > 5, `weights ${final.weights}`);
    assert.ok(final.offers.card!.popularity > 0.2 && !Object.hasOwn(final.offers, 'lamp'));
  });

  test('the snapshot is plain JSON: default features, intercept + one weight each, per-offer shares in [0, 1]', () => {
    const model = new LearnedAffinity(OFFERS, FEW);
    replay(model, stream(5, 20));
    const s = model.snapshot();
    assert.deepEqual(s.features, SNAPSHOT_FEATURES);
    assert.equal(s.weights.length, s.features.length + 1);
    // The lamp, never bought, is left out (the device scores it as never bought).
    assert.deepEqual(Object.keys(s.offers), OFFERS.filter((o) => o !== 'lamp'));
    for (const st of Object.values(s.offers)) {
      for (const v of [st.popularity, st.recentPopularity, st.repeatRate]) assert.ok(v >= 0 && v <= 1, String(v));
    }
    assert.deepEqual(JSON.parse(JSON.stringify(s)), s);
  });

  test('an offer missing from the snapshot is scored as never bought by anyone', () => {
    const model = new LearnedAffinity([...OFFERS, 'new-offer'], FEW);
    replay(model, stream(7, 30));
    const published = model.snapshot();
    assert.ok(!Object.hasOwn(published.offers, 'new-offer') && !Object.hasOwn(published.offers, 'lamp'), 'never bought: not published');
    const explicit: AffinitySnapshot = { ...published, offers: { ...published.offers, 'new-offer': { ...EMPTY_OFFER_STATS } } };
    const history = [b(40 * DAY, ['mug']), b(41 * DAY, ['mug', 'card'])];
    const p = predictAffinity(published, history, 42 * DAY, [...OFFERS, 'new-offer']);
    assert.equal(p.get('new-offer'), predictAffinity(explicit, history, 42 * DAY, [...OFFERS, 'new-offer']).get('new-offer'));
    assert.equal(p.get('new-offer'), p.get('lamp'), 'both never bought: same features, same P');
    // What the learner itself predicts for an offer nobody bought, but for the rounded weights.
    assert.ok(Math.abs(p.get('new-offer')! - model.predict(history, 42 * DAY).p[OFFERS.length]!) < 1e-3);
  });

  test('a model with the item → offer table features cannot be published', () => {
    const model = new LearnedAffinity(OFFERS, { features: ['popularity', 'transition'] });
    assert.throws(() => model.snapshot(), /transition/);
  });

  test('a repeat buyer of mugs gets a higher P(mug) on the device than a shopper who never bought one', () => {
    const model = new LearnedAffinity(OFFERS, FEW);
    replay(model, stream(11, 90));
    const snapshot = model.snapshot();
    const now = 100 * DAY;
    const mugs = predictAffinity(snapshot, [b(91 * DAY, ['mug']), b(95 * DAY, ['mug']), b(98 * DAY, ['mug'])], now);
    const cards = predictAffinity(snapshot, [b(91 * DAY, ['card']), b(95 * DAY, ['card']), b(98 * DAY, ['card'])], now);
    assert.ok(mugs.get('mug')! > 3 * cards.get('mug')!, `${mugs.get('mug')} vs ${cards.get('mug')}`);
    assert.ok(mugs.get('mug')! > mugs.get('card')!, 'own repeat beats the popular offer');
  });
});

describe('purchaseBaskets: the device groups purchase events into baskets', () => {
  const products = indexProducts([
    { id: 'm1', title: 'Red Mug', category: 'mug' },
    { id: 'm2', title: 'Blue Mug', category: 'mug' },
    { id: 'b1', title: 'Jute Bag', category: 'bag' },
    { id: 'c1', title: 'Card', category: 'card' },
  ]);
  const offer = (id: string, scope: Offer['scope']): Offer => ({ id, title: id, discount: { kind: 'percent', percent: 10 }, scope });
  const offers = [offer('mugs', { kind: 'categories', categories: ['mug'] }), offer('bag', { kind: 'items', itemIds: ['b1', 'gone'] }), offer('all', { kind: 'all' })];
  const lookup = offerScopeLookup(offers, products);
  const buy = (t: number, itemId: string): StoredEvent => ({ t, type: 'purchase', itemId });

  test('purchases within 30 minutes of the previous one are one basket (chained); a longer gap starts a new one', () => {
    assert.equal(DEFAULT_BASKET_GAP_MS, 30 * MIN);
    const t0 = 10 * DAY;
    const events: StoredEvent[] = [
      buy(t0, 'm1'),
      { t: t0 + MIN, type: 'view', itemId: 'c1' }, // not a purchase: ignored
      buy(t0 + 20 * MIN, 'b1'),
      buy(t0 + 45 * MIN, 'c1'), // 25 min after the previous purchase: same basket
      buy(t0 + 76 * MIN, 'm2'), // 31 min: a new basket
      buy(t0 + 2 * DAY, 'gone'), // not in the product catalog, but named by the bag offer's items scope
    ];
    const got = purchaseBaskets(events, lookup);
    assert.deepEqual(
      got.map((x) => ({ t: x.t, offers: [...x.offers].sort(), items: [...x.items!].sort() })),
      [
        { t: t0 + 45 * MIN, offers: ['all', 'bag', 'mugs'], items: ['b1', 'c1', 'm1'] },
        { t: t0 + 76 * MIN, offers: ['all', 'mugs'], items: ['m2'] },
        { t: t0 + 2 * DAY, offers: ['all', 'bag'], items: ['gone'] },
      ],
    );
  });

  test('unsorted events are sorted; purchases after `now` are left out; gap 0 groups equal timestamps only', () => {
    const events = [buy(5 * DAY, 'b1'), buy(DAY, 'm1'), buy(DAY, 'c1'), buy(DAY + 1, 'm2')];
    assert.deepEqual(purchaseBaskets(events, lookup, { now: 2 * DAY }).map((x) => [x.t, [...x.items!]]), [[DAY + 1, ['m1', 'c1', 'm2']]]);
    assert.deepEqual(purchaseBaskets(events, lookup, { gapMs: 0 }).map((x) => [x.t, [...x.items!]]), [
      [DAY, ['m1', 'c1']],
      [DAY + 1, ['m2']],
      [5 * DAY, ['b1']],
    ]);
    assert.deepEqual(purchaseBaskets([], lookup), []);
  });
});
