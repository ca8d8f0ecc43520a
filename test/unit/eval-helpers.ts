import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import type { Split } from '../../src/eval/split.js';

/** A fresh folder, removed once the file's tests are done, and `write(name, body)`, which puts a file there and gives its path. */
export function scratchFolder(prefix: string): { dir: string; write: (name: string, body: string) => string } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  after(() => rmSync(dir, { recursive: true, force: true }));
  return {
    dir,
    write: (name, body) => {
      const p = join(dir, name);
      writeFileSync(p, body);
      return p;
    },
  };
}

/** A split from item-id lists; history order is time order (last = most recent). */
export function splitOf(train: Record<string, string[]>, held: Record<string, string[]>): Split {
  const itemIds = [...new Set([...Object.values(train).flat(), ...Object.values(held).flat()])].sort();
  const userIds = [...new Set([...Object.keys(train), ...Object.keys(held)])];
  const ptr = [0];
  const items: number[] = [];
  const recency: number[] = [];
  const tptr = [0];
  const titems: number[] = [];
  for (const u of userIds) {
    const h = train[u] ?? [];
    h.forEach((it, p) => {
      items.push(itemIds.indexOf(it));
      recency.push(h.length - 1 - p);
    });
    ptr.push(items.length);
    for (const it of held[u] ?? []) titems.push(itemIds.indexOf(it));
    tptr.push(titems.length);
  }
  const ones = new Float32Array(items.length).fill(1);
  return {
    userIds,
    itemIds,
    train: { ptr: Int32Array.from(ptr), items: Int32Array.from(items), weight: ones, count: ones, recency: Float32Array.from(recency) },
    // One event per history entry, a day apart, in history order.
    trainEvents: { ptr: Int32Array.from(ptr), items: Int32Array.from(items), time: Float64Array.from(items, (_, e) => e * 86400), weight: ones },
    test: { ptr: Int32Array.from(tptr), items: Int32Array.from(titems) },
    testUsers: Int32Array.from(userIds.map((_, u) => u).filter((u) => tptr[u + 1] > tptr[u])),
  };
}
