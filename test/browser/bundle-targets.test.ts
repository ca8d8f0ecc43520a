/**
 * The built bundles parse in the oldest browsers localrec supports (README, "Browser support"):
 * esbuild rewrites, for a target, only the syntax that target lacks, so a bundle it leaves as it
 * is for the target is one that browser parses. A regex lookbehind in dist/worker.js made Safari
 * before 16.4 refuse the whole worker (a portability review, stop 35).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { transformSync } from 'esbuild';
import { assertBuilt } from './harness.js';

/** Oldest versions supported, as esbuild names them (Safari 15.4 is also iOS 15.4). */
const TARGETS = ['chrome98', 'edge98', 'firefox115', 'safari15.4', 'ios15.4'];
const FILES = ['dist/index.js', 'dist/worker.js', 'dist/worker-webgl.js', 'dist/worker-webgpu.js'];

/** The lines esbuild prints differently for `target` than for esnext (the syntax it had to lower). */
function lowered(code: string, target: string, format: 'esm' | 'iife'): string[] {
  const print = (t: string) => transformSync(code, { target: t, format, loader: 'js', minify: false, logLevel: 'silent' }).code.split('\n');
  const modern = print('esnext');
  const old = print(target);
  const changed: string[] = [];
  for (let i = 0; i < Math.max(modern.length, old.length); i++) {
    if (modern[i] !== old[i]) changed.push(`${i + 1}: ${(old[i] ?? '').trim().slice(0, 160)}`);
    if (changed.length >= 5) break;
  }
  return changed;
}

describe('bundle syntax', () => {
  for (const file of FILES) {
    it(`${file} needs no syntax newer than ${TARGETS.join(', ')}`, () => {
      assertBuilt();
      const code = readFileSync(file, 'utf8');
      // The GPU backends' files are classic scripts (an IIFE), the others modules.
      const format = file.includes('worker-web') ? 'iife' : 'esm';
      for (const target of TARGETS) assert.deepEqual(lowered(code, target, format), [], `${file} for ${target}`);
    });
  }

  it('the check sees a lookbehind (the syntax Safari 15 could not parse)', () => {
    const code = 'export const f = (s) => /(?<![\\uD800-\\uDBFF])[\\uDC00-\\uDFFF]/.test(s);';
    assert.notDeepEqual(lowered(code, 'safari15.4', 'esm'), []);
    assert.deepEqual(lowered(code, 'safari16.4', 'esm'), []);
  });
});
