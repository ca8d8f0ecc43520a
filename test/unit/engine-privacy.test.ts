import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Engine } from '../../src/engine/engine.js';
import { isConsentError } from '../../src/errors.js';
import { storeSignallingReads } from './engine-helpers.js';
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
    const tracked = [
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
    assert.deepEqual(a.storage, { kind: 'indexeddb', database: name, schemaVersion: 2, stores: ['events', 'meta'] });
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
    await e.erase();
    assert.ok(!(await dbNames()).includes(name), 'erase leaves no database');
  });
});
