/** Shared by the server-*.test.ts files: a small catalog, model download, update construction. */
import { buildClientUpdate } from '../../src/federated/client-update.js';
import { decodeModel, fromHex } from '../../src/federated/wire.js';
import { cloneItemTable, createItemTable, type ItemTable } from '../../src/model/item-table.js';
import { Random } from '../../src/model/random.js';

export const IDS = Array.from({ length: 40 }, (_, i) => `sku-${i}`);
export const DIM = 4;

export function initialTable(ids = IDS, dim = DIM): ItemTable {
  return createItemTable(ids, dim, { seed: 11, popularity: ids.map((_, i) => i) });
}

export interface ServerView {
  table: ItemTable;
  hash: Uint8Array;
  config: { clip: number; noiseMultiplier: number; bits: number; blockSize: number; minClients: number };
}

export async function pull(url: string): Promise<ServerView> {
  const res = await fetch(`${url}/v1/model`);
  if (res.status !== 200) throw new Error(`GET /v1/model: ${res.status}`);
  const { table } = decodeModel(new Uint8Array(await res.arrayBuffer()));
  const hash = fromHex(res.headers.get('x-localrec-model-hash')!);
  const config = (await (await fetch(`${url}/v1/config`)).json()) as ServerView['config'];
  return { table, hash, config };
}

/** A locally "trained" table: the base plus a seeded random change of roughly `scale` per coordinate. */
export function trained(base: ItemTable, seed: number, scale = 0.05): ItemTable {
  const t = cloneItemTable(base);
  const r = new Random(seed);
  for (let i = 0; i < t.factors.length; i++) t.factors[i]! += scale * r.normal();
  for (let i = 0; i < t.bias.length; i++) t.bias[i]! += scale * r.normal();
  return t;
}

/** An honest update against what the server serves, following its config. */
export function honestUpdate(view: ServerView, seed: number, overrides: { clip?: number; noiseMultiplier?: number; scale?: number } = {}): Uint8Array {
  return buildClientUpdate(view.table, trained(view.table, seed, overrides.scale), {
    baseHash: view.hash,
    clip: overrides.clip ?? view.config.clip,
    noiseMultiplier: overrides.noiseMultiplier ?? view.config.noiseMultiplier,
    bits: view.config.bits,
    blockSize: view.config.blockSize,
  }).bytes;
}

export async function post(url: string, body: Uint8Array): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${url}/v1/updates`, { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream' } });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

export const quiet = (): void => {};
