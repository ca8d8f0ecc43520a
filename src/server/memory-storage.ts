/**
 * In-memory {@link Storage}: for tests and throwaway demos. Same contract as SQLite except that
 * nothing survives the process.
 */
import { keepModelsOf, StorageConflictError, type NewUpdate, type PendingRef, type PendingUpdate, type VersionRetentionOptions, type Storage, type StoredVersion } from './storage.js';

/**
 * @example
 * ```ts
 * const server = await startServer({ storage: new MemoryStorage(), initialTable });
 * ```
 */
export class MemoryStorage implements Storage {
  private versions: StoredVersion[] = [];
  private updates = new Map<number, PendingUpdate>();
  private nonces = new Set<string>();
  private nextId = 1;
  private meta = new Map<string, string>();
  private readonly keepModels: number;

  /** `options.keepModels`: see {@link VersionRetentionOptions}. */
  constructor(options: VersionRetentionOptions = {}) {
    this.keepModels = keepModelsOf(options);
  }

  async latest(): Promise<StoredVersion | undefined> {
    return this.versions[this.versions.length - 1];
  }

  async versionHash(version: number): Promise<string | undefined> {
    return this.versions[version]?.hash;
  }

  async addUpdate(u: NewUpdate): Promise<{ id: number } | 'replayed'> {
    if (this.nonces.has(u.nonce)) return 'replayed';
    this.nonces.add(u.nonce);
    const id = this.nextId++;
    this.updates.set(id, { ...u, body: u.body.slice(), id });
    return { id };
  }

  async pending(): Promise<PendingUpdate[]> {
    return [...this.updates.values()];
  }

  async pendingRefs(): Promise<PendingRef[]> {
    return [...this.updates.values()].map(({ body: _b, ...ref }) => ref);
  }

  async pendingByIds(ids: readonly number[]): Promise<PendingUpdate[]> {
    return ids.flatMap((id) => {
      const u = this.updates.get(id);
      return u ? [u] : [];
    });
  }

  async pendingByNonce(nonce: string): Promise<PendingUpdate | undefined> {
    for (const u of this.updates.values()) if (u.nonce === nonce) return u;
    return undefined;
  }

  async pendingCount(): Promise<number> {
    return this.updates.size;
  }

  async discard(ids: readonly number[]): Promise<void> {
    // As in the SQL stores, where the row (and so its nonce) is deleted.
    for (const id of ids) {
      const u = this.updates.get(id);
      if (!u) continue;
      this.updates.delete(id);
      this.nonces.delete(u.nonce);
    }
  }

  async publish(next: StoredVersion, consumed: readonly number[]): Promise<void> {
    if (next.version !== this.versions.length) {
      throw new StorageConflictError(`cannot publish version ${next.version}: latest is ${this.versions.length - 1}`);
    }
    for (const id of consumed) if (!this.updates.has(id)) throw new StorageConflictError(`update ${id} is not pending`);
    this.versions.push({ ...next, model: next.model.slice(), optimizer: next.optimizer?.slice() ?? null });
    // As the SQL stores: older versions keep their hash; the state goes, and the model past keepModels.
    const cut = next.version - this.keepModels;
    // (New objects: a version a caller read before stays as it was read.)
    for (let i = 0; i < this.versions.length - 1; i++) {
      const v = this.versions[i]!;
      const drop = v.version <= cut && v.model.length > 0;
      if (v.optimizer || drop) this.versions[i] = { ...v, optimizer: null, model: drop ? new Uint8Array(0) : v.model };
    }
    for (const id of consumed) {
      // As the SQL stores: a masked upload's `cohort:member` nonce is forgotten once averaged.
      const nonce = this.updates.get(id)!.nonce;
      if (nonce.includes(':')) this.nonces.delete(nonce);
      this.updates.delete(id);
    }
  }

  async readMeta(key: string): Promise<string | undefined> {
    return this.meta.get(key);
  }

  async writeMeta(key: string, value: string): Promise<void> {
    this.meta.set(key, value);
  }

  async writeMetaIf(key: string, value: string, when: (stored: string | undefined) => boolean): Promise<{ stored: string | undefined; written: boolean }> {
    // One synchronous step: nothing else runs between the read and the write.
    const stored = this.meta.get(key);
    const written = when(stored);
    if (written) this.meta.set(key, value);
    return { stored, written };
  }

  async close(): Promise<void> {}
}
