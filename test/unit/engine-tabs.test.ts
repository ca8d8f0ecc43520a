// Two tabs of the same shop on one device: two engines on the same IndexedDB database (fake-indexeddb),
// each with its own memory, telling each other what they changed over BroadcastChannel, as two
// workers of one origin do in a browser. The privacy budget, an erase and a consent withdrawal in one
// tab must hold in the other.
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Engine, MODEL_KEY } from '../../src/engine/engine.js';
import { IdbEventStore } from '../../src/events/store.js';
import { isPrivacyBudgetError } from '../../src/errors.js';
import { createItemTable } from '../../src/model/item-table.js';
import { encodeNeighborTable } from '../../src/model/neighbors-wire.js';
import { startServer, type RunningServer } from '../../src/server/index.js';
import '../../src/model/tf.js';

const ids = Array.from({ length: 40 }, (_, i) => `sku-${i}`);
const catalog = { items: ids.map((id, i) => ({ id, title: `Item ${i}`, popularity: 40 - i })) };
let n = 0;
const dbName = () => `tabs-test-${n++}`;
const dbNames = async () => (await indexedDB.databases()).map((d) => d.name);
/** Lets the other tab's engine handle what was broadcast (delivery is asynchronous). */
const settle = () => new Promise((r) => setTimeout(r, 50));
const servers: RunningServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

async function tabs(name: string, extra: Record<string, unknown> = {}): Promise<[Engine, Engine]> {
  const open = () => Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, ...extra });
  return [await open(), await open()];
}

describe('two tabs on one device', () => {
  it('share one privacy budget: when only one more sync fits, two tabs syncing at once send one update and record it', async () => {
    // σ = 1: one sync spends ε 4.38, two 6.57; a budget of 5 allows one.
    const s = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 8, { seed: 1 }), minClients: 100, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
    servers.push(s);
    const posts: string[] = [];
    const fetch = (url: string, init?: RequestInit) => {
      if (init?.method === 'POST') posts.push(new URL(url).pathname);
      return globalThis.fetch(url, init);
    };
    const name = dbName();
    const [a, b] = await tabs(name, { federated: { serverUrl: s.url, budget: 5 }, fetch });
    a.enqueue(ids.slice(0, 6).map((itemId) => ({ type: 'view' as const, itemId })));
    await a.flush();
    await settle();
    const results = await Promise.allSettled([a.sync(), b.sync()]);
    const sent = results.filter((r) => r.status === 'fulfilled' && r.value.sent);
    const refused = results.filter((r) => r.status === 'rejected' && isPrivacyBudgetError(r.reason));
    assert.equal(sent.length, 1, JSON.stringify(results.map((r) => r.status)));
    assert.equal(refused.length, 1);
    assert.deepEqual(posts, ['/v1/updates'], 'one update left the device');
    const stored = await a.stats();
    assert.equal(stored.privacy.syncs, 1, 'the one release is recorded');
    assert.ok(Math.abs(stored.privacy.epsilon - 4.377) < 0.01, String(stored.privacy.epsilon));
    assert.equal((await b.stats()).privacy.syncs, 1);
    // Both tabs' requests are in the one egress log (appends are transactions, none lost).
    assert.equal((await a.egressLog()).filter((e) => e.kind === 'update').length, 1);
    await a.close();
    await b.close();
  });

  it('tell their page every consent change they apply, another tab\'s too, numbered so the latest wins', async () => {
    const heard: Array<[string, boolean, number]> = [];
    const name = dbName();
    const open = (tab: string) => Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, onConsent: (p, v) => heard.push([tab, p, v]) });
    const [a, b] = [await open('a'), await open('b')];
    await a.setConsent({ personalization: false });
    await settle();
    assert.deepEqual(heard, [['a', false, 1], ['b', false, 1]], 'the withdrawal in a reached b, and both told their page');
    assert.deepEqual(b.consentState(), { personalization: false, version: 1 });
    await b.setConsent({ personalization: true });
    await settle();
    assert.deepEqual(heard.slice(2), [['b', true, 2], ['a', true, 2]]);
    assert.deepEqual(a.consentState(), { personalization: true, version: 2 });
    await a.close();
    await b.erase();
  });

  it('two tabs changing consent at the same moment end in the same state: the later request wins', async () => {
    for (let round = 0; round < 6; round++) {
      let clock = Date.UTC(2026, 0, 1);
      const name = dbName();
      const [a, b] = await tabs(name, { now: () => clock });
      // a asks first, b a moment later, for the opposite; both run at once. (Federated consent:
      // a personalization withdrawal also erases the database under the other tab's grant.)
      const want = round % 2 === 0;
      const first = a.setConsent({ federated: !want });
      clock += 1000;
      const second = b.setConsent({ federated: want });
      await Promise.all([first, second]);
      await settle();
      await settle();
      const federated = async (e: Engine) => (await e.audit()).consent.current.federated;
      assert.deepEqual([await federated(a), await federated(b)], [want, want], `round ${round}: b's later request holds in both tabs`);
      await a.close();
      await b.erase();
    }
  });

  it('two tabs asking for opposite consent in the same millisecond end in the same state, and a later request holds in both (stop 39)', async () => {
    // Each applying the other's request (neither earlier) swapped them, and they stayed apart.
    for (let round = 0; round < 6; round++) {
      const clock = Date.UTC(2026, 0, 1);
      const name = dbName();
      const [a, b] = await tabs(name, { now: () => clock });
      const want = round % 2 === 0;
      await Promise.all([a.setConsent({ federated: !want }), b.setConsent({ federated: want })]);
      await settle();
      await settle();
      const federated = async (e: Engine) => (await e.audit()).consent.current.federated;
      const [fa, fb] = [await federated(a), await federated(b)];
      assert.equal(fa, fb, `round ${round}: a ${fa}, b ${fb}`);
      // A later request in either tab holds in both, though the clock stands still: it is stamped
      // after the one it follows.
      await (round % 3 === 0 ? b : a).setConsent({ federated: !fa });
      await settle();
      assert.deepEqual([await federated(a), await federated(b)], [!fa, !fa], `round ${round}: the later request`);
      await a.close();
      await b.erase();
    }
  });

  it('a change of federated learning asked for in a tab that had not heard of a withdrawal of personalization does not bring personalization back (stop 39)', async () => {
    for (const grantFirst of [false, true]) {
      let clock = Date.UTC(2026, 0, 1);
      const name = dbName();
      const [a, b] = await tabs(name, { now: () => clock });
      b.enqueue([{ type: 'view', itemId: 'sku-1' }]);
      await b.flush();
      // Both asked before either heard of the other: a withdraws personalization, b (later) changes
      // federated learning alone.
      const first = a.setConsent({ personalization: false });
      clock += 1000;
      const second = b.setConsent({ federated: false });
      await Promise.allSettled([first, second]);
      await settle();
      await settle();
      const current = async (e: Engine) => (await e.audit()).consent.current;
      assert.deepEqual(await current(a), { personalization: false, federated: false }, `a (${grantFirst})`);
      assert.deepEqual(await current(b), { personalization: false, federated: false }, `b (${grantFirst})`);
      b.enqueue([{ type: 'view', itemId: 'sku-2' }]);
      await b.flush();
      assert.equal((await b.stats()).events.total, 0, 'nothing stored after the withdrawal');
      assert.ok(!(await dbNames()).includes(name), 'the database stays deleted');
      // A later grant in either tab holds in both.
      clock += 1000;
      await (grantFirst ? a : b).setConsent({ personalization: true });
      await settle();
      assert.deepEqual([(await current(a)).personalization, (await current(b)).personalization], [true, true]);
      await a.close();
      await b.erase();
    }
  });

  it("another tab's change of one choice, come while this tab's own change of the other waits its turn, does not undo it (stop 39)", async () => {
    let clock = Date.UTC(2026, 0, 1);
    const name = dbName();
    const open = (extra: Record<string, unknown> = {}) => Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, now: () => clock, ...extra });
    const a = await open();
    const b = await open({ consent: { personalization: false, federated: false } });
    // b: a grant (opening the database takes a while) and, queued behind it, a withdrawal; a
    // later change of federated learning in a arrives meanwhile.
    const grant = b.setConsent({ personalization: true, federated: true });
    const withdrawal = b.setConsent({ personalization: false });
    clock += 1000;
    await a.setConsent({ federated: false });
    await Promise.allSettled([grant, withdrawal]);
    await settle();
    await settle();
    const current = async (e: Engine) => (await e.audit()).consent.current;
    assert.deepEqual(await current(b), { personalization: false, federated: false }, 'b: its own withdrawal stands, and a\'s later change of federated learning');
    assert.deepEqual(await current(a), { personalization: false, federated: false }, 'a follows the withdrawal');
    await a.close();
    await b.close();
  });

  it('a consent message whose time is not a finite number, or whose value is not a boolean, changes nothing (stop 39)', async () => {
    const name = dbName();
    const [a, b] = await tabs(name);
    const channel = new BroadcastChannel(`localrec:${name}`);
    try {
      const forged = [
        { type: 'consent', personalization: false, federated: false, choices: { personalization: { value: false, at: Infinity, from: 'z' }, federated: { value: 'no', at: Date.now() + 1e6, from: 'z' } } },
        { type: 'consent', personalization: false, federated: false, at: Infinity },
        { type: 'consent', personalization: false, federated: false, at: Number.NaN },
      ];
      for (const m of forged) channel.postMessage(m);
      await settle();
      await settle();
      for (const e of [a, b]) assert.deepEqual((await e.audit()).consent.current, { personalization: true, federated: true });
      // And a request made now still holds in both tabs (no forged stamp "later" than every request).
      await a.setConsent({ federated: false });
      await settle();
      assert.deepEqual((await b.audit()).consent.current, { personalization: true, federated: false });
    } finally {
      channel.close();
      await a.close();
      await b.erase();
    }
  });

  it('see each other’s events at once', async () => {
    const [a, b] = await tabs(dbName());
    assert.ok((await b.recommend({ k: 40, exclude: 'purchased' })).some((r) => r.itemId === 'sku-3'));
    a.enqueue([{ type: 'purchase', itemId: 'sku-3' }]);
    await a.flush();
    await settle();
    assert.ok(!(await b.recommend({ k: 40, exclude: 'purchased' })).some((r) => r.itemId === 'sku-3'), 'tab B knows what tab A stored');
    await a.erase();
    await b.close();
  });

  it('build on each other’s training instead of overwriting it', async () => {
    const name = dbName();
    const [a, b] = await tabs(name);
    a.enqueue(['sku-1', 'sku-2', 'sku-5', 'sku-9'].map((itemId) => ({ type: 'view' as const, itemId })));
    await a.flush();
    const ta = await a.train({ epochs: 2 });
    await settle();
    const tb = await b.train({ epochs: 2 });
    const probe = await IdbEventStore.open(name);
    const stored = await probe.getMeta<{ trainSteps: number; rev: number }>(MODEL_KEY);
    probe.close();
    assert.equal(stored!.trainSteps, ta.steps + tb.steps, 'B trained from A’s saved weights');
    assert.equal(stored!.rev, 2);
    await a.erase();
    await b.close();
  });

  it('a tab that missed the news does not write older weights over newer ones: it reloads them', async () => {
    const name = dbName();
    const [a, b] = await tabs(name);
    // B hears nothing from A (as if A's message had not arrived yet when B saves).
    (b as unknown as { channel: BroadcastChannel }).channel.onmessage = null;
    a.enqueue(['sku-1', 'sku-2', 'sku-5'].map((itemId) => ({ type: 'view' as const, itemId })));
    await a.flush();
    const ta = await a.train({ epochs: 2 });
    await b.train({ epochs: 1 });
    const probe = await IdbEventStore.open(name);
    const stored = await probe.getMeta<{ trainSteps: number; rev: number }>(MODEL_KEY);
    probe.close();
    assert.equal(stored!.trainSteps, ta.steps, 'A’s weights are still the ones stored');
    assert.equal(stored!.rev, 1);
    assert.equal((await b.stats()).model.trainSteps, ta.steps, 'B reloaded them');
    await a.erase();
    await b.close();
  });

  it('an erase in one tab: the other drops what it held, writes nothing back, and sends nothing learned from it', async () => {
    const name = dbName();
    const [a, b] = await tabs(name);
    a.enqueue(['sku-1', 'sku-2', 'sku-5'].map((itemId) => ({ type: 'purchase' as const, itemId })));
    await a.flush();
    await b.train({ epochs: 1 });
    assert.equal((await b.stats()).events.total, 3);
    await a.erase();
    await settle();
    assert.ok(!(await dbNames()).includes(name), 'the database is gone');
    const s = await b.stats();
    assert.equal(s.events.total, 0);
    assert.equal(s.model.trainSteps, 0, 'the weights learned from the erased events are gone too');
    assert.ok((await b.recommend({ k: 40, exclude: 'purchased' })).some((r) => r.itemId === 'sku-1'), 'nothing is remembered as bought');
    assert.ok(!(await dbNames()).includes(name), 'reading does not bring the database back');
    // The shopper goes on in tab B: a new, empty database from its next event on.
    b.enqueue([{ type: 'view', itemId: 'sku-7' }]);
    await b.flush();
    assert.equal((await b.stats()).events.total, 1);
    await b.erase();
  });

  it('an event tracked in the other tab right after an erase resolved, before its message came, is kept; those tracked before it go (stop 32)', async () => {
    const name = dbName();
    const [a, b] = await tabs(name);
    // Queued in tab B (written 25 ms later) when the erase begins, stamped by a page whose server's
    // clock is ahead: taken before the erase all the same.
    b.enqueue([{ type: 'view', itemId: 'sku-1', t: Date.now() + 60_000 }]);
    await a.erase();
    await new Promise((r) => setImmediate(r));
    // Tab B's page goes on at once (the erased message has not reached its worker yet).
    b.enqueue([{ type: 'view', itemId: 'sku-7' }]);
    await settle();
    await b.flush();
    const events = (await b.exportData()).events.map((e) => e.itemId);
    assert.deepEqual(events, ['sku-7'], 'the later event is stored anew; the earlier one went with the erase');
    await b.erase();
    await a.close();
  });

  it('consent withdrawn in one tab: the other stops storing too, and nothing comes back', async () => {
    const name = dbName();
    const [a, b] = await tabs(name);
    a.enqueue([{ type: 'view', itemId: 'sku-1' }]);
    await a.flush();
    await a.setConsent({ personalization: false });
    await settle();
    assert.equal(b.enqueue([{ type: 'view', itemId: 'sku-2' }]), 0, 'tab B drops events now');
    await b.flush();
    assert.ok(!(await dbNames()).includes(name));
    const audit = await b.audit();
    assert.equal(audit.storage.kind, 'memory');
    assert.deepEqual(audit.consent.current, { personalization: false, federated: true });
    assert.equal(audit.consent.history.at(-1)!.source, 'another-tab');
    // Granted again in tab B: tab A follows.
    await b.setConsent({ personalization: true });
    await settle();
    a.enqueue([{ type: 'view', itemId: 'sku-3' }]);
    await a.flush();
    assert.equal((await b.stats()).events.total, 1);
    await a.close();
    await b.erase();
  });
  it('a tab still starting follows a consent change another tab made after its host read the answer (stop 32)', async () => {
    const name = dbName();
    const granted = { personalization: true, federated: true };
    const open = (extra: Record<string, unknown>) => Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, consent: granted, ...extra });
    const a = await open({});
    a.enqueue([{ type: 'view', itemId: 'sku-1' }]);
    await a.flush();
    // Tab B's page read the host's answer (granted) a moment ago; its worker is still loading when
    // the shopper withdraws in tab A.
    const askedAt = Date.now() - 500;
    await a.setConsent({ personalization: false });
    const b = await open({ consentAsOf: askedAt });
    // (The answer to its hello, then the deletion of the database it opened meanwhile, take a moment.)
    for (let i = 0; i < 40 && ((await b.audit()).consent.current.personalization || (await dbNames()).includes(name)); i++) await settle();
    assert.deepEqual((await b.audit()).consent.current, { personalization: false, federated: true }, 'the withdrawal reached tab B');
    assert.ok(!(await dbNames()).includes(name), 'the database it opened meanwhile is deleted again');
    assert.equal(b.enqueue([{ type: 'view', itemId: 'sku-2' }]), 0, 'tab B stores nothing');
    await b.flush();
    assert.ok(!(await dbNames()).includes(name), 'and opens none');
    await b.close();
    // A tab whose host read its answer after that change keeps the host's answer (the later one).
    const c = await open({ consentAsOf: Date.now() + 1000 });
    await settle();
    await settle();
    assert.deepEqual((await c.audit()).consent.current, granted, "the host's newer answer stands");
    await c.erase();
    await a.close();
  });

  it('a tab starting does not change the consent of the tabs already running: the answers to its hello are its own (stop 32)', async () => {
    const name = dbName();
    const [a] = await tabs(name);
    await a.setConsent({ personalization: false }); // the shopper withdrew in tab A
    // Tab C: its host read "granted" after that (its own, later answer); tab D: no host answer.
    const c = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, consent: { personalization: true, federated: true }, consentAsOf: Date.now() + 1000 });
    const d = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 } });
    for (let i = 0; i < 40 && (await d.audit()).consent.current.personalization; i++) await settle();
    await settle();
    assert.deepEqual((await a.audit()).consent.current, { personalization: false, federated: true }, 'tab A keeps its withdrawal');
    assert.equal(a.enqueue([{ type: 'view', itemId: 'sku-1' }]), 0);
    assert.deepEqual((await d.audit()).consent.current, { personalization: false, federated: true }, 'tab D follows the shopper’s decision');
    assert.deepEqual((await c.audit()).consent.current, { personalization: true, federated: true }, "tab C keeps its host's later answer");
    // And a 'required' start (both off until the shopper answers) is no decision to pass on.
    const b = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, consent: { personalization: false, federated: false } });
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 } });
    await settle();
    await settle();
    assert.deepEqual((await c.audit()).consent.current, { personalization: true, federated: true }, 'tab C unchanged');
    assert.deepEqual((await e.audit()).consent.current, { personalization: false, federated: true }, "tab E follows tab A's decision, not tab B's question");
    for (const x of [b, c, d, e]) await x.close();
    await a.close();
  });

  it('with no answer from its host, a starting tab follows the withdrawal a live tab made earlier (stop 32)', async () => {
    const name = dbName();
    const [a] = await tabs(name);
    a.enqueue([{ type: 'view', itemId: 'sku-1' }]);
    await a.flush();
    await a.setConsent({ personalization: false }); // remembered only in memory: the database is deleted
    const b = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 } });
    for (let i = 0; i < 40 && ((await b.audit()).consent.current.personalization || (await dbNames()).includes(name)); i++) await settle();
    assert.deepEqual((await b.audit()).consent.current, { personalization: false, federated: true });
    assert.equal(b.enqueue([{ type: 'view', itemId: 'sku-2' }]), 0);
    assert.ok(!(await dbNames()).includes(name));
    await b.close();
    await a.close();
  });

  it('a tab starting while a live tab holds a withdrawal of personalization does not fetch the neighbour file (privacy review, stop 33)', async () => {
    const name = dbName();
    const file = encodeNeighborTable({ itemIds: ['sku-1', 'sku-2'], width: 1, index: Int32Array.of(1, 0), weight: Float32Array.of(0.5, 0.2) });
    const gets: string[] = [];
    const fetchAs = (tab: string) => (async (url: string) => (gets.push(`${tab} ${url}`), new Response(file as Uint8Array<ArrayBuffer>))) as never;
    const neighbors = { url: 'https://cdn.example/n.lrn' };
    const a = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, neighbors, fetch: fetchAs('A') });
    await a.recommend();
    await a.setConsent({ personalization: false });
    const b = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, neighbors, fetch: fetchAs('B') });
    assert.deepEqual((await b.audit()).consent.current, { personalization: false, federated: true }, 'applied before create() resolved');
    await b.recommend();
    await settle();
    assert.deepEqual(gets, ['A https://cdn.example/n.lrn'], 'B sent nothing');
    await b.close();
    await a.close();
  });

  it('on memory because IndexedDB refused to open (private mode): another tab\'s erase drops this tab\'s own copy of the history too', async () => {
    const g = globalThis as { indexedDB: IDBFactory };
    const real = g.indexedDB;
    const name = dbName();
    // Each tab's open() refused: each runs on a memory store of its own.
    g.indexedDB = { open() { throw new DOMException('The operation is insecure.', 'SecurityError'); } } as unknown as IDBFactory;
    let a: Engine, b: Engine;
    try {
      [a, b] = await tabs(name);
    } finally {
      g.indexedDB = real;
    }
    for (const [tab, itemId] of [[a, 'sku-1'], [b, 'sku-2']] as const) {
      tab.enqueue([{ type: 'purchase', itemId }]);
      await tab.flush();
    }
    await b.train({ epochs: 1 });
    const before = await b.stats();
    assert.deepEqual([before.storage, before.events.total], ['memory', 1]);
    await a.erase();
    await settle();
    const s = await b.stats();
    assert.equal(s.events.total, 0, 'the shopper erased their data: this tab\'s events go too');
    assert.equal(s.model.trainSteps, 0);
    assert.ok((await b.recommend({ k: 40, exclude: 'purchased' })).some((r) => r.itemId === 'sku-2'), 'nothing is remembered as bought');
    await b.close();
  });

  it('engines in a process without IndexedDB are separate devices: one\'s consent change or erase does not reach another', async () => {
    const g = globalThis as { indexedDB?: IDBFactory };
    const real = g.indexedDB;
    g.indexedDB = undefined;
    try {
      const open = () => Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 } });
      const [a, b] = [await open(), await open()];
      b.enqueue([{ type: 'view', itemId: 'sku-1' }, { type: 'purchase', itemId: 'sku-2' }]);
      await b.flush();
      await b.train({ epochs: 1 });
      await a.setConsent({ personalization: false });
      await settle();
      assert.deepEqual(b.consentState(), { personalization: true, version: 0 }, 'b keeps its own consent');
      assert.equal(b.enqueue([{ type: 'view', itemId: 'sku-3' }]), 1);
      await b.flush();
      await a.erase();
      await settle();
      const s = await b.stats();
      assert.deepEqual([s.storage, s.events.total], ['memory', 3], 'b keeps its events');
      assert.ok(s.model.trainSteps > 0, 'and its weights');
      await b.close();
    } finally {
      g.indexedDB = real;
    }
  });

  it('a browser worker without IndexedDB (switched off) is still one shopper\'s tabs: they follow each other\'s withdrawal', async () => {
    const g = globalThis as { indexedDB?: IDBFactory; WorkerGlobalScope?: unknown };
    const real = g.indexedDB;
    g.indexedDB = undefined;
    g.WorkerGlobalScope = class {};
    try {
      const name = dbName();
      const open = () => Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, dbName: name });
      const [a, b] = [await open(), await open()];
      b.enqueue([{ type: 'view', itemId: 'sku-1' }]);
      await b.flush();
      await a.setConsent({ personalization: false });
      await settle();
      assert.equal(b.consentState().personalization, false, 'b follows a');
      assert.equal((await b.stats()).events.total, 0, 'and its events are gone');
      await a.close();
      await b.close();
    } finally {
      g.indexedDB = real;
      delete g.WorkerGlobalScope;
    }
  });

  it('keep both tabs\' consent records: the other tab writing its own history does not overwrite the shopper\'s choice', async () => {
    const name = dbName();
    const [a, b] = await tabs(name);
    a.enqueue([{ type: 'view', itemId: ids[0]! }]);
    await a.flush();
    await a.setConsent({ federated: false });
    await settle();
    // Tab b applied it ('another-tab') and writes its history with its next events.
    b.enqueue([{ type: 'view', itemId: ids[1]! }]);
    await b.flush();
    await a.close();
    await b.close();
    const c = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, consent: { personalization: true, federated: false } });
    const history = (await c.audit()).consent.history;
    assert.ok(history.some((r) => r.source === 'setConsent' && r.federated === false), JSON.stringify(history));
    assert.ok(history.some((r) => r.source === 'another-tab' && r.federated === false));
    assert.deepEqual(history.map((r) => r.t), history.map((r) => r.t).sort((x, y) => x - y), 'in time order');
    await c.erase();
  });
});
