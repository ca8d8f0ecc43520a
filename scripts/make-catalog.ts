/**
 * Derives the demo shop's catalog from the UCI Online Retail data: a few hundred popular products,
 * spread over categories, with readable titles, a category, the median unit price and a sales count.
 *
 * Usage: node --import tsx scripts/make-catalog.ts [--input path.csv.gz] [--out examples/shop/catalog.json] [--items 300] [--max-share 0.08]
 *
 * The defaults are the checkout's own files (the same from any folder); paths given on the command
 * line are relative to the current folder. After a new catalog, rerun scripts/make-neighbors.ts: the
 * shop's neighbour table covers the catalog's products only.
 *
 * Only this small derived file is committed; the raw data stays in ../shared/data.
 */
import { parse } from 'csv-parse';
import { existsSync } from 'node:fs';
import { writeFile, mkdir } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { openText } from '../src/eval/open-text.js';
import { retailCategory } from '../src/offers/retail-categories.js';
import { dieAs, ROOT, scriptArgs, shown } from './script-args.js';

const USAGE = 'usage: node --import tsx scripts/make-catalog.ts [--input path.csv.gz] [--out examples/shop/catalog.json] [--items 300] [--max-share 0.08]';
const die: (message: string) => never = dieAs('make-catalog');

const args = scriptArgs(die, USAGE, {
  input: join(ROOT, '..', 'shared', 'data', 'online-retail', 'online-retail.csv.gz'),
  out: join(ROOT, 'examples', 'shop', 'catalog.json'),
  items: '300',
  // No category takes more than this share of the catalog, so the grid is not all bags and cards.
  'max-share': '0.08',
});
const WANT = Number(args.items);
if (!Number.isInteger(WANT) || WANT < 1) die(`--items must be a positive integer, got ${args.items}`);
const SHARE = Number(args['max-share']);
if (!(SHARE > 0 && SHARE <= 1)) die(`--max-share must be a number in (0, 1], got ${args['max-share']}`);
const MAX_PER_CATEGORY = Math.max(1, Math.ceil(WANT * SHARE));

// Words that stay lower case inside a title, and ones that stay upper case.
const SMALL = new Set(['a', 'an', 'and', 'as', 'at', 'for', 'in', 'of', 'on', 'or', 'the', 'to', 'with', 'w']);
const UPPER = new Set(['LED', 'UK', 'USA', 'PHD', 'DIY', 'XL', 'XS', 'ABC', 'NYC']);

/**
 * "PACK OF 72 RETROSPOT CAKE CASES" → "Pack of 72 Retrospot Cake Cases";
 * "WHITE HANGING HEART T-LIGHT HOLDER" → "White Hanging Heart T-Light Holder".
 */
export function titleCase(description: string): string {
  const words = description
    .replace(/\s+/g, ' ')
    .replace(/\s*[,.]+\s*$/, '')
    .replace(/\s+([,.])/g, '$1')
    .trim()
    .split(' ');
  return words
    .map((w, i) => {
      if (UPPER.has(w.toUpperCase())) return w.toUpperCase();
      const lower = w.toLowerCase();
      if (i > 0 && SMALL.has(lower)) return lower;
      // Capitalize each part of hyphenated or slashed words: T-LIGHT → T-Light, S/3 → S/3.
      return lower.replace(/(^|[-/(&+"])([a-z])/g, (_m, p: string, c: string) => p + c.toUpperCase());
    })
    .join(' ');
}

interface Acc {
  descriptions: Map<string, number>;
  prices: number[];
  lines: number;
  customers: Set<string>;
}

async function main(): Promise<void> {
  const input = resolve(args.input);
  if (!existsSync(input)) die(`--input: no such file ${input} (the UCI Online Retail data, as in ../shared/data/online-retail/)`);
  const byCode = new Map<string, Acc>();
  let rows = 0;
  // openText tells gzip by its bytes, so a plain .csv reads too (gunzip on it failed with a stack).
  const text = await openText(input, '--input');
  const parser = text.pipe(parse({ columns: (header: string[]) => checkColumns(header, basename(input)), skip_empty_lines: true, bom: true }));
  // pipe() does not forward errors: a read error must still end the loop below.
  text.on('error', (e) => parser.destroy(e));
  try {
    for await (const r of parser as AsyncIterable<Record<string, string>>) {
      rows++;
      // The usual cleaning: known customer, not a cancellation, a real sale.
      if (!r.customer_id || r.invoice!.startsWith('C')) continue;
      const qty = Number(r.quantity);
      const price = Number(r.unit_price);
      if (!(qty > 0) || !(price > 0) || !r.description) continue;
      const code = r.stock_code!.trim().toUpperCase();
      let a = byCode.get(code);
      if (!a) byCode.set(code, (a = { descriptions: new Map(), prices: [], lines: 0, customers: new Set() }));
      const d = r.description.trim();
      a.descriptions.set(d, (a.descriptions.get(d) ?? 0) + 1);
      a.prices.push(price);
      a.lines++;
      a.customers.add(r.customer_id);
    }
  } catch (e) {
    // A truncated gzip file, a row of the wrong length: named with the file, one line.
    die(`--input: ${basename(input)}: ${e instanceof Error ? e.message : String(e)}`);
  }

  const products = [...byCode].map(([id, a]) => {
    const description = [...a.descriptions].sort((x, y) => y[1] - x[1])[0]![0];
    const prices = a.prices.sort((x, y) => x - y);
    const mid = prices.length >> 1;
    const median = prices.length % 2 ? prices[mid]! : (prices[mid - 1]! + prices[mid]!) / 2;
    return {
      id,
      title: titleCase(description),
      category: retailCategory(description),
      price: Math.round(median * 100) / 100,
      popularity: a.lines,
      customers: a.customers.size,
    };
  });

  // Most sold first; skip non-products (postage, fees) and uncategorised lines; cap each category.
  products.sort((x, y) => y.popularity - x.popularity || x.id.localeCompare(y.id));
  const perCategory = new Map<string, number>();
  const picked: typeof products = [];
  const titles = new Set<string>();
  for (const p of products) {
    if (picked.length >= WANT) break;
    if (p.category === 'service' || p.category === 'other' || p.id.length > 12 || !/^\d/.test(p.id)) continue;
    // Colour variants sometimes share one description; one of each is enough for a demo shop.
    if (titles.has(p.title)) continue;
    const n = perCategory.get(p.category) ?? 0;
    if (n >= MAX_PER_CATEGORY) continue;
    perCategory.set(p.category, n + 1);
    titles.add(p.title);
    picked.push(p);
  }

  // An empty catalog would give the demo shop nothing to show, and the next script nothing to build.
  if (picked.length === 0) {
    die(`--input: no product to write: ${rows} rows read, ${byCode.size} stock codes sold (a product needs sales with a customer id, an invoice not starting with C, quantity and price > 0, and a stock code starting with a digit in a known category)`);
  }
  const catalog = {
    source: 'Derived from the UCI Online Retail data set (Chen, Sain & Guo 2012), CC BY 4.0, by scripts/make-catalog.ts',
    currency: 'GBP',
    items: picked.map(({ id, title, category, price, popularity }) => ({ id, title, category, price, popularity })),
  };
  const out = resolve(args.out);
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify(catalog, null, 1) + '\n');
  const cats = [...perCategory].sort((a, b) => b[1] - a[1]);
  process.stdout.write(
    `read ${rows} rows, ${byCode.size} stock codes; wrote ${picked.length} items in ${cats.length} categories to ${shown(out)}\n` +
      cats.map(([c, n]) => `  ${c}: ${n}`).join('\n') +
      '\n',
  );
}

const COLUMNS = ['invoice', 'stock_code', 'description', 'quantity', 'unit_price', 'customer_id'];

/** The header as csv-parse's column names; a missing column is named (every row would be skipped). */
function checkColumns(header: string[], name: string): string[] {
  const names = header.map((h) => h.trim());
  const missing = COLUMNS.find((c) => !names.includes(c));
  if (missing) die(`--input: column '${missing}' is not in ${name} (header: ${names.join(', ')})`);
  return names;
}

// Anything else that goes wrong reading the data (a truncated gzip, a CSV error) is one line too.
await main().catch((e: unknown) => die(e instanceof Error ? e.message : String(e)));
