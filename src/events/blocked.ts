/**
 * IndexedDB requests that another connection can block (an upgrade, a deletion), refused after a
 * while instead of waited on for ever. No `idb` here: the page's own deletion (recommender.ts, when
 * the worker is gone) uses it too, and the main-thread bundle carries no IndexedDB wrapper.
 */
import { StorageError } from '../errors.js';

/** How long an open or a deletion of the database may stay blocked by another connection before it is refused. */
export const BLOCKED_GRACE_MS = 3000;
/**
 * How long one may wait without a word: a request queued behind another that is blocked gets no
 * `blocked` event of its own (requests on one database run in turn).
 */
export const STALLED_MS = 15_000;

/** Thrown when another connection blocks an open or a deletion (see {@link unlessBlocked}). */
export class BlockedError extends StorageError {}

/**
 * Runs an IndexedDB open or deletion that another connection of the site can block. localrec's own
 * tabs close on `versionchange`, so a blocker is other code holding the same database open; rather
 * than wait on it forever, the call is refused once blocked for {@link BLOCKED_GRACE_MS}, or when it
 * has had no answer for {@link STALLED_MS} (queued behind a blocked request). `run` calls `started`
 * when the request is being served (an upgrade began: it is ours, however long it takes). The
 * request itself stays queued in the browser: a late success is handed to `late` (a connection to close).
 */
export function unlessBlocked<T>(run: (blocked: () => void, started: () => void) => Promise<T>, refusal: () => string, late?: (value: T) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let refused = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const refuseIn = (ms: number) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        refused = true;
        reject(new BlockedError(refusal()));
      }, ms);
    };
    refuseIn(STALLED_MS);
    let wasBlocked = false;
    const blocked = () => {
      if (wasBlocked || refused) return;
      wasBlocked = true;
      refuseIn(BLOCKED_GRACE_MS);
    };
    run(blocked, () => clearTimeout(timer)).then(
      (v) => {
        clearTimeout(timer);
        if (refused) late?.(v);
        else resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        if (!refused) reject(e);
      },
    );
  });
}

export const blockedOpen = (name: string) => (): string =>
  `opening IndexedDB database "${name}" failed: it is blocked by another connection of this site (code other than localrec holding a database of that name open without closing it)`;
export const blockedDeletion = (name: string) => (): string =>
  `deleting IndexedDB database "${name}" is blocked by another connection of this site (code other than localrec holding a database of that name open without closing it); its data stays until that connection closes, and the deletion, still queued, goes through then`;

/**
 * Opens the database `name` if it exists, at its current version; null when it does not (the open
 * that would create it is aborted in its upgrade, which leaves none behind). Rejects with the
 * request's error otherwise (IndexedDB refusing, as in private mode). The connection closes itself
 * on `versionchange`. `blocked` and `started` are {@link unlessBlocked}'s. Plain IndexedDB with
 * listeners, not on… properties: what idb uses, and so what stand-ins for a private window's
 * IndexedDB implement.
 */
export function openIfExists(name: string, blocked: () => void = () => undefined, started: () => void = () => undefined): Promise<IDBDatabase | null> {
  return new Promise((resolve, reject) => {
    let absent = false;
    const req = indexedDB.open(name);
    req.addEventListener('blocked', blocked);
    req.addEventListener('upgradeneeded', () => {
      started();
      absent = true;
      req.transaction?.abort();
    });
    req.addEventListener('success', () => {
      const db = req.result;
      db.onversionchange = () => db.close();
      resolve(db);
    });
    req.addEventListener('error', (ev) => {
      ev.preventDefault();
      if (absent) resolve(null);
      else reject(req.error);
    });
  });
}
