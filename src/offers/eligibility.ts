/**
 * Eligibility: which published offers this shopper may see right now. Each rule is a small pure
 * function that returns why the offer is not eligible, or `null` when it passes, so a caller (or a
 * test) can tell exactly which rule removed an offer.
 */
import type { OfferStats } from './offer-history.js';
import type { Offer } from './types.js';

/** What the rules look at. */
export interface EligibilityContext {
  /** Now, ms since the epoch. */
  now: number;
  /** This shopper's impressions and redemptions per offer id. */
  history: ReadonlyMap<string, OfferStats>;
  /** Whether the shopper has bought before (see `isReturningShopper`). */
  returning: boolean;
  /** Value of the current cart, when the page knows it; `undefined` when unknown. */
  cartValue?: number;
}

/** A rule: `null` when the offer passes, otherwise a short reason it does not. */
export type EligibilityRule = (offer: Offer, ctx: EligibilityContext) => string | null;

const HOUR_MS = 3_600_000;

/** The offer is inside its validity window `[validFrom, validUntil)`. @example validityWindow({ …, validUntil: 10 }, { now: 10, … }) // 'expired' */
export const validityWindow: EligibilityRule = (offer, { now }) => {
  if (offer.validFrom !== undefined && now < offer.validFrom) return 'not yet valid';
  if (offer.validUntil !== undefined && now >= offer.validUntil) return 'expired';
  return null;
};

/** `new` offers only for shoppers who never bought, `returning` only for those who did. */
export const audience: EligibilityRule = (offer, { returning }) => {
  if (offer.audience === 'new' && returning) return 'only for new shoppers';
  if (offer.audience === 'returning' && !returning) return 'only for returning shoppers';
  return null;
};

/**
 * When the cart is known, it must reach the minimum basket. With no cart information the offer
 * stays eligible: the shop checks the minimum when the order is placed.
 */
export const minimumBasket: EligibilityRule = (offer, { cartValue }) => {
  if (offer.minBasket === undefined || cartValue === undefined) return null;
  return cartValue >= offer.minBasket ? null : `cart below the minimum basket of ${offer.minBasket}`;
};

/** Per-shopper cap on redemptions. */
export const redemptionCap: EligibilityRule = (offer, { history }) => {
  const max = offer.limits?.maxRedemptions;
  if (max === undefined) return null;
  return (history.get(offer.id)?.redemptions ?? 0) >= max ? `already redeemed ${max} times` : null;
};

/** Per-shopper cap on impressions (frequency cap). */
export const impressionCap: EligibilityRule = (offer, { history }) => {
  const max = offer.limits?.maxImpressions;
  if (max === undefined) return null;
  return (history.get(offer.id)?.impressions ?? 0) >= max ? `already shown ${max} times` : null;
};

/** After a redemption the offer rests for `coolDownHours`. */
export const coolDown: EligibilityRule = (offer, { history, now }) => {
  const hours = offer.limits?.coolDownHours;
  const last = history.get(offer.id)?.lastRedeemedAt;
  if (hours === undefined || last === undefined) return null;
  return now - last < hours * HOUR_MS ? `cooling down until ${new Date(last + hours * HOUR_MS).toISOString()}` : null;
};

/** All rules, by name, in the order they are checked. */
export const ELIGIBILITY_RULES: Readonly<Record<string, EligibilityRule>> = {
  validityWindow,
  audience,
  minimumBasket,
  redemptionCap,
  impressionCap,
  coolDown,
};

/**
 * The first rule the offer fails, as `{ rule, why }`, or `null` when it is eligible.
 *
 * @example
 * ```ts
 * whyIneligible(offer, { now: Date.now(), history: offerHistory(events), returning: true });
 * // null, or e.g. { rule: 'coolDown', why: 'cooling down until 2024-06-02T10:00:00.000Z' }
 * ```
 */
export function whyIneligible(offer: Offer, ctx: EligibilityContext): { rule: string; why: string } | null {
  for (const [rule, check] of Object.entries(ELIGIBILITY_RULES)) {
    const why = check(offer, ctx);
    if (why !== null) return { rule, why };
  }
  return null;
}
