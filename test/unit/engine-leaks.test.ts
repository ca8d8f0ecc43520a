/**
 * A shop page stays open for hours: nothing may grow per call (stop 31, a memory review).
 */
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { after, describe, it } from 'node:test';
import * as tf from '../../src/model/tf.js';
import { CONSENT_MAX, Engine, trimConsent } from '../../src/engine/engine.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { isClosedError } from '../../src/errors.js';
import { createItemTable } from '../../src/model/item-table.js';
import { Scorer } from '../../src/model/score.js';
import { startServer, type RunningServer } from '../../src/server/index.js';

const ids = Array.from({ length: 200 }, (_, i) => `p${i}`);
const catalog = { items: ids.map((id, i) => ({ id, category: `c${i % 40}`, popularity: 300 - i })) };
const servers: RunningServer[] = [];
after(async () => {
  for (const s of servers) await s.close();
});

describe('no growth per call', () => {
  it('recommend({ category }) calls still in flight when close() runs: each ends with a ClosedError or its answer, and no mask tensor is left behind', async () => {
    for (let delay = 0; delay < 4; delay++) {
      const before = tf.memory().numTensors;
      const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName: `leaks-${delay}` });
      e.enqueue([{ type: 'view', itemId: 'p3' }]);
      await e.flush();
      const calls = Array.from({ length: 6 }, (_, i) => e.recommend({ category: `c${i}` }));
      for (let i = 0; i < delay; i++) await Promise.resolve();
      await e.close();
      const settled = await Promise.allSettled(calls);
      for (const r of settled) if (r.status === 'rejected') assert.ok(isClosedError(r.reason), String(r.reason));
      assert.equal(tf.memory().numTensors - before, 0, `delay ${delay}: tensors left`);
    }
  });

  it('a disposed scorer refuses to score before allocating anything', async () => {
    const s = new Scorer(createItemTable(ids, 8, { seed: 1 }));
    s.dispose();
    const before = tf.memory().numTensors;
    await assert.rejects(s.topK(new Float32Array(8), 5, new Set(), { key: 'c1', rows: () => [1, 2, 3] }), isClosedError);
    await assert.rejects(s.similar(3, 5), isClosedError);
    assert.equal(tf.memory().numTensors, before);
  });

  it('sync({ signal }) with one signal kept for the session adds no abort listener per call', async () => {
    const server = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 8, { seed: 1 }), minClients: 100, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
    servers.push(server);
    const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, model: { dim: 8 }, store: new MemoryEventStore(), federated: { serverUrl: server.url, budget: 1000 } });
    e.enqueue(['p1', 'p2', 'p5'].map((itemId) => ({ type: 'view' as const, itemId })));
    await e.flush();
    const page = new AbortController();
    try {
      for (let i = 0; i < 4; i++) {
        // A receiving sync under way makes the contributing one wait on it (the path that listened).
        await Promise.all([e.sync({ contribute: false, signal: page.signal }), e.sync({ signal: page.signal })]);
      }
      assert.equal(getEventListeners(page.signal, 'abort').length, 0);
    } finally {
      await e.close();
    }
  });
});

describe('bounded records', () => {
  it('the consent history keeps at most CONSENT_MAX records, the newest', () => {
    const t0 = 1_800_000_000_000;
    const records = Array.from({ length: CONSENT_MAX + 5 }, (_, i) => ({ t: t0 + i, personalization: true, federated: i % 2 === 0, source: 'setConsent' as const }));
    const kept = trimConsent(records, 0);
    assert.equal(kept.length, CONSENT_MAX);
    assert.equal(kept.at(-1)!.t, t0 + CONSENT_MAX + 4);
    assert.equal(kept[0]!.t, t0 + 5);
  });
});
