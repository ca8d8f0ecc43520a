/**
 * The neighbour builder on catalogs larger than its exact solve (`denseMax`, `--dense-max`): below
 * the threshold the table is the exact one, byte for byte; above it the dense-head build
 * (build-neighbors-large.ts) is checked against hand-computed weights, a plain dense reference of
 * its formulas, and the table's properties; and what it cannot take on is refused by name.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { runNeighbors } from '../../src/eval/neighbors-command.js';
import { isValidationError } from '../../src/errors.js';
import { buildNeighborTable, DEFAULT_DENSE_MAX, MAX_DENSE_ITEMS, type BuildNeighborOptions } from '../../src/model/build-neighbors.js';
import { MAX_BUILD_WORK } from '../../src/model/build-neighbors-large.js';
import { decodeNeighborTable, encodeNeighborTable } from '../../src/model/neighbors-wire.js';
import type { NeighborTable } from '../../src/model/neighbors.js';
import { Random } from '../../src/model/random.js';
import { planEaseSolve, type UserItemLists } from '../../src/model/sparse-ease.js';

const toLists = (baskets: number[][], nItems: number): UserItemLists => {
  const ptr = [0];
  const items: number[] = [];
  for (const b of baskets) {
    items.push(...b);
    ptr.push(items.length);
  }
  return { ptr: Int32Array.from(ptr), items: Int32Array.from(items), nItems };
};

/** Customers with 1–8 distinct items each, item popularity skewed towards low indices. */
function randomBaskets(seed: number, users: number, nItems: number, maxLen = 8): number[][] {
  const rng = new Random(seed);
  const baskets: number[][] = [];
  for (let u = 0; u < users; u++) {
    const b = new Set<number>();
    const len = 1 + rng.int(maxLen);
    while (b.size < len) b.add(Math.floor(nItems * rng.next() ** 2));
    baskets.push([...b]);
  }
  return baskets;
}

const ids = (n: number) => Array.from({ length: n }, (_, i) => `i${i}`);

/** Row i's published (neighbour, weight) pairs, in slot order. */
const row = (t: NeighborTable, i: number) => {
  const out: Array<[number, number]> = [];
  for (let s = 0; s < t.width; s++) {
    const j = t.index[i * t.width + s]!;
    if (j < 0) break;
    out.push([j, t.weight[i * t.width + s]!]);
  }
  return out;
};

const support = (baskets: number[][], i: number, j: number) => baskets.filter((b) => b.includes(i) && b.includes(j)).length;

describe('buildNeighborTable up to denseMax: the exact table, byte for byte', () => {
  it('gives the same file at the default, at the threshold itself and far above it', () => {
    const n = 80;
    const baskets = randomBaskets(11, 400, n);
    const x = toLists(baskets, n);
    const active = new Set(baskets.flat()).size;
    const file = (o: BuildNeighborOptions) => {
      const { table, report } = buildNeighborTable(x, ids(n), { l2: 50, width: 8, minSupport: 2, ...o });
      return { bytes: encodeNeighborTable(table), report };
    };
    const reference = file({});
    assert.equal(reference.report.method, 'exact');
    assert.equal(reference.report.denseItems, active);
    for (const denseMax of [active, active + 1, MAX_DENSE_ITEMS]) {
      const r = file({ denseMax });
      assert.equal(r.report.method, 'exact', `denseMax ${denseMax}`);
      assert.deepEqual(r.bytes, reference.bytes, `denseMax ${denseMax}`);
      assert.deepEqual(r.report, reference.report);
    }
    // One below: the dense-head build, over the denseMax most-bought items.
    const below = file({ denseMax: active - 1 });
    assert.equal(below.report.method, 'dense-head');
    assert.equal(below.report.denseItems, active - 1);
  });

  it('keeps the exact users × users solve for more items than denseMax when there are few customers', () => {
    // 30 customers, 200 items: the dual solve holds 30² + 30 × 200 numbers, less than 100².
    const n = 200;
    const baskets = randomBaskets(5, 30, n, 12);
    const x = toLists(baskets, n);
    const active = new Set(baskets.flat()).size;
    assert.ok(active > 100);
    const exact = buildNeighborTable(x, ids(n), { l2: 10, width: 4, minSupport: 1 });
    const capped = buildNeighborTable(x, ids(n), { l2: 10, width: 4, minSupport: 1, denseMax: 100 });
    assert.equal(capped.report.method, 'exact');
    assert.deepEqual(encodeNeighborTable(capped.table), encodeNeighborTable(exact.table));
    // Too small even for that: the dense-head build.
    assert.equal(buildNeighborTable(x, ids(n), { l2: 10, width: 4, minSupport: 1, denseMax: 40 }).report.method, 'dense-head');
  });
});

describe('buildNeighborTable above denseMax: EASE over the most-bought items, the rest from their residuals', () => {
  // Four items, six customers: x and y bought together by 4 (x: 4 customers, y: 4), x and z by 1,
  // y and z by 1, z and w by 2 (z: 3, w: 2). λ = 1.
  const baskets = [[0, 1], [0, 1], [0, 1], [0, 1, 2], [2, 3], [2, 3]];
  const x = toLists(baskets, 4);

  it('with no item in the exact solve, every weight is c_ij / (n_i + λ)', () => {
    const { table, report } = buildNeighborTable(x, ['x', 'y', 'z', 'w'], { l2: 1, width: 3, minSupport: 1, denseMax: 0 });
    assert.equal(report.method, 'dense-head');
    assert.equal(report.denseItems, 0);
    const expected = [
      [[1, 4 / 5], [2, 1 / 5]],
      [[0, 4 / 5], [2, 1 / 5]],
      [[3, 2 / 4], [0, 1 / 4], [1, 1 / 4]],
      [[2, 2 / 3]],
    ];
    for (let i = 0; i < 4; i++) {
      const got = row(table, i);
      assert.deepEqual(got.map(([j]) => j), expected[i]!.map(([j]) => j), `row ${i}`);
      got.forEach(([, w], s) => assert.ok(Math.abs(w - expected[i]![s]![1]!) < 1e-6, `row ${i} slot ${s}: ${w}`));
    }
  });

  it('with x in the exact solve: head → tail is β, tail → head and tail → tail are fitted to the head’s residual', () => {
    // Head {x}: P_D = 1 / (4 + 1) = 0.2. β_t[x] = 0.2 · c_xt: y 0.8, z 0.2, w 0.
    //   x → y 0.8, x → z 0.2
    //   y → x = β_y / (P_D · (n_y + λ)) = 0.8 / (0.2 · 5) = 0.8 (EASE's own weight for two items)
    //   y → z = (c_yz − c_zx · β_y) / (n_y + λ) = (1 − 0.8) / 5 = 0.04
    //   z → x = 0.2 / (0.2 · 4) = 0.25;  z → w = (2 − 0) / 4 = 0.5;  z → y = (1 − 4 · 0.2) / 4 = 0.05
    //   w → z = 2 / 3
    const expected = [
      [[1, 0.8], [2, 0.2]],
      [[0, 0.8], [2, 0.04]],
      [[3, 0.5], [0, 0.25], [1, 0.05]],
      [[2, 2 / 3]],
    ];
    const { table, report } = buildNeighborTable(x, ['x', 'y', 'z', 'w'], { l2: 1, width: 3, minSupport: 1, denseMax: 1 });
    assert.equal(report.method, 'dense-head');
    assert.equal(report.denseItems, 1, 'x and y tie at 4 customers: the lower index');
    assert.equal(report.denseShare, 0.308, "x's 4 of the 13 (customer, item) pairs");
    for (let i = 0; i < 4; i++) {
      const got = row(table, i);
      assert.deepEqual(got.map(([j]) => j), expected[i]!.map(([j]) => j), `row ${i}`);
      got.forEach(([, w], s) => assert.ok(Math.abs(w - expected[i]![s]![1]!) < 1e-6, `row ${i} slot ${s}: ${w}`));
    }
    // The floor at 2 customers keeps x–y and z–w; it drops x → z and z → x (and does not weigh
    // the unsupported tail pairs y–z at all).
    const floored = buildNeighborTable(x, ['x', 'y', 'z', 'w'], { l2: 1, width: 3, minSupport: 2, denseMax: 1 });
    assert.deepEqual([0, 1, 2, 3].map((i) => row(floored.table, i).map(([j]) => j)), [[1], [0], [3], [2]]);
    assert.equal(floored.report.droppedForSupport, 2);
    assert.equal(floored.report.pairs, 4);
  });

  it('matches a plain dense computation of the same formulas on a random log', () => {
    const n = 40;
    const M = 12;
    const l2 = 5;
    const baskets = randomBaskets(3, 300, n);
    const { table } = buildNeighborTable(toLists(baskets, n), ids(n), { l2, width: n - 1, minSupport: 2, denseMax: M });
    // Counts, the head (most customers first, ties to the lower index) and P_D by Gauss–Jordan.
    const c = Array.from({ length: n }, () => new Array<number>(n).fill(0));
    for (const b of baskets) for (const i of b) for (const j of b) c[i]![j]!++;
    const pop = (i: number) => c[i]![i]!;
    const head = Array.from({ length: n }, (_, i) => i)
      .filter((i) => pop(i) > 0)
      .sort((a, b) => pop(b) - pop(a) || a - b)
      .slice(0, M);
    const a = head.map((d, r) => [...head.map((e) => c[d]![e]! + (d === e ? l2 : 0)), ...head.map((_, k) => (k === r ? 1 : 0))]);
    for (let col = 0; col < M; col++) {
      const pivot = a[col]![col]!;
      for (let k = 0; k < 2 * M; k++) a[col]![k]! /= pivot;
      for (let r = 0; r < M; r++) {
        if (r === col) continue;
        const f = a[r]![col]!;
        for (let k = 0; k < 2 * M; k++) a[r]![k]! -= f * a[col]![k]!;
      }
    }
    const P = (d: number, e: number) => a[d]![M + e]!;
    const hp = (i: number) => head.indexOf(i);
    const beta = (t: number) => head.map((_, d) => head.reduce((s, e, k) => s + P(d, k) * c[e]![t]!, 0));
    const weight = (i: number, j: number): number => {
      if (hp(i) >= 0 && hp(j) >= 0) return -P(hp(i), hp(j)) / P(hp(j), hp(j));
      if (hp(i) >= 0) return beta(j)[hp(i)]!;
      if (hp(j) >= 0) return beta(i)[hp(j)]! / (P(hp(j), hp(j)) * (pop(i) + l2));
      const predicted = head.reduce((s, e, k) => s + c[j]![e]! * beta(i)[k]!, 0);
      return (c[i]![j]! - predicted) / (pop(i) + l2);
    };
    let compared = 0;
    for (let i = 0; i < n; i++) {
      const want = new Map<number, number>();
      if (pop(i) > 0) for (let j = 0; j < n; j++) if (j !== i && c[i]![j]! >= 2 && weight(i, j) > 0) want.set(j, weight(i, j));
      const got = row(table, i);
      assert.deepEqual(got.map(([j]) => j).sort((p, q) => p - q), [...want.keys()].sort((p, q) => p - q), `row ${i}`);
      for (const [j, w] of got) {
        assert.ok(Math.abs(w - want.get(j)!) <= 1e-6 * Math.max(1, Math.abs(want.get(j)!)), `${i} → ${j}: ${w}, want ${want.get(j)}`);
        compared++;
      }
    }
    assert.ok(compared > 100, `${compared} pairs compared`);
  });

  it('publishes only supported pairs of items bought together, largest weight first, at most `width`, and neighbours for items outside the solve', () => {
    const n = 300;
    const baskets = randomBaskets(17, 2000, n);
    const width = 6;
    const minSupport = 3;
    const { table, report } = buildNeighborTable(toLists(baskets, n), ids(n), { width, minSupport, denseMax: 50 });
    assert.equal(report.method, 'dense-head');
    assert.equal(report.denseItems, 50);
    // The file decodes (no self pair, no duplicate, used slots first, finite weights).
    const t = decodeNeighborTable(encodeNeighborTable(table));
    assert.equal(t.width, width);
    const pop = new Array<number>(n).fill(0);
    for (const b of baskets) for (const i of b) pop[i]!++;
    const headSet = new Set(
      Array.from({ length: n }, (_, i) => i)
        .sort((a, b) => pop[b]! - pop[a]! || a - b)
        .slice(0, 50),
    );
    let tailWithNeighbors = 0;
    let pairs = 0;
    for (let i = 0; i < n; i++) {
      const r = row(t, i);
      assert.ok(r.length <= width);
      for (let s = 0; s < r.length; s++) {
        const [j, w] = r[s]!;
        assert.ok(support(baskets, i, j) >= minSupport, `${i} → ${j} rests on ${support(baskets, i, j)} customers`);
        assert.ok(w > 0, 'positive weights only');
        if (s > 0) assert.ok(r[s - 1]![1] >= w, `row ${i} is sorted`);
      }
      if (!headSet.has(i) && r.length > 0) tailWithNeighbors++;
      pairs += r.length;
    }
    assert.equal(report.pairs, pairs);
    assert.ok(tailWithNeighbors > 150, `${tailWithNeighbors} of the 250 items outside the solve have neighbours`);
    // minSupport 1: still no pair of items nobody bought together.
    const loose = buildNeighborTable(toLists(baskets, n), ids(n), { width, minSupport: 1, denseMax: 50 }).table;
    for (let i = 0; i < n; i++) for (const [j] of row(loose, i)) assert.ok(support(baskets, i, j) >= 1, `${i} → ${j} never bought together`);
  });
});

describe('what the builder refuses', () => {
  it('a denseMax outside 0 … 32,768, naming the memory it would take', () => {
    const x = toLists([[0, 1]], 2);
    for (const denseMax of [-1, 1.5, MAX_DENSE_ITEMS + 1]) {
      assert.throws(
        () => buildNeighborTable(x, ['a', 'b'], { denseMax }),
        (e: unknown) => isValidationError(e) && e.field === 'neighbors.denseMax' && e.message.includes('from 0 to 32,768') && e.message.includes('8.6 GB at 32,768') && e.message.endsWith(`got ${denseMax}`),
      );
    }
    assert.equal(DEFAULT_DENSE_MAX, 4096);
  });

  it('a log whose dense-head build is beyond MAX_BUILD_WORK, naming its size and denseMax', () => {
    // One account holding 320,000 items: every item outside the solve costs denseMax² for β.
    const n = 320_000;
    const whale = { ptr: Int32Array.of(0, n), items: Int32Array.from({ length: n }, (_, i) => i), nItems: n };
    assert.throws(
      () => buildNeighborTable(whale, ids(n), {}),
      (e: unknown) =>
        isValidationError(e) &&
        e.field === 'neighbors.denseMax' &&
        /^neighbors\.denseMax: this log needs about [\d.]+e\+12 multiply-adds with 4,096 items in the exact solve \(.*the largest customer holds 320,000 distinct items\); at most 5e\+12 \(hours on one core\) are taken on: lower --dense-max \(denseMax\), or leave accounts that are not one customer out of the log$/.test(e.message),
    );
    assert.equal(MAX_BUILD_WORK, 5e12);
  });

  it('more items than a neighbour file holds', () => {
    const n = 2_000_001;
    assert.throws(
      () => buildNeighborTable({ ptr: Int32Array.of(0), items: new Int32Array(0), nItems: n }, ids(n), {}),
      (e: unknown) => isValidationError(e) && e.field === 'neighbors.itemIds' && /the log has 2,000,001 items; a neighbour table \(LRN1\) holds at most 2,000,000/.test(e.message),
    );
  });

  it('`localrec neighbors` names --dense-max, for its own range and for the builder’s refusal', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'localrec-nb-scale-'));
    try {
      const io = { stdout: () => {}, stderr: { write: () => true } };
      const base = { format: 'csv', user: 'user', item: 'item', filter: [], out: join(dir, 'n.lrn'), width: '4', l2: '1', minSupport: '1' };
      writeFileSync(join(dir, 'small.csv'), 'user,item\nu1,a\nu1,b\nu2,a\nu2,b\n');
      await assert.rejects(
        runNeighbors({ ...base, data: join(dir, 'small.csv'), denseMax: '40000' }, io),
        (e: unknown) => isValidationError(e) && e.field === '--dense-max' && /^--dense-max: must be a whole number from 0 to 32,768 .*got '40000'$/.test(e.message),
      );
      // 22,001 items bought once each: an exact solve of 22,000 of them is already past the limit.
      writeFileSync(join(dir, 'wide.csv'), ['user,item', ...Array.from({ length: 22_001 }, (_, i) => `u${i},p${i}`)].join('\n'));
      await assert.rejects(
        runNeighbors({ ...base, data: join(dir, 'wide.csv'), denseMax: '22000' }, io),
        (e: unknown) => isValidationError(e) && e.field === '--dense-max' && /^--dense-max: this log needs about 5\.3e\+12 multiply-adds with 22,000 items in the exact solve/.test(e.message),
      );
      // Above the threshold the command says so in its summary.
      const lines: string[] = [];
      const summary = await runNeighbors({ ...base, data: join(dir, 'small.csv'), denseMax: '1' }, { ...io, stdout: (s: string) => lines.push(s) });
      assert.equal(summary.method, 'dense-head');
      assert.equal(JSON.parse(lines[0]!).denseMax, 1);
      assert.equal(JSON.parse(lines[0]!).denseItems, 1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the exact solve takes the other solver when the one auto picks holds too much (stop 32 review)', () => {
  it('150 customers, 190 items, denseMax 200: the dual (cheaper) does not fit, the primal does: exact, as with no limit', () => {
    let s = 12345;
    const r = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
    const n = 190;
    const baskets = Array.from({ length: 150 }, (_, u) => {
      const set = new Set<number>([u % n, (u + 150) % n]);
      while (set.size < 10) set.add(Math.floor(r() ** 2 * n));
      return [...set].sort((a, b) => a - b);
    });
    const lists = toLists(baskets, n);
    assert.equal(planEaseSolve(lists).solver, 'dual', 'auto would pick the dual');
    const ids = Array.from({ length: n }, (_, i) => `i${i}`);
    const limited = buildNeighborTable(lists, ids, { denseMax: 200, minSupport: 1 });
    assert.equal(limited.report.method, 'exact');
    const primal = buildNeighborTable(lists, ids, { denseMax: 4096, minSupport: 1, solver: 'primal' });
    assert.deepEqual(encodeNeighborTable(limited.table), encodeNeighborTable(primal.table), 'the primal exact table');
  });
});
