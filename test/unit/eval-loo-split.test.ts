import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventLogBuilder } from '../../src/eval/event-log.js';
import { looSplit } from '../../src/eval/loo-split.js';
import type { Split } from '../../src/eval/split.js';
import { usersByItem } from '../../src/eval/split.js';

function log(rows: Array<[string, string, number, number?]>) {
  const b = new EventLogBuilder();
  for (const [u, i, t, w] of rows) b.push(u, i, t, w ?? 1);
  return b.build();
}
const trainOf = (s: Split, user: string) => {
  const u = s.userIds.indexOf(user);
  const a = s.train.ptr[u];
  const b = s.train.ptr[u + 1];
  return {
    items: [...s.train.items.subarray(a, b)].map((i) => s.itemIds[i]),
    count: [...s.train.count.subarray(a, b)],
    weight: [...s.train.weight.subarray(a, b)],
    recency: [...s.train.recency.subarray(a, b)],
  };
};
const testOf = (s: Split, user: string) => {
  const u = s.userIds.indexOf(user);
  return [...s.test.items.subarray(s.test.ptr[u], s.test.ptr[u + 1])].map((i) => s.itemIds[i]);
};

const ROWS: Array<[string, string, number, number?]> = [
  ['u1', 'a', 10, 2],
  ['u1', 'b', 10],
  ['u1', 'c', 20],
  ['u2', 'x', 5],
  ['u2', 'y', 5],
  ['u1', 'a', 30, 5], // after the held-out item: must not reach training
  ['u1', 'd', 25],
  ['u3', 'q', 7],
  ['u3', 'p', 7],
  ['u3', 'r', 7],
  ['u3', 'q', 7, 4],
];

test('loo: sorts by time, holds out the last new item, trains only on what came before it', () => {
  const s = looSplit(log(ROWS));
  assert.deepEqual(testOf(s, 'u1'), ['d']);
  const u1 = trainOf(s, 'u1');
  assert.deepEqual(u1.items, ['a', 'b', 'c']);
  assert.deepEqual(u1.count, [1, 1, 1]);
  assert.deepEqual(u1.weight, [2, 1, 1]);
  // Training times 10, 10, 20: a and b are one step back, c is the latest.
  assert.deepEqual(u1.recency, [1, 1, 0]);
});

test('loo: equal timestamps keep file order; fewer than 3 distinct items means no test', () => {
  const s = looSplit(log(ROWS));
  assert.deepEqual(testOf(s, 'u3'), ['r']);
  // The repeat of q comes after r in file order, so it is the held-out item's future: left out.
  assert.deepEqual(trainOf(s, 'u3'), { items: ['q', 'p'], count: [1, 1], weight: [1, 1], recency: [0, 0] });
  assert.deepEqual(testOf(s, 'u2'), []);
  assert.deepEqual(trainOf(s, 'u2').items, ['x', 'y']);
  assert.deepEqual([...s.testUsers].map((u) => s.userIds[u]), ['u1', 'u3']);
});

test('loo without a time column: the file position orders the history, one step per row (recency too)', () => {
  const s = looSplit(log([['u', 'a', 0], ['u', 'b', 0], ['u', 'c', 0], ['u', 'd', 0], ['u', 'e', 0]]));
  assert.deepEqual(s.test.items.length, 1);
  assert.equal(s.itemIds[s.test.items[0]!], 'e');
  assert.deepEqual(trainOf(s, 'u').recency, [3, 2, 1, 0], 'a is three rows back, d the latest');
});

test('loo: the result does not depend on how users interleave in the file', () => {
  const shuffled = [ROWS[7], ROWS[0], ROWS[3], ROWS[8], ROWS[1], ROWS[2], ROWS[9], ROWS[4], ROWS[5], ROWS[10], ROWS[6]];
  const a = looSplit(log(ROWS));
  const b = looSplit(log(shuffled));
  for (const u of ['u1', 'u2', 'u3']) {
    assert.deepEqual(trainOf(a, u), trainOf(b, u));
    assert.deepEqual(testOf(a, u), testOf(b, u));
  }
});

test('usersByItem is the transpose of the training histories', () => {
  const s = looSplit(log(ROWS));
  const t = usersByItem(s);
  const a = s.itemIds.indexOf('a');
  assert.deepEqual([...t.users.subarray(t.ptr[a], t.ptr[a + 1])].map((u) => s.userIds[u]), ['u1']);
  const d = s.itemIds.indexOf('d');
  assert.equal(t.ptr[d + 1] - t.ptr[d], 0);
  assert.equal(t.users.length, s.train.items.length);
});

test("loo sameTime 'drop': training ends before the held-out item's timestamp; too few earlier items means no test", () => {
  const rows: Array<[string, string, number, number?]> = [
    ['u1', 'a', 1],
    ['u1', 'b', 2],
    ['u1', 'c', 3],
    ['u1', 'd', 3], // held out (last in file order at t = 3); c shares its time
    ['u2', 'x', 1],
    ['u2', 'y', 5],
    ['u2', 'z', 5], // only x precedes t = 5: fewer than 2 earlier items, so u2 is not tested
  ];
  const keep = looSplit(log(rows));
  assert.deepEqual(testOf(keep, 'u1'), ['d']);
  assert.deepEqual(trainOf(keep, 'u1').items, ['a', 'b', 'c'], 'keep: c, at the held-out time, trains');
  assert.deepEqual(testOf(keep, 'u2'), ['z']);

  const drop = looSplit(log(rows), 3, { sameTime: 'drop' });
  assert.deepEqual(testOf(drop, 'u1'), ['d']);
  const u1 = trainOf(drop, 'u1');
  assert.deepEqual(u1.items, ['a', 'b'], 'drop: c is neither trained on nor tested');
  assert.deepEqual(u1.recency, [1, 0]);
  const u1Index = drop.userIds.indexOf('u1');
  assert.deepEqual([...drop.trainEvents.items.subarray(drop.trainEvents.ptr[u1Index], drop.trainEvents.ptr[u1Index + 1])].map((i) => drop.itemIds[i]), ['a', 'b']);
  assert.deepEqual(testOf(drop, 'u2'), []);
  assert.deepEqual(trainOf(drop, 'u2').items, ['x', 'y', 'z'], 'an untested user trains on everything');
  assert.deepEqual([...drop.testUsers].map((u) => drop.userIds[u]), ['u1']);
});

test("loo sameTime 'drop' changes nothing where times are distinct, or absent (file order)", () => {
  const distinct = ROWS.filter((r) => r[0] === 'u1');
  assert.deepEqual(looSplit(log(distinct), 3, { sameTime: 'drop' }), looSplit(log(distinct)));
  const noTime: Array<[string, string, number]> = [['u', 'a', 0], ['u', 'b', 0], ['u', 'c', 0]];
  assert.deepEqual(looSplit(log(noTime), 3, { sameTime: 'drop' }), looSplit(log(noTime)));
  assert.throws(() => looSplit(log(noTime), 3, { sameTime: 'strict' as never }), /sameTime: must be 'keep' or 'drop', got strict/);
});

test('without a time column, a user\'s event times are their own positions, whatever other users\' rows lie between', () => {
  const eventTimes = (s: Split, user: string) => {
    const u = s.userIds.indexOf(user);
    return [...s.trainEvents.time.subarray(s.trainEvents.ptr[u], s.trainEvents.ptr[u + 1])];
  };
  // The same sequence for u1, once with its rows together and once with 2,000 rows of u2 between
  // them: more than the 1,800 s a session gap needs when the file position stood in for time.
  const together: Array<[string, string, number, number?]> = [['u1', 'a', 0], ['u1', 'b', 0], ['u1', 'c', 0], ['u1', 'd', 0]];
  const apart: Array<[string, string, number, number?]> = [['u1', 'a', 0]];
  for (let i = 0; i < 2000; i++) apart.push(['u2', `x${i % 50}`, 0]);
  apart.push(['u1', 'b', 0], ['u1', 'c', 0], ['u1', 'd', 0]);
  const a = looSplit(log(together));
  const b = looSplit(log(apart));
  assert.deepEqual(eventTimes(a, 'u1'), [0, 1, 2]);
  assert.deepEqual(eventTimes(b, 'u1'), [0, 1, 2]);
  assert.deepEqual(trainOf(b, 'u1').recency, [2, 1, 0]);
});
