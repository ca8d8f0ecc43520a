/**
 * kill -9 tests: the real `localrec serve` runs as a child process (through tsx) on a temporary data
 * dir; it is SIGKILLed mid-traffic and mid-publish, restarted on the same dir, and the SQLite file is
 * then read directly: every acknowledged update must be pending or aggregated, versions must be
 * contiguous and each one whole (its bytes hash to its recorded hash and decode).
 */
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { toHex } from '../../src/federated/wire.js';
import { checkStore, honestUpdate, IDS, pull, spawnServe, type ServeChild } from './server-helpers.js';


type Child = ServeChild;

function serve(dataDir: string, catalog: string, env: Record<string, string> = {}): Promise<Child> {
  return spawnServe(dataDir, catalog, ['--dim', '4', '--min-clients', '3', '--noise', '0', '--max-staleness', '100', '--rate-limit', '0'], env);
}

async function stop(c: Child): Promise<void> {
  c.proc.kill('SIGTERM');
  await c.exited;
}

function nonceOf(body: Uint8Array): string {
  return toHex(body.subarray(64, 80));
}

function setup(): { dir: string; dataDir: string; catalog: string } {
  const dir = mkdtempSync(join(tmpdir(), 'localrec-crash-'));
  const catalog = join(dir, 'catalog.json');
  writeFileSync(catalog, JSON.stringify({ items: IDS.map((id, i) => ({ id, popularity: i })) }));
  return { dir, dataDir: join(dir, 'data'), catalog };
}

test('kill -9 in the middle of concurrent uploads loses no acknowledged update', async () => {
  const { dir, dataDir, catalog } = setup();
  try {
    const c = await serve(dataDir, catalog);
    const v0 = await pull(c.url);
    const bodies = Array.from({ length: 16 }, (_, i) => honestUpdate(v0, 1000 + i));
    const acked: string[] = [];
    let killed = false;
    await Promise.allSettled(
      bodies.map(async (b) => {
        const res = await fetch(`${c.url}/v1/updates`, { method: 'POST', body: b as Uint8Array<ArrayBuffer> });
        if (res.status === 202) acked.push(nonceOf(b));
        if (acked.length >= 5 && !killed) {
          killed = true;
          c.proc.kill('SIGKILL');
        }
      }),
    );
    assert.equal((await c.exited).signal, 'SIGKILL');
    assert.ok(acked.length >= 5);

    const again = await serve(dataDir, catalog);
    const round = (await (await fetch(`${again.url}/v1/rounds/current`)).json()) as { version: number; pending: number };
    await stop(again);
    const { versions, pending } = await checkStore(dataDir, acked);
    assert.equal(round.version, versions - 1);
    assert.equal(round.pending, pending);
    assert.ok(pending < 3, 'a restart finishes any round that had enough updates');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('kill -9 inside the publish transaction: last version stays whole, the round completes on restart', async () => {
  const { dir, dataDir, catalog } = setup();
  try {
    const c = await serve(dataDir, catalog, { LOCALREC_FAULT: 'kill-before-publish-commit' });
    const v0 = await pull(c.url);
    const bodies = [1, 2, 3].map((s) => honestUpdate(v0, s));
    const acked: string[] = [];
    for (const b of bodies.slice(0, 2)) {
      const res = await fetch(`${c.url}/v1/updates`, { method: 'POST', body: b as Uint8Array<ArrayBuffer> });
      assert.equal(res.status, 202);
      acked.push(nonceOf(b));
    }
    // The third update completes the round; the process dies inside the publish transaction.
    await assert.rejects(fetch(`${c.url}/v1/updates`, { method: 'POST', body: bodies[2] as Uint8Array<ArrayBuffer> }));
    assert.equal((await c.exited).signal, 'SIGKILL');
    const before = await checkStore(dataDir, acked);
    assert.equal(before.versions, 1, 'no half-written version 1');
    assert.equal(before.pending, 3, 'the unacknowledged third update was committed before the publish began');

    const again = await serve(dataDir, catalog);
    const v1 = await pull(again.url);
    await stop(again);
    assert.equal(v1.table.version, 1);
    const after = await checkStore(dataDir, [...acked, nonceOf(bodies[2]!)]);
    assert.deepEqual(after, { versions: 2, pending: 0 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
