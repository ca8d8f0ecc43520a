import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { foldIntoLedger, ledgerKeeps, readLedger, SHOWING_GAP_MS } from '../../src/events/offer-ledger.js';
import { audience, coolDown, ELIGIBILITY_RULES, impressionCap, minimumBasket, redemptionCap, validityWindow, whyIneligible, type EligibilityContext } from '../../src/offers/eligibility.js';
import { isReturningShopper, offerHistory } from '../../src/offers/offer-history.js';
import type { Offer } from '../../src/offers/types.js';
import type { StoredEvent } from '../../src/types.js';

const HOUR = 3_600_000;
const base: Offer = { id: 'o', title: 'O', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'all' } };
const ctx = (over: Partial<EligibilityContext> = {}): EligibilityContext => ({ now: 1_000 * HOUR, history: new Map(), returning: false, ...over });
const historyOf = (events: Array<[number, 'offer_impression' | 'offer_redeemed']>): EligibilityContext['history'] =>
  offerHistory(events.map(([t, type]) => ({ t, type, offerId: 'o' })));

describe('eligibility rules', () => {
  test('validityWindow: before validFrom, inside, and at/after validUntil', () => {
    const offer = { ...base, validFrom: 10 * HOUR, validUntil: 20 * HOUR };
    assert.equal(validityWindow(offer, ctx({ now: 9 * HOUR })), 'not yet valid');
    assert.equal(validityWindow(offer, ctx({ now: 10 * HOUR })), null);
    assert.equal(validityWindow(offer, ctx({ now: 20 * HOUR - 1 })), null);
    assert.equal(validityWindow(offer, ctx({ now: 20 * HOUR })), 'expired');
    assert.equal(validityWindow(base, ctx()), null, 'an open window is always valid');
  });

  test('audience: new-only, returning-only and all', () => {
    assert.equal(audience({ ...base, audience: 'new' }, ctx({ returning: false })), null);
    assert.equal(audience({ ...base, audience: 'new' }, ctx({ returning: true })), 'only for new shoppers');
    assert.equal(audience({ ...base, audience: 'returning' }, ctx({ returning: false })), 'only for returning shoppers');
    assert.equal(audience({ ...base, audience: 'returning' }, ctx({ returning: true })), null);
    assert.equal(audience({ ...base, audience: 'all' }, ctx({ returning: true })), null);
  });

  test('returning means the device saw a purchase', () => {
    const view: StoredEvent = { t: 1, type: 'view', itemId: 'a' };
    assert.equal(isReturningShopper([view]), false);
    assert.equal(isReturningShopper([view, { t: 2, type: 'purchase', itemId: 'a' }]), true);
  });

  test('minimumBasket: checked against a known cart, open when the cart is unknown', () => {
    const offer = { ...base, minBasket: 20 };
    assert.equal(minimumBasket(offer, ctx({ cartValue: 19.99 })), 'cart below the minimum basket of 20');
    assert.equal(minimumBasket(offer, ctx({ cartValue: 20 })), null);
    assert.equal(minimumBasket(offer, ctx()), null);
  });

  test('redemptionCap: hidden once redeemed maxRedemptions times', () => {
    const offer = { ...base, limits: { maxRedemptions: 2 } };
    assert.equal(redemptionCap(offer, ctx({ history: historyOf([[1, 'offer_redeemed']]) })), null);
    assert.equal(redemptionCap(offer, ctx({ history: historyOf([[1, 'offer_redeemed'], [2, 'offer_redeemed']]) })), 'already redeemed 2 times');
  });

  test('impressionCap: hidden once shown maxImpressions times', () => {
    const offer = { ...base, limits: { maxImpressions: 3 } };
    const shown = (n: number) => historyOf(Array.from({ length: n }, (_, i) => [i, 'offer_impression'] as [number, 'offer_impression']));
    assert.equal(impressionCap(offer, ctx({ history: shown(2) })), null);
    assert.equal(impressionCap(offer, ctx({ history: shown(3) })), 'already shown 3 times');
  });

  test('coolDown: hidden for coolDownHours after the last redemption, then back', () => {
    const offer = { ...base, limits: { coolDownHours: 24 } };
    const history = historyOf([[100 * HOUR, 'offer_redeemed'], [50 * HOUR, 'offer_redeemed']]);
    assert.match(coolDown(offer, ctx({ now: 123 * HOUR, history })) ?? '', /^cooling down until /);
    assert.equal(coolDown(offer, ctx({ now: 124 * HOUR, history })), null);
    assert.equal(coolDown(offer, ctx({ now: 101 * HOUR, history: historyOf([[100 * HOUR, 'offer_impression']]) })), null, 'impressions alone do not start a cool-down');
  });

  test('whyIneligible names the first failing rule, null when all pass', () => {
    const offer = { ...base, audience: 'new' as const, limits: { maxImpressions: 1 } };
    assert.deepEqual(whyIneligible(offer, ctx({ returning: true })), { rule: 'audience', why: 'only for new shoppers' });
    assert.deepEqual(whyIneligible(offer, ctx({ history: historyOf([[1, 'offer_impression']]) })), { rule: 'impressionCap', why: 'already shown 1 times' });
    assert.equal(whyIneligible(offer, ctx()), null);
    // The rules run in the documented order (docs/OFFERS.md, "Policy"): an expired offer for new
    // shoppers, shown to a returning one, is named expired.
    assert.deepEqual(Object.keys(ELIGIBILITY_RULES), ['validityWindow', 'audience', 'minimumBasket', 'redemptionCap', 'impressionCap', 'coolDown']);
    assert.deepEqual(whyIneligible({ ...offer, validUntil: 10 }, ctx({ returning: true })), { rule: 'validityWindow', why: 'expired' });
  });

  test('offerHistory counts per offer and keeps the latest times', () => {
    const h = offerHistory([
      { t: 5, type: 'offer_impression', offerId: 'a' },
      { t: 3, type: 'offer_impression', offerId: 'a' },
      { t: 6, type: 'offer_redeemed', offerId: 'a' },
      { t: 7, type: 'offer_impression', offerId: 'b' },
      { t: 8, type: 'view', itemId: 'x' },
    ]);
    // Impressions minutes apart are one showing (one visit).
    assert.deepEqual(h.get('a'), { impressions: 2, showings: 1, redemptions: 1, lastImpressionAt: 5, lastRedeemedAt: 6 });
    assert.deepEqual(h.get('b'), { impressions: 1, showings: 1, redemptions: 0, lastImpressionAt: 7 });
    assert.equal(h.size, 2);
  });

  test('offerHistory counts a showing per visit: an impression 30 minutes or more after the previous one starts a new one, in time order whatever the input order', () => {
    const MIN = 60_000;
    const at = (t: number): StoredEvent => ({ t, type: 'offer_impression', offerId: 'a' });
    // Visits at 0–20 min, 60 min, and 100–129 min (each impression within 30 min of the one before).
    const h = offerHistory([at(60 * MIN), at(0), at(10 * MIN), at(20 * MIN), at(100 * MIN), at(115 * MIN), at(129 * MIN)]);
    assert.deepEqual(h.get('a'), { impressions: 7, showings: 3, redemptions: 0, lastImpressionAt: 129 * MIN });
    // A ledger written before showings existed counts each of its impressions as one; later events add to it.
    const old = offerHistory([at(10 * 60 * MIN)], { offers: [{ offerId: 'a', impressions: 4, redemptions: 0, lastImpressionAt: 9 * 60 * MIN }] });
    assert.deepEqual(old.get('a'), { impressions: 5, showings: 5, redemptions: 0, lastImpressionAt: 10 * 60 * MIN });
    const near = offerHistory([at(9 * 60 * MIN + 5 * MIN)], { offers: [{ offerId: 'a', impressions: 4, showings: 2, redemptions: 0, lastImpressionAt: 9 * 60 * MIN }] });
    assert.equal(near.get('a')!.showings, 2, 'within 30 minutes of the ledger\'s last impression: the same visit');
  });

  test('a showing starts at an impression exactly SHOWING_GAP_MS after the one before', () => {
    const at = (t: number): StoredEvent => ({ t, type: 'offer_impression', offerId: 'a' });
    assert.equal(offerHistory([at(0), at(SHOWING_GAP_MS - 1)]).get('a')!.showings, 1);
    assert.equal(offerHistory([at(0), at(SHOWING_GAP_MS)]).get('a')!.showings, 2);
  });
});

describe('offer ledger (what retention removed)', () => {
  const MIN = 60_000;
  const imp = (t: number, offerId: unknown = 'a'): StoredEvent => ({ t, type: 'offer_impression', offerId: offerId as string });
  const red = (t: number): StoredEvent => ({ t, type: 'offer_redeemed', offerId: 'a' });

  test('foldIntoLedger counts removed events in time order, whatever the order given', () => {
    // Visits at 0–10 min and 60 min: two showings, however the removed events come.
    const ledger = foldIntoLedger(undefined, [imp(60 * MIN), imp(0), imp(10 * MIN), red(20 * MIN)]);
    assert.deepEqual(ledger, { offers: [{ offerId: 'a', impressions: 3, showings: 2, redemptions: 1, lastImpressionAt: 60 * MIN, lastRedeemedAt: 20 * MIN }] });
  });

  test('foldIntoLedger keeps the latest times: events folded later may be older than what the ledger holds', () => {
    const stored = { offers: [{ offerId: 'a', impressions: 1, showings: 1, redemptions: 1, lastImpressionAt: 100 * MIN, lastRedeemedAt: 100 * MIN }], lastPurchaseAt: 100 * MIN };
    const folded = foldIntoLedger(stored, [imp(10 * MIN), red(10 * MIN), { t: 10 * MIN, type: 'purchase', itemId: 'x' }]);
    assert.deepEqual(folded, { offers: [{ offerId: 'a', impressions: 2, showings: 1, redemptions: 2, lastImpressionAt: 100 * MIN, lastRedeemedAt: 100 * MIN }], lastPurchaseAt: 100 * MIN });
  });

  test('foldIntoLedger: a ledger written before showings existed counts each of its impressions as one', () => {
    const legacy = { offers: [{ offerId: 'a', impressions: 4, redemptions: 0, lastImpressionAt: 0 }] };
    assert.equal(foldIntoLedger(legacy, [imp(60 * MIN)]).offers[0]!.showings, 5);
  });

  test('foldIntoLedger returns a new ledger and leaves the stored one as it was', () => {
    const stored = { offers: [{ offerId: 'a', impressions: 1, showings: 1, redemptions: 0, lastImpressionAt: 0 }] };
    const copy = structuredClone(stored);
    const folded = foldIntoLedger(stored, [imp(60 * MIN), red(61 * MIN)]);
    assert.deepEqual(stored, copy);
    assert.equal(folded.offers[0]!.impressions, 2);
  });

  test('only offer events with a string offerId, and purchases, are kept', () => {
    assert.equal(ledgerKeeps(imp(1)), true);
    assert.equal(ledgerKeeps({ t: 1, type: 'purchase', itemId: 'x' }), true);
    assert.equal(ledgerKeeps(imp(1, 5)), false);
    assert.equal(ledgerKeeps({ t: 1, type: 'view', itemId: 'x' }), false);
    assert.deepEqual(foldIntoLedger(undefined, [imp(1, 5), { t: 2, type: 'offer_redeemed' }]), { offers: [] });
  });

  test('readLedger leaves out an entry whose showings are not a count', () => {
    const entry = { offerId: 'a', impressions: 2, redemptions: 0 };
    const read = readLedger({ offers: [{ ...entry, showings: -1 }, { ...entry, offerId: 'b', showings: 'x' }, { ...entry, offerId: 'c', showings: 1 }, { ...entry, offerId: 'd' }] });
    assert.deepEqual(read!.offers.map((o) => o.offerId), ['c', 'd']);
  });
});
