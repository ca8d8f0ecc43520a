/**
 * Load benchmark for the aggregation server (`npm run bench:server`; not part of npm test).
 *
 * 1,000 simulated clients on loopback (127.0.0.1 only) each POST one valid update per round,
 * all at once, for several rounds, together with a few invalid ones of every kind; the same run on
 * the in-memory store, on SQLite and on PostgreSQL (a throwaway server started here, when its binaries
 * are installed), side by side; then on PostgreSQL again with the server in 1 and in 2 `localrec
 * serve` child processes sharing the database (requests alternate between them). Update bodies are built before each round is
 * timed (buildClientUpdate on a 4,000 × 16 table, σ = 1, the bits the server asks for). Reports
 * updates/s, p50/p99 latency, rejections by reason, peak RSS, and acknowledged vs stored: every
 * update that got 202 must be pending or aggregated into a published version (lost must be 0).
 * Then secure aggregation (`secureAggregation`; BENCH_SECAGG=0 skips it): ROUNDS cohorts of CLIENTS
 * devices each join, read their neighbours' keys and upload a masked update, on SQLite, PostgreSQL
 * in process, and 1 and 2 `serve` processes on PostgreSQL; joins, key reads and uploads per second,
 * and acknowledged uploads not unmasked into a published version (`lost`, must be 0).
 * JSON on stdout. Bounded: CLIENTS × ROUNDS requests per store, and a hard deadline.
 *
 *   npm run bench:server                       # 1,000 clients × 3 rounds
 *   BENCH_CLIENTS=200 BENCH_ROUNDS=2 npm run bench:server
 *   BENCH_AGENT=shared BENCH_BACKLOG=511 npm run bench:server   # the old bench client and Node's backlog
 *
 * Each round's clients connect afresh (a device's next sync is a new connection); `BENCH_AGENT=shared`
 * keeps one keep-alive pool across rounds, which the server's idle timeout closes while this process
 * builds the next round's bodies (the resets of docs/RELIABILITY.md). `listenOverflows` is Linux's
 * ListenOverflows counter over the run.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import { buildClientUpdate, quantizeStochastic } from '../src/federated/client-update.js';
import { encodeMaskedUpdate, secAggKeyPair } from '../src/federated/secagg.js';
import { decodeModel, encodeUpdate, fromHex, NONCE_BYTES, toHex } from '../src/federated/wire.js';
import { cloneItemTable, createItemTable, type ItemTable } from '../src/model/item-table.js';
import { Random } from '../src/model/random.js';
import pg from 'pg';
import { MemoryStorage, PostgresStorage, SqliteStorage, startServer, type Storage } from '../src/server/index.js';
import { postgresBinDir, startPostgres, type TestPostgres } from '../test/unit/pg-helpers.js';
import { spawnServe, type ServeChild } from '../test/unit/server-helpers.js';

const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const ITEMS = 4000;
const DIM = 16;
const INVALID_EACH = 10; // per kind per round
const DEADLINE_MS = Number(process.env.BENCH_DEADLINE_MS ?? 900_000);
/** The server's listen backlog (startServer's default when unset). */
const BACKLOG = process.env.BENCH_BACKLOG ? Number(process.env.BENCH_BACKLOG) : undefined;
/**
 * `round` (default): every round's 1,000 clients connect afresh, as 1,000 devices syncing would;
 * `shared`: one keep-alive pool across rounds, whose idle sockets the server may close (after its
 * keep-alive timeout) while this process is busy building the next round's bodies.
 */
const AGENT = process.env.BENCH_AGENT === 'shared' ? 'shared' : 'round';

/** Linux's TCP counters of the listen queue (system-wide; other processes may add to them). */
function listenCounters(): { overflows: number; drops: number } | undefined {
  if (!existsSync('/proc/net/netstat')) return undefined;
  const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n');
  for (let i = 0; i + 1 < lines.length; i += 2) {
    if (!lines[i]!.startsWith('TcpExt:')) continue;
    const names = lines[i]!.split(/\s+/);
    const values = lines[i + 1]!.split(/\s+/).map(Number);
    const get = (n: string) => values[names.indexOf(n)] ?? NaN;
    return { overflows: get('ListenOverflows'), drops: get('ListenDrops') };
  }
  return undefined;
}

const deadline = setTimeout(() => {
  process.stderr.write(`server-bench: deadline of ${DEADLINE_MS} ms reached, stopping\n`);
  process.exit(2);
}, DEADLINE_MS);
deadline.unref();

// PostgreSQL: a throwaway server started here (as the tests do) when its binaries are installed.
const pgServer: TestPostgres | null = postgresBinDir() ? await startPostgres() : null;
let databases = 0;
/** A fresh database on the throwaway server. */
async function freshDatabase(): Promise<string> {
  const name = `bench${++databases}`;
  const admin = new pg.Client({ connectionString: pgServer!.url });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  return pgServer!.url.replace(/\/postgres$/, `/${name}`);
}

const ids = Array.from({ length: ITEMS }, (_, i) => `sku-${i}`);
const initial = createItemTable(ids, DIM, { seed: 5, popularity: ids.map((_, i) => ITEMS - i) });

function trained(base: ItemTable, seed: number): ItemTable {
  const t = cloneItemTable(base);
  const r = new Random(seed);
  for (let i = 0; i < 400; i++) t.factors[r.int(t.factors.length)]! += 0.1 * r.normal();
  for (let i = 0; i < 20; i++) t.bias[r.int(t.bias.length)]! += 0.1 * r.normal();
  return t;
}

interface Shot {
  body: Uint8Array;
  kind: 'valid' | 'malformed' | 'wrong-shape' | 'config-mismatch' | 'unknown-base' | 'over-norm' | 'replayed';
}

/** One HTTP exchange on loopback: status, JSON body (or {}), milliseconds. */
function call(port: number, agent: Agent, method: 'GET' | 'POST', path: string, body?: Uint8Array, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown>; ms: number }> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path, method, agent, headers: body ? { 'content-type': 'application/octet-stream', 'content-length': body.length, ...headers } : headers },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let json: Record<string, unknown> = {};
          try {
            json = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
          } catch {
            /* counted by status */
          }
          resolve({ status: res.statusCode ?? 0, json, ms: performance.now() - t0 });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const pct = (xs: number[], p: number): number => {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const mb = (b: number) => Math.round(b / 1048576);

/** The server(s) under load: one in this process, or `localrec serve` child processes on one database. */
interface Target {
  ports: number[];
  config: { clip: number; noiseMultiplier: number; bits: number; blockSize: number };
  model(): Promise<{ table: ItemTable; hash: Uint8Array }>;
  status(): Promise<{ version: number; pending: number }>;
  /** Peak resident memory of the server(s), bytes; null when it is this process (sampled here). */
  peakRss(): number | null;
  close(): Promise<void>;
}

async function inProcessTarget(storage: Storage, secureAggregation = false): Promise<Target> {
  const server = await startServer({
    secureAggregation,
    port: 0,
    host: '127.0.0.1',
    ...(BACKLOG !== undefined ? { backlog: BACKLOG } : {}),
    storage,
    initialTable: initial,
    minClients: CLIENTS,
    noiseMultiplier: 1,
    clip: 1,
    maxStaleness: 1,
    rateLimit: false,
    log: () => {},
  });
  return {
    ports: [Number(new URL(server.url).port)],
    config: server.rounds.config,
    model: async () => ({ table: decodeModel(server.rounds.modelBytes('float32')).table, hash: fromHex(server.rounds.hash) }),
    status: async () => ({ version: server.rounds.version, pending: server.rounds.pending }),
    peakRss: () => null,
    close: () => server.close(),
  };
}

/** `n` real `localrec serve --database` processes sharing the throwaway PostgreSQL; requests alternate between them. */
async function processTarget(n: number, database: string, dir: string, secureAggregation = false): Promise<Target> {
  const catalog = join(dir, 'catalog.json');
  writeFileSync(catalog, JSON.stringify({ items: ids.map((id, i) => ({ id, popularity: ITEMS - i })) }));
  const flags = ['--database', database, '--dim', String(DIM), '--min-clients', String(CLIENTS), '--noise', '1', '--clip', '1', '--rate-limit', '0'];
  if (BACKLOG !== undefined) flags.push('--backlog', String(BACKLOG));
  // --max-staleness is for plain uploads (serve refuses it with --secure-aggregation).
  flags.push(...(secureAggregation ? ['--secure-aggregation'] : ['--max-staleness', '1']));
  const children: ServeChild[] = [];
  try {
    for (let i = 0; i < n; i++) children.push(await spawnServe(join(dir, `unused-${i}`), catalog, flags));
  } catch (e) {
    for (const c of children) c.proc.kill('SIGKILL');
    throw e;
  }
  const base = children[0]!.url;
  const config = (await (await fetch(`${base}/v1/config`)).json()) as Target['config'];
  // VmHWM: the peak resident set of each child so far.
  const hwm = (pid: number) => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
  let peak = 0;
  return {
    ports: children.map((c) => Number(new URL(c.url).port)),
    config,
    model: async () => {
      const res = await fetch(`${base}/v1/model`);
      return { table: decodeModel(new Uint8Array(await res.arrayBuffer())).table, hash: fromHex(res.headers.get('x-localrec-model-hash')!) };
    },
    status: async () => {
      // A process looks at the store for readers at most once a second: let it.
      if (n > 1) await new Promise((r) => setTimeout(r, 1100));
      const r = (await (await fetch(`${base}/v1/rounds/current`)).json()) as { version: number; pending: number };
      return { version: r.version, pending: r.pending };
    },
    peakRss: () => (peak = Math.max(peak, children.reduce((t, c) => t + hwm(c.proc.pid!), 0))),
    close: async () => {
      peak = Math.max(peak, children.reduce((t, c) => t + hwm(c.proc.pid!), 0));
      for (const c of children) {
        c.proc.kill('SIGTERM');
        await c.exited;
      }
    },
  };
}

async function runStore(kind: 'memory' | 'sqlite' | 'postgres' | 'postgres-processes', processes = 1): Promise<Record<string, unknown>> {
  const dir = kind === 'sqlite' || kind === 'postgres-processes' ? mkdtempSync(join(tmpdir(), 'localrec-bench-')) : undefined;
  // Each PostgreSQL run gets a fresh database on the throwaway server.
  const database = kind.startsWith('postgres') ? await freshDatabase() : undefined;
  const memoryStore = kind === 'memory' ? new MemoryStorage() : null;
  const target =
    kind === 'postgres-processes'
      ? await processTarget(processes, database!, dir!)
      : await inProcessTarget(memoryStore ?? (kind === 'sqlite' ? SqliteStorage.open(dir!) : await PostgresStorage.open(database!)));
  let agent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
  const listen0 = listenCounters();
  const cfg = target.config;
  const rng = new Random(99);
  const uniform = () => rng.next();
  const small = createItemTable(ids.slice(0, 100), DIM, { seed: 1 });
  const acked = new Set<string>();
  const latencies: number[] = [];
  const rejected: Record<string, number> = {};
  const sent: Record<string, number> = {};
  let other = 0;
  let errors = 0;
  const errorCodes: Record<string, number> = {};
  let accepted = 0;
  let timedMs = 0;
  let peakRss = process.memoryUsage().rss;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
  let lastBodies: Uint8Array[] = [];
  const rounds: Array<Record<string, unknown>> = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const { table: base, hash: baseHash } = await target.model();
      const opts = { baseHash, clip: cfg.clip, noiseMultiplier: cfg.noiseMultiplier, bits: cfg.bits, blockSize: cfg.blockSize, uniform };
      const local = trained(base, round);
      const shots: Shot[] = [];
      const tb = performance.now();
      for (let c = 0; c < CLIENTS; c++) shots.push({ kind: 'valid', body: buildClientUpdate(base, c % 50 === 0 ? trained(base, 1000 + c) : local, opts).bytes });
      for (let i = 0; i < INVALID_EACH; i++) {
        const garbage = new Uint8Array(64 + i * 97);
        globalThis.crypto.getRandomValues(garbage);
        shots.push({ kind: 'malformed', body: garbage });
        shots.push({ kind: 'wrong-shape', body: buildClientUpdate(small, small, { ...opts, bits: 8 }).bytes });
        shots.push({ kind: 'config-mismatch', body: buildClientUpdate(base, local, { ...opts, noiseMultiplier: 0.5 }).bytes });
        const wrongHash = new Uint8Array(32).fill(i + 1);
        shots.push({ kind: 'unknown-base', body: buildClientUpdate(base, local, { ...opts, baseHash: wrongHash }).bytes });
        const d = new Float64Array(ITEMS * (DIM + 1)).map(() => 50 * (rng.next() - 0.5));
        const { scales, codes } = quantizeStochastic(d, ITEMS, DIM, cfg.bits, cfg.blockSize, uniform);
        const nonce = new Uint8Array(NONCE_BYTES);
        globalThis.crypto.getRandomValues(nonce);
        const h = { bits: cfg.bits, dim: DIM, itemCount: ITEMS, baseVersion: base.version, blockSize: cfg.blockSize, clip: cfg.clip, noiseMultiplier: cfg.noiseMultiplier, baseHash, nonce };
        shots.push({ kind: 'over-norm', body: encodeUpdate({ header: h, scales, codes }) });
        // A body from the previous round, sent again (the first round replays one of its own, sent after it).
        if (lastBodies.length) shots.push({ kind: 'replayed', body: lastBodies[i]! });
      }
      const buildMs = performance.now() - tb;
      // Everything at once, in a shuffled order, the last round's replays included.
      for (let i = shots.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [shots[i], shots[j]] = [shots[j]!, shots[i]!];
      }
      if (AGENT === 'round' && round > 0) {
        agent.destroy();
        agent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
      }
      let next = 0;
      const t0 = performance.now();
      const results = await Promise.all(
        shots.map(async (s) => {
          sent[s.kind] = (sent[s.kind] ?? 0) + 1;
          try {
            const r = await call(target.ports[(next++) % target.ports.length]!, agent, 'POST', '/v1/updates', s.body);
            if (s.kind === 'valid') latencies.push(r.ms);
            if (r.status === 202) {
              accepted++;
              acked.add(toHex(s.body.subarray(64, 80)));
            } else if (typeof r.json.reason === 'string') rejected[r.json.reason] = (rejected[r.json.reason] ?? 0) + 1;
            else other++;
            return r;
          } catch (e) {
            errors++;
            const code = (e as { code?: string }).code ?? (e as Error).message;
            errorCodes[code] = (errorCodes[code] ?? 0) + 1;
            return undefined;
          }
        }),
      );
      const ms = performance.now() - t0;
      timedMs += ms;
      lastBodies = shots.filter((s) => s.kind === 'valid').map((s) => s.body);
      const st = await target.status();
      target.peakRss();
      rounds.push({
        round,
        requests: shots.length,
        accepted: results.filter((r) => r?.status === 202).length,
        ms: Math.round(ms),
        buildMs: Math.round(buildMs),
        versionAfter: st.version,
        pendingAfter: st.pending,
      });
    }
    clearInterval(sampler);
    const listen1 = listenCounters();
    // Acknowledged vs stored.
    let stored: number;
    let missing = 0;
    if (kind === 'sqlite') {
      const db = new Database(join(dir!, 'localrec.sqlite'), { readonly: true });
      const get = db.prepare('SELECT aggregated_into, body IS NOT NULL AS has_body FROM updates WHERE nonce = ?');
      for (const n of acked) {
        const r = get.get(n) as { aggregated_into: number | null; has_body: number } | undefined;
        if (!r || (r.aggregated_into === null && !r.has_body)) missing++;
      }
      stored = (db.prepare('SELECT COUNT(*) AS n FROM updates').get() as { n: number }).n;
      db.close();
    } else if (database) {
      const db = new pg.Client({ connectionString: database });
      await db.connect();
      try {
        const rows = (await db.query<{ nonce: string; aggregated_into: number | null; has_body: boolean }>('SELECT nonce, aggregated_into, body IS NOT NULL AS has_body FROM localrec_updates')).rows;
        const byNonce = new Map(rows.map((r) => [r.nonce, r]));
        for (const n of acked) {
          const r = byNonce.get(n);
          if (!r || (r.aggregated_into === null && !r.has_body)) missing++;
        }
        stored = rows.length;
      } finally {
        await db.end();
      }
    } else {
      const mem = memoryStore!;
      const versions = (mem as unknown as { versions: Array<{ updateCount: number }> }).versions;
      stored = versions.reduce((a, v) => a + v.updateCount, 0) + (await mem.pendingCount());
      missing = Math.max(0, acked.size - stored);
    }
    const childRss = target.peakRss();
    const final = await target.status();
    return {
      store: kind,
      ...(kind === 'postgres-processes' ? { processes } : {}),
      clients: CLIENTS,
      rounds: ROUNDS,
      table: `${ITEMS} × ${DIM}`,
      bits: cfg.bits,
      updateBytes: lastBodies[0]?.length ?? 0,
      sent,
      accepted,
      acknowledged: acked.size,
      stored,
      lost: missing + (stored < acked.size ? acked.size - stored - missing : 0),
      rejectedByReason: rejected,
      otherFailures: other,
      // Requests that got no HTTP answer (connection reset or refused): not acknowledged, so not
      // counted as lost, but a client would have to retry them.
      transportErrors: errors,
      transportErrorCodes: errorCodes,
      agent: AGENT,
      backlog: BACKLOG ?? 'default',
      // Connections the kernel could not queue for accept() during the run (SYN or handshake ACK
      // dropped; the client retransmits, so this costs latency, and a reset only when it gives up).
      ...(listen0 && listen1 ? { listenOverflows: listen1.overflows - listen0.overflows } : {}),
      updatesPerSecond: Math.round((accepted / timedMs) * 1000),
      latencyMs: { p50: Math.round(pct(latencies, 50)), p99: Math.round(pct(latencies, 99)), max: Math.round(pct(latencies, 100)) },
      // In-process: this process (server and clients); child processes: the servers' peaks summed.
      peakRssMiB: mb(childRss ?? peakRss),
      versionsPublished: final.version,
      perRound: rounds,
    };
  } finally {
    clearInterval(sampler);
    agent.destroy();
    await target.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Secure aggregation under the same load: per round, one cohort of CLIENTS devices (K = CLIENTS)
 * joins at once (fresh P-256 keys made before the clock starts), then every member reads its
 * neighbours' keys, then every member uploads (all-zero masked values: the server cannot tell them
 * from masked ones and does the same work). Requests alternate between the target's processes.
 */
async function runSecAgg(kind: 'sqlite' | 'postgres' | 'postgres-processes', processes = 1): Promise<Record<string, unknown>> {
  const dir = kind !== 'postgres' ? mkdtempSync(join(tmpdir(), 'localrec-bench-')) : undefined;
  const database = kind.startsWith('postgres') ? await freshDatabase() : undefined;
  const target =
    kind === 'postgres-processes' ? await processTarget(processes, database!, dir!, true) : await inProcessTarget(kind === 'sqlite' ? SqliteStorage.open(dir!) : await PostgresStorage.open(database!), true);
  const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
  const sa = ((await (await fetch(`http://127.0.0.1:${target.ports[0]}/v1/config`)).json()) as { secureAggregation: { bits: number; cohortSize: number; step: number } }).secureAggregation;
  let next = 0;
  const port = () => target.ports[next++ % target.ports.length]!;
  const perRound: Array<Record<string, unknown>> = [];
  const failures: Record<string, number> = {};
  const fail = (what: string) => (failures[what] = (failures[what] ?? 0) + 1);
  let joinMs = 0;
  let viewMs = 0;
  let uploadMs = 0;
  let uploadsAcked = 0;
  const uploadLatency: number[] = [];
  // A device retries a request that got no answer (connection reset or refused), as sync() does.
  const retried: Record<string, number> = {};
  const send = async (...args: Parameters<typeof call>): Promise<Awaited<ReturnType<typeof call>>> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await call(...args);
      } catch (e) {
        const code = (e as { code?: string }).code ?? (e as Error).message;
        if (attempt === 5) throw e;
        retried[code] = (retried[code] ?? 0) + 1;
        await new Promise((r) => setTimeout(r, 100 * attempt));
        args[0] = port();
      }
    }
  };
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const { table: base } = await target.model();
      const keys = await Promise.all(Array.from({ length: CLIENTS }, async () => (await secAggKeyPair()).publicKey));
      let t0 = performance.now();
      const joins = await Promise.all(keys.map((k) => send(port(), agent, 'POST', '/v1/secagg/join', k)));
      const jMs = performance.now() - t0;
      const members = joins.filter((r) => r.status === 200).map((r) => r.json as { cohort: string; index: number; token: string });
      if (members.length < CLIENTS) fail('join');
      t0 = performance.now();
      const views = await Promise.all(members.map((m) => send(port(), agent, 'GET', `/v1/secagg/cohorts/${m.cohort}/members/${m.index}`)));
      const vMs = performance.now() - t0;
      const ready = views.filter((v) => v.json.status === 'ready').length;
      if (ready < members.length) fail('view not ready');
      const length = ITEMS * (DIM + 1);
      const bodies = members.map((m) => encodeMaskedUpdate({ cohortId: fromHex(m.cohort), index: m.index, cohortSize: sa.cohortSize, bits: sa.bits, step: sa.step, baseVersion: base.version, values: new Uint32Array(length) }));
      t0 = performance.now();
      const ups = await Promise.all(members.map((m, i) => send(port(), agent, 'POST', '/v1/secagg/updates', bodies[i], { 'x-localrec-cohort-token': m.token })));
      const uMs = performance.now() - t0;
      const acked = ups.filter((u) => u.status === 202);
      uploadsAcked += acked.length;
      for (const u of acked) uploadLatency.push(u.ms);
      if (acked.length < members.length) fail(`upload ${String(ups.find((u) => u.status !== 202)?.json.reason)}`);
      joinMs += jMs;
      viewMs += vMs;
      uploadMs += uMs;
      const st = await target.status();
      perRound.push({ round, joined: members.length, ready, uploaded: acked.length, joinMs: Math.round(jMs), viewMs: Math.round(vMs), uploadMs: Math.round(uMs), versionAfter: st.version, pendingAfter: st.pending });
    }
    const final = await target.status();
    return {
      store: kind,
      ...(kind === 'postgres-processes' ? { processes } : {}),
      cohortSize: sa.cohortSize,
      cohorts: ROUNDS,
      bits: sa.bits,
      uploadBytes: encodeMaskedUpdate({ cohortId: new Uint8Array(16), index: 0, cohortSize: sa.cohortSize, bits: sa.bits, step: sa.step, baseVersion: 0, values: new Uint32Array(ITEMS * (DIM + 1)) }).length,
      joinsPerSecond: Math.round(((CLIENTS * ROUNDS) / joinMs) * 1000),
      keyReadsPerSecond: Math.round(((CLIENTS * ROUNDS) / viewMs) * 1000),
      uploadsPerSecond: Math.round((uploadsAcked / uploadMs) * 1000),
      uploadLatencyMs: { p50: Math.round(pct(uploadLatency, 50)), p99: Math.round(pct(uploadLatency, 99)) },
      uploadsAcknowledged: uploadsAcked,
      versionsPublished: final.version,
      // Every acknowledged upload was unmasked into a published version (each cohort complete).
      lost: uploadsAcked - final.version * sa.cohortSize - final.pending,
      failures,
      // Requests retried after a connection reset (before any answer): a join retried after the
      // server had taken it would be refused as a repeated key and show under failures.
      transportRetries: retried,
      perRound,
    };
  } finally {
    agent.destroy();
    await target.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

let memory: Record<string, unknown>;
let sqlite: Record<string, unknown>;
let postgres: Record<string, unknown> | null = null;
let postgresProcesses: Record<string, unknown>[] = [];
const secureAggregation: Record<string, unknown>[] = [];
try {
  memory = await runStore('memory');
  sqlite = await runStore('sqlite');
  if (pgServer) {
    postgres = await runStore('postgres');
    // The same load on 1 and on 2 `localrec serve` processes sharing the database (off this
    // process's event loop, so compare these two with each other, not with the in-process rows).
    postgresProcesses = [await runStore('postgres-processes', 1), await runStore('postgres-processes', 2)];
  }
  if (process.env.BENCH_SECAGG !== '0') {
    secureAggregation.push(await runSecAgg('sqlite'));
    if (pgServer) secureAggregation.push(await runSecAgg('postgres'), await runSecAgg('postgres-processes', 1), await runSecAgg('postgres-processes', 2));
  }
} finally {
  await pgServer?.stop();
}
const ratio = (a: unknown, b: unknown) => Math.round(((a as number) / (b as number)) * 100) / 100;
const vsMemory = (r: Record<string, unknown>) => ({
  updatesPerSecond: ratio(r.updatesPerSecond, memory.updatesPerSecond),
  p50: ratio((r.latencyMs as { p50: number }).p50, (memory.latencyMs as { p50: number }).p50),
  p99: ratio((r.latencyMs as { p99: number }).p99, (memory.latencyMs as { p99: number }).p99),
});
const lost = [memory, sqlite, ...(postgres ? [postgres] : []), ...postgresProcesses, ...secureAggregation].reduce((t, r) => t + (r.lost as number), 0);
process.stdout.write(
  JSON.stringify(
    {
      bench: 'server',
      node: process.version,
      memory,
      sqlite,
      postgres: postgres ?? 'skipped: PostgreSQL is not installed (apt-get install postgresql)',
      postgresProcesses,
      sqliteVsMemory: vsMemory(sqlite),
      ...(postgres ? { postgresVsMemory: vsMemory(postgres) } : {}),
      ...(postgresProcesses.length === 2
        ? { twoProcessesVsOne: { updatesPerSecond: ratio(postgresProcesses[1]!.updatesPerSecond, postgresProcesses[0]!.updatesPerSecond) } }
        : {}),
      secureAggregation,
      lost,
    },
    null,
    2,
  ) + '\n',
);
process.exit(lost === 0 ? 0 : 1);
