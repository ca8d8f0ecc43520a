/**
 * Pins the training step's math: one full-batch step of `trainItemTable` on a catalog small enough
 * that every item is a candidate (exact softmax) must equal an Adagrad step on the gradient of the
 * loss written out by hand here, in float64, on every backend the SDK trains with.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '../../src/model/tf.js';
import '@tensorflow/tfjs-backend-wasm';
import { cloneItemTable, createItemTable, type ItemTable } from '../../src/model/item-table.js';
import { trainItemTable, type Sequence } from '../../src/model/train.js';

const cfg = { epochs: 1, batchSize: 256, negatives: 0, learningRate: 0.1, l2: 0.01, maxContext: 2, temperature: 0.5, initialAccumulator: 100, seed: 3 };
// Weights: a zero target weight drops the example; a zero context weight drops that context row
// (and an example with no weighted context teaches nothing);
// maxContext 2 truncates the longer contexts.
const sequences: Sequence[] = [
  { rows: [0, 1, 2, 3], weights: [1, 2, 1, 1] },
  { rows: [4, 2, 5], weights: [1, 0, 3] },
  { rows: [5, 1, 0], weights: [2, 1, 0] },
  { rows: [3, 4], weights: [0, 1] }, // no weighted context: counted in B, but teaches nothing
];

/** The loss of DESIGN.md's sampled softmax, all items as candidates, and its gradient. */
function referenceStep(t: ItemTable): { factors: Float64Array; bias: Float64Array } {
  const n = t.itemIds.length;
  const d = t.dim;
  const v = (r: number, k: number) => t.factors[r * d + k]!;
  const examples: Array<{ ctx: Array<[number, number]>; y: number }> = [];
  for (const s of sequences) {
    for (let pos = 1; pos < s.rows.length; pos++) {
      if (!(s.weights[pos]! > 0)) continue;
      const ctx: Array<[number, number]> = [];
      for (let j = Math.max(0, pos - cfg.maxContext); j < pos; j++) ctx.push([s.rows[j]!, Math.max(0, s.weights[j]!)]);
      const wsum = ctx.reduce((a, [, w]) => a + w, 0);
      examples.push({ ctx: ctx.map(([r, w]) => [r, wsum > 0 ? w / wsum : 0]), y: s.rows[pos]! });
    }
  }
  const B = examples.length;
  const usable = examples.filter((e) => e.ctx.some(([, w]) => w > 0)).length;
  const gF = new Float64Array(n * d);
  const gB = new Float64Array(n);
  for (const e of examples) {
    if (!e.ctx.some(([, w]) => w > 0)) continue;
    const z = new Float64Array(d);
    for (const [r, w] of e.ctx) for (let k = 0; k < d; k++) z[k] += w * v(r, k);
    const logits = Array.from({ length: n }, (_, j) => {
      let s = t.bias[j]!;
      for (let k = 0; k < d; k++) s += (z[k]! * v(j, k)) / cfg.temperature;
      return s;
    });
    const m = Math.max(...logits);
    const ex = logits.map((l) => Math.exp(l - m));
    const Z = ex.reduce((a, x) => a + x, 0);
    const gz = new Float64Array(d);
    for (let j = 0; j < n; j++) {
      const g = (ex[j]! / Z - (j === e.y ? 1 : 0)) / usable; // dLoss/dlogit_j
      gB[j] += g;
      for (let k = 0; k < d; k++) {
        gF[j * d + k] += (g * z[k]!) / cfg.temperature;
        gz[k] += (g * v(j, k)) / cfg.temperature;
      }
    }
    for (const [r, w] of e.ctx) for (let k = 0; k < d; k++) gF[r * d + k] += w * gz[k]!;
  }
  // L2 on what the step touches: every candidate row once, every weighted context row each time.
  for (let j = 0; j < n; j++) for (let k = 0; k < d; k++) gF[j * d + k] += (2 * cfg.l2 * v(j, k)) / B;
  for (const e of examples) for (const [r, w] of e.ctx) if (w > 0) for (let k = 0; k < d; k++) gF[r * d + k] += (2 * cfg.l2 * v(r, k)) / B;
  const step = (x: number, g: number) => x - (g === 0 ? 0 : (cfg.learningRate * g) / Math.sqrt(cfg.initialAccumulator + g * g));
  return {
    factors: Float64Array.from(t.factors, (x, i) => step(x, gF[i]!)),
    bias: Float64Array.from(t.bias, (x, i) => step(x, gB[i]!)),
  };
}

describe('training step', () => {
  for (const backend of ['cpu', 'wasm']) {
    it(`equals an Adagrad step on the hand-written sampled-softmax gradient (${backend})`, async () => {
      await tf.setBackend(backend);
      const start = createItemTable(['a', 'b', 'c', 'd', 'e', 'f'], 3, { seed: 7, popularity: [5, 1, 3, 0, 2, 9], scale: 0.5 });
      const expected = referenceStep(start);
      const table = cloneItemTable(start);
      const stats = await trainItemTable(table, sequences, cfg);
      assert.equal(stats.steps, 1);
      assert.equal(stats.examples, 6, 'two of eight positions have a zero target weight');
      let moved = 0;
      for (let i = 0; i < table.factors.length; i++) {
        assert.ok(Math.abs(table.factors[i]! - expected.factors[i]!) < 1e-6, `factor ${i}: ${table.factors[i]} vs ${expected.factors[i]}`);
        moved = Math.max(moved, Math.abs(expected.factors[i]! - start.factors[i]!));
      }
      for (let i = 0; i < table.bias.length; i++) {
        assert.ok(Math.abs(table.bias[i]! - expected.bias[i]!) < 1e-6, `bias ${i}: ${table.bias[i]} vs ${expected.bias[i]}`);
      }
      assert.ok(moved > 1e-3, `the step moves the table (${moved}), so the comparison is not vacuous`);
    });
  }
});
