/**
 * What the stateful model-based tests of the engine share (test/unit/engine-stateful.test.ts, in
 * process; test/browser/stateful.test.ts, through the worker in Chromium;
 * test/unit/engine-tabs-sync-stateful.test.ts, several tabs syncing): the tiny catalog two of them
 * run on, the checks of a recommend()/similar() answer against the events the model holds, and
 * the guard that turns a call that never settles into a failure naming it.
 */

/** A call that did not settle within its guard's time ({@link hangGuard}). */
export class Hang extends Error {}

/**
 * `within(p, label)`: `p`, or a {@link Hang} naming `label` once `ms` pass without it settling (a
 * guard against hangs, not a speed check: `ms` is far above what any call needs).
 */
export function hangGuard(ms: number): <T>(p: Promise<T>, label: string) => Promise<T> {
  return async <T>(p: Promise<T>, label: string): Promise<T> => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Hang(`[hang] ${label} did not settle within ${ms} ms`)), ms)))]);
    } finally {
      clearTimeout(timer);
    }
  };
}

/** A tiny catalog: two categories of six products, prices for offers. */
export const ITEMS = Array.from({ length: 12 }, (_, i) => ({ id: `p${i}`, title: `Product ${i}`, category: i < 6 ? 'mug' : 'bag', price: 4 + i, popularity: 30 - i }));
export const IDS = ITEMS.map((i) => i.id);
export const CATEGORY = new Map(ITEMS.map((i) => [i.id, i.category]));

/** An event as the models keep it: its type and item. */
export interface ModelEvent {
  type: string;
  item?: string;
}

/** Items ranking surely counts as seen (positive weight): viewed, carted, bought or searched for, never removed or rated. */
export function surelySeen(events: readonly ModelEvent[]): Set<string> {
  const pos = new Set<string>();
  const neg = new Set<string>();
  for (const e of events) {
    if (!e.item || !CATEGORY.has(e.item)) continue;
    if (e.type === 'view' || e.type === 'purchase' || e.type === 'add_to_cart' || e.type === 'search') pos.add(e.item);
    else neg.add(e.item);
  }
  return new Set([...pos].filter((i) => !neg.has(i)));
}

/**
 * What is wrong with `recs`, the answer to recommend(`op`) (or to similar(`self`, `op`)) for a
 * shopper whose stored history is `history`, or undefined: catalog items only, each once, at most
 * k, within the category and candidates asked for, nothing excluded (never an item surely seen
 * with exclude 'seen', the default of recommend()), finite scores with a reason, and with exclude
 * 'none' (similar()'s default) as many as the catalog allows.
 */
export function checkRecs(history: readonly ModelEvent[], op: { k?: number; exclude?: 'seen' | 'purchased' | 'none' | string[]; category?: string; candidates?: string[] }, recs: unknown, self?: string): string | undefined {
  if (!Array.isArray(recs)) return `not an array: ${JSON.stringify(recs)}`;
  const ids = recs.map((r) => (r as { itemId: string }).itemId);
  const bad = ids.filter((id) => !CATEGORY.has(id));
  if (bad.length) return `items the catalog lacks: ${bad.join(',')}`;
  if (new Set(ids).size !== ids.length) return `duplicates: ${ids.join(',')}`;
  if (self !== undefined && ids.includes(self)) return `similar() returned the item itself: ${ids.join(',')}`;
  const k = op.k ?? (op.candidates ? Math.max(1, op.candidates.length) : 10);
  if (ids.length > k) return `${ids.length} > k ${k}`;
  if (op.category !== undefined && ids.some((id) => CATEGORY.get(id) !== op.category)) return `outside category ${op.category}: ${ids.join(',')}`;
  if (op.candidates && ids.some((id) => !op.candidates!.includes(id))) return `outside candidates ${op.candidates.join(',')}: ${ids.join(',')}`;
  const exclude = op.exclude ?? (self !== undefined ? 'none' : 'seen');
  if (Array.isArray(exclude) && ids.some((id) => exclude.includes(id))) return `excluded item returned: ${ids.join(',')} (exclude ${exclude.join(',')})`;
  if (exclude === 'purchased') {
    const bought = new Set(history.filter((e) => e.type === 'purchase').map((e) => e.item));
    if (ids.some((id) => bought.has(id))) return `purchased item returned with exclude 'purchased': ${ids.join(',')}`;
  }
  if (exclude === 'seen') {
    const seen = surelySeen(history);
    if (ids.some((id) => seen.has(id))) return `seen item returned with exclude 'seen': ${ids.join(',')} (seen ${[...seen].join(',')})`;
  }
  for (const r of recs as { score: unknown; reason?: { text?: unknown } }[]) {
    if (typeof r.score !== 'number' || !Number.isFinite(r.score)) return `non-finite score ${String(r.score)}`;
    if (typeof r.reason?.text !== 'string') return 'a recommendation without a reason text';
  }
  // Enough items: every allowed catalog item that is not excluded could be returned; fewer than
  // that (and fewer than k) means items were lost.
  let pool = IDS.filter((id) => id !== self && (op.category === undefined || CATEGORY.get(id) === op.category) && (!op.candidates || op.candidates.includes(id)));
  if (Array.isArray(exclude)) pool = pool.filter((id) => !exclude.includes(id));
  if (exclude === 'none' && ids.length < Math.min(k, pool.length)) return `only ${ids.length} of ${Math.min(k, pool.length)} available items returned`;
  return undefined;
}
