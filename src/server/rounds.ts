/**
 * The round coordinator: holds the current global version, accepts checked updates into storage,
 * and publishes the next version once `minClients` updates are pending. All state changes run one
 * at a time through a promise queue, so two requests never aggregate the same round.
 */
import { isStorageError, ModelError, StorageError } from '../errors.js';
import { bytesEqual, decodeModel, decodeUpdate, decodeUpdateHeader, beyondModelMagnitude, encodeModel, fromHex, MAX_MODEL_MAGNITUDE, sha256, toHex, type QuantizedUpdate } from '../federated/wire.js';
import type { ItemTable } from '../model/item-table.js';
import { applyFedAdam, applyFedAvg, robustVarianceFactor, roundingVariance, RoundCombiner, shrinkRows, DEFAULT_FEDADAM, type AggregatorName, type FedAdamOptions, type RobustName } from './aggregate.js';
import { isDiskFull, StorageConflictError, type NewUpdate, type PendingRef, type PendingUpdate, type Storage, type StoredVersion } from './storage.js';
import { MaskedSum, RecoveredSum } from './masked-sum.js';
import { steadyClock } from './clock.js';
import { checkUpdate, reject, type Rejection, type UpdatePolicy } from './validate-update.js';
import { aliveNeighbours, COHORT_ID_BYTES, CONFIRM_TAG_BYTES, decodeMaskedHeader, type TagRound, decodeMaskedUpdate, importPublicKey, maskNeighbours, recoveryShareBytes, SEALED_SHARE_BYTES, usesSelfMask, type SecAggParams } from '../federated/secagg.js';
import { allKeysView, cohortView, defaultUploadTimeoutMs, isCohortId, KeysViewCache, MemoryCohortStore, type CohortInfo, type CohortStatus, type CohortStore, type CohortView } from './cohorts.js';
import { expandDelta, trainedLength, type TrainedPart } from '../federated/client-update.js';
import { DEFAULT_SUBSPACE_SCALE, MIN_DIRECTION_WEIGHT, subspaceTable } from '../federated/subspace.js';

/**
 * What a log line says as fields, for `localrec serve --log-format json`: `event` names the line,
 * `level` is `info` unless said; the others (`version`, `updates`, `durationMs`, `route`, …) are
 * numbers or short words of the server's own, never a client's address, a body, a nonce, a token or
 * a member index.
 */
export interface LogFields {
  event: string;
  level?: 'info' | 'warn' | 'error';
  [field: string]: string | number | boolean | undefined;
}

/** The server's log: one line of text, and its fields when it has some ({@link LogFields}). */
export type LogFn = (line: string, fields?: LogFields) => void;

/** A round whose aggregate lies outside what devices accept: its message names the setting to lower (public in `/v1/rounds/current`). */
class AggregateRangeError extends Error {
  override name = 'AggregateRangeError';
}

export interface RoundConfig extends UpdatePolicy {
  /** The part of the table federated training updates (server options `trainRows`, `trainBiases`). */
  trained: TrainedPart;
  /** Updates needed before a round is aggregated (a k-anonymity floor). Default 10. */
  minClients: number;
  /** Oldest accepted base: current version − maxStaleness. Default 2. */
  maxStaleness: number;
  aggregator: AggregatorName;
  /**
   * How the round's deltas are combined per coordinate before the FedAvg/FedAdam step: the mean
   * (default), a trimmed mean or the median (robust to up to ⌊trimFraction·M⌋, resp. ⌊(M−1)/2⌋,
   * dishonest updates in a round of M).
   */
  robust: RobustName;
  /** β of `trimmed-mean`: the share of values dropped from each end of every coordinate. Default 0.1. */
  trimFraction: number;
  /** FedAvg server learning rate. Default 1. */
  serverLearningRate: number;
  /** `subspace` aggregator: the published factors are this times orthonormal columns. */
  subspaceScale?: number;
  /**
   * `rows`: before the optimizer step, shrink each item's row of the combined delta by the
   * positive-part James–Stein factor for the known DP noise variance ({@link shrinkRows});
   * post-processing, so free in privacy terms. Default `none`.
   */
  denoise?: 'none' | 'rows' | 'directions';
  fedAdam: FedAdamOptions;
  /**
   * Secure aggregation (src/federated/secagg.ts): devices upload masked updates in cohorts of
   * `cohortSize` (= minClients) and the server only ever learns each cohort's sum. Plain updates
   * are then refused, as are robust combiners (they need every update in the clear).
   */
  /** `timeoutMs`: a cohort's time to fill; `uploadTimeoutMs` (default `timeoutMs`, at most 10 minutes): then to collect every upload, and a recovery's every share. */
  secureAggregation?: (SecAggParams & { timeoutMs: number; uploadTimeoutMs?: number }) | undefined;
  /**
   * The wall clock (ms since the epoch): the times written to the store (a version's, an
   * update's) and, on a store that keeps them (PostgreSQL), cohort deadlines, which several
   * processes compare.
   */
  now: () => number;
  /**
   * A monotonic clock (ms; only differences count) for the intervals this process measures for
   * itself: the once-a-second looks at a shared store, at its round settings and at cohorts, the
   * write probe after a storage failure, the retry of a failed round, and the deadlines of cohorts
   * kept in memory. Default: {@link steadyClock} of `now` (`localrec serve`: `performance.now()`).
   */
  monotonic?: () => number;
  log: LogFn;
}

/** How {@link RoundCoordinator.open} treats a store that holds pending updates of other round settings. */
export interface OpenOptions {
  /**
   * Delete them (logged) instead of refusing to start: the updates made for the store's former
   * {@link RoundSettings} when this server's differ, or, on a store that keeps none, those whose
   * header does not fit this server's. Their devices spent privacy budget on them for nothing.
   * `localrec serve --discard-pending`.
   */
  discardPending?: boolean;
}

export interface Accepted {
  ok: true;
  id: number;
  /** Current version after this update (higher than its base when it completed a round). */
  version: number;
  pending: number;
  /** Set when this update completed a round. */
  published?: number;
}

interface Current {
  version: number;
  hash: string;
  table: ItemTable;
  model: Uint8Array;
  optimizer: Float32Array | null;
  createdAt: number;
  int8?: Uint8Array;
}

/**
 * Pending updates whose bodies are read from the store at once ({@link readBodies}): a round holds
 * these few bodies (and what it combines), not every body of the round.
 */
const BODY_BATCH = 8;

/** Lets the event loop run (requests, timers, I/O) between two pieces of a round's work. */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The pending updates without their bodies, oldest first ({@link Storage.pendingRefs}); from an
 * adapter that cannot list them apart, the whole rows ({@link Storage.pending}).
 */
async function pendingRefs(storage: Storage): Promise<PendingRef[]> {
  return storage.pendingRefs && storage.pendingByIds ? storage.pendingRefs() : storage.pending();
}

/**
 * The updates of `refs` with their bodies, in the order of `refs`, read {@link BODY_BATCH} at a
 * time ({@link Storage.pendingByIds}; rows {@link pendingRefs} read whole are handed on as they
 * are). One that is no longer pending (another process sharing the store published or discarded
 * it since the list was read) fails with a {@link StorageConflictError}, as the publish would, or
 * with `missing: 'skip'` is left out.
 */
async function* readBodies(storage: Storage, refs: readonly PendingRef[], missing: 'conflict' | 'skip' = 'conflict'): AsyncGenerator<PendingUpdate> {
  for (let i = 0; i < refs.length; i += BODY_BATCH) {
    const part = refs.slice(i, i + BODY_BATCH);
    const whole = part.every((r): r is PendingUpdate => 'body' in r);
    const got = whole ? part : await storage.pendingByIds!(part.map((r) => r.id));
    if (got.length !== part.length && missing === 'conflict') {
      throw new StorageConflictError(`${part.length - got.length} of the round's updates are no longer pending: another process published or discarded them`);
    }
    yield* got;
  }
}

type StoredUpload =
  | { masked: false; rows: number; frozenBiases: boolean }
  | { masked: true; length: number; cohortSize: number; bits: number; step: number; sealedShares: number };

/** What a stored upload is, from its header: a plain update or a masked one, with what it was sent under; null when neither decodes. */
function storedUpload(body: Uint8Array): StoredUpload | null {
  try {
    const h = decodeUpdateHeader(body);
    return { masked: false, rows: h.itemCount, frozenBiases: !!h.frozenBiases };
  } catch {
    // not a plain update: a masked one?
  }
  try {
    const h = decodeMaskedHeader(body);
    return { masked: true, length: h.length, cohortSize: h.cohortSize, bits: h.bits, step: h.step, sealedShares: h.sealedShares };
  } catch {
    return null;
  }
}

/**
 * Why a stored upload cannot go into a round under `config` (it was made for other round
 * settings: another trained part, the other mode, another cohort size, bit width, step or
 * dropout-recovery setting), or null when it can. What the upload itself does not record (which
 * aggregator it was made for) is the store's {@link RoundSettings}' to say.
 */
function misfit(u: StoredUpload | null, config: RoundConfig): string | null {
  if (u === null) return 'decodes as neither a plain update nor a masked one';
  const sa = config.secureAggregation;
  if (!sa) {
    if (u.masked) return 'a masked upload (secure aggregation), and this server takes plain updates';
    if (u.rows !== config.trained.rows) return `${u.rows} rows, and this server trains ${config.trained.rows} (--train-rows)`;
    if (u.frozenBiases === config.trained.biases) return `biases ${u.frozenBiases ? 'frozen' : 'trained'}, and this server ${config.trained.biases ? 'trains them' : 'keeps them frozen (--freeze-biases)'}`;
    return null;
  }
  if (!u.masked) return 'a plain update, and this server runs secure aggregation';
  const length = trainedLength(config.trained, config.dim);
  if (u.length !== length) return `${u.length} values, and this server trains ${length} (--train-rows, --freeze-biases)`;
  if (u.cohortSize !== sa.cohortSize || u.bits !== sa.bits || u.step !== Math.fround(sa.step)) {
    return `cohorts of ${u.cohortSize} at ${u.bits} bits, step ${u.step}, and this server uses ${sa.cohortSize} at ${sa.bits} bits, step ${Math.fround(sa.step)}`;
  }
  if (u.sealedShares > 0 !== usesSelfMask(sa)) return `sent ${u.sealedShares > 0 ? 'with' : 'without'} dropout recovery, and this server runs ${usesSelfMask(sa) ? 'with' : 'without'} it`;
  return null;
}

/**
 * Refuses to start on pending updates this config cannot aggregate, naming what they were sent
 * under, rather than drop acknowledged updates or fail at every aggregation:
 * - uploads of the other mode: plain updates under secure aggregation would be deleted as dead
 *   cohorts' uploads (in memory) or never complete a cohort; masked uploads without it make every
 *   aggregation fail;
 * - updates of another trained part (`trainRows`, `trainBiases`).
 *
 * `lenient` (a store that keeps no round settings: one from before they were kept) refuses only
 * when none of the pending updates fits: a mix of both kinds can only come from processes sharing
 * the store under different settings (which that release did not prevent), and the ones that do
 * not fit are then left out of the next round ({@link RoundCoordinator.leaveOut}) instead of
 * keeping the store from ever publishing again. One process's pending updates all fit or none do.
 */
async function checkPending(storage: Storage, config: RoundConfig, lenient = false): Promise<void> {
  const masked = !!config.secureAggregation;
  const expected = masked ? trainedLength(config.trained, config.dim) : config.trained.rows;
  // One body at a time: only what each header says is kept.
  const pending: Array<StoredUpload | null> = [];
  for await (const u of readBodies(storage, await pendingRefs(storage), 'skip')) pending.push(storedUpload(u.body));
  if (lenient && pending.some((u) => misfit(u, config) === null)) return;
  const otherwise = 'or start with --discard-pending to delete them (their devices spent privacy budget on them for nothing), or use another data dir';
  const otherMode = pending.filter((u) => u !== null && u.masked !== masked).length;
  if (otherMode > 0) {
    throw new ModelError(
      masked
        ? `the store holds ${otherMode} pending plain updates (sent without secure aggregation), and this server runs --secure-aggregation, which cannot aggregate them; ` +
            `restart without --secure-aggregation until they are published (a round takes --min-clients updates), ${otherwise}`
        : `the store holds ${otherMode} pending masked uploads (sent under secure aggregation), and this server takes plain updates, which cannot unmask them; ` +
            `restart with --secure-aggregation and the same --min-clients (it publishes the complete cohorts and deletes the uploads of the others: at once on SQLite, at their timeout on PostgreSQL), ${otherwise}`,
    );
  }
  const sa = config.secureAggregation;
  for (const u of pending) {
    if (u === null) continue;
    const got = u.masked ? u.length : u.rows;
    if (got !== expected || (!u.masked && u.frozenBiases === config.trained.biases)) {
      const sent = u.masked ? `${got} values` : `${got} rows with biases ${u.frozenBiases ? 'frozen' : 'trained'}`;
      throw new ModelError(
        `the store holds pending updates of ${sent}, and this server trains ${expected} ${masked ? 'values' : 'rows'} ` +
          `(trainRows ${config.trained.rows}, trainBiases ${config.trained.biases}); restart with the --train-rows/--freeze-biases they were sent under, ${otherwise}`,
      );
    }
    // Uploads with a self-mask (dropout recovery on) are unmasked only through recovery; summed as
    // plain masked uploads their self-masks would stay on (noise published as a model), and plain
    // ones never become a recovering cohort (they would be discarded as incomplete).
    if (u.masked && sa && u.sealedShares > 0 !== usesSelfMask(sa)) {
      throw new ModelError(
        `the store holds pending masked uploads sent ${u.sealedShares > 0 ? 'with' : 'without'} dropout recovery, and this server runs ${usesSelfMask(sa) ? 'with' : 'without'} it; ` +
          `restart ${u.sealedShares > 0 ? 'with the --secagg-survivors' : 'without --secagg-survivors (or with it equal to --min-clients)'} they were sent under until they are published, ${otherwise}`,
      );
    }
    // A masked sum is unmasked at the cohort size and decoded at the step it was encoded with.
    if (u.masked && sa && (u.cohortSize !== sa.cohortSize || u.bits !== sa.bits || u.step !== Math.fround(sa.step))) {
      throw new ModelError(
        `the store holds pending masked uploads sent for cohorts of ${u.cohortSize} at ${u.bits} bits, step ${u.step}, and this server uses ${sa.cohortSize} at ${sa.bits} bits, step ${Math.fround(sa.step)}; ` +
          `restart with the settings they were sent under (--min-clients, --secagg-bits, and for the step --clip, --noise, --secagg-survivors, --secagg-range, --aggregator) until they are published, ${otherwise}`,
      );
    }
  }
}

/** Meta key under which the store keeps its {@link RoundSettings} (JSON). */
export const ROUND_SETTINGS_KEY = 'round-settings';

/**
 * The settings that decide what an update is, and so which server can aggregate it: the trained
 * part (row count, frozen biases), the aggregator (devices send a locally trained delta for
 * `fedavg` and `fedadam`, a subspace-iteration step for `subspace`: the same bytes, read as the
 * other kind, publish a wrecked model), and under secure aggregation the cohort size, the bits
 * and the fixed-point step of the masked values, and whether uploads carry self-masks (dropout
 * recovery). The store keeps the settings its pending updates were made for
 * ({@link ROUND_SETTINGS_KEY}): a server started with others refuses while updates are pending,
 * and on a shared store a process whose settings another one replaced takes no more updates
 * ({@link RoundCoordinator.checkSettings}). Everything else (the clip, σ, plain `bits`, minClients,
 * the robust combiner, the learning rates) each update carries in its header or does not depend on,
 * and may differ between processes or restarts.
 */
export interface RoundSettings {
  trainRows: number;
  trainBiases: boolean;
  aggregator: AggregatorName;
  secureAggregation: { cohortSize: number; bits: number; step: number; recovery: boolean } | null;
}

/** The {@link RoundSettings} of `config`. */
export function roundSettings(config: RoundConfig): RoundSettings {
  const sa = config.secureAggregation;
  return {
    trainRows: config.trained.rows,
    trainBiases: config.trained.biases,
    aggregator: config.aggregator,
    // (As a masked upload's header carries it: float32.)
    secureAggregation: sa ? { cohortSize: sa.cohortSize, bits: sa.bits, step: Math.fround(sa.step), recovery: usesSelfMask(sa) } : null,
  };
}

/** The stored {@link RoundSettings}, or undefined when there are none (or they are not that JSON). */
function parseRoundSettings(value: string | undefined): RoundSettings | undefined {
  if (value === undefined) return undefined;
  try {
    const s = JSON.parse(value) as Partial<RoundSettings> | null;
    if (typeof s?.trainRows === 'number' && typeof s.trainBiases === 'boolean' && typeof s.aggregator === 'string' && typeof s.secureAggregation === 'object') return s as RoundSettings;
  } catch {
    // not JSON: as if none were kept
  }
  return undefined;
}

/** What devices send under `aggregator`: fedavg and fedadam take the same locally trained deltas. */
function updateKind(aggregator: string): string {
  return aggregator === 'subspace' ? 'subspace steps' : 'locally trained deltas';
}

/**
 * The settings in which `stored` (the store's) and `mine` differ so that an update made for one
 * cannot be aggregated under the other, each as "what: the store's, this server's"; [] when none.
 */
export function settingsChanges(stored: RoundSettings, mine: RoundSettings): string[] {
  const out: string[] = [];
  const biases = (trained: boolean) => (trained ? 'trained' : 'frozen (--freeze-biases)');
  if (stored.trainRows !== mine.trainRows) out.push(`--train-rows: ${stored.trainRows} in the store, ${mine.trainRows} here`);
  if (stored.trainBiases !== mine.trainBiases) out.push(`biases: ${biases(stored.trainBiases)} in the store, ${biases(mine.trainBiases)} here`);
  if (updateKind(stored.aggregator) !== updateKind(mine.aggregator)) {
    out.push(`--aggregator: ${stored.aggregator} (devices send ${updateKind(stored.aggregator)}) in the store, ${mine.aggregator} (${updateKind(mine.aggregator)}) here`);
  }
  const a = stored.secureAggregation;
  const b = mine.secureAggregation;
  const mode = (on: boolean) => (on ? '--secure-aggregation' : 'plain updates');
  if (!a !== !b) out.push(`${mode(!!a)} in the store, ${mode(!!b)} here`);
  else if (a && b) {
    if (a.cohortSize !== b.cohortSize) out.push(`cohort size (--min-clients): ${a.cohortSize} in the store, ${b.cohortSize} here`);
    if (a.bits !== b.bits) out.push(`--secagg-bits: ${a.bits} in the store, ${b.bits} here`);
    if (a.step !== b.step) out.push(`fixed-point step (from --clip, --noise, --min-clients, --secagg-survivors, --secagg-range, --aggregator): ${a.step} in the store, ${b.step} here`);
    if (a.recovery !== b.recovery) out.push(`dropout recovery (--secagg-survivors below --min-clients): ${a.recovery ? 'on' : 'off'} in the store, ${b.recovery ? 'on' : 'off'} here`);
  }
  return out;
}

/**
 * A process on a shared store whose round settings are no longer the store's: another process was
 * started with other ones while nothing was pending. Every API request it gets is answered 503
 * (`settings-changed`) until it is restarted with the store's settings (or they are its own again).
 */
export class SettingsChangedError extends Error {
  readonly settingsChanged = true;
  constructor(readonly changes: string[]) {
    super(`this server's round settings are no longer the store's: another server was started with other ones (${changes.join('; ')}); it takes no more updates until it is restarted with the store's settings`);
    this.name = 'SettingsChangedError';
  }
}

/**
 * The refusal for a cohort id no cohort has (`unknown-cohort`), saying so when it is not even the
 * form of one (quoted and cut short then: it came from a URL).
 */
export function noCohort(id: string): Rejection {
  if (isCohortId(id)) return reject('unknown-cohort', `no cohort ${id}`);
  return reject('unknown-cohort', `no cohort ${JSON.stringify(id.slice(0, 40))}: a cohort id is ${COHORT_ID_BYTES * 2} lowercase hex digits`);
}

/** `cohort … is <status>`, with the reason when it was aborted: why it takes nothing more. */
function cohortState(id: string, c: CohortInfo): string {
  return `cohort ${id} is ${c.status}${c.abortReason ? ` (${c.abortReason})` : ''}`;
}

/**
 * A storage error answering a masked upload that is stored but maybe not recorded by its cohort
 * (the storage failed in between, and the upload could not be taken out again; or it was an
 * earlier attempt's): answered 503 like any storage error, but saying that the upload is stored
 * and that the same upload sent again is taken (not "replayed").
 */
export class UploadKeptError extends StorageError {
  readonly uploadKept = true;
  constructor(cause: unknown) {
    super(`${(cause as Error).message} (the upload stays stored; the same upload sent again is taken)`, { cause });
  }
}

/**
 * A storage error answering an upload while a publish is owed for want of disk space (the last
 * attempt to publish failed so): the upload is not taken (nothing of it stays stored), so that the
 * room an operator frees goes to the publish, not to more pending updates. Answered 503
 * (`storage-unavailable`, Retry-After) like any storage error, saying why; `/v1/health` answers
 * with it too until a publish succeeds.
 */
export class PublishOwedError extends StorageError {
  readonly publishOwed = true;
  constructor(cause?: unknown) {
    super(`a publish is owed and the disk is full: the last attempt to publish the next version failed for want of space, and no upload is taken until one succeeds${cause ? ` (${(cause as Error).message ?? String(cause)})` : ''}`, cause === undefined ? undefined : { cause });
  }
}

/** How long after a failed aggregation the next is tried, at the soonest. */
const RETRY_INTERVAL_MS = 1000;

/** An error's message on one line, at most 300 characters. */
function oneLineMessage(e: unknown): string {
  const m = (e as Error)?.message ?? String(e);
  return m.replace(/\s+/g, ' ').slice(0, 300);
}

/** The member index in a masked upload's nonce (`cohort:member`). */
function memberOf(nonce: string): number {
  return Number(nonce.slice(nonce.indexOf(':') + 1));
}

function sameShape(a: ItemTable, b: ItemTable): boolean {
  return a.dim === b.dim && a.itemIds.length === b.itemIds.length && a.itemIds.every((id, i) => id === b.itemIds[i]);
}

export class RoundCoordinator {
  private cur!: Current;
  private pendingN = 0;
  private hashes = new Map<number, string>();
  private queue: Promise<unknown> = Promise.resolve();
  /** When {@link catchUp} last read a shared store (on {@link clock}). */
  private lastCatchUp = -Infinity;
  /** The catch-up readers are waiting for, if one is under way. */
  private refreshing: Promise<void> | null = null;
  /** When {@link sweepCohorts} last looked for timed-out cohorts (on {@link clock}). */
  private lastSweep = -Infinity;
  /** Cohorts of secure aggregation (in the store when it keeps them); null when the server takes plain updates. */
  readonly cohorts: CohortStore | null;

  /** The monotonic clock of this process's intervals ({@link RoundConfig.monotonic}). */
  private readonly clock: () => number;

  private constructor(
    readonly storage: Storage,
    readonly config: RoundConfig,
  ) {
    this.settings = roundSettings(config);
    this.clock = config.monotonic ?? steadyClock(config.now);
    const sa = config.secureAggregation;
    if (!sa) {
      this.cohorts = null;
      return;
    }
    const timeouts = { fillMs: sa.timeoutMs, uploadMs: sa.uploadTimeoutMs ?? defaultUploadTimeoutMs(sa.timeoutMs) };
    // Cohorts in the store are compared by every process sharing it: wall clock. Cohorts in this
    // process's memory die with it: their deadlines are intervals of its own.
    this.cohorts = storage.cohortStore?.(sa, timeouts, config.now) ?? new MemoryCohortStore(sa, timeouts, this.clock);
  }

  /**
   * Loads the latest version from storage, or publishes `initialTable` as version 0 on an empty
   * store; checks the store's round settings against this config's and records them
   * ({@link adoptSettings}); then finishes a round that a crash interrupted (≥ minClients pending).
   *
   * @example
   * ```ts
   * const rounds = await RoundCoordinator.open(new MemoryStorage(), createItemTable(ids, 16), config);
   * ```
   */
  static async open(storage: Storage, initialTable: ItemTable | undefined, config: RoundConfig, options: OpenOptions = {}): Promise<RoundCoordinator> {
    if (storage.shared && config.secureAggregation && !storage.cohortStore) {
      throw new StorageError('secure aggregation needs its cohorts in the store when several processes share it, and this store keeps none; use SQLite or PostgreSQL, or plain updates');
    }
    const rc = new RoundCoordinator(storage, config);
    let latest = await storage.latest();
    if (!latest) {
      if (!initialTable) throw new StorageError('the store holds no model and no initial table (catalog) was given');
      const model = encodeModel({ ...initialTable, version: 0 });
      const v0 = { version: 0, hash: toHex(await sha256(model)), model, optimizer: null, createdAt: config.now(), updateCount: 0 };
      try {
        await storage.publish(v0, []);
        latest = v0;
      } catch (e) {
        // Another process sharing the store published version 0 first: adopt what it published.
        if (!(e instanceof StorageConflictError)) throw e;
        latest = await storage.latest();
        if (!latest) throw e;
      }
    }
    await rc.load(latest);
    if (initialTable && !sameShape(initialTable, rc.cur.table)) {
      const stored = rc.cur.table.itemIds;
      const i = initialTable.itemIds.findIndex((id, j) => id !== stored[j]);
      const differ = i >= 0 && i < stored.length ? `; item ${i} is '${stored[i]}' in the store and '${initialTable.itemIds[i]}' in the catalog (the ids or their order changed)` : '';
      throw new StorageError(
        `the store holds a model of ${stored.length} items × ${rc.cur.table.dim}, which does not match the catalog (${initialTable.itemIds.length} items × ${initialTable.dim})${differ}; start without --catalog to serve the stored model${rc.cur.table.dim !== initialTable.dim && i < 0 && stored.length === initialTable.itemIds.length ? `, or with --dim ${rc.cur.table.dim} as it was made` : ''}, or use another data dir`,
      );
    }
    if (rc.cur.table.itemIds.length !== config.itemCount || rc.cur.table.dim !== config.dim) {
      throw new ModelError(`config says ${config.itemCount} × ${config.dim}, stored model is ${rc.cur.table.itemIds.length} × ${rc.cur.table.dim}`);
    }
    if (initialTable && !config.trained.biases) {
      // Frozen biases stay as the store's first version set them: a catalog given to a store that
      // has a model is only checked for its ids and dim, so new sales counts in it change nothing.
      const stored = rc.cur.table.bias;
      let differ = 0;
      for (let i = 0; i < stored.length; i++) if (stored[i] !== initialTable.bias[i]) differ++;
      if (differ > 0) {
        config.log(
          `the catalog's popularity gives ${differ} of ${stored.length} items other biases than the stored model's, which stay as they are: the biases are frozen (--freeze-biases) at the values the store's first version took from the catalog it was started with; --catalog only builds a new store's first version`,
        );
      }
    }
    rc.pendingN = await storage.pendingCount();
    await rc.adoptSettings(options);
    // Under secure aggregation with durable cohorts, a recovered cohort has fewer uploads than
    // minClients yet may be complete (every share in): aggregate() publishes what is complete.
    if (rc.pendingN >= config.minClients || (rc.cohorts?.durable && rc.pendingN > 0)) {
      try {
        await rc.run(() => rc.aggregate());
      } catch (e) {
        // An aggregate out of range fails as it did while the server ran (`/v1/rounds/current`
        // says which setting to lower; retried on the next upload or read): the server starts and
        // serves the last version, rather than refusing to start with the settings it ran with.
        if (e instanceof AggregateRangeError) {
          rc.logRoundFailure('the round pending at start could not be published', e);
          // Retried like a round that failed while the server ran: by the next upload or read,
          // at most once a second after this attempt (retryAggregation).
          rc.aggregationOwed = true;
        }
        // On a shared store another process may have published that round meanwhile (adopted).
        else if (!(storage.shared && e instanceof StorageConflictError)) throw e;
      }
    }
    if (rc.cohorts && !rc.cohorts.durable && rc.pendingN > 0) {
      // Cohorts lived in memory: what is still pending after a restart belongs to cohorts that can
      // never complete (complete ones were just published). Their uploads are random bytes. (In a
      // store that keeps cohorts, they complete or time out whatever happens to this process.)
      const dead = (await pendingRefs(storage)).map((u) => u.id);
      await storage.discard(dead);
      rc.pendingN = await storage.pendingCount();
      config.log(`discarded ${dead.length} uploads of cohorts the restart ended`);
    }
    return rc;
  }

  /** This process's {@link RoundSettings}. */
  readonly settings: RoundSettings;

  /**
   * At open: compares this config's {@link RoundSettings} with the ones the store keeps. Pending
   * updates made for other settings refuse the start, naming them (the specific refusals of
   * {@link checkPending} first), unless `discardPending` deletes them; then this config's settings
   * become the store's. A store that keeps none (made before they were kept, or an adapter
   * without `readMeta`) gets the per-update check alone, which lets a mix of both kinds through
   * (left out of rounds by {@link leaveOut}).
   */
  private async adoptSettings(options: OpenOptions): Promise<void> {
    const { storage, config } = this;
    const stored = storage.readMeta ? parseRoundSettings(await storage.readMeta(ROUND_SETTINGS_KEY)) : undefined;
    const changes = stored ? settingsChanges(stored, this.settings) : [];
    if (this.pendingN > 0 && (changes.length > 0 || !stored)) {
      if (options.discardPending) {
        // Given up on purpose: with changed settings every pending update (they were made for the
        // store's); on a store without settings, those whose header does not fit.
        const refs = await pendingRefs(storage);
        const gone: PendingRef[] = [];
        if (changes.length > 0) gone.push(...refs);
        else for await (const u of readBodies(storage, refs, 'skip')) if (misfit(storedUpload(u.body), config) !== null) gone.push(u);
        if (gone.length > 0) {
          await storage.discard(gone.map((u) => u.id));
          this.pendingN = await storage.pendingCount();
          config.log(`discarded ${gone.length} pending updates made for other round settings (--discard-pending)${changes.length ? `: ${changes.join('; ')}` : ''}`);
        }
      } else if (changes.length > 0) {
        await checkPending(storage, config);
        throw new ModelError(
          `the store's ${this.pendingN} pending updates were made for other round settings than this server's (${changes.join('; ')}), and an update can only be aggregated under the settings it was made for; ` +
            "restart with the store's settings until a round has published them (every instance, on a shared database: a round takes --min-clients updates), " +
            'or start with --discard-pending to delete them (their devices spent privacy budget on them for nothing), or use another data dir. ' +
            'Change these settings with every instance stopped (docs/SERVER.md)',
        );
      } else {
        await checkPending(storage, config, true);
      }
    }
    const mine = JSON.stringify(this.settings);
    if (storage.writeMeta && (!stored || JSON.stringify(stored) !== mine)) {
      await storage.writeMeta(ROUND_SETTINGS_KEY, mine);
      if (changes.length > 0) {
        config.log(
          `the store's round settings change (${changes.join('; ')}): updates made for the former ones are left out of rounds from now on` +
            (storage.shared ? ', and processes still running with them take no more (503, their health check too) until restarted with these' : ''),
        );
      }
    }
    this.lastSettingsLook = this.clock();
  }

  private async load(v: StoredVersion): Promise<void> {
    const actual = toHex(await sha256(v.model));
    if (actual !== v.hash) throw new StorageError(`stored version ${v.version} is corrupt: hash ${actual} ≠ recorded ${v.hash}`);
    const { table } = decodeModel(v.model);
    this.cur = {
      version: v.version,
      hash: v.hash,
      table,
      model: v.model,
      optimizer: v.optimizer ? new Float32Array(v.optimizer.slice().buffer) : null,
      createdAt: v.createdAt,
    };
    this.hashes.set(v.version, v.hash);
  }

  /**
   * On a shared store (several processes), catches up with what the others did: adopts a version
   * published since, and recounts the pending updates. Runs inside the queue; a no-op otherwise.
   */
  private async catchUp(): Promise<void> {
    if (!this.storage.shared) return;
    this.lastCatchUp = this.clock();
    try {
      if ((await this.storage.versionHash(this.cur.version + 1)) !== undefined) {
        const latest = await this.storage.latest();
        if (latest && latest.version > this.cur.version) await this.load(latest);
      }
      this.pendingN = await this.storage.pendingCount();
      this.lastLookError = undefined;
    } catch (e) {
      this.lastLookError = e;
      throw e;
    }
  }

  /**
   * What the last look at a shared store failed with, until a look succeeds, or else what the last
   * write to the store (any store) failed with, until a write succeeds. Readers inside the second
   * after a failed look are answered from memory, and reads may still work while writes cannot
   * (a full disk); `/v1/health` answers with this instead ({@link checkStorage}), so that a load
   * balancer sees the server cannot store however busy the other endpoints keep it.
   */
  get storageFault(): unknown {
    return this.lastLookError ?? this.publishOwedFault() ?? this.lastWriteError;
  }

  /**
   * Whether a publish is owed because its last attempt failed for want of disk space (until one
   * succeeds): uploads are refused meanwhile ({@link store}), and `/v1/health` says so.
   */
  get publishOwedForDisk(): boolean {
    return this.failing?.diskFull === true;
  }

  /** A {@link PublishOwedError} while {@link publishOwedForDisk}, else undefined. */
  private publishOwedFault(): PublishOwedError | undefined {
    return this.publishOwedForDisk ? new PublishOwedError() : undefined;
  }
  private lastLookError: unknown = undefined;
  /** The storage error the last update, publish or discard failed with; cleared by the next that succeeds. */
  private lastWriteError: unknown = undefined;
  /** When a write last failed or the store's write probe last ran (on {@link clock}). */
  private lastWriteCheck = -Infinity;
  /** The write probe health checks are waiting for, if one is under way. */
  private probing: Promise<void> | null = null;

  /**
   * Runs a write to the store, recording whether the store takes writes: a storage error (not a
   * conflict with another process, which is the store working) is kept until a write succeeds.
   */
  private async write<T>(op: () => Promise<T>): Promise<T> {
    const failuresBefore = this.writeFailures;
    try {
      const out = await op();
      // (A replay stored nothing: it says nothing about whether the store takes writes. Nor does a
      // write that began before a failure recorded meanwhile, such as the health probe beside a
      // publish: it must not clear that newer failure.)
      if (out !== 'replayed' && this.writeFailures === failuresBefore) this.lastWriteError = undefined;
      return out;
    } catch (e) {
      if (isStorageError(e) && !(e instanceof StorageConflictError)) {
        this.writeFailures++;
        this.lastWriteError = e;
        this.lastWriteCheck = this.clock();
      }
      throw e;
    }
  }
  /** Storage failures of writes so far (see {@link write}). */
  private writeFailures = 0;

  /**
   * For `/v1/health`: {@link storageFault}, after, while a write fault stands, the store's write
   * probe ({@link Storage.probeWrite}, at most once a second, not behind the queue), so that the
   * fault ends once the store takes writes again even when no upload comes to prove it.
   */
  async checkStorage(): Promise<unknown> {
    // A publish owed for want of disk space: that is the answer until a publish succeeds (a probe,
    // an upload-sized write, may well succeed meanwhile, and would only take room the publish needs).
    const owed = this.publishOwedFault();
    if (owed) return owed;
    const probe = this.storage.probeWrite?.bind(this.storage);
    if (this.lastWriteError !== undefined && probe && this.clock() - this.lastWriteCheck >= 1000) {
      this.lastWriteCheck = this.clock();
      this.probing ??= this.write(probe)
        .catch(() => undefined)
        .finally(() => (this.probing = null));
    }
    if (this.probing) await this.probing;
    return this.storageFault;
  }

  /** When {@link checkSettings} last read the store's round settings (on {@link clock}). */
  private lastSettingsLook = -Infinity;
  /** Set while the store's round settings are not this process's ({@link checkSettings}). */
  private superseded: SettingsChangedError | undefined;

  /**
   * On a shared store, whether another process has made other round settings the store's since
   * this one started (it was started with them while nothing was pending): this process must then
   * take no more updates (made for its settings, they would be left out of every round) and
   * aggregate nothing. The app answers every API request 503 meanwhile, its health check included,
   * so that a load balancer takes it out. Looks at most once a second unless `force` (an upload, a
   * round); undefined (always, on a store only this process uses) while the settings are this
   * process's. A look that fails throws only when forced.
   */
  async checkSettings(force = false): Promise<SettingsChangedError | undefined> {
    if (!this.storage.shared || !this.storage.readMeta) return undefined;
    const t = this.clock();
    if (!force && t - this.lastSettingsLook < 1000) return this.superseded;
    this.lastSettingsLook = t;
    let stored: RoundSettings | undefined;
    try {
      stored = parseRoundSettings(await this.storage.readMeta(ROUND_SETTINGS_KEY));
    } catch (e) {
      // A reader is answered from memory as before (the catch-up's look is what tells a load
      // balancer that the store is down); an upload or a round fails, as it would anyway.
      if (force) throw e;
      return this.superseded;
    }
    const changes = stored ? settingsChanges(stored, this.settings) : [];
    if (changes.length === 0) {
      if (this.superseded) this.config.log("the store's round settings are this server's again: it takes updates again");
      this.superseded = undefined;
    } else {
      if (!this.superseded) this.config.log(`${new SettingsChangedError(changes).message}; until then every API request is answered 503`, { event: 'settings-changed', level: 'error' });
      this.superseded = new SettingsChangedError(changes);
    }
    return this.superseded;
  }

  /**
   * For readers (`GET /v1/model`, `/v1/config`, `/v1/rounds/current`, `/v1/health`): on a shared
   * store, catches up when the last look is older than `maxAgeMs` (default 1 s), so a process whose
   * peers publish keeps serving the current version.
   */
  async refresh(maxAgeMs = 1000): Promise<void> {
    // A failed round is retried behind the queue, not awaited by the reader.
    this.retryAggregation(this.clock());
    // A reader arriving while a round is being combined is answered from memory (the version the
    // round builds on), rather than wait for the round behind the queue.
    if (!this.storage.shared || this.aggregating > 0 || this.clock() - this.lastCatchUp < maxAgeMs) return;
    // Readers arriving together share one look at the store.
    this.refreshing ??= this.run(() => this.catchUp()).finally(() => (this.refreshing = null));
    await this.refreshing;
  }

  /**
   * Resolves once every state change queued so far has finished, and those they queued in turn
   * (a sweep queues discards): what a shutdown waits for before it closes the store.
   */
  async drain(): Promise<void> {
    let seen: Promise<unknown>;
    do {
      seen = this.queue;
      await seen;
    } while (seen !== this.queue);
  }

  private run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn);
    // Keep the queue alive after a failure; the caller still sees the rejection.
    this.queue = p.catch(() => undefined);
    return p;
  }

  get version(): number {
    return this.cur.version;
  }
  get hash(): string {
    return this.cur.hash;
  }
  get pending(): number {
    return this.pendingN;
  }
  get publishedAt(): number {
    return this.cur.createdAt;
  }

  /** Body of `GET /v1/model` for the current version. */
  modelBytes(encoding: 'float32' | 'int8'): Uint8Array {
    if (encoding === 'float32') return this.cur.model;
    this.cur.int8 ??= encodeModel(this.cur.table, 'int8', fromHex(this.cur.hash));
    return this.cur.int8;
  }

  private async hashOf(version: number): Promise<string | undefined> {
    let h = this.hashes.get(version);
    if (h === undefined) {
      h = await this.storage.versionHash(version);
      if (h !== undefined) this.hashes.set(version, h);
    }
    return h;
  }

  /**
   * Checks an update body and stores it (durably, before resolving); completes a round when it
   * brings the pending count to `minClients`.
   *
   * @example
   * ```ts
   * const r = await rounds.submit(body);
   * if (!r.ok) console.log(r.status, r.reason);
   * ```
   */
  async submit(body: Uint8Array): Promise<Accepted | Rejection> {
    // Decoding and the norm check are pure and need no lock.
    if (this.cohorts) return reject('wrong-mode', 'this server runs secure aggregation: join a cohort (POST /v1/secagg/join) and upload a masked update to /v1/secagg/updates');
    const checked = checkUpdate(body, this.config);
    if (!checked.ok) return checked;
    const h = checked.update.header;
    return this.run(async (): Promise<Accepted | Rejection> => {
      await this.catchUp();
      const cur = this.cur.version;
      if (h.baseVersion > cur) return reject('unknown-base', `base version ${h.baseVersion} is newer than the current version ${cur}`);
      if (cur - h.baseVersion > this.config.maxStaleness) {
        return reject('stale', `base version ${h.baseVersion} is older than ${cur - this.config.maxStaleness} (current ${cur}, maxStaleness ${this.config.maxStaleness})`);
      }
      const known = await this.hashOf(h.baseVersion);
      if (known !== toHex(h.baseHash)) return reject('unknown-base', `base hash does not match version ${h.baseVersion}`);
      return this.store(
        { nonce: toHex(h.nonce), baseVersion: h.baseVersion, receivedAt: this.config.now(), body },
        `nonce ${toHex(h.nonce)} was already used`,
        () => this.pendingN >= this.config.minClients,
      );
    });
  }

  /**
   * Stores an accepted update durably, then aggregates when `ready()` says a round is complete.
   * Runs inside the queue.
   */
  private async store(u: NewUpdate, replayed: string, ready: (id: number, again: boolean) => boolean | Promise<boolean | Rejection>): Promise<Accepted | Rejection> {
    // While a publish is owed for want of disk space (publishOwedForDisk) the room an operator frees
    // must go to it: taken by new updates, it would be full again with nothing published, however
    // long the backlog grew. An upload is refused before it is stored, unless an earlier attempt of
    // it was (its answer lost: it takes no more room, and its cohort may need it), or it is the one
    // plain upload a second (RETRY_INTERVAL_MS after the last attempt) that tries the owed publish:
    // stored, the owed round tried with it (below), taken when the publish succeeds, taken out
    // again and refused when it fails. So the publish is tried at most once a second however many
    // devices upload (each attempt reads and combines the whole round), and an upload that comes
    // once room was freed still completes it without waiting for a read (retryAggregation).
    const owed = this.publishOwedForDisk;
    const tryOwed = owed && !this.cohorts && this.clock() - this.lastAttempt >= RETRY_INTERVAL_MS;
    if (owed && !tryOwed && !(await this.storage.pendingByNonce(u.nonce))) throw new PublishOwedError();
    // (Counted as the attempt now: an upload that cannot even be stored takes the second's turn too.)
    if (tryOwed) this.lastAttempt = this.clock();
    let r: { id: number } | 'replayed';
    try {
      r = await this.write(() => this.storage.addUpdate(u));
    } catch (e) {
      if (owed && isDiskFull(e)) throw new PublishOwedError(e);
      throw e;
    }
    let again = false;
    if (r === 'replayed') {
      // The same body under the same nonce, still pending: the first attempt was stored but its
      // answer never reached the device (or its storage failed half-way and the clean-up failed
      // too). It is counted once, and answered as it would have been; anything else is a replay.
      const prior = await this.storage.pendingByNonce(u.nonce);
      if (!prior || !bytesEqual(prior.body, u.body)) return reject('replayed', replayed);
      r = { id: prior.id };
      again = true;
    }
    let complete: boolean | Rejection;
    try {
      // On a shared store the other processes' updates count towards the round too.
      this.pendingN = this.storage.shared || again ? await this.storage.pendingCount() : this.pendingN + 1;
      complete = await ready(r.id, again);
    } catch (e) {
      if (!this.cohorts) {
        // A plain update: all that failed is the count of pending updates on a shared store. The
        // update is stored (this insert, or an earlier attempt's: `again`) and counts towards a
        // round, whichever process publishes it: accepted. (Taken out again and answered 503, its
        // retry would be "replayed" once a peer had averaged it meanwhile.) The next look recounts.
        this.config.log(`update ${r.id} is stored, but counting the pending updates failed: ${(e as Error).message}`);
        if (!again) this.pendingN++;
        return { ok: true, id: r.id, version: this.cur.version, pending: this.pendingN };
      }
      // A masked upload its cohort may not have recorded: take it out again, so that the 503 is
      // true (nothing was stored) and its retry is taken as a first upload; left pending it would
      // stay outside its cohort. Not a row an earlier attempt stored (`again`): its cohort may have
      // counted it already, and the next retry finishes it.
      const taken = !again && (await this.write(() => this.storage.discard([r.id])).then(() => true, () => false));
      this.pendingN = await this.storage.pendingCount().catch(() => this.pendingN);
      // Still stored (an earlier attempt's row, or one that could not be taken out: the store is
      // down): the 503 must not say nothing was; the same upload sent again is taken (`again`).
      // (Only a storage failure: any other error is the server's own and stays a 500.)
      if (!taken && isStorageError(e)) throw new UploadKeptError(e);
      throw e;
    }
    let published: number | undefined;
    if (complete !== true && complete !== false) {
      // Refused after all (its cohort ended meanwhile): the update must not stay pending. (A row an
      // earlier attempt stored is left to the cohort's own end: an aborted cohort deletes its uploads.)
      if (!again) await this.write(() => this.storage.discard([r.id]));
      this.pendingN = await this.storage.pendingCount();
      return complete;
    }
    if (owed && !tryOwed) {
      // An upload stored before (its answer lost), sent again while the publish is owed: answered
      // as stored; the owed publish waits its turn (a second after the last attempt: the next
      // request, or the upload that tries it), not tried again for every such upload.
      this.aggregationOwed = true;
    } else if (complete && this.failing && !this.failing.storage && this.clock() - this.lastAttempt < RETRY_INTERVAL_MS) {
      // Rounds fail, and not for the storage (an aggregate out of range, a bug): not again for
      // every upload. The next request a second or more after the last attempt retries
      // (retryAggregation), or the next upload that completes a round. (After a storage failure
      // this upload's own write just succeeded: the store may take the publish now.)
      this.aggregationOwed = true;
    } else if (complete || tryOwed) {
      // (The upload that tries an owed publish tries it even when it does not complete a round by
      // the count, on a store shared with other processes or with updates left out: it is taken
      // only if the publish goes through, or nothing is owed any more.)
      const before = this.cur.version;
      for (let attempt = 1; ; attempt++) {
        try {
          await this.aggregate();
          break;
        } catch (e) {
          // Another process sharing the store published first (this one has adopted its version):
          // what it left pending may still make a round.
          if (e instanceof StorageConflictError && attempt < 3 && this.pendingN >= this.config.minClients) continue;
          // The update itself is committed; the round is retried at most once a second after this
          // attempt: by the next request (retryAggregation), the next upload, or a restart.
          if (e instanceof StorageConflictError) {
            // Under secure aggregation what is pending may be a complete cohort (or a recovered one,
            // with fewer than minClients uploads) that no later upload completes: it is retried
            // at most once a second (retryAggregation), until its publish deadline.
            if (this.cohorts && this.pendingN > 0) this.aggregationOwed = true;
            this.config.log(`another process published version ${this.cur.version} first`, { event: 'publish-conflict', version: this.cur.version });
          } else {
            this.aggregationOwed = true;
            this.logRoundFailure('aggregation failed, will retry', e);
          }
          break;
        }
      }
      if (this.cur.version > before) published = this.cur.version;
      else if (tryOwed && !again && this.publishOwedForDisk) {
        // The owed publish failed again for want of space: this update is taken out again, so that
        // the 503 is true and its room goes to the next attempt (retryAggregation, once a second).
        // One the store cannot take out either stays stored, and is accepted as stored.
        const id = r.id;
        if (await this.write(() => this.storage.discard([id])).then(() => true, () => false)) {
          this.pendingN = await this.storage.pendingCount().catch(() => this.pendingN - 1);
          throw new PublishOwedError();
        }
      }
    }
    const out: Accepted = { ok: true, id: r.id, version: this.cur.version, pending: this.pendingN };
    if (published !== undefined) out.published = published;
    return out;
  }

  /**
   * Secure aggregation, step 1: adds a device (its ECDH public key) to the cohort being formed.
   *
   * @example
   * ```ts
   * const r = await rounds.joinCohort(publicKey); // { ok: true, cohort: 'ab12…', index: 3, size: 100 }
   * ```
   */
  async joinCohort(publicKey: Uint8Array): Promise<{ ok: true; cohort: CohortInfo; index: number; token: string } | Rejection> {
    if (!this.cohorts) return reject('wrong-mode', 'this server takes plain updates (POST /v1/updates); secure aggregation is off');
    try {
      await importPublicKey(publicKey);
    } catch (e) {
      return reject('malformed', (e as Error).message);
    }
    await this.sweepCohorts();
    const r = await this.cohorts.join(publicKey);
    if ('error' in r) return reject(r.busy ? 'cohorts-full' : 'replayed', r.error);
    return { ok: true, cohort: r.cohort, index: r.index, token: r.token };
  }

  /** A cohort's state (after ending those that timed out), or undefined when there is none by that id. */
  async cohort(id: string): Promise<CohortInfo | undefined> {
    if (!this.cohorts || !isCohortId(id)) return undefined;
    await this.sweepCohorts();
    return this.cohorts.info(id);
  }

  /** Body of `GET /v1/secagg/cohorts/:id[/members/:member]` for a cohort {@link cohort} returned. */
  async cohortView(c: CohortInfo, member?: number): Promise<CohortView> {
    const sa = this.config.secureAggregation;
    if (!this.cohorts || !sa) throw new StorageError('secure aggregation is off on this server');
    return cohortView(this.cohorts, c, sa.degree, member);
  }

  /** The keys of full cohorts' all-keys views, each built once ({@link KeysViewCache}). */
  private readonly keysViews = new KeysViewCache();

  /**
   * `GET /v1/secagg/cohorts/:id` (all K keys) for a cohort {@link cohort} returned: its entity tag,
   * and its JSON body, whose keys are read and encoded once per cohort ({@link allKeysView}).
   */
  cohortKeysView(c: CohortInfo): { etag: string; body: () => Promise<Uint8Array> } {
    if (!this.cohorts) throw new StorageError('secure aggregation is off on this server');
    return allKeysView(this.cohorts, c, this.keysViews);
  }

  /**
   * Ends cohorts that timed out and deletes the uploads they had collected (in the queue, so never
   * while a round is being read). On a shared store it looks at most once a second.
   */
  private async sweepCohorts(): Promise<void> {
    const cohorts = this.cohorts;
    if (!cohorts) return;
    const t = this.clock();
    this.retryAggregation(t);
    if (this.storage.shared && t - this.lastSweep < 1000) return;
    this.lastSweep = t;
    let swept;
    try {
      swept = await cohorts.sweep(this.publishingCohorts);
    } catch (e) {
      this.config.log(`could not check cohorts for timeouts: ${(e as Error).message}`);
      return;
    }
    this.cohortsAbortedN += swept.aborted.length;
    for (const c of swept.aborted) {
      // An aborted cohort's uploads can never be unmasked.
      if (c.updateIds.length === 0) {
        // (Its reason says how many members joined or uploaded, and the deadline it missed.)
        this.config.log(`cohort ${c.id.slice(0, 12)} ended without uploads: ${c.reason}`, { event: 'cohort-ended-empty', level: 'warn' });
        continue;
      }
      void this.run(async () => {
        await this.write(() => this.storage.discard(c.updateIds));
        this.pendingN = await this.storage.pendingCount();
        this.config.log(`discarded ${c.updateIds.length} uploads of aborted cohort ${c.id.slice(0, 12)}: ${c.reason}`, { event: 'cohort-aborted', level: 'warn', uploads: c.updateIds.length });
      }).catch((e: Error) => this.config.log(`could not discard the uploads of cohort ${c.id.slice(0, 12)}: ${e.message}`));
    }
  }

  /**
   * Cohorts whose publish is under way in this process (from the last check that they are still
   * open to their `finish`): a sweep meanwhile does not abort them at their deadline, or a version
   * would be published from a cohort every member is told was aborted.
   */
  private readonly publishingCohorts = new Set<string>();

  private cohortsAbortedN = 0;
  /** Cohorts this process's sweeps ended unpublished (`localrec_cohorts_aborted_total`). */
  get cohortsAborted(): number {
    return this.cohortsAbortedN;
  }

  /** Cohorts by state, from a cohort store that can count them (in memory); undefined otherwise. */
  async cohortCounts(): Promise<Partial<Record<CohortStatus, number>> | undefined> {
    return this.cohorts?.counts?.();
  }

  /** Set when an aggregation failed, or was put off (rounds failing): a complete round waits in the store. */
  private aggregationOwed = false;
  private lastRetry = -Infinity;

  /**
   * Retries an aggregation that failed (storage briefly unavailable, an aggregate out of range) at
   * most once a second after the last attempt, on the next request that sweeps cohorts or reads
   * (`refresh`): otherwise a complete cohort, or one whose recovery shares all came, would wait for
   * another cohort to complete, or for a restart, and a plain round for the next upload.
   */
  private retryAggregation(t: number): void {
    if (!this.aggregationOwed || t - Math.max(this.lastRetry, this.lastAttempt) < RETRY_INTERVAL_MS) return;
    this.lastRetry = t;
    this.aggregationOwed = false;
    void this.run(async () => {
      try {
        await this.catchUp();
        await this.aggregate();
      } catch (e) {
        // Another process published first (this one adopted its version): what is still pending
        // may hold a complete cohort, tried again a second later; every other failure is retried too.
        if (e instanceof StorageConflictError) {
          if (this.pendingN > 0) this.aggregationOwed = true;
          return;
        }
        this.aggregationOwed = true;
        this.logRoundFailure('aggregation failed again, will retry', e);
      }
    }).catch(() => undefined);
  }

  /**
   * Secure aggregation, step 3: stores one member's masked upload (durably, before resolving); the
   * cohort's last upload unmasks the sum and publishes the next version. `token` is the one the
   * member's join was answered with, so nobody else can fill its place.
   */
  async submitMasked(body: Uint8Array, token: string): Promise<Accepted | Rejection> {
    const cohorts = this.cohorts;
    const sa = this.config.secureAggregation;
    if (!cohorts || !sa) return reject('wrong-mode', 'this server takes plain updates (POST /v1/updates); secure aggregation is off');
    let h: ReturnType<typeof decodeMaskedHeader>;
    try {
      h = decodeMaskedHeader(body);
    } catch (e) {
      return reject('malformed', (e as Error).message);
    }
    const length = trainedLength(this.config.trained, this.config.dim);
    if (h.length !== length) return reject('wrong-shape', `the server trains ${length} coordinates, the update has ${h.length}`);
    if (h.bits !== sa.bits) return reject('config-mismatch', `bits is ${h.bits}, the server uses ${sa.bits}`);
    if (h.cohortSize !== sa.cohortSize) return reject('config-mismatch', `cohort size is ${h.cohortSize}, the server uses ${sa.cohortSize}`);
    if (h.step !== Math.fround(sa.step)) return reject('config-mismatch', `the fixed-point step is ${h.step}, the server uses ${Math.fround(sa.step)} (secureAggregation.step in /v1/config)`);
    const id = toHex(h.cohortId);
    await this.sweepCohorts();
    const ended = (c: CohortInfo) => reject('unknown-cohort', `${cohortState(id, c)}; it takes no uploads`);
    // The cohort, the member and its token are checked with reads alone before the upload joins the
    // queue (where every state change of this process waits its turn): an upload for no cohort, or
    // with a wrong token, costs a read or two and holds up nobody. (A member's token never changes
    // once its cohort is full; whether the cohort still collects is read again in the queue.)
    const first = await cohorts.info(id);
    if (!first) return reject('unknown-cohort', `no cohort ${id} (it ended more than an hour ago, or the server restarted)`);
    if (first.status !== 'ready') return ended(first);
    if (h.index >= first.size) return reject('wrong-shape', `member index ${h.index} is outside the cohort (0..${first.size - 1})`);
    // With dropout recovery each upload carries its self-mask's shares, one per mask neighbour.
    const owed = usesSelfMask(sa) ? maskNeighbours(h.index, first.size, sa.degree).length : 0;
    if (h.sealedShares !== owed) {
      return reject('wrong-shape', owed ? `member ${h.index} must seal a share of its self-mask to each of its ${owed} mask neighbours (format 4), the upload has ${h.sealedShares}` : `this server does not recover dropouts: uploads carry no sealed shares (format 5), this one has ${h.sealedShares}`);
    }
    if (token !== (await cohorts.token(id, h.index))) return reject('not-member', `the upload token is not the one member ${h.index} of cohort ${id} was given at join`);
    return this.run(async (): Promise<Accepted | Rejection> => {
      await this.catchUp();
      const c = await cohorts.info(id);
      if (!c) return reject('unknown-cohort', `cohort ${id} ended while the upload waited (it ended more than an hour ago, or the server restarted)`);
      if (c.status !== 'ready') return ended(c);
      if (h.baseVersion > this.cur.version) return reject('unknown-base', `base version ${h.baseVersion} is newer than the current version ${this.cur.version}`);
      return this.store(
        { nonce: `${id}:${h.index}`, baseVersion: h.baseVersion, receivedAt: this.config.now(), body },
        `member ${h.index} of cohort ${id} already uploaded`,
        async (updateId, again) => {
          const m = await cohorts.markSubmitted(id, h.index, updateId, owed ? body.slice(body.length - owed * SEALED_SHARE_BYTES) : undefined);
          if (m !== 'closed') return m === 'complete';
          const now = await cohorts.info(id);
          // A retry of an upload the cohort recorded already: accepted as it was (the cohort may be
          // recovering, or complete with its aggregation owed).
          if (again && now && (now.status === 'ready' || now.status === 'recovering')) return false;
          // The cohort timed out (on another process) between the check above and now.
          return now ? ended(now) : reject('unknown-cohort', `cohort ${id} ended while the upload was stored`);
        },
      );
    });
  }

  /**
   * Secure aggregation: member `member` (its join `token`) leaves a cohort that is still forming, as
   * a device does when its sync is cancelled or gives up waiting; its place goes to the next device
   * to join. Refused once the cohort is full: its keys are out, and a missing upload then counts as
   * a dropout.
   */
  async leaveCohort(id: string, member: number, token: string, memberParam: string = String(member)): Promise<{ ok: true } | Rejection> {
    const cohorts = this.cohorts;
    if (!cohorts) return reject('wrong-mode', 'this server takes plain updates (POST /v1/updates); secure aggregation is off');
    if (!isCohortId(id)) return noCohort(id);
    await this.sweepCohorts();
    const c = await cohorts.info(id);
    if (!c) return noCohort(id);
    if (!(Number.isInteger(member) && member >= 0 && member < c.size)) return reject('malformed', `member must be 0..${c.size - 1}, got '${memberParam.slice(0, 20)}'`);
    const r = await cohorts.leave(id, member, token);
    if (r === 'unknown') return reject('not-member', `the token is not the one member ${member} of cohort ${id} was given at join, or that member left already`);
    if (r === 'too-late') return reject('unknown-cohort', `${cohortState(id, (await cohorts.info(id)) ?? c)}; only a forming cohort can be left (once it is full its keys are out)`);
    return { ok: true };
  }

  /** The cohort `id`, recovering, and member `member` of it proved by its join `token`; or why not. */
  private async recoveringMember(id: string, member: number, token: string, memberParam: string, what: string): Promise<{ c: CohortInfo; sa: SecAggParams; cohorts: CohortStore } | Rejection> {
    const cohorts = this.cohorts;
    const sa = this.config.secureAggregation;
    if (!cohorts || !sa) return reject('wrong-mode', 'this server takes plain updates (POST /v1/updates); secure aggregation is off');
    if (!isCohortId(id)) return noCohort(id);
    await this.sweepCohorts();
    const c = await cohorts.info(id);
    if (!c) return noCohort(id);
    if (c.status !== 'recovering') return reject('unknown-cohort', `${cohortState(id, c)}; it takes no ${what}`);
    if (!(Number.isInteger(member) && member >= 0 && member < c.size)) return reject('malformed', `member must be 0..${c.size - 1}, got '${memberParam.slice(0, 20)}'`);
    if (token !== (await cohorts.token(id, member))) return reject('not-member', `the token is not the one member ${member} of cohort ${id} was given at join`);
    return { c, sa, cohorts };
  }

  /**
   * Secure aggregation, recovery, first step: a surviving member's confirmations, to each mask
   * neighbour the list of dropped members leaves alive, of the list it was shown (16-byte tags the
   * server cannot forge or check; it hands each to its neighbour in the member view). A member gives
   * its recovery share only once all of its living neighbours confirmed the same list.
   */
  async submitConfirmation(id: string, member: number, token: string, tags: Uint8Array, memberParam: string = String(member), round: TagRound = 'confirm'): Promise<{ ok: true } | Rejection> {
    const found = await this.recoveringMember(id, member, token, memberParam, 'confirmations');
    if (!('c' in found)) return found;
    const { c, sa, cohorts } = found;
    if (c.dropped!.includes(member)) return reject('wrong-mode', `member ${member} dropped: it confirms nothing`);
    const what = round === 'confirm' ? 'confirmations' : 'ready tags';
    const bytes = aliveNeighbours(member, c.size, sa.degree, c.dropped!).length * CONFIRM_TAG_BYTES;
    if (tags.length !== bytes) return reject('wrong-shape', `member ${member}'s ${what} are ${bytes} bytes (16 per mask neighbour that did not drop), got ${tags.length}`);
    const r = await cohorts.addConfirmation(id, member, tags, round);
    if (r === 'closed') return reject('unknown-cohort', `cohort ${id} stopped recovering`);
    if (r === 'refused') return reject('replayed', `member ${member} of cohort ${id} gave other ${what} already, or never uploaded`);
    return { ok: true };
  }

  /**
   * Secure aggregation, recovery: a surviving member's share of the seeds it had with its dropped
   * mask neighbours (`GET /v1/secagg/cohorts/:id` lists them while the cohort is `recovering`). The
   * last share needed unmasks the survivors' sum and publishes it. `token` is the member's join token.
   */
  async submitRecovery(id: string, member: number, token: string, share: Uint8Array, memberParam: string = String(member)): Promise<{ ok: true; recovered: number; needed: number; published?: number } | Rejection> {
    const found = await this.recoveringMember(id, member, token, memberParam, 'recovery shares');
    if (!('c' in found)) return found;
    const { c, sa, cohorts } = found;
    const bytes = recoveryShareBytes(member, c.size, sa.degree, c.dropped!);
    if (bytes === 0) return reject('wrong-mode', `member ${member} owes no recovery share (it dropped)`);
    if (share.length !== bytes) return reject('wrong-shape', `member ${member}'s share is ${bytes} bytes (16 per mask neighbour: a pair seed or a self-mask share), got ${share.length}`);
    const r = await cohorts.addRecovery(id, member, share);
    if (r === 'closed') return reject('unknown-cohort', `cohort ${id} stopped recovering`);
    if (r === 'refused') return reject('replayed', `member ${member} of cohort ${id} gave another share already, or never uploaded`);
    const before = this.cur.version;
    if (r === 'complete') {
      await this.run(async () => {
        try {
          // On a shared store another process may have published since this one last looked (its
          // own cohorts): build on that version, as an upload does.
          await this.catchUp();
          await this.aggregate();
        } catch (e) {
          // The shares are stored, the sweep leaves a fully recovered cohort alone, and the next
          // request that sweeps retries the aggregation (retryAggregation, which catches up first),
          // as does a restart. A conflict (another process published meanwhile) is retried too: it
          // may have published another cohort, not this one (when it was this one, the retry finds
          // nothing pending of it).
          this.aggregationOwed = true;
          if (!(e instanceof StorageConflictError)) this.logRoundFailure(`aggregation of recovered cohort ${id.slice(0, 12)} failed, will retry`, e);
        }
      });
    }
    const now = (await cohorts.info(id)) ?? c;
    return { ok: true, recovered: now.recovered ?? 0, needed: now.needed ?? 0, ...(this.cur.version > before ? { published: this.cur.version } : {}) };
  }

  /**
   * Combines every pending update (mean, trimmed mean or median, per `robust`) into the next
   * version and publishes it atomically with the ids it consumed. Under secure aggregation, every
   * cohort whose K uploads are all pending is summed (the masks cancel) and published in turn.
   *
   * The updates are read from the store a few at a time ({@link readBodies}) and combined as they
   * come ({@link RoundCombiner}, {@link MaskedSum}), the event loop let run after each one
   * ({@link yieldToEventLoop}): memory is O(model size) for the mean and for secure aggregation's
   * sums, the stored bodies for the trimmed mean and the median, and requests are answered
   * meanwhile. The result is the one combining them all at once gave, bit for bit. Nothing is
   * written before the publish (bar the deletion of updates that cannot be aggregated), so a crash
   * midway leaves every update pending.
   */
  private async aggregate(): Promise<number> {
    this.aggregating++;
    this.lastAttempt = this.clock();
    try {
      const v = await this.aggregateNow();
      this.roundSucceeded();
      return v;
    } catch (e) {
      if (e instanceof StorageConflictError) {
        // Another process published first (or took updates this round was reading): adopt its
        // version and recount.
        const latest = await this.storage.latest();
        if (latest) await this.load(latest);
        this.pendingN = await this.storage.pendingCount();
        // Nothing left pending: the other process aggregated what this one failed on, so rounds
        // aggregate again (a failure of this one's that still stands keeps its state and `since`).
        if (this.pendingN === 0) this.roundSucceeded();
      } else {
        this.roundFailed(e);
      }
      throw e;
    } finally {
      this.aggregating--;
    }
  }

  /** When an aggregation was last begun (on {@link clock}): a failing round is retried at most once a second after it. */
  private lastAttempt = -Infinity;
  /** Aggregations that failed (not a conflict with another process) since this process started. */
  private roundFailuresN = 0;
  /** Set while rounds fail: since when (wall clock) and with what, as `/v1/rounds/current` shows it. */
  private failing: { since: number; error: string; attempts: number; storage: boolean; diskFull: boolean } | undefined;

  /**
   * Aggregations that failed since this process started (`localrec_round_failures_total`), not
   * counting those another process sharing the store beat to the publish.
   */
  get roundFailures(): number {
    return this.roundFailuresN;
  }

  /**
   * Set while rounds fail (the last aggregation failed): since when (ms since the epoch) and why,
   * in words fit for `/v1/rounds/current` (a storage error's message, which may name a file or a
   * database URL, stays in the log).
   */
  get roundFailure(): { since: number; error: string } | undefined {
    return this.failing && { since: this.failing.since, error: this.failing.error };
  }

  private roundFailed(e: unknown): void {
    this.roundFailuresN++;
    // Public (/v1/rounds/current): only words of the server's own choosing. An aggregate out of
    // range says which setting to lower; anything else (a storage error names a file or a database
    // URL, a recovery error a member index) is one fixed sentence, the cause being in the log.
    const storage = isStorageError(e);
    const diskFull = storage && isDiskFull(e);
    const error = diskFull
      ? 'the server has no disk space left to publish the next version; uploads are refused until it is published (the cause is in its log)'
      : storage
        ? 'the server could not use its storage (the cause is in its log)'
        : e instanceof AggregateRangeError
          ? oneLineMessage(e)
          : 'the round could not be combined (the cause is in the server log)';
    this.failing = { since: this.failing?.since ?? this.config.now(), error, attempts: (this.failing?.attempts ?? 0) + 1, storage, diskFull };
  }

  /** When the last line about a failed round was logged (on {@link clock}), and at which attempt. */
  private failureLine = { at: -Infinity, attempt: 0 };

  /**
   * Logs a failed round: the first two attempts of a run of failures, then at most one line a
   * minute, saying how many attempts failed since the last line (a round retried once a second for
   * hours must not write a line a second).
   */
  private logRoundFailure(what: string, e: unknown): void {
    const attempt = this.failing?.attempts ?? 1;
    const t = this.clock();
    const last = this.failureLine;
    if (attempt > 2 && t - last.at < 60_000) return;
    const unsaid = attempt - last.attempt - 1;
    // (A recovery error names the member it is about: never in the log, SERVER.md "Monitoring".)
    const message = ((e as Error)?.message ?? String(e)).replace(/\bmember \d+/g, 'a member');
    this.config.log(`${what}: ${message}${unsaid > 0 ? ` (and ${unsaid} more failed attempts since the last line)` : ''}`, { event: 'round-failed', level: 'error', attempts: attempt });
    this.failureLine = { at: t, attempt };
  }

  private roundSucceeded(): void {
    if (!this.failing) return;
    this.failureLine = { at: -Infinity, attempt: 0 };
    const ms = this.config.now() - this.failing.since;
    this.config.log(`rounds aggregate again after ${Math.round(ms / 1000)} s of failures (${this.failing.attempts} failed attempts)`, { event: 'round-recovered', durationMs: ms, attempts: this.failing.attempts });
    this.failing = undefined;
  }

  /** Rounds being combined now ({@link aggregate}): readers are answered from memory meanwhile ({@link refresh}). */
  private aggregating = 0;

  private async aggregateNow(): Promise<number> {
    // A process whose settings another one replaced aggregates nothing: it would leave out the
    // updates made for the store's settings (its peers' rounds) and publish those made for its own.
    if (await this.checkSettings(true)) return this.cur.version;
    const sa = this.config.secureAggregation;
    const refs = await pendingRefs(this.storage);
    if (!sa) return this.aggregatePlain(refs);
    const pending = await this.fittingUploads(refs);
    const byCohort = new Map<string, PendingRef[]>();
    for (const u of pending) {
      const id = u.nonce.split(':')[0]!;
      const group = byCohort.get(id);
      if (group) group.push(u);
      else byCohort.set(id, [u]);
    }
    const minSurvivors = sa.minSurvivors ?? sa.cohortSize;
    for (const [id, uploads] of byCohort) {
      // (Whatever ends this cohort's turn, a sweep may end it again afterwards.)
      try {
        let group = uploads;
        let sum: Float64Array;
        let how = ` (secure aggregation, cohort ${id.slice(0, 12)})`;
        if (group.length === sa.cohortSize && !usesSelfMask(sa)) {
          // Not a cohort that ended meanwhile: the sweep aborts a full cohort whose publish kept
          // failing past its deadline, and queues its discard behind this aggregation.
          const c = await this.cohorts?.info(id);
          if (c && c.status !== 'ready') continue;
          const s = new MaskedSum();
          for await (const u of readBodies(this.storage, group)) {
            s.add(decodeMaskedUpdate(u.body));
            await yieldToEventLoop();
          }
          // (And still not, now that its uploads are summed: requests ran meanwhile.) From this
          // check on, no sweep here ends it before its publish does (publishingCohorts).
          this.publishingCohorts.add(id);
          const still = await this.cohorts?.info(id);
          if (still && still.status !== 'ready') continue;
          sum = s.result(sa.step);
        } else {
          // A cohort that lost members can be unmasked once it is recovering and every share is in.
          if (group.length < minSurvivors || !this.cohorts) continue;
          const c = await this.cohorts.info(id);
          if (!c || c.status !== 'recovering' || c.recovered !== c.needed) continue;
          // Only the survivors' uploads. A row of a member counted as dropped (stored, but its
          // cohort never recorded it: the storage failed in between, and so did taking it out
          // again) can never be unmasked with the others: it goes.
          const dropped = new Set(c.dropped!);
          const stray = group.filter((u) => dropped.has(memberOf(u.nonce)));
          group = group.filter((u) => !dropped.has(memberOf(u.nonce)));
          if (group.length !== c.size - dropped.size) continue;
          if (stray.length > 0) {
            await this.write(() => this.storage.discard(stray.map((u) => u.id)));
            this.config.log(`discarded ${stray.length} uploads of members of cohort ${id.slice(0, 12)} counted as dropped`);
          }
          const s = new RecoveredSum(await this.cohorts.recoveryShares(id), c.dropped!, sa);
          for await (const u of readBodies(this.storage, group)) {
            await s.addRecovered(decodeMaskedUpdate(u.body));
            await yieldToEventLoop();
          }
          // Still recovering once its uploads are summed (requests ran meanwhile: a sweep may have
          // aborted it). From this check on, no sweep here ends it before its publish does.
          this.publishingCohorts.add(id);
          if ((await this.cohorts.info(id))?.status !== 'recovering') continue;
          sum = s.result(sa.step);
          how = ` (secure aggregation, cohort ${id.slice(0, 12)}, ${c.dropped!.length ? `recovered without ${c.dropped!.length} dropped members` : 'self-masks removed'})`;
        }
        for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! / group.length;
        // Each member's fixed-point values were rounded stochastically to the step γ: variance
        // γ²/6 on average per member, γ²/(6m) in the mean of m.
        await this.publishMean(sum, group, how, { rounding: sa.step ** 2 / (6 * group.length), factor: 1 });
        await this.cohorts?.finish(id, this.cur.version);
      } finally {
        this.publishingCohorts.delete(id);
      }
    }
    this.pendingN = await this.storage.pendingCount();
    return this.cur.version;
  }

  /**
   * A round of plain updates: each pending update (`refs`, oldest first) read, checked, decoded
   * and added into the round's {@link RoundCombiner} in turn (those that cannot be aggregated go,
   * {@link leaveOut}); published once at least minClients were.
   */
  private async aggregatePlain(refs: PendingRef[]): Promise<number> {
    const { minClients, robust, trimFraction } = this.config;
    // Fewer than a round: the updates are only checked (those that do not fit still go).
    const combining = refs.length >= minClients;
    const combiner = new RoundCombiner(robust, trimFraction);
    const used: PendingRef[] = [];
    const gone = new Map<string, number[]>();
    let rounding = 0;
    for await (const u of readBodies(this.storage, refs)) {
      let why = misfit(storedUpload(u.body), this.config);
      let d: QuantizedUpdate | undefined;
      if (why === null) {
        try {
          d = decodeUpdate(u.body);
        } catch (e) {
          why = `does not decode (${(e as Error).message})`;
        }
      }
      if (why !== null || !d) {
        gone.set(why!, [...(gone.get(why!) ?? []), u.id]);
        continue;
      }
      used.push({ id: u.id, nonce: u.nonce, baseVersion: u.baseVersion, receivedAt: u.receivedAt });
      if (!combining) continue;
      rounding += roundingVariance(d);
      combiner.add(u.body, d);
      await yieldToEventLoop();
    }
    await this.leaveOut(gone);
    if (used.length < minClients) {
      this.pendingN = used.length;
      return this.cur.version;
    }
    const m = used.length;
    const { combined, trim } = await combiner.result(yieldToEventLoop);
    const how = robust === 'mean' ? '' : `, ${robust} dropping ${trim} per end`;
    // In the mean of K updates each one's rounding variance counts 1/K².
    await this.publishMean(combined, used, how, { rounding: rounding / m ** 2, factor: robustVarianceFactor(robust, m, trim) });
    this.pendingN = 0;
    return this.cur.version;
  }

  /**
   * Secure aggregation: the pending uploads (`refs`) this server can aggregate, each checked once
   * (an upload's body never changes: the ids found fitting are remembered); the others go
   * ({@link leaveOut}).
   */
  private async fittingUploads(refs: PendingRef[]): Promise<PendingRef[]> {
    const gone = new Map<string, number[]>();
    for await (const u of readBodies(this.storage, refs.filter((r) => !this.fitting.has(r.id)))) {
      const why = misfit(storedUpload(u.body), this.config);
      if (why === null) this.fitting.add(u.id);
      else gone.set(why, [...(gone.get(why) ?? []), u.id]);
    }
    const ids = new Set(refs.map((r) => r.id));
    for (const id of this.fitting) if (!ids.has(id)) this.fitting.delete(id);
    await this.leaveOut(gone);
    return refs.filter((r) => this.fitting.has(r.id));
  }

  /** Pending masked uploads found fitting this server's settings ({@link fittingUploads}). */
  private fitting = new Set<number>();

  /**
   * Deletes the pending uploads this server cannot aggregate (`gone`: their ids by why), saying
   * why: their shape or flags were made for other round settings (a process sharing the store
   * under other ones, before it noticed that its settings were replaced, or before round settings
   * were kept at all) or they do not decode. Left in, each would fail every round (a delta of
   * another length, a masked upload read as a plain one) or wreck it (biases frozen on the device,
   * trained here).
   */
  private async leaveOut(gone: Map<string, number[]>): Promise<void> {
    if (gone.size === 0) return;
    const ids = [...gone.values()].flat();
    await this.write(() => this.storage.discard(ids));
    const reasons = [...gone].map(([why, of]) => `${why}: ${of.length}`).join('; ');
    this.config.log(`left ${ids.length} pending updates out of the round and deleted them, made for other round settings than this server's or unreadable (${reasons}); their devices' updates are lost, the round goes on without them`);
  }

  /** One optimizer step from the combined delta, published atomically with the updates it consumed. */
  private async publishMean(combined: Float64Array, consumed: readonly { id: number }[], how: string, noise: { rounding: number; factor: number }): Promise<void> {
    // Over the whole table; zero outside the trained part (and on the biases when they are frozen).
    const mean = expandDelta(combined, this.config.trained, this.config.itemCount, this.config.dim);
    // Variance per coordinate of the noise in the combined delta, which the denoisers remove: the
    // DP noise — K plain updates each carry (σC)², their mean (σC)²/K; under secure aggregation each
    // of the m members added a share (σC)²/t (t = minSurvivors), the mean (σC)²/(t·m) — plus the
    // rounding each value went through (`noise.rounding`, already in the mean's terms), the whole
    // times the robust estimator's variance factor (`noise.factor`, 1 for the mean). Taking the
    // noise smaller than it is lets pure-noise directions and rows through (a 2 % shortfall doubles
    // how often the top noise direction passes the Marchenko–Pastur edge).
    const sd = this.config.noiseMultiplier * this.config.clip;
    const sa = this.config.secureAggregation;
    const dpVar = sa ? sd ** 2 / ((sa.minSurvivors ?? sa.cohortSize) * consumed.length) : sd ** 2 / consumed.length;
    const noiseVar = dpVar > 0 ? noise.factor * (dpVar + noise.rounding) : 0;
    if (this.config.denoise === 'rows' && noiseVar > 0) {
      const kept = shrinkRows(mean, this.config.itemCount, this.config.dim, noiseVar, this.config.trained);
      how += `, shrinkage left ${kept} of ${this.config.trained.rows} trained rows non-zero`;
    }
    // Each step below is O(model size) and synchronous: the event loop runs between them.
    await yieldToEventLoop();
    let next: ItemTable;
    let optimizer: Float32Array | null = null;
    if (this.config.aggregator === 'subspace') {
      // One step of subspace iteration: the trained rows' block of the combined update, deflated
      // against the biases and orthonormalized. Its scale (the mean over the cohort) does not matter.
      const t = this.config.trained;
      const base = this.cur.table;
      const shrink = this.config.denoise === 'directions' && noiseVar > 0 ? noiseVar : undefined;
      const { directionWeights, ...table } = subspaceTable(base, mean.subarray(0, t.rows * base.dim), t, this.config.subspaceScale ?? DEFAULT_SUBSPACE_SCALE, base.version + 1, shrink);
      next = { ...table, version: base.version + 1 };
      if (directionWeights) {
        const w = Array.from(directionWeights, (x) => x.toFixed(2));
        how += `, direction weights ${w.join(' ')} (${directionWeights.filter((x) => x > MIN_DIRECTION_WEIGHT).length} of ${w.length} above the noise)`;
      }
    } else if (this.config.aggregator === 'fedadam') {
      const r = applyFedAdam(this.cur.table, mean, this.cur.optimizer, this.config.fedAdam ?? DEFAULT_FEDADAM, this.config.trained);
      next = r.table;
      optimizer = r.state;
    } else {
      next = applyFedAvg(this.cur.table, mean, this.config.serverLearningRate);
    }
    // A version no device would take (not finite, or beyond ±MAX_MODEL_MAGNITUDE: an extreme
    // server learning rate or scale) must never be published: the updates stay pending and the
    // round is retried.
    await yieldToEventLoop();
    const bad = beyondModelMagnitude(next);
    if (bad) throw new AggregateRangeError(`the aggregate of ${consumed.length} updates is out of range (the ${bad.what} of item ${JSON.stringify(bad.itemId)} is ${bad.value}, devices refuse beyond ±${MAX_MODEL_MAGNITUDE}); nothing was published, the updates stay pending: lower the server's learning rate or scale`);
    await yieldToEventLoop();
    const model = encodeModel(next);
    const stored: StoredVersion = {
      version: next.version,
      hash: toHex(await sha256(model)),
      model,
      optimizer: optimizer ? new Uint8Array(optimizer.buffer) : null,
      createdAt: this.config.now(),
      updateCount: consumed.length,
    };
    // (A conflict, another process having published first, is adopted by aggregate().)
    await this.write(() =>
      this.storage.publish(
        stored,
        consumed.map((u) => u.id),
      ),
    );
    this.cur = { version: next.version, hash: stored.hash, table: next, model, optimizer, createdAt: stored.createdAt };
    this.hashes.set(next.version, stored.hash);
    this.config.log(`published version ${next.version} from ${consumed.length} updates${how} (${stored.hash.slice(0, 12)})`, {
      event: 'published',
      version: next.version,
      updates: consumed.length,
      durationMs: Math.round(this.clock() - this.lastAttempt),
    });
  }
}

