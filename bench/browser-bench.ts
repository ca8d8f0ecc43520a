/**
 * `npm run bench`: localrec in real Chromium (Debian's /usr/bin/chromium through playwright-core),
 * per tfjs backend. Prints one JSON object per measurement on stdout (JSON lines); progress goes to
 * stderr. A benchmark, not a test: nothing here asserts a time. Figures and targets: docs/BENCHMARKS.md.
 *
 *   npm run bench                         # everything, all backends (a few minutes on 2 cores)
 *   npm run bench -- --backends wasm,cpu  # a subset
 *   npm run bench -- --only track,bundle  # some measurements: bundle, track, train, recommend
 *   npm run bench -- --quick              # smaller sizes, for trying the script out
 *   npm run bench -- --build              # rebuild dist/ first (otherwise only when it is missing)
 *
 * Measures the built bundles in dist/: it builds them when they are missing or lack the
 * benchmark hook, and warns (without rebuilding) when src/ is newer than dist/.
 */
import { execSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, constants as zc, gzipSync } from 'node:zlib';
import type { Browser, Page } from 'playwright-core';
import { launch, openPage } from '../test/browser/harness.js';
import { loadRetail, sizedCatalog, storeEvents, typicalShopper } from './data.js';
import { serveBench } from './server.js';
import { encodeNeighborTable } from '../src/model/neighbors-wire.js';
import { Random } from '../src/model/random.js';

/**
 * A neighbour table for a bench catalog: 32 random neighbours per item with positive weights, the
 * shape `localrec neighbors` publishes. Written under dist/ (served, ignored by git).
 */
function benchNeighborFile(ids: string[]): string {
  const width = 32;
  const n = ids.length;
  const rng = new Random(7);
  const index = new Int32Array(n * width);
  const weight = new Float32Array(n * width);
  for (let i = 0; i < n; i++) {
    for (let s = 0; s < width; s++) {
      let j = Math.floor(rng.next() * (n - 1));
      if (j >= i) j++;
      index[i * width + s] = j;
      weight[i * width + s] = 0.01 + rng.next();
    }
  }
  const path = `dist/bench-neighbors-${n}.lrn`;
  writeFileSync(path, encodeNeighborTable({ itemIds: ids, width, index, weight }));
  return `/${path}`;
}

type Backend = 'wasm' | 'cpu' | 'webgl' | 'webgpu';
const ALL: Backend[] = ['wasm', 'cpu', 'webgl', 'webgpu'];

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(`--${name}`);
const opt = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const quick = flag('quick');
const backends = (opt('backends')?.split(',') ?? ALL) as Backend[];
for (const b of backends) if (!ALL.includes(b)) throw new Error(`unknown backend ${b}; use ${ALL.join(',')}`);

const PARTS = ['bundle', 'track', 'train', 'recommend'] as const;
const only = opt('only')?.split(',') ?? [...PARTS];
for (const p of only) if (!(PARTS as readonly string[]).includes(p)) throw new Error(`unknown part ${p}; use ${PARTS.join(',')}`);
const want = (p: (typeof PARTS)[number]) => only.includes(p);

const TRACK_CALLS = quick ? 1000 : 5000;
const TRAIN_SIZES = quick ? [1000] : [1000, 10_000];
const CATALOG_SIZES = quick ? [10_000] : [10_000, 100_000];
const K = 10;
/** Per-phase limit, so that one hung backend does not stall the run. */
const PHASE_TIMEOUT_MS = Number(opt('phase-timeout-s') ?? 240) * 1000;

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const round = (o: unknown): unknown =>
  typeof o === 'number' ? r3(o) : Array.isArray(o) ? o.map(round) : o && typeof o === 'object' ? Object.fromEntries(Object.entries(o).map(([k, v]) => [k, round(v)])) : o;

function newestMtime(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return t;
}

function ensureBuilt(): void {
  const missing = ['dist/index.js', 'dist/worker.js', 'dist/worker-webgl.js', 'dist/worker-webgpu.js'].some((f) => !existsSync(f));
  const noHook = !missing && !readFileSync('dist/worker.js', 'utf8').includes('benchRawScore');
  if (flag('build') || missing || noHook) {
    log(`building dist/ (${missing ? 'missing' : noHook ? 'worker bundle lacks the benchRawScore hook' : '--build'}) …`);
    execSync('npm run build', { stdio: ['ignore', process.stderr, process.stderr] });
    return;
  }
  const lag = newestMtime('src') - Math.min(statSync('dist/index.js').mtimeMs, statSync('dist/worker.js').mtimeMs);
  if (lag > 0) log(`warning: src/ is newer than dist/ by ${(lag / 1000).toFixed(0)} s; measuring dist/ as built (pass --build to rebuild)`);
}

function bundleSizes(): Record<string, unknown> {
  const size = (f: string) => {
    const b = readFileSync(f);
    return {
      file: f,
      bytes: b.length,
      gzip: gzipSync(b, { level: 9 }).length,
      brotli: brotliCompressSync(b, { params: { [zc.BROTLI_PARAM_QUALITY]: 11 } }).length,
    };
  };
  const wasm = readdirSync('dist').filter((f) => f.endsWith('.wasm')).map((f) => size(join('dist', f)));
  // dist/index.js is already minified by the build (terser); sizes are of the file as shipped.
  // The GPU backends' files, fetched only when the worker tries one (src/engine/worker.ts).
  const gpuBackends = ['dist/worker-webgl.js', 'dist/worker-webgpu.js'].map(size);
  return { index: size('dist/index.js'), worker: size('dist/worker.js'), gpuBackends, wasm };
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result after ${PHASE_TIMEOUT_MS / 1000} s`)), PHASE_TIMEOUT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function main(): Promise<void> {
  const started = Date.now();
  ensureBuilt();
  log('loading retail data …');
  const data = loadRetail();
  const now = Date.now();
  const server = await serveBench();
  const browser: Browser = await launch();
  const version = browser.version();
  log(`Chromium ${version}, serving ${server.url}`);
  const meta = { chromium: version, cpus: (await import('node:os')).cpus().length, node: process.version };

  // A fresh page per phase: a failed or slow backend leaves nothing behind for the next one.
  const phase = async <T>(what: string, isolated: boolean, fn: (page: Page) => Promise<T>): Promise<T | { error: string }> => {
    const page = await openPage(browser, `${server.url}/bench/pages/bench.html${isolated ? '?coi=1' : ''}`);
    try {
      await page.waitForFunction(() => (window as any).ready === true);
      return await withTimeout(fn(page), what);
    } catch (e) {
      const msg = (e as Error).message.split('\n')[0]!;
      log(`${what}: FAILED: ${msg}`);
      return { error: msg };
    } finally {
      await page.close().catch(() => undefined);
    }
  };

  try {
    // 1. Bundle sizes.
    if (want('bundle')) {
      const sizes = bundleSizes() as any;
      emit({ name: 'bundle', backend: null, ...sizes, target: { indexGzipBytes: 10 * 1024 }, meetsTarget: sizes.index.gzip <= 10 * 1024 });
      log(`bundle: index.js ${sizes.index.gzip} B gzip, worker.js ${sizes.worker.gzip} B gzip, GPU backends ${sizes.gpuBackends.map((g: any) => `${g.file.slice(5)} ${g.gzip} B`).join(', ')} gzip`);
    }

    // 2. Does the long-task observer see long tasks here at all? (Positive control for 4.)
    if (want('train')) {
      const control = await phase('longtask-control', false, (p) => p.evaluate(() => (window as any).checkLongTaskObserver()));
      emit({ name: 'longtask-observer-check', backend: null, busyLoopMs: 80, observed: control });
    }

    // 3. track(): main-thread cost. The page is cross-origin isolated so performance.now() has
    //    5 µs resolution instead of 100 µs; the backend does not matter for the main thread.
    const catalog = data.catalog;
    const trackEvents = storeEvents(data, 1000, now).events;
    if (want('track')) {
      log(`track(): ${TRACK_CALLS} calls …`);
      const tr: any = await phase('track', true, (p) =>
        p.evaluate((a) => (window as any).benchTrack(a), { catalog, events: trackEvents, backend: 'cpu', calls: TRACK_CALLS, warmup: 500 }),
      );
      emit(
        round({
          name: 'track',
          backend: null,
          calls: TRACK_CALLS,
          ...(tr.error ? tr : { p50Ms: tr.perCall.p50, p99Ms: tr.perCall.p99, maxMs: tr.perCall.max, ...tr }),
          target: { p99Ms: 0.1 },
          ...(tr.error ? {} : { meetsTarget: tr.perCall.p99 < 0.1 }),
        }) as Record<string, unknown>,
      );
    }

    const shopper = typicalShopper(data, now);
    for (const backend of backends) {
      // 4. train() over a store holding N events, long tasks on the page observed meanwhile.
      for (const n of want('train') ? TRAIN_SIZES : []) {
        const s = storeEvents(data, n, now);
        log(`${backend}: train() over ${n} events (customer ${s.customer}, ${s.distinctItems} items) …`);
        const r: any = await phase(`train ${backend} ${n}`, false, (p) =>
          p.evaluate((a) => (window as any).benchTrain(a), { catalog, events: s.events, backend, epochs: 4 }),
        );
        emit(
          round({
            name: 'train',
            backend,
            events: n,
            catalogItems: catalog.length,
            customer: s.customer,
            distinctItems: s.distinctItems,
            epochs: 4,
            ...(r.error
              ? r
              : {
                  wallMs: r.wallMs,
                  workerMs: r.result.ms,
                  steps: r.result.steps,
                  examples: r.result.examples,
                  firstLoss: r.result.firstLoss,
                  lastLoss: r.result.lastLoss,
                  ingestMs: r.ingestMs,
                  stored: r.stored,
                  progressCalls: r.progressCalls,
                  longTasksDuringTrain: r.longTasks,
                  meetsTarget: r.longTasks.maxMs <= 50,
                }),
            target: { longestMainThreadTaskMs: 50 },
          }) as Record<string, unknown>,
        );
        if (!r.error) log(`${backend}: train ${n}: ${r.wallMs.toFixed(0)} ms, longest main-thread task ${r.longTasks.maxMs.toFixed(0)} ms`);
      }
      // 5. recommend() vs raw tfjs matMul+topk on the same table, same worker, same backend.
      for (const items of want('recommend') ? CATALOG_SIZES : []) {
        log(`${backend}: recommend() on ${items} items …`);
        const cat = sizedCatalog(data, items);
        const slow = backend === 'webgpu' || backend === 'webgl';
        const r: any = await phase(`recommend ${backend} ${items}`, false, (p) =>
          p.evaluate((a) => (window as any).benchRecommend(a), {
            catalog: cat,
            history: shopper.events,
            neighborsUrl: benchNeighborFile(cat.map((c) => c.id)),
            backend,
            k: K,
            minReps: slow ? 3 : 5,
            maxReps: quick ? 10 : 40,
            budgetMs: slow ? 8000 : 5000,
          }),
        );
        emit(
          round({
            name: 'recommend',
            backend,
            items,
            k: K,
            ...(r.error
              ? r
              : {
                  dim: r.dim,
                  historyEvents: shopper.events.length,
                  historyItems: r.historyItems,
                  reps: r.recommend.n,
                  p50Ms: r.recommend.p50,
                  p90Ms: r.recommend.p90,
                  minMs: r.recommend.min,
                  baseline: { what: 'raw tfjs matMul+topk, same table, same worker, timed in the worker', p50Ms: r.raw.p50, p90Ms: r.raw.p90, minMs: r.raw.min },
                  baselineRoundTrip: { what: 'the same, timed on the page (adds one comlink round trip)', p50Ms: r.rawRoundTrip.p50 },
                  ratio: r.recommend.p50 / r.raw.p50,
                  ratioToRoundTrip: r.recommend.p50 / r.rawRoundTrip.p50,
                  meetsTarget: r.recommend.p50 / r.raw.p50 <= 1.5,
                  withNeighbors: {
                    what: 'recommend() with a 32-neighbour table loaded (setNeighbors), interleaved with the same raw baseline',
                    p50Ms: r.withNeighbors.p50,
                    p90Ms: r.withNeighbors.p90,
                    rawP50Ms: r.withNeighborsRaw.p50,
                    ratio: r.withNeighbors.p50 / r.withNeighborsRaw.p50,
                    setNeighborsMs: r.setNeighborsMs,
                  },
                  firstRecommendMs: r.firstRecommendMs,
                  initMs: r.initMs,
                  initLongTasks: r.initLongTasks,
                  sdkBackend: r.sdkBackend,
                  rawBackend: r.rawBackend,
                }),
            target: { ratio: 1.5 },
          }) as Record<string, unknown>,
        );
        if (!r.error) log(`${backend}: recommend ${items}: ${r.recommend.p50.toFixed(2)} ms vs raw ${r.raw.p50.toFixed(2)} ms (×${(r.recommend.p50 / r.raw.p50).toFixed(2)}); with neighbours ${r.withNeighbors.p50.toFixed(2)} ms (×${(r.withNeighbors.p50 / r.withNeighborsRaw.p50).toFixed(2)})`);
      }
    }
    emit({ name: 'run', backend: null, ...meta, quick, only, backends, seconds: Math.round((Date.now() - started) / 1000) });
  } finally {
    await browser.close();
    await server.close();
  }
  log(`done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

main().catch((e) => {
  process.stderr.write(`[bench] ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
