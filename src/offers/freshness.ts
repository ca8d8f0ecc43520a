/**
 * Whether a verified catalog may be installed and shown: not past its signed `expiresAt` (with a
 * day's slack for device clocks), not below the page's `offers.minVersion`. What a device cannot
 * check from its own state (it never saw a newer catalog: no consent to store one, a new browser,
 * after `erase()`) these two can, since both come from the shop: one signed into the catalog, the
 * other shipped in the page. See docs/OFFERS.md, "What the signature protects".
 */
import { ValidationError } from '../errors.js';
import { FUTURE_SLACK_MS } from '../events/schema.js';
import { describeValue } from '../options.js';
import { checkVerifyKeys } from './signing.js';
import type { OfferCatalog } from './types.js';

/**
 * How long past its `expiresAt` a catalog is still taken: the slack a device's clock is allowed
 * elsewhere ({@link FUTURE_SLACK_MS}, a day, as far as an event may be stamped ahead), so that a
 * device whose clock runs fast does not refuse a catalog the shop still publishes.
 */
export const CATALOG_EXPIRY_SLACK_MS = FUTURE_SLACK_MS;

/** True when `catalog` has an `expiresAt` and `now` is more than {@link CATALOG_EXPIRY_SLACK_MS} past it. */
export function catalogExpired(catalog: Pick<OfferCatalog, 'expiresAt'>, now: number): boolean {
  return catalog.expiresAt !== undefined && now >= catalog.expiresAt + CATALOG_EXPIRY_SLACK_MS;
}

/**
 * Throws a `ValidationError` when a verified catalog may not be installed at `now`: it expired
 * (`catalog.expiresAt`, more than a day before `now`) or its version is below `minVersion` (the
 * page's `offers.minVersion`).
 *
 * @example
 * ```ts
 * checkCatalogAccepted({ version: 3, issuedAt: 0, expiresAt: 1000, currency: 'GBP', offers: [] }, Date.now());
 * // throws ValidationError "catalog.expiresAt: the catalog expired at 1970-01-01T00:00:01.000Z …"
 * ```
 */
export function checkCatalogAccepted(catalog: OfferCatalog, now: number, minVersion?: number): void {
  if (minVersion !== undefined && catalog.version < minVersion) {
    throw new ValidationError('catalog.version', `is ${catalog.version}, below the page's offers.minVersion ${minVersion}; the installed one is kept`);
  }
  if (catalogExpired(catalog, now)) {
    throw new ValidationError(
      'catalog.expiresAt',
      `the catalog expired at ${new Date(catalog.expiresAt!).toISOString()}, more than a day before this device's clock (${new Date(now).toISOString()}); the installed one is kept`,
    );
  }
}

/**
 * Checks `options.offers` of the engine: the public key(s) (no private key among them) and
 * `minVersion`, a whole number ≥ 0 when given.
 */
export function checkOffersOption(offers: { publicKey?: unknown; minVersion?: unknown } | undefined, field = 'options.offers'): void {
  if (offers?.publicKey !== undefined) checkVerifyKeys(offers.publicKey, `${field}.publicKey`);
  const v = offers?.minVersion;
  if (v !== undefined && !(typeof v === 'number' && Number.isInteger(v) && v >= 0)) {
    throw new ValidationError(`${field}.minVersion`, `must be a whole number ≥ 0 (the lowest catalog version this page accepts), got ${describeValue(v)}`);
  }
}
