/**
 * Server-side optimizers that turn a round's client deltas into the next global table:
 * FedAvg (McMahan et al. 2017) and FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization").
 * Pure functions over flat `n·(dim+1)` vectors (factors row-major, then biases).
 */
import type { ItemTable } from '../model/item-table.js';

export type AggregatorName = 'fedavg' | 'fedadam';

export interface FedAdamOptions {
  /** Server learning rate η. Default 0.01. */
  lr: number;
  beta1: number;
  beta2: number;
  /** Adaptivity τ (added to √v). Default 1e-3. */
  tau: number;
}

export const DEFAULT_FEDADAM: FedAdamOptions = { lr: 0.01, beta1: 0.9, beta2: 0.99, tau: 1e-3 };

/**
 * Coordinate-wise mean of equally long deltas, in double precision.
 *
 * @example
 * ```ts
 * meanDelta([new Float32Array([1, 2]), new Float32Array([3, 4])]); // Float64Array [2, 3]
 * ```
 */
export function meanDelta(deltas: readonly Float32Array[]): Float64Array {
  const len = deltas[0]?.length ?? 0;
  const out = new Float64Array(len);
  for (const d of deltas) for (let i = 0; i < len; i++) out[i] = out[i]! + d[i]!;
  for (let i = 0; i < len; i++) out[i] = out[i]! / deltas.length;
  return out;
}

function withStep(t: ItemTable, step: (i: number) => number): ItemTable {
  const nf = t.factors.length;
  const factors = new Float32Array(nf);
  const bias = new Float32Array(t.bias.length);
  for (let i = 0; i < nf; i++) factors[i] = t.factors[i]! + step(i);
  for (let i = 0; i < bias.length; i++) bias[i] = t.bias[i]! + step(nf + i);
  return { version: t.version + 1, itemIds: t.itemIds, dim: t.dim, factors, bias };
}

/**
 * FedAvg: next = current + lr · mean. With lr = 1 the new table is the base plus the mean delta.
 *
 * @example
 * ```ts
 * const next = applyFedAvg(current, meanDelta(deltas)); // next.version === current.version + 1
 * ```
 */
export function applyFedAvg(t: ItemTable, mean: Float64Array, lr = 1): ItemTable {
  return withStep(t, (i) => lr * mean[i]!);
}

/**
 * FedAdam: m ← β1·m + (1−β1)·Δ, v ← β2·v + (1−β2)·Δ², next = current + η·m / (√v + τ).
 * `state` holds m then v (2·len float32), null at the first round.
 *
 * @example
 * ```ts
 * const { table, state } = applyFedAdam(current, mean, previousState);
 * ```
 */
export function applyFedAdam(
  t: ItemTable,
  mean: Float64Array,
  state: Float32Array | null,
  o: FedAdamOptions = DEFAULT_FEDADAM,
): { table: ItemTable; state: Float32Array } {
  const len = mean.length;
  const s = state && state.length === 2 * len ? state.slice() : new Float32Array(2 * len).fill(0, 0, len).fill(o.tau * o.tau, len);
  for (let i = 0; i < len; i++) {
    s[i] = o.beta1 * s[i]! + (1 - o.beta1) * mean[i]!;
    s[len + i] = o.beta2 * s[len + i]! + (1 - o.beta2) * mean[i]! * mean[i]!;
  }
  const table = withStep(t, (i) => (o.lr * s[i]!) / (Math.sqrt(s[len + i]!) + o.tau));
  return { table, state: s };
}
