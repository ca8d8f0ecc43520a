import { ValidationError } from './errors.js';

/**
 * Checking the options objects the public API takes. Pure and tiny, so the page's bundle can use
 * it as well as the worker.
 */

/** `text` on one line (a CLI error is one line): Node's JSON errors quote the raw text, line breaks and all. */
export function oneLine(text: string): string {
  return text.replace(/\r\n|\r|\n/g, '\\n');
}

/** A value as an error message shows it: strings quoted, so `"100"` is not mistaken for `100`. */
export function describeValue(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

/**
 * Checks `signal` at `name` is an AbortSignal (or undefined). Duck-typed: an AbortSignal from
 * another realm (an iframe's) is one too.
 */
export function checkSignal(signal: unknown, name: string): void {
  if (signal === undefined) return;
  const s = signal as { aborted?: unknown; addEventListener?: unknown; removeEventListener?: unknown };
  if (!(typeof signal === 'object' && signal !== null && typeof s.aborted === 'boolean' && typeof s.addEventListener === 'function' && typeof s.removeEventListener === 'function')) {
    throw new ValidationError(name, `must be an AbortSignal, got ${describeValue(signal)}`);
  }
}

/**
 * Checks that `value` (the object at `path`) is a plain object with only the keys in `allowed`,
 * and returns it (`{}` when it is undefined). Unknown keys are refused rather than ignored: a typo
 * such as `personalisation: false` or `retention: { maxAge: 1 }` must not silently keep the default,
 * least of all for a privacy control.
 *
 * @example
 * ```ts
 * knownKeys({ k: 3 }, 'options', ['k', 'exclude']);     // { k: 3 }
 * knownKeys({ count: 3 }, 'options', ['k', 'exclude']); // throws "options.count: is not an option (known: k, exclude)"
 * ```
 */
export function knownKeys(value: unknown, path: string, allowed: readonly string[]): Record<string, unknown> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ValidationError(path, `must be an object, got ${describeValue(value)}`);
  }
  for (const k of Object.keys(value)) {
    if (!allowed.includes(k)) throw new ValidationError(`${path}.${k}`, `is not an option (known: ${allowed.join(', ')})`);
  }
  return value as Record<string, unknown>;
}

/** A whole number in [min, max] at `name`, or `dflt` when undefined. */
export function intOption(v: unknown, name: string, min: number, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ValidationError(name, `must be a whole number from ${min} to ${max}, got ${describeValue(v)}`);
  }
  return v;
}

/** `true` or `false` at `name` (undefined allowed unless `required`): a string 'false' must not read as true. */
export function boolOption(v: unknown, name: string, required = false): void {
  if (v === undefined && !required) return;
  if (typeof v !== 'boolean') throw new ValidationError(name, `must be true or false, got ${describeValue(v)}`);
}

/** A non-empty string at `name`, when given. */
export function nameOption(v: unknown, name: string): void {
  if (v !== undefined && (typeof v !== 'string' || v.length === 0)) throw new ValidationError(name, `must be a non-empty string, got ${describeValue(v)}`);
}

/** The keys of each public options object, shared by the page and the worker. */
export const OPTION_KEYS = {
  recommender: ['catalog', 'backend', 'dbName', 'retention', 'model', 'autoTrainEvery', 'consent', 'offers', 'federated', 'neighbors', 'workerUrl', 'wasmPaths', 'workerTimeoutMs'],
  retention: ['maxEvents', 'maxAgeDays'],
  model: ['dim', 'halfLifeDays', 'sessionDecay', 'stepDecay', 'seed'],
  federated: ['serverUrl', 'budget', 'delta', 'honorGlobalPrivacyControl', 'cohortWaitMs', 'autoSyncHours', 'allowWithoutStorage'],
  neighbors: ['url', 'timeoutMs', 'downloadTimeoutMs', 'refreshHours'],
  offers: ['publicKey', 'minVersion'],
  consent: ['personalization', 'federated'],
  recommend: ['k', 'exclude', 'category', 'candidates'],
  similar: ['k', 'exclude', 'category'],
  train: ['epochs', 'onProgress', 'signal'],
  sync: ['onProgress', 'signal', 'contribute'],
  offersCall: ['k', 'context', 'seed', 'exploration', 'priorStrength', 'objective'],
  offerContext: ['cart', 'page', 'itemId', 'now'],
} as const satisfies Record<string, readonly string[]>;
