/**
 * A publish that fails for want of disk space: while it is owed, uploads are refused (503
 * `storage-unavailable`, saying why) so that the room an operator frees goes to the publish, not
 * to more pending updates; reads keep working; `/v1/health` says a publish is owed; the SQLite WAL
 * gives its room back after each failed attempt; once a publish succeeds uploads are taken again,
 * and no accepted update is lost.
 *
 * The full disk is simulated without a mount: the SQLite store's commit hook (or a memory store's
 * publish) throws SQLITE_FULL, SQLite's answer on ENOSPC, on the publish while `full` is set.
 */
import { strict as assert } from 'node:assert';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { StorageError } from '../../src/errors.js';
import { encodeMaskedUpdate, secAggKeyPair } from '../../src/federated/secagg.js';
import { decodeUpdateHeader, toHex } from '../../src/federated/wire.js';
import { createServer, MemoryStorage, SqliteStorage, startServer } from '../../src/server/index.js';
import { isDiskFull } from '../../src/server/storage.js';
import { checkStore, DIM, honestUpdate, IDS, inDataDir, initialTable, pull } from './server-helpers.js';

const OWED = /a publish is owed and the disk is full/;

const diskFull = () => Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });

const nonceOf = (body: Uint8Array): string => toHex(decodeUpdateHeader(body).nonce);

async function upload(url: string, body: Uint8Array): Promise<{ status: number; retryAfter: string | null; json: Record<string, unknown> }> {
  const res = await fetch(`${url}/v1/updates`, { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream' } });
  return { status: res.status, retryAfter: res.headers.get('retry-after'), json: (await res.json()) as Record<string, unknown> };
}

async function getJson(url: string, path: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${url}${path}`);
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** An SQLite store whose publishes fail as on a full disk while `disk.full` is set; `disk.publishAttempts` counts them. */
function sqliteWithDisk(dir: string): { storage: SqliteStorage; disk: { full: boolean; publishAttempts: number } } {
  const disk = { full: false, publishAttempts: 0 };
  const storage = SqliteStorage.open(dir, {
    beforeCommit: (what) => {
      if (what !== 'publish') return;
      disk.publishAttempts++;
      if (disk.full) throw diskFull();
    },
  });
  return { storage, disk };
}

/** Every accepted update pending (one) or in version 1 (three), and no row of a refused one. */
async function assertStored(dir: string, acked: string[], refused: string[]): Promise<void> {
  assert.deepEqual(await checkStore(dir, acked), { versions: 2, pending: 1 });
  const db = new Database(join(dir, 'localrec.sqlite'), { readonly: true });
  try {
    assert.equal((db.prepare('SELECT update_count AS n FROM versions WHERE version = 1').get() as { n: number }).n, 3);
    for (const n of refused) assert.equal(db.prepare('SELECT 1 FROM updates WHERE nonce = ?').get(n), undefined, 'a refused upload left no row');
  } finally {
    db.close();
  }
}

test('isDiskFull: SQLITE_FULL, ENOSPC, EDQUOT and PostgreSQL 53100, through causes; not other storage errors', () => {
  assert.ok(isDiskFull(new StorageError('SQLite publish version failed: database or disk is full', { cause: diskFull() })));
  assert.ok(isDiskFull(new StorageError('x', { cause: Object.assign(new Error('could not extend file'), { code: '53100' }) })));
  assert.ok(isDiskFull(Object.assign(new Error('write failed'), { code: 'ENOSPC' })));
  assert.ok(isDiskFull(Object.assign(new Error('write failed'), { code: 'EDQUOT' })));
  assert.ok(!isDiskFull(new StorageError('SQLite store update failed: attempt to write a readonly database', { cause: Object.assign(new Error('attempt to write a readonly database'), { code: 'SQLITE_READONLY' }) })));
  assert.ok(!isDiskFull(new Error('the aggregate is out of range')));
  assert.ok(!isDiskFull(undefined));
});

test('isDiskFull: a SQLite I/O error (extended code) counts only when it says ENOSPC: in its message, or its errno', () => {
  const ioerr = (code: string, message: string, more: Record<string, unknown> = {}) => Object.assign(new Error(message), { code, ...more });
  assert.ok(isDiskFull(ioerr('SQLITE_IOERR_WRITE', 'disk I/O error: No space left')));
  assert.ok(isDiskFull(ioerr('SQLITE_IOERR_FSYNC', 'disk I/O error (ENOSPC)')));
  assert.ok(isDiskFull(new StorageError('SQLite publish version failed: disk I/O error', { cause: ioerr('SQLITE_IOERR_SHMSIZE', 'disk I/O error', { errno: 28 }) })));
  assert.ok(isDiskFull(ioerr('SQLITE_IOERR', 'disk I/O error', { systemErrno: 'ENOSPC' })));
  // Any other I/O error is not a full disk: a failing disk, a file gone, another errno.
  assert.ok(!isDiskFull(ioerr('SQLITE_IOERR_WRITE', 'disk I/O error')));
  assert.ok(!isDiskFull(ioerr('SQLITE_IOERR_READ', 'disk I/O error', { errno: 5 })));
  assert.ok(!isDiskFull(new StorageError('SQLite store update failed: disk I/O error', { cause: ioerr('SQLITE_IOERR_FSYNC', 'disk I/O error') })));
  assert.ok(!isDiskFull(ioerr('SQLITE_CORRUPT', 'database disk image is malformed')));
});

test('SQLite, disk full on publish: uploads refused (503, the reason) while the publish is owed, reads served, the WAL emptied; the publish goes through once there is room, uploads are taken again, none lost', async () => {
  await inDataDir('localrec-disk-full-', async (dir) => {
    const { storage, disk } = sqliteWithDisk(dir);
    const logs: string[] = [];
    let t = 1_000_000;
    const server = await startServer({ port: 0, storage, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, now: () => t, log: (l) => logs.push(l) });
    const acked: string[] = [];
    const refused: string[] = [];
    try {
      const v0 = await pull(server.url);
      const [u1, u2, u3, u4, u5] = [1, 2, 3, 4, 5].map((s) => honestUpdate(v0, s)) as [Uint8Array, Uint8Array, Uint8Array, Uint8Array, Uint8Array];
      const first = await upload(server.url, u1);
      assert.equal(first.status, 202);
      acked.push(nonceOf(u1));

      disk.full = true;
      // The update that completes the round is stored before its publish is tried: accepted.
      const second = await upload(server.url, u2);
      assert.equal(second.status, 202, JSON.stringify(second.json));
      assert.equal(second.json.published, null, 'the publish failed');
      acked.push(nonceOf(u2));
      const wal = join(dir, 'localrec.sqlite-wal');
      assert.ok(!existsSync(wal) || statSync(wal).size === 0, 'the failed publish left the WAL emptied (the uploads it held are in the file)');

      // A publish is owed for want of disk space: new uploads are refused, saying why.
      const r3 = await upload(server.url, u3);
      assert.equal(r3.status, 503, JSON.stringify(r3.json));
      assert.equal(r3.json.reason, 'storage-unavailable');
      assert.match(String(r3.json.error), OWED);
      assert.match(String(r3.json.error), /nothing was stored, retry later/);
      assert.equal(r3.retryAfter, '30');
      assert.ok(!String(r3.json.error).includes(dir), 'no data dir in the response');
      refused.push(nonceOf(u3));
      assert.ok(logs.some((l) => l.startsWith('storage unavailable on POST /v1/updates: a publish is owed and the disk is full')), logs.join('\n'));

      // Reads are served; the health check and the round's state say why the server cannot store.
      const health = await getJson(server.url, '/v1/health');
      assert.equal(health.status, 503);
      assert.equal(health.json.reason, 'storage-unavailable');
      assert.match(String(health.json.error), OWED);
      assert.equal((await pull(server.url)).table.version, 0);
      assert.equal((await getJson(server.url, '/v1/config')).status, 200);
      const cur = await getJson(server.url, '/v1/rounds/current');
      assert.equal(cur.json.pending, 2, 'the refused upload is not pending');
      assert.match(String(cur.json.lastRoundError), /no disk space left to publish/);

      // A second later: a read retries the publish (still no room), and an upload right after it
      // is refused without trying it again.
      t += 1500;
      const before = disk.publishAttempts;
      await pull(server.url);
      const r4 = await upload(server.url, u4);
      assert.equal(r4.status, 503, JSON.stringify(r4.json));
      assert.match(String(r4.json.error), OWED);
      refused.push(nonceOf(u4));
      assert.equal(disk.publishAttempts, before + 1, 'the owed publish was tried again, once');
      assert.equal((await getJson(server.url, '/v1/rounds/current')).json.pending, 2, 'the refused upload was taken out again');
      assert.equal((await getJson(server.url, '/v1/health')).status, 503);

      // Room again: the refused upload sent again goes in, with the round it completes.
      disk.full = false;
      t += 1500;
      const again = await upload(server.url, u3);
      assert.equal(again.status, 202, JSON.stringify(again.json));
      assert.equal(again.json.published, 1, 'the owed round published, with the retried upload');
      acked.push(nonceOf(u3));
      refused.shift();
      assert.deepEqual(await getJson(server.url, '/v1/health'), { status: 200, json: { ok: true, version: 1 } });
      const after = await upload(server.url, u5);
      assert.equal(after.status, 202, 'uploads are taken again');
      acked.push(nonceOf(u5));
      assert.equal((await getJson(server.url, '/v1/rounds/current')).json.lastRoundError, null);
    } finally {
      await server.close();
    }
    // Every accepted update is in the store (pending or in version 1); the refused one is not.
    await assertStored(dir, acked, refused);
  });
});

test('SQLite, disk full on publish: with reads alone, the retried publish goes through once there is room, and uploads are taken again', async () => {
  await inDataDir('localrec-disk-full-', async (dir) => {
    const { storage, disk } = sqliteWithDisk(dir);
    let t = 1_000_000;
    const server = await startServer({ port: 0, storage, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, now: () => t, log: () => {} });
    try {
      const v0 = await pull(server.url);
      assert.equal((await upload(server.url, honestUpdate(v0, 1))).status, 202);
      disk.full = true;
      assert.equal((await upload(server.url, honestUpdate(v0, 2))).status, 202);
      assert.equal((await upload(server.url, honestUpdate(v0, 3))).status, 503);
      disk.full = false;
      // No upload comes: a read a second after the failed attempt retries it.
      t += 1500;
      assert.equal((await pull(server.url)).table.version, 0, 'answered from memory while the retry waits its turn');
      await server.rounds.drain();
      assert.equal((await pull(server.url)).table.version, 1);
      assert.equal((await getJson(server.url, '/v1/health')).status, 200);
      const next = await upload(server.url, honestUpdate(v0, 3));
      assert.equal(next.status, 202, JSON.stringify(next.json));
      assert.equal(next.json.pending, 1);
    } finally {
      await server.close();
    }
  });
});

/** A memory store whose publishes (after version 0) fail as on a full disk while `full` is set. */
class FullOnPublish extends MemoryStorage {
  full = false;
  override async publish(...a: Parameters<MemoryStorage['publish']>) {
    if (a[0].version > 0 && this.full) throw new StorageError('memory publish failed: database or disk is full', { cause: diskFull() });
    return super.publish(...a);
  }
}

test('secure aggregation, disk full on a complete cohort\'s publish: new member uploads refused while it is owed, a stored upload sent again still taken; the cohort publishes once there is room, and the next one completes', async () => {
  const storage = new FullOnPublish();
  let t = 1_000_000;
  const { app, rounds } = await createServer({ storage, initialTable: initialTable(), minClients: 2, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 600_000 }, now: () => t, log: () => {} });
  const call = async (path: string, body?: Uint8Array, token?: string) => {
    const res = await app.fetch(new Request(`http://x${path}`, body ? { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: token ? { 'X-Localrec-Cohort-Token': token } : {} } : {}));
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };
  const sa = rounds.config.secureAggregation!;
  const join2 = async () => {
    const members: Array<{ cohort: string; index: number; token: string }> = [];
    for (let i = 0; i < 2; i++) members.push((await call('/v1/secagg/join', (await secAggKeyPair()).publicKey)).json as unknown as { cohort: string; index: number; token: string });
    return members;
  };
  const body = (m: { cohort: string; index: number }) =>
    encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), index: m.index, cohortSize: 2, bits: sa.bits, step: sa.step, baseVersion: 0, values: new Uint32Array(IDS.length * (DIM + 1)) });
  const a = await join2();
  assert.equal((await call('/v1/secagg/updates', body(a[0]!), a[0]!.token)).status, 202);
  storage.full = true;
  const last = await call('/v1/secagg/updates', body(a[1]!), a[1]!.token);
  assert.equal(last.status, 202, 'the upload that completes the cohort is stored before the publish is tried');
  assert.equal(last.json.published, null);

  // Joins still work (they store no upload); the new cohort's uploads are refused while the publish is owed.
  const b = await join2();
  assert.equal(b[0]!.cohort === a[0]!.cohort, false);
  const refused = await call('/v1/secagg/updates', body(b[0]!), b[0]!.token);
  assert.equal(refused.status, 503, JSON.stringify(refused.json));
  assert.equal(refused.json.reason, 'storage-unavailable');
  assert.match(String(refused.json.error), OWED);
  assert.equal(await storage.pendingCount(), 2, 'nothing of the refused upload was stored');
  // An upload already stored (its answer lost) takes no room: sent again, it is answered as it was.
  assert.equal((await call('/v1/secagg/updates', body(a[1]!), a[1]!.token)).status, 202);
  assert.equal((await call('/v1/health')).status, 503);

  storage.full = false;
  t += 1500;
  // The next request that sweeps retries the publish; the refused upload, sent again, is taken behind it.
  assert.equal((await call(`/v1/secagg/cohorts/${a[0]!.cohort}`)).status, 200);
  assert.equal((await call('/v1/secagg/updates', body(b[0]!), b[0]!.token)).status, 202);
  assert.equal(rounds.version, 1, 'the owed cohort published');
  assert.equal((await call(`/v1/secagg/cohorts/${a[0]!.cohort}`)).json.status, 'done');
  const done = await call('/v1/secagg/updates', body(b[1]!), b[1]!.token);
  assert.equal(done.status, 202);
  assert.equal(done.json.published, 2, 'the next cohort completes');
  assert.equal((await call('/v1/health')).status, 200);
});

test('SQLite, publish owed: plain uploads in quick succession try it at most once a second, not one each; the refused are not stored; once there is room, an upload a second after the last attempt completes it', async () => {
  await inDataDir('localrec-disk-full-', async (dir) => {
    const { storage, disk } = sqliteWithDisk(dir);
    let t = 1_000_000;
    const server = await startServer({ port: 0, storage, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, now: () => t, log: () => {} });
    const acked: string[] = [];
    const refused: string[] = [];
    try {
      const v0 = await pull(server.url);
      const u = Array.from({ length: 13 }, (_, i) => honestUpdate(v0, i + 1));
      assert.equal((await upload(server.url, u[0]!)).status, 202);
      disk.full = true;
      assert.equal((await upload(server.url, u[1]!)).json.published, null, 'the publish failed: one is owed');
      acked.push(nonceOf(u[0]!), nonceOf(u[1]!));
      const failedAt = disk.publishAttempts;
      const refusedAll = async (batch: Uint8Array[]) => {
        const answers = await Promise.all(batch.map((b) => upload(server.url, b)));
        for (const a of answers) {
          assert.equal(a.status, 503, JSON.stringify(a.json));
          assert.equal(a.json.reason, 'storage-unavailable');
          assert.match(String(a.json.error), OWED);
        }
        refused.push(...batch.map(nonceOf));
      };

      // Within the second after the failed attempt: 5 uploads, all refused before they are stored, no attempt.
      await refusedAll(u.slice(2, 7));
      assert.equal(disk.publishAttempts, failedAt, 'no publish tried within the second after the last attempt');

      // A second on: 5 more in quick succession (the clock standing still); one of them tries the
      // owed publish (it fails: taken out again), the others are refused up front.
      t += 1500;
      await refusedAll(u.slice(7, 12));
      assert.equal(disk.publishAttempts, failedAt + 1, 'exactly one publish attempt for the 5 uploads');
      assert.equal((await getJson(server.url, '/v1/rounds/current')).json.pending, 2, 'none of the refused uploads is pending');

      // Room again, but within the second after that attempt: still refused, nothing tried.
      disk.full = false;
      await refusedAll([u[12]!]);
      assert.equal(disk.publishAttempts, failedAt + 1);

      // A second on, the next upload completes the owed publish with it (no read needed).
      t += 1500;
      const ok = await upload(server.url, u[2]!);
      assert.equal(ok.status, 202, JSON.stringify(ok.json));
      assert.equal(ok.json.published, 1, 'the owed round published, with this upload');
      refused.splice(refused.indexOf(nonceOf(u[2]!)), 1);
      acked.push(nonceOf(u[2]!));
      assert.equal((await getJson(server.url, '/v1/health')).status, 200);
      const next = await upload(server.url, u[3]!);
      assert.equal(next.status, 202, 'uploads are taken again, with no wait');
      refused.splice(refused.indexOf(nonceOf(u[3]!)), 1);
      acked.push(nonceOf(u[3]!));
    } finally {
      await server.close();
    }
    // Every accepted update pending or in version 1 (all three it owed); no row of a refused one.
    await assertStored(dir, acked, refused);
  });
});

/** {@link FullOnPublish} shared with other processes, whose count of pending updates leaves `hidden` out (theirs, counted otherwise). */
class SharedFullOnPublish extends FullOnPublish {
  readonly shared = true;
  hidden = 0;
  override async pendingCount(): Promise<number> {
    return Math.max(0, (await super.pendingCount()) - this.hidden);
  }
}

test('publish owed, an upload that does not complete a round by the count (a shared store): it still tries the owed publish, and is refused and not kept when that fails', async () => {
  const storage = new SharedFullOnPublish();
  let t = 1_000_000;
  const server = await startServer({ port: 0, storage, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, now: () => t, log: () => {} });
  try {
    const v0 = await pull(server.url);
    const [u1, u2, u3] = [1, 2, 3].map((s) => honestUpdate(v0, s)) as [Uint8Array, Uint8Array, Uint8Array];
    assert.equal((await upload(server.url, u1)).status, 202);
    storage.full = true;
    assert.equal((await upload(server.url, u2)).json.published, null, 'the publish failed: one is owed');
    storage.hidden = 2;
    t += 1500;
    const r = await upload(server.url, u3);
    assert.equal(r.status, 503, `not accepted while the publish is owed: ${JSON.stringify(r.json)}`);
    assert.match(String(r.json.error), OWED);
    assert.equal(await storage.pendingByNonce(nonceOf(u3)), undefined, 'the refused upload is not kept');
    storage.full = false;
    storage.hidden = 0;
    t += 1500;
    const ok = await upload(server.url, u3);
    assert.equal(ok.status, 202, JSON.stringify(ok.json));
    assert.equal(ok.json.published, 1);
  } finally {
    await server.close();
  }
});
