import * as tf from './tf.js';
import { ModelError, ValidationError } from '../errors.js';
import type { BackendName } from '../types.js';

export const BACKEND_ORDER: readonly BackendName[] = ['webgpu', 'webgl', 'wasm', 'cpu'];

export interface BackendChoice {
  backend: BackendName;
  /**
   * `forced`, the probe's figures, e.g. `probed: webgpu 12.1 ms, wasm 3.2 ms, cpu 9.8 ms`, or an
   * earlier probe's, `remembered (probed 2026-11-30T10:00:00.000Z): …`.
   */
  reason: string;
  /** Milliseconds per probe run, per backend that initialized (empty unless probed now). */
  timings: Partial<Record<BackendName, number>>;
  /**
   * Whether the probe ran now and timed every candidate this platform offers (none failed to start:
   * the wasm files missing, say), so that its choice may stand for later page loads.
   */
  rememberable?: boolean;
}

/** An earlier probe's choice ({@link SelectOptions.remembered}). */
export interface RememberedBackend {
  backend: BackendName;
  /** That probe's reason. */
  reason: string;
  /** When it ran (ms since the epoch). */
  at: number;
}

const NOT_IN_BUILD = 'not in this build';
const NO_ADAPTER = 'no WebGPU adapter';
const NO_WEBGPU = 'not offered by this browser (no navigator.gpu)';
/** A backend whose file the worker could not load (not deployed beside it, say): in the probe's reason. */
export const BACKEND_NOT_LOADED = 'could not be loaded';

/**
 * Backends whose code is fetched only when one is tried: the browser worker registers the GPU
 * backends here (their code is 45 % of the worker's bytes), so that a device that scores on wasm
 * never downloads or parses them (src/engine/worker.ts).
 */
const loaders = new Map<BackendName, () => Promise<unknown>>();
/** Loads that failed, by backend, with why (tried once a session: a missing file stays missing). */
const loadFailures = new Map<BackendName, string>();

/**
 * Makes backend `name` available on demand: `load` (e.g. a dynamic import) runs the first time the
 * backend is tried and must register it with tfjs. A load that fails (the file not served, a
 * network error) leaves the backend out for this session, as one not in the build.
 */
export function registerBackendLoader(name: BackendName, load: () => Promise<unknown>): void {
  loaders.set(name, load);
  loadFailures.delete(name);
}

/** Loads backend `name`'s code when it is registered as a loader; a reason when it cannot be had. */
async function loadBackend(name: BackendName): Promise<true | string> {
  if (tf.findBackendFactory(name)) return true;
  const load = loaders.get(name);
  if (!load) return NOT_IN_BUILD;
  const failed = loadFailures.get(name);
  if (failed !== undefined) return failed;
  try {
    await load();
  } catch (e) {
    const why = `${BACKEND_NOT_LOADED} (${e instanceof Error ? e.message : String(e)})`;
    loadFailures.set(name, why);
    return why;
  }
  return tf.findBackendFactory(name) ? true : NOT_IN_BUILD;
}

/** Sets a backend and waits until it is ready; false when it is not registered or fails to start. */
async function tryBackend(name: BackendName): Promise<true | string> {
  if (name === 'webgpu') {
    // tfjs registers WebGPU only where navigator.gpu exists: say that it is the browser, not the build.
    if (!hasWebGpuApi()) return NO_WEBGPU;
    // Without a WebGPU adapter (most headless browsers, many GPUs) tfjs's own attempt logs a warning
    // with a stack trace on every page load: asked first, quietly, and before its code is fetched.
    if (!(await hasWebGpuAdapter())) return NO_ADAPTER;
  }
  const loaded = await loadBackend(name);
  if (loaded !== true) return loaded;
  // tfjs keeps an initialization's error to itself (a console warning): say what usually causes it.
  const failed = name === 'wasm' ? 'did not start (are the tfjs-backend-wasm*.wasm files served next to the worker, or at options.wasmPaths?)' : 'did not start';
  try {
    return (await tf.setBackend(name)) ? true : failed;
  } catch {
    return failed;
  }
}

/** Whether this browser has the WebGPU API (`navigator.gpu`). */
function hasWebGpuApi(): boolean {
  return (globalThis.navigator as { gpu?: unknown } | undefined)?.gpu != null;
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
 * The probe: scoring a catalog's table (by default 10,000 × 32; the engine passes its own catalog's
 * shape, of which at most {@link PROBE_MAX_ROWS} rows are timed), then top-K, read back. It is
 * what `recommend()` does, so the fastest backend here is the fastest one for the shopper's
 * scoring (training is not timed). Which backend wins depends on the size: on an NVIDIA H200
 * through Dawn, wasm scored 10,000 items in 0.4 ms and WebGPU in 3.0 ms, while at 1,000,000 items
 * WebGPU took 4.5 ms and wasm 34 ms (docs/BENCHMARKS.md, "On a real GPU").
 *
 * A backend that cannot win is cut short: after its first (warm-up) run when that alone took over
 * 20 times the best mean so far (the margin leaves room for a GPU's shader compilation), else once
 * its mean passes twice the best. A software GPU, or the CPU backend on a large catalog, costs one
 * run rather than four. `values` is the table, filled once for every backend.
 */
async function timeProbe(values: Float32Array, rows: number, dim: number, reps: number, fastest = Infinity): Promise<number> {
  const V = tf.tensor2d(values, [rows, dim]);
  const z = tf.tensor2d(values.subarray(0, dim), [dim, 1]);
  const k = Math.min(10, rows);
  const run = async () => {
    const { values: top, indices } = tf.tidy(() => tf.topk(tf.reshape(tf.matMul(V, z), [rows]), k));
    try {
      await Promise.all([top.data(), indices.data()]);
    } finally {
      tf.dispose([top, indices]);
    }
  };
  try {
    const w0 = performance.now();
    await run(); // warm-up: shader compilation, wasm instantiation
    const warm = performance.now() - w0;
    if (warm > 20 * fastest) return warm;
    const t0 = performance.now();
    let done = 0;
    while (done < reps) {
      await run();
      done++;
      if ((performance.now() - t0) / done > 2 * fastest) break;
    }
    return (performance.now() - t0) / done;
  } finally {
    tf.dispose([V, z]);
  }
}

/** A probe table: values in [−1, 1) from a small generator (cheap to fill at a million rows). */
function probeValues(n: number): Float32Array {
  const out = new Float32Array(n);
  let x = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x >>> 0) / 2147483648 - 1;
  }
  return out;
}

/**
 * Most rows the probe times; a larger catalog is timed on this many. The whole table would cost
 * rows × dim × 4 bytes in JS and as much again on each backend while it is timed (260 MB each at
 * 1,000,000 × 65); this is 1 MiB per dimension. Wasm's and the CPU's time grows with the rows, a
 * GPU's is mostly a fixed readback cost (about 2.5 ms on an H200, where it overtakes wasm at about
 * 100,000 items: docs/BENCHMARKS.md), so the ranking at this size is the ranking at any larger one,
 * except for a GPU whose fixed cost is over what wasm takes for these rows (≈ 9 ms at 33 columns,
 * by the benchmark's 33.6 ms per million at 32): it loses here, though it might have scored a
 * bigger catalog faster.
 */
export const PROBE_MAX_ROWS = 262_144;

/**
 * Disposes a backend the probe started but did not choose (its GPU context or device, its buffers,
 * a grown WASM heap), keeping it registered so that a later fallback can start it afresh. Only one
 * the probe itself started: tfjs's engine is one per realm, and in Node several engines may share
 * it, one of them scoring on a backend another's probe did not choose. Without
 * this a page that scores on wasm held a live WebGL context and WebGPU device for its whole life
 * (about 2.5 MB and 0.7 MB of GPU memory in headless Chromium: a review's measurement, stop 34).
 */
function releaseBackend(name: BackendName): void {
  const factory = tf.findBackendFactory(name);
  if (!factory || name === tf.getBackend()) return;
  // tfjs internals, not typed: the priority the backend registered with (read defensively).
  const registered = (tf.engine() as unknown as { registryFactory?: Record<string, { priority?: number } | undefined> }).registryFactory?.[name];
  const priority = typeof registered?.priority === 'number' ? registered.priority : 1;
  try {
    tf.removeBackend(name);
  } catch {
    // A backend that cannot dispose itself stays as it is.
  } finally {
    if (!tf.findBackendFactory(name)) tf.registerBackend(name, factory, priority);
  }
}

export interface SelectOptions {
  /** Use this backend, no probing. */
  force?: BackendName;
  /**
   * An earlier probe's choice on this device and catalog (the engine keeps one for a week): used
   * without probing when it is among the candidates and starts; otherwise the probe runs.
   */
  remembered?: RememberedBackend;
  /** Candidates in order of preference; defaults to {@link BACKEND_ORDER}. */
  candidates?: readonly BackendName[];
  /**
   * Shape of the probe; defaults to 10,000 × 32. The engine passes its catalog's: items × (dim + 1),
   * the shape `recommend()` multiplies. Rows past {@link PROBE_MAX_ROWS} are not timed.
   */
  probeRows?: number;
  probeDim?: number;
}

/**
 * Picks the tfjs backend: the forced one if given, else every candidate that initializes is timed
 * on a scoring probe and the fastest wins (on a tie, the earlier candidate). Measured, not assumed:
 * in headless Chromium WebGPU may be SwiftShader (software) and slower than WASM, and on a real GPU
 * WASM still wins on small catalogs. WASM is timed first where it is a candidate, so that it sets
 * the pace and a slow backend's probe is cut short.
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
    const started = await tryBackend(opts.force);
    if (started !== true) throw new ModelError(`backend "${opts.force}" is not available here: ${started}`);
    return { backend: opts.force, reason: 'forced', timings: {} };
  }
  const candidates = opts.candidates ?? BACKEND_ORDER;
  const r = opts.remembered;
  if (r !== undefined && candidates.includes(r.backend) && (await tryBackend(r.backend)) === true) {
    return { backend: r.backend, reason: `remembered (probed ${new Date(r.at).toISOString()}): ${r.reason}`, timings: {} };
  }
  const rows = opts.probeRows ?? 10_000;
  const dim = opts.probeDim ?? 32;
  if (!(Number.isInteger(rows) && rows >= 1)) throw new ValidationError('probeRows', `must be a whole number ≥ 1, got ${String(rows)}`);
  if (!(Number.isInteger(dim) && dim >= 1)) throw new ValidationError('probeDim', `must be a whole number ≥ 1, got ${String(dim)}`);
  const timings: Partial<Record<BackendName, number>> = {};
  const timed = Math.min(rows, PROBE_MAX_ROWS);
  const values = probeValues(timed * dim);
  let fastest = Infinity;
  // wasm first, where it is a candidate: it starts everywhere and is rarely far from the best, so
  // it sets the pace against which slower ones are cut short; then the order of preference.
  const order = candidates.includes('wasm') ? ['wasm' as const, ...candidates.filter((c) => c !== 'wasm')] : [...candidates];
  /** Candidates that could not be timed, and why (in the reason: a missing backend is news). */
  const missing: string[] = [];
  // Backends already started before this probe (another engine in this process scores on one)
  // are not this probe's to release.
  const running = new Set(Object.keys((tf.engine() as unknown as { registry?: Record<string, unknown> }).registry ?? {}));
  /** Whether every candidate this platform offers was timed (what a later page load may rely on). */
  let complete = true;
  const started: BackendName[] = [];
  for (const name of order) {
    const outcome = await tryBackend(name);
    if (outcome !== true) {
      missing.push(`${name} ${outcome}`);
      // A backend absent from this deployment (its file not served) is absent at the next page
      // load too: the choice may stand for a week, rather than every visit paying the whole probe
      // and a failed fetch again.
      if (outcome !== NOT_IN_BUILD && outcome !== NO_ADAPTER && outcome !== NO_WEBGPU && !outcome.startsWith(BACKEND_NOT_LOADED)) complete = false;
      continue;
    }
    started.push(name);
    try {
      const ms = await timeProbe(values, timed, dim, 3, fastest);
      timings[name] = ms;
      fastest = Math.min(fastest, ms);
    } catch {
      // A backend that starts but cannot run the probe is as good as absent.
      missing.push(`${name} could not run the probe`);
      complete = false;
    }
  }
  const ranked = (Object.entries(timings) as Array<[BackendName, number]>).sort((a, b) => a[1] - b[1] || candidates.indexOf(a[0]) - candidates.indexOf(b[0]));
  if (ranked.length === 0) throw new ModelError(`no TensorFlow.js backend could start: ${missing.join('; ')}`);
  const best = ranked[0]![0];
  await tf.setBackend(best);
  // The CPU backend holds nothing once the probe's tensors are gone; the others may hold a GPU.
  for (const name of started) if (name !== best && name !== 'cpu' && !running.has(name)) releaseBackend(name);
  const reason = 'probed: ' + ranked.map(([n, ms]) => `${n} ${ms.toFixed(1)} ms`).join(', ') + (missing.length ? `; ${missing.join('; ')}` : '');
  return { backend: best, reason, timings, rememberable: complete };
}
