/** The global through which the worker gives tfjs-core to the GPU backends' files (rollup.config.ts reads it too). */
export const GPU_CORE_GLOBAL = '__localrecTfjsCore';
