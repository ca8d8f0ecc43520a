/**
 * The module Worker: registers the tfjs backends, builds the {@link Engine}, and exposes it to the
 * page through comlink. `track()` events arrive on a dedicated MessagePort so the page only pays
 * for a postMessage.
 */
import * as Comlink from 'comlink';
import '@tensorflow/tfjs-backend-cpu';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import * as gpuCore from './gpu-core.js';
import { registerBackendLoader } from '../model/backend.js';
import { Engine, type EngineOptions } from './engine.js';
import * as tf from '../model/tf.js';
import type { ItemTable } from '../model/item-table.js';
import type { Progress, RecommendOptions, SimilarOptions, SyncProgress, TrackEvent, TrainOptions } from '../types.js';
import { ClosedError, ModelError, errorDetails } from '../errors.js';
import { missingFeatures, unsupportedMessage } from './platform.js';
import { GPU_CORE_GLOBAL } from './gpu-core-global.js';
import type { OffersOptions } from '../offers/types.js';

// Comlink sends a thrown error to the page as its name, message and stack; the page copies every
// field it receives onto the Error it throws there. localrec's errors carry more (a ValidationError's
// `field`, a NetworkError's HTTP `status`, a SignatureError's `problem`): add them, so that the
// page's reviveError() rebuilds them whole.
const builtinThrow = Comlink.transferHandlers.get('throw')!;
Comlink.transferHandlers.set('throw', {
  canHandle: builtinThrow.canHandle,
  serialize(thrown: unknown) {
    const [wire, transfer] = builtinThrow.serialize(thrown) as [{ isError: boolean; value: Record<string, unknown> }, Transferable[]];
    if (wire.isError) Object.assign(wire.value, errorDetails((thrown as { value: unknown }).value));
    return [wire, transfer];
  },
  deserialize: builtinThrow.deserialize,
});

// The .wasm binaries are copied next to this bundle by the build. The folder is cut from the URL by
// hand: a bundler's dev server (Vite) rewrites `new URL('./', import.meta.url)` to the package's
// main file, which would send the .wasm requests to index.js's URL.
// (Without the query or fragment: a `?src=/a/b` would otherwise move the folder into the query.)
const ownUrl = import.meta.url.split(/[?#]/)[0]!;
const folder = ownUrl.slice(0, ownUrl.lastIndexOf('/') + 1);
setWasmPaths(folder);
/** options.wasmPaths, when the page gave it: where the GPU files are looked for too when they are not beside this one. */
let companionFolder: string | undefined;
// The GPU backends are separate files beside this one (dist/worker-webgl.js, worker-webgpu.js),
// fetched only when the probe tries them (or the remembered choice is one): a device that scores
// on wasm or the CPU never downloads or parses them. They are not modules of this bundle but
// scripts that take tfjs-core from the global below (the exports they use, listed by the build),
// so that they share this worker's one tfjs engine whatever URL (a ?v= query…) loaded it. A file
// that is missing only leaves its backend out (rollup.config.ts, gpuBackendFiles).
Object.defineProperty(globalThis, GPU_CORE_GLOBAL, { value: gpuCore, enumerable: false });
// A bundler that emits this worker as a hashed asset (webpack, Vite's build) leaves them behind:
// then they are looked for in options.wasmPaths's folder too, where the README has them copied
// with the .wasm files. The comments (kept by the build's minifier) tell a bundler that bundles
// this worker again to leave these imports to the browser.
async function loadGpuFile(file: string): Promise<void> {
  try {
    await import(/* webpackIgnore: true */ /* @vite-ignore */ `${folder}${file}`);
  } catch (e) {
    if (companionFolder === undefined || companionFolder === folder) throw e;
    await import(/* webpackIgnore: true */ /* @vite-ignore */ `${companionFolder}${file}`);
  }
}
registerBackendLoader('webgl', () => loadGpuFile('worker-webgl.js'));
registerBackendLoader('webgpu', () => loadGpuFile('worker-webgpu.js'));
// In a cross-origin isolated page tfjs would pick its threaded WASM build, which starts its own
// workers from the source text of a function in this bundle; minified, that text names variables of
// the surrounding bundle, so those workers fail ("t is not defined") and take the recommender down
// with them. The single-threaded builds run everywhere.
tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false);

// Test-only, not part of the API (test/browser/sdk.test.ts, "a backend lost at run time"): loses the GPU backend in use
// for real (WebGL: WEBGL_lose_context; WebGPU: device.destroy()), to check that the engine moves
// to another. Reachable only from inside this worker's own scope (a debugger, a test driver's
// worker.evaluate), never from the page, which talks to the worker only through workerApi.
Object.defineProperty(globalThis, '__localrecLoseBackend', {
  value: (): string => {
    const b = tf.backend() as unknown as { gpgpu?: { gl?: WebGL2RenderingContext }; device?: { destroy(): void } };
    const gl = b.gpgpu?.gl;
    if (gl) {
      gl.getExtension('WEBGL_lose_context')?.loseContext();
      return 'webgl';
    }
    if (b.device) {
      b.device.destroy();
      return 'webgpu';
    }
    return 'none';
  },
  enumerable: false,
});

let engine: Engine | undefined;
let starting: Promise<Engine> | undefined;
/** Events that arrived before the engine was ready; the page may track() right away. */
let early: unknown[] = [];
/** The item table uploaded by {@link workerApi.benchRawScore}, kept resident as the Scorer keeps its own. */
let rawBench: { table: ItemTable; V: tf.Tensor2D } | undefined;

function ready(): Engine {
  if (!engine) throw new ClosedError('the recommender has not started or is closed');
  return engine;
}

/** The page's sync and train calls in the worker, by the id the page gave them, with their cancel switches. */
const syncCalls = new Map<number, AbortController>();
const trainCalls = new Map<number, AbortController>();

/**
 * Runs `f` with a signal that {@link abortCall} fires while `f` runs, under the page's `callId`: an
 * AbortSignal cannot cross postMessage, so the page sends the call's id instead.
 */
async function withCallSignal<T>(calls: Map<number, AbortController>, callId: number | undefined, f: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const abort = new AbortController();
  if (callId !== undefined) calls.set(callId, abort);
  try {
    return await f(abort.signal);
  } finally {
    if (callId !== undefined) calls.delete(callId);
  }
}

/** Fires the signal of call `callId` (see {@link withCallSignal}); false when that call is over. */
function abortCall(calls: Map<number, AbortController>, callId: number): boolean {
  const abort = calls.get(callId);
  abort?.abort();
  return abort !== undefined;
}

/** Highest track batch number received, and calls waiting for a batch that is still in flight. */
let received = 0;
let waiting: Array<{ seq: number; resolve: () => void }> = [];

function onTrack(ev: MessageEvent): void {
  // The page's liveness check (createRecommender's workerTimeoutMs): answered at once.
  if (typeof (ev.data as { ping?: unknown }).ping === 'number') {
    (ev.target as MessagePort).postMessage({ pong: (ev.data as { ping: number }).ping });
    return;
  }
  const { seq, events, flush } = ev.data as { seq: number; events: unknown[]; flush?: boolean };
  received = Math.max(received, seq);
  waiting = waiting.filter((w) => (w.seq <= received ? (w.resolve(), false) : true));
  if (!engine) {
    early.push(...events);
    return;
  }
  try {
    engine.enqueue(events as TrackEvent[]);
  } catch {
    // The page refused (and counted) the invalid ones before posting; what the engine still refuses
    // (an event that passed the page's age check a moment ago) it counts itself: both in stats().dropped.
  }
  // The page is being hidden or unloaded: write now rather than after the batching delay. A failed
  // write keeps the events queued for the next one, as the delayed write would.
  if (flush) void engine.flush().catch(() => undefined);
}

export const workerApi = {
  /** `wasmPaths`: the folder serving the .wasm files when they are not next to this bundle (options.wasmPaths). */
  async init(options: Omit<EngineOptions, 'store' | 'now'>, trackPort: MessagePort, wasmPaths?: string): Promise<void> {
    const missing = missingFeatures();
    if (missing.length) throw new ModelError(unsupportedMessage(missing));
    trackPort.onmessage = onTrack;
    if (wasmPaths !== undefined && !starting) {
      setWasmPaths(wasmPaths);
      companionFolder = wasmPaths;
    }
    // The page's consent gate follows this engine's consent, told over the (ordered) track port.
    starting ??= Engine.create({ ...options, onConsent: (consent, v) => trackPort.postMessage({ consent, v }) });
    engine = await starting;
    const pending = early;
    early = [];
    if (pending.length) {
      try {
        engine.enqueue(pending as TrackEvent[]);
      } catch {
        // counted in stats().dropped
      }
    }
  },
  /**
   * Resolves once track batch `seq` has arrived. Track batches travel on their own MessagePort,
   * and the order of messages across two ports is not guaranteed, so the page calls this before a
   * call that must see the events it tracked.
   */
  barrier(seq: number): Promise<void> {
    if (received >= seq) return Promise.resolve();
    return new Promise((resolve) => waiting.push({ seq, resolve }));
  },
  recommend: (o?: RecommendOptions) => ready().recommend(o),
  similar: (id: string, o?: SimilarOptions) => ready().similar(id, o),
  async train(o: Omit<TrainOptions, 'onProgress' | 'signal'> = {}, onProgress?: (p: Progress) => unknown, callId?: number) {
    // Progress goes over the callback proxy's own port, not the one the result uses. Awaiting the
    // last call before returning means the page has seen every report when train() resolves.
    let last: unknown;
    try {
      // The page's signal (only when it gave one: cancelTrain(callId)).
      return await withCallSignal(trainCalls, callId, (signal) =>
        // Each report's rejection (a page callback that threw) is handled at once, not only the last.
        ready().train({
          ...o,
          ...(onProgress ? { onProgress: (p: Progress) => void (last = Promise.resolve(onProgress(p)).catch(() => undefined)) } : {}),
          ...(callId !== undefined ? { signal } : {}),
        }),
      );
    } finally {
      // A page callback that threw does not fail the run (its weights are saved): as the engine.
      await Promise.resolve(last).catch(() => undefined);
    }
  },
  /** The page's AbortSignal for train call `callId` fired: the run it started or joined stops (as an engine signal does). */
  cancelTrain(callId: number): boolean {
    return abortCall(trainCalls, callId);
  },
  stats: () => ready().stats(),
  async sync(onProgress?: (p: SyncProgress) => unknown, contribute?: boolean, callId?: number) {
    // As train(): every progress report has reached the page when sync() resolves.
    let last: unknown;
    try {
      // The page's signal arrives as cancelSync(callId).
      return await withCallSignal(syncCalls, callId, (signal) =>
        ready().sync({
          ...(onProgress ? { onProgress: (p: SyncProgress) => void (last = Promise.resolve(onProgress(p)).catch(() => undefined)) } : {}),
          ...(contribute !== undefined ? { contribute } : {}),
          signal,
        }),
      );
    } finally {
      await Promise.resolve(last).catch(() => undefined);
    }
  },
  /**
   * The page's AbortSignal for sync call `callId` fired: that call is cancelled (and with it the sync
   * it runs or joined, for every caller, as an engine signal does). Without an id (close(), erase()):
   * every sync, waiting calls included; `dropOut` (erase()): a device whose cohort has filled drops
   * out rather than upload (Engine.cancelSync).
   */
  cancelSync(callId?: number, dropOut = false): boolean {
    if (callId === undefined) {
      ready().cancelAllSyncs(dropOut);
      return true;
    }
    return abortCall(syncCalls, callId);
  },
  /**
   * The page's close() or erase() has begun: the training run under way stops at its next step,
   * saving nothing (its train() calls reject with an AbortError), and no other starts, so that the
   * page, which lets its calls in flight finish first, is not held for a run of many epochs.
   */
  stopTraining(by: 'close' | 'erase'): void {
    engine?.stopTraining(by === 'close' ? 'close()' : 'erase()');
  },
  async setConsent(c: { personalization?: boolean; federated?: boolean }) {
    await ready().setConsent(c);
    return ready().consentState();
  },
  audit: () => ready().audit(),
  setOffers: (signed: unknown) => ready().setOffers(signed),
  setNeighbors: (data: ArrayBuffer | ArrayBufferView) => ready().setNeighbors(data),
  offers: (o?: OffersOptions) => ready().offers(o),
  exportData: () => ready().exportData(),
  egressLog: () => ready().egressLog(),
  /**
   * Benchmark hook for `npm run bench` (bench/browser-bench.ts); not part of the public API and not
   * reachable through `createRecommender()`. The baseline `recommend()` is compared with: raw tfjs
   * on the engine's own item table and backend, no SDK code in between. The table is uploaded once
   * and kept on the backend (as the Scorer does); each rep is `matMul(V, z)` with a fixed random user
   * vector, `topk(k)`, and values and indices read back. Returns each rep's wall time in ms, measured
   * inside the worker (after one untimed warm-up when `warmup`).
   */
  async benchRawScore(k = 10, reps = 1, warmup = true): Promise<{ backend: string; rows: number; dim: number; ms: number[] }> {
    const table = ready().itemTable();
    const n = table.itemIds.length;
    const d = table.dim;
    if (rawBench?.table !== table) {
      rawBench?.V.dispose();
      rawBench = { table, V: tf.tensor2d(table.factors, [n, d]) };
    }
    const V = rawBench.V;
    const zv = new Float32Array(d).map((_, i) => Math.sin(i + 1));
    const run = async () => {
      const { values, indices } = tf.tidy(() => tf.topk(tf.reshape(tf.matMul(V, tf.tensor2d(zv, [d, 1])), [n]), Math.min(k, n)));
      await Promise.all([values.data(), indices.data()]);
      tf.dispose([values, indices]);
    };
    if (warmup) await run();
    const ms: number[] = [];
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      await run();
      ms.push(performance.now() - t0);
    }
    return { backend: tf.getBackend(), rows: n, dim: d, ms };
  },
  flush: () => ready().flush(),
  async close(): Promise<void> {
    rawBench?.V.dispose();
    rawBench = undefined;
    try {
      await engine?.close();
    } finally {
      // A close that reports a lost last write has still released everything.
      engine = undefined;
      starting = undefined;
    }
  },
  async erase(): Promise<void> {
    await ready().erase();
    engine = undefined;
    starting = undefined;
  },
};
export type WorkerApi = typeof workerApi;

Comlink.expose(workerApi);
