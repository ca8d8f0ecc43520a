/**
 * Opens a data file as a text stream, gunzipping when the file starts with the gzip magic bytes
 * (so `ratings.csv.gz` and a gzip file without the suffix both work).
 */
import { isUtf8 } from 'node:buffer';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { ValidationError } from '../errors.js';

/**
 * @example
 * ```ts
 * const stream = await openText('../shared/data/online-retail/online-retail.csv.gz', 'options.data');
 * ```
 */
export async function openText(path: string, field: string, options: { utf16le?: boolean } = {}): Promise<Readable> {
  let head: Buffer;
  try {
    const fh = await open(path, 'r');
    try {
      head = Buffer.alloc(2);
      const { bytesRead } = await fh.read(head, 0, 2, 0);
      head = head.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ValidationError(field, `cannot read '${path}'${code ? ` (${code})` : ''}`);
  }
  const raw = createReadStream(path);
  let text: Readable = raw;
  if (head.length === 2 && head[0] === 0x1f && head[1] === 0x8b) {
    const gunzip = createGunzip();
    // pipe() does not forward errors; a read error must still end the consumer's loop.
    raw.on('error', (e) => gunzip.destroy(e));
    text = raw.pipe(gunzip);
  }
  const checked = new Utf8Check(path, field, options.utf16le === true);
  text.on('error', (e) => checked.destroy(e));
  return text.pipe(checked);
}

/**
 * Passes the bytes through, refusing text that is not UTF-8 (a Windows-1252 or Latin-1 export,
 * as the widely shared copies of Online Retail are) with a `ValidationError` naming the file and
 * line: decoded leniently, `Café` and `Cafè` would both become `Caf\uFFFD`, one item. A file
 * that starts with a UTF-16LE byte-order mark is passed as is to a reader that decodes it (`utf16le`:
 * the CSV readers, through csv-parse), and refused, saying so, elsewhere; UTF-16BE is refused.
 */
class Utf8Check extends Transform {
  /** Bytes of a character split across chunks, carried to the next one. */
  private carry = Buffer.alloc(0);
  /** Newlines before `carry`: the line a bad byte is on. */
  private lines = 1;
  private first = true;
  private utf16 = false;

  constructor(
    private readonly path: string,
    private readonly field: string,
    private readonly utf16le: boolean,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    if (this.first) {
      this.first = false;
      const le = chunk.length >= 2 && chunk[0] === 0xff && chunk[1] === 0xfe;
      const be = chunk.length >= 2 && chunk[0] === 0xfe && chunk[1] === 0xff;
      if ((le && !this.utf16le) || be) {
        return done(new ValidationError(this.field, `'${this.path}' is UTF-16${be ? 'BE' : 'LE'} text, which this reader does not take: convert it to UTF-8 first, e.g. \`iconv -f utf-16 -t utf-8\``));
      }
      this.utf16 = le;
    }
    if (this.utf16) return done(null, chunk);
    const bytes = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
    const end = completeUpTo(bytes);
    const whole = bytes.subarray(0, end);
    if (!isUtf8(whole)) return done(this.refusal(whole));
    this.lines += countNewlines(whole);
    this.carry = Buffer.from(bytes.subarray(end));
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    done(this.carry.length && !this.utf16 ? this.refusal(this.carry) : null);
  }

  private refusal(bytes: Buffer): ValidationError {
    const at = firstInvalid(bytes);
    const line = this.lines + countNewlines(bytes.subarray(0, at));
    return new ValidationError(
      this.field,
      `'${this.path}' is not UTF-8 text (line ${line}, byte 0x${bytes[at]?.toString(16).padStart(2, '0') ?? '??'}): convert it first, e.g. \`iconv -f cp1252 -t utf-8\` for a Windows export`,
    );
  }
}

/** Where the last complete UTF-8 sequence of `b` ends (a lead byte in the last three bytes may start one still to come). */
function completeUpTo(b: Buffer): number {
  for (let i = b.length - 1; i >= Math.max(0, b.length - 3); i--) {
    const x = b[i]!;
    if (x < 0x80) return b.length; // ASCII: whatever precedes it is whole
    if (x >= 0xc0) {
      const need = x >= 0xf0 ? 4 : x >= 0xe0 ? 3 : 2;
      return b.length - i >= need ? b.length : i;
    }
  }
  return b.length;
}

/** The offset of the first byte of `b` that does not start (or continue) a valid UTF-8 sequence. */
function firstInvalid(b: Buffer): number {
  let i = 0;
  while (i < b.length) {
    const x = b[i]!;
    const need = x < 0x80 ? 1 : x >= 0xc2 && x <= 0xdf ? 2 : x >= 0xe0 && x <= 0xef ? 3 : x >= 0xf0 && x <= 0xf4 ? 4 : 0;
    if (need === 0 || i + need > b.length || !isUtf8(b.subarray(i, i + need))) return i;
    i += need;
  }
  return b.length;
}

function countNewlines(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(10); i !== -1; i = b.indexOf(10, i + 1)) n++;
  return n;
}
