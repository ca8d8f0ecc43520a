/**
 * Registers the gradient functions that training needs. In Node, tfjs-core's CommonJS build has
 * none, and the union package `@tensorflow/tfjs` registers them on the same core instance. The
 * browser build (rollup.config.ts) replaces this module with tfjs-core's own
 * `register_all_gradients`, so the worker bundle carries no layers/converter/data code.
 */
import '@tensorflow/tfjs';
