import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { createItemTable } from '../../src/model/item-table.js';
import { createServer, type ServerParts } from '../../src/server/index.js';

let parts: ServerParts;
before(async () => {
  parts = await createServer({ dataDir: null, initialTable: createItemTable(['a', 'b'], 4), corsOrigins: ['https://shop.example'], rateLimit: false, log: () => {} });
});
after(async () => {
  await parts.storage.close();
});

it('lets the listed shop origin call the API cross-origin, without credentials, and no other origin', async () => {
  const preflight = await parts.app.fetch(
    new Request('http://api.local/v1/updates', {
      method: 'OPTIONS',
      headers: { Origin: 'https://shop.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
    }),
  );
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get('access-control-allow-origin'), 'https://shop.example');
  assert.equal(preflight.headers.get('access-control-allow-credentials'), null);

  const model = await parts.app.fetch(new Request('http://api.local/v1/model', { headers: { Origin: 'https://shop.example' } }));
  assert.equal(model.status, 200);
  assert.match(model.headers.get('access-control-expose-headers') ?? '', /X-Localrec-Model-Hash/);

  const other = await parts.app.fetch(new Request('http://api.local/v1/model', { headers: { Origin: 'https://evil.example' } }));
  assert.equal(other.headers.get('access-control-allow-origin'), null);
});
