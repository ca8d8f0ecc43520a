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

/**
 * Impressions of one offer less than this far apart are one showing: the offer policy counts a
 * shopper's tries in visits (as its affinity is a chance per next basket), not in page views.
 */
export const SHOWING_GAP_MS = 30 * 60_000;

/** Counts of one offer's removed events. */
export interface LedgerOfferStats {
  /** The offer's id in the catalog it was shown from. */
  offerId: string;
  /** Impressions removed (each `offer_impression` event). */
  impressions: number;
  /**
   * Impressions counted once per visit: one that comes {@link SHOWING_GAP_MS} or more after the
   * offer's previous impression starts a new showing. Absent in ledgers written before it existed
   * (then each impression counts as a showing).
   */
  showings?: number;
  /** Redemptions removed (each `offer_redeemed` event). */
  redemptions: number;
  /** Time of the latest impression removed, ms since the epoch. */
  lastImpressionAt?: number;
  /** Time of the latest redemption removed, ms since the epoch. */
  lastRedeemedAt?: number;
}

/**
 * What the device keeps of the offer events and purchases that event retention removed, so that
 * per-shopper caps, cool-downs and the new/returning audience still hold (docs/PRIVACY.md: not cut
 * by the age limit; removed by `erase()` and a consent withdrawal).
 */
export interface OfferLedger {
  /** One entry per offer (an array, so that any offer id is a plain value). */
  offers: LedgerOfferStats[];
  /** Time of the latest purchase removed: the shopper stays `returning`. */
  lastPurchaseAt?: number;
}

/**
 * Counts one `offer_impression` or `offer_redeemed` event into `s` (the offer rules' tally). Feed an
 * offer's events oldest first: whether an impression starts a new showing depends on the one before.
 */
export function countOfferEvent(s: Omit<LedgerOfferStats, 'offerId'>, e: StoredEvent): void {
  if (e.type === 'offer_impression') {
    const showings = s.showings ?? s.impressions;
    s.showings = s.lastImpressionAt === undefined || e.t - s.lastImpressionAt >= SHOWING_GAP_MS ? showings + 1 : showings;
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
export function foldIntoLedger(stored: OfferLedger | undefined, removed: readonly StoredEvent[]): OfferLedger {
  const ledger = readLedger(stored);
  const byId = new Map((ledger?.offers ?? []).map((o) => [o.offerId, { ...o }]));
  let lastPurchaseAt = ledger?.lastPurchaseAt;
  for (const e of [...removed].sort((a, b) => a.t - b.t)) {
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
 * The ledger for a live `offers()` call at `now`: times stamped ahead of `now` (a page reporting
 * its server's time, a device clock set back since) count as now, as the stored events' do. The
 * rules would otherwise leave such an offer out of the ledger as "the future" (a replay's view),
 * and a once-only offer would come back, or a returning shopper count as new.
 */
export function ledgerAsOfNow(ledger: OfferLedger, now: number): OfferLedger {
  const at = (t: number | undefined) => (t !== undefined && t > now ? now : t);
  const offers = ledger.offers.map((o) => {
    const impression = at(o.lastImpressionAt);
    const redeemed = at(o.lastRedeemedAt);
    return impression === o.lastImpressionAt && redeemed === o.lastRedeemedAt
      ? o
      : { ...o, ...(impression !== undefined ? { lastImpressionAt: impression } : {}), ...(redeemed !== undefined ? { lastRedeemedAt: redeemed } : {}) };
  });
  const purchase = at(ledger.lastPurchaseAt);
  return { offers, ...(purchase !== undefined ? { lastPurchaseAt: purchase } : {}) };
}

/**
 * The ledger as it stands once retention has run, when `expired` are the stored events past the
 * age limit that no write has removed yet: `ledger` itself when none of them is one it keeps.
 */
export function ledgerWithExpired(stored: OfferLedger | undefined, expired: readonly StoredEvent[]): OfferLedger | undefined {
  const ledger = readLedger(stored);
  const kept = expired.filter(ledgerKeeps);
  return kept.length ? foldIntoLedger(ledger, kept) : ledger;
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/**
 * The well-formed part of a stored ledger: what IndexedDB gives back is whatever was written (a
 * record hand-edited, or written by another release), and one malformed offer entry must not stop
 * retention, offers or `audit()`. Entries that are not an offer's counts are left out, and so is a
 * record that is not a ledger at all (undefined).
 */
export function readLedger(v: unknown): OfferLedger | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const r = v as Record<string, unknown>;
  const offers = (Array.isArray(r.offers) ? (r.offers as unknown[]) : []).filter((o): o is LedgerOfferStats => {
    if (typeof o !== 'object' || o === null) return false;
    const x = o as Record<string, unknown>;
    return (
      typeof x.offerId === 'string' &&
      isCount(x.impressions) &&
      isCount(x.redemptions) &&
      (x.showings === undefined || isCount(x.showings)) &&
      (x.lastImpressionAt === undefined || isTime(x.lastImpressionAt)) &&
      (x.lastRedeemedAt === undefined || isTime(x.lastRedeemedAt))
    );
  });
  return { offers, ...(isTime(r.lastPurchaseAt) ? { lastPurchaseAt: r.lastPurchaseAt } : {}) };
}
