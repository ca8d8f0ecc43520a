import * as Comlink from 'comlink';
import type { FetchLike } from '../../src/federated/sync.js';
import { createItemTable } from '../../src/model/item-table.js';
import { startServer, type RunningServer } from '../../src/server/index.js';
import { IdbEventStore } from '../../src/events/store.js';
import type { OfferCatalog } from '../../src/offers/types.js';

/**
 * An IndexedDB event store whose `reading` resolves when a history read (`all()`) has begun: for
 * tests of what happens while the engine reads the history.
 */
export async function storeSignallingReads(dbName: string): Promise<{ store: IdbEventStore; reading: Promise<void> }> {
  const store = await IdbEventStore.open(dbName);
  let readStarted!: () => void;
  const reading = new Promise<void>((r) => (readStarted = r));
  const all = store.all.bind(store);
  store.all = () => {
    const p = all();
    readStarted();
    return p;
  };
  return { store, reading };
}

/**
 * Runs `f` with `globalThis.Worker` replaced by a stand-in whose "worker" is `api` exposed over a
 * MessageChannel with comlink: the page's facade (createRecommender) alone is under test.
 */
export async function withStandInWorker(api: object, f: () => Promise<void>): Promise<void> {
  const g = globalThis as { Worker?: unknown };
  const hadWorker = 'Worker' in g;
  const realWorker = g.Worker;
  g.Worker = class {
    private readonly port: MessagePort;
    constructor() {
      const { port1, port2 } = new MessageChannel();
      this.port = port1;
      Comlink.expose(api, port2);
      port1.start();
    }
    postMessage(m: unknown, transfer: Transferable[] = []) {
      this.port.postMessage(m, transfer as never);
    }
    addEventListener(type: string, f: (ev: Event) => void) {
      this.port.addEventListener(type, f as never);
    }
    removeEventListener(type: string, f: (ev: Event) => void) {
      this.port.removeEventListener(type, f as never);
    }
    terminate() {
      this.port.close();
    }
  };
  try {
    await f();
  } finally {
    if (hadWorker) g.Worker = realWorker;
    else delete g.Worker;
  }
}

/**
 * A plain aggregation server on loopback for `ids` (dim 8, σ = 1, rounds of 100, so nothing is
 * published), and a fetch that lists the paths of the POSTs made through it. The caller closes
 * `server`.
 */
export async function serverCountingPosts(ids: string[]): Promise<{ server: RunningServer; url: string; posts: string[]; fetch: FetchLike }> {
  const server = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 8, { seed: 1 }), minClients: 100, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
  const posts: string[] = [];
  const fetch: FetchLike = (url, init) => {
    if (init?.method === 'POST') posts.push(new URL(url).pathname);
    return globalThis.fetch(url, init as RequestInit);
  };
  return { server, url: server.url, posts, fetch };
}

/** A 10 % offer on `scope`; every one has the same discount and value per use, so a ranking of them follows P(buy in scope) alone. */
export const offer = (id: string, scope: OfferCatalog['offers'][number]['scope']): OfferCatalog['offers'][number] => ({
  id,
  title: `10% off ${id}`,
  discount: { kind: 'percent', percent: 10 },
  scope,
  hints: { margin: 0.4, typicalSpend: 20 },
});
