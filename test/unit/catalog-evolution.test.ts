// The shop's catalog changes between visits (items renamed, dropped, back in stock): what the
// device holds that was built for another catalog (stop 32 review).
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Engine } from '../../src/engine/engine.js';
import { isModelError } from '../../src/errors.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { encodeNeighborTable } from '../../src/model/neighbors-wire.js';
import type { NeighborTable } from '../../src/model/neighbors.js';
import '../../src/model/tf.js';

/** a → b (0.8), a → c (0.2); b → a (0.5); c → d (0.9); d: none. */
const TABLE: NeighborTable = {
  itemIds: ['a', 'b', 'c', 'd'],
  width: 2,
  index: Int32Array.of(1, 2, 0, -1, 3, -1, -1, -1),
  weight: Float32Array.of(0.8, 0.2, 0.5, 0, 0.9, 0, 0, 0),
};
const catalogOf = (ids: string[]) => ({ items: ids.map((id, i) => ({ id, title: id.toUpperCase(), popularity: 50 - i })) });

describe('a neighbour table built for another catalog', () => {
  it('is refused when it holds none of the catalog’s items, and the table in use is kept; stats() says how many items matched', async () => {
    const e = await Engine.create({ catalog: catalogOf(['a', 'b', 'x', 'y']), backend: 'cpu', autoTrainEvery: 0, store: new MemoryEventStore() });
    try {
      const r = await e.setNeighbors(encodeNeighborTable(TABLE));
      assert.deepEqual([r.items, r.matched], [4, 2], 'a and b of a, b, c, d');
      assert.deepEqual((await e.stats()).model.neighbors, { items: 4, matched: 2, width: 2, hash: r.hash, source: 'setNeighbors' });
      assert.equal((await e.audit()).neighbors?.matched, 2);
      const renamed = encodeNeighborTable({ ...TABLE, itemIds: ['A-1', 'B-1', 'C-1', 'D-1'] });
      await assert.rejects(e.setNeighbors(renamed), (err) => isModelError(err) && /holds 4 items, none of them in this page's catalog \(file: "A-1"…, catalog: "a"…\): it was built for another catalog/.test(err.message));
      assert.equal((await e.stats()).model.neighbors?.hash, r.hash, 'the table in use is kept');
    } finally {
      await e.close();
    }
  });

  it('a stored table that no longer matches the catalog (every id renamed) is not used at the next visit, and stats() says why', async () => {
    const store = new MemoryEventStore();
    const first = await Engine.create({ catalog: catalogOf(['a', 'b', 'c', 'd']), backend: 'cpu', autoTrainEvery: 0, store });
    first.enqueue([{ type: 'view', itemId: 'a' }]); // consent and a history: the table is stored with the events
    await first.setNeighbors(encodeNeighborTable(TABLE));
    await first.close();
    const second = await Engine.create({ catalog: catalogOf(['a2', 'b2', 'c2', 'd2']), backend: 'cpu', autoTrainEvery: 0, store });
    try {
      const s = await second.stats();
      assert.equal(s.model.neighbors, null);
      assert.match(s.lastError ?? '', /ModelError: the neighbour table \(setNeighbors\) holds 4 items, none of them in this page's catalog/);
    } finally {
      await second.close();
    }
  });
});
