/**
 * Cohorts for secure aggregation (src/federated/secagg.ts): the server groups devices that ask to
 * join into cohorts of exactly K, hands every member its mask neighbours' public keys once the
 * cohort is full, and tracks which members have uploaded. It never holds anything that could unmask
 * one upload: the private keys stay on the devices.
 *
 * Where cohorts live is a {@link CohortStore}: in this process's memory ({@link MemoryCohortStore},
 * with the memory and SQLite stores), or in PostgreSQL next to the updates
 * (src/server/postgres-storage.ts), so several server processes behind a load balancer form and
 * collect the same cohorts. In memory, a cohort still forming or collecting when the server stops is
 * lost: its members' uploads stay masked forever (they reveal nothing and are never aggregated) and
 * are deleted at the next start. In PostgreSQL it outlives any one process and ends by completing
 * or by timing out.
 */
import { createHash } from 'node:crypto';
import type { SecAggParams } from '../federated/secagg.js';
import { aliveNeighbours, COHORT_ID_BYTES, CONFIRM_TAG_BYTES, maskNeighbours, recoveryShareBytes, type TagRound, SEALED_SHARE_BYTES, selfMaskUnrecoverable, sharePosition, survivorComponents, usesSelfMask } from '../federated/secagg.js';
import { bytesEqual, fromHex, toHex } from '../federated/wire.js';

export type CohortStatus = 'forming' | 'ready' | 'recovering' | 'done' | 'aborted';

/** A cohort's state without its members' keys and tokens. */
export interface CohortInfo {
  /** Hex of the 16 random id bytes. */
  id: string;
  size: number;
  /** Members so far (= size once the cohort is full). */
  joined: number;
  /** Members whose upload was accepted. */
  submitted: number;
  status: CohortStatus;
  /**
   * When the cohort was formed. This and the other times are on the cohort store's clock: the wall
   * clock (ms since the epoch) in a store several processes share (PostgreSQL), the process's
   * monotonic clock for cohorts in its memory ({@link MemoryCohortStore}): never shown to devices.
   */
  createdAt: number;
  /** When the cohort filled (keys handed out), or undefined while forming. */
  readyAt?: number;
  /** The version published from this cohort's sum. */
  published?: number;
  abortReason?: string;
  /** Recovery (status `recovering`, from then on): the members whose upload never came, ascending. */
  dropped?: number[];
  /** When recovery began. */
  recoveryAt?: number;
  /** When the cohort ended (`done` or `aborted`): it is forgotten {@link KEEP_ENDED_MS} later. */
  endedAt?: number;
  /** Surviving members (each owes a recovery share), and how many gave theirs. */
  needed?: number;
  recovered?: number;
}

/** A cohort the timeout ended, with the storage ids of the uploads it had collected (to discard). */
export interface AbortedCohort {
  id: string;
  reason: string;
  updateIds: number[];
}

/** What {@link CohortStore.markSubmitted} found: the upload is recorded (the cohort now complete or not), or the cohort no longer collects. */
export type MarkResult = 'recorded' | 'complete' | 'closed';

/**
 * What {@link CohortStore.addRecovery} found: recorded (recovery now complete or not), the same
 * share again (`again`: a retry after a lost answer), the cohort is not recovering, or this member
 * owes no share (it dropped, or gave another one already).
 */
export type RecoveryResult = 'recorded' | 'complete' | 'again' | 'closed' | 'refused';

/**
 * What {@link CohortStore.sweep} ended. (A cohort it moves to recovery always needs at least one
 * share: the mask graph is connected, so some survivor neighbours some dropped member.)
 */
export interface SweepResult {
  aborted: AbortedCohort[];
}

/**
 * Where cohorts live. Every method is atomic on its own: several server processes may call the same
 * store at once (PostgreSQL), and no two joins get the same member index, no cohort gets more than K
 * members, and an upload is recorded only while its cohort collects.
 */
export interface CohortStore {
  /** True when the cohorts outlive this process (a restart must not discard their uploads). */
  readonly durable: boolean;
  /**
   * Adds a member (its public key) to the cohort being formed, opening a new one when none is; the
   * cohort becomes `ready` when its K-th member joins. A key already in that cohort gets its place
   * and token again (a retried join). `{ error, busy: true }` when the store holds as many members
   * as it may (in memory: {@link MemoryCohortStore}'s cap): a 503, nothing was stored.
   */
  join(publicKey: Uint8Array): Promise<{ cohort: CohortInfo; index: number; token: string } | { error: string; busy?: true }>;
  /**
   * Member `index` (proved by its join `token`) leaves a cohort that is still forming: its key and
   * token are deleted and its place goes to the next device to join. `too-late` once the cohort is
   * full (its keys are out: the member must upload, or count as dropped); `unknown` for a wrong
   * token, a member that already left, or no such cohort.
   */
  leave(id: string, index: number, token: string): Promise<'left' | 'too-late' | 'unknown'>;
  info(id: string): Promise<CohortInfo | undefined>;
  /** Public keys by member index: of `members` when given, else of every member. */
  keys(id: string, members?: readonly number[]): Promise<Map<number, Uint8Array>>;
  /** The token member `index`'s join was answered with (its upload must carry it). */
  token(id: string, index: number): Promise<string | undefined>;
  /**
   * Records member `index`'s upload (storage id `updateId`), only while the cohort is `ready`, with
   * the shares of its self-mask it sealed to its mask neighbours (dropout recovery). With recovery
   * on, the K-th upload moves the cohort to `recovering` with no member dropped (every self-mask
   * must come off): the result is then `recorded`, not `complete`.
   */
  markSubmitted(id: string, index: number, updateId: number, sealed?: Uint8Array): Promise<MarkResult>;
  /** The sealed shares of `members` (those that uploaded with some), by member index. */
  sealedShares(id: string, members: readonly number[]): Promise<Map<number, Uint8Array>>;
  /**
   * Stores a surviving member's tags of one round (only while `recovering`, once per member that
   * uploaded; the same bytes again are `again`: a retry after a lost answer).
   */
  addConfirmation(id: string, index: number, tags: Uint8Array, round?: TagRound): Promise<'recorded' | 'again' | 'closed' | 'refused'>;
  /** The tags of one round that `members` gave so far, by member index. */
  confirmations(id: string, members: readonly number[], round?: TagRound): Promise<Map<number, Uint8Array>>;
  /** Stores a surviving member's recovery share (only while the cohort is `recovering`, once per member that owes one). */
  addRecovery(id: string, index: number, share: Uint8Array): Promise<RecoveryResult>;
  /** The recovery shares given so far, by member index. */
  recoveryShares(id: string): Promise<Map<number, Uint8Array>>;
  /** Marks a complete (or recovered) cohort as published into `version`. */
  finish(id: string, version: number): Promise<void>;
  /**
   * At the timeout (measured from creation, then from filling, then from the start of recovery):
   * aborts cohorts that did not fill; moves a full cohort that collected at least `minSurvivors`
   * but not all uploads to `recovering` (its missing members listed in `dropped`), and aborts it
   * when it collected fewer; aborts a recovery that did not get every share. Forgets ended cohorts
   * an hour after they ended. `publishing`: cohorts this process is publishing now (their sums
   * checked, their version being written), which no deadline ends meanwhile: the publish decides.
   */
  sweep(publishing?: ReadonlySet<string>): Promise<SweepResult>;
  /** How many cohorts are in each state, ended ones included until forgotten (for `localrec_cohorts`); optional. */
  counts?(): Promise<Partial<Record<CohortStatus, number>>>;
}

/** The recovery shares a cohort recovering from `dropped` needs: one from each survivor (every self-mask must come off). */
export function sharesNeeded(size: number, dropped: readonly number[]): number {
  return size - dropped.length;
}

/** The state a cohort whose K uploads all came moves to with dropout recovery on: every survivor's self-mask must come off. */
export function allUploaded(size: number, now: number): Partial<CohortInfo> {
  return { status: 'recovering', dropped: [], recoveryAt: now, needed: sharesNeeded(size, []), recovered: 0 };
}

/** How long a cohort may take to fill, and then to collect every upload. Default 10 minutes each. */
export const DEFAULT_COHORT_TIMEOUT_MS = 10 * 60_000;

/**
 * The upload deadline when none is set: the fill deadline, but never more than
 * {@link DEFAULT_COHORT_TIMEOUT_MS}. Once a cohort is full its members need seconds (fetch the keys,
 * mask, one request), so a shop that gives cohorts hours to fill does not also wait hours for an
 * upload that will never come before recovering or aborting.
 */
export function defaultUploadTimeoutMs(fillMs: number): number {
  return Math.min(fillMs, DEFAULT_COHORT_TIMEOUT_MS);
}

/**
 * A cohort's deadlines: `fillMs` from its creation to its K-th member; `uploadMs` from then to its
 * last upload, and again from the start of a recovery to its last share. A number sets both.
 */
export interface CohortTimeouts {
  fillMs: number;
  uploadMs: number;
}

/** `{ fillMs, uploadMs }` from a number (both) or an object. */
export function cohortTimeouts(t: number | CohortTimeouts): CohortTimeouts {
  return typeof t === 'number' ? { fillMs: t, uploadMs: t } : t;
}

/** How long ended cohorts are still answered for (so late pollers learn the outcome). */
export const KEEP_ENDED_MS = 60 * 60_000;

/**
 * When an ended cohort ended. One that ended before `endedAt` was recorded (a PostgreSQL row written
 * by an older server) falls back to its last recorded step, which may be earlier.
 */
export function endOf(c: Pick<CohortInfo, 'endedAt' | 'recoveryAt' | 'readyAt' | 'createdAt'>): number {
  return c.endedAt ?? c.recoveryAt ?? c.readyAt ?? c.createdAt;
}

/** A fresh random cohort id (hex of {@link COHORT_ID_BYTES} bytes). */
export function newCohortId(): string {
  const b = new Uint8Array(COHORT_ID_BYTES);
  globalThis.crypto.getRandomValues(b);
  return toHex(b);
}

const COHORT_ID = new RegExp(`^[0-9a-f]{${2 * COHORT_ID_BYTES}}$`);

/**
 * Whether `id` has the form {@link newCohortId} gives ids (lowercase hex of {@link COHORT_ID_BYTES}
 * bytes). Ids from a URL are checked with it before they reach a store: anything else names no
 * cohort, and some bytes (a NUL) are not even valid text to PostgreSQL.
 */
export function isCohortId(id: string): boolean {
  return COHORT_ID.test(id);
}

/** Bytes of a member token (it travels as their hex). */
const TOKEN_BYTES = 16;

/** A fresh random member token (hex of {@link TOKEN_BYTES} bytes). */
export function newMemberToken(): string {
  const b = new Uint8Array(TOKEN_BYTES);
  globalThis.crypto.getRandomValues(b);
  return toHex(b);
}

/**
 * How long a recovering cohort may take from the start of recovery: the upload timeout while
 * shares are missing; {@link PUBLISH_GRACE} times that once every share came (its publish is being
 * retried after a storage error).
 */
export function recoveryDeadline(c: Pick<CohortInfo, 'recovered' | 'needed'>, uploadMs: number): number {
  return (c.recovered ?? 0) >= (c.needed ?? 0) ? PUBLISH_GRACE * uploadMs : uploadMs;
}
export const PUBLISH_GRACE = 4;

/**
 * How long a full cohort may take from filling: the upload timeout while uploads are missing;
 * {@link PUBLISH_GRACE} times that once every upload came (without dropout recovery it is then
 * being published, or its publish retried after a storage error or a peer's publish), so that a
 * publish that keeps failing does not hold the cohort, and its retries, for good.
 */
export function collectDeadline(c: Pick<CohortInfo, 'submitted' | 'size'>, uploadMs: number): number {
  return c.submitted >= c.size ? PUBLISH_GRACE * uploadMs : uploadMs;
}

/** Why a cohort timed out, in the words `GET /v1/secagg/cohorts/:id` reports. */
export function timeoutReason(c: Pick<CohortInfo, 'status' | 'joined' | 'submitted' | 'size' | 'recovered' | 'needed'>, timeoutMs: number, minSurvivors = c.size): string {
  if (c.status === 'forming') return `only ${c.joined} of ${c.size} members joined within ${timeoutMs} ms`;
  if (c.status === 'ready' && c.submitted >= c.size) return `all ${c.size} members uploaded, but the cohort could not be published within ${timeoutMs} ms`;
  if (c.status === 'recovering') {
    if ((c.recovered ?? 0) >= (c.needed ?? 0)) return `all ${c.needed} recovery shares came, but the cohort could not be published within ${timeoutMs} ms`;
    return `only ${c.recovered} of the ${c.needed} recovery shares came within ${timeoutMs} ms`;
  }
  return `only ${c.submitted} of ${c.size} members uploaded within ${timeoutMs} ms${minSurvivors < c.size ? ` (recovery needs ${minSurvivors})` : ''}`;
}

/**
 * The state a full cohort that timed out moves to: `recovering` when it has at least
 * `minSurvivors` uploads (with its dropped members and the shares needed), else `aborted`.
 */
export function afterCollectTimeout(c: CohortInfo, submittedBy: Iterable<number>, params: SecAggParams, timeoutMs: number, now: number): Partial<CohortInfo> {
  const t = params.minSurvivors ?? params.cohortSize;
  if (c.submitted < t) return { status: 'aborted', abortReason: timeoutReason(c, timeoutMs, t) };
  const got = new Set(submittedBy);
  const dropped = Array.from({ length: c.size }, (_, i) => i).filter((i) => !got.has(i));
  // Recovery would let the server unmask each connected part of the survivors on its own: refuse
  // when a part is smaller than t (its sum would carry less than the noise σC).
  const smallest = Math.min(...survivorComponents(c.size, params.degree, dropped).map((p) => p.length));
  if (smallest < t) return { status: 'aborted', abortReason: `${timeoutReason(c, timeoutMs, t)}; the missing members cut the mask graph, leaving a part of ${smallest} < ${t}` };
  // Each survivor's self-mask comes off only with enough of its neighbours' shares.
  const stuck = selfMaskUnrecoverable(c.size, params.degree, dropped);
  if (stuck) return { status: 'aborted', abortReason: `${timeoutReason(c, timeoutMs, t)}; ${stuck}` };
  return { status: 'recovering', dropped, recoveryAt: now, needed: sharesNeeded(c.size, dropped), recovered: 0 };
}

export type CohortView = {
  cohort: string;
  size: number;
  joined: number;
  submitted: number;
  status: CohortStatus;
  keys?: string[];
  memberKeys?: Record<string, string>;
  published?: number;
  reason?: string;
  /** While recovering and after: the members whose upload never came. */
  dropped?: number[];
  /** To a member, while recovering: each surviving mask neighbour's share of its self-mask sealed to that member (hex). */
  sealed?: Record<string, string>;
  /** To a member, while recovering: each surviving mask neighbour's confirmation tag for that member (hex), once given. */
  confirmations?: Record<string, string>;
  /** To a member, while recovering: each surviving mask neighbour's ready tag for that member (hex), once given. */
  ready?: Record<string, string>;
};

/** Whether a cohort's views show its keys: once it is full, and after it is done (not once it aborted). */
function keysOut(c: Pick<CohortInfo, 'status'>): boolean {
  return c.status === 'ready' || c.status === 'recovering' || c.status === 'done';
}

/** A cohort's view without any keys or recovery records: its state. */
function viewHead(c: CohortInfo): CohortView {
  const out: CohortView = { cohort: c.id, size: c.size, joined: c.joined, submitted: c.submitted, status: c.status };
  if (c.published !== undefined) out.published = c.published;
  if (c.abortReason) out.reason = c.abortReason;
  if (c.dropped) out.dropped = c.dropped;
  return out;
}

/**
 * Public view for `GET /v1/secagg/cohorts/:id`: keys only once the cohort is full. With `member`,
 * only that member's key and its mask neighbours' (`memberKeys`, what the device needs: degree + 1
 * keys whatever K is); without one, all K keys in member order (`keys`, for audits; the server
 * answers that one from {@link KeysViewCache} through {@link allKeysView}).
 */
export async function cohortView(store: CohortStore, c: CohortInfo, degree: number, member?: number): Promise<CohortView> {
  const out = viewHead(c);
  if (keysOut(c) && member === undefined) {
    const all = await store.keys(c.id);
    out.keys = Array.from({ length: c.size }, (_, i) => toHex(all.get(i) ?? new Uint8Array()));
  }
  if (keysOut(c) && member !== undefined) {
    const wanted = [member, ...maskNeighbours(member, c.size, degree)];
    const some = await store.keys(c.id, wanted);
    out.memberKeys = Object.fromEntries(wanted.map((j) => [String(j), toHex(some.get(j) ?? new Uint8Array())]));
  }
  if (c.status === 'recovering' && member !== undefined && c.dropped && !c.dropped.includes(member)) {
    const dropped = c.dropped;
    const from = aliveNeighbours(member, c.size, degree, dropped);
    /** What each of `from` addressed to `member`: the `bytes`-long record at its place in that neighbour's list. */
    const addressed = (all: ReadonlyMap<number, Uint8Array>, bytes: number, place: (j: number) => number): Record<string, string> => {
      const out: Record<string, string> = {};
      for (const j of from) {
        const p = place(j);
        const v = all.get(j);
        if (v && p >= 0 && v.length >= (p + 1) * bytes) out[String(j)] = toHex(v.subarray(p * bytes, (p + 1) * bytes));
      }
      return out;
    };
    out.sealed = addressed(await store.sealedShares(c.id, from), SEALED_SHARE_BYTES, (j) => sharePosition(j, member, c.size, degree));
    const tagPlace = (j: number) => aliveNeighbours(j, c.size, degree, dropped).indexOf(member);
    out.confirmations = addressed(await store.confirmations(c.id, from, 'confirm'), CONFIRM_TAG_BYTES, tagPlace);
    out.ready = addressed(await store.confirmations(c.id, from, 'ready'), CONFIRM_TAG_BYTES, tagPlace);
  }
  return out;
}

/** Bytes of `keys` arrays {@link KeysViewCache} keeps at most: those of 32 cohorts of 4,000. */
export const KEYS_VIEW_CACHE_BYTES = 16 * 1024 * 1024;

/**
 * The `keys` of the all-keys view (`GET /v1/secagg/cohorts/:id`), as JSON bytes, built once per
 * cohort: a cohort's keys never change once it is full (members leave only while it forms) and its
 * id is never reused, so the K keys are read from the store, hex-encoded and UTF-8-encoded once (at
 * K = 4,000, 532 KB of JSON and 4,000 rows on PostgreSQL), not for every request. Requests that
 * come while it is being built share that build. The least recently asked are forgotten past
 * {@link KEYS_VIEW_CACHE_BYTES} (the newest is kept even when it is larger on its own); a build
 * that failed is not kept.
 */
export class KeysViewCache {
  private readonly entries = new Map<string, { json: Promise<Uint8Array>; bytes: number }>();
  private bytes = 0;

  constructor(private readonly maxBytes = KEYS_VIEW_CACHE_BYTES) {}

  /** `c`'s K keys in member order, hex, as a JSON array (`c` full: `ready`, `recovering` or `done`). */
  keysJson(store: CohortStore, c: CohortInfo): Promise<Uint8Array> {
    const hit = this.entries.get(c.id);
    if (hit) {
      // The most recently asked last: the first in the map is the first forgotten.
      this.entries.delete(c.id);
      this.entries.set(c.id, hit);
      return hit.json;
    }
    const entry = { json: Promise.resolve(new Uint8Array()), bytes: 0 };
    entry.json = store.keys(c.id).then(
      (all) => {
        const json = UTF8.encode(`[${Array.from({ length: c.size }, (_, i) => `"${toHex(all.get(i) ?? new Uint8Array())}"`).join(',')}]`);
        if (this.entries.get(c.id) === entry) {
          entry.bytes = json.length;
          this.bytes += json.length;
          for (const [id, e] of this.entries) {
            if (this.bytes <= this.maxBytes || e === entry) break;
            this.entries.delete(id);
            this.bytes -= e.bytes;
          }
        }
        return json;
      },
      (e: unknown) => {
        if (this.entries.get(c.id) === entry) this.entries.delete(c.id);
        throw e;
      },
    );
    this.entries.set(c.id, entry);
    return entry.json;
  }
}

const UTF8 = new TextEncoder();

/**
 * The all-keys view of `c` (`GET /v1/secagg/cohorts/:id`, what {@link cohortView} gives without a
 * member, its `keys` last) as JSON bytes, and its entity tag: a hash of the view without its keys,
 * which once the cohort is full are fixed by its id, so the tag changes exactly when the body does.
 * A request that names the tag is answered 304 without the body being built; the keys come from
 * `cache`, copied once behind the state.
 */
export function allKeysView(store: CohortStore, c: CohortInfo, cache: KeysViewCache): { etag: string; body: () => Promise<Uint8Array> } {
  const head = JSON.stringify(viewHead(c));
  const etag = `"${createHash('sha256').update(head).digest('base64url').slice(0, 27)}"`;
  return {
    etag,
    body: async () => {
      if (!keysOut(c)) return UTF8.encode(head);
      const keys = await cache.keysJson(store, c);
      const open = UTF8.encode(`${head.slice(0, -1)},"keys":`);
      const out = new Uint8Array(open.length + keys.length + 1);
      out.set(open);
      out.set(keys, open.length);
      out[out.length - 1] = 0x7d; // }
      return out;
    },
  };
}

/** How many members a cohort store holds in cohorts that have not ended, at most, by default (or 4 cohorts' worth when more). */
export const DEFAULT_MAX_MEMBERS = 100_000;

/**
 * The cap on members of cohorts that have not ended for cohorts of `cohortSize`: `maxMembers`
 * when given (a whole number, at least one cohort's), else {@link DEFAULT_MAX_MEMBERS} or 4
 * cohorts' worth when that is more. Shared by the memory and PostgreSQL cohort stores.
 */
export function cohortMemberCap(cohortSize: number, maxMembers?: number): number {
  const cap = maxMembers ?? Math.max(DEFAULT_MAX_MEMBERS, 4 * cohortSize);
  if (!(Number.isInteger(cap) && cap >= cohortSize)) throw new RangeError(`maxMembers must be a whole number ≥ the cohort size ${cohortSize}, got ${cap}`);
  return cap;
}

interface MemoryCohort extends CohortInfo {
  /**
   * Public keys in member order while the cohort forms (index = position; a member that left leaves
   * a hole until the next join fills it). Once it is full they move to {@link packed}.
   */
  keyList: Array<Uint8Array | undefined>;
  /** Once full: the K keys one after the other in one buffer, `keyWidth` bytes each (not K small buffers); kept once it is done, for its views. */
  packed: Uint8Array | null;
  keyWidth: number;
  /** While forming: each member's key (hex) → its index, so that a retried join finds its place without a scan. */
  keyIndex: Map<string, number> | null;
  /** Members' tokens until the cohort ends; then in {@link endedTokens}. */
  tokens: Array<string | undefined>;
  /** Once ended: the tokens' 16 bytes each in member order (zeros for a place nobody held), so that a leave is still answered as before. */
  endedTokens: Uint8Array | null;
  /** Members whose upload was accepted, and the storage ids of those uploads. */
  submittedBy: Set<number>;
  updateIds: number[];
  shares: Map<number, Uint8Array>;
  /** Each uploader's self-mask shares, sealed to its mask neighbours (dropout recovery). */
  sealed: Map<number, Uint8Array>;
  /** Each survivor's confirmation tags of the list of dropped members it was shown. */
  confirms: Map<number, Uint8Array>;
  /** Each survivor's ready tags (its neighbours confirmed the same list). */
  readies: Map<number, Uint8Array>;
}

/**
 * Cohorts in this process's memory (with the memory and SQLite stores: one server process). `now`
 * times their deadlines: the round coordinator gives it its monotonic clock (the cohorts live and
 * die with the process, so a wall clock stepped back must not hold every forming cohort open).
 *
 * What it holds is bounded: members of cohorts that have not ended, by `maxMembers`; a full
 * cohort's keys are packed into one buffer; a cohort that ends keeps, for the hour it is kept, only
 * what its views and a late leave still need (its state, its tokens packed, once done its keys),
 * not its uploads' or its recovery's records.
 */
export class MemoryCohortStore implements CohortStore {
  readonly durable = false;
  private cohorts = new Map<string, MemoryCohort>();
  private open: MemoryCohort | null = null;
  readonly timeouts: CohortTimeouts;
  /**
   * Members held in cohorts that have not ended (forming, full, recovering), at most: a join past
   * it is refused (`busy`: 503, retried later) until cohorts end. Default {@link DEFAULT_MAX_MEMBERS},
   * or 4 cohorts' worth when that is more; at least one cohort's (`options.maxMembers`).
   */
  readonly maxMembers: number;
  /** Members of cohorts that have not ended. */
  private live = 0;

  constructor(
    readonly params: SecAggParams,
    timeouts: number | CohortTimeouts,
    private readonly now: () => number,
    options: { maxMembers?: number } = {},
  ) {
    this.timeouts = cohortTimeouts(timeouts);
    this.maxMembers = cohortMemberCap(params.cohortSize, options.maxMembers);
  }

  /** Members held in cohorts that have not ended (forming, full or recovering). */
  get liveMembers(): number {
    return this.live;
  }

  private static info(c: MemoryCohort): CohortInfo {
    const { keyList: _k, packed: _p, keyWidth: _w, keyIndex: _h, tokens: _t, endedTokens: _e, submittedBy: _s, updateIds: _u, shares: _r, sealed: _x, confirms: _c, readies: _y, ...info } = c;
    return { ...info, ...(info.dropped ? { dropped: info.dropped.slice() } : {}) };
  }

  /** Member `i`'s key (a view into the packed keys once the cohort is full), or undefined. */
  private static keyOf(c: MemoryCohort, i: number): Uint8Array | undefined {
    if (!c.packed) return c.keyList[i];
    if (!(Number.isInteger(i) && i >= 0 && i < c.size)) return undefined;
    return c.packed.subarray(i * c.keyWidth, (i + 1) * c.keyWidth);
  }

  /** Member `i`'s token, or undefined (no such member). */
  private static tokenOf(c: MemoryCohort, i: number): string | undefined {
    if (!c.endedTokens) return c.tokens[i];
    if (!(Number.isInteger(i) && i >= 0 && (i + 1) * TOKEN_BYTES <= c.endedTokens.length)) return undefined;
    const t = c.endedTokens.subarray(i * TOKEN_BYTES, (i + 1) * TOKEN_BYTES);
    return t.some((b) => b !== 0) ? toHex(t) : undefined;
  }

  /**
   * A cohort that ended (`done` or `aborted`) keeps only what its views show, its state and, once
   * done, its keys, and its tokens packed (16 bytes a member: a leave is still told `too-late`, or
   * that its token is wrong). The records of its uploads and of its recovery go, and its members no
   * longer count towards `maxMembers`.
   */
  private release(c: MemoryCohort, keepKeys: boolean): void {
    this.live -= c.joined;
    c.keyIndex = null;
    c.endedTokens = new Uint8Array(TOKEN_BYTES * c.tokens.length);
    c.tokens.forEach((t, i) => t !== undefined && c.endedTokens!.set(fromHex(t), i * TOKEN_BYTES));
    c.tokens = [];
    c.submittedBy = new Set();
    c.updateIds = [];
    c.shares = new Map();
    c.sealed = new Map();
    c.confirms = new Map();
    c.readies = new Map();
    if (!keepKeys) {
      c.keyList = [];
      c.packed = null;
    }
  }

  async join(publicKey: Uint8Array): Promise<{ cohort: CohortInfo; index: number; token: string } | { error: string; busy?: true }> {
    const hex = toHex(publicKey);
    // The same key again while the cohort forms: a join whose answer was lost, retried. The device
    // gets its place back (nobody else has seen the key yet), not a second one or a refusal that
    // would leave its first place empty. (Looked up, not searched for: a scan hex-encoded every member.)
    const again = this.open?.keyIndex?.get(hex);
    if (this.open && again !== undefined) return { cohort: MemoryCohortStore.info(this.open), index: again, token: this.open.tokens[again]! };
    if (this.live >= this.maxMembers) {
      return { error: `the server holds ${this.live} members of cohorts in memory, its most (${this.maxMembers}); retry once cohorts have ended`, busy: true };
    }
    if (!this.open) {
      const c: MemoryCohort = {
        id: newCohortId(),
        size: this.params.cohortSize,
        joined: 0,
        submitted: 0,
        status: 'forming',
        createdAt: this.now(),
        keyList: [],
        packed: null,
        keyWidth: 0,
        keyIndex: new Map(),
        tokens: [],
        endedTokens: null,
        submittedBy: new Set(),
        updateIds: [],
        shares: new Map(),
        sealed: new Map(),
        confirms: new Map(),
        readies: new Map(),
      };
      this.cohorts.set(c.id, c);
      this.open = c;
    }
    const c = this.open;
    // The lowest place a member left, else the next one.
    const hole = c.joined < c.keyList.length ? c.keyList.findIndex((k) => k === undefined) : -1;
    const index = hole >= 0 ? hole : c.keyList.length;
    c.keyList[index] = publicKey.slice();
    c.keyIndex!.set(hex, index);
    c.tokens[index] = newMemberToken();
    c.joined++;
    this.live++;
    if (c.joined === c.size) {
      c.status = 'ready';
      c.readyAt = this.now();
      this.open = null;
      // Its keys never change again: one buffer instead of K, and no index of them (no retry
      // reaches a full cohort: it lands in the next one).
      c.keyIndex = null;
      const width = c.keyList[0]!.length;
      if (c.keyList.every((k) => k!.length === width)) {
        c.packed = new Uint8Array(width * c.size);
        c.keyList.forEach((k, i) => c.packed!.set(k!, i * width));
        c.keyWidth = width;
        c.keyList = [];
      }
    }
    return { cohort: MemoryCohortStore.info(c), index, token: c.tokens[index]! };
  }

  async leave(id: string, index: number, token: string): Promise<'left' | 'too-late' | 'unknown'> {
    const c = this.cohorts.get(id);
    const held = c && MemoryCohortStore.tokenOf(c, index);
    if (!c || held === undefined || held !== token) return 'unknown';
    if (c.status !== 'forming') return 'too-late';
    c.keyIndex?.delete(toHex(c.keyList[index]!));
    c.keyList[index] = undefined;
    c.tokens[index] = undefined;
    c.joined--;
    this.live--;
    return 'left';
  }

  async info(id: string): Promise<CohortInfo | undefined> {
    const c = this.cohorts.get(id);
    return c && MemoryCohortStore.info(c);
  }

  async keys(id: string, members?: readonly number[]): Promise<Map<number, Uint8Array>> {
    const c = this.cohorts.get(id);
    const out = new Map<number, Uint8Array>();
    if (!c) return out;
    for (const i of members ?? (c.packed ? Array.from({ length: c.size }, (_, j) => j) : c.keyList.keys())) {
      const k = MemoryCohortStore.keyOf(c, i);
      if (k) out.set(i, k.slice());
    }
    return out;
  }

  async token(id: string, index: number): Promise<string | undefined> {
    const c = this.cohorts.get(id);
    return c && MemoryCohortStore.tokenOf(c, index);
  }

  async markSubmitted(id: string, index: number, updateId: number, sealed?: Uint8Array): Promise<MarkResult> {
    const c = this.cohorts.get(id);
    if (!c || c.status !== 'ready' || c.submittedBy.has(index)) return 'closed';
    c.submittedBy.add(index);
    c.updateIds.push(updateId);
    if (sealed) c.sealed.set(index, sealed.slice());
    c.submitted = c.submittedBy.size;
    if (c.submitted < c.size) return 'recorded';
    if (!usesSelfMask(this.params)) return 'complete';
    Object.assign(c, allUploaded(c.size, this.now()));
    return 'recorded';
  }

  async sealedShares(id: string, members: readonly number[]): Promise<Map<number, Uint8Array>> {
    return pick(this.cohorts.get(id)?.sealed, members);
  }

  async addConfirmation(id: string, index: number, tags: Uint8Array, round: TagRound = 'confirm'): Promise<'recorded' | 'again' | 'closed' | 'refused'> {
    const c = this.cohorts.get(id);
    if (!c || c.status !== 'recovering') return 'closed';
    const held = round === 'confirm' ? c.confirms : c.readies;
    const before = held.get(index);
    if (before) return bytesEqual(before, tags) ? 'again' : 'refused';
    if (!c.submittedBy.has(index)) return 'refused';
    held.set(index, tags.slice());
    return 'recorded';
  }

  async confirmations(id: string, members: readonly number[], round: TagRound = 'confirm'): Promise<Map<number, Uint8Array>> {
    const c = this.cohorts.get(id);
    return pick(round === 'confirm' ? c?.confirms : c?.readies, members);
  }

  async addRecovery(id: string, index: number, share: Uint8Array): Promise<RecoveryResult> {
    const c = this.cohorts.get(id);
    if (!c || c.status !== 'recovering') return 'closed';
    const before = c.shares.get(index);
    if (before) return bytesEqual(before, share) ? 'again' : 'refused';
    if (!c.submittedBy.has(index) || recoveryShareBytes(index, c.size, this.params.degree, c.dropped!) === 0) return 'refused';
    c.shares.set(index, share.slice());
    c.recovered = c.shares.size;
    return c.recovered === c.needed ? 'complete' : 'recorded';
  }

  async recoveryShares(id: string): Promise<Map<number, Uint8Array>> {
    return new Map(this.cohorts.get(id)?.shares ?? []);
  }

  async finish(id: string, version: number): Promise<void> {
    const c = this.cohorts.get(id);
    // (Only one that collects, as in PostgreSQL: never an ended one.)
    if (!c || (c.status !== 'ready' && c.status !== 'recovering')) return;
    c.status = 'done';
    c.published = version;
    c.endedAt = this.now();
    this.release(c, true);
  }

  async counts(): Promise<Partial<Record<CohortStatus, number>>> {
    const out: Partial<Record<CohortStatus, number>> = {};
    for (const c of this.cohorts.values()) out[c.status] = (out[c.status] ?? 0) + 1;
    return out;
  }

  async sweep(publishing?: ReadonlySet<string>): Promise<SweepResult> {
    const t = this.now();
    const out: SweepResult = { aborted: [] };
    const abort = (c: MemoryCohort, reason: string) => {
      c.abortReason = reason;
      c.status = 'aborted';
      c.endedAt = t;
      if (this.open === c) this.open = null;
      out.aborted.push({ id: c.id, reason, updateIds: c.updateIds.slice() });
      this.release(c, false);
    };
    const { fillMs, uploadMs } = this.timeouts;
    for (const c of this.cohorts.values()) {
      if (publishing?.has(c.id)) continue;
      if (c.status === 'forming' && t - c.createdAt > fillMs) abort(c, timeoutReason(c, fillMs));
      else if (c.status === 'ready' && c.submitted < c.size && t - c.readyAt! > uploadMs) {
        const next = afterCollectTimeout(c, c.submittedBy, this.params, uploadMs, t);
        if (next.status === 'aborted') abort(c, next.abortReason!);
        else Object.assign(c, next);
      } else if (c.status === 'ready' && c.submitted >= c.size) {
        // Every upload came: it is being published, not late, until a later deadline.
        const deadline = collectDeadline(c, uploadMs);
        if (t - c.readyAt! > deadline) abort(c, timeoutReason(c, deadline));
      } else if (c.status === 'recovering') {
        // One whose shares all came is being published (or will be, on retry), not late, until
        // a later deadline: a publish that keeps failing must not hold the cohort for good.
        const deadline = recoveryDeadline(c, uploadMs);
        if (t - c.recoveryAt! > deadline) abort(c, timeoutReason(c, deadline));
      }
      else if ((c.status === 'done' || c.status === 'aborted') && t - endOf(c) > KEEP_ENDED_MS) {
        this.cohorts.delete(c.id);
      }
    }
    return out;
  }
}

/** The entries of `members` in `from`. */
function pick(from: ReadonlyMap<number, Uint8Array> | undefined, members: readonly number[]): Map<number, Uint8Array> {
  const out = new Map<number, Uint8Array>();
  for (const j of members) {
    const v = from?.get(j);
    if (v) out.set(j, v);
  }
  return out;
}
