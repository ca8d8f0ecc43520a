/**
 * localrec's TensorFlow.js work on a real GPU: the WebGPU backend through Dawn (the `webgpu` npm
 * package: Chromium's WebGPU implementation as a Node addon), side by side with the wasm backend in
 * the same run. A benchmark and a parity check, not a test: nothing here asserts a time. The other
 * benchmarks measure WebGPU only on SwiftShader (Chromium's software Vulkan), since neither the
 * development machine nor CI has a GPU; this one runs where a GPU is.
 *
 *   npm run bench:gpu -- --webgpu /path/to/webgpu/index.js
 *       [--backends wasm,webgpu] [--only parity,probe,score,eval] [--quick]
 *       [--movielens ../shared/data/ml-latest-small/ratings.csv]
 *       [--retail ../shared/data/online-retail/online-retail.csv.gz] [--wasm-dir DIR]
 *
 * `webgpu` is not a dependency of localrec (it is 100 MB of Dawn builds for every platform): install
 * it anywhere (`npm pack webgpu`) and name its index.js. Without a GPU, Chromium's SwiftShader
 * Vulkan driver also works, slowly:
 *   LD_LIBRARY_PATH=/usr/lib/chromium VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json …
 *
 * On a machine with a GPU but no node_modules, bundle it first (esbuild comes with tsx; the flag
 * keeps src/model/gradients.ts, which package.json's sideEffects list leaves out of src/):
 *   node_modules/.bin/esbuild bench/gpu-node.ts --bundle --ignore-annotations --platform=node
 *     --format=esm --outfile=gpu/bench.mjs --banner:js="import {createRequire} from 'node:module';
 *     const require = createRequire(import.meta.url); const __dirname = import.meta.dirname;"
 * and copy the three .wasm files of @tensorflow/tfjs-backend-wasm beside it (`--wasm-dir`).
 *
 * Prints one JSON object per measurement on stdout; progress on stderr. Parts:
 * - parity: the same training steps on each backend from the same table: the largest difference in
 *   any factor or bias afterwards, and the losses (WebGPU's float32 kernels against wasm's).
 * - probe: what `selectBackend()` (the SDK's start-up choice) picks here for catalogs of 10,000,
 *   100,000 and 1,000,000 items, with its timings.
 * - score: `Scorer.topK` (what `recommend()` runs) and a raw matMul + topk, p50 over reps, at
 *   10,000 / 100,000 / 1,000,000 items × 32.
 * - eval: `localrec eval`'s factor model (the shipped defaults) fitted on each backend over the
 *   leave-one-out split of MovieLens and the retail data: fit time, HR@10, NDCG@10.
 */
import { loadCsv } from '../src/eval/csv-loader.js';
import { looSplit } from '../src/eval/loo-split.js';
import { MODELS, planModels } from '../src/eval/model-registry.js';
import { PRESETS } from '../src/eval/presets.js';
import { evaluateModel } from '../src/eval/runner.js';
import { trainSequences, type Split } from '../src/eval/split.js';
import { selectBackend } from '../src/model/backend.js';
import { cloneItemTable, createItemTable, type ItemTable } from '../src/model/item-table.js';
import { Random } from '../src/model/random.js';
import { Scorer } from '../src/model/score.js';
import * as tf from '../src/model/tf.js';
import { trainItemTable } from '../src/model/train.js';

type Backend = 'wasm' | 'cpu' | 'webgpu';
const args = process.argv.slice(2);
const opt = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const quick = args.includes('--quick');
const backends = (opt('backends') ?? 'wasm,webgpu').split(',') as Backend[];
for (const b of backends) if (!['wasm', 'cpu', 'webgpu'].includes(b)) throw new Error(`--backends: unknown backend '${b}'; use wasm, cpu, webgpu`);
const PARTS = ['parity', 'probe', 'score', 'eval'];
const only = (opt('only') ?? PARTS.join(',')).split(',');
for (const p of only) if (!PARTS.includes(p)) throw new Error(`--only: unknown part '${p}'; use ${PARTS.join(', ')}`);
const movielens = opt('movielens') ?? '../shared/data/ml-latest-small/ratings.csv';
const retail = opt('retail') ?? '../shared/data/online-retail/online-retail.csv.gz';

const log = (msg: string) => process.stderr.write(`[gpu] ${msg}\n`);
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const r4 = (x: number) => Math.round(x * 1e4) / 1e4;

async function registerBackends(): Promise<void> {
  if (backends.includes('webgpu')) {
    const path = opt('webgpu');
    if (!path) throw new Error('--webgpu: name the webgpu package’s index.js (npm pack webgpu), or leave webgpu out of --backends');
    const dawn = (await import(path)) as { create(flags: string[]): unknown; globals: object };
    // GPUBufferUsage and the other WebGPU constants, as a browser has them.
    Object.assign(globalThis, dawn.globals);
    // tfjs registers its WebGPU backend only where navigator.gpu exists (Node 20 has no navigator).
    Object.defineProperty(globalThis, 'navigator', { value: { gpu: dawn.create([]) }, configurable: true });
    await import('@tensorflow/tfjs-backend-webgpu');
    const adapter = (await (globalThis.navigator as unknown as { gpu: { requestAdapter(o?: object): Promise<{ info?: Record<string, unknown> } | null> } }).gpu.requestAdapter({ powerPreference: 'high-performance' }));
    if (!adapter) throw new Error('WebGPU: no adapter (no Vulkan driver found? see the header of bench/gpu-node.ts)');
    const info = adapter.info ?? {};
    emit({ part: 'adapter', vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description });
  }
  if (backends.includes('wasm')) {
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    const dir = opt('wasm-dir');
    if (dir) wasm.setWasmPaths(dir.endsWith('/') ? dir : `${dir}/`);
  }
  if (backends.includes('cpu')) await import('@tensorflow/tfjs-backend-cpu');
}

async function use(b: Backend): Promise<void> {
  if (!(await tf.setBackend(b))) throw new Error(`backend ${b} did not start`);
  await tf.ready();
}


function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function parity(split: Split): Promise<void> {
  // Two epochs over the first users' histories, from one starting table, on every backend.
  const seqs = trainSequences(split, quick ? 50 : 200);
  const start = createItemTable(split.itemIds, 32, { seed: 3 });
  const trained: Partial<Record<Backend, ItemTable>> = {};
  for (const b of backends) {
    await use(b);
    const t = cloneItemTable(start);
    const t0 = performance.now();
    const s = await trainItemTable(t, seqs, { epochs: 2, seed: 5 });
    trained[b] = t;
    emit({ part: 'parity-train', backend: b, users: seqs.length, steps: s.steps, firstLoss: r4(s.firstLoss), lastLoss: r4(s.lastLoss), ms: Math.round(performance.now() - t0) });
  }
  const ref = trained[backends[0]!]!;
  for (const b of backends.slice(1)) {
    const t = trained[b]!;
    emit({
      part: 'parity',
      backend: b,
      against: backends[0],
      maxFactorDiff: maxAbsDiff(ref.factors, t.factors),
      maxBiasDiff: maxAbsDiff(ref.bias, t.bias),
      maxFactorMoved: maxAbsDiff(start.factors, ref.factors),
    });
  }
}

async function probe(): Promise<void> {
  // What the engine's start-up probe picks for a catalog of each size (it probes items × (dim + 1)).
  for (const rows of quick ? [10_000] : [10_000, 100_000, 1_000_000]) {
    const c = await selectBackend({ candidates: backends, probeRows: rows, probeDim: 33 });
    emit({ part: 'probe', items: rows, picked: c.backend, reason: c.reason });
  }
}

async function timeP50(run: () => Promise<void>, reps: number): Promise<number> {
  await run(); // warm-up: shader compilation, first upload
  const ms: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await run();
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  return ms[Math.floor(ms.length / 2)]!;
}

async function score(): Promise<void> {
  const sizes = quick ? [10_000] : [10_000, 100_000, 1_000_000];
  const dim = 32;
  for (const n of sizes) {
    const ids = Array.from({ length: n }, (_, i) => `i${i}`);
    const table = createItemTable(ids, dim, { seed: 1 });
    const rng = new Random(2);
    const z = Float32Array.from({ length: dim }, () => rng.next() - 0.5);
    const exclude = new Set([1, 2, 3]);
    for (const b of backends) {
      await use(b);
      const reps = b === 'cpu' && n >= 1_000_000 ? 3 : 20;
      const scorer = new Scorer(table, 1);
      const sdk = await timeP50(async () => void (await scorer.topK(z, 10, exclude)), reps);
      const V = tf.tensor2d(table.factors, [n, dim]);
      const zt = tf.tensor2d(z, [dim, 1]);
      const raw = await timeP50(async () => {
        const { values, indices } = tf.tidy(() => tf.topk(tf.reshape(tf.matMul(V, zt), [n]), 10));
        await Promise.all([values.data(), indices.data()]);
        tf.dispose([values, indices]);
      }, reps);
      tf.dispose([V, zt]);
      scorer.dispose();
      emit({ part: 'score', backend: b, items: n, dim, reps, topKP50Ms: r4(sdk), rawP50Ms: r4(raw) });
    }
  }
}

async function evalOn(name: string, split: Split): Promise<void> {
  const [plan] = planModels('factors', {});
  for (const b of backends) {
    await use(b);
    // LocalrecModel.fit sets the backend it is given; the eval CLI offers only wasm|cpu (Node has no
    // WebGPU of its own), this script registered webgpu above.
    const model = MODELS.factors!.create({ ...plan!.params, backend: b }, 1);
    let fitMs = 0;
    const t0 = performance.now();
    const r = await evaluateModel(model, split, {
      k: 10,
      data: name,
      onProgress: (stage, f) => {
        if (stage.endsWith('fit') && f === 1 && fitMs === 0) fitMs = performance.now() - t0;
      },
    });
    emit({ part: 'eval', data: name, backend: b, users: r.testUsers, items: r.items, fitS: r4(fitMs / 1000), hr: r4(r.hr), ndcg: r4(r.ndcg) });
  }
}

await registerBackends();
const t0 = performance.now();
log(`backends ${backends.join(', ')}; parts ${only.join(', ')}`);
const ml = only.includes('parity') || only.includes('eval') ? looSplit(await loadCsv(movielens, { user: 'userId', item: 'movieId', time: 'timestamp' })) : undefined;
if (only.includes('parity')) await parity(ml!);
if (only.includes('probe')) await probe();
if (only.includes('score')) await score();
if (only.includes('eval')) {
  await evalOn('ml-latest-small', ml!);
  if (!quick) await evalOn('online-retail', looSplit(await loadCsv(retail, PRESETS.retail)));
}
log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
