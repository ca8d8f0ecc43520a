/**
 * What an operator sees of a running server: `GET /metrics` (totals only), a round that keeps
 * failing (in `/v1/rounds/current` and the metrics, retried at most once a second), log lines that
 * a request path cannot forge, a storage outage logged as a first line, a count a minute and its
 * end, the shutdown's lines, and the liveness check.
 */
import { test } from 'node:test';
import { strict as assert } from 'node:assert';
import type { Hono } from 'hono';
import { StorageError } from '../../src/errors.js';
import { decodeModel, fromHex } from '../../src/federated/wire.js';
import { secAggKeyPair } from '../../src/federated/secagg.js';
import { createServer, MemoryStorage, startServer, StorageConflictError } from '../../src/server/index.js';
import { honestUpdate, initialTable, quiet, type ServerView } from './server-helpers.js';

async function view(app: Hono): Promise<ServerView> {
  const res = await app.request('/v1/model');
  const { table } = decodeModel(new Uint8Array(await res.arrayBuffer()));
  const config = (await (await app.request('/v1/config')).json()) as ServerView['config'];
  return { table, hash: fromHex(res.headers.get('x-localrec-model-hash')!), config };
}

const upload = (app: Hono, body: Uint8Array, path = '/v1/updates') => app.request(path, { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream' } });

async function metricsOf(app: Hono): Promise<string> {
  const res = await app.request('/metrics');
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
  return res.text();
}

/** The value of the sample `series` (name and labels exactly as exposed), or undefined. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** A store whose writes of updates fail while `failing` is set (a full disk), as a StorageError. */
class FailingWrites extends MemoryStorage {
  failing = false;
  /** While set, addUpdate waits for it (a request held in flight). */
  gate: Promise<void> | null = null;
  reached: () => void = () => {};
  override async addUpdate(...a: Parameters<MemoryStorage['addUpdate']>) {
    if (this.gate) {
      this.reached();
      await this.gate;
    }
    if (this.failing) throw new StorageError('SQLite store update failed (/var/lib/localrec/localrec.sqlite): database or disk is full');
    return super.addUpdate(...a);
  }
}

test('GET /metrics (opt-in) exposes totals by reason code and route pattern, and nothing a client sent', async () => {
  const off = await createServer({ dataDir: null, initialTable: initialTable(), log: quiet });
  assert.equal((await off.app.request('/metrics')).status, 404, 'off by default');
  await off.storage.close();

  const { app, storage } = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 3, noiseMultiplier: 0, rateLimit: false, metrics: true, log: quiet });
  try {
    const v0 = await view(app);
    assert.equal((await upload(app, honestUpdate(v0, 1))).status, 202);
    assert.equal((await upload(app, new Uint8Array(7))).status, 400); // malformed
    assert.equal((await upload(app, new Uint8Array(1 << 20))).status, 413); // oversized
    const cohortId = 'ab'.repeat(16);
    assert.equal((await app.request(`/v1/secagg/cohorts/${cohortId}/members/7`)).status, 409); // wrong-mode
    assert.equal((await app.request('/v1/no-such/thing-7f3a')).status, 404);
    const text = await metricsOf(app);
    assert.equal(sample(text, 'localrec_updates_total{kind="plain",result="accepted"}'), 1);
    assert.equal(sample(text, 'localrec_updates_total{kind="plain",result="malformed"}'), 1);
    assert.equal(sample(text, 'localrec_updates_total{kind="plain",result="oversized"}'), 1);
    assert.equal(sample(text, 'localrec_updates_total{kind="plain",result="stale"}'), 0, 'every reason code is listed from the start');
    assert.equal(sample(text, 'localrec_model_version'), 0);
    assert.equal(sample(text, 'localrec_pending_updates'), 1);
    assert.equal(sample(text, 'localrec_round_failures_total'), 0);
    assert.equal(sample(text, 'localrec_storage_up'), 1);
    assert.ok(sample(text, 'localrec_last_publish_timestamp_seconds')! > 1e9);
    assert.equal(sample(text, 'localrec_http_requests_total{method="POST",route="/v1/updates",status="202"}'), 1);
    assert.equal(sample(text, 'localrec_http_requests_total{method="GET",route="/v1/secagg/cohorts/:id/members/:member",status="409"}'), 1);
    assert.equal(sample(text, 'localrec_http_requests_total{method="GET",route="/v1/*",status="404"}'), 1);
    assert.equal(sample(text, 'localrec_http_request_duration_seconds_count{method="POST",route="/v1/updates"}'), 3);
    assert.equal(text.match(/^localrec_cohorts/m), null, 'no cohort series without secure aggregation');
    // Route patterns only: no cohort id, member index or path a client sent.
    for (const leak of [cohortId, 'thing-7f3a', '/members/7']) assert.ok(!text.includes(leak), leak);
    // Every line is a comment or `name{labels} value`.
    for (const l of text.trimEnd().split('\n')) assert.match(l, /^(# (HELP|TYPE) \w+ .+|[a-z_]+(\{[a-z_]+="[^"\n]*"(,[a-z_]+="[^"\n]*")*\})? [-+0-9.eInfNa]+)$/, l);
  } finally {
    await storage.close();
  }
});

test('secure aggregation: joins and masked uploads by result, cohorts by state; a cohort that times out forming with no uploads is logged', async () => {
  let t = 1_000_000;
  const logs: string[] = [];
  const { app, storage } = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, secureAggregation: { timeoutMs: 1000 }, now: () => t, metrics: true, log: (l) => logs.push(l) });
  try {
    const join = await app.request('/v1/secagg/join', { method: 'POST', body: (await secAggKeyPair()).publicKey as Uint8Array<ArrayBuffer> });
    assert.equal(join.status, 200);
    const { cohort, token } = (await join.json()) as { cohort: string; token: string };
    assert.equal((await app.request('/v1/secagg/join', { method: 'POST', body: new Uint8Array(65) })).status, 400);
    let text = await metricsOf(app);
    assert.equal(sample(text, 'localrec_updates_total{kind="join",result="accepted"}'), 1);
    assert.equal(sample(text, 'localrec_updates_total{kind="join",result="malformed"}'), 1);
    assert.equal(sample(text, 'localrec_updates_total{kind="masked",result="accepted"}'), 0);
    assert.equal(sample(text, 'localrec_cohorts{state="forming"}'), 1);
    t += 1_500; // past the fill deadline, one member of two: the next request that sweeps ends it
    assert.equal((await app.request(`/v1/secagg/cohorts/${cohort}`)).status, 200);
    text = await metricsOf(app);
    assert.deepEqual([sample(text, 'localrec_cohorts{state="forming"}'), sample(text, 'localrec_cohorts{state="aborted"}'), sample(text, 'localrec_cohorts_aborted_total')], [0, 1, 1]);
    assert.ok(!text.includes(cohort) && !text.includes(token));
    assert.deepEqual(logs, [`cohort ${cohort.slice(0, 12)} ended without uploads: only 1 of 2 members joined within 1000 ms`]);
  } finally {
    await storage.close();
  }
});

test('a round that keeps failing says why and since when (rounds/current, metrics), is retried at most once a second rather than on every upload, and its recovery is logged', async () => {
  let t = 1_700_000_000_000;
  const logs: string[] = [];
  // A learning rate that takes every aggregate out of the range devices accept.
  const { app, rounds, storage } = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, serverLearningRate: 1e12, now: () => t, metrics: true, log: (l) => logs.push(l) });
  const current = async () => (await (await app.request('/v1/rounds/current')).json()) as { version: number; lastRoundError: string | null; failingSince: string | null };
  const failures = async () => sample(await metricsOf(app), 'localrec_round_failures_total');
  try {
    const v0 = await view(app);
    assert.deepEqual(await current().then((c) => [c.lastRoundError, c.failingSince]), [null, null]);
    for (const s of [1, 2]) assert.equal((await upload(app, honestUpdate(v0, s))).status, 202);
    const since = new Date(t).toISOString();
    let cur = await current();
    assert.equal(cur.version, 0);
    assert.match(cur.lastRoundError!, /^the aggregate of 2 updates is out of range/);
    assert.equal(cur.failingSince, since);
    assert.equal(await failures(), 1);
    const text = await metricsOf(app);
    assert.equal(sample(text, 'localrec_round_failing_since_timestamp_seconds'), t / 1000);
    // More uploads within the second: stored, but the round is not tried again for each.
    for (const s of [3, 4, 5]) assert.equal((await upload(app, honestUpdate(v0, s))).status, 202);
    await rounds.drain();
    assert.equal(await failures(), 1, 'not retried on every upload');
    // A second later the next request retries it (behind the queue), once.
    t += 1_500;
    await current();
    await rounds.drain();
    assert.equal(await failures(), 2);
    assert.equal((await upload(app, honestUpdate(v0, 6))).status, 202);
    await rounds.drain();
    assert.equal(await failures(), 2);
    cur = await current();
    assert.deepEqual([cur.version, cur.failingSince], [0, since]);
    // The log: the first two attempts, then at most a line a minute, saying how many it left out.
    const failed = () => logs.filter((l) => /^aggregation failed/.test(l));
    assert.equal(failed().length, 2);
    t += 1_500;
    await current();
    await rounds.drain();
    assert.deepEqual([await failures(), failed().length], [3, 2]);
    t += 60_000;
    await current();
    await rounds.drain();
    assert.equal(await failures(), 4);
    assert.match(failed().at(-1)!, /^aggregation failed again, will retry: the aggregate of 6 updates is out of range .* \(and 1 more failed attempts since the last line\)$/);
    // The operator fixes the cause; the next retry publishes, and says so.
    (rounds.config as { serverLearningRate: number }).serverLearningRate = 1;
    t += 1_500;
    await current();
    await rounds.drain();
    cur = await current();
    assert.deepEqual([cur.version, cur.lastRoundError, cur.failingSince], [1, null, null]);
    assert.equal(sample(await metricsOf(app), 'localrec_round_failing_since_timestamp_seconds'), 0);
    assert.ok(logs.includes('rounds aggregate again after 65 s of failures (4 failed attempts)'), logs.join('\n'));
  } finally {
    await storage.close();
  }
});

test('a round that fails again when the server restarts is retried by the next read a second later, as one that failed while it ran', async () => {
  let t = 1_700_000_000_000;
  const storage = new MemoryStorage();
  const logs: string[] = [];
  const options = { storage, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false as const, maxStaleness: 100, serverLearningRate: 1e12, now: () => t, metrics: true, log: (l: string) => logs.push(l) };
  try {
    const first = await createServer(options);
    const v0 = await view(first.app);
    for (const s of [1, 2]) assert.equal((await upload(first.app, honestUpdate(v0, s))).status, 202);
    await first.rounds.drain();
    // The same store, the same settings: the round pending at start fails again, and the server starts.
    const { app, rounds } = await createServer(options);
    const failures = async () => sample(await metricsOf(app), 'localrec_round_failures_total');
    assert.equal(await failures(), 1);
    assert.ok(logs.some((l) => /^the round pending at start could not be published: the aggregate of 2 updates is out of range/.test(l)), logs.join('\n'));
    // A read within the second does not retry it; one a second later does (behind the queue), once.
    const current = async () => (await (await app.request('/v1/rounds/current')).json()) as { version: number; pending: number; lastRoundError: string | null };
    await current();
    await rounds.drain();
    assert.equal(await failures(), 1);
    t += 1_500;
    await current();
    await rounds.drain();
    assert.equal(await failures(), 2, 'the read retried the round');
    // That retry counts as the last attempt: an upload completing a round just after it waits.
    assert.equal((await upload(app, honestUpdate(v0, 3))).status, 202);
    await rounds.drain();
    assert.equal(await failures(), 2);
    // The operator lowers the rate; the next read a second later publishes all three.
    (rounds.config as { serverLearningRate: number }).serverLearningRate = 1;
    t += 1_500;
    await current();
    await rounds.drain();
    const cur = await current();
    assert.deepEqual([cur.version, cur.pending, cur.lastRoundError], [1, 0, null]);
  } finally {
    await storage.close();
  }
});

test('a request path cannot forge a log line: a failure is logged as one line naming the route pattern', async () => {
  /** A store other processes share, whose reads fail while `failing` is set. */
  class SharedFailing extends MemoryStorage {
    readonly shared = true;
    failing = false;
    override async versionHash(v: number) {
      if (this.failing) throw new StorageError('PostgreSQL read failed: connection refused');
      return super.versionHash(v);
    }
  }
  const storage = new SharedFailing();
  const logs: string[] = [];
  const { app } = await createServer({ storage, initialTable: initialTable(), log: (l) => logs.push(l) });
  try {
    storage.failing = true;
    const res = await app.request('/v1/a%0Ab%0Dlocalrec serve: forged');
    assert.equal(res.status, 503);
    assert.equal(logs.length, 1, logs.join('|'));
    assert.doesNotMatch(logs[0]!, /[\n\r]|forged/);
    assert.equal(logs[0], 'storage unavailable on GET /v1/*: PostgreSQL read failed: connection refused');
  } finally {
    await storage.close();
  }
});

test('a failure that is not an aggregate out of range is published as one fixed sentence, logged without a member index; a peer that aggregated what failed ends the failing state', async () => {
  const logs: string[] = [];
  const { app, rounds, storage } = await createServer({ dataDir: null, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, log: (l) => logs.push(l) });
  const current = async () => (await (await app.request('/v1/rounds/current')).json()) as { version: number; lastRoundError: string | null; failingSince: string | null };
  try {
    const hack = rounds as unknown as { aggregateNow: () => Promise<number> };
    hack.aggregateNow = async () => {
      throw new RangeError("member 7's self-mask needs 3 shares, got 2");
    };
    const v0 = await view(app);
    for (const s of [1, 2]) assert.equal((await upload(app, honestUpdate(v0, s))).status, 202);
    await rounds.drain();
    const cur = await current();
    assert.equal(cur.lastRoundError, 'the round could not be combined (the cause is in the server log)');
    assert.ok(cur.failingSince);
    assert.ok(logs.some((l) => /^aggregation failed, will retry: a member's self-mask needs 3 shares/.test(l)), logs.join('|'));
    assert.ok(!logs.some((l) => /member 7/.test(l)), logs.join('|'));
    // Another instance on the same store aggregated them first: this one's retry loses the publish
    // and finds nothing pending, so the failing state ends.
    hack.aggregateNow = async () => {
      throw new StorageConflictError('another process published first');
    };
    (storage as unknown as { pendingCount: () => Promise<number> }).pendingCount = async () => 0;
    await new Promise((r) => setTimeout(r, 1_100));
    await current();
    await rounds.drain();
    assert.deepEqual(await current().then((c) => [c.lastRoundError, c.failingSince]), [null, null]);
  } finally {
    await storage.close();
  }
});

test('a storage outage is logged as its first failure, then at most one count a minute, then its end', async () => {
  let t = 1_000_000;
  const storage = new FailingWrites();
  const logs: string[] = [];
  const { app } = await createServer({ storage, initialTable: initialTable(), minClients: 10, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, now: () => t, log: (l) => logs.push(l) });
  try {
    const v0 = await view(app);
    storage.failing = true;
    const body = honestUpdate(v0, 1);
    for (let i = 0; i < 5; i++) assert.equal((await upload(app, body)).status, 503);
    // A refusal that never reached the store (a malformed body) does not end the outage.
    assert.equal((await upload(app, new Uint8Array([1, 2, 3]))).status, 400);
    assert.equal((await app.request('/v1/health')).status, 503);
    assert.equal(logs.length, 1, logs.join('|'));
    t += 61_000;
    assert.equal((await upload(app, body)).status, 503);
    t += 4_000;
    storage.failing = false;
    assert.equal((await upload(app, body)).status, 202);
    assert.equal((await upload(app, honestUpdate(v0, 2))).status, 202);
    assert.deepEqual(logs, [
      'storage unavailable on POST /v1/updates: SQLite store update failed (/var/lib/localrec/localrec.sqlite): database or disk is full',
      '6 requests refused for storage in the last 61 s',
      'storage available again after 65 s',
    ]);
  } finally {
    await storage.close();
  }
});

test('GET /v1/health/live answers 200 while /v1/health says the store is down; shutdown logs the requests in flight, then stopped', async () => {
  const storage = new FailingWrites();
  const logs: string[] = [];
  const server = await startServer({ port: 0, storage, initialTable: initialTable(), noiseMultiplier: 0, rateLimit: false, shutdownGraceMs: 2_000, log: (l) => logs.push(l) });
  let closed: Promise<void> | undefined;
  try {
    const v0 = await view({ request: (p: string) => fetch(`${server.url}${p}`) } as unknown as Hono);
    storage.failing = true;
    const post = (body: Uint8Array) => fetch(`${server.url}/v1/updates`, { method: 'POST', body: body as Uint8Array<ArrayBuffer> });
    assert.equal((await post(honestUpdate(v0, 1))).status, 503);
    assert.equal((await fetch(`${server.url}/v1/health`)).status, 503);
    const live = await fetch(`${server.url}/v1/health/live`);
    assert.deepEqual([live.status, await live.json()], [200, { ok: true }]);
    storage.failing = false;
    // One upload held inside the store while the server is asked to stop.
    let release!: () => void;
    storage.gate = new Promise<void>((r) => (release = r));
    const reached = new Promise<void>((r) => (storage.reached = r));
    const inFlight = post(honestUpdate(v0, 2));
    await reached;
    closed = server.close('SIGTERM');
    await new Promise((r) => setImmediate(r));
    assert.equal(logs.at(-1), 'stopping (SIGTERM): 1 request in flight');
    storage.gate = null;
    release();
    assert.equal((await inFlight).status, 202, 'the request in flight is answered');
    await closed;
    assert.equal(logs.at(-1), 'stopped');
  } finally {
    await (closed ?? server.close());
  }
});

test('logFormat json (--log-format json): one JSON object per line with ts, level, event and the line\'s fields', async () => {
  await assert.rejects(createServer({ dataDir: null, initialTable: initialTable(), logFormat: 'xml' as 'json' }), /options\.logFormat: must be 'text' or 'json'/);
  const written: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string | Uint8Array) => (written.push(String(chunk)), true)) as typeof process.stderr.write;
  const storage = new FailingWrites();
  try {
    const { app } = await createServer({ storage, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, maxStaleness: 100, logFormat: 'json' });
    const v0 = await view(app);
    storage.failing = true;
    assert.equal((await upload(app, honestUpdate(v0, 1))).status, 503);
    storage.failing = false;
    for (const s of [1, 2]) assert.equal((await upload(app, honestUpdate(v0, s))).status, 202);
  } finally {
    process.stderr.write = write;
    await storage.close();
  }
  const lines = written.join('').trimEnd().split('\n');
  const objs = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(objs.map((o) => [o.level, o.event]), [['error', 'storage-unavailable'], ['info', 'storage-recovered'], ['info', 'published']], lines.join('\n'));
  for (const o of objs) assert.match(String(o.ts), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.deepEqual([objs[0]!.method, objs[0]!.route], ['POST', '/v1/updates']);
  assert.match(String(objs[0]!.msg), /^storage unavailable on POST \/v1\/updates: SQLite store update failed/);
  assert.deepEqual([objs[2]!.version, objs[2]!.updates, typeof objs[2]!.durationMs], [1, 2, 'number']);
});
