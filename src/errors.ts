/**
 * Every error localrec throws is a {@link LocalrecError}. Each subclass has a fixed `name`, because
 * errors cross the worker boundary through comlink, which keeps only `name`, `message` and `stack`:
 * the type guards below therefore check `name`, never `instanceof`.
 *
 * @example
 * ```ts
 * try { rec.track({ type: 'view' }); }
 * catch (e) { if (isValidationError(e)) console.log(e.message); } // "event.itemId: must be a string, got undefined"
 * ```
 */
export class LocalrecError extends Error {
  /** The class's name (`'LocalrecError'`, or the subclass's): it survives the worker boundary, and the guards check it. */
  override name: string = 'LocalrecError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** Input that does not fit the schema: an event, an option, a file. The message names the field. */
export class ValidationError extends LocalrecError {
  /** Always `'ValidationError'` (what {@link isValidationError} checks). */
  override name = 'ValidationError' as const;
  /** Dotted path of the offending field, e.g. `event.quantity` or `options.k`. */
  readonly field: string;
  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.field = field;
  }
}

/**
 * IndexedDB (or SQLite on the server) failed or is unavailable. What was being written is not
 * stored (the engine keeps events it could not write queued for the next write); stored data is
 * left as it was, with one exception: a write of events refused for the browser's storage quota
 * first deletes what the shop can send again (the stored global model and neighbour table) and is
 * tried again; when that is not enough it evicts the oldest stored events (a tenth, at least as
 * many as the write holds and at least the room they take; none when the whole history takes less
 * room than the write) in a transaction of their own and is tried again, and when that retry
 * fails too the error reaches the caller with those events gone (counted in `stats().evicted.quota`).
 */
export class StorageError extends LocalrecError {
  /** Always `'StorageError'` (what {@link isStorageError} checks). */
  override name = 'StorageError' as const;
}

/** The model could not be built, loaded, trained or scored (unknown item, no backend, bad weights). */
export class ModelError extends LocalrecError {
  /** Always `'ModelError'` (what {@link isModelError} checks). */
  override name = 'ModelError' as const;
}

/** The recommender was used after `close()` or before it finished starting. */
export class ClosedError extends LocalrecError {
  /** Always `'ClosedError'` (what {@link isClosedError} checks). */
  override name = 'ClosedError' as const;
}

/** A request to the aggregation server failed or was refused; `status` is the HTTP status (0 when offline). */
export class NetworkError extends LocalrecError {
  /** Always `'NetworkError'` (what {@link isNetworkError} checks). */
  override name = 'NetworkError' as const;
  /** The HTTP status of the failed answer; 0 when there was none to blame (offline, no answer in time). */
  readonly status: number;
  /** The server's reason for a refusal (4xx), as its body gave it (`unknown-cohort`, `stale`, …); absent otherwise. */
  readonly reason?: string;
  constructor(message: string, status: number, reason?: string) {
    super(message);
    this.status = status;
    if (reason !== undefined) this.reason = reason;
  }
}

/**
 * Syncing would spend more privacy budget (ε) than the device is configured to allow, or the device
 * could not keep count of what it spends (IndexedDB could not be opened: see
 * `federated.allowWithoutStorage`).
 */
export class PrivacyBudgetError extends LocalrecError {
  /** Always `'PrivacyBudgetError'` (what {@link isPrivacyBudgetError} checks). */
  override name = 'PrivacyBudgetError' as const;
}

/** The operation needs consent the shopper has not given. */
export class ConsentError extends LocalrecError {
  /** Always `'ConsentError'` (what {@link isConsentError} checks). */
  override name = 'ConsentError' as const;
}

/** Why a signed offer catalog was refused. */
export type SignatureProblem =
  /** There is no signature at all (an unsigned catalog). */
  | 'unsigned'
  /** The envelope is not a signed catalog: wrong `alg`, signature not base64url, not an object. */
  | 'malformed'
  /** The signature does not match the catalog under any of the given keys (tampered or wrong key). */
  | 'mismatch'
  /** The key given to sign or verify is not a usable ECDSA P-256 JWK. */
  | 'bad-key'
  /** The catalog names a key id (`kid`) that none of the trusted keys carries, and every trusted key has a kid. */
  | 'unknown-kid';

const SIGNATURE_PROBLEMS: readonly string[] = ['unsigned', 'malformed', 'mismatch', 'bad-key', 'unknown-kid'];

/**
 * An offer catalog was refused because its signature is missing, malformed or does not verify.
 * `problem` says which; it survives the worker boundary like `name`.
 *
 * @example
 * ```ts
 * try { await rec.setOffers(signed); }
 * catch (e) { if (isSignatureError(e)) console.warn(e.problem, e.message); } // "mismatch" "offer catalog signature does not match …"
 * ```
 */
export class SignatureError extends LocalrecError {
  /** Always `'SignatureError'` (what {@link isSignatureError} checks). */
  override name = 'SignatureError' as const;
  /** Which of the {@link SignatureProblem}s it is. */
  readonly problem: SignatureProblem;
  constructor(problem: SignatureProblem, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.problem = problem;
  }
}

/**
 * The caller cancelled the operation (an `AbortSignal` it passed was aborted). Named `AbortError`
 * like the DOM's, so code that checks `e.name === 'AbortError'` for `fetch` handles it too. The
 * message says whether anything had left the device.
 */
export class AbortError extends LocalrecError {
  /** Always `'AbortError'` (what {@link isAbortError} checks). */
  override name = 'AbortError' as const;
}

/**
 * The {@link AbortError} of a sync cancelled before its upload: `when` says where it stopped (e.g.
 * `before it started`), and the message says what that means for the shopper.
 */
export function syncCancelled(when: string): AbortError {
  return new AbortError(`sync cancelled ${when}; no update was sent and no ε was spent`);
}

const NAMES = [
  'LocalrecError',
  'ValidationError',
  'StorageError',
  'ModelError',
  'ClosedError',
  'NetworkError',
  'PrivacyBudgetError',
  'ConsentError',
  'AbortError',
  'SignatureError',
] as const;

function hasName(e: unknown, name: string): boolean {
  return typeof e === 'object' && e !== null && (e as { name?: unknown }).name === name;
}

/**
 * True for any error thrown by localrec, including ones rebuilt after crossing the worker boundary;
 * not for the platform's own `DOMException` named `AbortError` (a host's cancelled `fetch`).
 */
export function isLocalrecError(e: unknown): e is LocalrecError {
  if (typeof DOMException !== 'undefined' && e instanceof DOMException) return false;
  return typeof e === 'object' && e !== null && (NAMES as readonly unknown[]).includes((e as { name?: unknown }).name);
}
/** True for a {@link ValidationError}, including one rebuilt after crossing the worker boundary. */
export const isValidationError = (e: unknown): e is ValidationError => hasName(e, 'ValidationError');
/** True for a {@link StorageError}, including one rebuilt after crossing the worker boundary. */
export const isStorageError = (e: unknown): e is StorageError => hasName(e, 'StorageError');
/** True for a {@link ModelError}, including one rebuilt after crossing the worker boundary. */
export const isModelError = (e: unknown): e is ModelError => hasName(e, 'ModelError');
/** True for a {@link ClosedError}, including one rebuilt after crossing the worker boundary. */
export const isClosedError = (e: unknown): e is ClosedError => hasName(e, 'ClosedError');
/** True for a {@link NetworkError}, including one rebuilt after crossing the worker boundary. */
export const isNetworkError = (e: unknown): e is NetworkError => hasName(e, 'NetworkError');
/** True for a {@link PrivacyBudgetError}, including one rebuilt after crossing the worker boundary. */
export const isPrivacyBudgetError = (e: unknown): e is PrivacyBudgetError => hasName(e, 'PrivacyBudgetError');
/** True for a {@link ConsentError}, including one rebuilt after crossing the worker boundary. */
export const isConsentError = (e: unknown): e is ConsentError => hasName(e, 'ConsentError');
/** True for localrec's {@link AbortError} and for the DOM's (`DOMException` named `AbortError`). */
export const isAbortError = (e: unknown): e is AbortError => hasName(e, 'AbortError');
/** True for a {@link SignatureError}, including one rebuilt after crossing the worker boundary. */
export const isSignatureError = (e: unknown): e is SignatureError => hasName(e, 'SignatureError');

/**
 * The fields beyond name, message and stack that a localrec error carries (ValidationError's
 * `field`, NetworkError's `status`, SignatureError's `problem`). The worker adds them to a thrown
 * error's message to the page (comlink copies only name, message and stack by itself), and
 * {@link reviveError} puts them back.
 */
export function errorDetails(e: unknown): { field?: string; status?: number; problem?: string; reason?: string } {
  if (!isLocalrecError(e)) return {};
  const out: { field?: string; status?: number; problem?: string; reason?: string } = {};
  const { field, status, problem, reason } = e as { field?: unknown; status?: unknown; problem?: unknown; reason?: unknown };
  if (typeof field === 'string') out.field = field;
  if (typeof status === 'number') out.status = status;
  if (typeof problem === 'string') out.problem = problem;
  if (typeof reason === 'string') out.reason = reason;
  return out;
}

const CLASSES: Record<string, new (message: string) => LocalrecError> = {
  StorageError,
  ModelError,
  ClosedError,
  PrivacyBudgetError,
  ConsentError,
  AbortError,
  LocalrecError,
};

/**
 * Turns an error that crossed the worker boundary (a plain `Error` carrying our `name`) back into
 * an instance of the matching class, so that `instanceof` works on the page as well as the guards.
 */
export function reviveError(e: unknown): unknown {
  if (typeof e !== 'object' || e === null) return e;
  const { name, message, stack, field, status, problem, reason } = e as { name?: string; message?: string; stack?: string; field?: unknown; status?: unknown; problem?: unknown; reason?: unknown };
  let out: LocalrecError | undefined;
  if (name === 'ValidationError') {
    const text = message ?? '';
    if (typeof field === 'string' && text.startsWith(`${field}: `)) out = new ValidationError(field, text.slice(field.length + 2));
    else {
      const m = /^([^:]+): ([\s\S]*)$/.exec(text);
      out = m ? new ValidationError(m[1]!, m[2]!) : new ValidationError('input', text);
    }
  } else if (name === 'NetworkError') {
    out = new NetworkError(message ?? '', typeof status === 'number' ? status : 0, typeof reason === 'string' ? reason : undefined);
  } else if (name === 'SignatureError') {
    out = new SignatureError(typeof problem === 'string' && SIGNATURE_PROBLEMS.includes(problem) ? (problem as SignatureProblem) : 'malformed', message ?? '');
  } else if (name && CLASSES[name]) {
    out = new CLASSES[name]!(message ?? '');
  }
  if (!out) return e;
  if (stack) out.stack = stack;
  return out;
}
