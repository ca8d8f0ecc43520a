/**
 * What the device keeps of offer events and purchases once retention (age, count, storage quota)
 * removes them: per-offer counts and times, and that the shopper has bought. Without it an offer
 * capped at one redemption would come back once its redemption aged out, `maxImpressions` would
 * count from zero again, and a shopper whose purchases were removed would be "new" again. Kept in
 * the store's meta records (`OFFER_LEDGER_KEY`), written in the transaction that removes the
 * events; erased with everything else.
 */
import type { StoredEvent } from '../types.js';

/** Meta key of the {@link OfferLedger}. */
export const OFFER_LEDGER_KEY = 'offer-ledger';

/** Counts of one offer's removed events. */
export interface LedgerOfferStats {
  offerId: string;
  impressions: number;
  redemptions: number;
  lastImpressionAt?: number;
  lastRedeemedAt?: number;
}

export interface OfferLedger {
  /** One entry per offer (an array, so that any offer id is a plain value). */
  offers: LedgerOfferStats[];
  /** Time of the latest purchase removed: the shopper stays `returning`. */
  lastPurchaseAt?: number;
}

/** Counts one `offer_impression` or `offer_redeemed` event into `s` (the offer rules' tally). */
export function countOfferEvent(s: Omit<LedgerOfferStats, 'offerId'>, e: StoredEvent): void {
  if (e.type === 'offer_impression') {
    s.impressions++;
    s.lastImpressionAt = Math.max(s.lastImpressionAt ?? -Infinity, e.t);
  } else if (e.type === 'offer_redeemed') {
    s.redemptions++;
    s.lastRedeemedAt = Math.max(s.lastRedeemedAt ?? -Infinity, e.t);
  }
}

/** Whether retention removing `e` loses something the offer rules need. */
export function ledgerKeeps(e: StoredEvent): boolean {
  return e.type === 'purchase' || ((e.type === 'offer_impression' || e.type === 'offer_redeemed') && typeof e.offerId === 'string');
}

/**
 * `ledger` with `removed` folded in (a new object; `ledger` is not modified). Events the ledger does
 * not keep are skipped.
 *
 * @example
 * ```ts
 * foldIntoLedger(undefined, [{ t: 5, type: 'offer_redeemed', offerId: 'mugs10' }]);
 * // { offers: [{ offerId: 'mugs10', impressions: 0, redemptions: 1, lastRedeemedAt: 5 }] }
 * ```
 */
export function foldIntoLedger(ledger: OfferLedger | undefined, removed: readonly StoredEvent[]): OfferLedger {
  const byId = new Map((ledger?.offers ?? []).map((o) => [o.offerId, { ...o }]));
  let lastPurchaseAt = ledger?.lastPurchaseAt;
  for (const e of removed) {
    if (e.type === 'purchase') {
      lastPurchaseAt = Math.max(lastPurchaseAt ?? -Infinity, e.t);
      continue;
    }
    if (!ledgerKeeps(e)) continue;
    const offerId = e.offerId!;
    let s = byId.get(offerId);
    if (!s) byId.set(offerId, (s = { offerId, impressions: 0, redemptions: 0 }));
    countOfferEvent(s, e);
  }
  return { offers: [...byId.values()], ...(lastPurchaseAt !== undefined ? { lastPurchaseAt } : {}) };
}

/**
 * The ledger as it stands once retention has run, when `expired` are the stored events past the
 * age limit that no write has removed yet: `ledger` itself when none of them is one it keeps.
 */
export function ledgerWithExpired(ledger: OfferLedger | undefined, expired: readonly StoredEvent[]): OfferLedger | undefined {
  const kept = expired.filter(ledgerKeeps);
  return kept.length ? foldIntoLedger(ledger, kept) : ledger;
}
