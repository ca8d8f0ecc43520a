// Types for scripts/shop-server.mjs (plain Node ESM, so that `npm start` needs no TypeScript loader).
import type { RoundCoordinator } from '../src/server/rounds.js';

export declare const ROOT: string;
export declare const SHOP_DIR: string;
export declare const DIST_DIR: string;
export declare const DIM: number;

export declare function readShopCatalog(path?: string): { ids: string[]; popularity: number[] };

export interface ShopOptions {
  /** Default 8787; 0 picks a free port. */
  port?: number;
  /** SQLite folder, default `.data/shop`; null keeps rounds in memory. */
  dataDir?: string | null;
  /** Updates per federated round, default 10. */
  minClients?: number;
  log?: (line: string) => void;
}

export interface RunningShop {
  /** e.g. `http://127.0.0.1:8787`: the shop at `/`, the SDK at `/dist/`, the API at `/v1/`. */
  url: string;
  /** The aggregation server's own loopback address. */
  apiUrl: string;
  rounds: RoundCoordinator;
  close(): Promise<void>;
}

export declare function startShop(opts?: ShopOptions): Promise<RunningShop>;
