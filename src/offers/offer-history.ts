import { countOfferEvent, type OfferLedger } from '../events/offer-ledger.js';
import type { StoredEvent } from '../types.js';

/** What the shopper's device remembers about one offer. */
export interface OfferStats {
  impressions: number;
  /** Impressions counted once per visit (`SHOWING_GAP_MS`): the tries the policy's posterior counts. */
  showings: number;
  redemptions: number;
  lastImpressionAt?: number;
  lastRedeemedAt?: number;
}

/**
 * Count impressions and redemptions per offer from the shopper's local events. Only this device's
 * events are used: the shopper learns nothing about other shoppers.
 *
 * @example
 * ```ts
 * offerHistory([{ t: 5, type: 'offer_impression', offerId: 'mugs10' }]).get('mugs10');
 * // { impressions: 1, showings: 1, redemptions: 0, lastImpressionAt: 5 }
 * ```
 */
export function offerHistory(events: readonly StoredEvent[], ledger?: OfferLedger): Map<string, OfferStats> {
  const out = new Map<string, OfferStats>();
  // What retention removed first (src/events/offer-ledger.ts), then the events still stored, oldest
  // first (whether an impression starts a new showing depends on the one before it).
  for (const { offerId, ...s } of ledger?.offers ?? []) out.set(offerId, { ...s, showings: s.showings ?? s.impressions });
  const offerEvents = events.filter((e) => (e.type === 'offer_impression' || e.type === 'offer_redeemed') && e.offerId);
  for (const e of offerEvents.sort((a, b) => a.t - b.t)) {
    let s = out.get(e.offerId!);
    if (!s) out.set(e.offerId!, (s = { impressions: 0, showings: 0, redemptions: 0 }));
    countOfferEvent(s, e);
  }
  return out;
}

/** A shopper is `returning` once the device has seen one of their purchases (one removed by retention included). */
export function isReturningShopper(events: readonly StoredEvent[], ledger?: OfferLedger): boolean {
  return ledger?.lastPurchaseAt !== undefined || events.some((e) => e.type === 'purchase');
}
