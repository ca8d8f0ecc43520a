/**
 * What the server keeps of an update once it is averaged (docs/SERVER.md "What the server keeps"):
 * not its body (not even in the SQLite file's free pages), not its arrival time, and for a masked
 * upload not which cohort member sent it.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { encodeFixedPoint, encodeMaskedUpdate, secAggKeyPair } from '../../src/federated/secagg.js';
import { decodeModel } from '../../src/federated/wire.js';
import { createServer } from '../../src/server/index.js';
import { DIM, honestUpdate, IDS, inDataDir, initialTable, sqliteFileBytes } from './server-helpers.js';

/** How many of `body`'s 64-byte chunks appear anywhere in the data dir's SQLite files. */
function bytesLeft(dir: string, body: Uint8Array): number {
  const files = sqliteFileBytes(dir);
  let found = 0;
  for (let o = 0; o + 64 <= body.length; o += 64) if (files.some((raw) => raw.includes(Buffer.from(body.subarray(o, o + 64))))) found += 64;
  return found;
}

/**
 * Which of `bodies` can still be found in any file of the data dir (the database, its -wal and
 * -shm, the lock), by a byte run no other row has: the update's nonce and the first 32 bytes of its
 * payload.
 */
function bodiesIn(dir: string, bodies: readonly Uint8Array[]): number[] {
  const files = readdirSync(dir).map((f) => readFileSync(join(dir, f)));
  return bodies.flatMap((b, i) => (files.some((raw) => raw.includes(Buffer.from(b.subarray(64, 112)))) ? [i] : []));
}


/** Reads the data dir's SQLite file as it was left (read-only), closed after. */
function inDb<T>(dir: string, f: (db: Database.Database) => T): T {
  const db = new Database(join(dir, 'localrec.sqlite'), { readonly: true });
  try {
    return f(db);
  } finally {
    db.close();
  }
}

test('SQLite: an averaged update leaves no body bytes in the file, and its row no arrival time', () =>
  inDataDir('localrec-retention-', async (dir) => {
    const parts = await createServer({ dataDir: dir, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
    const view = { table: decodeModel(parts.rounds.modelBytes('float32')).table, hash: Uint8Array.from(Buffer.from(parts.rounds.hash, 'hex')), config: parts.rounds.config };
    const bodies = [1, 2, 3].map((seed) => honestUpdate(view, seed));
    for (const b of bodies) assert.equal((await parts.app.request('/v1/updates', { method: 'POST', body: b as Uint8Array<ArrayBuffer> })).status, 202);
    assert.equal(parts.rounds.version, 1);
    await parts.storage.close();
    for (const b of bodies) assert.equal(bytesLeft(dir, b), 0, 'no 64-byte chunk of an averaged body is left in the file');
    const rows = inDb(dir, (db) => db.prepare('SELECT received_at, body IS NULL AS gone, aggregated_into FROM updates').all());
    assert.deepEqual(rows, [0, 1, 2].map(() => ({ received_at: 0, gone: 1, aggregated_into: 1 })));
  }));

test('SQLite: while the server runs, averaged bodies are in no file of the data dir (the WAL is emptied after each publish), a reader only delays that', () =>
  inDataDir('localrec-retention-', async (dir) => {
    // A shop-sized update (≈ 60 KB, overflow pages), as on a real server.
    const ids = Array.from({ length: 4000 }, (_, i) => `item-${i}`);
    const parts = await createServer({ dataDir: dir, initialTable: initialTable(ids, 16), minClients: 3, clip: 1, noiseMultiplier: 1, maxStaleness: 100, rateLimit: false, log: () => {} });
    try {
      const db = (parts.storage as unknown as { db: Database.Database }).db;
      assert.equal(db.pragma('secure_delete', { simple: true }), 1, 'secure_delete is on for the connection that writes');
      const view = { table: decodeModel(parts.rounds.modelBytes('float32')).table, hash: Uint8Array.from(Buffer.from(parts.rounds.hash, 'hex')), config: parts.rounds.config };
      const bodies = Array.from({ length: 10 }, (_, i) => honestUpdate(view, i + 1));
      const postAll = async (bs: Uint8Array[]) => {
        for (const b of bs) assert.equal((await parts.app.request('/v1/updates', { method: 'POST', body: b as Uint8Array<ArrayBuffer> })).status, 202);
      };
      await postAll(bodies.slice(0, 8));
      assert.equal(parts.rounds.version, 2);
      // The pending ones are found (the scan works); the six averaged ones nowhere.
      assert.deepEqual(bodiesIn(dir, bodies.slice(0, 8)), [6, 7]);

      // A reader (a backup, sqlite3) in the middle of a read when a round publishes: the publish
      // does not wait for it, and the WAL is emptied with the next write after it is done.
      const reader = new Database(join(dir, 'localrec.sqlite'), { readonly: true });
      try {
        reader.prepare('BEGIN').run();
        const before = (reader.prepare('SELECT COUNT(*) AS n FROM versions').get() as { n: number }).n;
        await postAll(bodies.slice(8, 9));
        assert.equal(parts.rounds.version, 3, 'published while the reader held its snapshot');
        assert.equal((reader.prepare('SELECT COUNT(*) AS n FROM versions').get() as { n: number }).n, before, 'the reader still reads its snapshot');
        reader.prepare('COMMIT').run();
      } finally {
        reader.close();
      }
      await postAll(bodies.slice(9, 10));
      assert.deepEqual(bodiesIn(dir, bodies.slice(0, 10)), [9], 'only the pending update is left');
    } finally {
      await parts.storage.close();
    }
  }));

test('SQLite, secure aggregation: once a cohort is averaged, no stored row says which member sent which upload', () =>
  inDataDir('localrec-retention-', async (dir) => {
    const parts = await createServer({ dataDir: dir, initialTable: initialTable(), minClients: 3, noiseMultiplier: 1, secureAggregation: true, rateLimit: false, log: () => {} });
    const sa = parts.rounds.config.secureAggregation!;
    const members = [];
    for (let i = 0; i < 3; i++) members.push((await (await parts.app.request('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> })).json()) as { cohort: string; index: number; token: string });
    for (const m of members) {
      // (Unmasked: the masks would cancel in the sum anyway.)
      const body = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), index: m.index, cohortSize: 3, bits: sa.bits, step: sa.step, baseVersion: 0, values: encodeFixedPoint(new Float64Array(IDS.length * (DIM + 1)).fill(0.01), sa.step, sa.bits, () => 0.5) });
      assert.equal((await parts.app.request('/v1/secagg/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'X-Localrec-Cohort-Token': m.token } })).status, 202);
    }
    assert.equal(parts.rounds.version, 1);
    await parts.storage.close();
    const rows = inDb(dir, (db) => db.prepare('SELECT id, nonce, received_at FROM updates ORDER BY id').all() as Array<{ id: number; nonce: string; received_at: number }>);
    assert.deepEqual(rows.map((r) => [r.nonce, r.received_at]), rows.map((r) => [`averaged:${r.id}`, 0]));
  }));

test('SQLite: rows an earlier release kept (arrival times, cohort:member nonces of averaged updates) are cleared at open', () =>
  inDataDir('localrec-retention-', async (dir) => {
    const { SqliteStorage } = await import('../../src/server/sqlite-storage.js');
    const first = await createServer({ dataDir: dir, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
    await first.storage.close();
    // As an earlier release left them: averaged, with their arrival time and member nonce.
    const raw = new Database(join(dir, 'localrec.sqlite'));
    const insert = raw.prepare('INSERT INTO updates (nonce, base_version, received_at, body, aggregated_into) VALUES (?, 0, ?, NULL, 0)');
    insert.run('ab'.repeat(16) + ':0', 1_800_000_000_123);
    insert.run('cd'.repeat(16), 1_800_000_000_456);
    raw.prepare("INSERT INTO updates (nonce, base_version, received_at, body) VALUES ('ef', 0, 1800000000789, x'01')").run();
    raw.close();
    const store = SqliteStorage.open(dir);
    await store.close();
    const { rows, vacuumed } = inDb(dir, (db) => ({
      rows: db.prepare('SELECT id, nonce, received_at FROM updates ORDER BY id').all() as Array<{ id: number; nonce: string; received_at: number }>,
      vacuumed: db.prepare("SELECT value FROM meta WHERE key = 'secure-delete-vacuumed'").get(),
    }));
    assert.deepEqual(
      rows.map((r) => [r.nonce, r.received_at]),
      [[`averaged:${rows[0]!.id}`, 0], ['cd'.repeat(16), 0], ['ef', 1_800_000_000_789]],
      'averaged rows cleared (a plain nonce kept against replays); the pending one untouched',
    );
    assert.ok(vacuumed, 'rebuilt once with secure_delete on, and noted');
  }));
