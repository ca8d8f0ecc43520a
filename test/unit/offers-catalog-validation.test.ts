import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isValidationError } from '../../src/errors.js';
import { MAX_SCOPE_ENTRIES, validateOfferCatalog } from '../../src/offers/validate-catalog.js';

const good = () => ({
  version: 1,
  issuedAt: 0,
  currency: 'GBP',
  offers: [
    {
      id: 'mugs10',
      title: '10% off mugs',
      discount: { kind: 'percent', percent: 10 },
      scope: { kind: 'categories', categories: ['mug'] },
      minBasket: 15,
      validFrom: 100,
      validUntil: 200,
      audience: 'returning',
      limits: { maxRedemptions: 2, maxImpressions: 10, coolDownHours: 24 },
      hints: { margin: 0.4, typicalSpend: 12, cost: 0.1 },
    },
  ],
});
type Catalog = ReturnType<typeof good>;

/** Break one field of a good catalog and return the field the ValidationError names. */
function fieldOf(mutate: (c: Catalog & Record<string, unknown>) => void): string {
  const c = good() as Catalog & Record<string, unknown>;
  mutate(c);
  try {
    validateOfferCatalog(c);
  } catch (e) {
    assert.ok(isValidationError(e), `expected a ValidationError, got ${String(e)}`);
    assert.ok(e.message.startsWith(`${e.field}: `), 'the message starts with the field');
    return e.field;
  }
  assert.fail('the catalog was accepted');
}
const offer = (c: Catalog) => c.offers[0] as Record<string, unknown> & Catalog['offers'][number];

describe('offer catalog validation', () => {
  test('a complete catalog passes unchanged', () => {
    assert.deepEqual(validateOfferCatalog(good()), good());
  });

  test('a scope naming an item or a category twice names it once (it counted twice in the affinity)', () => {
    const c = good();
    c.offers[0]!.scope = { kind: 'categories', categories: ['mug', 'mug', 'bag'] };
    c.offers.push({ ...c.offers[0]!, id: 'm1', scope: { kind: 'items', itemIds: ['m1', 'm1', 'm1'] } } as never);
    const v = validateOfferCatalog(c);
    assert.deepEqual(v.offers[0]!.scope, { kind: 'categories', categories: ['mug', 'bag'] });
    assert.deepEqual(v.offers[1]!.scope, { kind: 'items', itemIds: ['m1'] });
  });

  test('unknown fields are ignored and not copied (newer servers may add fields)', () => {
    const c = good() as Catalog & { extra?: number };
    c.extra = 1;
    (offer(c) as Record<string, unknown>).badge = 'new';
    assert.deepEqual(validateOfferCatalog(c), good());
  });

  test('errors name the offending field', () => {
    assert.equal(fieldOf((c) => ((c as Record<string, unknown>).version = 'one')), 'catalog.version');
    assert.equal(fieldOf((c) => ((c as Record<string, unknown>).currency = '')), 'catalog.currency');
    assert.equal(fieldOf((c) => ((c as Record<string, unknown>).offers = {})), 'catalog.offers');
    assert.equal(fieldOf((c) => delete (offer(c) as Record<string, unknown>).title), 'catalog.offers[0].title');
    assert.equal(fieldOf((c) => (offer(c).discount.percent = 0)), 'catalog.offers[0].discount.percent');
    assert.equal(fieldOf((c) => (offer(c).discount.percent = 101)), 'catalog.offers[0].discount.percent');
    assert.equal(fieldOf((c) => (offer(c).discount.kind = 'bogo')), 'catalog.offers[0].discount.kind');
    assert.equal(fieldOf((c) => (offer(c).scope = { kind: 'items', itemIds: [] } as never)), 'catalog.offers[0].scope.itemIds');
    assert.equal(fieldOf((c) => (offer(c).scope.categories = ['mug', ''])), 'catalog.offers[0].scope.categories[1]');
    assert.equal(fieldOf((c) => (offer(c).minBasket = -1)), 'catalog.offers[0].minBasket');
    assert.equal(fieldOf((c) => (offer(c).validUntil = 50)), 'catalog.offers[0].validUntil');
    assert.equal(fieldOf((c) => (offer(c).audience = 'vip')), 'catalog.offers[0].audience');
    assert.equal(fieldOf((c) => (offer(c).limits.maxRedemptions = 1.5)), 'catalog.offers[0].limits.maxRedemptions');
    assert.equal(fieldOf((c) => (offer(c).limits.coolDownHours = Number.NaN)), 'catalog.offers[0].limits.coolDownHours');
    assert.equal(fieldOf((c) => (offer(c).hints.margin = 1.2)), 'catalog.offers[0].hints.margin');
    // Values that would later break a Date (the policy, the redeem check) are refused here.
    assert.equal(fieldOf((c) => (offer(c).validFrom = 1e16)), 'catalog.offers[0].validFrom');
    assert.equal(fieldOf((c) => (offer(c).validUntil = 8.64e15 + 1)), 'catalog.offers[0].validUntil');
    assert.equal(fieldOf((c) => (offer(c).limits.coolDownHours = 1e10)), 'catalog.offers[0].limits.coolDownHours');
  });

  test('the limits of times and cool-downs are the ones a Date holds, and say so', () => {
    const c = good();
    offer(c).validUntil = 8.64e15;
    offer(c).limits.coolDownHours = 876_000;
    assert.equal(validateOfferCatalog(c).offers[0]!.validUntil, 8.64e15);
    assert.throws(() => validateOfferCatalog({ ...good(), offers: [{ ...good().offers[0], limits: { coolDownHours: 1e10 } }] }), /coolDownHours: must be at most 876000 \(100 years\), got 10000000000; for an offer redeemed once only, use maxRedemptions: 1/);
    for (const ok of ['GBP', 'EUR', 'JPY', 'USD', 'CHF']) assert.equal(validateOfferCatalog({ ...good(), currency: ok }, 'catalog', { strictCurrency: true }).currency, ok);
  });

  test("signing checks the currency against the platform's list (Intl alone takes any three capital letters); devices do not", () => {
    assert.throws(() => validateOfferCatalog({ ...good(), currency: 'QQQ' }, 'catalog', { strictCurrency: true }), /catalog\.currency: must be an ISO 4217 code such as GBP or EUR, got "QQQ" \(not in this platform's list of currencies\)/);
    // A device with an older list than the server that signed must not refuse the whole catalog.
    assert.equal(validateOfferCatalog({ ...good(), currency: 'QQQ' }).currency, 'QQQ');
  });

  test('a duplicate offer id names the second one', () => {
    assert.equal(fieldOf((c) => c.offers.push({ ...offer(c) })), 'catalog.offers[1].id');
  });

  test('messages say what was expected and what came', () => {
    assert.throws(() => validateOfferCatalog({ ...good(), offers: [{ ...good().offers[0], audience: 'vip' }] }), /audience: must be 'all', 'new' or 'returning', got 'vip'/);
    assert.throws(() => validateOfferCatalog(null), (e: unknown) => isValidationError(e) && e.message === "catalog: must be an object, got null");
  });

  test('each bound is where docs/OFFERS.md puts it: the value at the bound is taken, the one past it refused', () => {
    const take = (mutate: (c: Catalog) => void) => {
      const c = good();
      mutate(c);
      return validateOfferCatalog(c);
    };
    // version: an integer ≥ 0.
    assert.equal(take((c) => (c.version = 0)).version, 0);
    // percent: in (0, 100].
    assert.deepEqual(take((c) => (offer(c).discount.percent = 100)).offers[0]!.discount, { kind: 'percent', percent: 100 });
    // margin: a fraction in [0, 1].
    assert.equal(take((c) => (offer(c).hints.margin = 1)).offers[0]!.hints!.margin, 1);
    // id 1–128 characters, title up to 200.
    assert.equal(take((c) => (offer(c).id = 'i'.repeat(128))).offers[0]!.id.length, 128);
    assert.equal(fieldOf((c) => (offer(c).id = 'i'.repeat(129))), 'catalog.offers[0].id');
    assert.equal(take((c) => (offer(c).title = 't'.repeat(200))).offers[0]!.title.length, 200);
    assert.equal(fieldOf((c) => (offer(c).title = 't'.repeat(201))), 'catalog.offers[0].title');
    // issuedAt: a time a Date holds, up to 8.64e15.
    assert.equal(take((c) => (c.issuedAt = 8.64e15)).issuedAt, 8.64e15);
    assert.equal(fieldOf((c) => (c.issuedAt = 8.64e15 + 1)), 'catalog.issuedAt');
    // expiresAt after issuedAt, validUntil after validFrom: equal is refused.
    assert.equal(fieldOf((c) => ((c as Record<string, unknown>).expiresAt = c.issuedAt)), 'catalog.expiresAt');
    assert.equal(take((c) => ((c as Record<string, unknown>).expiresAt = c.issuedAt + 1)).expiresAt, 1);
    assert.equal(fieldOf((c) => (offer(c).validUntil = offer(c).validFrom)), 'catalog.offers[0].validUntil');
    // Caps are at least 1: a cap of 0 is an offer never shown or never redeemable.
    assert.equal(fieldOf((c) => (offer(c).limits.maxRedemptions = 0)), 'catalog.offers[0].limits.maxRedemptions');
    assert.equal(fieldOf((c) => (offer(c).limits.maxImpressions = 0)), 'catalog.offers[0].limits.maxImpressions');
    // Amounts and spends are > 0, costs ≥ 0.
    assert.equal(fieldOf((c) => ((offer(c) as Record<string, unknown>).discount = { kind: 'amount', amount: 0 })), 'catalog.offers[0].discount.amount');
    assert.equal(fieldOf((c) => ((offer(c).discount as Record<string, unknown>).maxAmount = 0)), 'catalog.offers[0].discount.maxAmount');
    assert.equal(fieldOf((c) => (offer(c).hints.typicalSpend = 0)), 'catalog.offers[0].hints.typicalSpend');
    assert.equal(fieldOf((c) => (offer(c).hints.cost = -0.5)), 'catalog.offers[0].hints.cost');
    assert.equal(take((c) => (offer(c).hints.cost = 0)).offers[0]!.hints!.cost, 0);
  });

  test('a hole in the offers array is refused, not copied as a hole', () => {
    // eslint-disable-next-line no-sparse-arrays
    assert.equal(fieldOf((c) => ((c as Record<string, unknown>).offers = [, offer(good())])), 'catalog.offers[0]');
  });

  test('a scope listing more than MAX_SCOPE_ENTRIES categories is refused, as one listing that many items', () => {
    const categories = Array.from({ length: MAX_SCOPE_ENTRIES + 1 }, (_, i) => `c${i}`);
    assert.equal(fieldOf((c) => (offer(c).scope = { kind: 'categories', categories })), 'catalog.offers[0].scope.categories');
    const atLimit = good();
    offer(atLimit).scope = { kind: 'categories', categories: categories.slice(1) };
    assert.equal((validateOfferCatalog(atLimit).offers[0]!.scope as { categories: readonly string[] }).categories.length, MAX_SCOPE_ENTRIES);
  });
});
