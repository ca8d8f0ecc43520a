/**
 * Server faults.
 *
 * Full disk and read-only storage: the tests run as root, where chmod does not stop writes, and no
 * small tmpfs can be mounted here. So the faults are raised inside SQLite itself, on the server's
 * own connection, with the same result codes a real full disk or read-only file gives:
 * - full disk: `PRAGMA max_page_count` caps the file at its current size → SQLITE_FULL
 *   ("database or disk is full"), exactly what SQLite reports on ENOSPC;
 * - read-only: `PRAGMA query_only = ON` → SQLITE_READONLY ("attempt to write a readonly
 *   database"), what a file on a read-only mount or without write permission gives;
 * - at start-up: a data dir below a regular file (ENOTDIR) and a data file that is not SQLite,
 *   through the real `localrec serve` command.
 * Random kill -9: the real `localrec serve` (through tsx) is SIGKILLed at seeded random moments of a
 * stream of concurrent uploads and rounds, restarted on the same data dir each time, and the SQLite
 * file is checked after each kill (every acknowledged update pending with its body or aggregated
 * into a published version; versions contiguous, each one hashing to its recorded hash).
 */
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { toHex } from '../../src/federated/wire.js';
import { Random } from '../../src/model/random.js';
import { SqliteStorage, startServer } from '../../src/server/index.js';
import { checkStore, honestUpdate, IDS, initialTable, post, pull, quiet, spawnServe, type ServeChild } from './server-helpers.js';

const faults: Record<string, number> = {};
const count = (k: string, n = 1) => (faults[k] = (faults[k] ?? 0) + n);
after(() => {
  for (const [k, n] of Object.entries(faults)) process.stdout.write(`# fault ${k}: ${n}\n`);
});

/** A shop-sized table, so that an update (≈ 60 KB) and a model (≈ 270 KB) need fresh pages, as on a real server. */
const BIG = Array.from({ length: 4000 }, (_, i) => `item-${i}`);
const bigTable = () => initialTable(BIG, 16);

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'localrec-rel-server-'));
}
const nonceOf = (body: Uint8Array): string => toHex(body.subarray(64, 80));

/**
 * Caps the file at its current size plus a little and fills it up from the same connection until
 * SQLite answers SQLITE_FULL: from then on every write that needs a page fails as on a full disk.
 */
function fillDisk(db: Database.Database, spare = 0): void {
  db.pragma(`max_page_count = ${(db.pragma('page_count', { simple: true }) as number) + 64}`);
  db.exec('CREATE TABLE IF NOT EXISTS filler (x BLOB)');
  const ins = db.prepare('INSERT INTO filler (x) VALUES (randomblob(?))');
  for (const size of [4000, 1000, 200, 50, 1]) {
    try {
      for (;;) ins.run(size);
    } catch (e) {
      if ((e as { code?: string }).code !== 'SQLITE_FULL') throw e;
    }
  }
  if (spare > 0) db.prepare('DELETE FROM filler WHERE rowid IN (SELECT rowid FROM filler ORDER BY rowid DESC LIMIT ?)').run(spare);
}

/** The operator frees space: the filler goes and the cap is lifted. */
function freeDisk(db: Database.Database): void {
  db.exec('DROP TABLE filler');
  db.pragma('max_page_count = 1073741823');
}

function rawDb(storage: SqliteStorage): Database.Database {
  return (storage as unknown as { db: Database.Database }).db;
}

for (const [kind, fault, heal, pattern] of [
  ['full disk (SQLITE_FULL)', fillDisk, freeDisk, /full/],
  ['read-only database (SQLITE_READONLY)', (db: Database.Database) => db.pragma('query_only = ON'), (db: Database.Database) => db.pragma('query_only = OFF'), /readonly/],
] as const) {
  test(`${kind}: uploads get a clear 503 with a reason, the server keeps serving, /v1/health says it cannot store, and it recovers when storage does`, async () => {
    const dir = tmp();
    const storage = SqliteStorage.open(dir);
    const logged: string[] = [];
    let t = 1_000_000;
    const server = await startServer({ port: 0, storage, initialTable: bigTable(), minClients: 3, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, now: () => t, log: (l) => logged.push(l) });
    const health = async () => {
      const res = await fetch(`${server.url}/v1/health`);
      return { status: res.status, reason: ((await res.json()) as { reason?: string }).reason };
    };
    try {
      const v0 = await pull(server.url);
      for (const s of [1, 2]) assert.equal((await post(server.url, honestUpdate(v0, s))).status, 202);
      count(kind);
      fault(rawDb(storage));
      const refused = [honestUpdate(v0, 3), honestUpdate(v0, 4)];
      for (const b of refused) {
        const r = await post(server.url, b);
        assert.equal(r.status, 503, JSON.stringify(r.json));
        assert.equal(r.json.reason, 'storage-unavailable');
        assert.match(String(r.json.error), /nothing was stored, retry later/);
        // The cause is the operator's to read, in the log; the client never sees the file or the error.
        assert.doesNotMatch(String(r.json.error), pattern);
        assert.ok(!String(r.json.error).includes(dir), 'no data dir in the response');
      }
      assert.ok(logged.some((l) => l.startsWith('storage unavailable on POST /v1/updates: SQLite') && pattern.test(l)), logged.join('\n'));
      // The health check says the server cannot store (a load balancer takes it out), while reads still work.
      assert.deepEqual(await health(), { status: 503, reason: 'storage-unavailable' });
      assert.equal((await pull(server.url)).table.version, 0);
      const cur = (await (await fetch(`${server.url}/v1/rounds/current`)).json()) as { pending: number };
      assert.equal(cur.pending, 2, 'the refused uploads were not counted');
      t += 1500;
      assert.deepEqual(await health(), { status: 503, reason: 'storage-unavailable' }, 'its write probe fails as an upload does');
      heal(rawDb(storage));
      assert.equal((await health()).status, 503, 'no probe due yet');
      t += 1500;
      // The probe succeeds: healthy again without waiting for an upload (none would come through a balancer).
      assert.deepEqual(await health(), { status: 200, reason: undefined });
      // The client retries the very same body: its nonce was never recorded, so it is accepted now.
      const again = await post(server.url, refused[0]!);
      assert.equal(again.status, 202);
      assert.equal(again.json.published, 1, 'the round completes with the retried update');
      assert.equal((await pull(server.url)).table.version, 1);
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('a write probe that succeeds does not clear a write failure recorded while it ran', async () => {
  const dir = tmp();
  const storage = SqliteStorage.open(dir);
  let t = 1_000_000;
  const server = await startServer({ port: 0, storage, initialTable: bigTable(), minClients: 3, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, now: () => t, log: quiet });
  try {
    const v0 = await pull(server.url);
    fillDisk(rawDb(storage));
    assert.equal((await post(server.url, honestUpdate(v0, 1))).status, 503);
    // A probe that started before the next failure and answers after it (a slow round trip).
    let release!: () => void;
    let started = false;
    const gate = new Promise<void>((r) => (release = r));
    storage.probeWrite = async () => {
      started = true;
      await gate;
    };
    t += 1500;
    const checking = fetch(`${server.url}/v1/health`);
    while (!started) await new Promise((r) => setTimeout(r, 5));
    assert.equal((await post(server.url, honestUpdate(v0, 2))).status, 503, 'the disk is still full');
    release();
    assert.equal((await checking).status, 503, 'the newer failure stands');
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('full disk during publish: the update is kept, the round is retried and completes once there is room', async () => {
  const dir = tmp();
  const storage = SqliteStorage.open(dir);
  let t = 1_000_000;
  const server = await startServer({ port: 0, storage, initialTable: bigTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, now: () => t, log: quiet });
  try {
    const v0 = await pull(server.url);
    assert.equal((await post(server.url, honestUpdate(v0, 1))).status, 202);
    const db = rawDb(storage);
    // Room for one more update (≈ 15 pages) but not for a new model version (≈ 70 pages).
    count('full disk during publish');
    fillDisk(db, 24);
    const r = await post(server.url, honestUpdate(v0, 2));
    // Either the update itself no longer fits (503) or it fits and the publish fails: never a 500.
    assert.ok(r.status === 202 || r.status === 503, `status ${r.status}: ${JSON.stringify(r.json)}`);
    assert.equal(r.status, 202, 'the update itself fits');
    assert.equal(r.json.published, null, 'publish failed for lack of room, the update is pending');
    assert.equal((await fetch(`${server.url}/v1/health`)).status, 503, 'the failed publish is a failed write');
    freeDisk(db);
    // While the publish is owed, one upload a second (after the failed attempt) tries it.
    t += 1500;
    const r2 = await post(server.url, honestUpdate(v0, 3));
    assert.equal(r2.status, 202);
    assert.equal(r2.json.published, 1, 'the retried round took all three updates');
    assert.equal((await fetch(`${server.url}/v1/health`)).status, 200, 'the next write that succeeds ends the 503');
    assert.equal((db.prepare('SELECT update_count AS n FROM versions WHERE version = 1').get() as { n: number }).n, 3);
    const pending = (db.prepare('SELECT COUNT(*) AS n FROM updates WHERE aggregated_into IS NULL').get() as { n: number }).n;
    assert.equal(pending, 0, 'every stored update went into version 1');
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---- the real `localrec serve` --------------------------------------------------------------

type Child = ServeChild;

function serve(dataDir: string, catalog: string): Promise<Child> {
  return spawnServe(dataDir, catalog, ['--dim', '4', '--min-clients', '3', '--noise', '0', '--max-staleness', '1000', '--rate-limit', '0']);
}

function catalogFile(dir: string): string {
  const catalog = join(dir, 'catalog.json');
  writeFileSync(catalog, JSON.stringify({ items: IDS.map((id, i) => ({ id, popularity: i })) }));
  return catalog;
}

test('start-up on an unusable data dir: localrec serve exits with one clear line, no stack trace', async () => {
  const dir = tmp();
  try {
    const catalog = catalogFile(dir);
    writeFileSync(join(dir, 'file'), 'x');
    const notDir = await serve(join(dir, 'file', 'data'), catalog).then(
      () => assert.fail('should not start'),
      (e: { stderr: string; code: number }) => e,
    );
    count('unusable data dir at start-up');
    assert.equal(notDir.code, 1);
    // Refused before the store is touched, naming the flag (it was the store's ENOTDIR).
    assert.match(notDir.stderr, /^localrec: ValidationError: --data-dir: '.*file\/data' is under '.*file', which is a file, not a folder\n$/);
    assert.doesNotMatch(notDir.stderr, /\n\s+at /, 'no stack trace');
    writeFileSync(join(dir, 'localrec.sqlite'), Buffer.alloc(4096, 0x5a));
    const corrupt = await serve(dir, catalog).then(
      () => assert.fail('should not start'),
      (e: { stderr: string; code: number }) => e,
    );
    count('unusable data dir at start-up');
    assert.equal(corrupt.code, 1);
    assert.match(corrupt.stderr, /^localrec: StorageError: cannot open SQLite database .*not a database/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});


test('kill -9 at seeded random moments of a stream of uploads and rounds: every acknowledged update survives, every version is whole', async () => {
  const dir = tmp();
  const dataDir = join(dir, 'data');
  const catalog = catalogFile(dir);
  const rng = new Random(Number(process.env.LOCALREC_CRASH_SEED ?? 4242));
  const KILLS = 4;
  const acked = new Set<string>();
  let seed = 10_000;
  try {
    for (let k = 0; k < KILLS; k++) {
      const c = await serve(dataDir, catalog);
      const view = await pull(c.url);
      // The restart finished any round that had enough updates before the kill.
      const cur = (await (await fetch(`${c.url}/v1/rounds/current`)).json()) as { pending: number; version: number };
      assert.ok(cur.pending < 3, `restart ${k}: pending ${cur.pending} < minClients`);
      // A stream of uploads, 4 at a time, killed after a random number of acknowledgements (or a random delay).
      const killAfter = 1 + Math.floor(rng.next() * 12);
      const killAtMs = 20 + Math.floor(rng.next() * 300);
      let killed = false;
      const kill = () => {
        if (!killed) {
          killed = true;
          c.proc.kill('SIGKILL');
        }
      };
      const timer = setTimeout(kill, killAtMs);
      let ackedHere = 0;
      const worker = async () => {
        while (!killed) {
          const body = honestUpdate(view, seed++);
          try {
            const res = await fetch(`${c.url}/v1/updates`, { method: 'POST', body: body as Uint8Array<ArrayBuffer> });
            if (res.status === 202) {
              acked.add(nonceOf(body));
              if (++ackedHere >= killAfter) kill();
            } else assert.fail(`unexpected ${res.status}: ${await res.text()}`);
          } catch (e) {
            if (!killed) throw e; // a connection cut by the kill: that update was not acknowledged
          }
        }
      };
      await Promise.all([worker(), worker(), worker(), worker()]);
      clearTimeout(timer);
      assert.equal((await c.exited).signal, 'SIGKILL');
      count('kill -9 of localrec serve');
      await checkStore(dataDir, acked);
    }
    const last = await serve(dataDir, catalog);
    const round = (await (await fetch(`${last.url}/v1/rounds/current`)).json()) as { version: number; pending: number };
    last.proc.kill('SIGTERM');
    await last.exited;
    const { versions, pending } = await checkStore(dataDir, acked);
    assert.equal(round.version, versions - 1);
    assert.equal(round.pending, pending);
    assert.ok(versions > 1, 'rounds were published along the way');
    process.stdout.write(`# kill -9 stream: ${KILLS} kills, ${acked.size} acknowledged updates, 0 lost, ${versions} versions whole\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
