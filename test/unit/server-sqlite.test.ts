import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { StorageError } from '../../src/errors.js';
import { startServer, SqliteStorage } from '../../src/server/index.js';
import { StorageConflictError } from '../../src/server/storage.js';
import { honestUpdate, initialTable, post, pull, quiet, IDS } from './server-helpers.js';

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
    assert.equal((await post(server.url, bodies[0]!)).json.reason, 'replayed');
    assert.equal((await post(server.url, bodies[2]!)).json.published, 1);
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

    await assert.rejects(startServer({ ...opts, dataDir: dir, initialTable: initialTable(IDS.slice(1)) }), (e: unknown) => e instanceof StorageError && /does not match the catalog/.test(e.message));
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
