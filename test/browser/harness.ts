/**
 * Browser test harness: serves the repository root on a loopback port (so pages load the built
 * `dist/`), and launches Debian's Chromium through playwright-core with the flags DESIGN.md lists.
 * WebGPU needs a secure context, which `http://127.0.0.1` is.
 */
import { serve } from '@hono/node-server';
import { serveStatic } from '@hono/node-server/serve-static';
import { Hono } from 'hono';
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  // A small /dev/shm (a container's 64 MB) is not enough for the renderer; Debian's wrapper adds
  // this only when its own check of the mount works.
  '--disable-dev-shm-usage',
];

export interface StaticServer {
  url: string;
  close(): Promise<void>;
}

export function assertBuilt(): void {
  if (!existsSync('dist/index.js') || !existsSync('dist/worker.js')) {
    throw new Error('dist/ is missing: run `npm run build` first (npm test does)');
  }
}

/**
 * Serves files under the repository root (the cwd of `npm test`). `headers` adds response headers
 * per request URL, e.g. a Content-Security-Policy, or cross-origin isolation for the benchmark.
 */
export async function serveRepo(headers?: (url: URL) => Record<string, string>): Promise<StaticServer> {
  assertBuilt();
  const app = new Hono();
  if (headers) {
    app.use('/*', async (c, next) => {
      await next();
      for (const [k, v] of Object.entries(headers(new URL(c.req.url)))) c.res.headers.set(k, v);
    });
  }
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

export async function launch(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install it with \`apt-get install -y chromium\` (never \`npx playwright install\`)`);
  }
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_FLAGS, headless: true });
}

/** Opens a page and forwards its console errors to the test output, which makes failures readable. */
export async function openPage(browser: Browser, url: string): Promise<Page> {
  const page = await browser.newPage();
  // tsx (esbuild, keepNames) wraps functions in `__name(...)`; functions passed to page.evaluate
  // carry that call into the page, so the page needs a no-op `__name`.
  await page.addInitScript('globalThis.__name = (f) => f;');
  page.on('pageerror', (e) => process.stderr.write(`[page error] ${e.message}\n`));
  page.on('console', (m) => {
    if (m.type() === 'error') process.stderr.write(`[page console] ${m.text()}\n`);
  });
  await page.goto(url);
  return page;
}
