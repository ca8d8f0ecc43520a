/**
 * Leave-one-out split, the usual protocol for next-item evaluation on event logs.
 *
 * Rows are sorted by time with a stable sort (equal times keep file order); each user's distinct
 * items are taken in order of first occurrence; a user with at least `minItems` (3) distinct items
 * has the last one held out. Training keeps only the events before the held-out item's first
 * occurrence, so no model sees the user's future.
 *
 * Events that share the held-out item's timestamp (the lines of one invoice, ratings given in the
 * same second) are `keep` (default): the ones before it in file order stay in training, the
 * "complete this basket" task; or `drop`: training ends at the first event of that time, so the
 * held-out item is predicted from strictly earlier events only (next visit), and a user left with
 * fewer than `minItems − 1` distinct earlier items is not tested (all their events train).
 */
import { ValidationError } from '../errors.js';
import type { EventLog } from './event-log.js';
import type { Split } from './split.js';

/** What happens to events at the held-out item's timestamp; see {@link looSplit}. */
export type SameTime = 'keep' | 'drop';
export const SAME_TIME: readonly SameTime[] = ['keep', 'drop'];

export interface LooOptions {
  /** `keep` (default): concurrent events before the held-out one in file order train; `drop`: they do not. */
  sameTime?: SameTime;
  /**
   * Whether the log has a time column (the loader was given one). Without one the times are all 0
   * and the file position orders each user's events, one step per row (`drop` then changes
   * nothing). A time column whose values are all 0 is a time column: every event at once. Absent:
   * guessed from the values (all 0: none), for logs built in code; the commands always say.
   */
  hasTime?: boolean;
}

/**
 * @example
 * ```ts
 * const split = looSplit(await loadCsv('ratings.csv', { user: 'userId', item: 'movieId', time: 'timestamp' }));
 * split.testUsers.length; // users with ≥ 3 distinct items
 * ```
 */
export function looSplit(log: EventLog, minItems = 3, opts: LooOptions = {}): Split {
  const sameTime = opts.sameTime ?? 'keep';
  if (!SAME_TIME.includes(sameTime)) throw new TypeError(`sameTime: must be 'keep' or 'drop', got ${String(sameTime)}`);
  const nUsers = log.userIds.length;
  const nItems = log.itemIds.length;
  const rows = log.user.length;
  const { time } = log;
  // Without a time column every time is 0: the file position (one second apart) stands in.
  const noTime = opts.hasTime === undefined ? time.every((t) => t === 0) : !opts.hasTime;
  const order = Int32Array.from({ length: rows }, (_, i) => i);
  // Tie-break on the file position: a stable sort by time, whatever the engine's sort is.
  order.sort((a, b) => time[a] - time[b] || a - b);

  // Bucket the time-ordered rows by user, keeping their order (counting sort).
  const start = new Int32Array(nUsers + 1);
  for (let r = 0; r < rows; r++) start[log.user[r] + 1]++;
  for (let u = 0; u < nUsers; u++) start[u + 1] += start[u];
  const fill = start.slice(0, nUsers);
  const byUser = new Int32Array(rows);
  for (const r of order) byUser[fill[log.user[r]]++] = r;

  const ptr = new Int32Array(nUsers + 1);
  const items: number[] = [];
  const weight: number[] = [];
  const count: number[] = [];
  const lastTimeIndex: number[] = [];
  const recency: number[] = [];
  const testPtr = new Int32Array(nUsers + 1);
  const testItems: number[] = [];
  const testUsers: number[] = [];
  const slot = new Int32Array(nItems).fill(-1);
  const evPtr = new Int32Array(nUsers + 1);
  const evRows: number[] = [];
  const userOfEvent: number[] = [];

  for (let u = 0; u < nUsers; u++) {
    const a = start[u];
    const b = start[u + 1];
    // Find the held-out item: the last distinct item by first occurrence.
    let distinct = 0;
    let heldAt = -1;
    for (let p = a; p < b; p++) {
      const it = log.item[byUser[p]];
      if (slot[it] === -1) {
        slot[it] = 0;
        distinct++;
        heldAt = p;
      }
    }
    for (let p = a; p < b; p++) slot[log.item[byUser[p]]] = -1;
    let holdOut = distinct >= minItems;
    let end = holdOut ? heldAt : b;
    if (holdOut && sameTime === 'drop' && !noTime) {
      // Back to the first event at the held-out item's time; enough distinct items must precede it.
      const heldTime = time[byUser[heldAt]];
      while (end > a && time[byUser[end - 1]] === heldTime) end--;
      let before = 0;
      for (let p = a; p < end; p++) {
        const it = log.item[byUser[p]];
        if (slot[it] === -1) {
          slot[it] = 0;
          before++;
        }
      }
      for (let p = a; p < end; p++) slot[log.item[byUser[p]]] = -1;
      if (before < minItems - 1) {
        holdOut = false;
        end = b;
      }
    }

    const base = items.length;
    let timeIndex = -1;
    let prevTime = Number.NaN;
    for (let p = a; p < end; p++) {
      const r = byUser[p];
      const it = log.item[r];
      evRows.push(r);
      // Without a time column each row is its own step (the file position orders them; trainEvents
      // then time the user's events by their own positions).
      const t = noTime ? r : time[r];
      if (t !== prevTime) {
        timeIndex++;
        prevTime = t;
      }
      let s = slot[it];
      if (s === -1) {
        s = slot[it] = items.length;
        items.push(it);
        weight.push(0);
        count.push(0);
        lastTimeIndex.push(0);
      }
      weight[s] += log.weight[r];
      count[s] += 1;
      lastTimeIndex[s] = timeIndex;
    }
    for (let s = base; s < items.length; s++) {
      recency.push(timeIndex - lastTimeIndex[s]);
      slot[items[s]] = -1;
    }
    ptr[u + 1] = items.length;
    evPtr[u + 1] = evRows.length;
    while (userOfEvent.length < evRows.length) userOfEvent.push(u);
    if (holdOut) {
      testItems.push(log.item[byUser[heldAt]]);
      testUsers.push(u);
    }
    testPtr[u + 1] = testItems.length;
  }
  return {
    userIds: log.userIds,
    itemIds: log.itemIds,
    train: {
      ptr,
      items: Int32Array.from(items),
      weight: Float32Array.from(weight),
      count: Float32Array.from(count),
      recency: Float32Array.from(recency),
    },
    trainEvents: {
      ptr: evPtr,
      items: Int32Array.from(evRows, (r) => log.item[r]),
      // Without a time column: the event's position among the user's own events, one second apart
      // (the file position would put other users' rows between them and split sessions by them).
      time: noTime ? Float64Array.from(evRows, (_, e) => e - evPtr[userOfEvent[e]!]!) : Float64Array.from(evRows, (r) => log.time[r]),
      weight: Float32Array.from(evRows, (r) => log.weight[r]),
    },
    test: { ptr: testPtr, items: Int32Array.from(testItems) },
    testUsers: Int32Array.from(testUsers),
  };
}

/**
 * Refuses a leave-one-out split that tests nobody, naming `flag` (the data): metrics over no users
 * would print zeros and exit 0, as if the models had been measured. Used by `localrec eval` and
 * `localrec simulate` after {@link looSplit} with the same `minItems` and `sameTime`; the message
 * says which rule left everyone out.
 *
 * @example
 * ```ts
 * checkTestUsers(looSplit(log, 3, { sameTime }), '--data', 3, sameTime);
 * // throws "--data: has no test users: leave-one-out needs a user with at least 3 distinct items (2 users read)"
 * ```
 */
export function checkTestUsers(split: Split, flag: string, minItems = 3, sameTime: SameTime = 'keep'): void {
  if (split.testUsers.length > 0) return;
  const users = split.userIds.length;
  // Nobody is tested, so each user's training history holds all of their distinct items.
  let enough = 0;
  for (let u = 0; u < users; u++) if (split.train.ptr[u + 1] - split.train.ptr[u] >= minItems) enough++;
  if (sameTime === 'drop' && enough > 0) {
    throw new ValidationError(
      flag,
      `has no test users: no user has ${minItems - 1} distinct items strictly before the held-out item's time, which --same-time drop needs ` +
        `(${users} users read, ${enough} of them with at least ${minItems} distinct items); --same-time keep trains on the events at that time too`,
    );
  }
  throw new ValidationError(flag, `has no test users: leave-one-out needs a user with at least ${minItems} distinct items (${users} users read)`);
}

/**
 * Refuses `--same-time drop` without a time column: with no times every event would be "at the
 * held-out item's time", and the setting would silently do nothing (file order decides).
 */
export function checkSameTimeHasTime(sameTime: string | undefined, timeColumn: string | undefined): void {
  if (sameTime === 'drop' && timeColumn === undefined) {
    throw new ValidationError('--same-time', 'drop compares event times, and no time column was given (--time): name one, or leave --same-time out');
  }
}
