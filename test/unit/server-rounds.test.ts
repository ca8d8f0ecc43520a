import { strict as assert } from 'node:assert';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { decodeModel, decodeUpdate, dequantizeUpdate, sha256, toHex } from '../../src/federated/wire.js';
import { startServer } from '../../src/server/index.js';
import { honestUpdate, initialTable, post, pull, quiet, IDS, DIM } from './server-helpers.js';

test('endpoints: health, config, round status, model with version/hash headers, ETag, int8', async () => {
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 3, noiseMultiplier: 0.5, clip: 2, log: quiet });
  try {
    assert.deepEqual(await (await fetch(`${server.url}/v1/health`)).json(), { ok: true, version: 0 });
    const cfg = (await (await fetch(`${server.url}/v1/config`)).json()) as Record<string, number>;
    assert.equal(cfg.dim, DIM);
    assert.equal(cfg.items, IDS.length);
    assert.equal(cfg.clip, 2);
    assert.equal(cfg.noiseMultiplier, 0.5);
    assert.equal(cfg.minClients, 3);
    assert.equal(cfg.maxStaleness, 2);
    assert.equal(cfg.bits, 8); // small table: the widest width fits
    const round = (await (await fetch(`${server.url}/v1/rounds/current`)).json()) as Record<string, unknown>;
    assert.equal(round.version, 0);
    assert.equal(round.pending, 0);
    const res = await fetch(`${server.url}/v1/model`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    assert.equal(res.headers.get('x-localrec-model-version'), '0');
    assert.equal(res.headers.get('x-localrec-model-hash'), toHex(await sha256(bytes)));
    assert.deepEqual(decodeModel(bytes).table, initialTable());
    const etag = res.headers.get('etag')!;
    assert.equal((await fetch(`${server.url}/v1/model`, { headers: { 'if-none-match': etag } })).status, 304);
    const small = new Uint8Array(await (await fetch(`${server.url}/v1/model?encoding=int8`)).arrayBuffer());
    const q = decodeModel(small);
    assert.equal(q.encoding, 'int8');
    assert.equal(toHex(q.canonicalHash!), res.headers.get('x-localrec-model-hash'));
  } finally {
    await server.close();
  }
});

test('If-None-Match: a list of entity tags, W/ prefixes and * all answer 304 when they name the current model (RFC 9110)', async () => {
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 1, noiseMultiplier: 0, rateLimit: false, log: quiet });
  try {
    const model = (ifNoneMatch: string, encoding = '') => fetch(`${server.url}/v1/model${encoding}`, { headers: { 'if-none-match': ifNoneMatch } }).then((r) => r.status);
    const etag = (await fetch(`${server.url}/v1/model`)).headers.get('etag')!;
    const int8 = (await fetch(`${server.url}/v1/model?encoding=int8`)).headers.get('etag')!;
    assert.equal(await model(etag), 304);
    assert.equal(await model(`W/${etag}`), 304, 'weak comparison');
    assert.equal(await model(`"0000", ${etag}`), 304, 'one of a list');
    assert.equal(await model(`W/"0000",W/${etag}`), 304);
    assert.equal(await model('*'), 304);
    assert.equal(await model(`"0000", "a,b"`), 200, 'no tag matches (a comma inside a tag is part of it)');
    assert.equal(await model(int8), 200, 'the int8 tag does not name the float32 model');
    assert.equal(await model(`${etag}, ${int8}`, '?encoding=int8'), 304);
    assert.equal(await model(etag.slice(1, -1)), 200, 'an unquoted tag is not an entity tag');
    // A new version: the old tag no longer matches.
    const v0 = await pull(server.url);
    assert.equal((await post(server.url, honestUpdate(v0, 1))).status, 202);
    assert.equal(await model(`W/${etag}`), 200);
  } finally {
    await server.close();
  }
});

test('a round aggregates exactly when minClients updates arrived; the new version is base + mean delta', async () => {
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 3, noiseMultiplier: 0, rateLimit: false, log: quiet });
  try {
    const v0 = await pull(server.url);
    const bodies = [1, 2, 3, 4].map((s) => honestUpdate(v0, s));
    const r1 = await post(server.url, bodies[0]!);
    assert.equal(r1.status, 202);
    assert.equal(r1.json.pending, 1);
    assert.equal((await post(server.url, bodies[1]!)).json.version, 0);
    let round = (await (await fetch(`${server.url}/v1/rounds/current`)).json()) as Record<string, unknown>;
    assert.deepEqual([round.version, round.pending], [0, 2]);
    const r3 = await post(server.url, bodies[2]!);
    assert.equal(r3.status, 202);
    assert.equal(r3.json.published, 1);
    round = (await (await fetch(`${server.url}/v1/rounds/current`)).json()) as Record<string, unknown>;
    assert.deepEqual([round.version, round.pending], [1, 0]);

    const v1 = await pull(server.url);
    assert.equal(v1.table.version, 1);
    const deltas = bodies.slice(0, 3).map((b) => dequantizeUpdate(decodeUpdate(b)));
    const nf = IDS.length * DIM;
    for (let i = 0; i < nf; i++) {
      const expected = v0.table.factors[i]! + (deltas[0]![i]! + deltas[1]![i]! + deltas[2]![i]!) / 3;
      assert.ok(Math.abs(v1.table.factors[i]! - expected) < 1e-6, `factor ${i}`);
    }
    for (let i = 0; i < IDS.length; i++) {
      const expected = v0.table.bias[i]! + (deltas[0]![nf + i]! + deltas[1]![nf + i]! + deltas[2]![nf + i]!) / 3;
      assert.ok(Math.abs(v1.table.bias[i]! - expected) < 1e-6, `bias ${i}`);
    }
    // The fourth update (base 0, one version behind) is accepted into the next round.
    const r4 = await post(server.url, bodies[3]!);
    assert.equal(r4.status, 202);
    assert.deepEqual([r4.json.version, r4.json.pending], [1, 1]);
  } finally {
    await server.close();
  }
});

test('FedAdam publishes a finite next version that moves along the mean delta', async () => {
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), minClients: 2, noiseMultiplier: 0, aggregator: 'fedadam', rateLimit: false, log: quiet });
  try {
    const v0 = await pull(server.url);
    const bodies = [5, 6].map((s) => honestUpdate(v0, s));
    for (const b of bodies) assert.equal((await post(server.url, b)).status, 202);
    const v1 = await pull(server.url);
    assert.equal(v1.table.version, 1);
    const d = bodies.map((b) => dequantizeUpdate(decodeUpdate(b)));
    let agree = 0;
    let moved = 0;
    for (let i = 0; i < v1.table.factors.length; i++) {
      const step = v1.table.factors[i]! - v0.table.factors[i]!;
      const mean = (d[0]![i]! + d[1]![i]!) / 2;
      if (Math.abs(mean) > 1e-6) {
        moved++;
        if (Math.sign(step) === Math.sign(mean)) agree++;
      }
    }
    assert.equal(agree, moved);
  } finally {
    await server.close();
  }
});

test('--static serves a folder at / next to the API', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-static-'));
  writeFileSync(join(dir, 'index.html'), '<h1>shop</h1>');
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), staticDir: dir, log: quiet });
  try {
    const res = await fetch(`${server.url}/`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '<h1>shop</h1>');
    assert.equal((await fetch(`${server.url}/v1/health`)).status, 200);
    const missing = await fetch(`${server.url}/nope.html`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { reason: string }).reason, 'not-found');
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--static keeps dotfiles, links out of the folder and the server\'s own database private', async () => {
  const outside = mkdtempSync(join(tmpdir(), 'localrec-outside-'));
  const dir = mkdtempSync(join(tmpdir(), 'localrec-static-'));
  writeFileSync(join(outside, 'secret.txt'), 'OUTSIDE-CONTENT');
  writeFileSync(join(dir, '.env'), 'SECRET=1');
  mkdirSync(join(dir, '.git'));
  writeFileSync(join(dir, '.git', 'config'), '[core]');
  mkdirSync(join(dir, 'assets'));
  writeFileSync(join(dir, 'assets', 'app.js'), 'ok');
  symlinkSync(join(outside, 'secret.txt'), join(dir, 'link.txt'));
  symlinkSync(outside, join(dir, 'linkdir'));
  symlinkSync(join(dir, 'assets', 'app.js'), join(dir, 'inside-link.js'));
  // A folder is answered with its index.html: a link there must not lead out either.
  mkdirSync(join(dir, 'sub'));
  symlinkSync(join(outside, 'secret.txt'), join(dir, 'sub', 'index.html'));
  symlinkSync(join(outside, 'secret.txt'), join(dir, 'index.html'));
  // In code as on the command line: a data dir inside the published folder is refused.
  await assert.rejects(startServer({ port: 0, dataDir: join(dir, '.data'), initialTable: initialTable(), staticDir: dir, log: quiet }).then(async (s) => (await s.close(), s)), /options\.dataDir: '.*\.data' is inside the options\.staticDir folder/);
  assert.equal(existsSync(join(dir, '.data')), false, 'nothing created');
  const server = await startServer({ port: 0, dataDir: null, initialTable: initialTable(), staticDir: dir, log: quiet });
  try {
    const get = async (path: string) => {
      const res = await fetch(`${server.url}${path}`);
      return [res.status, await res.text()] as const;
    };
    assert.deepEqual(await get('/assets/app.js'), [200, 'ok']);
    assert.deepEqual(await get('/inside-link.js'), [200, 'ok'], 'a link that stays inside is served');
    for (const path of ['/.env', '/.git/config', '/%2eenv', '/assets/../.env', '/link.txt', '/linkdir/secret.txt', '/%E0%A4%A', '/', '/sub', '/sub/', '/sub/index.html']) {
      const [status, body] = await get(path);
      assert.equal(status, 404, `${path}: ${status} ${body}`);
      assert.ok(!body.includes('SECRET=1') && !body.includes('OUTSIDE-CONTENT') && !body.includes('[core]'), `${path}: ${body}`);
    }
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(outside, { recursive: true, force: true });
  }
});
