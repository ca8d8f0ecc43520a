// The SDK's worker, plus one way to make it end without a word, as a worker that runs out of
// memory does: `{ die: true }` posted to it closes it. Used by sdk.test.ts (workerTimeoutMs).
import '/dist/worker.js';

self.addEventListener('message', (e) => {
  if (e.data && e.data.die === true) self.close();
});
