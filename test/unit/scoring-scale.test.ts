/**
 * The scale fixes to scoring keep its results: the neighbour table's top rows picked with a bounded
 * heap (src/model/neighbors.ts, topReachedRows) against the sort of every reached row it replaces,
 * and similar()'s query row built on the host (src/model/score.ts) against the slice of the
 * normalised table it replaces, on the cpu and wasm backends.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import * as tf from '../../src/model/tf.js';
import '@tensorflow/tfjs-backend-wasm';
import { createItemTable, type ItemTable } from '../../src/model/item-table.js';
import { largestValue, neighborContributions, neighborContributionsOf, rankScores, reachedRows, topReachedRows, type WeightedRow } from '../../src/model/neighbors.js';
import { Random } from '../../src/model/random.js';
import { contributions, contributionsOf, Scorer, topByValue, type Allowed } from '../../src/model/score.js';
import type { SparseItemModel } from '../../src/model/sparse-item-model.js';

/** reachedRows as it was: a Map per call, filled entry by entry. */
function mapReached(m: SparseItemModel, history: readonly WeightedRow[]): Map<number, number> {
  const acc = new Map<number, number>();
  const { width, index, weight } = m;
  for (const h of history) {
    if (!(h.weight > 0)) continue;
    const base = h.row * width;
    for (let k = 0; k < width; k++) {
      const j = index[base + k]!;
      if (j < 0) break;
      acc.set(j, (acc.get(j) ?? 0) + h.weight * weight[base + k]!);
    }
  }
  for (const [j, v] of acc) if (!(v > 0)) acc.delete(j);
  return acc;
}

/** The engine's selection before the heap (engine.ts, recommend()): every reached row, filtered, scaled, rounded, sorted, cut. */
function sortedTop(m: SparseItemModel, history: readonly WeightedRow[], k: number, keep: (row: number) => boolean): Array<{ row: number; score: number }> {
  const scores = mapReached(m, history);
  const top = largestValue(scores);
  return [...scores]
    .filter(([r]) => keep(r))
    .map(([row, v]) => ({ row, score: Math.fround(1 + v / top) }))
    .sort((a, b) => b.score - a.score || a.row - b.row)
    .slice(0, k);
}

/**
 * A random 'out' model of `n` rows, `width` slots: distinct neighbours per row, rows cut short at
 * random. Weights come from a handful of values (some negative, one zero) so that many sums tie
 * exactly; `fine` adds weights that differ below float32's precision once scaled (ties after
 * rounding only).
 */
function randomModel(rng: Random, n: number, width: number, fine: boolean): SparseItemModel {
  const index = new Int32Array(n * width).fill(-1);
  const weight = new Float32Array(n * width);
  const palette = [0.25, 0.5, 1, 1, 2, -0.5, 0];
  for (let i = 0; i < n; i++) {
    // At most n − 1 distinct neighbours (none points to itself).
    const used = Math.min(n - 1, Math.floor(rng.next() * (width + 1)));
    const picked = new Set<number>();
    for (let s = 0; s < used; s++) {
      let j: number;
      do j = Math.floor(rng.next() * n);
      while (j === i || picked.has(j));
      picked.add(j);
      index[i * width + s] = j;
      const w = palette[Math.floor(rng.next() * palette.length)]!;
      weight[i * width + s] = fine && rng.next() < 0.3 ? w * (1 + 1e-9 * Math.floor(rng.next() * 4)) : w;
    }
  }
  return { nItems: n, width, orientation: 'out', index, weight };
}

function randomHistory(rng: Random, n: number, size: number): WeightedRow[] {
  // Repeated rows, zero and negative weights (skipped), weights from a few values (exact ties).
  const ws = [1, 0.5, 2, 0, -1, 0.75, 3];
  return Array.from({ length: size }, () => ({ row: Math.floor(rng.next() * n), weight: ws[Math.floor(rng.next() * ws.length)]! }));
}

describe('neighbour scores: top rows by a bounded heap', () => {
  it('topReachedRows gives exactly the full sort’s rows, scores and tie order (random tables full of ties, any k, with and without a filter)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        fc.integer({ min: 2, max: 120 }),
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 0, max: 40 }),
        fc.integer({ min: 0, max: 150 }),
        fc.boolean(),
        fc.constantFrom('none', 'odd', 'sparse', 'nothing'),
        (seed, n, width, size, k, fine, filter) => {
          const rng = new Random(seed);
          const m = randomModel(rng, n, width, fine);
          const history = randomHistory(rng, n, size);
          const keep = {
            none: () => true,
            odd: (r: number) => r % 2 === 1,
            sparse: (r: number) => r % 7 === 3 || r % 5 === 0,
            nothing: () => false,
          }[filter];
          const want = sortedTop(m, history, k, keep);
          assert.deepEqual(topReachedRows(m, history, k, filter === 'none' ? undefined : keep), want);
          assert.deepEqual(topReachedRows(m, history, k, keep), want);
        },
      ),
      { numRuns: 600 },
    );
  });

  it('ties at the cut break by row, wherever the tied rows sit in the history', () => {
    // Row 0 points to 1..8 with one weight: all eight tie; the top 3 are the lowest rows.
    const width = 8;
    const n = 9;
    const index = new Int32Array(n * width).fill(-1);
    const weight = new Float32Array(n * width);
    [8, 3, 6, 1, 7, 2, 5, 4].forEach((j, s) => {
      index[s] = j;
      weight[s] = 0.5;
    });
    const m: SparseItemModel = { nItems: n, width, orientation: 'out', index, weight };
    assert.deepEqual(topReachedRows(m, [{ row: 0, weight: 1 }], 3), [{ row: 1, score: 2 }, { row: 2, score: 2 }, { row: 3, score: 2 }]);
    assert.deepEqual(topReachedRows(m, [{ row: 0, weight: 1 }], 3, (r) => r !== 2).map((s) => s.row), [1, 3, 4]);
    assert.deepEqual(topReachedRows(m, [{ row: 0, weight: 1 }], 0), []);
    assert.deepEqual(topReachedRows(m, [{ row: 0, weight: 1 }], 0.5), [], 'as slice(0, 0.5)');
    assert.deepEqual(topReachedRows(m, [{ row: 0, weight: 1 }], 2.7).map((s) => s.row), [1, 2], 'as slice(0, 2.7)');
    assert.deepEqual(topReachedRows(m, [{ row: 0, weight: 0 }], 3), []);
  });

  it('reachedRows and rankScores give what the Map-per-call version gave (same sums, same order), and the reused scratch starts clean each call', () => {
    const rng = new Random(11);
    for (let trial = 0; trial < 200; trial++) {
      const n = 2 + Math.floor(rng.next() * 80);
      const m = randomModel(rng, n, 1 + Math.floor(rng.next() * 10), trial % 2 === 0);
      // Several histories on one model: each call must see only its own sums.
      for (let h = 0; h < 3; h++) {
        const history = randomHistory(rng, n, Math.floor(rng.next() * 30));
        const want = mapReached(m, history);
        assert.deepEqual([...reachedRows(m, history)], [...want]);
        const fallback = Float32Array.from({ length: n }, () => rng.next());
        const out = new Float32Array(n);
        rankScores(m, history, fallback, out);
        const ref = new Float32Array(n);
        for (let j = 0; j < n; j++) ref[j] = (0.999 * (fallback[j]! - Math.min(...fallback))) / (Math.max(...fallback) - Math.min(...fallback) || 1);
        const top = largestValue(want);
        for (const [j, v] of want) ref[j] = 1 + v / top;
        assert.deepEqual(out, ref);
      }
    }
  });

  it('history rows outside the model reach nothing (as before: they were dropped)', () => {
    const m = randomModel(new Random(2), 10, 3, false);
    const history = [{ row: 3, weight: 1 }];
    const want = [...reachedRows(m, history)];
    assert.deepEqual([...reachedRows(m, [...history, { row: 10, weight: 1 }, { row: -1, weight: 1 }, { row: 2.5, weight: 1 }])], want);
  });

  it('a heavy shopper on a large table: the heap and the sort agree', () => {
    const rng = new Random(5);
    const n = 20_000;
    const m = randomModel(rng, n, 32, true);
    const history = Array.from({ length: 1500 }, () => ({ row: Math.floor(rng.next() * n), weight: 0.01 + rng.next() }));
    for (const k of [1, 10, 1000]) {
      assert.deepEqual(topReachedRows(m, history, k, (r) => r % 3 !== 0), sortedTop(m, history, k, (r) => r % 3 !== 0));
    }
  });
});

/** similar() as it was: the query row sliced out of the normalised table on the backend. */
async function slicedSimilar(table: ItemTable, row: number, k: number, exclude: ReadonlySet<number>, allowed?: number[]): Promise<Array<{ row: number; score: number }>> {
  const n = table.itemIds.length;
  const d = table.dim;
  const skip = new Set(exclude).add(row);
  const want = Math.min(n, k + skip.size);
  const { values, indices } = tf.tidy(() => {
    const V = tf.tensor2d(table.factors, [n, d]);
    const Vn = tf.div(V, tf.add(tf.norm(V, 'euclidean', 1, true), 1e-8)) as tf.Tensor2D;
    const raw = tf.reshape(tf.matMul(Vn, tf.slice(Vn, [row, 0], [1, d]), false, true), [n]);
    if (!allowed) return tf.topk(raw, want);
    const mask = new Float32Array(n);
    for (const r of allowed) mask[r] = 1;
    return tf.topk(tf.where(tf.cast(tf.tensor1d(mask), 'bool'), raw, tf.fill([n], -1e30)), want);
  });
  const [v, i] = [await values.data(), await indices.data()];
  tf.dispose([values, indices]);
  const out = [];
  for (let j = 0; j < i.length && out.length < k; j++) {
    if (skip.has(i[j]!)) continue;
    if (allowed && v[j]! <= -1e29) break;
    out.push({ row: i[j]!, score: v[j]! });
  }
  return out;
}

describe('similar(): the query row built on the host', () => {
  after(async () => {
    await tf.setBackend('cpu');
  });

  /** A seeded table with a few exact duplicates (ties) and an all-zero row. */
  function seededTable(): ItemTable {
    const ids = Array.from({ length: 500 }, (_, i) => `i${i}`);
    const table = createItemTable(ids, 16, { seed: 7 });
    for (const [dup, of] of [[40, 3], [41, 3], [90, 12]] as const) table.factors.copyWithin(dup * 16, of * 16, of * 16 + 16);
    table.factors.fill(0, 77 * 16, 78 * 16);
    return table;
  }

  for (const backend of ['cpu', 'wasm']) {
    it(`gives the previous method's rows and scores on ${backend} (exact on cpu, within float32 rounding on wasm), with exclude and allowed rows, and leaves no tensor behind`, async () => {
      assert.ok(await tf.setBackend(backend), `${backend} backend`);
      await tf.ready();
      const table = seededTable();
      const s = new Scorer(table);
      try {
        const odd: Allowed = { key: 'odd', rows: () => table.itemIds.map((_, r) => r).filter((r) => r % 2 === 1) };
        const once: Allowed = { rows: () => [3, 40, 41, 12, 90, 5, 6, 7] };
        await s.similar(0, 1); // builds the normalised table (kept)
        const before = tf.memory().numTensors;
        for (const row of [0, 3, 12, 40, 77, 90, 250, 499]) {
          for (const [k, exclude, allowed] of [
            [10, new Set<number>(), undefined],
            [25, new Set([41, 5, 6]), undefined],
            [12, new Set([7]), odd],
            [20, new Set<number>(), once],
          ] as const) {
            const got = await s.similar(row, k, exclude, allowed);
            const want = await slicedSimilar(table, row, k, exclude, allowed ? [...allowed.rows()] : undefined);
            if (backend === 'cpu') {
              assert.deepEqual(got, want, `row ${row}, k ${k}`);
            } else {
              assert.deepEqual(got.map((x) => x.row), want.map((x) => x.row), `row ${row}, k ${k}`);
              for (let j = 0; j < got.length; j++) assert.ok(Math.abs(got[j]!.score - want[j]!.score) <= 1e-6, `row ${row}: ${got[j]!.score} vs ${want[j]!.score}`);
            }
          }
        }
        // The category mask ('odd') is kept by the scorer: one tensor more than before it was made.
        assert.equal(tf.memory().numTensors - before, 1);
        // The duplicates tie with the row they copy: by row, as before.
        const ties = (await s.similar(3, 3)).map((x) => x.row);
        assert.deepEqual(ties, [40, 41, ties[2]]);
        assert.ok(Math.abs((await s.similar(3, 1))[0]!.score - 1) < 1e-6);
      } finally {
        s.dispose();
      }
    });
  }
});

describe('reasons pick their two items in one pass (stop 32)', () => {
  it('topByValue is filter + stable sort + slice, ties to the earlier item, for any n', () => {
    const rng = new Random(9);
    for (let t = 0; t < 500; t++) {
      const items = Array.from({ length: Math.floor(rng.next() * 40) }, (_, i) => ({ i, value: Math.floor(rng.next() * 6) - 2 + (rng.next() < 0.2 ? 0.5 : 0), ok: rng.next() < 0.7 }));
      const n = Math.floor(rng.next() * 5);
      const accept = (x: { ok: boolean; value: number }) => x.ok && x.value > 0;
      const want = items.filter(accept).sort((a, b) => b.value - a.value).slice(0, n);
      assert.deepEqual(topByValue(items, n, accept), want);
    }
  });

  it('the engine reasons cite what contributions() + filter + slice(0, 2) cited (factor model and neighbour table)', () => {
    const rng = new Random(4);
    const table = createItemTable(Array.from({ length: 60 }, (_, i) => `i${i}`), 8, { seed: 3 });
    const profile = Array.from({ length: 40 }, (_, i) => ({ row: i, weight: Math.floor(rng.next() * 4) / 2, action: rng.next() < 0.8 ? ('view' as const) : undefined, lastT: i }));
    for (let row = 40; row < 60; row++) {
      const old = contributions(table, profile, row).filter((c) => c.value > 0 && c.item.action !== undefined).slice(0, 2);
      assert.deepEqual(topByValue(contributionsOf(table, profile, row), 2, (c) => c.value > 0 && c.item.action !== undefined), old);
    }
    const width = 6;
    const index = new Int32Array(60 * width).map(() => Math.floor(rng.next() * 60));
    const weight = new Float32Array(60 * width).map(() => Math.floor(rng.next() * 3) / 2);
    const m = { nItems: 60, width, index, weight } as unknown as Parameters<typeof neighborContributions>[0];
    for (let row = 0; row < 60; row++) {
      const old = neighborContributions(m, profile, row).filter((c) => c.item.action !== undefined).slice(0, 2);
      assert.deepEqual(topByValue(neighborContributionsOf(m, profile, row), 2, (c) => c.item.action !== undefined), old);
    }
  });
});
