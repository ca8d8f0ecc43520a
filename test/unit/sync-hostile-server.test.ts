/**
 * What a malicious or compromised aggregation server can make a device do through its answers
 * (stop 37's review): the config sets the shapes the device allocates, loops over, downloads and
 * uploads; a cohort the server says is full, then keeps forming, must not hold an erase; cohort
 * polls must not push the record of earlier uploads out of the egress log.
 */
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { capEgress, Engine } from '../../src/engine/engine.js';
import { isModelError, isNetworkError, isValidationError } from '../../src/errors.js';
import { RdpAccountant } from '../../src/federated/dp.js';
import { parseServerConfig, syncOnce, type EgressEntry, type FetchLike, type ServerConfig } from '../../src/federated/sync.js';
import { encodeModel, sha256, toHex } from '../../src/federated/wire.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { createItemTable } from '../../src/model/item-table.js';
import '../../src/model/tf.js';

const ids = Array.from({ length: 50 }, (_, i) => `sku-${i}`);
const catalog = { items: ids.map((id, i) => ({ id, title: `Item ${i}`, popularity: 50 - i })) };
const DIM = 8;
const honestConfig = { dim: DIM, items: ids.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 10 };

/**
 * A server that answers `/v1/config` with `config`, `/v1/model` with `model` (the page's catalog at
 * DIM by default) and accepts any update; `requests` lists 'METHOD path' in order.
 */
async function server(o: { config?: Record<string, unknown>; model?: Uint8Array } = {}) {
  const model = o.model ?? encodeModel(createItemTable(ids, DIM, { seed: 3 }));
  const hash = toHex(await sha256(model));
  const requests: string[] = [];
  const fetch: FetchLike = async (url, init) => {
    const path = new URL(url).pathname;
    requests.push(`${init?.method ?? 'GET'} ${path}`);
    if (path === '/v1/config') return Response.json({ ...honestConfig, ...o.config });
    if (path === '/v1/model') return new Response(model as Uint8Array<ArrayBuffer>, { headers: { 'X-Localrec-Model-Hash': hash } });
    return Response.json({ pending: 1, minClients: 10, published: null }, { status: 202 });
  };
  return { fetch, requests };
}

async function device(fetch: FetchLike, o: { federated?: Record<string, unknown>; now?: () => number } = {}): Promise<Engine> {
  const e = await Engine.create({
    catalog,
    backend: 'cpu',
    autoTrainEvery: 0,
    model: { dim: DIM },
    store: new MemoryEventStore(),
    federated: { serverUrl: 'https://agg.example', ...o.federated },
    fetch,
    ...(o.now ? { now: o.now } : {}),
  });
  e.enqueue(['sku-3', 'sku-7', 'sku-11'].map((itemId) => ({ type: 'view', itemId })));
  await e.flush();
  return e;
}

describe('the server config: shapes the device allocates and loops over', () => {
  for (const [field, value] of [
    // A negative block size ran the quantizer's block loop for ever (the worker hung).
    ['blockSize', -1e308],
    ['blockSize', -1],
    ['blockSize', 0],
    ['blockSize', 2.5],
    ['bits', 9],
    ['bits', 1],
    ['bits', 7.5],
    ['dim', 65],
    ['dim', 0],
    ['items', 0],
    ['items', 1_000_001],
    ['items', 12.5],
    ['version', -1],
    ['minClients', 0.5],
  ] as const) {
    it(`${field} = ${value} is refused, naming the field`, () => {
      assert.throws(() => parseServerConfig({ ...honestConfig, [field]: value } as Partial<ServerConfig>), (e: unknown) =>
        isValidationError(e) && e.field === `server config.${field}` && /must be a whole number from/.test(e.message));
    });
  }

  it('a negative blockSize: sync() fails after the config, nothing trained or sent, no ε spent', async () => {
    const srv = await server({ config: { blockSize: -1e308 } });
    const e = await device(srv.fetch);
    try {
      await assert.rejects(e.sync(), (err: unknown) => isValidationError(err) && (err as { field: string }).field === 'server config.blockSize');
      assert.deepEqual(srv.requests, ['GET /v1/config']);
      assert.equal((await e.stats()).privacy.syncs, 0);
    } finally {
      await e.close();
    }
  });

  it('items far beyond the page catalog are refused before the model is downloaded, by both kinds of sync', async () => {
    // 10,050 is the most a device with a 50-item catalog takes (4× the catalog, or 10,000 more).
    const srv = await server({ config: { items: 10_051 } });
    const e = await device(srv.fetch);
    try {
      for (const contribute of [true, false]) {
        await assert.rejects(e.sync({ contribute }), (err: unknown) =>
          isModelError(err) && /announces a model of 10051 items, more than a device with a catalog of 50 takes \(10050: 4× the catalog, or 10,000 more\); nothing was downloaded, sent or spent/.test((err as Error).message));
      }
      assert.deepEqual(srv.requests, ['GET /v1/config', 'GET /v1/config'], 'no model downloaded');
      assert.equal((await e.stats()).privacy.syncs, 0);
    } finally {
      await e.close();
    }
  });

  it('a model of another size than the config announced is refused before anything is trained or sent', async () => {
    // The config says 50 items (so the device reads up to a 50-item model), the model has 40: the
    // update's shape would come from one and the delta from the other.
    const srv = await server({ model: encodeModel(createItemTable(ids.slice(0, 40), DIM, { seed: 3 })) });
    const e = await device(srv.fetch);
    try {
      for (const contribute of [true, false]) {
        await assert.rejects(e.sync({ contribute }), (err: unknown) =>
          isValidationError(err) && /GET \/v1\/model: answered a model of 40 items × 8, but the server's \/v1\/config says 50 × 8; nothing was sent and no ε spent/.test((err as Error).message));
      }
      assert.deepEqual(srv.requests, ['GET /v1/config', 'GET /v1/model', 'GET /v1/config', 'GET /v1/model']);
      assert.equal((await e.stats()).privacy.syncs, 0);
      assert.equal((await e.stats()).model.version, 0, 'nothing adopted');
    } finally {
      await e.close();
    }
  });
});

describe('a cohort the server says is full, then keeps forming', () => {
  /**
   * Secure aggregation: the server answers the device's leave 409 ("full"), then calls the cohort
   * forming for as long as its config allows (a day): no honest server does (a full cohort is ready).
   */
  async function lyingServer(o: { onPoll?: () => void } = {}) {
    const model = encodeModel(createItemTable(ids, DIM, { seed: 3 }));
    const hash = toHex(await sha256(model));
    const cohort = 'cd'.repeat(16);
    const requests: string[] = [];
    const fetch: FetchLike = async (url, init) => {
      const path = new URL(url).pathname;
      requests.push(`${init?.method ?? 'GET'} ${path.replace(cohort, ':id')}`);
      if (path === '/v1/config') {
        return Response.json({ ...honestConfig, minClients: 3, secureAggregation: { maskVersion: 2, cohortSize: 3, bits: 32, step: 1 / 65536, degree: 2, minSurvivors: 3, timeoutMs: 86_400_000 } });
      }
      if (path === '/v1/model') return new Response(model as Uint8Array<ArrayBuffer>, { headers: { 'X-Localrec-Model-Hash': hash } });
      if (path === '/v1/secagg/join') return Response.json({ cohort, index: 0, size: 3, status: 'forming', token: 'ee'.repeat(16) });
      if (path.endsWith('/leave')) return Response.json({ error: 'the cohort is full', reason: 'cohort-closed' }, { status: 409 });
      if (path.endsWith('/members/0')) {
        o.onPoll?.();
        return Response.json({ cohort, size: 3, status: 'forming', joined: 2 });
      }
      return Response.json({ reason: 'not-found' }, { status: 404 });
    };
    return { fetch, requests, posts: () => requests.filter((r) => r.startsWith('POST')) };
  }

  it('an erase after a plain cancel does not wait for the server: the device drops out, erase() resolves, no poll after it', { timeout: 30_000 }, async () => {
    const srv = await lyingServer();
    const e = await device(srv.fetch);
    let joined!: () => void;
    const inCohort = new Promise<void>((r) => (joined = r));
    const ctl = new AbortController();
    const syncing = e.sync({ signal: ctl.signal, onProgress: (p) => p.phase === 'cohort' && joined() });
    await inCohort;
    ctl.abort(); // the page gives up on the sync: the device leaves, the server says "full"
    while (!srv.requests.some((r) => r.endsWith('/leave'))) await new Promise((r) => setTimeout(r, 5));
    // Before the fix: erase() waited on that sync for the server's timeoutMs (a day), polling on.
    await e.erase();
    const after = srv.requests.length;
    await assert.rejects(syncing, (err: Error) => err.name === 'AbortError' && /drops out of it/.test(err.message));
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(srv.requests.length, after, `no request after erase(): ${srv.requests.slice(after).join(', ')}`);
    assert.deepEqual(srv.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/cohorts/:id/members/0/leave'], 'nothing uploaded');
  });

  it('a committed device gives up on a cohort still "forming" a minute after the server said it was full; nothing sent, no ε', { timeout: 30_000 }, async () => {
    const clock = { t: 1_700_000_000_000 };
    // Each poll comes 25 s (of the device's clock) after the one before.
    const srv = await lyingServer({ onPoll: () => void (clock.t += 25_000) });
    const ctl = new AbortController();
    const accountant = new RdpAccountant();
    await assert.rejects(
      syncOnce({
        serverUrl: 'https://agg.example',
        fetch: srv.fetch,
        accountant,
        history: [{ itemIds: ['sku-1', 'sku-5', 'sku-9'], weights: [1, 1, 1] }],
        cohortPollMs: 1,
        signal: ctl.signal,
        now: () => clock.t,
        onProgress: (p) => p.phase === 'cohort' && ctl.abort(),
      }),
      (err: unknown) => isNetworkError(err) && /the server said it was full, yet it was still forming 60000 ms later; nothing was sent/.test((err as Error).message),
    );
    assert.deepEqual(srv.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/cohorts/:id/members/0/leave']);
    assert.ok(srv.requests.filter((r) => r.endsWith('/members/0')).length <= 5, srv.requests.join(', '));
    assert.equal(accountant.releases, 0);
  });
});

describe('the egress log under a flood of cohort polls', () => {
  const entry = (t: number, kind: EgressEntry['kind'], method: EgressEntry['method'] = 'GET'): EgressEntry => ({ t, method, endpoint: kind === 'update' ? '/v1/updates' : '/v1/secagg/cohorts/x/members/0', kind, bytes: 0, status: 200 });

  it('keeps the uploads when the oldest entries must go (1,500 polls after two uploads)', () => {
    const log = [entry(1, 'config'), entry(2, 'update', 'POST'), entry(3, 'model'), entry(4, 'update', 'POST'), ...Array.from({ length: 1500 }, (_, i) => entry(10 + i, 'cohort'))];
    const kept = capEgress(log);
    assert.equal(kept.length, 1000);
    assert.deepEqual(kept.filter((e) => e.kind === 'update').map((e) => e.t), [2, 4]);
    assert.deepEqual(kept.slice(2).map((e) => e.t), log.slice(-998).map((e) => e.t), 'the newest polls, in order');
    assert.deepEqual(kept.map((e) => e.t), [...kept.map((e) => e.t)].sort((a, b) => a - b), 'oldest first');
  });

  it('a log within the limit is kept whole; one of uploads alone keeps the newest', () => {
    const small = Array.from({ length: 10 }, (_, i) => entry(i, i % 2 ? 'update' : 'cohort'));
    assert.deepEqual(capEgress(small), small);
    const uploads = Array.from({ length: 1200 }, (_, i) => entry(i, 'update', 'POST'));
    assert.deepEqual(capEgress(uploads).map((e) => e.t), uploads.slice(-1000).map((e) => e.t));
  });

});
