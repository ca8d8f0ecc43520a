import type { EventType, StoredEvent } from '../types.js';
import type { AccountantState } from '../federated/dp.js';
import type { OfferLedger } from '../events/offer-ledger.js';
import type { EgressEntry } from '../federated/sync.js';
import type { ConsentRecord } from './engine.js';

/** `audit()`'s report. Stable: fields are only added, and `schema` changes when one changes meaning. */
export interface AuditReport {
  /** The report's format version. */
  schema: 1;
  /** When the report was made, ms since the epoch. */
  generatedAt: number;
  /**
   * Where the shopper's data lives: `kind`, and for IndexedDB the database's name, its schema
   * version and its object stores (`database` null and `stores` empty in memory).
   */
  storage: {
    kind: 'indexeddb' | 'memory';
    database: string | null;
    schemaVersion: number;
    stores: string[];
    /**
     * A database an earlier visit stored under this name that this session has not opened (no
     * consent yet, or IndexedDB refused to open it): what it holds is not in this report. Consent
     * opens it; `setConsent({ personalization: false })` or `erase()` deletes it. Null when there
     * is none (or the browser cannot list its databases).
     */
    notOpened: string | null;
  };
  /**
   * The stored events: how many, how many of each type, the oldest and newest times (null when
   * there are none), their size as JSON in bytes, and what was removed this session.
   */
  events: {
    total: number;
    byType: Partial<Record<EventType, number>>;
    oldest: number | null;
    newest: number | null;
    bytes: number;
    /** Events removed since the SDK started on this page: by retention, and for the storage quota. */
    evictedThisSession: { retention: number; quota: number };
  };
  /** The retention limits in force (`options.retention`, with the defaults filled in). */
  retention: { maxEvents: number; maxAgeDays: number };
  /**
   * The model weights: whether they are stored on the device (when not, the other figures are
   * those of the model in memory and `bytes` is 0), the global version they build on, items,
   * embedding size, bytes stored, and when they last trained (null when never).
   */
  model: { stored: boolean; version: number; items: number; dim: number; bytes: number; trainedAt: number | null };
  /** The shop's neighbour table in use (public data: nothing about the shopper), or null. */
  neighbors: { stored: boolean; hash: string; items: number; matched: number; width: number; bytes: number; source: string; savedAt: number | null; checkedAt: number | null } | null;
  /** The shop's signed offer catalog kept on the device (public data the shop published), or null. */
  offers: { stored: true; version: number; offers: number; issuedAt: number } | null;
  /** The global model as the server last sent it (public data, the same for every device), kept so that an unchanged one is not downloaded again; or null. */
  globalModel: { stored: true; hash: string; bytes: number; server: string | null } | null;
  /**
   * What the device kept of offer events and purchases that retention removed (counts and times
   * per offer, the latest purchase's time: docs/OFFERS.md), or null when nothing was removed.
   */
  offerLedger: { stored: true; offers: number; lastPurchaseAt: number | null; bytes: number } | null;
  /** With `federated.autoSyncHours`: the stored times an automatic sync was last started and a sync last succeeded, and the earliest the next may start, or null. */
  autoSync: { stored: true; lastAttemptAt: number | null; lastSuccessAt: number | null; nextAt: number | null } | null;
  /** With secure aggregation: the server-assigned ids of the cohorts this shopper's syncs joined (at most 64), or null. */
  cohorts: { stored: true; ids: string[] } | null;
  /**
   * The backend probe's last choice, kept for a week so that page loads skip the probe: the
   * backend, when it was probed, and the browser's user agent string it was probed under (about the
   * device, not the shopper's behaviour); or null.
   */
  backendProbe: { stored: true; backend: string; at: number; userAgent: string } | null;
  /**
   * `requests` and `bytesSent` count what was sent; `notSent`, requests logged (pending) and then
   * stopped before they left: mostly uploads cancelled after their ε was recorded, also a GET, a join
   * or a cohort poll cancelled between its entry and sending.
   */
  egress: { requests: number; bytesSent: number; notSent: number; log: EgressEntry[] };
  /**
   * Federated learning: whether it is configured and may run, the server, ε spent against the
   * budget at δ, syncs made and left, and Global Privacy Control.
   */
  privacy: {
    federatedConfigured: boolean;
    /** Whether sync() may run now (configured, consented, not blocked by GPC). */
    federatedActive: boolean;
    serverUrl: string | null;
    epsilonSpent: number;
    epsilonBudget: number;
    delta: number;
    syncs: number;
    /** Further syncs that fit the budget at the σ of the last one; null before the first sync. */
    syncsLeft: number | null;
    /** This database's part of `epsilonSpent` and `syncs`, which count every instance of the origin (every dbName) that synced with this server (see `ledger`). */
    thisDatabase: { epsilon: number; syncs: number };
    /** The IndexedDB database the origin's instances account their ε per server in (`'localrec-privacy'`), or null when this one accounts alone (memory, no server). */
    ledger: string | null;
    /** `options.federated.autoSyncHours`: the SDK syncs by itself at most once per this many hours; null when it only syncs when the page calls `sync()`. */
    autoSyncHours: number | null;
    globalPrivacyControl: boolean;
    globalPrivacyControlHonored: boolean;
  };
  /**
   * Consent now, the recorded decisions (oldest first: those within `retention.maxAgeDays`, and
   * always the latest), and how many tracked events were dropped before consent was given.
   */
  consent: { current: { personalization: boolean; federated: boolean }; history: ConsentRecord[]; droppedBeforeConsent: number };
}

/** `export()`'s file: everything localrec stored about the shopper. */
export interface ExportFile {
  /** Always `'localrec-export'`: what the file is. */
  format: 'localrec-export';
  /** The file's format version. */
  schema: 1;
  /** When the file was made, ms since the epoch. */
  exportedAt: number;
  /** Every stored event, oldest first. */
  events: StoredEvent[];
  /** The recorded consent decisions, as in `audit().consent.history`. */
  consentHistory: ConsentRecord[];
  /** The requests the SDK sent, as `egressLog()` gives them. */
  egressLog: EgressEntry[];
  /** The privacy accountant as stored (the Rényi DP spent at each order, the releases counted); null when none is stored. */
  privacy: AccountantState | null;
  /**
   * The shared privacy ledger's records this instance reads (IndexedDB `localrec-privacy`): per
   * server URL, each database's accountant state with it (`'*'`: what databases spent before the
   * ledger existed, counted against every server); null without a server or IndexedDB, or before
   * the first upload.
   */
  privacyLedger: Record<string, unknown> | null;
  /** The stored model's global version, embedding size, items, last training time and training steps; null when none is stored. */
  model: { version: number; dim: number; items: number; trainedAt: number | null; trainSteps: number } | null;
  /**
   * With `federated.autoSyncHours`: when an automatic sync was last started and a sync last
   * succeeded (it says when the shop was open), and the earliest time the next may start (the
   * period, or the retry delay, plus a random extra of up to half of it).
   */
  autoSync: { lastAttemptAt?: number; lastSuccessAt?: number; nextAt?: number } | null;
  /**
   * What the device kept of offer impressions, redemptions and purchases that retention removed:
   * counts and times per offer, and the latest purchase's time (so caps and the audience hold).
   */
  offerLedger: OfferLedger | null;
  /** With secure aggregation: the ids of the cohorts this shopper's syncs joined (as in the egress log's paths). */
  cohorts: string[];
  /** As `audit().storage.notOpened`: an earlier visit's database this session did not open, whose contents are not in this file. */
  notOpened: string | null;
  /**
   * Records of the events store that are not events this SDK would have stored (hand-edited, or
   * written by another release), as stored: left out of `events` and of every use, kept until
   * retention removes them (when they carry a time it can read) or `erase()`. Present only when there are any.
   */
  unreadableEvents?: unknown[];
}
