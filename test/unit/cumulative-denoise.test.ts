/**
 * `denoise: 'cumulative'`: the server keeps the unshrunk running sum of the rounds' steps and
 * publishes the initial table plus that sum shrunk for the noise it has gathered. A weak but steady
 * signal that per-round shrinkage throws away every round survives; the state outlives a restart.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildClientUpdate } from '../../src/federated/client-update.js';
import { decodeModel, decodeUpdate, dequantizeUpdate, fromHex } from '../../src/federated/wire.js';
import type { FetchLike } from '../../src/federated/sync.js';
import { ValidationError } from '../../src/errors.js';
import { createItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';
import { applyFedAvg, cumulativeStep, shrinkRows } from '../../src/server/aggregate.js';
import { createServer, type ServerOptions } from '../../src/server/index.js';
import { DIM, IDS, initialTable, trained } from './server-helpers.js';

test('cumulative shrinkage keeps a steady signal that per-round shrinkage drops, and publishes X₀ + shrink(Σ steps)', () => {
  const n = 300;
  const dim = 8;
  const rows = 200; // trained part; the last 100 rows must never move
  const part = { rows, biases: false };
  const sd = 0.1;
  const lr = 3;
  const T = 8;
  const x0 = createItemTable(Array.from({ length: n }, (_, i) => `i${i}`), dim, { seed: 5, popularity: Array.from({ length: n }, (_, i) => n - i) });
  // Every trained row gets the same small step each round: ‖row‖² = 0.25·dim·sd², a quarter of one
  // round's noise energy, so one round's James–Stein factor is usually 0; over T rounds the signal
  // energy grows as T² and the noise as T.
  const g = new Float64Array(n * (dim + 1));
  for (let r = 0; r < rows; r++) for (let k = 0; k < dim; k++) g[r * dim + k] = 0.5 * sd * (k % 2 ? 1 : -1) * (r % 3 ? 1 : -1);
  const rnd = new Random(7);
  const means = Array.from({ length: T }, () => {
    const m = new Float64Array(g.length);
    for (let r = 0; r < rows; r++) for (let k = 0; k < dim; k++) m[r * dim + k] = g[r * dim + k]! + sd * rnd.normal();
    return m;
  });

  let perRound = x0;
  let cum = { table: x0, state: null as Float32Array | null, kept: 0 };
  for (const m of means) {
    const shrunk = Float64Array.from(m);
    shrinkRows(shrunk, n, dim, sd * sd, part);
    perRound = applyFedAvg(perRound, shrunk, lr);
    cum = cumulativeStep(cum.table, m, cum.state, lr, sd * sd, part);
  }
  assert.equal(cum.table.version, T);

  // Published = X₀ + the sum of the raw steps, each trained row shrunk for T rounds of noise.
  const sum = new Float64Array(g.length);
  for (const m of means) for (let i = 0; i < sum.length; i++) sum[i]! += lr * m[i]!;
  const kept = shrinkRows(sum, n, dim, T * lr * lr * sd * sd, part);
  assert.equal(cum.kept, kept);
  for (let i = 0; i < n * dim; i++) assert.ok(Math.abs(cum.table.factors[i]! - (x0.factors[i]! + sum[i]!)) < 1e-4, `factor ${i}`);
  assert.deepEqual(Array.from(cum.table.factors.subarray(rows * dim)), Array.from(x0.factors.subarray(rows * dim)), 'rows past the trained part stay');
  assert.deepEqual(Array.from(cum.table.bias), Array.from(x0.bias), 'frozen biases stay');

  // Against the truth X₀ + T·lr·g: how much of the signal each keeps, and the squared error.
  const score = (t: typeof x0) => {
    let dot = 0;
    let energy = 0;
    let err = 0;
    for (let i = 0; i < rows * dim; i++) {
      const truth = T * lr * g[i]!;
      const moved = t.factors[i]! - x0.factors[i]!;
      dot += moved * truth;
      energy += truth * truth;
      err += (moved - truth) ** 2;
    }
    return { kept: dot / energy, err: err / energy };
  };
  const a = score(perRound);
  const b = score(cum.table);
  assert.ok(b.kept > 0.6, `cumulative keeps ${b.kept} of the signal`);
  assert.ok(a.kept < 0.35, `per-round keeps ${a.kept} of the signal`);
  assert.ok(b.err < 0.75 * a.err, `relative squared error: cumulative ${b.err}, per round ${a.err}`);
});

test('cumulativeStep starts a new sum from the current table when the state does not fit, and refuses a delta of the wrong length', () => {
  const t = initialTable();
  const len = IDS.length * (DIM + 1);
  const m = new Float64Array(len).fill(0.5);
  const fresh = cumulativeStep(t, m, null, 2, 0);
  const fromAdam = cumulativeStep(t, m, new Float32Array(2 * len), 2, 0);
  assert.deepEqual(fromAdam.state, fresh.state, 'a FedAdam-sized state is not read as a sum');
  // With no noise the shrinkage is the identity: one plain FedAvg step.
  const plain = applyFedAvg(t, m, 2);
  assert.deepEqual(fresh.table, plain);
  assert.throws(() => cumulativeStep(t, new Float64Array(len - 1), null, 1, 0), /delta has 199 values, the table 200/);
});

async function open(o: Partial<ServerOptions>) {
  const parts = await createServer({ initialTable: initialTable(), clip: 1, noiseMultiplier: 0.5, minClients: 3, rateLimit: false, log: () => {}, dataDir: null, ...o });
  const fetchFn: FetchLike = (url, init) => Promise.resolve(parts.app.fetch(new Request(url, init as RequestInit)));
  const pull = async () => {
    const res = await fetchFn('http://x/v1/model');
    return { table: decodeModel(new Uint8Array(await res.arrayBuffer())).table, hash: fromHex(res.headers.get('x-localrec-model-hash')!) };
  };
  const config = (await (await fetchFn('http://x/v1/config')).json()) as { bits: number; blockSize: number; denoise: string };
  const round = async (seeds: number[]) => {
    const view = await pull();
    const bodies = seeds.map((seed) => buildClientUpdate(view.table, trained(view.table, seed), { baseHash: view.hash, clip: 1, noiseMultiplier: 0.5, bits: config.bits, blockSize: config.blockSize }).bytes);
    for (const b of bodies) assert.equal((await fetchFn('http://x/v1/updates', { method: 'POST', body: b })).status, 202);
    const deltas = bodies.map((b) => dequantizeUpdate(decodeUpdate(b)));
    return Float64Array.from(deltas[0]!, (_, i) => deltas.reduce((s, d) => s + d[i]!, 0) / deltas.length);
  };
  return { ...parts, pull, round, config };
}

test("a server with denoise 'cumulative' publishes X₀ + the shrunk sum of its rounds, and carries the sum over a restart", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-cumulative-'));
  const lr = 4;
  try {
    const s1 = await open({ dataDir: dir, denoise: 'cumulative', serverLearningRate: lr });
    assert.equal(s1.config.denoise, 'cumulative');
    const x0 = (await s1.pull()).table;
    const m1 = await s1.round([1, 2, 3]);
    assert.equal((await s1.pull()).table.version, 1);
    await s1.storage.close();

    const s2 = await open({ dataDir: dir, denoise: 'cumulative', serverLearningRate: lr });
    const m2 = await s2.round([4, 5, 6]);
    const v2 = (await s2.pull()).table;
    await s2.storage.close();
    assert.equal(v2.version, 2);

    // Plain updates each carry N(0, (σC)²): their mean (σC)²/3 per coordinate, per round.
    const sum = Float64Array.from(m1, (x, i) => lr * (x + m2[i]!));
    const kept = shrinkRows(sum, IDS.length, DIM, 2 * lr * lr * (0.5 * 0.5) / 3);
    assert.ok(kept > 0 && kept < IDS.length, `the shrinkage acted on some rows only (kept ${kept})`);
    for (let i = 0; i < x0.factors.length; i++) assert.ok(Math.abs(v2.factors[i]! - (x0.factors[i]! + sum[i]!)) < 1e-4, `factor ${i}`);
    for (let i = 0; i < x0.bias.length; i++) assert.ok(Math.abs(v2.bias[i]! - (x0.bias[i]! + sum[x0.factors.length + i]!)) < 1e-4, `bias ${i}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("denoise 'cumulative' is refused with FedAdam, and an unknown denoise names the three choices", async () => {
  await assert.rejects(open({ denoise: 'cumulative', aggregator: 'fedadam' }), (e: Error) => e instanceof ValidationError && /'cumulative' works with the fedavg aggregator, not 'fedadam'/.test(e.message));
  await assert.rejects(open({ denoise: 'sum' as 'rows' }), (e: Error) => e instanceof ValidationError && /must be 'none', 'rows' or 'cumulative', got 'sum'/.test(e.message));
});
