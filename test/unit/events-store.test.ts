import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { deleteDB, openDB } from 'idb';
import { IdbEventStore, MemoryEventStore, openEventStore, type EventStore } from '../../src/events/store.js';
import type { StoredEvent } from '../../src/types.js';
import { OFFER_LEDGER_KEY, type OfferLedger } from '../../src/events/offer-ledger.js';

const DAY = 86_400_000;
const now = Date.now();
const ev = (itemId: string, t: number, type: StoredEvent['type'] = 'view'): StoredEvent => ({ type, itemId, t });

let dbCounter = 0;
const stores: Array<[string, () => Promise<EventStore>]> = [
  ['IndexedDB', () => IdbEventStore.open(`store-test-${dbCounter++}`, { maxEvents: 5, maxAgeDays: 30 })],
  ['memory', async () => new MemoryEventStore({ maxEvents: 5, maxAgeDays: 30 })],
];

for (const [kind, make] of stores) {
  describe(`EventStore (${kind})`, () => {
    it('adds in one batch and reads back in time order, by item, with stats', async () => {
      const s = await make();
      await s.add([ev('b', now - 2000), ev('a', now - 3000, 'purchase'), ev('a', now - 1000)]);
      assert.deepEqual((await s.all()).map((e) => [e.itemId, e.t]), [['a', now - 3000], ['b', now - 2000], ['a', now - 1000]]);
      assert.deepEqual((await s.byItem('a')).map((e) => e.type), ['purchase', 'view']);
      const st = await s.stats();
      assert.equal(st.total, 3);
      assert.deepEqual(st.byType, { view: 2, purchase: 1 });
      assert.equal(st.oldest, now - 3000);
      assert.equal(st.newest, now - 1000);
      assert.equal(await s.countAfter(0), 3);
      const last = await s.lastId();
      await s.add([ev('c', now)]);
      assert.equal(await s.countAfter(last), 1);
      await s.destroy();
    });

    it('applies retention: at most maxEvents, oldest first, and nothing older than maxAgeDays', async () => {
      const s = await make();
      await s.add([ev('old', now - 40 * DAY)]);
      assert.equal(await s.count(), 0, 'too old on arrival');
      const batch = Array.from({ length: 7 }, (_, i) => ev(`i${i}`, now - (10 - i) * 1000));
      const { evicted } = await s.add(batch);
      assert.equal(evicted, 2);
      assert.deepEqual((await s.all()).map((e) => e.itemId), ['i2', 'i3', 'i4', 'i5', 'i6']);
      await s.destroy();
    });

    it('what retention removes of offer events and purchases is kept in the offer ledger, in the same write', async () => {
      const s = await make();
      const offer = (type: 'offer_impression' | 'offer_redeemed', offerId: string, t: number): StoredEvent => ({ type, offerId, t });
      await s.add([offer('offer_impression', 'once', now - 60 * DAY)]); // too old on arrival
      await s.add([
        offer('offer_impression', 'once', now - 9000),
        offer('offer_redeemed', 'once', now - 8000),
        ev('mug', now - 7000, 'purchase'),
        ev('a', now - 6000),
        offer('offer_impression', 'other', now - 5000),
        ev('b', now - 4000),
        ev('c', now - 3000),
        ev('d', now - 2000),
        ev('e', now - 1000),
      ]);
      assert.equal(await s.count(), 5);
      assert.deepEqual(await s.getMeta(OFFER_LEDGER_KEY), {
        offers: [
          // Two impressions 60 days apart: two showings (visits).
          { offerId: 'once', impressions: 2, showings: 2, redemptions: 1, lastImpressionAt: now - 9000, lastRedeemedAt: now - 8000 },
        ],
        lastPurchaseAt: now - 7000,
      });
      // Later evictions add to it; views are not kept.
      await s.add([ev('f', now), ev('g', now)]);
      const ledger = (await s.getMeta<OfferLedger>(OFFER_LEDGER_KEY))!;
      assert.deepEqual(ledger.offers.map((o) => [o.offerId, o.impressions, o.redemptions]), [['once', 2, 1], ['other', 1, 0]]);
      await s.destroy();
      assert.equal(await s.getMeta(OFFER_LEDGER_KEY).catch(() => undefined), undefined, 'erased with the rest');
    });

    it('offerLedger() counts what the age limit already hides but no write has removed yet', async () => {
      const s = await make();
      const t = Date.now() - 29 * DAY;
      await s.add([{ type: 'offer_redeemed', offerId: 'once', t }, ev('a', t, 'purchase')]);
      assert.equal(await s.offerLedger(), undefined);
      const realNow = Date.now;
      Date.now = () => realNow() + 2 * DAY; // a shopper back two days later: both events past 30 days
      try {
        assert.equal((await s.all()).length, 0, 'hidden from reads');
        assert.deepEqual(await s.offerLedger(), { offers: [{ offerId: 'once', impressions: 0, redemptions: 1, lastRedeemedAt: t }], lastPurchaseAt: t });
      } finally {
        Date.now = realNow;
      }
      await s.destroy();
    });

    it('keeps meta records (model weights) with typed arrays intact', async () => {
      const s = await make();
      await s.setMeta('model', { factors: new Float32Array([1, 2, 3]), version: 4 });
      const m = await s.getMeta<{ factors: Float32Array; version: number }>('model');
      assert.ok(m!.factors instanceof Float32Array);
      assert.deepEqual([...m!.factors], [1, 2, 3]);
      assert.equal(m!.version, 4);
      await s.destroy();
      assert.equal(await s.getMeta('model').catch(() => undefined), undefined);
    });
  });
}

/** A database as schema v1 left it: events with a time index only (no itemId index, no meta store). */
const openV1 = (name: string) =>
  openDB(name, 1, {
    upgrade(db) {
      db.createObjectStore('events', { keyPath: 'id', autoIncrement: true }).createIndex('t', 't');
    },
  });

describe('IndexedDB schema upgrade', () => {
  it('upgrades a v1 database (events with a time index only) without losing events', async () => {
    const name = 'upgrade-v1';
    const v1 = await openV1(name);
    await v1.add('events', ev('a', now - 2000));
    await v1.add('events', ev('b', now - 1000, 'purchase'));
    v1.close();
    const s = await IdbEventStore.open(name);
    assert.deepEqual((await s.all()).map((e) => e.itemId), ['a', 'b']);
    assert.deepEqual((await s.byItem('b')).map((e) => e.type), ['purchase'], 'the new itemId index covers old rows');
    await s.setMeta('k', 1);
    assert.equal(await s.getMeta('k'), 1, 'the meta store exists');
    await s.destroy();
  });

  it('lets another tab upgrade while this one holds a connection', async () => {
    const name = 'two-tabs';
    const s = await IdbEventStore.open(name);
    await s.add([ev('a', now)]);
    // A newer schema in another tab: our `blocking` handler closes the old connection so it proceeds.
    const newer = await openDB(name, 99, { upgrade() {} });
    assert.equal(await newer.count('events'), 1);
    newer.close();
  });
});

describe('a connection that neither closes nor answers (code other than localrec holding the database)', () => {
  it('an open it blocks is refused after the grace period, and openEventStore falls back to memory', async () => {
    const name = 'blocked-open';
    const v1 = await openV1(name);
    v1.add('events', ev('a', now)).catch(() => undefined);
    // v1 has no versionchange handler: it never closes, and the upgrade to this code's schema waits.
    await assert.rejects(IdbEventStore.open(name), (e: Error) => {
      assert.equal(e.name, 'StorageError');
      assert.match(e.message, /^opening IndexedDB database "blocked-open" failed: it is blocked by another connection of this site \(code other than localrec holding a database of that name open without closing it\)$/);
      return true;
    });
    // A second open, queued behind the first, hears no `blocked` of its own: refused for its silence.
    const fallback = await openEventStore(name, { maxEvents: 10, maxAgeDays: 10 });
    assert.equal(fallback.kind, 'memory');
    assert.match((fallback as MemoryEventStore).fallbackReason?.message ?? '', /blocked by another connection/);
    // Once the blocker closes, the queued upgrades go through (their late connections closed) and the events are there.
    v1.close();
    const s = await IdbEventStore.open(name);
    assert.deepEqual((await s.all()).map((e) => e.itemId), ['a']);
    await s.destroy();
  });

  it('a deletion it blocks is refused after the grace period, naming why; the data goes once it closes', async () => {
    const name = 'blocked-delete';
    const s = await IdbEventStore.open(name);
    await s.add([ev('a', now)]);
    const holder = await openDB(name); // the current version: no upgrade, and it ignores versionchange
    await assert.rejects(s.destroy(), /^StorageError: deleting IndexedDB database "blocked-delete" is blocked by another connection of this site .*; its data stays until that connection closes, and the deletion, still queued, goes through then$/);
    assert.equal(await holder.count('events'), 1, 'nothing is deleted while it is held');
    holder.close();
    await new Promise((r) => setTimeout(r, 50));
    const names = (await indexedDB.databases()).map((d) => d.name);
    assert.ok(!names.includes(name), 'the queued deletion went through once the holder closed');
  });
});

describe('openEventStore', () => {
  it('falls back to memory when IndexedDB cannot be opened', async () => {
    const g = globalThis as { indexedDB?: unknown };
    const saved = g.indexedDB;
    g.indexedDB = undefined;
    try {
      const s = await openEventStore('x', { maxEvents: 10, maxAgeDays: 10 });
      assert.equal(s.kind, 'memory');
    } finally {
      g.indexedDB = saved;
    }
  });
});

describe('review fixes (stop 21)', () => {
  const now = Date.now();
  const ev = (itemId: string, t: number): StoredEvent => ({ type: 'view', itemId, t });

  it('a batch with an event IndexedDB cannot store is stored not at all, so a retry stores no copies', async () => {
    const s = await IdbEventStore.open('review-f1');
    const batch = [ev('a', now - 10), { ...ev('b', now), id: undefined } as unknown as StoredEvent, ev('c', now)];
    for (let i = 0; i < 3; i++) await assert.rejects(s.add(batch), /storing 3 event\(s\) failed/);
    assert.deepEqual(await s.all(), []);
    await s.destroy();
  });

  it('close() while the store reconnects (after another tab upgraded) holds: nothing is written after it', async () => {
    const a = await IdbEventStore.open('review-f2');
    (await openDB('review-f2', 3, { upgrade() {} })).close(); // another tab upgrades: a lets go
    const reading = a.count(); // starts the reconnect
    a.close();
    await reading.catch(() => undefined);
    await assert.rejects(a.add([ev('after-close', now)]), /is closed/);
  });

  it('after another tab upgraded the schema, an erase in a third tab still reaches this one: nothing it holds recreates the database', async () => {
    const a = await IdbEventStore.open('review-s22');
    await a.add([ev('before-erase', now)]);
    (await openDB('review-s22', 3, { upgrade() {} })).close(); // another tab upgrades: a lets go
    await deleteDB('review-s22'); // another tab erases
    await assert.rejects(a.add([ev('queued-before-erase', now)]), /was deleted \(another tab erased it, or the browser cleared the site's data\)/);
    const db = await openDB('review-s22');
    assert.equal(db.objectStoreNames.contains('events') ? await db.count('events') : 0, 0, 'nothing from before the erase is stored');
    db.close();
    await deleteDB('review-s22');
  });

  /** A store with one event whose connection the browser dropped (no versionchange reaches it), then its database deleted. */
  async function deletedWithoutConnection(name: string): Promise<{ a: IdbEventStore; told: () => number }> {
    const a = await IdbEventStore.open(name);
    await a.add([ev('before-erase', now)]);
    const inner = a as unknown as { db?: { close(): void } };
    inner.db!.close();
    inner.db = undefined;
    let told = 0;
    a.onVanished = () => told++;
    await deleteDB(name); // another tab erases (or the browser cleared the site's data)
    return { a, told: () => told };
  }

  it('a tab whose connection the browser dropped does not recreate a database erased meanwhile, until the engine has dropped its state', async () => {
    const { a, told } = await deletedWithoutConnection('review-s22b');
    await assert.rejects(a.add([ev('queued-before-erase', now)]), /was deleted \(another tab erased it, or the browser cleared the site's data\)/);
    assert.ok(!(await indexedDB.databases()).some((d) => d.name === 'review-s22b'), 'no database was created');
    await Promise.resolve();
    assert.equal(told(), 1, 'the engine is told, so that it drops what it holds and reopens');
    a.reopenLazily(); // the engine dropped what it held (erasedElsewhere)
    assert.equal(await a.count(), 0);
    await a.add([ev('after-erase', now)]);
    assert.deepEqual((await a.all()).map((e) => e.itemId), ['after-erase']);
    await a.destroy();
  });

  it('a reconnect still in flight when the deletion is handled does not refuse writes after it', async () => {
    const { a, told } = await deletedWithoutConnection('review-s22d');
    const late = a.add([ev('queued-before-erase', now)]); // its reconnect is under way…
    a.reopenLazily(); // …when the engine has already dropped its state (another tab's message)
    await assert.rejects(late, /was deleted while this call reconnected: nothing of it was stored/);
    await a.add([ev('after-erase', now)]);
    assert.deepEqual((await a.all()).map((e) => e.itemId), ['after-erase'], 'what the late call carried, from before the erase, is not stored');
    await Promise.resolve();
    assert.equal(told(), 0, 'a deletion already handled is not reported again');
    await a.destroy();
  });

  it('a call made after the deletion was handled does not join the refusal of a reconnect begun before it', async () => {
    const { a } = await deletedWithoutConnection('review-s22e');
    const late = a.add([ev('queued-before-erase', now)]);
    a.reopenLazily();
    const after = a.add([ev('after-erase', now)]);
    await assert.rejects(late, /was deleted while this call reconnected/);
    await after;
    assert.deepEqual((await a.all()).map((e) => e.itemId), ['after-erase']);
    await a.destroy();
  });

  it('updateMeta reports a failing transaction as a StorageError naming the record', async () => {
    const a = await IdbEventStore.open('review-s22c');
    await a.updateMeta<number>('n', () => 1);
    (a as unknown as { db: { close(): void } }).db.close(); // a connection that can no longer start transactions
    await assert.rejects(a.updateMeta<number>('n', (n) => (n ?? 0) + 1), (e: Error) => e.name === 'StorageError' && /reading "n" failed: InvalidStateError/.test(e.message));
    await deleteDB('review-s22c');
  });

  it('updateMetaPair writes both records or neither (both stores)', async () => {
    for (const kind of ['IndexedDB', 'memory'] as const) {
      const s = kind === 'IndexedDB' ? await IdbEventStore.open('pair-meta') : new MemoryEventStore();
      await s.setMeta('a', 1);
      const r = await s.updateMetaPair<number, string[]>('a', 'b', (a, b) => [(a ?? 0) + 1, [...(b ?? []), 'x']]);
      assert.deepEqual(r, [2, ['x']], kind);
      assert.deepEqual([await s.getMeta('a'), await s.getMeta('b')], [2, ['x']], kind);
      // An update that throws writes neither; one whose second value cannot be stored writes neither.
      await assert.rejects(s.updateMetaPair<number, string[]>('a', 'b', () => { throw new Error('refused'); }), /refused/);
      await assert.rejects(s.updateMetaPair<number, unknown>('a', 'b', (a) => [(a ?? 0) + 1, () => 0]), (e: Error) => /DataCloneError|could not be cloned|saving "a" and "b"/.test(`${e.name} ${e.message}`), kind);
      assert.deepEqual([await s.getMeta('a'), await s.getMeta('b')], [2, ['x']], kind);
      if (s instanceof IdbEventStore) {
        (s as unknown as { db: { close(): void } }).db.close();
        await assert.rejects(s.updateMetaPair('a', 'b', (a, b) => [a, b]), (e: Error) => e.name === 'StorageError' && /reading "a" and "b" failed/.test(e.message));
        await deleteDB('pair-meta');
      }
    }
  });

  it('events past the age limit are not read before the next write deletes them (both stores)', async () => {
    for (const s of [await IdbEventStore.open('review-age', { maxEvents: 100, maxAgeDays: 1 }), new MemoryEventStore({ maxEvents: 100, maxAgeDays: 1 })]) {
      await s.add([ev('fresh', now)]);
      // An event that aged past the limit since it was written (written here directly, as time passing would leave it).
      if (s instanceof IdbEventStore) {
        const db = await openDB('review-age');
        await db.add('events', { ...ev('old', now - 3 * 86_400_000) });
        db.close();
      } else {
        (s as unknown as { events: StoredEvent[] }).events.unshift({ ...ev('old', now - 3 * 86_400_000), id: 99 });
      }
      assert.deepEqual((await s.all()).map((e) => e.itemId), ['fresh'], s.kind);
      assert.deepEqual((await s.byItem('old')).map((e) => e.itemId), [], s.kind);
      assert.equal((await s.stats()).total, 1, s.kind);
      if (s instanceof IdbEventStore) await s.destroy();
    }
  });

  it('events a page stamped ahead of the clock do not outlast what the shopper does next: within the last day the count limit goes by storage order (both stores)', async () => {
    const H = 3_600_000;
    for (const s of [await IdbEventStore.open('review-ahead', { maxEvents: 3, maxAgeDays: 30 }), new MemoryEventStore({ maxEvents: 3, maxAgeDays: 30 })]) {
      const t0 = Date.now();
      await s.add([ev('ahead1', t0 + 20 * H), ev('ahead2', t0 + 20 * H), ev('ahead3', t0 + 20 * H)]);
      const r = await s.add([{ type: 'purchase', itemId: 'just-bought', t: t0 }]);
      assert.equal(r.evicted, 1, s.kind);
      // What the write changed, as a reader holding the events before it needs to know: ahead1 (id 1) went.
      assert.deepEqual(r.changes, { added: [{ type: 'purchase', itemId: 'just-bought', t: t0, id: 4 }], removedIds: [1] }, s.kind);
      assert.deepEqual((await s.all()).map((e) => e.itemId).sort(), ['ahead2', 'ahead3', 'just-bought'], s.kind);
      // Older than a day: oldest by time first, as before.
      await s.add([ev('old', t0 - 3 * DAY)]);
      assert.ok(!(await s.all()).some((e) => e.itemId === 'old'), s.kind);
      if (s instanceof IdbEventStore) await s.destroy();
    }
  });

  it('applyRetention() applies a lowered count limit and the age limit now, writes nothing when nothing is due, and never recreates a database deleted meanwhile', async () => {
    const offer = (t: number): StoredEvent => ({ type: 'offer_redeemed', offerId: 'once', t });
    for (const kind of ['IndexedDB', 'memory'] as const) {
      const name = `review-retention-${kind}`;
      const first = kind === 'IndexedDB' ? await IdbEventStore.open(name, { maxEvents: 100, maxAgeDays: 30 }) : new MemoryEventStore({ maxEvents: 100, maxAgeDays: 30 });
      await first.add([offer(now - 9000), ...['a', 'b', 'c', 'd'].map((id, i) => ev(id, now - 8000 + i))]);
      assert.equal(await first.applyRetention!(), 0, 'nothing due');
      // A later session with a limit of 2 (the memory store: the same events under the lower limit).
      let s: EventStore;
      if (first instanceof IdbEventStore) {
        first.close();
        s = await IdbEventStore.open(name, { maxEvents: 2, maxAgeDays: 30 });
      } else {
        s = Object.assign(first, { retention: { maxEvents: 2, maxAgeDays: 30 } });
      }
      assert.equal(await s.applyRetention!(), 3, kind);
      assert.deepEqual((await s.all()).map((e) => e.itemId), ['c', 'd'], kind);
      // The redemption it removed went into the offer ledger.
      assert.equal((await s.offerLedger())?.offers.find((o) => o.offerId === 'once')?.redemptions, 1, kind);
      if (s instanceof IdbEventStore) {
        // Another tab erases while the count is read: nothing is created anew.
        const db = (s as unknown as { db: { countFromIndex: (...a: unknown[]) => Promise<number> } }).db;
        const count = db.countFromIndex.bind(db);
        db.countFromIndex = async (...a: unknown[]) => {
          const n = await count(...a);
          await deleteDB(name);
          s.reopenLazily!();
          return n + 1;
        };
        assert.equal(await s.applyRetention!(), 0);
        assert.ok(!(await indexedDB.databases()).some((d) => d.name === name), 'the database stays deleted');
      }
    }
  });

  it('the memory store answers as IndexedDB does: lastId 0 when empty, getMeta a copy', async () => {
    const m = new MemoryEventStore({ maxEvents: 5, maxAgeDays: 1 });
    await m.add([ev('old', now - 3 * 86_400_000)]); // evicted at once
    assert.equal(await m.count(), 0);
    assert.equal(await m.lastId(), 0);
    await m.setMeta('k', { x: 1 });
    (await m.getMeta<{ x: number }>('k'))!.x = 99;
    assert.deepEqual(await m.getMeta('k'), { x: 1 });
  });
});
