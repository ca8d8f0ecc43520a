import type { TrackEvent } from '../../src/types.js';
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { COHORTS_KEY, CONSENT_KEY, CONSENT_MAX, EGRESS_KEY, Engine } from '../../src/engine/engine.js';
import { IdbEventStore, MemoryEventStore } from '../../src/events/store.js';
import { isConsentError, isPrivacyBudgetError } from '../../src/errors.js';
import type { RunningServer } from '../../src/server/index.js';
import type { EgressEntry, FetchLike } from '../../src/federated/sync.js';
import { encodeNeighborTable } from '../../src/model/neighbors-wire.js';
import { serverCountingPosts, storeSignallingReads } from './engine-helpers.js';
import '../../src/model/tf.js';

const catalog = { items: Array.from({ length: 20 }, (_, i) => ({ id: `p${i}`, popularity: 20 - i })) };
let n = 0;
const dbName = () => `privacy-test-${n++}`;
const dbNames = async () => (await indexedDB.databases()).map((d) => d.name);

describe('consent', () => {
  it('before consent: nothing stored, nothing trained, nothing synced; recommendations still work', async () => {
    const name = dbName();
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, consent: { personalization: false, federated: false }, federated: { serverUrl: 'http://127.0.0.1:9' } });
    assert.equal(e.enqueue([{ type: 'view', itemId: 'p1' }, { type: 'view', itemId: 'p2' }]), 0);
    await e.flush();
    assert.ok(!(await dbNames()).includes(name), 'no database was created');
    const s = await e.stats();
    assert.equal(s.events.total, 0);
    assert.equal(s.dropped, 2);
    assert.equal(s.storage, 'memory');
    await assert.rejects(e.train(), (err) => isConsentError(err));
    await assert.rejects(e.sync(), (err) => isConsentError(err));
    assert.deepEqual((await e.recommend({ k: 2 })).map((r) => r.itemId), ['p0', 'p1']);
    const a = await e.audit();
    assert.equal(a.consent.droppedBeforeConsent, 2);
    assert.equal(a.storage.kind, 'memory');

    await e.setConsent({ personalization: true });
    assert.ok((await dbNames()).includes(name), 'consent opens the database');
    e.enqueue([{ type: 'view', itemId: 'p3' }]);
    await e.flush();
    assert.equal((await e.stats()).events.total, 1);
    const hist = (await e.audit()).consent.history;
    assert.deepEqual(hist.map((h) => [h.source, h.personalization]), [['options', false], ['setConsent', true]]);

    await e.setConsent({ personalization: false });
    assert.ok(!(await dbNames()).includes(name), 'withdrawing consent erases the database');
    assert.equal((await e.stats()).events.total, 0);
    await e.close();
  });

  for (const how of ['erase()', 'setConsent({ personalization: false })'] as const) {
    it(`a session started without consent: ${how} deletes what an earlier session with consent stored`, async () => {
      const name = dbName();
      const earlier = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
      earlier.enqueue([{ type: 'purchase', itemId: 'p3' }, { type: 'view', itemId: 'p4' }]);
      await earlier.close();
      assert.ok((await dbNames()).includes(name));

      const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, consent: { personalization: false, federated: false } });
      assert.ok((await dbNames()).includes(name), 'starting without consent leaves it alone (it is not opened)');
      if (how === 'erase()') await e.erase();
      else {
        await e.setConsent({ personalization: false });
        await e.close();
      }
      assert.ok(!(await dbNames()).includes(name), `${how} deleted the earlier session's database`);
      const again = await Engine.create({ catalog, backend: 'cpu', dbName: name });
      assert.equal((await again.stats()).events.total, 0);
      await again.erase();
    });
  }

  it('events being written when consent is withdrawn are erased with the rest, not kept in memory', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName: dbName() });
    e.enqueue([{ type: 'view', itemId: 'p7' }]);
    const first = e.flush(); // this batch is on its way into IndexedDB...
    e.enqueue([{ type: 'purchase', itemId: 'p9' }]);
    const second = e.flush(); // ...and this one queued behind it
    await Promise.allSettled([first, second, e.setConsent({ personalization: false })]);
    const s = await e.stats();
    assert.equal(s.storage, 'memory');
    assert.equal(s.events.total, 0, 'nothing from before the withdrawal is kept');
    assert.equal(s.queued, 0);
    assert.deepEqual((await e.exportData()).events, []);
    assert.ok((await e.recommend({ k: 3 })).every((r) => r.reason.kind === 'popular'), 'no reason built on erased events');
    await e.close();
  });

  it('events offered while a grant opens the database are stored or counted as dropped, never taken and lost with the memory store it replaces', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName: dbName(), consent: { personalization: false, federated: false } });
    let granted = false;
    const grant = e.setConsent({ personalization: true }).then(() => (granted = true));
    const batch = (k: number) => Array.from({ length: k }, (_, i) => ({ type: 'view' as const, itemId: `p${i % 20}` }));
    // The grant has begun (a few turns in, its database still opening): 200 at once are written at once.
    for (let i = 0; i < 5; i++) await Promise.resolve();
    let accepted = e.enqueue(batch(200));
    let offered = 200;
    // Then one at every turn of the event loop until the grant is applied.
    while (!granted) {
      accepted += e.enqueue(batch(1));
      offered++;
      await new Promise((r) => setImmediate(r));
    }
    await grant;
    await e.flush();
    const s = await e.stats();
    assert.equal(s.storage, 'indexeddb');
    assert.deepEqual([s.events.total, s.queued], [accepted, 0], 'every event taken is stored');
    assert.equal(s.dropped, offered - accepted, 'the others were refused, and counted');
    assert.equal(e.enqueue(batch(3)), 3, 'granted: events are taken');
    await e.flush();
    assert.equal((await e.stats()).events.total, accepted + 3);
    await e.erase();
  });

  it('a history read under way when consent is withdrawn is not reused afterwards', async () => {
    const { store, reading } = await storeSignallingReads(dbName());
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, store });
    e.enqueue([{ type: 'purchase', itemId: 'p7' }, { type: 'view', itemId: 'p9' }]);
    await e.flush();
    const inFlight = e.recommend({ k: 3 }); // a widget asks while...
    await reading;
    await e.setConsent({ personalization: false }); // ...the shopper withdraws consent
    await inFlight;
    const after = await e.recommend({ k: 20 });
    assert.ok(after.every((r) => r.reason.kind === 'popular'), 'no personal reasons from the erased history');
    assert.ok(after.some((r) => r.itemId === 'p7') && after.some((r) => r.itemId === 'p9'), 'the erased history no longer excludes what it saw');
    await e.close();
  });

  it('a history read that starts while a withdrawal waits for training is not kept either', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName: dbName() });
    e.enqueue([{ type: 'purchase', itemId: 'p7' }, { type: 'view', itemId: 'p9' }, { type: 'view', itemId: 'p3' }]);
    await e.flush();
    const training = e.train({ epochs: 20 }); // the withdrawal waits for it...
    const withdraw = e.setConsent({ personalization: false });
    const during = e.recommend({ k: 3 }); // ...while a widget reads the (still stored) history
    await Promise.allSettled([training, withdraw, during]);
    const after = await e.recommend({ k: 20 });
    assert.ok(after.every((r) => r.reason.kind === 'popular'), 'no personal reasons from the erased history');
    await e.close();
  });

  it('the consent records from before a withdrawal are erased with the rest, not written back at the next grant', async () => {
    const name = dbName();
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName: name, consent: { personalization: false, federated: false } });
    await e.setConsent({ personalization: true });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await e.flush();
    assert.equal((await e.audit()).consent.history.length, 2);
    await e.setConsent({ personalization: false });
    await e.setConsent({ personalization: true });
    const history = (await e.audit()).consent.history;
    assert.deepEqual(history.map((h) => [h.source, h.personalization]), [['setConsent', false], ['setConsent', true]], 'the withdrawal and the new grant only');
    await e.erase();
  });

  it('a neighbour-file request begun before a withdrawal, or before another tab erased the data, writes nothing into the database that follows', async () => {
    const items = { items: ['a', 'b', 'c'].map((id) => ({ id })) };
    const file = encodeNeighborTable({ itemIds: ['a', 'b'], width: 1, index: Int32Array.of(1, 0), weight: Float32Array.of(0.5, 0.2) });
    // A server that answers only when told to (and does not notice an abort).
    const slow = () => {
      const answers: Array<(r: Response) => void> = [];
      const fetch = (() => new Promise<Response>((r) => answers.push(r))) as never;
      return { fetch, answer: () => answers.splice(0).forEach((a) => a(new Response(file as Uint8Array<ArrayBuffer>))) };
    };
    const settle = () => new Promise((r) => setTimeout(r, 50));
    // Withdrawal, then consent again, then the old request answers.
    let t = 1_000_000_000_000;
    const s1 = slow();
    const name = dbName();
    let fetches = 0;
    const counted = ((...args: never[]) => (fetches++, (s1.fetch as (...a: never[]) => Promise<Response>)(...args))) as never;
    const e = await Engine.create({ catalog: items, backend: 'cpu', dbName: name, autoTrainEvery: 0, now: () => t, neighbors: { url: 'https://cdn.example/n.lrn' }, fetch: counted });
    e.enqueue([{ type: 'view', itemId: 'a' }]);
    await e.flush();
    t += 60_000;
    await e.setConsent({ personalization: false });
    t += 60_000;
    const grantedAt = t;
    await e.setConsent({ personalization: true });
    // The grant fetches afresh at once (no retry delay for a request the withdrawal stopped).
    assert.equal(fetches, 2);
    s1.answer();
    await settle();
    const log = await e.egressLog();
    assert.deepEqual(log.map((x) => [x.t, x.status]), [[grantedAt, 200]], 'only the request made after the grant');
    assert.equal((await e.stats()).model.neighbors?.items, 2, 'the table is in use');
    assert.equal((await e.stats()).lastError, undefined, 'a stopped request is no error');
    await e.erase();
    // Another tab erases while this tab's request is out; this tab must not bring the database back.
    const other = dbName();
    const a = await Engine.create({ catalog: items, backend: 'cpu', dbName: other, autoTrainEvery: 0 });
    a.enqueue([{ type: 'view', itemId: 'a' }]);
    await a.flush();
    const s2 = slow();
    const b = await Engine.create({ catalog: items, backend: 'cpu', dbName: other, autoTrainEvery: 0, neighbors: { url: 'https://cdn.example/n.lrn' }, fetch: s2.fetch });
    await settle();
    await a.erase();
    await settle();
    s2.answer();
    await settle();
    assert.ok(!(await dbNames()).includes(other), 'the database stays deleted');
    assert.deepEqual(await b.egressLog(), []);
    await b.close();
  });

  it('a neighbour-file request whose egress entry cannot be stored is said in stats().lastError, naming it (privacy review, stop 33)', async () => {
    const items = { items: ['a', 'b', 'c'].map((id) => ({ id })) };
    const file = encodeNeighborTable({ itemIds: ['a', 'b'], width: 1, index: Int32Array.of(1, 0), weight: Float32Array.of(0.5, 0.2) });
    const store = new MemoryEventStore();
    const update = store.updateMeta.bind(store);
    store.updateMeta = ((key: string, fn: never) => (key === EGRESS_KEY ? Promise.reject(new Error('QuotaExceededError')) : update(key, fn))) as typeof store.updateMeta;
    const urls: string[] = [];
    const fetch: FetchLike = async (url) => (urls.push(url), new Response(file as Uint8Array<ArrayBuffer>));
    const e = await Engine.create({ catalog: items, backend: 'cpu', store, autoTrainEvery: 0, neighbors: { url: 'https://cdn.example/n.lrn' }, fetch });
    await e.recommend();
    for (let i = 0; i < 20 && (await e.stats()).lastError === undefined; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(urls, ['https://cdn.example/n.lrn'], 'the request was made');
    assert.equal(await store.getMeta(EGRESS_KEY), undefined, 'it could not be stored');
    // Listed all the same, from memory (stop 36), and stored with the next request logged.
    assert.deepEqual((await e.egressLog()).map((x) => [x.kind, x.endpoint, x.status]), [['neighbors', 'https://cdn.example/n.lrn', 200]]);
    assert.match((await e.stats()).lastError ?? '', /GET https:\/\/cdn\.example\/n\.lrn was made, but its egress log entry could not be stored \(QuotaExceededError\); it is kept in memory/);
    await e.close();
  });

  it('an egress entry kept in memory (its write failed) is stored with the next events written once there is room, before any other request', async () => {
    const items = { items: ['a', 'b', 'c'].map((id) => ({ id })) };
    const file = encodeNeighborTable({ itemIds: ['a', 'b'], width: 1, index: Int32Array.of(1, 0), weight: Float32Array.of(0.5, 0.2) });
    let full = true;
    class Store extends MemoryEventStore {
      override async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
        if (key === EGRESS_KEY && full) throw new Error('QuotaExceededError');
        return super.updateMeta(key, update);
      }
    }
    const store = new Store();
    const e = await Engine.create({ catalog: items, backend: 'cpu', store, autoTrainEvery: 0, neighbors: { url: 'https://cdn.example/n.lrn' }, fetch: async () => new Response(file as Uint8Array<ArrayBuffer>) });
    try {
      await e.recommend();
      for (let i = 0; i < 50 && (await e.egressLog()).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(await store.getMeta(EGRESS_KEY), undefined, 'not stored while the store is full');
      full = false;
      e.enqueue([{ type: 'view', itemId: 'a' }]);
      await e.flush();
      // Before: it stayed in memory until the next request was logged (a day later for the neighbour
      // file), and a page closed meanwhile lost it.
      assert.deepEqual((await store.getMeta<EgressEntry[]>(EGRESS_KEY))?.map((x) => [x.kind, x.endpoint]), [['neighbors', 'https://cdn.example/n.lrn']]);
      assert.deepEqual((await e.egressLog()).map((x) => x.kind), ['neighbors'], 'listed once');
    } finally {
      await e.close();
    }
  });

  // A diff review (stop 36): the entries kept in memory went back into memory after a write that
  // failed across a withdrawal, and were stored once personalization was granted again.
  it('an egress entry kept in memory (its write failed) is not carried across a withdrawal by a write that fails after it', async () => {
    const items = { items: ['a', 'b', 'c'].map((id) => ({ id })) };
    const file = encodeNeighborTable({ itemIds: ['a', 'b'], width: 1, index: Int32Array.of(1, 0), weight: Float32Array.of(0.5, 0.2) });
    let mode: 'fail' | 'hang' | 'ok' = 'fail';
    let release!: () => void;
    const opened = new Promise<void>((r) => (release = r));
    let hung = false;
    class Store extends MemoryEventStore {
      override async updateMeta<T>(key: string, update: (current: T | undefined) => T): Promise<T> {
        if (key === EGRESS_KEY && mode === 'fail') throw new Error('QuotaExceededError');
        if (key === EGRESS_KEY && mode === 'hang') {
          hung = true;
          await opened;
          throw new Error('QuotaExceededError');
        }
        return super.updateMeta(key, update);
      }
    }
    const store = new Store();
    const fetch: FetchLike = async () => new Response(file as Uint8Array<ArrayBuffer>);
    const e = await Engine.create({ catalog: items, backend: 'cpu', store, autoTrainEvery: 0, neighbors: { url: 'https://cdn.example/n.lrn' }, fetch });
    try {
      await e.recommend();
      for (let i = 0; i < 50 && (await e.egressLog()).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual((await e.egressLog()).map((x) => x.kind), ['neighbors'], 'kept in memory');
      // The next write takes it along, and fails only after a withdrawal began.
      mode = 'hang';
      const append = (e as unknown as { appendEgress(x: unknown[]): Promise<void> }).appendEgress([{ t: Date.now(), method: 'GET', endpoint: 'https://before.example/', kind: 'neighbors', bytes: 0, status: 200 }]);
      const appendFailed = assert.rejects(append);
      for (let i = 0; i < 50 && !hung; i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(hung);
      const withdrawn = e.setConsent({ personalization: false });
      release();
      await appendFailed;
      await withdrawn;
      mode = 'ok';
      await e.setConsent({ personalization: true });
      assert.deepEqual(await e.egressLog(), [], 'nothing from before the withdrawal');
      await (e as unknown as { appendEgress(x: unknown[]): Promise<void> }).appendEgress([{ t: Date.now(), method: 'GET', endpoint: 'https://x.example/', kind: 'neighbors', bytes: 0, status: 200 }]);
      assert.deepEqual(((await store.getMeta<Array<{ endpoint: string }>>(EGRESS_KEY)) ?? []).map((x) => x.endpoint), ['https://x.example/'], 'nor stored with the next entry');
    } finally {
      await e.close();
    }
  });

  it('consent changes while personalization is off do not grow the history in memory without bound (long-lived page review, stop 33)', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: dbName(), autoTrainEvery: 0, consent: { personalization: false, federated: false } });
    try {
      for (let i = 0; i < 2 * CONSENT_MAX + 50; i++) await e.setConsent({ personalization: false, federated: i % 2 === 0 });
      const held = (e as unknown as { consentHistory: unknown[] }).consentHistory.length;
      assert.ok(held <= 2 * CONSENT_MAX, `${held} records held`);
      const history = (await e.audit()).consent.history;
      assert.equal(history.length, CONSENT_MAX);
      assert.equal(history.at(-1)!.federated, (2 * CONSENT_MAX + 49) % 2 === 0);
    } finally {
      await e.close();
    }
  });

  it('unknown consent keys are refused by name, and nothing changes', async () => {
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: dbName() });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await e.flush();
    await assert.rejects(e.setConsent({ personalisation: false } as never), /consent\.personalisation: is not an option \(known: personalization, federated\)/);
    await assert.rejects(e.setConsent(null as never), /consent: must be an object/);
    assert.equal((await e.stats()).events.total, 1);
    assert.equal((await e.audit()).consent.history.length, 1);
    await e.erase();
  });

  it('Global Privacy Control turns sync off unless the host overrides it, and the audit says so', async () => {
    const gpc = await Engine.create({ catalog, backend: 'cpu', dbName: dbName(), globalPrivacyControl: true, federated: { serverUrl: 'http://127.0.0.1:9' } });
    await assert.rejects(gpc.sync(), (err) => isConsentError(err) && /Global Privacy Control/.test((err as Error).message));
    const a = await gpc.audit();
    assert.equal(a.privacy.globalPrivacyControl, true);
    assert.equal(a.privacy.globalPrivacyControlHonored, true);
    assert.equal(a.privacy.federatedActive, false);
    assert.equal(a.egress.requests, 0, 'nothing was sent');
    await gpc.erase();

    const overridden = await Engine.create({ catalog, backend: 'cpu', dbName: dbName(), globalPrivacyControl: true, honorGlobalPrivacyControl: false, federated: { serverUrl: 'http://127.0.0.1:9' } });
    const b = await overridden.audit();
    assert.equal(b.privacy.globalPrivacyControlHonored, false);
    assert.equal(b.privacy.federatedActive, true);
    await overridden.erase();
  });
});

describe('what opening the SDK writes', () => {
  it('nothing: starting (twice) with consent and no events leaves the stores empty; history is written with the first event', async () => {
    const name = dbName();
    for (let i = 0; i < 2; i++) {
      const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
      await e.recommend();
      await e.close();
    }
    const { IdbEventStore } = await import('../../src/events/store.js');
    const s = await IdbEventStore.open(name);
    assert.equal(await s.getMeta('consent'), undefined);
    assert.equal(await s.count(), 0);
    s.close();
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
    e.enqueue([{ type: 'view', itemId: 'p1' }]);
    await e.flush();
    assert.equal((await e.audit()).consent.history.length, 1);
    await e.close();
    const again = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
    assert.equal((await again.audit()).consent.history.length, 1, 'the same consent on a later visit adds no record');
    await again.erase();
  });
});

describe('audit and export', () => {
  it('audit figures match what was stored; export holds every stored event and nothing else', async () => {
    const name = dbName();
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, retention: { maxEvents: 100, maxAgeDays: 30 } });
    const tracked: TrackEvent[] = [
      { type: 'view', itemId: 'p1' },
      { type: 'purchase', itemId: 'p1', quantity: 2, price: 3 },
      { type: 'search', query: 'mug' },
    ];
    e.enqueue(tracked);
    await e.train({ epochs: 1 });
    const a = await e.audit();
    assert.equal(a.schema, 1);
    assert.equal(a.events.total, 3);
    assert.deepEqual(a.events.byType, { view: 1, purchase: 1, search: 1 });
    assert.ok(a.events.bytes > 0);
    assert.deepEqual(a.retention, { maxEvents: 100, maxAgeDays: 30 });
    assert.deepEqual(a.storage, { kind: 'indexeddb', database: name, schemaVersion: 2, stores: ['events', 'meta'], notOpened: null });
    assert.equal(a.model.stored, true);
    assert.equal(a.model.bytes, 20 * 32 * 4 + 20 * 4);
    assert.equal(a.egress.requests, 0);
    assert.equal(a.privacy.federatedConfigured, false);

    const x = await e.exportData();
    assert.equal(x.format, 'localrec-export');
    assert.deepEqual(
      x.events.map(({ id: _id, t: _t, ...rest }) => rest),
      tracked,
    );
    assert.equal(JSON.parse(JSON.stringify(x)).events.length, 3, 'JSON round trip');
    assert.deepEqual([x.cohorts, x.notOpened], [[], null]);
    await e.erase();
    assert.ok(!(await dbNames()).includes(name), 'erase leaves no database');
  });

  it('an earlier visit\'s database this session has not opened (no consent yet) is named, not passed over as nothing', async () => {
    const name = dbName();
    const first = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
    first.enqueue([{ type: 'purchase', itemId: 'p3' }, { type: 'search', query: 'red shoes' }]);
    await first.close();
    const later = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, consent: { personalization: false, federated: false } });
    const a = await later.audit();
    assert.deepEqual([a.storage.kind, a.storage.notOpened, a.events.total], ['memory', name, 0]);
    assert.equal((await later.exportData()).notOpened, name);
    // Consent opens it: its events are listed, and nothing is left unopened.
    await later.setConsent({ personalization: true });
    const b = await later.audit();
    assert.deepEqual([b.storage.kind, b.storage.notOpened, b.events.total], ['indexeddb', null, 2]);
    await later.erase();
  });

  it('the earlier visit\'s database is named also where the browser cannot list its databases (Firefox before 126), and none is created by asking', async () => {
    const name = dbName();
    const first = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
    first.enqueue([{ type: 'view', itemId: 'p3' }]);
    await first.close();
    const listing = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(indexedDB), 'databases')!;
    const names = (await dbNames()).filter((d) => d !== name);
    Object.defineProperty(Object.getPrototypeOf(indexedDB), 'databases', { value: undefined, configurable: true, writable: true });
    try {
      assert.equal(typeof indexedDB.databases, 'undefined');
      const later = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, consent: { personalization: false, federated: false } });
      assert.equal((await later.audit()).storage.notOpened, name);
      assert.equal((await later.exportData()).notOpened, name);
      await later.close();
      // A name with no database: null, and asking created none.
      const never = dbName();
      const fresh = await Engine.create({ catalog, backend: 'cpu', dbName: never, autoTrainEvery: 0, consent: { personalization: false, federated: false } });
      assert.equal((await fresh.audit()).storage.notOpened, null);
      await fresh.close();
    } finally {
      Object.defineProperty(Object.getPrototypeOf(indexedDB), 'databases', listing);
    }
    assert.deepEqual((await dbNames()).filter((d) => d !== name), names, 'no database created by the check');
    await (await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 })).erase();
  });

  it('events past the age limit are deleted when the SDK starts and before audit() and export() report, not at the next write', async () => {
    const DAY = 86_400_000;
    const name = dbName();
    const opts = { catalog, backend: 'cpu' as const, dbName: name, autoTrainEvery: 0 };
    const e = await Engine.create({ ...opts, retention: { maxEvents: 100, maxAgeDays: 30 } });
    e.enqueue([{ type: 'view', itemId: 'p3', t: Date.now() - 20 * DAY }, { type: 'search', query: 'pregnancy test', t: Date.now() - 20 * DAY }, { type: 'view', itemId: 'p4' }]);
    await e.flush();
    await e.close();
    // What is physically in the events store (IndexedDB, read and written around the SDK).
    const { openDB } = await import('idb');
    const raw = async <T>(f: (db: Awaited<ReturnType<typeof openDB>>) => Promise<T>): Promise<T> => {
      const db = await openDB(name);
      try {
        return await f(db);
      } finally {
        db.close();
      }
    };
    const stored = () => raw(async (db) => (await db.getAll('events')).map((x: { type: string }) => x.type));
    assert.equal((await stored()).length, 3);
    // A later visit under a 10-day limit: two events have expired.
    const again = await Engine.create({ ...opts, retention: { maxEvents: 100, maxAgeDays: 10 } });
    assert.deepEqual(await stored(), ['view'], 'deleted when the SDK started');
    // One that expires while the session runs (put there directly, as the clock would make it).
    await raw((db) => db.add('events', { t: Date.now() - 11 * DAY, type: 'search', query: 'old' }));
    const report = await again.audit();
    assert.equal(report.events.total, 1);
    assert.deepEqual(report.events.evictedThisSession, { retention: 3, quota: 0 }, 'two at start, one before the report: counted');
    assert.deepEqual(await stored(), ['view'], 'deleted before audit() reported');
    await raw((db) => db.add('events', { t: Date.now() - 11 * DAY, type: 'search', query: 'old' }));
    assert.deepEqual((await again.exportData()).events.map((x) => x.itemId), ['p4']);
    assert.deepEqual(await stored(), ['view'], 'deleted before export()');
    await again.close();
    // A later visit with a lower count limit: applied at start too.
    await raw((db) => db.add('events', { t: Date.now() - 1000, type: 'view', itemId: 'p5' }));
    const fewer = await Engine.create({ ...opts, retention: { maxEvents: 1, maxAgeDays: 10 } });
    assert.equal((await stored()).length, 1);
    assert.equal((await fewer.stats()).events.total, 1);
    await fewer.erase();
  });

  it('audit(): an upload cancelled before it left is in the log but not counted as sent; cohorts joined are listed', async () => {
    const store = new MemoryEventStore();
    const e = await Engine.create({ catalog, backend: 'cpu', store, autoTrainEvery: 0 });
    // (Recent: entries older than retention.maxAgeDays are not reported.)
    const t = Date.now() - 60_000;
    await store.setMeta(EGRESS_KEY, [
      { t: t + 1, method: 'GET', endpoint: '/v1/config', kind: 'config', bytes: 0, status: 200 },
      { t: t + 2, method: 'POST', endpoint: '/v1/updates', kind: 'update', bytes: 950, status: 0, notSent: true },
      { t: t + 3, method: 'POST', endpoint: '/v1/updates', kind: 'update', bytes: 950, status: 202 },
    ]);
    await store.setMeta(COHORTS_KEY, ['c1', 'c2']);
    const a = await e.audit();
    assert.deepEqual([a.egress.requests, a.egress.bytesSent, a.egress.notSent, a.egress.log.length], [2, 950, 1, 3]);
    assert.deepEqual(a.cohorts, { stored: true, ids: ['c1', 'c2'] });
    assert.deepEqual((await e.exportData()).cohorts, ['c1', 'c2']);
    await e.close();
  });
});

// Privacy review (stop 30): what the device remembers across visits, and what it forgets.
const DAY = 86_400_000;
const servers: RunningServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

describe('a withdrawal of federated learning across visits (stop 30)', () => {
  it('is applied again on the next page load when the host gives no consent decision; the host\'s own answer wins, and the history says which', async () => {
    const name = dbName();
    const open = (extra: Record<string, unknown> = {}) => Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, federated: { serverUrl: 'http://127.0.0.1:9' }, ...extra });
    const first = await open();
    first.enqueue([{ type: 'view', itemId: 'p1' }]);
    await first.flush();
    await first.setConsent({ federated: false });
    await first.close();

    // The next page load, no consent option (the page's 'granted' passes none: engine-input.test.ts).
    const second = await open();
    const a = await second.audit();
    assert.equal(a.privacy.federatedActive, false, 'the withdrawal holds');
    assert.deepEqual(a.consent.current, { personalization: true, federated: false });
    assert.deepEqual(a.consent.history.map((h) => [h.source, h.federated]), [['default', true], ['setConsent', false]], 'the same decision as stored adds no record');
    await assert.rejects(second.sync(), (err) => isConsentError(err));
    assert.equal((await second.stats()).privacy.federated, false);
    await second.close();

    // The host's remembered answer (its banner's) is applied as given, and recorded as its own.
    const host = await open({ consent: { personalization: true, federated: true } });
    const b = await host.audit();
    assert.equal(b.privacy.federatedActive, true);
    assert.deepEqual(b.consent.history.map((h) => [h.source, h.federated]), [['default', true], ['setConsent', false], ['options', true]]);
    host.enqueue([{ type: 'view', itemId: 'p2' }]);
    await host.flush();
    await host.close();
    // Its answer is now the latest stored decision: the next visit without one follows it.
    const third = await open();
    assert.equal((await third.audit()).privacy.federatedActive, true);
    await third.erase();
  });

  it('holds after the device clock went back since the grant it withdraws, and a grant after that holds again (stop 32)', async () => {
    const name = dbName();
    const T = Date.UTC(2025, 5, 1, 12);
    let clock = T + 2 * 3_600_000; // two hours ahead: a hand-set time in the wrong time zone
    const open = () => Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, now: () => clock, federated: { serverUrl: 'http://127.0.0.1:9' } });
    const first = await open();
    first.enqueue([{ type: 'view', itemId: 'p1', t: T }]);
    await first.flush();
    await first.setConsent({ personalization: true, federated: true });
    await first.close();
    clock = T + 10 * 60_000; // corrected: UTC moves back
    const second = await open();
    await second.setConsent({ federated: false });
    // Withdrawn, granted and withdrawn again within the same millisecond: each record counts.
    await second.setConsent({ federated: true });
    await second.setConsent({ federated: false });
    const history = (await second.audit()).consent.history;
    assert.deepEqual(history.map((h) => h.federated), [true, true, false, true, false], 'in the order they were made');
    for (let i = 1; i < history.length; i++) assert.ok(history[i]!.t > history[i - 1]!.t, 'strictly later than the record before');
    await second.close();
    clock = T + 30 * 60_000;
    const third = await open();
    assert.deepEqual((await third.audit()).consent.current, { personalization: true, federated: false }, 'the withdrawal is the decision in force');
    await third.setConsent({ federated: true });
    await third.close();
    const fourth = await open();
    assert.deepEqual((await fourth.audit()).consent.current, { personalization: true, federated: true });
    await fourth.erase();
  });

  it('the stored decision that is applied is the latest made while personalization was on; "required" keeps asking', async () => {
    const name = dbName();
    // Started before consent ('required': both off), then consent to personalization only.
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, consent: { personalization: false, federated: false } });
    await e.setConsent({ personalization: true, federated: true });
    await e.setConsent({ federated: false });
    await e.close();
    const raw = await IdbEventStore.open(name);
    assert.deepEqual(((await raw.getMeta<{ personalization: boolean; federated: boolean }[]>(CONSENT_KEY)) ?? []).map((r) => [r.personalization, r.federated]), [[false, false], [true, true], [true, false]]);
    raw.close();
    const restored = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
    assert.deepEqual((await restored.audit()).consent.current, { personalization: true, federated: false });
    // A change in this session is the shopper's: the stored one no longer applies.
    await restored.setConsent({ federated: true });
    assert.deepEqual((await restored.audit()).consent.current, { personalization: true, federated: true });
    await restored.close();
    const again = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0 });
    assert.deepEqual((await again.audit()).consent.current, { personalization: true, federated: true });
    await again.setConsent({ federated: false });
    await again.close();
    // 'required' (the page passes both off until the banner is answered) keeps asking: no stored
    // decision is applied over it, not even the withdrawal just made.
    const asking = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, consent: { personalization: false, federated: false } });
    assert.deepEqual((await asking.audit()).consent.current, { personalization: false, federated: false });
    await asking.setConsent({ personalization: true, federated: true });
    assert.deepEqual((await asking.audit()).consent.current, { personalization: true, federated: true }, 'the answer given now holds');
    await asking.erase();
  });
});

describe('IndexedDB refused to open: the ε budget cannot be remembered (stop 30)', () => {
  /** Runs `f` with an IndexedDB whose open() is refused (private mode), as engine-tabs.test.ts does. */
  async function refusingIndexedDb<T>(f: () => Promise<T>): Promise<T> {
    const g = globalThis as { indexedDB: IDBFactory };
    const real = g.indexedDB;
    g.indexedDB = { open() { throw new DOMException('The operation is insecure.', 'SecurityError'); } } as unknown as IDBFactory;
    try {
      return await f();
    } finally {
      g.indexedDB = real;
    }
  }
  const ids = catalog.items.map((i) => i.id);
  async function server(): Promise<{ url: string; posts: string[]; fetch: FetchLike }> {
    const s = await serverCountingPosts(ids);
    servers.push(s.server);
    return s;
  }
  const history = ['p1', 'p2', 'p3', 'p4'].map((itemId) => ({ type: 'view' as const, itemId }));

  it('a contributing sync is refused (PrivacyBudgetError, nothing sent); a receiving one works; federated.allowWithoutStorage lets it contribute', async () => {
    const srv = await server();
    const opts = { catalog, backend: 'cpu' as const, dbName: dbName(), autoTrainEvery: 0, model: { dim: 8 }, fetch: srv.fetch };
    const e = await refusingIndexedDb(() => Engine.create({ ...opts, federated: { serverUrl: srv.url } }));
    e.enqueue(history);
    await e.flush();
    assert.equal((await e.stats()).storage, 'memory');
    await assert.rejects(e.sync(), (err) => isPrivacyBudgetError(err) && /cannot remember the ε it spends/.test((err as Error).message) && /allowWithoutStorage/.test((err as Error).message));
    assert.deepEqual(await e.egressLog(), [], 'not even the GETs went out');
    assert.equal((await e.stats()).privacy.syncs, 0);
    const received = await e.sync({ contribute: false });
    assert.equal(received.sent, false);
    assert.deepEqual(srv.posts, [], 'nothing uploaded');
    assert.deepEqual((await e.egressLog()).map((x) => x.kind), ['config', 'model']);
    await e.close();

    const allowed = await refusingIndexedDb(() => Engine.create({ ...opts, dbName: dbName(), federated: { serverUrl: srv.url, allowWithoutStorage: true } }));
    allowed.enqueue(history);
    await allowed.flush();
    const r = await allowed.sync();
    assert.equal(r.sent, true, 'the host opted in');
    assert.deepEqual(srv.posts, ['/v1/updates']);
    await allowed.close();
    await assert.rejects(Engine.create({ ...opts, federated: { serverUrl: srv.url, allowWithoutStorage: 'yes' } } as never), /options\.federated\.allowWithoutStorage/);
  });

  it('plain Node without IndexedDB (memory is the intended store) syncs as before', async () => {
    const srv = await server();
    const g = globalThis as { indexedDB?: IDBFactory };
    const real = g.indexedDB;
    g.indexedDB = undefined;
    try {
      const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, fetch: srv.fetch, federated: { serverUrl: srv.url } });
      e.enqueue(history);
      await e.flush();
      assert.equal((await e.stats()).storage, 'memory');
      assert.equal((await e.sync()).sent, true);
      await e.close();
    } finally {
      g.indexedDB = real;
    }
    assert.deepEqual(srv.posts, ['/v1/updates']);
  });
});

describe('retention.maxAgeDays for the egress log and the consent history (stop 30)', () => {
  it('a neighbour request logged at each page load, and consent records, are not kept past the age limit (the latest consent record is)', async () => {
    const name = dbName();
    let t = Date.UTC(2030, 0, 1);
    const fetch = (async () => new Response(new Uint8Array(0), { status: 404 })) as never;
    const open = () => Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, now: () => t, fetch, neighbors: { url: 'https://cdn.example/n.lrn' }, retention: { maxAgeDays: 1 } });
    const settle = () => new Promise((r) => setTimeout(r, 50));
    const first = await open();
    first.enqueue([{ type: 'view', itemId: 'p1' }]);
    await first.flush();
    await settle();
    t += 3_600_000;
    await first.setConsent({ federated: false });
    await first.close();
    for (let i = 0; i < 3; i++) {
      t += 3_600_000;
      const visit = await open();
      await settle();
      await visit.close();
    }
    const raw = async <T>(key: string) => {
      const s = await IdbEventStore.open(name);
      try {
        return (await s.getMeta<T>(key)) ?? [];
      } finally {
        s.close();
      }
    };
    assert.equal((await raw<unknown[]>(EGRESS_KEY)).length, 4, 'a neighbour request per page load');
    assert.equal((await raw<unknown[]>(CONSENT_KEY)).length, 2);
    // Two days on: only this page load's request is reported, and stored.
    t += 2 * DAY;
    const later = await open();
    await settle();
    const log = await later.egressLog();
    assert.deepEqual(log.map((x) => [x.kind, x.t]), [['neighbors', t]]);
    assert.deepEqual((await later.exportData()).egressLog.map((x) => x.t), [t]);
    const a = await later.audit();
    assert.deepEqual(a.egress.log.map((x) => x.t), [t]);
    // Of the consent records, the one in force stays (the withdrawal, applied again), however old.
    assert.deepEqual(a.consent.history.map((h) => [h.source, h.federated]), [['setConsent', false]]);
    assert.deepEqual(a.consent.current, { personalization: true, federated: false });
    await later.close();
    assert.deepEqual((await raw<{ t: number }[]>(EGRESS_KEY)).map((x) => x.t), [t], 'removed from the database too');
    assert.deepEqual((await raw<{ source: string }[]>(CONSENT_KEY)).map((r) => r.source), ['setConsent']);
    const gone = await open();
    await gone.erase();
  });
});
