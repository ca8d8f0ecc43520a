/**
 * Rounds combined one update at a time (stop 32, a review of the server at scale): the round
 * coordinator reads the pending updates a few at a time and adds each into one accumulator
 * (`RoundCombiner`, `MaskedSum`, `RecoveredSum`), letting the event loop run in between, instead
 * of decoding every update of the round to float32 at once. What it publishes must be what the
 * all-in-memory method published, bit for bit: these tests compare against that method
 * (decode all → `dequantizeUpdate` → `combineDeltas` → optimizer step; `unmaskSum`,
 * `unmaskRecovered`) on randomized updates, for every aggregator and combiner, and check that the
 * comparison is sensitive to the order of the additions. Then: a request made while a round is
 * being combined is answered before the round ends.
 */
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { expandDelta } from '../../src/federated/client-update.js';
import { maskedUpdateBytes, recoveryShareBytes, selfMaskThreshold, sortedNeighbours, unmaskRecovered, unmaskSum, type MaskedUpdate, type SecAggParams } from '../../src/federated/secagg.js';
import { DEFAULT_SUBSPACE_SCALE, subspaceTable } from '../../src/federated/subspace.js';
import { decodeModel, decodeUpdate, dequantizeUpdate, encodeModel, encodeUpdate, levelsFor, scaleCount, sha256, toHex, type QuantizedUpdate } from '../../src/federated/wire.js';
import { createItemTable, type ItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';
import { addDequantized, applyFedAdam, applyFedAvg, combineDeltas, DEFAULT_FEDADAM, meanDelta, RoundCombiner, UpdateValues, type AggregatorName, type RobustName } from '../../src/server/aggregate.js';
import { MemoryStorage, SqliteStorage, startServer } from '../../src/server/index.js';
import { MaskedSum, RecoveredSum } from '../../src/server/masked-sum.js';
import { RoundCoordinator, type RoundConfig } from '../../src/server/rounds.js';
import type { PendingUpdate, Storage } from '../../src/server/storage.js';
import { exercisePendingReads, honestUpdate, initialTable, pull, quiet } from './server-helpers.js';

/**
 * A random update of `rows` items × `dim` (+ biases): codes uniform over the `bits`-bit range,
 * block scales spread over 18 orders of magnitude. (Float32 values whose magnitudes lie within
 * 2^29 of each other add up exactly in float64, in any order; these do not, so that the tests
 * below see it when the additions are taken in another order than the round's.)
 */
function randomUpdate(r: Random, rows: number, dim: number, bits: number, blockSize: number, frozenBiases = false): QuantizedUpdate {
  const scales = new Float32Array(scaleCount(rows, dim, blockSize));
  for (let i = 0; i < scales.length; i++) scales[i] = 10 ** (-15 + 18 * r.next());
  const codes = new Uint8Array(rows * (dim + 1));
  const top = 2 * levelsFor(bits);
  for (let i = 0; i < codes.length; i++) codes[i] = r.int(top + 1);
  const nonce = new Uint8Array(16);
  for (let i = 0; i < 16; i++) nonce[i] = r.int(256);
  return {
    header: { bits, dim, itemCount: rows, baseVersion: 0, blockSize, clip: 1, noiseMultiplier: 0, baseHash: new Uint8Array(32), nonce, ...(frozenBiases ? { frozenBiases: true } : {}) },
    scales,
    codes,
  };
}

/**
 * `updates` with the first made huge (scales 10³⁰) and the second its exact opposite: added in
 * the round's order they cancel and the rest count; added in the reverse order the huge values
 * swallow the rest (sums of float32 values in float64 are otherwise mostly exact, and a model is
 * float32: without this, a reordered sum would rarely change a published model).
 */
function orderSensitive(updates: QuantizedUpdate[]): QuantizedUpdate[] {
  const [first, second] = updates as [QuantizedUpdate, QuantizedUpdate];
  first.scales.fill(1e30);
  second.header = { ...first.header, nonce: second.header.nonce };
  second.scales = first.scales.slice();
  const top = 2 * levelsFor(first.header.bits);
  second.codes = first.codes.map((c) => top - c);
  return updates;
}

/** The previous method: every update decoded and dequantized, then combined at once. */
function allInMemory(bodies: readonly Uint8Array[], robust: RobustName, trimFraction = 0.1): Float64Array {
  return combineDeltas(bodies.map((b) => dequantizeUpdate(decodeUpdate(b))), robust, trimFraction);
}

async function streamed(bodies: readonly Uint8Array[], robust: RobustName, trimFraction = 0.1): Promise<Float64Array> {
  const c = new RoundCombiner(robust, trimFraction);
  for (const b of bodies) c.add(b, decodeUpdate(b));
  return (await c.result()).combined;
}

const sameBits = (a: Float64Array, b: Float64Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

test('the memory and SQLite stores read the pending updates a few at a time (pendingRefs, pendingByIds); server-postgres.test.ts runs the same on PostgreSQL', async () => {
  await exercisePendingReads(new MemoryStorage());
  const dir = mkdtempSync(join(tmpdir(), 'localrec-reads-'));
  const s = SqliteStorage.open(dir);
  try {
    await exercisePendingReads(s);
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('UpdateValues reads the values dequantizeUpdate gives, straight from the body, for every bit width and any range', () => {
  const r = new Random(7);
  for (const bits of [2, 3, 4, 5, 6, 7, 8]) {
    for (const [rows, dim, blockSize] of [[37, 5, 16], [300, 3, 256], [9, 1, 7]] as const) {
      const u = randomUpdate(r, rows, dim, bits, blockSize);
      const body = encodeUpdate(u);
      const want = dequantizeUpdate(decodeUpdate(body));
      const v = new UpdateValues(body, decodeUpdate(body).header);
      const got = new Float32Array(want.length + 3);
      for (let start = 0; start < want.length; start += 1 + r.int(200)) {
        const count = Math.min(want.length - start, 1 + r.int(256));
        v.fill(start, count, got, 3);
        assert.deepEqual(got.subarray(3, 3 + count), want.subarray(start, start + count), `bits ${bits}, ${rows}×${dim}, from ${start}`);
      }
      const acc = new Float64Array(want.length);
      addDequantized(acc, decodeUpdate(body));
      assert.ok(sameBits(acc, Float64Array.from(want)), 'addDequantized adds the same float32 values');
    }
  }
});

test('RoundCombiner, one update at a time, equals combineDeltas of all the dequantized updates bit for bit (mean, trimmed mean, median; M 1..41), and the comparison catches another order of addition', async () => {
  const r = new Random(2024);
  let orderMatters = 0;
  for (const m of [1, 2, 3, 4, 5, 9, 10, 11, 20, 41]) {
    const rows = 25 + r.int(60);
    const dim = 1 + r.int(6);
    const bits = 2 + r.int(7);
    const blockSize = [7, 64, 256][r.int(3)]!;
    const bodies = Array.from({ length: m }, () => encodeUpdate(randomUpdate(r, rows, dim, bits, blockSize)));
    for (const robust of ['mean', 'trimmed-mean', 'median'] as const) {
      for (const beta of robust === 'trimmed-mean' ? [0.1, 0.25, 0.49] : [0.1]) {
        const want = allInMemory(bodies, robust, beta);
        const got = await streamed(bodies, robust, beta);
        assert.ok(sameBits(got, want), `${robust} β ${beta}, M ${m}, ${rows}×${dim} at ${bits} bits: not bit-identical`);
        // The same updates in reverse order: for the mean of M ≥ 3 (and the trimmed means that
        // keep three or more values) the float64 sums differ in some coordinate, so a combiner
        // that added in another order than the round's would fail the check above.
        const reversed = allInMemory(bodies.slice().reverse(), robust, beta);
        if (!sameBits(reversed, want)) orderMatters++;
      }
    }
  }
  assert.ok(orderMatters >= 10, `the order of addition changed the result in ${orderMatters} cases only: the data would not catch a reordering`);
  // Plain float sums, as the mean takes them: reversing 20 of these updates changes some coordinate.
  const bodies = Array.from({ length: 20 }, () => encodeUpdate(randomUpdate(r, 50, 4, 8, 64)));
  assert.ok(!sameBits(meanDelta(bodies.map((b) => dequantizeUpdate(decodeUpdate(b)))), meanDelta(bodies.slice().reverse().map((b) => dequantizeUpdate(decodeUpdate(b))))));
});

/** The round config of these tests: `rows` items × `dim`, every update taken (no norm check at aggregation). */
function roundConfig(itemCount: number, dim: number, minClients: number, aggregator: AggregatorName, robust: RobustName, log: (l: string) => void): RoundConfig {
  return {
    itemCount,
    dim,
    trained: { rows: itemCount, biases: aggregator !== 'subspace' },
    bits: 4,
    blockSize: 64,
    clip: 1,
    noiseMultiplier: 0,
    normTolerance: 0.01,
    normSlack: 6,
    minClients,
    maxStaleness: 2,
    aggregator,
    robust,
    trimFraction: 0.2,
    serverLearningRate: aggregator === 'fedavg' ? 0.7 : 1,
    fedAdam: DEFAULT_FEDADAM,
    now: () => 1_700_000_000_000,
    log,
  };
}

/** What the previous method published from `base` and `bodies` under `config`: the model bytes. */
function previousPublish(base: ItemTable, bodies: readonly Uint8Array[], config: RoundConfig, optimizer: Float32Array | null): { model: Uint8Array; optimizer: Float32Array | null } {
  const combined = allInMemory(bodies, config.robust, config.trimFraction);
  const mean = expandDelta(combined, config.trained, config.itemCount, config.dim);
  if (config.aggregator === 'subspace') {
    const { directionWeights: _w, ...table } = subspaceTable(base, mean.subarray(0, config.trained.rows * base.dim), config.trained, config.subspaceScale ?? DEFAULT_SUBSPACE_SCALE, base.version + 1, undefined);
    return { model: encodeModel({ ...table, version: base.version + 1 }), optimizer: null };
  }
  if (config.aggregator === 'fedadam') {
    const r = applyFedAdam(base, mean, optimizer, config.fedAdam);
    return { model: encodeModel(r.table), optimizer: r.state };
  }
  return { model: encodeModel(applyFedAvg(base, mean, config.serverLearningRate)), optimizer: null };
}

/** Stores `bodies` as pending updates. */
async function addAll(storage: Storage, bodies: readonly Uint8Array[], from: number): Promise<void> {
  for (const [i, body] of bodies.entries()) {
    const r = await storage.addUpdate({ nonce: `n${from + i}`, baseVersion: 0, receivedAt: 0, body });
    assert.notEqual(r, 'replayed');
  }
}

for (const aggregator of ['fedavg', 'fedadam', 'subspace'] as const) {
  for (const robust of ['mean', 'trimmed-mean', 'median'] as const) {
    test(`${aggregator} with the ${robust}: two rounds of 21 random updates, read from the store a few at a time, publish what the all-in-memory method published, bit for bit (memory and SQLite stores)`, async () => {
      const r = new Random(aggregator.length * 31 + robust.length);
      const itemCount = 150;
      const dim = 5;
      const M = 21; // more than one batch of bodies
      const dir = mkdtempSync(join(tmpdir(), 'localrec-stream-'));
      try {
        const stores: Array<[string, Storage]> = [
          ['memory', new MemoryStorage()],
          ['sqlite', SqliteStorage.open(dir)],
        ];
        // And a store without the streaming reads (an adapter of an earlier release): read whole.
        const bare = new MemoryStorage();
        Object.assign(bare, { pendingRefs: undefined, pendingByIds: undefined });
        stores.push(['without pendingRefs', bare]);
        const logs: string[] = [];
        const config = roundConfig(itemCount, dim, M, aggregator, robust, (l) => logs.push(l));
        const base = createItemTable(Array.from({ length: itemCount }, (_, i) => `item-${i}`), dim, { seed: 3 });
        const rounds = [0, 1].map(() => orderSensitive(Array.from({ length: M }, () => randomUpdate(r, itemCount, dim, 2 + r.int(7), 64, aggregator === 'subspace'))).map(encodeUpdate));
        let want = { model: encodeModel({ ...base, version: 0 }), optimizer: null as Float32Array | null };
        const wanted: Array<typeof want> = [];
        for (const bodies of rounds) {
          const { table } = decodeModel(want.model);
          want = previousPublish(table, bodies, config, want.optimizer);
          wanted.push(want);
        }
        if (robust === 'mean') {
          // Summed in another order, the round would publish another model: this test would see it.
          const { table } = decodeModel(encodeModel({ ...base, version: 0 }));
          assert.ok(!Buffer.from(previousPublish(table, rounds[0]!.slice().reverse(), config, null).model).equals(Buffer.from(wanted[0]!.model)));
        }
        for (const [name, storage] of stores) {
          await addAll(storage, rounds[0]!, 0);
          // The first round is made at open (pending ≥ minClients), the second once its updates are in.
          const rc = await RoundCoordinator.open(storage, base, config);
          assert.equal(rc.version, 1, `${name}: ${logs.join('\n')}`);
          await addAll(storage, rounds[1]!, M);
          const again = await RoundCoordinator.open(storage, undefined, config);
          assert.equal(again.version, 2, `${name}: ${logs.join('\n')}`);
          const latest = (await storage.latest())!;
          assert.ok(Buffer.from(latest.model).equals(Buffer.from(wanted[1]!.model)), `${name}: version 2 is not the all-in-memory method's`);
          assert.equal(latest.hash, toHex(await sha256(wanted[1]!.model)));
          if (aggregator === 'fedadam') assert.ok(Buffer.from(latest.optimizer!).equals(Buffer.from(wanted[1]!.optimizer!.buffer)), `${name}: FedAdam's moments differ`);
          assert.equal(latest.updateCount, M);
          assert.equal(await storage.pendingCount(), 0);
          await storage.close();
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
}

test('an update that does not decode or does not fit is still left out of the round and deleted (one pass over the store), and the rest published as before', async () => {
  const r = new Random(5);
  const logs: string[] = [];
  const config = roundConfig(60, 3, 4, 'fedavg', 'mean', (l) => logs.push(l));
  const base = createItemTable(Array.from({ length: 60 }, (_, i) => `item-${i}`), 3, { seed: 3 });
  const good = Array.from({ length: 5 }, () => encodeUpdate(randomUpdate(r, 60, 3, 4, 64)));
  const broken = good[1]!.slice();
  broken[broken.length - 1] = 0xff; // codes above the range (and padding bits set)
  const otherShape = encodeUpdate(randomUpdate(r, 30, 3, 4, 64));
  const storage = new MemoryStorage();
  await addAll(storage, [good[0]!, broken, good[2]!, otherShape, good[3]!, good[4]!], 0);
  const rc = await RoundCoordinator.open(storage, base, config);
  assert.equal(rc.version, 1);
  const kept = [good[0]!, good[2]!, good[3]!, good[4]!];
  assert.ok(Buffer.from((await storage.latest())!.model).equals(Buffer.from(previousPublish(base, kept, config, null).model)));
  assert.ok(logs.some((l) => /left 2 pending updates out of the round and deleted them/.test(l) && /does not decode/.test(l) && /30 rows/.test(l)), logs.join('\n'));
  assert.equal(await storage.pendingCount(), 0);
});

test("a round whose updates another process takes while it reads them fails as a conflict (nothing published), adopting that process's version", async () => {
  const r = new Random(6);
  const config = roundConfig(40, 2, 20, 'fedavg', 'mean', quiet);
  const base = createItemTable(Array.from({ length: 40 }, (_, i) => `item-${i}`), 2, { seed: 3 });
  class Racing extends MemoryStorage {
    readonly shared = true;
    reads = 0;
    override async pendingByIds(ids: readonly number[]): Promise<PendingUpdate[]> {
      // Between the second and third batch, a peer publishes the round.
      if (++this.reads === 3) {
        const all = (await this.pendingRefs()).map((u) => u.id);
        const v0 = (await this.latest())!;
        await this.publish({ ...v0, version: 1, createdAt: 1 }, all);
      }
      return super.pendingByIds(ids);
    }
  }
  const storage = new Racing();
  const rc = await RoundCoordinator.open(storage, base, { ...config, minClients: 100 });
  await addAll(storage, Array.from({ length: 20 }, () => encodeUpdate(randomUpdate(r, 40, 2, 4, 64))), 0);
  (rc.config as { minClients: number }).minClients = 20;
  const aggregate = (rc as unknown as { aggregate(): Promise<number> }).aggregate.bind(rc);
  await assert.rejects(aggregate(), /no longer pending/);
  assert.deepEqual([rc.version, rc.pending, (await storage.latest())!.version], [1, 0, 1], "the peer's version adopted, nothing of this round published");
});

/** Random masked uploads of a cohort of `K` (values uniform mod 2^bits). */
function randomMasked(r: Random, K: number, length: number, bits: number, step: number): MaskedUpdate[] {
  return Array.from({ length: K }, (_, index) => ({
    cohortId: new Uint8Array(16).fill(9),
    index,
    cohortSize: K,
    bits,
    step,
    baseVersion: 0,
    values: Uint32Array.from({ length }, () => Math.floor(r.next() * 2 ** bits) >>> 0),
  }));
}

test('MaskedSum and RecoveredSum, one upload at a time, equal unmaskSum and unmaskRecovered', async () => {
  const r = new Random(11);
  for (const bits of [8, 17, 32]) {
    const ups = randomMasked(r, 7, 301, bits, 0.125);
    const s = new MaskedSum();
    for (const u of ups) s.add(u);
    assert.ok(sameBits(s.result(0.125), unmaskSum(ups, 0.125)), `bits ${bits}`);
    assert.equal(maskedUpdateBytes(301, bits) > 0, true);
  }
  // Recovery: cohorts of 8, degree 4, two members dropped; random recovery shares of the right
  // lengths (the sum is then noise, but both must make the same noise).
  const params: SecAggParams = { cohortSize: 8, bits: 20, step: 0.01, degree: 4, minSurvivors: 6 };
  for (const dropped of [[], [2], [1, 5]]) {
    const survivors = randomMasked(r, 8, 97, params.bits, params.step).filter((u) => !dropped.includes(u.index));
    const shares = new Map<number, Uint8Array>();
    for (const u of survivors) shares.set(u.index, Uint8Array.from({ length: recoveryShareBytes(u.index, 8, params.degree, dropped) }, () => r.int(256)));
    assert.ok(survivors.every((u) => sortedNeighbours(u.index, 8, params.degree).filter((j) => !dropped.includes(j)).length >= selfMaskThreshold(sortedNeighbours(u.index, 8, params.degree).length)));
    const s = new RecoveredSum(shares, dropped, params);
    for (const u of survivors) await s.addRecovered(u);
    assert.ok(sameBits(s.result(params.step), await unmaskRecovered(survivors, shares, dropped, params, params.step)), `dropped ${dropped.join(',')}`);
  }
});

for (const shared of [false, true]) {
  test(`a request made while a round of many updates is being combined is answered before the round ends (${shared ? 'shared store: readers do not wait for it behind the queue' : 'memory store'})`, async () => {
    const N = 96;
    let t = 1_000_000;
    let started!: () => void;
    const begun = new Promise<void>((res) => (started = res));
    let answered = false;
    let readsAfterAnswer = 0;
    class Watched extends MemoryStorage {
      readonly shared = shared;
      override async pendingByIds(ids: readonly number[]): Promise<PendingUpdate[]> {
        started();
        if (answered) readsAfterAnswer++;
        return super.pendingByIds(ids);
      }
    }
    const storage = new Watched();
    const server = await startServer({ port: 0, storage, initialTable: initialTable(), minClients: N, noiseMultiplier: 0, rateLimit: false, now: () => t, log: quiet });
    try {
      const v0 = await pull(server.url);
      const bodies = Array.from({ length: N }, (_, i) => honestUpdate(v0, 500 + i));
      for (const b of bodies.slice(0, -1)) assert.equal((await fetch(`${server.url}/v1/updates`, { method: 'POST', body: b as Uint8Array<ArrayBuffer> })).status, 202);
      // The last update completes the round: its answer comes once the round is published.
      const last = fetch(`${server.url}/v1/updates`, { method: 'POST', body: bodies[N - 1] as Uint8Array<ArrayBuffer> }).then(async (res) => (await res.json()) as { published?: number });
      await begun;
      t += 1_500; // on a shared store a look at it is due: a reader would queue one behind the round
      const [round, health] = await Promise.all([
        fetch(`${server.url}/v1/rounds/current`).then(async (res) => (await res.json()) as { version: number; pending: number }),
        fetch(`${server.url}/v1/health`).then((res) => res.status),
      ]);
      answered = true;
      assert.deepEqual([round.version, health], [0, 200], 'answered with the version the round builds on, before it was published');
      assert.equal((await last).published, 1);
      assert.ok(readsAfterAnswer > 0, 'the round was still reading updates when the requests were answered');
      assert.equal(server.rounds.version, 1);
    } finally {
      await server.close();
    }
  });
}

// The FedAdam test above builds its expected table with applyFedAdam itself: these are its
// figures by hand (a second moment decaying with β1 instead of β2 passed every other test: a
// mutation-testing review, stop 35).
test('FedAdam: two rounds give the hand-computed m, v and step', () => {
  const o = { lr: 0.01, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
  const t = { version: 0, itemIds: ['a'], dim: 1, factors: new Float32Array([0]), bias: new Float32Array([0]) };
  const mean = new Float64Array([0.1, -0.2]);
  const r1 = applyFedAdam(t, mean, null, o);
  const close = (got: number, want: number, what: string) => assert.ok(Math.abs(got - want) <= 1e-6 * Math.max(1, Math.abs(want)), `${what}: ${got} vs ${want}`);
  const m = [0.1 * 0.1, 0.1 * -0.2];
  const v = [0.99 * 1e-6 + 0.01 * 0.01, 0.99 * 1e-6 + 0.01 * 0.04];
  for (let i = 0; i < 2; i++) {
    close(r1.state[i]!, m[i]!, `m[${i}]`);
    close(r1.state[2 + i]!, v[i]!, `v[${i}]`);
  }
  close(r1.table.factors[0]!, (0.01 * m[0]!) / (Math.sqrt(v[0]!) + 1e-3), 'factor step');
  close(r1.table.bias[0]!, (0.01 * m[1]!) / (Math.sqrt(v[1]!) + 1e-3), 'bias step');
  // Round 2 from the state of round 1.
  const r2 = applyFedAdam(r1.table, mean, r1.state, o);
  const m2 = 0.9 * Math.fround(m[0]!) + 0.1 * 0.1;
  const v2 = 0.99 * Math.fround(v[0]!) + 0.01 * 0.01;
  close(r2.state[0]!, m2, 'm after round 2');
  close(r2.state[2]!, v2, 'v after round 2');
});
