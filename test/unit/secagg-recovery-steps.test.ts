// A device's recovery steps against a fake secure-aggregation server (review of stop 39's fixes):
// a step refused 409 unknown-cohort because the cohort ended meanwhile, and a cancel as the server
// takes the share. (The stateful test, secagg-stateful.test.ts, reaches these against the real
// server; these pin them.)
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { addSelfMask, aliveNeighbours, checkSecAggParams, confirmationTags, CONFIRM_TAG_BYTES, decodeMaskedHeader, encodeFixedPoint, maskValues, SEALED_SHARE_BYTES, secAggKeyPair, sharePosition } from '../../src/federated/secagg.js';
import { RdpAccountant } from '../../src/federated/dp.js';
import { syncOnce, type FetchLike } from '../../src/federated/sync.js';
import { encodeModel, fromHex, toHex } from '../../src/federated/wire.js';
import { DIM, IDS, initialTable, shopperHistory } from './server-helpers.js';

type Step = 'confirm' | 'ready' | 'recovery';
/**
 * One device (member 0 of 3, t = 2) against a fake server whose member 1 is honest and member 2
 * dropped: `refuse` answers those recovery steps `409 unknown-cohort`, after which the member view
 * says `after`; `abortOn` cancels the sync as the server takes that step.
 */
async function scenario(o: { refuse: Step[]; after: 'recovering' | 'done' | 'aborted' | 'gone'; lists?: number[][]; abortOn?: Step; ac?: AbortController }) {
  const sa = { cohortSize: 3, bits: 32, step: 1e-6, degree: 2, minSurvivors: 2, timeoutMs: 60_000, uploadTimeoutMs: 60_000, maskVersion: 2 };
  const params = checkSecAggParams(sa);
  const cohort = 'ab'.repeat(16);
  const cohortId = fromHex(cohort);
  const others = [await secAggKeyPair(), await secAggKeyPair()];
  const json = (x: unknown, status = 200) => new Response(JSON.stringify(x), { status, headers: { 'Content-Type': 'application/json' } });
  let mine = '';
  let length = 0;
  let clock = 1_000_000;
  const posts: Array<{ step: Step; list: string; at: number }> = [];
  let gets = 0;
  let endedAt: number | undefined;
  let listIdx = 0;
  const lists = o.lists ?? [[2]];
  let extra: { confirmations?: Record<string, string>; ready?: Record<string, string>; sealed?: Record<string, string> } = {};
  const fetchFn: FetchLike = async (url, init) => {
    const path = new URL(url).pathname;
    if (path === '/v1/config') return json({ dim: DIM, items: IDS.length, clip: 1, noiseMultiplier: 1, bits: 8, blockSize: 256, version: 0, minClients: 3, secureAggregation: sa });
    if (path === '/v1/model') return new Response(encodeModel(initialTable()) as Uint8Array<ArrayBuffer>);
    if (path === '/v1/secagg/join') { mine = toHex(init!.body!); return json({ cohort, index: 0, size: 3, status: 'forming', token: 'ff'.repeat(16) }); }
    const keys = new Map([[0, fromHex(mine)], [1, others[0]!.publicKey], [2, others[1]!.publicKey]]);
    const memberKeys = { '0': mine, '1': toHex(others[0]!.publicKey), '2': toHex(others[1]!.publicKey) };
    if (path === '/v1/secagg/updates') {
      length = decodeMaskedHeader(init!.body as Uint8Array).length;
      // member 1, honest, list [2]: its confirmation & ready tags for member 0, and its sealed share for 0
      const dropped = lists[0]!;
      const me1 = { index: 1, cohortId, publicKeys: keys, privateKey: others[0]!.privateKey, params, length, dropped };
      const x = encodeFixedPoint(new Float64Array(length), params.step, params.bits, () => 0.5);
      const up = await addSelfMask(await maskValues(x, me1), me1);
      const p = aliveNeighbours(1, 3, 2, dropped).indexOf(0);
      const sp = sharePosition(1, 0, 3, 2);
      extra = {
        confirmations: { '1': toHex((await confirmationTags(me1)).subarray(p * CONFIRM_TAG_BYTES, (p + 1) * CONFIRM_TAG_BYTES)) },
        ready: { '1': toHex((await confirmationTags(me1, 'ready')).subarray(p * CONFIRM_TAG_BYTES, (p + 1) * CONFIRM_TAG_BYTES)) },
        sealed: { '1': toHex(up.sealed!.subarray(sp * SEALED_SHARE_BYTES, (sp + 1) * SEALED_SHARE_BYTES)) },
      };
      clock += 1000;
      return json({ pending: 1, minClients: 3, published: null }, 202);
    }
    for (const step of ['confirm', 'ready', 'recovery'] as const) {
      if (path === `/v1/secagg/cohorts/${cohort}/members/0/${step}`) {
        posts.push({ step, list: lists[Math.min(listIdx, lists.length - 1)]!.join(), at: clock });
        clock += 1000;
        if (o.abortOn === step) { o.ac!.abort(); return json({ ok: true }, 202); }
        if (o.refuse.includes(step)) { endedAt ??= gets; listIdx++; return json({ reason: 'unknown-cohort', error: 'stopped recovering' }, 409); }
        return json({ ok: true }, 202);
      }
    }
    if (path === `/v1/secagg/cohorts/${cohort}/members/0`) {
      gets++;
      clock += 10_000;
      if (length === 0) return json({ cohort, size: 3, joined: 3, submitted: 0, status: 'ready', memberKeys });
      if (endedAt !== undefined && o.after !== 'recovering') {
        if (o.after === 'gone') return json({ reason: 'unknown-cohort', error: 'no cohort' }, 409);
        return json({ cohort, size: 3, joined: 3, submitted: 2, status: o.after, memberKeys, ...(o.after === 'aborted' ? { reason: 'timeout' } : {}) });
      }
      const dropped = lists[Math.min(listIdx, lists.length - 1)]!;
      return json({ cohort, size: 3, joined: 3, submitted: 2, status: 'recovering', memberKeys, dropped, ...extra });
    }
    return json({ error: `unexpected ${path}` }, 404);
  };
  const t0 = Date.now();
  const r = await syncOnce({ serverUrl: 'http://x', fetch: fetchFn, accountant: new RdpAccountant(), budget: Infinity, history: shopperHistory(1, 6), cohortPollMs: 1, now: () => clock, ...(o.ac ? { signal: o.ac.signal } : {}) });
  return { r: r.cohort!, posts, gets, fakeS: (clock - 1_000_000) / 1000, realMs: Date.now() - t0 };
}


test('a recovery share refused 409 unknown-cohort because it completed the cohort (its answer lost) reports the cohort published, share sent', async () => {
  const s = await scenario({ refuse: ['recovery'], after: 'done' });
  assert.deepEqual([s.r.outcome, s.r.recoveryShareSent], ['published', true]);
  assert.deepEqual(s.posts.map((p) => p.step), ['confirm', 'ready', 'recovery'], 'each step once');
});

test('a recovery share refused 409 unknown-cohort because the recovery deadline passed reports the cohort aborted', async () => {
  const s = await scenario({ refuse: ['recovery'], after: 'aborted' });
  assert.deepEqual([s.r.outcome, s.r.recoveryShareSent], ['aborted', true]);
});

test('a confirmation refused 409 unknown-cohort: no further step, and the cohort\'s end is reported', async () => {
  const s = await scenario({ refuse: ['confirm'], after: 'aborted' });
  assert.deepEqual([s.r.outcome, s.r.recoveryShareSent], ['aborted', false]);
  assert.deepEqual(s.posts.map((p) => p.step), ['confirm']);
});

test('a device cancelled as the server takes its recovery share reports the share sent', async () => {
  const ac = new AbortController();
  const s = await scenario({ refuse: [], after: 'done', abortOn: 'recovery', ac });
  assert.equal(s.r.recoveryShareSent, true, 'the server took the share');
});
