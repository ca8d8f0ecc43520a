/**
 * IndexedDB faults on the device, with fake-indexeddb:
 * - QuotaExceededError on write: the transaction aborts the way Chromium aborts it (the
 *   transaction's error is a QuotaExceededError DOMException; fake-indexeddb's own `_abort` is used
 *   to raise it), the store evicts the oldest events by policy, retries once and says so;
 * - another tab upgrades the schema while this one holds a connection: this tab lets go, then
 *   reopens on its next call and keeps working (or says clearly that it cannot);
 * - the worker dies mid-training: a new Engine on the same database has every flushed event and
 *   the last weights that were saved whole;
 * - IndexedDB unavailable (private mode): memory fallback, and audit()/stats() say so.
 */
import 'fake-indexeddb/auto';
import { strict as assert } from 'node:assert';
import { after, describe, it } from 'node:test';
import { openDB } from 'idb';
import { Engine, MODEL_KEY } from '../../src/engine/engine.js';
import { isStorageError, StorageError } from '../../src/errors.js';
import { eventsBytes, IdbEventStore, MemoryEventStore, QUOTA_EVICT_FRACTION } from '../../src/events/store.js';
import type { StoredEvent } from '../../src/types.js';
import '../../src/model/tf.js';

const now = Date.now();
const ev = (i: number): StoredEvent => ({ type: 'view', itemId: `p${i % 10}`, t: now - 100_000 + i });
const faults: Record<string, number> = {};
const count = (k: string) => (faults[k] = (faults[k] ?? 0) + 1);
after(() => {
  for (const [k, n] of Object.entries(faults)) process.stdout.write(`# fault ${k}: injected ${n}\n`);
});

// ---- quota fault injection -----------------------------------------------------------------
let quotaFailures = 0;
const proto = (globalThis as unknown as { IDBObjectStore: { prototype: { add: (...a: unknown[]) => unknown; name: string; transaction: unknown } } }).IDBObjectStore.prototype;
const realAdd = proto.add;
proto.add = function (this: { name: string; transaction: { _abort(name: string): void } }, ...args: unknown[]) {
  const req = realAdd.apply(this, args);
  if (quotaFailures > 0 && this.name === 'events') {
    quotaFailures--;
    count('QuotaExceededError on add');
    this.transaction._abort('QuotaExceededError');
  }
  return req;
};
after(() => {
  proto.add = realAdd;
});

describe('QuotaExceededError on write', () => {
  it('evicts the oldest events by policy, keeps the rest, stores the batch and reports it', async () => {
    const s = await IdbEventStore.open('quota-1');
    await s.add(Array.from({ length: 50 }, (_, i) => ev(i)));
    quotaFailures = 1;
    const batch = [ev(100), ev(101), ev(102)];
    const r = await s.add(batch);
    const chunk = Math.max(batch.length, Math.ceil(50 * QUOTA_EVICT_FRACTION));
    assert.deepEqual(r, { evicted: chunk, quotaEvicted: chunk });
    const all = await s.all();
    assert.equal(all.length, 50 - chunk + 3);
    assert.deepEqual(all.map((e) => e.t), [...Array.from({ length: 50 - chunk }, (_, i) => ev(chunk + i).t), ev(100).t, ev(101).t, ev(102).t], 'exactly the oldest went');
    await s.destroy();
  });

  it('re-downloadable meta records (disposableOnQuota) go before any event; events only when that was not enough', async () => {
    const s = await IdbEventStore.open('quota-disposable');
    s.disposableOnQuota = ['global', 'neighbors'];
    await s.add(Array.from({ length: 30 }, (_, i) => ev(i)));
    await s.setMeta('global', { hash: 'ab', bytes: new Uint8Array(1000) });
    await s.setMeta('model', { kept: true });
    quotaFailures = 1;
    const dropped = await s.add([ev(100)]);
    assert.deepEqual({ evicted: dropped.evicted, quotaDropped: dropped.quotaDropped }, { evicted: 0, quotaDropped: ['global'] });
    // No event went: what the write changed is known exactly (the engine's event cache uses it).
    assert.deepEqual(dropped.changes?.removedIds, []);
    assert.equal(await s.count(), 31, 'no event evicted');
    assert.deepEqual([await s.getMeta('global'), await s.getMeta('model')], [undefined, { kept: true }]);
    // Nothing left to drop: events are evicted as before; with something to drop that is not enough, both.
    await s.setMeta('neighbors', { hash: 'cd', bytes: new Uint8Array(10) });
    quotaFailures = 2;
    const r = await s.add([ev(101)]);
    assert.deepEqual([r.quotaDropped, r.quotaEvicted], [['neighbors'], 4]);
    assert.equal(await s.count(), 31 - 4 + 1);
    await s.destroy();
  });

  it('a batch larger than the chunk evicts at least its own size', async () => {
    const s = await IdbEventStore.open('quota-2');
    await s.add(Array.from({ length: 20 }, (_, i) => ev(i)));
    quotaFailures = 1;
    const r = await s.add(Array.from({ length: 8 }, (_, i) => ev(200 + i)));
    assert.equal(r.quotaEvicted, 8);
    assert.equal(await s.count(), 20);
    await s.destroy();
  });

  it('when the retry fails too, the caller gets a StorageError and the store holds the old events minus the evicted chunk', async () => {
    const s = await IdbEventStore.open('quota-3');
    await s.add(Array.from({ length: 30 }, (_, i) => ev(i)));
    quotaFailures = 2;
    await assert.rejects(s.add([ev(300)]), (e) => isStorageError(e) && /quota/.test((e as Error).message) && /QuotaExceededError/.test((e as Error).message));
    const all = await s.all();
    assert.equal(all.length, 27, 'the 3 oldest were evicted, the failed batch stored nothing');
    assert.equal(all[0]!.t, ev(3).t);
    assert.equal(await s.count(), 27);
    // And the store still works once there is room.
    const after = await s.add([ev(301)]);
    assert.equal(after.evicted, 0);
    assert.equal(after.quotaEvicted, undefined);
    await s.destroy();
  });

  // Found by a review of running out of room (stop 36): 100 searches of ~400 characters against
  // 200 stored views evicted half the history, and the write failed all the same.
  it('evicts by room as well as by count, and evicts nothing when the whole history takes less room than the write', async () => {
    const s = await IdbEventStore.open('quota-bytes');
    await s.add(Array.from({ length: 20 }, (_, i) => ev(i)));
    const long = (i: number): StoredEvent => ({ type: 'search', query: `q${i} ${'x'.repeat(300)}`, t: now - 1_000 + i });
    // Two long searches take the room of ~11 views: more than the tenth (2) or the count (2).
    const stored = await s.all();
    quotaFailures = 1;
    const r = await s.add([long(0), long(1)]);
    const need = eventsBytes([long(0), long(1)]);
    let freed = 0;
    let n = 0;
    while (freed < need) freed += eventsBytes([stored[n++]!]);
    assert.ok(n > 2, `the room rule evicts more than the count rule (${n})`);
    assert.equal(r.quotaEvicted, n);
    assert.equal(await s.count(), 20 - n + 2);
    // The rest of the history (20 - n views) takes less room than 20 long searches: nothing is evicted.
    const before = (await s.all()).map((e) => e.t);
    quotaFailures = 2;
    await assert.rejects(s.add(Array.from({ length: 20 }, (_, i) => long(10 + i))), (e) => isStorageError(e) && /none were evicted/.test((e as Error).message) && /QuotaExceededError/.test((e as Error).message));
    assert.deepEqual((await s.all()).map((e) => e.t), before, 'the stored history is intact');
    quotaFailures = 0;
    await s.destroy();
  });

  it('flush() rejects while events an automatic flush could not store are still unstored', async () => {
    const catalog = { items: Array.from({ length: 10 }, (_, i) => ({ id: `p${i}` })) };
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName: 'quota-autoflush' });
    try {
      e.enqueue([{ type: 'view', itemId: 'p0', t: now - 60_000 }]);
      await e.flush();
      quotaFailures = 1_000;
      // 200 queued events start an automatic flush, which takes them and fails.
      e.enqueue(Array.from({ length: 200 }, (_, i) => ({ type: 'view', itemId: `p${i % 10}`, t: now - 50_000 + i })));
      await assert.rejects(e.flush(), (err) => isStorageError(err) && /quota/.test((err as Error).message));
      const st = await e.stats();
      assert.equal(st.queued, 200, 'every unstored event is still queued');
      assert.equal(st.events.total, 1);
      // Room again: one flush stores them all.
      quotaFailures = 0;
      await e.flush();
      assert.deepEqual([(await e.stats()).queued, (await e.stats()).events.total], [0, 201]);
    } finally {
      quotaFailures = 0;
      await e.erase();
    }
  });

  it('an Engine flushing into a full store keeps every new event (oldest evicted) and nothing is re-queued', async () => {
    const catalog = { items: Array.from({ length: 10 }, (_, i) => ({ id: `p${i}` })) };
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName: 'quota-engine' });
    e.enqueue(Array.from({ length: 40 }, (_, i) => ({ type: 'view', itemId: `p${i % 10}`, t: now - 50_000 + i })));
    await e.flush();
    quotaFailures = 1;
    e.enqueue([{ type: 'purchase', itemId: 'p3', t: now }]);
    await e.flush();
    const st = await e.stats();
    assert.equal(st.queued, 0);
    assert.equal(st.events.total, 40 - 4 + 1);
    assert.equal(st.events.byType.purchase, 1);
    await e.erase();
  });

  it('engine tells the page how many events the quota evicted (stats/audit)', async () => {
    const catalog = { items: [{ id: 'p0' }] };
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName: 'quota-engine-2' });
    e.enqueue([{ type: 'view', itemId: 'p0', t: now - 10 }]);
    await e.flush();
    quotaFailures = 1;
    e.enqueue([{ type: 'view', itemId: 'p0', t: now }]);
    await e.flush();
    const st = await e.stats();
    const audit = await e.audit();
    await e.erase();
    assert.deepEqual(st.evicted, { retention: 0, quota: 1 }, 'the oldest event made room, and stats say so');
    assert.deepEqual(audit.events.evictedThisSession, { retention: 0, quota: 1 });
    assert.equal(st.events.total, 1);
  });
});

describe('two tabs: a schema upgrade in one while the other holds a connection', () => {
  it('the old tab lets go, then reopens on its next call and keeps reading and writing', async () => {
    const name = 'tabs-recover';
    const old = await IdbEventStore.open(name);
    await old.add([ev(1), ev(2)]);
    await old.setMeta('model', { w: 1 });
    count('schema upgrade in another tab');
    // The newer tab adds a store and an index: an additive upgrade, as every localrec upgrade is.
    const newer = await openDB(name, 7, {
      upgrade(db, _o, _n, tx) {
        db.createObjectStore('offers-v3');
        tx.objectStore('events').createIndex('type', 'type');
      },
    });
    assert.equal(await newer.count('events'), 2, 'the upgrade was not blocked');
    // The old tab's next calls reopen the database at the newer version.
    assert.deepEqual((await old.all()).map((e) => e.t), [ev(1).t, ev(2).t]);
    await old.add([ev(3)]);
    assert.deepEqual(await old.getMeta('model'), { w: 1 });
    assert.equal(await newer.count('events'), 3, 'both tabs see the same data');
    // A second upgrade while the reopened connection is held: let go again, reopen again.
    newer.close();
    count('schema upgrade in another tab');
    const newest = await openDB(name, 8, { upgrade(db) { db.createObjectStore('more'); } });
    newest.close();
    assert.equal(await old.count(), 3);
    old.close();
    await assert.rejects(old.count(), isStorageError, 'after close() calls fail with a StorageError, not an InvalidStateError');
  });

  it('when the newer schema dropped what this code needs, the old tab gets a clear StorageError', async () => {
    const name = 'tabs-incompatible';
    const old = await IdbEventStore.open(name);
    await old.add([ev(1)]);
    count('schema upgrade in another tab');
    const newer = await openDB(name, 9, { upgrade(db) { db.deleteObjectStore('meta'); } });
    newer.close();
    await assert.rejects(old.all(), (e) => isStorageError(e) && /reload the page/.test((e as Error).message));
  });

  it('a page with the old code opening after the upgrade works on the newer database', async () => {
    const name = 'tabs-late';
    const first = await IdbEventStore.open(name);
    await first.add([ev(1)]);
    first.close();
    const newer = await openDB(name, 5, { upgrade(db) { db.createObjectStore('extra'); } });
    newer.close();
    const late = await IdbEventStore.open(name);
    assert.equal(await late.count(), 1);
    await late.destroy();
  });
});

describe('the worker terminated mid-training', () => {
  it('a new Engine on the same database recovers every flushed event and the last weights saved whole', async () => {
    const catalog = { items: Array.from({ length: 20 }, (_, i) => ({ id: `p${i}`, popularity: 20 - i })) };
    const opts = { catalog, backend: 'cpu' as const, autoTrainEvery: 0, dbName: 'worker-dies', model: { dim: 8 } };
    const store = await IdbEventStore.open('worker-dies');
    const a = await Engine.create({ ...opts, store });
    a.enqueue(Array.from({ length: 12 }, (_, i) => ({ type: 'view', itemId: `p${i}`, t: now - 20_000 + i })));
    await a.train({ epochs: 2 });
    const saved = await peekModel('worker-dies');
    assert.ok(saved && saved.trainSteps > 0);
    a.enqueue(Array.from({ length: 6 }, (_, i) => ({ type: 'purchase', itemId: `p${10 + i}`, t: now - 1000 + i })));
    await a.flush();
    // Training starts, changes the in-memory table, and the worker is killed before it saves:
    // the save failing stands in for terminate() (the run never writes its weights).
    count('worker killed mid-train');
    let calls = 0;
    const updateMeta = store.updateMeta.bind(store);
    store.updateMeta = (key, update) => (key === MODEL_KEY ? Promise.reject(new Error('worker terminated')) : updateMeta(key, update));
    await assert.rejects(
      a.train({
        epochs: 50,
        onProgress: (p) => {
          if (p.phase === 'training') calls++;
        },
      }),
      /worker terminated/,
    );
    assert.ok(calls >= 3, 'the kill landed after training had changed the table');
    // The engine whose save failed is back on the weights stored (stop 36), not the unsaved ones.
    assert.deepEqual(Array.from(a.itemTable().factors), Array.from(saved!.factors), 'the failed run\'s weights are not in use');
    // The dead worker's connection is simply abandoned (never closed), as a terminated worker's is.
    const b = await Engine.create(opts);
    const st = await b.stats();
    assert.equal(st.events.total, 18, 'every flushed event is back');
    assert.equal(st.model.trainSteps, saved!.trainSteps, 'the last saved run');
    assert.deepEqual(Array.from(b.itemTable().factors), Array.from(saved!.factors), 'weights are the last good ones, bit for bit');
    assert.equal(st.model.pendingEvents, 6, 'the events after the last saved run are pending for the next one');
    const r = await b.train({ epochs: 1 });
    assert.ok(r.steps > 0);
    assert.equal((await b.stats()).model.pendingEvents, 0);
    await b.erase();
  });
});

async function peekModel(dbName: string): Promise<{ trainSteps: number; factors: Float32Array } | undefined> {
  const s = await IdbEventStore.open(dbName);
  const m = await s.getMeta<{ trainSteps: number; factors: Float32Array }>(MODEL_KEY);
  s.close();
  return m;
}

describe('IndexedDB unavailable (private mode)', () => {
  const g = globalThis as { indexedDB: IDBFactory };
  const real = g.indexedDB;
  const catalog = { items: [{ id: 'a' }, { id: 'b' }] };
  for (const [kind, factory] of [
    ['open() throws SecurityError', { open() { throw new DOMException('The operation is insecure.', 'SecurityError'); } }],
    [
      'open() fails with InvalidStateError (Firefox private windows)',
      {
        open() {
          const req = { error: new DOMException('A mutation operation was attempted on a database that did not allow mutations.', 'InvalidStateError'), onerror: null as null | ((e: unknown) => void) } as unknown as IDBOpenDBRequest;
          const listeners: Array<(e: unknown) => void> = [];
          (req as unknown as { addEventListener: (t: string, f: (e: unknown) => void) => void }).addEventListener = (t, f) => void (t === 'error' && listeners.push(f));
          (req as unknown as { removeEventListener: () => void }).removeEventListener = () => undefined;
          setTimeout(() => listeners.forEach((f) => f({ target: req, preventDefault() {} })));
          return req;
        },
      },
    ],
  ] as const) {
    it(`${kind}: the engine runs on memory and audit() says so`, async () => {
      count('IndexedDB unavailable');
      g.indexedDB = factory as unknown as IDBFactory;
      try {
        const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName: 'private' });
        e.enqueue([{ type: 'view', itemId: 'a' }]);
        const audit = await e.audit();
        assert.equal(audit.storage.kind, 'memory');
        assert.equal(audit.storage.database, null);
        assert.deepEqual(audit.storage.stores, []);
        assert.equal(audit.events.total, 1, 'events still work, in memory');
        assert.equal((await e.stats()).storage, 'memory');
        assert.equal((await e.recommend({ k: 1 }))[0]!.itemId, 'b');
        await e.erase();
      } finally {
        g.indexedDB = real;
      }
    });
  }
});

// Found by a read-only review of the event store (stop 24).
describe('storage failures lose nothing and store nothing twice', () => {
  // p5 is never tracked: recommend() has something left to rank once the rest are seen.
  const catalog = { items: Array.from({ length: 6 }, (_, i) => ({ id: `p${i}`, popularity: 6 - i })) };

  // Found by a review of running out of room (stop 36): the weights were put in use before the
  // save failed, so recommend() ranked, and stats() counted, what a reload would not find.
  it('a train() whose weights cannot be saved changes nothing: the weights, steps and pending events stay as stored', async () => {
    let full = false;
    class Store extends MemoryEventStore {
      override async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
        if (full && key === MODEL_KEY) throw new StorageError('saving "model" failed: QuotaExceededError (simulated)');
        return super.updateMeta(key, update);
      }
    }
    // (A clock that stands still: scores move with the history's decay over time.)
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, store: new Store(), now: () => now });
    try {
      e.enqueue(Array.from({ length: 12 }, (_, i) => ({ type: 'view', itemId: `p${i % 4}`, t: now - 1_000 + i })));
      await e.flush();
      const before = (await e.stats()).model;
      const ranked = (await e.recommend({ k: 2 })).map((x) => [x.itemId, x.score]);
      full = true;
      await assert.rejects(e.train({ epochs: 2 }), (err) => isStorageError(err) && /QuotaExceededError/.test((err as Error).message));
      const afterFail = (await e.stats()).model;
      assert.deepEqual([afterFail.trainSteps, afterFail.pendingEvents, afterFail.trainedAt], [before.trainSteps, before.pendingEvents, before.trainedAt]);
      assert.deepEqual((await e.recommend({ k: 2 })).map((x) => [x.itemId, x.score]), ranked, 'ranked by the stored weights');
      full = false;
      const r = await e.train({ epochs: 2 });
      assert.ok(r.steps > 0);
      assert.equal((await e.stats()).model.pendingEvents, 0);
    } finally {
      await e.erase();
    }
  });

  it('a write that fails for the quota even after evicting evicts no more until a write succeeds; reads keep working', async () => {
    const store = await IdbEventStore.open('quota-stuck');
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, store });
    try {
      e.enqueue(Array.from({ length: 100 }, (_, i) => ({ type: 'view', itemId: `p${i % 5}`, t: now - 100_000 + i })));
      await e.flush();
      // Every write from now on hits the quota (something else fills the site's storage).
      quotaFailures = 1_000;
      e.enqueue([{ type: 'purchase', itemId: 'p1', t: now }]);
      await assert.rejects(e.flush(), (err) => isStorageError(err) && /after evicting the 10 oldest/.test((err as Error).message));
      assert.equal(await store.count(), 90);
      for (let i = 0; i < 3; i++) {
        assert.equal((await e.recommend({ k: 1 })).length, 1, 'recommend() ranks on what is stored');
        assert.equal(await store.count(), 90, 'no second eviction');
      }
      const st = await e.stats();
      assert.deepEqual(st.evicted, { retention: 0, quota: 10 }, 'the evicted events are counted though the write failed');
      assert.equal(st.queued, 1, 'the purchase waits in the queue');
      assert.match(st.lastError ?? '', /still over the storage quota/);
      // Room again: the queued purchase is written once.
      quotaFailures = 0;
      await e.flush();
      assert.equal((await store.all()).filter((x) => x.type === 'purchase').length, 1);
    } finally {
      quotaFailures = 0;
      await e.erase();
    }
  });

  it('while storage keeps failing, the queue holds at most retention.maxEvents (the newest) and counts the rest as dropped', async () => {
    const store = await IdbEventStore.open('quota-queue');
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, store, retention: { maxEvents: 10 } });
    try {
      quotaFailures = 1_000;
      for (let round = 0; round < 3; round++) {
        e.enqueue(Array.from({ length: 6 }, (_, i) => ({ type: 'view', itemId: `p${i % 5}`, t: now - 1000 + round * 10 + i })));
        await e.flush().catch(() => undefined);
      }
      const st = await e.stats();
      assert.equal(st.queued, 10);
      assert.equal(st.dropped, 8);
      quotaFailures = 0;
      await e.flush();
      // Rounds 1 and 2 of 6 events each at +10 + i and +20 + i: the 8 oldest of the 18 were dropped.
      assert.deepEqual((await store.all()).map((x) => x.t - (now - 1000)), [12, 13, 14, 15, 20, 21, 22, 23, 24, 25]);
    } finally {
      quotaFailures = 0;
      await e.erase();
    }
  });

  it('a stored batch is not queued again when writing the consent records after it fails', async () => {
    const store = await IdbEventStore.open('consent-write-fails');
    const updateMeta = store.updateMeta.bind(store);
    let failConsent = 0;
    store.updateMeta = (key, update) => {
      if (key === 'consent' && failConsent-- > 0) return Promise.reject(new DOMException('quota', 'QuotaExceededError'));
      return updateMeta(key, update);
    };
    // The session's consent record (from the options) is written with the first events.
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, store, consent: { personalization: true, federated: true } });
    try {
      e.enqueue([{ type: 'purchase', itemId: 'p1', t: now }]);
      failConsent = 1;
      await e.flush();
      await e.flush();
      assert.deepEqual((await store.all()).map((x) => `${x.type}:${x.itemId}`), ['purchase:p1'], 'stored once');
      assert.equal((await e.stats()).queued, 0);
      assert.match((await e.stats()).lastError ?? '', /QuotaExceededError|quota/);
      assert.equal(await store.getMeta('consent'), undefined);
      // The consent record went with the next write instead.
      e.enqueue([{ type: 'view', itemId: 'p2', t: now }]);
      await e.flush();
      assert.deepEqual(((await store.getMeta<{ source: string }[]>('consent')) ?? []).map((r) => r.source), ['options']);
    } finally {
      await e.erase();
    }
  });

  it('a value IndexedDB cannot store is reported as itself, not as the AbortError of the transaction it aborted', async () => {
    const s = await IdbEventStore.open('uncloneable');
    try {
      await assert.rejects(s.add([ev(1), { ...ev(2), itemId: (() => 1) as unknown as string }]), (err) => isStorageError(err) && /DataCloneError/.test((err as Error).message));
      assert.equal(await s.count(), 0, 'nothing of the batch was stored');
    } finally {
      await s.destroy();
    }
  });
  it('consent withdrawn in a session that fell back to memory (IndexedDB refused to open) still deletes what an earlier session stored', async () => {
    const dbName = 'withdraw-on-memory';
    const first = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName });
    first.enqueue([{ type: 'purchase', itemId: 'p1', t: now }]);
    await first.close();
    const factory = Object.getPrototypeOf(indexedDB) as { open: (...a: unknown[]) => unknown };
    const open = factory.open;
    factory.open = function () {
      factory.open = open;
      throw new DOMException('disk hiccup', 'UnknownError');
    };
    const second = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName });
    try {
      const st = await second.stats();
      assert.equal(st.storage, 'memory');
      assert.match(st.lastError ?? '', /UnknownError: disk hiccup/, 'why it runs on memory is said');
      await second.setConsent({ personalization: false });
      assert.ok(!(await indexedDB.databases()).some((d) => d.name === dbName), 'the database is gone');
    } finally {
      factory.open = open;
      await second.close();
    }
  });
});
