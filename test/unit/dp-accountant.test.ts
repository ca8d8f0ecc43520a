/**
 * Accountant figures. Non-subsampled Gaussian: RDP(α) = T·α/(2σ²); ε = min over the Opacus order grid
 * (1.1…10.9 step 0.1, 12…63) of RDP(α) + log(1 − 1/α) − (log δ + log α)/(α − 1) (Balle et al. 2020,
 * as in Opacus `get_privacy_spent` and TF Privacy `RdpAccountant`). Derived by hand (numpy, same
 * formula), δ = 1e-5:
 *   σ = 1,   T = 1  → ε = 4.7285 (α = 5.4)
 *   σ = 0.5, T = 1  → ε = 10.7255 (α = 3.3)   — DESIGN.md quotes "ε ≈ 10.7" for this release
 *   σ = 2,   T = 1  → ε = 2.1657 (α = 9.6)
 *   σ = 1,   T = 10 → ε = 19.0536 (α = 2.5)
 *   σ = 4,   T = 50 → ε = 9.2350 (α = 3.6)
 *   classic conversion (ε = RDP − log δ/(α − 1)), σ = 1, T = 1 → ε = 5.2985
 * Published, subsampled: N = 60,000, batch 256 (q = 256/60000), σ = 1.12, 60 epochs (14,063 steps),
 * δ = 1e-5, classic conversion:
 *   TF Privacy compute_dp_sgd_privacy docstring: "satisfies (2.92, 1e-5)-DP" (integer orders 2…63, 128, 256, 512)
 *   Opacus compute_dp_sgd_privacy docstring, alphas 10 20 100: "(2.95, 1e-5)"
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { DEFAULT_ORDERS, gaussianDelta, gaussianEpsilon, logNormalCdf, RdpAccountant, rdpGaussian, rdpToEpsilon } from '../../src/federated/dp.js';
import { PrivacyBudgetError } from '../../src/errors.js';

const OPACUS_ORDERS = [...Array.from({ length: 99 }, (_, i) => 1 + (i + 1) / 10), ...Array.from({ length: 52 }, (_, i) => 12 + i)];
const within1pct = (actual: number, expected: number) =>
  assert.ok(Math.abs(actual - expected) <= 0.01 * expected, `ε = ${actual}, expected ${expected} ± 1%`);

test('plain Gaussian mechanism: ε matches the hand-derived figures within 1%', () => {
  const cases: Array<[sigma: number, T: number, eps: number]> = [
    [1, 1, 4.7285],
    [0.5, 1, 10.7255],
    [2, 1, 2.1657],
    [1, 10, 19.0536],
    [4, 50, 9.235],
  ];
  for (const [sigma, T, eps] of cases) {
    const rdp = OPACUS_ORDERS.map((a) => T * rdpGaussian(sigma, a));
    within1pct(rdpToEpsilon(OPACUS_ORDERS, rdp, 1e-5).epsilon, eps);
    const acc = new RdpAccountant();
    for (let i = 0; i < T; i++) acc.record(sigma);
    const bound = acc.epsilon(1e-5, 'improved');
    within1pct(bound, eps); // the default grid is a superset: never worse, within 1%
    assert.ok(bound <= eps * 1.0001); // figures above are rounded to 4 decimals
    assert.ok(acc.epsilon() < bound, 'plain Gaussian releases: the exact composition is below the RDP bound');
  }
  within1pct(rdpToEpsilon(OPACUS_ORDERS, OPACUS_ORDERS.map((a) => a / 2), 1e-5, 'classic').epsilon, 5.2985);
});

test('subsampled Gaussian: TF Privacy (2.92) and Opacus (2.95) published DP-SGD figures within 1%', () => {
  const q = 256 / 60000;
  const steps = Math.ceil((60 * 60000) / 256);
  const tfOrders = [2, 3, 4, ...Array.from({ length: 59 }, (_, i) => 5 + i), 128, 256, 512];
  within1pct(rdpToEpsilon(tfOrders, tfOrders.map((a) => steps * rdpGaussian(1.12, a, q)), 1e-5, 'classic').epsilon, 2.92);
  const opacusAlphas = [10, 20, 100];
  within1pct(rdpToEpsilon(opacusAlphas, opacusAlphas.map((a) => steps * rdpGaussian(1.12, a, q)), 1e-5, 'classic').epsilon, 2.95);
  // The accountant composes the same way.
  const acc = new RdpAccountant({ orders: tfOrders, rdp: tfOrders.map(() => 0), releases: 0 });
  acc.record(1.12, q, steps);
  within1pct(acc.epsilon(1e-5, 'classic'), 2.92);
});

test('subsampling with q = 1 equals the plain mechanism, and RDP grows as q grows', () => {
  assert.equal(rdpGaussian(1.3, 7, 1), 7 / (2 * 1.3 * 1.3));
  assert.ok(rdpGaussian(1.3, 7, 0.01) < rdpGaussian(1.3, 7, 0.1));
  assert.ok(rdpGaussian(1.3, 7, 0.1) < rdpGaussian(1.3, 7, 1));
  assert.equal(rdpGaussian(1.3, 7.5, 0.1), Infinity); // fractional orders are not used when subsampled
});

test('budget: refuses the release that would exceed ε, keeps state across JSON', () => {
  const acc = new RdpAccountant();
  assert.equal(acc.epsilon(), 0);
  acc.record(1); // 4.38 (exact; RDP 4.73)
  acc.assertCanSpend(1, 8); // second release → 6.57 ≤ 8
  acc.record(1); // a third would be 8.39
  assert.throws(() => acc.assertCanSpend(1, 8), (e: unknown) => e instanceof PrivacyBudgetError && /ε = 8/.test(e.message));
  const again = new RdpAccountant(JSON.parse(JSON.stringify(acc.toJSON())));
  assert.equal(again.releases, 2);
  assert.equal(again.epsilon(), acc.epsilon());
  assert.ok(DEFAULT_ORDERS.includes(256));
});

/**
 * δ(ε) of the Gaussian mechanism straight from the definition: the hockey-stick divergence
 * ∫ max(0, p(x) − e^ε q(x)) dx between N(0, s²) and N(1, s²), s = 1/μ, by Simpson's rule on a fine
 * grid. Independent of the closed form it checks.
 */
function hockeyStick(epsilon: number, mu: number): number {
  const s = 1 / mu;
  const pdf = (x: number, m: number) => Math.exp(-((x - m) ** 2) / (2 * s * s)) / (s * Math.sqrt(2 * Math.PI));
  const lo = -40 * s;
  const hi = 1 + 40 * s;
  const n = 400_000;
  const h = (hi - lo) / n;
  let sum = 0;
  for (let i = 0; i <= n; i++) {
    const x = lo + i * h;
    const f = Math.max(0, pdf(x, 0) - Math.exp(epsilon) * pdf(x, 1));
    sum += f * (i === 0 || i === n ? 1 : i % 2 ? 4 : 2);
  }
  return (sum * h) / 3;
}

test('exact Gaussian composition: the closed-form δ(ε) matches the hockey-stick integral, and 1-GDP at ε = 1 is δ = 0.1269 (Dong, Roth & Su 2019)', () => {
  assert.ok(Math.abs(gaussianDelta(1, 1) - 0.1269) < 5e-5, `δ = ${gaussianDelta(1, 1)}`);
  for (const [eps, mu] of [
    [1, 1],
    [4.377, 1],
    [8, Math.sqrt(6) / 1.47],
    [2, 0.5],
    [8, Math.sqrt(9) / 1.8],
  ] as const) {
    const exact = hockeyStick(eps, mu);
    const closed = gaussianDelta(eps, mu);
    assert.ok(Math.abs(closed - exact) <= 1e-5 * exact + 1e-12, `ε ${eps}, μ ${mu}: closed form ${closed}, integral ${exact}`);
  }
  // ε solves δ(ε) = δ.
  const e = gaussianEpsilon(1, 1e-5);
  assert.ok(Math.abs(hockeyStick(e, 1) - 1e-5) < 1e-9, `δ at ε = ${e}`);
  assert.equal(gaussianEpsilon(0, 1e-5), 0);
  // log Φ in the far tail: Φ(−10) = 7.6199e-24, Φ(−30) = 4.9e-198 (tables); Φ(0) = 1/2.
  assert.ok(Math.abs(logNormalCdf(-10) - Math.log(7.6198530241605e-24)) < 1e-6);
  assert.ok(Math.abs(logNormalCdf(-30) - Math.log(4.906713927148187e-198)) < 1e-5);
  assert.ok(Math.abs(logNormalCdf(0) - Math.log(0.5)) < 1e-7);
  assert.ok(Math.abs(logNormalCdf(3) - Math.log(0.9986501019683699)) < 1e-7);
});

test('log Φ is accurate to about 1e-14 relative everywhere (40-digit mpmath values): the exact ε is not under-stated', () => {
  // mpmath.log(mpmath.ncdf(x)) at mp.dps = 40, rounded to 20 digits.
  const reference: Array<[number, number]> = [
    [-38, -726.5572160188201301], [-30, -454.32124395634319711], [-20, -203.91715537109726394], [-10, -53.231285150512470578],
    [-8.5, -39.197396428217669289], [-6, -20.736768949974705655], [-5, -15.064998393988725736], [-3, -6.6077262215103495433],
    [-2.83, -6.0630034254651945831], [-2.8284, -6.0580037047858151265], [-2.82, -6.0317939653849810473], [-2, -3.7831843336820319488],
    [-1.6, -2.9040780103022459323], [-1.5, -2.705944400823889807], [-1.42, -2.5535644849217311615], [-1.4143, -2.5429139890054768774], [-1.4142, -2.5427273827509199642], [-1, -1.8410216450092635058], [-0.5, -1.1759117615936186089], [-0.1, -0.77615459273027332557],
    [0, -0.69314718055994530942], [0.3, -0.48141016158848120517], [1, -0.17275377902344988953], [2, -0.023012909328963488465],
    [4, -0.00003167174337748926386], [8, -6.2209605742717860585e-16],
  ];
  for (const [x, want] of reference) {
    const got = logNormalCdf(x);
    assert.ok(Math.abs(got - want) <= 1e-14 * Math.abs(want), `log Φ(${x}) = ${got}, want ${want}`);
  }
  assert.equal(logNormalCdf(-Infinity), -Infinity);
  assert.equal(logNormalCdf(Infinity) + 0, 0);
  assert.equal(gaussianDelta(1, 1e-310), 0);
  // A budget a hair below the true ε of a release is refused (the earlier fit, 1.2e-7 relative, took it).
  // True ε of σ = 0.60024…, δ = 1e-10: 11.5749409702 (mpmath).
  const acc = new RdpAccountant();
  assert.equal(acc.canSpend(0.6002400960384154, 11.57494095, 1e-10), false);
  assert.equal(acc.canSpend(0.6002400960384154, 11.574941, 1e-10), true);
});

test('the accountant reports the exact ε while every release is plain Gaussian, the RDP bound once one is subsampled or the state predates it', () => {
  const plain = new RdpAccountant();
  for (let i = 0; i < 6; i++) plain.record(1.47);
  assert.ok(Math.abs(plain.epsilon() - gaussianEpsilon(Math.sqrt(6) / 1.47)) < 1e-9);
  assert.ok(plain.epsilon() <= 8.002 && plain.epsilon(1e-5, 'improved') > 8.5, `exact ${plain.epsilon()}, RDP ${plain.epsilon(1e-5, 'improved')}`);
  // Mixed σ: μ² adds up.
  const mixed = new RdpAccountant();
  mixed.record(1);
  mixed.record(2);
  assert.ok(Math.abs(mixed.epsilon() - gaussianEpsilon(Math.sqrt(1 + 1 / 4))) < 1e-9);
  // What canSpend decides follows the same figure.
  assert.ok(plain.epsilonAfter(1.47) > plain.epsilon());
  assert.equal(plain.canSpend(1.47, 8.5), plain.epsilonAfter(1.47) <= 8.5);
  // A subsampled release: only the RDP bound holds.
  const sub = new RdpAccountant();
  sub.record(1);
  sub.record(1, 0.01);
  assert.equal(sub.toJSON().gaussianMu2, null);
  assert.equal(sub.epsilon(), sub.epsilon(1e-5, 'improved'));
  // JSON keeps it; a state saved before it existed (no gaussianMu2) falls back to the bound.
  const again = new RdpAccountant(JSON.parse(JSON.stringify(plain.toJSON())));
  assert.equal(again.epsilon(), plain.epsilon());
  const { gaussianMu2: _dropped, ...old } = plain.toJSON();
  const legacy = new RdpAccountant(old);
  assert.equal(legacy.epsilon(), plain.epsilon(1e-5, 'improved'));
  assert.equal(new RdpAccountant({ ...old, rdp: old.rdp.map(() => 0), releases: 0 }).epsilonAfter(1), gaussianEpsilon(1));
  assert.throws(() => new RdpAccountant({ ...old, gaussianMu2: -1 }), /gaussianMu2 must be ≥ 0 or null, got -1/);
});

test('a NaN or negative noise multiplier is refused by name; it can never make ε read 0', () => {
  const acc = new RdpAccountant();
  acc.record(1);
  acc.record(1);
  const before = acc.epsilon();
  for (const bad of [Number.NaN, -1]) {
    assert.throws(() => acc.record(bad), /noiseMultiplier: must be a number ≥ 0/);
    assert.throws(() => acc.canSpend(bad, 100), /noiseMultiplier: must be a number ≥ 0/);
    assert.throws(() => acc.epsilonAfter(bad), /noiseMultiplier: must be a number ≥ 0/);
  }
  assert.equal(acc.releases, 2, 'nothing recorded');
  assert.equal(acc.epsilon(), before);
  assert.equal(gaussianEpsilon(Number.NaN), Infinity, 'an unknown μ promises nothing');
});

test('the state is JSON-safe: a subsampled release (+∞ RDP at non-integer orders) reloads from JSON with the same ε, before and after more releases', () => {
  const a = new RdpAccountant();
  a.record(0.8, 0.05, 200);
  const json = JSON.stringify(a.toJSON());
  assert.deepEqual(JSON.parse(json), a.toJSON(), 'toJSON holds nothing JSON changes');
  assert.ok(a.toJSON().rdp.includes(null), '+∞ is written as null');
  const b = new RdpAccountant(JSON.parse(json));
  assert.equal(b.epsilon(), a.epsilon());
  for (let i = 0; i < 3; i++) {
    a.record(2);
    b.record(2);
  }
  // Before, null read as 0 (null ≥ 0) and the reloaded device reported ε ≈ 4.0 instead of 9.9.
  assert.equal(b.epsilon(), a.epsilon());
  assert.ok(b.epsilon() > 9, `ε = ${b.epsilon()}`);
  // States written before toJSON encoded +∞ (structured clone keeps Infinity) read the same.
  assert.equal(new RdpAccountant({ ...a.toJSON(), rdp: a.toJSON().rdp.map((r) => r ?? Infinity) }).epsilon(), a.epsilon());
});

test('a stored state that is not what toJSON writes is refused by name, never read as less spent', () => {
  const a = new RdpAccountant();
  a.record(1);
  a.record(1);
  const s = a.toJSON();
  const refuses = (state: unknown, msg: RegExp) => assert.throws(() => new RdpAccountant(state as never), (e: unknown) => (e as Error).name === 'ValidationError' && msg.test((e as Error).message), JSON.stringify(state));
  for (const bad of ['1', undefined, Number.NaN, -1, {}, true]) refuses({ ...s, rdp: s.rdp.map((r, i) => (i === 3 ? bad : r)) }, /accountant\.state: rdp\[3\] must be a number ≥ 0, or null for \+∞/);
  for (const bad of [undefined, null, -1, 1.5, Number.NaN, '2', Infinity]) refuses({ ...s, releases: bad }, /accountant\.state: releases must be an integer ≥ 0/);
  // 0 releases with RDP spent used to make epsilon() read 0.
  refuses({ ...s, releases: 0 }, /says 0 releases but holds the RDP/);
  refuses({ ...s, releases: 0, gaussianMu2: undefined }, /says 0 releases but holds the RDP/);
  refuses({ ...s, rdp: s.rdp.map(() => 0), releases: 0, gaussianMu2: 2 }, /says 0 releases but holds the RDP \(or μ²\)/);
  refuses({ ...s, orders: s.orders.map((o, i) => (i === 0 ? 1 : o)) }, /orders\[0\] must be a finite number > 1/);
  refuses({ ...s, rdp: s.rdp.slice(1) }, /orders and rdp must have equal length/);
  refuses(null, /accountant\.state: must be an object/);
  assert.equal(new RdpAccountant(JSON.parse(JSON.stringify(s))).epsilon(), a.epsilon());
  assert.equal(new RdpAccountant({ ...s, rdp: s.rdp.map(() => 0), releases: 0, gaussianMu2: 0, lastNoiseMultiplier: null }).epsilon(), 0);
});

test('what record() takes, the constructor reads back: σ = 0 (ε = ∞, noise-free simulations) survives JSON, an infinite σ is refused by both', () => {
  const c = new RdpAccountant();
  c.record(0);
  const d = new RdpAccountant(JSON.parse(JSON.stringify(c.toJSON())));
  assert.equal(d.lastNoiseMultiplier, 0);
  c.record(5);
  d.record(5);
  assert.deepEqual([c.epsilon(), d.epsilon()], [Infinity, Infinity]);
  const fresh = new RdpAccountant();
  assert.throws(() => fresh.record(Infinity), /noiseMultiplier: must be a number ≥ 0 \(finite\), got Infinity/);
  assert.throws(() => fresh.epsilonAfter(Infinity), /noiseMultiplier: must be a number ≥ 0 \(finite\)/);
  assert.throws(() => new RdpAccountant({ ...fresh.toJSON(), lastNoiseMultiplier: Infinity }), /lastNoiseMultiplier must be a finite number ≥ 0 or null/);
  assert.equal(fresh.epsilon(), 0);
});
