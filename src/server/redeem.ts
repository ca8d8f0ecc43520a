/**
 * The shop's side of an offer: `POST /v1/offers/redeem` checks a redemption at checkout against the
 * catalog the shop signed — the offer exists, is within its validity window, the order reaches its
 * minimum, the shopper is in its audience and under its redemption cap — and says how much it takes
 * off. The shop's checkout backend calls it with facts the shop already has about its own order
 * (order value, in-scope value, how often this customer redeemed the offer); the device sends
 * nothing here, so the shop learns only what the shopper chooses to redeem.
 */
import type { Context, Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { ValidationError } from '../errors.js';
import type { Offer, OfferCatalog } from '../offers/types.js';
import type { Storage } from './storage.js';

/**
 * Largest redeem body taken (bytes). A well-formed one is a few fields, under 300 bytes with a
 * 128-character offer id; without a limit the body would be buffered whatever its size.
 */
export const MAX_REDEEM_BODY_BYTES = 4096;

export interface RedeemRequest {
  offerId: string;
  /** Value of the whole order. */
  orderValue: number;
  /**
   * Value of the order's items in the offer's scope; required unless the offer's scope is `all`
   * (then the whole order). A discount applies to it and never exceeds it.
   */
  scopeValue?: number;
  /** Times this customer already redeemed the offer, from the shop's order history; required when the offer has `limits.maxRedemptions`. */
  previousRedemptions?: number;
  /** When this customer last redeemed the offer (ms since the epoch); required when the offer has `limits.coolDownHours` and `previousRedemptions` > 0. */
  lastRedeemedAt?: number;
  /** Whether the customer bought before; required when the offer's audience is `new` or `returning`. */
  returning?: boolean;
  /**
   * Time of the order, ms since the epoch (default: the server's clock). The caller is the shop's
   * own checkout backend, which may check an order placed earlier; it is trusted like every field.
   */
  at?: number;
}

export type RedeemVerdict =
  | { valid: true; offerId: string; discount: number; currency: string }
  | {
      valid: false;
      offerId: string;
      reason: 'unknown-offer' | 'missing-facts' | 'not-yet-valid' | 'expired' | 'below-minimum' | 'not-in-scope' | 'audience' | 'cap-reached' | 'cooling-down';
      error: string;
    };

/** Digits after the point of `currency`'s minor unit (2 for GBP, 0 for JPY; 2 when unknown). */
export function currencyDigits(currency: string): number {
  try {
    return new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits ?? 2;
  } catch {
    return 2;
  }
}

/**
 * Rounds an amount to the currency's minor unit, half up. The small nudge keeps amounts such as
 * 1.005, stored as 1.00499999…, from rounding down.
 */
export function roundToMinorUnit(amount: number, currency: string): number {
  const f = 10 ** currencyDigits(currency);
  return Math.round(amount * f + 1e-9) / f;
}

/**
 * The facts about the order and the customer that `offer` needs, missing from `r`: an absent one
 * must not loosen the check (no `returning` would let a new-customer offer through, no
 * `scopeValue` would discount a whole order that holds nothing in scope).
 */
function missingFacts(offer: Offer, r: RedeemRequest): string[] {
  const missing: string[] = [];
  if (offer.scope.kind !== 'all' && r.scopeValue === undefined) missing.push(`scopeValue (the scope is ${offer.scope.kind})`);
  if (offer.audience !== undefined && offer.audience !== 'all' && r.returning === undefined) missing.push(`returning (the offer is for ${offer.audience} customers)`);
  if (offer.limits?.maxRedemptions !== undefined && r.previousRedemptions === undefined) missing.push('previousRedemptions (the offer has a redemption cap)');
  if (offer.limits?.coolDownHours !== undefined && r.lastRedeemedAt === undefined) {
    // Without either fact the check cannot tell a first redemption from one inside the cool-down.
    if (r.previousRedemptions === undefined) {
      if (offer.limits.maxRedemptions === undefined) missing.push('previousRedemptions or lastRedeemedAt (the offer has a cool-down)');
    }
    else if (r.previousRedemptions > 0) missing.push('lastRedeemedAt (the offer has a cool-down and was redeemed before)');
  }
  return missing;
}

/**
 * Checks one redemption. Pure: the route below only parses the body and calls it. Every fact is
 * the shop's own (its order, its order history), so every fact is trusted; the ones an offer's
 * rules need must be given (`missing-facts` otherwise).
 *
 * @example
 * ```ts
 * checkRedemption(catalog, { offerId: 'mugs10', orderValue: 30, scopeValue: 12 }, Date.now());
 * // { valid: true, offerId: 'mugs10', discount: 1.2, currency: 'GBP' }
 * ```
 */
export function checkRedemption(catalog: OfferCatalog, r: RedeemRequest, now: number): RedeemVerdict {
  const offer: Offer | undefined = catalog.offers.find((o) => o.id === r.offerId);
  const no = (reason: Extract<RedeemVerdict, { valid: false }>['reason'], error: string): RedeemVerdict => ({ valid: false, offerId: r.offerId, reason, error });
  if (!offer) return no('unknown-offer', `no offer "${r.offerId}" in catalog version ${catalog.version}`);
  const missing = missingFacts(offer, r);
  if (missing.length) return no('missing-facts', `offer "${offer.id}" needs ${missing.join(', ')}`);
  const at = r.at ?? now;
  if (offer.validFrom !== undefined && at < offer.validFrom) return no('not-yet-valid', `valid from ${new Date(offer.validFrom).toISOString()}`);
  if (offer.validUntil !== undefined && at >= offer.validUntil) return no('expired', `expired at ${new Date(offer.validUntil).toISOString()}`);
  if (offer.minBasket !== undefined && r.orderValue < offer.minBasket) return no('below-minimum', `the order must reach ${offer.minBasket}, it is ${r.orderValue}`);
  const base = offer.scope.kind === 'all' ? r.orderValue : Math.min(r.scopeValue!, r.orderValue);
  if (!(base > 0)) return no('not-in-scope', `the order has nothing in the offer's scope (${offer.scope.kind})`);
  if (offer.audience && offer.audience !== 'all' && (offer.audience === 'returning') !== r.returning) {
    return no('audience', `the offer is for ${offer.audience} customers`);
  }
  const cap = offer.limits?.maxRedemptions;
  if (cap !== undefined && r.previousRedemptions! >= cap) return no('cap-reached', `at most ${cap} redemption(s) per customer`);
  const coolDown = offer.limits?.coolDownHours;
  // A given last redemption counts whatever previousRedemptions says: a fact left out or
  // contradicting another never loosens a rule.
  if (coolDown !== undefined && r.lastRedeemedAt !== undefined && at - r.lastRedeemedAt < coolDown * 3_600_000) {
    return no('cooling-down', `redeemed ${((at - r.lastRedeemedAt) / 3_600_000).toFixed(1)} h ago; the offer has a ${coolDown} h cool-down`);
  }
  const d = offer.discount;
  // Both kinds apply to the in-scope items and never exceed them, nor the offer's maximum: the
  // amount is rounded to the minor unit first, then held under those caps (rounded down), so
  // rounding never lifts it past one.
  const ceiling = Math.min(base, d.kind === 'percent' ? (d.maxAmount ?? Infinity) : d.amount);
  const raw = d.kind === 'percent' ? (base * d.percent) / 100 : d.amount;
  const discount = Math.min(roundToMinorUnit(raw, catalog.currency), floorToMinorUnit(ceiling, catalog.currency));
  if (!Number.isFinite(discount)) return no('not-in-scope', `the discount on this order's in-scope value (${base}) is not a finite amount`);
  if (!(discount > 0)) return no('not-in-scope', `the discount on this order's in-scope value (${base}) rounds to 0 ${catalog.currency}`);
  return { valid: true, offerId: offer.id, discount, currency: catalog.currency };
}

/** `amount` rounded down to the currency's minor unit (a cap is never exceeded by rounding). */
function floorToMinorUnit(amount: number, currency: string): number {
  if (amount === Infinity) return Infinity;
  const f = 10 ** currencyDigits(currency);
  return Math.floor(amount * f + 1e-9) / f;
}

/** The largest `orderValue` or `scopeValue` a redeem request may give. */
export const MAX_MONEY = 1e12;

function finiteAtLeast0(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0;
}

/** Parses a redeem body; a string naming the first bad field when it is not one. */
export function parseRedeemRequest(body: unknown): RedeemRequest | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'the body must be a JSON object';
  const b = body as Record<string, unknown>;
  const known = ['offerId', 'orderValue', 'scopeValue', 'previousRedemptions', 'lastRedeemedAt', 'returning', 'at'];
  const unknown = Object.keys(b).find((k) => !known.includes(k));
  if (unknown !== undefined) return `${unknown}: is not a field of a redeem request (known: ${known.join(', ')})`;
  if (typeof b.offerId !== 'string' || b.offerId.length === 0 || b.offerId.length > 128) return 'offerId: must be a string of 1 to 128 characters';
  // Money up to 10¹² (a trillion in the catalog's currency): beyond it a percentage of it could
  // overflow, and no order is worth that much.
  for (const k of ['orderValue', 'scopeValue'] as const) {
    if ((k === 'orderValue' || b[k] !== undefined) && !(finiteAtLeast0(b[k]) && b[k] <= MAX_MONEY)) return `${k}: must be a number from 0 to ${MAX_MONEY}`;
  }
  for (const k of ['at', 'lastRedeemedAt'] as const) if (b[k] !== undefined && !finiteAtLeast0(b[k])) return `${k}: must be a finite number ≥ 0`;
  if (b.previousRedemptions !== undefined && !(Number.isInteger(b.previousRedemptions) && (b.previousRedemptions as number) >= 0)) {
    return 'previousRedemptions: must be a whole number ≥ 0';
  }
  if (b.returning !== undefined && typeof b.returning !== 'boolean') return 'returning: must be true or false';
  return b as unknown as RedeemRequest;
}

/**
 * Meta key (the store's table of small settings: {@link Storage.readMeta}) under which `serve
 * --offers` records the newest catalog it has loaded, `{"version":5,"issuedAt":…}`: a later start
 * (or SIGHUP reload) with an older one is refused unless allowed ({@link RedeemCatalog}).
 */
export const OFFERS_FLOOR_KEY = 'offers-catalog';

/** Version and issue time: what orders two catalogs (a higher version, or the same one issued later, is newer). */
type CatalogStamp = Pick<OfferCatalog, 'version' | 'issuedAt'>;

function olderThan(a: CatalogStamp, b: CatalogStamp): boolean {
  return a.version < b.version || (a.version === b.version && a.issuedAt < b.issuedAt);
}

function describeStamp(c: CatalogStamp): string {
  return `version ${c.version} (issued ${new Date(c.issuedAt).toISOString()})`;
}

/** The stamp stored under {@link OFFERS_FLOOR_KEY}, or undefined when there is none (or it is not one). */
function parseStamp(text: string | undefined): CatalogStamp | undefined {
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as Partial<CatalogStamp>;
    if (typeof v.version === 'number' && Number.isFinite(v.version) && typeof v.issuedAt === 'number' && Number.isFinite(v.issuedAt)) return { version: v.version, issuedAt: v.issuedAt };
  } catch {
    // not ours: replaced by the next write
  }
  return undefined;
}

/**
 * The catalog `POST /v1/offers/redeem` answers from, which `localrec serve` replaces on SIGHUP
 * (a withdrawn offer stops being redeemable without a restart). {@link install} records the newest
 * catalog loaded in the server's store and refuses an older one unless allowed, so that starting
 * (or reloading) with yesterday's file by mistake is an error, not a silent return of withdrawn offers.
 *
 * @example
 * ```ts
 * const offers = new RedeemCatalog(await verifyOfferCatalog(signed, publicJwk));
 * await createServer({ ..., offers });   // checks the store's floor, serves the catalog
 * await offers.install(newer, storage);  // later: answer from `newer`
 * ```
 */
export class RedeemCatalog {
  #catalog: OfferCatalog;
  constructor(catalog: OfferCatalog) {
    this.#catalog = catalog;
  }

  /** The catalog redemptions are checked against now. */
  get catalog(): OfferCatalog {
    return this.#catalog;
  }

  /**
   * Refuses `next` (a `ValidationError` naming both versions) when it is older than the newest
   * catalog the store records, unless `allowOlder`; changes nothing. Gives back that floor
   * (undefined when none). `createServer` runs it before it opens the rounds, and
   * {@link install} once the start succeeded.
   */
  async check(next: OfferCatalog, storage: Pick<Storage, 'readMeta'>, options: { allowOlder?: boolean; field?: string; allowFlag?: string } = {}): Promise<Pick<OfferCatalog, 'version' | 'issuedAt'> | undefined> {
    const floor = storage.readMeta ? parseStamp(await storage.readMeta(OFFERS_FLOOR_KEY)) : undefined;
    refuseOlder(next, floor, options);
    return floor;
  }

  /**
   * Checks `next` against the newest catalog the store records (a `ValidationError` naming both
   * versions when it is older, unless `allowOlder`), records it when it is the newest, and answers
   * from it from now on. The record is raised atomically ({@link Storage.writeMetaIf}: a
   * compare-and-set that never lowers it, also when processes sharing a database reload at once);
   * a store with only `readMeta`/`writeMeta` gets a read then a write, and one without meta records
   * (a custom adapter) keeps no floor. Gives back the catalog it replaced and the floor the store
   * held (undefined when none).
   */
  async install(
    next: OfferCatalog,
    storage: Pick<Storage, 'readMeta' | 'writeMeta' | 'writeMetaIf'>,
    options: { allowOlder?: boolean; field?: string; allowFlag?: string } = {},
  ): Promise<{ previous: OfferCatalog; floor: Pick<OfferCatalog, 'version' | 'issuedAt'> | undefined }> {
    const stamp = JSON.stringify({ version: next.version, issuedAt: next.issuedAt });
    // Written only when no newer catalog is recorded: so when `next` is refused, nothing was written.
    const raise = (stored: string | undefined) => {
      const floor = parseStamp(stored);
      return !floor || olderThan(floor, next);
    };
    let floor: CatalogStamp | undefined;
    if (storage.writeMetaIf) {
      floor = parseStamp((await storage.writeMetaIf(OFFERS_FLOOR_KEY, stamp, raise)).stored);
    } else if (storage.readMeta) {
      const stored = await storage.readMeta(OFFERS_FLOOR_KEY);
      floor = parseStamp(stored);
      if (raise(stored)) await storage.writeMeta?.(OFFERS_FLOOR_KEY, stamp);
    } else {
      await storage.writeMeta?.(OFFERS_FLOOR_KEY, stamp);
    }
    refuseOlder(next, floor, options);
    const previous = this.#catalog;
    this.#catalog = next;
    return { previous, floor };
  }
}

/**
 * Options of {@link RedeemCatalog.install} and {@link RedeemCatalog.check}: `allowOlder` uses a
 * catalog older than the store's newest anyway (a deliberate rollback; the record stays at the
 * newest); `field` and `allowFlag` are what the refusal names (default `options.offers` and
 * `options.offersAllowOlder`).
 */
type InstallOptions = { allowOlder?: boolean; field?: string; allowFlag?: string };

function refuseOlder(next: CatalogStamp, floor: CatalogStamp | undefined, options: InstallOptions): void {
  if (floor && olderThan(next, floor) && !options.allowOlder) {
    throw new ValidationError(
      options.field ?? 'options.offers',
      `the offer catalog is ${describeStamp(next)}, older than ${describeStamp(floor)}, the newest this server's store has loaded: its withdrawn offers would be redeemable again; give the newer catalog, or pass ${options.allowFlag ?? 'options.offersAllowOlder'} to use this one anyway`,
    );
  }
}

/** What `POST /v1/offers/redeem` answers with 200: the verdict, and the version of the catalog it was checked against. */
export type RedeemAnswer = RedeemVerdict & { catalogVersion: number };

/**
 * Adds `POST /v1/offers/redeem` to the app: 200 with the verdict (valid or not), 400 for a bad
 * body, 413 for one over {@link MAX_REDEEM_BODY_BYTES}; every answer carries `catalogVersion`, the
 * version of the catalog it was checked against (`offers` may be replaced while the server runs).
 */
export function registerRedeem(app: Hono, offers: OfferCatalog | RedeemCatalog, now: () => number): void {
  const current = () => (offers instanceof RedeemCatalog ? offers.catalog : offers);
  const limit = bodyLimit({
    maxSize: MAX_REDEEM_BODY_BYTES,
    onError: (c) => c.json({ error: `a redeem body is at most ${MAX_REDEEM_BODY_BYTES} bytes of JSON`, reason: 'oversized', catalogVersion: current().version }, 413),
  });
  app.post('/v1/offers/redeem', limit, async (c: Context) => {
    // One catalog for the whole request, even if a reload replaces it meanwhile.
    const catalog = current();
    const catalogVersion = catalog.version;
    let body: unknown;
    try {
      body = await c.req.json();
    } catch {
      return c.json({ error: 'the body is not JSON', reason: 'malformed', catalogVersion }, 400);
    }
    const r = parseRedeemRequest(body);
    if (typeof r === 'string') return c.json({ error: r, reason: 'malformed', catalogVersion }, 400);
    const verdict = checkRedemption(catalog, r, now());
    // A request without the facts the offer's rules need is the caller's mistake, not a refusal.
    if (!verdict.valid && verdict.reason === 'missing-facts') return c.json({ error: verdict.error, reason: 'malformed', catalogVersion }, 400);
    const answer: RedeemAnswer = { ...verdict, catalogVersion };
    return c.json(answer, 200);
  });
}
