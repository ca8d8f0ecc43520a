/**
 * Signing and verifying offer catalogs with ECDSA P-256 / SHA-256 through WebCrypto
 * (`globalThis.crypto.subtle`), which browsers, workers and Node ≥ 20 all provide.
 *
 * What is signed is the canonical JSON ({@link canonicalJson}) of the envelope without its
 * signature, `{ alg, catalog, kid? }`, so the algorithm and key id are covered too and a signature
 * does not depend on key order or whitespace in the published file.
 */
import { base64urlDecode, base64urlEncode } from './base64url.js';
import { ValidationError } from '../errors.js';
import { describeValue } from '../options.js';
import { canonicalJson } from './canonical-json.js';
import { SignatureError } from './signature-error.js';
import type { Jwk, OfferCatalog, SignedOfferCatalog } from './types.js';
import { checkCatalogLimits, validateOfferCatalog } from './validate-catalog.js';

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN_PARAMS = { name: 'ECDSA', hash: 'SHA-256' } as const;

/** A key pair as JSON Web Keys, ready to be written to files. */
export interface OfferKeyPair {
  publicJwk: Jwk;
  privateJwk: Jwk;
}

function subtle(): SubtleCrypto {
  const s = globalThis.crypto?.subtle;
  if (!s) throw new SignatureError('bad-key', 'WebCrypto (crypto.subtle) is not available; it needs a secure context (https or localhost)');
  return s;
}

/**
 * Make a new ECDSA P-256 key pair for signing offer catalogs. The private key stays on the shop's
 * server; the public key is given to `setOffers`/`verifyOfferCatalog`.
 *
 * @example
 * ```ts
 * const { publicJwk, privateJwk } = await generateOfferKeys();
 * ```
 */
export async function generateOfferKeys(): Promise<OfferKeyPair> {
  const pair = await subtle().generateKey(ALGORITHM, true, ['sign', 'verify']);
  const [publicJwk, privateJwk] = await Promise.all([
    subtle().exportKey('jwk', pair.publicKey),
    subtle().exportKey('jwk', pair.privateKey),
  ]);
  return { publicJwk, privateJwk };
}

/** The exact bytes the signature covers. */
export function signedPayload(envelope: Omit<SignedOfferCatalog, 'signature'>): Uint8Array<ArrayBuffer> {
  const { alg, kid, catalog } = envelope;
  return new TextEncoder().encode(canonicalJson({ alg, kid, catalog }));
}

/**
 * Why a private key is refused where a public one is expected: the key a page is given is public
 * (anyone can read it), and with the private one anyone could sign offers.
 */
const PRIVATE_KEY_TO_VERIFY = "is the private key (it has 'd'): verify with the public JWK (keys/public.jwk); the private key stays on the server, since anyone who has it can sign offers";

/**
 * Refuses a private JWK (one with `d`) among the keys given to verify catalogs, naming it: with a
 * list, a private key would otherwise be skipped quietly while another verifies.
 */
export function checkVerifyKeys(keys: unknown, field: string): void {
  const list = Array.isArray(keys) ? keys : [keys];
  const at = (i: number) => (Array.isArray(keys) ? `${field}[${i}]` : field);
  const i = privateKeyAt(list);
  if (i >= 0) throw new ValidationError(at(i), PRIVATE_KEY_TO_VERIFY);
  const j = badKidAt(list);
  if (j >= 0) throw new ValidationError(`${at(j)}.kid`, `${BAD_KEY_KID}, got ${describeValue((list[j] as Jwk).kid)}`);
  // A key that cannot be a P-256 public JWK ('abc', {}, an RSA key, keygen's whole pair) is a setup
  // mistake: said now, by name, not as a SignatureError at the first setOffers() that reads like a
  // tampered catalog. In a list, one such key is skipped at verification (a retired key pasted
  // wrong must not stop the others), so only a list with none that could be one is refused.
  const well = list.map(publicKeyShape);
  // (Never the value itself: an object here may be keygen's pair, private key included.)
  if (!Array.isArray(keys) && well[0] !== null) throw new ValidationError(field, `${well[0]}, got ${shapeOf(keys)}`);
  if (Array.isArray(keys) && list.length === 0) throw new ValidationError(field, 'must hold at least one public key (an EC P-256 JWK)');
  if (Array.isArray(keys) && well.every((w) => w !== null)) throw new ValidationError(`${field}[0]`, `${well[0]} (and no other key in the list is one)`);
}

/**
 * What a refused key is, without its contents: an object by its keys, a string by its length (a
 * JWK pasted as JSON text may be the private one, whose `d` the first characters would show).
 */
function shapeOf(k: unknown): string {
  if (typeof k === 'object' && k !== null) return `an object with keys ${Object.keys(k).slice(0, 8).join(', ') || '(none)'}`;
  if (typeof k === 'string') return `a string of ${k.length} characters (a JWK is an object: JSON.parse it first)`;
  return describeValue(k);
}

/**
 * Why `k` cannot be an EC P-256 public JWK (kty 'EC', crv 'P-256', x and y the 43 base64url
 * characters of 32 bytes), or null when its shape is one (whether it imports is WebCrypto's call).
 */
function publicKeyShape(k: unknown): string | null {
  if (typeof k !== 'object' || k === null || Array.isArray(k)) return "must be an EC P-256 public JWK (an object: { kty: 'EC', crv: 'P-256', x, y })";
  const j = k as Jwk;
  if (j.kty !== 'EC' || j.crv !== 'P-256') return `must be an EC P-256 public JWK (kty 'EC', crv 'P-256'; this one has kty ${describeValue(j.kty)}, crv ${describeValue(j.crv)})`;
  const coord = (v: unknown) => typeof v === 'string' && /^[A-Za-z0-9_-]{43}$/.test(v);
  if (!coord(j.x) || !coord(j.y)) return 'must be an EC P-256 public JWK whose x and y are 43 base64url characters each (the 32-byte coordinates)';
  return null;
}

/**
 * Why a trusted key whose `kid` is present but not a string is refused: it would count as a key
 * without a kid, and so be tried for every catalog whose kid no other key carries.
 */
const BAD_KEY_KID = "must be a string (the key id an envelope's kid names), or left out";

/** Index of the first key (given to verify) whose `kid` is present but not a string; −1 if none. */
function badKidAt(keys: readonly unknown[]): number {
  return keys.findIndex((k) => typeof k === 'object' && k !== null && (k as Jwk).kid !== undefined && typeof (k as Jwk).kid !== 'string');
}

/**
 * The longest `kid` an envelope may carry (characters). Checked before anything else is done with
 * it (choosing the key, canonicalizing the payload, an error message naming it): a key id is a
 * short label such as "2025-06".
 */
export const MAX_KID_CHARS = 256;

/**
 * The trusted keys a catalog signed under `kid` is checked with. The kid is signed, but only
 * choosing the key by it binds the two: otherwise, while a page trusts [old, new], the old key
 * (compromised, say) could sign a catalog labelled "new" — or labelled nothing — with a huge
 * version and keep the new key's catalogs out. So when `kid` is set and trusted keys carry kids,
 * only the key(s) with that kid are tried; when none carries it, only the keys without a kid (as
 * before kids were matched), and with none of those either the catalog is refused (`unknown-kid`).
 * A catalog without a kid is tried only with the keys without a kid, and is refused (`unknown-kid`)
 * when every trusted key has one.
 */
function keysForKid(keys: readonly Jwk[], kid: string | undefined): readonly Jwk[] {
  const kidOf = (k: Jwk) => (typeof k === 'object' && k !== null && typeof k.kid === 'string' ? k.kid : undefined);
  const named = kid === undefined ? [] : keys.filter((k) => kidOf(k) === kid);
  if (named.length > 0) return named;
  const unnamed = keys.filter((k) => kidOf(k) === undefined);
  if (unnamed.length > 0) return unnamed;
  const known = keys.map(kidOf).filter((k): k is string => k !== undefined);
  const theirs = `(their kids: ${known.map((k) => JSON.stringify(k)).join(', ')})`;
  if (kid === undefined) throw new SignatureError('unknown-kid', `the offer catalog names no key id (kid), and every trusted key has one ${theirs}: sign it with --kid`);
  throw new SignatureError('unknown-kid', `the offer catalog was signed under key id ${JSON.stringify(kid)}, which none of the trusted keys has ${theirs}`);
}

/** Index of the first private JWK (one with `d`) in a list of keys given to verify; −1 if none. */
function privateKeyAt(keys: readonly unknown[]): number {
  return keys.findIndex((k) => typeof k === 'object' && k !== null && (k as Jwk).d !== undefined);
}

async function importKey(jwk: Jwk, use: 'sign' | 'verify'): Promise<CryptoKey> {
  if (typeof jwk !== 'object' || jwk === null || jwk.kty !== 'EC' || jwk.crv !== 'P-256') {
    throw new SignatureError('bad-key', `the ${use === 'sign' ? 'private' : 'public'} key must be an EC P-256 JWK (kty 'EC', crv 'P-256')`);
  }
  if (use === 'sign' && typeof jwk.d !== 'string') throw new SignatureError('bad-key', "the signing key is a public key; sign with the private JWK (the one with 'd')");
  const material: Jwk = use === 'verify' ? { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, ext: true } : jwk;
  try {
    return await subtle().importKey('jwk', material, ALGORITHM, false, [use]);
  } catch (cause) {
    throw new SignatureError('bad-key', `the key could not be imported: ${(cause as Error).message}`, { cause });
  }
}

/**
 * Sign a catalog with the shop's private key. The catalog is validated first, so a shop cannot
 * publish a catalog that devices would refuse.
 *
 * @example
 * ```ts
 * const signed = await signOfferCatalog(catalog, privateJwk, { kid: '2024-06' });
 * await fetch('/offers.json', { method: 'PUT', body: JSON.stringify(signed) });
 * ```
 */
export async function signOfferCatalog(catalog: OfferCatalog, privateJwk: Jwk, options: { kid?: string } = {}): Promise<SignedOfferCatalog> {
  const clean = validateOfferCatalog(catalog, 'catalog', { strictCurrency: true });
  // Past this point nothing may be signed that devices would refuse (a catalog over the size
  // limits is refused before its signature is even checked).
  checkCatalogLimits(clean);
  // Already expired: every device would refuse it (setOffers), or soon.
  if (clean.expiresAt !== undefined && clean.expiresAt <= Date.now()) {
    throw new ValidationError('catalog.expiresAt', `is ${new Date(clean.expiresAt).toISOString()}, already past (now ${new Date().toISOString()}): devices would refuse the catalog; set a later expiresAt (offers sign --ttl-hours)`);
  }
  const envelope: Omit<SignedOfferCatalog, 'signature'> = { alg: 'ES256', catalog: clean };
  if (options.kid !== undefined) {
    // Devices refuse a kid that is not a string: refused here, before anything is published.
    if (typeof options.kid !== 'string') throw new ValidationError('options.kid', `must be a string, got ${describeValue(options.kid)}`);
    if (options.kid.length > MAX_KID_CHARS) throw new ValidationError('options.kid', `must be at most ${MAX_KID_CHARS} characters (MAX_KID_CHARS), got ${options.kid.length}`);
    envelope.kid = options.kid;
  }
  const key = await importKey(privateJwk, 'sign');
  const sig = new Uint8Array(await subtle().sign(SIGN_PARAMS, key, signedPayload(envelope)));
  return { ...envelope, signature: base64urlEncode(sig) };
}

/**
 * Check a signed catalog against the shop's public key(s) and return the catalog when it verifies.
 *
 * Throws a `SignatureError` when the signature is missing (`problem: 'unsigned'`), malformed
 * (`'malformed'`), or does not match under any key (`'mismatch'`: a changed field or the wrong
 * key), and a `ValidationError` naming the field when a correctly signed catalog is not valid.
 *
 * @example
 * ```ts
 * const catalog = await verifyOfferCatalog(await (await fetch('/offers.json')).json(), publicJwk);
 * ```
 */
export async function verifyOfferCatalog(signed: unknown, publicJwk: Jwk | readonly Jwk[]): Promise<OfferCatalog> {
  return (await verifySignedCatalog(signed, publicJwk)).catalog;
}

/**
 * {@link verifyOfferCatalog}, also giving back the envelope exactly as it verified: `alg`, `kid`,
 * the signed catalog read back from the verified bytes (before validation fills in anything) and
 * the signature. A device stores that envelope, and checks it again when it reads it back.
 */
export async function verifySignedCatalog(signed: unknown, publicJwk: Jwk | readonly Jwk[]): Promise<{ catalog: OfferCatalog; envelope: SignedOfferCatalog }> {
  if (typeof signed !== 'object' || signed === null || Array.isArray(signed)) {
    throw new SignatureError('malformed', 'a signed offer catalog must be an object { alg, catalog, signature }');
  }
  const s = signed as Partial<Record<keyof SignedOfferCatalog, unknown>>;
  if (s.signature === undefined || s.signature === null || s.signature === '') {
    throw new SignatureError('unsigned', 'the offer catalog is not signed (no signature); only catalogs signed by the shop are accepted');
  }
  if (s.alg !== 'ES256') throw new SignatureError('malformed', `unsupported signature algorithm ${describeValue(s.alg)}; expected 'ES256'`);
  if (s.kid !== undefined && typeof s.kid !== 'string') throw new SignatureError('malformed', 'kid must be a string');
  // Before anything else is done with it (choosing the key, the payload, an error naming it).
  if (typeof s.kid === 'string' && s.kid.length > MAX_KID_CHARS) throw new SignatureError('malformed', `kid must be at most ${MAX_KID_CHARS} characters (MAX_KID_CHARS), got ${s.kid.length}`);
  // Read once, here: the envelope given back is made of these, not of the caller's object after
  // the awaits below (it may change meanwhile).
  const kid = s.kid as string | undefined;
  const signature = s.signature;
  const sig = typeof signature === 'string' ? base64urlDecode(signature) : null;
  if (!sig || sig.length !== 64) throw new SignatureError('malformed', 'the signature must be base64url of 64 bytes (ECDSA P-256, r ‖ s)');
  if (typeof s.catalog !== 'object' || s.catalog === null) throw new SignatureError('malformed', 'the signed envelope has no catalog object');
  // Before the catalog is canonicalized (the costly part: 1.5 s for a 27 MB one, signed or not):
  // too many offers, too long a scope, too much JSON are refused, naming the limit.
  checkCatalogLimits(s.catalog);

  let payload: Uint8Array<ArrayBuffer>;
  try {
    payload = signedPayload({ alg: 'ES256', kid, catalog: s.catalog as OfferCatalog });
  } catch (cause) {
    throw new SignatureError('malformed', `the catalog is not plain JSON: ${(cause as Error).message}`, { cause });
  }
  const given = Array.isArray(publicJwk) ? publicJwk : [publicJwk as Jwk];
  if (given.length === 0) throw new SignatureError('bad-key', 'no public key given to verify the offer catalog');
  // Before any key verifies: a private key among them must be noticed, not skipped.
  const priv = privateKeyAt(given);
  if (priv >= 0) throw new SignatureError('bad-key', `the key${given.length > 1 ? ` at index ${priv}` : ''} ${PRIVATE_KEY_TO_VERIFY}`);
  // Nor may a key with a kid that is not a string pass for one without a kid (tried for any kid).
  const badKid = badKidAt(given);
  if (badKid >= 0) throw new SignatureError('bad-key', `the key${given.length > 1 ? ` at index ${badKid}` : ''}'s kid ${BAD_KEY_KID}, got ${describeValue((given[badKid] as Jwk).kid)}`);
  const keys = keysForKid(given, kid);
  // Any one key that verifies is enough: one that cannot be imported (a retired key pasted wrong)
  // is skipped, and only when none imports is that the error.
  let badKey: unknown;
  let imported = 0;
  for (const jwk of keys) {
    let key: CryptoKey;
    try {
      key = await importKey(jwk, 'verify');
    } catch (e) {
      badKey ??= e;
      continue;
    }
    imported++;
    if (await subtle().verify(SIGN_PARAMS, key, sig, payload)) {
      // Read back from the bytes that verified, not from `s.catalog`: the caller's object may have
      // changed while this awaited (or be a getter that answers differently).
      const text = new TextDecoder().decode(payload);
      const signedCatalog = (JSON.parse(text) as { catalog: OfferCatalog }).catalog;
      const catalog = validateOfferCatalog((JSON.parse(text) as { catalog: unknown }).catalog);
      const envelope: SignedOfferCatalog = { alg: 'ES256', ...(kid !== undefined ? { kid } : {}), catalog: signedCatalog, signature: signature as string };
      return { catalog, envelope };
    }
  }
  if (imported === 0) throw badKey;
  throw new SignatureError('mismatch', 'the offer catalog signature does not match: it was changed after signing or signed with another key');
}
