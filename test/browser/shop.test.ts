/**
 * The demo shop end to end in Chromium, started the way `npm start` starts it: the real aggregation
 * server (SQLite in a temporary folder) and the shop on one address. Browses a few products, checks
 * that "Recommended for you" changes and gives reasons, that offers come with reasons and can be
 * used (redeemed at checkout, when they apply), that the page syncs (and the privacy panel's audit
 * matches the requests the test saw and the events it made), that Export downloads those events,
 * that simulated shoppers move the global model on, that a device past its ε budget only receives,
 * erases (and asks for consent again), and checks the consent banner a first visit gets (and that
 * the answer holds across reloads), and what the page says about a server without the SDK build,
 * the demo endpoints, the offers or the retail data, or an unhealthy one. Saves
 * screenshots to test-results/ (and docs/img/shop.png, the README's picture, with UPDATE_SCREENSHOT=1).
 *
 * Needs `npm run build` first (npm test does it). Uses the WASM backend: software WebGPU is slow here.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Browser, Page, Request } from 'playwright-core';
import { RETAIL_DATA, ROOT, startShop, type RunningShop } from '../../scripts/shop-server.mjs';
import { launch } from './harness.js';

let shop: RunningShop;
let browser: Browser;
let dataDir: string;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'localrec-shop-'));
  // Rounds of 3 so that a handful of simulated shoppers publishes new versions quickly.
  shop = await startShop({ port: 0, dataDir, minClients: 3, log: () => {} });
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
  /** A page whose script errors and POST requests are collected. */
  async function watchedPage(): Promise<{ page: Page; errors: string[]; posts: string[] }> {
    const errors: string[] = [];
    const posts: string[] = [];
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('request', (r) => {
      if (r.method() === 'POST') posts.push(r.url());
    });
    return { page, errors, posts };
  }

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
    // The signed offer catalog, and the key that verifies it: a module of the page's code, not data
    // served next to the catalog.
    const keyModule = await (await fetch(`${shop.url}/offer-key.js`)).text();
    const key = JSON.parse(/Object\.freeze\((\{.*\})\);/.exec(keyModule)![1]!);
    assert.equal((await fetch(`${shop.url}/offers-key.json`)).status, 404, 'the key is not served beside the catalog');
    assert.equal(key.kty, 'EC');
    assert.equal(key.d, undefined, 'the private key is never served');
    const signed = await (await fetch(`${shop.url}/offers.json`)).json();
    assert.equal(signed.alg, 'ES256');
    // The key id saved with the key pair is the one served and signed with (the next start reads it back).
    const saved = JSON.parse(readFileSync(join(dataDir, 'offer-keys.json'), 'utf8'));
    assert.equal(saved.kid, key.kid);
    assert.equal(signed.kid, key.kid);
    assert.ok(signed.catalog.offers.length >= 5, JSON.stringify(signed.catalog.offers.map((o: { id: string }) => o.id)));
    assert.equal((await (await fetch(`${shop.url}/demo/simulate/status`)).json()).phase, 'idle');
    // Another site's page can POST text/plain or a form without a CORS preflight, not JSON: the
    // demo's actions take JSON only.
    for (const path of ['/demo/simulate', '/demo/simulate/cancel']) {
      const res = await fetch(`${shop.url}${path}`, { method: 'POST', headers: { 'Content-Type': 'text/plain', Origin: 'https://elsewhere.example' }, body: '{"shoppers":5}' });
      assert.equal(res.status, 415, path);
    }
    assert.equal((await (await fetch(`${shop.url}/demo/simulate/status`)).json()).phase, 'idle', 'nothing started');
    // The /v1 forwarder: hop-by-hop headers are not passed on (fetch() refused them: 500), and a
    // body over an update's size is refused before it is read whole.
    const raw = (method: string, path: string, headers: Record<string, string>, chunks: Buffer[]) =>
      new Promise<number>((done, fail) => {
        const req = httpRequest(`${shop.url}${path}`, { method, headers }, (res) => {
          res.resume();
          done(res.statusCode!);
        });
        req.on('error', fail);
        for (const c of chunks) req.write(c);
        req.end();
      });
    assert.equal(await raw('GET', '/v1/health', { 'Keep-Alive': 'timeout=5', Connection: 'keep-alive, X-Hop', 'X-Hop': '1' }, []), 200);
    assert.equal(await raw('POST', '/v1/updates', { 'Transfer-Encoding': 'chunked' }, [Buffer.alloc(2), Buffer.alloc(1)]), 400, 'a chunked malformed update reaches the server');
    assert.equal(await raw('POST', '/v1/updates', {}, [Buffer.alloc(200 * 1024)]), 413);
  });

  it('recommends, changes with browsing, shows reasons, erases', async () => {
    const errors: string[] = [];
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    // The SDK fetches the shop's neighbour table as it starts: a plain GET with nothing of the shopper.
    const neighborRequests: Request[] = [];
    page.on('request', (r) => {
      if (new URL(r.url()).pathname === '/neighbors.lrn') neighborRequests.push(r);
    });
    // (A first visit asks for consent; ?consent=granted starts with it, as a shopper's "Accept all".)
    await page.goto(`${shop.url}/?backend=wasm&consent=granted&shoppers=12`);
    await page.waitForSelector('body[data-state="ready"]', { timeout: 45_000 });
    await page.waitForFunction(() => /neighbour table \(300 products × 16 neighbours/.test(document.getElementById('m-neighbors')?.textContent ?? ''), null, { timeout: 15_000 });
    assert.equal(neighborRequests.length, 1);
    assert.equal(neighborRequests[0]!.method(), 'GET');
    assert.equal(neighborRequests[0]!.postData(), null);
    assert.equal(new URL(neighborRequests[0]!.url()).search, '');
    // From here on, every request the SDK's worker makes to the federated API. (Before "ready" the
    // page read /v1/config for its own display; its polling of /v1/health and /v1/rounds/current
    // carries nothing about the shopper and is not the SDK's.)
    const sdkRequests: Request[] = [];
    page.on('request', (r) => {
      if (/\/v1\/(config|model|updates)$/.test(new URL(r.url()).pathname)) sdkRequests.push(r);
    });
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
      if (id === ids[15]) {
        await page.click('#p-add');
        // The page's live region is inert behind the modal dialog: the dialog says it in its own.
        assert.equal(await page.getAttribute('#p-note', 'role'), 'status');
        assert.ok((await text(page, '#p-note')).startsWith(`Added ${title} to your cart`), await text(page, '#p-note'));
        // Rating stars are targets of at least 24 × 24 px (WCAG 2.5.8).
        const stars = await page.$$eval('#p-rating .star', (els) => els.map((e) => Math.min(e.getBoundingClientRect().width, e.getBoundingClientRect().height)));
        assert.ok(stars.length === 5 && stars.every((d) => d >= 24), JSON.stringify(stars));
      }
      await page.click('#product-modal .modal-close button');
      // Focus goes back to the card the product was opened from.
      await page.waitForFunction((i) => document.activeElement?.closest('#grid .card')?.getAttribute('data-item-id') === i, id, { timeout: 5_000 });
    }
    assert.equal(await text(page, '#cart-count'), '1');
    // The cart button's name has the count its badge shows.
    assert.equal(await page.getByRole('button', { name: 'Cart, 1 item', exact: true }).count(), 1);

    // The shelf changes and now explains itself from this shopper's own history: once it was
    // computed with all of it (four views and the add to cart; it refreshes after each event, and
    // with the neighbour table even the first view already gives personal picks).
    await page.waitForFunction(
      (old) => document.body.dataset.recs !== old && Number(document.body.dataset.recsHistory) >= 5 && document.querySelector('#recs .reason-personal') !== null,
      before,
      { timeout: 20_000 },
    );
    const warm = await reasonsOf(page);
    const personal = warm.filter((r) => r.kind === 'personal');
    assert.ok(personal.length > 0 && personal.every((r) => r.text.startsWith('Because you ')), JSON.stringify(warm));
    const after = (await recsOf(page)).split(',');
    assert.ok(after.every((id) => ![ids[4], ids[9], ids[15], ids[22]].includes(id)), 'items already seen are not recommended');

    // The grid in this shopper's order (recommend({ candidates }) over the products shown): the
    // same products, seen ones too, in another order; a category filter keeps to its products.
    const gridIds = () => page.$$eval('#grid .card', (els) => els.map((e) => (e as HTMLElement).dataset.itemId!));
    const shopOrder = await gridIds();
    await page.selectOption('#order', 'you');
    await page.waitForFunction(() => document.body.dataset.gridOrder === 'you', null, { timeout: 15_000 });
    const mine = await gridIds();
    assert.deepEqual([...mine].sort(), [...shopOrder].sort());
    assert.notDeepEqual(mine, shopOrder);
    // Ranked on the shopper's own actions only: a refresh (here the one after "Train now") leaves the
    // cards where they are, so that nothing moves under the pointer.
    await page.evaluate(() => ((document.querySelector('#grid .card') as HTMLElement).dataset.kept = '1'));
    // (A busy button is aria-disabled, not disabled: that would drop keyboard focus to <body>.)
    const trainIdle = () => page.waitForFunction(() => document.getElementById('train-now')!.getAttribute('aria-disabled') !== 'true', null, { timeout: 30_000 });
    await trainIdle();
    const rendersBefore = Number(await page.evaluate(() => document.body.dataset.recsRenders));
    await page.focus('#train-now');
    await page.keyboard.press('Enter');
    await page.waitForFunction((n) => Number(document.body.dataset.recsRenders) > n, rendersBefore, { timeout: 30_000 });
    await trainIdle();
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'train-now', 'focus stays on "Train now"');
    assert.deepEqual(await gridIds(), mine, 'a refresh does not reorder the personal grid');
    assert.equal(await page.$eval('#grid .card', (e) => (e as HTMLElement).dataset.kept), '1', 'nor rebuild its cards');
    const category = await page.$eval('#category option:nth-child(2)', (o) => (o as HTMLOptionElement).value);
    await page.evaluate(() => (document.body.dataset.gridOrder = ''));
    await page.selectOption('#category', category);
    await page.waitForFunction(() => document.body.dataset.gridOrder === 'you', null, { timeout: 15_000 });
    const inCategory = await page.$$eval('#grid .card .card-cat', (els) => els.map((e) => e.textContent));
    assert.ok(inCategory.length > 0 && new Set(inCategory).size === 1, JSON.stringify(inCategory));
    await page.selectOption('#category', '');
    await page.selectOption('#order', 'shop');
    assert.deepEqual(await gridIds(), shopOrder);

    // Offers for you: chosen on the device, each with a reason from this shopper's own events.
    // (Any of them: a slot may go to exploration, whose offer may have no such event.)
    await page.waitForFunction(() => [...document.querySelectorAll('#offers [data-testid="offer-reason"]')].some((e) => e.textContent?.startsWith('Because you ')), null, { timeout: 15_000 });
    const offers = await page.$$eval('#offers .offer', (els) =>
      els.map((e) => ({ id: (e as HTMLElement).dataset.offerId!, reason: e.querySelector('[data-testid="offer-reason"]')?.textContent ?? '', explore: e.classList.contains('explore') })),
    );
    assert.ok(offers.length >= 1 && offers.every((o) => o.reason.length > 0), JSON.stringify(offers));
    const titles = await page.$$eval('#grid .card .card-title', (els) => els.map((e) => e.textContent ?? ''));
    assert.ok(
      offers.some((o) => titles.some((t) => o.reason === `Because you viewed ${t}` || o.reason === `Because you added ${t}`)),
      `an offer's reason names a product this shopper viewed: ${JSON.stringify(offers)}`,
    );
    // The README's picture: personal picks and offers with their reasons.
    await page.evaluate(() => window.scrollTo(0, 0));
    await screenshot(page, 'shop.png', true);
    // The first offer on screen now (a refresh may have changed the list since it was read): one
    // click in the page, so that the list cannot change between finding the button and clicking it.
    const [firstOffer, auditsAtUse] = await page.evaluate(() => {
      const o = document.querySelector<HTMLElement>('#offers .offer')!;
      o.querySelector<HTMLButtonElement>('.use-offer')!.click();
      return [o.dataset.offerId!, Number(document.body.dataset.audits)] as const;
    });
    await page.waitForFunction((id) => document.getElementById('cart-offer')?.hidden === false && document.getElementById('status')?.textContent?.includes('Offer “'), firstOffer);
    // After the refresh the redemption brings (the offer allows one, so rec.offers() no longer picks
    // it), it keeps its place on the shelf, marked applied: no other offer slides under the pointer.
    await page.waitForFunction((n) => Number(document.body.dataset.audits) > n, auditsAtUse, { timeout: 15_000 });
    const usedCard = await page.$eval('#offers .offer', (e) => ({
      id: (e as HTMLElement).dataset.offerId,
      applied: e.classList.contains('applied'),
      button: e.querySelector('.use-offer')?.textContent,
      disabled: e.querySelector('.use-offer')?.getAttribute('aria-disabled'),
    }));
    assert.deepEqual(usedCard, { id: firstOffer, applied: true, button: 'Applied ✓', disabled: 'true' });
    // "Use offer" only puts it on the cart: the redemption is recorded at checkout (that refresh read
    // the audit after the click).
    assert.equal(await text(page, '#privacy-counts tr[data-type="offer_redeemed"] td'), '0');

    // Check out with the offer applying: an item in its scope in the cart (and its minimum basket).
    const catalogItems = (JSON.parse(readFileSync(join(ROOT, 'examples', 'shop', 'catalog.json'), 'utf8')) as { items: Array<{ id: string; category: string; price: number }> }).items;
    const offerDefs = (await (await fetch(`${shop.url}/offers.json`)).json()).catalog.offers as Array<{
      id: string;
      minBasket?: number;
      scope: { kind: 'all' } | { kind: 'categories'; categories: string[] } | { kind: 'items'; itemIds: string[] };
    }>;
    const used = offerDefs.find((o) => o.id === firstOffer)!;
    const inScope = (it: { id: string; category: string }) =>
      used.scope.kind === 'all' || (used.scope.kind === 'categories' && used.scope.categories.includes(it.category)) || (used.scope.kind === 'items' && used.scope.itemIds.includes(it.id));
    const priceOf = (id: string) => catalogItems.find((it) => it.id === id)!.price;
    const extraAdds: string[] = [];
    let basket = priceOf(ids[15]!);
    const pricey = catalogItems.filter(inScope).sort((a, b) => b.price - a.price)[0]!;
    if (!inScope(catalogItems.find((it) => it.id === ids[15])!) || (used.minBasket ?? 0) > basket) {
      do {
        await page.click(`#grid .card[data-item-id="${pricey.id}"] .add`);
        extraAdds.push(pricey.id);
        basket += pricey.price;
      } while ((used.minBasket ?? 0) > basket);
    }
    await page.waitForFunction((n) => document.getElementById('cart-count')?.textContent === String(n), 1 + extraAdds.length);
    await page.click('#open-cart');
    assert.match(await text(page, '#cart-offer'), /^Offer applied: /);
    await page.click('#checkout');
    await page.waitForFunction(() => document.querySelector('#privacy-counts tr[data-type="offer_redeemed"] td')?.textContent === '1', null, { timeout: 15_000 });
    assert.match(await text(page, '#status'), /^Thank you! .* Offer “.*” used: −£/);
    assert.equal(await text(page, '#cart-count'), '0');
    const lines = [...new Set([ids[15]!, ...extraAdds])];

    // The automatic sync after training (once), then the privacy panel shows what left.
    await page.waitForSelector('body[data-syncs="1"]', { timeout: 30_000 });
    assert.match(await text(page, '#sync-result'), /^Synced automatically .*global version 0; uploaded [\d.]+ KB .*ε 4\.38 of 8\.00/);
    await page.waitForFunction(() => document.querySelectorAll('#a-egress tr').length >= 3, null, { timeout: 10_000 });

    // The page trained on the events it tracked and charted the loss.
    await page.waitForSelector('#loss-chart path.chart-line', { timeout: 20_000 });
    await page.waitForFunction(() => Number(document.getElementById('m-events')?.textContent) >= 5, null, { timeout: 10_000 });
    await page.waitForFunction(() => document.getElementById('f-health')?.textContent?.includes('online'), null, { timeout: 10_000 });
    assert.match(await text(page, '#f-version'), /^version 0/);


    // Privacy panel: the audit written out, and its figures equal what this test did and saw.
    await page.click('#open-privacy');
    await page.waitForFunction(() => document.querySelector('#privacy-counts tr[data-type="offer_redeemed"] td')?.textContent === '1', null, { timeout: 10_000 });
    // Offers shown after a redemption are new impressions, and impressions are events that can start
    // a training run whose refresh shows other offers: wait until no training runs and the shelf
    // has settled, then read the whole table from one rendering.
    let counts: Record<string, number> = {};
    const idle = () => page.waitForFunction(() => document.getElementById('train-now')!.getAttribute('aria-disabled') !== 'true', null, { timeout: 30_000 });
    for (let i = 0; i < 20; i++) {
      await idle();
      const offersNow = await page.evaluate(() => document.body.dataset.offers);
      await page.waitForTimeout(400);
      await idle();
      counts = await page.$$eval('#privacy-counts tr', (trs) =>
        Object.fromEntries(trs.map((tr) => [(tr as HTMLElement).dataset.type ?? 'total', Number(tr.querySelector('td')?.textContent)])),
      );
      if (offersNow === (await page.evaluate(() => document.body.dataset.offers)) && counts.total === Object.entries(counts).reduce((a, [k, v]) => a + (k === 'total' ? 0 : v), 0)) break;
    }
    assert.equal(counts.view, 4);
    assert.equal(counts.add_to_cart, 1 + extraAdds.length);
    assert.equal(counts.purchase, lines.length);
    assert.equal(counts.offer_redeemed, 1);
    const impressions = counts.offer_impression!;
    assert.ok(impressions >= offers.length, `offer impressions ${impressions} ≥ offers shown ${offers.length}`);
    const total = counts.total!;
    assert.equal(total, 4 + 1 + extraAdds.length + lines.length + impressions + 1, `views + cart + purchases + impressions + redemption (searches: none): ${JSON.stringify(counts)}`);
    assert.match(await text(page, '#a-storage'), /^IndexedDB “localrec”/);
    assert.match(await text(page, '#a-gpc'), /not sent/);
    assert.match(await text(page, '#a-consent'), /^Personalization: yes · sharing model updates: yes · sync allowed/);
    const egressRows = await page.$$eval('#a-egress tr', (trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent ?? '')));
    // The SDK logs the neighbour file by its whole URL (it may be on another host) and the federated
    // API by path; the table shows a URL on the page's own address by its path, the whole one in the
    // cell's title.
    const sdkSeen = [...neighborRequests.map((r) => `${r.method()} ${new URL(r.url()).pathname}`), ...sdkRequests.map((r) => `${r.method()} ${new URL(r.url()).pathname}`)];
    assert.deepEqual(egressRows.map((r) => r[1]).reverse(), sdkSeen, 'the egress table lists exactly the requests the SDK made');
    assert.ok(
      (await page.getAttribute('#a-egress tr[data-kind="neighbors"] td.request', 'title'))?.startsWith(`GET ${shop.url}/neighbors.lrn: `),
      'the whole URL in the title',
    );
    // Its Bytes and Status columns are in view (the table does not scroll sideways), and at phone
    // width the page does not either.
    assert.ok(await page.$eval('.egress-wrap', (e) => e.scrollWidth <= e.clientWidth), 'the egress table fits its panel');
    await page.setViewportSize({ width: 390, height: 844 });
    assert.deepEqual(await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]), [390, 390], 'no sideways scroll at 390 px');
    assert.ok(await page.$eval('.egress-wrap', (e) => e.scrollWidth <= e.clientWidth), 'the egress table fits at 390 px');
    await page.setViewportSize({ width: 320, height: 640 });
    assert.deepEqual(await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]), [320, 320], 'no sideways scroll at 320 px');
    await page.setViewportSize({ width: 1400, height: 1000 });
    assert.ok(sdkSeen.includes('POST /v1/updates'), JSON.stringify(sdkSeen));
    const updateBytes = sdkRequests.find((r) => r.method() === 'POST')!.postDataBuffer()!.length;
    assert.match(await text(page, '#a-egress-summary'), new RegExp(`^${sdkSeen.length} requests, ${(updateBytes / 1024).toFixed(1)} KB sent in all`));
    assert.equal(await page.getAttribute('#a-eps', 'data-epsilon'), '4.38');
    assert.match(await text(page, '#a-eps'), /in 1 sync\. At this server’s noise this device can sync once more;/, 'σ = 1: two syncs fit ε = 8');
    assert.match(await text(page, '#a-eps'), /ε 4\.38 of 8\.00 spent \(δ = 1e-5\) in 1 sync\./);

    // Export: a JSON file with exactly the events the test made, plus the egress log.
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
    assert.match(download.suggestedFilename(), /^localrec-export-.*\.json$/);
    const exported = JSON.parse(readFileSync((await download.path())!, 'utf8'));
    assert.equal(exported.format, 'localrec-export');
    const kinds = (t: string) => exported.events.filter((e: { type: string }) => e.type === t);
    assert.deepEqual(kinds('view').map((e: { itemId: string }) => e.itemId), [ids[4], ids[9], ids[15], ids[22]]);
    assert.deepEqual(kinds('add_to_cart').map((e: { itemId: string }) => e.itemId), [ids[15], ...extraAdds]);
    assert.deepEqual(kinds('purchase').map((e: { itemId: string }) => e.itemId), lines);
    assert.deepEqual(kinds('offer_redeemed').map((e: { offerId: string }) => e.offerId), [firstOffer]);
    assert.equal(exported.events.length, total);
    assert.equal(exported.egressLog.length, sdkSeen.length);
    // The side panels scroll inside a sticky column; lay them out flat for the picture.
    await page.evaluate(() => document.querySelector('.panels')!.setAttribute('style', 'position: static; max-height: none; overflow: visible'));
    await page.locator('#privacy-panel').screenshot({ path: join(ROOT, 'test-results', 'shop-privacy.png') });
    await page.evaluate(() => document.querySelector('.panels')!.removeAttribute('style'));

    // Simulated shoppers (real retail customers, each a device running syncOnce) move the global
    // model on; "Sync now" then pulls the new version (the device's second and last sync at σ = 1).
    if (!existsSync(RETAIL_DATA)) {
      // Without the data the button is off from the start and says why.
      assert.equal(await page.isDisabled('#simulate'), true);
      assert.match(await text(page, '#sim-status'), /online-retail data is missing/);
    } else {
      await page.click('#simulate');
      await page.waitForFunction(() => document.body.dataset.sim === 'done', null, { timeout: 45_000 });
      const sim = await text(page, '#sim-status');
      assert.match(sim, /^Done: 12 of 12 shoppers synced in \d+ s · global model version 0 → [1-9]/, sim);
      assert.match(sim, /hit rate [\d.]+% → [\d.]+% \(random picks: 3\.3%\)/, sim);
      const published = (await (await fetch(`${shop.url}/v1/health`)).json()).version;
      assert.ok(published >= 4, `12 shoppers with rounds of 3 (plus the page's update) publish ≥ 4 versions, got ${published}`);
      await page.focus('#sync-now');
      await page.keyboard.press('Enter');
      await page.waitForSelector('body[data-syncs="2"]', { timeout: 30_000 });
      assert.equal(await page.evaluate(() => document.activeElement?.id), 'sync-now', 'focus stays on "Sync now"');
      assert.match(await text(page, '#sync-result'), new RegExp(`^Synced at .*now on global version ${published};`));
      // The panel re-reads stats() after the sync result is shown: wait for it, then check it.
      await page.waitForFunction((v) => document.getElementById('f-local')?.textContent?.startsWith(`version ${v}`), published, { timeout: 10_000 }).catch(() => undefined);
      assert.match(await text(page, '#f-local'), new RegExp(`^version ${published}`));
      // A third sync would pass ε = 8: the audit says so, and "Sync now" then only receives
      // (sync({ contribute: false })): nothing uploaded, no ε spent, and the page says why.
      await page.waitForFunction(() => /in 2 syncs\. At this server’s noise this device can send no more updates/.test(document.getElementById('a-eps')?.textContent ?? ''), null, { timeout: 10_000 });
      const before = sdkRequests.filter((r) => r.method() === 'POST').length;
      await page.click('#sync-now');
      await page.waitForSelector('body[data-syncs="3"]', { timeout: 20_000 });
      assert.match(await text(page, '#sync-result'), new RegExp(`^Received at .*now on global version ${published}.*Nothing sent: this device’s privacy budget has no room for another update`));
      assert.equal(await page.evaluate(() => document.body.dataset.syncErrors), undefined, 'no PrivacyBudgetError');
      assert.equal(sdkRequests.filter((r) => r.method() === 'POST').length, before, 'nothing uploaded past the budget');
      assert.equal(await page.getAttribute('#a-eps', 'data-epsilon'), '6.57', 'no ε spent by receiving');
    }

    // Erase (two clicks): nothing is left, the consent answer included: the banner asks again (focus
    // in it), although this page was opened with ?consent=granted, and nothing is stored, trained
    // or sent before an answer.
    const postsAtErase = sdkRequests.filter((r) => r.method() === 'POST').length;
    await page.click('#erase');
    // The question is said, not only written on the button.
    assert.match(await text(page, '#announcer'), /^Erase everything\? .*Press “Erase everything” again/);
    await page.click('#erase');
    await page.waitForSelector('body[data-erased="1"]', { timeout: 20_000 });
    assert.equal(await page.isVisible('#consent-banner'), true);
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'consent-banner', 'focus goes to the banner');
    assert.match(await text(page, '#status'), /^Erased: .*until you answer the banner/);
    await page.waitForFunction(() => (document.getElementById('a-consent')?.textContent ?? '').startsWith('Personalization: no · sharing model updates: no · sync off'), null, { timeout: 10_000 });
    assert.equal(await page.isDisabled('#sync-now'), true);
    assert.deepEqual(await page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name)), [], 'no database before consent');
    await page.waitForFunction(() => document.querySelector('#privacy-counts tr[data-type="view"] td')?.textContent === '0', null, { timeout: 10_000 });
    assert.equal(await text(page, '[data-testid="privacy-total"]'), '0');
    assert.equal(await text(page, '#privacy-counts tr[data-type="add_to_cart"] td'), '0');
    assert.equal(await text(page, '#privacy-counts tr[data-type="offer_redeemed"] td'), '0');
    assert.equal(await text(page, '#cart-count'), '0');
    assert.equal(await page.getAttribute('#a-eps', 'data-epsilon'), '0.00', 'the ε spent went with the erase');
    // The egress log went too: the fresh recommender's log holds only its own fetch of the shop's
    // neighbour table (once the panel has re-read the audit), nothing of the erased shopper's syncs.
    await page.waitForFunction(() => document.querySelectorAll('#a-egress tr').length <= 1, null, { timeout: 10_000 });
    const egressAfter = await page.$$eval('#a-egress tr', (trs) => trs.map((tr) => tr.querySelectorAll('td')[1]?.textContent ?? ''));
    assert.ok(egressAfter.every((e) => e === 'GET /neighbors.lrn'), `egress after erase: ${JSON.stringify(egressAfter)}`);
    const erased = await reasonsOf(page);
    assert.ok(erased.every((r) => r.kind === 'popular'), 'after erase the shelf is back to bestsellers');
    assert.match(await text(page, '#status'), /Erased/);
    // Answered: focus goes back to the button, the offers on screen are recorded as shown (new
    // events), and still nothing is sent ("Only on this device").
    await page.click('#consent-local');
    await page.waitForSelector('#consent-banner', { state: 'hidden' });
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'erase', 'focus back on the button');
    await page.waitForFunction(() => Number(document.querySelector('#privacy-counts tr[data-type="offer_impression"] td')?.textContent ?? 0) > 0, null, { timeout: 15_000 });
    // The SDK's database was deleted; the new recommender's holds no event of the erased shopper and
    // no ε (its egress log, checked above, holds only its own neighbour-table fetch).
    const stored = await page.evaluate(async () => {
      const db = await new Promise<IDBDatabase>((res, rej) => {
        const r = indexedDB.open('localrec');
        r.onsuccess = () => res(r.result);
        r.onerror = () => rej(r.error);
      });
      const names = [...db.objectStoreNames];
      // (No named helper: tsx would wrap it in a __name() call that the page does not have.)
      const [events, meta] = await Promise.all(
        (
          [
            ['events', 'getAll'],
            ['meta', 'getAllKeys'],
          ] as const
        ).map(([n, what]) =>
          names.includes(n)
            ? new Promise<unknown[]>((res) => {
                const q = db.transaction(n).objectStore(n)[what]();
                q.onsuccess = () => res(q.result as unknown[]);
              })
            : Promise.resolve([] as unknown[]),
        ),
      );
      const out = { stores: names, events: (events as Array<{ type: string }>).map((e) => e.type), meta: meta!.map(String) };
      db.close();
      return out;
    });
    assert.ok(stored.events.every((t) => t === 'offer_impression'), `events after erase: ${JSON.stringify(stored)}`);
    assert.ok(!stored.meta.includes('privacy'), `meta after erase: ${JSON.stringify(stored)}`);
    // A model record may be back (the fresh page trains on its impressions: zero steps), but it is
    // the initial one, not the synced version.
    assert.equal(await text(page, '#m-steps'), '0');
    await page.waitForFunction(() => document.getElementById('f-local')?.textContent?.startsWith('version 0'), null, { timeout: 10_000 }).catch(() => undefined);
    assert.match(await text(page, '#f-local'), /^version 0/);
    await page.evaluate(() => document.querySelector('.panels')!.setAttribute('style', 'position: static; max-height: none; overflow: visible'));
    await page.locator('#rounds-panel').screenshot({ path: join(ROOT, 'test-results', 'shop-rounds.png') });
    await page.locator('#privacy-panel').screenshot({ path: join(ROOT, 'test-results', 'shop-privacy-erased.png') });
    await page.evaluate(() => document.querySelector('.panels')!.removeAttribute('style'));

    // A product opened from "Recommended for you" with the keyboard: the view rebuilds the shelf while
    // the dialog is open, so Escape gives focus to the card now in the opener's place, not to <body>.
    const rendersAtOpen = Number(await page.evaluate(() => document.body.dataset.recsRenders));
    await page.focus('#recs .card:nth-child(2) .card-hit');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#product-modal[open]');
    await page.waitForFunction((n) => Number(document.body.dataset.recsRenders) > n, rendersAtOpen, { timeout: 15_000 });
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => document.activeElement?.matches('#recs .card:nth-child(2) .card-hit') === true, null, { timeout: 5_000 });
    assert.equal(sdkRequests.filter((r) => r.method() === 'POST').length, postsAtErase, 'nothing uploaded since the erase');

    assert.deepEqual(errors, []);
    await page.close();
  });

  it('asks for consent on a first visit and stores nothing before it', async () => {
    const { page, errors, posts } = await watchedPage();
    // Offers that do not load say so on their shelf (instead of a shelf that is not there).
    await page.route('**/offers.json', (r) => r.fulfill({ status: 500, body: 'broken' }));
    await page.goto(`${shop.url}/?backend=wasm`);
    await page.waitForSelector('body[data-state="ready"]', { timeout: 45_000 });
    assert.equal(await page.isVisible('#consent-banner'), true);
    await page.waitForFunction(() => /could not be loaded/.test(document.getElementById('offers')?.textContent ?? ''), null, { timeout: 10_000 });
    assert.equal(await page.isVisible('#offers-section'), true);
    assert.equal(await text(page, '#offers'), 'The shop’s offers could not be loaded (offers.json: HTTP 500), so none are shown on this visit.');
    const id = await page.$eval('#grid .card', (e) => (e as HTMLElement).dataset.itemId!);
    await page.click(`#grid .card[data-item-id="${id}"] .card-hit`);
    await page.waitForSelector('#product-modal[open] #similar .reason', { timeout: 15_000 });
    await page.click('#product-modal .modal-close button');
    await page.waitForFunction(() => /dropped before consent/.test(document.getElementById('a-consent')?.textContent ?? ''), null, { timeout: 10_000 });
    // The view, and the impressions of the offers on screen, were dropped on the page.
    const dropped = Number(/· (\d+) events? dropped before consent/.exec(await text(page, '#a-consent'))?.[1]);
    assert.ok(dropped >= 1, await text(page, '#a-consent'));
    assert.match(await text(page, '#a-consent'), /^Personalization: no · sharing model updates: no · sync off/);
    assert.equal(await text(page, '[data-testid="privacy-total"]'), '0');
    assert.match(await text(page, '#a-storage'), /^nowhere/);
    assert.equal(await page.isDisabled('#sync-now'), true);
    assert.deepEqual(await page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name)), [], 'no database before consent');

    await page.click('#consent-local');
    await page.waitForSelector('#consent-banner', { state: 'hidden' });
    // The answered banner does not leave focus on <body>: it goes to the shelf the answer changes.
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'recs-section');
    await page.waitForFunction(() => (document.getElementById('a-consent')?.textContent ?? '').startsWith('Personalization: yes · sharing model updates: no · sync off'), null, { timeout: 10_000 });
    assert.match(await text(page, '#a-storage'), /^IndexedDB “localrec”/);
    assert.equal(await page.isDisabled('#sync-now'), true, 'no sync without consent to sharing updates');
    assert.ok((await page.$$('#a-consent-history li')).length >= 1);

    // The page remembers the answer (the host's job): after a reload the banner does not ask
    // again, and the panel shows what is stored instead of "nothing stored". The same answer as
    // last time adds nothing to the consent history.
    const history = await page.$$eval('#a-consent-history li', (lis) => lis.map((li) => li.textContent));
    await page.reload();
    await page.waitForSelector('body[data-state="ready"]', { timeout: 45_000 });
    await page.waitForFunction(() => (document.getElementById('a-consent')?.textContent ?? '').startsWith('Personalization: yes · sharing model updates: no'), null, { timeout: 10_000 });
    assert.equal(await page.isVisible('#consent-banner'), false);
    assert.match(await text(page, '#a-storage'), /^IndexedDB “localrec”/);
    assert.deepEqual(await page.$$eval('#a-consent-history li', (lis) => lis.map((li) => li.textContent)), history);
    assert.deepEqual(posts, [], 'nothing was posted');
    assert.deepEqual(errors, []);
    await page.close();
  });

  it('remembers "Only on this device" over ?consent=granted', async () => {
    const { page, errors, posts } = await watchedPage();
    const consentNow = () => text(page, '#a-consent');
    // ?consent=granted: a first visit starts granted, without the banner.
    await page.goto(`${shop.url}/?backend=wasm&consent=granted`);
    await page.waitForSelector('body[data-state="ready"]', { timeout: 45_000 });
    assert.match(await consentNow(), /^Personalization: yes · sharing model updates: yes · sync allowed/);
    assert.equal(await page.isVisible('#consent-banner'), false);
    // "Change consent" far down the page: the banner (at the top) comes into view with focus in it,
    // and the answer gives focus back to the button.
    await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight));
    await page.click('#show-consent');
    await page.waitForFunction(
      () => {
        const b = document.getElementById('consent-banner')!;
        const r = b.getBoundingClientRect();
        return document.activeElement === b && r.top >= 0 && r.bottom <= window.innerHeight;
      },
      null,
      { timeout: 5_000 },
    );
    // Worded for a shopper with data: what "Decline" would delete.
    assert.match(await text(page, '#consent-decline-note'), /^“Decline” deletes .*\d+ events?, the personal model/);
    await page.click('#consent-local');
    await page.waitForSelector('#consent-banner', { state: 'hidden' });
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'show-consent');
    await page.waitForFunction(() => (document.getElementById('a-consent')?.textContent ?? '').startsWith('Personalization: yes · sharing model updates: no · sync off'), null, { timeout: 10_000 });
    const history = await page.$$eval('#a-consent-history li', (lis) => lis.map((li) => li.textContent));
    // After a reload the answer holds: the page passes it back instead of 'granted'; and on the
    // default page, which would otherwise ask, the banner stays away.
    await page.reload();
    await page.waitForSelector('body[data-state="ready"]', { timeout: 45_000 });
    await page.waitForFunction(() => (document.getElementById('a-consent')?.textContent ?? '').startsWith('Personalization: yes'), null, { timeout: 10_000 });
    assert.match(await consentNow(), /^Personalization: yes · sharing model updates: no · sync off/);
    assert.equal(await page.isDisabled('#sync-now'), true);
    assert.equal(await page.isVisible('#consent-banner'), false);
    assert.deepEqual(await page.$$eval('#a-consent-history li', (lis) => lis.map((li) => li.textContent)), history, 'the same answer again adds nothing');
    await page.goto(`${shop.url}/?backend=wasm`);
    await page.waitForSelector('body[data-state="ready"]', { timeout: 45_000 });
    await page.waitForFunction(() => (document.getElementById('a-consent')?.textContent ?? '').startsWith('Personalization: yes'), null, { timeout: 10_000 });
    assert.match(await consentNow(), /^Personalization: yes · sharing model updates: no · sync off/);
    assert.equal(await page.isVisible('#consent-banner'), false);

    // A search longer than an event holds (512 characters) is cut to it, not refused with an error.
    assert.equal(await page.getAttribute('#search', 'maxlength'), '512');
    await page.evaluate(() => {
      const s = document.getElementById('search') as HTMLInputElement;
      s.value = 'lantern '.repeat(80);
      s.dispatchEvent(new Event('input'));
      s.form!.requestSubmit();
    });
    await page.waitForFunction(() => document.querySelector('#privacy-counts tr[data-type="search"] td')?.textContent === '1', null, { timeout: 10_000 });
    assert.notEqual(await page.getAttribute('#status', 'data-kind'), 'error', await text(page, '#status'));
    assert.deepEqual(posts, [], 'nothing was posted');
    assert.deepEqual(errors, []);
    await page.close();
  });

  it('says what is wrong with a server that lacks the SDK build or the demo endpoints, or is unhealthy', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    // As `localrec serve --static examples/shop` would answer, with a store that is failing.
    await page.route('**/dist/**', (r) => r.fulfill({ status: 404, body: 'not found' }));
    await page.route('**/demo/simulate/status', (r) => r.fulfill({ status: 404, body: 'not found' }));
    await page.route('**/v1/rounds/current', (r) => r.fulfill({ status: 503, contentType: 'application/json', body: JSON.stringify({ error: 'the server cannot reach its storage right now', reason: 'storage-unavailable' }) }));
    await page.goto(`${shop.url}/?backend=wasm`);
    await page.waitForSelector('body[data-state="failed"]', { timeout: 20_000 });
    assert.match(await text(page, '#status'), /does not serve the SDK build at \/dist\/.*npm start/);
    await page.waitForFunction(() => /unhealthy/.test(document.getElementById('f-health')?.textContent ?? ''), null, { timeout: 10_000 });
    assert.match(await text(page, '#f-pending'), /\/v1\/rounds\/current answered HTTP 503: the server cannot reach its storage/);
    await page.waitForFunction(() => /Not available here/.test(document.getElementById('sim-status')?.textContent ?? ''), null, { timeout: 10_000 });
    assert.equal(await page.isDisabled('#simulate'), true);
    await page.close();
  });

  it('turns the simulation off without the retail data: one line at start, the button off', async () => {
    const lines: string[] = [];
    const missing = join(dataDir, 'no-such-online-retail.csv.gz');
    const bare = await startShop({ port: 0, dataDir: null, retailData: missing, log: (l) => lines.push(l) });
    try {
      assert.deepEqual(
        lines.filter((l) => l.includes(missing)),
        [`the online-retail data is missing (${missing}): the page's "Simulate shoppers" button is off without it`],
      );
      const status = await (await fetch(`${bare.url}/demo/simulate/status`)).json();
      assert.equal(status.phase, 'idle');
      assert.match(status.unavailable, /online-retail data is missing/);
      const res = await fetch(`${bare.url}/demo/simulate`, { method: 'POST', headers: { 'Content-Type': 'application/json' } });
      assert.equal(res.status, 503);
      assert.match((await res.json()).error, /online-retail data is missing/);
      assert.equal(bare.simulation.running, false, 'nothing started, so nothing fails later with a stack');
      const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
      await page.goto(`${bare.url}/?backend=wasm`);
      await page.waitForFunction(() => /online-retail data is missing/.test(document.getElementById('sim-status')?.textContent ?? ''), null, { timeout: 20_000 });
      assert.equal(await page.isDisabled('#simulate'), true);
      await page.close();
    } finally {
      await bare.close();
    }
  });
});
