import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isValidationError } from '../../src/errors.js';
import { ItemKnnModel } from '../../src/eval/item-knn-model.js';
import { MODELS, planModels } from '../../src/eval/model-registry.js';
import { evaluateModel } from '../../src/eval/runner.js';
import type { Split } from '../../src/eval/split.js';
import { splitOf } from './eval-helpers.js';


// u saw a (older) then b (latest) and comes back for d. cos(a, c) = 2/√(3·2) ≈ 0.816,
// cos(b, d) = 2/√(4·2) ≈ 0.707, cos(a, d) = cos(b, c) = 0. Plain history:
// c 0.816 > d 0.707. Recency 0.5 halves a: c 0.408 < d 0.707.
const RECENT = splitOf(
  { u: ['a', 'b'], v1: ['a', 'c'], v2: ['a', 'c'], v3: ['b', 'd'], v4: ['b', 'd'], v5: ['b'] },
  { u: ['d'] },
);

const scoresOf = (m: ItemKnnModel, s: Split, user: string): Record<string, number> => {
  const out = new Float32Array(s.itemIds.length);
  m.score(s.userIds.indexOf(user), out);
  return Object.fromEntries(s.itemIds.map((id, i) => [id, Math.round(out[i] * 1e4) / 1e4]));
};

test('item-kNN: recency weighting ranks the latest item’s neighbour first, plain history does not', async () => {
  const plain = new ItemKnnModel({ neighbors: 10, shrink: 0 });
  plain.fit(RECENT, () => {});
  const recent = new ItemKnnModel({ neighbors: 10, shrink: 0, weighting: { recencyDecay: 0.5, confidence: 'none' } });
  recent.fit(RECENT, () => {});
  const c = Math.round((2 / Math.sqrt(6)) * 1e4) / 1e4;
  const d = Math.round((2 / Math.sqrt(8)) * 1e4) / 1e4;
  // a and b (seen, masked by the runner) are each other's neighbours through u: cos = 1/√12.
  const unseen = (m: ItemKnnModel): { c: number; d: number } => {
    const s = scoresOf(m, RECENT, 'u');
    return { c: s.c, d: s.d };
  };
  assert.deepEqual(unseen(plain), { c, d });
  assert.deepEqual(unseen(recent), { c: Math.round((1 / Math.sqrt(6)) * 1e4) / 1e4, d });
  assert.equal((await evaluateModel(plain, RECENT, { k: 1, data: 'tiny' })).hr, 0);
  assert.equal((await evaluateModel(recent, RECENT, { k: 1, data: 'tiny' })).hr, 1);
});

test('registry: itemknn takes recency and confidence from its spec; plain history otherwise', async () => {
  // The CLI always passes the global defaults (recency 0.5); itemknn keeps the plain history then.
  const flags = { recency: '0.5', confidence: 'none' };
  const [plainPlan, recentPlan, logPlan] = planModels('itemknn,itemknn:recency=0.5,itemknn:confidence=log', flags);
  assert.deepEqual([plainPlan.params.recency, plainPlan.params.confidence], [1, 'none']);
  assert.deepEqual([recentPlan.label, recentPlan.params.recency, recentPlan.params.confidence], ['itemknn:recency=0.5', 0.5, 'none']);
  assert.equal(logPlan.params.confidence, 'log');
  // A global --recency other than the default does not reach itemknn either; ease still takes it.
  const [knn, ease] = planModels('itemknn,ease', { recency: '0.3' });
  assert.equal(knn.params.recency, 1);
  assert.equal(ease.params.recency, 0.3);
  const hr = async (spec: string): Promise<number> => {
    const [plan] = planModels(spec, flags);
    return (await evaluateModel(MODELS[plan.name].create(plan.params, 1), RECENT, { k: 1, data: 'tiny' })).hr;
  };
  assert.equal(await hr('itemknn'), 0);
  assert.equal(await hr('itemknn:recency=0.5'), 1);
  // Same parsing as ease: (0, 1] and none|log|weight, the spec named in the error.
  for (const bad of ['itemknn:recency=0', 'itemknn:recency=1.5', 'itemknn:recency=', 'itemknn:confidence=sqrt']) {
    assert.throws(() => planModels(bad, flags), (e: unknown) => isValidationError(e) && e.field === `--models ${bad}`, bad);
  }
});
