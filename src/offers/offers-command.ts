/**
 * CLI for offers: `localrec offers keygen|sign|fit-affinity` and `localrec offers-eval`. Node-only imports stay
 * inside the actions so `localrec --help` loads nothing heavy.
 */
import type { Command } from 'commander';
import { isSignatureError, ValidationError } from '../errors.js';
import { numberFlag, seedFlag } from '../number-flag.js';
import { oneLine } from '../options.js';
import { checkOutputFile, checkOutputFolder, makeOutputFolder, parseJsonText, writeOutputFile, writeOutputFiles } from '../output-file.js';

const GRANULARITIES = ['items', 'groups', 'categories'] as const;

export function register(program: Command): void {
  const offers = program.command('offers').description('Make signing keys, fit the affinity snapshot and sign offer catalogs (ECDSA P-256).');

  offers
    .command('keygen')
    .description('Write a new key pair: private.jwk (keep on the shop server) and public.jwk (give to the page: createRecommender({ offers: { publicKey } }); setOffers takes the signed catalog).')
    .requiredOption('--out <dir>', 'folder to write private.jwk and public.jwk into (refused if either exists)')
    .action(async (o: { out: string }) => {
      const { access } = await import('node:fs/promises');
      checkOutputFolder(o.out, '--out');
      const { join } = await import('node:path');
      const files = [join(o.out, 'private.jwk'), join(o.out, 'public.jwk')];
      // Never replace a key pair: every device trusts the old public key, so catalogs signed with a
      // new private key would be refused everywhere (and an existing file keeps its permissions).
      for (const f of files) {
        const exists = await access(f).then(
          () => true,
          () => false,
        );
        if (exists) throw new ValidationError('--out', `${f} already exists; keygen never overwrites a key (move it away first, or choose another folder)`);
      }
      const { generateOfferKeys } = await import('./signing.js');
      const { publicJwk, privateJwk } = await generateOfferKeys();
      // A failure names --out and the system's reason (Node 20's recursive mkdir says ENOENT for a read-only place).
      makeOutputFolder(o.out, '--out');
      // Both or neither: a private key without its public half would make every later keygen refuse
      // the folder. Each is written to a temporary file first, then both are moved into place, never
      // over a file that appeared meanwhile. The private key is 0600, created here: it signs every
      // catalog the devices will trust.
      await writeOutputFiles(
        [
          { path: files[0]!, data: `${JSON.stringify(privateJwk, null, 2)}\n`, flag: '--out', mode: 0o600 },
          { path: files[1]!, data: `${JSON.stringify(publicJwk, null, 2)}\n`, flag: '--out' },
        ],
        { exclusive: true },
      );
      process.stderr.write(`wrote ${files[0]} and ${files[1]}\n`);
    });

  offers
    .command('sign')
    .description('Validate an offer catalog and sign it with the private key.')
    .requiredOption('--key <file>', 'private key (JWK) from `offers keygen`')
    .requiredOption('--catalog <file>', 'offer catalog JSON { version, issuedAt, currency, offers }')
    .requiredOption('--out <file>', 'where to write the signed catalog')
    .option('--kid <id>', "key id to put in the signed envelope (devices then verify only with the trusted key of that kid: give every published key a kid)")
    .option('--ttl-hours <n>', 'the catalog expires this many hours from now (sets catalog.expiresAt, signed; and issuedAt to now: each re-sign is a new publication): devices refuse it, and show none of its offers, from a day after that; re-sign before then')
    .action(async (o: { key: string; catalog: string; out: string; kid?: string; ttlHours?: string }) => {
      const { readFile } = await import('node:fs/promises');
      // Before reading anything: a typo here is the command's own mistake.
      const ttlHours = o.ttlHours === undefined ? undefined : numberFlag('--ttl-hours', o.ttlHours, (n) => n > 0 && n <= MAX_TTL_HOURS, `a number of hours > 0 and at most ${MAX_TTL_HOURS} (10 years)`);
      // The key is lost for good if the signed catalog replaces it (keygen never overwrites one);
      // checkOutputFile also refuses any other key file.
      checkOutputFile(o.out, '--out', { '--key': o.key, '--catalog': o.catalog });
      const { signOfferCatalog } = await import('./signing.js');
      const key = await readJson(readFile, o.key, '--key');
      let catalog = unsigned(await readJson(readFile, o.catalog, '--catalog'), o.catalog, '--catalog');
      if (ttlHours !== undefined) catalog = withTtl(catalog, ttlHours, Date.now());
      const signed = await signOfferCatalog(catalog as never, key as import('./types.js').Jwk, o.kid !== undefined ? { kid: o.kid } : {}).catch((e: unknown) => {
        // The key file is the flag's: name it, not only what WebCrypto said.
        if (isSignatureError(e) && e.problem === 'bad-key') throw new ValidationError('--key', `${o.key}: ${e.message}`);
        throw e;
      });
      await writeOutputFile(o.out, `${JSON.stringify(signed, null, 2)}\n`, '--out');
      const expires = signed.catalog.expiresAt !== undefined ? `, expires ${new Date(signed.catalog.expiresAt).toISOString()}` : ' (no expiresAt: consider --ttl-hours)';
      process.stderr.write(`signed ${signed.catalog.offers.length} offers, version ${signed.catalog.version}${expires} → ${o.out}\n`);
    });

  offers
    .command('fit-affinity')
    .description("Learn the offer affinity from the shop's orders and add it to a catalog (catalog.affinity); sign the result with `offers sign`.")
    .requiredOption('--data <file>', 'orders as invoice lines, online-retail CSV (.csv or .csv.gz): invoice, stock code, description, quantity, time, price, customer')
    .requiredOption('--catalog <file>', 'offer catalog JSON { version, issuedAt, currency, offers }')
    .requiredOption('--out <file>', 'where to write the catalog with its affinity snapshot (unsigned)')
    .option('--min-customers <n>', 'publish no statistics for an offer fewer than this many distinct customers bought (privacy)', '10')
    .action(async (o: { data: string; catalog: string; out: string; minCustomers: string }) => {
      const { readFile } = await import('node:fs/promises');
      checkOutputFile(o.out, '--out', { '--data': o.data, '--catalog': o.catalog });
      const minCustomers = int(o.minCustomers, '--min-customers', 1, 1_000_000);
      const { loadRetailData } = await import('./eval/retail-data.js');
      const { fitAffinity } = await import('./eval/fit-affinity.js');
      const { validateOfferCatalog } = await import('./validate-catalog.js');
      // Strict currency, as `offers sign` checks it: refused now, not after the fit.
      const catalog = validateOfferCatalog(unsigned(await readJson(readFile, o.catalog, '--catalog'), o.catalog, '--catalog'), 'catalog', { strictCurrency: true });
      // An order from the future would become the latest order, and the recent popularity, decayed
      // from it, would shrink for every offer: refused, naming the line (a day's slack for clocks).
      const data = await loadRetailData(o.data, undefined, '--data', { notAfter: Date.now() + 86_400_000 });
      const fit = fitAffinity(data, catalog, { minCustomers });
      // A new publication: issued now, so that devices holding the same version's earlier
      // affinity take this one and refuse the earlier one replayed (setOffers).
      // (Never before the input's own time: a device holding the input would refuse this one.)
      await writeOutputFile(o.out, `${JSON.stringify({ ...fit.catalog, issuedAt: Math.max(Date.now(), catalog.issuedAt + 1) }, null, 2)}\n`, '--out');
      process.stderr.write(
        `learned from ${fit.baskets} orders of ${fit.customers} customers (${fit.basketsWithOffer} touch an offer) → ${o.out} (${fit.catalog.offers.length} offers, ${fit.catalog.affinity!.features.length} features)\n`,
      );
      if (fit.baskets < FEW_ORDERS || fit.customers < FEW_CUSTOMERS) {
        process.stderr.write(
          `warning: only ${fit.baskets} orders of ${fit.customers} customers (fewer than ${FEW_ORDERS} orders or ${FEW_CUSTOMERS} customers): ${fit.offersBelowMinCustomers.length} of ${fit.catalog.offers.length} offers were bought by fewer than ${minCustomers} customers and publish no statistics; consider waiting for more orders before publishing\n`,
        );
      } else if (fit.offersBelowMinCustomers.length) {
        process.stderr.write(`${fit.offersBelowMinCustomers.length} offer(s) bought by fewer than ${minCustomers} customers publish no statistics (scored as never bought)\n`);
      }
      if (fit.offersWithoutOrders.length) {
        process.stderr.write(
          `warning: no order touched ${fit.offersWithoutOrders.length} offer(s), learned as never bought: ${fit.offersWithoutOrders.slice(0, 10).join(', ')}${fit.offersWithoutOrders.length > 10 ? ', …' : ''}. ` +
            `Categories are matched through the ones derived from the descriptions (${[...new Set(data.items.map((i) => i.category))].sort().slice(0, 12).join(', ')}, …): check the offers' category names\n`,
        );
      }
    });

  program
    .command('offers-eval')
    .description('Replay Online Retail baskets in time order; compare personalized, one-size-fits-all and random offers (one JSON line each).')
    .requiredOption('--data <file>', 'online-retail.csv.gz (or .csv)')
    .option('--k <n>', 'offers shown before each basket (1–20)', '2')
    .option('--seed <n>', 'seed for exploration and the random policy', '1')
    .option('--granularity <g>', `offer scope: ${GRANULARITIES.join(' | ')}`, 'items')
    .option('--groups <n>', 'how many products or product groups get an offer (granularity items or groups)', '200')
    .option('--percent <n>', 'percent off the in-scope spend', '10')
    .option('--exploration <x>', 'exploration share of the personalized policy, 0–1', '0.1')
    .option('--affinity <a>', 'personalized affinity: learned (online logistic regression) | history (hand-tuned blend)', 'learned')
    .option('--objective <o>', 'personalized ranking: value (expected value to the shop) | reach (P(use) alone)', 'value')
    .option('--prior-strength <s>', "pseudo-impressions the affinity is worth against the shopper's own offer history (policy default 10)")
    .option('--bounds', 'also print one JSON line of upper bounds (clairvoyant, repeat-of-bought, best fixed personal list in hindsight)')
    .option('--features <list>', 'comma-separated learned affinity features (default: all but transition and coPurchase, which a device snapshot cannot carry)')
    .option('--publish-every-days <d>', 'learned: the shop re-publishes its affinity snapshot every d days (0: before every basket)', '1')
    .option('--min-customers <n>', 'learned: the published snapshot leaves out offers fewer than this many customers bought (as fit-affinity)', '10')
    .option('--basket-gap-minutes <m>', "learned: the device groups a customer's purchases this close into one basket", '30')
    .action(async (o: { data: string; k: string; seed: string; granularity: string; groups: string; percent: string; exploration: string; affinity: string; features?: string; priorStrength?: string; objective: string; bounds?: boolean; publishEveryDays: string; basketGapMinutes: string; minCustomers: string }, command: Command) => {
      const { loadRetailData } = await import('./eval/retail-data.js');
      const { runOffersEval, offersBounds, buildRetailOffers, DEFAULT_EVAL_OPTIONS, AFFINITY_KINDS } = await import('./eval/offers-eval.js');
      const { AFFINITY_FEATURES, TABLE_FEATURES } = await import('./affinity-model.js');
      if (!(AFFINITY_KINDS as readonly string[]).includes(o.affinity)) {
        throw new ValidationError('--affinity', `must be one of ${AFFINITY_KINDS.join(', ')}, got '${o.affinity}'`);
      }
      if (o.objective !== 'value' && o.objective !== 'reach') throw new ValidationError('--objective', `must be value or reach, got '${o.objective}'`);
      if (o.affinity !== 'learned') {
        // These shape the learned affinity only: with the other one they would do nothing.
        const flag = command.options.find((f) => ['features', 'publishEveryDays', 'basketGapMinutes', 'minCustomers'].includes(f.attributeName()) && command.getOptionValueSource(f.attributeName()) === 'cli');
        if (flag) throw new ValidationError(flag.long!, `applies to --affinity learned only (got ${o.affinity})`);
      }
      const features = o.features === 'all' ? [...AFFINITY_FEATURES] : o.features?.split(',').map((f) => f.trim()).filter((f) => f !== '');
      // An empty list would learn from the intercept alone: every offer scored alike, nothing said.
      if (features?.length === 0) throw new ValidationError('--features', `is empty: name at least one feature (known: ${AFFINITY_FEATURES.join(', ')}), or 'all'; leave --features out for the default`);
      const unknown = features?.find((f) => !(AFFINITY_FEATURES as readonly string[]).includes(f));
      if (unknown !== undefined) throw new ValidationError('--features', `unknown feature '${unknown}'; known: ${AFFINITY_FEATURES.join(', ')}`);
      const table = features?.find((f) => (TABLE_FEATURES as readonly string[]).includes(f));
      if (table !== undefined && o.affinity === 'learned') {
        throw new ValidationError('--features', `'${table}' needs item → offer tables, which the published snapshot (what the device gets) does not carry`);
      }
      if (!(GRANULARITIES as readonly string[]).includes(o.granularity)) {
        throw new ValidationError('--granularity', `must be one of ${GRANULARITIES.join(', ')}, got '${o.granularity}'`);
      }
      // One offer per derived category, however many: --groups would do nothing.
      if (o.granularity === 'categories' && command.getOptionValueSource('groups') === 'cli') {
        throw new ValidationError('--groups', `applies to --granularity items or groups only (got ${o.granularity})`);
      }
      const opts = {
        ...DEFAULT_EVAL_OPTIONS,
        k: int(o.k, '--k', 1, 20),
        seed: seedFlag('--seed', o.seed),
        granularity: o.granularity as (typeof GRANULARITIES)[number],
        groups: int(o.groups, '--groups', 1, 100_000),
        percent: num(o.percent, '--percent', 0.01, 100),
        exploration: num(o.exploration, '--exploration', 0, 1),
        objective: o.objective as 'value' | 'reach',
        affinity: o.affinity as (typeof AFFINITY_KINDS)[number],
        ...(o.priorStrength !== undefined ? { priorStrength: num(o.priorStrength, '--prior-strength', 0, 1e6) } : {}),
        ...(features ? { features: features as (typeof AFFINITY_FEATURES)[number][] } : {}),
        publishEveryDays: num(o.publishEveryDays, '--publish-every-days', 0, 3650),
        basketGapMinutes: num(o.basketGapMinutes, '--basket-gap-minutes', 0, 1_000_000),
        minCustomers: int(o.minCustomers, '--min-customers', 1, 1_000_000),
        onProgress: (done: number, total: number) => process.stderr.write(`replay ${done}/${total} baskets\n`),
      };
      const data = await loadRetailData(o.data, (n) => process.stderr.write(`read ${n} rows\n`), '--data');
      process.stderr.write(`kept ${data.rows.kept}/${data.rows.read} rows, ${data.baskets.length} baskets, ${data.items.length} items\n`);
      const offers = buildRetailOffers(data, opts);
      for (const r of runOffersEval(data, { ...opts, offers })) process.stdout.write(`${JSON.stringify(r)}\n`);
      if (o.bounds) process.stdout.write(`${JSON.stringify({ bounds: offersBounds(data, offers, opts.k) })}\n`);
    });
}

/** Longest `offers sign --ttl-hours`: 10 years (a catalog meant never to expire leaves the flag out). */
const MAX_TTL_HOURS = 87_600;

/** Below these, fit-affinity warns: the `--min-customers` threshold then drops most offers. */
const FEW_ORDERS = 1000;
const FEW_CUSTOMERS = 100;

async function readJson(readFile: (p: string, enc: 'utf8') => Promise<string>, path: string, option: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    throw new ValidationError(option, `cannot read ${path}: ${(cause as Error).message}`);
  }
  try {
    return parseJsonText(text);
  } catch (cause) {
    throw new ValidationError(option, `${path} is not JSON: ${oneLine((cause as Error).message)}`);
  }
}

/**
 * The catalog itself, not `offers sign`'s output: an envelope would fail validation as a catalog
 * with no version, which says nothing about the actual mistake.
 */
function unsigned(value: unknown, path: string, option: string): unknown {
  if (typeof value === 'object' && value !== null && 'alg' in value && 'signature' in value) {
    throw new ValidationError(option, `${path} is already signed (an { alg, catalog, signature } envelope); give the unsigned catalog (the envelope's "catalog" field)`);
  }
  return value;
}

function int(s: string, option: string, min: number, max: number): number {
  return numberFlag(option, s, (n) => Number.isInteger(n) && n >= min && n <= max, `an integer from ${min} to ${max}`);
}
function num(s: string, option: string, min: number, max: number): number {
  return numberFlag(option, s, (n) => Number.isFinite(n) && n >= min && n <= max, `a number from ${min} to ${max}`);
}

/**
 * What `offers sign --ttl-hours` signs: `catalog` expiring `ttlHours` after `now`, and issued at
 * `now` (never before the file's own `issuedAt`, plus 1 ms when that is not in the past). A
 * re-sign is a new publication: a device holding yesterday's signing of the same file takes
 * today's (a later `issuedAt`) and refuses yesterday's replayed, where the same `issuedAt` with
 * another `expiresAt` would be the same publication with other contents.
 *
 * @example
 * ```ts
 * withTtl({ version: 5, issuedAt: 0, currency: 'GBP', offers: [] }, 48, now);
 * // { version: 5, issuedAt: now, expiresAt: now + 48 h, currency: 'GBP', offers: [] }
 * ```
 */
export function withTtl(catalog: unknown, ttlHours: number, now: number): unknown {
  if (typeof catalog !== 'object' || catalog === null || Array.isArray(catalog)) throw new ValidationError('catalog', 'must be an object { version, issuedAt, currency, offers }');
  const given = (catalog as { issuedAt?: unknown }).issuedAt;
  // A bad issuedAt is left for validation to name.
  const issuedAt = typeof given === 'number' && Number.isFinite(given) ? Math.max(now, given + 1) : given;
  return { ...catalog, issuedAt, expiresAt: Math.round(now + ttlHours * 3_600_000) };
}
