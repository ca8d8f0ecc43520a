/**
 * Leave-one-out splits that test nobody are refused by `localrec eval` and `localrec simulate`
 * alike, saying which rule left everyone out; and whether a time column was read comes from the
 * flags, not from its values (a column of zeros is one).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { isValidationError } from '../../src/errors.js';
import { EventLogBuilder } from '../../src/eval/event-log.js';
import type { EvalCommandOptions } from '../../src/eval/eval-command.js';
import { checkTestUsers, looSplit } from '../../src/eval/loo-split.js';
import { runEval } from '../../src/eval/run-eval.js';
import { runSimulate, type SimulateCommandOptions } from '../../src/federated/simulate-command.js';
import { scratchFolder } from './eval-helpers.js';

const { dir, write } = scratchFolder('localrec-loo-users-');
// Two users of 2 distinct items: nobody can be held out.
const TWO = write('two.csv', 'u,i\na,x\na,y\nb,x\nb,z\n');
// The same with times.
const TWO_T = write('two-t.csv', 'u,i,t\na,x,1\na,y,2\nb,x,1\nb,z,2\n');
// Two users of 3 distinct items, every event at t = 5: `drop` leaves nothing before the held-out one.
const SAME = write('same.csv', 'u,i,t\na,x,5\na,y,5\na,z,5\nb,x,5\nb,y,5\nb,w,5\n');
// The same rows with a time column of zeros.
const ZERO = write('zero.csv', 'u,i,t\na,x,0\na,y,0\na,z,0\nb,x,0\nb,y,0\nb,w,0\n');

const quiet = { stdout: () => {}, stderr: { isTTY: false, write: () => true } };
const evalOpts = (o: Partial<EvalCommandOptions>): EvalCommandOptions => ({ format: 'csv', user: 'u', item: 'i', filter: [], k: '10', seed: '1', models: 'popular', ...o });
const simOpts = (o: Partial<SimulateCommandOptions>): SimulateCommandOptions => ({
  format: 'csv', user: 'u', item: 'i', filter: [], rounds: '1', clientsPerRound: '2', clip: '1', noise: '1', budget: '8', delta: '1e-5', dim: '4',
  minClients: '1', seed: '1', server: 'memory', centralEpochs: '1', evalEvery: '1', evalUsers: '0', k: '10', recency: '0.5', localEpochs: '1',
  localNegatives: '0', aggregator: 'fedavg', init: 'popularity', backend: 'cpu', ...o,
});
const refused = (field: string, re: RegExp) => (e: unknown) => isValidationError(e) && e.field === field && re.test(e.message);
const NOBODY = /^--data: has no test users: leave-one-out needs a user with at least 3 distinct items \(2 users read\)$/;
const NOBODY_BEFORE = /^--data: has no test users: no user has 2 distinct items strictly before the held-out item's time, which --same-time drop needs \(2 users read, 2 of them with at least 3 distinct items\); --same-time keep trains on the events at that time too$/;

test('simulate refuses a data set with no test users, as eval does (it reported metrics over nobody and exited 0)', async () => {
  let out = '';
  await assert.rejects(runSimulate(simOpts({ data: TWO }), { stdout: (s) => (out += s), stderr: { write: () => true } }), refused('--data', NOBODY));
  assert.equal(out, '', 'no result line');
  await assert.rejects(runEval(evalOpts({ data: TWO }), quiet), refused('--data', NOBODY));
  // The catalog for a --server URL needs no test users: still written.
  await runSimulate(simOpts({ data: TWO, writeCatalog: join(dir, 'catalog.json') }), { stdout: () => {}, stderr: { write: () => true } });
});

test('--same-time drop that leaves nobody to test says so (every user has 3 items, none 2 before the held-out time), in eval and simulate', async () => {
  await assert.rejects(runEval(evalOpts({ data: SAME, time: 't', sameTime: 'drop' }), quiet), refused('--data', NOBODY_BEFORE));
  await assert.rejects(runSimulate(simOpts({ data: SAME, time: 't', sameTime: 'drop' }), { stdout: () => {}, stderr: { write: () => true } }), refused('--data', NOBODY_BEFORE));
  // Too few items at all is still said as such under drop.
  await assert.rejects(runEval(evalOpts({ data: TWO_T, time: 't', sameTime: 'drop' }), quiet), refused('--data', NOBODY));
  // Without a time column drop would do nothing (file order decides): refused, in both commands.
  const noTime = /^--same-time: drop compares event times, and no time column was given \(--time\): name one, or leave --same-time out$/;
  await assert.rejects(runEval(evalOpts({ data: TWO, sameTime: 'drop' }), quiet), refused('--same-time', noTime));
  await assert.rejects(runSimulate(simOpts({ data: SAME, sameTime: 'drop' }), { stdout: () => {}, stderr: { write: () => true } }), refused('--same-time', noTime));
  const [line] = await runEval(evalOpts({ data: SAME, time: 't', sameTime: 'keep' }), quiet);
  assert.equal(line!.testUsers, 2);
});

test('checkTestUsers passes a split that tests someone and names the flag it is given', () => {
  const b = new EventLogBuilder();
  for (const [u, i, t] of [['a', 'x', 1], ['a', 'y', 2], ['a', 'z', 3], ['b', 'x', 1]] as const) b.push(u, i, t);
  const split = looSplit(b.build());
  checkTestUsers(split, '--data');
  const none = looSplit(b.build(), 4);
  assert.throws(() => checkTestUsers(none, '--events', 4), refused('--events', /needs a user with at least 4 distinct items \(2 users read\)/));
});

test('a time column of zeros is a time column (every event at once): --same-time drop applies to it, not silently ignored', async () => {
  const b = new EventLogBuilder();
  for (const [u, i] of [['a', 'x'], ['a', 'y'], ['a', 'z']] as const) b.push(u, i, 0);
  const log = b.build();
  assert.equal(looSplit(log, 3, { sameTime: 'drop', hasTime: true }).testUsers.length, 0, 'nothing strictly before t = 0');
  assert.equal(looSplit(log, 3, { sameTime: 'drop', hasTime: false }).testUsers.length, 1, 'no time column: the file order, one step per row');
  // One session at t = 0 when the column says so; the file position, one step per row, when there is none.
  assert.deepEqual([...looSplit(log, 3, { hasTime: true }).trainEvents.time], [0, 0]);
  assert.deepEqual([...looSplit(log, 3, { hasTime: false }).trainEvents.time], [0, 1]);
  // The commands say whether --time was given.
  await assert.rejects(runEval(evalOpts({ data: ZERO, time: 't', sameTime: 'drop' }), quiet), refused('--data', NOBODY_BEFORE));
  const [keep] = await runEval(evalOpts({ data: ZERO, time: 't' }), quiet);
  assert.equal(keep!.testUsers, 2);
  // Without --time, drop has no times to compare: refused rather than silently the file order.
  await assert.rejects(runEval(evalOpts({ data: ZERO, sameTime: 'drop' }), quiet), refused('--same-time', /no time column was given/));
});
