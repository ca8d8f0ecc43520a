import { ValidationError } from '../errors.js';
import { describeValue } from '../options.js';
import { SNAPSHOT_FEATURES, TABLE_FEATURES, type AffinityFeature, type AffinityOfferStats, type AffinitySnapshot } from './affinity-model.js';
import type { Offer, OfferAudience, OfferCatalog, OfferDiscount, OfferHints, OfferLimits, OfferScope } from './types.js';

/**
 * Check that `input` is a well-formed {@link OfferCatalog} and return a clean copy holding only the
 * known fields. Throws a `ValidationError` whose `field` is the dotted path of the first bad field,
 * e.g. `catalog.offers[2].discount.percent`. Unknown fields are ignored (not copied), so a newer
 * shop server can add fields without older devices refusing the catalog.
 *
 * @example
 * ```ts
 * validateOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [] }); // ok
 * validateOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [{ id: 'x' }] });
 * // throws ValidationError "catalog.offers[0].title: must be a non-empty string, got nothing"
 * ```
 */
export function validateOfferCatalog(input: unknown, field = 'catalog', options: { strictCurrency?: boolean } = {}): OfferCatalog {
  const o = record(input, field);
  checkCatalogLimits(o, field);
  const version = integer(o.version, `${field}.version`, 0);
  const issuedAt = finite(o.issuedAt, `${field}.issuedAt`, 0);
  // Compared between publications of one version (setOffers), and printed as a date.
  if (issuedAt > MAX_TIME_MS) throw new ValidationError(`${field}.issuedAt`, `must be a time in ms since 1970 up to ${MAX_TIME_MS} (year 275760), got ${issuedAt}`);
  let expiresAt: number | undefined;
  if (o.expiresAt !== undefined) {
    expiresAt = time(o.expiresAt, `${field}.expiresAt`);
    if (expiresAt <= issuedAt) throw new ValidationError(`${field}.expiresAt`, `must be after issuedAt (${new Date(issuedAt).toISOString()}), got ${new Date(expiresAt).toISOString()}`);
  }
  const currency = string(o.currency, `${field}.currency`, 16);
  if (!isCurrencyCode(currency, options.strictCurrency ?? false)) {
    throw new ValidationError(`${field}.currency`, `must be an ISO 4217 code such as GBP or EUR, got ${describeValue(currency)}${options.strictCurrency ? ' (not in this platform\'s list of currencies)' : ''}`);
  }
  if (!Array.isArray(o.offers)) throw new ValidationError(`${field}.offers`, 'must be an array');
  const seen = new Set<string>();
  // Array.from, not map: map skips the holes of a sparse array (which structured clone keeps), and
  // they would come back as holes in the "clean" copy instead of being refused.
  const offers = Array.from(o.offers as unknown[], (x, i) => {
    const offer = validateOffer(x, `${field}.offers[${i}]`);
    if (seen.has(offer.id)) throw new ValidationError(`${field}.offers[${i}].id`, `duplicate offer id '${offer.id}'`);
    seen.add(offer.id);
    return offer;
  });
  const catalog: OfferCatalog = { version, issuedAt, currency, offers };
  if (expiresAt !== undefined) catalog.expiresAt = expiresAt;
  if (o.affinity !== undefined) catalog.affinity = validateAffinitySnapshot(o.affinity, `${field}.affinity`, seen);
  return catalog;
}

/** Most offers a catalog may hold ({@link checkCatalogLimits}). */
export const MAX_CATALOG_OFFERS = 10_000;
/** Most item ids or categories one offer's scope may list ({@link checkCatalogLimits}). */
export const MAX_SCOPE_ENTRIES = 10_000;
/**
 * Largest catalog, in characters of its compact JSON as `canonicalJson` writes it (escapes included;
 * {@link checkCatalogLimits}):
 * 8,000,000. A catalog at {@link MAX_CATALOG_OFFERS} with every field set, five items per scope and
 * an affinity snapshot measures 5.4 MB; the 200 offers of docs/OFFERS.md's replay, 0.1 MB.
 */
export const MAX_CATALOG_JSON_CHARS = 8_000_000;

/**
 * Refuses a catalog over the size limits — more than {@link MAX_CATALOG_OFFERS} offers, a scope
 * listing more than {@link MAX_SCOPE_ENTRIES} entries, more than {@link MAX_CATALOG_JSON_CHARS}
 * characters of JSON — with a `ValidationError` naming the limit. Cheap: it stops counting once a
 * limit is passed, so `verifyOfferCatalog` runs it before the catalog is canonicalized and its
 * signature checked (which took 1.5 s for a 27 MB catalog, signed or not). Only what is present is
 * counted; the rest is left to {@link validateOfferCatalog}.
 *
 * @example
 * ```ts
 * checkCatalogLimits({ version: 1, offers: new Array(10_001).fill({}) });
 * // throws ValidationError "catalog.offers: holds 10001 offers, more than MAX_CATALOG_OFFERS (10000) …"
 * ```
 */
export function checkCatalogLimits(input: unknown, field = 'catalog'): void {
  if (typeof input !== 'object' || input === null) return;
  const offers = (input as { offers?: unknown }).offers;
  if (Array.isArray(offers)) {
    if (offers.length > MAX_CATALOG_OFFERS) {
      throw new ValidationError(`${field}.offers`, `holds ${offers.length} offers, more than MAX_CATALOG_OFFERS (${MAX_CATALOG_OFFERS}) a catalog may hold`);
    }
    for (let i = 0; i < offers.length; i++) {
      const scope = (offers[i] as { scope?: unknown } | null | undefined)?.scope;
      if (typeof scope !== 'object' || scope === null) continue;
      for (const list of ['itemIds', 'categories'] as const) {
        const entries = (scope as Record<string, unknown>)[list];
        if (Array.isArray(entries) && entries.length > MAX_SCOPE_ENTRIES) {
          throw new ValidationError(`${field}.offers[${i}].scope.${list}`, `lists ${entries.length} entries, more than MAX_SCOPE_ENTRIES (${MAX_SCOPE_ENTRIES}) per offer; a larger scope is a category`);
        }
      }
    }
  }
  if (jsonLengthOver(input, MAX_CATALOG_JSON_CHARS)) {
    throw new ValidationError(field, `is over MAX_CATALOG_JSON_CHARS (${MAX_CATALOG_JSON_CHARS} characters of JSON, about 8 MB)`);
  }
}

/**
 * Whether the compact JSON of `value` — as `canonicalJson` writes it, escapes included — is
 * longer than `max` characters, found without writing it: the count stops as soon as it passes
 * `max`, so a huge value costs no more than `max`. Iterative, so deep nesting cannot overflow the
 * stack.
 */
function jsonLengthOver(value: unknown, max: number): boolean {
  let size = 0;
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'string') size = stringLength(v, size, max);
    else if (typeof v === 'number') size += Number.isFinite(v) ? String(v).length : 4;
    else if (typeof v === 'boolean') size += v ? 4 : 5;
    else if (typeof v === 'object' && v !== null) {
      if (Array.isArray(v)) {
        // Brackets and commas (at least one character an element) first: a huge array is refused
        // before any of it is pushed.
        size += v.length + 2;
        if (size > max) return true;
        for (let i = 0; i < v.length; i++) stack.push(v[i]);
      } else {
        const keys = Object.keys(v);
        size += keys.length + 2;
        if (size > max) return true;
        for (const k of keys) {
          const x = (v as Record<string, unknown>)[k];
          if (x === undefined) continue;
          // The key as a string, and its colon.
          size = stringLength(k, size, max) + 1;
          if (size > max) return true;
          stack.push(x);
        }
      }
    } else size += 4;
    if (size > max) return true;
  }
  return false;
}

/** Any character JSON writes escaped: control characters, `"`, `\`, and surrogates (lone ones are). */
const ESCAPED = /[\u0000-\u001f"\\\ud800-\udfff]/;

/**
 * `size` plus the length of `s` as JSON writes it (JSON.stringify, which canonicalJson uses): the
 * quotes; `"`, `\`, \b \f \n \r \t as 2 characters; the other control characters as \u00XX (6);
 * a lone surrogate as \udXXX (6); a surrogate pair as itself (2). Stops counting once past `max`.
 */
function stringLength(s: string, size: number, max: number): number {
  size += s.length + 2;
  if (size > max || !ESCAPED.test(s)) return size;
  for (let i = 0; i < s.length && size <= max; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22 || c === 0x5c || c === 0x08 || c === 0x09 || c === 0x0a || c === 0x0c || c === 0x0d) size += 1;
    else if (c < 0x20) size += 5;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) i++;
    else if (c >= 0xd800 && c <= 0xdfff) size += 5;
  }
  return size;
}

/**
 * Validate a learned affinity snapshot (`catalog.affinity`) and return a clean copy. `offerIds`,
 * when given, are the catalog's offers: the snapshot may not describe an offer the catalog lacks
 * (it was fitted for another catalog).
 *
 * @example
 * ```ts
 * validateAffinitySnapshot({ features: ['popularity'], weights: [0, 1], offers: {} }); // ok
 * validateAffinitySnapshot({ features: ['popularity'], weights: [0], offers: {} });
 * // throws ValidationError "affinity.weights: must hold 2 numbers (intercept + 1 feature), got 1"
 * ```
 */
export function validateAffinitySnapshot(input: unknown, field = 'affinity', offerIds?: ReadonlySet<string>): AffinitySnapshot {
  const o = record(input, field);
  if (!Array.isArray(o.features)) throw new ValidationError(`${field}.features`, `must be an array of feature names, got ${show(o.features)}`);
  const features: AffinityFeature[] = [];
  Array.from(o.features as unknown[], (f, j) => {
    const at = `${field}.features[${j}]`;
    if (typeof f !== 'string') throw new ValidationError(at, `must be a feature name, got ${show(f)}`);
    if ((TABLE_FEATURES as readonly string[]).includes(f)) throw new ValidationError(at, `'${f}' needs item → offer tables, which a snapshot does not carry`);
    if (!(SNAPSHOT_FEATURES as readonly string[]).includes(f)) throw new ValidationError(at, `unknown feature ${show(f)}; known: ${SNAPSHOT_FEATURES.join(', ')}`);
    if (features.includes(f as AffinityFeature)) throw new ValidationError(at, `duplicate feature '${f}'`);
    features.push(f as AffinityFeature);
  });
  if (!Array.isArray(o.weights) || o.weights.length !== features.length + 1) {
    const got = Array.isArray(o.weights) ? `${o.weights.length}` : show(o.weights);
    throw new ValidationError(`${field}.weights`, `must hold ${features.length + 1} numbers (intercept + ${features.length} feature${features.length === 1 ? '' : 's'}), got ${got}`);
  }
  const weights = Array.from(o.weights as unknown[], (w, j) => finite(w, `${field}.weights[${j}]`, -Infinity));
  const stats = record(o.offers, `${field}.offers`);
  const offers: Record<string, AffinityOfferStats> = {};
  for (const id of Object.keys(stats)) {
    const at = `${field}.offers[${JSON.stringify(id)}]`;
    if (offerIds && !offerIds.has(id)) throw new ValidationError(at, 'no offer with this id in the catalog (the snapshot was fitted for another catalog)');
    const s = record(stats[id], at);
    // defineProperty: an offer id such as '__proto__' stays an ordinary key.
    Object.defineProperty(offers, id, {
      value: { popularity: share(s.popularity, `${at}.popularity`), recentPopularity: share(s.recentPopularity, `${at}.recentPopularity`), repeatRate: share(s.repeatRate, `${at}.repeatRate`) },
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return { features, weights, offers };
}

function share(v: unknown, field: string): number {
  const n = finite(v, field, 0);
  if (n > 1) throw new ValidationError(field, `must be a share in [0, 1], got ${n}`);
  return n;
}

/** Validate one offer; `field` is the path used in error messages. */
export function validateOffer(input: unknown, field = 'offer'): Offer {
  const o = record(input, field);
  const offer: Offer = {
    id: string(o.id, `${field}.id`, 128),
    title: string(o.title, `${field}.title`, 200),
    discount: discount(o.discount, `${field}.discount`),
    scope: scope(o.scope, `${field}.scope`),
  };
  if (o.minBasket !== undefined) offer.minBasket = finite(o.minBasket, `${field}.minBasket`, 0);
  if (o.validFrom !== undefined) offer.validFrom = time(o.validFrom, `${field}.validFrom`);
  if (o.validUntil !== undefined) offer.validUntil = time(o.validUntil, `${field}.validUntil`);
  if (offer.validFrom !== undefined && offer.validUntil !== undefined && offer.validUntil <= offer.validFrom) {
    throw new ValidationError(`${field}.validUntil`, `must be after validFrom (${offer.validFrom})`);
  }
  if (o.audience !== undefined) offer.audience = audience(o.audience, `${field}.audience`);
  if (o.limits !== undefined) offer.limits = limits(o.limits, `${field}.limits`);
  if (o.hints !== undefined) offer.hints = hints(o.hints, `${field}.hints`);
  return offer;
}

function discount(input: unknown, field: string): OfferDiscount {
  const o = record(input, field);
  if (o.kind === 'percent') {
    const percent = finite(o.percent, `${field}.percent`, 0);
    if (percent <= 0 || percent > 100) throw new ValidationError(`${field}.percent`, `must be in (0, 100], got ${percent}`);
    const d: OfferDiscount = { kind: 'percent', percent };
    if (o.maxAmount !== undefined) d.maxAmount = positive(o.maxAmount, `${field}.maxAmount`);
    return d;
  }
  if (o.kind === 'amount') return { kind: 'amount', amount: positive(o.amount, `${field}.amount`) };
  throw new ValidationError(`${field}.kind`, `must be 'percent' or 'amount', got ${show(o.kind)}`);
}

function scope(input: unknown, field: string): OfferScope {
  const o = record(input, field);
  if (o.kind === 'all') return { kind: 'all' };
  // A repeated id or category would count its purchase probability twice in the scope's affinity.
  if (o.kind === 'items') return { kind: 'items', itemIds: [...new Set(strings(o.itemIds, `${field}.itemIds`, 256))] };
  if (o.kind === 'categories') return { kind: 'categories', categories: [...new Set(strings(o.categories, `${field}.categories`, 256))] };
  throw new ValidationError(`${field}.kind`, `must be 'all', 'items' or 'categories', got ${show(o.kind)}`);
}

function audience(input: unknown, field: string): OfferAudience {
  if (input === 'all' || input === 'new' || input === 'returning') return input;
  throw new ValidationError(field, `must be 'all', 'new' or 'returning', got ${show(input)}`);
}

function limits(input: unknown, field: string): OfferLimits {
  const o = record(input, field);
  const l: OfferLimits = {};
  if (o.maxRedemptions !== undefined) l.maxRedemptions = integer(o.maxRedemptions, `${field}.maxRedemptions`, 1);
  if (o.maxImpressions !== undefined) l.maxImpressions = integer(o.maxImpressions, `${field}.maxImpressions`, 1);
  if (o.coolDownHours !== undefined) {
    l.coolDownHours = finite(o.coolDownHours, `${field}.coolDownHours`, 0);
    if (l.coolDownHours > MAX_COOL_DOWN_HOURS) {
      throw new ValidationError(`${field}.coolDownHours`, `must be at most ${MAX_COOL_DOWN_HOURS} (100 years), got ${l.coolDownHours}; for an offer redeemed once only, use maxRedemptions: 1`);
    }
  }
  return l;
}

function hints(input: unknown, field: string): OfferHints {
  const o = record(input, field);
  const h: OfferHints = {};
  if (o.margin !== undefined) {
    h.margin = finite(o.margin, `${field}.margin`, 0);
    if (h.margin > 1) throw new ValidationError(`${field}.margin`, `must be a fraction in [0, 1], got ${h.margin}`);
  }
  if (o.typicalSpend !== undefined) h.typicalSpend = positive(o.typicalSpend, `${field}.typicalSpend`);
  if (o.cost !== undefined) h.cost = finite(o.cost, `${field}.cost`, 0);
  return h;
}

function record(v: unknown, field: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ValidationError(field, `must be an object, got ${show(v)}`);
  return v as Record<string, unknown>;
}
function string(v: unknown, field: string, max: number): string {
  if (typeof v !== 'string' || v.length === 0) throw new ValidationError(field, `must be a non-empty string, got ${show(v)}`);
  if (v.length > max) throw new ValidationError(field, `must be at most ${max} characters, got ${v.length}`);
  return v;
}
function strings(v: unknown, field: string, max: number): string[] {
  if (!Array.isArray(v) || v.length === 0) throw new ValidationError(field, 'must be a non-empty array of strings');
  return Array.from(v as unknown[], (x, i) => string(x, `${field}[${i}]`, max));
}
function finite(v: unknown, field: string, min: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ValidationError(field, `must be a finite number, got ${show(v)}`);
  if (v < min) throw new ValidationError(field, `must be ≥ ${min}, got ${v}`);
  return v;
}
/** The latest time a Date holds (ms since 1970): later validity times could not even be printed. */
const MAX_TIME_MS = 8.64e15;
/** 100 years: a longer cool-down is a "once only" cap (maxRedemptions: 1), and would overflow a Date. */
const MAX_COOL_DOWN_HOURS = 876_000;
/** A time in ms since 1970 (UTC) that a Date can hold. */
function time(v: unknown, field: string): number {
  const t = finite(v, field, 0);
  if (t > MAX_TIME_MS) throw new ValidationError(field, `must be a time in ms since 1970 up to ${MAX_TIME_MS} (year 275760), got ${t}`);
  return t;
}
function positive(v: unknown, field: string): number {
  const n = finite(v, field, 0);
  if (n === 0) throw new ValidationError(field, 'must be > 0, got 0');
  return n;
}
function integer(v: unknown, field: string, min: number): number {
  const n = finite(v, field, min);
  if (!Number.isInteger(n)) throw new ValidationError(field, `must be an integer, got ${n}`);
  return n;
}
function show(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (typeof v === 'string') return `'${v.length > 40 ? `${v.slice(0, 40)}…` : v}'`;
  if (Array.isArray(v)) return 'an array';
  return v === null ? 'null' : typeof v === 'object' ? 'an object' : String(v);
}

/**
 * Three capital letters Intl accepts as a currency (which is any three capital letters). `strict`
 * (signing, on the shop's server): also in `Intl.supportedValuesOf('currency')` where it exists, so a
 * typo such as QQQ is caught there; devices keep the loose check, since a browser with an older ICU
 * may not list a recent code the server signed.
 */
function isCurrencyCode(c: string, strict: boolean): boolean {
  if (!/^[A-Z]{3}$/.test(c)) return false;
  const supported = (Intl as { supportedValuesOf?: (key: string) => string[] }).supportedValuesOf;
  if (strict && supported && !supported('currency').includes(c)) return false;
  try {
    new Intl.NumberFormat('en', { style: 'currency', currency: c });
    return true;
  } catch {
    return false;
  }
}
