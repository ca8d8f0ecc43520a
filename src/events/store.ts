import { openDB, deleteDB, type DBSchema, type IDBPDatabase, type IDBPObjectStore, type IDBPTransaction } from 'idb';
import { StorageError } from '../errors.js';
import type { EventType, StoredEvent } from '../types.js';
import { BlockedError, blockedDeletion, blockedOpen, openIfExists, unlessBlocked } from './blocked.js';
import { DEFAULT_MAX_AGE_DAYS, EVENT_SCHEMA_VERSION, FUTURE_SLACK_MS, storedEventProblem } from './schema.js';
import { foldIntoLedger, ledgerKeeps, ledgerWithExpired, OFFER_LEDGER_KEY, type OfferLedger } from './offer-ledger.js';

/** A stored value of the `meta` store: model weights, counters, settings. */
export type MetaValue = unknown;

interface LocalrecDB extends DBSchema {
  events: { key: number; value: StoredEvent; indexes: { t: number; itemId: string } };
  meta: { key: string; value: MetaValue };
}

export interface Retention {
  maxEvents: number;
  maxAgeDays: number;
}

export interface EventStats {
  total: number;
  byType: Partial<Record<EventType, number>>;
  oldest?: number;
  newest?: number;
}

/**
 * Where events and model state live on the device. {@link IdbEventStore} is the real one;
 * {@link MemoryEventStore} is the fallback when IndexedDB is unavailable (private mode, tests).
 */
export interface EventStore {
  readonly kind: 'indexeddb' | 'memory';
  /**
   * Adds events in one transaction, applies retention, returns how many events were evicted.
   * When the browser's storage quota is exceeded, the oldest events are evicted to make room and
   * the add is retried once; `quotaEvicted` then says how many of `evicted` went for the quota.
   */
  add(events: StoredEvent[]): Promise<AddResult>;
  /** All events in time order (ties in insertion order). */
  all(): Promise<StoredEvent[]>;
  /** Events for one item, in time order. */
  byItem(itemId: string): Promise<StoredEvent[]>;
  count(): Promise<number>;
  /** Events stored after the event with key `id` (all events when `id` is 0). */
  countAfter(id: number): Promise<number>;
  /** Key of the newest stored event, 0 when there is none. */
  lastId(): Promise<number>;
  stats(): Promise<EventStats>;
  getMeta<T = MetaValue>(key: string): Promise<T | undefined>;
  setMeta(key: string, value: MetaValue): Promise<void>;
  /**
   * The offer ledger (src/events/offer-ledger.ts) as it stands once retention has run: the stored
   * record plus what the age limit already hides from reads but the next write has not yet removed
   * (a shopper back after a year, before tracking anything). Read-only.
   */
  offerLedger(): Promise<OfferLedger | undefined>;
  /**
   * Reads the meta record `key`, passes it to `update` and stores what it returns, in one
   * transaction: another tab of the same device that updates the record at the same time cannot
   * slip in between (the privacy accountant, the egress log, the weights). `update` must be
   * synchronous and must not modify the value it is given; if it throws, nothing is written and
   * the error is rethrown.
   */
  updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T>;
  /**
   * {@link updateMeta} for two records at once, in one transaction: both are written or neither
   * (the privacy accountant with the egress entry of the upload its release pays for, so that a
   * tab closed between two writes cannot keep the ε spent without the request in the log).
   */
  updateMetaPair<A, B>(keyA: string, keyB: string, update: (a: A | undefined, b: B | undefined) => [A, B]): Promise<[A, B]>;
  /**
   * IndexedDB only: after another tab deleted the database, once this tab dropped what it held,
   * reads see it empty and the next write creates it anew ({@link IdbEventStore.reopenLazily}).
   */
  reopenLazily?(): void;
  /** IndexedDB only: another tab wrote since the deletion, so the database exists again. */
  existsAgain?(): void;
  /** IndexedDB only: see {@link IdbEventStore.createdAfterDeletion}. */
  createdAfterDeletion?(since: number): boolean;
  /** IndexedDB only: see {@link IdbEventStore.isDeleted}. */
  isDeleted?(): boolean;
  /** IndexedDB only: see {@link IdbEventStore.deletionHandled}. */
  deletionHandled?(): Promise<void> | undefined;
  /** IndexedDB only: called when a reconnect finds the database deleted ({@link IdbEventStore.onVanished}). */
  onVanished?: (() => void) | undefined;
  /** IndexedDB only: called when a read left out stored records that are not events ({@link IdbEventStore.onMalformed}). */
  onMalformed?: ((count: number, problem: string) => void) | undefined;
  /** IndexedDB only: the stored records that are not events, as stored ({@link IdbEventStore.unreadable}). */
  unreadable?(): Promise<unknown[]>;
  /**
   * Applies retention now, as the next write would: deletes the events past the age limit and, when
   * more than `maxEvents` are stored (a lower limit than when they were written), the oldest beyond
   * it, folding offer events and purchases into the offer ledger; writes nothing when nothing is due.
   * Returns how many went.
   */
  applyRetention?(): Promise<number>;
  /** The oldest event time its reads return now (its age limit, on its clock): a reader keeping events must drop older ones too. */
  ageCutoff?(): number;
  /** Deletes every event and every meta record, then the database itself. */
  destroy(): Promise<void>;
  /**
   * IndexedDB only: after {@link destroy} or {@link close}, makes the store usable again, empty
   * (the engine's consent granted anew on a store the caller gave it); does nothing to an open store.
   */
  reopen?(): void;
  close(): void;
}

export interface AddResult {
  /** Events removed by this call: retention (age, count) plus any quota eviction. */
  evicted: number;
  /** Present when the write hit the storage quota: the oldest events removed to make room. */
  quotaEvicted?: number;
  /** Present when the write hit the storage quota: the re-downloadable meta records deleted first ({@link IdbEventStore.disposableOnQuota}). */
  quotaDropped?: string[];
  /**
   * What the write changed, when the store can say exactly (a write without quota trouble): the
   * events as stored (with their ids) and the ids of every event it removed (retention). A reader
   * holding the events from before the write can bring them up to date from these instead of
   * reading them all again (the engine's event cache).
   */
  changes?: { added: StoredEvent[]; removedIds: number[] };
}

/**
 * How many events a failed {@link EventStore.add} had already removed for the storage quota before
 * its retry failed (0 for any other error): they are gone, and are counted as evicted.
 */
export function quotaEvictedBy(e: unknown): number {
  const n = (e as { quotaEvicted?: unknown } | null)?.quotaEvicted;
  return typeof n === 'number' && n > 0 ? n : 0;
}

export const DEFAULT_RETENTION: Retention = { maxEvents: 5000, maxAgeDays: DEFAULT_MAX_AGE_DAYS };
/**
 * On a quota error, this share of the stored events (oldest first, at least as many as the batch
 * being written and at least the room it takes) is evicted before the single retry.
 */
export const QUOTA_EVICT_FRACTION = 0.1;

/**
 * About how much room events take in IndexedDB, to compare a write with what evicting would free:
 * their JSON length plus a record's keys and index entries (a structured clone is about as long).
 */
export function eventsBytes(events: readonly StoredEvent[]): number {
  let n = 0;
  for (const e of events) {
    let json: string | undefined;
    try {
      json = JSON.stringify(e);
    } catch {
      // A record another release or a hand edit left (a BigInt, a cycle): counted as a large event.
    }
    n += (json?.length ?? 256) + 64;
  }
  return n;
}

/** QuotaExceededError as browsers report it (Firefox used NS_ERROR_DOM_QUOTA_REACHED; legacy code 22). */
export function isQuotaError(e: unknown): boolean {
  const x = e as { name?: unknown; code?: unknown } | null;
  return !!x && (x.name === 'QuotaExceededError' || x.name === 'NS_ERROR_DOM_QUOTA_REACHED' || x.code === 22);
}
const DAY_MS = 24 * 3600 * 1000;

/** Counts by type and the time range of `events`, as {@link EventStore.stats} reports them. */
export function statsOf(events: readonly StoredEvent[]): EventStats {
  const byType: Partial<Record<EventType, number>> = {};
  let oldest: number | undefined;
  let newest: number | undefined;
  for (const e of events) {
    byType[e.type] = (byType[e.type] ?? 0) + 1;
    if (oldest === undefined || e.t < oldest) oldest = e.t;
    if (newest === undefined || e.t > newest) newest = e.t;
  }
  return { total: events.length, byType, oldest, newest };
}

function storageError(what: string, e: unknown): StorageError {
  const err = e as { name?: string; message?: string };
  return new StorageError(`${what} failed: ${err?.name ?? 'Error'}: ${err?.message ?? String(e)}`, { cause: e });
}

/** How long a store whose database another tab deleted waits for that tab's message before it tells the engine itself. */
export const DELETION_GRACE_MS = 1000;

/**
 * EventStore over IndexedDB (through `idb`). Schema history:
 * - v1: `events` (auto-increment key `id`) with a `t` index.
 * - v2: adds the `itemId` index and the `meta` store (model weights, counters).
 *
 * @example
 * ```ts
 * const store = await IdbEventStore.open('localrec');
 * await store.add([{ type: 'view', itemId: 'sku-1', t: Date.now() }]);
 * (await store.stats()).total; // 1
 * ```
 */
export class IdbEventStore implements EventStore {
  readonly kind = 'indexeddb' as const;
  /** Undefined after another tab's schema upgrade (or the browser) closed the connection. */
  private db: IDBPDatabase<LocalrecDB> | undefined;
  private reopening: Promise<IDBPDatabase<LocalrecDB>> | undefined;
  private closedByCaller = false;
  /**
   * Set when another tab deletes the database (its `erase()`, or consent withdrawn there): nothing
   * may reopen it, which would bring back in a new database what this tab still holds in memory,
   * until the engine has dropped that state and calls {@link allowReopen}.
   */
  private deletedElsewhere = false;
  /** While {@link deletedElsewhere}: settles when the deletion is handled ({@link reopenLazily}) or the store closed. */
  private handling: { done: Promise<void>; settle: () => void } | undefined;
  private markDeleted(): void {
    this.deletedElsewhere = true;
    if (this.handling) return;
    let settle!: () => void;
    const done = new Promise<void>((resolve) => (settle = resolve));
    this.handling = { done, settle };
  }
  private deletionSettled(): void {
    this.handling?.settle();
    this.handling = undefined;
  }
  /**
   * After such a deletion, once the engine has dropped its state: the database does not exist, so
   * reads answer "empty" without creating it; the next write creates it (see {@link reopenLazily}).
   */
  private absent = false;
  /**
   * True once a connection was made, until a deletion was handled ({@link reopenLazily}): a
   * reconnect that finds no database then knows it was deleted while this tab had no connection to
   * hear of it (another tab's erase, or the browser clearing the site's data), and must not create
   * it anew with what this tab still holds.
   */
  private mustExist = false;
  /** Bumped by {@link reopenLazily}: a reconnect begun before it does not report a deletion already handled. */
  private generation = 0;
  /** When this store created the database (at its first open, or anew after the last deletion it was told of: {@link createdAfterDeletion}). */
  private recreatedAt: number | undefined;
  /**
   * Called (once per deletion, after the call that found it fails) when a reconnect finds the
   * database gone: the engine drops what it holds from it, as for another tab's erase, and then
   * calls {@link reopenLazily}. Without it the store refuses every call until then.
   */
  onVanished?: () => void;
  private constructor(
    readonly name: string,
    private readonly retention: Retention,
  ) {}

  static async open(name: string, retention: Retention = DEFAULT_RETENTION): Promise<IdbEventStore> {
    const store = new IdbEventStore(name, retention);
    store.db = await store.connect();
    return store;
  }

  /**
   * Opens the database at this code's schema version. When another tab already upgraded it to a
   * newer version, opens it at that version instead, as long as the stores and indexes this code
   * needs are still there (upgrades are additive); otherwise a StorageError asks for a reload.
   */
  private async connect(): Promise<IDBPDatabase<LocalrecDB>> {
    const lost = (db: IDBDatabase, deleted: boolean) => {
      // Another tab wants a newer schema (or deletes the database): let it proceed instead of
      // blocking it forever. After an upgrade the next call here reopens; after a deletion only
      // once the engine says so (allowReopen).
      db.close();
      this.db = undefined;
      if (deleted) {
        this.markDeleted();
        // Another localrec tab's erase or withdrawal tells this tab's engine at once; a deletion no
        // tab message follows (devtools, other code of the page's origin) would leave this store
        // refusing every call: after a grace period the engine is told, as for a deletion found
        // on reconnect (it skips that erase's message if it comes later still).
        const generation = this.generation;
        const t = setTimeout(() => {
          if (this.deletedElsewhere && this.generation === generation && !this.closedByCaller) this.onVanished?.();
        }, DELETION_GRACE_MS);
        (t as { unref?: () => void }).unref?.();
      }
      // After an upgrade, reconnect at once rather than at the next call: a tab without an open
      // connection hears nothing of another tab deleting the database (its erase()), and its next
      // write would create it anew with what it still holds from before the erase. (A failure here
      // is the next call's to report: conn() tries again.)
      else if (!this.closedByCaller) void this.conn().catch(() => undefined);
    };
    const handlers = {
      blocking(_current: number, blocked: number | null, event: IDBVersionChangeEvent) {
        lost(event.target as IDBDatabase, blocked === null);
      },
      terminated: () => {
        this.db = undefined;
      },
    };
    // Both taken when this call began: what it carries dates from then, so a database deleted since
    // is not created anew for it, even if the deletion is handled while it waits.
    const generation = this.generation;
    const mustExist = this.mustExist;
    let vanished = false;
    /** The database was deleted while this tab had no connection: refuse, and have the engine drop its state. */
    const deleted = () => {
      if (this.generation !== generation) {
        // Handled while this call waited (reopenLazily): only this call fails; later ones create it.
        return new StorageError(`IndexedDB database "${this.name}" was deleted while this call reconnected: nothing of it was stored`);
      }
      this.markDeleted();
      queueMicrotask(() => this.onVanished?.());
      return this.deletedError();
    };
    let createdNow = false;
    try {
      const db = await unlessBlocked((blocked, started) => openDB<LocalrecDB>(this.name, EVENT_SCHEMA_VERSION, {
        blocked,
        upgrade(db, oldVersion, _newVersion, tx) {
          started();
          if (oldVersion === 0 && mustExist) {
            // Aborting the upgrade of a database that did not exist leaves none behind.
            vanished = true;
            tx.done.catch(() => undefined); // (its rejection is the abort asked for here)
            tx.abort();
            return;
          }
          if (oldVersion === 0) createdNow = true;
          // Each step upgrades from the version before it, so any old database reaches the current one.
          if (oldVersion < 1) {
            const events = db.createObjectStore('events', { keyPath: 'id', autoIncrement: true });
            events.createIndex('t', 't');
          }
          if (oldVersion < 2) {
            tx.objectStore('events').createIndex('itemId', 'itemId');
            db.createObjectStore('meta');
          }
        },
        ...handlers,
      }), blockedOpen(this.name), (late) => late.close());
      this.mustExist = true;
      // (At the first open too: a database this tab creates after another tab's withdrawal deleted
      // it, while this tab was still starting, goes when that withdrawal reaches this tab.)
      if (createdNow && generation === this.generation) this.recreatedAt = Date.now();
      return db;
    } catch (e) {
      if (vanished) throw deleted();
      if (e instanceof BlockedError) throw e;
      if ((e as { name?: string })?.name !== 'VersionError') throw storageError(`opening IndexedDB database "${this.name}"`, e);
    }
    // A newer schema from another tab: open at its version and check that ours is contained in it.
    let db: IDBPDatabase<LocalrecDB>;
    try {
      db = await openDB<LocalrecDB>(this.name, undefined, {
        ...handlers,
        // Deleted between the two opens: not created here at version 1 without stores.
        upgrade(_db, _oldVersion, _newVersion, tx) {
          vanished = true;
          tx.done.catch(() => undefined);
          tx.abort();
        },
      });
    } catch (e) {
      if (vanished) {
        if (mustExist) throw deleted();
        return this.connect(); // (the first open creates it at this code's version)
      }
      throw storageError(`opening IndexedDB database "${this.name}"`, e);
    }
    const ok =
      db.objectStoreNames.contains('events') &&
      db.objectStoreNames.contains('meta') &&
      (() => {
        const idx = db.transaction('events').store.indexNames;
        return idx.contains('t') && idx.contains('itemId');
      })();
    if (!ok) {
      db.close();
      throw new StorageError(`IndexedDB database "${this.name}" was upgraded to version ${db.version} by a newer localrec in another tab, without the stores this page needs: reload the page`);
    }
    this.mustExist = true;
    return db;
  }

  private deletedError(): StorageError {
    return new StorageError(`IndexedDB database "${this.name}" was deleted (another tab erased it, or the browser cleared the site's data)`);
  }

  /** The open connection, reopened when another tab's upgrade closed it. */
  private async conn(): Promise<IDBPDatabase<LocalrecDB>> {
    if (this.closedByCaller) throw new StorageError(`IndexedDB database "${this.name}" is closed`);
    if (this.db) return this.db;
    if (this.deletedElsewhere) throw this.deletedError();
    if (this.reopening) return this.reopening;
    // (reopenLazily() lets go of a reconnect begun before it: later calls do not join its refusal.)
    const reopening: Promise<IDBPDatabase<LocalrecDB>> = this.connect().then(
      (db) => {
        if (this.reopening === reopening) this.reopening = undefined;
        // close() came while it reconnected: the new connection is not kept (nor used).
        if (this.closedByCaller) {
          db.close();
          throw new StorageError(`IndexedDB database "${this.name}" is closed`);
        }
        return (this.db = db);
      },
      (e) => {
        if (this.reopening === reopening) this.reopening = undefined;
        throw e;
      },
    );
    this.reopening = reopening;
    return reopening;
  }

  async add(events: StoredEvent[]): Promise<AddResult> {
    if (events.length === 0) return { evicted: 0 };
    let quotaError: unknown;
    try {
      const r = await this.addOnce(events);
      this.overQuota = false;
      return r;
    } catch (e) {
      if (!isQuotaError(e)) throw storageError(`storing ${events.length} event(s)`, e);
      quotaError = e;
      // Evicting did not make room last time (something else fills the site's quota): evicting
      // again at every write would empty the history a tenth at a time and still store nothing.
      if (this.overQuota) {
        throw storageError(`storing ${events.length} event(s) (still over the storage quota, as at the last write; no events are evicted until a write succeeds)`, e);
      }
    }
    // Over quota: the aborted transaction stored nothing. What can be fetched again (the shop's
    // global model, its neighbour table: often the largest records) goes first, then retry.
    let quotaDropped: string[] = [];
    try {
      quotaDropped = await this.dropDisposable();
    } catch (e) {
      throw storageError(`deleting re-downloadable records after a quota error while storing ${events.length} event(s)`, e);
    }
    if (quotaDropped.length > 0) {
      try {
        const r = await this.addOnce(events);
        this.overQuota = false;
        return { ...r, quotaDropped };
      } catch (e) {
        if (!isQuotaError(e)) throw storageError(`storing ${events.length} event(s)`, e);
      }
    }
    // Evict the oldest events by policy in a transaction of their own, then retry once; a second
    // failure reaches the caller.
    let quotaEvicted: number;
    try {
      const db = await this.conn();
      const stored = await db.count('events');
      quotaEvicted = await this.evictOldest(Math.max(events.length, Math.ceil(stored * QUOTA_EVICT_FRACTION)), eventsBytes(events));
    } catch (e) {
      throw storageError(`evicting old events after a quota error while storing ${events.length} event(s)`, e);
    }
    if (quotaEvicted === 0) {
      // Evicting the whole history would not free the room these take (long search queries
      // against a short history of views): the shopper would lose it and store nothing.
      this.overQuota = true;
      throw storageError(`storing ${events.length} event(s) (over the storage quota; the stored events take less room than these, so none were evicted)`, quotaError);
    }
    try {
      const r = await this.addOnce(events);
      // (No `changes`: which events the eviction removed is not kept.)
      return { evicted: r.evicted + quotaEvicted, quotaEvicted, ...(quotaDropped.length ? { quotaDropped } : {}) };
    } catch (e) {
      if (isQuotaError(e)) this.overQuota = true;
      // The evicted events are gone whatever the retry did: the caller counts them (quotaEvictedBy).
      throw Object.assign(storageError(`storing ${events.length} event(s) after evicting the ${quotaEvicted} oldest for the storage quota`, e), { quotaEvicted });
    }
  }

  /** Set when a write failed for the quota even after evicting; cleared by the next write that succeeds. */
  private overQuota = false;

  /** One readwrite transaction: add, then retention. Rejects with the transaction's own error (e.g. QuotaExceededError). */
  private async addOnce(events: StoredEvent[]): Promise<{ evicted: number; changes: { added: StoredEvent[]; removedIds: number[] } }> {
    // The meta store too: what retention removes of offer events and purchases goes into the offer
    // ledger in the same transaction (src/events/offer-ledger.ts).
    const tx = (await this.connForWrite()).transaction(['events', 'meta'], 'readwrite');
    const store = tx.objectStore('events');
    const kept: StoredEvent[] = [];
    // Observed from the start, so that an abort never surfaces as an unhandled rejection.
    const done = tx.done.then(
      () => undefined,
      (e: unknown) => e ?? new Error('transaction aborted'),
    );
    try {
      // Only IndexedDB requests are awaited inside the transaction, so it cannot auto-commit early.
      // Collected so that a failed add (e.g. QuotaExceededError) rejects here, not unhandled.
      const adds: Promise<unknown>[] = [];
      try {
        for (const e of events) adds.push(store.add({ ...e }));
      } finally {
        // When the transaction aborts under us (quota), the next add() throws synchronously: the
        // requests already made must not be left as unhandled rejections.
        void Promise.allSettled(adds);
      }
      const ids = (await Promise.all(adds)) as number[];
      const removedIds: number[] = [];
      let evicted = await deleteExpired(store, ageCutoff(this.retention), kept, removedIds);
      evicted += await deleteOverCount(store, this.retention.maxEvents, kept, removedIds);
      await foldRemoved(tx, kept);
      const err = await done;
      if (err) throw err;
      return { evicted, changes: { added: events.map((e, i) => ({ ...e, id: ids[i]! })), removedIds } };
    } catch (e) {
      // One transaction: an add that threw (a value that cannot be stored) must not leave the ones
      // before it committed, or a retry of the batch would store them twice.
      try {
        tx.abort();
      } catch {
        // Already finished or aborted (quota).
      }
      // A request that failed because its transaction aborted reports AbortError; the cause
      // (QuotaExceededError) is the transaction's error. When the abort was ours (an add that
      // threw: a value that cannot be stored), the transaction's AbortError says nothing: the
      // add's own error does.
      const txError = await done;
      throw txError && (txError as { name?: unknown }).name !== 'AbortError' ? txError : e;
    }
  }

  /**
   * Meta records the page can fetch again (the engine names the global model and the neighbour
   * table): when a write hits the storage quota they are deleted before any event, which no
   * download brings back.
   */
  disposableOnQuota: readonly string[] = [];

  /** Deletes the {@link disposableOnQuota} records that are stored, in one transaction; their keys. */
  private async dropDisposable(): Promise<string[]> {
    if (this.disposableOnQuota.length === 0) return [];
    const tx = (await this.conn()).transaction('meta', 'readwrite');
    const dropped: string[] = [];
    for (const key of this.disposableOnQuota) {
      if ((await tx.store.count(key)) === 0) continue;
      await tx.store.delete(key);
      dropped.push(key);
    }
    await tx.done;
    return dropped;
  }

  /** Deletes up to `n` of the oldest events (by time) in one transaction; returns how many. */
  /**
   * Deletes the oldest stored events, at least `n` and at least `bytes` of them by
   * {@link eventsBytes}, in a transaction of their own (Chromium counts a transaction's writes
   * against the quota without subtracting what it deletes: an eviction frees room only once
   * committed). When all of them together take less than `bytes`, deletes none and returns 0.
   */
  private async evictOldest(n: number, bytes: number): Promise<number> {
    const tx = (await this.conn()).transaction(['events', 'meta'], 'readwrite');
    const kept: StoredEvent[] = [];
    let evicted = 0;
    let freed = 0;
    let c = await tx.objectStore('events').index('t').openCursor();
    while (c && (evicted < n || freed < bytes)) {
      if (ledgerKeeps(c.value)) kept.push(c.value);
      freed += eventsBytes([c.value]);
      await c.delete();
      evicted++;
      c = await c.continue();
    }
    if (freed < bytes) {
      tx.abort();
      await tx.done.catch(() => undefined);
      return 0;
    }
    // Deleting frees room; the ledger grows with the number of offers, not of events.
    await foldRemoved(tx, kept);
    await tx.done;
    return evicted;
  }

  ageCutoff(): number {
    return ageCutoff(this.retention);
  }

  async applyRetention(): Promise<number> {
    if (this.absent) return 0;
    const generation = this.generation;
    const cutoff = ageCutoff(this.retention);
    const db = await this.conn();
    // Read first: a database with nothing due is not written to.
    const due = (await db.countFromIndex('events', 't', IDBKeyRange.upperBound(cutoff, true))) > 0 || (await db.count('events')) > this.retention.maxEvents;
    // Nor one another tab deleted meanwhile (its erase must not leave an empty database behind):
    // this is no write of the shopper's, so it never creates the database anew.
    if (!due || this.absent || this.generation !== generation) return 0;
    const tx = (await this.conn()).transaction(['events', 'meta'], 'readwrite');
    const kept: StoredEvent[] = [];
    const removed = (await deleteExpired(tx.objectStore('events'), cutoff, kept)) + (await deleteOverCount(tx.objectStore('events'), this.retention.maxEvents, kept));
    await foldRemoved(tx, kept);
    await tx.done;
    return removed;
  }

  async all(): Promise<StoredEvent[]> {
    if (this.absent) return [];
    // Events past the age limit are deleted at the next write (or applyRetention()); until then they are not read either.
    return this.sound(await (await this.conn()).getAllFromIndex('events', 't', IDBKeyRange.lowerBound(ageCutoff(this.retention))));
  }

  /**
   * Called when a read leaves out stored records that are not events (hand-edited, or written by
   * another release): how many, and what is wrong with the first. They stay stored (retention or
   * an erase removes them); the engine says so in `stats().lastError`.
   */
  onMalformed?: (count: number, problem: string) => void;

  /**
   * The stored records that are not events {@link validateEvent} would have stored (every one,
   * whatever its time: one without a time is in no index), as stored: for `export()`.
   */
  async unreadable(): Promise<unknown[]> {
    if (this.absent) return [];
    return ((await (await this.conn()).getAll('events')) as unknown[]).filter((r) => storedEventProblem(r) !== undefined);
  }

  /** `records` without those that are not events {@link validateEvent} would have stored. */
  private sound(records: StoredEvent[]): StoredEvent[] {
    let bad = 0;
    let first = '';
    const out = records.filter((r) => {
      const problem = storedEventProblem(r);
      if (problem !== undefined && bad++ === 0) first = `event ${String((r as { id?: unknown } | null)?.id)}: ${problem}`;
      return problem === undefined;
    });
    if (bad > 0) this.onMalformed?.(bad, first);
    return out;
  }

  async byItem(itemId: string): Promise<StoredEvent[]> {
    if (this.absent) return [];
    const cutoff = ageCutoff(this.retention);
    const evs = this.sound(await (await this.conn()).getAllFromIndex('events', 'itemId', itemId)).filter((e) => e.t >= cutoff);
    return evs.sort((a, b) => a.t - b.t || (a.id ?? 0) - (b.id ?? 0));
  }

  async count(): Promise<number> {
    if (this.absent) return 0;
    return (await this.conn()).count('events');
  }

  async countAfter(id: number): Promise<number> {
    if (this.absent) return 0;
    return (await this.conn()).count('events', IDBKeyRange.lowerBound(id, true));
  }

  async lastId(): Promise<number> {
    if (this.absent) return 0;
    const c = await (await this.conn()).transaction('events').store.openCursor(null, 'prev');
    return c ? c.primaryKey : 0;
  }

  async stats(): Promise<EventStats> {
    return statsOf(await this.all());
  }

  async getMeta<T = MetaValue>(key: string): Promise<T | undefined> {
    if (this.absent) return undefined;
    return (await (await this.conn()).get('meta', key)) as T | undefined;
  }

  async offerLedger(): Promise<OfferLedger | undefined> {
    if (this.absent) return undefined;
    // One transaction: a write that removes events and folds them in cannot land between the reads.
    const tx = (await this.conn()).transaction(['events', 'meta'], 'readonly');
    const [stored, expired] = await Promise.all([
      tx.objectStore('meta').get(OFFER_LEDGER_KEY) as Promise<OfferLedger | undefined>,
      tx.objectStore('events').index('t').getAll(IDBKeyRange.upperBound(ageCutoff(this.retention), true)),
    ]);
    await tx.done;
    return ledgerWithExpired(stored, expired);
  }

  async setMeta(key: string, value: MetaValue): Promise<void> {
    try {
      await (await this.connForWrite()).put('meta', value, key);
    } catch (e) {
      throw storageError(`saving "${key}"`, e);
    }
  }

  async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
    const [next] = await this.updateRecords([key], ([current]) => [update(current as T | undefined)]);
    return next as T;
  }

  async updateMetaPair<A, B>(keyA: string, keyB: string, update: (a: A | undefined, b: B | undefined) => [A, B]): Promise<[A, B]> {
    return (await this.updateRecords([keyA, keyB], ([a, b]) => update(a as A | undefined, b as B | undefined))) as [A, B];
  }

  /**
   * Reads the meta records `keys`, passes them to `update` and stores what it returns (one value a
   * key, in order), in one transaction: all are written or none. `update` runs in the same task as
   * the reads, so the transaction is still active for the puts; if it throws, nothing is written.
   */
  private async updateRecords(keys: readonly string[], update: (current: unknown[]) => unknown[]): Promise<unknown[]> {
    const named = keys.map((k) => `"${k}"`).join(' and ');
    let tx: IDBPTransaction<LocalrecDB, ['meta'], 'readwrite'> | undefined;
    let current: unknown[];
    try {
      tx = (await this.connForWrite()).transaction('meta', 'readwrite');
      tx.done.catch(() => undefined); // (a failure is reported below, from the request that failed)
      current = await Promise.all(keys.map((k) => tx!.store.get(k)));
    } catch (e) {
      throw e instanceof StorageError ? e : storageError(`reading ${named}`, e);
    }
    let next: unknown[];
    try {
      next = update(current);
    } catch (e) {
      tx.abort();
      await tx.done.catch(() => undefined);
      throw e;
    }
    const puts: Promise<unknown>[] = [];
    try {
      // A put that throws (a value that cannot be cloned) does so before any request fails: the
      // requests made before it must not go unhandled when the abort below rejects them.
      try {
        keys.forEach((k, i) => puts.push(tx!.store.put(next[i] as MetaValue, k)));
      } finally {
        void Promise.allSettled(puts);
      }
      await Promise.all(puts);
      await tx.done;
    } catch (e) {
      // One put refused: the others must not commit.
      try {
        tx.abort();
      } catch {
        // Already finished (aborted by the failure itself).
      }
      await tx.done.catch(() => undefined);
      throw storageError(`saving ${named}`, e);
    }
    return next;
  }

  /**
   * After another tab deleted the database, once this tab has dropped what it held: reads see an
   * empty database without creating one, and this tab's next write creates it anew.
   */
  reopenLazily(): void {
    this.deletedElsewhere = false;
    this.deletionSettled();
    this.absent = true;
    this.mustExist = false;
    this.generation++;
    this.recreatedAt = undefined;
    this.reopening = undefined;
  }

  /**
   * Whether this store created the database anew, after the last deletion it was told of, at or
   * after `since` (ms since the epoch): then another tab's consent withdrawal, which deleted it at
   * `since`, came before this tab heard of it, and the engine deletes it again rather than leave
   * behind what this tab wrote meanwhile.
   */
  createdAfterDeletion(since: number): boolean {
    return this.recreatedAt !== undefined && this.recreatedAt >= since;
  }

  /** Whether the database was deleted and this store refuses calls until {@link reopenLazily}. */
  isDeleted(): boolean {
    return this.deletedElsewhere;
  }

  /**
   * While the database is deleted and the engine has not yet dropped what it held
   * ({@link isDeleted}): a promise that settles once it has ({@link reopenLazily}) or the store is
   * closed. Another tab's erase() resolves before its message reaches this tab: a call made then
   * waits for it rather than be refused. Undefined otherwise.
   */
  deletionHandled(): Promise<void> | undefined {
    return this.deletedElsewhere ? this.handling?.done : undefined;
  }

  /** Another tab wrote to the database since it was deleted: it exists again, reads open it. */
  existsAgain(): void {
    this.absent = false;
  }

  /** For a write: a database deleted elsewhere is created anew from here on. */
  private async connForWrite(): Promise<IDBPDatabase<LocalrecDB>> {
    this.absent = false;
    return this.conn();
  }

  async destroy(): Promise<void> {
    this.close();
    await unlessBlocked((blocked) => deleteDB(this.name, { blocked }), blockedDeletion(this.name));
    this.destroyed = true;
  }

  /**
   * After {@link destroy} or {@link close}: usable again. After a destroy, reads see it empty without
   * creating it and the next write creates it; after a close, the next call reconnects. Nothing
   * changes on an open store.
   */
  reopen(): void {
    if (!this.closedByCaller) return;
    this.closedByCaller = false;
    // Deleted by destroy(): known to be absent until the next write. Closed only: reconnects.
    if (this.destroyed) this.reopenLazily();
    this.destroyed = false;
  }

  private destroyed = false;

  close(): void {
    this.closedByCaller = true;
    this.deletionSettled();
    this.db?.close();
    this.db = undefined;
  }
}

/** Same contract as {@link IdbEventStore}, kept in memory: used when IndexedDB cannot be opened. */
export class MemoryEventStore implements EventStore {
  readonly kind = 'memory' as const;
  private events: StoredEvent[] = [];
  private meta = new Map<string, MetaValue>();
  private nextId = 1;
  /**
   * @param fallbackReason Why IndexedDB could not be used when {@link openEventStore} fell back to
   *   memory (the engine reports it in `stats().lastError`).
   */
  constructor(
    private readonly retention: Retention = DEFAULT_RETENTION,
    readonly fallbackReason?: Error,
  ) {}

  async add(events: StoredEvent[]): Promise<AddResult> {
    const added = events.map((e) => ({ ...e, id: this.nextId++ }));
    this.events.push(...added.map((e) => ({ ...e })));
    this.events.sort((a, b) => a.t - b.t || a.id! - b.id!);
    const removedIds: number[] = [];
    return { evicted: this.retain(removedIds), changes: { added, removedIds } };
  }
  /** Retention as IndexedDB applies it (age limit, then the count limit in retentionOrder). */
  private retain(removedIds?: number[]): number {
    const before = this.events.length;
    const cutoff = ageCutoff(this.retention);
    const removed = this.events.filter((e) => e.t < cutoff);
    this.events = this.events.filter((e) => e.t >= cutoff);
    const over = this.events.length - this.retention.maxEvents;
    if (over > 0) {
      const gone = new Set(retentionOrder(this.events.slice(), recentSince()).slice(0, over));
      removed.push(...this.events.filter((e) => gone.has(e)));
      this.events = this.events.filter((e) => !gone.has(e));
    }
    for (const e of removed) removedIds?.push(e.id!);
    const kept = removed.filter(ledgerKeeps);
    if (kept.length) this.meta.set(OFFER_LEDGER_KEY, structuredClone(foldIntoLedger(this.meta.get(OFFER_LEDGER_KEY) as OfferLedger | undefined, kept)) as MetaValue);
    return before - this.events.length;
  }
  async all(): Promise<StoredEvent[]> {
    const cutoff = ageCutoff(this.retention);
    return this.events.filter((e) => e.t >= cutoff).map((e) => ({ ...e }));
  }
  async applyRetention(): Promise<number> {
    return this.retain();
  }
  ageCutoff(): number {
    return ageCutoff(this.retention);
  }
  async byItem(itemId: string): Promise<StoredEvent[]> {
    const cutoff = ageCutoff(this.retention);
    return this.events.filter((e) => e.itemId === itemId && e.t >= cutoff).map((e) => ({ ...e }));
  }
  async count(): Promise<number> {
    return this.events.length;
  }
  async countAfter(id: number): Promise<number> {
    return this.events.filter((e) => e.id! > id).length;
  }
  async lastId(): Promise<number> {
    // As IndexedDB: the newest stored event's key, 0 when none is stored.
    return this.events.reduce((m, e) => Math.max(m, e.id!), 0);
  }
  async stats(): Promise<EventStats> {
    return statsOf(await this.all());
  }
  async offerLedger(): Promise<OfferLedger | undefined> {
    const cutoff = ageCutoff(this.retention);
    return ledgerWithExpired(await this.getMeta<OfferLedger>(OFFER_LEDGER_KEY), this.events.filter((e) => e.t < cutoff));
  }
  async getMeta<T = MetaValue>(key: string): Promise<T | undefined> {
    // A copy, as IndexedDB gives: changing what was read does not change what is stored.
    const v = this.meta.get(key);
    return (v === undefined ? undefined : structuredClone(v)) as T | undefined;
  }
  async setMeta(key: string, value: MetaValue): Promise<void> {
    this.meta.set(key, structuredClone(value));
  }
  async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
    // Not cloned on the way in: `update` must not modify what it is given (it returns a new value).
    const next = update(this.meta.get(key) as T | undefined);
    this.meta.set(key, structuredClone(next));
    return next;
  }
  async updateMetaPair<A, B>(keyA: string, keyB: string, update: (a: A | undefined, b: B | undefined) => [A, B]): Promise<[A, B]> {
    const next = update(this.meta.get(keyA) as A | undefined, this.meta.get(keyB) as B | undefined);
    // Both cloned before either is set: a value that cannot be cloned leaves both as they were.
    const [a, b] = [structuredClone(next[0]), structuredClone(next[1])];
    this.meta.set(keyA, a);
    this.meta.set(keyB, b);
    return next;
  }
  async destroy(): Promise<void> {
    this.events = [];
    this.meta.clear();
  }
  close(): void {}
}

/**
 * Deletes the events stored before `cutoff` through the `t` index of `store` (inside a readwrite
 * transaction that also holds `meta`), pushing those the offer ledger keeps onto `kept`.
 */
async function deleteExpired(store: IDBPObjectStore<LocalrecDB, ['events', 'meta'], 'events', 'readwrite'>, cutoff: number, kept: StoredEvent[], removedIds?: number[]): Promise<number> {
  let removed = 0;
  let cursor = await store.index('t').openCursor(IDBKeyRange.upperBound(cutoff, true));
  while (cursor) {
    if (ledgerKeeps(cursor.value)) kept.push(cursor.value);
    removedIds?.push(cursor.primaryKey);
    await cursor.delete();
    removed++;
    cursor = await cursor.continue();
  }
  return removed;
}

/**
 * The retention order of the count limit: oldest first by time, except within the last day, where
 * events go in the order they were stored. A page may stamp events up to a day ahead of the device's
 * clock (its server's time; FUTURE_SLACK_MS), so within that day time order is not the order things
 * happened: ordered by time, events stamped ahead would outlast what the shopper does next, and an
 * event could be evicted by the very write that stores it.
 */
function retentionOrder<E extends { t: number; id?: number }>(events: E[], recent: number): E[] {
  const key = (e: E) => Math.min(e.t, recent);
  return events.sort((a, b) => key(a) - key(b) || (a.id ?? 0) - (b.id ?? 0));
}

/** Where the last day, which the count limit orders by storage, begins. */
function recentSince(): number {
  return Date.now() - FUTURE_SLACK_MS;
}

/**
 * Deletes the oldest events beyond `maxEvents` (in {@link retentionOrder}) through `store` (inside a
 * readwrite transaction that also holds `meta`), pushing those the offer ledger keeps onto `kept`.
 */
async function deleteOverCount(store: IDBPObjectStore<LocalrecDB, ['events', 'meta'], 'events', 'readwrite'>, maxEvents: number, kept: StoredEvent[], removedIds?: number[]): Promise<number> {
  let over = (await store.count()) - maxEvents;
  if (over <= 0) return 0;
  const recent = recentSince();
  let removed = 0;
  // Those older than the last day, oldest first, straight off the index.
  let c = await store.index('t').openCursor(IDBKeyRange.upperBound(recent, true));
  while (c && over > 0) {
    if (ledgerKeeps(c.value)) kept.push(c.value);
    removedIds?.push(c.primaryKey);
    await c.delete();
    removed++;
    over--;
    c = await c.continue();
  }
  if (over <= 0) return removed;
  // Then the last day's: in the order they were stored.
  const rest = retentionOrder(await store.index('t').getAll(IDBKeyRange.lowerBound(recent)), recent).slice(0, over);
  for (const e of rest) {
    if (ledgerKeeps(e)) kept.push(e);
    removedIds?.push(e.id!);
    await store.delete(e.id!);
    removed++;
  }
  return removed;
}

/** Opens IndexedDB, or falls back to memory when it is missing or refuses to open. */
export async function openEventStore(name: string, retention: Retention): Promise<EventStore> {
  if (typeof indexedDB === 'undefined') return new MemoryEventStore(retention);
  try {
    return await IdbEventStore.open(name, retention);
  } catch (e) {
    return new MemoryEventStore(retention, e instanceof Error ? e : storageError(`opening IndexedDB database "${name}"`, e));
  }
}

/**
 * Whether an IndexedDB database named `name` exists, without creating one: `indexedDB.databases()`
 * where the browser has it (Firefox only from 126), else an open whose upgrade from version 0 — a
 * database that did not exist — is aborted, which leaves none behind. Null when it cannot be told
 * (no IndexedDB, or the open failed for another reason).
 */
export async function databaseExists(name: string): Promise<boolean | null> {
  if (typeof indexedDB === 'undefined') return null;
  if (typeof indexedDB.databases === 'function') {
    try {
      return (await indexedDB.databases()).some((d) => d.name === name);
    } catch {
      return null;
    }
  }
  try {
    const db = await openIfExists(name);
    db?.close();
    return db !== null;
  } catch {
    return null;
  }
}

/**
 * Deletes the database `name` without opening it (used when this session runs on memory but an
 * earlier one may have stored data). Where IndexedDB is missing or refuses, nothing can have been
 * stored there, so there is nothing to delete.
 */
export async function deleteEventDatabase(name: string): Promise<void> {
  if (typeof indexedDB === 'undefined') return;
  try {
    await unlessBlocked((blocked) => deleteDB(name, { blocked }), blockedDeletion(name));
  } catch (e) {
    // A database some other connection holds open exists, with what it holds: not swallowed.
    if (e instanceof BlockedError) throw e;
    // IndexedDB refuses here (e.g. a private window): it could not have been written either.
  }
}

/** The oldest event time `retention` keeps (ms since 1970). */
/**
 * Folds the offer events and purchases a retention pass of `tx` removed into the offer ledger, in
 * that same transaction (nothing is written when there are none).
 */
async function foldRemoved(tx: IDBPTransaction<LocalrecDB, ['events', 'meta'], 'readwrite'>, removed: readonly StoredEvent[]): Promise<void> {
  if (removed.length === 0) return;
  const meta = tx.objectStore('meta');
  await meta.put(foldIntoLedger((await meta.get(OFFER_LEDGER_KEY)) as OfferLedger | undefined, removed), OFFER_LEDGER_KEY);
}

function ageCutoff(retention: Retention): number {
  return Date.now() - retention.maxAgeDays * DAY_MS;
}
