import { strict as assert } from 'node:assert';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { Command } from 'commander';
import { StorageError, ValidationError } from '../../src/errors.js';
import { createServer, startServer, SqliteStorage, type RobustName, type ServerOptions } from '../../src/server/index.js';
import { register as registerServe } from '../../src/server/serve-command.js';
import { StorageConflictError } from '../../src/server/storage.js';
import { createItemTable } from '../../src/model/item-table.js';
import { honestUpdate, initialTable, post, pull, quiet, spawnServe, DIM, IDS } from './server-helpers.js';

const opts = { port: 0, minClients: 3, noiseMultiplier: 0, rateLimit: false as const, log: quiet };

test('SQLite: pending updates, versions and nonces survive a restart', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-'));
  try {
    let server = await startServer({ ...opts, dataDir: dir, initialTable: initialTable() });
    const v0 = await pull(server.url);
    const bodies = [1, 2, 3, 4].map((s) => honestUpdate(v0, s));
    for (const b of bodies.slice(0, 2)) assert.equal((await post(server.url, b)).status, 202);
    await server.close();

    server = await startServer({ ...opts, dataDir: dir, initialTable: initialTable() });
    assert.equal(server.rounds.pending, 2);
    // The nonce survived the restart: another body under it is a replay; the same body again (its
    // answer lost) is the pending update, counted once.
    const sameNonce = honestUpdate(v0, 9);
    sameNonce.set(bodies[0]!.subarray(64, 80), 64);
    assert.equal((await post(server.url, sameNonce)).json.reason, 'replayed');
    assert.deepEqual([(await post(server.url, bodies[0]!)).status, server.rounds.pending], [202, 2]);
    assert.equal((await post(server.url, bodies[2]!)).json.published, 1);
    assert.equal((await post(server.url, bodies[0]!)).json.reason, 'replayed', 'once aggregated, the same body is a replay');
    const v1 = await pull(server.url);
    const v1bytes = new Uint8Array(await (await fetch(`${server.url}/v1/model`)).arrayBuffer());
    assert.equal((await post(server.url, bodies[3]!)).status, 202);
    await server.close();

    // No catalog needed once the store has a model.
    server = await startServer({ ...opts, dataDir: dir });
    assert.equal(server.rounds.version, 1);
    assert.equal(server.rounds.pending, 1);
    assert.deepEqual(new Uint8Array(await (await fetch(`${server.url}/v1/model`)).arrayBuffer()), v1bytes);
    assert.deepEqual((await pull(server.url)).hash, v1.hash);
    await server.close();

    await assert.rejects(startServer({ ...opts, dataDir: dir, initialTable: initialTable(IDS.slice(1)) }), (e: unknown) =>
      e instanceof StorageError && /does not match the catalog \(\d+ items × \d+\); item 0 is '[^']+' in the store and '[^']+' in the catalog \(the ids or their order changed\)/.test(e.message));
    // The same catalog at another dim: the message says which --dim the store was made with.
    await assert.rejects(startServer({ ...opts, dataDir: dir, initialTable: initialTable(IDS, DIM + 1) }), (e: unknown) =>
      e instanceof StorageError && new RegExp(`or with --dim ${DIM} as it was made`).test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SQLite: a failure inside the publish transaction leaves the last version whole and the updates pending', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-'));
  try {
    let fail = true;
    let server = await startServer({
      ...opts,
      dataDir: dir,
      initialTable: initialTable(),
      sqlite: { beforeCommit: (what) => { if (what === 'publish' && fail) throw new Error('injected crash'); } },
    });
    const v0 = await pull(server.url);
    for (const s of [1, 2, 3]) assert.equal((await post(server.url, honestUpdate(v0, s))).status, 202); // acked: stored
    assert.equal(server.rounds.version, 0);
    assert.equal(server.rounds.pending, 3);
    await server.close();
    fail = false;
    server = await startServer({ ...opts, dataDir: dir }); // recovery finishes the interrupted round
    assert.equal(server.rounds.version, 1);
    assert.equal(server.rounds.pending, 0);
    await server.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SQLite adapter: publish is compare-and-set on the version and on pending updates', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-'));
  const s = SqliteStorage.open(dir);
  try {
    const v = (version: number) => ({ version, hash: 'h', model: new Uint8Array([version]), optimizer: null, createdAt: 0, updateCount: 0 });
    await assert.rejects(s.publish(v(1), []), StorageConflictError);
    await s.publish(v(0), []);
    const a = await s.addUpdate({ nonce: 'aa', baseVersion: 0, receivedAt: 1, body: new Uint8Array([1, 2]) });
    assert.deepEqual(await s.addUpdate({ nonce: 'aa', baseVersion: 0, receivedAt: 2, body: new Uint8Array([3]) }), 'replayed');
    assert.ok(a !== 'replayed');
    await assert.rejects(s.publish(v(1), [a.id, 999]), StorageConflictError);
    assert.equal(await s.pendingCount(), 1); // the failed publish changed nothing
    assert.equal((await s.latest())!.version, 0);
    await s.publish(v(1), [a.id]);
    assert.equal(await s.pendingCount(), 0);
    await assert.rejects(s.publish(v(2), [a.id]), StorageConflictError);
    assert.equal(await s.versionHash(1), 'h');
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SQLite: one data dir serves one process: a second storage on it fails naming the dir, until the first is closed; readers are not locked out', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-'));
  try {
    const first = SqliteStorage.open(dir);
    const inUse = (e: unknown) => e instanceof StorageError && e.message.includes(`the data dir ${dir} is in use by another localrec serve`);
    assert.throws(() => SqliteStorage.open(dir), inUse);
    await assert.rejects(startServer({ ...opts, dataDir: dir, initialTable: initialTable() }), inUse);
    // The first storage is unaffected, and the database can still be read (a backup, sqlite3).
    await first.publish({ version: 0, hash: 'h', model: new Uint8Array([1]), optimizer: null, createdAt: 0, updateCount: 0 }, []);
    const reader = new Database(join(dir, 'localrec.sqlite'), { readonly: true });
    assert.equal((reader.prepare('SELECT COUNT(*) AS n FROM versions').get() as { n: number }).n, 1);
    reader.close();
    await first.close();
    const second = SqliteStorage.open(dir);
    assert.equal((await second.latest())?.version, 0);
    await second.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SQLite: a second localrec serve on a data dir in use exits with one line naming it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-'));
  const catalog = join(dir, 'catalog.json');
  writeFileSync(catalog, JSON.stringify({ items: IDS.map((id, i) => ({ id, popularity: i })) }));
  const flags = ['--dim', String(DIM), '--min-clients', '3', '--noise', '0', '--rate-limit', '0'];
  const first = await spawnServe(join(dir, 'data'), catalog, flags);
  try {
    const second = await spawnServe(join(dir, 'data'), catalog, flags).then(
      () => assert.fail('a second serve on the same data dir started'),
      (e: { stderr: string; code: number }) => e,
    );
    assert.equal(second.code, 1);
    assert.match(second.stderr, new RegExp(`^localrec: StorageError: the data dir ${join(dir, 'data')} is in use by another localrec serve`));
    assert.equal((await fetch(`${first.url}/v1/health`)).status, 200, 'the first one keeps serving');
  } finally {
    first.proc.kill('SIGTERM');
    await first.exited;
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an explicit --data-dir wins over LOCALREC_DATABASE_URL from the environment', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-env-'));
  const catalog = join(dir, 'catalog.json');
  writeFileSync(catalog, JSON.stringify({ items: IDS.map((id, i) => ({ id, popularity: i })) }));
  // Nothing listens on port 1: had the variable won, the start would fail.
  const c = await spawnServe(join(dir, 'data'), catalog, ['--dim', String(DIM), '--rate-limit', '0'], { LOCALREC_DATABASE_URL: 'postgres://u:p@127.0.0.1:1/db' });
  try {
    assert.ok(existsSync(join(dir, 'data', 'localrec.sqlite')), 'the store is the SQLite file in --data-dir');
    assert.equal((await fetch(`${c.url}/v1/health`)).status, 200);
  } finally {
    c.proc.kill('SIGTERM');
    await c.exited;
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a refused start leaves nothing in the data dir: a bad option, backlog or a port in use stores no version 0 that a corrected start could not change', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-refused-'));
  const busy = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), log: quiet });
  try {
    const data = join(dir, 'data');
    const port = Number(new URL(busy.url).port);
    const cases: Array<[ServerOptions, RegExp]> = [
      [{ port: 0, robust: 'foo' as RobustName }, /^ValidationError: options\.robust: must be/],
      [{ port: 0, rateLimit: { perMinute: 60, burst: 0 } }, /^ValidationError: options\.rateLimit\.burst:/],
      [{ port: 0, backlog: 0 }, /^ValidationError: options\.backlog: must be a positive integer/],
      [{ port: 0, shutdownGraceMs: -1 }, /^ValidationError: options\.shutdownGraceMs:/],
      [{ port }, new RegExp(`^ValidationError: options\\.port: ${port} on 127\\.0\\.0\\.1 is in use`)],
    ];
    for (const [opts, re] of cases) {
      await assert.rejects(startServer({ dataDir: data, initialTable: initialTable(IDS, 32), log: quiet, ...opts }), re, JSON.stringify(opts));
      assert.equal(existsSync(data), false, `${JSON.stringify(opts)}: nothing created`);
    }
    // The corrected start is free to pick another shape.
    const ok = await startServer({ port: 0, dataDir: data, initialTable: initialTable(IDS, 8), log: quiet });
    assert.equal(ok.rounds.config.dim, 8);
    await ok.close();
  } finally {
    await busy.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a data dir without a model: createServer without a table creates nothing, and serve without --catalog names --catalog, on an empty database too', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-nomodel-'));
  try {
    const fresh = join(dir, 'fresh');
    await assert.rejects(createServer({ dataDir: fresh, log: quiet }), (e: unknown) => e instanceof ValidationError && e.field === 'options.initialTable');
    assert.equal(existsSync(fresh), false, 'no database or lock file was created');
    // An empty database (a start that failed before storing a model) holds no model either.
    const empty = join(dir, 'empty');
    await SqliteStorage.open(empty).close();
    const program = new Command().exitOverride();
    registerServe(program);
    await assert.rejects(program.parseAsync(['node', 'localrec', 'serve', '--port', '0', '--data-dir', empty]), (e: unknown) =>
      e instanceof ValidationError && e.message === `--catalog: is required: ${empty} holds no model yet, and the first start builds it from the catalog (localrec serve --catalog catalog.json)`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SQLite: a restart with another --aggregator refuses the pending updates made for the one they were sent to, naming it (the bytes do not say which); fedadam takes fedavg\'s; --discard-pending deletes them', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-aggregator-'));
  const logged: string[] = [];
  const open = (aggregator: 'fedavg' | 'fedadam' | 'subspace', extra: Partial<ServerOptions> = {}) =>
    startServer({ ...opts, dataDir: dir, initialTable: initialTable(), trainBiases: false, aggregator, log: (l) => logged.push(l), ...extra });
  // (A start that is not refused is closed, so that the failed assertion does not leave it listening.)
  const refused = (aggregator: 'subspace', message: RegExp) => assert.rejects(open(aggregator).then((s) => s.close()), message);
  try {
    let server = await open('fedavg');
    const v0 = await pull(server.url);
    for (const seed of [1, 2]) assert.equal((await post(server.url, honestUpdate(v0, seed, { part: { rows: IDS.length, biases: false } }))).status, 202);
    await server.close();
    // Before: it started, and orthonormalized the two locally trained deltas as subspace steps
    // (the published factors went from −0.05 to −6.19).
    await refused(
      'subspace',
      /the store's 2 pending updates were made for other round settings than this server's \(--aggregator: fedavg \(devices send locally trained deltas\) in the store, subspace \(subspace steps\) here\).*restart with the store's settings until a round has published them.*--discard-pending/,
    );
    // FedAdam's devices send the same deltas: its start takes them.
    server = await open('fedadam');
    assert.equal(server.rounds.pending, 2);
    await server.close();
    await refused('subspace', /--aggregator: fedadam \(devices send locally trained deltas\) in the store, subspace/);
    server = await open('subspace', { discardPending: true });
    try {
      assert.equal(server.rounds.pending, 0);
      assert.ok(logged.some((l) => /discarded 2 pending updates made for other round settings \(--discard-pending\): --aggregator: fedadam/.test(l)), logged.join('\n'));
    } finally {
      await server.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SQLite: a store from before round settings were kept, holding pending updates of two shapes (two instances under different --train-rows), starts with either and publishes without the others', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-mixed-'));
  const logged: string[] = [];
  const half = { rows: 20, biases: true };
  try {
    let server = await startServer({ ...opts, dataDir: dir, initialTable: initialTable() });
    const v0 = await pull(server.url);
    for (const seed of [1, 2]) assert.equal((await post(server.url, honestUpdate(v0, seed))).status, 202);
    await server.close();
    // The other instance's two updates of 20 rows, and no settings: the store as that release left it.
    const storage = SqliteStorage.open(dir);
    for (const seed of [3, 4]) await storage.addUpdate({ nonce: `${seed}`.repeat(32), baseVersion: 0, receivedAt: 0, body: honestUpdate(v0, seed, { part: half }) });
    await storage.close();
    const db = new Database(join(dir, 'localrec.sqlite'));
    db.prepare("DELETE FROM meta WHERE key = 'round-settings'").run();
    db.close();
    // Before: either setting was refused (pending updates of the other shape), and every round failed.
    server = await startServer({ ...opts, dataDir: dir, initialTable: initialTable(), trainRows: half.rows, log: (l) => logged.push(l) });
    try {
      assert.deepEqual([server.rounds.version, server.rounds.pending], [0, 2], 'the whole-table updates left out at the round its start tried');
      assert.ok(logged.some((l) => /left 2 pending updates out of the round and deleted them.*\(40 rows, and this server trains 20 \(--train-rows\): 2\)/.test(l)), logged.join('\n'));
      const r = await post(server.url, honestUpdate(v0, 5, { part: half }));
      assert.equal(r.json.published, 1, JSON.stringify(r.json));
    } finally {
      await server.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SQLite: frozen biases keep the stored values; a --catalog with new popularity changes nothing, and the log says so', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-sqlite-biases-'));
  const logged: string[] = [];
  try {
    let server = await startServer({ ...opts, dataDir: dir, initialTable: initialTable(), trainBiases: false });
    await server.close();
    const recounted = createItemTable(IDS, DIM, { seed: 11, popularity: IDS.map((_, i) => IDS.length - i) });
    server = await startServer({ ...opts, dataDir: dir, initialTable: recounted, trainBiases: false, log: (l) => logged.push(l) });
    try {
      assert.deepEqual((await pull(server.url)).table.bias, initialTable().bias, 'the stored biases');
      assert.ok(logged.some((l) => /the catalog's popularity gives 40 of 40 items other biases than the stored model's, which stay as they are/.test(l)), logged.join('\n'));
    } finally {
      await server.close();
    }
    // The same catalog again: nothing to say.
    logged.length = 0;
    server = await startServer({ ...opts, dataDir: dir, initialTable: initialTable(), trainBiases: false, log: (l) => logged.push(l) });
    await server.close();
    assert.deepEqual(logged, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
