/**
 * The part of TensorFlow.js core that the GPU backends' files use, handed to them through
 * {@link GPU_CORE_GLOBAL} (src/engine/worker.ts). For the type checker it is all of tfjs-core; the
 * browser build replaces this module with the exact list of exports those files import
 * (rollup.config.ts, gpuBackendFiles), so that the worker keeps only what they need.
 */
export * from '../model/tf.js';
