import assert from 'node:assert/strict';
import { test } from 'node:test';
import { solveEaseRows, trainSparseEase } from '../../src/model/sparse-ease.js';
import { pruneRow, scoreSparse, sparseBytesPerItem } from '../../src/model/sparse-item-model.js';
import { invertSpdInPlace } from '../../src/model/sparse-spd-inverse.js';
import { Random } from '../../src/model/random.js';
import { isModelError } from '../../src/errors.js';

/** Textbook Gauss–Jordan inverse, as an independent reference. */
function naiveInverse(a: number[][]): number[][] {
  const n = a.length;
  const m = a.map((r, i) => [...r, ...Array.from({ length: n }, (_, j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < n; c++) {
    const piv = m[c][c];
    for (let j = 0; j < 2 * n; j++) m[c][j] /= piv;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r][c];
      for (let j = 0; j < 2 * n; j++) m[r][j] -= f * m[c][j];
    }
  }
  return m.map((r) => r.slice(n));
}

function randomLists(seed: number, users: number, items: number, density: number) {
  const rng = new Random(seed);
  const ptr = [0];
  const list: number[] = [];
  for (let u = 0; u < users; u++) {
    for (let i = 0; i < items; i++) if (rng.next() < density) list.push(i);
    ptr.push(list.length);
  }
  return { ptr: Int32Array.from(ptr), items: Int32Array.from(list), nItems: items };
}

test('invertSpdInPlace matches a textbook inverse and rejects an indefinite matrix', () => {
  const a = [
    [4, 2, 0.5, 0],
    [2, 5, 1, 1],
    [0.5, 1, 3, 0.2],
    [0, 1, 0.2, 2],
  ];
  const flat = Float64Array.from(a.flat());
  invertSpdInPlace(flat, 4);
  const ref = naiveInverse(a).flat();
  ref.forEach((v, i) => assert.ok(Math.abs(v - flat[i]) < 1e-12, `entry ${i}`));
  assert.throws(() => invertSpdInPlace(Float64Array.of(1, 2, 2, 1), 2), (e: unknown) => isModelError(e) && /positive definite/.test(e.message));
});

test('EASE: primal and dual solves give the same P, equal to (XᵀX + λI)⁻¹', () => {
  for (const [users, items] of [
    [30, 12],
    [8, 20],
  ]) {
    const x = randomLists(users * 7 + items, users, items, 0.3);
    const l2 = 2;
    const g = Array.from({ length: items }, (_, i) => Array.from({ length: items }, (_, j) => (i === j ? l2 : 0)));
    for (let u = 0; u < users; u++) {
      for (let a = x.ptr[u]; a < x.ptr[u + 1]; a++) for (let b = x.ptr[u]; b < x.ptr[u + 1]; b++) g[x.items[a]][x.items[b]] += 1;
    }
    const ref = naiveInverse(g);
    for (const solver of ['primal', 'dual'] as const) {
      let rows = 0;
      solveEaseRows(
        x,
        l2,
        (i, p, diag) => {
          rows++;
          for (let j = 0; j < items; j++) assert.ok(Math.abs(p[j] - ref[i][j]) < 1e-10, `${solver} P[${i}][${j}]`);
          assert.ok(Math.abs(diag[i] - ref[i][i]) < 1e-10);
        },
        { solver },
      );
      const active = new Set(x.items).size;
      assert.equal(rows, active);
    }
  }
});

test('trainSparseEase: row pruning keeps each item’s largest |B[i,j]|, B = −P/diag(P) off the diagonal', () => {
  const x = randomLists(5, 40, 10, 0.35);
  const dense: number[][] = [];
  solveEaseRows(x, 3, (i, p, d) => (dense[i] = [...p].map((v, j) => (i === j ? 0 : -v / d[j]))));
  const m = trainSparseEase(x, { l2: 3, width: 3, prune: 'row' });
  assert.equal(m.orientation, 'out');
  for (let i = 0; i < 10; i++) {
    const expected = dense[i]
      .map((v, j) => ({ v, j }))
      .filter((e) => e.j !== i)
      .sort((a, b) => Math.abs(b.v) - Math.abs(a.v))
      .slice(0, 3);
    assert.deepEqual([...m.index.subarray(i * 3, i * 3 + 3)], expected.map((e) => e.j));
    expected.forEach((e, s) => assert.ok(Math.abs(m.weight[i * 3 + s] - e.v) < 1e-6));
  }
  assert.equal(sparseBytesPerItem(m), 18);
});

test('trainSparseEase: filter sees each dense row before pruning; an entry it zeroes gives its slot to the next', () => {
  const x = randomLists(5, 40, 10, 0.35);
  const all = trainSparseEase(x, { l2: 3, width: 9, prune: 'row' });
  // Each item's strongest neighbour is kept out: the row is then the next three.
  const m = trainSparseEase(x, {
    l2: 3,
    width: 3,
    prune: 'row',
    filter: (i, row) => {
      assert.equal(row.length, 10);
      row[all.index[i * 9]] = 0;
    },
  });
  for (let i = 0; i < 10; i++) assert.deepEqual([...m.index.subarray(i * 3, i * 3 + 3)], [...all.index.subarray(i * 9 + 1, i * 9 + 4)], `item ${i}`);
});

test('pruneRow and scoreSparse in both orientations', () => {
  const idx = new Int32Array(3);
  const w = new Float32Array(3);
  pruneRow(Float64Array.of(0, -3, 1, 2), 0, 3, idx, w, 0);
  assert.deepEqual([...idx], [1, 3, 2]);
  assert.deepEqual([...w], [-3, 2, 1]);
  pruneRow(Float64Array.of(0, -3, 1, 2), 0, 3, idx, w, 0, true);
  assert.deepEqual([...idx], [3, 2, -1]);
  // W = [[0, 2], [3, 0]]: out lists targets of each source, in lists sources of each target.
  const out = { nItems: 2, width: 1, orientation: 'out' as const, index: Int32Array.of(1, 0), weight: Float32Array.of(2, 3) };
  const inn = { nItems: 2, width: 1, orientation: 'in' as const, index: Int32Array.of(1, 0), weight: Float32Array.of(3, 2) };
  const h = { items: [0, 1], weights: [1, 0.5] };
  const a = new Float32Array(2);
  const b = new Float32Array(2);
  const scratch = new Float32Array(2);
  scoreSparse(out, h, a);
  scoreSparse(inn, h, b, scratch);
  assert.deepEqual([...a], [1.5, 2]);
  assert.deepEqual([...b], [1.5, 2]);
  assert.deepEqual([...scratch], [0, 0]);
});
