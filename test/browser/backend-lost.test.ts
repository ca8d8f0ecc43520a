/**
 * A WebGL context lost at run time in the worker (real Chromium): the engine moves to another
 * backend and never answers with rows outside the asked category (a lost context reads back zeros).
 */
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import type { Browser } from 'playwright-core';
import { launch, openPage, serveRepo, type StaticServer } from './harness.js';

let server: StaticServer;
let browser: Browser;
before(async () => {
  server = await serveRepo();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.close();
});

const CATALOG = {
  items: Array.from({ length: 24 }, (_, i) => ({ id: `sku-${i}`, title: `Item ${i}`, category: i % 2 ? 'mug' : 'bag', popularity: 24 - i })),
};

it('a lost WebGL context: recommend({ category }) answers that category only, on another backend, and stats() says why', async (t) => {
  const page = await openPage(browser, `${server.url}/test/browser/pages/sdk.html`);
  await page.waitForFunction(() => (window as any).ready === true);
  const started = await page.evaluate(async (catalog) => {
    const w = window as any;
    try {
      w.rec = await w.localrec.createRecommender({ catalog, backend: 'webgl', dbName: 'backend-lost-test', autoTrainEvery: 0 });
    } catch (e: any) {
      return `${e.name}: ${e.message}`;
    }
    for (const id of ['sku-1', 'sku-2', 'sku-5']) w.rec.track({ type: 'view', itemId: id });
    const r = await w.rec.recommend({ k: 4, category: 'mug' });
    return r.length;
  }, CATALOG);
  if (typeof started === 'string') {
    t.skip(`WebGL is not available in this headless Chromium (${started})`);
    await page.close();
    return;
  }
  assert.equal(started, 4);
  // The test-only hook in the worker's own scope (src/engine/worker.ts): WEBGL_lose_context.
  const worker = page.workers()[0]!;
  assert.equal(await worker.evaluate(() => (globalThis as any).__localrecLoseBackend()), 'webgl');
  const r = await page.evaluate(async () => {
    const rec = (window as any).rec;
    const mugs = await rec.recommend({ k: 4, category: 'mug' });
    const s = await rec.stats();
    await rec.erase();
    return { mugs: mugs.map((x: any) => [x.itemId, x.score]), backend: s.backend, reason: s.backendReason, lastError: s.lastError };
  });
  assert.equal(r.mugs.length, 4);
  for (const [id] of r.mugs) assert.equal(Number(String(id).slice(4)) % 2, 1, `${id} is not a mug`);
  assert.ok(r.mugs.some(([, score]: [string, number]) => score !== 0), 'real scores, not the zeros a lost context reads back');
  assert.notEqual(r.backend, 'webgl');
  assert.match(r.reason, /^fell back from webgl: its context was lost/);
  assert.match(r.lastError ?? '', /^ModelError: the webgl backend failed/);
  await page.close();
});
