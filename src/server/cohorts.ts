/**
 * Cohorts for secure aggregation (src/federated/secagg.ts): the server groups devices that ask to
 * join into cohorts of exactly K, hands every member the K public keys once the cohort is full, and
 * tracks which members have uploaded. It never holds anything that could unmask one upload: the
 * private keys stay on the devices.
 *
 * Cohorts live in memory. A cohort still forming or collecting when the server stops is lost: its
 * members' uploads stay masked forever (they reveal nothing and are never aggregated); they are
 * deleted from storage when the cohort is aborted, or at the next start.
 */
import type { SecAggParams } from '../federated/secagg.js';
import { COHORT_ID_BYTES, maskNeighbours } from '../federated/secagg.js';
import { toHex } from '../federated/wire.js';

export type CohortStatus = 'forming' | 'ready' | 'done' | 'aborted';

export interface Cohort {
  id: string;
  idBytes: Uint8Array;
  size: number;
  /** Public keys in member order (index = position). */
  keys: Uint8Array[];
  keyHex: Set<string>;
  /** Per member, the random token its join was answered with; its upload must carry it. */
  tokens: string[];
  /** Members whose upload was accepted, and the storage ids of those uploads. */
  submitted: Set<number>;
  updateIds: number[];
  status: CohortStatus;
  createdAt: number;
  /** When the cohort filled (keys handed out), or undefined while forming. */
  readyAt?: number;
  /** The version published from this cohort's sum. */
  published?: number;
  abortReason?: string;
}

/** How long a cohort may take to fill, and then to collect every upload. Default 10 minutes each. */
export const DEFAULT_COHORT_TIMEOUT_MS = 10 * 60_000;
/** How long ended cohorts are still answered for (so late pollers learn the outcome). */
const KEEP_ENDED_MS = 60 * 60_000;

export class CohortRegistry {
  private cohorts = new Map<string, Cohort>();
  private open: Cohort | null = null;

  constructor(
    readonly params: SecAggParams,
    readonly timeoutMs: number,
    private readonly now: () => number,
    /** Called once for every cohort that is aborted (to discard the uploads it had collected). */
    private readonly onAbort: (c: Cohort) => void = () => {},
  ) {}

  /**
   * Adds a member (its public key) to the cohort being formed, opening a new one when none is;
   * the cohort becomes `ready` when its K-th member joins. A key already in that cohort is refused.
   */
  join(publicKey: Uint8Array): { cohort: Cohort; index: number; token: string } | { error: string } {
    this.sweep();
    const hex = toHex(publicKey);
    if (!this.open) {
      const idBytes = new Uint8Array(COHORT_ID_BYTES);
      globalThis.crypto.getRandomValues(idBytes);
      const c: Cohort = { id: toHex(idBytes), idBytes, size: this.params.cohortSize, keys: [], keyHex: new Set(), tokens: [], submitted: new Set(), updateIds: [], status: 'forming', createdAt: this.now() };
      this.cohorts.set(c.id, c);
      this.open = c;
    }
    const c = this.open;
    if (c.keyHex.has(hex)) return { error: 'this public key already joined the cohort being formed; make a fresh key pair per round' };
    c.keys.push(publicKey.slice());
    c.keyHex.add(hex);
    const token = new Uint8Array(16);
    globalThis.crypto.getRandomValues(token);
    c.tokens.push(toHex(token));
    const index = c.keys.length - 1;
    if (c.keys.length === c.size) {
      c.status = 'ready';
      c.readyAt = this.now();
      this.open = null;
    }
    return { cohort: c, index, token: c.tokens[index]! };
  }

  get(id: string): Cohort | undefined {
    this.sweep();
    return this.cohorts.get(id);
  }

  /** Marks member `index` as uploaded (storage id `id`); returns whether the whole cohort now has. */
  markSubmitted(c: Cohort, index: number, id: number): boolean {
    c.submitted.add(index);
    c.updateIds.push(id);
    return c.submitted.size === c.size;
  }

  finish(c: Cohort, version: number): void {
    c.status = 'done';
    c.published = version;
  }

  abort(c: Cohort, reason: string): void {
    c.status = 'aborted';
    c.abortReason = reason;
    if (this.open === c) this.open = null;
    this.onAbort(c);
  }

  /** Aborts cohorts that did not fill, or did not collect every upload, in time; forgets old ones. */
  sweep(): void {
    const t = this.now();
    for (const c of this.cohorts.values()) {
      if (c.status === 'forming' && t - c.createdAt > this.timeoutMs) this.abort(c, `only ${c.keys.length} of ${c.size} members joined within ${this.timeoutMs} ms`);
      else if (c.status === 'ready' && t - c.readyAt! > this.timeoutMs) this.abort(c, `only ${c.submitted.size} of ${c.size} members uploaded within ${this.timeoutMs} ms`);
      else if ((c.status === 'done' || c.status === 'aborted') && t - (c.readyAt ?? c.createdAt) > KEEP_ENDED_MS) this.cohorts.delete(c.id);
    }
  }

  /**
   * Public view for `GET /v1/secagg/cohorts/:id`: keys only once the cohort is full. With
   * `member`, only that member's key and its mask neighbours' (`memberKeys`, what the device needs:
   * degree + 1 keys whatever K is); without one, all K keys in member order (`keys`, for audits).
   */
  view(
    c: Cohort,
    member?: number,
  ): { cohort: string; size: number; joined: number; submitted: number; status: CohortStatus; keys?: string[]; memberKeys?: Record<string, string>; published?: number; reason?: string } {
    const keysOut = c.status !== 'forming' && c.status !== 'aborted';
    return {
      cohort: c.id,
      size: c.size,
      joined: c.keys.length,
      submitted: c.submitted.size,
      status: c.status,
      ...(keysOut && member === undefined ? { keys: c.keys.map(toHex) } : {}),
      ...(keysOut && member !== undefined
        ? { memberKeys: Object.fromEntries([member, ...maskNeighbours(member, c.size, this.params.degree)].map((j) => [String(j), toHex(c.keys[j]!)])) }
        : {}),
      ...(c.published !== undefined ? { published: c.published } : {}),
      ...(c.abortReason ? { reason: c.abortReason } : {}),
    };
  }
}
