/**
 * `--server URL`: the simulation drives a separately started server over loopback HTTP, whose
 * catalog may be ordered differently from the data set (tables are aligned for evaluation).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { alignTo, initialTable, simulate } from '../../src/federated/simulate.js';
import { RdpAccountant } from '../../src/federated/dp.js';
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
      // A trailing slash (as a browser shows a server's address) reaches the same server, not `//v1/…`.
      const slashed = await simulate(split, { ...BASE, server: `${server.url}/`, rounds: 1, clientsPerRound: 10, noiseMultiplier: 1, budget: 8 });
      assert.equal(slashed.final.updatesSent, 10);
      assert.equal(slashed.final.version, 3);
    } finally {
      await server.close();
    }
  });

  it("reports the server's settings, not the options, and runs its cohorts and noise", async () => {
    const split = clusteredSplit(40);
    const t = initialTable(split, 8, 1, 'popularity', 'popularity');
    // Served most popular first, so --train-rows takes the popular rows as `localrec serve` does.
    const server = await startServer({
      port: 0,
      host: '127.0.0.1',
      dataDir: null,
      initialTable: t,
      minClients: 5,
      clip: 0.5,
      noiseMultiplier: 2,
      aggregator: 'subspace',
      subspaceScale: 4,
      trainBiases: false,
      trainRows: 12,
      secureAggregation: true,
      rateLimit: false,
      log: () => {},
    });
    const logged: string[] = [];
    try {
      // The options say FedAvg, no secure aggregation, σ = 1, C = 1, cohorts of 10, every row trained.
      const r = await simulate(split, { ...BASE, server: server.url, rounds: 1, clientsPerRound: 10, noiseMultiplier: 1, budget: 8, log: (m) => logged.push(m) });
      const f = r.final;
      assert.deepEqual(
        [f.clip, f.noiseMultiplier, f.minClients, f.dim, f.trainRows, f.trainBiases, f.aggregator, f.subspaceScale, f.secureAggregation, f.biasScale],
        [0.5, 2, 5, 8, 12, false, 'subspace', 4, true, null],
      );
      assert.equal(f.updatesSent, 10);
      assert.equal(f.version, 2, 'two cohorts of the server size 5, not one of 10');
      const once = new RdpAccountant();
      once.record(2);
      assert.equal(f.epsilonMax, Math.round(once.epsilon(1e-5) * 1e5) / 1e5, "one release at the server's σ = 2");
      const note = logged.find((m) => m.startsWith(`the server at ${server.url} rules this run`));
      assert.ok(note, logged.join('\n'));
      for (const part of ['clip 0.5 (given 1)', 'noiseMultiplier 2 (given 1)', 'minClients 5 (given 10)', 'aggregator subspace (given fedavg)', `trainRows 12 (given ${split.itemIds.length})`, 'cohortSize 5 (given null)']) {
        assert.ok(note.includes(part), `${note} names ${part}`);
      }
    } finally {
      await server.close();
    }
  });
});
