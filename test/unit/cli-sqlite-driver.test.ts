/**
 * A missing or half-installed better-sqlite3 (the package there, its native module never built, as
 * npm 12 leaves it unless its install script is allowed) is said in one line with what to do, by
 * `localrec serve` (the SQLite store) and by `npm start`; not as a failure to lock the data dir with
 * the thirteen paths the bindings package tried, nor as an ERR_MODULE_NOT_FOUND stack. The real
 * install is never touched: the half-installed package is a copy, in a temporary folder.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { isStorageError } from '../../src/errors.js';
import { sqliteLoadError } from '../../src/server/sqlite-storage.js';
import { scratchFolder } from './eval-helpers.js';

const { dir } = scratchFolder('localrec-cli-sqlite-');
const NOT_BUILT = /^better-sqlite3 is installed but its native module is not built \(its install script did not run; npm 12 runs it only once allowed\): allow it \(npm approve-scripts better-sqlite3, or \"allowScripts\" in package\.json\), then npm rebuild better-sqlite3 \(or serve from PostgreSQL: --database postgres:\/\/…\)$/;
const NOT_INSTALLED = /^the SQLite store needs the better-sqlite3 package, which is not installed: npm install better-sqlite3@12 \(or serve from PostgreSQL: --database postgres:\/\/…\)$/;

/** better-sqlite3 and what it requires at run time, copied into `into/node_modules` without its build. */
function unbuiltCopy(into: string): void {
  const from = resolve('node_modules');
  for (const [pkg, parts] of [
    ['better-sqlite3', ['package.json', 'lib']],
    ['bindings', ['package.json', 'bindings.js']],
    ['file-uri-to-path', ['package.json', 'index.js']],
  ] as const) {
    for (const part of parts) cpSync(join(from, pkg, part), join(into, 'node_modules', pkg, part), { recursive: true });
  }
}

/** What better-sqlite3 throws at its first database when its native module was never built. */
function unbuiltError(): unknown {
  const home = join(dir, 'unbuilt');
  unbuiltCopy(home);
  const Database = createRequire(join(home, 'x.js'))('better-sqlite3') as new (path: string) => { close(): void };
  try {
    new Database(':memory:').close();
  } catch (e) {
    return e;
  }
  assert.fail('the copy without a build opened a database');
}

test('sqliteLoadError: a native module never built, one built for another Node.js, a missing package, each in one line', () => {
  // The error better-sqlite3 really throws, from a copy of it without its build/ folder.
  const real = unbuiltError();
  assert.match(String((real as Error).message), /Could not locate the bindings file/);
  const said = sqliteLoadError(real);
  assert.ok(isStorageError(said));
  assert.match(said.message, NOT_BUILT);
  assert.equal(said.cause, real);
  // The .node file missing where a build put it elsewhere (MODULE_NOT_FOUND naming it).
  const noNode = Object.assign(new Error("Cannot find module '/x/node_modules/better-sqlite3/build/Release/better_sqlite3.node'"), { code: 'MODULE_NOT_FOUND' });
  assert.match(sqliteLoadError(noNode).message, NOT_BUILT);
  const abi = Object.assign(
    new Error("The module '/x/better_sqlite3.node'\nwas compiled against a different Node.js version using\nNODE_MODULE_VERSION 127. This version of Node.js requires\nNODE_MODULE_VERSION 115."),
    { code: 'ERR_DLOPEN_FAILED' },
  );
  const abiSaid = sqliteLoadError(abi).message;
  assert.match(abiSaid, /^better-sqlite3's native module cannot be loaded \(The module '\/x\/better_sqlite3\.node' was compiled against a different Node\.js version using NODE_MODULE_VERSION 127\. .*\): rebuild it for this Node\.js v\d+.*: npm rebuild better-sqlite3 /);
  assert.doesNotMatch(abiSaid, /\n/);
  const missing = Object.assign(new Error("Cannot find module 'better-sqlite3'\nRequire stack:\n- /x/sqlite-storage.ts"), { code: 'MODULE_NOT_FOUND' });
  assert.match(sqliteLoadError(missing).message, NOT_INSTALLED);
  assert.match(sqliteLoadError(new Error('something else\nand more')).message, /^better-sqlite3 could not be loaded: something else and more$/);
});

test('npm start (scripts/start.mjs) says in one line, exit code 1, when better-sqlite3 is missing or not built', (t) => {
  // start.mjs as it is, beside a stand-in for the shop server, in a folder with no node_modules above it.
  const root = join(dir, 'checkout');
  mkdirSync(join(root, 'scripts'), { recursive: true });
  mkdirSync(join(root, 'src'), { recursive: true });
  mkdirSync(join(root, 'dist'), { recursive: true });
  for (const f of ['index.js', 'worker.js', 'node.js']) writeFileSync(join(root, 'dist', f), ''); // built: no `npm run build`
  cpSync('scripts/start.mjs', join(root, 'scripts', 'start.mjs'));
  writeFileSync(
    join(root, 'scripts', 'shop-server.mjs'),
    "import { fileURLToPath } from 'node:url';\nexport const ROOT = fileURLToPath(new URL('..', import.meta.url));\nexport async function startShop() { throw new Error('stand-in: startShop reached'); }\n",
  );
  try {
    createRequire(join(root, 'scripts', 'start.mjs')).resolve('better-sqlite3');
    return t.skip('a node_modules above the temporary folder has better-sqlite3');
  } catch {
    // As wanted: not installed there.
  }
  const start = () => spawnSync(process.execPath, [join(root, 'scripts', 'start.mjs')], { cwd: root, encoding: 'utf8', timeout: 60_000, env: { ...process.env, PORT: '0', LOCALREC_DATA_DIR: join(root, 'data') } });
  const missing = start();
  assert.equal(missing.status, 1, missing.stderr);
  assert.match(missing.stderr.replace(/\n$/, ''), NOT_INSTALLED);
  assert.doesNotMatch(missing.stderr, /ERR_MODULE_NOT_FOUND|\n\s+at /);
  unbuiltCopy(root);
  const unbuilt = start();
  assert.equal(unbuilt.status, 1, unbuilt.stderr);
  assert.match(unbuilt.stderr.replace(/\n$/, ''), NOT_BUILT);
});

test('localrec serve with better-sqlite3 not built says so in one line (not "cannot lock the data dir" and the paths bindings tried)', () => {
  // The sources as they are, with every installed package but a copy of better-sqlite3 without its build.
  const app = join(dir, 'app');
  cpSync('src', join(app, 'src'), { recursive: true });
  for (const f of ['package.json', 'tsconfig.json']) cpSync(f, join(app, f));
  unbuiltCopy(app);
  for (const name of readdirSync('node_modules')) {
    if (!['better-sqlite3', 'bindings', 'file-uri-to-path'].includes(name)) symlinkSync(resolve('node_modules', name), join(app, 'node_modules', name));
  }
  writeFileSync(join(app, 'catalog.json'), '["a","b","c"]');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--data-dir', join(app, 'data'), '--catalog', 'catalog.json'], { cwd: app, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr.replace(/\n$/, ''), new RegExp(`^localrec: StorageError: ${NOT_BUILT.source.slice(1)}`));
  assert.doesNotMatch(r.stderr, /cannot lock|Tried:/);
});
