import { LocalrecError } from '../errors.js';

/** Why a signed offer catalog was refused. */
export type SignatureProblem =
  /** There is no signature at all (an unsigned catalog). */
  | 'unsigned'
  /** The envelope is not a signed catalog: wrong `alg`, signature not base64url, not an object. */
  | 'malformed'
  /** The signature does not match the catalog under any of the given keys (tampered or wrong key). */
  | 'mismatch'
  /** The key given to sign or verify is not a usable ECDSA P-256 JWK. */
  | 'bad-key';

/**
 * An offer catalog was refused because its signature is missing, malformed or does not verify.
 * Like every localrec error it has a fixed `name`, so {@link isSignatureError} works after the
 * error crosses the worker boundary.
 *
 * @example
 * ```ts
 * try { await verifyOfferCatalog(signed, publicJwk); }
 * catch (e) { if (isSignatureError(e)) console.warn(e.message); } // "offer catalog signature does not match …"
 * ```
 */
export class SignatureError extends LocalrecError {
  override name = 'SignatureError' as const;
  readonly problem: SignatureProblem;
  constructor(problem: SignatureProblem, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.problem = problem;
  }
}

/** True for a {@link SignatureError}, including one rebuilt after crossing the worker boundary. */
export const isSignatureError = (e: unknown): e is SignatureError =>
  typeof e === 'object' && e !== null && (e as { name?: unknown }).name === 'SignatureError';
