// Browser entry: named re-exports only. No TensorFlow.js here; it lives in the worker bundle.
export { createRecommender } from './recommender.js';
export type { Recommender } from './recommender.js';
export { validateEvent, EVENT_TYPES } from './events/schema.js';
export * from './public-errors.js';
export type { AuditReport, ExportFile } from './engine/audit-types.js';
export type { OfferLedger, LedgerOfferStats } from './events/offer-ledger.js';
export type { EgressEntry } from './federated/sync.js';
export type { ConsentRecord } from './engine/engine.js';
export type { AccountantState } from './federated/dp.js';
export type {
  Offer,
  OfferCatalog,
  SignedOfferCatalog,
  SetOffersResult,
  ShownOffer,
  OfferWhy,
  OffersOptions,
  OfferContext,
  OfferDiscount,
  OfferScope,
  OfferAudience,
  OfferLimits,
  OfferHints,
  OfferObjective,
  CartLine,
  Jwk,
} from './offers/types.js';
export type { AffinitySnapshot, AffinityOfferStats, AffinityFeature } from './offers/affinity-model.js';
export type {
  BackendName,
  FederatedOptions,
  SyncResultInfo,
  SyncControl,
  SyncProgress,
  Catalog,
  CatalogItem,
  EventType,
  EventBase,
  Progress,
  Reason,
  PersonalReason,
  PopularReason,
  SimilarReason,
  ReasonBasis,
  CitedEventType,
  Recommendation,
  RecommenderOptions,
  RecommendOptions,
  RetentionOptions,
  ModelOptions,
  SimilarOptions,
  Stats,
  StoredEvent,
  TrackEvent,
  ViewEvent,
  SearchEvent,
  CartEvent,
  PurchaseEvent,
  RatingEvent,
  OfferEvent,
  TrainOptions,
  TrainResult,
} from './types.js';
