// Several localrec instances on one origin (shops, catalogs, environments; review "multi"): the ε
// budget is accounted per aggregation server across every dbName, the cached global model and the
// egress log name their server, and a model trained on another catalog does not pass for this one's.
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { deleteDB, openDB } from 'idb';
import { Engine, PRIVACY_KEY } from '../../src/engine/engine.js';
import { forgetSpend, PRIVACY_LEDGER_DB, recordInLedger } from '../../src/engine/privacy-ledger.js';
import { IdbEventStore } from '../../src/events/store.js';
import { isPrivacyBudgetError } from '../../src/errors.js';
import { RdpAccountant } from '../../src/federated/dp.js';
import { serverKey, type FetchLike } from '../../src/federated/sync.js';
import { createItemTable } from '../../src/model/item-table.js';
import { startServer, type RunningServer } from '../../src/server/index.js';
import '../../src/model/tf.js';

const ids = Array.from({ length: 20 }, (_, i) => `p${i}`);
const catalog = { items: ids.map((id, i) => ({ id, popularity: 20 - i })) };
const history = ['p1', 'p2', 'p3', 'p4'].map((itemId) => ({ type: 'view' as const, itemId }));
let n = 0;
const dbName = (what: string) => `multi-${what}-${n++}`;

interface Srv {
  server: RunningServer;
  url: string;
  posts: string[];
  /** Every request: method, URL and the If-None-Match it carried. */
  seen: Array<{ method: string; url: string; ifNoneMatch: string | undefined }>;
  fetch: FetchLike;
}
const servers: RunningServer[] = [];
async function server(seed = 1): Promise<Srv> {
  const s = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 8, { seed }), minClients: 100, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
  servers.push(s);
  const posts: string[] = [];
  const seen: Srv['seen'] = [];
  const fetch: FetchLike = (url, init) => {
    if (init?.method === 'POST') posts.push(new URL(url).pathname);
    seen.push({ method: init?.method ?? 'GET', url, ifNoneMatch: init?.headers?.['If-None-Match'] });
    return globalThis.fetch(url, init as RequestInit);
  };
  return { server: s, url: s.url, posts, seen, fetch };
}
const open = (name: string, srv: Srv, budget = 8) =>
  Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, fetch: srv.fetch, federated: { serverUrl: srv.url, budget } });

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
  // Each test starts without a ledger (one device per test).
  await deleteDB(PRIVACY_LEDGER_DB);
});

describe('the ε budget is accounted per server across every dbName of the origin', () => {
  it('three instances with their own dbNames and one server: the server gets as many uploads from the device as one budget allows', async () => {
    const srv = await server();
    const sent: number[] = [];
    for (const name of [dbName('uk'), dbName('de'), dbName('staging')]) {
      const e = await open(name, srv);
      e.enqueue(history);
      await e.flush();
      let uploads = 0;
      for (let i = 0; i < 4; i++) {
        try {
          if ((await e.sync()).sent) uploads++;
        } catch (err) {
          assert.ok(isPrivacyBudgetError(err), String(err));
          // A database that spent nothing is told where the budget went.
          if (uploads === 0) assert.match((err as Error).message, /this database's own releases \(options\.dbName "multi-(de|staging)-\d+"\) come to ε 0\.000, the others were made to the same server by this origin's other localrec databases/);
          break;
        }
      }
      sent.push(uploads);
      const s = await e.stats();
      const a = await e.audit();
      assert.equal(s.privacy.ledger, PRIVACY_LEDGER_DB);
      assert.equal(s.privacy.syncs, 2, 'the server-wide count');
      assert.equal(s.privacy.thisDatabase.syncs, uploads, "this database's part");
      assert.ok(s.privacy.epsilon <= 8, `ε ${s.privacy.epsilon} within the budget`);
      assert.equal(s.privacy.syncsLeft, 0);
      assert.equal(a.privacy.epsilonSpent, s.privacy.epsilon);
      assert.equal(a.privacy.thisDatabase.syncs, uploads);
      await e.close();
    }
    // At σ = 1 the budget ε = 8 allows two syncs: for the device, not for each database.
    assert.deepEqual(sent, [2, 0, 0]);
    assert.equal(srv.posts.filter((p) => p === '/v1/updates').length, 2);
  });

  it('two instances syncing at once cannot both spend the last release', async () => {
    const srv = await server();
    const a = await open(dbName('a'), srv);
    const b = await open(dbName('b'), srv);
    for (const e of [a, b]) {
      e.enqueue(history);
      await e.flush();
    }
    assert.equal((await a.sync()).sent, true);
    const both = await Promise.allSettled([a.sync(), b.sync()]);
    assert.equal(both.filter((r) => r.status === 'fulfilled' && r.value.sent).length, 1, 'one of them sent the last release');
    assert.ok(both.some((r) => r.status === 'rejected' && isPrivacyBudgetError(r.reason)), 'the other was refused');
    assert.equal(srv.posts.filter((p) => p === '/v1/updates').length, 2);
    await a.close();
    await b.close();
  });

  it('another server has its own budget; one database syncing with two servers is counted with each', async () => {
    const one = await server();
    const two = await server(2);
    const name = dbName('two-servers');
    const a = await open(name, one);
    a.enqueue(history);
    await a.flush();
    await a.sync();
    await a.sync();
    await assert.rejects(a.sync(), (err) => isPrivacyBudgetError(err));
    await a.close();
    const b = await open(name, two);
    const s = await b.stats();
    assert.equal(s.privacy.syncs, 0, 'nothing spent with the other server');
    assert.equal((await b.sync()).sent, true);
    await b.close();
  });

  it('erase() of one dbName removes its part of the ledger, not the others\' parts; the ledger goes with the last part', async () => {
    const srv = await server();
    const name = dbName('erased');
    const a = await open(name, srv);
    a.enqueue(history);
    await a.flush();
    await a.sync();
    const other = await open(dbName('other'), srv);
    other.enqueue(history);
    await other.flush();
    await other.sync();
    assert.equal((await a.stats()).privacy.syncs, 2);
    await a.erase();
    // Nothing of the erased database's is left on the device, its spend included: it starts anew,
    // as it did when its accountant went with it; the other database's release stays counted.
    const s = await other.stats();
    assert.deepEqual([s.privacy.syncs, s.privacy.thisDatabase.syncs], [1, 1]);
    const again = await open(name, srv);
    const t = await again.stats();
    assert.deepEqual([t.privacy.syncs, t.privacy.thisDatabase.syncs], [1, 0]);
    await again.close();
    await other.erase();
    // The last part gone, so is the ledger: no database of localrec's is left on the origin.
    assert.deepEqual((await indexedDB.databases()).map((d) => d.name).filter((d) => d === PRIVACY_LEDGER_DB || d === name), [name]);
    await (await open(name, srv)).erase();
    assert.deepEqual((await indexedDB.databases()).map((d) => d.name).filter((d) => d === PRIVACY_LEDGER_DB || d === name), []);
    assert.equal(srv.posts.length, 2);
  });

  it('the spend a database stored before the ledger existed counts against every server, for every dbName, until that database is erased', async () => {
    const srv = await server();
    const old = dbName('old-layout');
    // As an earlier release left it: the database's own accountant, two releases at σ = 1.
    const store = await IdbEventStore.open(old);
    const acc = new RdpAccountant();
    acc.record(1);
    acc.record(1);
    await store.setMeta(PRIVACY_KEY, acc.toJSON());
    store.close();
    // Read as spent by the database itself, and moved into the ledger at its start.
    const same = await open(old, srv);
    assert.equal((await same.stats()).privacy.syncs, 2);
    same.enqueue(history);
    await same.flush();
    await assert.rejects(same.sync(), (err) => isPrivacyBudgetError(err));
    // Another instance of the origin counts it too, with any server.
    const other = await open(dbName('new'), srv);
    other.enqueue(history);
    await other.flush();
    assert.equal((await other.stats()).privacy.syncs, 2);
    await assert.rejects(other.sync(), (err) => isPrivacyBudgetError(err));
    assert.deepEqual(srv.posts, []);
    // Erased, its legacy part goes with it.
    await same.erase();
    assert.equal((await other.stats()).privacy.syncs, 0);
    assert.equal((await other.sync()).sent, true);
    await other.erase();
    assert.equal(srv.posts.length, 1);
  });

  it('a reject before consent, and erase() of a store the caller gave, remove the database\'s part as erase() does', async () => {
    const srv = await server();
    const spend = async (name: string, extra: Record<string, unknown> = {}) => {
      const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, fetch: srv.fetch, federated: { serverUrl: srv.url, budget: 8 }, ...extra });
      e.enqueue(history);
      await e.flush();
      assert.equal((await e.sync()).sent, true);
      await e.close();
    };
    const parts = async () => {
      if (!(await indexedDB.databases()).some((d) => d.name === PRIVACY_LEDGER_DB)) return null;
      const db = await openDB(PRIVACY_LEDGER_DB);
      try {
        const all = (await db.getAll('spend')) as Array<{ parts: Record<string, unknown> }>;
        return all.flatMap((r) => Object.keys(r.parts)).sort();
      } finally {
        db.close();
      }
    };
    const noConsent = { consent: { personalization: false, federated: false } };
    // A session started without consent (the banner up), the shopper rejects: the earlier visit's
    // database is deleted, and its part of the ledger with it.
    const a = dbName('reject');
    await spend(a);
    assert.deepEqual(await parts(), [a, a]);
    const rejecting = await Engine.create({ catalog, backend: 'cpu', dbName: a, autoTrainEvery: 0, fetch: srv.fetch, federated: { serverUrl: srv.url }, ...noConsent });
    await rejecting.setConsent({ personalization: false, federated: false });
    await rejecting.close();
    assert.equal(await parts(), null);
    // A store the caller gave, erased before consent.
    const b = dbName('given');
    await spend(b, { store: await IdbEventStore.open(b) });
    assert.deepEqual(await parts(), [b, b]);
    const given = await Engine.create({ catalog, backend: 'cpu', dbName: b, autoTrainEvery: 0, fetch: srv.fetch, federated: { serverUrl: srv.url }, store: await IdbEventStore.open(b), ...noConsent });
    await given.erase();
    assert.equal(await parts(), null);
  });

  it('erase() that cannot remove its part of the ledger (another release\'s layout) rejects saying so, after deleting the database', async () => {
    const srv = await server();
    const name = dbName('newer-ledger');
    const e = await open(name, srv);
    e.enqueue(history);
    await e.flush();
    await e.sync();
    // As a newer release might leave it: another layout at a higher version.
    const db = await openDB(PRIVACY_LEDGER_DB, 2, { upgrade: (d) => void d.deleteObjectStore('spend') });
    db.close();
    await assert.rejects(e.erase(), (err: Error) => err.name === 'StorageError' && err.message === `the part of database "${name}" in the privacy ledger "localrec-privacy" could not be removed (it has no object store "spend" (a newer release's layout?)): the ε it recorded stays counted there; clearing the site's data removes it`);
    const names = (await indexedDB.databases()).map((d) => d.name);
    assert.ok(!names.includes(name), 'the database is deleted all the same');
    assert.ok(names.includes(PRIVACY_LEDGER_DB), 'a ledger it cannot read is left as it is');
  });

  it('one server is one key however its URL is spelled within what URL syntax makes equal', () => {
    const key = serverKey('https://agg.example/x');
    for (const u of ['https://AGG.example:443/x/', 'https://agg.example./x', 'https://agg.example/%78', 'https://agg.example/%78//']) assert.equal(serverKey(u), key, u);
    // An escaped reserved character is another path (decoding it would change the URL).
    assert.notEqual(serverKey('https://agg.example/a%2Fb'), serverKey('https://agg.example/a/b'));
    assert.equal(serverKey('https://agg.example/a%2fb'), 'https://agg.example/a%2Fb');
    assert.equal(serverKey('http://127.0.0.1:8787/'), 'http://127.0.0.1:8787');
  });

  it('a ledger deletion that other code blocks never hangs later erases or uploads: they are refused after a while, and go on once it closes', { timeout: 60_000 }, async () => {
    await recordInLedger('https://agg.example', 'shop-a', undefined, 1, () => undefined);
    // Other code of the site holding the ledger open, never closing on versionchange.
    const foreign = await new Promise<IDBDatabase>((resolve, reject) => {
      const r = indexedDB.open(PRIVACY_LEDGER_DB);
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
    try {
      // Its part removed; the empty ledger's deletion is given up (it stays queued): not a failure.
      await forgetSpend('shop-a');
      // Behind that queued deletion an open gets no event at all: refused after a while, not waited on for ever.
      await assert.rejects(forgetSpend('shop-b'), (e: Error) => e.name === 'StorageError' && /opening the privacy ledger "localrec-privacy" is blocked by another connection/.test(e.message));
      await assert.rejects(recordInLedger('https://agg.example', 'shop-b', undefined, 1, () => undefined), (e: Error) => e.name === 'StorageError');
    } finally {
      foreign.close();
    }
    // Once that connection closes, the deletion goes through and the ledger works again.
    const view = await recordInLedger('https://agg.example', 'shop-b', undefined, 1, () => undefined);
    assert.equal(view.total.releases, 1);
  });

  it('a ledger that cannot be read counts as spent', async () => {
    const srv = await server();
    const e = await open(dbName('damaged-ledger'), srv);
    e.enqueue(history);
    await e.flush();
    await e.sync();
    const db = await openDB(PRIVACY_LEDGER_DB);
    try {
      const key = (await db.getAllKeys('spend')).find((k) => k !== '*')!;
      await db.put('spend', { parts: { x: { orders: 'garbled' } } }, key);
    } finally {
      db.close();
    }
    const s = await e.stats();
    assert.equal(s.privacy.epsilon, Infinity);
    assert.equal(s.privacy.syncsLeft, 0);
    await assert.rejects(e.sync(), (err) => isPrivacyBudgetError(err) && /privacy ledger/.test((err as Error).message));
    assert.equal(srv.posts.length, 1);
    await e.erase();
  });
});

describe('the cached global model and the egress log name their server', () => {
  it('a shop on the same dbName with another server is not sent the first server\'s model hash, and its audit names each request\'s server', async () => {
    const a = await server(1);
    const b = await server(99);
    const name = dbName('shared-db');
    const shopA = await open(name, a);
    shopA.enqueue(history);
    await shopA.flush();
    await shopA.sync();
    await shopA.close();
    const shopB = await open(name, b);
    await shopB.sync({ contribute: false });
    await shopB.sync();
    const modelGets = b.seen.filter((r) => r.url.endsWith('/v1/model'));
    assert.equal(modelGets[0]!.ifNoneMatch, undefined, "shop A's model hash is not sent to shop B's server");
    assert.ok(modelGets[1]!.ifNoneMatch, 'its own is, at its next sync');
    const audit = await shopB.audit();
    const servers = audit.egress.log.map((e) => e.server);
    const key = (u: string) => u.replace(/\/$/, '');
    assert.ok(servers.includes(key(a.url)) && servers.includes(key(b.url)), `each entry names its server: ${servers.join(', ')}`);
    assert.ok(audit.egress.log.filter((e) => e.server === key(a.url)).every((e) => a.seen.some((r) => r.url === key(a.url) + e.endpoint)));
    assert.equal(audit.globalModel?.server, key(b.url));
    // Back on shop A's server: shop B's model is not named to it either.
    const seenBefore = a.seen.length;
    const backToA = await open(name, a);
    await backToA.sync({ contribute: false });
    assert.equal(a.seen.slice(seenBefore).find((r) => r.url.endsWith('/v1/model'))?.ifNoneMatch, undefined);
    await backToA.erase();
    await shopB.close();
  });
});

describe('a catalog switch under one dbName', () => {
  it('a stored model trained on another catalog does not count as trained on this one: its events train again, and stats() says why', async () => {
    const name = dbName('catalog-switch');
    const uk = { items: Array.from({ length: 20 }, (_, i) => ({ id: `uk-${i}`, popularity: 20 - i })) };
    const de = { items: Array.from({ length: 20 }, (_, i) => ({ id: `de-${i}`, popularity: 20 - i })) };
    const base = { backend: 'cpu' as const, dbName: name, autoTrainEvery: 0, model: { dim: 8 } };
    const e1 = await Engine.create({ ...base, catalog: uk });
    e1.enqueue(['uk-5', 'uk-6', 'uk-7'].map((itemId) => ({ type: 'view' as const, itemId })));
    await e1.train({ epochs: 2 });
    await e1.close();
    const e2 = await Engine.create({ ...base, catalog: de });
    const s2 = await e2.stats();
    assert.equal(s2.model.trainSteps, 0);
    assert.equal(s2.model.pendingEvents, 3);
    assert.match(s2.lastError ?? '', /ModelError: the stored model was trained on a catalog that shares few items with this page's \(0 of its 20 item ids are in this catalog of 20\)/);
    e2.enqueue(['de-1', 'de-2', 'de-3'].map((itemId) => ({ type: 'view' as const, itemId })));
    await e2.train({ epochs: 2 });
    await e2.close();
    // Back to the UK catalog: the UK rows are gone with the DE save, so its events train again.
    const e3 = await Engine.create({ ...base, catalog: uk });
    const s3 = await e3.stats();
    assert.equal(s3.model.trainSteps, 0);
    assert.equal(s3.model.pendingEvents, 6);
    assert.ok((await e3.recommend({ k: 3 })).every((r) => r.reason.kind !== 'personal'), 'nothing claims to be personal before it trained again');
    await e3.train({ epochs: 2 });
    assert.ok((await e3.stats()).model.trainSteps > 0);
    await e3.erase();
  });

  // A catalog shrunk to a part, and a season's turnover (9 of 20 items kept, 11 new, as a review
  // measured): neither is taken for another catalog.
  for (const [what, items] of [
    ['shrunk to a part', catalog.items.slice(0, 6)],
    ['a season\'s turnover', [...catalog.items.slice(0, 9), ...Array.from({ length: 11 }, (_, i) => ({ id: `new-${i}`, popularity: 1 }))]],
  ] as const) {
    it(`a catalog ${what} keeps its training`, async () => {
      const base = { backend: 'cpu' as const, dbName: dbName('catalog-kept'), autoTrainEvery: 0, model: { dim: 8 } };
      const e1 = await Engine.create({ ...base, catalog });
      e1.enqueue(history);
      await e1.train({ epochs: 2 });
      const steps = (await e1.stats()).model.trainSteps;
      await e1.close();
      const e2 = await Engine.create({ ...base, catalog: { items: [...items] } });
      const s2 = await e2.stats();
      assert.equal(s2.model.trainSteps, steps);
      assert.equal(s2.lastError, undefined);
      await e2.erase();
    });
  }
});
