/**
 * The types of `localrec/worker`: the Web Worker script (`dist/worker.js`) that
 * `createRecommender` starts. A page does not import it as a module: a bundler takes its URL
 * (`import workerUrl from 'localrec/worker?url'` in Vite) and passes it as `workerUrl`. It exports
 * nothing a page calls; its own types (the worker's internals and the TensorFlow.js backends it
 * loads) are not part of the public API.
 */
export {};
