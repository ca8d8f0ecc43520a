/**
 * Result lines carry the protocol settings that produced them (`eval`: every line; `simulate`: the
 * last line), and every command's `--seed` is a whole number from 0 to 2^31 − 1 (the generator
 * keeps 32 bits: `--seed 1e30` ran as seed 0).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { Command } from 'commander';
import { isValidationError } from '../../src/errors.js';
import type { EvalCommandOptions } from '../../src/eval/eval-command.js';
import { runEval } from '../../src/eval/run-eval.js';
import { runSimulate, type SimulateCommandOptions } from '../../src/federated/simulate-command.js';
import { Random } from '../../src/model/random.js';
import { MAX_SEED, seedFlag } from '../../src/number-flag.js';
import { scratchFolder } from './eval-helpers.js';

const { dir, write } = scratchFolder('localrec-settings-');
// Users of 4–5 items at distinct times, the last two of user 1 at one time, and a row the filter drops.
const EVENTS = write(
  'events.csv',
  ['user,item,t,qty', ...['1', '2', '3', '4', '5', '6'].flatMap((u, k) => ['a', 'b', 'c', 'd', 'e'].slice(0, 4 + (k % 2)).map((i, p) => `${u},${i},${u === '1' && p === 3 ? 2 : p},${p + 1}`)), '7,a,0,-1'].join('\n'),
);
const TRAIN = write('train.txt', ['u1 a b c', 'u2 a b', 'u3 b c d'].join('\n'));
const TEST = write('test.txt', ['u2 c'].join('\n'));

const quiet = { stdout: () => {}, stderr: { isTTY: false, write: () => true } };
const evalOpts = (o: Partial<EvalCommandOptions>): EvalCommandOptions => ({ format: 'csv', user: 'user', item: 'item', filter: [], k: '10', seed: '1', models: 'popular', ...o });
const refused = (field: string, re: RegExp) => (e: unknown) => isValidationError(e) && e.field === field && re.test(e.message);
const SEED_RANGE = /^--seed: must be an integer from 0 to 2147483647 \(2\^31 − 1\), got '.*'$/;

test('every eval line carries its protocol settings: format, protocol, same-time, seed, time and weight columns, filters', async () => {
  const settings = (line: object) => {
    const { format, protocol, sameTime, seed, timeColumn, weightColumn, filters } = line as Record<string, unknown>;
    return { format, protocol, sameTime, seed, timeColumn, weightColumn, filters };
  };
  const lines: string[] = [];
  const keep = await runEval(evalOpts({ data: EVENTS, time: 't', weight: 'qty', filter: ['qty>0'], models: 'popular,itemknn' }), { ...quiet, stdout: (s) => lines.push(s) });
  for (const l of lines) {
    const r = JSON.parse(l) as Record<string, unknown>;
    assert.deepEqual(settings(r), { format: 'csv', protocol: 'loo', sameTime: 'keep', seed: 1, timeColumn: 't', weightColumn: 'qty', filters: ['qty>0'] });
    assert.equal(typeof r.params, 'object', 'the model settings stay in params');
  }
  // A drop run with another seed can be told from the default's.
  const [drop] = await runEval(evalOpts({ data: EVENTS, time: 't', sameTime: 'drop', seed: '3' }), quiet);
  assert.deepEqual(settings(drop!), { format: 'csv', protocol: 'loo', sameTime: 'drop', seed: 3, timeColumn: 't', weightColumn: null, filters: [] });
  assert.notEqual(drop!.testUsers, 0);
  assert.equal(keep[0]!.users, 6);
  const [fileOrder] = await runEval(evalOpts({ data: EVENTS }), quiet);
  assert.equal(settings(fileOrder!).timeColumn, null);
  const [given] = await runEval({ format: 'lines', train: TRAIN, test: TEST, filter: [], k: '10', seed: '1', models: 'popular' }, quiet);
  assert.deepEqual(settings(given!), { format: 'lines', protocol: 'given', sameTime: null, seed: 1, timeColumn: null, weightColumn: null, filters: [] });
});

test('eval --seed is a whole number from 0 to 2^31 − 1 (1e30 ran as seed 0)', async () => {
  assert.equal(new Random(1e30).next(), new Random(0).next(), 'why: the generator keeps 32 bits');
  for (const seed of ['1e30', '2147483648', '-1', '1.5', '']) {
    await assert.rejects(runEval(evalOpts({ data: EVENTS, seed }), quiet), refused('--seed', SEED_RANGE), seed);
  }
  const [max] = await runEval(evalOpts({ data: EVENTS, seed: String(MAX_SEED) }), quiet);
  assert.equal(max!.seed, 2 ** 31 - 1);
  assert.equal(seedFlag('--seed', '0'), 0);
});

test('simulate --seed is limited the same way; offers-eval and serve --seed too', async () => {
  for (const seed of ['1e30', '2147483648', '-1']) {
    // Refused before the data set loads (there is none).
    await assert.rejects(runSimulate(simOpts({ data: join(dir, 'missing.csv'), seed }), { stdout: () => {}, stderr: { write: () => true } }), refused('--seed', SEED_RANGE), seed);
  }
  const cli = async (register: (p: Command) => void, ...args: string[]) => {
    const program = new Command().exitOverride();
    register(program);
    await program.parseAsync(['node', 'localrec', ...args]);
  };
  const offers = (await import('../../src/offers/offers-command.js')).register;
  await assert.rejects(cli(offers, 'offers-eval', '--data', join(dir, 'missing.csv.gz'), '--seed', '2147483648'), refused('--seed', SEED_RANGE));
  const serve = (await import('../../src/server/serve-command.js')).register;
  // Refused while the flags are read, before any store opens.
  await assert.rejects(cli(serve, 'serve', '--data-dir', join(dir, 'store'), '--seed', '1e30'), refused('--seed', SEED_RANGE));
});

// 24 users in 3 clusters of 8 items, 5 items each at times 0..4.
const SIM = (() => {
  const rng = new Random(5);
  const rows = ['user,item,t'];
  for (let u = 0; u < 24; u++) rng.shuffle(Array.from({ length: 8 }, (_, i) => (u % 3) * 8 + i)).slice(0, 5).forEach((it, t) => rows.push(`u${u},i${it},${t}`));
  return write('sim.csv', rows.join('\n') + '\n');
})();
const simOpts = (o: Partial<SimulateCommandOptions>): SimulateCommandOptions => ({
  data: SIM, format: 'csv', user: 'user', item: 'item', time: 't', filter: [], rounds: '1', clientsPerRound: '10', clip: '1', noise: '1', budget: '8',
  delta: '1e-5', dim: '4', minClients: '10', seed: '1', server: 'memory', centralEpochs: '1', evalEvery: '1', evalUsers: '0', k: '10', recency: '0.5',
  localEpochs: '1', localNegatives: '0', aggregator: 'fedavg', init: 'popularity', backend: 'wasm', ...o,
});

test("simulate's last line carries the seed, same-time, recency, time column and filters; round lines are unchanged", async () => {
  const out: string[] = [];
  await runSimulate(simOpts({ seed: '3', sameTime: 'drop', recency: '0.8', filter: ['item!=i99'] }), { stdout: (s) => out.push(s), stderr: { write: () => true } });
  const lines = out.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  const last = lines.at(-1)!;
  assert.equal(last.final, true);
  assert.deepEqual(
    { seed: last.seed, sameTime: last.sameTime, recency: last.recency, timeColumn: last.timeColumn, filters: last.filters },
    { seed: 3, sameTime: 'drop', recency: 0.8, timeColumn: 't', filters: ['item!=i99'] },
  );
  for (const f of ['hr', 'ndcg', 'epsilonMax', 'testUsers', 'dim', 'minClients']) assert.ok(f in last, f);
  assert.ok(!('seed' in lines[0]!), 'a round line has no settings');
  const plain: string[] = [];
  await runSimulate(simOpts({ time: undefined }), { stdout: (s) => plain.push(s), stderr: { write: () => true } });
  const end = JSON.parse(plain.at(-1)!) as Record<string, unknown>;
  assert.deepEqual([end.seed, end.sameTime, end.recency, end.timeColumn, end.filters], [1, 'keep', 0.5, null, []]);
});
