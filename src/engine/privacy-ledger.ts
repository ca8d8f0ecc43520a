/**
 * The privacy ledger: the ε a device spent, per aggregation server, across every localrec instance
 * (every `dbName`) of the origin. Differential privacy composes over all of one device's releases
 * to one aggregate, whichever shop, catalog or environment of the page made them: three instances
 * with their own databases syncing with one server are one device to it, and their releases add
 * up. So the budget is checked, and each release recorded, against one IndexedDB database shared
 * by them all ({@link PRIVACY_LEDGER_DB}), in one transaction of it: two instances (or tabs) cannot
 * both spend the last release.
 *
 * Layout: one object store, `spend`, with one record per server (its URL as {@link serverKey}
 * writes it), `{ parts: { [dbName]: AccountantState }, lastNoiseMultiplier }`: each instance's own
 * Rényi-DP spend with that server. What the server's budget is checked against is their sum. A
 * record under {@link LEGACY_SERVER} holds what each database's own accountant had spent before the
 * ledger existed (the server was not recorded then): it counts against every server.
 *
 * `erase()` of one database, and a withdrawal of personalization (which erases it), remove that
 * database's parts from every record (`forgetSpend`, privacy-ledger-forget.ts, which the page
 * also calls when the worker is gone): erasing leaves nothing of the shopper's on the device, and
 * so starts a new budget for that database, as it did before the ledger existed; the other
 * databases' spend stays counted. The ledger itself is deleted once no part is left. Every write,
 * and the deletion, runs under one Web Lock (`LEDGER_LOCK`) where the browser has them (every
 * browser localrec supports, in the secure contexts a sync needs), so that a release recorded by
 * another instance can never fall between an erase's finding the ledger empty and its deletion.
 */

import { openDB, type IDBPDatabase } from 'idb';
import { LEDGER_STORE, PRIVACY_LEDGER_DB, underLedgerLock } from './privacy-ledger-forget.js';
import { unlessBlocked } from '../events/blocked.js';
import { StorageError } from '../errors.js';
import { RdpAccountant, type AccountantState } from '../federated/dp.js';
import { serverKey } from '../federated/sync.js';
import { UnreadableAccountant } from './stored-records.js';

export { forgetSpend, LEDGER_LOCK, PRIVACY_LEDGER_DB } from './privacy-ledger-forget.js';
const LEDGER_VERSION = 1;
const STORE = LEDGER_STORE;
/** The record of the spend stored before the ledger existed, per database: counted against every server. */
export const LEGACY_SERVER = '*';
/** One server's record: each database's spend with it, and the σ of the latest release recorded. */
export interface LedgerRecord {
  parts: Record<string, AccountantState>;
  lastNoiseMultiplier?: number | null;
}

/** What a device spent with one server: all instances together (`total`), and this database's part (`own`). */
export interface LedgerView {
  total: RdpAccountant;
  own: RdpAccountant;
}

/** The key a server's spend is recorded under (as the egress log names it). */
export { serverKey };

/** Whether this runtime has IndexedDB, where the ledger lives. */
export function ledgerAvailable(): boolean {
  return typeof indexedDB !== 'undefined';
}

/**
 * Opens the ledger. `create`: false for reads, which do not create it (a device that never
 * released anything has no ledger, and none appears before its first upload); then null.
 */
async function openLedger(create: boolean): Promise<IDBPDatabase | null> {
  let absent = false;
  try {
    // Refused after a while rather than waited on for ever: queued behind a deletion that other
    // code's open connection blocks, an open gets no event at all, and the ledger lock is held.
    const db = await unlessBlocked((blocked, started) => openDB(PRIVACY_LEDGER_DB, LEDGER_VERSION, {
      blocked,
      upgrade(db, oldVersion, _newVersion, tx) {
        started();
        if (oldVersion === 0 && !create) {
          absent = true;
          tx.done.catch(() => undefined);
          tx.abort();
          return;
        }
        if (!db.objectStoreNames.contains(STORE)) db.createObjectStore(STORE);
      },
      blocking(_current, _blocked, event) {
        // Another connection upgrades or deletes it: this one lets go (it is closed after each use anyway).
        (event.target as IDBDatabase).close();
      },
    }), () => `opening the privacy ledger "${PRIVACY_LEDGER_DB}" is blocked by another connection of this site`, (late) => late.close());
    return db;
  } catch (e) {
    if (absent) return null;
    throw new StorageError(`the privacy ledger (IndexedDB database "${PRIVACY_LEDGER_DB}") could not be opened: ${(e as Error)?.message ?? String(e)}`, { cause: e });
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A stored record, checked: a malformed one throws (the spend it held is unknown). */
function readRecord(v: unknown, key: string): LedgerRecord {
  if (v === undefined) return { parts: {} };
  if (!isObject(v) || !isObject(v.parts)) throw new Error(`its record for ${key} is not a ledger record`);
  const last = v.lastNoiseMultiplier;
  if (last !== undefined && last !== null && !(typeof last === 'number' && last >= 0 && Number.isFinite(last))) throw new Error(`its record for ${key} has a malformed lastNoiseMultiplier`);
  const parts: Record<string, AccountantState> = {};
  for (const [name, state] of Object.entries(v.parts)) {
    // Read (and so checked) here: a malformed part throws.
    try {
      parts[name] = new RdpAccountant(state as AccountantState).toJSON();
    } catch (e) {
      throw new Error(`its record for ${key} holds a malformed part for database "${name}" (${(e as Error).message})`);
    }
  }
  return { parts, ...(last !== undefined ? { lastNoiseMultiplier: last as number | null } : {}) };
}

/**
 * The composition of several accountants' releases: RDP adds up order by order, and while every
 * release was plain Gaussian so does μ². States with other orders than the first cannot be added
 * and throw (the SDK only writes its default orders).
 */
export function composeStates(states: readonly AccountantState[], last: number | null = null): RdpAccountant {
  const read = states.map((s) => new RdpAccountant(s).toJSON());
  if (read.length === 0) return new RdpAccountant();
  const orders = read[0]!.orders;
  const rdp = orders.map(() => 0);
  let releases = 0;
  let mu2: number | null = 0;
  for (const s of read) {
    if (s.orders.length !== orders.length || s.orders.some((a, i) => a !== orders[i])) throw new Error('its parts were recorded at different RDP orders');
    s.rdp.forEach((r, i) => (rdp[i] = r === null ? Infinity : rdp[i]! + r));
    releases += s.releases;
    // (toJSON writes null both when a release was subsampled and when μ² is infinite: the RDP bound then.)
    mu2 = mu2 === null || s.gaussianMu2 === null || s.gaussianMu2 === undefined ? (s.releases === 0 ? mu2 : null) : mu2 + s.gaussianMu2;
  }
  const lastOf = last ?? [...read].reverse().find((s) => s.lastNoiseMultiplier != null)?.lastNoiseMultiplier ?? null;
  return new RdpAccountant({ orders: orders.slice(), rdp: rdp.map((r) => (r === Infinity ? null : r)), releases, gaussianMu2: releases === 0 ? 0 : mu2, lastNoiseMultiplier: releases === 0 ? null : lastOf });
}

/**
 * The spend with `server` as the two records say, `legacy` (this database's own accountant) counted
 * as its part of the legacy record when that record has none for it yet (not migrated).
 */
function viewOf(serverRec: LedgerRecord, legacyRec: LedgerRecord, dbName: string, legacy: AccountantState | undefined): LedgerView {
  const legacyParts = { ...legacyRec.parts };
  if (!(dbName in legacyParts) && legacy !== undefined) legacyParts[dbName] = legacy;
  const total = composeStates([...Object.values(serverRec.parts), ...Object.values(legacyParts)], serverRec.lastNoiseMultiplier ?? null);
  const own = composeStates([serverRec.parts[dbName], legacyParts[dbName]].filter((s): s is AccountantState => s !== undefined), serverRec.parts[dbName]?.lastNoiseMultiplier ?? null);
  return { total, own };
}

function unreadable(why: string): LedgerView {
  const acc = new UnreadableAccountant(
    `the privacy ledger "${PRIVACY_LEDGER_DB}" shared by this origin's localrec instances cannot be read: ${why}`,
    'clearing the site\'s data removes it',
  );
  return { total: acc, own: acc };
}

/**
 * What this device spent with `server` (all instances), and `dbName`'s part. A ledger that cannot
 * be opened or read counts as spent ({@link UnreadableAccountant}); a missing one as nothing spent
 * beyond `legacy`.
 */
export async function readLedger(server: string, dbName: string, legacy: AccountantState | undefined): Promise<LedgerView> {
  let db: IDBPDatabase | null;
  try {
    db = await openLedger(false);
  } catch (e) {
    return unreadable((e as Error).message);
  }
  try {
    let records: [unknown, unknown] = [undefined, undefined];
    if (db) {
      const tx = db.transaction(STORE, 'readonly');
      records = (await Promise.all([tx.store.get(server), tx.store.get(LEGACY_SERVER)])) as [unknown, unknown];
    }
    return viewOf(readRecord(records[0], server), readRecord(records[1], LEGACY_SERVER), dbName, legacy);
  } catch (e) {
    return unreadable((e as Error).message);
  } finally {
    db?.close();
  }
}

/**
 * Records one release at noise multiplier σ for `dbName` with `server`, in one transaction of the
 * ledger: `check` (which throws to refuse, e.g. `assertCanSpend` against the budget) is called with
 * the server's total before it, and nothing is written if it throws. This database's `legacy`
 * spend is moved into the legacy record in the same transaction when it is not there yet. Returns
 * the spend after the release.
 */
export async function recordInLedger(
  server: string,
  dbName: string,
  legacy: AccountantState | undefined,
  noiseMultiplier: number,
  check: (total: RdpAccountant) => void,
): Promise<LedgerView> {
  return underLedgerLock(() => recordUnlocked(server, dbName, legacy, noiseMultiplier, check));
}

async function recordUnlocked(server: string, dbName: string, legacy: AccountantState | undefined, noiseMultiplier: number, check: (total: RdpAccountant) => void): Promise<LedgerView> {
  const db = await openLedger(true);
  if (!db) throw new StorageError(`the privacy ledger "${PRIVACY_LEDGER_DB}" could not be created`);
  try {
    const tx = db.transaction(STORE, 'readwrite');
    tx.done.catch(() => undefined);
    const [stored, storedLegacy] = await Promise.all([tx.store.get(server), tx.store.get(LEGACY_SERVER)]);
    let view: LedgerView;
    let serverRec: LedgerRecord;
    let legacyRec: LedgerRecord;
    try {
      serverRec = readRecord(stored, server);
      legacyRec = readRecord(storedLegacy, LEGACY_SERVER);
      view = viewOf(serverRec, legacyRec, dbName, legacy);
    } catch (e) {
      view = unreadable((e as Error).message);
      serverRec = legacyRec = { parts: {} };
    }
    try {
      check(view.total);
      // (An unreadable ledger refuses in `check`, or here.)
      view.total.record(noiseMultiplier);
    } catch (e) {
      tx.abort();
      throw e;
    }
    const writes: Promise<unknown>[] = [];
    if (!(dbName in legacyRec.parts)) {
      legacyRec.parts[dbName] = legacy ?? new RdpAccountant().toJSON();
      writes.push(tx.store.put(legacyRec, LEGACY_SERVER));
    }
    const part = new RdpAccountant(serverRec.parts[dbName]);
    part.record(noiseMultiplier);
    serverRec.parts[dbName] = part.toJSON();
    serverRec.lastNoiseMultiplier = noiseMultiplier;
    writes.push(tx.store.put(serverRec, server));
    try {
      await Promise.all(writes);
      await tx.done;
    } catch (e) {
      throw new StorageError(`the privacy ledger "${PRIVACY_LEDGER_DB}" could not be written, so nothing was sent: ${(e as Error)?.message ?? String(e)}`, { cause: e });
    }
    return viewOf(serverRec, legacyRec, dbName, legacy);
  } finally {
    db.close();
  }
}

/**
 * Moves `dbName`'s own accountant (`legacy`, what it spent before the ledger existed, its server
 * not recorded) into the ledger's legacy record, unless it is there already: before the database is
 * erased, or at a start, so that what it spent stays counted against every server.
 */
export async function moveLegacySpend(dbName: string, legacy: AccountantState): Promise<void> {
  return underLedgerLock(() => moveLegacyUnlocked(dbName, legacy));
}

async function moveLegacyUnlocked(dbName: string, legacy: AccountantState): Promise<void> {
  const db = await openLedger(true);
  if (!db) return;
  try {
    const tx = db.transaction(STORE, 'readwrite');
    tx.done.catch(() => undefined);
    const stored = await tx.store.get(LEGACY_SERVER);
    let rec: LedgerRecord;
    try {
      rec = readRecord(stored, LEGACY_SERVER);
    } catch {
      // Unreadable: it already counts as spent; left as it is.
      tx.abort();
      return;
    }
    if (dbName in rec.parts) {
      await tx.done;
      return;
    }
    rec.parts[dbName] = legacy;
    await tx.store.put(rec, LEGACY_SERVER);
    await tx.done;
  } finally {
    db.close();
  }
}

/** The ledger's records for `server` and the legacy record, as stored (for `export()`); null when there is no ledger. */
export async function ledgerRecords(server: string): Promise<Record<string, unknown> | null> {
  const db = await openLedger(false).catch(() => null);
  if (!db) return null;
  try {
    const tx = db.transaction(STORE, 'readonly');
    const [a, b] = await Promise.all([tx.store.get(server), tx.store.get(LEGACY_SERVER)]);
    const out: Record<string, unknown> = {};
    if (a !== undefined) out[server] = a;
    if (b !== undefined) out[LEGACY_SERVER] = b;
    return out;
  } finally {
    db.close();
  }
}
