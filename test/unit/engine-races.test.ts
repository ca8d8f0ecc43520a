/**
 * Calls that overlap on one engine, or on two tabs of one database: a reload of another tab's
 * weights, a consent withdrawal or an erase while a page's widgets are rendering.
 */
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { Engine } from '../../src/engine/engine.js';
import { StorageError } from '../../src/errors.js';
import { IdbEventStore, MemoryEventStore } from '../../src/events/store.js';
import { createItemTable } from '../../src/model/item-table.js';
import type { FetchLike } from '../../src/federated/sync.js';
import { startServer } from '../../src/server/index.js';
import * as tf from '../../src/model/tf.js';

const catalog = { items: Array.from({ length: 50 }, (_, i) => ({ id: `p${i}`, title: `P${i}`, category: `c${i % 5}`, popularity: 50 - i })) };
const open = (dbName: string) => Engine.create({ catalog, backend: 'cpu', dbName, autoTrainEvery: 0, model: { dim: 8 } });
type FetchInit = Parameters<FetchLike>[1];
const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));
const outcomes = async (calls: Promise<unknown>[]) =>
  (await Promise.allSettled(calls)).map((r) => (r.status === 'fulfilled' ? 'ok' : `${(r.reason as Error).name}: ${(r.reason as Error).message}`));

describe('overlapping calls', () => {
  it('after another tab saved weights, calls rendering at once share one reload: none fails, no tensor is left behind', async () => {
    const a = await open('races-reload');
    const b = await open('races-reload');
    try {
      a.enqueue(Array.from({ length: 10 }, (_, i) => ({ type: 'view', itemId: `p${i}` })));
      await a.flush();
      await settle(50);
      let first: number | undefined;
      for (let round = 0; round < 4; round++) {
        await a.train({ epochs: 1 });
        await settle(50); // B hears that A saved
        assert.deepEqual(await outcomes([b.recommend({ k: 3 }), b.recommend({ k: 3 }), b.similar('p1', { k: 3 }), b.recommend({ k: 3, category: 'c1' })]), ['ok', 'ok', 'ok', 'ok']);
        // The scorers and their caches (embeddings for similar(), a category mask), the same every round.
        first ??= tf.memory().numTensors;
        assert.equal(tf.memory().numTensors, first, `round ${round}: no reload left a scorer behind`);
      }
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('consent withdrawn while widgets render: their calls answer from the emptied store, none fails', async () => {
    for (const ticks of [0, 1, 3, 10]) {
      const e = await open(`races-withdraw-${ticks}`);
      try {
        e.enqueue([{ type: 'view', itemId: 'p1' }]);
        await e.flush();
        const calls: Promise<unknown>[] = [e.setConsent({ personalization: false })];
        for (let i = 0; i < ticks; i++) {
          await new Promise((r) => setImmediate(r));
          calls.push(e.similar('p2'), e.recommend({ k: 3 }), e.stats());
        }
        assert.ok((await outcomes(calls)).every((o) => o === 'ok'), `after ${ticks} ticks`);
      } finally {
        await e.close();
      }
    }
  });

  it('erase() while a write is under way: the write ends first, erase and flush both resolve', async () => {
    for (const ticks of [0, 1, 2, 4]) {
      const e = await Engine.create({ catalog, backend: 'cpu', dbName: `races-erase-${ticks}`, autoTrainEvery: 1, model: { dim: 8 } });
      e.enqueue([{ type: 'view', itemId: 'p1' }, { type: 'view', itemId: 'p2' }]);
      const flushed = e.flush();
      for (let i = 0; i < ticks; i++) await new Promise((r) => setImmediate(r));
      assert.deepEqual(await outcomes([e.erase(), flushed]), ['ok', 'ok'], `after ${ticks} ticks`);
    }
  });

  it('a neighbour table kept from an earlier session ranks at once: recommend() does not wait for the refetch', async () => {
    const shop = JSON.parse(readFileSync('examples/shop/catalog.json', 'utf8')) as { items: Array<{ id: string; title: string; category: string }> };
    const items = shop.items.map((i) => ({ id: i.id, title: i.title, category: i.category }));
    const bytes = readFileSync('examples/shop/neighbors.lrn');
    let stalled = false;
    let refetches = 0;
    const fetch = async (_url: string, init?: { signal?: AbortSignal }) => {
      if (!stalled) return new Response(bytes);
      refetches++;
      // A network that never answers (until the engine gives up on it).
      return new Promise<Response>((_resolve, reject) => init?.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))));
    };
    const opts = { catalog: { items }, backend: 'cpu' as const, dbName: 'races-neighbors', autoTrainEvery: 0, model: { dim: 8 }, neighbors: { url: 'https://shop.example/n.lrn', timeoutMs: 60_000, refreshHours: 0 }, fetch: fetch as never };
    const first = await Engine.create(opts);
    first.enqueue([{ type: 'view', itemId: items[0]!.id }]);
    await first.recommend({ k: 3 });
    const hash = (await first.stats()).model.neighbors?.hash;
    await first.close();
    stalled = true;
    const second = await Engine.create(opts);
    try {
      assert.equal((await second.stats()).model.neighbors?.hash, hash, 'the stored table is in use');
      const r = await Promise.race([second.recommend({ k: 3 }).then((x) => x.length), settle(5_000).then(() => 'waited for the refetch')]);
      assert.equal(r, 3);
      assert.equal(refetches, 1, 'the refetch is still under way');
    } finally {
      await second.close();
    }
  });
  it("a train() that ends while a sync waits on the network: the sync's model replaces its weights, and its events are pending again", async () => {
    const ids = catalog.items.map((i) => i.id);
    const srv = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 8, { seed: 7 }), minClients: 50, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let blocked!: () => void;
    const atGate = new Promise<void>((r) => (blocked = r));
    const fetch = async (url: string, init?: FetchInit) => {
      if (new URL(url).pathname === '/v1/model') {
        blocked();
        await gate;
      }
      return globalThis.fetch(url, init as RequestInit);
    };
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: 'races-train-during-sync', autoTrainEvery: 0, model: { dim: 8 }, federated: { serverUrl: srv.url }, fetch });
    try {
      e.enqueue(Array.from({ length: 6 }, (_, i) => ({ type: 'view', itemId: `p${i}` })));
      await e.flush();
      const pulling = e.sync({ contribute: false });
      await atGate;
      e.enqueue(Array.from({ length: 3 }, (_, i) => ({ type: 'view', itemId: `p${10 + i}` })));
      const trained = await e.train({ epochs: 1 });
      assert.ok(trained.steps > 0);
      assert.equal((await e.stats()).model.pendingEvents, 0);
      const trainedFactors = e.itemTable().factors.slice();
      release();
      const r = await pulling;
      assert.equal(r.modelChanged, true);
      assert.notDeepEqual(Array.from(e.itemTable().factors), Array.from(trainedFactors), "the run's weights were replaced");
      assert.equal((await e.stats()).model.pendingEvents, 3, 'what only the replaced run learned is pending for the next one');
    } finally {
      release();
      await e.erase();
      await srv.close();
    }
  });

  it('close(): an event offered while it waits for training is refused, not accepted and lost', async () => {
    const e = await open('races-close-track');
    e.enqueue(Array.from({ length: 20 }, (_, i) => ({ type: 'view', itemId: `p${i}` })));
    await e.flush();
    const training = e.train({ epochs: 20 });
    training.catch(() => undefined); // close() stops it: an AbortError (stop 31)
    const closing = e.close();
    // (No wait: close() no longer waits out the run, it may be done within a few milliseconds.)
    assert.throws(() => e.enqueue([{ type: 'purchase', itemId: 'p7' }]), { name: 'ClosedError', message: /closing/ });
    await training.catch(() => undefined);
    await closing;
    const stored = await IdbEventStore.open('races-close-track');
    try {
      const all = await stored.all();
      assert.equal(all.length, 20);
      assert.ok(!all.some((ev) => ev.type === 'purchase'));
    } finally {
      await stored.destroy();
    }
  });

  it('close(): a last write that fails is reported (the events are named lost), after everything is released', async () => {
    class FailingStore extends MemoryEventStore {
      fail = false;
      override async add(...args: Parameters<MemoryEventStore['add']>) {
        if (this.fail) throw new StorageError('quota exceeded (simulated)');
        return super.add(...args);
      }
    }
    const store = new FailingStore();
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store });
    assert.equal(e.enqueue([{ type: 'purchase', itemId: 'p1' }, { type: 'view', itemId: 'p2' }]), 2);
    store.fail = true;
    await assert.rejects(e.close(), { name: 'StorageError', message: /close\(\): the last 2 queued event\(s\) could not be written and are lost: quota exceeded \(simulated\)/ });
    assert.throws(() => e.enqueue([{ type: 'view', itemId: 'p3' }]), { name: 'ClosedError' });
    await e.close(); // closed: nothing more to do
  });

  it('close() right after a write that then fails: the failed batch is written again, or reported lost', async () => {
    class SlowFailingStore extends MemoryEventStore {
      failures = 1;
      override async add(...args: Parameters<MemoryEventStore['add']>) {
        await new Promise((r) => setTimeout(r, 30));
        if (this.failures-- > 0) throw new StorageError('quota exceeded (simulated)');
        return super.add(...args);
      }
    }
    const store = new SlowFailingStore();
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store });
    e.enqueue([{ type: 'purchase', itemId: 'p1' }, { type: 'view', itemId: 'p2' }]);
    const first = e.flush(); // fails after 30 ms, while close() is under way
    await e.close();
    await assert.rejects(first, { name: 'StorageError' });
    assert.deepEqual((await store.all()).map((ev) => ev.itemId), ['p1', 'p2'], 'close() wrote the batch the failed write put back');

    const always = new SlowFailingStore();
    always.failures = Infinity;
    const f = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store: always });
    f.enqueue([{ type: 'view', itemId: 'p3' }]);
    void f.flush().catch(() => undefined);
    await assert.rejects(f.close(), { name: 'StorageError', message: /close\(\): the last 1 queued event\(s\) could not be written and are lost/ });
  });

  it('close() while one write runs and the batching timer starts another that fails: both batches end up stored', async () => {
    class Store extends MemoryEventStore {
      calls = 0;
      override async add(...args: Parameters<MemoryEventStore['add']>) {
        const n = ++this.calls;
        await new Promise((r) => setTimeout(r, 60));
        if (n === 2) throw new StorageError('quota exceeded (simulated)');
        return super.add(...args);
      }
    }
    const store = new Store();
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    const first = e.flush(); // slow, succeeds
    e.enqueue([{ type: 'purchase', itemId: 'p2' }]); // the timer's write, 25 ms later, fails
    await e.close();
    await first;
    assert.deepEqual((await store.all()).map((ev) => ev.itemId), ['p1', 'p2']);
  });

  it('consent granted and withdrawn at once: applied in order, no deleted store installed, nothing left stored', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: 'races-consent', autoTrainEvery: 0, model: { dim: 8 }, consent: { personalization: false, federated: false } });
    try {
      assert.deepEqual(await outcomes([e.setConsent({ personalization: true }), e.setConsent({ personalization: false })]), ['ok', 'ok']);
      assert.deepEqual(e.consentState(), { personalization: false, version: 2 });
      const s = await e.stats();
      assert.equal(s.storage, 'memory');
      assert.equal(e.enqueue([{ type: 'view', itemId: 'p1' }]), 0, 'withdrawn: events are dropped');
      assert.deepEqual((await indexedDB.databases()).map((d) => d.name).filter((n) => n === 'races-consent'), []);
      // A partial change queued behind another takes what that one left: federated alone keeps personalization.
      await Promise.all([e.setConsent({ personalization: true }), e.setConsent({ federated: true })]);
      assert.equal((await e.stats()).storage, 'indexeddb');
      assert.deepEqual(e.consentState(), { personalization: true, version: 4 });
    } finally {
      await e.erase();
    }
  });

  it('a store the caller gave: usable again after consent is withdrawn and granted; emptied by a withdrawal in a session that started without consent', async () => {
    const idb = await IdbEventStore.open('races-injected');
    const a = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store: idb });
    a.enqueue([{ type: 'view', itemId: 'p1' }]);
    await a.flush();
    await a.setConsent({ personalization: false });
    await a.setConsent({ personalization: true });
    assert.equal((await a.stats()).events.total, 0, 'the withdrawal erased what was stored');
    a.enqueue([{ type: 'view', itemId: 'p2' }]);
    await a.flush();
    assert.deepEqual((await idb.all()).map((ev) => ev.itemId), ['p2']);
    assert.equal((await a.recommend({ k: 1 })).length, 1);
    await a.erase();

    const mem = new MemoryEventStore();
    const earlier = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store: mem });
    earlier.enqueue([{ type: 'purchase', itemId: 'p1' }]);
    await earlier.close();
    assert.equal((await mem.all()).length, 1);
    const later = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store: mem, consent: { personalization: false, federated: false } });
    await later.setConsent({ personalization: false });
    assert.equal((await mem.all()).length, 0, 'the earlier session\'s events are erased');
    assert.equal(await mem.getMeta('consent'), undefined);
    await later.close();
  });
});
