/**
 * `localrec eval`: offline evaluation of several models side by side on one data set, one JSON
 * line per model on stdout, progress on stderr.
 *
 * @example
 * ```sh
 * localrec eval --data ../shared/data/online-retail/online-retail.csv.gz --format retail
 * localrec eval --data ratings.csv --format csv --user userId --item movieId --time timestamp
 * localrec eval --train train.txt --test test.txt --format lines --k 20
 * ```
 */
import type { CsvFlags } from './presets.js';
import type { Command } from 'commander';
import { ValidationError } from '../errors.js';
import { PARAMS } from './model-registry.js';

const FORMATS = ['retail', 'csv', 'lines'] as const;
const PROTOCOLS = ['loo', 'given'] as const;

/** Column flags (`--user --item --time --weight --filter`) are shared with the other data commands. */
export interface EvalCommandOptions extends CsvFlags {
  data?: string;
  format: string;
  train?: string;
  test?: string;
  k: string;
  protocol?: string;
  sameTime?: string;
  seed: string;
  models: string;
  /**
   * The model flags (`PARAMS`, dashed) the user typed, as opposed to their defaults: each must be
   * used by a listed model, or it is refused (set by the CLI; absent, nothing is checked).
   */
  typedParams?: string[];
  [param: string]: unknown;
}

/** Where the command writes: JSON lines to `stdout`, progress to `stderr` (swappable for tests). */
export interface EvalIo {
  stdout: (line: string) => void;
  stderr: { isTTY?: boolean; write(s: string): unknown };
}

const PROCESS_IO: EvalIo = { stdout: (s) => process.stdout.write(s), stderr: process.stderr };

export function register(program: Command, io: EvalIo = PROCESS_IO): void {
  const cmd = program
    .command('eval')
    .description('Evaluate recommenders offline (HR, NDCG, Recall@k, coverage), one JSON line per model on stdout.')
    .option('--data <file>', 'event CSV (optionally gzipped) for --format retail|csv')
    .option('--format <format>', `input format: ${FORMATS.join('|')}`, 'csv')
    .option('--user <column>', 'csv: user id column')
    .option('--item <column>', 'csv: item id column')
    .option('--time <column>', 'csv: time column (number or date); file order when absent')
    .option('--weight <column>', 'csv: confidence column (quantity, rating)')
    .option('--filter <clause>', "csv: keep rows matching COLUMN OP VALUE, OP one of = != ^= !^= > >= < <= (repeatable), e.g. 'quantity>0'", collect, [])
    .option('--train <file>', 'lines: training file, `user item item …` per line')
    .option('--test <file>', 'lines: test file, same layout')
    .option('--k <k>', 'list length', '10')
    .option('--protocol <protocol>', `${PROTOCOLS.join('|')} (default: loo for csv/retail, given for lines)`)
    .option('--same-time <mode>', "loo: events at the held-out item's timestamp before it in file order: keep (train on them, default) | drop (train on strictly earlier events)")
    .option('--seed <seed>', 'seed for models that sample', '1')
    .option('--models <list>', 'comma-separated models, each `name[:param=value…]`: popular, itemknn, ease, sparse-ease, ials, localrec (the SDK with a neighbour table), factors (the SDK’s factor model)', 'popular,itemknn,localrec');
  for (const [flag, spec] of Object.entries(PARAMS)) cmd.option(`--${flag} <value>`, spec.description, spec.default);
  cmd.action(async (opts: EvalCommandOptions) => {
    const { runEval } = await import('./run-eval.js');
    // commander fills every model flag with its default: only the source says which were typed.
    const typedParams = Object.keys(PARAMS).filter((flag) => cmd.getOptionValueSource(flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())) === 'cli');
    await runEval({ ...opts, typedParams }, io);
  });
}

function collect(value: string, previous: string[]): string[] {
  return previous.concat([value]);
}

/** Flag values keyed by their dashed names, as {@link planModels} expects. */
export function paramFlags(opts: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const flag of Object.keys(PARAMS)) {
    const camel = flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    const v = opts[camel];
    if (v !== undefined) out[flag] = String(v);
  }
  return out;
}

export function checkChoice<T extends string>(value: string, allowed: readonly T[], option: string): T {
  if (!(allowed as readonly string[]).includes(value)) {
    throw new ValidationError(option, `must be one of ${allowed.join(', ')}, got '${value}'`);
  }
  return value as T;
}

export { FORMATS, PROTOCOLS };
