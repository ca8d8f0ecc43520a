import { AbortError, ClosedError, ConsentError, isStorageError, LocalrecError, ModelError, NetworkError, StorageError, syncCancelled, ValidationError, PrivacyBudgetError } from '../errors.js';
import { boolOption, checkSignal, describeValue, intOption, knownKeys, nameOption, OPTION_KEYS } from '../options.js';
import { checkEventAge, validateEvent } from '../events/schema.js';
import { ledgerAsOfNow, ledgerKeeps } from '../events/offer-ledger.js';
import { databaseExists, DEFAULT_RETENTION, DELETION_GRACE_MS, deleteEventDatabase, IdbEventStore, MemoryEventStore, openEventStore, quotaEvictedBy, statsOf, type AddResult, type EventStore, type Retention } from '../events/store.js';
import { EVENT_SCHEMA_VERSION, FUTURE_SLACK_MS, MIN_T } from '../events/schema.js';
import type { AuditReport, ExportFile } from './audit-types.js';
import { canonicalJson, catalogExpired, checkCatalogAccepted, checkOffersOption, checkOffersOptions, chooseOffers, indexProducts, offerEconomics, offerScopeLookup, predictAffinity, purchaseBaskets, SignatureError, verifySignedCatalog, type ProductIndex } from '../offers/index.js';
import type { Jwk, OfferCatalog, OffersOptions, SetOffersResult, ShownOffer, SignedOfferCatalog } from '../offers/types.js';
import { BACKEND_NOT_LOADED, BACKEND_ORDER, PROBE_MAX_ROWS, selectBackend, type BackendChoice, type RememberedBackend } from '../model/backend.js';
import * as tf from '../model/tf.js';
import { validateCatalog } from '../model/catalog.js';
import { checkItemTable, cloneItemTable, createItemTable, indexItems, type ItemTable } from '../model/item-table.js';
import { buildProfile, CITED_VERB, type ProfileItem } from '../model/profile.js';
import { contributionsOf, Scorer, topByValue, userVector, type Allowed, type Scored } from '../model/score.js';
import { alignNeighbors, neighborContributionsOf, neighborsOf, topReachedRows } from '../model/neighbors.js';
import { decodeNeighborTable, neighborTableHash } from '../model/neighbors-wire.js';
import { decodeModel, encodeModel, sha256, toHex } from '../federated/wire.js';
import type { SparseItemModel } from '../model/sparse-item-model.js';
import { checkTrainConfig, DEFAULT_TRAIN_CONFIG, trainItemTable, type TrainConfig } from '../model/train.js';
import { DEFAULT_BUDGET, RdpAccountant, type AccountantState } from '../federated/dp.js';
import { DROP_OUT, PRIVATE_FETCH, pullOnce, syncOnce, type EgressEntry, type FetchLike, type ServerConfig } from '../federated/sync.js';
import { isStoredBytes, readAccountant, readAutoSync, readCohorts, readConsentRecords, readEgressLog } from './stored-records.js';
import { forgetSpend, moveLegacySpend, ledgerAvailable, ledgerRecords, PRIVACY_LEDGER_DB, readLedger, recordInLedger, serverKey, type LedgerView } from './privacy-ledger.js';
import type {
  BackendName,
  Progress,
  Catalog,
  FederatedOptions,
  ModelOptions,
  RecommenderOptions,
  RetentionOptions,
  Recommendation,
  RecommendOptions,
  Reason,
  SimilarOptions,
  Stats,
  StoredEvent,
  SyncControl,
  SyncProgress,
  SyncResultInfo,
  TrackEvent,
  TrainOptions,
  TrainResult,
} from '../types.js';

/** What the engine needs to start; the same options as `createRecommender` minus the worker URL. */
export interface EngineOptions {
  catalog: Catalog;
  backend?: BackendName | undefined;
  /** Candidates the backend probe may pick from (default: all registered, best first): a non-empty array of backend names. */
  backendCandidates?: readonly BackendName[] | undefined;
  dbName?: string | undefined;
  retention?: RetentionOptions | undefined;
  model?: ModelOptions | undefined;
  autoTrainEvery?: number | undefined;
  /** Training settings for `train()` (epochs come from TrainOptions when given). */
  training?: Partial<TrainConfig> | undefined;
  /** Offers: the shop's public key(s) (JWK, ECDSA P-256) that signed offer catalogs must verify against. */
  offers?: RecommenderOptions['offers'];
  /** Federated learning: where the aggregation server is, and this device's privacy budget. */
  federated?: FederatedOptions | undefined;
  /**
   * The shop's published neighbour table (`localrec neighbors` output, an absolute http(s) URL):
   * fetched once personalization is allowed, kept in IndexedDB, and used to rank. `timeoutMs`: how
   * long `recommend()`/`similar()` wait for a device's first table (from the fetch's start);
   * `downloadTimeoutMs`: how long the download may take; `refreshHours`: a stored table fetched less
   * than this long ago is used without a request.
   */
  neighbors?: { url: string; timeoutMs?: number | undefined; downloadTimeoutMs?: number | undefined; refreshHours?: number | undefined } | undefined;
  /** fetch to use for sync (tests, simulation); defaults to the global fetch. */
  fetch?: FetchLike | undefined;
  /**
   * Consent at start. `personalization: false` keeps everything in memory and drops tracked
   * events (nothing touches IndexedDB) until `setConsent({ personalization: true })`;
   * `federated: false` makes `sync()` refuse. This is the host's remembered answer and wins over
   * what the device stored. Absent: both granted (`default` in the consent history), except that a
   * withdrawal of federated learning stored on the device holds (`stored`; see mergeConsentHistory).
   */
  consent?: { personalization: boolean; federated: boolean } | undefined;
  /** The browser's Global Privacy Control signal (`navigator.globalPrivacyControl`). */
  globalPrivacyControl?: boolean | undefined;
  /** Honour GPC by turning federated sync off (default true); false only when the host decided otherwise. */
  honorGlobalPrivacyControl?: boolean | undefined;
  /** Clock, for tests. */
  now?: (() => number) | undefined;
  /** A ready store, for tests; otherwise IndexedDB (or memory when IndexedDB is unavailable). */
  store?: EventStore | undefined;
  /**
   * Told after every consent change is applied, this tab's or another tab's: whether events are
   * stored now, and a number that grows with each change (the worker tells the page's gate).
   */
  onConsent?: ((personalization: boolean, version: number) => void) | undefined;
  /**
   * When the host's consent answer (`consent`) was read, ms since the epoch (default: when
   * `create()` is called; the page passes the time of `createRecommender()`, before its worker
   * loads). Another tab's consent change made after it is applied at start-up, also one made
   * while this engine was still starting; an earlier one is not applied over the host's answer.
   */
  consentAsOf?: number | undefined;
}

/** What is persisted in the `meta` store under {@link MODEL_KEY}. */
interface SavedModel {
  version: number;
  itemIds: string[];
  dim: number;
  factors: Float32Array;
  bias: Float32Array;
  trainedAt?: number;
  trainSteps: number;
  /** Key of the newest event the model was trained on. */
  trainedThroughId: number;
  /** Counts the saves, so that a tab does not overwrite weights another tab saved after it loaded (absent before). */
  rev?: number;
  /** Hash of the global model version the weights build on (set by a sync; absent before the first). */
  globalHash?: string;
  /** The server ({@link serverKey}) that sent that version (absent before it was recorded: then it is not named to any server). */
  globalServer?: string;
}

export const MODEL_KEY = 'model';
/**
 * Weight kept per later session. Measured with this profile code on online-retail (loo, HR@10 /
 * NDCG@10): 1 → 0.120 / 0.067, 0.7 → 0.125 / 0.070, 0.5 → 0.126 / 0.072, 0.3 → 0.132 / 0.075;
 * 0.5 leaves room for catalogs where older interests last longer (ratings data preferred 0.7–0.9).
 */
export const DEFAULT_SESSION_DECAY = 0.5;
export const PRIVACY_KEY = 'privacy';
/** Meta key: the secure-aggregation cohorts this shopper's syncs joined, newest last (see claimCohort). */
export const COHORTS_KEY = 'cohorts';
/** Cohorts kept under {@link COHORTS_KEY}: far more than could form while one sync waits. */
const MAX_COHORTS_KEPT = 64;
export const EGRESS_KEY = 'egress';
export const CONSENT_KEY = 'consent';
export const OFFERS_KEY = 'offers';
export const NEIGHBORS_KEY = 'neighbors';
/** The global model as the server last sent it, so that a sync after a reload gets a 304 instead of downloading it again. */
export const GLOBAL_KEY = 'global';

/**
 * The backend probe's last choice on this device ({@link BackendMemo}), so that the next page loads
 * start the chosen backend alone instead of starting and timing every one (seconds of CPU and a GPU
 * context on a phone at every page load).
 */
export const BACKEND_KEY = 'backend';
/** How long a probe's choice stands: a week (a browser or driver update may change the ranking). */
export const BACKEND_MEMO_MS = 7 * 86_400_000;
/** How long a probe's choice is kept when a backend's file could not be loaded for it. */
export const BACKEND_MEMO_PARTIAL_MS = 86_400_000;
/** What {@link BACKEND_KEY} holds: the choice, and what it was made for. */
interface BackendMemo extends RememberedBackend {
  /** The browser's user agent string (a new browser version probes again). */
  ua: string;
  /** ⌊log₂⌋ of the rows the probe timed, the probe's columns, and the candidates in order. */
  rows: number;
  dim: number;
  candidates: string;
}

/** When the automatic syncs last ran ({@link FederatedOptions.autoSyncHours}), shared by the shop's tabs. */
export const AUTO_SYNC_KEY = 'autoSync';
export interface AutoSyncState {
  /** When a tab last started one (claimed in one transaction, so two tabs never both start one). */
  lastAttemptAt?: number;
  /** When one last succeeded. */
  lastSuccessAt?: number;
  /**
   * The earliest time the next one may start: the period after the last success (or the retry
   * delay after the last attempt) plus a random extra of up to half of it, drawn from the platform's
   * CSPRNG, so that a server cannot tell from one sync's time when the same device's next comes.
   * Absent in states saved before it existed: then exactly the period (or retry delay) after.
   */
  nextAt?: number;
}

/** `ms` plus a random extra of up to half of it (crypto.getRandomValues): see {@link AutoSyncState.nextAt}. */
function withJitter(ms: number): number {
  return ms * (1 + 0.5 * randomUnit());
}
/** The first automatic sync of a session waits this long: not while the shop's page is still loading. */
export const AUTO_SYNC_FIRST_DELAY_MS = 10_000;
/**
 * Up to this much more, drawn from the platform's CSPRNG each time (and at most half the period):
 * a first sync exactly 10 s after each page load, or after the consent click, would tell the server
 * when the shopper opened the shop.
 */
export const AUTO_SYNC_FIRST_JITTER_MS = 30 * 60_000;
/** After a failed automatic sync (offline, server down), the next try comes this much later at the soonest. */
export const AUTO_SYNC_RETRY_MS = 15 * 60_000;
/** The shortest period `autoSyncHours` may set (15 minutes). */
export const AUTO_SYNC_MIN_HOURS = 0.25;
/** Timers longer than 2³¹ − 1 ms fire at once: a longer wait is taken in steps of at most this. */
const MAX_TIMER_MS = 2 ** 30;

/** The global model as stored in the `meta` store under {@link GLOBAL_KEY}: its float32 wire encoding and that encoding's SHA-256. */
interface SavedGlobal {
  hash: string;
  bytes: Uint8Array;
  /** The server ({@link serverKey}) that sent it: another server is never sent its hash (absent in records saved before: not used). */
  server?: string;
}
/**
 * How long `recommend()` and `similar()` wait for a device's first neighbour file, counted from the
 * fetch's start, before ranking without it (options.neighbors.timeoutMs); the download goes on.
 */
export const NEIGHBOR_FETCH_TIMEOUT_MS = 15_000;
/**
 * How long the download of the neighbour file may take (options.neighbors.downloadTimeoutMs): 730 KB
 * (online-retail's table) at 64 kbit/s. A download cut at the wait would never finish on a slow link
 * (every page load would pay for half the file and rank without it).
 */
export const NEIGHBOR_DOWNLOAD_TIMEOUT_MS = 120_000;
/**
 * A stored neighbour file fetched (or found unchanged) less than this long ago is used without a
 * request (options.neighbors.refreshHours): a shop publishes it nightly at most, and each fetch
 * costs the shopper its size (730 KB for online-retail) on every page load otherwise.
 */
export const NEIGHBOR_REFRESH_HOURS = 24;
/** A failed fetch of the neighbour file is tried again after this long, then twice as long each time, up to {@link NEIGHBOR_RETRY_MAX_MS}. */
export const NEIGHBOR_RETRY_MIN_MS = 60_000;
export const NEIGHBOR_RETRY_MAX_MS = 3_600_000;

/** A neighbour table as stored in the `meta` store under {@link NEIGHBORS_KEY}. */
interface SavedNeighbors {
  hash: string;
  bytes: Uint8Array;
  source: string;
  savedAt: number;
  /** When a fetch last brought these bytes or found the file unchanged (absent before: savedAt). */
  checkedAt?: number;
}

/** The neighbour table in use, aligned to the catalog's rows. */
interface ActiveNeighbors {
  model: SparseItemModel;
  hash: string;
  /** Items in the published table (not only those in this catalog). */
  items: number;
  /** Of those, the items this page's catalog holds (the only ones ranking can use). */
  matched: number;
  width: number;
  bytes: number;
  /** Where it came from: its URL, or `setNeighbors`. */
  source: string;
}
/**
 * Offers need P(the shopper buys item i); the model gives a distribution over the next item. A
 * basket holds several items, so the next-item probability is scaled by a typical basket size.
 */
const ITEMS_PER_BASKET = 5;

/**
 * One change of consent, as the audit reports it. `source` says where it came from: `options`, the
 * answer the host passed at start (`consent: { personalization, federated }`, remembered by its
 * banner); `default`, no answer from the host (the option left out, or the page's `'granted'`): both
 * taken as given; `stored`, no answer from the host, so the decision this device stored at the
 * shopper's last change was applied again (a withdrawal of federated learning, see
 * {@link Engine.mergeConsentHistory}); `setConsent`, this tab's call; `another-tab`, the shopper
 * changed it in another tab.
 */
export interface ConsentRecord {
  t: number;
  personalization: boolean;
  federated: boolean;
  source: 'options' | 'default' | 'stored' | 'setConsent' | 'another-tab';
}

/** The tab channel as {@link Engine.listenToTabs} opens it, before the engine takes it over. */
interface EarlyChannel {
  channel: BroadcastChannel;
  held: TabMessage[];
  /** The id its `hello` carried. */
  id: string;
  /** When the `hello` went out (`performance.now()`). */
  sentAt: number;
}

/**
 * How long a starting tab waits, from its `hello`, for the live tabs' answers before it fetches
 * the neighbour file: a withdrawal of personalization one of them holds must stop that request.
 * (Usually over by then: the backend probe and opening the database take longer.)
 */
export const HELLO_ANSWER_MS = 100;

/**
 * The Web Lock a tab holds while it follows the shopper's withdrawal of personalization (its own
 * setConsent, or another tab's): `<prefix><federated 1|0>:<when it was asked for>`. A starting tab
 * reads the held ones from the browser's lock manager, which answers even while every live tab's
 * worker is busy, and starts withdrawn instead of storing events until a live tab's answer to its
 * hello comes (the database that withdrawal deleted would be created anew meanwhile).
 */
export function withdrawalLockPrefix(dbName: string): string {
  return `localrec:${dbName}:withdrawn:`;
}

/** The browser's lock manager (`navigator.locks`, in windows and workers); undefined where there is none. */
function lockManager(): LockManager | undefined {
  const locks = (globalThis.navigator as { locks?: LockManager } | undefined)?.locks;
  return typeof locks?.request === 'function' && typeof locks.query === 'function' ? locks : undefined;
}

/** The latest withdrawal of personalization a live tab of `dbName` follows, read from the lock manager; undefined when none (or no lock manager). */
async function liveWithdrawal(dbName: string): Promise<{ federated: boolean; at: number } | undefined> {
  const locks = lockManager();
  if (!locks) return undefined;
  const prefix = withdrawalLockPrefix(dbName);
  let held: LockInfo[];
  try {
    held = (await locks.query()).held ?? [];
  } catch {
    return undefined;
  }
  let latest: { federated: boolean; at: number } | undefined;
  for (const lock of held) {
    if (!lock.name?.startsWith(prefix)) continue;
    const m = /^([01]):(-?\d+(?:\.\d+)?)$/.exec(lock.name.slice(prefix.length));
    if (!m) continue;
    const at = Number(m[2]);
    if (Number.isFinite(at) && (!latest || at > latest.at)) latest = { federated: m[1] === '1', at };
  }
  return latest;
}

/**
 * The latest record of a decision about federated learning in a consent history: made while
 * personalization was on (a record with it off is a start before consent, which says nothing about
 * federated learning), and not a start without any answer from the host (`default`: a tab that
 * started just after another tab's host stored its answer is no later decision).
 */
function latestDecision(history: readonly ConsentRecord[]): ConsentRecord | undefined {
  for (let i = history.length - 1; i >= 0; i--) {
    const r = history[i]!;
    if (r.personalization && r.source !== 'default') return r;
  }
  return undefined;
}

/**
 * `events` as the store reads them (by time, then id) after a write that made `changes`: the
 * removed ones out, the added ones in their place (usually at the end: events come in time order).
 */
export function withChanges(events: readonly StoredEvent[], changes: NonNullable<AddResult['changes']>): StoredEvent[] {
  const removed = new Set(changes.removedIds);
  const out = events.filter((e) => !removed.has(e.id!));
  for (const e of changes.added) if (!removed.has(e.id!)) out.push(e);
  const before = (a: StoredEvent, b: StoredEvent) => a.t - b.t || a.id! - b.id!;
  for (let i = 1; i < out.length; i++) if (before(out[i - 1]!, out[i]!) > 0) return out.sort(before);
  return out;
}

/**
 * One consent choice as the shopper asked for it: its value, when (ms since the epoch) and in which
 * tab (its hello id; '' where that is not known).
 */
interface ConsentChoice {
  value: boolean;
  at: number;
  from: string;
}
/** The shopper's latest decision of each kind a tab knows (none of a kind where it follows only its host's answer, the default, or another tab's consent in force read from the withdrawal lock). */
type ConsentChoices = { personalization?: ConsentChoice; federated?: ConsentChoice };
const CONSENT_KINDS = ['personalization', 'federated'] as const;
/** Whether `a` was asked for after `b`: of two asked for in the same millisecond, the greater tab id counts as later (so that every tab keeps the same one). */
function laterChoice(a: ConsentChoice, b: ConsentChoice | undefined): boolean {
  return b === undefined || a.at > b.at || (a.at === b.at && a.from > b.from);
}
/**
 * The choices another tab's consent message carries, each checked (one that is not a boolean
 * value with a finite time is left out). A message of a tab that sends its consent whole (`at`, no
 * `choices`) counts as one choice of each kind at `at` (none when `at` is not a finite number);
 * undefined for a message without any time.
 */
function messageChoices(m: { personalization?: unknown; federated?: unknown; at?: unknown; from?: unknown; choices?: unknown }): ConsentChoices | undefined {
  const from = (x: unknown) => (typeof x === 'string' && x.length <= 64 ? x : '');
  if (typeof m.choices === 'object' && m.choices !== null) {
    const out: ConsentChoices = {};
    for (const k of CONSENT_KINDS) {
      const c = (m.choices as Record<string, unknown>)[k] as { value?: unknown; at?: unknown; from?: unknown } | null | undefined;
      if (typeof c === 'object' && c !== null && typeof c.value === 'boolean' && typeof c.at === 'number' && Number.isFinite(c.at)) out[k] = { value: c.value, at: c.at, from: from(c.from) };
    }
    return out;
  }
  if (m.at === undefined) return undefined;
  if (typeof m.at !== 'number' || !Number.isFinite(m.at)) return {};
  const at = m.at;
  return { personalization: { value: m.personalization === true, at, from: from(m.from) }, federated: { value: m.federated === true, at, from: from(m.from) } };
}

/** What one tab's engine tells the others on the same database. */
type TabMessage =
  | { type: 'events' }
  | { type: 'model' }
  | { type: 'offers' }
  | { type: 'erased'; at?: number }
  /**
   * `to`: an answer to one starting tab's `hello` (its id), which only that tab applies. `choices`:
   * the shopper's latest decisions the sender knows, each taken on its own where it is later than
   * the receiver's (the consent in force and `at`, the latest of them, are for a tab that reads
   * its consent whole).
   */
  | { type: 'consent'; personalization: boolean; federated: boolean; at?: number; to?: string; choices?: ConsentChoices }
  /** A tab starting: live tabs answer it with the shopper's latest decisions they know (`choices`), each with its time. */
  | { type: 'hello'; id: string };
/** The egress log keeps this many most recent requests (and none older than `retention.maxAgeDays`). */
const EGRESS_MAX = 1000;
/**
 * The most items a server's model may announce to a device whose catalog holds `pageItems`: 4× the
 * catalog, or 10,000 more (items the shop added since the page's catalog was built), whichever is larger.
 */
function maxServerItems(pageItems: number): number {
  return Math.max(4 * pageItems, pageItems + 10_000);
}
const DAY_MS = 86_400_000;
/** Sources of the record a session starts with: dropped when it repeats the stored state (mergeConsentHistory). */
const STARTUP_SOURCES: ReadonlySet<ConsentRecord['source']> = new Set(['options', 'default', 'stored']);
const FLUSH_DELAY_MS = 25;
const FLUSH_MAX = 200;

/**
 * A stored model sharing fewer item ids than this fraction of the smaller of its catalog and the
 * page's was trained on another catalog (load): its training counters are reset. Low, so that a
 * catalog's normal turnover (a season keeping 9 of 20 items, a review measured) is not taken for
 * another catalog; two catalogs sharing most of their ids (one shop's countries) are not caught.
 */
const MIN_CATALOG_MATCH = 0.1;

/** Extra fallback rows recommend() reads to break float32 ties by row as `localrec eval` does. */
const FALLBACK_TIE_ROWS = 16;

/** Most ids `recommend({ candidates })` takes (a page's category listing or search results). */
const MAX_CANDIDATES = 10_000;

/** The keys {@link Engine.create} accepts: the page's options plus what the worker and tests add. */
/** What an `options.store` must have: {@link EventStore}'s methods that are not IndexedDB-only. */
const STORE_METHODS = ['add', 'all', 'byItem', 'count', 'countAfter', 'lastId', 'stats', 'getMeta', 'setMeta', 'offerLedger', 'updateMeta', 'updateMetaPair', 'destroy', 'close'] as const;

/** A store given by the caller is used much later (the first write, an erase): a wrong one fails here, by name. */
function checkStoreOption(store: unknown): void {
  if (store === undefined) return;
  if (typeof store !== 'object' || store === null) throw new ValidationError('options.store', `must be an event store (an object with the EventStore methods), got ${describeValue(store)}`);
  const s = store as Record<string, unknown>;
  if (s.kind !== 'indexeddb' && s.kind !== 'memory') throw new ValidationError('options.store.kind', `must be 'indexeddb' or 'memory', got ${describeValue(s.kind)}`);
  const missing = STORE_METHODS.filter((m) => typeof s[m] !== 'function');
  if (missing.length > 0) throw new ValidationError('options.store', `is not an event store: it has no method ${missing.join(', ')}`);
}

const ENGINE_KEYS = [...OPTION_KEYS.recommender.filter((k) => k !== 'workerUrl' && k !== 'wasmPaths' && k !== 'workerTimeoutMs'), 'backendCandidates', 'training', 'fetch', 'globalPrivacyControl', 'honorGlobalPrivacyControl', 'now', 'store', 'onConsent', 'consentAsOf'];

/** True for an absolute http:// or https:// URL (the worker has no page to resolve a relative one against). */
function isHttpUrl(u: unknown): u is string {
  try {
    return typeof u === 'string' && /^https?:$/.test(new URL(u).protocol);
  } catch {
    return false;
  }
}

/**
 * The largest `federated.delta` taken. δ is the probability that the (ε, δ) guarantee fails outright
 * for a shopper, so it must be far below 1 / the number of devices (a δ of 1/n allows releasing one
 * shopper's data in the clear among n); the larger δ, the smaller the ε reported for the same noise
 * (at δ = 0.5 next to 0), so a large δ would make ε say nothing. Default 1e-5.
 */
export const MAX_DELTA = 1e-3;

/**
 * Plain Node (or another runtime with no browser storage at all): no IndexedDB and not a browser
 * worker or page. There memory is the intended store and engines are separate devices; in a
 * browser without IndexedDB (switched off, a hardened webview) the tabs are still one shopper's.
 */
function plainNode(): boolean {
  const g = globalThis as { indexedDB?: unknown; WorkerGlobalScope?: unknown; window?: unknown };
  return typeof g.indexedDB === 'undefined' && typeof g.WorkerGlobalScope === 'undefined' && typeof g.window === 'undefined';
}

/**
 * Why `serverUrl` is not a plain server address, or undefined when it is: a query string or fragment
 * (even an empty `?` or `#`: the SDK appends `/v1/…` to the URL, which would land in it) or userinfo
 * would go out with every request, so "no query string, no identifier" would depend on configuration.
 */
function serverUrlProblem(u: string): string | undefined {
  const url = new URL(u);
  if (u.includes('?') || url.search) return 'a query string';
  if (u.includes('#') || url.hash) return 'a fragment';
  // (`http://@host` has an empty username but still an `@` in its authority.)
  if (url.username || url.password || /^[a-z][a-z0-9+.-]*:\/\/[^/]*@/i.test(u)) return 'userinfo (user:password@)';
  return undefined;
}

/** `u` (a URL that parses) as `protocol//…@host/path…`, without its user name and password. */
function withoutUserinfo(u: string): string {
  const url = new URL(u);
  return `${url.protocol}//…@${url.host}${url.pathname}${url.search}${url.hash}`;
}

/** Checks `options.federated` once, at start: a bad budget or δ must not surface only at the first sync. */
function checkFederated(fed: unknown): void {
  if (fed === undefined) return;
  const f = knownKeys(fed, 'options.federated', OPTION_KEYS.federated);
  if (!isHttpUrl(f.serverUrl)) {
    throw new ValidationError('options.federated.serverUrl', `must be the aggregation server's http:// or https:// URL, got ${describeValue(f.serverUrl)}`);
  }
  const problem = serverUrlProblem(f.serverUrl);
  if (problem) {
    // (A password is not repeated in the message, which may end up in a page's error log.)
    // Rebuilt from the parsed URL: any spelling a URL parser reads as userinfo (`https:/u:p@h`,
    // `https:u:p@h`) is shown without it.
    const shown = problem.startsWith('userinfo') ? JSON.stringify(withoutUserinfo(f.serverUrl)) : describeValue(f.serverUrl);
    throw new ValidationError(
      'options.federated.serverUrl',
      `must be the aggregation server's address without ${problem}, got ${shown}: it would go out with every request the SDK sends, which carry no query string and no identifier`,
    );
  }
  if (f.budget !== undefined && !(typeof f.budget === 'number' && f.budget > 0 && Number.isFinite(f.budget))) {
    throw new ValidationError('options.federated.budget', `must be a number > 0, got ${describeValue(f.budget)}`);
  }
  if (f.delta !== undefined && !(typeof f.delta === 'number' && f.delta > 0 && f.delta < 1)) {
    throw new ValidationError('options.federated.delta', `must be a number in (0, 1), got ${describeValue(f.delta)}`);
  }
  if (f.delta !== undefined && f.delta > MAX_DELTA) {
    throw new ValidationError(
      'options.federated.delta',
      `must be at most ${MAX_DELTA}, got ${describeValue(f.delta)}: δ is the probability that the privacy guarantee fails outright, so it must be far below 1 / the number of devices (the default is 1e-5), and a large δ makes the reported ε meaninglessly small`,
    );
  }
  boolOption(f.allowWithoutStorage, 'options.federated.allowWithoutStorage');
  if (f.cohortWaitMs !== undefined && !(typeof f.cohortWaitMs === 'number' && Number.isFinite(f.cohortWaitMs) && f.cohortWaitMs > 0)) {
    throw new ValidationError('options.federated.cohortWaitMs', `must be a number of milliseconds > 0, got ${describeValue(f.cohortWaitMs)}`);
  }
  boolOption(f.honorGlobalPrivacyControl, 'options.federated.honorGlobalPrivacyControl');
  if (f.autoSyncHours !== undefined && !(typeof f.autoSyncHours === 'number' && Number.isFinite(f.autoSyncHours) && (f.autoSyncHours === 0 || f.autoSyncHours >= AUTO_SYNC_MIN_HOURS))) {
    throw new ValidationError('options.federated.autoSyncHours', `must be 0 (off) or a number of hours ≥ ${AUTO_SYNC_MIN_HOURS}, got ${describeValue(f.autoSyncHours)}`);
  }
}

/**
 * Checks `options.backendCandidates`: a non-empty array of backend names. (A string was iterated
 * letter by letter, and an unknown name surfaced as "no backend could start".)
 */
function checkBackendCandidates(c: unknown): void {
  if (c === undefined) return;
  if (!Array.isArray(c) || c.length === 0) {
    throw new ValidationError('options.backendCandidates', `must be a non-empty array of backend names (${BACKEND_ORDER.join(', ')}), got ${describeValue(c)}`);
  }
  c.forEach((b: unknown, i) => {
    if (!BACKEND_ORDER.includes(b as BackendName)) throw new ValidationError(`options.backendCandidates[${i}]`, `must be one of ${BACKEND_ORDER.join(', ')}; got ${describeValue(b)}`);
  });
}

/**
 * `log` with `entries` appended, each settled request replacing the `pending` entry logged for it
 * just before it was sent (same method, endpoint and body hash), so that a request is one entry.
 */
export function settlePending(log: readonly EgressEntry[], entries: readonly EgressEntry[]): EgressEntry[] {
  const out = log.slice();
  const settles = (e: EgressEntry, p: EgressEntry) => p.pending && p.method === e.method && p.endpoint === e.endpoint && p.bodySha256 === e.bodySha256 && p.server === e.server;
  for (const e of entries) {
    let i = e.pending ? -1 : out.length - 1;
    while (i >= 0 && !settles(e, out[i]!)) i--;
    if (i >= 0) out[i] = e;
    else out.push(e);
  }
  return out;
}

/**
 * The stored egress `log` with `entries` settled in, oldest first (entries kept in memory while
 * storage was full come later than newer ones), trimmed to the age limit and to {@link EGRESS_MAX}.
 */
function egressWith(log: unknown, entries: readonly EgressEntry[], cutoff: number): EgressEntry[] {
  return capEgress(trimEgress(settlePending(readEgressLog(log).value, entries).sort((a, b) => a.t - b.t), cutoff));
}

/**
 * At most {@link EGRESS_MAX} entries of `log` (oldest first): the oldest go, uploads last. A server
 * that keeps a cohort forming for hours makes a device poll it thousands of times; those polls
 * must not push the record of what the device uploaded out of its log.
 */
export function capEgress(log: readonly EgressEntry[]): EgressEntry[] {
  let over = log.length - EGRESS_MAX;
  if (over <= 0) return log.slice();
  const kept = log.filter((e) => e.kind === 'update' || over-- <= 0);
  return kept.slice(-EGRESS_MAX);
}

/** Calls every listener with `p`; one that throws (a page's callback) does not stop the others or the work reporting. */
function tellEach<T>(listeners: Iterable<(p: T) => void>, p: T): void {
  for (const l of listeners) {
    try {
      l(p);
    } catch {
      // Ignored: progress is only reported.
    }
  }
}

/**
 * Whether the browser asks for reduced data use (`navigator.connection.saveData`: the Save-Data
 * setting, a data-saver mode, some metered connections; Chromium-based browsers, also in workers).
 */
function saveDataOn(): boolean {
  const c = (globalThis.navigator as { connection?: { saveData?: unknown } } | undefined)?.connection;
  return c?.saveData === true;
}

/** What a probe's choice is remembered for ({@link BackendMemo} without the choice). */
function backendShape(rows: number, dim: number, candidates: readonly string[]): Omit<BackendMemo, keyof RememberedBackend> {
  const ua = (globalThis.navigator as { userAgent?: unknown } | undefined)?.userAgent;
  return { ua: typeof ua === 'string' ? ua : '', rows: Math.floor(Math.log2(Math.max(1, Math.min(rows, PROBE_MAX_ROWS)))), dim, candidates: candidates.join(',') };
}

/**
 * The stored probe choice ({@link BACKEND_KEY}) when it was made for `shape` less than a week ago
 * (by this clock; one ahead of it is not used); a record that is not one is ignored (the probe
 * runs, and its choice replaces it).
 */
async function readBackendMemo(store: EventStore, shape: ReturnType<typeof backendShape>, now: number): Promise<RememberedBackend | undefined> {
  let m: unknown;
  try {
    m = await store.getMeta(BACKEND_KEY);
  } catch {
    return undefined;
  }
  if (typeof m !== 'object' || m === null) return undefined;
  const r = m as Partial<BackendMemo>;
  if (!BACKEND_ORDER.includes(r.backend as BackendName) || typeof r.reason !== 'string' || typeof r.at !== 'number' || !Number.isFinite(r.at)) return undefined;
  if (r.ua !== shape.ua || r.rows !== shape.rows || r.dim !== shape.dim || r.candidates !== shape.candidates) return undefined;
  const age = now - r.at;
  // A choice made while a backend's file could not be loaded (not deployed, or the network failed
  // that once: the two look alike) stands for a day, so that a fixed deployment is probed again soon.
  const maxAge = r.reason.includes(BACKEND_NOT_LOADED) ? BACKEND_MEMO_PARTIAL_MS : BACKEND_MEMO_MS;
  if (!(age >= 0 && age < maxAge)) return undefined;
  return { backend: r.backend as BackendName, reason: r.reason, at: r.at };
}

/**
 * `aborted` resolves when `signal` aborts (never without one); `done()` removes its listener, so
 * that a signal the page keeps for the whole session does not gather one per call.
 */
function whenAborted(signal: AbortSignal | undefined): { aborted: Promise<void>; done: () => void } {
  let listener: (() => void) | undefined;
  const aborted = new Promise<void>((resolve) => {
    if (!signal) return;
    if (signal.aborted) return resolve();
    listener = () => resolve();
    signal.addEventListener('abort', listener, { once: true });
  });
  return { aborted, done: () => listener && signal?.removeEventListener('abort', listener) };
}

/**
 * Key of the newest of `events` (the store's keys only grow): what a training run or a sync learned
 * from. Events stored while it ran stay pending, so auto-training still counts them.
 */
function newestId(events: StoredEvent[]): number {
  return events.reduce((m, e) => Math.max(m, e.id ?? 0), 0);
}

/**
 * The worker-side orchestrator: event store, model, training and scoring. A plain class, so it
 * runs in Node (tests, CLI) as well as behind comlink in the browser worker.
 *
 * @example
 * ```ts
 * const engine = await Engine.create({ catalog: { items: [{ id: 'a' }, { id: 'b' }] } });
 * engine.enqueue([{ type: 'view', itemId: 'a' }]);
 * await engine.flush();
 * await engine.recommend({ k: 1 }); // [{ itemId: 'b', score: …, reason: { … } }]
 * ```
 */
export class Engine {
  private readonly rows: Map<string, number>;
  private readonly titles: Map<string, string>;
  /** The catalog's categories (`recommend({ category })` of any other recommends nothing). */
  private readonly categories: Set<string>;
  private table!: ItemTable;
  private saved!: Omit<SavedModel, 'factors' | 'bias' | 'itemIds' | 'dim' | 'version'>;
  private scorer!: Scorer;
  private queue: StoredEvent[] = [];
  /** The sync under way, if any (see {@link sync}), whether it uploads, its cancel switch and its progress listeners. */
  private syncing: Promise<SyncResultInfo> | null = null;
  private syncContributes = false;
  /** Counts cancelAllSyncs() calls: a call waiting for its turn is cancelled by one made while it waits. */
  private cancels = 0;
  /**
   * The global model as the server last sent it (this session only; public data): a contributing
   * sync sends its hash in If-None-Match and reuses it on a 304 instead of downloading it again.
   */
  private heldGlobal: { table: ItemTable; hash: string } | undefined;
  private syncAbort: AbortController | null = null;
  private readonly syncListeners = new Set<(p: SyncProgress) => void>();
  private flushTimer: ReturnType<typeof setTimeout> | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private training: Promise<TrainResult> | undefined;
  private closed = false;
  /** close() has begun (the neighbour fetch it stops reports that, not a timeout). */
  private closing = false;
  private dropped = 0;
  private lastError: Error | undefined;
  private readonly now: () => number;
  private readonly halfLifeDays: number;
  private readonly sessionDecay: number;
  private readonly stepDecay: number;
  private readonly autoTrainEvery: number;
  private consent: Consent;
  private consentHistory: ConsentRecord[] = [];
  private droppedBeforeConsent = 0;

  private constructor(
    private readonly catalog: Catalog,
    private store: EventStore,
    /** Replaced when the backend in use fails at run time ({@link recoverBackend}). */
    private backend: BackendChoice,
    private readonly opts: EngineOptions,
  ) {
    this.rows = indexItems(catalog.items.map((i) => i.id));
    this.titles = new Map(catalog.items.filter((i) => i.title).map((i) => [i.id, i.title!]));
    this.categories = new Set(catalog.items.flatMap((i) => (i.category === undefined ? [] : [i.category])));
    this.now = opts.now ?? Date.now;
    this.halfLifeDays = opts.model?.halfLifeDays ?? 30;
    this.sessionDecay = opts.model?.sessionDecay ?? DEFAULT_SESSION_DECAY;
    this.stepDecay = opts.model?.stepDecay ?? 1;
    this.autoTrainEvery = intOption(opts.autoTrainEvery, 'options.autoTrainEvery', 0, 1_000_000, 20);
    this.consent = { personalization: opts.consent?.personalization ?? true, federated: opts.consent?.federated ?? true };
    this.consentApplying = this.consent;
    // Without an answer from the host the stored decision may still change this (mergeConsentHistory).
    this.consentByDefault = opts.consent === undefined;
    this.consentHistory.push({ t: this.now(), ...this.consent, source: this.consentByDefault ? 'default' : 'options' });
    this.startedAt = this.now();
  }

  /** When this engine was built (its clock): an erase that began before holds nothing it took. */
  private readonly startedAt: number;

  static async create(opts: EngineOptions): Promise<Engine> {
    // (knownKeys lets undefined through, as an absent sub-object: the options themselves are required.)
    if (typeof opts !== 'object' || opts === null || Array.isArray(opts)) throw new ValidationError('options', `must be an object with a \`catalog\`, got ${describeValue(opts)}`);
    knownKeys(opts, 'options', ENGINE_KEYS);
    const catalog = validateCatalog(opts.catalog);
    knownKeys(opts.model, 'options.model', OPTION_KEYS.model);
    knownKeys(opts.retention, 'options.retention', OPTION_KEYS.retention);
    knownKeys(opts.offers, 'options.offers', OPTION_KEYS.offers);
    checkOffersOption(opts.offers);
    knownKeys(opts.consent, 'options.consent', OPTION_KEYS.consent);
    // First: the page passes federated.honorGlobalPrivacyControl on as honorGlobalPrivacyControl,
    // and its error should name the option the page was given.
    checkFederated(opts.federated);
    // Privacy switches take true or false only: 'false' (a string) would read as consent given. A
    // consent given names both (as the page's options must): a left-out one would read as given
    // and override what the shopper chose before.
    if (opts.consent !== undefined && (typeof opts.consent !== 'object' || opts.consent === null || Array.isArray(opts.consent))) {
      throw new ValidationError('options.consent', `must be { personalization, federated }, got ${describeValue(opts.consent)}`);
    }
    boolOption(opts.consent?.personalization, 'options.consent.personalization', opts.consent !== undefined);
    boolOption(opts.consent?.federated, 'options.consent.federated', opts.consent !== undefined);
    boolOption(opts.globalPrivacyControl, 'options.globalPrivacyControl');
    boolOption(opts.honorGlobalPrivacyControl, 'options.honorGlobalPrivacyControl');
    nameOption(opts.dbName, 'options.dbName');
    checkBackendCandidates(opts.backendCandidates);
    // Called later (a sync, the clock, a consent change): a wrong value must fail here, by name.
    for (const f of ['fetch', 'now', 'onConsent'] as const) {
      if (opts[f] !== undefined && typeof opts[f] !== 'function') throw new ValidationError(`options.${f}`, `must be a function, got ${describeValue(opts[f])}`);
    }
    checkStoreOption(opts.store);
    if (opts.consentAsOf !== undefined && !(typeof opts.consentAsOf === 'number' && Number.isFinite(opts.consentAsOf))) {
      throw new ValidationError('options.consentAsOf', `must be a time (ms since the epoch), got ${describeValue(opts.consentAsOf)}`);
    }
    const dim = intOption(opts.model?.dim, 'options.model.dim', 1, 64, 32);
    // Checked here too (the constructor reads it), before anything opens IndexedDB.
    intOption(opts.autoTrainEvery, 'options.autoTrainEvery', 0, 1_000_000, 20);
    // An object of known keys, as every other option group: a typo (`epoch`) or null would leave
    // the defaults in force without a word.
    knownKeys(opts.training, 'options.training', Object.keys(DEFAULT_TRAIN_CONFIG));
    if (opts.training !== undefined) checkTrainConfig(opts.training, 'options.training');
    // A whole 32-bit number: the generator keeps 32 bits, so 0.5 and 0, or 1 and 2³² + 1, were one seed.
    intOption(opts.model?.seed, 'options.model.seed', 0, 0xffff_ffff, 1);
    const hl = opts.model?.halfLifeDays ?? 30;
    if (typeof hl !== 'number' || !(hl > 0) || !Number.isFinite(hl)) throw new ValidationError('options.model.halfLifeDays', `must be a number > 0, got ${describeValue(hl)}`);
    const sd = opts.model?.sessionDecay ?? DEFAULT_SESSION_DECAY;
    if (typeof sd !== 'number' || !(sd > 0 && sd <= 1)) throw new ValidationError('options.model.sessionDecay', `must be a number in (0, 1], got ${describeValue(sd)}`);
    const st = opts.model?.stepDecay ?? 1;
    if (typeof st !== 'number' || !(st > 0 && st <= 1)) throw new ValidationError('options.model.stepDecay', `must be a number in (0, 1], got ${describeValue(st)}`);
    if (opts.neighbors !== undefined) {
      knownKeys(opts.neighbors, 'options.neighbors', OPTION_KEYS.neighbors);
      const u = opts.neighbors?.url;
      if (!isHttpUrl(u)) throw new ValidationError('options.neighbors.url', `must be an absolute http(s) URL of the neighbour file, got ${describeValue(u)}`);
      const wait = intOption(opts.neighbors.timeoutMs, 'options.neighbors.timeoutMs', 1, 600_000, NEIGHBOR_FETCH_TIMEOUT_MS);
      const download = intOption(opts.neighbors.downloadTimeoutMs, 'options.neighbors.downloadTimeoutMs', 1, 3_600_000, Math.max(wait, NEIGHBOR_DOWNLOAD_TIMEOUT_MS));
      if (download < wait) {
        throw new ValidationError('options.neighbors.downloadTimeoutMs', `must be at least options.neighbors.timeoutMs (${wait} ms: the wait for a download), got ${download}`);
      }
      const refresh = opts.neighbors.refreshHours;
      if (refresh !== undefined && !(typeof refresh === 'number' && refresh >= 0 && refresh <= 8_760)) {
        throw new ValidationError('options.neighbors.refreshHours', `must be a number of hours from 0 (every page load) to 8760 (a year), got ${describeValue(refresh)}`);
      }
    }
    const retention: Retention = {
      maxEvents: intOption(opts.retention?.maxEvents, 'options.retention.maxEvents', 1, 10_000_000, DEFAULT_RETENTION.maxEvents),
      maxAgeDays: intOption(opts.retention?.maxAgeDays, 'options.retention.maxAgeDays', 1, 36_500, DEFAULT_RETENTION.maxAgeDays),
    };
    // The other tabs are listened to from here on, before the backend probe and the database:
    // a consent change made in one while this engine starts (a withdrawal, whose database this one
    // would open again) is applied once it is built, and the live ones say which consent they follow.
    const early = Engine.listenToTabs(opts);
    let backend: BackendChoice;
    let store: EventStore;
    // A live tab follows the shopper's withdrawal of personalization: this one starts withdrawn too
    // (no database, no events stored), unless its host's answer is later than that withdrawal, as
    // that tab's answer to the hello would decide once it comes.
    const live = early ? await liveWithdrawal(opts.dbName ?? 'localrec') : undefined;
    const followLive = live !== undefined && live.at >= (opts.consent === undefined ? -Infinity : (opts.consentAsOf ?? (opts.now ?? Date.now)()));
    // Before consent nothing may touch IndexedDB: the engine starts on a memory store that drops events.
    const consented = !followLive && (opts.consent?.personalization ?? true);
    let memo: BackendMemo | undefined;
    try {
      store = consented ? (opts.store ?? (await openEventStore(opts.dbName ?? 'localrec', retention))) : new MemoryEventStore(retention);
    } catch (e) {
      early?.channel.close();
      throw e;
    }
    try {
      // Probed on this catalog's scoring shape, items × (dim + 1): which backend scores fastest
      // depends on it (wasm on small catalogs even beside a fast GPU, WebGPU on large ones). An
      // earlier page load's choice for the same shape, browser and candidates stands for a week.
      const shape = backendShape(catalog.items.length, dim + 1, opts.backendCandidates ?? BACKEND_ORDER);
      const remembered = opts.backend === undefined && consented ? await readBackendMemo(store, shape, (opts.now ?? Date.now)()) : undefined;
      backend = await selectBackend({ force: opts.backend, candidates: opts.backendCandidates, probeRows: catalog.items.length, probeDim: dim + 1, ...(remembered ? { remembered } : {}) });
      if (backend.rememberable) memo = { ...shape, backend: backend.backend, reason: backend.reason, at: (opts.now ?? Date.now)() };
    } catch (e) {
      early?.channel.close();
      if (store !== opts.store) store.close();
      throw e;
    }
    const engine = new Engine(catalog, store, backend, opts);
    // Its own from here on (abandon() closes it), though what comes is held until openChannel.
    engine.channel = early?.channel;
    // A host's answer, read at consentAsOf, is not overridden by another tab's change asked for
    // before it; with no answer from the host (the default) any live tab's decision is newer.
    if (opts.consent !== undefined) engine.hostAt = opts.consentAsOf ?? engine.now();
    if (followLive) engine.followLiveWithdrawal(live!);
    try {
      engine.noteFallback(store);
      engine.watchStore(store);
      engine.retention = retention;
      engine.dim = dim;
      await engine.load(dim);
      engine.watchBackend();
      if (consented) {
        // Events past the age limit go now, not at the next write (a shopper back after a year).
        await engine.retainNow();
        // What this database spent before the shared privacy ledger existed counts in it from now on.
        await engine.keepLegacySpend(engine.store);
        await engine.mergeConsentHistory();
        await engine.loadStoredNeighbors();
        if (memo && engine.consent.personalization) await engine.rememberBackend(memo);
      }
      // Last: what other tabs said meanwhile (a withdrawal that deletes the database) is applied
      // once nothing here reads the store any more (a read would open it again).
      engine.openChannel(early);
      if (consented && opts.neighbors) {
        // The neighbour file is fetched only once the live tabs' answers to this one's hello are
        // in and applied: one holding a withdrawal of personalization means no request at all
        // (startNeighborFetch asks the consent then in force).
        const wait = early ? HELLO_ANSWER_MS - (performance.now() - early.sentAt) : 0;
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        await engine.inbox;
        engine.startNeighborFetch();
      }
      engine.scheduleAutoSync(engine.firstAutoSyncDelay());
    } catch (e) {
      // Nothing this call opened outlives it: the caller gets no engine to close.
      engine.abandon();
      throw e;
    }
    return engine;
  }

  /** Starts withdrawn, as a live tab that follows the shopper's withdrawal at `live.at` ({@link liveWithdrawal}). */
  private followLiveWithdrawal(live: { federated: boolean; at: number }): void {
    // The lock tells the live tab's federated consent in force, which may be its default or its
    // host's answer rather than the shopper's decision: not a choice to pass on, and no more than
    // this tab's own host allows (the decided choices come with the live tabs' answers to the hello).
    this.consent = { personalization: false, federated: live.federated && this.opts.consent?.federated !== false };
    this.consentApplying = this.consent;
    this.consentByDefault = false;
    this.choices = { personalization: { value: false, at: live.at, from: '' } };
    this.decidedAt = live.at;
    this.consentHistory = [{ t: this.now(), ...this.consent, source: 'another-tab' }];
    this.updateWithdrawalLock();
    // The page's gate follows: what it tracks from now on is not even posted.
    this.consentApplied();
  }

  /** The lock this tab holds while it follows a withdrawal of personalization ({@link withdrawalLockPrefix}). */
  private withdrawalLock: { name: string; release: () => void } | undefined;

  /**
   * Holds the withdrawal lock while the consent in force here is a decision (this tab's or
   * another's, with its time) that withdrew personalization, and lets it go otherwise.
   */
  private updateWithdrawalLock(): void {
    const locks = this.channel ? lockManager() : undefined;
    const want =
      locks && !this.closed && !this.consentApplying.personalization && this.choices.personalization?.value === false
        ? `${withdrawalLockPrefix(this.opts.dbName ?? 'localrec')}${this.consentApplying.federated ? 1 : 0}:${this.choices.personalization.at}`
        : undefined;
    if (this.withdrawalLock?.name === want) return;
    const old = this.withdrawalLock;
    this.withdrawalLock = undefined;
    if (want && locks) {
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      // Shared: every tab that follows it holds it; nobody ever asks for it exclusively. (Asked
      // for before the one it replaces is let go: a starting tab finds one or the other.)
      locks.request(want, { mode: 'shared' }, () => held).catch(() => undefined);
      this.withdrawalLock = { name: want, release };
    }
    old?.release();
  }

  /**
   * Releases what a failed {@link create} opened: the tab channel, the scorer's tensors, a
   * neighbour fetch, the automatic sync's timer, and the store it opened (a store the caller gave
   * stays open: it is the caller's).
   */
  private abandon(): void {
    this.closing = true;
    this.closed = true;
    this.disarmAutoSync();
    this.neighborAbort?.abort();
    this.channel?.close();
    this.channel = undefined;
    this.updateWithdrawalLock();
    (this.scorer as Scorer | undefined)?.dispose();
    if (this.store !== this.opts.store) this.store.close();
  }

  private retention!: Retention;
  private dim!: number;

  /**
   * The shop's other tabs on this device run their own engines on the same database. They tell
   * each other what they changed (`localrec:<dbName>`): an erase, a consent change, new events,
   * new weights. Absent where BroadcastChannel is, with an injected store (tests), and where there
   * is no IndexedDB at all (Node without one): engines there share no database, each is a device
   * of its own, and one's consent change or erase must not reach another. Where IndexedDB exists
   * but refused to open (private mode: each tab on memory) the tabs are still one shopper's, and
   * follow each other's consent changes and erases (see {@link erasedElsewhere}).
   */
  private channel: BroadcastChannel | undefined;
  /** Messages from other tabs are handled one at a time, in order. */
  private inbox: Promise<void> = Promise.resolve();
  /** Another tab saved weights since this one loaded them: reload before using them. */
  private modelStale = false;

  /**
   * Opens the tab channel while {@link create} is still starting, keeping what arrives until the
   * engine takes it over ({@link openChannel}), and says hello: live tabs answer with the consent
   * they follow. Undefined where there is no channel (see {@link channel}).
   */
  private static listenToTabs(opts: EngineOptions): EarlyChannel | undefined {
    if (opts.store || typeof BroadcastChannel === 'undefined' || plainNode()) return undefined;
    const channel = new BroadcastChannel(`localrec:${opts.dbName ?? 'localrec'}`);
    // Node: a channel must not keep the process alive (browsers have no unref).
    (channel as { unref?: () => void }).unref?.();
    const held: TabMessage[] = [];
    channel.onmessage = (ev: MessageEvent) => void held.push(ev.data as TabMessage);
    const id = toHex(crypto.getRandomValues(new Uint8Array(8)));
    try {
      channel.postMessage({ type: 'hello', id } satisfies TabMessage);
    } catch {
      // Closed under us: nobody to ask.
    }
    return { channel, held, id, sentAt: performance.now() };
  }

  /** This engine's `hello` id: answers addressed to another starting tab are not for it. */
  private helloId: string | undefined;

  /** Takes over the channel {@link listenToTabs} opened: what it held first, in order, then each message as it comes. */
  private openChannel(early: EarlyChannel | undefined): void {
    if (!early) return;
    this.helloId = early.id;
    const handle = (m: TabMessage) => {
      this.inbox = this.inbox.then(() => this.fromOtherTab(m)).catch((e) => {
        this.lastError = e as Error;
      });
    };
    for (const m of early.held.splice(0)) handle(m);
    early.channel.onmessage = (ev: MessageEvent) => handle(ev.data as TabMessage);
    this.channel = early.channel;
  }

  private tell(message: TabMessage): void {
    try {
      this.channel?.postMessage(message);
    } catch {
      // A closed channel (this engine is closing): nobody to tell.
    }
  }

  private async fromOtherTab(m: TabMessage): Promise<void> {
    if (this.closed) return;
    switch (m?.type) {
      case 'events':
        this.dropEventCache();
        this.store.existsAgain?.();
        await this.rereadStoredDecision();
        return;
      case 'model':
        this.modelStale = true;
        this.store.existsAgain?.();
        return;
      case 'offers':
        // Another tab installed a newer catalog: read it at the next offers() or setOffers().
        this.dropOffers();
        this.store.existsAgain?.();
        return;
      case 'consent': {
        // An answer to another tab's hello is that tab's to weigh (a live tab applying it would
        // take back its own later decision whenever a tab starts).
        if (m.to !== undefined && m.to !== this.helloId) return;
        // Each choice is taken from the latest request that asked for it, on its own: a change of
        // federated learning asked for in a tab that had not yet heard of a withdrawal of
        // personalization does not bring personalization back. Not one asked for before this
        // tab's own last request, nor before its host's answer; of two asked for in the same
        // millisecond, the same one in every tab (laterChoice).
        const theirs = messageChoices(m);
        const won: Partial<Consent> = {};
        let at: number | undefined;
        if (theirs) {
          // (The tabs share the device's clock: a choice stamped more than a day ahead is not a
          // request, and would win over every later one.)
          const horizon = this.now() + DAY_MS;
          for (const k of CONSENT_KINDS) {
            const c = theirs[k];
            if (!c || c.at < this.hostAt || c.at > horizon || !laterChoice(c, this.choices[k])) continue;
            this.choices = { ...this.choices, [k]: c };
            this.decidedAt = Math.max(this.decidedAt, c.at);
            won[k] = c.value;
            // (A withdrawal of personalization: when it was asked for, which decides what it deletes.)
            if (k === 'personalization' || at === undefined) at = c.at;
          }
        } else {
          // (A message without a time, from a tab that does not say: applied as it comes.)
          won.personalization = m.personalization === true;
          won.federated = m.federated === true;
        }
        if (won.personalization !== undefined || won.federated !== undefined) {
          // Onto the consent in force when the change's turn comes, not now: this tab's own change
          // queued before it (a withdrawal of the other choice) stands. Nothing is applied (nor
          // recorded) when that already is the consent in force.
          await this.applyConsent((cur) => {
            const next = { personalization: won.personalization ?? cur.personalization, federated: won.federated ?? cur.federated };
            return next.personalization === cur.personalization && next.federated === cur.federated ? undefined : next;
          }, 'another-tab', at);
        }
        // (The same decision, asked for again: the lock names the latest time.)
        this.updateWithdrawalLock();
        return;
      }
      case 'erased':
        // Already handled: this tab found the database gone after that erase began (watchStore).
        if (typeof m.at === 'number' && m.at <= this.deletionHandledAt) return;
        await this.erasedElsewhere(typeof m.at === 'number' ? m.at : undefined);
        return;
      case 'hello':
        // A tab starting: the shopper's latest decision this one knows (its setConsent, or another
        // tab's), with its time, for that tab alone; it keeps the later of that and its host's
        // answer. A host's answer is not a decision to pass on ('required' starts with both off
        // until the shopper answers).
        if (typeof m.id === 'string' && Number.isFinite(this.decidedAt)) this.tell({ type: 'consent', ...this.consentApplying, at: this.decidedAt, to: m.id, choices: this.choices });
        return;
    }
  }

  /**
   * Another tab erased the database: everything this tab holds from it goes too (queued events,
   * the cached history, weights learned from it, a sync under way), so that nothing erased is
   * written back or sent. The database comes back, empty, only with this tab's next write.
   */
  private async erasedElsewhere(at?: number): Promise<void> {
    const run = this.dropErased(at);
    const settled = run.catch(() => undefined);
    this.erasing = settled;
    try {
      await run;
    } finally {
      if (this.erasing === settled) this.erasing = undefined;
    }
  }

  /** While {@link erasedElsewhere} runs: public calls made meanwhile wait for it ({@link afterDeletionHandled}). */
  private erasing: Promise<void> | undefined;

  private async dropErased(at?: number): Promise<void> {
    // The shopper erased their data in another tab: this tab syncs no more by itself this session.
    this.disarmAutoSync();
    this.autoSyncStopped = true;
    this.cancelAllSyncs(true);
    // A training run on the erased history stops at its next step, saving nothing.
    this.stopTrainingRun('training stopped: the shopper erased their data in another tab');
    await this.syncing?.catch(() => undefined);
    await this.training?.catch(() => undefined);
    this.dataEpoch++;
    this.unsavedEgress = [];
    this.stopNeighborFetch();
    // What the shopper did after the erase began (`at`: tracked in this tab just after the other
    // tab's erase() resolved, before its message came) is not part of what was erased: kept, and
    // written to the database anew. Told apart by when this engine took the event (its own clock,
    // not the event's `t`, which a page may set ahead); without a time, everything queued goes.
    this.queue = at === undefined ? [] : this.queue.filter((e) => (this.queuedAt.get(e) ?? -Infinity) > at);
    this.dropEventCache();
    // The offer catalog and the neighbour table stay in memory: the shop's public data, not the shopper's.
    // Of the consent records only the one in force is kept: the erased history is not written back.
    this.consentHistory = this.consentHistory.slice(-1);
    this.consentDirty = true;
    this.resetModel();
    // Each tab on memory (IndexedDB refused to open): this tab's own copy of the history goes too.
    if (this.store.kind === 'memory') await this.store.destroy();
    else {
      // This tab created the database anew after that erase began (it had no connection open to
      // hear of the deletion, and wrote before the message came): what it wrote may be what it
      // still held from before the erase, so it goes too, as for another tab's withdrawal (what
      // it wrote of this tab's own later events with it; those still queued are kept, above).
      // (A store that heard the deletion refused every write since: nothing to delete.)
      // (Nor a tab that started after it began: it holds nothing from before.)
      if (!this.store.isDeleted?.() && !(at !== undefined && this.startedAt > at) && this.store.createdAfterDeletion?.(at ?? -Infinity)) {
        const deletedAt = this.now();
        try {
          await this.store.destroy();
          // The other tabs connected to it since drop what they hold of it, as for an erase
          // (what they took after this deletion began is kept).
          this.tell({ type: 'erased', at: deletedAt });
        } catch (e) {
          this.lastError = e as Error;
        } finally {
          this.store.reopen?.();
        }
      }
      this.store.reopenLazily?.();
    }
    // What was kept is written anew (a flush called before the erase left it queued).
    if (!this.closed) this.scheduleFlush();
  }

  /**
   * The database was found deleted with no tab message about it (the browser cleared the site's
   * data, or the tab had no connection when another tab erased it): drop what this tab holds from
   * it, as for another tab's erase, in the same queue as the tab messages.
   */
  private watchStore(store: EventStore): void {
    // Over the storage quota, what the shop can send again goes before any of the shopper's events.
    if (store instanceof IdbEventStore) store.disposableOnQuota = [GLOBAL_KEY, NEIGHBORS_KEY];
    store.onVanished = () => {
      this.inbox = this.inbox
        .then(() => {
          // (Handled meanwhile, through another tab's message: nothing left to do.)
          if (this.closed || this.store !== store || store.isDeleted?.() === false) return;
          this.deletionHandledAt = this.now();
          return this.erasedElsewhere();
        })
        .catch((e) => {
          this.lastError = e as Error;
        });
    };
    store.onMalformed = (count, problem) => {
      // Once per session: every read finds them again.
      const key = 'events';
      if (this.notedDamage.has(key)) return;
      this.notedDamage.add(key);
      this.lastError = new StorageError(
        `${count} stored event record${count === 1 ? ' is' : 's are'} malformed (${problem}): left out of ranking, training and offers, listed in export().unreadableEvents; retention (when they carry a time) or erase() removes them`,
      );
    };
  }

  /** A store that fell back to memory because IndexedDB refused to open: the reason goes to stats().lastError. */
  private noteFallback(store: EventStore): void {
    if (store instanceof MemoryEventStore && store.fallbackReason) this.lastError = store.fallbackReason;
  }

  /** When this tab last handled a deletion it found itself (watchStore): older erase messages are about it. */
  private deletionHandledAt = -Infinity;

  /** Consent records not yet written: written with the next events (or the next consent change). */
  private consentDirty = false;
  private evictedByQuota = 0;
  private evictedByRetention = 0;

  /**
   * True from start-up until the stored consent history is read (or consent changes) when the host
   * gave no consent decision (`options.consent` absent; the page's `'granted'` passes none): the
   * device's own stored decision may then still apply (see {@link mergeConsentHistory}).
   */
  private consentByDefault = false;

  /**
   * Joins the stored consent history with this session's records. A session that merely starts
   * with the same consent as last time adds nothing, and nothing is written until there is
   * something else to store: opening the SDK alone leaves IndexedDB as it was.
   *
   * When the host gave no consent decision (only the default, both granted), the shopper's last
   * stored decision about federated learning holds: a withdrawal of it (which, unlike a withdrawal
   * of personalization, erases nothing and is stored) is applied again (a `stored` record when it differs from the latest one stored), rather
   * than forgotten at the next page load. Only records made while personalization was on count: one
   * with personalization off is a start before consent ('required' sets both off), which says
   * nothing about federated learning (a withdrawal of personalization erases the history), and
   * `default` records are no decision ({@link latestDecision}). A host that passes its own remembered answer (`consent: { … }`) decides instead; that answer is
   * recorded as `options` when it differs from the stored one.
   */
  private async mergeConsentHistory(): Promise<void> {
    const read = readConsentRecords(await this.store.getMeta(CONSENT_KEY));
    const stored = trimConsent(read.value, this.recordCutoff());
    if (read.damaged) this.noteDamaged(CONSENT_KEY, 'its well-formed records are kept, and without a host decision federated learning stays off (a withdrawal may be among what was lost)');
    if (this.consentByDefault) {
      this.consentByDefault = false;
      const decided = latestDecision(stored);
      const first = this.consentHistory[0];
      // A history that could not be read whole may have lost a withdrawal: off, as if it held one.
      const withdrawn = read.damaged || (decided !== undefined && !decided.federated);
      if (withdrawn && this.consent.federated && first?.source === 'default') {
        this.consent = { ...this.consent, federated: false };
        this.consentApplying = { ...this.consentApplying, federated: false };
        this.consentHistory[0] = { t: first.t, personalization: first.personalization, federated: false, source: 'stored' };
      }
    }
    const last = stored.at(-1);
    // This visit's records come after every stored one, whatever the clock says: records are kept
    // in time order and the last one is the decision in force, so a record stamped before a stored
    // one (the clock was set back since: a wrong time zone corrected) must not sort before it.
    // (Strictly after: two records of the same decision and time are merged as one.)
    let after = last?.t ?? -Infinity;
    const fresh = this.consentHistory
      .filter((r, i) => !(i === 0 && STARTUP_SOURCES.has(r.source) && last && last.personalization === r.personalization && last.federated === r.federated))
      .map((r) => {
        const t = Math.max(r.t, after + 1);
        after = t;
        return t === r.t ? r : { ...r, t };
      });
    this.consentHistory = trimConsent(stored.concat(fresh), this.recordCutoff());
    this.consentDirty = fresh.length > 0;
  }

  /**
   * Says in `stats().lastError` that the stored record `key` is malformed (hand-edited, or written
   * by another release) and what the engine does instead, once per record and session (a record
   * read at every `stats()` must not hide later errors). The record is not deleted; the next write
   * of it keeps its well-formed part.
   */
  private noteDamaged(key: string, instead: string): void {
    if (this.notedDamage.has(key)) return;
    this.notedDamage.add(key);
    this.lastError = new StorageError(`the stored record "${key}" is malformed: ${instead}; its next write keeps only its well-formed part, and erase() removes it`);
  }
  /** The records {@link noteDamaged} has reported this session (`events`: malformed event records). */
  private readonly notedDamage = new Set<string>();

  /** The oldest time an egress entry or consent record is kept (`retention.maxAgeDays`, on this engine's clock). */
  private recordCutoff(): number {
    return this.now() - this.retention.maxAgeDays * DAY_MS;
  }

  /**
   * Writes the consent history, merged with what is stored in one transaction: another tab of the
   * same shopper writes its own records (its `setConsent`, this tab's `another-tab` record of it),
   * and neither may overwrite the other's.
   */
  private async persistConsent(): Promise<void> {
    if (!this.consentDirty || !this.consent.personalization) return;
    const mine = this.consentHistory;
    const written = mine.length;
    // Records past retention.maxAgeDays go with the write (the latest is always kept).
    const cutoff = this.recordCutoff();
    const merged = await this.store.updateMeta<ConsentRecord[]>(CONSENT_KEY, (stored) => trimConsent(mergeConsentRecords(readConsentRecords(stored).value, mine.slice(0, written)), cutoff));
    // Replaced meanwhile (an erase, a withdrawal): that state rules. A change recorded meanwhile
    // stays unwritten, for the next write.
    if (this.consentHistory !== mine) return;
    this.consentDirty = mine.length > written;
    this.consentHistory = trimConsent(mergeConsentRecords(merged, mine), cutoff);
    this.followStoredDecision();
  }

  /**
   * A tab with no host answer and no decision made this session (its own or another tab's) follows
   * the shopper's stored decision about federated learning, as a page load would
   * ({@link mergeConsentHistory}). The stored history can gain a later decision while this tab runs:
   * another tab's host passed its banner's remembered answer, which is not told to the other tabs
   * (a host's `'required'` start is no decision to pass on). Followed, the last record is again the
   * decision in force here, as the next page load would read it.
   */
  private followStoredDecision(history: readonly ConsentRecord[] = this.consentHistory): void {
    if (!this.followsStoredDecision()) return;
    const decided = latestDecision(history);
    if (!decided || decided.federated === this.consentApplying.federated) return;
    const federated = decided.federated;
    // (Queued now, so that a call waiting for the consent chain, audit(), sees it applied.)
    void this.applyConsent((cur) => ({ ...cur, federated }), 'stored').catch((e) => (this.lastError = e as Error));
  }

  /** See {@link followStoredDecision}: no host answer, no decision this session, personalization on, not closing. */
  private followsStoredDecision(): boolean {
    return this.opts.consent === undefined && !Number.isFinite(this.decidedAt) && this.consentApplying.personalization && !this.closing && !this.closed;
  }

  /**
   * Another tab wrote: its host's answer may be among what it stored ({@link followStoredDecision}).
   * Read only by a tab that would follow it.
   */
  private async rereadStoredDecision(): Promise<void> {
    if (!this.followsStoredDecision() || this.store.kind !== 'indexeddb') return;
    const read = readConsentRecords(await this.store.getMeta(CONSENT_KEY).catch(() => undefined));
    this.followStoredDecision(mergeConsentRecords(read.value, this.consentHistory));
  }

  /**
   * Records the shopper's choice. Granting personalization opens IndexedDB and starts storing
   * events once it is open (until then `enqueue()` drops them, as before consent: the page holds
   * what is tracked meanwhile); withdrawing it erases everything stored and drops events again.
   * Withdrawing federated consent stops `sync()`.
   */
  async setConsent(c: { personalization?: boolean; federated?: boolean }): Promise<void> {
    this.assertOpen();
    if (this.closing) throw new ClosedError('the recommender is closing');
    if (typeof c !== 'object' || c === null) throw new ValidationError('consent', `must be an object like { personalization: true, federated: false }, got ${describeValue(c)}`);
    knownKeys(c, 'consent', OPTION_KEYS.consent);
    boolOption(c.personalization, 'consent.personalization');
    boolOption(c.federated, 'consent.federated');
    // When the shopper asked: later than the host's answer and than every decision this tab
    // follows (by a millisecond at least: a tie is for requests neither tab had heard of), so that
    // another tab's change asked for earlier does not undo this one.
    const followed = Math.max(this.choices.personalization?.at ?? -Infinity, this.choices.federated?.at ?? -Infinity);
    const at = Math.max(this.now(), this.hostAt, followed + 1);
    this.decidedAt = at;
    const from = this.helloId ?? '';
    // Only the choices asked for: another tab's later change of the other one still holds.
    for (const k of CONSENT_KINDS) {
      const value = c[k];
      if (value !== undefined) this.choices = { ...this.choices, [k]: { value, at, from } };
    }
    // As of this request (a later one, made before this one is told, is told with its own).
    const choices = this.choices;
    // What is left out stays as the change before this one (still under way, maybe) leaves it.
    let next: Consent;
    try {
      next = await this.applyConsent((cur) => ({ personalization: c.personalization ?? cur.personalization, federated: c.federated ?? cur.federated }), 'setConsent');
    } catch (e) {
      // Applied here even so (a step after the change failed): the other tabs follow what is in
      // force, or a withdrawal of federated learning would hold in this tab alone.
      this.tell({ type: 'consent', ...this.consentApplying, at, choices });
      throw e;
    }
    // The shop's other tabs on this device follow (their engines share this database).
    this.tell({ type: 'consent', ...next, at, choices });
  }

  /**
   * The time of a new consent record: now, or just after the latest record when the clock has gone
   * back since it was written (records are kept sorted by time, and the last is the decision in
   * force: a withdrawal stamped before the grant it withdraws would be read back as the older
   * decision; and two records of the same decision and time are merged as one).
   */
  private consentRecordTime(): number {
    return Math.max(this.now(), (this.consentHistory.at(-1)?.t ?? -Infinity) + 1);
  }

  /** The consent the latest change began to apply: {@link consent} but for a grant still opening its store. */
  private consentApplying!: Consent;

  /**
   * The shopper's latest decision of each kind this tab knows (its own setConsent's, or another
   * tab's), with when and where it was asked for: another tab's request changes a choice only when
   * asked for later ({@link laterChoice}).
   */
  private choices: ConsentChoices = {};
  /** When the host's answer (`options.consent`) was read (`consentAsOf`): another tab's choice asked for before it does not override it. */
  private hostAt = -Infinity;
  /** When the shopper's latest consent decision this tab knows was made (its setConsent's, or another tab's): what it tells a starting tab. */
  private decidedAt = -Infinity;

  /** Whether events are stored now, and how many consent changes have been applied (see `onConsent`). */
  consentState(): { personalization: boolean; version: number } {
    return { personalization: this.consent.personalization, version: this.consentVersion };
  }

  private consentVersion = 0;

  private consentApplied(): void {
    this.consentVersion++;
    try {
      this.opts.onConsent?.(this.consent.personalization, this.consentVersion);
    } catch {
      // A listener that throws changes nothing here.
    }
  }

  /**
   * Moves to `next` consent: from `setConsent`, or from another tab's (`another-tab`: that tab has
   * already erased or opened the database; this one only drops or opens its own handle and state).
   */
  private applyConsent(
    change: Consent | ((current: Consent) => Consent | undefined),
    source: ConsentRecord['source'],
    at?: number,
  ): Promise<Consent> {
    // One change at a time: a grant still opening the database when a withdrawal comes would
    // otherwise install the store the withdrawal has just deleted.
    const run = this.consentChain.then(async () => {
      const next = typeof change === 'function' ? change(this.consent) : change;
      // (undefined: the consent in force already is the one asked for.)
      if (next === undefined) return this.consent;
      try {
        await this.applyConsentSteps(next, source, at);
      } finally {
        // Whatever became of the steps, this.consent is `next` (a grant's once its store is in): say so.
        this.consentApplied();
        this.updateWithdrawalLock();
      }
      return next;
    });
    this.consentChain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** The consent change under way (and those queued behind it); settles, never rejects. */
  private consentChain: Promise<void> = Promise.resolve();

  /** `at`: when another tab asked for the change (its message's time), for `source` 'another-tab'. */
  private async applyConsentSteps(next: { personalization: boolean; federated: boolean }, source: ConsentRecord['source'], at?: number): Promise<void> {
    const was = this.consent.personalization;
    const granted = next.personalization && !was;
    // A decision now (this tab's or another's): a stored one read later does not override it.
    this.consentByDefault = false;
    if (next.personalization && next.federated && !(this.consent.personalization && this.consent.federated)) this.scheduleAutoSync(this.firstAutoSyncDelay());
    // A grant takes effect once its store is installed (below): events taken before then would be
    // written to the memory store it replaces, and lost with it. Until then enqueue() drops them,
    // as before consent (counted in stats().dropped). A flush must not wait for the grant instead:
    // a withdrawal queued behind it waits for training, which flushes.
    this.consent = granted ? { personalization: false, federated: next.federated } : next;
    this.consentApplying = next;
    // At once, before the deletion and what it waits for (a training step, a sync): a tab starting
    // meanwhile must find it, as its hello may go unanswered until then.
    this.updateWithdrawalLock();
    this.consentHistory.push({ t: this.consentRecordTime(), ...next, source });
    // Without personalization nothing writes (and so trims) it: a page toggling federated consent,
    // or other tabs' changes, must not grow it without bound meanwhile.
    if (this.consentHistory.length > 2 * CONSENT_MAX) this.consentHistory = trimConsent(this.consentHistory, this.recordCutoff());
    // Events taken for writing before a withdrawal are not written after it (flush checks this).
    if (!next.personalization && was) {
      this.dataEpoch++;
      this.unsavedEgress = [];
      // Nothing queued before it is written (the queue is emptied once training has stopped).
      if (this.flushTimer) clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
      this.stopNeighborFetch();
      // A training run stops at its next step, saving nothing (the withdrawal erases the weights).
      this.stopTrainingRun('training stopped by the withdrawal of consent to personalization');
    }
    this.dropEventCache();
    if (!next.personalization || !next.federated) {
      // A sync under way stops with the consent it needed: before its upload it sends nothing (an
      // upload already in flight is never cut, so its ε stays spent and recorded).
      this.cancelAllSyncs(true);
      await this.syncing?.catch(() => undefined);
    }
    if (granted) {
      // A store the caller gave, destroyed by an earlier withdrawal, is used again (empty).
      this.opts.store?.reopen?.();
      this.store = this.opts.store ?? (await openEventStore(this.opts.dbName ?? 'localrec', this.retention));
      // From here on events are taken, and written to this store.
      this.consent = next;
      this.noteFallback(this.store);
      this.watchStore(this.store);
      this.dropEventCache();
      await this.load(this.dim);
      await this.keepLegacySpend(this.store);
      await this.mergeConsentHistory();
      await this.persistConsent();
      if (this.neighbors) await this.saveNeighbors();
      else this.startNeighborFetch();
      // An offer catalog installed before consent was kept in memory only (setOffers): stored now,
      // unless the database holds a newer one (the device never goes back to an older catalog: a
      // higher version, or a later publication of the same one).
      const held = this.offerSigned;
      if (held) {
        // (Only a stored record that verifies counts: updateStoredOffers.)
        const kept = await this.updateStoredOffers((stored, cur) => (stored && newerCatalog(stored.catalog, held.catalog) ? cur! : held));
        // The stored one is newer: read (and checked) at the next offers().
        if (kept !== held) this.dropOffers();
      }
    } else if (!next.personalization && was) {
      await this.training?.catch(() => undefined);
      this.queue = [];
      // Nothing from before the withdrawal carries over, not even the model it last received (its
      // hash in If-None-Match would link the sessions before and after at the server), nor the
      // consent records before the withdrawal's own.
      this.heldGlobal = undefined;
      this.consentHistory = this.consentHistory.slice(-1);
      // Another tab's withdrawal deleted the database; if this tab created it anew since (it found
      // it gone before the message came), what it wrote goes too. (Were a third tab to grant
      // consent again and write in that short while, its events would go with it.)
      // The memory store first: a call reading meanwhile (a widget rendering as the banner's
      // "reject" lands) finds it empty, not a database being closed under it.
      const old = this.store;
      this.store = new MemoryEventStore(this.retention);
      this.dropEventCache();
      if (source === 'another-tab' && !(at !== undefined && old.createdAfterDeletion?.(at))) old.close();
      else {
        await old.destroy();
      }
      // This session ran on memory because IndexedDB refused to open (a transient error, a newer
      // schema): what an earlier session stored there is erased all the same.
      if (source !== 'another-tab' && old.kind === 'memory') await this.deleteStoredDatabase();
      // As erase(): its part of the shared privacy ledger goes with it.
      if (source !== 'another-tab') this.lastError = (await this.forgetLedgerPart()) ?? this.lastError;
      await this.load(this.dim);
      // The withdrawal itself is remembered only in memory: nothing may be stored now.
    } else if (!next.personalization) {
      // Withdrawn while this session never opened the database (it started without consent): what
      // an earlier session stored under the same name is erased all the same, its part of the
      // shared privacy ledger included.
      if (source !== 'another-tab') {
        await this.deleteStoredDatabase();
        this.lastError = (await this.forgetLedgerPart()) ?? this.lastError;
      }
    } else if (next.personalization) {
      this.consentDirty = true;
      // The change is in force once applied: a record that cannot be written now (another tab's
      // withdrawal deleting the database meanwhile, a full quota) is written with the next write,
      // and the change is still told to the other tabs (setConsent), not refused after the fact.
      await this.persistConsent().catch((e) => (this.lastError = e as Error));
    }
  }

  /** Loads persisted weights, mapping rows by item id so a changed catalog keeps what it can. */
  private async load(dim: number): Promise<void> {
    const ids = this.catalog.items.map((i) => i.id);
    const fresh = this.freshTable(dim);
    const saved = await this.store.getMeta<SavedModel>(MODEL_KEY);
    let kept: Engine['saved'] = { trainSteps: 0, trainedThroughId: 0 };
    if (saved && saved.dim === dim) {
      try {
        if (!Array.isArray(saved.itemIds) || !saved.itemIds.every((id) => typeof id === 'string')) throw new ModelError('item table: itemIds is not a list of item ids');
        if (!(saved.factors instanceof Float32Array) || !(saved.bias instanceof Float32Array)) throw new ModelError('item table: factors and bias must be Float32Arrays');
        const old = indexItems(saved.itemIds);
        checkItemTable({ version: saved.version, itemIds: saved.itemIds, dim: saved.dim, factors: saved.factors, bias: saved.bias });
        const missing: number[] = [];
        ids.forEach((id, r) => {
          const o = old.get(id);
          if (o === undefined) return void missing.push(r);
          fresh.factors.set(saved.factors.subarray(o * dim, o * dim + dim), r * dim);
          fresh.bias[r] = saved.bias[o]!;
        });
        fresh.version = saved.version;
        kept = {
          trainedAt: saved.trainedAt,
          trainSteps: saved.trainSteps,
          trainedThroughId: saved.trainedThroughId,
          ...(typeof saved.globalHash === 'string' ? { globalHash: saved.globalHash } : {}),
          ...(typeof saved.globalServer === 'string' ? { globalServer: saved.globalServer } : {}),
        };
        // Trained on another catalog (another shop, country or environment on the same dbName):
        // the rows it learned are not this catalog's, so its training counters must not say this
        // catalog's events were learned. They train again (the rows that match are kept).
        const matched = ids.length - missing.length;
        if (saved.itemIds.length > 0 && ids.length > 0 && matched < Math.min(saved.itemIds.length, ids.length) * MIN_CATALOG_MATCH) {
          kept = { trainSteps: 0, trainedThroughId: 0, ...(kept.globalHash !== undefined ? { globalHash: kept.globalHash } : {}), ...(kept.globalServer !== undefined ? { globalServer: kept.globalServer } : {}) };
          this.lastError = new ModelError(
            `the stored model was trained on a catalog that shares few items with this page's (${matched} of its ${saved.itemIds.length} item ids are in this catalog of ${ids.length}): the rows it shares are kept, and the events are trained again; if this database is another shop's, country's or environment's, give each its own options.dbName`,
          );
        }
        // Items the page's catalog holds again (back in stock) or newly, that the global model the
        // weights build on has: its rows, not fresh random ones. A receiving sync would not bring
        // them (the server answers 304 while its model is the one held).
        if (missing.length && kept.globalHash !== undefined) {
          const held = await this.storedGlobal();
          if (held?.hash === kept.globalHash && held.table.dim === dim) {
            const rows = indexItems(held.table.itemIds);
            for (const r of missing) {
              const g = rows.get(ids[r]!);
              if (g === undefined) continue;
              fresh.factors.set(held.table.factors.subarray(g * dim, g * dim + dim), r * dim);
              fresh.bias[r] = held.table.bias[g]!;
            }
          }
        }
      } catch (e) {
        // Corrupt weights are not worth failing the shop's page for: start fresh, say why in stats.
        this.lastError = e as Error;
      }
    } else if (saved) {
      // Weights of another size cannot be mapped onto this model: it starts afresh (and replaces
      // them at its first save). Said in stats(), so a changed `model.dim` is not a silent reset.
      this.lastError = new ModelError(
        `the stored model has dim ${saved.dim} but options.model.dim is ${dim}: starting from fresh weights (the stored ones are replaced at the next training or sync)`,
      );
    }
    // The new scorer is built before anything is replaced, then swapped in with the table and its
    // counters, and only then does the old one go: a call scoring meanwhile never meets a disposed
    // one. (On a lost WebGL context nothing throws here: uploads succeed and reads give zeros. The
    // loss is caught by the context-lost listener and the checks of {@link scoring}, which rebuild
    // the scorer on another backend.)
    const scorer = this.scorerOf(fresh);
    const old = this.scorer as Scorer | undefined;
    this.table = fresh;
    this.scorer = scorer;
    this.saved = kept;
    this.storedWeights = { table: fresh, saved: kept };
    this.modelRev = saved?.rev ?? 0;
    this.modelStale = false;
    old?.dispose();
    // A close() or erase() that disposed the scorers while this reload read the store: this one goes too.
    if (this.closed) scorer.dispose();
  }

  /** A scorer of `table`, at the temperature the table is trained with (as `localrec eval` scores it). */
  private scorerOf(table: ItemTable): Scorer {
    return new Scorer(table, this.opts.training?.temperature ?? DEFAULT_TRAIN_CONFIG.temperature);
  }

  /** A scorer of the current table, at the temperature the table is trained with (as `localrec eval` scores it). */
  private newScorer(): Scorer {
    return this.scorerOf(this.table);
  }

  /** Backends that failed at run time in this session: never picked again. */
  private readonly failedBackends = new Set<BackendName>();
  /** Why the backend in use failed (set by its loss listener or a failed op); undefined while it works. */
  private backendLost: string | undefined;
  /** Counts backend changes: a failure seen on a backend already replaced does not fail its successor. */
  private backendGen = 0;
  /** Resolves when the backend in use is found lost (a scoring read that never settles stops waiting). */
  private lostNotice: Promise<void> = new Promise(() => undefined);
  private tellLost: () => void = () => undefined;
  /** The WebGL context of the backend in use, when it is webgl (its isContextLost() is checked before answering). */
  private watchedGl: { isContextLost?: () => boolean } | undefined;
  private unwatchBackend: (() => void) | undefined;
  /** The backend change under way, shared by the calls that found the backend failed. */
  private recovering: Promise<void> | undefined;
  /** Stops the training run under way when the backend is found lost (its GPU reads would never settle). */
  private stopTrainingOnLoss: (() => void) | undefined;

  /**
   * Listens for the loss of the backend in use: a WebGL context lost (`webglcontextlost` on its
   * canvas, an OffscreenCanvas in the worker), a WebGPU device lost (`device.lost`). Either marks
   * it failed ({@link markBackendLost}); the next scoring call, or the one waiting, moves to another.
   */
  private watchBackend(): void {
    this.unwatchBackend?.();
    this.unwatchBackend = undefined;
    this.watchedGl = undefined;
    this.lostNotice = new Promise<void>((resolve) => (this.tellLost = resolve));
    const gen = this.backendGen;
    const name = this.backend.backend;
    // tfjs internals, not typed: read defensively (another build may lack them).
    type Internals = { gpgpu?: { gl?: { isContextLost?: () => boolean; canvas?: EventTarget } }; device?: { lost?: Promise<{ message?: string } | undefined> } };
    let b: Internals | undefined;
    try {
      b = tf.backend() as unknown as Internals;
    } catch {
      return;
    }
    if (name === 'webgl') {
      const gl = b?.gpgpu?.gl;
      this.watchedGl = gl;
      const canvas = gl?.canvas;
      if (canvas && typeof canvas.addEventListener === 'function') {
        const onLost = () => this.markBackendLost(gen, 'its context was lost');
        canvas.addEventListener('webglcontextlost', onLost);
        this.unwatchBackend = () => canvas.removeEventListener('webglcontextlost', onLost);
      }
      if (gl?.isContextLost?.()) this.markBackendLost(gen, 'its context was lost');
    } else if (name === 'webgpu') {
      void b?.device?.lost?.then(
        (info) => this.markBackendLost(gen, `its device was lost${info?.message ? ` (${info.message})` : ''}`),
        () => undefined,
      );
    }
  }

  /** Stores a probe's choice for the next page loads ({@link BACKEND_KEY}); a failed write costs only the next probe. */
  private async rememberBackend(memo: BackendMemo): Promise<void> {
    try {
      await this.store.setMeta(BACKEND_KEY, memo);
    } catch {
      // Nothing lost: the next page load probes again.
    }
  }

  /** The backend in use failed: the next page load probes again instead of starting it first. */
  private async forgetBackend(): Promise<void> {
    if (!this.consent.personalization || this.closed) return;
    try {
      await this.store.setMeta(BACKEND_KEY, null);
    } catch {
      // The memo names a backend that may start and fail again: it is replaced at the next probe.
    }
  }

  /**
   * Marks the backend of generation `gen` failed, for `why` (no-op when it was already replaced):
   * the next scoring call moves to another backend, a call waiting on its reads stops waiting, and a
   * training run on it stops. Also the hook a test uses to simulate a loss.
   */
  private markBackendLost(gen: number, why: string): void {
    if (gen !== this.backendGen || this.backendLost !== undefined) return;
    this.backendLost = why;
    this.tellLost();
    this.stopTrainingOnLoss?.();
  }

  /** Why the backend in use is failed, or undefined while it works (a WebGL context is asked too: its event comes later). */
  private backendFailure(): string | undefined {
    if (this.backendLost === undefined && this.watchedGl?.isContextLost?.()) this.markBackendLost(this.backendGen, 'its context was lost');
    return this.backendLost;
  }

  /**
   * Moves off a failed backend: marks it failed for the session, picks the next with the probe
   * among the candidates left (cpu last, always), rebuilds the scorer there from the table (plain
   * arrays: nothing to reload) and says why in stats() (`backend`, `backendReason`, `lastError`).
   * Rejects with a ModelError when no backend is left or none starts.
   */
  private recoverBackend(): Promise<void> {
    this.recovering ??= (async () => {
      const from = this.backend.backend;
      const why = this.backendLost ?? 'it failed';
      this.failedBackends.add(from);
      await this.forgetBackend();
      this.unwatchBackend?.();
      this.unwatchBackend = undefined;
      this.watchedGl = undefined;
      const candidates = (this.opts.backend !== undefined ? BACKEND_ORDER : (this.opts.backendCandidates ?? BACKEND_ORDER)).filter((b) => !this.failedBackends.has(b));
      if (!candidates.includes('cpu') && !this.failedBackends.has('cpu')) candidates.push('cpu');
      if (candidates.length === 0) {
        // Nothing to move to: the call fails as a ModelError; the next one tries this backend again.
        this.backendLost = undefined;
        this.failedBackends.delete(from);
        this.watchBackend();
        throw (this.lastError = new ModelError(`the ${from} backend failed (${why}) and no other backend is left to fall back to`));
      }
      let choice: BackendChoice;
      try {
        choice = await selectBackend({ candidates, probeRows: this.table.itemIds.length, probeDim: this.table.dim + 1 });
      } catch (e) {
        throw (this.lastError = new ModelError(`the ${from} backend failed (${why}) and no other backend could start: ${(e as Error).message}`, { cause: e }));
      }
      const old = this.scorer;
      this.backendGen++;
      this.backend = { ...choice, reason: `fell back from ${from}: ${why} (${choice.reason})` };
      this.backendLost = undefined;
      this.scorer = this.newScorer();
      // Its tensors live on the failed backend: released if it still can, else left to it.
      try {
        old.dispose();
      } catch {
        // a lost context may refuse
      }
      this.watchBackend();
      this.lastError = new ModelError(`the ${from} backend failed (${why}); the recommender now runs on ${choice.backend}`);
      // close() or erase() disposed the scorers meanwhile: this one goes too.
      if (this.closed) this.scorer.dispose();
    })().finally(() => (this.recovering = undefined));
    return this.recovering;
  }

  /** Moves off the backend in use first when it is known to have failed. */
  private async usableBackend(): Promise<void> {
    await this.recovering?.catch(() => undefined);
    if (this.backendFailure() !== undefined) await this.recoverBackend();
  }

  /**
   * Every scoring pass goes through here, so that a failed backend never gives an answer: `f` runs
   * on the current scorer on a working backend; when the backend fails during it (an op throws
   * something that is not localrec's own, such as a `WebAssembly.RuntimeError`, a GPU's
   * DOMException or a shader that fails to link; or the context/device is lost before its reads
   * come back, which would give zeros or never settle), the engine moves to another backend and
   * `f` runs once more there. A failure it cannot recover from rejects with a ModelError.
   */
  private async scoring<T>(f: (scorer: Scorer) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      await this.usableBackend();
      const gen = this.backendGen;
      const from = this.backend.backend;
      let failure: unknown;
      try {
        const run = f(this.scorer);
        // A read on a lost GPU context may never settle: it is not waited for once the loss is known.
        run.catch(() => undefined);
        const out = await Promise.race([run, this.lostNotice.then(() => LOST)]);
        // Checked before answering: a WebGL context lost meanwhile reads back zeros, not an error.
        if (out !== LOST && !(gen === this.backendGen && this.backendFailure() !== undefined)) return out as T;
      } catch (e) {
        if (!isBackendFailure(e)) throw e;
        failure = e;
        this.markBackendLost(gen, `an operation failed (${describeError(e)})`);
      }
      if (attempt === 2) {
        const why = failure !== undefined ? describeError(failure) : (this.backendLost ?? 'it was lost');
        throw (this.lastError = new ModelError(`the ${from} backend failed as well (${why}); the next call moves to another`, { cause: failure }));
      }
    }
  }

  /** The initial weights: popularity biases, seeded random factors. */
  private freshTable(dim: number): ItemTable {
    return createItemTable(
      this.catalog.items.map((i) => i.id),
      dim,
      { seed: this.opts.model?.seed ?? 1, popularity: this.catalog.items.map((i) => i.popularity ?? 0) },
    );
  }

  /** Back to the initial weights without reading the store (after another tab erased it). */
  private resetModel(): void {
    this.heldGlobal = undefined;
    this.useWeights(this.freshTable(this.dim), { trainSteps: 0, trainedThroughId: 0 });
    this.storedWeights = { table: this.table, saved: this.saved };
    this.modelRev = 0;
    this.modelStale = false;
  }

  /** Puts `table` in use with its counters, scored by a new scorer (the old one released). */
  private useWeights(table: ItemTable, saved: Engine['saved']): void {
    this.table = table;
    this.saved = saved;
    const old = this.scorer;
    this.scorer = this.newScorer();
    old.dispose();
  }

  /**
   * The weights a reload would find, and their counters: as last loaded, reset or saved by this
   * engine ({@link load}, {@link resetModel}, {@link persist}).
   */
  private storedWeights!: { table: ItemTable; saved: Engine['saved'] };

  /**
   * Puts `table` in use with `saved` (before {@link persist}). The function returned puts back the
   * weights stored, when these could not be saved (storage full) and nothing replaced them since,
   * so that what recommend() ranks by and stats() counts is what is stored (the events stay
   * pending for the next run); it says whether it did. (The stored ones, not those in use before:
   * a train() and a sync whose saves both fail would otherwise leave the first one's in use.)
   */
  private swapWeights(table: ItemTable, saved: Engine['saved']): () => boolean {
    this.useWeights(table, saved);
    return () => {
      if (this.table !== table) return false;
      this.useWeights(this.storedWeights.table, this.storedWeights.saved);
      return true;
    };
  }

  /** Revision of the stored weights this engine's table builds on ({@link persist}). */
  private modelRev = 0;

  /**
   * Saves the weights, unless another tab saved newer ones since this engine loaded its own (the
   * stored revision moved on): then this tab's last training or sync is dropped and it reloads
   * what is stored, rather than writing back an older table over the other tab's work.
   */
  private async persist(): Promise<void> {
    const t = this.table;
    const saved = this.saved;
    const rec: SavedModel = { version: t.version, itemIds: t.itemIds, dim: t.dim, factors: t.factors, bias: t.bias, ...saved, rev: this.modelRev + 1 };
    const conflict = new Error('the stored weights moved on');
    try {
      await this.store.updateMeta<SavedModel>(MODEL_KEY, (stored) => {
        // Thrown inside the transaction: nothing is written.
        if (stored !== undefined && (stored.rev ?? 0) !== this.modelRev) throw conflict;
        return rec;
      });
    } catch (e) {
      if (e !== conflict) throw e;
      await this.load(this.dim);
      return;
    }
    this.modelRev = rec.rev!;
    this.storedWeights = { table: t, saved };
    this.tell({ type: 'model' });
  }

  /** Reloads the weights when another tab saved newer ones (see {@link persist}). */
  private async freshModel(): Promise<void> {
    if (!this.modelStale || !this.consent.personalization) return;
    // One reload for every caller at once (several widgets rendering after another tab trained).
    this.reloading ??= this.load(this.dim).finally(() => {
      this.reloading = undefined;
    });
    await this.reloading;
  }
  private reloading: Promise<void> | undefined;

  private neighbors: ActiveNeighbors | undefined;
  private neighborBytes: Uint8Array | undefined;
  /** The fetch of `options.neighbors.url` while it runs; recommend() and similar() wait for it. */
  private neighborsLoading: Promise<void> | undefined;
  private neighborAbort: AbortController | undefined;

  /**
   * Installs a neighbour table file (`localrec neighbors` output). A file that does not decode is
   * refused with a ValidationError and the table in use is kept. Stored when storing is allowed.
   */
  setNeighbors(data: ArrayBuffer | ArrayBufferView): Promise<{ items: number; matched: number; width: number; hash: string }> {
    return this.unlessClosing(() => this.setNeighborsOpen(data));
  }

  private async setNeighborsOpen(data: ArrayBuffer | ArrayBufferView): Promise<{ items: number; matched: number; width: number; hash: string }> {
    this.assertOpen();
    if (!(data instanceof ArrayBuffer) && !ArrayBuffer.isView(data)) {
      throw new ValidationError('neighbors', `must be an ArrayBuffer or a typed array holding a neighbour file, got ${data === null ? 'null' : typeof data}`);
    }
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data.slice(0)) : new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
    const n = await this.installNeighbors(bytes, 'setNeighbors');
    // (Only once it installed: a refused file leaves the URL's table in use, and its check time.)
    this.neighborsCheckedAt = undefined;
    return { items: n.items, matched: n.matched, width: n.width, hash: n.hash };
  }

  /** `epoch`: the data epoch the file was asked for in; it is stored only if that has not ended. */
  private async installNeighbors(bytes: Uint8Array, source: string, hash?: string, epoch = this.dataEpoch): Promise<ActiveNeighbors> {
    const table = decodeNeighborTable(bytes);
    const matched = table.itemIds.reduce((n, id) => n + (this.rows.has(id) ? 1 : 0), 0);
    // Built for another catalog (ids renamed, another shop's file): it would rank nothing, and
    // look installed in stats() all the same.
    if (matched === 0 && table.itemIds.length > 0) {
      throw new ModelError(
        `the neighbour table (${source}) holds ${table.itemIds.length} items, none of them in this page's catalog (file: ${JSON.stringify(table.itemIds[0])}…, catalog: ${JSON.stringify(this.table.itemIds[0] ?? '')}…): it was built for another catalog, and is not used`,
      );
    }
    const active: ActiveNeighbors = {
      model: alignNeighbors(table, this.rows, this.catalog.items.length),
      hash: hash ?? (await neighborTableHash(bytes)),
      items: table.itemIds.length,
      matched,
      width: table.width,
      bytes: bytes.length,
      source,
    };
    this.neighbors = active;
    this.neighborBytes = bytes;
    await this.saveNeighbors(epoch);
    return active;
  }

  private async saveNeighbors(epoch = this.dataEpoch): Promise<void> {
    const n = this.neighbors;
    // After erase() or close() nothing may be written (a fetch may finish late); nor, from a fetch
    // begun before a withdrawal or another tab's erase, into the database that follows it.
    if (!n || !this.neighborBytes || !this.consent.personalization || this.closed || epoch !== this.dataEpoch) return;
    const stored = await this.store.getMeta(NEIGHBORS_KEY);
    // The same bytes from another URL (the shop moved the file) are stored with it: the next page
    // load asks whether the table came from the URL it is given.
    if ((isStoredBytes(stored) && stored.hash === n.hash && (stored as Partial<SavedNeighbors>).source === n.source) || epoch !== this.dataEpoch) return;
    const t = this.now();
    await this.store.setMeta(NEIGHBORS_KEY, {
      hash: n.hash,
      bytes: this.neighborBytes,
      source: n.source,
      savedAt: t,
      ...(this.neighborsCheckedAt !== undefined ? { checkedAt: this.neighborsCheckedAt } : {}),
    } satisfies SavedNeighbors);
  }

  /**
   * A fetch found the file in use unchanged: its stored record says so (`checkedAt`), so that the
   * next page loads within `refreshHours` make no request. Written only when storing is allowed.
   */
  private async touchNeighbors(hash: string, epoch: number): Promise<void> {
    if (!this.consent.personalization || this.closed || epoch !== this.dataEpoch) return;
    const t = this.neighborsCheckedAt;
    const n = this.neighbors;
    const bytes = this.neighborBytes;
    if (t === undefined || !n || !bytes || n.hash !== hash) return;
    try {
      // Another tab's newer table stays; a record gone (evicted on a full disk) is written again.
      await this.store.updateMeta<SavedNeighbors>(NEIGHBORS_KEY, (r) =>
        r === undefined ? { hash, bytes, source: n.source, savedAt: t, checkedAt: t } : isStoredBytes(r) && r.hash === hash ? { ...r, checkedAt: t } : r,
      );
    } catch (e) {
      // The table is in use all the same; the next page load fetches it again.
      this.lastError = e instanceof StorageError ? e : new StorageError(`the neighbour table's check time could not be stored (${(e as Error).message})`, { cause: e });
    }
  }

  /**
   * Whether the table in use came from `options.neighbors.url` less than `refreshHours` ago (by this
   * device's clock; a time ahead of it, the clock having gone back, is not fresh).
   */
  private neighborsFresh(): boolean {
    const url = this.opts.neighbors?.url;
    const at = this.neighborsCheckedAt;
    if (!this.neighbors || url === undefined || this.neighbors.source !== url || at === undefined) return false;
    // Save-Data: the table kept from that URL serves whatever its age; only a device without one fetches.
    if (saveDataOn()) return true;
    const age = this.now() - at;
    return age >= 0 && age < (this.opts.neighbors?.refreshHours ?? NEIGHBOR_REFRESH_HOURS) * 3_600_000;
  }

  private async loadStoredNeighbors(): Promise<void> {
    const saved = await this.store.getMeta<SavedNeighbors>(NEIGHBORS_KEY);
    if (saved === undefined) return;
    if (!isStoredBytes(saved)) return this.noteDamaged(NEIGHBORS_KEY, 'ranking goes without it until the neighbour file is fetched again');
    try {
      await this.installNeighbors(saved.bytes, saved.source, saved.hash);
      const at = saved.checkedAt ?? saved.savedAt;
      this.neighborsCheckedAt = typeof at === 'number' && Number.isFinite(at) ? at : undefined;
    } catch (e) {
      // A damaged stored table is not worth failing the page for: rank without it, say why in stats.
      this.lastError = e as Error;
    }
  }

  /** Fetches `options.neighbors.url` in the background (logged in the egress log like every request). */
  private startNeighborFetch(): void {
    const url = this.opts.neighbors?.url;
    // (Not once close() has begun: a consent grant finishing while it waits would start a fetch it
    // then waits out.)
    if (url === undefined || this.closing || !this.consent.personalization || this.neighborsLoading || this.neighborsFresh()) return;
    this.neighborsLoading = this.fetchNeighbors(url);
  }

  /**
   * After a fetch of the neighbour file failed (offline, the shop's server down, a bad file): tries
   * again once `neighborRetry` is due, in the background (no call waits for a retry).
   */
  private retryNeighborFetchIfDue(): void {
    const url = this.opts.neighbors?.url;
    const retry = this.neighborRetry;
    if (url === undefined || !retry || this.neighborFetching || this.closing || !this.consent.personalization || this.now() < retry.at) return;
    this.neighborsLoading = this.fetchNeighbors(url);
  }

  /**
   * Ends a neighbour fetch in flight when the era it was asked in ends (a withdrawal, another tab's
   * erase; dataEpoch has moved on): it writes nothing, and the next fetch (the next grant of
   * consent, or at once when consent stays) starts afresh instead of waiting for a retry.
   */
  private stopNeighborFetch(): void {
    this.neighborAbort?.abort();
    this.neighborsLoading = undefined;
  }

  /** After a failed fetch of the neighbour file: when to try again (the wait doubles, 1 minute to 1 hour). */
  private neighborRetry: { at: number; delayMs: number } | undefined;
  private neighborFetching = false;
  /** When a fetch last brought the table in use or found it unchanged (this device's clock). */
  private neighborsCheckedAt: number | undefined;
  /** Until when (performance.now()) a call without a table waits for the fetch in flight. */
  private neighborWaitUntil = 0;

  /** The fetch as `neighborsLoading` until it settles (a fetch stopped by a withdrawal was replaced already: stopNeighborFetch). */
  private fetchNeighbors(url: string): Promise<void> {
    this.neighborFetching = true;
    const p = this.fetchNeighborsOnce(url);
    const settled = () => {
      if (this.neighborsLoading === p) this.neighborsLoading = undefined;
    };
    void p.then(settled, settled);
    return p;
  }

  private fetchNeighborsOnce(url: string): Promise<void> {
    return (async () => {
      // Logged as requested, host and query string included, as the browser's network panel shows
      // it: the file may be on another host (a CDN) than the federated server.
      const entry: EgressEntry = { t: this.now(), method: 'GET', endpoint: url, kind: 'neighbors', bytes: 0, status: 0 };
      // A withdrawal or another tab's erase while this runs ends the era it belongs to: its log
      // entry and the file are not written into the database that follows.
      const epoch = this.dataEpoch;
      // recommend() waits for this fetch only until neighborWaitUntil; the download itself has a
      // longer limit (a slow link must finish it once); close() and erase() end it.
      const abort = new AbortController();
      this.neighborAbort = abort;
      this.neighborWaitUntil = performance.now() + (this.opts.neighbors?.timeoutMs ?? NEIGHBOR_FETCH_TIMEOUT_MS);
      const timeoutMs = this.opts.neighbors?.downloadTimeoutMs ?? Math.max(this.opts.neighbors?.timeoutMs ?? 0, NEIGHBOR_DOWNLOAD_TIMEOUT_MS);
      const timer = setTimeout(() => abort.abort(), timeoutMs);
      try {
        const res = await (this.opts.fetch ?? fetch)(url, { method: 'GET', signal: abort.signal, ...PRIVATE_FETCH });
        entry.status = res.status;
        if (!res.ok) throw new NetworkError(`GET ${url}: HTTP ${res.status}`, res.status);
        const bytes = new Uint8Array(await res.arrayBuffer());
        const hash = await neighborTableHash(bytes);
        if (epoch !== this.dataEpoch) return;
        if (this.neighbors?.hash === hash && this.neighbors.source === url) {
          // The file in use, unchanged: nothing to decode or store again but the time it was seen.
          this.neighborsCheckedAt = this.now();
          await this.touchNeighbors(hash, epoch);
        } else {
          // Stored with the time it was fetched (saveNeighbors); a file that does not install
          // leaves the table in use, and its time, as they were.
          const held = this.neighborsCheckedAt;
          this.neighborsCheckedAt = this.now();
          try {
            await this.installNeighbors(bytes, url, hash, epoch);
          } catch (e) {
            this.neighborsCheckedAt = held;
            throw e;
          }
        }
        this.neighborRetry = undefined;
      } catch (e) {
        // Stopped by a consent withdrawal or an erase, not failed: nothing to retry later (the next
        // grant of consent fetches afresh: stopNeighborFetch).
        if (epoch !== this.dataEpoch) return;
        const delayMs = this.neighborRetry ? Math.min(2 * this.neighborRetry.delayMs, NEIGHBOR_RETRY_MAX_MS) : NEIGHBOR_RETRY_MIN_MS;
        this.neighborRetry = { at: this.now() + delayMs, delayMs };
        this.lastError = abort.signal.aborted
          ? new NetworkError(this.closing ? `GET ${url}: stopped by close()` : `GET ${url}: no answer within ${timeoutMs} ms`, 0)
          : e instanceof TypeError
            ? new NetworkError(`GET ${url}: ${e.message}`, 0)
            : (e as Error);
      } finally {
        clearTimeout(timer);
        this.neighborFetching = false;
        // Logged after it was made (no answer of a CDN depends on it, unlike a sync's requests,
        // which are logged before they go): an entry that cannot be stored is said in stats().
        if (epoch === this.dataEpoch) {
          await this.appendEgress([entry]).catch((e: unknown) => {
            if (epoch === this.dataEpoch) this.unsavedEgress.push(entry);
            this.lastError = new StorageError(`GET ${url} was made, but its egress log entry could not be stored (${(e as Error).message}); it is kept in memory (audit() lists it) and stored with the next events or request written`, { cause: e });
          });
        }
      }
    })();
  }

  private async appendEgress(entries: EgressEntry[]): Promise<void> {
    if ((entries.length === 0 && this.unsavedEgress.length === 0) || !this.consent.personalization || this.closed) return;
    // One transaction: another tab appending at the same time must not lose its entries, nor ours.
    const cutoff = this.recordCutoff();
    const epoch = this.dataEpoch;
    const held = this.unsavedEgress.splice(0);
    try {
      await this.store.updateMeta<EgressEntry[]>(EGRESS_KEY, (log) => egressWith(log, held.concat(entries), cutoff));
    } catch (e) {
      // (Not into the next data epoch: a withdrawal or an erase meanwhile took them with the rest.)
      if (epoch === this.dataEpoch) this.unsavedEgress.unshift(...held);
      throw e;
    }
  }

  private async neighborReady(): Promise<ActiveNeighbors | undefined> {
    // A table already in use (kept from an earlier session) ranks at once; only a device without one
    // waits for the fetch (which replaces it when it brings a newer one).
    // After a failed fetch only the retry (when due) runs, in the background, whether or not a
    // table kept from an earlier session ranks meanwhile.
    // A device without one waits for the fetch in flight until neighborWaitUntil (the fetch's start
    // + timeoutMs), not longer: the download may go on past it on a slow link. A page open for
    // longer than refreshHours fetches the file again, in the background.
    if (this.neighborRetry) this.retryNeighborFetchIfDue();
    else if (!this.neighbors && this.neighborsLoading) await this.untilNeighborWaitEnds(this.neighborsLoading);
    else if (this.neighbors && !this.neighborFetching && !this.closing && (this.opts.neighbors?.refreshHours ?? NEIGHBOR_REFRESH_HOURS) > 0) await this.refreshNeighborsIfStale();
    return this.neighbors;
  }

  /**
   * On a page open longer than `refreshHours`: fetches the file again in the background, unless
   * another tab checked it meanwhile (its `checkedAt` in the stored record), so that several open
   * tabs make one request, not one each.
   */
  private async refreshNeighborsIfStale(): Promise<void> {
    if (this.neighborsFresh()) return;
    const stored = await this.store.getMeta<SavedNeighbors>(NEIGHBORS_KEY).catch(() => undefined);
    const at = stored?.checkedAt;
    if (isStoredBytes(stored) && stored.hash === this.neighbors?.hash && stored.source === this.neighbors.source && typeof at === 'number' && at > (this.neighborsCheckedAt ?? -Infinity)) {
      this.neighborsCheckedAt = at;
      if (this.neighborsFresh()) return;
    }
    this.startNeighborFetch();
  }

  /** `loading`, or the end of the wait for it (neighborWaitUntil), whichever comes first. */
  private async untilNeighborWaitEnds(loading: Promise<void>): Promise<void> {
    const left = this.neighborWaitUntil - performance.now();
    if (left <= 0) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([loading, new Promise<void>((resolve) => (timer = setTimeout(resolve, left)))]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Runs a public call. One that fails because `close()` or `erase()` began while it ran (the store
   * closed or deleted under it: IndexedDB's InvalidStateError, "database is closed") rejects with a
   * ClosedError, as a call made after them does, not with a storage error the caller would take
   * for the device's storage failing.
   */
  private async unlessClosing<T>(call: () => Promise<T>): Promise<T> {
    try {
      if (this.deletionUnhandled()) await this.afterDeletionHandled();
      return await call();
    } catch (e) {
      const storage = isStorageError(e) || ['InvalidStateError', 'TransactionInactiveError', 'AbortError', 'UnknownError'].includes((e as { name?: unknown } | null)?.name as string);
      if (storage && (this.closing || this.closed)) throw new ClosedError('close() or erase() began while this call ran: the recommender is closed', { cause: e });
      throw e;
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new ClosedError('the recommender is closed');
  }

  /** Another tab's erase is known to the store or being handled, and not yet handled here. */
  private deletionUnhandled(): boolean {
    return this.erasing !== undefined || this.store.isDeleted?.() === true;
  }

  /**
   * Another tab's erase() deleted the database, and resolved before its message reached this tab:
   * a call made meanwhile waits until this tab has dropped what it held (at that message, or at
   * the store's grace period, DELETION_GRACE_MS, if none comes), then runs on the empty database,
   * instead of being refused with "was deleted".
   */
  private async afterDeletionHandled(): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    // Bounded as a whole: handling it waits for an upload in flight (never cut) or a training
    // step to end; past the deadline the call goes on, and a store still refusing says so.
    const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, 2 * DELETION_GRACE_MS)));
    try {
      await Promise.race([
        (async () => {
          await this.erasing;
          const handled = this.store.deletionHandled?.();
          if (!handled) return;
          await handled;
          // Handling it began meanwhile: its end.
          await this.erasing;
        })(),
        deadline,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Validates and queues events; they are written in one transaction shortly after (or at once
   * when many are queued). Returns how many were accepted; invalid ones are counted in
   * `stats().dropped` and the first error is thrown after the valid ones are queued. Typed as
   * `track()`'s events; each is validated all the same (the worker passes on what a page posted).
   */
  enqueue(events: readonly TrackEvent[]): number {
    this.assertOpen();
    // close() has written the queue (or is writing it): nothing accepted now would be written.
    if (this.closing) throw new ClosedError('the recommender is closing: events are no longer taken');
    if (!Array.isArray(events)) throw new ValidationError('events', `must be an array of events, got ${describeValue(events)}`);
    if (!this.consent.personalization) {
      // Dropped unread: before consent not even validation results are kept.
      this.droppedBeforeConsent += events.length;
      return 0;
    }
    let firstError: unknown;
    let accepted = 0;
    const now = this.now();
    for (const e of events) {
      try {
        const ev = validateEvent(e, now);
        // Retention would delete an older event in the very write that stores it: refused, named.
        checkEventAge(ev, now, this.retention.maxAgeDays);
        this.queue.push(ev);
        this.queuedAt.set(ev, now);
        accepted++;
      } catch (err) {
        this.dropped++;
        firstError ??= err;
      }
    }
    if (this.queue.length >= FLUSH_MAX) void this.writeQueue().catch((e) => (this.lastError = e));
    else this.scheduleFlush();
    if (firstError) throw firstError;
    return accepted;
  }

  /** Queued events are written within {@link FLUSH_DELAY_MS} (unless a flush is already due). */
  private scheduleFlush(): void {
    if (this.queue.length && !this.flushTimer) {
      this.flushTimer = setTimeout(() => {
        // Another tab's erase not yet handled here: written after it is (dropErased schedules it),
        // not refused with "was deleted".
        if (this.deletionUnhandled()) {
          this.flushTimer = undefined;
          return;
        }
        void this.writeQueue().catch((e) => (this.lastError = e));
      }, FLUSH_DELAY_MS);
    }
  }

  /** A flush chained behind the one writing, not started yet: later calls of the same data epoch share it. */
  private flushWaiting: { run: Promise<void>; epoch: number } | undefined;

  /**
   * Writes every queued event; resolves once they are in the store. After another tab's erase not
   * yet handled here, once it is (the events tracked before it go with it).
   */
  flush(): Promise<void> {
    if (this.deletionUnhandled()) return this.afterDeletionHandled().then(() => this.writeQueue());
    return this.writeQueue();
  }

  /** {@link flush}, for this engine's own calls: a training run or a sync reading the events must not wait for an erase that waits for it. */
  private writeQueue(): Promise<void> {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const epoch = this.dataEpoch;
    // One not started yet takes, when it starts, every event queued by then: this call's too.
    if (this.flushWaiting?.epoch === epoch) return this.flushWaiting.run;
    const waiting: { run: Promise<void>; epoch: number } = { run: Promise.resolve(), epoch };
    // Chained so that batches land in order and a failed batch does not block later ones. Resolves
    // true when the data epoch changed while it waited: a flush of the new one follows.
    const run: Promise<boolean> = this.flushing.then(async () => {
      if (this.flushWaiting === waiting) this.flushWaiting = undefined;
      // Called before a consent withdrawal or an erase: what was queued then went with them; what
      // is queued now (another tab's erase keeps what was tracked after it) is the next flush's.
      if (epoch !== this.dataEpoch) return true;
      // (A withdrawal under way, or a grant still opening the store: nothing is queued to write.)
      if (!this.consent.personalization) return false;
      // Taken when the write starts, not when flush() was called: a batch that an earlier flush
      // (an automatic one) could not store was put back in the queue, and this flush must not
      // resolve before it is stored too.
      const batch = this.queue;
      this.queue = [];
      if (batch.length === 0) return false;
      let r: AddResult;
      // The cached events, brought up to date from what the write says it changed (a shopper's
      // every product page tracks a view then asks for recommendations: at 5,000 stored events a
      // full read after each write took ~200 ms in Chromium). Dropped meanwhile, so that a read
      // that overlaps the write is not kept; taken back only when nothing else dropped it since.
      const before = this.eventCache;
      const store = this.store;
      try {
        this.dropEventCache();
        const gen = this.cacheGen;
        r = await store.add(batch);
        if (before && r.changes && gen === this.cacheGen && store === this.store && epoch === this.dataEpoch) this.eventCache = withChanges(before, r.changes);
      } catch (e) {
        // Events the store removed for the quota before its retry failed are gone all the same
        // (this tab's cache was dropped before the write; the other tabs' must go too).
        this.evictedByQuota += quotaEvictedBy(e);
        if (quotaEvictedBy(e) > 0) this.tell({ type: 'events' });
        // Put the batch back so nothing is lost (unless the shopper's data was erased meanwhile,
        // which is what closed the store under it); the caller sees the StorageError.
        if (epoch === this.dataEpoch) this.requeue(batch);
        throw e;
      }
      this.tell({ type: 'events' });
      // Retention and quota evictions are reported, never silent (stats().evicted, audit()).
      this.evictedByQuota += r.quotaEvicted ?? 0;
      this.evictedByRetention += r.evicted - (r.quotaEvicted ?? 0);
      // The batch is stored: a failure to write the consent records must not put it back (it
      // would be stored twice). They stay marked unwritten and go with the next write.
      await this.persistConsent().catch((e) => (this.lastError = e));
      // Egress entries an earlier write could not store (kept in memory, listed by audit()) go
      // with the first write that succeeds, not only with the next request logged: a page closed
      // before that would lose them.
      if (this.unsavedEgress.length > 0 && epoch === this.dataEpoch) await this.appendEgress([]).catch(() => undefined);
      this.maybeAutoTrain();
      return false;
    });
    waiting.run = run.then((again) => (again ? this.writeQueue() : undefined));
    // (Observed here, as `run` is by `flushing`: a caller that does not wait, such as close(), must
    // not leave an unhandled rejection; those that wait still get it.)
    waiting.run.catch(() => undefined);
    this.flushWaiting = waiting;
    this.flushing = run.then(
      () => undefined,
      () => undefined,
    );
    return waiting.run;
  }

  /**
   * Puts a batch the store could not take back in front of the queue. While storage keeps failing
   * (a site quota that stays full) the queue keeps at most `retention.maxEvents`: the oldest go
   * first, offer events and purchases last (the offer rules count them), counted in `stats().dropped`.
   */
  private requeue(batch: StoredEvent[]): void {
    const all = batch.concat(this.queue);
    let over = all.length - this.retention.maxEvents;
    if (over <= 0) {
      this.queue = all;
      return;
    }
    this.dropped += over;
    // The oldest go, offer events and purchases last: the offer rules (caps, cool-downs, the
    // audience) count them, and a queue that cannot be written has no ledger to fold them into.
    const keep = new Array<boolean>(all.length).fill(true);
    for (const pass of [false, true]) {
      for (let i = 0; i < all.length && over > 0; i++) {
        if (keep[i] && (pass || !ledgerKeeps(all[i]!))) {
          keep[i] = false;
          over--;
        }
      }
    }
    this.queue = all.filter((_, i) => keep[i]);
  }

  private maybeAutoTrain(): void {
    if (this.autoTrainEvery === 0 || this.training || this.closed || !this.consent.personalization) return;
    void this.store.countAfter(this.saved.trainedThroughId).then(
      (pending) => {
        if (pending >= this.autoTrainEvery && !this.training && !this.closed) {
          // A run stopped (erase(), close(), consent withdrawn) is no error: it just stops.
          this.train().catch((e) => {
            if (!(e instanceof AbortError)) this.lastError = e;
          });
        }
      },
      // The database went away under the read (another tab's erase, closed): nothing to train.
      (e) => (this.lastError = e),
    );
  }

  /** When {@link enqueue} took each queued event (this engine's clock): see {@link erasedElsewhere}. */
  private readonly queuedAt = new WeakMap<StoredEvent, number>();

  /** Stored events, read once and kept until the next write: recommend() must not scan IndexedDB each call. */
  private eventCache: StoredEvent[] | undefined;
  /** Bumped with every {@link dropEventCache}: a read that started before it is not kept. */
  private cacheGen = 0;
  /**
   * Bumped when the shopper's data is erased (consent withdrawn, erase(), another tab's erase):
   * a batch of events taken for writing before then is dropped, not written to the next store.
   */
  private dataEpoch = 0;

  private dropEventCache(): void {
    this.eventCache = undefined;
    this.cacheGen++;
  }

  private async storedEvents(): Promise<StoredEvent[]> {
    // A write that fails (the quota) keeps its events queued and says so in stats().lastError:
    // what is stored can still be read and ranked on.
    await this.writeQueue().catch((e) => (this.lastError = e));
    if (this.eventCache) {
      // What aged past the limit since it was read is left out, as the store's reads leave it out
      // (its limit, on its clock); the cache is in time order, so that is a prefix.
      const cutoff = this.store.ageCutoff?.() ?? -Infinity;
      let i = 0;
      while (i < this.eventCache.length && this.eventCache[i]!.t < cutoff) i++;
      if (i > 0) this.eventCache = this.eventCache.slice(i);
      return this.eventCache;
    }
    const gen = this.cacheGen;
    const store = this.store;
    const events = await store.all();
    // A write, an erase or a change of store (consent) while it was read: this caller gets what it
    // asked for, nobody keeps it.
    if (gen === this.cacheGen && store === this.store) this.eventCache = events;
    return events;
  }

  private async profile(): Promise<{ profile: ProfileItem[]; events: StoredEvent[] }> {
    const events = await this.storedEvents();
    return { profile: this.profileOf(events, this.now()), events };
  }

  /** The shopper's profile from these events, decayed to `now`. */
  private profileOf(events: readonly StoredEvent[], now: number): ProfileItem[] {
    return buildProfile(events, this.rows, { halfLifeDays: this.halfLifeDays, now, sessionDecay: this.sessionDecay, stepDecay: this.stepDecay });
  }

  /** The rows of category `cat`, as a mask the scorer keeps for the next call with it. */
  private categoryMask(cat: string): Allowed {
    return { key: `category:${cat}`, rows: () => this.catalog.items.flatMap((it, r) => (it.category === cat ? [r] : [])), has: (r) => this.catalog.items[r]?.category === cat };
  }

  /**
   * Applies retention now (the age limit, a lowered count limit) rather than at the next write,
   * counting what it removes with the session's other retention evictions.
   */
  private async retainNow(): Promise<void> {
    const removed = (await this.store.applyRetention?.().catch(() => 0)) ?? 0;
    this.evictedByRetention += removed;
    if (removed > 0) {
      // No write of this engine's reports these: the event cache (this tab's, and the other tabs')
      // must not keep them (stop 33's diff review).
      this.dropEventCache();
      this.tell({ type: 'events' });
    }
    // The egress log and the consent history keep nothing past the age limit either (each neighbour
    // fetch is a page load's time): removed here too, written only when there is something to remove.
    await this.trimRecords().catch((e) => {
      this.lastError = e as Error;
    });
  }

  /** Deletes egress entries and consent records older than `retention.maxAgeDays` (the latest consent record stays). */
  private async trimRecords(): Promise<void> {
    if (!this.consent.personalization || this.closed) return;
    const cutoff = this.recordCutoff();
    const expired = (r: { t: number }) => r.t < cutoff;
    if (readEgressLog(await this.store.getMeta(EGRESS_KEY)).value.some(expired)) {
      await this.store.updateMeta<EgressEntry[]>(EGRESS_KEY, (log) => trimEgress(readEgressLog(log).value, cutoff));
    }
    const stored = readConsentRecords(await this.store.getMeta(CONSENT_KEY)).value;
    if (stored.slice(0, -1).some(expired)) {
      await this.store.updateMeta<ConsentRecord[]>(CONSENT_KEY, (records) => trimConsent(readConsentRecords(records).value, cutoff));
    }
    if (this.consentHistory.slice(0, -1).some(expired)) this.consentHistory = trimConsent(this.consentHistory, cutoff);
  }

  /** The egress log as stored, without entries past `retention.maxAgeDays` (not yet removed by a write). */
  private async readEgress(): Promise<EgressEntry[]> {
    const read = readEgressLog(await this.store.getMeta(EGRESS_KEY));
    if (read.damaged) this.noteDamaged(EGRESS_KEY, 'its well-formed entries are listed, and the next request logged replaces it with them');
    return egressWith(read.value, this.unsavedEgress, this.recordCutoff());
  }

  /** The catalog rows of `recommend({ candidates })`, each once; undefined when not given. */
  private candidateRows(candidates: unknown): Set<number> | undefined {
    if (candidates === undefined) return undefined;
    if (!Array.isArray(candidates)) throw new ValidationError('options.candidates', `must be an array of item ids, got ${describeValue(candidates)}`);
    if (candidates.length > MAX_CANDIDATES) throw new ValidationError('options.candidates', `must hold at most ${MAX_CANDIDATES} item ids, got ${candidates.length}`);
    const rows = new Set<number>();
    for (let i = 0; i < candidates.length; i++) {
      const id: unknown = candidates[i];
      if (typeof id !== 'string') throw new ValidationError(`options.candidates[${i}]`, `must be an item id string, got ${describeValue(id)}`);
      const r = this.rows.get(id);
      if (r !== undefined) rows.add(r);
    }
    return rows;
  }

  private excludedRows(exclude: RecommendOptions['exclude'], profile: ProfileItem[], events: StoredEvent[]): Set<number> {
    if (exclude === undefined || exclude === 'seen') return new Set(profile.map((p) => p.row));
    if (exclude === 'none') return new Set();
    if (exclude === 'purchased') {
      return new Set(events.filter((e) => e.type === 'purchase' && this.rows.has(e.itemId!)).map((e) => this.rows.get(e.itemId!)!));
    }
    if (Array.isArray(exclude)) {
      const s = new Set<number>();
      exclude.forEach((id, i) => {
        if (typeof id !== 'string') throw new ValidationError(`options.exclude[${i}]`, 'must be an item id string');
        const r = this.rows.get(id);
        if (r !== undefined) s.add(r);
      });
      return s;
    }
    throw new ValidationError('options.exclude', `must be 'seen', 'purchased', 'none' or an array of item ids; got ${describeValue(exclude)}`);
  }

  /** The item's title as a sentence quotes it: runs of spaces (`RED  HARMONICA`) made one. */
  private title(id: string): string {
    const t = this.titles.get(id);
    return t === undefined ? id : t.replace(/\s+/g, ' ').trim() || id;
  }

  /**
   * Whether the factor table has learned anything: a training step on this device, or a global
   * version from a sync. Until then its factors are the seeded start, and what a history item
   * "contributes" to a score is noise.
   */
  private factorsLearned(): boolean {
    return this.saved.trainSteps > 0 || this.table.version > 0;
  }

  private reason(row: number, profile: ProfileItem[]): Reason {
    // An untrained table ranks by popularity plus noise: citing a past item would tell the shopper
    // a bestseller was picked for their history (a review of the output, stop 34).
    if (!this.factorsLearned()) return { kind: 'popular', text: 'Popular in this shop', itemIds: [], basis: [] };
    // Only what a reason may cite (not an add to cart taken back, nor a low rating).
    const top = topByValue(contributionsOf(this.table, profile, row), 2, (c) => c.value > 0 && c.item.action !== undefined);
    if (top.length === 0) return { kind: 'popular', text: 'Popular in this shop', itemIds: [], basis: [] };
    return this.personalReason(top.map((c) => c.item));
  }

  /**
   * "Because you viewed A and bought B", "Because you bought A and B": the cited history items,
   * strongest first, each with what was done (one verb when both were done alike).
   */
  private personalReason(items: ProfileItem[]): Reason {
    const basis = items.map((p) => ({ itemId: this.table.itemIds[p.row]!, event: p.action! }));
    const parts = basis.map((b, i) => (i > 0 && b.event === basis[i - 1]!.event ? '' : `${CITED_VERB[b.event]} `) + this.title(b.itemId));
    return { kind: 'personal', text: `Because you ${parts.join(' and ')}`, itemIds: basis.map((b) => b.itemId), basis };
  }

  private neighborReason(nb: ActiveNeighbors, row: number, profile: ProfileItem[]): Reason {
    const top = topByValue(neighborContributionsOf(nb.model, profile, row), 2, (c) => c.item.action !== undefined);
    // Reached through the table only by items no reason may cite (an add to cart taken back): the
    // pick is the history's all the same, but no past item is named (the factor model's
    // contributions would name one that does not point to it).
    if (top.length === 0) return { kind: 'personal', text: 'Based on your recent activity', itemIds: [], basis: [] };
    return this.personalReason(top.map((c) => c.item));
  }

  /**
   * Top-K items for this shopper, each with a readable reason. With a neighbour table, items the
   * shopper's history reaches score above 1 (1 + Σ weight × neighbour weight) and come first; the
   * rest follow in the factor model's order, scaled into [0, 1).
   */
  recommend(options: RecommendOptions = {}): Promise<Recommendation[]> {
    return this.unlessClosing(() => this.recommendOpen(options));
  }

  private async recommendOpen(options: RecommendOptions = {}): Promise<Recommendation[]> {
    this.assertOpen();
    knownKeys(options, 'options', OPTION_KEYS.recommend);
    await this.freshModel();
    if (options.category !== undefined && typeof options.category !== 'string') throw new ValidationError('options.category', `must be a string, got ${describeValue(options.category)}`);
    const candidates = this.candidateRows(options.candidates);
    // A page's whole list is put in order by default (and may be with `k: candidates.length`, up to
    // MAX_CANDIDATES); without one, the top 10.
    const listed = Array.isArray(options.candidates) ? options.candidates.length : undefined;
    const k = intOption(options.k, 'options.k', 1, Math.max(1000, listed ?? 0), listed === undefined ? 10 : Math.max(1, listed));
    const { profile, events } = await this.profile();
    const exclude = this.excludedRows(options.exclude, profile, events);
    const z = userVector(this.table, profile);
    const cat = options.category;
    // A category no item has, or no candidate the catalog holds, recommends nothing (and costs no
    // mask on the backend).
    if (cat !== undefined && !this.categories.has(cat)) return [];
    if (candidates?.size === 0) return [];
    const items = this.catalog.items;
    const inCategory = (r: number) => cat === undefined || items[r]!.category === cat;
    // A category's mask is kept for the next call; a list of candidates is the page's of the moment.
    const allowed: Allowed | undefined = candidates
      ? { rows: () => [...candidates].filter(inCategory), has: (r) => candidates.has(r) && inCategory(r) }
      : cat === undefined
        ? undefined
        : this.categoryMask(cat);
    const nb = await this.neighborReady();
    if (nb && profile.some((p) => p.weight > 0)) {
      // The order of rankScores (model/neighbors.ts, what `localrec eval` measures) without a dense
      // pass: rows the history reaches through the table come first (1 + score / the largest
      // score over all of them); the factor model's top rows follow, its scores scaled into [0, 1)
      // by the range over all rows.
      // Scaled by the largest score over every reached row and rounded to float32 as rankScores
      // writes it (the array `localrec eval` ranks): two scores that differ below float32's
      // precision tie, and break by row, on the device as in eval. The top k only, by a bounded
      // heap: a heavy shopper's history reaches tens of thousands of rows.
      const reached = topReachedRows(nb.model, profile, k, (r) => !exclude.has(r) && inCategory(r) && (!candidates || candidates.has(r)));
      let rest: Scored[] = [];
      if (reached.length < k) {
        const skip = new Set(exclude);
        for (const r of reached) skip.add(r.row);
        // A few rows more than needed: scaled and rounded to float32 as rankScores writes them, two
        // neighbouring scores may tie and then break by row, as in eval (a tie running past the
        // extra rows would need that many equal float32 scores at the cut).
        const want = k - reached.length;
        const f = await this.scoring((s) => s.topKRange(z, want + FALLBACK_TIE_ROWS, skip, allowed));
        const span = f.hi > f.lo ? f.hi - f.lo : 1;
        rest = f.top
          .map((s) => ({ row: s.row, score: Math.fround((0.999 * (s.score - f.lo)) / span) }))
          .sort((a, b) => b.score - a.score || a.row - b.row)
          .slice(0, want);
      }
      return [
        ...reached.map((s) => ({ itemId: this.table.itemIds[s.row]!, score: s.score, reason: this.neighborReason(nb, s.row, profile) })),
        ...rest.map((s) => ({ itemId: this.table.itemIds[s.row]!, score: s.score, reason: this.reason(s.row, profile) })),
      ];
    }
    const scored: Scored[] = await this.scoring((s) => s.topK(z, k, exclude, allowed));
    return scored.map((s) => ({ itemId: this.table.itemIds[s.row]!, score: s.score, reason: this.reason(s.row, profile) }));
  }

  /** Items most like `itemId`: its published neighbours, then the items with the closest embeddings. */
  similar(itemId: string, options: SimilarOptions = {}): Promise<Recommendation[]> {
    return this.unlessClosing(() => this.similarOpen(itemId, options));
  }

  private async similarOpen(itemId: string, options: SimilarOptions = {}): Promise<Recommendation[]> {
    this.assertOpen();
    if (typeof itemId !== 'string') throw new ValidationError('itemId', `must be a string, got ${typeof itemId}`);
    knownKeys(options, 'options', OPTION_KEYS.similar);
    const k = intOption(options.k, 'options.k', 1, 1000, 10);
    if (options.category !== undefined && typeof options.category !== 'string') throw new ValidationError('options.category', `must be a string, got ${describeValue(options.category)}`);
    const row = this.rows.get(itemId);
    // The caller's argument, not the model: a ValidationError naming it.
    if (row === undefined) throw new ValidationError('itemId', `${describeValue(itemId)} is not in the catalog`);
    await this.freshModel();
    // Only what is asked for reads the history ('seen', 'purchased').
    const exclude =
      options.exclude === undefined || options.exclude === 'none' || Array.isArray(options.exclude)
        ? this.excludedRows(options.exclude ?? 'none', [], [])
        : await this.profile().then(({ profile, events }) => this.excludedRows(options.exclude, profile, events));
    const cat = options.category;
    if (cat !== undefined && !this.categories.has(cat)) return [];
    const items = this.catalog.items;
    const allowed = cat === undefined ? undefined : this.categoryMask(cat);
    const nb = await this.neighborReady();
    // The published neighbours first (scored 1 + weight), then the nearest embeddings.
    const scored: Scored[] = nb
      ? neighborsOf(nb.model, row)
          .filter((s) => !exclude.has(s.row) && (cat === undefined || items[s.row]!.category === cat))
          .slice(0, k)
          .map((s) => ({ row: s.row, score: 1 + s.score }))
      : [];
    const published = scored.length;
    // The nearest embeddings, once the table has learned some; before, its factors are the seeded
    // start and "nearest" would be chance: the rest are the bestsellers, said as such.
    const learned = this.factorsLearned();
    if (scored.length < k) {
      const skip = new Set([...exclude, ...scored.map((s) => s.row), row]);
      const more = k - scored.length;
      scored.push(...(await this.scoring((sc) => (learned ? sc.similar(row, more, skip, allowed) : sc.topK(new Float32Array(this.table.dim), more, skip, allowed)))));
    }
    const text = `Similar to ${this.title(itemId)}`;
    return scored.map((s, i) => ({
      itemId: this.table.itemIds[s.row]!,
      score: s.score,
      reason: learned || i < published ? { kind: 'similar', text, itemIds: [itemId], basis: [] } : { kind: 'popular', text: 'Popular in this shop', itemIds: [], basis: [] },
    }));
  }

  /**
   * Trains on the shopper's own events: each item, in time order, is a target for the items
   * before it. Touches only the shopper's rows and sampled negatives; saves the weights after.
   * A call while a run is under way (an automatic one, or another caller's) joins it when it asks
   * for the same epochs (or none): it gets that run's result and its `onProgress` hears the rest of
   * it. A call that asks for other epochs waits for that run to end, then trains with its own.
   * A progress callback that throws does not stop the run. erase(), close(), a withdrawal of
   * consent to personalization and an erase in another tab do: between two steps, saving nothing
   * (the weights in use stay as they were), and the call rejects with an AbortError saying which.
   */
  async train(options: TrainOptions = {}): Promise<TrainResult> {
    this.assertOpen();
    if (typeof options !== 'object' || options === null) throw new ValidationError('options', `must be an object like { epochs, onProgress }, got ${describeValue(options)}`);
    knownKeys(options, 'options', OPTION_KEYS.train);
    if (options.onProgress !== undefined && typeof options.onProgress !== 'function') throw new ValidationError('options.onProgress', `must be a function, got ${typeof options.onProgress}`);
    const epochs = intOption(options.epochs, 'options.epochs', 1, 1000, this.opts.training?.epochs ?? 4);
    const listener = options.onProgress;
    const signal = options.signal;
    checkSignal(signal, 'options.signal');
    const cancelled = () => new AbortError('training cancelled by its signal before it started; nothing was trained');
    if (signal?.aborted) throw cancelled();
    // close() or erase() has begun: no run they would not wait for (nor one on data being erased).
    if (this.closing) throw new ClosedError('the recommender is closing');
    if (this.deletionUnhandled()) {
      await this.afterDeletionHandled();
      this.assertOpen();
      if (this.closing) throw new ClosedError('the recommender is closing');
    }
    // The caller's signal stops the run this call starts or joins (for each of its callers): that
    // run's own controller, never a later run's.
    const following = async (run: Promise<TrainResult>, ctl: AbortController | undefined): Promise<TrainResult> => {
      const stopRun = () => ctl?.abort(new AbortError("training stopped by a caller's signal; nothing it learned was saved"));
      signal?.addEventListener('abort', stopRun, { once: true });
      try {
        return await run;
      } finally {
        signal?.removeEventListener('abort', stopRun);
      }
    };
    for (;;) {
      // The page's close() or erase() has begun (stopTraining): no run that would hold it.
      if (this.trainingStoppedBy) throw new AbortError(`training stopped by ${this.trainingStoppedBy} before it started; nothing was trained`);
      if (!this.consent.personalization) throw new ConsentError('training needs consent to personalization (setConsent({ personalization: true }))');
      if (!this.training) break;
      if (options.epochs === undefined || options.epochs === this.trainingEpochs) {
        if (listener) this.trainListeners.add(listener);
        try {
          return await following(this.training, this.trainingAbort);
        } finally {
          if (listener) this.trainListeners.delete(listener);
        }
      }
      // Waiting for a run of other epochs: the signal ends only this call's wait.
      if (!signal) await this.training.catch(() => undefined);
      else {
        const { aborted, done } = whenAborted(signal);
        try {
          await Promise.race([this.training.catch(() => undefined), aborted]);
        } finally {
          done();
        }
        if (signal.aborted) throw cancelled();
      }
      this.assertOpen();
      // close() or erase() began while this call waited: it must not start a run they do not wait for.
      if (this.closing) throw new ClosedError('the recommender is closing');
    }
    if (listener) this.trainListeners.add(listener);
    const report = this.trainProgress;
    // erase(), close(), a withdrawal of consent or another tab's erase stop the run between two
    // steps (stopTrainingRun): it then saves nothing and the weights in use stay as they were.
    const abort = new AbortController();
    const run = (async () => {
      const t0 = performance.now();
      report({ phase: 'loading', done: 0, total: 1 });
      let stats: Awaited<ReturnType<typeof trainItemTable>>;
      let through: number;
      let trained: ItemTable;
      // Trains a copy of the table, swapped in when the run ends: a run that fails part-way leaves
      // the weights in use as they were, and recommend() meanwhile explains its ranking with the
      // weights it ranks by. New weights taken meanwhile (another tab's, which a recommend() call
      // reloads; a sync's global model) replace the table, and what this run learned from it is
      // dropped: trained again on the new one (a few times at most), so that the run's steps and
      // its events are never counted for weights that were dropped.
      for (let attempt = 1; ; attempt++) {
        await this.freshModel();
        const table = this.table;
        const { profile, events } = await this.profile();
        report({ phase: 'loading', done: 1, total: 1 });
        through = newestId(events);
        const seq = { rows: profile.map((p) => p.row), weights: profile.map((p) => p.weight) };
        const work = cloneItemTable(table);
        stats = await this.trainingOnBackend(abort.signal, (signal) =>
          trainItemTable(work, [seq], { ...this.opts.training, epochs, seed: (this.opts.model?.seed ?? 1) + this.saved.trainSteps, signal }, report),
        );
        // Stopped after its last step: the copy is dropped all the same.
        if (abort.signal.aborted) throw abort.signal.reason;
        // Weights that are not finite are never put in use nor saved (load() would refuse them, and
        // the device would lose its model): the run fails, the weights in use stay as they were.
        checkItemTable(work);
        if (this.table === table) {
          trained = work;
          break;
        }
        if (attempt === 3) throw new ModelError('training was overtaken three times by newer weights from another tab; the events stay pending for the next run');
        // close() or erase() began meanwhile: they wait for this run, so it does not start again.
        if (this.closing) throw new ClosedError('the recommender is closing; this run was overtaken by newer weights from another tab');
      }
      report({ phase: 'saving', done: 0, total: 1 });
      // Events stored while it trained were not in its profile: they stay pending (auto-training sees them).
      // A run with nothing to learn (no steps) changes no weight: it is not a training time to report.
      const undo = this.swapWeights(trained, { ...this.saved, trainedAt: stats.steps > 0 ? this.now() : this.saved.trainedAt, trainSteps: this.saved.trainSteps + stats.steps, trainedThroughId: through });
      try {
        await this.persist();
      } catch (e) {
        undo();
        throw e;
      }
      report({ phase: 'saving', done: 1, total: 1 });
      return { steps: stats.steps, examples: stats.examples, firstLoss: stats.steps > 0 ? stats.firstLoss : null, lastLoss: stats.steps > 0 ? stats.lastLoss : null, ms: performance.now() - t0, backend: this.backend.backend };
    })();
    this.training = run;
    this.trainingAbort = abort;
    this.trainingEpochs = epochs;
    const clear = () => {
      this.training = undefined;
      this.trainingAbort = undefined;
      this.trainListeners.clear();
    };
    run.then(clear, clear);
    return following(run, abort);
  }

  /**
   * Runs training pass `f` on a working backend (moving off one known to have failed first). When
   * the backend fails during it (an op throws something not localrec's own, or its context or device
   * is lost, which stops the run at its next read), the run fails with a ModelError and the engine
   * moves to another backend for what comes next; the run is not retried. `stop` is the run's own
   * signal (close(), erase()…): its AbortError passes through unchanged.
   */
  private async trainingOnBackend<T>(stop: AbortSignal, f: (signal: AbortSignal) => Promise<T>): Promise<T> {
    await this.usableBackend();
    const gen = this.backendGen;
    const from = this.backend.backend;
    const onLoss = new AbortController();
    this.stopTrainingOnLoss = () => onLoss.abort();
    // Both signals end the run. By hand, not AbortSignal.any: Firefox before 124, Safari before 17.4
    // and Chromium before 116 lack it, and dropping the loss signal there left a run on a lost
    // WebGL context waiting forever on a read that never settles, with every later train() and
    // sync() queued behind it (a portability review, stop 35).
    const either = new AbortController();
    const pass = (src: AbortSignal) => () => either.abort(src.reason);
    const fromStop = pass(stop);
    const fromLoss = pass(onLoss.signal);
    if (stop.aborted) either.abort(stop.reason);
    else {
      stop.addEventListener('abort', fromStop, { once: true });
      onLoss.signal.addEventListener('abort', fromLoss, { once: true });
    }
    const signal = either.signal;
    try {
      return await f(signal);
    } catch (e) {
      if (stop.aborted || !(onLoss.signal.aborted || isBackendFailure(e))) throw e;
      this.markBackendLost(gen, `an operation failed (${describeError(e)})`);
      const why = this.backendLost ?? describeError(e);
      // Moved off now, so that the next run (and the next recommend()) uses a working backend.
      await this.recoverBackend().catch(() => undefined);
      throw (this.lastError = new ModelError(`training failed on the ${from} backend (${why}); nothing it learned was saved; ${from === this.backend.backend ? 'no other backend is left' : `the next run uses ${this.backend.backend}`}`, { cause: e }));
    } finally {
      stop.removeEventListener('abort', fromStop);
      onLoss.signal.removeEventListener('abort', fromLoss);
      this.stopTrainingOnLoss = undefined;
    }
  }

  /** The epochs of the run under way (a call asking for others waits for it). */
  private trainingEpochs = 0;
  /** Stops the run under way (see {@link stopTrainingRun}). */
  private trainingAbort: AbortController | undefined;
  /** Set by {@link stopTraining}: the page's close() or erase() has begun, and no run starts. */
  private trainingStoppedBy: string | undefined;

  /**
   * Stops the training run under way, if any, between two of its steps: it saves nothing, the
   * weights in use stay as they were, and its callers' train() rejects with an AbortError saying
   * `why` (an automatic run just stops). What it was to learn from stays pending.
   */
  private stopTrainingRun(why: string): void {
    this.trainingAbort?.abort(new AbortError(`${why}; nothing it learned was saved`));
  }

  /**
   * The page's close() or erase() has begun (`by`): the training run under way stops (as
   * {@link stopTrainingRun}) and no other starts, so that neither waits for a run of many epochs
   * among the calls in flight it lets finish first. For the worker (the page's facade ends it
   * right after); an engine on which it was called never trains again.
   *
   * @internal
   */
  stopTraining(by: 'close()' | 'erase()'): void {
    this.trainingStoppedBy ??= by;
    this.stopTrainingRun(`training stopped by ${by}`);
  }
  /** The progress callbacks of every caller of the run under way. */
  private readonly trainListeners = new Set<(p: Progress) => void>();

  /** Forwards a training run's progress to every listener; one that throws does not stop the run. */
  private readonly trainProgress = (p: Progress): void => tellEach(this.trainListeners, p);

  /**
   * One federated round: pull the global model, train on this shopper's events, send a clipped,
   * noised update, and continue from the global model plus the local training. Refuses with a
   * PrivacyBudgetError, before anything is sent, once the device's ε budget would be exceeded.
   * A call while a sync is under way gets that sync's result: it never spends ε twice (and its
   * `onProgress` hears the rest of that sync; its `signal` cancels it for every caller).
   * `contribute: false` only receives ({@link pullRound}); a contributing call never takes a
   * receiving sync's result for its own: it waits for it to end, then syncs.
   */
  async sync(o: SyncControl = {}): Promise<SyncResultInfo> {
    return this.runSync(o, false);
  }

  /**
   * {@link sync}; `receiveWhenSpent` (automatic syncs): a contributing sync the budget cannot pay
   * for goes on as a receiving one with the config and model it fetched, instead of refusing (a
   * second pair of requests would set the device apart).
   */
  private async runSync(o: SyncControl, receiveWhenSpent: boolean): Promise<SyncResultInfo> {
    this.assertOpen();
    knownKeys(o, 'options', OPTION_KEYS.sync);
    if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw new ValidationError('options.onProgress', `must be a function, got ${typeof o.onProgress}`);
    boolOption(o.contribute, 'options.contribute');
    checkSignal(o.signal, 'options.signal');
    const contribute = o.contribute ?? true;
    if (o.signal?.aborted) throw syncCancelled('before it started');
    if (this.closing) throw new ClosedError('the recommender is closing');
    // A sync that only receives cannot stand in for one that was asked to contribute: wait it out.
    // This call's own signal cancels it meanwhile, and so does a cancel of every sync (close(),
    // erase(), consent withdrawn); another caller's signal cancels only that caller's sync.
    const cancels = this.cancels;
    const mustWait = (): boolean => contribute && this.syncing !== null && !this.syncContributes && !o.signal?.aborted && this.cancels === cancels;
    if (mustWait()) {
      const { aborted, done } = whenAborted(o.signal);
      try {
        while (mustWait()) await Promise.race([this.syncing!.catch(() => undefined), aborted]);
      } finally {
        done();
      }
    }
    this.assertOpen();
    if (this.closing) throw new ClosedError('the recommender is closing');
    if (o.signal?.aborted || this.cancels !== cancels) throw syncCancelled('before it started');
    if (!this.syncing) {
      const abort = new AbortController();
      const dropOut = { requested: false };
      this.syncAbort = abort;
      this.syncDropOut = dropOut;
      this.syncContributes = contribute;
      this.syncing = (contribute ? this.syncRound(abort.signal, receiveWhenSpent, () => dropOut.requested) : this.pullRound(abort.signal)).then(async (r) => {
        // A contributing sync (the page's own too) starts the automatic period anew; a receiving one
        // does not, or a page that only receives would hold the automatic contribution off for good.
        if (contribute) await this.noteSynced();
        return r;
      }).finally(() => {
        this.syncing = null;
        this.syncAbort = null;
        this.syncDropOut = null;
        this.syncListeners.clear();
      });
    }
    const syncing = this.syncing;
    const shared = this.syncContributes !== contribute;
    const listener = o.onProgress;
    if (listener) this.syncListeners.add(listener);
    const cancel = () => this.cancelSync();
    o.signal?.addEventListener('abort', cancel, { once: true });
    try {
      return await syncing;
    } catch (e) {
      // A receiving call that joined a contributing sync refused for the budget gets what that sync
      // received (no second pair of requests), or receives now when it received nothing.
      if (shared && !contribute && e instanceof PrivacyBudgetError) return e instanceof BudgetRefusal ? e.received : await this.sync({ ...o, contribute: false });
      throw e;
    } finally {
      o.signal?.removeEventListener('abort', cancel);
      if (listener) this.syncListeners.delete(listener);
    }
  }

  /**
   * Cancels every sync: the one under way and any call waiting for its turn (close(), erase(),
   * consent withdrawn, another tab's erase).
   */
  cancelAllSyncs(dropOut = false): void {
    this.cancels++;
    this.cancelSync(dropOut);
  }

  /**
   * Cancels the sync under way, if any (see {@link SyncControl.signal}); true when there was one.
   * `dropOut` (an erase, a consent withdrawal): a device whose cohort has filled drops out of it
   * rather than upload (DROP_OUT); a plain cancel lets it upload, as the other members wait on it.
   */
  cancelSync(dropOut = false): boolean {
    if (!this.syncAbort) return false;
    // Kept apart from the signal's reason, which only the first abort sets: an erase that comes
    // after a plain cancel (the page's signal) still makes the sync drop out.
    if (dropOut && this.syncDropOut) this.syncDropOut.requested = true;
    this.syncAbort.abort(dropOut ? DROP_OUT : undefined);
    return true;
  }

  /** The sync under way's drop-out switch (see {@link cancelSync}). */
  private syncDropOut: { requested: boolean } | null = null;

  /** The federated options, once consent and Global Privacy Control allow talking to the server. */
  private syncAllowed(): NonNullable<EngineOptions['federated']> {
    const fed = this.opts.federated;
    // The options were checked at start (checkFederated): only their absence is left to refuse.
    if (!fed) throw new ValidationError('options.federated.serverUrl', 'must be set to the aggregation server (http:// or https:// URL) to sync');
    if (!this.consent.personalization || !this.consent.federated) {
      throw new ConsentError('sync needs consent to personalization and to federated learning (setConsent({ federated: true }))');
    }
    if (this.gpcBlocksSync()) {
      throw new ConsentError('sync is off: the browser sends Global Privacy Control and the host has not overridden it (options.federated.honorGlobalPrivacyControl)');
    }
    return fed;
  }

  /**
   * True when this session runs on memory though IndexedDB exists, or would in a browser (it refused
   * to open: private mode, storage blocked, a newer schema; audit()'s `storage.notOpened` names an
   * earlier visit's database then): the ε a sync spends here is forgotten when the page closes, and
   * the next visit would start a fresh budget. Not so in plain Node, where no IndexedDB exists and
   * memory is the intended store (a process is one device for its life), nor with a store the
   * caller gave.
   */
  private spendingForgotten(): boolean {
    if (this.store.kind !== 'memory' || this.opts.store || !this.consent.personalization) return false;
    return !plainNode();
  }

  /** This engine's aggregation server as the privacy ledger and the stored global model name it ({@link serverKey}); undefined without one. */
  private serverKey(): string | undefined {
    const url = this.opts.federated?.serverUrl;
    return url === undefined ? undefined : serverKey(url);
  }

  /** The IndexedDB database `store` is (a store the caller gave has its own name). */
  private databaseName(store: EventStore = this.store): string {
    const name = (store as { name?: unknown }).name;
    return typeof name === 'string' ? name : (this.opts.dbName ?? 'localrec');
  }

  /**
   * Where this engine's ε is accounted: with a server and IndexedDB, in the privacy ledger every
   * localrec instance of the origin shares (privacy-ledger.ts), under that server and this
   * database; undefined on memory (private mode, plain Node, before consent), where the database's
   * own accountant is all there is.
   */
  private ledgerScope(): { server: string; dbName: string } | undefined {
    const server = this.serverKey();
    if (server === undefined || this.store.kind !== 'indexeddb' || !ledgerAvailable()) return undefined;
    return { server, dbName: this.databaseName() };
  }

  /**
   * The ε spent with this engine's server by every instance of the origin (`total`: what the budget
   * is checked against) and by this database (`own`). A database accountant that cannot be read
   * counts as spent, as does a ledger that cannot be read.
   */
  private async spending(): Promise<LedgerView> {
    const read = readAccountant(await this.store.getMeta(PRIVACY_KEY));
    const scope = this.ledgerScope();
    if (read.damaged || !scope) return { total: read.value, own: read.value };
    return readLedger(scope.server, scope.dbName, read.value.releases > 0 ? read.value.toJSON() : undefined);
  }

  /**
   * Copies what `store`'s own accountant spent before the shared ledger existed into it (its server
   * unknown: counted against every server), unless already there: at a start, and before the
   * database is erased, so that neither hands that ε back. A failure is noted in stats(), not thrown.
   */
  private async keepLegacySpend(store: EventStore): Promise<void> {
    if (store.kind !== 'indexeddb' || !ledgerAvailable()) return;
    try {
      const read = readAccountant(await store.getMeta(PRIVACY_KEY));
      if (read.damaged || read.value.releases === 0) return;
      await moveLegacySpend(this.databaseName(store), read.value.toJSON());
    } catch (e) {
      this.lastError = e as Error;
    }
  }

  /**
   * Removes this engine's database's part of the shared privacy ledger, and the ledger itself when
   * nothing else is in it: after erase() or a withdrawal of personalization has deleted the
   * database (after, so that a sync of another tab recorded meanwhile goes too). Also when this
   * session ran on memory (before consent): an earlier session may have recorded a part. A store
   * the caller gave has a part only if it is an IndexedDB one. Returns the StorageError when the
   * part could not be removed: erase() rejects with it, a withdrawal notes it in stats().
   */
  private async forgetLedgerPart(): Promise<StorageError | undefined> {
    const given = this.opts.store;
    if (!ledgerAvailable() || (given && given.kind !== 'indexeddb')) return undefined;
    try {
      await forgetSpend(this.databaseName(given ?? this.store));
      return undefined;
    } catch (e) {
      return e instanceof StorageError ? e : new StorageError(String(e), { cause: e });
    }
  }

  /**
   * Refuses a contributing sync on a device that cannot remember what it spends
   * ({@link spendingForgotten}), unless the host opted in (`federated.allowWithoutStorage`).
   */
  private assertRemembersSpending(fed: FederatedOptions): void {
    if (!this.spendingForgotten() || fed.allowWithoutStorage === true) return;
    throw new PrivacyBudgetError(
      'sync refused: IndexedDB could not be opened (private mode, or storage blocked), so this device cannot remember the ε it spends: ' +
        'the next visit would start a fresh budget. Nothing was sent. sync({ contribute: false }) still receives the newest global model; ' +
        'a host that accepts that each visit may spend the whole budget again sets federated.allowWithoutStorage: true',
    );
  }

  /** Forwards a sync's progress to every listener; one that throws does not stop the sync. */
  private readonly syncProgress = (p: SyncProgress): void => tellEach(this.syncListeners, p);

  /**
   * Takes the global model (plus this shopper's local step) as the device's table, row by row by
   * item id: the server's catalog order need not match the page's, and items it lacks keep their
   * local rows. Saves it.
   */
  private async adoptGlobal(r: { global: ItemTable; globalHash: string; local: ItemTable }, through: number, startTable: ItemTable): Promise<void> {
    this.checkServerModel(r.global);
    // Weights taken while the sync was away (a training run that ended meanwhile, another tab's)
    // are replaced, and with them what they had learned: only the sync's own history counts as
    // trained, the events after it are pending again.
    const replaced = this.table !== startTable;
    const rows = new Map(r.local.itemIds.map((id, i) => [id, i]));
    // A new table, not the old one changed in place: a training run under way on the old one (a
    // page's train() while the sync waited on the network) sees the swap and trains again on this.
    const next = cloneItemTable(this.table);
    const d = next.dim;
    next.itemIds.forEach((id, i) => {
      const g = rows.get(id);
      if (g === undefined) return;
      next.factors.set(r.local.factors.subarray(g * d, g * d + d), i * d);
      next.bias[i] = r.local.bias[g]!;
    });
    next.version = r.global.version;
    const undo = this.swapWeights(next, { ...this.saved, trainedAt: this.now(), trainedThroughId: replaced ? through : Math.max(this.saved.trainedThroughId, through), globalHash: r.globalHash, globalServer: this.serverKey() });
    const changed = this.heldGlobal?.hash !== r.globalHash;
    const held = this.heldGlobal;
    this.heldGlobal = { table: r.global, hash: r.globalHash };
    try {
      await this.persist();
    } catch (e) {
      if (undo()) this.heldGlobal = held;
      throw e;
    }
    if (changed) {
      // Public data (the same for every device), kept so that the next sync, after a reload too, only
      // downloads the model when the server has published a new version. Only a cache: a failure to
      // write it (storage full) costs the next sync a download, so it does not fail this one.
      try {
        await this.store.setMeta(GLOBAL_KEY, { hash: r.globalHash, bytes: encodeModel(r.global), server: this.serverKey() } satisfies SavedGlobal);
      } catch (e) {
        this.lastError = e as Error;
      }
    }
  }

  /**
   * Refuses a server config this device cannot take, before the model's download: another `dim`,
   * or a model of far more items than the page's catalog (the config sets how much the device reads,
   * stores and uploads: a hostile server could otherwise make it download gigabytes).
   */
  private readonly checkServerConfig = (config: ServerConfig): void => {
    if (config.dim !== this.table.dim) {
      throw new ModelError(`the server's model has dim ${config.dim}, this device uses ${this.table.dim}: set options.model.dim to match`);
    }
    const pageItems = this.table.itemIds.length;
    const most = maxServerItems(pageItems);
    if (config.items > most) {
      throw new ModelError(
        `the server's /v1/config announces a model of ${config.items} items, more than a device with a catalog of ${pageItems} takes (${most}: 4× the catalog, or 10,000 more); nothing was downloaded, sent or spent`,
      );
    }
  };

  /** Refuses a server model this device cannot take (before a sync trains, spends or sends anything). */
  private readonly checkServerModel = (global: ItemTable): void => {
    if (global.dim !== this.table.dim) {
      throw new ModelError(`the server's model has dim ${global.dim}, this device uses ${this.table.dim}: set options.model.dim to match`);
    }
    // A server serving another catalog (the page's ids renamed, another shop's server): an update
    // would be noise only, each sync spending ε for nothing, and nothing adopted would reach a
    // single item. Refused before anything is trained, recorded or sent; it depends only on the
    // public catalog and model, so it says nothing about the shopper.
    if (global.itemIds.length > 0 && !global.itemIds.some((id) => this.rows.has(id))) {
      const example = (ids: readonly string[]) => ids.slice(0, 2).map((id) => JSON.stringify(id)).join(', ');
      throw new ModelError(
        `the server's model shares no item id with this page's catalog (server: ${global.itemIds.length} items, e.g. ${example(global.itemIds)}; page: ${this.table.itemIds.length}, e.g. ${example(this.table.itemIds)}): it serves another catalog; nothing was sent and no ε spent`,
      );
    }
  };

  /**
   * The global model a sync in an earlier session stored ({@link GLOBAL_KEY}), if this engine's
   * server sent it and its bytes still hash to what was stored with them and decode; otherwise
   * undefined (the sync downloads the model). One from another server (another shop or environment
   * on the same dbName), or stored before the server was recorded with it, is not used: its hash in
   * If-None-Match would tell this server that the device synced elsewhere, and with which version.
   */
  private async storedGlobal(): Promise<{ table: ItemTable; hash: string } | undefined> {
    const saved = await this.store.getMeta(GLOBAL_KEY).catch(() => undefined);
    if (!isStoredBytes(saved)) return undefined;
    const server = this.serverKey();
    if (server === undefined || (saved as SavedGlobal).server !== server) return undefined;
    try {
      if (toHex(await sha256(saved.bytes)) !== saved.hash) return undefined;
      const held = { table: decodeModel(saved.bytes).table, hash: saved.hash };
      this.heldGlobal = held;
      return held;
    } catch {
      return undefined;
    }
  }

  /**
   * Records (in one transaction, as other tabs do) that a sync of this shopper joined `cohort`;
   * refuses when one already did: two tabs syncing at once may land in one cohort, where their
   * identical updates would add up before the noise.
   */
  private claimCohort = async (cohort: string): Promise<{ release(): Promise<void> }> => {
    await this.store.updateMeta<string[]>(COHORTS_KEY, (stored) => {
      const joined = readCohorts(stored).value;
      if (joined.includes(cohort)) {
        throw new AbortError(`sync stopped: another tab of this shop joined cohort ${cohort} with the same history (two updates of one shopper in one cohort would spend more ε than recorded); no update was sent and no ε was spent`);
      }
      return [...joined, cohort].slice(-MAX_COHORTS_KEPT);
    });
    // Only the sync that made the claim gives it back (it left the cohort while it formed).
    return { release: () => this.store.updateMeta<string[]>(COHORTS_KEY, (joined) => readCohorts(joined).value.filter((c) => c !== cohort)).then(() => undefined) };
  };

  /**
   * `sync({ contribute: false })`: the newest global model and the local step a sync takes on it,
   * nothing uploaded, no ε spent (so it works past the budget). When the version the weights build
   * on is still the newest, the server answers 304 and nothing is downloaded or changed.
   */
  private async pullRound(signal: AbortSignal): Promise<SyncResultInfo> {
    const { fed, budget, through, history, train, table } = await this.syncStart();
    const { egress, checkpoint } = this.egressBuffer();
    try {
      const r = await pullOnce({
        serverUrl: fed.serverUrl,
        fetch: this.opts.fetch,
        history,
        train,
        onEgress: (e) => egress.push(e),
        // Each request is in the stored log before it goes, as in a contributing sync.
        onCheckpoint: checkpoint,
        onProgress: this.syncProgress,
        signal,
        now: this.now,
        checkConfig: this.checkServerConfig,
        checkModel: this.checkServerModel,
        // Only to the server that sent that version (see storedGlobal).
        ...(this.saved.globalHash && this.saved.globalServer === this.serverKey() ? { knownHash: this.saved.globalHash } : {}),
      });
      if (r.changed) {
        if (r.localStepFailed) this.lastError = new ModelError(`sync: ${r.localStepFailed}; the global model is used as it came`);
        await this.adoptGlobal(r, through, table);
      }
      const accountant = (await this.spending()).total;
      return { version: this.table.version, sent: false, uploadedBytes: 0, epsilon: accountant.epsilon(fed.delta), budget, published: null, modelChanged: r.changed };
    } finally {
      await this.finalCheckpoint(checkpoint, egress);
    }
  }

  /**
   * A sync's last store of its egress entries. Failing (storage full) it does not turn the sync's
   * outcome into a failure (an update sent, its ε spent, would be retried, spending again): the
   * entries it could not store are named in `stats().lastError`.
   */
  private async finalCheckpoint(checkpoint: () => Promise<void>, egress: EgressEntry[]): Promise<void> {
    const epoch = this.dataEpoch;
    await checkpoint().catch((e: unknown) => {
      // Kept in memory, listed by audit() and egressLog(), and stored with the next events or request written.
      if (epoch === this.dataEpoch) this.unsavedEgress.push(...egress.splice(0));
      this.lastError = new StorageError(`sync: the egress log could not be stored when the sync ended (${(e as Error).message}); its last entries are kept in memory (audit() lists them) and stored with the next events or request written, or lost if the page closes first`, { cause: e });
    });
  }

  /** Egress entries of this data epoch whose write failed (storage full): listed, and stored with the next ones. */
  private unsavedEgress: EgressEntry[] = [];

  /**
   * A sync's egress entries as they come (`egress`), and `checkpoint`, which stores those not yet
   * stored (each once; kept for the next call when the write fails).
   */
  private egressBuffer(): { egress: EgressEntry[]; checkpoint: () => Promise<void> } {
    const egress: EgressEntry[] = [];
    const checkpoint = async () => {
      const entries = egress.splice(0);
      if (!entries.length) return;
      try {
        await this.appendEgress(entries);
      } catch (e) {
        // Kept for the next checkpoint (the sync's own `finally` tries again).
        egress.unshift(...entries);
        throw e;
      }
    };
    return { egress, checkpoint };
  }

  /**
   * What both kinds of sync start from: the federated options (consent checked), training settled,
   * the weights as stored, and the shopper's history with the key of its newest event.
   */
  private async syncStart() {
    const fed = this.syncAllowed();
    await this.training?.catch(() => undefined);
    await this.freshModel();
    const { profile, events } = await this.profile();
    return {
      fed,
      budget: fed.budget ?? DEFAULT_BUDGET,
      through: newestId(events),
      history: [{ itemIds: profile.map((p) => this.table.itemIds[p.row]!), weights: profile.map((p) => p.weight) }],
      train: { ...this.opts.training, seed: (this.opts.model?.seed ?? 1) + this.saved.trainSteps },
      /** The weights the sync starts from ({@link adoptGlobal} replaces them). */
      table: this.table,
    };
  }

  private async syncRound(signal: AbortSignal, receiveWhenSpent = false, dropOut?: () => boolean): Promise<SyncResultInfo> {
    // Before anything is sent (consent first: its refusal says more).
    this.assertRemembersSpending(this.syncAllowed());
    const { fed, budget, through, history, train, table } = await this.syncStart();
    const accountant = (await this.spending()).total;
    const { egress, checkpoint } = this.egressBuffer();
    // The release is recorded against the stored accountant in one transaction (recordRelease), never
    // by writing this sync's copy back: another tab's sync may have spent since this one read it.
    const delta = fed.delta;
    let released = false;
    const scope = this.ledgerScope();
    // With the shared ledger, the budget is checked and the release recorded there first, in one
    // transaction of it (another instance of the origin, another dbName, may have spent since), then
    // in this database's accountant. A tab closed between the two leaves ε counted that no upload
    // spent (the safe side). The upload's pending egress entry is stored in the same transaction as
    // the database's accountant, with the log so far: a tab closed just after it cannot keep the ε
    // without the request in the log.
    const recordRelease = async (noiseMultiplier: number, pending: EgressEntry): Promise<RdpAccountant> => {
      let after!: RdpAccountant;
      let shared: RdpAccountant | undefined;
      if (scope) {
        const own = readAccountant(await this.store.getMeta(PRIVACY_KEY)).value;
        // (One that cannot be read refuses here: it counts as spent.)
        own.assertCanSpend(noiseMultiplier, Infinity, delta);
        const legacy = own.toJSON();
        shared = (
          await recordInLedger(scope.server, scope.dbName, legacy, noiseMultiplier, (total) => {
            try {
              total.assertCanSpend(noiseMultiplier, budget, delta);
            } catch (e) {
              // Spent (partly) by the origin's other databases: say so, or the refusal of a database
              // that spent little reads as a bug.
              const mine = own.epsilon(delta);
              const all = total.epsilon(delta);
              if (!(e instanceof PrivacyBudgetError) || !(all > mine)) throw e;
              throw new PrivacyBudgetError(`${e.message}${otherDatabases(scope.dbName, mine)}`);
            }
          })
        ).total;
      }
      const buffered = egress.length;
      // With the entries an earlier write could not store (this one has room for them too).
      const epoch = this.dataEpoch;
      const held = this.unsavedEgress.splice(0);
      const entries = [...held, ...egress.slice(0, buffered), pending];
      const cutoff = this.recordCutoff();
      try {
        await this.store.updateMetaPair<AccountantState, EgressEntry[]>(PRIVACY_KEY, EGRESS_KEY, (stored, log) => {
          after = readAccountant(stored).value;
          // (With the ledger the budget was checked there: this database's part is recorded.)
          after.assertCanSpend(noiseMultiplier, shared ? Infinity : budget, delta);
          after.record(noiseMultiplier);
          return [after.toJSON(), egressWith(log, entries, cutoff)];
        });
      } catch (e) {
        if (epoch === this.dataEpoch) this.unsavedEgress.unshift(...held);
        throw e;
      }
      egress.splice(0, buffered);
      released = true;
      return shared ?? after;
    };
    const before = this.saved.globalHash;
    const held = this.heldGlobal ?? (await this.storedGlobal());
    try {
      const r = await syncOnce({
        serverUrl: fed.serverUrl,
        fetch: this.opts.fetch,
        ...(held ? { held } : {}),
        accountant,
        recordRelease,
        // Under secure aggregation: re-read before joining and while the cohort forms, so that a
        // release another tab spent meanwhile makes this device leave rather than drop out.
        storedAccountant: async () => (await this.spending()).total,
        claimCohort: this.claimCohort,
        // Past the budget the sync receives on the two requests it made, whoever asked: a refusal
        // the page then follows with a receiving sync would be a second pair that sets the device apart.
        whenBudgetSpent: 'receive',
        ...(dropOut ? { dropOut } : {}),
        budget,
        delta,
        history,
        train,
        onEgress: (e) => egress.push(e),
        onCheckpoint: checkpoint,
        onProgress: this.syncProgress,
        signal,
        now: this.now,
        checkConfig: this.checkServerConfig,
        checkModel: this.checkServerModel,
        ...(fed.cohortWaitMs !== undefined ? { cohortWaitMs: fed.cohortWaitMs } : {}),
      });
      // Sent as noise only because training failed on this history: the host sees why, the server not.
      if (r.localStepFailed) this.lastError = new ModelError(`sync: ${r.localStepFailed}; ${r.budgetSpent ? 'the global model is used as it came' : 'a noise-only update was sent in its place'}`);
      try {
        await this.adoptGlobal(r, through, table);
      } catch (e) {
        if (!(e instanceof StorageError) || !r.sent) throw e;
        // After the upload: the caller must not take this for a sync that sent nothing (and retry
        // it as one, spending again).
        throw new StorageError(`sync: the update was sent (${r.uploadedBytes} bytes, accepted by the server) and ε is spent (${r.epsilon.toFixed(3)} of ${budget}), but the global model received could not be saved: ${e.message}. The weights stored before the sync stay in use; the next sync downloads the model again`, { cause: e });
      }
      const info: SyncResultInfo = {
        version: r.global.version,
        modelChanged: r.globalHash !== before,
        sent: r.sent,
        uploadedBytes: r.uploadedBytes,
        epsilon: r.epsilon,
        budget,
        pending: r.server?.pending,
        published: r.server?.published ?? null,
        ...(r.cohort ? { cohortSize: r.cohort.size } : {}),
        ...(r.cohort?.outcome ? { cohortOutcome: r.cohort.outcome, recoveryShareSent: r.cohort.recoveryShareSent ?? false } : {}),
      };
      // A page's contributing sync is refused (the issue's contract), with the model it received.
      if (r.budgetSpent !== undefined && !receiveWhenSpent) {
        const scope = this.ledgerScope();
        // (Only the wording: a store closed meanwhile leaves the refusal as it is.)
        const view = scope ? await this.spending().catch(() => undefined) : undefined;
        const mine = view?.own.epsilon(delta);
        const spentElsewhere = scope && mine !== undefined && view!.total.epsilon(delta) > mine;
        throw new BudgetRefusal(spentElsewhere ? `${r.budgetSpent}${otherDatabases(scope.dbName, mine)}` : r.budgetSpent, info);
      }
      return info;
    } catch (e) {
      if (e instanceof BudgetRefusal) throw e;
      if (e instanceof PrivacyBudgetError) throw new PrivacyBudgetError(`${e.message}; nothing was sent. Past the budget, call sync({ contribute: false }) instead of sync(): it receives the newest global model, sending nothing`);
      // The release was spent (the update may have left): the automatic sync counts this period as
      // done rather than retrying in 15 minutes, which would spend the budget on a failure that repeats.
      if (released) await this.noteSynced();
      throw e;
    } finally {
      // Whatever happened, what was sent (or tried) is logged (the ε spent was stored before the upload).
      await this.finalCheckpoint(checkpoint, egress);
    }
  }

  private autoSyncTimer: ReturnType<typeof setTimeout> | undefined;
  /** Set when another tab erased the shopper's data: no automatic sync for the rest of this session. */
  private autoSyncStopped = false;

  /**
   * The automatic sync's period in ms (`options.federated.autoSyncHours`), 0 when off: also without
   * IndexedDB (private mode), where nothing would hold the period, or the budget, across page loads
   * and every page would sync. (Before consent the store is in memory too; that is not this case.)
   */
  private get autoSyncMs(): number {
    if (this.store.kind === 'memory' && !this.opts.store && this.consent.personalization) return 0;
    return (this.opts.federated?.autoSyncHours ?? 0) * 3_600_000;
  }

  /** Stops the automatic sync's timer, if it is armed. */
  private disarmAutoSync(): void {
    clearTimeout(this.autoSyncTimer);
    this.autoSyncTimer = undefined;
  }

  /** (Re)arms the automatic sync's timer to look again in `delayMs`. Nothing when it is off or the engine has ended. */
  private scheduleAutoSync(delayMs: number): void {
    this.disarmAutoSync();
    if (this.autoSyncMs <= 0 || this.closed || this.closing || this.autoSyncStopped) return;
    const timer = setTimeout(() => {
      this.autoSyncTimer = undefined;
      this.autoSync().catch((e) => (this.lastError = e as Error));
    }, Math.min(MAX_TIMER_MS, Math.max(0, delayMs)));
    // Node (tests, simulation): the timer must not keep the process alive.
    (timer as { unref?: () => void }).unref?.();
    this.autoSyncTimer = timer;
  }

  /**
   * One look at the automatic sync (`options.federated.autoSyncHours`): when consent allows it,
   * no sync is under way, and none succeeded in the period (nor was tried in the last
   * {@link AUTO_SYNC_RETRY_MS}) in any tab, it claims the slot and syncs: a contributing sync while
   * the budget allows one more, a receiving one (`contribute: false`) once it does not. Failures
   * land in `stats().lastError`. Re-arms the timer; resolves with what it ran, or null.
   */
  private async autoSync(): Promise<SyncResultInfo | null> {
    const period = this.autoSyncMs;
    if (period <= 0 || this.closed || this.closing || this.autoSyncStopped) return null;
    const retry = Math.min(period, AUTO_SYNC_RETRY_MS);
    // Save-Data (a metered or slow connection, or the shopper asked for less data): the automatic
    // sync waits (the page's own sync() still runs); it is looked at again after the retry delay.
    if (!this.consent.personalization || !this.consent.federated || this.gpcBlocksSync() || this.syncing || saveDataOn()) {
      this.scheduleAutoSync(retry);
      return null;
    }
    const now = this.now();
    const notDue = new Error('not due');
    let state: AutoSyncState | undefined;
    const dueAt = (s: AutoSyncState) => {
      const at = s.nextAt ?? Math.max((s.lastSuccessAt ?? -Infinity) + period, (s.lastAttemptAt ?? -Infinity) + retry);
      // Further ahead than any schedule sets it (a period and a half at most): written on a clock
      // that has since gone back (a year ahead would stop the automatic sync for a year). Due now.
      return at > now + 1.5 * period ? now : at;
    };
    try {
      await this.store.updateMeta<AutoSyncState>(AUTO_SYNC_KEY, (s) => {
        state = s;
        if (s && now < dueAt(s)) throw notDue;
        // If this one fails, the next try comes after the retry delay (a success moves it on: noteSynced).
        return { ...s, lastAttemptAt: now, nextAt: now + withJitter(retry) };
      });
    } catch (e) {
      if (e !== notDue) {
        // Storage failed (for now): look again later rather than never this session.
        this.scheduleAutoSync(retry);
        throw e;
      }
      // Look again when the period (or the retry delay after a failure) has run out.
      this.scheduleAutoSync(Math.min(period, Math.max(1_000, dueAt(state!) - now)));
      return null;
    }
    try {
      if (this.closing || this.closed) return null;
      const { syncsLeft } = await this.privacyStats();
      if (this.closing || this.closed) return null;
      let r: SyncResultInfo;
      try {
        // A contributing sync records its success itself (noteSynced).
        // A budget that cannot pay at the server's σ (not known until the first sync, and the server
        // may have changed it) makes it a receiving sync, on the same two requests.
        r = await this.runSync({ contribute: syncsLeft !== 0 }, true);
        if (syncsLeft === 0) await this.noteSynced();
      } catch (e) {
        // (Joined a page's contributing sync, which refused for the budget: what it received, or
        // receive now when it received nothing.)
        if (!(e instanceof PrivacyBudgetError)) throw e;
        r = e instanceof BudgetRefusal ? e.received : await this.sync({ contribute: false });
        await this.noteSynced();
      }
      this.scheduleAutoSync(period);
      return r;
    } catch (e) {
      this.lastError = e as Error;
      if (e instanceof ModelError) {
        // The server's model does not fit this page (another dim, another catalog, values out of
        // range): not a failure a retry in 15 minutes mends, and each try downloads the whole model
        // (none is held to answer 304). The next one a whole period later, in every tab.
        const at = this.now() + withJitter(period);
        await this.store.updateMeta<AutoSyncState>(AUTO_SYNC_KEY, (s) => ({ ...s, nextAt: at })).catch(() => undefined);
        this.scheduleAutoSync(period);
      } else this.scheduleAutoSync(retry);
      return null;
    }
  }

  /** When a session's (or a new consent's) first look at the automatic sync comes: see {@link AUTO_SYNC_FIRST_JITTER_MS}. */
  private firstAutoSyncDelay(): number {
    return AUTO_SYNC_FIRST_DELAY_MS + randomUnit() * Math.min(AUTO_SYNC_FIRST_JITTER_MS, this.autoSyncMs / 2);
  }

  /** With automatic syncs on, a sync that succeeded (the page's own too) starts the period anew. */
  private async noteSynced(): Promise<void> {
    if (this.autoSyncMs <= 0) return;
    const t = this.now();
    await this.store.updateMeta<AutoSyncState>(AUTO_SYNC_KEY, (s) => ({ ...s, lastSuccessAt: t, nextAt: t + withJitter(this.autoSyncMs) })).catch((e) => {
      this.lastError = e as Error;
    });
  }

  private gpcBlocksSync(): boolean {
    return this.opts.globalPrivacyControl === true && this.opts.honorGlobalPrivacyControl !== false;
  }

  /** Every request the SDK sent, oldest first (at most the last 1,000, none older than `retention.maxAgeDays`). */
  egressLog(): Promise<EgressEntry[]> {
    return this.unlessClosing(() => this.egressLogOpen());
  }

  private async egressLogOpen(): Promise<EgressEntry[]> {
    this.assertOpen();
    return this.readEgress();
  }

  stats(): Promise<Stats> {
    return this.unlessClosing(() => this.statsOpen());
  }

  private async statsOpen(): Promise<Stats> {
    this.assertOpen();
    // From the event cache (recommend()'s), not a read of every stored event at each call.
    const ev = statsOf(await this.storedEvents());
    return {
      backend: this.backend.backend,
      backendReason: this.backend.reason,
      events: ev,
      model: {
        items: this.table.itemIds.length,
        dim: this.table.dim,
        version: this.table.version,
        trainedAt: this.saved.trainedAt,
        trainSteps: this.saved.trainSteps,
        pendingEvents: await this.store.countAfter(this.saved.trainedThroughId),
        neighbors: this.neighbors ? { items: this.neighbors.items, matched: this.neighbors.matched, width: this.neighbors.width, hash: this.neighbors.hash, source: this.neighbors.source } : null,
      },
      privacy: await this.privacyStats(),
      evicted: { retention: this.evictedByRetention, quota: this.evictedByQuota },
      queued: this.queue.length,
      dropped: this.dropped + this.droppedBeforeConsent,
      storage: this.store.kind,
      ...(this.lastError ? { lastError: `${this.lastError.name}: ${this.lastError.message}` } : {}),
    };
  }

  private async privacyStats(): Promise<Stats['privacy']> {
    const read = readAccountant(await this.store.getMeta(PRIVACY_KEY));
    if (read.damaged) this.noteDamaged(PRIVACY_KEY, 'the ε it held is unknown, so it counts as spent: contributing syncs are refused');
    // With a server and IndexedDB: what every instance of the origin spent with that server.
    const scope = this.ledgerScope();
    const { total: acc, own } = await this.spending();
    const fed = this.opts.federated;
    const federated = fed !== undefined && this.consent.federated && this.consent.personalization && !this.gpcBlocksSync();
    const budget = fed?.budget ?? DEFAULT_BUDGET;
    const delta = fed?.delta ?? 1e-5;
    const hours = this.autoSyncMs > 0 ? (fed?.autoSyncHours ?? 0) : 0;
    const auto = hours > 0 ? readAutoSync(await this.store.getMeta(AUTO_SYNC_KEY)).value : undefined;
    return {
      epsilon: acc.epsilon(delta),
      delta,
      budget,
      syncs: acc.releases,
      syncsLeft: acc.syncsLeft(budget, delta),
      thisDatabase: { epsilon: own.epsilon(delta), syncs: own.releases },
      ledger: scope ? PRIVACY_LEDGER_DB : null,
      federated,
      autoSync: hours > 0 ? { everyHours: hours, lastSuccessAt: auto?.lastSuccessAt ?? null, lastAttemptAt: auto?.lastAttemptAt ?? null } : null,
    };
  }

  /**
   * What a privacy team needs to check: what is stored, what left the device, ε spent, retention,
   * consent history. Schema documented in docs/PRIVACY.md; `schema` is bumped on any change.
   */
  audit(): Promise<AuditReport> {
    return this.unlessClosing(() => this.auditOpen());
  }

  private async auditOpen(): Promise<AuditReport> {
    this.assertOpen();
    await this.writeQueue().catch(() => undefined);
    // A change that write led to (another tab's stored decision followed) is reported applied.
    await this.consentChain;
    // What retention has due (the age limit hides it from reads; a lowered count limit) is deleted
    // now: the report lists what is stored.
    await this.retainNow();
    const events = await this.store.all();
    const ev = statsOf(events);
    const model = await this.store.getMeta<SavedModel>(MODEL_KEY);
    const neighborsRecord = await this.store.getMeta(NEIGHBORS_KEY);
    const storedNeighbors = isStoredBytes(neighborsRecord) ? (neighborsRecord as SavedNeighbors) : undefined;
    const globalRecord = await this.store.getMeta(GLOBAL_KEY);
    const storedGlobal = isStoredBytes(globalRecord) ? globalRecord : undefined;
    const storedOffers = storedClaim(await this.store.getMeta<StoredOffers>(OFFERS_KEY));
    const egress = await this.readEgress();
    // As export() gives it: with what the age limit already hides but the next write has not removed.
    const ledger = await this.store.offerLedger();
    const autoSync = readAutoSync(await this.store.getMeta(AUTO_SYNC_KEY)).value;
    const cohorts = readCohorts(await this.store.getMeta(COHORTS_KEY)).value;
    const probe = (await this.store.getMeta<Partial<BackendMemo> | null>(BACKEND_KEY)) ?? null;
    const privacy = await this.privacyStats();
    const fed = this.opts.federated;
    const gpc = this.opts.globalPrivacyControl === true;
    const sent = egress.filter((e) => !e.notSent);
    return {
      schema: 1,
      generatedAt: this.now(),
      storage: {
        kind: this.store.kind,
        database: this.store.kind === 'indexeddb' ? (this.opts.dbName ?? 'localrec') : null,
        schemaVersion: EVENT_SCHEMA_VERSION,
        stores: this.store.kind === 'indexeddb' ? ['events', 'meta'] : [],
        notOpened: await this.unopenedDatabase(),
      },
      events: {
        total: ev.total,
        byType: ev.byType,
        oldest: ev.oldest ?? null,
        newest: ev.newest ?? null,
        bytes: events.length ? new TextEncoder().encode(JSON.stringify(events)).length : 0,
        evictedThisSession: { retention: this.evictedByRetention, quota: this.evictedByQuota },
      },
      retention: { maxEvents: this.retention.maxEvents, maxAgeDays: this.retention.maxAgeDays },
      model: model
        ? { stored: true, version: model.version, items: model.itemIds.length, dim: model.dim, bytes: model.factors.byteLength + model.bias.byteLength, trainedAt: model.trainedAt ?? null }
        : { stored: false, version: this.table.version, items: this.table.itemIds.length, dim: this.table.dim, bytes: 0, trainedAt: null },
      neighbors: this.neighbors
        ? {
            stored: storedNeighbors?.hash === this.neighbors.hash,
            hash: this.neighbors.hash,
            items: this.neighbors.items,
            matched: this.neighbors.matched,
            width: this.neighbors.width,
            bytes: this.neighbors.bytes,
            source: this.neighbors.source,
            savedAt: storedNeighbors?.hash === this.neighbors.hash ? (storedNeighbors.savedAt ?? null) : null,
            checkedAt: storedNeighbors?.hash === this.neighbors.hash ? (storedNeighbors.checkedAt ?? storedNeighbors.savedAt ?? null) : null,
          }
        : null,
      offers: storedOffers ? { stored: true, version: storedOffers.version, offers: Array.isArray(storedOffers.offers) ? storedOffers.offers.length : 0, issuedAt: storedOffers.issuedAt } : null,
      globalModel: storedGlobal ? { stored: true, hash: storedGlobal.hash, bytes: storedGlobal.bytes.byteLength, server: (storedGlobal as SavedGlobal).server ?? null } : null,
      offerLedger: ledger
        ? { stored: true, offers: ledger.offers.length, lastPurchaseAt: ledger.lastPurchaseAt ?? null, bytes: new TextEncoder().encode(JSON.stringify(ledger)).length }
        : null,
      autoSync: autoSync ? { stored: true, lastAttemptAt: autoSync.lastAttemptAt ?? null, lastSuccessAt: autoSync.lastSuccessAt ?? null, nextAt: autoSync.nextAt ?? null } : null,
      backendProbe:
        typeof probe === 'object' && probe !== null && typeof probe.backend === 'string' && typeof probe.at === 'number' && typeof probe.ua === 'string'
          ? { stored: true, backend: probe.backend, at: probe.at, userAgent: probe.ua }
          : null,
      cohorts: cohorts?.length ? { stored: true, ids: cohorts.slice() } : null,
      egress: {
        // An upload cancelled before it left (`notSent`) is in the log, not in these totals.
        requests: sent.length,
        bytesSent: sent.reduce((a, e) => a + e.bytes, 0),
        notSent: egress.length - sent.length,
        log: egress,
      },
      privacy: {
        federatedConfigured: fed !== undefined,
        federatedActive: privacy.federated,
        serverUrl: fed?.serverUrl ?? null,
        epsilonSpent: privacy.epsilon,
        epsilonBudget: privacy.budget,
        delta: privacy.delta,
        syncs: privacy.syncs,
        syncsLeft: privacy.syncsLeft,
        thisDatabase: privacy.thisDatabase,
        ledger: privacy.ledger,
        autoSyncHours: privacy.autoSync?.everyHours ?? null,
        globalPrivacyControl: gpc,
        globalPrivacyControlHonored: gpc && this.opts.honorGlobalPrivacyControl !== false,
      },
      consent: { current: { ...this.consent }, history: trimConsent(this.consentHistory, this.recordCutoff()), droppedBeforeConsent: this.droppedBeforeConsent },
    };
  }

  /** All of the shopper's data in a machine-readable file (GDPR Art. 20): every stored event and the records kept about them. */
  exportData(): Promise<ExportFile> {
    return this.unlessClosing(() => this.exportDataOpen());
  }

  private async exportDataOpen(): Promise<ExportFile> {
    this.assertOpen();
    await this.writeQueue().catch(() => undefined);
    await this.retainNow();
    const model = await this.store.getMeta<SavedModel>(MODEL_KEY);
    const unreadable = (await this.store.unreadable?.()) ?? [];
    return {
      format: 'localrec-export',
      schema: 1,
      exportedAt: this.now(),
      events: await this.store.all(),
      consentHistory: trimConsent(this.consentHistory, this.recordCutoff()),
      egressLog: await this.readEgress(),
      privacy: (await this.store.getMeta<AccountantState>(PRIVACY_KEY)) ?? null,
      privacyLedger: await this.ledgerExport(),
      model: model ? { version: model.version, dim: model.dim, items: model.itemIds.length, trainedAt: model.trainedAt ?? null, trainSteps: model.trainSteps } : null,
      autoSync: (await this.store.getMeta<AutoSyncState>(AUTO_SYNC_KEY)) ?? null,
      offerLedger: (await this.store.offerLedger()) ?? null,
      cohorts: (await this.store.getMeta<string[]>(COHORTS_KEY)) ?? [],
      notOpened: await this.unopenedDatabase(),
      ...(unreadable.length ? { unreadableEvents: unreadable } : {}),
    };
  }

  /** The shared privacy ledger's records this engine reads (its server's, the legacy one), as stored; null without them. */
  private async ledgerExport(): Promise<Record<string, unknown> | null> {
    const scope = this.ledgerScope();
    return scope ? ledgerRecords(scope.server) : null;
  }

  /**
   * The database an earlier visit stored under this name, when this session runs without it (no
   * consent yet, or IndexedDB refused to open it): its contents are in neither audit() nor
   * export(). Null when there is none, or when it cannot be told (databaseExists; Firefox before
   * 126, which cannot list its databases, is asked by opening it without creating it).
   */
  private async unopenedDatabase(): Promise<string | null> {
    if (this.store.kind === 'indexeddb' || this.opts.store) return null;
    const name = this.opts.dbName ?? 'localrec';
    return (await databaseExists(name)) === true ? name : null;
  }

  private products: ProductIndex | undefined;

  /**
   * Installs the shop's signed offer catalog after checking its ECDSA P-256 signature against
   * `options.offers.publicKey`. A missing, wrong or tampered signature is refused (SignatureError)
   * and the previous catalog is kept.
   */
  setOffers(signed: unknown): Promise<SetOffersResult> {
    return this.unlessClosing(() => this.setOffersOpen(signed));
  }

  private async setOffersOpen(signed: unknown): Promise<SetOffersResult> {
    this.assertOpen();
    const key = this.opts.offers?.publicKey;
    if (!key) throw new ValidationError('options.offers.publicKey', "must be set to the shop's public key (JWK) to accept offer catalogs");
    const { catalog, envelope } = await verifySignedCatalog(signed, key);
    // Expired (signed expiresAt, a day's slack) or below the page's offers.minVersion: refused
    // whatever the device holds (docs/OFFERS.md, "What the signature protects").
    checkCatalogAccepted(catalog, this.now(), this.opts.offers?.minVersion);
    this.assertOpen();
    // A device never goes back to an older catalog (a replayed one could bring back withdrawn
    // offers): checked against the one held here and, in the same transaction as the write, the
    // stored one (another tab, or a concurrent call, may have installed a newer one), when it
    // verifies (updateStoredOffers: a record edited in storage is no floor).
    const check = (stored: VerifiedOffers | undefined): StoredOffers => {
      const installed = stored?.catalog;
      const floor = Math.max(installed?.version ?? -Infinity, this.offerCatalog?.version ?? -Infinity);
      if (catalog.version < floor) throw new ValidationError('catalog.version', `is ${catalog.version}, older than the installed catalog's ${floor}; the installed one is kept`);
      // At the same version, an earlier publication (yesterday's affinity, an offer since withdrawn
      // without a new version) is refused too.
      for (const held of [installed, this.offerCatalog]) {
        if (held && newerCatalog(held, catalog)) {
          throw new ValidationError('catalog.issuedAt', `is ${new Date(catalog.issuedAt).toISOString()}, before the installed catalog's (${new Date(held.issuedAt).toISOString()}) of the same version ${catalog.version}; the installed one is kept`);
        }
      }
      // Nor another catalog under the same version and issue time: either could be replayed over
      // the other for ever (an offer withdrawn by re-signing an edited file would come back).
      for (const held of [stored?.envelope, this.offerSigned]) {
        if (differentContent(held, envelope)) {
          throw new ValidationError('catalog.issuedAt', `is that of the installed catalog (version ${catalog.version}, issued ${new Date(catalog.issuedAt).toISOString()}), whose offers differ: a changed catalog needs a later issuedAt or a higher version; the installed one is kept`);
        }
      }
      return envelope;
    };
    // Kept in memory before consent; stored only once storing is allowed. What is stored is the
    // signed envelope: a catalog read back from the database is checked again (offers()), so one
    // edited in the browser's storage is not shown.
    if (this.consent.personalization) await this.updateStoredOffers((stored) => check(stored));
    else check(undefined);
    this.offerCatalog = catalog;
    this.offerSigned = envelope;
    if (this.consent.personalization) this.tell({ type: 'offers' });
    this.products ??= indexProducts(this.catalog.items);
    return { offers: catalog.offers.length, neverShown: offersNeverShown(catalog, this.products) };
  }

  private offerCatalog: OfferCatalog | undefined;
  /** The envelope `offerCatalog` was verified from (stored once consent allows). */
  private offerSigned: SignedOfferCatalog | undefined;

  private dropOffers(): void {
    this.offerCatalog = undefined;
    this.offerSigned = undefined;
  }

  /**
   * The stored catalog, its signature checked again with `options.offers.publicKey`: undefined
   * when none is stored, no key is set, or it does not verify (edited in the browser's storage,
   * signed with a key since retired, or stored in another form by an earlier release).
   */
  private async storedOffers(): Promise<VerifiedOffers | undefined> {
    return this.verifiedRecord(await this.store.getMeta<StoredOffers>(OFFERS_KEY));
  }

  /** Stored offers record `stored` when it verifies under `options.offers.publicKey` (see {@link storedOffers}). */
  private async verifiedRecord(stored: StoredOffers | undefined): Promise<VerifiedOffers | undefined> {
    const key = this.opts.offers?.publicKey;
    if (stored === undefined || !key) return undefined;
    // Not what a device writes (a value JSON cannot hold, next to the envelope): such records share
    // one recordKey, so none of them may count.
    const text = recordKey(stored);
    if (text === NOT_JSON) return undefined;
    // The envelope this engine verified itself (it wrote it): no second signature check.
    const held = this.offerSigned;
    const catalog = this.offerCatalog;
    if (held && catalog && recordKey(held) === text) return { catalog, envelope: held };
    try {
      return await verifySignedCatalog(stored, key);
    } catch (e) {
      if (e instanceof SignatureError || e instanceof ValidationError) return undefined;
      throw e;
    }
  }

  /**
   * Writes the offers record, in one transaction, as `decide` makes it from the stored one:
   * `stored` is that record verified, undefined when none is stored or it does not verify (edited in
   * the browser's storage, signed with a key the page no longer lists, stored bare by an earlier
   * release), so that such a record is neither the installed catalog nor the version floor: one
   * edited to claim version 9e15 would otherwise keep every catalog out until erase(). `current`
   * is the record as read in the transaction. A signature check is asynchronous and a transaction
   * cannot wait for it, so the record is verified first and compared in the transaction; when
   * another tab changed it in between, it is read and verified again.
   */
  private async updateStoredOffers(decide: (stored: VerifiedOffers | undefined, current: StoredOffers | undefined) => StoredOffers): Promise<StoredOffers> {
    for (let attempt = 1; ; attempt++) {
      const seen = await this.store.getMeta<StoredOffers>(OFFERS_KEY);
      const seenKey = recordKey(seen);
      const stored = await this.verifiedRecord(seen);
      const moved = new Error('the stored offer catalog changed');
      try {
        return await this.store.updateMeta<StoredOffers>(OFFERS_KEY, (current) => {
          // Thrown inside the transaction: nothing is written.
          if (recordKey(current) !== seenKey) throw moved;
          return decide(stored, current);
        });
      } catch (e) {
        if (e !== moved) throw e;
        if (attempt === 5) throw new StorageError('the stored offer catalog kept changing (other tabs installing catalogs) while it was checked; try again');
      }
    }
  }

  /** The offers most worth showing this shopper now, each with a reason (see docs/OFFERS.md). */
  offers(given: OffersOptions = {}): Promise<ShownOffer[]> {
    return this.unlessClosing(() => this.offersOpen(given));
  }

  private async offersOpen(given: OffersOptions = {}): Promise<ShownOffer[]> {
    this.assertOpen();
    knownKeys(given, 'options', OPTION_KEYS.offersCall);
    knownKeys(given.context, 'options.context', OPTION_KEYS.offerContext);
    // Checked before `now` is used below, and before a missing catalog answers [] (chooseOffers
    // checks them again): a wrong call fails alike with or without offers to choose from.
    checkOffersOptions(given);
    // A `now` before 2000 is a unit mistake (seconds, performance.now(), 0), not a replay of then:
    // read as one, the shopper's later offer events would not count and a used once-only offer
    // would come back.
    const at = given.context?.now;
    if (typeof at === 'number' && at < MIN_T) {
      throw new ValidationError('options.context.now', `must be a time in ms since the epoch from 2000-01-01 on (seconds or performance.now() read as 1970), got ${at}`);
    }
    // Without a seed each call explores afresh: a fixed default would make the same first draws,
    // and so the same explore decisions, on every call (with the default 0.1, never exploring).
    const options = given.seed === undefined ? { ...given, seed: randomSeed() } : given;
    if (!this.offerCatalog) {
      const stored = await this.storedOffers();
      if (stored && !this.offerCatalog) {
        this.offerCatalog = stored.catalog;
        this.offerSigned = stored.envelope;
      }
    }
    // This call's catalog: another tab's install may drop the held one while this call awaits.
    const catalog = this.offerCatalog;
    if (!catalog) return [];
    this.products ??= indexProducts(this.catalog.items);
    const now = options.context?.now ?? this.now();
    // An installed catalog that has since expired, or (read back from storage) is below the page's
    // offers.minVersion, shows nothing.
    if (catalogExpired(catalog, now) || catalog.version < (this.opts.offers?.minVersion ?? 0)) return [];
    // Caps, cool-downs and the audience also count what retention removed (src/events/offer-ledger.ts),
    // read after the events (reading them writes what was queued, which may remove old ones). Another
    // tab's write in between could count an event in both: the rules then err towards not showing.
    const ledgerAfter = async () => {
      const ledger = await this.store.offerLedger();
      if (!ledger) return {};
      // Live, what was folded in with times ahead of `now` counts as now (as `counted` below does).
      return { ledger: live ? ledgerAsOfNow(ledger, now) : ledger };
    };
    const snapshot = catalog.affinity;
    // Live: no `context.now`, or one no earlier than a day before this device's clock (a page
    // passing `Date.now()`, or its server's time); earlier, a replay asks as of that time.
    const live = options.context?.now === undefined || now >= this.now() - LIVE_OFFERS_TOLERANCE_MS;
    /**
     * What the rules count: the stored events and those still queued (a write that failed for the
     * quota keeps them there: a redemption must count for its cap all the same). Live, an offer
     * event or purchase stamped ahead of `now` (a page reporting its server's time) happened all
     * the same and counts as now: a once-only offer is not shown again until the clocks catch up.
     * In a replay, events after `now` are the future and do not count.
     */
    const counted = (stored: StoredEvent[]): StoredEvent[] => {
      let all = this.queue.length ? stored.concat(this.queue) : stored;
      if (live) all = all.map((e) => (e.t > now && ledgerKeeps(e) ? { ...e, t: now } : e));
      // In time order, as the store reads them: a queued event may be older than a stored one
      // (tracked with its own time), and the reason cites the last in-scope event as the latest.
      // (Stable: events of the same time keep their order.)
      for (let i = 1; i < all.length; i++) if (all[i - 1]!.t > all[i]!.t) return all === stored ? all.slice().sort((a, b) => a.t - b.t) : all.sort((a, b) => a.t - b.t);
      return all;
    };
    if (snapshot) {
      // The shop's learned affinity (docs/OFFERS.md): the same features and weights offers-eval
      // measures, from this shopper's purchases grouped into baskets (30 minutes apart or less).
      const events = counted(await this.storedEvents());
      const kept = await ledgerAfter();
      const baskets = purchaseBaskets(events, offerScopeLookup(catalog.offers, this.products), { now });
      const p = predictAffinity(snapshot, baskets, now, catalog.offers.map((o) => o.id));
      return chooseOffers(
        { catalog, products: this.products, events, affinity: { scope: (offer) => p.get(offer.id) ?? 0 }, ...kept },
        { ...options, context: { ...options.context, now } },
      );
    }
    await this.freshModel();
    // The profile as it stood at `now`: a call for an earlier time must not rank by what came after.
    const stored = await this.storedEvents();
    const profile = this.profileOf(stored.filter((e) => e.t <= now), now);
    const events = counted(stored);
    const kept = await ledgerAfter();
    const z = userVector(this.table, profile);
    const scores = await this.scoring((s) => s.scoreAll(z));
    let max = -Infinity;
    for (const v of scores) max = Math.max(max, v);
    let sum = 0;
    const p = new Float32Array(scores.length);
    for (let i = 0; i < scores.length; i++) sum += p[i] = Math.exp(scores[i]! - max);
    return chooseOffers(
      { catalog, products: this.products, events, affinity: (id) => {
        const r = this.rows.get(id);
        return r === undefined ? 0 : Math.min(1, (ITEMS_PER_BASKET * p[r]!) / sum);
      }, ...kept },
      { ...options, context: { ...options.context, now } },
    );
  }

  /** The current item table (a snapshot), e.g. for a federated update. */
  itemTable(): ItemTable {
    return this.table;
  }

  /**
   * Writes what is queued, stops a training run under way (at its next step; it saves nothing, and
   * its train() callers get an AbortError), and releases the store and tensors. Events
   * are refused from its start; a failed last write rejects it (a StorageError naming the events
   * lost) once everything is released.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.disarmAutoSync();
    // A sync still waiting (for its cohort, or for the cohort's end) stops now; one past its upload
    // keeps its ε, written before the store closes.
    this.cancelAllSyncs();
    // A neighbour file still downloading is not worth waiting for: the next session fetches it.
    this.closing = true;
    this.neighborAbort?.abort();
    // Nor a training run (up to 1000 epochs): it stops at its next step and saves nothing.
    this.stopTrainingRun('training stopped by close()');
    await this.syncing?.catch(() => undefined);
    // A consent change under way settles first: a grant opening the database installs its store,
    // which is then closed below, not left open.
    await this.consentChain;
    // Writes already under way end first (a failed one puts its batch back in the queue; another
    // may start meanwhile, from the batching timer or a call that reads), then the last write:
    // what it cannot store is lost, and the caller hears of it (once everything is released).
    await this.writesSettled();
    let lost: unknown;
    await this.writeQueue().catch((e: unknown) => (lost = e));
    await this.writesSettled();
    const queued = this.queue.length;
    if (queued > 0) lost ??= new StorageError('the store did not take them');
    // (Aborted again: one started while close() waited, before `closing` could stop it.)
    this.neighborAbort?.abort();
    await this.neighborsLoading;
    await this.training?.catch(() => undefined);
    this.closed = true;
    this.updateWithdrawalLock();
    this.channel?.close();
    await this.inbox;
    // A reload under way (another tab's weights) ends first: its scorer is disposed with this one.
    await this.reloading?.catch(() => undefined);
    this.scorer.dispose();
    this.store.close();
    if (lost !== undefined) {
      throw new StorageError(`close(): the last ${queued} queued event(s) could not be written and are lost: ${lost instanceof Error ? lost.message : String(lost)}`, { cause: lost });
    }
  }

  /** Resolves once no write is under way (each may chain another: waited until none is left). */
  private async writesSettled(): Promise<void> {
    for (let seen: Promise<void> | undefined; seen !== this.flushing; ) await (seen = this.flushing);
  }

  /**
   * Deletes every event and the saved weights, and the database itself. A training run under way
   * stops at its next step and saves nothing (its train() callers get an AbortError).
   */
  async erase(): Promise<void> {
    this.disarmAutoSync();
    // No new sync may start (sync() and the automatic one check it) while erasing waits for what runs.
    this.closing = true;
    this.dataEpoch++;
    this.unsavedEgress = [];
    this.queue = [];
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.dropEventCache();
    // No sync may send anything, or write anything, once erasing has begun.
    this.cancelAllSyncs(true);
    this.neighborAbort?.abort();
    // A training run stops at its next step, saving nothing: its weights would be deleted anyway.
    this.stopTrainingRun('training stopped by erase()');
    await this.syncing?.catch(() => undefined);
    // A grant under way has installed its store (destroyed below) before erasing goes on.
    await this.consentChain;
    await this.training?.catch(() => undefined);
    // A write under way ends before the database goes (what it took is not written: dataEpoch).
    await this.flushing;
    // A neighbour fetch still in flight writes nothing once closed (saveNeighbors, appendEgress).
    this.closed = true;
    // A reload under way (another tab's weights) ends first: its scorer is disposed with this one.
    await this.reloading?.catch(() => undefined);
    this.scorer.dispose();
    // When the deletion began: a tab that found the database gone after it (watchStore) already
    // handled it and skips the message.
    const erasedAt = this.now();
    await this.store.destroy();
    await this.deleteStoredDatabase();
    // Nothing of the shopper's is left: this database's part of the shared privacy ledger goes too
    // (the other databases' spend stays), so that its budget starts anew, as the database's own
    // accountant did when it went with the database.
    const ledgerError = await this.forgetLedgerPart();
    // The shop's other tabs drop what they hold from the erased database (erasedElsewhere).
    this.tell({ type: 'erased', at: erasedAt });
    this.updateWithdrawalLock();
    this.channel?.close();
    // The database is gone, but not the ε it recorded in the ledger: said, not passed over.
    if (ledgerError) throw ledgerError;
  }

  /**
   * Deletes the IndexedDB database this engine would use when its current store is not that
   * database: before consent the engine runs on memory, but an earlier session with consent may
   * have left the database behind, and erasing or withdrawing consent must remove it too.
   */
  private async deleteStoredDatabase(): Promise<void> {
    // A store the caller gave (not the one in use: the session started without consent) holds
    // what an earlier session stored in it.
    if (this.opts.store) {
      if (this.opts.store !== this.store) await this.opts.store.destroy();
      return;
    }
    if (this.store.kind === 'indexeddb') return;
    await deleteEventDatabase(this.opts.dbName ?? 'localrec');
  }
}

/**
 * A contributing sync the budget could not pay for, refused after it received the newest global
 * model on its two requests (kept, and in `received`): nothing was sent.
 */
/**
 * What a budget refusal adds when the origin's other databases made part of the releases counted
 * against this server (the privacy ledger): a database that spent little is told where the rest went.
 */
function otherDatabases(dbName: string, mine: number): string {
  return `; this database's own releases (options.dbName "${dbName}") come to ε ${mine.toFixed(3)}, the others were made to the same server by this origin's other localrec databases (the privacy ledger "${PRIVACY_LEDGER_DB}"; docs/PRIVACY.md, "Several shops, catalogs or environments on one origin")`;
}

class BudgetRefusal extends PrivacyBudgetError {
  constructor(
    why: string,
    readonly received: SyncResultInfo,
  ) {
    super(`${why}; nothing was sent, and the newest global model was received with this sync (version ${received.version}). Past the budget, call sync({ contribute: false }) instead of sync(): it receives without being refused`);
  }
}

/**
 * How far before the device's clock an `offers({ context: { now } })` may ask and still be live
 * (events stamped after it count as now) rather than a replay as of that time: as far as an event
 * may be stamped ahead of it ({@link FUTURE_SLACK_MS}, a day). A page passing its server's time on
 * a device whose clock is fast (minutes, or hours in a wrong time zone) asks live: as a replay, the
 * impressions and redemptions the device has just stamped would be "the future", and every cap,
 * cool-down and once-only offer would be passed over.
 */
const LIVE_OFFERS_TOLERANCE_MS = FUTURE_SLACK_MS;

/** What {@link Engine.scoring} gets when the backend was found lost before a pass's reads came back. */
const LOST: unique symbol = Symbol('backend lost');

/**
 * Whether `e`, thrown by a tfjs op or read, means the backend failed: anything that is not one of
 * localrec's own errors (a ValidationError, ClosedError, the engine's AbortError…), e.g. a
 * `WebAssembly.RuntimeError` (out of memory), a GPU's DOMException ("Device was lost"), a WebGL
 * shader that failed to link.
 */
function isBackendFailure(e: unknown): boolean {
  return !(e instanceof LocalrecError);
}

function describeError(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

/**
 * The offers of `catalog` the policy can never show with this product catalog, and why: no price
 * basis (no `hints.typicalSpend`, no priced product in scope, no `minBasket`: worth 0 per use), or
 * a discount that costs at least the margin it brings (net value per use ≤ 0).
 */
function offersNeverShown(catalog: OfferCatalog, products: ProductIndex): SetOffersResult['neverShown'] {
  const out: SetOffersResult['neverShown'] = [];
  for (const offer of catalog.offers) {
    const e = offerEconomics(offer, products);
    if (e.net > 0) continue;
    const why =
      e.typicalSpend > 0
        ? `its discount and cost (${round2(e.discountCost)}) are at least the margin on a typical use (${round2(e.value)})`
        : 'no price to value it by: no hints.typicalSpend, no priced product of the catalog in its scope, no minBasket';
    out.push({ offerId: offer.id, why });
  }
  return out;
}

const round2 = (x: number): number => Math.round(x * 100) / 100;

/** What the offers record of the store holds: the signed envelope setOffers() verified. */
type StoredOffers = SignedOfferCatalog;

/** A stored offers record that verified: its catalog (checked) and envelope. */
type VerifiedOffers = { catalog: OfferCatalog; envelope: SignedOfferCatalog };

/** The {@link recordKey} of every record JSON cannot hold (none of them counts: verifiedRecord). */
const NOT_JSON = '\u0000not JSON';

/**
 * A stored offers record as text that two reads of the same record give alike (undefined when
 * none is stored; {@link NOT_JSON} for a record JSON cannot hold).
 */
function recordKey(r: unknown): string | undefined {
  if (r === undefined) return undefined;
  try {
    return canonicalJson(r);
  } catch {
    return NOT_JSON;
  }
}

/**
 * The version and issue time a stored record claims, unchecked: what audit() reports of the
 * record (the envelope; or, as an earlier release stored it, the catalog itself). Never a floor:
 * only a record that verifies keeps a catalog out (updateStoredOffers). Undefined for a record of
 * no known form.
 */
function storedClaim(r: StoredOffers | OfferCatalog | undefined): OfferCatalog | undefined {
  const claims = (c: unknown): c is OfferCatalog =>
    typeof c === 'object' && c !== null && typeof (c as OfferCatalog).version === 'number' && typeof (c as OfferCatalog).issuedAt === 'number';
  const inner = (r as StoredOffers | undefined)?.catalog;
  return claims(inner) ? inner : claims(r) ? r : undefined;
}

/**
 * Whether `held` (an envelope this device verified) claims the version and issue time of `next`
 * but holds another catalog (compared as the canonical JSON that is signed). A renewal is not
 * another catalog: `next` the same as `held` but for a later `expiresAt` (both set; the same file
 * signed again with a new expiry), which only extends the one the device holds; the reverse,
 * `held` renewed and the earlier signing replayed, is refused.
 */
function differentContent(held: StoredOffers | undefined, next: SignedOfferCatalog): boolean {
  const claim = storedClaim(held);
  if (!claim || claim.version !== next.catalog.version || claim.issuedAt !== next.catalog.issuedAt) return false;
  try {
    if (canonicalJson(held!.catalog) === canonicalJson(next.catalog)) return false;
    const before = held!.catalog.expiresAt;
    const after = next.catalog.expiresAt;
    const renewal = typeof before === 'number' && typeof after === 'number' && after > before && canonicalJson({ ...held!.catalog, expiresAt: undefined }) === canonicalJson({ ...next.catalog, expiresAt: undefined });
    return !renewal;
  } catch {
    return false;
  }
}

/** Whether catalog `a` supersedes `b`: a higher version, or the same one issued later. */
function newerCatalog(a: OfferCatalog, b: OfferCatalog): boolean {
  return a.version > b.version || (a.version === b.version && a.issuedAt > b.issuedAt);
}

/** The two consents an engine follows. */
type Consent = { personalization: boolean; federated: boolean };

/**
 * `records` without those older than `cutoff` (`retention.maxAgeDays`), but never without the latest:
 * the consent in force, which the next session's start compares with (and may apply again).
 */
export function trimConsent(records: readonly ConsentRecord[], cutoff: number): ConsentRecord[] {
  return records.filter((r, i) => !(r.t < cutoff) || i === records.length - 1).slice(-CONSENT_MAX);
}

/** The consent history keeps at most this many most recent records (a page toggling consent in a loop must not grow it for a year). */
export const CONSENT_MAX = 1000;

/** `log` without the entries older than `cutoff` (`retention.maxAgeDays`): the log is no record of visits kept past it. */
export function trimEgress(log: readonly EgressEntry[], cutoff: number): EgressEntry[] {
  return log.filter((e) => !(e.t < cutoff));
}

/** The records of both lists, each once (same time, values and source), in time order (stable). */
export function mergeConsentRecords(a: readonly ConsentRecord[], b: readonly ConsentRecord[]): ConsentRecord[] {
  const key = (r: ConsentRecord) => `${r.t}|${r.personalization}|${r.federated}|${r.source}`;
  const seen = new Set<string>();
  const out: ConsentRecord[] = [];
  for (const r of [...a, ...b]) {
    const k = key(r);
    if (seen.has(k)) continue;
    seen.add(k);
    // Whole: a newer release's fields survive this tab's write.
    out.push({ ...r });
  }
  return out.sort((x, y) => x.t - y.t);
}

/** A fresh exploration seed from the platform's CSPRNG (offers() without `seed`). */
function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0]!;
}

/** A uniform draw in [0, 1) from the platform's CSPRNG (the automatic syncs' random delays). */
function randomUnit(): number {
  return randomSeed() / 2 ** 32;
}
