/**
 * Types of personalized offers. Everything here is plain data that crosses the worker boundary and
 * is serialized into the signed catalog, so there are no classes, functions or Dates.
 */
import type { CitedEventType } from '../types.js';
import type { AffinitySnapshot } from './affinity-model.js';
export type { AffinityFeature, AffinityOfferStats, AffinitySnapshot } from './affinity-model.js';

/** How much an offer takes off: a percentage of the in-scope spend, or a fixed amount. */
export type OfferDiscount =
  | {
      kind: 'percent';
      /** Percent off the in-scope items, (0, 100]. */
      percent: number;
      /** Optional ceiling on the discount per order, in the shop's currency. */
      maxAmount?: number | undefined;
    }
  | {
      kind: 'amount';
      /** Fixed amount off the in-scope items (at most their value), in the shop's currency, > 0. */
      amount: number;
    };

/**
 * A JSON Web Key (RFC 7517) as WebCrypto exports one: for offer catalogs an ECDSA P-256 key
 * (`kty: 'EC'`, `crv: 'P-256'`, `x`, `y`; a private key also `d`). Declared here, not taken from
 * the DOM library's `JsonWebKey`, so that a project without that library (Node, `lib: ["ES2022"]`)
 * still checks it; a DOM `JsonWebKey` is one.
 */
export interface Jwk {
  kty?: string;
  crv?: string;
  x?: string;
  y?: string;
  d?: string;
  alg?: string;
  ext?: boolean;
  key_ops?: string[];
  use?: string;
  kid?: string;
}

/** Which products an offer applies to. */
export type OfferScope =
  | { kind: 'all' }
  | { kind: 'items'; itemIds: readonly string[] }
  | { kind: 'categories'; categories: readonly string[] };

/** Who may see an offer: shoppers with no past purchase (`new`), with one (`returning`), or `all`. */
export type OfferAudience = 'all' | 'new' | 'returning';

/** Per-shopper frequency limits, checked against the shopper's local impression/redemption history. */
export interface OfferLimits {
  /** Never show the offer again once the shopper has redeemed it this many times. */
  maxRedemptions?: number | undefined;
  /** Never show the offer again once it has been shown this many times. */
  maxImpressions?: number | undefined;
  /** After a redemption, hide the offer for this many hours (cool-down). */
  coolDownHours?: number | undefined;
}

/** The shop's estimate of what an in-scope purchase is worth, used to score offers. */
export interface OfferHints {
  /** Gross margin as a fraction of the price, [0, 1]. Default 0.3. */
  margin?: number | undefined;
  /**
   * Typical in-scope spend of an order that uses the offer; default: mean catalog price in scope
   * (for scope `all`, at least `minBasket`: such an order is all in scope).
   */
  typicalSpend?: number | undefined;
  /** Extra fixed cost of a redemption to the shop (handling, fees), in currency. Default 0. */
  cost?: number | undefined;
}

/** One offer published by the shop. */
export interface Offer {
  /** Stable id, 1–128 characters. */
  id: string;
  /** Title a shopper can read, e.g. "10% off mugs". */
  title: string;
  /** How much it takes off. */
  discount: OfferDiscount;
  /** Which products it applies to. */
  scope: OfferScope;
  /** The order (or the cart, when known) must be worth at least this much. Default 0. */
  minBasket?: number | undefined;
  /** Validity window in milliseconds since the epoch; either end may be left open. */
  validFrom?: number | undefined;
  /** End of the validity window (the offer is shown before it, not at it), ms since the epoch. */
  validUntil?: number | undefined;
  /** Who may see it. Default `'all'`. */
  audience?: OfferAudience | undefined;
  /** Per-shopper frequency limits. Default: none. */
  limits?: OfferLimits | undefined;
  /** What an in-scope purchase is worth to the shop, for scoring. */
  hints?: OfferHints | undefined;
}

/** The offers of a shop, as published. `version` lets a device refuse an older catalog. */
export interface OfferCatalog {
  /** The catalog's version: a device refuses a catalog older than the one it holds. */
  version: number;
  /** When the shop issued the catalog, ms since the epoch. */
  issuedAt: number;
  /**
   * Optional: when the catalog stops being valid, ms since the epoch (after `issuedAt`; `localrec
   * offers sign --ttl-hours N` sets it to now + N hours). Signed with the rest: a device refuses a
   * catalog more than a day past it (`setOffers`), and `offers()` shows nothing from one that is,
   * so a replayed old catalog is refused once it has expired, even by a device that never saw a
   * newer one.
   */
  expiresAt?: number | undefined;
  /** ISO 4217 code of the amounts, e.g. `GBP`. */
  currency: string;
  /** The offers, each id once. */
  offers: readonly Offer[];
  /**
   * The shop's learned affinity model (weights and per-offer statistics, `localrec offers
   * fit-affinity`). When present, the device scores each offer with it from the shopper's own
   * purchase baskets instead of the recommendation model's scores. Signed with the rest.
   */
  affinity?: AffinitySnapshot | undefined;
}

/** A catalog with the shop's ECDSA P-256 / SHA-256 signature over its canonical JSON. */
export interface SignedOfferCatalog {
  /** The catalog as the shop signed it. */
  catalog: OfferCatalog;
  /** Always `ES256` (ECDSA P-256 with SHA-256). */
  alg: 'ES256';
  /** Optional key id, to pick among several published keys. */
  kid?: string | undefined;
  /** base64url of the IEEE P1363 (r ‖ s, 64 bytes) signature, as WebCrypto produces it. */
  signature: string;
}

/** One line of the cart, as the page knows it. */
export interface CartLine {
  /** The product's catalog id. */
  itemId: string;
  /** Units in the cart. Default 1. */
  quantity?: number | undefined;
  /** Unit price; falls back to the product catalog's price. */
  price?: number | undefined;
}

/** Where the shopper is when offers are asked for. */
export interface OfferContext {
  /**
   * The cart's lines, when the page knows them: a known cart below an offer's `minBasket` (an empty
   * one included) hides that offer; left out, the minimum is the shop's to check at checkout.
   */
  cart?: readonly CartLine[] | undefined;
  /** The kind of page the shopper is on. */
  page?: 'home' | 'product' | 'category' | 'cart' | 'checkout' | 'search' | 'other' | undefined;
  /** The product on screen, on a product page. */
  itemId?: string | undefined;
  /**
   * "Now", ms since the epoch (validity windows, cool-downs, recency); defaults to the clock. Set it
   * in replays: more than a day before the device's clock, events after it do not count; within a
   * day of it (a page passing its server's time to a device whose clock is fast) the call is live.
   * `offers()` refuses one before 2000-01-01 (a time in seconds, `performance.now()`, 0).
   */
  now?: number | undefined;
}

/** What `offers()` accepts. A field set to `undefined` takes its default. */
export interface OffersOptions {
  /** How many offers, 1–20. Default 2. */
  k?: number | undefined;
  /** Where the shopper is: the cart, the page, the product on screen. */
  context?: OfferContext | undefined;
  /**
   * Seed for exploration, a whole number from 0 to 2³² − 1. Same seed, events and catalog → same answer. `rec.offers()` without one
   * draws a fresh seed per call (so exploration happens at the `exploration` rate); the pure
   * `chooseOffers` defaults to 1.
   */
  seed?: number | undefined;
  /**
   * Share of the k slots that may go to exploration (Thompson sampling), [0, 1]. Default 0.1:
   * roughly one draw in ten replaces the best-scoring offer with the best sampled one.
   */
  exploration?: number | undefined;
  /**
   * How many impressions the caller's affinity counts for against the shopper's own offer history
   * (the Beta prior's strength), ≥ 0. Default 10.
   */
  priorStrength?: number | undefined;
  /**
   * What the ranking maximizes. `value` (default): expected value to the shop, P(use) × net value
   * per use, so pricier scopes win ties in probability. `reach`: P(use) alone (offers with net
   * value ≤ 0 are still never shown), for a shop that wants the offer used by as many shoppers as
   * possible; cheaper everyday scopes then rank as high as their probability says.
   */
  objective?: OfferObjective | undefined;
}

/** What offer ranking maximizes: expected value to the shop (`value`) or the chance of use (`reach`); see {@link OffersOptions.objective}. */
export type OfferObjective = 'value' | 'reach';

/** What `setOffers()` installed. */
export interface SetOffersResult {
  /** Offers in the catalog. */
  offers: number;
  /**
   * Offers the policy can never show with this shop's product catalog, and why (empty when every
   * offer can be shown): one with no price basis (no `hints.typicalSpend`, no priced product in its
   * scope, no `minBasket`) is worth 0 per use, and one whose discount costs at least its margin
   * loses money when used. They are installed all the same (the signed catalog is the shop's).
   */
  neverShown: Array<{ offerId: string; why: string }>;
}

/**
 * What an offer's reason rests on, for a page that words it in its own language (with its own
 * product titles); `ShownOffer.reason` is the English sentence for it:
 *
 * - `event`: the shopper's latest cited event on an item in the offer's scope ("Because you viewed Red Mug");
 * - `on-screen`: the product on screen is in scope ("For the Red Mug you are looking at");
 * - `in-cart`: a cart line is ("For the Red Mug in your cart");
 * - `same-category`: a cited event on an item of the scope's category ("Like the Blue Mug you bought");
 * - `explore`: nothing on the device points to it; shown to try something new ("Something new to try");
 * - `shop`: nothing points to it ("One of the shop’s current offers").
 */
export type OfferWhy =
  | { kind: 'event'; itemId: string; event: CitedEventType }
  | { kind: 'on-screen'; itemId: string }
  | { kind: 'in-cart'; itemId: string }
  | { kind: 'same-category'; itemId: string; event: CitedEventType }
  | { kind: 'explore' }
  | { kind: 'shop' };

/** An offer chosen for this shopper, with why. */
export interface ShownOffer {
  /** The offer's `id` in the catalog (track it in `offer_impression` and `offer_redeemed` events). */
  offerId: string;
  /** The offer's `title`, as the catalog has it. */
  title: string;
  /** The offer's discount, as the catalog has it. */
  discount: OfferDiscount;
  /** Expected value to the shop of showing the offer, in currency (can be negative). */
  expectedValue: number;
  /**
   * A sentence a shopper can read, e.g. "Because you viewed Red Mug": an English string built from
   * {@link why} (unlike `Recommendation.reason`, which is a `Reason` object).
   */
  reason: string;
  /** The structured facts the reason rests on, to word it in another language. */
  why: OfferWhy;
  /** True when the slot was filled by exploration rather than by expected value. */
  explore: boolean;
}
