/**
 * Training part of the table only (`trainRows`, `trainBiases`): the client's update covers exactly
 * the trained rows (and their biases only when trained), the server refuses whole-table updates,
 * and what it publishes changes the trained part and nothing else, plain and under secure
 * aggregation.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { buildClientUpdate, expandDelta, itemDelta, noisedDelta, trainedLength } from '../../src/federated/client-update.js';
import { clipL2, RdpAccountant } from '../../src/federated/dp.js';
import { syncOnce, type FetchLike } from '../../src/federated/sync.js';
import { decodeModel, decodeUpdate, dequantizeUpdate, fromHex } from '../../src/federated/wire.js';
import { initialTable as simInitialTable, alignTo, trainPopularity } from '../../src/federated/simulate.js';
import type { Split } from '../../src/eval/split.js';
import { ValidationError } from '../../src/errors.js';
import { shrinkRows } from '../../src/server/aggregate.js';
import { createItemTable } from '../../src/model/item-table.js';
import { createServer, type ServerOptions } from '../../src/server/index.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DIM, IDS, initialTable, shopperHistory, spawnServe, trained } from './server-helpers.js';

const ROWS = 10;

async function server(o: Partial<ServerOptions>) {
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), clip: 1, noiseMultiplier: 0, rateLimit: false, log: () => {}, ...o });
  const fetchFn: FetchLike = (url, init) => Promise.resolve(parts.app.fetch(new Request(url, init as RequestInit)));
  const json = async (path: string) => (await (await fetchFn(`http://x${path}`)).json()) as Record<string, unknown>;
  const model = async () => decodeModel(new Uint8Array(await (await fetchFn('http://x/v1/model')).arrayBuffer())).table;
  return { ...parts, fetchFn, json, model };
}

// Items from the whole catalog, so local training moves rows inside and outside the trained part.
const historyOf = (seed: number) => shopperHistory(seed, 8);

test('itemDelta over a trained part: its rows only, a bias section only when asked, zero when the biases are frozen', () => {
  const base = initialTable();
  const local = trained(base, 3);
  const all = itemDelta(base, local);
  assert.equal(all.length, IDS.length * (DIM + 1));
  const factorsOnly = itemDelta(base, local, { rows: ROWS, biases: false });
  assert.equal(factorsOnly.length, ROWS * DIM);
  assert.deepEqual(Array.from(factorsOnly), Array.from(all.subarray(0, ROWS * DIM)));
  const withSection = itemDelta(base, local, { rows: ROWS, biases: false }, true);
  assert.equal(withSection.length, ROWS * (DIM + 1));
  assert.ok(withSection.subarray(ROWS * DIM).every((x) => x === 0), 'a frozen bias section carries no delta');
  const withBiases = itemDelta(base, local, { rows: ROWS, biases: true });
  assert.deepEqual(Array.from(withBiases.subarray(ROWS * DIM)), Array.from(all.subarray(IDS.length * DIM, IDS.length * DIM + ROWS)));
  assert.equal(trainedLength({ rows: ROWS, biases: false }, DIM), ROWS * DIM);
  assert.equal(trainedLength({ rows: ROWS, biases: true }, DIM), ROWS * (DIM + 1));
  for (const rows of [0, IDS.length + 1, 2.5]) {
    assert.throws(() => itemDelta(base, local, { rows, biases: true }), (e: unknown) => e instanceof ValidationError && /from 1 to the table's 40 rows/.test(e.message));
  }
});

test('a given delta (the subspace update) is laid out as local − base: a bias section the part does not train is zero', () => {
  const base = initialTable();
  const frozen = { rows: ROWS, biases: false };
  const factors = Float64Array.from({ length: ROWS * DIM }, (_, i) => (i % 7) - 3);
  // Plain uploads always carry a bias section: zeros (then noise, here 0) after the part's factors.
  const plain = noisedDelta(base, base, 1e9, 0, () => 0.5, frozen, true, factors).values;
  assert.deepEqual(Array.from(plain), [...factors, ...new Array<number>(ROWS).fill(0)]);
  // Masked uploads carry only the part: the factors as given.
  assert.deepEqual(Array.from(noisedDelta(base, base, 1e9, 0, () => 0.5, frozen, false, factors).values), Array.from(factors));
  // With trained biases the given delta holds them, and they are kept.
  const withBiases = Float64Array.from({ length: ROWS * (DIM + 1) }, (_, i) => i);
  assert.deepEqual(Array.from(noisedDelta(base, base, 1e9, 0, () => 0.5, { rows: ROWS, biases: true }, true, withBiases).values), Array.from(withBiases));
  assert.throws(() => noisedDelta(base, base, 1, 0, () => 0.5, frozen, true, withBiases), (e: unknown) => e instanceof ValidationError && new RegExp(`delta: has ${ROWS * (DIM + 1)} values; the trained part needs ${ROWS * DIM}`).test(e.message));
});

test('the clip covers the trained part only, and expandDelta puts it back in place with zeros elsewhere', () => {
  const base = initialTable();
  const local = trained(base, 4, 1);
  const part = { rows: ROWS, biases: false };
  const { values, norm } = noisedDelta(base, local, 1, 0, () => 0.5, part);
  const raw = itemDelta(base, local, part);
  let rawNorm = 0;
  for (const x of raw) rawNorm += x * x;
  assert.ok(Math.abs(norm - Math.sqrt(rawNorm)) < 1e-9, 'the pre-clip norm is the trained part’s');
  let clipped = 0;
  for (const x of values) clipped += x * x;
  assert.ok(Math.abs(Math.sqrt(clipped) - 1) < 1e-9, 'clipped to C = 1 over the part');
  const full = expandDelta(values, part, IDS.length, DIM);
  assert.equal(full.length, IDS.length * (DIM + 1));
  assert.deepEqual(Array.from(full.subarray(0, ROWS * DIM)), Array.from(values));
  assert.ok(full.subarray(ROWS * DIM).every((x) => x === 0));
  // A plain update's bias section is dropped when the biases are frozen, kept when trained.
  const section = new Float64Array(ROWS * (DIM + 1)).fill(2);
  assert.ok(expandDelta(section, part, IDS.length, DIM).subarray(IDS.length * DIM).every((x) => x === 0));
  const kept = expandDelta(section, { rows: ROWS, biases: true }, IDS.length, DIM);
  assert.deepEqual(Array.from(kept.subarray(IDS.length * DIM, IDS.length * DIM + ROWS)), Array(ROWS).fill(2));
  assert.ok(kept.subarray(IDS.length * DIM + ROWS).every((x) => x === 0));
  assert.throws(() => expandDelta(new Float64Array(ROWS * DIM), { rows: ROWS, biases: true }, IDS.length, DIM), /no bias section/);
  assert.throws(() => expandDelta(new Float64Array(7), part, IDS.length, DIM), /has 7 values/);
});

test('shrinkRows over a trained part uses p = dim when the biases are frozen and leaves other rows alone', () => {
  const n = 6;
  const d = 3;
  const delta = new Float64Array(n * (d + 1));
  // Row 0: ‖row‖² = 4 over its 3 factors; with v = 1, p = 3 gives 1 − 3/4, p = 4 would give 0.
  delta.set([2, 0, 0], 0);
  delta.set([5, 5, 5], 4 * d); // row 4, outside the trained part
  shrinkRows(delta, n, d, 1, { rows: 2, biases: false });
  assert.ok(Math.abs(delta[0]! - 2 * 0.25) < 1e-12);
  assert.deepEqual(Array.from(delta.subarray(4 * d, 5 * d)), [5, 5, 5], 'untrained rows are not touched');
});

test('a plain server with trainRows and frozen biases: config says so, whole-table updates are refused, a round moves only the trained factors', async () => {
  const s = await server({ trainRows: ROWS, trainBiases: false, minClients: 3 });
  try {
    const config = await s.json('/v1/config');
    assert.equal(config.trainRows, ROWS);
    assert.equal(config.trainBiases, false);
    const base = await s.model();
    const res = await s.fetchFn('http://x/v1/model');
    const baseHash = fromHex(res.headers.get('x-localrec-model-hash')!);
    const opts = { baseHash, clip: 1, noiseMultiplier: 0, bits: config.bits as number, blockSize: config.blockSize as number };
    const post = (body: Uint8Array) => s.fetchFn('http://x/v1/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer> });
    const whole = buildClientUpdate(base, trained(base, 9), opts).bytes;
    assert.equal((await post(whole)).status, 413, 'a whole-table update is larger than the announced update size');
    const fewer = await post(buildClientUpdate(base, trained(base, 9), { ...opts, part: { rows: ROWS - 5, biases: false } }).bytes);
    assert.equal(fewer.status, 422);
    const why = (await fewer.json()) as { reason: string; error: string };
    assert.equal(why.reason, 'wrong-shape');
    assert.match(why.error, /update is 5 items × 4, the server trains the first 10 of the model's 40 rows/);
    const bodies = [1, 2, 3].map((seed) => buildClientUpdate(base, trained(base, seed), { ...opts, part: { rows: ROWS, biases: false } }).bytes);
    assert.equal(decodeUpdate(bodies[0]!).header.itemCount, ROWS);
    assert.equal(bodies[0]!.length, config.updateBytes, 'the config announces the partial update size');
    for (const b of bodies) assert.equal((await post(b)).status, 202);
    const next = await s.model();
    assert.equal(next.version, 1);
    const deltas = bodies.map((b) => dequantizeUpdate(decodeUpdate(b)));
    for (let i = 0; i < IDS.length * DIM; i++) {
      const expected = i < ROWS * DIM ? base.factors[i]! + (deltas[0]![i]! + deltas[1]![i]! + deltas[2]![i]!) / 3 : base.factors[i]!;
      assert.ok(Math.abs(next.factors[i]! - expected) < 1e-6, `factor ${i}`);
    }
    assert.ok(deltas.some((d) => d.subarray(0, ROWS * DIM).some((x) => Math.abs(x) > 1e-3)), 'the trained factors moved');
    assert.deepEqual(Array.from(next.bias), Array.from(base.bias), 'frozen biases stay as published');
  } finally {
    await s.storage.close();
  }
});

test('secure aggregation with trainRows and frozen biases: masked uploads hold rows × dim values; the cohort moves the trained factors by the mean clipped delta', async () => {
  const s = await server({ trainRows: ROWS, trainBiases: false, minClients: 3, secureAggregation: true });
  try {
    const config = (await s.json('/v1/config')) as { secureAggregation: { step: number }; updateBytes: number };
    const results = await Promise.all(
      [1, 2, 3].map((seed) =>
        syncOnce({ serverUrl: 'http://x', fetch: s.fetchFn, accountant: new RdpAccountant(), budget: Infinity, history: historyOf(seed), train: { seed }, cohortPollMs: 1 }),
      ),
    );
    assert.ok(results.every((r) => r.sent && r.uploadedBytes === config.updateBytes));
    const base = results[0]!.global;
    const next = await s.model();
    assert.equal(next.version, 1);
    const part = { rows: ROWS, biases: false };
    const deltas = results.map((r) => {
      const d = itemDelta(base, r.local, part);
      clipL2(d, 1);
      return d;
    });
    assert.equal(deltas[0]!.length, ROWS * DIM);
    for (let i = 0; i < IDS.length * DIM; i++) {
      const mean = i < ROWS * DIM ? (deltas[0]![i]! + deltas[1]![i]! + deltas[2]![i]!) / 3 : 0;
      assert.ok(Math.abs(next.factors[i]! - base.factors[i]! - mean) <= config.secureAggregation.step + 1e-6, `factor ${i}`);
    }
    assert.ok(results.some((r) => itemDelta(base, r.local).subarray(ROWS * DIM, IDS.length * DIM).some((x) => Math.abs(x) > 1e-3)), 'devices trained rows outside the part too');
    assert.deepEqual(Array.from(next.factors.subarray(ROWS * DIM)), Array.from(base.factors.subarray(ROWS * DIM)), 'rows outside the part are not moved');
    assert.deepEqual(Array.from(next.bias), Array.from(base.bias));
  } finally {
    await s.storage.close();
  }
});

test('createServer refuses a trainRows outside 1..items and a trainBiases that is not a boolean', async () => {
  for (const trainRows of [0, IDS.length + 1, 1.5]) {
    await assert.rejects(server({ trainRows }), (e: unknown) => e instanceof ValidationError && e.field === 'options.trainRows');
  }
  await assert.rejects(server({ trainBiases: 'no' as unknown as boolean }), (e: unknown) => e instanceof ValidationError && e.field === 'trainBiases');
});

test("simulate's popularity-ordered initial table: most popular rows first, each item keeping the values it has in data order", () => {
  const itemIds = ['a', 'b', 'c', 'd', 'e'];
  // Training counts: a 1, b 3, c 0, d 3, e 2 → order b, d (tie: data order), e, a, c.
  const items = Int32Array.from([0, 1, 1, 1, 3, 3, 3, 4, 4]);
  const split = {
    userIds: ['u'],
    itemIds,
    train: { ptr: Int32Array.from([0, items.length]), items },
  } as unknown as Split;
  assert.deepEqual(Array.from(trainPopularity(split)), [1, 3, 0, 3, 2]);
  const byData = simInitialTable(split, 4, 7);
  const byPop = simInitialTable(split, 4, 7, 'popularity', 'popularity');
  assert.deepEqual(byPop.itemIds, ['b', 'd', 'e', 'a', 'c']);
  const back = alignTo(byPop, itemIds);
  assert.deepEqual(Array.from(back.factors), Array.from(byData.factors));
  assert.deepEqual(Array.from(back.bias), Array.from(byData.bias));
  // biasScale a: biases a·ln(1 + count) instead of ln(1 + count) / ln(1 + 3); factors unchanged.
  const scaled = simInitialTable(split, 4, 7, 'popularity', 'popularity', 0.5);
  assert.deepEqual(Array.from(scaled.bias), [3, 3, 2, 1, 0].map((c) => Math.fround(0.5 * Math.log1p(c))));
  assert.deepEqual(Array.from(byPop.bias), [3, 3, 2, 1, 0].map((c) => Math.fround(Math.log1p(c) / Math.log1p(3))));
  assert.deepEqual(Array.from(scaled.factors), Array.from(byPop.factors));
  assert.throws(() => createItemTable(itemIds, 4, { popularity: [1, 2, 3, 4, 5], popularityScale: 0 }), /popularityScale must be a finite number > 0, got 0/);
});

test('localrec serve --train-rows 10 --freeze-biases: /v1/config reports the part and the update size; --train-rows past the catalog is refused', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-part-'));
  try {
    const catalog = join(dir, 'catalog.json');
    writeFileSync(catalog, JSON.stringify({ items: IDS.map((id, i) => ({ id, popularity: IDS.length - i })) }));
    const flags = ['--dim', String(DIM), '--rate-limit', '0', '--freeze-biases'];
    const c = await spawnServe(join(dir, 'data'), catalog, [...flags, '--train-rows', String(ROWS), '--bias-scale', '0.5']);
    try {
      const config = (await (await fetch(`${c.url}/v1/config`)).json()) as Record<string, number | boolean>;
      assert.deepEqual([config.items, config.trainRows, config.trainBiases], [IDS.length, ROWS, false]);
      // --bias-scale 0.5: the new table's biases are 0.5·ln(1 + popularity).
      const served = decodeModel(new Uint8Array(await (await fetch(`${c.url}/v1/model`)).arrayBuffer())).table;
      assert.deepEqual(Array.from(served.bias), IDS.map((_, i) => Math.fround(0.5 * Math.log1p(IDS.length - i))));
      const base = initialTable();
      const bytes = buildClientUpdate(base, base, { baseHash: new Uint8Array(32), clip: 1, noiseMultiplier: 1, bits: config.bits as number, part: { rows: ROWS, biases: false } }).bytes;
      assert.equal(config.updateBytes, bytes.length);
    } finally {
      c.proc.kill('SIGTERM');
      await c.exited;
    }
    await assert.rejects(spawnServe(join(dir, 'other'), catalog, [...flags, '--train-rows', String(IDS.length + 1)]), (e: { stderr?: string }) =>
      /--train-rows: must be an integer from 1 to the table's 40 rows, got 41/.test(e.stderr ?? ''),
    );
    await assert.rejects(spawnServe(join(dir, 'third'), catalog, [...flags, '--bias-scale', '-1']), (e: { stderr?: string }) => /--bias-scale: must be a number > 0, got -1/.test(e.stderr ?? ''));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('localrec serve --aggregator subspace --subspace-scale 5 --denoise directions: /v1/config and the start-up line say so, version 0 is scaled orthonormal factors; it needs --freeze-biases', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-subspace-'));
  try {
    const catalog = join(dir, 'catalog.json');
    writeFileSync(catalog, JSON.stringify({ items: IDS.map((id, i) => ({ id, popularity: IDS.length - i })) }));
    const flags = ['--dim', String(DIM), '--rate-limit', '0', '--train-rows', String(ROWS), '--aggregator', 'subspace'];
    const c = await spawnServe(join(dir, 'data'), catalog, [...flags, '--freeze-biases', '--subspace-scale', '5', '--bias-scale', '0.5', '--denoise', 'directions']);
    try {
      const config = (await (await fetch(`${c.url}/v1/config`)).json()) as Record<string, unknown>;
      assert.deepEqual([config.aggregator, config.subspaceScale, config.trainBiases], ['subspace', 5, false]);
      assert.match(c.out, /, subspace, denoise directions\)/);
      const served = decodeModel(new Uint8Array(await (await fetch(`${c.url}/v1/model`)).arrayBuffer())).table;
      for (let j = 0; j < DIM; j++) {
        let ss = 0;
        for (let r = 0; r < ROWS; r++) ss += served.factors[r * DIM + j]! ** 2;
        assert.ok(Math.abs(ss - 25) < 1e-3, `column ${j} has squared norm ${ss}, want 5²`);
      }
      assert.ok(served.factors.subarray(ROWS * DIM).every((x) => x === 0), 'rows past --train-rows have no factors');
    } finally {
      c.proc.kill('SIGTERM');
      await c.exited;
    }
    await assert.rejects(spawnServe(join(dir, 'other'), catalog, flags), (e: { stderr?: string }) => /--aggregator: subspace needs --freeze-biases/.test(e.stderr ?? ''));
    await assert.rejects(spawnServe(join(dir, 'other'), catalog, ['--denoise', 'directions']), (e: { stderr?: string }) => /--denoise: directions needs --aggregator subspace \(got fedavg\)/.test(e.stderr ?? ''));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a plain update says whether the device kept the biases frozen; one that disagrees with the server is refused', async () => {
  const open = (trainBiases: boolean) => createServer({ dataDir: null, initialTable: initialTable(), clip: 1, noiseMultiplier: 0, minClients: 3, trainRows: ROWS, trainBiases, rateLimit: false, log: () => {} });
  for (const serverBiases of [true, false]) {
    const srv = await open(serverBiases);
    try {
      const res = await srv.app.fetch(new Request('http://x/v1/model'));
      const base = decodeModel(new Uint8Array(await res.arrayBuffer())).table;
      const baseHash = fromHex(res.headers.get('x-localrec-model-hash')!);
      const bits = ((await (await srv.app.fetch(new Request('http://x/v1/config'))).json()) as { bits: number }).bits;
      const post = async (biases: boolean, patch?: (b: Uint8Array) => void) => {
        const body = buildClientUpdate(base, trained(base, 1), { baseHash, clip: 1, noiseMultiplier: 0, bits, part: { rows: ROWS, biases } }).bytes;
        patch?.(body);
        const r = await srv.app.fetch(new Request('http://x/v1/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer> }));
        return [r.status, ((await r.json()) as { reason?: string }).reason ?? 'accepted'];
      };
      assert.deepEqual(await post(!serverBiases), [422, 'config-mismatch'], `server trainBiases ${serverBiases}`);
      assert.deepEqual(await post(serverBiases, (b) => (b[28] = 2)), [400, 'malformed'], 'a flags byte other than 0 or 1');
      assert.deepEqual(await post(serverBiases), [202, 'accepted']);
    } finally {
      await srv.storage.close();
    }
  }
});

test('a store with pending updates of another trained part refuses to open, names it, and keeps them', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-part-store-'));
  try {
    const open = (trainRows: number, trainBiases = true) => createServer({ dataDir: dir, initialTable: initialTable(), clip: 1, noiseMultiplier: 0, minClients: 3, trainRows, trainBiases, rateLimit: false, log: () => {} });
    const first = await open(ROWS);
    const res = await first.app.fetch(new Request('http://x/v1/model'));
    const base = decodeModel(new Uint8Array(await res.arrayBuffer())).table;
    const baseHash = fromHex(res.headers.get('x-localrec-model-hash')!);
    const bits = ((await (await first.app.fetch(new Request('http://x/v1/config'))).json()) as { bits: number }).bits;
    for (const seed of [1, 2]) {
      const body = buildClientUpdate(base, trained(base, seed), { baseHash, clip: 1, noiseMultiplier: 0, bits, part: { rows: ROWS, biases: true } }).bytes;
      assert.equal((await first.app.fetch(new Request('http://x/v1/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer> }))).status, 202);
    }
    await first.storage.close();
    await assert.rejects(open(ROWS + 5), /pending updates of 10 rows with biases trained, and this server trains 15 rows \(trainRows 15, trainBiases true\)/);
    // Frozen biases: their bias section is noise; applied to the shop's biases it would move them.
    await assert.rejects(open(ROWS, false), /pending updates of 10 rows with biases trained, and this server trains 10 rows \(trainRows 10, trainBiases false\); restart with the --train-rows\/--freeze-biases they were sent under/);
    const again = await open(ROWS);
    try {
      assert.equal(await again.storage.pendingCount(), 2, 'the refused start lost nothing');
    } finally {
      await again.storage.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
