/**
 * What a privacy team signs off, checked in Chromium against a real `localrec serve` on loopback:
 * consent, what leaves the page, GPC, export/erase, and a strict Content-Security-Policy.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Browser, Page, Request } from 'playwright-core';
import { createItemTable } from '../../src/model/item-table.js';
import { startServer, type RunningServer } from '../../src/server/index.js';
import { RdpAccountant } from '../../src/federated/dp.js';
import { syncOnce } from '../../src/federated/sync.js';
import { decodeModel } from '../../src/federated/wire.js';
import { assertBuilt, launch, openPage, serveRepo } from './harness.js';

const ids = Array.from({ length: 120 }, (_, i) => `sku-${1000 + i}`);
const CATALOG = { items: ids.map((id, i) => ({ id, title: `Item ${i}`, popularity: 120 - i })) };
let server: RunningServer;
let browser: Browser;

before(async () => {
  assertBuilt();
  // The server also serves the repository, so the page and the API share an origin.
  server = await startServer({
    port: 0,
    dataDir: null,
    initialTable: createItemTable(ids, 16, { seed: 1 }),
    minClients: 10,
    rateLimit: false,
    staticDir: '.',
    log: () => {},
  });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.close();
});

/** A second server, also serving the repository, whose cohorts are `minClients` devices. */
function secureServer(minClients: number, secureAggregation: true | { minSurvivors: number; timeoutMs: number }, now?: () => number): Promise<RunningServer> {
  return startServer({
    port: 0,
    dataDir: null,
    initialTable: createItemTable(ids, 16, { seed: 1 }),
    minClients,
    rateLimit: false,
    secureAggregation,
    ...(now ? { now } : {}),
    staticDir: '.',
    log: () => {},
  });
}

/** The SDK test page, ready, from `base` (default the file's server). */
async function sdkPage(init?: string, base = server.url): Promise<Page> {
  const page = await browser.newPage();
  page.on('pageerror', (e) => process.stderr.write(`[page error] ${e.message}\n`));
  await page.addInitScript('globalThis.__name = (f) => f;');
  if (init) await page.addInitScript(init);
  await page.goto(`${base}/test/browser/pages/sdk.html`);
  await page.waitForFunction(() => (window as any).ready === true);
  return page;
}

/** In the page: a recommender with consent views `history`, syncs once with `serverUrl`, erases itself; the sync's result. */
function syncInPage(page: Page, dbName: string, history: string[], serverUrl: string): Promise<any> {
  return page.evaluate(
    async ({ catalog, history, serverUrl, dbName }) => {
      const { createRecommender } = (window as any).localrec;
      const rec = await createRecommender({ catalog, backend: 'wasm', dbName, autoTrainEvery: 0, model: { dim: 16 }, federated: { serverUrl } });
      await rec.setConsent({ personalization: true, federated: true });
      for (const itemId of history) rec.track({ type: 'view', itemId });
      await rec.flush();
      const sync = await rec.sync();
      await rec.erase();
      return sync;
    },
    { catalog: CATALOG, history, serverUrl, dbName },
  );
}

describe('privacy in Chromium', () => {
  it('stores nothing before consent, and only the documented update leaves the page after it', async () => {
    const page = await sdkPage();
    const requests: Request[] = [];
    page.on('request', (r) => requests.push(r));
    const history = ['sku-1003', 'sku-1017', 'sku-1042', 'sku-1077'];
    const r = await page.evaluate(
      async ({ catalog, history, serverUrl }) => {
        const { createRecommender } = (window as any).localrec;
        const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'privacy-1', consent: 'required', autoTrainEvery: 0, model: { dim: 16 }, federated: { serverUrl } });
        for (const itemId of history) rec.track({ type: 'view', itemId });
        const before = (await indexedDB.databases()).map((d: IDBDatabaseInfo) => d.name);
        const statsBefore = await rec.stats();
        await rec.setConsent({ personalization: true, federated: true });
        for (const itemId of history) rec.track({ type: 'view', itemId });
        rec.track({ type: 'search', query: 'very private words' });
        await rec.flush();
        const sync = await rec.sync();
        // Only receiving: the model is unchanged, so the server answers 304 and nothing goes up.
        const pulled = await rec.sync({ contribute: false });
        const audit = await rec.audit();
        const exported = await rec.export();
        const after = (await indexedDB.databases()).map((d: IDBDatabaseInfo) => d.name);
        await rec.erase();
        const erased = (await indexedDB.databases()).map((d: IDBDatabaseInfo) => d.name);
        return { before, statsBefore, sync, pulled, audit, exported, after, erased };
      },
      { catalog: CATALOG, history, serverUrl: server.url },
    );
    assert.ok(!r.before.includes('privacy-1'), 'no database before consent');
    assert.equal(r.statsBefore.events.total, 0);
    assert.equal(r.statsBefore.dropped, 4);
    assert.ok(r.after.includes('privacy-1'));
    assert.ok(!r.erased.includes('privacy-1'), 'erase leaves no database');
    assert.equal(r.sync.sent, true);
    assert.deepEqual([r.pulled.sent, r.pulled.modelChanged, r.pulled.uploadedBytes, r.pulled.epsilon], [false, false, 0, r.sync.epsilon]);

    // Every request the page made after loading the SDK, as the browser saw it.
    const api = requests.filter((q) => q.url().includes('/v1/'));
    assert.deepEqual(api.map((q) => `${q.method()} ${new URL(q.url()).pathname}`), ['GET /v1/config', 'GET /v1/model', 'POST /v1/updates', 'GET /v1/config', 'GET /v1/model']);
    assert.equal((await api[4]!.response())?.status(), 304, 'the unchanged model was not downloaded again');
    assert.match(api[4]!.headers()['if-none-match'] ?? '', /^"[0-9a-f]{64}"$/);
    for (const q of requests) {
      const url = q.url();
      const body = q.postDataBuffer()?.toString('latin1') ?? '';
      for (const needle of [...history, 'private', 'words']) {
        assert.ok(!url.includes(needle), `${needle} is not in ${url}`);
        assert.ok(!body.includes(needle), `${needle} is not in the body of ${url}`);
      }
      assert.ok(!new URL(url).search, `no query string on ${url}`);
    }
    const update = api[2]!.postDataBuffer()!;
    assert.equal(update.subarray(0, 4).toString('latin1'), 'LRU1');

    // The audit's figures equal what the test observed.
    assert.equal(r.audit.egress.requests, api.length);
    assert.equal(r.audit.egress.bytesSent, update.length);
    assert.deepEqual(r.audit.egress.log.map((l: any) => l.endpoint), ['/v1/config', '/v1/model', '/v1/updates', '/v1/config', '/v1/model']);
    assert.equal(r.audit.events.total, 5);
    assert.deepEqual(r.audit.events.byType, { view: 4, search: 1 });
    assert.equal(r.audit.consent.droppedBeforeConsent, 4);
    assert.ok(r.audit.privacy.epsilonSpent > 0 && r.audit.privacy.syncs === 1);

    // Export: every stored event, nothing else.
    assert.deepEqual(
      r.exported.events.map((e: any) => e.itemId ?? e.query),
      [...history, 'very private words'],
    );
    await page.close();
  });

  it('under secure aggregation only a public key, cohort polls and a masked update leave the page', async () => {
    // A second server whose cohorts are 2 devices: this page and one Node client running the same
    // client code (syncOnce). The page's WebCrypto does the ECDH, HKDF and AES-CTR masking.
    const secure = await secureServer(2, true);
    const page = await sdkPage(undefined, secure.url);
    try {
      const requests: Request[] = [];
      page.on('request', (q) => requests.push(q));
      const history = ['sku-1005', 'sku-1023', 'sku-1051', 'sku-1088'];
      const pageSync = page.evaluate(
        async ({ catalog, history, serverUrl }) => {
          const { createRecommender } = (window as any).localrec;
          const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'privacy-secagg', autoTrainEvery: 0, model: { dim: 16 }, federated: { serverUrl } });
          await rec.setConsent({ personalization: true, federated: true });
          for (const itemId of history) rec.track({ type: 'view', itemId });
          rec.track({ type: 'search', query: 'secret words' });
          await rec.flush();
          const progress: unknown[] = [];
          const sync = await rec.sync({ onProgress: (p: unknown) => progress.push(p) });
          const audit = await rec.audit();
          await rec.erase();
          return { sync, progress, kinds: audit.egress.log.map((l: any) => l.kind) };
        },
        { catalog: CATALOG, history, serverUrl: secure.url },
      );
      const other = syncOnce({
        serverUrl: secure.url,
        accountant: new RdpAccountant(),
        history: [{ itemIds: ['sku-1002', 'sku-1009', 'sku-1010'], weights: [1, 1, 1] }],
        cohortPollMs: 50,
      });
      const [r, o] = await Promise.all([pageSync, other]);
      assert.equal(r.sync.sent, true);
      assert.equal(r.sync.cohortSize, 2);
      assert.ok(o.sent);
      assert.equal(secure.rounds.version, 1, "the cohort's sum was published");

      const api = requests.filter((q) => q.url().includes('/v1/'));
      const paths = api.map((q) => `${q.method()} ${new URL(q.url()).pathname.replace(/[0-9a-f]{32}(\/members\/\d+)?$/, (_, m) => (m ? ':id/members/:index' : ':id'))}`);
      assert.deepEqual(paths.slice(0, 3), ['GET /v1/config', 'GET /v1/model', 'POST /v1/secagg/join']);
      assert.equal(paths.at(-1), 'POST /v1/secagg/updates');
      assert.ok(paths.slice(3, -1).length >= 1 && paths.slice(3, -1).every((p) => p === 'GET /v1/secagg/cohorts/:id/members/:index'), paths.join(', '));
      const join = api[2]!.postDataBuffer()!;
      assert.equal(join.length, 65);
      assert.equal(join[0], 0x04, 'the join body is one uncompressed P-256 public key');
      const update = api.at(-1)!.postDataBuffer()!;
      assert.equal(update.subarray(0, 4).toString('latin1'), 'LRS1');
      for (const q of requests) {
        const body = q.postDataBuffer()?.toString('latin1') ?? '';
        for (const needle of [...history, 'secret']) {
          assert.ok(!q.url().includes(needle) && !body.includes(needle), `${needle} must not leave the page (${q.url()})`);
        }
        assert.ok(!new URL(q.url()).search, `no query string on ${q.url()}`);
      }
      assert.ok(r.kinds.includes('cohort') && r.kinds.includes('update'));
      // Progress came back from the worker, phase by phase, with the cohort filling.
      const phases = r.progress.map((p: any) => p.phase).filter((p: string, i: number, all: string[]) => p !== all[i - 1]);
      assert.deepEqual(phases, ['config', 'model', 'training', 'cohort', 'upload']);
      assert.deepEqual(r.progress.filter((p: any) => p.phase === 'cohort').at(-1), { phase: 'cohort', joined: 2, size: 2 });
      assert.deepEqual(r.progress.at(-1), { phase: 'upload', bytes: update.length });

      // The page's AbortSignal reaches the worker: cancelled while its next cohort forms, the sync
      // rejects with localrec's AbortError, nothing more than the join, polls and leave went out, no ε spent.
      const sent = requests.length;
      const cancelled = await page.evaluate(
        async ({ catalog, history, serverUrl }) => {
          const { createRecommender, AbortError } = (window as any).localrec;
          const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'privacy-cancel', autoTrainEvery: 0, model: { dim: 16 }, federated: { serverUrl } });
          await rec.setConsent({ personalization: true, federated: true });
          for (const itemId of history) rec.track({ type: 'view', itemId });
          const ctl = new AbortController();
          let error: any;
          await rec
            .sync({ signal: ctl.signal, onProgress: (p: any) => p.phase === 'cohort' && ctl.abort() })
            .catch((e: unknown) => (error = e));
          const stats = await rec.stats();
          await rec.erase();
          return { name: error?.name, isClass: error instanceof AbortError, message: String(error?.message), epsilon: stats.privacy.epsilon };
        },
        { catalog: CATALOG, history, serverUrl: secure.url },
      );
      assert.deepEqual([cancelled.name, cancelled.isClass, cancelled.epsilon], ['AbortError', true, 0]);
      assert.match(cancelled.message, /no update was sent and no ε was spent/);
      const after = requests.slice(sent).filter((q) => q.url().includes('/v1/')).map((q) => `${q.method()} ${new URL(q.url()).pathname}`);
      assert.ok(after.includes('POST /v1/secagg/join') && !after.includes('POST /v1/secagg/updates'), after.join(', '));
      assert.ok(after.some((p) => /^POST \/v1\/secagg\/cohorts\/[0-9a-f]+\/members\/0\/leave$/.test(p)), `the page gave its place back: ${after.join(', ')}`);

      // A worker that waits (for a cohort that does not fill) still answers the page's liveness
      // checks: with workerTimeoutMs well below the wait, the sync ends with the cohort's own error.
      const waited = await page.evaluate(
        async ({ catalog, history, serverUrl }) => {
          const { createRecommender } = (window as any).localrec;
          const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'privacy-wait', autoTrainEvery: 0, model: { dim: 16 }, workerTimeoutMs: 1000, federated: { serverUrl, cohortWaitMs: 3000 } });
          await rec.setConsent({ personalization: true, federated: true });
          for (const itemId of history) rec.track({ type: 'view', itemId });
          const error = await rec.sync().then(() => null, (e: any) => `${e.name}: ${e.message}`);
          const stats = await rec.stats();
          await rec.erase();
          return { error, epsilon: stats.privacy.epsilon };
        },
        { catalog: CATALOG, history, serverUrl: secure.url },
      );
      assert.match(waited.error ?? '', /^NetworkError: cohort [0-9a-f]+ did not fill \(2 members\) within 3000 ms/);
      assert.equal(waited.epsilon, 0);
    } finally {
      await page.close();
      await secure.close();
    }
  });

  it('when a cohort member drops out, the page gives only its seed with the dropped member and its share of the survivor\'s self-mask, and the survivors are published', async () => {
    // Cohorts of 3 recovered from 2: this page, a Node device that uploads, and one that loses its
    // connection at upload. Once both survivors are in, the server's clock jumps past the timeout.
    let skew = 0;
    const timeoutMs = 60_000;
    const secure = await secureServer(3, { minSurvivors: 2, timeoutMs }, () => Date.now() + skew);
    const page = await sdkPage(undefined, secure.url);
    try {
      const requests: Request[] = [];
      let uploads = 0;
      const uploaded = () => {
        if (++uploads === 2) skew += timeoutMs + 1;
      };
      page.on('request', (q) => requests.push(q));
      page.on('requestfinished', (q) => {
        if (q.url().endsWith('/v1/secagg/updates')) uploaded();
      });
      const history = ['sku-1005', 'sku-1023', 'sku-1051', 'sku-1088'];
      const pageSync = syncInPage(page, 'privacy-recovery', history, secure.url);
      const device = (itemIds: string[], drop: boolean) =>
        syncOnce({
          serverUrl: secure.url,
          fetch: (url, init) => (drop && url.endsWith('/v1/secagg/updates') ? Promise.reject(new Error('tab closed')) : fetch(url, init as RequestInit)),
          attempts: drop ? 1 : 3,
          accountant: new RdpAccountant(),
          history: [{ itemIds, weights: itemIds.map(() => 1) }],
          cohortPollMs: 50,
          onEgress: (e) => {
            if (e.endpoint === '/v1/secagg/updates' && e.status === 202) uploaded();
          },
        });
      const [r, survivor, dropped] = await Promise.allSettled([pageSync, device(['sku-1002', 'sku-1009', 'sku-1010'], false), device(['sku-1030', 'sku-1031', 'sku-1040'], true)]);
      assert.equal(dropped.status, 'rejected');
      assert.equal(r.status, 'fulfilled', r.status === 'rejected' ? String(r.reason) : '');
      assert.equal(survivor.status, 'fulfilled');
      const sync = (r as PromiseFulfilledResult<any>).value;
      assert.deepEqual([sync.sent, sync.cohortSize, sync.cohortOutcome, sync.recoveryShareSent], [true, 3, 'published', true]);
      assert.equal(secure.rounds.version, 1, "the survivors' sum was published");

      const api = requests.filter((q) => q.url().includes('/v1/'));
      const recovery = api.filter((q) => /\/v1\/secagg\/cohorts\/[0-9a-f]{32}\/members\/\d\/recovery$/.test(q.url()));
      assert.equal(recovery.length, 1, 'one recovery share');
      assert.equal(recovery[0]!.postDataBuffer()!.length, 32, 'per mask neighbour 16 bytes: the seed shared with the dropped one, the share of the survivor\'s self-mask');
      const upload = api.find((q) => q.url().endsWith('/v1/secagg/updates'))!.postDataBuffer()!;
      assert.deepEqual([upload[4], upload[6] | (upload[7]! << 8)], [4, 2], 'format 4: the upload seals a share of its self-mask to each of its 2 mask neighbours');
      // Nothing else new leaves the page: the join, polls, the masked upload, the share.
      for (const round of ['confirm', 'ready']) {
        const sent = api.filter((q) => new RegExp(`/v1/secagg/cohorts/[0-9a-f]{32}/members/\\d/${round}$`).test(q.url()));
        assert.deepEqual(sent.map((q) => q.postDataBuffer()!.length), [16], `one 16-byte ${round} tag, to the one neighbour that did not drop`);
      }
      const kinds = new Set(api.map((q) => `${q.method()} ${new URL(q.url()).pathname.replace(/[0-9a-f]{32}(\/members\/\d+)?(\/recovery|\/confirm|\/ready)?$/, (_, m, rec) => `:id${m ? '/members/:index' : ''}${rec ?? ''}`)}`));
      assert.deepEqual([...kinds].sort(), [
        'GET /v1/config',
        'GET /v1/model',
        'GET /v1/secagg/cohorts/:id/members/:index',
        'POST /v1/secagg/cohorts/:id/members/:index/confirm',
        'POST /v1/secagg/cohorts/:id/members/:index/ready',
        'POST /v1/secagg/cohorts/:id/members/:index/recovery',
        'POST /v1/secagg/join',
        'POST /v1/secagg/updates',
      ]);
      for (const q of requests) {
        const body = q.postDataBuffer()?.toString('latin1') ?? '';
        for (const needle of history) assert.ok(!q.url().includes(needle) && !body.includes(needle), `${needle} must not leave the page (${q.url()})`);
      }
    } finally {
      await page.close();
      await secure.close();
    }
  });

  it('against a subspace server the page sends one LRU1 step of the documented size, and the server publishes orthonormal factors', async () => {
    const subspace = await startServer({
      port: 0,
      dataDir: null,
      initialTable: createItemTable(ids, 16, { seed: 1, popularity: ids.map((_, i) => 120 - i), popularityScale: 0.5 }),
      minClients: 1,
      rateLimit: false,
      aggregator: 'subspace',
      subspaceScale: 8,
      trainBiases: false,
      trainRows: 60,
      staticDir: '.',
      log: () => {},
    });
    const page = await sdkPage(undefined, subspace.url);
    try {
      const requests: Request[] = [];
      page.on('request', (q) => requests.push(q));
      const history = ['sku-1004', 'sku-1019', 'sku-1033', 'sku-1090'];
      const sync = await syncInPage(page, 'privacy-subspace', history, subspace.url);
      assert.equal(sync.sent, true);
      assert.equal(subspace.rounds.version, 1, 'the one update completed a round');
      const api = requests.filter((q) => q.url().includes('/v1/'));
      assert.deepEqual(api.map((q) => `${q.method()} ${new URL(q.url()).pathname}`), ['GET /v1/config', 'GET /v1/model', 'POST /v1/updates']);
      const config = (await (await fetch(`${subspace.url}/v1/config`)).json()) as { updateBytes: number; aggregator: string };
      assert.equal(config.aggregator, 'subspace');
      const update = api[2]!.postDataBuffer()!;
      assert.equal(update.subarray(0, 4).toString('latin1'), 'LRU1');
      assert.equal(update.length, config.updateBytes, 'the same fixed size as any update of 60 rows');
      for (const q of requests) {
        const body = q.postDataBuffer()?.toString('latin1') ?? '';
        for (const needle of history) assert.ok(!q.url().includes(needle) && !body.includes(needle), `${needle} must not leave the page (${q.url()})`);
      }
      // Version 1: 60 rows of 8·orthonormal columns, the other rows without factors.
      const t = decodeModel(new Uint8Array(await (await fetch(`${subspace.url}/v1/model`)).arrayBuffer())).table;
      for (let j = 0; j < 16; j++) {
        let ss = 0;
        for (let i = 0; i < 60; i++) ss += t.factors[i * 16 + j]! ** 2;
        assert.ok(Math.abs(ss - 64) < 1e-2, `column ${j}: squared norm ${ss}`);
      }
      assert.ok(t.factors.subarray(60 * 16).every((x) => x === 0));
    } finally {
      await page.close();
      await subspace.close();
    }
  });

  it('consent given in one tab opens the other tab\'s gate; what is tracked while a grant is applied is kept; calls after close() reject', async () => {
    const context = await browser.newContext();
    const tab = async (): Promise<Page> => {
      const page = await context.newPage();
      await page.addInitScript('globalThis.__name = (f) => f;');
      await page.goto(`${server.url}/test/browser/pages/sdk.html`);
      await page.waitForFunction(() => (window as any).ready === true);
      return page;
    };
    try {
      const [a, b] = [await tab(), await tab()];
      const start = (page: Page) =>
        page.evaluate(async ({ catalog }) => {
          const { createRecommender } = (window as any).localrec;
          (window as any).rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'consent-tabs', consent: 'required', autoTrainEvery: 0, model: { dim: 16 } });
        }, { catalog: CATALOG });
      await start(a);
      await start(b);
      // Tab a: the shopper accepts, and clicks on before the grant has been applied.
      const inA = await a.evaluate(async () => {
        const rec = (window as any).rec;
        const granted = rec.setConsent({ personalization: true });
        rec.track({ type: 'view', itemId: 'sku-1003' });
        await granted;
        await rec.flush();
        const s = await rec.stats();
        return { total: s.events.total, dropped: s.dropped };
      });
      assert.deepEqual(inA, { total: 1, dropped: 0 }, 'the view made while the grant was applied is stored');
      // The banner toggled twice in a row (no, then yes) before either answer came back: what the
      // shopper does after the yes is kept too (it was posted into the withdrawal and lost).
      const toggled = await a.evaluate(async () => {
        const rec = (window as any).rec;
        const no = rec.setConsent({ personalization: false });
        const yes = rec.setConsent({ personalization: true });
        rec.track({ type: 'view', itemId: 'sku-1005' });
        await Promise.all([no, yes]);
        await rec.flush();
        return (await rec.stats()).events.total;
      });
      assert.equal(toggled, 1, 'the withdrawal erased the first view; the one after the grant is stored');
      // Tab b hears of it (its worker and its page gate): its events are stored too.
      await b.waitForFunction(async () => (await (window as any).rec.audit()).consent.personalization === true, null, { timeout: 10_000 });
      const inB = await b.evaluate(async () => {
        const rec = (window as any).rec;
        rec.track({ type: 'view', itemId: 'sku-1017' });
        rec.track({ type: 'view', itemId: 'sku-1042' });
        await rec.flush();
        const s = await rec.stats();
        return { total: s.events.total, dropped: s.dropped };
      });
      assert.deepEqual(inB, { total: 3, dropped: 0 }, 'tab b stores its events once consent was given in tab a');
      // Options a worker could not receive are refused by name; a closed recommender rejects.
      const after = await b.evaluate(async () => {
        const rec = (window as any).rec;
        const bad = await rec.recommend({ k: 2, filter: () => true }).then(() => 'resolved', (e: Error) => `${e.name}: ${e.message}`);
        await rec.close();
        let how = 'no error';
        try {
          await rec.recommend({ k: 2 }).catch((e: Error) => (how = `rejected ${e.name}`));
        } catch (e) {
          how = `threw ${(e as Error).name}`;
        }
        return { bad, how };
      });
      assert.equal(after.bad, 'ValidationError: options.filter: is not an option (known: k, exclude, category, candidates)');
      assert.equal(after.how, 'rejected ClosedError');
      await a.evaluate(() => (window as any).rec.erase());
    } finally {
      await context.close();
    }
  });

  it('makes no sync request when the browser sends Global Privacy Control', async () => {
    const page = await sdkPage(`Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', { get: () => true });`);
    const requests: string[] = [];
    page.on('request', (q) => requests.push(q.url()));
    const r = await page.evaluate(async ({ catalog, serverUrl }) => {
      const { createRecommender } = (window as any).localrec;
      const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'privacy-gpc', autoTrainEvery: 0, model: { dim: 16 }, federated: { serverUrl } });
      rec.track({ type: 'view', itemId: 'sku-1001' });
      rec.track({ type: 'view', itemId: 'sku-1002' });
      let error = '';
      try {
        await rec.sync();
      } catch (e: any) {
        error = e.name;
      }
      const audit = await rec.audit();
      await rec.erase();
      return { error, gpc: audit.privacy.globalPrivacyControl, honored: audit.privacy.globalPrivacyControlHonored };
    }, { catalog: CATALOG, serverUrl: server.url });
    assert.deepEqual(r, { error: 'ConsentError', gpc: true, honored: true });
    assert.equal(requests.filter((u) => u.includes('/v1/')).length, 0);
    await page.close();
  });

  it('a sync() called in the same moment as erase() sends nothing: the shopper asked to erase', async () => {
    const page = await sdkPage();
    const requests: string[] = [];
    page.on('request', (q) => requests.push(`${q.method()} ${new URL(q.url()).pathname}`));
    const r = await page.evaluate(async ({ catalog, serverUrl }) => {
      const { createRecommender } = (window as any).localrec;
      const rec = await createRecommender({ catalog, backend: 'wasm', dbName: 'privacy-sync-erase', autoTrainEvery: 0, model: { dim: 16 }, federated: { serverUrl } });
      for (const itemId of ['sku-1001', 'sku-1002', 'sku-1003']) rec.track({ type: 'view', itemId });
      const syncing = rec.sync().then(() => 'synced', (e: any) => e.name);
      await rec.erase();
      return { sync: await syncing, databases: (await indexedDB.databases()).map((d: IDBDatabaseInfo) => d.name) };
    }, { catalog: CATALOG, serverUrl: server.url });
    assert.equal(r.sync, 'ClosedError');
    assert.ok(!r.databases.includes('privacy-sync-erase'));
    assert.deepEqual(requests.filter((q) => q.includes('/v1/')), [], 'no request reached the server');
    await page.close();
  });

  it('works under a strict Content-Security-Policy (no unsafe-eval; wasm-unsafe-eval for the WASM backend)', async () => {
    const CSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'";
    const csp = await serveRepo(() => ({ 'Content-Security-Policy': CSP }));
    try {
      const page = await openPage(browser, `${csp.url}/test/browser/pages/csp.html`);
      const violations: string[] = [];
      page.on('console', (m) => {
        if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
      });
      const out = await page.waitForFunction(() => (window as any).result, undefined, { timeout: 60_000 });
      const result = (await out.jsonValue()) as { ok: boolean; backend?: string; recs?: number; error?: string };
      assert.deepEqual(violations, []);
      assert.equal(result.error, undefined);
      assert.equal(result.ok, true);
      assert.equal(result.backend, 'wasm');
      assert.equal(result.recs, 3);
      await page.close();
    } finally {
      await csp.close();
    }
  });
});
