/**
 * The worker's start-up check of what an older browser lacks (src/engine/platform.ts), and the
 * loop that replaced a regex lookbehind Safari before 16.4 could not parse (hasLoneSurrogate).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import vm from 'node:vm';
import fc from 'fast-check';
import { MINIMUM_BROWSERS, missingFeatures, unsupportedMessage } from '../../src/engine/platform.js';
import { hasLoneSurrogate } from '../../src/model/item-table.js';

/** A fresh realm (its own Array, Object…), with `strip` run in it first. */
function realm(strip: string): typeof globalThis {
  const ctx = vm.createContext({ crypto: globalThis.crypto, structuredClone: globalThis.structuredClone });
  vm.runInContext(strip, ctx);
  return vm.runInContext('globalThis', ctx) as typeof globalThis;
}

describe('missingFeatures', () => {
  it('finds nothing missing in Node 20 (every supported browser has the same)', () => {
    assert.deepEqual(missingFeatures(), []);
    assert.deepEqual(missingFeatures(realm('')), []);
  });

  it('names each feature a Safari 15.0–15.3 worker lacks, in order', () => {
    const old = realm('delete Array.prototype.at; delete Object.hasOwn; delete globalThis.structuredClone;');
    const missing = missingFeatures(old);
    assert.deepEqual(missing, ['structuredClone', 'Array.prototype.at', 'Object.hasOwn']);
    assert.equal(
      unsupportedMessage(missing),
      `this browser lacks what localrec needs: structuredClone, Array.prototype.at, Object.hasOwn (supported: ${MINIMUM_BROWSERS} or later)`,
    );
  });

  it('names a missing crypto.getRandomValues (the noise of every update comes from it)', () => {
    assert.deepEqual(missingFeatures(realm('globalThis.crypto = {};')), ['crypto.getRandomValues']);
    assert.deepEqual(missingFeatures(realm('delete globalThis.crypto;')), ['crypto.getRandomValues']);
  });
});

describe('hasLoneSurrogate', () => {
  // The regex it replaced, which Node parses: the loop must agree with it on every string.
  const reference = (s: string) => /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);

  it('cases: pairs, lone halves at either end, reversed pairs', () => {
    const cases: Array<[string, boolean]> = [
      ['', false],
      ['sku-1', false],
      ['\uD83D\uDE00', false],
      ['a\uD83D\uDE00b\uD83D\uDE00', false],
      ['\uD83D', true],
      ['\uDE00', true],
      ['a\uD83D', true],
      ['\uDE00a', true],
      ['\uDE00\uD83D', true],
      ['\uD83D\uD83D\uDE00', true],
      ['\uD83D\uDE00\uDE00', true],
    ];
    for (const [s, lone] of cases) {
      assert.equal(hasLoneSurrogate(s), lone, JSON.stringify(s));
      assert.equal(reference(s), lone, `reference: ${JSON.stringify(s)}`);
    }
  });

  it('agrees with the lookbehind regex on random UTF-16 strings', () => {
    const unit = fc.oneof(fc.integer({ min: 0xd800, max: 0xdfff }), fc.integer({ min: 0, max: 0xffff }), fc.constantFrom(0xd83d, 0xde00, 0x61));
    fc.assert(
      fc.property(fc.array(unit, { maxLength: 12 }), (codes) => {
        const s = String.fromCharCode(...codes);
        return hasLoneSurrogate(s) === reference(s);
      }),
      { numRuns: 5000 },
    );
  });
});
