/**
 * What the server keeps of older versions (docs/SERVER.md "What the server keeps"): each publish
 * drops, in its own transaction, the optimizer state of every older version and the model of every
 * version older than the newest `keepModels`. Their rows and hashes stay, so an update on a base
 * within `maxStaleness` is still checked and accepted, and the store stops growing by a model (and
 * a FedAdam state) per round: the SQLite file reuses the freed pages, PostgreSQL the space VACUUM
 * frees. Memory, SQLite and PostgreSQL (skipped without its binaries, as server-postgres.test.ts).
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, test } from 'node:test';
import Database from 'better-sqlite3';
import pg from 'pg';
import { decodeModel, fromHex } from '../../src/federated/wire.js';
import { createServer, MemoryStorage, PostgresStorage, SqliteStorage, type Storage, type StoredVersion } from '../../src/server/index.js';
import { DEFAULT_KEEP_MODELS, PRUNE_BATCH_VERSIONS } from '../../src/server/storage.js';
import { createDatabase, postgresUnavailable, startPostgres, withClient, type TestPostgres } from './pg-helpers.js';
import { honestUpdate, inDataDir, initialTable, type ServerView } from './server-helpers.js';

/** Bytes a version's model and optimizer state hold in the store (null: no state). */
type Held = { model: number; optimizer: number | null };
/** Reads what the store holds of version `v` (undefined: no such row). */
type Inspect = (v: number) => Promise<Held | undefined>;

const MODEL_BYTES = 6000;
const OPTIMIZER_BYTES = 12000;

/** Deterministic bytes that do not compress (PostgreSQL's TOAST would shrink a constant fill). */
function noise(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let o = 0, k = 0; o < n; o += 32, k++) out.set(createHash('sha256').update(`${seed}:${k}`).digest().subarray(0, Math.min(32, n - o)), o);
  return out;
}

function version(v: number): StoredVersion {
  const model = noise(MODEL_BYTES, v);
  return { version: v, hash: createHash('sha256').update(model).digest('hex'), model, optimizer: v === 0 ? null : noise(OPTIMIZER_BYTES, 1000 + v), createdAt: 1_700_000_000_000 + v, updateCount: v === 0 ? 0 : 1 };
}

/**
 * Publishes versions 0..last through the storage API and checks, after each, what is held: the
 * latest version whole (model and state), the `keep` newest models, no older state, no older model,
 * and every version's hash.
 */
async function publishAndCheck(s: Storage, inspect: Inspect, keep: number, last = 11): Promise<void> {
  for (let n = 0; n <= last; n++) {
    await s.publish(version(n), []);
    const latest = await s.latest();
    assert.deepEqual(latest, version(n), `version ${n} is read back whole`);
    for (let v = 0; v <= n; v++) {
      assert.equal(await s.versionHash(v), version(v).hash, `version ${v}'s hash still answers after ${n}`);
      const held = await inspect(v);
      assert.ok(held, `version ${v}'s row stays`);
      const want: Held = {
        model: v > n - keep ? MODEL_BYTES : 0,
        optimizer: v === n && v > 0 ? OPTIMIZER_BYTES : null,
      };
      assert.deepEqual(held, want, `after publishing ${n} (keepModels ${keep}), version ${v} holds ${JSON.stringify(want)}`);
    }
  }
}

/** What a SQLite file holds of version `v`, through a second (read-only) connection. */
function sqliteInspect(path: string): Inspect {
  return async (v) => {
    const db = new Database(path, { readonly: true });
    try {
      const r = db.prepare('SELECT length(model) AS model, length(optimizer) AS optimizer FROM versions WHERE version = ?').get(v) as Held | undefined;
      return r && { model: r.model, optimizer: r.optimizer };
    } finally {
      db.close();
    }
  };
}


test('memory: older versions keep their hash, lose their optimizer state, and their model past keepModels', async () => {
  for (const keep of [1, DEFAULT_KEEP_MODELS]) {
    const s = new MemoryStorage({ keepModels: keep });
    const inspect: Inspect = async (v) => {
      const row = (s as unknown as { versions: StoredVersion[] }).versions[v];
      return row && { model: row.model.length, optimizer: row.optimizer?.length ?? null };
    };
    await publishAndCheck(s, inspect, keep);
  }
  assert.throws(() => new MemoryStorage({ keepModels: 0 }), /keepModels must be an integer ≥ 1, got 0/);
});

test('SQLite: older versions keep their hash, lose their optimizer state, and their model past keepModels (default 3)', () =>
  inDataDir('localrec-retention-versions-', async (dir) => {
    for (const keep of [1, undefined]) {
      const sub = join(dir, `keep-${keep ?? 'default'}`);
      const s = SqliteStorage.open(sub, keep === undefined ? {} : { keepModels: keep });
      try {
        await publishAndCheck(s, sqliteInspect(s.path), keep ?? DEFAULT_KEEP_MODELS);
        // The next publish's search starts at the oldest version still holding a model (what it
        // may prune), not at version 0: a year of rounds does not slow every publish down.
        assert.equal((s as unknown as { pruneFloor: number }).pruneFloor, 11 - (keep ?? DEFAULT_KEEP_MODELS) + 1);
      } finally {
        await s.close();
      }
    }
    assert.throws(() => SqliteStorage.open(join(dir, 'bad'), { keepModels: 1.5 }), /keepModels must be an integer ≥ 1, got 1.5/);
  }));

test('SQLite: the pruning commits with the publish or not at all', () =>
  inDataDir('localrec-retention-versions-', async (dir) => {
    let crash = false;
    const s = SqliteStorage.open(dir, {
      keepModels: 1,
      beforeCommit: (what) => {
        if (crash && what === 'publish') throw new Error('power cut');
      },
    });
    try {
      const inspect = sqliteInspect(s.path);
      for (let v = 0; v <= 3; v++) await s.publish(version(v), []);
      crash = true;
      await assert.rejects(s.publish(version(4), []), /power cut/);
      assert.equal((await s.latest())?.version, 3);
      assert.deepEqual(await inspect(3), { model: MODEL_BYTES, optimizer: OPTIMIZER_BYTES }, 'the latest version is whole: its pruning was rolled back with the publish');
      assert.equal(await inspect(4), undefined);
      crash = false;
      await s.publish(version(4), []);
      assert.deepEqual(await inspect(3), { model: 0, optimizer: null });
    } finally {
      await s.close();
    }
  }));

test('SQLite: a store an earlier release filled with every model and state is pruned a batch of versions per publish, newest first', () =>
  inDataDir('localrec-retention-versions-', async (dir) => {
    const first = SqliteStorage.open(dir);
    await first.publish(version(0), []);
    await first.close();
    // As an earlier release left it: every version whole.
    const old = 2 * PRUNE_BATCH_VERSIONS + 4;
    const raw = new Database(join(dir, 'localrec.sqlite'));
    const insert = raw.prepare('INSERT INTO versions (version, hash, model, optimizer, created_at, update_count) VALUES (?, ?, ?, ?, ?, ?)');
    for (let v = 1; v <= old; v++) {
      const x = version(v);
      insert.run(v, x.hash, Buffer.from(x.model), Buffer.from(x.optimizer!), x.createdAt, 1);
    }
    raw.close();
    const s = SqliteStorage.open(dir, { keepModels: 1 });
    try {
      const inspect = sqliteInspect(s.path);
      const pruned = async () => {
        let n = 0;
        for (let v = 0; v <= old; v++) if ((await inspect(v))!.model === 0) n++;
        return n;
      };
      await s.publish(version(old + 1), []);
      assert.equal(await pruned(), PRUNE_BATCH_VERSIONS, 'one batch');
      assert.deepEqual(await inspect(old), { model: 0, optimizer: null }, 'newest first');
      assert.deepEqual(await inspect(0), { model: MODEL_BYTES, optimizer: null }, 'the oldest wait for a later publish');
      await s.publish(version(old + 2), []);
      await s.publish(version(old + 3), []);
      assert.equal(await pruned(), old + 1, 'every older version, after three publishes');
      for (let v = 0; v <= old + 3; v++) assert.equal(await s.versionHash(v), version(v).hash);
    } finally {
      await s.close();
    }
  }));

// An update's body (7.4 KB) and a model (≈ 36 KB) overflow SQLite's 4 KB pages; the body's first 3.4 KB
// fill most of a leaf page, as a shop-sized (60 KB) update's do.
const ITEMS = Array.from({ length: 800 }, (_, i) => `item-${i}`);
const TABLE_DIM = 8;

/**
 * A server on `storage` (or SQLite in `dataDir`) with FedAdam and rounds of two updates;
 * `post(base)` posts an honest update on version `base` (default: the current one) and returns the
 * HTTP status, `rounds(n)` publishes n versions.
 */
async function fedAdamServer(where: { storage: Storage } | { dataDir: string }) {
  const parts = await createServer({
    ...where,
    // (`keepModels`, as `localrec serve --keep-models 1` passes it, for the store createServer opens.)
    ...('dataDir' in where ? { keepModels: 1 } : {}),
    initialTable: initialTable(ITEMS, TABLE_DIM),
    aggregator: 'fedadam',
    minClients: 2,
    clip: 1,
    noiseMultiplier: 0,
    maxStaleness: 2,
    rateLimit: false,
    log: () => {},
  });
  const views: ServerView[] = [];
  const see = () => {
    views[parts.rounds.version] = { table: decodeModel(parts.rounds.modelBytes('float32')).table, hash: fromHex(parts.rounds.hash), config: parts.rounds.config };
  };
  see();
  let seed = 0;
  const post = async (base = parts.rounds.version): Promise<number> => {
    const body = honestUpdate(views[base]!, ++seed);
    const status = (await parts.app.request('/v1/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer> })).status;
    see();
    return status;
  };
  const rounds = async (n: number, after?: () => Promise<void>) => {
    for (let i = 0; i < n; i++) {
      const v = parts.rounds.version;
      assert.equal(await post(), 202);
      assert.equal(await post(), 202);
      assert.equal(parts.rounds.version, v + 1);
      await after?.();
    }
  };
  return { parts, views, post, rounds };
}

/** At version 20: an update on 18 (current − maxStaleness, its model pruned) is accepted, once 21 is out one on 18 is stale. */
async function staleness(s: Awaited<ReturnType<typeof fedAdamServer>>): Promise<void> {
  assert.equal(s.parts.rounds.version, 20);
  assert.equal(await s.post(18), 202, 'an update on current − maxStaleness is accepted (its model is pruned: the hash is all the check reads)');
  assert.equal(await s.post(20), 202);
  assert.equal(s.parts.rounds.version, 21);
  assert.equal(await s.post(18), 409, 'one older is stale, as before');
  assert.equal(await s.post(19), 202, 'one on a pruned model within the window is accepted');
}

/** One model's and one FedAdam state's bytes for the test table: what a round added to the store before. */
const ROUND_BYTES = (ITEMS.length * (TABLE_DIM + 1) * 4) * 3;

test('SQLite, FedAdam through the server: 10 more rounds leave the file within a few pages of its size, and a base within maxStaleness whose model is pruned is still accepted', () =>
  inDataDir('localrec-retention-versions-', async (dir) => {
    const server = await fedAdamServer({ dataDir: dir });
    const { parts, views, rounds } = server;
    try {
      const file = join(dir, 'localrec.sqlite');
      await rounds(10);
      assert.equal(parts.rounds.version, 10);
      const size10 = statSync(file).size;
      await rounds(10);
      const size20 = statSync(file).size;
      assert.equal(parts.rounds.version, 20);
      // Before: 10 × (model + FedAdam state) ≈ 10 × 120 KB more, and a 4 KB page per averaged
      // update. Now the freed pages are reused, and the rows left are packed.
      assert.ok(size20 - size10 <= 4 * 4096, `the file grew by ${size20 - size10} bytes over 10 rounds (a round's model and state: ${ROUND_BYTES})`);
      const inspect = sqliteInspect(file);
      for (let v = 0; v < 20; v++) assert.deepEqual(await inspect(v), { model: 0, optimizer: null }, `version ${v}`);
      const latest = (await inspect(20))!;
      assert.ok(latest.model > 0 && latest.optimizer === ITEMS.length * (TABLE_DIM + 1) * 4 * 2, 'the latest version keeps its model and state');
      for (let v = 0; v <= 20; v++) assert.equal(await parts.storage.versionHash(v), Buffer.from(views[v]!.hash).toString('hex'));
      await staleness(server);
    } finally {
      await parts.storage.close();
    }
  }));

const skip = postgresUnavailable();

describe('PostgreSQL: what is kept of older versions', { skip: skip ?? false }, () => {
  let server: TestPostgres;
  let n = 0;
  const freshDatabase = (): Promise<string> => createDatabase(server, `r${++n}`);
  const pgInspect = (db: pg.Client): Inspect => async (v) => {
    const r = await db.query<Held>('SELECT octet_length(model) AS model, octet_length(optimizer) AS optimizer FROM localrec_versions WHERE version = $1', [v]);
    return r.rows[0] && { model: r.rows[0].model, optimizer: r.rows[0].optimizer };
  };

  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    await server?.stop();
  });

  it('older versions keep their hash, lose their optimizer state, and their model past keepModels (default 3)', async () => {
    for (const keep of [1, undefined]) {
      const url = await freshDatabase();
      const s = await PostgresStorage.open(url, keep === undefined ? {} : { keepModels: keep });
      try {
        await withClient(url, (db) => publishAndCheck(s, pgInspect(db), keep ?? DEFAULT_KEEP_MODELS));
        assert.equal((s as unknown as { pruneFloor: number }).pruneFloor, 11 - (keep ?? DEFAULT_KEEP_MODELS) + 1, 'the next search starts there');
      } finally {
        await s.close();
      }
    }
    await assert.rejects(PostgresStorage.open(server.url, { keepModels: 0 }), /keepModels must be an integer ≥ 1, got 0/);
  });

  it('the pruning commits with the publish or not at all; an earlier release\'s store is pruned a batch per publish', async () => {
    const url = await freshDatabase();
    let crash = false;
    const s = await PostgresStorage.open(url, {
      keepModels: 1,
      beforeCommit: (what) => {
        if (crash && what === 'publish') throw new Error('power cut');
      },
    });
    try {
      await withClient(url, async (db) => {
        const inspect = pgInspect(db);
        await s.publish(version(0), []);
        const old = 2 * PRUNE_BATCH_VERSIONS + 4;
        for (let v = 1; v <= old; v++) {
          const x = version(v);
          await db.query('INSERT INTO localrec_versions (version, hash, model, optimizer, created_at, update_count) VALUES ($1, $2, $3, $4, $5, 1)', [v, x.hash, Buffer.from(x.model), Buffer.from(x.optimizer!), x.createdAt]);
        }
        crash = true;
        await assert.rejects(s.publish(version(old + 1), []), /power cut/);
        assert.deepEqual(await inspect(old), { model: MODEL_BYTES, optimizer: OPTIMIZER_BYTES }, 'rolled back with the publish');
        assert.equal(await inspect(old + 1), undefined);
        crash = false;
        await s.publish(version(old + 1), []);
        const pruned = async () => Number((await db.query<{ n: string }>('SELECT COUNT(*) AS n FROM localrec_versions WHERE octet_length(model) = 0')).rows[0]!.n);
        assert.equal(await pruned(), PRUNE_BATCH_VERSIONS, 'one batch');
        assert.deepEqual(await inspect(old), { model: 0, optimizer: null }, 'newest first');
        await s.publish(version(old + 2), []);
        await s.publish(version(old + 3), []);
        assert.equal(await pruned(), old + 3, 'every version but the latest, after three publishes');
        for (let v = 0; v <= old + 3; v++) assert.equal(await s.versionHash(v), version(v).hash);
      });
    } finally {
      await s.close();
    }
  });

  it('FedAdam through the server: with VACUUM (autovacuum\'s job) the table stays within a small bound over 10 more rounds, and a base within maxStaleness is accepted', async () => {
    const url = await freshDatabase();
    const storage = await PostgresStorage.open(url, { keepModels: 1 });
    const server = await fedAdamServer({ storage });
    const { parts, views, rounds } = server;
    try {
      await withClient(url, async (db) => {
        const size = async () => Number((await db.query<{ n: string }>("SELECT pg_total_relation_size('localrec_versions') AS n")).rows[0]!.n);
        const vacuum = async () => void (await db.query('VACUUM localrec_versions'));
        await rounds(10, vacuum);
        const size10 = await size();
        await rounds(10, vacuum);
        const size20 = await size();
        assert.equal(parts.rounds.version, 20);
        assert.ok(size20 - size10 <= 4 * 8192, `the table grew by ${size20 - size10} bytes over 10 rounds (a round's model and state: ${ROUND_BYTES})`);
        const inspect = pgInspect(db);
        for (let v = 0; v < 20; v++) assert.deepEqual(await inspect(v), { model: 0, optimizer: null }, `version ${v}`);
        for (let v = 0; v <= 20; v++) assert.equal(await storage.versionHash(v), Buffer.from(views[v]!.hash).toString('hex'));
        await staleness(server);
      });
    } finally {
      await storage.close();
    }
  });
});
