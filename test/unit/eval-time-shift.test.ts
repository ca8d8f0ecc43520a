/**
 * A uniform shift of every time in a log changes no figure of `localrec eval` (stop 31: the
 * `localrec` model measured a log dated before 1970 from time 0, so every history's recency weight
 * underflowed and every item it reached tied).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { runEval } from '../../src/eval/run-eval.js';
import type { EvalResult } from '../../src/eval/runner.js';

const dir = mkdtempSync(join(tmpdir(), 'localrec-shift-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** 40 users over 12 items: each views a run of 4–7 consecutive items (mod 12), an hour apart. */
function log(shift: number): string {
  const rows = ['user,item,t'];
  for (let u = 0; u < 40; u++) {
    const len = 4 + (u % 4);
    for (let p = 0; p < len; p++) rows.push(`u${u},i${(u * 5 + p) % 12},${1_500_000_000 + u * 86_400 + p * 3_600 + shift}`);
  }
  return rows.join('\n');
}

async function figures(shift: number): Promise<EvalResult[]> {
  const data = join(dir, `log${shift}.csv`);
  writeFileSync(data, log(shift));
  return runEval(
    { format: 'csv', data, user: 'user', item: 'item', time: 't', filter: [], k: '3', seed: '1', models: 'localrec,popular' },
    { stdout: () => {}, stderr: { isTTY: false, write: () => true } },
  );
}

test('figures do not move when every time is shifted, to before 1970 included', async () => {
  const base = await figures(0);
  assert.ok(base[0]!.hr > base[1]!.hr, `the neighbour model beats popularity on this log (${base[0]!.hr} vs ${base[1]!.hr})`);
  for (const shift of [-5_000_000_000, 86_400 * 365]) {
    const moved = await figures(shift);
    assert.deepEqual(
      moved.map((r) => [r.model, r.hr, r.ndcg]),
      base.map((r) => [r.model, r.hr, r.ndcg]),
      `shift ${shift} s`,
    );
  }
});
