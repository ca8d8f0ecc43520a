import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { buildClientUpdate } from '../../src/federated/client-update.js';
import { createApp, REJECT_STATUS, startServer, type RejectReason } from '../../src/server/index.js';
import { honestUpdate, initialTable, post, pull, quiet, spawnServe, trained, IDS, DIM } from './server-helpers.js';

function expectReject(r: { status: number; json: Record<string, unknown> }, reason: RejectReason): void {
  assert.equal(r.json.reason, reason, JSON.stringify(r.json));
  assert.equal(r.status, REJECT_STATUS[reason]);
  assert.ok(r.status >= 400 && r.status < 500);
  assert.equal(typeof r.json.error, 'string');
}

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

test('behind a proxy (trustProxy) the rate limit keys on X-Forwarded-For; otherwise the header is ignored', async () => {
  const postFrom = async (url: string, body: Uint8Array, forwardedFor: string) => {
    const res = await fetch(`${url}/v1/updates`, { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream', 'x-forwarded-for': forwardedFor } });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };
  /** Two shoppers behind one proxy each get their own allowance of 1; the first one's second update is over it. */
  const limitsEachShopper = async (url: string) => {
    const v0 = await pull(url);
    assert.equal((await postFrom(url, honestUpdate(v0, 1), '203.0.113.7, 10.0.0.1')).status, 202);
    assert.equal((await postFrom(url, honestUpdate(v0, 2), '198.51.100.9')).status, 202);
    expectReject(await postFrom(url, honestUpdate(v0, 3), '203.0.113.7'), 'rate-limited');
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
