/**
 * The backend chosen at start-up fails at run time (a WebGL context or WebGPU device lost, wasm out
 * of memory): the engine moves to another backend, answers correctly, and says why in stats().
 */
import 'fake-indexeddb/auto';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '../../src/model/tf.js';
import { Engine } from '../../src/engine/engine.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { isAbortError, isModelError } from '../../src/errors.js';
import { Scorer } from '../../src/model/score.js';

const ids = Array.from({ length: 60 }, (_, i) => `p${i}`);
const catalog = { items: ids.map((id, i) => ({ id, category: i % 3 === 0 ? 'mugs' : 'bags', popularity: 100 - i })) };

async function engineOn(backend: 'wasm' | 'cpu' | Array<'wasm' | 'cpu'>): Promise<Engine> {
  const pick = Array.isArray(backend) ? { backendCandidates: backend } : { backend };
  const e = await Engine.create({ catalog, ...pick, autoTrainEvery: 0, model: { dim: 8 }, store: new MemoryEventStore() });
  e.enqueue(['p1', 'p4', 'p7', 'p9'].map((itemId) => ({ type: 'view' as const, itemId })));
  await e.flush();
  return e;
}

/** Makes the wasm backend's reads throw as an out-of-memory heap does, `times` times (Infinity: until restored). */
function failReads(times: number): () => void {
  const b = tf.engine().findBackend('wasm') as unknown as { read: (...a: unknown[]) => unknown };
  const read = b.read;
  let left = times;
  b.read = function (...a: unknown[]) {
    if (left-- > 0) throw new WebAssembly.RuntimeError('memory access out of bounds');
    return read.apply(this, a);
  };
  return () => void (b.read = read);
}

const itemsOf = (r: Array<{ itemId: string }>) => r.map((x) => x.itemId);
const hack = (e: Engine) => e as unknown as { markBackendLost(gen: number, why: string): void; backendGen: number };

describe('backend failure at run time', () => {
  it('a wasm op that throws WebAssembly.RuntimeError: the call answers on cpu, and stats() says why', async () => {
    const e = await engineOn('wasm');
    try {
      const before = await e.recommend({ k: 5, category: 'mugs' });
      const beforeSim = await e.similar('p3', { k: 4 });
      assert.equal((await e.stats()).backend, 'wasm');
      const restore = failReads(1);
      let after;
      try {
        after = await e.recommend({ k: 5, category: 'mugs' });
      } finally {
        restore();
      }
      assert.deepEqual(itemsOf(after), itemsOf(before));
      after.forEach((r, i) => assert.ok(Math.abs(r.score - before[i]!.score) < 1e-4));
      const s = await e.stats();
      assert.equal(s.backend, 'cpu');
      assert.match(s.backendReason, /^fell back from wasm: an operation failed \(RuntimeError: memory access out of bounds\)/);
      assert.match(s.lastError ?? '', /^ModelError: the wasm backend failed .*now runs on cpu/);
      // Later calls work, on cpu.
      assert.deepEqual(itemsOf(await e.similar('p3', { k: 4 })), itemsOf(beforeSim));
      assert.deepEqual(itemsOf(await e.recommend({ k: 5, category: 'mugs' })), itemsOf(before));
      assert.equal(tf.getBackend(), 'cpu');
    } finally {
      await e.close();
    }
  });

  it('a backend marked lost between calls (as the WebGL context-lost listener does): the next call moves first, and answers only the category', async () => {
    const e = await engineOn('wasm');
    try {
      const before = await e.recommend({ k: 5, category: 'bags' });
      hack(e).markBackendLost(hack(e).backendGen, 'its context was lost');
      const after = await e.recommend({ k: 5, category: 'bags' });
      assert.deepEqual(itemsOf(after), itemsOf(before));
      for (const r of after) assert.equal(catalog.items[ids.indexOf(r.itemId)]!.category, 'bags');
      const s = await e.stats();
      assert.equal(s.backend, 'cpu');
      assert.match(s.backendReason, /^fell back from wasm: its context was lost/);
      assert.match(s.lastError ?? '', /ModelError: the wasm backend failed \(its context was lost\)/);
    } finally {
      await e.close();
    }
  });

  it('with no other backend left, a backend failure rejects with a ModelError (never an AbortError), and a later call tries again', async () => {
    // The page allowed cpu only: nothing to fall back to.
    const e = await engineOn(['cpu']);
    const topK = Scorer.prototype.topK;
    let fails = Infinity;
    Scorer.prototype.topK = function (...a: Parameters<typeof topK>) {
      if (fails-- > 0) return Promise.reject(new DOMException('Device was lost', 'AbortError'));
      return topK.apply(this, a);
    };
    try {
      const err = await e.recommend({ k: 3 }).then(
        () => assert.fail('resolved'),
        (x: unknown) => x,
      );
      assert.ok(isModelError(err), String(err));
      assert.ok(!isAbortError(err));
      assert.match((err as Error).message, /cpu backend failed .*no other backend is left/);
      assert.match((await e.stats()).lastError ?? '', /^ModelError: /);
      fails = 0;
      assert.equal((await e.recommend({ k: 3 })).length, 3);
    } finally {
      Scorer.prototype.topK = topK;
      await e.close();
    }
  });

  it('a training run that fails on the backend: it rejects with a ModelError, the next run and calls use another backend', async () => {
    const e = await engineOn('wasm');
    try {
      const before = await e.recommend({ k: 5 });
      const restore = failReads(Infinity);
      let err: unknown;
      try {
        err = await e.train({ epochs: 1 }).then(
          () => assert.fail('resolved'),
          (x: unknown) => x,
        );
      } finally {
        restore();
      }
      assert.ok(isModelError(err), String(err));
      assert.match((err as Error).message, /training failed on the wasm backend .*the next run uses cpu/);
      const s = await e.stats();
      assert.equal(s.backend, 'cpu');
      assert.equal(s.model.trainSteps, 0);
      assert.deepEqual(itemsOf(await e.recommend({ k: 5 })), itemsOf(before));
      const t = await e.train({ epochs: 1 });
      assert.equal(t.backend, 'cpu');
      assert.ok(t.steps > 0);
    } finally {
      await e.close();
    }
  });
  it('a training run waiting on a read that never settles stops when the backend is lost, also where AbortSignal.any is missing', async () => {
    // Firefox before 124, Safari before 17.4 and Chromium before 116 have no AbortSignal.any; a
    // read on a lost WebGL context never settles. Both at once left train() pending for ever.
    const e = await engineOn('wasm');
    const any = Object.getOwnPropertyDescriptor(AbortSignal, 'any');
    const b = tf.engine().findBackend('wasm') as unknown as { read: (...a: unknown[]) => Promise<unknown> };
    const read = b.read;
    let hung = 0;
    b.read = function () {
      hung++;
      return new Promise(() => undefined);
    };
    Reflect.deleteProperty(AbortSignal, 'any');
    try {
      assert.equal(typeof (AbortSignal as { any?: unknown }).any, 'undefined');
      const run = e.train({ epochs: 1 });
      const settled = run.then(
        () => 'resolved',
        (x: unknown) => x,
      );
      while (hung === 0) await new Promise((r) => setTimeout(r, 5));
      hack(e).markBackendLost(hack(e).backendGen, 'its context was lost');
      const err = await Promise.race([settled, new Promise((r) => setTimeout(() => r('still pending after 10 s'), 10_000))]);
      assert.ok(isModelError(err), String(err));
      assert.match((err as Error).message, /training failed on the wasm backend \(its context was lost\).*the next run uses cpu/);
      b.read = read;
      const t = await e.train({ epochs: 1 });
      assert.equal(t.backend, 'cpu');
    } finally {
      if (any) Object.defineProperty(AbortSignal, 'any', any);
      b.read = read;
      await e.close();
    }
  });
});
