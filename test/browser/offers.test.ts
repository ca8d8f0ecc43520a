/** Offers through the worker in Chromium: signature checked on the device, picks follow behaviour. */
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import type { Browser } from 'playwright-core';
import { generateOfferKeys, signOfferCatalog } from '../../src/offers/signing.js';
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
  items: [
    ...Array.from({ length: 10 }, (_, i) => ({ id: `mug-${i}`, title: `Mug ${i}`, category: 'mug', price: 6 })),
    ...Array.from({ length: 10 }, (_, i) => ({ id: `bag-${i}`, title: `Bag ${i}`, category: 'bag', price: 9 })),
  ],
};

it('setOffers() checks the signature in the worker; offers() follows what the shopper did, with reasons', async () => {
  const keys = await generateOfferKeys();
  const offerCatalog = {
    version: 1,
    issuedAt: Date.now(),
    currency: 'GBP',
    offers: [
      { id: 'mugs10', title: '10% off mugs', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'categories', categories: ['mug'] }, hints: { margin: 0.4, typicalSpend: 12 } },
      { id: 'bags10', title: '10% off bags', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'categories', categories: ['bag'] }, hints: { margin: 0.4, typicalSpend: 12 } },
    ],
  };
  const signed = await signOfferCatalog(offerCatalog as never, keys.privateJwk);
  const tampered = JSON.parse(JSON.stringify(signed));
  tampered.catalog.offers[0].discount.percent = 90;

  const page = await openPage(browser, `${server.url}/test/browser/pages/sdk.html`);
  await page.waitForFunction(() => (window as any).ready === true);
  const r = await page.evaluate(
    async ({ catalog, signed, tampered, publicJwk }) => {
      const { createRecommender, SignatureError } = (window as any).localrec;
      const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'offers-test', autoTrainEvery: 0, offers: { publicKey: publicJwk } });
      let refused = '';
      try {
        await rec.setOffers(tampered);
      } catch (e: any) {
        refused = `${e.name} ${e.problem} ${e instanceof SignatureError}`;
      }
      const before = await rec.offers({ k: 2 });
      await rec.setOffers(signed);
      for (const id of ['bag-1', 'bag-2', 'bag-3']) rec.track({ type: 'view', itemId: id });
      rec.track({ type: 'add_to_cart', itemId: 'bag-2' });
      const shown = await rec.offers({ k: 1, seed: 3, exploration: 0 });
      await rec.erase();
      return { refused, before, shown };
    },
    { catalog: CATALOG, signed, tampered, publicJwk: keys.publicJwk },
  );
  assert.equal(r.refused, 'SignatureError mismatch true', 'the error keeps its class and its problem across the worker boundary');
  assert.deepEqual(r.before, [], 'no offers before a valid catalog');
  assert.equal(r.shown.length, 1);
  assert.equal(r.shown[0].offerId, 'bags10');
  assert.equal(r.shown[0].explore, false);
  assert.match(r.shown[0].reason, /Bag [123]/, 'the reason cites a bag the shopper looked at');
  // The latest bag event is the add to cart of bag-2: the structured reason crosses the worker too.
  assert.deepEqual(r.shown[0].why, { kind: 'event', itemId: 'bag-2', event: 'add_to_cart' });
  await page.close();
});
