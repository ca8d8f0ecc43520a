/**
 * SQLite {@link Storage} on better-sqlite3 (12.x; 13 crashes on Node 20), one file under the data
 * directory, WAL journal with `synchronous = FULL`, so a commit is on disk before `addUpdate`
 * resolves and a `kill -9` (or power loss) at any moment leaves either the whole transaction or
 * none of it.
 *
 * Aggregated updates keep their base version, the version they went into and (a plain update's)
 * nonce, against replays; their body and arrival time are dropped, and a masked upload's
 * `cohort:member` nonce replaced: the average is what the server needs, and keeping individual
 * noised updates, or when and from which member they came, longer than a round would only be a
 * liability. `secure_delete` keeps the dropped bodies out of the file's free pages, and a
 * checkpoint that truncates the WAL after every publish and discard ({@link SqliteStorage.checkpoint})
 * keeps them out of `localrec.sqlite-wal`, whose frames still hold each body as it was written. A
 * write that fails for want of disk space is followed by one too, which gives the room the WAL held
 * back to the next attempt.
 *
 * Each publish also drops older versions' optimizer state and models past `keepModels`
 * ({@link VersionRetentionOptions}) in its transaction: the pages they held are zeroed (`secure_delete`)
 * onto the free list and reused by the next versions, so the file stops growing by a model (and
 * a FedAdam state) per round, without a VACUUM.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type Database from 'better-sqlite3';
import { StorageError } from '../errors.js';
import { makeOutputFolder } from '../output-file.js';
import { UPDATE_BUDGET_BYTES } from '../federated/wire.js';
import { averagedNonceSql, checkNextVersion, isDiskFull, keepModelsOf, pendingFromRow, PRUNE_BATCH_VERSIONS, prunedBelow, refFromRow, StorageConflictError, versionFromRow, versionParams, type NewUpdate, type PendingRef, type PendingUpdate, type VersionRetentionOptions, type Storage, type StoredVersion, type UpdateRow, type VersionRow } from './storage.js';

const SCHEMA_VERSION = '1';

let sqliteModule: typeof Database | undefined;
/**
 * better-sqlite3, loaded when a SQLite store is first opened: it is an optional peer dependency (a
 * native module compiled on install), so that a shop using only the browser SDK, or PostgreSQL,
 * does not need it. Its native module is loaded too (by an in-memory database), which
 * better-sqlite3 itself defers to the first database opened: a package whose build never ran is
 * said to be one here, not reported as a failure to lock the data dir.
 */
function sqlite(): typeof Database {
  if (sqliteModule) return sqliteModule;
  let mod: typeof Database;
  try {
    mod = createRequire(import.meta.url)('better-sqlite3') as typeof Database;
    new mod(':memory:').close();
  } catch (e) {
    throw sqliteLoadError(e);
  }
  return (sqliteModule = mod);
}

/** The way out when better-sqlite3 cannot be used; the same words as `npm start`'s (scripts/start.mjs). */
const OR_POSTGRES = '(or serve from PostgreSQL: --database postgres://…)';

/**
 * The StorageError for a failure to load better-sqlite3 (`e`, as `require` or its first database
 * threw it), saying what to do in one line: the package is not installed (MODULE_NOT_FOUND naming
 * it); its native module was never built (its install script did not run, as npm 12 does not run
 * one unless allowed: "Could not locate the bindings file", or MODULE_NOT_FOUND for
 * `better_sqlite3.node`); or it was built for another Node.js (ERR_DLOPEN_FAILED). Anything else
 * is said as it is.
 *
 * @example
 * ```ts
 * sqliteLoadError(new Error('Could not locate the bindings file. Tried: …')).message;
 * // "better-sqlite3 is installed but its native module is not built …: npm rebuild better-sqlite3 …"
 * ```
 */
export function sqliteLoadError(e: unknown): StorageError {
  const err = e as { code?: string; message?: string };
  const message = String(err?.message ?? e);
  if (err?.code === 'MODULE_NOT_FOUND' && /better-sqlite3/.test(message) && !/\.node\b/.test(message)) {
    return new StorageError(`the SQLite store needs the better-sqlite3 package, which is not installed: npm install better-sqlite3@12 ${OR_POSTGRES}`, { cause: e });
  }
  if (/Could not locate the bindings file/.test(message) || (err?.code === 'MODULE_NOT_FOUND' && /better_sqlite3\.node/.test(message))) {
    return new StorageError(
      `better-sqlite3 is installed but its native module is not built (its install script did not run; npm 12 runs it only once allowed): allow it (npm approve-scripts better-sqlite3, or "allowScripts" in package.json), then npm rebuild better-sqlite3 ${OR_POSTGRES}`,
      { cause: e },
    );
  }
  if (err?.code === 'ERR_DLOPEN_FAILED') {
    return new StorageError(`better-sqlite3's native module cannot be loaded (${oneLine(message)}): rebuild it for this Node.js ${process.version}: npm rebuild better-sqlite3 ${OR_POSTGRES}`, { cause: e });
  }
  return new StorageError(`better-sqlite3 could not be loaded: ${oneLine(message)}`, { cause: e });
}

/** A message on one line (a dlopen error breaks its sentence across lines). */
function oneLine(message: string): string {
  return message.replace(/\s*\n\s*/g, ' ').trim();
}

/** Next to the database: the file whose exclusive lock says which process serves the data dir. */
export const LOCK_FILE = 'localrec.lock';

/** The database's file name in a data dir. */
export const SQLITE_FILE = 'localrec.sqlite';

/**
 * Takes the data dir's lock for this process's life: a small SQLite file under `locking_mode =
 * EXCLUSIVE`, written once, so that SQLite holds its exclusive lock until the connection closes.
 * The operating system drops it when the process dies (kill -9 included), and SQLite refuses it to
 * a second connection, in this process or another, at once. Two servers on one data dir would
 * each trust their own pending count and versions and diverge. The database itself stays in
 * ordinary WAL mode, so a reader (a backup, `sqlite3`) can still open it while the server runs.
 */
function takeLock(dir: string): Database.Database {
  const path = join(dir, LOCK_FILE);
  let db: Database.Database | undefined;
  try {
    db = new (sqlite())(path, { timeout: 0 });
    db.pragma('locking_mode = EXCLUSIVE');
    db.exec('CREATE TABLE IF NOT EXISTS holder (k INTEGER PRIMARY KEY, pid INTEGER NOT NULL, since INTEGER NOT NULL)');
    db.prepare('INSERT OR REPLACE INTO holder (k, pid, since) VALUES (1, ?, ?)').run(process.pid, Date.now());
    return db;
  } catch (e) {
    db?.close();
    if ((e as { code?: string }).code === 'SQLITE_BUSY') {
      throw new StorageError(`the data dir ${dir} is in use by another localrec serve (it holds ${path}); stop it first, or give this one another --data-dir`);
    }
    throw new StorageError(`cannot lock the data dir ${dir} (${path}): ${(e as Error).message}`);
  }
}

export interface SqliteStorageOptions extends VersionRetentionOptions {
  /** Test-only fault injection: called inside a transaction, just before it commits. */
  beforeCommit?: (what: 'init' | 'update' | 'publish' | 'probe') => void;
}

/** `n` bytes in words: `12.3 MB`, `456 KB`. */
function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(n / 1e3))} KB`;
}

/** Meta key set once the file was rebuilt (VACUUM) with secure_delete on: no earlier body left in its free pages. */
const VACUUMED_KEY = 'secure-delete-vacuumed';

/**
 * The server's embedded storage (the default of `localrec serve`): one SQLite file in a data dir,
 * every accepted update and every published version written transactionally, the data dir locked
 * against a second process (docs/SERVER.md, "One process: SQLite").
 *
 * @example
 * ```ts
 * const storage = SqliteStorage.open('.data');   // .data/localrec.sqlite
 * ```
 */
export class SqliteStorage implements Storage {
  readonly path: string;
  private db: Database.Database;
  /** The data dir's lock ({@link takeLock}), held until {@link close}. */
  private lock: Database.Database;
  private hooks: SqliteStorageOptions;
  private st!: {
    latest: Database.Statement;
    nonceTaken: Database.Statement;
    hash: Database.Statement;
    insertUpdate: Database.Statement;
    pending: Database.Statement;
    pendingRefs: Database.Statement;
    pendingById: Database.Statement;
    pendingCount: Database.Statement;
    pendingByNonce: Database.Statement;
    maxVersion: Database.Statement;
    insertVersion: Database.Statement;
    averagedRow: Database.Statement;
    deleteUpdate: Database.Statement;
    insertAveraged: Database.Statement;
    discard: Database.Statement;
    probe: Database.Statement;
    unprobe: Database.Statement;
    readMeta: Database.Statement;
    writeMeta: Database.Statement;
    toPrune: Database.Statement;
    pruneRead: Database.Statement;
    pruneDelete: Database.Statement;
  };
  /** {@link VersionRetentionOptions.keepModels}. */
  private readonly keepModels: number;
  /**
   * Set when the last checkpoint could not empty the WAL (a reader held it, or the disk had no room
   * to copy it into the file): tried again before and after the next write.
   */
  private checkpointOwed = false;

  /**
   * Opens (creating if needed) `<dataDir>/localrec.sqlite`, taking the data dir's lock: a second
   * storage on the same data dir, in this process or another, fails with a StorageError until
   * this one is closed. A data dir that cannot be created is a ValidationError on
   * `options.dataDir` naming the folder and the system's reason (`EACCES: permission denied`).
   */
  static open(dataDir: string, options: SqliteStorageOptions = {}): SqliteStorage {
    // A ValidationError naming the option (`--data-dir` on the command line), the folder and the
    // system's reason: each missing folder is made in turn, as a recursive mkdir reports ENOENT
    // for a read-only file system on Node 20.
    makeOutputFolder(dataDir, 'options.dataDir');
    return new SqliteStorage(join(dataDir, SQLITE_FILE), options);
  }

  constructor(path: string, options: SqliteStorageOptions = {}) {
    // The driver first: without it, say so (not as a failure to lock the folder).
    sqlite();
    this.path = path;
    this.hooks = options;
    this.keepModels = keepModelsOf(options);
    this.lock = takeLock(dirname(path));
    let db: Database.Database | undefined;
    try {
      this.db = db = new (sqlite())(path);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.pragma('foreign_keys = ON');
      // Deleted content is overwritten, not left in free pages: an averaged update's body (and a
      // discarded one) must not stay readable in the file or its backups.
      this.db.pragma('secure_delete = ON');
      // The WAL holds every page as it was written, bodies included, until it is overwritten: it is
      // emptied after each publish and discard (checkpoint), and never kept at its largest size.
      this.db.pragma('journal_size_limit = 0');
      this.db.exec(`
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS versions (
          version INTEGER PRIMARY KEY,
          hash TEXT NOT NULL,
          model BLOB NOT NULL,
          optimizer BLOB,
          created_at INTEGER NOT NULL,
          update_count INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS updates (
          id INTEGER PRIMARY KEY AUTOINCREMENT,
          nonce TEXT NOT NULL UNIQUE,
          base_version INTEGER NOT NULL,
          received_at INTEGER NOT NULL,
          body BLOB,
          aggregated_into INTEGER REFERENCES versions(version)
        );
        CREATE INDEX IF NOT EXISTS updates_pending ON updates(id) WHERE aggregated_into IS NULL;
      `);
      const v = this.db.prepare('SELECT value FROM meta WHERE key = ?').get('schema') as { value: string } | undefined;
      if (!v) this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('schema', SCHEMA_VERSION);
      else if (v.value !== SCHEMA_VERSION) throw new StorageError(`${path}: schema version ${v.value}, this server knows ${SCHEMA_VERSION}`);
      // Written by earlier releases: averaged updates' arrival times and `cohort:member` nonces
      // (now cleared as they are averaged), and, in the file's free pages, the bodies they deleted
      // before secure_delete: cleared, and the file rebuilt without free pages. A release without
      // secure_delete that ran on this file since the last rebuild (a rollback, then this upgrade
      // again) left such rows too: the marker goes with them, in one transaction, so that a rebuild
      // that fails (for want of disk space) is tried again at the next start.
      this.db.transaction(() => {
        const cleared = this.db
          .prepare(`UPDATE updates SET received_at = 0, nonce = ${averagedNonceSql('instr')} WHERE aggregated_into IS NOT NULL AND (received_at <> 0 OR (instr(nonce, ':') > 0 AND nonce NOT LIKE 'averaged:%'))`)
          .run().changes;
        if (cleared > 0) this.db.prepare('DELETE FROM meta WHERE key = ?').run(VACUUMED_KEY);
      })();
      // Until a VACUUM has succeeded with secure_delete on since then, free pages may hold bodies
      // deleted before.
      if (!this.db.prepare('SELECT 1 FROM meta WHERE key = ?').get(VACUUMED_KEY)) {
        this.rebuild();
        this.db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)').run(VACUUMED_KEY, String(Date.now()));
      }
      this.prepare();
      // A WAL left by a crash may hold bodies averaged since the last checkpoint.
      this.checkpoint();
    } catch (e) {
      if (db?.open) db.close();
      this.lock.close();
      if (e instanceof StorageError) throw e;
      throw new StorageError(`cannot open SQLite database ${path}: ${(e as Error).message}`);
    }
  }

  /**
   * The one-time VACUUM ({@link VACUUMED_KEY}). SQLite writes a copy of the database to its
   * temporary folder (`$SQLITE_TMPDIR`, `$TMPDIR`, else `/var/tmp` or `/tmp`) and then the same
   * pages again to the WAL next to the file: it needs free space of about twice the database's
   * size. A failure says so, and what the rebuild is for, instead of SQLite's bare "database or
   * disk is full".
   */
  private rebuild(): void {
    const size = (this.db.pragma('page_count', { simple: true }) as number) * (this.db.pragma('page_size', { simple: true }) as number);
    try {
      this.db.exec('VACUUM');
    } catch (e) {
      const err = e as { code?: string; message?: string };
      const what = 'the one-time rebuild (VACUUM) that clears update bodies deleted by an earlier release out of the file';
      if (err.code === 'SQLITE_FULL') {
        throw new StorageError(
          `${this.path}: not enough disk space for ${what}: it needs about twice the file's size (${formatBytes(size)}) free, for a copy in the temporary folder ($SQLITE_TMPDIR, $TMPDIR or /var/tmp) and one in the write-ahead log next to the file; free the space and start again (${err.message})`,
          { cause: e },
        );
      }
      throw new StorageError(`${this.path}: ${what} failed: ${err.message ?? String(e)}`, { cause: e });
    }
  }

  private prepare(): void {
    const db = this.db;
    this.st = {
      latest: db.prepare('SELECT * FROM versions ORDER BY version DESC LIMIT 1'),
      hash: db.prepare('SELECT hash FROM versions WHERE version = ?'),
      nonceTaken: db.prepare('SELECT 1 FROM updates WHERE nonce = ?'),
      insertUpdate: db.prepare(
        'INSERT INTO updates (nonce, base_version, received_at, body) VALUES (?, ?, ?, ?) ON CONFLICT (nonce) DO NOTHING',
      ),
      pending: db.prepare('SELECT id, nonce, base_version, received_at, body FROM updates WHERE aggregated_into IS NULL ORDER BY id'),
      pendingRefs: db.prepare('SELECT id, nonce, base_version, received_at FROM updates WHERE aggregated_into IS NULL ORDER BY id'),
      pendingById: db.prepare('SELECT id, nonce, base_version, received_at, body FROM updates WHERE id = ? AND aggregated_into IS NULL'),
      pendingCount: db.prepare('SELECT COUNT(*) AS n FROM updates WHERE aggregated_into IS NULL'),
      pendingByNonce: db.prepare('SELECT id, nonce, base_version, received_at, body FROM updates WHERE nonce = ? AND aggregated_into IS NULL'),
      maxVersion: db.prepare('SELECT MAX(version) AS v FROM versions'),
      insertVersion: db.prepare(
        'INSERT INTO versions (version, hash, model, optimizer, created_at, update_count) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      // Averaged: the body goes, the arrival time too, and a masked upload's nonce (`cohort:member`)
      // becomes one that names neither (the cohort refuses uploads once it ends; a plain update's
      // random nonce is kept, against replays). The row as it stays, then deleted and inserted
      // so (see prune()).
      averagedRow: db.prepare(`SELECT id, ${averagedNonceSql('instr')} AS nonce, base_version FROM updates WHERE id = ? AND aggregated_into IS NULL`),
      deleteUpdate: db.prepare('DELETE FROM updates WHERE id = ?'),
      insertAveraged: db.prepare('INSERT INTO updates (id, nonce, base_version, received_at, body, aggregated_into) VALUES (?, ?, ?, 0, NULL, ?)'),
      discard: db.prepare('DELETE FROM updates WHERE id = ? AND aggregated_into IS NULL'),
      // (TEXT affinity leaves a blob a blob.)
      probe: db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('write-probe', zeroblob(?))"),
      unprobe: db.prepare("DELETE FROM meta WHERE key = 'write-probe'"),
      readMeta: db.prepare('SELECT value FROM meta WHERE key = ?'),
      writeMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
      // Versions older than `next` that hold an optimizer state, or a model while at most `cut`;
      // at most `batch`, newest first. (length() of a blob reads its size, not its overflow pages.)
      toPrune: db.prepare(
        `SELECT version FROM versions WHERE version >= @floor AND version < @next AND (optimizer IS NOT NULL OR (version <= @cut AND length(model) > 0))
         ORDER BY version DESC LIMIT @batch`,
      ),
      // The row as it stays: the model only when it is kept (an empty blob otherwise: the column is NOT NULL).
      pruneRead: db.prepare(`SELECT version, hash, CASE WHEN version <= @cut THEN x'' ELSE model END AS model, created_at, update_count FROM versions WHERE version = @version`),
      pruneDelete: db.prepare('DELETE FROM versions WHERE version = ?'),
    };
  }

  /**
   * Copies the WAL into the database file and truncates it to nothing, so that the frames that held
   * an averaged or discarded body (the WAL keeps every page as it was written) are gone from the
   * WAL, and the pages `secure_delete` zeroed replace the old ones in the file. SQLite's checkpoint
   * is crash-safe (the file is synced before the WAL is truncated). It does not wait: a reader in
   * the middle of a read (a backup, `sqlite3`) keeps the frames it may still read, and the
   * checkpoint is tried again before and after the next write. It never fails a write that has
   * committed. On a disk with no room left to copy the WAL into the file it fails, and is likewise
   * tried again before the next write.
   */
  private checkpoint(): void {
    const timeout = this.db.pragma('busy_timeout', { simple: true }) as number;
    try {
      this.db.pragma('busy_timeout = 0');
      const [r] = this.db.pragma('wal_checkpoint(TRUNCATE)') as Array<{ busy: number; log: number; checkpointed: number }>;
      this.checkpointOwed = !r || r.busy !== 0 || r.log !== 0;
    } catch {
      this.checkpointOwed = true;
    } finally {
      this.db.pragma(`busy_timeout = ${timeout}`);
    }
  }

  private wrap<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      // A write that failed for want of room (rolled back by now) leaves the WAL as long as it got:
      // its own frames, and those of every write committed since the last checkpoint. Emptied, so
      // that the next attempt (a publish retried once a second) has that room again, rather than
      // each attempt and each write between them taking a little more of what an operator frees.
      // On a disk too full to copy the committed frames into the file this fails too, and is tried
      // again before the next write (checkpointOwed).
      if (isDiskFull(e)) this.checkpoint();
      if (e instanceof StorageError) throw e;
      throw new StorageError(`SQLite ${what} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  async latest(): Promise<StoredVersion | undefined> {
    return this.wrap('read latest version', () => {
      const r = this.st.latest.get() as VersionRow | undefined;
      return r ? versionFromRow(r) : undefined;
    });
  }

  async versionHash(version: number): Promise<string | undefined> {
    return this.wrap('read version hash', () => (this.st.hash.get(version) as { hash: string } | undefined)?.hash);
  }

  async addUpdate(u: NewUpdate): Promise<{ id: number } | 'replayed'> {
    // Before the write too: once an operator frees room on a full disk, the checkpoint that could
    // not run for want of it (the WAL's committed frames copied into the file, which may grow) must
    // have it first; then the WAL's room is free again. Taken by this write, it would not be.
    if (this.checkpointOwed) this.checkpoint();
    const stored = this.wrap('store update', () =>
      this.db.transaction(() => {
        // Looked up first: an INSERT that conflicts still uses up an AUTOINCREMENT id, and update
        // ids run 1, 2, … over the updates taken (protocol.md), with no gap for a refused one.
        if (this.st.nonceTaken.get(u.nonce) !== undefined) return 'replayed' as const;
        const r = this.st.insertUpdate.run(u.nonce, u.baseVersion, u.receivedAt, Buffer.from(u.body.buffer, u.body.byteOffset, u.body.byteLength));
        if (r.changes === 0) return 'replayed' as const;
        this.hooks.beforeCommit?.('update');
        return { id: Number(r.lastInsertRowid) };
      })(),
    );
    if (this.checkpointOwed) this.checkpoint();
    return stored;
  }

  async pending(): Promise<PendingUpdate[]> {
    return this.wrap('read pending updates', () =>
      (this.st.pending.all() as UpdateRow[]).map(pendingFromRow),
    );
  }

  async pendingRefs(): Promise<PendingRef[]> {
    return this.wrap('read pending updates', () => (this.st.pendingRefs.all() as Array<Omit<UpdateRow, 'body'>>).map(refFromRow));
  }

  async pendingByIds(ids: readonly number[]): Promise<PendingUpdate[]> {
    // One read transaction: the rows as of one moment, as pending() reads them.
    return this.wrap('read pending updates', () =>
      this.db.transaction(() => ids.flatMap((id) => {
        const r = this.st.pendingById.get(id) as UpdateRow | undefined;
        return r ? [pendingFromRow(r)] : [];
      }))(),
    );
  }

  async pendingByNonce(nonce: string): Promise<PendingUpdate | undefined> {
    return this.wrap('read a pending update', () => {
      const r = this.st.pendingByNonce.get(nonce) as UpdateRow | undefined;
      return r ? pendingFromRow(r) : undefined;
    });
  }

  async pendingCount(): Promise<number> {
    return this.wrap('count pending updates', () => (this.st.pendingCount.get() as { n: number }).n);
  }

  async discard(ids: readonly number[]): Promise<void> {
    if (this.checkpointOwed) this.checkpoint();
    this.wrap('discard updates', () =>
      this.db.transaction(() => {
        for (const id of ids) this.st.discard.run(id);
      })(),
    );
    this.checkpoint();
  }

  async publish(next: StoredVersion, consumed: readonly number[]): Promise<void> {
    // The WAL emptied first (the updates committed since the last publish go into the file): a
    // publish writes more than any other transaction (the new model, each averaged body zeroed), and
    // on a nearly full disk its frames must not stack on theirs. After a publish failed for want of
    // space this is what gives the retry the room freed meanwhile, before the retry's own frames
    // take it (the checkpoint after the failure may have found none to copy the WAL into the file).
    this.checkpoint();
    this.wrap('publish version', () => {
      // Off for this transaction (it cannot change inside one): the prune deletes and re-inserts
      // versions that `updates` rows refer to, which with foreign keys on fails (the reference is
      // checked at the end of the DELETE, before the row is back) and would scan `updates` (no
      // index on aggregated_into) for every version pruned. The re-inserts spell out every column:
      // a column added to `versions` or `updates` must be added to them. (Every row this transaction writes
      // refers to `next`, inserted first.) Nothing else runs on this connection meanwhile
      // (better-sqlite3 is synchronous).
      this.db.pragma('foreign_keys = OFF');
      let floor: number | undefined;
      try {
        this.db.transaction(() => {
          checkNextVersion((this.st.maxVersion.get() as { v: number | null }).v, next.version);
          this.st.insertVersion.run(...versionParams(next));
          for (const id of consumed) {
            const u = this.st.averagedRow.get(id) as { id: number; nonce: string; base_version: number } | undefined;
            if (!u) throw new StorageConflictError(`update ${id} is not pending`);
            this.st.deleteUpdate.run(id);
            this.st.insertAveraged.run(u.id, u.nonce, u.base_version, next.version);
          }
          // In this transaction: a crash leaves the older versions pruned and `next` published, or neither.
          floor = this.prune(next.version);
          this.hooks.beforeCommit?.(next.version === 0 ? 'init' : 'publish');
        })();
        // Committed: the versions below it need nothing more.
        if (floor !== undefined) this.pruneFloor = Math.max(this.pruneFloor, floor);
      } finally {
        this.db.pragma('foreign_keys = ON');
      }
    });
    this.checkpoint();
  }

  /**
   * Drops what no reader needs of the versions before `next` ({@link VersionRetentionOptions}), at most
   * {@link PRUNE_BATCH_VERSIONS} of them. Each row is deleted and inserted again without its
   * state (and model), not updated: SQLite rebalances a page a delete leaves underfull, never one
   * an update shrinks, so updated rows would each keep the leaf page their model's first bytes
   * filled (a 4 KB page a round, for good); deleted, they end up dozens to a page. An averaged
   * update's row likewise (its body's first bytes filled a page: 4 KB per averaged update).
   */
  private prune(next: number): number | undefined {
    const cut = next - this.keepModels;
    const versions = (this.st.toPrune.all({ next, cut, batch: PRUNE_BATCH_VERSIONS, floor: this.pruneFloor }) as Array<{ version: number }>).map((r) => r.version);
    for (const version of versions) {
      const r = this.st.pruneRead.get({ version, cut }) as Omit<VersionRow, 'optimizer'>;
      this.st.pruneDelete.run(version);
      this.st.insertVersion.run(r.version, r.hash, r.model, null, r.created_at, r.update_count);
    }
    return prunedBelow(versions.length, cut);
  }

  /**
   * Below this version every row is pruned (as far as this process knows: it starts at 0), so that
   * each publish's search for what to prune reads `keepModels` rows, not every version ever
   * published (60–80 ms a publish at 500,000 versions, a review measured).
   */
  private pruneFloor = 0;

  async readMeta(key: string): Promise<string | undefined> {
    return this.wrap('read a setting', () => (this.st.readMeta.get(key) as { value: string } | undefined)?.value);
  }

  async writeMeta(key: string, value: string): Promise<void> {
    this.wrap('store a setting', () => void this.st.writeMeta.run(key, value));
  }

  async writeMetaIf(key: string, value: string, when: (stored: string | undefined) => boolean): Promise<{ stored: string | undefined; written: boolean }> {
    // One IMMEDIATE transaction (the write lock from the start), synchronous: the read and the
    // write see no other writer between them.
    return this.wrap('store a setting', () =>
      this.db
        .transaction(() => {
          const stored = (this.st.readMeta.get(key) as { value: string } | undefined)?.value;
          const written = when(stored);
          if (written) this.st.writeMeta.run(key, value);
          return { stored, written };
        })
        .immediate(),
    );
  }

  /**
   * Whether the store takes writes again (for `/v1/health` after a failed write): writes an
   * update-sized row and deletes it in one transaction, which needs the room an upload needs (fresh
   * pages, then WAL frames at commit) and fails as an upload would on a full disk or read-only file.
   */
  async probeWrite(): Promise<void> {
    // (As addUpdate: the room freed goes to an owed checkpoint first.)
    if (this.checkpointOwed) this.checkpoint();
    this.wrap('probe a write', () =>
      this.db.transaction(() => {
        this.st.probe.run(UPDATE_BUDGET_BYTES);
        this.st.unprobe.run();
        this.hooks.beforeCommit?.('probe');
      })(),
    );
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
    // Only once the database is closed may another process take the data dir.
    if (this.lock.open) this.lock.close();
  }
}
