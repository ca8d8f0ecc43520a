/**
 * The loaders' common output: a flat list of interactions in file order, with user and item ids
 * interned to dense indices. Splits (leave-one-out, given) turn it into train/test histories.
 */

/** Interactions in file order. Column arrays share one index: row r is (user[r], item[r], time[r], weight[r]). */
export interface EventLog {
  userIds: string[];
  itemIds: string[];
  user: Int32Array;
  item: Int32Array;
  /** Seconds or any monotone number; all 0 when the data has no time column. */
  time: Float64Array;
  /** Confidence of the row (e.g. quantity or rating); 1 when the data has no weight column. */
  weight: Float32Array;
}

/**
 * Builds an {@link EventLog} row by row, interning ids as they come, so that streaming loaders never
 * hold more than the columns they keep.
 *
 * @example
 * ```ts
 * const b = new EventLogBuilder();
 * b.push('u1', 'i9', 100, 1);
 * b.build().itemIds; // ['i9']
 * ```
 */
export class EventLogBuilder {
  private readonly users = new Map<string, number>();
  private readonly items = new Map<string, number>();
  private readonly userIds: string[] = [];
  private readonly itemIds: string[] = [];
  private user = new Int32Array(1024);
  private item = new Int32Array(1024);
  private time = new Float64Array(1024);
  private weight = new Float32Array(1024);
  private n = 0;

  get length(): number {
    return this.n;
  }

  /** Interns an item id without adding a row (used for catalog items seen only in a test file). */
  internItem(id: string): number {
    return intern(this.items, this.itemIds, id);
  }

  /** Interns a user id without adding a row. */
  internUser(id: string): number {
    return intern(this.users, this.userIds, id);
  }

  push(user: string, item: string, time = 0, weight = 1): void {
    if (this.n === this.user.length) this.grow();
    this.user[this.n] = intern(this.users, this.userIds, user);
    this.item[this.n] = intern(this.items, this.itemIds, item);
    this.time[this.n] = time;
    this.weight[this.n] = weight;
    this.n++;
  }

  build(): EventLog {
    return {
      userIds: this.userIds,
      itemIds: this.itemIds,
      user: this.user.slice(0, this.n),
      item: this.item.slice(0, this.n),
      time: this.time.slice(0, this.n),
      weight: this.weight.slice(0, this.n),
    };
  }

  private grow(): void {
    const cap = this.user.length * 2;
    const g = <T extends Int32Array | Float64Array | Float32Array>(a: T, make: (n: number) => T): T => {
      const b = make(cap);
      b.set(a);
      return b;
    };
    this.user = g(this.user, (c) => new Int32Array(c));
    this.item = g(this.item, (c) => new Int32Array(c));
    this.time = g(this.time, (c) => new Float64Array(c));
    this.weight = g(this.weight, (c) => new Float32Array(c));
  }
}

function intern(map: Map<string, number>, ids: string[], id: string): number {
  let i = map.get(id);
  if (i === undefined) {
    i = ids.length;
    map.set(id, i);
    ids.push(id);
  }
  return i;
}
