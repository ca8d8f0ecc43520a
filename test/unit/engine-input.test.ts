// Adversarial input to the Engine's public methods (the Node API; the page checks most of these
// itself before they cross to the worker): each is refused with a ValidationError naming the field,
// before anything starts, and nothing stored changes. Found by a fuzzing review (stop 22).
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { withStandInWorker } from './engine-helpers.js';
import { CONSENT_KEY, Engine } from '../../src/engine/engine.js';
import { IdbEventStore, MemoryEventStore } from '../../src/events/store.js';
import { isClosedError, isValidationError } from '../../src/errors.js';
import { createRecommender } from '../../src/recommender.js';
import type { RecommendOptions, SimilarOptions } from '../../src/types.js';
import { MAX_MASKS } from '../../src/model/score.js';
import { generateOfferKeys } from '../../src/offers/signing.js';
import '../../src/model/tf.js';

const catalog = {
  items: [
    { id: 'p1', title: 'Red mug', category: 'mugs', price: 4 },
    { id: 'p2', title: 'Blue mug', category: 'mugs', price: 4 },
    { id: 'p3', title: 'Lamp', category: 'lamps', price: 20 },
  ],
};
let n = 0;
const dbName = () => `engine-input-${n++}`;
const refused = (field: string) => (e: unknown) => isValidationError(e) && (e as { field?: string }).field === field;


describe('Engine input (stop 22 fuzzing review)', () => {
  it('sync() refuses a signal that is not an AbortSignal, and sends nothing', async () => {
    const sent: string[] = [];
    const e = await Engine.create({
      catalog, backend: 'cpu', store: new MemoryEventStore(), federated: { serverUrl: 'http://127.0.0.1:9' },
      fetch: async (url: string) => {
        sent.push(url);
        return new Response('', { status: 503 });
      },
    });
    for (const signal of [{ aborted: false }, {}, 5, 'abort'] as unknown[]) {
      await assert.rejects(e.sync({ signal: signal as AbortSignal }), refused('options.signal'));
    }
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(sent, [], 'no request left');
    await e.close();
  });

  it('create() takes only true or false for consent and the Global Privacy Control switches, and a non-empty dbName', async () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ consent: { personalization: 'false' } }, 'options.consent.personalization'],
      [{ consent: { personalization: true, federated: 0 } }, 'options.consent.federated'],
      // A consent given names both: a left-out federated read as given, over the shopper's stored
      // refusal (stop 40); the page's options already required both.
      [{ consent: { personalization: true } }, 'options.consent.federated'],
      [{ consent: { federated: false } }, 'options.consent.personalization'],
      [{ consent: {} }, 'options.consent.personalization'],
      [{ consent: 'granted' }, 'options.consent'],
      [{ globalPrivacyControl: 'true' }, 'options.globalPrivacyControl'],
      [{ honorGlobalPrivacyControl: 1 }, 'options.honorGlobalPrivacyControl'],
      [{ dbName: '' }, 'options.dbName'],
      [{ dbName: 5 }, 'options.dbName'],
      // As the page passes it on: the error names the option the page was given.
      [{ federated: { serverUrl: 'http://127.0.0.1:9', honorGlobalPrivacyControl: 'no' }, honorGlobalPrivacyControl: 'no' }, 'options.federated.honorGlobalPrivacyControl'],
    ];
    for (const [extra, field] of cases) {
      await assert.rejects(Engine.create({ catalog, backend: 'cpu', dbName: dbName(), ...extra } as never), refused(field), field);
    }
  });

  it('create() refuses missing options, backendCandidates that are not a list of backend names, and a fetch, now or onConsent that is not a function, by name, before opening anything', async () => {
    for (const opts of [undefined, null, 'x', []]) await assert.rejects(Engine.create(opts as never), refused('options'), String(opts));
    const name = dbName();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ backendCandidates: 'cpu' }, 'options.backendCandidates'],
      [{ backendCandidates: [] }, 'options.backendCandidates'],
      [{ backendCandidates: ['gpu'] }, 'options.backendCandidates[0]'],
      [{ backendCandidates: ['cpu', 5] }, 'options.backendCandidates[1]'],
      [{ fetch: 'x' }, 'options.fetch'],
      [{ now: 5 }, 'options.now'],
      [{ onConsent: {} }, 'options.onConsent'],
      // Unknown keys in options.training, as in every other group; not an object at all (stop 40).
      [{ training: { epoch: 3 } }, 'options.training.epoch'],
      [{ training: null }, 'options.training'],
      [{ training: 'x' }, 'options.training'],
      // A store the caller gives is first used at a write or an erase: a wrong one fails here (stop 41; was a TypeError later).
      [{ store: {} }, 'options.store.kind'],
      [{ store: null }, 'options.store'],
      [{ store: 'idb' }, 'options.store'],
      [{ store: { ...Object.fromEntries(Object.entries(Object.getOwnPropertyDescriptors(MemoryEventStore.prototype)).map(([k]) => [k, () => undefined])), kind: 'memory', updateMetaPair: undefined } }, 'options.store'],
    ];
    for (const [extra, field] of cases) {
      await assert.rejects(Engine.create({ catalog, dbName: name, ...extra } as never), refused(field), field);
    }
    assert.ok(!(await indexedDB.databases()).some((d) => d.name === name), 'no database was opened');
    const e = await Engine.create({ catalog, backendCandidates: ['cpu'], store: new MemoryEventStore(), fetch: async () => new Response(''), now: () => Date.now(), onConsent: () => undefined });
    assert.equal((await e.stats()).backend, 'cpu');
    await e.close();
  });

  it('a create() that fails part-way (a store read throws) releases what it opened: the tab channel, the scorer, the store', async () => {
    // Once, so that the backend's own set-up is not counted below.
    await (await Engine.create({ catalog, backend: 'cpu', store: new MemoryEventStore() })).close();
    const g = globalThis as { BroadcastChannel: typeof BroadcastChannel };
    const RealChannel = g.BroadcastChannel;
    const channels: Array<{ closed: boolean }> = [];
    g.BroadcastChannel = class extends RealChannel {
      readonly spy = { closed: false };
      constructor(name: string) {
        super(name);
        channels.push(this.spy);
      }
      override close() {
        this.spy.closed = true;
        super.close();
      }
    };
    const realOpen = IdbEventStore.open;
    const realGetMeta = IdbEventStore.prototype.getMeta;
    const stores: IdbEventStore[] = [];
    IdbEventStore.open = async (...args: Parameters<typeof IdbEventStore.open>) => {
      const s = await realOpen.apply(IdbEventStore, args);
      stores.push(s);
      return s;
    };
    IdbEventStore.prototype.getMeta = function (this: IdbEventStore, key: string) {
      if (key === CONSENT_KEY) return Promise.reject(new Error('boom: the consent record cannot be read'));
      return realGetMeta.call(this, key);
    } as typeof realGetMeta;
    const tensors = tf.memory().numTensors;
    try {
      await assert.rejects(Engine.create({ catalog, backend: 'cpu', dbName: dbName(), autoTrainEvery: 0 }), /boom/);
    } finally {
      g.BroadcastChannel = RealChannel;
      IdbEventStore.open = realOpen;
      IdbEventStore.prototype.getMeta = realGetMeta;
    }
    assert.equal(tf.memory().numTensors, tensors, "the scorer's tensors are disposed");
    assert.equal(channels.length, 1, 'the tab channel had been opened');
    assert.deepEqual(channels, [{ closed: true }], 'and is closed');
    assert.equal(stores.length, 1);
    await assert.rejects(stores[0]!.count(), /closed/, 'the store it opened is closed');
  });

  it('recommend() and similar() take a readonly list for exclude, as for candidates (a frozen cart; `npm run typecheck` checks the types)', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', store: new MemoryEventStore(), autoTrainEvery: 0 });
    const cart: readonly string[] = Object.freeze(['p2']);
    const recOptions: RecommendOptions = { k: 3, exclude: cart };
    const simOptions: SimilarOptions = { k: 3, exclude: cart };
    assert.deepEqual((await e.recommend(recOptions)).map((r) => r.itemId).sort(), ['p1', 'p3']);
    assert.deepEqual((await e.similar('p1', simOptions)).map((r) => r.itemId), ['p3']);
    await e.close();
  });

  it('enqueue() refuses what is not an array, with or without consent, and keeps its counters numbers', async () => {
    for (const personalization of [false, true]) {
      const store = new MemoryEventStore();
      const e = await Engine.create({ catalog, backend: 'cpu', store, consent: { personalization, federated: false } });
      if (personalization) e.enqueue([{ type: 'view', itemId: 'p1' }]);
      for (const bad of [{ type: 'view', itemId: 'p1' }, null, undefined, 'abc', 5]) {
        assert.throws(() => e.enqueue(bad as never), refused('events'));
      }
      await e.flush();
      const s = await e.stats();
      assert.equal(s.events.total, personalization ? 1 : 0, 'the valid event is kept, nothing else');
      assert.ok(Number.isFinite((await e.audit()).consent.droppedBeforeConsent));
      await e.close();
    }
  });

  it('error messages describe values they cannot serialize (BigInt, cycles) instead of throwing a TypeError', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', store: new MemoryEventStore(), offers: { publicKey: (await generateOfferKeys()).publicJwk } });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await assert.rejects(e.recommend({ exclude: 5n as never }), refused('options.exclude'));
    await assert.rejects(e.recommend({ exclude: cyclic as never }), refused('options.exclude'));
    await assert.rejects(e.offers({ context: { page: 5n as never } }), refused('options.context.page'));
    await assert.rejects(e.offers({ context: { now: Symbol('now') as never } }), refused('options.context.now'));
    await assert.rejects(e.setOffers({ alg: 5n, catalog: {}, signature: 'x' } as never), (err: Error) => err.name === 'SignatureError' && /algorithm a bigint/.test(err.message));
    await assert.rejects(Engine.create({ catalog, backend: 'cpu', store: new MemoryEventStore(), neighbors: { url: 1n as never } }), refused('options.neighbors.url'));
    // A huge unknown id is not copied whole into the message.
    await assert.rejects(e.similar('x'.repeat(1_000_000)), (err: Error) => err.message.length < 200);
    await e.close();
  });

  it('recommend() by category keeps a bounded number of masks on the backend, and an unknown category recommends nothing', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', store: new MemoryEventStore() });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await e.recommend({ k: 2, category: 'mugs' });
    const before = tf.memory().numTensors;
    for (let i = 0; i < 200; i++) assert.deepEqual(await e.recommend({ k: 2, category: `c${i}` }), []);
    assert.equal(tf.memory().numTensors, before, 'no tensor per unknown category');
    // Known categories beyond the cap: the least recently used masks are disposed.
    const many = { items: Array.from({ length: MAX_MASKS + 20 }, (_, i) => ({ id: `q${i}`, category: `k${i}` })) };
    const f = await Engine.create({ catalog: many, backend: 'cpu', store: new MemoryEventStore() });
    await f.recommend({ k: 1, category: 'k0' });
    const start = tf.memory().numTensors;
    for (let i = 0; i < MAX_MASKS + 20; i++) assert.equal((await f.recommend({ k: 1, category: `k${i}` }))[0]?.itemId, `q${i}`);
    assert.ok(tf.memory().numTensors <= start + MAX_MASKS, `${tf.memory().numTensors - start} tensors more than after the first category`);
    await e.close();
    await f.close();
  });

  it('train() with nothing to learn reports null losses, not NaN', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', store: new MemoryEventStore() });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    const r = await e.train({ epochs: 1 });
    assert.equal(r.steps, 0);
    assert.equal(r.firstLoss, null);
    assert.equal(r.lastLoss, null);
    assert.equal((await e.stats()).model.trainedAt, undefined, 'a run that changed no weight is not reported as a training');
    assert.equal((await e.stats()).model.pendingEvents, 0, 'the events it looked at are no longer pending');
    await e.close();
  });
});

describe('Engine and a database deleted without a tab message (stop 22 diff review)', () => {
  it('drops what it held from it and carries on: the browser cleared the site data while the connection was down', async () => {
    const { deleteDB } = await import('idb');
    const name = dbName();
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await e.flush();
    await e.recommend({ k: 2 }); // the history is cached
    const inner = e as unknown as { store: { db?: { close(): void } }; inbox: Promise<void> };
    inner.store.db!.close(); // the browser dropped the connection…
    inner.store.db = undefined;
    await deleteDB(name); // …and cleared the site's data
    await assert.rejects(e.stats(), /was deleted \(another tab erased it, or the browser cleared the site's data\)/);
    await new Promise((r) => setTimeout(r, 0));
    await inner.inbox;
    const recs = await e.recommend({ k: 3 });
    assert.ok(!recs.some((r) => r.reason.kind !== 'popular'), 'nothing learned from the deleted history is used');
    e.enqueue([{ type: 'view', itemId: 'p3' }]);
    await e.flush();
    assert.deepEqual((await e.exportData()).events.map((x) => x.itemId), ['p3'], 'the database holds only what came after');
    await e.erase();
  });

  /** An engine whose database was deleted while it had no connection, found gone and handled; then it wrote p3 and queued p4. */
  async function handledVanish(): Promise<{ e: Engine; name: string; erasedAt: number; fromOtherTab: (m: unknown) => Promise<void> }> {
    const { deleteDB } = await import('idb');
    const name = dbName();
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await e.flush();
    const inner = e as unknown as { store: { db?: { close(): void } }; inbox: Promise<void>; fromOtherTab(m: unknown): Promise<void> };
    inner.store.db!.close();
    inner.store.db = undefined;
    const erasedAt = Date.now();
    await deleteDB(name); // another tab's erase, whose message is still on its way
    await assert.rejects(e.stats(), /was deleted/);
    await new Promise((r) => setTimeout(r, 0));
    await inner.inbox;
    e.enqueue([{ type: 'view', itemId: 'p3' }]);
    await e.flush();
    e.enqueue([{ type: 'view', itemId: 'p2' }]);
    return { e, name, erasedAt, fromOtherTab: (m) => inner.fromOtherTab(m) };
  }

  it("another tab's erase message arriving after the tab handled that deletion itself drops nothing tracked since", async () => {
    const { e, erasedAt, fromOtherTab } = await handledVanish();
    await fromOtherTab({ type: 'erased', at: erasedAt });
    await e.flush();
    assert.deepEqual((await e.exportData()).events.map((x) => x.itemId), ['p3', 'p2']);
    await e.erase();
  });

  it('a deletion already handled (through a tab message) is not handled again when the store reports it late', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: dbName(), autoTrainEvery: 0 });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await e.flush();
    const inner = e as unknown as { store: { onVanished?: () => void }; inbox: Promise<void> };
    inner.store.onVanished!(); // the grace timer of a deletion the engine has handled meanwhile
    await inner.inbox;
    assert.deepEqual((await e.exportData()).events.map((x) => x.itemId), ['p1'], 'nothing dropped: the store is not deleted');
    await e.erase();
  });

  it("another tab's consent withdrawal arriving after the tab recreated the database deletes it again", async () => {
    const { e, name, erasedAt, fromOtherTab } = await handledVanish();
    // The withdrawal was asked for (and deleted the database) before this tab recreated it.
    await fromOtherTab({ type: 'consent', personalization: false, federated: false, at: erasedAt });
    assert.ok(!(await indexedDB.databases()).some((d) => d.name === name), 'nothing this tab wrote after the deletion is left');
    assert.equal((await e.stats()).events.total, 0);
    await e.close();
  });
});

describe('A database deleted while the tab is connected, with no tab message (stop 22)', () => {
  it('the tab recovers after the grace period instead of refusing every call', async () => {
    const { deleteDB } = await import('idb');
    const { DELETION_GRACE_MS } = await import('../../src/events/store.js');
    const name = dbName();
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await e.flush();
    await deleteDB(name); // devtools "Delete database", or other code of the origin: no localrec message
    // A call made before the tab knows waits for the grace period (no message comes), then runs on
    // the empty database, rather than being refused with "was deleted" (stop 38).
    assert.equal((await e.stats()).events.total, 0);
    await new Promise((r) => setTimeout(r, DELETION_GRACE_MS + 100));
    await (e as unknown as { inbox: Promise<void> }).inbox;
    assert.equal((await e.stats()).events.total, 0);
    e.enqueue([{ type: 'view', itemId: 'p2' }]);
    await e.flush();
    assert.deepEqual((await e.exportData()).events.map((x) => x.itemId), ['p2']);
    await e.erase();
  });
});

describe('track() input the store would lose at once, or that pages build generically (stop 24)', () => {
  it('an event older than retention.maxAgeDays is refused naming event.t, not accepted and deleted in the same write', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: dbName(), autoTrainEvery: 0, retention: { maxAgeDays: 30 } });
    try {
      const day = 24 * 3600 * 1000;
      assert.throws(() => e.enqueue([{ type: 'purchase', itemId: 'p1', t: Date.now() - 31 * day }]), (err: unknown) => refused('event.t')(err) && /older than retention\.maxAgeDays \(30 days\)/.test((err as Error).message));
      assert.equal(e.enqueue([{ type: 'purchase', itemId: 'p2', t: Date.now() - 29 * day }]), 1);
      await e.flush();
      const st = await e.stats();
      assert.equal(st.events.total, 1);
      assert.equal(st.dropped, 1, 'the refused one is counted');
      assert.deepEqual(st.evicted, { retention: 0, quota: 0 });
    } finally {
      await e.erase();
    }
  });

  it('createRecommender() on a server (no Worker) says so, also with the relative URLs a page passes', async () => {
    assert.equal(typeof (globalThis as { Worker?: unknown }).Worker, 'undefined');
    for (const extra of [{}, { neighbors: { url: '/neighbors.lrn' } }, { wasmPaths: '/tfjs/' }, { workerUrl: '/worker.js' }]) {
      await assert.rejects(
        createRecommender({ catalog, ...extra }),
        (e: unknown) => isClosedError(e) && /runs in a browser page .*call it on the client only/.test((e as Error).message),
        JSON.stringify(extra),
      );
    }
  });

  it('createRecommender() refuses a workerUrl that is not a non-empty string or a URL, by name, before any worker starts (stop 40)', async () => {
    let started = 0;
    const api = { async init() { started++; }, barrier: async () => undefined, close: async () => undefined };
    await withStandInWorker(api, async () => {
      for (const workerUrl of [5, {}, '', null]) {
        await assert.rejects(createRecommender({ catalog, workerUrl: workerUrl as never }), (e: unknown) => isValidationError(e) && e.field === 'options.workerUrl', JSON.stringify(workerUrl));
      }
      assert.equal(started, 0);
      const rec = await createRecommender({ catalog, workerTimeoutMs: 0, workerUrl: new URL('https://shop.example/worker.js') });
      await rec.close();
      // An object with a string form of its own, as a Trusted Types page's TrustedScriptURL.
      class TrustedScriptURLLike {
        toString() {
          return '/worker.js';
        }
      }
      const trusted = await createRecommender({ catalog, workerTimeoutMs: 0, workerUrl: new TrustedScriptURLLike() as never });
      await trusted.close();
    });
  });

  it('the page counts the events track() refuses in stats().dropped, as Engine.enqueue does (not in droppedBeforeConsent)', async () => {
    // The page's facade over a stand-in worker: only the counting on the page is under test here.
    const workerDropped = 2;
    const api = {
      async init(_options: unknown, trackPort: MessagePort) {
        trackPort.onmessage = () => undefined;
      },
      barrier: async () => undefined,
      stats: async () => ({ dropped: workerDropped }),
      audit: async () => ({ consent: { droppedBeforeConsent: 0 } }),
      close: async () => undefined,
    };
    await withStandInWorker(api, async () => {
      const rec = await createRecommender({ catalog, workerTimeoutMs: 0, retention: { maxAgeDays: 30 } });
      try {
        assert.throws(() => rec.track({ type: 'view' } as never), refused('event.itemId'));
        assert.throws(() => rec.track({ type: 'view', itemId: 'p1', t: Date.now() - 31 * 86_400_000 }), refused('event.t'));
        rec.track({ type: 'view', itemId: 'p1' });
        assert.equal((await rec.stats()).dropped, workerDropped + 2, "the page's two refusals are counted");
        assert.equal((await rec.audit()).consent.droppedBeforeConsent, 0, 'they were not dropped for consent');
      } finally {
        await rec.close();
      }
    });
  });

  it('on a device clock before 2000 the page drops (and counts) an event without t instead of throwing, and keeps one with t (stop 32)', async () => {
    const posted: unknown[] = [];
    const api = {
      async init(_options: unknown, trackPort: MessagePort) {
        trackPort.onmessage = (m: MessageEvent) => posted.push(...(m.data as { events: unknown[] }).events);
      },
      barrier: async () => undefined,
      stats: async () => ({ dropped: 0 }),
      close: async () => undefined,
    };
    await withStandInWorker(api, async () => {
      const rec = await createRecommender({ catalog, workerTimeoutMs: 0 });
      const realNow = Date.now;
      const serverTime = realNow();
      try {
        Date.now = () => Date.UTC(1980, 0, 1); // a dead clock battery
        try {
          rec.track({ type: 'view', itemId: 'p1' });
          rec.track({ type: 'view', itemId: 'p2', t: serverTime });
          assert.throws(() => rec.track({ type: 'view', t: serverTime } as never), refused('event.itemId'), 'a bad event still throws');
        } finally {
          Date.now = realNow;
        }
        assert.equal((await rec.stats()).dropped, 2, 'the untimed one and the bad one');
        await new Promise((r) => setTimeout(r, 50));
        assert.deepEqual(posted.map((e) => (e as { itemId: string }).itemId), ['p2']);
      } finally {
        await rec.close();
      }
    });
  });

  it('the page passes no consent decision for the default or \'granted\' (the engine may apply a stored withdrawal), and the host\'s own answer or \'required\' as given (stop 30)', async () => {
    let received: Record<string, unknown> | undefined;
    const api = {
      async init(options: Record<string, unknown>, trackPort: MessagePort) {
        received = options;
        trackPort.onmessage = () => undefined;
      },
      barrier: async () => undefined,
      close: async () => undefined,
    };
    await withStandInWorker(api, async () => {
      const cases: Array<[unknown, unknown]> = [
        [undefined, undefined],
        ['granted', undefined],
        ['required', { personalization: false, federated: false }],
        [{ personalization: true, federated: true }, { personalization: true, federated: true }],
        [{ personalization: true, federated: false }, { personalization: true, federated: false }],
      ];
      for (const [consent, passed] of cases) {
        received = undefined;
        const rec = await createRecommender({ catalog, workerTimeoutMs: 0, ...(consent === undefined ? {} : { consent: consent as never }) });
        try {
          // (Set by the stand-in worker's init: read through a cast, TypeScript narrowed it to undefined above.)
          const got = received as Record<string, unknown> | undefined;
          assert.ok(got, 'init was called');
          assert.equal('consent' in got, passed !== undefined, `consent ${JSON.stringify(consent)}`);
          assert.deepEqual(got.consent, passed, `consent ${JSON.stringify(consent)}`);
        } finally {
          await rec.close();
        }
      }
    });
  });

  it('a field set to undefined is no field: accepted, and not stored', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: dbName(), autoTrainEvery: 0 });
    try {
      assert.equal(e.enqueue([{ type: 'view', itemId: 'p1', quantity: undefined, price: undefined, t: undefined } as never]), 1);
      assert.throws(() => e.enqueue([{ type: 'view', itemId: 'p1', quantity: 2 } as never]), refused('event.quantity'), 'a value is still refused where the type has no such field');
      await e.flush();
      const [stored] = (await e.exportData()).events;
      assert.deepEqual(Object.keys(stored!).sort(), ['id', 'itemId', 't', 'type']);
    } finally {
      await e.erase();
    }
  });
});
