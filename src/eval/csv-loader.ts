/**
 * Streams a CSV file with a header (optionally gzipped) into an {@link EventLog}: one row per
 * kept line, columns chosen by name. Bad cells throw a ValidationError whose field is
 * `file:line:column`, so the user can open the file at that spot.
 */
import { basename } from 'node:path';
import { parse } from 'csv-parse';
import { ValidationError } from '../errors.js';
import { flagNumber } from '../number-flag.js';
import { type EventLog, EventLogBuilder } from './event-log.js';
import { openText } from './open-text.js';
import { NUMERIC_OPS, passes, type RowFilter } from './row-filter.js';

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
  /**
   * The `--format` preset that chose `user`, `item`, `time` and the first `filters` of them, not
   * the user's flags: a column of theirs the file lacks is then the file's (or the format's)
   * mistake, reported against `--data` and `--format`, not against a flag the preset refuses.
   */
  preset?: { name: string; filters: number };
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
  const input = await openText(path, 'options.data', { utf16le: true });
  const parser = input.pipe(
    // Lengths are checked here, after blank records are skipped (csv-parse would refuse a line of
    // spaces, or an Excel export's trailing `,,,`, as a record of the wrong length).
    parse({ delimiter: m.delimiter ?? ',', record_delimiter: CSV_RECORD_DELIMITERS, info: true, skip_empty_lines: false, relax_quotes: true, bom: true, relax_column_count: true }),
  );
  input.on('error', (e) => parser.destroy(e));
  const b = new EventLogBuilder();
  let cols: { user: number; item: number; time: number; weight: number; filters: Array<[number, RowFilter]> } | undefined;
  let header: string[] = [];
  let seen = 0;
  const lines = new CsvLines();
  try {
    for await (const rec of parser as AsyncIterable<{ record: string[]; info: { lines: number } }>) {
      const { record, info } = rec;
      const line = lines.take(record, info.lines);
      if (record.every((c) => c.trim() === '')) continue;
      if (cols && record.length !== header.length) throw new ValidationError(`${name}:${line}`, `has ${record.length} fields, the header has ${header.length}`);
      if (!cols) {
        header = record.map((h) => h.trim());
        const find = (c: string | undefined, option: string, fromPreset = false): number => {
          if (c === undefined) return -1;
          const i = header.indexOf(c);
          if (i < 0 && fromPreset && m.preset) {
            throw new ValidationError(
              'options.data',
              `${name} has no column '${c}' that --format ${m.preset.name} reads (header: ${header.join(', ')}); use --format csv with --user/--item/--time`,
            );
          }
          if (i < 0) throw new ValidationError(option, `column '${c}' is not in ${name} (header: ${header.join(', ')})`);
          // Two columns of that name: which one is meant cannot be told.
          if (header.indexOf(c, i + 1) >= 0) throw new ValidationError(option, `column '${c}' appears more than once in ${name} (header: ${header.join(', ')})`);
          return i;
        };
        cols = {
          user: find(m.user, 'options.user', true),
          item: find(m.item, 'options.item', true),
          time: find(m.time, 'options.time', true),
          weight: find(m.weight, 'options.weight'),
          filters: (m.filters ?? []).map((f, j) => [find(f.column, 'options.filter', j < (m.preset?.filters ?? 0)), f]),
        };
        continue;
      }
      if (++seen % 65536 === 0) onRows?.(seen);
      const at = (c: number): string => `${name}:${lines.cell(c)}:${header[c]}`;
      // Filters see the cell as the columns are read (trimmed): a customer id of spaces is empty.
      // A numeric filter refuses a cell that is not a number (a decimal comma, `4,5`), as the
      // column itself would: failing the filter, the row would vanish without a word.
      for (const [i, f] of cols.filters) {
        const c = (record[i] ?? '').trim();
        if (NUMERIC_OPS.has(f.op) && c !== '' && !Number.isFinite(flagNumber(c))) {
          throw new ValidationError(at(i), `'${c}' is not a number, which the filter ${f.column}${f.op}${f.value} compares (plain decimals only)`);
        }
      }
      if (!cols.filters.every(([i, f]) => passes(f, (record[i] ?? '').trim()))) continue;
      const user = cell(record, cols.user, at);
      const item = cell(record, cols.item, at);
      let time = 0;
      if (cols.time >= 0) {
        const s = cell(record, cols.time, at);
        time = parseTime(s, at(cols.time));
      }
      let weight = 1;
      if (cols.weight >= 0) {
        const s = cell(record, cols.weight, at);
        weight = flagNumber(s);
        // Stored as float32: a value beyond its range would turn into Infinity there.
        if (!Number.isFinite(Math.fround(weight))) throw new ValidationError(at(cols.weight), `'${s}' is not a finite number (plain decimals within ±3.4e38)`);
        // A weight counts units or stars; a negative one (a return, a cancellation) would be read
        // as its size (the confidence takes |w|), so it is refused rather than turned around.
        if (weight < 0) throw new ValidationError(at(cols.weight), `'${s}' is negative: a weight column counts units or stars (leave such rows out with --filter '${header[cols.weight]}>=0')`);
      }
      b.push(user, item, time, weight);
    }
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    const err = e as { code?: string; lines?: number; message?: string };
    // csv-parse errors carry the line; turn them into the same file:line form.
    if (err.code?.startsWith('CSV_')) throw csvParseError(name, err, lines);
    throw new ValidationError(`options.data`, `cannot read '${path}': ${err.message ?? String(e)}`);
  }
  if (!cols) throw new ValidationError('options.data', `${name} is empty (no header line)`);
  // A header alone (or only rows the filters drop) would "evaluate" to zeros and exit 0.
  if (b.length === 0) throw new ValidationError('options.data', `${name} has no data rows${seen > 0 ? ` that pass the filters (${seen} read)` : ''}`);
  return b.build();
}

/**
 * Record delimiters of every CSV reader here: CRLF, LF and CR, each wherever it comes. Left to
 * csv-parse, the first line's ending is the only one, and rows appended by another tool (LF after
 * CRLF) merge into one row reported far from where the file changes.
 */
export const CSV_RECORD_DELIMITERS = ['\r\n', '\n', '\r'];

/**
 * Line numbers of a CSV file as an editor shows them, for error messages. csv-parse's
 * `info.lines` names a record's last line and counts a CRLF inside a quoted cell as two lines, so
 * every row after such a cell was named a line further down per CRLF. Every record goes through
 * {@link take} (blank ones too: they are lines); a CRLF, LF or CR inside a cell counts once.
 */
export class CsvLines {
  private last = 0;
  private drift = 0;
  private readonly starts: number[] = [];

  /** Takes the next record and csv-parse's `info.lines` after it; returns the line it starts on. */
  take(record: readonly string[], parserLines: number): number {
    const start = this.last + 1;
    let line = start;
    this.starts.length = record.length;
    for (let i = 0; i < record.length; i++) {
      this.starts[i] = line;
      const c = record[i]!;
      if (c.includes('\n') || c.includes('\r')) line += c.match(/\r\n|\n|\r/g)!.length;
    }
    this.last = line;
    this.drift = parserLines - line;
    return start;
  }

  /** The line cell `i` of the record last taken starts on (its last line for a cell it lacks). */
  cell(i: number): number {
    return this.starts[i] ?? this.last;
  }

  /** The last line of the record last taken (0 before the first). */
  get lastLine(): number {
    return this.last;
  }

  /** A line csv-parse names in an error, less the lines it had counted twice so far. */
  fromParser(parserLines: number): number {
    return Math.max(this.last + 1, parserLines - this.drift);
  }
}

/**
 * A csv-parse error as `file:line: …`. An unclosed quote is named where its record starts (the
 * line after the last record read: blank lines are records too, skipped by the loops, so that
 * they count), not at the end of the file where the parser notices it; other errors carry their
 * own line, corrected as {@link CsvLines} corrects the records'.
 */
export function csvParseError(name: string, err: { code?: string; lines?: number; message?: string }, lines: CsvLines): ValidationError {
  if (err.code === 'CSV_QUOTE_NOT_CLOSED') {
    return new ValidationError(`${name}:${lines.lastLine + 1}`, `a quote opened in the row starting here is never closed: the file ends inside it (${err.message ?? err.code})`);
  }
  return new ValidationError(`${name}:${err.lines === undefined ? '?' : lines.fromParser(err.lines)}`, err.message ?? String(err));
}

/** A trimmed cell; an empty one is refused naming `file:line:column`. */
export function cell(record: string[], i: number, at: (c: number) => string): string {
  const v = (record[i] ?? '').trim();
  if (v === '') throw new ValidationError(at(i), 'is empty');
  return v;
}

/**
 * A time cell as unix seconds: a number as it is; a date with its zone (`Z`, `+01:00`, `GMT`) as
 * `Date.parse` reads it; a date without one read as UTC, never in the machine's time zone (the same
 * file must give the same split everywhere, across a daylight-saving change too): ISO
 * `YYYY-MM-DD[ T]H:MM[:SS[.fff]]` or `YYYY-MM-DD`, and `M/D/YYYY H:MM[:SS]` (month first, as
 * `Date.parse` reads it, and as the original UCI Online Retail file writes it). Any other form
 * without a zone is refused, naming the cell.
 *
 * @example
 * ```ts
 * parseTime('2010-12-01 8:26', 'f.csv:2:t'); // 1291191960
 * parseTime('12/1/2010 8:26', 'f.csv:2:t');  // 1291191960
 * ```
 */
export function parseTime(s: string, field: string): number {
  const r = readTime(s);
  // Unix seconds past 1e11 are after the year 5000: milliseconds, which would make every event its
  // own session and every half-life decay vanish without a word.
  if (typeof r === 'number' && r > 1e11) throw new ValidationError(field, `${s} looks like milliseconds (as seconds it is after the year 5000): give unix seconds`);
  if (r === 'zoneless') {
    throw new ValidationError(field, `'${s}' has no time zone and is not in a form read as UTC (YYYY-MM-DD HH:MM[:SS], M/D/YYYY H:MM): it would be read in this machine's time zone; give unix seconds, ISO 8601, or a zone`);
  }
  if (!Number.isFinite(r)) throw new ValidationError(field, `'${s}' is not a number or a date`);
  return r;
}

/**
 * A time of day followed by a zone `Date.parse` reads: `Z`, an offset (`+00`, `-05:00`, `+0100`),
 * `GMT`/`UTC`/`UT` with or without an offset, or a North American abbreviation; then perhaps a
 * parenthesised name, as `Date.prototype.toString` writes (`… GMT+0000 (Coordinated Universal Time)`).
 */
const ZONED = /\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?|(?:GMT|UTC|UT)(?:[+-]\d{2}:?\d{2})?|[ECMP][SD]T)(?:\s*\([^)]*\))?$/i;

/** {@link parseTime} without the errors: unix seconds, NaN for no date at all, or `'zoneless'`. */
export function readTime(s: string): number | 'zoneless' {
  const n = flagNumber(s);
  if (Number.isFinite(n)) return n;
  const utc = (y: string, mo: string, d: string, h = '0', mi = '0', sec = '0'): number => {
    const [Y, M, D, H, I, S] = [y, mo, d, h, mi, sec].map(Number) as [number, number, number, number, number, number];
    // Date.UTC rolls 2/30 over to 3/2: such a cell is a typo, not a date.
    const back = new Date(Date.UTC(Y, M - 1, D));
    if (back.getUTCFullYear() !== Y || back.getUTCMonth() !== M - 1 || back.getUTCDate() !== D || H > 23 || I > 59 || S >= 61) return NaN;
    return Date.UTC(Y, M - 1, D, H, I, 0, 0) / 1000 + S;
  };
  const t = s.trim();
  let m: RegExpMatchArray | null;
  if ((m = /^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?)?$/.exec(t))) return utc(m[1]!, m[2]!, m[3]!, m[4], m[5], m[6]);
  if ((m = /^(\d{1,2})\/(\d{1,2})\/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$/.exec(t))) return utc(m[3]!, m[1]!, m[2]!, m[4], m[5], m[6]);
  if (ZONED.test(t)) return Date.parse(t) / 1000;
  return Number.isFinite(Date.parse(t)) ? 'zoneless' : NaN;
}
