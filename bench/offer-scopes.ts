// What the shape of the offer catalog does to #5's ratio (docs/OFFERS.md, "Other offer scopes"): a
// quick ranking check on online-retail, not the policy. For each catalog, every basket is replayed
// in time order; just before it, two rankings pick k scopes for that customer:
//
//   one-size-fits-all: the scopes in the most earlier baskets (all customers);
//   personalized:      the customer's own earlier baskets, scopes weighted by a 90-day half-life
//                      (ties and a first basket fall back to one-size-fits-all).
//
// A hit is a basket with an item of a picked scope. No caps, minimum basket, exploration or
// discount: the same check as OFFERS.md's "quick ranking check", which put `history` at 0.371.
//
// Catalogs: the 200 most-bought products (`items`, offers-eval's default), the 200 most-bought
// stock-code stems (`groups`), and co-purchase clusters: the 2,000 most-bought products embedded by
// a truncated SVD of the customer × product matrix (rows scaled by 1/√products, 32 dimensions, the
// popularity direction dropped) and grouped by spherical k-means (K = 50, 100, 200; seeded).
//
//   node --import tsx bench/offer-scopes.ts [--k 2] [--data ../shared/data/online-retail/online-retail.csv.gz]
//
// ~15 s on one core. Prints one JSON line per catalog and one example line per cluster catalog.
import { parseArgs } from 'node:util';
import { loadRetailData, type Basket } from '../src/offers/eval/retail-data.js';

const { values } = parseArgs({ options: { k: { type: 'string', default: '2' }, data: { type: 'string', default: '../shared/data/online-retail/online-retail.csv.gz' } } });
const k = Number(values.k);
if (!Number.isInteger(k) || k < 1 || k > 20) throw new Error(`--k: must be an integer from 1 to 20, got ${values.k}`);
const data = await loadRetailData(values.data!, undefined, '--data');
const baskets = data.baskets;
const title = new Map(data.items.map((i) => [i.id, i.title]));
const HALF_LIFE_MS = 90 * 864e5;

/** Basket counts per key, most first. */
function mostBought(key: (id: string) => string): string[] {
  const c = new Map<string, number>();
  for (const b of baskets) for (const s of new Set(b.lines.map((l) => key(l.itemId)))) c.set(s, (c.get(s) ?? 0) + 1);
  return [...c].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map((x) => x[0]);
}

function replay(catalog: string, scopeOf: (id: string) => string | undefined): void {
  const global = new Map<string, number>();
  const own = new Map<string, Map<string, number>>();
  const lastT = new Map<string, number>();
  const hits = { one: 0, pers: 0, oneReturning: 0, persReturning: 0, returning: 0 };
  const scopesOf = (b: Basket) => new Set(b.lines.map((l) => scopeOf(l.itemId)).filter((s): s is string => s !== undefined));
  for (const b of baskets) {
    const inBasket = scopesOf(b);
    const oneSize = [...global].sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1)).slice(0, k).map((x) => x[0]);
    const mine = own.get(b.customerId);
    if (mine) {
      const decay = Math.pow(0.5, (b.t - lastT.get(b.customerId)!) / HALF_LIFE_MS);
      for (const [s, v] of mine) mine.set(s, v * decay);
    }
    const pers = mine ? [...mine].sort((x, y) => y[1] - x[1] || (global.get(y[0]) ?? 0) - (global.get(x[0]) ?? 0)).slice(0, k).map((x) => x[0]) : [];
    for (const s of oneSize) if (pers.length < k && !pers.includes(s)) pers.push(s);
    const hitOne = oneSize.some((s) => inBasket.has(s));
    const hitPers = pers.some((s) => inBasket.has(s));
    hits.one += +hitOne;
    hits.pers += +hitPers;
    if (mine) {
      hits.returning++;
      hits.oneReturning += +hitOne;
      hits.persReturning += +hitPers;
    }
    for (const s of inBasket) global.set(s, (global.get(s) ?? 0) + 1);
    const m = mine ?? new Map<string, number>();
    own.set(b.customerId, m);
    for (const s of inBasket) m.set(s, (m.get(s) ?? 0) + 1);
    lastT.set(b.customerId, b.t);
  }
  const n = baskets.length;
  const r = (x: number) => Math.round(x * 1000) / 1000;
  const scopes = new Set(data.items.map((i) => scopeOf(i.id)).filter(Boolean)).size;
  console.log(
    JSON.stringify({
      catalog, scopes, k, baskets: n,
      oneSizeHitRate: r(hits.one / n), personalizedHitRate: r(hits.pers / n), ratio: Math.round((hits.pers / hits.one) * 100) / 100,
      returning: { baskets: hits.returning, oneSizeHitRate: r(hits.oneReturning / hits.returning), personalizedHitRate: r(hits.persReturning / hits.returning) },
    }),
  );
}

const topItems = new Set(mostBought((id) => id).slice(0, 200));
replay('items (200)', (id) => (topItems.has(id) ? id : undefined));
const stem = (id: string) => /^\d+/.exec(id)?.[0] ?? id;
const topStems = new Set(mostBought(stem).slice(0, 200));
replay('groups (200)', (id) => (topStems.has(stem(id)) ? stem(id) : undefined));

// Co-purchase clusters.
const N = 2000;
const D = 32;
const products = mostBought((id) => id).slice(0, N);
const row = new Map(products.map((id, i) => [id, i]));
const perCustomer = new Map<string, Set<number>>();
for (const b of baskets) {
  const s = perCustomer.get(b.customerId) ?? new Set<number>();
  perCustomer.set(b.customerId, s);
  for (const l of b.lines) {
    const i = row.get(l.itemId);
    if (i !== undefined) s.add(i);
  }
}
const customers = [...perCustomer.values()].filter((s) => s.size > 0).map((s) => [...s]);
let seed = 1;
const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
/** Gram–Schmidt on the columns of an N × D matrix. */
function orthonormalize(m: Float64Array[]): void {
  for (let d = 0; d < D; d++) {
    for (let e = 0; e < d; e++) {
      let dot = 0;
      for (const v of m) dot += v[d]! * v[e]!;
      for (const v of m) v[d]! -= dot * v[e]!;
    }
    let norm = 0;
    for (const v of m) norm += v[d]! ** 2;
    norm = Math.sqrt(norm);
    for (const v of m) v[d]! /= norm;
  }
}
let V = Array.from({ length: N }, () => Float64Array.from({ length: D }, () => random() - 0.5));
orthonormalize(V);
for (let it = 0; it < 15; it++) {
  const W = Array.from({ length: N }, () => new Float64Array(D));
  for (const items of customers) {
    const u = new Float64Array(D);
    const w = 1 / Math.sqrt(items.length);
    for (const i of items) for (let d = 0; d < D; d++) u[d]! += V[i]![d]! * w;
    for (const i of items) for (let d = 0; d < D; d++) W[i]![d]! += u[d]! * w;
  }
  orthonormalize(W);
  V = W;
}
const unit = (x: number[]) => {
  const n = Math.hypot(...x) || 1;
  return x.map((a) => a / n);
};
const X = V.map((v) => unit(Array.from(v.subarray(1))));
const dot = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i]!, 0);
function kmeans(K: number): Int32Array {
  let centres = Array.from({ length: K }, () => X[Math.floor(random() * N)]!.slice());
  const a = new Int32Array(N);
  for (let it = 0; it < 30; it++) {
    for (let i = 0; i < N; i++) {
      let best = -Infinity;
      for (let c = 0; c < K; c++) {
        const s = dot(X[i]!, centres[c]!);
        if (s > best) [best, a[i]] = [s, c];
      }
    }
    const sums = Array.from({ length: K }, () => new Array<number>(D - 1).fill(0));
    for (let i = 0; i < N; i++) X[i]!.forEach((x, d) => (sums[a[i]!]![d]! += x));
    centres = sums.map(unit);
  }
  return a;
}
for (const K of [50, 100, 200]) {
  const a = kmeans(K);
  replay(`co-purchase clusters (${K}, of the ${N} most-bought products)`, (id) => {
    const i = row.get(id);
    return i === undefined ? undefined : `c${a[i]}`;
  });
  const largest = [...new Set(a)].map((c) => products.filter((_, i) => a[i] === c)).sort((x, y) => y.length - x.length)[0]!;
  console.log(JSON.stringify({ example: `a cluster of K = ${K}`, products: largest.length, titles: largest.slice(0, 5).map((id) => title.get(id)) }));
}
