/**
 * The demo shop's server: the real aggregation server (`startServer` from the built `dist/node.js`)
 * plus the static shop, on one address.
 *
 *   /          examples/shop/   (the page)
 *   /dist/     dist/            (the SDK bundles and the tfjs .wasm files)
 *   /v1/       the aggregation server's API, forwarded as is
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
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const SHOP_DIR = join(ROOT, 'examples', 'shop');
export const DIST_DIR = join(ROOT, 'dist');
/** Embedding size of the global item table; the SDK's default `model.dim`, so the shapes match. */
export const DIM = 32;

/** Reads `examples/shop/catalog.json` and returns its ids and popularity, in catalog order. */
export function readShopCatalog(path = join(SHOP_DIR, 'catalog.json')) {
  const { items } = JSON.parse(readFileSync(path, 'utf8'));
  if (!Array.isArray(items) || items.length === 0) throw new Error(`${path} holds no items; run: node --import tsx scripts/make-catalog.ts`);
  return { ids: items.map((i) => i.id), popularity: items.map((i) => i.popularity ?? 0) };
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
  const { startServer, createItemTable } = await import(pathToFileURL(nodeEntry).href);
  if (typeof startServer !== 'function') throw new Error('dist/node.js does not export startServer: run `npm run build` again');

  const { ids, popularity } = readShopCatalog();
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

  const app = new Hono();
  app.all('/v1/*', async (c) => {
    const src = new URL(c.req.url);
    const headers = new Headers(c.req.raw.headers);
    headers.delete('host');
    headers.delete('connection');
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
    async close() {
      if (closed) return;
      closed = true;
      await new Promise((r) => {
        server.close(() => r());
        server.closeAllConnections?.();
      });
      await api.close();
    },
  };
}
