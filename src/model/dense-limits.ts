/**
 * How large an exact EASE solve the neighbour builder runs (build-neighbors.ts). A module of its
 * own so that `localrec neighbors` can show the defaults without loading the solver.
 */

/** Default `denseMax`: a 4,096 × 4,096 Float64 matrix (128 MiB), about a minute and a half on one core. */
export const DEFAULT_DENSE_MAX = 4096;
/** The largest `denseMax`: an 8 GiB matrix, hours of solve. */
export const MAX_DENSE_ITEMS = 32_768;
