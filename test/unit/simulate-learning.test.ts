/**
 * The simulation runs the real client and server and learns: without noise the global model beats
 * its popularity start and the popular baseline; the scoring is the `localrec eval` model's.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PopularModel } from '../../src/eval/popular-model.js';
import { evaluateModel } from '../../src/eval/runner.js';
import { evaluateTable, simulate, TableModel } from '../../src/federated/simulate.js';
import { maskedUpdateBytes } from '../../src/federated/secagg.js';
import { BASE, clusteredSplit } from './simulate-helpers.js';

describe('localrec simulate: learning', () => {
  it('with σ = 0 the global model improves over rounds and beats popularity', async () => {
    const split = clusteredSplit();
    const lines: unknown[] = [];
    const r = await simulate(split, { ...BASE, rounds: 6, clientsPerRound: 40, noiseMultiplier: 0, budget: Infinity, onLine: (l) => lines.push(l) });
    const pop = await evaluateModel(new PopularModel(), split, { k: 10, data: 'synthetic' });
    assert.equal(r.lines.length, 6, 'one line per round');
    assert.equal(lines.length, 7, 'six rounds and the final line');
    assert.equal(r.final.updatesSent, 6 * 40);
    assert.equal(r.final.version, (6 * 40) / 10, 'one version per minClients updates');
    assert.ok(r.final.hr > r.final.initialHr + 0.2, `HR ${r.final.hr} vs initial ${r.final.initialHr}`);
    assert.ok(r.final.hr > pop.hr + 0.2, `HR ${r.final.hr} vs popular ${pop.hr}`);
    assert.ok(r.final.ndcg > pop.ndcg, `NDCG ${r.final.ndcg} vs popular ${pop.ndcg}`);
    assert.ok(r.lines.at(-1)!.hr > r.lines[0]!.hr || r.lines[0]!.hr > r.final.initialHr, 'quality moves up over rounds');
    assert.equal(r.final.epsilonMax, null, 'σ = 0: ε is unbounded, reported as null');
  });

  it('with secure aggregation (cohorts of minClients, masked uploads) it learns as well, and each sync costs the same ε', async () => {
    const split = clusteredSplit();
    const r = await simulate(split, { ...BASE, rounds: 6, clientsPerRound: 40, noiseMultiplier: 0, budget: Infinity, secureAggregation: true });
    const pop = await evaluateModel(new PopularModel(), split, { k: 10, data: 'synthetic' });
    assert.equal(r.final.updatesSent, 6 * 40);
    assert.equal(r.final.version, (6 * 40) / 10, 'one version per cohort');
    assert.equal(r.final.bytesPerClientPerRound, maskedUpdateBytes(40 * 9, 32), 'a 40 × 8 table travels at 32 bits per value');
    assert.ok(r.final.hr > r.final.initialHr + 0.2, `HR ${r.final.hr} vs initial ${r.final.initialHr}`);
    assert.ok(r.final.hr > pop.hr + 0.2, `HR ${r.final.hr} vs popular ${pop.hr}`);
    // With noise: one masked sync at σ = 1 is one Gaussian release at σ = 1 for the accountant.
    const noisy = await simulate(split, { ...BASE, rounds: 1, clientsPerRound: 20, noiseMultiplier: 1, budget: 8, secureAggregation: true });
    assert.equal(noisy.final.updatesSent, 20);
    assert.ok(Math.abs(noisy.final.epsilonMax! - 4.3772) < 1e-3, `ε ${noisy.final.epsilonMax}`);
    await assert.rejects(simulate(split, { ...BASE, rounds: 1, clientsPerRound: 15, noiseMultiplier: 0, budget: Infinity, secureAggregation: true }), /clientsPerRound: must be a multiple of the server's cohort size \(10\) with secure aggregation, got 15/);
  });

  it('with dropouts: cohorts that lose members within minSurvivors are recovered and still learn; beyond it they are aborted', async () => {
    const split = clusteredSplit();
    // Cohorts of 10, 2 of them drop at upload each time: 8 ≥ minSurvivors 8, so every cohort recovers.
    const r = await simulate(split, { ...BASE, rounds: 6, clientsPerRound: 40, noiseMultiplier: 0, budget: Infinity, secureAggregation: { minSurvivors: 8 }, dropout: 0.2 });
    const pop = await evaluateModel(new PopularModel(), split, { k: 10, data: 'synthetic' });
    assert.deepEqual(r.final.dropouts, { devices: 6 * 4 * 2, cohortsRecovered: 6 * 4, cohortsAborted: 0 });
    assert.equal(r.final.updatesSent, 6 * 40 - 6 * 4 * 2);
    assert.equal(r.final.version, 6 * 4, 'one version per recovered cohort');
    assert.ok(r.final.hr > pop.hr + 0.2, `HR ${r.final.hr} vs popular ${pop.hr}`);
    // Three of ten drop, minSurvivors 8: no cohort can be recovered, nothing is published.
    const lost = await simulate(split, { ...BASE, rounds: 1, clientsPerRound: 20, noiseMultiplier: 0, budget: Infinity, secureAggregation: { minSurvivors: 8 }, dropout: 0.3 });
    assert.deepEqual(lost.final.dropouts, { devices: 6, cohortsRecovered: 0, cohortsAborted: 2 });
    assert.equal(lost.final.version, 0);
    await assert.rejects(simulate(split, { ...BASE, rounds: 1, clientsPerRound: 10, noiseMultiplier: 0, budget: Infinity, dropout: 0.1 }), /dropout: simulates devices that drop out of secure-aggregation cohorts/);
  });

  it('dropouts fall at random places of a cohort, and the devices that dropped out count in the ε figures', async () => {
    const split = clusteredSplit();
    // Cohorts of 10 with 4 mask neighbours each, 3 dropping, 7 needed. The server numbers members
    // in the order they join; dropping the first three (as before) is a run of neighbours on its
    // ring, which recovery always survives. Dropped at random, some cohorts cannot be recovered.
    const r = await simulate(split, { ...BASE, rounds: 1, clientsPerRound: 160, noiseMultiplier: 0, budget: Infinity, secureAggregation: { minSurvivors: 7, degree: 4 }, dropout: 0.3 });
    assert.equal(r.final.dropouts!.devices, 16 * 3);
    assert.equal(r.final.dropouts!.cohortsRecovered + r.final.dropouts!.cohortsAborted, 16);
    assert.ok(r.final.dropouts!.cohortsAborted > 0 && r.final.dropouts!.cohortsRecovered > 0, JSON.stringify(r.final.dropouts));
    // A device that dropped out at upload had already noised its update and spent its ε.
    const noisy = await simulate(split, { ...BASE, rounds: 1, clientsPerRound: 20, noiseMultiplier: 1, budget: 8, secureAggregation: { minSurvivors: 8 }, dropout: 0.2 });
    assert.equal(noisy.final.dropouts!.devices, 4);
    const spent = noisy.accountants.map((a) => a.epsilon(1e-5));
    assert.equal(spent.filter((e) => e > 0).length, 20);
    assert.equal(noisy.final.devicesParticipated, 20, 'the 16 that sent and the 4 that dropped out');
    assert.ok(Math.abs(noisy.final.epsilonMeanAll! - spent.reduce((a, b) => a + b, 0) / split.userIds.length) < 1e-4, `${noisy.final.epsilonMeanAll}`);
    assert.ok(Math.abs(noisy.final.epsilonMean! - 4.3772) < 1e-3, `${noisy.final.epsilonMean}`);
  });

  it('a run that stops early (too few devices left for a cohort) reports the rounds it ran, with a line for the last', async () => {
    const split = clusteredSplit();
    // ε = 8 holds 2 syncs at σ = 1 (a third would bring it to 8.39): round 3 finds no device that
    // can still send. Before, the final line said 6 rounds and no line had been written.
    const r = await simulate(split, { ...BASE, rounds: 6, evalEvery: 5, clientsPerRound: 160, noiseMultiplier: 1, budget: 8, secureAggregation: true });
    assert.equal(r.final.rounds, 2);
    assert.deepEqual(r.lines.map((l) => l.round), [2]);
    assert.equal(r.final.updatesSent, 2 * 160);
  });

  it('scores a table exactly like evaluateModel over the same user-side formula', async () => {
    const split = clusteredSplit(40);
    const r = await simulate(split, { ...BASE, rounds: 1, clientsPerRound: 10, noiseMultiplier: 0, budget: Infinity });
    const direct = await evaluateModel(new TableModel(r.table, { recencyDecay: 0.5, confidence: 'none' }), split, { k: 10, data: '' });
    const via = await evaluateTable(r.table, split, { weighting: { recencyDecay: 0.5, confidence: 'none' } });
    assert.equal(via.hr, direct.hr);
    assert.equal(via.ndcg, direct.ndcg);
    assert.equal(r.final.hr, direct.hr, 'the final line is the full evaluation of the final table');
  });
});
