/**
 * Records read back from IndexedDB are whatever was written: hand-edited in devtools, or written by
 * another release. A malformed one must not stop the engine from starting, nor audit(), export()
 * or erase(); the privacy accountant, when unreadable, counts as spent (stop 31).
 */
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { openDB } from 'idb';
import { AUTO_SYNC_KEY, COHORTS_KEY, CONSENT_KEY, EGRESS_KEY, Engine, GLOBAL_KEY, NEIGHBORS_KEY, PRIVACY_KEY } from '../../src/engine/engine.js';
import { IdbEventStore, MemoryEventStore } from '../../src/events/store.js';
import { OFFER_LEDGER_KEY } from '../../src/events/offer-ledger.js';
import { isPrivacyBudgetError } from '../../src/errors.js';
import { storedEventProblem } from '../../src/events/schema.js';
import { readAccountant, readConsentRecords, readEgressLog } from '../../src/engine/stored-records.js';
import { RdpAccountant } from '../../src/federated/dp.js';
import type { RunningServer } from '../../src/server/index.js';
import { serverCountingPosts } from './engine-helpers.js';
import '../../src/model/tf.js';

const catalog = { items: Array.from({ length: 20 }, (_, i) => ({ id: `p${i}`, popularity: 20 - i })) };
const base = { catalog, backend: 'cpu' as const, autoTrainEvery: 0, model: { dim: 8 } };
let n = 0;
const servers: RunningServer[] = [];
after(async () => {
  for (const s of servers) await s.close();
});

/** A memory store holding `meta` as stored records. */
async function storeWith(meta: Record<string, unknown>): Promise<MemoryEventStore> {
  const s = new MemoryEventStore();
  for (const [k, v] of Object.entries(meta)) await s.setMeta(k, v as never);
  return s;
}

/** An IndexedDB database named `name` with `events` written as they are (no checks), like devtools would. */
async function seedIdb(name: string, events: unknown[]): Promise<void> {
  (await IdbEventStore.open(name)).close();
  const db = await openDB(name);
  for (const e of events) await db.add('events', e as never);
  db.close();
}

describe('malformed stored records (stop 31)', () => {
  it('a consent history that is not a list, or holds junk, no longer stops the engine; federated learning stays off without a host decision', async () => {
    for (const bad of [{ nope: 1 }, [null, 5, { t: 'x' }]]) {
      const e = await Engine.create({ ...base, store: await storeWith({ [CONSENT_KEY]: bad }), federated: { serverUrl: 'http://127.0.0.1:9' } });
      const s = await e.stats();
      assert.match(s.lastError ?? '', /StorageError: the stored record "consent" is malformed/);
      const a = await e.audit();
      assert.equal(a.consent.current.personalization, true);
      assert.equal(a.consent.current.federated, false, 'a withdrawal may have been lost: off');
      await e.close();
    }
    // A host that passes its own decision decides.
    const e = await Engine.create({ ...base, store: await storeWith({ [CONSENT_KEY]: { nope: 1 } }), consent: { personalization: true, federated: true }, federated: { serverUrl: 'http://127.0.0.1:9' } });
    assert.equal((await e.audit()).consent.current.federated, true);
    await e.close();
  });

  it('a consent record a newer release wrote keeps its fields through this tab\'s next write', async () => {
    const newer = { t: Date.now() - 1000, personalization: true, federated: true, source: 'a-newer-source', extra: 1 };
    const store = await storeWith({ [CONSENT_KEY]: [newer] });
    const e = await Engine.create({ ...base, store });
    await e.setConsent({ federated: false });
    const stored = (await store.getMeta(CONSENT_KEY)) as Array<Record<string, unknown>>;
    assert.deepEqual(stored[0], newer);
    assert.equal(stored.at(-1)!.source, 'setConsent');
    await e.close();
  });

  it('readConsentRecords and readEgressLog keep the well-formed entries and say whether anything was dropped', () => {
    const ok = { t: 5, personalization: true, federated: false, source: 'setConsent' };
    assert.deepEqual(readConsentRecords(undefined), { value: [], damaged: false });
    assert.deepEqual(readConsentRecords([ok]), { value: [ok], damaged: false });
    assert.deepEqual(readConsentRecords([ok, { ...ok, source: 5 }, { ...ok, federated: 'no' }]), { value: [ok], damaged: true });
    assert.deepEqual(readConsentRecords('x'), { value: [], damaged: true });
    // What a newer release may write (another source, another kind, another field) is kept whole.
    const newer = { ...ok, source: 'a-newer-source', extra: 1 };
    assert.deepEqual(readConsentRecords([ok, newer]), { value: [ok, newer], damaged: false });
    const entry = { t: 1, method: 'GET', endpoint: '/v1/config', kind: 'config', bytes: 0, status: 200 };
    const later = { ...entry, kind: 'a-newer-kind', method: 'PUT' };
    assert.deepEqual(readEgressLog([entry, later, { ...entry, bytes: '0' }, null]), { value: [entry, later], damaged: true });
  });

  it('an egress log that is not a list: audit(), export() and egressLog() work, the next request logged replaces it', async () => {
    const store = await storeWith({ [EGRESS_KEY]: { a: 1 } });
    const e = await Engine.create({ ...base, store });
    assert.deepEqual(await e.egressLog(), []);
    assert.deepEqual((await e.exportData()).egressLog, []);
    assert.equal((await e.audit()).egress.requests, 0);
    assert.match((await e.stats()).lastError ?? '', /"egress" is malformed/);
    await e.close();
    // A neighbour fetch logs itself: the record is a list again.
    const later = await Engine.create({ ...base, store, neighbors: { url: 'https://cdn.example/n.lrn' }, fetch: async () => new Response('', { status: 404 }) });
    for (let i = 0; i < 100 && !Array.isArray(await store.getMeta(EGRESS_KEY)); i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(((await store.getMeta(EGRESS_KEY)) as Array<{ kind: string }>).map((x) => x.kind), ['neighbors']);
    await later.close();
  });

  it('an offer ledger, neighbour table, global model, automatic-sync state or cohort list that is malformed: audit() and export() work', async () => {
    const store = await storeWith({ [OFFER_LEDGER_KEY]: 'x', [NEIGHBORS_KEY]: { hash: 1 }, [GLOBAL_KEY]: 3, [AUTO_SYNC_KEY]: 5, [COHORTS_KEY]: 'x' });
    const e = await Engine.create({ ...base, store });
    const a = await e.audit();
    assert.deepEqual([a.offerLedger, a.globalModel, a.cohorts], [null, null, null]);
    assert.equal(a.autoSync, null);
    assert.equal((await e.exportData()).format, 'localrec-export');
    assert.match((await e.stats()).lastError ?? '', /"neighbors" is malformed/);
    assert.deepEqual(await e.recommend({ k: 2 }).then((r) => r.map((x) => x.itemId)), ['p0', 'p1']);
    await e.close();
  });

  it('a ledger with some malformed offer entries keeps the others for the caps; retention folds into it', async () => {
    const good = { offerId: 'mugs10', impressions: 2, redemptions: 1 };
    const day = 86_400_000;
    const now = Date.now();
    const store = new MemoryEventStore({ maxEvents: 1000, maxAgeDays: 30 });
    await store.setMeta(OFFER_LEDGER_KEY, { offers: [good, { offerId: 7 }, { offerId: 'x', impressions: -1, redemptions: 0 }], lastPurchaseAt: 'soon' } as never);
    await store.add([{ type: 'offer_redeemed', offerId: 'mugs10', t: now - 40 * day }, { type: 'view', itemId: 'p1', t: now }]);
    const ledger = await store.offerLedger();
    assert.deepEqual(ledger, { offers: [{ ...good, redemptions: 2, lastRedeemedAt: now - 40 * day }] });
  });

  it('an unreadable privacy accountant counts as spent: ε reads ∞, a contributing sync is refused after the two GETs, a receiving one works', async () => {
    const { server: s, posts, fetch } = await serverCountingPosts(catalog.items.map((i) => i.id));
    servers.push(s);
    const store = await storeWith({ [PRIVACY_KEY]: 'garbage' });
    const e = await Engine.create({ ...base, store, fetch, federated: { serverUrl: s.url } });
    e.enqueue(['p1', 'p2', 'p3'].map((itemId) => ({ type: 'view' as const, itemId })));
    await e.flush();
    const st = await e.stats();
    assert.deepEqual([st.privacy.epsilon, st.privacy.syncsLeft], [Infinity, 0]);
    assert.match(st.lastError ?? '', /"privacy" is malformed: the ε it held is unknown, so it counts as spent/);
    await assert.rejects(e.sync(), (err) => isPrivacyBudgetError(err) && /privacy accountant cannot be read/.test((err as Error).message));
    assert.deepEqual(posts, [], 'nothing uploaded');
    assert.deepEqual((await e.egressLog()).map((x) => x.kind), ['config', 'model'], 'the same two requests as any device past its budget');
    assert.equal((await e.sync({ contribute: false })).sent, false);
    assert.equal(await store.getMeta(PRIVACY_KEY), 'garbage', 'the record is left as it was (never replaced by a fresh budget)');
    assert.equal((await e.audit()).privacy.epsilonSpent, Infinity);
    await e.close();
  });

  it('readAccountant: a valid state reads as stored; an unreadable one refuses to record or be written', () => {
    const acc = new RdpAccountant();
    acc.record(1);
    assert.equal(readAccountant(acc.toJSON()).value.releases, 1);
    const bad = readAccountant({ orders: [2], rdp: ['x'], releases: 1 });
    assert.equal(bad.damaged, true);
    assert.throws(() => bad.value.record(1), isPrivacyBudgetError);
    assert.throws(() => bad.value.toJSON(), isPrivacyBudgetError);
  });

  it('stored events that are not events (a quantity that is not a number, a NaN rating) are left out: scores stay finite, training works, stats says why', async () => {
    const name = `stored-records-${n++}`;
    const t = Date.now() - 60_000;
    await seedIdb(name, [
      { type: 'view', itemId: 'p3', t },
      { type: 'purchase', itemId: 'p4', t: t + 1, quantity: 'two' },
      { type: 'rating', itemId: 'p5', t: t + 2, value: NaN },
      { type: 'view', itemId: 'p6', t: t + 3 },
      { type: 'view', itemId: 'p7', t: t + 4 },
    ]);
    const e = await Engine.create({ ...base, dbName: name });
    const recs = await e.recommend({ k: 5 });
    assert.ok(recs.every((r) => Number.isFinite(r.score)), JSON.stringify(recs));
    const trained = await e.train({ epochs: 1 });
    assert.ok(trained.examples > 0, 'the three sound views make examples');
    assert.match((await e.stats()).lastError ?? '', /2 stored event records are malformed \(event 2: event\.quantity: must be a finite number.*export\(\)\.unreadableEvents; retention \(when they carry a time\) or erase\(\) removes them/);
    // The export lists them as stored (the shopper's data, if unusable), apart from the events.
    const exported = await e.exportData();
    assert.deepEqual(exported.events.map((x) => x.itemId), ['p3', 'p6', 'p7']);
    assert.deepEqual((exported.unreadableEvents as Array<{ itemId: string }>).map((x) => x.itemId), ['p4', 'p5']);
    await e.erase();
    await e.close();
  });

  it('storedEventProblem accepts what validateEvent stores (with its key), refuses the rest', () => {
    assert.equal(storedEventProblem({ id: 3, type: 'view', itemId: 'a', t: 1_800_000_000_000 }), undefined);
    assert.match(storedEventProblem({ type: 'view', itemId: 'a' }) ?? '', /t must be a number/);
    assert.match(storedEventProblem({ id: 'x', type: 'view', itemId: 'a', t: 1_800_000_000_000 }) ?? '', /id must be a whole number/);
    assert.match(storedEventProblem(null) ?? '', /must be an object/);
  });
});
