/**
 * The one place that imports TensorFlow.js core, together with the gradients training needs
 * (tfjs-core alone registers none; see ./gradients.ts).
 */
import './gradients.js';
export * from '@tensorflow/tfjs-core';
