/** Shared by the server test files: a small catalog, model download, update construction, crash checks, a `localrec serve` child. */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { buildClientUpdate, type TrainedPart } from '../../src/federated/client-update.js';
import { decodeModel, fromHex, sha256, toHex } from '../../src/federated/wire.js';
import { cloneItemTable, createItemTable, type ItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';
import { KEEP_ENDED_MS, type CohortStore } from '../../src/server/cohorts.js';
import { StorageConflictError, type Storage } from '../../src/server/storage.js';
import { encodeMaskedUpdate, secAggKeyPair } from '../../src/federated/secagg.js';
import { createServer, MemoryStorage } from '../../src/server/index.js';

export const IDS = Array.from({ length: 40 }, (_, i) => `sku-${i}`);
export const DIM = 4;

export function initialTable(ids = IDS, dim = DIM): ItemTable {
  return createItemTable(ids, dim, { seed: 11, popularity: ids.map((_, i) => i) });
}

export interface ServerView {
  table: ItemTable;
  hash: Uint8Array;
  config: { clip: number; noiseMultiplier: number; bits: number; blockSize: number; minClients: number };
}

export async function pull(url: string): Promise<ServerView> {
  const res = await fetch(`${url}/v1/model`);
  if (res.status !== 200) throw new Error(`GET /v1/model: ${res.status}`);
  const { table } = decodeModel(new Uint8Array(await res.arrayBuffer()));
  const hash = fromHex(res.headers.get('x-localrec-model-hash')!);
  const config = (await (await fetch(`${url}/v1/config`)).json()) as ServerView['config'];
  return { table, hash, config };
}

/** One shopper's history for `syncOnce`: `length` items drawn (seeded) from the whole catalog, weight 1. */
export function shopperHistory(seed: number, length: number): Array<{ itemIds: string[]; weights: number[] }> {
  const r = new Random(seed);
  return [{ itemIds: Array.from({ length }, () => IDS[r.int(IDS.length)]!), weights: Array<number>(length).fill(1) }];
}

/** A locally "trained" table: the base plus a seeded random change of roughly `scale` per coordinate. */
export function trained(base: ItemTable, seed: number, scale = 0.05): ItemTable {
  const t = cloneItemTable(base);
  const r = new Random(seed);
  for (let i = 0; i < t.factors.length; i++) t.factors[i]! += scale * r.normal();
  for (let i = 0; i < t.bias.length; i++) t.bias[i]! += scale * r.normal();
  return t;
}

/** An honest update against what the server serves, following its config. */
export function honestUpdate(view: ServerView, seed: number, overrides: { clip?: number; noiseMultiplier?: number; scale?: number; part?: TrainedPart } = {}): Uint8Array {
  return buildClientUpdate(view.table, trained(view.table, seed, overrides.scale), {
    baseHash: view.hash,
    clip: overrides.clip ?? view.config.clip,
    noiseMultiplier: overrides.noiseMultiplier ?? view.config.noiseMultiplier,
    bits: view.config.bits,
    blockSize: view.config.blockSize,
    ...(overrides.part ? { part: overrides.part } : {}),
  }).bytes;
}

export async function post(url: string, body: Uint8Array): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${url}/v1/updates`, { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream' } });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

export const quiet = (): void => {};

/**
 * Opens a server's SQLite store read-only after a crash and checks what must survive: versions are
 * contiguous and whole (hash matches), and every acknowledged update is pending with its body or
 * aggregated into a published version.
 */
export async function checkStore(dataDir: string, acked: Iterable<string>): Promise<{ versions: number; pending: number }> {
  const db = new Database(join(dataDir, 'localrec.sqlite'), { readonly: true });
  try {
    const versions = db.prepare('SELECT version, hash, model FROM versions ORDER BY version').all() as Array<{ version: number; hash: string; model: Buffer }>;
    versions.forEach((v, i) => assert.equal(v.version, i, 'versions are contiguous from 0'));
    for (const v of versions) {
      // An older version's model is pruned (emptied) once newer ones are published; the newest is whole.
      if (v.model.length === 0 && v.version < versions.length - 1) continue;
      const bytes = new Uint8Array(v.model);
      assert.equal(toHex(await sha256(bytes)), v.hash, `version ${v.version} is whole`);
      assert.equal(decodeModel(bytes).table.version, v.version);
    }
    const get = db.prepare('SELECT aggregated_into, body IS NOT NULL AS has_body FROM updates WHERE nonce = ?');
    for (const n of acked) {
      const row = get.get(n) as { aggregated_into: number | null; has_body: number } | undefined;
      assert.ok(row, `acknowledged update ${n} is in the store`);
      assert.ok(row.aggregated_into !== null ? row.aggregated_into < versions.length : row.has_body === 1, `update ${n} is pending (with body) or aggregated into a published version`);
    }
    const pending = (db.prepare('SELECT COUNT(*) AS n FROM updates WHERE aggregated_into IS NULL').get() as { n: number }).n;
    return { versions: versions.length, pending };
  } finally {
    db.close();
  }
}

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** A `localrec serve` child process, once it listens. */
export interface ServeChild {
  proc: ChildProcess;
  url: string;
  /** Its stdout up to the "listening on" line. */
  out: string;
  /** All of its stdout so far (the lines after "listening on" too). */
  stdout: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr: () => string;
}

/**
 * Starts `localrec serve --port 0 --data-dir DIR --catalog FILE …flags` from the sources (tsx) and
 * resolves when it listens; rejects (with `stderr` and `code`) when it exits first.
 */
export function spawnServe(dataDir: string, catalog: string, flags: string[], env: Record<string, string> = {}): Promise<ServeChild> {
  // (--data-dir is SQLite's: serve refuses it next to --database.)
  const args = ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', ...(flags.includes('--database') ? [] : ['--data-dir', dataDir]), '--catalog', catalog, ...flags];
  const proc = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => proc.once('exit', (code, signal) => res({ code, signal })));
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  return new Promise<ServeChild>((res, rej) => {
    let out = '';
    proc.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) res({ proc, url: m[1]!, out, exited, stderr: () => err, stdout: () => out });
    });
    void exited.then((x) => rej(Object.assign(new Error(`server exited (${x.code}) before listening: ${err}`), { stderr: err, code: x.code })));
  });
}

/**
 * A member leaving a forming cohort, through two handles on one cohort store (two processes on
 * PostgreSQL; the same store twice in memory), cohorts of 3: a wrong token changes nothing, the
 * right one frees the place, the next join takes the lowest free index, and a full cohort cannot
 * be left.
 */
export async function exerciseCohortLeave(a: CohortStore, b: CohortStore): Promise<void> {
  const key = (n: number) => new Uint8Array(65).fill(n);
  const joined = async (s: CohortStore, n: number) => {
    const r = await s.join(key(n));
    assert.ok(!('error' in r), JSON.stringify(r));
    return r;
  };
  const m0 = await joined(a, 1);
  const m1 = await joined(b, 2);
  const id = m0.cohort.id;
  assert.deepEqual([m0.index, m1.index, m1.cohort.id], [0, 1, id]);
  assert.equal(await b.leave(id, 0, m1.token), 'unknown', "another member's token");
  assert.equal(await b.leave(id, 0, m0.token), 'left');
  assert.equal(await a.leave(id, 0, m0.token), 'unknown', 'left already');
  assert.equal((await a.info(id))!.joined, 1);
  assert.equal(await a.token(id, 0), undefined, 'its token is gone');
  assert.deepEqual([...(await a.keys(id)).keys()], [1], 'its key is gone');
  // The same key may join again (it left); it gets the free place 0, the next one place 2.
  const again = await joined(a, 1);
  const m2 = await joined(b, 3);
  assert.deepEqual([again.cohort.id, again.index, m2.cohort.id, m2.index], [id, 0, id, 2]);
  assert.equal(m2.cohort.status, 'ready');
  assert.deepEqual([...(await b.keys(id)).entries()].map(([i, k]) => [i, k[0]]), [[0, 1], [1, 2], [2, 3]]);
  assert.equal(await a.leave(id, 1, m1.token), 'too-late', 'a full cohort cannot be left');
  assert.equal((await b.info(id))!.joined, 3);
}

/**
 * An ended cohort (`status`) is answered until an hour after it ended (`ended`), then forgotten;
 * `setNow` moves the store's clock. The same check for the memory and PostgreSQL stores.
 */
export async function assertKeptAnHourAfterEnd(store: CohortStore, id: string, status: string, ended: number, setNow: (t: number) => void): Promise<void> {
  assert.equal((await store.info(id))?.endedAt, ended);
  setNow(ended + KEEP_ENDED_MS - 1);
  await store.sweep();
  assert.equal((await store.info(id))?.status, status, 'still answered just under an hour after it ended');
  setNow(ended + KEEP_ENDED_MS + 1);
  await store.sweep();
  assert.equal(await store.info(id), undefined, 'forgotten an hour after it ended');
}

/**
 * The streaming reads of a store (`pendingRefs`, `pendingByIds`), the same check for the memory,
 * SQLite and PostgreSQL adapters, on an empty store: the pending updates listed oldest first
 * without their bodies; bodies read back in the order asked; one aggregated or discarded since
 * left out.
 */
export async function exercisePendingReads(s: Storage): Promise<void> {
  assert.ok(s.pendingRefs && s.pendingByIds, 'the adapter reads pending updates a few at a time');
  await s.publish({ version: 0, hash: 'h0', model: new Uint8Array([0]), optimizer: null, createdAt: 0, updateCount: 0 }, []);
  const ids: number[] = [];
  for (const [i, nonce] of ['aa', 'bb', 'cc', 'dd'].entries()) {
    const r = await s.addUpdate({ nonce, baseVersion: 0, receivedAt: 100 + i, body: new Uint8Array(i + 1).fill(i + 1) });
    assert.ok(r !== 'replayed');
    ids.push(r.id);
  }
  const [a, b, c, d] = ids as [number, number, number, number];
  const refs = await s.pendingRefs();
  assert.deepEqual(refs, [a, b, c, d].map((id, i) => ({ id, nonce: ['aa', 'bb', 'cc', 'dd'][i], baseVersion: 0, receivedAt: 100 + i })), 'oldest first, no body');
  const some = await s.pendingByIds([d, a, c]);
  assert.deepEqual(some.map((u) => [u.id, u.nonce, [...u.body]]), [[d, 'dd', [4, 4, 4, 4]], [a, 'aa', [1]], [c, 'cc', [3, 3, 3]]], 'in the order asked');
  assert.deepEqual(await s.pendingByIds([]), []);
  await s.publish({ version: 1, hash: 'h1', model: new Uint8Array([1]), optimizer: null, createdAt: 1, updateCount: 1 }, [b]);
  await s.discard([c]);
  assert.deepEqual((await s.pendingByIds([a, b, c, d, 999_999])).map((u) => u.id), [a, d], 'an aggregated, a discarded and an unknown id are left out');
  assert.deepEqual((await s.pendingRefs()).map((u) => u.id), [a, d]);
}

/** A store whose next `conflicts` publishes (after version 0) lose to another process, as on a shared store. */
export class ConflictingStorage extends MemoryStorage {
  conflicts = 0;
  override async publish(...a: Parameters<MemoryStorage['publish']>) {
    if (a[0].version > 0 && this.conflicts > 0) {
      this.conflicts--;
      throw new StorageConflictError('another process published first (simulated)');
    }
    return super.publish(...a);
  }
}

/**
 * A secure-aggregation server (no dropout recovery: cohorts of 2, 1 s deadlines) on `storage` and
 * `clock` (its wall clock, and its own monotonic one when given), with one full cohort (both
 * members joined).
 */
export async function cohortOfTwo(storage: MemoryStorage, clock: { now: () => number; monotonic?: () => number }, log: (line: string) => void) {
  const parts = await createServer({ storage, initialTable: initialTable(), minClients: 2, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 1_000 }, now: clock.now, ...(clock.monotonic ? { monotonic: clock.monotonic } : {}), log });
  const call = (path: string, body?: Uint8Array, token?: string) =>
    Promise.resolve(parts.app.fetch(new Request(`http://x${path}`, body ? { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: token ? { 'X-Localrec-Cohort-Token': token } : {} } : {})));
  const sa = parts.rounds.config.secureAggregation!;
  const members: Array<{ cohort: string; index: number; token: string }> = [];
  for (let i = 0; i < 2; i++) members.push((await (await call('/v1/secagg/join', (await secAggKeyPair()).publicKey)).json()) as { cohort: string; index: number; token: string });
  const upload = async (m: (typeof members)[number]) =>
    (await call('/v1/secagg/updates', encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), index: m.index, cohortSize: 2, bits: sa.bits, step: sa.step, baseVersion: 0, values: new Uint32Array(IDS.length * (DIM + 1)) }), m.token)).json() as Promise<{ published?: number | null; reason?: string }>;
  const view = async () => (await (await call(`/v1/secagg/cohorts/${members[0]!.cohort}`)).json()) as { status: string; published?: number; reason?: string };
  return { parts, members, upload, view };
}

/** Runs `f` on a fresh data dir (its name starting `prefix`), removed after. */
export async function inDataDir(prefix: string, f: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  try {
    await f(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The bytes of the data dir's SQLite database and its WAL (when there is one). */
export function sqliteFileBytes(dir: string): Buffer[] {
  return ['localrec.sqlite', 'localrec.sqlite-wal'].filter((f) => existsSync(join(dir, f))).map((f) => readFileSync(join(dir, f)));
}
