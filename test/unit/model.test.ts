import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '../../src/model/tf.js';
import '@tensorflow/tfjs-backend-wasm';
import { createItemTable, cloneItemTable } from '../../src/model/item-table.js';
import { buildProfile, eventConfidence } from '../../src/model/profile.js';
import { contributions, Scorer, userVector } from '../../src/model/score.js';
import { trainItemTable } from '../../src/model/train.js';
import { selectBackend } from '../../src/model/backend.js';
import { ValidationError } from '../../src/errors.js';
import type { StoredEvent } from '../../src/types.js';

const ids = Array.from({ length: 40 }, (_, i) => `i${i}`);
const rows = new Map(ids.map((id, i) => [id, i]));
const now = Date.UTC(2026, 0, 10);
const DAY = 86_400_000;

// Two tastes: shoppers who buy even items and shoppers who buy odd ones.
function tasteSequences(count: number): Array<{ rows: number[]; weights: number[] }> {
  const out = [];
  for (let u = 0; u < count; u++) {
    const parity = u % 2;
    const r = Array.from({ length: 6 }, (_, k) => ((u * 7 + k * 2) % 40) - (((u * 7 + k * 2) % 40) % 2) + parity);
    out.push({ rows: [...new Set(r)], weights: [...new Set(r)].map(() => 1) });
  }
  return out;
}

before(async () => {
  await tf.setBackend('cpu');
});

describe('profile', () => {
  it('weights purchases over carts over views, decays with age, and saturates repeats', () => {
    const ev = (type: StoredEvent['type'], itemId: string, t = now, extra: Partial<StoredEvent> = {}): StoredEvent => ({ type, itemId, t, ...extra });
    assert.ok(eventConfidence(ev('purchase', 'a')) > eventConfidence(ev('add_to_cart', 'a')));
    assert.ok(eventConfidence(ev('add_to_cart', 'a')) > eventConfidence(ev('view', 'a')));
    assert.ok(eventConfidence(ev('remove_from_cart', 'a')) < 0);
    assert.ok(eventConfidence(ev('rating', 'a', now, { value: 1 })) < 0);
    const p = buildProfile(
      [ev('view', 'i1', now - 60 * DAY), ev('view', 'i2'), ...Array.from({ length: 20 }, () => ev('view', 'i3')), ev('purchase', 'i4'), ev('view', 'nope')],
      rows,
      { halfLifeDays: 30, now },
    );
    const w = Object.fromEntries(p.map((x) => [ids[x.row], x.weight]));
    assert.equal(p.length, 4, 'items outside the catalog are skipped');
    assert.ok(Math.abs(w.i1! - Math.log1p(0.25)) < 1e-9, 'two half-lives: a quarter');
    assert.ok(w.i3! < 20 * w.i2! / 4, 'twenty views count for much less than twenty');
    assert.equal(p.find((x) => ids[x.row] === 'i4')!.action, 'purchase');
    const removed = buildProfile([ev('add_to_cart', 'i5'), ev('remove_from_cart', 'i5'), ev('remove_from_cart', 'i5')], rows, { halfLifeDays: 30, now });
    assert.equal(removed[0]!.weight, 0, 'added then removed twice: no confidence left');
  });
});

describe('profile session decay', () => {
  it('weights an item by sessionDecay per later session (sessions = bursts 30+ minutes apart)', () => {
    const min = 60_000;
    const evs: StoredEvent[] = [
      { type: 'view', itemId: 'i1', t: now - 300 * min }, // session 2 back
      { type: 'view', itemId: 'i2', t: now - 100 * min }, // session 1 back
      { type: 'view', itemId: 'i3', t: now - 10 * min }, // current session
      { type: 'view', itemId: 'i4', t: now - 5 * min }, // current session (5 minutes after i3)
    ];
    const w = (sessionDecay: number) =>
      Object.fromEntries(buildProfile(evs, rows, { halfLifeDays: 1e9, now, sessionDecay }).map((p) => [ids[p.row], p.weight]));
    const off = w(1);
    const half = w(0.5);
    assert.ok(Math.abs(off.i1! - Math.log1p(1)) < 1e-9 && Math.abs(off.i4! - Math.log1p(1)) < 1e-9, 'off: all equal');
    assert.ok(Math.abs(half.i3! - Math.log1p(1)) < 1e-9 && Math.abs(half.i4! - Math.log1p(1)) < 1e-9, 'current session: full weight');
    assert.ok(Math.abs(half.i2! - Math.log1p(0.5)) < 1e-9, 'one session back: × 0.5');
    assert.ok(Math.abs(half.i1! - Math.log1p(0.25)) < 1e-9, 'two sessions back: × 0.25');
  });

  it('events stamped after now (a clock set back since) count as now: no later session weighs today down (stop 32)', () => {
    const min = 60_000;
    const day = 1440 * min;
    const evs: StoredEvent[] = [
      { type: 'view', itemId: 'i1', t: now + 30 * day }, // stamped a month ahead, before the clock was corrected
      { type: 'view', itemId: 'i2', t: now + 31 * day },
      { type: 'view', itemId: 'i3', t: now - 1 * min }, // what the shopper does now
    ];
    const w = Object.fromEntries(buildProfile(evs, rows, { halfLifeDays: 1e9, now, sessionDecay: 0.5, stepDecay: 0.9 }).map((p) => [ids[p.row], p.weight]));
    assert.ok(Math.abs(w.i3! - Math.log1p(0.9)) < 1e-9, `now's view: one moment back (the two ahead count as now), no session back: ${w.i3}`);
    assert.ok(Math.abs(w.i1! - Math.log1p(1)) < 1e-9 && Math.abs(w.i2! - Math.log1p(1)) < 1e-9, 'those ahead: the current moment');
  });

  it('offers shown and searches without an item neither start a session nor count as a later moment', () => {
    const min = 60_000;
    const views: StoredEvent[] = [
      { type: 'view', itemId: 'i1', t: now - 100 * min },
      { type: 'view', itemId: 'i2', t: now - 80 * min },
    ];
    // 40 minutes after the views (a session apart), and later moments.
    const noise: StoredEvent[] = [
      { type: 'offer_impression', offerId: 'o1', t: now - 40 * min },
      { type: 'search', query: 'mugs', t: now - 30 * min },
      { type: 'offer_impression', offerId: 'o1', t: now - 1 * min },
    ];
    const w = (evs: StoredEvent[]) => buildProfile(evs, rows, { halfLifeDays: 1e9, now, sessionDecay: 0.5, stepDecay: 0.9 }).map((p) => [ids[p.row], p.weight]);
    assert.deepEqual(w([...views, ...noise]), w(views));
  });
});

describe('training', () => {
  it('lowers the loss and touches only the rows it needs', async () => {
    const big = Array.from({ length: 2000 }, (_, i) => `b${i}`);
    const table = createItemTable(big, 8, { seed: 3 });
    const before = cloneItemTable(table);
    const seqs = [{ rows: [1, 3, 5], weights: [1, 1, 1] }];
    const stats = await trainItemTable(table, seqs, { epochs: 10, negatives: 4, batchSize: 8 });
    assert.ok(stats.lastLoss < stats.firstLoss, `${stats.firstLoss} → ${stats.lastLoss}`);
    let unchanged = 0;
    for (let r = 0; r < big.length; r++) {
      const same = table.factors.subarray(r * 8, r * 8 + 8).every((v, k) => v === before.factors[r * 8 + k]);
      if (same && table.bias[r] === before.bias[r]) unchanged++;
    }
    assert.equal(unchanged, big.length - stats.touchedRows, 'touchedRows counts exactly the rows that changed');
    // Rows 1, 3, 5 plus 64-wide candidate sets over 10 steps: far fewer than the whole table.
    assert.ok(stats.touchedRows >= 3 && stats.touchedRows < big.length, `touched ${stats.touchedRows}`);
  });

  it('uses every item as a candidate when the catalog is smaller than a candidate set', async () => {
    const table = createItemTable(ids, 8, { seed: 3 });
    const stats = await trainItemTable(table, [{ rows: [1, 3, 5], weights: [1, 1, 1] }], { epochs: 5, negatives: 300 });
    assert.equal(stats.touchedRows, ids.length);
    assert.ok(stats.lastLoss < stats.firstLoss);
  });

  it('learns two tastes: an even shopper gets even items, an odd shopper odd ones', async () => {
    const table = createItemTable(ids, 8, { seed: 1 });
    await trainItemTable(table, tasteSequences(80), { epochs: 20, negatives: 16, batchSize: 64, learningRate: 0.2 });
    const scorer = new Scorer(table);
    for (const parity of [0, 1]) {
      const hist = [0, 2, 4].map((r) => r + parity);
      const z = userVector(table, hist.map((row) => ({ row, weight: 1, action: 'view' as const, lastT: now })));
      const top = await scorer.topK(z, 5, new Set(hist));
      assert.equal(top.length, 5);
      for (const s of top) assert.ok(!hist.includes(s.row), 'excluded rows never come back');
      const same = top.filter((s) => s.row % 2 === parity).length;
      assert.ok(same >= 4, `parity ${parity}: ${same}/5 of the same taste`);
    }
    scorer.dispose();
  });

  it('gives the same weights on the cpu and wasm backends', async () => {
    const run = async (backend: string) => {
      await tf.setBackend(backend);
      const table = createItemTable(ids, 8, { seed: 2 });
      await trainItemTable(table, tasteSequences(20), { epochs: 3, negatives: 8, batchSize: 16 });
      return table;
    };
    const a = await run('cpu');
    const b = await run('wasm');
    await tf.setBackend('cpu');
    let maxDiff = 0;
    for (let i = 0; i < a.factors.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a.factors[i]! - b.factors[i]!));
    assert.ok(maxDiff < 1e-4, `max difference ${maxDiff}`);
  });

  it('refuses bad settings and bad rows with errors that name them', async () => {
    const table = createItemTable(ids, 8);
    await assert.rejects(trainItemTable(table, [], { epochs: 0 }), /train\.epochs/);
    await assert.rejects(trainItemTable(table, [], { learningRate: -1 }), /train\.learningRate/);
    await assert.rejects(trainItemTable(table, [{ rows: [0, 99], weights: [1, 1] }]), /row 99 is outside/);
    await assert.rejects(trainItemTable(table, [], { initialAccumulator: 0 }), /train\.initialAccumulator/);
  });

  it('initialAccumulator: tiny moves the first step by about ±learningRate per coordinate, large makes it proportional to the gradient', async () => {
    const step = async (initialAccumulator: number) => {
      const t = createItemTable(ids, 8, { seed: 5 });
      const before = t.factors.slice();
      await trainItemTable(t, [{ rows: [0, 1, 2], weights: [1, 1, 1] }], { epochs: 1, negatives: 4, batchSize: 8, learningRate: 0.1, initialAccumulator, seed: 2 });
      const moves = Array.from(t.factors, (v, i) => Math.abs(v - before[i]!)).filter((m) => m > 0);
      return { max: Math.max(...moves), min: Math.min(...moves), nearLr: moves.filter((m) => m > 0.05).length / moves.length };
    };
    const signLike = await step(1e-6);
    // One step: |Δ| = lr·|g|/√(g² + a) → ≈ lr for the coordinates with |g| ≫ √a (most of them) when a is tiny.
    assert.ok(signLike.nearLr > 0.5 && signLike.max <= 0.1 + 1e-6, JSON.stringify(signLike));
    const proportional = await step(100);
    assert.ok(proportional.nearLr === 0 && proportional.max < 0.01 && proportional.max / proportional.min > 10, JSON.stringify(proportional));
  });
});

describe('scoring', () => {
  it('ranks by bias when the shopper has no history (cold start = popularity)', async () => {
    const table = createItemTable(ids, 8, { popularity: ids.map((_, i) => 40 - i) });
    const s = new Scorer(table);
    const top = await s.topK(new Float32Array(8), 3, new Set([0]));
    assert.deepEqual(top.map((x) => x.row), [1, 2, 3]);
    s.dispose();
  });

  it('filters to allowed rows and finds similar items by cosine', async () => {
    const table = createItemTable(['a', 'b', 'c', 'd'], 2);
    table.factors.set([1, 0, 0.9, 0.1, 0, 1, -1, 0]);
    table.bias.fill(0);
    const s = new Scorer(table);
    assert.deepEqual((await s.similar(0, 2)).map((x) => x.row), [1, 2]);
    const onlyOdd = await s.topK(new Float32Array([1, 0]), 4, new Set(), { key: 'odd', rows: () => [1, 3] });
    assert.deepEqual(onlyOdd.map((x) => x.row), [1, 3]);
    s.dispose();
  });

  it('explains a score by the history items that contributed most', () => {
    const table = createItemTable(['a', 'b', 'c'], 2);
    table.factors.set([1, 0, 0, 1, 1, 0.2]);
    const prof = [
      { row: 0, weight: 1, action: 'view' as const, lastT: 0 },
      { row: 1, weight: 1, action: 'purchase' as const, lastT: 0 },
    ];
    const c = contributions(table, prof, 2);
    assert.equal(c[0]!.item.row, 0);
    assert.ok(Math.abs(c[0]!.value - 1) < 1e-6 && Math.abs(c[1]!.value - 0.2) < 1e-6);
  });
});

describe('backend selection', () => {
  it('probes the registered backends and picks a measured one; honours a forced one', async () => {
    const probed = await selectBackend({ candidates: ['wasm', 'cpu'], probeRows: 2000, probeDim: 8 });
    assert.ok(['wasm', 'cpu'].includes(probed.backend));
    assert.match(probed.reason, /^probed: /);
    assert.equal(Object.keys(probed.timings).length, 2);
    const forced = await selectBackend({ force: 'cpu' });
    assert.deepEqual([forced.backend, forced.reason, tf.getBackend()], ['cpu', 'forced', 'cpu']);
    await assert.rejects(selectBackend({ force: 'tpu' as never }), /options\.backend: must be one of/);
    await assert.rejects(selectBackend({ force: 'webgpu' }), /not available/);
  });

  it('probes the shape it is given, a catalog smaller than top-10 too; refuses a shape that is not one', async () => {
    // The engine probes its own catalog (items × (dim + 1)): three items must not make topk(10) fail
    // on every backend and read as "no backend could start".
    const tiny = await selectBackend({ candidates: ['wasm', 'cpu'], probeRows: 3, probeDim: 5 });
    assert.ok(['wasm', 'cpu'].includes(tiny.backend));
    assert.equal(Object.keys(tiny.timings).length, 2);
    await assert.rejects(selectBackend({ candidates: ['cpu'], probeRows: 0 }), (e: unknown) => e instanceof ValidationError && /probeRows: must be a whole number ≥ 1, got 0/.test(e.message));
    await assert.rejects(selectBackend({ candidates: ['cpu'], probeDim: 2.5 }), (e: unknown) => e instanceof ValidationError && /probeDim/.test(e.message));
  });
});
