/**
 * Opens a data file as a text stream, gunzipping when the file starts with the gzip magic bytes
 * (so `ratings.csv.gz` and a gzip file without the suffix both work).
 */
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { ValidationError } from '../errors.js';

/**
 * @example
 * ```ts
 * const stream = await openText('../shared/data/online-retail/online-retail.csv.gz', 'options.data');
 * ```
 */
export async function openText(path: string, field: string): Promise<Readable> {
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
  if (head.length === 2 && head[0] === 0x1f && head[1] === 0x8b) {
    const gunzip = createGunzip();
    // pipe() does not forward errors; a read error must still end the consumer's loop.
    raw.on('error', (e) => gunzip.destroy(e));
    return raw.pipe(gunzip);
  }
  return raw;
}
