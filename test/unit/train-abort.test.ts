/**
 * erase(), close() and a withdrawal of consent stop a training run under way instead of waiting for
 * all its epochs (stop 31): the run saves nothing, its train() rejects with an AbortError, and what
 * the shopper asked to delete is deleted at once. Runs are counted in steps, never timed.
 */
import 'fake-indexeddb/auto';
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { describe, it } from 'node:test';
import { withStandInWorker } from './engine-helpers.js';
import { Engine, MODEL_KEY } from '../../src/engine/engine.js';
import { AbortError, isAbortError, ModelError } from '../../src/errors.js';
import * as tf from '@tensorflow/tfjs-core';
import { MemoryEventStore } from '../../src/events/store.js';
import { cloneItemTable, createItemTable } from '../../src/model/item-table.js';
import { trainItemTable } from '../../src/model/train.js';
import { createRecommender } from '../../src/recommender.js';
import type { Progress } from '../../src/types.js';
import '../../src/model/tf.js';

const catalog = { items: Array.from({ length: 30 }, (_, i) => ({ id: `p${i}`, title: `P${i}`, category: `c${i % 3}` })) };
/** 1000 epochs of a few steps each: far more than a test waits for. */
const EPOCHS = 1000;
const events = Array.from({ length: 20 }, (_, i) => ({ type: 'view' as const, itemId: `p${i}` }));
let n = 0;

/** An engine on a memory store holding 20 views, trained in steps of 4 examples (5 steps an epoch). */
async function engineWithHistory(store = new MemoryEventStore(), now?: () => number): Promise<{ e: Engine; store: MemoryEventStore }> {
  const e = await Engine.create({ catalog, backend: 'cpu', store, autoTrainEvery: 0, model: { dim: 8 }, training: { batchSize: 4 }, ...(now ? { now } : {}) });
  e.enqueue(events);
  await e.flush();
  return { e, store };
}

/** train() with a log of its progress, and a promise that resolves once its first step is reported. */
function trainLogged(e: Engine, epochs = EPOCHS) {
  const seen: Progress[] = [];
  let stepped!: () => void;
  const firstStep = new Promise<void>((r) => (stepped = r));
  const run = e.train({
    epochs,
    onProgress: (p) => {
      seen.push(p);
      if (p.phase === 'training') stepped();
    },
  });
  run.catch(() => undefined);
  const steps = () => Math.max(0, ...seen.filter((p) => p.phase === 'training').map((p) => p.done));
  const total = () => seen.find((p) => p.phase === 'training')?.total ?? 0;
  return { run, firstStep, seen, steps, total };
}

const stoppedBy = (by: RegExp) => (e: unknown) => isAbortError(e) && by.test((e as Error).message);

describe('trainItemTable: signal', () => {
  it('an aborted signal rejects with an AbortError (its reason when that is one) and leaves the table and optimizer state unchanged', async () => {
    const table = createItemTable(['a', 'b', 'c', 'd'], 4, { seed: 1 });
    const before = cloneItemTable(table);
    const seqs = [{ rows: [0, 1, 2, 3], weights: [1, 1, 1, 1] }];
    const steps: number[] = [];
    await assert.rejects(trainItemTable(table, seqs, { epochs: 3, signal: AbortSignal.abort() }, (p) => steps.push(p.done)), (e: unknown) => e instanceof AbortError && /training stopped/.test(e.message));
    const reason = new AbortError('stopped by the test');
    const abort = new AbortController();
    abort.abort(reason);
    await assert.rejects(trainItemTable(table, seqs, { epochs: 3, signal: abort.signal }), (e: unknown) => e === reason);
    assert.deepEqual(steps, [], 'no step was taken');
    assert.deepEqual(table.factors, before.factors);
    assert.deepEqual(table.bias, before.bias);
  });

  it('a signal aborted during the run stops it before its next step', async () => {
    const table = createItemTable(['a', 'b', 'c', 'd', 'e'], 4, { seed: 1 });
    const abort = new AbortController();
    const done: number[] = [];
    const seqs = [{ rows: [0, 1, 2, 3, 4], weights: [1, 1, 1, 1, 1] }];
    await assert.rejects(
      trainItemTable(table, seqs, { epochs: 50, batchSize: 1, signal: abort.signal }, (p) => {
        done.push(p.done);
        if (p.done === 3) abort.abort();
      }),
      { name: 'AbortError' },
    );
    assert.deepEqual(done, [1, 2, 3], 'not one step after the abort (of 200)');
    // Without a signal, as before.
    const stats = await trainItemTable(createItemTable(['a', 'b', 'c', 'd', 'e'], 4, { seed: 1 }), seqs, { epochs: 2, batchSize: 1 });
    assert.equal(stats.steps, 8);
  });
});

describe('engine: a training run stops for erase(), close() and a withdrawal', () => {
  it('erase() during a long run: train() rejects with an AbortError after a few of its steps, nothing is saved, the store is emptied', async () => {
    const { e, store } = await engineWithHistory();
    const t = trainLogged(e);
    await t.firstStep;
    await e.erase();
    await assert.rejects(t.run, stoppedBy(/^training stopped by erase\(\); nothing it learned was saved$/));
    assert.ok(t.steps() < t.total(), `stopped after ${t.steps()} of ${t.total()} steps`);
    assert.ok(!t.seen.some((p) => p.phase === 'saving'), 'the run did not reach its saving phase');
    assert.equal(await store.getMeta(MODEL_KEY), undefined, 'no weights stored');
    assert.equal((await store.all()).length, 0, 'no events stored');
  });

  it('close() during a long run: train() rejects with an AbortError, the weights stored are those from before it, the events stay', async () => {
    const { e, store } = await engineWithHistory();
    const savedBefore = (await store.getMeta<{ trainSteps: number }>(MODEL_KEY))?.trainSteps ?? 0;
    const t = trainLogged(e);
    await t.firstStep;
    await e.close();
    await assert.rejects(t.run, stoppedBy(/^training stopped by close\(\)/));
    assert.ok(t.steps() < t.total(), `stopped after ${t.steps()} of ${t.total()} steps`);
    assert.equal((await store.getMeta<{ trainSteps: number }>(MODEL_KEY))?.trainSteps ?? 0, savedBefore, 'no weights from the stopped run');
    assert.equal((await store.all()).length, events.length, 'close() keeps the events');
    // The next session starts from the weights before the run, and the events still to learn from.
    const again = await Engine.create({ catalog, backend: 'cpu', store, autoTrainEvery: 0, model: { dim: 8 } });
    try {
      assert.equal((await again.stats()).model.trainSteps, savedBefore);
    } finally {
      await again.close();
    }
  });

  it('a withdrawal of consent stops the run; after a new grant the engine trains again', async () => {
    const name = `train-abort-${n++}`;
    const e = await Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, training: { batchSize: 4 } });
    try {
      e.enqueue(events);
      await e.flush();
      const t = trainLogged(e);
      await t.firstStep;
      await e.setConsent({ personalization: false });
      await assert.rejects(t.run, stoppedBy(/^training stopped by the withdrawal of consent to personalization/));
      assert.ok(t.steps() < t.total(), `stopped after ${t.steps()} of ${t.total()} steps`);
      assert.equal((await e.stats()).model.trainSteps, 0);
      await e.setConsent({ personalization: true });
      e.enqueue(events.slice(0, 5));
      await e.flush();
      const r = await e.train({ epochs: 2 });
      assert.ok(r.steps > 0, 'trains again');
      assert.equal((await e.stats()).model.trainSteps, r.steps);
    } finally {
      await e.erase();
    }
  });

  it("an erase in another tab stops this tab's run: its train() rejects with an AbortError", async () => {
    const name = `train-abort-${n++}`;
    const open = () => Engine.create({ catalog, backend: 'cpu', dbName: name, autoTrainEvery: 0, model: { dim: 8 }, training: { batchSize: 4 } });
    const a = await open();
    const b = await open();
    try {
      a.enqueue(events);
      await a.flush();
      const t = trainLogged(a);
      await t.firstStep;
      await b.erase();
      await assert.rejects(t.run, stoppedBy(/^training stopped: the shopper erased their data in another tab/));
      assert.ok(t.steps() < t.total(), `stopped after ${t.steps()} of ${t.total()} steps`);
      assert.equal((await a.stats()).model.trainSteps, 0);
    } finally {
      await a.erase();
    }
  });

  it('an automatic run stopped by a withdrawal stops silently (no lastError), and a caller that joined it gets the AbortError', async () => {
    const store = new MemoryEventStore();
    const e = await Engine.create({ catalog, backend: 'cpu', store, autoTrainEvery: 5, model: { dim: 8 }, training: { batchSize: 4, epochs: EPOCHS } });
    try {
      e.enqueue(events);
      await e.flush();
      const running = () => (e as unknown as { training?: Promise<unknown> }).training !== undefined;
      for (let i = 0; i < 1000 && !running(); i++) await new Promise((r) => setTimeout(r, 1));
      assert.ok(running(), 'the automatic run started');
      const t = trainLogged(e, EPOCHS); // joins it
      await t.firstStep;
      await e.setConsent({ personalization: false });
      await assert.rejects(t.run, stoppedBy(/withdrawal of consent/));
      assert.ok(t.steps() < t.total(), `stopped after ${t.steps()} of ${t.total()} steps`);
      assert.equal((await e.stats()).lastError, undefined, 'the automatic run left no error');
    } finally {
      await e.erase();
    }
  });
});


/** A stand-in worker over a real engine (the worker's methods this test calls, as worker.ts has them). */
function engineWorker(store: MemoryEventStore) {
  let engine!: Engine;
  let stepped!: () => void;
  const firstStep = new Promise<void>((r) => (stepped = r));
  let steps = 0;
  const calls = new Map<number, AbortController>();
  const api = {
    async init(_options: unknown, trackPort: MessagePort) {
      trackPort.onmessage = () => undefined;
      engine = (await engineWithHistory(store)).e;
    },
    barrier: async () => undefined,
    cancelSync: () => true,
    stopTraining: (by: 'close' | 'erase') => engine.stopTraining(by === 'close' ? 'close()' : 'erase()'),
    // As worker.ts: the page's signal arrives as cancelTrain(callId).
    train: (o: { epochs?: number }, _onProgress?: unknown, callId?: number) => {
      const abort = new AbortController();
      if (callId !== undefined) calls.set(callId, abort);
      return engine
        .train({
          ...o,
          signal: abort.signal,
          onProgress: (p) => {
            if (p.phase !== 'training') return;
            steps = p.done;
            stepped();
          },
        })
        .finally(() => calls.delete(callId!));
    },
    cancelTrain: (callId: number) => void calls.get(callId)?.abort(),
    erase: () => engine.erase(),
    close: () => engine.close(),
  };
  return { api, firstStep, steps: () => steps };
}

describe('train({ signal })', () => {
  it('a signal aborted during the run stops it for every caller of that run: AbortError, nothing saved', async () => {
    const { e, store } = await engineWithHistory();
    const ctl = new AbortController();
    const seen: Progress[] = [];
    let stepped!: () => void;
    const firstStep = new Promise<void>((r) => (stepped = r));
    const run = e.train({ epochs: EPOCHS, signal: ctl.signal, onProgress: (p) => (seen.push(p), p.phase === 'training' && stepped()) });
    const joined = e.train(); // joins the run (no epochs asked)
    run.catch(() => undefined);
    joined.catch(() => undefined);
    await firstStep;
    ctl.abort();
    for (const p of [run, joined]) await assert.rejects(p, stoppedBy(/^training stopped by a caller's signal; nothing it learned was saved$/));
    assert.ok(!seen.some((p) => p.phase === 'saving'), 'the run did not reach its saving phase');
    assert.equal(await store.getMeta(MODEL_KEY), undefined, 'no weights stored');
    // The engine trains again afterwards.
    assert.ok((await e.train({ epochs: 1 })).steps > 0);
    await e.close();
  });

  it("a joiner's signal stops the run it joined too; no call leaves a listener on its signal; an abort after the run ended stops no later run", async () => {
    const { e } = await engineWithHistory();
    const starter = trainLogged(e);
    await starter.firstStep;
    const ctl = new AbortController();
    const joined = e.train({ signal: ctl.signal });
    joined.catch(() => undefined);
    ctl.abort();
    for (const p of [starter.run, joined]) await assert.rejects(p, stoppedBy(/^training stopped by a caller's signal/));
    // Listeners: after a started, a joined, a waiting and a refused call, none is left.
    const kept = new AbortController();
    await e.train({ epochs: 1, signal: kept.signal });
    const run = e.train({ epochs: 2 });
    const join = e.train({ signal: kept.signal });
    const wait = e.train({ epochs: 1, signal: kept.signal });
    await Promise.all([run, join, wait]);
    await assert.rejects(e.train({ epochs: 0, signal: kept.signal }), /options\.epochs/);
    assert.equal(getEventListeners(kept.signal, 'abort').length, 0);
    // The signal of a finished run does not reach the next one.
    const next = e.train({ epochs: 2 });
    kept.abort();
    assert.ok((await next).steps > 0);
    await e.close();
  });

  it('an aborted signal refuses at once; a call waiting for a run of other epochs just stops waiting (the run goes on)', async () => {
    const { e } = await engineWithHistory();
    await assert.rejects(e.train({ signal: AbortSignal.abort() }), stoppedBy(/^training cancelled by its signal before it started/));
    const t = trainLogged(e, 3);
    await t.firstStep;
    const ctl = new AbortController();
    const waiting = e.train({ epochs: 2, signal: ctl.signal });
    ctl.abort();
    await assert.rejects(waiting, stoppedBy(/^training cancelled by its signal before it started/));
    assert.ok((await t.run).steps > 0, 'the run it waited for was not stopped');
    await assert.rejects(e.train({ signal: 'no' as never }), (err: unknown) => (err as Error).name === 'ValidationError' && /options\.signal/.test((err as Error).message));
    await e.close();
  });

  it('through the page: train({ signal }) aborted rejects with the AbortError and stops the run', async () => {
    const store = new MemoryEventStore();
    const w = engineWorker(store);
    await withStandInWorker(w.api, async () => {
      const rec = await createRecommender({ catalog, workerTimeoutMs: 0 });
      const ctl = new AbortController();
      const training = rec.train({ epochs: EPOCHS, signal: ctl.signal });
      training.catch(() => undefined);
      await w.firstStep;
      ctl.abort();
      await assert.rejects(training, (err: unknown) => err instanceof AbortError && err.message === "training stopped by a caller's signal; nothing it learned was saved");
      assert.ok(w.steps() < EPOCHS * 5, `stopped after ${w.steps()} steps`);
      await assert.rejects(rec.train({ signal: AbortSignal.abort() }), (err: unknown) => isAbortError(err));
      await rec.close();
    });
  });
});

describe('page: erase() and close() are not held by a train() in flight', () => {
  for (const kind of ['erase', 'close'] as const) {
    it(`${kind}() while the page's train() runs: train() rejects with the AbortError, ${kind}() completes, nothing from the run is stored`, async () => {
      const store = new MemoryEventStore();
      const w = engineWorker(store);
      await withStandInWorker(w.api, async () => {
        const rec = await createRecommender({ catalog, workerTimeoutMs: 0 });
        const training = rec.train({ epochs: EPOCHS });
        training.catch(() => undefined);
        await w.firstStep;
        await rec[kind]();
        await assert.rejects(training, (e: unknown) => e instanceof AbortError && e.message === `training stopped by ${kind}(); nothing it learned was saved`);
        assert.ok(w.steps() < EPOCHS * 5, `stopped after ${w.steps()} steps`);
        const model = await store.getMeta<{ trainSteps: number }>(MODEL_KEY);
        if (kind === 'erase') {
          assert.equal(model, undefined, 'no weights stored');
          assert.equal((await store.all()).length, 0, 'no events stored');
        } else assert.equal(model?.trainSteps ?? 0, 0, 'no weights from the stopped run');
      });
    });
  }

  it('a train() that reaches the worker after erase() began is refused, not started', async () => {
    const store = new MemoryEventStore();
    const w = engineWorker(store);
    await withStandInWorker(w.api, async () => {
      const rec = await createRecommender({ catalog, workerTimeoutMs: 0 });
      w.api.stopTraining('erase'); // what the page's erase() sends first, ahead of this call
      await assert.rejects(rec.train({ epochs: EPOCHS }), (err: unknown) => isAbortError(err) && /^training stopped by erase\(\) before it started/.test((err as Error).message));
      assert.equal(w.steps(), 0);
      await rec.erase();
    });
  });
});

describe('a backend that fails during training (backend review, stop 33)', () => {
  /** Runs `f` with every tensor read replaced by `read` (the backend as it fails), then restores it. */
  async function withReads(read: (orig: () => Promise<unknown>, t: tf.Tensor) => Promise<unknown>, f: () => Promise<void>): Promise<void> {
    const proto = tf.Tensor.prototype as unknown as { data: () => Promise<unknown> };
    const orig = proto.data;
    proto.data = function (this: tf.Tensor) {
      return read(() => orig.call(this), this) as never;
    };
    try {
      await f();
    } finally {
      proto.data = orig;
    }
  }

  it('a read that never settles (a lost WebGL context) does not hold erase(): the run stops, the data is deleted', async () => {
    const { e, store } = await engineWithHistory();
    let reading!: () => void;
    const stuck = new Promise<void>((r) => (reading = r));
    await withReads(
      () => (reading(), new Promise(() => {})),
      async () => {
        const run = e.train({ epochs: 1 });
        run.catch(() => undefined);
        await stuck; // the run waits on its first read, for ever
        await e.erase();
        await assert.rejects(run, (err: unknown) => isAbortError(err));
      },
    );
    assert.equal(await store.count(), 0, 'erased');
  });

  it('gradients read back as NaN with a finite loss: the step is refused (ModelError), nothing is put in use or saved', async () => {
    // A clock that stands still: the history's weights decay with time, so scores taken a few ms
    // apart differ in their last bits (this test failed so under load, and always when run alone).
    const t0 = Date.now();
    const { e, store } = await engineWithHistory(new MemoryEventStore(), () => t0);
    try {
      const before = await e.recommend({ k: 5 });
      await withReads(
        async (orig, t) => {
          const a = (await orig()) as Float32Array;
          if (t.rank > 0) a.fill(NaN);
          return a;
        },
        async () => {
          await assert.rejects(e.train({ epochs: 1 }), (err: unknown) => err instanceof ModelError && /gradients that are not finite/.test((err as Error).message));
        },
      );
      assert.equal(await store.getMeta(MODEL_KEY), undefined, 'nothing saved');
      assert.deepEqual(await e.recommend({ k: 5 }), before, 'the weights in use are those from before');
    } finally {
      await e.close();
    }
  });
});
