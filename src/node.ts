// Node entry: the same engine, model and training code as the browser worker, plus Node-only
// pieces (evaluation, aggregation server). Import from 'localrec/node'.
import '@tensorflow/tfjs-backend-cpu';
// wasm too: in Node it is several times faster than the CPU backend (the probe picks it when it is).
import '@tensorflow/tfjs-backend-wasm';
export { Engine } from './engine/engine.js';
export type { EngineOptions, ConsentRecord } from './engine/engine.js';
export type { AuditReport, ExportFile } from './engine/audit-types.js';
export { IdbEventStore, MemoryEventStore, openEventStore } from './events/store.js';
export type { EventStore, Retention, AddResult, EventStats, MetaValue } from './events/store.js';
export type { OfferLedger, LedgerOfferStats } from './events/offer-ledger.js';
export { validateEvent, EVENT_TYPES, EVENT_SCHEMA_VERSION } from './events/schema.js';
export { validateCatalog } from './model/catalog.js';
export { createItemTable, checkItemTable } from './model/item-table.js';
export type { ItemTable } from './model/item-table.js';
export { trainItemTable, DEFAULT_TRAIN_CONFIG } from './model/train.js';
export type { Sequence, TrainConfig, TrainStats, OptimizerState } from './model/train.js';
export { Scorer, userVector } from './model/score.js';
export type { Allowed, Scored } from './model/score.js';
export { buildProfile } from './model/profile.js';
export type { ProfileItem, ProfileOptions } from './model/profile.js';
export { buildNeighborTable, DEFAULT_NEIGHBOR_OPTIONS } from './model/build-neighbors.js';
export type { BuildNeighborOptions, BuildNeighborReport } from './model/build-neighbors.js';
export type { UserItemLists } from './model/sparse-ease.js';
export type { SparseItemModel } from './model/sparse-item-model.js';
export { encodeNeighborTable, decodeNeighborTable, neighborTableHash } from './model/neighbors-wire.js';
export { alignNeighbors, rankScores, reachedRows, neighborsOf, checkNeighborTable } from './model/neighbors.js';
export type { NeighborTable, WeightedRow } from './model/neighbors.js';
export { selectBackend } from './model/backend.js';
export type { SelectOptions, BackendChoice, RememberedBackend } from './model/backend.js';
export { startServer, createServer, createApp, MemoryStorage, SqliteStorage, PostgresStorage, RoundCoordinator, RateLimiter, MemoryCohortStore, StorageConflictError, REJECT_STATUS, RedeemCatalog } from './server/index.js';
export { SettingsChangedError } from './server/rounds.js';
export type { RoundConfig, OpenOptions, RoundSettings, Accepted, LogFn, LogFields } from './server/rounds.js';
export type { Rejection, UpdatePolicy } from './server/validate-update.js';
export type { AppOptions } from './server/app.js';
export type { SqliteStorageOptions } from './server/sqlite-storage.js';
export type { PendingRef, VersionRetentionOptions } from './server/storage.js';
export type { CohortTimeouts, CohortView } from './server/cohorts.js';
export type { FedAdamOptions } from './server/aggregate.js';
export type { SecAggParams, TagRound } from './federated/secagg.js';
export type {
  AggregatorName,
  RobustName,
  ServerOptions,
  RunningServer,
  ServerParts,
  Storage,
  StoredVersion,
  NewUpdate,
  PendingUpdate,
  PostgresStorageOptions,
  CohortStore,
  CohortInfo,
  CohortStatus,
  MarkResult,
  RecoveryResult,
  SweepResult,
  AbortedCohort,
  RateLimit,
  RateLimitOptions,
  RejectReason,
} from './server/index.js';
export * from './public-errors.js';
export type * from './types.js';
export { syncOnce, fetchServerConfig, pullModel } from './federated/sync.js';
export type { SyncOptions, SyncResult, EgressEntry, ServerConfig, FetchLike, RequestOptions } from './federated/sync.js';
export { RdpAccountant, noiseForSyncs, syncsWithinBudget } from './federated/dp.js';
export type { AccountantState, EpsilonMethod, Conversion, UniformSource } from './federated/dp.js';
export { buildClientUpdate } from './federated/client-update.js';
export type { ClientUpdate, ClientUpdateOptions, TrainedPart } from './federated/client-update.js';
export { encodeModel, decodeModel, encodeUpdate, decodeUpdate } from './federated/wire.js';
export type { DecodedModel, ModelEncoding, QuantizedUpdate, UpdateHeader } from './federated/wire.js';
export { generateOfferKeys, signOfferCatalog, verifyOfferCatalog, validateOfferCatalog, canonicalJson, chooseOffers, indexProducts } from './offers/index.js';
export type { OfferKeyPair, OffersInput, ProductIndex, AffinitySource } from './offers/index.js';
export type * from './offers/types.js';
