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
import type { Offer, OfferCatalog } from '../offers/types.js';

/**
 * Largest redeem body taken (bytes). A well-formed one is a few fields, under 300 bytes with a
 * 128-character offer id; without a limit the body would be buffered whatever its size.
 */
export const MAX_REDEEM_BODY_BYTES = 4096;

export interface RedeemRequest {
  offerId: string;
  /** Value of the whole order. */
  orderValue: number;
  /** Value of the order's items in the offer's scope (default: the whole order). */
  scopeValue?: number;
  /** Times this customer already redeemed the offer, from the shop's order history (default 0). */
  previousRedemptions?: number;
  /** Whether the customer bought before (for `audience`); unchecked when absent. */
  returning?: boolean;
  /** Time of the order, ms since the epoch (default: now). */
  at?: number;
}

export type RedeemVerdict =
  | { valid: true; offerId: string; discount: number; currency: string }
  | { valid: false; offerId: string; reason: 'unknown-offer' | 'not-yet-valid' | 'expired' | 'below-minimum' | 'audience' | 'cap-reached'; error: string };

/**
 * Checks one redemption. Pure: the route below only parses the body and calls it.
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
  const at = r.at ?? now;
  if (offer.validFrom !== undefined && at < offer.validFrom) return no('not-yet-valid', `valid from ${new Date(offer.validFrom).toISOString()}`);
  if (offer.validUntil !== undefined && at >= offer.validUntil) return no('expired', `expired at ${new Date(offer.validUntil).toISOString()}`);
  if (offer.minBasket !== undefined && r.orderValue < offer.minBasket) return no('below-minimum', `the order must reach ${offer.minBasket}, it is ${r.orderValue}`);
  if (r.returning !== undefined && offer.audience && offer.audience !== 'all' && (offer.audience === 'returning') !== r.returning) {
    return no('audience', `the offer is for ${offer.audience} customers`);
  }
  const cap = offer.limits?.maxRedemptions;
  if (cap !== undefined && (r.previousRedemptions ?? 0) >= cap) return no('cap-reached', `at most ${cap} redemption(s) per customer`);
  const base = Math.min(r.scopeValue ?? r.orderValue, r.orderValue);
  const d = offer.discount;
  const amount = d.kind === 'percent' ? Math.min((base * d.percent) / 100, d.maxAmount ?? Infinity) : Math.min(d.amount, r.orderValue);
  return { valid: true, offerId: offer.id, discount: Math.round(amount * 100) / 100, currency: catalog.currency };
}

function finiteAtLeast0(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0;
}

/** Parses a redeem body; a string naming the first bad field when it is not one. */
export function parseRedeemRequest(body: unknown): RedeemRequest | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'the body must be a JSON object';
  const b = body as Record<string, unknown>;
  if (typeof b.offerId !== 'string' || b.offerId.length === 0 || b.offerId.length > 128) return 'offerId: must be a string of 1 to 128 characters';
  if (!finiteAtLeast0(b.orderValue)) return 'orderValue: must be a finite number ≥ 0';
  for (const k of ['scopeValue', 'at'] as const) if (b[k] !== undefined && !finiteAtLeast0(b[k])) return `${k}: must be a finite number ≥ 0`;
  if (b.previousRedemptions !== undefined && !(Number.isInteger(b.previousRedemptions) && (b.previousRedemptions as number) >= 0)) {
    return 'previousRedemptions: must be a whole number ≥ 0';
  }
  if (b.returning !== undefined && typeof b.returning !== 'boolean') return 'returning: must be true or false';
  return b as unknown as RedeemRequest;
}

/** Adds `POST /v1/offers/redeem` to the app: 200 with the verdict (valid or not), 400 for a bad body, 413 for one over {@link MAX_REDEEM_BODY_BYTES}. */
export function registerRedeem(app: Hono, catalog: OfferCatalog, now: () => number): void {
  const limit = bodyLimit({
    maxSize: MAX_REDEEM_BODY_BYTES,
    onError: (c) => c.json({ error: `a redeem body is at most ${MAX_REDEEM_BODY_BYTES} bytes of JSON`, reason: 'oversized' }, 413),
  });
  app.post('/v1/offers/redeem', limit, async (c: Context) => {
    let body: unknown;
    try {
      body = await c.req.json();
    } catch {
      return c.json({ error: 'the body is not JSON', reason: 'malformed' }, 400);
    }
    const r = parseRedeemRequest(body);
    if (typeof r === 'string') return c.json({ error: r, reason: 'malformed' }, 400);
    return c.json(checkRedemption(catalog, r, now()), 200);
  });
}
