/**
 * The server's listen backlog (docs/RELIABILITY.md, "Connection resets under load"): startServer
 * listens with a backlog of 4,096 by default (Node's own default is 511, which 1,000 simultaneous
 * clients overflowed), or the `backlog` option. Read back from the kernel with `ss`: for a
 * listening TCP socket its Send-Q column is the backlog (capped at net.core.somaxconn).
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ValidationError } from '../../src/errors.js';
import { DEFAULT_BACKLOG, startServer } from '../../src/server/index.js';
import { initialTable, quiet } from './server-helpers.js';

function hasSs(): boolean {
  try {
    execFileSync('ss', ['-V'], { stdio: 'ignore' });
    return existsSync('/proc/sys/net/core/somaxconn');
  } catch {
    return false;
  }
}

/** The backlog the kernel holds for the listening socket on 127.0.0.1:port. */
function kernelBacklog(port: number): number {
  const out = execFileSync('ss', ['-ltnH', `sport = :${port}`], { encoding: 'utf8' });
  const line = out.split('\n').find((l) => l.includes(`127.0.0.1:${port}`));
  assert.ok(line, `ss lists the listening socket on port ${port}: ${out}`);
  // State Recv-Q Send-Q Local Peer
  return Number(line.trim().split(/\s+/)[2]);
}

test('startServer listens with a backlog of 4,096 by default, or the backlog option (read back with ss)', { skip: !hasSs() && 'needs Linux ss' }, async () => {
  const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
  const opts = { port: 0, dataDir: null, initialTable: initialTable(), rateLimit: false as const, log: quiet };
  const def = await startServer(opts);
  try {
    assert.equal(DEFAULT_BACKLOG, 4096);
    assert.equal(kernelBacklog(Number(new URL(def.url).port)), Math.min(DEFAULT_BACKLOG, somaxconn));
  } finally {
    await def.close();
  }
  const small = await startServer({ ...opts, backlog: 64 });
  try {
    assert.equal(kernelBacklog(Number(new URL(small.url).port)), 64);
    assert.equal((await fetch(`${small.url}/v1/health`)).status, 200);
  } finally {
    await small.close();
  }
});

test('startServer refuses a backlog that is not a positive integer', async () => {
  const opts = { port: 0, dataDir: null, initialTable: initialTable(), rateLimit: false as const, log: quiet };
  for (const backlog of [0, -1, 1.5, Number.NaN]) {
    await assert.rejects(startServer({ ...opts, backlog }), (e: unknown) => e instanceof ValidationError && /options\.backlog/.test(e.message));
  }
});
