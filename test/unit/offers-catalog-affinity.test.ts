import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { isValidationError, ValidationError } from '../../src/errors.js';
import { SNAPSHOT_FEATURES, type AffinitySnapshot } from '../../src/offers/affinity-model.js';
import { canonicalJson } from '../../src/offers/canonical-json.js';
import { isSignatureError } from '../../src/offers/signature-error.js';
import { generateOfferKeys, signedPayload, signOfferCatalog, verifyOfferCatalog, type OfferKeyPair } from '../../src/offers/signing.js';
import type { OfferCatalog, SignedOfferCatalog } from '../../src/offers/types.js';
import { validateAffinitySnapshot, validateOfferCatalog } from '../../src/offers/validate-catalog.js';

const affinity: AffinitySnapshot = {
  features: ['popularity', 'timesBought', 'repeatRate'],
  weights: [-1.5, 1, 0.75, 0.25],
  offers: {
    mugs10: { popularity: 0.12, recentPopularity: 0.2, repeatRate: 0.31 },
    bag2: { popularity: 0.05, recentPopularity: 0.01, repeatRate: 0.25 },
  },
};
const catalog: OfferCatalog = {
  version: 4,
  issuedAt: 1_700_000_000_000,
  currency: 'GBP',
  offers: [
    { id: 'mugs10', title: '10% off mugs', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'categories', categories: ['mug'] } },
    { id: 'bag2', title: '£2 off the jute bag', discount: { kind: 'amount', amount: 2 }, scope: { kind: 'items', itemIds: ['b1'] } },
  ],
  affinity,
};
const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

function invalid(input: unknown, field: string, message: RegExp): void {
  try {
    validateOfferCatalog(input);
  } catch (e) {
    assert.ok(isValidationError(e), `expected a ValidationError, got ${String(e)}`);
    assert.equal((e as ValidationError).field, field);
    assert.match((e as Error).message, message);
    return;
  }
  assert.fail(`accepted; expected a ValidationError on ${field}`);
}
/** The catalog with `edit` applied to a copy of its affinity. */
const withAffinity = (edit: (a: Record<string, any>) => void): unknown => {
  const c = clone(catalog) as unknown as { affinity: Record<string, any> };
  edit(c.affinity);
  return c;
};

describe('catalog.affinity validation', () => {
  test('a valid snapshot is kept (a clean copy: unknown fields dropped); a catalog without one has none', () => {
    const input = withAffinity((a) => {
      a.note = 'ignored';
      a.offers.mugs10.extra = 1;
    });
    const out = validateOfferCatalog(input);
    assert.deepEqual(out.affinity, affinity);
    const { affinity: _a, ...plain } = catalog;
    assert.equal('affinity' in validateOfferCatalog(plain), false);
    // An offer of the catalog may be missing from the snapshot (scored as never bought).
    assert.deepEqual(validateOfferCatalog(withAffinity((a) => delete a.offers.bag2)).affinity?.offers, { mugs10: affinity.offers.mugs10 });
    // Every snapshot feature is accepted.
    const all = validateAffinitySnapshot({ features: [...SNAPSHOT_FEATURES], weights: new Array(SNAPSHOT_FEATURES.length + 1).fill(0), offers: {} });
    assert.deepEqual(all.features, SNAPSHOT_FEATURES);
  });

  test('bad snapshots are refused with a ValidationError naming the field', () => {
    invalid({ ...catalog, affinity: 'yes' }, 'catalog.affinity', /must be an object, got 'yes'/);
    invalid(withAffinity((a) => (a.features = 'popularity')), 'catalog.affinity.features', /must be an array of feature names/);
    invalid(withAffinity((a) => (a.features[1] = 'shoeSize')), 'catalog.affinity.features[1]', /unknown feature 'shoeSize'; known: popularity, /);
    invalid(withAffinity((a) => (a.features[0] = 7)), 'catalog.affinity.features[0]', /must be a feature name, got 7/);
    invalid(withAffinity((a) => (a.features[2] = 'transition')), 'catalog.affinity.features[2]', /'transition' needs item → offer tables/);
    invalid(withAffinity((a) => (a.features[2] = 'popularity')), 'catalog.affinity.features[2]', /duplicate feature 'popularity'/);
    invalid(withAffinity((a) => a.weights.pop()), 'catalog.affinity.weights', /must hold 4 numbers \(intercept \+ 3 features\), got 3/);
    invalid(withAffinity((a) => delete a.weights), 'catalog.affinity.weights', /must hold 4 numbers .*got nothing/);
    invalid(withAffinity((a) => (a.weights[2] = '0.5')), 'catalog.affinity.weights[2]', /must be a finite number, got '0.5'/);
    // Not JSON, but a structured clone (postMessage) can carry it: still refused.
    const nan = clone(catalog);
    nan.affinity!.weights[3] = Number.NaN;
    invalid(nan, 'catalog.affinity.weights[3]', /must be a finite number, got NaN/);
    invalid(withAffinity((a) => (a.offers = [])), 'catalog.affinity.offers', /must be an object, got an array/);
    invalid(withAffinity((a) => (a.offers.mugs10.popularity = 1.5)), 'catalog.affinity.offers["mugs10"].popularity', /must be a share in \[0, 1\], got 1.5/);
    // The bounds themselves are shares: [0, 1] is closed.
    assert.deepEqual((validateOfferCatalog(withAffinity((a) => (a.offers.mugs10 = { popularity: 1, recentPopularity: 0, repeatRate: 1 }))) as OfferCatalog).affinity!.offers.mugs10, { popularity: 1, recentPopularity: 0, repeatRate: 1 });
    invalid(withAffinity((a) => (a.offers.bag2.recentPopularity = -0.1)), 'catalog.affinity.offers["bag2"].recentPopularity', /must be ≥ 0, got -0.1/);
    invalid(withAffinity((a) => delete a.offers.bag2.repeatRate), 'catalog.affinity.offers["bag2"].repeatRate', /must be a finite number, got nothing/);
    invalid(withAffinity((a) => (a.offers.bag2 = 0.3)), 'catalog.affinity.offers["bag2"]', /must be an object, got 0.3/);
    invalid(
      withAffinity((a) => (a.offers.lamps = { popularity: 0, recentPopularity: 0, repeatRate: 0.25 })),
      'catalog.affinity.offers["lamps"]',
      /no offer with this id in the catalog \(the snapshot was fitted for another catalog\)/,
    );
  });

  test("an offer id '__proto__' stays an ordinary key of the clean copy", () => {
    const c = JSON.parse(
      JSON.stringify({ ...catalog, offers: [{ ...catalog.offers[0], id: '__proto__' }], affinity: { ...affinity, offers: {} } }).replace('"offers":{}', '"offers":{"__proto__":{"popularity":0.5,"recentPopularity":0.5,"repeatRate":0.5}}'),
    ) as unknown;
    const out = validateOfferCatalog(c);
    assert.deepEqual(Object.keys(out.affinity!.offers), ['__proto__']);
    assert.equal(Object.getPrototypeOf(out.affinity!.offers), Object.prototype);
    assert.equal(out.affinity!.offers['__proto__']!.popularity, 0.5);
  });
});

describe('catalog.affinity is signed with the rest', () => {
  let keys: OfferKeyPair;
  let signed: SignedOfferCatalog;
  before(async () => {
    keys = await generateOfferKeys();
    signed = await signOfferCatalog(catalog, keys.privateJwk, { kid: 'k1' });
  });

  async function refused(tampered: unknown): Promise<void> {
    try {
      await verifyOfferCatalog(tampered, keys.publicJwk);
    } catch (e) {
      assert.ok(isSignatureError(e), `expected a SignatureError, got ${String(e)}`);
      assert.equal(e.problem, 'mismatch');
      return;
    }
    assert.fail('the tampered catalog was accepted');
  }

  test('the signed payload holds the snapshot; a signed catalog verifies with it', async () => {
    assert.deepEqual(signed.catalog.affinity, affinity);
    const payload = new TextDecoder().decode(signedPayload(signed));
    assert.ok(payload.includes(canonicalJson(affinity)), 'the canonical JSON of the snapshot is inside what is signed');
    const back = await verifyOfferCatalog(clone(signed), keys.publicJwk);
    assert.deepEqual(back.affinity, affinity);
  });

  test('changing, adding or removing any part of the snapshot after signing is refused', async () => {
    const edits: Array<(s: SignedOfferCatalog) => void> = [
      (s) => (s.catalog.affinity!.weights[2] = 5), // a shopper raising one feature's weight
      (s) => (s.catalog.affinity!.weights[0] += 1e-12), // even by 1e-12
      (s) => (s.catalog.affinity!.offers.bag2!.popularity = 0.9),
      (s) => (s.catalog.affinity!.offers.mugs10!.repeatRate = 0.3100001),
      (s) => s.catalog.affinity!.features.reverse(),
      (s) => delete s.catalog.affinity!.offers.bag2,
      (s) => delete s.catalog.affinity,
    ];
    for (const edit of edits) {
      const t = clone(signed);
      edit(t);
      await refused(t);
    }
    // Adding a snapshot to a catalog signed without one.
    const { affinity: _a, ...plain } = catalog;
    const plainSigned = await signOfferCatalog(plain, keys.privateJwk);
    await verifyOfferCatalog(clone(plainSigned), keys.publicJwk);
    await refused({ ...clone(plainSigned), catalog: { ...clone(plainSigned.catalog), affinity } });
  });

  test('signing refuses an invalid snapshot (a shop cannot publish one devices would refuse)', async () => {
    const bad = clone(catalog);
    bad.affinity!.weights = [1];
    await assert.rejects(signOfferCatalog(bad, keys.privateJwk), (e: unknown) => isValidationError(e) && e.field === 'catalog.affinity.weights');
  });
});
