import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MetricsAccumulator, rankMetrics } from '../../src/eval/metrics.js';
import { topK } from '../../src/eval/top-k.js';

const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} ≠ ${b}`);

test('rankMetrics: one held-out item at rank 1, 3, and missing', () => {
  assert.deepEqual(rankMetrics([4, 5, 6], new Set([4])), { hr: 1, ndcg: 1, recall: 1 });
  const m = rankMetrics([4, 5, 6], new Set([6]));
  assert.equal(m.hr, 1);
  close(m.ndcg, 1 / Math.log2(4)); // 0.5
  assert.deepEqual(rankMetrics([4, 5, 6], new Set([7])), { hr: 0, ndcg: 0, recall: 0 });
});

test('rankMetrics: several held-out items', () => {
  // Hits at ranks 2 and 3 of 3 held items; ideal DCG puts hits at ranks 1..3.
  const m = rankMetrics([1, 2, 3], new Set([2, 3, 9]));
  const dcg = 1 / Math.log2(3) + 1 / Math.log2(4);
  const idcg = 1 + 1 / Math.log2(3) + 1 / Math.log2(4);
  close(m.ndcg, dcg / idcg);
  close(m.recall, 2 / 3);
  assert.equal(m.hr, 1);
  // More held items than k: ideal DCG is over k positions only, so a full list of hits scores 1.
  close(rankMetrics([1, 2], new Set([1, 2, 3, 4])).ndcg, 1);
  // A list shorter than k (few rankable items) is not a smaller ideal: @10, one hit at rank 1 of 3 held.
  close(rankMetrics([1], new Set([1, 2, 3]), 10).ndcg, 1 / (1 + 1 / Math.log2(3) + 1 / Math.log2(4)));
});

test('MetricsAccumulator averages over users and measures catalog coverage', () => {
  const acc = new MetricsAccumulator(10);
  acc.add([0, 1], new Set([0]));
  acc.add([1, 2], new Set([5]));
  const r = acc.result();
  assert.equal(acc.users, 2);
  close(r.hr, 0.5);
  close(r.ndcg, 0.5);
  close(r.coverage, 3 / 10);
});

test('topK: best first, ties to the lower index, skips -Infinity and NaN', () => {
  assert.deepEqual([...topK(new Float32Array([0.1, 0.9, -Infinity, 0.5]), 2)], [1, 3]);
  assert.deepEqual([...topK(new Float32Array([1, 2, 2, 2, 0]), 3)], [1, 2, 3]);
  assert.deepEqual([...topK(new Float32Array([Number.NaN, -Infinity, 3]), 5)], [2]);
  // Agrees with a full sort on random data.
  const s = new Float32Array(500).map((_, i) => Math.sin(i * 12.9898) * 43758.5453 % 1);
  const expected = [...s.keys()].sort((a, b) => s[b] - s[a] || a - b).slice(0, 20);
  assert.deepEqual([...topK(s, 20)], expected);
});

// Every other case holds out at most k items: dividing by min(|held|, k) would pass them all
// (a mutation-testing review, stop 35).
test('Recall@k is hits / |held| also when more items are held out than the list can hold', () => {
  const m = rankMetrics([1, 2], new Set([1, 2, 3, 4]), 2);
  assert.equal(m.recall, 0.5);
  assert.equal(m.hr, 1);
  assert.equal(m.ndcg, 1); // ideal DCG over min(|held|, k) = 2 positions: a perfect list
  const acc = new MetricsAccumulator(10, 2);
  acc.add([1, 2], new Set([1, 2, 3, 4]));
  assert.equal(acc.result().recall, 0.5);
});
