/**
 * `localrec neighbors`: builds the neighbour table a shop publishes for its shoppers' devices, from
 * the shop's own order log (the same loaders and presets as `localrec eval`). Writes the `LRN1`
 * file (docs/NEIGHBORS.md) and prints one JSON line describing it; progress goes to stderr.
 *
 * @example
 * ```sh
 * localrec neighbors --data orders.csv.gz --format retail --out public/neighbors.lrn
 * ```
 */
import type { Command } from 'commander';
import { isValidationError, ValidationError } from '../errors.js';
import { numberFlag } from '../number-flag.js';
import { checkOutputFile, writeOutputFile } from '../output-file.js';
import { DEFAULT_DENSE_MAX, MAX_DENSE_ITEMS } from '../model/dense-limits.js';
import type { CsvFlags } from './presets.js';

export interface NeighborsCommandOptions extends CsvFlags {
  data?: string;
  format: string;
  out?: string;
  width: string;
  l2: string;
  minSupport: string;
  /** The largest exact solve (items); absent: the builder's default. */
  denseMax?: string;
}

/** The builder's option names, as this command's flags. */
const BUILDER_FLAGS: Readonly<Record<string, string>> = {
  'neighbors.denseMax': '--dense-max',
  'neighbors.width': '--width',
  'neighbors.minSupport': '--min-support',
  'neighbors.l2': '--l2',
  'neighbors.itemIds': '--data',
};

export interface NeighborsSummary {
  out: string;
  users: number;
  items: number;
  itemsWithNeighbors: number;
  pairs: number;
  droppedForSupport: number;
  /** `exact`, or `dense-head` above --dense-max (docs/NEIGHBORS.md, "Large catalogs"). */
  method: 'exact' | 'dense-head';
  /** Items in the exact EASE solve, and the share of (customer, item) pairs on them. */
  denseItems: number;
  denseShare: number;
  width: number;
  l2: number;
  minSupport: number;
  denseMax: number;
  bytes: number;
  bytesPerItem: number;
  sha256: string;
  ms: number;
}

export function register(program: Command, io: { stdout: (s: string) => void; stderr: { isTTY?: boolean; write(s: string): unknown } } = { stdout: (s) => process.stdout.write(s), stderr: process.stderr }): void {
  program
    .command('neighbors')
    .description("Build the neighbour table shoppers' devices rank with, from the shop's order log (one JSON line out).")
    .option('--data <file>', 'order/event CSV, optionally gzipped')
    .option('--format <format>', 'retail|csv', 'csv')
    .option('--user <column>', 'csv: customer id column')
    .option('--item <column>', 'csv: item id column')
    .option('--time <column>', 'csv: time column')
    .option('--weight <column>', 'csv: quantity column (not used for the table; accepted for symmetry with eval)')
    .option('--filter <clause>', "csv: keep rows matching COLUMN OP VALUE (repeatable), e.g. 'quantity>0'", (v: string, p: string[]) => p.concat([v]), [])
    .option('--out <file>', 'where to write the table (LRN1)')
    .option('--width <n>', 'neighbours per item (6 bytes each on the wire)', '32')
    .option('--l2 <x>', 'EASE L2 penalty', '100')
    .option('--min-support <n>', 'customers a published pair needs at least', '3')
    .option('--dense-max <n>', 'largest exact EASE solve, in items (an n × n Float64 matrix, 8·n² bytes); a larger log: exact over its n most-bought items, the rest from their co-purchases', String(DEFAULT_DENSE_MAX))
    .action(async (opts: NeighborsCommandOptions) => {
      await runNeighbors(opts, io);
    });
}

/** The command body, apart from commander so tests can call it. */
export async function runNeighbors(opts: NeighborsCommandOptions, io: { stdout: (s: string) => void; stderr: { isTTY?: boolean; write(s: string): unknown } }): Promise<NeighborsSummary> {
  const { basename } = await import('node:path');
  const { loadCsv } = await import('./csv-loader.js');
  const { looSplit } = await import('./loo-split.js');
  const { csvMappingFromFlags } = await import('./presets.js');
  const { Progress } = await import('./progress.js');
  const { buildNeighborTable } = await import('../model/build-neighbors.js');
  const { encodeNeighborTable, MAX_ITEM_ID_BYTES, neighborTableHash } = await import('../model/neighbors-wire.js');
  if (opts.format !== 'retail' && opts.format !== 'csv') throw new ValidationError('--format', `must be retail or csv, got '${opts.format}'`);
  if (!opts.data) throw new ValidationError('--data', 'is required (the order log)');
  if (!opts.out) throw new ValidationError('--out', 'is required (where to write the table)');
  checkOutputFile(opts.out, '--out', { '--data': opts.data });
  const int = (v: string, flag: string, lo: number, hi: number): number => numberFlag(flag, v, (x) => Number.isInteger(x) && x >= lo && x <= hi, `a whole number from ${lo} to ${hi}`);
  const width = int(opts.width, '--width', 1, 256);
  const minSupport = int(opts.minSupport, '--min-support', 1, 1e9);
  const l2 = numberFlag('--l2', opts.l2, (x) => x > 0 && Number.isFinite(x), 'a number > 0');
  const denseMax = numberFlag(
    '--dense-max',
    opts.denseMax ?? String(DEFAULT_DENSE_MAX),
    (x) => Number.isInteger(x) && x >= 0 && x <= MAX_DENSE_ITEMS,
    `a whole number from 0 to ${MAX_DENSE_ITEMS.toLocaleString('en-US')} (an exact solve of n items holds an n × n Float64 matrix, 8·n² bytes: ${((8 * MAX_DENSE_ITEMS ** 2) / 1e9).toFixed(1)} GB at ${MAX_DENSE_ITEMS.toLocaleString('en-US')})`,
  );
  const t0 = performance.now();
  const progress = new Progress(io.stderr);
  const name = basename(opts.data);
  const mapping = csvMappingFromFlags(opts.format, opts);
  const log = await loadCsv(opts.data, mapping, (rows) => progress.update(`loading ${name} (${rows} rows)`, 0));
  // The table's wire format holds ids of at most 65,535 bytes: said now, naming the data, not
  // after the solve as an option path.
  for (const id of log.itemIds) {
    const bytes = Buffer.byteLength(id);
    if (bytes > MAX_ITEM_ID_BYTES) throw new ValidationError(`${name}:${mapping.item}`, `holds an item id of ${bytes.toLocaleString('en-US')} bytes ('${id.slice(0, 32)}…'); a neighbour table carries ids of at most 65,535 bytes`);
  }
  // Nothing is held out: every customer's distinct items go into the table.
  const all = looSplit(log, Number.MAX_SAFE_INTEGER, { hasTime: mapping.time !== undefined });
  let built: ReturnType<typeof buildNeighborTable>;
  try {
    built = buildNeighborTable({ ptr: all.train.ptr, items: all.train.items, nItems: all.itemIds.length }, all.itemIds, {
      l2,
      width,
      minSupport,
      denseMax,
      onProgress: (f, stage) => progress.update(stage ?? 'solving EASE', f),
    });
  } catch (e) {
    progress.done();
    // The builder names its options (neighbors.denseMax); here they are flags.
    const flag = isValidationError(e) ? BUILDER_FLAGS[e.field] : undefined;
    throw flag ? new ValidationError(flag, (e as ValidationError).message.slice((e as ValidationError).field.length + 2)) : e;
  }
  const { table, report } = built;
  progress.done();
  const file = encodeNeighborTable(table);
  await writeOutputFile(opts.out, file, '--out');
  const summary: NeighborsSummary = {
    out: opts.out,
    users: all.userIds.length,
    ...report,
    width,
    l2,
    minSupport,
    denseMax,
    bytes: file.length,
    bytesPerItem: Math.round((file.length / table.itemIds.length) * 10) / 10,
    sha256: await neighborTableHash(file),
    ms: Math.round(performance.now() - t0),
  };
  io.stdout(`${JSON.stringify(summary)}\n`);
  // Written and valid, but devices would rank by their own model alone: said, not only counted.
  if (report.pairs === 0) {
    io.stderr.write(`localrec neighbors: warning: the table holds no pairs (no two items bought by at least --min-support ${minSupport} of the ${all.userIds.length} customers): devices will rank by their own model alone\n`);
  }
  return summary;
}
