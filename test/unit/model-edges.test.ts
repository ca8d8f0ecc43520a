/**
 * Edge cases of the model and evaluation code found by review (stop 21): each was a silent wrong
 * result before.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { runInNewContext } from 'node:vm';
import { loadCsv } from '../../src/eval/csv-loader.js';
import { rankMetrics } from '../../src/eval/metrics.js';
import { buildNeighborTable } from '../../src/model/build-neighbors.js';
import { checkItemTable, createItemTable } from '../../src/model/item-table.js';
import { checkNeighborTable, topRows, type NeighborTable } from '../../src/model/neighbors.js';
import { PROBE_MAX_ROWS, selectBackend } from '../../src/model/backend.js';
import { userVector } from '../../src/model/score.js';
import { buildProfile } from '../../src/model/profile.js';
import { cloneItemTable } from '../../src/model/item-table.js';
import { decodeNeighborTable, encodeNeighborTable } from '../../src/model/neighbors-wire.js';
import { emptySparseModel, sparseBytesPerItem } from '../../src/model/sparse-item-model.js';
import { trainItemTable } from '../../src/model/train.js';
import * as tf from '../../src/model/tf.js';

const table = (index: number[], weight: number[], itemIds = ['a', 'b', 'c']): NeighborTable => ({ itemIds, width: 2, index: Int32Array.from(index), weight: Float32Array.from(weight) });

describe('neighbour tables', () => {
  it('one customer counts once towards min-support, however often their lists repeat an item', () => {
    // Customer 0 bought a and b three times each (three orders, not de-duplicated); 1 and 2 bought c and d.
    const lists = { ptr: Int32Array.of(0, 6, 8, 10), items: Int32Array.of(0, 1, 0, 1, 0, 1, 2, 3, 2, 3), nItems: 4 };
    const { report } = buildNeighborTable(lists, ['a', 'b', 'c', 'd'], { l2: 1, width: 2, minSupport: 3 });
    assert.equal(report.pairs, 0, 'no pair has three customers behind it');
    // Two customers with a and b, at support 2: the pair is published.
    const two = { ptr: Int32Array.of(0, 4, 6), items: Int32Array.of(0, 1, 0, 1, 0, 1), nItems: 2 };
    assert.equal(buildNeighborTable(two, ['a', 'b'], { l2: 1, width: 1, minSupport: 2 }).report.pairs, 2);
    assert.throws(() => buildNeighborTable(two, ['a', 'b'], { width: 300 }), /neighbors\.width: must be an integer from 1 to 256, got 300/);
  });

  it('a row listing the same neighbour twice is refused (it would be shown twice and counted twice)', () => {
    assert.throws(() => checkNeighborTable(table([1, 1, 0, -1, 0, -1], [0.5, 0.5, 0.3, 0, 0.2, 0])), /item 0 lists neighbour 1 twice/);
    assert.doesNotThrow(() => checkNeighborTable(table([1, 2, 0, -1, 0, -1], [0.5, 0.5, 0.3, 0, 0.2, 0])));
  });

  it('the file keeps ids that start with U+FEFF, and refuses non-zero reserved bytes', () => {
    const t = table([1, -1, 0, -1, -1, -1], [0.5, 0, 0.5, 0, 0, 0], ['\uFEFFsku1', 'sku2', 'sku1']);
    const bytes = encodeNeighborTable(t);
    assert.deepEqual(decodeNeighborTable(bytes).itemIds, t.itemIds);
    const bad = bytes.slice();
    bad[6] = 0xff;
    assert.throws(() => decodeNeighborTable(bad), /reserved header bytes 6–7 are not zero/);
  });

  it('reports the file size of 65,536 items with 4-byte indices, as the file stores them', () => {
    assert.equal(sparseBytesPerItem(emptySparseModel(65_535, 1, 'out')), 6);
    assert.equal(sparseBytesPerItem(emptySparseModel(65_536, 1, 'out')), 8);
  });
});

describe('training and evaluation', () => {
  it('a non-finite history weight is refused before anything is written to the table', async () => {
    const t = createItemTable(['a', 'b', 'c', 'd'], 4, { seed: 1 });
    const before = t.factors.slice();
    await assert.rejects(trainItemTable(t, [{ rows: [0, 1, 2], weights: [1, Infinity, 1] }], { epochs: 1 }), /sequence 0: weight 1 is Infinity; weights are finite numbers ≥ 0/);
    assert.deepEqual(t.factors, before);
    assert.doesNotThrow(() => checkItemTable(t));
  });

  it('NDCG of an empty list is 0, not NaN', () => {
    assert.deepEqual(rankMetrics([], new Set([7])), { hr: 0, ndcg: 0, recall: 0 });
  });

  it('a CSV weight beyond float32 is refused by cell instead of becoming Infinity', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'model-edges-'));
    try {
      const f = join(dir, 'w.csv');
      writeFileSync(f, 'u,i,w\n1,a,2\n1,b,1e39\n');
      await assert.rejects(loadCsv(f, { user: 'u', item: 'i', weight: 'w' }), /'1e39' is not a finite number \(plain decimals within ±3\.4e38\)/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('training progress', () => {
  it('ends at total even when batches without usable context are skipped', async () => {
    const t = createItemTable(Array.from({ length: 20 }, (_, i) => `p${i}`), 8, { seed: 1 });
    const seen: Array<[number, number]> = [];
    // An item the shopper removed (weight 0: no context for the next one), then four they viewed.
    const st = await trainItemTable(t, [{ rows: [0, 1, 2, 3, 4], weights: [0, 1, 1, 1, 1] }], { epochs: 2, batchSize: 1 }, (p) => seen.push([p.done, p.total]));
    assert.ok(st.steps > 0 && st.steps < seen.at(-1)![1], `${st.steps} steps of ${seen.at(-1)![1]} batches: some were skipped`);
    assert.deepEqual(seen.at(-1), [seen.at(-1)![1], seen.at(-1)![1]], 'the last report is done = total');
    assert.ok(seen.every(([done], i) => i === 0 || done >= seen[i - 1]![0]), 'never goes back');
  });
});

// Found by a review of src/model/ (stop 24).
describe('model inputs a caller can get wrong', () => {
  it('trainItemTable refuses a row outside the table or not a whole number, the first row included', async () => {
    const t = createItemTable(['a', 'b', 'c'], 4, { seed: 1 });
    const before = Array.from(t.factors);
    for (const rows of [[99, 1], [-5, 1], [0, 1.5], [1.5, 0], [0, NaN]]) {
      await assert.rejects(trainItemTable(t, [{ rows, weights: rows.map(() => 1) }], { epochs: 1 }), /is outside the table/, JSON.stringify(rows));
    }
    assert.deepEqual(Array.from(t.factors), before, 'nothing written');
  });

  it('userVector refuses a profile row outside the table instead of returning NaN', () => {
    const t = createItemTable(['a', 'b'], 4, { seed: 1 });
    assert.throws(() => userVector(t, [{ row: 2, weight: 1, action: 'view', lastT: 0 }]), /profile row 2 is outside the table/);
    assert.ok(userVector(t, [{ row: 1, weight: 1, action: 'view', lastT: 0 }]).every(Number.isFinite));
  });

  it('topRows with k = 0 is an empty list', () => {
    assert.deepEqual(topRows(Float32Array.of(1, 2), 0, new Set()), []);
  });

  it('topRows skips NaN scores: they neither take a slot nor break the order', () => {
    assert.deepEqual(topRows(Float32Array.of(3, 2, 1, NaN), 2, new Set()), [{ row: 0, score: 3 }, { row: 1, score: 2 }]);
    assert.deepEqual(topRows([3, NaN, 2, 1], 3, new Set()), [{ row: 0, score: 3 }, { row: 2, score: 2 }, { row: 3, score: 1 }]);
    assert.deepEqual(topRows([NaN, NaN], 2, new Set()), []);
    // ±Infinity are ordered scores, kept.
    assert.deepEqual(topRows([-Infinity, NaN, Infinity], 3, new Set()).map((r) => r.row), [2, 0]);
  });

  it('the backend probe leaves no tensor behind', async () => {
    await selectBackend({ candidates: ['cpu'], probeRows: 100, probeDim: 4 });
    const before = tf.memory().numTensors;
    await selectBackend({ candidates: ['cpu'], probeRows: 100, probeDim: 4 });
    assert.equal(tf.memory().numTensors, before);
  });

  it('the backend probe times at most PROBE_MAX_ROWS rows, whatever the catalog (memory stays bounded)', async () => {
    const dim = 2;
    const peak = async (probeRows: number) => {
      const p = await tf.profile(async () => {
        await selectBackend({ candidates: ['cpu'], probeRows, probeDim: dim });
      });
      return p.peakBytes;
    };
    const capped = await peak(PROBE_MAX_ROWS);
    // A catalog four times the cap: its whole table (8 MB here) is never made.
    const big = await peak(4 * PROBE_MAX_ROWS);
    assert.ok(capped >= PROBE_MAX_ROWS * dim * 4, `${capped} bytes at the cap: the table is timed`);
    assert.equal(big, capped);
    assert.ok((await peak(1000)) < capped, 'a small catalog is timed at its own size');
  });

  it('decodeNeighborTable: null is a ValidationError; a buffer of another realm decodes', () => {
    assert.throws(() => decodeNeighborTable(null as never), (e: unknown) => e instanceof Error && e.name === 'ValidationError' && /must be an ArrayBuffer or a typed array/.test(e.message));
    const bytes = encodeNeighborTable(table([1, 2, 0, 2, 0, 1], [0.5, 0.25, 0.5, 0.25, 0.5, 0.25]));
    const foreign = runInNewContext('new ArrayBuffer(n)', { n: bytes.byteLength }) as ArrayBuffer;
    new Uint8Array(foreign).set(bytes);
    assert.ok(!(foreign instanceof ArrayBuffer), 'really from another realm');
    assert.deepEqual(decodeNeighborTable(foreign).itemIds, ['a', 'b', 'c']);
  });
});

describe('stop 26 review: reasons and training edges', () => {
  const now = Date.UTC(2026, 0, 10);
  const rows = new Map([['x', 0], ['y', 1], ['z', 2]]);

  it("a profile item's action is what a reason may cite: not an add to cart taken back, nor a low rating; none when nothing is citable", () => {
    const p = buildProfile(
      [
        { t: now - 3000, type: 'view', itemId: 'x' },
        { t: now - 2000, type: 'add_to_cart', itemId: 'x' },
        { t: now - 1000, type: 'remove_from_cart', itemId: 'x' },
        { t: now - 3000, type: 'view', itemId: 'y' },
        { t: now - 2500, type: 'view', itemId: 'y' },
        { t: now - 2000, type: 'rating', itemId: 'y', value: 2 },
        // Out of time order on purpose: the add comes after the removal, so it stands.
        { t: now - 500, type: 'add_to_cart', itemId: 'z' },
        { t: now - 900, type: 'remove_from_cart', itemId: 'z' },
      ],
      rows,
      { halfLifeDays: 30, now },
    );
    const by = new Map(p.map((i) => [i.row, i]));
    assert.equal(by.get(0)!.action, 'view');
    assert.ok(by.get(0)!.weight > 0);
    assert.equal(by.get(1)!.action, 'view');
    assert.equal(by.get(2)!.action, 'add_to_cart');
    // A rating revised down: neither rating is cited, whichever came first.
    const revised = buildProfile(
      [
        { t: now - 3000, type: 'rating', itemId: 'x', value: 4 },
        { t: now - 1000, type: 'rating', itemId: 'x', value: 1 },
        { t: now - 3000, type: 'rating', itemId: 'y', value: 1 },
        { t: now - 1000, type: 'rating', itemId: 'y', value: 5 },
      ],
      rows,
      { halfLifeDays: 30, now },
    );
    assert.equal(revised.find((i) => i.row === 0)?.action, undefined, 'x: 4 stars, then 1');
    assert.equal(revised.find((i) => i.row === 1)?.action, 'rating', 'y: 1 star, then 5');
    const only = buildProfile([{ t: now - 10, type: 'add_to_cart', itemId: 'x' }, { t: now - 5, type: 'remove_from_cart', itemId: 'x' }, { t: now, type: 'add_to_cart', itemId: 'y' }, { t: now + 1, type: 'remove_from_cart', itemId: 'y' }, { t: now, type: 'add_to_cart', itemId: 'y' }], rows, { halfLifeDays: 30, now });
    assert.equal(only.find((i) => i.row === 0)!.action, undefined, 'nothing citable on x');
  });

  it('a one-item catalog trains to nothing instead of a raw tfjs error', async () => {
    const t = createItemTable(['only'], 4, { seed: 1 });
    const before = cloneItemTable(t);
    const s = await trainItemTable(t, [{ rows: [0, 0, 0], weights: [1, 1, 1] }], { epochs: 2 });
    assert.deepEqual([s.steps, s.examples, s.touchedRows], [0, 2, 0]);
    assert.deepEqual(t, before);
  });

  it('history weights are scale-free up to float64: 1e39 (beyond float32) trains as 1 does', async () => {
    const base = createItemTable(['a', 'b', 'c'], 4, { seed: 1 });
    const trained = async (w: number) => {
      const t = cloneItemTable(base);
      await trainItemTable(t, [{ rows: [0, 1, 2], weights: [w, w, w] }], { epochs: 1 });
      return t;
    };
    const one = await trained(1);
    for (const w of [1e30, 1e39]) assert.deepEqual(await trained(w), one, `weight ${w}`);
  });

  it('trainItemTable refuses optimizer state of another size, and a malformed table, before writing anything', async () => {
    const t = createItemTable(['a', 'b', 'c'], 4, { seed: 1 });
    const before = cloneItemTable(t);
    const seqs = [{ rows: [0, 1, 2], weights: [1, 1, 1] }];
    // Accumulators for one row of a three-row table: rows 1 and 2 used to get NaN written into them.
    const short = { factors: new Float32Array(4).fill(1e-6), bias: new Float32Array(1).fill(1e-6) };
    await assert.rejects(trainItemTable(t, seqs, { epochs: 1 }, undefined, short), /optimizer state does not fit the table: 4 factor and 1 bias accumulators for 12 factors and 3 biases/);
    const longBias = { factors: new Float32Array(12).fill(1e-6), bias: new Float32Array(4).fill(1e-6) };
    await assert.rejects(trainItemTable(t, seqs, { epochs: 1 }, undefined, longBias), /optimizer state does not fit the table/);
    assert.deepEqual(t, before, 'nothing written');
    await assert.rejects(trainItemTable({ ...t, bias: new Float32Array(2) }, seqs, { epochs: 1 }), /item table: bias has 2 values, expected 3/);
    const nan = cloneItemTable(t);
    nan.factors[5] = NaN;
    await assert.rejects(trainItemTable(nan, seqs, { epochs: 1 }), /item table: factor 5 is not finite/);
    // State that fits trains, and stays finite.
    const fits = { factors: new Float32Array(12).fill(1e-6), bias: new Float32Array(3).fill(1e-6) };
    await trainItemTable(t, seqs, { epochs: 1 }, undefined, fits);
    assert.ok(t.factors.every(Number.isFinite) && t.bias.every(Number.isFinite));
  });

  it('touchedRows counts only rows that moved (a weight-0 context row does not)', async () => {
    const big = createItemTable(Array.from({ length: 1000 }, (_, i) => `i${i}`), 4, { seed: 1 });
    const t = cloneItemTable(big);
    const s = await trainItemTable(t, [{ rows: [5, 6, 7], weights: [0, 1, 1] }], { epochs: 1, negatives: 0, l2: 0 });
    let changed = 0;
    for (let r = 0; r < 1000; r++) {
      let moved = t.bias[r] !== big.bias[r];
      for (let k = 0; k < 4; k++) moved ||= t.factors[r * 4 + k] !== big.factors[r * 4 + k];
      if (moved) changed++;
    }
    assert.equal(s.touchedRows, changed);
    assert.deepEqual(t.factors.subarray(20, 24), big.factors.subarray(20, 24), 'row 5 (weight 0) did not move');
  });
});
