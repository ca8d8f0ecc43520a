import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { isValidationError } from '../../src/errors.js';
import { buildRetailOffers, DEFAULT_EVAL_OPTIONS, offersBounds, runOffersEval, type PolicyName } from '../../src/offers/eval/offers-eval.js';
import { loadRetailData, type Basket, type RetailData } from '../../src/offers/eval/retail-data.js';

const DAY = 86_400_000;
const items: RetailData['items'] = [
  { id: '100', title: 'RED MUG', category: 'mug', price: 2 },
  { id: '200', title: 'JUMBO BAG', category: 'bag', price: 2 },
  { id: '300', title: 'VANILLA CANDLE', category: 'candle', price: 5 },
  { id: '400', title: 'BIRTHDAY CARD', category: 'card', price: 1 },
  { id: 'POST', title: 'POSTAGE', category: 'service', price: 18 },
];
let invoice = 0;
const basket = (customerId: string, day: number, lines: Array<[string, number]>): Basket => ({
  invoice: String(++invoice),
  customerId,
  t: day * DAY,
  lines: lines.map(([itemId, quantity]) => ({ itemId, quantity, price: items.find((i) => i.id === itemId)!.price! })),
});
/** Everyone buys bags; customer "mug" keeps buying mugs, customer "candle" keeps buying candles. */
function data(): RetailData {
  const baskets: Basket[] = [];
  for (let d = 0; d < 30; d++) {
    baskets.push(basket(`b${d}`, d, [['200', 10], ['POST', 1]]));
    if (d % 3 === 0) baskets.push(basket('mug', d, [['100', 12]]));
    if (d % 3 === 1) baskets.push(basket('candle', d, [['300', 4]]));
  }
  return { baskets, items, rows: { read: 0, kept: 0 } };
}
const opts = { ...DEFAULT_EVAL_OPTIONS, k: 1, exploration: 0, groups: 10 };

describe('offers-eval', () => {
  test('catalog: one offer per product with the data prices; postage gets none', () => {
    const { catalog, offerOfItem } = buildRetailOffers(data(), { granularity: 'items', groups: 10, percent: 10 });
    assert.deepEqual(catalog.offers.map((o) => o.id).sort(), ['itm-100', 'itm-200', 'itm-300']);
    const mug = catalog.offers.find((o) => o.id === 'itm-100')!;
    assert.deepEqual(mug.scope, { kind: 'items', itemIds: ['100'] });
    assert.equal(mug.hints?.typicalSpend, 24); // 12 × £2 in every mug basket
    assert.deepEqual(mug.discount, { kind: 'percent', percent: 10, maxAmount: 2.4 });
    assert.equal(offerOfItem.get('POST'), undefined);
    const cats = buildRetailOffers(data(), { granularity: 'categories', groups: 10, percent: 10 }).catalog;
    assert.deepEqual(cats.offers.map((o) => o.scope), [{ kind: 'categories', categories: ['bag'] }, { kind: 'categories', categories: ['candle'] }, { kind: 'categories', categories: ['mug'] }]);
  });

  test('an earlier invoice with the same timestamp is hidden from every policy alike (its redemption does not cool the baselines down)', () => {
    const d = data();
    // Customer "twin" buys bags twice in the same second (two invoices, one timestamp).
    const first = basket('twin', 12.5, [['200', 10]]);
    const second = { ...basket('twin', 12.5, [['200', 10]]) };
    const at = d.baskets.findIndex((b) => b.t > first.t);
    d.baskets.splice(at, 0, first, second);
    const atSecond = new Map<PolicyName, { shown: string[]; redeemed?: string }>();
    runOffersEval(d, {
      ...opts,
      onDecision: (x) => {
        if (x.index === at + 1) atSecond.set(x.policy, { shown: x.shown, ...(x.redeemed ? { redeemed: x.redeemed } : {}) });
      },
    });
    // The first invoice redeemed the bag offer at that timestamp. The second, in the same second,
    // does not see that redemption, as the personalized policy does not (chooseOffers drops what is
    // after `now`): the baselines show the offer again instead of holding it back for its cool-down.
    assert.deepEqual(atSecond.get('one-size-fits-all'), { shown: ['itm-200'], redeemed: 'itm-200' });
    assert.deepEqual(atSecond.get('random'), { shown: ['itm-200'], redeemed: 'itm-200' });
  });

  test('what an earlier invoice with the same timestamp holds changes no decision before its twin (any affinity, any publishing period)', () => {
    const offers = buildRetailOffers(data(), { granularity: 'items', groups: 10, percent: 10 });
    const withTwins = (firstItem: string) => {
      const d = data();
      // Customer "twin": an earlier basket, then two invoices in the same second; only the first's
      // product differs between the two runs.
      const old = basket('twin', 3.5, [['400', 20]]);
      const first = basket('twin', 25.5, [[firstItem, 10]]);
      const second = basket('twin', 25.5, [['200', 10]]);
      d.baskets.splice(d.baskets.findIndex((b) => b.t > old.t), 0, old);
      const at = d.baskets.findIndex((b) => b.t > first.t);
      d.baskets.splice(at, 0, first, second);
      return { d, second: at + 1 };
    };
    for (const [affinity, publishEveryDays] of [['history', 1], ['learned', 0], ['learned', 1]] as const) {
      const atSecond = (firstItem: string) => {
        const { d, second } = withTwins(firstItem);
        const out: string[] = [];
        runOffersEval(d, { ...opts, offers, affinity, publishEveryDays, onDecision: (x) => x.index === second && out.push(`${x.policy}:${x.shown.join(',')}`) });
        return out;
      };
      const mug = atSecond('100');
      assert.equal(mug.length, 3);
      assert.deepEqual(atSecond('300'), mug, `${affinity}, publish every ${publishEveryDays} d`);
    }
  });

  test('personalized shows each customer their own product; one-size-fits-all shows bags to everyone', () => {
    const shownTo = new Map<string, Set<string>>();
    const results = runOffersEval(data(), {
      ...opts,
      onDecision: (d) => {
        if (d.policy !== 'personalized' || d.index < 5) return;
        const s = shownTo.get(d.customerId) ?? new Set();
        d.shown.forEach((o) => s.add(o));
        shownTo.set(d.customerId, s);
      },
    });
    assert.deepEqual([...shownTo.get('mug')!], ['itm-100']);
    assert.deepEqual([...shownTo.get('candle')!], ['itm-300']);
    const by = Object.fromEntries(results.map((r) => [r.policy, r])) as Record<PolicyName, (typeof results)[number]>;
    assert.ok(by.personalized.hitRate > by['one-size-fits-all'].hitRate);
    assert.equal(by['one-size-fits-all'].offersShown[0]!.offerId, 'itm-200');
    // A mug hit costs 10% of £24 = £2.40, a bag hit 10% of £20 = £2: the per-hit figure is their mean.
    assert.ok(by.personalized.discountPerHit >= 2 && by.personalized.discountPerHit <= 2.4);
    assert.ok(Math.abs(by.personalized.discountSpent / by.personalized.hits - by.personalized.discountPerHit) < 0.005);
  });

  test('no look-ahead: changing the future changes no earlier decision', () => {
    // The published catalog (and its prices) is held fixed: only the customers' baskets change.
    const offers = buildRetailOffers(data(), { granularity: 'items', groups: 10, percent: 10 });
    const trace = (d: RetailData) => {
      const out: string[] = [];
      runOffersEval(d, { ...opts, offers, exploration: 0.3, onDecision: (x) => out.push(`${x.index}:${x.policy}:${x.shown.join(',')}`) });
      return out;
    };
    const original = data();
    const cut = 20;
    const altered: RetailData = {
      ...original,
      baskets: original.baskets.map((b, i) => (i < cut ? b : { ...b, lines: [{ itemId: '300', quantity: 50, price: 5 }, { itemId: '100', quantity: 99, price: 2 }] })),
    };
    const a = trace(original);
    const b = trace(altered);
    const before = (xs: string[]) => xs.filter((x) => Number(x.split(':')[0]) <= cut);
    assert.deepEqual(before(b), before(a), 'decisions up to and including basket `cut` only use earlier baskets');
    assert.notDeepEqual(b, a, 'the altered future does change later decisions');
  });

  test('both affinities (learned, history) personalize and never look ahead', () => {
    const offers = buildRetailOffers(data(), { granularity: 'items', groups: 10, percent: 10 });
    for (const affinity of ['learned', 'history'] as const) {
      const trace = (d: RetailData) => {
        const out: string[] = [];
        const results = runOffersEval(d, { ...opts, offers, affinity, exploration: 0.3, onDecision: (x) => out.push(`${x.index}:${x.policy}:${x.shown.join(',')}`) });
        return { out, results };
      };
      const original = trace(data());
      const cut = 20;
      const altered = trace({ ...data(), baskets: data().baskets.map((b, i) => (i < cut ? b : { ...b, lines: [{ itemId: '300', quantity: 50, price: 5 }] })) });
      const before = (xs: string[]) => xs.filter((x) => Number(x.split(':')[0]) <= cut);
      assert.deepEqual(before(altered.out), before(original.out), affinity);
      assert.notDeepEqual(altered.out, original.out, `${affinity}: the altered future does change later decisions`);
      const by = Object.fromEntries(original.results.map((r) => [r.policy, r])) as Record<PolicyName, (typeof original.results)[number]>;
      assert.ok(by.personalized.repeatHitRate > by['one-size-fits-all'].repeatHitRate, `${affinity}: ${by.personalized.repeatHitRate}`);
    }
  });

  test('learned (the device path): no look-ahead whatever the publishing period and basket grouping', () => {
    const offers = buildRetailOffers(data(), { granularity: 'items', groups: 10, percent: 10 });
    for (const [publishEveryDays, basketGapMinutes] of [[0, 0], [0, 30], [1, 30], [7, 30], [2, 3 * 24 * 60]] as const) {
      const trace = (d: RetailData) => {
        const out: string[] = [];
        runOffersEval(d, { ...opts, offers, publishEveryDays, basketGapMinutes, exploration: 0.3, onDecision: (x) => out.push(`${x.index}:${x.policy}:${x.shown.join(',')}`) });
        return out;
      };
      const cut = 20;
      const original = trace(data());
      const altered = trace({ ...data(), baskets: data().baskets.map((b, i) => (i < cut ? b : { ...b, lines: [{ itemId: '300', quantity: 50, price: 5 }] })) });
      const before = (xs: string[]) => xs.filter((x) => Number(x.split(':')[0]) <= cut);
      assert.deepEqual(before(altered), before(original), `publish every ${publishEveryDays} d, gap ${basketGapMinutes} min`);
      assert.notDeepEqual(altered, original, `publish every ${publishEveryDays} d: the altered future does change later decisions`);
    }
  });

  test('learned: the policy uses the published snapshot, so a snapshot never re-published does not personalize', () => {
    const personalizedHits = (publishEveryDays: number) => {
      const shownTo = new Map<string, Set<string>>();
      const results = runOffersEval(data(), {
        ...opts,
        publishEveryDays,
        onDecision: (d) => {
          if (d.policy !== 'personalized' || d.index < 5) return;
          const s = shownTo.get(d.customerId) ?? new Set();
          d.shown.forEach((o) => s.add(o));
          shownTo.set(d.customerId, s);
        },
      });
      return { hitRate: results.find((r) => r.policy === 'personalized')!.hitRate, shownTo };
    };
    const daily = personalizedHits(1);
    assert.deepEqual([...daily.shownTo.get('mug')!], ['itm-100']);
    assert.deepEqual([...daily.shownTo.get('candle')!], ['itm-300']);
    // Published once, before any basket (no statistics, initial weights): the affinity is the same
    // for every offer and only the shopper's own offer history (the Beta posterior) moves it.
    const stale = personalizedHits(10_000);
    assert.ok(stale.shownTo.get('candle')!.size > 1, 'without the learned snapshot the candle buyer is shown other offers too');
    // A first-time customer: the daily snapshot knows bags are popular; the stale one knows nothing
    // and the pricier mug offer wins on value.
    assert.deepEqual([...daily.shownTo.get('b10')!], ['itm-200']);
    assert.deepEqual([...stale.shownTo.get('b10')!], ['itm-100']);
    assert.ok(stale.hitRate < daily.hitRate, `stale ${stale.hitRate} vs daily ${daily.hitRate}`);
  });

  test('bounds: clairvoyant, repeat-of-bought and best fixed personal list in hindsight', () => {
    const lines = (itemId: string, quantity: number): Array<[string, number]> => [[itemId, quantity]];
    const d: RetailData = {
      items,
      rows: { read: 0, kept: 0 },
      baskets: [
        basket('A', 1, lines('100', 10)), // mug £20
        basket('B', 1, lines('400', 2)), // card £2: below the £10 minimum basket, no offer can hit
        basket('A', 2, lines('200', 10)), // bag, new for A
        basket('B', 2, lines('100', 10)), // mug, new for B
        basket('A', 3, lines('100', 10)), // mug again
        basket('A', 4, lines('300', 4)), // candle £20, new for A
      ],
    };
    const offers = buildRetailOffers(d, { granularity: 'items', groups: 10, percent: 10 });
    assert.deepEqual(offersBounds(d, offers, 1), { k: 1, baskets: 6, repeatBaskets: 4, anyOffer: 0.8333, repeatOfBought: 0.25, hindsightPersonal: 0.5, hindsightPersonalRepeat: 0.5 });
    // k = 2: A's mug + bag cover 3 of A's 4 baskets; B's mug covers B's second.
    assert.deepEqual(offersBounds(d, offers, 2), { k: 2, baskets: 6, repeatBaskets: 4, anyOffer: 0.8333, repeatOfBought: 0.25, hindsightPersonal: 0.6667, hindsightPersonalRepeat: 0.75 });
  });

  test('an amount discount never exceeds the in-scope spend of the basket', () => {
    const d: RetailData = {
      items,
      rows: { read: 0, kept: 0 },
      baskets: [basket('A', 1, [['100', 1], ['300', 4]])], // a £2 mug and £20 of candles
    };
    const offers = {
      catalog: { version: 1, issuedAt: 0, currency: 'GBP', offers: [{ id: 'mug5', title: '£5 off mugs', discount: { kind: 'amount' as const, amount: 5 }, scope: { kind: 'items' as const, itemIds: ['100'] }, hints: { margin: 0.9, typicalSpend: 50 } }] },
      offerOfItem: new Map([['100', 'mug5']]),
    };
    const policies = runOffersEval(d, { ...opts, affinity: 'history', offers });
    assert.equal(policies.length, 3);
    for (const p of policies) {
      assert.equal(p.hits, 1, `${p.policy}: the only offer is shown and used`);
      assert.equal(p.discountSpent, 2, `${p.policy}: £5 off a £2 mug is £2`);
    }
  });

  test('the same seed reproduces the whole replay', () => {
    const run = () => runOffersEval(data(), { ...opts, exploration: 0.3, seed: 9 });
    assert.deepEqual(run(), run());
  });
});

describe('loadRetailData', () => {
  test('keeps customer rows with positive quantity and non-cancelled invoices; reads both header styles', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'offers-eval-'));
    try {
      const shared = join(dir, 'shared.csv.gz');
      await writeFile(
        shared,
        gzipSync(
          [
            'invoice,stock_code,description,quantity,timestamp,unit_price,customer_id,country',
            '1,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,1291191960,2.55,17850,United Kingdom',
            '1,22423,REGENCY CAKESTAND 3 TIER,2,1291191960,12.75,17850,United Kingdom',
            'C2,22423,REGENCY CAKESTAND 3 TIER,-1,1291191970,12.75,17850,United Kingdom',
            '3,22423,REGENCY CAKESTAND 3 TIER,0,1291191980,12.75,17850,United Kingdom',
            '4,22423,REGENCY CAKESTAND 3 TIER,1,1291191990,12.75,,United Kingdom',
            '5,"85099B","JUMBO BAG RED RETROSPOT, LARGE",10,1291190000,1.95,13047,United Kingdom',
          ].join('\n'),
        ),
      );
      const d = await loadRetailData(shared);
      assert.deepEqual(d.rows, { read: 6, kept: 3 });
      assert.deepEqual(d.baskets.map((b) => [b.invoice, b.customerId, b.lines.length]), [['5', '13047', 1], ['1', '17850', 2]]);
      assert.equal(d.items.find((i) => i.id === '85099B')?.category, 'bag');
      assert.equal(d.items.find((i) => i.id === '85123A')?.category, 'candle');

      const uci = join(dir, 'uci.csv');
      await writeFile(uci, ['InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country', '536365,71053,WHITE METAL LANTERN,6,2010-12-01T08:26:00Z,3.39,17850.0,United Kingdom'].join('\n'));
      const u = await loadRetailData(uci);
      assert.deepEqual(u.baskets, [{ invoice: '536365', customerId: '17850', t: Date.parse('2010-12-01T08:26:00Z'), lines: [{ itemId: '71053', quantity: 6, price: 3.39 }] }]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('refuses a malformed row it would keep, naming file:line[:column], as `localrec eval` does; skipped rows stay skipped', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'offers-eval-'));
    const HEADER = 'invoice,stock_code,description,quantity,timestamp,unit_price,customer_id,country';
    const GOOD = '1,22423,REGENCY CAKESTAND 3 TIER,2,1291191960,12.75,17850,United Kingdom';
    const load = async (bad: string) => {
      const f = join(dir, 'orders.csv');
      await writeFile(f, [HEADER, GOOD, bad].join('\n'));
      return loadRetailData(f, undefined, '--data');
    };
    const refused = (bad: string, field: string, re: RegExp) =>
      assert.rejects(load(bad), (e: unknown) => isValidationError(e) && e.field === field && re.test(e.message), `${bad}: ${field} ${re}`);
    try {
      await refused('2,22423,REGENCY CAKESTAND 3 TIER,2,1291191960', 'orders.csv:3', /has 5 fields, the header has 8$/);
      await refused('2,22423,REGENCY CAKESTAND 3 TIER,2,yesterday,12.75,17850,United Kingdom', 'orders.csv:3:timestamp', /'yesterday' is not a number or a date/);
      await refused('2,22423,REGENCY CAKESTAND 3 TIER,2,1291191960,cheap,17850,United Kingdom', 'orders.csv:3:unit_price', /'cheap' is not a number/);
      await refused('2,22423,REGENCY CAKESTAND 3 TIER,2,1291191960,,17850,United Kingdom', 'orders.csv:3:unit_price', /is empty/);
      await refused('2,22423,REGENCY CAKESTAND 3 TIER,2,1291191960,-12.75,17850,United Kingdom', 'orders.csv:3:unit_price', /is negative \(-12\.75\)/);
      await refused('2,22423,REGENCY CAKESTAND 3 TIER,two,1291191960,12.75,17850,United Kingdom', 'orders.csv:3:quantity', /'two' is not a number/);
      // Number('0x10') is 16: a hexadecimal cell is refused, not read as a price or a quantity (stop 40).
      await refused('2,22423,REGENCY CAKESTAND 3 TIER,2,1291191960,0x10,17850,United Kingdom', 'orders.csv:3:unit_price', /'0x10' is not a number \(plain decimals only\)/);
      await refused('2,22423,REGENCY CAKESTAND 3 TIER,0x2,1291191960,12.75,17850,United Kingdom', 'orders.csv:3:quantity', /'0x2' is not a number/);
      await refused('2,22423,"REGENCY CAKESTAND 3 TIER,2,1291191960,12.75,17850,United Kingdom', 'orders.csv:3', /a quote opened in the row starting here is never closed/);
      await refused('2,,REGENCY CAKESTAND 3 TIER,2,1291191960,12.75,17850,United Kingdom', 'orders.csv:3:stock_code', /is empty/);
      // A description quoted over two lines (CRLF inside quotes counts once): the next row is line 5 (stop 41).
      await refused('2,22423,"REGENCY\r\nCAKESTAND",2,1291191960,12.75,17850,United Kingdom\n2,22423,X,2,1291191960,free,17850,United Kingdom', 'orders.csv:5:unit_price', /'free' is not a number/);
      // What docs/OFFERS.md says is skipped is skipped, whatever else it holds (a write-off's negative price).
      for (const skipped of [
        'C2,22423,REGENCY CAKESTAND 3 TIER,-1,yesterday,12.75,17850,United Kingdom',
        'A3,B,Adjust bad debt,1,1291191960,-11062.06,,United Kingdom',
        '4,22423,REGENCY CAKESTAND 3 TIER,0,1291191960,-1,17850,United Kingdom',
      ]) {
        assert.deepEqual((await load(skipped)).rows, { read: 2, kept: 1 }, skipped);
      }
      // A zero price is a free line, kept.
      assert.deepEqual((await load('5,22423,REGENCY CAKESTAND 3 TIER,1,1291191960,0,17850,United Kingdom')).rows, { read: 2, kept: 2 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
