/**
 * Robust combination of a round (`robust: 'trimmed-mean' | 'median'`): the coordinate-wise
 * estimators against a plain sort-per-coordinate reference, their guarantee (f ≤ t dishonest values
 * cannot move a coordinate outside the honest order statistics), the server options and flags, and
 * that a robust round is published in the same transaction as the plain one — on memory, on SQLite,
 * and across a kill -9 inside the publish transaction.
 */
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { quantizeStochastic } from '../../src/federated/client-update.js';
import { decodeUpdate, dequantizeUpdate, encodeUpdate, NONCE_BYTES, toHex } from '../../src/federated/wire.js';
import { ValidationError } from '../../src/errors.js';
import type { ItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';
import { meanDelta } from '../../src/server/aggregate.js';
import { combineDeltas, createServer, startServer, trimCount, trimmedMeanDelta, type RobustName } from '../../src/server/index.js';
import { checkStore, DIM, honestUpdate, IDS, initialTable, pull, quiet, spawnServe, type ServeChild, type ServerView } from './server-helpers.js';


/** The reference: sort each coordinate's values as numbers, average the kept middle. */
function reference(deltas: Float32Array[], trim: number): Float64Array {
  const len = deltas[0]!.length;
  const out = new Float64Array(len);
  for (let j = 0; j < len; j++) {
    const col = deltas.map((d) => d[j]!).sort((a, b) => a - b);
    const kept = col.slice(trim, col.length - trim);
    out[j] = kept.reduce((a, b) => a + b, 0) / kept.length;
  }
  return out;
}

function randomDeltas(r: Random, m: number, len: number): Float32Array[] {
  return Array.from({ length: m }, () =>
    Float32Array.from({ length: len }, () => {
      const u = r.next();
      // Ties, zeros, tiny and huge values.
      if (u < 0.1) return 0;
      if (u < 0.2) return 1;
      if (u < 0.25) return -1e6 * r.next();
      if (u < 0.3) return 1e6 * r.next();
      return r.normal();
    }),
  );
}

test('trimmedMeanDelta equals the sort-per-coordinate reference (every trim for M 1..33, lengths across the 256-coordinate blocks; M up to 501)', () => {
  const r = new Random(2024);
  let cases = 0;
  for (let m = 1; m <= 33; m += 4) {
    for (const len of [1, 255, 256, 257, 600]) {
      const deltas = randomDeltas(r, m, len);
      for (let trim = 0; 2 * trim < m; trim++) {
        const got = trimmedMeanDelta(deltas, trim);
        const want = reference(deltas, trim);
        for (let j = 0; j < len; j++) assert.ok(Math.abs(got[j]! - want[j]!) <= 1e-9 * Math.max(1, Math.abs(want[j]!)), `m ${m} len ${len} trim ${trim} [${j}]: ${got[j]} vs ${want[j]}`);
        cases++;
      }
    }
  }
  // Larger rounds (the selection's recursion), with already sorted, reversed and constant columns.
  for (const m of [64, 200, 501]) {
    const deltas = randomDeltas(r, m, 300);
    for (let k = 0; k < m; k++) {
      deltas[k]![0] = k; // sorted
      deltas[k]![1] = m - k; // reversed
      deltas[k]![2] = 3; // constant
      deltas[k]![3] = k % 2; // two values
    }
    for (const trim of [1, Math.floor(m / 10), Math.floor((m - 1) / 2)]) {
      const got = trimmedMeanDelta(deltas, trim);
      const want = reference(deltas, trim);
      for (let j = 0; j < 300; j++) assert.ok(Math.abs(got[j]! - want[j]!) <= 1e-9 * Math.max(1, Math.abs(want[j]!)), `m ${m} trim ${trim} [${j}]: ${got[j]} vs ${want[j]}`);
      cases++;
    }
  }
  assert.ok(cases > 300);
  // trim 0 is the mean, the median keeps the middle one or two.
  const d = [new Float32Array([1, 5]), new Float32Array([2, 6]), new Float32Array([3, 7]), new Float32Array([100, -100])];
  assert.deepEqual(Array.from(trimmedMeanDelta(d, 0)), Array.from(meanDelta(d)));
  assert.deepEqual(Array.from(combineDeltas(d, 'median')), [2.5, 5.5]);
  assert.deepEqual(Array.from(combineDeltas(d.slice(0, 3), 'median')), [2, 6]);
  assert.deepEqual(Array.from(combineDeltas(d, 'trimmed-mean', 0.25)), [2.5, 5.5]);
  assert.deepEqual(Array.from(combineDeltas(d, 'mean')), [26.5, -20.5]);
  assert.throws(() => trimmedMeanDelta(d, 2), RangeError);
  assert.throws(() => trimmedMeanDelta(d, -1), RangeError);
});

test('trimCount: ⌊β·M⌋ for the trimmed mean, ⌊(M−1)/2⌋ for the median, 0 for the mean', () => {
  assert.equal(trimCount('trimmed-mean', 100, 0.1), 10);
  assert.equal(trimCount('trimmed-mean', 10, 0.1), 1);
  assert.equal(trimCount('trimmed-mean', 9, 0.1), 0);
  assert.equal(trimCount('trimmed-mean', 1000, 0.05), 50);
  assert.equal(trimCount('trimmed-mean', 3, 0.45), 1); // never more than the median's
  assert.equal(trimCount('median', 100), 49);
  assert.equal(trimCount('median', 101), 50);
  assert.equal(trimCount('median', 1), 0);
  assert.equal(trimCount('mean', 100, 0.1), 0);
});

test('with f ≤ t arbitrary values among M, every coordinate stays within the honest order-statistic bounds (2,000 random rounds)', () => {
  const r = new Random(7);
  let checked = 0;
  for (let run = 0; run < 2000; run++) {
    const robust: RobustName = run % 3 === 0 ? 'median' : 'trimmed-mean';
    const m = 4 + r.int(60);
    const beta = 0.05 + 0.4 * r.next();
    const t = trimCount(robust, m, beta);
    if (t < 1) continue;
    const f = r.int(t + 1); // 0..t dishonest
    const honest = Array.from({ length: m - f }, () => r.normal());
    // The attackers: huge, or placed just outside or inside the honest range, all on one side or mixed.
    const side = r.next() < 0.5 ? 1 : -1;
    const bad = Array.from({ length: f }, () => (r.next() < 0.5 ? side * 1e9 : side * (2 + r.next())));
    const deltas = [...honest, ...bad].map((v) => new Float32Array([v]));
    const got = combineDeltas(deltas, robust, beta)[0]!;
    const h = honest.map((v) => Math.fround(v)).sort((a, b) => a - b);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const upper = mean(h.slice(t, m - t));
    const lower = mean(h.slice(t - f, m - t - f));
    assert.ok(got <= upper + 1e-9 && got >= lower - 1e-9, `run ${run} (${robust}, M ${m}, t ${t}, f ${f}): ${got} in [${lower}, ${upper}]`);
    checked++;
  }
  assert.ok(checked > 1500);
});

test('createServer: robust and trimFraction are checked, defaulted and reported by GET /v1/config', async () => {
  const base = { dataDir: null, initialTable: initialTable(), rateLimit: false as const, log: quiet };
  await assert.rejects(createServer({ ...base, robust: 'winsorized' as RobustName }), (e: unknown) => e instanceof ValidationError && /options\.robust/.test(e.message));
  for (const trimFraction of [-0.1, 0.5, Number.NaN]) {
    await assert.rejects(createServer({ ...base, robust: 'trimmed-mean', trimFraction }), (e: unknown) => e instanceof ValidationError && /options\.trimFraction/.test(e.message));
  }
  // 0.05 of 10 updates is 0: the trimmed mean would silently be the mean.
  await assert.rejects(createServer({ ...base, minClients: 10, robust: 'trimmed-mean', trimFraction: 0.05 }), (e: unknown) => e instanceof ValidationError && /trims nothing/.test(e.message));
  const plain = await createServer(base);
  const cfg = (await (await plain.app.fetch(new Request('http://local/v1/config'))).json()) as Record<string, unknown>;
  await plain.storage.close();
  assert.equal(cfg.robust, 'mean');
  assert.equal(cfg.trimFraction, 0.1);
  const robust = await createServer({ ...base, minClients: 20, robust: 'trimmed-mean', trimFraction: 0.2 });
  const cfg2 = (await (await robust.app.fetch(new Request('http://local/v1/config'))).json()) as Record<string, unknown>;
  await robust.storage.close();
  assert.equal(cfg2.robust, 'trimmed-mean');
  assert.equal(cfg2.trimFraction, 0.2);
});

/** A body that pushes one bias coordinate by `push` (no clipping, no noise), for the server's config. */
function pushUpdate(view: ServerView, row: number, push: number, seed: number): Uint8Array {
  const n = view.table.itemIds.length;
  const d = new Float64Array(n * (DIM + 1));
  d[n * DIM + row] = push;
  const r = new Random(seed);
  const { scales, codes } = quantizeStochastic(d, n, DIM, view.config.bits, view.config.blockSize, () => r.next());
  const nonce = new Uint8Array(NONCE_BYTES);
  globalThis.crypto.getRandomValues(nonce);
  return encodeUpdate({
    header: { bits: view.config.bits, dim: DIM, itemCount: n, baseVersion: view.table.version, blockSize: view.config.blockSize, clip: view.config.clip, noiseMultiplier: view.config.noiseMultiplier, baseHash: view.hash, nonce },
    scales,
    codes,
  });
}

/** base + combined delta, rounded to float32 as the published table is. */
function expected(base: ItemTable, bodies: Uint8Array[], robust: RobustName, beta: number): { factors: Float32Array; bias: Float32Array } {
  const step = combineDeltas(bodies.map((b) => dequantizeUpdate(decodeUpdate(b))), robust, beta);
  const nf = base.factors.length;
  return { factors: base.factors.map((v, i) => v + step[i]!), bias: base.bias.map((v, i) => v + step[nf + i]!) };
}

for (const store of ['memory', 'sqlite'] as const) {
  test(`${store}: a trimmed-mean round publishes base + the trimmed mean of exactly the pending updates, and marks them aggregated`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'localrec-robust-'));
    const TARGET = 3;
    try {
      const results: Record<string, number> = {};
      for (const robust of ['mean', 'trimmed-mean'] as const) {
        const dataDir = store === 'sqlite' ? join(dir, robust) : null;
        const server = await startServer({ port: 0, dataDir, initialTable: initialTable(), minClients: 10, noiseMultiplier: 0, robust, trimFraction: 0.1, rateLimit: false, log: quiet });
        try {
          const v0 = await pull(server.url);
          // 9 honest updates and one that spends its whole norm allowance on one item's bias.
          const bodies = [...Array.from({ length: 9 }, (_, i) => honestUpdate(v0, 500 + i)), pushUpdate(v0, TARGET, 1, 9)];
          for (const b of bodies) {
            const res = await fetch(`${server.url}/v1/updates`, { method: 'POST', body: b as Uint8Array<ArrayBuffer> });
            assert.equal(res.status, 202, await res.text());
          }
          const v1 = await pull(server.url);
          assert.equal(v1.table.version, 1);
          const want = expected(v0.table, bodies, robust, 0.1);
          assert.deepEqual(Array.from(v1.table.bias), Array.from(want.bias));
          assert.deepEqual(Array.from(v1.table.factors), Array.from(want.factors));
          assert.equal(server.rounds.pending, 0);
          results[robust] = v1.table.bias[TARGET]! - v0.table.bias[TARGET]!;
          if (dataDir) {
            const db = new Database(join(dataDir, 'localrec.sqlite'), { readonly: true });
            const rows = db.prepare('SELECT nonce, aggregated_into, body IS NULL AS dropped FROM updates').all() as Array<{ nonce: string; aggregated_into: number | null; dropped: number }>;
            db.close();
            assert.deepEqual(new Set(rows.map((r) => r.nonce)), new Set(bodies.map((b) => toHex(b.subarray(64, 80)))));
            assert.ok(rows.every((r) => r.aggregated_into === 1 && r.dropped === 1), 'every consumed update is marked aggregated into version 1');
          }
        } finally {
          await server.close();
        }
      }
      // The plain mean passes a tenth of the push through; the trimmed mean drops it (t = 1 ≥ f = 1).
      assert.ok(results.mean! > 0.09, `mean: target bias step ${results.mean}`);
      assert.ok(Math.abs(results['trimmed-mean']!) < 0.02, `trimmed mean: target bias step ${results['trimmed-mean']}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

// ---- `localrec serve --robust`, killed inside the publish transaction ---------------------------

type Child = ServeChild;

function serve(dataDir: string, catalog: string, extra: string[], env: Record<string, string> = {}): Promise<Child> {
  return spawnServe(dataDir, catalog, ['--dim', String(DIM), '--noise', '0', '--max-staleness', '10', '--rate-limit', '0', ...extra], env);
}

test('localrec serve --robust trimmed-mean --trim 0.25: killed inside the publish, the restart publishes base + the trimmed mean of the same 4 updates', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-robust-crash-'));
  try {
    const catalog = join(dir, 'catalog.json');
    writeFileSync(catalog, JSON.stringify({ items: IDS.map((id, i) => ({ id, popularity: i })) }));
    const dataDir = join(dir, 'data');
    const flags = ['--min-clients', '4', '--robust', 'trimmed-mean', '--trim', '0.25'];
    const bad = await serve(dataDir, catalog, ['--min-clients', '4', '--robust', 'winsorized']).then(
      () => assert.fail('should not start'),
      (e: { stderr: string; code: number }) => e,
    );
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^localrec: ValidationError: --robust/);

    const c = await serve(dataDir, catalog, flags, { LOCALREC_FAULT: 'kill-before-publish-commit' });
    assert.match(c.out, /fedavg on the trimmed-mean \(β 0\.25\)/);
    const v0 = await pull(c.url);
    assert.equal((v0.config as unknown as { robust: string }).robust, 'trimmed-mean');
    const bodies = [...[1, 2, 3].map((s) => honestUpdate(v0, s)), pushUpdate(v0, 5, 1, 4)];
    const acked: string[] = [];
    for (const b of bodies.slice(0, 3)) {
      const res = await fetch(`${c.url}/v1/updates`, { method: 'POST', body: b as Uint8Array<ArrayBuffer> });
      assert.equal(res.status, 202);
      acked.push(toHex(b.subarray(64, 80)));
    }
    // The fourth update completes the round; the process dies inside the publish transaction.
    await assert.rejects(fetch(`${c.url}/v1/updates`, { method: 'POST', body: bodies[3] as Uint8Array<ArrayBuffer> }));
    assert.equal((await c.exited).signal, 'SIGKILL');
    assert.deepEqual(await checkStore(dataDir, acked), { versions: 1, pending: 4 });

    const again = await serve(dataDir, catalog, flags);
    const v1 = await pull(again.url);
    again.proc.kill('SIGTERM');
    await again.exited;
    assert.equal(v1.table.version, 1);
    const want = expected(v0.table, bodies, 'trimmed-mean', 0.25);
    assert.deepEqual(Array.from(v1.table.bias), Array.from(want.bias));
    assert.deepEqual(Array.from(v1.table.factors), Array.from(want.factors));
    assert.deepEqual(await checkStore(dataDir, [...acked, toHex(bodies[3]!.subarray(64, 80))]), { versions: 2, pending: 0 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
