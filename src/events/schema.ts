import { ValidationError } from '../errors.js';
import type { EventType, StoredEvent } from '../types.js';

/** Bumped whenever the stored event shape changes; the store upgrades older databases. */
export const EVENT_SCHEMA_VERSION = 2;

/** Every event type `track()` accepts. */
export const EVENT_TYPES: readonly EventType[] = [
  'view',
  'search',
  'add_to_cart',
  'remove_from_cart',
  'purchase',
  'rating',
  'offer_impression',
  'offer_redeemed',
];

const ITEM_EVENTS = new Set<EventType>(['view', 'add_to_cart', 'remove_from_cart', 'purchase', 'rating']);
/** Fields each kind of event may carry besides `type` and `t`. */
const FIELDS: Record<EventType, readonly string[]> = {
  view: ['itemId'],
  search: ['query', 'itemId'],
  add_to_cart: ['itemId', 'quantity'],
  remove_from_cart: ['itemId', 'quantity'],
  purchase: ['itemId', 'quantity', 'price'],
  rating: ['itemId', 'value'],
  offer_impression: ['offerId'],
  offer_redeemed: ['offerId'],
};
/** Characters an item id (or offer id) may have, at most: in events, and in `offers()` cart lines. */
export const MAX_ID = 256;
/** The largest quantity an event (or an `offers()` cart line) may carry. */
export const MAX_QUANTITY = 1_000_000;
const MAX_QUERY = 512;
// Timestamps before 2000 or more than a day ahead are almost always unit mistakes (seconds vs ms).
/** The earliest time an event (or an `offers()` replay) may carry: 2000-01-01, in ms; earlier is a unit mistake (seconds read as ms). */
export const MIN_T = Date.UTC(2000, 0, 1);
/** The latest time an event may carry when the device clock cannot say (it reads before 2000). */
const MAX_T = Date.UTC(2100, 0, 1);

/**
 * Whether the device clock reads before 2000 (a dead clock battery): an event without `t` then
 * cannot be timed, and one with `t` cannot be checked against "now" (the page's `track()` drops
 * the first, counted in `stats().dropped`, rather than throw from every call).
 */
export function clockBefore2000(now: number): boolean {
  return !(now >= MIN_T);
}
/** How far ahead of the device's clock an event may be stamped (a page reporting its server's time). */
export const FUTURE_SLACK_MS = 24 * 3600 * 1000;

function id(v: unknown, field: string): string {
  if (typeof v !== 'string') throw new ValidationError(field, `must be a string, got ${describe(v)}`);
  if (v.length === 0 || v.length > MAX_ID) {
    throw new ValidationError(field, `must have 1 to ${MAX_ID} characters, got ${v.length}`);
  }
  return v;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `"${v.length > 40 ? v.slice(0, 40) + '…' : v}"`;
  if (typeof v === 'number' || typeof v === 'boolean') return `${typeof v} ${String(v)}`;
  return typeof v;
}

function num(v: unknown, field: string, min: number, max: number, integer = false): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ValidationError(field, `must be a finite number, got ${describe(v)}`);
  if (integer && !Number.isInteger(v)) throw new ValidationError(field, `must be a whole number, got ${v}`);
  if (v < min || v > max) throw new ValidationError(field, `must be from ${min} to ${max}, got ${v}`);
  return v;
}

/**
 * Validates one event as passed to `track()` and returns it in stored form. Throws a
 * {@link ValidationError} whose `field` names the first offending field. Pure: safe on the main thread.
 *
 * @example
 * ```ts
 * validateEvent({ type: 'purchase', itemId: 'sku-1', quantity: 2 }, 1_700_000_000_000);
 * // { type: 'purchase', itemId: 'sku-1', quantity: 2, t: 1700000000000 }
 * validateEvent({ type: 'view' }); // throws ValidationError "event.itemId: must be a string, got undefined"
 * ```
 */
export function validateEvent(input: unknown, now: number = Date.now()): StoredEvent {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new ValidationError('event', `must be an object, got ${describe(input)}`);
  }
  // Each field read once, from a copy: a getter that answers differently on a later read (a string
  // for the check, an object for the store) cannot slip past, and nothing is read from a prototype.
  const e = Object.assign(Object.create(null) as Record<string, unknown>, input);
  const type = e.type as EventType;
  if (!EVENT_TYPES.includes(type)) {
    throw new ValidationError('event.type', `must be one of ${EVENT_TYPES.join(', ')}; got ${describe(e.type)}`);
  }
  // Unknown fields are refused first, rather than dropped: a typo like `itemID` must not silently
  // store an event without its item, and naming the typo is the most useful message.
  const allowed = FIELDS[type];
  for (const k of Object.keys(e)) {
    // A key set to undefined is no field at all (pages that build events generically).
    if (e[k] === undefined) continue;
    if (k !== 'type' && k !== 't' && !allowed.includes(k)) {
      throw new ValidationError(`event.${k}`, `is not a field of '${type}' events (allowed: type, t, ${allowed.join(', ')})`);
    }
  }
  // A device clock before 2000 (a dead clock battery) would store an event that reads back as
  // malformed (storedEventProblem): refused now, saying why, rather than stored and then ignored.
  // A time the page gives (its server's) is taken then, up to 2100: "a day ahead" of such a clock
  // means nothing.
  const broken = clockBefore2000(now);
  if (e.t === undefined && broken) {
    const reads = Number.isFinite(now) ? new Date(now).toISOString() : describe(now);
    throw new ValidationError('event.t', `is missing, and the device clock reads ${reads}, before 2000-01-01: the event cannot be timed (pass its time as t, e.g. the page's server time)`);
  }
  const t = e.t === undefined ? now : num(e.t, 'event.t', MIN_T, broken ? MAX_T : now + FUTURE_SLACK_MS);
  const out: StoredEvent = { t, type };
  if (ITEM_EVENTS.has(type)) out.itemId = id(e.itemId, 'event.itemId');
  switch (type) {
    case 'search': {
      if (typeof e.query !== 'string') throw new ValidationError('event.query', `must be a string, got ${describe(e.query)}`);
      const q = e.query.trim();
      if (q.length === 0 || q.length > MAX_QUERY) {
        throw new ValidationError('event.query', `must have 1 to ${MAX_QUERY} non-blank characters`);
      }
      out.query = q;
      if (e.itemId !== undefined) out.itemId = id(e.itemId, 'event.itemId');
      break;
    }
    case 'add_to_cart':
    case 'remove_from_cart':
      if (e.quantity !== undefined) out.quantity = num(e.quantity, 'event.quantity', 1, MAX_QUANTITY, true);
      break;
    case 'purchase':
      if (e.quantity !== undefined) out.quantity = num(e.quantity, 'event.quantity', 1, MAX_QUANTITY, true);
      if (e.price !== undefined) out.price = num(e.price, 'event.price', 0, 1e9);
      break;
    case 'rating':
      out.value = num(e.value, 'event.value', 0, 5);
      break;
    case 'offer_impression':
    case 'offer_redeemed':
      out.offerId = id(e.offerId, 'event.offerId');
      break;
    default:
      break;
  }
  return out;
}

/**
 * Why a record read back from the events store is not an event {@link validateEvent} would have
 * stored (undefined when it is one): what IndexedDB gives back is whatever was written, a record
 * hand-edited in devtools or written by another release included, and one with a quantity that is
 * not a number would turn every score into NaN. The record's key (`id`) is allowed; the time must
 * be stored (it is not filled in), and may lie ahead of this device's clock.
 */
export function storedEventProblem(record: unknown): string | undefined {
  if (typeof record !== 'object' || record === null || Array.isArray(record)) return `must be an object, got ${describe(record)}`;
  const { id, ...rest } = record as Record<string, unknown>;
  if (id !== undefined && !(typeof id === 'number' && Number.isInteger(id))) return `id must be a whole number, got ${describe(id)}`;
  if (typeof rest.t !== 'number') return `t must be a number, got ${describe(rest.t)}`;
  try {
    validateEvent(rest, Number.MAX_VALUE);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/** `retention.maxAgeDays` when the page sets none: events older than this are not kept. */
export const DEFAULT_MAX_AGE_DAYS = 365;

/**
 * Refuses an event older than `maxAgeDays` before `now` with a ValidationError naming `event.t`:
 * retention would delete it in the very write that stores it. Pure: the page checks it too.
 */
export function checkEventAge(e: StoredEvent, now: number, maxAgeDays: number): void {
  if (e.t < now - maxAgeDays * 24 * 3600 * 1000) {
    throw new ValidationError('event.t', `is ${new Date(e.t).toISOString()}, older than retention.maxAgeDays (${maxAgeDays} days): it would be deleted as soon as it is stored`);
  }
}
