/**
 * `--server URL`: the simulation drives a separately started server over loopback HTTP, whose
 * catalog may be ordered differently from the data set (tables are aligned for evaluation).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { alignTo, initialTable, simulate } from '../../src/federated/simulate.js';
import { startServer } from '../../src/server/index.js';
import { BASE, clusteredSplit } from './simulate-helpers.js';

describe('localrec simulate --server URL', () => {
  it('alignTo reorders rows by id and ranks missing items last', () => {
    const split = clusteredSplit(20);
    const t = initialTable(split, 4, 1);
    const rev = { ...t, itemIds: t.itemIds.slice().reverse(), factors: new Float32Array(t.factors.length), bias: t.bias.slice().reverse() };
    const n = t.itemIds.length;
    for (let i = 0; i < n; i++) rev.factors.set(t.factors.subarray(i * 4, i * 4 + 4), (n - 1 - i) * 4);
    const back = alignTo(rev, t.itemIds);
    assert.deepEqual(back.factors, t.factors);
    assert.deepEqual(back.bias, t.bias);
    const partial = alignTo({ ...t, itemIds: t.itemIds.slice(0, 5), factors: t.factors.slice(0, 20), bias: t.bias.slice(0, 5) }, t.itemIds);
    assert.equal(partial.bias[5], -1e9);
  });

  it('runs against a real server on 127.0.0.1 with its catalog in another order', async () => {
    const split = clusteredSplit(40);
    const t = initialTable(split, 8, 1);
    const order = t.itemIds.map((_, i) => i).reverse();
    const served = {
      ...t,
      itemIds: order.map((i) => t.itemIds[i]!),
      factors: Float32Array.from(order.flatMap((i) => Array.from(t.factors.subarray(i * 8, i * 8 + 8)))),
      bias: Float32Array.from(order.map((i) => t.bias[i]!)),
    };
    const server = await startServer({ port: 0, host: '127.0.0.1', dataDir: null, initialTable: served, minClients: 10, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
    try {
      const r = await simulate(split, { ...BASE, server: server.url, rounds: 1, clientsPerRound: 20, noiseMultiplier: 1, budget: 8 });
      assert.equal(r.final.server, server.url);
      assert.equal(r.final.updatesSent, 20);
      assert.equal(r.final.version, 2);
      assert.equal(server.rounds.version, 2);
      // Version 0 served in reverse order scores exactly like the same table in data-set order.
      const local = await simulate(split, { ...BASE, rounds: 1, clientsPerRound: 1, noiseMultiplier: 1, budget: 8, minClients: 10 });
      assert.equal(r.final.initialHr, local.final.initialHr);
    } finally {
      await server.close();
    }
  });
});
