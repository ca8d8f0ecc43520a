/**
 * Builds the demo shop's neighbour table (what a shop would publish with `localrec neighbors`) from
 * the UCI Online Retail orders of the products in examples/shop/catalog.json: the same loader,
 * preset and builder as the CLI, restricted to the demo catalog so the file stays small.
 *
 * Usage: node --import tsx scripts/make-neighbors.ts [--input path.csv.gz] [--out examples/shop/neighbors.lrn]
 *
 * Only the derived table is committed; the raw data stays in ../shared/data.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { loadCsv } from '../src/eval/csv-loader.js';
import { PRESETS } from '../src/eval/presets.js';
import { buildNeighborTable } from '../src/model/build-neighbors.js';
import { encodeNeighborTable, neighborTableHash } from '../src/model/neighbors-wire.js';

const { values: args } = parseArgs({
  options: {
    input: { type: 'string', default: '../shared/data/online-retail/online-retail.csv.gz' },
    catalog: { type: 'string', default: 'examples/shop/catalog.json' },
    out: { type: 'string', default: 'examples/shop/neighbors.lrn' },
    width: { type: 'string', default: '16' },
    'min-support': { type: 'string', default: '3' },
  },
});

const catalog = JSON.parse(await readFile(args.catalog!, 'utf8')) as { items: Array<{ id: string }> };
const ids = catalog.items.map((i) => i.id);
const row = new Map(ids.map((id, i) => [id, i]));
const log = await loadCsv(args.input!, PRESETS.retail);
// Each customer's distinct catalog products.
const byUser = new Map<number, Set<number>>();
for (let r = 0; r < log.user.length; r++) {
  const i = row.get(log.itemIds[log.item[r]!]!);
  if (i === undefined) continue;
  let s = byUser.get(log.user[r]!);
  if (!s) byUser.set(log.user[r]!, (s = new Set()));
  s.add(i);
}
const ptr = [0];
const items: number[] = [];
for (const s of byUser.values()) {
  items.push(...s);
  ptr.push(items.length);
}
const { table, report } = buildNeighborTable({ ptr: Int32Array.from(ptr), items: Int32Array.from(items), nItems: ids.length }, ids, {
  width: Number(args.width),
  minSupport: Number(args['min-support']),
});
const file = encodeNeighborTable(table);
await writeFile(args.out!, file);
console.log(JSON.stringify({ out: args.out, customers: byUser.size, ...report, bytes: file.length, sha256: await neighborTableHash(file) }));
