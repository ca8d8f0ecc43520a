/**
 * Opens a data file as a text stream, gunzipping when the file starts with the gzip magic bytes
 * (so `ratings.csv.gz` and a gzip file without the suffix both work). The file is read once, from
 * the start, as one stream: a pipe, a FIFO, `/dev/stdin` or a shell's `<(…)` read as a file does
 * (the gzip test looks at the first bytes read, which are then passed on). `-` (or `/dev/stdin`)
 * is standard input (`… | localrec eval --data -`), once per process.
 */
import { isUtf8 } from 'node:buffer';
import { open } from 'node:fs/promises';
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { ValidationError } from '../errors.js';

/** The path that means standard input. */
export const STDIN_PATH = '-';

/**
 * Names of standard input itself, read as `-` is: opening one reopens whatever fd 0 is, which
 * fails for a socket (ENXIO; Node's `spawn` gives its children sockets for stdio).
 */
const STDIN_NAMES: ReadonlySet<string> = new Set([STDIN_PATH, '/dev/stdin', '/dev/fd/0', '/proc/self/fd/0']);

/** Set once `-` has been opened: standard input can be read only once. */
let stdinTaken = false;

/**
 * @example
 * ```ts
 * const stream = await openText('../shared/data/online-retail/online-retail.csv.gz', 'options.data');
 * const piped = await openText('-', '--data'); // standard input
 * ```
 */
export async function openText(path: string, field: string, options: { utf16le?: boolean } = {}): Promise<Readable> {
  let raw: Readable;
  if (STDIN_NAMES.has(path)) {
    if (stdinTaken) throw new ValidationError(field, `'${path}' (standard input) is read by another flag already: only one input can come from standard input`);
    if (process.stdin.isTTY) throw new ValidationError(field, `'${path}' reads standard input, which is a terminal: pipe or redirect the data in (\`… | localrec …\` or \`< file\`)`);
    stdinTaken = true;
    raw = process.stdin;
  } else {
    try {
      // Opened here, not by the stream, so that a missing or forbidden file fails this call.
      raw = (await open(path, 'r')).createReadStream();
    } catch (e) {
      throw cannotRead(path, field, e);
    }
  }
  let head: Buffer | null;
  try {
    // A directory opens, and fails at the first read (EISDIR): read before handing the stream on.
    head = await readHead(raw, 2);
  } catch (e) {
    raw.destroy();
    throw cannotRead(path, field, e);
  }
  // The bytes read stay the stream's first (an empty file has none); a stream that ended in them
  // takes no unshift, and is replaced by one of just those bytes.
  if (head && raw.readableEnded) raw = new PassThrough().end(head);
  else if (head) raw.unshift(head);
  let text: Readable = raw;
  if (head && head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) {
    const gunzip = createGunzip();
    // pipe() does not forward errors; a read error must still end the consumer's loop.
    raw.on('error', (e) => gunzip.destroy(e));
    text = raw.pipe(gunzip);
  }
  const checked = new Utf8Check(path, field, options.utf16le === true);
  text.on('error', (e) => checked.destroy(e));
  return text.pipe(checked);
}

function cannotRead(path: string, field: string, e: unknown): ValidationError {
  const code = (e as NodeJS.ErrnoException).code;
  const err = new ValidationError(field, `cannot read '${path}'${code ? ` (${code})` : ''}`);
  err.cause = e;
  return err;
}

/**
 * The first bytes of `stream`, at least `n` of them unless it ends sooner (null when it is empty),
 * read in paused mode and taken out of it (the caller puts them back with `unshift`); rejects
 * with the stream's error.
 */
function readHead(stream: Readable, n: number): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const finish = (error: Error | null) => {
      stream.off('readable', onReadable);
      stream.off('end', onEnd);
      stream.off('error', onError);
      if (error) reject(error);
      else resolve(length ? Buffer.concat(chunks, length) : null);
    };
    const onReadable = () => {
      let chunk: Buffer | null;
      while ((chunk = stream.read() as Buffer | null) !== null) {
        chunks.push(chunk);
        length += chunk.length;
        if (length >= n) return finish(null);
      }
    };
    const onEnd = () => finish(null);
    const onError = (e: Error) => finish(e);
    stream.on('readable', onReadable);
    stream.on('end', onEnd);
    stream.on('error', onError);
  });
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
