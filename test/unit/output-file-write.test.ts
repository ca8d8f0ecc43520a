/**
 * Output files are written in one step (a temporary file in the same folder, renamed into place),
 * a failed write names the flag and the path, `offers keygen` writes both keys or neither, and
 * every command's output check refuses an existing key file.
 */
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Command } from 'commander';
import { isValidationError } from '../../src/errors.js';
import { runNeighbors } from '../../src/eval/neighbors-command.js';
import { register as registerOffers } from '../../src/offers/offers-command.js';
import { checkOutputFile, parseJsonText, writeOutputFile, writeOutputFiles } from '../../src/output-file.js';

const dir = mkdtempSync(join(tmpdir(), 'localrec-out-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const folder = (name: string) => {
  const p = join(dir, name);
  mkdirSync(p);
  return p;
};
const named = (field: string, re: RegExp) => (e: unknown) => isValidationError(e) && e.field === field && re.test(e.message);
const ORDERS = (() => {
  const p = join(dir, 'orders.csv');
  writeFileSync(p, 'user,item\nu1,a\nu1,b\nu2,a\nu2,b\n');
  return p;
})();
const neighbors = (out: string) =>
  runNeighbors({ data: ORDERS, format: 'csv', user: 'user', item: 'item', filter: [], out, width: '4', l2: '1', minSupport: '1' }, { stdout: () => {}, stderr: { write: () => true } });

test('writeOutputFile: the content lands under the name, no temporary file is left, a replaced file keeps its mode, a link stays a link', async () => {
  const d = folder('plain');
  const p = join(d, 'out.json');
  await writeOutputFile(p, '{"a":1}\n', '--out');
  assert.equal(readFileSync(p, 'utf8'), '{"a":1}\n');
  assert.deepEqual(readdirSync(d), ['out.json']);
  await chmod(p, 0o640);
  await writeOutputFile(p, new Uint8Array([1, 2, 3]), '--out');
  assert.deepEqual([...readFileSync(p)], [1, 2, 3]);
  assert.equal(statSync(p).mode & 0o777, 0o640, 'the replaced file keeps its permissions');
  await writeOutputFile(join(d, 'secret'), 'x', '--out', { mode: 0o600 });
  assert.equal(statSync(join(d, 'secret')).mode & 0o777, 0o600);
  const link = join(d, 'link.json');
  symlinkSync(p, link);
  await writeOutputFile(link, 'via link', '--out');
  assert.ok(lstatSync(link).isSymbolicLink(), 'the link is kept');
  assert.equal(readFileSync(p, 'utf8'), 'via link', 'its target is replaced');
  assert.deepEqual(readdirSync(d).sort(), ['link.json', 'out.json', 'secret']);
});

test('a failed write names the flag and the path, leaves the old file as it was and no temporary file', async () => {
  const d = folder('failing');
  const p = join(d, 'table.lrn');
  writeFileSync(p, 'old');
  // Data the write refuses, after the temporary file was opened.
  await assert.rejects(writeOutputFile(p, 42 as never, '--out'), named('--out', new RegExp(`^--out: cannot write '${p}': `)));
  assert.equal(readFileSync(p, 'utf8'), 'old');
  assert.deepEqual(readdirSync(d), ['table.lrn']);
});

test('neighbors --out /dev/full: the error names --out and the file, and the device is written in place, not replaced', { skip: !existsSync('/dev/full') }, async () => {
  await assert.rejects(neighbors('/dev/full'), named('--out', /^--out: cannot write '\/dev\/full': ENOSPC/));
  assert.ok(statSync('/dev/full').isCharacterDevice(), '/dev/full is still the device');
  await neighbors('/dev/null');
  assert.ok(statSync('/dev/null').isCharacterDevice());
});

test('writeOutputFiles exclusive: both files or neither (a name taken meanwhile undoes the first)', async () => {
  const d = folder('pair');
  writeFileSync(join(d, 'b'), 'taken');
  await assert.rejects(
    writeOutputFiles([{ path: join(d, 'a'), data: 'A', flag: '--out', mode: 0o600 }, { path: join(d, 'b'), data: 'B', flag: '--out' }], { exclusive: true }),
    named('--out', new RegExp(`cannot write '${join(d, 'b')}': EEXIST`)),
  );
  assert.deepEqual(readdirSync(d), ['b'], 'a was removed again, no temporary files');
  assert.equal(readFileSync(join(d, 'b'), 'utf8'), 'taken');
});

test('offers keygen: when public.jwk cannot be written, private.jwk is not left behind (a later keygen would refuse the folder)', async () => {
  const keys = folder('keys');
  // A dangling link passes keygen's "exists" check, and no file can be created under its name.
  symlinkSync(join(dir, 'nowhere'), join(keys, 'public.jwk'));
  const program = new Command().exitOverride();
  registerOffers(program);
  await assert.rejects(program.parseAsync(['node', 'localrec', 'offers', 'keygen', '--out', keys]), named('--out', /public\.jwk': EEXIST/));
  assert.deepEqual(readdirSync(keys), ['public.jwk'], 'no private.jwk, no temporary files');
});

test('every output check refuses an existing key file (JWK), not only offers sign and fit-affinity: neighbors --out too', async () => {
  const key = join(dir, 'private.jwk');
  writeFileSync(key, '{"kty":"EC","crv":"P-256","x":"x","y":"y","d":"d"}\n');
  const refused = named('--out', /^--out: '.*private\.jwk' holds a key \(JWK\); refusing to overwrite it \(choose another file\)$/);
  assert.throws(() => checkOutputFile(key, '--out'), refused);
  await assert.rejects(neighbors(key), refused);
  assert.match(readFileSync(key, 'utf8'), /"d":"d"/, 'the key is left as it was');
  // Saved by Notepad or PowerShell, with a byte-order mark before it: still a key (stop 32).
  const marked = join(dir, 'private-bom.jwk');
  writeFileSync(marked, '\uFEFF{"kty":"EC","crv":"P-256","x":"x","y":"y","d":"d"}\r\n');
  assert.throws(() => checkOutputFile(marked, '--out'), named('--out', /private-bom\.jwk' holds a key/));
  // Other JSON, and files that are not JSON, are fine.
  writeFileSync(join(dir, 'other.json'), '{"kty":1}');
  checkOutputFile(join(dir, 'other.json'), '--out');
  checkOutputFile(ORDERS, '--out');
});

test('offers sign reads a catalog and key saved with a byte-order mark (stop 32)', async () => {
  const d = folder('bom-sign');
  const program = new Command().exitOverride();
  registerOffers(program);
  await program.parseAsync(['node', 'localrec', 'offers', 'keygen', '--out', join(d, 'keys')]);
  const key = join(d, 'keys', 'private.jwk');
  writeFileSync(key, '\uFEFF' + readFileSync(key, 'utf8'));
  const catalog = join(d, 'offers.json');
  writeFileSync(catalog, '\uFEFF' + JSON.stringify({ version: 1, issuedAt: 0, currency: 'GBP', offers: [{ id: 'o', title: 'O', discount: { kind: 'percent', percent: 10 }, scope: { kind: 'all' } }] }));
  const again = new Command().exitOverride();
  registerOffers(again);
  await again.parseAsync(['node', 'localrec', 'offers', 'sign', '--key', key, '--catalog', catalog, '--out', join(d, 'signed.json')]);
  assert.equal((JSON.parse(readFileSync(join(d, 'signed.json'), 'utf8')) as { alg: string }).alg, 'ES256');
});

test('a JSON file that does not parse is named by line and column, a gzip or binary file says so, and no raw control character reaches the message (stop 40)', () => {
  const refused = (text: string, re: RegExp) => assert.throws(() => parseJsonText(text), (e: unknown) => e instanceof SyntaxError && re.test(e.message) && !/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/.test(e.message), JSON.stringify(text));
  refused('{\n  "items": 1,\n}', /Expected double-quoted property name in JSON at line 3, column 1$/);
  refused('{"a": 1}\n x', /after JSON at line 2, column 2$/);
  refused('"\u0007"', /Bad control character in string literal in JSON at line 1, column 2$/);
  refused(String.fromCharCode(0x1f, 0xfffd, 8, 0) + 'abc', /^the file is gzip-compressed, not JSON text: decompress it first \(gunzip\)$/);
  refused('ab\u0000cd', /^the file is binary, not JSON text$/);
  refused('\u0002x', /Unexpected token/);
  // Still JSON.parse for what parses, without a byte-order mark.
  assert.deepEqual(parseJsonText('\uFEFF{"a":[1,2]}'), { a: [1, 2] });
});
