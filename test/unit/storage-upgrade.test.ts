/**
 * Upgrading a running shop's store: what the first start of a new build finds in a database an
 * earlier build wrote (docs/SERVER.md "Upgrading"). SQLite: averaged bodies an earlier build left
 * in the file's free pages, and a rebuild that needs disk space. PostgreSQL (pg-helpers.ts): tables
 * created by the oldest schemas in the repository's history, and a large table of averaged rows
 * to clear under the statement timeout.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import pg from 'pg';
import { isStorageError } from '../../src/errors.js';
import { PostgresStorage } from '../../src/server/postgres-storage.js';
import { SqliteStorage } from '../../src/server/sqlite-storage.js';
import { createDatabase, postgresUnavailable, startPostgres, withClient, type TestPostgres } from './pg-helpers.js';
import { inDataDir, sqliteFileBytes } from './server-helpers.js';

// ---------------------------------------------------------------------------------------------
// SQLite


/** Which of `bodies` still appear (by their first 64 bytes) in the data dir's database or its WAL. */
function bodiesInFile(dir: string, bodies: readonly Buffer[]): number[] {
  const files = sqliteFileBytes(dir);
  return bodies.flatMap((b, i) => (files.some((raw) => raw.includes(b.subarray(0, 64))) ? [i] : []));
}

/**
 * What a build without secure_delete does, on the raw file: stores two updates (a body held in its
 * page and one on overflow pages) and averages them into version 0, nulling their bodies but
 * keeping their arrival times. Returns the bodies.
 */
function averageAsAnOldBuild(dir: string): Buffer[] {
  const raw = new Database(join(dir, 'localrec.sqlite'));
  try {
    raw.pragma('secure_delete = OFF');
    raw.prepare("INSERT OR IGNORE INTO versions (version, hash, model, optimizer, created_at, update_count) VALUES (0, 'h', x'00', NULL, 1, 0)").run();
    const bodies = [randomBytes(1_000), randomBytes(12_000)];
    const insert = raw.prepare('INSERT INTO updates (nonce, base_version, received_at, body) VALUES (?, 0, ?, ?)');
    const ids = bodies.map((b, i) => Number(insert.run(randomBytes(16).toString('hex'), 1_800_000_000_000 + i, b).lastInsertRowid));
    for (const id of ids) raw.prepare('UPDATE updates SET aggregated_into = 0, body = NULL WHERE id = ?').run(id);
    return bodies;
  } finally {
    // (Closing the last connection checkpoints the WAL into the file.)
    raw.close();
  }
}

test('SQLite: bodies a build without secure_delete averaged after the one-time rebuild (a rollback, then the upgrade again) are cleared out of the file at the next start', () =>
  inDataDir('localrec-upgrade-', async (dir) => {
    // Upgraded once: rebuilt, and the rebuild noted.
    await SqliteStorage.open(dir).close();
    const bodies = averageAsAnOldBuild(dir);
    assert.deepEqual(bodiesInFile(dir, bodies), [0, 1], 'without secure_delete the bytes stay in the file (the premise)');
    await SqliteStorage.open(dir).close();
    assert.deepEqual(bodiesInFile(dir, bodies), [], 'rebuilt again');
    const db = new Database(join(dir, 'localrec.sqlite'), { readonly: true });
    try {
      assert.equal((db.prepare("SELECT COUNT(*) AS n FROM updates WHERE received_at <> 0").get() as { n: number }).n, 0);
      assert.ok(db.prepare("SELECT 1 FROM meta WHERE key = 'secure-delete-vacuumed'").get(), 'the rebuild noted again');
    } finally {
      db.close();
    }
  }));

test('SQLite: a one-time rebuild that runs out of disk space fails saying what it is and the space it needs, and is tried again at the next start', () =>
  inDataDir('localrec-upgrade-', async (dir) => {
    await SqliteStorage.open(dir).close();
    averageAsAnOldBuild(dir);
    const file = join(dir, 'localrec.sqlite');
    const kb = `${Math.max(1, Math.round(statSync(file).size / 1e3))} KB`;
    // A full disk, stubbed: SQLite's own error for it, from the VACUUM only.
    const exec = Database.prototype.exec;
    Database.prototype.exec = function (this: Database.Database, sql: string) {
      if (/^\s*VACUUM\s*$/i.test(sql)) throw new Database.SqliteError('database or disk is full', 'SQLITE_FULL');
      return exec.call(this, sql);
    };
    try {
      assert.throws(
        () => SqliteStorage.open(dir),
        (e: unknown) => {
          const m = (e as Error).message;
          assert.ok(isStorageError(e), m);
          assert.ok(m.includes(file), m);
          assert.match(m, /one-time rebuild \(VACUUM\)/);
          assert.ok(m.includes(`about twice the file's size (${kb}) free`), m);
          assert.match(m, /database or disk is full/);
          return true;
        },
      );
    } finally {
      Database.prototype.exec = exec;
    }
    // The lock was let go, and the rebuild is owed still: done at the next start.
    await SqliteStorage.open(dir).close();
    const db = new Database(file, { readonly: true });
    try {
      assert.ok(db.prepare("SELECT 1 FROM meta WHERE key = 'secure-delete-vacuumed'").get(), 'rebuilt at the next start');
    } finally {
      db.close();
    }
  }));

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/**
 * The tables as the oldest schemas in the repository's history created them (copied from
 * src/server/postgres-storage.ts at those commits), each with the meta row it wrote.
 */
const OLD_SCHEMAS: Record<string, string> = {
  // The first PostgreSQL store (2fe7e6c): no cohorts, no rate limit.
  '2fe7e6c': `
    CREATE TABLE IF NOT EXISTS localrec_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS localrec_versions (
      version INTEGER PRIMARY KEY,
      hash TEXT NOT NULL,
      model BYTEA NOT NULL,
      optimizer BYTEA,
      created_at BIGINT NOT NULL,
      update_count INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS localrec_updates (
      id BIGSERIAL PRIMARY KEY,
      nonce TEXT NOT NULL UNIQUE,
      base_version INTEGER NOT NULL,
      received_at BIGINT NOT NULL,
      body BYTEA,
      aggregated_into INTEGER REFERENCES localrec_versions(version)
    );
    CREATE INDEX IF NOT EXISTS localrec_updates_pending ON localrec_updates(id) WHERE aggregated_into IS NULL;
    INSERT INTO localrec_meta (key, value) VALUES ('schema', '1');
  `,
  // The first cohorts tables (7d9731c), before dropout recovery's columns and the index's rename.
  '7d9731c': `
    CREATE TABLE IF NOT EXISTS localrec_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS localrec_versions (
      version INTEGER PRIMARY KEY,
      hash TEXT NOT NULL,
      model BYTEA NOT NULL,
      optimizer BYTEA,
      created_at BIGINT NOT NULL,
      update_count INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS localrec_updates (
      id BIGSERIAL PRIMARY KEY,
      nonce TEXT NOT NULL UNIQUE,
      base_version INTEGER NOT NULL,
      received_at BIGINT NOT NULL,
      body BYTEA,
      aggregated_into INTEGER REFERENCES localrec_versions(version)
    );
    CREATE INDEX IF NOT EXISTS localrec_updates_pending ON localrec_updates(id) WHERE aggregated_into IS NULL;
    CREATE TABLE IF NOT EXISTS localrec_cohorts (
      id TEXT PRIMARY KEY,
      size INTEGER NOT NULL,
      joined INTEGER NOT NULL,
      submitted INTEGER NOT NULL,
      status TEXT NOT NULL,
      created_at BIGINT NOT NULL,
      ready_at BIGINT,
      published INTEGER,
      reason TEXT
    );
    CREATE INDEX IF NOT EXISTS localrec_cohorts_live ON localrec_cohorts(created_at) WHERE status IN ('forming', 'ready');
    CREATE TABLE IF NOT EXISTS localrec_cohort_members (
      cohort TEXT NOT NULL REFERENCES localrec_cohorts(id) ON DELETE CASCADE,
      idx INTEGER NOT NULL,
      public_key BYTEA NOT NULL,
      token TEXT NOT NULL,
      update_id BIGINT,
      PRIMARY KEY (cohort, idx),
      UNIQUE (cohort, public_key)
    );
    INSERT INTO localrec_meta (key, value) VALUES ('schema', '1');
  `,
};

/** Key of the publish lock (postgres-storage.ts LOCK_KEY, 'lrec'). */
const PUBLISH_LOCK_KEY = 0x6c726563;

const skip = postgresUnavailable();

describe('PostgreSQL: a database an earlier build created', { skip: skip ?? false }, () => {
  let server: TestPostgres;
  let n = 0;
  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    await server?.stop();
  });

  /** A fresh database on the test server. */
  const freshDatabase = (): Promise<string> => createDatabase(server, `u${++n}`);

  /** Tables' columns and indexes, in an order that does not depend on the order they were added in. */
  const schemaOf = (database: string) =>
    withClient(database, async (db) => ({
      columns: (
        await db.query(
          `SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default FROM information_schema.columns
            WHERE table_schema = 'public' ORDER BY table_name, column_name`,
        )
      ).rows,
      indexes: (await db.query("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY tablename, indexname")).rows,
      constraints: (
        await db.query(
          `SELECT t.relname AS table, c.conname, pg_get_constraintdef(c.oid) AS def FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
            JOIN pg_namespace s ON s.oid = t.relnamespace WHERE s.nspname = 'public' ORDER BY t.relname, c.conname`,
        )
      ).rows,
    }));

  for (const [commit, ddl] of Object.entries(OLD_SCHEMAS)) {
    test(`tables created by the schema of ${commit} get every column and index a fresh database has`, async () => {
      const fresh = await freshDatabase();
      await (await PostgresStorage.open(fresh)).close();
      const old = await freshDatabase();
      await withClient(old, (db) => db.query(ddl));
      await (await PostgresStorage.open(old)).close();
      const want = await schemaOf(fresh);
      assert.ok(want.columns.some((c) => c.table_name === 'localrec_cohorts' && c.column_name === 'recovery_at'), 'the fresh schema read');
      assert.deepEqual(await schemaOf(old), want);
    });
  }

  test('averaged rows an earlier build left are cleared after the schema, in batches each under the statement timeout, outside the publish lock, once', async () => {
    const database = await freshDatabase();
    await (await PostgresStorage.open(database)).close();
    const rows = 300;
    await withClient(database, async (db) => {
      // As an earlier build left it: no note of the clean-up, averaged rows with their arrival time
      // (every other one a masked upload's `cohort:member` nonce), and one pending update.
      await db.query("DELETE FROM localrec_meta WHERE key <> 'schema'");
      await db.query("INSERT INTO localrec_versions (version, hash, model, optimizer, created_at, update_count) VALUES (0, 'h', '\\x00', NULL, 1, 0)");
      await db.query(
        `INSERT INTO localrec_updates (nonce, base_version, received_at, body, aggregated_into)
         SELECT md5(g::text) || CASE WHEN g % 2 = 0 THEN ':' || (g % 5) ELSE '' END, 0, 1800000000000 + g, NULL, 0 FROM generate_series(1, $1::int) AS g`,
        [rows],
      );
      await db.query("INSERT INTO localrec_updates (nonce, base_version, received_at, body) VALUES ('pending', 0, 1800000000000, '\\x01')");
      // Every row updated costs 5 ms: one statement over the table would take 1.5 s or more.
      await db.query(`CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$;
                      CREATE TRIGGER slow_row BEFORE UPDATE ON localrec_updates FOR EACH ROW EXECUTE FUNCTION slow_row()`);
    });
    const cleared = (db: pg.Client) => db.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM localrec_updates WHERE aggregated_into IS NOT NULL AND received_at = 0').then((r) => r.rows[0]!.n);
    await withClient(database, async (db) => {
      const opening = PostgresStorage.open(database, { statementTimeoutMs: 1_000, cleanupBatchRows: 20 });
      let failed: unknown;
      opening.catch((e: unknown) => (failed = e));
      // While it runs: done in part (each batch commits), and the publish lock free.
      let seen = 0;
      for (let i = 0; i < 500 && failed === undefined && seen === 0; i++) {
        seen = await cleared(db);
        if (seen === 0) await new Promise((r) => setTimeout(r, 10));
      }
      if (seen > 0 && seen < rows) {
        await db.query('BEGIN');
        const free = (await db.query<{ ok: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS ok', [PUBLISH_LOCK_KEY])).rows[0]!.ok;
        await db.query('ROLLBACK');
        assert.ok(free, 'no publish waits for the clean-up');
      }
      const s = await opening;
      await s.close();
      assert.ok(seen > 0 && seen < rows, `seen part done (${seen} of ${rows})`);
      const after = (await db.query<{ id: string; nonce: string; received_at: string }>('SELECT id, nonce, received_at FROM localrec_updates ORDER BY id')).rows;
      after.slice(0, rows).forEach((r, i) => {
        const masked = (i + 1) % 2 === 0;
        assert.deepEqual([r.nonce, r.received_at], [masked ? `averaged:${r.id}` : r.nonce, '0']);
        if (!masked) assert.doesNotMatch(r.nonce, /:|averaged/, 'a plain nonce kept, against replays');
      });
      assert.deepEqual([after[rows]!.nonce, after[rows]!.received_at], ['pending', '1800000000000'], 'a pending update untouched');
      // Noted as cleared through the row before the one still pending (which an older build might
      // average later): a later start looks only from there.
      const through = (await db.query<{ value: string }>("SELECT value FROM localrec_meta WHERE key = 'averaged-rows-cleared-through'")).rows[0]?.value;
      assert.equal(through, String(Number(after[rows]!.id) - 1));
      // An older build, run again (a rollback), averages the pending update and one more with their
      // times and a masked nonce: the next start of this one clears them, and only them.
      await db.query("UPDATE localrec_updates SET aggregated_into = 0 WHERE nonce = 'pending'");
      await db.query("INSERT INTO localrec_updates (nonce, base_version, received_at, body, aggregated_into) VALUES ('late:1', 0, 1800000000001, NULL, 0)");
      await (await PostgresStorage.open(database, { statementTimeoutMs: 1_000, cleanupBatchRows: 20 })).close();
      const late = (await db.query<{ nonce: string; received_at: string }>("SELECT nonce, received_at FROM localrec_updates WHERE id > $1 ORDER BY id", [through])).rows;
      assert.deepEqual(late.map((r) => r.received_at), ['0', '0']);
      assert.match(late[1]!.nonce, /^averaged:/);
    });
  });
});

