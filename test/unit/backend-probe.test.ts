/**
 * The backend probe on a phone's budget (stop 34, a review of what a page load costs): its choice is
 * remembered on the device for a week, so that later page loads start one backend instead of
 * starting and timing every one; the backends it started and did not choose are released.
 */
import 'fake-indexeddb/auto';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '../../src/model/tf.js';
import { BACKEND_KEY, BACKEND_MEMO_MS, Engine } from '../../src/engine/engine.js';
import { MemoryEventStore } from '../../src/events/store.js';
import { selectBackend } from '../../src/model/backend.js';

const ids = Array.from({ length: 60 }, (_, i) => `p${i}`);
const catalog = { items: ids.map((id, i) => ({ id, popularity: 100 - i })) };
const DAY = 86_400_000;

/** Counts tf.setBackend calls per backend while `f` runs. */
async function backendsStarted<T>(f: () => Promise<T>): Promise<{ value: T; started: string[] }> {
  const started: string[] = [];
  const setBackend = tf.engine().setBackend;
  tf.engine().setBackend = function (name: string) {
    started.push(name);
    return setBackend.call(this, name);
  };
  try {
    return { value: await f(), started };
  } finally {
    tf.engine().setBackend = setBackend;
  }
}

describe('the backend probe, remembered', () => {
  it('a later page load starts the chosen backend alone, for a week, for the same catalog size, candidates and browser', async () => {
    let t = Date.now();
    const store = new MemoryEventStore();
    const base = { catalog, store, autoTrainEvery: 0, model: { dim: 8 }, backendCandidates: ['wasm', 'cpu'] as Array<'wasm' | 'cpu'>, now: () => t };
    const first = await backendsStarted(() => Engine.create(base));
    const s1 = await first.value.stats();
    assert.match(s1.backendReason, /^probed: /);
    assert.deepEqual([...new Set(first.started)].sort(), ['cpu', 'wasm'], 'the first page load probes both');
    const probe = (await first.value.audit()).backendProbe;
    assert.deepEqual(probe && [probe.stored, probe.backend, probe.at], [true, s1.backend, t]);
    await first.value.close();

    t += 6 * DAY;
    const again = await backendsStarted(() => Engine.create(base));
    const s2 = await again.value.stats();
    assert.equal(s2.backend, s1.backend);
    assert.equal(s2.backendReason, `remembered (probed ${new Date(t - 6 * DAY).toISOString()}): ${s1.backendReason}`);
    assert.deepEqual([...new Set(again.started)], [s1.backend], 'only the remembered backend is started');
    assert.equal((await again.value.recommend({ k: 3 })).length, 3);
    await again.value.close();

    // Each of these probes again (and does not replace the memo for the original shape but its own).
    const probes = async (o: object, why: string) => {
      const e = await Engine.create({ ...base, ...o });
      try {
        assert.match((await e.stats()).backendReason, /^probed: /, why);
      } finally {
        await e.close();
      }
    };
    await probes({ catalog: { items: [...catalog.items, ...catalog.items.map((x) => ({ ...x, id: `${x.id}-b` }))] } }, 'a catalog twice as large');
    await probes({ backendCandidates: ['cpu', 'wasm'] }, 'other candidates');
    await probes({ model: { dim: 16 } }, 'another dimension');
    t += 2 * DAY;
    await probes({}, 'older than a week');
    t -= 30 * DAY;
    await probes({}, 'probed ahead of this clock (the clock went back)');
  });

  it('a choice made while a backend\'s file could not be loaded stands for a day, not a week', async () => {
    let t = Date.now();
    const store = new MemoryEventStore();
    const base = { catalog, store, autoTrainEvery: 0, model: { dim: 8 }, backendCandidates: ['wasm', 'cpu'] as Array<'wasm' | 'cpu'>, now: () => t };
    const first = await Engine.create(base);
    await first.close();
    // As a probe in a deployment without worker-webgl.js leaves it.
    const memo = (await store.getMeta(BACKEND_KEY)) as { reason: string };
    await store.setMeta(BACKEND_KEY, { ...memo, reason: `${memo.reason}; webgl could not be loaded (Failed to fetch dynamically imported module)` });
    t += DAY / 2;
    const soon = await Engine.create(base);
    assert.match((await soon.stats()).backendReason, /^remembered /);
    await soon.close();
    t += DAY;
    const later = await Engine.create(base);
    assert.match((await later.stats()).backendReason, /^probed: /, 'probed again after a day');
    await later.close();
  });

  it('a stored record that is not a memo, or names a backend outside the candidates, is probed over; a forced backend and no consent store nothing', async () => {
    const store = new MemoryEventStore();
    const base = { catalog, store, autoTrainEvery: 0, model: { dim: 8 }, backendCandidates: ['wasm', 'cpu'] as Array<'wasm' | 'cpu'> };
    for (const junk of ['wasm', { backend: 'tpu', reason: 'x', at: Date.now() }, { backend: 'wasm', at: 'yesterday' }]) {
      await store.setMeta(BACKEND_KEY, junk);
      const e = await Engine.create(base);
      assert.match((await e.stats()).backendReason, /^probed: /, JSON.stringify(junk));
      assert.equal((await e.audit()).backendProbe?.stored, true, 'replaced by the probe');
      await e.close();
    }
    const e = await Engine.create(base);
    const memo = await store.getMeta<{ backend: string }>(BACKEND_KEY);
    await e.close();
    // The page now allows only the other backend: the memo does not apply.
    const other = memo!.backend === 'wasm' ? 'cpu' : 'wasm';
    const only = await Engine.create({ ...base, backendCandidates: [other] });
    assert.equal((await only.stats()).backend, other);
    await only.close();

    const forcedStore = new MemoryEventStore();
    const forced = await Engine.create({ ...base, store: forcedStore, backend: 'cpu', backendCandidates: undefined });
    assert.equal((await forced.stats()).backendReason, 'forced');
    assert.equal(await forcedStore.getMeta(BACKEND_KEY), undefined);
    await forced.close();

    const noConsent = new MemoryEventStore();
    const declined = await Engine.create({ ...base, store: noConsent, consent: { personalization: false, federated: false } });
    assert.equal(await noConsent.getMeta(BACKEND_KEY), undefined, 'nothing is written before consent');
    await declined.close();
  });

  it('a backend that fails at run time is forgotten: the next page load probes again', async () => {
    const store = new MemoryEventStore();
    const base = { catalog, store, autoTrainEvery: 0, model: { dim: 8 }, backendCandidates: ['wasm', 'cpu'] as Array<'wasm' | 'cpu'> };
    const e = await Engine.create(base);
    assert.notEqual(await store.getMeta(BACKEND_KEY), undefined);
    const hack = e as unknown as { markBackendLost(gen: number, why: string): void; backendGen: number };
    hack.markBackendLost(hack.backendGen, 'its context was lost');
    assert.equal((await e.recommend({ k: 3 })).length, 3);
    assert.match((await e.stats()).backendReason, /^fell back from /);
    assert.equal((await e.audit()).backendProbe, null);
    await e.close();
    const next = await Engine.create(base);
    assert.match((await next.stats()).backendReason, /^probed: /);
    await next.close();
    assert.ok(BACKEND_MEMO_MS >= DAY);
  });
});

describe('the backends the probe did not choose', () => {
  it('are released (disposed, no longer in the registry) and stay registered, so a fallback can start them afresh', async () => {
    // A stand-in GPU backend: the CPU backend's kernels under another name, slower than wasm.
    const cpuFactory = tf.findBackendFactory('cpu')!;
    let made = 0;
    let disposed = 0;
    tf.registerBackend('webgpu', async () => {
      made++;
      const b = await cpuFactory();
      const dispose = b.dispose.bind(b);
      b.dispose = () => {
        disposed++;
        dispose();
      };
      // Slower than wasm at anything: every read waits.
      const read = b.read.bind(b);
      b.read = async (id) => {
        await new Promise((r) => setTimeout(r, 30));
        return read(id);
      };
      return b;
    });
    assert.equal(tf.getKernelsForBackend('webgpu').length, 0, 'no WebGPU kernels in Node');
    for (const k of tf.getKernelsForBackend('cpu')) tf.registerKernel({ ...k, backendName: 'webgpu' });
    // The probe asks for an adapter before it starts WebGPU.
    const g = globalThis as { navigator?: unknown };
    const hadNavigator = Object.getOwnPropertyDescriptor(g, 'navigator');
    Object.defineProperty(g, 'navigator', { value: { gpu: { requestAdapter: async () => ({}) } }, configurable: true, writable: true });
    try {
      const choice = await selectBackend({ candidates: ['webgpu', 'wasm'], probeRows: 500, probeDim: 8 });
      assert.equal(choice.backend, 'wasm', choice.reason);
      assert.ok(choice.timings.webgpu !== undefined, 'the stand-in was timed');
      assert.equal(disposed, 1, 'the loser was disposed');
      const registry = (tf.engine() as unknown as { registry: Record<string, unknown> }).registry;
      assert.deepEqual(Object.keys(registry).includes('webgpu'), false);
      assert.ok(tf.findBackendFactory('webgpu'), 'still registered');
      assert.equal(tf.getBackend(), 'wasm');
      // A fallback starts it again.
      assert.equal(await tf.setBackend('webgpu'), true);
      assert.equal(made, 2);
      const held = tf.tensor1d([1, 2, 3]);
      assert.equal(tf.sum(held).dataSync()[0], 6);
      // Already running before a probe (another engine in this process scores on it): not this
      // probe's to release, though it loses again.
      const again = await selectBackend({ candidates: ['webgpu', 'wasm'], probeRows: 500, probeDim: 8 });
      assert.equal(again.backend, 'wasm');
      assert.equal(disposed, 1, 'not disposed again');
      assert.ok(Object.keys(registry).includes('webgpu'));
      assert.deepEqual([...(await held.data())], [1, 2, 3], "the other engine's tensor is still there");
    } finally {
      if (hadNavigator) Object.defineProperty(g, 'navigator', hadNavigator);
      else delete g.navigator;
      await tf.setBackend('wasm');
      tf.removeBackend('webgpu');
    }
  });
});
