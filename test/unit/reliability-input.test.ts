/**
 * Bad input, property-tested (fast-check, fixed seed, bounded runs): event validation, the offer
 * and item catalog validators, the CSV and lines loaders, and an Engine on fake-indexeddb fed a
 * random mix of valid and invalid events. Arbitrary input never throws anything but our typed
 * errors, whatever is accepted is clean (re-validates to itself), and the store holds exactly the
 * valid events afterwards.
 */
import 'fake-indexeddb/auto';
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { Engine } from '../../src/engine/engine.js';
import { isLocalrecError, isValidationError } from '../../src/errors.js';
import { loadCsv } from '../../src/eval/csv-loader.js';
import { loadLinesSplit } from '../../src/eval/lines-split.js';
import { EVENT_TYPES, validateEvent } from '../../src/events/schema.js';
import { validateCatalog } from '../../src/model/catalog.js';
import { validateOfferCatalog } from '../../src/offers/validate-catalog.js';
import '../../src/model/tf.js';

const SEED = 8;
const counts: Record<string, { tried: number; refused: number }> = {};
function tally(kind: string, refused: boolean): void {
  const c = (counts[kind] ??= { tried: 0, refused: 0 });
  c.tried++;
  if (refused) c.refused++;
}
after(() => {
  for (const [k, c] of Object.entries(counts)) process.stdout.write(`# bad-input ${k}: tried ${c.tried}, refused ${c.refused}\n`);
});

/** Runs f; true when it returned, false when it threw a typed localrec error; rethrows anything else. */
function typed(kind: string, f: () => void): boolean {
  try {
    f();
    tally(kind, false);
    return true;
  } catch (e) {
    if (!isLocalrecError(e)) throw e;
    tally(kind, true);
    return false;
  }
}
async function typedAsync(kind: string, f: () => Promise<void>): Promise<boolean> {
  try {
    await f();
    tally(kind, false);
    return true;
  } catch (e) {
    if (!isLocalrecError(e)) throw e;
    tally(kind, true);
    return false;
  }
}

const wild = fc.anything({
  withBigInt: true,
  withBoxedValues: true,
  withDate: true,
  withMap: true,
  withSet: true,
  withNullPrototype: true,
  withSparseArray: true,
  withTypedArray: true,
  withObjectString: true,
});
/** A value of any kind, biased to plausible ones. */
const cellValue = fc.oneof(
  fc.constant(undefined),
  fc.string({ maxLength: 300 }),
  fc.constantFrom('', ' ', 'sku-1', 'x'.repeat(257)),
  fc.double(),
  fc.integer({ min: -5, max: 2e6 }),
  fc.constantFrom(0, -0, 1, 5, 5.5, 1e6, 1e9, 1e10, Number.NaN, Infinity, -Infinity),
  fc.constantFrom(null, true, [], {}),
);

const NOW = Date.now();
const FIELDS: Record<string, string[]> = {
  view: ['itemId'],
  search: ['query', 'itemId'],
  add_to_cart: ['itemId', 'quantity'],
  remove_from_cart: ['itemId', 'quantity'],
  purchase: ['itemId', 'quantity', 'price'],
  rating: ['itemId', 'value'],
  offer_impression: ['offerId'],
  offer_redeemed: ['offerId'],
};
const goodValue: Record<string, fc.Arbitrary<unknown>> = {
  itemId: fc.constantFrom('p0', 'p1', 'p2', 'p9'),
  offerId: fc.constantFrom('o1', 'o2'),
  query: fc.constantFrom('mug', ' bag ', 'red shoes'),
  quantity: fc.integer({ min: 1, max: 9 }),
  price: fc.double({ min: 0, max: 500, noNaN: true }),
  value: fc.integer({ min: 0, max: 5 }),
  t: fc.integer({ min: NOW - 300 * 86_400_000, max: NOW }),
};
/** A valid event of a random type, then (half the time) one field replaced by a wild value or a typo. */
const eventLike = fc.constantFrom(...EVENT_TYPES).chain((type) =>
  fc
    .tuple(
      fc.record(Object.fromEntries(['t', ...FIELDS[type]!].map((k) => [k, goodValue[k]!])), { requiredKeys: type === 'rating' || type.startsWith('offer') || type === 'search' ? (FIELDS[type]!.filter((k) => k !== 'itemId' || type !== 'search')) : ['itemId'] }),
      fc.option(fc.tuple(fc.constantFrom('type', 't', 'itemId', 'itemID', 'query', 'quantity', 'price', 'value', 'offerId'), cellValue), { freq: 1 }),
    )
    .map(([fields, mutation]) => {
      const e: Record<string, unknown> = { type, ...fields };
      if (mutation) e[mutation[0]] = mutation[1];
      return e;
    }),
);

function cleanEvent(e: Record<string, unknown>): void {
  // What is accepted is clean: only primitive fields, re-validates to itself, survives structured clone.
  assert.deepEqual(validateEvent(e, NOW), e);
  for (const v of Object.values(e)) assert.ok(typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v)));
  assert.deepEqual(structuredClone(e), e);
}

test('property: validateEvent throws only ValidationError, and what it accepts re-validates to itself', () => {
  fc.assert(
    fc.property(fc.oneof(wild, eventLike), (input) => {
      let out: Record<string, unknown> | undefined;
      if (typed('events', () => void (out = validateEvent(input, NOW) as unknown as Record<string, unknown>))) cleanEvent(out!);
    }),
    { seed: SEED, numRuns: 4000 },
  );
  assert.ok(counts.events!.tried - counts.events!.refused > 50, 'the generator reaches valid events too');
});

const offerLike = fc.record(
  {
    id: cellValue,
    title: cellValue,
    discount: fc.oneof(
      fc.record({ kind: fc.constantFrom('percent', 'amount', 'x'), percent: cellValue, amount: cellValue, maxAmount: cellValue }, { requiredKeys: ['kind'] }),
      cellValue,
    ),
    scope: fc.oneof(
      fc.record({ kind: fc.constantFrom('all', 'items', 'categories'), itemIds: fc.oneof(fc.sparseArray(cellValue, { maxLength: 4 }), fc.array(fc.string({ minLength: 1, maxLength: 5 }), { maxLength: 3 })), categories: fc.array(cellValue, { maxLength: 3 }) }, { requiredKeys: ['kind'] }),
      cellValue,
    ),
    minBasket: cellValue,
    validFrom: cellValue,
    validUntil: cellValue,
    audience: fc.oneof(fc.constantFrom('all', 'new', 'returning'), cellValue),
    limits: fc.oneof(fc.record({ maxRedemptions: cellValue, maxImpressions: cellValue, coolDownHours: cellValue }, { requiredKeys: [] }), cellValue),
    hints: fc.oneof(fc.record({ margin: cellValue, typicalSpend: cellValue, cost: cellValue }, { requiredKeys: [] }), cellValue),
  },
  { requiredKeys: ['id', 'title', 'discount', 'scope'] },
);
const offerCatalogLike = fc.record({
  version: fc.oneof(fc.nat(5), cellValue),
  issuedAt: fc.oneof(fc.nat(), cellValue),
  currency: fc.oneof(fc.constantFrom('GBP', 'EUR'), cellValue),
  offers: fc.oneof(fc.array(offerLike, { maxLength: 4 }), fc.sparseArray(offerLike, { maxLength: 4 }), cellValue),
});

/** Every element present (no holes) and every nested value plain data. */
function dense(v: unknown): void {
  if (Array.isArray(v)) for (let i = 0; i < v.length; i++) assert.ok(i in v, `no hole at [${i}]`), dense(v[i]);
  else if (v && typeof v === 'object') for (const x of Object.values(v)) dense(x);
  else assert.ok(v === undefined || ['string', 'number', 'boolean'].includes(typeof v), `plain value, got ${typeof v}`);
}

test('regression: validateOfferCatalog kept holes of sparse arrays (offers, scope.itemIds) in its "clean" copy', () => {
  const offers: unknown[] = [];
  offers.length = 2;
  assert.throws(() => validateOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers }), isValidationError);
  const itemIds: unknown[] = ['a'];
  itemIds.length = 3;
  const offer = { id: 'x', title: 't', discount: { kind: 'amount', amount: 1 }, scope: { kind: 'items', itemIds } };
  assert.throws(() => validateOfferCatalog({ version: 1, issuedAt: 0, currency: 'GBP', offers: [offer] }), (e) => isValidationError(e) && /itemIds\[1\]/.test((e as Error).message));
});

test('property: validateOfferCatalog throws only ValidationError; accepted catalogs are dense, plain and re-validate to themselves', () => {
  fc.assert(
    fc.property(fc.oneof(wild, offerCatalogLike), (input) => {
      let out: unknown;
      if (typed('offer catalogs', () => void (out = validateOfferCatalog(input)))) {
        dense(out);
        assert.deepEqual(validateOfferCatalog(out), out);
        assert.deepEqual(JSON.parse(JSON.stringify(out)), out);
      }
    }),
    { seed: SEED, numRuns: 3000 },
  );
  assert.ok(counts['offer catalogs']!.tried - counts['offer catalogs']!.refused > 20, 'the generator reaches valid catalogs too');
});

test('property: validateCatalog (item catalog) throws only ValidationError; accepted catalogs re-validate to themselves', () => {
  const itemLike = fc.record({ id: fc.oneof(fc.string({ minLength: 1, maxLength: 4 }), cellValue), title: cellValue, category: cellValue, price: cellValue, popularity: cellValue }, { requiredKeys: ['id'] });
  fc.assert(
    fc.property(fc.oneof(wild, fc.record({ items: fc.oneof(fc.array(itemLike, { maxLength: 5 }), fc.sparseArray(itemLike, { maxLength: 5 }), cellValue) })), (input) => {
      let out: unknown;
      if (typed('item catalogs', () => void (out = validateCatalog(input)))) {
        dense(out);
        assert.deepEqual(validateCatalog(out), out);
      }
    }),
    { seed: SEED, numRuns: 3000 },
  );
});

const dir = mkdtempSync(join(tmpdir(), 'localrec-rel-input-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;

/** Text that looks like CSV some of the time: quotes, delimiters, blank lines, BOMs, NULs, unicode. */
const noise = fc
  .array(
    fc.oneof(
      fc.constantFrom('user,item,time,qty\n', 'u1,i1,1700000000,2\n', 'u2,"i,2",2024-01-01,1\n', '"', '""', ',', '\n', '\r\n', '\uFEFF', '\0', ' ', 'NaN', 'Infinity', '1e999', ';'),
      fc.string({ maxLength: 20 }),
      fc.string({ unit: 'binary', maxLength: 12 }),
    ),
    { maxLength: 30 },
  )
  .map((parts) => parts.join(''));
const cell = fc.oneof(fc.constantFrom('u1', 'i7', '1700000000', '2024-01-01', '3', '', ' ', '"q,uo""ted"', 'x'), fc.string({ maxLength: 6 }));
/** A header (usually the right one), rows of mostly plausible cells, and noise spliced in. */
const csvish = fc
  .tuple(
    fc.constantFrom('user,item,time,qty\n', 'qty,time,item,user\n', '\uFEFFuser,item,time,qty\r\n', 'user,item\n', ''),
    fc.array(
      fc.oneof(
        { weight: 12, arbitrary: fc.tuple(fc.constantFrom('u1', 'u2', 'u3'), fc.constantFrom('i1', 'i2', '"i,3"'), fc.constantFrom('1700000000', '2024-01-01', '0'), fc.constantFrom('1', '2.5', '7')).map((r) => r.join(',')) },
        { weight: 1, arbitrary: fc.array(cell, { minLength: 1, maxLength: 5 }).map((r) => r.join(',')) },
      ),
      { maxLength: 12 },
    ),
    fc.oneof(fc.constant(null), fc.constant(null), noise),
    fc.nat(),
  )
  .map(([header, rows, junk, at]) => {
    const body = rows.join('\n');
    const cut = body.length ? at % body.length : 0;
    return header + (junk ? body.slice(0, cut) + junk + body.slice(cut) : body);
  });

test('property: loadCsv on arbitrary files throws only ValidationError and returns consistent columns', async () => {
  await fc.assert(
    fc.asyncProperty(csvish, fc.boolean(), fc.boolean(), async (text, gz, withWeight) => {
      const path = join(dir, `f${fileNo++}.csv`);
      let bytes: Uint8Array = Buffer.from(text);
      if (gz) bytes = text.length % 3 === 0 ? gzipSync(bytes) : Buffer.concat([Buffer.from([0x1f, 0x8b]), bytes]); // valid gzip, or gzip magic + junk
      writeFileSync(path, bytes);
      await typedAsync('csv files', async () => {
        const log = await loadCsv(path, { user: 'user', item: 'item', time: 'time', ...(withWeight ? { weight: 'qty' } : {}) });
        const n = log.user.length;
        assert.ok(log.item.length === n && log.time.length === n && log.weight.length === n);
        for (let i = 0; i < n; i++) {
          assert.ok(log.user[i]! < log.userIds.length && log.item[i]! < log.itemIds.length);
          assert.ok(Number.isFinite(log.time[i]!) && Number.isFinite(log.weight[i]!));
        }
      });
    }),
    { seed: SEED, numRuns: 250 },
  );
  await assert.rejects(loadCsv(join(dir, 'missing.csv'), { user: 'u', item: 'i' }), isValidationError);
  await assert.rejects(loadCsv(dir, { user: 'u', item: 'i' }), isValidationError); // a directory, not a file
});

test('property: loadLinesSplit on arbitrary files throws only ValidationError', async () => {
  await fc.assert(
    fc.asyncProperty(csvish, csvish, async (a, b) => {
      const tr = join(dir, `t${fileNo++}.txt`);
      const te = join(dir, `t${fileNo++}.txt`);
      writeFileSync(tr, a.replaceAll(',', ' '));
      writeFileSync(te, b.replaceAll(',', ' '));
      await typedAsync('lines files', async () => {
        const s = await loadLinesSplit(tr, te);
        assert.equal(s.train.ptr.length, s.userIds.length + 1);
      });
    }),
    { seed: SEED, numRuns: 150 },
  );
});

test('property: an Engine fed random valid/invalid batches stores exactly the valid events, also after reopening', async () => {
  const catalog = { items: Array.from({ length: 10 }, (_, i) => ({ id: `p${i}` })) };
  let run = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(fc.array(fc.oneof(eventLike, wild), { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 8 }), async (batches) => {
      const dbName = `rel-input-${run++}`;
      const e = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName, now: () => NOW });
      const expected: unknown[] = [];
      for (const batch of batches) {
        const valid: unknown[] = [];
        for (const ev of batch) {
          try {
            valid.push(validateEvent(ev, NOW));
          } catch {
            /* counted below */
          }
        }
        let threw: unknown;
        let accepted = -1;
        try {
          accepted = e.enqueue(batch as never);
        } catch (err) {
          threw = err;
        }
        if (valid.length === batch.length) assert.equal(accepted, batch.length);
        else assert.ok(isValidationError(threw), 'a batch with a bad event throws ValidationError (after queueing the good ones)');
        for (const ev of batch) tally('engine enqueue', !valid.includes(ev) && (() => { try { validateEvent(ev, NOW); return false; } catch { return true; } })());
        expected.push(...valid);
        if (run % 2 === 0) await e.flush(); // interleave flushes with enqueues
      }
      const strip = (xs: Array<Record<string, unknown>>) => xs.map(({ id: _id, ...rest }) => rest);
      // The store returns events in time order, ties in insertion order (Array.prototype.sort is stable).
      expected.sort((a, b) => (a as { t: number }).t - (b as { t: number }).t);
      assert.deepEqual(strip((await e.exportData()).events as never), expected);
      assert.equal((await e.stats()).events.total, expected.length);
      await e.close();
      const again = await Engine.create({ catalog, backend: 'cpu', autoTrainEvery: 0, dbName, now: () => NOW });
      assert.deepEqual(strip((await again.exportData()).events as never), expected);
      await again.erase();
    }),
    { seed: SEED, numRuns: 30 },
  );
});

test("isLocalrecError: localrec's AbortError yes, the platform's own AbortError (a host's cancelled fetch) no", async () => {
  const { AbortError, isAbortError } = await import('../../src/errors.js');
  const ours = new AbortError('sync cancelled');
  const theirs = new DOMException('The operation was aborted.', 'AbortError');
  assert.equal(isLocalrecError(ours), true);
  assert.equal(isLocalrecError(theirs), false);
  assert.ok(isAbortError(ours) && isAbortError(theirs), 'isAbortError takes both, as documented');
});
