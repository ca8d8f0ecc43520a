/**
 * The module Worker: registers the tfjs backends, builds the {@link Engine}, and exposes it to the
 * page through comlink. `track()` events arrive on a dedicated MessagePort so the page only pays
 * for a postMessage.
 */
import * as Comlink from 'comlink';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-webgl';
import '@tensorflow/tfjs-backend-webgpu';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { Engine, type EngineOptions } from './engine.js';
import type { Progress, RecommendOptions, SimilarOptions, TrainOptions } from '../types.js';
import { ClosedError } from '../errors.js';

// The .wasm binaries are copied next to this bundle by the build.
setWasmPaths(new URL('./', import.meta.url).href);

let engine: Engine | undefined;
let starting: Promise<Engine> | undefined;
/** Events that arrived before the engine was ready; the page may track() right away. */
let early: unknown[] = [];

function ready(): Engine {
  if (!engine) throw new ClosedError('the recommender has not started or is closed');
  return engine;
}

function onTrack(ev: MessageEvent): void {
  const events = Array.isArray(ev.data) ? ev.data : [ev.data];
  if (!engine) {
    early.push(...events);
    return;
  }
  try {
    engine.enqueue(events);
  } catch {
    // Rejected events were already refused on the page; the count is in stats().dropped.
  }
}

export const workerApi = {
  async init(options: Omit<EngineOptions, 'store' | 'now'>, trackPort: MessagePort): Promise<void> {
    trackPort.onmessage = onTrack;
    starting ??= Engine.create(options);
    engine = await starting;
    const pending = early;
    early = [];
    if (pending.length) {
      try {
        engine.enqueue(pending);
      } catch {
        // counted in stats().dropped
      }
    }
  },
  recommend: (o?: RecommendOptions) => ready().recommend(o),
  similar: (id: string, o?: SimilarOptions) => ready().similar(id, o),
  async train(o: Omit<TrainOptions, 'onProgress'> = {}, onProgress?: (p: Progress) => unknown) {
    // Progress goes over the callback proxy's own port, not the one the result uses. Awaiting the
    // last call before returning means the page has seen every report when train() resolves.
    let last: unknown;
    const result = await ready().train({ ...o, onProgress: onProgress ? (p) => void (last = onProgress(p)) : undefined });
    await last;
    return result;
  },
  stats: () => ready().stats(),
  flush: () => ready().flush(),
  async close(): Promise<void> {
    await engine?.close();
    engine = undefined;
    starting = undefined;
  },
  async erase(): Promise<void> {
    await ready().erase();
    engine = undefined;
    starting = undefined;
  },
};
export type WorkerApi = typeof workerApi;

Comlink.expose(workerApi);
