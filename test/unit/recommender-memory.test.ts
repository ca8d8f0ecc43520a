// The page facade on a long-lived page (a single-page app open for days): what a call returned is
// the page's to keep or drop; the facade must not hold it for the recommender's life.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createRecommender } from '../../src/recommender.js';
import { withStandInWorker } from './engine-helpers.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Whether `ref`'s object is collected once nothing but the facade could hold it. */
async function collected(ref: WeakRef<object>): Promise<boolean> {
  for (let i = 0; i < 20 && ref.deref() !== undefined; i++) {
    await new Promise((r) => setTimeout(r, 10));
    gc();
  }
  return ref.deref() === undefined;
}

test('an answer the page dropped is collected while the recommender lives, with the liveness check on and off (long-lived page review, stop 33)', async () => {
  const catalog = { items: Array.from({ length: 5 }, (_, i) => ({ id: `p${i}` })) };
  const api = {
    async init(_o: unknown, trackPort: MessagePort) {
      trackPort.onmessage = (ev: MessageEvent) => {
        const m = ev.data as { ping?: number };
        if (typeof m?.ping === 'number') trackPort.postMessage({ pong: m.ping });
      };
    },
    barrier: async () => undefined,
    recommend: async () => [{ itemId: 'p1', score: 0.5, reason: { kind: 'popular', text: 'Popular in this shop', itemIds: [], basis: [] } }],
    close: async () => undefined,
  };
  await withStandInWorker(api, async () => {
    for (const workerTimeoutMs of [0, 60_000]) {
      const rec = await createRecommender({ catalog, workerTimeoutMs });
      try {
        let ref!: WeakRef<object>;
        await (async () => {
          const answer = await rec.recommend({ k: 1 });
          assert.equal(answer[0]?.itemId, 'p1');
          ref = new WeakRef(answer);
        })();
        assert.ok(await collected(ref), `workerTimeoutMs ${workerTimeoutMs}: the answer is still held after the page dropped it`);
      } finally {
        await rec.close();
      }
    }
  });
});
