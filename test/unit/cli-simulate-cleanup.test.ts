/**
 * `localrec simulate --server sqlite` keeps its store in a temporary folder (`localrec-sim-*` under
 * the system's temp folder): gone after the run, and also after Ctrl-C (SIGINT), SIGTERM, or a
 * reader that goes away (`| head -n1`, where the CLI exits 0 at the next write).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { scratchFolder } from './eval-helpers.js';

const { dir, write } = scratchFolder('localrec-cli-sim-');
// MovieLens' first 2,000 ratings when the shared data is here, else a synthetic log of the same shape.
const RATINGS = (() => {
  try {
    return write('ratings.csv', readFileSync('../shared/data/ml-latest-small/ratings.csv', 'utf8').split('\n').slice(0, 2000).join('\n'));
  } catch {
    const rows = ['userId,movieId,rating,timestamp'];
    for (let u = 0; u < 60; u++) for (let t = 0; t < 30; t++) rows.push(`${u},${(u * 7 + t * 13) % 300},4,${1000 + t}`);
    return write('ratings.csv', rows.join('\n'));
  }
})();

/** Starts a long simulation with its temp folder under `tmp`. */
function simulate(tmp: string): { child: ChildProcessWithoutNullStreams; stderr: () => string; exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
  mkdirSync(tmp, { recursive: true });
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'src/cli.ts', 'simulate', '--data', RATINGS, '--user', 'userId', '--item', 'movieId', '--time', 'timestamp', '--server', 'sqlite', '--rounds', '100000', '--clients-per-round', '10', '--min-clients', '5', '--budget', 'none', '--noise', '0.5'],
    { env: { ...process.env, TMPDIR: tmp, TMP: tmp, TEMP: tmp }, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.on('close', (code, signal) => done({ code, signal })));
  return { child, stderr: () => stderr, exit };
}

const simFolders = (tmp: string) => readdirSync(tmp).filter((f) => f.startsWith('localrec-sim-'));

/** Waits (up to a minute) until `ready()` holds, or the child has exited. */
async function until(ready: () => boolean, child: ChildProcessWithoutNullStreams): Promise<void> {
  for (let i = 0; i < 600 && !ready() && child.exitCode === null && child.signalCode === null; i++) await new Promise((r) => setTimeout(r, 100));
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  test(`simulate --server sqlite removes its temporary folder on ${signal}, and still ends by the signal`, async () => {
    const tmp = join(dir, signal);
    const { child, stderr, exit } = simulate(tmp);
    try {
      await until(() => simFolders(tmp).length > 0, child);
      assert.equal(simFolders(tmp).length, 1, `the folder should exist while it runs: ${stderr()}`);
      child.kill(signal);
      const { code, signal: by } = await exit;
      // Ended by the signal, as without the handler (a shell reports 128 + n).
      assert.ok(by === signal || code === 128 + (signal === 'SIGINT' ? 2 : 15), `code ${code}, signal ${by}: ${stderr()}`);
      assert.deepEqual(simFolders(tmp), [], stderr());
    } finally {
      child.kill('SIGKILL');
    }
  });
}

test('simulate --server sqlite removes its temporary folder when its stdout reader goes away (| head -n1): exit code 0', async () => {
  const tmp = join(dir, 'epipe');
  const { child, stderr, exit } = simulate(tmp);
  try {
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    await until(() => stdout.includes('\n'), child);
    assert.equal(simFolders(tmp).length, 1, `the folder should exist while it runs: ${stderr()}`);
    // As head does after its first line: the next write meets EPIPE and the CLI exits 0.
    child.stdout.destroy();
    const { code } = await exit;
    assert.equal(code, 0, stderr());
    assert.deepEqual(simFolders(tmp), [], stderr());
  } finally {
    child.kill('SIGKILL');
  }
});
