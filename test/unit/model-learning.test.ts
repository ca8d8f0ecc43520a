/**
 * The learning test: on a slice of the real online-retail data (cut at run time from
 * ../shared/data), the shipped model and training code beat popularity on held-out purchases.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { it } from 'node:test';
import * as tf from '../../src/model/tf.js';
import '@tensorflow/tfjs-backend-wasm';
import { loadCsv } from '../../src/eval/csv-loader.js';
import { looSplit } from '../../src/eval/loo-split.js';
import { PRESETS } from '../../src/eval/presets.js';
import { parseFilter } from '../../src/eval/row-filter.js';
import { createItemTable } from '../../src/model/item-table.js';
import { Scorer, userVector } from '../../src/model/score.js';
import { trainItemTable } from '../../src/model/train.js';

const DATA = new URL('../../../shared/data/online-retail/online-retail.csv.gz', import.meta.url).pathname;

it('training beats popularity on held-out purchases (online-retail slice)', { skip: !existsSync(DATA) && 'shared data missing' }, async () => {
  await tf.setBackend('wasm');
  // About one customer in nine (customer ids run from 12346 to 18287): ~470 test users.
  const log = await loadCsv(DATA, { ...PRESETS.retail, filters: [...PRESETS.retail.filters, parseFilter('customer_id>17600')] });
  const split = looSplit(log);
  const n = split.itemIds.length;
  const { ptr, items } = split.train;
  const seqs = [];
  const pop = new Float32Array(n);
  for (let u = 0; u < split.userIds.length; u++) {
    const rows = Array.from(items.subarray(ptr[u]!, ptr[u + 1]!));
    for (const r of rows) pop[r]++;
    seqs.push({ rows, weights: rows.map(() => 1) });
  }
  assert.ok(split.testUsers.length > 300, `${split.testUsers.length} test users`);

  const table = createItemTable(split.itemIds, 32, { seed: 1, popularity: pop });
  const stats = await trainItemTable(table, seqs, { epochs: 3, seed: 1 });
  assert.ok(stats.lastLoss < stats.firstLoss);

  const scorer = new Scorer(table);
  const byPop = [...pop.keys()].sort((a, b) => pop[b]! - pop[a]!);
  let hitModel = 0;
  let hitPop = 0;
  for (const u of split.testUsers) {
    const hist = Array.from(items.subarray(ptr[u]!, ptr[u + 1]!));
    const held = split.test.items[split.test.ptr[u]!]!;
    const seen = new Set(hist);
    const z = userVector(table, hist.slice(-20).map((row) => ({ row, weight: 1, action: 'purchase' as const, lastT: 0 })));
    if ((await scorer.topK(z, 10, seen)).some((s) => s.row === held)) hitModel++;
    if (byPop.filter((r) => !seen.has(r)).slice(0, 10).includes(held)) hitPop++;
  }
  scorer.dispose();
  const hrModel = hitModel / split.testUsers.length;
  const hrPop = hitPop / split.testUsers.length;
  process.stdout.write(`# HR@10 model ${hrModel.toFixed(3)} vs popularity ${hrPop.toFixed(3)} on ${split.testUsers.length} users\n`);
  assert.ok(hrModel > 1.5 * hrPop, `model ${hrModel} vs popularity ${hrPop}`);
});
