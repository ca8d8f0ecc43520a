/**
 * The federated simulation behind `localrec simulate`: every user of a data set is a simulated
 * device running the REAL client round (`syncOnce`: pull, local training, clip, noise, quantize,
 * POST) against a real aggregation server, each with its own Rényi-DP accountant and, as its only
 * data, its own training history from the leave-one-out split (so held-out items are never seen).
 * After every `evalEvery` rounds the current GLOBAL model is scored with the same protocol, metrics
 * and user-side scoring as `localrec eval`'s `localrec` model.
 *
 * Pure apart from the server it talks to: the caller passes the split and receives plain objects.
 */
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isPrivacyBudgetError, ValidationError } from '../errors.js';
import type { EvalModel } from '../eval/eval-model.js';
import { NO_WEIGHTING, weightedHistory, type HistoryWeighting } from '../eval/history-weighting.js';
import { evaluateModel } from '../eval/runner.js';
import type { Split } from '../eval/split.js';
import { createItemTable, type ItemTable } from '../model/item-table.js';
import { Random } from '../model/random.js';
import { userVector } from '../model/score.js';
import type { TrainConfig } from '../model/train.js';
import { DEFAULT_DELTA, RdpAccountant } from './dp.js';
import { DEFAULT_SUBSPACE_SCALE } from './subspace.js';
import { parseServerConfig, syncOnce, type FetchLike, type ServerConfig } from './sync.js';
import { decodeModel, toHex, sha256 } from './wire.js';

export interface SimulateOptions {
  /** Simulated rounds; each samples `clientsPerRound` devices. */
  rounds: number;
  clientsPerRound: number;
  /** Server settings (ignored with an external `server` URL: its own config rules). */
  clip: number;
  noiseMultiplier: number;
  minClients: number;
  /** `subspace`: federated subspace iteration, no local training (src/federated/subspace.ts). */
  aggregator?: 'fedavg' | 'fedadam' | 'subspace';
  /** `subspace` only: scale of the published factors (server option of the same name; default 32). */
  subspaceScale?: number;
  /** How the server combines a round per coordinate (default `mean`); see `createServer`. */
  robust?: 'mean' | 'trimmed-mean' | 'median';
  /** β of `trimmed-mean` (server default 0.1). */
  trimFraction?: number;
  serverLearningRate?: number;
  /** Server: shrink each item row of a round's delta for the known noise (see `createServer`). */
  denoise?: 'none' | 'rows' | 'directions';
  /**
   * Server: federated training updates only the `trainRows` most popular items (by training count;
   * the initial table is ordered that way when this is set). Default all.
   */
  trainRows?: number;
  /** Server: `false` keeps the initial popularity biases and trains the factors only. Default true. */
  trainBiases?: boolean;
  /**
   * Secure aggregation with distributed noise (server option of the same name): cohorts of
   * `minClients` devices, each adding N(0, (σC)²/K); `clientsPerRound` must be a multiple of K, and
   * the devices of a round are drawn among those that can still send (budget left, data to send).
   */
  secureAggregation?: boolean | { bits?: number; range?: number; degree?: number; minSurvivors?: number };
  /**
   * Secure aggregation, in-process server only: the share of each cohort's devices (rounded) that
   * lose their connection when they upload (after joining and masking), as shoppers who close the
   * tab. With `minSurvivors` ≤ K − dropped the cohort is recovered; otherwise it is aborted. The
   * server's clock jumps past the upload deadline once every other member has uploaded. Default 0.
   */
  dropout?: number;
  /** Per-device ε budget (default 8); `Infinity` for none (needed with σ = 0). */
  budget: number;
  delta?: number;
  dim: number;
  seed: number;
  /** `memory` (in-process server, default), `sqlite` (in-process, temp data dir) or an http(s) URL. */
  server?: string;
  /** Evaluate the global model every this many rounds (the last round always). Default 1. */
  evalEvery?: number;
  /** Test users sampled for intermediate evaluations (0 = all). The final one uses all. Default 500. */
  evalUsers?: number;
  k?: number;
  /** How the device weights its history when scoring (same as `localrec eval --recency/--confidence`). */
  weighting?: HistoryWeighting;
  /** Softmax temperature used for scoring and training (default 1, as in `localrec eval`). */
  temperature?: number;
  /** Local training on the device (merged over syncOnce's `{ epochs: 2 }`). */
  localTrain?: Partial<TrainConfig>;
  /** TensorFlow.js backend for local training, scoring and the central model: `wasm` (default) or `cpu` (same figures, slower). */
  backend?: 'wasm' | 'cpu';
  /** Initial global model: popularity biases from training counts (default) or flat. */
  init?: 'popularity' | 'flat';
  /**
   * With `init: 'popularity'`: biases a·ln(1 + count) instead of ln(1 + count) / max (see
   * `createItemTable`'s `popularityScale`). Matters most with `trainBiases: false`.
   */
  biasScale?: number;
  /** Also train the same model centrally (no DP) for the comparison ratio. */
  central?: boolean | { epochs?: number };
  data?: string;
  /** Receives each JSON line (an object), in order. */
  onLine?: (line: SimRoundLine | SimFinalLine) => void;
  onProgress?: (stage: string, fraction: number) => void;
  log?: (message: string) => void;
  /** Injected fetch (tests); default: global fetch to the server on loopback. */
  fetch?: FetchLike;
}

export interface SimRoundLine {
  round: number;
  /** Global model version after the round. */
  version: number;
  hr: number;
  ndcg: number;
  /** Test users this evaluation scored. */
  evalUsers: number;
  /** Largest ε any device has spent (null when unbounded: σ = 0). */
  epsilonMax: number | null;
  /** Mean ε over the devices that spent any (sent, or dropped out at upload; 0 when none did). */
  epsilonMean: number | null;
  /** Mean ε over the whole population (devices that never sent count as 0). */
  epsilonMeanAll: number | null;
  /**
   * Bytes of one update body: what one client uploads in one round (it sends at most one). Under
   * secure aggregation the body only: joining a cohort (65 B) and, with dropout recovery, its
   * confirmation and share messages (16 B per mask neighbour each) come on top.
   */
  bytesPerClientPerRound: number;
  /** Updates sent, devices with nothing to train on, devices refusing for budget, in this round. */
  updatesSent: number;
  clientsWithNothing: number;
  clientsSkippedForBudget: number;
  /** Milliseconds since the simulation started (training, syncing and evaluation). */
  wallMs: number;
}

export interface CentralResult {
  hr: number;
  ndcg: number;
  ms: number;
}

export interface SimFinalLine {
  final: true;
  data: string;
  devices: number;
  items: number;
  testUsers: number;
  k: number;
  rounds: number;
  clientsPerRound: number;
  clip: number;
  noiseMultiplier: number;
  budget: number | null;
  delta: number;
  dim: number;
  minClients: number;
  /** Rows federated training updates (the most popular items) and whether it trains their biases. */
  trainRows: number;
  trainBiases: boolean;
  /**
   * Initial biases a·ln(1 + count) (null: ln(1 + count) / max, the default; also null with an
   * external server, which made its own initial table).
   */
  biasScale: number | null;
  /**
   * The server's aggregator (`fedavg`, `fedadam`, `subspace`, or whatever an external server
   * names), and the scale of its factors under `subspace` (else null).
   */
  aggregator: string;
  subspaceScale: number | null;
  /** Whether the server ran secure aggregation (cohorts of `minClients`). */
  secureAggregation: boolean;
  server: string;
  /** Global model version at the end. */
  version: number;
  /** Metrics of the final global model on ALL test users. */
  hr: number;
  ndcg: number;
  /** Same, for the initial model (version 0): what federated training has to beat. */
  initialHr: number;
  initialNdcg: number;
  epsilonMax: number | null;
  epsilonMean: number | null;
  epsilonMeanAll: number | null;
  /** Devices that spent privacy budget: sent at least one update, or dropped out while uploading one. */
  devicesParticipated: number;
  updatesSent: number;
  clientsWithNothing: number;
  clientsSkippedForBudget: number;
  /** With `dropout`: devices that lost their connection at upload, and the cohorts recovered or aborted. */
  dropouts?: { devices: number; cohortsRecovered: number; cohortsAborted: number };
  bytesPerClientPerRound: number;
  /** Bytes of the float32 global model a device downloads when the version changed. */
  modelBytes: number;
  wallMs: number;
  central?: CentralResult;
  /** Federated ÷ central, when `central` was asked for. */
  ratio?: { hr: number; ndcg: number };
}

/** The result of {@link simulate}: every line it emitted, and the final global table. */
export interface SimulateResult {
  lines: SimRoundLine[];
  final: SimFinalLine;
  table: ItemTable;
  accountants: RdpAccountant[];
}

const round5 = (x: number): number => Math.round(x * 1e5) / 1e5;
const epsOut = (x: number): number | null => (Number.isFinite(x) ? round5(x) : null);

/**
 * Scores a fixed item table exactly as `LocalrecModel.score` does (src/eval/localrec-model.ts):
 * `bias + V·z / temperature`, z the weighted mean of the user's training items' embeddings.
 * `fit` does nothing: the table comes from the federation.
 */
export class TableModel implements EvalModel {
  readonly name = 'localrec-federated';
  constructor(
    private readonly table: ItemTable,
    private readonly weighting: HistoryWeighting,
    private readonly temperature = 1,
    private split?: Split,
  ) {}

  get bytesPerItem(): number {
    return (this.table.dim + 1) * 4;
  }

  fit(split: Split): void {
    this.split = split;
  }

  score(user: number, out: Float32Array): void {
    const t = this.table;
    const h = weightedHistory(this.split!.train, user, this.weighting);
    const profile = Array.from(h.items, (row, e) => ({ row, weight: h.weights[e]!, action: 'purchase' as const, lastT: 0 }));
    const z = userVector(t, profile);
    const d = t.dim;
    const inv = 1 / this.temperature;
    for (let j = 0; j < t.itemIds.length; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += t.factors[j * d + k]! * z[k]!;
      out[j] = t.bias[j]! + s * inv;
    }
  }
}

/** The split with only some test users (a seeded sample), for quick intermediate evaluations. */
export function sampleTestUsers(split: Split, count: number, seed: number): Split {
  if (!(count > 0) || count >= split.testUsers.length) return split;
  const all = Array.from(split.testUsers);
  new Random(seed).shuffle(all);
  const users = Int32Array.from(all.slice(0, count)).sort();
  return { ...split, testUsers: users };
}

/**
 * Evaluates an item table on a split with the `localrec eval` loop (full ranking, training items
 * masked, HR/NDCG@k).
 */
export async function evaluateTable(
  table: ItemTable,
  split: Split,
  o: { k?: number; weighting?: HistoryWeighting; temperature?: number; data?: string } = {},
): Promise<{ hr: number; ndcg: number; testUsers: number }> {
  const r = await evaluateModel(new TableModel(table, o.weighting ?? NO_WEIGHTING, o.temperature ?? 1), split, { k: o.k ?? 10, data: o.data ?? '' });
  return { hr: r.hr, ndcg: r.ndcg, testUsers: r.testUsers };
}

/** Item counts in the training part: the popularity hint the shop knows from its own sales. */
export function trainPopularity(split: Split): Float32Array {
  const pop = new Float32Array(split.itemIds.length);
  for (const i of split.train.items) pop[i]!++;
  return pop;
}

/**
 * The model every device starts from: the same initialization as the central `localrec` model.
 * `order: 'popularity'` puts its rows in descending order of training count (ties in data set
 * order), each item keeping the values it has in data set order, so the first rows are the ones a
 * server with `trainRows` trains.
 */
export function initialTable(
  split: Split,
  dim: number,
  seed: number,
  init: 'popularity' | 'flat' = 'popularity',
  order: 'data' | 'popularity' = 'data',
  biasScale?: number,
): ItemTable {
  const t = createItemTable(split.itemIds, dim, {
    seed,
    ...(init === 'popularity' ? { popularity: trainPopularity(split), ...(biasScale !== undefined ? { popularityScale: biasScale } : {}) } : {}),
  });
  return order === 'data' ? t : alignTo(t, catalogOf(split).items.map((it) => it.id));
}

function positiveInt(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) throw new ValidationError(name, `must be a positive integer, got ${v}`);
  return v;
}

interface ServerHandle {
  url: string;
  label: string;
  /** A server elsewhere (`--server URL`), whose config may differ from the options. */
  external: boolean;
  /** In-process servers answer through the hono app without sockets. */
  fetch?: FetchLike;
  /** In-process servers: moves the server's clock forward by `ms` (the simulation's dropouts). */
  advanceClock?: (ms: number) => void;
  close(): Promise<void>;
}

/** The settings a run is ruled by, read from the server's `GET /v1/config`. */
interface RunSettings {
  clip: number;
  noiseMultiplier: number;
  minClients: number;
  dim: number;
  trainRows: number;
  trainBiases: boolean;
  aggregator: string;
  subspaceScale: number | null;
  /** Secure aggregation's cohort size, null without it. */
  cohortSize: number | null;
}

/** The factors' scale a server with this aggregator publishes at (null unless `subspace`). */
const subspaceScaleOf = (aggregator: string, scale: number | undefined): number | null => (aggregator === 'subspace' ? (scale ?? DEFAULT_SUBSPACE_SCALE) : null);

function runSettings(c: ServerConfig): RunSettings {
  const aggregator = c.aggregator ?? 'fedavg';
  return {
    clip: c.clip,
    noiseMultiplier: c.noiseMultiplier,
    minClients: c.minClients,
    dim: c.dim,
    trainRows: c.trainRows ?? c.items,
    trainBiases: c.trainBiases ?? true,
    aggregator,
    subspaceScale: subspaceScaleOf(aggregator, c.subspaceScale),
    cohortSize: c.secureAggregation ? c.secureAggregation.cohortSize : null,
  };
}

/** Where an external server's settings differ from the options, as `name server (given x)`. */
function settingsDiffer(o: SimulateOptions, items: number, r: RunSettings): string[] {
  const given: Record<keyof RunSettings, unknown> = {
    clip: o.clip,
    noiseMultiplier: o.noiseMultiplier,
    minClients: o.minClients,
    dim: o.dim,
    trainRows: o.trainRows ?? items,
    trainBiases: o.trainBiases ?? true,
    aggregator: o.aggregator ?? 'fedavg',
    subspaceScale: subspaceScaleOf(o.aggregator ?? 'fedavg', o.subspaceScale),
    cohortSize: o.secureAggregation ? o.minClients : null,
  };
  return (Object.keys(given) as (keyof RunSettings)[]).filter((key) => given[key] !== r[key]).map((key) => `${key} ${String(r[key])} (given ${String(given[key])})`);
}

/**
 * The aggregation server for the run. `memory` and `sqlite` build the very app `localrec serve`
 * runs (RoundCoordinator + createApp, with startServer's defaults) and call it in-process: no
 * sockets, so thousands of devices cannot trip over keep-alive races on a loaded machine. An
 * http(s) URL is a real server elsewhere (its own config rules).
 */
async function openServer(o: SimulateOptions, table: ItemTable, log: (m: string) => void): Promise<ServerHandle> {
  const kind = o.server ?? 'memory';
  // Paths are appended to it (`${url}/v1/model`): a trailing slash would make them `//v1/…`.
  if (/^https?:\/\//.test(kind)) return { url: kind.replace(/\/+$/, ''), label: kind, external: true, close: async () => {} };
  if (kind !== 'memory' && kind !== 'sqlite') throw new ValidationError('--server', `must be memory, sqlite or an http(s) URL, got '${kind}'`);
  const { createServer } = await import('../server/index.js');
  const dir = kind === 'sqlite' ? await mkdtemp(join(tmpdir(), 'localrec-sim-')) : null;
  // Removed by close() (or below), and also when the process ends before that: Ctrl-C, SIGTERM, or
  // an exit (the CLI's on a closed stdout, `| head -n1`).
  const forget = dir ? removeAtExit(dir) : () => {};
  let skew = 0;
  try {
    // The very app `localrec serve` runs, with its option checks and defaults.
    const { app, storage } = await createServer({
      now: () => Date.now() + skew,
      dataDir: dir,
      initialTable: table,
      clip: o.clip,
      noiseMultiplier: o.noiseMultiplier,
      minClients: o.minClients,
      aggregator: o.aggregator ?? 'fedavg',
      ...(o.subspaceScale !== undefined ? { subspaceScale: o.subspaceScale } : {}),
      ...(o.robust ? { robust: o.robust } : {}),
      ...(o.trimFraction !== undefined ? { trimFraction: o.trimFraction } : {}),
      ...(o.serverLearningRate !== undefined ? { serverLearningRate: o.serverLearningRate } : {}),
      ...(o.denoise ? { denoise: o.denoise } : {}),
      ...(o.trainRows !== undefined ? { trainRows: o.trainRows } : {}),
      ...(o.trainBiases !== undefined ? { trainBiases: o.trainBiases } : {}),
      ...(o.secureAggregation ? { secureAggregation: o.secureAggregation } : {}),
      rateLimit: false,
      log: (line: string) => log(`server: ${line}`),
    });
    return {
      url: 'http://127.0.0.1',
      label: kind,
      external: false,
      fetch: (url, init) => Promise.resolve(app.fetch(new Request(url, init as RequestInit))),
      advanceClock: (ms) => (skew += ms),
      close: async () => {
        await storage.close();
        if (dir) await rm(dir, { recursive: true, force: true });
        forget();
      },
    };
  } catch (e) {
    if (dir) await rm(dir, { recursive: true, force: true });
    forget();
    throw e;
  }
}

/**
 * Removes the temporary folder `dir` (synchronously: nothing else runs then) when the process
 * exits, or is interrupted (SIGINT, SIGTERM, SIGHUP) before the returned function is called. A
 * signal then still ends the process as it would have (it is raised again once the folder is
 * gone), unless another listener handles it, which decides.
 */
function removeAtExit(dir: string): () => void {
  const remove = () => {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // Exiting: nothing more can be done about it.
    }
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const onSignal = (signal: NodeJS.Signals) => {
    remove();
    forget();
    // No other listener: the default action, the process ends by this signal (exit status 128 + n).
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  };
  const forget = () => {
    process.off('exit', remove);
    for (const signal of signals) process.off(signal, onSignal);
  };
  process.on('exit', remove);
  for (const signal of signals) process.on(signal, onSignal);
  return forget;
}

/**
 * Runs the simulation. Devices of a round sync one after another, each against the server's
 * current version (the server publishes a new version whenever `minClients` updates are pending,
 * so one simulated round may span several versions when clientsPerRound > minClients).
 *
 * @example
 * ```ts
 * const split = looSplit(await loadCsv(file, PRESETS.retail));
 * const r = await simulate(split, { rounds: 20, clientsPerRound: 100, clip: 1, noiseMultiplier: 1, budget: 8, dim: 16, minClients: 10, seed: 1 });
 * r.final.hr; r.final.epsilonMax; // ≤ 8
 * ```
 */
export async function simulate(split: Split, o: SimulateOptions): Promise<SimulateResult> {
  const t0 = performance.now();
  // options.* names: the CLI shows them as the flags the user typed (src/cli.ts inFlagTerms).
  positiveInt('options.rounds', o.rounds);
  positiveInt('options.clientsPerRound', o.clientsPerRound);
  positiveInt('options.dim', o.dim);
  positiveInt('options.minClients', o.minClients);
  if (!(o.budget > 0)) throw new ValidationError('options.budget', `must be > 0 (Infinity for none), got ${o.budget}`);
  const delta = o.delta ?? DEFAULT_DELTA;
  const k = o.k ?? 10;
  const evalEvery = positiveInt('options.evalEvery', o.evalEvery ?? 1);
  const weighting = o.weighting ?? { recencyDecay: 0.5, confidence: 'none' };
  const temperature = o.temperature ?? 1;
  const log = o.log ?? (() => {});
  const progress = o.onProgress ?? (() => {});
  const data = o.data ?? '';

  const backend = o.backend ?? 'wasm';
  if (backend !== 'wasm' && backend !== 'cpu') throw new ValidationError('options.backend', `must be wasm or cpu, got '${String(backend)}'`);
  const tf = await import('../model/tf.js');
  if (backend === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  await tf.setBackend(backend);
  await tf.ready();

  const nUsers = split.userIds.length;
  // Each device's own data: its training items, in order of first occurrence, weight 1 (exactly
  // what the central `localrec` model trains on for this user).
  const histories = Array.from({ length: nUsers }, (_, u) => {
    const rows = split.train.items.subarray(split.train.ptr[u], split.train.ptr[u + 1]);
    return { itemIds: Array.from(rows, (r) => split.itemIds[r]!), weights: Array.from(rows, () => 1) };
  });
  const accountants = Array.from({ length: nUsers }, () => new RdpAccountant());
  const sentCount = new Int32Array(nUsers);

  const start = initialTable(split, o.dim, o.seed, o.init ?? 'popularity', o.trainRows !== undefined ? 'popularity' : 'data', o.biasScale);
  const server = await openServer(o, start, log);
  const lines: SimRoundLine[] = [];
  try {
    const fetchFn: FetchLike = o.fetch ?? server.fetch ?? ((url, init) => fetch(url, init as RequestInit));
    // The global model the devices hold: passed as `held` so an unchanged version is a 304.
    let held: { table: ItemTable; hash: string } | undefined;
    const itemIndex = new Map(split.itemIds.map((id, i) => [id, i]));
    const initialBytes = await (await fetchFn(`${server.url}/v1/model`)).arrayBuffer();
    const modelBytes = initialBytes.byteLength;
    held = { table: decodeModel(new Uint8Array(initialBytes)).table, hash: toHex(await sha256(new Uint8Array(initialBytes))) };
    const initialVersion = held.table.version;
    const overlap = held.table.itemIds.filter((id) => itemIndex.has(id)).length;
    if (overlap === 0) throw new ValidationError('--server', `the server's model has none of the data set's ${split.itemIds.length} items (start it with the catalog from --write-catalog)`);
    if (overlap < split.itemIds.length) log(`the server's model has ${overlap} of the data set's ${split.itemIds.length} items; the others are never recommended`);
    // The server's own config rules the run (an external server's may differ from the options).
    const cfgRes = await fetchFn(`${server.url}/v1/config`);
    if (!cfgRes.ok) throw new ValidationError('options.server', `GET /v1/config answered ${cfgRes.status}`);
    const serverConfig = parseServerConfig((await cfgRes.json()) as Partial<ServerConfig>);
    const ruled = runSettings(serverConfig);
    if (server.external) {
      const differ = settingsDiffer(o, split.itemIds.length, ruled);
      if (differ.length) log(`the server at ${server.url} rules this run, not the options: ${differ.join(', ')}`);
    }
    const initialEval = await evaluateTable(alignTo(held.table, split.itemIds), split, { k, weighting, temperature, data });
    log(`version 0 (initial model): HR@${k} ${initialEval.hr}, NDCG@${k} ${initialEval.ndcg} on ${initialEval.testUsers} test users`);

    const sampler = new Random(o.seed * 7919 + 17);
    const evalSplit = sampleTestUsers(split, o.evalUsers ?? 500, o.seed);
    let updateBytes = 0;
    let totals = { sent: 0, nothing: 0, skipped: 0 };
    const epsStats = () => {
      let max = 0;
      let sum = 0;
      let n = 0;
      let sumAll = 0;
      for (let u = 0; u < nUsers; u++) {
        // Every device whose accountant holds a release: those that sent, and those that dropped
        // out at upload (their update was noised and on its way, so its ε is spent).
        if (accountants[u]!.releases === 0) continue;
        const e = accountants[u]!.epsilon(delta);
        max = Math.max(max, e);
        sum += e;
        sumAll += e;
        n++;
      }
      return { max: epsOut(max), mean: epsOut(n ? sum / n : 0), meanAll: epsOut(sumAll / nUsers), participated: n };
    };

    const M = Math.min(o.clientsPerRound, nUsers);
    const cohortSize = ruled.cohortSize;
    if (cohortSize !== null && nUsers < cohortSize) {
      throw new ValidationError(server.external ? 'options.server' : 'options.minClients', `the data set has only ${nUsers} devices, fewer than ${server.external ? "the server's" : 'the'} secure-aggregation cohort size (${cohortSize})`);
    }
    if (cohortSize !== null && M % cohortSize !== 0) {
      // Capped at the devices there are: say so, not a value the user never gave.
      throw new ValidationError(
        'options.clientsPerRound',
        M < o.clientsPerRound
          ? `is ${o.clientsPerRound}, but the data set has only ${nUsers} devices; with secure aggregation a round is whole cohorts of ${cohortSize}, e.g. ${M - (M % cohortSize)}`
          : `must be a multiple of the server's cohort size (${cohortSize}) with secure aggregation, got ${M}`,
      );
    }
    if (cohortSize !== null) {
      // A cohort draws distinct devices that can send (≥ 2 distinct training items): with fewer
      // than a round needs, the first round would stop before anything was sent.
      const canSend = histories.filter((h) => new Set(h.itemIds).size >= 2).length;
      if (canSend < M) {
        throw new ValidationError(
          canSend < cohortSize ? (server.external ? 'options.server' : 'options.minClients') : 'options.clientsPerRound',
          `a round under secure aggregation needs ${M} devices that can send, but only ${canSend} of the data set's ${nUsers} have the 2 distinct training items an update needs`,
        );
      }
    }
    const dropout = o.dropout ?? 0;
    if (dropout > 0 && (cohortSize === null || !server.advanceClock)) throw new ValidationError('options.dropout', 'simulates devices that drop out of secure-aggregation cohorts, so it needs --secure-aggregation on the in-process server (memory or sqlite)');
    const dropStats = { devices: 0, cohortsRecovered: 0, cohortsAborted: 0 };
    const order = Array.from({ length: nUsers }, (_, u) => u);
    const syncDevice = (u: number, r: number, f: FetchLike = fetchFn, attempts = 3) =>
      syncOnce({
        serverUrl: server.url,
        fetch: f,
        accountant: accountants[u]!,
        budget: o.budget,
        delta,
        held,
        history: [histories[u]!],
        train: { temperature, ...o.localTrain, seed: o.seed * 1_000_003 + r * 7_919 + u },
        attempts,
        backoffMs: 50,
        cohortPollMs: 2,
      });
    /** One JSON line for round r: what the server publishes now (a device that syncs next would get it). */
    const roundLine = async (r: number, c: { sent: number; nothing: number; skipped: number }) => {
      const cur = await pullCurrent(server.url, fetchFn, held!);
      held = cur;
      const m = await evaluateTable(alignTo(cur.table, split.itemIds), evalSplit, { k, weighting, temperature, data });
      const eps = epsStats();
      const line: SimRoundLine = {
        round: r,
        version: cur.table.version,
        hr: m.hr,
        ndcg: m.ndcg,
        evalUsers: m.testUsers,
        epsilonMax: eps.max,
        epsilonMean: eps.mean,
        epsilonMeanAll: eps.meanAll,
        bytesPerClientPerRound: updateBytes,
        updatesSent: c.sent,
        clientsWithNothing: c.nothing,
        clientsSkippedForBudget: c.skipped,
        wallMs: Math.round(performance.now() - t0),
      };
      lines.push(line);
      o.onLine?.(line);
    };
    let roundsRun = 0;
    let lastRound = { sent: 0, nothing: 0, skipped: 0 };
    for (let r = 1; r <= o.rounds; r++) {
      const c = { sent: 0, nothing: 0, skipped: 0 };
      if (cohortSize !== null) {
        // Cohorts must fill: draw M devices among those that can send (budget left, ≥ 2 items).
        const eligible = order.filter((u) => histories[u]!.itemIds.length >= 2 && accountants[u]!.canSpend(ruled.noiseMultiplier, o.budget, delta));
        if (eligible.length < M) {
          log(`round ${r}: only ${eligible.length} devices can still send, fewer than ${M}; stopping after ${roundsRun} of ${o.rounds} rounds`);
          // The last round that ran gets its line, whatever --eval-every said.
          if (roundsRun > 0 && lines.at(-1)?.round !== roundsRun) await roundLine(roundsRun, lastRound);
          break;
        }
        for (let i = 0; i < M; i++) {
          const j = i + sampler.int(eligible.length - i);
          [eligible[i], eligible[j]] = [eligible[j]!, eligible[i]!];
        }
        for (let start = 0; start < M; start += cohortSize) {
          const cohort = eligible.slice(start, start + cohortSize);
          let done = start;
          // Dropouts: the members at seeded random places of the cohort's ring (the indices the server
          // gives them as they join) lose their connection at upload. Chosen by the server's index,
          // not by the order devices are started in: members are numbered in the order their joins
          // arrive, which a busy machine reorders, and a contiguous run of indices (the first ones)
          // is the easiest case for recovery. Once every other member's upload is in, the server's
          // clock jumps past the upload deadline, so recovery starts at once instead of after
          // minutes of real time.
          const dropCount = Math.round(dropout * cohort.length);
          const places = Array.from({ length: cohort.length }, (_, i) => i);
          for (let i = 0; i < dropCount; i++) {
            const j = i + sampler.int(places.length - i);
            [places[i], places[j]] = [places[j]!, places[i]!];
          }
          const dropPlaces = new Set(places.slice(0, dropCount));
          const placeOf = new Map<number, number>();
          const dropped = (u: number) => dropPlaces.has(placeOf.get(u) ?? -1);
          const expected = cohort.length - dropCount;
          let uploaded = 0;
          const isUpload = (url: string) => url.endsWith('/v1/secagg/updates');
          const deviceFetch =
            (u: number): FetchLike =>
            async (url, init) => {
              if (isUpload(url) && dropped(u)) throw new Error('connection lost (simulated dropout)');
              const res = await fetchFn(url, init);
              if (url.endsWith('/v1/secagg/join') && res.ok) placeOf.set(u, ((await res.clone().json()) as { index: number }).index);
              if (isUpload(url) && res.status === 202 && ++uploaded === expected && dropCount > 0) server.advanceClock!((serverConfig.secureAggregation?.uploadTimeoutMs ?? serverConfig.secureAggregation?.timeoutMs ?? 600_000) + 1);
              return res;
            };
          const settled = await Promise.allSettled(cohort.map((u) => syncDevice(u, r, deviceFetch(u)).finally(() => progress(`round ${r}/${o.rounds}`, ++done / M))));
          const drops = new Set(cohort.filter(dropped));
          if (drops.size !== dropCount) throw new ValidationError('simulation', `${drops.size} devices of a cohort dropped out, ${dropCount} were to`);
          let outcome: string | undefined;
          settled.forEach((s, i) => {
            if (drops.has(cohort[i]!)) {
              if (s.status === 'fulfilled') throw new ValidationError('simulation', `device ${cohort[i]} was to drop out but its upload went through`);
              dropStats.devices++;
              return;
            }
            if (s.status === 'rejected') throw s.reason;
            const res = s.value;
            if (!res.sent) throw new ValidationError('simulation', `device ${cohort[i]} had nothing to send in a cohort`);
            c.sent++;
            sentCount[cohort[i]!]!++;
            updateBytes = res.uploadedBytes;
            outcome ??= res.cohort?.outcome;
          });
          if (drops.size > 0) {
            if (outcome === 'published') dropStats.cohortsRecovered++;
            else dropStats.cohortsAborted++;
            log(`round ${r}: ${drops.size} of ${cohort.length} devices dropped out; cohort ${outcome === 'published' ? 'recovered' : (outcome ?? 'ended')}`);
          }
          held = await pullCurrent(server.url, fetchFn, held);
        }
      } else {
        // M distinct devices, seeded: a partial Fisher–Yates over all users.
        for (let i = 0; i < M; i++) {
          const j = i + sampler.int(nUsers - i);
          [order[i], order[j]] = [order[j]!, order[i]!];
        }
        for (let i = 0; i < M; i++) {
          const u = order[i]!;
          try {
            const res = await syncDevice(u, r);
            held = { table: res.global, hash: res.globalHash };
            if (res.sent) {
              c.sent++;
              sentCount[u]++;
              updateBytes = res.uploadedBytes;
            } else c.nothing++;
          } catch (e) {
            if (!isPrivacyBudgetError(e)) throw e;
            c.skipped++;
          }
          progress(`round ${r}/${o.rounds}`, (i + 1) / M);
        }
      }
      totals = { sent: totals.sent + c.sent, nothing: totals.nothing + c.nothing, skipped: totals.skipped + c.skipped };
      roundsRun = r;
      lastRound = c;
      if (r % evalEvery !== 0 && r !== o.rounds) continue;
      await roundLine(r, c);
    }

    if (held.table.version === initialVersion) {
      // The figures below are the initial model's: said, not passed off as a trained one's.
      log(
        `warning: no round was published (the model is still version ${initialVersion}): the server publishes once ${ruled.minClients} updates are in, ` +
          `and this run sent ${totals.sent}; the figures are the initial model's (lower --min-clients, or raise --clients-per-round or --rounds)`,
      );
    }
    progress('final evaluation', 0);
    const fin = await evaluateTable(alignTo(held.table, split.itemIds), split, { k, weighting, temperature, data });
    progress('final evaluation', 1);
    const eps = epsStats();
    // The federated run's time, before the central reference (which reports its own `ms`).
    const wallMs = Math.round(performance.now() - t0);
    let central: CentralResult | undefined;
    if (o.central) {
      const epochs = typeof o.central === 'object' && o.central.epochs ? o.central.epochs : 4;
      central = await trainCentral(split, { dim: ruled.dim, seed: o.seed, epochs, weighting, temperature, k, data, localTrain: o.localTrain, backend, onProgress: progress });
    }
    const final: SimFinalLine = {
      final: true,
      data,
      devices: nUsers,
      items: split.itemIds.length,
      testUsers: fin.testUsers,
      k,
      rounds: roundsRun,
      clientsPerRound: M,
      clip: ruled.clip,
      noiseMultiplier: ruled.noiseMultiplier,
      budget: Number.isFinite(o.budget) ? o.budget : null,
      delta,
      dim: ruled.dim,
      minClients: ruled.minClients,
      trainRows: ruled.trainRows,
      trainBiases: ruled.trainBiases,
      biasScale: server.external ? null : (o.biasScale ?? null),
      aggregator: ruled.aggregator,
      subspaceScale: ruled.subspaceScale,
      secureAggregation: cohortSize !== null,
      server: server.label,
      version: held.table.version,
      hr: fin.hr,
      ndcg: fin.ndcg,
      initialHr: initialEval.hr,
      initialNdcg: initialEval.ndcg,
      epsilonMax: eps.max,
      epsilonMean: eps.mean,
      epsilonMeanAll: eps.meanAll,
      devicesParticipated: eps.participated,
      updatesSent: totals.sent,
      clientsWithNothing: totals.nothing,
      clientsSkippedForBudget: totals.skipped,
      ...(dropout > 0 ? { dropouts: dropStats } : {}),
      bytesPerClientPerRound: updateBytes,
      modelBytes,
      wallMs,
    };
    if (central) {
      final.central = central;
      final.ratio = { hr: central.hr > 0 ? round5(fin.hr / central.hr) : 0, ndcg: central.ndcg > 0 ? round5(fin.ndcg / central.ndcg) : 0 };
    }
    o.onLine?.(final);
    return { lines, final, table: held.table, accountants };
  } finally {
    await server.close();
  }
}

/**
 * The table with rows in `itemIds` order (the data set's), for evaluation against a server whose
 * catalog is ordered differently or lacks items: a missing item gets zero factors and a bias that
 * ranks it last. Returns the table itself when the order already matches.
 */
export function alignTo(t: ItemTable, itemIds: readonly string[]): ItemTable {
  if (t.itemIds.length === itemIds.length && t.itemIds.every((id, i) => id === itemIds[i])) return t;
  const rows = new Map(t.itemIds.map((id, i) => [id, i]));
  const d = t.dim;
  const factors = new Float32Array(itemIds.length * d);
  const bias = new Float32Array(itemIds.length).fill(-1e9);
  itemIds.forEach((id, i) => {
    const r = rows.get(id);
    if (r === undefined) return;
    factors.set(t.factors.subarray(r * d, r * d + d), i * d);
    bias[i] = t.bias[r]!;
  });
  return { version: t.version, itemIds: itemIds.slice(), dim: d, factors, bias };
}

/**
 * The shop's catalog for `localrec serve --catalog`: the data set's items with their training
 * counts, most popular first (the order `serve --train-rows` takes its first rows in).
 */
export function catalogOf(split: Split): { items: Array<{ id: string; popularity: number }> } {
  const pop = trainPopularity(split);
  const rows = Array.from(split.itemIds.keys()).sort((a, b) => pop[b]! - pop[a]! || a - b);
  return { items: rows.map((i) => ({ id: split.itemIds[i]!, popularity: pop[i]! })) };
}

/** The server's current model (a 304 keeps the held one). */
async function pullCurrent(url: string, f: FetchLike, held: { table: ItemTable; hash: string }): Promise<{ table: ItemTable; hash: string }> {
  const res = await f(`${url}/v1/model`, { method: 'GET', headers: { 'If-None-Match': `"${held.hash}"` } });
  if (res.status === 304) return held;
  if (!res.ok) throw new ValidationError('options.server', `GET /v1/model answered ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  return { table: decodeModel(bytes).table, hash: res.headers.get('X-Localrec-Model-Hash') ?? toHex(await sha256(bytes)) };
}

/** What {@link centralModel} is built from: the simulation's model and training settings. */
export interface CentralOptions {
  dim: number;
  seed: number;
  epochs: number;
  weighting: HistoryWeighting;
  temperature: number;
  localTrain?: Partial<TrainConfig> | undefined;
  backend?: 'wasm' | 'cpu';
}

/**
 * The same model as the federation trains, to be trained centrally (without DP, on all training
 * histories): `localrec eval`'s `factors` model with the simulation's dim, seed, weighting and
 * local training settings. `fit` it, then read `trainedTable`.
 */
export async function centralModel(o: CentralOptions): Promise<import('../eval/localrec-model.js').LocalrecModel> {
  const { LocalrecModel } = await import('../eval/localrec-model.js');
  const { DEFAULT_TRAIN_CONFIG } = await import('../model/train.js');
  const lt = { ...DEFAULT_TRAIN_CONFIG, ...o.localTrain };
  return new LocalrecModel({
    dim: o.dim,
    epochs: o.epochs,
    batchSize: DEFAULT_TRAIN_CONFIG.batchSize,
    negatives: DEFAULT_TRAIN_CONFIG.negatives,
    learningRate: DEFAULT_TRAIN_CONFIG.learningRate,
    l2: lt.l2,
    maxContext: lt.maxContext,
    temperature: o.temperature,
    backend: o.backend ?? 'wasm',
    seed: o.seed,
    weighting: o.weighting,
  });
}

/** {@link centralModel} trained on the split and scored with the simulation's protocol. */
export async function trainCentral(
  split: Split,
  o: CentralOptions & { k: number; data: string; onProgress?: (stage: string, f: number) => void },
): Promise<CentralResult> {
  const model = await centralModel(o);
  const r = await evaluateModel(model, split, { k: o.k, data: o.data, onProgress: (stage, f) => o.onProgress?.(`central ${stage}`, f) });
  return { hr: r.hr, ndcg: r.ndcg, ms: r.ms };
}
