/**
 * The localrec wire format, shared by the browser client and the aggregation server.
 *
 * Two binary messages, both little-endian and versioned by a 4-byte magic plus a format byte:
 *
 * - a **model** (`LRM1`): one version of the global item table (ids, factors, biases), either exact
 *   float32 (the canonical form, whose SHA-256 is the model hash) or int8 rows with a float32 scale
 *   per row (4× smaller downloads; carries the canonical hash so the client can name its base);
 * - an **update** (`LRU1`): one client's clipped, noised, quantized item-side delta, dense over every
 *   factor and bias of the table, plus its base version, base hash and a random nonce.
 *
 * Only Web-platform APIs are used (DataView, TextEncoder, `crypto.subtle`), so this module runs in
 * the browser worker and in Node alike. Byte-by-byte layouts are in docs/protocol.md.
 */
import { ValidationError } from '../errors.js';
import { hasLoneSurrogate, type ItemTable } from '../model/item-table.js';

export const WIRE_FORMAT_VERSION = 1;
/**
 * Largest magnitude a factor or bias of a global model may have. Trained tables stay within a few
 * tens (subspace factors are scaled orthonormal columns, at most the scale); devices refuse a model
 * beyond it (src/federated/sync.ts) and the server does not publish one (src/server/rounds.ts).
 */
export const MAX_MODEL_MAGNITUDE = 1e6;

/**
 * The first value of a model beyond ±{@link MAX_MODEL_MAGNITUDE} (or not finite), factors before
 * biases: which item, which part, the value. Undefined when every value is within the bound.
 */
export function beyondModelMagnitude(t: Pick<ItemTable, 'itemIds' | 'dim' | 'factors' | 'bias'>): { itemId: string; what: 'factor' | 'bias'; value: number } | undefined {
  const over = (x: number) => !(Math.abs(x) <= MAX_MODEL_MAGNITUDE);
  const f = t.factors.findIndex(over);
  if (f >= 0) return { itemId: t.itemIds[Math.floor(f / t.dim)]!, what: 'factor', value: t.factors[f]! };
  const b = t.bias.findIndex(over);
  return b >= 0 ? { itemId: t.itemIds[b]!, what: 'bias', value: t.bias[b]! } : undefined;
}
/** Bytes of the fixed update header that precedes the block scales. */
export const UPDATE_HEADER_BYTES = 80;
/** Default number of consecutive coordinates that share one float32 quantization scale. */
export const DEFAULT_BLOCK_SIZE = 256;
/** Per-client upload budget from issue 4: 64 KiB per round. */
export const UPDATE_BUDGET_BYTES = 65536;
export const HASH_BYTES = 32;
export const NONCE_BYTES = 16;
/** Longest item id on the wire, in UTF-8 bytes (the catalog allows 256 characters). */
export const MAX_ID_BYTES = 1024;
/** Widest table on the wire; matches MAX_DIM in model/item-table.ts. */
export const MAX_WIRE_DIM = 64;

const UPDATE_MAGIC = [0x4c, 0x52, 0x55, 0x31]; // "LRU1"
const MODEL_MAGIC = [0x4c, 0x52, 0x4d, 0x31]; // "LRM1"

/** Why a message could not be decoded; the server reports it as the reason `malformed` or `non-finite`. */
export type WireErrorReason =
  | 'truncated'
  | 'bad-magic'
  | 'unsupported-version'
  | 'bad-header'
  | 'length-mismatch'
  | 'bad-code'
  | 'bad-id'
  | 'non-finite';

/**
 * The only error the decoders throw. It is a ValidationError (so it keeps that `name` across the
 * worker boundary) with a machine-readable `reason`.
 */
export class WireFormatError extends ValidationError {
  readonly reason: WireErrorReason;
  constructor(field: 'update' | 'model', reason: WireErrorReason, message: string) {
    super(field, `${message} (${reason})`);
    this.reason = reason;
  }
}

/** Model encodings: 0 = exact float32 (canonical, hashed), 1 = int8 rows with a float32 scale each. */
export type ModelEncoding = 'float32' | 'int8';

/** Everything in an update except the quantized payload. */
export interface UpdateHeader {
  /** Bits per quantized coordinate, 2..8. Codes run 0..2L with L = 2^(bits-1) − 1; code L is zero. */
  bits: number;
  dim: number;
  itemCount: number;
  baseVersion: number;
  /** Coordinates per scale block (factors and biases are blocked separately). */
  blockSize: number;
  /** Clip bound C the client used. */
  clip: number;
  /** Noise multiplier σ the client used (noise std is σ·C per coordinate). */
  noiseMultiplier: number;
  /** SHA-256 of the canonical float32 encoding of the base model. */
  baseHash: Uint8Array;
  /** 16 random bytes; the server refuses a nonce it has seen. */
  nonce: Uint8Array;
  /**
   * The device kept the biases frozen (the server's `trainBiases: false`): the bias section is
   * zero delta plus noise. Flag byte 28; the server refuses an update whose flag differs from its
   * config, and a restart refuses pending updates sent under the other setting.
   */
  frozenBiases?: boolean;
}

/** A decoded (still quantized) update. */
export interface QuantizedUpdate {
  header: UpdateHeader;
  /** One float32 scale per block: `blockCount(n·dim) + blockCount(n)` values. */
  scales: Float32Array;
  /** One code per coordinate, `n·(dim+1)`: factors row-major first, then biases. */
  codes: Uint8Array;
}

/** Number of quantization levels on each side of zero for a bit width: 2 bits → 1, 4 → 7, 8 → 127. */
export function levelsFor(bits: number): number {
  return 2 ** (bits - 1) - 1;
}

/** Number of scale blocks the factors and the biases of an `n × dim` table use. */
export function scaleCount(itemCount: number, dim: number, blockSize: number): number {
  return Math.ceil((itemCount * dim) / blockSize) + Math.ceil(itemCount / blockSize);
}

/**
 * Exact size in bytes of an update for a table shape and quantization.
 *
 * @example
 * ```ts
 * updateByteLength(4000, 32, 3); // 51644
 * ```
 */
export function updateByteLength(itemCount: number, dim: number, bits: number, blockSize = DEFAULT_BLOCK_SIZE): number {
  const coords = itemCount * (dim + 1);
  return UPDATE_HEADER_BYTES + 4 * scaleCount(itemCount, dim, blockSize) + Math.ceil((coords * bits) / 8);
}

/**
 * The widest bit width (≤ 8) whose update fits the byte budget, or 0 when even 2 bits do not fit.
 *
 * @example
 * ```ts
 * chooseBits(4000, 32); // 3   (51,644 bytes ≤ 65,536)
 * chooseBits(4000, 16); // 7
 * ```
 */
export function chooseBits(itemCount: number, dim: number, budget = UPDATE_BUDGET_BYTES, blockSize = DEFAULT_BLOCK_SIZE): number {
  for (let b = 8; b >= 2; b--) if (updateByteLength(itemCount, dim, b, blockSize) <= budget) return b;
  return 0;
}

function checkHeader(h: UpdateHeader): void {
  const bad = (msg: string): never => {
    throw new WireFormatError('update', 'bad-header', msg);
  };
  if (!Number.isInteger(h.bits) || h.bits < 2 || h.bits > 8) bad(`bits must be 2..8, got ${h.bits}`);
  if (!Number.isInteger(h.dim) || h.dim < 1 || h.dim > MAX_WIRE_DIM) bad(`dim must be 1..${MAX_WIRE_DIM}, got ${h.dim}`);
  if (!Number.isInteger(h.itemCount) || h.itemCount < 1 || h.itemCount > 0xffffffff) bad(`itemCount must be ≥ 1, got ${h.itemCount}`);
  if (!Number.isInteger(h.baseVersion) || h.baseVersion < 0 || h.baseVersion > 0xffffffff) bad(`baseVersion must be a uint32, got ${h.baseVersion}`);
  if (!Number.isInteger(h.blockSize) || h.blockSize < 1 || h.blockSize > 0xffffffff) bad(`blockSize must be ≥ 1, got ${h.blockSize}`);
  if (!Number.isFinite(h.clip) || h.clip <= 0) bad(`clip must be a positive number, got ${h.clip}`);
  if (!Number.isFinite(h.noiseMultiplier) || h.noiseMultiplier < 0) bad(`noiseMultiplier must be ≥ 0, got ${h.noiseMultiplier}`);
  if (h.baseHash.length !== HASH_BYTES) bad(`baseHash must be ${HASH_BYTES} bytes, got ${h.baseHash.length}`);
  if (h.nonce.length !== NONCE_BYTES) bad(`nonce must be ${NONCE_BYTES} bytes, got ${h.nonce.length}`);
}

/**
 * Serializes a quantized update. Codes are bit-packed LSB-first, `bits` per coordinate.
 *
 * @example
 * ```ts
 * const bytes = encodeUpdate({ header, scales, codes });
 * decodeUpdate(bytes).header.baseVersion === header.baseVersion; // true
 * ```
 */
export function encodeUpdate(u: QuantizedUpdate): Uint8Array {
  const h = u.header;
  checkHeader(h);
  const coords = h.itemCount * (h.dim + 1);
  const nScales = scaleCount(h.itemCount, h.dim, h.blockSize);
  if (u.scales.length !== nScales) throw new ValidationError('update.scales', `expected ${nScales} scales, got ${u.scales.length}`);
  if (u.codes.length !== coords) throw new ValidationError('update.codes', `expected ${coords} codes, got ${u.codes.length}`);
  const maxCode = 2 * levelsFor(h.bits);
  const out = new Uint8Array(updateByteLength(h.itemCount, h.dim, h.bits, h.blockSize));
  const dv = new DataView(out.buffer);
  out.set(UPDATE_MAGIC, 0);
  out[4] = WIRE_FORMAT_VERSION;
  out[5] = h.bits;
  dv.setUint16(6, h.dim, true);
  dv.setUint32(8, h.itemCount, true);
  dv.setUint32(12, h.baseVersion, true);
  dv.setUint32(16, h.blockSize, true);
  dv.setFloat32(20, h.clip, true);
  dv.setFloat32(24, h.noiseMultiplier, true);
  dv.setUint32(28, 0, true);
  out[28] = h.frozenBiases ? 1 : 0;
  out.set(h.baseHash, 32);
  out.set(h.nonce, 64);
  let p = UPDATE_HEADER_BYTES;
  for (let i = 0; i < nScales; i++, p += 4) {
    if (!Number.isFinite(u.scales[i]) || u.scales[i]! < 0) throw new ValidationError('update.scales', `scale ${i} must be finite and ≥ 0`);
    dv.setFloat32(p, u.scales[i]!, true);
  }
  // Bit-pack: keep a small accumulator and flush whole bytes.
  let acc = 0;
  let accBits = 0;
  const b = h.bits;
  for (let i = 0; i < coords; i++) {
    const c = u.codes[i]!;
    if (c > maxCode) throw new ValidationError('update.codes', `code ${i} is ${c}, above ${maxCode} for ${b} bits`);
    acc |= c << accBits;
    accBits += b;
    while (accBits >= 8) {
      out[p++] = acc & 0xff;
      acc >>>= 8;
      accBits -= 8;
    }
  }
  if (accBits > 0) out[p++] = acc & 0xff;
  return out;
}

function need(bytes: Uint8Array, n: number, field: 'update' | 'model', what: string): void {
  if (bytes.length < n) throw new WireFormatError(field, 'truncated', `${what}: need ${n} bytes, got ${bytes.length}`);
}

function checkMagic(bytes: Uint8Array, magic: number[], field: 'update' | 'model'): void {
  for (let i = 0; i < 4; i++) {
    if (bytes[i] !== magic[i]) throw new WireFormatError(field, 'bad-magic', `not a localrec ${field} (magic bytes differ)`);
  }
  if (bytes[4] !== WIRE_FORMAT_VERSION) {
    throw new WireFormatError(field, 'unsupported-version', `format version ${bytes[4]} is not supported (expected ${WIRE_FORMAT_VERSION})`);
  }
}

/**
 * Reads only the fixed header of an update (cheap: the server uses it to check shape and base
 * before touching the payload). Throws {@link WireFormatError} on anything malformed.
 *
 * @example
 * ```ts
 * decodeUpdateHeader(bytes).nonce; // Uint8Array(16)
 * ```
 */
export function decodeUpdateHeader(bytes: Uint8Array): UpdateHeader {
  if (!(bytes instanceof Uint8Array)) throw new WireFormatError('update', 'bad-header', 'expected a Uint8Array');
  need(bytes, 5, 'update', 'magic');
  checkMagic(bytes, UPDATE_MAGIC, 'update');
  need(bytes, UPDATE_HEADER_BYTES, 'update', 'header');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes[28]! > 1) throw new WireFormatError('update', 'bad-header', `flags byte 28 must be 0 or 1 (biases frozen), got ${bytes[28]}`);
  if (bytes[29] !== 0 || bytes[30] !== 0 || bytes[31] !== 0) throw new WireFormatError('update', 'bad-header', 'reserved bytes 29..31 must be zero');
  const header: UpdateHeader = {
    bits: bytes[5]!,
    dim: dv.getUint16(6, true),
    itemCount: dv.getUint32(8, true),
    baseVersion: dv.getUint32(12, true),
    blockSize: dv.getUint32(16, true),
    clip: dv.getFloat32(20, true),
    noiseMultiplier: dv.getFloat32(24, true),
    baseHash: bytes.slice(32, 64),
    nonce: bytes.slice(64, 80),
    ...(bytes[28] === 1 ? { frozenBiases: true } : {}),
  };
  checkHeader(header);
  return header;
}

/**
 * Decodes an update. Never throws anything but {@link WireFormatError}: truncated, padded, garbage
 * or non-finite input is refused with a reason, and nothing is allocated before the declared shape
 * is checked against the actual length.
 *
 * @example
 * ```ts
 * const { header, scales, codes } = decodeUpdate(bytes);
 * const delta = dequantizeUpdate({ header, scales, codes }); // Float32Array n·(dim+1)
 * ```
 */
export function decodeUpdate(bytes: Uint8Array): QuantizedUpdate {
  const header = decodeUpdateHeader(bytes);
  const expected = updateByteLength(header.itemCount, header.dim, header.bits, header.blockSize);
  if (bytes.length !== expected) {
    throw new WireFormatError(
      'update',
      bytes.length < expected ? 'truncated' : 'length-mismatch',
      `header declares ${header.itemCount} items × ${header.dim} at ${header.bits} bits = ${expected} bytes, got ${bytes.length}`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const nScales = scaleCount(header.itemCount, header.dim, header.blockSize);
  const scales = new Float32Array(nScales);
  let p = UPDATE_HEADER_BYTES;
  // Structural checks (negative scale, codes, padding) come before the non-finite one, in the
  // order docs/protocol.md gives: a body that is both malformed and non-finite is malformed.
  let nonFinite = -1;
  for (let i = 0; i < nScales; i++, p += 4) {
    const s = dv.getFloat32(p, true);
    if (!Number.isFinite(s)) {
      if (nonFinite < 0) nonFinite = i;
    } else if (s < 0) throw new WireFormatError('update', 'bad-code', `scale ${i} is negative`);
    scales[i] = s;
  }
  const coords = header.itemCount * (header.dim + 1);
  const codes = new Uint8Array(coords);
  const b = header.bits;
  const mask = (1 << b) - 1;
  const maxCode = 2 * levelsFor(b);
  let acc = 0;
  let accBits = 0;
  for (let i = 0; i < coords; i++) {
    while (accBits < b) {
      acc |= bytes[p++]! << accBits;
      accBits += 8;
    }
    const c = acc & mask;
    acc >>>= b;
    accBits -= b;
    if (c > maxCode) throw new WireFormatError('update', 'bad-code', `code ${i} is ${c}, above ${maxCode} for ${b} bits`);
    codes[i] = c;
  }
  // Padding bits in the last byte must be zero, so that one update has exactly one encoding.
  if (acc !== 0) throw new WireFormatError('update', 'bad-code', 'padding bits in the last byte are not zero');
  if (nonFinite >= 0) throw new WireFormatError('update', 'non-finite', `scale ${nonFinite} is not finite`);
  return { header, scales, codes };
}

/**
 * Turns codes back into values: `scale · (code − L) / L` per coordinate, factors first then biases.
 *
 * @example
 * ```ts
 * const delta = dequantizeUpdate(decodeUpdate(bytes)); // delta.length === n * (dim + 1)
 * ```
 */
export function dequantizeUpdate(u: QuantizedUpdate): Float32Array {
  const { itemCount: n, dim, blockSize, bits } = u.header;
  const L = levelsFor(bits);
  const out = new Float32Array(n * (dim + 1));
  const nf = n * dim;
  const factorBlocks = Math.ceil(nf / blockSize);
  for (let i = 0; i < out.length; i++) {
    const block = i < nf ? Math.floor(i / blockSize) : factorBlocks + Math.floor((i - nf) / blockSize);
    out[i] = (u.scales[block]! * (u.codes[i]! - L)) / L;
  }
  return out;
}

/** Index of the scale block a coordinate belongs to (factors and biases are blocked separately). */
export function blockOf(i: number, itemCount: number, dim: number, blockSize: number): number {
  const nf = itemCount * dim;
  return i < nf ? Math.floor(i / blockSize) : Math.ceil(nf / blockSize) + Math.floor((i - nf) / blockSize);
}

// ---------------------------------------------------------------------------------------------
// Model

const utf8 = new TextEncoder();
// ignoreBOM: an item id may begin with U+FEFF (a byte-order mark pasted into a product id); the default
// would drop it, and the id would come back renamed (or as another item's).
const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function idsBytes(itemIds: readonly string[]): Uint8Array[] {
  return itemIds.map((id, i) => {
    const b = utf8.encode(id);
    if (b.length < 1 || b.length > MAX_ID_BYTES) throw new ValidationError(`model.itemIds[${i}]`, `must be 1..${MAX_ID_BYTES} UTF-8 bytes, got ${b.length}`);
    if (hasLoneSurrogate(id)) throw new ValidationError(`model.itemIds[${i}]`, 'holds a lone UTF-16 surrogate, which UTF-8 cannot carry');
    return b;
  });
}

// Arithmetic, not `(n + 3) & ~3`: bitwise operators wrap at 2^31, and a decoded uint32 id-section
// length near 2^32 would wrap to a tiny offset (then a RangeError from DataView instead of a WireFormatError).
const pad4 = (n: number): number => Math.ceil(n / 4) * 4;

/**
 * Serializes an item table. `float32` is the canonical, exact form (its SHA-256 is the model hash);
 * `int8` stores each factor row as a float32 scale and `dim` int8 values (biases stay float32) and
 * embeds the canonical hash, which must then be passed in.
 *
 * @example
 * ```ts
 * const bytes = encodeModel(table);            // canonical
 * const hash = await sha256(bytes);
 * const small = encodeModel(table, 'int8', hash);
 * ```
 */
export function encodeModel(t: ItemTable, encoding: ModelEncoding = 'float32', canonicalHash?: Uint8Array): Uint8Array {
  const n = t.itemIds.length;
  const d = t.dim;
  if (!Number.isInteger(d) || d < 1 || d > MAX_WIRE_DIM) throw new ValidationError('model.dim', `must be 1..${MAX_WIRE_DIM}, got ${d}`);
  if (t.factors.length !== n * d || t.bias.length !== n) throw new ValidationError('model', `factors/bias do not match ${n} items × ${d}`);
  if (!Number.isInteger(t.version) || t.version < 0 || t.version > 0xffffffff) throw new ValidationError('model.version', `must be a uint32, got ${t.version}`);
  if (encoding === 'int8' && canonicalHash?.length !== HASH_BYTES) {
    throw new ValidationError('canonicalHash', `int8 models must carry the ${HASH_BYTES}-byte hash of the float32 encoding`);
  }
  const ids = idsBytes(t.itemIds);
  const idsLen = ids.reduce((s, b) => s + 2 + b.length, 0);
  const idsEnd = pad4(20 + idsLen);
  const body = encoding === 'float32' ? 4 * n * d : HASH_BYTES + n * (4 + d);
  const out = new Uint8Array(idsEnd + body + 4 * n);
  const dv = new DataView(out.buffer);
  out.set(MODEL_MAGIC, 0);
  out[4] = WIRE_FORMAT_VERSION;
  out[5] = encoding === 'float32' ? 0 : 1;
  dv.setUint16(6, d, true);
  dv.setUint32(8, n, true);
  dv.setUint32(12, t.version, true);
  dv.setUint32(16, idsLen, true);
  let p = 20;
  for (const b of ids) {
    dv.setUint16(p, b.length, true);
    out.set(b, p + 2);
    p += 2 + b.length;
  }
  p = idsEnd;
  if (encoding === 'float32') {
    for (let i = 0; i < n * d; i++, p += 4) dv.setFloat32(p, t.factors[i]!, true);
  } else {
    out.set(canonicalHash!, p);
    p += HASH_BYTES;
    for (let r = 0; r < n; r++) {
      let max = 0;
      for (let k = 0; k < d; k++) max = Math.max(max, Math.abs(t.factors[r * d + k]!));
      const scale = max / 127;
      dv.setFloat32(p, scale, true);
      p += 4;
      for (let k = 0; k < d; k++) dv.setInt8(p++, scale > 0 ? Math.round(t.factors[r * d + k]! / scale) : 0);
    }
  }
  for (let i = 0; i < n; i++, p += 4) dv.setFloat32(p, t.bias[i]!, true);
  return out;
}

/** A decoded model and how it was encoded. `canonicalHash` is present for int8 bodies only. */
export interface DecodedModel {
  table: ItemTable;
  encoding: ModelEncoding;
  canonicalHash?: Uint8Array;
}

/**
 * Decodes a model body. Throws only {@link WireFormatError}.
 *
 * @example
 * ```ts
 * const { table } = decodeModel(new Uint8Array(await res.arrayBuffer()));
 * ```
 */
export function decodeModel(bytes: Uint8Array): DecodedModel {
  if (!(bytes instanceof Uint8Array)) throw new WireFormatError('model', 'bad-header', 'expected a Uint8Array');
  need(bytes, 5, 'model', 'magic');
  checkMagic(bytes, MODEL_MAGIC, 'model');
  need(bytes, 20, 'model', 'header');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const enc = bytes[5];
  if (enc !== 0 && enc !== 1) throw new WireFormatError('model', 'bad-header', `unknown encoding ${enc}`);
  const d = dv.getUint16(6, true);
  const n = dv.getUint32(8, true);
  const version = dv.getUint32(12, true);
  const idsLen = dv.getUint32(16, true);
  if (d < 1 || d > MAX_WIRE_DIM) throw new WireFormatError('model', 'bad-header', `dim ${d} is outside 1..${MAX_WIRE_DIM}`);
  const idsEnd = pad4(20 + idsLen);
  const body = enc === 0 ? 4 * n * d : HASH_BYTES + n * (4 + d);
  const expected = idsEnd + body + 4 * n;
  if (bytes.length !== expected) {
    throw new WireFormatError('model', bytes.length < expected ? 'truncated' : 'length-mismatch', `header declares ${expected} bytes, got ${bytes.length}`);
  }
  const itemIds: string[] = new Array(n);
  let p = 20;
  for (let i = 0; i < n; i++) {
    if (p + 2 > 20 + idsLen) throw new WireFormatError('model', 'bad-id', `item id ${i} runs past the id section`);
    const len = dv.getUint16(p, true);
    if (len < 1 || p + 2 + len > 20 + idsLen) throw new WireFormatError('model', 'bad-id', `item id ${i} has a bad length ${len}`);
    try {
      itemIds[i] = utf8Strict.decode(bytes.subarray(p + 2, p + 2 + len));
    } catch {
      throw new WireFormatError('model', 'bad-id', `item id ${i} is not valid UTF-8`);
    }
    p += 2 + len;
  }
  if (p !== 20 + idsLen) throw new WireFormatError('model', 'bad-id', 'id section length does not match the ids');
  // Devices map rows by id: a repeated one would give its history the wrong row.
  if (new Set(itemIds).size !== n) {
    const seen = new Set<string>();
    const i = itemIds.findIndex((id) => seen.size === seen.add(id).size);
    throw new WireFormatError('model', 'bad-id', `item id ${i} (${JSON.stringify(itemIds[i]).slice(0, 80)}) repeats an earlier one`);
  }
  p = idsEnd;
  const factors = new Float32Array(n * d);
  let canonicalHash: Uint8Array | undefined;
  if (enc === 0) {
    for (let i = 0; i < n * d; i++, p += 4) factors[i] = dv.getFloat32(p, true);
  } else {
    canonicalHash = bytes.slice(p, p + HASH_BYTES);
    p += HASH_BYTES;
    for (let r = 0; r < n; r++) {
      const scale = dv.getFloat32(p, true);
      p += 4;
      for (let k = 0; k < d; k++) factors[r * d + k] = scale * dv.getInt8(p++);
    }
  }
  const bias = new Float32Array(n);
  for (let i = 0; i < n; i++, p += 4) bias[i] = dv.getFloat32(p, true);
  for (let i = 0; i < factors.length; i++) {
    if (!Number.isFinite(factors[i])) throw new WireFormatError('model', 'non-finite', `factor ${i} is not finite`);
  }
  for (let i = 0; i < n; i++) if (!Number.isFinite(bias[i])) throw new WireFormatError('model', 'non-finite', `bias ${i} is not finite`);
  const table: ItemTable = { version, itemIds, dim: d, factors, bias };
  return canonicalHash ? { table, encoding: 'int8', canonicalHash } : { table, encoding: 'float32' };
}

// ---------------------------------------------------------------------------------------------
// Hashing

/**
 * SHA-256 through Web Crypto (browser and Node ≥ 20 alike).
 *
 * @example
 * ```ts
 * toHex(await sha256(new Uint8Array())); // 'e3b0c442…b855'
 * ```
 */
export async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new ValidationError('crypto.subtle', 'Web Crypto is unavailable (pages must be a secure context)');
  return new Uint8Array(await subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>));
}

/** The two hex digits of each byte value. */
const HEX_DIGITS: readonly string[] = Array.from({ length: 256 }, (_, b) => (b < 16 ? '0' : '') + b.toString(16));

/**
 * Lower-case hex of bytes. @example `toHex(new Uint8Array([1, 255])) // '01ff'`
 *
 * One `join` of the bytes' digit pairs, which gives a flat string: appending them one by one gave a
 * rope (a V8 ConsString of one piece per byte, ~3.4 KB of heap for a 65-byte key against ~190 B
 * flat) that a Set or Map holding the string kept as it was. (No Node `Buffer`: this module runs in
 * the browser too.)
 */
export function toHex(bytes: Uint8Array): string {
  const parts = new Array<string>(bytes.length);
  for (let i = 0; i < bytes.length; i++) parts[i] = HEX_DIGITS[bytes[i]!]!;
  return parts.join('');
}

/** Bytes from hex; throws ValidationError on odd length or non-hex. @example `fromHex('01ff')` */
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new ValidationError('hex', `not a hex string: ${hex.slice(0, 16)}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Constant-length byte equality. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}
