/**
 * What a signed catalog can and cannot do to a device (docs/OFFERS.md, "What the signature
 * protects"): a signed expiry, the page's version floor, the key chosen by kid, the size limits
 * checked before the signature, and `offers sign --ttl-hours`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { Engine, OFFERS_KEY } from '../../src/engine/engine.js';
import { isValidationError } from '../../src/errors.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { CATALOG_EXPIRY_SLACK_MS } from '../../src/offers/freshness.js';
import { isSignatureError } from '../../src/offers/signature-error.js';
import { withTtl } from '../../src/offers/offers-command.js';
import { generateOfferKeys, MAX_KID_CHARS, signOfferCatalog, verifyOfferCatalog, type OfferKeyPair } from '../../src/offers/signing.js';
import type { Jwk, OfferCatalog, SignedOfferCatalog } from '../../src/offers/types.js';
import { canonicalJson } from '../../src/offers/canonical-json.js';
import { checkCatalogLimits, MAX_CATALOG_JSON_CHARS, MAX_CATALOG_OFFERS, MAX_SCOPE_ENTRIES, validateOfferCatalog } from '../../src/offers/validate-catalog.js';
import '../../src/model/tf.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const items = [{ id: 'm1', title: 'Mug', category: 'mug', price: 10 }];
const offer = (id: string) => ({ id, title: `${id} off`, discount: { kind: 'percent' as const, percent: 10 }, scope: { kind: 'all' as const }, hints: { margin: 0.9, typicalSpend: 100 } });

function engine(publicKey: Jwk | Jwk[], clock: { now: number }, extra: { minVersion?: unknown } = {}, store = new MemoryEventStore({ maxEvents: 100, maxAgeDays: 36_500 })): Promise<Engine> {
  return Engine.create({
    catalog: { items },
    backend: 'cpu',
    autoTrainEvery: 0,
    store,
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
      // The slack is a day (FUTURE_SLACK_MS, as far as an event may be stamped ahead).
      assert.equal(CATALOG_EXPIRY_SLACK_MS, DAY);
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

describe('re-signing with a new expiry (offers sign --ttl-hours, run daily)', () => {
  let keys: OfferKeyPair;
  const NOW = Date.now();
  before(async () => {
    keys = await generateOfferKeys();
  });
  const file = { version: 5, issuedAt: NOW - DAY, currency: 'GBP', offers: [offer('ten')] };

  test('each signing is a new publication: day 2 installs over a stored day 1, also after day 1 expired, and day 1 replayed is refused', async () => {
    // What `offers sign --ttl-hours 48` signs on two days from the same file.
    const day1 = await signOfferCatalog(withTtl(file, 48, NOW) as OfferCatalog, keys.privateJwk);
    const day2 = await signOfferCatalog(withTtl(file, 48, NOW + 49 * HOUR) as OfferCatalog, keys.privateJwk);
    assert.deepEqual([day1.catalog.issuedAt, day1.catalog.expiresAt], [NOW, NOW + 48 * HOUR]);
    assert.deepEqual([day2.catalog.issuedAt, day2.catalog.expiresAt], [NOW + 49 * HOUR, NOW + 97 * HOUR]);
    const clock = { now: NOW };
    const store = new MemoryEventStore({ maxEvents: 100, maxAgeDays: 36_500 });
    const e = await engine(keys.publicJwk, clock, {}, store);
    try {
      await e.setOffers(day1);
      assert.equal((await store.getMeta<SignedOfferCatalog>(OFFERS_KEY))?.catalog.issuedAt, NOW, 'stored (personalization consent)');
      // Day 1 has expired (more than the day of slack), and the re-sign comes late.
      clock.now = NOW + 73 * HOUR;
      assert.deepEqual(await e.offers({ k: 1, seed: 1 }), []);
      assert.deepEqual(await e.setOffers(day2), { offers: 1, neverShown: [] });
      assert.deepEqual((await e.offers({ k: 1, seed: 1 })).map((o) => o.offerId), ['ten']);
      assert.equal((await store.getMeta<SignedOfferCatalog>(OFFERS_KEY))?.catalog.issuedAt, NOW + 49 * HOUR);
    } finally {
      await e.close();
    }
    // A later visit (nothing in memory), before day 1's expiry: day 1 replayed is an earlier publication.
    clock.now = NOW + HOUR;
    const later = await engine(keys.publicJwk, clock, {}, store);
    try {
      await assert.rejects(later.setOffers(day1), (err: unknown) => isValidationError(err) && err.field === 'catalog.issuedAt' && /before the installed catalog's .* of the same version 5/.test(err.message));
      assert.deepEqual((await later.offers({ k: 1, seed: 1 })).map((o) => o.offerId), ['ten']);
    } finally {
      await later.close();
    }
  });

  test('a file issued in the future is stamped 1 ms after it; a bad issuedAt is left for validation', () => {
    const ahead = withTtl({ ...file, issuedAt: NOW + HOUR }, 48, NOW) as OfferCatalog;
    assert.deepEqual([ahead.issuedAt, ahead.expiresAt], [NOW + HOUR + 1, NOW + 48 * HOUR]);
    assert.throws(() => validateOfferCatalog(withTtl({ ...file, issuedAt: 'today' }, 48, NOW)), /catalog\.issuedAt/);
    assert.throws(() => withTtl([file], 48, NOW), /catalog: must be an object/);
  });

  test('a catalog that differs from the installed one only by a later expiresAt is a renewal; an earlier one, or other contents, is refused', async () => {
    const c = { ...file, issuedAt: NOW, expiresAt: NOW + DAY };
    const first = await signOfferCatalog(c, keys.privateJwk);
    const renewed = await signOfferCatalog({ ...c, expiresAt: NOW + 2 * DAY }, keys.privateJwk);
    const store = new MemoryEventStore({ maxEvents: 100, maxAgeDays: 36_500 });
    const clock = { now: NOW + HOUR };
    const e = await engine(keys.publicJwk, clock, {}, store);
    const differ = (err: unknown) => isValidationError(err) && err.field === 'catalog.issuedAt' && /whose offers differ/.test(err.message);
    try {
      await e.setOffers(first);
      assert.deepEqual(await e.setOffers(renewed), { offers: 1, neverShown: [] });
      // The earlier signing replayed over the renewal.
      await assert.rejects(e.setOffers(first), differ);
      // A later expiry with other contents, or without expiresAt, is another catalog.
      await assert.rejects(e.setOffers(await signOfferCatalog({ ...c, expiresAt: NOW + 3 * DAY, offers: [offer('half')] }, keys.privateJwk)), differ);
      const { expiresAt: _, ...forever } = c;
      await assert.rejects(e.setOffers(await signOfferCatalog(forever, keys.privateJwk)), differ);
    } finally {
      await e.close();
    }
    // Against the stored one too.
    const later = await engine(keys.publicJwk, clock, {}, store);
    try {
      await assert.rejects(later.setOffers(first), differ);
      assert.equal((await store.getMeta<SignedOfferCatalog>(OFFERS_KEY))?.catalog.expiresAt, NOW + 2 * DAY);
      assert.deepEqual(await later.setOffers(await signOfferCatalog({ ...c, expiresAt: NOW + 3 * DAY }, keys.privateJwk)), { offers: 1, neverShown: [] });
    } finally {
      await later.close();
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
    // 0 is a whole number ≥ 0: a floor every catalog passes.
    const floor0 = await engine(keys.publicJwk, clock, { minVersion: 0 });
    try {
      await floor0.setOffers(await signOfferCatalog({ version: 0, issuedAt: clock.now, currency: 'GBP', offers: [offer('zero')] }, keys.privateJwk));
      assert.deepEqual((await floor0.offers({ k: 2, seed: 1 })).map((o) => o.offerId), ['zero']);
    } finally {
      await floor0.close();
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
  });

  test('a catalog without a kid is tried only with the keys without one: the old key cannot sign a kid-less catalog while every trusted key is named', async () => {
    const named = [{ ...oldKey.publicJwk, kid: 'old' }, { ...newKey.publicJwk, kid: 'new' }];
    const forged = await signOfferCatalog({ ...c, version: 9_000_000_000 }, oldKey.privateJwk);
    await assert.rejects(verifyOfferCatalog(forged, named), (e: unknown) => isSignatureError(e) && e.problem === 'unknown-kid' && /names no key id \(kid\), and every trusted key has one \(their kids: "old", "new"\)/.test(e.message));
    // Through the engine: refused, and the new key's catalogs still install.
    const clock = { now: Date.now() };
    const e = await engine(named, clock);
    try {
      await assert.rejects(e.setOffers(forged), (err: unknown) => isSignatureError(err) && err.problem === 'unknown-kid');
      await e.setOffers(await signOfferCatalog({ ...c, version: 6, issuedAt: clock.now }, newKey.privateJwk, { kid: 'new' }));
    } finally {
      await e.close();
    }
    // With an unnamed key among them (a key from before kids): only that one is tried.
    assert.equal((await verifyOfferCatalog(await signOfferCatalog(c, oldKey.privateJwk), [oldKey.publicJwk, { ...newKey.publicJwk, kid: 'new' }])).version, 1);
    await assert.rejects(verifyOfferCatalog(await signOfferCatalog(c, newKey.privateJwk), [oldKey.publicJwk, { ...newKey.publicJwk, kid: 'new' }]), (e: unknown) => isSignatureError(e) && e.problem === 'mismatch');
    // No kids anywhere: as before.
    assert.equal((await verifyOfferCatalog(await signOfferCatalog(c, newKey.privateJwk), [oldKey.publicJwk, newKey.publicJwk])).version, 1);
  });

  test('a trusted key whose kid is not a string is refused (it would be tried for any kid)', async () => {
    const odd = [{ ...oldKey.publicJwk, kid: 5 as never }, { ...newKey.publicJwk, kid: 'new' }];
    const forged = await signOfferCatalog({ ...c, version: 9_000_000_000 }, oldKey.privateJwk, { kid: 'anything' });
    await assert.rejects(verifyOfferCatalog(forged, odd), (e: unknown) => isSignatureError(e) && e.problem === 'bad-key' && /key at index 0's kid must be a string .*got 5/.test(e.message));
    await assert.rejects(engine(odd, { now: Date.now() }), (e: unknown) => isValidationError(e) && e.field === 'options.offers.publicKey[0].kid' && /must be a string/.test(e.message));
    await assert.rejects(engine({ ...oldKey.publicJwk, kid: null as never }, { now: Date.now() }), (e: unknown) => isValidationError(e) && e.field === 'options.offers.publicKey.kid');
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

  test('MAX_CATALOG_JSON_CHARS counts what canonical JSON writes: escaped characters, in values and keys, count as written', async () => {
    const base = { version: 1, issuedAt: 0, currency: 'GBP', offers: [] };
    const overhead = canonicalJson({ ...base, note: '' }).length;
    // Each of these is written as 2 or 6 characters: a string of them a sixth or half the limit long is over it.
    for (const [ch, width] of [['\u0001', 6], ['\u001f', 6], ['\ud800', 6], ['\udfff', 6], ['"', 2], ['\\', 2], ['\n', 2]] as const) {
      const note = ch.repeat(Math.ceil(MAX_CATALOG_JSON_CHARS / width));
      assert.ok(canonicalJson({ ...base, note }).length > MAX_CATALOG_JSON_CHARS);
      await assert.rejects(verifyOfferCatalog(bogus({ ...base, note }), keys.publicJwk), limitRefusal('catalog', 'MAX_CATALOG_JSON_CHARS'), JSON.stringify(ch));
      // Just under the limit as written: taken by the limit (and refused only by the signature).
      const under = ch.repeat(Math.floor((MAX_CATALOG_JSON_CHARS - overhead - 1) / width));
      assert.doesNotThrow(() => checkCatalogLimits({ ...base, note: under }), JSON.stringify(ch));
    }
    // In a key too.
    assert.throws(() => checkCatalogLimits({ ...base, extra: { ['\u0002'.repeat(MAX_CATALOG_JSON_CHARS / 4)]: 1 } }), /MAX_CATALOG_JSON_CHARS/);
    // A surrogate pair is written as itself (2 characters), and other characters above U+001F as one.
    assert.doesNotThrow(() => checkCatalogLimits({ ...base, note: '\ud83d\ude00'.repeat(Math.floor((MAX_CATALOG_JSON_CHARS - overhead - 1) / 2)) }));
    assert.doesNotThrow(() => checkCatalogLimits({ ...base, note: '€\u007f\u2028'.repeat(Math.floor((MAX_CATALOG_JSON_CHARS - overhead - 1) / 3)) }));
    // The count is exact (but for a character per object): at the limit as written, over by 2.
    const mixed = 'a"\\\u0001\ud800\ud83d\ude00\t';
    const perMixed = JSON.stringify(mixed).length - 2;
    const reps = Math.floor((MAX_CATALOG_JSON_CHARS - overhead - 8) / perMixed);
    const fill = 'x'.repeat(MAX_CATALOG_JSON_CHARS - overhead - reps * perMixed - 1);
    assert.equal(canonicalJson({ ...base, note: mixed.repeat(reps) + fill }).length, MAX_CATALOG_JSON_CHARS - 1);
    assert.doesNotThrow(() => checkCatalogLimits({ ...base, note: mixed.repeat(reps) + fill }));
    assert.throws(() => checkCatalogLimits({ ...base, note: `${mixed.repeat(reps) + fill}xx` }), /MAX_CATALOG_JSON_CHARS/);
    // true, false and null count as the 4, 5 and 4 characters written (the array and its object one more each).
    const flags = Array.from({ length: 999 }, (_, i) => [true, false, null][i % 3]);
    const sized = (length: number) => {
      const c = { ...base, flags, note: '' };
      return { ...c, note: 'x'.repeat(length - canonicalJson(c).length) };
    };
    assert.equal(canonicalJson(sized(MAX_CATALOG_JSON_CHARS - 2)).length, MAX_CATALOG_JSON_CHARS - 2);
    assert.doesNotThrow(() => checkCatalogLimits(sized(MAX_CATALOG_JSON_CHARS - 2)));
    assert.throws(() => checkCatalogLimits(sized(MAX_CATALOG_JSON_CHARS + 1)), /MAX_CATALOG_JSON_CHARS/);
  });

  test('an envelope’s kid is at most MAX_KID_CHARS characters, checked before anything else is done with it', async () => {
    const long = 'k'.repeat(MAX_KID_CHARS + 1);
    const started = performance.now();
    // Over the size limit too, and all trusted keys named: the kid is what is refused first.
    await assert.rejects(verifyOfferCatalog({ ...bogus({ version: 1, issuedAt: 0, currency: 'GBP', offers: [], note: 'y'.repeat(MAX_CATALOG_JSON_CHARS) }), kid: 'k'.repeat(40_000_000) }, [{ ...keys.publicJwk, kid: 'a' }]), (e: unknown) => isSignatureError(e) && e.problem === 'malformed' && /kid must be at most 256 characters .*got 40000000/.test(e.message) && e.message.length < 200);
    assert.ok(performance.now() - started < 1000);
    await assert.rejects(signOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [] }, keys.privateJwk, { kid: long }), (e: unknown) => isValidationError(e) && e.field === 'options.kid' && /at most 256/.test(e.message));
    const atLimit = await signOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [] }, keys.privateJwk, { kid: long.slice(1) });
    assert.equal((await verifyOfferCatalog(atLimit, [{ ...keys.publicJwk, kid: long.slice(1) }])).version, 1);
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
      // And issued now (a new publication), not at the file's issuedAt an hour ago.
      assert.ok(signed.catalog.issuedAt >= before && signed.catalog.issuedAt <= Date.now(), String(signed.catalog.issuedAt));
      assert.match(ok.stderr, /signed 1 offers, version 2, expires \d{4}-/);
      assert.equal((await verifyOfferCatalog(signed, keys.publicJwk)).expiresAt, signed.catalog.expiresAt);
      for (const bad of ['0', '-1', 'soon', '1e9', '0x10']) {
        const r = sign('--ttl-hours', bad);
        assert.equal(r.status, 1, bad);
        // One rule in every message: 0 and -1 were told different ranges (stop 40).
        assert.match(r.stderr, /--ttl-hours: must be a number of hours > 0 and at most 87600 \(10 years\)/, bad);
      }
      // A key file that is JSON but no private P-256 key: the message names --key and the file.
      writeFileSync(join(dir, 'bad.jwk'), JSON.stringify({ kty: 'EC', crv: 'P-256', d: 'x' }));
      const badKey = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'offers', 'sign', '--key', join(dir, 'bad.jwk'), '--catalog', join(dir, 'offers.json'), '--out', join(dir, 'signed2.json')], { encoding: 'utf8', timeout: 60_000 });
      assert.equal(badKey.status, 1);
      assert.match(badKey.stderr, /--key: .*bad\.jwk: the key could not be imported/);
      assert.ok(!existsSync(join(dir, 'signed2.json')), 'nothing written');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
