/**
 * Named CSV layouts, so common public data sets load with one flag. A preset is only a column
 * mapping plus filters; the evaluation itself knows nothing about any data set.
 */
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
