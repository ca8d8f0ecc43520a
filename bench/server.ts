/**
 * Serves the repository root on 127.0.0.1 for the benchmark page, like test/browser/harness.ts's
 * serveRepo(), plus the headers that make a page cross-origin isolated when it is opened with
 * `?coi=1`: there performance.now() ticks in 5 µs steps instead of 100 µs, which a per-call
 * `track()` timing needs. Every response carries COEP so that the worker and the .wasm files load
 * under an isolated page; only the document asked for with `?coi=1` gets COOP (isolation needs both).
 */
import { serve } from '@hono/node-server';
import { serveStatic } from '@hono/node-server/serve-static';
import { Hono } from 'hono';
import type { AddressInfo } from 'node:net';
import type { StaticServer } from '../test/browser/harness.js';

export async function serveBench(): Promise<StaticServer> {
  const app = new Hono();
  app.use('/*', async (c, next) => {
    await next();
    c.header('Cross-Origin-Embedder-Policy', 'require-corp');
    c.header('Cross-Origin-Resource-Policy', 'same-origin');
    if (c.req.query('coi') === '1') c.header('Cross-Origin-Opener-Policy', 'same-origin');
    c.header('Cache-Control', 'no-store');
  });
  app.use('/*', serveStatic({ root: './' }));
  return new Promise((resolve) => {
    const server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, (info: AddressInfo) => {
      resolve({
        url: `http://127.0.0.1:${info.port}`,
        close: () => new Promise<void>((r) => server.close(() => r())),
      });
    });
  });
}
