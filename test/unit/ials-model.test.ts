import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isValidationError } from '../../src/errors.js';
import { IalsModel, type IalsOptions } from '../../src/eval/ials-model.js';
import { MODELS, planModels } from '../../src/eval/model-registry.js';
import { evaluateModel } from '../../src/eval/runner.js';
import type { Split } from '../../src/eval/split.js';
import { splitOf } from './eval-helpers.js';


// Two groups (dim 2: one factor each): users a0..a5 buy from a1..a5, users b0..b5 from b1..b5 (each user all but one item
// of their group). a0 and b0 are tested on their group's item they have not seen; z is held out
// only (no training user), so a fit that saw the test part would give it a non-zero factor.
const GROUPS = ((): Split => {
  const train: Record<string, string[]> = {};
  for (const g of ['a', 'b']) {
    for (let u = 0; u < 6; u++) train[`${g}${u}`] = [1, 2, 3, 4, 5].filter((i) => i !== 5 - (u % 5)).map((i) => `${g}${i}`);
  }
  return splitOf(train, { a0: ['a5', 'z'], b0: ['b5'] });
})();

const OPTS: IalsOptions = { dim: 2, reg: 0.1, alpha: 10, iters: 10, seed: 3 };

const scoresOf = (m: IalsModel, s: Split, user: string): Record<string, number> => {
  const out = new Float32Array(s.itemIds.length);
  m.score(s.userIds.indexOf(user), out);
  return Object.fromEntries(s.itemIds.map((id, i) => [id, out[i]]));
};

test('ials: a user’s own group’s unseen item ranks above every item of the other group', async () => {
  const m = new IalsModel(OPTS);
  const fractions: number[] = [];
  m.fit(GROUPS, (f) => fractions.push(f));
  for (const [user, own, other] of [['a0', 'a', 'b'], ['b0', 'b', 'a']] as const) {
    const s = scoresOf(m, GROUPS, user);
    const best = Math.max(...[1, 2, 3, 4, 5].map((i) => s[`${other}${i}`]));
    assert.ok(s[`${own}5`] > best + 0.1, `${user}: ${own}5 ${s[`${own}5`]} vs best of ${other} ${best}`);
  }
  // The held-out-only item is not in the fit: its factor stays 0.
  assert.equal(scoresOf(m, GROUPS, 'a0').z, 0);
  const r = await evaluateModel(new IalsModel(OPTS), GROUPS, { k: 1, data: 'groups' });
  assert.equal(r.hr, 1);
  assert.equal(r.bytesPerItem, 8);
  // Progress runs from 0 to 1 without going back.
  assert.equal(fractions.at(-1), 1);
  assert.ok(fractions.every((f, i) => f >= 0 && f <= 1 && (i === 0 || f >= fractions[i - 1])));
});

test('ials: the objective does not increase over the alternations', () => {
  for (const alpha of [0, 1, 40]) {
    const m = new IalsModel({ ...OPTS, alpha, iters: 8 });
    m.fit(GROUPS, () => {});
    const l = m.losses;
    assert.equal(l.length, 8);
    for (let i = 1; i < l.length; i++) assert.ok(l[i] <= l[i - 1] * (1 + 1e-9), `alpha ${alpha}, iteration ${i}: ${l[i]} > ${l[i - 1]}`);
    assert.ok(l[l.length - 1] < l[0], `alpha ${alpha}: ${l.join(', ')}`);
  }
});

test('ials: the same seed gives the same scores, another seed other ones', () => {
  const fitted = (seed: number): Record<string, number> => {
    const m = new IalsModel({ ...OPTS, seed });
    m.fit(GROUPS, () => {});
    return scoresOf(m, GROUPS, 'a0');
  };
  assert.deepEqual(fitted(3), fitted(3));
  assert.notDeepEqual(fitted(3), fitted(4));
});

test('ials: bad options are refused with a ValidationError naming the option', () => {
  const bad: Array<[Partial<IalsOptions>, string]> = [
    [{ dim: 0 }, 'options.dim'],
    [{ dim: 2.5 }, 'options.dim'],
    [{ reg: -1 }, 'options.reg'],
    [{ reg: 0 }, 'options.reg'],
    [{ alpha: -1 }, 'options.alpha'],
    [{ iters: 2.5 }, 'options.iters'],
    [{ iters: 0 }, 'options.iters'],
    [{ seed: Number.NaN }, 'options.seed'],
    [{ weighting: { recencyDecay: 0, confidence: 'none' } }, 'options-recency'],
  ];
  for (const [o, field] of bad) {
    assert.throws(() => new IalsModel({ ...OPTS, ...o }), (e: unknown) => isValidationError(e) && e.field === field, field);
  }
  for (const [spec, flags, field] of [
    ['ials:ials-dim=0', {}, '--models ials:ials-dim=0'],
    ['ials:ials-reg=-1', {}, '--models ials:ials-reg=-1'],
    ['ials:ials-iters=2.5', {}, '--models ials:ials-iters=2.5'],
    ['ials', { 'ials-dim': '0' }, '--ials-dim'],
    ['ials', { 'ials-reg': '-0.5' }, '--ials-reg'],
    ['ials:dim=8', {}, 'options.models'],
  ] as Array<[string, Record<string, string>, string]>) {
    assert.throws(() => planModels(spec, flags), (e: unknown) => isValidationError(e) && e.field === field, spec);
  }
});

test('registry: ials with its defaults, the global seed, and history weighting only from its spec', async () => {
  const [plain, tuned] = planModels('ials,ials:ials-dim=2:ials-reg=0.1:ials-iters=10:recency=0.5', { recency: '0.5' });
  assert.deepEqual(plain.params, { 'ials-dim': 64, 'ials-reg': 10, 'ials-alpha': 3, 'ials-iters': 15, recency: 1, confidence: 'none' });
  assert.equal(tuned.params.recency, 0.5);
  const m = MODELS.ials.create(tuned.params, 3);
  assert.ok(m instanceof IalsModel);
  assert.equal((await evaluateModel(m, GROUPS, { k: 1, data: 'groups' })).hr, 1);
});
