/**
 * What the worker needs from the browser beyond what every browser localrec supports has (module
 * workers, IndexedDB, WebAssembly): checked once at start, so that an old browser gets one error
 * naming what it lacks instead of a TypeError from deep inside a call ("t.filter(...).at is not a
 * function", a portability review measured on a Safari 15.0–15.3 stand-in, stop 35).
 */

/** The oldest browsers whose workers have everything {@link missingFeatures} checks (README, "Browser support"). */
export const MINIMUM_BROWSERS = 'Chrome/Edge 98, Firefox 115, Safari 15.4';

/** Names of the features this global scope lacks, in the order checked; empty when none. */
export function missingFeatures(scope: typeof globalThis = globalThis): string[] {
  const missing: string[] = [];
  const g = scope as unknown as Record<string, unknown>;
  if (typeof g.structuredClone !== 'function') missing.push('structuredClone');
  if (typeof (scope.Array.prototype as { at?: unknown }).at !== 'function') missing.push('Array.prototype.at');
  if (typeof (scope.Object as { hasOwn?: unknown }).hasOwn !== 'function') missing.push('Object.hasOwn');
  const crypto = g.crypto as { getRandomValues?: unknown } | undefined;
  if (typeof crypto?.getRandomValues !== 'function') missing.push('crypto.getRandomValues');
  // Not crypto.subtle: it exists only in a secure context, and only offers, secure aggregation and
  // neighbour files need it; each of those names it when it is missing.
  return missing;
}

/** The message of the error a worker without {@link missingFeatures} throws at start. */
export function unsupportedMessage(missing: readonly string[]): string {
  return `this browser lacks what localrec needs: ${missing.join(', ')} (supported: ${MINIMUM_BROWSERS} or later)`;
}
