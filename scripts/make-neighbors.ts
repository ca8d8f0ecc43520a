/**
 * Builds the demo shop's neighbour table (what a shop would publish with `localrec neighbors`) from
 * the UCI Online Retail orders of the products in examples/shop/catalog.json: the same loader,
 * preset and builder as the CLI, restricted to the demo catalog so the file stays small.
 *
 * Usage: node --import tsx scripts/make-neighbors.ts [--input path.csv.gz] [--catalog examples/shop/catalog.json] [--out examples/shop/neighbors.lrn] [--width 16] [--min-support 3]
 *
 * The defaults are the checkout's own files (the same from any folder); paths given on the command
 * line are relative to the current folder. Rerun it after scripts/make-catalog.ts makes a new catalog.
 *
 * Only the derived table is committed; the raw data stays in ../shared/data.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { loadCsv } from '../src/eval/csv-loader.js';
import { PRESETS } from '../src/eval/presets.js';
import { buildNeighborTable } from '../src/model/build-neighbors.js';
import { MAX_NEIGHBOR_WIDTH } from '../src/model/neighbors.js';
import { encodeNeighborTable, neighborTableHash } from '../src/model/neighbors-wire.js';
import { dieAs, ROOT, scriptArgs, shown } from './script-args.js';

const USAGE = 'usage: node --import tsx scripts/make-neighbors.ts [--input path.csv.gz] [--catalog examples/shop/catalog.json] [--out examples/shop/neighbors.lrn] [--width 16] [--min-support 3]';
const die: (message: string) => never = dieAs('make-neighbors');

const args = scriptArgs(die, USAGE, {
  input: join(ROOT, '..', 'shared', 'data', 'online-retail', 'online-retail.csv.gz'),
  catalog: join(ROOT, 'examples', 'shop', 'catalog.json'),
  out: join(ROOT, 'examples', 'shop', 'neighbors.lrn'),
  width: '16',
  'min-support': '3',
});
const input = resolve(args.input);
const catalogFile = resolve(args.catalog);
const out = resolve(args.out);
// Checked before the data is read (a few seconds), with the flags' own names.
const width = Number(args.width);
if (!Number.isInteger(width) || width < 1 || width > MAX_NEIGHBOR_WIDTH) die(`--width must be an integer from 1 to ${MAX_NEIGHBOR_WIDTH}, got ${args.width}`);
const minSupport = Number(args['min-support']);
if (!Number.isInteger(minSupport) || minSupport < 1) die(`--min-support must be a whole number ≥ 1, got ${args['min-support']}`);
if (!existsSync(input)) die(`--input: no such file ${input} (the UCI Online Retail data, as in ../shared/data/online-retail/)`);

if (!existsSync(catalogFile)) die(`--catalog: no such file ${catalogFile} (make it with scripts/make-catalog.ts)`);
let catalog: { items: Array<{ id: string }> };
try {
  catalog = JSON.parse(await readFile(catalogFile, 'utf8')) as typeof catalog;
  if (!Array.isArray(catalog?.items) || catalog.items.length === 0) throw new Error('holds no items');
} catch (e) {
  die(`--catalog: ${catalogFile}: ${e instanceof Error ? e.message : String(e)} (make it with scripts/make-catalog.ts)`);
}
const ids = catalog.items.map((i) => i.id);
const row = new Map(ids.map((id, i) => [id, i]));
// The loader names its input as the API does (options.data, or the preset's column option); here
// both are --input.
const log = await loadCsv(input, PRESETS.retail).catch((e: unknown) =>
  die(e instanceof Error ? e.message.replace(/^options\.data\b/, '--input').replace(/^options\.(\w+)\b/, '--input (the retail columns: $1)') : String(e)),
);
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
const { table, report } = buildNeighborTable({ ptr: Int32Array.from(ptr), items: Int32Array.from(items), nItems: ids.length }, ids, { width, minSupport });
const file = encodeNeighborTable(table);
await writeFile(out, file).catch((e: unknown) => die(`--out: ${e instanceof Error ? e.message : String(e)}`));
console.log(JSON.stringify({ out: shown(out), customers: byUser.size, ...report, bytes: file.length, sha256: await neighborTableHash(file) }));
