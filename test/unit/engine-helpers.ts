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
