/**
 * Loads the UCI Online Retail invoice lines (gzip CSV) into baskets. Node only (node:fs, node:zlib):
 * used by `localrec offers-eval`, never by the browser modules.
 */
import { parse } from 'csv-parse';
import { ValidationError } from '../../errors.js';
import { parseTime as parseTimeCell, readTime } from '../../eval/csv-loader.js';
import { openText } from '../../eval/open-text.js';
import type { CatalogItem } from '../../types.js';
import { retailCategory } from '../retail-categories.js';

/** One invoice line of a basket. */
export interface BasketLine {
  itemId: string;
  quantity: number;
  price: number;
}

/** One invoice: what a customer bought at one time. */
export interface Basket {
  invoice: string;
  customerId: string;
  /** Invoice time, ms since the epoch. */
  t: number;
  lines: BasketLine[];
}

export interface RetailData {
  /** All kept invoices, oldest first (ties by invoice number, so the order is stable). */
  baskets: Basket[];
  /** One product per stock code: first description seen, derived category, median unit price. */
  items: CatalogItem[];
  rows: { read: number; kept: number };
}

// The file in ../shared uses snake_case names; the UCI original uses InvoiceNo etc. Accept both.
const COLUMNS = {
  invoice: ['invoice', 'InvoiceNo'],
  item: ['stock_code', 'StockCode'],
  description: ['description', 'Description'],
  quantity: ['quantity', 'Quantity'],
  time: ['timestamp', 'InvoiceDate'],
  price: ['unit_price', 'UnitPrice'],
  customer: ['customer_id', 'CustomerID'],
} as const;

/**
 * Read the CSV, keep rows with a customer id, an invoice not starting with `C`, and quantity > 0,
 * and group them into baskets by invoice.
 *
 * @example
 * ```ts
 * const { baskets, items } = await loadRetailData('../shared/data/online-retail/online-retail.csv.gz');
 * ```
 */
export async function loadRetailData(path: string, onProgress?: (rowsRead: number) => void, field = 'options.data'): Promise<RetailData> {
  // openText: a missing or unreadable file is a ValidationError naming it, gzip is told by its bytes.
  const input = await openText(path, field);
  const parser = parse({ columns: true, skip_empty_lines: true, relax_column_count: true });
  input.on('error', (e) => parser.destroy(e));
  input.pipe(parser);

  const byInvoice = new Map<string, Basket>();
  const titles = new Map<string, string>();
  const prices = new Map<string, number[]>();
  let read = 0;
  let kept = 0;
  let col: Record<keyof typeof COLUMNS, string> | undefined;
  const rows = (async function* () {
    try {
      yield* parser as AsyncIterable<Record<string, string>>;
    } catch (e) {
      // A truncated gzip file, a CSV syntax error: named, not a stack trace.
      throw e instanceof ValidationError ? e : new ValidationError(field, `cannot read '${path}': ${(e as Error).message}`);
    }
  })();
  for await (const row of rows) {
    read++;
    if (read % 100_000 === 0) onProgress?.(read);
    col ??= resolveColumns(row, path);
    const invoice = row[col.invoice] ?? '';
    const customerId = (row[col.customer] ?? '').trim();
    const quantity = Number(row[col.quantity]);
    if (!customerId || invoice.startsWith('C') || !(quantity > 0)) continue;
    const itemId = (row[col.item] ?? '').trim();
    const price = Number(row[col.price]);
    const t = parseTime(row[col.time] ?? '', `${path}: ${col.time}`);
    if (!itemId || !Number.isFinite(price) || !Number.isFinite(t)) continue;
    kept++;
    let b = byInvoice.get(invoice);
    if (!b) byInvoice.set(invoice, (b = { invoice, customerId: customerId.replace(/\.0$/, ''), t, lines: [] }));
    b.lines.push({ itemId, quantity, price });
    if (!titles.has(itemId)) titles.set(itemId, (row[col.description] ?? '').trim());
    let p = prices.get(itemId);
    if (!p) prices.set(itemId, (p = []));
    p.push(price);
  }
  if (kept === 0) {
    throw new ValidationError(
      field,
      read === 0 ? `'${path}' has no data rows` : `'${path}' has no usable rows (${read} read; a kept row has a customer id, an invoice not starting with C, quantity > 0, an item, a price and a date)`,
    );
  }
  const baskets = [...byInvoice.values()].sort((a, b) => a.t - b.t || (a.invoice < b.invoice ? -1 : 1));
  const items: CatalogItem[] = [...titles].map(([id, title]) => ({ id, title, category: retailCategory(title), price: median(prices.get(id)!) }));
  return { baskets, items, rows: { read, kept } };
}

function resolveColumns(row: Record<string, string>, path: string): Record<keyof typeof COLUMNS, string> {
  const out = {} as Record<keyof typeof COLUMNS, string>;
  for (const [key, names] of Object.entries(COLUMNS) as [keyof typeof COLUMNS, readonly string[]][]) {
    const name = names.find((n) => n in row);
    if (!name) throw new ValidationError(`${path}: column ${key}`, `missing; expected one of ${names.join(', ')}`);
    out[key] = name;
  }
  return out;
}

/**
 * Milliseconds from unix seconds (the shared file) or a date string (the UCI original, read as UTC:
 * `localrec eval`'s rules, src/eval/csv-loader.ts); NaN for a cell that is no time (the row is
 * skipped). A date in a form that only the machine's time zone could read is refused.
 */
function parseTime(s: string, field: string): number {
  const t = readTime(s);
  return t === 'zoneless' ? parseTimeCell(s, field) : t * 1000;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
