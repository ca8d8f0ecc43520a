import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Engine, MODEL_KEY } from '../../src/engine/engine.js';
import { IdbEventStore, MemoryEventStore } from '../../src/events/store.js';
import { isValidationError } from '../../src/errors.js';
import '../../src/model/tf.js';

const catalog = {
  items: Array.from({ length: 30 }, (_, i) => ({ id: `p${i}`, title: `Product ${i}`, category: i < 15 ? 'mugs' : 'bags', popularity: 100 - i })),
};
let n = 0;
const dbName = () => `engine-test-${n++}`;
const base = { catalog, backend: 'cpu' as const, autoTrainEvery: 0 };

describe('Engine', () => {
  it('cold start: no events → popularity, with a readable reason', async () => {
    const e = await Engine.create({ ...base, dbName: dbName() });
    const recs = await e.recommend({ k: 3 });
    assert.deepEqual(recs.map((r) => r.itemId), ['p0', 'p1', 'p2']);
    assert.equal(recs[0]!.reason.kind, 'popular');
    assert.equal(recs[0]!.reason.text, 'Popular in this shop');
    await e.erase();
  });

  it('stores events in batches, excludes what was seen, filters by category, and explains with real past items', async () => {
    // A global model with structure, as a device would pull from the server: bags point one way,
    // mugs another. (One shopper's own events cannot teach which unseen items are alike.)
    const store = new MemoryEventStore();
    const dim = 32;
    const factors = new Float32Array(30 * dim);
    for (let i = 0; i < 30; i++) factors[i * dim + (i < 15 ? 0 : 1)] = 1 + i / 100;
    await store.setMeta(MODEL_KEY, { version: 3, itemIds: catalog.items.map((i) => i.id), dim, factors, bias: new Float32Array(30), trainSteps: 0, trainedThroughId: 0 });
    const e = await Engine.create({ ...base, store });
    assert.equal((await e.stats()).model.version, 3);
    e.enqueue([{ type: 'view', itemId: 'p20' }, { type: 'add_to_cart', itemId: 'p21' }, { type: 'purchase', itemId: 'p22', quantity: 2 }]);
    e.enqueue([{ type: 'search', query: 'bag', itemId: 'p23' }]);
    assert.equal((await e.stats()).events.total, 4);
    const recs = await e.recommend({ k: 5 });
    const seen = new Set(['p20', 'p21', 'p22', 'p23']);
    for (const r of recs) {
      assert.ok(!seen.has(r.itemId));
      if (r.reason.kind === 'personal') {
        assert.match(r.reason.text, /^Because you (viewed|added|bought|searched for) Product 2[0-3]/);
        for (const id of r.reason.itemIds) assert.ok(seen.has(id), `reason cites ${id}, a real past item`);
      }
    }
    assert.ok(recs.every((r) => r.reason.kind === 'personal'), 'every pick is explained by the history');
    for (const r of recs) assert.ok(Number(r.itemId.slice(1)) >= 15, `${r.itemId}: a shopper of bags gets bags`);
    await e.train({ epochs: 5 });
    assert.ok((await e.stats()).model.trainSteps > 0);
    const bags = await e.recommend({ k: 20, category: 'bags', exclude: 'none' });
    assert.ok(bags.length > 0 && bags.length <= 15);
    for (const r of bags) assert.ok(Number(r.itemId.slice(1)) >= 15, `${r.itemId} is a bag`);
    const withSeen = await e.recommend({ k: 30, exclude: 'purchased' });
    assert.ok(!withSeen.some((r) => r.itemId === 'p22') && withSeen.some((r) => r.itemId === 'p20'));
    const explicit = await e.recommend({ k: 30, exclude: ['p0', 'p1'] });
    assert.ok(!explicit.some((r) => r.itemId === 'p0' || r.itemId === 'p1'));
    await e.erase();
  });

  it('similar() ranks by embedding cosine and never returns the item itself', async () => {
    const e = await Engine.create({ ...base, dbName: dbName() });
    const sim = await e.similar('p3', { k: 4 });
    assert.equal(sim.length, 4);
    assert.ok(!sim.some((r) => r.itemId === 'p3'));
    assert.equal(sim[0]!.reason.text, 'Similar to Product 3');
    for (let i = 1; i < sim.length; i++) assert.ok(sim[i - 1]!.score >= sim[i]!.score);
    await assert.rejects(e.similar('nope'), /"nope" is not in the catalog/);
    await e.erase();
  });

  it('rejects bad events and bad options by name, keeping the good events of the same call', async () => {
    const e = await Engine.create({ ...base, dbName: dbName() });
    assert.throws(() => e.enqueue([{ type: 'view', itemId: 'p1' }, { type: 'view' }]), (err) => isValidationError(err) && /event\.itemId/.test((err as Error).message));
    await e.flush();
    const s = await e.stats();
    assert.equal(s.events.total, 1);
    assert.equal(s.dropped, 1);
    await assert.rejects(e.recommend({ k: 0 }), /options\.k: must be a whole number from 1 to 1000, got 0/);
    await assert.rejects(e.recommend({ exclude: 'everything' as never }), /options\.exclude/);
    await e.erase();
    await assert.rejects(Engine.create({ ...base, catalog: { items: [{ id: 'a' }, { id: 'a' }] } }), /options\.catalog\.items\[1\]\.id: duplicate id "a"/);
    await assert.rejects(Engine.create({ ...base, autoTrainEvery: -1 }), /options\.autoTrainEvery/);
    await assert.rejects(Engine.create({ ...base, model: { dim: 500 } }), /options\.model\.dim/);
    await assert.rejects(Engine.create({ ...base, model: { sessionDecay: 0 } }), /options\.model\.sessionDecay: must be a number in \(0, 1\]/);
  });

  it('persists weights: a new engine on the same database does not retrain, and a changed catalog keeps known rows', async () => {
    const name = dbName();
    const e1 = await Engine.create({ ...base, dbName: name });
    e1.enqueue([{ type: 'view', itemId: 'p5' }, { type: 'view', itemId: 'p6' }, { type: 'purchase', itemId: 'p7' }]);
    await e1.train({ epochs: 10 });
    const r1 = await e1.recommend({ k: 5 });
    const steps = (await e1.stats()).model.trainSteps;
    await e1.close();

    const e2 = await Engine.create({ ...base, dbName: name });
    const s2 = await e2.stats();
    assert.equal(s2.model.trainSteps, steps);
    assert.equal(s2.model.pendingEvents, 0);
    assert.deepEqual((await e2.recommend({ k: 5 })).map((r) => r.itemId), r1.map((r) => r.itemId));
    await e2.close();

    const grown = { items: [{ id: 'new-1', title: 'New', popularity: 0 }, ...catalog.items] };
    const e3 = await Engine.create({ ...base, catalog: grown, dbName: name });
    const after = (await e3.recommend({ k: 6 })).map((r) => r.itemId).filter((id) => id !== 'new-1');
    assert.deepEqual(after.slice(0, 5), r1.map((r) => r.itemId), 'known items keep their trained rows');
    await e3.erase();
  });

  it('trains by itself once enough new events are stored', async () => {
    const store = new MemoryEventStore();
    const e = await Engine.create({ ...base, autoTrainEvery: 5, store });
    e.enqueue(['p1', 'p2', 'p3', 'p4', 'p5', 'p6'].map((itemId) => ({ type: 'view', itemId })));
    await e.flush();
    for (let i = 0; i < 200 && (await e.stats()).model.trainSteps === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const s = await e.stats();
    assert.ok(s.model.trainSteps > 0, 'auto-training ran');
    assert.equal(s.model.pendingEvents, 0);
    assert.ok((await store.getMeta(MODEL_KEY)) !== undefined, 'and saved its weights');
    await e.close();
  });

  it('erase() removes every event and the weights; a closed engine refuses work', async () => {
    const name = dbName();
    const e = await Engine.create({ ...base, dbName: name });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await e.train({ epochs: 1 });
    await e.erase();
    await assert.rejects(e.recommend(), /closed/);
    const store = await IdbEventStore.open(name);
    assert.equal(await store.count(), 0);
    assert.equal(await store.getMeta(MODEL_KEY), undefined);
    await store.destroy();
  });
});
