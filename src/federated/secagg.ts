/**
 * Secure aggregation with distributed noise: the server learns only the SUM of a cohort's updates,
 * so each device adds only its share of the noise the sum needs.
 *
 * Without it every device must add the full N(0, (σC)²) to its own update (the server sees each
 * update), and the mean of K updates carries noise σC/√K per coordinate. With it the server sees
 * only Σ of K updates; each device adds N(0, (σC)²/t) (t = the cohort's minimum survivors; K without
 * dropout recovery), so any t of them carry at least N(0, (σC)²) — the noise the accountant charges
 * for — and the mean of a full cohort σC/K without recovery (σC·√(K/t)/K with it): about √K times
 * less noise for the same ε.
 *
 * The protocol is pairwise masking (Bonawitz et al. 2017, "Practical Secure Aggregation for
 * Privacy-Preserving Machine Learning") on a sparse mask graph (Bell et al. 2020, "Secure
 * Single-Server Aggregation with (Poly)Logarithmic Overhead", the SecAgg+ of DESIGN.md). With
 * dropout recovery on (t = minSurvivors < K) every upload is masked twice, as in their protocols: by
 * the pairwise masks, and by a self-mask from a fresh seed b that the member Shamir-shares among its
 * mask neighbours (threshold {@link selfMaskThreshold}), each share sealed to its holder (AES-GCM
 * under a key of their own ECDH secret) inside the upload. Once uploads stop, each survivor answers
 * once, for each mask neighbour: the pair seed when the server lists that neighbour as dropped, its
 * share of the neighbour's b when it does not ({@link recoveryShare}); the server regenerates and
 * removes what is needed ({@link unmaskRecovered}). A server that claims a member dropped while
 * holding its upload gets that member's pair seeds but none of the shares of its b, so the upload
 * stays masked. When more than K − t members are missing the cohort is aborted and reveals nothing.
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
  /** γ: the fixed-point step; a coordinate of the SUM must stay within −γ·2^(b−1) … γ·(2^(b−1) − 1). */
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

/**
 * The generation of the mask derivation and of the `LRS1` formats that carry it (2: pair masks bound
 * to both members' indices, formats 4 and 5). The server announces it in `/v1/config`
 * (`secureAggregation.maskVersion`), and a device joins only a server of its own generation: members
 * of two generations in one cohort would have masks that do not cancel, and a device would spend ε
 * on an upload the server then refuses.
 */
export const MASK_VERSION = 2;

/** Length of a cohort id on the wire (random bytes; hex in URLs). */
export const COHORT_ID_BYTES = 16;
/** A pair's mask seed (the AES-128 key of its mask stream), as a survivor reveals it for recovery. */
export const PAIR_SEED_BYTES = 16;
/** Raw uncompressed P-256 public key: 0x04 ‖ X ‖ Y. */
export const PUBLIC_KEY_BYTES = 65;
/** Header of a masked update (`LRS1`): see docs/protocol.md. */
export const MASKED_HEADER_BYTES = 44;

/** A member's share of a neighbour's self-mask seed (Shamir over GF(2⁸), one byte per seed byte). */
export const SELF_SHARE_BYTES = 16;
/** A share sealed to its holder: AES-128-GCM of the {@link SELF_SHARE_BYTES} bytes plus its 16-byte tag. */
export const SEALED_SHARE_BYTES = SELF_SHARE_BYTES + 16;
/** Shares are points x = 1..255 of GF(2⁸): with recovery a member has at most this many mask neighbours. */
export const MAX_RECOVERY_DEGREE = 255;

/**
 * Largest t (`minSurvivors`, the cohort size K without dropout recovery) a device accepts. Each
 * device adds only N(0, (σC)²/t) to its upload, trusting that the server unmasks no sum of fewer
 * than t: a server that fills a cohort with joins of its own (or forges its keys) reads one upload
 * at σ/√t, so t sets how little noise one upload can carry. The published recipes use K = 4,000
 * and 610; past 10,000 a device refuses the config (and the server refuses to start with it).
 */
export const MAX_SURVIVORS = 10_000;

/** Longest cohort fill or upload deadline a device accepts from a server config (a day); the server refuses longer. */
export const MAX_COHORT_TIMEOUT_MS = 86_400_000;

const MASKED_MAGIC = [0x4c, 0x52, 0x53, 0x31]; // "LRS1"
const MASK_INFO = new TextEncoder().encode('localrec secagg v1 mask');
const SHARE_INFO = new TextEncoder().encode('localrec secagg v1 share');
const CONFIRM_INFO = new TextEncoder().encode('localrec secagg v1 confirm');
/** A confirmation tag one member sends a neighbour: HMAC-SHA-256 truncated to 16 bytes. */
export const CONFIRM_TAG_BYTES = 16;
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
  // (Beyond cohortSize a degree adds no neighbour: the bound keeps a device from looping on one.)
  if (!Number.isInteger(degree) || degree! < 2 || degree! % 2 !== 0 || degree! > 2 * cohortSize!) {
    throw new ValidationError(`${field}.degree`, `must be an even integer from 2 to twice the cohort size (${2 * cohortSize!}), got ${String(degree)}`);
  }
  const t = p.minSurvivors ?? cohortSize!;
  if (!Number.isInteger(t) || t < 2 || t > cohortSize!) throw new ValidationError(`${field}.minSurvivors`, `must be an integer 2..cohortSize (${cohortSize}), got ${String(p.minSurvivors)}`);
  if (t > MAX_SURVIVORS) {
    throw new ValidationError(
      `${field}.minSurvivors`,
      `is ${t}${t === cohortSize ? ' (the cohort size: no dropout recovery)' : ''}, more than ${MAX_SURVIVORS}: each device adds only σC/√t of noise to its upload, and a server that filled a cohort with its own joins would read one upload at σ/√t; use cohorts of at most ${MAX_SURVIVORS}, or minSurvivors of at most ${MAX_SURVIVORS}`,
    );
  }
  if (t < cohortSize! && Math.min(degree!, cohortSize! - 1) > MAX_RECOVERY_DEGREE) {
    throw new ValidationError(`${field}.degree`, `must be at most ${MAX_RECOVERY_DEGREE} with dropout recovery (minSurvivors < cohortSize: shares of the self-mask are points of GF(2⁸)), got ${degree}`);
  }
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
  // Past half the cohort every member is a neighbour already.
  for (let s = 1; s <= Math.min(degree / 2, Math.ceil(size / 2)); s++) {
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
 * The seed of the mask stream two members share: ECDH → HKDF-SHA-256 (salt = {@link cohortSalt}),
 * 128 bits, the AES key of {@link maskFromSeed}. Both ends compute the same seed; it is fresh per
 * cohort (the key pairs are), so revealing it for recovery exposes nothing beyond that pair's mask
 * in that cohort. The info binds both members' indices (`a`, `b`: this member's own and the slot
 * the peer's key was given for, in either order) as each end believes them: a server that hands a
 * member real keys of other members in other slots ("rewiring" the mask graph into small cliques
 * whose masks cancel among themselves, so that it could unmask sums of a few uploads) gets masks
 * that cancel with nobody's.
 */
export async function pairSeed(privateKey: CryptoKey, peer: CryptoKey, salt: Uint8Array, a: number, b: number): Promise<Uint8Array> {
  return pairDerive(privateKey, peer, salt, pairInfo(MASK_INFO, a, b));
}

/** `label` followed by the two member indices, smaller first (u32 LE each). */
function pairInfo(label: Uint8Array, a: number, b: number): Uint8Array {
  const out = new Uint8Array(label.length + 8);
  out.set(label, 0);
  const dv = new DataView(out.buffer, label.length);
  dv.setUint32(0, Math.min(a, b), true);
  dv.setUint32(4, Math.max(a, b), true);
  return out;
}

/**
 * What every key two members derive is salted with: the cohort id and the cohort's parameters as
 * this member was told them (K, degree, t, bits, γ as float32, the update's coordinate count, u32
 * LE each). A server that tells members different parameters (one that recovery is off, another
 * a smaller cohort) gets masks that do not cancel, seeds that strip nothing and tags that fail,
 * instead of a mask graph its members disagree on.
 */
export function cohortSalt(cohortId: Uint8Array, params: SecAggParams, length: number): Uint8Array {
  const out = new Uint8Array(cohortId.length + 24);
  out.set(cohortId, 0);
  const dv = new DataView(out.buffer, cohortId.length);
  dv.setUint32(0, params.cohortSize, true);
  dv.setUint32(4, params.degree, true);
  dv.setUint32(8, params.minSurvivors ?? params.cohortSize, true);
  dv.setUint32(12, params.bits, true);
  dv.setFloat32(16, params.step, true);
  dv.setUint32(20, length, true);
  return out;
}

/** HKDF-SHA-256 of the pair's ECDH secret (salt = {@link cohortSalt}) under `info`: 128 bits. */
async function pairDerive(privateKey: CryptoKey, peer: CryptoKey, salt: Uint8Array, info: Uint8Array): Promise<Uint8Array> {
  const s = subtle();
  const shared = await s.deriveBits({ name: 'ECDH', public: peer }, privateKey, 256);
  const ikm = await s.importKey('raw', shared, 'HKDF', false, ['deriveBits']);
  return new Uint8Array(await s.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: salt as Uint8Array<ArrayBuffer>, info: info as Uint8Array<ArrayBuffer> }, ikm, 128));
}

/**
 * The AES-128-GCM key two members seal self-mask shares to each other with: the same ECDH secret
 * as their {@link pairSeed}, another HKDF label, so revealing the pair seed for recovery does not
 * open the shares (which would hand the server a neighbour's self-mask).
 */
async function pairShareKey(privateKey: CryptoKey, peer: CryptoKey, salt: Uint8Array): Promise<CryptoKey> {
  const raw = await pairDerive(privateKey, peer, salt, SHARE_INFO);
  return subtle().importKey('raw', raw as Uint8Array<ArrayBuffer>, { name: 'AES-GCM' }, false, ['encrypt', 'decrypt']);
}

/** The GCM nonce of the share `from` seals to `to`: each pair key seals one share each way. */
function shareIv(from: number, to: number): Uint8Array<ArrayBuffer> {
  const iv = new Uint8Array(12);
  const dv = new DataView(iv.buffer);
  dv.setUint32(0, from, true);
  dv.setUint32(4, to, true);
  return iv;
}

// GF(2⁸) with the AES polynomial, for Shamir's scheme on each byte of a seed.
const GF_EXP = new Uint8Array(510);
const GF_LOG = new Uint8Array(256);
{
  let x = 1;
  for (let i = 0; i < 255; i++) {
    GF_EXP[i] = x;
    GF_LOG[x] = i;
    x ^= (x << 1) ^ (x & 0x80 ? 0x11b : 0); // × 3
    x &= 0xff;
  }
  for (let i = 255; i < 510; i++) GF_EXP[i] = GF_EXP[i - 255]!;
}
const gfMul = (a: number, b: number): number => (a === 0 || b === 0 ? 0 : GF_EXP[GF_LOG[a]! + GF_LOG[b]!]!);
const gfDiv = (a: number, b: number): number => (a === 0 ? 0 : GF_EXP[GF_LOG[a]! + 255 - GF_LOG[b]!]!);

/**
 * Shamir's scheme on each byte of `secret`: `n` shares, any `h` of which give it back and fewer say
 * nothing about it. Share p is the point x = p + 1.
 *
 * @example
 * ```ts
 * const shares = splitSecret(seed, 5, 3); // 5 × 16 bytes; combineShares of any 3 gives seed
 * ```
 */
export function splitSecret(secret: Uint8Array, n: number, h: number, random: (out: Uint8Array) => void = (out) => void crypto.getRandomValues(out)): Uint8Array[] {
  if (!(Number.isInteger(n) && n >= 1 && n <= 255)) throw new RangeError(`shares: n must be 1..255, got ${n}`);
  if (!(Number.isInteger(h) && h >= 1 && h <= n)) throw new RangeError(`shares: threshold must be 1..${n}, got ${h}`);
  const coeffs = new Uint8Array(secret.length * (h - 1));
  random(coeffs);
  const out = Array.from({ length: n }, () => new Uint8Array(secret.length));
  for (let b = 0; b < secret.length; b++) {
    for (let p = 0; p < n; p++) {
      const x = p + 1;
      // Horner, highest coefficient first.
      let y = 0;
      for (let k = h - 2; k >= 0; k--) y = gfMul(y, x) ^ coeffs[b * (h - 1) + k]!;
      out[p]![b] = gfMul(y, x) ^ secret[b]!;
    }
  }
  return out;
}

/** The secret of {@link splitSecret} from shares at points `x` (distinct, 1..255): Lagrange at 0. */
export function combineShares(points: ReadonlyArray<{ x: number; y: Uint8Array }>): Uint8Array {
  const first = points[0];
  if (!first) throw new RangeError('no shares to combine');
  const out = new Uint8Array(first.y.length);
  for (const p of points) if (!(Number.isInteger(p.x) && p.x >= 1 && p.x <= 255)) throw new RangeError(`a share's point must be 1..255, got ${p.x}`);
  for (const [i, pi] of points.entries()) {
    let l = 1;
    for (const [j, pj] of points.entries()) {
      if (i === j) continue;
      if (pj.x === pi.x) throw new RangeError(`two shares at x = ${pi.x}`);
      l = gfMul(l, gfDiv(pj.x, pj.x ^ pi.x));
    }
    for (let b = 0; b < out.length; b++) out[b] ^= gfMul(l, pi.y[b]!);
  }
  return out;
}

/**
 * How many of a member's `n` mask neighbours must give back their shares of its self-mask seed:
 * ⌈n/2⌉. The server needs every neighbour's pair seed to strip one upload's pairwise masks (each
 * neighbour it tells "dropped") and this many shares (neighbours it tells "uploaded"): it would
 * take this many colluding neighbours to do both. Recovery needs this many surviving neighbours of
 * every survivor.
 */
export function selfMaskThreshold(n: number): number {
  return Math.max(1, Math.ceil(n / 2));
}

/** Member `index`'s mask neighbours in ascending order: the order of its sealed shares and of its recovery share's parts. */
export function sortedNeighbours(index: number, size: number, degree: number): number[] {
  return maskNeighbours(index, size, degree).sort((a, b) => a - b);
}

/** Whether uploads carry a self-mask and sealed shares: with dropout recovery (minSurvivors < cohortSize). */
export function usesSelfMask(p: SecAggParams): boolean {
  return (p.minSurvivors ?? p.cohortSize) < p.cohortSize;
}

/**
 * Adds member `index`'s self-mask (from a fresh random seed) to its masked values, and seals a
 * Shamir share of the seed to each mask neighbour ({@link sortedNeighbours} order,
 * {@link SEALED_SHARE_BYTES} each). The seed itself is not kept: only ⌈n/2⌉ neighbours together
 * can give it back, and only after this member's upload counted.
 */
export async function addSelfMask(
  masked: Uint32Array,
  o: { index: number; cohortId: Uint8Array; publicKeys: ReadonlyMap<number, Uint8Array>; privateKey: CryptoKey; params: SecAggParams },
): Promise<{ values: Uint32Array; sealed: Uint8Array }> {
  const K = o.params.cohortSize;
  const seed = crypto.getRandomValues(new Uint8Array(PAIR_SEED_BYTES));
  const values = addMod(masked.slice(), await maskFromSeed(seed, masked.length, o.params.bits), o.params.bits);
  const holders = sortedNeighbours(o.index, K, o.params.degree);
  const shares = splitSecret(seed, holders.length, selfMaskThreshold(holders.length));
  const sealed = new Uint8Array(holders.length * SEALED_SHARE_BYTES);
  for (const [p, j] of holders.entries()) {
    const key = o.publicKeys.get(j);
    if (!key) throw new ValidationError('cohort.keys', `lacks the key of member ${j}, a mask neighbour of member ${o.index}`);
    const aes = await pairShareKey(o.privateKey, await importPublicKey(key), cohortSalt(o.cohortId, o.params, masked.length));
    const ct = await subtle().encrypt({ name: 'AES-GCM', iv: shareIv(o.index, j), additionalData: o.cohortId as Uint8Array<ArrayBuffer> }, aes, shares[p]! as Uint8Array<ArrayBuffer>);
    sealed.set(new Uint8Array(ct), p * SEALED_SHARE_BYTES);
  }
  return { values, sealed };
}

/** A member during recovery: its place, its keys and its cohort's, and the list of dropped members it was shown. */
export interface RecoveryMember {
  index: number;
  cohortId: Uint8Array;
  /** Member index → public key, for this member and its mask neighbours. */
  publicKeys: ReadonlyMap<number, Uint8Array>;
  privateKey: CryptoKey;
  params: SecAggParams;
  /** The update's coordinate count (part of what the pair keys are salted with: {@link cohortSalt}). */
  length: number;
  dropped: readonly number[];
}

/** Member `index`'s mask neighbours not in `dropped`, ascending: whom it confirms its list to, and from whom it needs a confirmation. */
export function aliveNeighbours(index: number, size: number, degree: number, dropped: readonly number[]): number[] {
  const gone = new Set(dropped);
  return sortedNeighbours(index, size, degree).filter((j) => !gone.has(j));
}

/**
 * The two rounds of tags before a recovery share: `confirm` — "I was shown this list"; `ready` —
 * "and every neighbour it leaves alive confirmed the same list to me". A member answers only once
 * every neighbour its list leaves alive is ready on that list: consistency two steps out, which is
 * what keeps the server from unmasking a sum of fewer than t (docs/protocol.md, "Dropout recovery").
 */
export type TagRound = 'confirm' | 'ready';

/** The message a tag authenticates: who tells whom, in which round, about which list of dropped members in this cohort. */
async function confirmMessage(cohortId: Uint8Array, from: number, to: number, dropped: readonly number[], round: TagRound = 'confirm'): Promise<Uint8Array<ArrayBuffer>> {
  const list = [...new Set(dropped)].sort((a, b) => a - b);
  const out = new Uint8Array(4 + cohortId.length + 8 + 4 * list.length);
  out.set([0x4c, 0x52, 0x43, round === 'confirm' ? 0x31 : 0x32], 0); // "LRC1" / "LRC2"
  out.set(cohortId, 4);
  const dv = new DataView(out.buffer);
  dv.setUint32(4 + cohortId.length, from, true);
  dv.setUint32(8 + cohortId.length, to, true);
  list.forEach((j, k) => dv.setUint32(12 + cohortId.length + 4 * k, j, true));
  return out;
}

async function pairConfirmKey(privateKey: CryptoKey, peer: CryptoKey, salt: Uint8Array): Promise<CryptoKey> {
  const raw = await pairDerive(privateKey, peer, salt, CONFIRM_INFO);
  return subtle().importKey('raw', raw as Uint8Array<ArrayBuffer>, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
}

/**
 * Member `index`'s confirmations of the list of dropped members it was shown: one tag per mask
 * neighbour the list leaves alive ({@link aliveNeighbours} order), an HMAC under a key only the two
 * of them hold. A member gives its recovery share only once every neighbour its list leaves alive
 * has confirmed the same list ({@link checkConfirmations}): a server that shows neighbours
 * different lists (to collect both a member's pair seeds and its self-mask shares) cannot forge
 * the confirmations that would hide it.
 */
export async function confirmationTags(o: RecoveryMember, round: TagRound = 'confirm'): Promise<Uint8Array> {
  const to = aliveNeighbours(o.index, o.params.cohortSize, o.params.degree, o.dropped);
  const out = new Uint8Array(to.length * CONFIRM_TAG_BYTES);
  for (const [k, j] of to.entries()) {
    const key = o.publicKeys.get(j);
    if (!key) throw new ValidationError('cohort.keys', `lacks the key of member ${j}, a mask neighbour of member ${o.index}`);
    const hmac = await pairConfirmKey(o.privateKey, await importPublicKey(key), cohortSalt(o.cohortId, o.params, o.length));
    const tag = await subtle().sign('HMAC', hmac, await confirmMessage(o.cohortId, o.index, j, o.dropped, round));
    out.set(new Uint8Array(tag, 0, CONFIRM_TAG_BYTES), k * CONFIRM_TAG_BYTES);
  }
  return out;
}

/**
 * Checks that every mask neighbour `dropped` leaves alive confirmed that same list to member
 * `index` (`confirmations`: neighbour → its 16-byte tag for this member). Returns the neighbours
 * still missing (wait for them); throws a ValidationError when a tag does not match (that
 * neighbour was shown another list, or the tag is forged).
 */
export async function checkConfirmations(o: RecoveryMember & { confirmations: ReadonlyMap<number, Uint8Array> }, round: TagRound = 'confirm'): Promise<number[]> {
  const missing: number[] = [];
  for (const j of aliveNeighbours(o.index, o.params.cohortSize, o.params.degree, o.dropped)) {
    const tag = o.confirmations.get(j);
    if (!tag) {
      missing.push(j);
      continue;
    }
    const key = o.publicKeys.get(j);
    if (!key) throw new ValidationError('cohort.keys', `lacks the key of member ${j}, a mask neighbour of member ${o.index}`);
    const hmac = await pairConfirmKey(o.privateKey, await importPublicKey(key), cohortSalt(o.cohortId, o.params, o.length));
    const want = new Uint8Array(await subtle().sign('HMAC', hmac, await confirmMessage(o.cohortId, j, o.index, o.dropped, round)), 0, CONFIRM_TAG_BYTES);
    let diff = tag.length ^ CONFIRM_TAG_BYTES;
    for (let k = 0; k < CONFIRM_TAG_BYTES; k++) diff |= (tag[k] ?? 0) ^ want[k]!;
    if (diff !== 0) {
      throw new ValidationError(
        round === 'confirm' ? 'cohort.confirmations' : 'cohort.ready',
        `member ${j} did not ${round === 'confirm' ? 'confirm' : 'report ready on'} the list of dropped members this member was shown: refusing to help recover`,
      );
    }
  }
  return missing;
}

/** Where member `holder`'s share sits among member `owner`'s sealed shares (its place in `owner`'s ascending neighbours), or −1. */
export function sharePosition(owner: number, holder: number, size: number, degree: number): number {
  return sortedNeighbours(owner, size, degree).indexOf(holder);
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
 * const m = await pairMask(mine.privateKey, theirPublicKey, cohortSalt(cohortId, params, 62_305), 62_305, 8, myIndex, theirIndex);
 * ```
 */
export async function pairMask(privateKey: CryptoKey, peer: CryptoKey, salt: Uint8Array, length: number, bits: number, a: number, b: number): Promise<Uint32Array> {
  return maskFromSeed(await pairSeed(privateKey, peer, salt, a, b), length, bits);
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

/**
 * A surviving member's recovery share: for each of its mask neighbours in ascending order, 16 bytes
 * — the seed of their pair's mask when the server lists that neighbour in `dropped`, else this
 * member's share of that neighbour's self-mask seed, opened from what the neighbour sealed to it
 * (`sealed`: neighbour index → its {@link SEALED_SHARE_BYTES}-byte sealed share, as the member view
 * hands them out). Never both for one neighbour: the server gets, for each member, either what
 * strips its pairwise masks or what strips its self-mask, as it claims that member dropped or not.
 * Refused when `dropped` holds this member itself (the server says it never got this member's
 * upload), or a surviving neighbour's sealed share is missing or does not open.
 *
 * @example
 * ```ts
 * const share = await recoveryShare({ index, cohortId, publicKeys, privateKey, params, dropped: view.dropped, sealed });
 * ```
 */
export async function recoveryShare(o: RecoveryMember & { sealed: ReadonlyMap<number, Uint8Array> }): Promise<Uint8Array> {
  if (o.dropped.includes(o.index)) throw new ValidationError('cohort.dropped', `names this member (${o.index}), whose upload was sent: refusing to reveal its seeds`);
  const K = o.params.cohortSize;
  const gone = new Set(o.dropped);
  const neighbours = sortedNeighbours(o.index, K, o.params.degree);
  const out = new Uint8Array(neighbours.length * PAIR_SEED_BYTES);
  for (const [k, j] of neighbours.entries()) {
    const key = o.publicKeys.get(j);
    if (!key) throw new ValidationError('cohort.keys', `lacks the key of member ${j}, a mask neighbour of member ${o.index}`);
    const peer = await importPublicKey(key);
    if (gone.has(j)) {
      out.set(await pairSeed(o.privateKey, peer, cohortSalt(o.cohortId, o.params, o.length), o.index, j), k * PAIR_SEED_BYTES);
      continue;
    }
    const ct = o.sealed.get(j);
    if (!ct || ct.length !== SEALED_SHARE_BYTES) throw new ValidationError('cohort.sealed', `lacks the share member ${j} sealed to member ${o.index}: refusing to help recover`);
    let share: ArrayBuffer;
    try {
      share = await subtle().decrypt({ name: 'AES-GCM', iv: shareIv(j, o.index), additionalData: o.cohortId as Uint8Array<ArrayBuffer> }, await pairShareKey(o.privateKey, peer, cohortSalt(o.cohortId, o.params, o.length)), ct as Uint8Array<ArrayBuffer>);
    } catch {
      throw new ValidationError('cohort.sealed', `the share member ${j} sealed to member ${o.index} does not open (altered, or not from that member): refusing to help recover`);
    }
    out.set(new Uint8Array(share), k * PAIR_SEED_BYTES);
  }
  return out;
}

/** The length of member `index`'s recovery share: 16 bytes per mask neighbour (0 for a member listed as dropped). */
export function recoveryShareBytes(index: number, size: number, degree: number, dropped: readonly number[]): number {
  return dropped.includes(index) ? 0 : maskNeighbours(index, size, degree).length * PAIR_SEED_BYTES;
}

/**
 * Why a recovery from `dropped` would fail to unmask, or undefined when it can: every survivor
 * needs {@link selfMaskThreshold} surviving neighbours to give back its self-mask seed.
 */
export function selfMaskUnrecoverable(size: number, degree: number, dropped: readonly number[]): string | undefined {
  const gone = new Set(dropped);
  for (let j = 0; j < size; j++) {
    if (gone.has(j)) continue;
    const n = maskNeighbours(j, size, degree);
    const alive = n.filter((i) => !gone.has(i)).length;
    const h = selfMaskThreshold(n.length);
    if (alive < h) return `member ${j} kept ${alive} of its ${n.length} mask neighbours, and its self-mask needs ${h}`;
  }
  return undefined;
}

/**
 * Fixed-point encoding modulo 2^b with unbiased stochastic rounding: E[decoded] = value. A single
 * value may wrap around; only the cohort's SUM has to stay within −step·2^(b−1) … step·(2^(b−1) − 1).
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

/** Bytes of a masked update for `length` coordinates at `bits` each (and `sealedShares` sealed shares). */
export function maskedUpdateBytes(length: number, bits: number, sealedShares = 0): number {
  return MASKED_HEADER_BYTES + Math.ceil((length * bits) / 8) + sealedShares * SEALED_SHARE_BYTES;
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
  /**
   * With dropout recovery: the shares of this member's self-mask seed, sealed to each mask
   * neighbour in ascending order ({@link addSelfMask}), {@link SEALED_SHARE_BYTES} each (format 4;
   * format 5 without).
   */
  sealed?: Uint8Array;
}

/**
 * `LRS1` body: magic, format (5; 4 with sealed shares; 1–3, from SDKs whose pair masks do not
 * cancel with these, are refused), bits, 2 bytes (format 5: 0; format 4: the
 * count of sealed shares, u16 LE), cohort id (16), index, cohort size, coordinate count, base
 * version (u32 LE each), the step γ (float32 LE), the packed values, then (format 4) the sealed shares.
 */
export function encodeMaskedUpdate(u: MaskedUpdate): Uint8Array {
  if (u.cohortId.length !== COHORT_ID_BYTES) throw new ValidationError('cohortId', `must be ${COHORT_ID_BYTES} bytes`);
  const sealedShares = u.sealed ? u.sealed.length / SEALED_SHARE_BYTES : 0;
  if (!Number.isInteger(sealedShares) || sealedShares > 0xffff) throw new ValidationError('sealed', `must be whole ${SEALED_SHARE_BYTES}-byte shares, at most 65535`);
  const out = new Uint8Array(maskedUpdateBytes(u.values.length, u.bits, sealedShares));
  out.set(MASKED_MAGIC, 0);
  out[4] = u.sealed ? FORMAT_SEALED : FORMAT_PLAIN;
  out[5] = u.bits;
  if (u.sealed) {
    out[6] = sealedShares & 0xff;
    out[7] = sealedShares >> 8;
    out.set(u.sealed, out.length - u.sealed.length);
  }
  out.set(u.cohortId, 8);
  const dv = new DataView(out.buffer);
  dv.setUint32(24, u.index, true);
  dv.setUint32(28, u.cohortSize, true);
  dv.setUint32(32, u.values.length, true);
  dv.setUint32(36, u.baseVersion, true);
  dv.setFloat32(40, u.step, true);
  packBits(u.values, u.bits, out.subarray(MASKED_HEADER_BYTES, MASKED_HEADER_BYTES + Math.ceil((u.values.length * u.bits) / 8)));
  return out;
}

/** `LRS1` formats: with sealed shares of the self-mask (dropout recovery), and without. */
const FORMAT_SEALED = 4;
const FORMAT_PLAIN = 5;

/** Header fields of an `LRS1` body, checked for shape only (the values are opaque to the server); `sealedShares`: how many sealed shares follow the values (format 4). */
export function decodeMaskedHeader(bytes: Uint8Array): Omit<MaskedUpdate, 'values' | 'sealed'> & { length: number; sealedShares: number } {
  if (bytes.length < MASKED_HEADER_BYTES) throw new ValidationError('update', `a masked update has a ${MASKED_HEADER_BYTES}-byte header; got ${bytes.length} bytes (truncated)`);
  for (let i = 0; i < 4; i++) if (bytes[i] !== MASKED_MAGIC[i]) throw new ValidationError('update', 'not a masked update (magic is not LRS1)');
  const format = bytes[4];
  if (format === 1 || format === 2 || format === 3) {
    // Its pair masks were derived without both members' indices (formats 2, 3) or keyed by the
    // cohort id alone (format 1): they would not cancel with the other members', and the cohort's
    // sum would be noise.
    throw new ValidationError('update', `masked-update format ${format} comes from an older localrec SDK whose masks do not cancel with this one's (pair masks are now bound to both members' indices): update the page's SDK`);
  }
  if (format !== FORMAT_SEALED && format !== FORMAT_PLAIN) throw new ValidationError('update', `unsupported masked-update format ${format}`);
  const bits = bytes[5]!;
  if (bits < 2 || bits > 32) throw new ValidationError('update', `bits must be 2..32, got ${bits}`);
  if (format === FORMAT_PLAIN && (bytes[6] !== 0 || bytes[7] !== 0)) throw new ValidationError('update', 'reserved header bytes 6–7 are not zero');
  const sealedShares = format === FORMAT_SEALED ? bytes[6]! | (bytes[7]! << 8) : 0;
  if (format === FORMAT_SEALED && sealedShares === 0) throw new ValidationError('update', `a format-${FORMAT_SEALED} update carries at least one sealed share`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = dv.getUint32(32, true);
  if (bytes.length !== maskedUpdateBytes(length, bits, sealedShares)) {
    throw new ValidationError('update', `${length} coordinates at ${bits} bits${sealedShares ? ` and ${sealedShares} sealed shares` : ''} take ${maskedUpdateBytes(length, bits, sealedShares)} bytes; got ${bytes.length} (length-mismatch)`);
  }
  const step = dv.getFloat32(40, true);
  if (!(step > 0 && Number.isFinite(step))) throw new ValidationError('update', `the fixed-point step must be a positive float32, got ${step}`);
  // One encoding per update: the bits past the last value are zero.
  const used = (length * bits) % 8;
  const last = MASKED_HEADER_BYTES + Math.ceil((length * bits) / 8) - 1;
  if (used !== 0 && bytes[last]! >> used !== 0) throw new ValidationError('update', 'padding bits in the last byte are not zero');
  return {
    cohortId: bytes.slice(8, 8 + COHORT_ID_BYTES),
    index: dv.getUint32(24, true),
    cohortSize: dv.getUint32(28, true),
    bits,
    step,
    length,
    baseVersion: dv.getUint32(36, true),
    sealedShares,
  };
}

/** Full decode of an `LRS1` body. */
export function decodeMaskedUpdate(bytes: Uint8Array): MaskedUpdate {
  const { sealedShares, ...h } = decodeMaskedHeader(bytes);
  const valueBytes = Math.ceil((h.length * h.bits) / 8);
  const values = unpackBits(bytes.subarray(MASKED_HEADER_BYTES, MASKED_HEADER_BYTES + valueBytes), h.length, h.bits);
  return sealedShares ? { ...h, values, sealed: bytes.slice(MASKED_HEADER_BYTES + valueBytes) } : { ...h, values };
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
    const mask = await pairMask(o.privateKey, peer, cohortSalt(o.cohortId, o.params, out.length), out.length, o.params.bits, o.index, j);
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
 * The server's side with dropout recovery: Σ of the surviving members' uploads modulo 2^b, minus
 * the masks each survivor shared with a member that did not upload (from the seeds in the
 * survivors' recovery shares) and minus every survivor's self-mask (its seed put together from the
 * shares its surviving neighbours gave back), as real numbers. `shares` maps every survivor to its
 * recovery share ({@link recoveryShare}: 16 bytes per mask neighbour, ascending).
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
  const K = params.cohortSize;
  const gone = new Set(dropped);
  const acc = new Uint32Array(first.values.length);
  const part = (holder: number, of: number): Uint8Array => {
    const share = shares.get(holder);
    const p = sharePosition(holder, of, K, params.degree);
    if (!share || p < 0 || share.length !== recoveryShareBytes(holder, K, params.degree, dropped)) {
      throw new RangeError(`member ${holder} has no recovery share for its ${maskNeighbours(holder, K, params.degree).length} mask neighbours`);
    }
    return share.subarray(p * PAIR_SEED_BYTES, (p + 1) * PAIR_SEED_BYTES);
  };
  for (const u of updates) {
    addMod(acc, u.values, first.bits);
    const neighbours = sortedNeighbours(u.index, K, params.degree);
    for (const i of neighbours.filter((j) => gone.has(j))) {
      // Member u added the mask when u < i and subtracted it when u > i: undo that.
      addMod(acc, await maskFromSeed(part(u.index, i), acc.length, first.bits), first.bits, u.index < i ? -1 : 1);
    }
    // Its self-mask: the seed from the shares its surviving neighbours opened (share x = their place + 1).
    const points = neighbours.flatMap((i, p) => (gone.has(i) ? [] : [{ x: p + 1, y: part(i, u.index) }]));
    const h = selfMaskThreshold(neighbours.length);
    if (points.length < h) throw new RangeError(`member ${u.index}'s self-mask needs ${h} shares, ${points.length} came`);
    const seed = combineShares(points.slice(0, h));
    addMod(acc, await maskFromSeed(seed, acc.length, first.bits), first.bits, -1);
  }
  return decodeFixedPoint(acc, step, first.bits);
}
