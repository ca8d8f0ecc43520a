/**
 * How a user's own history is weighted when scoring: by confidence (how often / how much) and by
 * recency (how many baskets or sessions ago). Runs on the device, so it costs nothing to ship and
 * needs no training; it matters most for next-item prediction, where the held-out item is the
 * user's latest.
 */
import { ValidationError } from '../errors.js';
import type { Histories } from './split.js';

export interface HistoryWeighting {
  /** Per step back in time the weight is multiplied by this (1 = no recency). */
  recencyDecay: number;
  /** `none`: 1 per item; `log`: 1 + log(count); `weight`: 1 + log(1 + |summed weight|). */
  confidence: 'none' | 'log' | 'weight';
}

export const NO_WEIGHTING: HistoryWeighting = { recencyDecay: 1, confidence: 'none' };

export const CONFIDENCE_KINDS = ['none', 'log', 'weight'] as const;

/** Checks a weighting from options, naming the option on error. */
export function checkWeighting(w: HistoryWeighting, prefix: string): HistoryWeighting {
  if (!(w.recencyDecay > 0 && w.recencyDecay <= 1)) {
    throw new ValidationError(`${prefix}-recency`, `must be in (0, 1], got ${w.recencyDecay}`);
  }
  if (!(CONFIDENCE_KINDS as readonly string[]).includes(w.confidence)) {
    throw new ValidationError(`${prefix}-confidence`, `must be one of ${CONFIDENCE_KINDS.join(', ')}, got '${w.confidence}'`);
  }
  return w;
}

/**
 * The user's history as item indices and weights.
 *
 * @example
 * ```ts
 * const { items, weights } = weightedHistory(split.train, u, { recencyDecay: 0.7, confidence: 'none' });
 * ```
 */
export function weightedHistory(h: Histories, u: number, w: HistoryWeighting): { items: Int32Array; weights: Float32Array } {
  const a = h.ptr[u];
  const b = h.ptr[u + 1];
  const items = h.items.subarray(a, b);
  const weights = new Float32Array(b - a);
  for (let e = a; e < b; e++) {
    let x = 1;
    if (w.confidence === 'log') x = 1 + Math.log(Math.max(1, h.count[e]));
    else if (w.confidence === 'weight') x = 1 + Math.log1p(Math.abs(h.weight[e]));
    if (w.recencyDecay !== 1) x *= w.recencyDecay ** h.recency[e];
    weights[e - a] = x;
  }
  return { items, weights };
}
