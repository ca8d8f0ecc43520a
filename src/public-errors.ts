/**
 * The errors both entry points publish (`localrec`, `localrec/node`): every error class and its
 * `is…Error` guard, named one by one so that the internal helpers of errors.ts (reviving an error
 * that crossed the worker boundary, and the like) stay out of the public API.
 */
export {
  LocalrecError,
  ValidationError,
  StorageError,
  ModelError,
  ClosedError,
  NetworkError,
  PrivacyBudgetError,
  ConsentError,
  AbortError,
  isLocalrecError,
  isValidationError,
  isStorageError,
  isModelError,
  isClosedError,
  isNetworkError,
  isPrivacyBudgetError,
  isConsentError,
  isAbortError,
  SignatureError,
  isSignatureError,
} from './errors.js';
export type { SignatureProblem } from './errors.js';
