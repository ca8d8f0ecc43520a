/**
 * Poisoning: 5% of each round's clients are attackers. Per round of 100 updates:
 * - 1 sends an honest update scaled ×20 (no clipping),
 * - 1 sends a sign-flipped honest update,
 * - 3 push one target item's popularity: a delta that is zero everywhere except the target's bias,
 *   as large as the server's norm check lets through (found by bisection against `checkUpdate`,
 *   i.e. the strongest such attacker), quantized and encoded by hand (no client-side clipping).
 * The server applies FedAvg (lr 1) with its norm bound. The honest math: an accepted update moves
 * any one coordinate of the mean by at most its norm / M, so k attackers move the target's bias
 * by at most R·k·B/M over R rounds, B the largest norm accepted. The test runs the same rounds
 * with the attackers replaced by honest clients (same seeds) as the baseline, measures the
 * target's bias gain and its cold-start rank (ranked by bias, 1 = top), asserts the gain stays
 * within the bound, and prints the figures as `#` lines — for σ = 0 (clipping only) and σ = 1.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { buildClientUpdate, quantizeStochastic } from '../../src/federated/client-update.js';
import { decodeModel, encodeUpdate, fromHex, NONCE_BYTES } from '../../src/federated/wire.js';
import { cloneItemTable, createItemTable, type ItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';
import { checkUpdate, startServer } from '../../src/server/index.js';
import { quiet, trained } from './server-helpers.js';

const N = 200;
const DIM = 8;
const M = 100; // updates per round
const ROUNDS = 5;
const CLIP = 1;
const IDS = Array.from({ length: N }, (_, i) => `sku-${i}`);
const TARGET = 150; // starts near the bottom of the popularity ranking

function rankOf(t: ItemTable, row: number): number {
  let r = 1;
  for (let i = 0; i < t.bias.length; i++) if (i !== row && t.bias[i]! > t.bias[row]!) r++;
  return r;
}

interface Outcome {
  table: ItemTable;
  bias: number;
  rank: number;
  rejected: Record<string, number>;
  accepted: number;
  maxAttackNorm: number;
}

async function run(sigma: number, attack: boolean): Promise<Outcome> {
  const initial = createItemTable(IDS, DIM, { seed: 3, popularity: IDS.map((_, i) => N - i) });
  const server = await startServer({ port: 0, dataDir: null, initialTable: initial, minClients: M, clip: CLIP, noiseMultiplier: sigma, maxStaleness: 0, rateLimit: false, log: quiet });
  const cfg = server.rounds.config;
  const rng = new Random(77);
  const uniform = () => rng.next();
  const rejected: Record<string, number> = {};
  let accepted = 0;
  let maxAttackNorm = 0;
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const base = decodeModel(server.rounds.modelBytes('float32')).table;
      const baseHash = fromHex(server.rounds.hash);
      const honest = (seed: number, scale = 0.05) =>
        buildClientUpdate(base, trained(base, seed, scale), { baseHash, clip: CLIP, noiseMultiplier: sigma, bits: cfg.bits, blockSize: cfg.blockSize, uniform }).bytes;
      /** Encodes any delta with the server's header fields and no clipping or noise. */
      const craft = (delta: Float64Array): Uint8Array => {
        const { scales, codes } = quantizeStochastic(delta, N, DIM, cfg.bits, cfg.blockSize, uniform);
        const nonce = new Uint8Array(NONCE_BYTES);
        globalThis.crypto.getRandomValues(nonce);
        return encodeUpdate({ header: { bits: cfg.bits, dim: DIM, itemCount: N, baseVersion: base.version, blockSize: cfg.blockSize, clip: CLIP, noiseMultiplier: sigma, baseHash, nonce }, scales, codes });
      };
      const honestDelta = (seed: number): Float64Array => {
        const t = trained(base, seed, 0.05);
        const d = new Float64Array(N * (DIM + 1));
        for (let i = 0; i < N * DIM; i++) d[i] = t.factors[i]! - base.factors[i]!;
        for (let i = 0; i < N; i++) d[N * DIM + i] = t.bias[i]! - base.bias[i]!;
        return d;
      };
      const bodies: Uint8Array[] = [];
      for (let c = 0; c < M; c++) {
        const seed = 1000 * round + c;
        if (attack && c === 0) bodies.push(craft(honestDelta(seed).map((v) => 20 * v)));
        else if (attack && c === 1) {
          // Sign-flipped, and clipped to C like an honest update so that it passes the norm check.
          const d = honestDelta(seed);
          const norm = Math.hypot(...d);
          bodies.push(craft(d.map((v) => (-v * Math.min(1, CLIP / norm)))));
        }
        else if (attack && c >= 2 && c < 5) {
          // The largest bias push on the target that passes the norm check.
          const at = (b: number) => {
            const d = new Float64Array(N * (DIM + 1));
            d[N * DIM + TARGET] = b;
            return craft(d);
          };
          let lo = 0;
          let hi = 10_000;
          for (let i = 0; i < 40; i++) {
            const mid = (lo + hi) / 2;
            if (checkUpdate(at(mid), cfg).ok) lo = mid;
            else hi = mid;
          }
          maxAttackNorm = Math.max(maxAttackNorm, lo);
          bodies.push(at(lo));
        } else bodies.push(honest(seed));
      }
      // The extra (rejected) attacker does not count towards the round; fill with honest ones.
      let extra = 0;
      for (const b of bodies) {
        const r = await server.rounds.submit(b);
        if (r.ok) accepted++;
        else rejected[r.reason] = (rejected[r.reason] ?? 0) + 1;
      }
      while (server.rounds.version === round) {
        const r = await server.rounds.submit(honest(1000 * round + M + extra++));
        assert.ok(r.ok);
        accepted++;
      }
    }
    const final = decodeModel(server.rounds.modelBytes('float32')).table;
    assert.equal(final.version, ROUNDS);
    return { table: final, bias: final.bias[TARGET]!, rank: rankOf(final, TARGET), rejected, accepted, maxAttackNorm };
  } finally {
    await server.close();
  }
}

for (const sigma of [0, 1]) {
  test(`poisoning with σ = ${sigma}: 5% crafted updates per round, the target's bias gain stays within R·k·B/M`, async () => {
    const initial = createItemTable(IDS, DIM, { seed: 3, popularity: IDS.map((_, i) => N - i) });
    const rank0 = rankOf(cloneItemTable(initial), TARGET);
    const clean = await run(sigma, false);
    const hit = await run(sigma, true);
    const k = 3;
    const bound = (ROUNDS * k * hit.maxAttackNorm) / M;
    const gain = hit.bias - clean.bias;
    process.stdout.write(
      `# poisoning σ=${sigma}: ${ROUNDS} rounds × ${M} updates, per round 1 scaled ×20, 1 sign-flipped, ${k} bias-targeted (norm ≤ ${hit.maxAttackNorm.toFixed(3)}); ` +
        `rejected ${JSON.stringify(hit.rejected)}; target bias gain vs honest baseline ${gain.toFixed(4)} (bound ${bound.toFixed(4)}); ` +
        `target rank ${rank0} → ${hit.rank} (honest baseline ${clean.rank}), gain ${clean.rank - hit.rank} of ${N}\n`,
    );
    assert.ok(hit.maxAttackNorm > 0);
    // The honest clients that the attackers displaced (and the sign-flipper) also moved the target's
    // bias a little: each by at most its noised norm / M per round, which the slack covers.
    const slack = (ROUNDS * 2 * (CLIP * 1.01 + 4 * sigma * CLIP)) / M;
    assert.ok(gain <= bound + slack, `gain ${gain} ≤ bound ${bound} + slack ${slack}`);
    // In ranks: the target cannot pass an item whose bias is above its honest value plus that bound.
    const ceiling = clean.bias + bound + slack;
    const minRank = 1 + Array.from(hit.table.bias).filter((b, i) => i !== TARGET && b > ceiling).length;
    assert.ok(hit.rank >= minRank, `rank ${hit.rank} ≥ ${minRank}, what the bound allows`);
    if (sigma === 0) {
      // Clipping alone: an attacker carries at most ≈ C (plus the quantization allowance).
      assert.ok(hit.maxAttackNorm <= CLIP * 1.05, `an attacker's norm ${hit.maxAttackNorm} ≤ C(1 + tolerance) + quantization`);
      assert.equal(hit.rejected['over-norm'], ROUNDS, 'every scaled ×20 update is refused');
    }
  });
}
