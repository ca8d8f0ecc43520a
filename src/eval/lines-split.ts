/**
 * The `given` protocol on "lines" files: each line is `user item item …` (whitespace separated),
 * one file for training and one for testing, used exactly as they are. Item order on a training
 * line is taken as time order (the last item is the most recent).
 */
import { createInterface } from 'node:readline';
import { basename } from 'node:path';
import { ValidationError } from '../errors.js';
import { openText } from './open-text.js';
import type { Split } from './split.js';

/**
 * @example
 * ```ts
 * const split = await loadLinesSplit('train.txt', 'test.txt');
 * ```
 */
export async function loadLinesSplit(trainPath: string, testPath: string): Promise<Split> {
  const users = new Map<string, number>();
  const items = new Map<string, number>();
  const userIds: string[] = [];
  const itemIds: string[] = [];
  const intern = (m: Map<string, number>, ids: string[], id: string): number => {
    let i = m.get(id);
    if (i === undefined) m.set(id, (i = ids.push(id) - 1));
    return i;
  };
  const train = new Map<number, number[]>();
  const test = new Map<number, number[]>();
  for (const [path, into, option] of [
    [trainPath, train, 'options.train'],
    [testPath, test, 'options.test'],
  ] as const) {
    const name = basename(path);
    const rl = createInterface({ input: await openText(path, option), crlfDelay: Infinity });
    let line = 0;
    // A truncated or damaged gzip file fails mid-read: named, not a bare zlib error.
    const lines = (async function* () {
      try {
        yield* rl;
      } catch (e) {
        throw e instanceof ValidationError ? e : new ValidationError(option, `cannot read '${path}': ${(e as Error).message}`);
      }
    })();
    for await (const text of lines) {
      line++;
      const parts = text.trim().split(/\s+/);
      if (parts.length === 1 && parts[0] === '') continue;
      if (parts.length < 2 && into === train) {
        throw new ValidationError(`${name}:${line}:2`, `expected 'user item item …', got only '${parts[0]}'`);
      }
      const u = intern(users, userIds, parts[0]);
      let list = into.get(u);
      if (!list) into.set(u, (list = []));
      for (let c = 1; c < parts.length; c++) list.push(intern(items, itemIds, parts[c]));
    }
  }
  // An empty training file would leave every test user without history (and the metrics of nobody).
  if (train.size === 0) throw new ValidationError('options.train', `'${trainPath}' holds no training lines ('user item item …')`);
  const nUsers = userIds.length;
  const ptr = new Int32Array(nUsers + 1);
  const tItems: number[] = [];
  const weight: number[] = [];
  const recency: number[] = [];
  const testPtr = new Int32Array(nUsers + 1);
  const testItems: number[] = [];
  const testUsers: number[] = [];
  const evPtr = new Int32Array(nUsers + 1);
  const evItems: number[] = [];
  /** Users with test items: without a training line, or with every test item already in it (for the error when nobody is left). */
  const why = { withTest: 0, noTraining: 0, allSeen: 0 };
  for (let u = 0; u < nUsers; u++) {
    const seq = train.get(u) ?? [];
    // One push per item: a spread of a line of some 100,000 items overflows the call stack.
    for (const it of seq) evItems.push(it);
    evPtr[u + 1] = evItems.length;
    const at = new Map<number, number>();
    const lastPos = new Map<number, number>();
    seq.forEach((it, p) => {
      if (!at.has(it)) at.set(it, at.size);
      lastPos.set(it, p);
    });
    const base = tItems.length;
    for (const it of at.keys()) {
      tItems.push(it);
      weight.push(0);
      recency.push(seq.length - 1 - lastPos.get(it)!);
    }
    for (const it of seq) weight[base + at.get(it)!] += 1;
    ptr[u + 1] = tItems.length;
    // Every model masks the user's training items, so a held-out item that is also on the training
    // line could never be hit: it is not a test of next-item prediction, and it is left out.
    // A user with no training line has no history to rank from: every model would score them
    // alike (by index, or by popularity), which says nothing of the models. Not tested.
    const held = seq.length === 0 ? [] : [...new Set(test.get(u) ?? [])].filter((it) => !at.has(it));
    for (const it of held) testItems.push(it);
    testPtr[u + 1] = testItems.length;
    if (held.length > 0) testUsers.push(u);
    if ((test.get(u) ?? []).length > 0) {
      why.withTest++;
      if (seq.length === 0) why.noTraining++;
      else if (held.length === 0) why.allSeen++;
    }
  }
  if (testUsers.length === 0) {
    const have = (n: number) => (n === 1 ? 'has' : 'have');
    // Metrics over nobody would print zeros and exit 0, as if the models had been measured. Which
    // of the reasons it is, so that the wrong file or a user-id mismatch shows at once.
    const name = basename(testPath);
    throw new ValidationError(
      'options.test',
      why.withTest === 0
        ? `leaves no test users: '${name}' holds no test items ('user item …' lines)`
        : `leaves no test users: of the ${why.withTest} users with test items in '${name}', ${why.noTraining} ${have(why.noTraining)} no training line in '${basename(trainPath)}' (nothing to rank from; are the user ids the same in both files?) and ${why.allSeen} ${have(why.allSeen)} only items already in their training history`,
    );
  }
  const w = Float32Array.from(weight);
  return {
    userIds,
    itemIds,
    train: { ptr, items: Int32Array.from(tItems), weight: w, count: w.slice(), recency: Float32Array.from(recency) },
    // A line's order is its time order: one second apart, so it reads as one session.
    trainEvents: {
      ptr: evPtr,
      items: Int32Array.from(evItems),
      time: Float64Array.from(evItems, (_, e) => e),
      weight: new Float32Array(evItems.length).fill(1),
    },
    test: { ptr: testPtr, items: Int32Array.from(testItems) },
    testUsers: Int32Array.from(testUsers),
  };
}
