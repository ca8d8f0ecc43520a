/**
 * Calibrating σ against the devices' budget: `noiseForSyncs`, `syncsWithinBudget` and the
 * `localrec privacy` command. Both are defined by the accountant `sync()` uses (a fresh device,
 * plain Gaussian releases, exact composition), so they are checked against it and against the
 * closed form of that composition (T releases at σ are one Gaussian release with μ = √T/σ).
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { isValidationError } from '../../src/errors.js';
import { gaussianEpsilon, MAX_COUNTED_SYNCS, noiseForSyncs, RdpAccountant, syncsWithinBudget } from '../../src/federated/dp.js';
import { runPrivacy } from '../../src/federated/privacy-command.js';
import { budgetNote } from '../../src/server/serve-command.js';

/** Whether a fresh device's accountant lets all `t` syncs at σ through, one at a time, as sync() asks. */
function deviceAllows(sigma: number, t: number, budget = 8, delta = 1e-5): boolean {
  const acc = new RdpAccountant();
  for (let i = 0; i < t; i++) {
    if (!acc.canSpend(sigma, budget, delta)) return false;
    acc.record(sigma);
  }
  return true;
}

/** The grid point below σ. */
const down = (sigma: number) => Math.round(sigma * 1e4 - 1) / 1e4;

describe('noiseForSyncs', () => {
  it('is the smallest σ on the 4-decimal grid at which a device makes every one of T syncs', () => {
    for (const [t, budget, delta] of [[1, 8, 1e-5], [2, 8, 1e-5], [3, 8, 1e-5], [4, 8, 1e-5], [6, 8, 1e-5], [9, 8, 1e-5], [40, 8, 1e-5], [3, 1, 1e-6], [5, 4, 1e-5]] as const) {
      const sigma = noiseForSyncs(t, budget, delta);
      assert.ok(Math.abs(Math.round(sigma * 1e4) - sigma * 1e4) < 1e-6 && (String(sigma).split('.')[1] ?? '').length <= 4, `${sigma} is on the grid`);
      assert.ok(deviceAllows(sigma, t, budget, delta), `T = ${t}, ε = ${budget}: σ = ${sigma} lets all syncs through`);
      assert.ok(!deviceAllows(down(sigma), t, budget, delta), `T = ${t}, ε = ${budget}: σ − 0.0001 = ${down(sigma)} refuses the last`);
      // Closed form: T releases at σ are one Gaussian release with μ = √T/σ.
      assert.ok(gaussianEpsilon(Math.sqrt(t) / sigma, delta) <= budget);
      assert.ok(gaussianEpsilon(Math.sqrt(t) / (down(sigma)), delta) > budget);
    }
  });

  it('rounds up where rounding to nearest would lose the last sync (stop 14: 1.0396 spends 8.0003 in three)', () => {
    assert.equal(noiseForSyncs(3, 8), 1.0397);
    const acc = new RdpAccountant();
    acc.record(1.0396, 1, 3);
    assert.ok(acc.epsilon() > 8);
  });

  it('names what is wrong', () => {
    assert.throws(() => noiseForSyncs(0, 8), (e: unknown) => isValidationError(e) && /syncs: must be an integer from 1/.test((e as Error).message));
    assert.throws(() => noiseForSyncs(2.5, 8), /syncs: must be an integer/);
    assert.throws(() => noiseForSyncs(3, Infinity), /budget: must be a finite number > 0, got Infinity/);
    assert.throws(() => noiseForSyncs(3, 8, 0), /delta: must be in \(0, 1\), got 0/);
    assert.throws(() => noiseForSyncs(3, 8, 1e-5, 9), /decimals: must be an integer from 0 to 8/);
  });
});

describe('syncsWithinBudget', () => {
  it('counts the syncs a device makes before it refuses, as the accountant decides', () => {
    for (const sigma of [0.61, 1, 1.0396, 1.0397, 1.2005, 2, 3.7]) {
      const n = syncsWithinBudget(sigma, 8);
      assert.ok(deviceAllows(sigma, n), `σ = ${sigma}: ${n} syncs go through`);
      assert.ok(!deviceAllows(sigma, n + 1), `σ = ${sigma}: sync ${n + 1} is refused`);
    }
    assert.equal(syncsWithinBudget(1, 8), 2, 'σ = 1: ε ≈ 4.38 per sync alone, three would exceed 8');
    assert.equal(syncsWithinBudget(0.5, 8), 0, 'one release at σ = 0.5 is already ε > 8');
    assert.equal(syncsWithinBudget(0, 8), 0);
    assert.equal(syncsWithinBudget(0, Infinity), MAX_COUNTED_SYNCS);
    assert.equal(syncsWithinBudget(1e5, 8), MAX_COUNTED_SYNCS);
    for (let t = 1; t <= 12; t++) assert.ok(syncsWithinBudget(noiseForSyncs(t, 8), 8) >= t);
  });

  it("counts from a device's releases so far, and the accountant keeps the last σ across a save", () => {
    const acc = new RdpAccountant();
    assert.equal(acc.lastNoiseMultiplier, null);
    assert.equal(acc.syncsLeft(8), null);
    acc.record(2);
    acc.record(2);
    assert.equal(acc.lastNoiseMultiplier, 2);
    assert.equal(acc.syncsLeft(8), syncsWithinBudget(2, 8) - 2, 'σ = 2: 11 in all, 2 spent');
    assert.equal(syncsWithinBudget(2, 8, 1e-5, acc), 9);
    const again = new RdpAccountant(JSON.parse(JSON.stringify(acc.toJSON())));
    assert.equal(again.lastNoiseMultiplier, 2);
    assert.equal(again.syncsLeft(8), 9);
    assert.equal(again.syncsLeft(1), 0, 'already past a smaller budget');
    const old = acc.toJSON();
    delete old.lastNoiseMultiplier;
    assert.equal(new RdpAccountant(old).syncsLeft(8), null, 'a state saved before the field existed');
    assert.throws(() => new RdpAccountant({ ...acc.toJSON(), lastNoiseMultiplier: -1 }), /lastNoiseMultiplier must be a finite number ≥ 0 or null, got -1/);
  });

  it('names what is wrong', () => {
    assert.throws(() => syncsWithinBudget(-1, 8), /noiseMultiplier: must be a finite number ≥ 0, got -1/);
    assert.throws(() => syncsWithinBudget(1, 0), /budget: must be a number > 0, got 0/);
    assert.throws(() => syncsWithinBudget(1, 8, 2), /delta: must be in \(0, 1\), got 2/);
  });
});

describe('localrec privacy', () => {
  it('--syncs T gives the smallest σ and the ε those syncs spend', async () => {
    const line = await runPrivacy({ budget: '8', delta: '1e-5', syncs: '4' });
    assert.equal(line.noiseMultiplier, noiseForSyncs(4, 8));
    assert.equal(line.syncs, syncsWithinBudget(line.noiseMultiplier, 8));
    assert.ok(line.syncs >= 4);
    const acc = new RdpAccountant();
    acc.record(line.noiseMultiplier, 1, line.syncs);
    assert.ok(Math.abs(line.epsilon - acc.epsilon()) < 1e-6 && line.epsilon <= 8);
    assert.ok(line.epsilonRdp > line.epsilon, 'the RDP bound is looser than the exact figure');
    assert.ok(Math.abs(line.epsilonPerSync - gaussianEpsilon(1 / line.noiseMultiplier)) < 1e-6);
  });

  it('--noise σ gives the syncs it allows', async () => {
    const line = await runPrivacy({ budget: '8', delta: '1e-5', noise: '1' });
    assert.deepEqual([line.noiseMultiplier, line.syncs], [1, 2]);
    const tight = await runPrivacy({ budget: '4', delta: '1e-6', noise: '2' });
    assert.equal(tight.syncs, syncsWithinBudget(2, 4, 1e-6));
    assert.equal(tight.delta, 1e-6);
  });

  it('asks for exactly one of --syncs and --noise, and names bad values', async () => {
    await assert.rejects(runPrivacy({ budget: '8', delta: '1e-5' }), /--syncs: give exactly one of --syncs <T>/);
    await assert.rejects(runPrivacy({ budget: '1e999', delta: '1e-5', syncs: '4' }), /--budget: must be a finite number > 0, got '1e999'/);
    await assert.rejects(runPrivacy({ budget: '8', delta: '1e-5', syncs: '2', noise: '1' }), /--syncs: give exactly one/);
    await assert.rejects(runPrivacy({ budget: '8', delta: '1e-5', noise: 'abc' }), /--noise: must be a number > 0, got 'abc'/);
    await assert.rejects(runPrivacy({ budget: '8', delta: '1e-5', syncs: '0' }), /--syncs: must be an integer from 1 to 1000000, got '0'/);
    await assert.rejects(runPrivacy({ budget: 'none', delta: '1e-5', syncs: '2' }), /--budget: must be a finite number > 0, got 'none'/);
    await assert.rejects(runPrivacy({ budget: '8', delta: '', syncs: '2' }), /--delta: must be in \(0, 1\), got ''/);
  });
});

describe('localrec serve: the startup line on σ', () => {
  it('says how many syncs the default budget allows, and when it allows none', () => {
    assert.match(budgetNote(1.2005, syncsWithinBudget(1.2005, 8)), /^at σ = 1\.2005 a device can sync 4 times within ε = 8/);
    assert.match(budgetNote(5, 1), /can sync 1 time within/);
    assert.match(budgetNote(0.3, 0), /cannot sync even once within ε = 8 .*; raise --noise/);
    assert.match(budgetNote(0, 0), /σ = 0: updates carry no noise/);
  });
});
