/**
 * `localrec simulate`: federated training of the shipped model with every user of a data set as a
 * simulated device (real client code, real server), one JSON line per evaluated round on stdout,
 * progress on stderr, and a last line with the final metrics and the ε spent.
 *
 * @example
 * ```sh
 * localrec simulate --data ../shared/data/online-retail/online-retail.csv.gz --format retail
 * localrec simulate --data ratings.csv --format csv --user userId --item movieId --time timestamp --noise 2 --central
 * ```
 */
import type { CsvFlags } from '../eval/presets.js';
import type { Command } from 'commander';
import { basename } from 'node:path';
import { ValidationError } from '../errors.js';
import { checkChoice } from '../eval/eval-command.js';
import { checkSameTimeHasTime, SAME_TIME } from '../eval/loo-split.js';
import { MAX_K } from '../eval/top-k.js';
import { numberFlag, seedFlag } from '../number-flag.js';
import { checkOutputFile, writeOutputFile } from '../output-file.js';
import { AGGREGATOR_NAMES, isAggregatorName } from '../server/aggregate.js';
import { noiseForSyncs } from './dp.js';
import { checkSubspaceFlags } from './subspace.js';

/** Column flags (`--user --item --time --weight --filter`) are shared with the other data commands. */
export interface SimulateCommandOptions extends CsvFlags {
  data?: string;
  format: string;
  rounds: string;
  clientsPerRound: string;
  clip: string;
  noise: string;
  budget: string;
  delta: string;
  dim: string;
  minClients: string;
  seed: string;
  sameTime?: string;
  server: string;
  central?: boolean;
  centralEpochs: string;
  evalEvery: string;
  evalUsers: string;
  k: string;
  recency: string;
  localEpochs: string;
  localRate?: string;
  localAccumulator?: string;
  localNegatives?: string;
  localContext?: string;
  aggregator: string;
  subspaceScale?: string;
  robust?: string;
  trim?: string;
  serverLr?: string;
  secureAggregation?: boolean;
  denoise?: string;
  biasScale?: string;
  trainRows?: string;
  freezeBiases?: boolean;
  secaggBits?: string;
  secaggRange?: string;
  secaggDegree?: string;
  secaggSurvivors?: string;
  dropout?: string;
  init: string;
  backend: string;
  writeCatalog?: string;
}

export interface SimulateIo {
  stdout: (line: string) => void;
  stderr: { isTTY?: boolean; write(s: string): unknown };
}

const PROCESS_IO: SimulateIo = { stdout: (s) => process.stdout.write(s), stderr: process.stderr };

export function register(program: Command, io: SimulateIo = PROCESS_IO): void {
  program
    .command('simulate')
    .description('Federated simulation: every user of a data set is a device running the real client against a real server; JSON lines on stdout.')
    .option('--data <file>', 'event CSV (optionally gzipped)')
    .option('--format <format>', 'input format: retail|csv', 'csv')
    .option('--user <column>', 'csv: user id column')
    .option('--item <column>', 'csv: item id column')
    .option('--time <column>', 'csv: time column (number or date); file order when absent')
    .option('--weight <column>', 'csv: confidence column')
    .option('--filter <clause>', "csv: keep rows matching COLUMN OP VALUE (repeatable), e.g. 'quantity>0'", (v: string, p: string[]) => p.concat([v]), [])
    .option('--rounds <n>', 'simulated rounds', '20')
    .option('--clients-per-round <m>', 'devices sampled per round (seeded)', '100')
    .option('--clip <C>', 'L2 clip bound of an update', '1')
    .option('--noise <sigma>', "noise multiplier σ (noise std σ·C per coordinate); 'auto': the smallest σ at which a device can sync in every one of --rounds within --budget (localrec privacy --syncs)", '1')
    .option('--budget <epsilon>', "each device's ε budget (δ = --delta); 'none' for no limit (needed with --noise 0)", '8')
    .option('--delta <delta>', 'δ of the (ε, δ) figures', '1e-5')
    .option('--dim <d>', 'embedding size (16 keeps a 4,000-item update at 7 bits within 64 KiB)', '16')
    .option('--min-clients <n>', 'server: updates per aggregation (k-anonymity floor)', '10')
    .option('--seed <seed>', 'seed for device sampling, initialization and local training', '1')
    .option('--same-time <mode>', "events at a test user's held-out timestamp before it in file order: keep (train on them, default) | drop (as localrec eval)")
    .option('--server <where>', "memory (the server's app, in memory, called in process: no sockets, no port), sqlite (the same with SQLite in a temp data dir) or the URL of a running `localrec serve`", 'memory')
    .option('--central', 'also train the same model centrally (no DP) and print the ratio')
    .option('--central-epochs <n>', 'epochs of the central model', '4')
    .option('--eval-every <n>', 'evaluate the global model every n rounds', '1')
    .option('--eval-users <n>', 'test users sampled for intermediate evaluations (0 = all; the last line uses all)', '500')
    .option('--k <k>', 'list length', '10')
    .option('--recency <decay>', 'history weight per step back in time when scoring (as localrec eval)', '0.5')
    .option('--local-epochs <n>', 'local training epochs on the device', '2')
    .option('--local-rate <lr>', 'local Adagrad learning rate (default as the shipped model, 0.1)')
    .option('--local-accumulator <a>', "local Adagrad's starting accumulator (default as the shipped model, 1e-6)")
    .option('--local-negatives <n>', 'local sampled negatives per step (default 256)')
    .option('--local-context <n>', 'earlier items forming a target’s context (default 20; also used centrally)')
    .option('--aggregator <name>', 'server: fedavg|fedadam (devices train locally) or subspace (federated subspace iteration: no local training; needs --freeze-biases; docs/FEDERATED.md)', 'fedavg')
    .option('--subspace-scale <c>', 'server, --aggregator subspace: scale of the published factors, personalization against the biases (default 32)')
    .option('--robust <name>', 'server: combine a round per coordinate by mean|trimmed-mean|median (default mean)')
    .option('--trim <fraction>', 'server: trimmed-mean share dropped from each end, in [0, 0.5) (default 0.1)')
    .option('--server-lr <lr>', 'server, --aggregator fedavg: the step along the combined delta (default 1)')
    .option('--denoise <how>', "server: 'rows' shrinks each item row of a round's delta for the known noise (James–Stein; post-processing); 'directions' (subspace) weights each published direction by how far it stands above the noise; or 'none'", 'none')
    .option('--train-rows <n>', 'server: federated training updates only the n most popular items (the rest keep their initial values); uploads shrink with it (default all)')
    .option('--freeze-biases', "server: keep the initial popularity biases (the shop's own sales counts) and federate the factors only")
    .option('--secure-aggregation', 'server and devices: cohorts of --min-clients with masked uploads and distributed noise (each device adds σC/√K)')
    .option('--secagg-bits <b>', 'secure aggregation: bits per coordinate (default the widest within 64 KiB)')
    .option('--secagg-range <r>', "secure aggregation: a cohort sum's coordinate must stay within ±r (default K·C + 8·C·max(1, σ·√(K/t)) when the bits make its rounding negligible or with --aggregator subspace, else 8·C·max(1, σ·√(K/t)); t = --secagg-survivors, K without it)")
    .option('--secagg-degree <d>', 'secure aggregation: mask neighbours per device, even (default min(16, K − 1 rounded up))')
    .option('--secagg-survivors <t>', 'secure aggregation: a cohort missing at most K − t uploads is recovered from the rest (devices then add σC/√t each); default K (no recovery)')
    .option('--dropout <p>', 'secure aggregation, in-process server: this share of each cohort loses its connection at upload (default 0)')
    .option('--backend <name>', 'TensorFlow.js backend for training and scoring: wasm|cpu (same figures; cpu is slower)', 'wasm')
    .option('--init <init>', 'initial global model: popularity (biases from item counts the shop knows) | flat', 'popularity')
    .option('--bias-scale <a>', 'initial biases a·ln(1 + count) instead of ln(1 + count) / max; with --freeze-biases, about 0.5 is the scale a trained model gives them (docs/FEDERATED.md)')
    .option('--write-catalog <file>', "write the data set's catalog (ids, training counts) for `localrec serve --catalog` and exit; for --server URL")
    .action(async (opts: SimulateCommandOptions) => {
      await runSimulate(opts, io);
    });
}

/** A numeric flag's value (an empty or blank one is refused, not read as 0). */
const num = numberFlag;
const posInt = (name: string, v: string) => num(name, v, (x) => Number.isInteger(x) && x > 0, 'a positive integer');
/** A whole number in [min, max]: the ranges the training and accounting code enforce, checked before the run. */
const intIn = (name: string, v: string, min: number, max: number) => num(name, v, (x) => Number.isInteger(x) && x >= min && x <= max, `an integer from ${min} to ${max}`);

/** The body of the command, apart from commander (tests call it with plain options). */
export async function runSimulate(opts: SimulateCommandOptions, io: SimulateIo): Promise<void> {
  const format = opts.format;
  if (format !== 'retail' && format !== 'csv') throw new ValidationError('--format', `must be retail or csv, got '${format}'`);
  if (!opts.data) throw new ValidationError('--data', 'is required');
  const rounds = intIn('--rounds', opts.rounds, 1, 1_000_000);
  const clientsPerRound = posInt('--clients-per-round', opts.clientsPerRound);
  const clip = num('--clip', opts.clip, (x) => Number.isFinite(x) && x > 0, 'a number > 0');
  const budget = opts.budget === 'none' || opts.budget === 'Infinity' ? Infinity : num('--budget', opts.budget, (x) => Number.isFinite(x) && x > 0, "a number > 0 or 'none'");
  const delta = num('--delta', opts.delta, (x) => x > 0 && x < 1, 'in (0, 1)');
  let noiseMultiplier: number;
  if (opts.noise === 'auto') {
    if (!Number.isFinite(budget)) throw new ValidationError('--noise', 'auto needs a finite --budget (it calibrates σ to it)');
    noiseMultiplier = noiseForSyncs(rounds, budget, delta);
    io.stderr.write(`--noise auto: σ = ${noiseMultiplier}, the smallest at which a device can sync in all ${rounds} rounds within ε = ${budget} (δ = ${delta})\n`);
  } else noiseMultiplier = num('--noise', opts.noise, (x) => Number.isFinite(x) && x >= 0, "a number ≥ 0 or 'auto'");
  if (noiseMultiplier === 0 && Number.isFinite(budget)) {
    throw new ValidationError('--budget', "with --noise 0 no finite budget can be kept (ε is unbounded); pass --budget none to simulate without DP");
  }
  const dim = num('--dim', opts.dim, (x) => Number.isInteger(x) && x >= 1 && x <= 64, 'an integer from 1 to 64');
  const minClients = posInt('--min-clients', opts.minClients);
  const seed = seedFlag('--seed', opts.seed);
  const k = intIn('--k', opts.k, 1, MAX_K);
  const evalEvery = posInt('--eval-every', opts.evalEvery);
  const evalUsers = num('--eval-users', opts.evalUsers, (x) => Number.isInteger(x) && x >= 0, 'an integer ≥ 0');
  const sameTime = opts.sameTime === undefined ? undefined : checkChoice(opts.sameTime, SAME_TIME, '--same-time');
  const recencyDecay = num('--recency', opts.recency, (x) => x > 0 && x <= 1, 'in (0, 1]');
  const centralEpochs = intIn('--central-epochs', opts.centralEpochs, 1, 1000);
  const aggregator = opts.aggregator;
  if (!isAggregatorName(aggregator)) {
    throw new ValidationError('--aggregator', `must be ${AGGREGATOR_NAMES.slice(0, -1).join(', ')} or ${AGGREGATOR_NAMES.at(-1)}, got '${aggregator}'`);
  }
  const subspaceScale = opts.subspaceScale === undefined ? undefined : num('--subspace-scale', opts.subspaceScale, (x) => Number.isFinite(x) && x > 0, 'a number > 0');
  checkSubspaceFlags(aggregator, !!opts.freezeBiases, subspaceScale, opts.denoise);
  const robust = opts.robust ?? 'mean';
  if (robust !== 'mean' && robust !== 'trimmed-mean' && robust !== 'median') throw new ValidationError('--robust', `must be mean, trimmed-mean or median, got '${robust}'`);
  const trimFraction = opts.trim === undefined ? undefined : num('--trim', opts.trim, (x) => x >= 0 && x < 0.5, 'in [0, 0.5)');
  if (trimFraction !== undefined && robust !== 'trimmed-mean') throw new ValidationError('--trim', `applies to --robust trimmed-mean only (got ${robust})`);
  const serverLearningRate = opts.serverLr === undefined ? undefined : num('--server-lr', opts.serverLr, (x) => Number.isFinite(x) && x > 0, 'a number > 0');
  if (serverLearningRate !== undefined && aggregator !== 'fedavg') throw new ValidationError('--server-lr', `applies to --aggregator fedavg only (got ${aggregator})`);
  let secureAggregation: boolean | { bits?: number; range?: number; degree?: number; minSurvivors?: number } = false;
  if (opts.secureAggregation) {
    const sa: { bits?: number; range?: number; degree?: number; minSurvivors?: number } = {};
    if (opts.secaggSurvivors !== undefined) sa.minSurvivors = num('--secagg-survivors', opts.secaggSurvivors, (x) => Number.isInteger(x) && x >= 2 && x <= minClients, `an integer 2..--min-clients (${minClients})`);
    if (opts.secaggBits !== undefined) sa.bits = num('--secagg-bits', opts.secaggBits, (x) => Number.isInteger(x) && x >= 2 && x <= 32, 'an integer 2..32');
    if (opts.secaggRange !== undefined) sa.range = num('--secagg-range', opts.secaggRange, (x) => Number.isFinite(x) && x > 0, 'a number > 0');
    if (opts.secaggDegree !== undefined) sa.degree = num('--secagg-degree', opts.secaggDegree, (x) => Number.isInteger(x) && x >= 2 && x % 2 === 0, 'an even integer ≥ 2');
    secureAggregation = sa;
    if (clientsPerRound % minClients !== 0) throw new ValidationError('--clients-per-round', `must be a multiple of --min-clients (${minClients}, the cohort size) with --secure-aggregation, got ${clientsPerRound}`);
  } else {
    const flags: Array<[string, unknown]> = [['--secagg-bits', opts.secaggBits], ['--secagg-range', opts.secaggRange], ['--secagg-degree', opts.secaggDegree], ['--secagg-survivors', opts.secaggSurvivors], ['--dropout', opts.dropout]];
    const given = flags.find(([, v]) => v !== undefined);
    if (given) throw new ValidationError(given[0], 'is a secure-aggregation option: it needs --secure-aggregation');
  }
  const denoise = opts.denoise ?? 'none';
  if (denoise !== 'none' && denoise !== 'rows' && denoise !== 'directions') throw new ValidationError('--denoise', `must be none, rows or directions, got '${denoise}'`);
  const trainRows = opts.trainRows === undefined ? undefined : posInt('--train-rows', opts.trainRows);
  const backend = opts.backend;
  if (backend !== 'wasm' && backend !== 'cpu') throw new ValidationError('--backend', `must be wasm or cpu, got '${backend}'`);
  const init = opts.init;
  if (init !== 'popularity' && init !== 'flat') throw new ValidationError('--init', `must be popularity or flat, got '${init}'`);
  const biasScale = opts.biasScale === undefined ? undefined : num('--bias-scale', opts.biasScale, (x) => Number.isFinite(x) && x > 0, 'a number > 0');
  if (biasScale !== undefined && init !== 'popularity') throw new ValidationError('--bias-scale', 'needs --init popularity (it scales the popularity biases)');
  const localTrain: Record<string, number> = { epochs: intIn('--local-epochs', opts.localEpochs, 1, 1000) };
  if (opts.localRate !== undefined) localTrain.learningRate = num('--local-rate', opts.localRate, (x) => x > 0 && x <= 10, 'in (0, 10]');
  if (opts.localAccumulator !== undefined) localTrain.initialAccumulator = num('--local-accumulator', opts.localAccumulator, (x) => x >= 1e-12 && x <= 100, 'in [1e-12, 100]');
  if (opts.localNegatives !== undefined) localTrain.negatives = intIn('--local-negatives', opts.localNegatives, 0, 100_000);
  if (opts.localContext !== undefined) localTrain.maxContext = intIn('--local-context', opts.localContext, 1, 1000);

  const dropout = opts.dropout === undefined ? undefined : num('--dropout', opts.dropout, (x) => x >= 0 && x < 1, 'a share in [0, 1)');
  // Checked before the data set loads (that can take a minute): the server's rules between the
  // round options (in-process servers; a --server URL has its own config), where the output goes,
  // which server.
  if (opts.server === undefined || opts.server === 'memory' || opts.server === 'sqlite') {
    const { checkRoundOptions } = await import('../server/index.js');
    checkRoundOptions({ minClients, robust, ...(trimFraction !== undefined ? { trimFraction } : {}), secureAggregation: !!opts.secureAggregation });
  }
  if (opts.writeCatalog) checkOutputFile(opts.writeCatalog, '--write-catalog', { '--data': opts.data });
  if (opts.server !== undefined) await checkServerFlag(opts.server);

  const { loadCsv } = await import('../eval/csv-loader.js');
  const { checkTestUsers, looSplit } = await import('../eval/loo-split.js');
  const { csvMappingFromFlags } = await import('../eval/presets.js');
  const { Progress } = await import('../eval/progress.js');
  const { simulate, catalogOf } = await import('./simulate.js');

  const mapping = csvMappingFromFlags(format, opts);
  checkSameTimeHasTime(sameTime, mapping.time);

  const progress = new Progress(io.stderr);
  const data = basename(opts.data);
  const t0 = performance.now();
  const log = await loadCsv(opts.data, mapping, (rows) => progress.update(`loading ${data} (${rows} rows)`, 0));
  // Whether times were read comes from the flags: a time column of zeros is one (every event at once).
  const split = looSplit(log, 3, { sameTime, hasTime: mapping.time !== undefined });
  progress.log(
    `${data}: ${split.userIds.length} users (devices), ${split.itemIds.length} items, ${split.testUsers.length} test users (loo${sameTime ? `, same-time ${sameTime}` : ''}, loaded in ${Math.round(performance.now() - t0)} ms)`,
  );
  if (opts.writeCatalog) {
    await writeOutputFile(opts.writeCatalog, JSON.stringify(catalogOf(split)), '--write-catalog');
    progress.log(`wrote ${split.itemIds.length} items to ${opts.writeCatalog}`);
    return;
  }
  // A run that tests nobody would report metrics of zero and exit 0 (as `localrec eval` refuses).
  checkTestUsers(split, '--data', 3, sameTime);
  // The data settings that change the figures, on the last line with the server's and the run's.
  const settings = { seed, sameTime: sameTime ?? 'keep', recency: recencyDecay, timeColumn: mapping.time ?? null, filters: [...opts.filter] };
  await simulate(split, {
    rounds,
    clientsPerRound,
    clip,
    noiseMultiplier,
    budget,
    delta,
    dim,
    minClients,
    seed,
    server: opts.server,
    central: opts.central ? { epochs: centralEpochs } : false,
    evalEvery,
    evalUsers,
    k,
    weighting: { recencyDecay, confidence: 'none' },
    localTrain,
    aggregator,
    ...(subspaceScale !== undefined ? { subspaceScale } : {}),
    robust,
    ...(trimFraction !== undefined ? { trimFraction } : {}),
    ...(serverLearningRate !== undefined ? { serverLearningRate } : {}),
    ...(secureAggregation ? { secureAggregation } : {}),
    ...(dropout !== undefined ? { dropout } : {}),
    denoise,
    ...(trainRows !== undefined ? { trainRows } : {}),
    ...(opts.freezeBiases ? { trainBiases: false } : {}),
    init,
    ...(biasScale !== undefined ? { biasScale } : {}),
    backend,
    data,
    onLine: (line) => {
      progress.done();
      io.stdout(`${JSON.stringify('final' in line ? { ...line, ...settings } : line)}\n`);
    },
    onProgress: (stage, f) => progress.update(stage, f),
    log: (m) => {
      // Published versions are in the JSON lines; with --denoise directions their weights are worth a look.
      if (!m.startsWith('server: published') || m.includes('direction weights')) progress.log(m);
    },
  });
  progress.done();
}

/** `--server`: memory, sqlite, or the URL of a running `localrec serve` that answers /v1/health. */
async function checkServerFlag(server: string): Promise<void> {
  if (server === 'memory' || server === 'sqlite') return;
  if (!/^https?:\/\//.test(server)) throw new ValidationError('--server', `must be memory, sqlite or an http(s) URL, got '${server}'`);
  let res: Response;
  try {
    res = await fetch(`${server.replace(/\/+$/, '')}/v1/health`, { signal: AbortSignal.timeout(10_000) });
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    throw new ValidationError('--server', `cannot reach ${server} (${cause?.code ?? cause?.message ?? (e as Error).message})`);
  }
  if (!res.ok) throw new ValidationError('--server', `${server}/v1/health answered HTTP ${res.status}: is it a localrec server?`);
}
