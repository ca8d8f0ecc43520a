/**
 * Flag values: an empty or blank value is refused by name in every command (it used to read as
 * "not given": `simulate --write-catalog ''` ran a whole simulation), and a numeric flag takes a
 * plain decimal number only (`--noise 0x10` ran at σ = 16).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { Command } from 'commander';
import { refuseEmptyValues } from '../../src/cli.js';
import { isValidationError } from '../../src/errors.js';
import { runPrivacy } from '../../src/federated/privacy-command.js';
import { flagNumber, numberFlag, seedFlag } from '../../src/number-flag.js';
import { scratchFolder } from './eval-helpers.js';

const { dir } = scratchFolder('localrec-cli-flags-');
const named = (field: string, re: RegExp) => (e: unknown) => isValidationError(e) && e.field === field && re.test(e.message);

test('the CLI refuses an empty or blank flag value by name, one line, exit code 1, before any work', () => {
  // Each would have run (or failed later, elsewhere) without the check: the data named does not exist.
  const missing = join(dir, 'missing.csv');
  const cases: Array<[string[], string]> = [
    [['simulate', '--data', missing, '--write-catalog', ''], '--write-catalog'],
    [['eval', '--data', missing, '--user', 'u', '--item', 'i', '--time', ''], '--time'],
    [['eval', '--data', missing, '--user', 'u', '--item', 'i', '--weight', '  '], '--weight'],
    [['offers', 'sign', '--key', missing, '--catalog', missing, '--out', ''], '--out'],
    [['offers', 'keygen', '--out', ''], '--out'],
    [['neighbors', '--data', missing, '--user', 'u', '--item', 'i', '--filter', 'q>0', '--filter', '', '--out', join(dir, 'n.lrn')], '--filter'],
  ];
  for (const [args, flag] of cases) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.stderr, `localrec: ValidationError: ${flag}: must not be empty\n`, args.join(' '));
    assert.equal(r.status, 1, args.join(' '));
  }
});

test('refuseEmptyValues: typed values, each of a repeated or variadic flag; defaults and booleans pass', async () => {
  const program = new Command().exitOverride();
  const sub = program
    .command('x')
    .option('--name <s>', 'a name', 'default')
    .option('--many <s...>', 'several')
    .option('--flag', 'a switch')
    .action(() => {});
  const parsed = async (...args: string[]) => {
    await program.parseAsync(['node', 'localrec', 'x', ...args]);
    return sub;
  };
  refuseEmptyValues(await parsed('--flag'));
  refuseEmptyValues(await parsed('--name', 'a', '--many', 'b', 'c'));
  assert.throws(() => refuseEmptyValues(sub.setOptionValueWithSource('name', ' \t', 'cli')), named('--name', /^--name: must not be empty$/));
  sub.setOptionValueWithSource('name', 'ok', 'cli');
  assert.throws(() => refuseEmptyValues(sub.setOptionValueWithSource('many', ['b', ''], 'cli')), named('--many', /must not be empty/));
  // A default is the program's own, never the user's empty value.
  sub.setOptionValueWithSource('many', undefined, undefined);
  refuseEmptyValues(sub.setOptionValueWithSource('name', '', 'default'));
});

test('numeric flags take plain decimal numbers only: no hexadecimal, binary, octal or Infinity', async () => {
  for (const [s, x] of [
    ['1e-5', 1e-5],
    ['2E3', 2000],
    ['.5', 0.5],
    ['5.', 5],
    ['-1', -1],
    ['+2.25', 2.25],
    [' 3 ', 3],
    ['1e30', 1e30],
    ['0010', 10],
  ] as const) {
    assert.equal(flagNumber(s), x, s);
  }
  for (const s of ['0x10', '0X10', '0b11', '0o7', 'Infinity', '-Infinity', '1_000', '', ' ', '1e', 'e5', '.', '1,5', 'abc', '--1']) assert.ok(Number.isNaN(flagNumber(s)), s);
  assert.throws(() => numberFlag('--noise', '0x10', (x) => x > 0, 'a number > 0'), named('--noise', /^--noise: must be a number > 0 \(plain decimal digits only\), got '0x10'$/));
  assert.throws(() => numberFlag('--noise', 'abc', (x) => x > 0, 'a number > 0'), named('--noise', /^--noise: must be a number > 0, got 'abc'$/));
  assert.throws(() => seedFlag('--seed', '0x7'), named('--seed', /plain decimal digits only/));
  // `privacy --noise 0x10` ran at σ = 16.
  await assert.rejects(runPrivacy({ budget: '8', delta: '1e-5', noise: '0x10' }), named('--noise', /got '0x10'/));
  await assert.rejects(runPrivacy({ budget: '0b1000', delta: '1e-5', syncs: '4' }), named('--budget', /got '0b1000'/));
  assert.equal((await runPrivacy({ budget: '8', delta: '1e-5', noise: '16' })).noiseMultiplier, 16);
});

test('model settings (--knn-neighbors, --models ease:ease-l2=…) take plain decimal numbers only, as flags do', async () => {
  const { planModels } = await import('../../src/eval/model-registry.js');
  assert.throws(() => planModels('ease:ease-l2=0x10', {}), /ease-l2.*got '0x10'/);
  assert.throws(() => planModels('itemknn', { 'knn-neighbors': '0x10' }), /knn-neighbors.*got '0x10'/);
  assert.doesNotThrow(() => planModels('ease:ease-l2=1e2', {}));
});

test('privacy: ε below 1 keeps six significant digits (a tiny budget is not ε = 0), and the accountant\'s cap on syncs is said', async () => {
  const tiny = await runPrivacy({ budget: '1e-9', delta: '1e-5', syncs: '4' });
  assert.ok(tiny.epsilon > 0 && tiny.epsilon <= 1e-9, `epsilon ${tiny.epsilon}`);
  assert.equal(tiny.syncsCapped, undefined);
  const capped = await runPrivacy({ budget: '8', delta: '1e-5', noise: '1e9' });
  assert.equal(capped.syncs, 1_000_000);
  assert.equal(capped.syncsCapped, true);
  // At or above 1, six decimals as before.
  assert.equal((await runPrivacy({ budget: '8', delta: '1e-5', syncs: '4' })).epsilon, 7.999663);
});
