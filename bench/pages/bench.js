// The in-page half of `npm run bench` (bench/browser-bench.ts drives it through playwright).
// Plain JS, served as is: it loads the built SDK (/dist/index.js) exactly as a shop page would.
import * as localrec from '/dist/index.js';

// The SDK owns its worker privately. To reach the benchmark-only hook `benchRawScore` in the same
// worker (same tfjs instance, same backend, same item table), remember every Worker the page
// creates and send it one comlink APPLY message by hand (see callWorker).
const workers = [];
const NativeWorker = window.Worker;
window.Worker = class extends NativeWorker {
  constructor(url, opts) {
    super(url, opts);
    workers.push(this);
  }
};

// Every long task on this page (main thread) since load; the worker's tasks are not main-thread tasks.
const longTasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) longTasks.push({ start: e.startTime, ms: e.duration });
}).observe({ type: 'longtask', buffered: true });

// Long animation frames name the scripts that ran in them, which says whether a long task was the
// SDK's (its bundle, its message handlers) or something else (the driver's evaluate, GC, …).
const loafs = [];
try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      loafs.push({
        start: e.startTime,
        ms: e.duration,
        blockingMs: e.blockingDuration,
        scripts: e.scripts.map((s) => ({ ms: Math.round(s.duration), invoker: s.invoker, source: `${s.sourceURL.replace(location.origin, '')}${s.sourceFunctionName ? ` ${s.sourceFunctionName}` : ''}` })),
      });
    }
  }).observe({ type: 'long-animation-frame', buffered: true });
} catch {
  // Not supported: long tasks are still counted, without attribution.
}

function longTasksIn(t0, t1) {
  const hit = longTasks.filter((t) => t.start + t.ms >= t0 && t.start <= t1);
  const frames = loafs.filter((t) => t.start + t.ms >= t0 && t.start <= t1 && t.blockingMs > 0);
  return {
    count: hit.length,
    maxMs: hit.reduce((m, t) => Math.max(m, t.ms), 0),
    totalMs: hit.reduce((s, t) => s + t.ms, 0),
    tasks: hit.map((t) => ({ atMs: Math.round(t.start - t0), ms: t.ms })),
    scripts: frames.flatMap((f) => f.scripts.filter((s) => s.ms >= 5)),
  };
}

/** Progress lines, only when the driver sets `window.benchDebug`. */
const dbg = (...a) => window.benchDebug && console.log('[bench-page]', performance.now().toFixed(0), ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Long-task entries are delivered after the task; give the observer a moment. */
const settle = () => sleep(300);

function summary(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
  return { n: s.length, min: s[0], p50: q(0.5), p90: q(0.9), p99: q(0.99), max: s[s.length - 1], mean: s.reduce((a, b) => a + b, 0) / s.length };
}

/** The smallest step performance.now() takes here (100 µs unless the page is cross-origin isolated). */
function timerResolution() {
  let best = Infinity;
  for (let i = 0; i < 200; i++) {
    const a = performance.now();
    let b = a;
    while (b === a) b = performance.now();
    best = Math.min(best, b - a);
  }
  return best;
}

/**
 * Calls a method the worker exposes, speaking comlink's wire format directly: `{ id, type: 'APPLY',
 * path, argumentList }` in, `{ id, type: 'RAW', value }` (or a `throw` HANDLER) out. The SDK's own
 * comlink proxy ignores replies with ids it did not send. Not `Comlink.wrap()`: a second proxy on
 * the same worker would send comlink's RELEASE message when released or garbage-collected, and the
 * worker would then stop answering the SDK too.
 */
function callWorker(worker, method, ...args) {
  const id = `bench-${Math.random().toString(36).slice(2)}-${performance.now()}`;
  return new Promise((resolve, reject) => {
    const onMessage = (ev) => {
      if (!ev.data || ev.data.id !== id) return;
      worker.removeEventListener('message', onMessage);
      if (ev.data.type === 'HANDLER' && ev.data.name === 'throw') {
        const v = ev.data.value;
        reject(Object.assign(new Error(v.isError ? v.value.message : String(v.value)), { name: v.isError ? v.value.name : 'Error' }));
      } else resolve(ev.data.value);
    };
    worker.addEventListener('message', onMessage);
    worker.postMessage({ id, type: 'APPLY', path: [method], argumentList: args.map((value) => ({ type: 'RAW', value })) });
  });
}

function apiOfLastWorker() {
  const w = workers[workers.length - 1];
  return { benchRawScore: (k, reps, warmup) => callWorker(w, 'benchRawScore', k, reps, warmup) };
}

async function open(catalog, backend, dbName, extra = {}) {
  // A previous run may have left the database behind when it failed half way.
  await new Promise((r) => {
    const q = indexedDB.deleteDatabase(dbName);
    q.onsuccess = q.onerror = q.onblocked = () => r();
  });
  const t0 = performance.now();
  const rec = await localrec.createRecommender({ catalog: { items: catalog }, backend, dbName, autoTrainEvery: 0, ...extra });
  const t1 = performance.now();
  await settle();
  return { rec, initMs: t1 - t0, initLongTasks: longTasksIn(t0, t1) };
}

/**
 * Checks that long tasks are observed at all here: an 80 ms busy loop in a task of the page's own
 * (a timer; code run by the driver's evaluate call is not reported as a task) must show up.
 */
window.checkLongTaskObserver = async () => {
  const t0 = performance.now();
  await new Promise((r) =>
    setTimeout(() => {
      const s = performance.now();
      while (performance.now() - s < 80);
      r();
    }, 0),
  );
  const t1 = performance.now();
  await settle();
  return longTasksIn(t0, t1);
};

/** Main-thread cost of rec.track(): `calls` timed one by one, then the same number in a tight loop. */
window.benchTrack = async ({ catalog, events, backend, calls, warmup }) => {
  const { rec } = await open(catalog, backend, `bench-track-${backend}`, { retention: { maxEvents: 100_000 } });
  // Without `t`: the SDK stamps the time, as on a live page.
  const ev = (i) => {
    const { t: _t, ...e } = events[i % events.length];
    return e;
  };
  const prepared = Array.from({ length: warmup + 2 * calls }, (_, i) => ev(i));
  for (let i = 0; i < warmup; i++) rec.track(prepared[i]);
  await rec.flush();
  const per = new Float64Array(calls);
  for (let i = 0; i < calls; i++) {
    const e = prepared[warmup + i];
    const t0 = performance.now();
    rec.track(e);
    per[i] = performance.now() - t0;
  }
  await rec.flush();
  const l0 = performance.now();
  for (let i = 0; i < calls; i++) rec.track(prepared[warmup + calls + i]);
  const loopMs = performance.now() - l0;
  const f0 = performance.now();
  await rec.flush();
  const flushMs = performance.now() - f0;
  const stats = await rec.stats();
  await rec.erase();
  return {
    perCall: summary(per),
    loopMeanMs: loopMs / calls,
    stored: stats.events.total,
    flushAfterLoopMs: flushMs,
    crossOriginIsolated: self.crossOriginIsolated,
    timerResolutionMs: timerResolution(),
  };
};

/** train() over a store holding `events` (tracked, then flushed), with long tasks observed on this page. */
window.benchTrain = async ({ catalog, events, backend, epochs }) => {
  const { rec, initMs } = await open(catalog, backend, `bench-train-${backend}-${events.length}`, { retention: { maxEvents: 100_000 } });
  const i0 = performance.now();
  for (const e of events) rec.track(e);
  const trackLoopMs = performance.now() - i0;
  await rec.flush();
  const ingestMs = performance.now() - i0;
  await settle();
  let progressCalls = 0;
  const t0 = performance.now();
  const result = await rec.train({ epochs, onProgress: () => void progressCalls++ });
  const t1 = performance.now();
  await settle();
  const lt = longTasksIn(t0, t1);
  const stats = await rec.stats();
  await rec.erase();
  return { initMs, trackLoopMs, ingestMs, wallMs: t1 - t0, result, progressCalls, longTasks: lt, stored: stats.events.total };
};

/**
 * recommend() against raw tfjs matMul+topk on the same item table in the same worker, interleaved
 * rep by rep so that both see the same machine load.
 */
window.benchRecommend = async ({ catalog, history, neighborsUrl, backend, k, minReps, maxReps, budgetMs }) => {
  const { rec, initMs, initLongTasks } = await open(catalog, backend, `bench-rec-${backend}-${catalog.length}`);
  dbg('recommender ready', initMs);
  for (const e of history) rec.track(e);
  await rec.flush();
  const api = apiOfLastWorker();
  dbg('history stored');
  // Warm-up: shader compilation, first upload of the table, JIT.
  const w0 = performance.now();
  await rec.recommend({ k });
  const firstRecommendMs = performance.now() - w0;
  await rec.recommend({ k });
  dbg('recommend warm');
  await api.benchRawScore(k, 1, true);
  dbg('raw warm');
  const recMs = [];
  const rawMs = [];
  const rawRoundTripMs = [];
  const start = performance.now();
  let rawBackend;
  let shape;
  let last;
  for (let i = 0; i < maxReps && (i < minReps || performance.now() - start < budgetMs); i++) {
    let t = performance.now();
    last = await rec.recommend({ k });
    recMs.push(performance.now() - t);
    t = performance.now();
    const raw = await api.benchRawScore(k, 1, false);
    rawRoundTripMs.push(performance.now() - t);
    rawMs.push(raw.ms[0]);
    rawBackend = raw.backend;
    shape = [raw.rows, raw.dim];
  }
  // The same, with the shop's neighbour table loaded: history through the table, factor order after.
  const file = await (await fetch(neighborsUrl)).arrayBuffer();
  let t = performance.now();
  await rec.setNeighbors(file);
  const setNeighborsMs = performance.now() - t;
  await rec.recommend({ k });
  const nbMs = [];
  const nbRawMs = [];
  const nbStart = performance.now();
  for (let i = 0; i < maxReps && (i < minReps || performance.now() - nbStart < budgetMs); i++) {
    t = performance.now();
    await rec.recommend({ k });
    nbMs.push(performance.now() - t);
    nbRawMs.push((await api.benchRawScore(k, 1, false)).ms[0]);
  }
  const stats = await rec.stats();
  await rec.erase();
  return {
    withNeighbors: summary(nbMs),
    withNeighborsRaw: summary(nbRawMs),
    setNeighborsMs,
    initMs,
    initLongTasks,
    firstRecommendMs,
    recommend: summary(recMs),
    raw: summary(rawMs),
    rawRoundTrip: summary(rawRoundTripMs),
    rawBackend,
    sdkBackend: stats.backend,
    rows: shape[0],
    dim: shape[1],
    historyItems: new Set(history.map((e) => e.itemId)).size,
    returned: last.length,
  };
};

window.ready = true;
