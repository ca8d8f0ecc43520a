/**
 * scripts/make-catalog.ts and make-neighbors.ts as the user runs them: make-catalog reads a plain or
 * gzip CSV, and both fail in one line (no stack, exit 1), never with an empty catalog.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const HEADER = 'invoice,stock_code,description,quantity,timestamp,unit_price,customer_id,country';
const ROWS = [
  '536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,1291191960,2.55,17850,United Kingdom',
  '536365,71053,WHITE METAL LANTERN,6,1291191960,3.39,17850,United Kingdom',
  '536366,22633,HAND WARMER UNION JACK,6,1291192020,1.85,17850,United Kingdom',
];

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'make-catalog-'));
});
after(() => rm(dir, { recursive: true, force: true }));

function script(name: string, ...args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, ['--import', 'tsx', join(ROOT, 'scripts', name), ...args], { cwd: ROOT }, (e, _stdout, stderr) =>
      done({ code: e ? ((e as { code?: number }).code ?? 1) : 0, stderr }),
    );
  });
}
const makeCatalog = (input: string, out: string) => script('make-catalog.ts', '--input', input, '--out', out);

test('reads a plain CSV as well as a gzip one', async () => {
  for (const [name, body] of [['orders.csv', [HEADER, ...ROWS].join('\n')], ['orders.csv.gz', gzipSync([HEADER, ...ROWS].join('\n'))]] as const) {
    const out = join(dir, `${name}.json`);
    await writeFile(join(dir, name), body);
    const r = await makeCatalog(join(dir, name), out);
    assert.equal(r.code, 0, r.stderr);
    const catalog = JSON.parse(await readFile(out, 'utf8')) as { items: Array<{ id: string }> };
    assert.deepEqual(catalog.items.map((i) => i.id).sort(), ['22633', '71053', '85123A'], name);
  }
});

test('a file without the retail columns, or without a product, is one line and no catalog', async () => {
  const cases = [
    ['events.csv', 'user,item\n1,2\n', /^make-catalog: --input: column 'invoice' is not in events\.csv \(header: user, item\)\n$/],
    ['cancelled.csv', `${HEADER}\nC1,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-6,1291191960,2.55,17850,United Kingdom\n`, /^make-catalog: --input: no product to write: 1 rows read, 0 stock codes sold \(/],
    ['short.csv', `${HEADER}\n${ROWS[0]}\n1,2,3\n`, /^make-catalog: --input: short\.csv: Invalid Record Length: columns length is 8, got 3 on line 3\n$/],
  ] as const;
  for (const [name, body, re] of cases) {
    const out = join(dir, `${name}.json`);
    await writeFile(join(dir, name), body);
    const r = await makeCatalog(join(dir, name), out);
    assert.equal(r.code, 1, name);
    assert.match(r.stderr, re);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!existsSync(out), `${name}: no catalog written`);
  }
});

test('make-neighbors: a catalog that is not JSON is one line, though V8 quotes it with its line breaks', async () => {
  await writeFile(join(dir, 'orders.csv'), [HEADER, ...ROWS].join('\n'));
  await writeFile(join(dir, 'broken.json'), '{\n  "items": oops\n}\n');
  const r = await script('make-neighbors.ts', '--input', join(dir, 'orders.csv'), '--catalog', join(dir, 'broken.json'), '--out', join(dir, 'n.lrn'));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^make-neighbors: --catalog: .*broken\.json: Unexpected token 'o', .*oops.* is not valid JSON \(make it with scripts\/make-catalog\.ts\)\n$/);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
});
