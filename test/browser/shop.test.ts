/**
 * The demo shop end to end in Chromium, started the way `npm start` starts it: the real aggregation
 * server (SQLite in a temporary folder) and the shop on one address. Browses a few products, checks
 * that "Recommended for you" changes and gives reasons, erases, and saves a screenshot to
 * test-results/ (and to docs/img/shop.png, the README's picture, with UPDATE_SCREENSHOT=1).
 *
 * Needs `npm run build` first (npm test does it). Uses the WASM backend: software WebGPU is slow here.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { ROOT, startShop, type RunningShop } from '../../scripts/shop-server.mjs';
import { launch } from './harness.js';

let shop: RunningShop;
let browser: Browser;
let dataDir: string;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'localrec-shop-'));
  shop = await startShop({ port: 0, dataDir, log: () => {} });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await shop?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

const recsOf = (page: Page) => page.evaluate(() => document.body.dataset.recs ?? '');
const reasonsOf = (page: Page) =>
  page.$$eval('#recs .reason', (els) => els.map((e) => ({ kind: e.className.replace(/.*reason-/, ''), text: e.textContent ?? '' })));
const text = async (page: Page, sel: string) => ((await page.textContent(sel)) ?? '').trim();

async function screenshot(page: Page, name: string, docs = false): Promise<void> {
  mkdirSync(join(ROOT, 'test-results'), { recursive: true });
  await page.screenshot({ path: join(ROOT, 'test-results', name) });
  // The README's picture is refreshed on request only, so a test run leaves the work tree clean.
  if (docs && process.env.UPDATE_SCREENSHOT === '1') {
    mkdirSync(join(ROOT, 'docs', 'img'), { recursive: true });
    await page.screenshot({ path: join(ROOT, 'docs', 'img', name) });
  }
}

describe('demo shop', () => {
  it('serves the shop, the SDK and the federated API on one address', async () => {
    const health = await (await fetch(`${shop.url}/v1/health`)).json();
    assert.deepEqual(health, { ok: true, version: 0 });
    const round = await (await fetch(`${shop.url}/v1/rounds/current`)).json();
    assert.equal(round.pending, 0);
    assert.match(await (await fetch(`${shop.url}/`)).text(), /Recommended for you/);
    assert.equal((await fetch(`${shop.url}/dist/index.js`)).status, 200);
    assert.equal((await fetch(`${shop.url}/dist/worker.js`)).headers.get('content-type'), 'text/javascript; charset=utf-8');
    assert.equal((await fetch(`${shop.url}/dist/tfjs-backend-wasm.wasm`)).headers.get('content-type'), 'application/wasm');
    const reject = await fetch(`${shop.url}/v1/updates`, { method: 'POST', body: new Uint8Array(3) });
    assert.equal(reject.status, 400, 'a malformed update is rejected by the real server behind the shop');
  });

  it('recommends, changes with browsing, shows reasons, erases', async () => {
    const errors: string[] = [];
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    await page.goto(`${shop.url}/?backend=wasm`);
    await page.waitForSelector('body[data-state="ready"]', { timeout: 45_000 });
    assert.equal(await text(page, '#m-backend'), 'wasm');

    // Cold start: the shop's bestsellers, each saying so.
    const before = await recsOf(page);
    const cold = await reasonsOf(page);
    assert.equal(cold.length, 8);
    assert.ok(cold.every((r) => r.kind === 'popular' && r.text === 'Popular in this shop'), JSON.stringify(cold));

    // Browse: open four products from the grid (a view each), look at their similar items, add one to the cart.
    const ids = await page.$$eval('#grid .card', (els) => els.map((e) => (e as HTMLElement).dataset.itemId!));
    for (const id of [ids[4], ids[9], ids[15], ids[22]]) {
      await page.click(`#grid .card[data-item-id="${id}"] .card-hit`);
      await page.waitForSelector('#product-modal[open] #similar .reason', { timeout: 15_000 });
      const title = await text(page, '#p-title');
      const similar = await page.$$eval('#similar .reason', (els) => els.map((e) => e.textContent));
      assert.ok(similar.length > 0 && similar.every((t) => t === `Similar to ${title}`), JSON.stringify(similar));
      if (id === ids[15]) await page.click('#p-add');
      await page.click('#product-modal .modal-close button');
    }
    assert.equal(await text(page, '#cart-count'), '1');

    // The shelf changes and now explains itself from this shopper's own history.
    await page.waitForFunction(
      (old) => document.body.dataset.recs !== old && document.querySelector('#recs .reason-personal') !== null,
      before,
      { timeout: 20_000 },
    );
    const warm = await reasonsOf(page);
    const personal = warm.filter((r) => r.kind === 'personal');
    assert.ok(personal.length > 0 && personal.every((r) => r.text.startsWith('Because you ')), JSON.stringify(warm));
    const after = (await recsOf(page)).split(',');
    assert.ok(after.every((id) => ![ids[4], ids[9], ids[15], ids[22]].includes(id)), 'items already seen are not recommended');

    // The page trained on the events it tracked and charted the loss.
    await page.waitForSelector('#loss-chart path.chart-line', { timeout: 20_000 });
    await page.waitForFunction(() => Number(document.getElementById('m-events')?.textContent) >= 5, null, { timeout: 10_000 });
    await page.waitForFunction(() => document.getElementById('f-health')?.textContent?.includes('online'), null, { timeout: 10_000 });
    assert.match(await text(page, '#f-version'), /^version 0/);

    await page.evaluate(() => window.scrollTo(0, 0));
    await screenshot(page, 'shop.png', true);

    // Privacy panel: what is stored, by type; then erase (two clicks) and nothing is left.
    await page.click('#open-privacy');
    assert.equal(await text(page, '#privacy-counts tr[data-type="view"] td'), '4');
    assert.equal(await text(page, '#privacy-counts tr[data-type="add_to_cart"] td'), '1');
    assert.ok(Number(await text(page, '[data-testid="privacy-total"]')) >= 5);
    await page.click('#erase');
    await page.click('#erase');
    await page.waitForSelector('body[data-erased="1"]', { timeout: 20_000 });
    await page.waitForFunction(() => document.querySelector('[data-testid="privacy-total"]')?.textContent === '0', null, { timeout: 10_000 });
    assert.equal(await text(page, '#m-events'), '0');
    assert.equal(await text(page, '#cart-count'), '0');
    const erased = await reasonsOf(page);
    assert.ok(erased.every((r) => r.kind === 'popular'), 'after erase the shelf is back to bestsellers');
    assert.match(await text(page, '#status'), /Erased/);
    // The SDK's database was deleted and re-created empty by the new recommender.
    const stored = await page.evaluate(async () => {
      const db = await new Promise<IDBDatabase>((res, rej) => {
        const r = indexedDB.open('localrec');
        r.onsuccess = () => res(r.result);
        r.onerror = () => rej(r.error);
      });
      const names = [...db.objectStoreNames];
      const counts = await Promise.all(
        names.map(
          (n) =>
            new Promise<number>((res) => {
              const q = db.transaction(n).objectStore(n).count();
              q.onsuccess = () => res(q.result);
            }),
        ),
      );
      db.close();
      return Object.fromEntries(names.map((n, i) => [n, counts[i]]));
    });
    assert.ok(Object.values(stored).every((n) => n === 0), `IndexedDB after erase: ${JSON.stringify(stored)}`);
    await page.locator('#privacy-panel').screenshot({ path: join(ROOT, 'test-results', 'shop-privacy-erased.png') });

    assert.deepEqual(errors, []);
    await page.close();
  });
});
