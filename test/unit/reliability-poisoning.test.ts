/**
 * Poisoning: 5% of each round's clients are attackers. Per round of 100 updates:
 * - 1 sends an honest update scaled ×20 (no clipping),
 * - 1 sends a sign-flipped honest update,
 * - 3 push one target item's popularity: a delta that is zero everywhere except the target's bias,
 *   as large as the server's norm check lets through (found by bisection against `checkUpdate`,
 *   i.e. the strongest such attacker), quantized and encoded by hand (no client-side clipping).
 *
 * With the plain mean (FedAvg, lr 1, the default) the honest math is: an accepted update moves any
 * one coordinate of the mean by at most its norm / M, so k attackers move the target's bias by at
 * most R·k·B/M over R rounds, B the largest norm accepted.
 *
 * With a robust combination (`robust: 'trimmed-mean'`, β = 0.1, or `'median'`) the server drops the
 * t lowest and t highest values of every coordinate (t = ⌊β·M⌋ = 10; median: t = ⌊(M−1)/2⌋). With
 * f ≤ t dishonest updates in a round of M, the j-th smallest of all M values lies between the
 * (j−f)-th and the j-th smallest honest value, so the round's step on every coordinate lies in
 * [mean of honest order statistics t+1−f … M−t−f, mean of honest order statistics t+1 … M−t]
 * whatever the attackers send. The test checks that per round on the target's bias, from the honest
 * values it sent, and the final rank against the resulting ceiling.
 *
 * Every honest client draws its noise from its own seeded source, so the run with attackers and
 * the baseline (the same rounds with the attackers replaced by honest clients) share the honest
 * clients' noise: the difference is the attack's doing. Figures are printed as `#` lines — for
 * σ = 0 (clipping only) and σ = 1, for each way of combining.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { buildClientUpdate, quantizeStochastic } from '../../src/federated/client-update.js';
import { decodeModel, decodeUpdate, dequantizeUpdate, encodeUpdate, fromHex, NONCE_BYTES } from '../../src/federated/wire.js';
import { cloneItemTable, createItemTable, type ItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';
import { checkUpdate, startServer, trimCount, type RobustName } from '../../src/server/index.js';
import { quiet, trained } from './server-helpers.js';

const N = 200;
const DIM = 8;
const M = 100; // updates per round
const ROUNDS = 5;
const CLIP = 1;
const TRIM = 0.1; // β of the trimmed mean
const IDS = Array.from({ length: N }, (_, i) => `sku-${i}`);
const TARGET = 150; // starts near the bottom of the popularity ranking
const AT = N * DIM + TARGET; // the target's bias in a flat delta

function rankOf(t: ItemTable, row: number): number {
  let r = 1;
  for (let i = 0; i < t.bias.length; i++) if (i !== row && t.bias[i]! > t.bias[row]!) r++;
  return r;
}

interface Round {
  /** The target-bias values of the honest updates the round aggregated. */
  honest: number[];
  /** How many dishonest updates the round aggregated. */
  dishonest: number;
  /** The target's bias step the published version took. */
  step: number;
}

interface Outcome {
  table: ItemTable;
  bias: number;
  rank: number;
  rejected: Record<string, number>;
  accepted: number;
  maxAttackNorm: number;
  rounds: Round[];
}

async function run(sigma: number, attack: boolean, robust: RobustName): Promise<Outcome> {
  const initial = createItemTable(IDS, DIM, { seed: 3, popularity: IDS.map((_, i) => N - i) });
  const server = await startServer({
    port: 0,
    dataDir: null,
    initialTable: initial,
    minClients: M,
    clip: CLIP,
    noiseMultiplier: sigma,
    maxStaleness: 0,
    robust,
    trimFraction: TRIM,
    rateLimit: false,
    log: quiet,
  });
  const cfg = server.rounds.config;
  // The attackers' own random source (stochastic rounding of crafted bodies).
  const rng = new Random(77);
  const uniform = () => rng.next();
  const rejected: Record<string, number> = {};
  let accepted = 0;
  let maxAttackNorm = 0;
  const rounds: Round[] = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const base = decodeModel(server.rounds.modelBytes('float32')).table;
      const baseHash = fromHex(server.rounds.hash);
      const honest = (seed: number, scale = 0.05) => {
        const own = new Random(100_000 + seed);
        return buildClientUpdate(base, trained(base, seed, scale), { baseHash, clip: CLIP, noiseMultiplier: sigma, bits: cfg.bits, blockSize: cfg.blockSize, uniform: () => own.next() }).bytes;
      };
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
      const bodies: Array<{ body: Uint8Array; honest: boolean }> = [];
      for (let c = 0; c < M; c++) {
        const seed = 1000 * round + c;
        if (attack && c === 0) bodies.push({ body: craft(honestDelta(seed).map((v) => 20 * v)), honest: false });
        else if (attack && c === 1) {
          // Sign-flipped, and clipped to C like an honest update so that it passes the norm check.
          const d = honestDelta(seed);
          const norm = Math.hypot(...d);
          bodies.push({ body: craft(d.map((v) => -v * Math.min(1, CLIP / norm))), honest: false });
        } else if (attack && c >= 2 && c < 5) {
          // The largest bias push on the target that passes the norm check.
          const at = (b: number) => {
            const d = new Float64Array(N * (DIM + 1));
            d[AT] = b;
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
          bodies.push({ body: at(lo), honest: false });
        } else bodies.push({ body: honest(seed), honest: true });
      }
      const before = base.bias[TARGET]!;
      const r: Round = { honest: [], dishonest: 0, step: 0 };
      const took = (b: { body: Uint8Array; honest: boolean }) => {
        if (b.honest) r.honest.push(dequantizeUpdate(decodeUpdate(b.body))[AT]!);
        else r.dishonest++;
      };
      // The extra (rejected) attacker does not count towards the round; fill with honest ones.
      let extra = 0;
      for (const b of bodies) {
        const res = await server.rounds.submit(b.body);
        if (res.ok) {
          accepted++;
          took(b);
        } else rejected[res.reason] = (rejected[res.reason] ?? 0) + 1;
      }
      while (server.rounds.version === round) {
        const b = { body: honest(1000 * round + M + extra++), honest: true };
        const res = await server.rounds.submit(b.body);
        assert.ok(res.ok);
        accepted++;
        took(b);
      }
      assert.equal(r.honest.length + r.dishonest, M, 'the round aggregated exactly the updates the test counted');
      r.step = decodeModel(server.rounds.modelBytes('float32')).table.bias[TARGET]! - before;
      rounds.push(r);
    }
    const final = decodeModel(server.rounds.modelBytes('float32')).table;
    assert.equal(final.version, ROUNDS);
    return { table: final, bias: final.bias[TARGET]!, rank: rankOf(final, TARGET), rejected, accepted, maxAttackNorm, rounds };
  } finally {
    await server.close();
  }
}

const initialRank = () => rankOf(cloneItemTable(createItemTable(IDS, DIM, { seed: 3, popularity: IDS.map((_, i) => N - i) })), TARGET);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

for (const sigma of [0, 1]) {
  test(`poisoning with σ = ${sigma}, plain mean (FedAvg): 5% crafted updates per round, the target's bias gain stays within R·k·B/M`, async () => {
    const rank0 = initialRank();
    const clean = await run(sigma, false, 'mean');
    const hit = await run(sigma, true, 'mean');
    const k = 3;
    const bound = (ROUNDS * k * hit.maxAttackNorm) / M;
    const gain = hit.bias - clean.bias;
    process.stdout.write(
      `# poisoning σ=${sigma} mean: ${ROUNDS} rounds × ${M} updates, per round 1 scaled ×20, 1 sign-flipped, ${k} bias-targeted (norm ≤ ${hit.maxAttackNorm.toFixed(3)}); ` +
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

  for (const robust of ['trimmed-mean', 'median'] as const) {
    test(`poisoning with σ = ${sigma}, ${robust}: each round's step on the target lies within the honest order-statistic bounds`, async () => {
      const rank0 = initialRank();
      const clean = await run(sigma, false, robust);
      const hit = await run(sigma, true, robust);
      const t = trimCount(robust, M, TRIM);
      let ceiling = createItemTable(IDS, DIM, { seed: 3, popularity: IDS.map((_, i) => N - i) }).bias[TARGET]!;
      let attackerRoom = 0; // Σ (upper bound − honest-only trimmed mean): what the attackers could add at most
      const steps: string[] = [];
      for (const [i, r] of hit.rounds.entries()) {
        const f = r.dishonest;
        assert.ok(f >= 4 && f <= t, `round ${i}: ${f} dishonest updates aggregated, at most t = ${t} (the guarantee needs f ≤ t)`);
        const h = [...r.honest].sort((a, b) => a - b);
        assert.equal(h.length, M - f);
        const upper = mean(h.slice(t, M - t)); // honest order statistics t+1 … M−t
        const lower = mean(h.slice(t - f, M - t - f)); // honest order statistics t+1−f … M−t−f
        // float32 storage of the bias: one rounding of a value below 1e3.
        const eps = 1e-4;
        assert.ok(r.step <= upper + eps, `round ${i}: step ${r.step} ≤ ${upper}, the mean of honest order statistics ${t + 1}…${M - t}`);
        assert.ok(r.step >= lower - eps, `round ${i}: step ${r.step} ≥ ${lower}, the mean of honest order statistics ${t + 1 - f}…${M - t - f}`);
        const ht = trimCount(robust, h.length, TRIM);
        attackerRoom += upper - mean(h.slice(ht, h.length - ht));
        ceiling += upper;
        steps.push(`${r.step.toFixed(3)}≤${upper.toFixed(3)}`);
      }
      // In ranks: the target cannot pass an item whose final bias is above the ceiling.
      const minRank = 1 + Array.from(hit.table.bias).filter((b, i) => i !== TARGET && b > ceiling + 1e-3).length;
      assert.ok(hit.rank >= minRank, `rank ${hit.rank} ≥ ${minRank}, what the per-round bounds allow`);
      process.stdout.write(
        `# poisoning σ=${sigma} ${robust}${robust === 'trimmed-mean' ? ` β=${TRIM}` : ''} (drops ${t} per end): rejected ${JSON.stringify(hit.rejected)}; ` +
          `target bias steps per round ${steps.join(', ')} (bound); attackers' room over honest ${attackerRoom.toFixed(4)}; ` +
          `target bias gain vs honest baseline ${(hit.bias - clean.bias).toFixed(4)}; ` +
          `target rank ${rank0} → ${hit.rank} (honest baseline ${clean.rank}, ceiling allows ${minRank}), gain ${clean.rank - hit.rank} of ${N}\n`,
      );
    });
  }
}
