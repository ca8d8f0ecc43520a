/**
 * What the aggregation server persists, behind an interface small enough for several adapters
 * (memory, SQLite, PostgreSQL): published model versions (append-only) and accepted updates (pending
 * until a round consumes them).
 *
 * Contract every adapter keeps:
 * - `addUpdate` resolves only after the update is durable (the HTTP ack follows it);
 * - `publish` is atomic: the new version row and the "aggregated into" marks on the consumed updates
 *   commit together or not at all, and it fails with {@link StorageConflictError} unless the new
 *   version is exactly latest + 1 and every consumed update is still pending (so several server
 *   processes sharing one database cannot publish the same version twice);
 * - nonces are unique for the life of the store (replay protection survives restarts);
 * - `publish` also prunes, in the same transaction, what no reader needs of older versions
 *   ({@link VersionRetentionOptions}): the server reads the latest version's model and optimizer state
 *   (`latest()`) and older versions' hashes only (`versionHash()`: the base check of an update, the
 *   catch-up of a shared store), so every older version keeps its row (number, hash, time, update
 *   count) but loses its optimizer state, and, past the newest `keepModels`, its model bytes.
 */
import { constants as osConstants } from 'node:os';
import { StorageError } from '../errors.js';
import type { SecAggParams } from '../federated/secagg.js';
import type { CohortStore, CohortTimeouts } from './cohorts.js';
import type { RateLimit, RateLimitOptions } from './rate-limit.js';

export interface StoredVersion {
  version: number;
  /** Hex SHA-256 of `model`. */
  hash: string;
  /**
   * Canonical float32 model encoding (src/federated/wire.ts). Empty (0 bytes) once pruned: a
   * version older than the newest {@link VersionRetentionOptions.keepModels} (never the latest).
   */
  model: Uint8Array;
  /**
   * Server optimizer state (FedAdam moments) after this version, or null for FedAvg; null too once
   * a newer version is published (only the latest version's state is ever read).
   */
  optimizer: Uint8Array | null;
  /** Milliseconds since the epoch. */
  createdAt: number;
  /** How many updates were averaged into it (0 for version 0). */
  updateCount: number;
}

export interface NewUpdate {
  /** Hex of the 16-byte nonce. */
  nonce: string;
  baseVersion: number;
  receivedAt: number;
  /** The update exactly as received (wire format). */
  body: Uint8Array;
}

export interface PendingUpdate extends NewUpdate {
  id: number;
}

/** A pending update without its body ({@link Storage.pendingRefs}): what a round lists first, to read the bodies a few at a time. */
export type PendingRef = Omit<PendingUpdate, 'body'>;

export interface Storage {
  /**
   * True when several server processes may use the store at once (PostgreSQL). The round
   * coordinator then re-reads the latest version and the pending count from it instead of trusting
   * what it saw last, and keeps secure aggregation's cohorts in the store ({@link cohortStore}).
   */
  readonly shared?: boolean;
  /**
   * Secure aggregation's cohorts kept in this store, so that every process sharing it forms and
   * collects the same cohorts. A shared store must provide it to run secure aggregation; without
   * it the cohorts live in the coordinator's memory (one process).
   */
  cohortStore?(params: SecAggParams, timeouts: number | CohortTimeouts, now: () => number): CohortStore;
  /**
   * Per-client rate limit kept in this store, so that it holds across every process sharing it.
   * Without it each process limits the clients it sees by itself.
   */
  rateLimiter?(options: RateLimitOptions, now: () => number): RateLimit;
  /** The newest published version, or undefined when nothing was ever published. */
  latest(): Promise<StoredVersion | undefined>;
  /** Hash of a published version, or undefined when there is no such version. */
  versionHash(version: number): Promise<string | undefined>;
  /** Stores an accepted update durably; `'replayed'` when its nonce was seen before (nothing stored). */
  addUpdate(u: NewUpdate): Promise<{ id: number } | 'replayed'>;
  /** Updates not yet aggregated, oldest first. */
  pending(): Promise<PendingUpdate[]>;
  /**
   * {@link pending} without the bodies: the updates not yet aggregated, oldest first. With
   * {@link pendingByIds}, what a round reads instead of {@link pending}, so that it holds a few
   * bodies at a time rather than every one of the round (1,000 updates of a 100k-item table are
   * gigabytes). An adapter without the pair is read whole ({@link pending}).
   */
  pendingRefs?(): Promise<PendingRef[]>;
  /**
   * The updates among `ids` that are still pending, with their bodies, in the order of `ids`; one
   * that is no longer pending (aggregated or discarded since, by another process sharing the
   * store) is left out, and the round that asked fails as a conflict with that process (as its
   * publish would: {@link publish} checks again, atomically, that every consumed update is pending).
   * A pending update's body never changes, so reading the round in parts sees what one
   * {@link pending} would have.
   */
  pendingByIds?(ids: readonly number[]): Promise<PendingUpdate[]>;
  /** The pending update stored under `nonce`, if there is one (a retry of it is then no replay). */
  pendingByNonce(nonce: string): Promise<PendingUpdate | undefined>;
  pendingCount(): Promise<number>;
  /**
   * Deletes pending updates that can never be aggregated: the masked uploads of a secure-aggregation
   * cohort that was aborted (without the rest of the cohort they are random bytes), or an update
   * whose acceptance failed half-way (its storage failed after the insert). Their nonces are free
   * again. Ids that are not pending are ignored.
   */
  discard(ids: readonly number[]): Promise<void>;
  /** Atomically appends `next` and marks `consumed` (update ids) as aggregated into it. */
  publish(next: StoredVersion, consumed: readonly number[]): Promise<void>;
  /**
   * The value kept under `key` in the store's table of small settings (SQLite `meta`, PostgreSQL
   * `localrec_meta`), or undefined when there is none. The round coordinator keeps there the round
   * settings the store's pending updates are made for (`round-settings`: the trained part, what the
   * aggregator has devices send, secure aggregation's cohort size, bits and step), so that a server
   * started with other ones refuses while updates are pending, and, on a shared store, a process
   * whose settings another one replaced stops taking updates. A store without this and
   * {@link writeMeta} gets only the check of each pending update's header, which cannot tell which
   * aggregator an update was made for.
   */
  readMeta?(key: string): Promise<string | undefined>;
  /** Sets the value under `key` (inserted, or replacing the one there): see {@link readMeta}. */
  writeMeta?(key: string, value: string): Promise<void>;
  /**
   * Atomically, against every process sharing the store: reads the value under `key` (undefined
   * when there is none) and, only when `when(stored)` is true, sets it to `value`. Gives back the
   * value it read and whether it wrote. `when` must be synchronous and pure: it may be called again
   * (PostgreSQL, when another process inserted the key meanwhile). The offer catalog's floor
   * (`offers-catalog`) is raised with it, so that two processes reloading at once never lower it;
   * without it {@link readMeta} then {@link writeMeta} is used, which is not atomic.
   */
  writeMetaIf?(key: string, value: string, when: (stored: string | undefined) => boolean): Promise<{ stored: string | undefined; written: boolean }>;
  /**
   * A small write that changes nothing the server reads, and fails with a StorageError when an
   * update could not be stored either (full disk, read-only file, database gone). After a write
   * failed, `/v1/health` answers 503 until a write succeeds; it runs this at most once a second
   * meanwhile, so that it sees the store recover even when no upload comes (a load balancer sends
   * none to an instance whose health check fails). Without it, only the next successful write ends the 503.
   */
  probeWrite?(): Promise<void>;
  close(): Promise<void>;
}

/** How much of older versions a store keeps (an option of every adapter in this folder). */
export interface VersionRetentionOptions {
  /**
   * How many of the newest versions keep their model bytes (an integer ≥ 1; default
   * {@link DEFAULT_KEEP_MODELS}). Older versions keep their row and hash, which is all the server
   * reads of them (`versionHash`: an update's base check, within `maxStaleness`); 1 is enough for
   * the server, more keeps recent models for an operator to look at or restore by hand. Every
   * version but the latest loses its optimizer state whatever this is.
   */
  keepModels?: number;
}

/**
 * Default {@link VersionRetentionOptions.keepModels}: the current version and the two before it, the bases
 * `--max-staleness` accepts at its default (2). Nothing in the server reads them: they are kept for
 * an operator (a pending update's base model, a version to roll back to by hand).
 */
export const DEFAULT_KEEP_MODELS = 3;

/**
 * Most older versions one publish prunes. In steady state a publish prunes one or two (the
 * version before it loses its optimizer state, the one `keepModels` back its model); a store an
 * earlier release filled with every version's model and state (tens of GB after a year of FedAdam)
 * is pruned this many versions a round, newest first, so that no publish frees (and, with
 * SQLite's `secure_delete` or PostgreSQL's full-page writes, writes to the WAL) more than this many
 * models' worth of pages.
 */
export const PRUNE_BATCH_VERSIONS = 16;

/**
 * After a publish whose prune (below `cut`, the newest version whose model goes) took `found`
 * versions: the version below which every row is pruned, or undefined when a full batch may have
 * left more. Below it, only the next publishes' own versions become prunable, all above `cut`.
 */
export function prunedBelow(found: number, cut: number): number | undefined {
  return found < PRUNE_BATCH_VERSIONS ? Math.max(0, cut + 1) : undefined;
}

/** `options.keepModels`, checked (an integer ≥ 1), or {@link DEFAULT_KEEP_MODELS}. */
export function keepModelsOf(options: VersionRetentionOptions): number {
  const n = options.keepModels ?? DEFAULT_KEEP_MODELS;
  if (!Number.isInteger(n) || n < 1) throw new StorageError(`keepModels must be an integer ≥ 1, got ${n}`);
  return n;
}

/** A `versions` row as the SQL adapters read it (a BIGINT may arrive as a string). */
export interface VersionRow {
  version: number;
  hash: string;
  model: Uint8Array;
  optimizer: Uint8Array | null;
  created_at: number | string;
  update_count: number;
}

/** An `updates` row as the SQL adapters read it (a BIGINT may arrive as a string). */
export interface UpdateRow {
  id: number | string;
  nonce: string;
  base_version: number;
  received_at: number | string;
  body: Uint8Array;
}

/** A stored version from its row (the model and optimizer bytes copied). */
export function versionFromRow(r: VersionRow): StoredVersion {
  return {
    version: r.version,
    hash: r.hash,
    model: new Uint8Array(r.model),
    optimizer: r.optimizer ? new Uint8Array(r.optimizer) : null,
    createdAt: Number(r.created_at),
    updateCount: r.update_count,
  };
}

/** A pending update without its body, from its row. */
export function refFromRow(r: Omit<UpdateRow, 'body'>): PendingRef {
  return { id: Number(r.id), nonce: r.nonce, baseVersion: r.base_version, receivedAt: Number(r.received_at) };
}

/** `rows` (pending updates) in the order of `ids`; ids without a row are left out. */
export function inIdOrder(rows: readonly PendingUpdate[], ids: readonly number[]): PendingUpdate[] {
  const byId = new Map(rows.map((u) => [u.id, u]));
  return ids.flatMap((id) => {
    const u = byId.get(id);
    return u ? [u] : [];
  });
}

/** A pending update from its row (the body is a view, not a copy). */
export function pendingFromRow(r: UpdateRow): PendingUpdate {
  return {
    id: Number(r.id),
    nonce: r.nonce,
    baseVersion: r.base_version,
    receivedAt: Number(r.received_at),
    body: new Uint8Array(r.body.buffer, r.body.byteOffset, r.body.byteLength),
  };
}

/** The `versions` row's values for `next`, in column order: version, hash, model, optimizer, created_at, update_count. */
export function versionParams(next: StoredVersion): [number, string, Buffer, Buffer | null, number, number] {
  const bytes = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  return [next.version, next.hash, bytes(next.model), next.optimizer ? bytes(next.optimizer) : null, next.createdAt, next.updateCount];
}

/** Throws {@link StorageConflictError} unless `version` comes right after `max` (0 on an empty store). */
export function checkNextVersion(max: number | null, version: number): void {
  const expected = max === null ? 0 : max + 1;
  if (version !== expected) throw new StorageConflictError(`cannot publish version ${version}: next is ${expected}`);
}

/** Another writer published first or consumed the same updates; the caller reloads and retries. */
export class StorageConflictError extends StorageError {
  // Keeps the StorageError name so it crosses process and worker boundaries as a StorageError.
  readonly conflict = true;
}

/** The system's errno for ENOSPC (28 on Linux and macOS). */
const ENOSPC_ERRNO = osConstants.errno.ENOSPC;

/**
 * Whether a storage error (or one of its causes) says the disk is full: SQLite's SQLITE_FULL
 * ("database or disk is full", what it reports on ENOSPC), the system's ENOSPC or EDQUOT, or
 * PostgreSQL's `disk_full` (SQLSTATE 53100). SQLite reports ENOSPC met outside a write (an fsync,
 * a truncate, growing the WAL index) as an I/O error (`SQLITE_IOERR_FSYNC`, `SQLITE_IOERR_SHMSIZE`,
 * …): one counts only when it says so (its message names ENOSPC or "no space left", or its errno
 * is ENOSPC); any other I/O error (a failing disk, a file gone) is not a full disk.
 *
 * @example
 * ```ts
 * isDiskFull(new StorageError('SQLite publish version failed: database or disk is full')); // true
 * isDiskFull(Object.assign(new Error('disk I/O error: No space left'), { code: 'SQLITE_IOERR_WRITE' })); // true
 * isDiskFull(Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_WRITE' })); // false
 * ```
 */
export function isDiskFull(e: unknown): boolean {
  for (let x = e, depth = 0; x && depth < 8; x = (x as { cause?: unknown }).cause, depth++) {
    const code = (x as { code?: unknown }).code;
    if (code === 'SQLITE_FULL' || code === 'ENOSPC' || code === 'EDQUOT' || code === '53100') return true;
    const message = String((x as { message?: unknown }).message ?? '');
    if (/database or disk is full|no space left on device|disk quota exceeded/i.test(message)) return true;
    if (typeof code === 'string' && /^SQLITE_IOERR(_|$)/.test(code)) {
      const errno = (x as { errno?: unknown; systemErrno?: unknown }).errno ?? (x as { systemErrno?: unknown }).systemErrno;
      if (/\bENOSPC\b|no space left/i.test(message) || errno === 'ENOSPC' || (typeof errno === 'number' && Math.abs(errno) === ENOSPC_ERRNO)) return true;
    }
  }
  return false;
}

/**
 * The nonce an averaged update keeps (SQL): a masked upload's `cohort:member` becomes
 * `averaged:<row id>` (the cohort refuses uploads once it ends); a plain update's random nonce
 * stays, against replays. `find`: the dialect's substring function (`position` or `instr`).
 */
export function averagedNonceSql(find: 'position' | 'instr'): string {
  const has = find === 'position' ? "position(':' in nonce) > 0" : "instr(nonce, ':') > 0";
  return `CASE WHEN ${has} AND nonce NOT LIKE 'averaged:%' THEN 'averaged:' || id ELSE nonce END`;
}
