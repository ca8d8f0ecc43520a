import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { canonicalJson } from '../../src/offers/canonical-json.js';
import { isSignatureError, SignatureError } from '../../src/offers/signature-error.js';
import { checkVerifyKeys, generateOfferKeys, signOfferCatalog, verifyOfferCatalog, verifySignedCatalog, type OfferKeyPair } from '../../src/offers/signing.js';
import type { OfferCatalog, SignedOfferCatalog } from '../../src/offers/types.js';
import { isValidationError } from '../../src/errors.js';

const catalog: OfferCatalog = {
  version: 3,
  issuedAt: 1_700_000_000_000,
  currency: 'GBP',
  offers: [
    { id: 'mugs10', title: '10% off mugs', discount: { kind: 'percent', percent: 10, maxAmount: 5 }, scope: { kind: 'categories', categories: ['mug'] }, minBasket: 15 },
    { id: 'bag2', title: '£2 off the jute bag', discount: { kind: 'amount', amount: 2 }, scope: { kind: 'items', itemIds: ['b1'] }, audience: 'new' },
  ],
};

const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

async function refusal(p: Promise<unknown>): Promise<SignatureError> {
  try {
    await p;
  } catch (e) {
    assert.ok(isSignatureError(e), `expected a SignatureError, got ${String(e)}`);
    return e;
  }
  assert.fail('the catalog was accepted');
}

describe('offer catalog signing', () => {
  let keys: OfferKeyPair;
  let other: OfferKeyPair;
  let signed: SignedOfferCatalog;
  before(async () => {
    [keys, other] = await Promise.all([generateOfferKeys(), generateOfferKeys()]);
    signed = await signOfferCatalog(catalog, keys.privateJwk, { kid: 'k1' });
  });

  test('keygen makes EC P-256 JWKs; only the private one has d', () => {
    assert.equal(keys.publicJwk.kty, 'EC');
    assert.equal(keys.publicJwk.crv, 'P-256');
    assert.equal(keys.publicJwk.d, undefined);
    assert.equal(typeof keys.privateJwk.d, 'string');
  });

  test('round trip through JSON: the verified catalog equals the signed one', async () => {
    const back = await verifyOfferCatalog(clone(signed), keys.publicJwk);
    assert.deepEqual(back, catalog);
    assert.equal(signed.alg, 'ES256');
    assert.equal(signed.kid, 'k1');
  });

  test('the catalog returned is the one that verified, even if the object given changes while it is checked', async () => {
    const mine = clone(signed);
    const checking = verifyOfferCatalog(mine, keys.publicJwk);
    mine.catalog.offers[0]!.discount = { kind: 'percent', percent: 100 };
    mine.catalog.offers[0]!.title = '100% off everything';
    assert.deepEqual(await checking, catalog);
    // A getter that answers the signed value while the bytes are made (before the call returns),
    // another one later.
    const tricky = clone(signed);
    let late = false;
    Object.defineProperty(tricky.catalog.offers[1]!.discount, 'amount', { enumerable: true, get: () => (late ? 500 : 2) });
    const checkingTricky = verifyOfferCatalog(tricky, keys.publicJwk);
    late = true;
    assert.deepEqual(await checkingTricky, catalog);
    // The envelope given back (what a device stores) is the one that verified: it verifies again.
    const changing = clone(signed);
    const both = verifySignedCatalog(changing, keys.publicJwk);
    changing.kid = 'k2';
    changing.signature = 'x';
    const { envelope } = await both;
    assert.equal(envelope.kid, 'k1');
    assert.deepEqual(await verifyOfferCatalog(envelope, keys.publicJwk), catalog);
  });

  test('key order in the published file does not matter (canonical JSON)', async () => {
    const reordered = { signature: signed.signature, kid: signed.kid, catalog: { offers: signed.catalog.offers.map((o) => Object.fromEntries(Object.entries(o).reverse())), currency: 'GBP', issuedAt: catalog.issuedAt, version: 3 }, alg: 'ES256' };
    assert.deepEqual(await verifyOfferCatalog(reordered, keys.publicJwk), catalog);
  });

  test('a private JWK is refused where the public one belongs (a page given it would let anyone sign offers)', async () => {
    const err = await refusal(verifyOfferCatalog(signed, keys.privateJwk));
    assert.equal(err.problem, 'bad-key');
    assert.match(err.message, /is the private key \(it has 'd'\): verify with the public JWK/);
    // Also among other keys, one of which verifies: named, not skipped.
    assert.match((await refusal(verifyOfferCatalog(signed, [keys.publicJwk, keys.privateJwk]))).message, /the key at index 1 is the private key/);
    assert.throws(() => checkVerifyKeys([keys.publicJwk, keys.privateJwk], 'options.offers.publicKey'), (e: unknown) => isValidationError(e) && e.field === 'options.offers.publicKey[1]');
    assert.doesNotThrow(() => checkVerifyKeys(keys.publicJwk, 'options.offers.publicKey'));
  });

  test('a changed field is refused as a mismatch', async () => {
    const tampered = clone(signed);
    (tampered.catalog.offers[0]!.discount as { percent: number }).percent = 90;
    const e = await refusal(verifyOfferCatalog(tampered, keys.publicJwk));
    assert.equal(e.problem, 'mismatch');
    assert.match(e.message, /changed after signing or signed with another key/);
  });

  test('an added offer is refused', async () => {
    const tampered = clone(signed);
    tampered.catalog.offers = [...tampered.catalog.offers, { id: 'all50', title: '50% off everything', discount: { kind: 'percent', percent: 50 }, scope: { kind: 'all' } }];
    assert.equal((await refusal(verifyOfferCatalog(tampered, keys.publicJwk))).problem, 'mismatch');
  });

  test('a changed kid is refused (the envelope is signed, not only the catalog)', async () => {
    assert.equal((await refusal(verifyOfferCatalog({ ...clone(signed), kid: 'k2' }, keys.publicJwk))).problem, 'mismatch');
  });

  test('a kid that is not a string is refused at signing (every device would refuse the catalog)', async () => {
    for (const kid of [123, null, { a: 1 }]) {
      await assert.rejects(signOfferCatalog(catalog, keys.privateJwk, { kid: kid as never }), (e: unknown) => isValidationError(e) && e.field === 'options.kid' && /must be a string/.test(e.message), String(kid));
    }
  });

  test('the wrong key is refused', async () => {
    assert.equal((await refusal(verifyOfferCatalog(signed, other.publicJwk))).problem, 'mismatch');
  });

  test('any of several published keys may verify (key rotation)', async () => {
    assert.deepEqual(await verifyOfferCatalog(signed, [other.publicJwk, keys.publicJwk]), catalog);
  });

  test('a missing signature is refused as unsigned', async () => {
    const { signature: _drop, ...unsigned } = clone(signed);
    const e = await refusal(verifyOfferCatalog(unsigned, keys.publicJwk));
    assert.equal(e.problem, 'unsigned');
    assert.equal(e.name, 'SignatureError');
    assert.match(e.message, /not signed/);
  });

  test('an empty or null signature is no signature: unsigned, not malformed', async () => {
    for (const signature of ['', null]) assert.equal((await refusal(verifyOfferCatalog({ ...clone(signed), signature }, keys.publicJwk))).problem, 'unsigned', String(signature));
  });

  test('a bare catalog (no envelope) is refused as unsigned', async () => {
    assert.equal((await refusal(verifyOfferCatalog(clone(catalog), keys.publicJwk))).problem, 'unsigned');
  });

  test('a malformed signature or algorithm is refused as malformed', async () => {
    assert.equal((await refusal(verifyOfferCatalog({ ...clone(signed), signature: 'not base64url!' }, keys.publicJwk))).problem, 'malformed');
    assert.equal((await refusal(verifyOfferCatalog({ ...clone(signed), signature: 'AAAA' }, keys.publicJwk))).problem, 'malformed');
    assert.equal((await refusal(verifyOfferCatalog({ ...clone(signed), alg: 'none' }, keys.publicJwk))).problem, 'malformed');
    assert.equal((await refusal(verifyOfferCatalog('x', keys.publicJwk))).problem, 'malformed');
  });

  test('a key list verifies with any key that imports: malformed ones are skipped, bad-key only when none imports', async () => {
    const rsa = { kty: 'RSA', n: 'AQAB', e: 'AQAB' } as JsonWebKey;
    const offCurve = { ...keys.publicJwk, x: keys.publicJwk.y, y: keys.publicJwk.x };
    assert.equal((await verifyOfferCatalog(clone(signed), [rsa, offCurve, keys.publicJwk])).version, catalog.version);
    assert.equal((await refusal(verifyOfferCatalog(clone(signed), [rsa, offCurve]))).problem, 'bad-key');
    const other = await generateOfferKeys();
    assert.equal((await refusal(verifyOfferCatalog(clone(signed), [rsa, other.publicJwk]))).problem, 'mismatch');
  });

  test('signing with a public key is refused as bad-key', async () => {
    assert.equal((await refusal(signOfferCatalog(catalog, keys.publicJwk))).problem, 'bad-key');
  });

  test('signing an invalid catalog throws a ValidationError naming the field', async () => {
    const bad = clone(catalog);
    (bad.offers[1]!.discount as { amount: number }).amount = -1;
    await assert.rejects(signOfferCatalog(bad, keys.privateJwk), (e: unknown) => isValidationError(e) && e.field === 'catalog.offers[1].discount.amount');
  });

  test('the guard works on a plain object rebuilt after crossing the worker boundary', () => {
    assert.equal(isSignatureError({ name: 'SignatureError', message: 'x' }), true);
    assert.equal(isSignatureError(new Error('x')), false);
  });
});

describe('canonicalJson', () => {
  test('sorts keys at every depth, drops undefined, keeps array order', () => {
    assert.equal(canonicalJson({ b: 1, a: { d: [3, { z: 1, y: undefined, x: 'é' }], c: null } }), '{"a":{"c":null,"d":[3,{"x":"é","z":1}]},"b":1}');
  });
  test('refuses values JSON cannot carry', () => {
    assert.throws(() => canonicalJson({ a: Number.NaN }), /\$\.a: NaN/);
    assert.throws(() => canonicalJson({ a: 1n }), TypeError);
  });
  test('a hole in an array is null, as JSON.stringify writes it (it wrote `[1,,3]`, not JSON)', () => {
    // eslint-disable-next-line no-sparse-arrays
    const sparse = [1, , 3];
    assert.equal(canonicalJson({ a: sparse }), '{"a":[1,null,3]}');
    assert.equal(canonicalJson(sparse), JSON.stringify(sparse));
  });
});
