/**
 * Benchmark inputs cut from the real data: the UCI Online Retail transactions
 * (../shared/data/online-retail/online-retail.csv.gz). Everything is deterministic.
 */
import { existsSync, readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import type { CatalogItem, TrackEvent } from '../src/types.js';

export const RETAIL_CSV = process.env.LOCALREC_RETAIL_CSV ?? '../shared/data/online-retail/online-retail.csv.gz';

interface Line {
  item: string;
  title: string;
  quantity: number;
  t: number;
  price: number;
  customer: string;
}

export interface RetailData {
  /** Every stock code that was sold to a known customer, most sold first. */
  catalog: CatalogItem[];
  /** Invoice lines per customer, in time order; customers with most lines first. */
  customers: Array<{ id: string; lines: Line[] }>;
  /** Earliest and latest timestamp in the data (ms). */
  span: [number, number];
}

/** Parses the CSV (quoted fields allowed). Cancellations, returns and anonymous lines are dropped. */
export function loadRetail(path = RETAIL_CSV): RetailData {
  if (!existsSync(path)) throw new Error(`retail data not found at ${path} (set LOCALREC_RETAIL_CSV)`);
  const text = gunzipSync(readFileSync(path)).toString('utf8');
  const rows = text.split('\n');
  const header = splitCsv(rows[0]!);
  const col = (n: string) => {
    const i = header.indexOf(n);
    if (i < 0) throw new Error(`retail CSV has no column ${n}`);
    return i;
  };
  const [cInv, cCode, cDesc, cQty, cTs, cPrice, cCust] = ['invoice', 'stock_code', 'description', 'quantity', 'timestamp', 'unit_price', 'customer_id'].map(col);
  const byCustomer = new Map<string, Line[]>();
  const items = new Map<string, CatalogItem & { popularity: number }>();
  let lo = Infinity;
  let hi = -Infinity;
  for (let r = 1; r < rows.length; r++) {
    if (!rows[r]) continue;
    const f = splitCsv(rows[r]!);
    const customer = f[cCust!]!;
    const quantity = Number(f[cQty!]);
    const price = Number(f[cPrice!]);
    if (!customer || f[cInv!]!.startsWith('C') || !(quantity > 0) || !(price > 0)) continue;
    const item = f[cCode!]!;
    const t = Number(f[cTs!]) * 1000;
    lo = Math.min(lo, t);
    hi = Math.max(hi, t);
    const title = f[cDesc!]!.trim();
    let list = byCustomer.get(customer);
    if (!list) byCustomer.set(customer, (list = []));
    list.push({ item, title, quantity, t, price, customer });
    const it = items.get(item);
    if (it) it.popularity++;
    else items.set(item, { id: item, title, price, popularity: 1 });
  }
  const customers = [...byCustomer].map(([id, lines]) => ({ id, lines: lines.sort((a, b) => a.t - b.t) }));
  customers.sort((a, b) => b.lines.length - a.lines.length || a.id.localeCompare(b.id));
  const catalog = [...items.values()].sort((a, b) => b.popularity - a.popularity || a.id.localeCompare(b.id));
  return { catalog, customers, span: [lo, hi] };
}

function splitCsv(line: string): string[] {
  if (!line.includes('"')) return line.split(',');
  const out: string[] = [];
  let cur = '';
  let q = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (q) {
      if (ch === '"' && line[i + 1] === '"') (cur += '"'), i++;
      else if (ch === '"') q = false;
      else cur += ch;
    } else if (ch === '"') q = true;
    else if (ch === ',') out.push(cur), (cur = '');
    else cur += ch;
  }
  out.push(cur);
  return out;
}

/**
 * A shopper's history as SDK events: each invoice line becomes a `view` of the item followed by a
 * `purchase` (quantity, unit price). Timestamps keep their order and spacing, shifted so that the
 * last one is `now - 1 h` and squeezed into the last 300 days (the store keeps 365 by default).
 */
export function historyEvents(lines: readonly Line[], now: number): TrackEvent[] {
  if (lines.length === 0) return [];
  const first = lines[0]!.t;
  const last = lines[lines.length - 1]!.t;
  const span = Math.max(1, last - first);
  const target = 300 * 24 * 3600 * 1000;
  const scale = Math.min(1, target / span);
  const end = now - 3600 * 1000;
  const out: TrackEvent[] = [];
  for (const l of lines) {
    const t = Math.round(end - (last - l.t) * scale);
    out.push({ type: 'view', itemId: l.item, t: t - 30_000 });
    out.push({ type: 'purchase', itemId: l.item, quantity: l.quantity, price: l.price, t });
  }
  return out;
}

/**
 * `n` events for one store: the history of the most active retail customer (a wholesaler) who has
 * at least n/2 invoice lines, cut to its first n/2 lines (view + purchase each).
 */
export function storeEvents(data: RetailData, n: number, now: number): { customer: string; events: TrackEvent[]; distinctItems: number } {
  const need = Math.ceil(n / 2);
  const c = data.customers.find((c) => c.lines.length >= need);
  if (!c) throw new Error(`no retail customer has ${need} invoice lines`);
  const lines = c.lines.slice(0, need);
  return { customer: c.id, events: historyEvents(lines, now).slice(0, n), distinctItems: new Set(lines.map((l) => l.item)).size };
}

/** A typical shopper: the customer at the median number of lines among those with 10–40 lines. */
export function typicalShopper(data: RetailData, now: number): { customer: string; events: TrackEvent[] } {
  const mid = data.customers.filter((c) => c.lines.length >= 10 && c.lines.length <= 40);
  const c = mid[Math.floor(mid.length / 2)]!;
  return { customer: c.id, events: historyEvents(c.lines, now) };
}

/**
 * A catalog of exactly `n` items: the real retail items first, then synthetic ones
 * (`syn-<i>`, with a category and a small popularity) to reach the size of a large shop.
 */
export function sizedCatalog(data: RetailData, n: number): CatalogItem[] {
  const out = data.catalog.slice(0, n).map((i) => ({ ...i }));
  for (let i = out.length; i < n; i++) out.push({ id: `syn-${i}`, title: `Synthetic item ${i}`, category: `cat-${i % 50}`, price: 1 + (i % 97), popularity: 1 + (i % 7) });
  return out;
}
