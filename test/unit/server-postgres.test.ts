/**
 * PostgreSQL storage (`localrec serve --database postgres://…`) against a real PostgreSQL server
 * started for these tests (pg-helpers.ts): the adapter's contract, restarts, and two server
 * processes' worth of coordinators sharing one database without losing or double-counting an update.
 */
import { strict as assert } from 'node:assert';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, test } from 'node:test';
import pg from 'pg';
import { isStorageError, isValidationError } from '../../src/errors.js';
import { encodeMaskedUpdate, type SecAggParams } from '../../src/federated/secagg.js';
import { itemDelta } from '../../src/federated/client-update.js';
import { clipL2, RdpAccountant } from '../../src/federated/dp.js';
import { syncOnce, type FetchLike } from '../../src/federated/sync.js';
import { fromHex } from '../../src/federated/wire.js';
import { createServer, PostgresStorage, startServer } from '../../src/server/index.js';
import { JOIN_LOCK_KEY, QUERY_TIMEOUT_MARGIN_MS, redactUrl } from '../../src/server/postgres-storage.js';
import { rateLimitKeys, takeAll } from '../../src/server/rate-limit.js';
import { KEEP_ENDED_MS, PUBLISH_GRACE, type CohortInfo } from '../../src/server/cohorts.js';
import { StorageConflictError, type Storage } from '../../src/server/storage.js';
import { OFFERS_FLOOR_KEY, RedeemCatalog } from '../../src/server/redeem.js';
import type { OfferCatalog } from '../../src/offers/types.js';
import { createDatabase, postgresUnavailable, startPostgres, withClient, type TestPostgres } from './pg-helpers.js';
import { assertKeptAnHourAfterEnd, DIM, exerciseCohortLeave, exercisePendingReads, honestUpdate, initialTable, IDS, post, pull, quiet, shopperHistory, spawnServe, type ServeChild } from './server-helpers.js';

const skip = postgresUnavailable();
const opts = { port: 0, minClients: 3, noiseMultiplier: 0, rateLimit: false as const, log: quiet };

// No PostgreSQL server needed.
test('redactUrl masks a password given in the query (password, sslpassword) and the TLS key files, as well as in the user info, keeping the rest readable', async () => {
  const cases: Array<[string, string]> = [
    ['postgres://u@db.internal/shop?password=s3cret', 'postgres://u@db.internal/shop?password=***'],
    ['postgres://u:s3cret@db.internal:5432/shop', 'postgres://u:***@db.internal:5432/shop'],
    [
      'postgres://u:s3cret@h:5432/shop?sslmode=require&sslpassword=s3cret&sslkey=/etc/k.pem&sslcert=/etc/c.pem&sslrootcert=/etc/ca.pem&application_name=shop%20a',
      'postgres://u:***@h:5432/shop?sslmode=require&sslpassword=***&sslkey=***&sslcert=***&sslrootcert=***&application_name=shop%20a',
    ],
    // Any spelling node-postgres would read the same: case, a percent-escaped name, the parameter twice.
    ['postgresql://u@h/shop?PASSWORD=s3cret&pass%77ord=s3cret&password=s3cret', 'postgresql://u@h/shop?PASSWORD=***&pass%77ord=***&password=***'],
    ['postgres://u@h/shop?password=s3c#ret', 'postgres://u@h/shop?password=***#***'],
    ['postgres://u@h/shop?sslmode=require', 'postgres://u@h/shop?sslmode=require'],
  ];
  for (const [url, want] of cases) assert.equal(redactUrl(url), want);
  // The same URL in the error of a store that cannot connect (nothing listens on port 1).
  await assert.rejects(PostgresStorage.open('postgres://u@127.0.0.1:1/shop?password=s3cret&sslmode=disable'), (e: unknown) => {
    const m = (e as Error).message;
    return isStorageError(e) && m.includes('postgres://u@127.0.0.1:1/shop?password=***&sslmode=disable') && !m.includes('s3cret');
  });
});

describe('PostgreSQL storage', { skip: skip ?? false }, () => {
  let server: TestPostgres;
  let n = 0;
  /** A fresh database on the test server, so tests do not see each other's tables. */
  const freshDatabase = (): Promise<string> => createDatabase(server, `t${++n}`);

  /** Runs `fn` with two `localrec serve --database` processes (rounds of 3, σ = 0, the test catalog, `extra` flags), stopped after. */
  const withTwoServes = async (database: string, extra: string[], fn: (a: ServeChild, b: ServeChild, dir: string) => Promise<void>): Promise<void> => {
    const dir = mkdtempSync(join(tmpdir(), 'localrec-pg-serve-'));
    const catalog = join(dir, 'catalog.json');
    writeFileSync(catalog, JSON.stringify({ items: IDS.map((id, i) => ({ id, popularity: i })) }));
    // --max-staleness is for plain uploads (serve refuses it with --secure-aggregation).
    const staleness = extra.includes('--secure-aggregation') ? [] : ['--max-staleness', '1000'];
    const flags = ['--database', database, '--dim', String(DIM), '--min-clients', '3', '--noise', '0', ...staleness, '--rate-limit', '0', ...extra];
    const children: ServeChild[] = [];
    try {
      children.push(await spawnServe(join(dir, 'unused-a'), catalog, flags));
      children.push(await spawnServe(join(dir, 'unused-b'), catalog, flags));
      await fn(children[0]!, children[1]!, dir);
    } finally {
      for (const c of children) {
        c.proc.kill('SIGTERM');
        await c.exited;
      }
      rmSync(dir, { recursive: true, force: true });
    }
  };

  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    await server?.stop();
  });

  it('adapter: publish is compare-and-set on the version and on pending updates; nonces stay unique', async () => {
    const s = await PostgresStorage.open(await freshDatabase());
    try {
      const v = (version: number) => ({ version, hash: `h${version}`, model: new Uint8Array([version, 7]), optimizer: version ? new Uint8Array([9]) : null, createdAt: 1_700_000_000_000 + version, updateCount: 0 });
      assert.equal(await s.latest(), undefined);
      await assert.rejects(s.publish(v(1), []), StorageConflictError);
      await s.publish(v(0), []);
      const a = await s.addUpdate({ nonce: 'aa', baseVersion: 0, receivedAt: 1, body: new Uint8Array([1, 2]) });
      const b = await s.addUpdate({ nonce: 'bb', baseVersion: 0, receivedAt: 2, body: new Uint8Array([3]) });
      assert.deepEqual(await s.addUpdate({ nonce: 'aa', baseVersion: 0, receivedAt: 3, body: new Uint8Array([4]) }), 'replayed');
      assert.ok(a !== 'replayed' && b !== 'replayed');
      assert.deepEqual(
        (await s.pending()).map((u) => [u.id, u.nonce, u.baseVersion, u.receivedAt, [...u.body]]),
        [
          [a.id, 'aa', 0, 1, [1, 2]],
          [b.id, 'bb', 0, 2, [3]],
        ],
      );
      await assert.rejects(s.publish(v(1), [a.id, 999]), StorageConflictError);
      await assert.rejects(s.publish(v(1), [a.id, a.id]), StorageConflictError, 'an id twice is refused');
      assert.equal(await s.pendingCount(), 2, 'the failed publishes changed nothing');
      assert.equal((await s.latest())!.version, 0);
      await s.publish(v(1), [a.id]);
      assert.equal(await s.pendingCount(), 1);
      await assert.rejects(s.publish(v(2), [a.id]), StorageConflictError);
      const latest = (await s.latest())!;
      assert.deepEqual([latest.version, latest.hash, [...latest.model], [...latest.optimizer!], latest.createdAt], [1, 'h1', [1, 7], [9], 1_700_000_000_001]);
      assert.equal(await s.versionHash(0), 'h0');
      assert.equal(await s.versionHash(5), undefined);
      await s.discard([b.id, a.id]); // a is aggregated: kept
      assert.equal(await s.pendingCount(), 0);
      assert.deepEqual(await s.addUpdate({ nonce: 'aa', baseVersion: 1, receivedAt: 4, body: new Uint8Array([5]) }), 'replayed', 'an aggregated nonce is still spent');
    } finally {
      await s.close();
    }
  });

  it('writeMetaIf is a compare-and-set across processes: concurrent raises from two stores end at the highest, also on a key not there yet', async () => {
    const database = await freshDatabase();
    const [a, b] = await Promise.all([PostgresStorage.open(database), PostgresStorage.open(database)]);
    try {
      const raise = (n: number) => (stored: string | undefined) => stored === undefined || Number(stored) < n;
      // 40 raises, odd ones through one store and even ones through the other, all at once; the first ones race to insert the row.
      const order = Array.from({ length: 40 }, (_, i) => ((i * 17) % 40) + 1);
      const results = await Promise.all(order.map((n) => (n % 2 ? a : b).writeMetaIf('race', String(n), raise(n))));
      assert.equal(await a.readMeta('race'), '40');
      // Each write saw what it replaced: a value it raised, never one written after it.
      for (const [i, r] of results.entries()) if (r.written) assert.ok(r.stored === undefined || Number(r.stored) < order[i]!, JSON.stringify(r));
      assert.equal(results.filter((r) => r.written && r.stored === undefined).length, 1, 'one insert');
      assert.deepEqual(await b.writeMetaIf('race', '7', raise(7)), { stored: '40', written: false });
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('the offer catalog floor on a shared database: an older start is refused, and two processes reloading at once never lower it', async () => {
    const database = await freshDatabase();
    const NOW = Date.UTC(2026, 10, 1);
    const v = (version: number): OfferCatalog => ({ version, issuedAt: NOW, currency: 'GBP', offers: [{ id: 'a', title: 'A', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'all' } }] });
    const start = (c: OfferCatalog | RedeemCatalog) => createServer({ database, initialTable: initialTable(), offers: c, rateLimit: false, now: () => NOW, log: quiet });
    await (await start(v(5))).storage.close();
    await assert.rejects(start(v(4)), (e: unknown) => isValidationError(e) && /version 4 .* older than version 5/.test(e.message));
    const A = new RedeemCatalog(v(5));
    const B = new RedeemCatalog(v(5));
    const pa = await start(A);
    const pb = await start(B);
    try {
      // A has the new file (v9), B a stale one (v8), both reloaded at once; reads and writes are
      // slow, so that a read-then-write would have both read 5, then B write 8 over A's 9.
      const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
      const slow = (storage: Storage, readMs: number, writeMs: number) =>
        Object.assign(Object.create(storage) as Storage, {
          readMeta: async (k: string) => (await sleep(readMs), storage.readMeta!(k)),
          writeMeta: async (k: string, value: string) => (await sleep(writeMs), storage.writeMeta!(k, value)),
          writeMetaIf: (k: string, value: string, when: (stored: string | undefined) => boolean) => storage.writeMetaIf!(k, value, when),
        });
      const [ra, rb] = await Promise.allSettled([A.install(v(9), slow(pa.storage, 0, 100)), B.install(v(8), slow(pb.storage, 20, 300))]);
      assert.equal(ra.status, 'fulfilled');
      // B is refused when it came second; either way the floor is the newest.
      if (rb.status === 'rejected') assert.match(String(rb.reason), /version 8 .* older than version 9/);
      assert.equal(JSON.parse((await pa.storage.readMeta!(OFFERS_FLOOR_KEY))!).version, 9);
      await assert.rejects(start(v(8)), /version 8 .* older than version 9/);
    } finally {
      await Promise.all([pa.storage.close(), pb.storage.close()]);
    }
  });

  it('the write probe behind /v1/health writes an update-sized row and leaves nothing behind', async () => {
    const database = await freshDatabase();
    const s = await PostgresStorage.open(database);
    const db = new pg.Client({ connectionString: database });
    await db.connect();
    try {
      const before = (await db.query("SELECT count(*)::int AS n FROM localrec_meta")).rows[0].n;
      await s.probeWrite!();
      await s.probeWrite!();
      assert.equal((await db.query("SELECT count(*)::int AS n FROM localrec_meta")).rows[0].n, before);
      assert.equal((await db.query("SELECT count(*)::int AS n FROM localrec_meta WHERE key LIKE 'write-probe%'")).rows[0].n, 0);
    } finally {
      await db.end();
      await s.close();
    }
  });

  it('reads the pending updates a few at a time (pendingRefs, pendingByIds), as the memory and SQLite stores do', async () => {
    const s = await PostgresStorage.open(await freshDatabase());
    try {
      await exercisePendingReads(s);
    } finally {
      await s.close();
    }
  });

  it('a publish stuck behind another holder of the lock fails after the statement timeout, changing nothing', async () => {
    const database = await freshDatabase();
    const s = await PostgresStorage.open(database, { statementTimeoutMs: 300 });
    const holder = new pg.Client({ connectionString: database });
    await holder.connect();
    try {
      await s.publish({ version: 0, hash: 'h0', model: new Uint8Array([0]), optimizer: null, createdAt: 0, updateCount: 0 }, []);
      const u = await s.addUpdate({ nonce: 'cc', baseVersion: 0, receivedAt: 1, body: new Uint8Array([1]) });
      assert.ok(u !== 'replayed');
      await holder.query('SELECT pg_advisory_lock($1)', [0x6c726563]); // a peer stuck inside publish
      await assert.rejects(
        s.publish({ version: 1, hash: 'h1', model: new Uint8Array([1]), optimizer: null, createdAt: 1, updateCount: 1 }, [u.id]),
        (e: unknown) => isStorageError(e) && !(e instanceof StorageConflictError) && /PostgreSQL publish version failed .*statement timeout/.test((e as Error).message),
      );
      assert.equal((await s.latest())!.version, 0);
      assert.equal(await s.pendingCount(), 1);
      await holder.query('SELECT pg_advisory_unlock($1)', [0x6c726563]);
      await s.publish({ version: 1, hash: 'h1', model: new Uint8Array([1]), optimizer: null, createdAt: 1, updateCount: 1 }, [u.id]);
      assert.equal(await s.pendingCount(), 0);
    } finally {
      await holder.end();
      await s.close();
    }
  });

  it('localrec serve on PostgreSQL: pending updates, versions and nonces survive a restart', async () => {
    const database = await freshDatabase();
    let srv = await startServer({ ...opts, database, initialTable: initialTable() });
    const v0 = await pull(srv.url);
    const bodies = [1, 2, 3, 4].map((s) => honestUpdate(v0, s));
    for (const b of bodies.slice(0, 2)) assert.equal((await post(srv.url, b)).status, 202);
    await srv.close();

    srv = await startServer({ ...opts, database, initialTable: initialTable() });
    assert.equal(srv.rounds.pending, 2);
    // The nonce survived the restart: another body under it is a replay; the same body again (its
    // answer lost) is the pending update, counted once.
    const sameNonce = honestUpdate(v0, 9);
    sameNonce.set(bodies[0]!.subarray(64, 80), 64);
    assert.equal((await post(srv.url, sameNonce)).json.reason, 'replayed');
    assert.deepEqual([(await post(srv.url, bodies[0]!)).status, srv.rounds.pending], [202, 2]);
    assert.equal((await post(srv.url, bodies[2]!)).json.published, 1);
    const v1bytes = new Uint8Array(await (await fetch(`${srv.url}/v1/model`)).arrayBuffer());
    assert.equal((await post(srv.url, bodies[3]!)).status, 202);
    await srv.close();

    srv = await startServer({ ...opts, database }); // no catalog needed once the store has a model
    try {
      assert.equal(srv.rounds.version, 1);
      assert.equal(srv.rounds.pending, 1);
      assert.deepEqual(new Uint8Array(await (await fetch(`${srv.url}/v1/model`)).arrayBuffer()), v1bytes);
    } finally {
      await srv.close();
    }
    await assert.rejects(startServer({ ...opts, database, initialTable: initialTable(IDS.slice(1)) }), (e: unknown) => isStorageError(e) && /does not match the catalog/.test((e as Error).message));
  });

  it('two servers sharing one database: every accepted update goes into exactly one version, and each serves the latest', async () => {
    const database = await freshDatabase();
    // Staleness is not what this test is about: every update below stays acceptable.
    const a = await startServer({ ...opts, maxStaleness: 1000, database, initialTable: initialTable() });
    const b = await startServer({ ...opts, maxStaleness: 1000, database, initialTable: initialTable() });
    try {
      // Version 0 was published once (the second server adopted it).
      assert.deepEqual((await pull(a.url)).hash, (await pull(b.url)).hash);
      const v0 = await pull(a.url);
      // Two updates to A and one to B make a round of 3, completed by B from A's pending updates.
      assert.equal((await post(a.url, honestUpdate(v0, 1))).status, 202);
      assert.equal((await post(a.url, honestUpdate(v0, 2))).status, 202);
      const thirdBody = honestUpdate(v0, 3);
      const third = await post(b.url, thirdBody);
      assert.equal(third.json.published, 1, JSON.stringify(third.json));
      // A nonce spent at B is spent at A.
      assert.equal((await post(a.url, thirdBody)).json.reason, 'replayed');
      // A takes an update based on B's version 1 (it catches up before checking the base).
      const v1 = await pull(b.url);
      assert.equal(v1.table.version, 1);
      assert.equal((await post(a.url, honestUpdate(v1, 4))).status, 202);
      // And, once its last look is a second old, serves version 1 to readers.
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal((await pull(a.url)).table.version, 1);
      assert.equal(((await (await fetch(`${a.url}/v1/rounds/current`)).json()) as { pending: number }).pending, 1);

      // Then 30 more updates, posted concurrently, spread over both servers.
      const bodies = Array.from({ length: 30 }, (_, i) => honestUpdate(v1, 100 + i));
      const results = await Promise.all(bodies.map((body, i) => post(i % 2 ? a.url : b.url, body)));
      const accepted = results.filter((r) => r.status === 202).length;
      assert.equal(accepted, 30, JSON.stringify(results.filter((r) => r.status !== 202).map((r) => r.json)));
      await withClient(database, async (db) => {
        const versions = (await db.query<{ version: number; update_count: number }>('SELECT version, update_count FROM localrec_versions ORDER BY version')).rows;
        assert.deepEqual(versions.map((v) => v.version), versions.map((_, i) => i), 'versions 0, 1, 2, … without a gap or a repeat');
        const updates = (await db.query<{ aggregated_into: number | null }>('SELECT aggregated_into FROM localrec_updates')).rows;
        assert.equal(updates.length, 3 + 1 + accepted, 'every accepted update is stored once');
        const into = new Map<number, number>();
        for (const u of updates) if (u.aggregated_into !== null) into.set(u.aggregated_into, (into.get(u.aggregated_into) ?? 0) + 1);
        for (const v of versions.slice(1)) assert.equal(into.get(v.version), v.update_count, `version ${v.version} consumed exactly the updates it counts`);
        const pending = updates.filter((u) => u.aggregated_into === null).length;
        assert.ok(pending < 3, `at most a partial round stays pending, got ${pending}`);
        // A round takes every update pending when it runs, so with two servers it may hold more
        // than minClients, never fewer (the k-anonymity floor), and none is counted twice.
        for (const v of versions.slice(1)) assert.ok(v.update_count >= 3, `version ${v.version} averages ${v.update_count} updates`);
        assert.equal(versions.reduce((t, v) => t + v.update_count, 0) + pending, 3 + 1 + 30);
      });
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('localrec serve --database: two server processes on one database publish each round once', async () => {
    const database = await freshDatabase();
    await withTwoServes(database, [], async (a, b, dir) => {
      // The start-up lines name the store and what σ means for devices (printed just after
      // "listening on"; wait for them, at most 10 s).
      for (let i = 0; i < 100 && !/σ = 0: updates carry no noise/.test(a.stdout()); i++) await new Promise((r) => setTimeout(r, 100));
      const startup = a.stdout();
      assert.match(startup, new RegExp(`store: PostgreSQL ${database.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(shared`));
      const v0 = await pull(a.url);
      const bodies = Array.from({ length: 12 }, (_, i) => honestUpdate(v0, 200 + i));
      const results = await Promise.all(bodies.map((body, i) => post(i % 2 ? a.url : b.url, body)));
      assert.deepEqual(results.map((r) => r.status), bodies.map(() => 202), JSON.stringify(results.map((r) => r.json)));
      await new Promise((r) => setTimeout(r, 1100));
      const [va, vb] = [await pull(a.url), await pull(b.url)];
      assert.deepEqual(va.hash, vb.hash, 'both serve the same latest version');
      assert.ok(va.table.version >= 1);
      await withClient(database, async (db) => {
        const rows = (await db.query<{ n: string; into: number | null }>('SELECT COUNT(*) AS n, aggregated_into AS into FROM localrec_updates GROUP BY aggregated_into')).rows;
        const total = rows.reduce((t, r) => t + Number(r.n), 0);
        assert.equal(total, 12, 'every acknowledged update is in the database once');
        const counted = (await db.query<{ s: string }>('SELECT COALESCE(SUM(update_count), 0) AS s FROM localrec_versions')).rows[0]!.s;
        assert.equal(Number(counted) + Number(rows.find((r) => r.into === null)?.n ?? 0), 12, 'aggregated once or still pending');
        assert.ok(!existsSync(join(dir, 'unused-a', 'localrec.sqlite')), 'no SQLite file was made');
      });
    });
  });

  it('the database going away costs 503s (nothing acknowledged is lost) and the server carries on when it is back', async () => {
    const database = await freshDatabase();
    const logged: string[] = [];
    let t = 1_000_000;
    const srv = await startServer({ ...opts, minClients: 100, database, initialTable: initialTable(), now: () => t, log: (l) => logged.push(l) });
    let paused = false;
    try {
      const v0 = await pull(srv.url);
      assert.equal((await post(srv.url, honestUpdate(v0, 1))).status, 202);
      server.pause();
      paused = true;
      const down = await post(srv.url, honestUpdate(v0, 2));
      assert.equal(down.status, 503, JSON.stringify(down.json));
      assert.equal(down.json.reason, 'storage-unavailable');
      assert.match(String(down.json.error), /nothing was stored, retry later/);
      // The first statement of a POST on a shared store is the look at the store's round settings
      // (whether another instance replaced this one's: app.ts), before the catch-up's.
      assert.ok(logged.some((l) => /storage unavailable on POST \/v1\/updates: PostgreSQL read a setting failed \(postgres:\/\/localrec@127\.0\.0\.1:\d+\/t\d+\): .*ECONNREFUSED/.test(l)), logged.join('\n'));
      // Readers get the same 503 once their once-a-second look is due, so a load balancer's
      // health check takes the instance out.
      t += 1500;
      const health = await fetch(`${srv.url}/v1/health`);
      assert.equal(health.status, 503);
      server.resume();
      paused = false;
      // The device retries later (a new upload): stored now.
      const again = await post(srv.url, honestUpdate(v0, 3));
      assert.equal(again.status, 202, JSON.stringify(again.json));
      assert.equal(again.json.pending, 2, 'the update acknowledged before the outage is still pending');
      t += 1500;
      assert.equal((await fetch(`${srv.url}/v1/health`)).status, 200);
    } finally {
      if (paused) server.resume();
      await srv.close();
    }
  });

  it('the rate limit holds across processes: buckets live in the database, keyed by an HMAC of the address, never the address', async () => {
    const database = await freshDatabase();
    let t = 5_000_000;
    const limited = { ...opts, minClients: 100, database, initialTable: initialTable(), rateLimit: { perMinute: 60, burst: 2 }, now: () => t };
    const [a, b] = [await startServer(limited), await startServer(limited)];
    try {
      const v0 = await pull(a.url);
      const statuses = [];
      for (const [i, url] of [a.url, b.url, a.url, b.url].entries()) statuses.push((await post(url, honestUpdate(v0, 300 + i))).status);
      assert.deepEqual(statuses, [202, 202, 429, 429], 'a burst of 2 for this client, whichever process it reaches');
      t += 1_000; // one token a second comes back
      assert.deepEqual([(await post(b.url, honestUpdate(v0, 310))).status, (await post(a.url, honestUpdate(v0, 311))).status], [202, 429]);
      await withClient(database, async (db) => {
        const rows = (await db.query<{ client: string }>('SELECT client FROM localrec_rate')).rows;
        assert.equal(rows.length, 1, 'one bucket: one client');
        assert.ok(!/127\.0\.0\.1|::1|::ffff/.test(rows[0]!.client), `the address is not stored: ${rows[0]!.client}`);
        assert.match(rows[0]!.client, /^[A-Za-z0-9_-]{43}$/);
        // A bucket that is full again is forgotten (at most every 10 s, after a request).
        t += 30_000;
        const store = await PostgresStorage.open(database);
        try {
          assert.equal(await store.rateLimiter({ perMinute: 60, burst: 2 }, () => t).take('203.0.113.9'), true);
          let n = 2;
          for (let i = 0; i < 100 && n > 1; i++) {
            await new Promise((r) => setTimeout(r, 10));
            n = Number((await db.query<{ n: string }>('SELECT COUNT(*) AS n FROM localrec_rate')).rows[0]!.n);
          }
          assert.equal(n, 1, "the first client's full bucket is gone, the new client's kept");
          // The hashing key is the window's, and the next window overwrites it: a later copy of the
          // database cannot tie a hash to an address, nor link one address across windows.
          const keyNow = async () => (await db.query<{ value: string }>("SELECT value FROM localrec_meta WHERE key = 'client-key-window'")).rows[0]!.value;
          assert.equal((await db.query("SELECT 1 FROM localrec_meta WHERE key = 'client-key'")).rowCount, 0, 'the key kept for good by earlier releases is gone');
          const first = await keyNow();
          assert.match(first, /^\d+:[0-9a-f]{64}$/);
          const before = (await db.query<{ client: string }>('SELECT client FROM localrec_rate')).rows[0]!.client;
          t += 11 * 60_000;
          assert.equal(await store.rateLimiter({ perMinute: 60, burst: 2 }, () => t).take('203.0.113.9'), true);
          const second = await keyNow();
          assert.ok(Number(second.split(':')[0]) > Number(first.split(':')[0]) && second.split(':')[1] !== first.split(':')[1], `${first} → ${second}`);
          const clients = (await db.query<{ client: string }>('SELECT client FROM localrec_rate')).rows.map((r) => r.client);
          assert.ok(clients.some((c) => c !== before), 'the same address hashes to another value in the next window');
        } finally {
          await store.close();
        }
      });
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('cohorts hold at most maxCohortMembers members of cohorts that have not ended (forming, full, recovering), over every process on the database: of concurrent joins past it exactly the cap get in, a refused join writes nothing, a retried join still gets its place', async () => {
    const db = await freshDatabase();
    const params = { cohortSize: 3, bits: 16, step: 1 / 1024, degree: 2 };
    await assert.rejects(async () => (await PostgresStorage.open(db, { maxCohortMembers: 2 })).cohortStore(params, 60_000, () => 0), /≥ the cohort size 3/);
    await assert.rejects(PostgresStorage.open(db, { maxCohortMembers: 0 }), (e: unknown) => isStorageError(e) && /maxCohortMembers must be a whole number ≥ 1, got 0/.test((e as Error).message));
    const stores = [await PostgresStorage.open(db, { maxCohortMembers: 5 }), await PostgresStorage.open(db, { maxCohortMembers: 5 })];
    let t = 1_000_000;
    const [a, b] = stores.map((s) => s.cohortStore(params, 60_000, () => t)) as [ReturnType<PostgresStorage['cohortStore']>, ReturnType<PostgresStorage['cohortStore']>];
    const key = (i: number) => new Uint8Array(65).fill(i + 1);
    const sql = async <R extends pg.QueryResultRow>(text: string) => {
      const c = new pg.Client({ connectionString: db });
      await c.connect();
      try {
        return (await c.query<R>(text)).rows;
      } finally {
        await c.end();
      }
    };
    const rows = async () => (await sql<{ cohorts: string; members: string; live: string }>("SELECT (SELECT COUNT(*) FROM localrec_cohorts) AS cohorts, (SELECT COUNT(*) FROM localrec_cohort_members) AS members, (SELECT SUM(joined) FROM localrec_cohorts WHERE status IN ('forming', 'ready', 'recovering')) AS live"))[0]!;
    try {
      // Twice the cap in joins at once, through both processes: exactly the cap get in (one full
      // cohort, one forming), the rest are refused busy, and nothing of theirs is stored.
      const all = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).join(key(i))));
      const joined = all.filter((r) => !('error' in r)) as Array<{ cohort: CohortInfo; index: number; token: string }>;
      const refused = all.filter((r) => 'error' in r);
      assert.equal(joined.length, 5, JSON.stringify(all));
      for (const r of refused) assert.ok('error' in r && r.busy === true && /its most \(5\)/.test(r.error), JSON.stringify(r));
      assert.deepEqual(await rows(), { cohorts: '2', members: '5', live: '5' }, 'a refused join writes nothing');
      // The same key again while its cohort forms: its place, even at the cap.
      const fullId = joined.find((r) => r.cohort.status === 'ready')!.cohort.id;
      const forming = joined.find((r) => r.cohort.id !== fullId)!;
      const again = await b.join(key(all.indexOf(forming)));
      assert.ok(!('error' in again) && again.index === forming.index && again.token === forming.token, JSON.stringify(again));
      // A member that leaves frees a place.
      assert.equal(await a.leave(forming.cohort.id, forming.index, forming.token), 'left');
      assert.ok(!('error' in (await a.join(key(10)))), 'a place freed');
      assert.ok('error' in (await b.join(key(11))));
      // A cohort in recovery has not ended: its members still count; once done, they no longer do.
      await sql(`UPDATE localrec_cohorts SET status = 'recovering', recovery_at = ${t} WHERE id = '${fullId}'`);
      assert.ok('error' in (await b.join(key(11))), 'a recovering cohort still holds its members');
      await a.finish(fullId, 1);
      assert.ok(!('error' in (await b.join(key(11)))), 'a done cohort released its members');
      // The other cohorts time out: theirs are released too.
      t += 60_001;
      await a.sweep();
      assert.equal((await rows()).live, null);
      assert.ok(!('error' in (await b.join(key(12)))), 'the ended cohorts released their members');
    } finally {
      for (const s of stores) await s.close();
    }
    // Through the server: 503 cohorts-full with Retry-After.
    const storage = await PostgresStorage.open(await freshDatabase(), { maxCohortMembers: 3 });
    const parts = await createServer({ storage, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: true, log: quiet });
    try {
      const { secAggKeyPair } = await import('../../src/federated/secagg.js');
      const join = async () => parts.app.request('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> });
      for (let i = 0; i < 3; i++) assert.equal((await join()).status, 200);
      const res = await join();
      assert.equal(res.status, 503);
      assert.equal(res.headers.get('retry-after'), '60');
      assert.equal(((await res.json()) as { reason: string }).reason, 'cohorts-full');
    } finally {
      await storage.close();
    }
  });

  /** A cohort of two on `store` whose both members uploaded (version 0 published): its id, its uploads' ids, and a version record maker. */
  const fullCohortOfTwo = async (store: PostgresStorage, cohorts: ReturnType<PostgresStorage['cohortStore']>, t: number) => {
    const joined = [await cohorts.join(new Uint8Array(65).fill(1)), await cohorts.join(new Uint8Array(65).fill(2))];
    const id = (joined[0] as { cohort: { id: string } }).cohort.id;
    const ids: number[] = [];
    for (const i of [0, 1]) {
      const r = await store.addUpdate({ nonce: `${id}:${i}`, baseVersion: 0, receivedAt: t, body: new Uint8Array(4) });
      assert.ok(r !== 'replayed');
      ids.push(r.id);
      await cohorts.markSubmitted(id, i, r.id);
    }
    const version = (v: number) => ({ version: v, hash: `h${v}`, model: new Uint8Array(1), optimizer: null, createdAt: t, updateCount: 0 });
    await store.publish(version(0), []);
    return { id, ids, version };
  };

  it('a cohort published but never marked done (a crash between the two transactions) is marked done, with its version, by the next sweep', async () => {
    const store = await PostgresStorage.open(await freshDatabase());
    let t = 1_000_000;
    const cohorts = store.cohortStore({ cohortSize: 2, bits: 16, step: 1 / 1024, degree: 2 }, 60_000, () => t);
    try {
      const { id, ids, version } = await fullCohortOfTwo(store, cohorts, t);
      await store.publish(version(1), ids); // … and the process dies before cohorts.finish()
      assert.equal((await cohorts.info(id))!.status, 'ready');
      t += 1_000;
      await cohorts.sweep();
      const after = (await cohorts.info(id))!;
      assert.deepEqual([after.status, after.published], ['done', 1]);
    } finally {
      await store.close();
    }
  });

  it("another process's sweep past a cohort's publish deadline, while its publish commits, leaves it done with that version, not aborted (review, stop 39)", async () => {
    const db = await freshDatabase();
    let hook: (() => Promise<void>) | undefined;
    const store = await PostgresStorage.open(db, { beforeCommit: () => hook?.() });
    const other = await PostgresStorage.open(db); // a second process on the same database
    let t = 1_000_000;
    const params = { cohortSize: 2, bits: 16, step: 1 / 1024, degree: 2 };
    const cohorts = store.cohortStore(params, 1_000, () => t);
    const elsewhere = other.cohortStore(params, 1_000, () => t);
    try {
      const { id, ids, version } = await fullCohortOfTwo(store, cohorts, t);
      // This process publishes the cohort; its commit is slow.
      let release!: () => void;
      let entered!: () => void;
      const inCommit = new Promise<void>((r) => (entered = r));
      hook = () => {
        entered();
        return new Promise<void>((r) => (release = r));
      };
      const publishing = store.publish(version(1), ids);
      await inCommit;
      hook = undefined;
      t += (PUBLISH_GRACE + 2) * 1_000; // past the publish deadline meanwhile
      const swept = elsewhere.sweep(new Set()); // the other process knows nothing of this publish
      await new Promise((r) => setTimeout(r, 300)); // its delete now waits on the rows the publish holds
      release();
      await publishing;
      assert.deepEqual((await swept).aborted, []);
      await cohorts.finish(id, 1);
      const info = (await cohorts.info(id))!;
      assert.deepEqual([info.status, info.published, (await store.latest())?.version], ['done', 1, 1]);
    } finally {
      await store.close();
      await other.close();
    }
  });

  it('round settings live in localrec_meta: an instance started with another --train-rows while nothing is pending takes the database over, the one still running with the old settings answers 503, and a restart with them while updates are pending is refused', async () => {
    const database = await freshDatabase();
    const a = await startServer({ ...opts, database, initialTable: initialTable() });
    const b = await startServer({ ...opts, database, initialTable: initialTable(), trainRows: 20 });
    try {
      const stored = await withClient(database, async (db) => (await db.query<{ value: string }>("SELECT value FROM localrec_meta WHERE key = 'round-settings'")).rows[0]?.value);
      assert.deepEqual(JSON.parse(stored ?? 'null'), { trainRows: 20, trainBiases: true, aggregator: 'fedavg', secureAggregation: null });
      const v0 = await pull(b.url);
      const refused = await post(a.url, honestUpdate(v0, 1));
      assert.deepEqual([refused.status, refused.json.reason], [503, 'settings-changed']);
      assert.equal((await post(b.url, honestUpdate(v0, 2, { part: { rows: 20, biases: true } }))).status, 202);
      await a.close();
      await assert.rejects(startServer({ ...opts, database, initialTable: initialTable() }).then((s) => s.close()), /pending updates of 20 rows with biases trained, and this server trains 40 rows/);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('refuses a URL that is not PostgreSQL, naming the option', async () => {
    await assert.rejects(createServer({ database: 'mysql://x@y/z', initialTable: initialTable(), log: quiet }), (e: unknown) => isValidationError(e) && /options\.database: must be a postgres:\/\/ or postgresql:\/\/ URL, got 'mysql:/.test((e as Error).message));
    // A server that is not there: a StorageError naming the URL without its password.
    await assert.rejects(PostgresStorage.open('postgres://localrec:s3cret@127.0.0.1:1/none'), (e: unknown) => isStorageError(e) && /PostgreSQL create the schema failed \(postgres:\/\/localrec:\*\*\*@127\.0\.0\.1:1\/none\)/.test((e as Error).message) && !/s3cret/.test((e as Error).message));
  });
  it('cohorts in PostgreSQL: joins through two stores fill one cohort at a time, uploads count only while it collects, a timeout ends it once', async () => {
    const database = await freshDatabase();
    const stores = [await PostgresStorage.open(database), await PostgresStorage.open(database)];
    let t = 1_000_000;
    const params: SecAggParams = { cohortSize: 4, bits: 16, step: 1 / 1024, degree: 2 };
    const [c1, c2] = stores.map((s) => s.cohortStore(params, 60_000, () => t)) as [ReturnType<PostgresStorage['cohortStore']>, ReturnType<PostgresStorage['cohortStore']>];
    try {
      // Ten joins at once, alternating between the two "processes": two full cohorts and one of 2.
      const keys = Array.from({ length: 10 }, (_, i) => new Uint8Array(65).fill(i + 1));
      const joined = await Promise.all(keys.map((k, i) => (i % 2 ? c1 : c2).join(k)));
      const byCohort = new Map<string, number[]>();
      for (const j of joined) {
        assert.ok(!('error' in j));
        byCohort.set(j.cohort.id, [...(byCohort.get(j.cohort.id) ?? []), j.index]);
      }
      const sizes = [...byCohort.values()].map((ix) => ix.sort((a, b) => a - b));
      assert.deepEqual(sizes.map((ix) => ix.length).sort(), [2, 4, 4]);
      for (const ix of sizes) assert.deepEqual(ix, ix.map((_, i) => i), 'member indexes are 0..n-1, each once');
      const [full1, full2] = [...byCohort].filter(([, ix]) => ix.length === 4).map(([id]) => id) as [string, string];
      const forming = [...byCohort].find(([, ix]) => ix.length === 2)![0];
      assert.equal((await c2.info(full1))!.status, 'ready');
      assert.equal((await c1.info(forming))!.status, 'forming');
      // A key already in the forming cohort (a join retried) gets its place and token back; every member's key and token read back.
      const first = keys.findIndex((_, i) => (joined[i] as { cohort: { id: string } }).cohort.id === forming);
      const again = await c1.join(keys[first]!);
      const had = joined[first] as { index: number; token: string };
      assert.ok(!('error' in again) && again.cohort.id === forming && again.index === had.index && again.token === had.token);
      assert.equal((await c1.info(forming))!.joined, 2, 'counted once');
      for (const [i, j] of joined.entries()) {
        if ('error' in j) continue;
        assert.deepEqual([...(await c2.keys(j.cohort.id, [j.index])).get(j.index)!], [...keys[i]!]);
        assert.equal(await c1.token(j.cohort.id, j.index), j.token);
      }
      assert.deepEqual([...(await c1.keys(full1)).keys()], [0, 1, 2, 3]);
      // Uploads of a full cohort recorded through both stores at once: exactly one completes it.
      const marks = await Promise.all([0, 1, 2, 3].map((i) => (i % 2 ? c1 : c2).markSubmitted(full1, i, 100 + i)));
      assert.deepEqual(marks.slice().sort(), ['complete', 'recorded', 'recorded', 'recorded']);
      await c1.finish(full1, 1);
      assert.deepEqual(await c2.info(full1), { ...(await c1.info(full1))!, status: 'done', published: 1 });
      assert.equal(await c2.markSubmitted(forming, 0, 200), 'closed', 'a forming cohort takes no uploads');
      assert.deepEqual([await c1.markSubmitted(full2, 0, 300), await c2.markSubmitted(full2, 1, 301)], ['recorded', 'recorded']);
      // An upload of full2 stored but never recorded by its cohort (the process died in between),
      // and an unrelated plain update: the abort deletes the first in its own transaction.
      const body = new Uint8Array(8);
      const orphan = await stores[0]!.addUpdate({ nonce: `${full2}:2`, baseVersion: 0, receivedAt: t, body });
      await stores[0]!.addUpdate({ nonce: 'ab'.repeat(16), baseVersion: 0, receivedAt: t, body });
      assert.ok(orphan !== 'replayed');
      // Past the timeout: both stores sweep at once; each late cohort is aborted once, with its upload ids.
      t += 60_001;
      const swept = (await Promise.all([c1.sweep(), c2.sweep()])).flatMap((r) => r.aborted);
      assert.deepEqual((await stores[1]!.pending()).map((u) => u.nonce), ['ab'.repeat(16)], "the aborted cohort's upload went with the abort");
      assert.deepEqual(swept.map((a) => a.id).sort(), [full2, forming].sort());
      const ready = swept.find((a) => a.id === full2)!;
      assert.deepEqual(ready.updateIds.sort(), [300, 301]);
      assert.match(ready.reason, /only 2 of 4 members uploaded within 60000 ms/);
      assert.match(swept.find((a) => a.id === forming)!.reason, /only 2 of 4 members joined/);
      assert.equal((await c1.info(full1))!.status, 'done', 'a published cohort is not aborted');
      assert.equal(await c1.markSubmitted(full2, 2, 302), 'closed', 'an aborted cohort takes no uploads');
      const fresh = await c2.join(new Uint8Array(65).fill(99));
      assert.ok(!('error' in fresh) && fresh.index === 0 && fresh.cohort.id !== forming, 'the next join opens a new cohort');
      // Ended cohorts are forgotten an hour after they ended (their members with them).
      t += KEEP_ENDED_MS + 1;
      await c1.sweep();
      assert.equal(await c2.info(full1), undefined);
      assert.equal((await c2.keys(full2)).size, 0);
    } finally {
      for (const s of stores) await s.close();
    }
  });

  it('an ended cohort is kept an hour after it ended, on a database created before ended_at existed too', async () => {
    const database = await freshDatabase();
    // A database of the schema before: its cohorts table has no ended_at column.
    const old = await PostgresStorage.open(database);
    await old.close();
    await withClient(database, (db) => db.query('ALTER TABLE localrec_cohorts DROP COLUMN ended_at'));
    const storage = await PostgresStorage.open(database);
    try {
      const columns = await withClient(database, (db) => db.query<{ column_name: string }>("SELECT column_name FROM information_schema.columns WHERE table_name = 'localrec_cohorts' AND column_name = 'ended_at'"));
      assert.equal(columns.rowCount, 1, 'opening adds the column');
      let t = 1_000_000;
      const hour = 3_600_000;
      const store = storage.cohortStore({ cohortSize: 2, bits: 16, step: 1 / 1024, degree: 2 }, { fillMs: 2 * hour, uploadMs: 60_000 }, () => t);
      const unfilled = await store.join(new Uint8Array(65).fill(1));
      assert.ok(!('error' in unfilled));
      t += 2 * hour + 1;
      assert.deepEqual((await store.sweep()).aborted.map((a) => a.id), [unfilled.cohort.id]);
      await assertKeptAnHourAfterEnd(store, unfilled.cohort.id, 'aborted', t, (now) => (t = now));
      // A published cohort ends when it is finished.
      const a = await store.join(new Uint8Array(65).fill(2));
      const b = await store.join(new Uint8Array(65).fill(3));
      assert.ok(!('error' in a) && !('error' in b) && b.cohort.status === 'ready');
      t += 30_000;
      await store.finish(a.cohort.id, 1);
      assert.equal((await store.info(a.cohort.id))?.endedAt, t);
    } finally {
      await storage.close();
    }
  });

  it('a cohort id with a NUL answers 409 unknown-cohort and never reaches PostgreSQL (whose error named the database)', async () => {
    const database = await freshDatabase();
    const parts = await createServer({ database, initialTable: initialTable(), minClients: 3, rateLimit: false, secureAggregation: true, log: quiet });
    try {
      for (const path of ['/v1/secagg/cohorts/a%00b', '/v1/secagg/cohorts/a%00b/members/0']) {
        const res = await parts.app.request(path);
        const text = await res.text();
        assert.equal(res.status, 409, text);
        assert.equal((JSON.parse(text) as { reason: string }).reason, 'unknown-cohort');
        assert.ok(!text.includes('127.0.0.1') && !text.includes('postgres'), text);
      }
    } finally {
      await parts.storage.close();
    }
  });

  it('--metrics counts the cohorts in PostgreSQL by state, over every instance sharing it', async () => {
    const database = await freshDatabase();
    const a = await createServer({ database, initialTable: initialTable(), minClients: 3, rateLimit: false, secureAggregation: true, metrics: true, log: quiet });
    const b = await createServer({ database, initialTable: initialTable(), minClients: 3, rateLimit: false, secureAggregation: true, metrics: true, log: quiet });
    try {
      const { secAggKeyPair } = await import('../../src/federated/secagg.js');
      for (const parts of [a, b]) {
        const res = await parts.app.request('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> });
        assert.equal(res.status, 200, await res.clone().text());
      }
      for (const parts of [a, b]) {
        const text = await (await parts.app.request('/metrics')).text();
        assert.match(text, /^localrec_cohorts\{state="forming"\} 1$/m, 'one cohort forming, two members from two instances');
      }
    } finally {
      await a.storage.close();
      await b.storage.close();
    }
  });

  it('leaving a forming cohort in PostgreSQL, through two stores: the place goes to the next join, a full cohort cannot be left', async () => {
    const database = await freshDatabase();
    const stores = [await PostgresStorage.open(database), await PostgresStorage.open(database)];
    const params: SecAggParams = { cohortSize: 3, bits: 16, step: 1 / 1024, degree: 2 };
    try {
      const [a, b] = stores.map((s) => s.cohortStore(params, 60_000, () => 1_000_000)) as [ReturnType<PostgresStorage['cohortStore']>, ReturnType<PostgresStorage['cohortStore']>];
      await exerciseCohortLeave(a, b);
    } finally {
      for (const s of stores) await s.close();
    }
  });

  it('a refused leave (no such cohort, a wrong token, a full cohort) is answered without the join lock that every join waits on; a member\'s own leave still takes it', async () => {
    const database = await freshDatabase();
    const store = await PostgresStorage.open(database);
    const params: SecAggParams = { cohortSize: 2, bits: 16, step: 1 / 1024, degree: 2 };
    const key = (n: number) => new Uint8Array(65).fill(n);
    const locker = new pg.Client({ connectionString: database });
    await locker.connect();
    try {
      const cohorts = store.cohortStore(params, 60_000, () => 1_000_000);
      const full = [await cohorts.join(key(1)), await cohorts.join(key(2))];
      assert.ok(full.every((j) => !('error' in j)));
      const [a, b] = full as Array<{ cohort: { id: string; status: string }; index: number; token: string }>;
      assert.equal(b!.cohort.status, 'ready');
      const m = await cohorts.join(key(3));
      assert.ok(!('error' in m) && m.cohort.status === 'forming' && m.index === 0);
      // Another session holds the join lock (a join of another instance, or a thousand of them).
      await locker.query('BEGIN');
      await locker.query('SELECT pg_advisory_xact_lock($1)', [JOIN_LOCK_KEY]);
      /** Whether some session waits for an advisory lock. */
      const waiting = async () => (await withClient(database, (db) => db.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))).rowCount! > 0;
      /** `leave`'s answer, or 'waited' once it is seen waiting for the lock. */
      const outcome = async (leave: Promise<string>): Promise<string> => {
        let answer: string | undefined;
        void leave.then((r) => (answer = r));
        for (;;) {
          if (answer !== undefined) return answer;
          if (await waiting()) return 'waited';
        }
      };
      assert.equal(await outcome(cohorts.leave('cd'.repeat(16), 0, m.token)), 'unknown', 'no such cohort');
      assert.equal(await outcome(cohorts.leave(m.cohort.id, 0, 'f'.repeat(32))), 'unknown', 'a wrong token');
      assert.equal(await outcome(cohorts.leave(m.cohort.id, 1, 'f'.repeat(32))), 'unknown', 'nobody at that place');
      assert.equal(await outcome(cohorts.leave(b!.cohort.id, a!.index, a!.token)), 'too-late', 'a full cohort');
      // The member's own leave of its forming cohort waits for the lock, and goes through once it is free.
      const own = cohorts.leave(m.cohort.id, 0, m.token);
      assert.equal(await outcome(own), 'waited');
      await locker.query('COMMIT');
      assert.equal(await own, 'left');
      assert.equal((await cohorts.info(m.cohort.id))!.joined, 0);
    } finally {
      await locker.end();
      await store.close();
    }
  });

  it('the shared rate limit takes part of a token for an IPv6 /48: 16 clients\' worth from one /48, each /64 still its own burst', async () => {
    const database = await freshDatabase();
    const store = await PostgresStorage.open(database);
    try {
      const limit = store.rateLimiter({ perMinute: 60, burst: 2 }, () => 7_000_000);
      let passed = 0;
      for (let i = 0; i < 40; i++) if (await takeAll(limit, rateLimitKeys(`2001:db8:aaaa:${i.toString(16)}::1`))) passed++;
      assert.equal(passed, 32, 'burst 2 a /64, and 2 × 16 for the /48');
      assert.equal(await takeAll(limit, rateLimitKeys('2001:db8:aaaa:1::9')), false);
      assert.equal(await takeAll(limit, rateLimitKeys('2001:db8:bbbb::1')), true, 'another /48');
      assert.equal(await limit.take('203.0.113.9'), true, 'a whole token by default');
      assert.equal(await limit.take('203.0.113.9'), true);
      assert.equal(await limit.take('203.0.113.9'), false);
    } finally {
      await store.close();
    }
  });

  it('recovery in PostgreSQL: a cohort short of uploads moves to recovering once, shares through two stores complete it once, and a recovery that stalls is aborted', async () => {
    const database = await freshDatabase();
    const stores = [await PostgresStorage.open(database), await PostgresStorage.open(database)];
    let t = 1_000_000;
    const params: SecAggParams = { cohortSize: 5, bits: 16, step: 1 / 1024, degree: 2, minSurvivors: 3 };
    // An hour to fill, a minute to upload (and to recover).
    const [c1, c2] = stores.map((s) => s.cohortStore(params, { fillMs: 3_600_000, uploadMs: 60_000 }, () => t)) as [ReturnType<PostgresStorage['cohortStore']>, ReturnType<PostgresStorage['cohortStore']>];
    let key = 0;
    const fill = async () => {
      let id = '';
      for (let i = 0; i < 5; i++) {
        const j = await (i % 2 ? c1 : c2).join(new Uint8Array(65).fill(++key));
        assert.ok(!('error' in j));
        id = j.cohort.id;
      }
      return id;
    };
    try {
      const a = await fill(); // members 0–3 upload, 4 drops: recovered
      const b = await fill(); // 2 of 5 upload: fewer than 3, aborted
      const c = await fill(); // 0–3 upload, then nobody gives a share: recovery aborted
      const d = await fill(); // all 5 upload: recovering at once, no one dropped (every self-mask must come off)
      for (let i = 0; i < 2; i++) assert.ok(!('error' in (await c1.join(new Uint8Array(65).fill(200 + i))))); // a cohort still forming
      const forming = (await c2.join(new Uint8Array(65).fill(210))) as { cohort: { id: string } };
      // Each upload's self-mask shares, sealed to its two mask neighbours (opaque to the store).
      const sealedOf = (i: number) => new Uint8Array(2 * 32).fill(i + 1);
      for (const [id, n] of [[a, 4], [b, 2], [c, 4], [d, 4]] as const) for (let i = 0; i < n; i++) assert.equal(await (i % 2 ? c1 : c2).markSubmitted(id, i, 1000 * key + i, sealedOf(i)), 'recorded');
      assert.equal(await c1.markSubmitted(d, 4, 1000 * key + 4, sealedOf(4)), 'recorded', 'the K-th upload: recovering, not complete');
      assert.deepEqual([(await c2.info(d))!.status, (await c2.info(d))!.dropped, (await c2.info(d))!.needed], ['recovering', [], 5]);
      assert.deepEqual([...(await c2.sealedShares(a, [1, 3, 4]))].sort(([x], [y]) => x - y).map(([i, v]) => [i, v[0], v.length]), [[1, 2, 64], [3, 4, 64]], 'what each member sealed, for the views');
      t += 60_001;
      const first = await Promise.all([c1.sweep(), c2.sweep()]);
      assert.deepEqual(
        first.flatMap((r) => r.aborted.map((x) => [x.id, x.reason])).sort(),
        [[b, 'only 2 of 5 members uploaded within 60000 ms (recovery needs 3)'], [d, 'only 0 of the 5 recovery shares came within 60000 ms']].sort(),
      );
      const info = (await c2.info(a))!;
      // Every survivor owes a share: pair seeds for member 4, self-mask shares for the others.
      assert.deepEqual([info.status, info.dropped, info.needed, info.recovered], ['recovering', [4], 4, 0]);
      assert.equal(await c1.markSubmitted(a, 4, 1), 'closed', 'a late upload is not counted');
      assert.equal(await c1.addRecovery(a, 4, new Uint8Array(32)), 'refused', 'member 4 dropped: it owes nothing');
      assert.equal(await c1.addRecovery(b, 0, new Uint8Array(32)), 'closed');
      const shares = [0, 1, 2, 3].map((i) => new Uint8Array(32).fill(7 + i));
      const got = await Promise.all([0, 1, 2, 3].map((i) => (i % 2 ? c1 : c2).addRecovery(a, i, shares[i]!)));
      assert.deepEqual(got.sort(), ['complete', 'recorded', 'recorded', 'recorded']);
      assert.equal(await c2.addRecovery(a, 0, shares[0]!), 'again', 'the same share again: a retry, taken as given');
      assert.equal(await c2.addRecovery(a, 0, shares[1]!), 'refused', 'once per member');
      // Confirmation and ready tags, per member and round, through either store; the same bytes again are a retry.
      assert.equal(await c1.addConfirmation(a, 1, new Uint8Array(32).fill(3)), 'recorded');
      assert.equal(await c2.addConfirmation(a, 1, new Uint8Array(32).fill(3)), 'again');
      assert.equal(await c2.addConfirmation(a, 1, new Uint8Array(32).fill(4)), 'refused');
      assert.equal(await c2.addConfirmation(a, 1, new Uint8Array(32).fill(5), 'ready'), 'recorded');
      assert.equal(await c1.addConfirmation(a, 4, new Uint8Array(32), 'ready'), 'refused', 'member 4 never uploaded');
      assert.deepEqual([...(await c1.confirmations(a, [0, 1, 2]))].map(([i, v]) => [i, v[0]]), [[1, 3]]);
      assert.deepEqual([...(await c1.confirmations(a, [0, 1, 2], 'ready'))].map(([i, v]) => [i, v[0]]), [[1, 5]]);
      assert.deepEqual([...(await c1.recoveryShares(a))].sort(([x], [y]) => x - y).map(([i, sh]) => [i, [...sh]]), shares.map((sh, i) => [i, [...sh]]));
      await c2.finish(a, 1);
      assert.deepEqual([(await c1.info(a))!.status, (await c1.info(a))!.published], ['done', 1]);
      t += 60_001;
      const second = (await Promise.all([c1.sweep(), c2.sweep()])).flatMap((r) => r.aborted);
      assert.deepEqual(second.map((x) => [x.id, x.reason, x.updateIds.length]), [[c, 'only 0 of the 4 recovery shares came within 60000 ms', 4]]);
      assert.deepEqual([(await c1.info(forming.cohort.id))!.status, (await c1.info(forming.cohort.id))!.joined], ['forming', 3], 'two minutes are nothing to the fill deadline');
      t += 3_600_000;
      const third = (await c1.sweep()).aborted;
      assert.deepEqual(third.map((x) => [x.id, x.reason]), [[forming.cohort.id, 'only 3 of 5 members joined within 3600000 ms']]);
    } finally {
      for (const s of stores) await s.close();
    }
  });

  it('secure aggregation across two serve processes: devices whose every request alternates between them make cohorts that publish once', async () => {
    const database = await freshDatabase();
    await withTwoServes(database, ['--secure-aggregation', '--secagg-survivors', '2', '--upload-timeout', '60'], async (a, b) => {
      const urls = [a.url, b.url];
      for (let i = 0; i < 100 && !/recovered from/.test(a.stdout()); i++) await new Promise((r) => setTimeout(r, 100));
      assert.match(a.stdout(), /secure aggregation: cohorts of 3, .*, recovered from 2 survivors/);
      // A load balancer that sends each request to the next process.
      let turn = 0;
      const balanced: FetchLike = (url, init) => fetch(url.replace('http://lb', urls[turn++ % 2]!), init as RequestInit);
      const config = (await (await fetch(`${urls[0]}/v1/config`)).json()) as { secureAggregation: (SecAggParams & { uploadTimeoutMs: number }) | null };
      assert.deepEqual([config.secureAggregation?.cohortSize, config.secureAggregation?.minSurvivors, config.secureAggregation?.uploadTimeoutMs], [3, 2, 60_000]);
      const v0 = await pull(urls[0]!);
      const results = await Promise.all(
        [1, 2, 3, 4, 5, 6].map((s) =>
          syncOnce({ serverUrl: 'http://lb', fetch: balanced, accountant: new RdpAccountant(), budget: Infinity, history: shopperHistory(s, 6), train: { seed: s }, cohortPollMs: 20 }),
        ),
      );
      assert.ok(results.every((r) => r.sent && r.cohort?.outcome === 'published'), JSON.stringify(results.map((r) => r.cohort)));
      const cohorts = new Set(results.map((r) => r.cohort!.id));
      assert.equal(cohorts.size, 2, 'six devices, cohorts of three');
      // Both processes serve the version made of both cohorts (a reader looks at the store at most once a second).
      await new Promise((r) => setTimeout(r, 1100));
      const [va, vb] = [await pull(urls[0]!), await pull(urls[1]!)];
      assert.equal(va.table.version, 2);
      assert.deepEqual(vb.hash, va.hash, 'both serve it');
      // Version 2 = version 0 + each cohort's mean clipped delta (no noise; FedAvg at rate 1).
      const step = (await (await fetch(`${urls[1]}/v1/config`)).json()) as { secureAggregation: SecAggParams };
      const nf = v0.table.factors.length;
      const want = new Float64Array(nf + v0.table.bias.length);
      for (const r of results) {
        const d = itemDelta(v0.table, r.local);
        clipL2(d, 1);
        for (let i = 0; i < d.length; i++) want[i] += d[i]! / 3;
      }
      for (let i = 0; i < want.length; i++) {
        const got = i < nf ? va.table.factors[i]! - v0.table.factors[i]! : va.table.bias[i - nf]! - v0.table.bias[i - nf]!;
        assert.ok(Math.abs(got - want[i]!) <= 2 * step.secureAggregation.step + 1e-5, `coordinate ${i}: ${got} vs ${want[i]}`);
      }
      await withClient(database, async (db) => {
        const rows = (await db.query<{ id: string; status: string; published: number; submitted: number }>('SELECT id, status, published, submitted FROM localrec_cohorts ORDER BY published')).rows;
        assert.deepEqual(rows.map((r) => [r.status, r.published, r.submitted]), [['done', 1, 3], ['done', 2, 3]]);
        assert.deepEqual(new Set(rows.map((r) => r.id)), cohorts);
        const versions = (await db.query<{ version: number; update_count: number }>('SELECT version, update_count FROM localrec_versions ORDER BY version')).rows;
        assert.deepEqual(versions.map((v) => [v.version, v.update_count]), [[0, 0], [1, 3], [2, 3]], 'each cohort published once');
        assert.equal(Number((await db.query<{ n: string }>('SELECT COUNT(*) AS n FROM localrec_updates WHERE aggregated_into IS NULL')).rows[0]!.n), 0);
      });
    });
  });

  it('secure aggregation on PostgreSQL: a restart keeps a collecting cohort and its uploads, and the cohort completes after it', async () => {
    const database = await freshDatabase();
    const start = () => startServer({ ...opts, minClients: 2, database, initialTable: initialTable(), secureAggregation: true });
    let srv = await start();
    const call = (path: string, body?: Uint8Array, token?: string) =>
      fetch(`${srv.url}${path}`, body ? { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: token ? { 'X-Localrec-Cohort-Token': token } : {} } : {});
    try {
      const { secAggKeyPair } = await import('../../src/federated/secagg.js');
      const j = await Promise.all([0, 1].map(async () => (await (await call('/v1/secagg/join', (await secAggKeyPair()).publicKey)).json()) as { cohort: string; index: number; token: string }));
      const { bits, step } = ((await (await call('/v1/config')).json()) as { secureAggregation: SecAggParams }).secureAggregation;
      const upload = (m: { cohort: string; index: number; token: string }) =>
        call('/v1/secagg/updates', encodeMaskedUpdate({ cohortId: fromHex(m.cohort), index: m.index, cohortSize: 2, bits, step, baseVersion: 0, values: new Uint32Array(IDS.length * (DIM + 1)) }), m.token);
      assert.equal((await upload(j[0]!)).status, 202);
      await srv.close();
      srv = await start();
      assert.equal(srv.rounds.pending, 1, 'the upload of a cohort still collecting survives the restart');
      assert.equal(((await (await call(`/v1/secagg/cohorts/${j[0]!.cohort}`)).json()) as { status: string; submitted: number }).submitted, 1);
      const last = (await (await upload(j[1]!)).json()) as { published?: number };
      assert.equal(last.published, 1);
      assert.equal(((await (await call(`/v1/secagg/cohorts/${j[0]!.cohort}`)).json()) as { status: string }).status, 'done');
    } finally {
      await srv.close();
    }
  });

  /** Resolves once `check` holds (polled every 20 ms), or fails after 10 s. */
  const waitFor = async (check: () => Promise<boolean>, what: string): Promise<void> => {
    for (let i = 0; i < 500; i++) {
      if (await check()) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.fail(`timed out waiting for ${what}`);
  };
  /** Ends every other session on the admin client's database, as a database restart or an operator's pg_terminate_backend does. */
  const terminateOthers = (admin: pg.Client) => admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()');
  /** Whether a session on the admin client's database waits for a lock. */
  const someoneWaits = async (admin: pg.Client) => ((await admin.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")).rowCount ?? 0) > 0;
  const bare = (version: number) => ({ version, hash: `h${version}`, model: new Uint8Array([version]), optimizer: null, createdAt: version, updateCount: 0 });

  it('a connection lost in a transaction (backend terminated, idle-in-transaction timeout) fails that call with a StorageError; the process carries on, and so does the store', async () => {
    const database = await freshDatabase();
    let hook: (() => Promise<void>) | undefined;
    const s = await PostgresStorage.open(database, { statementTimeoutMs: 1_000, beforeCommit: () => hook?.() });
    const admin = new pg.Client({ connectionString: database });
    await admin.connect();
    const storageError = (pattern: RegExp) => (e: unknown) => isStorageError(e) && !(e instanceof StorageConflictError) && pattern.test((e as Error).message);
    try {
      // Ended between two statements of the transaction (no statement in flight: before the fix,
      // an unhandled 'error' event on the checked-out client that ended the process).
      hook = async () => {
        await terminateOthers(admin);
        await new Promise((r) => setTimeout(r, 200));
      };
      await assert.rejects(s.publish(bare(0), []), storageError(/PostgreSQL publish version failed \(.*\): terminating connection due to administrator command/));
      hook = undefined;
      assert.equal(await s.latest(), undefined, 'nothing was committed');
      await s.publish(bare(0), []);
      // Ended while waiting for the publish lock a peer holds (a statement in flight).
      await admin.query('SELECT pg_advisory_lock($1)', [0x6c726563]);
      const waiting = s.publish(bare(1), []);
      // Its refusal is awaited from the start: the termination can reject it before terminateOthers
      // returns, which left the rejection unhandled for a moment (a CI failure, stop 40).
      const refused = assert.rejects(waiting, storageError(/PostgreSQL publish version failed .*terminating connection due to administrator command/));
      await waitFor(() => someoneWaits(admin), 'the publish to wait for the lock');
      await terminateOthers(admin);
      await refused;
      await admin.query('SELECT pg_advisory_unlock($1)', [0x6c726563]);
      await s.publish(bare(1), []);
      // A transaction left idle (this process stalled mid-publish) is ended by PostgreSQL after the
      // statement timeout, which frees the publish lock for the other processes.
      hook = () => new Promise((r) => setTimeout(r, 2_500));
      await assert.rejects(s.publish(bare(2), []), storageError(/idle-in-transaction timeout/));
      hook = undefined;
      assert.equal((await admin.query('SELECT pg_try_advisory_lock($1) AS got', [0x6c726563])).rows[0].got, true, 'the publish lock is free');
      await admin.query('SELECT pg_advisory_unlock($1)', [0x6c726563]);
      assert.equal((await s.latest())!.version, 1);
      await s.publish(bare(2), []);
      assert.equal((await s.latest())!.version, 2);
    } finally {
      await admin.end();
      await s.close();
    }
  });

  it('a request whose connection PostgreSQL ends mid-transaction is answered 503 storage-unavailable; the server carries on', async () => {
    const database = await freshDatabase();
    const srv = await startServer({ ...opts, minClients: 2, database, initialTable: initialTable(), secureAggregation: true });
    const admin = new pg.Client({ connectionString: database });
    await admin.connect();
    const { secAggKeyPair } = await import('../../src/federated/secagg.js');
    const join = async () => fetch(`${srv.url}/v1/secagg/join`, { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> });
    try {
      // A peer's join holds the cohort lock; this server's join waits for it, and its session ends.
      await admin.query('SELECT pg_advisory_lock($1)', [0x6c727361]);
      const joining = join();
      await waitFor(() => someoneWaits(admin), 'the join to wait for the cohort lock');
      await terminateOthers(admin);
      const r = await joining;
      assert.equal(r.status, 503);
      assert.equal(((await r.json()) as { reason: string }).reason, 'storage-unavailable');
      await admin.query('SELECT pg_advisory_unlock($1)', [0x6c727361]);
      const again = await join();
      const text = await again.text();
      assert.equal(again.status, 200, text);
      assert.equal((JSON.parse(text) as { index: number }).index, 0);
    } finally {
      await admin.end();
      await srv.close();
    }
  });

  it('a database that stops answering (no RST, no FIN: a partition, a dead host) fails each call after the statement timeout plus a margin, and the connections go; the store works once it answers again', async () => {
    const database = await freshDatabase();
    // A TCP relay to the database that can swallow everything, both ways.
    let hole = false;
    const sockets = new Set<net.Socket>();
    const relay = net.createServer((c) => {
      const up = net.connect(Number(new URL(server.url).port), '127.0.0.1');
      for (const sock of [c, up]) {
        sockets.add(sock);
        sock.on('error', () => undefined);
        sock.on('close', () => sockets.delete(sock));
      }
      c.on('data', (d) => void (hole || up.write(d)));
      up.on('data', (d) => void (hole || c.write(d)));
      c.on('close', () => up.destroy());
      up.on('close', () => c.destroy());
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', () => r()));
    const relayed = new URL(database);
    relayed.port = String((relay.address() as net.AddressInfo).port);
    const s = await PostgresStorage.open(relayed.toString(), { statementTimeoutMs: 300 });
    try {
      await s.publish(bare(0), []);
      // Two connections in the pool, idle.
      await Promise.all([s.pendingCount(), s.pendingCount()]);
      const open = sockets.size;
      assert.equal(open, 4, 'two connections, relayed');
      hole = true;
      const calls = Promise.allSettled([s.pendingCount(), s.publish(bare(1), [])]);
      // Before the fix both waited for good; a bound, so that this test fails instead of hanging.
      const settled = await Promise.race([calls, new Promise<null>((r) => setTimeout(() => r(null), 4 * QUERY_TIMEOUT_MARGIN_MS).unref())]);
      assert.ok(settled, 'the calls are still waiting');
      for (const r of settled) {
        assert.equal(r.status, 'rejected');
        const e = (r as PromiseRejectedResult).reason as Error;
        assert.ok(isStorageError(e), String(e));
        assert.match(e.message, new RegExp(`no answer from the database within ${300 + QUERY_TIMEOUT_MARGIN_MS} ms`));
      }
      await waitFor(async () => sockets.size === 0, `the connections that did not answer to be closed (${open} relayed sockets)`);
      hole = false;
      await s.publish(bare(1), []);
      assert.equal((await s.latest())!.version, 1);
    } finally {
      // The relayed connections first: a call still waiting on one (before the fix) then fails, and
      // the pool can end.
      for (const sock of sockets) sock.destroy();
      relay.close();
      await s.close();
    }
  });

  it("an aborted cohort's uploads are deleted also under a collation that sorts ';' before ':' (ICU en-US)", async (t) => {
    const name = `t${++n}`;
    const created = await withClient(server.url, async (admin) => {
      for (const how of ["LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'", "LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8'"]) {
        try {
          await admin.query(`CREATE DATABASE ${name} TEMPLATE template0 ENCODING 'UTF8' ${how}`);
          return true;
        } catch {
          // not available in this build of PostgreSQL, or this locale is not installed
        }
      }
      return false;
    });
    if (!created) return t.skip('neither ICU nor the en_US.UTF-8 locale is available to this PostgreSQL');
    const database = server.url.replace(/\/postgres$/, `/${name}`);
    assert.equal((await withClient(database, (db) => db.query<{ before: boolean }>("SELECT ';' < ':' AS before"))).rows[0]!.before, true, "this database's collation sorts ';' before ':'");
    let now = 1_000_000;
    const s = await PostgresStorage.open(database);
    try {
      const cohorts = s.cohortStore({ cohortSize: 2, bits: 16, step: 1 / 1024, degree: 2 }, 1_000, () => now);
      const a = await cohorts.join(new Uint8Array(65).fill(1));
      await cohorts.join(new Uint8Array(65).fill(2));
      assert.ok(!('error' in a));
      const id = a.cohort.id;
      // Member 1's upload recorded; member 0's stored, but its cohort never recorded it (the process died in between).
      const one = await s.addUpdate({ nonce: `${id}:1`, baseVersion: 0, receivedAt: now, body: new Uint8Array([1]) });
      assert.ok(one !== 'replayed');
      assert.equal(await cohorts.markSubmitted(id, 1, one.id), 'recorded');
      await s.addUpdate({ nonce: `${id}:0`, baseVersion: 0, receivedAt: now, body: new Uint8Array([0]) });
      await s.addUpdate({ nonce: 'cd'.repeat(16), baseVersion: 0, receivedAt: now, body: new Uint8Array([2]) });
      now += 5_000;
      assert.deepEqual((await cohorts.sweep()).aborted.map((x) => x.id), [id]);
      assert.deepEqual((await s.pending()).map((u) => u.nonce), ['cd'.repeat(16)], "both of the cohort's uploads went, nothing else");
    } finally {
      await s.close();
    }
  });

  it('a full cohort with every upload in that is never published (its publish keeps failing) is aborted after PUBLISH_GRACE upload timeouts, its uploads deleted', async () => {
    const s = await PostgresStorage.open(await freshDatabase());
    let now = 1_000_000;
    const cohorts = s.cohortStore({ cohortSize: 2, bits: 16, step: 1 / 1024, degree: 2 }, { fillMs: 3_600_000, uploadMs: 60_000 }, () => now);
    try {
      const joined = [await cohorts.join(new Uint8Array(65).fill(1)), await cohorts.join(new Uint8Array(65).fill(2))];
      const id = (joined[0] as { cohort: { id: string } }).cohort.id;
      const marks = [];
      for (const i of [0, 1]) {
        const r = await s.addUpdate({ nonce: `${id}:${i}`, baseVersion: 0, receivedAt: now, body: new Uint8Array(4) });
        assert.ok(r !== 'replayed');
        marks.push(await cohorts.markSubmitted(id, i, r.id));
      }
      assert.deepEqual(marks, ['recorded', 'complete']);
      now += 60_001; // past the upload deadline: complete, so being published, not late
      assert.deepEqual((await cohorts.sweep()).aborted, []);
      assert.equal((await cohorts.info(id))!.status, 'ready');
      now += (PUBLISH_GRACE - 1) * 60_000;
      const swept = (await cohorts.sweep()).aborted;
      assert.deepEqual(swept.map((x) => [x.id, x.reason, x.updateIds.length]), [[id, `all 2 members uploaded, but the cohort could not be published within ${PUBLISH_GRACE * 60_000} ms`, 2]]);
      assert.equal((await cohorts.info(id))!.status, 'aborted');
      assert.equal(await s.pendingCount(), 0);
    } finally {
      await s.close();
    }
  });
});
