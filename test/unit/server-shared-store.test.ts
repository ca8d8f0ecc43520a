/**
 * Round coordinators on a store several processes share (`Storage.shared`, as PostgreSQL is): two
 * servers on one in-memory store marked shared, so this runs without a database. What a coordinator
 * must do there: count the other's pending updates toward a round, take updates based on the
 * other's newer version, serve that version to readers, and look at the store once for readers
 * that arrive together. (server-postgres.test.ts runs the same on a real PostgreSQL.)
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { MemoryStorage, startServer } from '../../src/server/index.js';
import { StorageConflictError, type StoredVersion } from '../../src/server/storage.js';
import { StorageError } from '../../src/errors.js';
import { honestUpdate, IDS, initialTable, post, pull, quiet } from './server-helpers.js';

class SharedMemory extends MemoryStorage {
  readonly shared = true;
  pendingCounts = 0;
  override async pendingCount(): Promise<number> {
    this.pendingCounts++;
    return super.pendingCount();
  }
}

describe('two coordinators on a shared store', () => {
  it("complete each other's rounds, accept updates on the other's version, and serve it", async () => {
    const storage = new SharedMemory();
    let t = 1_000_000;
    const now = () => t;
    const common = { port: 0, storage, minClients: 3, noiseMultiplier: 0, maxStaleness: 0, rateLimit: false as const, now, log: quiet };
    const a = await startServer({ ...common, initialTable: initialTable() });
    const b = await startServer({ ...common, initialTable: initialTable() });
    try {
      const v0 = await pull(a.url);
      assert.equal((await post(a.url, honestUpdate(v0, 1))).status, 202);
      assert.equal((await post(a.url, honestUpdate(v0, 2))).status, 202);
      const third = await post(b.url, honestUpdate(v0, 3));
      assert.equal(third.json.published, 1, "B's round counts A's two updates");
      assert.equal(third.json.pending, 0);
      // A has not looked since: within a second it still serves version 0 …
      assert.equal((await pull(a.url)).table.version, 0);
      // … but an update on B's version 1 is checked against the store, not A's stale view (with
      // maxStaleness 0, a base A did not know would be refused as newer than current).
      const v1 = await pull(b.url);
      const r = await post(a.url, honestUpdate(v1, 4));
      assert.equal(r.status, 202, JSON.stringify(r.json));
      assert.equal(r.json.version, 1);
      // And an update on version 0 is now stale at A too.
      assert.equal((await post(a.url, honestUpdate(v0, 5))).json.reason, 'stale');
      t += 1500;
      assert.equal((await pull(a.url)).table.version, 1, 'readers see version 1 once the last look is over a second old');
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('readers that arrive together share one look at the store', async () => {
    const storage = new SharedMemory();
    let t = 1_000_000;
    const a = await startServer({ port: 0, storage, minClients: 3, noiseMultiplier: 0, rateLimit: false, now: () => t, log: quiet, initialTable: initialTable() });
    try {
      t += 5000;
      const before = storage.pendingCounts;
      const answers = await Promise.all(Array.from({ length: 20 }, () => fetch(`${a.url}/v1/health`).then((res) => res.json())));
      assert.ok(answers.every((x) => (x as { ok: boolean }).ok));
      assert.equal(storage.pendingCounts - before, 1, '20 concurrent readers, one catch-up');
      await fetch(`${a.url}/v1/health`);
      assert.equal(storage.pendingCounts - before, 1, 'none within the second after it');
    } finally {
      await a.close();
    }
  });

  it("starts when another process takes the round it found pending, and the conflict retries in a submit", async () => {
    class ConflictOnce extends SharedMemory {
      conflicts = 0;
      override async publish(next: StoredVersion, consumed: readonly number[]): Promise<void> {
        if (next.version > 0 && this.conflicts > 0) {
          this.conflicts--;
          throw new StorageConflictError('another process published first (simulated)');
        }
        return super.publish(next, consumed);
      }
    }
    const storage = new ConflictOnce();
    const first = await startServer({ port: 0, storage, minClients: 5, noiseMultiplier: 0, rateLimit: false, log: quiet, initialTable: initialTable() });
    const v0 = await pull(first.url);
    for (const seed of [1, 2, 3]) assert.equal((await post(first.url, honestUpdate(v0, seed))).status, 202);
    await first.close();
    // A restart with minClients 3 finds a round pending; its publish conflicts: it starts anyway.
    storage.conflicts = 1;
    const logged: string[] = [];
    const again = await startServer({ port: 0, storage, minClients: 3, noiseMultiplier: 0, rateLimit: false, log: (l) => logged.push(l), initialTable: initialTable() });
    try {
      assert.deepEqual([again.rounds.version, again.rounds.pending], [0, 3]);
      // The next update's round conflicts once more and is retried at once: published.
      storage.conflicts = 1;
      const r = await post(again.url, honestUpdate(v0, 4));
      assert.equal(r.json.published, 1, JSON.stringify(r.json));
      assert.equal(r.json.pending, 0);
      assert.equal((await storage.latest())!.updateCount, 4);
    } finally {
      await again.close();
    }
  });

  it('an update stored when the count of pending updates then fails is accepted, not answered 503 "nothing was stored": a peer may average it before the device retries (nor is it taken out again)', async () => {
    class CountFailsAfterInsert extends SharedMemory {
      armed = false;
      private failCount = false;
      override async addUpdate(...a: Parameters<MemoryStorage['addUpdate']>) {
        const r = await super.addUpdate(...a);
        if (this.armed) [this.armed, this.failCount] = [false, true];
        return r;
      }
      override async pendingCount(): Promise<number> {
        if (this.failCount) {
          this.failCount = false;
          throw new StorageError('count pending updates failed: Connection terminated unexpectedly');
        }
        return super.pendingCount();
      }
      discarded = 0;
      override async discard(ids: readonly number[]): Promise<void> {
        this.discarded += ids.length;
        return super.discard(ids);
      }
    }
    const storage = new CountFailsAfterInsert();
    const logged: string[] = [];
    const common = { port: 0, storage, minClients: 4, noiseMultiplier: 0, rateLimit: false as const, log: (l: string) => logged.push(l) };
    const a = await startServer({ ...common, initialTable: initialTable() });
    const b = await startServer({ ...common, initialTable: initialTable() });
    try {
      const v0 = await pull(a.url);
      for (const seed of [1, 2]) assert.equal((await post(a.url, honestUpdate(v0, seed))).status, 202);
      storage.armed = true;
      const third = honestUpdate(v0, 3);
      const r = await post(a.url, third);
      assert.equal(r.status, 202, JSON.stringify(r.json));
      assert.equal(r.json.pending, 3);
      assert.equal(await storage.pendingCount(), 3, 'it is stored, and counts');
      assert.equal(storage.discarded, 0, 'not taken out again');
      assert.ok(logged.some((l) => /update \d+ is stored, but counting the pending updates failed/.test(l)), logged.join('\n'));
      // B's next update completes the round, the third included.
      assert.equal((await post(b.url, honestUpdate(v0, 4))).json.published, 1);
      assert.equal((await storage.latest())!.updateCount, 4);
      // Had the device been told 503, its retry would now be refused as a replay.
      assert.equal((await post(a.url, third)).json.reason, 'replayed');
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('refuses secure aggregation on a shared store that cannot keep cohorts', async () => {
    await assert.rejects(
      startServer({ port: 0, storage: new SharedMemory(), minClients: 3, rateLimit: false, log: quiet, initialTable: initialTable(), secureAggregation: true }),
      /secure aggregation needs its cohorts in the store when several processes share it, and this store keeps none/,
    );
  });
});

describe('health on a shared store that goes down', () => {
  it('answers 503 until a look succeeds again, however busy the other readers keep the once-a-second look', async () => {
    class Flaky extends MemoryStorage {
      readonly shared = true;
      down = false;
      private check(): void {
        if (this.down) throw new StorageError('connection refused');
      }
      override async versionHash(v: number) {
        this.check();
        return super.versionHash(v);
      }
      override async pendingCount() {
        this.check();
        return super.pendingCount();
      }
    }
    const storage = new Flaky();
    let t = 1_000_000;
    const s = await startServer({ port: 0, storage, rateLimit: false, now: () => t, log: quiet, initialTable: initialTable() });
    try {
      assert.equal((await fetch(`${s.url}/v1/health`)).status, 200);
      storage.down = true;
      t += 1500;
      // A device's GET makes the look, which fails; the health check right after is inside the same
      // second, so it makes no look of its own (before the fix: 200 from memory).
      assert.equal((await fetch(`${s.url}/v1/config`)).status, 503);
      const h = await fetch(`${s.url}/v1/health`);
      assert.equal(h.status, 503);
      assert.equal(((await h.json()) as { reason: string }).reason, 'storage-unavailable');
      // Readers are still served from memory meanwhile.
      assert.equal((await fetch(`${s.url}/v1/config`)).status, 200);
      storage.down = false;
      assert.equal((await fetch(`${s.url}/v1/health`)).status, 503, 'no look yet since the failure');
      t += 1500;
      assert.equal((await fetch(`${s.url}/v1/health`)).status, 200, 'the next look succeeds');
    } finally {
      await s.close();
    }
  });
});

describe('round settings on a shared store (a rolling restart that changes them)', () => {
  const ALL = { rows: IDS.length, biases: true };
  const HALF = { rows: 20, biases: true };

  it('an instance started with another --train-rows while nothing is pending takes the store over; one still running with the old settings answers 503 settings-changed, its health check too, instead of acknowledging updates no round could use', async () => {
    const storage = new SharedMemory();
    const logged: string[] = [];
    const common = { port: 0, storage, minClients: 3, noiseMultiplier: 0, rateLimit: false as const, log: (l: string) => logged.push(l), initialTable: initialTable() };
    const old = await startServer(common);
    const fresh = await startServer({ ...common, trainRows: HALF.rows });
    try {
      assert.ok(logged.some((l) => /the store's round settings change \(--train-rows: 40 in the store, 20 here\)/.test(l)), logged.join('\n'));
      const v0 = await pull(fresh.url);
      // Before: both took updates of their own shape (202, each device's ε spent), and every round
      // then failed on the mix ("delta: has 200 values; 20 rows × 4 need 80 or 100").
      const refused = await post(old.url, honestUpdate(v0, 1, { part: ALL }));
      assert.equal(refused.status, 503, JSON.stringify(refused.json));
      assert.equal(refused.json.reason, 'settings-changed');
      const health = await fetch(`${old.url}/v1/health`);
      assert.equal(health.status, 503, 'the load balancer takes it out');
      assert.equal(((await health.json()) as { reason: string }).reason, 'settings-changed');
      assert.ok(logged.some((l) => /round settings are no longer the store's.*--train-rows: 20 in the store, 40 here.*restarted with the store's settings/.test(l)), logged.join('\n'));
      assert.equal(await storage.pendingCount(), 0, 'nothing of the old shape was stored');
      for (const seed of [2, 3]) assert.equal((await post(fresh.url, honestUpdate(v0, seed, { part: HALF }))).status, 202);
      const third = await post(fresh.url, honestUpdate(v0, 4, { part: HALF }));
      assert.equal(third.json.published, 1, JSON.stringify(third.json));
      // A restart with the old settings while an update of the new ones is pending is refused,
      // saying what the pending updates were sent under and what to do.
      assert.equal((await post(fresh.url, honestUpdate(await pull(fresh.url), 5, { part: HALF }))).status, 202);
      await assert.rejects(startServer(common).then((s) => s.close()), /pending updates of 20 rows with biases trained, and this server trains 40 rows.*--discard-pending/);
      assert.equal(await storage.pendingCount(), 1, 'kept');
    } finally {
      await old.close();
      await fresh.close();
    }
  });

  it('a pending update of another shape (a peer that had not yet noticed the change, or a store from before settings were kept) is left out of the round and deleted, saying why, instead of failing every round', async () => {
    const storage = new SharedMemory();
    const logged: string[] = [];
    const server = await startServer({ port: 0, storage, minClients: 3, noiseMultiplier: 0, rateLimit: false, log: (l) => logged.push(l), initialTable: initialTable(), trainRows: HALF.rows });
    try {
      const v0 = await pull(server.url);
      // What a peer still running with the whole table stored as the settings changed.
      assert.notEqual(await storage.addUpdate({ nonce: 'a'.repeat(32), baseVersion: 0, receivedAt: 0, body: honestUpdate(v0, 1, { part: ALL }) }), 'replayed');
      for (const seed of [2, 3]) assert.equal((await post(server.url, honestUpdate(v0, seed, { part: HALF }))).status, 202);
      const r = await post(server.url, honestUpdate(v0, 4, { part: HALF }));
      assert.equal(r.json.published, 1, `${JSON.stringify(r.json)}\n${logged.join('\n')}`);
      assert.equal((await storage.latest())!.updateCount, 3, 'the three updates of its shape');
      assert.equal(await storage.pendingCount(), 0, 'the other one is gone');
      assert.ok(logged.some((l) => /left 1 pending updates out of the round and deleted them.*\(40 rows, and this server trains 20 \(--train-rows\): 1\)/.test(l)), logged.join('\n'));
      const v1 = (await pull(server.url)).table;
      assert.ok(v1.factors.every(Number.isFinite) && v1.bias.every(Number.isFinite));
    } finally {
      await server.close();
    }
  });
});
