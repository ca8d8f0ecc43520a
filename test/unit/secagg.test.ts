/**
 * Secure aggregation (src/federated/secagg.ts, the server's cohorts, syncOnce's masked path):
 * masks cancel exactly in the cohort's sum and nowhere else, the server publishes base + mean of
 * the members' clipped deltas, and refuses what does not belong to a cohort.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  MAX_COHORT_TIMEOUT_MS,
  MAX_SURVIVORS,
  addMod,
  addSelfMask,
  aliveNeighbours,
  checkConfirmations,
  confirmationTags,
  CONFIRM_TAG_BYTES,
  cohortSalt,
  importPublicKey,
  pairSeed,
  checkSecAggParams,
  combineShares,
  decodeFixedPoint,
  decodeMaskedUpdate,
  maskFromSeed,
  SEALED_SHARE_BYTES,
  selfMaskThreshold,
  sharePosition,
  sortedNeighbours,
  splitSecret,
  encodeFixedPoint,
  encodeMaskedUpdate,
  maskNeighbours,
  maskValues,
  packBits,
  PAIR_SEED_BYTES,
  recoveryShare,
  secAggKeyPair,
  survivorComponents,
  unmaskRecovered,
  unmaskSum,
  unpackBits,
  type SecAggParams,
} from '../../src/federated/secagg.js';
import { itemDelta } from '../../src/federated/client-update.js';
import { clipL2, RdpAccountant } from '../../src/federated/dp.js';
import { parseServerConfig, syncOnce, type FetchLike } from '../../src/federated/sync.js';
import { decodeModel, encodeModel, toHex } from '../../src/federated/wire.js';
import { Random } from '../../src/model/random.js';
import { createServer, MemoryStorage, RoundCoordinator } from '../../src/server/index.js';
import { assertKeptAnHourAfterEnd, cohortOfTwo, ConflictingStorage, DIM, exerciseCohortLeave, honestUpdate, IDS, initialTable, shopperHistory } from './server-helpers.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryCohortStore, type CohortStore } from '../../src/server/cohorts.js';
import { isAbortError, ModelError, StorageError } from '../../src/errors.js';

/** What a device with dropout recovery seals to its mask neighbours, as opaque bytes (tests that drive the server by hand). */
const junkSealed = (sa: SecAggParams, index: number) => new Uint8Array(maskNeighbours(index, sa.cohortSize, sa.degree).length * SEALED_SHARE_BYTES);
/** The length of a recovery share: 16 bytes per mask neighbour. */
const shareLength = (sa: SecAggParams, index: number) => maskNeighbours(index, sa.cohortSize, sa.degree).length * PAIR_SEED_BYTES;

test('packBits/unpackBits round-trip every width from 2 to 32 bits', () => {
  fc.assert(
    fc.property(fc.integer({ min: 2, max: 32 }), fc.array(fc.nat(), { maxLength: 50 }), (bits, raw) => {
      const mod = 2 ** bits;
      const v = Uint32Array.from(raw, (x) => x % mod);
      const packed = packBits(v, bits);
      assert.equal(packed.length, Math.ceil((v.length * bits) / 8));
      assert.deepEqual(unpackBits(packed, v.length, bits), v);
    }),
  );
});

test('fixed point: exact on the grid, signed and wrapping modulo 2^b, unbiased in between', () => {
  const enc = encodeFixedPoint(Float64Array.of(0.5, -0.25, 0), 0.25, 8, Math.random);
  assert.deepEqual(Array.from(enc), [2, 255, 0]);
  assert.deepEqual(Array.from(decodeFixedPoint(enc, 0.25, 8)), [0.5, -0.25, 0]);
  // Two values that wrap alone but whose sum is in range decode to the right sum.
  const a = encodeFixedPoint(Float64Array.of(40), 0.25, 8, Math.random); // 160 ≥ 128: reads negative alone
  const b = encodeFixedPoint(Float64Array.of(-30), 0.25, 8, Math.random);
  assert.equal(decodeFixedPoint(a, 0.25, 8)[0], -24);
  assert.equal(decodeFixedPoint(addMod(a, b, 8), 0.25, 8)[0], 10);
  // Stochastic rounding is unbiased: 0.1 on a grid of 0.25 averages to 0.1.
  const r = new Random(3);
  const many = encodeFixedPoint(new Float64Array(20_000).fill(0.1), 0.25, 16, () => r.next());
  const mean = decodeFixedPoint(many, 0.25, 16).reduce((s, x) => s + x, 0) / many.length;
  assert.ok(Math.abs(mean - 0.1) < 0.01, `mean ${mean}`);
});

test('mask neighbours form a symmetric graph of the asked degree', () => {
  for (const [K, d] of [
    [2, 2],
    [5, 4],
    [10, 4],
    [100, 16],
    [7, 16],
  ] as const) {
    const lists = Array.from({ length: K }, (_, i) => maskNeighbours(i, K, d));
    lists.forEach((l, i) => {
      assert.equal(l.length, Math.min(d, K - 1), `K ${K} member ${i}`);
      assert.ok(!l.includes(i));
      for (const j of l) assert.ok(lists[j]!.includes(i), `K ${K}: ${i}→${j} without ${j}→${i}`);
    });
  }
});

test('a cohort: every upload alone is masked, the masks cancel exactly in the sum of all K', async () => {
  const K = 6;
  const params: SecAggParams = { cohortSize: K, bits: 12, step: 1 / 256, degree: 4 };
  const cohortId = new Uint8Array(16).fill(7);
  const members = await Promise.all(Array.from({ length: K }, () => secAggKeyPair()));
  const publicKeys = members.map((m) => m.publicKey);
  const r = new Random(5);
  const values = Array.from({ length: K }, () => Float64Array.from({ length: 300 }, () => r.normal() * 0.5));
  const encoded = values.map((v) => encodeFixedPoint(v, params.step, params.bits, () => r.next()));
  const masked = await Promise.all(encoded.map((e, index) => maskValues(e, { index, cohortId, publicKeys, privateKey: members[index]!.privateKey, params })));
  for (let i = 0; i < K; i++) {
    const same = masked[i]!.filter((x, j) => x === encoded[i]![j]).length;
    assert.ok(same < 10, `member ${i}: ${same} of 300 coordinates left unmasked`);
  }
  // The wire round trip keeps everything.
  const uploads = masked.map((values, index) => decodeMaskedUpdate(encodeMaskedUpdate({ cohortId, index, cohortSize: K, bits: params.bits, step: params.step, baseVersion: 0, values })));
  const sum = unmaskSum(uploads, params.step);
  const plain = unmaskSum(
    encoded.map((values, index) => ({ cohortId, index, cohortSize: K, bits: params.bits, step: params.step, baseVersion: 0, values })),
    params.step,
  );
  assert.deepEqual(sum, plain, 'masks must cancel exactly');
  for (let j = 0; j < 300; j++) {
    const truth = values.reduce((s, v) => s + v[j]!, 0);
    assert.ok(Math.abs(sum[j]! - truth) <= K * params.step, `coordinate ${j}: ${sum[j]} vs ${truth}`);
  }
  // Any K − 1 of the uploads stay masked.
  const partial = unmaskSum(uploads.slice(1), params.step);
  const partialPlain = unmaskSum(
    encoded.slice(1).map((values, index) => ({ cohortId, index, cohortSize: K, bits: params.bits, step: params.step, baseVersion: 0, values })),
    params.step,
  );
  assert.ok(partial.filter((x, j) => x === partialPlain[j]).length < 10);
  // Masking needs only the member's mask neighbours' keys (what `/v1/secagg/cohorts/:id/members/:i` hands out): same result.
  const hood = (index: number) => new Map([index, ...maskNeighbours(index, K, params.degree)].map((j) => [j, publicKeys[j]!] as const));
  assert.equal(hood(0).size, 5, 'degree 4: four of the five other members');
  assert.deepEqual(await maskValues(encoded[0]!, { index: 0, cohortId, publicKeys: hood(0), privateKey: members[0]!.privateKey, params }), masked[0]);
  const missing = hood(0);
  missing.delete(maskNeighbours(0, K, params.degree)[2]!);
  await assert.rejects(maskValues(encoded[0]!, { index: 0, cohortId, publicKeys: missing, privateKey: members[0]!.privateKey, params }), /lacks the key of member/);
  // A cohort that lists one key twice is refused.
  await assert.rejects(
    maskValues(encoded[0]!, { index: 0, cohortId, publicKeys: [publicKeys[0]!, publicKeys[0]!, ...publicKeys.slice(2)], privateKey: members[0]!.privateKey, params }),
    /same public key twice/,
  );
});

test('a server that rewires the mask graph (real keys of other members in other slots) cannot unmask the sum of a small clique: pair masks are bound to both indices', async () => {
  // The attack (stop 31 review): K = 6, degree 2. Each honest member is shown real keys of other
  // members, in slots of the server's choosing, so that {0, 1, 5} and {2, 3, 4} form triangles whose
  // masks would cancel among themselves: the server would read the sum of 3 uploads.
  const K = 6;
  const params = checkSecAggParams({ cohortSize: K, bits: 16, step: 1 / 64, degree: 2 });
  const cohortId = new Uint8Array(16).fill(9);
  const members = await Promise.all(Array.from({ length: K }, () => secAggKeyPair()));
  const encoded = Array.from({ length: K }, (_, i) => encodeFixedPoint(Float64Array.from({ length: 64 }, (_, j) => (i + 1) * ((j % 7) - 3)), params.step, params.bits, () => 0.5));
  /** Member → (slot → whose key the server puts there): the rewired views. */
  const views: Array<Record<number, number>> = [{ 1: 1, 5: 5 }, { 2: 5, 0: 0 }, { 3: 3, 1: 4 }, { 4: 4, 2: 2 }, { 5: 2, 3: 3 }, { 0: 0, 4: 1 }];
  const masked = await Promise.all(
    encoded.map((e, index) => {
      const publicKeys = new Map<number, Uint8Array>([[index, members[index]!.publicKey]]);
      for (const [slot, who] of Object.entries(views[index]!)) publicKeys.set(Number(slot), members[who]!.publicKey);
      return maskValues(e, { index, cohortId, publicKeys, privateKey: members[index]!.privateKey, params });
    }),
  );
  const sumOf = (ids: number[], of: Uint32Array[]) => unmaskSum(ids.map((i) => ({ cohortId, index: i, cohortSize: K, bits: params.bits, step: params.step, baseVersion: 0, values: of[i]! })), params.step);
  for (const clique of [[0, 1, 5], [2, 3, 4]]) {
    const read = sumOf(clique, masked);
    const truth = sumOf(clique, encoded);
    const equal = read.filter((x, j) => x === truth[j]).length;
    assert.ok(equal < 5, `clique ${clique}: ${equal} of 64 coordinates of its members' sum readable`);
  }
});

async function secureServer(minClients: number, noiseMultiplier = 0) {
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients, clip: 1, noiseMultiplier, rateLimit: false, secureAggregation: true, log: () => {} });
  const fetchFn: FetchLike = (url, init) => Promise.resolve(parts.app.fetch(new Request(url, init as RequestInit)));
  return { ...parts, fetchFn };
}

const historyOf = (seed: number) => shopperHistory(seed, 6);

test('syncOnce with a secure-aggregation server: a cohort of 3 publishes base + mean of the clipped deltas', async () => {
  const { app, storage, fetchFn } = await secureServer(3);
  try {
    const config = (await (await app.fetch(new Request('http://x/v1/config'))).json()) as { secureAggregation: SecAggParams; updateBytes: number };
    assert.equal(config.secureAggregation.cohortSize, 3);
    assert.equal(config.secureAggregation.bits, 32, 'a 40 × 4 table fits 64 KiB at 32 bits');
    const egress: string[] = [];
    const results = await Promise.all(
      [1, 2, 3].map((s) =>
        syncOnce({
          serverUrl: 'http://x',
          fetch: fetchFn,
          accountant: new RdpAccountant(),
          budget: Infinity,
          history: historyOf(s),
          train: { seed: s },
          cohortPollMs: 1,
          onEgress: (e) => egress.push(`${e.method} ${e.endpoint} ${e.kind}`),
        }),
      ),
    );
    assert.ok(results.every((r) => r.sent && r.uploadedBytes === config.updateBytes));
    assert.ok(egress.includes('POST /v1/secagg/join cohort') && egress.includes('POST /v1/secagg/updates update'));
    assert.ok(!egress.some((e) => e.startsWith('POST /v1/updates')), 'no plain update may leave a device');
    const model = decodeModel(new Uint8Array(await (await app.fetch(new Request('http://x/v1/model'))).arrayBuffer())).table;
    assert.equal(model.version, 1);
    const base = results[0]!.global;
    const deltas = results.map((r) => {
      const d = itemDelta(base, r.local);
      clipL2(d, 1);
      return d;
    });
    const step = config.secureAggregation.step;
    const nf = base.factors.length;
    for (let i = 0; i < deltas[0]!.length; i++) {
      const mean = (deltas[0]![i]! + deltas[1]![i]! + deltas[2]![i]!) / 3;
      const got = i < nf ? model.factors[i]! - base.factors[i]! : model.bias[i - nf]! - base.bias[i - nf]!;
      assert.ok(Math.abs(got - mean) <= step + 1e-6, `coordinate ${i}: ${got} vs ${mean}`);
    }
    assert.ok(deltas.some((d) => d.some((x) => Math.abs(x) > 1e-3)), 'the devices trained something');
  } finally {
    await storage.close();
  }
});

test('secure-aggregation server: refuses plain updates, unknown cohorts, uploads without the member token, replays and bad keys; a join retried gets its place back; keys only once full', async () => {
  const { app, storage, rounds } = await secureServer(3);
  const step = rounds.config.secureAggregation!.step;
  const call = (path: string, init?: { method: string; body: Uint8Array; headers?: Record<string, string> }) =>
    Promise.resolve(app.fetch(new Request(`http://x${path}`, init as RequestInit)));
  try {
    const plain = await call('/v1/updates', { method: 'POST', body: new Uint8Array(100) });
    assert.equal(plain.status, 409);
    assert.equal(((await plain.json()) as { reason: string }).reason, 'wrong-mode');
    const badKey = await call('/v1/secagg/join', { method: 'POST', body: new Uint8Array(65).fill(4) });
    assert.equal(badKey.status, 400);
    assert.match(((await badKey.json()) as { error: string }).error, /P-256/);
    const a = await secAggKeyPair();
    const j1 = (await (await call('/v1/secagg/join', { method: 'POST', body: a.publicKey })).json()) as { cohort: string; index: number; token: string };
    assert.match(j1.token, /^[0-9a-f]{32}$/);
    assert.equal(j1.index, 0);
    // The same key again while the cohort forms (the first answer was lost): the same place, not a second one.
    const again = await call('/v1/secagg/join', { method: 'POST', body: a.publicKey });
    assert.equal(again.status, 200);
    const j1again = (await again.json()) as { cohort: string; index: number; token: string };
    assert.deepEqual([j1again.cohort, j1again.index, j1again.token], [j1.cohort, 0, j1.token]);
    assert.equal(((await (await call(`/v1/secagg/cohorts/${j1.cohort}`)).json()) as { joined: number }).joined, 1, 'counted once');
    const forming = (await (await call(`/v1/secagg/cohorts/${j1.cohort}`)).json()) as { status: string; keys?: string[] };
    assert.equal(forming.status, 'forming');
    assert.equal(forming.keys, undefined, 'no keys before the cohort is full');
    // An upload for a cohort that is not collecting is refused, and nothing is stored.
    const length = IDS.length * 5;
    const body = encodeMaskedUpdate({ cohortId: new Uint8Array(16).fill(1), index: 0, cohortSize: 3, bits: 32, step: step, baseVersion: 0, values: new Uint32Array(length) });
    const unknown = await call('/v1/secagg/updates', { method: 'POST', body });
    assert.equal(unknown.status, 409);
    assert.equal(((await unknown.json()) as { reason: string }).reason, 'unknown-cohort');
    assert.equal(await storage.pendingCount(), 0);
    // Fill the cohort; then member 0's upload is taken once and refused the second time.
    const others: Array<{ token: string }> = [];
    for (let i = 0; i < 2; i++) others.push((await (await call('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey })).json()) as { token: string });
    const ready = (await (await call(`/v1/secagg/cohorts/${j1.cohort}`)).json()) as { status: string; keys: string[] };
    assert.equal(ready.status, 'ready');
    assert.equal(ready.keys[0], toHex(a.publicKey));
    // A member asks for its own neighbourhood only: itself and its mask neighbours (here, all 3).
    const hood = (await (await call(`/v1/secagg/cohorts/${j1.cohort}/members/0`)).json()) as { keys?: string[]; memberKeys: Record<string, string> };
    assert.equal(hood.keys, undefined);
    assert.deepEqual(Object.keys(hood.memberKeys).sort(), ['0', '1', '2']);
    assert.equal(hood.memberKeys['0'], toHex(a.publicKey));
    for (const bad of ['3', '-1', 'x', '1e1']) {
      const r = await call(`/v1/secagg/cohorts/${j1.cohort}/members/${bad}`);
      assert.equal(r.status, 400, `members/${bad}`);
      assert.equal(((await r.json()) as { reason: string }).reason, 'malformed');
    }
    const mine = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(j1.cohort, 'hex')), index: 0, cohortSize: 3, bits: 32, step: step, baseVersion: 0, values: new Uint32Array(length) });
    // Another member (or anyone who learned the cohort id) cannot take member 0's place.
    const hijack = await call('/v1/secagg/updates', { method: 'POST', body: mine, headers: { 'X-Localrec-Cohort-Token': others[0]!.token } });
    assert.equal(hijack.status, 403);
    assert.equal(((await hijack.json()) as { reason: string }).reason, 'not-member');
    assert.equal((await call('/v1/secagg/updates', { method: 'POST', body: mine })).status, 403, 'no token at all');
    const withToken = { 'X-Localrec-Cohort-Token': j1.token };
    assert.equal((await call('/v1/secagg/updates', { method: 'POST', body: mine, headers: withToken })).status, 202);
    // The same body again is the pending upload (its answer was lost): 202, counted once. Another
    // body for member 0 is a replay.
    assert.equal((await call('/v1/secagg/updates', { method: 'POST', body: mine, headers: withToken })).status, 202);
    const other = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(j1.cohort, 'hex')), index: 0, cohortSize: 3, bits: 32, step: step, baseVersion: 0, values: new Uint32Array(length).fill(7) });
    const replay = await call('/v1/secagg/updates', { method: 'POST', body: other, headers: withToken });
    assert.equal(replay.status, 409);
    assert.equal(((await replay.json()) as { reason: string }).reason, 'replayed');
    const wrongBits = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(j1.cohort, 'hex')), index: 1, cohortSize: 3, bits: 16, step: step, baseVersion: 0, values: new Uint32Array(length) });
    assert.equal((await call('/v1/secagg/updates', { method: 'POST', body: wrongBits, headers: { 'X-Localrec-Cohort-Token': others[0]!.token } })).status, 422);
  } finally {
    await storage.close();
  }
});

test("a request of the other mode answers 409 wrong-mode before its body is judged by the other mode's size", async () => {
  // Masked uploads at 4 bits are smaller than this table's plain 8-bit updates.
  const secure = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 1, rateLimit: false, secureAggregation: { bits: 4 }, log: () => {} });
  const plain = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {} });
  const reason = async (res: Response) => [res.status, ((await res.json()) as { reason: string }).reason];
  try {
    const view = { table: decodeModel(plain.rounds.modelBytes('float32')).table, hash: Uint8Array.from(Buffer.from(plain.rounds.hash, 'hex')), config: plain.rounds.config };
    const outdated = honestUpdate(view, 1);
    const maskedBytes = ((await (await secure.app.request('/v1/config')).json()) as { updateBytes: number }).updateBytes;
    assert.ok(outdated.length > maskedBytes, `a plain update (${outdated.length} bytes) is over the masked size (${maskedBytes})`);
    assert.deepEqual(await reason(await secure.app.request('/v1/updates', { method: 'POST', body: outdated as Uint8Array<ArrayBuffer> })), [409, 'wrong-mode']);
    // And the other way: a masked upload or a recovery share sent to a plain server.
    const masked = encodeMaskedUpdate({ cohortId: new Uint8Array(16).fill(1), index: 0, cohortSize: 3, bits: 32, step: 1, baseVersion: 0, values: new Uint32Array(IDS.length * 5) });
    assert.ok(masked.length > outdated.length);
    assert.deepEqual(await reason(await plain.app.request('/v1/secagg/updates', { method: 'POST', body: masked as Uint8Array<ArrayBuffer> })), [409, 'wrong-mode']);
    assert.deepEqual(await reason(await plain.app.request(`/v1/secagg/cohorts/${'ab'.repeat(16)}/members/0/recovery`, { method: 'POST', body: new Uint8Array(256) as Uint8Array<ArrayBuffer> })), [409, 'wrong-mode']);
    assert.deepEqual(await reason(await plain.app.request(`/v1/secagg/cohorts/${'ab'.repeat(16)}`)), [409, 'wrong-mode']);
    assert.equal(await secure.storage.pendingCount(), 0);
  } finally {
    await secure.storage.close();
    await plain.storage.close();
  }
});

test('every cohort route answers an unknown cohort 409 unknown-cohort, and one that is not even an id (a NUL) never reaches the store', async () => {
  const asked: string[] = [];
  /** The memory cohort store, noting every id it is asked about. */
  class Watched extends MemoryCohortStore {
    override async info(id: string) {
      asked.push(id);
      return super.info(id);
    }
    override async leave(id: string, index: number, token: string) {
      asked.push(id);
      return super.leave(id, index, token);
    }
  }
  class WatchedStorage extends MemoryStorage {
    cohortStore(params: SecAggParams, timeouts: number | { fillMs: number; uploadMs: number }, now: () => number) {
      return new Watched(params, timeouts, now);
    }
  }
  const parts = await createServer({ storage: new WatchedStorage(), initialTable: initialTable(), minClients: 3, rateLimit: false, secureAggregation: true, log: () => {} });
  const unknown = 'ab'.repeat(16);
  const routes: Array<[string, string, Uint8Array?]> = [
    ['GET', '/v1/secagg/cohorts/:id'],
    ['GET', '/v1/secagg/cohorts/:id/members/0'],
    ['POST', '/v1/secagg/cohorts/:id/members/0/leave'],
    ['POST', '/v1/secagg/cohorts/:id/members/0/recovery', new Uint8Array(16)],
  ];
  for (const [method, route, body] of routes) {
    for (const id of ['a%00b', 'AB'.repeat(16), 'ab'.repeat(17), 'x', unknown]) {
      const res = await parts.app.request(route.replace(':id', id), { method, ...(body ? { body: body as Uint8Array<ArrayBuffer> } : {}) });
      const json = (await res.json()) as { reason: string; error: string };
      assert.deepEqual([res.status, json.reason], [409, 'unknown-cohort'], `${method} ${route} with ${id}: ${json.error}`);
      if (id !== unknown) assert.match(json.error, /a cohort id is 32 lowercase hex digits/);
    }
  }
  assert.deepEqual([...new Set(asked)], [unknown], 'the store only ever saw a well-formed id');
});

test('at start, a complete cohort found pending (crash before publishing) is published and an incomplete one discarded', async () => {
  const storage = new MemoryStorage();
  const base = initialTable();
  const open = () =>
    RoundCoordinator.open(storage, base, {
      itemCount: IDS.length,
      dim: base.dim,
      trained: { rows: IDS.length, biases: true },
      bits: 8,
      blockSize: 256,
      clip: 1,
      noiseMultiplier: 0,
      normTolerance: 0.01,
      normSlack: 6,
      minClients: 2,
      maxStaleness: 2,
      aggregator: 'fedavg',
      robust: 'mean',
      trimFraction: 0.1,
      serverLearningRate: 1,
      fedAdam: { lr: 0.01, beta1: 0.9, beta2: 0.99, tau: 1e-3 },
      secureAggregation: { cohortSize: 2, bits: 16, step: 1 / 1024, degree: 2, timeoutMs: 60_000 },
      now: Date.now,
      log: () => {},
    });
  await open();
  const cohortId = new Uint8Array(16).fill(9);
  const length = IDS.length * 5;
  // Two members whose (unmasked, for the test) values are +0.5 and +0.25 on every coordinate.
  for (const [index, v] of [
    [0, 512],
    [1, 256],
  ] as const) {
    const body = encodeMaskedUpdate({ cohortId, index, cohortSize: 2, bits: 16, step: 1 / 1024, baseVersion: 0, values: new Uint32Array(length).fill(v) });
    await storage.addUpdate({ nonce: `${toHex(cohortId)}:${index}`, baseVersion: 0, receivedAt: 0, body });
  }
  // And one upload of another cohort that never completed: after a restart it can never be unmasked.
  const other = new Uint8Array(16).fill(3);
  await storage.addUpdate({
    nonce: `${toHex(other)}:0`,
    baseVersion: 0,
    receivedAt: 0,
    body: encodeMaskedUpdate({ cohortId: other, index: 0, cohortSize: 2, bits: 16, step: 1 / 1024, baseVersion: 0, values: new Uint32Array(length).fill(7) }),
  });
  const rc = await open();
  assert.equal(rc.version, 1);
  assert.equal(await storage.pendingCount(), 0, 'the complete cohort was published, the incomplete one discarded');
  const next = decodeModel(rc.modelBytes('float32')).table;
  assert.ok(Math.abs(next.bias[0]! - base.bias[0]! - 0.375) < 1e-6);
});

test('a store with pending updates of the other mode refuses to start, naming the mode they were sent in, and keeps them', async () => {
  const storage = new MemoryStorage();
  const start = (secureAggregation: boolean) => createServer({ storage, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation, log: () => {} });
  // Plain → secure: two acknowledged plain updates would otherwise be deleted as dead cohorts' uploads.
  const plain = await start(false);
  const v0 = { table: decodeModel(plain.rounds.modelBytes('float32')).table, hash: Uint8Array.from(Buffer.from(plain.rounds.hash, 'hex')), config: plain.rounds.config };
  for (const seed of [1, 2]) {
    const res = await plain.app.request('/v1/updates', { method: 'POST', body: honestUpdate(v0, seed) as Uint8Array<ArrayBuffer> });
    assert.equal(res.status, 202);
  }
  await assert.rejects(start(true), (e: unknown) => e instanceof ModelError && /2 pending plain updates \(sent without secure aggregation\).*restart without --secure-aggregation/.test(e.message));
  assert.equal(await storage.pendingCount(), 2, 'the acknowledged updates are kept');
  // They go into a round of the plain server; then a masked upload is pending.
  assert.equal((await plain.app.request('/v1/updates', { method: 'POST', body: honestUpdate(v0, 3) as Uint8Array<ArrayBuffer> })).status, 202);
  assert.equal(plain.rounds.version, 1);
  const secure = await start(true);
  const j = (await (await secure.app.request('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> })).json()) as { cohort: string; token: string };
  for (let i = 0; i < 2; i++) await secure.app.request('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> });
  const bits = secure.rounds.config.secureAggregation!.bits;
  const masked = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(j.cohort, 'hex')), index: 0, cohortSize: 3, bits, step: secure.rounds.config.secureAggregation!.step, baseVersion: 1, values: new Uint32Array(IDS.length * 5) });
  assert.equal((await secure.app.request('/v1/secagg/updates', { method: 'POST', body: masked as Uint8Array<ArrayBuffer>, headers: { 'X-Localrec-Cohort-Token': j.token } })).status, 202);
  // Secure → plain: a plain server would accept updates and fail every aggregation on the masked one.
  await assert.rejects(start(false), (e: unknown) => e instanceof ModelError && /1 pending masked uploads \(sent under secure aggregation\).*restart with --secure-aggregation and the same --min-clients/.test(e.message));
  assert.equal(await storage.pendingCount(), 1);
});

test('a restart with another cohort size or step refuses pending masked uploads (it would drop them, or publish them at the wrong scale), and keeps them', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-secagg-restart-'));
  try {
    // A cohort of 3 uploaded everything; its publish failed (a full disk), so its uploads stay pending.
    const first = await createServer({
      dataDir: dir, initialTable: initialTable(), minClients: 3, noiseMultiplier: 1, secureAggregation: true, rateLimit: false,
      sqlite: { beforeCommit: (what) => { if (what === 'publish') throw new Error('database or disk is full'); } },
      log: () => {},
    });
    const sa = first.rounds.config.secureAggregation!;
    const delta = new Float64Array(IDS.length * (DIM + 1));
    for (let i = IDS.length * DIM; i < delta.length; i++) delta[i] = 0.1; // every bias +0.1
    const members = [];
    for (let i = 0; i < 3; i++) members.push((await (await first.app.request('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> })).json()) as { cohort: string; index: number; token: string });
    for (const m of members) {
      // (Unmasked: masks would cancel in the sum anyway.)
      const body = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), index: m.index, cohortSize: 3, bits: sa.bits, step: sa.step, baseVersion: 0, values: encodeFixedPoint(delta, sa.step, sa.bits, () => 0.5) });
      assert.equal((await first.app.request('/v1/secagg/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'X-Localrec-Cohort-Token': m.token } })).status, 202);
    }
    assert.equal(await first.storage.pendingCount(), 3);
    await first.storage.close();
    const start = (o: { noiseMultiplier: number; minClients: number }) => createServer({ dataDir: dir, initialTable: initialTable(), secureAggregation: true, rateLimit: false, log: () => {}, ...o });
    await assert.rejects(start({ noiseMultiplier: 3, minClients: 3 }), /pending masked uploads sent for cohorts of 3 at \d+ bits, step [\d.e-]+, and this server uses 3 at \d+ bits, step [\d.e-]+; restart with the settings they were sent under \(--min-clients, --secagg-bits, and for the step --clip, --noise/);
    await assert.rejects(start({ noiseMultiplier: 1, minClients: 4 }), /sent for cohorts of 3 .* this server uses 4 /);
    // Recovery turned on: these uploads carry no self-mask, and would never make a recovering cohort.
    await assert.rejects(
      createServer({ dataDir: dir, initialTable: initialTable(), secureAggregation: { minSurvivors: 2 }, rateLimit: false, log: () => {}, noiseMultiplier: 1, minClients: 3 }),
      /pending masked uploads sent without dropout recovery, and this server runs with it; restart without --secagg-survivors/,
    );
    // The same config as they were sent under publishes them, at their scale.
    const again = await start({ noiseMultiplier: 1, minClients: 3 });
    try {
      assert.equal(again.rounds.version, 1);
      assert.equal(await again.storage.pendingCount(), 0);
      const moved = decodeModel(again.rounds.modelBytes('float32')).table.bias[0]! - initialTable().bias[0]!;
      assert.ok(Math.abs(moved - 0.1) < 1e-3, `the biases moved by the cohort's mean, +0.1: ${moved}`);
    } finally {
      await again.storage.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a restart without dropout recovery refuses pending self-masked uploads (summed plainly, their self-masks would be published as the model), and keeps them', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-secagg-selfmask-'));
  // σ 0.5: the step is the same with and without recovery, so only the self-masks tell the two apart.
  const common = { dataDir: dir, initialTable: initialTable(), minClients: 3, noiseMultiplier: 0.5, rateLimit: false as const, log: () => {} };
  try {
    const first = await createServer({ ...common, secureAggregation: { minSurvivors: 2 } });
    const sa = first.rounds.config.secureAggregation!;
    const members = [];
    for (let i = 0; i < 3; i++) {
      const keys = await secAggKeyPair();
      const j = (await (await first.app.request('/v1/secagg/join', { method: 'POST', body: keys.publicKey as Uint8Array<ArrayBuffer> })).json()) as { cohort: string; index: number; token: string };
      members.push({ ...j, keys });
    }
    for (const m of members) {
      const view = (await (await first.app.request(`/v1/secagg/cohorts/${m.cohort}/members/${m.index}`)).json()) as { memberKeys: Record<string, string> };
      const publicKeys = new Map(Object.entries(view.memberKeys).map(([k, v]) => [Number(k), Uint8Array.from(Buffer.from(v, 'hex'))] as const));
      const mask = { index: m.index, cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), publicKeys, privateKey: m.keys.privateKey, params: sa };
      const twice = await addSelfMask(await maskValues(encodeFixedPoint(new Float64Array(IDS.length * (DIM + 1)), sa.step, sa.bits, () => 0.5), mask), mask);
      const body = encodeMaskedUpdate({ cohortId: mask.cohortId, index: m.index, cohortSize: 3, bits: sa.bits, step: sa.step, baseVersion: 0, ...twice });
      assert.equal((await first.app.request('/v1/secagg/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'X-Localrec-Cohort-Token': m.token } })).status, 202);
    }
    await first.storage.close();
    const plain = createServer({ ...common, secureAggregation: true });
    await assert.rejects(plain, /pending masked uploads sent with dropout recovery, and this server runs without it; restart with the --secagg-survivors they were sent under/);
    const { SqliteStorage } = await import('../../src/server/sqlite-storage.js');
    const stored = SqliteStorage.open(dir);
    try {
      assert.equal(await stored.pendingCount(), 3, 'kept');
    } finally {
      await stored.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('masked uploads: the step must be the server\'s (422 config-mismatch), reserved bytes and padding bits zero (400 malformed)', async () => {
  const { app, storage, rounds } = await secureServer(3);
  try {
    const sa = rounds.config.secureAggregation!;
    const m = (await (await app.request('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> })).json()) as { cohort: string; index: number; token: string };
    const length = IDS.length * (DIM + 1);
    const body = (step: number, bits = sa.bits) => encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), index: 0, cohortSize: 3, bits, step, baseVersion: 0, values: new Uint32Array(length) });
    const post = async (b: Uint8Array) => {
      const r = await app.request('/v1/secagg/updates', { method: 'POST', body: b as Uint8Array<ArrayBuffer>, headers: { 'X-Localrec-Cohort-Token': m.token } });
      return [r.status, ((await r.json()) as { reason: string; error: string }).reason];
    };
    assert.deepEqual(await post(body(sa.step * 2)), [422, 'config-mismatch']);
    const reserved = body(sa.step);
    reserved[6] = 1;
    assert.deepEqual(await post(reserved), [400, 'malformed']);
    const zeroStep = body(sa.step);
    new DataView(zeroStep.buffer).setFloat32(40, 0, true);
    assert.deepEqual(await post(zeroStep), [400, 'malformed']);
    assert.equal(await storage.pendingCount(), 0, 'nothing refused was stored');
    // Padding: a length whose bits do not fill the last byte.
    const odd = encodeMaskedUpdate({ cohortId: new Uint8Array(16), index: 0, cohortSize: 3, bits: 3, step: 1, baseVersion: 0, values: new Uint32Array(3) });
    assert.doesNotThrow(() => decodeMaskedUpdate(odd));
    odd[odd.length - 1]! |= 0x80;
    assert.throws(() => decodeMaskedUpdate(odd), /padding bits in the last byte are not zero/);
  } finally {
    await storage.close();
  }
});

/**
 * Cohorts in a store of their own, whose record of an upload fails once when `failMark` is set (as
 * a PostgreSQL connection can between the insert and the cohort's update), and whose `discard`
 * fails once when `failDiscard` is set.
 */
class FlakyCohortStorage extends MemoryStorage {
  failMark = false;
  failDiscard = false;
  override async discard(ids: readonly number[]) {
    if (this.failDiscard) {
      this.failDiscard = false;
      throw new StorageError('discard updates failed: Connection terminated unexpectedly');
    }
    return super.discard(ids);
  }
  cohortStore(params: SecAggParams, timeouts: number, now: () => number): CohortStore {
    const inner = new MemoryCohortStore(params, timeouts, now);
    const markSubmitted = inner.markSubmitted.bind(inner);
    inner.markSubmitted = async (...a: Parameters<CohortStore['markSubmitted']>) => {
      if (this.failMark) {
        this.failMark = false;
        throw new StorageError('record a cohort upload failed: Connection terminated unexpectedly');
      }
      return markSubmitted(...a);
    };
    return inner;
  }
}

/** A secure-aggregation server (cohorts of 3) on a {@link FlakyCohortStorage}, its 3 members joined, and their upload. */
async function flakyCohortServer() {
  const storage = new FlakyCohortStorage();
  const { app, rounds } = await createServer({ storage, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, secureAggregation: true, rateLimit: false, log: () => {} });
  const sa = rounds.config.secureAggregation!;
  const members: Array<{ cohort: string; index: number; token: string }> = [];
  for (let i = 0; i < 3; i++) members.push((await (await app.request('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> })).json()) as { cohort: string; index: number; token: string });
  let lastError = '';
  /** Member `m`'s masked upload (all values `fill`): [status, reason or 'accepted']. */
  const upload = async (m: (typeof members)[number], fill = 0) => {
    const body = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), index: m.index, cohortSize: 3, bits: sa.bits, step: sa.step, baseVersion: 0, values: new Uint32Array(IDS.length * (DIM + 1)).fill(fill) });
    const r = await app.request('/v1/secagg/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'X-Localrec-Cohort-Token': m.token } });
    const json = (await r.json()) as { reason?: string; error?: string };
    lastError = json.error ?? '';
    return [r.status, json.reason ?? 'accepted'];
  };
  /** The `error` of the last upload's answer. */
  const error = () => lastError;
  return { storage, rounds, members, upload, error };
}

test('a storage failure after the upload was inserted (its cohort could not record it) takes it out again: the 503 is true, and the retry is taken', async () => {
  const { storage, rounds, members, upload, error } = await flakyCohortServer();
  storage.failMark = true;
  assert.deepEqual(await upload(members[0]!), [503, 'storage-unavailable']);
  assert.match(error(), /nothing was stored/);
  assert.equal(await storage.pendingCount(), 0, 'nothing stored, as the 503 says');
  assert.deepEqual(await upload(members[0]!), [202, 'accepted'], 'the retry is taken, not "replayed"');
  assert.deepEqual(await upload(members[1]!), [202, 'accepted']);
  assert.deepEqual(await upload(members[2]!), [202, 'accepted']);
  assert.equal(rounds.version, 1, 'the cohort completes and is published');
  assert.equal(await storage.pendingCount(), 0);
  await storage.close();
});

test('the same masked upload again, still pending, is taken once: after a lost answer, or a failure whose clean-up failed too', async () => {
  // The cohort's record of the upload fails once, and so does taking the upload out again (the
  // database is down for both): the row stays pending outside its cohort.
  const { storage, rounds, members, upload, error } = await flakyCohortServer();
  storage.failMark = true;
  storage.failDiscard = true;
  assert.deepEqual(await upload(members[0]!), [503, 'storage-unavailable']);
  assert.equal(await storage.pendingCount(), 1, 'the row could not be taken out');
  // So the 503 does not say nothing was stored (before the fix it did): it says to send the same upload again.
  assert.doesNotMatch(error(), /nothing was stored/);
  assert.match(error(), /the upload is stored, but not every step of taking it was: send the same upload again later/);
  assert.deepEqual(await upload(members[0]!), [202, 'accepted'], 'the retry finishes it, not "replayed"');
  assert.equal((await rounds.cohort(members[0]!.cohort))!.submitted, 1);
  // Its answer lost, member 1 sends the same body again: counted once. Another body under its nonce is a replay.
  assert.deepEqual(await upload(members[1]!), [202, 'accepted']);
  assert.deepEqual(await upload(members[1]!), [202, 'accepted']);
  assert.deepEqual(await upload(members[1]!, 1), [409, 'replayed']);
  assert.deepEqual([(await rounds.cohort(members[0]!.cohort))!.submitted, await storage.pendingCount()], [2, 2]);
  assert.deepEqual(await upload(members[2]!), [202, 'accepted']);
  assert.equal(rounds.version, 1, 'the cohort completes and is published');
  // Once published, the cohort takes no uploads, the same body included.
  assert.deepEqual(await upload(members[2]!), [409, 'unknown-cohort']);
  assert.equal(await storage.pendingCount(), 0);
  await storage.close();
});

test('a retry of an upload its cohort counted already, failing on the storage, leaves that upload in place: the cohort still completes', async () => {
  const { storage, rounds, members, upload, error } = await flakyCohortServer();
  assert.deepEqual(await upload(members[0]!), [202, 'accepted']);
  storage.failMark = true; // the retry (its first answer was lost) hits a storage error
  assert.deepEqual(await upload(members[0]!), [503, 'storage-unavailable']);
  assert.match(error(), /the upload is stored, .*: send the same upload again later/);
  assert.equal(await storage.pendingCount(), 1, 'the counted upload is not deleted by the failed retry');
  assert.deepEqual(await upload(members[0]!), [202, 'accepted']);
  assert.deepEqual(await upload(members[1]!), [202, 'accepted']);
  assert.deepEqual(await upload(members[2]!), [202, 'accepted']);
  assert.equal(rounds.version, 1, 'the cohort completes and is published');
  await storage.close();
});

test('a cohort that does not fill in time is aborted: the waiting device sends nothing and spends no ε', async () => {
  let t = 1_000_000;
  const parts = await createServer({
    dataDir: null,
    initialTable: initialTable(),
    minClients: 3,
    clip: 1,
    noiseMultiplier: 1,
    rateLimit: false,
    secureAggregation: { timeoutMs: 60_000 },
    now: () => t,
    log: () => {},
  });
  const fetchFn: FetchLike = (url, init) => Promise.resolve(parts.app.fetch(new Request(url, init as RequestInit)));
  try {
    const accountant = new RdpAccountant();
    const egress: string[] = [];
    // The device polls; meanwhile the clock passes the server's timeout and nobody else joins.
    const pending = syncOnce({
      serverUrl: 'http://x',
      fetch: fetchFn,
      accountant,
      history: historyOf(4),
      cohortPollMs: 1,
      cohortWaitMs: 600_000, // longer than the server's timeout: the server aborts first
      now: () => t,
      onEgress: (e) => {
        egress.push(`${e.method} ${e.endpoint}`);
        if (e.endpoint.startsWith('/v1/secagg/cohorts/')) t += 30_000;
      },
    });
    await assert.rejects(pending, (e: Error) => e.name === 'NetworkError' && /aborted/.test(e.message) && /nothing was sent/.test(e.message));
    assert.equal(accountant.releases, 0, 'no ε spent');
    assert.ok(!egress.some((e) => e.startsWith('POST /v1/secagg/updates')), egress.join(', '));
    assert.equal(await parts.storage.pendingCount(), 0);
    // The next device opens a fresh cohort.
    const j = (await (await parts.app.fetch(new Request('http://x/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> }))).json()) as { index: number };
    assert.equal(j.index, 0);
  } finally {
    await parts.storage.close();
  }
});

test('a full cohort that does not collect every upload in time is aborted and its uploads are deleted', async () => {
  let t = 5_000_000;
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 2, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 1_000 }, now: () => t, log: () => {} });
  const call = (path: string, body?: Uint8Array, token?: string) =>
    Promise.resolve(
      parts.app.fetch(new Request(`http://x${path}`, body ? { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: token ? { 'X-Localrec-Cohort-Token': token } : {} } : {})),
    );
  try {
    const j = (await (await call('/v1/secagg/join', (await secAggKeyPair()).publicKey)).json()) as { cohort: string; token: string };
    await call('/v1/secagg/join', (await secAggKeyPair()).publicKey);
    const length = IDS.length * 5;
    const body = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(j.cohort, 'hex')), index: 0, cohortSize: 2, bits: 32, step: parts.rounds.config.secureAggregation!.step, baseVersion: 0, values: new Uint32Array(length) });
    assert.equal((await call('/v1/secagg/updates', body, j.token)).status, 202);
    assert.equal(await parts.storage.pendingCount(), 1);
    t += 2_000; // past the timeout; member 1 never uploads
    const view = (await (await call(`/v1/secagg/cohorts/${j.cohort}`)).json()) as { status: string; reason: string; keys?: string[] };
    assert.equal(view.status, 'aborted');
    assert.match(view.reason, /1 of 2 members uploaded/);
    assert.equal(view.keys, undefined);
    // Any queued server step runs after the discard the abort queued.
    const late = await parts.rounds.submitMasked(
      encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(j.cohort, 'hex')), index: 1, cohortSize: 2, bits: 32, step: parts.rounds.config.secureAggregation!.step, baseVersion: 0, values: new Uint32Array(length) }),
      'any',
    );
    assert.equal(late.ok ? 'accepted' : late.reason, 'unknown-cohort', 'a late upload to an aborted cohort is refused');
    assert.equal(await parts.storage.pendingCount(), 0, "the aborted cohort's upload is gone");
    assert.equal(parts.rounds.version, 0);
  } finally {
    await parts.storage.close();
  }
});

test('SqliteStorage.discard deletes pending updates only', async () => {
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { SqliteStorage } = await import('../../src/server/sqlite-storage.js');
  const dir = await mkdtemp(join(tmpdir(), 'localrec-discard-'));
  const storage = SqliteStorage.open(dir);
  try {
    const a = await storage.addUpdate({ nonce: 'c:0', baseVersion: 0, receivedAt: 0, body: new Uint8Array([1]) });
    const b = await storage.addUpdate({ nonce: 'c:1', baseVersion: 0, receivedAt: 0, body: new Uint8Array([2]) });
    assert.ok(a !== 'replayed' && b !== 'replayed');
    await storage.discard([a.id, 999]);
    assert.deepEqual(
      (await storage.pending()).map((u) => u.nonce),
      ['c:1'],
    );
  } finally {
    await storage.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the server says when fixed-point rounding is a sizeable share of the DP noise, and which --secagg-bits fixes it', async () => {
  const lines: string[] = [];
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 100, clip: 1, noiseMultiplier: 1, rateLimit: false, secureAggregation: { bits: 4 }, log: (l) => lines.push(l) });
  await parts.storage.close();
  // γ = 8 / (2^3 − 1) = 8/7: rounding variance 100 · (8/7)² / 4 = 32.65× the DP noise's (σC)² = 1.
  const warning = lines.find((l) => l.includes('rounding noise'));
  assert.ok(warning, lines.join('\n'));
  assert.match(warning, /32\.65× the DP noise/);
  // γ = 8 / (2^(b−1) − 1): 100 · γ² / 4 ≤ 0.1 first holds at b = 8 (0.0992).
  assert.match(warning, /--secagg-bits 8 /);
  const quiet: string[] = [];
  const ok = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 100, clip: 1, noiseMultiplier: 1, rateLimit: false, secureAggregation: { bits: 12 }, log: (l) => quiet.push(l) });
  await ok.storage.close();
  assert.ok(!quiet.some((l) => l.includes('rounding noise')));
});

test("a member's view of a full cohort holds degree + 1 keys, whatever the cohort size", async () => {
  const { MemoryCohortStore, cohortView } = await import('../../src/server/cohorts.js');
  const store = new MemoryCohortStore({ cohortSize: 40, bits: 8, step: 0.1, degree: 4 }, 60_000, () => 0);
  const keys = await Promise.all(Array.from({ length: 40 }, () => secAggKeyPair()));
  let cohort;
  for (const k of keys) {
    const r = await store.join(k.publicKey);
    assert.ok(!('error' in r));
    cohort = r.cohort;
  }
  const info = (await store.info(cohort!.id))!;
  const view = await cohortView(store, info, 4, 5);
  assert.equal(view.status, 'ready');
  assert.equal(view.keys, undefined);
  assert.deepEqual(Object.keys(view.memberKeys!).map(Number).sort((a, b) => a - b), [3, 4, 5, 6, 7]);
  for (const [j, hex] of Object.entries(view.memberKeys!)) assert.equal(hex, toHex(keys[Number(j)]!.publicKey));
  const all = await cohortView(store, info, 4);
  assert.deepEqual(all.keys, keys.map((k) => toHex(k.publicKey)), 'without member: all keys in member order, for audits');
});

test("the default range is the hard bound K·C + 8·C·max(1, σ) when the bits make its rounding negligible or under subspace, else 8·C·max(1, σ)", async () => {
  const stepOf = async (o: Parameters<typeof createServer>[0]) => {
    const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 100, clip: 1, noiseMultiplier: 1, rateLimit: false, log: () => {}, ...o });
    try {
      return ((await (await parts.app.request('/v1/config')).json()) as { secureAggregation: { bits: number; step: number } }).secureAggregation;
    } finally {
      await parts.storage.close();
    }
  };
  // 32 bits: γ = 108 / (2^31 − 1) (both ends of ±R representable), rounding 100·γ²/4 ≈ 6·10⁻¹⁴,
  // far under 1 % of (σC)² = 1.
  const wide = await stepOf({ secureAggregation: true });
  assert.equal(wide.bits, 32);
  assert.equal(wide.step, 108 / (2 ** 31 - 1));
  // 12 bits: the hard bound's rounding would be 100·(108/2047)²/4 ≈ 0.07 > 0.01, so 8σC.
  assert.equal((await stepOf({ secureAggregation: { bits: 12 } })).step, 8 / 2047);
  // Subspace updates never cancel: the hard bound whatever the bits.
  assert.equal((await stepOf({ secureAggregation: { bits: 12 }, aggregator: 'subspace', trainBiases: false, trainRows: 20 })).step, 108 / 2047);
  // An explicit range wins.
  assert.equal((await stepOf({ secureAggregation: { range: 4 } })).step, 4 / (2 ** 31 - 1));
  // Both ends of ±R are values of the b-bit code: a cohort sum of exactly +R or −R comes back as
  // itself (at γ = R/2^(b−1), +R encoded as 2^(b−1) wrapped around to −R).
  for (const { bits, step, R } of [
    { ...(await stepOf({ secureAggregation: { bits: 12 }, aggregator: 'subspace', trainBiases: false, trainRows: 20 })), R: 108 },
    { ...(await stepOf({ secureAggregation: { range: 4, bits: 8 } })), R: 4 },
  ]) {
    const back = decodeFixedPoint(encodeFixedPoint(Float64Array.of(R, -R), step, bits, () => 0.5), step, bits);
    assert.ok(Math.abs(back[0]! - R) < 1e-9 && Math.abs(back[1]! + R) < 1e-9, `${bits} bits, R = ${R}: ${Array.from(back)}`);
  }
});

/** Every member of a cohort masks (pairwise and self-mask) its encoded values; what the server gets. */
/** K fresh member key pairs, and their public keys by index (as a cohort view holds them). */
async function memberKeys(K: number) {
  const members = await Promise.all(Array.from({ length: K }, () => secAggKeyPair()));
  return { members, keys: new Map(members.map((m, i) => [i, m.publicKey] as const)) };
}

async function maskedCohort(params: SecAggParams, cohortId: Uint8Array, seed: number, length = 50) {
  const K = params.cohortSize;
  const { members, keys } = await memberKeys(K);
  const r = new Random(seed);
  const encoded = Array.from({ length: K }, () => encodeFixedPoint(Float64Array.from({ length }, () => r.normal() * 0.3), params.step, params.bits, () => r.next()));
  const uploads = await Promise.all(
    encoded.map(async (e, index) => {
      const o = { index, cohortId, publicKeys: keys, privateKey: members[index]!.privateKey, params };
      const { values, sealed } = await addSelfMask(await maskValues(e, o), o);
      return { cohortId, index, cohortSize: K, bits: params.bits, step: params.step, baseVersion: 0, values, sealed };
    }),
  );
  /** What the server's member view hands member `j`: each surviving neighbour's share sealed to j. */
  const sealedFor = (j: number, dropped: readonly number[]) =>
    new Map(
      maskNeighbours(j, K, params.degree)
        .filter((i) => !dropped.includes(i))
        .map((i) => {
          const p = sharePosition(i, j, K, params.degree);
          return [i, uploads[i]!.sealed.subarray(p * SEALED_SHARE_BYTES, (p + 1) * SEALED_SHARE_BYTES)] as const;
        }),
    );
  const share = (j: number, dropped: readonly number[]) => recoveryShare({ index: j, cohortId, publicKeys: keys, privateKey: members[j]!.privateKey, params, length, dropped, sealed: sealedFor(j, dropped) });
  return { members, keys, encoded, uploads, sealedFor, share };
}

test('Shamir shares of a seed: any threshold of them give it back, in any order; fewer do not', () => {
  const secret = Uint8Array.from({ length: 16 }, (_, i) => (i * 37 + 11) & 0xff);
  const shares = splitSecret(secret, 7, 4);
  const at = (ps: number[]) => ps.map((p) => ({ x: p + 1, y: shares[p]! }));
  for (const pick of [[0, 1, 2, 3], [6, 2, 4, 0], [1, 3, 5, 6], [0, 1, 2, 3, 4, 5, 6]]) assert.deepEqual([...combineShares(at(pick))], [...secret], String(pick));
  assert.notDeepEqual([...combineShares(at([0, 1, 2]))], [...secret], 'three of a 4-threshold say nothing of it');
  assert.deepEqual([...combineShares([{ x: 1, y: splitSecret(secret, 1, 1)[0]! }])], [...secret], 'threshold 1: the share is the secret');
  assert.deepEqual([selfMaskThreshold(2), selfMaskThreshold(3), selfMaskThreshold(16)], [1, 2, 8]);
  assert.throws(() => checkSecAggParams({ cohortSize: 1000, bits: 16, step: 1, degree: 256, minSurvivors: 900 }), /degree: must be at most 255 with dropout recovery/);
});

test('recovery: the survivors’ pair seeds and self-mask shares unmask exactly their sum; a device never reveals its own', async () => {
  const K = 8;
  const params: SecAggParams = { cohortSize: K, bits: 16, step: 1 / 256, degree: 4, minSurvivors: 5 };
  const cohortId = new Uint8Array(16).fill(4);
  const c = await maskedCohort(params, cohortId, 11);
  // Members 2 and 3 (neighbours of each other: their shared mask is in nobody's upload) never upload.
  const dropped = [2, 3];
  const survivors = [0, 1, 4, 5, 6, 7];
  const shares = new Map<number, Uint8Array>();
  for (const j of survivors) {
    const share = await c.share(j, dropped);
    assert.equal(share.length, maskNeighbours(j, K, params.degree).length * PAIR_SEED_BYTES, 'a seed or a self-mask share per neighbour');
    shares.set(j, share);
  }
  const uploads = survivors.map((i) => c.uploads[i]!);
  const sum = await unmaskRecovered(uploads, shares, dropped, params, params.step);
  const plain = unmaskSum(
    survivors.map((index) => ({ cohortId, index, cohortSize: K, bits: params.bits, step: params.step, baseVersion: 0, values: c.encoded[index]! })),
    params.step,
  );
  assert.deepEqual([...sum], [...plain], 'exactly the survivors’ encoded sum');
  // No dropout: the K uploads' pairwise masks cancel, and every self-mask comes off with the shares.
  const all = new Map(await Promise.all([...Array(K).keys()].map(async (j) => [j, await c.share(j, [])] as const)));
  const whole = await unmaskRecovered(c.uploads, all, [], params, params.step);
  assert.deepEqual([...whole], [...unmaskSum(c.encoded.map((values, index) => ({ cohortId, index, cohortSize: K, bits: params.bits, step: params.step, baseVersion: 0, values })), params.step)]);
  assert.notDeepEqual([...unmaskSum(c.uploads, params.step)], [...whole], 'without the shares the self-masks stay on the sum');
  // Without one survivor's share the sum stays masked (and is refused, not guessed).
  const partial = new Map(shares);
  partial.delete(4);
  await assert.rejects(unmaskRecovered(uploads, partial, dropped, params, params.step), /member 4 has no recovery share/);
  await assert.rejects(c.share(2, dropped), /names this member \(2\)/);
  // A share sealed to another member, or altered, does not open: the device gives nothing.
  const wrong = c.sealedFor(0, dropped);
  wrong.set(1, c.sealedFor(5, dropped).get(4)!);
  await assert.rejects(recoveryShare({ index: 0, cohortId, publicKeys: c.keys, privateKey: c.members[0]!.privateKey, params, length: 50, dropped, sealed: wrong }), /the share member 1 sealed to member 0 does not open/);
  const missing = c.sealedFor(0, dropped);
  missing.delete(1);
  await assert.rejects(recoveryShare({ index: 0, cohortId, publicKeys: c.keys, privateKey: c.members[0]!.privateKey, params, length: 50, dropped, sealed: missing }), /lacks the share member 1 sealed to member 0/);
  assert.throws(() => checkSecAggParams({ ...params, minSurvivors: 9 }), /minSurvivors: must be an integer 2\.\.cohortSize \(8\)/);
});

test('a server that claims a member dropped while holding its upload gets its pair seeds, never its self-mask: the upload stays masked', async () => {
  const K = 8;
  const params: SecAggParams = { cohortSize: K, bits: 16, step: 1 / 256, degree: 4, minSurvivors: 5 };
  const cohortId = new Uint8Array(16).fill(9);
  const c = await maskedCohort(params, cohortId, 23, 400);
  const target = 3;
  // Every neighbour of the target is told it dropped: each reveals its pair seed with it (once).
  const told = new Map(await Promise.all(maskNeighbours(target, K, params.degree).map(async (j) => [j, await c.share(j, [target])] as const)));
  const u = c.uploads[target]!;
  const stripped = u.values.slice();
  for (const [j, share] of told) {
    const p = sharePosition(j, target, K, params.degree);
    const mask = await maskFromSeed(share.subarray(p * PAIR_SEED_BYTES, (p + 1) * PAIR_SEED_BYTES), stripped.length, params.bits);
    addMod(stripped, mask, params.bits, target < j ? -1 : 1);
  }
  // Before double masking this recovered the target's encoded values exactly. Now what is left is
  // its values plus the self-mask: as far from them as a uniform draw.
  const err = decodeFixedPoint(addMod(stripped.slice(), c.encoded[target]!, params.bits, -1), params.step, params.bits);
  const close = [...err].filter((e) => Math.abs(e) < 1).length;
  assert.ok(close < 20, `${close} of 400 coordinates within ±1 of the target's values (uniform: about 2)`);
  // With the self-mask taken off too (what the server would need the shares for), they come back:
  // the check above fails only because of the self-mask.
  const honest = new Map(await Promise.all(maskNeighbours(target, K, params.degree).map(async (j) => [j, await c.share(j, [])] as const)));
  const points = sortedNeighbours(target, K, params.degree).map((j, p) => ({ x: p + 1, y: honest.get(j)!.subarray(sharePosition(j, target, K, params.degree) * 16, (sharePosition(j, target, K, params.degree) + 1) * 16) }));
  const seed = combineShares(points);
  addMod(stripped, await maskFromSeed(seed, stripped.length, params.bits), params.bits, -1);
  assert.deepEqual([...stripped], [...c.encoded[target]!]);
});

test('recovery survives a server outage: a device keeps polling and retries its confirmation, ready tags and share (the server takes the same bytes again) until its deadline', async () => {
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 60_000, minSurvivors: 2 }, log: () => {} });
  const app = (url: string, init?: RequestInit) => Promise.resolve(parts.app.fetch(new Request(url, init)));
  try {
    let down = 0;
    const flaky: FetchLike = async (url, init) => {
      // After the upload, every recovery step first meets an outage of 4 failed requests (more than one request's own retries).
      if (/\/(confirm|ready|recovery)$/.test(url) && down < 12) {
        down++;
        if (down % 4 !== 0) throw new TypeError('fetch failed');
        // The fourth reaches the server but its answer is lost: the retry sends the same bytes again.
        await app(url, init as RequestInit);
        throw new TypeError('connection reset');
      }
      return app(url, init as RequestInit);
    };
    const results = await Promise.all(
      [0, 1, 2].map((s) =>
        syncOnce({ serverUrl: 'http://x', fetch: s === 0 ? flaky : (url, init) => app(url, init as RequestInit), accountant: new RdpAccountant(), budget: Infinity, history: historyOf(s + 1), train: { seed: s + 1 }, cohortPollMs: 1, backoffMs: 1 }),
      ),
    );
    assert.deepEqual(results.map((r) => [r.cohort!.outcome, r.cohort!.recoveryShareSent]), [['published', true], ['published', true], ['published', true]], JSON.stringify(results.map((r) => r.cohort)));
    assert.equal(down, 12, 'each of the three steps met the outage');
    assert.equal(parts.rounds.version, 1);
  } finally {
    await parts.storage.close();
  }
});

test('recovery through the server: a member that never uploads does not sink its cohort; the survivors give their seeds and the version is their mean', async () => {
  let t = 2_000_000;
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 4, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 60_000, minSurvivors: 3 }, now: () => t, log: () => {} });
  const app = (url: string, init?: RequestInit) => Promise.resolve(parts.app.fetch(new Request(url, init)));
  try {
    const config = (await (await app('http://x/v1/config')).json()) as { secureAggregation: SecAggParams };
    assert.equal(config.secureAggregation.minSurvivors, 3);
    for (const bad of [1, 5, 2.5]) {
      await assert.rejects(
        createServer({ dataDir: null, initialTable: initialTable(), minClients: 4, rateLimit: false, secureAggregation: { minSurvivors: bad }, log: () => {} }),
        /options\.secureAggregation\.minSurvivors: must be an integer 2\.\.minClients \(4, the cohort size\)/,
      );
    }
    const egress: string[][] = [[], [], [], []];
    let jumped = false;
    const results = await Promise.allSettled(
      [0, 1, 2, 3].map((s) =>
        syncOnce({
          serverUrl: 'http://x',
          // Device 3 loses its connection when it uploads (once: no retry).
          fetch: (url, init) => (s === 3 && url.endsWith('/v1/secagg/updates') ? Promise.reject(new Error('offline')) : app(url, init as RequestInit)),
          attempts: s === 3 ? 1 : 3,
          accountant: new RdpAccountant(),
          budget: Infinity,
          history: historyOf(s + 1),
          train: { seed: s + 1 },
          cohortPollMs: 1,
          now: () => t,
          onEgress: (e) => {
            egress[s]!.push(`${e.method} ${e.endpoint} ${e.status}`);
            // Once the three survivors' uploads are in, the clock jumps past the collect timeout:
            // recovery starts (confirmations, ready, shares).
            const up = (k: number) => egress[k]!.some((l) => l.startsWith('POST /v1/secagg/updates 202'));
            if (!jumped && up(0) && up(1) && up(2)) {
              jumped = true;
              t += 60_001;
            }
          },
        }),
      ),
    );
    assert.equal(results[3]!.status, 'rejected');
    const done = results.slice(0, 3).map((r) => {
      assert.equal(r.status, 'fulfilled', r.status === 'rejected' ? String(r.reason) : '');
      return (r as PromiseFulfilledResult<Awaited<ReturnType<typeof syncOnce>>>).value;
    });
    for (const d of done) assert.deepEqual([d.cohort!.outcome, d.cohort!.recoveryShareSent], ['published', true], JSON.stringify(d.cohort));
    for (const s of [0, 1, 2]) assert.ok(egress[s]!.some((l) => /^POST \/v1\/secagg\/cohorts\/[0-9a-f]+\/members\/\d\/recovery 202$/.test(l)), egress[s]!.join('\n'));
    const model = decodeModel(new Uint8Array(await (await app('http://x/v1/model')).arrayBuffer())).table;
    assert.equal(model.version, 1);
    const base = done[0]!.global;
    const nf = base.factors.length;
    const deltas = done.map((r) => {
      const d = itemDelta(base, r.local);
      clipL2(d, 1);
      return d;
    });
    for (let i = 0; i < deltas[0]!.length; i++) {
      const mean = (deltas[0]![i]! + deltas[1]![i]! + deltas[2]![i]!) / 3;
      const got = i < nf ? model.factors[i]! - base.factors[i]! : model.bias[i - nf]! - base.bias[i - nf]!;
      assert.ok(Math.abs(got - mean) <= config.secureAggregation.step + 1e-6, `coordinate ${i}: ${got} vs ${mean}`);
    }
    const id = done[0]!.cohort!.id;
    const view = (await (await app(`http://x/v1/secagg/cohorts/${id}`)).json()) as { status: string; dropped: number[]; published: number };
    const missing = [0, 1, 2, 3].filter((i) => !done.some((d) => d.cohort!.index === i));
    assert.deepEqual([view.status, view.dropped, view.published], ['done', missing, 1]);
    assert.equal(await parts.storage.pendingCount(), 0);
  } finally {
    await parts.storage.close();
  }
});

/**
 * A secure-aggregation server with dropout recovery (cohorts of 4, t = 3, 1 s deadlines) on
 * `storage`, its clock at `clock.t`, with one full cohort (four members joined) and the masked
 * zero update member `index` would upload (junk seals: the tests never unmask it for real).
 */
async function cohortOfFour(storage: MemoryStorage) {
  const clock = { t: 3_000_000 };
  const logs: string[] = [];
  const parts = await createServer({ storage, initialTable: initialTable(), minClients: 4, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 1_000, minSurvivors: 3 }, now: () => clock.t, log: (l) => logs.push(l) });
  const call = (path: string, body?: Uint8Array, token?: string) =>
    Promise.resolve(parts.app.fetch(new Request(`http://x${path}`, body ? { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: token ? { 'X-Localrec-Cohort-Token': token } : {} } : {})));
  const sa = ((await (await call('/v1/config')).json()) as { secureAggregation: SecAggParams }).secureAggregation;
  const members: Array<{ cohort: string; index: number; token: string }> = [];
  for (let i = 0; i < 4; i++) members.push((await (await call('/v1/secagg/join', (await secAggKeyPair()).publicKey)).json()) as { cohort: string; index: number; token: string });
  const id = members[0]!.cohort;
  const body = (index: number) => encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(id, 'hex')), index, cohortSize: 4, bits: sa.bits, step: sa.step, baseVersion: 0, values: new Uint32Array(IDS.length * (DIM + 1)), sealed: junkSealed(sa, index) });
  return { clock, logs, parts, call, sa, members, id, body };
}

for (const lasting of [false, true]) {
  test(
    lasting
      ? 'a recovered cohort whose publish keeps failing is aborted after PUBLISH_GRACE upload timeouts, saying so'
      : 'a recovered cohort whose publish hit a passing storage error is published on a later request, not aborted at the recovery deadline',
    async () => {
      class Flaky extends MemoryStorage {
        failures = 0;
        override async publish(...a: Parameters<MemoryStorage['publish']>) {
          if (this.failures > 0) {
            this.failures--;
            throw new StorageError('publish version failed: database or disk is full');
          }
          return super.publish(...a);
        }
      }
      const storage = new Flaky();
      const { clock, logs, parts, call, sa, members, id, body } = await cohortOfFour(storage);
      try {
        for (const m of members.slice(0, 3)) assert.equal((await call('/v1/secagg/updates', body(m.index), m.token)).status, 202);
        clock.t += 1_500; // member 3 never uploads: the cohort recovers
        const view = async () => (await (await call(`/v1/secagg/cohorts/${id}`)).json()) as { status: string; published?: number; reason?: string };
        assert.equal((await view()).status, 'recovering');
        storage.failures = lasting ? Infinity : 1;
        for (const m of members.slice(0, 3)) assert.equal((await call(`/v1/secagg/cohorts/${id}/members/${m.index}/recovery`, new Uint8Array(shareLength(sa, m.index)), m.token)).status, 202);
        assert.equal(parts.rounds.version, 0, 'the publish failed');
        assert.ok(logs.some((l) => /aggregation of recovered cohort .* failed, will retry/.test(l)));
        clock.t += 1_500; // past the recovery deadline: the next request sweeps, and retries the aggregation
        await view();
        await parts.rounds.drain();
        if (!lasting) {
          assert.deepEqual([(await view()).status, (await view()).published, parts.rounds.version, await storage.pendingCount()], ['done', 1, 1, 0]);
          assert.ok(!logs.some((l) => /discarded/.test(l)), logs.join('\n'));
          // A member index that is not a number is quoted as sent, not as NaN.
          const bad = await call(`/v1/secagg/cohorts/${id}/members/-1/leave`, new Uint8Array(0), members[0]!.token);
          assert.match(await bad.text(), /member must be 0\.\.3, got '-1'/);
          return;
        }
        assert.equal((await view()).status, 'recovering', 'still being retried');
        assert.ok(logs.some((l) => /aggregation failed again, will retry/.test(l)));
        clock.t += 3_000; // 4.5 s after recovery began: past PUBLISH_GRACE (4) × the 1 s upload timeout
        const ended = await view();
        await parts.rounds.drain();
        assert.deepEqual([ended.status, ended.reason], ['aborted', 'all 3 recovery shares came, but the cohort could not be published within 4000 ms']);
        assert.deepEqual([parts.rounds.version, await storage.pendingCount()], [0, 0]);
      } finally {
        await storage.close();
      }
    },
  );
}

test('a complete cohort whose publish lost to other processes three times in a row is published on a later request, not left waiting, also when a retry loses again', async () => {
  let t = 1_000_000;
  const storage = new ConflictingStorage();
  const logs: string[] = [];
  const { parts, members, upload, view } = await cohortOfTwo(storage, { now: () => t }, (l) => logs.push(l));
  try {
    storage.conflicts = 4;
    assert.equal((await upload(members[0]!)).published, null);
    assert.equal((await upload(members[1]!)).published, null, 'three conflicts: the round waits');
    assert.equal(parts.rounds.version, 0);
    // No further upload will complete this cohort: the next request that looks at cohorts, a
    // second later, retries its publish (before the fix it waited for another cohort, or a restart),
    // and so does the one after a retry that lost again.
    t += 1_500;
    await view();
    await parts.rounds.drain();
    assert.equal(parts.rounds.version, 0, 'the fourth conflict');
    t += 1_500;
    await view();
    await parts.rounds.drain();
    assert.deepEqual([parts.rounds.version, (await view()).status, (await view()).published, await storage.pendingCount()], [1, 'done', 1, 0]);
  } finally {
    await storage.close();
  }
});

/** A store whose publish fails while `failing` is set (a full disk). */
class PublishFailing extends MemoryStorage {
  failing = false;
  override async publish(...a: Parameters<MemoryStorage['publish']>) {
    if (this.failing) throw new StorageError('publish version failed: database or disk is full');
    return super.publish(...a);
  }
}

test('a complete cohort whose publish keeps failing is aborted after PUBLISH_GRACE upload timeouts, saying so, and the retries stop', async () => {
  let t = 1_000_000;
  const storage = new PublishFailing();
  const logs: string[] = [];
  const { parts, members, upload, view } = await cohortOfTwo(storage, { now: () => t }, (l) => logs.push(l));
  const retries = () => logs.filter((l) => /aggregation failed again, will retry/.test(l)).length;
  try {
    storage.failing = true;
    await upload(members[0]!);
    await upload(members[1]!);
    assert.ok(logs.some((l) => /aggregation failed, will retry/.test(l)));
    t += 1_500; // past the upload deadline: complete, so not late; its publish is retried
    assert.equal((await view()).status, 'ready');
    await parts.rounds.drain();
    assert.equal(retries(), 1);
    t += 3_000; // 4.5 s after it filled: past PUBLISH_GRACE (4) × the 1 s upload timeout
    const ended = await view();
    await parts.rounds.drain();
    assert.deepEqual([ended.status, ended.reason], ['aborted', 'all 2 members uploaded, but the cohort could not be published within 4000 ms']);
    assert.deepEqual([parts.rounds.version, await storage.pendingCount()], [0, 0], 'its uploads are deleted');
    const before = retries();
    for (let i = 0; i < 3; i++) {
      t += 1_500;
      await view();
      await parts.rounds.drain();
    }
    assert.equal(retries(), before, 'nothing left to publish: no more retries');
  } finally {
    await storage.close();
  }
});

test('a complete cohort aborted at its publish deadline stays aborted when the storage comes back just then: the retry queued before the sweep does not publish it', async () => {
  let t = 1_000_000;
  const storage = new PublishFailing();
  const logs: string[] = [];
  const { parts, members, upload, view } = await cohortOfTwo(storage, { now: () => t }, (l) => logs.push(l));
  try {
    storage.failing = true;
    await upload(members[0]!);
    await upload(members[1]!);
    t += 1_500;
    await view();
    await parts.rounds.drain();
    storage.failing = false; // back, as the deadline passes: the sweep queues the owed retry, then aborts
    t += 3_000;
    assert.equal((await view()).status, 'aborted');
    await parts.rounds.drain();
    assert.deepEqual([(await view()).status, parts.rounds.version, await storage.pendingCount()], ['aborted', 0, 0]);
    assert.ok(!logs.some((l) => /published version 1/.test(l)), logs.join('\n'));
  } finally {
    await storage.close();
  }
});

test('a recovered cohort holding a stray upload of a member it counts as dropped (stored, never recorded) is published without it', async () => {
  const storage = new MemoryStorage();
  const { clock, logs, parts, call, sa, members, id, body } = await cohortOfFour(storage);
  try {
    for (const m of members.slice(0, 3)) assert.equal((await call('/v1/secagg/updates', body(m.index), m.token)).status, 202);
    // Member 3's upload was stored, but its cohort never recorded it (the storage failed in
    // between, and so did taking it out again).
    await storage.addUpdate({ nonce: `${id}:3`, baseVersion: 0, receivedAt: clock.t, body: body(3) });
    clock.t += 1_500; // the upload deadline: member 3 counts as dropped
    const view = async () => (await (await call(`/v1/secagg/cohorts/${id}`)).json()) as { status: string; dropped?: number[]; published?: number };
    assert.deepEqual([(await view()).status, (await view()).dropped], ['recovering', [3]]);
    for (const m of members.slice(0, 3)) assert.equal((await call(`/v1/secagg/cohorts/${id}/members/${m.index}/recovery`, new Uint8Array(shareLength(sa, m.index)), m.token)).status, 202);
    // Before the fix the cohort waited for 3 uploads and found 4: never unmasked, aborted at its deadline.
    assert.deepEqual([parts.rounds.version, (await view()).status, (await view()).published, await storage.pendingCount()], [1, 'done', 1, 0]);
    assert.equal((await storage.latest())!.updateCount, 3, 'the survivors’ uploads only');
    assert.ok(logs.some((l) => /discarded 1 uploads of members of cohort .* counted as dropped/.test(l)), logs.join('\n'));
  } finally {
    await storage.close();
  }
});

test('recovery shares: refused outside recovery, from a member that owes none, with the wrong length or token, and twice; too few uploads still abort', async () => {
  let t = 3_000_000;
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 4, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 1_000, minSurvivors: 3 }, now: () => t, log: () => {} });
  const call = (path: string, body?: Uint8Array, token?: string) =>
    Promise.resolve(parts.app.fetch(new Request(`http://x${path}`, body ? { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: token ? { 'X-Localrec-Cohort-Token': token } : {} } : {})));
  const reason = async (r: Response) => [r.status, ((await r.json()) as { reason: string }).reason];
  try {
    const sa = ((await (await call('/v1/config')).json()) as { secureAggregation: SecAggParams }).secureAggregation;
    const bits = sa.bits;
    const cohort = async () => {
      const js = [];
      for (let i = 0; i < 4; i++) js.push((await (await call('/v1/secagg/join', (await secAggKeyPair()).publicKey)).json()) as { cohort: string; index: number; token: string });
      return js;
    };
    const upload = (m: { cohort: string; index: number; token: string }) =>
      call('/v1/secagg/updates', encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), index: m.index, cohortSize: 4, bits, step: parts.rounds.config.secureAggregation!.step, baseVersion: 0, values: new Uint32Array(IDS.length * 5), sealed: junkSealed(sa, m.index) }), m.token);
    const js = await cohort();
    const share = (m: { cohort: string; index: number }, n = 1) => call(`/v1/secagg/cohorts/${m.cohort}/members/${m.index}/recovery`, new Uint8Array(16 * n), undefined);
    assert.deepEqual(await reason(await share(js[0]!)), [409, 'unknown-cohort'], 'not recovering yet');
    // A body over degree × 16 bytes is 413 oversized before anything else, as docs/protocol.md's rows say.
    const rows = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8').split('\n');
    for (const round of ['confirm', 'ready', 'recovery']) {
      const over = call(`/v1/secagg/cohorts/${js[0]!.cohort}/members/0/${round}`, new Uint8Array(sa.degree * 16 + 1), js[0]!.token);
      assert.deepEqual(await reason(await over), [413, 'oversized'], round);
      const row = rows.find((l) => l.startsWith(`| POST | \`/v1/secagg/cohorts/:id/members/:i/${round === 'ready' ? 'confirm' : round}\``));
      assert.match(row ?? '', /`413 oversized` for a body over `degree` × 16 bytes \(checked first/, `${round}: documented`);
    }
    for (const m of js.slice(0, 3)) assert.equal((await upload(m)).status, 202);
    t += 1_500; // member 3 never uploads: recovery
    const view = (await (await call(`/v1/secagg/cohorts/${js[0]!.cohort}`)).json()) as { status: string; dropped: number[] };
    assert.deepEqual([view.status, view.dropped], ['recovering', [3]]);
    assert.deepEqual(await reason(await upload(js[3]!)), [409, 'unknown-cohort'], 'a late upload is refused once recovery began');
    const give = (m: { cohort: string; index: number; token: string }, bytes: number, token = m.token) => call(`/v1/secagg/cohorts/${m.cohort}/members/${m.index}/recovery`, new Uint8Array(bytes), token);
    // Confirmation and ready tags: 16 bytes per neighbour left alive (1 and 2 here); the same bytes again are taken.
    for (const round of ['confirm', 'ready']) {
      const tags = (fill: number, bytes = 32) => call(`/v1/secagg/cohorts/${js[0]!.cohort}/members/0/${round}`, new Uint8Array(bytes).fill(fill), js[0]!.token);
      assert.deepEqual(await reason(await tags(1, 48)), [422, 'wrong-shape'], round);
      assert.equal((await tags(1)).status, 202);
      assert.equal((await tags(1)).status, 202, `${round}: a retry after a lost answer`);
      assert.deepEqual(await reason(await tags(2)), [409, 'replayed'], round);
      assert.deepEqual(await reason(await call(`/v1/secagg/cohorts/${js[0]!.cohort}/members/3/${round}`, new Uint8Array(32), js[3]!.token)), [409, 'wrong-mode'], `${round}: a dropped member`);
    }
    const n = shareLength(sa, 0);
    assert.deepEqual(await reason(await give(js[0]!, n, js[1]!.token)), [403, 'not-member']);
    assert.deepEqual(await reason(await give(js[0]!, n - 16)), [422, 'wrong-shape']);
    assert.deepEqual(await reason(await give(js[3]!, n)), [409, 'wrong-mode'], 'the dropped member owes nothing');
    assert.equal((await give(js[0]!, n)).status, 202);
    assert.equal((await give(js[0]!, n)).status, 202, 'the same share again (a retry after a lost answer) is taken as given');
    assert.deepEqual(await reason(await call(`/v1/secagg/cohorts/${js[0]!.cohort}/members/0/recovery`, new Uint8Array(n).fill(1), js[0]!.token)), [409, 'replayed'], 'another share is refused');
    // An upload without sealed shares (format 5) has no shares of its self-mask: refused with recovery on.
    const other = await cohort();
    const plain = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(other[0]!.cohort, 'hex')), index: other[0]!.index, cohortSize: 4, bits, step: sa.step, baseVersion: 0, values: new Uint32Array(IDS.length * 5) });
    // An upload from an SDK before pair keys were salted (format 1) would not cancel: refused, saying why.
    const old = plain.slice();
    old[4] = 1;
    const refusedOld = await call('/v1/secagg/updates', old, other[0]!.token);
    assert.equal(refusedOld.status, 400);
    assert.match(((await refusedOld.json()) as { error: string }).error, /format 1 comes from an older localrec SDK .* update the page's SDK/);
    const refusedPlain = await call('/v1/secagg/updates', plain, other[0]!.token);
    assert.equal(refusedPlain.status, 422);
    assert.match(((await refusedPlain.json()) as { error: string }).error, /must seal a share of its self-mask to each of its 3 mask neighbours \(format 4\), the upload has 0/);
    // The other shares never come: recovery times out, and the uploads are deleted.
    t += 1_500;
    const ended = (await (await call(`/v1/secagg/cohorts/${js[0]!.cohort}`)).json()) as { status: string; reason: string };
    assert.deepEqual([ended.status, ended.reason], ['aborted', 'only 1 of the 3 recovery shares came within 1000 ms']);
    // A cohort with fewer than minSurvivors uploads is aborted at the timeout, as without recovery.
    const few = await cohort();
    for (const m of few.slice(0, 2)) assert.equal((await upload(m)).status, 202);
    t += 1_500;
    const short = (await (await call(`/v1/secagg/cohorts/${few[0]!.cohort}`)).json()) as { status: string; reason: string };
    assert.deepEqual([short.status, short.reason], ['aborted', 'only 2 of 4 members uploaded within 1000 ms (recovery needs 3)']);
    // The discards are queued behind the server's other steps: give them a moment.
    for (let i = 0; i < 100 && (await parts.storage.pendingCount()) > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(await parts.storage.pendingCount(), 0, 'the uploads of both aborted cohorts are deleted');
    assert.equal(parts.rounds.version, 0);
  } finally {
    await parts.storage.close();
  }
});

test('recovery never isolates a device: the server aborts when the missing members cut the mask graph into parts smaller than t, and a device refuses such a list', async () => {
  assert.deepEqual(survivorComponents(8, 2, [2, 6]), [
    [0, 1, 7],
    [3, 4, 5],
  ]);
  assert.deepEqual(survivorComponents(8, 4, [2, 6]), [[0, 1, 3, 4, 5, 7]], 'at degree 4 the ring holds together');
  // Server side: a ring of 8 (degree 2) that loses members 2 and 6 has 6 ≥ t = 5 uploads, but in two parts of 3.
  const { MemoryCohortStore } = await import('../../src/server/cohorts.js');
  let t = 0;
  const store = new MemoryCohortStore({ cohortSize: 8, bits: 16, step: 1 / 1024, degree: 2, minSurvivors: 5 }, 1_000, () => t);
  let id = '';
  for (let i = 0; i < 8; i++) {
    const j = await store.join((await secAggKeyPair()).publicKey);
    assert.ok(!('error' in j));
    id = j.cohort.id;
  }
  for (const i of [0, 1, 3, 4, 5, 7]) await store.markSubmitted(id, i, 100 + i);
  t += 1_001;
  const swept = await store.sweep();
  assert.deepEqual(swept.aborted.map((a) => [a.id, a.updateIds.length]), [[id, 6]]);
  assert.match(swept.aborted[0]!.reason, /the missing members cut the mask graph, leaving a part of 3 < 5/);

  // Device side: a server that claims both of a device's ring neighbours dropped gets nothing from it.
  // The server's clock jumps past the recovery deadline once device 0 has refused (not before: a
  // late upload under load must not turn into a dropout).
  let skew = 0;
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 4, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { minSurvivors: 2, degree: 2, timeoutMs: 60_000, uploadTimeoutMs: 60_000 }, now: () => Date.now() + skew, log: () => {} });
  let uploads = 0;
  let allUploaded!: () => void;
  const fourUploads = new Promise<void>((r) => (allUploaded = r));
  const app = async (url: string, init?: RequestInit) => {
    const res = await parts.app.fetch(new Request(url, init));
    if (url.endsWith('/v1/secagg/updates') && res.status === 202 && ++uploads === 4) allUploaded();
    return res;
  };
  try {
    const sent: string[] = [];
    let uploaded = false;
    // Device 0's view of the server is tampered with after its upload: its neighbours "dropped".
    const lying: FetchLike = async (url, init) => {
      const res = await app(url, init as RequestInit);
      if (url.endsWith('/v1/secagg/updates')) uploaded = true;
      if (init?.method === 'POST') sent.push(new URL(url).pathname);
      const m = /\/members\/(\d+)$/.exec(url);
      if (uploaded && m && (!init?.method || init.method === 'GET')) {
        const me = Number(m[1]);
        const view = (await res.json()) as Record<string, unknown>;
        return new Response(JSON.stringify({ ...view, status: 'recovering', dropped: [(me + 1) % 4, (me + 3) % 4].sort() }), { status: 200, headers: { 'Content-Type': 'application/json' } });
      }
      return res;
    };
    const syncs = [0, 1, 2, 3].map((s) =>
      syncOnce({ serverUrl: 'http://x', fetch: s === 0 ? lying : (url, init) => app(url, init as RequestInit), accountant: new RdpAccountant(), budget: Infinity, history: historyOf(s + 1), train: { seed: s + 1 }, cohortPollMs: 1 }),
    );
    await Promise.all([syncs[0], fourUploads]);
    skew += 60_001;
    const results = await Promise.all(syncs);
    const liar = results[0]!.cohort!;
    assert.equal(liar.outcome, 'left');
    assert.equal(liar.recoveryShareSent, false);
    assert.match(liar.note!, /this device's part of the mask graph has 1 members, fewer than 2/);
    assert.ok(!sent.some((p) => p.endsWith('/recovery')), sent.join(', '));
    // All four uploaded, so every self-mask must come off. Device 0 never confirmed a list to its
    // ring neighbours 1 and 3, so they never answer either (they wait for its confirmation); 2,
    // whose neighbours are 1 and 3, may (if their confirmations reach it before the deadline). The
    // recovery times out and the cohort is aborted: nothing about it is published.
    assert.deepEqual(results.slice(1).map((r) => r.cohort!.outcome), ['aborted', 'aborted', 'aborted']);
    assert.deepEqual([results[1]!.cohort!.recoveryShareSent, results[3]!.cohort!.recoveryShareSent], [false, false]);
    assert.match(results[1]!.cohort!.note ?? '', /only [01] of the 4 recovery shares came/);
    assert.equal(parts.rounds.version, 0);
  } finally {
    await parts.storage.close();
  }
});

test('a server that tells one member recovery is off (or another cohort size) cannot use the others\' seeds on its upload: the keys are salted with the parameters', async () => {
  // A fourth review: the victim, told minSurvivors = K, adds no self-mask and never answers; the
  // others, told t < K and shown "the victim dropped", reveal their pair seeds with it.
  const K = 10;
  const honest: SecAggParams = { cohortSize: K, bits: 16, step: 1 / 256, degree: 4, minSurvivors: 8 };
  const cohortId = new Uint8Array(16).fill(6);
  const { members, keys } = await memberKeys(K);
  const r = new Random(31);
  const victim = 4;
  const length = 200;
  const x = encodeFixedPoint(Float64Array.from({ length }, () => r.normal()), honest.step, honest.bits, () => r.next());
  for (const told of [{ ...honest, minSurvivors: K }, { ...honest, cohortSize: K + 1, minSurvivors: K + 1 }]) {
    const upload = await maskValues(x, { index: victim, cohortId, publicKeys: keys, privateKey: members[victim]!.privateKey, params: told });
    const stripped = upload.slice();
    for (const j of maskNeighbours(victim, K, honest.degree)) {
      const share = await recoveryShare({ index: j, cohortId, publicKeys: keys, privateKey: members[j]!.privateKey, params: honest, length, dropped: [victim], sealed: new Map() }).catch(() => undefined);
      // Its other neighbours are alive, so without their sealed shares it refuses: take the seed the
      // way the server would get it if it did answer (the pair seed under the neighbour's parameters).
      const seed = share?.subarray(sharePosition(j, victim, K, honest.degree) * 16, (sharePosition(j, victim, K, honest.degree) + 1) * 16) ?? (await pairSeed(members[j]!.privateKey, await importPublicKey(members[victim]!.publicKey), cohortSalt(cohortId, honest, length), j, victim));
      addMod(stripped, await maskFromSeed(seed, length, honest.bits), honest.bits, victim < j ? -1 : 1);
    }
    const close = [...decodeFixedPoint(addMod(stripped, x, honest.bits, -1), honest.step, honest.bits)].filter((e) => Math.abs(e) < 1).length;
    assert.ok(close < 20, `told ${JSON.stringify({ K: told.cohortSize, t: told.minSurvivors })}: ${close} of ${length} coordinates within ±1 (uniform: about 2)`);
  }
});

test('a server that shows members different lists of dropped members (to get a member\'s pair seeds from some and its self-mask shares from others) cannot make the ones it needs answer', async () => {
  // The split attack of a review: target 3 is told its neighbours 1 and 2 dropped (it would reveal
  // its pair seeds with them); 1 and 2 are told nobody dropped (they would open their shares of 3's
  // self-mask); 4 and 5 are told 3 dropped (they would reveal their pair seeds with 3). Every list
  // passes the size and graph checks; only the confirmations stop it.
  const K = 10;
  const params: SecAggParams = { cohortSize: K, bits: 16, step: 1 / 256, degree: 4, minSurvivors: 8 };
  const cohortId = new Uint8Array(16).fill(5);
  const { members, keys } = await memberKeys(K);
  const shown = new Map<number, number[]>(Array.from({ length: K }, (_, i) => [i, i === 3 ? [1, 2] : i === 1 || i === 2 ? [] : [3]] as const));
  // Every tag every member would send for the list it was shown, addressed as it addresses them.
  const pool = new Map<number, Uint8Array[]>();
  for (const [i, dropped] of shown) {
    if (dropped.includes(i)) continue;
    const tags = await confirmationTags({ index: i, cohortId, publicKeys: keys, privateKey: members[i]!.privateKey, params, length: 50, dropped });
    pool.set(i, Array.from({ length: tags.length / CONFIRM_TAG_BYTES }, (_, k) => tags.subarray(k * CONFIRM_TAG_BYTES, (k + 1) * CONFIRM_TAG_BYTES)));
  }
  /** Whether any tags the server holds would let member x answer for the list it was shown. */
  const canAnswer = async (x: number): Promise<boolean> => {
    const dropped = shown.get(x)!;
    const choices = aliveNeighbours(x, K, params.degree, dropped).map((j) => pool.get(j) ?? []);
    // Any tag from each neighbour, whoever it was meant for (the server routes as it likes).
    const pick = async (k: number, chosen: Map<number, Uint8Array>): Promise<boolean> => {
      const alive = aliveNeighbours(x, K, params.degree, dropped);
      if (k === alive.length) {
        try {
          return (await checkConfirmations({ index: x, cohortId, publicKeys: keys, privateKey: members[x]!.privateKey, params, length: 50, dropped, confirmations: chosen })).length === 0;
        } catch {
          return false;
        }
      }
      for (const tag of choices[k]!) if (await pick(k + 1, new Map(chosen).set(alive[k]!, tag))) return true;
      return false;
    };
    return pick(0, new Map());
  };
  // The target (its pair seeds with 1 and 2) and 1 and 2 (their shares of its self-mask) are stuck.
  assert.deepEqual(await Promise.all([3, 1, 2].map(canAnswer)), [false, false, false]);
  // Members shown one and the same list confirm each other: 6, 7, 8 (all told "3 dropped") could answer.
  assert.deepEqual(await Promise.all([7, 8].map(canAnswer)), [true, true]);
  // And when everyone is shown the same list, everyone can.
  for (const i of shown.keys()) shown.set(i, [3]);
  pool.clear();
  for (const [i, dropped] of shown) {
    if (dropped.includes(i)) continue;
    const tags = await confirmationTags({ index: i, cohortId, publicKeys: keys, privateKey: members[i]!.privateKey, params, length: 50, dropped });
    pool.set(i, Array.from({ length: tags.length / CONFIRM_TAG_BYTES }, (_, k) => tags.subarray(k * CONFIRM_TAG_BYTES, (k + 1) * CONFIRM_TAG_BYTES)));
  }
  assert.deepEqual(await Promise.all([0, 1, 2, 4, 5, 6, 7, 8, 9].map(canAnswer)), Array(9).fill(true));
});

/**
 * The "one cut on each side" attack of a third review: every member uploads; the server shows a
 * segment of degree/2 + 2 members a list that cuts only its far side, and everyone else a list
 * naming the segment's first degree/2 members. Every list passes the device's checks and each side
 * confirms its own list, so with confirmations alone the server read the segment's sum (< t). It
 * relays every tag that verifies (withholding the others, so nobody throws). `ready`: whether
 * devices also wait for their neighbours' ready tags, as they do now.
 */
async function segmentAttack(K: number, degree: number, t: number, P: number, ready: boolean): Promise<string> {
  const params = checkSecAggParams({ cohortSize: K, bits: 16, step: 1 / 256, degree, minSurvivors: t });
  const mod = (a: number) => ((a % K) + K) % K;
  const r = degree / 2;
  const seg = Array.from({ length: r + 2 }, (_, k) => mod(P + k));
  const inner = [...Array.from({ length: r - 1 }, (_, k) => mod(P - r + 1 + k)), ...Array.from({ length: r }, (_, k) => mod(seg.at(-1)! + 1 + k))].sort((a, b) => a - b);
  const outer = seg.slice(0, r).sort((a, b) => a - b);
  const shown = (i: number) => (seg.includes(i) ? inner : outer);
  const cohortId = new Uint8Array(16).fill(K);
  const { members: kp, keys } = await memberKeys(K);
  const rnd = new Random(K + degree);
  const D = 20;
  const secrets = Array.from({ length: K }, () => encodeFixedPoint(Float64Array.from({ length: D }, () => rnd.normal()), params.step, params.bits, () => rnd.next()));
  const me = (i: number) => ({ index: i, cohortId, publicKeys: keys, privateKey: kp[i]!.privateKey, params, length: D, dropped: shown(i) });
  const up = await Promise.all(secrets.map(async (x, i) => addSelfMask(await maskValues(x, me(i)), me(i))));
  for (let i = 0; i < K; i++) {
    assert.ok(shown(i).length <= K - t && !shown(i).includes(i), `member ${i} accepts the size of its list`);
    assert.ok(survivorComponents(K, degree, shown(i)).find((p) => p.includes(i))!.length >= t, `member ${i} accepts its part of the graph`);
  }
  /** The tags of `round` addressed to i by neighbours shown the same list (what verifies). */
  const relay = async (i: number, round: 'confirm' | 'ready', gave: ReadonlySet<number>) => {
    const out = new Map<number, Uint8Array>();
    for (const j of aliveNeighbours(i, K, degree, shown(i))) {
      if (!gave.has(j) || shown(j).join() !== shown(i).join()) continue;
      const p = aliveNeighbours(j, K, degree, shown(j)).indexOf(i);
      out.set(j, (await confirmationTags(me(j), round)).subarray(p * CONFIRM_TAG_BYTES, (p + 1) * CONFIRM_TAG_BYTES));
    }
    return out;
  };
  const everyone = new Set([...Array(K).keys()]);
  const readyOnes = new Set<number>();
  for (let i = 0; i < K; i++) if ((await checkConfirmations({ ...me(i), confirmations: await relay(i, 'confirm', everyone) })).length === 0) readyOnes.add(i);
  const answers = new Map<number, Uint8Array>();
  for (let i = 0; i < K; i++) {
    const may = ready ? readyOnes.has(i) && (await checkConfirmations({ ...me(i), confirmations: await relay(i, 'ready', readyOnes) }, 'ready')).length === 0 : readyOnes.has(i);
    if (!may) continue;
    const sealed = new Map(aliveNeighbours(i, K, degree, shown(i)).map((j) => [j, up[j]!.sealed.subarray(sharePosition(j, i, K, degree) * SEALED_SHARE_BYTES, (sharePosition(j, i, K, degree) + 1) * SEALED_SHARE_BYTES)] as const));
    answers.set(i, await recoveryShare({ ...me(i), sealed }));
  }
  const part = (holder: number, of: number) => answers.get(holder)!.subarray(sharePosition(holder, of, K, degree) * 16, (sharePosition(holder, of, K, degree) + 1) * 16);
  const acc = new Uint32Array(D);
  for (const a of seg) {
    addMod(acc, up[a]!.values, params.bits);
    const nb = sortedNeighbours(a, K, degree);
    for (const c of nb.filter((c) => !seg.includes(c))) {
      const seed = answers.has(a) && shown(a).includes(c) ? part(a, c) : answers.has(c) && shown(c).includes(a) ? part(c, a) : undefined;
      if (!seed) return `the mask of ${a} with ${c} stays`;
      addMod(acc, await maskFromSeed(seed, D, params.bits), params.bits, a < c ? -1 : 1);
    }
    const pts = nb.filter((d) => answers.has(d) && !shown(d).includes(a)).map((d) => ({ x: nb.indexOf(d) + 1, y: part(d, a) }));
    if (pts.length < selfMaskThreshold(nb.length)) return `the self-mask of ${a} stays`;
    addMod(acc, await maskFromSeed(combineShares(pts.slice(0, selfMaskThreshold(nb.length))), D, params.bits), params.bits, -1);
  }
  const want = new Uint32Array(D);
  for (const a of seg) addMod(want, secrets[a]!, params.bits);
  return acc.every((v, i) => v === want[i]) ? `read the sum of ${seg.length} < ${t}` : 'garbage';
}

test('a server that cuts the cohort into regions shown different lists cannot read a small region\'s sum: devices wait for their neighbours to be ready on the same list', async () => {
  for (const [K, degree, t, P] of [[10, 2, 9, 3], [40, 16, 25, 12]] as const) {
    // Without the ready round the attack works (the test is not vacuous) ...
    assert.match(await segmentAttack(K, degree, t, P, false), /^read the sum of \d+ < \d+$/, `K = ${K}, degree ${degree}, confirmations only`);
    // ... with it, some mask the server needs stays on.
    assert.match(await segmentAttack(K, degree, t, P, true), /stays$/, `K = ${K}, degree ${degree}, with ready`);
  }
});

test('a cohort has its own deadlines to fill and to upload: a full cohort missing uploads recovers after the upload timeout, a forming one waits the fill timeout', async () => {
  let t = 10_000_000;
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 3_600_000, uploadTimeoutMs: 30_000, minSurvivors: 2 }, now: () => t, log: () => {} });
  const call = (path: string, body?: Uint8Array, token?: string) =>
    Promise.resolve(parts.app.fetch(new Request(`http://x${path}`, body ? { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: token ? { 'X-Localrec-Cohort-Token': token } : {} } : {})));
  try {
    const config = ((await (await call('/v1/config')).json()) as { secureAggregation: { timeoutMs: number; uploadTimeoutMs: number; bits: number } }).secureAggregation;
    assert.deepEqual([config.timeoutMs, config.uploadTimeoutMs], [3_600_000, 30_000]);
    const js = [];
    for (let i = 0; i < 3; i++) js.push((await (await call('/v1/secagg/join', (await secAggKeyPair()).publicKey)).json()) as { cohort: string; index: number; token: string });
    const forming = (await (await call('/v1/secagg/join', (await secAggKeyPair()).publicKey)).json()) as { cohort: string };
    for (const m of js.slice(0, 2)) {
      const body = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), index: m.index, cohortSize: 3, bits: config.bits, step: parts.rounds.config.secureAggregation!.step, baseVersion: 0, values: new Uint32Array(IDS.length * 5), sealed: junkSealed(parts.rounds.config.secureAggregation!, m.index) });
      assert.equal((await call('/v1/secagg/updates', body, m.token)).status, 202);
    }
    t += 30_001; // past the upload deadline, far from the fill deadline
    const status = async (id: string) => ((await (await call(`/v1/secagg/cohorts/${id}`)).json()) as { status: string }).status;
    assert.deepEqual([await status(js[0]!.cohort), await status(forming.cohort)], ['recovering', 'forming']);
    t += 30_001; // the recovery's shares never come: it ends after another upload timeout
    assert.deepEqual([await status(js[0]!.cohort), await status(forming.cohort)], ['aborted', 'forming']);
    t += 3_600_000;
    assert.equal(await status(forming.cohort), 'aborted');
  } finally {
    await parts.storage.close();
  }
});

test('without uploadTimeoutMs the upload deadline is the fill deadline, capped at 10 minutes', async () => {
  for (const [fillMs, uploadMs] of [[120_000, 120_000], [600_000, 600_000], [4 * 3_600_000, 600_000]] as const) {
    let t = 10_000_000;
    const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: fillMs, minSurvivors: 2 }, now: () => t, log: () => {} });
    const call = (path: string, body?: Uint8Array, token?: string) =>
      Promise.resolve(parts.app.fetch(new Request(`http://x${path}`, body ? { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: token ? { 'X-Localrec-Cohort-Token': token } : {} } : {})));
    try {
      const config = ((await (await call('/v1/config')).json()) as { secureAggregation: { timeoutMs: number; uploadTimeoutMs: number; bits: number } }).secureAggregation;
      assert.deepEqual([config.timeoutMs, config.uploadTimeoutMs], [fillMs, uploadMs], `fill ${fillMs}`);
      const js: Array<{ cohort: string; index: number; token: string }> = [];
      for (let i = 0; i < 3; i++) js.push((await (await call('/v1/secagg/join', (await secAggKeyPair()).publicKey)).json()) as { cohort: string; index: number; token: string });
      for (const m of js.slice(0, 2)) {
        const body = encodeMaskedUpdate({ cohortId: Uint8Array.from(Buffer.from(m.cohort, 'hex')), index: m.index, cohortSize: 3, bits: config.bits, step: parts.rounds.config.secureAggregation!.step, baseVersion: 0, values: new Uint32Array(IDS.length * 5), sealed: junkSealed(parts.rounds.config.secureAggregation!, m.index) });
        assert.equal((await call('/v1/secagg/updates', body, m.token)).status, 202);
      }
      const status = async () => ((await (await call(`/v1/secagg/cohorts/${js[0]!.cohort}`)).json()) as { status: string }).status;
      t += uploadMs - 1_000;
      assert.equal(await status(), 'ready', `fill ${fillMs}: still collecting uploads before the upload deadline`);
      t += 2_000;
      assert.equal(await status(), 'recovering', `fill ${fillMs}: recovering just after ${uploadMs} ms`);
    } finally {
      await parts.storage.close();
    }
  }
});

test('an ended cohort is kept an hour after it ended, however long it took to end (memory store)', async () => {
  let t = 1_000_000;
  const hour = 3_600_000;
  const store = new MemoryCohortStore({ cohortSize: 2, bits: 16, step: 1 / 1024, degree: 2 }, { fillMs: 2 * hour, uploadMs: 60_000 }, () => t);
  // Aborted: a cohort that did not fill in its two hours.
  const unfilled = await store.join((await secAggKeyPair()).publicKey);
  assert.ok(!('error' in unfilled));
  t += 2 * hour + 1;
  assert.deepEqual((await store.sweep()).aborted.map((a) => a.id), [unfilled.cohort.id]);
  await store.sweep();
  await assertKeptAnHourAfterEnd(store, unfilled.cohort.id, 'aborted', t, (now) => (t = now));
  // Done: published when it is finished.
  const a = await store.join((await secAggKeyPair()).publicKey);
  t += hour + 30 * 60_000;
  const b = await store.join((await secAggKeyPair()).publicKey);
  assert.ok(!('error' in a) && !('error' in b) && b.cohort.status === 'ready');
  t += 30_000;
  await store.finish(a.cohort.id, 1);
  await assertKeptAnHourAfterEnd(store, a.cohort.id, 'done', t, (now) => (t = now));
});

test('a member leaves a forming cohort (memory store): its place goes to the next device', async () => {
  const store = new MemoryCohortStore({ cohortSize: 3, bits: 16, step: 1 / 1024, degree: 2 }, 60_000, () => 1_000_000);
  await exerciseCohortLeave(store, store);
});

/**
 * A device (`syncOnce` on `app`) that cancels its sync at its first cohort poll, and every request it
 * sends as 'METHOD path' (cohort ids as :id); `before` runs ahead of each request reaching the server.
 */
function cancellingDevice(app: FetchLike, seed: number, before?: (path: string) => Promise<void>) {
  const sent: string[] = [];
  const ctl = new AbortController();
  const result = syncOnce({
    serverUrl: 'http://x',
    fetch: async (url, init) => {
      const path = new URL(url).pathname;
      sent.push(`${init?.method ?? 'GET'} ${path.replace(/[0-9a-f]{32}/, ':id')}`);
      await before?.(path);
      return app(url, init);
    },
    accountant: new RdpAccountant(),
    budget: Infinity,
    history: historyOf(seed),
    train: { seed },
    cohortPollMs: 5,
    onProgress: (p) => p.phase === 'cohort' && ctl.abort(),
    signal: ctl.signal,
  });
  return { result, posts: () => sent.filter((x) => x.startsWith('POST')) };
}

test('a device cancelled while its cohort forms gives its place back: three others then fill and publish that cohort', async () => {
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 5_000 }, log: () => {} });
  const app = (url: string, init?: { method?: string; body?: Uint8Array; headers?: Record<string, string>; signal?: AbortSignal }) => Promise.resolve(parts.app.fetch(new Request(url, init as RequestInit)));
  try {
    const cancelled = cancellingDevice(app, 1);
    await assert.rejects(cancelled.result, (e: unknown) => isAbortError(e) && /it left the cohort; no update was sent/.test((e as Error).message));
    assert.deepEqual(cancelled.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/cohorts/:id/members/0/leave']);
    const results = await Promise.all([2, 3, 4].map((s) => syncOnce({ serverUrl: 'http://x', fetch: app, accountant: new RdpAccountant(), budget: Infinity, history: historyOf(s), train: { seed: s }, cohortPollMs: 5 })));
    assert.deepEqual(results.map((r) => [r.sent, r.cohort!.size]), [[true, 3], [true, 3], [true, 3]]);
    assert.equal(new Set(results.map((r) => r.cohort!.id)).size, 1, 'one cohort: the one the cancelled device left');
    assert.deepEqual(results.map((r) => r.cohort!.index).sort(), [0, 1, 2]);
    assert.equal(parts.rounds.version, 1, 'published');
    // Leaving is refused with a reason once the cohort is full, and for a wrong token.
    const c = results[0]!.cohort!;
    const leave = (token: string) => app(`http://x/v1/secagg/cohorts/${c.id}/members/${c.index}/leave`, { method: 'POST', headers: { 'X-Localrec-Cohort-Token': token } });
    const wrong = await leave('0'.repeat(32));
    assert.equal(wrong.status, 403);
    assert.match(((await wrong.json()) as { error: string }).error, /not the one member \d of cohort [0-9a-f]+ was given at join/);
    const js: Array<{ cohort: string; index: number; token: string }> = [];
    for (let i = 0; i < 3; i++) js.push((await (await app('http://x/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey })).json()) as { cohort: string; index: number; token: string });
    const late = await app(`http://x/v1/secagg/cohorts/${js[0]!.cohort}/members/0/leave`, { method: 'POST', headers: { 'X-Localrec-Cohort-Token': js[0]!.token } });
    assert.equal(late.status, 409);
    assert.match(((await late.json()) as { error: string }).error, /is ready; only a forming cohort can be left/);
  } finally {
    await parts.storage.close();
  }
});

test('a cancel that comes after local training, while the device reads its stored budget, sends no join (privacy review, stop 33)', async () => {
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 5_000 }, log: () => {} });
  const app = (url: string, init?: { method?: string; body?: Uint8Array; headers?: Record<string, string>; signal?: AbortSignal }) => Promise.resolve(parts.app.fetch(new Request(url, init as RequestInit)));
  try {
    const sent: string[] = [];
    const egress: string[] = [];
    const ctl = new AbortController();
    const accountant = new RdpAccountant();
    const result = syncOnce({
      serverUrl: 'http://x',
      fetch: (url, init) => {
        sent.push(`${init?.method ?? 'GET'} ${new URL(url).pathname}`);
        return app(url, init);
      },
      accountant,
      budget: Infinity,
      history: historyOf(1),
      train: { seed: 1 },
      cohortPollMs: 5,
      // The budget as stored is read just before the join: a consent withdrawal (the engine aborts
      // the sync's signal) lands while that read waits.
      storedAccountant: async () => {
        ctl.abort();
        return accountant;
      },
      onEgress: (e) => egress.push(`${e.method} ${e.endpoint}${e.pending ? ' pending' : ''}${e.notSent ? ' notSent' : ''}`),
      signal: ctl.signal,
    });
    await assert.rejects(result, (e: unknown) => isAbortError(e) && /before joining a cohort/.test((e as Error).message));
    assert.deepEqual(sent, ['GET /v1/config', 'GET /v1/model'], 'no join, no leave');
    assert.ok(!egress.some((x) => x.includes('/v1/secagg/')), `nothing of a cohort in the egress log: ${egress.join(', ')}`);
  } finally {
    await parts.storage.close();
  }
});

test('a cancel that comes as the cohort fills: leaving is refused (409) and the device uploads after all, since the others depend on it', async () => {
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 60_000 }, log: () => {} });
  const app = (url: string, init?: { method?: string; body?: Uint8Array; headers?: Record<string, string> }) => Promise.resolve(parts.app.fetch(new Request(url, init as RequestInit)));
  try {
    // Two more devices join just before the leave arrives: the cohort is full by then.
    const device = cancellingDevice(app, 5, async (path) => {
      if (path.endsWith('/leave')) for (let i = 0; i < 2; i++) await app('http://x/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey });
    });
    const r = await device.result;
    assert.equal(r.sent, true);
    assert.deepEqual(device.posts(), ['POST /v1/secagg/join', 'POST /v1/secagg/cohorts/:id/members/0/leave', 'POST /v1/secagg/updates']);
    assert.equal((await parts.rounds.cohort(r.cohort!.id))!.submitted, 1);
  } finally {
    await parts.storage.close();
  }
});

test("a server config's parameters are bounded before use: a degree past twice the cohort, a deadline past a day or not a number, a clip, σ or fixed-point range no honest update fits", async () => {
  const config = (sa: Record<string, unknown>) => ({ dim: DIM, items: IDS.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 3, secureAggregation: { maskVersion: 2, cohortSize: 3, bits: 8, step: 1 / 16, degree: 2, ...sa } });
  assert.throws(() => parseServerConfig(config({ degree: 1e15 }) as never), /server config\.secureAggregation\.degree: must be an even integer from 2 to twice the cohort size \(6\), got 1000000000000000/);
  assert.equal(parseServerConfig(config({ degree: 6 }) as never).secureAggregation!.degree, 6);
  for (const timeoutMs of ['600000', MAX_COHORT_TIMEOUT_MS + 1, 0, Infinity]) {
    assert.throws(() => parseServerConfig(config({ timeoutMs }) as never), /server config\.secureAggregation\.timeoutMs: must be a number of milliseconds from 1 to 86400000/);
  }
  assert.throws(() => parseServerConfig(config({ uploadTimeoutMs: -1 }) as never), /secureAggregation\.uploadTimeoutMs/);
  // A server of another mask generation (whose masks would not cancel with this SDK's) is refused
  // before the join, so before any ε is spent; one that does not say (an older release) too.
  assert.throws(() => parseServerConfig(config({ maskVersion: undefined }) as never), /secureAggregation\.maskVersion: is missing: the server is of an older localrec release .* update the server/);
  assert.throws(() => parseServerConfig(config({ maskVersion: 3 }) as never), /secureAggregation\.maskVersion: is 3, this SDK's is 2: .* update the page's SDK/);
  // Bounds an honest server keeps: past them an update cannot be encoded, and a failure to encode
  // that depends on the history would show in whether the device goes on to join.
  assert.throws(() => parseServerConfig({ ...config({}), clip: 1e30 } as never), /server config\.clip: must be from 1e-6 to 1e6, got 1e\+30/);
  assert.throws(() => parseServerConfig({ ...config({}), noiseMultiplier: 1e7 } as never), /server config\.noiseMultiplier: must be from 0 to 1e6/);
  assert.throws(() => parseServerConfig(config({ step: 0.05 / Number.MAX_VALUE }) as never), /server config\.secureAggregation\.step: gives a range of ±.* less than the clip bound 1: one update would not fit/);
  assert.equal(parseServerConfig(config({ step: 1 / 127 }) as never).secureAggregation!.step, 1 / 127, 'range 127 steps = 1 = C: fits');
  // The server's step is range / (2^(b−1) − 1): multiplied back it may miss the clip by an ulp
  // (0.3 × 3 = 0.8999999999999999 at C = 0.9), which must not make every device refuse the server.
  assert.equal(parseServerConfig({ ...config({ bits: 3, step: 0.9 / 3 }), clip: 0.9 } as never).secureAggregation!.bits, 3);
  // 8 bits hold −128…127 steps: at γ = 1/128 the largest value is 127/128 < C, which cannot hold a clipped update.
  assert.throws(() => parseServerConfig(config({ step: 1 / 128 }) as never), /server config\.secureAggregation\.step: gives a range of ±0\.99.* less than the clip bound 1/);
  // A degree above the cohort size adds no neighbour (everyone else already is one), and costs no loop.
  assert.deepEqual(maskNeighbours(0, 3, 6).sort(), [1, 2]);
  assert.deepEqual(maskNeighbours(1, 4, 8).sort(), [0, 2, 3]);
  // The server keeps the same bound on the range.
  await assert.rejects(
    createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 2, noiseMultiplier: 1, rateLimit: false, secureAggregation: { range: 1 }, log: () => {} }),
    /options\.secureAggregation\.range: must be at least the clip bound \(2\): one update must fit, got 1/,
  );
});

test('t (minSurvivors, K without recovery) is capped at 10,000: a server cannot make each upload carry less than σC/100 of noise', async () => {
  assert.equal(MAX_SURVIVORS, 10_000);
  const config = (sa: Record<string, unknown>) => ({ dim: DIM, items: IDS.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 3, secureAggregation: { maskVersion: 2, bits: 32, step: 1e-6, degree: 16, ...sa } });
  // The device refuses, naming why, whether t is the cohort size or a minSurvivors below it.
  assert.throws(
    () => parseServerConfig(config({ cohortSize: 100_000 }) as never),
    /server config\.secureAggregation\.minSurvivors: is 100000 \(the cohort size: no dropout recovery\), more than 10000: each device adds only σC\/√t of noise to its upload, and a server that filled a cohort with its own joins would read one upload at σ\/√t/,
  );
  assert.throws(() => parseServerConfig(config({ cohortSize: 100_000, minSurvivors: 95_000 }) as never), /server config\.secureAggregation\.minSurvivors: is 95000, more than 10000/);
  assert.throws(() => parseServerConfig(config({ cohortSize: 10_001 }) as never), /minSurvivors: is 10001/);
  // The published recipes (K = 4,000 and 610) and anything up to the cap are taken; a larger
  // cohort recovered from at most 10,000 survivors too.
  for (const [cohortSize, minSurvivors] of [[4_000, undefined], [610, undefined], [10_000, undefined], [100_000, 10_000]]) {
    assert.equal(parseServerConfig(config({ cohortSize, ...(minSurvivors ? { minSurvivors } : {}) }) as never).secureAggregation!.cohortSize, cohortSize);
    assert.equal(checkSecAggParams({ cohortSize, bits: 32, step: 1e-6, degree: 16, ...(minSurvivors ? { minSurvivors } : {}) }).minSurvivors, minSurvivors ?? cohortSize);
  }
  assert.throws(() => checkSecAggParams({ cohortSize: 20_000, bits: 32, step: 1e-6, degree: 16 }), /secureAggregation\.minSurvivors: is 20000 \(the cohort size: no dropout recovery\), more than 10000/);
  // The server refuses to start with a config every device would refuse.
  await assert.rejects(
    createServer({ dataDir: null, initialTable: initialTable(), minClients: 10_001, clip: 1, noiseMultiplier: 1, rateLimit: false, secureAggregation: true, log: () => {} }),
    /options\.secureAggregation\.minSurvivors: is 10001 \(the cohort size: no dropout recovery\), more than 10000/,
  );
});

test('a device refusing to help recover says which rule the list of dropped members broke', async () => {
  const sa = { cohortSize: 3, bits: 32, step: 1e-6, degree: 2, minSurvivors: 2, timeoutMs: 60_000, uploadTimeoutMs: 60_000, maskVersion: 2 };
  const cohort = 'ab'.repeat(16);
  const others = [await secAggKeyPair(), await secAggKeyPair()];
  const json = (o: unknown, status = 200) => new Response(JSON.stringify(o), { status, headers: { 'Content-Type': 'application/json' } });
  const note = async (dropped: unknown[]) => {
    let mine = '';
    let uploaded = false;
    const fetchFn: FetchLike = async (url, init) => {
      const path = new URL(url).pathname;
      if (path === '/v1/config') return json({ dim: DIM, items: IDS.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 3, secureAggregation: sa });
      if (path === '/v1/model') return new Response(encodeModel(initialTable()) as Uint8Array<ArrayBuffer>);
      if (path === '/v1/secagg/join') {
        mine = toHex(init!.body!);
        return json({ cohort, index: 0, size: 3, status: 'forming', token: 'ff'.repeat(16) });
      }
      if (path === '/v1/secagg/updates') {
        uploaded = true;
        return json({ pending: 1, minClients: 3, published: null }, 202);
      }
      if (path === `/v1/secagg/cohorts/${cohort}/members/0`) {
        const memberKeys = { '0': mine, '1': toHex(others[0]!.publicKey), '2': toHex(others[1]!.publicKey) };
        return json(uploaded ? { cohort, size: 3, joined: 3, submitted: 2, status: 'recovering', memberKeys, dropped } : { cohort, size: 3, joined: 3, submitted: 0, status: 'ready', memberKeys });
      }
      return json({ error: `unexpected ${path}` }, 404);
    };
    const r = await syncOnce({ serverUrl: 'http://x', fetch: fetchFn, accountant: new RdpAccountant(), budget: Infinity, history: shopperHistory(1, 6), cohortPollMs: 1 });
    assert.equal(r.cohort?.outcome, 'left');
    assert.equal(r.cohort?.recoveryShareSent, false);
    return r.cohort?.note;
  };
  assert.equal(await note([7]), 'refused to help recover: the server lists dropped member 7, not a member index (0..2)');
  assert.equal(await note([0]), 'refused to help recover: the server lists this device (member 0) among the dropped members');
  assert.equal(await note([1, 2]), 'refused to help recover: the server lists 2 dropped members (at most 1 allowed)');
});

test('with recovery, every step after the join is in the stored egress log before the next request: polls, confirmation, ready, share', async () => {
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 1, rateLimit: false, secureAggregation: { timeoutMs: 60_000, minSurvivors: 2 }, log: () => {} });
  const app = (url: string, init?: RequestInit) => Promise.resolve(parts.app.fetch(new Request(url, init)));
  try {
    const logged: Array<{ method: string; endpoint: string }> = [];
    let stored = 0;
    /** Requests device 0 made while something it had logged was not stored yet, with what was missing. */
    const unstored: string[] = [];
    let polls = 0;
    let joinedOthers: Promise<unknown> | undefined;
    const others: Array<Promise<unknown>> = [];
    const watched: FetchLike = async (url, init) => {
      const path = new URL(url).pathname;
      if (logged.some((l) => l.endpoint === '/v1/secagg/join') && logged.length > stored) {
        unstored.push(`${init?.method ?? 'GET'} ${path.replace(/[0-9a-f]{32}/, ':id')} with ${logged.slice(stored).map((l) => l.endpoint.replace(/[0-9a-f]{32}/, ':id')).join(', ')} unstored`);
      }
      // The others join once device 0 has polled its forming cohort a few times.
      if (/\/members\/0$/.test(path) && ++polls === 3) {
        joinedOthers = Promise.all([1, 2].map((s) => syncOnce({ serverUrl: 'http://x', fetch: (u, i) => app(u, i as RequestInit), accountant: new RdpAccountant(), history: historyOf(s + 1), train: { seed: s + 1 }, cohortPollMs: 1 })));
        others.push(joinedOthers);
      }
      return app(url, init as RequestInit);
    };
    const r = await syncOnce({
      serverUrl: 'http://x', fetch: watched, accountant: new RdpAccountant(), history: historyOf(1), train: { seed: 1 }, cohortPollMs: 1,
      onEgress: (e) => void logged.push(e), onCheckpoint: () => void (stored = logged.length),
    });
    await Promise.all(others);
    assert.deepEqual([r.cohort!.outcome, r.cohort!.recoveryShareSent], ['published', true]);
    const posts = logged.filter((l) => l.method === 'POST').map((l) => l.endpoint.replace(/[0-9a-f]{32}/, ':id'));
    for (const step of ['confirm', 'ready', 'recovery']) assert.ok(posts.includes(`/v1/secagg/cohorts/:id/members/0/${step}`), `${step} was sent`);
    assert.ok(polls >= 3, 'polled while the cohort formed');
    assert.deepEqual(unstored, []);
  } finally {
    await parts.storage.close();
  }
});

test('with recovery, once its upload is in, a device whose egress log can no longer be stored still sends its polls, confirmation, ready tag and share (stopping would sink the cohort)', async () => {
  const parts = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 1, rateLimit: false, secureAggregation: { timeoutMs: 60_000, minSurvivors: 2 }, log: () => {} });
  const app = (url: string, init?: RequestInit) => Promise.resolve(parts.app.fetch(new Request(url, init)));
  try {
    const logged: Array<{ method: string; endpoint: string; kind: string; status: number }> = [];
    let polls = 0;
    const others: Array<Promise<unknown>> = [];
    const watched: FetchLike = async (url, init) => {
      if (/\/members\/0$/.test(new URL(url).pathname) && ++polls === 3) {
        others.push(Promise.all([1, 2].map((s) => syncOnce({ serverUrl: 'http://x', fetch: (u, i) => app(u, i as RequestInit), accountant: new RdpAccountant(), history: historyOf(s + 1), train: { seed: s + 1 }, cohortPollMs: 1 }))));
      }
      return app(url, init as RequestInit);
    };
    const r = await syncOnce({
      serverUrl: 'http://x', fetch: watched, accountant: new RdpAccountant(), history: historyOf(1), train: { seed: 1 }, cohortPollMs: 1,
      onEgress: (e) => void logged.push(e),
      // Storage fills up once the upload was answered.
      onCheckpoint: async () => (logged.some((l) => l.kind === 'update' && l.status >= 200 && l.status < 300) ? Promise.reject(new Error('QuotaExceededError (simulated)')) : undefined),
    });
    await Promise.all(others);
    assert.deepEqual([r.cohort!.outcome, r.cohort!.recoveryShareSent], ['published', true]);
    const posts = logged.filter((l) => l.method === 'POST' && l.status > 0).map((l) => l.endpoint.replace(/[0-9a-f]{32}/, ':id'));
    for (const step of ['confirm', 'ready', 'recovery']) assert.ok(posts.includes(`/v1/secagg/cohorts/:id/members/0/${step}`), `${step} was sent`);
  } finally {
    await parts.storage.close();
  }
});

test('the docs and the code agree on each device\'s noise under secure aggregation: σC/√t (t = the minimum survivors; K without recovery)', () => {
  const protocol = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
  const header = readFileSync(new URL('../../src/federated/secagg.ts', import.meta.url), 'utf8').split('*/')[0]!;
  for (const [name, text] of [['docs/protocol.md', protocol], ['secagg.ts header', header]] as const) {
    assert.ok(!/adds N\(0, \(σC\)²\/K\)/.test(text), `${name} no longer says each device adds N(0, (σC)²/K)`);
    assert.match(text, /adds N\(0, \(σC\)²\/t\) \(t = the[\s*]+cohort's minimum survivors[^)]*K without[\s*]+dropout recovery\)/, name);
  }
  for (const gone of ['the guarantee of σ/√K', 'noise is σC·√(h/K)', 'the noise, σ/√K.']) assert.ok(!protocol.includes(gone), gone);
});

// Under secure aggregation each device adds N(0, (σC)²/t), so that the cohort's sum carries the
// N(0, (σC)²) the accountant charges for; a device adding σC/t (√t times too little) passed every
// other test, which run at σ = 0 or check the docs' wording (a mutation-testing review, stop 35).
test('secure aggregation: the published mean carries noise of std σC/K (each device adds σC/√t)', async () => {
  const K = 4;
  const sigma = 1;
  // 40 items × 20 values = 800 coordinates: ±25 % is about 10 standard errors of the sample std.
  const table = initialTable(IDS, 19);
  const parts = await createServer({ dataDir: null, initialTable: table, minClients: K, clip: 1, noiseMultiplier: sigma, rateLimit: false, secureAggregation: true, log: () => {} });
  const fetchFn: FetchLike = (url, init) => Promise.resolve(parts.app.fetch(new Request(url, init as RequestInit)));
  try {
    const results = await Promise.all(
      Array.from({ length: K }, (_, s) =>
        syncOnce({ serverUrl: 'http://x', fetch: fetchFn, accountant: new RdpAccountant(), budget: Infinity, history: shopperHistory(s + 1, 6), train: { seed: s + 1 }, cohortPollMs: 1 }),
      ),
    );
    assert.ok(results.every((r) => r.sent));
    const model = decodeModel(new Uint8Array(await (await parts.app.fetch(new Request('http://x/v1/model'))).arrayBuffer())).table;
    const base = results[0]!.global;
    const deltas = results.map((r) => {
      const d = itemDelta(base, r.local);
      clipL2(d, 1);
      return d;
    });
    const nf = base.factors.length;
    const n = deltas[0]!.length;
    assert.equal(n, 800);
    let ss = 0;
    for (let i = 0; i < n; i++) {
      const mean = deltas.reduce((a, d) => a + d[i]!, 0) / K;
      const got = i < nf ? model.factors[i]! - base.factors[i]! : model.bias[i - nf]! - base.bias[i - nf]!;
      ss += (got - mean) ** 2;
    }
    const std = Math.sqrt(ss / n);
    const want = (sigma * 1) / K;
    assert.ok(std > 0.75 * want && std < 1.25 * want, `noise std of the published mean ${std.toFixed(4)}, expected ≈ ${want}`);
  } finally {
    await parts.storage.close();
  }
});

test('a recovered cohort whose publish is under way when its publish deadline passes is published, not aborted: no sweep ends it meanwhile (stop 39)', async () => {
  // Found by test/unit/secagg-stateful.test.ts: the sweep aborted the cohort while its aggregation,
  // past its last check, wrote the version; the version came out of a cohort whose view (and every
  // waiting member) said aborted.
  class Slow extends MemoryStorage {
    gate: Promise<void> | undefined;
    entered: (() => void) | undefined;
    override async publish(...a: Parameters<MemoryStorage['publish']>) {
      this.entered?.();
      if (this.gate) await this.gate;
      return super.publish(...a);
    }
  }
  const storage = new Slow();
  const { clock, parts, call, sa, members, id, body } = await cohortOfFour(storage);
  try {
    for (const m of members.slice(0, 3)) assert.equal((await call('/v1/secagg/updates', body(m.index), m.token)).status, 202);
    clock.t += 1_500; // member 3 never uploads: the cohort recovers
    const view = async () => (await (await call(`/v1/secagg/cohorts/${id}`)).json()) as { status: string; published?: number; reason?: string };
    assert.equal((await view()).status, 'recovering');
    let open!: () => void;
    storage.gate = new Promise<void>((r) => (open = r));
    const entered = new Promise<void>((r) => (storage.entered = r));
    const share = (m: { index: number; token: string }) => call(`/v1/secagg/cohorts/${id}/members/${m.index}/recovery`, new Uint8Array(shareLength(sa, m.index)), m.token);
    for (const m of members.slice(0, 2)) assert.equal((await share(m)).status, 202);
    const last = share(members[2]!); // the last share: its request publishes
    await entered; // the publish is being written
    clock.t += 10_000; // past PUBLISH_GRACE (4) × the 1 s upload timeout
    assert.equal((await view()).status, 'recovering', 'the sweep leaves a cohort being published alone');
    open();
    assert.equal((await last).status, 202);
    await parts.rounds.drain();
    const done = await view();
    assert.deepEqual([done.status, done.published, parts.rounds.version, await storage.pendingCount()], ['done', 1, 1, 0]);
  } finally {
    await storage.close();
  }
});

/** A fake secure-aggregation server with recovery (K = 4, t = 2) for one device, member 0: `view` answers its member view, `step` its recovery posts. */
function fakeRecoveryServer(view: (uploaded: boolean) => Record<string, unknown>, step: (path: string) => Response, keys: Promise<Array<{ publicKey: Uint8Array }>>) {
  const sa = { cohortSize: 4, bits: 32, step: 1e-6, degree: 2, minSurvivors: 2, timeoutMs: 60_000, uploadTimeoutMs: 60_000, maskVersion: 2 };
  const cohort = 'ab'.repeat(16);
  const json = (o: unknown, status = 200) => new Response(JSON.stringify(o), { status, headers: { 'Content-Type': 'application/json' } });
  const seen: string[] = [];
  let mine = '';
  let uploaded = false;
  const fetchFn: FetchLike = async (url, init) => {
    const path = new URL(url).pathname;
    seen.push(`${init?.method ?? 'GET'} ${path}`);
    if (path === '/v1/config') return json({ dim: DIM, items: IDS.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 4, secureAggregation: sa });
    if (path === '/v1/model') return new Response(encodeModel(initialTable()) as Uint8Array<ArrayBuffer>);
    if (path === '/v1/secagg/join') {
      mine = toHex(init!.body as Uint8Array);
      return json({ cohort, index: 0, size: 4, status: 'forming', token: 'ff'.repeat(16) });
    }
    if (path === '/v1/secagg/updates') {
      uploaded = true;
      return json({ pending: 1, minClients: 4, published: null }, 202);
    }
    if (path === `/v1/secagg/cohorts/${cohort}/members/0`) {
      const others = await keys;
      const memberKeys = { '0': mine, ...Object.fromEntries(others.map((k, i) => [String(i + 1), toHex(k.publicKey)])) };
      return json({ cohort, size: 4, joined: 4, memberKeys, ...view(uploaded) });
    }
    if (path.startsWith(`/v1/secagg/cohorts/${cohort}/members/0/`)) return step(path.slice(path.lastIndexOf('/') + 1));
    return json({ error: `unexpected ${path}` }, 404);
  };
  return { fetchFn, seen, json };
}

test('a server that refuses a confirmation 409 unknown-cohort, then shows another list of dropped members, gets no confirmation of the second list (review, stop 39)', async () => {
  // Had the device taken the 409 as "not confirmed", a server could collect its confirmations of
  // every list it likes, and the two-step agreement (confirm, then ready) would be one step again.
  let list = [2];
  const confirmed: number[][] = [];
  const keys = Promise.all([secAggKeyPair(), secAggKeyPair(), secAggKeyPair()]);
  const { fetchFn, json } = fakeRecoveryServer(
    (uploaded) => (uploaded ? { submitted: 3, status: 'recovering', dropped: list } : { submitted: 0, status: 'ready' }),
    (step) => {
      if (step !== 'confirm') return json({ error: `unexpected ${step}` }, 404);
      confirmed.push(list);
      list = [3]; // "ended", then another list
      return json({ reason: 'unknown-cohort', error: 'stopped recovering' }, 409);
    },
    keys,
  );
  const r = await syncOnce({ serverUrl: 'http://x', fetch: fetchFn, accountant: new RdpAccountant(), budget: Infinity, history: historyOf(1), cohortPollMs: 1 });
  assert.deepEqual(confirmed, [[2]]);
  assert.equal(r.cohort!.outcome, 'left');
  assert.match(r.cohort!.note!, /the server changed the list of dropped members \(was \[2\], now \[3\]\)/);
});

test('with dropout recovery, a device cancelled once its cohort is full drops out (nothing sent) rather than upload and leave (stop 39)', async () => {
  const ac = new AbortController();
  const keys = Promise.all([secAggKeyPair(), secAggKeyPair(), secAggKeyPair()]);
  const { fetchFn, seen } = fakeRecoveryServer(
    () => {
      ac.abort(); // cancelled as the cohort fills
      return { submitted: 0, status: 'ready' };
    },
    // Its leave comes too late: the cohort is full (409).
    (step) => new Response(JSON.stringify({ reason: 'unknown-cohort', error: 'full' }), { status: step === 'leave' ? 409 : 404 }),
    keys,
  );
  const accountant = new RdpAccountant();
  await assert.rejects(
    syncOnce({ serverUrl: 'http://x', fetch: fetchFn, accountant, budget: Infinity, history: historyOf(1), cohortPollMs: 1, signal: ac.signal }),
    (e: unknown) => isAbortError(e) && /drops out of it \(cancelled: with dropout recovery the others publish without it\)/.test((e as Error).message),
  );
  assert.ok(!seen.includes('POST /v1/secagg/updates'), seen.join(' | '));
  assert.equal(accountant.epsilon(1e-5), 0, 'no ε spent');
});
