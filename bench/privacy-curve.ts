// Quality against ε: runs the federated recipe of docs/FEDERATED.md ("Where it stands") through
// `localrec simulate` once per privacy budget, each with the σ that spends exactly that budget in
// the recipe's rounds (`--noise auto`), and prints one JSON line per run, beside two baselines from
// the same data: the same model trained centrally without DP, the recipe itself without noise, the
// shop's popularity biases alone (what a shop serves without federated learning: factors all zero)
// and version 0 (those biases with the random factors every device starts from).
//
//   node --import tsx bench/privacy-curve.ts [ml|retail] [--epsilons 1,2,4,8,16] [--runs 1] [--denoise none|directions]
//   npm run bench:privacy -- retail --epsilons 2,8
//
// MovieLens (ml, the default): ~25 s per run on 2 cores, ~4 minutes for the defaults. Online-retail:
// 5–10 minutes per run and ~9 GB of heap each. Each run's noise comes from crypto.getRandomValues, so
// repeated runs differ (--runs n repeats every budget). Not part of `npm test`.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadCsv } from '../src/eval/csv-loader.js';
import { looSplit } from '../src/eval/loo-split.js';
import { csvMappingFromFlags, PRESETS } from '../src/eval/presets.js';
import { evaluateTable, initialTable } from '../src/federated/simulate.js';

const RECIPES = {
  ml: {
    data: '../shared/data/ml-latest-small/ratings.csv',
    rounds: 3,
    flags: ['--format', 'csv', '--user', 'userId', '--item', 'movieId', '--time', 'timestamp', '--clients-per-round', '610',
      '--min-clients', '610', '--train-rows', '100', '--dim', '8', '--subspace-scale', '32'],
  },
  retail: {
    data: '../shared/data/online-retail/online-retail.csv.gz',
    rounds: 4,
    flags: ['--format', 'retail', '--clients-per-round', '4000', '--min-clients', '4000', '--train-rows', '1000',
      '--dim', '16', '--subspace-scale', '48'],
  },
} as const;
const COMMON = ['--aggregator', 'subspace', '--secure-aggregation', '--clip', '1', '--freeze-biases', '--bias-scale', '0.5'];

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { epsilons: { type: 'string', default: '1,2,4,8,16' }, runs: { type: 'string', default: '1' }, denoise: { type: 'string', default: 'none' } },
});
const which = positionals[0] ?? 'ml';
if (which !== 'ml' && which !== 'retail') throw new Error(`data set must be ml or retail, got '${which}'`);
const epsilons = values.epsilons.split(',').map((s) => {
  const e = Number(s);
  if (!(e > 0) || !Number.isFinite(e)) throw new Error(`--epsilons: each must be a positive number, got '${s}'`);
  return e;
});
const denoise = values.denoise;
if (denoise !== 'none' && denoise !== 'directions') throw new Error(`--denoise must be none or directions, got '${denoise}'`);
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a positive integer, got '${values.runs}'`);

const recipe = RECIPES[which];
const cli = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
const root = fileURLToPath(new URL('..', import.meta.url));

/** One `localrec simulate` run; resolves with its final JSON line. */
function simulate(extra: string[]): Promise<Record<string, unknown>> {
  const args = ['--import', 'tsx', cli, 'simulate', '--data', recipe.data, ...recipe.flags, ...COMMON,
    '--rounds', String(recipe.rounds), '--eval-every', String(recipe.rounds), ...extra];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd: root,
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, NODE_OPTIONS: `--max-old-space-size=${which === 'retail' ? 9000 : 4000}` },
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const last = out.trim().split('\n').at(-1) ?? '';
      if (code !== 0) return reject(new Error(`simulate ${extra.join(' ')} exited with ${code}`));
      try {
        resolve(JSON.parse(last) as Record<string, unknown>);
      } catch {
        reject(new Error(`simulate ${extra.join(' ')}: no final JSON line, got '${last.slice(0, 200)}'`));
      }
    });
  });
}

// Popularity alone: the recipe's frozen biases, 0.5·ln(1 + count), with every factor zero.
const split = looSplit(
  which === 'ml'
    ? await loadCsv(recipe.data, csvMappingFromFlags('csv', { user: 'userId', item: 'movieId', time: 'timestamp', filter: [] }))
    : await loadCsv(recipe.data, PRESETS.retail),
);
const popular = initialTable(split, 1, 1, 'popularity', 'data', 0.5);
popular.factors.fill(0);
const pop = await evaluateTable(popular, split);
console.log(JSON.stringify({ data: which, model: 'popularity biases alone (no federated learning)', hr: pop.hr, ndcg: pop.ndcg }));

const num = (r: Record<string, unknown>, k: string) => r[k] as number;
const round = (x: number) => Math.round(x * 1e4) / 1e4;

// The reference run: the recipe without noise (no budget), plus the same model trained centrally.
const ref = await simulate(['--noise', '0', '--budget', 'none', '--central']);
const central = ref.central as { hr: number; ndcg: number };
console.log(JSON.stringify({ data: which, model: 'central (no DP)', hr: central.hr, ndcg: central.ndcg }));
console.log(JSON.stringify({ data: which, model: 'version 0 (the biases and random factors devices start from)', hr: num(ref, 'initialHr'), ndcg: num(ref, 'initialNdcg') }));
console.log(JSON.stringify({
  data: which, model: 'federated, σ = 0 (no DP)', epsilon: null, hr: num(ref, 'hr'), ndcg: num(ref, 'ndcg'),
  vsCentral: { hr: round(num(ref, 'hr') / central.hr), ndcg: round(num(ref, 'ndcg') / central.ndcg) }, wallMs: num(ref, 'wallMs'),
}));
for (const epsilon of epsilons) {
  for (let run = 1; run <= runs; run++) {
    const r = await simulate(['--noise', 'auto', '--budget', String(epsilon), '--denoise', denoise]);
    console.log(JSON.stringify({
      data: which, model: 'federated', denoise, epsilon, run, sigma: num(r, 'noiseMultiplier'), rounds: num(r, 'rounds'), epsilonSpent: num(r, 'epsilonMax'),
      hr: num(r, 'hr'), ndcg: num(r, 'ndcg'), vsCentral: { hr: round(num(r, 'hr') / central.hr), ndcg: round(num(r, 'ndcg') / central.ndcg) },
      bytesPerClientPerRound: num(r, 'bytesPerClientPerRound'), wallMs: num(r, 'wallMs'),
    }));
  }
}
