// Browser entry: named re-exports only. No TensorFlow.js here; it lives in the worker bundle.
export { createRecommender } from './recommender.js';
export type { Recommender } from './recommender.js';
export { validateEvent, EVENT_TYPES } from './events/schema.js';
export {
  LocalrecError,
  ValidationError,
  StorageError,
  ModelError,
  ClosedError,
  NetworkError,
  PrivacyBudgetError,
  ConsentError,
  AbortError,
  isLocalrecError,
  isValidationError,
  isStorageError,
  isModelError,
  isClosedError,
  isNetworkError,
  isPrivacyBudgetError,
  isConsentError,
  isAbortError,
} from './errors.js';
export type { AuditReport, ExportFile } from './engine/audit-types.js';
export type { EgressEntry } from './federated/sync.js';
export type { Offer, OfferCatalog, SignedOfferCatalog, ShownOffer, OffersOptions, OfferContext } from './offers/types.js';
export { isSignatureError } from './offers/signature-error.js';
export type { AffinitySnapshot, AffinityOfferStats } from './offers/affinity-model.js';
export type {
  BackendName,
  FederatedOptions,
  SyncResultInfo,
  SyncControl,
  SyncProgress,
  Catalog,
  CatalogItem,
  EventType,
  Progress,
  Reason,
  Recommendation,
  RecommenderOptions,
  RecommendOptions,
  RetentionOptions,
  ModelOptions,
  SimilarOptions,
  Stats,
  StoredEvent,
  TrackEvent,
  TrainOptions,
  TrainResult,
} from './types.js';
