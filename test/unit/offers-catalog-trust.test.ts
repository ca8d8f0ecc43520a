/**
 * What a signed catalog can and cannot do to a device (docs/OFFERS.md, "What the signature
 * protects"): a signed expiry, the page's version floor, the key chosen by kid, the size limits
 * checked before the signature, and `offers sign --ttl-hours`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { Engine } from '../../src/engine/engine.js';
import { isValidationError } from '../../src/errors.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { CATALOG_EXPIRY_SLACK_MS } from '../../src/offers/freshness.js';
import { isSignatureError } from '../../src/offers/signature-error.js';
import { generateOfferKeys, signOfferCatalog, verifyOfferCatalog, type OfferKeyPair } from '../../src/offers/signing.js';
import type { Jwk, OfferCatalog, SignedOfferCatalog } from '../../src/offers/types.js';
import { MAX_CATALOG_JSON_CHARS, MAX_CATALOG_OFFERS, MAX_SCOPE_ENTRIES, validateOfferCatalog } from '../../src/offers/validate-catalog.js';
import '../../src/model/tf.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const items = [{ id: 'm1', title: 'Mug', category: 'mug', price: 10 }];
const offer = (id: string) => ({ id, title: `${id} off`, discount: { kind: 'percent' as const, percent: 10 }, scope: { kind: 'all' as const }, hints: { margin: 0.9, typicalSpend: 100 } });

function engine(publicKey: Jwk | Jwk[], clock: { now: number }, extra: { minVersion?: unknown } = {}): Promise<Engine> {
  return Engine.create({
    catalog: { items },
    backend: 'cpu',
    autoTrainEvery: 0,
    store: new MemoryEventStore({ maxEvents: 100, maxAgeDays: 36_500 }),
    now: () => clock.now,
    offers: { publicKey, ...extra } as never,
  });
}

describe('catalog expiry (catalog.expiresAt)', () => {
  let keys: OfferKeyPair;
  const NOW = Date.now();
  before(async () => {
    keys = await generateOfferKeys();
  });

  test('is validated, kept by validation and signed with the catalog', async () => {
    const c = { version: 1, issuedAt: NOW, expiresAt: NOW + DAY, currency: 'GBP', offers: [] };
    assert.equal(validateOfferCatalog(c).expiresAt, NOW + DAY);
    const signed = await signOfferCatalog(c, keys.privateJwk);
    assert.equal(signed.catalog.expiresAt, NOW + DAY);
    // Signed: pushing it later breaks the signature.
    await assert.rejects(verifyOfferCatalog({ ...signed, catalog: { ...signed.catalog, expiresAt: NOW + 365 * DAY } }, keys.publicJwk), (e: unknown) => isSignatureError(e) && e.problem === 'mismatch');
    assert.throws(() => validateOfferCatalog({ ...c, expiresAt: NOW - 1 }), /catalog\.expiresAt: must be after issuedAt/);
    assert.throws(() => validateOfferCatalog({ ...c, expiresAt: 'soon' }), /catalog\.expiresAt: must be a finite number/);
    // Signing an already expired catalog is refused: every device would refuse it.
    await assert.rejects(signOfferCatalog({ ...c, issuedAt: NOW - 2 * DAY, expiresAt: NOW - DAY }, keys.privateJwk), /catalog\.expiresAt: is .*, already past/);
  });

  test('setOffers refuses a catalog more than a day past its expiresAt, naming it and the time; offers() shows nothing once the installed one expires', async () => {
    const clock = { now: NOW };
    const e = await engine(keys.publicJwk, clock);
    try {
      const fresh = await signOfferCatalog({ version: 5, issuedAt: NOW - HOUR, expiresAt: NOW + DAY, currency: 'GBP', offers: [offer('ten')] }, keys.privateJwk);
      // Replayed three days later: refused, whatever the device held (here: nothing).
      clock.now = NOW + 3 * DAY;
      await assert.rejects(e.setOffers(fresh), (err: unknown) => {
        assert.ok(isValidationError(err), String(err));
        assert.equal(err.field, 'catalog.expiresAt');
        assert.match(err.message, new RegExp(`expired at ${new Date(NOW + DAY).toISOString()}.*\\(${new Date(NOW + 3 * DAY).toISOString()}\\)`));
        return true;
      });
      // Within the clock slack (a device whose clock runs fast): taken.
      clock.now = NOW + DAY + CATALOG_EXPIRY_SLACK_MS - 1;
      assert.deepEqual(await e.setOffers(fresh), { offers: 1, neverShown: [] });
      assert.deepEqual((await e.offers({ k: 1, seed: 1 })).map((o) => o.offerId), ['ten']);
      // Once the installed catalog has expired, nothing from it is shown.
      clock.now = NOW + DAY + CATALOG_EXPIRY_SLACK_MS;
      assert.deepEqual(await e.offers({ k: 1, seed: 1 }), []);
      // A catalog without expiresAt never expires (as before).
      const forever = await signOfferCatalog({ version: 6, issuedAt: NOW, currency: 'GBP', offers: [offer('ten')] }, keys.privateJwk);
      clock.now = NOW + 1000 * DAY;
      await e.setOffers(forever);
      assert.equal((await e.offers({ k: 1, seed: 1 })).length, 1);
    } finally {
      await e.close();
    }
  });
});

describe('the page’s version floor (offers.minVersion)', () => {
  test('a catalog below it is refused; it must be a whole number ≥ 0', async () => {
    const keys = await generateOfferKeys();
    const clock = { now: Date.now() };
    const old = await signOfferCatalog({ version: 4, issuedAt: clock.now, currency: 'GBP', offers: [offer('half')] }, keys.privateJwk);
    const current = await signOfferCatalog({ version: 5, issuedAt: clock.now, currency: 'GBP', offers: [offer('ten')] }, keys.privateJwk);
    const e = await engine(keys.publicJwk, clock, { minVersion: 5 });
    try {
      await assert.rejects(e.setOffers(old), (err: unknown) => isValidationError(err) && err.field === 'catalog.version' && /is 4, below the page's offers\.minVersion 5/.test(err.message));
      assert.deepEqual(await e.offers({ k: 2 }), []);
      await e.setOffers(current);
      assert.deepEqual((await e.offers({ k: 2, seed: 1 })).map((o) => o.offerId), ['ten']);
    } finally {
      await e.close();
    }
    for (const bad of [-1, 1.5, '5', Number.NaN, Infinity, null]) {
      await assert.rejects(engine(keys.publicJwk, clock, { minVersion: bad }), (err: unknown) => isValidationError(err) && err.field === 'options.offers.minVersion' && /whole number ≥ 0/.test(err.message), String(bad));
    }
  });
});

describe('the key is chosen by kid', () => {
  let oldKey: OfferKeyPair;
  let newKey: OfferKeyPair;
  before(async () => {
    [oldKey, newKey] = await Promise.all([generateOfferKeys(), generateOfferKeys()]);
  });
  const c: OfferCatalog = { version: 1, issuedAt: 1_700_000_000_000, currency: 'GBP', offers: [] };

  test('a catalog signed by one trusted key under another key’s kid is refused (the old key cannot speak for the new one)', async () => {
    const trusted = [{ ...oldKey.publicJwk, kid: 'old' }, { ...newKey.publicJwk, kid: 'new' }];
    const forged = await signOfferCatalog({ ...c, version: Number.MAX_SAFE_INTEGER }, oldKey.privateJwk, { kid: 'new' });
    await assert.rejects(verifyOfferCatalog(forged, trusted), (e: unknown) => isSignatureError(e) && e.problem === 'mismatch');
    // Each key under its own kid verifies.
    assert.equal((await verifyOfferCatalog(await signOfferCatalog(c, oldKey.privateJwk, { kid: 'old' }), trusted)).version, 1);
    assert.equal((await verifyOfferCatalog(await signOfferCatalog(c, newKey.privateJwk, { kid: 'new' }), trusted)).version, 1);
    // Through the engine (the review's attack): the forged catalog does not pin the device.
    const clock = { now: Date.now() };
    const e = await engine(trusted, clock);
    try {
      await assert.rejects(e.setOffers(forged), (err: unknown) => isSignatureError(err) && err.problem === 'mismatch');
      await e.setOffers(await signOfferCatalog({ ...c, version: 6, issuedAt: clock.now }, newKey.privateJwk, { kid: 'new' }));
    } finally {
      await e.close();
    }
  });

  test('a kid no trusted key carries is refused as unknown-kid; keys without a kid are tried as before', async () => {
    const named = [{ ...oldKey.publicJwk, kid: 'old' }, { ...newKey.publicJwk, kid: 'new' }];
    const stray = await signOfferCatalog(c, newKey.privateJwk, { kid: 'staging' });
    await assert.rejects(verifyOfferCatalog(stray, named), (e: unknown) => isSignatureError(e) && e.problem === 'unknown-kid' && /"staging", which none of the trusted keys has \(their kids: "old", "new"\)/.test(e.message));
    // Without kids on the trusted keys, any key is tried (as before).
    assert.equal((await verifyOfferCatalog(stray, [oldKey.publicJwk, newKey.publicJwk])).version, 1);
    // A kid no key carries: the keys without a kid are tried, not the named ones.
    assert.equal((await verifyOfferCatalog(stray, [{ ...oldKey.publicJwk, kid: 'old' }, newKey.publicJwk])).version, 1);
    await assert.rejects(verifyOfferCatalog(await signOfferCatalog(c, newKey.privateJwk, { kid: 'x' }), [oldKey.publicJwk, { ...newKey.publicJwk, kid: 'new' }]), (e: unknown) => isSignatureError(e) && e.problem === 'mismatch');
    // A catalog without a kid is checked with every key.
    assert.equal((await verifyOfferCatalog(await signOfferCatalog(c, newKey.privateJwk), named)).version, 1);
  });
});

describe('size limits, checked before the signature', () => {
  let keys: OfferKeyPair;
  let signature: string;
  before(async () => {
    keys = await generateOfferKeys();
    signature = (await signOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [] }, keys.privateJwk)).signature;
  });
  const bogus = (catalog: object): SignedOfferCatalog => ({ alg: 'ES256', signature, catalog: catalog as OfferCatalog });
  const limitRefusal = (field: string, limit: string) => (e: unknown) => {
    assert.ok(isValidationError(e), `expected a ValidationError naming ${limit}, got ${String(e)}`);
    assert.equal(e.field, field);
    assert.match(e.message, new RegExp(limit));
    return true;
  };

  test('too many offers, too long a scope, too much JSON: each refused naming its limit', async () => {
    const many = { version: 1, issuedAt: 0, currency: 'GBP', offers: Array.from({ length: MAX_CATALOG_OFFERS + 1 }, (_, i) => offer(`o${i}`)) };
    await assert.rejects(verifyOfferCatalog(bogus(many), keys.publicJwk), limitRefusal('catalog.offers', `MAX_CATALOG_OFFERS \\(${MAX_CATALOG_OFFERS}\\)`));
    const wide = { version: 1, issuedAt: 0, currency: 'GBP', offers: [{ ...offer('wide'), scope: { kind: 'items', itemIds: Array.from({ length: MAX_SCOPE_ENTRIES + 1 }, (_, i) => `i${i}`) } }] };
    await assert.rejects(verifyOfferCatalog(bogus(wide), keys.publicJwk), limitRefusal('catalog.offers[0].scope.itemIds', `MAX_SCOPE_ENTRIES \\(${MAX_SCOPE_ENTRIES}\\)`));
    // The review's 27 MB catalog (60,000 offers but counted by size here: 2,000 offers of 10 items
    // and a long unknown field), refused without canonicalizing it.
    const big = {
      version: 1,
      issuedAt: 0,
      currency: 'GBP',
      offers: Array.from({ length: 2000 }, (_, i) => ({ ...offer(`o${i}`), title: 'x'.repeat(200), scope: { kind: 'items', itemIds: Array.from({ length: 10 }, (_, j) => `item-${i}-${j}`) } })),
      note: 'y'.repeat(MAX_CATALOG_JSON_CHARS),
    };
    await assert.rejects(verifyOfferCatalog(bogus(big), keys.publicJwk), limitRefusal('catalog', `MAX_CATALOG_JSON_CHARS \\(${MAX_CATALOG_JSON_CHARS}`));
    // Nor can the shop sign one.
    await assert.rejects(signOfferCatalog(many as OfferCatalog, keys.privateJwk), limitRefusal('catalog.offers', 'MAX_CATALOG_OFFERS'));
  });

  test('a large realistic catalog is under every limit', async () => {
    const large = {
      version: 1,
      issuedAt: 0,
      currency: 'GBP',
      offers: Array.from({ length: MAX_CATALOG_OFFERS }, (_, i) => ({
        ...offer(`offer-${i}-spring-sale`),
        title: `10% off Scandinavian wooden decorations ${i}`,
        scope: { kind: 'items' as const, itemIds: Array.from({ length: 5 }, (_, j) => `SKU-${i * 5 + j}`) },
        minBasket: 15,
        validFrom: 1_700_000_000_000,
        validUntil: 1_800_000_000_000,
        limits: { maxRedemptions: 2, maxImpressions: 20, coolDownHours: 24 },
      })),
    };
    assert.ok(JSON.stringify(large).length < MAX_CATALOG_JSON_CHARS);
    assert.equal(validateOfferCatalog(large).offers.length, MAX_CATALOG_OFFERS);
  });
});

describe('localrec offers sign --ttl-hours', () => {
  test('sets catalog.expiresAt to now + N hours, inside the signed catalog; refuses a bad N', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'localrec-offers-ttl-'));
    try {
      const keys = await generateOfferKeys();
      writeFileSync(join(dir, 'private.jwk'), JSON.stringify(keys.privateJwk));
      writeFileSync(join(dir, 'offers.json'), JSON.stringify({ version: 2, issuedAt: Date.now() - HOUR, currency: 'GBP', offers: [offer('ten')] }));
      const sign = (...extra: string[]) =>
        spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'offers', 'sign', '--key', join(dir, 'private.jwk'), '--catalog', join(dir, 'offers.json'), '--out', join(dir, 'signed.json'), ...extra], { encoding: 'utf8', timeout: 60_000 });
      const before = Date.now();
      const ok = sign('--ttl-hours', '48');
      assert.equal(ok.status, 0, ok.stderr);
      const signed = JSON.parse(readFileSync(join(dir, 'signed.json'), 'utf8')) as SignedOfferCatalog;
      assert.ok(signed.catalog.expiresAt! >= before + 48 * HOUR && signed.catalog.expiresAt! <= Date.now() + 48 * HOUR, String(signed.catalog.expiresAt));
      assert.match(ok.stderr, /signed 1 offers, version 2, expires \d{4}-/);
      assert.equal((await verifyOfferCatalog(signed, keys.publicJwk)).expiresAt, signed.catalog.expiresAt);
      for (const bad of ['0', '-1', 'soon', '1e9']) {
        const r = sign('--ttl-hours', bad);
        assert.equal(r.status, 1, bad);
        assert.match(r.stderr, /--ttl-hours: /, bad);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
