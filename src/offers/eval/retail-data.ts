/**
 * Loads the UCI Online Retail invoice lines (gzip CSV) into baskets. Node only (node:fs, node:zlib):
 * used by `localrec offers-eval`, never by the browser modules.
 */
import { basename } from 'node:path';
import { parse } from 'csv-parse';
import { ValidationError } from '../../errors.js';
import { flagNumber } from '../../number-flag.js';
import { cell, CSV_RECORD_DELIMITERS, CsvLines, csvParseError, parseTime } from '../../eval/csv-loader.js';
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

export interface LoadRetailOptions {
  /**
   * Refuse a kept row dated after this time (ms since the epoch), naming `file:line:column`.
   * `offers fit-affinity` passes a day after now: an order from the future would be the "latest"
   * order, and the recent popularity, decayed from it, would shrink for every offer.
   */
  notAfter?: number;
}

/**
 * Read the CSV, keep rows with a customer id, an invoice not starting with `C`, and quantity > 0,
 * and group them into baskets by invoice. Any other row must be whole: a row with the wrong number
 * of fields, or an empty item, an unreadable quantity, time or price, or a negative price, is
 * refused naming `file:line[:column]`, as `localrec eval` refuses it (src/eval/csv-loader.ts).
 *
 * @example
 * ```ts
 * const { baskets, items } = await loadRetailData('../shared/data/online-retail/online-retail.csv.gz');
 * ```
 */
export async function loadRetailData(path: string, onProgress?: (rowsRead: number) => void, field = 'options.data', options: LoadRetailOptions = {}): Promise<RetailData> {
  const name = basename(path);
  // openText: a missing or unreadable file is a ValidationError naming it, gzip is told by its bytes.
  const input = await openText(path, field, { utf16le: true });
  // Lengths are checked below, after blank records are skipped, as `localrec eval` does.
  const parser = parse({ record_delimiter: CSV_RECORD_DELIMITERS, info: true, skip_empty_lines: false, bom: true, relax_column_count: true });
  input.on('error', (e) => parser.destroy(e));
  input.pipe(parser);

  const byInvoice = new Map<string, Basket>();
  const titles = new Map<string, string>();
  const prices = new Map<string, number[]>();
  let read = 0;
  let kept = 0;
  let header: string[] | undefined;
  let col: Record<keyof typeof COLUMNS, number> | undefined;
  const lines = new CsvLines();
  try {
    for await (const { record, info } of parser as AsyncIterable<{ record: string[]; info: { lines: number } }>) {
      const line = lines.take(record, info.lines);
      if (record.every((c) => c.trim() === '')) continue;
      if (!header || !col) {
        header = record.map((h) => h.trim());
        col = resolveColumns(header, name, field);
        continue;
      }
      if (record.length !== header.length) throw new ValidationError(`${name}:${line}`, `has ${record.length} fields, the header has ${header.length}`);
      read++;
      if (read % 100_000 === 0) onProgress?.(read);
      const at = (c: number): string => `${name}:${lines.cell(c)}:${header![c]}`;
      const invoice = (record[col.invoice] ?? '').trim();
      const customerId = (record[col.customer] ?? '').trim();
      if (!customerId || invoice.startsWith('C')) continue;
      const quantity = number(record, col.quantity, at);
      if (quantity <= 0) continue;
      const itemId = cell(record, col.item, at);
      const t = parseTime(cell(record, col.time, at), at(col.time)) * 1000;
      if (options.notAfter !== undefined && t > options.notAfter) {
        throw new ValidationError(at(col.time), `is ${new Date(t).toISOString()}, after ${new Date(options.notAfter).toISOString()} (orders may be dated at most a day after now)`);
      }
      const price = number(record, col.price, at);
      // A refund or write-off line, not a sale: its price would drag the product's median down.
      if (price < 0) throw new ValidationError(at(col.price), `is negative (${price}); a unit price is 0 or more`);
      kept++;
      let b = byInvoice.get(invoice);
      if (!b) byInvoice.set(invoice, (b = { invoice, customerId: customerId.replace(/\.0$/, ''), t, lines: [] }));
      b.lines.push({ itemId, quantity, price });
      if (!titles.has(itemId)) titles.set(itemId, (record[col.description] ?? '').trim());
      let p = prices.get(itemId);
      if (!p) prices.set(itemId, (p = []));
      p.push(price);
    }
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    const err = e as { code?: string; lines?: number; message?: string };
    // csv-parse errors carry the line: the same file:line form. A truncated gzip file is named.
    if (err.code?.startsWith('CSV_')) throw csvParseError(name, err, lines);
    throw new ValidationError(field, `cannot read '${path}': ${err.message ?? String(e)}`);
  }
  if (!header) throw new ValidationError(field, `'${path}' is empty (no header line)`);
  if (kept === 0) {
    throw new ValidationError(
      field,
      read === 0 ? `'${path}' has no data rows` : `'${path}' has no usable rows (${read} read; a kept row has a customer id, an invoice not starting with C and quantity > 0)`,
    );
  }
  const baskets = [...byInvoice.values()].sort((a, b) => a.t - b.t || (a.invoice < b.invoice ? -1 : 1));
  const items: CatalogItem[] = [...titles].map(([id, title]) => ({ id, title, category: retailCategory(title), price: median(prices.get(id)!) }));
  return { baskets, items, rows: { read, kept } };
}

function resolveColumns(header: string[], name: string, field: string): Record<keyof typeof COLUMNS, number> {
  const out = {} as Record<keyof typeof COLUMNS, number>;
  for (const [key, names] of Object.entries(COLUMNS) as [keyof typeof COLUMNS, readonly string[]][]) {
    const i = header.findIndex((h) => names.includes(h));
    if (i < 0) throw new ValidationError(field, `no ${key} column in ${name}: expected one of ${names.join(', ')} (header: ${header.join(', ')})`);
    out[key] = i;
  }
  return out;
}

/** A numeric cell; empty or unreadable is refused naming the cell, never read as NaN and skipped. */
function number(record: string[], i: number, at: (c: number) => string): number {
  const s = cell(record, i, at);
  const n = flagNumber(s);
  if (!Number.isFinite(n)) throw new ValidationError(at(i), `'${s}' is not a number (plain decimals only)`);
  return n;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
