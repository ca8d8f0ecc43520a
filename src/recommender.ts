import * as Comlink from 'comlink';
import { AbortError, ClosedError, reviveError, syncCancelled, ValidationError } from './errors.js';
import { blockedDeletion, unlessBlocked } from './events/blocked.js';
import { MINIMUM_BROWSERS } from './engine/platform.js';
import { forgetSpend } from './engine/privacy-ledger-forget.js';
import { checkEventAge, clockBefore2000, DEFAULT_MAX_AGE_DAYS, validateEvent } from './events/schema.js';
import { boolOption, checkSignal, describeValue, knownKeys, nameOption, OPTION_KEYS } from './options.js';
import type { WorkerApi } from './engine/worker.js';
import type { AuditReport, ExportFile } from './engine/audit-types.js';
import type { EgressEntry } from './federated/sync.js';
import type { OffersOptions, SetOffersResult, ShownOffer, SignedOfferCatalog } from './offers/types.js';
import type {
  BackendName,
  Recommendation,
  RecommenderOptions,
  RecommendOptions,
  SimilarOptions,
  Stats,
  SyncControl,
  SyncResultInfo,
  TrackEvent,
  TrainOptions,
  TrainResult,
} from './types.js';

/** The handle a page gets from {@link createRecommender}. Every method but `track` is async. */
export interface Recommender {
  /**
   * Records one event. Validated here (a bad event throws a ValidationError naming the field,
   * nothing is sent, and it is counted in `stats().dropped`), then posted to the worker, which
   * stores it in IndexedDB in a batch. After `close()` or `erase()`, or once the worker has died,
   * it throws a `ClosedError` (synchronously, as it returns nothing to reject). On a device whose
   * clock reads before 2000 (a dead clock battery) an event without `t` cannot be timed: it is
   * dropped and counted in `stats().dropped`, not thrown; pass `t` (the page's server time) to keep it.
   */
  track(event: TrackEvent): void;
  /** Top-K items for this shopper, each with a reason. */
  recommend(options?: RecommendOptions): Promise<Recommendation[]>;
  /** Items similar to one item. */
  similar(itemId: string, options?: SimilarOptions): Promise<Recommendation[]>;
  /**
   * Trains on the shopper's events now (it also runs by itself as events arrive). A call while a
   * run is under way joins it when it asks for the same epochs or none (its `onProgress` hears the
   * rest of that run); one asking for other epochs trains after it. `close()`, `erase()` and a
   * withdrawal of consent to personalization stop a run between two steps: nothing it learned is
   * saved, and the call rejects with an `AbortError` ("training stopped by erase(); …"); so does
   * `options.signal` for the run this call started or joined.
   */
  train(options?: TrainOptions): Promise<TrainResult>;
  /** Backend, event counts, model state, privacy budget. */
  stats(): Promise<Stats>;
  /**
   * One federated round with `options.federated.serverUrl`: pulls the global model, trains on this
   * shopper's events, uploads only a clipped, noised update. Throws a PrivacyBudgetError (before
   * sending anything) once the ε budget would be exceeded, or when IndexedDB could not be opened
   * (private mode: the device could not remember what it spent; see
   * `federated.allowWithoutStorage`), a NetworkError when the server is
   * unreachable after retries or refuses the update, a StorageError when the egress log cannot be
   * stored before a request (storage full: the request is not sent), or when the model received
   * cannot be saved after the upload (its message says the update was sent and ε spent; the
   * weights stored before stay in use). A call while a sync is under way gets that
   * sync's result (one update, one release of ε). Under secure aggregation with dropout recovery
   * it resolves when the cohort ends (`cohortOutcome`). `onProgress` reports each phase (waiting for
   * a cohort can take minutes: `{ phase: 'cohort', joined, size }`); `signal` cancels it (an
   * AbortError before the upload, nothing sent or spent; see {@link SyncControl}).
   * `sync({ contribute: false })` only receives: the newest global model (nothing downloaded while
   * the one held is current), no upload, no ε, so it still works once the budget is spent.
   */
  sync(options?: SyncControl): Promise<SyncResultInfo>;
  /**
   * Records the shopper's consent. Granting personalization starts storing events; withdrawing it
   * erases everything stored. `federated: false` stops sync, and is remembered on the device: a
   * later page load without a consent decision from the host (`'granted'` or no option) keeps it.
   * While a grant is applied, what the page tracks is held on the page and its other calls wait:
   * a page need not await the grant for them to run after it and after what was tracked since (a
   * further setConsent() is not held: the worker applies those in the order made).
   */
  setConsent(consent: { personalization?: boolean; federated?: boolean }): Promise<void>;
  /**
   * Installs the shop's signed offer catalog (checked against `options.offers.publicKey`). The
   * answer lists the offers that can never be shown with this product catalog, and why.
   */
  setOffers(signed: SignedOfferCatalog): Promise<SetOffersResult>;
  /** The offers most worth showing this shopper, with reasons; `explore: true` marks exploration. */
  offers(options?: OffersOptions): Promise<ShownOffer[]>;
  /**
   * Installs a neighbour table file (`localrec neighbors` output) the host fetched itself, instead of
   * `options.neighbors.url`. A file that does not decode is refused (ValidationError), and so is one
   * that holds none of the catalog's items (ModelError: built for another catalog); the table in
   * use is kept. `matched`: how many of the file's `items` the catalog holds.
   */
  setNeighbors(file: ArrayBuffer | ArrayBufferView): Promise<{ items: number; matched: number; width: number; hash: string }>;
  /** What is stored, what left the device, ε spent, retention, consent history (docs/PRIVACY.md). */
  audit(): Promise<AuditReport>;
  /** Every event and record kept about the shopper, as JSON-ready data (GDPR Art. 20). */
  export(): Promise<ExportFile>;
  /** Every request the SDK sent: time, endpoint, bytes, kind, SHA-256 of the body, status. */
  egressLog(): Promise<EgressEntry[]>;
  /** Resolves once every tracked event is stored. */
  flush(): Promise<void>;
  /**
   * Stores what is queued, stops the worker. The data stays on the device. A training run under way
   * stops at its next step without saving (its `train()` rejects with an `AbortError`), rather than
   * holding the close for its remaining epochs. During an `erase()` it
   * resolves once the erase has ended (the worker stops either way). When that last write fails
   * (storage full), it rejects with a `StorageError` saying how many events were lost, after the
   * worker has stopped.
   */
  close(): Promise<void>;
  /**
   * Deletes every event, the model weights and the database, then stops the worker. A training run
   * under way stops at its next step without saving (its `train()` rejects with an `AbortError`),
   * rather than holding the erase for its remaining epochs. After the
   * worker was taken for dead (`workerTimeoutMs`), or after `close()` (a single-page app that
   * closed the SDK on leaving a route still honours "delete my data"), the page deletes the
   * database itself, and the shop's other tabs drop what they hold.
   */
  erase(): Promise<void>;
}

const BACKENDS: readonly BackendName[] = ['webgpu', 'webgl', 'wasm', 'cpu'];
/** Default of `options.workerTimeoutMs`: how long a ping to the worker may go unanswered while calls wait. */
export const DEFAULT_WORKER_TIMEOUT_MS = 60_000;
/** Until the worker first answers (its script is still loading), the check waits at least this long. */
export const STARTUP_ALLOWANCE_MS = 60_000;

/**
 * Deletes the IndexedDB database from the page (the worker is gone), then tells the shop's other
 * tabs, as the worker's own erase() does, so that they drop what they held from it (their workers
 * close their connections when asked, versionchange, which lets the deletion through), and removes
 * the database's part of the privacy ledger.
 */
async function deleteDatabase(name: string): Promise<void> {
  // Without IndexedDB (private mode) nothing was stored.
  if (typeof indexedDB === 'undefined') return;
  await deleteEventsDatabase(name);
  // As the worker's erase() does: its part of the origin's privacy ledger goes with it.
  await forgetSpend(name);
}

function deleteEventsDatabase(name: string): Promise<void> {
  // As the worker's store does: a connection that never closes (code other than localrec holding
  // that name) would block this for ever; refused after a while instead (a StorageError).
  return unlessBlocked(
    (blocked) =>
      new Promise<void>((resolve, reject) => {
        // When the deletion began, as the worker's erase() says it: a tab that created the
        // database anew after it drops what it wrote there too.
        const at = Date.now();
        const req = indexedDB.deleteDatabase(name);
        req.onblocked = blocked;
        req.onsuccess = () => {
          if (typeof BroadcastChannel !== 'undefined') {
            const ch = new BroadcastChannel(`localrec:${name}`);
            ch.postMessage({ type: 'erased', at });
            ch.close();
          }
          resolve();
        };
        req.onerror = () => reject(new ClosedError(`the localrec worker stopped, and deleting the database "${name}" from the page failed: ${req.error?.message ?? 'unknown error'}`));
      }),
    blockedDeletion(name),
  );
}

/**
 * The call's result, its errors as localrec's classes. An argument the browser cannot copy to the
 * worker (a function, a Symbol, a reactive store's Proxy, a DOM node) fails in postMessage as a
 * DataCloneError: a ValidationError naming `field` instead.
 */
function revive<T>(p: Promise<T>, field = 'options'): Promise<T> {
  return p.catch((e: unknown) => {
    if ((e as { name?: unknown } | null)?.name === 'DataCloneError') {
      throw new ValidationError(field, `cannot be copied to the worker (no functions, Symbols, Proxies such as a reactive store's objects, or DOM objects; plain data only): ${(e as Error).message}`);
    }
    throw reviveError(e);
  });
}

/** `o` after checking its keys (undefined passes): what a method's options may hold. */
function checkedKeys<T>(o: T, keys: readonly string[]): T {
  if (o !== undefined) knownKeys(o, 'options', keys);
  return o;
}

/** `options.consent` as the engine takes it. */
function consentOption(c: unknown): { personalization: boolean; federated: boolean } {
  if (c === undefined || c === 'granted') return { personalization: true, federated: true };
  if (c === 'required') return { personalization: false, federated: false };
  if (typeof c === 'object' && c !== null && !Array.isArray(c)) {
    const o = knownKeys(c, 'options.consent', OPTION_KEYS.consent);
    boolOption(o.personalization, 'options.consent.personalization', true);
    boolOption(o.federated, 'options.consent.federated', true);
    return { personalization: o.personalization as boolean, federated: o.federated as boolean };
  }
  throw new ValidationError('options.consent', `must be 'required', 'granted' or { personalization, federated }; got ${describeValue(c)}`);
}

/**
 * A progress callback as the worker calls it: it answers at once, whatever the page's callback
 * returns. The worker waits for each call's answer, so a callback returning a promise that never
 * settles (an async one awaiting something that never comes) would hold train() or sync(), and
 * close() and erase() behind them; its rejection or throw is the page's own business.
 */
function progressOnly<P>(f: (p: P) => unknown): (p: P) => void {
  return (p) => {
    try {
      const r = f(p) as { then?: unknown } | undefined;
      if (r && typeof r.then === 'function') (r as Promise<unknown>).then(undefined, () => undefined);
    } catch {
      // A throwing callback does not stop the run (as in the worker).
    }
  };
}

/**
 * `worker.js` next to this module. A bundle whose format has no `import.meta` (IIFE, CommonJS) has
 * no such place: then the page must say where the worker is.
 */
function defaultWorkerUrl(): URL {
  try {
    return new URL('./worker.js', import.meta.url);
  } catch (e) {
    throw new ClosedError(
      `the localrec worker's address cannot be derived from import.meta.url (${(e as Error).message}): this bundle's format has no import.meta (IIFE, CommonJS); pass workerUrl (where worker.js is served) to createRecommender`,
    );
  }
}

/**
 * Starts localrec on the page: spawns the module worker (TensorFlow.js, IndexedDB and training all
 * live there), picks a backend, and loads saved weights.
 *
 * @example
 * ```ts
 * import { createRecommender } from 'localrec';
 * const rec = await createRecommender({ catalog: { items: [{ id: 'sku-1', title: 'Red mug' }, { id: 'sku-2' }] } });
 * rec.track({ type: 'view', itemId: 'sku-1' });
 * const top = await rec.recommend({ k: 5 }); // [{ itemId: 'sku-2', score: 0.41, reason: { text: 'Popular in this shop', … } }]
 * ```
 */
export async function createRecommender(options: RecommenderOptions): Promise<Recommender> {
  // When the host's consent answer was read: another tab's consent change after it, also one made
  // while the worker loads, is applied once the engine starts (options.consentAsOf of the engine).
  const consentAsOf = Date.now();
  if (typeof options !== 'object' || options === null) throw new ValidationError('options', 'must be an object with a `catalog`');
  knownKeys(options, 'options', OPTION_KEYS.recommender);
  // The catalog is validated in the worker (errors come back with the field named): validating a
  // 100,000-item catalog here too would block the page for no gain.
  const catalog = options.catalog;
  if (typeof catalog !== 'object' || catalog === null || !Array.isArray((catalog as { items?: unknown }).items)) {
    throw new ValidationError('options.catalog', 'must be an object with an `items` array');
  }
  if (options.backend !== undefined && !BACKENDS.includes(options.backend)) {
    throw new ValidationError('options.backend', `must be one of ${BACKENDS.join(', ')}; got "${String(options.backend)}"`);
  }
  nameOption(options.dbName, 'options.dbName');
  const initialConsent = consentOption(options.consent);
  const dbName = options.dbName ?? 'localrec';
  const workerTimeoutMs = options.workerTimeoutMs ?? DEFAULT_WORKER_TIMEOUT_MS;
  if (typeof workerTimeoutMs !== 'number' || !Number.isFinite(workerTimeoutMs) || !(workerTimeoutMs === 0 || workerTimeoutMs >= 1_000)) {
    throw new ValidationError('options.workerTimeoutMs', `must be 0 (no check) or a number of milliseconds ≥ 1000, got ${describeValue(options.workerTimeoutMs)}`);
  }
  // Server-side rendering (Next, Nuxt, Astro) or plain Node: there is no worker to run the engine in.
  // Before the URLs are resolved: on a server a page's relative URL (`/neighbors.lrn`) has no page to
  // resolve against, and saying it is not a URL would send the developer after the wrong problem.
  if (typeof Worker === 'undefined') {
    throw new ClosedError("createRecommender() runs in a browser page (it starts a Web Worker): call it on the client only (after hydration, in an effect), or use Engine from 'localrec/node' in Node");
  }
  let neighbors: { url: string; timeoutMs?: number; downloadTimeoutMs?: number; refreshHours?: number } | undefined;
  if (options.neighbors !== undefined) {
    // Checked here: the object is rebuilt below, and the worker would never see a typo'd key.
    knownKeys(options.neighbors, 'options.neighbors', OPTION_KEYS.neighbors);
    const u = options.neighbors?.url;
    if (typeof u !== 'string' && !(u instanceof URL)) throw new ValidationError('options.neighbors.url', 'must be the URL of the neighbour file (string or URL)');
    // Resolved here: inside the worker a relative URL would resolve against the worker script.
    let abs: URL;
    try {
      abs = new URL(u, globalThis.location?.href);
    } catch {
      throw new ValidationError('options.neighbors.url', `is not a URL: ${JSON.stringify(String(u))}`);
    }
    if (abs.protocol !== 'http:' && abs.protocol !== 'https:') throw new ValidationError('options.neighbors.url', `must be an http(s) URL, got ${abs.protocol}`);
    const { timeoutMs, downloadTimeoutMs, refreshHours } = options.neighbors;
    neighbors = {
      url: abs.href,
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(downloadTimeoutMs !== undefined ? { downloadTimeoutMs } : {}),
      ...(refreshHours !== undefined ? { refreshHours } : {}),
    };
  }
  let wasmPaths: string | undefined;
  if (options.wasmPaths !== undefined) {
    const w = options.wasmPaths;
    if (typeof w !== 'string' && !(w instanceof URL)) throw new ValidationError('options.wasmPaths', `must be the URL of the folder serving the .wasm files (string or URL), got ${describeValue(w)}`);
    try {
      wasmPaths = new URL(w, globalThis.location?.href).href;
    } catch {
      throw new ValidationError('options.wasmPaths', `is not a URL: ${JSON.stringify(String(w))}`);
    }
    if (!wasmPaths.endsWith('/')) throw new ValidationError('options.wasmPaths', `must be a folder URL ending in '/', got ${JSON.stringify(wasmPaths)}`);
  }
  // Checked here, by name: a number or an object would only fail later, as a worker that did not
  // start. An object with a string form of its own passes (a URL, also from another realm, or the
  // TrustedScriptURL of a page that enforces Trusted Types); a plain object does not.
  const w = options.workerUrl as unknown;
  const ownString = typeof w === 'object' && w !== null && (w as { toString: unknown }).toString !== Object.prototype.toString && String(w) !== '';
  if (w !== undefined && !((typeof w === 'string' && w !== '') || ownString)) {
    throw new ValidationError('options.workerUrl', `must be the URL worker.js is served at (a non-empty string or a URL), got ${describeValue(w)}`);
  }
  const url = options.workerUrl ?? defaultWorkerUrl();
  // track() refuses events retention would delete at once, as the worker's engine does (an invalid
  // setting is the worker's to refuse, at start).
  const age = (options.retention as { maxAgeDays?: unknown } | undefined)?.maxAgeDays;
  const maxAgeDays = typeof age === 'number' && Number.isInteger(age) && age >= 1 ? age : DEFAULT_MAX_AGE_DAYS;
  let worker: Worker;
  try {
    worker = new Worker(url, { type: 'module' });
  } catch (e) {
    // A cross-origin URL (or one the page may not load) throws here, before any error event.
    throw new ClosedError(`the localrec worker (${String(url)}) could not be created: ${(e as Error).message}; a module worker must come from the page's own origin (serve worker.js with the page, or set workerUrl)`);
  }
  const api = Comlink.wrap<WorkerApi>(worker);
  const channel = new MessageChannel();
  let closed = false;
  const { workerUrl: _ignored, wasmPaths: _wasm, consent: _consent, workerTimeoutMs: _timeout, ...rest } = options;
  const gpc = (globalThis.navigator as { globalPrivacyControl?: boolean } | undefined)?.globalPrivacyControl === true;
  let consented = initialConsent.personalization;
  /** Events dropped on the page before consent (stats().dropped, audit()'s droppedBeforeConsent). */
  let dropped = 0;
  /** Events track() refused (validation, older than retention.maxAgeDays): stats().dropped. */
  let rejected = 0;
  /** setConsent() calls granting personalization that are under way, and what was tracked meanwhile. */
  let granting = 0;
  let heldForConsent: unknown[] = [];
  /**
   * Settles once no grant is under way and what was held for it is sent: the page's other calls
   * made meanwhile wait for it, so that they run after the grant and after what was tracked since
   * (a recommend({ exclude: 'seen' }) right after the shopper accepts the banner sees the view
   * tracked in between; a train() runs with consent).
   */
  let grantDone: Promise<void> = Promise.resolve();
  let endGrant: (() => void) | undefined;
  /** setConsent() calls withdrawing personalization whose answer has not come back. */
  let withdrawing = 0;
  // The page's gate follows the worker's consent: its own setConsent() replies, and every change
  // the engine applies (another tab's too, or this tab would drop every event) told over the track
  // port. Each carries the engine's count of changes: the latest wins, whichever port is faster.
  let gateVersion = 0;
  const gate = (personalization: boolean, version: number) => {
    if (version <= gateVersion) return;
    gateVersion = version;
    consented = personalization;
    // The grant reached the page before setConsent's own reply (over the track port): what was
    // held meanwhile goes ahead of what is tracked from now on, so the store keeps their order.
    if (consented) releaseHeld?.();
  };
  /** Sends the events held while a grant was applied (set once the batching below exists). */
  let releaseHeld: (() => void) | undefined;
  // A worker script that cannot be loaded (a wrong workerUrl, a 404, a CSP without worker-src)
  // reports only an `error` event: without this, init would wait for ever.
  const failedToStart = new Promise<never>((_resolve, reject) => {
    worker.addEventListener(
      'error',
      (ev) => reject(new ClosedError(`the localrec worker (${String(url)}) failed to start: ${ev.message || `it could not be loaded (check workerUrl, that the file is served, the page’s CSP worker-src, and that the browser is one localrec supports: ${MINIMUM_BROWSERS} or later)`}`)),
      { once: true },
    );
  });
  failedToStart.catch(() => undefined);
  /** Worker calls not yet answered: close() and erase() let them finish before the worker stops. */
  const inflight = new Set<Promise<unknown>>();
  // The liveness check (options.workerTimeoutMs): a worker that ran out of memory or crashed ends
  // without an event, and comlink's calls to it would wait for ever. While calls are waiting, the
  // page pings the worker over the track port every few seconds; once a ping has gone unanswered
  // for workerTimeoutMs, the worker is taken for dead and every waiting call rejects.
  let deadError: ClosedError | undefined;
  /** Stops the worker once it is taken for dead; `stop` once the recommender is built. */
  let halt = () => {
    closed = true;
    worker.terminate();
  };
  let declareDead!: (e: ClosedError) => void;
  const dead = new Promise<never>((_resolve, reject) => (declareDead = reject));
  dead.catch(() => undefined);
  /** The calls waiting on the worker: each is rejected when it is taken for dead. */
  const waiters = new Set<(e: ClosedError) => void>();
  void dead.catch((e: ClosedError) => {
    for (const reject of waiters) reject(e);
    waiters.clear();
  });
  /**
   * `p`, or a rejection once the worker is taken for dead. Not `Promise.race([p, dead])`: each race
   * leaves a reaction on `dead`, which settles only if the worker dies, so a long-lived page would
   * keep every call's answer alive for the recommender's life (stop 33).
   */
  const orDead = <T>(p: Promise<T>): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      if (deadError) return reject(deadError);
      waiters.add(reject);
      p.then(resolve, reject).finally(() => waiters.delete(reject));
    });
  const every = Math.min(5_000, Math.max(250, workerTimeoutMs / 4));
  let watchdog: ReturnType<typeof setTimeout> | undefined;
  let ping = 0;
  /** When the oldest ping not yet answered was sent, and when the last check ran. */
  let unansweredSince: number | undefined;
  let lastCheck = 0;
  /**
   * Whether the worker has ever answered: it answers once its script has loaded and init has begun.
   * Until then the check allows at least {@link STARTUP_ALLOWANCE_MS} (a slow network delivering a
   * 300 KB script is not a dead worker; one that fails to load is an `error` event: failedToStart).
   */
  let answered = false;
  channel.port1.onmessage = (ev: MessageEvent) => {
    const m = ev.data as { pong?: unknown; consent?: unknown; v?: unknown };
    if (typeof m?.consent === 'boolean' && typeof m.v === 'number') gate(m.consent, m.v);
    if (typeof m?.pong !== 'number') return;
    unansweredSince = undefined;
    answered = true;
  };
  const check = () => {
    watchdog = undefined;
    if (closed || deadError || inflight.size === 0) return;
    const now = Date.now();
    // A check that comes late (a hidden tab's throttled timers, a frozen page) judges nothing:
    // the worker had no fair chance to answer. It starts over.
    if (now - lastCheck > 2 * every + 1_000) unansweredSince = undefined;
    lastCheck = now;
    if (unansweredSince !== undefined && now - unansweredSince > (answered ? workerTimeoutMs : Math.max(workerTimeoutMs, STARTUP_ALLOWANCE_MS))) {
      const silent = Math.round((now - unansweredSince) / 1000);
      deadError = new ClosedError(
        answered
          ? `the localrec worker stopped responding (no answer for ${silent} s; it may have run out of memory): create the recommender again`
          : // A script that loaded but never answered one ping is not localrec's worker (a bundler's URL of the wrong file).
            `the localrec worker (${String(url)}) never answered since it started (${silent} s): is workerUrl localrec's worker script (dist/worker.js, \`localrec/worker\`)?`,
      );
      declareDead(deadError);
      halt();
      return;
    }
    unansweredSince ??= now;
    channel.port1.postMessage({ ping: ++ping });
    watchdog = setTimeout(check, every);
  };
  /** Starts the checks when a call begins waiting (they stop once nothing waits). */
  const watch = () => {
    if (workerTimeoutMs === 0 || watchdog !== undefined || deadError) return;
    lastCheck = Date.now();
    unansweredSince = undefined;
    watchdog = setTimeout(check, 0);
  };
  // Starting is checked too: a worker that dies while it loads would otherwise leave this waiting.
  const starting = Promise.race([failedToStart, dead, revive(
      api.init(
        {
          ...rest,
          catalog,
          neighbors,
          // No decision from the host ('granted', or no option): none is passed, so that the engine
          // keeps a withdrawal of federated learning the device stored. An object is the host's
          // remembered answer, and 'required' its decision to ask first: both are applied as given.
          ...(options.consent === undefined || options.consent === 'granted' ? {} : { consent: initialConsent }),
          globalPrivacyControl: gpc,
          honorGlobalPrivacyControl: options.federated?.honorGlobalPrivacyControl,
          consentAsOf,
        },
        Comlink.transfer(channel.port2, [channel.port2]),
        wasmPaths,
      ),
      'options (the catalog, or another option)',
    )]);
  /** Counts `p` as waiting on the worker until it settles (close() waits for it; the liveness check runs meanwhile). */
  const waitOn = (p: Promise<unknown>): void => {
    const settled = p.catch(() => undefined);
    inflight.add(settled);
    void settled.then(() => inflight.delete(settled));
    watch();
  };
  waitOn(starting);
  try {
    await starting;
  } catch (e) {
    halt();
    throw e;
  }
  /** Numbers the page's sync() calls, so that a cancel names the one it is for. */
  let callIds = 0;
  /**
   * Runs `f`, forwarding `signal`'s abort to the worker by `forward` (an AbortSignal cannot cross
   * postMessage: the worker's call is named by its id) until `f` settles.
   */
  const forwardingAbort = async <T>(signal: AbortSignal | undefined, forward: () => Promise<unknown>, f: () => Promise<T>): Promise<T> => {
    const cancel = () => {
      // (Once the worker is stopped its proxy is released: nothing left to cancel.)
      if (!stopped) void forward().catch(() => undefined);
    };
    signal?.addEventListener('abort', cancel, { once: true });
    try {
      return await f();
    } finally {
      signal?.removeEventListener('abort', cancel);
    }
  };
  /** Set by the first close() or erase(): what it returns, and which one it was. */
  let ending: { kind: 'close' | 'erase'; done: Promise<void> } | undefined;
  let pending: unknown[] = [];
  releaseHeld = () => {
    if (!heldForConsent.length || closed || ending?.kind === 'erase') return;
    pending.unshift(...heldForConsent);
    heldForConsent = [];
    queueMicrotask(post);
  };
  let seq = 0;
  let seen = 0;
  const post = () => {
    const batch = pending;
    pending = [];
    if (batch.length && !closed) channel.port1.postMessage({ seq: ++seq, events: batch });
  };
  /** Posts what is pending and, if anything was tracked since the last call, waits until the worker has it. */
  const synced = async () => {
    post();
    if (seq > seen) {
      const s = seq;
      await api.barrier(s);
      seen = Math.max(seen, s);
    }
  };
  /**
   * Runs a worker call after every event tracked so far has reached the worker, and after a grant
   * of personalization under way (see {@link grantDone}; setConsent's own call does not wait).
   */
  const call = <T>(f: () => Promise<T>, field?: string, afterGrant = true): Promise<T> => {
    // Every method but track() is async: a closed recommender rejects, it does not throw.
    try {
      open();
    } catch (e) {
      return Promise.reject(e);
    }
    const ready = afterGrant && granting > 0 ? grantDone.then(synced) : synced();
    const p = orDead(revive(ready.then(f), field));
    waitOn(p);
    return p;
  };
  const open = () => {
    if (deadError) throw new ClosedError(deadError.message);
    if (closed) throw new ClosedError('the recommender is closed');
    if (ending) throw new ClosedError(`the recommender is ${ending.kind === 'close' ? 'closing' : 'erasing its data'}`);
  };
  /**
   * Ends the session once: new calls are refused at once, a sync waiting for its cohort is
   * cancelled, calls already made get their answers, then the worker does `last` and stops.
   */
  const end = (kind: 'close' | 'erase', last: () => Promise<void>): Promise<void> => {
    if (ending) {
      if (ending.kind === kind) return ending.done;
      return Promise.reject(new ClosedError(`the recommender is already ${ending.kind === 'close' ? 'closing' : 'erasing its data'}`));
    }
    // The worker may be taken for dead at any point of this: then an erase still holds (done from
    // the page), and a close has nothing left to do.
    const afterDeath = (): Promise<void> => (kind === 'erase' ? deleteDatabase(dbName) : Promise.resolve());
    const done = (async () => {
      // An erase: a sync whose cohort has filled drops out of it rather than upload the history
      // being erased (a close lets it upload: the cohort's other members wait on it).
      void api.cancelSync(undefined, kind === 'erase').catch(() => undefined);
      // A training run (up to 1000 epochs) stops at its next step, saving nothing: a train() in
      // flight rejects with an AbortError ("training stopped by erase()") instead of holding this.
      void api.stopTraining(kind).catch(() => undefined);
      await Promise.all([...inflight]);
      if (deadError) return afterDeath();
      const final = orDead(revive(Promise.resolve().then(last)));
      waitOn(final);
      try {
        await final;
      } catch (e) {
        if (deadError) return afterDeath();
        throw e;
      }
    })().finally(stop);
    ending = { kind, done };
    return done;
  };
  // A page being hidden or unloaded may be the last chance to store what was just tracked: the
  // worker otherwise waits a few milliseconds to batch writes, and a navigation can end it first.
  const onHide = (ev: Event) => {
    if (closed || ending) return;
    if (ev.type === 'visibilitychange' && globalThis.document?.visibilityState !== 'hidden') return;
    // The last batch and the order to write go together, on the track port: a flush sent over the
    // comlink port could reach the worker before the batch (two ports keep no order between them).
    const batch = pending;
    pending = [];
    if (!closed) channel.port1.postMessage({ seq: batch.length ? ++seq : seq, events: batch, flush: true });
  };
  globalThis.addEventListener?.('pagehide', onHide);
  globalThis.document?.addEventListener?.('visibilitychange', onHide);
  let stopped = false;
  const stop = () => {
    // Once only: the liveness check may have stopped the worker before close()/erase() end.
    if (stopped) return;
    stopped = true;
    closed = true;
    clearTimeout(watchdog);
    watchdog = undefined;
    channel.port1.onmessage = null;
    globalThis.removeEventListener?.('pagehide', onHide);
    globalThis.document?.removeEventListener?.('visibilitychange', onHide);
    channel.port1.close();
    api[Comlink.releaseProxy]();
    worker.terminate();
  };
  halt = stop;
  return {
    track(event: TrackEvent): void {
      open();
      // Validated here too so that the caller gets the error at the call site. Never posted, so
      // counted here: stats().dropped adds it to what the worker's engine refused itself.
      let valid: ReturnType<typeof validateEvent>;
      // A device clock before 2000 (a dead clock battery) cannot time an event: dropped, counted,
      // not thrown from every call of a page's click handlers (the page can pass t to keep it).
      if (clockBefore2000(Date.now()) && typeof event === 'object' && event !== null && (event as { t?: unknown }).t === undefined) {
        rejected++;
        return;
      }
      try {
        valid = validateEvent(event);
        checkEventAge(valid, Date.now(), maxAgeDays);
      } catch (e) {
        rejected++;
        throw e;
      }
      // (A withdrawal still on its way to the worker counts as done: what follows it is not posted.)
      if (!consented || withdrawing > 0) {
        // While the shopper's grant is being applied, what they do is kept on the page until it
        // is; before consent the event does not even leave the page's thread.
        if (granting) heldForConsent.push(valid);
        else dropped++;
        return;
      }
      // Events tracked in one task go to the worker in one message: a burst of track() calls
      // (a page rendering a list of impressions) pays for one structured clone, not one each.
      pending.push(valid);
      if (pending.length === 1) queueMicrotask(post);
    },
    // Option keys are checked on the page too: a value that cannot be copied to the worker (a
    // function, an AbortSignal) under a wrong key would fail there as a DataCloneError.
    recommend: (o) => call(() => api.recommend(checkedKeys(o, OPTION_KEYS.recommend))),
    similar: (id, o) => call(() => api.similar(id, checkedKeys(o, OPTION_KEYS.similar)), 'itemId or options'),
    async train(o: TrainOptions = {}) {
      open();
      if (typeof o !== 'object' || o === null) throw new ValidationError('options', 'must be an object like { epochs, onProgress }');
      knownKeys(o, 'options', OPTION_KEYS.train);
      const { onProgress, signal, ...plain } = o;
      if (onProgress !== undefined && typeof onProgress !== 'function') throw new ValidationError('options.onProgress', `must be a function, got ${typeof onProgress}`);
      checkSignal(signal, 'options.signal');
      const cancelled = () => new AbortError('training cancelled by its signal before it started; nothing was trained');
      if (signal?.aborted) throw cancelled();
      // As sync(): the abort is forwarded to the worker, naming this call.
      const id = ++callIds;
      return forwardingAbort(signal, () => api.cancelTrain(id), () =>
        call(async () => {
          if (signal?.aborted) throw cancelled();
          return api.train(plain, onProgress ? Comlink.proxy(progressOnly(onProgress)) : undefined, signal ? id : undefined);
        }),
      );
    },
    async stats() {
      const s = await call(() => api.stats());
      return { ...s, dropped: s.dropped + dropped + rejected };
    },
    async setConsent(c) {
      open();
      if (typeof c !== 'object' || c === null) throw new ValidationError('consent', 'must be an object like { personalization: true, federated: false }');
      // A grant right after a withdrawal whose answer has not come back is a grant too: the worker
      // applies them in order, so what the shopper does after it is held until it is applied.
      const withdraw = c.personalization === false;
      const grant = c.personalization === true && (!consented || withdrawing > 0);
      if (withdraw) withdrawing++;
      if (grant && granting++ === 0) grantDone = new Promise<void>((resolve) => (endGrant = resolve));
      try {
        // (Not after a grant under way: the worker applies setConsent calls in the order made.)
        const state = await call(() => api.setConsent(c), 'consent', false);
        gate(state.personalization, state.version);
      } finally {
        if (withdraw) withdrawing--;
        if (grant && --granting === 0) {
          const held = heldForConsent;
          heldForConsent = [];
          // Granted: sent (a close() under way posts them before it ends); else dropped and counted.
          if (consented && !closed && ending?.kind !== 'erase') {
            pending.push(...held);
            post();
          } else dropped += held.length;
          // The calls made meanwhile go now, after what was held for the grant.
          endGrant?.();
        }
      }
    },
    async audit() {
      const a = await call(() => api.audit());
      return { ...a, consent: { ...a.consent, droppedBeforeConsent: a.consent.droppedBeforeConsent + dropped } };
    },
    export: () => call(() => api.exportData()),
    setOffers: (signed) => call(() => api.setOffers(signed), 'catalog'),
    offers: (o) =>
      call(() => {
        knownKeys(checkedKeys(o, OPTION_KEYS.offersCall)?.context, 'options.context', OPTION_KEYS.offerContext);
        return api.offers(o);
      }),
    setNeighbors: (file) =>
      call(() => {
        // A view is sliced here and its copy moved (not cloned): structured clone would send the
        // view's whole underlying buffer, however small the view.
        if (ArrayBuffer.isView(file) && file.buffer instanceof ArrayBuffer) {
          const own = file.buffer.slice(file.byteOffset, file.byteOffset + file.byteLength);
          return api.setNeighbors(Comlink.transfer(own, [own]));
        }
        return api.setNeighbors(file);
      }, 'neighbors'),
    async sync(o: SyncControl = {}) {
      open();
      if (typeof o !== 'object' || o === null) throw new ValidationError('options', 'must be an object like { onProgress, signal, contribute }');
      knownKeys(o, 'options', OPTION_KEYS.sync);
      const { onProgress, signal, contribute } = o;
      if (onProgress !== undefined && typeof onProgress !== 'function') throw new ValidationError('options.onProgress', `must be a function, got ${typeof onProgress}`);
      boolOption(contribute, 'options.contribute');
      checkSignal(signal, 'options.signal');
      if (signal?.aborted) throw syncCancelled('before it started');
      // The abort is forwarded to the worker naming this call, so that it cancels this call (and
      // the sync it runs or joined), not another one.
      const id = ++callIds;
      return forwardingAbort(signal, () => api.cancelSync(id), () =>
        // Checked again once tracked events have reached the worker: an abort (or a close() or
        // erase()) while waiting for them would otherwise reach the worker before its sync began.
        call(async () => {
          open();
          if (signal?.aborted) throw syncCancelled('before it started');
          return api.sync(onProgress ? Comlink.proxy(progressOnly(onProgress)) : undefined, contribute, id);
        }),
      );
    },
    egressLog: () => call(() => api.egressLog()),
    flush: () => call(() => api.flush()),
    async close() {
      if (closed) return;
      // An erase under way ends with the worker stopped: close() waits for it (whatever its
      // outcome, erase() reports that) instead of rejecting, so `void rec.close()` in a cleanup
      // path needs no catch.
      if (ending?.kind === 'erase') return ending.done.catch(() => undefined);
      // What was tracked is posted now, before the calls in flight settle.
      if (!ending) post();
      return end('close', () => synced().then(() => api.close()));
    },
    async erase() {
      // The worker is gone (taken for dead): the shopper's request to erase still holds, so the page
      // deletes the database itself.
      if (deadError) return deleteDatabase(dbName);
      if (closed || ending?.kind === 'close') {
        // A sync the close let finish must not upload the history being erased: it drops out.
        if (!closed && !deadError) void api.cancelSync(undefined, true).catch(() => undefined);
        // The worker has stopped (or is stopping): once it let go of the database, the page deletes it.
        await ending?.done.catch(() => undefined);
        return deleteDatabase(dbName);
      }
      // Pending events are dropped, not posted: they are about to be erased anyway.
      pending = [];
      return end('erase', () => api.erase());
    },
  };
}
