import * as Comlink from 'comlink';
import { IdbEventStore } from '../../src/events/store.js';

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
