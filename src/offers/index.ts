/**
 * Personalized offers chosen on the device: the pure modules the worker uses for `setOffers()` and
 * `offers()`. Nothing here needs Node; WebCrypto comes from `globalThis.crypto.subtle`.
 *
 * @example
 * ```ts
 * const catalog = await verifyOfferCatalog(signed, shopPublicJwk);   // setOffers
 * const products = indexProducts(items);
 * const shown = chooseOffers({ catalog, products, events, affinity }, { k: 2, context, seed }); // offers
 * ```
 */
export type * from './types.js';
export { SignatureError, isSignatureError, type SignatureProblem } from './signature-error.js';
export { canonicalJson } from './canonical-json.js';
export { checkVerifyKeys, generateOfferKeys, MAX_KID_CHARS, signOfferCatalog, verifyOfferCatalog, verifySignedCatalog, type OfferKeyPair } from './signing.js';
export { validateOfferCatalog, validateOffer, validateAffinitySnapshot, checkCatalogLimits, MAX_CATALOG_OFFERS, MAX_SCOPE_ENTRIES, MAX_CATALOG_JSON_CHARS } from './validate-catalog.js';
export { catalogExpired, checkCatalogAccepted, checkOffersOption, CATALOG_EXPIRY_SLACK_MS } from './freshness.js';
export {
  AFFINITY_FEATURES,
  SNAPSHOT_FEATURES,
  affinityFeatureRows,
  affinityProbabilities,
  predictAffinity,
  type HistoryBasket,
} from './affinity-model.js';
export { DEFAULT_BASKET_GAP_MS, offerScopeLookup, purchaseBaskets, type OfferScopeLookup, type PurchaseBasketsOptions } from './purchase-baskets.js';
export { offerHistory, isReturningShopper, type OfferStats } from './offer-history.js';
export { ELIGIBILITY_RULES, whyIneligible, type EligibilityContext, type EligibilityRule } from './eligibility.js';
export { indexProducts, inScope, scopeItemIds, type ProductIndex } from './product-index.js';
export { scopeAffinity, type AffinitySource } from './affinity.js';
export { offerEconomics, type OfferEconomics } from './offer-value.js';
export { offerReason, offerWhy, offerWhyText } from './reason.js';
export { checkContext, checkOffersOptions, chooseOffers, scoreOffers, cartValue, type OffersInput, type ScoredOffer } from './policy.js';
export { retailCategory, RETAIL_CATEGORIES } from './retail-categories.js';
