#!/usr/bin/env node
/**
 * The `localrec` command. Each sub-command lives in its own module and is imported only when it
 * runs, so `localrec --help` stays fast and loads no TensorFlow.js or SQLite.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { ValidationError } from './errors.js';

const program = new Command();
program
  .name('localrec')
  .description('On-device recommendations: evaluation, neighbour tables, federated aggregation server, simulation, privacy calibration, offers.')
  .version('0.1.0');

// Sub-commands register themselves here: `import('./x/y-command.js').then(m => m.register(program))`
// would make --help incomplete, so each module exports `register(program)` and is imported eagerly
// but keeps its heavy imports inside the action.
const registrations: Array<Promise<{ register(p: Command): void }>> = [
  import('./eval/eval-command.js'),
  import('./eval/neighbors-command.js'),
  import('./server/serve-command.js'),
  import('./offers/offers-command.js'),
  import('./federated/simulate-command.js'),
  import('./federated/privacy-command.js'),
];

/** The sub-command that ran, so that an error can be told in its flags' words. */
let ran: Command | undefined;
program.hook('preAction', (_program, action) => {
  ran = action;
  refuseEmptyValues(action);
});

/**
 * Refuses a flag given an empty or blank value (`--write-catalog ''`, `--time "$UNSET"`): commands
 * test a string flag for truth, so an empty one ran as if it were not given (a whole simulation
 * instead of writing the catalog, file order instead of the time column). No flag takes an empty
 * value. Checked for `command` and the commands above it, for values typed or from the
 * environment (defaults are the program's own); each value of a repeatable or variadic flag.
 *
 * @example
 * ```ts
 * refuseEmptyValues(simulate); // with --write-catalog '': throws "--write-catalog: must not be empty"
 * ```
 */
export function refuseEmptyValues(command: Command): void {
  for (let c: Command | null = command; c; c = c.parent) {
    for (const option of c.options) {
      const key = option.attributeName();
      const source = c.getOptionValueSource(key);
      if (source !== 'cli' && source !== 'env') continue;
      const value: unknown = c.getOptionValue(key);
      const values = Array.isArray(value) ? (value as unknown[]) : [value];
      if (values.some((v) => typeof v === 'string' && v.trim() === '')) throw new ValidationError(option.long ?? option.flags, 'must not be empty');
    }
  }
}

export async function main(argv = process.argv): Promise<void> {
  for (const r of await Promise.all(registrations)) r.register(program);
  await program.parseAsync(argv);
}

/**
 * The library names a bad option `options.minClients`; on the command line the user typed
 * `--min-clients`. Rewrites the field when the sub-command has a flag for that option.
 */
export function inFlagTerms(message: string, command: Command | undefined): string {
  // The longest dotted path first: options.secureAggregation.degree is --secagg-degree.
  const m = /^options\.([A-Za-z]+(?:\.[A-Za-z]+)*)(?=[:[ ])/.exec(message);
  if (!m) return message;
  const parts = m[1]!.split('.');
  for (let n = parts.length; n > 0; n--) {
    const path = parts.slice(0, n).join('.');
    const attribute = FLAG_FOR_OPTION[path] ?? path;
    const flag = command?.options.find((o) => o.attributeName() === attribute)?.long;
    if (flag) return flag + message.slice('options.'.length + path.length);
  }
  return message;
}

/** Library option paths whose flag is named otherwise (the flag's attribute name). */
const FLAG_FOR_OPTION: Readonly<Record<string, string>> = {
  'secureAggregation.bits': 'secaggBits',
  'secureAggregation.range': 'secaggRange',
  'secureAggregation.degree': 'secaggDegree',
  'secureAggregation.minSurvivors': 'secaggSurvivors',
  'secureAggregation.timeoutMs': 'cohortTimeout',
  'secureAggregation.uploadTimeoutMs': 'uploadTimeout',
  trimFraction: 'trim',
  noiseMultiplier: 'noise',
  serverLearningRate: 'serverLr',
  'secureAggregation.cohortSize': 'minClients',
  corsOrigins: 'corsOrigin',
};

/** True when this module is the program node runs (also through a symlink or a path with spaces). */
function isEntry(): boolean {
  const argv1 = process.argv[1];
  if (!argv1) return false;
  try {
    return realpathSync(fileURLToPath(import.meta.url)) === realpathSync(argv1);
  } catch {
    return false;
  }
}

/**
 * Handles errors writing to `stdout`. EPIPE means the reader has gone (`localrec eval … | head -n1`):
 * for a command that prints its results (`longRunning` false) nothing more can be said, so it stops
 * quietly with exit code 0, as other Unix tools do (Node ignores SIGPIPE, and an unhandled 'error'
 * event would print a stack trace). A server (`longRunning`) has more to do than print: it says so
 * on stderr once and keeps serving; a supervisor would take an exit, code 0 or not, for a shutdown.
 * Any other error is reported and a printing command fails.
 */
export function stopOnClosedStdout(stdout: NodeJS.WriteStream, longRunning = false): void {
  let told = false;
  stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (longRunning) {
      if (!told) process.stderr.write(`localrec: cannot write to stdout (${e.code ?? e.message}); carrying on without it\n`);
      told = true;
      return;
    }
    if (e.code === 'EPIPE') process.exit(0);
    process.stderr.write(`localrec: cannot write to stdout: ${e.message}\n`);
    process.exit(1);
  });
}

if (isEntry()) {
  // The subcommand: the first argument that is not a flag (`localrec serve --port 1`).
  stopOnClosedStdout(process.stdout, process.argv.slice(2).find((a) => !a.startsWith('-')) === 'serve');
  main().catch((e: unknown) => {
    const err = e as Error;
    process.stderr.write(`localrec: ${err.name ?? 'Error'}: ${inFlagTerms(String(err.message), ran)}\n`);
    process.exit(1);
  });
}
