import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createItemTable } from '../../src/model/item-table.js';
import { checkRedemption, MAX_REDEEM_BODY_BYTES, OFFERS_FLOOR_KEY, RedeemCatalog } from '../../src/server/redeem.js';
import { createServer, MemoryStorage, SqliteStorage, type ServerParts } from '../../src/server/index.js';
import type { Storage } from '../../src/server/storage.js';
import { reloadOffers } from '../../src/server/serve-command.js';
import { isValidationError } from '../../src/errors.js';
import { inDataDir } from './server-helpers.js';
import type { OfferCatalog } from '../../src/offers/types.js';

const NOW = Date.UTC(2026, 10, 1);
const catalog: OfferCatalog = {
  version: 4,
  issuedAt: NOW,
  currency: 'GBP',
  offers: [
    { id: 'mugs10', title: '10% off mugs', discount: { kind: 'percent', percent: 10, maxAmount: 3 }, scope: { kind: 'categories', categories: ['mug'] }, minBasket: 15 },
    { id: 'two-off', title: '£2 off', discount: { kind: 'amount', amount: 2 }, scope: { kind: 'all' }, validFrom: NOW - 1000, validUntil: NOW + 1000, audience: 'returning', limits: { maxRedemptions: 1 } },
    { id: 'mugs-2', title: '£2 off mugs', discount: { kind: 'amount', amount: 2 }, scope: { kind: 'categories', categories: ['mug'] } },
    { id: 'welcome', title: '£5 off a first order', discount: { kind: 'amount', amount: 5 }, scope: { kind: 'all' }, audience: 'new' },
    { id: 'weekly', title: '5% off, once a day', discount: { kind: 'percent', percent: 5 }, scope: { kind: 'all' }, limits: { maxRedemptions: 5, coolDownHours: 24 } },
    { id: 'daily', title: '£1 off, once a day', discount: { kind: 'amount', amount: 1 }, scope: { kind: 'all' }, limits: { coolDownHours: 24 } },
  ],
} as OfferCatalog;

describe('checkRedemption', () => {
  it('never answers valid with a discount that is not a finite amount (called directly, past the request checks)', () => {
    const all: OfferCatalog = { ...catalog, offers: [{ id: 'free', title: 'All free', discount: { kind: 'percent', percent: 100 }, scope: { kind: 'all' } }] } as OfferCatalog;
    const v = checkRedemption(all, { offerId: 'free', orderValue: 1e307 }, NOW);
    assert.equal(v.valid, false);
    assert.equal(JSON.stringify(v).includes('null'), false);
  });

  it('computes the discount: percent of the in-scope value up to the ceiling, or the fixed amount', () => {
    assert.deepEqual(checkRedemption(catalog, { offerId: 'mugs10', orderValue: 30, scopeValue: 12 }, NOW), { valid: true, offerId: 'mugs10', discount: 1.2, currency: 'GBP' });
    assert.deepEqual(checkRedemption(catalog, { offerId: 'mugs10', orderValue: 100, scopeValue: 100 }, NOW), { valid: true, offerId: 'mugs10', discount: 3, currency: 'GBP' });
    assert.deepEqual(checkRedemption(catalog, { offerId: 'two-off', orderValue: 1.5, returning: true, previousRedemptions: 0 }, NOW), { valid: true, offerId: 'two-off', discount: 1.5, currency: 'GBP' });
    // A fixed amount off scoped items never exceeds their value.
    assert.deepEqual(checkRedemption(catalog, { offerId: 'mugs-2', orderValue: 30, scopeValue: 1 }, NOW), { valid: true, offerId: 'mugs-2', discount: 1, currency: 'GBP' });
    // Rounded to the currency's minor unit, half up (10 % of 10.05 is 1.005, stored as 1.00499…).
    assert.equal((checkRedemption(catalog, { offerId: 'mugs10', orderValue: 20, scopeValue: 10.05 }, NOW) as { discount: number }).discount, 1.01);
    assert.equal((checkRedemption({ ...catalog, currency: 'JPY' }, { offerId: 'weekly', orderValue: 1001, previousRedemptions: 0 }, NOW) as { discount: number }).discount, 50);
  });

  it('rounding never lifts the discount past the in-scope value or maxAmount, and a discount that rounds to 0 is refused', () => {
    const tiny = { ...catalog, offers: [{ id: 'capped', title: 'capped', discount: { kind: 'percent', percent: 10, maxAmount: 0.015 }, scope: { kind: 'all' } }, ...catalog.offers] } as OfferCatalog;
    // 10 % of 1 is 0.10, held under maxAmount 0.015 rounded down: 0.01 (not 0.02).
    assert.equal((checkRedemption(tiny, { offerId: 'capped', orderValue: 1 }, NOW) as { discount: number }).discount, 0.01);
    // £2 off items worth 0.015: at most 0.01, never the 0.02 that rounding 0.015 half up gives.
    assert.equal((checkRedemption(catalog, { offerId: 'mugs-2', orderValue: 30, scopeValue: 0.015 }, NOW) as { discount: number }).discount, 0.01);
    // ¥1 minimum unit: £2 … ¥2 off an order of ¥0.5 would round up to ¥1 > the order.
    const refusal = (c: OfferCatalog, r: Parameters<typeof checkRedemption>[1]) => {
      const v = checkRedemption(c, r, NOW);
      return v.valid ? `valid ${v.discount}` : `${v.reason}: ${v.error}`;
    };
    assert.equal(refusal({ ...catalog, currency: 'JPY' }, { offerId: 'mugs-2', orderValue: 30, scopeValue: 0.5 }), "not-in-scope: the discount on this order's in-scope value (0.5) rounds to 0 JPY");
    // 10 % of 0.01 is 0.001: nothing to give.
    assert.equal(refusal(catalog, { offerId: 'mugs10', orderValue: 20, scopeValue: 0.01 }), "not-in-scope: the discount on this order's in-scope value (0.01) rounds to 0 GBP");
  });

  it('refuses a request without the facts the offer’s rules need, instead of loosening them', () => {
    const needs = (r: Parameters<typeof checkRedemption>[1]) => {
      const v = checkRedemption(catalog, r, NOW);
      return v.valid ? 'valid' : `${v.reason}: ${v.error}`;
    };
    assert.equal(needs({ offerId: 'mugs10', orderValue: 30 }), 'missing-facts: offer "mugs10" needs scopeValue (the scope is categories)');
    assert.equal(needs({ offerId: 'welcome', orderValue: 30 }), 'missing-facts: offer "welcome" needs returning (the offer is for new customers)');
    assert.equal(needs({ offerId: 'weekly', orderValue: 30 }), 'missing-facts: offer "weekly" needs previousRedemptions (the offer has a redemption cap)');
    assert.equal(needs({ offerId: 'weekly', orderValue: 30, previousRedemptions: 1 }), 'missing-facts: offer "weekly" needs lastRedeemedAt (the offer has a cool-down and was redeemed before)');
    // A cool-down alone (no cap): the check cannot tell a first redemption without one of them.
    assert.equal(needs({ offerId: 'daily', orderValue: 30 }), 'missing-facts: offer "daily" needs previousRedemptions or lastRedeemedAt (the offer has a cool-down)');
    assert.equal(needs({ offerId: 'daily', orderValue: 30, previousRedemptions: 0 }), 'valid');
  });

  it('refuses each rule with its own reason', () => {
    const reason = (r: Parameters<typeof checkRedemption>[1], now = NOW) => {
      const v = checkRedemption(catalog, r, now);
      return v.valid ? 'valid' : v.reason;
    };
    assert.equal(reason({ offerId: 'nope', orderValue: 50 }), 'unknown-offer');
    assert.equal(reason({ offerId: 'mugs10', orderValue: 14.99, scopeValue: 5 }), 'below-minimum');
    assert.equal(reason({ offerId: 'mugs10', orderValue: 30, scopeValue: 0 }), 'not-in-scope');
    assert.equal(reason({ offerId: 'mugs-2', orderValue: 30, scopeValue: 0 }), 'not-in-scope');
    assert.equal(reason({ offerId: 'welcome', orderValue: 30, returning: true }), 'audience');
    assert.equal(reason({ offerId: 'weekly', orderValue: 30, previousRedemptions: 1, lastRedeemedAt: NOW - 60_000 }), 'cooling-down');
    assert.equal(reason({ offerId: 'weekly', orderValue: 30, previousRedemptions: 1, lastRedeemedAt: NOW - 24 * 3_600_000 }), 'valid');
    // A given last redemption counts, whatever else is (or is not) said.
    assert.equal(reason({ offerId: 'daily', orderValue: 30, lastRedeemedAt: NOW - 3_600_000 }), 'cooling-down');
    assert.equal(reason({ offerId: 'daily', orderValue: 30, previousRedemptions: 0, lastRedeemedAt: NOW - 3_600_000 }), 'cooling-down');
    assert.equal(reason({ offerId: 'daily', orderValue: 30, lastRedeemedAt: NOW - 25 * 3_600_000 }), 'valid');
    assert.equal(reason({ offerId: 'two-off', orderValue: 50, returning: true, previousRedemptions: 0 }, NOW - 2000), 'not-yet-valid');
    assert.equal(reason({ offerId: 'two-off', orderValue: 50, returning: true, previousRedemptions: 0 }, NOW + 1000), 'expired');
    assert.equal(reason({ offerId: 'two-off', orderValue: 50, returning: false, previousRedemptions: 0 }), 'audience');
    assert.equal(reason({ offerId: 'two-off', orderValue: 50, returning: true, previousRedemptions: 1 }), 'cap-reached');
    assert.equal(reason({ offerId: 'two-off', orderValue: 50, returning: true, previousRedemptions: 0 }), 'valid');
  });
});

describe('POST /v1/offers/redeem', () => {
  let parts: ServerParts;
  before(async () => {
    parts = await createServer({ dataDir: null, initialTable: createItemTable(['a', 'b'], 4), offers: catalog, rateLimit: false, now: () => NOW, log: () => {} });
  });
  after(async () => {
    await parts.storage.close();
  });
  const post = (body: unknown) =>
    parts.app.fetch(new Request('http://local/v1/offers/redeem', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) }));

  it('answers a verdict for a well-formed request and 400 naming the field for a bad one', async () => {
    const ok = await post({ offerId: 'mugs10', orderValue: 20, scopeValue: 10 });
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { valid: true, offerId: 'mugs10', discount: 1, currency: 'GBP', catalogVersion: 4 });
    const refused = await post({ offerId: 'mugs10', orderValue: 5, scopeValue: 5 });
    // Every answer says which catalog it was checked against (a reload may change it).
    assert.deepEqual(await refused.json(), { valid: false, offerId: 'mugs10', reason: 'below-minimum', error: 'the order must reach 15, it is 5', catalogVersion: 4 });
    for (const [body, field] of [
      [{ orderValue: 3 }, 'offerId'],
      [{ offerId: 'x', orderValue: -1 }, 'orderValue'],
      // 100 % of 10³⁰⁷ overflows: never a verdict with an infinite (JSON null) discount.
      [{ offerId: 'x', orderValue: 1e307 }, 'orderValue: must be a number from 0 to 1000000000000'],
      [{ offerId: 'x', orderValue: 1, scopeValue: 1e13 }, 'scopeValue'],
      [{ offerId: 'x', orderValue: 1, previousRedemptions: 0.5 }, 'previousRedemptions'],
      [{ offerId: 'mugs10', orderValue: 20, scope_value: 10 }, 'scope_value: is not a field'],
      [{ offerId: 'mugs10', orderValue: 20 }, 'needs scopeValue'],
      ['{not json', 'JSON'],
    ] as const) {
      const res = await post(body);
      assert.equal(res.status, 400);
      const answer = (await res.json()) as { error: string; catalogVersion: number };
      assert.match(answer.error, new RegExp(field));
      assert.equal(answer.catalogVersion, 4);
    }
  });

  it('answers 413 oversized for a body over 4 KB, declared or streamed, without reading it all', async () => {
    const big = await post({ offerId: 'mugs10', orderValue: 20, note: 'x'.repeat(MAX_REDEEM_BODY_BYTES) });
    assert.equal(big.status, 413);
    assert.deepEqual(await big.json(), { error: `a redeem body is at most ${MAX_REDEEM_BODY_BYTES} bytes of JSON`, reason: 'oversized', catalogVersion: 4 });
    // A body without a length that never ends: refused once the limit is passed.
    let pulled = 0;
    const endless = new ReadableStream<Uint8Array>({
      pull(ctl) {
        pulled++;
        ctl.enqueue(new TextEncoder().encode(pulled === 1 ? '{"offerId":"mugs10","pad":"' : 'x'.repeat(1024)));
      },
    });
    const streamed = await parts.app.fetch(new Request('http://local/v1/offers/redeem', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: endless, duplex: 'half' } as RequestInit));
    assert.equal(streamed.status, 413);
    assert.equal(((await streamed.json()) as { reason: string }).reason, 'oversized');
    assert.ok(pulled < 64, `read ${pulled} KB of an endless body`);
    // Just under the limit is still read.
    const padded = JSON.stringify({ offerId: 'mugs10', orderValue: 20, scopeValue: 10 }).padEnd(MAX_REDEEM_BODY_BYTES, ' ');
    assert.equal((await post(padded)).status, 200);
  });
});

describe('the redemption catalog: the newest loaded is recorded in the store, and can be replaced', () => {
  const v = (version: number, issuedAt = NOW, ids = ['mugs10']): OfferCatalog => ({ ...catalog, version, issuedAt, offers: catalog.offers.filter((o) => ids.includes(o.id)) });
  const start = (dir: string, offers: OfferCatalog | RedeemCatalog, extra: { offersAllowOlder?: boolean } = {}) =>
    createServer({ dataDir: dir, initialTable: createItemTable(['a', 'b'], 4), offers, rateLimit: false, now: () => NOW, log: () => {}, ...extra });

  it('refuses to start with an older catalog than the store has loaded, naming both versions, unless allowed', async () => {
    await inDataDir('localrec-redeem-floor-', async (dir) => {
      await (await start(dir, v(5))).storage.close();
      await assert.rejects(start(dir, v(4)), (e: unknown) => {
        assert.ok(isValidationError(e), String(e));
        assert.equal(e.field, 'options.offers');
        assert.match(e.message, /the offer catalog is version 4 \(issued .*\), older than version 5 \(issued .*\), the newest this server's store has loaded: .*options\.offersAllowOlder/);
        return true;
      });
      // The same version issued earlier is older too.
      await assert.rejects(start(dir, v(5, NOW - 1)), /is version 5 .* older than version 5/);
      // Allowed: it serves the older one, and the store still records the newest.
      const parts = await start(dir, v(4, NOW, ['mugs10', 'two-off']), { offersAllowOlder: true });
      assert.equal(JSON.parse((await parts.storage.readMeta!(OFFERS_FLOOR_KEY))!).version, 5);
      await parts.storage.close();
      // A newer one raises the floor.
      await (await start(dir, v(6))).storage.close();
      await assert.rejects(start(dir, v(5)), /older than version 6/);
    });
  });

  it('answers from the replaced catalog at once (a withdrawn offer is unknown), and a reload that fails keeps the old one', async () => {
    await inDataDir('localrec-redeem-reload-', async (dir) => {
      const offers = new RedeemCatalog(v(5, NOW, ['mugs10', 'two-off']));
      const parts = await start(dir, offers);
      try {
        const redeem = async (offerId: string) => {
          const res = await parts.app.fetch(new Request('http://local/v1/offers/redeem', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ offerId, orderValue: 50, returning: true, previousRedemptions: 0 }) }));
          return (await res.json()) as { valid: boolean; reason?: string; catalogVersion: number };
        };
        assert.deepEqual([(await redeem('two-off')).valid, (await redeem('two-off')).catalogVersion], [true, 5]);
        await offers.install(v(6), parts.storage);
        assert.deepEqual(await redeem('two-off'), { valid: false, offerId: 'two-off', reason: 'unknown-offer', error: 'no offer "two-off" in catalog version 6', catalogVersion: 6 });
        // Through serve's SIGHUP handler: a file that cannot be read, or an older catalog, is logged and the catalog stays.
        const { generateOfferKeys, signOfferCatalog } = await import('../../src/offers/signing.js');
        const { writeFileSync } = await import('node:fs');
        const { join } = await import('node:path');
        const keys = await generateOfferKeys();
        writeFileSync(join(dir, 'key.jwk'), JSON.stringify([keys.publicJwk]));
        const lines: Array<{ line: string; event: string; level?: string }> = [];
        const log = (line: string, f: { event: string; level?: string }) => void lines.push({ line, event: f.event, ...(f.level ? { level: f.level } : {}) });
        const reload = (file: string) => reloadOffers(offers, join(dir, file), join(dir, 'key.jwk'), parts.storage, false, log);
        await reload('missing.json');
        writeFileSync(join(dir, 'v5.json'), JSON.stringify(await signOfferCatalog(v(5), keys.privateJwk)));
        await reload('v5.json');
        writeFileSync(join(dir, 'v7.json'), JSON.stringify(await signOfferCatalog(v(7, NOW, ['mugs10', 'welcome']), keys.privateJwk)));
        await reload('v7.json');
        assert.deepEqual(lines.map((l) => [l.event, l.level]), [['offers-reload-failed', 'error'], ['offers-reload-failed', 'error'], ['offers-reloaded', undefined]]);
        assert.match(lines[0]!.line, /^offers: reload of .*missing\.json refused, still checking redemptions against catalog version 6: --offers: cannot read/);
        assert.match(lines[1]!.line, /catalog version 6: --offers: the offer catalog is version 5 .* older than version 6 .* pass --offers-allow-older/);
        assert.match(lines[2]!.line, /^offers: reloaded .*v7\.json: catalog version 6 → 7, 2 offers, signature verified$/);
        assert.equal((await redeem('welcome')).catalogVersion, 7);
        assert.equal(JSON.parse((await parts.storage.readMeta!(OFFERS_FLOOR_KEY))!).version, 7);
      } finally {
        await parts.storage.close();
      }
    });
  });
});

describe('the recorded catalog is raised atomically, and only once a start succeeded', () => {
  const v = (version: number): OfferCatalog => ({ ...catalog, version, offers: catalog.offers.slice(0, 1) });
  const floorOf = async (s: Pick<Storage, 'readMeta'>) => JSON.parse((await s.readMeta!(OFFERS_FLOOR_KEY))!) as { version: number };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('writeMetaIf writes only when the predicate on the stored value holds (memory, SQLite)', async () => {
    await inDataDir('localrec-meta-if-', async (dir) => {
      for (const s of [new MemoryStorage(), SqliteStorage.open(dir)] as Storage[]) {
        try {
          const bigger = (v: string) => (stored: string | undefined) => stored === undefined || Number(stored) < Number(v);
          assert.deepEqual(await s.writeMetaIf!('k', '5', bigger('5')), { stored: undefined, written: true });
          assert.deepEqual(await s.writeMetaIf!('k', '3', bigger('3')), { stored: '5', written: false });
          assert.equal(await s.readMeta!('k'), '5');
          assert.deepEqual(await s.writeMetaIf!('k', '7', bigger('7')), { stored: '5', written: true });
          assert.equal(await s.readMeta!('k'), '7');
        } finally {
          await s.close();
        }
      }
    });
  });

  it('two reloads at once never lower the floor, however their reads and writes interleave', async () => {
    await inDataDir('localrec-redeem-race-', async (dir) => {
      for (const storage of [new MemoryStorage(), SqliteStorage.open(dir)] as Storage[]) {
        try {
          await new RedeemCatalog(v(7)).install(v(7), storage);
          // Each process's reads and writes are slow (another server on the same database, a slow
          // link): both read 7, then v9 writes, then v8 would write over it.
          const slow = (readMs: number, writeMs: number): Storage =>
            Object.assign(Object.create(storage) as Storage, {
              readMeta: async (k: string) => (await sleep(readMs), storage.readMeta!(k)),
              writeMeta: async (k: string, value: string) => (await sleep(writeMs), storage.writeMeta!(k, value)),
              writeMetaIf: (k: string, value: string, when: (stored: string | undefined) => boolean) => storage.writeMetaIf!(k, value, when),
            });
          const a = new RedeemCatalog(v(7));
          const b = new RedeemCatalog(v(7));
          const [ra, rb] = await Promise.allSettled([a.install(v(9), slow(0, 0)), b.install(v(8), slow(5, 50))]);
          assert.equal((await floorOf(storage)).version, 9);
          // The stale one is refused (it came second), and keeps answering from what it had.
          assert.equal(ra.status, 'fulfilled');
          assert.match(String((rb as PromiseRejectedResult).reason), /version 8 .* older than version 9/);
          assert.deepEqual([a.catalog.version, b.catalog.version], [9, 7]);
        } finally {
          await storage.close();
        }
      }
    });
  });

  it('a start that fails after the catalog was checked (the store fails as the rounds open) records nothing', async () => {
    class FailingLatest extends MemoryStorage {
      failing = true;
      override async latest(): ReturnType<MemoryStorage['latest']> {
        if (this.failing) throw new Error('the store failed');
        return super.latest();
      }
    }
    const storage = new FailingLatest();
    const start = (version: number) => createServer({ storage, initialTable: createItemTable(['a', 'b'], 4), offers: v(version), rateLimit: false, now: () => NOW, log: () => {} });
    await assert.rejects(start(9), /the store failed/);
    assert.equal(await storage.readMeta(OFFERS_FLOOR_KEY), undefined, 'a failed start raises nothing');
    storage.failing = false;
    await start(5);
    assert.equal((await floorOf(storage)).version, 5);
    // Still refused before the store is touched further.
    storage.failing = true;
    await assert.rejects(start(4), /version 4 .* older than version 5/);
  });
});

describe('localrec serve --offers', () => {
  it('a SIGHUP while the server is still starting is queued, not fatal: the catalog is reloaded once it is up', async () => {
    const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { generateOfferKeys, signOfferCatalog } = await import('../../src/offers/signing.js');
    const { spawnServe } = await import('./server-helpers.js');
    const dir = mkdtempSync(join(tmpdir(), 'localrec-serve-hup-'));
    try {
      const keys = await generateOfferKeys();
      writeFileSync(join(dir, 'signed.json'), JSON.stringify(await signOfferCatalog({ version: 3, issuedAt: 0, currency: 'GBP', offers: [] }, keys.privateJwk)));
      writeFileSync(join(dir, 'public.jwk'), JSON.stringify(keys.publicJwk));
      writeFileSync(join(dir, 'catalog.json'), JSON.stringify({ items: ['a', 'b', 'c'] }));
      const child = await spawnServe(join(dir, 'data'), join(dir, 'catalog.json'), ['--dim', '4', '--offers', join(dir, 'signed.json'), '--offers-key', join(dir, 'public.jwk')], { LOCALREC_FAULT: 'hup-while-starting' });
      try {
        for (let i = 0; i < 200 && !/offers: reload/.test(child.stderr()); i++) await new Promise((r) => setTimeout(r, 50));
        assert.match(child.stderr(), /offers: reloaded .*signed\.json: catalog version 3 \(issued 1970-01-01T00:00:00\.000Z\) again, 0 offers, signature verified/);
        assert.equal(child.proc.exitCode, null, 'still running');
      } finally {
        child.proc.kill('SIGTERM');
        await child.exited;
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says the catalog was verified and where redemptions are checked; refuses the private key as --offers-key', async () => {
    const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { generateOfferKeys, signOfferCatalog } = await import('../../src/offers/signing.js');
    const { spawnServe } = await import('./server-helpers.js');
    const dir = mkdtempSync(join(tmpdir(), 'localrec-serve-offers-'));
    try {
      const keys = await generateOfferKeys();
      const offers: OfferCatalog = { version: 3, issuedAt: 0, currency: 'GBP', offers: [{ id: 'mugs10', title: '10% off mugs', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'items', itemIds: ['a'] } }] };
      writeFileSync(join(dir, 'signed.json'), JSON.stringify(await signOfferCatalog(offers, keys.privateJwk)));
      writeFileSync(join(dir, 'public.jwk'), JSON.stringify(keys.publicJwk));
      writeFileSync(join(dir, 'private.jwk'), JSON.stringify(keys.privateJwk));
      writeFileSync(join(dir, 'catalog.json'), JSON.stringify({ items: ['a', 'b', 'c'] }));
      const flags = (key: string) => ['--dim', '4', '--offers', join(dir, 'signed.json'), '--offers-key', join(dir, key)];
      const ok = await spawnServe(join(dir, 'data'), join(dir, 'catalog.json'), flags('public.jwk'));
      try {
        // The line follows the "listening on" one, maybe in a later chunk of stdout.
        for (let i = 0; i < 200 && !/^offers: /m.test(ok.stdout()); i++) await new Promise((r) => setTimeout(r, 50));
        assert.match(ok.stdout(), /^offers: catalog version 3, 1 offers, signature verified; redemption checks at POST \/v1\/offers\/redeem$/m);
      } finally {
        ok.proc.kill('SIGTERM');
        await ok.exited;
      }
      await assert.rejects(spawnServe(join(dir, 'data2'), join(dir, 'catalog.json'), flags('private.jwk')), (e: unknown) =>
        /is the private key \(it has 'd'\): verify with the public JWK/.test((e as { stderr: string }).stderr));

      // SIGHUP re-reads --offers; --offers-key may hold an array of keys (rotation).
      const next = await generateOfferKeys();
      writeFileSync(join(dir, 'keys.json'), JSON.stringify([{ ...keys.publicJwk, kid: 'old' }, { ...next.publicJwk, kid: 'new' }]));
      writeFileSync(join(dir, 'signed.json'), JSON.stringify(await signOfferCatalog({ ...offers, version: 4 }, next.privateJwk, { kid: 'new' })));
      const hup = await spawnServe(join(dir, 'data'), join(dir, 'catalog.json'), ['--dim', '4', '--offers', join(dir, 'signed.json'), '--offers-key', join(dir, 'keys.json')]);
      try {
        const version = async () => {
          const res = await fetch(`${hup.url}/v1/offers/redeem`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ offerId: 'mugs10', orderValue: 20, scopeValue: 10 }) });
          return ((await res.json()) as { catalogVersion: number }).catalogVersion;
        };
        assert.equal(await version(), 4);
        writeFileSync(join(dir, 'signed.json'), JSON.stringify(await signOfferCatalog({ ...offers, version: 5 }, next.privateJwk, { kid: 'new' })));
        hup.proc.kill('SIGHUP');
        for (let i = 0; i < 200 && !/offers: reloaded/.test(hup.stderr()); i++) await new Promise((r) => setTimeout(r, 50));
        assert.match(hup.stderr(), /offers: reloaded .*signed\.json: catalog version 4 → 5, 1 offers, signature verified/);
        assert.equal(await version(), 5);
      } finally {
        hup.proc.kill('SIGTERM');
        await hup.exited;
      }
      // The store remembers version 5: a restart with version 3 is refused, naming both, unless allowed.
      writeFileSync(join(dir, 'signed.json'), JSON.stringify(await signOfferCatalog(offers, keys.privateJwk)));
      await assert.rejects(spawnServe(join(dir, 'data'), join(dir, 'catalog.json'), flags('public.jwk')), (e: unknown) =>
        /--offers: the offer catalog is version 3 \(issued .*\), older than version 5 \(issued .*\), the newest this server's store has loaded: .* pass --offers-allow-older/.test((e as { stderr: string }).stderr));
      const older = await spawnServe(join(dir, 'data'), join(dir, 'catalog.json'), [...flags('public.jwk'), '--offers-allow-older']);
      try {
        // --offers-allow-older applies to the start only: a reload of another older file is refused.
        writeFileSync(join(dir, 'signed.json'), JSON.stringify(await signOfferCatalog({ ...offers, version: 4 }, keys.privateJwk)));
        older.proc.kill('SIGHUP');
        for (let i = 0; i < 200 && !/offers: reload/.test(older.stderr()); i++) await new Promise((r) => setTimeout(r, 50));
        assert.match(older.stderr(), /offers: reload of .*signed\.json refused, still checking redemptions against catalog version 3: --offers: the offer catalog is version 4 .* older than version 5 .* pass --offers-allow-older at a restart \(a reload never takes an older catalog\)/);
      } finally {
        older.proc.kill('SIGTERM');
        await older.exited;
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
