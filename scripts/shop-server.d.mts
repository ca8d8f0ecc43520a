// Types for scripts/shop-server.mjs (plain Node ESM, so that `npm start` needs no TypeScript loader).
import type { RoundCoordinator } from '../src/server/rounds.js';
import type { OfferCatalog } from '../src/offers/types.js';

export declare const ROOT: string;
export declare const SHOP_DIR: string;
export declare const DIST_DIR: string;
export declare const DIM: number;

export declare const RETAIL_DATA: string;

export interface ShopItem {
  id: string;
  title: string;
  category: string;
  price: number;
  popularity?: number;
}

export declare function readShopCatalog(path?: string): { ids: string[]; popularity: number[]; items: ShopItem[] };

/** The shop's offer catalog, built from its product catalog (unsigned). */
export declare function buildOfferCatalog(items: ShopItem[], now?: number): OfferCatalog;

/** Customers' distinct purchases in time order, restricted to `ids`, from the online-retail file. */
export declare function readRetailHistories(ids: string[], file?: string): Promise<Array<{ customer: string; itemIds: string[] }>>;

/** Share of (a → b) purchase pairs where b is among a's k most similar items (cosine of embeddings). */
export declare function similarHitRate(
  table: { itemIds: string[]; dim: number; factors: Float32Array },
  pairs: Array<[string, string]>,
  k?: number,
): { hitRate: number; pairs: number; random: number };

/** What `GET /demo/simulate/status` answers. */
export interface SimulationStatus {
  phase: 'idle' | 'loading' | 'running' | 'done' | 'cancelled' | 'timeout' | 'failed';
  running: boolean;
  /** Set when the simulation cannot run (the online-retail data is missing): why. */
  unavailable?: string;
  run?: number;
  shoppers?: number;
  /** Customers with at least 3 of the shop's products (the pool the shoppers are drawn from). */
  customers?: number;
  done?: number;
  sent?: number;
  nothing?: number;
  skippedForBudget?: number;
  failed?: number;
  lastError?: string;
  startVersion?: number;
  version?: number;
  bytesPerUpdate?: number;
  epsilonPerDevice?: number;
  quality?: { metric: string; pairs: number; random: number; before: number; after: number | null };
  message?: string;
  error?: string;
  serverVersion: number;
  serverPending: number;
  startedAt?: number;
  finishedAt?: number;
  elapsedMs: number;
}

export interface ShopOptions {
  /** Default 8787; 0 picks a free port. */
  port?: number;
  /** SQLite folder, default `.data/shop`; null keeps rounds in memory. */
  dataDir?: string | null;
  /** Updates per federated round, default 10. */
  minClients?: number;
  /** The aggregation server's noise multiplier σ (default 1). */
  noiseMultiplier?: number;
  /** Shoppers a `POST /demo/simulate` without a body runs (default 200). */
  simulateShoppers?: number;
  /** The online-retail file the simulated shoppers replay (default ../shared/data/online-retail/online-retail.csv.gz). */
  retailData?: string;
  log?: (line: string) => void;
}

export interface RunningShop {
  /** e.g. `http://127.0.0.1:8787`: the shop at `/`, the SDK at `/dist/`, the API at `/v1/`. */
  url: string;
  /** The aggregation server's own loopback address. */
  apiUrl: string;
  rounds: RoundCoordinator;
  simulation: { running: boolean; done: Promise<void>; status(): SimulationStatus; cancel(): void };
  close(): Promise<void>;
}

export declare function startShop(opts?: ShopOptions): Promise<RunningShop>;
