/**
 * A real-data check on slices cut at run time from ../shared/data (never copied into the repo):
 * the split agrees with a naive re-count, and the models rank real baskets better than popularity.
 */
import assert from 'node:assert/strict';
import { createReadStream, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { createGunzip, gzipSync } from 'node:zlib';
import { runEval } from '../../src/eval/run-eval.js';
import type { EvalResult } from '../../src/eval/runner.js';

const DATA = new URL('../../../shared/data/', import.meta.url).pathname;
const RETAIL = join(DATA, 'online-retail/online-retail.csv.gz');
const ML = join(DATA, 'ml-latest-small/ratings.csv');
const dir = mkdtempSync(join(tmpdir(), 'localrec-real-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function headLines(path: string, n: number, gz: boolean): Promise<string[]> {
  const raw = createReadStream(path);
  const rl = createInterface({ input: gz ? raw.pipe(createGunzip()) : raw, crlfDelay: Infinity });
  const out: string[] = [];
  for await (const line of rl) {
    out.push(line);
    if (out.length >= n) break;
  }
  rl.close();
  raw.destroy();
  return out;
}

/** Users with ≥ 3 distinct items and the distinct item count, counted the simplest way. */
function naiveCounts(rows: Array<{ user: string; item: string }>): { testUsers: number; items: number } {
  const per = new Map<string, Set<string>>();
  for (const r of rows) (per.get(r.user) ?? per.set(r.user, new Set()).get(r.user)!).add(r.item);
  return { testUsers: [...per.values()].filter((s) => s.size >= 3).length, items: new Set(rows.map((r) => r.item)).size };
}

async function evalQuiet(o: Record<string, unknown>): Promise<EvalResult[]> {
  return runEval({ format: 'csv', filter: [], k: '10', seed: '1', ...o } as never, { stdout: () => {}, stderr: { write: () => true } });
}

test('online-retail slice: retail preset, loo counts, item models beat popularity, the shipped localrec beats item-kNN', { skip: !existsSync(RETAIL) && 'no shared data' }, async () => {
  const lines = await headLines(RETAIL, 40_001, true);
  const slice = join(dir, 'retail-slice.csv.gz');
  writeFileSync(slice, gzipSync(lines.join('\n')));
  // Naive filter, written independently of the preset: invoice, …, quantity (3), customer_id (6).
  const kept = lines
    .slice(1)
    .map((l) => l.match(/("([^"]|"")*"|[^,]*)(,|$)/g)!.map((c) => c.replace(/,$/, '')))
    .filter((c) => c[6] !== '' && !c[0].startsWith('C') && Number(c[3]) > 0)
    .map((c) => ({ user: c[6], item: c[1] }));
  const expected = naiveCounts(kept);
  const results = await evalQuiet({ data: slice, format: 'retail', models: 'popular,itemknn,sparse-ease,localrec' });
  const [pop, knn, ease, shipped] = results;
  for (const r of results) {
    assert.equal(r.testUsers, expected.testUsers);
    assert.equal(r.items, expected.items);
    for (const m of [r.hr, r.ndcg, r.recall, r.coverage]) assert.ok(m >= 0 && m <= 1);
    assert.equal(r.hr, r.recall); // one held-out item per user
  }
  assert.ok(knn.hr > pop.hr * 1.5, `itemknn ${knn.hr} vs popular ${pop.hr}`);
  assert.ok(ease.hr > knn.hr, `sparse-ease ${ease.hr} vs itemknn ${knn.hr}`);
  assert.ok(ease.ndcg > knn.ndcg);
  // What the SDK ranks with (published neighbour table + the device's own profile code) does too.
  assert.ok(shipped.hr > knn.hr && shipped.ndcg > knn.ndcg, `localrec ${shipped.hr}/${shipped.ndcg} vs itemknn ${knn.hr}/${knn.ndcg}`);
  assert.ok(shipped.bytesPerItem <= 256, `localrec ships ${shipped.bytesPerItem} B/item`);
});

test('ml-latest-small slice: csv mapping, loo counts, sparse EASE and the shipped localrec beat popularity', { skip: !existsSync(ML) && 'no shared data' }, async () => {
  const lines = await headLines(ML, 15_001, false);
  const slice = join(dir, 'ratings-slice.csv');
  writeFileSync(slice, lines.join('\n'));
  const expected = naiveCounts(lines.slice(1).map((l) => ({ user: l.split(',')[0], item: l.split(',')[1] })));
  const [pop, ease, shipped] = await evalQuiet({ data: slice, user: 'userId', item: 'movieId', time: 'timestamp', models: 'popular,sparse-ease,localrec' });
  assert.equal(pop.testUsers, expected.testUsers);
  assert.equal(ease.items, expected.items);
  assert.ok(ease.hr > pop.hr, `sparse-ease ${ease.hr} vs popular ${pop.hr}`);
  assert.ok(shipped.hr > pop.hr, `localrec ${shipped.hr} vs popular ${pop.hr}`);
});
