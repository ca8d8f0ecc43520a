/**
 * The HTTP API (hono). Versioned under /v1; every error is JSON `{ error, reason }` with a 4xx
 * (5xx only for a bug or a storage failure, never for anything a client sends).
 */
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { cors } from 'hono/cors';
import { matchedRoutes } from 'hono/route';
import { getConnInfo } from '@hono/node-server/conninfo';
import { serveStatic } from '@hono/node-server/serve-static';
import { relative } from 'node:path';
import { isStorageError } from '../errors.js';
import { updateByteLength, WIRE_FORMAT_VERSION, UPDATE_BUDGET_BYTES } from '../federated/wire.js';
import { rateLimitKeys, takeAll, type RateLimit, type RateLimiter } from './rate-limit.js';
import { noCohort, type LogFn, type RoundCoordinator } from './rounds.js';
import { defaultUploadTimeoutMs } from './cohorts.js';
import { REJECT_STATUS, type RejectReason } from './validate-update.js';
import { registerRedeem, type RedeemCatalog } from './redeem.js';
import { realPath } from '../output-file.js';
import { servable } from './static-files.js';
import type { OfferCatalog } from '../offers/types.js';
import { CONFIRM_TAG_BYTES, MASK_VERSION, maskedUpdateBytes, maskNeighbours, PAIR_SEED_BYTES, PUBLIC_KEY_BYTES, usesSelfMask } from '../federated/secagg.js';
import { trainedLength } from '../federated/client-update.js';
import { methodLabel, ServerMetrics, type UploadKind } from './metrics.js';
import { monotonicNow } from './clock.js';

export interface AppOptions {
  /** Per-client token buckets that updates and joins take from (on PostgreSQL shared by every instance). */
  rateLimiter?: RateLimit;
  /**
   * Per-client token buckets in this process that the all-keys cohort view takes from: a read, so
   * each instance bounds what it sends, and a refusal costs no write to a shared store.
   */
  readLimiter?: RateLimiter;
  /**
   * Buckets in this process that only refused cohort leaves take from (a wrong token, no such
   * cohort): a client whose bucket is empty is answered 429 before its leave is looked at.
   */
  failureLimiter?: RateLimiter;
  /** Folder served at `/` (the demo shop), after the API routes. */
  staticDir?: string;
  /**
   * Use the last X-Forwarded-For address as the client: the one the trusted proxy in front of the
   * server saw and appended (only behind such a proxy). Earlier entries come from the client.
   */
  trustProxy?: boolean;
  /**
   * Page origins allowed to call the API from a browser when the server is on another origin than
   * the shop (e.g. `https://shop.example`). No credentials are ever allowed: the SDK sends none.
   */
  corsOrigins?: string[];
  /** The shop's offer catalog (already verified), or a holder of it that can be replaced: enables `POST /v1/offers/redeem`. */
  offers?: OfferCatalog | RedeemCatalog;
  /**
   * `GET /metrics`: the Prometheus text exposition of the server's totals (metrics.ts). Off by
   * default; the route is not under /v1, so a proxy can keep it from the public by path.
   */
  metrics?: boolean;
  now?: () => number;
  /** A monotonic clock (ms) for request durations and the storage outage's log lines. Default `performance.now()`. */
  monotonic?: () => number;
  /**
   * During a storage outage, the first refused request is logged with its cause, then at most one
   * count of refused requests per this interval, then one line once storage works again. Default 60,000.
   */
  storageLogIntervalMs?: number;
  log: LogFn;
}

/** The reason code each refused request was answered with (for the metrics), by request. */
const refusals = new WeakMap<Request, string>();

/** The upload routes the metrics count by outcome. */
const UPLOAD_ROUTES: Record<string, UploadKind> = { '/v1/updates': 'plain', '/v1/secagg/updates': 'masked', '/v1/secagg/join': 'join' };

/**
 * The pattern of the route that answers `c` (`/v1/secagg/cohorts/:id`), never the path the client
 * sent: what log lines and metrics name a request by. A route registered for a method wins over the
 * middleware (`/v1/*`) that may have answered before it; a path no route matches is named by the
 * last middleware pattern it went through (`/v1/*`, `/*`).
 */
export function routePattern(c: Context): string {
  const all = matchedRoutes(c);
  return (all.find((r) => r.method !== 'ALL') ?? all[all.length - 1])?.path ?? 'unmatched';
}

/**
 * A storage outage's log lines: the first refused request with the cause, then at most one count
 * of refused requests per interval, then one line once a request that uses the store is answered
 * while no storage fault stands.
 */
class StorageOutageLog {
  private since: number | undefined;
  private lastLine = 0;
  private count = 0;

  constructor(
    private readonly log: LogFn,
    private readonly clock: () => number,
    private readonly intervalMs: number,
  ) {}

  refused(method: string, route: string, cause: string): void {
    const t = this.clock();
    if (this.since === undefined) {
      this.since = t;
      this.lastLine = t;
      this.count = 0;
      this.log(`storage unavailable on ${method} ${route}: ${cause}`, { event: 'storage-unavailable', level: 'error', method, route });
      return;
    }
    this.count++;
    if (t - this.lastLine >= this.intervalMs) this.flush(t);
  }

  /** A request that uses the store was answered (not refused for storage), and no storage fault stands. */
  served(): void {
    if (this.since === undefined) return;
    const t = this.clock();
    this.flush(t);
    this.log(`storage available again after ${Math.round((t - this.since) / 1000)} s`, { event: 'storage-recovered', durationMs: Math.round(t - this.since) });
    this.since = undefined;
  }

  private flush(t: number): void {
    if (this.count > 0) this.log(`${this.count} requests refused for storage in the last ${Math.round((t - this.lastLine) / 1000)} s`, { event: 'storage-refusals', level: 'warn', count: this.count, durationMs: Math.round(t - this.lastLine) });
    this.count = 0;
    this.lastLine = t;
  }
}

function fail(c: Context, reason: RejectReason | 'not-found' | 'internal', error: string, status?: number): Response {
  const s = status ?? (reason in REJECT_STATUS ? REJECT_STATUS[reason as RejectReason] : reason === 'not-found' ? 404 : 500);
  refusals.set(c.req.raw, reason);
  return c.json({ error, reason }, s as 400);
}

/**
 * Whether an `If-None-Match` header matches `etag` (RFC 9110 §13.1.2): `*` matches any current
 * representation; otherwise it is a list of entity tags, compared weakly (a `W/` prefix on either
 * side is ignored: only the quoted opaque tags must be equal).
 *
 * @example
 * ```ts
 * noneMatch('W/"ab", "cd"', '"cd"'); // true
 * ```
 */
export function noneMatch(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  if (header.trim() === '*') return true;
  const opaque = (tag: string) => tag.replace(/^W\//, '');
  const want = opaque(etag);
  // An opaque tag is a quoted string that may hold commas, so the list is read tag by tag, not split.
  for (const m of header.matchAll(/(?:W\/)?"[^"]*"/g)) if (opaque(m[0]) === want) return true;
  return false;
}

function clientKey(c: Context, trustProxy: boolean): string {
  if (trustProxy) {
    // A proxy appends the address it saw to whatever X-Forwarded-For the client sent: only the
    // last entry is the proxy's word; the first is whatever the client chose to put there.
    const last = c.req.header('x-forwarded-for')?.split(',').pop()?.trim();
    if (last) return last;
  }
  try {
    return getConnInfo(c).remote.address ?? 'unknown';
  } catch {
    return 'unknown'; // in-process requests (app.request) have no socket
  }
}

/**
 * @example
 * ```ts
 * const app = createApp(rounds, { log: console.log });
 * const res = await app.request('/v1/health');
 * ```
 */
export function createApp(rounds: RoundCoordinator, opts: AppOptions): Hono {
  const cfg = rounds.config;
  const sa = cfg.secureAggregation;
  // With dropout recovery a masked update also carries one sealed share per mask neighbour.
  const sealedShares = sa && usesSelfMask(sa) ? maskNeighbours(0, sa.cohortSize, sa.degree).length : 0;
  const updateBytes = sa ? maskedUpdateBytes(trainedLength(cfg.trained, cfg.dim), sa.bits, sealedShares) : updateByteLength(cfg.trained.rows, cfg.dim, cfg.bits, cfg.blockSize);
  const app = new Hono();
  const clock = opts.monotonic ?? monotonicNow;
  const metrics = opts.metrics ? new ServerMetrics(sa ? ['masked', 'join'] : ['plain']) : null;
  const outage = new StorageOutageLog(opts.log, clock, opts.storageLogIntervalMs ?? 60_000);

  // First, around everything: the request's metrics, and the end of a storage outage.
  app.use('*', async (c, next) => {
    const start = clock();
    await next();
    const status = c.res.status;
    const route = routePattern(c);
    const method = c.req.method;
    const reason = refusals.get(c.req.raw);
    const kind = method === 'POST' ? UPLOAD_ROUTES[c.req.path] : undefined;
    // The end of an outage is a request that used the store and succeeded: a stored upload or join,
    // or a health check (which looks at the store). A refusal that never reached it (a malformed
    // body, the rate limit) or a route that keeps no state (a redemption check) says nothing.
    if (status < 300 && (kind !== undefined || route === '/v1/health') && rounds.storageFault === undefined) outage.served();
    if (!metrics) return;
    metrics.observeRequest(method, route, status, (clock() - start) / 1000);
    if (kind) metrics.countUpload(kind, status < 300 ? 'accepted' : (reason ?? 'internal'));
  });

  if (opts.corsOrigins?.length) {
    app.use(
      '/v1/*',
      cors({
        origin: opts.corsOrigins,
        allowMethods: ['GET', 'POST'],
        allowHeaders: ['Content-Type', 'If-None-Match', 'X-Localrec-Cohort-Token'],
        // The client names its base version by the hash it read from these headers.
        exposeHeaders: ['X-Localrec-Model-Version', 'X-Localrec-Model-Hash', 'ETag'],
        maxAge: 600,
        credentials: false,
      }),
    );
  }

  app.onError((err, c) => {
    if ((err as { settingsChanged?: boolean }).settingsChanged === true) {
      // Another process sharing the store was started with other round settings (rounds.ts,
      // checkSettings; logged once when it was noticed): another instance takes the request.
      c.header('Retry-After', '30');
      refusals.set(c.req.raw, 'settings-changed');
      return c.json({ error: 'this server instance runs with round settings its store no longer uses (another instance was started with new ones); nothing was stored, retry later', reason: 'settings-changed' }, 503);
    }
    if (isStorageError(err)) {
      // A full disk, a read-only data dir, a locked or lost database: the client did nothing wrong and
      // nothing was stored (the transaction rolled back, or what was inserted was taken out again),
      // so say so and ask for a retry.
      // Its message (a database URL, a file path) is for the operator's log, never for the client.
      // The request is named by its route's pattern, never the path sent (a client's bytes, a
      // newline that would forge a log line; a cohort id and member index). During an outage the
      // first refusal is logged, then a count a minute (StorageOutageLog).
      outage.refused(methodLabel(c.req.method), routePattern(c), err.message);
      refusals.set(c.req.raw, 'storage-unavailable');
      c.header('Retry-After', '30');
      // Except a masked upload that stays stored though its cohort may not have recorded it
      // (rounds.ts, UploadKeptError): the same upload again finishes it.
      // And while a publish is owed for want of disk space (rounds.ts, PublishOwedError): uploads
      // are refused until it succeeds, so that the room freed goes to it; the health check says so.
      const kept = (err as { uploadKept?: boolean }).uploadKept === true;
      const owed = (err as { publishOwed?: boolean }).publishOwed === true;
      const error = kept
        ? 'the server cannot reach its storage right now; the upload is stored, but not every step of taking it was: send the same upload again later'
        : owed
          ? 'a publish is owed and the disk is full: the server takes no uploads until the next version is published; nothing was stored, retry later'
          : 'the server cannot reach its storage right now; nothing was stored, retry later';
      return c.json({ error, reason: 'storage-unavailable' }, 503);
    }
    opts.log(`internal error on ${methodLabel(c.req.method)} ${routePattern(c)}: ${err.stack ?? err.message}`, { event: 'internal-error', level: 'error', method: methodLabel(c.req.method), route: routePattern(c) });
    return fail(c, 'internal', 'internal server error');
  });

  // Liveness: 200 whenever the process answers, before anything that looks at the store (the
  // readiness check is /v1/health, 503 while the server cannot store).
  app.get('/v1/health/live', (c) => c.json({ ok: true }));

  // On a store several processes share, an instance whose round settings another one replaced
  // (rounds.ts, checkSettings) answers every request 503, its health check included, so that the
  // load balancer takes it out until it is restarted with them: each request looks at most once a
  // second. An upload or a join looks at the store every time (currentSettings, after the rate
  // limit: a refused or oversized request costs no database read), so that no update made for
  // replaced settings is acknowledged (its device's ε spent) but for one racing the replacement.
  app.use('/v1/*', async (c, next) => {
    const superseded = await rounds.checkSettings(false);
    if (superseded) throw superseded;
    await next();
  });
  const currentSettings = async (_c: Context, next: () => Promise<void>) => {
    const superseded = await rounds.checkSettings(true);
    if (superseded) throw superseded;
    await next();
  };

  // On a store several processes share, readers first catch up with what the others published
  // (at most once a second; a no-op on SQLite and memory).
  app.use('/v1/*', async (c, next) => {
    if (c.req.method === 'GET' || c.req.method === 'HEAD') await rounds.refresh();
    await next();
  });

  app.get('/v1/health', async (c) => {
    // The last look at a shared store failed (and the next is not due yet), or the last write to
    // any store (a full disk, a read-only file) and no write since: 503, not 200 from memory.
    const fault = await rounds.checkStorage();
    if (fault !== undefined) throw fault;
    return c.json({ ok: true, version: rounds.version });
  });

  app.get('/v1/config', (c) =>
    c.json({
      formatVersion: WIRE_FORMAT_VERSION,
      dim: cfg.dim,
      items: cfg.itemCount,
      trainRows: cfg.trained.rows,
      trainBiases: cfg.trained.biases,
      clip: cfg.clip,
      noiseMultiplier: cfg.noiseMultiplier,
      minClients: cfg.minClients,
      maxStaleness: cfg.maxStaleness,
      bits: cfg.bits,
      blockSize: cfg.blockSize,
      updateBytes,
      updateBudgetBytes: UPDATE_BUDGET_BYTES,
      aggregator: cfg.aggregator,
      ...(cfg.subspaceScale !== undefined ? { subspaceScale: cfg.subspaceScale } : {}),
      robust: cfg.robust,
      trimFraction: cfg.trimFraction,
      normTolerance: cfg.normTolerance,
      normSlack: cfg.normSlack,
      secureAggregation: sa
        ? { cohortSize: sa.cohortSize, bits: sa.bits, step: sa.step, degree: sa.degree, minSurvivors: sa.minSurvivors ?? sa.cohortSize, timeoutMs: sa.timeoutMs, uploadTimeoutMs: sa.uploadTimeoutMs ?? defaultUploadTimeoutMs(sa.timeoutMs), maskVersion: MASK_VERSION }
        : null,
      denoise: cfg.denoise ?? 'none',
      version: rounds.version,
    }),
  );

  app.get('/v1/rounds/current', (c) => {
    const failure = rounds.roundFailure;
    return c.json({
      version: rounds.version,
      hash: rounds.hash,
      publishedAt: new Date(rounds.publishedAt).toISOString(),
      pending: rounds.pending,
      minClients: cfg.minClients,
      maxStaleness: cfg.maxStaleness,
      oldestAcceptedBase: Math.max(0, rounds.version - cfg.maxStaleness),
      // While rounds fail (retried at most once a second): why the last one failed, and since when.
      lastRoundError: failure?.error ?? null,
      failingSince: failure ? new Date(failure.since).toISOString() : null,
    });
  });

  app.get('/v1/model', (c) => {
    const q = c.req.query('encoding') ?? 'float32';
    if (q !== 'float32' && q !== 'int8') return fail(c, 'malformed', `encoding must be 'float32' or 'int8', got '${q}'`, 400);
    const etag = `"${rounds.hash}${q === 'int8' ? '-int8' : ''}"`;
    c.header('X-Localrec-Model-Version', String(rounds.version));
    c.header('X-Localrec-Model-Hash', rounds.hash);
    c.header('ETag', etag);
    c.header('Cache-Control', 'no-cache');
    if (noneMatch(c.req.header('if-none-match'), etag)) return c.body(null, 304);
    const body = rounds.modelBytes(q);
    c.header('Content-Type', 'application/octet-stream');
    return c.body(body as Uint8Array<ArrayBuffer>, 200);
  });

  /**
   * Answers `wrong-mode` when the route belongs to the other mode, before the rate limit and the
   * body limit: the body size is the other mode's, so an outdated client would otherwise be told
   * `oversized` instead of why.
   */
  const only = (mode: 'plain' | 'secure') => async (c: Context, next: () => Promise<void>) => {
    if (mode === 'plain' && sa) return fail(c, 'wrong-mode', 'this server runs secure aggregation: join a cohort (POST /v1/secagg/join) and upload a masked update to /v1/secagg/updates');
    if (mode === 'secure' && !sa) return fail(c, 'wrong-mode', 'this server takes plain updates (POST /v1/updates); secure aggregation is off');
    await next();
  };
  /** Takes a token from the client's bucket in `limiter` (and from its IPv6 /48's: rateLimitKeys), or answers 429. */
  const limitedBy = (limiter: RateLimit | undefined, what: string) => async (c: Context, next: () => Promise<void>) => {
    if (limiter && !(await takeAll(limiter, rateLimitKeys(clientKey(c, opts.trustProxy ?? false))))) {
      c.header('Retry-After', '60');
      return fail(c, 'rate-limited', `too many ${what} from this client; retry later`);
    }
    await next();
  };
  const rateLimited = limitedBy(opts.rateLimiter, 'updates');
  /**
   * Refused leaves (a wrong token, no such cohort or member, a full or ended cohort) take from the
   * client's failure bucket, and a client whose bucket is empty is answered 429 without its leave
   * being looked at. A device leaves at most once per join, with its own token: only a client
   * guessing tokens or cohorts runs out.
   */
  const failuresLimited = async (c: Context, next: () => Promise<void>) => {
    const limiter = opts.failureLimiter;
    if (!limiter) return next();
    const buckets = rateLimitKeys(clientKey(c, opts.trustProxy ?? false));
    if (!buckets.every((b) => limiter.has(b.key, b.cost))) {
      c.header('Retry-After', '60');
      return fail(c, 'rate-limited', 'too many refused requests from this client (wrong cohort tokens or unknown cohorts); retry later');
    }
    await next();
    const reason = refusals.get(c.req.raw);
    if (reason === 'not-member' || reason === 'unknown-cohort' || reason === 'malformed') for (const b of buckets) limiter.take(b.key, b.cost);
  };
  /** 202 with the round's state for an accepted update, or the rejection. */
  const answer = (c: Context, r: Awaited<ReturnType<RoundCoordinator['submit']>>) =>
    r.ok
      ? c.json({ accepted: true, id: r.id, version: r.version, pending: r.pending, minClients: cfg.minClients, published: r.published ?? null }, 202)
      : fail(c, r.reason, r.error);
  const readBody = async (c: Context): Promise<Uint8Array | null> => {
    try {
      return new Uint8Array(await c.req.arrayBuffer());
    } catch {
      return null;
    }
  };

  app.post(
    '/v1/secagg/join',
    only('secure'),
    rateLimited,
    bodyLimit({ maxSize: PUBLIC_KEY_BYTES, onError: (c) => fail(c, 'oversized', `a join body is one ${PUBLIC_KEY_BYTES}-byte P-256 public key`) }),
    currentSettings,
    async (c) => {
      const body = await readBody(c);
      if (!body) return fail(c, 'malformed', 'could not read the request body');
      const r = await rounds.joinCohort(body);
      if (!r.ok) {
        // Cohorts in memory hold as many members as they may: some will have ended in a minute.
        if (r.reason === 'cohorts-full') c.header('Retry-After', '60');
        return fail(c, r.reason, r.error);
      }
      c.header('Cache-Control', 'no-store');
      return c.json({ cohort: r.cohort.id, index: r.index, size: r.cohort.size, status: r.cohort.status, token: r.token }, 200);
    },
  );

  /** The `:member` path parameter as a member index (NaN when it is not a small non-negative integer). */
  const memberIndex = (param: string) => (/^\d{1,9}$/.test(param) ? Number(param) : NaN);
  const cohortView = async (c: Context, memberParam?: string) => {
    const id = c.req.param('id') ?? '';
    const co = await rounds.cohort(id);
    if (!co) {
      const r = noCohort(id);
      return fail(c, r.reason, r.error);
    }
    let member: number | undefined;
    if (memberParam !== undefined) {
      member = memberIndex(memberParam);
      if (!(member < co.size)) return fail(c, 'malformed', `member must be a member index 0..${co.size - 1}, got '${memberParam.slice(0, 20)}'`);
    }
    c.header('Cache-Control', 'no-store');
    return c.json(await rounds.cohortView(co, member));
  };
  // Every key of a cohort, for audits (devices ask only for their member view): the body, 532 KB at
  // K = 4,000, is built once per cohort (rounds.cohortKeysView), answered 304 for its ETag, and each
  // request takes a token from the client's bucket of reads, so no client can have it sent over and over.
  app.get('/v1/secagg/cohorts/:id', only('secure'), limitedBy(opts.readLimiter, 'cohort reads'), async (c) => {
    const id = c.req.param('id') ?? '';
    const co = await rounds.cohort(id);
    if (!co) {
      const r = noCohort(id);
      return fail(c, r.reason, r.error);
    }
    const view = rounds.cohortKeysView(co);
    c.header('ETag', view.etag);
    // Stored by nobody without asking again: the state changes until the cohort ends.
    c.header('Cache-Control', 'no-cache');
    if (noneMatch(c.req.header('if-none-match'), view.etag)) return c.body(null, 304);
    return c.body((await view.body()) as Uint8Array<ArrayBuffer>, 200, { 'Content-Type': 'application/json' });
  });
  // A member's own view: its key and its mask neighbours' (a path, not a query: no request of the SDK carries a query string).
  app.get('/v1/secagg/cohorts/:id/members/:member', only('secure'), (c) => cohortView(c, c.req.param('member')));

  // A member leaves a cohort still forming (its sync was cancelled or gave up): its place is freed.
  app.post('/v1/secagg/cohorts/:id/members/:member/leave', only('secure'), failuresLimited, bodyLimit({ maxSize: 0, onError: (c) => fail(c, 'oversized', 'leaving a cohort takes no body') }), async (c) => {
    const param = c.req.param('member') ?? '';
    const r = await rounds.leaveCohort(c.req.param('id') ?? '', memberIndex(param), c.req.header('x-localrec-cohort-token') ?? '', param);
    if (!r.ok) return fail(c, r.reason, r.error);
    c.header('Cache-Control', 'no-store');
    return c.json({ left: true }, 200);
  });

  // Recovery, first: a surviving member confirms to each neighbour its list leaves alive which list
  // it was shown, then that they all confirmed the same (`ready`): 16-byte tags per neighbour.
  const maxConfirm = (sa?.degree ?? 2) * CONFIRM_TAG_BYTES;
  for (const round of ['confirm', 'ready'] as const) {
    app.post(
      `/v1/secagg/cohorts/:id/members/:member/${round}`,
      only('secure'),
      bodyLimit({ maxSize: maxConfirm, onError: (c) => fail(c, 'oversized', `${round} tags are at most ${maxConfirm} bytes`) }),
      async (c) => {
        const body = await readBody(c);
        if (!body) return fail(c, 'malformed', 'could not read the request body');
        const param = c.req.param('member') ?? '';
        const r = await rounds.submitConfirmation(c.req.param('id') ?? '', memberIndex(param), c.req.header('x-localrec-cohort-token') ?? '', body, param, round);
        if (!r.ok) return fail(c, r.reason, r.error);
        c.header('Cache-Control', 'no-store');
        return c.json({ accepted: true }, 202);
      },
    );
  }

  // Recovery: a surviving member's pair seeds or self-mask shares, 16 bytes per mask neighbour (at most `degree`).
  const maxShare = (sa?.degree ?? 2) * PAIR_SEED_BYTES;
  app.post(
    '/v1/secagg/cohorts/:id/members/:member/recovery',
    only('secure'),
    bodyLimit({ maxSize: maxShare, onError: (c) => fail(c, 'oversized', `a recovery share is at most ${maxShare} bytes`) }),
    async (c) => {
      const body = await readBody(c);
      if (!body) return fail(c, 'malformed', 'could not read the request body');
      const param = c.req.param('member') ?? '';
      const r = await rounds.submitRecovery(c.req.param('id') ?? '', memberIndex(param), c.req.header('x-localrec-cohort-token') ?? '', body, param);
      if (!r.ok) return fail(c, r.reason, r.error);
      c.header('Cache-Control', 'no-store');
      return c.json({ accepted: true, recovered: r.recovered, needed: r.needed, published: r.published ?? null }, 202);
    },
  );

  app.post(
    '/v1/secagg/updates',
    only('secure'),
    bodyLimit({ maxSize: updateBytes, onError: (c) => fail(c, 'oversized', `masked update bodies are exactly ${updateBytes} bytes for this model`) }),
    currentSettings,
    async (c) => {
      const body = await readBody(c);
      if (!body) return fail(c, 'malformed', 'could not read the request body');
      return answer(c, await rounds.submitMasked(body, c.req.header('x-localrec-cohort-token') ?? ''));
    },
  );

  app.post(
    '/v1/updates',
    only('plain'),
    rateLimited,
    bodyLimit({
      maxSize: updateBytes,
      onError: (c) => fail(c, 'oversized', `update bodies are exactly ${updateBytes} bytes for this model`),
    }),
    currentSettings,
    async (c) => {
      const body = await readBody(c);
      if (!body) return fail(c, 'malformed', 'could not read the request body');
      return answer(c, await rounds.submit(body));
    },
  );

  if (opts.offers) registerRedeem(app, opts.offers, opts.now ?? Date.now);

  if (metrics) {
    app.get('/metrics', async (c) => {
      // As /v1/health: catch up with a shared store, and let a standing write fault be probed.
      await rounds.refresh().catch(() => undefined);
      const storageUp = (await rounds.checkStorage()) === undefined;
      const body = metrics.render({
        version: rounds.version,
        publishedAt: rounds.publishedAt,
        pending: rounds.pending,
        roundFailures: rounds.roundFailures,
        failingSince: rounds.roundFailure?.since,
        storageUp,
        ...(sa ? { cohorts: await rounds.cohortCounts().catch(() => undefined), cohortsAborted: rounds.cohortsAborted } : {}),
      });
      c.header('Cache-Control', 'no-store');
      return c.body(body, 200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
    });
  }

  app.all('/v1/*', (c) => fail(c, 'not-found', `no such endpoint: ${c.req.method} ${c.req.path}`));

  if (opts.staticDir) {
    // Dotfiles, paths that do not decode and links out of the folder are answered as if absent
    // (static-files.ts); the rest goes to serveStatic, which resolves `root` against the working
    // directory.
    const real = realPath(opts.staticDir);
    app.use('/*', async (c, next) => ((await servable(real, c.req.path)) ? next() : fail(c, 'not-found', `not found: ${c.req.path}`)));
    const root = relative(process.cwd(), opts.staticDir) || '.';
    app.use('/*', serveStatic({ root }));
  }
  app.notFound((c) => fail(c, 'not-found', `not found: ${c.req.path}`));
  return app;
}
