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
import type { SecAggParams } from '../federated/secagg.js';
import { COHORT_ID_BYTES, maskNeighbours } from '../federated/secagg.js';
import { toHex } from '../federated/wire.js';

export type CohortStatus = 'forming' | 'ready' | 'done' | 'aborted';

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
  createdAt: number;
  /** When the cohort filled (keys handed out), or undefined while forming. */
  readyAt?: number;
  /** The version published from this cohort's sum. */
  published?: number;
  abortReason?: string;
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
 * Where cohorts live. Every method is atomic on its own: several server processes may call the same
 * store at once (PostgreSQL), and no two joins get the same member index, no cohort gets more than K
 * members, and an upload is recorded only while its cohort collects.
 */
export interface CohortStore {
  /** True when the cohorts outlive this process (a restart must not discard their uploads). */
  readonly durable: boolean;
  /**
   * Adds a member (its public key) to the cohort being formed, opening a new one when none is; the
   * cohort becomes `ready` when its K-th member joins. A key already in that cohort is refused.
   */
  join(publicKey: Uint8Array): Promise<{ cohort: CohortInfo; index: number; token: string } | { error: string }>;
  info(id: string): Promise<CohortInfo | undefined>;
  /** Public keys by member index: of `members` when given, else of every member. */
  keys(id: string, members?: readonly number[]): Promise<Map<number, Uint8Array>>;
  /** The token member `index`'s join was answered with (its upload must carry it). */
  token(id: string, index: number): Promise<string | undefined>;
  /** Records member `index`'s upload (storage id `updateId`), only while the cohort is `ready`. */
  markSubmitted(id: string, index: number, updateId: number): Promise<MarkResult>;
  /** Marks a complete cohort as published into `version`. */
  finish(id: string, version: number): Promise<void>;
  /**
   * Aborts cohorts that did not fill, or did not collect every upload, within the timeout (measured
   * from creation, then from filling); forgets ended ones after an hour. Returns those it aborted.
   */
  sweep(): Promise<AbortedCohort[]>;
}

/** How long a cohort may take to fill, and then to collect every upload. Default 10 minutes each. */
export const DEFAULT_COHORT_TIMEOUT_MS = 10 * 60_000;
/** How long ended cohorts are still answered for (so late pollers learn the outcome). */
export const KEEP_ENDED_MS = 60 * 60_000;

/** A fresh random cohort id (hex of {@link COHORT_ID_BYTES} bytes). */
export function newCohortId(): string {
  const b = new Uint8Array(COHORT_ID_BYTES);
  globalThis.crypto.getRandomValues(b);
  return toHex(b);
}

/** A fresh random member token (hex of 16 bytes). */
export function newMemberToken(): string {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return toHex(b);
}

/** Why a cohort timed out, in the words `GET /v1/secagg/cohorts/:id` reports. */
export function timeoutReason(c: Pick<CohortInfo, 'status' | 'joined' | 'submitted' | 'size'>, timeoutMs: number): string {
  return c.status === 'forming'
    ? `only ${c.joined} of ${c.size} members joined within ${timeoutMs} ms`
    : `only ${c.submitted} of ${c.size} members uploaded within ${timeoutMs} ms`;
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
};

/**
 * Public view for `GET /v1/secagg/cohorts/:id`: keys only once the cohort is full. With `member`,
 * only that member's key and its mask neighbours' (`memberKeys`, what the device needs: degree + 1
 * keys whatever K is); without one, all K keys in member order (`keys`, for audits).
 */
export async function cohortView(store: CohortStore, c: CohortInfo, degree: number, member?: number): Promise<CohortView> {
  const keysOut = c.status !== 'forming' && c.status !== 'aborted';
  const out: CohortView = { cohort: c.id, size: c.size, joined: c.joined, submitted: c.submitted, status: c.status };
  if (keysOut && member === undefined) {
    const all = await store.keys(c.id);
    out.keys = Array.from({ length: c.size }, (_, i) => toHex(all.get(i) ?? new Uint8Array()));
  }
  if (keysOut && member !== undefined) {
    const wanted = [member, ...maskNeighbours(member, c.size, degree)];
    const some = await store.keys(c.id, wanted);
    out.memberKeys = Object.fromEntries(wanted.map((j) => [String(j), toHex(some.get(j) ?? new Uint8Array())]));
  }
  if (c.published !== undefined) out.published = c.published;
  if (c.abortReason) out.reason = c.abortReason;
  return out;
}

interface MemoryCohort extends CohortInfo {
  /** Public keys in member order (index = position). */
  keyList: Uint8Array[];
  keyHex: Set<string>;
  tokens: string[];
  /** Members whose upload was accepted, and the storage ids of those uploads. */
  submittedBy: Set<number>;
  updateIds: number[];
}

/** Cohorts in this process's memory (with the memory and SQLite stores: one server process). */
export class MemoryCohortStore implements CohortStore {
  readonly durable = false;
  private cohorts = new Map<string, MemoryCohort>();
  private open: MemoryCohort | null = null;

  constructor(
    readonly params: SecAggParams,
    readonly timeoutMs: number,
    private readonly now: () => number,
  ) {}

  private static info(c: MemoryCohort): CohortInfo {
    const { keyList: _k, keyHex: _h, tokens: _t, submittedBy: _s, updateIds: _u, ...info } = c;
    return { ...info };
  }

  async join(publicKey: Uint8Array): Promise<{ cohort: CohortInfo; index: number; token: string } | { error: string }> {
    const hex = toHex(publicKey);
    if (!this.open) {
      const c: MemoryCohort = {
        id: newCohortId(),
        size: this.params.cohortSize,
        joined: 0,
        submitted: 0,
        status: 'forming',
        createdAt: this.now(),
        keyList: [],
        keyHex: new Set(),
        tokens: [],
        submittedBy: new Set(),
        updateIds: [],
      };
      this.cohorts.set(c.id, c);
      this.open = c;
    }
    const c = this.open;
    if (c.keyHex.has(hex)) return { error: 'this public key already joined the cohort being formed; make a fresh key pair per round' };
    c.keyList.push(publicKey.slice());
    c.keyHex.add(hex);
    c.tokens.push(newMemberToken());
    const index = c.joined++;
    if (c.joined === c.size) {
      c.status = 'ready';
      c.readyAt = this.now();
      this.open = null;
    }
    return { cohort: MemoryCohortStore.info(c), index, token: c.tokens[index]! };
  }

  async info(id: string): Promise<CohortInfo | undefined> {
    const c = this.cohorts.get(id);
    return c && MemoryCohortStore.info(c);
  }

  async keys(id: string, members?: readonly number[]): Promise<Map<number, Uint8Array>> {
    const c = this.cohorts.get(id);
    const out = new Map<number, Uint8Array>();
    if (!c) return out;
    for (const i of members ?? c.keyList.keys()) {
      const k = c.keyList[i];
      if (k) out.set(i, k);
    }
    return out;
  }

  async token(id: string, index: number): Promise<string | undefined> {
    return this.cohorts.get(id)?.tokens[index];
  }

  async markSubmitted(id: string, index: number, updateId: number): Promise<MarkResult> {
    const c = this.cohorts.get(id);
    if (!c || c.status !== 'ready' || c.submittedBy.has(index)) return 'closed';
    c.submittedBy.add(index);
    c.updateIds.push(updateId);
    c.submitted = c.submittedBy.size;
    return c.submitted === c.size ? 'complete' : 'recorded';
  }

  async finish(id: string, version: number): Promise<void> {
    const c = this.cohorts.get(id);
    if (!c) return;
    c.status = 'done';
    c.published = version;
  }

  async sweep(): Promise<AbortedCohort[]> {
    const t = this.now();
    const aborted: AbortedCohort[] = [];
    for (const c of this.cohorts.values()) {
      const late = (c.status === 'forming' && t - c.createdAt > this.timeoutMs) || (c.status === 'ready' && c.submitted < c.size && t - c.readyAt! > this.timeoutMs);
      if (late) {
        c.abortReason = timeoutReason(c, this.timeoutMs);
        c.status = 'aborted';
        if (this.open === c) this.open = null;
        aborted.push({ id: c.id, reason: c.abortReason, updateIds: c.updateIds.slice() });
      } else if ((c.status === 'done' || c.status === 'aborted') && t - (c.readyAt ?? c.createdAt) > KEEP_ENDED_MS) {
        this.cohorts.delete(c.id);
      }
    }
    return aborted;
  }
}
