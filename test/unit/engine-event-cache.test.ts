// The engine keeps the stored events in memory between writes (recommend() must not read IndexedDB
// at each call) and brings them up to date from what each write reports it changed, instead of
// reading every event again after each tracked view (long-lived page review, stop 33).
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Engine, withChanges } from '../../src/engine/engine.js';
import { IdbEventStore, MemoryEventStore, type EventStore } from '../../src/events/store.js';
import type { StoredEvent } from '../../src/types.js';
import '../../src/model/tf.js';

const catalog = { items: Array.from({ length: 12 }, (_, i) => ({ id: `p${i}` })) };
const DAY = 86_400_000;
let n = 0;

/** `store` with its full reads counted. */
function counting<S extends EventStore>(store: S): S & { reads: number } {
  const s = store as S & { reads: number };
  s.reads = 0;
  const all = store.all.bind(store);
  s.all = () => (s.reads++, all());
  return s;
}

const cached = (e: Engine) => (e as unknown as { storedEvents(): Promise<StoredEvent[]> }).storedEvents();

for (const kind of ['IndexedDB', 'memory'] as const) {
  describe(`the event cache on ${kind}`, () => {
    const open = async (retention: { maxEvents: number; maxAgeDays: number }) =>
      counting(kind === 'memory' ? new MemoryEventStore(retention) : await IdbEventStore.open(`event-cache-${n++}`, retention));

    it('a tracked event and then recommend() or stats() read nothing from the store again', async () => {
      const store = await open({ maxEvents: 5, maxAgeDays: 365 });
      const e = await Engine.create({ catalog, backend: 'cpu', store, autoTrainEvery: 0, model: { dim: 4 } });
      try {
        for (let i = 0; i < 8; i++) e.enqueue([{ type: 'view', itemId: `p${i}` }]);
        await e.recommend();
        const reads = store.reads;
        for (let i = 0; i < 10; i++) {
          e.enqueue([{ type: 'view', itemId: `p${i}` }]); // past maxEvents: each write evicts the oldest
          await e.recommend();
          await e.stats();
        }
        assert.equal(store.reads, reads, 'no full read after the first');
        assert.deepEqual(await cached(e), await store.all());
        assert.equal((await e.stats()).events.total, 5);
      } finally {
        await e.close();
      }
    });

    it('after any sequence of writes (times out of order, retention by count and age), the cache is what a full read gives', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.array(fc.record({ item: fc.integer({ min: 0, max: 11 }), ageMs: fc.integer({ min: -DAY / 2, max: 3 * DAY }), purchase: fc.boolean() }), { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 8 }),
          fc.integer({ min: 1, max: 6 }),
          async (batches, maxEvents) => {
            const store = await open({ maxEvents, maxAgeDays: 2 });
            const e = await Engine.create({ catalog, backend: 'cpu', store, autoTrainEvery: 0, model: { dim: 4 } });
            try {
              await cached(e); // the cache is filled before the first write
              const now = Date.now();
              for (const batch of batches) {
                try {
                  e.enqueue(batch.map((b) => (b.purchase ? { type: 'purchase' as const, itemId: `p${b.item}`, quantity: 1, t: now - b.ageMs } : { type: 'view' as const, itemId: `p${b.item}`, t: now - b.ageMs })));
                } catch {
                  // An event past the age limit is refused by name; the rest of its batch is taken.
                }
                await e.flush();
                assert.deepEqual(await cached(e), await store.all());
              }
            } finally {
              await e.close();
            }
          },
        ),
        { numRuns: 25 },
      );
    });
  });
}

describe('the event cache and the age limit (diff review, stop 33)', () => {
  /** Runs `f` with Date.now() (the stores' clock for the age limit) moved by `shift()` ms. */
  async function withClock(f: (advance: (ms: number) => void) => Promise<void>): Promise<void> {
    const real = Date.now;
    let shift = 0;
    Date.now = () => real() + shift;
    try {
      await f((ms) => (shift += ms));
    } finally {
      Date.now = real;
    }
  }

  for (const kind of ['IndexedDB', 'memory'] as const) {
    it(`events that aged out leave the cache and stats(): after audit() deleted them, and with no write at all (${kind})`, async () => {
      await withClock(async (advance) => {
        const retention = { maxEvents: 100, maxAgeDays: 2 };
        const store = kind === 'memory' ? new MemoryEventStore(retention) : await IdbEventStore.open(`event-cache-age-${n++}`, retention);
        const e = await Engine.create({ catalog, backend: 'cpu', store, autoTrainEvery: 0, model: { dim: 4 }, retention });
        try {
          e.enqueue([{ type: 'view', itemId: 'p1' }]);
          await e.recommend();
          advance(3 * DAY);
          assert.equal((await e.stats()).events.total, 0, 'aged out, though no write came since');
          await e.audit(); // deletes it from the store
          e.enqueue([{ type: 'view', itemId: 'p2' }]);
          await e.flush();
          assert.deepEqual((await cached(e)).map((x) => x.itemId), ['p2']);
          assert.deepEqual(await cached(e), await store.all());
          assert.equal((await e.stats()).events.total, 1);
        } finally {
          await e.close();
        }
      });
    });
  }

  it('another tab starting deletes aged-out events: this tab\'s cache follows, before its next write', async () => {
    await withClock(async (advance) => {
      const dbName = `event-cache-tabs-${n++}`;
      const retention = { maxEvents: 100, maxAgeDays: 2 };
      const open = () => Engine.create({ catalog, backend: 'cpu', dbName, autoTrainEvery: 0, model: { dim: 4 }, retention });
      const a = await open();
      let b: Engine | undefined;
      try {
        a.enqueue([{ type: 'view', itemId: 'p1' }]);
        await a.recommend();
        advance(DAY);
        a.enqueue([{ type: 'view', itemId: 'p3' }]);
        await a.recommend();
        advance(1.5 * DAY); // p1 is past the limit now, p3 not
        b = await open(); // its start deletes p1
        await new Promise((r) => setTimeout(r, 100)); // its message reaches tab a
        a.enqueue([{ type: 'view', itemId: 'p2' }]);
        await a.flush();
        assert.deepEqual((await cached(a)).map((x) => x.itemId), ['p3', 'p2']);
        assert.equal((await a.stats()).events.total, 2);
      } finally {
        await b?.close();
        await a.close();
      }
    });
  });
});

it('withChanges: removed ids out, added events in time order, the input untouched', () => {
  const ev = (id: number, t: number): StoredEvent => ({ id, t, type: 'view', itemId: `p${id}` });
  const before = [ev(1, 10), ev(2, 20), ev(3, 30)];
  assert.deepEqual(withChanges(before, { added: [ev(4, 40)], removedIds: [1] }), [ev(2, 20), ev(3, 30), ev(4, 40)]);
  assert.deepEqual(withChanges(before, { added: [ev(4, 15), ev(5, 50)], removedIds: [5] }), [ev(1, 10), ev(4, 15), ev(2, 20), ev(3, 30)]);
  assert.deepEqual(before, [ev(1, 10), ev(2, 20), ev(3, 30)]);
});
