import * as tf from './tf.js';
import { ModelError, ValidationError } from '../errors.js';
import type { BackendName } from '../types.js';

export const BACKEND_ORDER: readonly BackendName[] = ['webgpu', 'webgl', 'wasm', 'cpu'];

export interface BackendChoice {
  backend: BackendName;
  /** `forced` or the probe's figures, e.g. `probed: webgpu 12.1 ms, wasm 3.2 ms, cpu 9.8 ms`. */
  reason: string;
  /** Milliseconds per probe run, per backend that initialized. */
  timings: Partial<Record<BackendName, number>>;
}

/** Sets a backend and waits until it is ready; false when it is not registered or fails to start. */
async function tryBackend(name: BackendName): Promise<boolean> {
  if (!tf.findBackendFactory(name)) return false;
  // Without a WebGPU adapter (most headless browsers, many GPUs) tfjs's own attempt logs a warning
  // with a stack trace on every page load: asked first, quietly.
  if (name === 'webgpu' && !(await hasWebGpuAdapter())) return false;
  try {
    return await tf.setBackend(name);
  } catch {
    return false;
  }
}

/** Whether the platform offers a WebGPU adapter at all. */
async function hasWebGpuAdapter(): Promise<boolean> {
  const gpu = (globalThis.navigator as { gpu?: { requestAdapter(): Promise<unknown> } } | undefined)?.gpu;
  if (!gpu) return false;
  try {
    return (await gpu.requestAdapter()) != null;
  } catch {
    return false;
  }
}

/**
 * The probe: scoring a mid-size catalog's table (10,000 × 32 unless told otherwise), then top-K,
 * read back. It is what `recommend()` does, so the fastest backend here is the fastest one for
 * the shopper's scoring (training is not timed).
 */
async function timeProbe(rows: number, dim: number, reps: number): Promise<number> {
  const V = tf.randomNormal([rows, dim]);
  const z = tf.randomNormal([dim, 1]);
  const run = async () => {
    const { values, indices } = tf.tidy(() => tf.topk(tf.reshape(tf.matMul(V, z), [rows]), 10));
    try {
      await values.data();
    } finally {
      tf.dispose([values, indices]);
    }
  };
  try {
    await run(); // warm-up: shader compilation, wasm instantiation
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await run();
    return (performance.now() - t0) / reps;
  } finally {
    tf.dispose([V, z]);
  }
}

export interface SelectOptions {
  /** Use this backend, no probing. */
  force?: BackendName;
  /** Candidates in order of preference; defaults to {@link BACKEND_ORDER}. */
  candidates?: readonly BackendName[];
  /** Shape of the probe; defaults to 10,000 × 32. */
  probeRows?: number;
  probeDim?: number;
}

/**
 * Picks the tfjs backend: the forced one if given, else every candidate that initializes is timed
 * on a small scoring probe and the fastest wins. Measured, not assumed: in headless Chromium WebGPU
 * may be SwiftShader (software) and slower than WASM.
 *
 * @example
 * ```ts
 * const { backend, reason } = await selectBackend({ candidates: ['wasm', 'cpu'] });
 * // backend: 'wasm', reason: 'probed: wasm 1.9 ms, cpu 6.3 ms'
 * ```
 */
export async function selectBackend(opts: SelectOptions = {}): Promise<BackendChoice> {
  if (opts.force !== undefined) {
    if (!BACKEND_ORDER.includes(opts.force)) {
      throw new ValidationError('options.backend', `must be one of ${BACKEND_ORDER.join(', ')}; got "${String(opts.force)}"`);
    }
    if (!(await tryBackend(opts.force))) throw new ModelError(`backend "${opts.force}" is not available here`);
    return { backend: opts.force, reason: 'forced', timings: {} };
  }
  const timings: Partial<Record<BackendName, number>> = {};
  for (const name of opts.candidates ?? BACKEND_ORDER) {
    if (!(await tryBackend(name))) continue;
    try {
      timings[name] = await timeProbe(opts.probeRows ?? 10_000, opts.probeDim ?? 32, 3);
    } catch {
      // A backend that starts but cannot run the probe is as good as absent.
    }
  }
  const ranked = (Object.entries(timings) as Array<[BackendName, number]>).sort((a, b) => a[1] - b[1]);
  if (ranked.length === 0) throw new ModelError('no TensorFlow.js backend could start (tried ' + (opts.candidates ?? BACKEND_ORDER).join(', ') + ')');
  const best = ranked[0]![0];
  await tf.setBackend(best);
  return { backend: best, reason: 'probed: ' + ranked.map(([n, ms]) => `${n} ${ms.toFixed(1)} ms`).join(', '), timings };
}
