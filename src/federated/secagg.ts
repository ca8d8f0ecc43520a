/**
 * Secure aggregation with distributed noise: the server learns only the SUM of a cohort's updates,
 * so each device adds only its share of the noise the sum needs.
 *
 * Without it every device must add the full N(0, (σC)²) to its own update (the server sees each
 * update), and the mean of K updates carries noise σC/√K per coordinate. With it the server sees
 * only Σ of K updates; each device adds N(0, (σC)²/K), the sum carries exactly N(0, (σC)²) — the
 * noise the accountant charges for — and the mean σC/K: √K times less noise for the same ε.
 *
 * The protocol is pairwise masking (Bonawitz et al. 2017, "Practical Secure Aggregation for
 * Privacy-Preserving Machine Learning") on a sparse mask graph (Bell et al. 2020, "Secure
 * Single-Server Aggregation with (Poly)Logarithmic Overhead", the SecAgg+ of DESIGN.md), with a
 * simpler dropout recovery than theirs: no secret sharing; when at most K − t members did not
 * upload, the survivors reveal the pair seeds they had with them ({@link recoveryShare},
 * {@link unmaskRecovered}); otherwise the cohort is aborted and reveals nothing.
 *
 * 1. Each member makes an ECDH P-256 key pair (WebCrypto; the private key never leaves the device)
 *    and sends the public key to join a cohort of K.
 * 2. Once K have joined, every member reads all K public keys. Member i shares a secret with each
 *    of its `degree` mask neighbours j (a Harary graph: i±1 … i±degree/2 modulo K); HKDF of the
 *    ECDH secret, salted with the cohort id, keys an AES-CTR stream that gives one b-bit mask per
 *    coordinate. Member i adds the mask when i < j and subtracts it when i > j.
 * 3. Each member encodes its clipped, noised delta in fixed point (step γ, unbiased stochastic
 *    rounding) modulo 2^b, adds its masks, and uploads b bits per coordinate.
 * 4. The server adds the K uploads modulo 2^b: every mask appears once with + and once with −, so
 *    what remains is Σ of the encoded deltas, which it reads as signed and multiplies by γ.
 *
 * Each upload alone is uniformly random to the server (one mask it does not know suffices); any
 * set of uploads short of the whole cohort is still masked while the mask graph stays connected,
 * which takes `degree` colluding members to break (the graph is degree-connected). Only Web
 * platform APIs are used, so this runs in the browser worker and in Node alike.
 */
import { ValidationError } from '../errors.js';
import type { UniformSource } from './dp.js';
import { toHex } from './wire.js';

/** What the server announces in `GET /v1/config` under `secureAggregation`. */
export interface SecAggParams {
  /** K: members per cohort; the server publishes only sums of exactly K updates. */
  cohortSize: number;
  /** b: each coordinate travels as b bits, arithmetic modulo 2^b (2..32). */
  bits: number;
  /** γ: the fixed-point step; a coordinate of the SUM must stay within ±γ·2^(b−1). */
  step: number;
  /** Mask neighbours per member (even, ≤ K − 1 rounded up to even; all others when K is small). */
  degree: number;
  /**
   * t: the fewest uploads the server may unmask a sum of (default K). Each device adds noise for a
   * sum of t, N(0, (σC)²/t), so any t or more of them carry at least the noise the accountant
   * charges. With t < K a cohort missing at most K − t uploads at the upload timeout is recovered: the
   * members that did upload reveal the pairwise seeds they share with the missing ones, and the
   * server removes those masks (see {@link unmaskRecovered}).
   */
  minSurvivors?: number;
}

/** Length of a cohort id on the wire (random bytes; hex in URLs). */
export const COHORT_ID_BYTES = 16;
/** A pair's mask seed (the AES-128 key of its mask stream), as a survivor reveals it for recovery. */
export const PAIR_SEED_BYTES = 16;
/** Raw uncompressed P-256 public key: 0x04 ‖ X ‖ Y. */
export const PUBLIC_KEY_BYTES = 65;
/** Header of a masked update (`LRS1`): see docs/protocol.md. */
export const MASKED_HEADER_BYTES = 44;

const MASKED_MAGIC = [0x4c, 0x52, 0x53, 0x31]; // "LRS1"
const MASK_INFO = new TextEncoder().encode('localrec secagg v1 mask');
const ECDH = { name: 'ECDH', namedCurve: 'P-256' } as const;

function subtle(): SubtleCrypto {
  const s = globalThis.crypto?.subtle;
  if (!s) throw new ValidationError('crypto.subtle', 'is not available: secure aggregation needs WebCrypto (a secure context: https or localhost)');
  return s;
}

/**
 * Checks announced parameters (they come from the server, so a client checks them before use).
 *
 * @example
 * ```ts
 * checkSecAggParams({ cohortSize: 100, bits: 8, step: 1 / 16, degree: 16 });
 * ```
 */
export function checkSecAggParams(p: Partial<SecAggParams>, field = 'secureAggregation'): SecAggParams {
  const { cohortSize, bits, step, degree } = p;
  if (!Number.isInteger(cohortSize) || cohortSize! < 2 || cohortSize! > 100_000) throw new ValidationError(`${field}.cohortSize`, `must be an integer 2..100000, got ${String(cohortSize)}`);
  if (!Number.isInteger(bits) || bits! < 2 || bits! > 32) throw new ValidationError(`${field}.bits`, `must be an integer 2..32, got ${String(bits)}`);
  if (typeof step !== 'number' || !Number.isFinite(step) || step <= 0) throw new ValidationError(`${field}.step`, `must be a positive number, got ${String(step)}`);
  if (!Number.isInteger(degree) || degree! < 2 || degree! % 2 !== 0) throw new ValidationError(`${field}.degree`, `must be an even integer ≥ 2, got ${String(degree)}`);
  const t = p.minSurvivors ?? cohortSize!;
  if (!Number.isInteger(t) || t < 2 || t > cohortSize!) throw new ValidationError(`${field}.minSurvivors`, `must be an integer 2..cohortSize (${cohortSize}), got ${String(p.minSurvivors)}`);
  return { cohortSize: cohortSize!, bits: bits!, step, degree: degree!, minSurvivors: t };
}

/**
 * The members member `index` of a cohort of `size` masks with: i±1 … i±degree/2 (mod size), each
 * once, never itself (everyone else when the cohort is that small). Symmetric: j is in i's list
 * exactly when i is in j's.
 *
 * @example
 * ```ts
 * maskNeighbours(0, 10, 4); // [1, 9, 2, 8]
 * ```
 */
export function maskNeighbours(index: number, size: number, degree: number): number[] {
  const out: number[] = [];
  const seen = new Set<number>([index]);
  for (let s = 1; s <= degree / 2; s++) {
    for (const j of [(index + s) % size, (index - s + size * s) % size]) {
      if (!seen.has(j)) {
        seen.add(j);
        out.push(j);
      }
    }
  }
  return out;
}

/**
 * A fresh ECDH P-256 key pair; the private key is not extractable.
 *
 * @example
 * ```ts
 * const { privateKey, publicKey } = await secAggKeyPair(); // publicKey: 65 bytes to send
 * ```
 */
export async function secAggKeyPair(): Promise<{ privateKey: CryptoKey; publicKey: Uint8Array }> {
  const pair = (await subtle().generateKey(ECDH, false, ['deriveBits'])) as CryptoKeyPair;
  const publicKey = new Uint8Array(await subtle().exportKey('raw', pair.publicKey));
  return { privateKey: pair.privateKey, publicKey };
}

/** Whether `bytes` is an uncompressed P-256 point that WebCrypto accepts. */
export async function importPublicKey(bytes: Uint8Array): Promise<CryptoKey> {
  if (bytes.length !== PUBLIC_KEY_BYTES || bytes[0] !== 0x04) throw new ValidationError('publicKey', `must be a ${PUBLIC_KEY_BYTES}-byte uncompressed P-256 point (0x04 ‖ X ‖ Y)`);
  try {
    return await subtle().importKey('raw', bytes as Uint8Array<ArrayBuffer>, ECDH, false, []);
  } catch {
    throw new ValidationError('publicKey', 'is not a point on P-256');
  }
}

const modMask = (bits: number): number => (bits === 32 ? 0xffffffff : 2 ** bits - 1);

/**
 * The seed of the mask stream two members share: ECDH → HKDF-SHA-256 (salt = cohort id), 128 bits,
 * the AES key of {@link maskFromSeed}. Both ends compute the same seed; it is fresh per cohort (the
 * key pairs are), so revealing it for recovery exposes nothing beyond that pair's mask in that cohort.
 */
export async function pairSeed(privateKey: CryptoKey, peer: CryptoKey, cohortId: Uint8Array): Promise<Uint8Array> {
  const s = subtle();
  const shared = await s.deriveBits({ name: 'ECDH', public: peer }, privateKey, 256);
  const ikm = await s.importKey('raw', shared, 'HKDF', false, ['deriveBits']);
  return new Uint8Array(await s.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: cohortId as Uint8Array<ArrayBuffer>, info: MASK_INFO }, ikm, PAIR_SEED_BYTES * 8));
}

/** The b-bit mask stream of a seed: AES-128-CTR over zeros, 4 bytes per coordinate, reduced modulo 2^b. */
export async function maskFromSeed(seed: Uint8Array, length: number, bits: number): Promise<Uint32Array> {
  if (seed.length !== PAIR_SEED_BYTES) throw new ValidationError('seed', `must be ${PAIR_SEED_BYTES} bytes, got ${seed.length}`);
  const s = subtle();
  const key = await s.importKey('raw', seed as Uint8Array<ArrayBuffer>, { name: 'AES-CTR' }, false, ['encrypt']);
  const stream = await s.encrypt({ name: 'AES-CTR', counter: new Uint8Array(16), length: 64 }, key, new Uint8Array(length * 4));
  const out = new Uint32Array(stream, 0, length);
  if (bits < 32) {
    const m = modMask(bits);
    for (let i = 0; i < length; i++) out[i] = out[i]! & m;
  }
  return out;
}

/**
 * The b-bit mask stream two members share ({@link maskFromSeed} of their {@link pairSeed}). Both
 * ends compute the same stream.
 *
 * @example
 * ```ts
 * const m = await pairMask(mine.privateKey, theirPublicKey, cohortId, 62_305, 8);
 * ```
 */
export async function pairMask(privateKey: CryptoKey, peer: CryptoKey, cohortId: Uint8Array, length: number, bits: number): Promise<Uint32Array> {
  return maskFromSeed(await pairSeed(privateKey, peer, cohortId), length, bits);
}

/**
 * The survivors' mask graph once `dropped` is removed, as connected components (each ascending).
 * After recovery the server can unmask the sum of each component on its own, so every component
 * must hold at least t = minSurvivors members for any sum it learns to carry the noise σC.
 *
 * @example
 * ```ts
 * survivorComponents(8, 2, [2, 6]); // [[0, 1, 7], [3, 4, 5]]: a ring of 8 cut in two places
 * ```
 */
export function survivorComponents(size: number, degree: number, dropped: readonly number[]): number[][] {
  const gone = new Set(dropped);
  const seen = new Set<number>();
  const out: number[][] = [];
  for (let s = 0; s < size; s++) {
    if (gone.has(s) || seen.has(s)) continue;
    const comp: number[] = [];
    const stack = [s];
    seen.add(s);
    while (stack.length) {
      const i = stack.pop()!;
      comp.push(i);
      for (const j of maskNeighbours(i, size, degree)) {
        if (!gone.has(j) && !seen.has(j)) {
          seen.add(j);
          stack.push(j);
        }
      }
    }
    out.push(comp.sort((a, b) => a - b));
  }
  return out;
}

/** Member `index`'s mask neighbours among `dropped`, ascending: the seeds its recovery share holds, in that order. */
export function droppedNeighbours(index: number, size: number, degree: number, dropped: readonly number[]): number[] {
  const gone = new Set(dropped);
  return maskNeighbours(index, size, degree)
    .filter((j) => gone.has(j))
    .sort((a, b) => a - b);
}

/**
 * A surviving member's recovery share: the seeds it shares with each of its mask neighbours that
 * did not upload ({@link droppedNeighbours} order), {@link PAIR_SEED_BYTES} bytes each. Refused
 * when `dropped` holds this member itself (the server says it never got this member's upload).
 *
 * @example
 * ```ts
 * const share = await recoveryShare({ index, cohortId, publicKeys, privateKey, params, dropped: view.dropped });
 * ```
 */
export async function recoveryShare(o: {
  index: number;
  cohortId: Uint8Array;
  publicKeys: ReadonlyMap<number, Uint8Array>;
  privateKey: CryptoKey;
  params: SecAggParams;
  dropped: readonly number[];
}): Promise<Uint8Array> {
  if (o.dropped.includes(o.index)) throw new ValidationError('cohort.dropped', `names this member (${o.index}), whose upload was sent: refusing to reveal its seeds`);
  const need = droppedNeighbours(o.index, o.params.cohortSize, o.params.degree, o.dropped);
  const out = new Uint8Array(need.length * PAIR_SEED_BYTES);
  for (const [k, j] of need.entries()) {
    const key = o.publicKeys.get(j);
    if (!key) throw new ValidationError('cohort.keys', `lacks the key of member ${j}, a mask neighbour of member ${o.index}`);
    out.set(await pairSeed(o.privateKey, await importPublicKey(key), o.cohortId), k * PAIR_SEED_BYTES);
  }
  return out;
}

/**
 * Fixed-point encoding modulo 2^b with unbiased stochastic rounding: E[decoded] = value. A single
 * value may wrap around; only the cohort's SUM has to stay within ±step·2^(b−1).
 *
 * @example
 * ```ts
 * encodeFixedPoint(Float64Array.of(0.5, -0.25), 0.25, 8, Math.random); // Uint32Array [2, 255]
 * ```
 */
export function encodeFixedPoint(values: Float64Array | Float32Array, step: number, bits: number, uniform: UniformSource): Uint32Array {
  const out = new Uint32Array(values.length);
  const mod = 2 ** bits;
  for (let i = 0; i < values.length; i++) {
    const y = values[i]! / step;
    if (!Number.isFinite(y)) throw new ValidationError(`values[${i}]`, `must be finite, got ${values[i]}`);
    const f = Math.floor(y);
    const q = f + (uniform() < y - f ? 1 : 0);
    out[i] = ((q % mod) + mod) % mod;
  }
  return out;
}

/**
 * Adds `b` into `a` modulo 2^bits (in place), or subtracts it when `sign` is −1.
 */
export function addMod(a: Uint32Array, b: Uint32Array, bits: number, sign: 1 | -1 = 1): Uint32Array {
  if (a.length !== b.length) throw new RangeError(`cannot add vectors of ${a.length} and ${b.length} values`);
  const m = modMask(bits);
  if (bits === 32) {
    for (let i = 0; i < a.length; i++) a[i] = (sign === 1 ? a[i]! + b[i]! : a[i]! - b[i]!) >>> 0;
  } else {
    for (let i = 0; i < a.length; i++) a[i] = (sign === 1 ? a[i]! + b[i]! : a[i]! - b[i]! + m + 1) & m;
  }
  return a;
}

/**
 * The sum as real numbers: each coordinate read as a signed b-bit integer, times the step.
 *
 * @example
 * ```ts
 * decodeFixedPoint(Uint32Array.of(2, 255), 0.25, 8); // Float64Array [0.5, -0.25]
 * ```
 */
export function decodeFixedPoint(sum: Uint32Array, step: number, bits: number): Float64Array {
  const out = new Float64Array(sum.length);
  const half = 2 ** (bits - 1);
  const mod = 2 ** bits;
  for (let i = 0; i < sum.length; i++) {
    const v = sum[i]!;
    out[i] = (v >= half ? v - mod : v) * step;
  }
  return out;
}

/** Packs b-bit values, least significant bit first, into ⌈n·b/8⌉ bytes. */
export function packBits(values: Uint32Array, bits: number, out = new Uint8Array(Math.ceil((values.length * bits) / 8))): Uint8Array {
  let acc = 0;
  let accBits = 0;
  let o = 0;
  for (let i = 0; i < values.length; i++) {
    let v = values[i]!;
    let left = bits;
    while (left > 0) {
      const take = Math.min(left, 8 - accBits);
      acc |= (v & ((1 << take) - 1)) << accBits;
      v = take === 32 ? 0 : v >>> take;
      left -= take;
      accBits += take;
      if (accBits === 8) {
        out[o++] = acc;
        acc = 0;
        accBits = 0;
      }
    }
  }
  if (accBits > 0) out[o] = acc;
  return out;
}

/** Inverse of {@link packBits}. */
export function unpackBits(bytes: Uint8Array, count: number, bits: number): Uint32Array {
  const out = new Uint32Array(count);
  let byte = 0;
  let bitPos = 0;
  for (let i = 0; i < count; i++) {
    let v = 0;
    let got = 0;
    while (got < bits) {
      const take = Math.min(bits - got, 8 - bitPos);
      v += ((bytes[byte]! >>> bitPos) & ((1 << take) - 1)) * 2 ** got;
      got += take;
      bitPos += take;
      if (bitPos === 8) {
        byte++;
        bitPos = 0;
      }
    }
    out[i] = v;
  }
  return out;
}

/** Bytes of a masked update for `length` coordinates at `bits` each. */
export function maskedUpdateBytes(length: number, bits: number): number {
  return MASKED_HEADER_BYTES + Math.ceil((length * bits) / 8);
}

/** The widest b (≤ 32) whose masked update of `length` coordinates fits `budget` bytes, or 0. */
export function chooseSecAggBits(length: number, budget: number): number {
  return Math.min(32, Math.floor(((budget - MASKED_HEADER_BYTES) * 8) / length));
}

export interface MaskedUpdate {
  cohortId: Uint8Array;
  /** This member's place in the cohort (0..K−1), as the server assigned it. */
  index: number;
  cohortSize: number;
  bits: number;
  /**
   * The fixed-point step γ the values were encoded with (the server's `secureAggregation.step`),
   * sent as a float32: the server refuses an upload of another step, and a restart refuses pending
   * uploads of another step, rather than unmask a sum at the wrong scale.
   */
  step: number;
  baseVersion: number;
  /** Masked, encoded coordinates (b bits each): factors row-major, then biases. */
  values: Uint32Array;
}

/**
 * `LRS1` body: magic, format 1, bits, 2 reserved bytes (0), cohort id (16), index, cohort size,
 * coordinate count, base version (u32 LE each), the step γ (float32 LE), then the packed values.
 */
export function encodeMaskedUpdate(u: MaskedUpdate): Uint8Array {
  if (u.cohortId.length !== COHORT_ID_BYTES) throw new ValidationError('cohortId', `must be ${COHORT_ID_BYTES} bytes`);
  const out = new Uint8Array(maskedUpdateBytes(u.values.length, u.bits));
  out.set(MASKED_MAGIC, 0);
  out[4] = 1;
  out[5] = u.bits;
  out.set(u.cohortId, 8);
  const dv = new DataView(out.buffer);
  dv.setUint32(24, u.index, true);
  dv.setUint32(28, u.cohortSize, true);
  dv.setUint32(32, u.values.length, true);
  dv.setUint32(36, u.baseVersion, true);
  dv.setFloat32(40, u.step, true);
  packBits(u.values, u.bits, out.subarray(MASKED_HEADER_BYTES));
  return out;
}

/** Header fields of an `LRS1` body, checked for shape only (the values are opaque to the server). */
export function decodeMaskedHeader(bytes: Uint8Array): Omit<MaskedUpdate, 'values'> & { length: number } {
  if (bytes.length < MASKED_HEADER_BYTES) throw new ValidationError('update', `a masked update has a ${MASKED_HEADER_BYTES}-byte header; got ${bytes.length} bytes (truncated)`);
  for (let i = 0; i < 4; i++) if (bytes[i] !== MASKED_MAGIC[i]) throw new ValidationError('update', 'not a masked update (magic is not LRS1)');
  if (bytes[4] !== 1) throw new ValidationError('update', `unsupported masked-update format ${bytes[4]}`);
  const bits = bytes[5]!;
  if (bits < 2 || bits > 32) throw new ValidationError('update', `bits must be 2..32, got ${bits}`);
  if (bytes[6] !== 0 || bytes[7] !== 0) throw new ValidationError('update', 'reserved header bytes 6–7 are not zero');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = dv.getUint32(32, true);
  if (bytes.length !== maskedUpdateBytes(length, bits)) {
    throw new ValidationError('update', `${length} coordinates at ${bits} bits take ${maskedUpdateBytes(length, bits)} bytes; got ${bytes.length} (length-mismatch)`);
  }
  const step = dv.getFloat32(40, true);
  if (!(step > 0 && Number.isFinite(step))) throw new ValidationError('update', `the fixed-point step must be a positive float32, got ${step}`);
  // One encoding per update: the bits past the last value are zero.
  const used = (length * bits) % 8;
  if (used !== 0 && bytes[bytes.length - 1]! >> used !== 0) throw new ValidationError('update', 'padding bits in the last byte are not zero');
  return {
    cohortId: bytes.slice(8, 8 + COHORT_ID_BYTES),
    index: dv.getUint32(24, true),
    cohortSize: dv.getUint32(28, true),
    bits,
    step,
    length,
    baseVersion: dv.getUint32(36, true),
  };
}

/** Full decode of an `LRS1` body. */
export function decodeMaskedUpdate(bytes: Uint8Array): MaskedUpdate {
  const h = decodeMaskedHeader(bytes);
  return { ...h, values: unpackBits(bytes.subarray(MASKED_HEADER_BYTES), h.length, h.bits) };
}

/**
 * Member `index`'s upload: the encoded values plus (index < j) or minus (index > j) the mask it
 * shares with each mask neighbour j. `publicKeys` are the cohort's K keys, in cohort order.
 *
 * @example
 * ```ts
 * const masked = await maskValues(encoded, { index, cohortId, publicKeys, privateKey, params });
 * ```
 */
export async function maskValues(
  encoded: Uint32Array,
  o: {
    index: number;
    cohortId: Uint8Array;
    /** All K keys in member order, or (what `GET /v1/secagg/cohorts/:id/members/:i` answers) member index → key for this member and its mask neighbours. */
    publicKeys: readonly Uint8Array[] | ReadonlyMap<number, Uint8Array>;
    privateKey: CryptoKey;
    params: SecAggParams;
  },
): Promise<Uint32Array> {
  const K = o.params.cohortSize;
  let keys: ReadonlyMap<number, Uint8Array>;
  if (Array.isArray(o.publicKeys)) {
    if (o.publicKeys.length !== K) throw new ValidationError('cohort', `has ${o.publicKeys.length} keys, the server announced cohorts of ${K}`);
    keys = new Map(o.publicKeys.map((k, i) => [i, k] as const));
  } else keys = o.publicKeys as ReadonlyMap<number, Uint8Array>;
  if (!(Number.isInteger(o.index) && o.index >= 0 && o.index < K)) throw new ValidationError('cohort.index', `must be 0..${K - 1}, got ${o.index}`);
  const seen = new Set<string>();
  for (const [j, k] of keys) {
    if (!(Number.isInteger(j) && j >= 0 && j < K)) throw new ValidationError('cohort.keys', `names member ${j}, outside 0..${K - 1}`);
    const hex = toHex(k);
    if (seen.has(hex)) throw new ValidationError('cohort.keys', 'holds the same public key twice: a cohort must have K distinct members');
    seen.add(hex);
  }
  const out = encoded.slice();
  for (const j of maskNeighbours(o.index, K, o.params.degree)) {
    const key = keys.get(j);
    if (!key) throw new ValidationError('cohort.keys', `lacks the key of member ${j}, a mask neighbour of member ${o.index}`);
    const peer = await importPublicKey(key);
    const mask = await pairMask(o.privateKey, peer, o.cohortId, out.length, o.params.bits);
    addMod(out, mask, o.params.bits, o.index < j ? 1 : -1);
  }
  return out;
}

/**
 * The server's side: Σ of the K uploads modulo 2^b (the masks cancel), as real numbers.
 *
 * @example
 * ```ts
 * const sum = unmaskSum(uploads.map(decodeMaskedUpdate), params.step); // Σ of the K deltas
 * ```
 */
export function unmaskSum(updates: readonly MaskedUpdate[], step: number): Float64Array {
  const first = updates[0];
  if (!first) throw new RangeError('no updates to sum');
  const acc = new Uint32Array(first.values.length);
  for (const u of updates) addMod(acc, u.values, first.bits);
  return decodeFixedPoint(acc, step, first.bits);
}

/**
 * The server's side after dropouts: Σ of the surviving members' uploads modulo 2^b, minus the masks
 * each survivor shared with a member that did not upload (regenerated from the survivors' recovery
 * shares, {@link recoveryShare}), as real numbers. `shares` maps every survivor that has a dropped
 * mask neighbour to its share.
 */
export async function unmaskRecovered(
  updates: readonly MaskedUpdate[],
  shares: ReadonlyMap<number, Uint8Array>,
  dropped: readonly number[],
  params: SecAggParams,
  step: number,
): Promise<Float64Array> {
  const first = updates[0];
  if (!first) throw new RangeError('no updates to sum');
  const acc = new Uint32Array(first.values.length);
  for (const u of updates) {
    addMod(acc, u.values, first.bits);
    const need = droppedNeighbours(u.index, params.cohortSize, params.degree, dropped);
    if (need.length === 0) continue;
    const share = shares.get(u.index);
    if (!share || share.length !== need.length * PAIR_SEED_BYTES) throw new RangeError(`member ${u.index} has no recovery share for its ${need.length} dropped neighbours`);
    for (const [k, i] of need.entries()) {
      const mask = await maskFromSeed(share.subarray(k * PAIR_SEED_BYTES, (k + 1) * PAIR_SEED_BYTES), acc.length, first.bits);
      // Member u added the mask when u < i and subtracted it when u > i: undo that.
      addMod(acc, mask, first.bits, u.index < i ? -1 : 1);
    }
  }
  return decodeFixedPoint(acc, step, first.bits);
}
