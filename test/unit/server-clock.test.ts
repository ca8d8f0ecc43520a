/**
 * The server's own intervals run on a monotonic clock (stop 32, a review of time): a wall clock
 * stepped back by X (an NTP correction, a VM resumed) held each of them for X. Each test drives
 * both clocks (`now`, `monotonic`) as a machine's clocks move: time passes on both, then the wall
 * clock alone steps back an hour, then time passes past the interval, which must have passed
 * (before: it waited out the hour). A server given `now` alone derives its monotonic clock from it
 * (`steadyClock`: forward as `now` goes, still when it goes back), so that tests written for one
 * clock keep driving both.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { StorageError } from '../../src/errors.js';
import { steadyClock } from '../../src/server/clock.js';
import { MemoryStorage, RateLimiter, startServer } from '../../src/server/index.js';
import { cohortOfTwo, ConflictingStorage, honestUpdate, initialTable, post, pull, quiet } from './server-helpers.js';

const HOUR = 3_600_000;

/** A machine's two clocks: `pass(ms)` moves both, `stepBack(ms)` the wall clock alone. */
function machineClocks(wall = 1_000_000) {
  const c = { wall, mono: 0 };
  return {
    now: () => c.wall,
    monotonic: () => c.mono,
    pass(ms: number) {
      c.wall += ms;
      c.mono += ms;
    },
    stepBack(ms: number) {
      c.wall -= ms;
    },
  };
}

test('steadyClock (the monotonic clock a server given `now` alone derives from it) follows the wall clock forward and stands still when it goes back', () => {
  let t = 5_000;
  const c = steadyClock(() => t);
  assert.equal(c(), 0);
  t += 500;
  assert.equal(c(), 500);
  t -= HOUR;
  assert.equal(c(), 500, 'a step back does not count');
  t += 200;
  assert.equal(c(), 700, 'and the clock moves on from there');
});

class SharedMemory extends MemoryStorage {
  readonly shared = true;
}

test("a reader of a shared store still catches up with its peers' versions after its wall clock stepped back", async () => {
  const storage = new SharedMemory();
  const ca = machineClocks();
  const common = { port: 0, storage, minClients: 2, noiseMultiplier: 0, rateLimit: false as const, log: quiet, initialTable: initialTable() };
  const a = await startServer({ ...common, now: ca.now, monotonic: ca.monotonic });
  const b = await startServer({ ...common, now: () => 1_000_000 });
  try {
    const v0 = await pull(a.url);
    ca.stepBack(HOUR); // A's wall clock steps back
    for (const seed of [1, 2]) await post(b.url, honestUpdate(v0, seed));
    assert.equal(b.rounds.version, 1);
    ca.pass(1_500);
    // Before: A's last look was an hour "in the future", and it served version 0 for that hour.
    assert.equal((await pull(a.url)).table.version, 1);
  } finally {
    await a.close();
    await b.close();
  }
});

test('/v1/health probes a store that failed a write again a second later, also after the wall clock stepped back', async () => {
  class Flaky extends MemoryStorage {
    down = false;
    override async addUpdate(...a: Parameters<MemoryStorage['addUpdate']>) {
      if (this.down) throw new StorageError('store update failed: database or disk is full');
      return super.addUpdate(...a);
    }
    async probeWrite(): Promise<void> {
      if (this.down) throw new StorageError('probe a write failed: database or disk is full');
    }
  }
  const storage = new Flaky();
  const c = machineClocks();
  const server = await startServer({ port: 0, storage, noiseMultiplier: 0, rateLimit: false, now: c.now, monotonic: c.monotonic, log: quiet, initialTable: initialTable() });
  try {
    const v0 = await pull(server.url);
    storage.down = true;
    assert.equal((await post(server.url, honestUpdate(v0, 1))).status, 503);
    assert.equal((await fetch(`${server.url}/v1/health`)).status, 503);
    storage.down = false;
    c.stepBack(HOUR);
    c.pass(1_500);
    // Before: the last failure was an hour "ahead", and health answered 503 for that hour.
    assert.equal((await fetch(`${server.url}/v1/health`)).status, 200, 'the probe ran and succeeded');
  } finally {
    await server.close();
  }
});

test('the rate limit refills and forgets full buckets after the wall clock stepped back', async () => {
  const c = machineClocks();
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), noiseMultiplier: 0, rateLimit: { perMinute: 6, burst: 2 }, now: c.now, monotonic: c.monotonic, log: quiet });
  try {
    const v0 = await pull(server.url);
    assert.deepEqual([(await post(server.url, honestUpdate(v0, 1))).status, (await post(server.url, honestUpdate(v0, 2))).status, (await post(server.url, honestUpdate(v0, 3))).status], [202, 202, 429]);
    c.stepBack(HOUR);
    c.pass(10_000); // one token every 10 s
    // Before: the bucket was stamped an hour "ahead" and did not refill for that hour.
    assert.equal((await post(server.url, honestUpdate(v0, 4))).status, 202);
  } finally {
    await server.close();
  }
  // The limiter on its own: a client's full bucket is forgotten (with its address) at the next purge.
  const m = machineClocks();
  const rl = new RateLimiter({ perMinute: 60, burst: 2 }, m.monotonic);
  const buckets = () => (rl as unknown as { buckets: Map<string, unknown> }).buckets;
  rl.take('203.0.113.1');
  m.stepBack(HOUR);
  m.pass(30_000);
  rl.take('203.0.113.2');
  assert.deepEqual([...buckets().keys()], ['203.0.113.2'], 'the first address is forgotten once its bucket refilled');
});

test('the two clocks can be driven apart: a monotonic clock given to the server times its intervals, the wall clock stamps what it stores', async () => {
  const storage = new SharedMemory();
  let wall = 1_700_000_000_000;
  let mono = 0;
  const common = { port: 0, storage, minClients: 2, noiseMultiplier: 0, rateLimit: false as const, log: quiet, initialTable: initialTable() };
  const a = await startServer({ ...common, now: () => wall, monotonic: () => mono });
  const b = await startServer({ ...common, now: () => wall });
  try {
    const v0 = await pull(a.url);
    for (const seed of [1, 2]) await post(b.url, honestUpdate(v0, seed));
    wall += HOUR; // the wall clock alone does not make A look again …
    assert.equal((await pull(a.url)).table.version, 0);
    mono += 1_001; // … its monotonic clock does
    assert.equal((await pull(a.url)).table.version, 1);
    assert.equal((await storage.latest())!.createdAt, wall - HOUR, 'the version is stamped with the wall clock');
  } finally {
    await a.close();
    await b.close();
  }
});

test('a complete cohort whose publish lost to another process is retried a second later, also after the wall clock stepped back', async () => {
  const c = machineClocks();
  const storage = new ConflictingStorage();
  const { parts, members, upload, view } = await cohortOfTwo(storage, c, quiet);
  try {
    storage.conflicts = 4;
    await upload(members[0]!);
    assert.equal((await upload(members[1]!)).published, null, 'three conflicts: the round waits');
    c.pass(1_500);
    await view();
    await parts.rounds.drain();
    assert.equal(parts.rounds.version, 0, 'the first retry lost too');
    c.stepBack(HOUR);
    c.pass(1_500);
    // Before: the next retry waited for an hour of wall clock.
    await view();
    await parts.rounds.drain();
    assert.deepEqual([parts.rounds.version, (await view()).status], [1, 'done']);
  } finally {
    await parts.storage.close();
  }
});
