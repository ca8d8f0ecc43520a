import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DenseEaseModel, SparseEaseModel } from '../../src/eval/ease-model.js';
import { NO_WEIGHTING, weightedHistory } from '../../src/eval/history-weighting.js';
import { ItemKnnModel } from '../../src/eval/item-knn-model.js';
import { PopularModel } from '../../src/eval/popular-model.js';
import { evaluateModel } from '../../src/eval/runner.js';
import type { Split } from '../../src/eval/split.js';
import { splitOf } from './eval-helpers.js';


const TINY = splitOf({ u1: ['a', 'b'], u2: ['a', 'b', 'c'], u3: ['c', 'd'], u4: ['a'] }, { u4: ['c'] });
const scores = (m: { score(u: number, o: Float32Array): void }, s: Split, u: string) => {
  const out = new Float32Array(s.itemIds.length);
  m.score(s.userIds.indexOf(u), out);
  return Object.fromEntries(s.itemIds.map((id, i) => [id, Math.round(out[i] * 1e6) / 1e6]));
};

test('popular scores items by their number of training users', () => {
  const m = new PopularModel();
  m.fit(TINY);
  assert.deepEqual(scores(m, TINY, 'u4'), { a: 3, b: 2, c: 2, d: 1 });
});

test('item-kNN: cosine similarity summed over the history, neighbours pruned', () => {
  const m = new ItemKnnModel({ neighbors: 10, shrink: 0 });
  m.fit(TINY, () => {});
  // users(a) = {u1,u2,u4}, users(b) = {u1,u2}, users(c) = {u2,u3}: cos(a,b) = 2/√6, cos(a,c) = 1/√6.
  assert.deepEqual(scores(m, TINY, 'u4'), { a: 0, b: Math.round((2 / Math.sqrt(6)) * 1e6) / 1e6, c: Math.round((1 / Math.sqrt(6)) * 1e6) / 1e6, d: 0 });
  const one = new ItemKnnModel({ neighbors: 1, shrink: 0 });
  one.fit(TINY, () => {});
  assert.equal(scores(one, TINY, 'u4').c, 0);
});

test('runner: full ranking excludes seen items; HR and NDCG follow the rank of the held-out item', async () => {
  const m = new ItemKnnModel({ neighbors: 10, shrink: 0 });
  const at1 = await evaluateModel(m, TINY, { k: 1, data: 'tiny' });
  assert.equal(at1.hr, 0); // b outranks c
  const at2 = await evaluateModel(m, TINY, { k: 2, data: 'tiny' });
  assert.equal(at2.hr, 1);
  assert.ok(Math.abs(at2.ndcg - 1 / Math.log2(3)) < 1e-4);
  assert.equal(at2.testUsers, 1);
  assert.equal(at2.users, 4);
  assert.equal(at2.coverage, 0.5); // b and c of 4 items
});

test('history weighting: recency decays per step back, confidence grows with the count', () => {
  const h = weightedHistory(TINY.train, TINY.userIds.indexOf('u2'), { recencyDecay: 0.5, confidence: 'none' });
  assert.deepEqual([...h.weights], [0.25, 0.5, 1]);
  assert.deepEqual([...weightedHistory(TINY.train, 1, NO_WEIGHTING).weights], [1, 1, 1]);
});

test('sparse EASE with all neighbours kept scores like dense EASE; pruning to 1 keeps the strongest', async () => {
  const s = splitOf(
    { u1: ['a', 'b', 'c'], u2: ['a', 'b'], u3: ['b', 'c', 'd'], u4: ['c', 'd'], u5: ['a', 'd'], u6: ['a', 'b', 'e'] },
    { u2: ['c'], u4: ['a'] },
  );
  const w = { recencyDecay: 0.5, confidence: 'none' as const };
  const dense = new DenseEaseModel({ l2: 1, weighting: w });
  dense.fit(s, () => {});
  for (const prune of ['row', 'col'] as const) {
    const sparse = new SparseEaseModel({ l2: 1, width: 4, prune, positiveOnly: false, weighting: w });
    sparse.fit(s, () => {});
    for (const u of s.userIds) assert.deepEqual(scores(sparse, s, u), scores(dense, s, u), `${prune} ${u}`);
  }
  const r1 = await evaluateModel(new SparseEaseModel({ l2: 1, width: 1, prune: 'row', positiveOnly: false, weighting: w }), s, { k: 2, data: 't' });
  assert.equal(r1.bytesPerItem, 6);
  assert.ok(r1.hr >= 0 && r1.hr <= 1);
});

// Review of src/eval/localrec-model.ts: the backend asked for is the one the figures come from,
// and every training setting it takes reaches training.
test('factors model: a backend that does not start is a ModelError, not a silent fallback', async () => {
  const tf = await import('../../src/model/tf.js');
  const { LocalrecModel } = await import('../../src/eval/localrec-model.js');
  // Registered, but fails to start (as the wasm backend does without its .wasm files): tfjs answers false.
  tf.registerBackend('broken-for-test', async () => {
    throw new Error('no binaries');
  });
  const warn = console.warn;
  console.warn = () => {}; // tfjs logs the failed start with its stack
  try {
    const m = new LocalrecModel({ ...factorsOptions, backend: 'broken-for-test' as never });
    await assert.rejects(m.fit(smallSplit(), () => {}), (e: unknown) => e instanceof Error && e.name === 'ModelError' && /backend 'broken-for-test' could not be started/.test(e.message));
  } finally {
    console.warn = warn;
    tf.removeBackend('broken-for-test');
  }
});

test('factors model: initialAccumulator reaches training (left out, it is the training default)', async () => {
  const { LocalrecModel } = await import('../../src/eval/localrec-model.js');
  const { DEFAULT_TRAIN_CONFIG } = await import('../../src/model/train.js');
  const fitted = async (initialAccumulator?: number) => {
    const m = new LocalrecModel({ ...factorsOptions, ...(initialAccumulator !== undefined ? { initialAccumulator } : {}) });
    await m.fit(smallSplit(), () => {});
    return Array.from(m.trainedTable!.factors);
  };
  const byDefault = await fitted();
  assert.deepEqual(await fitted(DEFAULT_TRAIN_CONFIG.initialAccumulator), byDefault);
  assert.notDeepEqual(await fitted(10), byDefault);
});

const factorsOptions = {
  dim: 4,
  epochs: 1,
  batchSize: 8,
  negatives: 2,
  learningRate: 0.1,
  l2: 1e-4,
  maxContext: 5,
  temperature: 1,
  backend: 'cpu' as const,
  seed: 1,
  weighting: NO_WEIGHTING,
};

const smallSplit = (): Split => splitOf({ u1: ['a', 'b', 'c'], u2: ['b', 'c', 'd'], u3: ['a', 'c', 'd'] }, { u1: ['d'] });
