/**
 * Named CSV layouts, so common public data sets load with one flag. A preset is only a column
 * mapping plus filters; the evaluation itself knows nothing about any data set.
 */
import { ValidationError } from '../errors.js';
import type { CsvMapping } from './csv-loader.js';
import { parseFilter } from './row-filter.js';

export const PRESETS = {
  /**
   * UCI Online Retail, one row per invoice line. Usual implicit-feedback cleaning: keep rows with a
   * customer id, an invoice that is not a cancellation (leading `C`), and a positive quantity.
   */
  retail: {
    user: 'customer_id',
    item: 'stock_code',
    time: 'timestamp',
    filters: ['customer_id!=', 'invoice!^=C', 'quantity>0'].map((c) => parseFilter(c)),
  },
} satisfies Record<string, CsvMapping>;

export type PresetName = keyof typeof PRESETS;

/** The CSV flags shared by `localrec eval` and `localrec simulate`. */
export interface CsvFlags {
  user?: string;
  item?: string;
  time?: string;
  weight?: string;
  filter: string[];
}

/**
 * Turns `--format retail|csv` and the column flags into a CSV mapping, naming the missing flag.
 *
 * @example
 * ```ts
 * csvMappingFromFlags('csv', { user: 'userId', item: 'movieId', time: 'timestamp', filter: [] });
 * // { user: 'userId', item: 'movieId', time: 'timestamp', filters: [] }
 * ```
 */
export function csvMappingFromFlags(format: 'retail' | 'csv', opts: CsvFlags): CsvMapping {
  let mapping: CsvMapping;
  if (format === 'retail') {
    // The preset fixes these columns: a flag for them would be silently ignored, so it is refused.
    for (const [flag, v] of [['--user', opts.user], ['--item', opts.item], ['--time', opts.time]] as const) {
      if (v !== undefined) throw new ValidationError(flag, `is set by --format retail (${PRESETS.retail.user}, ${PRESETS.retail.item}, ${PRESETS.retail.time}); use --format csv to choose the columns`);
    }
    mapping = { ...PRESETS.retail, preset: { name: 'retail', filters: PRESETS.retail.filters.length } };
    if (opts.weight) mapping.weight = opts.weight;
  } else {
    if (!opts.user) throw new ValidationError('--user', 'is required with --format csv (the user id column)');
    if (!opts.item) throw new ValidationError('--item', 'is required with --format csv (the item id column)');
    mapping = { user: opts.user, item: opts.item };
    if (opts.time) mapping.time = opts.time;
    if (opts.weight) mapping.weight = opts.weight;
  }
  mapping.filters = [...(mapping.filters ?? []), ...opts.filter.map((c) => parseFilter(c, '--filter'))];
  return mapping;
}
