/**
 * A train/test split in compressed-row form: per user, the training history (distinct items with
 * their confidence and recency) and the held-out items. Every model and metric reads this shape.
 */

/** Per-user distinct items, CSR: user u owns entries ptr[u] .. ptr[u+1]-1. */
export interface Histories {
  ptr: Int32Array;
  /** Distinct items, in order of first occurrence. */
  items: Int32Array;
  /** Sum of the weight column over the user's occurrences of the item (its count when no weight column). */
  weight: Float32Array;
  /** Number of occurrences. */
  count: Float32Array;
  /**
   * How many distinct event times of this user are later than the item's last occurrence:
   * 0 for the latest basket/session, 1 for the one before, … (ties share a rank).
   */
  recency: Float32Array;
}

/**
 * Every training event of every user in time order, CSR like {@link Histories} (user u owns
 * ptr[u] .. ptr[u+1]-1): what a device would hold in its event store, for models that weight the
 * history the way the SDK does (`buildProfile`).
 */
export interface TrainEvents {
  ptr: Int32Array;
  items: Int32Array;
  /** Unix seconds (or, without a time column, the event's position among its user's own events, one second apart). */
  time: Float64Array;
  /** The row's weight column (quantity, rating), 1 without one. */
  weight: Float32Array;
}

export interface Split {
  userIds: string[];
  itemIds: string[];
  train: Histories;
  /** The raw training events behind `train`. */
  trainEvents: TrainEvents;
  /** Held-out items per user, CSR (empty for users who are not tested). */
  test: { ptr: Int32Array; items: Int32Array };
  /** Users with at least one held-out item, ascending. */
  testUsers: Int32Array;
}

/** Number of users with at least one training item. */
export function trainUserCount(s: Split): number {
  let c = 0;
  for (let u = 0; u < s.userIds.length; u++) if (s.train.ptr[u + 1] > s.train.ptr[u]) c++;
  return c;
}

/**
 * Per-item list of the users who have it in training (the transpose of `train`), CSR.
 *
 * @example
 * ```ts
 * const byItem = usersByItem(split); // users of item i: byItem.users.subarray(byItem.ptr[i], byItem.ptr[i+1])
 * ```
 */
export function usersByItem(s: Split): { ptr: Int32Array; users: Int32Array } {
  const n = s.itemIds.length;
  const { ptr, items } = s.train;
  const cnt = new Int32Array(n + 1);
  for (let e = 0; e < items.length; e++) cnt[items[e] + 1]++;
  for (let i = 0; i < n; i++) cnt[i + 1] += cnt[i];
  const fill = cnt.slice(0, n);
  const users = new Int32Array(items.length);
  for (let u = 0; u + 1 < ptr.length; u++) {
    for (let e = ptr[u]; e < ptr[u + 1]; e++) users[fill[items[e]]++] = u;
  }
  return { ptr: cnt, users };
}

/**
 * Each training user's history as a training sequence (rows in time order, weight 1), users with
 * fewer than two items left out; at most `maxUsers` of them, first users first.
 */
export function trainSequences(s: Split, maxUsers = Infinity): Array<{ rows: Int32Array; weights: Float32Array }> {
  const out: Array<{ rows: Int32Array; weights: Float32Array }> = [];
  const { ptr, items } = s.train;
  for (let u = 0; u + 1 < ptr.length && out.length < maxUsers; u++) {
    if (ptr[u + 1]! - ptr[u]! < 2) continue;
    const rows = items.subarray(ptr[u]!, ptr[u + 1]!);
    out.push({ rows, weights: new Float32Array(rows.length).fill(1) });
  }
  return out;
}
