/**
 * The body of `localrec eval`, apart from commander so that tests can call it with plain options
 * and capture the JSON lines.
 */
import { basename } from 'node:path';
import { ValidationError } from '../errors.js';
import { numberFlag, seedFlag } from '../number-flag.js';
import { loadCsv, type CsvMapping } from './csv-loader.js';
import { checkChoice, FORMATS, paramFlags, PROTOCOLS, type EvalCommandOptions } from './eval-command.js';
import { loadLinesSplit } from './lines-split.js';
import { checkSameTimeHasTime, checkTestUsers, looSplit, SAME_TIME } from './loo-split.js';
import { MAX_K } from './top-k.js';
import { MODELS, planModels } from './model-registry.js';
import { csvMappingFromFlags } from './presets.js';
import { Progress, type ProgressSink } from './progress.js';
import { evaluateModel, type EvalResult } from './runner.js';
import type { Split } from './split.js';

/**
 * @example
 * ```ts
 * const lines: string[] = [];
 * await runEval({ format: 'lines', train: 'a.txt', test: 'b.txt', k: '10', seed: '1', models: 'popular', filter: [] },
 *   { stdout: (s) => lines.push(s), stderr: { write: () => true } });
 * ```
 */
export async function runEval(
  opts: EvalCommandOptions,
  io: { stdout: (line: string) => void; stderr: ProgressSink },
): Promise<EvalResult[]> {
  const format = checkChoice(opts.format, FORMATS, '--format');
  const protocol = checkChoice(opts.protocol ?? (format === 'lines' ? 'given' : 'loo'), PROTOCOLS, '--protocol');
  const sameTime = opts.sameTime === undefined ? undefined : checkChoice(opts.sameTime, SAME_TIME, '--same-time');
  if (sameTime !== undefined && protocol !== 'loo') throw new ValidationError('--same-time', `is for --protocol loo, got '${protocol}'`);
  const k = numberFlag('--k', opts.k, (x) => Number.isInteger(x) && x >= 1 && x <= MAX_K, `an integer from 1 to ${MAX_K}`);
  const seed = seedFlag('--seed', String(opts.seed));
  // Validate every model spec before spending minutes on loading.
  const plans = planModels(opts.models, paramFlags(opts));
  // A flag no listed model reads would be checked and then ignored: a typo in --models or a flag
  // for another model, with nothing said.
  for (const flag of opts.typedParams ?? []) {
    if (!plans.some((p) => MODELS[p.name]!.params.includes(flag) && MODELS[p.name]!.specOnly?.[flag] === undefined)) {
      const readers = Object.entries(MODELS).filter(([, m]) => m.params.includes(flag) && m.specOnly?.[flag] === undefined).map(([n]) => n);
      const inSpec = Object.entries(MODELS).filter(([, m]) => m.specOnly?.[flag] !== undefined).map(([n]) => n);
      const also = inSpec.length ? `; ${inSpec.join(', ')} take it in the spec only (${inSpec[0]}:${flag}=…)` : '';
      throw new ValidationError(`--${flag}`, `no model in --models (${plans.map((p) => p.label).join(', ')}) uses it; it is for ${readers.join(', ')}${also}`);
    }
  }
  const rated = plans.find((p) => p.params.event === 'rating');
  if (rated && (format === 'lines' || !opts.weight)) {
    // Every row would weigh 1, i.e. a 1-star rating, which counts against the item: the history
    // would push its items down and the figures would be popularity's, with nothing said.
    throw new ValidationError(format === 'lines' ? '--models' : '--weight', `${rated.label} reads each row's weight as its stars; ${format === 'lines' ? '--format lines has no weights' : 'name the rating column with --weight'}`);
  }
  const weighted = plans.find((p) => p.params.confidence === 'weight');
  if (weighted && (format === 'lines' || !opts.weight)) {
    // Every row would weigh 1: confidence=none under another name, with nothing said.
    const inSpec = /:confidence=weight(:|$)/.test(weighted.label);
    const what = inSpec ? weighted.label : `${weighted.label} with --confidence weight`;
    throw new ValidationError(
      format === 'lines' ? (inSpec ? '--models' : '--confidence') : '--weight',
      `${what} weighs each row by its weight; ${format === 'lines' ? '--format lines has no weights' : 'name the weight column with --weight'}`,
    );
  }
  const progress = new Progress(io.stderr);

  let split: Split;
  let data: string;
  let mapping: CsvMapping | undefined;
  const t0 = performance.now();
  // A flag of the other format would be ignored without a word.
  if (format === 'lines') {
    const csvFlag = (['data', 'user', 'item', 'time', 'weight'] as const).find((f) => opts[f] !== undefined) ?? (opts.filter?.length ? 'filter' : undefined);
    if (csvFlag) throw new ValidationError(`--${csvFlag}`, 'is for --format retail|csv; --format lines reads --train and --test');
  }
  if (format !== 'lines' && (opts.train || opts.test)) throw new ValidationError(opts.train ? '--train' : '--test', `is for --format lines; --format ${format} reads --data`);
  if (format === 'lines') {
    if (protocol !== 'given') throw new ValidationError('--protocol', `--format lines supports only 'given', got '${protocol}'`);
    if (!opts.train || !opts.test) throw new ValidationError(opts.train ? '--test' : '--train', 'is required with --format lines');
    data = basename(opts.train);
    split = await loadLinesSplit(opts.train, opts.test);
  } else {
    if (protocol !== 'loo') throw new ValidationError('--protocol', `--format ${format} supports only 'loo', got '${protocol}'`);
    if (!opts.data) throw new ValidationError('--data', `is required with --format ${format}`);
    data = basename(opts.data);
    mapping = csvMappingFromFlags(format, opts);
    checkSameTimeHasTime(sameTime, mapping.time);
    const log = await loadCsv(opts.data, mapping, (rows) => progress.update(`loading ${data} (${rows} rows)`, 0));
    // Whether times were read comes from the flags: a time column of zeros is one (every event at once).
    split = looSplit(log, 3, { sameTime, hasTime: mapping.time !== undefined });
    checkTestUsers(split, '--data', 3, sameTime);
  }
  // Every line carries the settings that change its figures (the model's own are in params), so
  // that a `--same-time drop` line or another seed cannot pass for the default's.
  const settings = {
    format,
    protocol,
    sameTime: protocol === 'loo' ? (sameTime ?? 'keep') : null,
    seed,
    timeColumn: mapping?.time ?? null,
    weightColumn: mapping?.weight ?? null,
    filters: [...(opts.filter ?? [])],
  } satisfies Partial<EvalResult>;
  progress.log(
    `${data}: ${split.userIds.length} users, ${split.itemIds.length} items, ${split.train.items.length} training pairs, ` +
      `${split.testUsers.length} test users (${protocol}${sameTime ? `, same-time ${sameTime}` : ''}, loaded in ${Math.round(performance.now() - t0)} ms)`,
  );

  const results: EvalResult[] = [];
  for (const plan of plans) {
    const model = MODELS[plan.name].create(plan.params, seed);
    // Progress named by the spec as given (`ease:recency=1`, then `ease`), as the result line is.
    const named = (stage: string) => (stage.startsWith(`${model.name} `) ? `${plan.label}${stage.slice(model.name.length)}` : stage);
    const r = await evaluateModel(model, split, { k, data, onProgress: (stage, f) => progress.update(named(stage), f) });
    progress.done();
    const line: EvalResult = { ...r, model: plan.label, params: plan.params, ...settings };
    results.push(line);
    io.stdout(`${JSON.stringify(line)}\n`);
  }
  return results;
}
