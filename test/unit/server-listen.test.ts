/**
 * The server's listen backlog (docs/RELIABILITY.md, "Connection resets under load"): startServer
 * listens with a backlog of 4,096 by default (Node's own default is 511, which 1,000 simultaneous
 * clients overflowed), or the `backlog` option. Read back from the kernel with `ss`: for a
 * listening TCP socket its Send-Q column is the backlog (capped at net.core.somaxconn).
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect, createServer as createNetServer, type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { isValidationError, ValidationError } from '../../src/errors.js';
import { DEFAULT_BACKLOG, MemoryStorage, startServer } from '../../src/server/index.js';
import type { NewUpdate } from '../../src/server/storage.js';
import { honestUpdate, initialTable, post, pull, quiet } from './server-helpers.js';

function hasSs(): boolean {
  try {
    execFileSync('ss', ['-V'], { stdio: 'ignore' });
    return existsSync('/proc/sys/net/core/somaxconn');
  } catch {
    return false;
  }
}

/** The backlog the kernel holds for the listening socket on 127.0.0.1:port. */
function kernelBacklog(port: number): number {
  const out = execFileSync('ss', ['-ltnH', `sport = :${port}`], { encoding: 'utf8' });
  const line = out.split('\n').find((l) => l.includes(`127.0.0.1:${port}`));
  assert.ok(line, `ss lists the listening socket on port ${port}: ${out}`);
  // State Recv-Q Send-Q Local Peer
  return Number(line.trim().split(/\s+/)[2]);
}

test('startServer listens with a backlog of 4,096 by default, or the backlog option (read back with ss)', { skip: !hasSs() && 'needs Linux ss' }, async () => {
  const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
  const opts = { port: 0, dataDir: null, initialTable: initialTable(), rateLimit: false as const, log: quiet };
  const def = await startServer(opts);
  try {
    assert.equal(DEFAULT_BACKLOG, 4096);
    assert.equal(kernelBacklog(Number(new URL(def.url).port)), Math.min(DEFAULT_BACKLOG, somaxconn));
  } finally {
    await def.close();
  }
  const small = await startServer({ ...opts, backlog: 64 });
  try {
    assert.equal(kernelBacklog(Number(new URL(small.url).port)), 64);
    assert.equal((await fetch(`${small.url}/v1/health`)).status, 200);
  } finally {
    await small.close();
  }
});

test('startServer refuses a backlog that is not a positive integer', async () => {
  const opts = { port: 0, dataDir: null, initialTable: initialTable(), rateLimit: false as const, log: quiet };
  for (const backlog of [0, -1, 1.5, Number.NaN]) {
    await assert.rejects(startServer({ ...opts, backlog }), (e: unknown) => e instanceof ValidationError && /options\.backlog/.test(e.message));
  }
});

test('close() answers every upload in flight (202, stored), then drains the rounds and closes the store', async () => {
  const N = 40;
  let arrived = 0;
  let allIn!: () => void;
  const allArrived = new Promise<void>((r) => (allIn = r));
  let release!: () => void;
  const closeCalled = new Promise<void>((r) => (release = r));
  let storeClosed = false;
  /** Counts uploads as they reach the server (its rate limit) and holds them in the store until close() was called. */
  class HeldStorage extends MemoryStorage {
    rateLimiter() {
      return { take: () => (++arrived === N && allIn(), true) };
    }
    override async addUpdate(u: NewUpdate) {
      await closeCalled;
      assert.equal(storeClosed, false, 'an upload is stored before the store closes');
      return super.addUpdate(u);
    }
    override async close() {
      storeClosed = true;
    }
  }
  const storage = new HeldStorage();
  const server = await startServer({ port: 0, storage, initialTable: initialTable(), minClients: 1000, noiseMultiplier: 0, rateLimit: { perMinute: 1e6, burst: 1e6 }, log: quiet });
  const v0 = await pull(server.url);
  const uploads = Array.from({ length: N }, (_, i) => post(server.url, honestUpdate(v0, i + 1)));
  await allArrived;
  const closed = server.close();
  release();
  const answers = await Promise.all(uploads);
  await closed;
  assert.deepEqual(answers.map((a) => a.status), Array<number>(N).fill(202));
  assert.equal(await storage.pendingCount(), N, 'every acknowledged upload is stored');
  assert.equal(storeClosed, true);
  await assert.rejects(fetch(`${server.url}/v1/health`), 'no new connection is taken');
});

test('close() cuts a connection still open after shutdownGraceMs (a client that never finishes its body)', async () => {
  await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: initialTable(), shutdownGraceMs: -1, log: quiet }), (e: unknown) => e instanceof ValidationError && /options\.shutdownGraceMs/.test(e.message));
  let arrived!: () => void;
  const inFlight = new Promise<void>((r) => (arrived = r));
  /** Says when the request reached the server (its rate limit, ahead of reading the body). */
  class Watched extends MemoryStorage {
    rateLimiter() {
      return { take: () => (arrived(), true) };
    }
  }
  const server = await startServer({ port: 0, storage: new Watched(), initialTable: initialTable(), shutdownGraceMs: 50, log: quiet });
  const { port } = new URL(server.url);
  const socket = connect(Number(port), '127.0.0.1');
  const ended = new Promise<void>((r) => socket.once('close', () => r()));
  socket.on('error', () => undefined);
  await new Promise<void>((r) => socket.once('connect', () => r()));
  // Headers and half the declared body: the request stays in flight.
  socket.write(`POST /v1/updates HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n${'x'.repeat(50)}`);
  await inFlight;
  await server.close();
  await ended;
});

test('a port in use, or a host that cannot be bound, is refused naming the option (the CLI says --port / --host)', async () => {
  const first = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), log: () => {} });
  try {
    const port = Number(new URL(first.url).port);
    await assert.rejects(startServer({ port, dataDir: null, initialTable: initialTable(), log: () => {} }), (e: unknown) => isValidationError(e) && e.field === 'options.port' && new RegExp(`^options\\.port: ${port} on 127\\.0\\.0\\.1 is in use`).test((e as Error).message));
    await assert.rejects(startServer({ port: 0, host: '999.1.1.1', dataDir: null, initialTable: initialTable(), log: () => {} }), (e: unknown) => isValidationError(e) && e.field === 'options.host' && /cannot listen on '999\.1\.1\.1'/.test((e as Error).message));
    // An empty host would listen on every interface (and name no URL): refused before anything starts.
    await assert.rejects(startServer({ port: 0, host: '', dataDir: null, initialTable: initialTable(), log: () => {} }), (e: unknown) => isValidationError(e) && e.message === "options.host: must be an address or host name to listen on, got \"\"");
  } finally {
    await first.close();
  }
});

test('the port is bound before the store is opened: a request that comes meanwhile waits for the server, or gets 503 when its start fails', async () => {
  /** A free port (taken and let go: nothing else on this machine picks it in between, in practice). */
  const freePort = () =>
    new Promise<number>((resolve) => {
      const s = createNetServer().listen(0, '127.0.0.1', () => {
        const { port } = s.address() as AddressInfo;
        s.close(() => resolve(port));
      });
    });
  /** A store whose first read waits for `open` (as a slow database would), then fails with `fail`. */
  const slowStore = (fail?: Error) => {
    let open!: () => void;
    const opened = new Promise<void>((r) => (open = r));
    const storage = new (class extends MemoryStorage {
      override async latest() {
        await opened;
        if (fail) throw fail;
        return super.latest();
      }
    })();
    return { storage, open };
  };
  for (const fail of [undefined, new Error('the store is down')]) {
    const port = await freePort();
    const { storage, open } = slowStore(fail);
    const starting = startServer({ port, storage, initialTable: initialTable(), log: quiet }).then((server) => ({ server }), (error: Error) => ({ error }));
    // The store is not open yet, yet the port answers once the server is built.
    let answered = false;
    const health = fetch(`http://127.0.0.1:${port}/v1/health`).then((r) => ((answered = true), r));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(answered, false, 'no answer before the server is built');
    open();
    const r = await health;
    const started = await starting;
    if ('server' in started) {
      assert.equal(r.status, 200);
      await started.server.close();
    } else {
      assert.equal(started.error, fail);
      assert.deepEqual([r.status, ((await r.json()) as { reason: string }).reason, r.headers.get('retry-after')], [503, 'storage-unavailable', '30']);
      await assert.rejects(fetch(`http://127.0.0.1:${port}/v1/health`), 'the port is let go');
    }
  }
});
