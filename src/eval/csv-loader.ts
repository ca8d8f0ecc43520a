/**
 * Streams a CSV file with a header (optionally gzipped) into an {@link EventLog}: one row per
 * kept line, columns chosen by name. Bad cells throw a ValidationError whose field is
 * `file:line:column`, so the user can open the file at that spot.
 */
import { basename } from 'node:path';
import { parse } from 'csv-parse';
import { ValidationError } from '../errors.js';
import { type EventLog, EventLogBuilder } from './event-log.js';
import { openText } from './open-text.js';
import { passes, type RowFilter } from './row-filter.js';

export interface CsvMapping {
  user: string;
  item: string;
  /** Time column: unix seconds, or a date string Date.parse understands (read as unix seconds). */
  time?: string;
  /** Confidence column (e.g. quantity, rating): a finite number. */
  weight?: string;
  /** Rows failing any filter are skipped before any cell is checked. */
  filters?: RowFilter[];
  delimiter?: string;
}

/**
 * @example
 * ```ts
 * const log = await loadCsv('ratings.csv', { user: 'userId', item: 'movieId', time: 'timestamp' });
 * log.user.length; // rows kept
 * ```
 */
export async function loadCsv(path: string, m: CsvMapping, onRows?: (rows: number) => void): Promise<EventLog> {
  const name = basename(path);
  const input = await openText(path, 'options.data');
  const parser = input.pipe(
    parse({ delimiter: m.delimiter ?? ',', info: true, skip_empty_lines: true, relax_quotes: true, bom: true }),
  );
  input.on('error', (e) => parser.destroy(e));
  const b = new EventLogBuilder();
  let cols: { user: number; item: number; time: number; weight: number; filters: Array<[number, RowFilter]> } | undefined;
  let header: string[] = [];
  let seen = 0;
  try {
    for await (const rec of parser as AsyncIterable<{ record: string[]; info: { lines: number } }>) {
      const { record, info } = rec;
      if (!cols) {
        header = record.map((h) => h.trim());
        const find = (c: string | undefined, option: string): number => {
          if (c === undefined) return -1;
          const i = header.indexOf(c);
          if (i < 0) throw new ValidationError(option, `column '${c}' is not in ${name} (header: ${header.join(', ')})`);
          // Two columns of that name: which one is meant cannot be told.
          if (header.indexOf(c, i + 1) >= 0) throw new ValidationError(option, `column '${c}' appears more than once in ${name} (header: ${header.join(', ')})`);
          return i;
        };
        cols = {
          user: find(m.user, 'options.user'),
          item: find(m.item, 'options.item'),
          time: find(m.time, 'options.time'),
          weight: find(m.weight, 'options.weight'),
          filters: (m.filters ?? []).map((f) => [find(f.column, 'options.filter'), f]),
        };
        continue;
      }
      if (++seen % 65536 === 0) onRows?.(seen);
      // Filters see the cell as the columns are read (trimmed): a customer id of spaces is empty.
      if (!cols.filters.every(([i, f]) => passes(f, (record[i] ?? '').trim()))) continue;
      const at = (c: number): string => `${name}:${info.lines}:${header[c]}`;
      const user = cell(record, cols.user, at);
      const item = cell(record, cols.item, at);
      let time = 0;
      if (cols.time >= 0) {
        const s = cell(record, cols.time, at);
        time = Number(s);
        // A date without a zone is read as UTC, not as the machine's local time (the same file
        // must give the same split on every machine).
        if (!Number.isFinite(time)) time = Date.parse(/^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(s) ? `${s.replace(' ', 'T')}Z` : s) / 1000;
        if (!Number.isFinite(time)) throw new ValidationError(at(cols.time), `'${s}' is not a number or a date`);
      }
      let weight = 1;
      if (cols.weight >= 0) {
        const s = cell(record, cols.weight, at);
        weight = Number(s);
        // Stored as float32: a value beyond its range would turn into Infinity there.
        if (!Number.isFinite(Math.fround(weight))) throw new ValidationError(at(cols.weight), `'${s}' is not a finite number (within ±3.4e38)`);
      }
      b.push(user, item, time, weight);
    }
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    const err = e as { code?: string; lines?: number; message?: string };
    // csv-parse errors carry the line; turn them into the same file:line form.
    if (err.code?.startsWith('CSV_')) throw new ValidationError(`${name}:${err.lines ?? '?'}`, err.message ?? String(e));
    throw new ValidationError(`options.data`, `cannot read '${path}': ${err.message ?? String(e)}`);
  }
  if (!cols) throw new ValidationError('options.data', `${name} is empty (no header line)`);
  // A header alone (or only rows the filters drop) would "evaluate" to zeros and exit 0.
  if (b.length === 0) throw new ValidationError('options.data', `${name} has no data rows${seen > 0 ? ` that pass the filters (${seen} read)` : ''}`);
  return b.build();
}

function cell(record: string[], i: number, at: (c: number) => string): string {
  const v = (record[i] ?? '').trim();
  if (v === '') throw new ValidationError(at(i), 'is empty');
  return v;
}
