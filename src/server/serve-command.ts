/**
 * `localrec serve`: the federated aggregation server on SQLite.
 *
 * @example
 * ```sh
 * localrec serve --catalog shop/catalog.json --dim 16 --min-clients 10 --clip 1 --noise 1.0 --static examples/shop
 * ```
 */
import { statSync } from 'node:fs';
import type { Command } from 'commander';
import { ValidationError } from '../errors.js';
import { validateCatalog } from '../model/catalog.js';
import { hasLoneSurrogate } from '../model/item-table.js';
import { numberFlag, seedFlag } from '../number-flag.js';
import { checkOutputFolder, parseJsonText } from '../output-file.js';
import { checkNotPublished } from './static-files.js';
import { describeValue, oneLine } from '../options.js';

function num(name: string, integer = false) {
  return (v: string): number => numberFlag(`--${name}`, v, (n) => Number.isFinite(n) && (!integer || Number.isInteger(n)), integer ? 'an integer' : 'a number');
}

/** `--keep-models`: a whole number ≥ 1 (the latest version's model is always needed). */
export function keepModelsFlag(v: string): number {
  const n = num('keep-models', true)(v);
  if (n < 1) throw new ValidationError('--keep-models', `must be a whole number ≥ 1 (the current version's model is always kept), got '${v}'`);
  return n;
}

/**
 * `--rate-limit`: updates per minute per client, ≥ 0 (0 turns it off). A negative value would
 * otherwise read as "off" too, silently, where the operator meant a limit.
 */
export function rateLimitFlag(v: string): number {
  const n = num('rate-limit')(v);
  if (n < 0) throw new ValidationError('--rate-limit', `must be a number of updates per minute ≥ 0 (0 turns the limit off), got '${v}'`);
  return n;
}

/** Reads a catalog file: `{ items: [{ id, popularity? }] }`, or a bare array of items or ids. */
export async function readCatalogFile(path: string): Promise<{ ids: string[]; popularity: number[] }> {
  const { readFile } = await import('node:fs/promises');
  let raw: unknown;
  try {
    raw = parseJsonText(await readFile(path, 'utf8'));
  } catch (e) {
    throw new ValidationError('--catalog', `cannot read ${path} as JSON: ${oneLine((e as Error).message)}`);
  }
  const items = Array.isArray(raw) ? raw : (raw as { items?: unknown })?.items;
  if (!Array.isArray(items) || items.length === 0) throw new ValidationError('--catalog', `${path} must hold a non-empty "items" array`);
  const ids: string[] = [];
  const popularity: number[] = [];
  const seen = new Set<string>();
  items.forEach((it: unknown, i) => {
    const id = typeof it === 'string' ? it : (it as { id?: unknown })?.id;
    if (typeof id !== 'string' || id.length < 1 || id.length > 256) throw new ValidationError(`catalog.items[${i}].id`, 'must be a string of 1..256 characters');
    if (hasLoneSurrogate(id)) throw new ValidationError(`catalog.items[${i}].id`, 'holds a lone UTF-16 surrogate, which UTF-8 (and so the model file) cannot carry');
    if (seen.has(id)) throw new ValidationError(`catalog.items[${i}].id`, `'${id}' appears twice`);
    seen.add(id);
    ids.push(id);
    const p = typeof it === 'object' && it !== null ? (it as { popularity?: unknown }).popularity : undefined;
    // Refused as the SDK's catalog check refuses it, not read as 0 (a bias the shop did not mean).
    if (p !== undefined && !(typeof p === 'number' && Number.isFinite(p) && p >= 0)) {
      throw new ValidationError(`catalog.items[${i}].popularity`, `must be a finite number ≥ 0, got ${describeValue(p)}`);
    }
    popularity.push(p ?? 0);
  });
  // The rest as the SDK checks a catalog (the same file often feeds both): a misspelt field
  // (`name` for `title`) or a title, category or price of the wrong type is refused, not ignored.
  validateCatalog({ items: items.map((it: unknown) => (typeof it === 'string' ? { id: it } : it)) }, 'catalog');
  return { ids, popularity };
}

export function register(program: Command): void {
  program
    .command('serve')
    .description('Run the federated aggregation server (HTTP API under /v1, SQLite or PostgreSQL storage).')
    .option('--port <n>', 'port to listen on (0 = any free port)', num('port', true), 8787)
    .option('--host <addr>', 'address to bind', '127.0.0.1')
    .option('--backlog <n>', 'listen queue length (capped by the kernel, e.g. net.core.somaxconn)', num('backlog', true), 4096)
    .option('--data-dir <dir>', 'folder for the SQLite database', '.data')
    .option('--database <url>', 'store in PostgreSQL instead of SQLite (postgres://user:password@host:port/db), so several server processes behind a load balancer can share it (with secure aggregation, its cohorts too). Default: $LOCALREC_DATABASE_URL when set')
    .option('--catalog <file>', 'catalog JSON ({ items: [{ id, popularity? }] }); needed for a new data dir')
    .option('--dim <n>', 'embedding size of the item table', num('dim', true), 32)
    .option('--seed <n>', 'seed of the initial table (0 to 2^31 − 1)', (v: string) => seedFlag('--seed', v), 1)
    .option('--min-clients <n>', 'updates per aggregation round', num('min-clients', true), 10)
    .option('--clip <c>', 'L2 clip bound C of an update', num('clip'), 1)
    .option('--noise <sigma>', 'noise multiplier σ (noise std σ·C per coordinate)', num('noise'), 1.0)
    .option('--max-staleness <n>', 'oldest accepted base = current − n', num('max-staleness', true), 2)
    .option('--keep-models <n>', 'published versions whose model the store keeps (older ones keep their hash only)', keepModelsFlag, 3)
    .option('--bits <n>', 'bits per update coordinate (default: widest within 64 KiB)', num('bits', true))
    .option('--aggregator <name>', 'fedavg or fedadam (devices train locally), or subspace (federated subspace iteration: devices send one normalized power-iteration step; needs --freeze-biases; docs/FEDERATED.md)', 'fedavg')
    .option('--subspace-scale <c>', '--aggregator subspace: scale of the published factors, personalization against the biases (default 32)', num('subspace-scale'))
    .option('--robust <name>', 'combine a round per coordinate by: mean, trimmed-mean or median', 'mean')
    .option('--trim <fraction>', 'trimmed-mean: share of values dropped from each end of every coordinate, in [0, 0.5)', num('trim'), 0.1)
    .option('--denoise <how>', "'rows': shrink each item row of a round's delta for the known noise before the step (James–Stein; no privacy cost); 'directions' (--aggregator subspace): weight each published direction by how far it stands above the noise, so that at a small ε the biases rank instead of noise; or 'none'", 'none')
    .option('--train-rows <n>', "federated training updates only the catalog's first n items (list the most popular first; the rest keep the values of the store's first version); uploads shrink with it (default all)", num('train-rows', true))
    .option('--bias-scale <a>', "a new data dir's initial biases: a·ln(1 + popularity) instead of ln(1 + popularity) / max; with --freeze-biases, about 0.5 is the scale a trained model gives them (docs/FEDERATED.md)", num('bias-scale', false))
    .option('--freeze-biases', "keep the biases of the store's first version (from the popularity in the catalog it was created with, which the shop knows from its own sales; a later --catalog's counts are not read) and federate the factors only")
    .option('--discard-pending', "start even though the store holds pending updates made for other round settings (--train-rows, --freeze-biases, --aggregator, --secure-aggregation and its cohort size, bits and step): delete them instead of refusing (their devices spent privacy budget on them for nothing)")
    .option('--secure-aggregation', 'devices upload masked updates in cohorts of --min-clients, each adding σC/√K of the noise; the server only learns cohort sums')
    .option('--secagg-bits <b>', 'secure aggregation: bits per coordinate (default: widest within 64 KiB)', num('secagg-bits', true))
    .option('--secagg-range <r>', "secure aggregation: a cohort sum's coordinate must stay within ±r (default K·C + 8·C·max(1, σ·√(K/t)) when the bits make its rounding negligible or with --aggregator subspace, else 8·C·max(1, σ·√(K/t)); t = --secagg-survivors, K without it)", num('secagg-range'))
    .option('--secagg-degree <d>', 'secure aggregation: mask neighbours per device, even (default min(16, K − 1 rounded up))', num('secagg-degree', true))
    .option('--secagg-survivors <t>', 'secure aggregation: a cohort missing at most K − t uploads at the upload timeout is recovered from the t or more that came (devices then add σC/√t each); default K (no recovery)', num('secagg-survivors', true))
    .option('--cohort-timeout <seconds>', 'secure aggregation: time a cohort has to fill (and, unless --upload-timeout is given, then up to 600 s to collect every upload and any recovery shares)', num('cohort-timeout'), 600)
    .option('--upload-timeout <seconds>', 'secure aggregation: time a full cohort has to collect every upload, and a recovery its shares (default --cohort-timeout, at most 600)', num('upload-timeout'))
    .option('--rate-limit <perMinute>', 'updates and joins per minute per client address (an IPv6 /64; its /48 gets 16 times that), and as many all-keys cohort reads and refused leaves (0 = off)', rateLimitFlag, 60)
    .option('--trust-proxy', "behind a reverse proxy or load balancer: the client address (for --rate-limit) is the last X-Forwarded-For entry (the one the proxy appended), not the proxy's own; only when every request comes through such a proxy")
    .option('--static <dir>', 'serve this folder at / (a static site; the demo shop needs `npm start` instead, which also serves the SDK build and its demo endpoints)')
    .option('--cors-origin <origin...>', 'page origins that may call the API from another origin (e.g. https://shop.example)')
    .option('--offers <file>', "signed offer catalog (localrec offers sign) to check redemptions against: POST /v1/offers/redeem")
    .option('--offers-key <file>', 'public JWK the offer catalog must verify with, or a JSON array of them (key rotation); required with --offers')
    .option('--offers-allow-older', 'start with an --offers catalog older than the newest this store has loaded (a deliberate rollback; a SIGHUP reload never takes an older one)')
    .option('--log-format <format>', "'text' (default): lines of text on stderr; 'json': one JSON object per line (ts, level, event, msg, and fields such as version, durationMs), the start-up lines on stdout too", 'text')
    .option('--metrics', 'serve Prometheus metrics (totals only) at GET /metrics on the same port; keep that path from the public at the proxy (docs/SERVER.md, "Monitoring")')
    .action(async (o: Record<string, unknown>, command: Command) => {
      // SIGHUP reloads --offers (below): handled from the start, so that one sent while the server
      // is still starting (the default action would end the process) is queued until it is up.
      let onHup: (() => void) | undefined;
      let hupWhileStarting = false;
      const hup = () => {
        if (onHup) onHup();
        else hupWhileStarting = true;
      };
      if (typeof o.offers === 'string') process.on('SIGHUP', hup);
      const { startServer, PostgresStorage, SqliteStorage } = await import('./index.js');
      const { createItemTable } = await import('../model/item-table.js');
      let initialTable;
      checkServeFlags(o);
      const json = o.logFormat === 'json';
      const { jsonLogLine } = await import('./index.js');
      // The start-up lines, on stdout: text, or with --log-format json one JSON object each.
      const say = (line: string, fields: import('./rounds.js').LogFields) => process.stdout.write(`${json ? jsonLogLine(line, fields, Date.now()) : line}\n`);
      const typed = (attribute: string) => command.getOptionValueSource(attribute) === 'cli';
      if (typeof o.catalog !== 'string') {
        // Without a catalog the model comes from the store, which keeps its own shape and biases.
        const flag = command.options.find((f) => ['dim', 'seed', 'biasScale'].includes(f.attributeName()) && typed(f.attributeName()));
        if (flag) throw new ValidationError(flag.long!, "builds the initial model from --catalog: without --catalog the stored model is served as it is (its dim, seed and biases are its own; a later start with --catalog must repeat the --dim the store was made with)");
      }
      if (typed('trim') && o.robust !== 'trimmed-mean') throw new ValidationError('--trim', `applies to --robust trimmed-mean only (got ${String(o.robust)})`);
      if (typeof o.database === 'string' && typed('dataDir')) throw new ValidationError('--data-dir', 'is the SQLite folder: with --database the server uses PostgreSQL; give one or the other');
      // An explicit --data-dir wins over LOCALREC_DATABASE_URL from the environment.
      const database = (o.database as string | undefined) ?? (typed('dataDir') ? undefined : process.env.LOCALREC_DATABASE_URL || undefined);
      // A file there would fail as EEXIST (or ENOTDIR) from the store, not naming the flag.
      if (database === undefined) checkOutputFolder(o.dataDir as string, '--data-dir');
      if (database === undefined && typeof o.static === 'string') checkNotPublished(o.dataDir as string, o.static);
      if (o.biasScale !== undefined && !((o.biasScale as number) > 0)) throw new ValidationError('--bias-scale', `must be a number > 0, got ${String(o.biasScale)}`);
      if (typeof o.catalog === 'string') {
        const { ids, popularity } = await readCatalogFile(o.catalog);
        initialTable = createItemTable(ids, o.dim as number, {
          seed: o.seed as number,
          popularity,
          ...(o.biasScale !== undefined ? { popularityScale: o.biasScale as number } : {}),
        });
      }
      let offers: import('./redeem.js').RedeemCatalog | undefined;
      if (typeof o.offersKey === 'string' && typeof o.offers !== 'string') throw new ValidationError('--offers-key', 'is the key the --offers catalog is checked against: give --offers too');
      if (o.offersAllowOlder && typeof o.offers !== 'string') throw new ValidationError('--offers-allow-older', 'applies to the --offers catalog: give --offers too');
      if (typeof o.offers === 'string') {
        if (typeof o.offersKey !== 'string') throw new ValidationError('--offers-key', 'is required with --offers (the public JWK the catalog was signed for, or an array of them)');
        const { RedeemCatalog } = await import('./redeem.js');
        offers = new RedeemCatalog(await readOffers(o.offers, o.offersKey));
      }
      const { checkSubspaceFlags } = await import('../federated/subspace.js');
      checkSubspaceFlags(String(o.aggregator), !!o.freezeBiases, o.subspaceScale as number | undefined, String(o.denoise));
      if (!o.secureAggregation) {
        const flags: Array<[string, unknown]> = [['--secagg-bits', o.secaggBits], ['--secagg-range', o.secaggRange], ['--secagg-degree', o.secaggDegree], ['--secagg-survivors', o.secaggSurvivors], ['--upload-timeout', o.uploadTimeout], ['--cohort-timeout', typed('cohortTimeout') ? o.cohortTimeout : undefined]];
        const given = flags.find(([, v]) => v !== undefined);
        if (given) throw new ValidationError(given[0], 'is a secure-aggregation option: it needs --secure-aggregation');
      } else {
        // Plain uploads only: under secure aggregation every upload is masked for a cohort of the
        // current version, quantized at --secagg-bits.
        if (typed('bits')) throw new ValidationError('--bits', 'sets the plain uploads’ quantization: with --secure-aggregation uploads are masked at --secagg-bits');
        if (typed('maxStaleness')) throw new ValidationError('--max-staleness', 'applies to plain uploads: with --secure-aggregation every cohort trains on the version current when it formed');
      }
      const noModel = () => new ValidationError('--catalog', `is required: ${database !== undefined ? 'the database' : (o.dataDir as string)} holds no model yet, and the first start builds it from the catalog (localrec serve --catalog catalog.json)`);
      const perMinute = o.rateLimit as number;
      const crash = process.env.LOCALREC_FAULT;
      // Test-only: LOCALREC_FAULT=hup-while-starting sends this process SIGHUP before the server
      // starts (test/unit/server-redeem.test.ts).
      // Only with --offers, whose SIGHUP handler is in place by now (without one, SIGHUP ends the process).
      if (crash === 'hup-while-starting' && typeof o.offers === 'string') process.kill(process.pid, 'SIGHUP');
      const server = await startServer({
        port: o.port as number,
        host: o.host as string,
        backlog: o.backlog as number,
        dataDir: o.dataDir as string,
        ...(database !== undefined ? { database } : {}),
        ...(initialTable ? { initialTable } : {}),
        minClients: o.minClients as number,
        clip: o.clip as number,
        noiseMultiplier: o.noise as number,
        maxStaleness: o.maxStaleness as number,
        ...(o.bits !== undefined ? { bits: o.bits as number } : {}),
        aggregator: o.aggregator as 'fedavg',
        ...(o.subspaceScale !== undefined ? { subspaceScale: o.subspaceScale as number } : {}),
        robust: o.robust as 'mean',
        trimFraction: o.trim as number,
        denoise: o.denoise as 'none',
        ...(o.trainRows !== undefined ? { trainRows: o.trainRows as number } : {}),
        ...(o.freezeBiases ? { trainBiases: false } : {}),
        ...(o.discardPending ? { discardPending: true } : {}),
        ...(o.secureAggregation
          ? {
              secureAggregation: {
                ...(o.secaggBits !== undefined ? { bits: o.secaggBits as number } : {}),
                ...(o.secaggRange !== undefined ? { range: o.secaggRange as number } : {}),
                ...(o.secaggDegree !== undefined ? { degree: o.secaggDegree as number } : {}),
                ...(o.secaggSurvivors !== undefined ? { minSurvivors: o.secaggSurvivors as number } : {}),
                timeoutMs: Math.round((o.cohortTimeout as number) * 1000),
                ...(o.uploadTimeout !== undefined ? { uploadTimeoutMs: Math.round((o.uploadTimeout as number) * 1000) } : {}),
              },
            }
          : {}),
        rateLimit: perMinute > 0 ? { perMinute, burst: Math.max(1, Math.ceil(perMinute / 3)) } : false,
        ...(o.trustProxy ? { trustProxy: true } : {}),
        ...(typeof o.static === 'string' ? { staticDir: o.static } : {}),
        ...(offers ? { offers, ...(o.offersAllowOlder ? { offersAllowOlder: true } : {}) } : {}),
        ...(Array.isArray(o.corsOrigin) ? { corsOrigins: o.corsOrigin as string[] } : {}),
        ...(o.metrics ? { metrics: true } : {}),
        keepModels: o.keepModels as number,
        logFormat: json ? 'json' : 'text',
        // Test-only: LOCALREC_FAULT=kill-before-publish-commit kills the process inside the publish
        // transaction, to prove that a crash there loses nothing (test/unit/server-crash.test.ts).
        ...(crash === 'kill-before-publish-commit'
          ? { sqlite: { beforeCommit: (what: string) => void (what === 'publish' && process.kill(process.pid, 'SIGKILL')) } }
          : {}),
      }).catch((e: unknown) => {
        process.off('SIGHUP', hup);
        // A data dir without a database (createServer refuses it before opening the store, which
        // would leave an empty database behind), or a store that holds no model: the catalog is
        // what is missing, said in the flag's words.
        if (typeof o.catalog !== 'string' && e instanceof ValidationError && e.field === 'options.initialTable') throw noModel();
        // An offer catalog older than the store's newest: said in the flags' words.
        if (e instanceof ValidationError && e.field === 'options.offers') throw new ValidationError('--offers', e.message.replace(/^options\.offers: /, '').replace('options.offersAllowOlder', '--offers-allow-older'));
        throw e;
      });
      const cfg = server.rounds.config;
      const sa = cfg.secureAggregation;
      const uploads = sa ? `secure aggregation: cohorts of ${sa.cohortSize}, ${sa.bits}-bit masked updates, step ${sa.step.toPrecision(3)}, ${sa.degree} mask neighbours${(sa.minSurvivors ?? sa.cohortSize) < sa.cohortSize ? `, recovered from ${sa.minSurvivors} survivors` : ''}` : `${cfg.bits}-bit updates, min ${cfg.minClients} clients`;
      say(
        `localrec serve listening on ${server.url} (version ${server.rounds.version}, ${cfg.itemCount} items × ${cfg.dim}, ${uploads}, ${cfg.aggregator}${cfg.robust === 'mean' ? '' : ` on the ${cfg.robust}${cfg.robust === 'trimmed-mean' ? ` (β ${cfg.trimFraction})` : ''}`}${cfg.denoise && cfg.denoise !== 'none' ? `, denoise ${cfg.denoise}` : ''})`,
        { event: 'listening', url: server.url, version: server.rounds.version, metrics: !!o.metrics },
      );
      const storage = server.rounds.storage;
      say(`store: ${storage instanceof PostgresStorage ? `PostgreSQL ${storage.url} (shared: other processes may serve from it)` : storage instanceof SqliteStorage ? `SQLite ${storage.path}` : 'memory'}`, { event: 'store' });
      if (offers) {
        const c = offers.catalog;
        say(`offers: catalog version ${c.version}, ${c.offers.length} offers, signature verified; redemption checks at POST /v1/offers/redeem`, { event: 'offers', version: c.version });
        // SIGHUP re-reads --offers (and --offers-key): a withdrawn offer stops being redeemable
        // without a restart. One reload at a time; a file that fails keeps the catalog in use. A
        // reload never takes an older catalog: --offers-allow-older applies to the start only (a
        // rollback is deliberate; an older file deployed by mistake later must not pass with it).
        const offersFile = o.offers as string;
        const keyFile = o.offersKey as string;
        const note = (line: string, fields: import('./rounds.js').LogFields) =>
          process.stderr.write(`${json ? jsonLogLine(line, fields, Date.now()) : `localrec serve: ${line}`}\n`);
        let reloading: Promise<void> = Promise.resolve();
        onHup = () => {
          reloading = reloading.then(() => reloadOffers(offers, offersFile, keyFile, storage, false, note));
        };
        if (hupWhileStarting) onHup();
      }
      const { syncsWithinBudget } = await import('../federated/dp.js');
      say(budgetNote(cfg.noiseMultiplier, cfg.noiseMultiplier > 0 ? syncsWithinBudget(cfg.noiseMultiplier, 8) : 0), { event: 'privacy-budget' });
      // Graceful (see RunningServer.close): in-flight requests are answered before the store closes.
      const stop = (signal: NodeJS.Signals) => {
        server.close(signal).then(
          () => process.exit(0),
          (e: Error) => {
            process.stderr.write(json ? `${jsonLogLine(`shutting down: ${e.message}`, { event: 'stop-failed', level: 'error' }, Date.now())}\n` : `localrec serve: shutting down: ${e.message}\n`);
            process.exit(1);
          },
        );
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
}

/** Reads and verifies the signed offer catalog `offersFile` against the key(s) in `keyFile` (a JWK or an array of JWKs). */
async function readOffers(offersFile: string, keyFile: string): Promise<import('../offers/types.js').OfferCatalog> {
  const { readFile } = await import('node:fs/promises');
  const { verifyOfferCatalog } = await import('../offers/signing.js');
  const read = async (file: string, flag: string) => {
    try {
      return parseJsonText(await readFile(file, 'utf8'));
    } catch (e) {
      throw new ValidationError(flag, `cannot read ${file} as JSON: ${oneLine((e as Error).message)}`);
    }
  };
  const signed = await read(offersFile, '--offers');
  const key = await read(keyFile, '--offers-key');
  if (Array.isArray(key) && key.length === 0) throw new ValidationError('--offers-key', `${keyFile} holds an empty array: give the public JWK, or an array of them`);
  return verifyOfferCatalog(signed, key as import('../offers/types.js').Jwk | import('../offers/types.js').Jwk[]);
}

/**
 * `localrec serve`'s SIGHUP: reads `--offers` (and `--offers-key`) again and, when the catalog
 * verifies and is not older than the newest the store has loaded (unless `allowOlder`, which
 * `localrec serve` never sets: --offers-allow-older applies to the start only), answers
 * redemptions from it; logs the version change, or why the file was refused (the catalog in use
 * stays). Never throws.
 */
export async function reloadOffers(
  offers: import('./redeem.js').RedeemCatalog,
  offersFile: string,
  keyFile: string,
  storage: Pick<import('./storage.js').Storage, 'readMeta' | 'writeMeta' | 'writeMetaIf'>,
  allowOlder: boolean,
  log: (line: string, fields: import('./rounds.js').LogFields) => void,
): Promise<void> {
  const before = offers.catalog;
  try {
    const next = await readOffers(offersFile, keyFile);
    const { previous } = await offers.install(next, storage, { allowOlder, field: '--offers', allowFlag: allowOlder ? '--offers-allow-older' : '--offers-allow-older at a restart (a reload never takes an older catalog)' });
    const change = previous.version === next.version ? `version ${next.version} (issued ${new Date(next.issuedAt).toISOString()}) again` : `version ${previous.version} → ${next.version}`;
    log(`offers: reloaded ${offersFile}: catalog ${change}, ${next.offers.length} offers, signature verified`, { event: 'offers-reloaded', from: previous.version, version: next.version });
  } catch (e) {
    log(`offers: reload of ${offersFile} refused, still checking redemptions against catalog version ${before.version}: ${oneLine((e as Error).message)}`, {
      event: 'offers-reload-failed',
      level: 'error',
      version: before.version,
    });
  }
}

/**
 * The startup line on what the server's σ means for devices with the SDK's default budget
 * (ε = 8, δ = 1e-5), given the syncs {@link syncsWithinBudget} allows at it.
 */
export function budgetNote(noiseMultiplier: number, syncs: number): string {
  if (noiseMultiplier === 0) return 'σ = 0: updates carry no noise, so devices with a finite ε budget refuse to send';
  const n = syncs === 0 ? 'cannot sync even once' : `can sync ${syncs} time${syncs === 1 ? '' : 's'}`;
  return `at σ = ${noiseMultiplier} a device ${n} within ε = 8 (δ = 1e-5, the SDK's default budget)${syncs === 0 ? '; raise --noise' : ''}; \`localrec privacy --syncs T\` gives the σ for T syncs`;
}

/**
 * Ranges the server's own checks would report in its option names (`options.secureAggregation.timeoutMs`,
 * in milliseconds), or not at all (a port out of range is a RangeError from Node): checked here in
 * the flags' words and units.
 */
function checkServeFlags(o: Record<string, unknown>): void {
  if (o.logFormat !== 'text' && o.logFormat !== 'json') throw new ValidationError('--log-format', `must be 'text' or 'json', got '${String(o.logFormat)}'`);
  const port = o.port as number;
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) throw new ValidationError('--port', `must be 0..65535 (0 = any free port), got ${port}`);
  const backlog = o.backlog as number;
  if (!(Number.isInteger(backlog) && backlog >= 1)) throw new ValidationError('--backlog', `must be a whole number ≥ 1, got ${backlog}`);
  const dim = o.dim as number;
  if (!(Number.isInteger(dim) && dim >= 1 && dim <= 64)) throw new ValidationError('--dim', `must be a whole number from 1 to 64, got ${dim}`);
  const noise = o.noise as number;
  if (!(Number.isFinite(noise) && noise >= 0)) throw new ValidationError('--noise', `must be a number ≥ 0 (0 = no noise), got ${noise}`);
  for (const flag of ['cohortTimeout', 'uploadTimeout'] as const) {
    const v = o[flag] as number | undefined;
    if (v !== undefined && !(Number.isFinite(v) && v >= 0.001 && v <= 86_400)) {
      throw new ValidationError(flag === 'cohortTimeout' ? '--cohort-timeout' : '--upload-timeout', `must be a number of seconds from 0.001 to 86400 (a day; devices refuse longer), got ${v}`);
    }
  }
  if (typeof o.static === 'string' && !statSync(o.static, { throwIfNoEntry: false })?.isDirectory()) {
    throw new ValidationError('--static', `${o.static} is not a folder`);
  }
}

