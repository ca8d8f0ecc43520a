import type { CitedEventType, StoredEvent } from '../types.js';

/** One item of a shopper's history, as the model sees it: row index and confidence weight. */
export interface ProfileItem {
  row: number;
  /** Confidence after recency decay and saturation; 0 for items the shopper disliked or removed. */
  weight: number;
  /**
   * The strongest thing the shopper did with the item that a reason may cite (`purchase`, `view`,
   * …; see {@link citableEvents}); undefined when there is none (an add to cart taken back, a low
   * rating), and then no reason names the item.
   */
  action?: CitedEventType;
  /** Time of the last event on the item. */
  lastT: number;
}

export interface ProfileOptions {
  /** Half-life of an event's weight, in days. */
  halfLifeDays: number;
  now: number;
  /**
   * Extra factor per later session: an event is weighted by `sessionDecay^k` when k sessions
   * (bursts of events more than 30 minutes apart) came after its own. 1 turns it off.
   */
  sessionDecay?: number;
  /**
   * Extra factor per later moment: an event is weighted by `stepDecay^k` when k distinct event
   * times came after its own (a basket, or one rating). Sharper than sessions; 1 (default) turns it off.
   */
  stepDecay?: number;
}

/** Events further apart than this start a new session. */
export const SESSION_GAP_MS = 30 * 60 * 1000;

/**
 * Confidence of one event before recency decay: a purchase says more than an add-to-cart, which
 * says more than a view; removing from the cart or a low rating takes confidence away.
 */
export function eventConfidence(e: StoredEvent): number {
  switch (e.type) {
    case 'view':
      return 1;
    case 'search':
      return e.itemId ? 1.5 : 0;
    case 'add_to_cart':
      return 2;
    case 'remove_from_cart':
      return -1.5;
    case 'purchase':
      return 4 * (1 + 0.25 * Math.log(e.quantity ?? 1));
    case 'rating':
      return ((e.value ?? 0) - 2.5) * 1.5;
    default:
      return 0;
  }
}

const ACTION_RANK: Record<CitedEventType, number> = {
  view: 0,
  search: 1,
  rating: 2,
  add_to_cart: 3,
  purchase: 4,
};

/**
 * The English verb a reason uses for each cited event ("Because you viewed …"). A search is cited
 * by the result the shopper opened (the event's `itemId`), not by what they typed: "searched for
 * Red Mug" would misquote a search for "mug" (demo review, stop 33).
 */
export const CITED_VERB: Record<CitedEventType, string> = {
  view: 'viewed',
  search: 'searched for and opened',
  add_to_cart: 'added',
  purchase: 'bought',
  rating: 'rated',
};

/** The event's type when it is one a reason may cite (a view, search, add to cart, purchase or rating), else undefined. */
export function citedEventType(e: StoredEvent): CitedEventType | undefined {
  return Object.hasOwn(ACTION_RANK, e.type) ? (e.type as CitedEventType) : undefined;
}

/**
 * Which events (in time order) a reason may cite: those that speak for the item, as the model
 * counts them (a 1-star rating counts against it: "Because you rated …" would be wrong), and not an
 * add to cart the shopper took back, nor a rating of an item whose latest rating is low (revised
 * down). Carts are followed by quantity: a `remove_from_cart` takes back the latest adds of the item
 * first, as many units as it says (all of them when it gives no quantity: the line was removed),
 * and never an add that a purchase of the item has since settled; an add of which some units are
 * still in the cart stays citable.
 */
export function citableEvents(events: readonly StoredEvent[]): boolean[] {
  const out = new Array<boolean>(events.length).fill(false);
  /** Per item, the adds not yet taken back or bought, latest last: event index and units left. */
  const carts = new Map<string, Array<{ i: number; units: number }>>();
  /** Per item, whether its latest rating speaks for it: a rating revised down cites nothing. */
  const latestRatingGood = new Map<string, boolean>();
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i]!;
    if (e.type === 'rating' && e.itemId !== undefined && !latestRatingGood.has(e.itemId)) latestRatingGood.set(e.itemId, eventConfidence(e) > 0);
  }
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (e.itemId === undefined) continue;
    if (e.type === 'add_to_cart') {
      out[i] = true;
      const adds = carts.get(e.itemId) ?? [];
      adds.push({ i, units: e.quantity ?? 1 });
      carts.set(e.itemId, adds);
    } else if (e.type === 'remove_from_cart') {
      const adds = carts.get(e.itemId) ?? [];
      let units = e.quantity ?? Infinity;
      while (units > 0 && adds.length > 0) {
        const last = adds[adds.length - 1]!;
        const taken = Math.min(units, last.units);
        last.units -= taken;
        units -= taken;
        if (last.units === 0) {
          out[last.i] = false;
          adds.pop();
        }
      }
    } else if (e.type === 'purchase') {
      // What was in the cart was bought: a later remove concerns a later add.
      carts.delete(e.itemId);
      out[i] = eventConfidence(e) > 0;
    } else if (e.type === 'rating') {
      out[i] = latestRatingGood.get(e.itemId)! && eventConfidence(e) > 0;
    } else out[i] = eventConfidence(e) > 0;
  }
  return out;
}

/**
 * Folds a shopper's events into one weight per item: confidence by kind, halved every
 * `halfLifeDays`, summed per item (de-duplication), then saturated with log1p so that twenty views
 * of one item do not drown everything else. Items not in `rows` (not in the catalog) are skipped.
 *
 * @example
 * ```ts
 * buildProfile([{ t: now, type: 'purchase', itemId: 'a' }], new Map([['a', 0]]), { halfLifeDays: 30, now });
 * // [{ row: 0, weight: 1.609…, action: 'purchase', lastT: now }]
 * ```
 */
export function buildProfile(events: readonly StoredEvent[], rows: ReadonlyMap<string, number>, opts: ProfileOptions): ProfileItem[] {
  const acc = new Map<number, { sum: number; action: ProfileItem['action']; lastT: number }>();
  // What reasons may cite, judged in time order (events may come in any order).
  const chronological = events.map((e, i) => ({ e, i })).sort((a, b) => a.e.t - b.e.t || a.i - b.i);
  const flags = citableEvents(chronological.map((x) => x.e));
  const citable = new Set<StoredEvent>(chronological.filter((_, j) => flags[j]).map((x) => x.e));
  const halfLifeMs = opts.halfLifeDays * 24 * 3600 * 1000;
  const sessionDecay = opts.sessionDecay ?? 1;
  const stepDecay = opts.stepDecay ?? 1;
  // Per event: sessions and distinct event times after it (0 = the current session / moment).
  const sessionsAfter = new Map<StoredEvent, number>();
  const stepsAfter = new Map<StoredEvent, number>();
  if (sessionDecay !== 1 || stepDecay !== 1) {
    // Only what the shopper did with items: an offer shown, or a search without a clicked item,
    // neither starts a session nor counts as a later moment (localrec eval has no such events).
    // An event stamped after `now` (a page's server time ahead of the device, or a device clock
    // set back since) counts as now: ordered by its stamp, it would be a later session than what
    // the shopper does now, and today's activity would be weighted down by a session that has not
    // happened (a month ahead: × sessionDecay per day visited in between).
    const at = (e: StoredEvent) => Math.min(e.t, opts.now);
    const byTime = events.filter((e) => e.itemId).sort((a, b) => at(b) - at(a));
    let k = 0;
    let steps = 0;
    byTime.forEach((e, i) => {
      if (i > 0 && at(byTime[i - 1]!) - at(e) > SESSION_GAP_MS) k++;
      if (i > 0 && at(byTime[i - 1]!) !== at(e)) steps++;
      sessionsAfter.set(e, k);
      stepsAfter.set(e, steps);
    });
  }
  for (const e of events) {
    if (!e.itemId) continue;
    const row = rows.get(e.itemId);
    if (row === undefined) continue;
    const decay = Math.pow(0.5, Math.max(0, opts.now - e.t) / halfLifeMs) * Math.pow(sessionDecay, sessionsAfter.get(e) ?? 0) * Math.pow(stepDecay, stepsAfter.get(e) ?? 0);
    const c = eventConfidence(e) * decay;
    const a = citable.has(e) ? citedEventType(e) : undefined;
    const cur = acc.get(row);
    if (!cur) {
      acc.set(row, { sum: c, action: a, lastT: e.t });
    } else {
      cur.sum += c;
      if (a && (cur.action === undefined || ACTION_RANK[a] > ACTION_RANK[cur.action])) cur.action = a;
      if (e.t > cur.lastT) cur.lastT = e.t;
    }
  }
  const out: ProfileItem[] = [];
  for (const [row, v] of acc) out.push({ row, weight: Math.log1p(Math.max(0, v.sum)), ...(v.action ? { action: v.action } : {}), lastT: v.lastT });
  out.sort((a, b) => a.lastT - b.lastT || a.row - b.row);
  return out;
}
