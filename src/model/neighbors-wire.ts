/**
 * The neighbour table file (`LRN1`), as `localrec neighbors` writes it and the SDK fetches it.
 * Little-endian; layout in docs/protocol.md:
 *
 * | offset | size | field |
 * |---|---|---|
 * | 0 | 4 | magic `LRN1` |
 * | 4 | 1 | format version (1) |
 * | 5 | 1 | bytes per neighbour index: 2 (≤ 65,535 items) or 4 |
 * | 6 | 2 | reserved, 0 |
 * | 8 | 4 | item count n |
 * | 12 | 4 | width w (slots per item) |
 * | 16 | 4 | bytes of the id section |
 * | 20 | … | ids: per item a u16 byte length and the UTF-8 bytes |
 * | … | n·w·(2 or 4) | neighbour indices, all ones = unused slot |
 * | … | n·w·4 | weights, float32 |
 *
 * The SHA-256 of the whole file is its version (`neighborTableHash`).
 */
import { ValidationError } from '../errors.js';
import { hasLoneSurrogate } from './item-table.js';
import { checkNeighborTable, MAX_NEIGHBOR_WIDTH, type NeighborTable } from './neighbors.js';

const MAGIC = [0x4c, 0x52, 0x4e, 0x31]; // "LRN1"
/** The longest item id a neighbour table carries, in UTF-8 bytes (its length is a 16-bit field). */
export const MAX_ITEM_ID_BYTES = 0xffff;

export const NEIGHBOR_FORMAT_VERSION = 1;
const HEADER = 20;
/** Largest catalog a neighbour file may describe. */
export const MAX_NEIGHBOR_ITEMS = 2_000_000;

/**
 * Encodes a checked table.
 *
 * @example
 * ```ts
 * const bytes = encodeNeighborTable({ itemIds: ['a', 'b'], width: 1, index: Int32Array.of(1, 0), weight: Float32Array.of(0.5, 0.2) });
 * ```
 */
export function encodeNeighborTable(t: NeighborTable): Uint8Array {
  checkNeighborTable(t);
  // What decodeNeighborTable would refuse is refused here, not written to a file no device can read.
  if (t.itemIds.length < 1 || t.itemIds.length > MAX_NEIGHBOR_ITEMS) throw new ValidationError('neighbors.itemIds', `must hold 1..${MAX_NEIGHBOR_ITEMS} items, got ${t.itemIds.length}`);
  for (const [i, id] of t.itemIds.entries()) {
    // A lone surrogate would be written as U+FFFD: another id than the catalog's (or a duplicate).
    if (hasLoneSurrogate(id)) throw new ValidationError(`neighbors.itemIds[${i}]`, 'holds a lone UTF-16 surrogate, which UTF-8 cannot carry');
  }
  const enc = new TextEncoder();
  const ids = t.itemIds.map((id) => enc.encode(id));
  for (const [i, b] of ids.entries()) if (b.length > MAX_ITEM_ID_BYTES) throw new ValidationError(`neighbors.itemIds[${i}]`, 'is longer than 65,535 bytes');
  const idBytes = ids.reduce((a, b) => a + 2 + b.length, 0);
  const n = t.itemIds.length;
  const ib = n <= 0xffff ? 2 : 4;
  const slots = n * t.width;
  const out = new Uint8Array(HEADER + idBytes + slots * (ib + 4));
  const dv = new DataView(out.buffer);
  out.set(MAGIC, 0);
  dv.setUint8(4, NEIGHBOR_FORMAT_VERSION);
  dv.setUint8(5, ib);
  dv.setUint32(8, n, true);
  dv.setUint32(12, t.width, true);
  dv.setUint32(16, idBytes, true);
  let p = HEADER;
  for (const b of ids) {
    dv.setUint16(p, b.length, true);
    out.set(b, p + 2);
    p += 2 + b.length;
  }
  for (let k = 0; k < slots; k++, p += ib) {
    const j = t.index[k]!;
    if (ib === 2) dv.setUint16(p, j < 0 ? 0xffff : j, true);
    else dv.setUint32(p, j < 0 ? 0xffffffff : j, true);
  }
  for (let k = 0; k < slots; k++, p += 4) dv.setFloat32(p, t.weight[k]!, true);
  return out;
}

/**
 * Decodes and checks a neighbour file. Anything else than a well-formed table throws a
 * ValidationError under `neighbors` that says what is wrong; nothing else is thrown.
 */
export function decodeNeighborTable(input: ArrayBuffer | ArrayBufferView): NeighborTable {
  // By tag, not instanceof: an ArrayBuffer from another realm (a frame, a vm context) or a
  // SharedArrayBuffer is as good as one of this realm's.
  const tag = Object.prototype.toString.call(input);
  let bytes: Uint8Array;
  try {
    if (tag === '[object ArrayBuffer]' || tag === '[object SharedArrayBuffer]') bytes = new Uint8Array(input as ArrayBuffer);
    else if (ArrayBuffer.isView(input)) bytes = new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    else throw new ValidationError('neighbors', `must be an ArrayBuffer or a typed array of the file's bytes, got ${input === null ? 'null' : typeof input}`);
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    // A buffer transferred away (postMessage with transfer) is detached: no bytes to read.
    throw new ValidationError('neighbors', `cannot read the file's bytes: ${(e as Error).message} (a buffer transferred to another worker or frame is detached)`);
  }
  const bad = (msg: string): never => {
    throw new ValidationError('neighbors', msg);
  };
  if (bytes.length < HEADER) bad(`file is ${bytes.length} bytes, shorter than the ${HEADER}-byte header`);
  if (MAGIC.some((m, i) => bytes[i] !== m)) bad('not a localrec neighbour file (magic is not LRN1)');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint8(4);
  if (version !== NEIGHBOR_FORMAT_VERSION) bad(`format version ${version} is not supported (this SDK reads ${NEIGHBOR_FORMAT_VERSION})`);
  const ib = dv.getUint8(5);
  if (dv.getUint16(6, true) !== 0) bad('reserved header bytes 6–7 are not zero');
  const n = dv.getUint32(8, true);
  const width = dv.getUint32(12, true);
  const idBytes = dv.getUint32(16, true);
  if (n < 1 || n > MAX_NEIGHBOR_ITEMS) bad(`item count ${n} is outside 1..${MAX_NEIGHBOR_ITEMS}`);
  if (ib !== (n <= 0xffff ? 2 : 4)) bad(`index size ${ib} does not fit ${n} items`);
  if (width < 1 || width > MAX_NEIGHBOR_WIDTH) bad(`width ${width} is outside 1..${MAX_NEIGHBOR_WIDTH}`);
  const slots = n * width;
  const expected = HEADER + idBytes + slots * (ib + 4);
  if (bytes.length !== expected) bad(`file is ${bytes.length} bytes, the header describes ${expected}`);
  // ignoreBOM: an id that starts with U+FEFF keeps it (it would no longer match the catalog).
  const dec = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  const itemIds: string[] = [];
  let p = HEADER;
  const idEnd = HEADER + idBytes;
  for (let i = 0; i < n; i++) {
    if (p + 2 > idEnd) bad(`id section ends before item ${i}`);
    const len = dv.getUint16(p, true);
    if (p + 2 + len > idEnd) bad(`id of item ${i} runs past the id section`);
    try {
      itemIds.push(dec.decode(bytes.subarray(p + 2, p + 2 + len)));
    } catch {
      bad(`id of item ${i} is not valid UTF-8`);
    }
    p += 2 + len;
  }
  if (p !== idEnd) bad(`id section has ${idEnd - p} bytes left over`);
  const index = new Int32Array(slots);
  for (let k = 0; k < slots; k++, p += ib) {
    const v = ib === 2 ? dv.getUint16(p, true) : dv.getUint32(p, true);
    index[k] = v === (ib === 2 ? 0xffff : 0xffffffff) ? -1 : v;
  }
  const weight = new Float32Array(slots);
  for (let k = 0; k < slots; k++, p += 4) weight[k] = dv.getFloat32(p, true);
  const t = { itemIds, width, index, weight };
  checkNeighborTable(t);
  return t;
}

/** Hex SHA-256 of a neighbour file: its version. */
export async function neighborTableHash(bytes: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}
