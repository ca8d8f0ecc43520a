/**
 * Shape checks for the engine's records in the `meta` store. What IndexedDB gives back is whatever
 * was written: a record hand-edited in devtools, or written by another release of the SDK, must not
 * stop the engine from starting, nor `audit()`, `export()` or `erase()` from working. Each reader
 * here keeps what is well formed and says whether it dropped anything; the engine treats the rest
 * as absent (and names the record in `stats().lastError`), except the privacy accountant, whose
 * loss would hand back a fresh budget: an unreadable one counts as spent.
 */

import { PrivacyBudgetError } from '../errors.js';
import { RdpAccountant, type AccountantState } from '../federated/dp.js';
import type { EgressEntry } from '../federated/sync.js';
import type { AutoSyncState, ConsentRecord } from './engine.js';

/** What a reader kept of a stored list, and whether it had to drop anything (or the whole record). */
export interface Read<T> {
  value: T;
  damaged: boolean;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** The keepable items of a stored list; the whole record is damaged when it is not a list. */
function keepWellFormed<T>(v: unknown, ok: (x: unknown) => x is T): Read<T[]> {
  if (v === undefined) return { value: [], damaged: false };
  if (!Array.isArray(v)) return { value: [], damaged: true };
  const value = v.filter(ok);
  return { value, damaged: value.length !== v.length };
}

// Only the fields the engine reads are checked, and a record is kept whole: a newer release in
// another tab may write a `source` or `kind` this one does not know, which must survive this tab's
// next write of the list.
function isConsentRecord(r: unknown): r is ConsentRecord {
  return isObject(r) && isTime(r.t) && typeof r.personalization === 'boolean' && typeof r.federated === 'boolean' && typeof r.source === 'string';
}

/** The stored consent history ({@link CONSENT_KEY}): the well-formed records, in stored order. */
export function readConsentRecords(v: unknown): Read<ConsentRecord[]> {
  return keepWellFormed(v, isConsentRecord);
}

function isEgressEntry(e: unknown): e is EgressEntry {
  return (
    isObject(e) &&
    isTime(e.t) &&
    typeof e.method === 'string' &&
    typeof e.endpoint === 'string' &&
    typeof e.kind === 'string' &&
    isTime(e.bytes) &&
    isTime(e.status) &&
    (e.bodySha256 === undefined || typeof e.bodySha256 === 'string')
  );
}

/** The stored egress log ({@link EGRESS_KEY}): the well-formed entries, in stored order. */
export function readEgressLog(v: unknown): Read<EgressEntry[]> {
  return keepWellFormed(v, isEgressEntry);
}

/** The stored cohort claims ({@link COHORTS_KEY}): the cohort ids (strings). */
export function readCohorts(v: unknown): Read<string[]> {
  return keepWellFormed(v, (c): c is string => typeof c === 'string');
}

/** The stored automatic-sync state ({@link AUTO_SYNC_KEY}): its finite times; undefined when there is none to read. */
export function readAutoSync(v: unknown): Read<AutoSyncState | undefined> {
  if (v === undefined) return { value: undefined, damaged: false };
  if (!isObject(v)) return { value: undefined, damaged: true };
  const value: AutoSyncState = {};
  let damaged = false;
  for (const k of ['lastAttemptAt', 'lastSuccessAt', 'nextAt'] as const) {
    if (v[k] === undefined) continue;
    if (isTime(v[k])) value[k] = v[k];
    else damaged = true;
  }
  return { value, damaged };
}

/** Whether a stored `{ hash, bytes, … }` record (the global model, the neighbour table) has the fields its readers use. */
export function isStoredBytes(v: unknown): v is { hash: string; bytes: Uint8Array } {
  return isObject(v) && typeof v.hash === 'string' && v.bytes instanceof Uint8Array;
}

/**
 * The privacy accountant of a stored state. One that cannot be read (malformed, from a release
 * with another format) is an {@link UnreadableAccountant}: how much ε the device spent is unknown,
 * so it is treated as spent rather than started afresh.
 */
export function readAccountant(v: unknown): Read<RdpAccountant> {
  if (v === undefined) return { value: new RdpAccountant(), damaged: false };
  try {
    return { value: new RdpAccountant(v as AccountantState), damaged: false };
  } catch (e) {
    return { value: new UnreadableAccountant((e as Error).message), damaged: true };
  }
}

/**
 * An accountant whose stored state could not be read: every release is refused with a
 * PrivacyBudgetError (so a sync receives instead, as past the budget), ε reads +∞ and no sync is
 * left. Nothing is ever recorded into it, so the stored record stays as it was until `erase()`.
 */
export class UnreadableAccountant extends RdpAccountant {
  /** `remedy`: what removes the record (default: `erase()`, with the shopper's data). */
  constructor(
    readonly why: string,
    readonly remedy = "erase() removes it with the shopper's data",
  ) {
    super();
  }
  override assertCanSpend(): void {
    throw new PrivacyBudgetError(
      `the stored privacy accountant cannot be read (${this.why}), so how much ε this device has spent is unknown: it counts as spent, and nothing is sent (${this.remedy})`,
    );
  }
  override record(): void {
    this.assertCanSpend();
  }
  override epsilon(): number {
    return Infinity;
  }
  override syncsLeft(): number {
    return 0;
  }
  /** Never written back: a fresh state in its place would hand the budget back. */
  override toJSON(): AccountantState {
    this.assertCanSpend();
    return super.toJSON();
  }
}
