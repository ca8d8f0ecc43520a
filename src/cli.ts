#!/usr/bin/env node
/**
 * The `localrec` command. Each sub-command lives in its own module and is imported only when it
 * runs, so `localrec --help` stays fast and loads no TensorFlow.js or SQLite.
 */
import { Command } from 'commander';

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

export async function main(argv = process.argv): Promise<void> {
  for (const r of await Promise.all(registrations)) r.register(program);
  await program.parseAsync(argv);
}

const isEntry = import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/localrec');
if (isEntry) {
  main().catch((e: unknown) => {
    const err = e as Error;
    process.stderr.write(`localrec: ${err.name ?? 'Error'}: ${err.message}\n`);
    process.exit(1);
  });
}
