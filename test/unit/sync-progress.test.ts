// sync({ onProgress, signal }) on the worker's engine, against real `localrec serve` instances on
// loopback: the phases a page hears, and what cancelling leaves behind (nothing sent and no ε spent
// before the upload; only the wait cut short after it).
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Engine } from '../../src/engine/engine.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { AbortError, isAbortError } from '../../src/errors.js';
import { secAggKeyPair } from '../../src/federated/secagg.js';
import { createItemTable } from '../../src/model/item-table.js';
import { startServer, type RunningServer } from '../../src/server/index.js';
import type { FetchLike } from '../../src/federated/sync.js';
import type { SyncProgress } from '../../src/types.js';
import '../../src/model/tf.js';

const ids = Array.from({ length: 60 }, (_, i) => `sku-${i}`);
const catalog = { items: ids.map((id, i) => ({ id, title: `Item ${i}`, popularity: 60 - i })) };
const servers: RunningServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

async function server(secureAggregation: false | { minSurvivors: number }, minClients = 3): Promise<RunningServer> {
  const s = await startServer({
    port: 0,
    dataDir: null,
    initialTable: createItemTable(ids, 8, { seed: 1 }),
    minClients,
    clip: 1,
    noiseMultiplier: 1,
    rateLimit: false,
    ...(secureAggregation ? { secureAggregation } : {}),
    log: () => {},
  });
  servers.push(s);
  return s;
}

/** Every request the device makes, as 'METHOD path'. */
function recording(): { fetch: FetchLike; requests: string[] } {
  const requests: string[] = [];
  return {
    requests,
    fetch: (url, init) => {
      requests.push(`${init?.method ?? 'GET'} ${new URL(url).pathname}`);
      return fetch(url, init as RequestInit);
    },
  };
}

async function device(s: RunningServer, seed: number, f?: FetchLike): Promise<Engine> {
  const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store: new MemoryEventStore(), federated: { serverUrl: s.url }, fetch: f });
  e.enqueue(Array.from({ length: 6 }, (_, i) => ({ type: 'view' as const, itemId: ids[(seed * 7 + i * 3) % ids.length]! })));
  await e.flush();
  return e;
}

/** Resolves once `progress` has a report matching `pred`. */
async function until(progress: SyncProgress[], pred: (p: SyncProgress) => boolean): Promise<void> {
  for (let i = 0; i < 500 && !progress.some(pred); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(progress.some(pred), `no such progress report in ${JSON.stringify(progress)}`);
}

/** A device on a secure-aggregation server (cohorts of 3), its sync started and waiting for its cohort to fill. */
async function waitingInCohort(minSurvivors: number, seed: number) {
  const s = await server({ minSurvivors });
  const rec = recording();
  const e = await device(s, seed, rec.fetch);
  const progress: SyncProgress[] = [];
  const ctl = new AbortController();
  const sync = e.sync({ onProgress: (p) => progress.push(p), signal: ctl.signal });
  await until(progress, (p) => p.phase === 'cohort');
  return { s, rec, e, progress, ctl, sync };
}

describe('sync({ onProgress })', () => {
  it('reports config, model, training and upload, in that order, on a plain server', async () => {
    const s = await server(false);
    const e = await device(s, 1);
    const progress: SyncProgress[] = [];
    const r = await e.sync({ onProgress: (p) => progress.push(p) });
    assert.equal(r.sent, true);
    assert.deepEqual(progress.map((p) => p.phase), ['config', 'model', 'training', 'upload']);
    assert.equal(progress.at(-1)!.bytes, r.uploadedBytes);
    await e.close();
  });

  it('under secure aggregation with recovery: the cohort filling member by member, the upload, then the wait for the cohort to end', async () => {
    const s = await server({ minSurvivors: 2 });
    const devices = await Promise.all([1, 2, 3].map((n) => device(s, n)));
    const first: SyncProgress[] = [];
    const a = devices[0]!.sync({ onProgress: (p) => first.push(p) });
    await until(first, (p) => p.phase === 'cohort');
    const rest = devices.slice(1).map((e) => e.sync());
    const results = await Promise.all([a, ...rest]);
    assert.deepEqual(results.map((r) => r.cohortOutcome), ['published', 'published', 'published']);
    const phases = first.map((p) => p.phase).filter((p, i, all) => p !== all[i - 1]);
    assert.deepEqual(phases, ['config', 'model', 'training', 'cohort', 'upload', 'recovery']);
    const cohort = first.filter((p) => p.phase === 'cohort');
    assert.equal(cohort[0]!.joined, 1, 'alone in the cohort at first');
    assert.deepEqual(cohort.at(-1), { phase: 'cohort', joined: 3, size: 3 });
    assert.ok(cohort.every((p, i) => i === 0 || p.joined! >= cohort[i - 1]!.joined!), 'joined never goes down');
    const recovery = first.filter((p) => p.phase === 'recovery');
    // All three uploaded: the cohort still goes through recovery (every self-mask must come off), with no one dropped.
    assert.deepEqual(recovery.at(-1), { phase: 'recovery', submitted: 3, size: 3, dropped: 0 });
    await Promise.all(devices.map((e) => e.close()));
  });

  it('a progress callback that throws does not stop the sync', async () => {
    const s = await server(false);
    const e = await device(s, 2);
    const r = await e.sync({
      onProgress: () => {
        throw new Error('page bug');
      },
    });
    assert.equal(r.sent, true);
    await e.close();
  });
});

describe('sync({ signal })', () => {
  it('an already aborted signal: AbortError, no request at all', async () => {
    const s = await server(false);
    const rec = recording();
    const e = await device(s, 3, rec.fetch);
    await assert.rejects(e.sync({ signal: AbortSignal.abort() }), (err: unknown) => err instanceof AbortError && /before it started/.test((err as Error).message));
    assert.deepEqual(rec.requests, []);
    assert.equal((await e.stats()).privacy.epsilon, 0);
    await e.close();
  });

  it('cancelled while its cohort forms: AbortError for every caller, no update sent, no ε spent, the egress log says so', async () => {
    const { rec, e, progress, ctl, sync: mine } = await waitingInCohort(3, 4);
    const other = e.sync(); // a second caller shares the same sync
    ctl.abort();
    for (const p of [mine, other]) {
      await assert.rejects(p, (err: unknown) => isAbortError(err) && /while cohort [0-9a-f]+ was forming/.test((err as Error).message) && /no update was sent and no ε was spent/.test((err as Error).message));
    }
    assert.ok(rec.requests.includes('POST /v1/secagg/join'));
    assert.ok(rec.requests.some((r) => /^POST \/v1\/secagg\/cohorts\/[0-9a-f]+\/members\/0\/leave$/.test(r)), `it gave its place back: ${rec.requests.join(', ')}`);
    assert.ok(!rec.requests.some((r) => r.startsWith('POST /v1/secagg/updates')), rec.requests.join(', '));
    assert.ok(!progress.some((p) => p.phase === 'upload'));
    assert.equal((await e.stats()).privacy.epsilon, 0);
    assert.ok(!(await e.egressLog()).some((x) => x.kind === 'update'));
    // The engine is usable again: the next sync starts afresh (and is cancelled the same way).
    const again = new AbortController();
    const next = e.sync({ signal: again.signal });
    again.abort();
    await assert.rejects(next, isAbortError);
    await e.close();
  });

  it('cancelled once its cohort is full: it uploads anyway (the other members depend on it), and says so with sent', async () => {
    const s = await server({ minSurvivors: 3 });
    const rec = recording();
    const e = await device(s, 7, rec.fetch);
    const progress: SyncProgress[] = [];
    const ctl = new AbortController();
    const sync = e.sync({
      signal: ctl.signal,
      onProgress: (p) => {
        progress.push(p);
        if (p.phase === 'cohort' && p.joined === p.size) ctl.abort();
      },
    });
    await until(progress, (p) => p.phase === 'cohort');
    for (let i = 0; i < 2; i++) await fetch(`${s.url}/v1/secagg/join`, { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> });
    const r = await sync;
    assert.ok(ctl.signal.aborted);
    assert.equal(r.sent, true);
    assert.equal(rec.requests.filter((x) => x === 'POST /v1/secagg/updates').length, 1);
    assert.ok(!rec.requests.some((x) => x.endsWith('/leave')), 'a full cohort is not left');
    await e.close();
  });

  it('cancelled after its upload: resolves with the ε spent and cohortOutcome left', async () => {
    const { s, rec, e, progress, ctl, sync: mine } = await waitingInCohort(2, 5);
    // Two more members fill the cohort but never upload: the device uploads and then waits.
    for (let i = 0; i < 2; i++) await fetch(`${s.url}/v1/secagg/join`, { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> });
    await until(progress, (p) => p.phase === 'recovery');
    ctl.abort();
    const r = await mine;
    assert.equal(r.sent, true);
    assert.equal(r.cohortOutcome, 'left');
    assert.ok(r.epsilon > 0);
    assert.equal((await e.stats()).privacy.epsilon, r.epsilon, 'the ε of the upload is kept');
    assert.equal(rec.requests.filter((x) => x === 'POST /v1/secagg/updates').length, 1);
    await e.close();
  });
});

describe('close() and erase() during a sync', () => {
  for (const how of ['close', 'erase'] as const) {
    it(`${how}() while the sync waits for its cohort cancels it: AbortError, no update sent`, async () => {
      const { rec, e, sync: pending } = await waitingInCohort(3, 6);
      await e[how]();
      await assert.rejects(pending, isAbortError);
      assert.ok(!rec.requests.some((r) => r.startsWith('POST /v1/secagg/updates')), rec.requests.join(', '));
      const polls = rec.requests.length;
      await new Promise((r) => setTimeout(r, 1_200));
      assert.equal(rec.requests.length, polls, `no request after ${how}()`);
    });
  }
});

describe('withdrawing consent during a sync', () => {
  for (const withdrawn of [{ federated: false }, { personalization: false }]) {
    it(`setConsent(${JSON.stringify(withdrawn)}) while the sync waits for its cohort cancels it: AbortError, no update sent, no ε`, async () => {
      const { rec, e, sync: pending } = await waitingInCohort(3, 7);
      await e.setConsent(withdrawn);
      // setConsent resolves only once the sync has stopped: nothing can be uploaded after it.
      await assert.rejects(pending, isAbortError);
      assert.ok(!rec.requests.some((r) => r.startsWith('POST /v1/secagg/updates')), rec.requests.join(', '));
      assert.ok(rec.requests.some((r) => r.endsWith('/leave')), `the cohort place is given back: ${rec.requests.join(', ')}`);
      assert.equal((await e.stats()).privacy.epsilon, 0);
      await e.close();
    });
  }
});
