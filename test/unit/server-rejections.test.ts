import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { buildClientUpdate } from '../../src/federated/client-update.js';
import { decodeModel, decodeUpdate, dequantizeUpdate, encodeUpdate, levelsFor, type QuantizedUpdate } from '../../src/federated/wire.js';
import { checkScales, MAX_NOISE_SDS } from '../../src/server/validate-update.js';
import { Command } from 'commander';
import { StorageError, ValidationError } from '../../src/errors.js';
import { keepModelsFlag, rateLimitFlag, readCatalogFile, register } from '../../src/server/serve-command.js';
import { checkUpdate, createApp, MemoryStorage, normBound, REJECT_STATUS, startServer, type RejectReason } from '../../src/server/index.js';
import { rateLimitKey } from '../../src/server/rate-limit.js';
import { honestUpdate, initialTable, post, pull, quiet, spawnServe, trained, IDS, DIM } from './server-helpers.js';
import { createItemTable } from '../../src/model/item-table.js';

function expectReject(r: { status: number; json: Record<string, unknown> }, reason: RejectReason): void {
  assert.equal(r.json.reason, reason, JSON.stringify(r.json));
  assert.equal(r.status, REJECT_STATUS[reason]);
  assert.ok(r.status >= 400 && r.status < 500);
  assert.equal(typeof r.json.error, 'string');
}

test('the same update again while it is pending (its answer was lost) is taken once; another body under its nonce, or the same after aggregation, is replayed', async () => {
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, rateLimit: false, log: quiet });
  try {
    const v0 = await pull(server.url);
    const first = honestUpdate(v0, 1);
    const a = await post(server.url, first);
    const b = await post(server.url, first);
    assert.deepEqual([a.status, b.status, a.json.pending, b.json.pending], [202, 202, 1, 1], 'counted once');
    // The same nonce (header bytes 64..80) on another body is a replay.
    const other = honestUpdate(v0, 2);
    other.set(first.subarray(64, 80), 64);
    expectReject(await post(server.url, other), 'replayed');
    assert.equal((await post(server.url, honestUpdate(v0, 3))).status, 202); // the second update: version 1
    expectReject(await post(server.url, first), 'replayed');
  } finally {
    await server.close();
  }
});

test('every rejection reason answers its 4xx with { error, reason }', async () => {
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 1, noiseMultiplier: 0, rateLimit: false, log: quiet });
  try {
    const v0 = await pull(server.url);
    const good = honestUpdate(v0, 1);
    const patch = (b: Uint8Array, f: (dv: DataView) => void) => {
      const c = b.slice();
      f(new DataView(c.buffer));
      return c;
    };

    expectReject(await post(server.url, new TextEncoder().encode('{"hello":"world"}')), 'malformed');
    expectReject(await post(server.url, new Uint8Array(0)), 'malformed');
    expectReject(await post(server.url, new Uint8Array(good.length + 1)), 'oversized');
    const fewer = initialTable(IDS.slice(0, 30));
    const wrongShape = buildClientUpdate(fewer, trained(fewer, 2), { baseHash: v0.hash, clip: 1, noiseMultiplier: 0, bits: v0.config.bits });
    expectReject(await post(server.url, wrongShape.bytes), 'wrong-shape');
    expectReject(await post(server.url, patch(good, (dv) => dv.setFloat32(80, NaN, true))), 'non-finite');
    // Malformed is checked before non-finite (docs/protocol.md): non-zero padding bits win.
    expectReject(await post(server.url, patch(good, (dv) => (dv.setFloat32(80, NaN, true), dv.setUint8(good.length - 1, 0xff)))), 'malformed');
    expectReject(await post(server.url, honestUpdate(v0, 3, { clip: 2 })), 'config-mismatch');
    expectReject(await post(server.url, honestUpdate(v0, 3, { noiseMultiplier: 0.5 })), 'config-mismatch');
    // Clipped at 100, then relabelled as clipped at 1: the server sees the norm.
    const cheat = patch(honestUpdate(v0, 4, { clip: 100, scale: 1 }), (dv) => dv.setFloat32(20, 1, true));
    expectReject(await post(server.url, cheat), 'over-norm');
    expectReject(await post(server.url, patch(good, (dv) => dv.setUint32(12, 5, true))), 'unknown-base');
    expectReject(await post(server.url, patch(good, (dv) => dv.setUint8(40, dv.getUint8(40) ^ 1))), 'unknown-base');

    assert.equal((await post(server.url, good)).status, 202); // minClients 1: version 1
    expectReject(await post(server.url, good), 'replayed');
    for (const s of [5, 6]) assert.equal((await post(server.url, honestUpdate(v0, s))).status, 202); // versions 2, 3
    expectReject(await post(server.url, honestUpdate(v0, 7)), 'stale'); // base 0 < 3 − 2

    const nf = await fetch(`${server.url}/v1/nope`);
    assert.equal(nf.status, 404);
    assert.equal(((await nf.json()) as { reason: string }).reason, 'not-found');
    assert.equal((await fetch(`${server.url}/v1/model?encoding=png`)).status, 400);
  } finally {
    await server.close();
  }
});

test('noised honest updates pass the norm check; a scaled one hidden in noise-sized bounds does not', async () => {
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 100, noiseMultiplier: 1, bits: 4, rateLimit: false, log: quiet });
  try {
    const v0 = await pull(server.url);
    for (let s = 0; s < 25; s++) assert.equal((await post(server.url, honestUpdate(v0, 100 + s, { scale: 1 }))).status, 202);
    // 200 coordinates with σC = 1: the allowance is ≈ √(1 + 200·1.0x + 6·√400 + …) ≈ 18; a delta of norm 50 is caught.
    const cheat = buildClientUpdate(v0.table, trained(v0.table, 9, 10), { baseHash: v0.hash, clip: 50, noiseMultiplier: 0.02, bits: 4 }).bytes;
    new DataView(cheat.buffer).setFloat32(20, 1, true);
    new DataView(cheat.buffer).setFloat32(24, 1, true);
    expectReject(await post(server.url, cheat), 'over-norm');
  } finally {
    await server.close();
  }
});

test('the norm check cannot be configured away: normTolerance and normSlack are checked, naming the option', async () => {
  const { createServer } = await import('../../src/server/index.js');
  for (const [normTolerance, normSlack, field] of [
    [Number.NaN, 6, 'normTolerance'],
    [-0.1, 6, 'normTolerance'],
    [1, 6, 'normTolerance'],
    [0.01, Number.NaN, 'normSlack'],
    [0.01, -100, 'normSlack'],
    [0.01, 1e9, 'normSlack'],
  ] as const) {
    await assert.rejects(createServer({ dataDir: null, initialTable: initialTable(), normTolerance, normSlack, log: quiet }), (e: unknown) => e instanceof ValidationError && e.field === `options.${field}`, `${normTolerance} ${normSlack}`);
  }
});

test('block scales cannot widen the norm bound: a huge scale on an all-zero block does not let biases of +1000 through, and nothing publishes', async () => {
  for (const noiseMultiplier of [0, 1]) {
    const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 3, clip: 1, noiseMultiplier, rateLimit: false, log: quiet });
    try {
      const v0 = await pull(server.url);
      const L = levelsFor(v0.config.bits);
      const nf = IDS.length * DIM;
      /** An honest update's header with every bias +1000 and factor block 0 declaring scale `huge` (its codes 0, or one at L − 1 when `oneCode`). */
      const attack = (seed: number, huge: number, oneCode: boolean) => {
        const u = decodeUpdate(honestUpdate(v0, seed));
        u.codes.fill(L);
        u.scales.fill(0);
        u.scales[0] = huge;
        if (oneCode) u.codes[0] = 2 * L - 1;
        const biasBlock = Math.ceil(nf / u.header.blockSize);
        u.scales[biasBlock] = 1000;
        u.codes.fill(2 * L, nf);
        return encodeUpdate(u);
      };
      const policy = { ...server.rounds.config };
      for (const [seed, oneCode] of [[1, false], [2, true], [3, false]] as const) {
        const body = attack(seed, 2e6, oneCode);
        const u = decodeUpdate(body);
        const delta = dequantizeUpdate(u);
        assert.ok(Math.abs(delta[nf]! - 1000) < 1e-3, 'the update carries biases of +1000');
        // The reproduction: the huge scale's rounding allowance alone would cover those biases.
        const biasNorm = 1000 * Math.sqrt(IDS.length);
        assert.ok(normBound(u, policy) > biasNorm, `σ = ${noiseMultiplier}: the declared scales raise the bound to ${normBound(u, policy)}`);
        const r = await post(server.url, body);
        expectReject(r, 'over-norm');
        assert.match(String(r.json.error), oneCode ? /block scales .* exceed what an update clipped to 1/ : /block 0 \(factors\) declares scale 2000000 but its largest \|code − L\| is 0/);
        const checked = checkUpdate(body, policy);
        assert.equal(checked.ok, false);
      }
      assert.equal(server.rounds.version, 0, 'no version published');
      assert.equal(server.rounds.pending, 0, 'nothing stored');
      // Honest updates still pass and publish a version whose biases moved by at most C.
      for (const s of [11, 12, 13]) assert.equal((await post(server.url, honestUpdate(v0, s))).status, 202);
      const v1 = decodeModel(server.rounds.modelBytes('float32')).table;
      assert.equal(v1.version, 1);
      for (let i = 0; i < IDS.length; i++) assert.ok(Math.abs(v1.bias[i]! - v0.table.bias[i]!) <= 1 + 8.6 * noiseMultiplier, `bias ${i} moved ${v1.bias[i]! - v0.table.bias[i]!}`);
    } finally {
      await server.close();
    }
  }
});

test('a storage failure answers 503 with a generic reason; its message (a database URL) goes to the log only', async () => {
  const secret = 'PostgreSQL store update failed (postgres://shop:***@db.internal:5433/localrec): relation "localrec_updates" does not exist';
  class Failing extends MemoryStorage {
    override async addUpdate(): Promise<never> {
      throw new StorageError(secret);
    }
  }
  const logged: string[] = [];
  const server = await startServer({ port: 0, storage: new Failing(), initialTable: initialTable(), noiseMultiplier: 0, rateLimit: false, log: (l) => logged.push(l) });
  try {
    const v0 = await pull(server.url);
    const res = await fetch(`${server.url}/v1/updates`, { method: 'POST', body: honestUpdate(v0, 1) as Uint8Array<ArrayBuffer> });
    const text = await res.text();
    assert.equal(res.status, 503);
    assert.equal(res.headers.get('retry-after'), '30');
    assert.deepEqual(JSON.parse(text), { error: 'the server cannot reach its storage right now; nothing was stored, retry later', reason: 'storage-unavailable' });
    for (const leak of ['db.internal', '5433', 'postgres://', 'localrec_updates']) assert.ok(!text.includes(leak), `the response shows ${leak}`);
    assert.deepEqual(logged, [`storage unavailable on POST /v1/updates: ${secret}`]);
  } finally {
    await server.close();
  }
});

test('per-client rate limit answers 429 and refills with time', async () => {
  let now = 1_000_000;
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), noiseMultiplier: 0, rateLimit: { perMinute: 6, burst: 2 }, now: () => now, log: quiet });
  try {
    const v0 = await pull(server.url);
    assert.equal((await post(server.url, honestUpdate(v0, 1))).status, 202);
    assert.equal((await post(server.url, honestUpdate(v0, 2))).status, 202);
    expectReject(await post(server.url, honestUpdate(v0, 3)), 'rate-limited');
    now += 10_000; // 6/min → one token per 10 s
    assert.equal((await post(server.url, honestUpdate(v0, 3))).status, 202);
    expectReject(await post(server.url, honestUpdate(v0, 4)), 'rate-limited');
  } finally {
    await server.close();
  }
});

test('the rate limit keys an IPv6 client by its /64 (a host picking a new address per request gets no new burst), IPv4-mapped ones by their IPv4', async () => {
  assert.equal(rateLimitKey('2001:db8:1:2::7'), '2001:db8:1:2::/64');
  assert.equal(rateLimitKey('2001:0DB8:1:2:aa:bb:cc:dd'), '2001:db8:1:2::/64');
  assert.notEqual(rateLimitKey('2001:db8:1:3::7'), rateLimitKey('2001:db8:1:2::7'));
  assert.equal(rateLimitKey('::ffff:203.0.113.7'), '203.0.113.7');
  assert.equal(rateLimitKey('64:ff9b::192.0.2.33'), '192.0.2.33');
  // As Node and proxies print them: in hex.
  assert.equal(rateLimitKey('64:ff9b::cb00:7107'), '203.0.113.7');
  assert.equal(rateLimitKey('::ffff:cb00:7107'), '203.0.113.7');
  assert.equal(rateLimitKey('[fe80::1%eth0]'), 'fe80:0:0:0::/64');
  assert.equal(rateLimitKey('203.0.113.7'), '203.0.113.7');
  // A port a proxy appended is no part of the client.
  assert.equal(rateLimitKey('203.0.113.7:51234'), '203.0.113.7');
  assert.equal(rateLimitKey('[2001:db8:1:2::9]:443'), '2001:db8:1:2::/64');
  for (const odd of ['unknown', '1:2:3:4:5:6:7:8:9', '2001:db8::1::2']) assert.equal(rateLimitKey(odd), odd);
  // Through the server (behind a proxy, so the test can choose the address): two addresses of one
  // /64 share one allowance; another /64 has its own.
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 100, noiseMultiplier: 0, rateLimit: { perMinute: 1, burst: 1 }, trustProxy: true, log: quiet });
  try {
    const v0 = await pull(server.url);
    const from = async (n: number, address: string) =>
      (await fetch(`${server.url}/v1/updates`, { method: 'POST', body: honestUpdate(v0, n) as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream', 'x-forwarded-for': address } })).status;
    assert.equal(await from(1, '2001:db8:1:2::1'), 202);
    assert.equal(await from(2, '2001:db8:1:2:ffff::9'), 429);
    assert.equal(await from(3, '2001:db8:1:3::1'), 202);
  } finally {
    await server.close();
  }
});

test('behind a proxy (trustProxy) the rate limit keys on the last X-Forwarded-For entry (a forged first one buys nothing); otherwise the header is ignored', async () => {
  const postFrom = async (url: string, body: Uint8Array, forwardedFor: string) => {
    const res = await fetch(`${url}/v1/updates`, { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream', 'x-forwarded-for': forwardedFor } });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };
  /**
   * Two shoppers behind one proxy (which appends the address it saw) each get their own allowance
   * of 1. The first one's second update is over it, though it forged another first entry.
   */
  const limitsEachShopper = async (url: string) => {
    const v0 = await pull(url);
    assert.equal((await postFrom(url, honestUpdate(v0, 1), '203.0.113.7')).status, 202);
    assert.equal((await postFrom(url, honestUpdate(v0, 2), '10.0.0.1, 198.51.100.9')).status, 202);
    expectReject(await postFrom(url, honestUpdate(v0, 3), '192.0.2.55, 203.0.113.7'), 'rate-limited');
    expectReject(await postFrom(url, honestUpdate(v0, 4), '198.51.100.77,198.51.100.9'), 'rate-limited');
  };
  const limit = { perMinute: 1, burst: 1 };
  const proxied = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 100, noiseMultiplier: 0, rateLimit: limit, trustProxy: true, log: quiet });
  try {
    await limitsEachShopper(proxied.url);
  } finally {
    await proxied.close();
  }
  // The CLI flag reaches the server: `localrec serve --trust-proxy --rate-limit 1`.
  const dir = mkdtempSync(join(tmpdir(), 'localrec-proxy-'));
  const catalog = join(dir, 'catalog.json');
  writeFileSync(catalog, JSON.stringify({ items: IDS.map((id, i) => ({ id, popularity: i })) }));
  const child = await spawnServe(join(dir, 'data'), catalog, ['--dim', String(DIM), '--min-clients', '100', '--noise', '0', '--rate-limit', '1', '--trust-proxy']);
  try {
    await limitsEachShopper(child.url);
  } finally {
    child.proc.kill('SIGTERM');
    await child.exited;
    rmSync(dir, { recursive: true, force: true });
  }
  const direct = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 100, noiseMultiplier: 0, rateLimit: limit, log: quiet });
  try {
    const v0 = await pull(direct.url);
    assert.equal((await postFrom(direct.url, honestUpdate(v0, 1), '203.0.113.7')).status, 202);
    // Without trustProxy a forged header buys nothing: the connection's address is the key.
    expectReject(await postFrom(direct.url, honestUpdate(v0, 2), '198.51.100.9'), 'rate-limited');
  } finally {
    await direct.close();
  }
});

test('localrec serve --rate-limit refuses a negative value, naming the flag, instead of turning the limit off', async () => {
  assert.deepEqual(['0', '30', '0.5'].map(rateLimitFlag), [0, 30, 0.5]);
  for (const bad of ['-5', '-0.5', 'x', '']) assert.throws(() => rateLimitFlag(bad), (e: unknown) => e instanceof ValidationError && e.message.startsWith('--rate-limit: must be'), bad);
  assert.deepEqual(['1', '3', '100'].map(keepModelsFlag), [1, 3, 100]);
  for (const bad of ['0', '-1', '1.5', 'x']) assert.throws(() => keepModelsFlag(bad), (e: unknown) => e instanceof ValidationError && e.message.startsWith('--keep-models: must be'), bad);
  // Through the command's parser: refused before any server starts.
  const program = new Command().exitOverride();
  register(program);
  await assert.rejects(program.parseAsync(['node', 'localrec', 'serve', '--rate-limit', '-5']), (e: unknown) =>
    e instanceof ValidationError && e.message === "--rate-limit: must be a number of updates per minute ≥ 0 (0 turns the limit off), got '-5'",
  );
});

test('localrec serve checks its flags in their own words and units before starting anything', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['--port', '70000'], /^--port: must be 0\.\.65535/],
    // Checked before the store is opened (it was checked only once version 0 was stored).
    [['--backlog', '0'], /^--backlog: must be a whole number ≥ 1, got 0$/],
    [['--dim', '65'], /^--dim: must be a whole number from 1 to 64, got 65$/],
    [['--noise', '-1'], /^--noise: must be a number ≥ 0/],
    [['--secure-aggregation', '--cohort-timeout', '-5'], /^--cohort-timeout: must be a number of seconds from 0\.001 to 86400 \(a day; devices refuse longer\), got -5$/],
    [['--secure-aggregation', '--upload-timeout', '90000'], /^--upload-timeout: must be a number of seconds from 0\.001 to 86400 \(a day; devices refuse longer\), got 90000$/],
    [['--static', '/no-such-folder-here'], /^--static: \/no-such-folder-here is not a folder$/],
    // Flags that would be ignored are refused: without --catalog the stored model is served as is.
    [['--seed', '7'], /^--seed: builds the initial model from --catalog: without --catalog the stored model is served as it is/],
    [['--bias-scale', '0.5'], /^--bias-scale: builds the initial model from --catalog/],
    [['--database', 'postgres://x@y/z'], /^--data-dir: is the SQLite folder: with --database the server uses PostgreSQL; give one or the other$/],
    // Flags of one mode given in the other would be ignored: refused.
    [['--cohort-timeout', '5'], /^--cohort-timeout: is a secure-aggregation option: it needs --secure-aggregation$/],
    [['--secure-aggregation', '--bits', '3'], /^--bits: sets the plain uploads’ quantization: with --secure-aggregation uploads are masked at --secagg-bits$/],
    [['--secure-aggregation', '--max-staleness', '0'], /^--max-staleness: applies to plain uploads/],
    [['--offers-key', '/no-such-key.jwk'], /^--offers-key: is the key the --offers catalog is checked against: give --offers too$/],
  ];
  for (const [flags, re] of cases) {
    const program = new Command().exitOverride();
    register(program);
    await assert.rejects(program.parseAsync(['node', 'localrec', 'serve', '--data-dir', join(tmpdir(), 'never-created'), ...flags]), (e: unknown) => e instanceof ValidationError && re.test(e.message), flags.join(' '));
  }
  // A CORS origin with a path or a trailing slash would match no browser's Origin: refused by name.
  for (const [origin, why] of [
    ['https://shop.example/', 'a path or trailing slash'],
    ['shop.example', 'no scheme://host'],
    ['*', 'no scheme://host'],
    ['https://Shop.example', 'browsers send it as https://shop.example'],
    ['https://shop.example:443', 'browsers send it as https://shop.example'],
  ]) {
    await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: initialTable(), corsOrigins: ['https://ok.example', origin!], log: quiet }), (e: unknown) =>
      e instanceof ValidationError && e.field === 'options.corsOrigins[1]' && e.message.includes(`must be an origin as browsers send it, such as https://shop.example: ${why}`),
    `${origin}`);
  }
  // Origins of apps and extensions are sent as written (their URL origin is "null").
  const apps = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), corsOrigins: ['capacitor://localhost', 'chrome-extension://abcdef', 'http://127.0.0.1:8080'], log: quiet });
  await apps.close();
  // FedAdam's and the rate limit's settings: a zero τ or a NaN rate published a table of NaN that
  // no device and no restart could load; a NaN rate limit limited nobody.
  for (const [fedAdam, re] of [
    [{ tau: 0 }, /^options\.fedAdam\.tau: must be a positive number, got 0$/],
    [{ lr: NaN }, /^options\.fedAdam\.lr: must be a positive number, got NaN$/],
    [{ beta2: 1 }, /^options\.fedAdam\.beta2: must be a number in \[0, 1\), got 1$/],
  ] as const) {
    await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: initialTable(), aggregator: 'fedadam', fedAdam, log: quiet }), (e: unknown) => e instanceof ValidationError && re.test(e.message), JSON.stringify(fedAdam));
  }
  for (const [rateLimit, re] of [
    [{ perMinute: NaN, burst: 5 }, /^options\.rateLimit\.perMinute: must be a positive number, got NaN$/],
    [{ perMinute: 60, burst: 0 }, /^options\.rateLimit\.burst: must be a whole number ≥ 1, got 0$/],
  ] as const) {
    await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: initialTable(), rateLimit, log: quiet }), (e: unknown) => e instanceof ValidationError && re.test(e.message), JSON.stringify(rateLimit));
  }
  // σ and C travel as float32 in every update header: values it cannot hold are refused at start
  // (every update would have been refused as a mismatch).
  await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: initialTable(), clip: 1e-46, log: quiet }), /options\.clip: must be from 1e-6 to 1e6/);
  await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: initialTable(), noiseMultiplier: 1e39, log: quiet }), /options\.noiseMultiplier: must be at most 1e6/);
  // A first version every device would refuse (a bias beyond ±1e6) is refused before it is stored.
  await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: createItemTable(['a', 'b'], 4, { seed: 1, popularity: [1e6, 1], popularityScale: 1e5 }), log: quiet }), (e: unknown) =>
    e instanceof ValidationError && /options\.initialTable: item "a" has a bias beyond ±1000000, which every device would refuse/.test(e.message));
  // An item id UTF-8 cannot carry would be stored as U+FFFD (another id): refused before anything is published.
  await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: createItemTable(['a', 'b\ud800', 'c'], 4, { seed: 1 }), log: quiet }), (e: unknown) =>
    e instanceof ValidationError && e.message === 'model.itemIds[1]: holds a lone UTF-16 surrogate, which UTF-8 cannot carry');
  // --bits: a bad value names the flag's range; a table too large for any width names what to change.
  await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: initialTable(), bits: 99, log: quiet }), (e: unknown) => e instanceof ValidationError && e.message === 'options.bits: must be a whole number from 2 to 8, got 99');
  const huge = createItemTable(Array.from({ length: 9724 }, (_, i) => `m${i}`), 32, { seed: 1 });
  await assert.rejects(startServer({ port: 0, dataDir: null, initialTable: huge, log: quiet }), (e: unknown) =>
    e instanceof ValidationError && e.field === 'options.dim' && /9724 trained rows × dim 32 do not fit an update of 65536 bytes even at 2 bits/.test(e.message),
  );
});

test('serve --catalog refuses a popularity the SDK would refuse (not read as 0), and says why a file is not JSON on one line', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'lr-serve-catalog-'));
  try {
    const file = join(dir, 'catalog.json');
    for (const [raw, got] of [['"2035"', '"2035"'], ['-1', '-1'], ['null', 'null'], ['1e999', 'Infinity']]) {
      writeFileSync(file, `{ "items": [{ "id": "a", "popularity": 3 }, { "id": "b", "popularity": ${raw} }] }`);
      await assert.rejects(readCatalogFile(file), (e: unknown) =>
        e instanceof ValidationError && e.field === 'catalog.items[1].popularity' && e.message === `catalog.items[1].popularity: must be a finite number ≥ 0, got ${got}`, raw);
    }
    writeFileSync(file, JSON.stringify({ items: [{ id: 'a', popularity: 3 }, { id: 'b' }, 'c'] }));
    assert.deepEqual(await readCatalogFile(file), { ids: ['a', 'b', 'c'], popularity: [3, 0, 0] }, 'no popularity is 0');
    // Saved by Notepad or PowerShell, with a byte-order mark (stop 32).
    writeFileSync(file, '\uFEFF' + JSON.stringify({ items: [{ id: 'a', popularity: 3 }] }));
    assert.deepEqual(await readCatalogFile(file), { ids: ['a'], popularity: [3] });
    // Checked as the SDK checks a catalog: a misspelt field or a wrong type is refused, not ignored (stop 40).
    for (const [item, field] of [[{ id: 'b', name: 'Mug' }, 'catalog.items[1].name'], [{ id: 'b', price: 'x' }, 'catalog.items[1].price'], [{ id: 'b', title: 5 }, 'catalog.items[1].title'], [{ id: 'b', category: [1] }, 'catalog.items[1].category']] as const) {
      writeFileSync(file, JSON.stringify({ items: [{ id: 'a', title: 'Red mug', category: 'mugs', price: 4.5, popularity: 3 }, item] }));
      await assert.rejects(readCatalogFile(file), (e: unknown) => e instanceof ValidationError && e.field === field, JSON.stringify(item));
    }
    writeFileSync(file, '{\n  "items": [\n    x\n  ]\n}\n');
    await assert.rejects(readCatalogFile(file), (e: unknown) => e instanceof ValidationError && e.field === '--catalog' && /cannot read .* as JSON: /.test(e.message) && !/[\r\n]/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('property: no body crashes the server; every bad body gets a 4xx JSON reason', async () => {
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 1000, noiseMultiplier: 0, rateLimit: false, log: quiet });
  try {
    const v0 = await pull(server.url);
    const good = honestUpdate(v0, 1);
    // In-process requests through the same app: thousands of bodies without sockets.
    const app = createApp(server.rounds, { log: quiet });
    const send = async (body: Uint8Array) => {
      const res = await app.request('/v1/updates', { method: 'POST', body: body as Uint8Array<ArrayBuffer> });
      return { status: res.status, json: (await res.json()) as Record<string, unknown> };
    };
    const ok4xx = (r: { status: number; json: Record<string, unknown> }) =>
      (r.status === 202 && r.json.accepted === true) || (r.status >= 400 && r.status < 500 && typeof r.json.reason === 'string' && r.json.reason in REJECT_STATUS);
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: good.length + 8 }), async (b) => ok4xx(await send(b))), { numRuns: 300 });
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), async (edits) => {
        const b = good.slice();
        for (const [at, v] of edits) b[at] = v;
        return ok4xx(await send(b));
      }),
      { numRuns: 300 },
    );
    assert.deepEqual(await (await fetch(`${server.url}/v1/health`)).json(), { ok: true, version: 0 });
    assert.equal(DIM, v0.table.dim);
  } finally {
    await server.close();
  }
});

// What a dishonest client may upload is bounded by the rounding part of the norm bound and by the
// scales it may declare; no other test sat between the honest bound and a bound twice as wide (a
// mutation-testing review, stop 35).
const boundsHeader = (noiseMultiplier: number) => ({ bits: 2, dim: 64, itemCount: 4, baseVersion: 0, blockSize: 256, clip: 1, noiseMultiplier, baseHash: new Uint8Array(32), nonce: new Uint8Array(16).fill(1) });
const boundsPolicy = (noiseMultiplier: number) => ({ itemCount: 4, dim: 64, bits: 2, blockSize: 256, clip: 1, noiseMultiplier, normTolerance: 0.01, normSlack: 6 });

test('σ = 0, C = 1: a block of 256 factors all rounded "up" to its scale (norm 16) is refused as over-norm', () => {
  // 2 bits: L = 1, codes 0/1/2 = −s/0/+s. One factor block of 256 at scale 1 (its excess over the
  // noise cap, 1, is within C), every code +L: norm √256 = 16. An honest quantizer cannot write
  // this (a block at scale 1 under C = 1 holds one value of 1 and zeros, which never round up),
  // and the honest bound √(C'² + Σ step²/4 + k·√(2Σ(step²/4)²) + 2kC'·step/2) is about 10.3.
  const u: QuantizedUpdate = { header: boundsHeader(0), scales: new Float32Array([1, 0]), codes: new Uint8Array(4 * 65).fill(1).fill(2, 0, 256) };
  const r = checkUpdate(encodeUpdate(u), boundsPolicy(0));
  assert.equal(r.ok, false, `accepted with norm ${r.ok ? r.norm : ''} under bound ${r.ok ? r.bound.toFixed(3) : ''}`);
  assert.equal(!r.ok && r.reason, 'over-norm');
});

test('σ = 1: a scale 1.5·C above the 8.6·σC noise cap is refused by checkScales, 0.9·C above it is not', () => {
  const sigma = 1;
  const codes = new Uint8Array(4 * 65).fill(1);
  codes[0] = 2; // the block's largest |q| is L, as an honest quantizer writes it
  const u: QuantizedUpdate = { header: boundsHeader(sigma), scales: new Float32Array([MAX_NOISE_SDS * sigma + 1.5, 0]), codes };
  const r = checkScales(u, boundsPolicy(sigma));
  assert.ok(r !== null, 'an inflated scale was taken as plausible');
  assert.equal(r.reason, 'over-norm');
  assert.equal(checkScales({ ...u, scales: new Float32Array([MAX_NOISE_SDS * sigma + 0.9, 0]) }, boundsPolicy(sigma)), null);
});
