/**
 * The on-device loop in real Chromium: the built bundle, a real module Worker, real IndexedDB,
 * training on the WASM and WebGPU (SwiftShader here) backends.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Browser, Page } from 'playwright-core';
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
  items: Array.from({ length: 60 }, (_, i) => ({
    id: `sku-${i}`,
    title: `Item ${i}`,
    category: i % 2 ? 'mugs' : 'bags',
    price: 2 + i,
    popularity: 60 - i,
  })),
};

async function sdkPage(): Promise<Page> {
  const page = await openPage(browser, `${server.url}/test/browser/pages/sdk.html`);
  await page.waitForFunction(() => (window as any).ready === true);
  return page;
}

describe('SDK in a cross-origin isolated page (COOP + COEP: SharedArrayBuffer available)', () => {
  it('starts, probes wasm among the backends, trains and recommends', async () => {
    const isolated = await serveRepo(() => ({ 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' }));
    const page = await openPage(browser, `${isolated.url}/test/browser/pages/sdk.html`);
    // The threaded WASM build's workers failed here with "t is not defined": no error of the page's
    // or its workers', and no request that failed but the page's favicon.
    const errors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error' && !/^Failed to load resource/.test(m.text())) errors.push(m.text());
    });
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('response', (res) => {
      if (res.status() >= 400 && !res.url().endsWith('/favicon.ico')) errors.push(`${res.status()} ${res.url()}`);
    });
    try {
      await page.waitForFunction(() => (window as any).ready === true);
      const r = await page.evaluate(async (catalog) => {
        const { createRecommender } = (window as any).localrec;
        const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'isolated', autoTrainEvery: 0 });
        for (let i = 0; i < 6; i++) rec.track({ type: 'view', itemId: `sku-${i}` });
        // A progress callback whose promise never settles must not hold train() (or close() after it).
        let heard = 0;
        const trained = await rec.train({ epochs: 1, onProgress: () => (heard++, new Promise(() => undefined)) });
        const recs = await rec.recommend({ k: 3 });
        const stats = await rec.stats();
        await rec.erase();
        return { isolated: crossOriginIsolated, trained: trained.steps, recs: recs.length, backend: stats.backend, heard };
      }, CATALOG);
      assert.deepEqual(r, { isolated: true, trained: r.trained, recs: 3, backend: 'wasm', heard: r.heard });
      assert.ok(r.trained > 0 && r.heard > 0);
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
      await isolated.close();
    }
  });
});

describe('SDK in Chromium', () => {
  it('stores tracked events in IndexedDB from a worker, keeps them and the weights across a reload', async () => {
    const page = await sdkPage();
    const result = await page.evaluate(async (catalog) => {
      const { createRecommender } = (window as any).localrec;
      const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'reload-test', autoTrainEvery: 0 });
      for (let i = 0; i < 12; i++) rec.track({ type: 'view', itemId: `sku-${i % 6}` });
      rec.track({ type: 'purchase', itemId: 'sku-3', quantity: 2, price: 5 });
      await rec.flush();
      const trained = await rec.train({ epochs: 3 });
      const recs = await rec.recommend({ k: 5 });
      const stats = await rec.stats();
      await rec.close();
      // What the page can see of IndexedDB directly, without the SDK.
      const dbs = await indexedDB.databases();
      return { trained, recs, stats, dbs: dbs.map((d: IDBDatabaseInfo) => d.name) };
    }, CATALOG);
    assert.equal(result.stats.events.total, 13);
    assert.equal(result.stats.events.byType.view, 12);
    assert.equal(result.stats.storage, 'indexeddb');
    assert.equal(result.stats.backend, 'wasm');
    assert.ok(result.dbs.includes('reload-test'));
    assert.ok(result.trained.steps > 0);
    assert.equal(result.recs.length, 5);
    for (const r of result.recs) assert.ok(!['sku-0', 'sku-1', 'sku-2', 'sku-3', 'sku-4', 'sku-5'].includes(r.itemId), 'seen items are excluded');

    await page.reload();
    await page.waitForFunction(() => (window as any).ready === true);
    const again = await page.evaluate(async (catalog) => {
      const { createRecommender } = (window as any).localrec;
      const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'reload-test', autoTrainEvery: 0 });
      const stats = await rec.stats();
      const recs = await rec.recommend({ k: 5 });
      // A page's own list (a category listing), put in this shopper's order through the worker.
      const page = ['sku-9', 'sku-2', 'not-in-catalog', 'sku-7', 'sku-11'];
      const reranked = await rec.recommend({ k: page.length, candidates: page, exclude: 'none' });
      const full = await rec.recommend({ k: 1000, exclude: 'none' });
      await rec.erase();
      return { stats, recs, reranked, full, page, dbs: (await indexedDB.databases()).map((d: IDBDatabaseInfo) => d.name) };
    }, CATALOG);
    assert.deepEqual(
      again.reranked.map((r: any) => r.itemId),
      again.full.map((r: any) => r.itemId).filter((id: string) => again.page.includes(id)),
      'candidates come back in the order of the full ranking',
    );
    assert.equal(again.reranked.length, 4);
    assert.equal(again.stats.events.total, 13, 'events survive a reload');
    assert.equal(again.stats.model.trainSteps, result.stats.model.trainSteps, 'weights survive a reload');
    assert.deepEqual(
      again.recs.map((r: any) => r.itemId),
      result.recs.map((r: any) => r.itemId),
      'the reloaded model ranks as the trained one did',
    );
    assert.ok(!again.dbs.includes('reload-test'), 'erase() deletes the database');
    await page.close();
  });

  it('rejects bad events with a ValidationError naming the field, and loses nothing stored', async () => {
    const page = await sdkPage();
    const r = await page.evaluate(async (catalog) => {
      const { createRecommender, isValidationError, ValidationError, NetworkError } = (window as any).localrec;
      let optionError = '';
      try {
        await createRecommender({ catalog, backend: 'cpu', dbName: 'bad-input', autoTrain: 5 });
      } catch (e: any) {
        optionError = `${e.name} ${e.message}`;
      }
      const consentErrors: string[] = [];
      for (const consent of ['maybe', { personalization: 'yes', federated: false }, { personalization: true }, { personalization: true, federated: false, ads: true }]) {
        try {
          await createRecommender({ catalog, backend: 'cpu', dbName: 'bad-input', consent });
          consentErrors.push('accepted');
        } catch (e: any) {
          consentErrors.push(`${e.name} ${e.message}`);
        }
      }
      let startError = '';
      try {
        await createRecommender({ catalog, backend: 'cpu', dbName: 'bad-input', workerUrl: '/no-such-worker.js' });
      } catch (e: any) {
        startError = `${e.name} ${e.message}`;
      }
      // A worker from another origin cannot be created at all: a ClosedError saying so, not a bare SecurityError.
      let crossOrigin = '';
      try {
        await createRecommender({ catalog, backend: 'cpu', dbName: 'bad-input', workerUrl: `http://localhost:${location.port}/dist/worker.js` });
      } catch (e: any) {
        crossOrigin = `${e.name} ${e.message}`;
      }
      optionError += ` | ${startError} | ${crossOrigin}`;
      // The server is a static file server: /v1/config is not there (404).
      const rec = await createRecommender({ catalog, backend: 'cpu', dbName: 'bad-input', autoTrainEvery: 0, federated: { serverUrl: `${location.origin}/no-server` } });
      rec.track({ type: 'view', itemId: 'sku-1' });
      await rec.flush();
      const errors: Array<{ name: string; message: string; guard: boolean; cls: boolean }> = [];
      for (const bad of [{ type: 'view' }, { type: 'purchase', itemId: 'sku-2', quantity: -1 }, { type: 'teleport', itemId: 'x' }, null, { type: 'view', itemID: 'sku-1' }, { type: 'view', itemId: 'sku-1', t: Date.now() - 400 * 86_400_000 }]) {
        try {
          rec.track(bad);
        } catch (e: any) {
          errors.push({ name: e.name, message: e.message, guard: isValidationError(e), cls: e instanceof ValidationError });
        }
      }
      let workerError: any;
      try {
        await rec.recommend({ k: 0 });
      } catch (e: any) {
        workerError = { name: e.name, message: e.message, field: e.field, cls: e instanceof ValidationError };
      }
      // A neighbour file that is not one: refused in the worker, by name, with nothing changed.
      let neighborError: any;
      try {
        await rec.setNeighbors(new TextEncoder().encode('not a neighbour file at all'));
      } catch (e: any) {
        neighborError = { name: e.name, message: e.message, cls: e instanceof ValidationError };
      }
      let syncError: any;
      try {
        await rec.sync();
      } catch (e: any) {
        syncError = { name: e.name, status: e.status, cls: e instanceof NetworkError };
      }
      // Values the browser cannot copy to the worker (a function, a Symbol, a reactive store's
      // Proxy): a ValidationError naming the argument, not a bare DataCloneError.
      const cloneErrors: string[] = [];
      for (const call of [() => rec.recommend({ exclude: ['sku-1', Symbol('x')] }), () => rec.similar(Symbol('x')), () => rec.setOffers({ f() {} }), () => rec.setConsent({ personalization: true, federated: () => false })]) {
        try {
          await call();
          cloneErrors.push('accepted');
        } catch (e: any) {
          cloneErrors.push(`${e instanceof ValidationError} ${e.field}`);
        }
      }
      let reactiveCatalog = '';
      try {
        await createRecommender({ catalog: new Proxy({ items: catalog.items }, {}), backend: 'cpu', dbName: 'bad-input-proxy' });
      } catch (e: any) {
        reactiveCatalog = `${e.name} ${e.field}`;
      }
      const stats = await rec.stats();
      // Calls made before erase() get their answers; calls after it began are refused at once.
      const inFlight = rec.recommend({ k: 2 });
      // A close() during the erase (a cleanup path) waits for it rather than rejecting.
      const erasing = [rec.erase(), rec.erase(), rec.close()];
      let late = '';
      try {
        await rec.stats();
      } catch (e: any) {
        late = e.name;
      }
      const answered = (await inFlight).length;
      await Promise.all(erasing);
      // erase() after close(): the page deletes the database itself.
      const again = await createRecommender({ catalog, backend: 'cpu', dbName: 'bad-input-closed', autoTrainEvery: 0 });
      again.track({ type: 'view', itemId: 'sku-1' });
      await again.close();
      await again.erase();
      const leftAfterClosedErase = (await indexedDB.databases()).some((d: IDBDatabaseInfo) => d.name === 'bad-input-closed');
      return { optionError, consentErrors, errors, workerError, neighborError, syncError, cloneErrors, reactiveCatalog, leftAfterClosedErase, late, answered, neighbors: stats.model.neighbors, total: stats.events.total };
    }, CATALOG);
    assert.deepEqual(r.consentErrors, [
      "ValidationError options.consent: must be 'required', 'granted' or { personalization, federated }; got \"maybe\"",
      'ValidationError options.consent.personalization: must be true or false, got "yes"',
      'ValidationError options.consent.federated: must be true or false, got undefined',
      'ValidationError options.consent.ads: is not an option (known: personalization, federated)',
    ]);
    const [optionError, workerStart, crossOrigin] = r.optionError.split(' | ');
    assert.match(crossOrigin!, /^ClosedError the localrec worker \(http:\/\/localhost:\d+\/dist\/worker\.js\) could not be created: .*must come from the page's own origin/);
    assert.equal(optionError, 'ValidationError options.autoTrain: is not an option (known: catalog, backend, dbName, retention, model, autoTrainEvery, consent, offers, federated, neighbors, workerUrl, wasmPaths, workerTimeoutMs)');
    assert.match(workerStart, /^ClosedError the localrec worker \(.*\/no-such-worker\.js\) failed to start/, 'a worker that cannot load is an error, not a wait for ever');
    assert.deepEqual(r.syncError, { name: 'NetworkError', status: 404, cls: true }, 'the HTTP status survives the worker boundary');
    assert.deepEqual(r.cloneErrors, ['true options', 'true itemId or options', 'true catalog', 'true consent']);
    assert.equal(r.reactiveCatalog, 'ValidationError options (the catalog, or another option)');
    assert.equal(r.leftAfterClosedErase, false, 'erase() after close() deletes the database');
    assert.equal(r.late, 'ClosedError');
    assert.equal(r.answered, 2);
    assert.equal(r.errors.length, 6);
    assert.deepEqual(
      r.errors.map((e) => e.message.split(':')[0]),
      ['event.itemId', 'event.quantity', 'event.type', 'event', 'event.itemID', 'event.t'],
    );
    assert.match(r.errors[5]!.message, /older than retention\.maxAgeDays \(365 days\)/, 'retention would delete it at once: refused on the page');
    for (const e of r.errors) assert.ok(e.guard && e.cls && e.name === 'ValidationError');
    assert.equal(r.workerError.name, 'ValidationError', 'errors from the worker keep their name');
    assert.ok(r.workerError.cls, 'and are revived as the right class');
    assert.match(r.workerError.message, /options\.k/);
    assert.equal(r.workerError.field, 'options.k');
    assert.equal(r.total, 1, 'the stored event is still there');
    assert.deepEqual(r.neighborError, { name: 'ValidationError', message: 'neighbors: not a localrec neighbour file (magic is not LRN1)', cls: true });
    assert.equal(r.neighbors, null);
    await page.close();
  });

  it('a worker that ends without a word (as one out of memory does) fails the calls waiting on it instead of hanging them', async () => {
    // Two tabs of one browser profile (one context), both with the shop, on the same database.
    const context = await browser.newContext();
    const tab = async () => {
      const p = await context.newPage();
      await p.addInitScript('globalThis.__name = (f) => f;');
      p.on('pageerror', (e) => process.stderr.write(`[page error] ${e.message}\n`));
      await p.goto(`${server.url}/test/browser/pages/sdk.html`);
      await p.waitForFunction(() => (window as any).ready === true);
      return p;
    };
    const page = await tab();
    const other = await tab();
    await other.evaluate(async (catalog) => {
      (window as any).rec = await (window as any).localrec.createRecommender({ catalog, backend: 'wasm', dbName: 'dying', autoTrainEvery: 0 });
    }, CATALOG);
    const r = await page.evaluate(async (catalog) => {
      const { createRecommender, ClosedError } = (window as any).localrec;
      /** A recommender on the dying worker, and a way to end that worker from outside (the SDK's Worker is captured as it is made). */
      const onDyingWorker = async (dbName: string) => {
        const Original = window.Worker;
        let worker: Worker | undefined;
        (window as any).Worker = class extends Original {
          constructor(url: string | URL, options?: WorkerOptions) {
            super(url, options);
            worker = this;
          }
        };
        try {
          const rec = await createRecommender({ catalog, backend: 'wasm', dbName, autoTrainEvery: 0, workerUrl: '/test/browser/pages/dying-worker.js', workerTimeoutMs: 1000 });
          return { rec, kill: () => worker!.postMessage({ die: true }) };
        } finally {
          (window as any).Worker = Original;
        }
      };
      const { rec, kill } = await onDyingWorker('dying');
      rec.track({ type: 'view', itemId: 'sku-3' });
      const alive = (await rec.recommend({ k: 3 })).length;
      kill();
      const failed = await rec.recommend({ k: 3 }).then(
        () => null,
        (e: any) => ({ name: e.name, message: e.message, cls: e instanceof ClosedError }),
      );
      let later = '';
      try {
        await rec.stats();
      } catch (e: any) {
        later = `${e.name}: ${e.message}`;
      }
      let badOption = '';
      try {
        await createRecommender({ catalog, backend: 'wasm', dbName: 'dying', workerTimeoutMs: 200 });
      } catch (e: any) {
        badOption = `${e.name}: ${e.message}`;
      }
      // The shopper's erase still holds without the worker: the page deletes the database itself.
      const before = (await indexedDB.databases()).map((d) => d.name);
      await rec.erase();
      const after = (await indexedDB.databases()).map((d) => d.name);
      await rec.close(); // the worker is gone: closing is a no-op, not a wait
      // The worker dies while erase() waits for a call still in flight: the erase still holds.
      const { rec: second, kill: killSecond } = await onDyingWorker('dying-2');
      second.track({ type: 'view', itemId: 'sku-4' });
      await second.flush();
      const inFlight = second.stats().then(() => 'answered', (e: any) => e.name);
      killSecond();
      const erased = await second.erase().then(() => 'erased', (e: any) => `${e.name}: ${e.message}`);
      const afterSecond = (await indexedDB.databases()).map((d) => d.name);
      return { alive, failed, later, badOption, before, after, inFlight: await inFlight, erased, afterSecond };
    }, CATALOG);
    assert.equal(r.alive, 3);
    assert.equal(r.failed?.name, 'ClosedError');
    assert.ok(r.failed?.cls);
    assert.match(r.failed!.message, /^the localrec worker stopped responding \(no answer for \d+ s; it may have run out of memory\): create the recommender again$/);
    assert.match(r.later, /^ClosedError: the localrec worker stopped responding/);
    assert.match(r.badOption, /^ValidationError: options\.workerTimeoutMs: must be 0 \(no check\) or a number of milliseconds ≥ 1000, got 200$/);
    assert.ok(r.before.includes('dying') && !r.after.includes('dying'), 'erase() after the worker died deleted the database');
    assert.equal(r.erased, 'erased', 'an erase() the worker died under still erases');
    assert.ok(!r.afterSecond.includes('dying-2'));
    // stats() goes out after the death (a call is posted once its turn comes), so it is never answered.
    assert.equal(r.inFlight, 'ClosedError');
    // The other tab heard of the erase (as from a worker's own erase()) and goes on, empty.
    const otherStats = await other.evaluate(async () => {
      const rec = (window as any).rec;
      const s = await rec.stats();
      await rec.close();
      return { total: s.events.total };
    });
    assert.deepEqual(otherStats, { total: 0 });
    await context.close();
  });

  it('trains on WebGPU and on WASM to the same recommendations', async () => {
    const page = await sdkPage();
    const run = (backend: string) =>
      page.evaluate(
        async ({ catalog, backend }) => {
          const { createRecommender } = (window as any).localrec;
          const rec = await createRecommender({ catalog, backend, dbName: `same-${backend}`, autoTrainEvery: 0, model: { seed: 7 } });
          // Recent timestamps: events older than the retention window (365 days) are evicted on write.
          const t0 = Date.now() - 3_600_000;
          let n = 0;
          for (const id of ['sku-1', 'sku-3', 'sku-5', 'sku-7', 'sku-9', 'sku-11', 'sku-13']) rec.track({ type: 'view', itemId: id, t: t0 + n++ * 1000 });
          rec.track({ type: 'purchase', itemId: 'sku-5', t: t0 + n * 1000 });
          await rec.flush();
          const progress: number[] = [];
          await rec.train({ epochs: 3, onProgress: (p: any) => p.phase === 'training' && progress.push(p.done) });
          const recs = await rec.recommend({ k: 8, exclude: 'none' });
          const stats = await rec.stats();
          await rec.erase();
          return { recs, backend: stats.backend, progress };
        },
        { catalog: CATALOG, backend },
      );
    const gpu = await run('webgpu');
    const wasm = await run('wasm');
    assert.equal(gpu.backend, 'webgpu');
    assert.equal(wasm.backend, 'wasm');
    assert.ok(gpu.progress.length > 0, 'progress is reported across the worker boundary');
    assert.deepEqual(gpu.recs.map((r: any) => r.itemId), wasm.recs.map((r: any) => r.itemId));
    gpu.recs.forEach((r: any, i: number) => assert.ok(Math.abs(r.score - wasm.recs[i].score) < 1e-3, `score ${i}: ${r.score} vs ${wasm.recs[i].score}`));
    await page.close();
  });
  it('a training run on WASM lets the page in between steps: calls are answered, events stored, the worker not taken for dead', async () => {
    const page = await sdkPage();
    const r = await page.evaluate(async (catalog) => {
      const { createRecommender } = (window as any).localrec;
      // workerTimeoutMs 1000: a worker that answers nothing for a second is declared dead.
      const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'busy-training', autoTrainEvery: 0, workerTimeoutMs: 1000 });
      const t0 = Date.now() - 3_600_000;
      for (let i = 0; i < 1200; i++) rec.track({ type: 'view', itemId: `sku-${(i * 7) % 60}`, t: t0 + i * 1000 });
      await rec.flush();
      const steps: number[] = [];
      let trainDone = false;
      const training = rec.train({ epochs: 150, onProgress: (p: any) => p.phase === 'training' && steps.push(p.done) }).then((t: any) => {
        trainDone = true;
        return t;
      });
      while (steps.length === 0) await new Promise((res) => setTimeout(res, 5));
      rec.track({ type: 'purchase', itemId: 'sku-5', quantity: 1, price: 7 });
      const recs = await rec.recommend({ k: 3, exclude: 'none' });
      const answeredDuringRun = !trainDone;
      const stats = await rec.stats();
      const storedDuringRun = !trainDone && stats.events.byType.purchase === 1;
      const trained = await training;
      await rec.erase();
      return { answeredDuringRun, storedDuringRun, recs: recs.length, steps: trained.steps };
    }, CATALOG);
    assert.equal(r.recs, 3);
    assert.ok(r.steps >= 100, `a run of ${r.steps} steps`);
    assert.ok(r.answeredDuringRun, 'recommend() was answered before the run ended');
    assert.ok(r.storedDuringRun, 'an event tracked during the run was stored before it ended');
    await page.close();
  });

  it('options.wasmPaths: the WASM backend loads its binaries from the folder given when they are not next to the worker', async () => {
    const page = await sdkPage();
    // As after a bundler emitted the worker without them: nothing is served next to the worker.
    await page.route(`${server.url}/dist/*.wasm`, (route) => route.abort());
    const result = await page.evaluate(async (catalog) => {
      const { createRecommender } = (window as any).localrec;
      const refused = await createRecommender({ catalog, wasmPaths: '/node_modules/@tensorflow/tfjs-backend-wasm/dist' }).then(
        () => 'started',
        (e: Error) => `${e.name}: ${e.message}`,
      );
      // Without wasmPaths the binaries are missing: forced, refused saying so; probed, another backend, and the reason says why not wasm.
      const forced = await createRecommender({ catalog, backend: 'wasm', dbName: 'wasm-missing', autoTrainEvery: 0 }).then(
        () => 'started',
        (e: Error) => `${e.name}: ${e.message}`,
      );
      const probedRec = await createRecommender({ catalog, dbName: 'wasm-missing', autoTrainEvery: 0 });
      const probed = await probedRec.stats();
      await probedRec.erase();
      const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'wasm-paths', autoTrainEvery: 0, wasmPaths: '/node_modules/@tensorflow/tfjs-backend-wasm/dist/' });
      const stats = await rec.stats();
      const recs = await rec.recommend({ k: 3 });
      await rec.erase();
      return { refused, forced, probed: { backend: probed.backend, reason: probed.backendReason }, backend: stats.backend, recs: recs.length };
    }, CATALOG);
    assert.match(result.refused, /^ValidationError: options\.wasmPaths: must be a folder URL ending in '\/'/);
    const why = 'did not start (are the tfjs-backend-wasm*.wasm files served next to the worker, or at options.wasmPaths?)';
    assert.equal(result.forced, `ModelError: backend "wasm" is not available here: ${why}`);
    assert.notEqual(result.probed.backend, 'wasm');
    assert.ok(result.probed.reason.startsWith('probed: ') && result.probed.reason.includes(`wasm ${why}`), result.probed.reason);
    assert.equal(result.backend, 'wasm');
    assert.equal(result.recs, 3);
    await page.close();
  });

  it('the GPU backends are files of their own, fetched only when tried; one that is missing leaves only its backend out', async () => {
    const page = await sdkPage();
    const fetched: string[] = [];
    page.on('request', (r) => {
      const m = /\/(dist|companion)\/(worker[^/?]*\.js)/.exec(r.url());
      if (m) fetched.push(m[1] === 'dist' ? m[2]! : `companion/${m[2]!}`);
    });
    const r = await page.evaluate(async (catalog) => {
      const { createRecommender } = (window as any).localrec;
      const wasm = await createRecommender({ catalog, backend: 'wasm', dbName: 'gpu-files-wasm', autoTrainEvery: 0 });
      const wasmRecs = (await wasm.recommend({ k: 3 })).length;
      await wasm.erase();
      // The worker under another URL (a cache-busting query): the WebGL file takes tfjs from it,
      // and this worker's one engine scores (the file never imports the worker a second time).
      const gl = await createRecommender({ catalog, backend: 'webgl', dbName: 'gpu-files-gl', autoTrainEvery: 0, workerUrl: new URL('/dist/worker.js?v=2', location.href).href });
      for (let i = 1; i <= 4; i++) gl.track({ type: 'view', itemId: `sku-${i}` });
      const glTrained = (await gl.train({ epochs: 1 })).steps;
      const glStats = await gl.stats();
      const glRecs = (await gl.recommend({ k: 3 })).length;
      await gl.erase();
      return { wasmRecs, glTrained, glBackend: glStats.backend, glRecs };
    }, CATALOG);
    // Forced to wasm, the worker fetched neither GPU file; forced to WebGL, only the WebGL one.
    assert.deepEqual(fetched, ['worker.js', 'worker.js', 'worker-webgl.js']);
    assert.deepEqual(r, { wasmRecs: 3, glTrained: r.glTrained, glBackend: 'webgl', glRecs: 3 });
    assert.ok(r.glTrained > 0);

    // A deployment that copied worker.js alone: the probe goes on without WebGL, and says why.
    await page.route(`${server.url}/dist/worker-webgl.js`, (route) => route.fulfill({ status: 404, body: 'not found' }));
    const probed = await page.evaluate(async (catalog) => {
      const { createRecommender } = (window as any).localrec;
      const rec = await createRecommender({ catalog, dbName: 'gpu-files-missing', autoTrainEvery: 0 });
      const s = await rec.stats();
      const recs = (await rec.recommend({ k: 3 })).length;
      await rec.close();
      // The file is missing from this deployment, not for a moment: the choice stands for later page loads.
      const again = await createRecommender({ catalog, dbName: 'gpu-files-missing', autoTrainEvery: 0 });
      const next = (await again.stats()).backendReason;
      await again.erase();
      return { backend: s.backend, reason: s.backendReason, recs, next };
    }, CATALOG);
    assert.notEqual(probed.backend, 'webgl');
    assert.match(probed.reason, /^probed: .*; webgl could not be loaded \(/);
    assert.doesNotMatch(probed.reason, /webgl [\d.]+ ms/);
    assert.equal(probed.recs, 3);
    assert.match(probed.next, /^remembered \(probed /);
    // The probe fetched the WebGPU file (this Chromium offers an adapter) and asked for WebGL's once.
    assert.deepEqual(fetched.slice(3).sort(), ['worker-webgl.js', 'worker-webgpu.js', 'worker.js', 'worker.js']);

    // A bundler that emitted the worker without them, the files copied with the .wasm ones to the
    // folder options.wasmPaths names: found there.
    await page.route(`${server.url}/companion/*`, (route) => route.fulfill({ path: `dist/${new URL(route.request().url()).pathname.split('/').pop()}` }));
    const companion = await page.evaluate(async (catalog) => {
      const { createRecommender } = (window as any).localrec;
      const rec = await createRecommender({ catalog, backend: 'webgl', dbName: 'gpu-files-companion', autoTrainEvery: 0, wasmPaths: '/companion/' });
      const s = await rec.stats();
      await rec.erase();
      return s.backend;
    }, CATALOG);
    assert.equal(companion, 'webgl');
    assert.deepEqual(fetched.slice(7), ['worker.js', 'worker-webgl.js', 'companion/worker-webgl.js']);
    await page.close();
  });
});

// A WebGL context lost at run time in the worker: the engine moves to another backend and never
// answers with rows outside the asked category (a lost context reads back zeros).
describe('a backend lost at run time', () => {
  const LOST_CATALOG = {
    items: Array.from({ length: 24 }, (_, i) => ({ id: `sku-${i}`, title: `Item ${i}`, category: i % 2 ? 'mug' : 'bag', popularity: 24 - i })),
  };

  it('a lost WebGL context: recommend({ category }) answers that category only, on another backend, and stats() says why', async (t) => {
    const page = await sdkPage();
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
    }, LOST_CATALOG);
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
});
