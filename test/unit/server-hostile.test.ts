/**
 * What a hostile client could make the server spend (the hostile-client review): the all-keys
 * cohort view rebuilt for every request, joins kept in memory as ropes for an hour and more, one
 * IPv6 /48 holding 65,536 rate limits, refused leaves and uploads costing locks and queue turns.
 * Each test fails on the code before its fix. (PostgreSQL's side: server-postgres.test.ts.)
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';
import { encodeMaskedUpdate, secAggKeyPair, type SecAggParams } from '../../src/federated/secagg.js';
import { toHex } from '../../src/federated/wire.js';
import { MemoryCohortStore, type CohortTimeouts } from '../../src/server/cohorts.js';
import { createServer, MemoryStorage, type RoundCoordinator } from '../../src/server/index.js';
import { RateLimiter, rateLimitKeys, takeAll } from '../../src/server/rate-limit.js';
import { DIM, IDS, initialTable, quiet } from './server-helpers.js';

/** A memory cohort store counting its reads of every key of a cohort (`keys` without members). */
class CountingCohorts extends MemoryCohortStore {
  fullReads = 0;
  override async keys(id: string, members?: readonly number[]) {
    if (!members) this.fullReads++;
    return super.keys(id, members);
  }
}

/** A memory store whose cohorts are a {@link CountingCohorts} (`maxMembers` when given). */
class CountingStorage extends MemoryStorage {
  cohorts!: CountingCohorts;
  constructor(private readonly maxMembers?: number) {
    super();
  }
  cohortStore(params: SecAggParams, timeouts: number | CohortTimeouts, now: () => number) {
    this.cohorts = new CountingCohorts(params, timeouts, now, this.maxMembers === undefined ? {} : { maxMembers: this.maxMembers });
    return this.cohorts;
  }
}

type Parts = Awaited<ReturnType<typeof createServer>>;

/** `fetch` on the app, from `address` (the server trusts the proxy's X-Forwarded-For where asked to). */
const call = (parts: Parts, path: string, init: { method?: string; body?: Uint8Array; headers?: Record<string, string>; from?: string } = {}) =>
  Promise.resolve(
    parts.app.fetch(
      new Request(`http://x${path}`, {
        method: init.method ?? (init.body ? 'POST' : 'GET'),
        ...(init.body ? { body: init.body as Uint8Array<ArrayBuffer> } : {}),
        headers: { ...(init.headers ?? {}), ...(init.from ? { 'x-forwarded-for': init.from } : {}) },
      }),
    ),
  );

/** `n` joins with fresh keys (from 10.0.0.1, 10.0.0.2, …): each member's cohort, index, token and key. */
async function joinAll(parts: Parts, n: number) {
  const out: Array<{ cohort: string; index: number; token: string; status: string; key: Uint8Array }> = [];
  for (let i = 0; i < n; i++) {
    const key = (await secAggKeyPair()).publicKey;
    const res = await call(parts, '/v1/secagg/join', { body: key, from: `10.0.0.${i + 1}` });
    assert.equal(res.status, 200);
    out.push({ ...((await res.json()) as { cohort: string; index: number; token: string; status: string }), key });
  }
  return out;
}

/** A masked upload (zeros) by member `index` of `cohort`, for the server's settings. */
function maskedBody(rounds: RoundCoordinator, cohort: Uint8Array, index: number): Uint8Array {
  const sa = rounds.config.secureAggregation!;
  return encodeMaskedUpdate({ cohortId: cohort, index, cohortSize: sa.cohortSize, bits: sa.bits, step: sa.step, baseVersion: 0, values: new Uint32Array(IDS.length * (DIM + 1)) });
}

/** A random 65-byte uncompressed-point-shaped key (the memory store does not check the curve). */
function randomKey(): Uint8Array {
  const k = globalThis.crypto.getRandomValues(new Uint8Array(65));
  k[0] = 4;
  return k;
}

/** Whether `p` settles within `turns` turns of the event loop (nothing here waits on a timer or I/O). */
async function settlesWithin<T>(p: Promise<T>, turns = 200): Promise<boolean> {
  let settled = false;
  void p.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < turns && !settled; i++) await new Promise((r) => setImmediate(r));
  return settled;
}

test('the all-keys cohort view reads and encodes its keys once per cohort, answers 304 for its ETag, and its ETag changes with the state', async () => {
  const storage = new CountingStorage();
  const parts = await createServer({ storage, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: true, log: quiet });
  try {
    const members = await joinAll(parts, 3);
    const id = members[0]!.cohort;
    assert.equal(members[2]!.status, 'ready');
    const bodies: string[] = [];
    let etag = '';
    for (let i = 0; i < 5; i++) {
      const res = await call(parts, `/v1/secagg/cohorts/${id}`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      etag = res.headers.get('etag') ?? '';
      bodies.push(await res.text());
    }
    assert.match(etag, /^"[A-Za-z0-9_-]+"$/);
    assert.equal(new Set(bodies).size, 1, 'the same body each time');
    const view = JSON.parse(bodies[0]!) as { status: string; submitted: number; keys: string[] };
    assert.deepEqual([view.status, view.submitted], ['ready', 0]);
    assert.deepEqual(view.keys, members.map((m) => toHex(m.key)), 'all K keys in member order');
    assert.equal(storage.cohorts.fullReads, 1, 'five GETs, one read of the keys');

    // The client has it: 304, no body, nothing read.
    const again = await call(parts, `/v1/secagg/cohorts/${id}`, { headers: { 'If-None-Match': etag } });
    assert.equal(again.status, 304);
    assert.equal((await again.arrayBuffer()).byteLength, 0);
    assert.equal(again.headers.get('etag'), etag);

    // An upload changes the state: another tag, and the new state with the same keys (still one read).
    const m = members[1]!;
    const up = await call(parts, '/v1/secagg/updates', { body: maskedBody(parts.rounds, Buffer.from(m.cohort, 'hex'), m.index), headers: { 'X-Localrec-Cohort-Token': m.token } });
    assert.equal(up.status, 202);
    const after = await call(parts, `/v1/secagg/cohorts/${id}`, { headers: { 'If-None-Match': etag } });
    assert.equal(after.status, 200, 'the old tag no longer matches');
    assert.notEqual(after.headers.get('etag'), etag);
    const next = (await after.json()) as { submitted: number; keys: string[] };
    assert.deepEqual([next.submitted, next.keys], [1, view.keys]);
    assert.equal(storage.cohorts.fullReads, 1);
    // A member's own view (what devices ask) is not affected.
    const mine = (await (await call(parts, `/v1/secagg/cohorts/${id}/members/0`)).json()) as { memberKeys: Record<string, string> };
    assert.equal(mine.memberKeys['0'], toHex(members[0]!.key));
  } finally {
    await parts.storage.close();
  }
});

test("the all-keys cohort view takes a token from a rate-limit bucket of the client's (429 past it); member views do not", async () => {
  const parts = await createServer({ storage: new MemoryStorage(), initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: { perMinute: 0.001, burst: 2 }, trustProxy: true, secureAggregation: true, log: quiet });
  try {
    const members = await joinAll(parts, 3);
    const id = members[0]!.cohort;
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await call(parts, `/v1/secagg/cohorts/${id}`, { from: '203.0.113.9' })).status);
    assert.deepEqual(statuses, [200, 200, 429, 429]);
    const limited = await call(parts, `/v1/secagg/cohorts/${id}`, { from: '203.0.113.9' });
    assert.equal(limited.headers.get('retry-after'), '60');
    assert.equal(((await limited.json()) as { reason: string }).reason, 'rate-limited');
    for (let i = 0; i < 5; i++) assert.equal((await call(parts, `/v1/secagg/cohorts/${id}/members/1`, { from: '203.0.113.9' })).status, 200, 'a member view is never limited');
    assert.equal((await call(parts, `/v1/secagg/cohorts/${id}`, { from: '198.51.100.1' })).status, 200, 'another client has its own bucket');
    assert.equal((await call(parts, '/v1/secagg/join', { body: (await secAggKeyPair()).publicKey, from: '203.0.113.9' })).status, 200, "the client's joins have theirs");
  } finally {
    await parts.storage.close();
  }
});

test('toHex gives a flat string (a 65-byte key held in a Set costs ~190 B of heap, not the ~3.4 KB of a rope of 65 pieces), and the right digits', () => {
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  assert.equal(toHex(all), Buffer.from(all).toString('hex'));
  assert.equal(toHex(new Uint8Array()), '');
  assert.equal(toHex(Uint8Array.of(1, 255, 0, 16)), '01ff0010');
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const heap = () => {
    gc();
    gc();
    return process.memoryUsage().heapUsed;
  };
  const keys = Array.from({ length: 20_000 }, randomKey);
  const before = heap();
  const held = new Set<string>();
  for (const k of keys) held.add(toHex(k));
  const perKey = (heap() - before) / keys.length;
  assert.equal(held.size, keys.length);
  assert.ok(perKey < 1_000, `${perKey.toFixed(0)} bytes of heap per key held`);
});

test('a retried join (the same key while its cohort forms) finds its place without looking at the other members', async () => {
  const store = new MemoryCohortStore({ cohortSize: 50, bits: 16, step: 1 / 1024, degree: 4 }, 60_000, () => 0);
  const keys = Array.from({ length: 49 }, randomKey);
  const joined = [];
  for (const k of keys) {
    const r = await store.join(k);
    assert.ok(!('error' in r));
    joined.push(r);
  }
  // Count reads of the cohort's list of keys (what a scan walks).
  const c = (store as unknown as { cohorts: Map<string, { keyList: Array<Uint8Array | undefined> }> }).cohorts.get(joined[0]!.cohort.id)!;
  let reads = 0;
  c.keyList = new Proxy(c.keyList, {
    get(target, prop, receiver) {
      if (typeof prop === 'string' && /^\d+$/.test(prop)) reads++;
      return Reflect.get(target, prop, receiver) as unknown;
    },
  });
  const again = await store.join(keys[20]!);
  assert.ok(!('error' in again));
  assert.deepEqual([again.index, again.token, again.cohort.joined], [20, joined[20]!.token, 49]);
  assert.equal(reads, 0, 'no member looked at');
});

test('an ended cohort in memory keeps only what its views show: an aborted one no keys, a done one its keys; neither its uploads or sealed shares; both still answer leaves as before', async () => {
  let t = 0;
  const params = { cohortSize: 3, bits: 16, step: 1 / 1024, degree: 2, minSurvivors: 2 };
  const store = new MemoryCohortStore(params, 60_000, () => t);
  const members = [];
  for (let i = 0; i < 3; i++) {
    const r = await store.join(randomKey());
    assert.ok(!('error' in r));
    members.push(r);
  }
  const id = members[0]!.cohort.id;
  // All three upload (with sealed shares): recovering with nobody dropped; the shares come; it is published.
  for (let i = 0; i < 3; i++) assert.notEqual(await store.markSubmitted(id, i, 10 + i, new Uint8Array(64).fill(i + 1)), 'closed');
  assert.equal((await store.info(id))!.status, 'recovering');
  assert.equal((await store.sealedShares(id, [0, 1, 2])).size, 3);
  assert.equal(store.liveMembers, 3);
  await store.finish(id, 1);
  assert.equal((await store.info(id))!.status, 'done');
  assert.equal(store.liveMembers, 0, 'its members no longer count towards the cap');
  assert.equal((await store.keys(id)).size, 3, 'a done cohort still shows its keys');
  assert.equal((await store.sealedShares(id, [0, 1, 2])).size, 0, 'its sealed shares are gone');
  assert.equal(await store.leave(id, 0, members[1]!.token), 'unknown', 'a wrong token is still told so');
  assert.equal(await store.leave(id, 0, members[0]!.token), 'too-late');

  // One that never fills is aborted: nothing of its members' keys is kept.
  const lone = await store.join(randomKey());
  assert.ok(!('error' in lone));
  t += 60_001;
  const swept = await store.sweep();
  assert.deepEqual(swept.aborted.map((a) => a.id), [lone.cohort.id]);
  assert.equal((await store.info(lone.cohort.id))!.status, 'aborted');
  assert.equal((await store.keys(lone.cohort.id)).size, 0, 'an aborted cohort keeps no keys');
  assert.equal(await store.token(lone.cohort.id, 0), lone.token, 'its tokens, packed');
  assert.equal(await store.leave(lone.cohort.id, 0, lone.token), 'too-late');
  assert.equal(store.liveMembers, 0);
});

test('cohorts in memory hold at most maxMembers members of cohorts that have not ended: a join past it is answered 503 cohorts-full (Retry-After), a retried join still gets its place', async () => {
  let t = 0;
  const store = new MemoryCohortStore({ cohortSize: 3, bits: 16, step: 1 / 1024, degree: 2 }, 60_000, () => t, { maxMembers: 5 });
  assert.throws(() => new MemoryCohortStore({ cohortSize: 3, bits: 16, step: 1 / 1024, degree: 2 }, 60_000, () => t, { maxMembers: 2 }), /at least|≥ the cohort size/);
  const keys = Array.from({ length: 7 }, randomKey);
  const joined = [];
  for (const k of keys.slice(0, 5)) {
    const r = await store.join(k);
    assert.ok(!('error' in r));
    joined.push(r);
  }
  assert.equal(store.liveMembers, 5);
  const refused = await store.join(keys[5]!);
  assert.ok('error' in refused && refused.busy === true, JSON.stringify(refused));
  const retried = await store.join(keys[4]!);
  assert.ok(!('error' in retried) && retried.index === joined[4]!.index, 'the same key again is no new member');
  assert.equal(await store.leave(joined[4]!.cohort.id, joined[4]!.index, joined[4]!.token), 'left');
  assert.ok(!('error' in (await store.join(keys[5]!))), 'a place freed');
  assert.ok('error' in (await store.join(keys[6]!)));
  // The cohorts time out: their members are released.
  t += 60_001;
  await store.sweep();
  assert.equal(store.liveMembers, 0);
  assert.ok(!('error' in (await store.join(keys[6]!))));

  // Through the server: 503 cohorts-full with Retry-After, nothing stored.
  const parts = await createServer({ storage: new CountingStorage(3), initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: true, log: quiet });
  try {
    await joinAll(parts, 3);
    const res = await call(parts, '/v1/secagg/join', { body: (await secAggKeyPair()).publicKey });
    assert.equal(res.status, 503);
    assert.equal(res.headers.get('retry-after'), '60');
    assert.equal(((await res.json()) as { reason: string }).reason, 'cohorts-full');
  } finally {
    await parts.storage.close();
  }
});

test('a masked upload for no cohort, or with a wrong token, is refused without waiting for the queue of state changes', async () => {
  const parts = await createServer({ storage: new MemoryStorage(), initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: false, secureAggregation: true, log: quiet });
  try {
    const members = await joinAll(parts, 3);
    const cohort = Buffer.from(members[0]!.cohort, 'hex');
    // Hold the queue (as a long round would).
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const held = (parts.rounds as unknown as { run: (f: () => Promise<void>) => Promise<void> }).run(() => gate);
    const junk = parts.rounds.submitMasked(maskedBody(parts.rounds, globalThis.crypto.getRandomValues(new Uint8Array(16)), 0), 'f'.repeat(32));
    const wrongToken = parts.rounds.submitMasked(maskedBody(parts.rounds, cohort, 1), 'f'.repeat(32));
    const honest = parts.rounds.submitMasked(maskedBody(parts.rounds, cohort, 0), members[0]!.token);
    assert.ok(await settlesWithin(junk), 'an upload for no cohort is answered while the queue is held');
    assert.ok(await settlesWithin(wrongToken), 'so is one with a wrong token');
    assert.deepEqual([(await junk).ok, (await junk as { reason?: string }).reason], [false, 'unknown-cohort']);
    assert.deepEqual([(await wrongToken).ok, (await wrongToken as { reason?: string }).reason], [false, 'not-member']);
    assert.equal(await settlesWithin(honest, 50), false, "a member's upload waits its turn");
    open();
    await held;
    assert.equal((await honest).ok, true);
  } finally {
    await parts.storage.close();
  }
});

test("refused cohort leaves (a wrong token) take from the client's failure bucket: past it, 429 before the leave is looked at; others' leaves and joins are not affected", async () => {
  const parts = await createServer({ storage: new MemoryStorage(), initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier: 0, rateLimit: { perMinute: 0.001, burst: 3 }, trustProxy: true, secureAggregation: true, log: quiet });
  try {
    const [m] = await joinAll(parts, 1);
    const leave = (token: string, from: string) => call(parts, `/v1/secagg/cohorts/${m!.cohort}/members/0/leave`, { method: 'POST', headers: { 'X-Localrec-Cohort-Token': token }, from });
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await leave('0'.repeat(32), '203.0.113.66')).status);
    assert.deepEqual(statuses, [403, 403, 403, 429, 429]);
    assert.equal((await call(parts, '/v1/secagg/join', { body: (await secAggKeyPair()).publicKey, from: '203.0.113.66' })).status, 200, 'its joins have their own bucket');
    assert.equal((await leave(m!.token, '10.0.0.1')).status, 200, 'the member itself leaves');
  } finally {
    await parts.storage.close();
  }
});

test('an IPv6 client takes from its /64 and from its /48, which has 16 clients\' allowance: one /48 no longer holds 65,536 limits', async () => {
  assert.deepEqual(rateLimitKeys('2001:db8:1:2::7'), [
    { key: '2001:db8:1:2::/64', cost: 1 },
    { key: '2001:db8:1::/48', cost: 1 / 16 },
  ]);
  assert.deepEqual(rateLimitKeys('[2001:0DB8:0001:0002:aa::1]:443'), rateLimitKeys('2001:db8:1:2::7'));
  assert.deepEqual(rateLimitKeys('203.0.113.7'), [{ key: '203.0.113.7', cost: 1 }]);
  assert.deepEqual(rateLimitKeys('::ffff:203.0.113.7'), [{ key: '203.0.113.7', cost: 1 }]);
  assert.deepEqual(rateLimitKeys('unknown'), [{ key: 'unknown', cost: 1 }]);
  // In memory: burst 2 per /64, so 32 a /48 at once, from 100 /64s of it.
  const limiter = new RateLimiter({ perMinute: 60, burst: 2 }, () => 0);
  let passed = 0;
  for (let i = 0; i < 100; i++) if (await takeAll(limiter, rateLimitKeys(`2001:db8:aaaa:${i.toString(16)}::1`))) passed++;
  assert.equal(passed, 32);
  assert.equal(await takeAll(limiter, rateLimitKeys('2001:db8:bbbb::1')), true, 'another /48 has its own');
  // A /64 refused on its own bucket takes nothing from its /48's.
  const other = new RateLimiter({ perMinute: 60, burst: 1 }, () => 0);
  assert.equal(await takeAll(other, rateLimitKeys('2001:db8:cccc:1::1')), true);
  for (let i = 0; i < 40; i++) assert.equal(await takeAll(other, rateLimitKeys('2001:db8:cccc:1::2')), false);
  assert.equal(await takeAll(other, rateLimitKeys('2001:db8:cccc:2::1')), true);

  // Through the server (joins from one /48, a new /64 each; the exploit's shape).
  const parts = await createServer({ storage: new MemoryStorage(), initialTable: initialTable(), minClients: 1000, clip: 1, noiseMultiplier: 0, rateLimit: { perMinute: 0.001, burst: 2 }, trustProxy: true, secureAggregation: true, log: quiet });
  try {
    const key = (await secAggKeyPair()).publicKey;
    const counts = new Map<number, number>();
    for (let i = 0; i < 60; i++) {
      const s = (await call(parts, '/v1/secagg/join', { body: key, from: `2001:db8:aaaa:${i.toString(16)}::1` })).status;
      counts.set(s, (counts.get(s) ?? 0) + 1);
    }
    assert.deepEqual(Object.fromEntries(counts), { 200: 32, 429: 28 });
  } finally {
    await parts.storage.close();
  }
});
