/**
 * PostgreSQL {@link Storage} on node-postgres (`pg`), for several `localrec serve` processes behind
 * a load balancer sharing one database. Same tables and contract as the SQLite adapter:
 *
 * - `addUpdate` is one autocommitted `INSERT … ON CONFLICT (nonce) DO NOTHING`: with PostgreSQL's
 *   default `synchronous_commit = on` it is on disk before the HTTP ack;
 * - `publish` runs in one transaction that first takes a transaction-scoped advisory lock, so two
 *   processes publishing at once queue up; the second finds the version taken (or its updates
 *   consumed) and fails with {@link StorageConflictError}, rolling back everything it wrote;
 * - the schema is created under the same lock, so processes starting together do not race.
 *
 * Aggregated updates keep their nonce (replay protection), base version and arrival time; their body
 * is dropped once averaged, as in SQLite.
 */
import pg from 'pg';
import { StorageError } from '../errors.js';
import { checkNextVersion, pendingFromRow, StorageConflictError, versionFromRow, versionParams, type NewUpdate, type PendingUpdate, type Storage, type StoredVersion, type UpdateRow, type VersionRow } from './storage.js';

const SCHEMA_VERSION = '1';
/** Key of the advisory lock that serializes schema creation and publishing ('lrec' in ASCII). */
const LOCK_KEY = 0x6c726563;

export interface PostgresStorageOptions {
  /** Connections in the pool (default 4; the round coordinator runs one state change at a time). */
  maxConnections?: number;
  /**
   * Longest a statement may run, lock waits included, before PostgreSQL cancels it (default
   * 30,000 ms): a stuck peer holding the publish lock then costs a 503 and a retry, not a hung server.
   */
  statementTimeoutMs?: number;
  /** Test-only fault injection: called inside the publish transaction, just before it commits. */
  beforeCommit?: (what: 'init' | 'publish') => void | Promise<void>;
}

/** The URL with its password replaced, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
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

  private constructor(
    private readonly pool: pg.Pool,
    url: string,
    private readonly hooks: PostgresStorageOptions,
  ) {
    this.url = redactUrl(url);
  }

  /** Connects, checks the server answers, and creates the tables when missing. */
  static async open(url: string, options: PostgresStorageOptions = {}): Promise<PostgresStorage> {
    if (!isPostgresUrl(url)) throw new StorageError(`not a PostgreSQL URL (postgres://user@host:port/database): ${redactUrl(url)}`);
    const max = options.maxConnections ?? 4;
    if (!Number.isInteger(max) || max < 1) throw new StorageError(`maxConnections must be an integer ≥ 1, got ${max}`);
    const timeout = options.statementTimeoutMs ?? 30_000;
    if (!Number.isInteger(timeout) || timeout < 1) throw new StorageError(`statementTimeoutMs must be an integer ≥ 1, got ${timeout}`);
    const pool = new pg.Pool({ connectionString: url, max, connectionTimeoutMillis: 10_000, statement_timeout: timeout });
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
        `);
        const v = await c.query<{ value: string }>('SELECT value FROM localrec_meta WHERE key = $1', ['schema']);
        if (v.rowCount === 0) await c.query('INSERT INTO localrec_meta (key, value) VALUES ($1, $2)', ['schema', SCHEMA_VERSION]);
        else if (v.rows[0]!.value !== SCHEMA_VERSION) throw new StorageError(`${s.url}: schema version ${v.rows[0]!.value}, this server knows ${SCHEMA_VERSION}`);
      });
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw e;
    }
    return s;
  }

  private fail(what: string, e: unknown): never {
    if (e instanceof StorageError) throw e;
    throw new StorageError(`PostgreSQL ${what} failed (${this.url}): ${(e as Error).message}`, { cause: e });
  }

  private async q<R extends pg.QueryResultRow>(what: string, sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(sql, params);
    } catch (e) {
      this.fail(what, e);
    }
  }

  /** Runs `fn` in a transaction on one connection; rolls back on any error. */
  private async tx<T>(what: string, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      this.fail(what, e);
    }
    try {
      await client.query('BEGIN');
      const out = await fn(client);
      await client.query('COMMIT');
      return out;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => undefined);
      this.fail(what, e);
    } finally {
      client.release();
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

  async pendingCount(): Promise<number> {
    const r = await this.q<{ n: string }>('count pending updates', 'SELECT COUNT(*) AS n FROM localrec_updates WHERE aggregated_into IS NULL');
    return Number(r.rows[0]!.n);
  }

  async discard(ids: readonly number[]): Promise<void> {
    if (ids.length === 0) return;
    await this.q('discard updates', 'DELETE FROM localrec_updates WHERE id = ANY($1::bigint[]) AND aggregated_into IS NULL', [ids.map(String)]);
  }

  async publish(next: StoredVersion, consumed: readonly number[]): Promise<void> {
    await this.tx('publish version', async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
      checkNextVersion((await c.query<{ v: number | null }>('SELECT MAX(version) AS v FROM localrec_versions')).rows[0]!.v, next.version);
      await c.query('INSERT INTO localrec_versions (version, hash, model, optimizer, created_at, update_count) VALUES ($1, $2, $3, $4, $5, $6)', versionParams(next));
      if (consumed.length > 0) {
        const r = await c.query('UPDATE localrec_updates SET aggregated_into = $1, body = NULL WHERE id = ANY($2::bigint[]) AND aggregated_into IS NULL', [
          next.version,
          consumed.map(String),
        ]);
        const distinct = new Set(consumed).size;
        if (distinct !== consumed.length || r.rowCount !== distinct) {
          throw new StorageConflictError(`${consumed.length - (r.rowCount ?? 0)} of the ${consumed.length} updates are no longer pending`);
        }
      }
      await this.hooks.beforeCommit?.(next.version === 0 ? 'init' : 'publish');
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }
}
