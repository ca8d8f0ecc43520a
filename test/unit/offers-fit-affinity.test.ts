import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { Command } from 'commander';
import { isValidationError } from '../../src/errors.js';
import { predictAffinity } from '../../src/offers/affinity-model.js';
import { fitAffinity } from '../../src/offers/eval/fit-affinity.js';
import { loadRetailData } from '../../src/offers/eval/retail-data.js';
import { register } from '../../src/offers/offers-command.js';
import { verifyOfferCatalog } from '../../src/offers/signing.js';
import type { OfferCatalog } from '../../src/offers/types.js';

const T0 = 1_291_191_960; // seconds, as in the shared Online Retail file
const CSV = [
  'invoice,stock_code,description,quantity,timestamp,unit_price,customer_id,country',
  `1,100,RED MUG,2,${T0},2.5,A,United Kingdom`,
  `1,85099B,"JUMBO BAG RED RETROSPOT, LARGE",1,${T0},1.95,A,United Kingdom`,
  `2,200,VANILLA CANDLE,1,${T0 + 86_400},3,B,United Kingdom`,
  `C9,100,RED MUG,-1,${T0 + 86_500},2.5,B,United Kingdom`, // a cancellation: not an order
  `3,100,RED MUG,1,${T0 + 2 * 86_400},2.5,A,United Kingdom`,
  `4,85099B,"JUMBO BAG RED RETROSPOT, LARGE",3,${T0 + 3 * 86_400},1.95,C,United Kingdom`,
].join('\n');
const CATALOG: OfferCatalog = {
  version: 7,
  issuedAt: T0 * 1000,
  currency: 'GBP',
  offers: [
    { id: 'mug', title: '10% off the red mug', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'items', itemIds: ['100'] } },
    { id: 'candle', title: '10% off candles', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'items', itemIds: ['200'] } },
    { id: 'bags', title: '£1 off bags', discount: { kind: 'amount', amount: 1 }, scope: { kind: 'categories', categories: ['bag'] } },
    { id: 'lamps', title: '10% off lamps', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'categories', categories: ['lamp'] } },
  ],
};

describe('localrec offers fit-affinity', () => {
  let dir: string;
  const path = (name: string) => join(dir, name);
  const cli = async (...args: string[]) => {
    const program = new Command().exitOverride();
    register(program);
    await program.parseAsync(['node', 'localrec', ...args]);
  };
  /** {@link cli}, and what it wrote to stderr (its warnings). */
  const cliWarnings = async (...args: string[]): Promise<string> => {
    const write = process.stderr.write.bind(process.stderr);
    let err = '';
    process.stderr.write = ((s: string) => ((err += s), true)) as typeof process.stderr.write;
    try {
      await cli(...args);
    } finally {
      process.stderr.write = write;
    }
    return err;
  };
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fit-affinity-'));
    await writeFile(path('orders.csv.gz'), gzipSync(CSV));
    await writeFile(path('offers.json'), JSON.stringify(CATALOG));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('learns per-offer statistics from the orders and writes the catalog with its snapshot, issued now, unchanged otherwise', async () => {
    const started = Date.now();
    // Three customers: only --min-customers 1 publishes anything (the default is 10).
    await cli('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('offers.json'), '--out', path('with-affinity.json'), '--min-customers', '1');
    const out = JSON.parse(await readFile(path('with-affinity.json'), 'utf8')) as OfferCatalog;
    const { affinity, issuedAt, ...rest } = out;
    const { issuedAt: inputIssuedAt, ...input } = CATALOG;
    assert.deepEqual(rest, input);
    // A new publication of the same version: stamped when it was fitted, never before its input.
    assert.ok(issuedAt > inputIssuedAt && issuedAt >= started && issuedAt <= Date.now(), `issuedAt ${issuedAt}`);
    assert.ok(affinity);
    // 4 orders (the cancellation is dropped): the mug is in orders 1 and 3, the candle in 2, a bag in 1 and 4.
    assert.equal(affinity.offers.mug!.popularity, 2 / 4);
    assert.equal(affinity.offers.candle!.popularity, 1 / 4);
    assert.equal(affinity.offers.bags!.popularity, 2 / 4);
    assert.ok(!Object.hasOwn(affinity.offers, 'lamps'), 'never bought: not published (scored as never bought)');
    // Repeat: A's order 3 follows an order with the mug and a bag: the mug came back, the bag did not (Beta(1, 3) prior).
    assert.equal(affinity.offers.mug!.repeatRate, (1 + 1) / (1 + 4));
    assert.equal(affinity.offers.bags!.repeatRate, (0 + 1) / (1 + 4));
    assert.equal(affinity.offers.candle!.repeatRate, 1 / 4);
    for (const st of Object.values(affinity.offers)) for (const v of [st.popularity, st.recentPopularity, st.repeatRate]) assert.equal(v, Number(v.toPrecision(2)));
    for (const w of affinity.weights) assert.equal(w, Number(w.toPrecision(3)));
    // Recent popularity weighs the later orders more: the bag (orders 1 and 4) beats the mug (1 and 3).
    assert.ok(affinity.offers.bags!.recentPopularity > affinity.offers.mug!.recentPopularity);
    assert.equal(affinity.weights.length, affinity.features.length + 1);
    assert.ok(!affinity.features.includes('transition') && !affinity.features.includes('coPurchase'));
    // The same as fitting in process.
    const fit = fitAffinity(await loadRetailData(path('orders.csv.gz')), CATALOG, { minCustomers: 1 });
    assert.deepEqual(out, { ...fit.catalog, issuedAt });
    // No order touched the lamps: said, since a device might see them bought (a category name the descriptions do not give).
    assert.deepEqual(fit.offersWithoutOrders, ['lamps']);
    assert.deepEqual(fit.offersBelowMinCustomers, []);
  });

  test('by default an offer fewer than 10 customers bought publishes nothing, and a small log is warned about', async () => {
    const err = await cliWarnings('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('offers.json'), '--out', path('default-threshold.json'));
    const out = JSON.parse(await readFile(path('default-threshold.json'), 'utf8')) as OfferCatalog;
    // The candle was bought by customer B alone: its popularity 1/4 would name B's order.
    assert.deepEqual(out.affinity!.offers, {});
    assert.deepEqual(fitAffinity(await loadRetailData(path('orders.csv.gz')), CATALOG).offersBelowMinCustomers, ['mug', 'candle', 'bags']);
    assert.match(err, /^warning: only 4 orders of 3 customers \(fewer than 1000 orders or 100 customers\): 3 of 4 offers were bought by fewer than 10 customers and publish no statistics/m);
    await assert.rejects(
      cli('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('offers.json'), '--out', path('x.json'), '--min-customers', '0'),
      (e: unknown) => isValidationError(e) && e.field === '--min-customers',
    );
  });

  test('an order dated more than a day after now is refused, naming the file, line and column', async () => {
    const future = Math.floor(Date.now() / 1000) + 2 * 86_400;
    await writeFile(path('future.csv'), `${CSV}\n5,200,VANILLA CANDLE,1,${future},3,B,United Kingdom\n`);
    await assert.rejects(
      cli('offers', 'fit-affinity', '--data', path('future.csv'), '--catalog', path('offers.json'), '--out', path('x.json')),
      (e: unknown) => isValidationError(e) && e.field === 'future.csv:8:timestamp' && /after .*at most a day after now/.test(e.message),
    );
    // Within the day's slack (clocks differ): accepted.
    await writeFile(path('soon.csv'), `${CSV}\n5,200,VANILLA CANDLE,1,${future - 1.5 * 86_400},3,B,United Kingdom\n`);
    await cli('offers', 'fit-affinity', '--data', path('soon.csv'), '--catalog', path('offers.json'), '--out', path('x.json'));
  });

  test('the currency is checked as strictly as `offers sign` checks it, before the fit', async () => {
    // Well formed, accepted by Intl.NumberFormat, but no currency.
    await writeFile(path('xqq.json'), JSON.stringify({ ...CATALOG, currency: 'XQQ' }));
    await assert.rejects(
      cli('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('xqq.json'), '--out', path('x.json')),
      (e: unknown) => isValidationError(e) && e.field === 'catalog.currency' && /not in this platform's list of currencies/.test(e.message),
    );
    assert.throws(() => fitAffinity({ baskets: [], items: [], rows: { read: 0, kept: 0 } }, { ...CATALOG, currency: 'XQQ' }), (e: unknown) => isValidationError(e) && e.field === 'catalog.currency');
  });

  test('an --out that is an existing key file (JWK) is refused, by fit-affinity and sign; the key is left as it was', async () => {
    await cli('offers', 'keygen', '--out', path('keys-out'));
    await writeFile(path('copy-of-key.jwk'), await readFile(path('keys-out/private.jwk')));
    const before = await readFile(path('copy-of-key.jwk'), 'utf8');
    const refused = (e: unknown) => isValidationError(e) && e.field === '--out' && /holds a key \(JWK\); refusing to overwrite it/.test(e.message);
    for (const out of [path('copy-of-key.jwk'), path('keys-out/public.jwk')]) {
      await assert.rejects(cli('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('offers.json'), '--out', out), refused, out);
      await assert.rejects(cli('offers', 'sign', '--key', path('keys-out/private.jwk'), '--catalog', path('offers.json'), '--out', out), refused, out);
    }
    assert.equal(await readFile(path('copy-of-key.jwk'), 'utf8'), before);
    // Any other existing file is replaced as before.
    await writeFile(path('old-output.json'), '{"version":1}');
    await cli('offers', 'sign', '--key', path('keys-out/private.jwk'), '--catalog', path('offers.json'), '--out', path('old-output.json'));
  });

  test('warns, naming them, about offers no order touched', async () => {
    const err = await cliWarnings('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('offers.json'), '--out', path('with-affinity-2.json'));
    assert.match(err, /warning: no order touched 1 offer\(s\), learned as never bought: lamps\. Categories are matched through the ones derived from the descriptions \(bag, candle, mug/);
  });

  test('then `offers sign` signs it, and a device verifies the catalog with the snapshot and can predict', async () => {
    await cli('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('offers.json'), '--out', path('with-affinity.json'), '--min-customers', '1');
    await cli('offers', 'keygen', '--out', path('keys'));
    // A second keygen into the same folder would replace the key every device trusts: refused.
    const first = await readFile(path('keys/private.jwk'), 'utf8');
    assert.equal((await stat(path('keys/private.jwk'))).mode & 0o777, 0o600);
    await assert.rejects(cli('offers', 'keygen', '--out', path('keys')), (e: unknown) => isValidationError(e) && e.field === '--out' && /private\.jwk already exists; keygen never overwrites a key/.test(e.message));
    assert.equal(await readFile(path('keys/private.jwk'), 'utf8'), first, 'the key is unchanged');
    await cli('offers', 'sign', '--key', path('keys/private.jwk'), '--catalog', path('with-affinity.json'), '--out', path('signed.json'));
    const signed = JSON.parse(await readFile(path('signed.json'), 'utf8')) as unknown;
    const publicJwk = JSON.parse(await readFile(path('keys/public.jwk'), 'utf8')) as JsonWebKey;
    const catalog = await verifyOfferCatalog(signed, publicJwk);
    const fitted = JSON.parse(await readFile(path('with-affinity.json'), 'utf8')) as OfferCatalog;
    assert.deepEqual(catalog.affinity, fitted.affinity);
    const p = predictAffinity(catalog.affinity!, [], T0 * 1000 + 4 * 86_400_000, catalog.offers.map((o) => o.id));
    assert.deepEqual([...p.keys()], ['mug', 'candle', 'bags', 'lamps']);
    for (const v of p.values()) assert.ok(v > 0 && v < 1);
    assert.ok(p.get('mug')! > p.get('lamps')!, 'an offer bought before beats one nobody bought');
  });

  test('an --out naming an input (the private key, the catalog, the orders) is refused before any work, and the input is left as it was', async () => {
    const { symlink } = await import('node:fs/promises');
    await cli('offers', 'keygen', '--out', path('keys-own'));
    const key = path('keys-own/private.jwk');
    const before = await readFile(key, 'utf8');
    await symlink(key, path('key-link.jwk'));
    const same = (flag: string) => (e: unknown) => isValidationError(e) && e.field === '--out' && new RegExp(`^--out: is the same file as ${flag} \\(.*\\); refusing to overwrite an input$`).test(e.message);
    // The key would be lost for good (keygen never overwrites one, and every device trusts its public half).
    for (const out of [key, path('keys-own/./private.jwk'), path('key-link.jwk')]) {
      await assert.rejects(cli('offers', 'sign', '--key', key, '--catalog', path('offers.json'), '--out', out), same('--key'), out);
    }
    assert.equal(await readFile(key, 'utf8'), before, 'the private key is unchanged');
    await assert.rejects(cli('offers', 'sign', '--key', key, '--catalog', path('offers.json'), '--out', path('offers.json')), same('--catalog'));
    await assert.rejects(cli('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('offers.json'), '--out', path('offers.json')), same('--catalog'));
    await assert.rejects(cli('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('offers.json'), '--out', path('orders.csv.gz')), same('--data'));
    assert.deepEqual(JSON.parse(await readFile(path('offers.json'), 'utf8')), CATALOG);
  });

  test('offers-eval: an empty or blank number is refused naming the flag, not read as 0', async () => {
    for (const flag of ['--k', '--seed', '--groups', '--percent', '--exploration', '--prior-strength', '--publish-every-days', '--basket-gap-minutes']) {
      for (const blank of ['', ' ']) {
        await assert.rejects(
          cli('offers-eval', '--data', path('orders.csv.gz'), flag, blank),
          (e: unknown) => isValidationError(e) && e.field === flag && new RegExp(`^${flag}: must be an? (integer|number) from .+, got '${blank}'$`).test(e.message),
          `${flag} '${blank}'`,
        );
      }
    }
  });

  test('offers-eval: an empty --features is refused, not run with no features (the intercept alone)', async () => {
    // An empty list learned from the intercept alone: every offer scored alike.
    for (const features of ['', ' , ']) {
      await assert.rejects(
        cli('offers-eval', '--data', path('orders.csv.gz'), '--features', features),
        (e: unknown) => isValidationError(e) && e.field === '--features' && /^--features: is empty: name at least one feature \(known: .*popularity.*\), or 'all'/.test(e.message),
        `--features '${features}'`,
      );
    }
  });

  test('bad input is refused naming the option', async () => {
    // --features shapes the learned affinity only: with the hand-tuned one it would do nothing.
    await assert.rejects(
      cli('offers-eval', '--data', path('orders.csv.gz'), '--affinity', 'history', '--features', 'popularity'),
      (e: unknown) => isValidationError(e) && e.field === '--features' && /applies to --affinity learned only \(got history\)/.test(e.message),
    );
    await assert.rejects(
      cli('offers-eval', '--data', path('orders.csv.gz'), '--affinity', 'history', '--publish-every-days', '7'),
      (e: unknown) => isValidationError(e) && e.field === '--publish-every-days' && /applies to --affinity learned only/.test(e.message),
    );
    // One offer per category, however many: --groups would do nothing.
    await assert.rejects(
      cli('offers-eval', '--data', path('orders.csv.gz'), '--granularity', 'categories', '--groups', '5'),
      (e: unknown) => isValidationError(e) && e.field === '--groups' && /applies to --granularity items or groups only \(got categories\)/.test(e.message),
    );
    await writeFile(path('empty.csv'), 'invoice,stock_code,description,quantity,timestamp,unit_price,customer_id,country\nC1,100,RED MUG,-1,1291191960,2.5,A,UK\n');
    await assert.rejects(
      cli('offers', 'fit-affinity', '--data', path('empty.csv'), '--catalog', path('offers.json'), '--out', path('x.json')),
      (e: unknown) => isValidationError(e) && e.field === '--data' && /has no usable rows \(1 read/.test(e.message),
    );
    await writeFile(path('bad-catalog.json'), JSON.stringify({ ...CATALOG, offers: [{ id: 'x' }] }));
    await assert.rejects(
      cli('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('bad-catalog.json'), '--out', path('x.json')),
      (e: unknown) => isValidationError(e) && e.field === 'catalog.offers[0].title',
    );
    await assert.rejects(
      cli('offers', 'fit-affinity', '--data', path('orders.csv.gz'), '--catalog', path('missing.json'), '--out', path('x.json')),
      (e: unknown) => isValidationError(e) && e.field === '--catalog' && /cannot read/.test(e.message),
    );
    // A JSON mistake is one line, though V8 quotes the text around it with its line breaks.
    await cli('offers', 'keygen', '--out', path('keys-bad'));
    await writeFile(path('broken.json'), '{\n  "version": oops,\n  "offers": []\n}\n');
    await assert.rejects(
      cli('offers', 'sign', '--key', path('keys-bad/private.jwk'), '--catalog', path('broken.json'), '--out', path('x.json')),
      (e: unknown) => isValidationError(e) && e.field === '--catalog' && /broken\.json is not JSON: .*oops/.test(e.message) && !/[\r\n]/.test(e.message),
    );
    // offers sign's own output given again: said so, not "catalog.version: must be a finite number, got nothing".
    await cli('offers', 'sign', '--key', path('keys-bad/private.jwk'), '--catalog', path('offers.json'), '--out', path('signed-once.json'));
    for (const command of [['sign', '--key', path('keys-bad/private.jwk')], ['fit-affinity', '--data', path('orders.csv.gz')]]) {
      await assert.rejects(
        cli('offers', ...command, '--catalog', path('signed-once.json'), '--out', path('x.json')),
        (e: unknown) => isValidationError(e) && e.field === '--catalog' && /signed-once\.json is already signed \(an \{ alg, catalog, signature \} envelope\); give the unsigned catalog/.test(e.message),
        command[0],
      );
    }
  });
});
