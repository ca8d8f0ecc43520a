import { openDB, deleteDB, type DBSchema, type IDBPDatabase } from 'idb';
import { StorageError } from '../errors.js';
import type { EventType, StoredEvent } from '../types.js';
import { EVENT_SCHEMA_VERSION } from './schema.js';

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
  /** Adds events in one transaction, applies retention, returns how many events were evicted. */
  add(events: StoredEvent[]): Promise<{ evicted: number }>;
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
  /** Deletes every event and every meta record, then the database itself. */
  destroy(): Promise<void>;
  close(): void;
}

export const DEFAULT_RETENTION: Retention = { maxEvents: 5000, maxAgeDays: 365 };
const DAY_MS = 24 * 3600 * 1000;

function statsOf(events: StoredEvent[]): EventStats {
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
  private constructor(
    private readonly db: IDBPDatabase<LocalrecDB>,
    readonly name: string,
    private readonly retention: Retention,
  ) {}

  static async open(name: string, retention: Retention = DEFAULT_RETENTION): Promise<IdbEventStore> {
    let db: IDBPDatabase<LocalrecDB>;
    try {
      db = await openDB<LocalrecDB>(name, EVENT_SCHEMA_VERSION, {
        upgrade(db, oldVersion, _newVersion, tx) {
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
        blocking(_current, _blocked, event) {
          // Another tab wants a newer schema: let it upgrade instead of blocking it forever.
          (event.target as IDBDatabase).close();
        },
      });
    } catch (e) {
      throw storageError(`opening IndexedDB database "${name}"`, e);
    }
    return new IdbEventStore(db, name, retention);
  }

  async add(events: StoredEvent[]): Promise<{ evicted: number }> {
    if (events.length === 0) return { evicted: 0 };
    try {
      const tx = this.db.transaction('events', 'readwrite');
      // Only IndexedDB requests are awaited inside the transaction, so it cannot auto-commit early.
      // Collected so that a failed add (e.g. QuotaExceededError) rejects here, not unhandled.
      await Promise.all(events.map((e) => tx.store.add({ ...e })));
      let evicted = 0;
      const cutoff = Date.now() - this.retention.maxAgeDays * DAY_MS;
      let cursor = await tx.store.index('t').openCursor(IDBKeyRange.upperBound(cutoff, true));
      while (cursor) {
        await cursor.delete();
        evicted++;
        cursor = await cursor.continue();
      }
      const over = (await tx.store.count()) - this.retention.maxEvents;
      if (over > 0) {
        let c = await tx.store.index('t').openCursor();
        for (let i = 0; i < over && c; i++) {
          await c.delete();
          evicted++;
          c = await c.continue();
        }
      }
      await tx.done;
      return { evicted };
    } catch (e) {
      throw storageError(`storing ${events.length} event(s)`, e);
    }
  }

  async all(): Promise<StoredEvent[]> {
    const evs = await this.db.getAllFromIndex('events', 't');
    return evs;
  }

  async byItem(itemId: string): Promise<StoredEvent[]> {
    const evs = await this.db.getAllFromIndex('events', 'itemId', itemId);
    return evs.sort((a, b) => a.t - b.t || (a.id ?? 0) - (b.id ?? 0));
  }

  count(): Promise<number> {
    return this.db.count('events');
  }

  countAfter(id: number): Promise<number> {
    return this.db.count('events', IDBKeyRange.lowerBound(id, true));
  }

  async lastId(): Promise<number> {
    const c = await this.db.transaction('events').store.openCursor(null, 'prev');
    return c ? c.primaryKey : 0;
  }

  async stats(): Promise<EventStats> {
    return statsOf(await this.all());
  }

  getMeta<T = MetaValue>(key: string): Promise<T | undefined> {
    return this.db.get('meta', key) as Promise<T | undefined>;
  }

  async setMeta(key: string, value: MetaValue): Promise<void> {
    try {
      await this.db.put('meta', value, key);
    } catch (e) {
      throw storageError(`saving "${key}"`, e);
    }
  }

  async destroy(): Promise<void> {
    this.db.close();
    await deleteDB(this.name);
  }

  close(): void {
    this.db.close();
  }
}

/** Same contract as {@link IdbEventStore}, kept in memory: used when IndexedDB cannot be opened. */
export class MemoryEventStore implements EventStore {
  readonly kind = 'memory' as const;
  private events: StoredEvent[] = [];
  private meta = new Map<string, MetaValue>();
  private nextId = 1;
  constructor(private readonly retention: Retention = DEFAULT_RETENTION) {}

  async add(events: StoredEvent[]): Promise<{ evicted: number }> {
    for (const e of events) this.events.push({ ...e, id: this.nextId++ });
    this.events.sort((a, b) => a.t - b.t || a.id! - b.id!);
    const before = this.events.length;
    const cutoff = Date.now() - this.retention.maxAgeDays * DAY_MS;
    this.events = this.events.filter((e) => e.t >= cutoff);
    if (this.events.length > this.retention.maxEvents) this.events = this.events.slice(-this.retention.maxEvents);
    return { evicted: before - this.events.length };
  }
  async all(): Promise<StoredEvent[]> {
    return this.events.map((e) => ({ ...e }));
  }
  async byItem(itemId: string): Promise<StoredEvent[]> {
    return this.events.filter((e) => e.itemId === itemId).map((e) => ({ ...e }));
  }
  async count(): Promise<number> {
    return this.events.length;
  }
  async countAfter(id: number): Promise<number> {
    return this.events.filter((e) => e.id! > id).length;
  }
  async lastId(): Promise<number> {
    return this.nextId - 1;
  }
  async stats(): Promise<EventStats> {
    return statsOf(this.events);
  }
  async getMeta<T = MetaValue>(key: string): Promise<T | undefined> {
    return this.meta.get(key) as T | undefined;
  }
  async setMeta(key: string, value: MetaValue): Promise<void> {
    this.meta.set(key, structuredClone(value));
  }
  async destroy(): Promise<void> {
    this.events = [];
    this.meta.clear();
  }
  close(): void {}
}

/** Opens IndexedDB, or falls back to memory when it is missing or refuses to open. */
export async function openEventStore(name: string, retention: Retention): Promise<EventStore> {
  if (typeof indexedDB === 'undefined') return new MemoryEventStore(retention);
  try {
    return await IdbEventStore.open(name, retention);
  } catch {
    return new MemoryEventStore(retention);
  }
}
