/**
 * One federated round from the device's side, as plain code that runs in the browser worker and in
 * Node (simulation, tests): pull the global model, train on the shopper's own data, send a clipped,
 * noised, quantized update. What leaves the device is exactly the documented update body; every
 * request is reported to `onEgress` so the SDK can keep an egress log.
 */
import { AbortError, isModelError, isNetworkError, isValidationError, ModelError, NetworkError, PrivacyBudgetError, StorageError, syncCancelled, ValidationError } from '../errors.js';
import type { SyncProgress } from '../types.js';
import { MAX_ITEMS as MAX_SERVER_ITEMS } from '../model/catalog.js';
import { cloneItemTable, type ItemTable } from '../model/item-table.js';
import { checkTrainConfig, trainItemTable, type Sequence, type TrainConfig } from '../model/train.js';
import { buildClientUpdate, checkTrainedPart, noisedDelta, type TrainedPart } from './client-update.js';
import { cryptoUniform, DEFAULT_BUDGET, DEFAULT_DELTA, type RdpAccountant } from './dp.js';
import { subspaceUpdate } from './subspace.js';
import { addSelfMask, checkConfirmations, checkSecAggParams, confirmationTags, encodeFixedPoint, encodeMaskedUpdate, maskValues, MASK_VERSION, MAX_COHORT_TIMEOUT_MS, recoveryShare, secAggKeyPair, survivorComponents, usesSelfMask, type SecAggParams } from './secagg.js';
import { beyondModelMagnitude, bytesEqual, decodeModel, fromHex, MAX_ID_BYTES, MAX_MODEL_MAGNITUDE, MAX_WIRE_DIM, sha256, toHex } from './wire.js';

/** Server settings from `GET /v1/config` that the client needs. */
export interface ServerConfig {
  dim: number;
  items: number;
  clip: number;
  noiseMultiplier: number;
  bits: number;
  blockSize: number;
  version: number;
  minClients: number;
  /** Set when the server runs secure aggregation (uploads are masked, in cohorts). */
  secureAggregation?: (SecAggParams & { timeoutMs?: number; uploadTimeoutMs?: number; maskVersion?: number }) | null;
  /** Rows of the table federated training updates: the first `trainRows` (absent: all of them). */
  trainRows?: number;
  /** Whether federated training updates the biases (absent: true). */
  trainBiases?: boolean;
  /**
   * The server's aggregator. `subspace`: the device sends a subspace-iteration step
   * (src/federated/subspace.ts) instead of training locally. Absent or anything else: local training.
   */
  aggregator?: string;
  /** `subspace` only: the scale of the published factors. */
  subspaceScale?: number;
}

/** The part of the table the server trains, from its config (older servers: the whole table). */
export function trainedPart(config: ServerConfig): TrainedPart {
  return { rows: config.trainRows ?? config.items, biases: config.trainBiases ?? true };
}

/** One request the SDK sent, as kept in the egress log. */
export interface EgressEntry {
  t: number;
  method: 'GET' | 'POST';
  /**
   * The federated server's requests: the path only, e.g. `/v1/updates` (the server is
   * `audit().privacy.serverUrl`; the SDK never puts data in a query string). The neighbour file:
   * its whole URL, host included (it may be on another host, a CDN), as the page configured it.
   */
  endpoint: string;
  /** `cohort`: secure aggregation's join (the body is a fresh public key) and cohort polls. */
  kind: 'config' | 'model' | 'update' | 'neighbors' | 'cohort';
  /**
   * The federated server's requests: the server they went to ({@link serverKey} of
   * `federated.serverUrl`), `endpoint` being the path under it; several shops or environments on
   * one database each name their own. Absent from the neighbour file's entries (their endpoint is
   * the whole URL) and from entries logged before it was recorded.
   */
  server?: string;
  /** Bytes of the request body (0 for GET). */
  bytes: number;
  /** Hex SHA-256 of the request body, so an auditor can match what was logged with what was sent. */
  bodySha256?: string;
  /** HTTP status; 0 when no answer came (offline, refused, still pending, or not sent). */
  status: number;
  /**
   * A request logged before it was sent, then stopped before it left: an upload cancelled (consent
   * withdrawn, close()) after its release was recorded, or whose log could not be stored (its ε is
   * spent); any other request cancelled between its pending entry and sending, or whose pending
   * entry could not be stored. Nothing left.
   */
  notSent?: true;
  /**
   * A request logged (and, in a sync, stored) just before it was sent: the upload once its release
   * is recorded, and every other request of a sync (the GETs, the join, each cohort poll, the
   * recovery steps) before each attempt. The entry for that attempt replaces it once it settles
   * (same method, endpoint and body hash). One left in the log means the page closed while the
   * request was on the wire: it may or may not have reached the server.
   */
  pending?: true;
}

/**
 * A server URL as the SDK records it (egress log, privacy ledger, stored global model): with the
 * host as URL parsing writes it (lower case, no default port, no trailing dot), percent-escapes of
 * unreserved characters decoded in the path, and no trailing slash, so that
 * `https://Agg.example.:443/%78/` and `https://agg.example/x` are one server (and one ε budget).
 * Another name for the same machine (an IP address, an alias) is another key: every instance of
 * an origin must spell the server's URL alike (docs/PRIVACY.md).
 */
export function serverKey(serverUrl: string): string {
  const u = new URL(serverUrl);
  const host = u.hostname.endsWith('.') ? u.hostname.slice(0, -1) : u.hostname;
  const path = u.pathname.replace(/%([0-9A-Fa-f]{2})/g, (esc, hex: string) => {
    const c = String.fromCharCode(parseInt(hex, 16));
    return /[A-Za-z0-9\-._~]/.test(c) ? c : esc.toUpperCase();
  });
  return `${u.protocol}//${host}${u.port ? `:${u.port}` : ''}${path.replace(/\/+$/, '')}`;
}

/**
 * The `fetch` the SDK calls: the platform's own (`globalThis.fetch`) fits, as does any function
 * taking these options. (The body is `Uint8Array<ArrayBuffer>`, what `BodyInit` takes, so that the
 * DOM's `fetch` type-checks as one.)
 */
export type FetchLike = (
  input: string,
  init?: { method?: string; body?: Uint8Array<ArrayBuffer>; headers?: Record<string, string>; signal?: AbortSignal; credentials?: 'omit'; cache?: 'no-store'; redirect?: 'error'; referrerPolicy?: 'no-referrer' },
) => Promise<Response>;

/**
 * What every request of the SDK carries besides its own fields: no cookies or HTTP auth (the shop's
 * session must not ride along when the server shares the shop's origin), and no HTTP cache (a
 * cached model would make the browser send its own If-None-Match, after an erase too), and no
 * redirects (one would send the request, an update's body too, to another address than the one in
 * the egress log), and no `Referer` (the browser would otherwise name the page or worker script
 * the request came from: on the same origin its whole URL, query string included).
 */
export const PRIVATE_FETCH = { credentials: 'omit', cache: 'no-store', redirect: 'error', referrerPolicy: 'no-referrer' } as const;

export interface SyncOptions {
  serverUrl: string;
  fetch?: FetchLike;
  /** The device's privacy accountant; one sync is one release. */
  accountant: RdpAccountant;
  /**
   * Largest total ε this device may spend (default 8): a number > 0. `Infinity` means no limit, for
   * simulations only: it is the one budget under which a server announcing σ = 0 gets an update
   * with no noise at all (a finite budget refuses such a server). Anything else (NaN, 0, a
   * negative number, a string) is refused by name before any request.
   */
  budget?: number;
  delta?: number;
  /** The global model the device holds, if any, with its hash (skips the download when unchanged). */
  held?: { table: ItemTable; hash: string };
  /**
   * The shopper's own histories, as item ids in time order with confidence weights. Ids not in the
   * global model are ignored; a device uploads when some history has two distinct items
   * ({@link hasHistory}), whatever the model knows of them.
   */
  history: Array<{ itemIds: string[]; weights: number[] }>;
  train?: Partial<TrainConfig>;
  onEgress?: (e: EgressEntry) => void;
  /**
   * Called (and awaited) once the release is recorded in the accountant and before the update
   * leaves, then again once it has been sent: the place to persist the accountant (and the egress
   * log so far), so that a tab closed mid-sync (or while the device waits for its cohort) cannot
   * lose the ε it spent. A rejection then stops the sync before the update is sent. Also called
   * before every other request goes out, once its `pending` entry is logged, so that a tab closed
   * while a request waits for its answer leaves it in the stored log: a rejection there stops the
   * sync before that request is sent (StorageError; the entry is logged `notSent`), as no request
   * may leave without its entry stored; except the requests other devices depend on once this one
   * committed (the upload's retries, the leave of a device that must upload after all, its polls
   * once committed, the recovery steps), which go all the same (stopping them would sink the
   * cohort) and are stored at the sync's end when storage accepts them then (the engine names
   * them in `stats().lastError` otherwise). Also after the answers that matter (the GETs, the join,
   * each poll), where a rejection is ignored (the next call stores it).
   */
  onCheckpoint?: () => void | Promise<void>;
  /**
   * Records this sync's release durably, just before the update leaves, and returns the
   * accountant as stored with it. A device whose accountant other writers share (the same shop open
   * in two tabs) re-reads the stored state here, refuses with a PrivacyBudgetError if this release
   * would pass the budget, and writes it with the release in one step; otherwise two tabs could
   * each spend what is left, or one overwrite the other's record. `pending` is the upload's egress
   * entry (`pending: true`), to be stored in the same step: a tab closed right after the release was
   * recorded then leaves the request in the stored log with the ε it spent, never the ε alone. (It
   * is not passed to `onEgress` as well; the entry that settles it is.) Default: `accountant.record`,
   * the entry going to `onEgress` and `onCheckpoint` just after.
   */
  recordRelease?: (noiseMultiplier: number, pending: EgressEntry) => Promise<RdpAccountant>;
  /**
   * Secure aggregation: the accountant as stored now (other writers, another tab, may have spent
   * from it since this sync read `accountant`). Checked just before the join and after every poll
   * while the cohort forms: a device this round's release no longer fits leaves the cohort and sends
   * nothing, instead of finding out at its upload (`recordRelease` refusing) and dropping out of a
   * full cohort, which sinks it without dropout recovery. Default: `accountant`.
   */
  storedAccountant?: () => Promise<RdpAccountant>;
  /**
   * What a device whose budget cannot pay for this round does, once it has the model (the budget
   * is checked then, so that such a device makes the same two requests as any other): `refuse`
   * (default) throws a PrivacyBudgetError; `receive` goes on as a receiving sync ({@link pullOnce})
   * and returns `sent: false, budgetSpent: true` (automatic syncs: no second pair of requests).
   */
  whenBudgetSpent?: 'refuse' | 'receive';
  /**
   * Once `signal` has aborted: true when the device must drop out of a full cohort rather than
   * upload (an erase, a consent withdrawal), as `signal.abort(DROP_OUT)` says too. For a caller
   * whose signal may have been aborted plainly first (a signal keeps its first reason).
   */
  dropOut?: () => boolean;
  /**
   * Secure aggregation: called once this device has joined cohort `cohort`, before it waits for
   * the cohort to fill; rejects when another sync of the same shopper (another tab) joined that
   * cohort. Two uploads of one history in one cohort add up before the noise (sensitivity 2C
   * against σC), which the accountant, charging two releases at σ, would under-count. On a
   * rejection the device leaves the cohort (or, once it is full, drops out of it) and sends
   * nothing. The claim is given back (`release`) when this device leaves the cohort while it
   * forms, so that its next sync may join it again.
   */
  claimCohort?: (cohort: string) => Promise<void | { release?(): Promise<void> }>;
  /** Attempts for a request that fails with a network error or a 5xx (default 3), with backoff. */
  attempts?: number;
  /** First backoff delay in ms (doubles each retry; default 500). */
  backoffMs?: number;
  /**
   * How long one attempt of a request may wait for its answer, body included (default 60 s, the
   * {@link REQUEST_TIMEOUT_MS}): past it the attempt counts as a network failure (logged with
   * status 0, retried as one). A server that never answers must not hold a sync, nor `close()`
   * and `erase()` that wait for it, for ever.
   */
  requestTimeoutMs?: number;
  /** Secure aggregation: how often to ask whether the cohort is full (default 1000 ms). */
  cohortPollMs?: number;
  /** Secure aggregation: how long to wait for the cohort to fill (default the server's timeout). */
  cohortWaitMs?: number;
  /** Where the sync is ({@link SyncProgress}); called synchronously, so keep it cheap. */
  onProgress?: (p: SyncProgress) => void;
  /**
   * Cancels the sync. Before the upload: rejects with an {@link AbortError}, nothing sent, no ε
   * spent (a cancel seen after the release was recorded stops the upload too, with that ε spent); a device waiting for its cohort to fill gives its place back first
   * (`POST …/members/:i/leave`). Once its cohort is full the device uploads anyway (the other
   * members' round depends on it) — but not with dropout recovery (`minSurvivors` < K): its upload
   * would be unmasked only with its own recovery share, which a cancelled device never gives, so it
   * drops out instead (AbortError, nothing sent) and the others recover without it; the upload
   * itself is never interrupted; after it, only the wait for the cohort's end stops (`outcome: 'left'`).
   */
  signal?: AbortSignal;
  now?: () => number;
  /**
   * Checks the server's model before anything is trained, recorded or sent (the engine: its `dim`
   * against the device's); throwing stops the sync with nothing spent.
   */
  checkModel?: (global: ItemTable) => void;
  /**
   * Checks the server's `/v1/config` before the model is downloaded (the engine: its `dim`, and
   * that its `items` suit the page's catalog, which bounds the download); throwing stops the sync
   * after that one request, with nothing spent.
   */
  checkConfig?: (config: ServerConfig) => void;
}

export interface SyncResult {
  /** The global model this round was based on. */
  global: ItemTable;
  globalHash: string;
  /** The global model plus this shopper's local training: what the device should score with. */
  local: ItemTable;
  /** Whether an update was sent (false when the shopper has nothing to learn from yet). */
  sent: boolean;
  uploadedBytes: number;
  /** ε spent after this sync. */
  epsilon: number;
  /** The server's reply to the update, when one was sent and the answer was the documented JSON (absent otherwise: the update was still accepted). */
  server?: { pending: number; minClients: number; published: number | null };
  /**
   * Under secure aggregation: the cohort the masked update went to. With recovery on (the server's
   * `minSurvivors` < K) the device stays until the cohort ends, and `outcome` says how: `published`
   * (its sum is in a version, `recoveryShareSent` when this device helped recover it), `aborted`,
   * or `left` (still open when the device stopped waiting, or the device refused the server's list
   * of dropped members).
   */
  cohort?: { id: string; index: number; size: number; outcome?: 'published' | 'aborted' | 'left'; recoveryShareSent?: boolean; note?: string };
  /**
   * Set when local training failed or overflowed on this history: why. The update sent in its
   * place was noise only (a zero delta), so that the upload says nothing about the history; the
   * host sees the reason here (the engine puts it in `stats().lastError`), the server does not.
   */
  localStepFailed?: string;
  /** Set (with `whenBudgetSpent: 'receive'`) when the budget could not pay for this round: why; nothing was sent. */
  budgetSpent?: string;
}

/** Waits `ms`, or less when `signal` aborts first (the caller checks which). */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Persists what the sync logged so far where a failure must not stop it (after a request that has
 * already gone: the join, the upload, a recovery share); the sync's own end tries again.
 */
async function checkpointQuietly(o: Pick<SyncOptions, 'onCheckpoint'>): Promise<void> {
  try {
    await o.onCheckpoint?.();
  } catch {
    // kept for the next checkpoint
  }
}

/** A cancel seen after the release was recorded: nothing was sent, but that ε is spent. */
function releasedButCancelled(): AbortError {
  return new AbortError('sync cancelled before the upload, after its release was recorded: no update was sent, but its ε is spent');
}

/**
 * The abort reason that makes a sync drop out of a full cohort instead of uploading (`signal.abort(DROP_OUT)`):
 * the shopper erased their data or withdrew consent, which no server's "the cohort is full" may
 * override. Any other cancel lets a device whose cohort has filled upload after all, since the
 * other members' round depends on it (without dropout recovery; with it, a cancelled device drops
 * out too: the others recover without it).
 */
export const DROP_OUT = 'localrec:drop-out';

/** Whether the caller cancelled with {@link DROP_OUT}. */
function mustDropOut(o: Pick<SyncOptions, 'signal' | 'dropOut'>): boolean {
  return o.signal?.aborted === true && (o.signal.reason === DROP_OUT || o.dropOut?.() === true);
}

/** Throws an {@link AbortError} when the caller cancelled; `when` says where the sync stopped. */
function checkAborted(o: Pick<SyncOptions, 'signal'>, when: string): void {
  if (o.signal?.aborted) throw syncCancelled(when);
}

/** What {@link request} (and {@link fetchServerConfig}, {@link pullModel}) need of the caller's options: a part of {@link SyncOptions}. */
export type RequestOptions = Pick<SyncOptions, 'serverUrl' | 'fetch' | 'attempts' | 'backoffMs' | 'requestTimeoutMs' | 'onEgress' | 'onCheckpoint' | 'signal' | 'now'>;

/** Default {@link SyncOptions.requestTimeoutMs}: far above the server's longest poll (15 s). */
export const REQUEST_TIMEOUT_MS = 60_000;
/**
 * How long a device that was told its cohort is full (a 409 to its leave) goes on polling a cohort
 * the server still calls forming before it gives up (an honest server has it ready at once).
 */
const COMMITTED_GRACE_MS = 60_000;

/**
 * How much of an answer's body {@link request} reads: `max` bytes at most (`bound` names what sets
 * that size, in the error), within the attempt's deadline. `optional`: the body is a courtesy (an
 * upload's reply, a leave's): one that does not come whole, or is too long, is read as empty instead
 * of failing a request the server took.
 */
interface BodyLimit {
  max: number;
  bound: string;
  optional?: boolean;
}

/** Replies whose body the device does not need (leave, recovery steps) or only glances at (an upload's round figures). */
const SMALL_REPLY: BodyLimit = { max: 4096, bound: 'a reply of this request', optional: true };
/** A refusal's `{ error, reason }`: read only for the message; a longer one is left unread. */
const ERROR_BODY_MAX = 8192;
/** `GET /v1/config` (about 1 KB). */
const CONFIG_LIMIT: BodyLimit = { max: 65_536, bound: 'a server config' };
/** `POST /v1/secagg/join`'s `{ cohort, index, size, status, token }`. */
const JOIN_LIMIT: BodyLimit = { max: 4096, bound: 'a join answer' };

/**
 * A member view (`GET …/members/:i`) of a cohort with these parameters: its `degree` + 1 keys
 * (65 bytes, 130 hex digits each), the sealed shares and tags of its mask neighbours (64 and 32 hex
 * digits each), the list of up to K − t dropped members and a few short fields, with twice that as
 * headroom.
 */
export function cohortViewLimit(sa: Pick<SecAggParams, 'cohortSize' | 'degree' | 'minSurvivors'>): BodyLimit {
  const n = Math.min(sa.degree, sa.cohortSize - 1);
  const dropped = sa.cohortSize - (sa.minSurvivors ?? sa.cohortSize);
  return { max: 2 * (4096 + (n + 1) * 150 + n * (80 + 50 + 50) + dropped * 8), bound: `a member view of a cohort of ${sa.cohortSize} at degree ${sa.degree}` };
}

/**
 * A failure that may pass while a device waits on its cohort: no answer, a server error, or an
 * answer that is not JSON (a proxy's page). Anything else (a refusal, a bad view) is final.
 */
function isPassingError(e: unknown): boolean {
  return (isNetworkError(e) && (e.status === 0 || e.status >= 500)) || e instanceof SyntaxError;
}

/** Statuses whose answer has no body. */
const NULL_BODY_STATUS = new Set([101, 204, 205, 304]);

/** The `attempts` option, checked: an integer ≥ 1 (default 3). */
function requestAttempts(o: Pick<SyncOptions, 'attempts'>): number {
  const a = o.attempts ?? 3;
  if (!(typeof a === 'number' && Number.isInteger(a) && a >= 1)) throw new ValidationError('attempts', `must be an integer ≥ 1, got ${String(a)}`);
  return a;
}

/**
 * Sends one request (retried on a network failure or a 5xx) and reads its answer's body, at most
 * `limit.max` bytes, within each attempt's deadline; the answer comes back with that body in
 * memory. Each attempt's deadline timer and its listener on the caller's signal are removed once
 * the attempt settles, body included. Each attempt is logged `pending` and checkpointed before it
 * goes out (a tab closed while it waits for its answer leaves it in the stored log), then logged
 * again once it settles, which replaces the pending entry (engine's `settlePending`); one stopped
 * between the two is settled as `notSent`.
 */
/** One request of {@link request}: what it is, and how it may be cut short and retried. */
interface RequestSpec {
  kind: EgressEntry['kind'];
  method: 'GET' | 'POST';
  endpoint: string;
  body?: Uint8Array;
  headers?: Record<string, string>;
  /** Default `o.signal`; `null` for a request the caller must not cut short. */
  cancel?: AbortSignal | null;
  /** Checked right before each attempt goes out (after every await): throws to send nothing. */
  beforeSend?: () => void;
  /** Default {@link SMALL_REPLY}. */
  limit?: BodyLimit;
  /** The caller logged (and stored) the first attempt's `pending` entry itself (the upload). */
  firstLogged?: boolean;
  /**
   * A request others depend on once this device committed (the upload's retries, a cohort's leave,
   * polls after the cohort filled, the recovery steps): its entry is logged all the same, but a
   * failure to store it does not stop it (the sync's own end stores it), since stopping would sink
   * the cohort, every member's ε spent for nothing. Any other request is not sent when its entry
   * cannot be stored.
   */
  mustGo?: boolean;
}

async function request(
  o: RequestOptions,
  { kind, method, endpoint, body, headers, cancel = o.signal ?? null, beforeSend, limit = SMALL_REPLY, firstLogged = false, mustGo = false }: RequestSpec,
): Promise<Response> {
  const signal = cancel ?? undefined;
  const f = o.fetch ?? (globalThis.fetch as unknown as FetchLike);
  const attempts = requestAttempts(o);
  const now = o.now ?? Date.now;
  const bodySha256 = body ? toHex(await sha256(body)) : undefined;
  const server = serverKey(o.serverUrl);
  const log = (status: number, mark?: { pending: true } | { notSent: true }) => o.onEgress?.({ t: now(), method, endpoint, kind, bytes: body?.length ?? 0, bodySha256, status, server, ...mark });
  const what = `${method} ${endpoint}`;
  let lastError: unknown;
  for (let i = 0; i < attempts; i++) {
    if (i > 0) await sleep((o.backoffMs ?? 500) * 2 ** (i - 1), signal);
    // (The upload's request never gets the signal, so a cancel here is always before it.)
    if (signal?.aborted) throw syncCancelled(`before ${method} ${endpoint}`);
    beforeSend?.();
    if (!(i === 0 && firstLogged)) {
      // In the stored log before it goes: a tab closed while it waits for its answer (a long
      // cohort poll, a server that is slow to answer) leaves this entry, not nothing.
      log(0, { pending: true });
      if (mustGo) await checkpointQuietly(o);
      else {
        try {
          await o.onCheckpoint?.();
        } catch (e) {
          // No request leaves the device without its entry in the stored log: storage that fails
          // (quota, a broken record) stops the sync here, and the entry says it was not sent.
          log(0, { notSent: true });
          throw new StorageError(`${what} was not sent: the egress log could not be stored before it (${(e as Error).message})`, { cause: e });
        }
      }
      // Stopped while the entry was stored: it never left, and its entry says so.
      try {
        if (signal?.aborted) throw syncCancelled(`before ${method} ${endpoint}`);
        beforeSend?.();
      } catch (e) {
        log(0, { notSent: true });
        throw e;
      }
    }
    // Each attempt has its own deadline, the caller's cancel (when it may cut this request) ending
    // it too. The deadline covers the body as well, so that a body that never ends is cut; both
    // are taken down once the attempt settled (`finally`), whatever it ended with.
    const attempt = new AbortController();
    const timeoutMs = o.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
    const deadline = setTimeout(() => attempt.abort(), timeoutMs);
    (deadline as { unref?: () => void }).unref?.();
    const cancelAttempt = () => attempt.abort();
    signal?.addEventListener('abort', cancelAttempt, { once: true });
    /** No (whole) answer: logged with status 0 (the body may or may not have left the device), retried. */
    const noAnswer = (e: unknown, part = '') => {
      log(0);
      if (signal?.aborted) throw syncCancelled(`during ${method} ${endpoint}`);
      lastError = attempt.signal.aborted
        ? new NetworkError(`${what}: no answer within ${timeoutMs / 1000} s${part}`, 0)
        : new NetworkError(`${what} failed${part}: ${(e as Error).message}`, 0);
    };
    try {
      let res: Response;
      try {
        // (The SDK's bodies are its own encoders' output, never on a SharedArrayBuffer.)
        res = await f(o.serverUrl.replace(/\/$/, '') + endpoint, { method, body: body as Uint8Array<ArrayBuffer> | undefined, headers, ...PRIVATE_FETCH, signal: attempt.signal });
      } catch (e) {
        noAnswer(e);
        continue;
      }
      if (res.status >= 500) {
        // Retried; what it says is not read.
        await res.body?.cancel().catch(() => {});
        log(res.status);
        lastError = new NetworkError(`${what}: server error ${res.status}`, res.status);
        continue;
      }
      if (res.status >= 400) {
        // The reason, when the body says it within a few KB; the status says enough otherwise.
        let reason = '';
        let code: string | undefined;
        try {
          const j = JSON.parse(new TextDecoder().decode(await readCapped(res, ERROR_BODY_MAX, what, 'a refusal', attempt.signal))) as { error?: string; reason?: string };
          if (typeof j.reason === 'string') code = j.reason;
          reason = `${j.reason ?? ''}${j.error ? `: ${j.error}` : ''}`;
        } catch (e) {
          if (isValidationError(e)) reason = `(its body, over ${ERROR_BODY_MAX} bytes, was not read)`;
        }
        log(res.status);
        if (signal?.aborted) throw syncCancelled(`during ${method} ${endpoint}`);
        throw new NetworkError(`${what} refused (${res.status}) ${reason}`.trim(), res.status, code);
      }
      let bytes: Uint8Array | null = null;
      if (!NULL_BODY_STATUS.has(res.status)) {
        try {
          bytes = await readCapped(res, limit.max, what, limit.bound, attempt.signal);
        } catch (e) {
          if (limit.optional && !signal?.aborted) {
            // A courtesy body: the request itself was taken.
            bytes = new Uint8Array(0);
          } else if (isValidationError(e)) {
            log(res.status);
            throw e;
          } else {
            noAnswer(e, ' (while its body was read)');
            continue;
          }
        }
      }
      log(res.status);
      return new Response(bytes as Uint8Array<ArrayBuffer> | null, { status: res.status, statusText: res.statusText, headers: res.headers });
    } finally {
      clearTimeout(deadline);
      signal?.removeEventListener('abort', cancelAttempt);
    }
  }
  throw lastError;
}

/** Checks a `GET /v1/config` body; throws a {@link ValidationError} naming the first bad field. */
export function parseServerConfig(c: Partial<ServerConfig>): ServerConfig {
  for (const k of ['dim', 'items', 'clip', 'noiseMultiplier', 'bits', 'blockSize', 'version', 'minClients'] as const) {
    if (typeof c[k] !== 'number' || !Number.isFinite(c[k])) throw new ValidationError(`server config.${k}`, `must be a number, got ${String(c[k])}`);
  }
  // The shapes the device allocates and loops over: whole numbers within what the wire format and
  // createServer allow (a negative or fractional blockSize ran the quantizer's block loop for ever).
  const whole: Array<[keyof ServerConfig, number, number]> = [
    ['dim', 1, MAX_WIRE_DIM],
    ['items', 1, MAX_SERVER_ITEMS],
    ['bits', 2, 8],
    ['blockSize', 1, 0xffffffff],
    ['version', 0, Number.MAX_SAFE_INTEGER],
    ['minClients', 1, Number.MAX_SAFE_INTEGER],
  ];
  for (const [k, lo, hi] of whole) {
    const v = c[k] as number;
    if (!(Number.isInteger(v) && v >= lo && v <= hi)) throw new ValidationError(`server config.${k}`, `must be a whole number from ${lo} to ${hi}, got ${v}`);
  }
  // The bounds the server itself keeps (createServer): beyond them an honest update cannot be
  // encoded (a clip near float32's limit overflows the quantization scales), and a failure to
  // encode that depends on the history would tell the server something through whether the
  // device goes on to upload.
  if (!(c.clip! >= 1e-6 && c.clip! <= 1e6)) throw new ValidationError('server config.clip', `must be from 1e-6 to 1e6, got ${c.clip}`);
  if (!(c.noiseMultiplier! >= 0 && c.noiseMultiplier! <= 1e6)) throw new ValidationError('server config.noiseMultiplier', `must be from 0 to 1e6, got ${c.noiseMultiplier}`);
  // `false` is off, as `null` (or no field) is.
  if ((c.secureAggregation as unknown) === false) c = { ...c, secureAggregation: null };
  if (c.secureAggregation != null) {
    const sa = checkSecAggParams(c.secureAggregation, 'server config.secureAggregation');
    // Before the join, so before any ε: masks of another generation would not cancel with this one's.
    const mv = (c.secureAggregation as { maskVersion?: unknown }).maskVersion;
    if (mv !== MASK_VERSION) {
      throw new ValidationError(
        'server config.secureAggregation.maskVersion',
        mv === undefined
          ? `is missing: the server is of an older localrec release whose masks would not cancel with this SDK's (mask version ${MASK_VERSION}); update the server`
          : `is ${JSON.stringify(mv) ?? String(mv)}, this SDK's is ${MASK_VERSION}: the two would mask differently; update the ${typeof mv === 'number' && mv > MASK_VERSION ? "page's SDK" : 'server'}`,
      );
    }
    // The same for masked values: a step so small that a clipped value plus its noise share
    // overflows the fixed-point encoding. Every honest range holds at least one clipped update.
    const range = sa.step * (2 ** (sa.bits - 1) - 1);
    // The server sets step = range / (2^(bits−1) − 1): multiplied back, the range may come out an
    // ulp or so under the clip it was set to; that still holds a clipped update to within rounding.
    if (!(range >= c.clip! * (1 - 1e-9))) {
      throw new ValidationError('server config.secureAggregation.step', `gives a range of ±${range} (step × (2^(bits−1) − 1)), less than the clip bound ${c.clip}: one update would not fit`);
    }
    // How long the device waits for its cohort: from the server, so bounded (a day at most).
    for (const k of ['timeoutMs', 'uploadTimeoutMs'] as const) {
      const v = c.secureAggregation[k];
      if (v !== undefined && !(typeof v === 'number' && Number.isFinite(v) && v > 0 && v <= MAX_COHORT_TIMEOUT_MS)) {
        throw new ValidationError(`server config.secureAggregation.${k}`, `must be a number of milliseconds from 1 to ${MAX_COHORT_TIMEOUT_MS} (a day), got ${String(v)}`);
      }
    }
  }
  if (c.trainRows !== undefined || c.trainBiases !== undefined) {
    checkTrainedPart(trainedPart(c as ServerConfig), c.items!, 'server config.trainRows');
  }
  return c as ServerConfig;
}

/**
 * Refuses a model whose shape is not the one the server's config announced: the update's shape
 * comes from the config, the delta from the model, and a server may not make the device allocate
 * and upload a table of another size than the model it sent.
 */
function checkModelShape(global: ItemTable, config: Pick<ServerConfig, 'items' | 'dim'>): void {
  if (global.itemIds.length !== config.items || global.dim !== config.dim) {
    throw new ValidationError('GET /v1/model', `answered a model of ${global.itemIds.length} items × ${global.dim}, but the server's /v1/config says ${config.items} × ${config.dim}; nothing was sent and no ε spent`);
  }
}

/** `GET /v1/config`. */
export async function fetchServerConfig(o: RequestOptions): Promise<ServerConfig> {
  const res = await request(o, { kind: 'config', method: 'GET', endpoint: '/v1/config', limit: CONFIG_LIMIT });
  return parseServerConfig((await res.json()) as Partial<ServerConfig>);
}

/**
 * `GET /v1/model`, or the held model when the server answers 304 (same hash). With the server's
 * `config` (from {@link fetchServerConfig}) the body is read only up to the size a model of its
 * `items` × `dim` can have, and refused past it; without, it is read whole before it is checked.
 */
export async function pullModel(o: RequestOptions & Pick<SyncOptions, 'held'>, config?: Pick<ServerConfig, 'items' | 'dim'>): Promise<{ table: ItemTable; hash: string }> {
  const r = await fetchModel(o, o.held?.hash, config);
  if (r) return r;
  if (!o.held) throw new NetworkError('GET /v1/model answered 304 to a device that sent no If-None-Match', 304);
  return o.held;
}

/**
 * `GET /v1/model` with `If-None-Match` when the device knows the hash of the version it holds:
 * null when the server answers 304 (that version is still current), else the model and its hash.
 */
async function fetchModel(o: RequestOptions, knownHash: string | undefined, config: Pick<ServerConfig, 'items' | 'dim'> | undefined): Promise<{ table: ItemTable; hash: string } | null> {
  const headers: Record<string, string> | undefined = knownHash ? { 'If-None-Match': `"${knownHash}"` } : undefined;
  // Read no more than the model the server's own config describes can take, so that a body of any
  // size (a broken or hostile server) cannot fill the shopper's memory before decodeModel refuses it.
  const limit: BodyLimit = config
    ? { max: maxModelBytes(config.items, config.dim), bound: `a model of ${config.items} items × ${config.dim} (the server's /v1/config)` }
    : { max: Infinity, bound: 'any model' };
  const res = await request(o, { kind: 'model', method: 'GET', endpoint: '/v1/model', headers, limit });
  if (res.status === 304) return null;
  const bytes = new Uint8Array(await res.arrayBuffer());
  const decoded = decodeModel(bytes);
  // The device asks for float32: an int8 body carries a hash the server wrote into it, which the
  // device cannot check against the values.
  if (decoded.encoding !== 'float32') throw new ValidationError('GET /v1/model', `answered a ${decoded.encoding} model; the device asked for float32`);
  // The hash is the body's own (the canonical float32 encoding's SHA-256), never the server's word
  // for it: the device repeats it in If-None-Match and in every update's base, so a header chosen
  // per device would tag that device's requests across syncs and reloads.
  const hash = toHex(await sha256(bytes));
  const header = res.headers.get('X-Localrec-Model-Hash');
  if (header !== null && header.toLowerCase() !== hash) {
    throw new ValidationError('X-Localrec-Model-Hash', `is ${header.slice(0, 80)}, but the model sent hashes to ${hash}: the device refuses a model whose hash the server misstates`);
  }
  checkModelMagnitude(decoded.table);
  return { table: decoded.table, hash };
}

/**
 * A model with values near float32's limit is refused by every device alike, before any of them
 * trains on it: training on it could overflow for some histories and not others.
 */
function checkModelMagnitude(t: ItemTable): void {
  const over = beyondModelMagnitude(t);
  if (over) {
    throw new ModelError(`the server's model holds ${over.value.toPrecision(3)} as ${over.what === 'factor' ? 'a factor' : 'the bias'} of item ${JSON.stringify(over.itemId)}, beyond ±${MAX_MODEL_MAGNITUDE}: refused, nothing was trained or sent`);
  }
}

/** Whether `local − global` is finite everywhere (a step that overflowed is not sent as it is). */
function finiteStep(global: ItemTable, local: ItemTable): boolean {
  for (let i = 0; i < local.factors.length; i++) if (!Number.isFinite(local.factors[i]! - global.factors[i]!)) return false;
  for (let i = 0; i < local.bias.length; i++) if (!Number.isFinite(local.bias[i]! - global.bias[i]!)) return false;
  return true;
}

/**
 * Whether the shopper has something to contribute, from local data alone: some history with at
 * least two distinct items. Deliberately not "items the server's model knows": the server chooses
 * that catalog, and a model of only items X and Y would turn "did the device upload" into "did this
 * shopper touch both X and Y", a bit with no noise on it.
 */
export function hasHistory(history: SyncOptions['history']): boolean {
  return history.some((h) => new Set(h.itemIds).size >= 2);
}

/** The histories' items that are in `global`, as its rows; histories with fewer than two known items drop out. */
function historySequences(global: ItemTable, history: SyncOptions['history']): Sequence[] {
  const rows = new Map(global.itemIds.map((id, i) => [id, i]));
  const seqs: Sequence[] = [];
  for (const h of history) {
    const r: number[] = [];
    const w: number[] = [];
    h.itemIds.forEach((id, i) => {
      const row = rows.get(id);
      if (row !== undefined) {
        r.push(row);
        w.push(h.weights[i] ?? 1);
      }
    });
    if (r.length >= 2) seqs.push({ rows: r, weights: w });
  }
  return seqs;
}

/** Options of {@link pullOnce}: a sync's, less everything about the upload and the budget. */
export type PullOptions = RequestOptions &
  Pick<SyncOptions, 'history' | 'train' | 'onProgress' | 'checkConfig' | 'checkModel'> & {
    /** Hash of the global version the device already adopted: the server then answers 304 while it is current. */
    knownHash?: string;
  };

/** What {@link pullOnce} did: `changed: false` when the version the device holds is still the newest. */
export type PullResult = { changed: false } | ({ changed: true } & Pick<SyncResult, 'global' | 'globalHash' | 'local' | 'localStepFailed'>);

/**
 * A sync that only receives: the newest global model, with the same local step a sync takes on it
 * (local training unless the server runs the subspace aggregator), and nothing sent but the two
 * GETs. It spends no ε, so it also works once the device's budget is spent; the device keeps
 * benefiting from everyone else's updates without adding its own. A 304 (the `knownHash` version
 * is still current) ends it after the model request, with nothing downloaded.
 *
 * @example
 * ```ts
 * const r = await pullOnce({ serverUrl, history, knownHash: lastHash });
 * if (r.changed) adopt(r.local, r.globalHash);
 * ```
 */
export async function pullOnce(o: PullOptions): Promise<PullResult> {
  checkAborted(o, 'before it started');
  // As in syncOnce: a wrong setting is an error before any request, never a history's failure.
  const train = checkTrainConfig({ epochs: 2, ...o.train });
  o.onProgress?.({ phase: 'config' });
  const config = await fetchServerConfig(o);
  o.checkConfig?.(config);
  o.onProgress?.({ phase: 'model' });
  const pulled = await fetchModel(o, o.knownHash, config);
  if (!pulled) return { changed: false };
  checkAborted(o, 'after the model was fetched');
  checkModelShape(pulled.table, config);
  o.checkModel?.(pulled.table);
  // The two GETs are in the stored egress log before the local step, which may take a while.
  await checkpointQuietly(o);
  const { local, stepFailed } = await receivedLocal(o, config, pulled.table, train);
  return { changed: true, global: pulled.table, globalHash: pulled.hash, local, ...(stepFailed ? { localStepFailed: stepFailed } : {}) };
}

/**
 * Trains `local` (a copy of `global`) on the history. What the history can make fail (a ModelError:
 * a loss that diverges, a weight refused) or overflow is returned as the reason, and `local` is then
 * to be discarded; any other failure (no backend, out of memory, a bug) is the device's, whatever
 * the history, and is thrown, ending the sync before anything is recorded or sent, as it would
 * for every shopper.
 */
async function trainLocally(global: ItemTable, local: ItemTable, seqs: Sequence[], train: TrainConfig): Promise<string | undefined> {
  try {
    await trainItemTable(local, seqs, train);
    return finiteStep(global, local) ? undefined : 'the local step is not finite';
  } catch (e) {
    if (!isModelError(e)) throw e;
    return `local training failed: ${e.message}`;
  }
}

/**
 * A receiving sync's local step on the global model: local training (unless the server runs the
 * subspace aggregator). Training that fails on this history (a ModelError) leaves the global model
 * as it is, reported in `stepFailed`: a failure must not end the sync early, which would show in
 * when the device next asks (an automatic sync retries sooner after a failure).
 */
async function receivedLocal(o: Pick<SyncOptions, 'history' | 'onProgress' | 'signal'>, config: ServerConfig, global: ItemTable, train: TrainConfig): Promise<{ local: ItemTable; stepFailed?: string }> {
  const local = cloneItemTable(global);
  const seqs = historySequences(global, o.history);
  if (seqs.length === 0 || config.aggregator === 'subspace') return { local };
  o.onProgress?.({ phase: 'training' });
  const stepFailed = await trainLocally(global, local, seqs, train);
  checkAborted(o, 'after local training');
  return stepFailed ? { local: cloneItemTable(global), stepFailed } : { local };
}

/**
 * The largest float32 model body of `items` items × `dim`: its 20-byte header, every id at its
 * longest (2 + MAX_ID_BYTES bytes), the padding, the factors and the biases.
 */
export function maxModelBytes(items: number, dim: number): number {
  return 20 + items * (2 + MAX_ID_BYTES) + 3 + 4 * items * dim + 4 * items;
}

/**
 * A response body, read up to `max` bytes: a declared `Content-Length` above it is refused before
 * reading, and a body that runs past it is cut there (the rest is never read) and refused.
 */
async function readCapped(res: Response, max: number, what: string, bound: string, signal?: AbortSignal): Promise<Uint8Array> {
  const refuse = (size: string) => new ValidationError(what, `answered ${size}, more than the ${max} bytes ${bound} can take`);
  const declared = res.headers.get('Content-Length');
  if (declared !== null && Number(declared) > max) {
    await res.body?.cancel().catch(() => {});
    throw refuse(`${declared} bytes`);
  }
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  // A body that stalls is cut by `signal` (the attempt's deadline), whatever stream carries it.
  const stop = () => void reader.cancel().catch(() => {});
  signal?.addEventListener('abort', stop, { once: true });
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (signal?.aborted) throw new AbortError(`${what}: the body was cut (deadline or cancel)`);
      if (done) break;
      total += value.byteLength;
      if (total > max) {
        await reader.cancel().catch(() => {});
        throw refuse(`a body that ran past ${max} bytes (the rest was not read)`);
      }
      chunks.push(value);
    }
  } finally {
    signal?.removeEventListener('abort', stop);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/**
 * Runs one federated round for this device. Refuses with a {@link PrivacyBudgetError} before
 * anything is trained or sent when the round would push ε past the budget.
 *
 * @example
 * ```ts
 * const acc = new RdpAccountant();
 * const r = await syncOnce({ serverUrl: 'http://127.0.0.1:8787', accountant: acc, history: [{ itemIds: ['a', 'b', 'c'], weights: [1, 1, 4] }] });
 * r.sent; r.uploadedBytes; r.epsilon; // true, 51644, 4.38
 * ```
 */
export async function syncOnce(o: SyncOptions): Promise<SyncResult> {
  const budget = o.budget ?? DEFAULT_BUDGET;
  // NaN would refuse every sync (and say why only as "ε past NaN"); Infinity is the explicit "no
  // limit" of simulations (see SyncOptions.budget).
  if (!(typeof budget === 'number' && budget > 0)) throw new ValidationError('budget', `must be a number > 0 (Infinity for no limit, simulations only), got ${String(budget)}`);
  const delta = o.delta ?? DEFAULT_DELTA;
  requestAttempts(o);
  checkAborted(o, 'before it started');
  // The device's own training settings, checked for every history alike: a failure in training
  // further on is taken as the history's (sent as noise only), never as a wrong setting.
  const train = checkTrainConfig({ epochs: 2, ...o.train });
  o.onProgress?.({ phase: 'config' });
  const config = await fetchServerConfig(o);
  // Before the model's download, whose size the config sets.
  o.checkConfig?.(config);
  o.onProgress?.({ phase: 'model' });
  const { table: global, hash } = await pullModel(o, config);
  checkAborted(o, 'after the model was fetched');
  // The update's shape comes from the config, the delta from the model: they must agree (a server
  // may not make the device allocate and upload a table of another size than the model it sent).
  checkModelShape(global, config);
  o.checkModel?.(global);
  // Checked before any training or upload, but after the model: a device past its budget has then
  // made the same two requests as any other sync. (Refused after the config alone, its lone
  // request would single it out, and a server that sets σ per request could probe how much a
  // device has spent.)
  try {
    o.accountant.assertCanSpend(config.noiseMultiplier, budget, delta);
  } catch (e) {
    if (!(e instanceof PrivacyBudgetError) || o.whenBudgetSpent !== 'receive') throw e;
    await checkpointQuietly(o);
    const { local, stepFailed } = await receivedLocal(o, config, global, train);
    return { global, globalHash: hash, local, sent: false, uploadedBytes: 0, epsilon: o.accountant.epsilon(delta), budgetSpent: e.message, ...(stepFailed ? { localStepFailed: stepFailed } : {}) };
  }
  // The two GETs are in the stored egress log before training, which may take a while: a tab
  // closed meanwhile leaves a log that still lists every request it made.
  await checkpointQuietly(o);
  o.onProgress?.({ phase: 'training' });
  let local = cloneItemTable(global);
  // Whether to upload is decided on the device's own data (hasHistory); a history the server's
  // model knows too little of is sent as noise only (a zero delta), so the upload, and its ε, are
  // the same as for any other shopper with a history.
  if (!hasHistory(o.history)) {
    return { global, globalHash: hash, local, sent: false, uploadedBytes: 0, epsilon: o.accountant.epsilon(delta) };
  }
  const seqs = historySequences(global, o.history);
  let update: Float64Array | undefined;
  let stepFailed: string | undefined;
  const part = trainedPart(config);
  if (config.aggregator === 'subspace') {
    // No local training: one subspace-iteration step from the history's weights. A history with
    // nothing on the trained rows still takes part (noise only), so sending says nothing about it.
    const history = seqs.flatMap((q) => Array.from(q.rows, (row, i) => ({ row, weight: q.weights[i] ?? 1 })));
    update = subspaceUpdate(global, part, history, config.clip) ?? undefined;
    if (update && !update.every(Number.isFinite)) {
      update = undefined;
      stepFailed = 'the subspace step is not finite';
    }
    update ??= new Float64Array(part.rows * global.dim);
  } else if (seqs.length > 0) {
    // From here on the history must not decide whether anything is sent: training that fails or
    // overflows on it (a model on which some histories diverge, by accident or made so by the
    // server) would otherwise turn "no upload" into "this shopper touched that item". Such a
    // history is sent as noise only, like one the model knows nothing of.
    stepFailed = await trainLocally(global, local, seqs, train);
    if (stepFailed) local = cloneItemTable(global);
  }
  checkAborted(o, 'after local training');
  const result = await (async () => {
    if (config.secureAggregation) return sendMasked(o, config, config.secureAggregation, part, global, hash, local, budget, delta, update);
    const built = buildClientUpdate(global, local, {
      baseHash: fromHex(hash),
      clip: config.clip,
      noiseMultiplier: config.noiseMultiplier,
      bits: config.bits,
      blockSize: config.blockSize,
      part,
      ...(update ? { delta: update } : {}),
    });
    return upload(o, config, '/v1/updates', built.bytes, { global, globalHash: hash, local }, delta);
  })();
  return stepFailed ? { ...result, localStepFailed: stepFailed } : result;
}

/** Records the release in the accountant, then POSTs the update body; the sync's result. */
async function upload(
  o: SyncOptions,
  config: ServerConfig,
  endpoint: string,
  body: Uint8Array,
  models: Pick<SyncResult, 'global' | 'globalHash' | 'local'>,
  delta: number,
  headers: Record<string, string> = {},
  cancellable = true,
): Promise<SyncResult> {
  if (cancellable) checkAborted(o, 'before the upload');
  // The entry this upload is logged under, whatever happens to it once its release is recorded.
  const bodySha256 = toHex(await sha256(body));
  const entry = (): EgressEntry => ({ t: (o.now ?? Date.now)(), method: 'POST', endpoint, kind: 'update', bytes: body.length, bodySha256, status: 0, server: serverKey(o.serverUrl) });
  // Recorded (and persisted, by the caller) before sending: once the body may have left the
  // device, the budget is spent. A caller's recordRelease stores the upload's pending entry with it.
  const logged = entry();
  let spent = o.accountant;
  if (o.recordRelease) spent = await o.recordRelease(config.noiseMultiplier, { ...logged, pending: true });
  else {
    // Checked again, with nothing awaited between check and record: another sync on the same
    // accountant may have spent the budget since the check at the start.
    o.accountant.assertCanSpend(config.noiseMultiplier, o.budget ?? DEFAULT_BUDGET, delta);
    o.accountant.record(config.noiseMultiplier);
  }
  // A cancel (consent withdrawn, close()) that came while the release was being recorded still
  // stops the upload: the ε is spent for nothing, which errs on the safe side. A full cohort's
  // member uploads after a plain cancel, never after an erase or a withdrawal (DROP_OUT). The
  // release is in the log all the same, as an upload that was not sent.
  if ((cancellable && o.signal?.aborted) || mustDropOut(o)) {
    o.onEgress?.({ ...entry(), notSent: true });
    throw releasedButCancelled();
  }
  // Logged, and persisted with the release (by recordRelease, else here), before it goes: a tab
  // closed while the body is on the wire leaves this entry (`pending`), not a spent ε with no
  // request in the log.
  if (!o.recordRelease) o.onEgress?.({ ...logged, pending: true });
  try {
    await o.onCheckpoint?.();
  } catch (e) {
    // The log could not be stored: nothing is sent, and the entry says so rather than `pending`.
    o.onEgress?.({ ...logged, notSent: true });
    throw new StorageError(`the egress log could not be stored before the upload, so nothing was sent; this sync's ε is spent: ${(e as Error).message}`, { cause: e });
  }
  // An erase or a withdrawal (DROP_OUT) stops it up to the moment the body goes out, a plain cancel
  // only until here. The pending entry is settled: this body never left.
  const stopped = () => (cancellable && o.signal?.aborted) || mustDropOut(o);
  const unsent = () => {
    o.onEgress?.({ ...logged, notSent: true });
    return releasedButCancelled();
  };
  if (stopped()) throw unsent();
  o.onProgress?.({ phase: 'upload', bytes: body.length });
  // Not cancellable in flight: once the release is recorded the body goes out whole, or fails on its own.
  let attempted = false;
  const res = await request(o, {
    kind: 'update',
    method: 'POST',
    endpoint,
    body,
    headers: { 'Content-Type': 'application/octet-stream', ...headers },
    cancel: null,
    beforeSend: () => {
      if (mustDropOut(o)) {
        // Before the first attempt nothing left; after one (a 5xx, no answer) the body may have
        // reached the server: no retry, and nothing said of the upload as "not sent" (only of
        // the retry's own pending entry, when it was logged).
        if (!attempted) throw unsent();
        throw new AbortError('sync cancelled between attempts of the upload: an earlier attempt may have reached the server (its ε is spent); no further attempt was made');
      }
      attempted = true;
    },
    firstLogged: true,
    mustGo: true,
  });
  // The update is in (2xx): what the server adds about its round is a courtesy. An answer that is
  // not the documented JSON (a proxy's page, an older server) leaves `server` out; it must not turn
  // an accepted upload, whose ε is spent, into a failed sync.
  const reply = await res.json().catch(() => undefined);
  return {
    ...models,
    sent: true,
    uploadedBytes: body.length,
    epsilon: spent.epsilon(delta),
    ...(isRoundReply(reply) ? { server: { pending: reply.pending, minClients: reply.minClients, published: reply.published } } : {}),
  };
}

/** Whether an upload's answer is the documented `{ pending, minClients, published }`. */
function isRoundReply(x: unknown): x is { pending: number; minClients: number; published: number | null } {
  if (typeof x !== 'object' || x === null) return false;
  const r = x as Record<string, unknown>;
  return Number.isFinite(r.pending) && Number.isFinite(r.minClients) && (r.published === null || Number.isFinite(r.published));
}

/** A cohort view's JSON: a SyntaxError for anything but a JSON object (garbage from a proxy, say). */
function parseView(text: string): CohortView {
  const v = JSON.parse(text) as unknown;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SyntaxError(`a cohort view must be a JSON object, got ${text.slice(0, 40)}`);
  return v as CohortView;
}

/** A member view's `index → hex` record (keys, sealed shares, tags) as member index → bytes. */
function byMember(field: Record<string, string> | undefined): Map<number, Uint8Array> {
  return new Map(Object.entries(field ?? {}).map(([j, hex]) => [Number(j), fromHex(hex)] as const));
}

/** This member's path under the cohort API (`…/members/:i`; `/leave` and `/recovery` hang off it). */
function memberPath(joined: { cohort: string; index: number }): string {
  return `/v1/secagg/cohorts/${encodeURIComponent(joined.cohort)}/members/${joined.index}`;
}

interface CohortView {
  cohort: string;
  size: number;
  status: 'forming' | 'ready' | 'recovering' | 'done' | 'aborted';
  /** Members that joined, and uploads counted so far. */
  joined?: number;
  submitted?: number;
  /** Member index → hex key, for this member and its mask neighbours (`GET /v1/secagg/cohorts/:id/members/:i`). */
  memberKeys?: Record<string, string>;
  reason?: string;
  /** While recovering: the members whose upload never came. */
  dropped?: number[];
  /** While recovering (`…/members/:i`): mask neighbour index → hex of the share of its self-mask seed it sealed to this member. */
  sealed?: Record<string, string>;
  /** While recovering (`…/members/:i`): mask neighbour index → hex of its confirmation tag for this member, once given. */
  confirmations?: Record<string, string>;
  /** While recovering (`…/members/:i`): mask neighbour index → hex of its ready tag for this member, once given. */
  ready?: Record<string, string>;
}

/**
 * Secure aggregation, the device's side (src/federated/secagg.ts): clip the delta to C, add its
 * share N(0, (σC)²/t) of the cohort's noise (t = minSurvivors, K without dropout recovery), encode it in fixed point, join a cohort with a fresh
 * ECDH key, wait until the cohort is full, mask with the shared secrets, upload.
 */
async function sendMasked(
  o: SyncOptions,
  config: ServerConfig,
  sa: SecAggParams & { timeoutMs?: number; uploadTimeoutMs?: number },
  part: TrainedPart,
  global: ItemTable,
  hash: string,
  local: ItemTable,
  budget: number,
  delta: number,
  update?: Float64Array,
): Promise<SyncResult> {
  const now = o.now ?? Date.now;
  const K = sa.cohortSize;
  const uniform = cryptoUniform();
  // This device's share of the sum's noise: enough that any t = minSurvivors shares make N(0, (σC)²).
  const t = sa.minSurvivors ?? K;
  const { values } = noisedDelta(global, local, config.clip, (config.noiseMultiplier * config.clip) / Math.sqrt(t), uniform, part, undefined, update);
  const encoded = encodeFixedPoint(values, sa.step, sa.bits, uniform);

  const keys = await secAggKeyPair();
  /**
   * Whether this round's release still fits the budget of the accountant as stored (another tab
   * may have spent it meanwhile): undefined when it does, else why not.
   */
  const budgetGone = async (): Promise<{ why: string; epsilon: number } | undefined> => {
    const stored = o.storedAccountant ? await o.storedAccountant() : o.accountant;
    try {
      stored.assertCanSpend(config.noiseMultiplier, budget, delta);
      return undefined;
    } catch (e) {
      if (!(e instanceof PrivacyBudgetError)) throw e;
      return { why: e.message, epsilon: stored.epsilon(delta) };
    }
  };
  /** A sync whose budget went while it was under way: refused, or (`receive`) a receiving one; nothing was sent. */
  const spentMeanwhile = (gone: { why: string; epsilon: number }, where: string): SyncResult => {
    const why = `${gone.why} (spent by another sync ${where}); nothing was sent`;
    if (o.whenBudgetSpent !== 'receive') throw new PrivacyBudgetError(why);
    return { global, globalHash: hash, local, sent: false, uploadedBytes: 0, epsilon: gone.epsilon, budgetSpent: why };
  };
  // Checked again on the accountant as stored, just before the join: the check at the start may be
  // minutes old (training), and a device that cannot pay must not take a place in a cohort.
  const goneBeforeJoin = await budgetGone();
  if (goneBeforeJoin) return spentMeanwhile(goneBeforeJoin, 'before this one joined a cohort');
  // Not cancellable in flight: a join the server took but whose answer was dropped would hold a place
  // this device could not give back. A cancel is seen right after it, and the place is given back.
  // One that came before it (a consent withdrawal while the keys were made or the budget read)
  // sends no join at all, nor a retry of one that got no answer.
  const joinRes = await request(o, {
    kind: 'cohort',
    method: 'POST',
    endpoint: '/v1/secagg/join',
    body: keys.publicKey,
    headers: { 'Content-Type': 'application/octet-stream' },
    cancel: null,
    beforeSend: () => checkAborted(o, 'before joining a cohort'),
    limit: JOIN_LIMIT,
  });
  const joined = (await joinRes.json()) as { cohort: string; index: number; size: number; token: string };
  // The wait for the cohort may be long: keep the join in the stored log meanwhile.
  await checkpointQuietly(o);
  const waitMs = o.cohortWaitMs ?? sa.timeoutMs ?? 600_000;
  const pollMs = o.cohortPollMs ?? 1000;
  const t0 = now();
  let view: CohortView;
  let polls = 0;
  const member = memberPath(joined);
  const viewLimit = cohortViewLimit(sa);
  /**
   * With dropout recovery (t < K) any cancel drops out of a full cohort rather than upload: an
   * upload of this device is unmasked only with its own recovery share, which a cancelled device
   * that stops waiting never gives (every member's ε would be spent on a cohort that aborts),
   * while without it the others recover and publish (when at least t of them upload).
   */
  const co: SyncOptions = t < K ? { ...o, dropOut: () => o.signal?.aborted === true } : o;
  /** This sync's claim on the cohort (claimCohort), given back when it leaves. */
  let claim: void | { release?(): Promise<void> } | undefined;
  /**
   * Gives this device's place back while the cohort forms, so that it does not fill with a member
   * that will never upload (the server does not evict a silent one). `full` when the cohort filled
   * meanwhile (409): then the other members depend on this device, and it goes on to upload.
   * Best effort: one attempt, and a failure is only reported.
   */
  const leave = async (): Promise<'left' | 'full' | string> => {
    try {
      await request({ ...o, attempts: 1 }, { kind: 'cohort', method: 'POST', endpoint: `${member}/leave`, headers: { 'X-Localrec-Cohort-Token': joined.token }, cancel: null, mustGo: true });
      // Out of the cohort: a later sync of this shopper may take a place in it.
      await claim?.release?.().catch(() => undefined);
      return 'left';
    } catch (e) {
      if (isNetworkError(e) && e.status === 409) return 'full';
      return `leaving the cohort failed (${(e as Error).message})`;
    }
  };
  /**
   * Set once a cancel (or the end of the wait) came after the cohort filled: from then on only an
   * erase or a consent withdrawal (a drop-out; with dropout recovery, any cancel: `co`) stops the upload.
   */
  let committed = false;
  /** When the server said the cohort was full (its 409 to the leave), for {@link COMMITTED_GRACE_MS}. */
  let committedAt = 0;
  /** Throws unless the cohort filled meanwhile (then commits to uploading). */
  const stop = async (error: (left: string) => Error): Promise<void> => {
    const r = await leave();
    if (r !== 'full') throw error(r === 'left' ? 'it left the cohort' : r);
    if (mustDropOut(co)) throw error(droppedOut());
    committed = true;
    committedAt = now();
  };
  /**
   * The wait between two polls. Committed, it is not cut short by a plain cancel (the cohort needs
   * this device's upload) but it is by a drop-out: an erase or a consent withdrawal must not wait
   * on a cohort a server keeps forming (it is checked every second, and at once on an abort).
   */
  const pause = async (ms: number): Promise<void> => {
    if (!committed) return sleep(ms, o.signal);
    for (let left = ms; left > 0 && !mustDropOut(co); left -= 1000) await sleep(Math.min(1000, left), o.signal?.aborted ? undefined : o.signal);
  };
  /** Gives up on the cohort for good (whatever the reason): leaves it first, unless this device committed to it. */
  const abandon = async (error: unknown): Promise<never> => {
    if (!committed) await leave();
    throw error;
  };
  const droppedOut = () =>
    mustDropOut(o)
      ? 'the cohort had filled, and this device drops out of it (its data was erased or consent withdrawn)'
      : 'the cohort had filled, and this device drops out of it (cancelled: with dropout recovery the others publish without it)';
  const cancelled = (left: string) => syncCancelled(`while cohort ${joined.cohort} was forming; ${left}`);
  if (joined.size !== K) await abandon(new ValidationError('cohort.size', `is ${joined.size}, the server announced ${K}`));
  if (o.claimCohort) {
    try {
      claim = await o.claimCohort(joined.cohort);
    } catch (e) {
      // Whether the place was given back or the cohort filled meanwhile, nothing is sent into it.
      await leave();
      throw e;
    }
  }
  for (;;) {
    if (committed && mustDropOut(co)) throw cancelled(droppedOut());
    if (o.signal?.aborted && !committed) await stop(cancelled);
    // Only this member's and its mask neighbours' keys: degree + 1 keys, whatever the cohort size.
    try {
      const res = await request(o, { kind: 'cohort', method: 'GET', endpoint: member, ...(committed ? { cancel: null } : {}), limit: viewLimit, mustGo: committed });
      view = parseView(await res.text());
    } catch (e) {
      if (o.signal?.aborted && !committed) {
        await stop(cancelled);
        continue;
      }
      // A 4xx, a view too large: no use asking again.
      // (A passing failure, the request already retried: worth polling on until the wait ends.)
      if (!isPassingError(e)) await abandon(e);
      if (now() - t0 > waitMs) {
        if (committed) throw e;
        await stop((left) => new NetworkError(`cohort ${joined.cohort}: no usable answer about it within ${waitMs} ms (${(e as Error).message}); ${left}; nothing was sent`, 0));
        continue;
      }
      // Each failed poll is in the stored log too.
      await checkpointQuietly(o);
      await pause(Math.min(pollMs * 1.5 ** polls++, Math.max(pollMs, 15_000)));
      continue;
    }
    // Every poll is kept in the stored log as it is made: a tab closed during a long wait leaves
    // a log that lists each of them.
    await checkpointQuietly(o);
    if (view.status === 'forming' || view.status === 'ready') o.onProgress?.({ phase: 'cohort', joined: view.status === 'ready' ? K : (view.joined ?? 0), size: K });
    if (view.status === 'ready') break;
    if (view.status !== 'forming') await abandon(new NetworkError(`cohort ${joined.cohort} is ${view.status}${view.reason ? `: ${view.reason}` : ''}; nothing was sent`, 0));
    if (!committed) {
      // Still forming: the last moment this device can leave rather than drop out. Another tab may
      // have spent the budget meanwhile; then the upload would be refused once the cohort is full.
      const gone = await budgetGone().catch(abandon);
      if (gone) {
        const r = await leave();
        if (r === 'full') throw new PrivacyBudgetError(`${gone.why} (spent by another sync while cohort ${joined.cohort} formed); the cohort had filled, and this device drops out of it; nothing was sent`);
        return spentMeanwhile(gone, `while cohort ${joined.cohort} formed; ${r === 'left' ? 'this device left the cohort' : r}`);
      }
    }
    // A server that said the cohort was full (409) has its keys out: "forming" after that is not
    // an honest answer, and is not waited on for the rest of a wait the server itself set.
    if (committed && now() - committedAt > COMMITTED_GRACE_MS) {
      throw new NetworkError(`cohort ${joined.cohort}: the server said it was full, yet it was still forming ${COMMITTED_GRACE_MS} ms later; nothing was sent`, 0);
    }
    if (now() - t0 > waitMs) {
      const late = (left: string) => new NetworkError(`cohort ${joined.cohort} did not fill (${K} members) within ${waitMs} ms; ${left}; nothing was sent`, 0);
      if (committed) throw late('the server said it was full, yet it is still forming');
      await stop(late);
      continue;
    }
    // Poll every pollMs at first, then back off (×1.5, at most 15 s apart) while the cohort forms.
    await pause(Math.min(pollMs * 1.5 ** polls++, Math.max(pollMs, 15_000)));
  }
  // From here on a cancel no longer stops the upload (but with dropout recovery, `co`): the cohort
  // is full, its keys are out, and the other members' round now depends on this device's upload (a
  // missing one is a dropout).
  const publicKeys = byMember(view.memberKeys);
  if (!bytesEqual(publicKeys.get(joined.index) ?? new Uint8Array(), keys.publicKey)) {
    throw new ValidationError('cohort.keys', `member ${joined.index} is not this device's key: the server changed the cohort`);
  }
  const cohortId = fromHex(joined.cohort);
  const mask = { index: joined.index, cohortId, publicKeys, privateKey: keys.privateKey, params: sa };
  const masked = await maskValues(encoded, mask);
  // With dropout recovery, a self-mask too, its seed shared among the mask neighbours: a server that
  // claims this device dropped while holding its upload gets its pair seeds, never its self-mask.
  const twice = usesSelfMask(sa) ? await addSelfMask(masked, mask) : { values: masked };
  const body = encodeMaskedUpdate({ cohortId, index: joined.index, cohortSize: K, bits: sa.bits, step: sa.step, baseVersion: global.version, ...twice });
  // Erased or withdrawn while the cohort was filling or its keys were read: nothing goes.
  if (mustDropOut(co)) throw syncCancelled(`after cohort ${joined.cohort} filled; ${droppedOut()}`);
  const result = await upload(co, config, '/v1/secagg/updates', body, { global, globalHash: hash, local }, delta, { 'X-Localrec-Cohort-Token': String(joined.token) }, false);
  const cohort: NonNullable<SyncResult['cohort']> = { id: joined.cohort, index: joined.index, size: K };
  if (t < K) {
    // The device may wait minutes for its cohort: keep what the upload logged first.
    await checkpointQuietly(o);
    // The server's upload deadline, then its recovery deadline, and a minute's slack.
    Object.assign(cohort, await stayForRecovery(o, sa, t, joined, cohortId, publicKeys, keys.privateKey, encoded.length, 2 * (sa.uploadTimeoutMs ?? waitMs) + 60_000));
  }
  return { ...result, cohort };
}

/**
 * With recovery on, a member that uploaded stays until its cohort ends: once uploads stop, the
 * server lists the members whose upload never came (`recovering`, possibly none) and asks each
 * survivor for its recovery share (for each mask neighbour, the pair seed or the share of its
 * self-mask), without which the survivors' sum cannot be unmasked. The share is given once, and
 * only when the list is one the server may recover from (at most K − t members, not this one).
 * Never throws: the update is already sent, whatever happens here.
 */
async function stayForRecovery(
  o: SyncOptions,
  sa: SecAggParams,
  t: number,
  joined: { cohort: string; index: number; token: string },
  cohortId: Uint8Array,
  publicKeys: ReadonlyMap<number, Uint8Array>,
  privateKey: CryptoKey,
  length: number,
  waitMs: number,
): Promise<Pick<NonNullable<SyncResult['cohort']>, 'outcome' | 'recoveryShareSent' | 'note'>> {
  const now = o.now ?? Date.now;
  const pollMs = o.cohortPollMs ?? 1000;
  const K = sa.cohortSize;
  const t0 = now();
  let sent = false;
  /** The list of dropped members this device confirmed (sorted, joined): it answers for no other. */
  let confirmed: string | undefined;
  /** Whether it told its neighbours that they all confirmed that list. */
  let ready = false;
  /** A server out of reach for a while (the request already retried): worth waiting for until the deadline, the cohort needs this device. */
  const passing = (e: unknown) => !o.signal?.aborted && now() - t0 <= waitMs && isPassingError(e);
  /**
   * POSTs one step of recovery until it is taken (the server takes the same bytes again) or the
   * deadline passes. `ended`: the cohort stopped recovering meanwhile (409 unknown-cohort: it was
   * published, maybe with this very request whose answer was lost, or aborted at its deadline):
   * the next poll reads how it ended.
   */
  const post = async (step: 'confirm' | 'ready' | 'recovery', body: Uint8Array): Promise<'taken' | 'ended'> => {
    for (let k = 0; ; k++) {
      try {
        await request(o, { kind: 'cohort', method: 'POST', endpoint: `${memberPath(joined)}/${step}`, body, headers: { 'Content-Type': 'application/octet-stream', 'X-Localrec-Cohort-Token': joined.token }, mustGo: true });
        return 'taken';
      } catch (e) {
        if (isNetworkError(e) && e.status === 409 && e.reason === 'unknown-cohort' && !o.signal?.aborted) return 'ended';
        if (!passing(e)) throw e;
        await sleep(Math.min(pollMs * 1.5 ** k, Math.max(pollMs, 15_000)), o.signal);
      }
    }
  };
  try {
    for (let polls = 0; ; polls++) {
      let view: CohortView;
      try {
        view = parseView(await (await request(o, { kind: 'cohort', method: 'GET', endpoint: memberPath(joined), limit: cohortViewLimit(sa), mustGo: true })).text());
      } catch (e) {
        if (!passing(e)) throw e;
        await checkpointQuietly(o);
        await sleep(Math.min(pollMs * 1.5 ** polls, Math.max(pollMs, 15_000)), o.signal);
        continue;
      }
      // Each poll is in the stored log as it is made (the wait may take minutes).
      await checkpointQuietly(o);
      o.onProgress?.({ phase: 'recovery', submitted: view.submitted ?? 0, size: K, ...(view.dropped ? { dropped: view.dropped.length } : {}) });
      /** A step refused because the cohort ended meanwhile: the next poll (after the usual pause) says how. */
      let ended = false;
      if (view.status === 'done') return { outcome: 'published', recoveryShareSent: sent };
      if (view.status === 'aborted') return { outcome: 'aborted', recoveryShareSent: sent, ...(view.reason ? { note: view.reason } : {}) };
      if (view.status === 'recovering' && !sent) {
        const dropped = [...new Set(view.dropped ?? [])].sort((a, b) => a - b);
        const listKey = dropped.join(',');
        // One list per cohort: a server that shows this device another one later gets nothing more.
        if (confirmed !== undefined && confirmed !== listKey) {
          return { outcome: 'left', recoveryShareSent: false, note: `refused to help recover: the server changed the list of dropped members (was [${confirmed}], now [${listKey}])` };
        }
        if (confirmed === undefined) {
          const refuse = (why: string) => ({ outcome: 'left' as const, recoveryShareSent: false, note: `refused to help recover: ${why}` });
          const outside = dropped.find((j) => !(Number.isInteger(j) && j >= 0 && j < K));
          if (outside !== undefined) return refuse(`the server lists dropped member ${JSON.stringify(outside)}, not a member index (0..${K - 1})`);
          if (dropped.includes(joined.index)) return refuse(`the server lists this device (member ${joined.index}) among the dropped members`);
          if (dropped.length > K - t) return refuse(`the server lists ${dropped.length} dropped members (at most ${K - t} allowed)`);
          // After recovery the server could unmask this device's connected part of the survivors on
          // its own: give nothing unless that part has at least t members.
          const mine = survivorComponents(K, sa.degree, dropped).find((p) => p.includes(joined.index))!;
          if (mine.length < t) {
            return { outcome: 'left', recoveryShareSent: false, note: `refused to help recover: without the dropped members this device's part of the mask graph has ${mine.length} members, fewer than ${t}` };
          }
          // First tell each neighbour the list leaves alive which list this device was shown
          // (tags only they can check): nobody answers before all of its neighbours saw the same.
          const tags = await confirmationTags({ index: joined.index, cohortId, publicKeys, privateKey, params: sa, length, dropped });
          // (Confirmed even when refused because the cohort ended: the tags left this device, and
          // it confirms no other list, whatever the server shows next.)
          ended = (await post('confirm', tags)) === 'ended';
          confirmed = listKey;
          // Poll briskly again: the neighbours' confirmations come next.
          polls = 0;
          await checkpointQuietly(o);
        }
        const me = { index: joined.index, cohortId, publicKeys, privateKey, params: sa, length, dropped };
        // Then, once every neighbour the list leaves alive confirmed the same list, say so to them
        // ("ready"); answer only once all of them are ready too: lists agree two steps out, so the
        // server cannot cut the graph into regions shown different lists and read a small one.
        if (!ended && !ready && (await checkConfirmations({ ...me, confirmations: byMember(view.confirmations) })).length === 0) {
          ended = (await post('ready', await confirmationTags(me, 'ready'))) === 'ended';
          ready = true;
          polls = 0;
          await checkpointQuietly(o);
        }
        if (!ended && ready && (await checkConfirmations({ ...me, confirmations: byMember(view.ready) }, 'ready')).length === 0) {
          // Once, for this list only: for each mask neighbour the pair seed (listed as dropped) or
          // the share of its self-mask (not listed), never both. A failed request ends the wait.
          const share = await recoveryShare({ ...me, sealed: byMember(view.sealed) });
          // (Counted as sent from the first attempt on, whatever comes of it: taken, refused because
          // the cohort just ended, or cut short by a cancel after the server took it.)
          sent = true;
          ended = (await post('recovery', share)) === 'ended';
          await checkpointQuietly(o);
          if (!ended) continue;
        }
      }
      if (now() - t0 > waitMs) return { outcome: 'left', recoveryShareSent: sent, note: `cohort still ${view.status} after ${waitMs} ms` };
      await sleep(Math.min(pollMs * 1.5 ** polls, Math.max(pollMs, 15_000)), o.signal);
      if (o.signal?.aborted) return { outcome: 'left', recoveryShareSent: sent, note: `cancelled while the cohort was ${view.status}` };
    }
  } catch (e) {
    return { outcome: 'left', recoveryShareSent: sent, note: o.signal?.aborted ? 'cancelled while waiting for the cohort to end' : (e as Error).message };
  }
}
