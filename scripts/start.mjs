/**
 * `npm start`: builds the SDK when dist/ is missing or older than src/, then serves the demo shop
 * and the aggregation server on one localhost address (default http://127.0.0.1:8787; PORT overrides,
 * PORT=0 takes any free port). The model store and the offer key live in .data/shop of the checkout;
 * LOCALREC_DATA_DIR names another folder (relative to the current one).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { ROOT, startShop } from './shop-server.mjs';

const DATA_DIR = process.env.LOCALREC_DATA_DIR ? resolve(process.env.LOCALREC_DATA_DIR) : join(ROOT, '.data', 'shop');
/** The data dir as printed: relative to the checkout when it is inside it. */
const SHOWN_DIR = (() => {
  const r = relative(ROOT, DATA_DIR);
  return r && !r.startsWith('..') && !isAbsolute(r) ? r : DATA_DIR;
})();
/** The lock `localrec serve` holds on its data dir (LOCK_FILE in src/server/sqlite-storage.ts). */
const LOCK = join(DATA_DIR, 'localrec.lock');
const ALREADY_RUNNING = `another npm start (or localrec serve on ${SHOWN_DIR}) is using that data dir: stop it first (Ctrl-C in its terminal), or give this one another folder with LOCALREC_DATA_DIR\n`;

/**
 * One line on why the data dir cannot be used, and what to do, for the errors a folder can cause
 * (null for any other error, which is printed whole).
 */
function dataDirError(e) {
  const code = e?.code;
  const msg = String(e?.message ?? e);
  const other = 'or set LOCALREC_DATA_DIR to another folder';
  if (code === 'ENOTDIR' || code === 'EEXIST' || /ENOTDIR|EEXIST|not a directory/i.test(msg)) {
    return `the data dir ${SHOWN_DIR} (or a folder above it) is a file, not a folder: move that file away, ${other}`;
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS' || /EACCES|EPERM|EROFS|permission denied|readonly database|read-only file system|unable to open database file/i.test(msg)) {
    return `cannot write to the data dir ${SHOWN_DIR} (${msg}): give this user write access to it, ${other}`;
  }
  if (/SQLITE_(CORRUPT|NOTADB)|not a database|malformed|corrupt/i.test(msg)) {
    return `the model store in ${SHOWN_DIR} is damaged (${msg}): move that folder aside (it holds only the demo's federated rounds and its offer key) to start a fresh one, ${other}`;
  }
  return null;
}

/** The way out when better-sqlite3 cannot be used (as src/server/sqlite-storage.ts's sqliteLoadError words it). */
const OR_POSTGRES = '(or serve from PostgreSQL: --database postgres://…)';

/**
 * better-sqlite3 with its native module loaded (by an in-memory database), or one line on what to
 * do and exit 1: the package is an optional peer dependency, and npm 12 runs its install script,
 * which builds the native module, only once allowed. The same recognition and words as
 * sqliteLoadError in src/server/sqlite-storage.ts (dist/ may not be built yet to import it from).
 */
async function loadSqlite() {
  try {
    const Database = (await import('better-sqlite3')).default;
    new Database(':memory:').close();
    return Database;
  } catch (e) {
    const code = e?.code;
    const msg = String(e?.message ?? e);
    let line;
    if ((code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && /better-sqlite3/.test(msg) && !/\.node\b/.test(msg)) {
      line = `the SQLite store needs the better-sqlite3 package, which is not installed: npm install better-sqlite3@12 ${OR_POSTGRES}`;
    } else if (/Could not locate the bindings file/.test(msg) || (code === 'MODULE_NOT_FOUND' && /better_sqlite3\.node/.test(msg))) {
      line = `better-sqlite3 is installed but its native module is not built (its install script did not run; npm 12 runs it only once allowed): allow it (npm approve-scripts better-sqlite3, or "allowScripts" in package.json), then npm rebuild better-sqlite3 ${OR_POSTGRES}`;
    } else if (code === 'ERR_DLOPEN_FAILED') {
      line = `better-sqlite3's native module cannot be loaded (${msg.replace(/\s*\n\s*/g, ' ').trim()}): rebuild it for this Node.js ${process.version}: npm rebuild better-sqlite3 ${OR_POSTGRES}`;
    } else {
      line = `better-sqlite3 could not be loaded: ${msg.replace(/\s*\n\s*/g, ' ').trim()}`;
    }
    process.stderr.write(`${line}\n`);
    process.exit(1);
  }
}

/** Whether another process holds the shop's data dir: checked before building, which would replace dist/ under it. */
function heldByAnother() {
  if (!existsSync(LOCK)) return false;
  let db;
  try {
    db = new Database(LOCK, { timeout: 0 });
    db.exec('BEGIN EXCLUSIVE; COMMIT');
    return false;
  } catch (e) {
    return e?.code === 'SQLITE_BUSY';
  } finally {
    db?.close();
  }
}

// A bad PORT is a mistake in this very command: said first, before the data dir's lock (which would
// otherwise report another instance, and the PORT mistake only once that one is stopped).
const port = process.env.PORT === undefined ? 8787 : Number(process.env.PORT);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`PORT must be a port number, got '${process.env.PORT}'\n`);
  process.exit(1);
}

// Before the data dir's lock (which needs it) and the build: without a usable driver nothing else can work.
const Database = await loadSqlite();

if (heldByAnother()) {
  process.stderr.write(ALREADY_RUNNING);
  process.exit(1);
}

/** Why `port` cannot be listened on at the shop's address now (an error code), or null when it can. */
function listenError(p) {
  return new Promise((resolveProbe) => {
    const probe = createServer();
    probe.once('error', (e) => resolveProbe(e?.code ?? 'error'));
    probe.listen({ port: p, host: '127.0.0.1', exclusive: true }, () => probe.close(() => resolveProbe(null)));
  });
}

/** The busy-port hint: the next port that is free now, or PORT=0 (the shop then takes any free one). */
async function busyPort(p) {
  let next = 0;
  for (let q = p + 1; q <= Math.min(p + 20, 65535); q++) {
    if ((await listenError(q)) === null) {
      next = q;
      break;
    }
  }
  return `port ${p} is in use; try PORT=${next} npm start${next ? ' (free now), or PORT=0 for any free port' : ' (any free port)'}\n`;
}

// Before building and making keys: a busy port would only fail after all that.
// (Any other refusal, a privileged port say, is left to startShop to report.)
if (port !== 0 && (await listenError(port)) === 'EADDRINUSE') {
  process.stderr.write(await busyPort(port));
  process.exit(1);
}

/** Newest modification time of any file under `dir`, in ms. */
function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

function needsBuild() {
  const outputs = ['index.js', 'worker.js', 'worker-webgl.js', 'worker-webgpu.js', 'node.js'].map((f) => join(ROOT, 'dist', f));
  if (outputs.some((f) => !existsSync(f))) return 'dist/ is missing';
  const built = Math.min(...outputs.map((f) => statSync(f).mtimeMs));
  return newest(join(ROOT, 'src')) > built ? 'src/ changed since the last build' : null;
}

const why = needsBuild();
if (why) {
  process.stdout.write(`${why}: running npm run build …\n`);
  const r = spawnSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit', shell: process.platform === 'win32' });
  if (r.status !== 0) {
    process.stderr.write('npm run build failed; see above.\n');
    process.exit(r.status ?? 1);
  }
}

let shop;
try {
  shop = await startShop({ port, dataDir: DATA_DIR });
} catch (e) {
  // (Taken between the check above and now.)
  if (e?.code === 'EADDRINUSE') process.stderr.write(await busyPort(port));
  else if (/is in use by another localrec serve/.test(String(e?.message))) process.stderr.write(ALREADY_RUNNING);
  else if (e?.name === 'StorageError' && /better-sqlite3/.test(String(e?.message))) process.stderr.write(`${e.message}\n`);
  else {
    const line = dataDirError(e);
    process.stderr.write(line ? `${line}\n` : `${e?.stack ?? e}\n`);
  }
  process.exit(1);
}

process.stdout.write(
  `\n  localrec demo shop:  ${shop.url}/ (asks for consent first)\n  consent granted:     ${shop.url}/?consent=granted (a first visit without the banner)\n  federated API:       ${shop.url}/v1/health\n  signed offers:       ${shop.url}/offers.json (signing key in ${join(SHOWN_DIR, 'offer-keys.json')}; the page's public key is in its code, /offer-key.js)\n  model store:         ${SHOWN_DIR} (SQLite; LOCALREC_DATA_DIR picks another folder)\n\n  Ctrl-C to stop.\n\n`,
);

let stopping = false;
const stop = () => {
  if (stopping) process.exit(1); // a second Ctrl-C does not wait
  stopping = true;
  process.stdout.write('stopping …\n');
  shop.close().then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`${e?.stack ?? e}\n`);
      process.exit(1);
    },
  );
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
