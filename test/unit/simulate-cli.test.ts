/**
 * `localrec simulate` end to end on a small CSV: JSON lines on stdout, the documented fields on
 * every round line and on the last line, and clear errors for bad options.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { noiseForSyncs } from '../../src/federated/dp.js';
import { Command } from 'commander';
import { register, runSimulate, type SimulateCommandOptions } from '../../src/federated/simulate-command.js';
import { isValidationError } from '../../src/errors.js';
import { updateByteLength } from '../../src/federated/wire.js';
import { Random } from '../../src/model/random.js';

let dir: string;
let csv: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'localrec-sim-test-'));
  csv = join(dir, 'events.csv');
  const rng = new Random(5);
  const rows = ['user,item,t'];
  for (let u = 0; u < 60; u++) {
    const c = u % 3;
    rng.shuffle(Array.from({ length: 8 }, (_, i) => c * 8 + i)).slice(0, 5).forEach((it, t) => rows.push(`u${u},i${it},${t}`));
  }
  await writeFile(csv, rows.join('\n') + '\n');
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const opts = (o: Partial<SimulateCommandOptions> = {}): SimulateCommandOptions => ({
  data: csv,
  format: 'csv',
  user: 'user',
  item: 'item',
  time: 't',
  filter: [],
  rounds: '3',
  clientsPerRound: '20',
  clip: '1',
  noise: '1',
  budget: '8',
  delta: '1e-5',
  dim: '8',
  minClients: '10',
  seed: '1',
  server: 'memory',
  centralEpochs: '2',
  evalEvery: '1',
  evalUsers: '0',
  k: '10',
  recency: '0.5',
  localEpochs: '2',
  localNegatives: '0',
  aggregator: 'fedavg',
  init: 'popularity',
  backend: 'wasm',
  ...o,
});

const ROUND_FIELDS = ['round', 'version', 'hr', 'ndcg', 'epsilonMax', 'epsilonMean', 'bytesPerClientPerRound', 'clientsSkippedForBudget', 'wallMs'];
const FINAL_FIELDS = ['final', 'hr', 'ndcg', 'epsilonMax', 'epsilonMean', 'bytesPerClientPerRound', 'clientsSkippedForBudget', 'wallMs', 'central', 'ratio', 'initialHr', 'updatesSent', 'modelBytes'];

async function run(o: Partial<SimulateCommandOptions>): Promise<{ lines: Record<string, unknown>[]; err: string }> {
  const out: string[] = [];
  let err = '';
  await runSimulate(opts(o), { stdout: (s) => out.push(s), stderr: { write: (s: string) => (err += s) } });
  return { lines: out.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>), err };
}

describe('localrec simulate (command)', () => {
  it('prints one JSON line per evaluated round and a last line with final metrics, ε, central and ratio', async () => {
    const { lines, err } = await run({ central: true, server: 'sqlite' });
    assert.equal(lines.length, 4);
    for (const [i, l] of lines.slice(0, 3).entries()) {
      for (const f of ROUND_FIELDS) assert.ok(f in l, `round line has ${f}`);
      assert.equal(l.round, i + 1);
    }
    const last = lines.at(-1)!;
    for (const f of FINAL_FIELDS) assert.ok(f in last, `last line has ${f}`);
    assert.equal(last.final, true);
    assert.equal(last.budget, 8);
    assert.equal(last.server, 'sqlite');
    assert.ok((last.epsilonMax as number) > 0 && (last.epsilonMax as number) <= 8);
    const central = last.central as { hr: number; ndcg: number };
    const ratio = last.ratio as { hr: number; ndcg: number };
    if (central.hr > 0) assert.ok(Math.abs(ratio.hr - (last.hr as number) / central.hr) < 1e-3);
    assert.ok((last.bytesPerClientPerRound as number) > 80, 'an update is a header plus codes');
    assert.match(err, /60 users \(devices\)/, 'progress and the data summary go to stderr');
  });

  it('evaluates every --eval-every rounds and always the last', async () => {
    const { lines } = await run({ rounds: '3', evalEvery: '2' });
    assert.deepEqual(lines.map((l) => l.round ?? 'final'), [2, 3, 'final']);
  });

  it('--train-rows and --freeze-biases: the final line says so and uploads cover that part only; bad values are refused', async () => {
    const whole = await run({ rounds: '1' });
    const part = await run({ rounds: '1', trainRows: '10', freezeBiases: true });
    const last = part.lines.at(-1)!;
    assert.deepEqual([last.trainRows, last.trainBiases], [10, false]);
    assert.deepEqual([whole.lines.at(-1)!.trainRows, whole.lines.at(-1)!.trainBiases], [24, true]);
    assert.equal(last.version, 2, 'two rounds of 10 were published');
    // 10 rows × 8 factors plus their bias section, against all 24 rows; 8 bits either way.
    assert.equal(last.bytesPerClientPerRound, updateByteLength(10, 8, 8, 256));
    assert.equal(whole.lines.at(-1)!.bytesPerClientPerRound, updateByteLength(24, 8, 8, 256));
    await assert.rejects(run({ trainRows: '0' }), (e: unknown) => isValidationError(e) && /--train-rows/.test((e as Error).message));
    assert.equal(last.biasScale, null);
    const scaled = await run({ rounds: '1', trainRows: '10', freezeBiases: true, biasScale: '0.5' });
    assert.equal(scaled.lines.at(-1)!.biasScale, 0.5);
    await assert.rejects(run({ biasScale: '0' }), (e: unknown) => isValidationError(e) && /--bias-scale: must be a number > 0, got '0'/.test((e as Error).message));
    await assert.rejects(run({ biasScale: '1', init: 'flat' }), (e: unknown) => isValidationError(e) && /--bias-scale.*needs --init popularity/.test((e as Error).message));
    await assert.rejects(run({ trainRows: '25' }), (e: unknown) => isValidationError(e) && /from 1 to the table's 24 rows/.test((e as Error).message));
  });

  it('--aggregator subspace: the final line names it and its scale; it needs --freeze-biases, and --subspace-scale needs it', async () => {
    const r = await run({ rounds: '1', trainRows: '10', freezeBiases: true, aggregator: 'subspace', subspaceScale: '3' });
    const last = r.lines.at(-1)!;
    assert.deepEqual([last.aggregator, last.subspaceScale, last.trainBiases], ['subspace', 3, false]);
    assert.equal(last.bytesPerClientPerRound, updateByteLength(10, 8, 8, 256), 'the same update format as local training');
    assert.equal((await run({ rounds: '1' })).lines.at(-1)!.subspaceScale, null);
    await assert.rejects(run({ aggregator: 'subspace' }), (e: unknown) => isValidationError(e) && /--aggregator: subspace needs --freeze-biases/.test((e as Error).message));
    await assert.rejects(run({ subspaceScale: '3' }), (e: unknown) => isValidationError(e) && /--subspace-scale: needs --aggregator subspace/.test((e as Error).message));
    await assert.rejects(run({ denoise: 'directions' }), (e: unknown) => isValidationError(e) && /--denoise: directions needs --aggregator subspace \(got fedavg\)/.test((e as Error).message));
    await assert.rejects(run({ aggregator: 'subspace', freezeBiases: true, subspaceScale: '-1' }), (e: unknown) => isValidationError(e) && /--subspace-scale: must be a number > 0/.test((e as Error).message));
    await assert.rejects(run({ aggregator: 'subspace', freezeBiases: true, serverLr: '2' }), (e: unknown) => isValidationError(e) && /--server-lr: applies to --aggregator fedavg only \(got subspace\)/.test((e as Error).message));
    await assert.rejects(run({ aggregator: 'fedadam', serverLr: '2' }), (e: unknown) => isValidationError(e) && /--server-lr: applies to --aggregator fedavg only \(got fedadam\)/.test((e as Error).message));
    await assert.rejects(run({ serverLr: '0' }), (e: unknown) => isValidationError(e) && /--server-lr: must be a number > 0, got '0'/.test((e as Error).message));
    // Secure-aggregation options without --secure-aggregation name themselves.
    await assert.rejects(run({ dropout: '0.1' }), (e: unknown) => isValidationError(e) && /--dropout: is a secure-aggregation option: it needs --secure-aggregation/.test((e as Error).message));
    await assert.rejects(run({ secaggSurvivors: '3' }), (e: unknown) => isValidationError(e) && /--secagg-survivors: is a secure-aggregation option/.test((e as Error).message));
    await assert.rejects(run({ secureAggregation: true, secaggSurvivors: '1' }), (e: unknown) => isValidationError(e) && /--secagg-survivors: must be an integer 2\.\.--min-clients/.test((e as Error).message));
    await assert.rejects(run({ secureAggregation: true, dropout: '1' }), (e: unknown) => isValidationError(e) && /--dropout: must be a share in \[0, 1\)/.test((e as Error).message));
    await assert.rejects(run({ aggregator: 'power' }), (e: unknown) => isValidationError(e) && /--aggregator: must be fedavg, fedadam or subspace, got 'power'/.test((e as Error).message));
    // The training code's ranges, checked before the run (they failed after it, named train.epochs).
    for (const [o, re] of [
      [{ centralEpochs: '1e7' }, /--central-epochs: must be an integer from 1 to 1000, got '1e7'/],
      [{ localEpochs: '1001' }, /--local-epochs: must be an integer from 1 to 1000/],
      [{ localNegatives: '1e12' }, /--local-negatives: must be an integer from 0 to 100000/],
      [{ localContext: '1e9' }, /--local-context: must be an integer from 1 to 1000/],
      [{ k: '1e10' }, /--k: must be an integer from 1 to 10000/],
      [{ rounds: '2000000' }, /--rounds: must be an integer from 1 to 1000000/],
    ] as const) {
      await assert.rejects(run(o), (e: unknown) => isValidationError(e) && re.test((e as Error).message), String(re));
    }
    // The server's rules between the round options are checked before the data set loads (a missing
    // file would fail the load: these fail first).
    const data = '/no/such/ratings.csv';
    await assert.rejects(run({ data, secureAggregation: true, dropout: '2' }), /--dropout: must be a share in \[0, 1\), got '2'/);
    await assert.rejects(run({ data, secureAggregation: true, robust: 'median' }), /options\.robust: must be 'mean' with secure aggregation/);
    await assert.rejects(run({ data, secureAggregation: true, minClients: '1', clientsPerRound: '1' }), /options\.minClients: is the cohort size under secure aggregation: an integer 2..100000, got 1/);
    await assert.rejects(run({ data, trim: '0.3' }), /--trim: applies to --robust trimmed-mean only \(got mean\)/);
    await assert.rejects(run({ data, robust: 'trimmed-mean', trim: '0.01', minClients: '5', clientsPerRound: '5' }), /options\.trimFraction: 0\.01 of 5 updates \(minClients\) trims nothing/);
  });

  it('--noise auto: the smallest σ at which every device can sync in all --rounds within --budget', async () => {
    const r = await run({ noise: 'auto', rounds: '2', budget: '6' });
    const last = r.lines.at(-1)!;
    assert.equal(last.noiseMultiplier, noiseForSyncs(2, 6));
    assert.ok((last.epsilonMax as number) <= 6);
    assert.match(r.err, new RegExp(`--noise auto: σ = ${last.noiseMultiplier}, the smallest at which a device can sync in all 2 rounds within ε = 6`));
    await assert.rejects(run({ noise: 'auto', budget: 'none' }), (e: unknown) => isValidationError(e) && /--noise: auto needs a finite --budget/.test((e as Error).message));
    await assert.rejects(run({ noise: 'loud' }), (e: unknown) => isValidationError(e) && /--noise: must be a number ≥ 0 or 'auto', got 'loud'/.test((e as Error).message));
  });

  it('says in flag terms when the data set has too few devices for secure aggregation, and warns when no round was published', async () => {
    const { inFlagTerms } = await import('../../src/cli.js');
    const program = new Command();
    register(program);
    const cmd = program.commands.find((c) => c.name() === 'simulate');
    const refused = async (o: Partial<SimulateCommandOptions>, re: RegExp) => {
      const e = await run(o).then(
        () => assert.fail('not refused'),
        (err: unknown) => err as Error,
      );
      assert.ok(isValidationError(e), String(e));
      assert.match(inFlagTerms(e.message, cmd), re);
    };
    // 60 devices: 100 per round is capped at 60, which is no multiple of the cohort (it said "got 60", a value nobody gave).
    await refused({ secureAggregation: true, minClients: '50', clientsPerRound: '100', rounds: '1' }, /^--clients-per-round: is 100, but the data set has only 60 devices; with secure aggregation a round is whole cohorts of 50, e\.g\. 50$/);
    await refused({ secureAggregation: true, minClients: '70', clientsPerRound: '70', rounds: '1' }, /^--min-clients: the data set has only 60 devices, fewer than the secure-aggregation cohort size \(70\)$/);
    // Devices with one training item cannot send: a cohort could never fill.
    const few = join(dir, 'few.csv');
    const rows = ['user,item,t'];
    for (let u = 0; u < 30; u++) for (let t = 0; t < 5; t++) rows.push(`u${u},i${(u + t) % 8},${t}`);
    for (let u = 30; u < 70; u++) rows.push(`u${u},i${u % 8},0`);
    await writeFile(few, rows.join('\n') + '\n');
    await refused({ data: few, secureAggregation: true, minClients: '10', clientsPerRound: '40', rounds: '1' }, /^--clients-per-round: a round under secure aggregation needs 40 devices that can send, but only 30 of the data set's 70 have the 2 distinct training items/);
    await refused({ data: few, secureAggregation: true, minClients: '35', clientsPerRound: '35', rounds: '1' }, /^--min-clients: a round under secure aggregation needs 35 devices/);
    // Without secure aggregation the updates of later rounds count too; a run that never publishes says so.
    const { lines, err } = await run({ minClients: '100', clientsPerRound: '20', rounds: '1' });
    assert.equal(lines.at(-1)!.version, 0);
    assert.match(err, /warning: no round was published \(the model is still version 0\): the server publishes once 100 updates are in, and this run sent 20/);
  });

  it('--help says what --server memory is: the app called in process, no sockets', () => {
    const program = new Command();
    register(program);
    const help = program.commands.find((c) => c.name() === 'simulate')!.helpInformation().replace(/\s+/g, ' ');
    assert.match(help, /--server <where> memory \(the server's app, in memory, called in process: no sockets, no port\)/);
    assert.doesNotMatch(help, /127\.0\.0\.1/);
  });

  it('refuses an empty or blank numeric value naming its flag, not reading it as 0 (σ = 0, seed 0)', async () => {
    // Number('') and Number(' ') are 0: --noise ' ' --budget none ran without DP; --noise '' was blamed on --budget.
    const numeric: Array<[keyof SimulateCommandOptions, string]> = [
      ['rounds', '--rounds'], ['clientsPerRound', '--clients-per-round'], ['clip', '--clip'], ['noise', '--noise'], ['budget', '--budget'], ['delta', '--delta'],
      ['dim', '--dim'], ['minClients', '--min-clients'], ['seed', '--seed'], ['centralEpochs', '--central-epochs'], ['evalEvery', '--eval-every'],
      ['evalUsers', '--eval-users'], ['k', '--k'], ['recency', '--recency'], ['localEpochs', '--local-epochs'], ['localRate', '--local-rate'],
      ['localAccumulator', '--local-accumulator'], ['localNegatives', '--local-negatives'], ['localContext', '--local-context'], ['trainRows', '--train-rows'],
      ['biasScale', '--bias-scale'], ['serverLr', '--server-lr'],
    ];
    for (const [key, flag] of numeric) {
      for (const blank of ['', ' ']) {
        await assert.rejects(run({ budget: 'none', [key]: blank }), (e: unknown) => isValidationError(e) && e.field === flag && new RegExp(`^${flag}: must be .+, got '${blank}'$`).test((e as Error).message), `${flag} '${blank}'`);
      }
    }
    for (const [key, flag] of [['secaggBits', '--secagg-bits'], ['secaggRange', '--secagg-range'], ['secaggDegree', '--secagg-degree'], ['secaggSurvivors', '--secagg-survivors'], ['dropout', '--dropout']] as const) {
      await assert.rejects(run({ secureAggregation: true, [key]: ' ' }), (e: unknown) => isValidationError(e) && e.field === flag, flag);
    }
    await assert.rejects(run({ aggregator: 'subspace', freezeBiases: true, subspaceScale: '' }), (e: unknown) => isValidationError(e) && e.field === '--subspace-scale');
    await assert.rejects(run({ robust: 'trimmed-mean', trim: '' }), (e: unknown) => isValidationError(e) && e.field === '--trim');
  });

  it('--write-catalog naming the --data file is refused before the data set loads, and the file is left as it was', async () => {
    const { copyFile, readFile, symlink } = await import('node:fs/promises');
    const data = join(dir, 'own.csv');
    await copyFile(csv, data);
    const before = await readFile(data, 'utf8');
    const link = join(dir, 'own-link.csv');
    await symlink(data, link);
    for (const out of [data, `${dir}/./own.csv`, link]) {
      await assert.rejects(
        run({ data, writeCatalog: out }),
        (e: unknown) => isValidationError(e) && e.field === '--write-catalog' && /^--write-catalog: is the same file as --data \(.*own\.csv\); refusing to overwrite an input$/.test((e as Error).message),
        out,
      );
    }
    assert.equal(await readFile(data, 'utf8'), before);
  });

  it('refuses --noise 0 with a finite budget, and bad values, naming the option', async () => {
    await assert.rejects(run({ noise: '0' }), (e: unknown) => isValidationError(e) && /--budget/.test((e as Error).message));
    await assert.rejects(run({ rounds: '0' }), (e: unknown) => isValidationError(e) && /--rounds/.test((e as Error).message));
    await assert.rejects(run({ server: 'ftp://x' }), (e: unknown) => isValidationError(e) && /--server/.test((e as Error).message));
    await assert.rejects(run({ backend: 'webgpu' }), (e: unknown) => isValidationError(e) && /--backend/.test((e as Error).message));
  });
});
