/**
 * EASE (Steck 2019): the item-item weights B = I − P·diag(1/diag P) with P = (XᵀX + λI)⁻¹,
 * solved exactly in Float64, then pruned to a few neighbours per item so it ships as a
 * {@link SparseItemModel}.
 *
 * Two exact solves, picked by cost: the primal inverts the items × items Gram matrix; the dual
 * (Woodbury) inverts the users × users matrix K = XXᵀ + λI and uses P = (I − XᵀK⁻¹X)/λ, which
 * is far cheaper when there are fewer users than items (a federated round, MovieLens-small).
 * Neither ever holds more than one items × items Float64 matrix, and the dual holds none.
 */
import { ModelError } from '../errors.js';
import { emptySparseModel, pruneRow, type SparseItemModel } from './sparse-item-model.js';
import { invertSpdInPlace } from './sparse-spd-inverse.js';

/** Binary user × item matrix as per-user item lists (CSR). Duplicates within a user are not allowed. */
export interface UserItemLists {
  ptr: Int32Array;
  items: Int32Array;
  nItems: number;
}

export interface SparseEaseOptions {
  /** L2 penalty λ on the diagonal. */
  l2: number;
  /** Neighbours kept per item (≤ 32 keeps an item at ≤ 256 bytes). */
  width: number;
  /** `row`: item i keeps the items it votes for most; `col`: item j keeps its strongest voters. */
  prune?: 'row' | 'col';
  /** Keep only positive weights. */
  positiveOnly?: boolean;
  /**
   * Called for every solved item i with its dense row (B[i, ·] for `row` pruning, B[·, i] for
   * `col`; length nItems) before the row is pruned to `width`: an entry set to 0 is not kept, and
   * the slot goes to the next strongest entry.
   */
  filter?: (i: number, row: Float64Array) => void;
  solver?: 'auto' | 'primal' | 'dual';
  onProgress?: (fraction: number) => void;
}

/** Which exact solve {@link solveEaseRows} runs on a log, and what it holds and costs. */
export interface EaseSolvePlan {
  solver: 'primal' | 'dual';
  /** Items with at least one user (the primal solve's side). */
  activeItems: number;
  users: number;
  /** Float64 numbers its dense matrices hold: items² (primal), users² + users × items (dual). */
  cells: number;
  /** Multiply-adds, roughly: items³/2 (primal), users³/2 + 2·users·nnz + items·nnz (dual). */
  work: number;
}

/**
 * The solve `solveEaseRows(x, …, { solver })` picks (`auto`: the cheaper one), with its size.
 *
 * @example
 * ```ts
 * planEaseSolve({ ptr, items, nItems }).cells * 8; // bytes of its dense matrices
 * ```
 */
export function planEaseSolve(x: UserItemLists, solver: 'auto' | 'primal' | 'dual' = 'auto'): EaseSolvePlan {
  const n = x.nItems;
  const m = x.ptr.length - 1;
  const seen = new Uint8Array(n);
  for (let e = 0; e < x.items.length; e++) seen[x.items[e]] = 1;
  let na = 0;
  for (let i = 0; i < n; i++) na += seen[i];
  const nnz = x.items.length;
  const primalCost = na ** 3 / 2;
  const dualCost = m ** 3 / 2 + 2 * m * nnz + na * nnz;
  const picked = solver !== 'auto' ? solver : primalCost <= dualCost ? 'primal' : 'dual';
  return picked === 'primal'
    ? { solver: picked, activeItems: na, users: m, cells: na * na, work: primalCost }
    : { solver: picked, activeItems: na, users: m, cells: m * m + m * n, work: m ** 3 / 2 + 2 * m * nnz + n * nnz };
}

/**
 * Calls `visit(i, p, diag)` for every item i that has a training user, with row i of P (dense,
 * length nItems) and diag(P). Row i of B is −p/diag (diagonal zeroed); column i of B is −p/p[i].
 *
 * @example
 * ```ts
 * solveEaseRows(lists, 100, (i, p, diag) => { ... });
 * ```
 */
export function solveEaseRows(
  x: UserItemLists,
  l2: number,
  visit: (i: number, p: Float64Array, diag: Float64Array) => void,
  opts: { solver?: 'auto' | 'primal' | 'dual'; onProgress?: (f: number) => void } = {},
): void {
  if (!(l2 > 0)) throw new ModelError(`l2 must be > 0, got ${l2}`);
  const n = x.nItems;
  const m = x.ptr.length - 1;
  // Items nobody trained on have a zero row in B; leaving them out shrinks the primal solve.
  const active: number[] = [];
  const pos = new Int32Array(n).fill(-1);
  const seen = new Uint8Array(n);
  for (let e = 0; e < x.items.length; e++) seen[x.items[e]] = 1;
  for (let i = 0; i < n; i++) if (seen[i]) pos[i] = active.push(i) - 1;
  const na = active.length;
  const nnz = x.items.length;
  const { solver } = planEaseSolve(x, opts.solver ?? 'auto');
  const progress = opts.onProgress ?? (() => {});
  const diag = new Float64Array(n);
  const p = new Float64Array(n);

  if (solver === 'primal') {
    const g = new Float64Array(na * na);
    for (let u = 0; u < m; u++) {
      for (let a = x.ptr[u]; a < x.ptr[u + 1]; a++) {
        const ia = pos[x.items[a]];
        for (let b = x.ptr[u]; b < x.ptr[u + 1]; b++) {
          const ib = pos[x.items[b]];
          if (ib <= ia) g[ia * na + ib] += 1;
        }
      }
    }
    for (let i = 0; i < na; i++) g[i * na + i] += l2;
    invertSpdInPlace(g, na, (f) => progress(0.9 * f));
    for (let a = 0; a < na; a++) diag[active[a]] = g[a * na + a];
    for (let a = 0; a < na; a++) {
      p.fill(0);
      const r = a * na;
      for (let b = 0; b < na; b++) p[active[b]] = g[r + b];
      visit(active[a], p, diag);
      if ((a & 255) === 0) progress(0.9 + (0.1 * a) / na);
    }
    progress(1);
    return;
  }

  // Dual: K = XXᵀ + λI over users, via each item's user list.
  const upos = new Int32Array(n + 1);
  for (let e = 0; e < nnz; e++) upos[x.items[e] + 1]++;
  for (let i = 0; i < n; i++) upos[i + 1] += upos[i];
  const fill = upos.slice(0, n);
  const users = new Int32Array(nnz);
  for (let u = 0; u < m; u++) for (let e = x.ptr[u]; e < x.ptr[u + 1]; e++) users[fill[x.items[e]]++] = u;
  const k = new Float64Array(m * m);
  for (let i = 0; i < n; i++) {
    for (let a = upos[i]; a < upos[i + 1]; a++) {
      const ua = users[a];
      for (let b = upos[i]; b <= a; b++) k[ua * m + users[b]] += 1;
    }
  }
  // users[] per item is ascending in u, so every pair above landed in the lower triangle.
  for (let u = 0; u < m; u++) k[u * m + u] += l2;
  invertSpdInPlace(k, m, (f) => progress(0.3 * f));
  // M = K⁻¹X, users × items: M[u, j] = Σ_{v has j} K⁻¹[u, v].
  const mm = new Float64Array(m * n);
  for (let u = 0; u < m; u++) {
    const ru = u * m;
    const rm = u * n;
    for (let v = 0; v < m; v++) {
      const kv = k[ru + v];
      for (let e = x.ptr[v]; e < x.ptr[v + 1]; e++) mm[rm + x.items[e]] += kv;
    }
    if ((u & 63) === 0) progress(0.3 + (0.3 * u) / m);
  }
  // diag P_jj = (1 − Σ_{u has j} M[u, j]) / λ.
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let a = upos[j]; a < upos[j + 1]; a++) s += mm[users[a] * n + j];
    diag[j] = (1 - s) / l2;
  }
  for (const i of active) {
    // Row i of P = (eᵢ − Σ_{u has i} M[u, :]) / λ.
    p.fill(0);
    for (let a = upos[i]; a < upos[i + 1]; a++) {
      const rm = users[a] * n;
      for (let j = 0; j < n; j++) p[j] -= mm[rm + j];
    }
    p[i] += 1;
    for (let j = 0; j < n; j++) p[j] /= l2;
    visit(i, p, diag);
    if ((i & 255) === 0) progress(0.6 + (0.4 * i) / n);
  }
  progress(1);
}

/**
 * Trains EASE and keeps `width` neighbours per item.
 *
 * @example
 * ```ts
 * const model = trainSparseEase({ ptr, items, nItems }, { l2: 100, width: 32 });
 * ```
 */
export function trainSparseEase(x: UserItemLists, o: SparseEaseOptions): SparseItemModel {
  const n = x.nItems;
  const width = Math.min(o.width, Math.max(n - 1, 1));
  const prune = o.prune ?? 'row';
  const model = emptySparseModel(n, width, prune === 'row' ? 'out' : 'in');
  const b = new Float64Array(n);
  solveEaseRows(
    x,
    o.l2,
    (i, p, diag) => {
      if (prune === 'row') for (let j = 0; j < n; j++) b[j] = diag[j] > 0 ? -p[j] / diag[j] : 0;
      else for (let j = 0; j < n; j++) b[j] = -p[j] / p[i];
      o.filter?.(i, b);
      pruneRow(b, i, width, model.index, model.weight, i * width, o.positiveOnly ?? false);
    },
    { solver: o.solver ?? 'auto', ...(o.onProgress ? { onProgress: o.onProgress } : {}) },
  );
  return model;
}
