import * as tf from './tf.js';
import { AbortError, ModelError, ValidationError } from '../errors.js';
import type { Progress } from '../types.js';
import { checkItemTable, type ItemTable } from './item-table.js';
import { Random } from './random.js';

/** One shopper's history as training data: rows in time order and their confidence weights. */
export interface Sequence {
  rows: ArrayLike<number>;
  weights: ArrayLike<number>;
}

export interface TrainConfig {
  /** Passes over all examples. Default 4. */
  epochs: number;
  /** Examples per step. Default 256. */
  batchSize: number;
  /**
   * Uniformly sampled negatives shared by a step, on top of the other targets in the batch. Default
   * 256. The step's candidates (targets + negatives) are rounded up to a multiple of 256, so that
   * few tensor shapes are compiled: a step may draw more negatives than this, never fewer, except
   * in a catalog smaller than that count, where every item is a candidate.
   */
  negatives: number;
  /** Adagrad learning rate. Default 0.1. */
  learningRate: number;
  /** L2 penalty on the rows a step touches. Default 1e-4. */
  l2: number;
  /** How many earlier items form the context of a target. Default 20. */
  maxContext: number;
  /**
   * Softmax temperature: the context · item dot product is divided by it, the bias is not (logits
   * `z·v / T + b`); the engine's scorer and `localrec eval` score the same way. Default 1.
   */
  temperature: number;
  /**
   * Adagrad's starting accumulator when training starts from a fresh optimizer state. Tiny (the
   * default, 1e-6) makes the first step move every touched coordinate by about ±learningRate; larger
   * values make early steps proportional to the gradient.
   */
  initialAccumulator: number;
  seed: number;
}

/** What training uses where `TrainConfig` leaves a field out (the engine's `options.training` too). */
export const DEFAULT_TRAIN_CONFIG: TrainConfig = {
  epochs: 4,
  batchSize: 256,
  negatives: 256,
  learningRate: 0.1,
  l2: 1e-4,
  maxContext: 20,
  temperature: 1,
  initialAccumulator: 1e-6,
  seed: 1,
};

export interface TrainStats {
  steps: number;
  examples: number;
  firstLoss: number;
  lastLoss: number;
  /** Rows whose factors or bias changed. */
  touchedRows: number;
}

/** Adagrad accumulators, one per factor and bias; keep it across calls to continue training smoothly. */
export interface OptimizerState {
  factors: Float32Array;
  bias: Float32Array;
}

export function createOptimizerState(table: ItemTable, initial = 1e-6): OptimizerState {
  return { factors: new Float32Array(table.factors.length).fill(initial), bias: new Float32Array(table.bias.length).fill(initial) };
}

export function checkTrainConfig(c: Partial<TrainConfig>, prefix = 'train'): TrainConfig {
  const cfg = { ...DEFAULT_TRAIN_CONFIG, ...c };
  const intIn = (k: keyof TrainConfig, min: number, max: number) => {
    const v = cfg[k];
    if (!Number.isInteger(v) || v < min || v > max) throw new ValidationError(`${prefix}.${k}`, `must be a whole number from ${min} to ${max}, got ${v}`);
  };
  const numIn = (k: keyof TrainConfig, min: number, max: number) => {
    const v = cfg[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new ValidationError(`${prefix}.${k}`, `must be a number from ${min} to ${max}, got ${v}`);
  };
  intIn('epochs', 1, 1000);
  intIn('batchSize', 1, 8192);
  intIn('negatives', 0, 100_000);
  numIn('learningRate', 1e-6, 10);
  numIn('initialAccumulator', 1e-12, 100);
  numIn('l2', 0, 10);
  intIn('maxContext', 1, 1000);
  numIn('temperature', 1e-3, 100);
  return cfg;
}

interface Example {
  seq: number;
  pos: number;
}

// Shapes are fixed per run so that WebGL/WebGPU compile each kernel once, not per step.
// B ≥ 1, so a step has at least 256 candidates (or the whole catalog, when it is smaller).
const bucket = (x: number) => Math.ceil(x / 256) * 256;

/** Longest stretch of training steps between two turns of the event loop. */
const YIELD_EVERY_MS = 25;

/**
 * Resolves on a later turn of the event loop, after the messages already queued. A zero timeout,
 * not `scheduler.yield()`: a yielded continuation runs ahead of the tasks already queued, so the
 * page's messages would still wait for the whole run.
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** Throws once `signal` is aborted: its reason when that is an {@link AbortError}, else one of ours. */
function throwIfAborted(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  throw abortReason(signal);
}

function abortReason(signal: AbortSignal): AbortError {
  return signal.reason instanceof AbortError ? signal.reason : new AbortError('training stopped: its signal was aborted');
}

/**
 * `p`, or the signal's AbortError as soon as it fires. A GPU read on a lost WebGL context never
 * settles (tfjs polls its fence for ever): a run waiting on one must still stop when it is told
 * to (erase(), a consent withdrawal, close() wait for it), or the shopper's data would never be
 * deleted (backend review, stop 33).
 */
function unlessAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) return reject(abortReason(signal));
    const stop = () => reject(abortReason(signal));
    signal.addEventListener('abort', stop, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', stop));
  });
}

/**
 * Trains the item table in place with sampled softmax: the context of a target is the weighted
 * mean of the embeddings of the items before it, and it must pick the target out of the batch's
 * other targets plus uniformly sampled negatives.
 *
 * Each step gathers only the rows it touches into small dense tensors, takes gradients against
 * those, and scatters the Adagrad update back: a `tf.gather` gradient against the whole table costs
 * minutes per step on the CPU backend (DESIGN.md) and does not exist on the WASM backend.
 *
 * `config.signal` stops the run between two steps: it rejects with an {@link AbortError} (the
 * signal's reason when that is one). The steps taken before then stay applied to `table` and
 * `state` (a run aborted before its first step leaves them as they were): a caller that must not
 * keep part of a run trains a copy and drops it, as the engine does.
 *
 * @example
 * ```ts
 * const table = createItemTable(ids, 32);
 * const stats = await trainItemTable(table, [{ rows: [0, 3, 5], weights: [1, 1, 4] }], { epochs: 2 });
 * stats.lastLoss < stats.firstLoss; // usually
 * ```
 */
export async function trainItemTable(
  table: ItemTable,
  sequences: readonly Sequence[],
  config: Partial<TrainConfig> & { signal?: AbortSignal } = {},
  onProgress?: (p: Progress) => void,
  state?: OptimizerState,
): Promise<TrainStats> {
  const { signal, ...tuning } = config;
  const cfg = checkTrainConfig(tuning);
  // A table of the wrong shape would be read past its end, and a non-finite value spreads through
  // every context it is part of.
  checkItemTable(table);
  // Accumulators past the end would read as undefined and write NaN into the table.
  if (state && (state.factors.length !== table.factors.length || state.bias.length !== table.bias.length)) {
    throw new ModelError(
      `optimizer state does not fit the table: ${state.factors.length} factor and ${state.bias.length} bias accumulators for ${table.factors.length} factors and ${table.bias.length} biases`,
    );
  }
  // A backend that starts asynchronously (wasm, where it is registered first) must be up before
  // the first op, or that op throws "has not yet been initialized".
  await tf.ready();
  throwIfAborted(signal);
  state ??= createOptimizerState(table, cfg.initialAccumulator);
  const n = table.itemIds.length;
  const d = table.dim;
  if (n === 0) throw new ModelError('cannot train: the catalog has no items');
  const rng = new Random(cfg.seed);
  const examples: Example[] = [];
  sequences.forEach((s, seq) => {
    if (s.rows.length !== s.weights.length) throw new ModelError(`sequence ${seq}: ${s.rows.length} rows but ${s.weights.length} weights`);
    // A non-finite weight makes the context mean NaN, which would be written into the table.
    for (let i = 0; i < s.weights.length; i++) {
      const w = s.weights[i]!;
      if (!(Number.isFinite(w) && w >= 0)) throw new ModelError(`sequence ${seq}: weight ${i} is ${w}; weights are finite numbers ≥ 0`);
    }
    // Every row, the first too (it is context for the next): one outside the table, or not a whole
    // number, would be read as row 0 by the Int32Array it is gathered through.
    for (let pos = 0; pos < s.rows.length; pos++) {
      const r = s.rows[pos]!;
      if (!(Number.isInteger(r) && r >= 0 && r < n)) throw new ModelError(`sequence ${seq}: row ${r} is outside the table (whole numbers 0..${n - 1})`);
      if (pos > 0 && s.weights[pos]! > 0) examples.push({ seq, pos });
    }
  });
  const stepsPerEpoch = Math.ceil(examples.length / cfg.batchSize);
  const total = stepsPerEpoch * cfg.epochs;
  const stats: TrainStats = { steps: 0, examples: examples.length, firstLoss: NaN, lastLoss: NaN, touchedRows: 0 };
  if (examples.length === 0) return stats;
  // A softmax over a single item has no gradient: nothing to learn (and no one-hot of depth 1).
  if (n < 2) return stats;

  const B = Math.min(cfg.batchSize, examples.length);
  const L = cfg.maxContext;
  // With a small catalog every item is a candidate: the softmax is then exact.
  const C = Math.min(n, bucket(B + cfg.negatives));
  const local = new Int32Array(n).fill(-1);
  const touched = new Uint8Array(n);
  const ctxIdx = new Int32Array(B * L);
  const ctxW = new Float32Array(B * L);
  const candIdx = new Int32Array(C);
  const labels = new Int32Array(B);
  const exW = new Float32Array(B);

  let lastYield = performance.now();
  for (let epoch = 0; epoch < cfg.epochs; epoch++) {
    rng.shuffle(examples);
    let epochLoss = 0;
    let epochSteps = 0;
    for (let start = 0; start < examples.length; start += B) {
      // Between two steps (the signal can only fire while the loop yields, or awaits data()).
      throwIfAborted(signal);
      const batch = examples.slice(start, start + B);
      const rows: number[] = [];
      const use = (r: number) => {
        if (local[r] === -1) {
          local[r] = rows.length;
          rows.push(r);
        }
        return local[r]!;
      };
      // Candidates first (targets, then negatives) so that a row's candidate column is unique.
      const candCol = new Map<number, number>();
      let c = 0;
      ctxIdx.fill(0);
      ctxW.fill(0);
      exW.fill(0);
      batch.forEach((ex, b) => {
        const s = sequences[ex.seq]!;
        const target = s.rows[ex.pos]!;
        if (!candCol.has(target)) {
          candCol.set(target, c);
          candIdx[c++] = use(target);
        }
        labels[b] = candCol.get(target)!;
        exW[b] = 1;
        let wsum = 0;
        const from = Math.max(0, ex.pos - L);
        for (let j = from, k = 0; j < ex.pos; j++, k++) {
          ctxIdx[b * L + k] = use(s.rows[j]!);
          wsum += Math.max(0, s.weights[j]!);
        }
        // Normalized in float64 before float32 storage: the mean is scale-free, and a weight above
        // float32's range (finite, so accepted) would otherwise be stored as Infinity.
        if (wsum > 0) for (let j = from, k = 0; j < ex.pos; j++, k++) ctxW[b * L + k] = Math.max(0, s.weights[j]!) / wsum;
        else exW[b] = 0; // no usable context: nothing to learn from this example
      });
      while (c < C) {
        const r = rng.int(n);
        if (candCol.has(r)) continue;
        candCol.set(r, c);
        candIdx[c++] = use(r);
      }
      if (rows.length === 0) continue;
      const exWSum = exW.reduce((a, x) => a + x, 0);
      if (exWSum === 0) {
        for (const r of rows) local[r] = -1;
        continue;
      }
      // Gathered here, in plain arrays, rather than with tf.gather: the gather gradient needs
      // UnsortedSegmentSum, which the WASM backend lacks and the CPU backend runs very slowly.
      const ctxV = new Float32Array(B * L * d);
      for (let i = 0; i < B * L; i++) {
        if (ctxW[i] === 0) continue;
        const r = rows[ctxIdx[i]!]!;
        ctxV.set(table.factors.subarray(r * d, r * d + d), i * d);
      }
      const candV = new Float32Array(C * d);
      const candB = new Float32Array(C);
      for (let j = 0; j < C; j++) {
        const r = rows[candIdx[j]!]!;
        candV.set(table.factors.subarray(r * d, r * d + d), j * d);
        candB[j] = table.bias[r]!;
      }

      const { loss, gCtx, gCand, gBias } = tf.tidy(() => {
        // No op below broadcasts: the CPU backend's broadcasting binary ops index every element
        // through generic strides and dominated training time. Row sums and the bias term are
        // matMuls against ones, and the context mean is a batched matMul.
        const tW = tf.tensor3d(ctxW, [B, 1, L]);
        const onesB = tf.ones([B, 1]);
        const onesC = tf.ones([C, 1]);
        const tOneHot = tf.oneHot(tf.tensor1d(labels, 'int32'), C);
        const tExW = tf.tensor1d(exW);
        const invTemp = 1 / cfg.temperature;
        /** Logits [B, C]: (weighted mean of the context rows) · candidateᵀ / T + candidate bias. */
        const logitsOf = (ctx: tf.Tensor, cand: tf.Tensor, bias: tf.Tensor) => {
          const z = tf.reshape(tf.matMul(tW, ctx as tf.Tensor3D), [B, d]);
          const zAug = tf.concat([tf.mul(z, invTemp), onesB], 1);
          const candAug = tf.concat([cand, tf.reshape(bias, [C, 1])], 1);
          return tf.matMul(zAug, candAug, false, true);
        };
        const rowSum = (x: tf.Tensor) => tf.reshape(tf.matMul(x as tf.Tensor2D, onesC), [B]);
        // Σx² as square, then a matMul against ones (not dot(x, x): the WASM backend aborts on
        // the gradient of a matMul whose two inputs are the same tensor).
        const sumSquares = (x: tf.Tensor) => {
          const sq = tf.reshape(tf.square(x), [1, -1]) as tf.Tensor2D;
          return tf.reshape(tf.matMul(sq, tf.ones([sq.shape[1], 1])), []) as tf.Scalar;
        };
        const args = [tf.tensor3d(ctxV, [B, L, d]), tf.tensor2d(candV, [C, d]), tf.tensor1d(candB)] as const;
        // log Σ exp is shifted by each row's largest logit, a constant for the gradient (the
        // shift cancels in the derivative), so that exp never overflows.
        const rowMax = tf.max(logitsOf(...args), 1);
        const shift = tf.matMul(tf.reshape(rowMax, [B, 1]), tf.ones([1, C]));
        const f = (ctx: tf.Tensor, cand: tf.Tensor, bias: tf.Tensor) => {
          const logits = logitsOf(ctx, cand, bias);
          const lse = tf.add(tf.log(rowSum(tf.exp(tf.sub(logits, shift)))), rowMax);
          // Cross-entropy written out: tfjs 4.22's fused losses do not all have gradients on every backend.
          const ce = tf.sub(lse, rowSum(tf.mul(logits, tOneHot)));
          const data = tf.div(tf.dot(ce, tExW), exWSum);
          // Context rows without weight are all zero (never filled in ctxV), so they add nothing.
          const reg = tf.add(sumSquares(cand), sumSquares(ctx));
          return tf.add(data, tf.mul(reg, cfg.l2 / B)) as tf.Scalar;
        };
        const { value, grads } = tf.valueAndGrads(f)([...args]);
        return { loss: value, gCtx: grads[0]!, gCand: grads[1]!, gBias: grads[2]! };
      });
      let lossArr: tf.TypedArray, gCtxArr: tf.TypedArray, gCandArr: tf.TypedArray, gBiasArr: tf.TypedArray;
      try {
        [lossArr, gCtxArr, gCandArr, gBiasArr] = await unlessAborted(Promise.all([loss.data(), gCtx.data(), gCand.data(), gBias.data()]), signal);
      } finally {
        // Also when a read fails (a lost GPU context).
        tf.dispose([loss, gCtx, gCand, gBias]);
      }
      // Scatter: sum each row's gradient over every place it was used.
      const gV = new Float32Array(rows.length * d);
      const gB = new Float32Array(rows.length);
      for (let i = 0; i < B * L; i++) {
        if (ctxW[i] === 0) continue;
        const li = ctxIdx[i]!;
        for (let k = 0; k < d; k++) gV[li * d + k] += gCtxArr[i * d + k]!;
      }
      for (let j = 0; j < C; j++) {
        const li = candIdx[j]!;
        for (let k = 0; k < d; k++) gV[li * d + k] += gCandArr[j * d + k]!;
        gB[li] += gBiasArr[j]!;
      }
      // Checked before the step is applied: a diverged step must not write NaN into the table.
      const l = lossArr[0]!;
      if (!Number.isFinite(l)) throw new ModelError(`training diverged at step ${stats.steps + 1} (loss ${l}); lower the learning rate`);
      // A finite loss with gradients that are not (a backend reading back garbage) must not write
      // NaN into the table either: saved, it would cost the device its whole model at the next load.
      if (!gV.every(Number.isFinite) || !gB.every(Number.isFinite)) throw new ModelError(`training step ${stats.steps + 1} gave gradients that are not finite (the backend read back bad values); nothing of it was applied`);
      const lr = cfg.learningRate;
      rows.forEach((r, i) => {
        for (let k = 0; k < d; k++) {
          const g = gV[i * d + k]!;
          if (g === 0) continue;
          const a = (state.factors[r * d + k] += g * g);
          table.factors[r * d + k] -= (lr * g) / Math.sqrt(a);
        }
        const g = gB[i]!;
        if (g !== 0) {
          const a = (state.bias[r] += g * g);
          table.bias[r] -= (lr * g) / Math.sqrt(a);
        }
        // Only rows that moved (a weight-0 context row gets no gradient).
        if (g !== 0 || gV.subarray(i * d, (i + 1) * d).some((x) => x !== 0)) touched[r] = 1;
        local[r] = -1;
      });
      epochLoss += l;
      epochSteps++;
      stats.steps++;
      onProgress?.({ phase: 'training', done: stats.steps, total, loss: l });
      // On wasm and cpu `data()` settles without leaving the task, so a run would hold the worker
      // for its whole length: the page's calls, tracked events and liveness pings would wait
      // behind it (and the page would declare a busy worker dead). Let them in between steps.
      if (performance.now() - lastYield >= YIELD_EVERY_MS) {
        await yieldToEventLoop();
        lastYield = performance.now();
      }
    }
    const mean = epochSteps ? epochLoss / epochSteps : NaN;
    if (epoch === 0) stats.firstLoss = mean;
    stats.lastLoss = mean;
  }
  // Batches with no usable context are skipped, so the steps can stop short of `total`: the last
  // report says the phase is complete.
  // (No `loss`: it is a step's, and no step was taken here.)
  if (stats.steps > 0 && stats.steps < total) onProgress?.({ phase: 'training', done: total, total });
  stats.touchedRows = touched.reduce((a, x) => a + x, 0);
  return stats;
}
