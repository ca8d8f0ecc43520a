/**
 * The round coordinator: holds the current global version, accepts checked updates into storage,
 * and publishes the next version once `minClients` updates are pending. All state changes run one
 * at a time through a promise queue, so two requests never aggregate the same round.
 */
import { ModelError, StorageError } from '../errors.js';
import { decodeModel, decodeUpdate, dequantizeUpdate, encodeModel, fromHex, sha256, toHex } from '../federated/wire.js';
import type { ItemTable } from '../model/item-table.js';
import { applyFedAdam, applyFedAvg, combineDeltas, DEFAULT_FEDADAM, trimCount, type AggregatorName, type FedAdamOptions, type RobustName } from './aggregate.js';
import { StorageConflictError, type Storage, type StoredVersion } from './storage.js';
import { checkUpdate, reject, type Rejection, type UpdatePolicy } from './validate-update.js';

export interface RoundConfig extends UpdatePolicy {
  /** Updates needed before a round is aggregated (a k-anonymity floor). Default 10. */
  minClients: number;
  /** Oldest accepted base: current version − maxStaleness. Default 2. */
  maxStaleness: number;
  aggregator: AggregatorName;
  /**
   * How the round's deltas are combined per coordinate before the FedAvg/FedAdam step: the mean
   * (default), a trimmed mean or the median (robust to up to ⌊trimFraction·M⌋, resp. ⌊(M−1)/2⌋,
   * dishonest updates in a round of M).
   */
  robust: RobustName;
  /** β of `trimmed-mean`: the share of values dropped from each end of every coordinate. Default 0.1. */
  trimFraction: number;
  /** FedAvg server learning rate. Default 1. */
  serverLearningRate: number;
  fedAdam: FedAdamOptions;
  now: () => number;
  log: (line: string) => void;
}

export interface Accepted {
  ok: true;
  id: number;
  /** Current version after this update (higher than its base when it completed a round). */
  version: number;
  pending: number;
  /** Set when this update completed a round. */
  published?: number;
}

interface Current {
  version: number;
  hash: string;
  table: ItemTable;
  model: Uint8Array;
  optimizer: Float32Array | null;
  createdAt: number;
  int8?: Uint8Array;
}

function sameShape(a: ItemTable, b: ItemTable): boolean {
  return a.dim === b.dim && a.itemIds.length === b.itemIds.length && a.itemIds.every((id, i) => id === b.itemIds[i]);
}

export class RoundCoordinator {
  private cur!: Current;
  private pendingN = 0;
  private hashes = new Map<number, string>();
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly storage: Storage,
    readonly config: RoundConfig,
  ) {}

  /**
   * Loads the latest version from storage, or publishes `initialTable` as version 0 on an empty
   * store; then finishes a round that a crash interrupted (≥ minClients pending).
   *
   * @example
   * ```ts
   * const rounds = await RoundCoordinator.open(new MemoryStorage(), createItemTable(ids, 16), config);
   * ```
   */
  static async open(storage: Storage, initialTable: ItemTable | undefined, config: RoundConfig): Promise<RoundCoordinator> {
    const rc = new RoundCoordinator(storage, config);
    let latest = await storage.latest();
    if (!latest) {
      if (!initialTable) throw new StorageError('the store holds no model and no initial table (catalog) was given');
      const model = encodeModel({ ...initialTable, version: 0 });
      latest = { version: 0, hash: toHex(await sha256(model)), model, optimizer: null, createdAt: config.now(), updateCount: 0 };
      await storage.publish(latest, []);
    }
    await rc.load(latest);
    if (initialTable && !sameShape(initialTable, rc.cur.table)) {
      throw new StorageError(
        `the store holds a model of ${rc.cur.table.itemIds.length} items × ${rc.cur.table.dim}, which does not match the catalog (${initialTable.itemIds.length} items × ${initialTable.dim}); use another data dir`,
      );
    }
    if (rc.cur.table.itemIds.length !== config.itemCount || rc.cur.table.dim !== config.dim) {
      throw new ModelError(`config says ${config.itemCount} × ${config.dim}, stored model is ${rc.cur.table.itemIds.length} × ${rc.cur.table.dim}`);
    }
    rc.pendingN = await storage.pendingCount();
    if (rc.pendingN >= config.minClients) await rc.run(() => rc.aggregate());
    return rc;
  }

  private async load(v: StoredVersion): Promise<void> {
    const actual = toHex(await sha256(v.model));
    if (actual !== v.hash) throw new StorageError(`stored version ${v.version} is corrupt: hash ${actual} ≠ recorded ${v.hash}`);
    const { table } = decodeModel(v.model);
    this.cur = {
      version: v.version,
      hash: v.hash,
      table,
      model: v.model,
      optimizer: v.optimizer ? new Float32Array(v.optimizer.slice().buffer) : null,
      createdAt: v.createdAt,
    };
    this.hashes.set(v.version, v.hash);
  }

  private run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn);
    // Keep the queue alive after a failure; the caller still sees the rejection.
    this.queue = p.catch(() => undefined);
    return p;
  }

  get version(): number {
    return this.cur.version;
  }
  get hash(): string {
    return this.cur.hash;
  }
  get pending(): number {
    return this.pendingN;
  }
  get publishedAt(): number {
    return this.cur.createdAt;
  }

  /** Body of `GET /v1/model` for the current version. */
  modelBytes(encoding: 'float32' | 'int8'): Uint8Array {
    if (encoding === 'float32') return this.cur.model;
    this.cur.int8 ??= encodeModel(this.cur.table, 'int8', fromHex(this.cur.hash));
    return this.cur.int8;
  }

  private async hashOf(version: number): Promise<string | undefined> {
    let h = this.hashes.get(version);
    if (h === undefined) {
      h = await this.storage.versionHash(version);
      if (h !== undefined) this.hashes.set(version, h);
    }
    return h;
  }

  /**
   * Checks an update body and stores it (durably, before resolving); completes a round when it
   * brings the pending count to `minClients`.
   *
   * @example
   * ```ts
   * const r = await rounds.submit(body);
   * if (!r.ok) console.log(r.status, r.reason);
   * ```
   */
  async submit(body: Uint8Array): Promise<Accepted | Rejection> {
    // Decoding and the norm check are pure and need no lock.
    const checked = checkUpdate(body, this.config);
    if (!checked.ok) return checked;
    const h = checked.update.header;
    return this.run(async (): Promise<Accepted | Rejection> => {
      const cur = this.cur.version;
      if (h.baseVersion > cur) return reject('unknown-base', `base version ${h.baseVersion} is newer than the current version ${cur}`);
      if (cur - h.baseVersion > this.config.maxStaleness) {
        return reject('stale', `base version ${h.baseVersion} is older than ${cur - this.config.maxStaleness} (current ${cur}, maxStaleness ${this.config.maxStaleness})`);
      }
      const known = await this.hashOf(h.baseVersion);
      if (known !== toHex(h.baseHash)) return reject('unknown-base', `base hash does not match version ${h.baseVersion}`);
      const r = await this.storage.addUpdate({ nonce: toHex(h.nonce), baseVersion: h.baseVersion, receivedAt: this.config.now(), body });
      if (r === 'replayed') return reject('replayed', `nonce ${toHex(h.nonce)} was already used`);
      this.pendingN++;
      let published: number | undefined;
      if (this.pendingN >= this.config.minClients) {
        try {
          published = await this.aggregate();
        } catch (e) {
          // The update itself is committed; the round is retried with the next update or restart.
          this.config.log(`aggregation failed, will retry: ${(e as Error).message}`);
        }
      }
      const out: Accepted = { ok: true, id: r.id, version: this.cur.version, pending: this.pendingN };
      if (published !== undefined) out.published = published;
      return out;
    });
  }

  /**
   * Combines every pending update (mean, trimmed mean or median, per `robust`) into the next
   * version and publishes it atomically with the ids it consumed.
   */
  private async aggregate(): Promise<number> {
    const pending = await this.storage.pending();
    if (pending.length < this.config.minClients) {
      this.pendingN = pending.length;
      return this.cur.version;
    }
    const deltas = pending.map((u) => dequantizeUpdate(decodeUpdate(u.body)));
    const mean = combineDeltas(deltas, this.config.robust, this.config.trimFraction);
    let next: ItemTable;
    let optimizer: Float32Array | null = null;
    if (this.config.aggregator === 'fedadam') {
      const r = applyFedAdam(this.cur.table, mean, this.cur.optimizer, this.config.fedAdam ?? DEFAULT_FEDADAM);
      next = r.table;
      optimizer = r.state;
    } else {
      next = applyFedAvg(this.cur.table, mean, this.config.serverLearningRate);
    }
    const model = encodeModel(next);
    const stored: StoredVersion = {
      version: next.version,
      hash: toHex(await sha256(model)),
      model,
      optimizer: optimizer ? new Uint8Array(optimizer.buffer) : null,
      createdAt: this.config.now(),
      updateCount: pending.length,
    };
    try {
      await this.storage.publish(
        stored,
        pending.map((u) => u.id),
      );
    } catch (e) {
      if (e instanceof StorageConflictError) {
        // Another process published first: adopt its version and recount.
        const latest = await this.storage.latest();
        if (latest) await this.load(latest);
        this.pendingN = await this.storage.pendingCount();
      }
      throw e;
    }
    this.cur = { version: next.version, hash: stored.hash, table: next, model, optimizer, createdAt: stored.createdAt };
    this.hashes.set(next.version, stored.hash);
    this.pendingN = 0;
    const how = this.config.robust === 'mean' ? '' : `, ${this.config.robust} dropping ${trimCount(this.config.robust, pending.length, this.config.trimFraction)} per end`;
    this.config.log(`published version ${next.version} from ${pending.length} updates${how} (${stored.hash.slice(0, 12)})`);
    return next.version;
  }
}
