import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, test } from 'node:test';
import { Command } from 'commander';
import { isValidationError } from '../../src/errors.js';
import { register, type EvalCommandOptions } from '../../src/eval/eval-command.js';
import { runNeighbors } from '../../src/eval/neighbors-command.js';
import { planModels } from '../../src/eval/model-registry.js';
import { runEval } from '../../src/eval/run-eval.js';
import type { EvalResult } from '../../src/eval/runner.js';
import { scratchFolder } from './eval-helpers.js';

const { dir, write } = scratchFolder('localrec-cli-');
const TRAIN = write('train.txt', ['u1 a b c', 'u2 a b', 'u3 b c d', 'u4 c d', 'u5 a b d', 'u6 a c'].join('\n'));
const TEST = write('test.txt', ['u2 c', 'u4 b', 'u6 b'].join('\n'));
const EVENTS = write(
  'events.csv',
  ['user,item,t,qty', ...['1', '2', '3', '4', '5', '6'].flatMap((u, k) => ['a', 'b', 'c', 'd'].slice(0, 3 + (k % 2)).map((i, p) => `${u},${i},${p},${p + 1}`)), '7,a,0,-1'].join('\n'),
);

const base = (o: Partial<EvalCommandOptions>): EvalCommandOptions => ({ format: 'csv', filter: [], k: '10', seed: '1', models: 'popular', ...o });
async function run(o: Partial<EvalCommandOptions>): Promise<{ results: EvalResult[]; lines: string[]; stderr: string }> {
  const lines: string[] = [];
  let stderr = '';
  const results = await runEval(base(o), { stdout: (s) => lines.push(s), stderr: { isTTY: false, write: (s: string) => (stderr += s) } });
  return { results, lines, stderr };
}

test('lines format, given protocol: one JSON line per model with every field', async () => {
  const { lines, stderr } = await run({ format: 'lines', train: TRAIN, test: TEST, models: 'popular,itemknn,sparse-ease:sparse-width=2:ease-l2=1', k: '2' });
  assert.equal(lines.length, 3);
  const rows = lines.map((l) => JSON.parse(l) as EvalResult);
  assert.deepEqual(rows.map((r) => r.model), ['popular', 'itemknn', 'sparse-ease:sparse-width=2:ease-l2=1']);
  for (const r of rows) {
    for (const key of ['model', 'data', 'users', 'items', 'testUsers', 'k', 'hr', 'ndcg', 'recall', 'coverage', 'ms', 'bytesPerItem']) assert.ok(key in r, key);
    assert.equal(r.testUsers, 3);
    assert.equal(r.items, 4);
    assert.equal(r.k, 2);
    assert.equal(r.data, 'train.txt');
  }
  assert.deepEqual(rows[2].params, { 'ease-l2': 1, 'sparse-width': 2, 'sparse-prune': 'row', 'sparse-positive': false, recency: 0.5, confidence: 'none', solver: 'auto' });
  assert.equal(rows[2].bytesPerItem, 12);
  // Not a terminal: plain progress lines, no carriage returns.
  assert.match(stderr, /train\.txt: 6 users, 4 items/);
  assert.doesNotMatch(stderr, /\r/);
  // Progress is named by the spec as given, as the result line is (two specs of one model told apart).
  assert.match(stderr, /^sparse-ease:sparse-width=2:ease-l2=1 fit/m);
});

test('csv format with filter and weight: loo split counts', async () => {
  const { results } = await run({ data: EVENTS, user: 'user', item: 'item', time: 't', weight: 'qty', filter: ['qty>0'] });
  assert.equal(results[0].users, 6); // user 7 filtered out
  assert.equal(results[0].testUsers, 6);
});

test('option errors name the option and the allowed values', async () => {
  const fails = async (o: Partial<EvalCommandOptions>, field: string, re: RegExp) =>
    assert.rejects(run(o), (e: unknown) => isValidationError(e) && e.field === field && re.test(e.message), `${field} ${re}`);
  await fails({ format: 'xml' }, '--format', /retail, csv, lines/);
  await fails({ format: 'lines', train: TRAIN }, '--test', /required/);
  await fails({ format: 'lines', train: TRAIN, test: TEST, protocol: 'loo' }, '--protocol', /only 'given'/);
  // The other format's flag would be ignored: refused by name.
  await fails({ format: 'lines', train: TRAIN, test: TEST, data: EVENTS }, '--data', /is for --format retail\|csv; --format lines reads --train and --test/);
  await fails({ data: EVENTS, user: 'user', item: 'item', train: TRAIN }, '--train', /is for --format lines; --format csv reads --data/);
  await fails({ format: 'lines', train: TRAIN, test: TEST, user: 'uid' }, '--user', /is for --format retail\|csv/);
  await fails({ format: 'lines', train: TRAIN, test: TEST, filter: ['q>0'] }, '--filter', /is for --format retail\|csv/);
  await fails({ data: EVENTS }, '--user', /required/);
  await fails({ data: EVENTS, user: 'user', item: 'item', k: '0' }, '--k', /integer from 1 to 10000, got '0'/);
  await fails({ data: EVENTS, user: 'user', item: 'item', k: '1e10' }, '--k', /integer from 1 to 10000, got '1e10'/);
  // event=rating reads the weight as stars: without a weight column every row is a 1-star rating.
  await fails({ data: EVENTS, user: 'user', item: 'item', models: 'popular,localrec:event=rating' }, '--weight', /localrec:event=rating reads each row's weight as its stars; name the rating column with --weight/);
  await fails({ format: 'lines', train: TRAIN, test: TEST, models: 'localrec:event=rating' }, '--models', /--format lines has no weights/);
  // confidence=weight without a weight column: every row weighs 1, i.e. confidence=none.
  await fails({ data: EVENTS, user: 'user', item: 'item', models: 'popular,ease:confidence=weight' }, '--weight', /ease:confidence=weight weighs each row by its weight; name the weight column with --weight/);
  await fails({ data: EVENTS, user: 'user', item: 'item', models: 'ease', confidence: 'weight' }, '--weight', /ease with --confidence weight weighs each row by its weight/);
  await fails({ format: 'lines', train: TRAIN, test: TEST, models: 'ease:confidence=weight' }, '--models', /--format lines has no weights/);
  await fails({ format: 'lines', train: TRAIN, test: TEST, models: 'ease', confidence: 'weight' }, '--confidence', /--format lines has no weights/);
  // Nobody to measure: an error, not zeros and exit 0.
  const few = write('few.csv', ['user,item', 'u1,a', 'u1,b', 'u2,a'].join('\n'));
  await fails({ data: few, user: 'user', item: 'item' }, '--data', /has no test users: leave-one-out needs a user with at least 3 distinct items \(2 users read\)/);
  // A cut-off gzip file is named, not a bare zlib error.
  const gz = gzipSync(Buffer.from(['u1 a b c', 'u2 a b', 'u3 b c d'].join('\n').repeat(50)));
  const cut = join(dir, 'cut.txt.gz');
  writeFileSync(cut, gz.subarray(0, gz.length - 12));
  await fails({ format: 'lines', train: cut, test: TEST }, 'options.train', /cannot read '.*cut\.txt\.gz': unexpected end of file/);
  const seen = write('seen.txt', 'u1 a');
  await fails({ format: 'lines', train: TRAIN, test: seen }, 'options.test', /leaves no test users: of the 1 users with test items in 'seen\.txt', 0 have no training line .* and 1 has only items already in their training history/);
  await fails({ data: EVENTS, user: 'user', item: 'item', models: 'popular,svd' }, 'options.models', /allowed: popular, itemknn/);
  await fails({ data: EVENTS, user: 'user', item: 'itm' }, 'options.item', /header: user, item, t, qty/);
  await fails({ data: join(dir, 'missing.csv'), user: 'u', item: 'i' }, 'options.data', /ENOENT/);
  assert.throws(() => planModels('sparse-ease:width=3', {}), (e: unknown) => isValidationError(e) && /PARAM one of ease-l2, sparse-width/.test(e.message));
  assert.throws(() => planModels('sparse-ease', { 'sparse-prune': 'diag' }), (e: unknown) => isValidationError(e) && e.field === '--sparse-prune' && /row, col/.test(e.message));
  assert.throws(() => planModels('ease', { recency: '0' }), (e: unknown) => isValidationError(e) && e.field === '--recency');
  // A flag no listed model uses is still checked; a column flag the retail preset fixes is refused.
  assert.throws(() => planModels('popular', { 'knn-neighbors': '-5' }), (e: unknown) => isValidationError(e) && e.field === '--knn-neighbors');
  // localrec's neighbour file holds at most 256 per item: refused when planned, before any model runs.
  assert.throws(() => planModels('popular,localrec:sparse-width=300', {}), (e: unknown) => isValidationError(e) && e.field === '--models localrec:sparse-width=300' && /at most 256 neighbours per item, got 300/.test(e.message));
  assert.throws(() => planModels('localrec', { 'sparse-width': '300' }), (e: unknown) => isValidationError(e) && e.field === '--sparse-width');
  assert.equal(planModels('sparse-ease', { 'sparse-width': '300' })[0]!.params['sparse-width'], 300, 'sparse-ease itself may be wider');
  await fails({ format: 'retail', data: EVENTS, user: 'user' }, '--user', /is set by --format retail/);
  // A header alone (or only filtered rows) is an error, not a run that "scores" zeros.
  await fails({ data: write('header-only.csv', 'user,item\n'), user: 'user', item: 'item' }, 'options.data', /header-only\.csv has no data rows$/);
  await fails({ data: EVENTS, user: 'user', item: 'item', filter: ['qty>100'] }, 'options.data', /has no data rows that pass the filters \(22 read\)/);
});

test('the CLI names the flag the user typed, and runs from a path with a space or through a symlink', async () => {
  const { inFlagTerms } = await import('../../src/cli.js');
  const cmd = new Command('serve').option('--min-clients <n>', 'cohort size').option('--data-dir <dir>', 'where');
  assert.equal(inFlagTerms("options.minClients: must be a positive integer, got 0", cmd), '--min-clients: must be a positive integer, got 0');
  assert.equal(inFlagTerms('options.dataDir.x: nested', cmd), '--data-dir.x: nested');
  assert.equal(inFlagTerms('options.noiseMultiplier: no such flag', cmd), 'options.noiseMultiplier: no such flag');
  // Options whose flag has another name, nested ones included (not "--secure-aggregation.degree").
  const serve = new Command('serve').option('--secure-aggregation').option('--secagg-degree <d>').option('--trim <b>').option('--noise <s>');
  assert.equal(inFlagTerms('options.secureAggregation.degree: must be an even integer ≥ 2, got 3', serve), '--secagg-degree: must be an even integer ≥ 2, got 3');
  assert.equal(inFlagTerms('options.trimFraction: must be in [0, 0.5), got 0.6', serve), '--trim: must be in [0, 0.5), got 0.6');
  assert.equal(inFlagTerms('options.noiseMultiplier: must be ≥ 0, got -1', serve), '--noise: must be ≥ 0, got -1');
  assert.equal(inFlagTerms('options.secureAggregation.timeoutMs: x', serve), '--secure-aggregation.timeoutMs: x', 'no --cohort-timeout here: the nearest flag');
  assert.equal(inFlagTerms('options.secureAggregation.cohortSize: must be an integer 2..100000, got 200000', serve.option('--min-clients <n>')), '--min-clients: must be an integer 2..100000, got 200000');
  // Before, the entry check compared a hand-built file:// URL with argv[1]: a space (%20) or a
  // symlink made the CLI exit 0 having done nothing.
  const { execFileSync } = await import('node:child_process');
  const { symlinkSync } = await import('node:fs');
  const linked = join(dir, 'with space');
  symlinkSync(process.cwd(), linked);
  const out = execFileSync(process.execPath, ['--import', 'tsx', join(linked, 'src', 'cli.ts'), 'privacy', '--syncs', '4'], { encoding: 'utf8' });
  assert.equal(JSON.parse(out).noiseMultiplier, 1.2005);
});

test('commander: a model flag that no listed model uses is refused, naming the models that would', async () => {
  const run = async (args: string[]) => {
    const program = new Command().exitOverride();
    const out: string[] = [];
    register(program, { stdout: (s) => out.push(s), stderr: { write: () => true } });
    await program.parseAsync(['eval', '--data', EVENTS, '--user', 'user', '--item', 'item', '--time', 't', ...args], { from: 'user' });
    return out;
  };
  await assert.rejects(run(['--models', 'popular', '--ease-l2', '5']), (e: unknown) => isValidationError(e) && e.field === '--ease-l2' && /no model in --models \(popular\) uses it; it is for ease, sparse-ease, localrec/.test(e.message));
  await assert.rejects(run(['--models', 'itemknn', '--recency', '0.3']), (e: unknown) => isValidationError(e) && e.field === '--recency' && /itemknn, ials take it in the spec only \(itemknn:recency=…\)/.test(e.message));
  // Used by one of the listed models: fine; defaults are never "typed".
  assert.equal((await run(['--models', 'popular,ease', '--ease-l2', '5'])).length, 2);
  assert.equal((await run(['--models', 'popular'])).length, 1);
});

test('commander: flags reach the models, --filter repeats', async () => {
  const program = new Command().exitOverride();
  const out: string[] = [];
  register(program, { stdout: (s) => out.push(s), stderr: { write: () => true } });
  await program.parseAsync(
    ['eval', '--data', EVENTS, '--user', 'user', '--item', 'item', '--time', 't', '--filter', 'qty>0', '--filter', 'item!=d', '--models', 'itemknn', '--knn-neighbors', '1', '--k', '3'],
    { from: 'user' },
  );
  const r = JSON.parse(out.join('')) as EvalResult;
  assert.equal(r.items, 3); // item d filtered
  assert.deepEqual(r.params, { 'knn-neighbors': 1, 'knn-shrink': 0, recency: 1, confidence: 'none' });
  assert.equal(r.k, 3);
});

test('output paths are checked before the work: a missing folder, a folder given as a file, a file given as a folder', async () => {
  const { checkOutputFile, checkOutputFolder } = await import('../../src/output-file.js');
  const named = (field: string, re: RegExp) => (e: unknown) => isValidationError(e) && e.field === field && re.test(e.message);
  assert.throws(() => checkOutputFile(join(dir, 'nope', 'n.lrn'), '--out'), named('--out', /folder '.*nope' does not exist/));
  assert.throws(() => checkOutputFile(dir, '--out'), named('--out', /is a folder; give a file name/));
  assert.throws(() => checkOutputFile(join(TRAIN, 'x.json'), '--write-catalog'), named('--write-catalog', /is not a folder/));
  assert.throws(() => checkOutputFolder(TRAIN, '--out'), named('--out', /is a file, not a folder/));
  checkOutputFile(join(dir, 'fine.json'), '--out');
  checkOutputFolder(join(dir, 'new-folder'), '--out');
});

test('serve without --catalog on a data dir that holds no model is refused naming --catalog, and leaves nothing behind', async () => {
  const { spawnSync } = await import('node:child_process');
  const dir = mkdtempSync(join(tmpdir(), 'lr-serve-empty-'));
  try {
    const dataDir = join(dir, 'store');
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--data-dir', dataDir], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /ValidationError: --catalog: is required: .* holds no model yet/);
    assert.equal(existsSync(dataDir), false, 'no database or lock file was created');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an output path that names an input file is refused before the work: same path, ./a and a, a symlink, a hard link', async () => {
  const { checkNotAnInput, checkOutputFile } = await import('../../src/output-file.js');
  const { linkSync, readFileSync, symlinkSync } = await import('node:fs');
  const { relative } = await import('node:path');
  const same = (flag: string, input: string) => (e: unknown) => isValidationError(e) && e.field === flag && new RegExp(`^${flag}: is the same file as ${input} \\(.*\\); refusing to overwrite an input$`).test(e.message);
  const key = write('private.jwk', '{"kty":"EC"}');
  assert.throws(() => checkOutputFile(key, '--out', { '--catalog': TRAIN, '--key': key }), same('--out', '--key'));
  // The same file spelled otherwise: relative with ./, through a symlink, through a hard link.
  assert.throws(() => checkNotAnInput(`./${relative(process.cwd(), key)}`, '--out', { '--key': key }), same('--out', '--key'));
  const link = join(dir, 'key-link.jwk');
  symlinkSync(key, link);
  assert.throws(() => checkNotAnInput(link, '--out', { '--key': key }), same('--out', '--key'));
  assert.throws(() => checkNotAnInput(key, '--out', { '--key': link }), same('--out', '--key'));
  const hard = join(dir, 'key-hard.jwk');
  linkSync(key, hard);
  assert.throws(() => checkNotAnInput(hard, '--out', { '--key': key }), same('--out', '--key'));
  // Other files, a new file and an absent input flag are fine.
  checkOutputFile(join(dir, 'signed.json'), '--out', { '--key': key, '--catalog': undefined });
  checkNotAnInput(TRAIN, '--out', { '--data': TEST });
  // neighbors --out naming its --data: refused before the order log is read, and left as it was.
  const log = write('same.csv', 'user,item\nu1,a\nu1,b\nu2,a\nu2,b\n');
  await assert.rejects(
    runNeighbors({ data: log, format: 'csv', user: 'user', item: 'item', filter: [], out: `${dir}/./same.csv`, width: '4', l2: '1', minSupport: '1' }, { stdout: () => {}, stderr: { write: () => true } }),
    same('--out', '--data'),
  );
  assert.equal(readFileSync(log, 'utf8'), 'user,item\nu1,a\nu1,b\nu2,a\nu2,b\n');
});

test('piped into a reader that goes away (| head -n1), the CLI stops quietly with exit code 0', async () => {
  const { spawn } = await import('node:child_process');
  const csv = write('pipe.csv', ['user,item,t', ...Array.from({ length: 30 }, (_, u) => [0, 1, 2, 3].map((t) => `u${u},i${(u * 3 + t) % 12},${t}`)).flat()].join('\n'));
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'eval', '--data', csv, '--user', 'user', '--item', 'item', '--time', 't', '--models', 'popular,itemknn,ease'], { stdio: ['ignore', 'pipe', 'pipe'] });
  // The reading end closes before the first line: every write meets EPIPE (deterministic, unlike a race with head).
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((done) => child.on('close', done));
  assert.equal(code, 0, stderr);
  assert.doesNotMatch(stderr, /EPIPE|Unhandled 'error' event|at .*\(/);
});

test('serve whose stdout reader goes away keeps serving (an exit would read as a shutdown), and says so on stderr', async () => {
  const { spawn } = await import('node:child_process');
  const { createServer: netServer } = await import('node:net');
  const port = await new Promise<number>((done) => {
    const probe = netServer().listen(0, '127.0.0.1', () => {
      const p = (probe.address() as { port: number }).port;
      probe.close(() => done(p));
    });
  });
  const data = mkdtempSync(join(dir, 'serve-epipe-'));
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', String(port), '--data-dir', data, '--catalog', write('epipe-cat.json', '["a","b","c"]')], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  const closed = new Promise<number | null>((done) => child.on('close', (code) => ((exited = true), done(code))));
  try {
    let health = 0;
    for (let i = 0; i < 300 && health !== 200 && !exited; i++) {
      health = await fetch(`http://127.0.0.1:${port}/v1/health`).then((r) => r.status, () => 0);
      if (health !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(health, 200, stderr);
    // The start-up lines (and their EPIPE) may come just after the port answers.
    for (let i = 0; i < 100 && !/cannot write to stdout/.test(stderr); i++) await new Promise((r) => setTimeout(r, 100));
    assert.match(stderr, /localrec: cannot write to stdout \(EPIPE\); carrying on without it/);
    assert.equal((await fetch(`http://127.0.0.1:${port}/v1/health`)).status, 200, 'still serving');
    assert.equal(exited, false, stderr);
  } finally {
    child.kill('SIGTERM');
  }
  assert.equal(await closed, 0, stderr);
});

test('--format retail: a column the preset reads but the file lacks is blamed on --data and --format, not on --user', async () => {
  const { inFlagTerms } = await import('../../src/cli.js');
  const program = new Command();
  register(program);
  const fromPreset = (e: unknown) =>
    isValidationError(e) &&
    e.field === 'options.data' &&
    inFlagTerms(e.message, program.commands.find((c) => c.name() === 'eval')) ===
      "--data: events.csv has no column 'customer_id' that --format retail reads (header: user, item, t, qty); use --format csv with --user/--item/--time";
  await assert.rejects(run({ format: 'retail', data: EVENTS }), fromPreset);
  await assert.rejects(runNeighbors({ format: 'retail', data: EVENTS, filter: [], out: join(dir, 'n.lrn'), width: '4', l2: '1', minSupport: '1' }, { stdout: () => {}, stderr: { write: () => true } }), fromPreset);
  // A preset's filter column, too; the user's own --weight and --filter columns are still theirs.
  const noInvoice = write('no-invoice.csv', 'customer_id,stock_code,timestamp,quantity\n1,a,0,1\n');
  await assert.rejects(run({ format: 'retail', data: noInvoice }), (e: unknown) => isValidationError(e) && e.field === 'options.data' && /has no column 'invoice' that --format retail reads/.test(e.message));
  const retail = write('retail.csv', 'invoice,customer_id,stock_code,timestamp,quantity\n1,1,a,0,1\n');
  await assert.rejects(run({ format: 'retail', data: retail, filter: ['price>0'] }), (e: unknown) => isValidationError(e) && e.field === 'options.filter' && /column 'price' is not in retail\.csv/.test(e.message));
  await assert.rejects(run({ format: 'retail', data: retail, weight: 'qty' }), (e: unknown) => isValidationError(e) && e.field === 'options.weight' && /column 'qty' is not in retail\.csv/.test(e.message));
});

test('serve --data-dir naming a file, or a path under one, is refused naming the flag, before anything is created', async () => {
  const { checkOutputFile, checkOutputFolder } = await import('../../src/output-file.js');
  const { spawnSync } = await import('node:child_process');
  const file = write('not-a-dir', 'x');
  assert.throws(() => checkOutputFolder(join(file, 'store'), '--data-dir'), (e: unknown) => isValidationError(e) && e.field === '--data-dir' && /'.*not-a-dir\/store' is under '.*not-a-dir', which is a file, not a folder/.test(e.message));
  assert.throws(() => checkOutputFile(join(file, 'a', 'b.json'), '--out'), (e: unknown) => isValidationError(e) && e.field === '--out' && /not-a-dir' is a file, not a folder/.test(e.message));
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--data-dir', file, '--catalog', write('cat.json', '["a","b"]')], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr, `localrec: ValidationError: --data-dir: '${file}' is a file, not a folder\n`);
});

test('serve refuses a --data-dir inside the --static folder it publishes (the database would be downloadable)', async () => {
  const { checkNotPublished } = await import('../../src/server/static-files.js');
  const { mkdirSync, symlinkSync } = await import('node:fs');
  const site = join(dir, 'site');
  mkdirSync(join(site, 'assets'), { recursive: true });
  const inside = (e: unknown) => isValidationError(e) && e.field === '--data-dir' && /is inside the --static folder/.test(e.message);
  assert.throws(() => checkNotPublished(join(site, '.data'), site), inside, 'not yet created, under the site');
  assert.throws(() => checkNotPublished(site, site), inside, 'the site itself');
  assert.throws(() => checkNotPublished(join(site, 'assets'), `${site}/./`), inside, 'another spelling of the site');
  symlinkSync(join(site, 'assets'), join(dir, 'link-to-assets'));
  assert.throws(() => checkNotPublished(join(dir, 'link-to-assets', 'db'), site), inside, 'through a link');
  checkNotPublished(join(dir, 'site-data'), site); // a sibling whose name starts like the site
  checkNotPublished(join(dir, '..data'), site);
  checkNotPublished(dir, site); // the folder above
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--static', site, '--data-dir', join(site, 'db'), '--catalog', write('cat2.json', '["a","b"]')], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /^localrec: ValidationError: --data-dir: '.*site\/db' is inside the --static folder/);
  assert.equal(statSync(join(site, 'db'), { throwIfNoEntry: false }), undefined, 'nothing created');
});

test('neighbors: an item id too long for the table is refused at load, naming the file and column, before the solve; a table with no pairs is written with a warning (stop 40)', async () => {
  let err = '';
  const io = { stdout: () => {}, stderr: { write: (s: string) => ((err += s), true) } };
  const long = write('long-id.csv', `user,item\n1,a\n1,${'x'.repeat(70_000)}\n`);
  await assert.rejects(
    runNeighbors({ format: 'csv', data: long, user: 'user', item: 'item', filter: [], out: join(dir, 'long.lrn'), width: '4', l2: '1', minSupport: '1' }, io),
    (e: unknown) => isValidationError(e) && e.field === 'long-id.csv:item' && /holds an item id of 70,000 bytes .*at most 65,535 bytes/.test(e.message),
  );
  assert.ok(!existsSync(join(dir, 'long.lrn')));
  assert.doesNotMatch(err, /solving/, 'refused before the solve');
  const one = write('one-row.csv', 'user,item\n1,a\n');
  const summary = await runNeighbors({ format: 'csv', data: one, user: 'user', item: 'item', filter: [], out: join(dir, 'one.lrn'), width: '4', l2: '1', minSupport: '3' }, io);
  assert.equal(summary.pairs, 0);
  assert.match(err, /warning: the table holds no pairs \(no two items bought by at least --min-support 3 of the 1 customers\)/);
});
