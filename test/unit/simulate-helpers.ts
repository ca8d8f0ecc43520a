/**
 * A tiny synthetic shop for the simulation tests: 40 items in 4 clusters of 10, every user buys
 * 6–8 items of one cluster, so a model that learns item-to-item structure ranks the held-out item
 * far better than popularity (which is nearly flat across clusters).
 */
import { EventLogBuilder } from '../../src/eval/event-log.js';
import { looSplit } from '../../src/eval/loo-split.js';
import type { Split } from '../../src/eval/split.js';
import { Random } from '../../src/model/random.js';

export function clusteredSplit(users = 160, seed = 3): Split {
  const rng = new Random(seed);
  const b = new EventLogBuilder();
  // Intern items in a fixed order so ids map to rows predictably.
  for (let i = 0; i < 40; i++) b.internItem(`sku-${i}`);
  for (let u = 0; u < users; u++) {
    const cluster = u % 4;
    const items = rng.shuffle(Array.from({ length: 10 }, (_, i) => cluster * 10 + i)).slice(0, 6 + rng.int(3));
    items.forEach((it, t) => b.push(`user-${u}`, `sku-${it}`, t, 1));
  }
  return looSplit(b.build());
}

/** Options every test run shares: small, fast, deterministic sampling. */
export const BASE = {
  dim: 8,
  seed: 1,
  clip: 1,
  minClients: 10,
  evalUsers: 0,
  localTrain: { negatives: 0, batchSize: 64 },
} as const;
