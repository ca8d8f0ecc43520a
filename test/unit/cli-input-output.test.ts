/**
 * Where the CLI reads and writes: `--data` from a pipe, standard input (`-`), `/dev/stdin` or a
 * FIFO (a shell's `<(…)`), read once as a stream; an output folder that takes no new file is
 * refused before the work, naming the flag; a folder that cannot be made names the flag, the
 * folder and the system's reason.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, createWriteStream, existsSync, mkdirSync, openSync, readdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { isValidationError } from '../../src/errors.js';
import { loadCsv } from '../../src/eval/csv-loader.js';
import { checkOutputFile, checkOutputFolder, makeOutputFolder } from '../../src/output-file.js';
import { SqliteStorage } from '../../src/server/sqlite-storage.js';
import { scratchFolder } from './eval-helpers.js';

const { dir, write } = scratchFolder('localrec-cli-io-');
const named = (field: string, re: RegExp) => (e: unknown) => isValidationError(e) && e.field === field && re.test(e.message);

// Six users of 4 items at distinct times: every one is a test user under leave-one-out.
const CSV = ['user,item,t', ...Array.from({ length: 6 }, (_, u) => [0, 1, 2, 3].map((t) => `u${u},i${(u + t) % 7},${t}`)).flat()].join('\n') + '\n';
const EVAL = ['eval', '--user', 'user', '--item', 'item', '--time', 't', '--models', 'popular'];

/** Runs the CLI with `input` on its standard input; killed if it takes longer than a minute. */
function cli(args: string[], input: Buffer | string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.on('error', () => {}); // the CLI may stop reading (an error) before all is written
  child.stdin.end(input);
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  return new Promise((done) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    }),
  );
}

/**
 * A folder in which no file can be created: a read-only one (chmod) for an ordinary user; for
 * root, whom chmod does not stop, /sys (sysfs takes no new files). Undefined when there is none.
 */
function unwritableFolder(): string | undefined {
  const candidates: string[] = [];
  if (process.getuid?.() !== 0) {
    const ro = join(dir, 'read-only');
    mkdirSync(ro, { recursive: true });
    chmodSync(ro, 0o555);
    candidates.push(ro);
  }
  candidates.push('/sys');
  for (const c of candidates) {
    if (!existsSync(c)) continue;
    const probe = join(c, `.probe-${process.pid}`);
    try {
      closeSync(openSync(probe, 'wx'));
      unlinkSync(probe);
    } catch {
      return c;
    }
  }
  return undefined;
}
const RO = unwritableFolder();

test('--data - and --data /dev/stdin read a pipe, plain or gzipped; the figures are those of the file', async () => {
  const file = write('events.csv', CSV);
  const fromFile = await cli([...EVAL, '--data', file], '');
  assert.equal(fromFile.code, 0, fromFile.stderr);
  const figures = (out: string) => {
    const { users, items, testUsers, hr, ndcg } = JSON.parse(out) as Record<string, unknown>;
    return { users, items, testUsers, hr, ndcg };
  };
  for (const [data, input] of [
    ['-', CSV],
    ['/dev/stdin', CSV],
    ['-', gzipSync(CSV)],
    ['/dev/stdin', gzipSync(CSV)],
  ] as const) {
    const r = await cli([...EVAL, '--data', data], input);
    assert.equal(r.code, 0, `${data}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /ESPIPE|cannot read/);
    assert.deepEqual(figures(r.stdout), figures(fromFile.stdout), data);
  }
  // Through a shell's pipe (a pipe, not the socket Node's spawn gives), as `cat f | localrec …` runs.
  const gz = join(dir, 'events.csv.gz');
  writeFileSync(gz, gzipSync(CSV));
  const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  for (const data of ['/dev/stdin', '-']) {
    const sh = spawnSync('sh', ['-c', `cat ${quote(gz)} | ${[process.execPath, '--import', 'tsx', 'src/cli.ts', ...EVAL, '--data', data].map(quote).join(' ')}`], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(sh.status, 0, `${data}: ${sh.stderr}`);
    assert.deepEqual(figures(sh.stdout), figures(fromFile.stdout), `sh pipe ${data}`);
  }
});

test('standard input keeps the checks of a file: not UTF-8 is refused naming the line, and it is read by one flag only', async () => {
  const cp1252 = Buffer.concat([Buffer.from('user,item,t\nu1,a,1\nu1,caf'), Buffer.from([0xe9]), Buffer.from(',2\n')]);
  const bad = await cli([...EVAL, '--data', '-'], cp1252);
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  assert.match(bad.stderr, /^localrec: ValidationError: --data: '-' is not UTF-8 text \(line 3, byte 0xe9\)/);
  // `--format lines` reads two files: both from standard input would read the second as empty.
  const twice = await cli(['eval', '--format', 'lines', '--train', '-', '--test', '-', '--models', 'popular'], 'u1 a b c\n');
  assert.equal(twice.code, 1);
  assert.match(twice.stderr, /^localrec: ValidationError: --test: '-' \(standard input\) is read by another flag already/);
});

test('a FIFO (what a shell gives for <(…)) is read as a stream, gzip told from its first bytes', async (t) => {
  const fifo = join(dir, 'events.fifo');
  if (spawnSync('mkfifo', [fifo]).status !== 0) return t.skip('no mkfifo here');
  // The writer opens when the reader does (an open FIFO end waits for the other).
  const writer = createWriteStream(fifo);
  writer.end(gzipSync(CSV));
  try {
    const log = await loadCsv(fifo, { user: 'user', item: 'item', time: 't' });
    assert.equal(log.userIds.length, 6);
  } finally {
    writer.destroy();
  }
  // Missing files and folders are still named at once.
  await assert.rejects(loadCsv(join(dir, 'nope.csv'), { user: 'user', item: 'item' }), named('options.data', /cannot read '.*nope\.csv' \(ENOENT\)/));
  await assert.rejects(loadCsv(dir, { user: 'user', item: 'item' }), named('options.data', /cannot read '.*' \(EISDIR\)/));
});

test('an output folder that takes no new file is refused at once, naming the flag and the folder', { skip: RO === undefined && 'no unwritable folder here' }, async () => {
  const ro = RO!;
  assert.throws(() => checkOutputFile(join(ro, 'n.lrn'), '--out'), named('--out', new RegExp(`cannot write in folder '${ro}' \\((EACCES|EPERM|EROFS): `)));
  assert.throws(() => checkOutputFile(join(ro, 'catalog.json'), '--write-catalog'), named('--write-catalog', /cannot write in folder/));
  // A folder the command would create, in the folder above it; or one that exists.
  assert.throws(() => checkOutputFolder(join(ro, 'keys'), '--out'), named('--out', /cannot write in folder/));
  assert.throws(() => checkOutputFolder(ro, '--data-dir'), named('--data-dir', /cannot write in folder/));
  // The probe leaves nothing behind where it succeeds, and a device is written in place (not probed).
  const ok = join(dir, 'writable');
  mkdirSync(ok);
  checkOutputFile(join(ok, 'n.lrn'), '--out');
  checkOutputFolder(join(ok, 'keys'), '--out');
  checkOutputFolder(ok, '--out');
  assert.deepEqual(readdirSync(ok), []);
  checkOutputFile('/dev/null', '--out');
  // The CLI says so before it reads the data.
  const orders = write('orders.csv', CSV);
  const r = await cli(['neighbors', '--data', orders, '--user', 'user', '--item', 'item', '--out', join(ro, 'n.lrn')], '');
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^localrec: ValidationError: --out: cannot write in folder/);
  assert.doesNotMatch(r.stderr, /loading|EROFS.*open|ENOENT/);
});

test('a folder that cannot be made names the flag, the folder and the reason (not a bare ENOENT from mkdir)', { skip: RO === undefined && 'no unwritable folder here' }, async () => {
  const ro = RO!;
  const place = join(ro, 'x', 'keys');
  assert.throws(() => makeOutputFolder(place, '--out'), named('--out', new RegExp(`cannot create folder '${place}' \\(making '${ro}/x'\\) \\((EACCES|EPERM|EROFS): `)));
  const file = write('a-file', 'x');
  assert.throws(() => makeOutputFolder(join(file, 'keys'), '--out'), named('--out', /'.*a-file' is a file, not a folder/));
  makeOutputFolder(join(dir, 'made', 'deep'), '--out');
  makeOutputFolder(join(dir, 'made', 'deep'), '--out'); // already there: fine
  assert.ok(existsSync(join(dir, 'made', 'deep')));
  // The SQLite store's data dir (serve --data-dir: the CLI names options.dataDir so).
  assert.throws(() => SqliteStorage.open(join(ro, 'y', 'data')), named('options.dataDir', /cannot create folder '.*data' \(making '.*y'\) \((EACCES|EPERM|EROFS): /));
  // offers keygen: one line naming --out.
  const r = await cli(['offers', 'keygen', '--out', place], '');
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^localrec: ValidationError: --out: cannot (write in|create) folder '[^']*' \((EACCES|EPERM|EROFS): [^)]*\)\n$/);
});
