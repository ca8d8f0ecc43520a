// The MovieLens comparison of #4 as the benches run it (docs/FEDERATED.md, "Where it stands"): the
// data split, the history weighting, the shipped federated recipe and its central reference.
import { loadCsv } from '../src/eval/csv-loader.js';
import type { EventLog } from '../src/eval/event-log.js';
import { looSplit, type SameTime } from '../src/eval/loo-split.js';
import type { Split } from '../src/eval/split.js';
import { noiseForSyncs } from '../src/federated/dp.js';
import { alignTo, centralModel, initialTable, simulate } from '../src/federated/simulate.js';
import type { ItemTable } from '../src/model/item-table.js';

/** How `localrec eval` weights a history on MovieLens (recency 0.5, no confidence). */
export const weighting = { recencyDecay: 0.5, confidence: 'none' as const };
/** σ that spends exactly ε = 8 in the recipe's 3 rounds. */
export const noiseMultiplier = noiseForSyncs(3, 8);

/** ml-latest-small, leave-one-out (`sameTime`: see `looSplit`; 23.0 % of its rows share a second with another of the user's). */
export async function loadMovieLens(sameTime: SameTime = 'keep'): Promise<Split> {
  return looSplit(await loadCsv('../shared/data/ml-latest-small/ratings.csv', { user: 'userId', item: 'movieId', time: 'timestamp' }), 3, { sameTime });
}

/** The training events alone as a log, split again: each user's last training item is the validation item. */
export function validationSplit(s: Split): Split {
  const te = s.trainEvents;
  const user = new Int32Array(te.items.length);
  for (let u = 0; u + 1 < te.ptr.length; u++) user.fill(u, te.ptr[u]!, te.ptr[u + 1]!);
  const log: EventLog = { userIds: s.userIds, itemIds: s.itemIds, user, item: te.items, time: te.time, weight: te.weight };
  return looSplit(log);
}

/**
 * What the subspace benches (subspace-extension, subspace-variants) start from: the recipe's
 * version 0 over `split` (popularity order, biases 0.5·ln(1 + count), `dim` random factors) and the
 * devices that send (two distinct films or more), each history in time order as rows of that table.
 */
export function subspaceStart(split: Split, dim: number): { init: ItemTable; histories: number[][] } {
  const init = initialTable(split, dim, 1, 'popularity', 'popularity', 0.5);
  const rowOf = new Map(init.itemIds.map((id, i) => [id, i]));
  const histories: number[][] = [];
  for (let u = 0; u < split.userIds.length; u++) {
    const rows = Array.from(split.train.items.subarray(split.train.ptr[u], split.train.ptr[u + 1]), (i) => rowOf.get(split.itemIds[i]!)!);
    if (new Set(rows).size >= 2) histories.push(rows);
  }
  return { init, histories };
}

/** The central reference: `localrec eval`'s `factors` model, dim 8, trained on `split`. */
export async function trainCentral(split: Split, seed: number, epochs = 4): Promise<ItemTable> {
  const m = await centralModel({ dim: 8, seed, epochs, weighting, temperature: 1, backend: 'wasm' });
  await m.fit(split, () => {});
  return m.trainedTable!;
}

/**
 * The shipped recipe: 100 rows × 8, T = 3 at ε = 8, secure aggregation over all 610 devices,
 * frozen biases 0.5·ln(1 + count), `--denoise directions`; one fresh noise draw per call. `rounds`
 * other than 3: the same with σ = noiseForSyncs(rounds, 8).
 */
export async function trainFederated(split: Split, rounds = 3): Promise<{ table: ItemTable; epsilon: number | null; noiseMultiplier: number }> {
  const sigma = rounds === 3 ? noiseMultiplier : noiseForSyncs(rounds, 8);
  const sim = await simulate(split, {
    rounds, clientsPerRound: 610, minClients: 610, clip: 1, noiseMultiplier: sigma, budget: 8, dim: 8, seed: 1, aggregator: 'subspace', subspaceScale: 32,
    secureAggregation: true, evalEvery: rounds, trainRows: 100, trainBiases: false, biasScale: 0.5, denoise: 'directions', weighting, data: 'ml-latest-small',
  });
  return { table: alignTo(sim.table, split.itemIds), epsilon: sim.final.epsilonMax, noiseMultiplier: sigma };
}
