/**
 * Reliability of the wire decoders under crafted input. test/unit/wire-format.test.ts already feeds
 * random bytes and byte edits of valid messages; these properties build *well-formed headers with
 * adversarial fields* (uint32 extremes for counts, lengths and block sizes), which random bytes
 * almost never reach because the magic and version bytes must match first.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  decodeModel,
  decodeUpdate,
  dequantizeUpdate,
  encodeModel,
  encodeUpdate,
  UPDATE_HEADER_BYTES,
  WireFormatError,
  type QuantizedUpdate,
} from '../../src/federated/wire.js';
import type { ItemTable } from '../../src/model/item-table.js';

const SEED = 20240808;
const onlyWireErrors = (f: () => unknown): boolean => {
  try {
    f();
    return true;
  } catch (e) {
    if (e instanceof WireFormatError) return true;
    throw e; // fast-check shrinks and reports the offending input
  }
};

/** uint32 values biased to the edges where arithmetic overflows: 0, small, 2^31 ± k, 2^32 − k. */
const u32 = fc.oneof(
  fc.integer({ min: 0, max: 16 }),
  fc.integer({ min: 0, max: 0xffffffff }),
  fc.integer({ min: 0x7ffffff0, max: 0x80000010 }),
  fc.integer({ min: 0xffffff00, max: 0xffffffff }),
);

test('regression: decodeModel with an id-section length near 2^32 (pad4 overflow) throws WireFormatError, not RangeError', () => {
  // Before the fix, pad4 used `(n + 3) & ~3`, which wraps at 2^31: idsLen 0xfffffff0 padded to 4,
  // the declared length then matched a 20-byte body and DataView read past the end (RangeError).
  const b = new Uint8Array(20);
  b.set([0x4c, 0x52, 0x4d, 0x31, 1, 0]);
  const dv = new DataView(b.buffer);
  dv.setUint16(6, 1, true);
  dv.setUint32(8, 2, true);
  dv.setUint32(16, 0xfffffff0, true);
  assert.throws(() => decodeModel(b), (e) => e instanceof WireFormatError);
  for (const idsLen of [0x7ffffffd, 0x7fffffff, 0x80000000, 0xfffffffd, 0xffffffff]) {
    dv.setUint32(16, idsLen, true);
    for (const len of [20, 24, 28, 64]) {
      const c = new Uint8Array(len);
      c.set(b);
      assert.throws(() => decodeModel(c), (e) => e instanceof WireFormatError, `idsLen ${idsLen}, ${len} bytes`);
    }
  }
});

test('property: model headers with adversarial counts and lengths are refused with WireFormatError only', () => {
  let runs = 0;
  fc.assert(
    fc.property(
      fc.constantFrom(0, 1, 2, 255),
      fc.integer({ min: 0, max: 70 }),
      u32,
      u32,
      u32,
      fc.integer({ min: 20, max: 400 }),
      fc.uint8Array({ maxLength: 64 }),
      (enc, dim, n, idsLen, version, len, fill) => {
        runs++;
        const b = new Uint8Array(len);
        for (let i = 20; i < len; i++) b[i] = fill.length ? fill[i % fill.length]! : 0;
        b.set([0x4c, 0x52, 0x4d, 0x31, 1, enc]);
        const dv = new DataView(b.buffer);
        dv.setUint16(6, dim, true);
        dv.setUint32(8, n, true);
        dv.setUint32(12, version, true);
        dv.setUint32(16, idsLen, true);
        return onlyWireErrors(() => decodeModel(b));
      },
    ),
    { seed: SEED, numRuns: 3000 },
  );
  process.stdout.write(`# bad-input model headers tried: ${runs}\n`);
});

test('property: models whose declared length matches the body (ids and floats fuzzed) decode or fail with WireFormatError', () => {
  let runs = 0;
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 6 }),
      fc.integer({ min: 1, max: 4 }),
      fc.constantFrom(0, 1),
      fc.integer({ min: 0, max: 40 }),
      fc.uint8Array({ minLength: 1, maxLength: 2048 }),
      (n, dim, enc, idsLen, noise) => {
        runs++;
        const idsEnd = Math.ceil((20 + idsLen) / 4) * 4;
        const body = enc === 0 ? 4 * n * dim : 32 + n * (4 + dim);
        const b = new Uint8Array(idsEnd + body + 4 * n);
        for (let i = 20; i < b.length; i++) b[i] = noise[i % noise.length]!;
        b.set([0x4c, 0x52, 0x4d, 0x31, 1, enc]);
        const dv = new DataView(b.buffer);
        dv.setUint16(6, dim, true);
        dv.setUint32(8, n, true);
        dv.setUint32(16, idsLen, true);
        return onlyWireErrors(() => {
          const { table } = decodeModel(b);
          // Whatever decodes is whole: right shape, finite numbers, and it re-encodes.
          assert.equal(table.itemIds.length, n);
          assert.equal(table.factors.length, n * dim);
          assert.ok(table.factors.every(Number.isFinite) && table.bias.every(Number.isFinite));
          encodeModel(table);
        });
      },
    ),
    { seed: SEED, numRuns: 3000 },
  );
  process.stdout.write(`# bad-input length-consistent models tried: ${runs}\n`);
});

test('property: update headers with adversarial shape fields are refused with WireFormatError only, before allocating', () => {
  let runs = 0;
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 10 }),
      fc.integer({ min: 0, max: 70 }),
      u32,
      u32,
      u32,
      fc.oneof(fc.float(), fc.constantFrom(0, -1, 1, Number.NaN, Infinity, 3.4e38)),
      fc.oneof(fc.float(), fc.constantFrom(0, -1, 1, Number.NaN, Infinity)),
      fc.integer({ min: UPDATE_HEADER_BYTES, max: 600 }),
      fc.uint8Array({ maxLength: 64 }),
      (bits, dim, n, base, blockSize, clip, sigma, len, fill) => {
        runs++;
        const b = new Uint8Array(len);
        for (let i = 32; i < len; i++) b[i] = fill.length ? fill[i % fill.length]! : 0;
        b.set([0x4c, 0x52, 0x55, 0x31, 1, bits]);
        const dv = new DataView(b.buffer);
        dv.setUint16(6, dim, true);
        dv.setUint32(8, n, true);
        dv.setUint32(12, base, true);
        dv.setUint32(16, blockSize, true);
        dv.setFloat32(20, clip, true);
        dv.setFloat32(24, sigma, true);
        dv.setUint32(28, 0, true);
        return onlyWireErrors(() => {
          const u = decodeUpdate(b);
          const d = dequantizeUpdate(u);
          assert.equal(d.length, u.header.itemCount * (u.header.dim + 1));
          assert.ok(d.every(Number.isFinite));
        });
      },
    ),
    { seed: SEED, numRuns: 3000 },
  );
  process.stdout.write(`# bad-input update headers tried: ${runs}\n`);
});

test('property: any finite table round-trips exactly through the canonical model encoding', () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.string({ minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 8 }),
      fc.integer({ min: 1, max: 5 }),
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.array(fc.float({ noNaN: true, noDefaultInfinity: true }), { minLength: 48, maxLength: 48 }),
      (ids, dim, version, vals) => {
        const n = ids.length;
        const t: ItemTable = {
          version,
          itemIds: ids,
          dim,
          factors: Float32Array.from({ length: n * dim }, (_, i) => vals[i % vals.length]!),
          bias: Float32Array.from({ length: n }, (_, i) => vals[(i * 7) % vals.length]!),
        };
        const back = decodeModel(encodeModel(t)).table;
        assert.deepEqual(back.itemIds, ids);
        assert.equal(back.version, version);
        assert.deepEqual(Array.from(back.factors), Array.from(t.factors));
        assert.deepEqual(Array.from(back.bias), Array.from(t.bias));
      },
    ),
    { seed: SEED, numRuns: 300 },
  );
});

// One update, one encoding: the padding bits of the last byte must be zero. Setting the whole last
// byte (the other corruption test) also puts a code above 2L there, so the code check alone
// refused it (a mutation-testing review, stop 35).
test('an update whose only change is a padding bit of the last byte is refused as bad-code', () => {
  // 5 items × (3 + 1) = 20 codes × 3 bits = 60 bits: the last byte's top 4 bits are padding.
  const u: QuantizedUpdate = {
    header: { bits: 3, dim: 3, itemCount: 5, baseVersion: 0, blockSize: 8, clip: 1, noiseMultiplier: 1, baseHash: new Uint8Array(32), nonce: new Uint8Array(16).fill(7) },
    scales: new Float32Array([0.5, 0.5, 0.25]),
    codes: Uint8Array.from({ length: 20 }, (_, i) => i % 7),
  };
  const good = encodeUpdate(u);
  assert.deepEqual(decodeUpdate(good).codes, u.codes);
  for (const bit of [0x10, 0x20, 0x40, 0x80]) {
    const b = good.slice();
    b[b.length - 1]! |= bit;
    assert.throws(
      () => decodeUpdate(b),
      (e: unknown) => e instanceof WireFormatError && e.reason === 'bad-code',
      `padding bit ${bit.toString(16)} set: a second encoding of the same update was accepted`,
    );
  }
});
