/**
 * A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `pg_ctl start` on a free
 * loopback port, trust authentication for user `localrec`. As root (CI runs as root, and PostgreSQL
 * refuses to), the cluster belongs to the `postgres` user and its commands run through `runuser`.
 *
 * PostgreSQL's binaries come from PATH or /usr/lib/postgresql/<version>/bin (Debian's package:
 * `apt-get install postgresql`; `.ci/run` installs it when missing). Without them the tests that
 * need it fail under CI=true and are skipped elsewhere, saying why.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

export interface TestPostgres {
  /** postgres://localrec@127.0.0.1:<port>/postgres */
  url: string;
  /** Stops the server (fast shutdown: open connections are cut) but keeps its data. */
  pause(): void;
  /** Starts it again on the same port and data. */
  resume(): void;
  stop(): Promise<void>;
}

/** The folder holding initdb and pg_ctl, or null. */
export function postgresBinDir(): string | null {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl'))) return dir;
  }
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return null;
  const versions = readdirSync(root).sort((a, b) => Number(b) - Number(a));
  for (const v of versions) {
    const bin = join(root, v, 'bin');
    if (existsSync(join(bin, 'initdb')) && existsSync(join(bin, 'pg_ctl'))) return bin;
  }
  return null;
}

/** Why PostgreSQL tests cannot run here (null when they can); under CI=true a reason is an error. */
export function postgresUnavailable(): string | null {
  if (postgresBinDir()) return null;
  const why = 'PostgreSQL is not installed (no initdb/pg_ctl on PATH or under /usr/lib/postgresql; apt-get install postgresql)';
  if (process.env.CI) throw new Error(`${why}: CI must run the PostgreSQL tests (.ci/run installs it)`);
  return why;
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

function uidOf(user: string): { uid: number; gid: number } {
  const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

/** Starts a fresh cluster; `stop()` shuts it down and deletes it. */
export async function startPostgres(): Promise<TestPostgres> {
  const bin = postgresBinDir();
  if (!bin) throw new Error('PostgreSQL is not installed');
  const root = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), 'localrec-pg-'));
  const data = join(dir, 'data');
  const run = (cmd: string, args: string[]) => {
    const [file, argv] = root ? ['runuser', ['-u', 'postgres', '--', join(bin, cmd), ...args]] : [join(bin, cmd), args];
    return execFileSync(file, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], cwd: dir });
  };
  if (root) {
    const { uid, gid } = uidOf('postgres');
    chownSync(dir, uid, gid);
    chmodSync(dir, 0o700);
  }
  try {
    // --locale=C: initdb refuses a LANG/LC_* naming a locale the machine lacks (one an ssh client sent).
    run('initdb', ['-D', data, '-A', 'trust', '-U', 'localrec', '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions']);
    const port = await freePort();
    const start = () => run('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-w', '-t', '60', '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, 'start']);
    start();
    return {
      url: `postgres://localrec@127.0.0.1:${port}/postgres`,
      pause: () => void run('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']),
      resume: () => void start(),
      stop: async () => {
        try {
          run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (e) {
    const err = e as Error & { stderr?: string };
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`could not start PostgreSQL from ${bin}: ${err.message}${err.stderr ? `\n${err.stderr}` : ''}`);
  }
}

/** Runs `fn` with a client of `database`, closed after. */
export async function withClient<T>(database: string, fn: (db: pg.Client) => Promise<T>): Promise<T> {
  const db = new pg.Client({ connectionString: database });
  await db.connect();
  try {
    return await fn(db);
  } finally {
    await db.end();
  }
}

/** Creates the database `name` on the test server; its URL. */
export async function createDatabase(server: TestPostgres, name: string): Promise<string> {
  await withClient(server.url, (db) => db.query(`CREATE DATABASE ${name}`));
  return server.url.replace(/\/postgres$/, `/${name}`);
}
