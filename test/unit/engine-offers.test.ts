import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { Engine, OFFERS_KEY } from '../../src/engine/engine.js';
import { IdbEventStore, MemoryEventStore } from '../../src/events/store.js';
import { isValidationError, StorageError } from '../../src/errors.js';
import { Random } from '../../src/model/random.js';
import { predictAffinity, type AffinitySnapshot, type HistoryBasket } from '../../src/offers/affinity-model.js';
import { LearnedAffinity } from '../../src/offers/eval/learned-affinity.js';
import { scoreOffers } from '../../src/offers/policy.js';
import { generateOfferKeys, signOfferCatalog, type OfferKeyPair } from '../../src/offers/signing.js';
import type { OfferCatalog, SignedOfferCatalog } from '../../src/offers/types.js';
import { offer } from './engine-helpers.js';
import '../../src/model/tf.js';

const DAY = 86_400_000;
const MIN = 60_000;
const NOW = Date.UTC(2024, 5, 1);
const items = [
  { id: 'p0', title: 'Jumbo Bag', category: 'bag', price: 20 },
  ...Array.from({ length: 5 }, (_, i) => ({ id: `m${i}`, title: `Mug ${i}`, category: 'mug', price: 4 })),
  ...Array.from({ length: 5 }, (_, i) => ({ id: `c${i}`, title: `Candle ${i}`, category: 'candle', price: 5 })),
];
const offers = [offer('bag', { kind: 'items', itemIds: ['p0'] }), offer('mugs', { kind: 'categories', categories: ['mug'] }), offer('candles', { kind: 'categories', categories: ['candle'] })];

/**
 * The shop's learner on a stream where the bag is in most baskets (popular) and mugs/candles are
 * bought by few shoppers, who come back for them: what `offers fit-affinity` would publish.
 */
function shopSnapshot(): AffinitySnapshot {
  const model = new LearnedAffinity(offers.map((o) => o.id));
  const rng = new Random(2);
  const histories = new Map<string, HistoryBasket[]>();
  for (let day = 0; day < 150; day++) {
    for (let s = 0; s < 20; s++) {
      if (rng.next() < 0.5) continue;
      const basket = new Set<string>();
      if (rng.next() < 0.6) basket.add('bag');
      if (s % 5 === 0 && rng.next() < 0.8) basket.add('mugs');
      if (s % 5 === 1 && rng.next() < 0.8) basket.add('candles');
      const history = histories.get(`s${s}`) ?? [];
      const b: HistoryBasket = { t: day * DAY + s * 1000, offers: basket };
      model.learn(model.predict(history, b.t - 1), history, b);
      histories.set(`s${s}`, [...history, b]);
    }
  }
  return model.snapshot();
}

describe('Engine.offers with the shop’s learned affinity', () => {
  let keys: OfferKeyPair;
  let snapshot: AffinitySnapshot;
  before(async () => {
    keys = await generateOfferKeys();
    snapshot = shopSnapshot();
    // The premise: the bag is the merely popular offer.
    assert.ok(snapshot.offers.bag!.popularity > 3 * snapshot.offers.mugs!.popularity, JSON.stringify(snapshot.offers));
  });

  // The store's retention runs on the wall clock; keep every event of this fixed-date test.
  async function engine(catalog: OfferCatalog): Promise<Engine> {
    const e = await Engine.create({ catalog: { items }, backend: 'cpu', autoTrainEvery: 0, store: new MemoryEventStore({ maxEvents: 10_000, maxAgeDays: 36_500 }), now: () => NOW, offers: { publicKey: keys.publicJwk } });
    await e.setOffers(await signOfferCatalog(catalog, keys.privateJwk));
    return e;
  }
  const catalog: () => OfferCatalog = () => ({ version: 1, issuedAt: 0, currency: 'GBP', offers, affinity: snapshot });

  it('setOffers names the offers that can never be shown: no price basis, or a discount that costs the margin', async () => {
    const e = await Engine.create({ catalog: { items: [...items, { id: 'u0', title: 'Unpriced Lamp', category: 'lamp' }] }, backend: 'cpu', autoTrainEvery: 0, store: new MemoryEventStore({ maxEvents: 100, maxAgeDays: 36_500 }), now: () => NOW, offers: { publicKey: keys.publicJwk } });
    try {
      const lamp: OfferCatalog['offers'][number] = { id: 'lamps', title: '10% off lamps', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'categories', categories: ['lamp'] } };
      const lossy: OfferCatalog['offers'][number] = { ...offer('mugs', { kind: 'categories', categories: ['mug'] }), id: 'half', discount: { kind: 'percent', percent: 50 } };
      const result = await e.setOffers(await signOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [offers[0]!, lamp, lossy] }, keys.privateJwk));
      assert.equal(result.offers, 3);
      assert.deepEqual(result.neverShown.map((n) => n.offerId), ['lamps', 'half']);
      assert.match(result.neverShown[0]!.why, /no price/);
      assert.match(result.neverShown[1]!.why, /at least the margin/);
      // Installed all the same; the policy indeed never shows them.
      assert.deepEqual((await e.offers({ k: 3, exploration: 1, seed: 3 })).map((o) => o.offerId), ['bag']);
    } finally {
      await e.close();
    }
  });

  it('prefers the offer whose scope the shopper bought repeatedly over the merely popular one; a new shopper gets the popular one', async () => {
    const e = await engine(catalog());
    const fresh = await e.offers({ k: 1, exploration: 0 });
    assert.deepEqual(fresh.map((o) => o.offerId), ['bag'], 'no purchases yet: popularity decides');

    // Three trips, a week apart; the second checkout tracks three lines within five minutes.
    e.enqueue([
      { type: 'purchase', itemId: 'm1', t: NOW - 20 * DAY },
      { type: 'purchase', itemId: 'm2', t: NOW - 13 * DAY },
      { type: 'purchase', itemId: 'm3', t: NOW - 13 * DAY + 2 * MIN },
      { type: 'purchase', itemId: 'c1', t: NOW - 13 * DAY + 5 * MIN },
      { type: 'purchase', itemId: 'm4', t: NOW - 6 * DAY },
      { type: 'view', itemId: 'p0', t: NOW - DAY },
    ]);
    const shown = await e.offers({ k: 3, exploration: 0 });
    // Mugs (three trips) first, candles (once) next, the popular bag they never bought last.
    assert.deepEqual(shown.map((o) => o.offerId), ['mugs', 'candles', 'bag']);
    assert.match(shown[0]!.reason, /^Because you bought Mug 4/);

    // What the engine computed is exactly predictAffinity on the three baskets (30-minute grouping).
    const baskets: HistoryBasket[] = [
      { t: NOW - 20 * DAY, offers: new Set(['mugs']) },
      { t: NOW - 13 * DAY + 5 * MIN, offers: new Set(['mugs', 'candles']) },
      { t: NOW - 6 * DAY, offers: new Set(['mugs']) },
    ];
    const p = predictAffinity(snapshot, baskets, NOW, offers.map((o) => o.id));
    assert.ok(p.get('mugs')! > p.get('bag')! && p.get('mugs')! > p.get('candles')!, JSON.stringify([...p]));
    const expected = scoreOffers({ catalog: catalog(), products: items, events: [], affinity: { scope: (o) => p.get(o.id)! } });
    for (const s of shown) {
      const want = expected.find((x) => x.offer.id === s.offerId)!.expectedValue;
      assert.ok(Math.abs(s.expectedValue - want) < 1e-4, `${s.offerId}: ${s.expectedValue} vs ${want}`);
    }
    await e.erase();
  });

  it('offers() without a seed explores at the exploration rate; with a seed it repeats itself', async () => {
    const e = await engine(catalog());
    let explored = 0;
    for (let i = 0; i < 200; i++) explored += (await e.offers({ k: 2 })).filter((o) => o.explore).length;
    // 400 slots at 0.1, a slot marked only when the sampled offer differs from the greedy one.
    assert.ok(explored > 0 && explored < 120, `explored slots: ${explored} of 400`);
    const once = await e.offers({ k: 2, seed: 5, exploration: 0.5 });
    for (let i = 0; i < 5; i++) assert.deepEqual(await e.offers({ k: 2, seed: 5, exploration: 0.5 }), once);
    await e.erase();
  });

  it('purchases after `context.now` do not count (a replay asks as of an earlier time)', async () => {
    const e = await engine(catalog());
    e.enqueue([
      { type: 'purchase', itemId: 'c1', t: NOW - 30 * DAY },
      { type: 'purchase', itemId: 'c2', t: NOW - 20 * DAY },
      { type: 'purchase', itemId: 'c3', t: NOW - 10 * DAY },
    ]);
    assert.deepEqual((await e.offers({ k: 1, exploration: 0 })).map((o) => o.offerId), ['candles']);
    assert.deepEqual((await e.offers({ k: 1, exploration: 0, context: { now: NOW - 40 * DAY } })).map((o) => o.offerId), ['bag']);
    await e.erase();
  });

  it('without a snapshot the catalog still works (the recommendation model’s scores, as before)', async () => {
    const { affinity: _a, ...plain } = catalog();
    const e = await engine(plain);
    e.enqueue([{ type: 'purchase', itemId: 'm1', t: NOW - DAY }]);
    const shown = await e.offers({ k: 3, exploration: 0 });
    assert.deepEqual(shown.map((o) => o.offerId).sort(), ['bag', 'candles', 'mugs']);
    await e.erase();
  });

  it('without a snapshot, purchases after `context.now` do not count either; `now: undefined` is the engine’s clock', async () => {
    const { affinity: _a, ...plain } = catalog();
    const before = [{ type: 'purchase' as const, itemId: 'm1', t: NOW - 10 * DAY }];
    const at = { k: 3, exploration: 0, seed: 1, context: { now: NOW - 5 * DAY } };
    const a = await engine(plain);
    a.enqueue(before);
    const b = await engine(plain);
    b.enqueue([...before, ...['c1', 'c2', 'c3'].map((itemId, i) => ({ type: 'purchase' as const, itemId, t: NOW - DAY + i }))]);
    // The same ranking and values as a shopper who never made the later purchases (before: the
    // profile behind the affinity held them).
    assert.deepEqual(await b.offers(at), await a.offers(at));
    // An explicit `now: undefined` is no time given: the engine's clock, not the wall clock (which
    // is two years past this offer's end).
    const c = await engine({ ...plain, offers: [{ ...offers[0]!, validUntil: NOW + DAY }] });
    assert.deepEqual((await c.offers({ exploration: 0, context: { now: undefined } })).map((o) => o.offerId), ['bag']);
    for (const e of [a, b, c]) await e.erase();
  });

  it('refuses a private key as options.offers.publicKey (the page would hand anyone the signing key)', async () => {
    await assert.rejects(
      Engine.create({ catalog: { items }, backend: 'cpu', autoTrainEvery: 0, store: new MemoryEventStore({ maxEvents: 100, maxAgeDays: 36_500 }), now: () => NOW, offers: { publicKey: keys.privateJwk } }),
      /^ValidationError: options\.offers\.publicKey: is the private key \(it has 'd'\)/,
    );
  });

  it('refuses at create a publicKey that cannot be a P-256 public JWK, by name, without echoing it; a list passes while one key in it could be one (stop 40)', async () => {
    const create = (publicKey: unknown) => Engine.create({ catalog: { items }, backend: 'cpu', autoTrainEvery: 0, store: new MemoryEventStore({ maxEvents: 100, maxAgeDays: 36_500 }), now: () => NOW, offers: { publicKey: publicKey as never } });
    const rsa = { kty: 'RSA', n: 'AQAB', e: 'AQAB' };
    for (const [bad, field] of [['abc', 'options.offers.publicKey'], [{}, 'options.offers.publicKey'], [rsa, 'options.offers.publicKey'], [[], 'options.offers.publicKey'], [[{}, 5], 'options.offers.publicKey[0]'], [{ ...keys.publicJwk, y: 'short' }, 'options.offers.publicKey']] as const) {
      await assert.rejects(create(bad), (e: unknown) => isValidationError(e) && e.field === field && /P-256/.test(e.message), JSON.stringify(bad));
    }
    // keygen's whole pair (the private key inside): refused, and the message names its keys only;
    // the private JWK as JSON text: refused, by its length, none of it echoed.
    await assert.rejects(create(keys), (e: unknown) => isValidationError(e) && e.field === 'options.offers.publicKey' && !e.message.includes(keys.privateJwk.d!) && /an object with keys/.test(e.message));
    const text = JSON.stringify({ crv: 'P-256', d: keys.privateJwk.d, kty: 'EC', x: keys.privateJwk.x, y: keys.privateJwk.y });
    await assert.rejects(create(text), (e: unknown) => isValidationError(e) && e.field === 'options.offers.publicKey' && !e.message.includes(keys.privateJwk.d!.slice(0, 8)) && /a string of \d+ characters/.test(e.message));
    // A retired key pasted wrong beside a good one is skipped at verification, as before.
    const e = await create([{ kty: 'EC', crv: 'P-256', x: 'short' }, keys.publicJwk]);
    await e.close();
  });

  it('checks the options of offers() before it knows whether a catalog is installed', async () => {
    const e = await Engine.create({ catalog: { items }, backend: 'cpu', autoTrainEvery: 0, store: new MemoryEventStore({ maxEvents: 100, maxAgeDays: 36_500 }), now: () => NOW });
    assert.deepEqual(await e.offers({ k: 2 }), [], 'no catalog: nothing to show');
    await assert.rejects(e.offers({ k: 0 }), /options\.k: must be an integer from 1 to 20, got 0/);
    await assert.rejects(e.offers({ exploration: 7 }), /options\.exploration: must be a number from 0 to 1, got 7/);
    await assert.rejects(e.offers({ k: '2' as never }), /options\.k: must be an integer from 1 to 20, got "2"/);
    await assert.rejects(e.offers({ objective: 'profit' as never }), /options\.objective: must be 'value' or 'reach', got "profit"/);
    await e.close();
  });

  it('never goes back to an older catalog; an invalid currency is refused', async () => {
    const { affinity: _a, ...plain } = catalog();
    const e = await engine({ ...plain, version: 5 });
    await assert.rejects(e.setOffers(await signOfferCatalog({ ...plain, version: 4 }, keys.privateJwk)), /catalog\.version: is 4, older than the installed catalog's 5/);
    assert.deepEqual(await e.setOffers(await signOfferCatalog({ ...plain, version: 5 }, keys.privateJwk)), { offers: 3, neverShown: [] }, 'the same version again is fine');
    await assert.rejects(signOfferCatalog({ ...plain, version: 6, currency: '£££' }, keys.privateJwk), /catalog\.currency: must be an ISO 4217 code/);
    await assert.rejects(signOfferCatalog({ ...plain, version: 6, currency: 'QQQ' }, keys.privateJwk), /catalog\.currency: .*not in this platform's list of currencies/);
    await e.erase();
  });

  it('a catalog installed before consent is stored once consent is given, and a later session has it', async () => {
    const { affinity: _a, ...plain } = catalog();
    const dbName = `offers-consent-${Date.now()}`;
    const opts = { catalog: { items }, backend: 'cpu' as const, autoTrainEvery: 0, dbName, now: () => NOW, offers: { publicKey: keys.publicJwk } };
    const first = await Engine.create({ ...opts, consent: { personalization: false, federated: false } });
    await first.setOffers(await signOfferCatalog(plain, keys.privateJwk));
    assert.equal((await first.offers({ k: 3, exploration: 0 })).length, 3, 'in memory before consent');
    assert.equal((await first.audit()).offers, null, 'not stored before consent');
    await first.setConsent({ personalization: true });
    await first.close();
    const later = await Engine.create(opts);
    assert.deepEqual((await later.audit()).offers, { stored: true, version: 1, offers: 3, issuedAt: 0 });
    assert.deepEqual((await later.offers({ k: 3, exploration: 0 })).map((o) => o.offerId).sort(), ['bag', 'candles', 'mugs']);
    await later.erase();
  });
  /** Two tabs' engines on one database (catalog without a snapshot); tab a installed version 1 (the bag offer). */
  async function twoTabs(prefix: string) {
    const { affinity: _a, ...plain } = catalog();
    const opts = { catalog: { items }, backend: 'cpu' as const, autoTrainEvery: 0, dbName: `${prefix}-${Date.now()}`, now: () => NOW, offers: { publicKey: keys.publicJwk } };
    const a = await Engine.create(opts);
    const b = await Engine.create(opts);
    await a.setOffers(await signOfferCatalog({ ...plain, version: 1, offers: [offers[0]!] }, keys.privateJwk));
    return { plain, opts, a, b };
  }

  it('granting consent keeps a newer stored catalog over an older one installed before consent', async () => {
    const { affinity: _a, ...plain } = catalog();
    const dbName = `offers-downgrade-${Date.now()}`;
    const opts = { catalog: { items }, backend: 'cpu' as const, autoTrainEvery: 0, dbName, now: () => NOW, offers: { publicKey: keys.publicJwk } };
    const first = await Engine.create(opts);
    await first.setOffers(await signOfferCatalog({ ...plain, version: 5, offers: [offers[1]!] }, keys.privateJwk));
    await first.close();
    // A later session starts without consent and is handed a replayed, older catalog.
    const second = await Engine.create({ ...opts, consent: { personalization: false, federated: false } });
    await second.setOffers(await signOfferCatalog({ ...plain, version: 3, offers: [offers[0]!] }, keys.privateJwk));
    await second.setConsent({ personalization: true });
    assert.deepEqual((await second.audit()).offers, { stored: true, version: 5, offers: 1, issuedAt: 0 });
    assert.deepEqual((await second.offers({ k: 2, exploration: 0 })).map((o) => o.offerId), ['mugs'], 'this session follows the stored, newer one');
    await second.erase();
  });

  it('two tabs, and two calls at once: the older catalog is refused, the newer one stays installed', async () => {
    const { plain, opts, a, b } = await twoTabs('offers-tabs');
    await b.setOffers(await signOfferCatalog({ ...plain, version: 5, offers: [offers[1]!] }, keys.privateJwk));
    await assert.rejects(a.setOffers(await signOfferCatalog({ ...plain, version: 3, offers: [offers[2]!] }, keys.privateJwk)), /catalog\.version: is 3, older than the installed catalog's 5/);
    await new Promise((r) => setTimeout(r, 20)); // b's message reaches a
    assert.deepEqual((await a.offers({ k: 2, exploration: 0 })).map((o) => o.offerId), ['mugs'], 'tab a shows the catalog tab b installed');
    await a.close();
    const c = await Engine.create(opts);
    const v7 = await signOfferCatalog({ ...plain, version: 7, offers: [offers[2]!] }, keys.privateJwk);
    const v6 = await signOfferCatalog({ ...plain, version: 6, offers: [offers[0]!] }, keys.privateJwk);
    const results = await Promise.allSettled([c.setOffers(v7), c.setOffers(v6)]);
    // v6 may land first (then v7 replaces it) or be refused after v7: either way v7 stays.
    assert.equal(results[0]!.status, 'fulfilled');
    if (results[1]!.status === 'rejected') assert.match(String(results[1].reason), /catalog\.version: is 6, older than the installed catalog's 7/);
    assert.equal((await b.audit()).offers?.version, 7);
    assert.deepEqual((await c.offers({ k: 2, exploration: 0 })).map((o) => o.offerId), ['candles']);
    await c.close();
    await b.erase();
  });

  it("another tab's new catalog arriving while offers() runs does not break that call", async () => {
    const { plain, a, b } = await twoTabs('offers-msg');
    await a.offers({ k: 1, exploration: 0 }); // the catalog is held in memory
    const v5 = await signOfferCatalog({ ...plain, version: 5, offers }, keys.privateJwk);
    // Tab b installs v5 while tab a's offers() reads its history.
    const store = (a as unknown as { store: { all: () => Promise<unknown[]> } }).store;
    const all = store.all.bind(store);
    let installed: Promise<unknown> | undefined;
    store.all = async () => {
      const r = await all();
      installed ??= b.setOffers(v5).then(() => new Promise((res) => setTimeout(res, 20)));
      await installed;
      return r;
    };
    a.enqueue([{ type: 'view', itemId: 'm1', t: NOW - DAY }]);
    // So that this call reads the history from the store (a write alone now updates the held copy).
    (a as unknown as { dropEventCache(): void }).dropEventCache();
    const shown = await a.offers({ k: 2, exploration: 0 });
    assert.ok(installed, 'tab b installed its catalog during the call');
    assert.deepEqual(shown.map((o) => o.offerId), ['bag'], 'this call answers from the catalog it started with');
    assert.equal((await a.offers({ k: 3, exploration: 0 })).length, 3, 'the next call has v5');
    await a.close();
    await b.erase();
  });
});

describe('offer rules outlive event retention', () => {
  it('a redeemed once-only offer, maxImpressions and the new-shopper audience still hold after retention removed the events they count', async () => {
    const keys = await generateOfferKeys();
    const catalog: OfferCatalog = {
      version: 1,
      issuedAt: 0,
      currency: 'GBP',
      offers: [
        { ...offer('once', { kind: 'items', itemIds: ['p0'] }), limits: { maxRedemptions: 1 } },
        { ...offer('shown-twice', { kind: 'items', itemIds: ['p0'] }), limits: { maxImpressions: 2 } },
        { ...offer('welcome', { kind: 'items', itemIds: ['p0'] }), audience: 'new' },
        offer('mugs', { kind: 'categories', categories: ['mug'] }),
      ],
    };
    const store = new MemoryEventStore({ maxEvents: 20, maxAgeDays: 365 });
    const e = await Engine.create({ catalog: { items }, backend: 'cpu', autoTrainEvery: 0, store, now: () => NOW, offers: { publicKey: keys.publicJwk } });
    try {
      await e.setOffers(await signOfferCatalog(catalog, keys.privateJwk));
      e.enqueue([
        { type: 'purchase', itemId: 'p0', t: NOW - 10 * DAY },
        { type: 'offer_impression', offerId: 'once', t: NOW - 10 * DAY },
        { type: 'offer_redeemed', offerId: 'once', t: NOW - 10 * DAY },
        { type: 'offer_impression', offerId: 'shown-twice', t: NOW - 9 * DAY },
        { type: 'offer_impression', offerId: 'shown-twice', t: NOW - 9 * DAY },
      ]);
      await e.flush();
      const shown = async () => (await e.offers({ k: 4, exploration: 0, seed: 1 })).map((o) => o.offerId).sort();
      assert.deepEqual(await shown(), ['mugs']);
      // Twenty views push every one of those events out of the store.
      e.enqueue(Array.from({ length: 20 }, (_, i) => ({ type: 'view', itemId: `m${i % 5}`, t: NOW - DAY + i })));
      await e.flush();
      assert.ok((await store.all()).every((x) => x.type === 'view'), 'the offer events and the purchase are gone');
      assert.deepEqual(await shown(), ['mugs'], 'still capped, still shown twice, still a returning shopper');
      assert.deepEqual((await e.exportData()).offerLedger?.offers.map((o) => [o.offerId, o.impressions, o.redemptions]), [['once', 1, 1], ['shown-twice', 2, 0]]);
      // audit() lists the record in its inventory (what is stored), as export() gives its content.
      const inv = (await e.audit()).offerLedger;
      assert.deepEqual({ ...inv, bytes: undefined }, { stored: true, offers: 2, lastPurchaseAt: NOW - 10 * DAY, bytes: undefined });
      assert.ok(inv!.bytes > 0);
    } finally {
      await e.close();
    }
  });
});

describe('offer rules with events not yet stored, or stamped ahead; catalogs replayed at the same version (stop 26 review)', () => {
  let keys: OfferKeyPair;
  before(async () => {
    keys = await generateOfferKeys();
  });
  const once: OfferCatalog['offers'][number] = { ...offer('once', { kind: 'categories', categories: ['mug'] }), limits: { maxRedemptions: 1, maxImpressions: 1 } };
  class FullStore extends MemoryEventStore {
    full = false;
    override async add(...args: Parameters<MemoryEventStore['add']>) {
      if (this.full) throw new StorageError('storing events: QuotaExceededError (simulated)');
      return super.add(...args);
    }
  }
  async function engine(store = new FullStore({ maxEvents: 10_000, maxAgeDays: 36_500 }), maxEvents?: number) {
    const e = await Engine.create({ catalog: { items }, backend: 'cpu', autoTrainEvery: 0, store, now: () => NOW, offers: { publicKey: keys.publicJwk }, ...(maxEvents ? { retention: { maxEvents, maxAgeDays: 36_500 } } : {}) });
    await e.setOffers(await signOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [once] }, keys.privateJwk));
    return { e, store };
  }
  const shown = async (e: Engine) => (await e.offers({ k: 1, exploration: 0, seed: 1 })).map((o) => o.offerId);

  it('an impression and a redemption still queued (the store is full) count for the caps', async () => {
    const { e, store } = await engine();
    assert.deepEqual(await shown(e), ['once']);
    store.full = true;
    e.enqueue([{ type: 'offer_impression', offerId: 'once', t: NOW - 2000 }, { type: 'offer_redeemed', offerId: 'once', t: NOW - 1000 }]);
    assert.deepEqual(await shown(e), []);
    await e.close().catch(() => undefined);
  });

  it('a redemption stamped a little ahead of the device clock counts at once; a replay at an earlier time does not see it', async () => {
    const { e } = await engine();
    e.enqueue([{ type: 'offer_redeemed', offerId: 'once', t: NOW + 2 * MIN }]);
    assert.deepEqual(await shown(e), [], 'live: counted now');
    // A page passing its own `Date.now()` (or its server's time, on a device whose clock is fast by
    // minutes, or by hours in a wrong time zone: stop 32) asks live too.
    for (const now of [NOW, NOW - 1000, NOW + MIN, NOW - 3 * MIN, NOW - 5 * 3_600_000, NOW - DAY + MIN]) {
      assert.deepEqual((await e.offers({ k: 1, exploration: 0, seed: 1, context: { now } })).map((o) => o.offerId), [], `context.now ${now - NOW} ms from the device clock: counted now`);
    }
    assert.deepEqual((await e.offers({ k: 1, exploration: 0, seed: 1, context: { now: NOW - 2 * DAY } })).map((o) => o.offerId), ['once'], 'as of two days ago: not yet redeemed');
    // A `now` in seconds, from performance.now() or 0 is a unit mistake, not a replay of 1970: read
    // as one, the used once-only offer came back (stop 40).
    for (const now of [Math.floor(NOW / 1000), 12_345.6, 0, Date.UTC(2000, 0, 1) - 1]) {
      await assert.rejects(e.offers({ k: 1, exploration: 0, seed: 1, context: { now } }), (err: unknown) => isValidationError(err) && err.field === 'options.context.now' && /from 2000-01-01 on/.test(err.message), String(now));
    }
    await e.close();
  });

  it('what retention folded into the ledger with times ahead of the clock (set back since) still counts, live (stop 32)', async () => {
    // On the real clock: within the last day of it (and ahead), count retention goes in storage order.
    const today = Date.now();
    let clock = today + 365 * DAY; // a year ahead when the shopper redeemed
    const welcome: OfferCatalog['offers'][number] = { ...offer('welcome', { kind: 'categories', categories: ['mug'] }), audience: 'new' };
    // IndexedDB: its count retention removes the first stored events (the memory store's, the earliest stamped).
    const e = await Engine.create({ catalog: { items }, backend: 'cpu', autoTrainEvery: 0, dbName: 'offers-ledger-ahead', now: () => clock, retention: { maxEvents: 5, maxAgeDays: 36_500 }, offers: { publicKey: keys.publicJwk } });
    await e.setOffers(await signOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [once, welcome] }, keys.privateJwk));
    const ids = async (context?: { now: number }) => (await e.offers({ k: 2, exploration: 0, seed: 1, ...(context ? { context } : {}) })).map((o) => o.offerId).sort();
    e.enqueue([{ type: 'purchase', itemId: 'm1' }, { type: 'offer_impression', offerId: 'once' }, { type: 'offer_redeemed', offerId: 'once' }]);
    await e.flush();
    assert.deepEqual(await ids(), [], 'redeemed once-only, and a returning shopper');
    clock = today; // corrected
    e.enqueue(Array.from({ length: 5 }, (_, i) => ({ type: 'view' as const, itemId: `c${i}` })));
    await e.flush();
    const ledger = (await e.exportData()).offerLedger;
    assert.ok(ledger && ledger.lastPurchaseAt! > clock && ledger.offers.some((o) => o.offerId === 'once' && o.lastRedeemedAt! > clock), 'the offer events are in the ledger now, stamped a year ahead');
    assert.deepEqual(await ids(), [], 'still redeemed, still returning');
    assert.deepEqual(await ids({ now: clock - 2 * DAY }), ['once', 'welcome'], 'a replay two days back: neither had happened yet');
    await e.erase();
  });

  it('a queue over its cap drops the oldest events, offer events and purchases last', async () => {
    const store = new FullStore({ maxEvents: 3, maxAgeDays: 36_500 });
    const { e } = await engine(store, 3);
    store.full = true;
    e.enqueue([{ type: 'offer_redeemed', offerId: 'once', t: NOW - 5000 }, ...[0, 1, 2, 3].map((i) => ({ type: 'view' as const, itemId: `m${i}`, t: NOW - 4000 + i }))]);
    await e.flush().catch(() => undefined);
    assert.deepEqual(await shown(e), [], 'the redemption kept its place in the queue');
    assert.equal((await e.stats()).dropped, 2);
    await e.close().catch(() => undefined);
  });

  it('an earlier publication held in memory before consent does not replace the later one stored, when consent is granted', async () => {
    const opts = { catalog: { items }, backend: 'cpu' as const, autoTrainEvery: 0, dbName: 'offers-grant-issued', now: () => NOW, offers: { publicKey: keys.publicJwk } };
    const tuesday = { version: 5, issuedAt: NOW, currency: 'GBP', offers: [offer('kept', { kind: 'all' })] };
    const monday = { ...tuesday, issuedAt: NOW - DAY, offers: [...tuesday.offers, offer('withdrawn', { kind: 'all' })] };
    const first = await Engine.create(opts);
    await first.setOffers(await signOfferCatalog(tuesday, keys.privateJwk));
    await first.close();
    const second = await Engine.create({ ...opts, consent: { personalization: false, federated: false } });
    await second.setOffers(await signOfferCatalog(monday, keys.privateJwk)); // nothing stored can be read yet
    await second.setConsent({ personalization: true });
    assert.deepEqual((await second.audit()).offers, { stored: true, version: 5, offers: 1, issuedAt: NOW });
    assert.deepEqual((await second.offers({ k: 5, exploration: 0, seed: 1 })).map((o) => o.offerId), ['kept']);
    await second.erase();
  });

  it('setOffers refuses an earlier publication of the installed version (issuedAt), and takes a later one', async () => {
    const e = await Engine.create({ catalog: { items }, backend: 'cpu', autoTrainEvery: 0, store: new MemoryEventStore(), now: () => NOW, offers: { publicKey: keys.publicJwk } });
    const tuesday = { version: 5, issuedAt: NOW, currency: 'GBP', offers: [offer('kept', { kind: 'all' })] };
    const monday = { ...tuesday, issuedAt: NOW - DAY, offers: [...tuesday.offers, offer('withdrawn', { kind: 'all' })] };
    await e.setOffers(await signOfferCatalog(tuesday, keys.privateJwk));
    await assert.rejects(e.setOffers(await signOfferCatalog(monday, keys.privateJwk)), /catalog\.issuedAt: is .*, before the installed catalog's .* of the same version 5; the installed one is kept/);
    assert.deepEqual((await e.offers({ k: 5, exploration: 0, seed: 1 })).map((o) => o.offerId), ['kept']);
    assert.deepEqual(await e.setOffers(await signOfferCatalog({ ...tuesday, issuedAt: NOW + DAY }, keys.privateJwk)), { offers: 1, neverShown: [] });
    await e.close();
  });

  it('setOffers refuses another catalog under the installed version and issuedAt (an edited file signed again); the same one again is taken', async () => {
    const store = new MemoryEventStore();
    const opts = { catalog: { items }, backend: 'cpu' as const, autoTrainEvery: 0, store, now: () => NOW, offers: { publicKey: keys.publicJwk } };
    const first = { version: 5, issuedAt: NOW, currency: 'GBP', offers: [offer('kept', { kind: 'all' }), offer('withdrawn', { kind: 'all' })] };
    const edited = { ...first, offers: [offer('kept', { kind: 'all' })] };
    const e = await Engine.create(opts);
    await e.setOffers(await signOfferCatalog(edited, keys.privateJwk));
    const replay = await signOfferCatalog(first, keys.privateJwk);
    const refused = /catalog\.issuedAt: is that of the installed catalog \(version 5, .*\), whose offers differ: a changed catalog needs a later issuedAt or a higher version; the installed one is kept/;
    await assert.rejects(e.setOffers(replay), refused);
    assert.deepEqual(await e.setOffers(await signOfferCatalog(edited, keys.privateJwk, { kid: 'again' })), { offers: 1, neverShown: [] }, 'the same catalog signed again');
    await e.close();
    // Against the stored one too (a later visit holds nothing in memory).
    const later = await Engine.create(opts);
    await assert.rejects(later.setOffers(replay), refused);
    assert.deepEqual((await later.offers({ k: 5, exploration: 0, seed: 1 })).map((o) => o.offerId), ['kept']);
    await later.close();
  });

  it('a catalog read back from storage is checked again: one edited there, or signed with a key the page no longer lists, is not shown', async () => {
    const store = new MemoryEventStore();
    const other = await generateOfferKeys();
    const opts = { catalog: { items }, backend: 'cpu' as const, autoTrainEvery: 0, store, now: () => NOW, offers: { publicKey: keys.publicJwk } };
    const e = await Engine.create(opts);
    await e.setOffers(await signOfferCatalog({ version: 1, issuedAt: NOW, currency: 'GBP', offers: [offer('mugs10', { kind: 'all' })] }, keys.privateJwk));
    await e.close();
    const shown = async (o: typeof opts) => {
      const x = await Engine.create(o);
      try {
        return (await x.offers({ k: 5, exploration: 0, seed: 1 })).map((s) => `${s.offerId} ${s.title}`);
      } finally {
        await x.close();
      }
    };
    assert.deepEqual(await shown(opts), ['mugs10 10% off mugs10'], 'as signed');
    // The shopper edits the record in the browser's storage.
    const stored = (await store.getMeta<SignedOfferCatalog>(OFFERS_KEY))!;
    await store.setMeta(OFFERS_KEY, { ...stored, catalog: { ...stored.catalog, offers: [{ ...offer('free', { kind: 'all' }), title: '90% off everything', discount: { kind: 'percent', percent: 90 } }] } });
    assert.deepEqual(await shown(opts), [], 'edited: not shown');
    // A bare catalog (no envelope) is not taken either.
    await store.setMeta(OFFERS_KEY, stored.catalog);
    assert.deepEqual(await shown(opts), [], 'unsigned: not shown');
    await store.setMeta(OFFERS_KEY, stored);
    assert.deepEqual(await shown({ ...opts, offers: { publicKey: other.publicJwk } }), [], 'key no longer listed: not shown');
    assert.deepEqual(await shown({ ...opts, offers: { publicKey: [other.publicJwk, keys.publicJwk] } as never }), ['mugs10 10% off mugs10'], 'listed among others: shown');
  });

  it('a catalog an earlier release stored bare (no envelope) is reported by audit() but neither shown nor a floor: anyone can write one', async () => {
    const store = new MemoryEventStore();
    const opts = { catalog: { items }, backend: 'cpu' as const, autoTrainEvery: 0, store, now: () => NOW, offers: { publicKey: keys.publicJwk } };
    // What the earlier release wrote: the verified catalog itself, version 7 (or what anyone writes there).
    await store.setMeta(OFFERS_KEY, { version: 7, issuedAt: NOW, currency: 'GBP', offers: [offer('current', { kind: 'all' })] });
    const e = await Engine.create(opts);
    assert.deepEqual((await e.audit()).offers, { stored: true, version: 7, offers: 1, issuedAt: NOW });
    assert.deepEqual(await e.offers({ k: 5, exploration: 0, seed: 1 }), [], 'unsigned: not shown');
    const older = await signOfferCatalog({ version: 3, issuedAt: NOW, currency: 'GBP', offers: [offer('signed', { kind: 'all' })] }, keys.privateJwk);
    assert.deepEqual(await e.setOffers(older), { offers: 1, neverShown: [] }, 'the unsigned record keeps nothing out');
    assert.deepEqual((await e.offers({ k: 5, exploration: 0, seed: 1 })).map((o) => o.offerId), ['signed']);
    assert.equal((await e.audit()).offers?.version, 3);
    await e.close();
  });

  it('a stored record edited to claim a huge version keeps no catalog out (it does not verify); a verified one still does', async () => {
    const dbName = `offers-edited-floor-${Date.now()}`;
    const opts = { catalog: { items }, backend: 'cpu' as const, autoTrainEvery: 0, dbName, now: () => NOW, offers: { publicKey: keys.publicJwk } };
    const v1 = { version: 1, issuedAt: NOW, currency: 'GBP', offers: [offer('first', { kind: 'all' })] };
    const first = await Engine.create(opts);
    await first.setOffers(await signOfferCatalog(v1, keys.privateJwk));
    await first.close();
    // Edited in the browser's storage: version 9e15, signature left as it was.
    const raw = await IdbEventStore.open(dbName);
    const stored = (await raw.getMeta<SignedOfferCatalog>(OFFERS_KEY))!;
    await raw.setMeta(OFFERS_KEY, { ...stored, catalog: { ...stored.catalog, version: 9e15 } });
    raw.close();
    const e = await Engine.create(opts);
    assert.deepEqual(await e.offers({ k: 5, exploration: 0, seed: 1 }), [], 'edited: not shown');
    assert.deepEqual(await e.setOffers(await signOfferCatalog({ ...v1, version: 2, offers: [offer('second', { kind: 'all' })] }, keys.privateJwk)), { offers: 1, neverShown: [] }, 'version 2 installs over it');
    assert.deepEqual((await e.offers({ k: 5, exploration: 0, seed: 1 })).map((o) => o.offerId), ['second']);
    await e.close();
    // The record now verifies again, and is a floor again (for a later visit, holding nothing in memory).
    const later = await Engine.create(opts);
    await assert.rejects(later.setOffers(await signOfferCatalog(v1, keys.privateJwk)), /catalog\.version: is 1, older than the installed catalog's 2/);
    await later.close();

    // The same publication edited in storage (an offer changed, version and issuedAt kept): the
    // shop's page installing that publication again is not refused as "another catalog".
    const edited = (await IdbEventStore.open(dbName).then(async (s) => {
      const r = (await s.getMeta<SignedOfferCatalog>(OFFERS_KEY))!;
      await s.setMeta(OFFERS_KEY, { ...r, catalog: { ...r.catalog, offers: [{ ...r.catalog.offers[0]!, title: '90% off' }] } });
      s.close();
      return r;
    }));
    const again = await Engine.create(opts);
    assert.deepEqual(await again.setOffers(await signOfferCatalog(edited.catalog, keys.privateJwk)), { offers: 1, neverShown: [] });
    assert.deepEqual((await again.offers({ k: 5, exploration: 0, seed: 1 })).map((o) => o.title), ['10% off second']);

    // Granting consent: a catalog held in memory is stored over an edited record claiming a newer version.
    const raw2 = await IdbEventStore.open(dbName);
    const cur = (await raw2.getMeta<SignedOfferCatalog>(OFFERS_KEY))!;
    await raw2.setMeta(OFFERS_KEY, { ...cur, catalog: { ...cur.catalog, version: 9e15 } });
    raw2.close();
    await again.close();
    const grant = await Engine.create({ ...opts, consent: { personalization: false, federated: false } });
    await grant.setOffers(await signOfferCatalog({ ...v1, version: 3, offers: [offer('third', { kind: 'all' })] }, keys.privateJwk));
    await grant.setConsent({ personalization: true });
    assert.equal((await grant.audit()).offers?.version, 3, 'the verified catalog replaced the edited record');
    assert.deepEqual((await grant.offers({ k: 5, exploration: 0, seed: 1 })).map((o) => o.offerId), ['third']);
    await grant.erase();
  });
});
