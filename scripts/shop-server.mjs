/**
 * The demo shop's server: the real aggregation server (`startServer` from the built `dist/node.js`)
 * plus the static shop, on one address.
 *
 *   /          examples/shop/   (the page)
 *   /dist/     dist/            (the SDK bundles and the tfjs .wasm files)
 *   /v1/       the aggregation server's API, forwarded as is
 *   /offers.json      the shop's offer catalog, signed (ECDSA P-256) at start-up
 *   /offer-key.js     a module of the page's own code (app.js imports it) holding the public key the
 *                     page gives to `createRecommender({ offers: { publicKey } })`: the key is made
 *                     at start-up, so it is written into the page's code here, never served as data
 *                     next to the catalog (docs/OFFERS.md, "Where the public key comes from")
 *   /demo/simulate    POST: start "simulate 200 shoppers" (GET /demo/simulate/status, POST /demo/simulate/cancel)
 *
 * `startServer`'s `staticDir` serves one folder, and the page needs two, so the aggregation server
 * listens on a private loopback port and this small front app forwards `/v1/*` to it (with
 * X-Forwarded-For, so the per-client rate limit still sees each client's own address).
 *
 * Used by `npm start` (scripts/start.mjs) and by test/browser/shop.test.ts.
 */
import { serve } from '@hono/node-server';
import { serveStatic } from '@hono/node-server/serve-static';
import { getConnInfo } from '@hono/node-server/conninfo';
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { createReadStream, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createGunzip } from 'node:zlib';
import { parse } from 'csv-parse';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The largest request body the `/v1/*` forwarder reads: an update's 64 KiB and room for its header. */
const PROXY_BODY_LIMIT = 128 * 1024;

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const SHOP_DIR = join(ROOT, 'examples', 'shop');
export const DIST_DIR = join(ROOT, 'dist');
/** Embedding size of the global item table; the SDK's default `model.dim`, so the shapes match. */
export const DIM = 32;

/** The raw purchase data the simulated shoppers replay (never served, never copied here). */
export const RETAIL_DATA = resolve(ROOT, '..', 'shared', 'data', 'online-retail', 'online-retail.csv.gz');

/** Reads `examples/shop/catalog.json` and returns its ids and popularity, in catalog order (and the items). */
export function readShopCatalog(path = join(SHOP_DIR, 'catalog.json')) {
  const { items } = JSON.parse(readFileSync(path, 'utf8'));
  if (!Array.isArray(items) || items.length === 0) throw new Error(`${path} holds no items; run: node --import tsx scripts/make-catalog.ts`);
  return { ids: items.map((i) => i.id), popularity: items.map((i) => i.popularity ?? 0), items };
}

// ---------------------------------------------------------------- offers

const round2 = (x) => Math.round(x * 100) / 100;
const label = (c) => {
  const s = c.replace(/-/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
};

/**
 * A small offer catalog made from the shop's own catalog: a percentage off each of the biggest
 * categories, an amount off larger baskets, a welcome offer for new shoppers and one for returning
 * ones, and a bestseller deal. Spend hints come from the catalog's prices.
 *
 * @param {Array<{ id: string, title: string, category: string, price: number, popularity?: number }>} items
 * @param {number} now ms since the epoch (issue time; offers are valid from a day before to 30 days after)
 */
export function buildOfferCatalog(items, now = Date.now()) {
  const byCat = new Map();
  for (const it of items) {
    const a = byCat.get(it.category) ?? { n: 0, sum: 0 };
    a.n++;
    a.sum += it.price;
    byCat.set(it.category, a);
  }
  const meanPrice = items.reduce((s, it) => s + it.price, 0) / items.length;
  const validFrom = now - 24 * 3600_000;
  const validUntil = now + 30 * 24 * 3600_000;
  const common = { validFrom, validUntil };
  const offers = [];
  const cats = [...byCat].sort((a, b) => b[1].n - a[1].n).slice(0, 8);
  cats.forEach(([c, a], i) => {
    const percent = i % 3 === 0 ? 15 : 10;
    offers.push({
      id: `cat-${c}`,
      title: `${percent}% off ${label(c).toLowerCase()}`,
      discount: { kind: 'percent', percent, maxAmount: 10 },
      scope: { kind: 'categories', categories: [c] },
      ...common,
      limits: { maxRedemptions: 1, coolDownHours: 24 },
      // A typical order of the category: a few units at its mean price.
      hints: { margin: 0.4, typicalSpend: round2((a.sum / a.n) * 4) },
    });
  });
  offers.push({
    id: 'basket-20',
    title: '£2 off orders over £20',
    discount: { kind: 'amount', amount: 2 },
    scope: { kind: 'all' },
    minBasket: 20,
    ...common,
    limits: { maxRedemptions: 3, coolDownHours: 1 },
    hints: { margin: 0.35, typicalSpend: 25 },
  });
  offers.push({
    id: 'welcome-5',
    title: '£5 off your first order over £30',
    discount: { kind: 'amount', amount: 5 },
    scope: { kind: 'all' },
    minBasket: 30,
    audience: 'new',
    ...common,
    limits: { maxRedemptions: 1 },
    hints: { margin: 0.35, typicalSpend: 35, cost: 0.5 },
  });
  offers.push({
    id: 'thanks-10pc',
    title: '10% off everything, for coming back',
    discount: { kind: 'percent', percent: 10, maxAmount: 8 },
    scope: { kind: 'all' },
    audience: 'returning',
    ...common,
    limits: { maxRedemptions: 1, coolDownHours: 24 },
    hints: { margin: 0.35, typicalSpend: round2(meanPrice * 8) },
  });
  const top = [...items].sort((a, b) => (b.popularity ?? 0) - (a.popularity ?? 0)).slice(0, 3);
  offers.push({
    id: 'bestsellers-20',
    title: `20% off our bestsellers: ${top.map((t) => t.title).join(', ')}`.slice(0, 200),
    discount: { kind: 'percent', percent: 20 },
    scope: { kind: 'items', itemIds: top.map((t) => t.id) },
    ...common,
    limits: { maxRedemptions: 2, coolDownHours: 12 },
    hints: { margin: 0.45, typicalSpend: round2(top.reduce((s, t) => s + t.price, 0) * 2) },
  });
  return { version: 1, issuedAt: now, currency: 'GBP', offers };
}

/** The shop's offer signing key: loaded from `<dataDir>/offer-keys.json`, or made (and saved there). */
async function offerKeys(mod, dataDir, log) {
  const file = dataDir ? join(dataDir, 'offer-keys.json') : null;
  if (file && existsSync(file)) {
    try {
      const k = JSON.parse(readFileSync(file, 'utf8'));
      if (k?.publicJwk?.kty === 'EC' && typeof k?.privateJwk?.d === 'string') return k;
      log(`${file} is not an offer key pair; making a new one`);
    } catch (e) {
      log(`${file} could not be read (${e.message}); making a new key pair`);
    }
  }
  // One key id, saved and served alike: the next start reads back the kid this one signs with.
  const made = { ...(await mod.generateOfferKeys()), kid: `shop-${Date.now()}` };
  if (file) {
    writeFileSync(file, JSON.stringify(made, null, 1), { mode: 0o600 });
    log(`made an offer signing key pair in ${file}`);
  }
  return made;
}

// ---------------------------------------------------------------- simulated shoppers

let retailCache = null;
/**
 * Every customer's purchases in time order, restricted to `ids` (distinct items, first occurrence),
 * from the raw online-retail file. Read once per process (it takes a few seconds).
 *
 * @returns {Promise<Array<{ customer: string, itemIds: string[] }>>}
 */
export async function readRetailHistories(ids, file = RETAIL_DATA) {
  const key = `${file}\n${ids.length}\n${ids[0]}`;
  if (retailCache?.key === key) return retailCache.histories;
  if (!existsSync(file)) {
    throw Object.assign(new Error(`the online-retail data is missing (${file}); the simulated shoppers replay its purchases (README.md, "The data sets", says where it comes from and its columns)`), { code: 'NO_DATA' });
  }
  const wanted = new Set(ids);
  const rows = [];
  const parser = createReadStream(file).pipe(createGunzip()).pipe(parse({ columns: true, skip_empty_lines: true }));
  for await (const r of parser) {
    if (!r.customer_id || r.invoice.startsWith('C') || !(Number(r.quantity) > 0)) continue;
    const code = r.stock_code.trim().toUpperCase();
    if (!wanted.has(code)) continue;
    rows.push({ c: r.customer_id, t: Number(r.timestamp), id: code });
  }
  rows.sort((a, b) => a.t - b.t);
  const by = new Map();
  for (const r of rows) {
    let h = by.get(r.c);
    if (!h) by.set(r.c, (h = { customer: r.c, itemIds: [], seen: new Set() }));
    if (!h.seen.has(r.id)) {
      h.seen.add(r.id);
      h.itemIds.push(r.id);
    }
  }
  const histories = [...by.values()].map(({ customer, itemIds }) => ({ customer, itemIds })).sort((a, b) => (a.customer < b.customer ? -1 : 1));
  retailCache = { key, histories };
  return histories;
}

/** A small seeded generator (mulberry32), so the demo picks the same shoppers every time. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * How well a table's "Similar items" (cosine of item embeddings, as the SDK's `similar()`) predict
 * what a held-out customer bought next: for each consecutive pair (a → b) of their purchases, is b
 * among a's 10 most similar items? A random table scores about 10 / (items − 1).
 */
export function similarHitRate(table, pairs, k = 10) {
  const n = table.itemIds.length;
  const d = table.dim;
  const row = new Map(table.itemIds.map((id, i) => [id, i]));
  const norm = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += table.factors[i * d + j] ** 2;
    norm[i] = Math.sqrt(s) || 1;
  }
  const cache = new Map();
  const topOf = (a) => {
    let top = cache.get(a);
    if (top) return top;
    const sims = [];
    for (let i = 0; i < n; i++) {
      if (i === a) continue;
      let s = 0;
      for (let j = 0; j < d; j++) s += table.factors[a * d + j] * table.factors[i * d + j];
      sims.push([s / (norm[a] * norm[i]), i]);
    }
    sims.sort((x, y) => y[0] - x[0]);
    top = new Set(sims.slice(0, k).map((x) => x[1]));
    cache.set(a, top);
    return top;
  };
  let hits = 0;
  let total = 0;
  for (const [a, b] of pairs) {
    const ra = row.get(a);
    const rb = row.get(b);
    if (ra === undefined || rb === undefined) continue;
    total++;
    if (topOf(ra).has(rb)) hits++;
  }
  return { hitRate: total ? hits / total : 0, pairs: total, random: k / (n - 1) };
}

/**
 * Starts the aggregation server and the shop.
 *
 * @param {object} [opts]
 * @param {number} [opts.port] default 8787; 0 picks a free port
 * @param {string|null} [opts.dataDir] SQLite folder, default `.data/shop`; null keeps rounds in memory
 * @param {number} [opts.minClients] updates per federated round, default 10
 * @param {(line: string) => void} [opts.log]
 * @returns {Promise<{ url: string, apiUrl: string, close(): Promise<void> }>}
 *
 * @example
 * const shop = await startShop({ port: 0, dataDir: null });
 * await fetch(`${shop.url}/v1/health`); // { ok: true, version: 0 }
 * await shop.close();
 */
export async function startShop(opts = {}) {
  const log = opts.log ?? ((line) => process.stderr.write(`localrec: ${line}\n`));
  const nodeEntry = join(DIST_DIR, 'node.js');
  if (!existsSync(nodeEntry)) throw new Error('dist/node.js is missing: run `npm run build` first');
  const mod = await import(pathToFileURL(nodeEntry).href);
  // The simulated shoppers train in this process, on the wasm backend that localrec/node registers
  // (tfjs's default once it is there). Should a backend fall back to the CPU one, tfjs would print
  // its "install our node backend" banner into the shop's terminal: PROD keeps it quiet.
  (await import('@tensorflow/tfjs-core')).env().set('PROD', true);
  const { startServer, createItemTable } = mod;
  if (typeof startServer !== 'function') throw new Error('dist/node.js does not export startServer: run `npm run build` again');
  for (const name of ['generateOfferKeys', 'signOfferCatalog', 'syncOnce', 'RdpAccountant', 'decodeModel']) {
    if (typeof mod[name] !== 'function') throw new Error(`dist/node.js does not export ${name}: run \`npm run build\` again`);
  }

  const { ids, popularity, items } = readShopCatalog();
  // Same seed and popularity as the SDK's own fresh table, so version 0 matches what the page starts from.
  const initialTable = createItemTable(ids, DIM, { seed: 1, popularity });
  const dataDir = opts.dataDir === undefined ? join(ROOT, '.data', 'shop') : opts.dataDir;
  if (dataDir) mkdirSync(dataDir, { recursive: true });
  const apiOptions = {
    port: 0,
    host: '127.0.0.1',
    dataDir,
    initialTable,
    minClients: opts.minClients ?? 10,
    // The server's σ (default 1, as `localrec serve`); lower only for experiments: devices refuse
    // to sync once a single release would exceed their ε budget (σ = 0.5 already does at ε = 8).
    ...(opts.noiseMultiplier !== undefined ? { noiseMultiplier: opts.noiseMultiplier } : {}),
    trustProxy: true,
    log,
  };
  let api;
  try {
    api = await startServer(apiOptions);
  } catch (e) {
    // A store made for another catalog (the catalog was regenerated) cannot take this table.
    if (!dataDir || !/does not match the catalog/.test(String(e?.message))) throw e;
    const aside = `${dataDir}.old-${Date.now()}`;
    renameSync(dataDir, aside);
    mkdirSync(dataDir, { recursive: true });
    log(`the model store in ${dataDir} was made for another catalog (${e.message}); moved it to ${aside} and started fresh`);
    api = await startServer(apiOptions);
  }

  // Offers: the shop signs its catalog at start-up with a key kept in the data dir.
  const keys = await offerKeys(mod, dataDir, log);
  const signedOffers = await mod.signOfferCatalog(buildOfferCatalog(items), keys.privateJwk, { kid: keys.kid });
  const publicKey = { ...keys.publicJwk, kid: keys.kid };

  const simulation = new Simulation({ mod, api, ids, log, dataFile: opts.retailData ?? RETAIL_DATA, budget: opts.noiseMultiplier === 0 ? Infinity : 8 });
  // Said once, at start, rather than as a failure when the button is clicked: the shop works without
  // the data, only the simulation is off (the page learns it from /demo/simulate/status).
  if (simulation.missingData()) log(`the online-retail data is missing (${simulation.dataFile}): the page's "Simulate shoppers" button is off without it`);

  const app = new Hono();
  app.get('/offers.json', (c) => c.json(signedOffers, 200, { 'Cache-Control': 'no-cache' }));
  // The key is part of the page's code (a module app.js imports), not data fetched beside the
  // catalog: whoever could replace /offers.json could replace a key fetched from next to it. A real
  // shop builds the key into its bundle; this demo makes its key at start-up, so it writes the module here.
  const keyModule = `// Written by scripts/shop-server.mjs at start-up: the shop's public offer key, part of the page's code.\nexport const offerPublicKey = Object.freeze(${JSON.stringify(publicKey)});\n`;
  app.get('/offer-key.js', (c) => c.body(keyModule, 200, { 'Content-Type': 'text/javascript; charset=utf-8', 'Cache-Control': 'no-cache' }));
  app.get('/demo/simulate/status', (c) => c.json(simulation.status(), 200, { 'Cache-Control': 'no-store' }));
  // The demo's own actions take JSON only: a cross-site page can send a text/plain or form POST
  // without asking (no CORS preflight), but not an application/json one, so another site cannot
  // start or cancel a simulation from a visitor's browser.
  const jsonOnly = async (c, next) => {
    if (!/^application\/json\s*(;|$)/i.test(c.req.header('content-type') ?? '')) return c.json({ error: 'send Content-Type: application/json' }, 415);
    await next();
  };
  app.post('/demo/simulate', jsonOnly, async (c) => {
    let body = {};
    try {
      body = await c.req.json();
    } catch {
      // no body: the defaults
    }
    const shoppers = body?.shoppers ?? opts.simulateShoppers ?? 200;
    if (!Number.isInteger(shoppers) || shoppers < 1 || shoppers > 5000) return c.json({ error: 'shoppers must be an integer from 1 to 5000' }, 400);
    if (simulation.running) return c.json({ error: 'a simulation is already running', ...simulation.status() }, 409);
    const missing = simulation.missingData();
    if (missing) return c.json({ error: missing, ...simulation.status() }, 503);
    simulation.start({ shoppers });
    return c.json(simulation.status(), 202);
  });
  app.post('/demo/simulate/cancel', jsonOnly, (c) => {
    simulation.cancel();
    return c.json(simulation.status());
  });
  // Bodies the API takes are at most an update (64 KiB and its header): read no more than this
  // before forwarding (the API answers 413 with its own reason for anything over its limits).
  app.all('/v1/*', bodyLimit({ maxSize: PROXY_BODY_LIMIT, onError: (c) => c.json({ error: `request bodies are at most ${PROXY_BODY_LIMIT} bytes`, reason: 'oversized' }, 413) }), async (c) => {
    const src = new URL(c.req.url);
    const headers = new Headers(c.req.raw.headers);
    // Hop-by-hop headers describe this connection, not the forwarded request (fetch() refuses
    // most of them, which answered 500).
    for (const h of ['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect', 'content-length']) headers.delete(h);
    for (const h of (c.req.header('connection') ?? '').split(',')) if (h.trim()) headers.delete(h.trim());
    let remote = 'unknown';
    try {
      remote = getConnInfo(c).remote.address ?? 'unknown';
    } catch {
      // in-process requests have no socket
    }
    headers.set('x-forwarded-for', remote);
    const hasBody = c.req.method !== 'GET' && c.req.method !== 'HEAD';
    const res = await fetch(`${api.url}${src.pathname}${src.search}`, {
      method: c.req.method,
      headers,
      body: hasBody ? await c.req.arrayBuffer() : undefined,
      redirect: 'manual',
    });
    const out = new Headers(res.headers);
    // fetch() has already decoded the body; its length and encoding no longer apply.
    out.delete('content-encoding');
    out.delete('content-length');
    out.delete('transfer-encoding');
    return new Response(res.body, { status: res.status, headers: out });
  });
  const noCache = async (c, next) => {
    await next();
    // A rebuilt SDK or an edited page shows up on the next reload.
    c.header('Cache-Control', 'no-cache');
  };
  app.use('/dist/*', noCache, serveStatic({ root: DIST_DIR, rewriteRequestPath: (p) => p.replace(/^\/dist/, '') }));
  app.use('/*', noCache, serveStatic({ root: SHOP_DIR }));
  app.notFound((c) => c.text(`not found: ${c.req.path}`, 404));

  let server;
  let port;
  try {
    ({ server, port } = await new Promise((resolveListen, reject) => {
      const s = serve({ fetch: app.fetch, port: opts.port ?? 8787, hostname: '127.0.0.1' }, (info) => resolveListen({ server: s, port: info.port }));
      s.once('error', reject);
    }));
  } catch (e) {
    await api.close();
    throw e;
  }
  let closed = false;
  return {
    url: `http://127.0.0.1:${port}`,
    apiUrl: api.url,
    rounds: api.rounds,
    simulation,
    async close() {
      if (closed) return;
      closed = true;
      simulation.cancel();
      await simulation.done;
      await new Promise((r) => {
        server.close(() => r());
        server.closeAllConnections?.();
      });
      await api.close();
    },
  };
}

/**
 * "Simulate 200 shoppers": real customers of the online-retail data, each a device running the SDK's
 * real federated round (`syncOnce`: pull the global model, train on its own purchases, clip, noise,
 * POST) against the same aggregation server the page uses, each with its own Rényi-DP accountant.
 * Devices run one after another (2 cores shared with the server), with a deadline, and can be
 * cancelled. The page polls `status()`.
 */
class Simulation {
  constructor({ mod, api, ids, log, dataFile, budget }) {
    this.budget = budget;
    this.mod = mod;
    this.api = api;
    this.ids = ids;
    this.log = log;
    this.dataFile = dataFile;
    this.running = false;
    this.done = Promise.resolve();
    this.state = { phase: 'idle' };
    this.runs = 0;
  }

  /**
   * Why the simulation cannot run (the retail data is not there), or null. Looked up on each call,
   * a stat: data put in place while the shop runs is used without a restart.
   */
  missingData() {
    // The page sees the file's name only; the start-up log line has the whole path.
    return existsSync(this.dataFile) ? null : `the online-retail data is missing on the server (${basename(this.dataFile)}); the simulated shoppers replay its purchases`;
  }

  status() {
    const s = this.state;
    const missing = this.missingData();
    return {
      ...s,
      ...(missing ? { unavailable: missing } : {}),
      running: this.running,
      serverVersion: this.api.rounds.version,
      serverPending: this.api.rounds.pending,
      elapsedMs: s.startedAt ? (s.finishedAt ?? Date.now()) - s.startedAt : 0,
    };
  }

  cancel() {
    if (this.running) this.cancelled = true;
  }

  start({ shoppers, deadlineMs = 240_000 }) {
    this.running = true;
    this.cancelled = false;
    const run = ++this.runs;
    this.state = { phase: 'loading', run, shoppers, done: 0, sent: 0, nothing: 0, skippedForBudget: 0, failed: 0, startedAt: Date.now(), message: 'Reading the customers’ purchase histories…' };
    this.done = this.run(run, shoppers, deadlineMs)
      .catch((e) => {
        this.state = { ...this.state, phase: 'failed', error: e?.code === 'NO_DATA' ? e.message : String(e?.message ?? e), message: undefined };
        // Missing data is expected (it is not in the repository): one line, not a stack.
        this.log(`simulation failed: ${e?.code === 'NO_DATA' ? e.message : (e?.stack ?? e)}`);
      })
      .finally(() => {
        this.state.finishedAt = Date.now();
        this.running = false;
      });
  }

  table() {
    return this.mod.decodeModel(this.api.rounds.modelBytes('float32')).table;
  }

  async run(run, shoppers, deadlineMs) {
    const { syncOnce, RdpAccountant } = this.mod;
    const all = await readRetailHistories(this.ids, this.dataFile);
    // Customers with at least 3 of the shop's products; a seeded draw, so each click of the button
    // brings different shoppers (run number in the seed) and the rest stay held out for the score.
    const eligible = all.filter((h) => h.itemIds.length >= 3);
    const r = rng(1000 + run);
    const order = eligible.slice();
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    const devices = order.slice(0, shoppers);
    const heldOut = order.slice(shoppers).slice(0, 600);
    const pairs = heldOut.flatMap((h) => h.itemIds.slice(1).map((b, i) => [h.itemIds[i], b])).slice(0, 3000);
    const t0 = this.table();
    const before = similarHitRate(t0, pairs);
    this.state = {
      ...this.state,
      phase: 'running',
      shoppers: devices.length,
      customers: eligible.length,
      startVersion: t0.version,
      version: t0.version,
      quality: { metric: 'similar-items hit rate@10 on held-out customers’ next purchase', pairs: before.pairs, random: before.random, before: before.hitRate, after: null },
      message: devices.length < shoppers ? `only ${devices.length} customers have 3 or more of the shop’s products` : undefined,
    };
    this.log(`simulating ${devices.length} shoppers against version ${t0.version}`);
    let held;
    const deadline = Date.now() + deadlineMs;
    let epsilonMax = 0;
    for (let i = 0; i < devices.length; i++) {
      if (this.cancelled) {
        this.state.phase = 'cancelled';
        break;
      }
      if (Date.now() > deadline) {
        this.state.phase = 'timeout';
        this.state.message = `stopped at the time limit (${Math.round(deadlineMs / 1000)} s)`;
        break;
      }
      const h = devices[i];
      // Each simulated device is its own client for the server's per-client rate limit.
      const ip = `10.${(run * 7) % 250}.${(i >> 8) & 255}.${i & 255}`;
      const fetchAs = (url, init = {}) => fetch(url, { ...init, headers: { ...init.headers, 'x-forwarded-for': ip } });
      const accountant = new RdpAccountant();
      try {
        const res = await syncOnce({
          serverUrl: this.api.url,
          fetch: fetchAs,
          accountant,
          budget: this.budget,
          held,
          history: [{ itemIds: h.itemIds, weights: h.itemIds.map(() => 1) }],
          train: { seed: run * 100_003 + i },
          attempts: 3,
          backoffMs: 100,
        });
        held = { table: res.global, hash: res.globalHash };
        if (res.sent) {
          this.state.sent++;
          this.state.bytesPerUpdate = res.uploadedBytes;
          epsilonMax = Math.max(epsilonMax, res.epsilon);
          this.state.epsilonPerDevice = Math.round(epsilonMax * 100) / 100;
        } else this.state.nothing++;
        if (res.server?.published != null) this.state.lastPublished = res.server.published;
      } catch (e) {
        if (e?.name === 'PrivacyBudgetError') this.state.skippedForBudget++;
        else {
          this.state.failed++;
          this.state.lastError = `${e?.name ?? 'Error'}: ${e?.message ?? e}`;
          if (this.state.failed >= 10 && this.state.failed > this.state.sent) throw new Error(`too many devices failed; last: ${this.state.lastError}`);
        }
      }
      this.state.done = i + 1;
      this.state.version = this.api.rounds.version;
      // Let the page's requests through between devices.
      await new Promise((resolveTick) => setImmediate(resolveTick));
    }
    if (this.state.phase === 'running') this.state.phase = 'done';
    const after = similarHitRate(this.table(), pairs);
    this.state.quality.after = after.hitRate;
    this.state.version = this.api.rounds.version;
    this.log(`simulation ${this.state.phase}: ${this.state.sent} updates, version ${this.state.startVersion} → ${this.state.version}, similar-items hit rate ${before.hitRate.toFixed(3)} → ${after.hitRate.toFixed(3)}`);
  }
}
