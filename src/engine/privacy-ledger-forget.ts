/**
 * Removing one database's part of the privacy ledger (privacy-ledger.ts) when that database is
 * erased: from the worker (`erase()`, a withdrawal of personalization) and from the page when the
 * worker is gone (recommender.ts). Plain IndexedDB, no `idb` and nothing of the accountant: the
 * main-thread bundle carries it.
 */
import { StorageError } from '../errors.js';
import { BlockedError, openIfExists, unlessBlocked } from '../events/blocked.js';

/** The IndexedDB database every localrec instance of an origin records its ε in. */
export const PRIVACY_LEDGER_DB = 'localrec-privacy';
/** Its object store: one record per aggregation server, `{ parts: { [dbName]: accountant }, … }`. */
export const LEDGER_STORE = 'spend';
/** The Web Lock every write to the ledger (and its deletion) holds. */
export const LEDGER_LOCK = 'localrec-privacy-ledger';

type Locks = { request<T>(name: string, cb: () => Promise<T>): Promise<T> };

/**
 * Runs `f` holding {@link LEDGER_LOCK}, exclusively among every tab and worker of the origin. Every
 * browser localrec supports has Web Locks in the secure contexts a sync needs (WebCrypto); without
 * them (plain Node, fake-indexeddb) `f` just runs, and a release recorded by another instance
 * between {@link forgetSpend}'s finding the ledger empty and its deleting it would be lost.
 */
export async function underLedgerLock<T>(f: () => Promise<T>): Promise<T> {
  const locks = (globalThis.navigator as { locks?: Locks } | undefined)?.locks;
  return locks ? locks.request(LEDGER_LOCK, f) : f();
}

const request = <T>(r: IDBRequest<T>): Promise<T> =>
  new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });

/**
 * Opens the ledger if it exists (an open that would create it is aborted: none is left behind); null
 * when there is none. Refused after a while rather than waited on for ever (unlessBlocked): queued
 * behind a deletion that other code's open connection blocks, an open gets no event at all.
 */
function openExisting(): Promise<IDBDatabase | null> {
  return unlessBlocked((blocked, started) => openIfExists(PRIVACY_LEDGER_DB, blocked, started), () => `opening the privacy ledger "${PRIVACY_LEDGER_DB}" is blocked by another connection of this site`, (late) => late?.close());
}

/** Removes `dbName` from every record of an open ledger; how many records are left. */
async function removePart(db: IDBDatabase, dbName: string): Promise<number> {
  // Not this release's layout (a newer one's, say): nothing is removed, and nothing deleted.
  if (!db.objectStoreNames.contains(LEDGER_STORE)) throw new StorageError(`it has no object store "${LEDGER_STORE}" (a newer release's layout?)`);
  const tx = db.transaction(LEDGER_STORE, 'readwrite');
  const done = new Promise<void>((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = tx.onerror = () => reject(tx.error ?? new Error('the transaction was aborted'));
  });
  done.catch(() => undefined);
  const store = tx.objectStore(LEDGER_STORE);
  const keys = await request(store.getAllKeys());
  let left = 0;
  for (const key of keys) {
    const rec = (await request(store.get(key))) as unknown;
    const parts = typeof rec === 'object' && rec !== null ? (rec as { parts?: unknown }).parts : undefined;
    // A record that is not a ledger record stays as it is (it counts as spent, for everyone).
    if (typeof parts !== 'object' || parts === null || Array.isArray(parts)) {
      left++;
      continue;
    }
    if (Object.prototype.hasOwnProperty.call(parts, dbName)) {
      const rest = { ...(parts as Record<string, unknown>) };
      delete rest[dbName];
      if (Object.keys(rest).length === 0) {
        await request(store.delete(key));
        continue;
      }
      await request(store.put({ ...(rec as object), parts: rest }, key));
    }
    left++;
  }
  await done;
  return left;
}

/**
 * Removes `dbName`'s parts from every record of the ledger (its database is being erased: what it
 * spent goes with it, as its own accountant did before the ledger existed), and deletes the ledger
 * once no record is left. A record that cannot be read is left as it is. Without IndexedDB, where
 * it refuses to open, or without a ledger, nothing to do. Throws a StorageError when the ledger
 * cannot be read or written, naming it (the part then stays, and keeps counting).
 */
export async function forgetSpend(dbName: string): Promise<void> {
  if (typeof indexedDB === 'undefined') return;
  try {
    await underLedgerLock(async () => {
      // Where IndexedDB refuses to open (private mode: a SecurityError, or Firefox's
      // InvalidStateError), nothing can have been stored there: nothing to remove, as for the
      // shopper's own database (deleteEventDatabase).
      const db = await openExisting().catch((e: unknown) => {
        const name = (e as { name?: unknown } | null)?.name;
        if (name === 'SecurityError' || name === 'InvalidStateError') return null;
        throw e;
      });
      if (!db) return;
      let left: number;
      try {
        left = await removePart(db, dbName);
      } finally {
        db.close();
      }
      if (left > 0) return;
      // The part is gone. The empty ledger's deletion is given up after a while when other code
      // holds it open (it stays queued, and goes through once that connection closes): the lock is
      // not held for ever, and nothing of the shopper's is in an empty ledger.
      await unlessBlocked(
        (blocked) =>
          new Promise<void>((resolve, reject) => {
            const req = indexedDB.deleteDatabase(PRIVACY_LEDGER_DB);
            req.onblocked = blocked;
            req.onsuccess = () => resolve();
            req.onerror = () => reject(req.error);
          }),
        () => `deleting the empty privacy ledger "${PRIVACY_LEDGER_DB}" is blocked by another connection of this site`,
      ).catch((e: unknown) => {
        if (!(e instanceof BlockedError)) throw e;
      });
    });
  } catch (e) {
    throw new StorageError(
      `the part of database "${dbName}" in the privacy ledger "${PRIVACY_LEDGER_DB}" could not be removed (${(e as Error)?.message ?? String(e)}): the ε it recorded stays counted there; clearing the site's data removes it`,
      { cause: e },
    );
  }
}
