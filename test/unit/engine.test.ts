import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Engine, MODEL_KEY } from '../../src/engine/engine.js';
import { IdbEventStore, MemoryEventStore } from '../../src/events/store.js';
import { isValidationError } from '../../src/errors.js';
import { storeSignallingReads } from './engine-helpers.js';
import { encodeNeighborTable } from '../../src/model/neighbors-wire.js';
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
    assert.deepEqual(recs[0]!.reason.basis, []);
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
        assert.match(r.reason.text, /^Because you (viewed|added|bought|searched for and opened) Product 2[0-3]/);
        for (const id of r.reason.itemIds) assert.ok(seen.has(id), `reason cites ${id}, a real past item`);
        // The structured form says the same: each cited item with what the shopper did with it.
        const did: Record<string, string> = { p20: 'view', p21: 'add_to_cart', p22: 'purchase', p23: 'search' };
        assert.deepEqual(r.reason.basis.map((b) => b.itemId), r.reason.itemIds);
        for (const b of r.reason.basis) assert.equal(b.event, did[b.itemId], `${b.itemId} was cited as a ${b.event}`);
        const verb: Record<string, string> = { view: 'viewed', add_to_cart: 'added', purchase: 'bought', search: 'searched for and opened' };
        assert.equal(r.reason.text, `Because you ${r.reason.basis.map((b) => `${verb[b.event]} Product ${b.itemId.slice(1)}`).join(' and ')}`);
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

  it('recommend({ candidates }) puts a page\'s own list in the order recommend() gives it; unknown ids are skipped, bad lists refused by name', async () => {
    const store = new MemoryEventStore();
    const dim = 8;
    const factors = new Float32Array(30 * dim);
    for (let i = 0; i < 30; i++) factors[i * dim + (i < 15 ? 0 : 1)] = 1 + i / 100;
    await store.setMeta(MODEL_KEY, { version: 2, itemIds: catalog.items.map((i) => i.id), dim, factors, bias: Float32Array.from({ length: 30 }, (_, i) => (30 - i) / 100), trainSteps: 0, trainedThroughId: 0 });
    const e = await Engine.create({ ...base, store, model: { dim } });
    e.enqueue([{ type: 'purchase', itemId: 'p20' }, { type: 'view', itemId: 'p21' }]);
    const all = (await e.recommend({ k: 30, exclude: 'none' })).map((r) => r.itemId);
    // A category page's items, in the shop's order, with a product the catalog does not hold yet and a repeat.
    const page = ['p3', 'p25', 'p21', 'p9', 'new-sku', 'p28', 'p3'];
    const known = new Set(page);
    const inOrder = all.filter((id) => known.has(id));
    assert.deepEqual((await e.recommend({ k: page.length, candidates: page, exclude: 'none' })).map((r) => r.itemId), inOrder);
    assert.deepEqual(inOrder.slice(0, 3), ['p28', 'p25', 'p21'], 'the bags first for a shopper of bags');
    // exclude and category still apply; k cuts the list.
    assert.deepEqual((await e.recommend({ k: 2, candidates: page })).map((r) => r.itemId), ['p28', 'p25'], 'p21 was seen');
    assert.deepEqual((await e.recommend({ k: 10, candidates: page, category: 'mugs' })).map((r) => r.itemId), inOrder.filter((id) => Number(id.slice(1)) < 15));
    // The same scores as without the list.
    const scores = new Map((await e.recommend({ k: 30, exclude: 'none' })).map((r) => [r.itemId, r.score]));
    for (const r of await e.recommend({ k: 10, candidates: page, exclude: 'none' })) assert.equal(r.score, scores.get(r.itemId));
    assert.deepEqual(await e.recommend({ candidates: [] }), []);
    // Without k, the whole list comes back in order (an empty one too, as above).
    assert.deepEqual((await e.recommend({ candidates: page, exclude: 'none' })).map((r) => r.itemId), inOrder);
    assert.deepEqual(await e.recommend({ candidates: ['nothing-known'] }), []);
    await assert.rejects(e.recommend({ candidates: 'p3' as never }), /options\.candidates: must be an array of item ids, got "p3"/);
    await assert.rejects(e.recommend({ candidates: ['p3', 7] as never }), /options\.candidates\[1\]: must be an item id string, got 7/);
    await assert.rejects(e.recommend({ candidates: Array.from({ length: 10_001 }, (_, i) => `x${i}`) }), /options\.candidates: must hold at most 10000 item ids, got 10001/);
    // A page of more than 1,000 products is put in order whole (`k: ids.length`); k stays ≤ 1000 without one.
    const bigPage = [...Array.from({ length: 1_500 }, (_, i) => `elsewhere-${i}`), ...page];
    assert.deepEqual((await e.recommend({ candidates: bigPage, k: bigPage.length, exclude: 'none' })).map((r) => r.itemId), inOrder);
    await assert.rejects(e.recommend({ k: 1_001 }), /options\.k: must be a whole number from 1 to 1000, got 1001/);
    await assert.rejects(e.recommend({ candidates: page, k: 1_001 }), /options\.k: must be a whole number from 1 to 1000, got 1001/);
    // Many one-off lists do not pile up masks on the backend.
    const tf = await import('../../src/model/tf.js');
    const before = tf.memory().numTensors;
    for (let i = 0; i < 40; i++) await e.recommend({ k: 3, candidates: [`p${i % 30}`, `p${(i + 7) % 30}`] });
    assert.equal(tf.memory().numTensors, before);
    await e.erase();
  });

  it('an event tracked while another call reads the history is seen by the next recommend()', async () => {
    const { store, reading } = await storeSignallingReads(dbName());
    const e = await Engine.create({ ...base, store });
    e.enqueue([{ type: 'view', itemId: 'p5' }]);
    await e.flush();
    const first = e.recommend({ k: 30 }); // reads the stored history...
    await reading;
    e.enqueue([{ type: 'view', itemId: 'p0' }]); // ...while the shopper views p0
    const second = await e.recommend({ k: 30 });
    await first;
    const third = await e.recommend({ k: 30 });
    assert.ok(!second.some((r) => r.itemId === 'p0'), 'track() then recommend(): p0 is seen');
    assert.ok(!third.some((r) => r.itemId === 'p0'), 'the older read is not kept as the history');
    assert.equal((await e.stats()).events.total, 2);
    await e.erase();
  });

  it('train() during a run: the same epochs join it and hear its progress, other epochs train after it', async () => {
    const e = await Engine.create({ ...base, store: new MemoryEventStore() });
    e.enqueue([{ type: 'view', itemId: 'p1' }, { type: 'view', itemId: 'p2' }, { type: 'purchase', itemId: 'p3' }, { type: 'view', itemId: 'p4' }]);
    const heard: string[] = [];
    const first = e.train({ epochs: 2 });
    const joined = e.train({ onProgress: (p) => heard.push(p.phase) });
    const own: string[] = [];
    const longer = e.train({ epochs: 6, onProgress: (p) => own.push(p.phase) });
    const [a, b, c] = await Promise.all([first, joined, longer]);
    assert.equal(b, a, 'a call without epochs gets the running run\'s result');
    assert.ok(heard.includes('training') && heard.at(-1) === 'saving', `the joined call hears the run's progress, got ${heard.join(',')}`);
    assert.equal(c.steps, a.steps * 3, 'epochs 6 ran after the 2-epoch run, with its own epochs');
    assert.equal(own.filter((p) => p === 'loading').length, 2, 'and its progress is its own run\'s only (loading begun, loading done)');
    assert.equal((await e.stats()).model.trainSteps, a.steps + c.steps);
    await e.close();
  });

  it('train(): a progress callback that throws does not stop the run; bad options are refused by name, as a rejected promise', async () => {
    const e = await Engine.create({ ...base, store: new MemoryEventStore() });
    e.enqueue([{ type: 'view', itemId: 'p1' }, { type: 'purchase', itemId: 'p2' }, { type: 'view', itemId: 'p3' }]);
    let calls = 0;
    const r = await e.train({
      epochs: 3,
      onProgress: () => {
        calls++;
        throw new Error('render failed');
      },
    });
    assert.ok(calls > 3, 'the callback was called for every report');
    assert.equal((await e.stats()).model.trainSteps, r.steps, 'the run finished and was recorded');
    const refused = e.train({ epochs: 0 });
    assert.ok(refused instanceof Promise, 'bad options reject, they do not throw');
    await assert.rejects(refused, /options\.epochs: must be a whole number from 1 to 1000, got 0/);
    await assert.rejects(e.train({ onProgress: 5 as never }), (err) => isValidationError(err) && /options\.onProgress: must be a function, got number/.test(err.message));
    const running = e.train({ epochs: 1 });
    await assert.rejects(e.train({ epochs: -5 }), /options\.epochs/, 'checked before joining a run');
    await running;
    await e.close();
  });

  it('a train() waiting for a run of other epochs does not start one once close() or erase() began', async () => {
    for (const how of ['erase', 'close'] as const) {
      const name = dbName();
      const e = await Engine.create({ ...base, dbName: name });
      e.enqueue([{ type: 'purchase', itemId: 'p7' }, { type: 'view', itemId: 'p9' }, { type: 'view', itemId: 'p3' }]);
      await e.flush();
      const running = e.train({ epochs: 2 });
      const phases: string[] = [];
      const queued = e.train({ epochs: 3, onProgress: (p) => phases.push(p.phase) });
      const end = how === 'erase' ? e.erase() : e.close();
      const r = await Promise.allSettled([running, queued, end]);
      // The run under way stops (stop 31): an AbortError, not its result.
      assert.ok(r[0].status === 'rejected' && String(r[0].reason) === `AbortError: training stopped by ${how}(); nothing it learned was saved`, `${how}: ${String((r[0] as PromiseRejectedResult).reason)}`);
      assert.ok(r[1].status === 'rejected' && /ClosedError: the recommender is closing/.test(String(r[1].reason)), `${how}: ${String((r[1] as PromiseRejectedResult).reason)}`);
      assert.equal(r[2].status, 'fulfilled', how);
      assert.deepEqual(phases, [], `${how}: the queued call trained nothing`);
      if (how === 'erase') assert.ok(!(await indexedDB.databases()).some((d) => d.name === name), 'the erased database is not written again');
    }
    // A call made once erase() began, with no run to wait for, does not start one either.
    const e = await Engine.create({ ...base, dbName: dbName() });
    e.enqueue([{ type: 'purchase', itemId: 'p7' }, { type: 'view', itemId: 'p9' }]);
    await e.flush();
    const end = e.erase();
    await assert.rejects(e.train({ epochs: 3 }), /the recommender is closing/);
    await end;
  });

  it('scores at the temperature it trains with (as localrec eval does); a bad training temperature is refused at start', async () => {
    const temperatureOf = (e: Engine) => (e as unknown as { scorer: { temperature: number } }).scorer.temperature;
    const e = await Engine.create({ ...base, store: new MemoryEventStore(), training: { temperature: 0.1 } });
    assert.equal(temperatureOf(e), 0.1, 'after start');
    e.enqueue([{ type: 'view', itemId: 'p1' }, { type: 'purchase', itemId: 'p2' }, { type: 'view', itemId: 'p3' }]);
    await e.train({ epochs: 1 });
    assert.equal(temperatureOf(e), 0.1, 'after training');
    await e.close();
    await assert.rejects(Engine.create({ ...base, store: new MemoryEventStore(), training: { temperature: 0 } }), /options\.training\.temperature: must be a number from 0\.001 to 100, got 0/);
  });

  it('a damaged stored model record does not stop the engine from starting', async () => {
    for (const bad of [{ dim: 32 }, { dim: 32, itemIds: null }, { dim: 32, itemIds: 'ab' }, { dim: 32, itemIds: ['p0'], factors: [1], bias: [0] }]) {
      const store = new MemoryEventStore();
      await store.setMeta(MODEL_KEY, bad);
      const e = await Engine.create({ ...base, store });
      assert.match((await e.stats()).lastError ?? '', /ModelError: item table/, JSON.stringify(bad));
      assert.equal((await e.recommend({ k: 1 }))[0]!.itemId, 'p0', 'fresh weights: popularity');
      await e.close();
    }
  });

  it('a refused autoTrainEvery leaves IndexedDB untouched', async () => {
    const name = dbName();
    await assert.rejects(Engine.create({ ...base, autoTrainEvery: -1, dbName: name }), /options\.autoTrainEvery: must be a whole number from 0 to 1000000, got -1/);
    assert.ok(!(await indexedDB.databases()).some((d) => d.name === name), 'no database was created');
  });

  it('similar() ranks by embedding cosine once the table has learned, and never returns the item itself', async () => {
    const store = new MemoryEventStore();
    const dim = 4;
    // p3's nearest: p5, then p7 (the rest orthogonal to it).
    const factors = new Float32Array(30 * dim);
    for (let i = 0; i < 30; i++) factors[i * dim + 1 + (i % 3)] = 1;
    factors.set([1, 0, 0, 0], 3 * dim);
    factors.set([0.9, 0.1, 0, 0], 5 * dim);
    factors.set([0.7, 0.3, 0, 0], 7 * dim);
    await store.setMeta(MODEL_KEY, { version: 1, itemIds: catalog.items.map((i) => i.id), dim, factors, bias: new Float32Array(30), trainSteps: 0, trainedThroughId: 0 });
    const e = await Engine.create({ ...base, store, model: { dim } });
    const sim = await e.similar('p3', { k: 4 });
    assert.equal(sim.length, 4);
    assert.ok(!sim.some((r) => r.itemId === 'p3'));
    assert.deepEqual(sim.slice(0, 2).map((r) => r.itemId), ['p5', 'p7']);
    assert.equal(sim[0]!.reason.text, 'Similar to Product 3');
    assert.deepEqual([sim[0]!.reason.kind, sim[0]!.reason.itemIds, sim[0]!.reason.basis], ['similar', ['p3'], []]);
    for (let i = 1; i < sim.length; i++) assert.ok(sim[i - 1]!.score >= sim[i]!.score);
    await assert.rejects(e.similar('nope'), (err: unknown) => isValidationError(err) && err.field === 'itemId' && /"nope" is not in the catalog/.test(err.message));
    await e.close();
  });

  it('a reason names two items done alike with one verb, and quotes titles with their runs of spaces made one (stop 34)', async () => {
    const items = catalog.items.map((i) => (i.id === 'p8' ? { ...i, title: '  RED  HARMONICA IN BOX ' } : i));
    const store = new MemoryEventStore();
    const dim = 4;
    const factors = new Float32Array(30 * dim);
    for (let i = 0; i < 30; i++) factors[i * dim + 1] = 0.1;
    for (const r of [8, 9, 29]) factors.set([1, 0, 0, 0], r * dim);
    factors.set([3, 0, 0, 0], 28 * dim);
    await store.setMeta(MODEL_KEY, { version: 2, itemIds: items.map((i) => i.id), dim, factors, bias: new Float32Array(30), trainSteps: 0, trainedThroughId: 0 });
    const e = await Engine.create({ ...base, catalog: { items }, store, model: { dim } });
    const t = Date.now();
    e.enqueue([{ type: 'purchase', itemId: 'p8', t: t - 60_000 }, { type: 'purchase', itemId: 'p9', t }]);
    const top = (await e.recommend({ k: 1, exclude: ['p28', 'p8', 'p9'] }))[0]!;
    assert.equal(top.itemId, 'p29');
    assert.match(top.reason.text, /^Because you bought (Product 9 and RED HARMONICA IN BOX|RED HARMONICA IN BOX and Product 9)$/);
    // Done differently, each with its verb (p28's view contributes most).
    e.enqueue([{ type: 'view', itemId: 'p28', t: t + 1 }]);
    assert.match((await e.recommend({ k: 1 }))[0]!.reason.text, /^Because you viewed Product 28 and bought (Product 9|RED HARMONICA IN BOX)$/);
    await e.close();
  });

  it('similar() on a table that has learned nothing (no training, no sync) lists the bestsellers as such, not as similar (stop 34)', async () => {
    const e = await Engine.create({ ...base, dbName: dbName() });
    const sim = await e.similar('p3', { k: 4 });
    // The seeded factors' nearest would be chance: popularity order instead, p3 itself left out.
    assert.deepEqual(sim.map((r) => r.itemId), ['p0', 'p1', 'p2', 'p4']);
    for (const r of sim) assert.deepEqual(r.reason, { kind: 'popular', text: 'Popular in this shop', itemIds: [], basis: [] });
    // Nor does recommend() cite a past item for them: its contributions would be noise.
    e.enqueue([{ type: 'view', itemId: 'p9' }, { type: 'purchase', itemId: 'p12' }]);
    const recs = await e.recommend({ k: 5 });
    for (const r of recs) assert.equal(r.reason.kind, 'popular', `${r.itemId}: ${r.reason.text}`);
    await e.erase();
    // Trained on this device (version 0, training steps taken): its contributions are cited.
    const store = new MemoryEventStore();
    const dim = 4;
    const factors = new Float32Array(30 * dim);
    for (let i = 0; i < 30; i++) factors[i * dim + 1] = 0.1;
    factors.set([1, 0, 0, 0], 9 * dim);
    factors.set([1, 0, 0, 0], 29 * dim);
    await store.setMeta(MODEL_KEY, { version: 0, itemIds: catalog.items.map((i) => i.id), dim, factors, bias: new Float32Array(30), trainSteps: 8, trainedThroughId: 0 });
    const trained = await Engine.create({ ...base, store, model: { dim } });
    trained.enqueue([{ type: 'view', itemId: 'p9' }]);
    const top = (await trained.recommend({ k: 1 }))[0]!;
    assert.deepEqual([top.itemId, top.reason.kind, top.reason.text], ['p29', 'personal', 'Because you viewed Product 9']);
    await trained.close();
  });

  it('similar() leaves out what `exclude` names and keeps to `category`, with the neighbour table and without', async () => {
    const store = new MemoryEventStore();
    const dim = 8;
    // Two clusters of embeddings, across the two categories (mugs p0–p14, bags p15–p29).
    const factors = new Float32Array(30 * dim);
    for (let i = 0; i < 30; i++) factors[i * dim + (i % 2)] = 1 + i / 100;
    await store.setMeta(MODEL_KEY, { version: 2, itemIds: catalog.items.map((i) => i.id), dim, factors, bias: new Float32Array(30), trainSteps: 0, trainedThroughId: 0 });
    const e = await Engine.create({ ...base, store, model: { dim } });
    e.enqueue([{ type: 'view', itemId: 'p28' }, { type: 'purchase', itemId: 'p26' }]);
    const all = (await e.similar('p4', { k: 29 })).map((r) => r.itemId);
    assert.equal(all.length, 29, 'default: nothing but the item itself left out');
    assert.deepEqual((await e.similar('p4', { k: 29, exclude: ['p2', 'p6'] })).map((r) => r.itemId), all.filter((id) => id !== 'p2' && id !== 'p6'));
    assert.deepEqual((await e.similar('p4', { k: 29, exclude: 'seen' })).map((r) => r.itemId), all.filter((id) => id !== 'p28' && id !== 'p26'));
    assert.deepEqual((await e.similar('p4', { k: 29, exclude: 'purchased' })).map((r) => r.itemId), all.filter((id) => id !== 'p26'));
    const bags = (await e.similar('p4', { k: 5, category: 'bags' })).map((r) => r.itemId);
    assert.deepEqual(bags, all.filter((id) => Number(id.slice(1)) >= 15).slice(0, 5));
    assert.deepEqual(await e.similar('p4', { category: 'hats' }), []);
    await assert.rejects(e.similar('p4', { exclude: 7 } as never), /options\.exclude: must be 'seen', 'purchased', 'none' or an array of item ids; got 7/);
    await assert.rejects(e.similar('p4', { category: 3 } as never), /options\.category: must be a string/);
    // With a neighbour table: its neighbours first, less what is excluded or of another category.
    await e.setNeighbors(
      encodeNeighborTable({ itemIds: ['p4', 'p26', 'p8', 'p20'], width: 3, index: Int32Array.of(1, 2, 3, -1, -1, -1, -1, -1, -1, -1, -1, -1), weight: Float32Array.of(0.9, 0.5, 0.3, 0, 0, 0, 0, 0, 0, 0, 0, 0) }),
    );
    assert.deepEqual((await e.similar('p4', { k: 3 })).map((r) => r.itemId), ['p26', 'p8', 'p20']);
    const seenOut = (await e.similar('p4', { k: 3, exclude: 'seen' })).map((r) => r.itemId);
    assert.deepEqual(seenOut.slice(0, 2), ['p8', 'p20']);
    assert.ok(!seenOut.includes('p26') && !seenOut.includes('p28'));
    const bagsNb = (await e.similar('p4', { k: 3, category: 'bags' })).map((r) => r.itemId);
    assert.deepEqual(bagsNb.slice(0, 2), ['p26', 'p20']);
    assert.ok(bagsNb.every((id) => Number(id.slice(1)) >= 15));
    await e.close();
  });

  it('rejects bad events and bad options by name, keeping the good events of the same call', async () => {
    const e = await Engine.create({ ...base, dbName: dbName() });
    assert.throws(() => e.enqueue([{ type: 'view', itemId: 'p1' }, { type: 'view' } as never]), (err) => isValidationError(err) && /event\.itemId/.test((err as Error).message));
    await e.flush();
    const s = await e.stats();
    assert.equal(s.events.total, 1);
    assert.equal(s.dropped, 1);
    await assert.rejects(e.recommend({ k: 0 }), /options\.k: must be a whole number from 1 to 1000, got 0/);
    await assert.rejects(e.recommend({ exclude: 'everything' as never }), /options\.exclude/);
    await e.erase();
    await assert.rejects(Engine.create({ ...base, catalog: { items: [{ id: 'a' }, { id: 'a' }] } }), /options\.catalog\.items\[1\]\.id: duplicate id "a"/);
    // A misspelt field is refused, not dropped (reasons would show the raw id for a `name`).
    await assert.rejects(
      Engine.create({ ...base, catalog: { items: [{ id: 'a', title: 'A' }, { id: 'b', name: 'Red mug' } as never] } }),
      /^ValidationError: options\.catalog\.items\[1\]\.name: is not a catalog item field \(known: id, title, category, price, popularity\)$/,
    );
    await assert.rejects(Engine.create({ ...base, autoTrainEvery: -1 }), /options\.autoTrainEvery/);
    await assert.rejects(Engine.create({ ...base, model: { dim: 500 } }), /options\.model\.dim/);
    await assert.rejects(Engine.create({ ...base, model: { sessionDecay: 0 } }), /options\.model\.sessionDecay: must be a number in \(0, 1\]/);
  });

  it('refuses unknown option keys by name (a typo never silently keeps a default), and values of the wrong type say their type', async () => {
    const e = await Engine.create({ ...base, dbName: dbName() });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await assert.rejects(e.recommend({ count: 3 } as never), /options\.count: is not an option \(known: k, exclude, category, candidates\)/);
    await assert.rejects(e.recommend(null as never), /options: must be an object, got null/);
    await assert.rejects(e.recommend({ k: '5' } as never), /options\.k: must be a whole number from 1 to 1000, got "5"/);
    await assert.rejects(e.similar('p1', { n: 2 } as never), /options\.n: is not an option/);
    await assert.rejects(e.train({ epoch: 2 } as never), /options\.epoch: is not an option \(known: epochs, onProgress, signal\)/);
    await assert.rejects(e.sync({ onprogress: () => {} } as never), /options\.onprogress: is not an option/);
    await assert.rejects(e.offers({ context: { when: 1 } } as never), /options\.context\.when: is not an option/);
    assert.equal((await e.stats()).events.total, 1, 'the stored event is kept');
    await e.erase();
    const bad: Array<[Record<string, unknown>, RegExp]> = [
      [{ autoTrain: 5 }, /options\.autoTrain: is not an option/],
      [{ model: { dimension: 8 } }, /options\.model\.dimension: is not an option \(known: dim, halfLifeDays, sessionDecay, stepDecay, seed\)/],
      [{ model: { seed: Number.NaN } }, /options\.model\.seed: must be a whole number from 0 to 4294967295, got NaN/],
      [{ model: { seed: 0.5 } }, /options\.model\.seed: must be a whole number from 0 to 4294967295, got 0\.5/],
      [{ model: { seed: 2 ** 32 + 1 } }, /options\.model\.seed: must be a whole number from 0 to 4294967295, got 4294967297/],
      [{ retention: { maxAge: 1 } }, /options\.retention\.maxAge: is not an option \(known: maxEvents, maxAgeDays\)/],
      [{ retention: { maxEvents: '100' } }, /options\.retention\.maxEvents: must be a whole number from 1 to 10000000, got "100"/],
      [{ neighbors: { url: 'http://x/n.lrn', timeout: 5 } }, /options\.neighbors\.timeout: is not an option/],
      [{ consent: { personalisation: false, federated: false } }, /options\.consent\.personalisation: is not an option/],
      [{ federated: { serverUrl: 'http://127.0.0.1:9', epsilon: 4 } }, /options\.federated\.epsilon: is not an option/],
      // The page's worker options mean nothing to an engine without a worker: refused, not ignored.
      [{ workerTimeoutMs: 5_000 }, /options\.workerTimeoutMs: is not an option/],
      [{ workerUrl: '/worker.js' }, /options\.workerUrl: is not an option/],
    ];
    for (const [extra, re] of bad) await assert.rejects(Engine.create({ ...base, dbName: dbName(), ...extra } as never), re);
  });

  it('checks options.federated at start, before any request', async () => {
    const requests: string[] = [];
    const fetch = async (url: string) => {
      requests.push(url);
      throw new TypeError('offline');
    };
    const bad: Array<[Record<string, unknown>, RegExp]> = [
      [{ serverUrl: 'http://127.0.0.1:9', delta: 5 }, /options\.federated\.delta: must be a number in \(0, 1\), got 5/],
      [{ serverUrl: 'http://127.0.0.1:9', delta: 0 }, /options\.federated\.delta: must be a number in \(0, 1\), got 0/],
      [{ serverUrl: 'http://127.0.0.1:9', budget: 0 }, /options\.federated\.budget: must be a number > 0, got 0/],
      [{ serverUrl: 'http://127.0.0.1:9', budget: Number.NaN }, /options\.federated\.budget: must be a number > 0, got NaN/],
      [{ serverUrl: 'http://127.0.0.1:9', cohortWaitMs: -1 }, /options\.federated\.cohortWaitMs/],
      [{ serverUrl: 'ftp://shop.example' }, /options\.federated\.serverUrl: must be the aggregation server's http:\/\/ or https:\/\/ URL, got "ftp:\/\/shop\.example"/],
      [{ budget: 8 }, /options\.federated\.serverUrl/],
      // Privacy review (stop 30): a serverUrl that would add a query string, fragment or userinfo to
      // every request (the SDK appends /v1/… to it), named; a password is not repeated.
      [{ serverUrl: 'https://agg.example/localrec?shop=42' }, /options\.federated\.serverUrl: must be the aggregation server's address without a query string, got "https:\/\/agg\.example\/localrec\?shop=42"/],
      [{ serverUrl: 'https://agg.example/?' }, /options\.federated\.serverUrl: must be the aggregation server's address without a query string/],
      [{ serverUrl: 'https://agg.example/#device-7' }, /options\.federated\.serverUrl: must be the aggregation server's address without a fragment/],
      [{ serverUrl: 'https://agg.example/#' }, /options\.federated\.serverUrl: must be the aggregation server's address without a fragment/],
      [{ serverUrl: 'https://shopper:s3cret@agg.example/' }, /^(?!.*s3cret).*options\.federated\.serverUrl: must be the aggregation server's address without userinfo \(user:password@\), got "https:\/\/…@agg\.example\/"/],
      [{ serverUrl: 'https://@agg.example/' }, /options\.federated\.serverUrl: must be the aggregation server's address without userinfo/],
      // Spellings a URL parser still reads as userinfo: refused, and the password not repeated either.
      [{ serverUrl: 'https:/shopper:s3cret@agg.example/' }, /^(?!.*s3cret).*without userinfo \(user:password@\), got "https:\/\/…@agg\.example\/"/],
      [{ serverUrl: 'https:shopper:s3cret@agg.example/' }, /^(?!.*s3cret).*without userinfo/],
      // δ far above 1 / the number of devices would make ε say nothing (δ = 0.5: ε ≈ 0).
      [{ serverUrl: 'http://127.0.0.1:9', delta: 0.5 }, /options\.federated\.delta: must be at most 0\.001, got 0\.5: δ is the probability that the privacy guarantee fails outright, so it must be far below 1 \/ the number of devices \(the default is 1e-5\)/],
      [{ serverUrl: 'http://127.0.0.1:9', delta: 0.0011 }, /options\.federated\.delta: must be at most 0\.001/],
    ];
    for (const [federated, re] of bad) await assert.rejects(Engine.create({ ...base, dbName: dbName(), federated, fetch } as never), re);
    assert.deepEqual(requests, []);
    // What stays allowed: a path, a port, δ up to 1e-3.
    for (const federated of [{ serverUrl: 'https://agg.example:8443/shop/localrec/' }, { serverUrl: 'http://127.0.0.1:9', delta: 1e-3 }, { serverUrl: 'http://127.0.0.1:9', delta: 1e-7 }]) {
      const e = await Engine.create({ ...base, dbName: dbName(), federated, fetch });
      await e.close();
    }
  });

  it('a stored model of another dim is replaced, and stats() says so', async () => {
    const name = dbName();
    const e1 = await Engine.create({ ...base, dbName: name, model: { dim: 8 } });
    e1.enqueue([{ type: 'view', itemId: 'p5' }, { type: 'purchase', itemId: 'p6' }]);
    await e1.train({ epochs: 2 });
    await e1.close();
    const e2 = await Engine.create({ ...base, dbName: name, model: { dim: 16 } });
    const s = await e2.stats();
    assert.equal(s.model.trainSteps, 0);
    assert.match(s.lastError ?? '', /ModelError: the stored model has dim 8 but options\.model\.dim is 16: starting from fresh weights/);
    await e2.erase();
  });

  it('events stored while training runs stay pending: the run did not learn from them', async () => {
    const e = await Engine.create({ ...base, dbName: dbName() });
    e.enqueue([{ type: 'view', itemId: 'p5' }, { type: 'purchase', itemId: 'p6' }]);
    let flushed: Promise<void> | undefined;
    await e.train({
      epochs: 3,
      onProgress: (p) => {
        if (p.phase !== 'training' || flushed) return;
        e.enqueue([{ type: 'purchase', itemId: 'p7' }, { type: 'view', itemId: 'p8' }]);
        flushed = e.flush();
      },
    });
    await flushed;
    assert.equal((await e.stats()).model.pendingEvents, 2);
    await e.erase();
  });

  it('close() stops a neighbour download still in flight instead of waiting for its timeout', async () => {
    let aborted = false;
    // A server that never answers: only the abort ends this fetch.
    const fetch = (_url: string, init?: { signal?: AbortSignal }) =>
      new Promise<Response>((_resolve, reject) => {
        init?.signal?.addEventListener('abort', () => {
          aborted = true;
          reject(new DOMException('aborted', 'AbortError'));
        });
      });
    const e = await Engine.create({ ...base, dbName: dbName(), neighbors: { url: 'http://127.0.0.1:9/n.lrn', timeoutMs: 600_000 }, fetch: fetch as never });
    await e.close();
    assert.equal(aborted, true);
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
