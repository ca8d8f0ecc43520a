// SignatureError lives with the other error classes (src/errors.ts) so that the page can rebuild it,
// with its `problem`, after it crosses the worker boundary; re-exported here for the offers modules.
export { SignatureError, isSignatureError, type SignatureProblem } from '../errors.js';
