import { createRecommender } from '/dist/index.js';

// Reports to the test through `window.result`; the page itself runs under the server's CSP header.
(async () => {
  try {
    const rec = await createRecommender({
      catalog: { items: Array.from({ length: 20 }, (_, i) => ({ id: `c${i}`, popularity: 20 - i })) },
      backend: 'wasm',
      dbName: 'csp-test',
      autoTrainEvery: 0,
    });
    rec.track({ type: 'view', itemId: 'c1' });
    rec.track({ type: 'view', itemId: 'c2' });
    await rec.train({ epochs: 2 });
    const recs = await rec.recommend({ k: 3 });
    const stats = await rec.stats();
    await rec.erase();
    window.result = { ok: true, backend: stats.backend, recs: recs.length };
  } catch (e) {
    window.result = { ok: false, error: `${e.name}: ${e.message}` };
  }
})();
