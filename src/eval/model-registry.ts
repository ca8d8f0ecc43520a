/**
 * The models `localrec eval` can run, their hyper-parameters (one CLI flag each) and how a model
 * spec like `sparse-ease:sparse-width=8:recency=1` overrides them for one model in one run.
 */
import { flagNumber } from '../number-flag.js';
import { ValidationError } from '../errors.js';
import { MAX_NEIGHBOR_WIDTH } from '../model/neighbors.js';
import { DenseEaseModel, SparseEaseModel } from './ease-model.js';
import type { EvalModel } from './eval-model.js';
import { CONFIDENCE_KINDS, checkWeighting, type HistoryWeighting } from './history-weighting.js';
import { IalsModel, MAX_IALS_DIM } from './ials-model.js';
import { ItemKnnModel } from './item-knn-model.js';
import { LocalrecModel } from './localrec-model.js';
import { NeighborModel, type EventKind } from './neighbor-model.js';
import { PopularModel } from './popular-model.js';

export interface ParamSpec {
  description: string;
  default: string;
  /** Parses a flag value; `field` names the option in errors. */
  parse(value: string, field: string): string | number | boolean;
}

const num =
  (lo: number, hi: number, integer = false, loOpen = false) =>
  (v: string, field: string): number => {
    // Number('') is 0 and Number('0x10') 16: only a plain decimal number is one (flagNumber).
    const x = flagNumber(v);
    const ok = Number.isFinite(x) && (loOpen ? x > lo : x >= lo) && x <= hi && (!integer || Number.isInteger(x));
    if (!ok) {
      throw new ValidationError(field, `must be ${integer ? 'an integer' : 'a number'} in ${loOpen ? '(' : '['}${lo}, ${hi}], got '${v}'`);
    }
    return x;
  };
const oneOf =
  (...allowed: string[]) =>
  (v: string, field: string): string => {
    if (!allowed.includes(v)) throw new ValidationError(field, `must be one of ${allowed.join(', ')}, got '${v}'`);
    return v;
  };
const bool = (v: string, field: string): boolean => {
  if (v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  throw new ValidationError(field, `must be true or false, got '${v}'`);
};

/** Every model hyper-parameter, by flag name (without the leading `--`). */
export const PARAMS: Record<string, ParamSpec> = {
  'knn-neighbors': { description: 'item-kNN: neighbours kept per item', default: '20', parse: num(1, 1e6, true) },
  'knn-shrink': { description: 'item-kNN: shrinkage added to the cosine denominator', default: '0', parse: num(0, 1e9) },
  'ease-l2': { description: 'ease, sparse-ease, localrec: L2 penalty on the Gram diagonal', default: '100', parse: num(0, 1e12, false, true) },
  'sparse-width': { description: 'sparse-ease, localrec: neighbours kept per item', default: '32', parse: num(1, 4096, true) },
  'sparse-prune': { description: 'sparse-ease: keep per item its strongest outgoing (row) or incoming (col) weights', default: 'row', parse: oneOf('row', 'col') },
  'sparse-positive': { description: 'sparse-ease: keep only positive weights', default: 'false', parse: bool },
  recency: { description: 'history weight multiplier per step back in time (1 = off); ease, sparse-ease, factors (itemknn, ials: only in the spec, e.g. itemknn:recency=0.5; 1 otherwise)', default: '0.5', parse: num(0, 1, false, true) },
  confidence: { description: `history confidence: ${CONFIDENCE_KINDS.join('|')} (itemknn, ials: only in the spec)`, default: 'none', parse: oneOf(...CONFIDENCE_KINDS) },
  'min-support': { description: 'localrec: customers a published neighbour pair needs at least', default: '3', parse: num(1, 1e9, true) },
  'neighbor-positive': { description: 'localrec: publish only positive neighbour weights', default: 'true', parse: bool },
  'half-life': { description: 'localrec: days for an event’s weight to halve (device profile)', default: '30', parse: num(0, 1e6, false, true) },
  'session-decay': { description: 'localrec: weight kept per later session (device profile)', default: '0.5', parse: num(0, 1, false, true) },
  'step-decay': { description: 'localrec: weight kept per later distinct event time (device profile; 1 = off)', default: '1', parse: num(0, 1, false, true) },
  event: { description: 'localrec: what a data row is on the device: view|purchase (weight = quantity)|rating (weight = stars)', default: 'purchase', parse: oneOf('view', 'purchase', 'rating') },
  'lr-dim': { description: 'factors: embedding size (≤ 64)', default: '32', parse: num(1, 64, true) },
  'lr-epochs': { description: 'factors: passes over the training examples', default: '4', parse: num(1, 1000, true) },
  'lr-batch': { description: 'factors: examples per step', default: '256', parse: num(1, 8192, true) },
  'lr-negatives': { description: 'factors: sampled negatives per step', default: '256', parse: num(0, 100000, true) },
  'lr-rate': { description: 'factors: Adagrad learning rate', default: '0.1', parse: num(0, 10, false, true) },
  'lr-l2': { description: 'factors: L2 penalty on touched rows', default: '0.0001', parse: num(0, 10) },
  'lr-context': { description: 'factors: earlier items forming a target’s context', default: '20', parse: num(1, 1000, true) },
  'lr-temperature': { description: 'factors: softmax temperature', default: '1', parse: num(0.001, 100) },
  backend: { description: 'factors: TensorFlow.js backend, wasm|cpu (same figures; wasm is about 6× faster in Node)', default: 'wasm', parse: oneOf('cpu', 'wasm') },
  'ials-dim': { description: `ials: factors per user and item (≤ ${MAX_IALS_DIM})`, default: '64', parse: num(1, MAX_IALS_DIM, true) },
  'ials-reg': { description: 'ials: L2 penalty on every user and item factor', default: '10', parse: num(0, 1e12, false, true) },
  'ials-alpha': { description: 'ials: confidence of a training pair is 1 + alpha · history weight', default: '3', parse: num(0, 1e6) },
  'ials-iters': { description: 'ials: alternations (a user and an item solve each)', default: '15', parse: num(1, 1000, true) },
  solver: { description: 'EASE solve: auto|primal (items²)|dual (users²)', default: 'auto', parse: oneOf('auto', 'primal', 'dual') },
};

type Params = Record<string, string | number | boolean>;

interface ModelEntry {
  params: string[];
  /**
   * Parameters the model takes only from its spec (`itemknn:recency=0.5`), with their default
   * here: the global flag does not apply to them. The baselines keep the plain history unless asked.
   */
  specOnly?: Record<string, string>;
  create(p: Params, seed: number): EvalModel;
}

/** Plain history for the baselines unless their spec says otherwise. */
const PLAIN_HISTORY = { recency: '1', confidence: 'none' };

const weighting = (p: Params, prefix = ''): HistoryWeighting =>
  checkWeighting({ recencyDecay: p.recency as number, confidence: p.confidence as HistoryWeighting['confidence'] }, prefix || 'options');

export const MODELS: Record<string, ModelEntry> = {
  popular: { params: [], create: () => new PopularModel() },
  itemknn: {
    params: ['knn-neighbors', 'knn-shrink', 'recency', 'confidence'],
    specOnly: PLAIN_HISTORY,
    create: (p) => new ItemKnnModel({ neighbors: p['knn-neighbors'] as number, shrink: p['knn-shrink'] as number, weighting: weighting(p) }),
  },
  ease: {
    params: ['ease-l2', 'recency', 'confidence', 'solver'],
    create: (p) => new DenseEaseModel({ l2: p['ease-l2'] as number, weighting: weighting(p), solver: p.solver as 'auto' }),
  },
  'sparse-ease': {
    params: ['ease-l2', 'sparse-width', 'sparse-prune', 'sparse-positive', 'recency', 'confidence', 'solver'],
    create: (p) =>
      new SparseEaseModel({
        l2: p['ease-l2'] as number,
        width: p['sparse-width'] as number,
        prune: p['sparse-prune'] as 'row',
        positiveOnly: p['sparse-positive'] as boolean,
        weighting: weighting(p),
        solver: p.solver as 'auto',
      }),
  },
  localrec: {
    params: ['ease-l2', 'sparse-width', 'min-support', 'neighbor-positive', 'half-life', 'session-decay', 'step-decay', 'event', 'solver'],
    create: (p) =>
      new NeighborModel({
        l2: p['ease-l2'] as number,
        width: p['sparse-width'] as number,
        minSupport: p['min-support'] as number,
        positiveOnly: p['neighbor-positive'] as boolean,
        halfLifeDays: p['half-life'] as number,
        sessionDecay: p['session-decay'] as number,
        stepDecay: p['step-decay'] as number,
        event: p.event as EventKind,
        solver: p.solver as 'auto',
      }),
  },
  factors: {
    params: ['lr-dim', 'lr-epochs', 'lr-batch', 'lr-negatives', 'lr-rate', 'lr-l2', 'lr-context', 'lr-temperature', 'backend', 'recency', 'confidence'],
    create: (p, seed) =>
      new LocalrecModel({
        dim: p['lr-dim'] as number,
        epochs: p['lr-epochs'] as number,
        batchSize: p['lr-batch'] as number,
        negatives: p['lr-negatives'] as number,
        learningRate: p['lr-rate'] as number,
        l2: p['lr-l2'] as number,
        maxContext: p['lr-context'] as number,
        temperature: p['lr-temperature'] as number,
        backend: p.backend as 'wasm',
        seed,
        weighting: weighting(p),
      }),
  },
  ials: {
    params: ['ials-dim', 'ials-reg', 'ials-alpha', 'ials-iters', 'recency', 'confidence'],
    specOnly: PLAIN_HISTORY,
    create: (p, seed) =>
      new IalsModel({
        dim: p['ials-dim'] as number,
        reg: p['ials-reg'] as number,
        alpha: p['ials-alpha'] as number,
        iters: p['ials-iters'] as number,
        seed,
        weighting: weighting(p),
      }),
  },
};

/** Registers another model (e.g. the shipped factor model) with its own parameters. */
export function registerModel(name: string, entry: ModelEntry, params: Record<string, ParamSpec> = {}): void {
  MODELS[name] = entry;
  Object.assign(PARAMS, params);
}

export interface ModelPlan {
  /** Name in the output: the spec as written, so two variants in one run stay apart. */
  label: string;
  name: string;
  params: Params;
}

/**
 * Parses `--models` (comma separated specs `name[:param=value…]`) against the global flag values.
 *
 * @example
 * ```ts
 * planModels('popular,ease:recency=1', { recency: '0.5' }); // ease gets recency 1
 * planModels('itemknn,itemknn:recency=0.5', { recency: '0.5' }); // plain history, then recency 0.5 (spec only)
 * ```
 */
export function planModels(spec: string, flags: Record<string, string>): ModelPlan[] {
  // Every model flag given is checked, also when no listed model uses it: a bad value must not pass
  // silently just because the run happens not to need it.
  for (const [key, value] of Object.entries(flags)) if (key in PARAMS && value !== undefined) PARAMS[key].parse(value, `--${key}`);
  const plans: ModelPlan[] = [];
  for (const raw of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const [name, ...over] = raw.split(':');
    const entry = MODELS[name];
    if (!entry) throw new ValidationError('options.models', `unknown model '${name}'; allowed: ${Object.keys(MODELS).join(', ')}`);
    const params: Params = {};
    for (const key of entry.params) {
      const own = entry.specOnly?.[key];
      params[key] = own !== undefined ? PARAMS[key].parse(own, `--models ${raw}`) : PARAMS[key].parse(flags[key] ?? PARAMS[key].default, `--${key}`);
    }
    for (const o of over) {
      const eq = o.indexOf('=');
      const key = eq > 0 ? o.slice(0, eq) : '';
      if (!entry.params.includes(key)) {
        throw new ValidationError('options.models', `'${raw}': '${o}' is not PARAM=VALUE with PARAM one of ${entry.params.join(', ') || '(none)'}`);
      }
      params[key] = PARAMS[key].parse(o.slice(eq + 1), `--models ${raw}`);
    }
    // The neighbour file holds at most 256 per item: checked now, not after the models before it ran.
    if (name === 'localrec' && (params['sparse-width'] as number) > MAX_NEIGHBOR_WIDTH) {
      throw new ValidationError(over.some((o) => o.startsWith('sparse-width=')) ? `--models ${raw}` : '--sparse-width', `localrec's neighbour table holds at most ${MAX_NEIGHBOR_WIDTH} neighbours per item, got ${String(params['sparse-width'])}`);
    }
    plans.push({ label: raw, name, params });
  }
  if (plans.length === 0) throw new ValidationError('options.models', 'no model given');
  return plans;
}
