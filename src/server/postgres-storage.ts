/**
 * PostgreSQL {@link Storage} on node-postgres (`pg`), for several `localrec serve` processes behind
 * a load balancer sharing one database. Same tables and contract as the SQLite adapter:
 *
 * - `addUpdate` is one autocommitted `INSERT … ON CONFLICT (nonce) DO NOTHING`: with PostgreSQL's
 *   default `synchronous_commit = on` it is on disk before the HTTP ack;
 * - `publish` runs in one transaction that first takes a transaction-scoped advisory lock, so two
 *   processes publishing at once queue up; the second finds the version taken (or its updates
 *   consumed) and fails with {@link StorageConflictError}, rolling back everything it wrote;
 * - the schema is created under the same lock, so processes starting together do not race;
 * - secure aggregation's cohorts live in two more tables ({@link PostgresStorage.cohortStore}), so
 *   every process forms and collects the same cohorts.
 *
 * Aggregated updates keep what they keep in SQLite (base version, version, a plain update's nonce
 * against replays); body, arrival time and a masked upload's `cohort:member` go once averaged.
 * Older versions lose their optimizer state and, past `keepModels`, their model in the publish's
 * transaction ({@link VersionRetentionOptions}). PostgreSQL keeps old row versions until VACUUM
 * (autovacuum then reuses their space), and its WAL (and any archive of it) the bodies as
 * written: docs/SERVER.md.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { bytesEqual, UPDATE_BUDGET_BYTES } from '../federated/wire.js';
import type pg from 'pg';
import { StorageError } from '../errors.js';
import { recoveryShareBytes, usesSelfMask, type SecAggParams, type TagRound } from '../federated/secagg.js';
import type { RateLimit, RateLimitOptions } from './rate-limit.js';
import { afterCollectTimeout, allUploaded, cohortMemberCap, cohortTimeouts, collectDeadline, KEEP_ENDED_MS, newCohortId, newMemberToken, PUBLISH_GRACE, recoveryDeadline, timeoutReason, type CohortInfo, type CohortStatus, type CohortStore, type CohortTimeouts, type MarkResult, type RecoveryResult, type SweepResult } from './cohorts.js';
import { averagedNonceSql, checkNextVersion, inIdOrder, keepModelsOf, pendingFromRow, PRUNE_BATCH_VERSIONS, prunedBelow, refFromRow, StorageConflictError, versionFromRow, versionParams, type NewUpdate, type PendingRef, type PendingUpdate, type VersionRetentionOptions, type Storage, type StoredVersion, type UpdateRow, type VersionRow } from './storage.js';

const SCHEMA_VERSION = '1';
/** How long a new connection may take (pool checkout included) before the call fails with a StorageError. */
const CONNECT_TIMEOUT_MS = 10_000;
/**
 * How much longer than the statement timeout this side waits for an answer before it gives the
 * connection up (node-postgres's `query_timeout`): a statement PostgreSQL cancels is reported with
 * PostgreSQL's own error, and only a database that does not answer at all hits this.
 */
export const QUERY_TIMEOUT_MARGIN_MS = 5_000;
/** node-postgres's error when `query_timeout` passed with no answer. */
const READ_TIMEOUT = 'Query read timeout';
/** Key of the advisory lock that serializes schema creation and publishing ('lrec' in ASCII). */
const LOCK_KEY = 0x6c726563;
/** Key of the advisory lock that serializes cohort joins ('lrsa'), so two joins never open two cohorts. */
export const JOIN_LOCK_KEY = 0x6c727361;
/** Key of the session advisory lock held by the process running the one-time clean-up at open ('lrcl'). */
const CLEANUP_LOCK_KEY = 0x6c72636c;
/**
 * Meta key: the update id through which averaged updates that earlier releases left were cleared
 * ({@link PostgresStorage.clearLegacyRows}); each start looks only past it.
 */
const CLEANED_KEY = 'averaged-rows-cleared-through';
/** Rows of `localrec_updates` one statement of that clean-up looks at: a fraction of the statement timeout on any table size. */
const CLEANUP_BATCH_ROWS = 10_000;

export interface PostgresStorageOptions extends VersionRetentionOptions {
  /** Connections in the pool (default 4; the round coordinator runs one state change at a time). */
  maxConnections?: number;
  /**
   * Longest a statement may run, lock waits included, before PostgreSQL cancels it (default
   * 30,000 ms): a stuck peer holding the publish lock then costs a 503 and a retry, not a hung server.
   * The same bounds a transaction left idle (`idle_in_transaction_session_timeout`: PostgreSQL ends
   * the session and its locks), and, {@link QUERY_TIMEOUT_MARGIN_MS} later, the wait for any answer
   * on this side (node-postgres's `query_timeout`): a database host that stops answering (a network
   * partition, a dead host) costs a 503 too.
   */
  statementTimeoutMs?: number;
  /**
   * Secure aggregation: members of cohorts that have not ended (forming, full, recovering) that the
   * database holds at most, counted over every process on it; a join past it is refused (503
   * `cohorts-full`, retried later) until cohorts end. Default 100,000, or 4 cohorts' worth when
   * that is more; at least one cohort's (as in memory: `MemoryCohortStore`). Each process checks
   * its own value: give every process on the database the same.
   */
  maxCohortMembers?: number;
  /** Test-only fault injection: called inside the publish transaction, just before it commits. */
  beforeCommit?: (what: 'init' | 'publish') => void | Promise<void>;
  /** Test-only: rows per statement of the one-time clean-up at open (default {@link CLEANUP_BATCH_ROWS}). */
  cleanupBatchRows?: number;
}

/**
 * Query parameters {@link redactUrl} masks: node-postgres takes the password (`password`), the
 * client key's passphrase (`sslpassword`) and the TLS files (`sslkey`, `sslcert`, `sslrootcert`)
 * from the URL's query too; any parameter whose name says pass, key, secret or token is masked.
 */
const SECRET_PARAM = /pass|key|secret|token|^sslcert$|^sslrootcert$/i;

/**
 * The URL with its password replaced, in the user info and in the query, for messages and logs;
 * the rest (user, host, port, database, other parameters such as `sslmode`) stays as it was written.
 *
 * @example
 * ```ts
 * redactUrl('postgres://u:pw@h/db?password=pw&sslmode=require'); // 'postgres://u:***@h/db?password=***&sslmode=require'
 * ```
 */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    if (u.search.length > 1) {
      // Parameter by parameter on the query as written (URLSearchParams would re-encode the others).
      u.search = u.search
        .slice(1)
        .split('&')
        .map((part) => {
          const eq = part.indexOf('=');
          const raw = eq < 0 ? part : part.slice(0, eq);
          let name = raw;
          try {
            name = decodeURIComponent(raw.replace(/\+/g, ' '));
          } catch {
            // a malformed escape: match the name as written
          }
          return SECRET_PARAM.test(name) ? `${raw}=***` : part;
        })
        .join('&');
    }
    // Nothing node-postgres reads, but a password holding `#` would run on into it.
    if (u.hash) u.hash = '***';
    return u.toString();
  } catch {
    return '(unparseable URL)';
  }
}

/** Whether `s` names a PostgreSQL database (`postgres://` or `postgresql://`). */
export function isPostgresUrl(s: string): boolean {
  return /^postgres(ql)?:\/\//i.test(s);
}

/**
 * @example
 * ```ts
 * const storage = await PostgresStorage.open('postgres://localrec@127.0.0.1:5432/shop');
 * const { app } = await createServer({ storage, initialTable });
 * ```
 */
export class PostgresStorage implements Storage {
  /** Several processes may share this store: the round coordinator re-reads it (see Storage.shared). */
  readonly shared = true;
  readonly url: string;
  private closed = false;
  /** HMAC key for client addresses in `localrec_rate` (read at open). */
  /** The key client addresses are hashed with in this window ({@link clientKeyAt}). */
  private clientKey: { window: number; key: Buffer } | undefined;
  /** The timer that deletes refilled rate-limit buckets while no request comes. */
  private purgeTimer: ReturnType<typeof setInterval> | undefined;

  /** {@link VersionRetentionOptions.keepModels}. */
  private readonly keepModels: number;

  private constructor(
    private readonly pool: pg.Pool,
    url: string,
    private readonly hooks: PostgresStorageOptions,
  ) {
    this.url = redactUrl(url);
    this.keepModels = keepModelsOf(hooks);
  }

  /** Connects, checks the server answers, and creates the tables when missing. */
  static async open(url: string, options: PostgresStorageOptions = {}): Promise<PostgresStorage> {
    if (!isPostgresUrl(url)) throw new StorageError(`not a PostgreSQL URL (postgres://user@host:port/database): ${redactUrl(url)}`);
    const max = options.maxConnections ?? 4;
    if (!Number.isInteger(max) || max < 1) throw new StorageError(`maxConnections must be an integer ≥ 1, got ${max}`);
    keepModelsOf(options);
    const cap = options.maxCohortMembers;
    if (cap !== undefined && !(Number.isInteger(cap) && cap >= 1)) throw new StorageError(`maxCohortMembers must be a whole number ≥ 1, got ${cap}`);
    const timeout = options.statementTimeoutMs ?? 30_000;
    if (!Number.isInteger(timeout) || timeout < 1) throw new StorageError(`statementTimeoutMs must be an integer ≥ 1, got ${timeout}`);
    const pool = new (await loadPg()).Pool({
      connectionString: url,
      max,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      statement_timeout: timeout,
      idle_in_transaction_session_timeout: timeout,
      // A statement the database cancels answers with its own error first; no answer at all (no
      // RST, no FIN: the host is gone) fails here, and the connection is destroyed, not reused.
      query_timeout: timeout + QUERY_TIMEOUT_MARGIN_MS,
      // TCP keepalives, so that a connection to a host that vanished is noticed, also while idle.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
    // An idle client that loses its connection emits 'error' on the pool; without a listener that
    // would crash the process. The next query gets a fresh connection (or fails with a StorageError).
    pool.on('error', () => undefined);
    const s = new PostgresStorage(pool, url, options);
    try {
      await s.tx('create the schema', async (c) => {
        await c.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
        await c.query(`
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
            reason TEXT,
            dropped INTEGER[],
            recovery_at BIGINT,
            needed INTEGER,
            recovered INTEGER
          );
          CREATE TABLE IF NOT EXISTS localrec_rate (
            client TEXT PRIMARY KEY,
            tokens DOUBLE PRECISION NOT NULL,
            at BIGINT NOT NULL
          );
          -- Columns added to a table after it was first created: a database created before gets
          -- them here (older rows keep NULL). Dropout recovery's (dropped … recovered) and ended_at.
          ALTER TABLE localrec_cohorts ADD COLUMN IF NOT EXISTS dropped INTEGER[];
          ALTER TABLE localrec_cohorts ADD COLUMN IF NOT EXISTS recovery_at BIGINT;
          ALTER TABLE localrec_cohorts ADD COLUMN IF NOT EXISTS needed INTEGER;
          ALTER TABLE localrec_cohorts ADD COLUMN IF NOT EXISTS recovered INTEGER;
          ALTER TABLE localrec_cohorts ADD COLUMN IF NOT EXISTS ended_at BIGINT;
          -- Replaced by localrec_cohorts_open (which also covers recovering cohorts).
          DROP INDEX IF EXISTS localrec_cohorts_live;
          CREATE INDEX IF NOT EXISTS localrec_cohorts_open ON localrec_cohorts(created_at) WHERE status IN ('forming', 'ready', 'recovering');
          CREATE TABLE IF NOT EXISTS localrec_cohort_members (
            cohort TEXT NOT NULL REFERENCES localrec_cohorts(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            public_key BYTEA NOT NULL,
            token TEXT NOT NULL,
            update_id BIGINT,
            share BYTEA,
            PRIMARY KEY (cohort, idx),
            UNIQUE (cohort, public_key)
          );
          -- Dropout recovery: a member's recovery share, and each upload's self-mask shares,
          -- sealed to its mask neighbours.
          ALTER TABLE localrec_cohort_members ADD COLUMN IF NOT EXISTS share BYTEA;
          ALTER TABLE localrec_cohort_members ADD COLUMN IF NOT EXISTS sealed BYTEA;
          ALTER TABLE localrec_cohort_members ADD COLUMN IF NOT EXISTS confirm BYTEA;
          ALTER TABLE localrec_cohort_members ADD COLUMN IF NOT EXISTS ready BYTEA;
        `);
        const v = await c.query<{ value: string }>('SELECT value FROM localrec_meta WHERE key = $1', ['schema']);
        if (v.rowCount === 0) await c.query('INSERT INTO localrec_meta (key, value) VALUES ($1, $2)', ['schema', SCHEMA_VERSION]);
        else if (v.rows[0]!.value !== SCHEMA_VERSION) throw new StorageError(`${s.url}: schema version ${v.rows[0]!.value}, this server knows ${SCHEMA_VERSION}`);
        // Written by earlier releases: the rate limit's key kept for good.
        await c.query("DELETE FROM localrec_meta WHERE key = 'client-key'");
      });
      await s.clearLegacyRows(options.cleanupBatchRows ?? CLEANUP_BATCH_ROWS);
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw e;
    }
    return s;
  }

  /**
   * Clears what earlier builds kept of averaged updates: their arrival times and masked
   * uploads' `cohort:member` nonces (now cleared as they are averaged). Each start looks only past
   * the id {@link CLEANED_KEY} holds (the first start after an upgrade, the whole table; later
   * ones, what an older build averaged since, after a rollback), after the schema's transaction
   * and outside the publish lock: in autocommitted statements of `batch` rows each, walking the
   * primary key, so that a table of millions of rows neither hits the statement timeout nor holds
   * other processes' publishes. One process at a time (a session advisory lock); one that finds it
   * taken starts without waiting, and a process that stops halfway leaves the rest to the next start.
   */
  private async clearLegacyRows(batch: number): Promise<void> {
    if (!Number.isInteger(batch) || batch < 1) throw new StorageError(`cleanupBatchRows must be an integer ≥ 1, got ${batch}`);
    const through = async (): Promise<string> => {
      const v = (await this.q<{ value: string }>('read a setting', 'SELECT value FROM localrec_meta WHERE key = $1', [CLEANED_KEY])).rows[0]?.value;
      return v !== undefined && /^\d+$/.test(v) ? v : '0';
    };
    const from = await through();
    const newer = (await this.q('look for updates past the clean-up', 'SELECT 1 FROM localrec_updates WHERE id > $1 LIMIT 1', [from])).rowCount !== 0;
    if (!newer) return;
    const what = 'clear arrival times of averaged updates (after an upgrade)';
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      this.fail(what, e);
    }
    let locked = false;
    let broken: Error | undefined;
    const onError = (e: Error) => void (broken ??= e);
    client.on('error', onError);
    try {
      locked = (await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [CLEANUP_LOCK_KEY])).rows[0]!.ok;
      // Another process is at it.
      if (!locked) return;
      let last = await through();
      // Read before the walk: a row pending now that a still-running older build averages during
      // it (a mixed-version rollout) is looked at again by the next start.
      const pending = (await client.query<{ first: string | null }>('SELECT MIN(id)::text AS first FROM localrec_updates WHERE aggregated_into IS NULL')).rows[0]!.first;
      for (;;) {
        const next = (await client.query<{ last: string | null }>('SELECT MAX(id)::text AS last FROM (SELECT id FROM localrec_updates WHERE id > $1 ORDER BY id LIMIT $2) AS b', [last, batch])).rows[0]!.last;
        if (next === null) break;
        await client.query(
          `UPDATE localrec_updates SET received_at = 0, nonce = ${averagedNonceSql('position')}
            WHERE id > $1 AND id <= $2 AND aggregated_into IS NOT NULL AND (received_at <> 0 OR position(':' in nonce) > 0 AND nonce NOT LIKE 'averaged:%')`,
          [last, next],
        );
        last = next;
      }
      // Through the last row looked at, or short of the first that was pending: one an older build
      // averages later (a rollback) is looked at again by the next start.
      const mark = pending !== null && BigInt(pending) - 1n < BigInt(last) ? (BigInt(pending) - 1n).toString() : last;
      await client.query('INSERT INTO localrec_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [CLEANED_KEY, mark]);
    } catch (e) {
      broken ??= e as Error;
      this.fail(what, e);
    } finally {
      // The session lock goes with the session: a connection that failed is destroyed, not reused.
      if (locked && !broken) await client.query('SELECT pg_advisory_unlock($1)', [CLEANUP_LOCK_KEY]).catch((e: Error) => (broken = e));
      client.removeListener('error', onError);
      client.release(broken);
    }
  }

  /**
   * See {@link Storage.probeWrite}: in one transaction, writes an update-sized row (random bytes as
   * large as the upload budget, which TOAST cannot compress away) and deletes it, so the write needs
   * about the room an upload needs, not only a rewrite of a small row in a page already allocated.
   */
  async probeWrite(): Promise<void> {
    const key = `write-probe:${randomBytes(8).toString('hex')}`;
    // base64 of random bytes: UPDATE_BUDGET_BYTES characters.
    const value = randomBytes((UPDATE_BUDGET_BYTES * 3) / 4).toString('base64');
    await this.tx('probe a write', async (c) => {
      await c.query('INSERT INTO localrec_meta (key, value) VALUES ($1, $2)', [key, value]);
      await c.query('DELETE FROM localrec_meta WHERE key = $1', [key]);
    });
  }

  async readMeta(key: string): Promise<string | undefined> {
    return (await this.q<{ value: string }>('read a setting', 'SELECT value FROM localrec_meta WHERE key = $1', [key])).rows[0]?.value;
  }

  async writeMeta(key: string, value: string): Promise<void> {
    await this.q('store a setting', 'INSERT INTO localrec_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value', [key, value]);
  }

  /**
   * See {@link Storage.writeMetaIf}: in one transaction, the row is locked (SELECT … FOR UPDATE)
   * before `when` sees it, so a concurrent call on another connection waits and then reads what
   * this one wrote. A key with no row yet has nothing to lock: it is inserted (ON CONFLICT DO
   * NOTHING), and when another process inserted it first, read again, locked.
   */
  async writeMetaIf(key: string, value: string, when: (stored: string | undefined) => boolean): Promise<{ stored: string | undefined; written: boolean }> {
    return this.tx('store a setting', async (c) => {
      for (;;) {
        const row = (await c.query<{ value: string }>('SELECT value FROM localrec_meta WHERE key = $1 FOR UPDATE', [key])).rows[0];
        if (row) {
          const written = when(row.value);
          if (written) await c.query('UPDATE localrec_meta SET value = $2 WHERE key = $1', [key, value]);
          return { stored: row.value, written };
        }
        if (!when(undefined)) return { stored: undefined, written: false };
        const inserted = await c.query('INSERT INTO localrec_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING', [key, value]);
        if (inserted.rowCount === 1) return { stored: undefined, written: true };
      }
    });
  }

  private fail(what: string, e: unknown): never {
    if (e instanceof StorageError) throw e;
    const message = isReadTimeout(e) ? `no answer from the database within ${this.queryTimeoutMs} ms` : (e as Error).message;
    throw new StorageError(`PostgreSQL ${what} failed (${this.url}): ${message}`, { cause: e });
  }

  private get queryTimeoutMs(): number {
    return (this.hooks.statementTimeoutMs ?? 30_000) + QUERY_TIMEOUT_MARGIN_MS;
  }

  private async q<R extends pg.QueryResultRow>(what: string, sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(sql, params);
    } catch (e) {
      this.fail(what, e);
    }
  }

  /**
   * Runs `fn` in a transaction on one connection; rolls back on any error. A connection that broke
   * (lost, or no answer within the query timeout) is not rolled back but handed back with its error,
   * so that the pool destroys it (PostgreSQL rolls back a transaction whose session ends).
   */
  private async tx<T>(what: string, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      this.fail(what, e);
    }
    // The pool listens for a client's 'error' only while the client is idle in it. A connection
    // lost while checked out (its backend terminated, the database restarted or failed over, the
    // session's idle-in-transaction timeout) emits one here, which with no listener would end the
    // process: kept, and the statement in flight, or the next, fails with a StorageError (a 503).
    // (Set by the listener: typed so that TypeScript does not take it for always undefined.)
    let lost = undefined as Error | undefined;
    const onError = (e: Error) => {
      lost ??= e;
    };
    client.on('error', onError);
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const out = await fn(client);
      await client.query('COMMIT');
      return out;
    } catch (e) {
      broken = lost ?? (isReadTimeout(e) ? (e as Error) : undefined);
      if (!broken) await client.query('ROLLBACK').catch((r: Error) => (broken = lost ?? r));
      // PostgreSQL's own error (it has a code) or ours stands; node-postgres's "Client has
      // encountered a connection error and is not queryable" says less than the connection's error.
      const cause = lost && !(e instanceof StorageError) && (e as { code?: unknown }).code === undefined ? lost : e;
      return this.fail(what, cause);
    } finally {
      client.removeListener('error', onError);
      client.release(broken ?? lost);
    }
  }

  async latest(): Promise<StoredVersion | undefined> {
    const r = await this.q<VersionRow>('read latest version', 'SELECT * FROM localrec_versions ORDER BY version DESC LIMIT 1');
    return r.rows[0] ? versionFromRow(r.rows[0]) : undefined;
  }

  async versionHash(version: number): Promise<string | undefined> {
    const r = await this.q<{ hash: string }>('read version hash', 'SELECT hash FROM localrec_versions WHERE version = $1', [version]);
    return r.rows[0]?.hash;
  }

  async addUpdate(u: NewUpdate): Promise<{ id: number } | 'replayed'> {
    const r = await this.q<{ id: string }>(
      'store update',
      'INSERT INTO localrec_updates (nonce, base_version, received_at, body) VALUES ($1, $2, $3, $4) ON CONFLICT (nonce) DO NOTHING RETURNING id',
      [u.nonce, u.baseVersion, u.receivedAt, Buffer.from(u.body.buffer, u.body.byteOffset, u.body.byteLength)],
    );
    return r.rowCount === 0 ? 'replayed' : { id: Number(r.rows[0]!.id) };
  }

  async pending(): Promise<PendingUpdate[]> {
    const r = await this.q<UpdateRow>('read pending updates', 'SELECT id, nonce, base_version, received_at, body FROM localrec_updates WHERE aggregated_into IS NULL ORDER BY id');
    return r.rows.map(pendingFromRow);
  }

  async pendingRefs(): Promise<PendingRef[]> {
    const r = await this.q<Omit<UpdateRow, 'body'>>('read pending updates', 'SELECT id, nonce, base_version, received_at FROM localrec_updates WHERE aggregated_into IS NULL ORDER BY id');
    return r.rows.map(refFromRow);
  }

  async pendingByIds(ids: readonly number[]): Promise<PendingUpdate[]> {
    if (ids.length === 0) return [];
    // One statement: the rows as of one snapshot, as pending() reads them.
    const r = await this.q<UpdateRow>('read pending updates', 'SELECT id, nonce, base_version, received_at, body FROM localrec_updates WHERE id = ANY($1::bigint[]) AND aggregated_into IS NULL', [ids.map(String)]);
    return inIdOrder(r.rows.map(pendingFromRow), ids);
  }

  async pendingByNonce(nonce: string): Promise<PendingUpdate | undefined> {
    const r = await this.q<UpdateRow>('read a pending update', 'SELECT id, nonce, base_version, received_at, body FROM localrec_updates WHERE nonce = $1 AND aggregated_into IS NULL', [nonce]);
    return r.rows[0] ? pendingFromRow(r.rows[0]) : undefined;
  }

  async pendingCount(): Promise<number> {
    const r = await this.q<{ n: string }>('count pending updates', 'SELECT COUNT(*) AS n FROM localrec_updates WHERE aggregated_into IS NULL');
    return Number(r.rows[0]!.n);
  }

  async discard(ids: readonly number[]): Promise<void> {
    if (ids.length === 0) return;
    await this.q('discard updates', 'DELETE FROM localrec_updates WHERE id = ANY($1::bigint[]) AND aggregated_into IS NULL', [ids.map(String)]);
  }

  async publish(next: StoredVersion, consumed: readonly number[]): Promise<void> {
    let floor: number | undefined;
    await this.tx('publish version', async (c) => {
      floor = undefined;
      await c.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
      checkNextVersion((await c.query<{ v: number | null }>('SELECT MAX(version) AS v FROM localrec_versions')).rows[0]!.v, next.version);
      await c.query('INSERT INTO localrec_versions (version, hash, model, optimizer, created_at, update_count) VALUES ($1, $2, $3, $4, $5, $6)', versionParams(next));
      if (consumed.length > 0) {
        // As SqliteStorage: no body, no arrival time, no `cohort:member` nonce once averaged.
        const r = await c.query(
          `UPDATE localrec_updates SET aggregated_into = $1, body = NULL, received_at = 0, nonce = ${averagedNonceSql('position')}
           WHERE id = ANY($2::bigint[]) AND aggregated_into IS NULL`,
          [next.version, consumed.map(String)],
        );
        const distinct = new Set(consumed).size;
        if (distinct !== consumed.length || r.rowCount !== distinct) {
          throw new StorageConflictError(`${consumed.length - (r.rowCount ?? 0)} of the ${consumed.length} updates are no longer pending`);
        }
      }
      // As SqliteStorage, in this transaction: older versions lose their optimizer state, and those
      // up to `cut` their model (an empty bytea: the column is NOT NULL); at most a batch, newest
      // first. (octet_length() of a TOASTed value reads its size, not its chunks; an unchanged
      // model keeps its TOAST pointer.)
      // Only from the version below which this process knows every row pruned (SqliteStorage's
      // pruneFloor): the search reads `keepModels` rows a publish, not every version ever published.
      const cut = next.version - this.keepModels;
      const pruned = await c.query(
        `UPDATE localrec_versions SET optimizer = NULL, model = CASE WHEN version <= $2 THEN ''::bytea ELSE model END
         WHERE version IN (SELECT version FROM localrec_versions WHERE version >= $4 AND version < $1 AND (optimizer IS NOT NULL OR (version <= $2 AND octet_length(model) > 0))
                           ORDER BY version DESC LIMIT $3)`,
        [next.version, cut, PRUNE_BATCH_VERSIONS, this.pruneFloor],
      );
      floor = prunedBelow(pruned.rowCount ?? 0, cut);
      await this.hooks.beforeCommit?.(next.version === 0 ? 'init' : 'publish');
    });
    // Committed: the versions below it need nothing more (versions only grow; a peer's publishes
    // only prune).
    if (floor !== undefined) this.pruneFloor = Math.max(this.pruneFloor, floor);
  }

  /** Below this version every row is pruned, as far as this process knows (it starts at 0). */
  private pruneFloor = 0;

  /**
   * Secure aggregation's cohorts in this database: a join takes a transaction-scoped advisory lock
   * and the forming cohort's row, so joins from any process get consecutive member indexes in one
   * cohort; an upload is recorded only while its cohort's row says `ready`; the timeout is checked
   * by whichever process looks first.
   */
  cohortStore(params: SecAggParams, timeouts: number | CohortTimeouts, now: () => number): CohortStore {
    return new PostgresCohortStore(
      (what, sql, values) => this.q(what, sql, values),
      (what, fn) => this.tx(what, fn),
      params,
      cohortTimeouts(timeouts),
      now,
      cohortMemberCap(params.cohortSize, this.hooks.maxCohortMembers),
    );
  }

  /**
   * The per-client token buckets in `localrec_rate`, one atomic upsert per request, so the limit
   * holds across every process on this database. Rows hold an HMAC of the client's address (keyed
   * per database), never the address, and are deleted once their bucket is full again (after
   * burst / rate: 20 s at the default 60 a minute, burst 20).
   */
  rateLimiter(options: RateLimitOptions, now: () => number): RateLimit {
    const rate = options.perMinute / 60_000;
    // When a request last purged, on a monotonic clock (this process's own interval: a wall clock
    // stepped back must not hold it). The buckets' times are the wall clock's, shared by every process.
    let lastPurge = -Infinity;
    const purge = (t: number) => {
      lastPurge = performance.now();
      // Buckets that are full again hold no debt: forget those clients.
      void this.q('forget rate-limit buckets', 'DELETE FROM localrec_rate WHERE tokens + GREATEST(0, $1 - at) * $2::float8 >= $3::float8', [t, rate, options.burst]).catch(() => undefined);
    };
    // Also while no request comes: the last clients' rows must not outlive their bucket's refill.
    this.purgeTimer ??= setInterval(() => {
      if (!this.closed) purge(now());
    }, RATE_PURGE_MS);
    this.purgeTimer.unref?.();
    return {
      take: async (key: string, cost = 1): Promise<boolean> => {
        const t = now();
        const client = createHmac('sha256', await this.clientKeyAt(t)).update(key).digest('base64url');
        // Refill since the last request, then take `cost` (a token, or an IPv6 network's part of
        // one: rate-limit.ts, rateLimitKeys) only when it is there. Every bucket has the same burst
        // and rate, so the purge below holds for all of them.
        const r = await this.q(
          'rate-limit a client',
          `INSERT INTO localrec_rate AS b (client, tokens, at) VALUES ($1, $2::float8 - $5::float8, $3)
           ON CONFLICT (client) DO UPDATE SET tokens = LEAST($2::float8, b.tokens + GREATEST(0, $3 - b.at) * $4::float8) - $5::float8, at = $3
           WHERE LEAST($2::float8, b.tokens + GREATEST(0, $3 - b.at) * $4::float8) >= $5::float8
           RETURNING tokens`,
          [client, options.burst, t, rate, cost],
        );
        if (performance.now() - lastPurge > RATE_PURGE_MS) purge(t);
        return (r.rowCount ?? 0) > 0;
      },
    };
  }

  /**
   * The key client addresses are hashed with at time `t`: one per {@link CLIENT_KEY_WINDOW_MS}
   * window, shared by every process on the database, and overwritten by the next window's, so a
   * copy of the database taken later cannot tie a stored hash to an address by trying them all
   * (2³² for IPv4), nor link one address's rows across windows.
   */
  private async clientKeyAt(t: number): Promise<Buffer> {
    const window = Math.floor(t / CLIENT_KEY_WINDOW_MS);
    if (this.clientKey?.window === window) return this.clientKey.key;
    // First process in the window writes a fresh key (replacing an earlier window's); the others
    // read it.
    await this.q(
      'rotate the rate-limit key',
      `INSERT INTO localrec_meta (key, value) VALUES ('${CLIENT_KEY}', $1) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
       WHERE split_part(localrec_meta.value, ':', 1)::bigint < $2`,
      [`${window}:${randomBytes(32).toString('hex')}`, window],
    );
    const value = (await this.q<{ value: string }>('read the rate-limit key', `SELECT value FROM localrec_meta WHERE key = '${CLIENT_KEY}'`)).rows[0]!.value;
    const [stored, hex] = value.split(':') as [string, string];
    // (A process whose clock runs behind uses the newer window's key until its own catches up.)
    this.clientKey = { window: Math.max(window, Number(stored)), key: Buffer.from(hex, 'hex') };
    return this.clientKey.key;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.purgeTimer);
    await this.pool.end();
  }
}

/** How often refilled rate-limit buckets are deleted. */
const RATE_PURGE_MS = 10_000;
/** How long one key hashes client addresses for the rate limit before the next replaces it. */
const CLIENT_KEY_WINDOW_MS = 10 * 60_000;
/**
 * Meta key of the window's rate-limit key, `window:hex`. (Releases before windows kept one key for
 * good under `client-key`, read as hex: a new name, so that such a process running beside this
 * one, mid-upgrade, never reads `window:hex` as a key; the old row is deleted at open.)
 */
const CLIENT_KEY = 'client-key-window';

interface CohortRow {
  id: string;
  size: number;
  joined: number;
  submitted: number;
  status: CohortStatus;
  created_at: string | number;
  ready_at: string | number | null;
  published: number | null;
  reason: string | null;
  dropped: number[] | null;
  recovery_at: string | number | null;
  needed: number | null;
  recovered: number | null;
  ended_at: string | number | null;
}

function cohortFromRow(r: CohortRow): CohortInfo {
  const c: CohortInfo = { id: r.id, size: r.size, joined: r.joined, submitted: r.submitted, status: r.status, createdAt: Number(r.created_at) };
  if (r.ready_at !== null) c.readyAt = Number(r.ready_at);
  if (r.published !== null) c.published = r.published;
  if (r.reason !== null) c.abortReason = r.reason;
  if (r.dropped !== null) c.dropped = r.dropped;
  if (r.recovery_at !== null) c.recoveryAt = Number(r.recovery_at);
  if (r.needed !== null) c.needed = r.needed;
  if (r.recovered !== null) c.recovered = r.recovered;
  if (r.ended_at !== null) c.endedAt = Number(r.ended_at);
  return c;
}

/** Whether `e` is node-postgres's `query_timeout` error: the database gave no answer in time. */
function isReadTimeout(e: unknown): boolean {
  return e instanceof Error && e.message === READ_TIMEOUT;
}

/**
 * node-postgres, loaded when a PostgreSQL store is opened: an optional peer dependency, needed only
 * by shops that serve from PostgreSQL.
 */
async function loadPg(): Promise<typeof pg> {
  try {
    return (await import('pg')).default;
  } catch (e) {
    const err = e as { code?: string; message?: string };
    if ((err.code === 'ERR_MODULE_NOT_FOUND' || err.code === 'MODULE_NOT_FOUND') && /['"]pg['"]/.test(err.message ?? '')) {
      throw new StorageError('the PostgreSQL store needs the pg package, which is not installed: npm install pg@8', { cause: e });
    }
    throw new StorageError(`pg could not be loaded: ${err.message ?? String(e)}`, { cause: e });
  }
}

type Query = <R extends pg.QueryResultRow>(what: string, sql: string, params?: unknown[]) => Promise<pg.QueryResult<R>>;
type Transaction = <T>(what: string, fn: (c: pg.PoolClient) => Promise<T>) => Promise<T>;

/** {@link CohortStore} on the `localrec_cohorts` and `localrec_cohort_members` tables. */
class PostgresCohortStore implements CohortStore {
  readonly durable = true;

  constructor(
    private readonly q: Query,
    private readonly tx: Transaction,
    private readonly params: SecAggParams,
    private readonly timeouts: CohortTimeouts,
    private readonly now: () => number,
    /** {@link PostgresStorageOptions.maxCohortMembers}, resolved. */
    private readonly maxMembers: number,
  ) {}

  join(publicKey: Uint8Array): Promise<{ cohort: CohortInfo; index: number; token: string } | { error: string; busy?: true }> {
    const key = Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.byteLength);
    return this.tx('join a cohort', async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1)', [JOIN_LOCK_KEY]);
      // FOR UPDATE: a concurrent sweep that would abort this cohort waits for the join, then sees it.
      let row = (await c.query<CohortRow>("SELECT * FROM localrec_cohorts WHERE status = 'forming' AND size = $1 ORDER BY created_at, id LIMIT 1 FOR UPDATE", [this.params.cohortSize])).rows[0];
      if (row) {
        // The same key again while the cohort forms: a join whose answer was lost, retried (see
        // MemoryCohortStore.join): its place and token again, even at the cap.
        const seen = await c.query<{ idx: number; token: string }>('SELECT idx, token FROM localrec_cohort_members WHERE cohort = $1 AND public_key = $2', [row.id, key]);
        if (seen.rowCount) return { cohort: cohortFromRow(row), index: seen.rows[0]!.idx, token: seen.rows[0]!.token };
      }
      // The cap, counted under the join lock (every join of every process waits on it), so that
      // concurrent joins cannot pass it together; nothing is written when it refuses.
      const live = Number((await c.query<{ live: string }>("SELECT COALESCE(SUM(joined), 0) AS live FROM localrec_cohorts WHERE status IN ('forming', 'ready', 'recovering')")).rows[0]!.live);
      if (live >= this.maxMembers) {
        return { error: `the database holds ${live} members of cohorts that have not ended, its most (${this.maxMembers}); retry once cohorts have ended`, busy: true };
      }
      if (!row) {
        row = (
          await c.query<CohortRow>("INSERT INTO localrec_cohorts (id, size, joined, submitted, status, created_at) VALUES ($1, $2, 0, 0, 'forming', $3) RETURNING *", [
            newCohortId(),
            this.params.cohortSize,
            this.now(),
          ])
        ).rows[0]!;
      }
      const token = newMemberToken();
      // The lowest place a member left (see leave), else the next one: with `joined` members present
      // the lowest free index is at most `joined`.
      const free = await c.query<{ idx: number }>(
        'SELECT g AS idx FROM generate_series(0, $2::int) AS g WHERE NOT EXISTS (SELECT 1 FROM localrec_cohort_members WHERE cohort = $1 AND idx = g) ORDER BY g LIMIT 1',
        [row.id, row.joined],
      );
      const index = free.rows[0]!.idx;
      await c.query('INSERT INTO localrec_cohort_members (cohort, idx, public_key, token) VALUES ($1, $2, $3, $4)', [row.id, index, key, token]);
      const full = row.joined + 1 === row.size;
      const updated = (
        await c.query<CohortRow>(
          full ? "UPDATE localrec_cohorts SET joined = joined + 1, status = 'ready', ready_at = $2 WHERE id = $1 RETURNING *" : 'UPDATE localrec_cohorts SET joined = joined + 1 WHERE id = $1 RETURNING *',
          full ? [row.id, this.now()] : [row.id],
        )
      ).rows[0]!;
      return { cohort: cohortFromRow(updated), index, token };
    });
  }

  async leave(id: string, index: number, token: string): Promise<'left' | 'too-late' | 'unknown'> {
    // First one read, outside the join lock that every join of every instance waits on: a leave for
    // no cohort or with a wrong token, or from a cohort that is full or ended, is answered from it.
    // Only the member's own leave of a forming cohort takes the lock (and looks again under it).
    const pre = (
      await this.q<{ status: CohortStatus; ok: boolean | null }>(
        'read a cohort member',
        'SELECT co.status, m.token = $3 AS ok FROM localrec_cohorts co LEFT JOIN localrec_cohort_members m ON m.cohort = co.id AND m.idx = $2 WHERE co.id = $1',
        [id, index, token],
      )
    ).rows[0];
    if (!pre || pre.ok !== true) return 'unknown';
    if (pre.status !== 'forming') return 'too-late';
    return this.tx('leave a cohort', async (c) => {
      // The join lock, then the cohort's row: no join or timeout sees the cohort half left.
      await c.query('SELECT pg_advisory_xact_lock($1)', [JOIN_LOCK_KEY]);
      const co = await c.query<{ status: string }>('SELECT status FROM localrec_cohorts WHERE id = $1 FOR UPDATE', [id]);
      const member = await c.query('SELECT 1 FROM localrec_cohort_members WHERE cohort = $1 AND idx = $2 AND token = $3', [id, index, token]);
      if (!co.rowCount || !member.rowCount) return 'unknown';
      if (co.rows[0]!.status !== 'forming') return 'too-late';
      await c.query('DELETE FROM localrec_cohort_members WHERE cohort = $1 AND idx = $2', [id, index]);
      await c.query('UPDATE localrec_cohorts SET joined = joined - 1 WHERE id = $1', [id]);
      return 'left';
    });
  }

  /** How many cohorts are in each state (`localrec_cohorts` of `--metrics`), over every instance sharing the database. */
  async counts(): Promise<Partial<Record<CohortStatus, number>>> {
    const r = await this.q<{ status: CohortStatus; n: number }>('count cohorts', 'SELECT status, COUNT(*)::int AS n FROM localrec_cohorts GROUP BY status');
    return Object.fromEntries(r.rows.map((row) => [row.status, row.n]));
  }

  async info(id: string): Promise<CohortInfo | undefined> {
    const r = await this.q<CohortRow>('read a cohort', 'SELECT * FROM localrec_cohorts WHERE id = $1', [id]);
    return r.rows[0] && cohortFromRow(r.rows[0]);
  }

  async keys(id: string, members?: readonly number[]): Promise<Map<number, Uint8Array>> {
    const r = members
      ? await this.q<{ idx: number; public_key: Uint8Array }>('read cohort keys', 'SELECT idx, public_key FROM localrec_cohort_members WHERE cohort = $1 AND idx = ANY($2::int[])', [id, [...members]])
      : await this.q<{ idx: number; public_key: Uint8Array }>('read cohort keys', 'SELECT idx, public_key FROM localrec_cohort_members WHERE cohort = $1 ORDER BY idx', [id]);
    return new Map(r.rows.map((row) => [row.idx, new Uint8Array(row.public_key)]));
  }

  async token(id: string, index: number): Promise<string | undefined> {
    const r = await this.q<{ token: string }>('read a member token', 'SELECT token FROM localrec_cohort_members WHERE cohort = $1 AND idx = $2', [id, index]);
    return r.rows[0]?.token;
  }

  markSubmitted(id: string, index: number, updateId: number, sealed?: Uint8Array): Promise<MarkResult> {
    return this.tx('record a cohort upload', async (c) => {
      // The cohort's row first (the lock order of sweep), then the member's.
      const co = await c.query<{ submitted: number; size: number }>("SELECT submitted, size FROM localrec_cohorts WHERE id = $1 AND status = 'ready' FOR UPDATE", [id]);
      if (!co.rowCount) return 'closed';
      const m = await c.query('UPDATE localrec_cohort_members SET update_id = $3, sealed = $4 WHERE cohort = $1 AND idx = $2 AND update_id IS NULL', [
        id,
        index,
        updateId,
        sealed ? Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength) : null,
      ]);
      // Recorded already (a retry of the same upload), as the memory store answers.
      if (!m.rowCount) return 'closed';
      const { submitted, size } = (await c.query<{ submitted: number; size: number }>('UPDATE localrec_cohorts SET submitted = submitted + 1 WHERE id = $1 RETURNING submitted, size', [id])).rows[0]!;
      if (submitted < size) return 'recorded';
      if (!usesSelfMask(this.params)) return 'complete';
      // Dropout recovery: every self-mask must come off, so the full cohort recovers with no one dropped.
      const next = allUploaded(size, this.now());
      await c.query("UPDATE localrec_cohorts SET status = 'recovering', dropped = $2, recovery_at = $3, needed = $4, recovered = 0 WHERE id = $1", [id, next.dropped, next.recoveryAt, next.needed]);
      return 'recorded';
    });
  }

  addConfirmation(id: string, index: number, tags: Uint8Array, round: TagRound = 'confirm'): Promise<'recorded' | 'again' | 'closed' | 'refused'> {
    const col = round === 'confirm' ? 'confirm' : 'ready';
    return this.tx('record confirmations', async (c) => {
      const row = await c.query("SELECT 1 FROM localrec_cohorts WHERE id = $1 AND status = 'recovering' FOR UPDATE", [id]);
      if (!row.rowCount) return 'closed';
      const bytes = Buffer.from(tags.buffer, tags.byteOffset, tags.byteLength);
      const m = await c.query(`UPDATE localrec_cohort_members SET ${col} = $3 WHERE cohort = $1 AND idx = $2 AND update_id IS NOT NULL AND ${col} IS NULL`, [id, index, bytes]);
      if (m.rowCount) return 'recorded';
      // The same tags again (a retry after a lost answer) are taken as given.
      const before = await c.query<{ v: Uint8Array | null }>(`SELECT ${col} AS v FROM localrec_cohort_members WHERE cohort = $1 AND idx = $2`, [id, index]);
      const v = before.rows[0]?.v;
      return v && bytesEqual(new Uint8Array(v), tags) ? 'again' : 'refused';
    });
  }

  async confirmations(id: string, members: readonly number[], round: TagRound = 'confirm'): Promise<Map<number, Uint8Array>> {
    const col = round === 'confirm' ? 'confirm' : 'ready';
    const r = await this.q<{ idx: number; v: Uint8Array }>('read confirmations', `SELECT idx, ${col} AS v FROM localrec_cohort_members WHERE cohort = $1 AND idx = ANY($2::int[]) AND ${col} IS NOT NULL`, [id, [...members]]);
    return new Map(r.rows.map((row) => [row.idx, new Uint8Array(row.v)]));
  }

  async sealedShares(id: string, members: readonly number[]): Promise<Map<number, Uint8Array>> {
    const r = await this.q<{ idx: number; sealed: Uint8Array }>('read sealed shares', 'SELECT idx, sealed FROM localrec_cohort_members WHERE cohort = $1 AND idx = ANY($2::int[]) AND sealed IS NOT NULL', [id, [...members]]);
    return new Map(r.rows.map((row) => [row.idx, new Uint8Array(row.sealed)]));
  }

  addRecovery(id: string, index: number, share: Uint8Array): Promise<RecoveryResult> {
    return this.tx('record a recovery share', async (c) => {
      const row = (await c.query<CohortRow>("SELECT * FROM localrec_cohorts WHERE id = $1 AND status = 'recovering' FOR UPDATE", [id])).rows[0];
      if (!row) return 'closed';
      if (recoveryShareBytes(index, row.size, this.params.degree, row.dropped ?? []) === 0) return 'refused';
      const m = await c.query('UPDATE localrec_cohort_members SET share = $3 WHERE cohort = $1 AND idx = $2 AND update_id IS NOT NULL AND share IS NULL', [
        id,
        index,
        Buffer.from(share.buffer, share.byteOffset, share.byteLength),
      ]);
      if (!m.rowCount) {
        const before = await c.query<{ share: Uint8Array | null }>('SELECT share FROM localrec_cohort_members WHERE cohort = $1 AND idx = $2', [id, index]);
        const v = before.rows[0]?.share;
        return v && bytesEqual(new Uint8Array(v), share) ? 'again' : 'refused';
      }
      const r = (await c.query<{ recovered: number; needed: number }>('UPDATE localrec_cohorts SET recovered = recovered + 1 WHERE id = $1 RETURNING recovered, needed', [id])).rows[0]!;
      return r.recovered === r.needed ? 'complete' : 'recorded';
    });
  }

  async recoveryShares(id: string): Promise<Map<number, Uint8Array>> {
    const r = await this.q<{ idx: number; share: Uint8Array }>('read recovery shares', 'SELECT idx, share FROM localrec_cohort_members WHERE cohort = $1 AND share IS NOT NULL', [id]);
    return new Map(r.rows.map((row) => [row.idx, new Uint8Array(row.share)]));
  }

  async finish(id: string, version: number): Promise<void> {
    await this.q('finish a cohort', "UPDATE localrec_cohorts SET status = 'done', published = $2, ended_at = $3 WHERE id = $1 AND status IN ('ready', 'recovering')", [id, version, this.now()]);
  }

  sweep(publishing?: ReadonlySet<string>): Promise<SweepResult> {
    const t = this.now();
    return this.tx('end timed-out cohorts', async (c) => {
      const { fillMs, uploadMs } = this.timeouts;
      // A cohort whose uploads went into a version but that was never marked done (the process
      // died between the publish and cohorts.finish(), which are two transactions): done now, with
      // that version, so that its members see it end and its rows are cleaned up in an hour. First,
      // so that the deadlines below never take such a cohort for one that could not be published.
      await c.query(
        `UPDATE localrec_cohorts AS co SET status = 'done', published = pub.v, ended_at = $1
           FROM (SELECT m.cohort, MAX(u.aggregated_into) AS v FROM localrec_cohort_members m JOIN localrec_updates u ON u.id = m.update_id
                  WHERE u.aggregated_into IS NOT NULL GROUP BY m.cohort) AS pub
          WHERE co.id = pub.cohort AND co.status IN ('ready', 'recovering')`,
        [t],
      );
      // A full cohort that has every upload is being published, not late; so is a recovering one
      // that has every share: both until PUBLISH_GRACE upload timeouts (collectDeadline, recoveryDeadline).
      const late = await c.query<CohortRow>(
        "SELECT * FROM localrec_cohorts WHERE ((status = 'forming' AND created_at < $1) OR (status = 'ready' AND ready_at < $2 AND (submitted < size OR ready_at < $3)) OR (status = 'recovering' AND recovery_at < $2 AND (recovered < needed OR recovery_at < $3))) AND NOT (id = ANY($4::text[])) ORDER BY id FOR UPDATE",
        [t - fillMs, t - uploadMs, t - PUBLISH_GRACE * uploadMs, [...(publishing ?? [])]],
      );
      const out: SweepResult = { aborted: [] };
      const uploaded = async (id: string) =>
        (await c.query<{ idx: number; update_id: string }>('SELECT idx, update_id FROM localrec_cohort_members WHERE cohort = $1 AND update_id IS NOT NULL', [id])).rows;
      for (const row of late.rows) {
        const info = cohortFromRow(row);
        const members = await uploaded(row.id);
        let reason = timeoutReason(info, row.status === 'forming' ? fillMs : row.status === 'recovering' ? recoveryDeadline(info, uploadMs) : collectDeadline(info, uploadMs));
        if (row.status === 'ready' && row.submitted < row.size) {
          const next = afterCollectTimeout(info, members.map((m) => m.idx), this.params, uploadMs, t);
          if (next.status === 'recovering') {
            await c.query("UPDATE localrec_cohorts SET status = 'recovering', dropped = $2, recovery_at = $3, needed = $4, recovered = 0 WHERE id = $1", [row.id, next.dropped, t, next.needed]);
            continue;
          }
          reason = next.abortReason!;
        }
        // Its uploads can never be unmasked: deleted in this transaction, so that a crash (or a failed
        // clean-up afterwards) cannot leave them pending with no open cohort to look at them again.
        // Every upload with this cohort's nonce prefix goes, also one its cohort never recorded.
        // (starts_with, not a range on the nonce: a range follows the database's collation, under
        // which ';' may sort before ':' (ICU, glibc's en_US), and would then match nothing.)
        // First, before the cohort is marked: a publish of this cohort under way (another process's,
        // or this one's begun before its id was in `publishing`) holds these rows, and the delete
        // waits for it to end; once it has committed the rows are aggregated, and the cohort is
        // done with that version, not aborted.
        await c.query('DELETE FROM localrec_updates WHERE aggregated_into IS NULL AND (id = ANY($1::bigint[]) OR starts_with(nonce, $2))', [members.map((m) => m.update_id), `${row.id}:`]);
        // (Its recorded uploads alone: a publish rewrites an aggregated row's nonce, and a forming
        // cohort has none. By primary key: a scan of the nonces would read every update ever kept.)
        const v = members.length === 0 ? null : (await c.query<{ v: string | null }>('SELECT MAX(aggregated_into) AS v FROM localrec_updates WHERE id = ANY($1::bigint[])', [members.map((m) => m.update_id)])).rows[0]?.v;
        if (v !== null && v !== undefined) {
          await c.query("UPDATE localrec_cohorts SET status = 'done', published = $2, ended_at = $3 WHERE id = $1", [row.id, Number(v), t]);
          continue;
        }
        await c.query("UPDATE localrec_cohorts SET status = 'aborted', reason = $2, ended_at = $3 WHERE id = $1", [row.id, reason, t]);
        out.aborted.push({ id: row.id, reason, updateIds: members.map((m) => Number(m.update_id)) });
      }
      // Measured from the end (see endOf in cohorts.ts: rows an older server ended have no ended_at).
      await c.query("DELETE FROM localrec_cohorts WHERE status IN ('done', 'aborted') AND COALESCE(ended_at, recovery_at, ready_at, created_at) < $1", [t - KEEP_ENDED_MS]);
      return out;
    });
  }
}
