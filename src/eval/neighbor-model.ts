/**
 * localrec as the SDK ranks with a published neighbour table: the table is built from the training
 * split by the same code as `localrec neighbors`, round-tripped through its file format, and each
 * test user's training events go through the device's own `buildProfile` (confidence by kind,
 * half-life, session decay, saturation) and `rankScores` (neighbour scores first, popularity after).
 */
import { buildNeighborTable } from '../model/build-neighbors.js';
import { decodeNeighborTable, encodeNeighborTable } from '../model/neighbors-wire.js';
import { alignNeighbors, rankScores } from '../model/neighbors.js';
import { buildProfile } from '../model/profile.js';
import type { SparseItemModel } from '../model/sparse-item-model.js';
import type { StoredEvent } from '../types.js';
import type { EvalModel } from './eval-model.js';
import type { Split } from './split.js';

/** How a data row becomes a device event: a view, a purchase (weight = quantity) or a rating (weight = stars). */
export type EventKind = 'view' | 'purchase' | 'rating';

export interface NeighborEvalOptions {
  l2: number;
  width: number;
  minSupport: number;
  positiveOnly: boolean;
  halfLifeDays: number;
  sessionDecay: number;
  stepDecay: number;
  event: EventKind;
  solver?: 'auto' | 'primal' | 'dual';
}

/**
 * @example
 * ```ts
 * const m = new NeighborModel({ l2: 100, width: 32, minSupport: 3, positiveOnly: true, halfLifeDays: 30, sessionDecay: 0.5, stepDecay: 1, event: 'purchase' });
 * ```
 */
export class NeighborModel implements EvalModel {
  readonly name = 'localrec';
  private m: SparseItemModel | undefined;
  private split: Split | undefined;
  private popularity = new Float32Array(0);
  private rows = new Map<string, number>();
  /** Bytes of the published file per item, measured on the encoded table. */
  bytesPerItem: number;
  constructor(private readonly o: NeighborEvalOptions) {
    this.bytesPerItem = o.width * 6;
  }

  fit(split: Split, onProgress: (f: number) => void): void {
    this.split = split;
    const n = split.itemIds.length;
    const { table } = buildNeighborTable({ ptr: split.train.ptr, items: split.train.items, nItems: n }, split.itemIds, {
      l2: this.o.l2,
      width: this.o.width,
      minSupport: this.o.minSupport,
      positiveOnly: this.o.positiveOnly,
      solver: this.o.solver,
      onProgress,
    });
    const file = encodeNeighborTable(table);
    this.bytesPerItem = Math.round(file.length / n);
    const shipped = decodeNeighborTable(file);
    this.rows = new Map(split.itemIds.map((id, i) => [id, i]));
    this.m = alignNeighbors(shipped, this.rows, n);
    // The cold-start order a catalog without popularity hints would get from training counts.
    this.popularity = new Float32Array(n);
    for (const i of split.train.items) this.popularity[i]++;
  }

  score(user: number, out: Float32Array): void {
    const s = this.split!;
    const ev = s.trainEvents;
    const events: StoredEvent[] = [];
    // The latest event's time, whatever its sign (a log dated before 1970 has negative times).
    let now = -Infinity;
    for (let e = ev.ptr[user]!; e < ev.ptr[user + 1]!; e++) {
      const t = ev.time[e]! * 1000;
      if (t > now) now = t;
      const itemId = s.itemIds[ev.items[e]!]!;
      const w = ev.weight[e]!;
      if (this.o.event === 'purchase') events.push({ id: e, t, type: 'purchase', itemId, quantity: Math.max(1, w) });
      else if (this.o.event === 'rating') events.push({ id: e, t, type: 'rating', itemId, value: w });
      else events.push({ id: e, t, type: 'view', itemId });
    }
    const profile = buildProfile(events, this.rows, { halfLifeDays: this.o.halfLifeDays, now: Number.isFinite(now) ? now : 0, sessionDecay: this.o.sessionDecay, stepDecay: this.o.stepDecay });
    rankScores(this.m!, profile, this.popularity, out);
  }
}
