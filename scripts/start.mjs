/**
 * `npm start`: builds the SDK when dist/ is missing or older than src/, then serves the demo shop
 * and the aggregation server on one localhost address (default http://127.0.0.1:8787; PORT overrides,
 * PORT=0 takes any free port).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { ROOT, startShop } from './shop-server.mjs';

const DATA_DIR = join(ROOT, '.data', 'shop');
/** The lock `localrec serve` holds on its data dir (LOCK_FILE in src/server/sqlite-storage.ts). */
const LOCK = join(DATA_DIR, 'localrec.lock');
const ALREADY_RUNNING = `another npm start (or localrec serve on .data/shop) is running from this checkout: stop it first (Ctrl-C in its terminal)\n`;

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

if (heldByAnother()) {
  process.stderr.write(ALREADY_RUNNING);
  process.exit(1);
}

const port = process.env.PORT === undefined ? 8787 : Number(process.env.PORT);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`PORT must be a port number, got '${process.env.PORT}'\n`);
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
  const outputs = ['index.js', 'worker.js', 'node.js'].map((f) => join(ROOT, 'dist', f));
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
  shop = await startShop({ port });
} catch (e) {
  // (Taken between the check above and now.)
  if (e?.code === 'EADDRINUSE') process.stderr.write(await busyPort(port));
  else if (/is in use by another localrec serve/.test(String(e?.message))) process.stderr.write(ALREADY_RUNNING);
  else process.stderr.write(`${e?.stack ?? e}\n`);
  process.exit(1);
}

process.stdout.write(`\n  localrec demo shop:  ${shop.url}/\n  federated API:       ${shop.url}/v1/health\n  signed offers:       ${shop.url}/offers.json (key in .data/shop/offer-keys.json)\n  consent banner:      ${shop.url}/?consent=required\n  model store:         .data/shop (SQLite)\n\n  Ctrl-C to stop.\n\n`);

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
