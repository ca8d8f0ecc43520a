/**
 * Node entry of the aggregation server: `startServer()` for tests, the demo and `localrec serve`.
 */
import { createAdaptorServer, type Http2Bindings, type HttpBindings } from '@hono/node-server';
import type { Server, ServerResponse } from 'node:http';
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { checkNotPublished } from './static-files.js';
import { ValidationError } from '../errors.js';
import { describeValue } from '../options.js';
import { beyondModelMagnitude, chooseBits, decodeModel, DEFAULT_BLOCK_SIZE, MAX_MODEL_MAGNITUDE, UPDATE_BUDGET_BYTES } from '../federated/wire.js';
import type { ItemTable } from '../model/item-table.js';
import { AGGREGATOR_NAMES, DEFAULT_FEDADAM, isAggregatorName, DEFAULT_TRIM_FRACTION, ROBUST_NAMES, trimCount, type AggregatorName, type FedAdamOptions, type RobustName } from './aggregate.js';
import { createApp } from './app.js';
import { MemoryStorage } from './memory-storage.js';
import { RateLimiter, type RateLimitOptions } from './rate-limit.js';
import { monotonicNow, steadyClock } from './clock.js';
import { RoundCoordinator, type LogFields, type LogFn, type RoundConfig } from './rounds.js';
import { SQLITE_FILE, SqliteStorage, type SqliteStorageOptions } from './sqlite-storage.js';
import { isPostgresUrl, PostgresStorage, redactUrl } from './postgres-storage.js';
import type { Storage } from './storage.js';
import type { OfferCatalog } from '../offers/types.js';
import { RedeemCatalog } from './redeem.js';
import { checkSecAggParams, chooseSecAggBits, MAX_COHORT_TIMEOUT_MS, maskedUpdateBytes, SEALED_SHARE_BYTES, type SecAggParams } from '../federated/secagg.js';
import { DEFAULT_COHORT_TIMEOUT_MS, defaultUploadTimeoutMs } from './cohorts.js';
import { checkTrainedPart, trainedLength } from '../federated/client-update.js';
import { DEFAULT_SUBSPACE_SCALE, subspaceTable } from '../federated/subspace.js';

export { createApp } from './app.js';
export { RedeemCatalog, OFFERS_FLOOR_KEY, type RedeemAnswer } from './redeem.js';
export { MemoryStorage } from './memory-storage.js';
export { SqliteStorage } from './sqlite-storage.js';
export { PostgresStorage, type PostgresStorageOptions } from './postgres-storage.js';
export { RoundCoordinator } from './rounds.js';
export { RateLimiter } from './rate-limit.js';
export { REJECT_STATUS, normBound, checkUpdate } from './validate-update.js';
export type { RejectReason } from './validate-update.js';
export { combineDeltas, trimmedMeanDelta, trimCount, ROBUST_NAMES, DEFAULT_TRIM_FRACTION } from './aggregate.js';
export type { AggregatorName, RobustName } from './aggregate.js';
export type { Storage, StoredVersion, NewUpdate, PendingUpdate } from './storage.js';
export { StorageConflictError } from './storage.js';
export { MemoryCohortStore, DEFAULT_COHORT_TIMEOUT_MS, defaultUploadTimeoutMs } from './cohorts.js';
export type { CohortStore, CohortInfo, CohortStatus, MarkResult, RecoveryResult, SweepResult, AbortedCohort } from './cohorts.js';
export type { RateLimit, RateLimitOptions } from './rate-limit.js';

export interface ServerOptions {
  /** Default 8787; 0 picks a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /**
   * Length of the listen queue of connections the kernel has accepted and the server has not yet
   * taken (Linux caps it at `net.core.somaxconn`). Default 4096; Node's own default is 511.
   */
  backlog?: number;
  /** A storage adapter; otherwise PostgreSQL at `database`, SQLite under `dataDir`, or memory when `dataDir` is null. */
  storage?: Storage;
  /**
   * A PostgreSQL URL (`postgres://user:password@host:port/database`): store versions and updates
   * there instead of SQLite (`dataDir` is then not used), so that several server processes behind a
   * load balancer can share them; with secure aggregation the cohorts live there too. `undefined`
   * (e.g. an unset environment variable) means none.
   */
  database?: string | undefined;
  /** Default `.data`; `null` keeps everything in memory. */
  dataDir?: string | null;
  sqlite?: SqliteStorageOptions;
  /**
   * Published versions whose model the store keeps (≥ 1; default 3, `DEFAULT_KEEP_MODELS`): older
   * ones keep their hash and times only. For the stores this opens (SQLite, PostgreSQL, memory);
   * `sqlite.keepModels` wins for SQLite. docs/SERVER.md, "What the server keeps".
   */
  keepModels?: number;
  /** Version 0 when the store is empty; when the store is not, it must have the same ids and dim. */
  initialTable?: ItemTable;
  minClients?: number;
  clip?: number;
  noiseMultiplier?: number;
  maxStaleness?: number;
  /** Bits per update coordinate; default the widest that keeps an update within 64 KiB. */
  bits?: number;
  blockSize?: number;
  /**
   * `fedavg` (default) or `fedadam` step from the devices' locally trained deltas; `subspace` runs
   * federated subspace iteration instead (src/federated/subspace.ts: devices send a normalized
   * power-iteration step, the server orthonormalizes the sum). `subspace` needs `trainBiases: false`.
   */
  aggregator?: AggregatorName;
  /** `subspace` only: scale of the published factors (personalization against the biases). Default 32. */
  subspaceScale?: number;
  /**
   * How a round's updates are combined per coordinate: `mean` (default), `trimmed-mean` (drops the
   * ⌊trimFraction·M⌋ lowest and highest values of every coordinate) or `median`. The robust ones
   * bound what a few dishonest clients per round can do (see docs/RELIABILITY.md).
   */
  robust?: RobustName;
  /** β of `trimmed-mean`, in [0, 0.5); ⌊β·minClients⌋ must be ≥ 1. Default 0.1. */
  trimFraction?: number;
  /** `fedavg` only: the server's step along the combined delta (default 1). */
  serverLearningRate?: number;
  /**
   * `rows` shrinks each item's row of a round's combined delta towards zero by the positive-part
   * James–Stein factor for the known noise variance before the step (post-processing: no privacy
   * cost; rows that hold only noise are dropped). Default `none`.
   */
  denoise?: 'none' | 'rows' | 'directions';
  fedAdam?: Partial<FedAdamOptions>;
  /**
   * Federated training updates only the first `trainRows` rows of the table (default all of them);
   * updates then carry only those rows, so each one's clipped norm and the noise cover fewer values.
   * Put the items worth training first: `localrec serve --catalog` keeps the catalog's order, and
   * `localrec simulate --write-catalog` lists the most popular first. The other rows never change
   * after the store's version 0: they keep the values it gave them (a restart on a store that has
   * a model keeps the stored ones, whatever `initialTable` says). A store with pending updates of
   * another trained part refuses to open (see `discardPending`).
   */
  trainRows?: number;
  /**
   * `false` trains only the factors and never changes the biases: they keep the values of the
   * store's version 0, which took them from the `initialTable` it was created with (the
   * popularity the shop knows from its own sales). A restart on a store that has a model keeps the
   * stored biases: `initialTable` is then only checked for its ids and dim, so new popularity
   * counts in it are not taken (a line in the log says when they differ); to start from new ones,
   * use a new store. Default `true`.
   */
  trainBiases?: boolean;
  /**
   * Start even though the store holds pending updates made for other round settings (`trainRows`,
   * `trainBiases`, the aggregator, secure aggregation and its cohort size, bits, step and dropout
   * recovery; `RoundSettings` in rounds.ts): delete them, logged, instead of refusing. Their
   * devices spent privacy budget on them for nothing. Default false: the start is refused, naming
   * the settings they were made for. (`localrec serve --discard-pending`.)
   */
  discardPending?: boolean;
  /** Relative tolerance on the clip bound in the norm check (float rounding of honest updates), [0, 1). Default 0.01. */
  normTolerance?: number;
  /** How many standard deviations of the noise's norm fluctuation the norm check allows, (0, 100]. Default 6. */
  normSlack?: number;
  /**
   * Secure aggregation with distributed noise (docs/protocol.md, "Secure aggregation"): devices
   * join cohorts of `minClients`, each adds N(0, (σC)²/K) and uploads a masked update, and the
   * server only learns each cohort's sum. `true` takes the defaults: `bits` the widest that fits
   * 64 KiB, `range` K·C + 8·C·max(1, σ) when those bits make its rounding negligible (and always
   * with the subspace aggregator), else 8·C·max(1, σ) (a coordinate of a cohort's sum must stay
   * within ±range; the fixed-point step is range / (2^(bits−1) − 1)), `degree` 16 mask neighbours,
   * `timeoutMs` 10 minutes (for a cohort to fill), `uploadTimeoutMs` the same but never more than 10
   * minutes (then for every upload, and for a recovery's shares: once the keys are out, devices need
   * seconds), `minSurvivors` K. With `minSurvivors` t < K each device adds
   * N(0, (σC)²/t) instead, and a cohort that misses at most K − t uploads at the upload timeout is
   * recovered from its survivors (their seeds with the missing members) instead of aborted.
   */
  secureAggregation?: boolean | { bits?: number; range?: number; degree?: number; timeoutMs?: number; uploadTimeoutMs?: number; minSurvivors?: number };
  /**
   * Per-client limit on `POST /v1/updates` and `POST /v1/secagg/join` (an IPv6 client's /48 has 16
   * clients' worth as well), and, each in buckets of its own, on `GET /v1/secagg/cohorts/:id` and
   * on refused cohort leaves; `false` turns it off. Default 60/min, burst 20.
   */
  rateLimit?: RateLimitOptions | false;
  /**
   * Behind a reverse proxy or load balancer: rate-limit by the last `X-Forwarded-For` address (the
   * one the proxy saw and appended; earlier entries are the client's to forge) instead of the
   * connection's (which is the proxy's). Only when every request comes through one proxy that
   * appends to the header, else a client could pick its own key. Default false.
   */
  trustProxy?: boolean;
  staticDir?: string;
  /** Page origins allowed to call the API cross-origin (CORS), e.g. `['https://shop.example']`. */
  corsOrigins?: string[];
  /**
   * `close()` (and `localrec serve` on SIGTERM/SIGINT) stops accepting connections, lets the
   * requests in flight finish for up to this many milliseconds, then cuts the connections still
   * open. Default 5,000.
   */
  shutdownGraceMs?: number;
  /**
   * The shop's offer catalog, already verified (`verifyOfferCatalog`): enables `POST /v1/offers/redeem`.
   * A {@link RedeemCatalog} can be replaced while the server runs (`localrec serve` does on SIGHUP).
   * The store records the newest catalog it was given (meta `offers-catalog`); an older one is
   * refused (a ValidationError naming both versions) unless `offersAllowOlder`.
   */
  offers?: OfferCatalog | RedeemCatalog;
  /** Start with an offer catalog older than the newest this store has loaded (`serve --offers-allow-older`). Default false. */
  offersAllowOlder?: boolean;
  /**
   * The wall clock (ms since the epoch): times written to the store, PostgreSQL's cohort deadlines
   * and rate-limit buckets (shared by every process on the database), offers' validity. Default
   * `Date.now`.
   */
  now?: () => number;
  /**
   * A monotonic clock (ms; only differences count) for the intervals this process measures for
   * itself (see {@link RoundConfig.monotonic}) and the in-memory rate limiter's buckets: a wall
   * clock stepped back must not stop them. Default `performance.now()`, or, when only `now` is
   * given (tests), a clock that follows `now` forward and stands still when it goes back
   * ({@link steadyClock}).
   */
  monotonic?: () => number;
  /**
   * `GET /metrics` on the same listener: the Prometheus text exposition of the server's totals
   * (`localrec serve --metrics`; docs/SERVER.md, "Monitoring"). Default false. Nothing in it
   * identifies a device, but keep it from the public at the proxy (a path outside /v1).
   */
  metrics?: boolean;
  /**
   * Where the server's log lines go: `line` is the text, `fields` what it says as data (an `event`
   * name, `version`, `durationMs`…; see {@link LogFields}). Default: stderr, as `logFormat` says.
   */
  log?: LogFn;
  /**
   * Without `log`: `text` (default) writes `localrec serve: <line>` to stderr; `json` one JSON
   * object per line, `{"ts","level","event",…fields,"msg"}` (`localrec serve --log-format json`).
   */
  logFormat?: 'text' | 'json';
}

export interface RunningServer {
  /** e.g. `http://127.0.0.1:8787` */
  url: string;
  rounds: RoundCoordinator;
  /**
   * Graceful: stops accepting connections, answers the requests in flight (cut after
   * `shutdownGraceMs`), lets the round coordinator finish what it queued, then closes the store.
   * With `why` (what asked for it: `localrec serve` gives the signal, `SIGTERM`), logs
   * `stopping (SIGTERM): N requests in flight`, then `stopped` once the store is closed.
   */
  close(why?: string): Promise<void>;
}

/**
 * One log line as `--log-format json` writes it: `ts` (ISO 8601), `level`, `event`, the line's
 * other fields, and `msg`, the text line (escaped by JSON: a newline in it cannot start a line).
 *
 * @example
 * ```ts
 * jsonLogLine('published version 3 from 10 updates', { event: 'published', version: 3 }, 0);
 * // {"ts":"1970-01-01T00:00:00.000Z","level":"info","event":"published","version":3,"msg":"published version 3 from 10 updates"}
 * ```
 */
export function jsonLogLine(line: string, fields: LogFields | undefined, now: number): string {
  const { event = 'message', level = 'info', ...rest } = fields ?? {};
  return JSON.stringify({ ts: new Date(now).toISOString(), level, event, ...rest, msg: line });
}

/** The log of `options`: its own, or stderr in its `logFormat`. */
function logOf(options: Pick<ServerOptions, 'log' | 'logFormat'>): LogFn {
  if (options.log) return options.log;
  const format = options.logFormat ?? 'text';
  if (format !== 'text' && format !== 'json') throw new ValidationError('options.logFormat', `must be 'text' or 'json', got ${describeValue(format)}`);
  return format === 'json' ? (line, fields) => process.stderr.write(`${jsonLogLine(line, fields, Date.now())}\n`) : (line) => process.stderr.write(`localrec serve: ${line}\n`);
}

/** See {@link ServerOptions.backlog}. */
export const DEFAULT_BACKLOG = 4096;

/** See {@link ServerOptions.shutdownGraceMs}. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 5000;

/**
 * Keeps track of the responses `server` has not finished, so that {@link closeGracefully} can tell
 * their clients that the connection ends with them.
 */
function trackResponses(server: Server, closing: () => boolean): Set<ServerResponse> {
  const open = new Set<ServerResponse>();
  server.on('request', (_req, res: ServerResponse) => {
    open.add(res);
    // A request that came on a kept-alive connection after close() began is the connection's last.
    if (closing() && !res.headersSent) res.setHeader('Connection', 'close');
    res.once('close', () => open.delete(res));
    // Its connection is idle once the response is out; Node's close() would otherwise wait for the
    // keep-alive timeout before it lets go of it.
    res.once('finish', () => {
      if (closing()) setImmediate(() => server.closeIdleConnections());
    });
  });
  return open;
}

/**
 * Stops accepting connections and resolves once every connection is closed: idle ones at once,
 * busy ones after their response (sent with `Connection: close`), and whatever is still open after
 * `graceMs` cut.
 */
async function closeGracefully(server: Server, open: ReadonlySet<ServerResponse>, graceMs: number): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  for (const res of open) if (!res.headersSent) res.setHeader('Connection', 'close');
  const force = setTimeout(() => server.closeAllConnections(), graceMs);
  try {
    await closed;
  } finally {
    clearTimeout(force);
  }
}

/** FedAdam's settings, each checked: a zero τ or a NaN rate publishes a table of NaN, which no device or restart can load. */
function checkFedAdam(o: Partial<FedAdamOptions> | undefined): FedAdamOptions {
  const f = { ...DEFAULT_FEDADAM, ...o };
  positive('fedAdam.lr', f.lr);
  positive('fedAdam.tau', f.tau);
  for (const k of ['beta1', 'beta2'] as const) {
    if (typeof f[k] !== 'number' || !(f[k] >= 0 && f[k] < 1)) throw new ValidationError(`options.fedAdam.${k}`, `must be a number in [0, 1), got ${describeValue(f[k])}`);
  }
  return f;
}

function positive(name: string, v: number, integer = false): number {
  if (!Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) {
    throw new ValidationError(`options.${name}`, `must be a ${integer ? 'positive integer' : 'positive number'}, got ${describeValue(v)}`);
  }
  return v;
}

/**
 * Starts the aggregation server and resolves once it listens.
 *
 * @example
 * ```ts
 * const server = await startServer({ port: 0, dataDir: null, initialTable: createItemTable(ids, 16), minClients: 3 });
 * await fetch(`${server.url}/v1/health`); // { ok: true, version: 0 }
 * await server.close();
 * ```
 */
export async function startServer(options: ServerOptions = {}): Promise<RunningServer> {
  // The listen options are checked, and the port bound, before the store is opened: a refused
  // start (a port in use, a bad backlog) must not have stored a version 0 built from options that
  // a corrected restart could then not change.
  const host = options.host ?? '127.0.0.1';
  if (typeof host !== 'string' || host === '') throw new ValidationError('options.host', `must be an address or host name to listen on, got ${describeValue(host)}`);
  const wanted = options.port ?? 8787;
  if (!(Number.isInteger(wanted) && wanted >= 0 && wanted <= 65535)) throw new ValidationError('options.port', `must be 0..65535 (0 = any free port), got ${describeValue(wanted)}`);
  const backlog = positive('backlog', options.backlog ?? DEFAULT_BACKLOG, true);
  const graceMs = options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
  const log = logOf(options);
  if (!Number.isFinite(graceMs) || graceMs < 0) throw new ValidationError('options.shutdownGraceMs', `must be a number of milliseconds ≥ 0, got ${graceMs}`);
  // Requests that come while the server is still being built wait for it; if it fails, they get
  // the 503 devices already retry on (nothing was stored).
  let built!: (app: ServerParts['app'] | null) => void;
  const ready = new Promise<ServerParts['app'] | null>((resolve) => (built = resolve));
  let started = false;
  const fetch = async (request: Request, env: HttpBindings | Http2Bindings): Promise<Response> => {
    // Liveness is answered while the store opens too (a one-time migration can take minutes: a
    // liveness probe must not have the process killed for it); everything else waits.
    if (!started && request.method === 'GET' && new URL(request.url).pathname === '/v1/health/live') return Response.json({ ok: true, starting: true });
    const app = await ready;
    if (app) return app.fetch(request, env);
    return Response.json({ error: 'the server failed to start; nothing was stored, retry later', reason: 'storage-unavailable' }, { status: 503, headers: { 'Retry-After': '30' } });
  };
  let closing: Promise<void> | null = null;
  const { server, port } = await new Promise<{ server: Server; port: number }>((resolve, reject) => {
    const s = createAdaptorServer({ fetch, hostname: host }) as Server;
    s.once('error', (e: NodeJS.ErrnoException) => {
      // Named as the caller's options (the CLI shows them as --port / --host).
      if (e.code === 'EACCES') reject(new ValidationError('options.port', `${wanted} on ${host} needs privileges this process lacks (ports below 1024): pick another port`));
      else if (e.code === 'EADDRINUSE') reject(new ValidationError('options.port', `${wanted} on ${host} is in use (another localrec serve, or npm start?): pass another port`));
      else if (e.code === 'ENOTFOUND' || e.code === 'EADDRNOTAVAIL' || e.code === 'EAI_AGAIN' || e.code === 'EAI_FAIL' || e.code === 'EAFNOSUPPORT') reject(new ValidationError('options.host', `cannot listen on '${host}': ${e.message}`));
      else reject(e);
    });
    s.listen({ port: wanted, host, backlog }, () => resolve({ server: s, port: (s.address() as AddressInfo).port }));
  });
  const open = trackResponses(server, () => closing !== null);
  let parts: ServerParts;
  try {
    parts = await createServer({ ...options, log });
  } catch (e) {
    built(null);
    await closeGracefully(server, open, 0);
    throw e;
  }
  const { rounds, storage } = parts;
  built(parts.app);
  started = true;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  return {
    url,
    rounds,
    close(why?: string) {
      closing ??= (async () => {
        if (why !== undefined) log(`stopping (${why}): ${open.size} request${open.size === 1 ? '' : 's'} in flight`, { event: 'stopping', signal: why, inFlight: open.size });
        await closeGracefully(server, open, graceMs);
        // The requests are answered; what they queued (a round being published, a discard)
        // finishes before the store closes.
        await rounds.drain();
        await storage.close();
        if (why !== undefined) log('stopped', { event: 'stopped' });
      })();
      return closing;
    },
  };
}

/** The server's parts, built but not listening: for in-process use (simulation, tests) and startServer. */
export interface ServerParts {
  app: ReturnType<typeof createApp>;
  rounds: RoundCoordinator;
  storage: Storage;
}

/**
 * Why `origin` can never equal an `Origin` header a browser sends (so CORS would stay off for it
 * without a word), or null when it can. http(s) origins are compared with their serialization
 * (lower-case host, no default port, no path); other schemes (capacitor://localhost,
 * chrome-extension://id) need only scheme://host.
 */
function corsOriginProblem(origin: unknown): string | null {
  if (typeof origin !== 'string' || origin === '') return 'not a string';
  const scheme = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]+)(.*)$/.exec(origin);
  if (!scheme) return 'no scheme://host';
  if (scheme[1] !== 'http' && scheme[1] !== 'https') return scheme[3] === '' ? null : 'a path or trailing slash';
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return 'not a URL';
  }
  if (url.origin === origin) return null;
  if (scheme[3] !== '') return 'a path or trailing slash';
  return `browsers send it as ${url.origin}`;
}

/**
 * The rules between `minClients`, `robust`, `trimFraction` and `secureAggregation` that
 * {@link createServer} checks, on their own: `localrec simulate` checks them before it loads a data
 * set (which can take a minute). Throws a `ValidationError` naming the option.
 */
export function checkRoundOptions(o: Pick<ServerOptions, 'robust' | 'trimFraction' | 'secureAggregation'> & { minClients: number }): { robust: RobustName; trimFraction: number } {
  const robust = o.robust ?? 'mean';
  if (!ROBUST_NAMES.includes(robust)) throw new ValidationError('options.robust', `must be ${ROBUST_NAMES.map((r) => `'${r}'`).join(', ')}, got '${robust}'`);
  const trimFraction = o.trimFraction ?? DEFAULT_TRIM_FRACTION;
  if (!Number.isFinite(trimFraction) || trimFraction < 0 || trimFraction >= 0.5) {
    throw new ValidationError('options.trimFraction', `must be in [0, 0.5), got ${trimFraction}`);
  }
  if (robust === 'trimmed-mean' && trimCount(robust, o.minClients, trimFraction) < 1) {
    throw new ValidationError('options.trimFraction', `${trimFraction} of ${o.minClients} updates (minClients) trims nothing; raise it to at least ${(1 / o.minClients).toPrecision(3)} or raise minClients`);
  }
  if (o.secureAggregation) {
    if (robust !== 'mean') throw new ValidationError('options.robust', `must be 'mean' with secure aggregation (the server never sees single updates), got '${robust}'`);
    if (o.minClients < 2 || o.minClients > 100_000) throw new ValidationError('options.minClients', `is the cohort size under secure aggregation: an integer 2..100000, got ${o.minClients}`);
  }
  return { robust, trimFraction };
}

/**
 * Builds the app `localrec serve` runs (storage, round coordinator, HTTP routes) with every option
 * checked and defaulted, without opening a socket: `app.fetch(request)` answers in-process.
 *
 * @example
 * ```ts
 * const { app, storage } = await createServer({ dataDir: null, initialTable: createItemTable(ids, 16) });
 * await app.fetch(new Request('http://local/v1/health')); // 200 { ok: true, version: 0 }
 * await storage.close();
 * ```
 */
export async function createServer(options: ServerOptions = {}): Promise<ServerParts> {
  const log = logOf(options);
  const now = options.now ?? Date.now;
  const monotonic = options.monotonic ?? (options.now ? steadyClock(options.now) : monotonicNow);
  if (options.database !== undefined) {
    if (options.storage) throw new ValidationError('options.database', 'give either a storage adapter (options.storage) or a database URL, not both');
    if (typeof options.database !== 'string' || !isPostgresUrl(options.database)) {
      throw new ValidationError('options.database', `must be a postgres:// or postgresql:// URL, got '${typeof options.database === 'string' ? redactUrl(options.database) : String(options.database)}'`);
    }
  }
  const noTable = () => new ValidationError('options.initialTable', 'is required when the store is empty (with localrec serve: pass --catalog)');
  // Every option is checked before the store is opened: a refused start leaves no empty database
  // behind (which the next start would take for a store). Without a table the shape is the stored
  // model's, so a SQLite data dir must hold a database already.
  let checked = options.initialTable ? checkOptions(options, options.initialTable, log, now, monotonic) : undefined;
  const dataDir = options.dataDir ?? '.data';
  if (options.staticDir !== undefined && !options.storage && options.database === undefined && options.dataDir !== null) {
    checkNotPublished(dataDir, options.staticDir, { dataDir: 'options.dataDir', staticDir: 'options.staticDir' });
  }
  if (!checked && !options.storage && options.database === undefined && options.dataDir !== null && !existsSync(join(dataDir, SQLITE_FILE))) throw noTable();
  const keep = options.keepModels !== undefined ? { keepModels: options.keepModels } : {};
  const storage: Storage =
    options.storage ??
    (options.database !== undefined
      ? await PostgresStorage.open(options.database, keep)
      : options.dataDir === null
        ? new MemoryStorage(keep)
        : SqliteStorage.open(dataDir, { ...keep, ...options.sqlite }));
  try {
    if (!checked) {
      const latest = await storage.latest();
      if (!latest) throw noTable();
      checked = checkOptions(options, decodeModel(latest.model).table, log, now, monotonic);
    }
    const { config, initial, rateLimit } = checked;
    // Before any request is answered: an offer catalog older than the one the store last served is
    // refused (its withdrawn offers would be redeemable again); it is recorded as the newest only
    // once the rest of the start succeeded (install, below), so a start that fails raises nothing.
    const offers = options.offers === undefined ? undefined : options.offers instanceof RedeemCatalog ? options.offers : new RedeemCatalog(options.offers);
    const allowOlder = { allowOlder: options.offersAllowOlder ?? false };
    if (offers) await offers.check(offers.catalog, storage, allowOlder);
    const rounds = await RoundCoordinator.open(storage, initial, config, { discardPending: options.discardPending ?? false });
    const app = createApp(rounds, {
      log,
      ...(rateLimit ? { rateLimiter: storage.rateLimiter?.(rateLimit, now) ?? new RateLimiter(rateLimit, monotonic) } : {}),
      // All-keys cohort reads and refused cohort leaves, each in buckets of this process (on
      // PostgreSQL too: each instance bounds what it sends and what reaches the database through
      // it, and a refusal costs no write there), at the same rate and burst.
      ...(rateLimit && config.secureAggregation ? { readLimiter: new RateLimiter(rateLimit, monotonic), failureLimiter: new RateLimiter(rateLimit, monotonic) } : {}),
      ...(options.staticDir ? { staticDir: options.staticDir } : {}),
      trustProxy: options.trustProxy ?? false,
      ...(offers ? { offers, now } : {}),
      ...(options.corsOrigins ? { corsOrigins: options.corsOrigins } : {}),
      ...(options.metrics ? { metrics: true } : {}),
      monotonic,
    });
    // Checked again, atomically with raising the record (another process may have recorded a newer
    // catalog since the check above).
    if (offers) await offers.install(offers.catalog, storage, allowOlder);
    return { app, rounds, storage };
  } catch (e) {
    await storage.close();
    throw e;
  }
}

/**
 * {@link createServer}'s options checked and defaulted for a table of `shape`'s size, without
 * touching a store: the round config, the version 0 to store when the store is empty, and the
 * rate limit. Throws a `ValidationError` naming the option.
 */
function checkOptions(options: ServerOptions, shape: ItemTable, log: LogFn, now: () => number, monotonic: () => number): { config: RoundConfig; initial: ItemTable | undefined; rateLimit: RateLimitOptions | false } {
  const itemCount = shape.itemIds.length;
  const trained = checkTrainedPart({ rows: options.trainRows ?? itemCount, biases: options.trainBiases ?? true }, itemCount, 'options.trainRows');
  const blockSize = positive('blockSize', options.blockSize ?? DEFAULT_BLOCK_SIZE, true);
  if (options.bits !== undefined && !(Number.isInteger(options.bits) && options.bits >= 2 && options.bits <= 8)) {
    throw new ValidationError('options.bits', `must be a whole number from 2 to 8, got ${options.bits}`);
  }
  const bits = options.bits ?? chooseBits(trained.rows, shape.dim, UPDATE_BUDGET_BYTES, blockSize);
  if (bits < 2) {
    // Not the caller's bits: the table itself is too large for an upload.
    throw new ValidationError(
      options.trainRows !== undefined ? 'options.trainRows' : 'options.dim',
      `${trained.rows} trained rows × dim ${shape.dim} do not fit an update of ${UPDATE_BUDGET_BYTES} bytes even at 2 bits: lower the dim or train fewer rows (trainRows, the most popular items first)`,
    );
  }
  const noiseMultiplier = options.noiseMultiplier ?? 1;
  if (!Number.isFinite(noiseMultiplier) || noiseMultiplier < 0) throw new ValidationError('options.noiseMultiplier', `must be ≥ 0, got ${noiseMultiplier}`);
  // Update headers carry σ and C as float32: a value it cannot hold would make every update a mismatch.
  if (noiseMultiplier > 1e6) throw new ValidationError('options.noiseMultiplier', `must be at most 1e6, got ${noiseMultiplier}`);
  const maxStaleness = options.maxStaleness ?? 2;
  if (!Number.isInteger(maxStaleness) || maxStaleness < 0) throw new ValidationError('options.maxStaleness', `must be an integer ≥ 0, got ${maxStaleness}`);
  const aggregator = options.aggregator ?? 'fedavg';
  if (!isAggregatorName(aggregator)) throw new ValidationError('options.aggregator', `must be ${AGGREGATOR_NAMES.map((a) => `'${a}'`).join(', ')}, got '${String(aggregator)}'`);
  if (options.subspaceScale !== undefined && aggregator !== 'subspace') throw new ValidationError('options.subspaceScale', `applies to the subspace aggregator only (aggregator is '${aggregator}')`);
  const subspaceScale = positive('subspaceScale', options.subspaceScale ?? DEFAULT_SUBSPACE_SCALE);
  // The published factors are at most this in magnitude; devices refuse a model beyond ±10⁶.
  if (subspaceScale > 1e4) throw new ValidationError('options.subspaceScale', `must be at most 10000, got ${subspaceScale}`);
  if (options.serverLearningRate !== undefined && aggregator !== 'fedavg') {
    throw new ValidationError('options.serverLearningRate', `applies to the fedavg aggregator only (aggregator is '${aggregator}': fedadam has its own step sizes in options.fedAdam, subspace publishes scaled orthonormal factors)`);
  }
  if (aggregator === 'subspace' && trained.biases) {
    throw new ValidationError('options.trainBiases', "must be false with the subspace aggregator (the biases stay as the shop set them; with localrec serve: --freeze-biases)");
  }
  if (aggregator === 'subspace' && shape.dim >= trained.rows) {
    throw new ValidationError('options.trainRows', `must exceed dim (${shape.dim}) with the subspace aggregator, got ${trained.rows}`);
  }
  // An origin the browser sends is scheme://host[:port] exactly: 'https://shop.example/' (a
  // trailing slash) would match nothing and turn CORS off without a word.
  for (const [i, origin] of (options.corsOrigins ?? []).entries()) {
    const why = corsOriginProblem(origin);
    if (why) throw new ValidationError(`options.corsOrigins[${i}]`, `must be an origin as browsers send it, such as https://shop.example: ${why}, got ${JSON.stringify(origin)}`);
  }
  // Both widen the norm check: a NaN (every comparison false) or a huge value would turn it off.
  const normTolerance = options.normTolerance ?? 0.01;
  if (typeof normTolerance !== 'number' || !(normTolerance >= 0 && normTolerance < 1)) throw new ValidationError('options.normTolerance', `must be a number in [0, 1), got ${normTolerance}`);
  const normSlack = options.normSlack ?? 6;
  if (typeof normSlack !== 'number' || !(normSlack > 0 && normSlack <= 100)) throw new ValidationError('options.normSlack', `must be a number in (0, 100], got ${normSlack}`);
  const minClients = positive('minClients', options.minClients ?? 10, true);
  const { robust, trimFraction } = checkRoundOptions({ ...options, minClients });
  const clip = positive('clip', options.clip ?? 1);
  if (clip < 1e-6 || clip > 1e6) throw new ValidationError('options.clip', `must be from 1e-6 to 1e6 (update headers carry it as float32), got ${clip}`);
  let secureAggregation: RoundConfig['secureAggregation'];
  if (options.secureAggregation) {
    const o = options.secureAggregation === true ? {} : options.secureAggregation;
    const length = trainedLength(trained, shape.dim);
    const t = o.minSurvivors ?? minClients;
    if (!Number.isInteger(t) || t < 2 || t > minClients) {
      throw new ValidationError('options.secureAggregation.minSurvivors', `must be an integer 2..minClients (${minClients}, the cohort size), got ${String(o.minSurvivors)}`);
    }
    const degree = o.degree ?? Math.min(16, 2 * Math.ceil((minClients - 1) / 2));
    // With dropout recovery an upload also carries a sealed share of its self-mask per mask neighbour.
    const sealedShares = t < minClients && Number.isInteger(degree) ? Math.min(degree, minClients - 1) : 0;
    const sealedBytes = sealedShares * SEALED_SHARE_BYTES;
    const saBits = o.bits ?? chooseSecAggBits(length, UPDATE_BUDGET_BYTES - sealedBytes);
    // The sum of K clipped updates plus noise of std σC must fit in ±range, or it wraps around
    // silently. The hard bound is K·C (a device is at most C on any coordinate) plus 8σC for the
    // noise; it is the default whenever the bits make its rounding negligible (≤ 1 % of the
    // variance (C·max(1, σ))²), and always for subspace updates, which pile up on the popular rows.
    // Otherwise 8σC: local-training deltas spread over the table and mostly cancel (retail,
    // K = 4,000: the sum's largest coordinate is 8.6 against 8σC = 11.8).
    // With t = minSurvivors < K every member adds (σC)²/t, so a full cohort's sum carries σC·√(K/t).
    const noiseRange = 8 * clip * Math.max(1, noiseMultiplier * Math.sqrt(minClients / t));
    const hardRange = minClients * clip + noiseRange;
    const hardRounding = (minClients * (hardRange / (2 ** (saBits - 1) - 1)) ** 2) / 4;
    const cheap = hardRounding <= 0.01 * (clip * Math.max(1, noiseMultiplier)) ** 2;
    const range = positive('secureAggregation.range', o.range ?? (aggregator === 'subspace' || cheap ? hardRange : noiseRange));
    // Devices refuse a range that cannot hold one clipped update (parseServerConfig).
    if (range < clip) throw new ValidationError('options.secureAggregation.range', `must be at least the clip bound (${clip}): one update must fit, got ${range}`);
    const params: SecAggParams = checkSecAggParams(
      // γ = R / (2^(b−1) − 1): the fixed-point values run from −2^(b−1)·γ to (2^(b−1) − 1)·γ, so both
      // ends of ±R are representable (with R / 2^(b−1) a sum of exactly +R wrapped around to −R).
      { cohortSize: minClients, bits: saBits, step: range / (2 ** (saBits - 1) - 1), degree, minSurvivors: t },
      'options.secureAggregation',
    );
    // Devices refuse a deadline beyond a day (MAX_COHORT_TIMEOUT_MS): so does the server.
    const deadline = (name: string, v: number) => {
      positive(name, v, true);
      if (v > MAX_COHORT_TIMEOUT_MS) throw new ValidationError(`options.${name}`, `must be at most ${MAX_COHORT_TIMEOUT_MS} ms (a day; devices refuse longer), got ${v}`);
      return v;
    };
    const fillMs = deadline('secureAggregation.timeoutMs', o.timeoutMs ?? DEFAULT_COHORT_TIMEOUT_MS);
    secureAggregation = { ...params, timeoutMs: fillMs, uploadTimeoutMs: deadline('secureAggregation.uploadTimeoutMs', o.uploadTimeoutMs ?? defaultUploadTimeoutMs(fillMs)) };
    // Each member's rounding adds variance ≤ γ²/4 per value, K·γ²/4 to the sum, next to the DP
    // noise (σC)² there. Say so when the rounding is a sizeable share of it.
    const rounding = (params.cohortSize * params.step ** 2) / 4;
    const dp = (noiseMultiplier * clip) ** 2;
    if (dp > 0 && rounding > 0.1 * dp) {
      let better = params.bits;
      while (better < 32 && (params.cohortSize * (range / (2 ** (better - 1) - 1)) ** 2) / 4 > 0.1 * dp) better++;
      log(
        `secure aggregation: ${params.bits}-bit values add rounding noise of ${(rounding / dp).toFixed(2)}× the DP noise's variance to a cohort's sum; ` +
          `--secagg-bits ${better} would bring it under 0.1× (uploads of ${maskedUpdateBytes(length, better, sealedShares)} bytes instead of ${maskedUpdateBytes(length, params.bits, sealedShares)})`,
      );
    }
  }
  const config: RoundConfig = {
    itemCount,
    dim: shape.dim,
    trained,
    bits,
    blockSize,
    clip,
    noiseMultiplier,
    normTolerance,
    normSlack,
    minClients,
    maxStaleness,
    aggregator,
    robust,
    trimFraction,
    serverLearningRate: positive('serverLearningRate', options.serverLearningRate ?? 1),
    ...(aggregator === 'subspace' ? { subspaceScale } : {}),
    denoise: (() => {
      const d = options.denoise ?? 'none';
      if (d !== 'none' && d !== 'rows' && d !== 'directions') throw new ValidationError('options.denoise', `must be 'none', 'rows' or 'directions', got '${String(d)}'`);
      if (d === 'directions' && aggregator !== 'subspace') throw new ValidationError('options.denoise', `'directions' needs the subspace aggregator, got '${aggregator}'`);
      return d;
    })(),
    fedAdam: checkFedAdam(options.fedAdam),
    secureAggregation,
    now,
    monotonic,
    log,
  };
  // Subspace mode publishes orthonormal factors from version 0 on: the initial table's trained
  // block, orthonormalized (its other rows' factors zero), is where the iteration starts.
  const initial =
    aggregator === 'subspace' && options.initialTable
      ? subspaceTable(options.initialTable, options.initialTable.factors.subarray(0, trained.rows * shape.dim), trained, subspaceScale)
      : options.initialTable;
  if (initial) {
    // Devices refuse a model beyond ±MAX_MODEL_MAGNITUDE: a first version they would all refuse
    // (an extreme --bias-scale or popularity) is refused here, before it is stored.
    const over = beyondModelMagnitude(initial);
    if (over) {
      throw new ValidationError('options.initialTable', `item ${JSON.stringify(over.itemId)} has a ${over.what} beyond ±${MAX_MODEL_MAGNITUDE}, which every device would refuse: lower the bias scale (or the scale of the table)`);
    }
  }
  const rateLimit = options.rateLimit ?? { perMinute: 60, burst: 20 };
  if (rateLimit !== false) {
    // A NaN rate would make every bucket NaN, which never runs out: nobody limited, nothing said.
    if (typeof rateLimit !== 'object' || rateLimit === null) throw new ValidationError('options.rateLimit', `must be { perMinute, burst } or false, got ${describeValue(rateLimit)}`);
    positive('rateLimit.perMinute', rateLimit.perMinute);
    if (!(Number.isInteger(rateLimit.burst) && rateLimit.burst >= 1)) throw new ValidationError('options.rateLimit.burst', `must be a whole number ≥ 1, got ${describeValue(rateLimit.burst)}`);
  }
  return { config, initial, rateLimit };
}
