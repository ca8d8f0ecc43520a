/**
 * The benchmark page's server: test/browser/harness.ts's serveRepo(), plus the headers that make a
 * page cross-origin isolated when it is opened with `?coi=1`: there performance.now() ticks in 5 µs
 * steps instead of 100 µs, which a per-call `track()` timing needs. Every response carries COEP so
 * that the worker and the .wasm files load under an isolated page; only the document asked for
 * with `?coi=1` gets COOP (isolation needs both).
 */
import { serveRepo, type StaticServer } from '../test/browser/harness.js';

export function serveBench(): Promise<StaticServer> {
  return serveRepo((url) => ({
    'Cross-Origin-Embedder-Policy': 'require-corp',
    'Cross-Origin-Resource-Policy': 'same-origin',
    'Cache-Control': 'no-store',
    ...(url.searchParams.get('coi') === '1' ? { 'Cross-Origin-Opener-Policy': 'same-origin' } : {}),
  }));
}
