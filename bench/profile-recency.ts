// Measures the device's own profile code (buildProfile) on online-retail loo: half-life only vs session decay.
// Run: node --import tsx bench/profile-recency.ts   (about 4 minutes on 2 cores; prints JSON lines)
import * as tf from '../src/model/tf.js';
import '@tensorflow/tfjs-backend-wasm';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { parse } from 'csv-parse/sync';
import { createItemTable } from '../src/model/item-table.js';
import { trainItemTable } from '../src/model/train.js';
import { Scorer, userVector } from '../src/model/score.js';
import { buildProfile } from '../src/model/profile.js';
await tf.setBackend('wasm');
const rows: string[][] = parse(gunzipSync(readFileSync('../shared/data/online-retail/online-retail.csv.gz')), { from_line: 2 });
const kept = rows.map((r, i) => ({ r, i, t: Number(r[4]) * 1000 })).filter(({ r }) => r[6] && !r[0].startsWith('C') && Number(r[3]) > 0).sort((a, b) => a.t - b.t || a.i - b.i);
const users = new Map<string, Array<{ item: string; t: number }>>();
for (const { r, t } of kept) { let l = users.get(r[6]); if (!l) users.set(r[6], (l = [])); l.push({ item: r[1], t }); }
const items = [...new Set(kept.map(({ r }) => r[1]))]; const rowOf = new Map(items.map((x, i) => [x, i]));
const train: number[][] = []; const tests: Array<{ events: Array<{ item: string; t: number }>; held: number; seen: Set<number> }> = [];
for (const evs of users.values()) {
  const distinct: string[] = []; for (const e of evs) if (!distinct.includes(e.item)) distinct.push(e.item);
  if (distinct.length < 3) { train.push(distinct.map((x) => rowOf.get(x)!)); continue; }
  const last = distinct[distinct.length - 1]; const firstT = evs.find((e) => e.item === last)!.t;
  const before = evs.filter((e) => e.t < firstT || (e.t === firstT && e.item !== last && distinct.indexOf(e.item) < distinct.length - 1));
  const tr = distinct.slice(0, -1).map((x) => rowOf.get(x)!); train.push(tr);
  tests.push({ events: before, held: rowOf.get(last)!, seen: new Set(tr) });
}
const pop = new Float32Array(items.length); for (const s of train) for (const r of s) pop[r]++;
const table = createItemTable(items, 32, { seed: 1, popularity: pop });
await trainItemTable(table, train.map((s) => ({ rows: s, weights: s.map(() => 1) })), { epochs: 2, seed: 1 });
const sc = new Scorer(table);
for (const sessionDecay of [1, 0.7, 0.5, 0.3]) {
  let hr = 0, nd = 0;
  for (const u of tests) {
    const now = u.events.at(-1)!.t;
    const prof = buildProfile(u.events.map((e) => ({ type: 'purchase' as const, itemId: e.item, t: e.t })), rowOf, { halfLifeDays: 30, now, sessionDecay });
    const top = await sc.topK(userVector(table, prof), 10, u.seen);
    const p = top.findIndex((s) => s.row === u.held); if (p >= 0) { hr++; nd += 1 / Math.log2(p + 2); }
  }
  console.log(JSON.stringify({ sessionDecay, hr: hr / tests.length, ndcg: nd / tests.length, users: tests.length }));
}
