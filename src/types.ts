/** Public types of localrec. Everything here is plain data that can cross the worker boundary. */
import type { Jwk } from './offers/types.js';

/** One product of the shop's catalog. */
export interface CatalogItem {
  /** Stable product id (SKU). 1–256 characters. */
  id: string;
  /** Optional human title, used in reasons ("Because you viewed …"). */
  title?: string | undefined;
  /**
   * Optional category: the `category` option of `recommend()` and `similar()` keeps only its items,
   * and offers scoped to categories apply to them.
   */
  category?: string | undefined;
  /** Optional unit price in the shop's currency, ≥ 0. */
  price?: number | undefined;
  /** Optional non-negative popularity hint (e.g. sales count) used before any model has learned. */
  popularity?: number | undefined;
}

/** The shop's product catalog: the items localrec may recommend (`options.catalog`). */
export interface Catalog {
  /** The products, 1 to 1,000,000 of them, each id once. */
  items: readonly CatalogItem[];
}

/** The kinds of behaviour localrec records. */
export type EventType =
  | 'view'
  | 'search'
  | 'add_to_cart'
  | 'remove_from_cart'
  | 'purchase'
  | 'rating'
  | 'offer_impression'
  | 'offer_redeemed';

/** What every event may carry besides its own fields. A field set to `undefined` counts as absent. */
export interface EventBase {
  /**
   * When it happened, in milliseconds since the epoch; defaults to `Date.now()` when the event is
   * tracked. From the year 2000 on, at most a day ahead of the device's clock, and not older than
   * `retention.maxAgeDays`.
   */
  t?: number | undefined;
}

/** The shopper looked at a product (its page, a quick view). */
export interface ViewEvent extends EventBase {
  /** Always `'view'`. */
  type: 'view';
  /**
   * The product's catalog id, 1–256 characters. An id the catalog does not hold is stored all the
   * same, and used once a catalog with it is passed.
   */
  itemId: string;
}

/** The shopper searched, and maybe clicked one of the results. */
export interface SearchEvent extends EventBase {
  /** Always `'search'`. */
  type: 'search';
  /** What the shopper typed: 1–512 characters once trimmed (it is stored trimmed). */
  query: string;
  /** The item the shopper clicked in the results, if any. */
  itemId?: string | undefined;
}

/** The shopper put an item into the cart, or took it out. */
export interface CartEvent extends EventBase {
  /** `'add_to_cart'` or `'remove_from_cart'`. */
  type: 'add_to_cart' | 'remove_from_cart';
  /** The product's catalog id, 1–256 characters. */
  itemId: string;
  /**
   * Units added or taken out, a whole number from 1 to 1,000,000; an add without it is one unit, a
   * removal without it takes the whole line out.
   */
  quantity?: number | undefined;
}

/** The shopper bought an item: one event per order line. */
export interface PurchaseEvent extends EventBase {
  /** Always `'purchase'`. */
  type: 'purchase';
  /** The product's catalog id, 1–256 characters. */
  itemId: string;
  /** Units bought, a whole number from 1 to 1,000,000. */
  quantity?: number | undefined;
  /** Unit price paid, from 0 to 10⁹. */
  price?: number | undefined;
}

/** The shopper rated an item. A rating of 2.5 or less is never cited in a reason. */
export interface RatingEvent extends EventBase {
  /** Always `'rating'`. */
  type: 'rating';
  /** The product's catalog id, 1–256 characters. */
  itemId: string;
  /** Rating on a 0–5 scale. */
  value: number;
}

/**
 * An offer from `offers()` was shown to the shopper (`offer_impression`) or used
 * (`offer_redeemed`). The page tracks them; the offer policy counts them against each offer's
 * `limits` and learns from them which offers this shopper takes up.
 */
export interface OfferEvent extends EventBase {
  /** `'offer_impression'` or `'offer_redeemed'`. */
  type: 'offer_impression' | 'offer_redeemed';
  /** The offer's `id` in the shop's offer catalog, 1–256 characters. */
  offerId: string;
}

/** What `track()` accepts. */
export type TrackEvent = ViewEvent | SearchEvent | CartEvent | PurchaseEvent | RatingEvent | OfferEvent;

/**
 * An event as stored (in IndexedDB, or in memory): validated, with its time filled in. Only the
 * fields of its kind are present.
 */
export interface StoredEvent {
  /** Auto-increment key, assigned by the store. */
  id?: number;
  /** When it happened, ms since the epoch: the tracked `t`, or the time it was tracked. */
  t: number;
  /** The kind of event. */
  type: EventType;
  /** The item: of view, cart, purchase and rating events, and of a search whose result the shopper clicked. */
  itemId?: string;
  /** A search's text, trimmed. */
  query?: string;
  /** A cart event's or a purchase's units, when the page gave them. */
  quantity?: number;
  /** A purchase's unit price, when the page gave it. */
  price?: number;
  /** A rating's value, 0–5. */
  value?: number;
  /** An offer event's offer id. */
  offerId?: string;
}

/**
 * The kinds of event a reason may cite: what the shopper did with an item (`view`ed, `search`ed
 * for, added to cart, bought, rated well). An add to cart later taken back, or a rating of 2.5 stars or
 * less, is never cited.
 */
export type CitedEventType = 'view' | 'search' | 'add_to_cart' | 'purchase' | 'rating';

/** One past item a reason cites, and what the shopper did with it (the strongest such event). */
export interface ReasonBasis {
  /** The cited past item's catalog id. */
  itemId: string;
  /** What the shopper did with it. */
  event: CitedEventType;
}

/**
 * Why an item was recommended: the shopper's past items that contributed most. `text` is English;
 * a page in another language builds its own sentence from `kind`, `basis` and `itemIds` (with its
 * own product titles), which hold everything the text says. One type per `kind`, so that checking
 * `kind` narrows the rest (a `similar` reason's `itemIds[0]` is a `string`):
 *
 * - {@link PersonalReason} with a `basis`: "Because you viewed A and bought B" (one entry per cited
 *   item); without one: "Based on your recent activity" (reached only through history no reason
 *   may cite);
 * - {@link PopularReason}: "Popular in this shop";
 * - {@link SimilarReason} (from `similar(itemId)`): "Similar to A", with `itemIds` = [A].
 */
export type Reason = PersonalReason | PopularReason | SimilarReason;

/** Computed from the shopper's own history. */
export interface PersonalReason {
  /** Always `'personal'`. */
  kind: 'personal';
  /** A sentence a shopper can read, e.g. "Because you viewed Red Mug and bought Tea Set". */
  text: string;
  /** The contributing past item ids, strongest first: those of `basis`, in its order. */
  itemIds: string[];
  /** The items `text` cites, in its order, each with what the shopper did (empty when it cites none). */
  basis: ReasonBasis[];
}

/** Cold start, or an item the shopper's history does not reach: "Popular in this shop". */
export interface PopularReason {
  /** Always `'popular'`. */
  kind: 'popular';
  /** "Popular in this shop". */
  text: string;
  /** Empty: no past item is cited. */
  itemIds: [];
  /** Empty: no past item is cited. */
  basis: [];
}

/** From `similar(itemId)`: "Similar to A". */
export interface SimilarReason {
  /** Always `'similar'`. */
  kind: 'similar';
  /** "Similar to A", A being the item's catalog title (its id when it has none). */
  text: string;
  /** The item asked about. */
  itemIds: [string];
  /** Empty: no past item of the shopper's is cited. */
  basis: [];
}

/** One item of `recommend()`'s or `similar()`'s list, best first. */
export interface Recommendation {
  /** The item's catalog id. */
  itemId: string;
  /**
   * A ranking score: the list is sorted by it, highest first. It only orders the items of one
   * call's list: it is not a probability, and means nothing across calls or shoppers.
   * `recommend()` without a neighbour table, or for a shopper with no history yet, gives the
   * model's raw score (the item's bias plus the dot product of its embedding with the shopper's
   * vector, over the training temperature: any real number). With a neighbour table, the items the
   * shopper's history reaches through it score from 1 to 2, and the model's picks that fill the
   * rest of the list are scaled into [0, 1). `similar()`: the item's published
   * neighbours score 1 + their weight in the table, and the items with the nearest embeddings that
   * follow score their cosine similarity (−1 to 1).
   */
  score: number;
  /**
   * Why it is recommended: a {@link Reason} object with an English `text` and the facts it is
   * worded from (`kind`, `basis`, `itemIds`), to word it in another language.
   */
  reason: Reason;
}

/** Options of `recommend()`. A field set to `undefined` takes its default. */
export interface RecommendOptions {
  /** How many items, 1–1000 (up to the number of `candidates` when more are given). Default 10; with `candidates`, all of them. */
  k?: number | undefined;
  /**
   * Items to leave out: `'seen'` drops every item the shopper interacted with, `'purchased'` only
   * bought ones, `'none'` keeps all, or an explicit list of ids. Default `'seen'`.
   */
  exclude?: 'seen' | 'purchased' | 'none' | readonly string[] | undefined;
  /** Only recommend items of this category. */
  category?: string | undefined;
  /**
   * Only recommend among these items: the products of a category page or a search's results, to
   * show them in this shopper's order (all of them unless `k` says fewer). Ids the catalog does not
   * hold are skipped and each id counts once; `exclude` and `category` still apply (pass
   * `exclude: 'none'` to keep items the shopper has seen). At most 10,000 ids.
   */
  candidates?: readonly string[] | undefined;
}

/** Options of `similar(itemId)`. A field set to `undefined` takes its default. */
export interface SimilarOptions {
  /** How many items, 1–1000. Default 10. */
  k?: number | undefined;
  /**
   * Items to leave out besides the item itself, as in {@link RecommendOptions.exclude}: `'seen'`,
   * `'purchased'`, an explicit list of ids (the cart's, say), or `'none'` (default).
   */
  exclude?: 'seen' | 'purchased' | 'none' | readonly string[] | undefined;
  /** Only items of this category. */
  category?: string | undefined;
}

/** Progress of a long operation, reported through `onProgress`. */
export interface Progress {
  /** `loading` the shopper's history, `training` (after each step, with its `loss`), `saving` the weights. */
  phase: 'loading' | 'training' | 'saving';
  /** Steps done so far and in all (for training: epochs × batches). */
  done: number;
  /** Steps of the phase in all. */
  total: number;
  /** Mean training loss of the last completed step, when training. */
  loss?: number;
}

/** Options of `train()`. A field set to `undefined` counts as left out. */
export interface TrainOptions {
  /**
   * Passes over the local examples (1–1000). Default 4. A call made while a run is under way (an
   * automatic one, or another caller's) joins that run when `epochs` is left out or equal to its
   * epochs; otherwise it waits for that run and then trains with its own.
   */
  epochs?: number | undefined;
  /** Progress of the run (the joined one's, from the moment of joining). A callback that throws does not stop it. */
  onProgress?: ((p: Progress) => void) | undefined;
  /**
   * Stops the run this call started or joined, between two of its steps, for every caller of that
   * run (as `sync()`'s signal stops the sync it joined): unless it has reached its saving phase,
   * nothing it learned is saved and the call rejects with an `AbortError`. A call still waiting for
   * a run of other epochs just stops waiting.
   */
  signal?: AbortSignal | undefined;
}

/** What a training run did (`train()`; a call that joined a run gets that run's result). */
export interface TrainResult {
  /** Training steps (batches) taken over all epochs; 0 when the history held nothing to learn from. */
  steps: number;
  /**
   * Training examples drawn from the shopper's history: each item after the first (that carries
   * weight) is a target for the items before it.
   */
  examples: number;
  /** Mean loss over the first and the last epoch; null when nothing was trained (`steps` 0: no history to learn from). */
  firstLoss: number | null;
  /** Mean loss over the last epoch; null when nothing was trained. Usually below `firstLoss`. */
  lastLoss: number | null;
  /** How long the run took, in milliseconds, loading the history and saving the weights included. */
  ms: number;
  /** The TensorFlow.js backend it ran on. */
  backend: BackendName;
}

/** A TensorFlow.js backend localrec can score and train on. */
export type BackendName = 'webgpu' | 'webgl' | 'wasm' | 'cpu';

/** `stats()`'s answer: the backend, stored events, the model, the privacy budget, failures. */
export interface Stats {
  /** The TensorFlow.js backend in use. */
  backend: BackendName;
  /** Why that backend was chosen: `forced` by the option, or the probe's measured ms per backend. */
  backendReason: string;
  /** The stored events: how many, how many of each type, and the times of the oldest and newest (undefined when there are none). */
  events: { total: number; byType: Partial<Record<EventType, number>>; oldest?: number; newest?: number };
  /** The model in use: its size, the global version it builds on, its training, its neighbour table. */
  model: {
    items: number;
    dim: number;
    /** Global model version the local item table is based on (0 = initial, never synced). */
    version: number;
    trainedAt?: number;
    trainSteps: number;
    /** Events stored since the last training. */
    pendingEvents: number;
    /**
     * The neighbour table ranking uses (see `options.neighbors`), or null without one: `items` in
     * the file, `matched` of them in this page's catalog (the only ones ranking can use).
     */
    neighbors: { items: number; matched: number; width: number; hash: string; source: string } | null;
  };
  /** Privacy budget of federated learning on this device. */
  privacy: {
    epsilon: number;
    delta: number;
    budget: number;
    syncs: number;
    /** Further syncs that fit the budget at the σ of the last one; null before the first sync. */
    syncsLeft: number | null;
    /**
     * This database's (`options.dbName`'s) part of `epsilon` and `syncs`. With a server and
     * IndexedDB, `epsilon`, `syncs` and `syncsLeft` count every localrec instance of the origin
     * (every dbName) that synced with the same server, as the budget does (`ledger`); on memory
     * they are this database's alone, as here.
     */
    thisDatabase: { epsilon: number; syncs: number };
    /** The IndexedDB database the origin's instances account their ε per server in (`'localrec-privacy'`), or null when this one accounts alone (memory, no server). */
    ledger: string | null;
    federated: boolean;
    /** With `options.federated.autoSyncHours`: the period, when a sync that counts for it last succeeded (a contributing one, the page's own too, or an automatic receiving one) and when an automatic one was last started, in any tab. */
    autoSync: { everyHours: number; lastSuccessAt: number | null; lastAttemptAt: number | null } | null;
  };
  /** Events removed this session: by the retention policy, and to make room when storage was full. */
  evicted: { retention: number; quota: number };
  /**
   * Events accepted by `track()` that are still not written once `stats()` has tried to write the
   * queue (it writes first, so that `events` counts what was tracked): non-zero only when that
   * write failed (storage full, the database gone), and `lastError` says why.
   */
  queued: number;
  /**
   * Events dropped before consent, refused by validation (including events older than
   * `retention.maxAgeDays`: those `track()` threw for on the page, and those `Engine.enqueue`
   * refused), or never stored because more than `retention.maxEvents` waited while storage kept
   * failing (the oldest go).
   */
  dropped: number;
  /**
   * Where events are kept: `'indexeddb'`, or `'memory'` when IndexedDB is missing or refused to
   * open (private mode, plain Node) and while personalization has no consent (nothing is written
   * to the device then).
   */
  storage: 'indexeddb' | 'memory';
  /** The last background failure (auto-training, writing), if any. */
  lastError?: string;
}

/**
 * Progress of `sync()`, reported through `onProgress`. Phases come in this order, each at least once
 * when it happens: `config` (the server's settings), `model` (the global model, not downloaded again
 * when unchanged), `training` (local training, or the subspace step), then under secure aggregation
 * `cohort` once per poll while the cohort fills (`joined` of `size` members), `upload` (the one
 * request that carries the update; `bytes`), and with dropout recovery `recovery` once per poll
 * until the cohort ends (`submitted` of `size` uploads; `dropped` once the cohort recovers: how
 * many members never uploaded, 0 when all did and only the self-masks come off).
 */
export interface SyncProgress {
  /** The step the sync has reached. */
  phase: 'config' | 'model' | 'training' | 'cohort' | 'upload' | 'recovery';
  /** `cohort`: members that joined so far. */
  joined?: number;
  /** `recovery`: members that uploaded so far. */
  submitted?: number;
  /** `cohort` and `recovery`: the cohort's size. */
  size?: number;
  /** `recovery`, once the cohort recovers: members that never uploaded. */
  dropped?: number;
  /** `upload`: bytes of the update. */
  bytes?: number;
}

/** Options of `sync()`. A field set to `undefined` takes its default. */
export interface SyncControl {
  /** Told each phase as the sync reaches it (see {@link SyncProgress}). */
  onProgress?: ((p: SyncProgress) => void) | undefined;
  /**
   * Cancels the sync: before the upload it rejects with an `AbortError` and nothing was sent or
   * spent (a device waiting for its secure-aggregation cohort to fill gives its place back; a
   * cancel that lands while the release is being stored still stops the upload, with that ε spent). Once
   * the cohort is full, or the update is on its way, the upload goes ahead (the cohort's other
   * members depend on it; the ε is spent) and only the wait for the cohort's end is cut short
   * (`cohortOutcome: 'left'`) — except with dropout recovery (`minSurvivors` below the cohort
   * size), where a device cancelled once its cohort is full and before its upload drops out
   * instead (its upload could not be unmasked without the recovery share it would not stay to
   * give; the others recover without it). A sync shared by several callers is cancelled for all of them; a
   * contributing call still waiting for a receiving sync to end is cancelled alone.
   */
  signal?: AbortSignal | undefined;
  /**
   * `false`: only receive. The sync fetches the newest global model (nothing is downloaded when the
   * version the device holds is still current: the request carries its hash in `If-None-Match`),
   * takes the same local step on it, and uploads nothing, so it spends no ε and works once the
   * budget is spent: the shopper keeps getting what everyone else's updates taught the model.
   * Default `true`. A receiving call while a contributing sync runs gets that sync's result (or,
   * when it is refused for the budget, receives on its own); a contributing call while a receiving
   * one runs waits for it, then syncs.
   */
  contribute?: boolean | undefined;
}

/** What `sync()` did. */
export interface SyncResultInfo {
  /** Global model version the device now builds on. */
  version: number;
  /** Whether the device took a global version it did not build on before (false after a 304, or when the same version came again). */
  modelChanged: boolean;
  /**
   * False when the shopper had too little history to contribute: fewer than two distinct items
   * (decided on the device's data alone; nothing was uploaded or spent).
   */
  sent: boolean;
  /** Bytes of the update this device uploaded; 0 when it sent none. */
  uploadedBytes: number;
  /** ε spent on this device so far, this sync included. */
  epsilon: number;
  /** The most ε this device may spend in all (`federated.budget`). */
  budget: number;
  /**
   * Updates waiting at the server for its current round, as its answer to the upload said; absent
   * when nothing was uploaded or the answer did not say.
   */
  pending?: number;
  /** The version the server published because this device's update completed a round; otherwise null. */
  published: number | null;
  /**
   * Set when the server runs secure aggregation: the update went out masked, in a cohort of this
   * many devices, and the server only learns the cohort's sum (docs/protocol.md).
   */
  cohortSize?: number;
  /**
   * When the server recovers cohorts that lose members (`minSurvivors` < K): sync() waits until the
   * cohort ends and says how, `published`, `aborted` or `left` (still open when the device stopped
   * waiting, or it refused the server's list of dropped members); `recoveryShareSent` when this
   * device gave the seeds it shared with dropped members (docs/protocol.md, "Dropout recovery").
   */
  cohortOutcome?: 'published' | 'aborted' | 'left';
  /** With `cohortOutcome`: whether this device sent the seeds it shared with dropped members, to recover the cohort. */
  recoveryShareSent?: boolean;
}

/** `options.federated`: the aggregation server, and what this device may spend on it. */
export interface FederatedOptions {
  /** Aggregation server, e.g. `https://shop.example/localrec` (paths /v1/… are appended). */
  serverUrl: string;
  /** Largest total ε this device may spend on federated learning. Default 8. */
  budget?: number | undefined;
  /**
   * δ of the (ε, δ) guarantee: the probability that it fails outright for a shopper, which must be
   * far below 1 / the number of devices. Default 1e-5; at most 1e-3 (a larger δ is refused with a
   * ValidationError: it makes the reported ε meaninglessly small, next to 0 at δ = 0.5).
   */
  delta?: number | undefined;
  /**
   * Global Privacy Control (`navigator.globalPrivacyControl`) turns sync off unless this is set to
   * `false` — a decision for the host, which the audit reports. Default true.
   */
  honorGlobalPrivacyControl?: boolean | undefined;
  /**
   * When the server runs secure aggregation: how long `sync()` waits for its cohort to fill before
   * it gives up (a NetworkError; nothing is sent and no ε is spent). Default: the server's cohort
   * timeout (10 minutes unless configured).
   */
  cohortWaitMs?: number | undefined;
  /**
   * Sync by itself, at most once every this many hours (≥ 0.25) across the shop's tabs and reloads,
   * while a page is open and consent (and Global Privacy Control) allow it: a contributing `sync()`
   * while the budget allows one more, then `sync({ contribute: false })`, which spends nothing. The
   * page's own contributing syncs count for the period. The first look comes 10 s to 30 min after start-up
   * (or after consent is given: 10 s plus a random part of up to 30 min or half the period, whichever
   * is shorter, so that the first request does not tell when the shopper opened the shop); a failure (offline, server down) is retried 15 minutes later at the
   * soonest and shows in `stats().lastError` (one that failed after its ε was spent, e.g. its
   * answer was lost, waits the whole period instead). Off without IndexedDB (private mode: nothing would
   * hold the period across page loads) and, for the rest of the session, once another tab erased
   * the shopper's data. Default 0: off, the page calls `sync()`.
   */
  autoSyncHours?: number | undefined;
  /**
   * Where IndexedDB exists but could not be opened (private mode, storage blocked: the SDK runs on
   * memory, `stats().storage` is `'memory'`), the device cannot remember the ε it spends, so a
   * contributing `sync()` is refused with a PrivacyBudgetError (nothing sent; `sync({ contribute:
   * false })` still receives). `true` lets it sync: **each visit may then spend the whole budget
   * again**. Default false. (Plain Node without IndexedDB, where memory is the intended store, is
   * not refused.)
   */
  allowWithoutStorage?: boolean | undefined;
}

/** `options.retention`: how many events, and how old, the device keeps. */
export interface RetentionOptions {
  /** Keep at most this many events; the oldest are removed first. Default 5,000. */
  maxEvents?: number | undefined;
  /** Remove events older than this many days. Default 365. */
  maxAgeDays?: number | undefined;
}

/** `options.model`: the on-device model's shape and how it weighs the shopper's history. */
export interface ModelOptions {
  /** Embedding size, 1–64. Default 32. */
  dim?: number | undefined;
  /** Half-life of an event's weight in the user vector, in days. Default 30. */
  halfLifeDays?: number | undefined;
  /**
   * Weight kept per later session (sessions are bursts of events 30+ minutes apart): what the
   * shopper did this visit counts most. In (0, 1]; 1 turns it off. Default 0.5.
   */
  sessionDecay?: number | undefined;
  /**
   * Weight kept per later distinct event time (a basket, a rating, a view): sharper than
   * sessions. In (0, 1]; default 1 (off). On MovieLens, ratings tracked as ratings, 0.7 lifts
   * HR@10 from 0.085 to 0.118 (docs/EVALUATION.md, EASE λ 200 neighbours); on basket data it changes nothing.
   */
  stepDecay?: number | undefined;
  /** Seed for initialization and negative sampling: a whole number from 0 to 2³² − 1. Default 1. */
  seed?: number | undefined;
}

/**
 * What `createRecommender()` takes: the catalog, and optional settings. An optional field set to
 * `undefined` takes its default.
 */
export interface RecommenderOptions {
  /** The shop's products: the items localrec may recommend. */
  catalog: Catalog;
  /** Force a tfjs backend instead of probing. */
  backend?: BackendName | undefined;
  /** IndexedDB database name. Default `'localrec'`. */
  dbName?: string | undefined;
  /** How many events, and how old, the device keeps. */
  retention?: RetentionOptions | undefined;
  /** The on-device model's settings. */
  model?: ModelOptions | undefined;
  /**
   * Train by itself once this many new events are stored (0 turns auto-training off). Default 20.
   */
  autoTrainEvery?: number | undefined;
  /**
   * `'required'`: nothing is stored, trained or sent until `setConsent({ personalization: true })`;
   * tracked events are dropped (counted in `stats().dropped`). `'granted'` (default): the host
   * gives no decision and the shopper is treated as having consented to both, except that a
   * withdrawal of federated learning stored on the device (`setConsent({ federated: false })` on an
   * earlier visit) still holds (recorded as `stored` in the consent history). `{ personalization,
   * federated }`: the answer the host remembered from an earlier visit (its consent banner's),
   * applied as given, over what the device stored; the same answer as last time adds nothing to the
   * consent history, where `'required'` followed by `setConsent()` would add two records per page load.
   */
  consent?: 'required' | 'granted' | { personalization: boolean; federated: boolean } | undefined;
  /**
   * Offers: the shop's public key(s) (JWK, ECDSA P-256) that `setOffers()` catalogs must be signed
   * with, shipped in the page's own code (never fetched next to the catalog); `minVersion`, a whole
   * number ≥ 0: catalogs of a lower version are refused (raise it in the page to withdraw old ones).
   */
  offers?: { publicKey: Jwk | readonly Jwk[]; minVersion?: number | undefined } | undefined;
  /** Federated learning; without it the model never leaves the device and `sync()` refuses. */
  federated?: FederatedOptions | undefined;
  /**
   * The shop's neighbour table, made by `localrec neighbors` from its own order log and served as a
   * static file. Fetched (a plain GET that carries nothing about the shopper) once personalization
   * is allowed, kept in IndexedDB; with it `recommend()` ranks by the shopper's history through the
   * table and `similar()` lists the published neighbours. Relative URLs resolve against the page.
   */
  neighbors?:
    | {
        /** Where the neighbour file is served. */
        url: string | URL;
        /**
         * How long `recommend()` and `similar()` wait for a device's first file before ranking
         * without it, in ms from the fetch's start (later calls do not wait again); the download
         * goes on. Default 15,000.
         */
        timeoutMs?: number | undefined;
        /** How long the download may take before it is given up (and tried again later), in ms. Default 120,000 (at least `timeoutMs`). */
        downloadTimeoutMs?: number | undefined;
        /**
         * A stored file fetched (or found unchanged) less than this many hours ago is used without
         * a request; a page open longer fetches it again in the background. 0: every page load.
         * Default 24.
         */
        refreshHours?: number | undefined;
      }
    | undefined;
  /** URL of the worker bundle; defaults to `worker.js` next to the main bundle. */
  workerUrl?: string | URL | undefined;
  /**
   * URL of the folder that serves TensorFlow.js's WASM binaries (`tfjs-backend-wasm.wasm`,
   * `-simd.wasm`, `-threaded-simd.wasm` from the package's `dist/`), ending in `/`. Default: the
   * worker's own folder, where they sit in the package. Set it when a bundler emits the worker
   * somewhere else without them (README, "Bundlers"). Relative URLs resolve against the page. The
   * GPU backends' files (`worker-webgl.js`, `worker-webgpu.js`) are looked for there too when they
   * are not beside the worker.
   */
  wasmPaths?: string | URL | undefined;
  /**
   * While calls are waiting for the worker, the page checks every few seconds that it still
   * answers; a worker that leaves a check unanswered for this many ms is taken for dead (a worker
   * that ran out of memory ends without any event), and every call waiting on it, and every later
   * one, rejects with a ClosedError instead of hanging (`erase()` then deletes the database from the
   * page). Start-up is checked too, but until the worker first answers (its script may still be
   * downloading) it gets at least 60 s; checks made late (a hidden, throttled tab) do not count.
   * Default 60,000; 0 turns the check off; otherwise at least 1,000.
   */
  workerTimeoutMs?: number | undefined;
}
