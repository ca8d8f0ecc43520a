/**
 * The device side of federated learning against a real `localrec serve` app on loopback: what goes
 * out, what the accountant records, and that rounds publish once enough devices took part.
 */
import type { TrackEvent } from '../../src/types.js';
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EGRESS_KEY, Engine, MODEL_KEY, PRIVACY_KEY, settlePending } from '../../src/engine/engine.js';
import type { AccountantState } from '../../src/federated/dp.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { isModelError, isNetworkError, isPrivacyBudgetError, isStorageError, isValidationError, StorageError } from '../../src/errors.js';
import { RdpAccountant } from '../../src/federated/dp.js';
import { maxModelBytes, PRIVATE_FETCH, syncOnce } from '../../src/federated/sync.js';
import { encodeModel } from '../../src/federated/wire.js';
import { createItemTable } from '../../src/model/item-table.js';
import { startServer, type RunningServer } from '../../src/server/index.js';
import type { EgressEntry, FetchLike } from '../../src/federated/sync.js';
import '../../src/model/tf.js';

/**
 * Where the tests' injected clocks start: today at 00:00 UTC, not a fixed date (the stores apply
 * retention by the real clock, and would drop events dated more than a year before it).
 */
const CLOCK_START = Math.floor(Date.now() / 86_400_000) * 86_400_000;

const ids = Array.from({ length: 200 }, (_, i) => `sku-${i}`);
const catalog = { items: ids.map((id, i) => ({ id, title: `Item ${i}`, popularity: 200 - i })) };
let server: RunningServer;

before(async () => {
  server = await startServer({
    port: 0,
    dataDir: null,
    initialTable: createItemTable(ids, 16, { seed: 1 }),
    minClients: 3,
    clip: 1,
    noiseMultiplier: 1,
    rateLimit: false,
    log: () => {},
  });
});
after(async () => {
  await server?.close();
});

/** Runs `f` against a server of its own (so the test decides when versions are published), closed after. */
async function withOwnServer(o: { seed?: number; minClients?: number }, f: (srv: RunningServer) => Promise<void>): Promise<void> {
  const srv = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 16, { seed: o.seed ?? 2 }), minClients: o.minClients ?? 50, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
  try {
    await f(srv);
  } finally {
    await srv.close();
  }
}

/** Records every request body and URL the device sends. */
function capturingFetch(): { fetch: FetchLike; sent: Array<{ url: string; body?: Uint8Array; credentials?: string; cache?: string; redirect?: string; referrerPolicy?: string }> } {
  const sent: Array<{ url: string; body?: Uint8Array; credentials?: string; cache?: string; redirect?: string; referrerPolicy?: string }> = [];
  return {
    sent,
    fetch: (url, init) => {
      sent.push({ url, body: init?.body, credentials: init?.credentials, cache: init?.cache, redirect: init?.redirect, referrerPolicy: init?.referrerPolicy });
      return fetch(url, init as RequestInit);
    },
  };
}

/** A device on `url` (the server's base URL) that viewed `history`, with the options given. */
async function deviceAt(url: string, history: string[], o: { store?: MemoryEventStore; federated?: Record<string, unknown>; fetch?: FetchLike; now?: () => number } = {}): Promise<Engine> {
  const e = await Engine.create({
    catalog,
    backend: 'cpu',
    autoTrainEvery: 0,
    model: { dim: 16 },
    store: o.store ?? new MemoryEventStore(),
    federated: { serverUrl: url, ...o.federated },
    fetch: o.fetch,
    ...(o.now ? { now: o.now } : {}),
  });
  if (history.length) {
    e.enqueue(history.map((itemId) => ({ type: 'view', itemId })));
    await e.flush();
  }
  return e;
}

async function device(history: string[], extra: { budget?: number; fetch?: FetchLike } = {}) {
  const e = await Engine.create({
    catalog,
    backend: 'cpu',
    autoTrainEvery: 0,
    model: { dim: 16 },
    store: new MemoryEventStore(),
    federated: { serverUrl: server.url, budget: extra.budget },
    fetch: extra.fetch,
  });
  e.enqueue(history.map((itemId, i) => ({ type: i % 3 === 2 ? 'purchase' : 'view', itemId, query: undefined })).map(({ query: _, ...ev }) => ev) as TrackEvent[]);
  e.enqueue([{ type: 'search', query: 'secret query words' }]);
  await e.flush();
  return e;
}

describe('sync()', () => {
  it('sends only the documented update: no item id, query or raw weights in any URL or body', async () => {
    const cap = capturingFetch();
    const history = ['sku-7', 'sku-42', 'sku-99', 'sku-150'];
    const e = await device(history, { fetch: cap.fetch });
    const r = await e.sync();
    assert.equal(r.sent, true);
    assert.ok(r.epsilon > 0 && r.epsilon < 8);
    const posts = cap.sent.filter((s) => s.body);
    assert.equal(posts.length, 1, 'one body leaves the device: the update');
    assert.equal(posts[0]!.url, `${server.url}/v1/updates`);
    const body = posts[0]!.body!;
    assert.equal(r.uploadedBytes, body.length);
    assert.deepEqual([...body.subarray(0, 4)], [0x4c, 0x52, 0x55, 0x31], 'LRU1 magic');
    const text = Buffer.from(body).toString('latin1');
    for (const needle of [...history, 'secret', 'query']) assert.ok(!text.includes(needle), `${needle} is not in the body`);
    for (const s of cap.sent) assert.ok(!/sku-|secret|\?/.test(s.url.replace(server.url, '')), `URL ${s.url} carries no data`);
    // No cookie of the shop's rides along (the server may share its origin), no HTTP cache (the
    // browser would send its own If-None-Match from it, after an erase too), and no Referer (the
    // page's or the worker script's URL).
    for (const s of cap.sent) assert.deepEqual([s.credentials, s.cache, s.redirect, s.referrerPolicy], ['omit', 'no-store', 'error', 'no-referrer'], s.url);
    const log = await e.egressLog();
    assert.deepEqual(log.map((l) => `${l.method} ${l.endpoint} ${l.status}`), ['GET /v1/config 200', 'GET /v1/model 200', 'POST /v1/updates 202']);
    assert.equal(log[2]!.bytes, body.length);
    assert.match(log[2]!.bodySha256!, /^[0-9a-f]{64}$/);
    const st = await e.stats();
    assert.equal(st.privacy.syncs, 1);
    assert.ok(Math.abs(st.privacy.epsilon - r.epsilon) < 1e-9);
    assert.equal(st.privacy.syncsLeft, 1, 'σ = 1: the second of two syncs within ε = 8 is left');
    assert.equal((await e.audit()).privacy.syncsLeft, 1);
    await e.close();
  });

  it('publishes a new global version once minClients devices have sent updates, and devices adopt it', async () => {
    const start = (await (await fetch(`${server.url}/v1/health`)).json()) as { version: number };
    const results = [];
    // One device already sent in the previous test; with minClients 3, two more complete the round.
    for (const h of [['sku-1', 'sku-2', 'sku-3'], ['sku-4', 'sku-5', 'sku-6']]) {
      const e = await device(h);
      results.push(await e.sync());
      await e.close();
    }
    assert.equal(results.at(-1)!.published, start.version + 1);
    const later = await device(['sku-9', 'sku-10']);
    const r = await later.sync();
    assert.equal(r.version, start.version + 1, 'the next device builds on the new version');
    assert.equal((await later.stats()).model.version, start.version + 1);
    await later.close();
  });

  it('refuses past the privacy budget before sending anything, and keeps the ε spent', async () => {
    const cap = capturingFetch();
    const e = await device(['sku-20', 'sku-21', 'sku-22'], { budget: 5, fetch: cap.fetch });
    assert.equal((await e.stats()).privacy.syncsLeft, null, "before the first sync the device does not know the server's σ");
    await e.sync(); // σ = 1: ε ≈ 4.38
    assert.equal((await e.stats()).privacy.syncsLeft, 0, 'a second sync at σ = 1 would pass ε = 5');
    const before = cap.sent.filter((s) => s.body).length;
    await assert.rejects(e.sync(), (err) => isPrivacyBudgetError(err) && /budget ε = 5/.test((err as Error).message));
    assert.equal(cap.sent.filter((s) => s.body).length, before, 'no update was sent');
    assert.equal((await e.stats()).privacy.syncs, 1);
    await e.close();
  });

  it('the ε and the egress so far are stored before the update leaves, so a tab closed mid-upload cannot lose them', async () => {
    const store = new MemoryEventStore();
    const seen: Array<{ releases: number; logged: Array<{ endpoint: string; status: number; pending?: true }> }> = [];
    const e: Engine = await deviceAt(server.url, [], {
      store,
      fetch: async (url, init) => {
        // What a page closed at this instant would have left in its store.
        if (url.endsWith('/v1/updates')) {
          const logged = (await e.egressLog()).map(({ endpoint, status, pending }) => ({ endpoint, status, ...(pending ? { pending } : {}) }));
          seen.push({ releases: (await store.getMeta<AccountantState>(PRIVACY_KEY))?.releases ?? 0, logged });
        }
        return fetch(url, init as RequestInit);
      },
    });
    e.enqueue(['sku-30', 'sku-31', 'sku-32'].map((itemId) => ({ type: 'view', itemId })));
    await e.flush();
    await e.sync();
    assert.deepEqual(
      seen,
      [{ releases: 1, logged: [{ endpoint: '/v1/config', status: 200 }, { endpoint: '/v1/model', status: 200 }, { endpoint: '/v1/updates', status: 0, pending: true }] }],
      'the release, the config and model requests and the upload (pending) were stored before the upload',
    );
    const log = await e.egressLog();
    assert.deepEqual(log.map((l) => [l.endpoint, l.status, l.pending]), [['/v1/config', 200, undefined], ['/v1/model', 200, undefined], ['/v1/updates', 202, undefined]], 'each request logged once; the upload\'s answer replaced its pending entry');
    await e.close();
  });

  it('the ε a release spends is never stored without its upload in the egress log: one write holds both (a tab closed between two writes)', async () => {
    /** After every write, what a tab closed at that instant would leave: releases counted, and whether the upload is logged. */
    const states: Array<{ releases: number; uploadLogged: boolean }> = [];
    class Store extends MemoryEventStore {
      private async note(): Promise<void> {
        const log = (await this.getMeta<EgressEntry[]>(EGRESS_KEY)) ?? [];
        states.push({ releases: (await this.getMeta<AccountantState>(PRIVACY_KEY))?.releases ?? 0, uploadLogged: log.some((x) => x.kind === 'update') });
      }
      override async setMeta(key: string, value: Parameters<MemoryEventStore['setMeta']>[1]): Promise<void> {
        await super.setMeta(key, value);
        await this.note();
      }
      override async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
        const r = await super.updateMeta(key, update);
        await this.note();
        return r;
      }
      override async updateMetaPair<A, B>(keyA: string, keyB: string, update: (a: A | undefined, b: B | undefined) => [A, B]): Promise<[A, B]> {
        const r = await super.updateMetaPair(keyA, keyB, update);
        await this.note();
        return r;
      }
    }
    const e = await deviceAt(server.url, ['sku-33', 'sku-34', 'sku-35'], { store: new Store() });
    try {
      const r = await e.sync();
      assert.equal(r.sent, true);
      assert.ok(states.some((x) => x.releases === 1), 'the release was stored');
      assert.deepEqual(states.filter((x) => x.releases > 0 && !x.uploadLogged), [], 'no state holds the ε without the upload\'s entry');
    } finally {
      await e.close();
    }
  });

  it('a sync whose last store of the egress log fails still reports the update it sent (not a failure to retry, spending again); the entries are kept in memory and stored with the next request', async () => {
    let full = true;
    const written: EgressEntry[][] = [];
    class Store extends MemoryEventStore {
      override async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
        // Storage fills up by the time the upload's answer is stored.
        if (key === EGRESS_KEY) {
          const next = update((await this.getMeta<T>(key)) as T | undefined) as unknown as EgressEntry[];
          if (full && next.some((x) => x.kind === 'update' && x.status === 202)) throw Object.assign(new Error('QuotaExceededError (simulated)'), { name: 'QuotaExceededError' });
          written.push(next);
        }
        return super.updateMeta(key, update);
      }
    }
    const store = new Store();
    const e = await deviceAt(server.url, ['sku-36', 'sku-37', 'sku-38'], { store });
    try {
      const r = await e.sync();
      assert.equal(r.sent, true);
      assert.match((await e.stats()).lastError ?? '', /egress log could not be stored when the sync ended \(QuotaExceededError \(simulated\)\); its last entries are kept in memory/);
      const shown = [['config', 200, undefined], ['model', 200, undefined], ['update', 202, undefined]];
      assert.deepEqual((await e.egressLog()).map((x) => [x.kind, x.status, x.pending]), shown, 'the upload\'s answer is listed (from memory)');
      assert.deepEqual((await store.getMeta<EgressEntry[]>(EGRESS_KEY))!.map((x) => [x.kind, x.status]), [['config', 200], ['model', 200], ['update', 0]], 'stored: still pending');
      // Room again: the next request logged (a receiving sync's) stores it, once.
      full = false;
      await e.sync({ contribute: false });
      const stored = (await store.getMeta<EgressEntry[]>(EGRESS_KEY))!;
      assert.deepEqual(stored.slice(0, 3).map((x) => [x.kind, x.status, x.pending]), shown);
      assert.equal(stored.filter((x) => x.kind === 'update').length, 1);
      assert.deepEqual(await e.egressLog(), stored);
    } finally {
      await e.close();
    }
  });

  it('a sync whose received model cannot be saved after the upload says the update was sent and ε spent, and keeps the weights stored before', async () => {
    let full = false;
    class Store extends MemoryEventStore {
      override async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
        // (As IdbEventStore reports it.)
        if (full && key === MODEL_KEY) throw new StorageError('saving "model" failed: QuotaExceededError (simulated)');
        return super.updateMeta(key, update);
      }
    }
    // (A clock that stands still: scores move with the history's decay over time.)
    const t0 = Date.now();
    const e = await deviceAt(server.url, ['sku-39', 'sku-40', 'sku-41'], { store: new Store(), now: () => t0 });
    try {
      const before = await e.stats();
      const ranked = (await e.recommend({ k: 5 })).map((x) => [x.itemId, x.score]);
      full = true;
      await assert.rejects(e.sync(), (err) => isStorageError(err) && /the update was sent \(\d+ bytes, accepted by the server\) and ε is spent \(\d/.test((err as Error).message) && /QuotaExceededError/.test((err as Error).message));
      const after = await e.stats();
      assert.ok(after.privacy.epsilon > before.privacy.epsilon, 'ε spent');
      assert.deepEqual([after.model.version, after.model.trainSteps, after.model.pendingEvents], [before.model.version, before.model.trainSteps, before.model.pendingEvents], 'the model in use is the one stored');
      assert.deepEqual((await e.recommend({ k: 5 })).map((x) => [x.itemId, x.score]), ranked);
      assert.equal((await e.egressLog()).filter((x) => x.kind === 'update' && x.status === 202).length, 1);
      // Room again: the next sync downloads the model and saves it.
      full = false;
      const r = await e.sync({ contribute: false });
      assert.equal(r.version, (await e.stats()).model.version);
    } finally {
      await e.close();
    }
  });

  // A diff review (stop 36): each failed save put back the weights in use before it, which can be
  // another unsaved swap: a train() and a sync overlapping on a full store left the train()'s in use.
  it('a train() and a sync whose saves both fail leave the stored weights in use, with their counters', async () => {
    let blocked = false;
    let saves = 0;
    let release!: () => void;
    const opened = new Promise<void>((r) => (release = r));
    class Store extends MemoryEventStore {
      override async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
        if (blocked && key === MODEL_KEY) {
          saves++;
          await opened;
          throw new StorageError('saving "model" failed: QuotaExceededError (simulated)');
        }
        return super.updateMeta(key, update);
      }
    }
    let letModelGo!: () => void;
    let holdModel: Promise<void> | undefined;
    let modelAsked = false;
    const fetch: FetchLike = async (url, init) => {
      if (holdModel && url.includes('/v1/model')) {
        modelAsked = true;
        await holdModel;
      }
      return globalThis.fetch(url, init);
    };
    const store = new Store();
    const until = async (ok: () => boolean) => {
      for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(ok());
    };
    const e = await deviceAt(server.url, ['sku-42', 'sku-43', 'sku-44'], { store, fetch });
    try {
      await e.train({ epochs: 1 });
      const stored = await store.getMeta<{ factors: Float32Array; trainSteps: number }>(MODEL_KEY);
      const before = (await e.stats()).model;
      blocked = true;
      holdModel = new Promise((r) => (letModelGo = r));
      // The sync waits for its model; a train() runs meanwhile, and its save waits too.
      const syncing = e.sync({ contribute: false });
      await until(() => modelAsked);
      e.enqueue([{ type: 'view', itemId: 'sku-45' }]);
      await e.flush();
      const training = e.train({ epochs: 1 });
      await until(() => saves === 1);
      letModelGo();
      await until(() => saves === 2);
      release();
      const [t, y] = await Promise.allSettled([training, syncing]);
      assert.deepEqual([t.status, y.status], ['rejected', 'rejected']);
      assert.ok(isStorageError((t as PromiseRejectedResult).reason) && isStorageError((y as PromiseRejectedResult).reason));
      const after = (await e.stats()).model;
      assert.deepEqual([after.trainSteps, after.version, after.trainedAt], [before.trainSteps, before.version, before.trainedAt]);
      assert.equal(after.pendingEvents, 1);
      assert.deepEqual(Array.from(e.itemTable().factors), Array.from(stored!.factors), 'the weights stored');
    } finally {
      release();
      await e.close();
    }
  });

  it('the neighbour file is fetched with the same private options as the federated requests (no cookie, cache, redirect or Referer)', async () => {
    const seen: Array<Parameters<FetchLike>[1]> = [];
    const url = 'https://cdn.example/neighbors.lrn';
    const f: FetchLike = async (u, init) => {
      if (u === url) seen.push(init);
      return new Response('', { status: 404 });
    };
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 16 }, store: new MemoryEventStore(), neighbors: { url }, fetch: f });
    try {
      for (let i = 0; i < 200 && seen.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(seen.length, 1);
      const { credentials, cache, redirect, referrerPolicy } = seen[0]!;
      assert.deepEqual({ credentials, cache, redirect, referrerPolicy }, PRIVATE_FETCH);
      assert.equal(PRIVATE_FETCH.referrerPolicy, 'no-referrer');
    } finally {
      await e.close();
    }
  });

  it('a request still waiting for its answer is in the stored egress log (pending), and its answer replaces that entry', async () => {
    const store = new MemoryEventStore();
    const seen: Record<string, string[]> = {};
    const e: Engine = await deviceAt(server.url, [], {
      store,
      fetch: async (url, init) => {
        // What a page closed while this request waits for its answer would have left in its store.
        seen[new URL(url).pathname] = (await e.egressLog()).map((l) => `${l.method} ${l.endpoint} ${l.status}${l.pending ? ' pending' : ''}`);
        return fetch(url, init as RequestInit);
      },
    });
    try {
      e.enqueue(['sku-33', 'sku-34', 'sku-35'].map((itemId) => ({ type: 'view', itemId })));
      await e.flush();
      await e.sync();
      assert.deepEqual(seen, {
        '/v1/config': ['GET /v1/config 0 pending'],
        '/v1/model': ['GET /v1/config 200', 'GET /v1/model 0 pending'],
        '/v1/updates': ['GET /v1/config 200', 'GET /v1/model 200', 'POST /v1/updates 0 pending'],
      });
      assert.deepEqual((await e.egressLog()).map((l) => `${l.method} ${l.endpoint} ${l.status}${l.pending ? ' pending' : ''}`), ['GET /v1/config 200', 'GET /v1/model 200', 'POST /v1/updates 202']);
    } finally {
      await e.close();
    }
  });

  it('a sync() called while one is under way shares its result: one update, one release', async () => {
    const cap = capturingFetch();
    const e = await device(['sku-40', 'sku-41', 'sku-42'], { fetch: cap.fetch });
    const [a, b] = await Promise.all([e.sync(), e.sync()]);
    assert.deepEqual(a, b);
    assert.equal(cap.sent.filter((x) => x.url.endsWith('/v1/updates')).length, 1);
    assert.equal((await e.stats()).privacy.syncs, 1);
    await e.sync(); // once it is over, the next call is a new round
    assert.equal((await e.stats()).privacy.syncs, 2);
    await e.close();
  });

  it('syncOnce (the Node API) on one accountant: two concurrent calls never spend past the budget', async () => {
    const { syncOnce } = await import('../../src/federated/sync.js');
    const { RdpAccountant } = await import('../../src/federated/dp.js');
    await withOwnServer({ minClients: 50 }, async (srv) => {
      const acc = new RdpAccountant();
      acc.record(1); // ε 4.38; budget 8 allows one more release at σ = 1 (6.57), not two (8.39)
      const o = { serverUrl: srv.url, accountant: acc, budget: 8, history: [{ itemIds: ids.slice(0, 4), weights: [1, 1, 1, 1] }], train: { epochs: 1 } };
      const r = await Promise.allSettled([syncOnce(o), syncOnce(o)]);
      assert.deepEqual(r.map((x) => x.status).sort(), ['fulfilled', 'rejected']);
      const refused = r.find((x) => x.status === 'rejected') as PromiseRejectedResult;
      assert.ok(isPrivacyBudgetError(refused.reason), String(refused.reason));
      assert.equal(acc.releases, 2);
      assert.ok(acc.epsilon() <= 8, `ε ${acc.epsilon()}`);
    });
  });

  it('retries when the server is unreachable, logs each attempt, and loses no local data', async () => {
    const e = await Engine.create({
      catalog,
      backend: 'cpu',
      autoTrainEvery: 0,
      model: { dim: 16 },
      store: new MemoryEventStore(),
      federated: { serverUrl: 'http://127.0.0.1:9' },
      fetch: (url, init) => fetch(url, { ...(init as RequestInit) }),
    });
    e.enqueue([{ type: 'view', itemId: 'sku-1' }, { type: 'view', itemId: 'sku-2' }]);
    await assert.rejects(e.sync(), (err) => isNetworkError(err));
    const log = await e.egressLog();
    assert.ok(log.length >= 3 && log.every((l) => l.status === 0 && l.endpoint === '/v1/config'));
    assert.equal((await e.stats()).events.total, 2);
    await e.close();
  });

  it('a server that never answers an attempt does not hold the sync: each attempt has a deadline, logged as status 0', async () => {
    // GETs pass through to the real server; every POST (the upload) is left without an answer, and
    // the fetch ignores aborts, as a stuck connection would (only the deadline's abort ends it).
    const f: FetchLike = (url, init) => {
      if (init?.method === 'POST') {
        return new Promise((_, reject) => init.signal?.addEventListener('abort', () => reject(new DOMException('stalled', 'AbortError'))));
      }
      return fetch(url, init as RequestInit);
    };
    const accountant = new RdpAccountant();
    const log: EgressEntry[] = [];
    const t0 = Date.now();
    await assert.rejects(
      syncOnce({ serverUrl: server.url, fetch: f, accountant, history: [{ itemIds: ['sku-1', 'sku-2', 'sku-3'], weights: [1, 1, 1] }], requestTimeoutMs: 150, backoffMs: 10, onEgress: (e) => log.push(e) }),
      (e: unknown) => isNetworkError(e) && /POST \/v1\/updates: no answer within 0\.15 s/.test((e as Error).message),
    );
    assert.ok(Date.now() - t0 < 30_000);
    const posts = log.filter((l) => l.method === 'POST' && !l.pending);
    assert.equal(posts.length, 3, 'three attempts');
    assert.ok(posts.every((l) => l.status === 0));
    assert.equal(accountant.releases, 1, 'the release was charged once, before the body left');
  });

  it('a drop-out between attempts of the upload is not logged as "not sent" once an attempt left', async () => {
    const ctl = new AbortController();
    let posts = 0;
    // The first attempt reaches the server, whose answer is lost as a 503; then the shopper erases.
    const f: FetchLike = async (url, init) => {
      const res = await fetch(url, init as RequestInit);
      if (init?.method !== 'POST') return res;
      posts++;
      ctl.abort();
      return new Response('{}', { status: 503 });
    };
    const log: EgressEntry[] = [];
    await assert.rejects(
      syncOnce({ serverUrl: server.url, fetch: f, accountant: new RdpAccountant(), history: [{ itemIds: ['sku-1', 'sku-2', 'sku-3'], weights: [1, 1, 1] }], backoffMs: 10, signal: ctl.signal, dropOut: () => true, onEgress: (e) => log.push(e) }),
      (e: unknown) => (e as Error).name === 'AbortError' && /an earlier attempt may have reached the server/.test((e as Error).message),
    );
    assert.equal(posts, 1, 'no further attempt');
    assert.deepEqual(log.filter((l) => l.method === 'POST').map((l) => [l.status, l.notSent ?? false]), [[0, false], [503, false]], 'the pending entry, then the attempt: none says not sent');
  });

  it('an accepted upload whose answer is not the documented JSON is still reported as sent (its ε is spent), without the round figures', async () => {
    for (const body of ['OK', '{"pending":"many"}', '']) {
      // The upload reaches the real server; its answer is replaced, as a proxy might.
      const f: FetchLike = async (url, init) => {
        const res = await fetch(url, init as RequestInit);
        return init?.method === 'POST' ? new Response(body, { status: res.status }) : res;
      };
      const accountant = new RdpAccountant();
      const r = await syncOnce({ serverUrl: server.url, fetch: f, accountant, history: [{ itemIds: ['sku-1', 'sku-2', 'sku-3'], weights: [1, 1, 1] }] });
      assert.equal(r.sent, true, body);
      assert.equal(r.server, undefined, body);
      assert.equal(accountant.releases, 1, body);
      assert.ok(r.epsilon > 0, body);
    }
    // The documented answer still comes through.
    const r = await syncOnce({ serverUrl: server.url, accountant: new RdpAccountant(), history: [{ itemIds: ['sku-1', 'sku-2', 'sku-3'], weights: [1, 1, 1] }] });
    assert.equal(typeof r.server?.pending, 'number');
  });

  it('a model body larger than the server\'s own config allows is refused, declared or streamed, without reading it all', async () => {
    const config = (await (await fetch(`${server.url}/v1/config`)).json()) as { items: number; dim: number };
    const cap = maxModelBytes(config.items, config.dim);
    let produced = 0;
    const endless = () =>
      new ReadableStream<Uint8Array>({
        pull(c) {
          produced += 65_536;
          c.enqueue(new Uint8Array(65_536));
        },
      });
    for (const [label, answer] of [
      ['declared', () => new Response(new Uint8Array(16), { headers: { 'Content-Length': String(cap + 1) } })],
      ['streamed', () => new Response(endless())],
    ] as const) {
      produced = 0;
      const f: FetchLike = async (url, init) => (String(url).endsWith('/v1/model') ? answer() : fetch(url, init as RequestInit));
      const accountant = new RdpAccountant();
      await assert.rejects(
        syncOnce({ serverUrl: server.url, fetch: f, accountant, history: [{ itemIds: ['sku-1', 'sku-2', 'sku-3'], weights: [1, 1, 1] }] }),
        (e: unknown) => isValidationError(e) && e.field === 'GET /v1/model' && new RegExp(`more than the ${cap} bytes a model of ${config.items} items × ${config.dim}`).test(e.message),
        label,
      );
      assert.ok(produced <= cap + 2 * 65_536, `${label}: read ${produced} bytes against a cap of ${cap}`);
      assert.equal(accountant.releases, 0, `${label}: nothing spent`);
    }
  });

  it('says what is missing when federated learning is not configured', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, store: new MemoryEventStore() });
    await assert.rejects(e.sync(), (err) => isValidationError(err) && /options\.federated\.serverUrl/.test((err as Error).message));
    await e.close();
  });
});

/**
 * Withdraws consent to federated learning right after the first meta write `when` picks (the
 * release, or the pending upload entry), as a page's consent banner could at that instant.
 */
function withdrawConsentAfterWrite(store: MemoryEventStore, e: Engine, when: (key: string, stored: unknown) => boolean): { done: () => Promise<void> } {
  const updateMeta = store.updateMeta.bind(store);
  let withdrawn: Promise<void> | undefined;
  const updateMetaPair = store.updateMetaPair.bind(store);
  store.updateMeta = (async (key: string, f: (v: unknown) => unknown) => {
    const r = await updateMeta(key, f as never);
    if (!withdrawn && when(key, r)) withdrawn = e.setConsent({ federated: false });
    return r;
  }) as typeof store.updateMeta;
  // (The release and the upload's pending entry are written together.)
  store.updateMetaPair = (async (a: string, b: string, f: (x: unknown, y: unknown) => [unknown, unknown]) => {
    const r = await updateMetaPair(a, b, f);
    if (!withdrawn && (when(a, r[0]) || when(b, r[1]))) withdrawn = e.setConsent({ federated: false });
    return r;
  }) as typeof store.updateMetaPair;
  return { done: async () => withdrawn };
}

describe('sync(): what a server that does not play fair can learn', () => {
  it('refuses a model whose X-Localrec-Model-Hash header is not the body\'s hash (a per-device tag): nothing trained, spent or sent', async () => {
    const cap = capturingFetch();
    const tagging: FetchLike = async (url, init) => {
      const res = await cap.fetch(url, init);
      if (!url.endsWith('/v1/model') || res.status !== 200) return res;
      const headers = new Headers(res.headers);
      headers.set('X-Localrec-Model-Hash', 'deadbeef'.repeat(8));
      return new Response(await res.arrayBuffer(), { status: 200, headers });
    };
    const e = await deviceAt(server.url, ['sku-60', 'sku-61', 'sku-62'], { fetch: tagging });
    try {
      await assert.rejects(e.sync(), (err: Error) => isValidationError(err) && /X-Localrec-Model-Hash.*deadbeef.*misstates/.test(err.message));
      assert.equal((await e.stats()).privacy.syncs, 0, 'no ε spent');
      assert.equal(cap.sent.filter((x) => x.url.endsWith('/v1/updates')).length, 0, 'nothing uploaded');
      // An honest header (the body's own SHA-256, in any letter case) is taken.
      const upper: FetchLike = async (url, init) => {
        const res = await fetch(url, init as RequestInit);
        if (!url.endsWith('/v1/model') || res.status !== 200) return res;
        const headers = new Headers(res.headers);
        headers.set('X-Localrec-Model-Hash', headers.get('X-Localrec-Model-Hash')!.toUpperCase());
        return new Response(await res.arrayBuffer(), { status: 200, headers });
      };
      const f = await deviceAt(server.url, ['sku-60', 'sku-61', 'sku-62'], { fetch: upper });
      assert.equal((await f.sync()).sent, true);
      await f.close();
    } finally {
      await e.close();
    }
  });

  it('uploads whether or not the server\'s model knows the shopper\'s items: the decision is the device\'s own (noise only, charged as usual)', async () => {
    // A server whose catalog holds none of this shopper's items (one of the page's others: a model
    // sharing no item with the page at all is refused for every shopper alike), and one that holds them all.
    const other = ['sku-0', ...Array.from({ length: 49 }, (_, i) => `other-${i}`)];
    const srv = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(other, 16, { seed: 4 }), minClients: 50, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
    try {
      const sizes: number[] = [];
      for (const url of [srv.url, server.url]) {
        const cap = capturingFetch();
        const e = await deviceAt(url, ['sku-70', 'sku-71', 'sku-72'], { fetch: cap.fetch });
        const r = await e.sync();
        assert.equal(r.sent, true, `uploads to ${url === srv.url ? 'the server that knows none of the items' : 'the server that knows them'}`);
        assert.equal((await e.stats()).privacy.syncs, 1);
        sizes.push(cap.sent.find((x) => x.url.endsWith('/v1/updates'))!.body!.length);
        await e.close();
      }
      // One item is not a history to learn from, on any server: nothing sent, nothing spent.
      const single = await deviceAt(server.url, ['sku-73', 'sku-73']);
      assert.equal((await single.sync()).sent, false);
      assert.equal((await single.stats()).privacy.syncs, 0);
      await single.close();
      assert.ok(sizes.every((n) => n > 0));
    } finally {
      await srv.close();
    }
  });

  it('a server model of another dim is refused before it is downloaded, trained, spent or sent', async () => {
    const cap = capturingFetch();
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store: new MemoryEventStore(), federated: { serverUrl: server.url }, fetch: cap.fetch });
    try {
      e.enqueue(['sku-80', 'sku-81', 'sku-82'].map((itemId) => ({ type: 'view', itemId })));
      await e.flush();
      for (const contribute of [true, false]) await assert.rejects(e.sync({ contribute }), /the server's model has dim 16, this device uses 8/);
      assert.equal((await e.stats()).privacy.syncs, 0, 'no ε spent');
      assert.deepEqual(cap.sent.map((x) => new URL(x.url).pathname), ['/v1/config', '/v1/config'], 'the config says the dim: no model downloaded');
    } finally {
      await e.close();
    }
  });

  it('a server model that shares no item id with the page (another catalog) is refused before anything is spent or sent (stop 32)', async () => {
    const cap = capturingFetch();
    const renamed = { items: catalog.items.map((i) => ({ ...i, id: `new-${i.id}` })) };
    const e = await Engine.create({ catalog: renamed, backend: 'cpu', autoTrainEvery: 0, model: { dim: 16 }, store: new MemoryEventStore(), federated: { serverUrl: server.url }, fetch: cap.fetch });
    try {
      e.enqueue(['new-sku-80', 'new-sku-81', 'new-sku-82'].map((itemId) => ({ type: 'view', itemId })));
      await e.flush();
      for (const contribute of [true, false]) {
        await assert.rejects(e.sync({ contribute }), (err) => isModelError(err) && /shares no item id with this page's catalog \(server: \d+ items, e\.g\. "sku-0"/.test(err.message));
      }
      assert.equal((await e.stats()).privacy.syncs, 0, 'no ε spent');
      assert.deepEqual(cap.sent.map((x) => new URL(x.url).pathname), ['/v1/config', '/v1/model', '/v1/config', '/v1/model'], 'no upload');
      assert.equal((await e.stats()).model.version, 0, 'nothing adopted');
    } finally {
      await e.close();
    }
  });

  it('items the page lists again (or anew) that the held global model has take its rows at the next visit, though the server answers 304 (stop 32)', async () => {
    await withOwnServer({ seed: 4 }, async (srv) => {
      const store = new MemoryEventStore();
      const open = (n: number) => Engine.create({ catalog: { items: catalog.items.slice(0, n) }, backend: 'cpu', autoTrainEvery: 0, model: { dim: 16 }, store, federated: { serverUrl: srv.url } });
      const server = createItemTable(ids, 16, { seed: 4 });
      const row = (t: { itemIds: readonly string[]; factors: Float32Array; bias: Float32Array }, id: string) => {
        const r = t.itemIds.indexOf(id);
        return [...t.factors.subarray(r * 16, r * 16 + 16), t.bias[r]];
      };
      const first = await open(150); // sku-150… out of stock today
      assert.equal((await first.sync({ contribute: false })).modelChanged, true);
      assert.deepEqual(row(first.itemTable(), 'sku-3'), row(server, 'sku-3'));
      await first.close();
      const second = await open(200);
      for (const id of ['sku-3', 'sku-150', 'sku-199']) assert.deepEqual(row(second.itemTable(), id), row(server, id), `${id}: the global model's row`);
      assert.equal((await second.sync({ contribute: false })).modelChanged, false, 'the server has nothing newer');
      assert.deepEqual(row(second.itemTable(), 'sku-150'), row(server, 'sku-150'));
      await second.close();
    });
  });

  it('consent withdrawn while the release is being recorded still stops the upload (the ε stays spent)', async () => {
    const store = new MemoryEventStore();
    const cap = capturingFetch();
    const e = await deviceAt(server.url, ['sku-90', 'sku-91', 'sku-92'], { store, fetch: cap.fetch });
    const withdrawn = withdrawConsentAfterWrite(store, e, (key) => key === PRIVACY_KEY);
    try {
      await assert.rejects(e.sync(), (err: Error) => err.name === 'AbortError' && /after its release was recorded: no update was sent, but its ε is spent/.test(err.message));
      await withdrawn.done();
      assert.equal(cap.sent.filter((x) => x.url.endsWith('/v1/updates')).length, 0, 'nothing uploaded');
      assert.equal((await store.getMeta<AccountantState>(PRIVACY_KEY))?.releases, 1, 'the release stays counted');
      // The release is in the egress log too, as an upload that was not sent (not only the two GETs).
      const log = await e.egressLog();
      assert.deepEqual(log.map((x) => [x.endpoint, x.status, x.pending, x.notSent]), [['/v1/config', 200, undefined, undefined], ['/v1/model', 200, undefined, undefined], ['/v1/updates', 0, undefined, true]]);
      assert.equal((await e.audit()).egress.notSent, 1);
    } finally {
      await e.close();
    }
  });

  it('syncOnce: a cancel that comes while recordRelease runs logs the upload as not sent (its ε is spent)', async () => {
    const config = { dim: 16, items: ids.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 2 };
    const model = encodeModel(createItemTable(ids, 16, { seed: 1 }));
    const paths: string[] = [];
    const f: FetchLike = async (url) => {
      const path = new URL(url).pathname;
      paths.push(path);
      return path === '/v1/config' ? Response.json(config) : path === '/v1/model' ? new Response(model as Uint8Array<ArrayBuffer>) : Response.json({}, { status: 202 });
    };
    const ctl = new AbortController();
    const accountant = new RdpAccountant();
    const entries: EgressEntry[] = [];
    await assert.rejects(
      syncOnce({
        serverUrl: 'http://srv',
        fetch: f,
        accountant,
        history: [{ itemIds: ['sku-1', 'sku-2', 'sku-3'], weights: [1, 1, 1] }],
        signal: ctl.signal,
        onEgress: (e) => entries.push(e),
        recordRelease: async (sigma) => {
          accountant.record(sigma);
          ctl.abort();
          return accountant;
        },
      }),
      /after its release was recorded: no update was sent, but its ε is spent/,
    );
    assert.equal(accountant.releases, 1);
    assert.deepEqual(paths, ['/v1/config', '/v1/model']);
    const upload = settlePending([], entries).filter((e) => e.kind === 'update');
    assert.deepEqual(upload.map((e) => [e.method, e.endpoint, e.status, e.pending, e.notSent]), [['POST', '/v1/updates', 0, undefined, true]]);
    assert.match(upload[0]!.bodySha256!, /^[0-9a-f]{64}$/);
    assert.ok(upload[0]!.bytes > 0);
  });
});

describe('syncOnce: a model on which training could fail for some histories only', () => {
  const n = 300;
  const dim = 8;
  const itemIds = Array.from({ length: n }, (_, i) => `sku-${i}`);
  const config = { dim, items: n, clip: 1, noiseMultiplier: 1, bits: 4, blockSize: 256, version: 0, minClients: 10 };
  /** A server answering with `model`; the paths it was asked for. */
  const fakeServer = (model: Uint8Array) => {
    const paths: string[] = [];
    const f: FetchLike = async (url, init) => {
      const path = new URL(url).pathname;
      paths.push(`${init?.method ?? 'GET'} ${path}`);
      if (path === '/v1/config') return new Response(JSON.stringify(config), { status: 200 });
      if (path === '/v1/model') return new Response(model as Uint8Array<ArrayBuffer>, { status: 200 });
      return new Response(JSON.stringify({ pending: 1, minClients: 10, published: null }), { status: 202 });
    };
    return { f, paths };
  };
  const history = (ids: string[], weights = ids.map(() => 1)) => [{ itemIds: ids, weights }];

  it('a model with a value beyond ±1e6 is refused by every device alike, before training: nothing spent or sent', async () => {
    const table = createItemTable(itemIds, dim, { seed: 1 });
    // Finite in float32, but its squares overflow: training would fail only for histories holding sku-5.
    for (let k = 0; k < dim; k++) table.factors[5 * dim + k] = 1e19;
    const model = encodeModel(table);
    for (const h of [['sku-100', 'sku-5', 'sku-200'], ['sku-100', 'sku-150', 'sku-200'], ['sku-1']]) {
      const srv = fakeServer(model);
      const accountant = new RdpAccountant();
      await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch: srv.f, accountant, history: history(h) }), (e: unknown) =>
        isModelError(e) && /the server's model holds 1\.00e\+19 as a factor of item "sku-5", beyond ±1000000: refused/.test((e as Error).message), h.join());
      assert.deepEqual(srv.paths, ['GET /v1/config', 'GET /v1/model'], h.join());
      assert.equal(accountant.releases, 0);
    }
  });

  it('a history on which local training fails is sent as noise only, charged like any other (the upload must not say which)', async () => {
    const table = createItemTable(itemIds, dim, { seed: 1 });
    const model = encodeModel(table);
    // A weight training refuses (it throws for this history only) stands for any failure that
    // depends on the history: before, the sync threw after its GETs and the server saw no upload.
    for (const weights of [[1, 1, 1], [1, -1, 1]]) {
      const srv = fakeServer(model);
      const accountant = new RdpAccountant();
      const r = await syncOnce({ serverUrl: 'http://srv', fetch: srv.f, accountant, history: history(['sku-100', 'sku-5', 'sku-200'], weights) });
      assert.equal(r.sent, true, JSON.stringify(weights));
      assert.deepEqual(srv.paths, ['GET /v1/config', 'GET /v1/model', 'POST /v1/updates']);
      assert.equal(accountant.releases, 1);
      if (weights[1] === -1) {
        assert.deepEqual([r.local.factors, r.local.bias], [r.global.factors, r.global.bias], 'the failed step is dropped: a zero delta');
        assert.match(r.localStepFailed!, /^local training failed: sequence 0: weight 1 is -1/, 'the device is told why');
      } else assert.equal(r.localStepFailed, undefined);
    }
    // A training setting that is wrong is the device's config, the same for every history: refused
    // before anything is trained or sent, not turned into noise.
    const srv = fakeServer(model);
    await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch: srv.f, accountant: new RdpAccountant(), history: history(['sku-100', 'sku-5']), train: { epochs: 0 } }), /train\.epochs/);
    assert.ok(!srv.paths.includes('POST /v1/updates'));
  });

  it('the two GETs are stored in the egress log before training starts (a tab closed while training leaves them logged)', async () => {
    const srv = fakeServer(encodeModel(createItemTable(itemIds, dim, { seed: 1 })));
    const entries: EgressEntry[] = [];
    const seen: string[] = [];
    await syncOnce({
      serverUrl: 'http://srv', fetch: srv.f, accountant: new RdpAccountant(), history: history(['sku-1', 'sku-2', 'sku-3']),
      onEgress: (e) => entries.push(e),
      // As the engine stores them: each answer replaces the pending entry of its request.
      onCheckpoint: async () => void seen.push(`checkpoint with ${settlePending([], entries).map((e) => `${e.endpoint}${e.pending ? ' (pending)' : ''}`).join(' ')}`),
      onProgress: (p) => void seen.push(p.phase),
    });
    // Each GET is stored before it goes (a tab closed while it waits for the answer leaves it), then settled.
    assert.deepEqual(seen.slice(0, 6), [
      'config',
      'checkpoint with /v1/config (pending)',
      'model',
      'checkpoint with /v1/config /v1/model (pending)',
      'checkpoint with /v1/config /v1/model',
      'training',
    ]);
  });

  it('a cancel that lands while a request\'s pending entry is stored: that request never goes, and its entry says not sent', async () => {
    const srv = fakeServer(encodeModel(createItemTable(itemIds, dim, { seed: 1 })));
    const entries: EgressEntry[] = [];
    const ctl = new AbortController();
    await assert.rejects(
      syncOnce({ serverUrl: 'http://srv', fetch: srv.f, accountant: new RdpAccountant(), history: history(['sku-1', 'sku-2']), signal: ctl.signal, onEgress: (e) => entries.push(e), onCheckpoint: () => ctl.abort() }),
      (e: unknown) => (e as Error).name === 'AbortError' && /before GET \/v1\/config/.test((e as Error).message),
    );
    assert.deepEqual(srv.paths, [], 'nothing went out');
    assert.deepEqual(settlePending([], entries).map((e) => [e.endpoint, e.status, e.pending, e.notSent]), [['/v1/config', 0, undefined, true]]);
  });

  it('an egress log that cannot be stored before the upload: nothing sent, the entry says not sent, the error says the ε is spent', async () => {
    const srv = fakeServer(encodeModel(createItemTable(itemIds, dim, { seed: 1 })));
    const entries: EgressEntry[] = [];
    const accountant = new RdpAccountant();
    await assert.rejects(
      syncOnce({
        serverUrl: 'http://srv',
        fetch: srv.f,
        accountant,
        history: history(['sku-1', 'sku-2']),
        onEgress: (e) => entries.push(e),
        // Storage fills up once the GETs are stored, as the upload's entry is written.
        onCheckpoint: async () => (entries.at(-1)?.kind === 'update' ? Promise.reject(new Error('QuotaExceededError (simulated)')) : undefined),
      }),
      (e: unknown) => (e as Error).name === 'StorageError' && /could not be stored before the upload, so nothing was sent; this sync's ε is spent: QuotaExceededError/.test((e as Error).message),
    );
    assert.ok(!srv.paths.includes('POST /v1/updates'));
    assert.equal(accountant.releases, 1);
    const last = entries.at(-1)!;
    assert.deepEqual([last.endpoint, last.notSent, last.pending], ['/v1/updates', true, undefined]);
  });

  it('once the release is recorded, the upload\'s retry goes even when its entry cannot be stored (stored at the end)', async () => {
    const srv = fakeServer(encodeModel(createItemTable(itemIds, dim, { seed: 1 })));
    let posts = 0;
    const f: FetchLike = async (url, init) => {
      if (new URL(url).pathname === '/v1/updates' && posts++ === 0) return new Response('busy', { status: 503 });
      return srv.f(url, init);
    };
    const entries: EgressEntry[] = [];
    const r = await syncOnce({
      serverUrl: 'http://srv',
      fetch: f,
      accountant: new RdpAccountant(),
      history: history(['sku-1', 'sku-2']),
      backoffMs: 1,
      onEgress: (e) => entries.push(e),
      // Storage fills up once the first upload attempt was answered.
      onCheckpoint: async () => (entries.some((e) => e.kind === 'update' && e.status === 503) ? Promise.reject(new Error('QuotaExceededError (simulated)')) : undefined),
    });
    assert.equal(r.sent, true);
    assert.equal(posts, 2, 'the retry went');
    assert.deepEqual(settlePending([], entries).filter((e) => e.kind === 'update').map((e) => e.status), [503, 202]);
  });

  it('an egress log that cannot be stored before a GET: that request is not sent either (StorageError), nothing is spent', async () => {
    const srv = fakeServer(encodeModel(createItemTable(itemIds, dim, { seed: 1 })));
    const entries: EgressEntry[] = [];
    const accountant = new RdpAccountant();
    await assert.rejects(
      syncOnce({ serverUrl: 'http://srv', fetch: srv.f, accountant, history: history(['sku-1', 'sku-2']), onEgress: (e) => entries.push(e), onCheckpoint: async () => Promise.reject(new Error('QuotaExceededError (simulated)')) }),
      (e: unknown) => (e as Error).name === 'StorageError' && /GET \/v1\/config was not sent: the egress log could not be stored before it \(QuotaExceededError/.test((e as Error).message),
    );
    assert.deepEqual(srv.paths, [], 'no request left');
    assert.equal(accountant.releases, 0);
    assert.deepEqual(entries.map((e) => [e.endpoint, e.pending, e.notSent]), [['/v1/config', true, undefined], ['/v1/config', undefined, true]]);
  });
});

describe('sync(): the egress log around the upload', () => {
  it('a cancel that lands while the pending upload entry is stored: nothing sent, the entry settled as not sent, the error says the ε is spent', async () => {
    const store = new MemoryEventStore();
    const cap = capturingFetch();
    const e = await deviceAt(server.url, ['sku-95', 'sku-96', 'sku-97'], { store, fetch: cap.fetch });
    const withdrawn = withdrawConsentAfterWrite(store, e, (key, stored) => key === EGRESS_KEY && (stored as EgressEntry[]).some((x) => x.pending && x.kind === 'update'));
    try {
      await assert.rejects(e.sync(), /no update was sent, but its ε is spent/);
      await withdrawn.done();
      assert.equal(cap.sent.filter((x) => x.url.endsWith('/v1/updates')).length, 0);
      const log = await e.egressLog();
      assert.ok(!log.some((x) => x.pending), 'no pending entry left');
      assert.deepEqual(log.map((x) => [x.endpoint, x.status, x.notSent]), [['/v1/config', 200, undefined], ['/v1/model', 200, undefined], ['/v1/updates', 0, true]]);
    } finally {
      await e.close();
    }
  });

  it('settlePending: an answer replaces the pending entry of the same request; others are appended', () => {
    const pending: EgressEntry = { t: 1, method: 'POST', endpoint: '/v1/updates', kind: 'update', bytes: 9, bodySha256: 'aa', status: 0, pending: true };
    const other: EgressEntry = { ...pending, bodySha256: 'bb', status: 202, pending: undefined };
    const done: EgressEntry = { ...pending, t: 2, status: 202, pending: undefined };
    assert.deepEqual(settlePending([pending], [other, done]), [done, other]);
    assert.deepEqual(settlePending([], [pending]), [pending]);
  });
});

describe('sync({ contribute: false }) and unchanged models', () => {
  const deviceOn = (srv: RunningServer, history: string[], extra: { budget?: number; fetch?: FetchLike; store?: MemoryEventStore } = {}) =>
    deviceAt(srv.url, history, { ...extra, federated: extra.budget ? { budget: extra.budget } : {} });
  const lines = async (e: Engine) => (await e.egressLog()).map((l) => `${l.method} ${l.endpoint} ${l.status}`);
  /** When the next automatic sync may start, as stored: the period (or retry delay) plus a random extra of up to half of it. */
  const nextAt = async (e: Engine) => (await e.exportData()).autoSync!.nextAt!;

  it('past the budget a device still receives newer versions, sends nothing, spends nothing, and gets a 304 while it is current', async () => {
    await withOwnServer({ minClients: 2 }, async (srv) => {
      const cap = capturingFetch();
      const store = new MemoryEventStore();
      const e = await deviceOn(srv, ['sku-3', 'sku-4', 'sku-5'], { budget: 5, fetch: cap.fetch, store });
      const first = await e.sync(); // σ = 1: ε 4.38, the budget (5) allows no second sync
      assert.equal(first.modelChanged, true);
      const spent = (await e.stats()).privacy.epsilon;
      await assert.rejects(e.sync(), (err) => isPrivacyBudgetError(err) && /contribute: false/.test((err as Error).message));
      // Another device completes the round: version 1 is published.
      const other = await deviceOn(srv, ['sku-8', 'sku-9']);
      assert.equal((await other.sync()).published, 1);
      await other.close();
      const posts = cap.sent.filter((s) => s.body).length;
      const pulled = await e.sync({ contribute: false });
      assert.deepEqual(
        { version: pulled.version, modelChanged: pulled.modelChanged, sent: pulled.sent, uploadedBytes: pulled.uploadedBytes, published: pulled.published },
        { version: 1, modelChanged: true, sent: false, uploadedBytes: 0, published: null },
      );
      assert.ok(Math.abs(pulled.epsilon - spent) < 1e-12, 'no ε spent');
      assert.equal((await e.stats()).model.version, 1);
      assert.equal((await e.stats()).privacy.syncs, 1);
      const again = await e.sync({ contribute: false });
      assert.equal(again.modelChanged, false);
      assert.equal(again.version, 1);
      assert.equal(cap.sent.filter((s) => s.body).length, posts, 'no body left the device');
      assert.deepEqual((await lines(e)).slice(-4), ['GET /v1/config 200', 'GET /v1/model 200', 'GET /v1/config 200', 'GET /v1/model 304']);
      await e.close();
      // The hash is stored with the weights: after a reload the unchanged version is not downloaded again.
      const reloaded = await deviceOn(srv, [], { budget: 5, store });
      const r = await reloaded.sync({ contribute: false });
      assert.equal(r.modelChanged, false);
      assert.equal((await lines(reloaded)).at(-1), 'GET /v1/model 304');
      assert.equal((await reloaded.stats()).model.version, 1);
      await reloaded.close();
    });
  });

  it('a receiving sync stores each request in the egress log before it goes, as a contributing one does (a tab closed while it waits)', async () => {
    const store = new MemoryEventStore();
    const seen: string[][] = [];
    const e: Engine = await deviceAt(server.url, ['sku-14', 'sku-15', 'sku-16'], {
      store,
      fetch: async (url, init) => {
        // What a page closed at this instant would have left in its store.
        seen.push(((await store.getMeta<EgressEntry[]>(EGRESS_KEY)) ?? []).map((l) => `${l.method} ${l.endpoint} ${l.pending ? 'pending' : l.status}`));
        return fetch(url, init as RequestInit);
      },
    });
    try {
      const r = await e.sync({ contribute: false });
      assert.equal(r.sent, false);
      assert.deepEqual(seen, [['GET /v1/config pending'], ['GET /v1/config 200', 'GET /v1/model pending']]);
      assert.deepEqual(await lines(e), ['GET /v1/config 200', 'GET /v1/model 200']);
    } finally {
      await e.close();
    }
  });

  it('a second contributing sync in the same session does not download an unchanged model again', async () => {
    await withOwnServer({ minClients: 50 }, async (srv) => {
      const e = await deviceOn(srv, ['sku-11', 'sku-12', 'sku-13']);
      const a = await e.sync();
      const b = await e.sync();
      assert.deepEqual([a.modelChanged, b.modelChanged, a.sent, b.sent], [true, false, true, true]);
      assert.deepEqual(await lines(e), ['GET /v1/config 200', 'GET /v1/model 200', 'POST /v1/updates 202', 'GET /v1/config 200', 'GET /v1/model 304', 'POST /v1/updates 202']);
      await e.close();
    });
  });

  it('after a reload a contributing sync reuses the stored global model on a 304; a damaged copy is downloaded again', async () => {
    await withOwnServer({ minClients: 50 }, async (srv) => {
      const store = new MemoryEventStore();
      const e = await deviceOn(srv, ['sku-17', 'sku-18', 'sku-19'], { store });
      await e.sync();
      const audit = await e.audit();
      assert.equal(audit.globalModel?.stored, true);
      assert.match(audit.globalModel!.hash, /^[0-9a-f]{64}$/);
      assert.ok(audit.globalModel!.bytes > 200 * 16 * 4, 'the whole table is kept');
      await e.close();
      const again = await deviceOn(srv, [], { store });
      const r = await again.sync();
      assert.deepEqual([r.sent, r.modelChanged], [true, false]);
      assert.deepEqual((await lines(again)).slice(-3), ['GET /v1/config 200', 'GET /v1/model 304', 'POST /v1/updates 202']);
      await again.close();
      // A stored copy whose bytes no longer match its hash is not used: the model is downloaded.
      // (Another device's store: this one has spent its budget, two syncs at σ = 1.)
      const kept = (await store.getMeta<{ hash: string; bytes: Uint8Array }>('global'))!;
      const bytes = kept.bytes.slice();
      bytes[bytes.length - 1] ^= 1;
      const damaged = new MemoryEventStore();
      await damaged.setMeta('global', { hash: kept.hash, bytes });
      const third = await deviceOn(srv, ['sku-17', 'sku-18'], { store: damaged });
      await third.sync();
      assert.deepEqual((await lines(third)).slice(-3), ['GET /v1/config 200', 'GET /v1/model 200', 'POST /v1/updates 202']);
      await third.close();
    });
  });

  it('a contributing sync() called while a receiving one runs waits for it, then uploads', async () => {
    await withOwnServer({ minClients: 50 }, async (srv) => {
      const e = await deviceOn(srv, ['sku-14', 'sku-15', 'sku-16']);
      const [pulled, synced] = await Promise.all([e.sync({ contribute: false }), e.sync()]);
      assert.equal(pulled.sent, false);
      assert.equal(synced.sent, true);
      assert.equal((await e.stats()).privacy.syncs, 1);
      assert.deepEqual(await lines(e), ['GET /v1/config 200', 'GET /v1/model 200', 'GET /v1/config 200', 'GET /v1/model 304', 'POST /v1/updates 202']);
      // A receiving call while a contributing sync runs shares its result.
      const [s2, p2] = await Promise.all([e.sync(), e.sync({ contribute: false })]);
      assert.deepEqual(s2, p2);
      assert.equal((await e.stats()).privacy.syncs, 2);
      await e.close();
    });
  });

  it('refuses a contribute that is not a boolean, by name', async () => {
    const e = await device(['sku-1', 'sku-2']);
    await assert.rejects(e.sync({ contribute: 'no' as unknown as boolean }), (err) => isValidationError(err) && /options\.contribute.*true or false.*"no"/.test((err as Error).message));
    await assert.rejects(e.sync({ contribut: false } as never), (err) => isValidationError(err) && /contribut/.test((err as Error).message));
    assert.equal((await e.egressLog()).length, 0, 'nothing was sent');
    await e.close();
  });
});

describe('automatic syncs (options.federated.autoSyncHours)', () => {
  const HOUR = 3_600_000;
  type Auto = { autoSync(): Promise<import('../../src/types.js').SyncResultInfo | null>; autoSyncTimer: unknown };
  async function autoDevice(srv: { url: string }, o: { store?: MemoryEventStore; budget?: number; clock: { t: number }; fetch?: FetchLike; history?: string[] }) {
    const e = await deviceAt(srv.url, o.history ?? ['sku-51', 'sku-52', 'sku-53'], {
      ...(o.store ? { store: o.store } : {}),
      ...(o.fetch ? { fetch: o.fetch } : {}),
      federated: { autoSyncHours: 24, ...(o.budget ? { budget: o.budget } : {}) },
      now: () => o.clock.t,
    });
    return { e, auto: e as unknown as Auto };
  }
  const lines = async (e: Engine) => (await e.egressLog()).map((l) => `${l.method} ${l.endpoint} ${l.status}`);
  /** When the next automatic sync may start, as stored: the period (or retry delay) plus a random extra of up to half of it. */
  const nextAt = async (e: Engine) => (await e.exportData()).autoSync!.nextAt!;

  it('contributes while the budget allows, at most once per period, then only receives', async () => {
    await withOwnServer({ seed: 3 }, async (srv) => {
      const clock = { t: CLOCK_START };
      const { e, auto } = await autoDevice(srv, { clock, budget: 5 });
      try {
        assert.ok(auto.autoSyncTimer !== undefined, 'the first look is scheduled at start-up');
        const first = await auto.autoSync();
        assert.equal(first?.sent, true, 'a contributing sync while the budget allows one');
        assert.deepEqual((await e.stats()).privacy.autoSync, { everyHours: 24, lastSuccessAt: clock.t, lastAttemptAt: clock.t });
        const due = await nextAt(e);
        assert.ok(due >= clock.t + 24 * HOUR && due < clock.t + 36 * HOUR, `the next one a period and a random extra of up to half of it later: ${(due - clock.t) / HOUR} h`);
        clock.t += 23 * HOUR;
        assert.equal(await auto.autoSync(), null, 'not again within the period');
        clock.t = due - 1;
        assert.equal(await auto.autoSync(), null, 'nor before the random extra has run out');
        assert.equal((await e.egressLog()).length, 3);
        clock.t = due;
        const third = await auto.autoSync();
        // σ = 1 at budget 5: one sync (ε 4.38) and no more, so the next automatic one only receives.
        assert.deepEqual([third?.sent, third?.modelChanged], [false, false]);
        assert.deepEqual((await lines(e)).slice(3), ['GET /v1/config 200', 'GET /v1/model 304']);
        assert.equal((await e.stats()).privacy.syncs, 1);
        assert.equal((await e.stats()).lastError, undefined);
        assert.equal((await e.audit()).privacy.autoSyncHours, 24);
        await e.close();
        assert.equal(auto.autoSyncTimer, undefined, 'close() disarms it');
      } finally {
        await e.close();
      }
    });
  });

  it('a schedule stored on a clock that has since gone back does not hold the automatic sync off (stop 32)', async () => {
    await withOwnServer({ seed: 3 }, async (srv) => {
      const clock = { t: CLOCK_START + 365 * 24 * HOUR }; // a year ahead: a wrong year, a dead clock battery
      const { e, auto } = await autoDevice(srv, { clock, budget: 100 });
      try {
        assert.equal((await auto.autoSync())?.sent, true);
        clock.t = CLOCK_START; // corrected
        const again = await auto.autoSync();
        assert.notEqual(again, null, 'due at once, not in a year');
        const due = await nextAt(e);
        assert.ok(due >= clock.t + 24 * HOUR && due < clock.t + 36 * HOUR, `rescheduled from the corrected clock: ${(due - clock.t) / HOUR} h`);
        clock.t += 23 * HOUR;
        assert.equal(await auto.autoSync(), null, 'and then once a period again');
      } finally {
        await e.close();
      }
    });
  });

  it('a server model that does not fit the page (another dim) is tried again a period later, not every 15 minutes (stop 32)', async () => {
    const srv = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 8, { seed: 2 }), minClients: 50, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
    const clock = { t: CLOCK_START };
    const { e, auto } = await autoDevice(srv, { clock });
    try {
      assert.equal(await auto.autoSync(), null);
      assert.match((await e.stats()).lastError ?? '', /ModelError: the server's model has dim 8, this device uses 16/);
      const due = await nextAt(e);
      assert.ok(due >= clock.t + 24 * HOUR && due < clock.t + 36 * HOUR, `a period later: ${(due - clock.t) / HOUR} h`);
      const sent = (await e.egressLog()).length;
      clock.t += 30 * 60_000;
      assert.equal(await auto.autoSync(), null);
      assert.equal((await e.egressLog()).length, sent, 'no model downloaded again half an hour later');
    } finally {
      await e.close();
      await srv.close();
    }
  });

  it('two tabs on one database: only one of them syncs in a period; the page’s own sync counts too', async () => {
    await withOwnServer({ seed: 3 }, async (srv) => {
      const clock = { t: CLOCK_START };
      const store = new MemoryEventStore();
      const a = await autoDevice(srv, { clock, store });
      const b = await autoDevice(srv, { clock, store });
      try {
        const both = await Promise.all([a.auto.autoSync(), b.auto.autoSync()]);
        assert.equal(both.filter((r) => r !== null).length, 1, 'one tab claimed the slot');
        clock.t += 25 * HOUR;
        await a.e.sync(); // the page syncs by itself: the automatic one waits a period from here
        assert.equal(await b.auto.autoSync(), null);
        assert.equal((await a.e.stats()).privacy.syncs, 2);
      } finally {
        await a.e.close();
        await b.e.close();
      }
    });
  });

  it('a failed automatic sync is kept in stats().lastError and retried 15 minutes later at the soonest; no consent, no sync', async () => {
    const clock = { t: CLOCK_START };
    let calls = 0;
    const offline: FetchLike = async () => {
      calls++;
      throw new TypeError('Failed to fetch');
    };
    const { e, auto } = await autoDevice({ url: 'http://127.0.0.1:9' }, { clock, fetch: offline });
    try {
      assert.equal(await auto.autoSync(), null);
      assert.match((await e.stats()).lastError ?? '', /^NetworkError: GET \/v1\/config failed/);
      const tried = calls;
      assert.ok(tried >= 1);
      const start = clock.t;
      const due = await nextAt(e);
      assert.ok(due >= start + 15 * 60_000 && due < start + 22.5 * 60_000, `retry delay 15 min plus up to half of it: ${(due - start) / 60_000} min`);
      clock.t += 10 * 60_000;
      assert.equal(await auto.autoSync(), null);
      assert.equal(calls, tried, 'not retried within 15 minutes');
      clock.t = due;
      await auto.autoSync();
      assert.ok(calls > tried, 'retried after 15 minutes');
      // Save-Data on (navigator.connection.saveData): the automatic sync waits; sync() still runs.
      clock.t += 30 * 60_000;
      const g = globalThis as { navigator?: unknown };
      const had = Object.getOwnPropertyDescriptor(g, 'navigator');
      Object.defineProperty(g, 'navigator', { value: { connection: { saveData: true } }, configurable: true, writable: true });
      try {
        const before = calls;
        assert.equal(await auto.autoSync(), null);
        assert.equal(calls, before, 'Save-Data: no automatic sync');
        await assert.rejects(e.sync(), /NetworkError/);
        assert.ok(calls > before, "the page's own sync() goes out");
      } finally {
        if (had) Object.defineProperty(g, 'navigator', had);
        else delete g.navigator;
      }
      await e.setConsent({ federated: false });
      clock.t += 30 * 60_000;
      const before = calls;
      assert.equal(await auto.autoSync(), null);
      assert.equal(calls, before, 'without consent to federated learning it sends nothing');
    } finally {
      await e.close();
    }
  });

  it('an automatic sync that failed after spending its release waits a whole period, not 15 minutes', async () => {
    await withOwnServer({ seed: 3 }, async (srv) => {
      const clock = { t: CLOCK_START };
      let uploads = 0;
      // The server takes the update, but its answer never arrives.
      const lost: FetchLike = async (url, init) => {
        const res = await fetch(url, init as RequestInit);
        if (!url.endsWith('/v1/updates')) return res;
        uploads++;
        throw new TypeError('Failed to fetch');
      };
      const { e, auto } = await autoDevice(srv, { clock, fetch: lost });
      try {
        assert.equal(await auto.autoSync(), null);
        assert.match((await e.stats()).lastError ?? '', /POST \/v1\/updates failed/);
        const spent = (await e.stats()).privacy.syncs;
        assert.equal(spent, 1);
        const due = await nextAt(e);
        assert.ok(due >= clock.t + 24 * HOUR, 'a whole period (and its random extra)');
        clock.t += 60 * 60_000;
        assert.equal(await auto.autoSync(), null, 'not retried an hour later');
        assert.equal((await e.stats()).privacy.syncs, spent, 'no second release');
        clock.t = due;
        await auto.autoSync();
        assert.equal((await e.stats()).privacy.syncs, spent + 1, 'tried again after the period');
        assert.ok(uploads >= 2);
      } finally {
        await e.close();
      }
    });
  });

  it('refuses an autoSyncHours that is not a number of hours ≥ 0, by name', async () => {
    for (const bad of [-1, Number.NaN, '24', Infinity]) {
      await assert.rejects(
        Engine.create({ catalog, backend: 'cpu', store: new MemoryEventStore(), federated: { serverUrl: 'http://127.0.0.1:9', autoSyncHours: bad as number } }),
        (err) => isValidationError(err) && /options\.federated\.autoSyncHours/.test((err as Error).message),
      );
    }
  });
});

describe('sync edge cases: waiting calls, budget, caches, consent', () => {
  function counting(): { sent: string[]; fetch: FetchLike } {
    const sent: string[] = [];
    return { sent, fetch: (url, init) => (sent.push(`${init?.method ?? 'GET'} ${new URL(url).pathname}`), fetch(url, init as RequestInit)) };
  }
  const dev = (url: string, o: { fetch?: FetchLike; store?: MemoryEventStore; federated?: Record<string, unknown>; now?: () => number } = {}) =>
    deviceAt(url, ['sku-61', 'sku-62', 'sku-63'], o);

  it('a contributing call waiting behind a receiving one: cancelling every sync (or close()) cancels it too, nothing uploaded', async () => {
    await withOwnServer({ seed: 4 }, async (srv) => {
      for (const how of ['cancel all', 'close'] as const) {
        const c = counting();
        const e = await dev(srv.url, { fetch: c.fetch });
        const pull = e.sync({ contribute: false });
        const contrib = e.sync();
        await new Promise((r) => setImmediate(r));
        const closing = how === 'close' ? e.close() : (e.cancelAllSyncs(), Promise.resolve());
        const [a, b] = await Promise.allSettled([pull, contrib]);
        await closing;
        assert.equal(a.status, 'rejected');
        assert.equal(b.status, 'rejected', `${how}: the waiting contributing call does not go ahead`);
        assert.ok(!c.sent.includes('POST /v1/updates'), `${how}: nothing uploaded (${c.sent.join(', ')})`);
        if (how === 'cancel all') {
          assert.equal((await e.stats()).privacy.syncs, 0);
          await e.close();
        }
      }
    });
  });

  it("one caller's signal cancels its own call only: not a call waiting behind it, nor the sync a waiting call waits for", async () => {
    await withOwnServer({ seed: 4 }, async (srv) => {
      const e = await dev(srv.url, { federated: { budget: 20 } });
      // The receiving call's signal: it is cancelled, the contributing call waiting behind it goes ahead.
      const first = new AbortController();
      const pull = e.sync({ contribute: false, signal: first.signal });
      const contrib = e.sync();
      await new Promise((r) => setImmediate(r));
      first.abort();
      const [a, b] = await Promise.allSettled([pull, contrib]);
      assert.ok(a.status === 'rejected' && (a.reason as Error).name === 'AbortError');
      assert.ok(b.status === 'fulfilled' && b.value.sent === true, 'the other caller synced');
      // The waiting call's signal: it is cancelled at once, the receiving sync it waited for is not.
      const second = new AbortController();
      const pull2 = e.sync({ contribute: false });
      const contrib2 = e.sync({ signal: second.signal });
      await new Promise((r) => setImmediate(r));
      second.abort();
      const [c, d] = await Promise.allSettled([pull2, contrib2]);
      assert.ok(c.status === 'fulfilled' && c.value.sent === false, 'the receiving sync went on');
      assert.ok(d.status === 'rejected' && (d.reason as Error).name === 'AbortError');
      assert.equal((await e.stats()).privacy.syncs, 1);
      await e.close();
    });
  });

  it('a storage failure while claiming the automatic slot is reported and looked at again later', async () => {
    class FlakyStore extends MemoryEventStore {
      failures = 1;
      override async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
        if (key === 'autoSync' && this.failures-- > 0) throw Object.assign(new Error('transaction aborted'), { name: 'StorageError' });
        return super.updateMeta(key, update);
      }
    }
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, store: new FlakyStore(), federated: { serverUrl: 'http://127.0.0.1:9', autoSyncHours: 24 }, fetch: async () => Promise.reject(new TypeError('offline')) });
    const auto = e as unknown as { autoSync(): Promise<unknown>; autoSyncTimer: unknown };
    await assert.rejects(auto.autoSync(), /transaction aborted/);
    assert.ok(auto.autoSyncTimer !== undefined, 'the next look is scheduled');
    await e.close();
  });

  it('a receiving call that joined a contributing sync refused for the budget still receives', async () => {
    await withOwnServer({ seed: 4 }, async (srv) => {
      const e = await dev(srv.url, { federated: { budget: 2 } }); // one sync at σ = 1 costs ε 4.38
      const [contrib, pull] = await Promise.allSettled([e.sync(), e.sync({ contribute: false })]);
      assert.ok(contrib.status === 'rejected' && isPrivacyBudgetError(contrib.reason));
      assert.ok(pull.status === 'fulfilled' && pull.value.sent === false && pull.value.modelChanged === true);
      await e.close();
    });
  });

  it('an automatic sync receives when the budget cannot pay for one sync at the server’s σ', async () => {
    await withOwnServer({ seed: 4 }, async (srv) => {
      const c = counting();
      const clock = { t: CLOCK_START };
      const e = await dev(srv.url, { fetch: c.fetch, federated: { budget: 2, autoSyncHours: 24 }, now: () => clock.t });
      const r = await (e as unknown as { autoSync(): Promise<{ sent: boolean; modelChanged: boolean } | null> }).autoSync();
      assert.deepEqual([r?.sent, r?.modelChanged], [false, true]);
      assert.equal((await e.stats()).lastError, undefined);
      // The two requests of any sync: the budget is checked once the model is in, and the sync then receives.
      assert.deepEqual(c.sent, ['GET /v1/config', 'GET /v1/model']);
      assert.equal((await e.stats()).privacy.autoSync?.lastSuccessAt, clock.t, 'the period starts from the receiving sync');
      assert.equal((await e.exportData()).autoSync?.lastSuccessAt, clock.t, 'export() includes the automatic sync times');
      await e.close();
    });
  });

  it('close() while an automatic sync is claiming its slot: no request goes out after it', async () => {
    await withOwnServer({ seed: 4 }, async (srv) => {
      const c = counting();
      const e = await dev(srv.url, { fetch: c.fetch, federated: { autoSyncHours: 24 } });
      const p = (e as unknown as { autoSync(): Promise<unknown> }).autoSync();
      await e.close();
      assert.equal(await p, null);
      await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(c.sent, []);
    });
  });

  it('a period longer than a timer can hold is waited out in steps (no TimeoutOverflowWarning, no busy loop)', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const store = new MemoryEventStore();
      let claims = 0;
      const update = store.updateMeta.bind(store);
      store.updateMeta = ((k: string, f: never) => (k === 'autoSync' && claims++, update(k, f))) as typeof store.updateMeta;
      const t = Date.now();
      await store.setMeta('autoSync', { lastAttemptAt: t, lastSuccessAt: t });
      const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, store, federated: { serverUrl: 'http://127.0.0.1:9', autoSyncHours: 1000 }, fetch: async () => Promise.reject(new TypeError('offline')) });
      assert.equal(await (e as unknown as { autoSync(): Promise<unknown> }).autoSync(), null, 'not due');
      const after = claims;
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(claims, after, 'the next look is not at once');
      assert.ok(!warnings.includes('TimeoutOverflowWarning'));
      await e.close();
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('refuses an automatic period under 15 minutes', async () => {
    await assert.rejects(
      Engine.create({ catalog, backend: 'cpu', store: new MemoryEventStore(), federated: { serverUrl: 'http://127.0.0.1:9', autoSyncHours: 0.1 } }),
      (err) => isValidationError(err) && /options\.federated\.autoSyncHours: must be 0 \(off\) or a number of hours ≥ 0\.25, got 0\.1/.test((err as Error).message),
    );
  });

  it('a failure to keep the global model (storage full) does not fail the sync that received it', async () => {
    class FullStore extends MemoryEventStore {
      override async setMeta(key: string, value: unknown): Promise<void> {
        if (key === 'global') throw Object.assign(new Error('quota exceeded'), { name: 'QuotaExceededError' });
        return super.setMeta(key, value);
      }
    }
    await withOwnServer({ seed: 4 }, async (srv) => {
      const e = await dev(srv.url, { store: new FullStore() });
      const r = await e.sync();
      assert.equal(r.sent, true);
      const st = await e.stats();
      assert.match(st.lastError ?? '', /quota exceeded/);
      assert.equal((await e.audit()).model.stored, true, 'the weights were saved');
      assert.equal((await e.audit()).globalModel, null);
      await e.close();
    });
  });

  it('after consent is withdrawn and given again, the model received before is not named in If-None-Match', async () => {
    await withOwnServer({ seed: 4 }, async (srv) => {
      const store = new MemoryEventStore();
      const e = await dev(srv.url, { store });
      await e.sync();
      await e.setConsent({ personalization: false });
      await e.setConsent({ personalization: true, federated: true });
      e.enqueue(['sku-61', 'sku-62'].map((itemId) => ({ type: 'view', itemId })));
      await e.flush();
      const r = await e.sync();
      assert.equal(r.modelChanged, true);
      assert.deepEqual((await e.egressLog()).map((l) => `${l.method} ${l.endpoint} ${l.status}`), ['GET /v1/config 200', 'GET /v1/model 200', 'POST /v1/updates 202']);
      assert.equal((await e.audit()).globalModel?.stored, true);
      await e.close();
    });
  });
});

describe('sync() under secure aggregation: two tabs of one shopper', () => {
  it('the second tab to join a cohort the first joined leaves it and sends nothing: one shopper, one update per cohort, one release recorded', async () => {
    const srv = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 16, { seed: 4 }), minClients: 3, clip: 1, noiseMultiplier: 1, rateLimit: false, secureAggregation: { timeoutMs: 30_000 }, log: () => {} });
    const shared = new MemoryEventStore(); // the two tabs' one database
    const tabA = await deviceAt(srv.url, ['sku-51', 'sku-52', 'sku-53'], { store: shared });
    const tabB = await deviceAt(srv.url, [], { store: shared });
    const others = [await deviceAt(srv.url, ['sku-60', 'sku-61']), await deviceAt(srv.url, ['sku-70', 'sku-71'])];
    try {
      // Both tabs join first (the cohort of three is then theirs and one more), the others after.
      const joined = (e: Engine) => {
        let done!: () => void;
        const seen = new Promise<void>((r) => (done = r));
        return { seen, sync: e.sync({ onProgress: (p) => p.phase === 'cohort' && done() }) };
      };
      const a = joined(tabA);
      await a.seen;
      const b = tabB.sync();
      await assert.rejects(b, (e: Error) => e.name === 'AbortError' && /another tab of this shop joined cohort [0-9a-f]+ .*no update was sent and no ε was spent/.test(e.message));
      const rest = await Promise.all([a.sync, ...others.map((e) => e.sync())]);
      assert.deepEqual(rest.map((r) => [r.sent, r.cohortSize]), [[true, 3], [true, 3], [true, 3]]);
      const round = (await (await fetch(`${srv.url}/v1/rounds/current`)).json()) as { version: number };
      assert.equal(round.version, 1, 'the cohort the second tab left published');
      const stored = await shared.getMeta<AccountantState>(PRIVACY_KEY);
      assert.equal(stored?.releases, 1, "the shopper's one release");
      assert.equal((await tabB.stats()).privacy.syncs, 1);
      const posts = (await tabB.egressLog()).filter((l) => l.method === 'POST').map((l) => l.endpoint.replace(/[0-9a-f]{16,}/, ':id'));
      assert.ok(posts.includes('/v1/secagg/join'), 'the log holds both tabs\' requests');
      assert.equal(posts.filter((p) => p === '/v1/secagg/updates').length, 1, 'one upload for the shopper');
    } finally {
      for (const e of [tabA, tabB, ...others]) await e.close();
      await srv.close();
    }
  });
});

describe('sync() under secure aggregation: the egress log of every step', () => {
  it('each request (the GETs, join, polls, upload, confirm, ready, recovery) is stored as pending before it goes, and is one entry once answered', async () => {
    const srv = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 16, { seed: 6 }), minClients: 3, clip: 1, noiseMultiplier: 1, rateLimit: false, secureAggregation: { minSurvivors: 2, timeoutMs: 30_000 }, log: () => {} });
    const devices: Engine[] = [];
    const line = (l: EgressEntry) => `${l.method} ${l.endpoint}${l.pending ? ' pending' : ''}`;
    /** Per device: each request as it goes out, with the last entry of the stored log at that moment. */
    const seen: Array<Array<{ request: string; lastStored: string | undefined }>> = [[], [], []];
    try {
      for (const k of [0, 1, 2]) {
        const f: FetchLike = async (url, init) => {
          const request = `${init?.method ?? 'GET'} ${new URL(url).pathname}`;
          const stored = await devices[k]!.egressLog();
          seen[k]!.push({ request, lastStored: stored.length ? line(stored.at(-1)!) : undefined });
          return fetch(url, init as RequestInit);
        };
        devices.push(await deviceAt(srv.url, [`sku-${20 * k + 1}`, `sku-${20 * k + 2}`, `sku-${20 * k + 3}`], { fetch: f }));
      }
      const results = await Promise.all(devices.map((e) => e.sync()));
      assert.deepEqual(results.map((r) => r.cohortOutcome), ['published', 'published', 'published']);
      for (const k of [0, 1, 2]) {
        const requests = seen[k]!.map((x) => x.request);
        for (const step of ['POST /v1/secagg/join', 'POST /v1/secagg/updates', '/confirm', '/ready', '/recovery']) assert.ok(requests.some((r) => r.includes(step)), `${step} in ${requests.join(', ')}`);
        // What a tab closed at the moment the request went out leaves: that request, pending.
        for (const x of seen[k]!) assert.equal(x.lastStored, `${x.request} pending`);
        // Once answered, each request is one entry (its answer replaced the pending one), in order.
        const log = await devices[k]!.egressLog();
        assert.deepEqual(log.map(line), requests);
        assert.ok(log.every((l) => l.status >= 200 && l.status < 300), log.map((l) => `${line(l)} ${l.status}`).join(', '));
      }
    } finally {
      for (const e of devices) await e.close();
      await srv.close();
    }
  });
});

describe('sync() under secure aggregation: a cohort left while it forms can be joined again', () => {
  it('a sync cancelled while its cohort forms gives its claim back: the next sync of the same shopper joins that cohort', async () => {
    const srv = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 16, { seed: 5 }), minClients: 3, clip: 1, noiseMultiplier: 1, rateLimit: false, secureAggregation: { timeoutMs: 30_000 }, log: () => {} });
    const store = new MemoryEventStore();
    const e = await deviceAt(srv.url, ['sku-51', 'sku-52', 'sku-53'], { store });
    const others = [await deviceAt(srv.url, ['sku-60', 'sku-61']), await deviceAt(srv.url, ['sku-70', 'sku-71'])];
    try {
      const ctl = new AbortController();
      await assert.rejects(e.sync({ signal: ctl.signal, onProgress: (p) => p.phase === 'cohort' && ctl.abort() }), /it left the cohort/);
      assert.deepEqual(await store.getMeta('cohorts'), [], 'the claim is given back');
      const rest = await Promise.all([e.sync(), ...others.map((o) => o.sync())]);
      assert.deepEqual(rest.map((r) => r.sent), [true, true, true]);
      assert.equal(((await (await fetch(`${srv.url}/v1/rounds/current`)).json()) as { version: number }).version, 1);
      assert.equal(((await store.getMeta<string[]>('cohorts')) ?? []).length, 1, 'the cohort it uploaded to stays claimed');
    } finally {
      for (const d of [e, ...others]) await d.close();
      await srv.close();
    }
  });
});

describe('sync() under secure aggregation: erasing or withdrawing while the cohort forms', () => {
  /** A server that answers every leave 409 ("the cohort is full") and then shows a ready cohort. */
  async function fullOnLeave() {
    const { secAggKeyPair } = await import('../../src/federated/secagg.js');
    const { sha256, toHex } = await import('../../src/federated/wire.js');
    const dim = 16;
    const model = encodeModel(createItemTable(ids, dim, { seed: 3 }));
    const hash = toHex(await sha256(model));
    const others = [await secAggKeyPair(), await secAggKeyPair()];
    const cohort = 'cd'.repeat(16);
    let deviceKey = '';
    let left = false;
    const posts: string[] = [];
    const fetch: FetchLike = async (url, init) => {
      const path = new URL(url).pathname;
      if (init?.method === 'POST') posts.push(path.replace(cohort, ':id'));
      if (path === '/v1/config') return Response.json({ dim, items: ids.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 3, secureAggregation: { maskVersion: 2, cohortSize: 3, bits: 32, step: 1 / 65536, degree: 2, minSurvivors: 3, timeoutMs: 60_000 } });
      if (path === '/v1/model') return new Response(model as Uint8Array<ArrayBuffer>, { headers: { 'X-Localrec-Model-Hash': hash } });
      if (path === '/v1/secagg/join') {
        deviceKey = toHex(init!.body as Uint8Array);
        return Response.json({ cohort, index: 0, size: 3, status: 'forming', token: 'ee'.repeat(16) });
      }
      if (path.endsWith('/leave')) {
        left = true;
        return Response.json({ error: `cohort ${cohort} is ready; only a forming cohort can be left`, reason: 'cohort-closed' }, { status: 409 });
      }
      if (path.endsWith('/members/0')) {
        if (!left) return Response.json({ cohort, size: 3, status: 'forming', joined: 1 });
        return Response.json({ cohort, size: 3, status: 'ready', joined: 3, memberKeys: { 0: deviceKey, 1: toHex(others[0]!.publicKey), 2: toHex(others[1]!.publicKey) } });
      }
      if (path === '/v1/secagg/updates') return Response.json({ pending: 1, minClients: 3, published: null }, { status: 202 });
      return Response.json({ reason: 'not-found' }, { status: 404 });
    };
    return { fetch, posts };
  }

  for (const [what, act] of [
    ['erase()', (e: Engine) => e.erase()],
    ['setConsent({ federated: false })', (e: Engine) => e.setConsent({ federated: false })],
    ['setConsent({ personalization: false })', (e: Engine) => e.setConsent({ personalization: false })],
  ] as const) {
    it(`${what} while the device waits: it drops out even when the server says the cohort is full; nothing is uploaded, no ε spent`, async () => {
      const server = await fullOnLeave();
      const store = new MemoryEventStore();
      const e = await deviceAt('https://agg.example', ['sku-1', 'sku-5', 'sku-9'], { store, fetch: server.fetch });
      let waiting!: () => void;
      const joined = new Promise<void>((r) => (waiting = r));
      const syncing = e.sync({ onProgress: (p) => p.phase === 'cohort' && waiting() });
      await joined;
      await act(e);
      await assert.rejects(syncing, (err: Error) => err.name === 'AbortError' && /the cohort had filled, and this device drops out of it \(its data was erased or consent withdrawn\); no update was sent and no ε was spent/.test(err.message));
      assert.deepEqual(server.posts, ['/v1/secagg/join', '/v1/secagg/cohorts/:id/members/0/leave']);
      if (what !== 'erase()') {
        assert.equal((await store.getMeta<AccountantState>(PRIVACY_KEY))?.releases ?? 0, 0);
        await e.close();
      }
    });
  }

  it('erase() right after a plain cancel (as rec.erase() sends them): it still drops out, although the signal kept the first reason', async () => {
    const server = await fullOnLeave();
    const e = await deviceAt('https://agg.example', ['sku-1', 'sku-5', 'sku-9'], { fetch: server.fetch });
    let waiting!: () => void;
    const joined = new Promise<void>((r) => (waiting = r));
    const syncing = e.sync({ onProgress: (p) => p.phase === 'cohort' && waiting() });
    await joined;
    e.cancelAllSyncs();
    await e.erase();
    await assert.rejects(syncing, (err: Error) => err.name === 'AbortError' && /drops out of it/.test(err.message));
    assert.deepEqual(server.posts, ['/v1/secagg/join', '/v1/secagg/cohorts/:id/members/0/leave']);
  });

  it('erase() while the upload is being logged, just before it goes: nothing goes', async () => {
    const { secAggKeyPair } = await import('../../src/federated/secagg.js');
    const { toHex } = await import('../../src/federated/wire.js');
    const model = encodeModel(createItemTable(ids, 16, { seed: 1 }));
    const other = await secAggKeyPair();
    const sent: string[] = [];
    let ownKey = '';
    const cohort = 'ab'.repeat(16);
    const fetch: FetchLike = async (url, init) => {
      const path = new URL(url).pathname;
      sent.push(`${init?.method ?? 'GET'} ${path.replace(cohort, ':id')}`);
      if (path === '/v1/config') return Response.json({ dim: 16, items: ids.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 2, secureAggregation: { maskVersion: 2, cohortSize: 2, bits: 16, step: 10 / 32768, degree: 2, minSurvivors: 2 } });
      if (path === '/v1/model') return new Response(model as Uint8Array<ArrayBuffer>);
      if (path === '/v1/secagg/join') {
        ownKey = toHex(init!.body as Uint8Array);
        return Response.json({ cohort, index: 0, size: 2, status: 'forming', token: 'cd'.repeat(16) });
      }
      if (path.endsWith('/members/0')) return Response.json({ cohort, size: 2, status: 'ready', joined: 2, memberKeys: { 0: ownKey, 1: toHex(other.publicKey) } });
      return Response.json({ pending: 0, minClients: 2, published: null }, { status: 202 });
    };
    let e!: Engine;
    let erasing: Promise<void> | undefined;
    /** The shopper clicks "erase my data" while the upload's pending entry is being written. */
    class Store extends MemoryEventStore {
      override async updateMetaPair<A, B>(keyA: string, keyB: string, update: (a: A | undefined, b: B | undefined) => [A, B]): Promise<[A, B]> {
        const r = await super.updateMetaPair(keyA, keyB, update);
        const last = keyB === EGRESS_KEY ? (r[1] as unknown as EgressEntry[]).at(-1) : undefined;
        if (!erasing && last?.pending && last.kind === 'update') {
          erasing = e.erase();
          await new Promise((res) => setTimeout(res, 5));
        }
        return r;
      }
    }
    e = await deviceAt('https://agg.example', ['sku-1', 'sku-5', 'sku-9'], { store: new Store(), fetch });
    await assert.rejects(e.sync(), (err: Error) => err.name === 'AbortError' && /no update was sent/.test(err.message));
    await erasing;
    assert.ok(!sent.includes('POST /v1/secagg/updates'), sent.join(', '));
  });

  it('a plain cancel (the page\'s signal) still uploads into a cohort the server says is full: the others wait on it', async () => {
    const server = await fullOnLeave();
    const e = await deviceAt('https://agg.example', ['sku-1', 'sku-5', 'sku-9'], { fetch: server.fetch });
    const ctl = new AbortController();
    try {
      const r = await e.sync({ signal: ctl.signal, onProgress: (p) => p.phase === 'cohort' && ctl.abort() });
      assert.equal(r.sent, true);
      assert.deepEqual(server.posts, ['/v1/secagg/join', '/v1/secagg/cohorts/:id/members/0/leave', '/v1/secagg/updates']);
    } finally {
      await e.close();
    }
  });
});

describe('sync(): a device past its budget makes the same requests as any other', () => {
  it('the page\'s sync refuses after the config and the model, and an automatic one receives on those two requests', async () => {
    const { sha256, toHex } = await import('../../src/federated/wire.js');
    const dim = 16;
    const model = encodeModel(createItemTable(ids, dim, { seed: 3 }));
    const hash = toHex(await sha256(model));
    let sigma = 1;
    const log: string[] = [];
    const fetch: FetchLike = async (url, init) => {
      const path = new URL(url).pathname;
      log.push(`${init?.method} ${path}`);
      if (path === '/v1/config') return Response.json({ dim, items: ids.length, clip: 1, noiseMultiplier: sigma, bits: 8, blockSize: 256, version: 0, minClients: 10 });
      if (path === '/v1/model') return init?.headers?.['If-None-Match'] === `"${hash}"` ? new Response(null, { status: 304 }) : new Response(model as Uint8Array<ArrayBuffer>, { headers: { 'X-Localrec-Model-Hash': hash, ETag: `"${hash}"` } });
      return Response.json({ pending: 1, minClients: 10, published: null }, { status: 202 });
    };
    const clock = { t: CLOCK_START };
    const e = await deviceAt('https://agg.example', ['sku-1', 'sku-5', 'sku-9'], { fetch, federated: { autoSyncHours: 1 }, now: () => clock.t });
    try {
      const requests = async (f: () => Promise<unknown>) => {
        log.length = 0;
        const r = await f().then(
          (v) => v as { sent: boolean } | null,
          (err: Error) => err,
        );
        return { requests: log.slice(), r };
      };
      const first = await requests(() => e.sync());
      assert.deepEqual(first.requests, ['GET /v1/config', 'GET /v1/model', 'POST /v1/updates']);
      sigma = 0.7; // one more release at 0.7 passes ε = 8 after one at σ = 1 (4.38 spent)
      const refused = await requests(() => e.sync());
      assert.deepEqual(refused.requests, ['GET /v1/config', 'GET /v1/model']);
      assert.ok(isPrivacyBudgetError(refused.r), String(refused.r));
      assert.match((refused.r as Error).message, /nothing was sent, and the newest global model was received with this sync \(version 0\)\. Past the budget, call sync\(\{ contribute: false \}\) instead of sync\(\)/);
      // A receiving call joined to the refused one takes what it received: still two requests.
      const joined = await requests(() => Promise.allSettled([e.sync(), e.sync({ contribute: false })]));
      assert.deepEqual(joined.requests, ['GET /v1/config', 'GET /v1/model']);
      const [page, receiver] = joined.r as unknown as [PromiseSettledResult<unknown>, PromiseSettledResult<{ sent: boolean }>];
      assert.equal(page.status, 'rejected');
      assert.equal(receiver.status === 'fulfilled' && receiver.value.sent, false);
      clock.t += 2 * 3_600_000;
      const auto = await requests(() => (e as unknown as { autoSync(): Promise<unknown> }).autoSync());
      assert.deepEqual(auto.requests, ['GET /v1/config', 'GET /v1/model'], 'no second pair of requests');
      assert.equal((auto.r as { sent: boolean }).sent, false);
      assert.equal((await e.stats()).privacy.syncs, 1);
    } finally {
      await e.close();
    }
  });
});

/**
 * A fake aggregation server (config, model, a cohort of 2 under secure aggregation) whose cohort
 * poll answers `poll(n)` (n = 1, 2, …); every request as 'METHOD path' (the cohort id as :id).
 */
async function fakeCohortServer(o: { poll: (n: number, left: boolean) => Response | Promise<Response>; join?: () => Response; upload?: () => Response; config?: Record<string, unknown> }) {
  const { secAggKeyPair } = await import('../../src/federated/secagg.js');
  const { sha256, toHex } = await import('../../src/federated/wire.js');
  const dim = 16;
  const model = encodeModel(createItemTable(ids, dim, { seed: 3 }));
  const hash = toHex(await sha256(model));
  const other = await secAggKeyPair();
  const cohort = 'cd'.repeat(16);
  const requests: string[] = [];
  let polls = 0;
  let left = false;
  let ownKey = '';
  const config = { dim, items: ids.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 2, secureAggregation: { maskVersion: 2, cohortSize: 2, bits: 16, step: 1 / 64, degree: 2, timeoutMs: 60_000 }, ...o.config };
  const fetch: FetchLike = async (url, init) => {
    const path = new URL(url).pathname;
    requests.push(`${init?.method ?? 'GET'} ${path.replace(cohort, ':id')}`);
    if (path === '/v1/config') return Response.json(config);
    if (path === '/v1/model') return new Response(model as Uint8Array<ArrayBuffer>, { headers: { 'X-Localrec-Model-Hash': hash } });
    if (path === '/v1/secagg/join') {
      ownKey = toHex(init!.body as Uint8Array);
      return o.join?.() ?? Response.json({ cohort, index: 0, size: 2, status: 'forming', token: 'ee'.repeat(16) });
    }
    if (path.endsWith('/leave')) {
      left = true;
      return Response.json({ left: true });
    }
    if (path.endsWith('/members/0')) return o.poll(++polls, left);
    if (path === '/v1/secagg/updates' || path === '/v1/updates') return o.upload?.() ?? Response.json({ pending: 1, minClients: 2, published: null }, { status: 202 });
    return Response.json({ reason: 'not-found' }, { status: 404 });
  };
  const forming = () => Response.json({ cohort, size: 2, status: 'forming', joined: 1 });
  const ready = () => Response.json({ cohort, size: 2, status: 'ready', joined: 2, memberKeys: { 0: ownKey, 1: toHex(other.publicKey) } });
  return { fetch, requests, forming, ready, posts: () => requests.filter((r) => r.startsWith('POST')) };
}

/** A response whose body streams `total` bytes in 64 KiB chunks; `read()` says how many were pulled. */
function bigBody(total: number, init?: ResponseInit): { res: Response; read: () => number } {
  let produced = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(c) {
      if (produced >= total) return c.close();
      produced += 65_536;
      c.enqueue(new Uint8Array(65_536).fill(0x20));
    },
  });
  return { res: new Response(stream, init), read: () => produced };
}

describe('syncOnce under secure aggregation: a device never stays a silent member of a forming cohort', () => {
  const history = [{ itemIds: ['sku-1', 'sku-5', 'sku-9'], weights: [1, 1, 1] }];
  const quick = { backoffMs: 1, cohortPollMs: 1, cohortWaitMs: 150 };

  for (const [what, failure] of [
    ['a 503 that outlasts every attempt', () => Response.json({}, { status: 503 })],
    ['no answer at all', () => Promise.reject(new TypeError('fetch failed'))],
    ['an answer that is not JSON', () => new Response('<html>proxy error</html>')],
    ['a JSON answer that is not an object', () => new Response('null')],
  ] as const) {
    it(`${what} while the cohort forms: it keeps polling until its wait ends, then leaves; nothing sent, no ε`, async () => {
      const srv = await fakeCohortServer({ poll: (n) => (n === 1 ? srv.forming() : failure()) });
      const accountant = new RdpAccountant();
      // The device's clock moves 20 ms a poll, whatever the machine's load: the 150 ms wait ends
      // after the same number of polls every run.
      const clock = { t: CLOCK_START };
      const fetch: FetchLike = (url, init) => {
        if (/\/members\/0$/.test(new URL(url).pathname)) clock.t += 20;
        return srv.fetch(url, init);
      };
      await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch, accountant, history, ...quick, now: () => clock.t }), (e: unknown) =>
        isNetworkError(e) && /no usable answer about it within 150 ms/.test((e as Error).message) && /it left the cohort; nothing was sent/.test((e as Error).message));
      assert.deepEqual(srv.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/cohorts/:id/members/0/leave']);
      assert.ok(srv.requests.filter((r) => r.startsWith('GET /v1/secagg')).length > 4, 'polled on through the outage');
      assert.equal(accountant.releases, 0);
    });
  }

  it('a server that comes back within the wait: the device goes on and uploads', async () => {
    const srv = await fakeCohortServer({ poll: (n) => (n === 1 ? srv.forming() : n < 6 ? Response.json({}, { status: 502 }) : srv.ready()) });
    const r = await syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant: new RdpAccountant(), history, ...quick, cohortWaitMs: 60_000 });
    assert.equal(r.sent, true);
    assert.deepEqual(srv.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/updates']);
  });

  for (const [what, answer, error] of [
    ['a refusal (404)', () => Response.json({ reason: 'not-found' }, { status: 404 }), /refused \(404\)/],
    ['an aborted cohort', () => Response.json({ cohort: 'cd'.repeat(16), size: 2, status: 'aborted', reason: 'timeout' }), /is aborted: timeout; nothing was sent/],
  ] as const) {
    it(`${what} while the cohort forms: it gives its place back (best effort) before giving up`, async () => {
      const srv = await fakeCohortServer({ poll: (n) => (n === 1 ? srv.forming() : answer()) });
      await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant: new RdpAccountant(), history, ...quick }), error);
      assert.deepEqual(srv.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/cohorts/:id/members/0/leave']);
    });
  }

  it('a join answer naming another cohort size: the device leaves before refusing it', async () => {
    const srv = await fakeCohortServer({ poll: () => srv.forming(), join: () => Response.json({ cohort: 'cd'.repeat(16), index: 0, size: 3, status: 'forming', token: 'ee'.repeat(16) }) });
    await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant: new RdpAccountant(), history, ...quick }), /cohort\.size: is 3, the server announced 2/);
    assert.deepEqual(srv.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/cohorts/:id/members/0/leave']);
  });

  it('every cohort poll is in the stored egress log as it is made (a tab closed during a long wait keeps them)', async () => {
    const srv = await fakeCohortServer({ poll: (n) => (n < 5 ? srv.forming() : srv.ready()) });
    const logged: EgressEntry[] = [];
    let stored = 0;
    const unstoredAtPoll: number[] = [];
    const fetch: FetchLike = (url, init) => {
      if (/\/members\/0$/.test(new URL(url).pathname)) unstoredAtPoll.push(logged.length - stored);
      return srv.fetch(url, init);
    };
    const r = await syncOnce({ serverUrl: 'http://srv', fetch, accountant: new RdpAccountant(), history, ...quick, onEgress: (e) => logged.push(e), onCheckpoint: () => void (stored = logged.length) });
    assert.equal(r.sent, true);
    assert.equal(unstoredAtPoll.length, 5);
    assert.deepEqual(unstoredAtPoll, [0, 0, 0, 0, 0], 'nothing logged before a poll is missing from the stored log');
  });
});

describe('syncOnce: the budget of the accountant as stored, under secure aggregation', () => {
  const history = [{ itemIds: ['sku-1', 'sku-5', 'sku-9'], weights: [1, 1, 1] }];
  /** An accountant another tab spent: one release at σ = 0.5 is ε ≈ 10. */
  const spent = () => {
    const a = new RdpAccountant();
    a.record(0.5);
    return a;
  };

  it('spent by another tab before the join: the device does not join; nothing sent', async () => {
    const srv = await fakeCohortServer({ poll: () => srv.ready() });
    const accountant = new RdpAccountant();
    await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant, history, cohortPollMs: 1, storedAccountant: async () => spent() }), (e: unknown) =>
      isPrivacyBudgetError(e) && /spent by another sync before this one joined a cohort\); nothing was sent/.test((e as Error).message));
    assert.deepEqual(srv.requests, ['GET /v1/config', 'GET /v1/model']);
    assert.equal(accountant.releases, 0);
  });

  for (const mode of ['refuse', 'receive'] as const) {
    it(`spent by another tab while the cohort forms (${mode}): the device leaves before the cohort fills instead of dropping out of it`, async () => {
      let stored = new RdpAccountant();
      // The cohort fills once the device has polled twice, unless it left first.
      const srv = await fakeCohortServer({ poll: (n, left) => (n < 3 || left ? srv.forming() : srv.ready()) });
      const fetch: FetchLike = (url, init) => {
        if (/\/members\/0$/.test(new URL(url).pathname)) stored = spent(); // another tab's sync spends meanwhile
        return srv.fetch(url, init);
      };
      const recordRelease = async (sigma: number) => {
        stored.assertCanSpend(sigma, 8);
        stored.record(sigma);
        return stored;
      };
      const run = syncOnce({ serverUrl: 'http://srv', fetch, accountant: new RdpAccountant(), history, cohortPollMs: 1, storedAccountant: async () => stored, recordRelease, whenBudgetSpent: mode });
      if (mode === 'refuse') {
        await assert.rejects(run, (e: unknown) => isPrivacyBudgetError(e) && /while cohort [0-9a-f]+ formed; this device left the cohort\); nothing was sent/.test((e as Error).message));
      } else {
        const r = await run;
        assert.deepEqual([r.sent, r.uploadedBytes], [false, 0]);
        assert.match(r.budgetSpent!, /this device left the cohort\); nothing was sent/);
        assert.equal(r.epsilon, spent().epsilon());
      }
      assert.deepEqual(srv.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/cohorts/:id/members/0/leave']);
    });
  }
});

describe('syncOnce: request options and answers are checked', () => {
  const history = [{ itemIds: ['sku-1', 'sku-5', 'sku-9'], weights: [1, 1, 1] }];

  it('attempts must be an integer ≥ 1, said by name before any request (0 or NaN used to throw undefined)', async () => {
    const { fetchServerConfig } = await import('../../src/federated/sync.js');
    for (const attempts of [0, Number.NaN, 1.5, -1]) {
      const srv = await fakeCohortServer({ poll: () => srv.ready() });
      await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant: new RdpAccountant(), history, attempts }), (e: unknown) =>
        isValidationError(e) && e.field === 'attempts' && /must be an integer ≥ 1/.test(e.message), String(attempts));
      await assert.rejects(fetchServerConfig({ serverUrl: 'http://srv', fetch: srv.fetch, attempts }), (e: unknown) => isValidationError(e) && e.field === 'attempts', String(attempts));
      assert.deepEqual(srv.requests, [], String(attempts));
    }
  });

  it('budget must be a number > 0 (Infinity: no limit), said by name before any request; NaN no longer refuses every sync as "past NaN"', async () => {
    for (const budget of [Number.NaN, 0, -1, '8' as unknown as number]) {
      const srv = await fakeCohortServer({ poll: () => srv.ready() });
      await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant: new RdpAccountant(), history, budget }), (e: unknown) =>
        isValidationError(e) && e.field === 'budget' && /must be a number > 0/.test(e.message), String(budget));
      assert.deepEqual(srv.requests, [], String(budget));
    }
  });

  it('a server config with secureAggregation: false is plain aggregation', async () => {
    const { parseServerConfig } = await import('../../src/federated/sync.js');
    const srv = await fakeCohortServer({ poll: () => srv.ready(), config: { secureAggregation: false } });
    const r = await syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant: new RdpAccountant(), history });
    assert.equal(r.sent, true);
    assert.deepEqual(srv.requests, ['GET /v1/config', 'GET /v1/model', 'POST /v1/updates']);
    assert.equal(parseServerConfig({ dim: 16, items: 10, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 2, secureAggregation: false as never }).secureAggregation, null);
  });

  it('a request that succeeded leaves no abort listener on the caller\'s signal and no deadline armed', async () => {
    const { EventEmitter } = await import('node:events');
    const { fetchServerConfig } = await import('../../src/federated/sync.js');
    const srv = await fakeCohortServer({ poll: () => srv.ready() });
    const attemptSignals: AbortSignal[] = [];
    const fetch: FetchLike = (url, init) => {
      attemptSignals.push(init!.signal!);
      return srv.fetch(url, init);
    };
    const ctl = new AbortController();
    for (let i = 0; i < 12; i++) await fetchServerConfig({ serverUrl: 'http://srv', fetch, signal: ctl.signal, requestTimeoutMs: 30 });
    assert.equal(EventEmitter.getEventListeners(ctl.signal, 'abort').length, 0, 'no listener left on the caller\'s signal');
    await new Promise((r) => setTimeout(r, 80));
    assert.deepEqual(attemptSignals.map((s) => s.aborted), Array(12).fill(false), 'no deadline fired after the answer was read');
  });

  it('answers are read only up to what their request can need: config, join, cohort view, a refusal\'s reason, an upload\'s reply', async () => {
    const huge = 4 << 20;
    const within = (read: number, cap: number, what: string) => assert.ok(read <= cap + 2 * 65_536, `${what}: read ${read} bytes against a cap of ${cap}`);
    // The config.
    {
      let body!: ReturnType<typeof bigBody>;
      const srv = await fakeCohortServer({ poll: () => srv.ready() });
      const fetch: FetchLike = (url, init) => (new URL(url).pathname === '/v1/config' ? Promise.resolve((body = bigBody(huge)).res) : srv.fetch(url, init));
      await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch, accountant: new RdpAccountant(), history }), (e: unknown) =>
        isValidationError(e) && e.field === 'GET /v1/config' && /more than the 65536 bytes a server config can take/.test(e.message));
      within(body.read(), 65_536, 'config');
    }
    // A refusal's reason: the refusal is reported, without reading the rest.
    {
      let body!: ReturnType<typeof bigBody>;
      const srv = await fakeCohortServer({ poll: () => srv.ready() });
      const fetch: FetchLike = (url, init) => (new URL(url).pathname === '/v1/config' ? Promise.resolve((body = bigBody(huge, { status: 403 })).res) : srv.fetch(url, init));
      await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch, accountant: new RdpAccountant(), history }), (e: unknown) =>
        isNetworkError(e) && e.status === 403 && /refused \(403\) \(its body, over 8192 bytes, was not read\)/.test((e as Error).message));
      within(body.read(), 8192, 'refusal');
    }
    // The join's answer.
    {
      let body!: ReturnType<typeof bigBody>;
      const srv = await fakeCohortServer({ poll: () => srv.ready(), join: () => (body = bigBody(huge)).res });
      await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant: new RdpAccountant(), history }), (e: unknown) =>
        isValidationError(e) && e.field === 'POST /v1/secagg/join');
      within(body.read(), 4096, 'join');
    }
    // A member view: refused past its bound (degree 2 here), and the device leaves.
    {
      let body!: ReturnType<typeof bigBody>;
      const srv = await fakeCohortServer({ poll: () => (body = bigBody(huge)).res });
      await assert.rejects(syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant: new RdpAccountant(), history, cohortPollMs: 1 }), (e: unknown) =>
        isValidationError(e) && /^GET \/v1\/secagg\/cohorts\/[0-9a-f]+\/members\/0$/.test(e.field) && /a member view of a cohort of 2 at degree 2/.test(e.message));
      within(body.read(), 2 * (4096 + 3 * 150 + 180), 'member view');
      assert.deepEqual(srv.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/cohorts/:id/members/0/leave']);
    }
    // An upload's reply: a courtesy; the upload was taken, so the sync reports it sent, without the figures.
    {
      let body!: ReturnType<typeof bigBody>;
      const srv = await fakeCohortServer({ poll: () => srv.ready(), upload: () => (body = bigBody(huge, { status: 202 })).res });
      const r = await syncOnce({ serverUrl: 'http://srv', fetch: srv.fetch, accountant: new RdpAccountant(), history, cohortPollMs: 1 });
      assert.deepEqual([r.sent, r.server], [true, undefined]);
      within(body.read(), 4096, 'upload reply');
    }
  });
});
