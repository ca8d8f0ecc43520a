/**
 * The ε figures the simulation prints are the per-device accountants' figures, and a device past its
 * budget sends nothing and is counted as skipped, exactly when one more release would exceed it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RdpAccountant } from '../../src/federated/dp.js';
import { simulate } from '../../src/federated/simulate.js';
import { BASE, clusteredSplit } from './simulate-helpers.js';

const epsAfter = (sigma: number, releases: number) => {
  const a = new RdpAccountant();
  for (let i = 0; i < releases; i++) a.record(sigma);
  return a.epsilon(1e-5);
};
const r5 = (x: number) => Math.round(x * 1e5) / 1e5;

describe('localrec simulate: privacy accounting', () => {
  it('σ = 1, budget 8: every device sends twice, the third sync is refused and counted', async () => {
    const split = clusteredSplit(40);
    // Sanity of the premise: two releases fit ε = 8, three do not.
    assert.ok(epsAfter(1, 2) <= 8 && epsAfter(1, 3) > 8);
    const r = await simulate(split, { ...BASE, rounds: 3, clientsPerRound: 40, noiseMultiplier: 1, budget: 8 });
    assert.deepEqual(
      r.lines.map((l) => [l.updatesSent, l.clientsSkippedForBudget]),
      [
        [40, 0],
        [40, 0],
        [0, 40],
      ],
    );
    assert.equal(r.lines[0]!.epsilonMax, r5(epsAfter(1, 1)));
    assert.equal(r.lines[1]!.epsilonMax, r5(epsAfter(1, 2)));
    assert.equal(r.lines[2]!.epsilonMax, r5(epsAfter(1, 2)), 'a refused sync spends nothing');
    assert.equal(r.final.epsilonMean, r5(epsAfter(1, 2)));
    assert.equal(r.final.clientsSkippedForBudget, 40);
    assert.equal(r.final.updatesSent, 80);
    assert.equal(r.final.devicesParticipated, 40);
    for (const a of r.accountants) {
      assert.equal(a.releases, 2);
      assert.equal(a.epsilon(), epsAfter(1, 2));
    }
    assert.ok(r.final.epsilonMax! <= 8);
  });

  it('a partly sampled population: the mean over participants and over everyone follow the accountants', async () => {
    const split = clusteredSplit(40);
    const r = await simulate(split, { ...BASE, rounds: 2, clientsPerRound: 10, noiseMultiplier: 2, budget: 8 });
    const spent = r.accountants.map((a) => a.epsilon());
    const part = spent.filter((e) => e > 0);
    assert.equal(r.final.devicesParticipated, part.length);
    assert.equal(r.final.epsilonMax, r5(Math.max(...spent)));
    assert.equal(r.final.epsilonMean, r5(part.reduce((s, e) => s + e, 0) / part.length));
    assert.equal(r.final.epsilonMeanAll, r5(spent.reduce((s, e) => s + e, 0) / spent.length));
    assert.equal(r.final.updatesSent, r.accountants.reduce((s, a) => s + a.releases, 0));
    assert.equal(r.final.clientsSkippedForBudget, 0, 'σ = 2 allows many releases under ε = 8');
  });

  it('budget 5 at σ = 1 allows exactly one release per device', async () => {
    const split = clusteredSplit(20);
    const r = await simulate(split, { ...BASE, rounds: 2, clientsPerRound: 20, noiseMultiplier: 1, budget: 5 });
    assert.deepEqual(
      r.lines.map((l) => [l.updatesSent, l.clientsSkippedForBudget]),
      [
        [20, 0],
        [0, 20],
      ],
    );
    assert.equal(r.final.epsilonMax, r5(epsAfter(1, 1)));
  });
});
