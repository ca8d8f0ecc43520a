/** Shared by the server test files: a small catalog, model download, update construction, crash checks, a `localrec serve` child. */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { buildClientUpdate } from '../../src/federated/client-update.js';
import { decodeModel, fromHex, sha256, toHex } from '../../src/federated/wire.js';
import { cloneItemTable, createItemTable, type ItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';

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
export function honestUpdate(view: ServerView, seed: number, overrides: { clip?: number; noiseMultiplier?: number; scale?: number } = {}): Uint8Array {
  return buildClientUpdate(view.table, trained(view.table, seed, overrides.scale), {
    baseHash: view.hash,
    clip: overrides.clip ?? view.config.clip,
    noiseMultiplier: overrides.noiseMultiplier ?? view.config.noiseMultiplier,
    bits: view.config.bits,
    blockSize: view.config.blockSize,
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
  const args = ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--data-dir', dataDir, '--catalog', catalog, ...flags];
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
