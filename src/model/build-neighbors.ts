/**
 * Builds the neighbour table a shop publishes: EASE (Steck 2019) on the shop's own order log,
 * pruned to `width` neighbours per item, with a support floor so that no published pair rests on
 * fewer than `minSupport` customers. The floor is applied before pruning: an item's slots go to its
 * strongest supported neighbours. Runs in Node (`localrec neighbors`, `localrec eval`).
 *
 * The exact solve holds a dense matrix of items² (or users² + users × items) Float64s and costs
 * about items³/2: it runs when it is no bigger than the solve of `denseMax` items, and its result is
 * what it always was. A larger log is solved exactly over its `denseMax` most-bought items, and every
 * pair with another item is weighed from that solution and the sparse co-purchase counts
 * (build-neighbors-large.ts), in time and memory that grow with the co-purchases, not items².
 */
import { ValidationError } from '../errors.js';
import { buildLargeNeighborRows } from './build-neighbors-large.js';
import { DEFAULT_DENSE_MAX, MAX_DENSE_ITEMS } from './dense-limits.js';
import { MAX_NEIGHBOR_WIDTH, type NeighborTable } from './neighbors.js';
import { MAX_NEIGHBOR_ITEMS } from './neighbors-wire.js';
import { planEaseSolve, trainSparseEase, type EaseSolvePlan, type UserItemLists } from './sparse-ease.js';
import { pruneRow } from './sparse-item-model.js';

export interface BuildNeighborOptions {
  /** EASE's L2 penalty on the Gram diagonal. Default 100. */
  l2?: number;
  /** Neighbours kept per item; 32 is 192 bytes per item on the wire. Default 32. */
  width?: number;
  /**
   * A neighbour pair (i, j) is published only when at least this many customers have both items,
   * and an item gets neighbours only when at least this many customers have it. Default 3.
   */
  minSupport?: number;
  /** Keep only positive weights (the device ranks by positive scores only). Default true. */
  positiveOnly?: boolean;
  solver?: 'auto' | 'primal' | 'dual';
  /**
   * The largest exact solve, as the side n of a dense n × n Float64 matrix (8·n² bytes): a log
   * whose exact solve holds at most n² numbers and costs at most n³/2 multiply-adds is solved
   * exactly (up to n items; more when there are few customers, by the users × users solve); a
   * larger one exactly over its n most-bought items, and the pairs with other items from that
   * solution and their co-purchase counts. 0 … {@link MAX_DENSE_ITEMS}. Default {@link DEFAULT_DENSE_MAX}.
   */
  denseMax?: number;
  /** Progress of the build, with the stage it is in (`stage` is absent in the exact solve). */
  onProgress?: (fraction: number, stage?: string) => void;
}

/** The defaults of {@link buildNeighborTable} and `localrec neighbors`: EASE's `l2`, neighbours per item, and the fewest customers a published pair must have in common. */
export const DEFAULT_NEIGHBOR_OPTIONS = { l2: 100, width: 32, minSupport: 3 } as const;
export { DEFAULT_DENSE_MAX, MAX_DENSE_ITEMS };

/** What the build dropped to honour the support floor. */
export interface BuildNeighborReport {
  items: number;
  /** Items with at least one published neighbour. */
  itemsWithNeighbors: number;
  /** Published (item, neighbour) pairs. */
  pairs: number;
  /**
   * Pairs the floor kept out of the table: (item, neighbour) pairs among the item's `width`
   * strongest without the floor, but shared by fewer than minSupport customers. Their slots go to
   * the next strongest supported neighbours, so `pairs` is at least the count without the floor
   * less this (more where a row had supported neighbours to spare).
   */
  droppedForSupport: number;
  /** `exact`: one EASE solve over every item; `dense-head`: exact over the `denseItems` most-bought items, the rest from it (build-neighbors-large.ts). */
  method: 'exact' | 'dense-head';
  /** Items the exact EASE solve covered. */
  denseItems: number;
  /**
   * The share of (customer, item) pairs whose item the exact solve covered (1 for `exact`): where
   * it is low, the table is further from the exact one (docs/NEIGHBORS.md, "Large catalogs").
   */
  denseShare: number;
}

/**
 * @example
 * ```ts
 * const { table } = buildNeighborTable({ ptr, items, nItems }, itemIds, { width: 32, minSupport: 3 });
 * ```
 */
export function buildNeighborTable(
  lists: UserItemLists,
  itemIds: string[],
  o: BuildNeighborOptions = {},
): { table: NeighborTable; report: BuildNeighborReport } {
  const l2 = o.l2 ?? DEFAULT_NEIGHBOR_OPTIONS.l2;
  const width = o.width ?? DEFAULT_NEIGHBOR_OPTIONS.width;
  const minSupport = o.minSupport ?? DEFAULT_NEIGHBOR_OPTIONS.minSupport;
  if (!(l2 > 0) || !Number.isFinite(l2)) throw new ValidationError('neighbors.l2', `must be a number > 0, got ${l2}`);
  if (!Number.isInteger(minSupport) || minSupport < 1) throw new ValidationError('neighbors.minSupport', `must be a whole number ≥ 1, got ${minSupport}`);
  if (itemIds.length !== lists.nItems) throw new ValidationError('neighbors.itemIds', `has ${itemIds.length} ids for ${lists.nItems} items`);
  if (!Number.isInteger(width) || width < 1 || width > MAX_NEIGHBOR_WIDTH) throw new ValidationError('neighbors.width', `must be an integer from 1 to ${MAX_NEIGHBOR_WIDTH}, got ${width}`);
  const denseMax = o.denseMax ?? DEFAULT_DENSE_MAX;
  if (!Number.isInteger(denseMax) || denseMax < 0 || denseMax > MAX_DENSE_ITEMS) {
    throw new ValidationError('neighbors.denseMax', `must be a whole number from 0 to ${fmt(MAX_DENSE_ITEMS)} (the exact solve of n items holds an n × n Float64 matrix, 8·n² bytes: ${gb(MAX_DENSE_ITEMS)} at ${fmt(MAX_DENSE_ITEMS)}), got ${denseMax}`);
  }
  if (lists.nItems > MAX_NEIGHBOR_ITEMS) throw new ValidationError('neighbors.itemIds', `the log has ${fmt(lists.nItems)} items; a neighbour table (LRN1) holds at most ${fmt(MAX_NEIGHBOR_ITEMS)}: filter the log to the items to publish`);
  // One customer counts once: repeat orders of the same item must not pass the support floor alone.
  lists = distinctPerUser(lists);
  // Users of each item, ascending (the transpose of the lists), to count pair support.
  const n = lists.nItems;
  const cnt = new Int32Array(n + 1);
  for (let e = 0; e < lists.items.length; e++) cnt[lists.items[e]! + 1]++;
  for (let i = 0; i < n; i++) cnt[i + 1] += cnt[i]!;
  const fill = cnt.slice(0, n);
  const users = new Int32Array(lists.items.length);
  for (let u = 0; u + 1 < lists.ptr.length; u++) for (let e = lists.ptr[u]!; e < lists.ptr[u + 1]!; e++) users[fill[lists.items[e]!]++] = u;
  const positiveOnly = o.positiveOnly ?? true;
  const fits = (p: EaseSolvePlan) => p.cells <= denseMax * denseMax && p.work <= denseMax ** 3 / 2;
  let plan = planEaseSolve(lists, o.solver ?? 'auto');
  // `auto` picks the solver by work; when that one holds too much but the other one fits, the
  // exact solve still runs, with the other (a log of up to `denseMax` items stays exact).
  if (!fits(plan) && (o.solver ?? 'auto') === 'auto') {
    const other = planEaseSolve(lists, plan.solver === 'primal' ? 'dual' : 'primal');
    if (fits(other)) plan = other;
  }
  if (!fits(plan)) {
    const large = buildLargeNeighborRows({ lists, cnt, users, headSize: denseMax, l2, width, minSupport, positiveOnly, ...(o.onProgress ? { onProgress: o.onProgress } : {}) });
    const report: BuildNeighborReport = { items: n, itemsWithNeighbors: 0, pairs: 0, droppedForSupport: large.droppedForSupport, method: 'dense-head', denseItems: large.denseItems, denseShare: Math.round(large.denseShare * 1000) / 1000 };
    for (let i = 0; i < n; i++) {
      let out = 0;
      while (out < width && large.index[i * width + out]! >= 0) out++;
      report.pairs += out;
      if (out > 0) report.itemsWithNeighbors++;
    }
    return { table: { itemIds: itemIds.slice(), width, index: large.index, weight: large.weight }, report };
  }
  // EASE keeps at most nItems − 1 neighbours, so its rows may be narrower than the table's.
  const easeWidth = Math.min(width, Math.max(n - 1, 1));
  const report: BuildNeighborReport = { items: n, itemsWithNeighbors: 0, pairs: 0, droppedForSupport: 0, method: 'exact', denseItems: plan.activeItems, denseShare: 1 };
  /** Customers who have both i and j, for every j (all zero again after each row). */
  const together = new Int32Array(n);
  const unfilteredIndex = new Int32Array(easeWidth);
  const unfilteredWeight = new Float32Array(easeWidth);
  // The floor is applied to each item's whole row before it is pruned: pruning first would let
  // unsupported pairs take slots that supported ones could fill.
  const filter = (i: number, row: Float64Array): void => {
    for (let a = cnt[i]!; a < cnt[i + 1]!; a++) {
      const u = users[a]!;
      for (let e = lists.ptr[u]!; e < lists.ptr[u + 1]!; e++) together[lists.items[e]!]++;
    }
    // What the row would have published without the floor, for the report.
    pruneRow(row, i, easeWidth, unfilteredIndex, unfilteredWeight, 0, positiveOnly);
    for (let s = 0; s < easeWidth; s++) {
      const j = unfilteredIndex[s]!;
      if (j < 0) break;
      if (together[j]! < minSupport) report.droppedForSupport++;
    }
    for (let j = 0; j < n; j++) if (together[j]! < minSupport) row[j] = 0;
    for (let a = cnt[i]!; a < cnt[i + 1]!; a++) {
      const u = users[a]!;
      for (let e = lists.ptr[u]!; e < lists.ptr[u + 1]!; e++) together[lists.items[e]!] = 0;
    }
  };
  const m = trainSparseEase(lists, { l2, width, prune: 'row', positiveOnly, filter, solver: plan.solver, onProgress: o.onProgress });
  const index = new Int32Array(n * width).fill(-1);
  const weight = new Float32Array(n * width);
  for (let i = 0; i < n; i++) {
    let out = 0;
    for (let s = 0; s < m.width; s++) {
      const j = m.index[i * m.width + s]!;
      if (j < 0) break;
      index[i * width + out] = j;
      weight[i * width + out] = m.weight[i * m.width + s]!;
      out++;
    }
    report.pairs += out;
    if (out > 0) report.itemsWithNeighbors++;
  }
  return { table: { itemIds: itemIds.slice(), width, index, weight }, report };
}

const fmt = (x: number): string => x.toLocaleString('en-US');
const gb = (items: number): string => `${((8 * items * items) / 1e9).toFixed(1)} GB`;

/** The lists with each user's repeated items kept once (the lists themselves when none repeats). */
function distinctPerUser(lists: UserItemLists): UserItemLists {
  const last = new Int32Array(lists.nItems).fill(-1);
  const items: number[] = [];
  const ptr = new Int32Array(lists.ptr.length);
  let repeats = 0;
  for (let u = 0; u + 1 < lists.ptr.length; u++) {
    for (let e = lists.ptr[u]!; e < lists.ptr[u + 1]!; e++) {
      const it = lists.items[e]!;
      if (last[it] === u) {
        repeats++;
        continue;
      }
      last[it] = u;
      items.push(it);
    }
    ptr[u + 1] = items.length;
  }
  return repeats === 0 ? lists : { ptr, items: Int32Array.from(items), nItems: lists.nItems };
}
